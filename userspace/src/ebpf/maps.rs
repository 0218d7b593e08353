//! Typed access to the maps the kernel side fills.

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd as _},
    time::Duration,
};

use agent_common::{ClientKey, ConnRecord, IPPROTO_TCP, IPPROTO_UDP, Stat};
use aya::maps::{MapData, PerCpuArray};

/// A TCP record older than this cannot belong to a connection the proxy is
/// accepting now: the peer address was reused by someone else.
const MAX_TCP_RECORD_AGE: Duration = Duration::from_secs(120);
/// DNS records are refreshed by every datagram, just before it arrives.
const MAX_DNS_RECORD_AGE: Duration = Duration::from_secs(10);

/// Where the proxy and the resolver learn who is on the other end. A trait
/// so that the proxy can be tested without a kernel.
pub trait ConnTable: Send + Sync + 'static {
    /// The record of the redirected TCP connection whose client is `peer`,
    /// removed so that it can be claimed once.
    fn take_tcp(&self, peer: SocketAddr) -> Option<ConnRecord>;
    /// Who sent a DNS datagram from `peer`.
    fn dns_client(&self, peer: SocketAddr) -> Option<ConnRecord>;
}

pub struct KernelConnTable {
    orig_by_client: MapData,
    dns_clients: MapData,
}

impl KernelConnTable {
    pub(super) fn new(orig_by_client: MapData, dns_clients: MapData) -> Self {
        Self {
            orig_by_client,
            dns_clients,
        }
    }
}

pub(crate) fn client_key(peer: SocketAddr, proto: u32) -> ClientKey {
    let addr = match peer.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    ClientKey {
        addr,
        port: peer.port(),
        proto: proto as u8,
        _pad: 0,
    }
}

fn fresh(record: ConnRecord, max_age: Duration) -> Option<ConnRecord> {
    let now = monotonic_ns();
    let age = now.saturating_sub(record.created_ns);
    (age <= max_age.as_nanos() as u64).then_some(record)
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out pointer; CLOCK_MONOTONIC is the clock
    // bpf_ktime_get_ns() reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

impl ConnTable for KernelConnTable {
    fn take_tcp(&self, peer: SocketAddr) -> Option<ConnRecord> {
        let key = client_key(peer, IPPROTO_TCP);
        let record = map_elem(&self.orig_by_client, BPF_MAP_LOOKUP_AND_DELETE_ELEM, &key)?;
        fresh(record, MAX_TCP_RECORD_AGE)
    }

    fn dns_client(&self, peer: SocketAddr) -> Option<ConnRecord> {
        let key = client_key(peer, IPPROTO_UDP);
        let record = map_elem(&self.dns_clients, BPF_MAP_LOOKUP_ELEM, &key)?;
        fresh(record, MAX_DNS_RECORD_AGE)
    }
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;

/// `union bpf_attr` as the map element commands read it.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// One bpf() call on the accept path. aya's HashMap offers lookup and
/// delete as two calls behind `&mut self`; the kernel's
/// LOOKUP_AND_DELETE is one call that needs no lock and claims the record
/// atomically, so a peer address can never be claimed twice.
fn map_elem(map: &MapData, cmd: libc::c_long, key: &ClientKey) -> Option<ConnRecord> {
    let mut value = ConnRecord::default();
    let attr = MapElemAttr {
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: std::ptr::from_mut(&mut value) as u64,
        flags: 0,
    };
    // SAFETY: `attr` points at a live key and a value buffer of the map's
    // exact key/value types (ClientKey, ConnRecord: the map definitions in
    // agent-ebpf), and the size passed is the size of `attr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(&attr),
            std::mem::size_of::<MapElemAttr>(),
        )
    };
    (rc == 0).then_some(value)
}

/// The kernel side's counters, summed over CPUs.
pub struct KernelStats {
    map: PerCpuArray<MapData, u64>,
}

impl KernelStats {
    pub(super) fn new(map: PerCpuArray<MapData, u64>) -> Self {
        Self { map }
    }

    pub fn get(&self, stat: Stat) -> u64 {
        self.map
            .get(&(stat as u32), 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    pub fn all(&self) -> Vec<(&'static str, u64)> {
        Stat::ALL.iter().map(|s| (s.name(), self.get(*s))).collect()
    }
}
