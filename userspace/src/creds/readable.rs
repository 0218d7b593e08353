//! A response to a request that carried a real secret goes through the
//! scrubber, which reads the bytes as the upstream wrote them. Compressed,
//! an echoed secret would pass it unseen, and the agent's client would
//! unpack it: Node's `fetch`, Python `requests` and `curl --compressed` all
//! ask for gzip and decode it by default. So such a request asks for an
//! uncompressed answer, and an answer compressed all the same is refused.

use http::{HeaderMap, HeaderValue, header};

/// Ask the upstream not to compress. `identity` is acceptable to every
/// server unless the request excludes it (RFC 9110 §12.5.3).
pub fn ask_for_identity(headers: &mut HeaderMap) {
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
}

/// The longest coding quoted back in an error: the value is the upstream's.
const QUOTED_MAX: usize = 40;

/// The response's coding, if it is one the scrubber cannot read through,
/// as the upstream named it: a content coding other than `identity`, or a
/// transfer coding other than `chunked` (which hyper removes; a `gzip`
/// transfer coding would reach the agent as compressed bytes, unmarked).
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
                return Some(format!(
                    "{name}: {}",
                    text.chars().take(QUOTED_MAX).collect::<String>()
                ));
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
            Some("content-encoding: identity, x-custom")
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
    fn a_long_coding_is_cut_when_quoted() {
        let long = "x".repeat(500);
        let quoted = unreadable_coding(&with_encoding(&[&long])).expect("unreadable");
        assert_eq!(
            quoted,
            format!("content-encoding: {}", "x".repeat(QUOTED_MAX))
        );
    }
}
