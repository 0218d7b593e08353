use super::*;

/// The daemon's network namespace in these tests.
const NETNS: u64 = 4096;

const READY: Settings = Settings {
    proxy_port: 15001,
    dns_port: 15053,
    _pad: 0,
    netns_cookie: NETNS,
};

#[test]
fn tcp_always_goes_to_the_proxy_whatever_the_port() {
    for port in [1, 22, 53, 80, 443, 15001, 65535] {
        assert_eq!(
            decide_connect(&READY, NETNS, SOCK_STREAM, IPPROTO_TCP, port),
            Verdict::ToProxy { port: 15001 }
        );
        assert_eq!(
            decide_connect(&READY, NETNS, SOCK_STREAM, IPPROTO_IP, port),
            Verdict::ToProxy { port: 15001 }
        );
    }
}

#[test]
fn udp_carries_dns_only() {
    assert_eq!(
        decide_connect(&READY, NETNS, SOCK_DGRAM, IPPROTO_UDP, 53),
        Verdict::ToResolver { port: 15053 }
    );
    for port in [1, 123, 443, 5353, 15053] {
        assert_eq!(
            decide_connect(&READY, NETNS, SOCK_DGRAM, IPPROTO_UDP, port),
            Verdict::Deny
        );
    }
}

#[test]
fn unconfigured_settings_fail_closed() {
    let unset = Settings::default();
    assert_eq!(
        decide_connect(&unset, NETNS, SOCK_STREAM, IPPROTO_TCP, 443),
        Verdict::Deny
    );
    assert_eq!(
        decide_connect(&unset, NETNS, SOCK_DGRAM, IPPROTO_UDP, 53),
        Verdict::Deny
    );
    let half = Settings {
        proxy_port: 15001,
        ..Settings::default()
    };
    assert_eq!(
        decide_connect(&half, NETNS, SOCK_STREAM, IPPROTO_TCP, 443),
        Verdict::Deny
    );
}

#[test]
fn other_socket_kinds_are_denied_at_connect() {
    // SOCK_SEQPACKET (5) with SCTP (132); a TCP type with a foreign protocol.
    assert_eq!(decide_connect(&READY, NETNS, 5, 132, 443), Verdict::Deny);
    assert_eq!(
        decide_connect(&READY, NETNS, SOCK_STREAM, 262, 443),
        Verdict::Deny
    );
    assert_eq!(
        decide_connect(&READY, NETNS, SOCK_DGRAM, 136, 53),
        Verdict::Deny
    );
}

#[test]
fn a_socket_of_another_network_namespace_is_refused_whatever_it_dials() {
    for other in [1, NETNS - 1, NETNS + 1, u64::MAX] {
        for (sock_type, protocol, port) in [
            (SOCK_STREAM, IPPROTO_TCP, 443),
            (SOCK_STREAM, IPPROTO_IP, 15001),
            (SOCK_DGRAM, IPPROTO_UDP, 53),
        ] {
            assert_eq!(
                decide_connect(&READY, other, sock_type, protocol, port),
                Verdict::DenyForeignNetns
            );
        }
    }
    // Settings that never learnt the daemon's namespace deny everything,
    // including a socket whose own cookie reads as zero.
    let unknown = Settings {
        netns_cookie: 0,
        ..READY
    };
    assert_eq!(
        decide_connect(&unknown, 0, SOCK_STREAM, IPPROTO_TCP, 443),
        Verdict::Deny
    );
    assert_eq!(
        decide_connect(&unknown, NETNS, SOCK_DGRAM, IPPROTO_UDP, 53),
        Verdict::Deny
    );
}

#[test]
fn only_plain_tcp_and_udp_sockets_may_be_created() {
    const SOCK_RAW: u32 = 3;
    const IPPROTO_ICMP: u32 = 1;
    const IPPROTO_ICMPV6: u32 = 58;
    const IPPROTO_SCTP: u32 = 132;
    const IPPROTO_MPTCP: u32 = 262;
    const IPPROTO_UDPLITE: u32 = 136;
    for family in [AF_INET, AF_INET6] {
        assert!(decide_sock_create(family, SOCK_STREAM, IPPROTO_TCP));
        assert!(decide_sock_create(family, SOCK_STREAM, 0));
        assert!(decide_sock_create(family, SOCK_DGRAM, IPPROTO_UDP));
        assert!(decide_sock_create(family, SOCK_DGRAM, 0));
        assert!(!decide_sock_create(family, SOCK_RAW, IPPROTO_TCP));
        assert!(!decide_sock_create(family, SOCK_RAW, 255));
        assert!(!decide_sock_create(family, SOCK_DGRAM, IPPROTO_ICMP));
        assert!(!decide_sock_create(family, SOCK_DGRAM, IPPROTO_ICMPV6));
        assert!(!decide_sock_create(family, SOCK_STREAM, IPPROTO_SCTP));
        assert!(!decide_sock_create(family, 5, IPPROTO_SCTP));
        assert!(!decide_sock_create(family, SOCK_STREAM, IPPROTO_MPTCP));
        assert!(!decide_sock_create(family, SOCK_DGRAM, IPPROTO_UDPLITE));
    }
    // AF_UNIX and AF_NETLINK never reach this hook; if they did, they are local.
    assert!(decide_sock_create(1, SOCK_STREAM, 0));
    assert!(decide_sock_create(16, 3, 0));
}

#[test]
fn agents_may_bind_any_port_but_airlocks_own() {
    for port in [0, 1, 80, 8080, 15000, 15002, 15054, 65535] {
        assert!(bind_allowed(&READY, port), "{port}");
    }
    assert!(!bind_allowed(&READY, 15001));
    assert!(!bind_allowed(&READY, 15053));
    // Before the daemon has said where it listens, there is nothing to
    // keep; the connect hooks deny everything then anyway.
    assert!(bind_allowed(&Settings::default(), 15001));
}

#[test]
fn nothing_leaves_loopback_and_udp_only_to_the_resolver() {
    assert_eq!(decide_egress(&READY, true, false, 15001), Egress::Pass);
    assert_eq!(decide_egress(&READY, true, true, 15053), Egress::DnsQuery);
    assert_eq!(decide_egress(&READY, true, true, 53), Egress::DropUdp);
    assert_eq!(
        decide_egress(&Settings::default(), true, true, 0),
        Egress::DropUdp
    );
    // Off the host, whatever the transport or port: a routed packet, or a
    // listener's reply.
    for (udp, port) in [(false, 443), (false, 15001), (true, 15053), (true, 53)] {
        assert_eq!(
            decide_egress(&READY, false, udp, port),
            Egress::DropOffHost,
            "udp={udp} port={port}"
        );
    }
}

#[test]
fn v4_mapping_round_trips() {
    let m = v4_mapped([10, 1, 2, 3]);
    assert!(is_v4_mapped(&m));
    assert_eq!(&m[12..], &[10, 1, 2, 3]);
    let mut v6 = [0u8; 16];
    v6[15] = 1; // ::1
    assert!(!is_v4_mapped(&v6));
}

#[test]
fn stat_names_are_unique_and_indexed_in_order() {
    for (i, s) in Stat::ALL.iter().enumerate() {
        assert_eq!(*s as u32, i as u32);
        for other in &Stat::ALL[i + 1..] {
            assert_ne!(s.name(), other.name());
        }
    }
}
