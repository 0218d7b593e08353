//! What `airlock run` forbids the agent's process tree at the syscall
//! level (seccomp), where the cgroup hooks cannot see:
//!
//! - **Sockets of other families than IP, Unix and netlink.** The kernel
//!   runs `cgroup/sock_create` for the internet families only. `AF_VSOCK`
//!   needs no privilege and reaches the hypervisor (and, in VMs that carry
//!   their network over it, the internet); `AF_PACKET` and `AF_XDP` put
//!   frames on the wire for an agent run as root; Bluetooth, CAN, RDS and
//!   TIPC have links of their own.
//! - **io_uring.** Its requests (`IORING_OP_SOCKET`, `IORING_OP_CONNECT`)
//!   are not system calls, so no seccomp rule reaches them. Runtimes that
//!   use it (libuv, for Node) fall back to plain system calls when setup
//!   fails.
//! - **Multicast membership** (`setsockopt` joins and leaves, IPv4 and
//!   IPv6). Each one makes the kernel send an IGMP or MLD report onto the
//!   local network, from no socket of the agent's, so no cgroup hook sees
//!   it, and the group and sources in it are the agent's choice: tens of
//!   bytes off the host at a call.
//! - **Reaching into other processes:** `ptrace`, `process_vm_readv`/
//!   `writev` and `pidfd_getfd`. A process of the same user outside the
//!   agent's cgroup (the user's shell, another agent run as the same user)
//!   has sockets no hook sees; taking one of its descriptors, or making it
//!   connect for the agent, would go around Airlock, or be audited as the
//!   other agent. Debuggers inside an agent do not work for that reason.
//!
//! - **Abstract Unix sockets and signals of processes outside the agent**
//!   (Landlock scopes, kernel 6.12 and later): an abstract socket is no
//!   file a permission guards, and whoever listens on one outside (an X
//!   server, a helper that relays) would act for the agent. Those the
//!   agent's own processes make stay reachable to them.
//! - **The memory of processes outside the agent** (any Landlock domain,
//!   kernel 5.13 and later): `/proc/PID/mem` is a file, not a system call
//!   seccomp could refuse, and needs only the same user; Landlock lets a
//!   process in a domain reach into no process outside it. Before 6.12,
//!   which has no scopes, the domain is made by handling one file access
//!   right no agent needs (making block devices).
//!
//! Refused calls fail with EPERM, as the cgroup hooks' refusals do. The
//! filter is inherited by every child and cannot be removed. A 32-bit
//! (i386) system call is fatal: `socketcall(2)` hides its family in
//! memory that seccomp cannot read, so no rule could tell.
//!
//! Processes placed in an agent's cgroup by other means than `airlock
//! run` (a systemd unit with `Slice=airlock.slice`) get neither the filter
//! nor the domain; such units set `RestrictAddressFamilies=AF_UNIX AF_INET
//! AF_INET6 AF_NETLINK` themselves, and run as a user of their own
//! (README.md).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// The families an agent may open sockets of: those the cgroup hooks
/// capture, and those that stay on this host (and that runtimes need:
/// glibc asks netlink for the host's addresses).
pub const ALLOWED_FAMILIES: [libc::c_int; 4] = [
    libc::AF_UNIX,
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_NETLINK,
];

#[derive(Debug, thiserror::Error)]
#[error("cannot build the agent's system call filter: {0}")]
pub struct FilterError(#[from] seccompiler::BackendError);

/// The filter, built before fork: installing it (`install`) must not
/// allocate.
pub fn build() -> Result<BpfProgram, FilterError> {
    let other_family = ALLOWED_FAMILIES
        .iter()
        .map(|&family| {
            SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, family as u64)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut refused: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in with_x32(&[libc::SYS_socket, libc::SYS_socketpair]) {
        refused.insert(nr, vec![SeccompRule::new(other_family.clone())?]);
    }
    let io_uring = [
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ];
    let other_processes = [
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_getfd,
    ];
    for nr in with_x32(&io_uring)
        .into_iter()
        .chain(with_x32(&other_processes))
        .chain(X32_OWN_OTHER_PROCESSES.iter().copied())
    {
        // No rule: refused whatever the arguments.
        refused.insert(nr, Vec::new());
    }
    let membership = multicast_membership()?;
    for nr in with_x32(&[libc::SYS_setsockopt])
        .into_iter()
        .chain(X32_OWN_SETSOCKOPT.iter().copied())
    {
        refused.insert(nr, membership.clone());
    }
    let filter = SeccompFilter::new(
        refused,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        std::env::consts::ARCH.try_into()?,
    )?;
    Ok(filter.try_into()?)
}

/// The x32 ABI's numbers beside the native ones: same architecture in
/// seccomp's eyes, numbers offset by bit 30, and another way in where a
/// kernel enables it.
fn with_x32(native: &[i64]) -> Vec<i64> {
    let mut all = native.to_vec();
    if cfg!(target_arch = "x86_64") {
        const X32_SYSCALL_BIT: i64 = 0x4000_0000;
        all.extend(native.iter().map(|&nr| nr | X32_SYSCALL_BIT));
    }
    all
}

/// The x32 ABI's own entries for `ptrace`, `process_vm_readv` and
/// `process_vm_writev` (521, 539, 540 with bit 30; the native numbers with
/// bit 30 are no call on x32).
const X32_OWN_OTHER_PROCESSES: &[i64] = if cfg!(target_arch = "x86_64") {
    &[0x4000_0000 | 521, 0x4000_0000 | 539, 0x4000_0000 | 540]
} else {
    &[]
};
/// The x32 ABI's own entry for `setsockopt`.
const X32_OWN_SETSOCKOPT: &[i64] = if cfg!(target_arch = "x86_64") {
    &[0x4000_0000 | 541]
} else {
    &[]
};

/// `setsockopt` calls that join or leave a multicast group or change its
/// sources: at level `IPPROTO_IP`, `IP_ADD_MEMBERSHIP` (35) up to
/// `MCAST_MSFILTER` (48), which are all of them; at `IPPROTO_IPV6`,
/// `IPV6_ADD_MEMBERSHIP`/`DROP_MEMBERSHIP` (20, 21), the anycast joins
/// (27, 28: they join the address's solicited-node group) and the
/// `MCAST_*` calls (42 to 48).
fn multicast_membership() -> Result<Vec<SeccompRule>, FilterError> {
    let level = |level: libc::c_int| {
        SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, level as u64)
    };
    let names = |first: u64, last: u64| -> Result<Vec<SeccompCondition>, FilterError> {
        Ok(vec![
            SeccompCondition::new(2, SeccompCmpArgLen::Dword, SeccompCmpOp::Ge, first)?,
            SeccompCondition::new(2, SeccompCmpArgLen::Dword, SeccompCmpOp::Le, last)?,
        ])
    };
    let ranges = [
        (
            libc::IPPROTO_IP,
            libc::IP_ADD_MEMBERSHIP,
            libc::MCAST_MSFILTER,
        ),
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_ADD_MEMBERSHIP,
            libc::IPV6_DROP_MEMBERSHIP,
        ),
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_JOIN_ANYCAST,
            libc::IPV6_LEAVE_ANYCAST,
        ),
        (
            libc::IPPROTO_IPV6,
            libc::MCAST_JOIN_GROUP,
            libc::MCAST_MSFILTER,
        ),
    ];
    ranges
        .into_iter()
        .map(|(at, first, last)| {
            let mut conditions = vec![level(at)?];
            conditions.extend(names(first as u64, last as u64)?);
            Ok(SeccompRule::new(conditions)?)
        })
        .collect()
}

/// What Landlock made of the agent's confinement on this kernel.
#[derive(Debug, PartialEq, Eq)]
pub enum Scoped {
    /// Scopes, and no reaching into processes outside.
    Enforced,
    /// Landlock before ABI 6 (kernel 6.12): no scopes, but processes
    /// outside are out of reach.
    NoScopes,
    /// No Landlock at all (before 5.13, or left out of `lsm=`).
    Unsupported,
}

/// Scopes the calling thread, and what it execs, to its own abstract Unix
/// sockets and signals, and puts it in a Landlock domain, which keeps it
/// from `ptrace` and `/proc/PID/mem` of processes outside the domain.
pub fn scope_to_self() -> Result<Scoped, landlock::RulesetError> {
    use landlock::{AccessFs, Ruleset, RulesetAttr as _, RulesetStatus, Scope};
    // Without scopes (ABI 1 to 5) a ruleset must handle some file access
    // to exist at all: making block devices, which takes a capability no
    // agent should have, and is the one right handled here.
    let status = Ruleset::default()
        .handle_access(AccessFs::MakeBlock)?
        .scope(Scope::AbstractUnixSocket | Scope::Signal)?
        .create()?
        .restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Scoped::Enforced,
        RulesetStatus::PartiallyEnforced => Scoped::NoScopes,
        RulesetStatus::NotEnforced => Scoped::Unsupported,
    })
}

/// Marks every descriptor above standard error close-on-exec, so the
/// command starts with none it did not open itself: a socket inherited
/// from whoever ran `airlock run` was made outside the agent's cgroup, and
/// no hook would see what goes through it. Async-signal-safe.
pub fn close_inherited_on_exec() -> std::io::Result<()> {
    // SAFETY: close_range(2) with integer arguments; CLOEXEC only flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // Kernels before 5.11: one descriptor at a time, up to the limit.
    // SAFETY: sysconf with a constant name.
    let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.clamp(3, 1 << 20) as libc::c_int;
    for fd in 3..max {
        // SAFETY: fcntl on a number that may not be open fails with EBADF,
        // which is ignored; no memory is involved.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// The first of `fds` that is a socket of another family than Unix, and
/// that family: standard input, output or error handed to `airlock run` as
/// a network socket (by inetd, a socket unit with `Accept=yes`, `nc -e`,
/// socat's `EXEC:…,nofork`) was made outside the agent's cgroup, so no
/// hook sees what the agent writes to it. Those descriptors are the command's own, and are not closed.
pub fn network_socket_among(fds: &[libc::c_int]) -> Option<(libc::c_int, libc::c_int)> {
    fds.iter().find_map(|&fd| {
        let mut family: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt(2) writes at most `len` bytes into `family`,
        // which outlives the call; a descriptor that is no socket fails
        // with ENOTSOCK, and one that is not open with EBADF.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_DOMAIN,
                (&raw mut family).cast(),
                &mut len,
            )
        };
        (rc == 0 && family != libc::AF_UNIX).then_some((fd, family))
    })
}

/// Installs `filter` on the calling thread; between fork and exec, that is
/// the whole child. Sets no_new_privs, which the kernel requires of an
/// unprivileged caller (and `airlock run` wants anyway). Makes two system
/// calls and no allocation on success.
pub fn install(filter: &BpfProgram) -> std::io::Result<()> {
    seccompiler::apply_filter(filter).map_err(|err| match err {
        seccompiler::Error::Prctl(io) | seccompiler::Error::Seccomp(io) => io,
        other => std::io::Error::other(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// socket(2)'s errno for `family`, or 0 when a socket was made.
    fn socket_errno(family: libc::c_int, kind: libc::c_int) -> i32 {
        // SAFETY: socket(2) with plain integer arguments; a descriptor it
        // returns is closed at once.
        let fd = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return std::io::Error::last_os_error().raw_os_error().unwrap_or(-1);
        }
        // SAFETY: `fd` was just made here and is owned by no one else.
        unsafe { libc::close(fd) };
        0
    }

    /// Makes a block device node at `path`: the errno, or 0.
    fn mknod_block(path: &std::path::Path) -> i32 {
        use std::os::unix::ffi::OsStrExt as _;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
        // SAFETY: mknod(2) with a NUL-terminated path that outlives the
        // call; the node made is never opened.
        let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(7, 0)) };
        if rc == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        }
    }

    /// The Landlock domain that keeps an agent out of other processes'
    /// memory exists on kernels without scopes too, because the ruleset
    /// handles making block devices: a thread so confined is refused one,
    /// where the test's own thread (root) makes one.
    #[test]
    fn a_scoped_thread_is_in_a_landlock_domain_that_refuses_block_devices() {
        let dir = tempfile::tempdir().expect("tempdir");
        let confined = dir.path().join("confined");
        let seen = std::thread::spawn(move || {
            let scoped = scope_to_self().expect("landlock");
            (scoped, mknod_block(&confined))
        })
        .join()
        .expect("the confined thread");
        assert_eq!(seen, (Scoped::Enforced, libc::EACCES));
        // Control: unconfined, the same call succeeds, so the EACCES above
        // is Landlock's.
        assert_eq!(
            mknod_block(&dir.path().join("control")),
            0,
            "unconfined, no block device was made: this test needs root (CAP_MKNOD)"
        );
    }

    /// setsockopt(2) at `level` with `name` and `value`: the errno, or 0.
    fn setsockopt_errno<T>(fd: libc::c_int, level: i32, name: i32, value: &T) -> i32 {
        // SAFETY: the kernel reads `size_of::<T>()` bytes from `value`,
        // which outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (value as *const T).cast(),
                std::mem::size_of::<T>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        }
    }

    /// Joins of a multicast group on loopback (its reports stay there),
    /// IPv4 and IPv6, and whether setting the TTL works: errnos.
    fn joins() -> [i32; 3] {
        let v4 = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let v6 = std::net::UdpSocket::bind("[::1]:0").expect("udp6");
        let group4 = libc::ip_mreqn {
            imr_multiaddr: libc::in_addr {
                s_addr: u32::from_ne_bytes([239, 1, 2, 3]),
            },
            imr_address: libc::in_addr {
                s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
            },
            imr_ifindex: 0,
        };
        let lo = std::ffi::CString::new("lo").expect("name");
        // SAFETY: if_nametoindex with a NUL-terminated name.
        let lo = unsafe { libc::if_nametoindex(lo.as_ptr()) };
        let group6 = libc::ipv6_mreq {
            ipv6mr_multiaddr: libc::in6_addr {
                s6_addr: [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x4a, 0x17],
            },
            ipv6mr_interface: lo,
        };
        use std::os::fd::AsRawFd as _;
        [
            setsockopt_errno(
                v4.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_ADD_MEMBERSHIP,
                &group4,
            ),
            setsockopt_errno(
                v6.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_ADD_MEMBERSHIP,
                &group6,
            ),
            setsockopt_errno(v4.as_raw_fd(), libc::IPPROTO_IP, libc::IP_TTL, &7i32),
        ]
    }

    #[test]
    fn a_confined_thread_joins_no_multicast_group() {
        let filter = build().expect("filter");
        let confined = std::thread::spawn(move || {
            install(&filter).expect("install");
            joins()
        })
        .join()
        .expect("the confined thread");
        assert_eq!(
            confined,
            [libc::EPERM, libc::EPERM, 0],
            "joins refused, other options set"
        );
        // Control: unconfined, the kernel takes the joins (on loopback).
        assert_eq!(joins(), [0, 0, 0]);
    }

    /// A network socket as standard output was made outside the cgroup.
    #[test]
    fn a_network_socket_among_the_standard_descriptors_is_found() {
        use std::os::fd::AsRawFd as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let tcp =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (unix, _other) = std::os::unix::net::UnixStream::pair().expect("pair");
        let file = tempfile::tempfile().expect("file");
        let clean = [unix.as_raw_fd(), file.as_raw_fd()];
        assert_eq!(network_socket_among(&clean), None);
        let with_tcp = [file.as_raw_fd(), tcp.as_raw_fd(), unix.as_raw_fd()];
        assert_eq!(
            network_socket_among(&with_tcp),
            Some((tcp.as_raw_fd(), libc::AF_INET))
        );
    }

    /// Seccomp filters belong to the thread that installs them (without
    /// TSYNC): one thread of the test binary is confined, the others are
    /// not.
    #[test]
    fn a_confined_thread_gets_ip_unix_and_netlink_sockets_and_nothing_else() {
        let filter = build().expect("filter");
        let seen = std::thread::spawn(move || {
            install(&filter).expect("install");
            // SAFETY: io_uring_setup with a null params pointer fails
            // before touching memory; only the errno is read.
            let uring =
                unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, std::ptr::null::<u8>()) };
            let uring_errno = std::io::Error::last_os_error().raw_os_error();
            // SAFETY: calls that fail on their arguments (no such fd, pid
            // 0, a null iovec) before touching memory; only errno is read.
            let with_errno =
                |rc: libc::c_long| (rc, std::io::Error::last_os_error().raw_os_error());
            let reach = [
                with_errno(unsafe { libc::syscall(libc::SYS_pidfd_getfd, -1, 0, 0) }),
                with_errno(unsafe { libc::syscall(libc::SYS_process_vm_readv, 0, 0, 0, 0, 0, 0) }),
                with_errno(unsafe {
                    libc::syscall(libc::SYS_ptrace, libc::PTRACE_PEEKDATA, 0, 0, 0)
                }),
            ];
            (
                [
                    socket_errno(libc::AF_UNIX, libc::SOCK_STREAM),
                    socket_errno(libc::AF_INET, libc::SOCK_STREAM),
                    socket_errno(libc::AF_INET6, libc::SOCK_DGRAM),
                    socket_errno(libc::AF_NETLINK, libc::SOCK_RAW),
                ],
                [
                    socket_errno(libc::AF_VSOCK, libc::SOCK_STREAM),
                    socket_errno(libc::AF_PACKET, libc::SOCK_RAW),
                    socket_errno(libc::AF_XDP, libc::SOCK_RAW),
                    socket_errno(libc::AF_BLUETOOTH, libc::SOCK_STREAM),
                    socket_errno(46, libc::SOCK_STREAM),
                ],
                (uring, uring_errno),
                reach,
            )
        })
        .join()
        .expect("the confined thread");
        let (allowed, refused, uring, reach) = seen;
        assert_eq!(allowed, [0; 4], "IP, Unix and netlink sockets are made");
        assert_eq!(refused, [libc::EPERM; 5], "every other family is EPERM");
        assert_eq!(uring, (-1, Some(libc::EPERM)), "io_uring is refused");
        assert_eq!(
            reach,
            [(-1, Some(libc::EPERM)); 3],
            "other processes are out of reach"
        );
        // SAFETY: as above, unconfined: the kernel's own answer.
        let unconfined = unsafe { libc::syscall(libc::SYS_pidfd_getfd, -1, 0, 0) };
        assert_eq!(
            (unconfined, std::io::Error::last_os_error().raw_os_error()),
            (-1, Some(libc::EBADF))
        );
        // Control: the test's own thread is not confined, and there the
        // kernel does not refuse AF_VSOCK with EPERM (it makes one, or has
        // no such family), so the EPERM above is the filter's.
        assert_ne!(socket_errno(libc::AF_VSOCK, libc::SOCK_STREAM), libc::EPERM);
    }
}
