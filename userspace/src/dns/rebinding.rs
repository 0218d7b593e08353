//! Addresses that a name from DNS never sends the daemon to.
//!
//! The daemon connects upstream as root, from outside the agents' cgroups,
//! to whatever the daemon's own lookup of an allowed name gives. Whoever
//! controls that name's DNS (a wildcard rule's subdomain, a user-content
//! host) can point it at this host's services, on loopback or on any of
//! its own addresses, or at the cloud metadata service, whose answers hold the host's own credentials: the
//! agent would reach, through Airlock, what its policy never named. So
//! an address of this kind that comes from DNS is dropped from the answer,
//! and a name that has no other address is refused. An operator who means
//! a name to reach such an address maps it under `resolve:` in the config,
//! and a policy may still name an address itself (an IP literal or CIDR).
//!
//! Private networks are reachable from DNS by default, since internal
//! APIs live there; `private_upstreams_from_dns: false` in the config
//! refuses them the same way, for hosts whose agents must reach only the
//! internet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use super::DnsError;

/// Which networks, besides the ones never allowed, a name from DNS may
/// lead the daemon to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DnsReach {
    /// Public and private networks (the default).
    #[default]
    WithPrivate,
    /// Public networks only.
    PublicOnly,
}

/// Cloud metadata services outside the link-local range.
const METADATA_V4: [Ipv4Addr; 1] = [
    // Alibaba Cloud.
    Ipv4Addr::new(100, 100, 100, 200),
];
const METADATA_V6: [Ipv6Addr; 1] = [
    // AWS's instance metadata service over IPv6.
    Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254),
];

/// The NAT64 well-known prefix, 64:ff9b::/96: a host behind NAT64 reaches
/// the IPv4 address in its last 32 bits.
const NAT64_PREFIX: [u16; 6] = [0x64, 0xff9b, 0, 0, 0, 0];

/// Whether `ip`, given by DNS, is one the daemon must not connect to:
/// this host (loopback, unspecified), the local link (where metadata
/// services live), multicast and broadcast, a metadata service, and with
/// `DnsReach::PublicOnly` a private network.
pub fn off_limits(ip: IpAddr, reach: DnsReach) -> bool {
    let private_too = reach == DnsReach::PublicOnly;
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4_off_limits(v4, private_too),
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            if segments[..6] == NAT64_PREFIX {
                let [a, b] = segments[6].to_be_bytes();
                let [c, d] = segments[7].to_be_bytes();
                return v4_off_limits(Ipv4Addr::new(a, b, c, d), private_too);
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_unicast_link_local()
                || v6.is_multicast()
                || METADATA_V6.contains(&v6)
                // fc00::/7 (unique local) and fec0::/10 (the old site-local).
                || (private_too && (v6.is_unique_local() || segments[0] & 0xffc0 == 0xfec0))
        }
    }
}

/// [`off_limits`], or one of this host's own addresses: what a name from
/// DNS never leads the daemon to.
pub fn off_limits_here(ip: IpAddr, reach: DnsReach) -> bool {
    off_limits(ip, reach) || is_this_host(ip)
}

/// Whether `ip` is an address of this host (in the daemon's network
/// namespace), such as its address on the LAN or a container bridge:
/// services that listen on every address answer there as on loopback.
/// The kernel says so: a datagram to a local address is routed from that
/// address. Asked at each lookup rather than read from the interfaces
/// once, so that an address added later (DHCP, a VPN) counts. No packet
/// is sent; a UDP connect only picks the route. A socket that cannot be
/// made counts as local: the address is refused rather than let through
/// unchecked.
pub fn is_this_host(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    let any = match ip {
        IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let Ok(probe) = UdpSocket::bind(any) else {
        return true;
    };
    // No route: not an address of this host.
    probe.connect((ip, 9)).is_ok() && probe.local_addr().is_ok_and(|local| local.ip() == ip)
}

fn v4_off_limits(v4: Ipv4Addr, private_too: bool) -> bool {
    let [a, b, ..] = v4.octets();
    // 0.0.0.0/8 is "this network": connecting to 0.x reaches this host.
    a == 0
        || v4.is_loopback()
        || v4.is_link_local()
        || v4.is_multicast()
        // 240.0.0.0/4, reserved, and the broadcast address in it.
        || a >= 240
        || METADATA_V4.contains(&v4)
        || (private_too
            && (v4.is_private()
                // 100.64.0.0/10, carrier-grade NAT's shared space.
                || (a == 100 && b & 0xc0 == 64)
                // 198.18.0.0/15, set aside for benchmarking networks.
                || (a == 198 && b & 0xfe == 18)))
}

/// `addrs` as DNS gave them for `name`, without those the daemon must not
/// connect to; an error naming them when nothing else is left.
pub(super) fn keep_reachable(
    name: &str,
    addrs: Vec<IpAddr>,
    reach: DnsReach,
) -> Result<Vec<IpAddr>, DnsError> {
    let refused = |ip: &IpAddr| off_limits_here(*ip, reach);
    if !addrs.iter().any(refused) {
        return Ok(addrs);
    }
    let (refused, kept): (Vec<IpAddr>, Vec<IpAddr>) = addrs.into_iter().partition(refused);
    if kept.is_empty() {
        return Err(DnsError::OffLimits {
            name: name.to_owned(),
            addrs: refused
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::{DnsReach, is_this_host, keep_reachable, off_limits};
    use crate::dns::DnsError;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn this_host_the_link_and_metadata_services_are_off_limits() {
        for text in [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "0.1.2.3",
            "169.254.169.254",
            "169.254.0.23",
            "100.100.100.200",
            "224.0.0.251",
            "239.1.2.3",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "fe80::a9fe:a9fe",
            "ff02::1",
            "fd00:ec2::254",
            // IPv4 addresses written as IPv6: mapped, and through NAT64.
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
        ] {
            for reach in [DnsReach::WithPrivate, DnsReach::PublicOnly] {
                assert!(off_limits(ip(text), reach), "{text} should be off limits");
            }
        }
    }

    #[test]
    fn public_and_private_networks_are_not() {
        // Private networks hold legitimate internal APIs; a policy that
        // names their hosts means them.
        for text in [
            "192.0.2.7",
            "93.184.216.34",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "100.64.0.1",
            "100.100.100.201",
            "169.253.255.255",
            "169.255.0.1",
            "2001:db8::7",
            "2606:4700::1111",
            "fd00::7",
            "fd00:ec2::253",
            "fec0::1",
            "::ffff:93.184.216.34",
            "64:ff9b::5db8:d822",
        ] {
            assert!(
                !off_limits(ip(text), DnsReach::WithPrivate),
                "{text} should be reachable"
            );
        }
    }

    #[test]
    fn public_only_refuses_private_networks_too() {
        for text in [
            "10.0.0.1",
            "172.16.5.4",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "198.18.0.1",
            "198.19.255.255",
            "fd00::7",
            "fc00::1",
            "fec0::1",
            "::ffff:10.1.2.3",
            "64:ff9b::a01:203",
        ] {
            assert!(
                off_limits(ip(text), DnsReach::PublicOnly),
                "{text} should be off limits with public_only"
            );
        }
        for text in [
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "198.20.0.1",
            "2606:4700::1111",
            "fe00::1",
        ] {
            assert!(
                !off_limits(ip(text), DnsReach::PublicOnly),
                "{text} should be reachable with public_only"
            );
        }
    }

    #[test]
    fn an_answer_keeps_its_reachable_addresses_and_is_refused_without_any() {
        let mixed = vec![
            ip("127.0.0.1"),
            ip("192.0.2.7"),
            ip("::1"),
            ip("2001:db8::7"),
        ];
        assert_eq!(
            keep_reachable("mixed.test", mixed, DnsReach::WithPrivate)
                .expect("two reachable addresses"),
            vec![ip("192.0.2.7"), ip("2001:db8::7")]
        );
        let clean = vec![ip("192.0.2.7")];
        assert_eq!(
            keep_reachable("clean.test", clean.clone(), DnsReach::WithPrivate).expect("reachable"),
            clean
        );
        match keep_reachable(
            "rebind.test",
            vec![ip("169.254.169.254"), ip("::1")],
            DnsReach::WithPrivate,
        ) {
            Err(err @ DnsError::OffLimits { .. }) => {
                let text = err.to_string();
                assert!(text.contains("rebind.test"), "{text}");
                assert!(text.contains("169.254.169.254, ::1"), "{text}");
                assert!(text.contains("resolve:"), "the fix is named: {text}");
            }
            other => panic!("expected OffLimits, got {other:?}"),
        }
    }

    /// This host's address toward the network, as the kernel picks it for
    /// a datagram off the host (a UDP connect: nothing is sent).
    fn own_address() -> IpAddr {
        let probe = std::net::UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
        probe
            .connect("203.0.113.1:9")
            .expect("this test needs a route off loopback, to learn this host's own address");
        probe.local_addr().expect("its local address").ip()
    }

    #[test]
    fn an_address_of_this_hosts_own_is_off_limits_from_dns() {
        let own = own_address();
        assert!(!own.is_loopback(), "{own}");
        assert!(is_this_host(own), "{own}");
        assert!(is_this_host(ip("::ffff:127.0.0.1")));
        // TEST-NET-2 and -3: documentation addresses, no host's own.
        assert!(!is_this_host(ip("198.51.100.1")));
        assert!(!is_this_host(ip("203.0.113.9")));
        assert!(matches!(
            keep_reachable("x.example.test", vec![own], DnsReach::WithPrivate),
            Err(DnsError::OffLimits { .. })
        ));
        assert_eq!(
            keep_reachable(
                "x.example.test",
                vec![own, ip("203.0.113.9")],
                DnsReach::WithPrivate
            )
            .expect("one address left"),
            vec![ip("203.0.113.9")]
        );
    }
}
