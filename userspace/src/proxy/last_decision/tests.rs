use std::path::Path;

use http::uri::PathAndQuery;

use super::LastDecision;
use crate::{
    metrics::Metrics,
    policy::{HttpDecision, PolicyStore},
};

const AGENT: &str = "agent: reader\nrules:\n  - host: api.example.com\n    methods: [GET]\n    paths: [\"/v1/**\"]\n";

fn write(dir: &Path, text: &str) {
    std::fs::write(dir.join("reader.yaml"), text).expect("write policy");
}

fn allowed(decision: Option<(std::sync::Arc<crate::policy::Policy>, HttpDecision)>) -> bool {
    matches!(decision.expect("a policy").1, HttpDecision::Allow(_))
}

fn path(text: &'static str) -> PathAndQuery {
    PathAndQuery::from_static(text)
}

#[test]
fn a_reload_reaches_a_decision_the_connection_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), AGENT);
    let store = PolicyStore::load(dir.path(), Metrics::new().expect("metrics"));
    let last = LastDecision::default();
    let ask = || {
        last.decide(
            &store,
            "reader",
            "api.example.com",
            443,
            "GET",
            &path("/v1/x"),
        )
    };
    assert!(allowed(ask()));
    assert!(allowed(ask()), "the kept answer is the policy's");

    write(
        dir.path(),
        "agent: reader\nrules:\n  - host: api.example.com\n    methods: [GET]\n    paths: [\"/v2/**\"]\n",
    );
    store.reload();
    assert!(
        !allowed(ask()),
        "the same request after a reload that denies it"
    );

    std::fs::remove_file(dir.path().join("reader.yaml")).expect("remove");
    store.reload();
    assert!(ask().is_none(), "no policy, no decision");
}

#[test]
fn any_other_request_is_asked_of_the_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), AGENT);
    let store = PolicyStore::load(dir.path(), Metrics::new().expect("metrics"));
    let last = LastDecision::default();
    let ask = |host, port, method, p| last.decide(&store, "reader", host, port, method, &path(p));
    // Each denied request follows the allowed one, whose answer the
    // connection keeps; the allowed one then follows the denial.
    let denied = [
        ("path", "api.example.com", 443, "GET", "/v2/x"),
        ("method", "api.example.com", 443, "DELETE", "/v1/x"),
        ("host", "evil.example.com", 443, "GET", "/v1/x"),
        ("port", "api.example.com", 8443, "GET", "/v1/x"),
        (
            "a non-canonical path",
            "api.example.com",
            443,
            "GET",
            "/v1/../admin",
        ),
    ];
    for (what, host, port, method, p) in denied {
        assert!(
            allowed(ask("api.example.com", 443, "GET", "/v1/x")),
            "before {what}"
        );
        assert!(!allowed(ask(host, port, method, p)), "another {what}");
    }
    assert!(allowed(ask("api.example.com", 443, "GET", "/v1/x")));
}

/// hyper hands a request over with its path a slice of the buffer the head
/// was read into. The kept answer copies the path: holding the slice would
/// hold that buffer for as long as the connection stays open.
#[test]
fn the_kept_answer_holds_no_part_of_the_buffer_the_request_was_read_into() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), AGENT);
    let store = PolicyStore::load(dir.path(), Metrics::new().expect("metrics"));
    let last = LastDecision::default();
    let read_buffer = bytes::Bytes::from(b"GET /v1/x HTTP/1.1\r\n\r\n".to_vec());
    let path = PathAndQuery::from_maybe_shared(read_buffer.slice(4..9)).expect("a path");
    assert_eq!(path.as_str(), "/v1/x");
    assert!(allowed(last.decide(
        &store,
        "reader",
        "api.example.com",
        443,
        "GET",
        &path
    )));
    drop(path);
    assert!(
        read_buffer.is_unique(),
        "the buffer is its reader's alone once the request is done"
    );
}
