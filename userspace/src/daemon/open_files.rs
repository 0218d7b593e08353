//! The daemon's limit on open files. Every connection an agent holds
//! through the proxy takes two descriptors (the agent's and the
//! upstream's), and the soft limit a shell or a container hands a process
//! is often 1,024: about 500 agent connections in all, shared by every
//! agent, before `accept` fails with `EMFILE`. The soft limit may be raised
//! to the hard one without privilege, so the daemon does that at start, as
//! nginx's `worker_rlimit_nofile` and Go's runtime do. The systemd unit
//! sets `LimitNOFILE=` for the hard limit.

use std::io;

/// Below this many descriptors the daemon warns at start: a few thousand
/// agent connections at once is an ordinary load for several agents.
const ENOUGH: u64 = 8192;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit the daemon was started with.
    pub before: u64,
    /// The soft limit it runs with.
    pub now: u64,
}

impl OpenFiles {
    /// About how many agent connections the proxy can hold at once.
    pub fn connections(&self) -> u64 {
        self.now / 2
    }

    pub fn is_low(&self) -> bool {
        self.now < ENOUGH
    }
}

/// Raises the soft limit on open files to the hard limit.
pub fn raise() -> io::Result<OpenFiles> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through the pointer, which points
    // at a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads one rlimit through the pointer, which
        // points at a live local.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(OpenFiles {
        before,
        now: limit.rlim_cur,
    })
}
