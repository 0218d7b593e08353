//! The bpf(2) commands aya does not expose (BPF_PROG_QUERY with ids,
//! BPF_OBJ_GET of a link, BPF_LINK_UPDATE): one entry into the kernel for
//! all of them.

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
