//! The vault's secrets as the proxy uses them, re-read when the vault file
//! changes. `airlock secret set/rotate/rm` tell the daemon over the admin
//! socket, so the change holds from the next request; any other change to
//! the file is seen within `RECHECK`. The tokens fetched for
//! `oauth2_client_credentials` and `github_app` secrets are kept here too,
//! and scrubbed from responses like the stored values.

use std::{
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tracing::{error, info};

use crate::{
    creds::{
        Credential, CredentialSet, Scrubber, SecretsSource, TokenCache, TokenError, Transport,
    },
    secret::Secret,
    vault::Vault,
};

/// How often a request looks at the vault file. A stat() per
/// request was 2.7 % of the proxy's CPU at 32 connections.
const RECHECK: Duration = Duration::from_secs(1);

pub struct Credentials {
    vault: Vault,
    state: RwLock<Loaded>,
    tokens: TokenCache,
    /// Milliseconds after `epoch` of the last look at the file.
    checked_ms: AtomicU64,
    epoch: Instant,
    /// Moves each time the scrubber is rebuilt: streamed answers that
    /// began before catch up with it (`creds::newer_secrets`).
    scrub_generation: AtomicU64,
    /// Handed to each read of the vault, in order: see [`Credentials::install`].
    reads: AtomicU64,
}

struct Loaded {
    set: Arc<CredentialSet>,
    /// What the vault's own values scrub; fetched tokens are added to it.
    scrub_pairs: Vec<(Secret, Vec<u8>)>,
    scrubber: Scrubber,
    /// The [`TokenCache::generation`] whose tokens `scrubber` knows.
    tokens_seen: u64,
    stamp: Option<FileStamp>,
    /// The ticket of the read installed.
    read: u64,
}

/// The secrets to swap, and each value to scrub with its placeholder.
type Contents = (CredentialSet, Vec<(Secret, Vec<u8>)>);

/// One read of the vault: what it held (None if it could not be read),
/// the file's stamp before it, and its ticket.
struct Read {
    loaded: Option<Contents>,
    stamp: Option<FileStamp>,
    ticket: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    ino: u64,
    size: u64,
    mtime: SystemTime,
}

impl Credentials {
    pub fn new(vault: Vault) -> Credentials {
        let this = Credentials {
            vault,
            state: RwLock::new(Loaded {
                set: Arc::new(CredentialSet::new(Vec::new())),
                scrub_pairs: Vec::new(),
                scrubber: Scrubber::new(Vec::new()),
                tokens_seen: 0,
                stamp: None,
                read: 0,
            }),
            tokens: TokenCache::default(),
            checked_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            scrub_generation: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        };
        this.reload();
        this
    }

    /// File timestamps tick at the kernel's coarse clock, so two writes a
    /// few milliseconds apart can share an mtime; every vault write is a
    /// rename of a new file, so the inode and size tell them apart.
    fn stamp(&self) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(self.vault.path()).ok()?;
        Some(FileStamp {
            ino: m.ino(),
            size: m.size(),
            mtime: m.modified().ok()?,
        })
    }

    /// The secrets to swap and the scrubber for responses, as of `now`
    /// (the request's start): the file is looked at only when
    /// `RECHECK` has passed since the last look.
    pub fn current(&self, now: Instant) -> (Arc<CredentialSet>, Scrubber) {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let last = self.checked_ms.load(Ordering::Relaxed);
        let due = now_ms.saturating_sub(last) >= RECHECK.as_millis() as u64
            && self
                .checked_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if due {
            let stamp = self.stamp();
            let changed = self.state.read().map(|s| s.stamp != stamp).unwrap_or(true);
            if changed {
                self.reload();
            }
        }
        // Every write leaves the state whole: one poisoned by a panic
        // elsewhere still holds the secrets to scrub.
        let s = self.state.read().unwrap_or_else(PoisonError::into_inner);
        (s.set.clone(), s.scrubber.clone())
    }

    /// A vault that cannot be read leaves no secrets to swap: placeholders
    /// then go upstream as they are, which reveals nothing. What it held
    /// before is still scrubbed from answers, since an upstream may give
    /// back a value it was sent.
    pub fn reload(&self) {
        self.install(self.read());
    }

    /// Reads the vault. Reads may run at once (a request's look at the
    /// file, and the notice of `airlock secret`): each takes a ticket
    /// first, so that [`Credentials::install`] can tell which read the
    /// file later.
    fn read(&self) -> Read {
        let ticket = self.reads.fetch_add(1, Ordering::AcqRel) + 1;
        let stamp = self.stamp();
        let loaded = match self.vault.load() {
            Ok(contents) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let mut creds = Vec::new();
                let mut extra = Vec::new();
                for entry in contents.entries() {
                    // The vault loads only header names that parse; were
                    // one not to, the secret is left out (never swapped)
                    // rather than allowed into any header.
                    let header = match entry.header.as_deref().map(|h| h.parse()) {
                        None => None,
                        Some(Ok(name)) => Some(name),
                        Some(Err(_)) => continue,
                    };
                    creds.push(Credential {
                        name: entry.name.clone(),
                        kind: entry.kind,
                        placeholder: entry.placeholder.clone(),
                        header,
                        value: entry.current.clone(),
                    });
                    // A previous value in its rotation grace may still be
                    // echoed by an upstream: scrub it too.
                    for old in entry.valid_values(now).skip(1) {
                        for value in Credential::scrub_values(entry.kind, old) {
                            extra.push((value, entry.placeholder.as_bytes().to_vec()));
                        }
                    }
                }
                let count = creds.len();
                let set = CredentialSet::new(creds);
                let mut pairs = set.scrub_pairs();
                pairs.extend(extra);
                info!(secrets = count, "vault loaded");
                Some((set, pairs))
            }
            Err(err) => {
                error!(error = %err, "vault unusable: no credentials will be injected");
                None
            }
        };
        Read {
            loaded,
            stamp,
            ticket,
        }
    }

    /// Puts `read` in force, unless a read that began later is in force
    /// already: installed after it, an earlier read would bring back a
    /// secret `airlock secret rm` had just removed, or an old value
    /// rotated out, until the next look at the file.
    fn install(&self, read: Read) {
        let Read {
            loaded,
            stamp,
            ticket,
        } = read;
        let mut s = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if ticket < s.read {
            return;
        }
        s.read = ticket;
        match loaded {
            Some((set, pairs)) => {
                s.set = Arc::new(set);
                s.scrub_pairs = pairs;
            }
            None => s.set = Arc::new(CredentialSet::new(Vec::new())),
        }
        s.stamp = stamp;
        // Tokens handed out before stay scrubbed, whatever the vault
        // holds now.
        self.rebuild_scrubber(&mut s);
    }

    fn rebuild_scrubber(&self, s: &mut Loaded) {
        let generation = self.tokens.generation();
        let mut all = s.scrub_pairs.clone();
        all.extend(self.tokens.scrub_pairs());
        s.scrubber = Scrubber::new(all);
        s.tokens_seen = generation;
        // After the new scrubber is in place, and under the write lock: a
        // stream that reads the new count then asks for the scrubber gets
        // this one or a later one.
        self.scrub_generation.fetch_add(1, Ordering::Release);
    }

    /// The tokens of the fetched-token secrets in `needed`, by name, and a
    /// response scrubber that knows them. The first failure names its
    /// secret.
    pub async fn tokens(
        &self,
        needed: &[Credential],
        transport: &impl Transport,
        now: Instant,
    ) -> Result<(Vec<(String, Secret)>, Scrubber), (String, TokenError)> {
        let mut tokens = Vec::with_capacity(needed.len());
        for cred in needed {
            let token = self
                .tokens
                .token(cred, transport, now)
                .await
                .map_err(|err| (cred.name.clone(), err))?;
            tokens.push((cred.name.clone(), token));
        }
        let generation = self.tokens.generation();
        if let Ok(s) = self.state.read()
            && s.tokens_seen >= generation
        {
            return Ok((tokens, s.scrubber.clone()));
        }
        match self.state.write() {
            Ok(mut s) => {
                if s.tokens_seen < generation {
                    self.rebuild_scrubber(&mut s);
                }
                Ok((tokens, s.scrubber.clone()))
            }
            // Without a scrubber that knows the token, it does not go out.
            Err(_) => Err((
                needed.first().map(|c| c.name.clone()).unwrap_or_default(),
                TokenError::Unreachable {
                    reason: "internal state poisoned".into(),
                },
            )),
        }
    }
}

impl SecretsSource for Credentials {
    fn generation(&self) -> u64 {
        self.scrub_generation.load(Ordering::Acquire)
    }

    fn scrubber(&self) -> Scrubber {
        let s = self.state.read().unwrap_or_else(PoisonError::into_inner);
        s.scrubber.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::{Credentials, RECHECK};
    use crate::{
        secret::Secret,
        vault::{SecretKind, Vault},
    };

    fn store(vault: &Vault) {
        let value = Secret::new(b"test-value-for-the-recheck".to_vec());
        vault
            .set("token", SecretKind::Bearer, None, value)
            .expect("set");
    }

    /// Credentials over a vault that holds the token.
    fn holding_the_token() -> (tempfile::TempDir, Vault, Credentials) {
        let dir = tempfile::tempdir().expect("tempdir");
        let vault = Vault::open(dir.path()).expect("open");
        store(&vault);
        let creds = Credentials::new(vault.clone());
        (dir, vault, creds)
    }

    /// Credentials over an empty vault, looked at once (at `start +
    /// RECHECK`), then a secret stored behind their back.
    fn changed_after_a_look() -> (tempfile::TempDir, Credentials, Instant) {
        let dir = tempfile::tempdir().expect("tempdir");
        let vault = Vault::open(dir.path()).expect("open");
        let creds = Credentials::new(vault.clone());
        let start = Instant::now();
        assert!(creds.current(start + RECHECK).1.is_empty());
        store(&vault);
        (dir, creds, start)
    }

    #[test]
    fn a_vault_changed_without_a_notice_is_seen_after_the_recheck_interval() {
        let (_dir, creds, start) = changed_after_a_look();
        assert!(
            creds.current(start + RECHECK).1.is_empty(),
            "no look at the file before the interval has passed"
        );
        assert!(!creds.current(start + RECHECK * 2).1.is_empty());
    }

    #[test]
    fn a_reload_moves_the_scrub_generation_to_a_scrubber_that_knows_the_new_value() {
        use crate::creds::SecretsSource as _;
        let (_dir, vault, creds) = holding_the_token();
        let before = creds.generation();
        let value = Secret::new(b"rotated-in-while-a-stream-runs".to_vec());
        vault
            .set("other", SecretKind::Bearer, None, value)
            .expect("set");
        creds.reload();
        assert_ne!(creds.generation(), before);
        assert!(
            creds
                .scrubber()
                .scrub_bytes(b"echo: rotated-in-while-a-stream-runs")
                .is_some()
        );
    }

    #[test]
    fn a_vault_that_cannot_be_read_swaps_nothing_and_still_scrubs_what_it_held() {
        let (_dir, vault, creds) = holding_the_token();
        let now = Instant::now();
        let (request, ()) = http::Request::get("https://api.example.test/")
            .header("authorization", "Bearer airlock-ph-token")
            .body(())
            .expect("request")
            .into_parts();
        assert_eq!(creds.current(now).0.placeholders_in(&request), ["token"]);
        std::fs::write(vault.path(), b"not a vault").expect("damage the vault");
        creds.reload();
        let (set, scrubber) = creds.current(now);
        assert!(
            set.placeholders_in(&request).is_empty(),
            "nothing left to swap"
        );
        assert!(
            scrubber
                .scrub_bytes(b"echo: test-value-for-the-recheck")
                .is_some_and(|clean| !clean
                    .windows(b"test-value".len())
                    .any(|w| w == b"test-value")),
            "the value held before is still scrubbed"
        );
    }

    /// A look at the file that read it before `airlock secret rm`, and
    /// finished after the notice's reload, must not bring the secret back.
    #[test]
    fn a_read_that_began_earlier_never_replaces_a_later_one() {
        let (_dir, vault, creds) = holding_the_token();
        let (request, ()) = http::Request::get("https://api.example.test/")
            .header("authorization", "Bearer airlock-ph-token")
            .body(())
            .expect("request")
            .into_parts();
        let slow = creds.read();
        vault.remove("token").expect("rm");
        creds.reload();
        creds.install(slow);
        let (set, _) = creds.current(Instant::now());
        assert!(
            set.placeholders_in(&request).is_empty(),
            "the removed secret is back"
        );
    }

    #[test]
    fn a_notice_makes_the_change_hold_at_once() {
        let (_dir, creds, start) = changed_after_a_look();
        creds.reload();
        assert!(!creds.current(start + RECHECK).1.is_empty());
    }
}
