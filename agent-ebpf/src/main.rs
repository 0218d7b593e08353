//! Airlock's kernel side: every socket of a process under the managed cgroup
//! root is captured here. The hooks are thin: they copy fields out of the
//! context, ask `agent_common` for a verdict, and apply it. The decisions
//! themselves are plain functions tested on the host.
//!
//! The path of an agent's TCP connection:
//!   connect4/connect6 -> record {dst, cgroup, pid, uid} by socket cookie and
//!   rewrite the destination to the proxy -> sock_ops (established) re-keys
//!   the record by the client's (address, port) -> the proxy looks up the
//!   peer of the socket it accepted.
//! UDP may only carry DNS, rewritten to Airlock's resolver; udp_egress
//! records who sent each query and drops any UDP that got past the hooks.
#![no_std]
#![no_main]

use agent_common::{
    AF_INET, ClientKey, ConnRecord, DnsOrig, Egress, IPPROTO_TCP, IPPROTO_UDP, LISTENER_PRIORITY,
    MAX_CONNECTIONS, MAX_DNS_CLIENTS, STAT_COUNT, Settings, Stat, Verdict, bind_allowed,
    decide_connect, decide_egress, decide_sock_create, v4_mapped,
};
use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, bpf_sock_addr, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 as Tuple4,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 as Tuple6,
    },
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_sk_lookup_tcp,
        bpf_sk_lookup_udp, bpf_sk_release, bpf_skb_cgroup_id,
    },
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, map, sock_ops},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::{SkBuffContext, SockAddrContext, SockContext, SockOpsContext},
};
use aya_log_ebpf::warn;

const ALLOW: i32 = 1;
const DENY: i32 = 0;

/// 127.0.0.1 as the kernel stores it (network order in memory).
const LOOPBACK4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
/// ::1, one 32-bit word at a time, network order in memory.
const LOOPBACK6: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
/// ::ffff:127.0.0.1, for AF_INET6 sockets that dialled a v4-mapped address.
const LOOPBACK4_MAPPED: [u32; 4] = [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), LOOPBACK4];

#[map(name = "AIRLOCK_SETTING")]
static SETTINGS: Array<Settings> = Array::pinned(1, 0);

#[map(name = "ORIG_BY_COOKIE")]
static ORIG_BY_COOKIE: LruHashMap<u64, ConnRecord> = LruHashMap::pinned(MAX_CONNECTIONS, 0);

#[map(name = "ORIG_BY_CLIENT")]
static ORIG_BY_CLIENT: LruHashMap<ClientKey, ConnRecord> = LruHashMap::pinned(MAX_CONNECTIONS, 0);

#[map(name = "DNS_CLIENTS")]
static DNS_CLIENTS: LruHashMap<ClientKey, ConnRecord> = LruHashMap::pinned(MAX_DNS_CLIENTS, 0);

#[map(name = "DNS_ORIG")]
static DNS_ORIG: LruHashMap<u64, DnsOrig> = LruHashMap::pinned(MAX_DNS_CLIENTS, 0);

#[map(name = "AIRLOCK_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(STAT_COUNT, 0);

#[inline(always)]
fn bump(stat: Stat) {
    if let Some(counter) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: a per-CPU slot of this program's own map; no other CPU
        // touches it and the pointer is valid for the program's run.
        unsafe { *counter += 1 };
    }
}

/// The settings slot, or all-zero (which every decision treats as "deny").
#[inline(always)]
fn settings() -> Settings {
    SETTINGS.get(0).copied().unwrap_or_default()
}

/// Who is connecting: the calling task's cgroup, process and user.
#[inline(always)]
fn caller_record(orig_addr: [u8; 16], orig_port: u16, proto: u32) -> ConnRecord {
    // SAFETY: these helpers take no arguments and are allowed in
    // cgroup/sock_addr programs, which run in the calling task's context.
    let (cgroup_id, pid_tgid, uid_gid, now) = unsafe {
        (
            bpf_get_current_cgroup_id(),
            bpf_get_current_pid_tgid(),
            bpf_get_current_uid_gid(),
            bpf_ktime_get_ns(),
        )
    };
    ConnRecord {
        orig_addr,
        orig_port,
        proto: proto as u8,
        _pad0: 0,
        pid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        cgroup_id,
        created_ns: now,
    }
}

#[inline(always)]
fn socket_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the context pointer comes from the kernel for this run.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// The destination fields of a sock_addr context. The kernel only accepts
/// 4-byte accesses to `user_ip6`, so each word is read on its own.
struct Dest {
    sock_type: u32,
    protocol: u32,
    port: u16,
    ip4: u32,
    ip6: [u32; 4],
}

#[inline(always)]
fn read_dest(sa: *mut bpf_sock_addr, v6: bool) -> Dest {
    // SAFETY: `sa` is the kernel's context for this run; each field read is
    // a single aligned 4-byte load, as the verifier requires.
    unsafe {
        let mut ip6 = [0u32; 4];
        let mut ip4 = 0;
        if v6 {
            ip6[0] = core::ptr::read_volatile(&(*sa).user_ip6[0]);
            ip6[1] = core::ptr::read_volatile(&(*sa).user_ip6[1]);
            ip6[2] = core::ptr::read_volatile(&(*sa).user_ip6[2]);
            ip6[3] = core::ptr::read_volatile(&(*sa).user_ip6[3]);
        } else {
            ip4 = core::ptr::read_volatile(&(*sa).user_ip4);
        }
        Dest {
            sock_type: core::ptr::read_volatile(&(*sa).type_),
            protocol: core::ptr::read_volatile(&(*sa).protocol),
            port: u16::from_be(core::ptr::read_volatile(&(*sa).user_port) as u16),
            ip4,
            ip6,
        }
    }
}

#[inline(always)]
fn write_dest4(sa: *mut bpf_sock_addr, ip4: u32, port: u16) {
    // SAFETY: `user_ip4` and `user_port` are writable in connect4/sendmsg4/
    // recvmsg4; single 4-byte stores.
    unsafe {
        core::ptr::write_volatile(&mut (*sa).user_ip4, ip4);
        core::ptr::write_volatile(&mut (*sa).user_port, u32::from(port.to_be()));
    }
}

#[inline(always)]
fn write_dest6(sa: *mut bpf_sock_addr, ip6: [u32; 4], port: u16) {
    // SAFETY: `user_ip6` and `user_port` are writable in connect6/sendmsg6/
    // recvmsg6; the kernel rejects wider stores than 4 bytes, so one word
    // at a time.
    unsafe {
        core::ptr::write_volatile(&mut (*sa).user_ip6[0], ip6[0]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[1], ip6[1]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[2], ip6[2]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[3], ip6[3]);
        core::ptr::write_volatile(&mut (*sa).user_port, u32::from(port.to_be()));
    }
}

#[inline(always)]
fn words_to_bytes(w: [u32; 4]) -> [u8; 16] {
    let (a, b, c, d) = (
        w[0].to_ne_bytes(),
        w[1].to_ne_bytes(),
        w[2].to_ne_bytes(),
        w[3].to_ne_bytes(),
    );
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

#[inline(always)]
fn is_mapped_words(w: &[u32; 4]) -> bool {
    w[0] == 0 && w[1] == 0 && w[2] == LOOPBACK4_MAPPED[2]
}

/// Shared body of connect4/connect6/sendmsg4/sendmsg6.
#[inline(always)]
fn capture(ctx: &SockAddrContext, v6: bool, is_connect: bool) -> i32 {
    let sa = ctx.sock_addr;
    let dest = read_dest(sa, v6);
    let (orig, mapped) = if v6 {
        (words_to_bytes(dest.ip6), is_mapped_words(&dest.ip6))
    } else {
        (v4_mapped(dest.ip4.to_ne_bytes()), true)
    };
    let settings = settings();
    // SAFETY: the context pointer comes from the kernel for this run.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    match decide_connect(&settings, netns, dest.sock_type, dest.protocol, dest.port) {
        Verdict::ToProxy { port } => {
            if !is_connect {
                // sendmsg hooks only see UDP; a stream socket here is a
                // kernel surprise, and surprises are refused.
                bump(Stat::UdpDenied);
                return DENY;
            }
            if !daemon_listens(ctx, v6, mapped, false, port) {
                bump(Stat::NoListener);
                return DENY;
            }
            let record = caller_record(orig, dest.port, IPPROTO_TCP);
            // A failed insert leaves no record: the proxy then closes the
            // connection, so redirecting anyway still fails closed.
            let _ = ORIG_BY_COOKIE.insert(&socket_cookie(ctx), &record, 0);
            redirect(sa, v6, mapped, port);
            bump(Stat::TcpRedirected);
            ALLOW
        }
        Verdict::ToResolver { port } => {
            if !daemon_listens(ctx, v6, mapped, true, port) {
                bump(Stat::NoListener);
                return DENY;
            }
            let family = if v6 { 10 } else { AF_INET as u16 };
            let remembered = DnsOrig {
                addr: orig,
                port: dest.port,
                family,
                _pad: 0,
            };
            let _ = DNS_ORIG.insert(&socket_cookie(ctx), &remembered, 0);
            redirect(sa, v6, mapped, port);
            bump(Stat::DnsRedirected);
            ALLOW
        }
        Verdict::DenyForeignNetns => {
            bump(Stat::ForeignNetns);
            warn!(
                ctx,
                "airlock: refused a socket of another network namespace (type={} port={})",
                dest.sock_type,
                dest.port
            );
            DENY
        }
        Verdict::Deny => {
            if settings.proxy_port == 0 || settings.netns_cookie == 0 {
                bump(Stat::Unconfigured);
            } else {
                bump(Stat::UdpDenied);
            }
            DENY
        }
    }
}

/// Whether what the kernel finds on loopback at `port` (the address
/// `redirect` writes) is the daemon's own socket, marked with
/// [`LISTENER_PRIORITY`]. While the daemon is down after a crash the port
/// is free, and any local process may bind it.
#[inline(always)]
fn daemon_listens(ctx: &SockAddrContext, v6: bool, mapped: bool, udp: bool, port: u16) -> bool {
    // SAFETY: all-zero is a valid value of this plain-integer union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    // The kernel tells the families apart by the size given.
    let size = if v6 && !mapped {
        tuple.__bindgen_anon_1.ipv6 = Tuple6 {
            saddr: [0; 4],
            daddr: LOOPBACK6,
            sport: 0,
            dport: port.to_be(),
        };
        core::mem::size_of::<Tuple6>()
    } else {
        // A dual-stack socket that dialled ::ffff:127.0.0.1 reaches the
        // IPv4 socket.
        tuple.__bindgen_anon_1.ipv4 = Tuple4 {
            saddr: 0,
            daddr: LOOPBACK4,
            sport: 0,
            dport: port.to_be(),
        };
        core::mem::size_of::<Tuple4>()
    } as u32;
    let netns = BPF_F_CURRENT_NETNS as u64;
    // SAFETY: helpers allowed in cgroup/sock_addr programs, given the
    // kernel's context and a tuple on this program's stack of `size` bytes.
    let sk = unsafe {
        if udp {
            bpf_sk_lookup_udp(ctx.as_ptr(), &mut tuple, size, netns, 0)
        } else {
            bpf_sk_lookup_tcp(ctx.as_ptr(), &mut tuple, size, netns, 0)
        }
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: `sk` is the non-null socket the lookup returned; one 4-byte
    // load, then the reference the lookup took is given back, as the
    // verifier requires on every path.
    let priority = unsafe {
        let priority = core::ptr::read_volatile(&(*sk).priority);
        bpf_sk_release(sk.cast());
        priority
    };
    priority == LISTENER_PRIORITY
}

#[inline(always)]
fn redirect(sa: *mut bpf_sock_addr, v6: bool, mapped: bool, port: u16) {
    if !v6 {
        write_dest4(sa, LOOPBACK4, port);
    } else if mapped {
        // A dual-stack socket that dialled ::ffff:a.b.c.d stays on IPv4.
        write_dest6(sa, LOOPBACK4_MAPPED, port);
    } else {
        write_dest6(sa, LOOPBACK6, port);
    }
}

#[cgroup_sock_addr(connect4)]
pub fn airlock_connect4(ctx: SockAddrContext) -> i32 {
    capture(&ctx, false, true)
}

#[cgroup_sock_addr(connect6)]
pub fn airlock_connect6(ctx: SockAddrContext) -> i32 {
    capture(&ctx, true, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn airlock_sendmsg4(ctx: SockAddrContext) -> i32 {
    capture(&ctx, false, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn airlock_sendmsg6(ctx: SockAddrContext) -> i32 {
    capture(&ctx, true, false)
}

/// bind(2) of an agent's socket: any port but the ones Airlock listens on.
#[inline(always)]
fn bind_verdict(ctx: &SockAddrContext) -> i32 {
    // SAFETY: `user_port` is readable in bind4/bind6; one 4-byte load.
    let port =
        u16::from_be(unsafe { core::ptr::read_volatile(&(*ctx.sock_addr).user_port) } as u16);
    if bind_allowed(&settings(), port) {
        return ALLOW;
    }
    bump(Stat::BindDenied);
    warn!(
        ctx,
        "airlock: refused a bind to Airlock's own port {}", port
    );
    DENY
}

#[cgroup_sock_addr(bind4)]
pub fn airlock_bind4(ctx: SockAddrContext) -> i32 {
    bind_verdict(&ctx)
}

#[cgroup_sock_addr(bind6)]
pub fn airlock_bind6(ctx: SockAddrContext) -> i32 {
    bind_verdict(&ctx)
}

/// Replies from the resolver are reported as coming from the server the
/// socket addressed: resolvers such as glibc's drop answers whose source is
/// not one of their nameservers.
#[inline(always)]
fn restore_source(ctx: &SockAddrContext, v6: bool) -> i32 {
    let sa = ctx.sock_addr;
    let dest = read_dest(sa, v6);
    let settings = settings();
    if settings.dns_port == 0 || dest.port != settings.dns_port {
        return ALLOW;
    }
    let from_resolver = if v6 {
        dest.ip6 == LOOPBACK6 || dest.ip6 == LOOPBACK4_MAPPED
    } else {
        dest.ip4 == LOOPBACK4
    };
    if !from_resolver {
        return ALLOW;
    }
    // SAFETY: the map value is copied out before any other map call.
    let Some(orig) = (unsafe { DNS_ORIG.get(&socket_cookie(ctx)) }).copied() else {
        return ALLOW;
    };
    if v6 {
        let a = orig.addr;
        let words = [
            u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
            u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
            u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
            u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
        ];
        write_dest6(sa, words, orig.port);
    } else {
        let a = orig.addr;
        write_dest4(
            sa,
            u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
            orig.port,
        );
    }
    ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn airlock_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore_source(&ctx, false)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn airlock_recvmsg6(ctx: SockAddrContext) -> i32 {
    restore_source(&ctx, true)
}

/// Verifier: reading `local_ip6` as an array went through one computed
/// pointer and was refused ("dereference of modified ctx ptr R7 off=60
/// disallowed"); each word is read with its own load from the context.
#[inline(always)]
fn local_ip6(ctx: &SockOpsContext) -> [u32; 4] {
    let ops = ctx.ops;
    // SAFETY: `ops` is the kernel's context for this run; four aligned
    // 4-byte loads at constant offsets.
    unsafe {
        [
            core::ptr::read_volatile(&(*ops).local_ip6[0]),
            core::ptr::read_volatile(&(*ops).local_ip6[1]),
            core::ptr::read_volatile(&(*ops).local_ip6[2]),
            core::ptr::read_volatile(&(*ops).local_ip6[3]),
        ]
    }
}

/// Once a redirected connection is established, its client (address, port)
/// is known: re-key the record by it, which is what the proxy can see.
#[sock_ops]
pub fn airlock_sock_ops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return 1;
    }
    // SAFETY: the context pointer comes from the kernel for this run.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out before the map is touched again.
    let Some(record) = (unsafe { ORIG_BY_COOKIE.get(&cookie) }).copied() else {
        bump(Stat::RekeyMissing);
        return 1;
    };
    let family = ctx.family();
    let addr = if family == AF_INET {
        v4_mapped(ctx.local_ip4().to_ne_bytes())
    } else {
        words_to_bytes(local_ip6(&ctx))
    };
    let key = ClientKey {
        addr,
        // sock_ops reports the local port in host byte order.
        port: ctx.local_port() as u16,
        proto: IPPROTO_TCP as u8,
        _pad: 0,
    };
    if ORIG_BY_CLIENT.insert(&key, &record, 0).is_ok() {
        let _ = ORIG_BY_COOKIE.remove(&cookie);
        bump(Stat::Rekeyed);
    }
    1
}

#[cgroup_sock(sock_create)]
pub fn airlock_sock_create(ctx: SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: `sk` is the kernel's socket context for this run; plain reads.
    let (family, sock_type, protocol) = unsafe { ((*sk).family, (*sk).type_, (*sk).protocol) };
    if decide_sock_create(family, sock_type, protocol) {
        return ALLOW;
    }
    bump(Stat::SocketDenied);
    warn!(
        &ctx,
        "airlock: refused socket family={} type={} protocol={}", family, sock_type, protocol
    );
    DENY
}

/// Every packet an agent's socket sends: drop what is addressed off this
/// host (by the IP header, which a routing header or source route can make
/// differ from the socket's rewritten destination), record who sent DNS
/// queries (the resolver looks the sender up by address and port), and
/// drop other UDP. (Named for its first job; the pinned link keeps the
/// name.)
#[cgroup_skb(egress)]
pub fn airlock_udp_egress(ctx: SkBuffContext) -> i32 {
    match inspect_egress(&ctx) {
        Ok(verdict) => verdict,
        // Too short to hold an IP header: nothing an agent should send.
        Err(()) => DENY,
    }
}

#[inline(always)]
fn inspect_egress(ctx: &SkBuffContext) -> Result<i32, ()> {
    let first: u8 = ctx.load(0).map_err(|_| ())?;
    // The transport is the IP header's own next header: behind IPv6
    // extension headers it is not UDP here, and such a packet may only
    // pass on loopback.
    let (src, dst_loopback, is_udp, l4) = match first >> 4 {
        4 => {
            let proto: u8 = ctx.load(9).map_err(|_| ())?;
            let src: [u8; 4] = ctx.load(12).map_err(|_| ())?;
            let dst: [u8; 4] = ctx.load(16).map_err(|_| ())?;
            (
                v4_mapped(src),
                dst[0] == 127,
                u32::from(proto) == IPPROTO_UDP,
                usize::from(first & 0x0f) * 4,
            )
        }
        6 => {
            let next: u8 = ctx.load(6).map_err(|_| ())?;
            let src: [u8; 16] = ctx.load(8).map_err(|_| ())?;
            let dst: [u8; 16] = ctx.load(24).map_err(|_| ())?;
            (
                src,
                dst == words_to_bytes(LOOPBACK6),
                u32::from(next) == IPPROTO_UDP,
                40,
            )
        }
        _ => return Ok(DENY),
    };
    let dport: u16 = if is_udp && dst_loopback {
        ctx.load(l4 + 2).map_err(|_| ())?
    } else {
        0
    };
    match decide_egress(&settings(), dst_loopback, is_udp, u16::from_be(dport)) {
        Egress::Pass => return Ok(ALLOW),
        Egress::DropOffHost => {
            bump(Stat::OffHostDenied);
            return Ok(DENY);
        }
        Egress::DropUdp => {
            bump(Stat::UdpDenied);
            return Ok(DENY);
        }
        Egress::DnsQuery => {}
    }
    let sport: u16 = ctx.load(l4).map_err(|_| ())?;
    let key = ClientKey {
        addr: src,
        port: u16::from_be(sport),
        proto: IPPROTO_UDP as u8,
        _pad: 0,
    };
    // SAFETY: helpers allowed in cgroup_skb programs, given the kernel's skb.
    let (cgroup_id, now) = unsafe { (bpf_skb_cgroup_id(ctx.skb.skb), bpf_ktime_get_ns()) };
    let record = ConnRecord {
        cgroup_id,
        uid: ctx.get_socket_uid(),
        proto: IPPROTO_UDP as u8,
        created_ns: now,
        ..ConnRecord::default()
    };
    let _ = DNS_CLIENTS.insert(&key, &record, 0);
    bump(Stat::DnsClientRecorded);
    Ok(ALLOW)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
