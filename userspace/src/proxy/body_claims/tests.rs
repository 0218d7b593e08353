use std::{
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, Method, header, uri::PathAndQuery};
use http_body::{Body, Frame};

use super::{BodyKind, Check, Scanner, UNREADABLE};
use crate::creds::Coding;
use crate::policy::parse_policy;
use crate::test_bodies::{fed, fed_as_http2};

fn headers(content_type: Option<&str>) -> HeaderMap {
    let mut map = HeaderMap::new();
    if let Some(value) = content_type {
        map.insert(header::CONTENT_TYPE, value.parse().expect("header value"));
    }
    map
}

/// The claims `body` makes, fed whole, and fed a byte at a time: a
/// claim must not depend on where the body's pieces break.
fn claims(kind: BodyKind, body: &[u8]) -> Vec<String> {
    let mut whole = Scanner::new(kind.clone());
    whole.feed(body);
    let whole = whole.finish();
    let mut bytewise = Scanner::new(kind);
    for byte in body {
        bytewise.feed(std::slice::from_ref(byte));
    }
    assert_eq!(
        whole,
        bytewise.finish(),
        "{}",
        String::from_utf8_lossy(body)
    );
    whole
}

fn form(body: &str) -> Vec<String> {
    claims(BodyKind::Form, body.as_bytes())
}

fn json(body: &str) -> Vec<String> {
    claims(BodyKind::Json, body.as_bytes())
}

fn multipart(body: &str) -> Vec<String> {
    claims(BodyKind::Multipart(b"XyZ".to_vec()), body.as_bytes())
}

#[test]
fn only_a_post_with_a_body_frameworks_parse_is_read() {
    let kind = |method: Method, content_type| BodyKind::of(&method, &headers(content_type));
    assert_eq!(kind(Method::POST, None), Some(BodyKind::Form));
    assert_eq!(
        kind(
            Method::POST,
            Some("Application/X-WWW-Form-URLencoded; charset=utf-8")
        ),
        Some(BodyKind::Form)
    );
    assert_eq!(
        kind(Method::POST, Some("multipart/form-data; boundary=\"XyZ\"")),
        Some(BodyKind::Multipart(b"XyZ".to_vec()))
    );
    assert_eq!(
        kind(Method::POST, Some("multipart/mixed;Boundary=a-b")),
        Some(BodyKind::Multipart(b"a-b".to_vec()))
    );
    assert_eq!(kind(Method::POST, Some("multipart/form-data")), None);
    assert_eq!(
        kind(Method::POST, Some("application/json")),
        Some(BodyKind::Json)
    );
    assert_eq!(
        kind(Method::POST, Some("application/vnd.api+json")),
        Some(BodyKind::Json)
    );
    assert_eq!(kind(Method::POST, Some("application/grpc")), None);
    assert_eq!(kind(Method::POST, Some("application/octet-stream")), None);
    assert_eq!(kind(Method::PUT, None), None);
    // Two Content-Types: read both ways, since servers differ on which
    // counts.
    let mut two = headers(Some("application/octet-stream"));
    two.append(
        header::CONTENT_TYPE,
        "application/json".parse().expect("value"),
    );
    two.append(
        header::CONTENT_TYPE,
        "application/x-www-form-urlencoded".parse().expect("value"),
    );
    let both = BodyKind::of(&Method::POST, &two).expect("read");
    assert_eq!(
        both,
        BodyKind::Several(vec![BodyKind::Json, BodyKind::Form])
    );
    assert_eq!(
        claims(both, br#"{"_method": "PUT"}&_method=DELETE"#),
        ["PUT", "DELETE"]
    );
    assert_eq!(kind(Method::GET, Some("application/json")), None);
}

#[test]
fn a_form_claims_its_method_fields_as_php_and_rack_read_them() {
    assert_eq!(form("a=1&_method=DELETE&b=2"), ["DELETE"]);
    assert_eq!(form("%5Fmethod=DEL%45TE"), ["DELETE"]);
    assert_eq!(form("_method=+put+"), ["put"]);
    // PHP drops leading spaces and reads ` ` and `.` as `_`; a NUL ends
    // the name.
    assert_eq!(form("+++_method=DELETE"), ["DELETE"]);
    assert_eq!(form(".method=DELETE"), ["DELETE"]);
    assert_eq!(form("%20.method=DELETE"), ["DELETE"]);
    assert_eq!(form("_method%00junk=DELETE"), ["DELETE"]);
    // Rack once split pairs at `;` too.
    assert_eq!(form("a=1;_method=PATCH"), ["PATCH"]);
    assert_eq!(form("_method=GET&_method=DELETE"), ["GET", "DELETE"]);
    // An escape that is not one stands as written.
    assert_eq!(form("_method=DEL%zzETE"), ["DEL%zzETE"]);
    // An array, or a value no method is as long as: unreadable.
    assert_eq!(form("_method[]=DELETE"), [UNREADABLE]);
    assert_eq!(form(&format!("_method={}", "A".repeat(65))), [UNREADABLE]);
    assert_eq!(
        form(&format!("_method={}", "A".repeat(64))),
        ["A".repeat(64)]
    );
    // No method token: control bytes would reach the approver's terminal.
    assert_eq!(form("_method=%08%08%08%08GET%1B%5B8m"), [UNREADABLE]);
    assert_eq!(json(r#"{"_method": "GET\u001b[8m"}"#), [UNREADABLE]);
    assert_eq!(json(r#"{"_method": "GET /readme"}"#), [UNREADABLE]);
}

#[test]
fn a_form_that_names_no_method_field_claims_nothing() {
    assert!(form("").is_empty());
    assert!(form("method=DELETE&x_method=DELETE&_methods=DELETE&+method=DELETE").is_empty());
    assert!(form("q=_method%3DDELETE&note=_method=DELETE").is_empty());
    assert!(form(&format!("{}=1&_method", "x".repeat(100))).is_empty());
}

#[test]
fn a_json_body_claims_its_top_level_method_keys() {
    assert_eq!(
        json(r#"{"a": [1, {"b": 2}], "_method": "DELETE"}"#),
        ["DELETE"]
    );
    assert_eq!(
        json("{ \"\\u005fmethod\"\n :\t\"DEL\\u0045TE\" }"),
        ["DELETE"]
    );
    assert_eq!(json(r#"{"_method": 1}"#), [UNREADABLE]);
    assert_eq!(json(r#"{"_method": {"x": "DELETE"}}"#), [UNREADABLE]);
    assert_eq!(
        json(&format!(r#"{{"_method": "{}"}}"#, "A".repeat(65))),
        [UNREADABLE]
    );
    // Cut off after the key: unreadable, not nothing.
    assert_eq!(json(r#"{"_method": "#), [UNREADABLE]);
}

#[test]
fn a_json_body_with_the_name_elsewhere_claims_nothing() {
    assert!(json(r#"{"a": {"_method": "DELETE"}}"#).is_empty());
    assert!(json(r#"[{"_method": "DELETE"}]"#).is_empty());
    assert!(json(r#"{"text": "\"_method\": \"DELETE\""}"#).is_empty());
    assert!(json(r#"{"note": "_method", "x": "DELETE"}"#).is_empty());
    assert!(json(r#"{"_method_": "DELETE", "_Method": "DELETE"}"#).is_empty());
}

#[test]
fn a_multipart_body_claims_its_parts_named_method() {
    let body = "preamble\r\n--XyZ\r\n\
        Content-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\
        Content-Type: text/plain\r\n\r\n\
        name=\"_method\" in a file is data\r\n--XyZ\r\n\
        content-disposition: form-data; name=\"_method\"\r\n\r\n\
        DELETE\r\n--XyZ--\r\n";
    assert_eq!(multipart(body), ["DELETE"]);
    // Unquoted, RFC 5987, PHP's reading of a name, and LF line ends.
    assert_eq!(
        multipart("--XyZ\nContent-Disposition: form-data; name=_method\n\nPUT\n--XyZ--"),
        ["PUT"]
    );
    assert_eq!(
        multipart(
            "--XyZ\r\nContent-Disposition: form-data; name*=utf-8''%5Fmethod\r\n\r\nPATCH\r\n--XyZ--"
        ),
        ["PATCH"]
    );
    assert_eq!(
        multipart(
            "--XyZ\r\nContent-Disposition: form-data; name=\" .method\"\r\n\r\nDELETE\r\n--XyZ--"
        ),
        ["DELETE"]
    );
    // A value with no closing delimiter is read as it stands.
    assert_eq!(
        multipart("--XyZ\r\nContent-Disposition: form-data; name=_method\r\n\r\nDELETE"),
        ["DELETE"]
    );
    assert_eq!(
        multipart(&format!(
            "--XyZ\r\nContent-Disposition: form-data; name=_method\r\n\r\n{}\r\n--XyZ--",
            "A".repeat(200)
        )),
        [UNREADABLE]
    );
}

#[test]
fn a_multipart_body_past_what_is_read_cheaply_is_unreadable() {
    // A boundary longer than any client makes.
    let long = "b".repeat(300);
    let mut scanner = Scanner::new(BodyKind::Multipart(long.clone().into_bytes()));
    scanner.feed(format!("--{long}\r\nContent-Disposition: form-data; name=x\r\n\r\n1").as_bytes());
    assert_eq!(scanner.finish(), [UNREADABLE]);
    // Part headers that never end.
    let endless = format!(
        "--XyZ\r\nContent-Disposition: form-data; name=x\r\nX-Pad: {}",
        "p".repeat(20_000)
    );
    assert_eq!(multipart(&endless), [UNREADABLE]);
}

#[test]
fn a_multipart_body_without_such_a_part_claims_nothing() {
    let body = "--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n\
        Content-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--\r\n";
    assert!(multipart(body).is_empty());
    let big_file = format!(
        "--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n{}\r\n--XyZ--\r\n",
        "_method DELETE ".repeat(10_000)
    );
    assert!(multipart(&big_file).is_empty());
}

fn coded(content_encoding: &str) -> BodyKind {
    let mut map = headers(Some("application/x-www-form-urlencoded"));
    map.append(
        header::CONTENT_ENCODING,
        content_encoding.parse().expect("value"),
    );
    BodyKind::of(&Method::POST, &map).expect("read")
}

/// `body` as a client compresses it in `coding`.
fn compressed(coding: Coding, body: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    match coding {
        Coding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(body).expect("gzip");
            e.finish().expect("gzip")
        }
        Coding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(body).expect("deflate");
            e.finish().expect("deflate")
        }
        Coding::Brotli => {
            let mut out = Vec::new();
            {
                let mut e = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                e.write_all(body).expect("br");
            }
            out
        }
        Coding::Zstd => zstd::encode_all(body, 1).expect("zstd"),
    }
}

#[test]
fn a_compressed_body_is_read_for_claims_as_a_server_that_inflates_it() {
    let cases = [
        ("gzip", Coding::Gzip),
        ("X-Gzip", Coding::Gzip),
        ("deflate", Coding::Deflate),
        ("br", Coding::Brotli),
        (" zstd ", Coding::Zstd),
        ("identity, gzip", Coding::Gzip),
    ];
    for (named, coding) in cases {
        let kind = coded(named);
        assert_eq!(
            kind,
            BodyKind::Coded(coding, Box::new(BodyKind::Form)),
            "{named}"
        );
        let body = compressed(coding, b"title=x&_method=DELETE");
        // Fed whole and a byte at a time, as every reading is.
        assert_eq!(claims(kind.clone(), &body), ["DELETE"], "{named}");
        assert!(
            claims(kind, &compressed(coding, b"title=x&method=DELETE")).is_empty(),
            "{named}"
        );
    }
    // A gzip body of several members: a server that inflates reads them all.
    let mut members = compressed(Coding::Gzip, b"title=x&");
    members.extend(compressed(Coding::Gzip, b"_method=PUT"));
    assert_eq!(claims(coded("gzip"), &members), ["PUT"]);
    // `identity` is no coding at all.
    assert_eq!(coded("identity"), BodyKind::Form);
}

#[test]
fn a_body_that_cannot_be_decoded_claims_the_unreadable() {
    // A coding Airlock does not decode, and layered codings.
    for named in ["compress", "gzip, br", "aes128gcm"] {
        let kind = coded(named);
        assert_eq!(kind, BodyKind::Unreadable, "{named}");
        assert_eq!(claims(kind.clone(), b"_method=DELETE"), [UNREADABLE]);
        // No byte, nothing to decode, nothing claimed.
        assert!(claims(kind, b"").is_empty(), "{named}");
    }
    let mut two_headers = headers(None);
    two_headers.append(header::CONTENT_ENCODING, "gzip".parse().expect("value"));
    two_headers.append(header::CONTENT_ENCODING, "gzip".parse().expect("value"));
    assert_eq!(
        BodyKind::of(&Method::POST, &two_headers),
        Some(BodyKind::Unreadable)
    );
    // Bytes that are not what their coding says.
    for coding in [Coding::Gzip, Coding::Deflate, Coding::Brotli, Coding::Zstd] {
        let kind = BodyKind::Coded(coding, Box::new(BodyKind::Form));
        assert_eq!(
            claims(kind.clone(), b"_method=DELETE"),
            [UNREADABLE],
            "{coding:?}"
        );
        assert!(claims(kind.clone(), b"").is_empty(), "{coding:?}");
        // Cut short: what was decoded is read, and the rest is unreadable.
        let whole = compressed(coding, b"_method=DELETE&note=".repeat(50).as_slice());
        let cut = &whole[..whole.len() - 6];
        let found = claims(kind, cut);
        assert_eq!(
            found.last().map(String::as_str),
            Some(UNREADABLE),
            "{coding:?}"
        );
    }
}

#[test]
fn a_body_that_unpacks_past_the_limit_is_unreadable() {
    let limit = usize::try_from(super::coded::MAX_DECODED).expect("fits");
    let mut huge = vec![b'a'; limit + 1];
    huge.extend_from_slice(b"&_method=DELETE");
    for coding in [Coding::Gzip, Coding::Zstd] {
        let bomb = compressed(coding, &huge);
        assert!(bomb.len() < limit / 100, "{coding:?}: {} bytes", bomb.len());
        let mut scanner = Scanner::new(BodyKind::Coded(coding, Box::new(BodyKind::Form)));
        scanner.feed(&bomb);
        assert_eq!(scanner.finish(), [UNREADABLE], "{coding:?}");
    }
    // Just under the limit, the claim at its end is read.
    let mut under = vec![b'a'; limit - 64];
    under.extend_from_slice(b"&_method=DELETE");
    let mut scanner = Scanner::new(BodyKind::Coded(Coding::Zstd, Box::new(BodyKind::Form)));
    scanner.feed(&compressed(Coding::Zstd, &under));
    assert_eq!(scanner.finish(), ["DELETE"]);
}

#[test]
fn a_zstd_body_that_asks_for_a_window_past_8_mib_is_unreadable() {
    use std::io::Write as _;
    let framed = |window_log: u32| {
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 1).expect("zstd");
        e.window_log(window_log).expect("window");
        e.include_contentsize(false).expect("no size");
        e.write_all(b"_method=DELETE").expect("zstd");
        e.finish().expect("zstd")
    };
    let kind = BodyKind::Coded(Coding::Zstd, Box::new(BodyKind::Form));
    assert_eq!(claims(kind.clone(), &framed(23)), ["DELETE"]);
    // The decoder would allocate the window the frame asks for.
    assert_eq!(claims(kind, &framed(24)), [UNREADABLE]);
}

/// A policy like the pr-bot example's: reads, and POSTs to one path, and
/// DELETE denied outright.
fn pr_bot() -> Arc<crate::policy::Policy> {
    let text = "version: 1\nagent: t\n\
        rules:\n\
        \x20 - host: api.example.test\n\
        \x20   methods: [GET]\n\
        \x20 - host: api.example.test\n\
        \x20   methods: [POST]\n\
        \x20   paths: [\"/repos/*/pulls\"]\n\
        deny:\n\
        \x20 - host: api.example.test\n\
        \x20   methods: [DELETE]\n";
    Arc::new(parse_policy(Path::new("t.yaml"), text).expect("policy parses"))
}

fn check(kind: BodyKind, host: &str, path: &'static str) -> Check {
    Check::new(
        kind,
        pr_bot(),
        Arc::from(host),
        443,
        PathAndQuery::from_static(path),
        Arc::new(crate::ratelimit::RateLimiter::new()),
        Arc::from("t"),
        Vec::new(),
    )
}

#[test]
fn a_claim_is_decided_as_the_requests_own_method_would_be() {
    let policy = pr_bot();
    assert!(policy.decides_by_method("api.example.test", 443));
    assert!(!policy.decides_by_method("other.example.test", 443));
    let check = check(BodyKind::Form, "api.example.test", "/repos/r/pulls");
    assert!(check.held(b"title=x&_method=POST").is_ok());
    assert!(check.held(b"title=x").is_ok());
    let refused = check
        .held(b"title=x&_method=delete")
        .expect_err("DELETE is denied");
    assert_eq!(refused.reason, "deny_rule");
    let refused = check.held(b"_method=PUT").expect_err("PUT is not allowed");
    assert_eq!(refused.reason, "method_not_allowed");
    assert!(check.held(b"_method=").is_ok(), "an empty claim is none");
}

type Polled = Poll<Option<Result<Frame<Bytes>, crate::proxy::body::BoxError>>>;

fn poll<B: Body<Data = Bytes, Error = crate::proxy::body::BoxError> + Unpin>(
    body: &mut B,
) -> Polled {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    Pin::new(body).poll_frame(&mut cx)
}

fn data(polled: Polled) -> Bytes {
    match polled {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().expect("a data frame"),
        Poll::Ready(Some(Err(err))) => panic!("an error: {err}"),
        Poll::Ready(None) => panic!("the end"),
        Poll::Pending => panic!("pending"),
    }
}

const FIRST: &[u8] = br#"{"title": "x", "_method": "#;

#[test]
fn a_checked_body_streams_and_sends_its_last_piece_once_it_has_passed() {
    let last: &[u8] = br#""POST"}"#;
    let (body, tx) = fed(Some(FIRST.len() + last.len()));
    let check = check(BodyKind::Json, "api.example.test", "/repos/r/pulls");
    let (mut body, refused) = check.streamed(body);
    tx.send(Bytes::from_static(FIRST)).expect("send");
    assert_eq!(data(poll(&mut body)), FIRST, "a piece goes on as it comes");
    tx.send(Bytes::from_static(last)).expect("send");
    assert_eq!(data(poll(&mut body)), r#""POST"}"#);
    assert!(matches!(poll(&mut body), Poll::Ready(None)));
    assert!(refused.refused.get().is_none());
}

#[test]
fn a_checked_body_that_claims_a_refused_method_never_sends_its_last_piece() {
    let last: &[u8] = br#""DELETE"}"#;
    let (body, tx) = fed(Some(FIRST.len() + last.len()));
    let check = check(BodyKind::Json, "api.example.test", "/repos/r/pulls");
    let (mut body, refused) = check.streamed(body);
    tx.send(Bytes::from_static(FIRST)).expect("send");
    tx.send(Bytes::from_static(last)).expect("send");
    assert_eq!(data(poll(&mut body)), FIRST);
    assert!(
        matches!(poll(&mut body), Poll::Ready(Some(Err(_)))),
        "the body ends in an error, without its last piece"
    );
    let refusal = refused
        .refused
        .get()
        .expect("the refusal is left for the answer");
    assert_eq!(refusal.reason, "deny_rule");
    assert!(matches!(poll(&mut body), Poll::Ready(None)));
}

/// An HTTP/2 body ends at END_STREAM, which an agent can hold back after
/// the last byte its Content-Length declares. An upstream reached over
/// HTTP/1.1 has the whole request with that byte, so the byte waits for
/// the verdict as the last piece of any other body does.
#[test]
fn an_http2_body_that_claims_a_refused_method_never_sends_its_last_declared_byte() {
    let body: &[u8] = b"_method=DELETE";
    let (fed, tx) = fed_as_http2(body.len());
    let (mut checked, refused) =
        check(BodyKind::Form, "api.example.test", "/repos/r/pulls").streamed(fed);
    tx.send(Bytes::from_static(body)).expect("send");
    assert!(
        matches!(poll(&mut checked), Poll::Ready(Some(Err(_)))),
        "the body ends in an error, without its last piece"
    );
    assert_eq!(refused.refused.get().map(|r| r.reason), Some("deny_rule"));
    drop(tx);

    // Allowed: the piece goes once judged, and the body ends when the
    // agent's does (at END_STREAM, after any trailers).
    let body: &[u8] = b"_method=POST";
    let (fed, tx) = fed_as_http2(body.len());
    let (mut checked, refused) =
        check(BodyKind::Form, "api.example.test", "/repos/r/pulls").streamed(fed);
    tx.send(Bytes::from_static(body)).expect("send");
    assert_eq!(data(poll(&mut checked)), body);
    assert!(refused.refused.get().is_none());
    assert!(
        poll(&mut checked).is_pending(),
        "END_STREAM is still to come"
    );
    assert!(!checked.is_end_stream());
    drop(tx);
    assert!(matches!(poll(&mut checked), Poll::Ready(None)));
    assert!(checked.is_end_stream());
}

#[test]
fn a_body_of_unknown_length_that_claims_a_refused_method_never_ends() {
    // Chunked, or HTTP/2 without a length: every piece goes on, but the
    // body's end (the last chunk, END_STREAM) does not.
    let (body, tx) = fed(None);
    let check = check(BodyKind::Form, "api.example.test", "/repos/r/pulls");
    let (mut body, refused) = check.streamed(body);
    tx.send(Bytes::from_static(b"title=x&_method=DELETE"))
        .expect("send");
    assert_eq!(data(poll(&mut body)), "title=x&_method=DELETE");
    assert!(poll(&mut body).is_pending(), "the end is not known yet");
    drop(tx);
    assert!(matches!(poll(&mut body), Poll::Ready(Some(Err(_)))));
    assert!(refused.refused.get().is_some());
}

/// A body's claim is allowed only on the terms its rule sets: a human's
/// approval the request got, secrets that rule binds, and its rate limit.
#[test]
fn a_claim_asks_no_more_than_the_request_was_granted() {
    let text = "version: 1\nagent: t\n\
        rules:\n\
        \x20 - host: api.example.test\n\
        \x20   methods: [POST]\n\
        \x20   credentials: [{secret: tok}]\n\
        \x20 - host: api.example.test\n\
        \x20   methods: [DELETE]\n\
        \x20   approval: true\n\
        \x20   credentials: [{secret: tok}]\n\
        \x20 - host: api.example.test\n\
        \x20   methods: [PATCH]\n\
        \x20   rate_limit: 1/minute\n";
    let policy = Arc::new(parse_policy(Path::new("t.yaml"), text).expect("policy parses"));
    let check = |approved: bool, injected: &[&str]| {
        let mut check = Check::new(
            BodyKind::Form,
            policy.clone(),
            Arc::from("api.example.test"),
            443,
            PathAndQuery::from_static("/x"),
            Arc::new(crate::ratelimit::RateLimiter::new()),
            Arc::from("t"),
            vec![crate::policy::RuleId(0)],
        );
        let injected = injected.iter().map(|n| (*n).to_owned()).collect();
        check.grant(approved, injected);
        check
    };
    let refused = check(false, &[])
        .held(b"_method=DELETE")
        .expect_err("DELETE wants a human");
    assert_eq!(refused.reason, "claim_needs_approval");
    assert_eq!(refused.rule.as_deref(), Some("rules[1] api.example.test"));
    assert!(check(true, &["tok"]).held(b"_method=DELETE").is_ok());

    let refused = check(false, &["tok"])
        .held(b"_method=PATCH")
        .expect_err("PATCH binds no secret");
    assert_eq!(refused.reason, "placeholder_not_allowed");

    let once = check(false, &[]);
    assert!(once.held(b"_method=PATCH").is_ok());
    let refused = once.held(b"_method=PATCH").expect_err("one a minute");
    assert_eq!(refused.reason, "rate_limited");
    assert!(refused.retry_after.is_some());
    // Claimed twice in one body, charged once.
    assert!(
        check(false, &[])
            .held(b"_method=PATCH&_method=PATCH")
            .is_ok()
    );

    // A body held for a human: what it claims is shown, unless the policy
    // refuses it outright.
    let held = check(false, &[]);
    assert_eq!(
        held.before_approval(b"x=1&_method=DELETE").expect("asked"),
        ["DELETE"]
    );
    let refused = held
        .before_approval(b"x=1&_method=PUT")
        .expect_err("no rule allows PUT");
    assert_eq!(refused.reason, "method_not_allowed");
}
