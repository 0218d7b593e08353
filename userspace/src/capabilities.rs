//! The daemon keeps only the capabilities it needs, whoever starts it. The
//! unit grants just these (`CapabilityBoundingSet=`), but a daemon started
//! without systemd (a container, a host where systemd is not PID 1, the
//! tests) would otherwise hold all of root's. Dropping the rest itself
//! makes both ways the same, so the tests run with the unit's set and a
//! capability the unit lacks fails them rather than a user's install.

use std::io;

/// Load and attach the hooks and read their maps (`CAP_BPF`,
/// `CAP_PERFMON`; `CAP_NET_ADMIN` for cgroup programs); mark the proxy's
/// sockets as the daemon's (`SO_PRIORITY`, `CAP_NET_ADMIN`); mount bpffs
/// (`CAP_SYS_ADMIN`); raise the limit on open files (`CAP_SYS_RESOURCE`);
/// keep memory locked as it grows (`CAP_IPC_LOCK`, checked at each new
/// mapping). The unit lists the same, and `CAP_DAC_OVERRIDE`, which only
/// making the managed cgroup needs: the daemon makes it before it drops
/// the rest. Numbered as in `linux/capability.h`.
pub const KEPT: [(u32, &str); 6] = [
    (12, "CAP_NET_ADMIN"),
    (14, "CAP_IPC_LOCK"),
    (21, "CAP_SYS_ADMIN"),
    (24, "CAP_SYS_RESOURCE"),
    (38, "CAP_PERFMON"),
    (39, "CAP_BPF"),
];

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Sets {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The capabilities of [`KEPT`] as a bit mask, as `/proc/PID/status`
/// shows them.
pub fn kept_mask() -> u64 {
    KEPT.iter().fold(0, |mask, (cap, _)| mask | 1 << cap)
}

/// Drops every capability but [`KEPT`]: from the bounding set, so that
/// what the daemon execs (its `kernel-attach` helper, which runs as root)
/// cannot regain them, and from the permitted, effective and inheritable
/// sets. A bounding set already without them (under the unit) needs no
/// `CAP_SETPCAP`.
pub fn keep_only_needed() -> io::Result<()> {
    let keep = kept_mask();
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .unwrap_or(40)
        .min(63);
    let mut bounding_error = None;
    for cap in (0..=last).filter(|cap| keep & (1 << cap) == 0) {
        let cap = libc::c_ulong::from(cap);
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) } != 1 {
            continue;
        }
        // SAFETY: as above.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            bounding_error.get_or_insert_with(io::Error::last_os_error);
        }
    }
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut sets = [Sets::default(); 2];
    // SAFETY: for version 3, capget reads the header and writes two `Sets`,
    // which `sets` holds; both outlive the call.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, sets.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for (word, set) in sets.iter_mut().enumerate() {
        let kept = (keep >> (32 * word)) as u32;
        set.effective &= kept;
        set.permitted &= kept;
        set.inheritable = 0;
    }
    // SAFETY: capset reads the header and two `Sets`, which outlive the
    // call; lowering its own sets needs no privilege.
    if unsafe { libc::syscall(libc::SYS_capset, &header, sets.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    bounding_error.map_or(Ok(()), Err)
}
