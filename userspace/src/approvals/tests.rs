use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    sync::mpsc,
    task::JoinHandle,
};

use super::{ApprovalError, Approvals, PendingRequest, Verdict};

const LONG: Duration = Duration::from_secs(30);

fn pending(id: &str, agent: &str) -> PendingRequest {
    PendingRequest {
        id: id.to_owned(),
        agent: agent.to_owned(),
        method: "POST".to_owned(),
        host: "api.github.com".to_owned(),
        path: "/repos/o/r/issues".to_owned(),
        body_digest: Some(PendingRequest::digest_body(b"{\"title\":\"x\"}")),
        claimed_methods: Vec::new(),
        created_unix: 1_700_000_000,
        rule: "rules[0]".to_owned(),
    }
}

fn spawn_request(approvals: &Arc<Approvals>, req: PendingRequest) -> JoinHandle<Verdict> {
    let approvals = Arc::clone(approvals);
    tokio::spawn(async move { approvals.request(req).await })
}

async fn until_pending(approvals: &Approvals, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while approvals.pending() != n {
        assert!(Instant::now() < deadline, "never reached {n} pending");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn approve_releases_the_waiter() {
    let approvals = Approvals::new(LONG, None).unwrap();
    let waiter = spawn_request(&approvals, pending("a1", "bot"));
    until_pending(&approvals, 1).await;
    assert_eq!(approvals.list(), vec![pending("a1", "bot")]);

    approvals.approve("a1").unwrap();
    assert_eq!(waiter.await.unwrap(), Verdict::Approved);
    assert_eq!(approvals.pending(), 0);
    // Decided once: a second answer finds nothing.
    assert!(matches!(
        approvals.deny("a1"),
        Err(ApprovalError::NotFound { id }) if id == "a1"
    ));
}

#[tokio::test]
async fn deny_releases_the_waiter_with_denied() {
    let approvals = Approvals::new(LONG, None).unwrap();
    let waiter = spawn_request(&approvals, pending("d1", "bot"));
    until_pending(&approvals, 1).await;
    approvals.deny("d1").unwrap();
    assert_eq!(waiter.await.unwrap(), Verdict::Denied);
    assert!(approvals.list().is_empty());
}

#[tokio::test]
async fn an_unanswered_request_times_out_and_leaves_the_queue() {
    let approvals = Approvals::new(Duration::from_millis(100), None).unwrap();
    let started = Instant::now();
    let verdict = approvals.request(pending("t1", "bot")).await;
    assert_eq!(verdict, Verdict::TimedOut);
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert!(approvals.list().is_empty());
    assert_eq!(approvals.pending(), 0);
    assert!(matches!(
        approvals.approve("t1"),
        Err(ApprovalError::NotFound { .. })
    ));
}

#[tokio::test]
async fn a_dropped_waiter_takes_its_entry_with_it() {
    let approvals = Approvals::new(LONG, None).unwrap();
    let waiter = spawn_request(&approvals, pending("h1", "bot"));
    let other = spawn_request(&approvals, pending("h2", "bot"));
    until_pending(&approvals, 2).await;

    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    let left: Vec<String> = approvals.list().into_iter().map(|r| r.id).collect();
    assert_eq!(left, ["h2"]);
    assert!(matches!(
        approvals.approve("h1"),
        Err(ApprovalError::NotFound { .. })
    ));

    approvals.approve("h2").unwrap();
    assert_eq!(other.await.unwrap(), Verdict::Approved);
}

#[tokio::test]
async fn unknown_ids_are_not_found() {
    let approvals = Approvals::new(LONG, None).unwrap();
    match approvals.approve("nope") {
        Err(ApprovalError::NotFound { id }) => assert_eq!(id, "nope"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(matches!(
        approvals.deny("nope"),
        Err(ApprovalError::NotFound { .. })
    ));
}

#[tokio::test]
async fn list_is_oldest_first() {
    let approvals = Approvals::new(LONG, None).unwrap();
    let mut waiters = Vec::new();
    for (n, id) in ["c", "a", "b", "e", "d"].into_iter().enumerate() {
        waiters.push(spawn_request(&approvals, pending(id, "bot")));
        until_pending(&approvals, n + 1).await;
    }
    let ids: Vec<String> = approvals.list().into_iter().map(|r| r.id).collect();
    assert_eq!(ids, ["c", "a", "b", "e", "d"]);
    for id in ["c", "a", "b", "e", "d"] {
        approvals.deny(id).unwrap();
    }
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap(), Verdict::Denied);
    }
}

#[tokio::test]
async fn a_duplicate_id_is_denied_without_disturbing_the_first() {
    let approvals = Approvals::new(LONG, None).unwrap();
    let first = spawn_request(&approvals, pending("dup", "bot"));
    until_pending(&approvals, 1).await;
    assert_eq!(
        approvals.request(pending("dup", "other")).await,
        Verdict::Denied
    );
    assert_eq!(approvals.list()[0].agent, "bot");
    approvals.approve("dup").unwrap();
    assert_eq!(first.await.unwrap(), Verdict::Approved);
}

#[test]
fn ids_are_twelve_hex_chars_and_distinct() {
    let ids: std::collections::HashSet<String> = (0..1000).map(|_| Approvals::new_id()).collect();
    assert_eq!(ids.len(), 1000);
    for id in &ids {
        assert_eq!(id.len(), 12);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    }
}

#[test]
fn body_digest_is_sha256_hex() {
    assert_eq!(
        PendingRequest::digest_body(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn non_http_webhooks_are_refused_at_construction() {
    match Approvals::new(LONG, Some("https://hooks.example/secret-path".to_owned())) {
        Err(ApprovalError::BadWebhook { url, .. }) => {
            assert_eq!(url, "https://hooks.example/…");
        }
        Err(other) => panic!("expected BadWebhook, got {other:?}"),
        Ok(_) => panic!("an https webhook was accepted"),
    }
}

/// One HTTP/1.1 request as a tiny server saw it.
struct Received {
    head: String,
    body: Vec<u8>,
}

/// Answers every request with 204 and hands over what it read.
async fn webhook_receiver() -> (u16, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut raw = Vec::new();
            let mut chunk = [0u8; 1024];
            let head_end = loop {
                let n = socket.read(&mut chunk).await.unwrap();
                assert!(n > 0, "client closed before the headers ended");
                raw.extend_from_slice(&chunk[..n]);
                if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
            };
            let head = String::from_utf8(raw[..head_end].to_vec()).unwrap();
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().unwrap())
                })
                .expect("no content-length");
            while raw.len() < head_end + length {
                let n = socket.read(&mut chunk).await.unwrap();
                assert!(n > 0, "client closed mid-body");
                raw.extend_from_slice(&chunk[..n]);
            }
            socket
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            let body = raw[head_end..head_end + length].to_vec();
            tx.send(Received { head, body }).await.unwrap();
        }
    });
    (port, rx)
}

#[tokio::test]
async fn the_webhook_gets_a_json_notice() {
    let (port, mut received) = webhook_receiver().await;
    let approvals =
        Approvals::new(LONG, Some(format!("http://127.0.0.1:{port}/hook?k=1"))).unwrap();
    // A POST that claims DELETE (an override header): the human is told.
    let mut req = pending("w1", "pr-bot");
    req.claimed_methods = vec!["DELETE".to_owned()];
    let waiter = spawn_request(&approvals, req);

    let notice = tokio::time::timeout(Duration::from_secs(5), received.recv())
        .await
        .expect("no notice within 5 s")
        .unwrap();
    let request_line = notice.head.lines().next().unwrap();
    assert_eq!(request_line, "POST /hook?k=1 HTTP/1.1");
    let head = notice.head.to_ascii_lowercase();
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains(&format!("host: 127.0.0.1:{port}")), "{head}");

    let json: serde_json::Value = serde_json::from_slice(&notice.body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "event": "approval_requested",
            "id": "w1",
            "agent": "pr-bot",
            "method": "POST",
            "host": "api.github.com",
            "path": "/repos/o/r/issues",
            "body_digest": PendingRequest::digest_body(b"{\"title\":\"x\"}"),
            "claimed_methods": ["DELETE"],
            "rule": "rules[0]",
            "expires_unix": 1_700_000_030u64,
        })
    );

    // The notice does not decide anything: the request is still waiting.
    assert_eq!(approvals.pending(), 1);
    approvals.approve("w1").unwrap();
    assert_eq!(waiter.await.unwrap(), Verdict::Approved);
}

#[tokio::test]
async fn a_dead_webhook_neither_blocks_nor_fails_the_request() {
    // A port that was just free: nothing listens there.
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let hook = Some(format!("http://127.0.0.1:{port}/hook"));

    let approvals = Approvals::new(LONG, hook.clone()).unwrap();
    let waiter = spawn_request(&approvals, pending("x1", "bot"));
    until_pending(&approvals, 1).await;
    approvals.approve("x1").unwrap();
    assert_eq!(waiter.await.unwrap(), Verdict::Approved);

    let approvals = Approvals::new(Duration::from_millis(100), hook).unwrap();
    let started = Instant::now();
    assert_eq!(
        approvals.request(pending("x2", "bot")).await,
        Verdict::TimedOut
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_silent_webhook_does_not_hold_the_verdict() {
    // Accepts connections and never answers: the POST hangs until its own
    // timeout, which must not be the request's problem.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            held.push(socket);
        }
    });
    let approvals = Approvals::new(LONG, Some(format!("http://127.0.0.1:{port}/"))).unwrap();
    let waiter = spawn_request(&approvals, pending("s1", "bot"));
    until_pending(&approvals, 1).await;
    let started = Instant::now();
    approvals.deny("s1").unwrap();
    assert_eq!(waiter.await.unwrap(), Verdict::Denied);
    assert!(started.elapsed() < Duration::from_secs(1));
    server.abort();
}
