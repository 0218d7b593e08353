//! An exclusive advisory lock that serialises read-modify-write cycles, so two
//! `airlock secret set` runs cannot both read the old vault and lose an update.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::VaultError;

/// Held while the lock is held; closing the file on drop releases it, so an
/// early return or a panic cannot leave the vault locked.
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
}

pub fn exclusive(path: &Path) -> Result<LockGuard, VaultError> {
    let err = |source: io::Error| VaultError::Lock {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(err)?;
    // flock locks the open file description, so two opens in one process
    // exclude each other just like two processes do.
    loop {
        // SAFETY: the fd belongs to `file`, which is alive for the whole call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(err(e));
        }
    }
    Ok(LockGuard { _file: file })
}
