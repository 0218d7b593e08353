//! Which programs are attached to a cgroup, asked of the kernel.

use std::{fs::File, os::fd::AsRawFd as _, path::Path};

use super::sys;

const BPF_PROG_QUERY: libc::c_long = 16;

/// The attach types Airlock uses (enum bpf_attach_type).
const ATTACH_TYPES: [u32; 11] = [
    1,  // BPF_CGROUP_INET_EGRESS
    2,  // BPF_CGROUP_INET_SOCK_CREATE
    3,  // BPF_CGROUP_SOCK_OPS
    8,  // BPF_CGROUP_INET4_BIND
    9,  // BPF_CGROUP_INET6_BIND
    10, // BPF_CGROUP_INET4_CONNECT
    11, // BPF_CGROUP_INET6_CONNECT
    14, // BPF_CGROUP_UDP4_SENDMSG
    15, // BPF_CGROUP_UDP6_SENDMSG
    19, // BPF_CGROUP_UDP4_RECVMSG
    20, // BPF_CGROUP_UDP6_RECVMSG
];

/// `union bpf_attr` as BPF_PROG_QUERY reads it.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// Programs attached directly to `cgroup` for `attach_type`: their
/// count, with their ids written to `ids` (none asked when it is empty; a
/// count past its length is an error, ENOSPC).
fn query(cgroup: &File, attach_type: u32, ids: &mut [u32]) -> std::io::Result<u32> {
    let mut attr = QueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        prog_ids: if ids.is_empty() {
            0
        } else {
            ids.as_mut_ptr() as u64
        },
        prog_cnt: ids.len() as u32,
        ..QueryAttr::default()
    };
    // SAFETY: `attr` is the prog_query member of union bpf_attr; prog_ids
    // is null or points to `prog_cnt` writable u32s that outlive the call,
    // and the cgroup's fd is open.
    unsafe { sys::bpf(BPF_PROG_QUERY, &mut attr) }?;
    Ok(attr.prog_cnt)
}

/// The ids of the programs attached directly to `cgroup` for one attach
/// type (at most 64: Airlock attaches one per hook).
fn program_ids(cgroup: &File, attach_type: u32) -> std::io::Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let n = query(cgroup, attach_type, &mut ids)? as usize;
    Ok(ids[..n.min(ids.len())].to_vec())
}

/// Whether program `id` is attached directly to `cgroup` for `attach_type`.
pub(super) fn is_attached(cgroup: &File, attach_type: u32, id: u32) -> std::io::Result<bool> {
    Ok(program_ids(cgroup, attach_type)?.contains(&id))
}

/// How many hooks Airlock puts on the cgroup root.
pub const HOOK_COUNT: usize = ATTACH_TYPES.len();

/// The hooks (by attach type) that have no program attached directly to
/// `cgroup`. A process placed there would not be captured by them.
pub fn missing_hooks(cgroup: &Path) -> std::io::Result<Vec<u32>> {
    let dir = File::open(cgroup)?;
    let mut missing = Vec::new();
    for attach_type in ATTACH_TYPES {
        if program_ids(&dir, attach_type)?.is_empty() {
            missing.push(attach_type);
        }
    }
    Ok(missing)
}

/// Programs attached directly to `cgroup` for the hooks Airlock uses, as
/// the kernel counts them: a second daemon that attached again instead of
/// re-opening its pins would show here.
pub fn attached_program_count(cgroup: &Path) -> std::io::Result<u32> {
    let dir = File::open(cgroup)?;
    let mut total = 0;
    for attach_type in ATTACH_TYPES {
        total += query(&dir, attach_type, &mut [])?;
    }
    Ok(total)
}
