//! The only contract between Airlock's eBPF programs and its daemon: map
//! names, the `#[repr(C)]` records stored in those maps, and the pure
//! decisions the hooks make. Everything here builds for `bpfel-unknown-none`
//! and for the host, so the decisions are unit-tested on the host.
#![no_std]

/// Directory under the BPF filesystem where links and maps are pinned, so
/// that enforcement outlives the daemon (fail closed) and a restarted daemon
/// re-opens them instead of stacking a second copy.
pub const PIN_DIR_NAME: &str = "airlock";

/// Map names (the kernel keeps 15 bytes of a name; every name fits).
pub mod maps {
    /// `Array<Settings>` with one slot: where the daemon listens.
    pub const SETTINGS: &str = "AIRLOCK_SETTING";
    /// `LruHashMap<u64 socket cookie, ConnRecord>`: written by connect4/6.
    pub const ORIG_BY_COOKIE: &str = "ORIG_BY_COOKIE";
    /// `LruHashMap<ClientKey, ConnRecord>`: re-keyed by sock_ops once the
    /// redirected connection is established; the proxy looks up its peer.
    pub const ORIG_BY_CLIENT: &str = "ORIG_BY_CLIENT";
    /// `LruHashMap<ClientKey, ConnRecord>`: UDP DNS senders, recorded on
    /// egress so the resolver knows which agent asked.
    pub const DNS_CLIENTS: &str = "DNS_CLIENTS";
    /// `LruHashMap<u64 socket cookie, DnsOrig>`: the resolver a UDP socket
    /// meant to reach, so recvmsg can report replies as coming from it.
    pub const DNS_ORIG: &str = "DNS_ORIG";
    /// `PerCpuArray<u64>` of counters indexed by [`crate::Stat`].
    pub const STATS: &str = "AIRLOCK_STATS";
}

/// Program names (the Rust function names in agent-ebpf) in attach order.
pub mod programs {
    pub const CONNECT4: &str = "airlock_connect4";
    pub const CONNECT6: &str = "airlock_connect6";
    pub const SENDMSG4: &str = "airlock_sendmsg4";
    pub const SENDMSG6: &str = "airlock_sendmsg6";
    pub const RECVMSG4: &str = "airlock_recvmsg4";
    pub const RECVMSG6: &str = "airlock_recvmsg6";
    pub const SOCK_OPS: &str = "airlock_sock_ops";
    pub const SOCK_CREATE: &str = "airlock_sock_create";
    pub const UDP_EGRESS: &str = "airlock_udp_egress";
    pub const BIND4: &str = "airlock_bind4";
    pub const BIND6: &str = "airlock_bind6";
}

pub const MAX_CONNECTIONS: u32 = 65_536;
pub const MAX_DNS_CLIENTS: u32 = 16_384;

pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;
pub const SOCK_STREAM: u32 = 1;
pub const SOCK_DGRAM: u32 = 2;
pub const IPPROTO_IP: u32 = 0;
pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_UDP: u32 = 17;
pub const DNS_PORT: u16 = 53;

/// Where the daemon listens. Ports are in host byte order. A zero
/// `proxy_port` means "never configured": every hook then denies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub proxy_port: u16,
    pub dns_port: u16,
    pub _pad: u32,
    /// The daemon's network namespace (SO_NETNS_COOKIE). Only sockets of
    /// that namespace can reach its listeners; zero means unknown, and
    /// every hook then denies.
    pub netns_cookie: u64,
}

/// The `SO_PRIORITY` of the daemon's proxy and resolver sockets. The hooks
/// send an agent to a port only while a socket with this priority is what
/// the kernel finds there: after a crash, any local process may bind the
/// daemon's ports, and must not be handed agents' connections or DNS
/// queries. Priorities above 6 need `CAP_NET_ADMIN` or `CAP_NET_RAW`,
/// which such a process lacks. (On loopback, which has no queueing
/// discipline, the priority changes nothing else.)
pub const LISTENER_PRIORITY: u32 = 0x4149_524c;
// TC_PRIO_INTERACTIVE (6) is the most an unprivileged socket may set,
// directly or through IP_TOS.
const _: () = assert!(LISTENER_PRIORITY > 6);

/// What an agent's socket meant to do, recorded by the kernel.
///
/// `orig_addr` holds the destination as 16 bytes in network order; IPv4
/// destinations are stored v4-mapped (`::ffff:a.b.c.d`) so that one record
/// type serves both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnRecord {
    pub orig_addr: [u8; 16],
    /// Host byte order.
    pub orig_port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    pub _pad0: u8,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the record was made; the
    /// daemon refuses records too old to belong to a fresh connection.
    pub created_ns: u64,
}

/// The client side of a redirected socket as the daemon sees it: the peer
/// address of the accepted connection (or of a received DNS datagram).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// Network order, IPv4 v4-mapped.
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// The resolver a UDP socket addressed before it was redirected.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsOrig {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u16,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<Settings>() == 16);
const _: () = assert!(core::mem::size_of::<ConnRecord>() == 48);
const _: () = assert!(core::mem::size_of::<ClientKey>() == 20);
const _: () = assert!(core::mem::size_of::<DnsOrig>() == 24);

/// Counters in the `STATS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    TcpRedirected = 0,
    DnsRedirected = 1,
    UdpDenied = 2,
    SocketDenied = 3,
    Unconfigured = 4,
    Rekeyed = 5,
    RekeyMissing = 6,
    DnsClientRecorded = 7,
    ForeignNetns = 8,
    OffHostDenied = 9,
    BindDenied = 10,
    NoListener = 11,
}

pub const STAT_COUNT: u32 = 12;

impl Stat {
    pub const ALL: [Stat; STAT_COUNT as usize] = [
        Stat::TcpRedirected,
        Stat::DnsRedirected,
        Stat::UdpDenied,
        Stat::SocketDenied,
        Stat::Unconfigured,
        Stat::Rekeyed,
        Stat::RekeyMissing,
        Stat::DnsClientRecorded,
        Stat::ForeignNetns,
        Stat::OffHostDenied,
        Stat::BindDenied,
        Stat::NoListener,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Stat::TcpRedirected => "tcp_redirected",
            Stat::DnsRedirected => "dns_redirected",
            Stat::UdpDenied => "udp_denied",
            Stat::SocketDenied => "socket_denied",
            Stat::Unconfigured => "unconfigured_denied",
            Stat::Rekeyed => "rekeyed",
            Stat::RekeyMissing => "rekey_missing",
            Stat::DnsClientRecorded => "dns_client_recorded",
            Stat::ForeignNetns => "foreign_netns_denied",
            Stat::OffHostDenied => "off_host_denied",
            Stat::BindDenied => "bind_denied",
            Stat::NoListener => "no_listener_denied",
        }
    }
}

/// What a connect/sendmsg hook does with an agent's socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Rewrite the destination to the daemon's proxy listener.
    ToProxy { port: u16 },
    /// Rewrite the destination to the daemon's DNS resolver.
    ToResolver { port: u16 },
    /// Refuse with EPERM.
    Deny,
    /// Refuse with EPERM: the socket belongs to another network namespace
    /// than the daemon's. There, the loopback address the hooks rewrite to
    /// is not the daemon's, and whatever listens on it (the agent itself)
    /// would be handed a kernel record keyed by an address and port that a
    /// real agent connection in the daemon's namespace may also use.
    DenyForeignNetns,
}

/// The decision for a connect() or an unconnected sendmsg() of an agent.
///
/// TCP always lands on the proxy (which applies the agent's policy); UDP may
/// only carry DNS, which lands on Airlock's resolver; anything else, and
/// everything while the daemon has never configured the settings, is
/// refused, as is every socket of a network namespace other than the
/// daemon's (`netns_cookie` is the socket's). There is deliberately no
/// "allow unchanged" outcome: nothing an agent sends leaves the host
/// without passing through the daemon.
pub const fn decide_connect(
    settings: &Settings,
    netns_cookie: u64,
    sock_type: u32,
    protocol: u32,
    dst_port: u16,
) -> Verdict {
    if settings.proxy_port == 0 || settings.dns_port == 0 || settings.netns_cookie == 0 {
        return Verdict::Deny;
    }
    if netns_cookie != settings.netns_cookie {
        return Verdict::DenyForeignNetns;
    }
    match (sock_type, protocol) {
        (SOCK_STREAM, IPPROTO_IP | IPPROTO_TCP) => Verdict::ToProxy {
            port: settings.proxy_port,
        },
        (SOCK_DGRAM, IPPROTO_IP | IPPROTO_UDP) if dst_port == DNS_PORT => Verdict::ToResolver {
            port: settings.dns_port,
        },
        _ => Verdict::Deny,
    }
}

/// May an agent create this socket? Only plain TCP and UDP sockets of the
/// internet families: raw sockets, ICMP "ping" sockets, SCTP, MPTCP and
/// UDP-Lite have no connect hook that sends them to the proxy, so they
/// would be a way around it. (The kernel runs this hook for AF_INET and
/// AF_INET6 only; other families are left to their own permission checks.)
pub const fn decide_sock_create(family: u32, sock_type: u32, protocol: u32) -> bool {
    if family != AF_INET && family != AF_INET6 {
        return true;
    }
    matches!(
        (sock_type, protocol),
        (SOCK_STREAM, IPPROTO_IP | IPPROTO_TCP) | (SOCK_DGRAM, IPPROTO_IP | IPPROTO_UDP)
    )
}

/// May an agent bind `port`? Not Airlock's own ports, on any address:
/// while the daemon is down (a restart, a crash) the pinned hooks still
/// send every agent's connections and DNS there, and an agent listening
/// on them would receive the others' requests. Port 0 asks the kernel for
/// an ephemeral port, never these.
pub const fn bind_allowed(settings: &Settings, port: u16) -> bool {
    port == 0
        || ((settings.proxy_port == 0 || port != settings.proxy_port)
            && (settings.dns_port == 0 || port != settings.dns_port))
}

/// What the egress filter does with a packet an agent's socket sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Egress {
    /// TCP to the proxy, or whatever else stays on loopback.
    Pass,
    /// A DNS query to Airlock's resolver: pass it, and record its sender.
    DnsQuery,
    /// UDP other than a query to the resolver.
    DropUdp,
    /// Addressed off this host. The connect and sendmsg hooks rewrite every
    /// destination to loopback, but the wire may still say otherwise: an
    /// IPv6 routing header (`IPV6_RTHDR`, open to any user) or IPv4 source
    /// route sends the packet to its first hop, and a listening socket's
    /// replies go to whoever connected from outside.
    DropOffHost,
}

/// The verdict on a packet by the destination in its IP header (not the
/// socket's), its transport, and its destination port.
pub const fn decide_egress(
    settings: &Settings,
    dst_is_loopback: bool,
    is_udp: bool,
    dst_port: u16,
) -> Egress {
    if !dst_is_loopback {
        return Egress::DropOffHost;
    }
    if !is_udp {
        return Egress::Pass;
    }
    if settings.dns_port != 0 && dst_port == settings.dns_port {
        Egress::DnsQuery
    } else {
        Egress::DropUdp
    }
}

/// `::ffff:a.b.c.d` from an IPv4 address given as its four bytes in network
/// order.
pub const fn v4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// Is a 16-byte address (network order) IPv4-mapped?
pub const fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[0] == 0
        && addr[1] == 0
        && addr[2] == 0
        && addr[3] == 0
        && addr[4] == 0
        && addr[5] == 0
        && addr[6] == 0
        && addr[7] == 0
        && addr[8] == 0
        && addr[9] == 0
        && addr[10] == 0xff
        && addr[11] == 0xff
}

#[cfg(feature = "user")]
mod user {
    use super::{ClientKey, ConnRecord, DnsOrig, Settings};

    // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers and
    // byte arrays, with every padding byte spelled out as a named field (the
    // size assertions above pin the layout), so any bit pattern is valid.
    unsafe impl aya::Pod for Settings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ConnRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ClientKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DnsOrig {}
}

#[cfg(test)]
mod tests;
