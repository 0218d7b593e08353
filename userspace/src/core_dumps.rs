//! No core dumps. A core is the process's memory written to a file: the
//! daemon's holds the master key, the CA's key and every secret it has
//! used, in the clear, and `airlock secret` holds the value it was given.
//! Where the host keeps cores (a file in the working directory,
//! systemd-coredump, apport) is the host's choice, not Airlock's, so none
//! is made.

use std::io;

/// Forbids core dumps to this process and what it starts. Both locks are
/// needed: `PR_SET_DUMPABLE` alone is overridden where `fs.suid_dumpable`
/// is 2 (Ubuntu's default with apport), and `RLIMIT_CORE` alone is not
/// read by every `core_pattern` pipe. Not dumpable also keeps processes
/// without `CAP_SYS_PTRACE` out of `/proc/PID/mem` and `environ`.
pub fn forbid() -> io::Result<()> {
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct, which lives across the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
