//! The BPF filesystem where links and maps are pinned.

use std::path::{Path, PathBuf};

use super::KernelError;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where bpffs is mounted: `/sys/fs/bpf` by convention. Hosts that boot
/// without systemd (containers, CI) may not have mounted it; mount it then,
/// since pinning is what keeps enforcement alive across a daemon restart.
pub(super) fn ensure_mounted() -> Result<PathBuf, KernelError> {
    let root = Path::new("/sys/fs/bpf");
    if is_bpffs(root)? {
        return Ok(root.to_path_buf());
    }
    std::fs::create_dir_all(root).map_err(|source| KernelError::BpfFs {
        path: root.to_path_buf(),
        source,
    })?;
    let src = c"bpf";
    let target = c"/sys/fs/bpf";
    // SAFETY: all pointers are NUL-terminated string literals that outlive
    // the call; `data` may be null for bpffs.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(KernelError::BpfFs {
            path: root.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(root.to_path_buf())
}

fn is_bpffs(path: &Path) -> Result<bool, KernelError> {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return Ok(false);
    };
    // SAFETY: an all-zero statfs is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `st` is a valid out pointer.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::NotFound {
            return Ok(false);
        }
        return Err(KernelError::BpfFs {
            path: path.to_path_buf(),
            source: err,
        });
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}
