//! Expected signatures come from botocore 1.43 (`SigV4Auth` and
//! `S3SigV4Auth`, timestamp fixed at 20261125T101500Z): each agent request
//! below is what botocore sends when signing with the placeholder, and each
//! expected header is what it sends when signing the same request with the
//! real key.

use http::Request;

use super::{AwsKey, SigV4Error, declared_payload_hash, hex_sha256, resign};
use crate::secret::Secret;

const PLACEHOLDER: &str = "AKIDAIRLOCKPLACEHOLD";
const REAL_ID: &str = "AKIDEXAMPLEREALKEY01";
const REAL_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYREALKEY";
const REAL_TOKEN: &str = "FwoGZXIvYXdzEJr//////////wEaDREALTOKEN";

fn key(value: &str) -> AwsKey {
    AwsKey::parse(&Secret::new(value.as_bytes().to_vec())).expect("key")
}

fn real() -> AwsKey {
    key(&format!("{REAL_ID}:{REAL_SECRET}"))
}

fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut req = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(()).expect("request").into_parts().0
}

fn header(parts: &http::request::Parts, name: &str) -> String {
    parts
        .headers
        .get(name)
        .map(|v| v.to_str().expect("ascii").to_owned())
        .unwrap_or_default()
}

#[test]
fn a_bedrock_post_is_signed_as_the_sdk_would_sign_it_with_the_real_key() {
    // Not S3: the path's %3A is encoded again (%253A) in the canonical form.
    let mut p = parts(
        "POST",
        "https://bedrock-runtime.us-east-1.amazonaws.com:443/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke",
        &[
            ("content-type", "application/json"),
            ("host", "bedrock-runtime.us-east-1.amazonaws.com"),
            ("x-amz-date", "20261125T101500Z"),
            (
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDAIRLOCKPLACEHOLD/20261125/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=e61e7dde4adab0b2416c6a79cb6b913c06a694a4ad254925c57b1dea099abe51",
            ),
        ],
    );
    let hash = hex_sha256(br#"{"prompt":"hi"}"#);
    resign(&mut p, &real(), PLACEHOLDER, &hash).expect("resign");
    assert_eq!(
        header(&p, "authorization"),
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLEREALKEY01/20261125/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=f2601693c74837a4fc91c81f24550ca76ef4e1555329f58dd95024689c8c373f"
    );
    assert!(p.headers.get("authorization").expect("auth").is_sensitive());
    assert!(!p.headers.contains_key("x-amz-security-token"));
}

#[test]
fn an_s3_get_keeps_its_path_and_sorts_its_query() {
    let mut p = parts(
        "GET",
        "https://bucket.s3.eu-west-1.amazonaws.com:443/a%20b/c.txt?prefix=x%2Fy&list-type=2&delimiter=%2F",
        &[
            ("host", "bucket.s3.eu-west-1.amazonaws.com"),
            ("x-amz-date", "20261125T101500Z"),
            (
                "x-amz-content-sha256",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDAIRLOCKPLACEHOLD/20261125/eu-west-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=fbb34bf625838abfa6df07d767bdad96674901da3f1082dc322dc1704266a7e0",
            ),
        ],
    );
    let hash = declared_payload_hash(&p.headers)
        .expect("declared")
        .expect("s3 declares its hash");
    resign(&mut p, &real(), PLACEHOLDER, &hash).expect("resign");
    assert_eq!(
        header(&p, "authorization"),
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLEREALKEY01/20261125/eu-west-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=248d27c9027b0bc0ea398f8f4213468ebbe6eb9353272ccc68dfcb8357ea12c7"
    );
}

#[test]
fn a_session_token_is_added_and_signed_and_the_host_comes_from_the_uri_without_its_port() {
    // As over HTTP/2: no Host header, the authority in the URI carries :443.
    // The agent's header value with runs of spaces is signed trimmed.
    let mut p = parts(
        "GET",
        "https://sts.amazonaws.com:443/?Action=GetCallerIdentity&Version=2011-06-15",
        &[
            ("x-custom", "  a   b  "),
            ("x-amz-date", "20261125T101500Z"),
            (
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDAIRLOCKPLACEHOLD/20261125/us-east-1/sts/aws4_request, SignedHeaders=host;x-amz-date;x-custom, Signature=2da985629fa743407d6d8dacf14aa4e93148e750b8e9630388749367ccd91b14",
            ),
        ],
    );
    let k = key(&format!("{REAL_ID}:{REAL_SECRET}:{REAL_TOKEN}"));
    resign(&mut p, &k, PLACEHOLDER, &hex_sha256(b"")).expect("resign");
    assert_eq!(
        header(&p, "authorization"),
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLEREALKEY01/20261125/us-east-1/sts/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token;x-custom, Signature=69e6fb57a7ac87dd4cd690d362b48f16d565ddbc45c3a158d27443c5ddcffe8f"
    );
    assert_eq!(header(&p, "x-amz-security-token"), REAL_TOKEN);
    assert_eq!(
        p.uri.authority().map(|a| a.as_str()),
        Some("sts.amazonaws.com")
    );
}

#[test]
fn an_agent_token_is_dropped_when_the_real_key_has_none() {
    let mut p = parts(
        "GET",
        "https://sts.amazonaws.com/",
        &[
            ("host", "sts.amazonaws.com"),
            ("x-amz-date", "20261125T101500Z"),
            ("x-amz-security-token", "agent-side-token"),
            (
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDAIRLOCKPLACEHOLD/20261125/us-east-1/sts/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=00",
            ),
        ],
    );
    resign(&mut p, &real(), PLACEHOLDER, &hex_sha256(b"")).expect("resign");
    assert!(!p.headers.contains_key("x-amz-security-token"));
    assert!(header(&p, "authorization").contains("SignedHeaders=host;x-amz-date, "));
}

#[test]
fn requests_that_cannot_be_resigned_are_refused_and_left_as_they_came() {
    let auth = |credential: &str| {
        format!(
            "AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders=host;x-amz-date, Signature=00"
        )
    };
    let good_scope = format!("{PLACEHOLDER}/20261125/us-east-1/sts/aws4_request");
    let cases: Vec<(String, &str, SigV4Error)> = vec![
        (
            format!("Bearer {PLACEHOLDER}"),
            "20261125T101500Z",
            SigV4Error::Misplaced,
        ),
        (
            auth("AKIDSOMEOTHERKEY0000/20261125/us-east-1/sts/aws4_request"),
            "20261125T101500Z",
            SigV4Error::Misplaced,
        ),
        (
            auth(&format!("{PLACEHOLDER}/20261125/us-east-1/sts")),
            "20261125T101500Z",
            SigV4Error::Malformed,
        ),
        // The date in the scope and the header's date disagree.
        (auth(&good_scope), "20261126T101500Z", SigV4Error::Malformed),
        (
            format!("AWS4-HMAC-SHA256 Credential={good_scope}, Extra=1"),
            "20261125T101500Z",
            SigV4Error::Malformed,
        ),
    ];
    for (authorization, date, expected) in cases {
        let mut p = parts(
            "GET",
            "https://sts.amazonaws.com/",
            &[
                ("host", "sts.amazonaws.com"),
                ("x-amz-date", date),
                ("authorization", &authorization),
            ],
        );
        let before = format!("{:?}", p.headers);
        let err = resign(&mut p, &real(), PLACEHOLDER, &hex_sha256(b"")).expect_err(&authorization);
        assert_eq!(err, expected, "{authorization}");
        assert_eq!(format!("{:?}", p.headers), before, "changed on error");
    }
}

#[test]
fn chunk_signed_uploads_are_refused() {
    let p = parts(
        "PUT",
        "https://bucket.s3.amazonaws.com/k",
        &[("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")],
    );
    assert_eq!(
        declared_payload_hash(&p.headers),
        Err(SigV4Error::Streaming)
    );
    let p = parts("POST", "https://sts.amazonaws.com/", &[]);
    assert_eq!(declared_payload_hash(&p.headers), Ok(None));
}

#[test]
fn stored_values_parse_only_in_the_documented_shape() {
    let k = key("AKIDEXAMPLE:secret/with+chars:token==");
    assert_eq!(k.access_key_id.expose(), b"AKIDEXAMPLE");
    assert_eq!(k.secret_access_key.expose(), b"secret/with+chars");
    assert_eq!(
        k.session_token.as_ref().map(|t| t.expose()),
        Some(&b"token=="[..])
    );
    assert_eq!(k.parts().count(), 3);
    assert!(key("AKIDEXAMPLE:secret").session_token.is_none());
    for bad in [
        "AKIDEXAMPLE",
        "AKIDEXAMPLE:",
        ":secret",
        "a:b:",
        "a:b:c:d",
        "a b:c",
    ] {
        assert!(
            AwsKey::parse(&Secret::new(bad.as_bytes().to_vec())).is_none(),
            "{bad:?} accepted"
        );
    }
    let shown = format!(
        "{:?}",
        key(&format!("{REAL_ID}:{REAL_SECRET}:{REAL_TOKEN}"))
    );
    for part in [REAL_ID, REAL_SECRET, REAL_TOKEN] {
        assert!(!shown.contains(part), "Debug shows a part: {shown}");
    }
}
