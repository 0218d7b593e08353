//! An answer from a host that holds secrets goes through the scrubber,
//! which reads the bytes as the upstream wrote them, one answer at a time.
//! Compressed, an echoed secret would pass it unseen, and the agent's
//! client would unpack it: Node's `fetch`, Python `requests` and `curl
//! --compressed` all ask for gzip and decode it by default. Cut into byte
//! ranges, a kept secret could be read back in pieces shorter than itself,
//! one answer each, none of which the scrubber can match. So such a request
//! asks for the whole answer, uncompressed. An answer compressed all the
//! same is decoded ([`super::decoded`]) when it can be, and refused when
//! it cannot; a partial one is refused.

use http::{HeaderMap, HeaderValue, header};

/// Ask the upstream not to compress. `identity` is acceptable to every
/// server unless the request excludes it (RFC 9110 §12.5.3).
pub fn ask_for_identity(headers: &mut HeaderMap) {
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
}

/// Ask for the whole representation: no `Range`, and no `If-Range`, which
/// means nothing without one. A server may answer any range request with
/// the whole 200 (RFC 9110 §14.2), so a client that asked for a range
/// still reads its answer right.
pub fn ask_for_whole(headers: &mut HeaderMap) {
    headers.remove(header::RANGE);
    headers.remove(header::IF_RANGE);
}

/// The codings named in an error as the upstream wrote them. Any other
/// value is not quoted: the header is the upstream's, unscrubbed, and may
/// carry what it was sent.
const NAMED_CODINGS: [&str; 9] = [
    "identity",
    "chunked",
    "gzip",
    "x-gzip",
    "deflate",
    "br",
    "zstd",
    "compress",
    "x-compress",
];

/// The response's coding, if it is one the scrubber cannot read through:
/// a content coding other than `identity`, or a transfer coding other than
/// `chunked` (which hyper removes; a `gzip` transfer coding would reach the
/// agent as compressed bytes, unmarked). Named as the upstream wrote it
/// when it is a registered coding, else as "an unknown coding".
pub fn unreadable_coding(headers: &HeaderMap) -> Option<String> {
    let codings = [
        (header::CONTENT_ENCODING, "identity"),
        (header::TRANSFER_ENCODING, "chunked"),
    ];
    for (name, readable) in codings {
        for value in headers.get_all(&name) {
            // A value that is not text is no coding the scrubber knows either.
            let text = String::from_utf8_lossy(value.as_bytes());
            let unreadable = text.split(',').map(str::trim).any(|coding| {
                !coding.is_empty()
                    && !coding.eq_ignore_ascii_case(readable)
                    && !coding.eq_ignore_ascii_case("identity")
            });
            if unreadable {
                let named: Vec<&str> = text
                    .split(',')
                    .map(str::trim)
                    .filter(|coding| !coding.is_empty())
                    .map(|coding| {
                        if NAMED_CODINGS.iter().any(|c| c.eq_ignore_ascii_case(coding)) {
                            coding
                        } else {
                            "an unknown coding"
                        }
                    })
                    .collect();
                return Some(format!("{name}: {}", named.join(", ")));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_encoding(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::CONTENT_ENCODING, v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn identity_replaces_whatever_the_agent_accepted() {
        let mut h = HeaderMap::new();
        h.append(
            header::ACCEPT_ENCODING,
            "gzip, deflate, br".parse().unwrap(),
        );
        h.append(header::ACCEPT_ENCODING, "zstd".parse().unwrap());
        ask_for_identity(&mut h);
        let values: Vec<_> = h.get_all(header::ACCEPT_ENCODING).iter().collect();
        assert_eq!(values, ["identity"]);
    }

    #[test]
    fn the_whole_representation_is_asked_for() {
        let mut h = HeaderMap::new();
        h.append(header::RANGE, "bytes=10-19".parse().unwrap());
        h.append(header::RANGE, "bytes=20-29".parse().unwrap());
        h.insert(header::IF_RANGE, "\"etag\"".parse().unwrap());
        h.insert(header::ACCEPT, "*/*".parse().unwrap());
        ask_for_whole(&mut h);
        assert!(!h.contains_key(header::RANGE));
        assert!(!h.contains_key(header::IF_RANGE));
        assert_eq!(h.len(), 1, "other headers stay: {h:?}");
        // Nothing to remove is no error.
        ask_for_whole(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn only_identity_or_no_coding_is_readable() {
        assert_eq!(unreadable_coding(&HeaderMap::new()), None);
        assert_eq!(unreadable_coding(&with_encoding(&["identity"])), None);
        assert_eq!(unreadable_coding(&with_encoding(&[" Identity , "])), None);
        assert_eq!(
            unreadable_coding(&with_encoding(&["gzip"])).as_deref(),
            Some("content-encoding: gzip")
        );
        assert_eq!(
            unreadable_coding(&with_encoding(&["identity", "br"])).as_deref(),
            Some("content-encoding: br")
        );
        assert_eq!(
            unreadable_coding(&with_encoding(&["identity, x-custom"])).as_deref(),
            Some("content-encoding: identity, an unknown coding")
        );
        // The value is the upstream's and may echo what it was sent: only
        // registered codings are quoted back.
        assert_eq!(
            unreadable_coding(&with_encoding(&["Bearer test-value-0123456789abcdef"])).as_deref(),
            Some("content-encoding: an unknown coding")
        );
    }

    #[test]
    fn a_transfer_coding_other_than_chunked_is_unreadable() {
        let mut h = HeaderMap::new();
        h.append(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        assert_eq!(unreadable_coding(&h), None);
        h.insert(header::TRANSFER_ENCODING, "gzip, chunked".parse().unwrap());
        assert_eq!(
            unreadable_coding(&h).as_deref(),
            Some("transfer-encoding: gzip, chunked")
        );
    }

    #[test]
    fn a_long_coding_is_not_quoted() {
        let long = "x".repeat(500);
        let quoted = unreadable_coding(&with_encoding(&[&long])).expect("unreadable");
        assert_eq!(quoted, "content-encoding: an unknown coding");
    }
}
