use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::vault::SecretKind;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, request::Parts};
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;

use super::*;
use crate::secret::Secret;

const GITHUB_PH: &str = "airlock-ph-github-token";
const GITHUB_VALUE: &str = "gh-test-REALvalue0123456789";
const CUSTOM_PH: &str = "ph-airlock-xyz123";
const CUSTOM_VALUE: &str = "test-live-REALcustom9876";
const SHORT_PH: &str = "airlock-ph-deploy";
const SHORT_VALUE: &str = "REALdeployKEY-short";
const LONG_PH: &str = "airlock-ph-deploy-admin";
const LONG_VALUE: &str = "REALdeployKEY-admin";

/// A `header` secret: swapped in any request header.
fn cred(name: &str, placeholder: &str, value: &str) -> Credential {
    Credential {
        header: None,
        name: name.to_owned(),
        kind: SecretKind::Header,
        placeholder: placeholder.to_owned(),
        value: Secret::new(value.as_bytes().to_vec()),
    }
}

fn of_kind(kind: SecretKind, cred: Credential) -> Credential {
    Credential { kind, ..cred }
}

fn set() -> CredentialSet {
    CredentialSet::new(vec![
        cred("github", GITHUB_PH, GITHUB_VALUE),
        cred("custom", CUSTOM_PH, CUSTOM_VALUE),
        cred("deploy", SHORT_PH, SHORT_VALUE),
        cred("deploy-admin", LONG_PH, LONG_VALUE),
    ])
}

fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut builder = Request::builder().uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

fn allow(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn values(parts: &Parts, name: &str) -> Vec<String> {
    parts
        .headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[test]
fn swaps_allowed_placeholder_in_header() {
    let set = set();
    let mut p = parts(
        "https://api.github.com/user",
        &[
            ("authorization", &format!("Bearer {GITHUB_PH}")),
            ("accept", "application/json"),
        ],
    );
    let injected = set.swap(&mut p, &allow(&["github"]), &[]).unwrap().injected;
    assert_eq!(injected, vec!["github"]);
    let auth = p.headers.get("authorization").unwrap();
    assert_eq!(auth.to_str().unwrap(), format!("Bearer {GITHUB_VALUE}"));
    assert!(
        auth.is_sensitive(),
        "swapped values must not be HPACK-indexed"
    );
    assert_eq!(p.headers.get("accept").unwrap(), "application/json");
    assert_eq!(p.uri, "https://api.github.com/user");
}

#[test]
fn nothing_to_swap_leaves_request_alone() {
    let set = set();
    let mut p = parts("https://example.com/?a=b", &[("x-other", "plain")]);
    let before = (p.uri.clone(), p.headers.clone());
    assert!(
        set.swap(&mut p, &allow(&[]), &[])
            .unwrap()
            .injected
            .is_empty()
    );
    assert_eq!((p.uri.clone(), p.headers.clone()), before);
    assert!(!p.headers.get("x-other").unwrap().is_sensitive());
}

#[test]
fn refuses_placeholder_of_secret_not_allowed_and_leaves_parts_unchanged() {
    let set = set();
    let mut p = parts(
        &format!("https://api.github.com/x?k={GITHUB_PH}"),
        &[
            ("authorization", &format!("Bearer {GITHUB_PH}")),
            ("x-api-key", CUSTOM_PH),
        ],
    );
    let before = (p.uri.clone(), p.headers.clone());
    match set.swap(&mut p, &allow(&["github"]), &[]) {
        Err(SwapError::NotAllowed { secret }) => assert_eq!(secret, "custom"),
        other => panic!("expected NotAllowed, got {other:?}"),
    }
    assert_eq!(p.uri, before.0);
    assert_eq!(p.headers, before.1);
    assert_eq!(
        values(&p, "authorization"),
        vec![format!("Bearer {GITHUB_PH}")]
    );
}

#[test]
fn refuses_placeholder_hidden_in_basic_credentials() {
    let set = set();
    let basic = STANDARD.encode(format!("user:{CUSTOM_PH}"));
    let mut p = parts(
        "https://example.com/",
        &[("authorization", &format!("Basic {basic}"))],
    );
    let before = p.headers.clone();
    assert!(matches!(
        set.swap(&mut p, &allow(&["github"]), &[]),
        Err(SwapError::NotAllowed { secret }) if secret == "custom"
    ));
    assert_eq!(p.headers, before);
}

#[test]
fn longest_placeholder_wins_when_one_is_a_prefix_of_another() {
    let set = set();
    let mut p = parts(
        "https://example.com/",
        &[("x-a", LONG_PH), ("x-b", &format!("{SHORT_PH}.x"))],
    );
    assert_eq!(set.placeholders_in(&p), vec!["deploy", "deploy-admin"]);
    // Only the long one in x-a: allowing it alone must not trip on the short.
    let mut only_long = parts("https://example.com/", &[("x-a", LONG_PH)]);
    assert_eq!(set.placeholders_in(&only_long), vec!["deploy-admin"]);
    assert_eq!(
        set.swap(&mut only_long, &allow(&["deploy-admin"]), &[])
            .unwrap()
            .injected,
        vec!["deploy-admin"]
    );
    assert_eq!(only_long.headers.get("x-a").unwrap(), LONG_VALUE);

    set.swap(&mut p, &allow(&["deploy", "deploy-admin"]), &[])
        .unwrap();
    assert_eq!(p.headers.get("x-a").unwrap(), LONG_VALUE);
    assert_eq!(
        p.headers.get("x-b").unwrap().to_str().unwrap(),
        format!("{SHORT_VALUE}.x")
    );
}

#[test]
fn truncated_placeholder_matches_nothing() {
    let set = set();
    let cut = &GITHUB_PH[..GITHUB_PH.len() - 1];
    let p = parts("https://example.com/", &[("x-a", cut)]);
    assert!(set.placeholders_in(&p).is_empty());
}

#[test]
fn basic_auth_round_trip() {
    let set = set();
    for (user_pass, expected) in [
        (format!("bot:{SHORT_PH}"), format!("bot:{SHORT_VALUE}")),
        (
            format!("{SHORT_PH}:x-oauth"),
            format!("{SHORT_VALUE}:x-oauth"),
        ),
        (SHORT_PH.to_owned(), SHORT_VALUE.to_owned()),
    ] {
        for encoded in [
            STANDARD.encode(&user_pass),
            STANDARD_NO_PAD.encode(&user_pass),
        ] {
            for (header, scheme) in [("authorization", "Basic"), ("proxy-authorization", "basic")] {
                let mut p = parts(
                    "https://example.com/",
                    &[(header, &format!("{scheme} {encoded}"))],
                );
                assert_eq!(set.placeholders_in(&p), vec!["deploy"]);
                let swapped = set.swap(&mut p, &allow(&["deploy"]), &[]).unwrap();
                assert_eq!(swapped.injected, vec!["deploy"]);
                let value = p.headers.get(header).unwrap().to_str().unwrap();
                let token = value
                    .strip_prefix(&format!("{scheme} "))
                    .unwrap_or_else(|| panic!("scheme lost in {header}"));
                let decoded = STANDARD.decode(token).unwrap();
                assert_eq!(String::from_utf8(decoded).unwrap(), expected);
                // An echo of the encoded secret is scrubbed back to what
                // the agent sent.
                let [(sent, agents)] = &swapped.encoded[..] else {
                    panic!("one Basic value rewritten: {:?}", swapped.encoded);
                };
                assert_eq!(sent.expose(), token.as_bytes());
                assert_eq!(agents, encoded.as_bytes());
            }
        }
    }
}

#[test]
fn basic_value_in_other_headers_is_not_decoded() {
    let set = set();
    let encoded = STANDARD.encode(format!("bot:{SHORT_PH}"));
    let p = parts(
        "https://example.com/",
        &[("x-forwarded-auth", &format!("Basic {encoded}"))],
    );
    assert!(set.placeholders_in(&p).is_empty());
}

#[test]
fn query_swap_keeps_scheme_authority_and_path() {
    let set = CredentialSet::new(vec![of_kind(
        SecretKind::Query,
        cred("custom", CUSTOM_PH, CUSTOM_VALUE),
    )]);
    let mut p = parts(
        &format!("https://api.example.com:8443/v1/items?key={CUSTOM_PH}&q=1"),
        &[],
    );
    assert_eq!(
        set.swap(&mut p, &allow(&["custom"]), &[]).unwrap().injected,
        vec!["custom"]
    );
    assert_eq!(p.uri.scheme_str(), Some("https"));
    assert_eq!(p.uri.authority().unwrap().as_str(), "api.example.com:8443");
    assert_eq!(p.uri.path(), "/v1/items");
    assert_eq!(
        p.uri.query(),
        Some(format!("key={CUSTOM_VALUE}&q=1").as_str())
    );

    // Origin-form, as the proxy sees most requests.
    let mut origin = parts(&format!("/search?q=x&token={CUSTOM_PH}"), &[]);
    set.swap(&mut origin, &allow(&["custom"]), &[]).unwrap();
    assert_eq!(
        origin.uri.to_string(),
        format!("/search?q=x&token={CUSTOM_VALUE}")
    );
}

#[test]
fn query_value_with_reserved_characters_is_percent_encoded() {
    let set = CredentialSet::new(vec![of_kind(
        SecretKind::Query,
        cred("odd", CUSTOM_PH, "a&b=c d%"),
    )]);
    let mut p = parts(&format!("/x?key={CUSTOM_PH}&z=1"), &[]);
    set.swap(&mut p, &allow(&["odd"]), &[]).unwrap();
    assert_eq!(p.uri.query(), Some("key=a%26b%3Dc%20d%25&z=1"));
}

#[test]
fn each_kind_is_swapped_only_where_that_kind_is_read() {
    let set = CredentialSet::new(vec![
        of_kind(SecretKind::Bearer, cred("bearer", GITHUB_PH, GITHUB_VALUE)),
        of_kind(SecretKind::Query, cred("query", CUSTOM_PH, CUSTOM_VALUE)),
        of_kind(SecretKind::Basic, cred("basic", LONG_PH, LONG_VALUE)),
        cred("header", SHORT_PH, SHORT_VALUE),
    ]);
    let all = allow(&["bearer", "query", "basic", "header"]);
    let in_basic = |ph: &str| format!("Basic {}", STANDARD.encode(format!("x-access-token:{ph}")));
    let bearer = format!("Bearer {GITHUB_PH}");
    // (URI, headers, the secret and place of a refusal)
    type Case<'a> = (String, Vec<(&'a str, String)>, Option<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        ("/".into(), vec![("authorization", bearer.clone())], None),
        // git over HTTPS sends a token as a Basic password.
        (
            "/".into(),
            vec![("authorization", in_basic(GITHUB_PH))],
            None,
        ),
        ("/".into(), vec![("authorization", in_basic(LONG_PH))], None),
        (format!("/?key={CUSTOM_PH}"), vec![], None),
        ("/".into(), vec![("x-api-key", SHORT_PH.to_owned())], None),
        (
            "/".into(),
            vec![("authorization", SHORT_PH.to_owned())],
            None,
        ),
        // A message text, a title: data the API keeps and may show.
        (
            format!("/post?text={GITHUB_PH}"),
            vec![],
            Some(("bearer", "the query")),
        ),
        (
            "/".into(),
            vec![("x-note", bearer.clone())],
            Some(("bearer", "header x-note")),
        ),
        (
            format!("/?p={LONG_PH}"),
            vec![],
            Some(("basic", "the query")),
        ),
        (
            "/".into(),
            vec![("x-api-key", CUSTOM_PH.to_owned())],
            Some(("query", "header x-api-key")),
        ),
        (
            format!("/?k={SHORT_PH}"),
            vec![],
            Some(("header", "the query")),
        ),
    ];
    for (uri, headers, refused) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let mut p = parts(&uri, &headers);
        let before = format!("{p:?}");
        match (set.swap(&mut p, &all, &[]), refused) {
            (Ok(_), None) => assert_ne!(format!("{p:?}"), before, "{uri} {headers:?}"),
            (Err(err @ SwapError::Misplaced { .. }), Some((secret, place))) => {
                let text = err.to_string();
                assert!(text.contains(&format!("{secret:?}")), "{text}");
                assert!(text.contains(place), "{text}");
                for value in [GITHUB_VALUE, CUSTOM_VALUE, LONG_VALUE, SHORT_VALUE] {
                    assert!(!text.contains(value), "{text}");
                }
                assert_eq!(format!("{p:?}"), before, "a refused request was changed");
                assert!(set.to_fetch(&p, &all).is_err(), "to_fetch agrees");
            }
            (other, _) => panic!("{uri} {headers:?}: {other:?}"),
        }
    }
}

#[test]
fn a_header_secret_bound_to_a_header_is_swapped_there_only() {
    let bound = Credential {
        header: Some(http::HeaderName::from_static("x-api-key")),
        ..cred("custom", CUSTOM_PH, CUSTOM_VALUE)
    };
    let set = CredentialSet::new(vec![bound]);
    let mut p = parts("/", &[("x-api-key", CUSTOM_PH)]);
    set.swap(&mut p, &allow(&["custom"]), &[])
        .expect("its header");
    assert_eq!(values(&p, "x-api-key"), [CUSTOM_VALUE]);
    for (name, value) in [("x-note", CUSTOM_PH), ("authorization", CUSTOM_PH)] {
        let mut p = parts("/", &[(name, value)]);
        match set.swap(&mut p, &allow(&["custom"]), &[]) {
            Err(err @ SwapError::Misplaced { .. }) => {
                assert!(
                    err.to_string().contains("swapped only in header x-api-key"),
                    "{err}"
                );
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn every_value_of_a_repeated_header_is_swapped() {
    let set = set();
    let mut p = parts(
        "https://example.com/",
        &[
            ("x-api-key", CUSTOM_PH),
            ("x-trace", "abc"),
            ("x-api-key", "static"),
            ("x-api-key", &format!("k={CUSTOM_PH};k2={CUSTOM_PH}")),
        ],
    );
    set.swap(&mut p, &allow(&["custom"]), &[]).unwrap();
    assert_eq!(
        values(&p, "x-api-key"),
        vec![
            CUSTOM_VALUE.to_owned(),
            "static".to_owned(),
            format!("k={CUSTOM_VALUE};k2={CUSTOM_VALUE}"),
        ]
    );
    assert_eq!(values(&p, "x-trace"), vec!["abc"]);
    assert!(p.headers.contains_key("x-api-key"));
}

#[test]
fn placeholders_in_finds_all_places() {
    let set = set();
    let basic = STANDARD.encode(format!("u:{SHORT_PH}"));
    let p = parts(
        &format!("https://example.com/p?a={LONG_PH}"),
        &[
            ("authorization", &format!("Basic {basic}")),
            ("x-one", &format!("Bearer {GITHUB_PH}")),
            ("x-two", &format!("{GITHUB_PH},{CUSTOM_PH}")),
        ],
    );
    assert_eq!(
        set.placeholders_in(&p),
        vec!["custom", "deploy", "deploy-admin", "github"]
    );
}

#[test]
fn invalid_header_after_swap_is_an_error_and_changes_nothing() {
    let set = CredentialSet::new(vec![
        cred("bad", CUSTOM_PH, "line\r\nX-Injected: 1"),
        cred("github", GITHUB_PH, GITHUB_VALUE),
    ]);
    let mut p = parts(
        "https://example.com/",
        &[("x-a", GITHUB_PH), ("x-b", CUSTOM_PH)],
    );
    let before = p.headers.clone();
    match set.swap(&mut p, &allow(&["bad", "github"]), &[]) {
        Err(SwapError::InvalidHeader { name }) => assert_eq!(name, "x-b"),
        other => panic!("expected InvalidHeader, got {other:?}"),
    }
    assert_eq!(p.headers, before);
}

#[test]
fn errors_and_debug_never_show_secret_values() {
    let set = set();
    let secrets = [GITHUB_VALUE, CUSTOM_VALUE, SHORT_VALUE, LONG_VALUE];
    let mut shown = vec![format!("{set:?}"), format!("{:?}", set.scrub_pairs())];
    let creds = vec![cred("github", GITHUB_PH, GITHUB_VALUE)];
    shown.push(format!("{creds:?}"));
    shown.push(format!("{:?}", Scrubber::new(set.scrub_pairs())));

    let mut p = parts("/", &[("x-a", CUSTOM_PH)]);
    let err = set.swap(&mut p, &allow(&["github"]), &[]).unwrap_err();
    shown.push(err.to_string());
    shown.push(format!("{err:?}"));
    let bad = CredentialSet::new(vec![cred("bad", CUSTOM_PH, "sec\nret-VALUE")]);
    let err = bad.swap(&mut p, &allow(&["bad"]), &[]).unwrap_err();
    shown.push(err.to_string());
    shown.push(format!("{err:?}"));
    assert!(shown.iter().any(|s| s.contains("custom")), "{shown:?}");
    for text in &shown {
        for secret in secrets.iter().chain(&["ret-VALUE"]) {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
    }
}

#[test]
fn scrub_pairs_cover_every_credential() {
    let pairs = set().scrub_pairs();
    let mut seen: Vec<(String, String)> = pairs
        .iter()
        .map(|(s, p)| {
            (
                String::from_utf8(s.expose().to_vec()).unwrap(),
                String::from_utf8(p.clone()).unwrap(),
            )
        })
        .collect();
    seen.sort();
    let mut expected = vec![
        (GITHUB_VALUE.to_owned(), GITHUB_PH.to_owned()),
        (CUSTOM_VALUE.to_owned(), CUSTOM_PH.to_owned()),
        (SHORT_VALUE.to_owned(), SHORT_PH.to_owned()),
        (LONG_VALUE.to_owned(), LONG_PH.to_owned()),
    ];
    expected.sort();
    assert_eq!(seen, expected);
}

#[test]
fn placeholder_shape_is_checked() {
    assert!(is_valid_placeholder("airlock-ph-github-token"));
    assert!(is_valid_placeholder("a.b_c~d-8"));
    assert!(!is_valid_placeholder("short"));
    assert!(!is_valid_placeholder("has space-123"));
    assert!(!is_valid_placeholder("slash/isnt-ok"));
    assert!(!is_valid_placeholder(&"x".repeat(201)));
    assert!(is_valid_placeholder(&"x".repeat(200)));
    // An invalid placeholder is never matched, so it is never swapped.
    let set = CredentialSet::new(vec![cred("s", "bad ph!", "v")]);
    let p = parts("/", &[("x", "bad ph!")]);
    assert!(set.placeholders_in(&p).is_empty());
}

#[test]
fn duplicate_placeholder_belongs_to_the_first_credential() {
    let set = CredentialSet::new(vec![
        cred("first", CUSTOM_PH, "one-VALUE"),
        cred("second", CUSTOM_PH, "two-VALUE"),
    ]);
    let mut p = parts("/", &[("x", CUSTOM_PH)]);
    assert_eq!(set.placeholders_in(&p), vec!["first"]);
    assert!(matches!(
        set.swap(&mut p, &allow(&["second"]), &[]),
        Err(SwapError::NotAllowed { secret }) if secret == "first"
    ));
    assert_eq!(p.headers.get("x").unwrap(), CUSTOM_PH);
}

// ---- scrubbing ----

const SECRET20: &[u8] = b"S3cr3t-0123456789xyz";
const PH20: &[u8] = b"airlock-ph-s20";

fn scrubber(pairs: &[(&[u8], &[u8])]) -> Scrubber {
    Scrubber::new(
        pairs
            .iter()
            .map(|(s, p)| (Secret::new(s.to_vec()), p.to_vec()))
            .collect(),
    )
}

/// A body that yields the given frames, always ready.
struct Frames(VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

fn chunks(parts: &[&[u8]]) -> Frames {
    Frames(
        parts
            .iter()
            .map(|c| Frame::data(Bytes::copy_from_slice(c)))
            .collect(),
    )
}

/// Polls a body that never waits to its end.
fn drain<B: Body<Data = Bytes> + Unpin>(mut body: B) -> (Vec<Bytes>, Option<HeaderMap>)
where
    B::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut data = Vec::new();
    let mut trailers = None;
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(d) => {
                    assert!(trailers.is_none(), "data after trailers");
                    assert!(!d.is_empty(), "empty data frame emitted");
                    data.push(d);
                }
                Err(f) => trailers = Some(f.into_trailers().unwrap()),
            },
            Poll::Ready(Some(Err(e))) => panic!("body error {e:?}"),
            Poll::Ready(None) => break,
            Poll::Pending => panic!("body waited with nothing to wait for"),
        }
    }
    assert!(body.is_end_stream());
    (data, trailers)
}

fn scrub_all(s: &Scrubber, pieces: &[&[u8]]) -> Vec<u8> {
    drain(s.wrap(chunks(pieces))).0.concat()
}

/// What a body that never waits sends before it ends or fails, and the
/// error, if any.
fn polled_to_the_end<B>(body: &mut B) -> (Vec<u8>, Option<B::Error>)
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut sent = Vec::new();
    loop {
        match Pin::new(&mut *body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    sent.extend_from_slice(&data);
                }
            }
            Poll::Ready(Some(Err(e))) => return (sent, Some(e)),
            Poll::Ready(None) => return (sent, None),
            Poll::Pending => panic!("body waited with nothing to wait for"),
        }
    }
}

/// What a scrubbed body sends before it ends, and the error it ends
/// with, if any.
fn sent_until_the_end(s: &Scrubber, pieces: &[&[u8]]) -> (Vec<u8>, Option<ScrubBodyError>) {
    let mut body = s.wrap(chunks(pieces));
    let (sent, error) = polled_to_the_end(&mut body);
    if error.is_some() {
        let mut cx = Context::from_waker(Waker::noop());
        assert!(
            matches!(Pin::new(&mut body).poll_frame(&mut cx), Poll::Ready(None)),
            "nothing after the error"
        );
    }
    (sent, error)
}

/// Oracle for a single secret: plain non-overlapping leftmost replacement.
fn replaced(input: &[u8], secret: &[u8], ph: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        if input[i..].starts_with(secret) {
            out.extend_from_slice(ph);
            i += secret.len();
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    out
}

fn body_with_secret() -> Vec<u8> {
    [b"data: {\"echo\":\"".as_slice(), SECRET20, b"\"}\n\n"].concat()
}

#[test]
fn secret_split_across_two_chunks_at_every_position() {
    let s = scrubber(&[(SECRET20, PH20)]);
    let input = body_with_secret();
    let expected = replaced(&input, SECRET20, PH20);
    assert_ne!(expected, input);
    for cut in 0..=input.len() {
        let out = scrub_all(&s, &[&input[..cut], &input[cut..]]);
        assert_eq!(out, expected, "cut at {cut}");
    }
}

#[test]
fn encoded_forms_of_a_secret_are_scrubbed_across_chunks() {
    let secret: &[u8] = b"k/9\"+x=Q";
    let s = scrubber(&[(secret, PH20)]);
    // serde_json's escaping of the secret, then Airlock's own query encoding.
    let input =
        [b"{\"auth\":\"k/9\\\"+x=Q\",\"url\":\"/q?key=k%2F9%22%2Bx%3DQ\"}".as_slice()].concat();
    let expected = [
        b"{\"auth\":\"".as_slice(),
        PH20,
        b"\",\"url\":\"/q?key=",
        PH20,
        b"\"}",
    ]
    .concat();
    for cut in 0..=input.len() {
        let out = scrub_all(&s, &[&input[..cut], &input[cut..]]);
        assert_eq!(out, expected, "cut at {cut}");
    }
}

/// Whether eight bytes of `secret` decode from the Basic value quoted in
/// `text` (a JSON document holding `"Basic …"`).
fn basic_value_gives_away(text: &str, secret: &[u8]) -> bool {
    let value = text
        .split("Basic ")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the value");
    let decoded = STANDARD_NO_PAD
        .decode(value.trim_end_matches('='))
        .unwrap_or_default();
    decoded
        .windows(8)
        .any(|w| secret.windows(8).any(|s| s == w))
}

/// A Basic value kept in a request log and read back as JSON: the
/// base64 around the secret is escaped as the serializer escapes `+` and
/// `/`, and is still found, at each alignment the user name can give it.
#[test]
fn base64_of_a_secret_is_scrubbed_where_an_encoder_escaped_it() {
    // '~' and '?' end a 3-byte group in 6 bits of 62 and 63: `+` and `/`.
    let secret: &[u8] = b"a~b~c~d?e?f?g~h~i~jk";
    let s = scrubber(&[(secret, PH20)]);
    for user in ["u", "us", "use"] {
        let basic = STANDARD.encode([format!("{user}:").as_bytes(), secret].concat());
        assert!(basic.contains(['+', '/']), "{basic}");
        for (escaped, how) in [
            (basic.replace('+', "\\u002B"), ".NET's JSON"),
            (basic.replace('/', "\\/"), "PHP's JSON"),
            (basic.replace('+', "%2B").replace('/', "%2F"), "a URL"),
        ] {
            let input = format!("{{\"authorization\":\"Basic {escaped}\"}}");
            for cut in [0, input.len() / 2, input.len()] {
                let out = scrub_all(&s, &[&input.as_bytes()[..cut], &input.as_bytes()[cut..]]);
                let text = String::from_utf8(out).expect("ascii");
                let unescaped = text
                    .replace("\\u002B", "+")
                    .replace("\\/", "/")
                    .replace("%2B", "+")
                    .replace("%2F", "/");
                assert!(
                    !basic_value_gives_away(&unescaped, secret),
                    "{how}, {user}, cut at {cut}: eight bytes of the secret decode from {text}"
                );
            }
        }
    }
}

#[test]
fn secret_split_across_three_chunks_at_every_position() {
    let s = scrubber(&[(SECRET20, PH20)]);
    let input = body_with_secret();
    let expected = replaced(&input, SECRET20, PH20);
    for a in 0..=input.len() {
        for b in a..=input.len() {
            let out = scrub_all(&s, &[&input[..a], &input[a..b], &input[b..]]);
            assert_eq!(out, expected, "cuts at {a},{b}");
        }
    }
}

#[test]
fn secret_split_into_n_chunks() {
    let s = scrubber(&[(SECRET20, PH20)]);
    let input = body_with_secret();
    let expected = replaced(&input, SECRET20, PH20);
    for size in 1..=SECRET20.len() + 1 {
        let pieces: Vec<&[u8]> = input.chunks(size).collect();
        assert_eq!(scrub_all(&s, &pieces), expected, "chunk size {size}");
    }
}

#[test]
fn secret_at_the_very_end_and_start() {
    let s = scrubber(&[(SECRET20, PH20)]);
    let at_end = [b"token=".as_slice(), SECRET20].concat();
    assert_eq!(
        scrub_all(&s, &[&at_end]),
        [b"token=".as_slice(), PH20].concat()
    );
    assert_eq!(scrub_all(&s, &[SECRET20]), PH20);
    let (_, tail) = at_end.split_at(10);
    assert_eq!(
        scrub_all(&s, &[&at_end[..10], tail]),
        [b"token=".as_slice(), PH20].concat()
    );
}

#[test]
fn repeated_and_self_overlapping_occurrences() {
    let s = scrubber(&[(SECRET20, PH20)]);
    let twice = [SECRET20, SECRET20, b"-", SECRET20].concat();
    let expected = [PH20, PH20, b"-", PH20].concat();
    for size in [1, 3, 7, 19, 20, 21, 64] {
        let pieces: Vec<&[u8]> = twice.chunks(size).collect();
        assert_eq!(scrub_all(&s, &pieces), expected, "chunk size {size}");
    }

    // A secret whose own prefix repeats: a scanner that restarts after the
    // failed attempt would miss the real occurrence.
    let secret: &[u8] = b"aaaaaaaaab";
    let s = scrubber(&[(secret, b"PH")]);
    let input = b"aaaaaaaaaaaaabaaaab;";
    for size in 1..=input.len() {
        let pieces: Vec<&[u8]> = input.chunks(size).collect();
        assert_eq!(scrub_all(&s, &pieces), b"aaaaPHaaaab;", "chunk size {size}");
    }
}

#[test]
fn two_secrets_and_longest_wins() {
    let s = scrubber(&[
        (b"alpha-secret-1".as_slice(), b"PH-A".as_slice()),
        (b"beta-secret-22", b"PH-B"),
        (b"alpha-secret-1-extended", b"PH-AX"),
    ]);
    let input = b"x alpha-secret-1 y beta-secret-22 z alpha-secret-1-extended alpha-secret-1-ext\n";
    let expected = b"x PH-A y PH-B z PH-AX PH-A-ext\n".to_vec();
    for size in 1..=input.len() {
        let pieces: Vec<&[u8]> = input.chunks(size).collect();
        assert_eq!(scrub_all(&s, &pieces), expected, "chunk size {size}");
    }
}

#[test]
fn overlapping_different_secrets_do_not_hide_a_later_one() {
    // The first match ends inside an occurrence of the second secret that
    // begins before it; the next full occurrence must still be found.
    let s = scrubber(&[(b"zab".as_slice(), b"<Z>".as_slice()), (b"abab", b"<X>")]);
    assert_eq!(scrub_all(&s, &[b"zababab"]), b"<Z><X>");
    assert_eq!(scrub_all(&s, &[b"za", b"bab", b"ab"]), b"<Z><X>");
}

/// An upstream that cuts its answer at a byte the agent chooses (a log
/// read with a byte limit) must not give it all of a secret but its last
/// bytes: such an end is withheld, and the body ends with an error.
#[test]
fn a_body_that_may_end_inside_a_secret_ends_with_an_error_before_it() {
    let s = scrubber(&[(SECRET20, PH20)]);
    let partial = &SECRET20[..SECRET20.len() - 1];
    let input = [b"head ".as_slice(), partial].concat();
    for cut in 0..=input.len() {
        let (sent, error) = sent_until_the_end(&s, &[&input[..cut], &input[cut..]]);
        assert!(
            matches!(error, Some(ScrubBodyError::EndsInsideASecret)),
            "cut {cut}: {error:?}"
        );
        assert!(b"head ".starts_with(&sent), "cut {cut}: {sent:?}");
    }
    // Trailers end a body too.
    let body = Frames(
        [
            Frame::data(Bytes::from_static(b"data ")),
            Frame::data(Bytes::copy_from_slice(&SECRET20[..4])),
            Frame::trailers(HeaderMap::new()),
        ]
        .into(),
    );
    let mut body = s.wrap(body);
    let mut cx = Context::from_waker(Waker::noop());
    let mut sent = Vec::new();
    let error = loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                assert!(frame.is_data(), "no trailers after a withheld end");
                sent.extend_from_slice(&frame.into_data().unwrap());
            }
            Poll::Ready(Some(Err(e))) => break Some(e),
            _ => break None,
        }
    };
    assert!(matches!(error, Some(ScrubBodyError::EndsInsideASecret)));
    assert_eq!(sent, b"data ");

    // What cannot be a secret cut short goes, whole, at the end: three
    // first bytes, the start followed by bytes no key is made of, or far
    // enough from the end for the whole secret to fit, a whole secret,
    // and held bytes that turn out not to be a secret.
    for ok in [
        [b"head ".as_slice(), &SECRET20[..3]].concat(),
        [b"{\"k\":\"".as_slice(), &SECRET20[..9], b"\"}"].concat(),
        [b"head ".as_slice(), &SECRET20[..9], b" and then some"].concat(),
        [b"head ".as_slice(), &SECRET20[..9], b"\n"].concat(),
    ] {
        let (sent, error) = sent_until_the_end(&s, &[&ok]);
        assert!(error.is_none(), "{:?}", String::from_utf8_lossy(&ok));
        assert_eq!(sent, ok);
    }
    let whole = [b"head ".as_slice(), SECRET20].concat();
    let (sent, error) = sent_until_the_end(&s, &[&whole]);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(sent, [b"head ".as_slice(), PH20].concat());
    let (data, _) = drain(s.wrap(chunks(&[b"xx S3cr", b"ap and more"])));
    assert_eq!(data.concat(), b"xx S3crap and more");
}

/// A header value, sent whole, that may end inside a secret is cut
/// before it; a whole secret is replaced, and a secret holding the cut is
/// cut with it.
#[test]
fn a_header_value_that_may_end_inside_a_secret_is_cut_before_it() {
    let s = scrubber(&[(SECRET20, PH20), (b"tok-S3cr", b"PH-T")]);
    let value = |bytes: &[u8]| HeaderValue::from_bytes(bytes).unwrap();
    let cut = [b"invalid token ".as_slice(), &SECRET20[..12]].concat();
    assert_eq!(
        s.scrub_header_value(&value(&cut)).unwrap(),
        "invalid token "
    );
    let whole = [b"invalid token ".as_slice(), SECRET20].concat();
    assert_eq!(
        s.scrub_header_value(&value(&whole)).unwrap().as_bytes(),
        [b"invalid token ".as_slice(), PH20].concat()
    );
    // "tok-S3cr" is whole, and SECRET20 may begin inside it.
    assert_eq!(
        s.scrub_header_value(&value(b"see tok-S3cr3t-01")).unwrap(),
        "see "
    );
    assert_eq!(
        s.scrub_header_value(&value(b"see tok-S3cr\"")).unwrap(),
        "see PH-T\""
    );
    assert!(s.scrub_header_value(&value(b"nothing here")).is_none());
}

/// Whether an end is withheld must not tell an agent that writes it
/// whether its guess goes on as a secret does: only a form's first four
/// bytes, its length and the bytes keys are made of decide.
#[test]
fn whether_an_end_is_withheld_does_not_tell_what_follows_a_secrets_first_bytes() {
    let s = scrubber(&[(SECRET20, PH20)]);
    for len in 5..SECRET20.len() {
        let guessed = &SECRET20[..len];
        let mut missed = guessed.to_vec();
        missed[len - 1] = if missed[len - 1] == b'Q' { b'R' } else { b'Q' };
        for end in [guessed, &missed] {
            let (sent, error) = sent_until_the_end(&s, &[b"log: ", end]);
            assert!(error.is_some(), "{len} bytes, guessed {}", end == guessed);
            assert_eq!(sent, b"log: ");
        }
    }
}

#[test]
fn empty_chunks_are_harmless() {
    let s = scrubber(&[(SECRET20, PH20)]);
    let out = scrub_all(
        &s,
        &[
            b"",
            b"a ",
            b"",
            &SECRET20[..5],
            b"",
            &SECRET20[5..],
            b"",
            b" b",
            b"",
        ],
    );
    assert_eq!(out, [b"a ".as_slice(), PH20, b" b"].concat());
    assert_eq!(scrub_all(&s, &[b"", b""]), b"");
    assert_eq!(scrub_all(&s, &[]), b"");
}

#[test]
fn trailers_are_scrubbed_and_come_after_held_bytes() {
    let s = scrubber(&[(SECRET20, PH20)]);
    let mut trailers = HeaderMap::new();
    trailers.insert(
        "x-echo",
        HeaderValue::from_bytes(&[b"v=".as_slice(), SECRET20].concat()).unwrap(),
    );
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    // Too short to be withheld as a secret cut short.
    let partial = &SECRET20[..3];
    let body = Frames(
        [
            Frame::data(Bytes::from_static(b"data ")),
            Frame::data(Bytes::copy_from_slice(partial)),
            Frame::trailers(trailers),
        ]
        .into(),
    );
    let (data, trailers) = drain(s.wrap(body));
    assert_eq!(data.concat(), [b"data ".as_slice(), partial].concat());
    let trailers = trailers.expect("trailers passed through");
    assert_eq!(
        trailers.get("x-echo").unwrap().as_bytes(),
        [b"v=".as_slice(), PH20].concat()
    );
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
}

// ---- gRPC answers, message by message ----

fn grpc_frame(flags: u8, message: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// The messages of a gRPC body, each checked against its prefix.
fn grpc_messages(mut body: &[u8]) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    while !body.is_empty() {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        assert!(
            body.len() >= 5 + len,
            "a message's prefix says more than follows"
        );
        messages.push(body[5..5 + len].to_vec());
        body = &body[5 + len..];
    }
    messages
}

static GRPC_BUDGET: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

fn budget_to_spare(_: usize) -> Option<tokio::sync::SemaphorePermit<'static>> {
    GRPC_BUDGET.try_acquire().ok()
}

/// Polls a gRPC scrubbing body to its end or its first error.
fn drain_grpc(
    body: impl Body<Data = Bytes, Error = Infallible> + Unpin,
) -> Result<(Vec<u8>, Option<HeaderMap>), GrpcScrubError> {
    drain_grpc_within(body, budget_to_spare)
}

fn drain_grpc_within(
    body: impl Body<Data = Bytes, Error = Infallible> + Unpin,
    hold: Hold,
) -> Result<(Vec<u8>, Option<HeaderMap>), GrpcScrubError> {
    let mut body = GrpcScrubBody::new(body, &scrubber(&[(SECRET20, PH20)]), hold);
    let mut cx = Context::from_waker(Waker::noop());
    let (mut data, mut trailers) = (Vec::new(), None);
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = Some(f.into_trailers().unwrap()),
            },
            Poll::Ready(Some(Err(e))) => return Err(e),
            Poll::Ready(None) => break,
            Poll::Pending => panic!("body waited with nothing to wait for"),
        }
    }
    assert!(body.is_end_stream());
    Ok((data, trailers))
}

#[test]
fn grpc_messages_are_scrubbed_whole_and_sent_with_their_new_lengths() {
    let with_secret = [b"token=".as_slice(), SECRET20, b";"].concat();
    let body = [
        grpc_frame(0, b"first"),
        grpc_frame(0, &with_secret),
        grpc_frame(0, b""),
    ]
    .concat();
    // Cut anywhere: in a prefix, in a message, in the secret.
    for cut in 0..=body.len() {
        for second_cut in cut..=body.len() {
            let (data, _) = drain_grpc(chunks(&[
                &body[..cut],
                &body[cut..second_cut],
                &body[second_cut..],
            ]))
            .expect("scrubbed");
            assert_eq!(
                grpc_messages(&data),
                [
                    b"first".to_vec(),
                    [b"token=".as_slice(), PH20, b";"].concat(),
                    Vec::new()
                ],
                "cut at {cut} and {second_cut}"
            );
        }
    }
}

#[test]
fn only_grpc_s_binary_framing_is_read_as_messages() {
    for (content_type, framed) in [
        ("application/grpc", true),
        ("application/grpc+proto", true),
        ("Application/GRPC-Web+proto", true),
        ("application/grpc-web-text", false),
        ("application/json", false),
    ] {
        let headers = crate::proxy::header_map(&[("content-type", content_type)]);
        assert_eq!(is_grpc(&headers), framed, "{content_type}");
    }
    assert!(!is_grpc(&HeaderMap::new()));
}

#[test]
fn grpc_trailers_are_scrubbed_and_a_bodiless_answer_ends_at_once() {
    let mut trailers = HeaderMap::new();
    trailers.insert(
        "grpc-message",
        HeaderValue::from_bytes(&[b"bad key ".as_slice(), SECRET20].concat()).unwrap(),
    );
    let body = Frames(
        [
            Frame::data(Bytes::from(grpc_frame(0, b"ok"))),
            Frame::trailers(trailers),
        ]
        .into(),
    );
    let (data, trailers) = drain_grpc(body).expect("scrubbed");
    assert_eq!(grpc_messages(&data), [b"ok".to_vec()]);
    assert_eq!(
        trailers
            .expect("trailers")
            .get("grpc-message")
            .unwrap()
            .as_bytes(),
        [b"bad key ".as_slice(), PH20].concat()
    );
    // A status in the head alone ("trailers-only"): the head must end the
    // stream, so the body says at once that it has nothing.
    let empty = GrpcScrubBody::new(
        http_body_util::Empty::<Bytes>::new(),
        &scrubber(&[]),
        budget_to_spare,
    );
    assert!(empty.is_end_stream());
}

#[test]
fn a_grpc_message_that_cannot_be_read_whole_ends_the_answer_with_an_error() {
    let compressed = grpc_frame(COMPRESSED_FLAG, SECRET20);
    assert!(matches!(
        drain_grpc(chunks(&[&compressed])),
        Err(GrpcScrubError::Compressed)
    ));
    let mut too_long = vec![0];
    too_long.extend_from_slice(&(GRPC_MESSAGE_MAX as u32 + 1).to_be_bytes());
    assert!(matches!(
        drain_grpc(chunks(&[&too_long])),
        Err(GrpcScrubError::TooLarge { .. })
    ));
    // A secret cut between messages cannot be replaced in either, even
    // when a message between them holds only a piece of it. A message
    // that ends in three of its first bytes goes on; the next, with the
    // rest, is the split. One that ends in more may end inside it, and
    // ends the call whatever follows.
    let (head, tail) = SECRET20.split_at(3);
    let (middle, tail) = tail.split_at(3);
    for (messages, split) in [
        (
            vec![
                grpc_frame(0, &[b"a".as_slice(), head].concat()),
                grpc_frame(0, &[middle, tail].concat()),
            ],
            true,
        ),
        (
            vec![
                grpc_frame(0, head),
                grpc_frame(0, middle),
                grpc_frame(0, &[tail, b"z"].concat()),
            ],
            false,
        ),
    ] {
        let pieces: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let error = drain_grpc(chunks(&pieces)).err();
        match split {
            true => assert!(matches!(error, Some(GrpcScrubError::Split)), "{error:?}"),
            false => assert!(
                matches!(error, Some(GrpcScrubError::EndsInsideASecret)),
                "{error:?}"
            ),
        }
    }
    // Its pieces apart from each other, in messages of their own, are not
    // the secret.
    let (data, _) = drain_grpc(chunks(&[
        &grpc_frame(0, head),
        &grpc_frame(0, b"-"),
        &grpc_frame(0, tail),
    ]))
    .expect("no secret whole");
    assert_eq!(grpc_messages(&data).len(), 3);
    // A large message is waited for only within the daemon's budget.
    let large = grpc_frame(0, &vec![b'x'; 100 * 1024]);
    let (head, rest) = large.split_at(1000);
    let spent: Hold = |_| None;
    assert!(matches!(
        drain_grpc_within(chunks(&[head, rest]), spent),
        Err(GrpcScrubError::BudgetSpent { .. })
    ));
    let (data, _) = drain_grpc(chunks(&[head, rest, head, rest])).expect("within the budget");
    assert_eq!(
        grpc_messages(&data).len(),
        2,
        "the budget's share is given back"
    );
    let whole = grpc_frame(0, &[b"a".as_slice(), SECRET20].concat());
    for cut in 1..whole.len() {
        assert!(
            matches!(
                drain_grpc(chunks(&[&whole[..cut]])),
                Err(GrpcScrubError::CutShort)
            ),
            "cut at {cut}"
        );
    }
}

#[test]
fn header_values_are_scrubbed() {
    let s = scrubber(&[(SECRET20, PH20)]);
    let mut with = HeaderValue::from_bytes(&[b"Bearer ".as_slice(), SECRET20].concat()).unwrap();
    with.set_sensitive(true);
    let new = s.scrub_header_value(&with).expect("changed");
    assert_eq!(new.as_bytes(), [b"Bearer ".as_slice(), PH20].concat());
    assert!(new.is_sensitive());
    assert!(
        s.scrub_header_value(&HeaderValue::from_static("S3cr3t-01 no"))
            .is_none()
    );
    assert!(
        s.scrub_header_value(&HeaderValue::from_static("nothing"))
            .is_none()
    );
}

#[test]
fn chunk_without_secret_passes_through_without_copy() {
    let s = scrubber(&[(SECRET20, PH20)]);
    let line = Bytes::from_static(b"no candidates here at all: 0123\n");
    let ptr = line.as_ptr();
    let (data, _) = drain(s.wrap(Frames([Frame::data(line)].into())));
    assert_eq!(data.len(), 1, "a piece ending in a newline goes whole");
    assert_eq!(data[0].as_ptr(), ptr, "chunk was copied");

    // Without a newline at its end, the chunk goes less its tail, still
    // uncopied, and the next goes after the tail, uncopied too.
    let first = Bytes::from_static(b"0123456789 0123456789 0123456789 0123456789 0123456789");
    let second = Bytes::from_static(b"abcdefghij abcdefghij abcdefghij abcdefghij abcdefghij");
    let (ptr1, ptr2) = (first.as_ptr(), second.as_ptr());
    let (data, _) = drain(s.wrap(Frames(
        [Frame::data(first.clone()), Frame::data(second.clone())].into(),
    )));
    assert_eq!(data.concat(), [first, second].concat());
    assert_eq!(data[0].as_ptr(), ptr1, "first chunk was copied");
    assert_eq!(data[2].as_ptr(), ptr2, "second chunk was copied");

    let empty = Scrubber::new(Vec::new());
    assert!(empty.is_empty());
    assert!(!s.is_empty());
    let with_secret = Bytes::copy_from_slice(&body_with_secret());
    let ptr = with_secret.as_ptr();
    let (data, _) = drain(empty.wrap(Frames([Frame::data(with_secret)].into())));
    assert_eq!(data[0].as_ptr(), ptr);
}

/// Bodies cut into pieces at random, by several secrets of which one
/// holds a newline, scrub to what the whole body scrubs to.
#[test]
fn any_cutting_scrubs_as_the_whole_body_does() {
    let secrets: [(&[u8], &[u8]); 3] = [
        (SECRET20, PH20),
        (b"line-one\nline-two", b"PH-NL"),
        (b"S3cr3t-01", b"PH-SHORT"),
    ];
    let s = scrubber(&secrets);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let bits: [&[u8]; 6] = [b"\n", b"x", b"line-", b"S3cr", b"%2F", b"one\n"];
    let mut cut_short = 0;
    for case in 0..3000 {
        let mut input = Vec::new();
        for _ in 0..next(12) {
            match next(3) {
                0 => input.extend_from_slice(secrets[next(3)].0),
                1 => {
                    let secret = secrets[next(3)].0;
                    input.extend_from_slice(&secret[..1 + next(secret.len())]);
                }
                _ => input.extend_from_slice(bits[next(bits.len())]),
            }
        }
        let whole = s
            .scrub_bytes(&input)
            .map_or_else(|| input.clone(), |b| b.to_vec());
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < input.len() {
            let end = (at + next(90)).min(input.len());
            pieces.push(&input[at..end]);
            at = end;
        }
        // A body that may end inside a secret sends what comes before
        // its end, then an error, however it is cut.
        let (sent, error) = sent_until_the_end(&s, &pieces);
        let (sent_whole, error_whole) = sent_until_the_end(&s, &[&input]);
        let what = || {
            format!(
                "case {case}: {:?} in {} pieces",
                String::from_utf8_lossy(&input),
                pieces.len()
            )
        };
        assert_eq!(error.is_some(), error_whole.is_some(), "{}", what());
        assert_eq!(sent, sent_whole, "{}", what());
        if error.is_none() {
            assert_eq!(sent, whole, "{}", what());
        } else {
            cut_short += 1;
            assert!(whole.starts_with(&sent), "{}", what());
        }
    }
    assert!(
        (100..2900).contains(&cut_short),
        "both kinds of end were tried: {cut_short} cut short"
    );
}

/// A body fed from a channel, as a proxied upstream response would be.
struct ChannelBody(tokio::sync::mpsc::UnboundedReceiver<Frame<Bytes>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

fn poll_data<B: Body<Data = Bytes> + Unpin>(body: &mut B) -> Poll<Option<Bytes>> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(body).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(frame.into_data().ok().unwrap())),
        Poll::Ready(Some(Err(_))) => panic!("body error"),
        Poll::Ready(None) => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    }
}

/// Polls a gRPC scrubbing body to its end or its first error, keeping
/// what it sent before the error.
fn sent_before_any_error(body: Frames) -> (Vec<u8>, Option<GrpcScrubError>) {
    polled_to_the_end(&mut GrpcScrubBody::new(
        body,
        &scrubber(&[(SECRET20, PH20)]),
        budget_to_spare,
    ))
}

/// A message that may end inside a secret ends the call before it goes:
/// whether the next message goes on with the rest (a split) or not (a
/// secret cut short), no part of the secret may reach the agent.
#[test]
fn a_grpc_message_that_may_end_inside_a_secret_ends_the_call_before_it_goes() {
    let (head, tail) = SECRET20.split_at(SECRET20.len() - 1);
    let (first, rest) = head.split_at(5);
    let (second, third) = rest.split_at(1);
    for messages in [
        // All of the secret but its last byte, then the rest.
        vec![
            grpc_frame(0, b"ok"),
            grpc_frame(0, &[b"a".as_slice(), head].concat()),
            grpc_frame(0, &[tail, b"z"].concat()),
        ],
        // Over several messages, one of them a single byte.
        vec![
            grpc_frame(0, b"ok"),
            grpc_frame(0, first),
            grpc_frame(0, second),
            grpc_frame(0, b""),
            grpc_frame(0, third),
            grpc_frame(0, tail),
        ],
        // All of it but its last byte, and nothing after.
        vec![
            grpc_frame(0, b"ok"),
            grpc_frame(0, &[b"a".as_slice(), head].concat()),
        ],
    ] {
        let pieces: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let (sent, error) = sent_before_any_error(chunks(&pieces));
        assert!(
            matches!(error, Some(GrpcScrubError::EndsInsideASecret)),
            "{error:?}"
        );
        assert_eq!(
            grpc_messages(&sent),
            [b"ok".to_vec()],
            "only what came before the secret"
        );
    }

    // A message that cannot end inside a secret goes at once: its start
    // is followed by bytes no key is made of.
    let s = scrubber(&[(SECRET20, PH20)]);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut body = GrpcScrubBody::new(ChannelBody(rx), &s, budget_to_spare);
    let quoted = [b"{\"k\":\"".as_slice(), &SECRET20[..6], b"\"}"].concat();
    for message in [b"plain".as_slice(), &quoted] {
        tx.send(Frame::data(Bytes::from(grpc_frame(0, message))))
            .unwrap();
        assert_eq!(
            poll_data(&mut body),
            Poll::Ready(Some(Bytes::from(grpc_frame(0, message))))
        );
    }
}

#[test]
fn chunks_ending_in_a_newline_stream_without_waiting_for_the_next() {
    let s = scrubber(&[(SECRET20, PH20)]);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut body = s.wrap(ChannelBody(rx));

    tx.send(Frame::data(Bytes::from_static(b"event: a\ndata: 1\n\n")))
        .unwrap();
    assert_eq!(
        poll_data(&mut body),
        Poll::Ready(Some(Bytes::from_static(b"event: a\ndata: 1\n\n")))
    );
    assert_eq!(poll_data(&mut body), Poll::Pending, "nothing more was sent");

    // A chunk ending in what may be a secret's start: its lines go at once.
    tx.send(Frame::data(Bytes::copy_from_slice(
        &[b"data: 2\ndata: ".as_slice(), &SECRET20[..6]].concat(),
    )))
    .unwrap();
    assert_eq!(
        poll_data(&mut body),
        Poll::Ready(Some(Bytes::from_static(b"data: 2\n")))
    );
    assert_eq!(poll_data(&mut body), Poll::Pending);

    // The rest of the secret, then the line's end: the line goes, its
    // secret replaced.
    tx.send(Frame::data(Bytes::copy_from_slice(&SECRET20[6..])))
        .unwrap();
    tx.send(Frame::data(Bytes::from_static(b"\n\n"))).unwrap();
    let mut sent = Vec::new();
    while let Poll::Ready(Some(data)) = poll_data(&mut body) {
        sent.extend_from_slice(&data);
    }
    assert_eq!(sent, [b"data: ".as_slice(), PH20, b"\n\n"].concat());
    drop(tx);
    assert_eq!(poll_data(&mut body), Poll::Ready(None));
    assert!(body.is_end_stream());
}

/// An agent that writes the end of a streamed answer (a log it follows)
/// and sees when bytes arrive must not learn from what is held whether
/// its guess begins a secret: the same bytes are held, and the same go
/// at once, whether the tail is a secret's start or not.
#[test]
fn what_is_held_does_not_tell_whether_it_begins_a_secret() {
    let s = scrubber(&[(SECRET20, PH20)]);
    let sent_at_once = |tail: &[u8]| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut body = s.wrap(ChannelBody(rx));
        let piece = [b"log line\nguess ".as_slice(), tail].concat();
        tx.send(Frame::data(Bytes::from(piece))).unwrap();
        let mut sent = Vec::new();
        while let Poll::Ready(Some(data)) = poll_data(&mut body) {
            sent.extend_from_slice(&data);
        }
        sent
    };
    for len in 1..SECRET20.len() {
        let guessed = sent_at_once(&SECRET20[..len]);
        let missed = sent_at_once(&b"Zzzzzzzzzzzzzzzzzzzzzzzzz"[..len]);
        assert_eq!(guessed, b"log line\n", "{len} bytes of the secret");
        assert_eq!(missed, b"log line\n", "{len} bytes of no secret");
    }
    // Past the longest form, what follows the newline goes but for the
    // last `carry` bytes, whatever they are.
    let long = [b"x".repeat(s.carry() + 7).as_slice(), &SECRET20[..10]].concat();
    assert_eq!(sent_at_once(&long).len(), b"log line\nguess ".len() + 17);
}

#[tokio::test]
async fn collects_through_http_body_util() {
    let s = scrubber(&[(SECRET20, PH20), (b"other-secret-value", b"PH-O")]);
    let input = [
        b"{\"a\":\"".as_slice(),
        SECRET20,
        b"\",\"b\":\"other-secret-value\"}",
    ]
    .concat();
    let pieces: Vec<&[u8]> = input.chunks(5).collect();
    let collected = s.wrap(chunks(&pieces)).collect().await.unwrap().to_bytes();
    assert_eq!(
        collected.as_ref(),
        [b"{\"a\":\"".as_slice(), PH20, b"\",\"b\":\"PH-O\"}"].concat()
    );
}

#[test]
fn large_body_throughput() {
    let s = scrubber(&[
        (SECRET20, PH20),
        (
            b"test-live-REALcustom9876".as_slice(),
            b"ph-airlock-xyz123".as_slice(),
        ),
    ]);
    // Text in which the secrets' first bytes are common, so the slow path runs.
    let line = b"data: {\"msg\":\"the quick brown fox jumps over the lazy dog S3 sk\"}\n";
    let mut input = Vec::with_capacity(1 << 20);
    while input.len() < (1 << 20) {
        input.extend_from_slice(line);
    }
    input.truncate(1 << 20);
    input[500_000..500_020].copy_from_slice(SECRET20);
    let pieces: Vec<&[u8]> = input.chunks(16 * 1024).collect();

    let start = Instant::now();
    let out = scrub_all(&s, &pieces);
    let elapsed = start.elapsed();
    assert_eq!(out, replaced(&input, SECRET20, PH20));
    println!(
        "scrubbed 1 MiB in {elapsed:?}: {:.0} MiB/s",
        1.0 / elapsed.as_secs_f64()
    );
}

const AWS_PH: &str = "AKIDAIRLOCKPLACEHOLD";
const AWS_ID: &str = "AKIDEXAMPLEREALKEY01";
const AWS_SECRET: &str = "REALsecretAccessKey/0123+abc";

fn aws_set() -> CredentialSet {
    let mut aws = cred("aws", AWS_PH, &format!("{AWS_ID}:{AWS_SECRET}"));
    aws.kind = crate::vault::SecretKind::AwsSigv4;
    CredentialSet::new(vec![aws, cred("github", GITHUB_PH, GITHUB_VALUE)])
}

fn aws_auth() -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential={AWS_PH}/20261125/us-east-1/sts/aws4_request, SignedHeaders=host;x-amz-date, Signature=00"
    )
}

#[test]
fn an_aws_placeholder_is_left_for_re_signing_never_pasted_over() {
    let set = aws_set();
    let mut p = parts(
        "https://sts.amazonaws.com/",
        &[
            ("authorization", &aws_auth()),
            ("x-amz-date", "20261125T101500Z"),
        ],
    );
    let swapped = set.swap(&mut p, &allow(&["aws"]), &[]).unwrap();
    assert_eq!(swapped.injected, vec!["aws"]);
    let resign = swapped.resign.expect("to re-sign");
    assert_eq!(resign.placeholder, AWS_PH);
    assert_eq!(resign.key.secret_access_key.expose(), AWS_SECRET.as_bytes());
    assert_eq!(values(&p, "authorization"), vec![aws_auth()]);
}

#[test]
fn an_aws_placeholder_anywhere_but_the_signature_is_refused() {
    let set = aws_set();
    let misplaced = [
        // A presigned URL would hand the agent a URL signed with the real key.
        parts(
            &format!("https://s3.amazonaws.com/b/k?X-Amz-Credential={AWS_PH}%2F20261125"),
            &[],
        ),
        parts("https://sts.amazonaws.com/", &[("x-note", AWS_PH)]),
        parts(
            "https://sts.amazonaws.com/",
            &[("authorization", &format!("Bearer {AWS_PH}"))],
        ),
        parts(
            "https://sts.amazonaws.com/",
            &[(
                "authorization",
                &format!("Basic {}", STANDARD.encode(format!("{AWS_PH}:x"))),
            )],
        ),
    ];
    for mut p in misplaced {
        let before = format!("{p:?}");
        match set.swap(&mut p, &allow(&["aws", "github"]), &[]) {
            Err(SwapError::AwsSigV4 { secret, .. }) => assert_eq!(secret, "aws"),
            other => panic!("not refused: {other:?} for {before}"),
        }
        assert_eq!(format!("{p:?}"), before, "changed on refusal");
    }
    // The policy's gate comes first: a rule without the secret refuses it
    // as any other placeholder.
    let mut p = parts(
        "https://sts.amazonaws.com/",
        &[("authorization", &aws_auth())],
    );
    assert!(matches!(
        set.swap(&mut p, &allow(&["github"]), &[]),
        Err(SwapError::NotAllowed { .. })
    ));
}

#[test]
fn an_aws_secret_is_scrubbed_whole_and_by_parts() {
    let scrubber = Scrubber::new(aws_set().scrub_pairs());
    for echoed in [AWS_ID, AWS_SECRET, &format!("{AWS_ID}:{AWS_SECRET}")] {
        let value = HeaderValue::from_str(&format!("echo {echoed}")).unwrap();
        let clean = scrubber.scrub_header_value(&value).expect("scrubbed");
        assert_eq!(
            clean.to_str().unwrap(),
            format!("echo {AWS_PH}"),
            "{echoed}"
        );
    }
    // The id, then what may be the start of the rest of the whole value:
    // cut, the id with it.
    let value = HeaderValue::from_str(&format!("echo {AWS_ID}:{}", &AWS_SECRET[..5])).unwrap();
    assert_eq!(scrubber.scrub_header_value(&value).unwrap(), "echo ");
}

const OAUTH_PH: &str = "airlock-ph-svc-oauth";
const OAUTH_CLIENT_SECRET: &str = "test-client-REALsecret";
const OAUTH_TOKEN: &str = "fetched-REALtoken-0042";

fn oauth_set() -> CredentialSet {
    let value = format!(
        "token_url: https://auth.example.test/token\nclient_id: c\nclient_secret: {OAUTH_CLIENT_SECRET}\n"
    );
    CredentialSet::new(vec![
        cred("github", GITHUB_PH, GITHUB_VALUE),
        Credential {
            kind: crate::vault::SecretKind::Oauth2ClientCredentials,
            ..cred("svc", OAUTH_PH, &value)
        },
    ])
}

fn token() -> Vec<(String, Secret)> {
    vec![("svc".into(), Secret::new(OAUTH_TOKEN.as_bytes().to_vec()))]
}

#[test]
fn a_fetched_token_secret_is_swapped_for_its_token_never_its_stored_value() {
    let set = oauth_set();
    let mut p = parts(
        "https://api.example.test/v1",
        &[("authorization", &format!("Bearer {OAUTH_PH}"))],
    );
    let needed = set.to_fetch(&p, &allow(&["svc"])).expect("allowed");
    assert_eq!(needed.len(), 1);
    assert_eq!(needed[0].name, "svc");
    let swapped = set.swap(&mut p, &allow(&["svc"]), &token()).expect("swap");
    assert_eq!(swapped.injected, ["svc"]);
    assert_eq!(
        values(&p, "authorization"),
        [format!("Bearer {OAUTH_TOKEN}")]
    );

    // Without its token the request is refused, unchanged: the stored
    // value (client id, secret, endpoint) is never pasted in.
    let mut p = parts(
        "https://api.example.test/v1",
        &[("authorization", &format!("token {OAUTH_PH}"))],
    );
    let before = format!("{p:?}");
    match set.swap(&mut p, &allow(&["svc"]), &[]) {
        Err(SwapError::NoToken { secret }) => assert_eq!(secret, "svc"),
        other => panic!("{other:?}"),
    }
    assert_eq!(format!("{p:?}"), before);
}

#[test]
fn no_token_is_fetched_for_a_request_that_will_be_refused() {
    let set = oauth_set();
    let p = parts(
        "https://api.example.test/v1",
        &[
            ("authorization", &format!("Bearer {OAUTH_PH}")),
            ("x-leak", GITHUB_PH),
        ],
    );
    match set.to_fetch(&p, &allow(&["svc"])) {
        Err(SwapError::NotAllowed { secret }) => assert_eq!(secret, "github"),
        other => panic!("{other:?}"),
    }
    let clean = parts("https://api.example.test/v1", &[("x-other", GITHUB_PH)]);
    assert!(
        set.to_fetch(&clean, &allow(&["github"]))
            .expect("ok")
            .is_empty()
    );
}

#[test]
fn an_oauth2_client_secret_is_scrubbed_apart_from_its_stored_value() {
    let set = oauth_set();
    let scrubbed: Vec<Vec<u8>> = set
        .scrub_pairs()
        .into_iter()
        .filter(|(_, ph)| ph == OAUTH_PH.as_bytes())
        .map(|(s, _)| s.expose().to_vec())
        .collect();
    assert_eq!(
        scrubbed,
        [OAUTH_CLIENT_SECRET.as_bytes().to_vec()],
        "the client secret, not the stored document, which never leaves the host"
    );
}

#[test]
fn a_token_endpoint_is_a_host_that_holds_secrets() {
    let set = oauth_set();
    assert!(set.is_token_endpoint("auth.example.test", 443));
    assert!(
        set.is_token_endpoint("auth.example.test.", 443),
        "an absolute name, as an SNI may carry it"
    );
    assert!(
        !set.is_token_endpoint("auth.example.test", 8443),
        "another port"
    );
    assert!(
        !set.is_token_endpoint("api.example.test", 443),
        "another host"
    );

    // Named in the URL as a user may write it: upper case, a trailing
    // dot, a port.
    let value =
        "token_url: https://Auth.Example.TEST.:8443/token\nclient_id: c\nclient_secret: s\n";
    let set = CredentialSet::new(vec![Credential {
        kind: SecretKind::Oauth2ClientCredentials,
        ..cred("svc", OAUTH_PH, value)
    }]);
    assert!(set.is_token_endpoint("auth.example.test", 8443));
    assert!(!set.is_token_endpoint("auth.example.test", 443));
    assert!(!CredentialSet::new(Vec::new()).is_token_endpoint("auth.example.test", 443));
    let value = "token_url: https://[::1]:8443/token\nclient_id: c\nclient_secret: s\n";
    let set = CredentialSet::new(vec![Credential {
        kind: SecretKind::Oauth2ClientCredentials,
        ..cred("svc", OAUTH_PH, value)
    }]);
    assert!(
        set.is_token_endpoint("::1", 8443),
        "an IPv6 literal, as the proxy names it"
    );
}

/// The client secret goes to the token endpoint form-encoded inside a
/// Basic value (RFC 6749 §2.3.1): an endpoint's request log that shows
/// it gives back the base64 of the encoded secret, not of the secret.
#[test]
fn a_client_secret_is_scrubbed_from_the_basic_value_it_was_sent_in() {
    let secret = "cs/with+marks=and~more";
    let value = format!(
        "token_url: https://auth.example.test/token\nclient_id: the-client\nclient_secret: \"{secret}\"\n"
    );
    let set = CredentialSet::new(vec![Credential {
        kind: SecretKind::Oauth2ClientCredentials,
        ..cred("svc", OAUTH_PH, &value)
    }]);
    let scrubber = Scrubber::new(set.scrub_pairs());
    let encoded = "cs%2Fwith%2Bmarks%3Dand~more";
    for client in ["the-client", "the-clien", "the-clie"] {
        let basic = STANDARD.encode(format!("{client}:{encoded}"));
        let log = format!("{{\"authorization\":\"Basic {basic}\"}}");
        let out = scrubber
            .scrub_bytes(log.as_bytes())
            .map_or_else(|| log.clone().into_bytes(), |b| b.to_vec());
        let text = String::from_utf8(out).expect("ascii");
        assert!(
            !basic_value_gives_away(&text, encoded.as_bytes()),
            "{client}: eight bytes of the encoded secret decode from {text}"
        );
    }
}

/// Whether a gRPC message ends the call must not tell an agent that
/// writes its end whether a guess goes on as a secret does: a message
/// ending in the secret's first four bytes, and then bytes keys are made
/// of, ends it whatever those bytes are.
#[test]
fn whether_a_grpc_message_ends_the_call_does_not_tell_what_follows_a_secrets_first_bytes() {
    let ended = |end: &[u8]| {
        let message = grpc_frame(0, &[b"log: ".as_slice(), end].concat());
        let (sent, error) = sent_before_any_error(chunks(&[&message]));
        match error {
            Some(GrpcScrubError::EndsInsideASecret) => {
                assert!(sent.is_empty());
                true
            }
            None => false,
            Some(other) => panic!("{other:?}"),
        }
    };
    for len in 5..SECRET20.len() {
        let guessed = &SECRET20[..len];
        let mut missed = guessed.to_vec();
        missed[len - 1] = if missed[len - 1] == b'Q' { b'R' } else { b'Q' };
        assert!(ended(guessed), "{len} bytes of the secret");
        assert!(
            ended(&missed),
            "the first four, then a wrong guess, {len} bytes"
        );
    }
    assert!(ended(&SECRET20[..4]), "four bytes");
    assert!(!ended(b"no start here"));
    assert!(!ended(&SECRET20[..3]), "three bytes go on");
}

/// One secret may be the start of another (a SigV4 key's id starts the
/// whole value). Sending the shorter one's placeholder at once when the
/// bytes after it do not go on as the longer would tell an agent that
/// writes those bytes whether they do.
#[test]
fn a_whole_secret_that_may_begin_a_longer_one_is_held_either_way() {
    let s = scrubber(&[
        (b"AKIDEXAMPLE1".as_slice(), b"PH-ID".as_slice()),
        (b"AKIDEXAMPLE1:longer-secret-value", b"PH-WHOLE"),
    ]);
    let sent_at_once = |piece: &[u8]| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut body = s.wrap(ChannelBody(rx));
        tx.send(Frame::data(Bytes::copy_from_slice(piece))).unwrap();
        let mut sent = Vec::new();
        while let Poll::Ready(Some(data)) = poll_data(&mut body) {
            sent.extend_from_slice(&data);
        }
        sent
    };
    assert_eq!(sent_at_once(b"x\nAKIDEXAMPLE1:l"), b"x\n");
    assert_eq!(sent_at_once(b"x\nAKIDEXAMPLE1:g"), b"x\n");
    assert_eq!(sent_at_once(b"x\nAKIDEXAMPLE1:g\n"), b"x\nPH-ID:g\n");
}
