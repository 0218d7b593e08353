//! The host's service sockets an agent must not reach. A named Unix
//! socket is a file, and none of Airlock's hooks or system call filters
//! sees where a `connect` to one leads: a service listening there
//! (systemd-resolved, nscd, avahi) acts for the agent outside its cgroup,
//! and resolves any name it is asked. `airlock run` gives the agent a
//! mount namespace of its own and mounts `/dev/null` over each such socket
//! there: a connect then fails with `ECONNREFUSED`, and the NSS modules
//! fall back to DNS, which Airlock answers. An unprivileged agent cannot
//! take the mounts away: in a user namespace of its own they are locked
//! to it.
//!
//! What it does not cover: a socket made after the agent started (a
//! service started, or restarted: unlinking the old socket on the host
//! takes the mount on it away in every namespace), and the same socket
//! reached through another mount of its file system.

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt as _, fs::FileTypeExt as _},
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum HideError {
    #[error("cannot give the agent a mount namespace of its own: {0}")]
    Namespace(#[source] std::io::Error),
    #[error("cannot hide {path} from the agent: {source}")]
    Hide {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Mounts `/dev/null` over each of `sockets` that is a socket (through
/// symlinks), in a mount namespace the calling thread moves into, whose
/// mounts do not propagate back to the host's (the host's still reach
/// it). Returns those hidden; with none there, the thread stays where it
/// is. Must run before the thread is confined by Landlock, which forbids
/// mounting.
pub fn hide(sockets: &[PathBuf]) -> Result<Vec<PathBuf>, HideError> {
    let mut present = Vec::new();
    for path in sockets {
        match std::fs::metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => present.push(path),
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(HideError::Hide {
                    path: path.clone(),
                    source,
                });
            }
        }
    }
    if present.is_empty() {
        return Ok(Vec::new());
    }
    // SAFETY: unshare(2) with a flag; it changes only this thread's view.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(HideError::Namespace(std::io::Error::last_os_error()));
    }
    // A slave: mounts made on the host later (an automounted home, a
    // workspace) still reach the agent, and none of its goes back.
    mount(None, Path::new("/"), libc::MS_REC | libc::MS_SLAVE).map_err(HideError::Namespace)?;
    let mut hidden = Vec::new();
    for path in present {
        mount(Some(Path::new("/dev/null")), path, libc::MS_BIND).map_err(|source| {
            HideError::Hide {
                path: path.clone(),
                source,
            }
        })?;
        hidden.push(path.clone());
    }
    Ok(hidden)
}

/// mount(2) of `source` (none for a change of propagation) on `target`.
fn mount(source: Option<&Path>, target: &Path, flags: libc::c_ulong) -> std::io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let source = source.map(c).transpose()?;
    let target = c(target)?;
    // SAFETY: NUL-terminated strings that outlive the call, or null where
    // mount(2) takes none (no file system type or data for a bind or a
    // propagation change).
    let rc = unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
