//! No swap. The daemon's memory holds the master key, the CA's key and
//! every secret it has used, in the clear; pages the kernel swaps out are
//! written to a disk that outlives the process and that Airlock neither
//! encrypts nor erases. Locking all of it, rather than the buffers a
//! `Secret` owns, is the only lock that holds: a secret is copied into
//! request headers, hyper's buffers and rustls' records on its way out.

use std::{io, path::Path};

/// Locks every page the process has and will have into RAM. `MCL_ONFAULT`
/// locks pages as they are touched instead of faulting in every mapping
/// now, so the daemon's resident memory stays what it uses (the binary's
/// untouched pages and the threads' reserved stacks stay on disk and
/// unreserved). Memory locks are not inherited across `fork` or `exec`:
/// the agents and helpers the daemon starts are not locked.
pub fn lock_all() -> io::Result<()> {
    // SAFETY: mlockall takes flags only and changes no memory's contents.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Locks memory when the config asks for it (the default), and says what
/// to do when the kernel refuses: without `CAP_IPC_LOCK` a process may
/// lock only `RLIMIT_MEMLOCK` (8 MiB by default), less than the daemon
/// maps, so the call fails whole and nothing is half-locked.
pub fn lock_as_configured(lock_memory: bool, config_path: &Path) -> anyhow::Result<()> {
    if !lock_memory {
        return Ok(());
    }
    lock_all().map_err(|err| {
        anyhow::anyhow!(
            "cannot lock this process's memory into RAM (mlockall: {err}), so the master key and secrets could be written to swap: run it as root with CAP_IPC_LOCK (the installed unit grants it), or, on a host with no swap or an encrypted one, set `lock_memory: false` in {}",
            config_path.display()
        )
    })
}
