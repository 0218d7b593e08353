//! Hop-by-hop headers belong to one connection and must not be forwarded:
//! a `Connection: close` passed upstream would kill the pooled connection.

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// The hop-by-hop headers, each with its bit in the set
/// [`hop_by_hop_present`] makes of a message's.
static HOP_BY_HOP: [(u16, HeaderName); 9] = [
    (CONNECTION_BIT, header::CONNECTION),
    (1 << 1, HeaderName::from_static("keep-alive")),
    (1 << 2, header::PROXY_AUTHENTICATE),
    (1 << 3, header::PROXY_AUTHORIZATION),
    (1 << 4, HeaderName::from_static("proxy-connection")),
    (1 << 5, header::TE),
    (1 << 6, header::TRAILER),
    (1 << 7, header::TRANSFER_ENCODING),
    (UPGRADE_BIT, header::UPGRADE),
];
const CONNECTION_BIT: u16 = 1;
const UPGRADE_BIT: u16 = 1 << 8;

/// Remove hop-by-hop headers, including those the Connection header names.
/// `keep_upgrade` keeps `Connection: upgrade` and `Upgrade` for a
/// WebSocket handshake that policy allowed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Runs twice per request. Most requests carry none of these, and most
    // answers only `Connection: keep-alive`: one pass over the names says
    // which are there, and only those are looked up to be removed.
    let present = headers
        .keys()
        .fold(0, |set, name| set | hop_by_hop_bit(name));
    if !keep_upgrade && present == 0 {
        return;
    }
    if present & CONNECTION_BIT != 0 {
        // Values are shared bytes, cheap to clone out of the map, and
        // names are looked up by &str: nothing is allocated for one line.
        let mut values = headers.get_all(header::CONNECTION).iter();
        let first = values.next().cloned();
        let more: Vec<HeaderValue> = values.cloned().collect();
        for value in first.iter().chain(&more) {
            let Ok(text) = value.to_str() else {
                continue;
            };
            for token in text.split(',').map(str::trim) {
                // A hop-by-hop header it names goes below, if present.
                let named_hop_by_hop = HOP_BY_HOP
                    .iter()
                    .any(|(_, name)| token.eq_ignore_ascii_case(name.as_str()));
                if !named_hop_by_hop {
                    headers.remove(token);
                }
            }
        }
    }
    for (bit, name) in &HOP_BY_HOP {
        let kept = keep_upgrade && (*bit == CONNECTION_BIT || *bit == UPGRADE_BIT);
        if present & bit != 0 && !kept {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(
            header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
    }
}

/// The header's bit in [`HOP_BY_HOP`], or 0. One match on the name's text
/// (its length, then a comparison), where comparing it with each of nine
/// names cost about 170 instructions a header, 1,700 a request.
fn hop_by_hop_bit(name: &HeaderName) -> u16 {
    match name.as_str() {
        "connection" => CONNECTION_BIT,
        "keep-alive" => 1 << 1,
        "proxy-authenticate" => 1 << 2,
        "proxy-authorization" => 1 << 3,
        "proxy-connection" => 1 << 4,
        "te" => 1 << 5,
        "trailer" => 1 << 6,
        "transfer-encoding" => 1 << 7,
        "upgrade" => UPGRADE_BIT,
        _ => 0,
    }
}

/// `te: trailers`, as gRPC sends it.
pub static TRAILERS: HeaderValue = HeaderValue::from_static("trailers");

/// Whether the request's TE says no more than that it takes trailers: the
/// one TE an HTTP/2 request may carry, and so the one passed on over
/// HTTP/2 (RFC 9113, 8.2.2).
pub fn asks_for_trailers(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::TE).iter();
    values
        .next()
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"trailers"))
        && values.next().is_none()
}

/// An HTTP/1.1 upgrade request (a WebSocket) that may be passed on once
/// the policy allows it. One to a protocol that carries further HTTP
/// requests is not: it is dropped, and the request goes on as HTTP/1.1.
/// Once switched, the connection would carry requests of any method and
/// path straight to the upstream, decided by no policy: HTTP/2 in clear
/// text (h2c; Airlock decides each request when the agent speaks HTTP/2
/// from its first byte instead), or TLS (RFC 2817), which would hide them
/// from Airlock too.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && !headers
            .get_all(header::UPGRADE)
            .iter()
            .any(names_a_carrier_of_requests)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

fn names_a_carrier_of_requests(upgrade: &HeaderValue) -> bool {
    upgrade.as_bytes().split(|b| *b == b',').any(|token| {
        // A protocol, with its version after a slash: "TLS/1.2".
        let name = token.trim_ascii().split(|b| *b == b'/').next();
        name.is_some_and(|n| n.eq_ignore_ascii_case(b"h2c") || n.eq_ignore_ascii_case(b"tls"))
    })
}

/// An upgrade to the WebSocket protocol, the one upgrade whose stream
/// Airlock can read.
pub fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// A header map of `pairs`, in order, repeated names kept: for tests.
#[cfg(test)]
pub fn map_of(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            v.parse().expect("value"),
        );
    }
    h
}

#[cfg(test)]
mod tests {
    use super::{map_of as headers, *};

    #[test]
    fn only_a_te_of_trailers_alone_asks_for_trailers() {
        for te in ["trailers", "Trailers ", "TRAILERS"] {
            assert!(asks_for_trailers(&headers(&[("te", te)])), "{te}");
        }
        for te in [
            &[("te", "gzip")][..],
            &[("te", "trailers, deflate")],
            &[("te", "trailers"), ("te", "gzip")],
            &[("accept", "trailers")],
        ] {
            assert!(!asks_for_trailers(&headers(te)), "{te:?}");
        }
    }

    #[test]
    fn connection_close_and_named_headers_are_stripped() {
        let mut h = headers(&[
            ("connection", "close, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("authorization", "Bearer x"),
            ("upgrade", "websocket"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("connection").is_none());
        assert!(h.get("x-secret-hop").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("transfer-encoding").is_none());
        assert!(h.get("upgrade").is_none());
        assert_eq!(
            h.get("authorization").map(|v| v.as_bytes()),
            Some(&b"Bearer x"[..])
        );
    }

    #[test]
    fn a_hop_by_hop_header_alone_is_stripped() {
        for name in [
            "upgrade",
            "te",
            "trailer",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "proxy-authenticate",
            "transfer-encoding",
            "connection",
        ] {
            let mut h = headers(&[("accept", "*/*"), (name, "x"), ("x-end-to-end", "3")]);
            strip_hop_by_hop(&mut h, false);
            assert!(h.get(name).is_none(), "{name} was forwarded");
            assert_eq!(h.len(), 2, "{name}");
        }
        let mut plain = headers(&[("accept", "*/*"), ("user-agent", "curl")]);
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain.len(), 2);
    }

    #[test]
    fn each_hop_by_hop_name_has_its_own_bit_and_no_other_name_has_one() {
        let mut seen = 0;
        for (bit, name) in &HOP_BY_HOP {
            assert_eq!(hop_by_hop_bit(name), *bit, "{name}");
            assert_eq!(seen & bit, 0, "{name} shares a bit");
            seen |= bit;
        }
        for name in ["accept", "authorization", "host", "tee", "x-upgrade"] {
            assert_eq!(hop_by_hop_bit(&HeaderName::from_static(name)), 0, "{name}");
        }
    }

    #[test]
    fn every_connection_header_line_is_honoured_in_any_case() {
        let mut h = headers(&[
            ("connection", "keep-alive"),
            ("connection", " X-First-Hop ,X-SECOND-HOP"),
            ("x-first-hop", "1"),
            ("x-second-hop", "2"),
            ("x-end-to-end", "3"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-first-hop").is_none());
        assert!(h.get("x-second-hop").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h.get("x-end-to-end").map(|v| v.as_bytes()), Some(&b"3"[..]));
    }

    #[test]
    fn an_allowed_upgrade_keeps_its_handshake_headers() {
        let mut h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(
            h.get("upgrade").map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert_eq!(
            h.get("connection").map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
        assert!(!is_upgrade(&headers(&[("upgrade", "websocket")])));
    }

    #[test]
    fn an_upgrade_to_h2c_or_tls_is_not_passed_on_and_its_headers_go() {
        for upgrade in [
            "h2c",
            "H2C",
            "websocket, h2c",
            "TLS/1.0",
            "tls/1.2, HTTP/1.1",
        ] {
            let mut h = headers(&[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", upgrade),
                ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
                ("host", "svc.example.test"),
            ]);
            assert!(!is_upgrade(&h), "{upgrade}");
            strip_hop_by_hop(&mut h, false);
            assert_eq!(
                h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
                ["host"],
                "{upgrade}"
            );
        }
        for upgrade in ["websocket", "SPDY/3.1", "tcp", "h2", "tlsfoo"] {
            let h = headers(&[("connection", "Upgrade"), ("upgrade", upgrade)]);
            assert!(is_upgrade(&h), "{upgrade}");
        }
    }

    #[test]
    fn only_a_websocket_upgrade_is_one_airlock_can_read() {
        assert!(is_websocket(&headers(&[("upgrade", "WebSocket")])));
        assert!(!is_websocket(&headers(&[("upgrade", "h2c")])));
        assert!(!is_websocket(&headers(&[("upgrade", "websocket, h2c")])));
        assert!(!is_websocket(&HeaderMap::new()));
    }
}
