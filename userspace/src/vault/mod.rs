//! The encrypted secret store behind `airlock secret set|list|rm|rotate`.
//!
//! `<state_dir>/master.key` (32 random bytes, 0600) encrypts
//! `<state_dir>/vault.json` with AES-256-GCM; `<state_dir>/vault.lock` is an
//! flock that serialises writers. See `file.rs` for the format.

mod entry;
mod file;
mod lock;
mod master_key;
mod validate;

#[cfg(test)]
mod tests;

use std::fmt;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use entry::{Entry, SecretInfo, SecretKind, VaultContents};
pub use validate::VALUE_MAX;

use crate::creds::GrantProblem;
use crate::secret::Secret;
use entry::Record;

const MASTER_KEY_FILE: &str = "master.key";
const VAULT_FILE: &str = "vault.json";
const LOCK_FILE: &str = "vault.lock";

/// Handle on a vault in a state directory. Holds only paths: the master key
/// is read (and its permissions re-checked) for each operation and wiped
/// right after, so a long-lived `Vault` keeps no key material in memory.
#[derive(Debug, Clone)]
pub struct Vault {
    dir: PathBuf,
    key_path: PathBuf,
    vault_path: PathBuf,
    lock_path: PathBuf,
}

impl Vault {
    /// Opens the vault in `state_dir`, creating the directory (0700), a new
    /// master key and an empty vault on first use. A vault without its master
    /// key is an error, never a reason to make a new key.
    pub fn open(state_dir: &Path) -> Result<Vault, VaultError> {
        ensure_state_dir(state_dir)?;
        let vault = Vault {
            dir: state_dir.to_owned(),
            key_path: state_dir.join(MASTER_KEY_FILE),
            vault_path: state_dir.join(VAULT_FILE),
            lock_path: state_dir.join(LOCK_FILE),
        };
        // Locked so that two first runs cannot both create a key.
        let _lock = lock::exclusive(&vault.lock_path)?;
        let vault_exists = exists(&vault.vault_path)?;
        let key = match master_key::read(&vault.key_path) {
            Ok(key) => key,
            Err(VaultError::MasterKeyMissing { .. }) if !vault_exists => {
                master_key::create(&vault.key_path, &vault.dir)?
            }
            Err(e) => return Err(e),
        };
        if !vault_exists {
            file::write(
                &vault.dir,
                &vault.vault_path,
                &key,
                &VaultContents::default(),
            )?;
        }
        Ok(vault)
    }

    /// Decrypts the whole vault. No lock is needed: writers replace the file
    /// by rename, so a reader sees either the old or the new version.
    pub fn load(&self) -> Result<VaultContents, VaultError> {
        let key = master_key::read(&self.key_path)?;
        file::read(&self.vault_path, &key)
    }

    /// Creates `name`, or replaces its value (and kind) if it exists. A
    /// replaced entry keeps no previous value (use `rotate` for that), gets
    /// version + 1, and keeps its placeholder unless a new one is given.
    #[cfg(test)]
    pub fn set(
        &self,
        name: &str,
        kind: SecretKind,
        placeholder: Option<&str>,
        value: Secret,
    ) -> Result<SecretInfo, VaultError> {
        self.set_at(name, kind, placeholder, None, value, unix_now()?)
    }

    /// `set`, binding a `header` secret to the one header it is swapped
    /// into. Without `header`, an entry that stays of kind `header` keeps
    /// the header it had (a new value does not widen where it may go).
    pub fn set_with_header(
        &self,
        name: &str,
        kind: SecretKind,
        placeholder: Option<&str>,
        header: Option<&str>,
        value: Secret,
    ) -> Result<SecretInfo, VaultError> {
        self.set_at(name, kind, placeholder, header, value, unix_now()?)
    }

    /// Replaces the value of `name`, keeping the old one valid for `grace`
    /// (so agents and upstreams can switch over without failed requests).
    pub fn rotate(
        &self,
        name: &str,
        value: Secret,
        grace: Duration,
    ) -> Result<SecretInfo, VaultError> {
        self.rotate_at(name, value, grace, unix_now()?)
    }

    pub fn remove(&self, name: &str) -> Result<(), VaultError> {
        self.modify(unix_now()?, |contents| {
            contents
                .records
                .remove(name)
                .map(drop)
                .ok_or_else(|| not_found(name))
        })?;
        Ok(())
    }

    /// Every secret sorted by name, without values.
    pub fn list(&self) -> Result<Vec<SecretInfo>, VaultError> {
        Ok(self.load()?.infos())
    }

    /// The encrypted vault file.
    pub fn path(&self) -> &Path {
        &self.vault_path
    }

    fn set_at(
        &self,
        name: &str,
        kind: SecretKind,
        placeholder: Option<&str>,
        header: Option<&str>,
        value: Secret,
        now: u64,
    ) -> Result<SecretInfo, VaultError> {
        validate::name(name)?;
        validate::value(name, kind, &value)?;
        validate::value_for_kind(name, kind, &value)?;
        if let Some(placeholder) = placeholder {
            validate::placeholder(placeholder)?;
        }
        let header = header
            .map(|header| validate::header(name, kind, header))
            .transpose()?;
        let contents = self.modify(now, |contents| {
            let existing = contents.records.get(name);
            let placeholder = match (placeholder, existing) {
                (Some(given), _) => given.to_owned(),
                (None, Some(record)) => record.entry.placeholder.clone(),
                (None, None) => validate::default_placeholder(name),
            };
            validate::placeholder(&placeholder)?;
            if let Some(owner) = contents.placeholder_owner(&placeholder, name) {
                return Err(VaultError::PlaceholderInUse {
                    placeholder,
                    owner: owner.to_owned(),
                });
            }
            let header = match (header, existing) {
                (Some(given), _) => Some(given),
                (None, Some(record)) if record.entry.kind == kind => record.entry.header.clone(),
                (None, _) => None,
            };
            let (version, created) = match existing {
                // Four billion updates of one secret will not happen;
                // saturating keeps this total without a dead error path.
                Some(record) => (record.entry.version.saturating_add(1), record.created),
                None => (1, now),
            };
            let record = Record {
                entry: Entry {
                    name: name.to_owned(),
                    kind,
                    placeholder,
                    header,
                    version,
                    current: value,
                    previous: None,
                    previous_valid_until: None,
                },
                created,
                updated: now,
            };
            contents.records.insert(name.to_owned(), record);
            Ok(())
        })?;
        info_of(&contents, name)
    }

    fn rotate_at(
        &self,
        name: &str,
        value: Secret,
        grace: Duration,
        now: u64,
    ) -> Result<SecretInfo, VaultError> {
        if validate::name(name).is_err() {
            return Err(not_found(name));
        }
        // Round a fractional second up: the grace asked for is a minimum.
        let grace_secs = grace
            .as_secs()
            .saturating_add(u64::from(grace.subsec_nanos() > 0));
        let contents = self.modify(now, |contents| {
            let record = contents
                .records
                .get_mut(name)
                .ok_or_else(|| not_found(name))?;
            let entry = &mut record.entry;
            validate::value(name, entry.kind, &value)?;
            validate::value_for_kind(name, entry.kind, &value)?;
            entry.previous = Some(std::mem::replace(&mut entry.current, value));
            entry.previous_valid_until = Some(now.saturating_add(grace_secs));
            entry.version = entry.version.saturating_add(1);
            record.updated = now;
            Ok(())
        })?;
        info_of(&contents, name)
    }

    /// Lock, decrypt, change, drop expired previous values, encrypt, replace.
    /// Returns what was written.
    fn modify(
        &self,
        now: u64,
        change: impl FnOnce(&mut VaultContents) -> Result<(), VaultError>,
    ) -> Result<VaultContents, VaultError> {
        let _lock = lock::exclusive(&self.lock_path)?;
        let key = master_key::read(&self.key_path)?;
        let mut contents = file::read(&self.vault_path, &key)?;
        change(&mut contents)?;
        contents.prune_expired(now);
        file::write(&self.dir, &self.vault_path, &key, &contents)?;
        Ok(contents)
    }
}

fn info_of(contents: &VaultContents, name: &str) -> Result<SecretInfo, VaultError> {
    contents
        .records
        .get(name)
        .map(Record::info)
        .ok_or_else(|| not_found(name))
}

fn not_found(name: &str) -> VaultError {
    VaultError::NotFound {
        name: name.to_owned(),
    }
}

fn unix_now() -> Result<u64, VaultError> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| VaultError::Clock)
}

fn exists(path: &Path) -> Result<bool, VaultError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(VaultError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Creates the state directory 0711 if needed (others may traverse it to
/// reach the CA certificate below, never list it; the vault and key files
/// are 0600), and refuses one that others can write to: whoever can write
/// there can swap the vault or the key.
fn ensure_state_dir(dir: &Path) -> Result<(), VaultError> {
    let err = |source: io::Error| VaultError::StateDir {
        path: dir.to_owned(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(dir)
        .map_err(err)?;
    let meta = fs::metadata(dir).map_err(err)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(VaultError::StateDirInsecure {
            path: dir.to_owned(),
            mode,
        });
    }
    // Its owner, and the directories above it, can swap it whole.
    crate::file_trust::check(dir).map_err(|source| VaultError::StateDirUntrusted {
        path: dir.to_owned(),
        source,
    })
}

/// Why a vault file was refused. Deliberately coarse: no parser message is
/// kept, because those can quote the input and the input may be plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TamperReason {
    NotJson,
    UnsupportedFormat,
    BadEnvelope,
    BadBase64,
    BadNonce,
    /// GCM tag mismatch: the file was modified, or the key is not the one it
    /// was written with.
    AuthenticationFailed,
    MalformedDocument,
    InvalidEntry,
}

impl fmt::Display for TamperReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TamperReason::NotJson => "not JSON",
            TamperReason::UnsupportedFormat => "\"format\" is not 1",
            TamperReason::BadEnvelope => "missing or unexpected fields",
            TamperReason::BadBase64 => "invalid base64",
            TamperReason::BadNonce => "nonce is not 12 bytes",
            TamperReason::AuthenticationFailed => {
                "authentication tag mismatch: modified, or encrypted under another master key"
            }
            TamperReason::MalformedDocument => "decrypted document is malformed",
            TamperReason::InvalidEntry => "decrypted document holds an invalid entry",
        })
    }
}

/// What is wrong with a secret value; never the value itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueProblem {
    Empty,
    TooLong {
        len: usize,
    },
    /// NUL, CR or LF.
    ForbiddenByte,
    /// An `aws_sigv4` value that is not `ID:SECRET[:TOKEN]`.
    NotAwsKey,
    /// An `oauth2_client_credentials` or `github_app` value that does not
    /// describe how to fetch a token.
    Grant {
        kind: SecretKind,
        problem: GrantProblem,
    },
}

impl fmt::Display for ValueProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueProblem::Empty => f.write_str("it is empty"),
            ValueProblem::TooLong { len } => {
                write!(f, "it is {len} bytes, the limit is {VALUE_MAX}")
            }
            ValueProblem::ForbiddenByte => f.write_str(
                "it contains a NUL, CR or LF byte (values go into HTTP headers); \
                 strip the trailing newline",
            ),
            ValueProblem::NotAwsKey => f.write_str(
                "an aws_sigv4 value is ACCESS_KEY_ID:SECRET_ACCESS_KEY, or \
                 ACCESS_KEY_ID:SECRET_ACCESS_KEY:SESSION_TOKEN, without spaces",
            ),
            ValueProblem::Grant {
                kind: SecretKind::GithubApp,
                problem,
            } => write!(
                f,
                "{problem}; a github_app value is YAML with the keys app_id, \
                 installation_id, private_key (the App's PEM key) and, for GitHub \
                 Enterprise Server, api_url"
            ),
            ValueProblem::Grant { problem, .. } => write!(
                f,
                "{problem}; an oauth2_client_credentials value is YAML with the keys \
                 token_url (https), client_id, client_secret and, if the server \
                 wants them, scope, audience and client_auth (basic or post)"
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("cannot create or open the state directory {path}: {source}")]
    StateDir { path: PathBuf, source: io::Error },

    #[error(
        "state directory {path} has mode {mode:04o}, writable by group or others; fix: chmod 700 {path}"
    )]
    StateDirInsecure { path: PathBuf, mode: u32 },

    #[error("state directory {path}: {source}")]
    StateDirUntrusted {
        path: PathBuf,
        source: crate::file_trust::Untrusted,
    },

    #[error(
        "master key {path} does not exist while the vault does; restore the key from a backup (a new key cannot decrypt the vault)"
    )]
    MasterKeyMissing { path: PathBuf },

    #[error("master key {path} is not a regular file (symlinks are refused)")]
    MasterKeyNotFile { path: PathBuf },

    #[error(
        "master key {path} has mode {mode:04o}, readable by group or others; refusing to use it. Fix: chmod 600 {path}"
    )]
    MasterKeyPermissions { path: PathBuf, mode: u32 },

    #[error(
        "master key {path} is owned by uid {owner}, not by the user running airlock (uid {euid}); fix: chown {euid} {path}"
    )]
    MasterKeyOwner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },

    #[error("master key {path} is {len} bytes, expected 32; restore the original key file")]
    MasterKeyLength { path: PathBuf, len: u64 },

    #[error("cannot read or write the master key {path}: {source}")]
    MasterKeyIo { path: PathBuf, source: io::Error },

    #[error(
        "vault {path} cannot be authenticated ({reason}); nothing was loaded. Restore the file or the master key it was written with"
    )]
    Tampered { path: PathBuf, reason: TamperReason },

    #[error("cannot read or write {path}: {source}")]
    Io { path: PathBuf, source: io::Error },

    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },

    #[error("cannot encode or encrypt the vault {path}")]
    Encode { path: PathBuf },

    #[error("the system random number generator failed: {source}")]
    Random { source: rand::Error },

    #[error("the system clock is set before 1970")]
    Clock,

    #[error(
        "invalid secret name {name:?}: use 1 to 64 characters of a-z 0-9 _ . - starting with a letter or digit"
    )]
    InvalidName { name: String },

    #[error("invalid placeholder {placeholder:?}: use 8 to 200 characters of A-Z a-z 0-9 . _ ~ -")]
    InvalidPlaceholder { placeholder: String },

    #[error("secret {name:?}: header {header:?} refused: {problem}")]
    InvalidHeader {
        name: String,
        header: String,
        problem: &'static str,
    },

    #[error("placeholder {placeholder:?} is already used by secret {owner:?}")]
    PlaceholderInUse { placeholder: String, owner: String },

    #[error("invalid value for secret {name:?}: {problem}")]
    InvalidValue { name: String, problem: ValueProblem },

    #[error(
        "unknown secret kind {kind:?}: expected bearer, header, basic, query, oauth2_client_credentials, aws_sigv4 or github_app"
    )]
    UnknownKind { kind: String },

    #[error("no secret named {name:?} in the vault")]
    NotFound { name: String },
}
