//! The vault's secrets as the proxy uses them, re-read when the vault file
//! changes (`airlock secret set/rotate/rm` take effect without a restart).

use std::{
    sync::{Arc, RwLock},
    time::{SystemTime, UNIX_EPOCH},
};

use tracing::{error, info};

use crate::{
    creds::{Credential, CredentialSet, Scrubber},
    vault::Vault,
};

pub struct Credentials {
    vault: Vault,
    state: RwLock<Loaded>,
}

struct Loaded {
    set: Arc<CredentialSet>,
    scrubber: Scrubber,
    mtime: Option<SystemTime>,
}

impl Credentials {
    pub fn new(vault: Vault) -> Credentials {
        let this = Credentials {
            vault,
            state: RwLock::new(Loaded {
                set: Arc::new(CredentialSet::new(Vec::new())),
                scrubber: Scrubber::new(Vec::new()),
                mtime: None,
            }),
        };
        this.reload();
        this
    }

    fn mtime(&self) -> Option<SystemTime> {
        std::fs::metadata(self.vault.path())
            .and_then(|m| m.modified())
            .ok()
    }

    /// The secrets to swap and the scrubber for responses. One stat() per
    /// request (well under a microsecond on a cached inode) makes a
    /// `secret set` effective for the very next request.
    pub fn current(&self) -> (Arc<CredentialSet>, Scrubber) {
        let mtime = self.mtime();
        let changed = self.state.read().map(|s| s.mtime != mtime).unwrap_or(true);
        if changed {
            self.reload();
        }
        match self.state.read() {
            Ok(s) => (s.set.clone(), s.scrubber.clone()),
            Err(_) => (
                Arc::new(CredentialSet::new(Vec::new())),
                Scrubber::new(Vec::new()),
            ),
        }
    }

    /// A vault that cannot be read leaves no secrets to swap: placeholders
    /// then go upstream as they are, which reveals nothing.
    fn reload(&self) {
        let mtime = self.mtime();
        let loaded = match self.vault.load() {
            Ok(contents) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let mut creds = Vec::new();
                let mut extra = Vec::new();
                for entry in contents.entries() {
                    creds.push(Credential {
                        name: entry.name.clone(),
                        placeholder: entry.placeholder.clone(),
                        value: entry.current.clone(),
                    });
                    // A previous value in its rotation grace may still be
                    // echoed by an upstream: scrub it too.
                    for old in entry.valid_values(now).skip(1) {
                        extra.push((old.clone(), entry.placeholder.as_bytes().to_vec()));
                    }
                }
                let count = creds.len();
                let set = CredentialSet::new(creds);
                let mut pairs = set.scrub_pairs();
                pairs.extend(extra);
                info!(secrets = count, "vault loaded");
                Some((set, Scrubber::new(pairs)))
            }
            Err(err) => {
                error!(error = %err, "vault unusable: no credentials will be injected");
                None
            }
        };
        if let Ok(mut s) = self.state.write() {
            let (set, scrubber) = loaded
                .unwrap_or_else(|| (CredentialSet::new(Vec::new()), Scrubber::new(Vec::new())));
            s.set = Arc::new(set);
            s.scrubber = scrubber;
            s.mtime = mtime;
        }
    }
}
