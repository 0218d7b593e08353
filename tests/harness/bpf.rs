//! What an older Airlock, or someone with root behind Airlock's back, could
//! have left under the pin directory: a link switched to another program,
//! a map pinned with another layout. Made with raw bpf(2) calls so that
//! nothing of Airlock's own loader is involved.

use std::{
    ffi::CString,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> i64 {
    // SAFETY: every caller passes the member of union bpf_attr that `cmd`
    // reads, fully initialised, with pointers that outlive the call.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    }
}

fn owned(fd: i64, what: &str) -> OwnedFd {
    assert!(fd >= 0, "{what}: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("pin path")
}

#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// A connect4 program that lets every connect go where it was meant to:
/// what a link running anything but Airlock's program amounts to.
pub fn permissive_connect4() -> OwnedFd {
    // r0 = 1; exit
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, 1, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = CString::new("GPL").expect("license");
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"let_all_go");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: BPF_CGROUP_INET4_CONNECT,
    };
    owned(bpf(BPF_PROG_LOAD, &mut attr), "BPF_PROG_LOAD")
}

#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

fn obj_get(pin: &Path) -> OwnedFd {
    let path = c_path(pin);
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    owned(
        bpf(BPF_OBJ_GET, &mut attr),
        &format!("BPF_OBJ_GET {}", pin.display()),
    )
}

#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// Make the link pinned at `pin` run `program` instead.
pub fn switch_link(pin: &Path, program: &OwnedFd) {
    let link = obj_get(pin);
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    let rc = bpf(BPF_LINK_UPDATE, &mut attr);
    assert_eq!(
        rc,
        0,
        "BPF_LINK_UPDATE: {}",
        std::io::Error::last_os_error()
    );
}

#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// Replace the map pinned at `pin` with an LRU hash map of another value
/// size, as a build with another record layout would have pinned.
pub fn pin_map_of_another_layout(pin: &Path, value_size: u32) {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_LRU_HASH,
        key_size: 8,
        value_size,
        max_entries: 1024,
        map_flags: 0,
    };
    let map = owned(bpf(BPF_MAP_CREATE, &mut attr), "BPF_MAP_CREATE");
    std::fs::remove_file(pin).expect("unpin the map");
    let path = c_path(pin);
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: map.as_raw_fd() as u32,
        file_flags: 0,
    };
    let rc = bpf(BPF_OBJ_PIN, &mut attr);
    assert_eq!(rc, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
}

/// The value size of the map pinned at `pin`.
pub fn pinned_map_value_size(pin: &Path) -> u32 {
    aya::maps::MapInfo::from_pin(pin)
        .expect("pinned map info")
        .value_size()
}

/// The tag (hash of the instructions) of the program the link pinned at
/// `pin` runs.
pub fn linked_program_tag(pin: &Path) -> u64 {
    let link: aya::programs::links::FdLink = aya::programs::links::PinnedLink::from_pin(pin)
        .expect("pinned link")
        .into();
    let id = link.info().expect("link info").program_id();
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
        .expect("the linked program is loaded")
        .tag()
}
