//! What the kernel recorded about a captured connection.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use agent_common::{ConnRecord, is_v4_mapped};

/// Where the agent's socket meant to go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrigDst(pub SocketAddr);

/// The agent's end of a connection the proxy accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// Who connected, from the kernel.
#[derive(Clone, Copy, Debug)]
pub struct Origin {
    pub dst: OrigDst,
    pub cgroup_id: u64,
    pub pid: u32,
    pub uid: u32,
}

impl From<&ConnRecord> for Origin {
    fn from(r: &ConnRecord) -> Self {
        Origin {
            dst: OrigDst(SocketAddr::new(ip_of(&r.orig_addr), r.orig_port)),
            cgroup_id: r.cgroup_id,
            pid: r.pid,
            uid: r.uid,
        }
    }
}

/// 16 bytes in network order, v4-mapped for IPv4, as the kernel stores it.
pub fn ip_of(addr: &[u8; 16]) -> IpAddr {
    if is_v4_mapped(addr) {
        IpAddr::from([addr[12], addr[13], addr[14], addr[15]])
    } else {
        IpAddr::V6(Ipv6Addr::from(*addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_records_become_ipv4() {
        let mut r = ConnRecord {
            orig_addr: agent_common::v4_mapped([10, 0, 0, 2]),
            orig_port: 443,
            ..ConnRecord::default()
        };
        assert_eq!(Origin::from(&r).dst.0.to_string(), "10.0.0.2:443");
        r.orig_addr = Ipv6Addr::LOCALHOST.octets();
        assert_eq!(Origin::from(&r).dst.0.to_string(), "[::1]:443");
    }
}
