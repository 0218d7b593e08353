//! The bpf(2) commands aya does not expose (BPF_PROG_QUERY with ids,
//! BPF_OBJ_GET of a link, BPF_LINK_UPDATE): one entry into the kernel for
//! all of them; and the network namespace cookie the hooks compare with.

use std::os::fd::AsRawFd;

/// `SO_NETNS_COOKIE` (Linux 5.14; the same number on every architecture
/// that has it).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the network namespace `socket` belongs to: the value
/// `bpf_get_netns_cookie` gives the hooks for sockets of that namespace.
pub fn netns_cookie(socket: &impl AsRawFd) -> std::io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are live locals; the kernel writes at
    // most `len` bytes to the first and the written size to the second.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            std::ptr::from_mut(&mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if cookie == 0 || len as usize != std::mem::size_of::<u64>() {
        return Err(std::io::Error::other(
            "the kernel gave no network namespace cookie (Linux 5.14 or later is needed)",
        ));
    }
    Ok(cookie)
}

/// bpf(`cmd`, `attr`, size of `attr`); the kernel's non-negative answer
/// (0, or an fd), or the error it set.
///
/// # Safety
/// `attr` must be the member of `union bpf_attr` that `cmd` reads, fully
/// initialised, and every pointer and fd in it must stay valid for the
/// duration of the call.
pub(super) unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: the caller vouches for `attr` (see above); its size is the
    // one passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
