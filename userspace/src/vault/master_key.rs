//! The 32-byte AES-256 master key in `<state_dir>/master.key`.
//!
//! The key file is the one thing that turns `vault.json` back into secrets, so
//! it is checked on every use: a regular file (not a symlink someone planted),
//! owned by the user running Airlock, with no group or other access.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use aes_gcm::{Aes256Gcm, Key, KeyInit};
use rand::RngCore;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use super::VaultError;
use super::file::{remove_if_present, sync_dir, temp_path};

pub const KEY_LEN: usize = 32;

pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl MasterKey {
    pub fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.0[..]))
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

/// Reads and checks the key. A missing file is `MasterKeyMissing`, which
/// `Vault::open` turns into "create one" only when no vault exists yet.
pub fn read(path: &Path) -> Result<MasterKey, VaultError> {
    let io_err = |source: io::Error| VaultError::MasterKeyIo {
        path: path.to_owned(),
        source,
    };
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(VaultError::MasterKeyMissing {
                path: path.to_owned(),
            });
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(VaultError::MasterKeyNotFile {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(io_err(e)),
    };
    // fstat on the opened file, so the checks apply to the bytes we read and
    // not to whatever the path points at a moment later.
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(VaultError::MasterKeyNotFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(VaultError::MasterKeyPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(VaultError::MasterKeyOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            euid,
        });
    }
    if meta.len() != KEY_LEN as u64 {
        return Err(VaultError::MasterKeyLength {
            path: path.to_owned(),
            len: meta.len(),
        });
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    file.read_exact(&mut key[..]).map_err(io_err)?;
    Ok(MasterKey(key))
}

/// Creates a fresh random key. The caller holds the vault lock and has seen
/// that neither the key nor the vault exists.
///
/// The key is written to a temp file first and hard-linked into place: the
/// link fails if a key already exists (the O_EXCL guarantee), and a crash
/// can never leave a truncated `master.key` that every later run would refuse.
pub fn create(path: &Path, dir: &Path) -> Result<MasterKey, VaultError> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    OsRng
        .try_fill_bytes(&mut key[..])
        .map_err(|source| VaultError::Random { source })?;

    let tmp = temp_path(path);
    let io_err = |path: &Path, source: io::Error| VaultError::MasterKeyIo {
        path: path.to_owned(),
        source,
    };
    remove_if_present(&tmp).map_err(|e| io_err(&tmp, e))?;
    let written = write_new(&tmp, &key[..]).and_then(|()| fs::hard_link(&tmp, path));
    // The temp name must not outlive this call whether or not the link worked.
    let cleaned = remove_if_present(&tmp);
    match written {
        Ok(()) => {}
        // Another writer won the race despite the lock (e.g. a second
        // state dir pointing at the same files): use its key, never replace it.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return read(path),
        Err(e) => return Err(io_err(path, e)),
    }
    cleaned.map_err(|e| io_err(&tmp, e))?;
    sync_dir(dir).map_err(|e| io_err(dir, e))?;
    Ok(MasterKey(key))
}

fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
