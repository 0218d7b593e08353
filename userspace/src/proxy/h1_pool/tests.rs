//! The pool against real HTTP/1.1 servers on loopback, counting the
//! connections they accept.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use super::{H1Pool, Slot};
use crate::{
    dns::{DnsEvent, DnsPolicy, DnsReach, Resolver},
    proxy::{body::empty, upstream::Connector},
};

/// The pool's tests name upstreams by IP literal: no lookups.
struct NoNames;

impl DnsPolicy for NoNames {
    fn agent_for_udp_peer(&self, _: SocketAddr) -> Option<String> {
        None
    }
    fn name_allowed(&self, _: &str, _: &str) -> bool {
        false
    }
    fn static_answer(&self, _: &str) -> Option<Vec<std::net::IpAddr>> {
        None
    }
    fn record(&self, _: DnsEvent) {}
}

fn pool() -> Arc<H1Pool> {
    let resolver = Resolver::new(
        Arc::new(NoNames),
        Vec::new(),
        Duration::from_secs(1),
        DnsReach::WithPrivate,
    );
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    H1Pool::new(Connector::new(resolver, Arc::new(tls)))
}

/// A keep-alive server that answers with its own name after `delay`, and
/// notes each request's target and Host.
struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

async fn upstream(ip: &str, name: &'static str, delay: Duration, body_len: usize) -> Upstream {
    let listener = TcpListener::bind((ip, 0)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (count, notes) = (accepted.clone(), seen.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let notes = notes.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let notes = notes.clone();
                async move {
                    let host = req
                        .headers()
                        .get(http::header::HOST)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    notes
                        .lock()
                        .expect("notes")
                        .push((req.uri().to_string(), host));
                    tokio::time::sleep(delay).await;
                    let mut body = name.as_bytes().to_vec();
                    body.resize(body_len.max(body.len()), b'.');
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    Upstream {
        addr,
        accepted,
        seen,
    }
}

fn agent(name: &str) -> Option<Arc<str>> {
    Some(Arc::from(name))
}

async fn get(pool: &H1Pool, slot: &Slot, addr: SocketAddr) -> String {
    let req = Request::get(format!("http://{addr}/x?y=1"))
        .body(empty())
        .expect("request");
    let resp = pool.send(slot, req).await.expect("answer");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&body)
        .trim_end_matches('.')
        .to_owned()
}

#[tokio::test]
async fn one_agent_connection_sends_every_request_on_one_upstream_connection() {
    let up = upstream("127.0.0.1", "a", Duration::ZERO, 0).await;
    let pool = pool();
    let slot = Slot::new(pool.clone(), agent("a"));
    for _ in 0..5 {
        assert_eq!(get(&pool, &slot, up.addr).await, "a");
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    // Origin-form target, and a Host made from the URI when the request
    // had none.
    let seen = up.seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 5);
    for (target, host) in seen {
        assert_eq!(target, "/x?y=1");
        assert_eq!(host, up.addr.to_string());
    }
}

#[tokio::test]
async fn an_agent_connection_that_ended_leaves_its_connection_to_the_next() {
    let up = upstream("127.0.0.1", "a", Duration::ZERO, 0).await;
    let pool = pool();
    for _ in 0..3 {
        let slot = Slot::new(pool.clone(), agent("a"));
        assert_eq!(get(&pool, &slot, up.addr).await, "a");
        drop(slot);
        assert_eq!(pool.idle_count(), 1);
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_idle_connection_keeps_its_stream_and_no_task() {
    let up = upstream("127.0.0.1", "a", Duration::ZERO, 0).await;
    let pool = pool();
    let metrics = tokio::runtime::Handle::current().metrics();
    let slot = Slot::new(pool.clone(), agent("a"));
    assert_eq!(get(&pool, &slot, up.addr).await, "a");
    let serving = metrics.num_alive_tasks();
    drop(slot);
    let mut alive = serving;
    for _ in 0..100 {
        alive = metrics.num_alive_tasks();
        if alive < serving {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(alive, serving - 1, "the idle connection's task did not end");
    // The stream is taken up again by the next agent connection.
    let slot = Slot::new(pool.clone(), agent("a"));
    assert_eq!(get(&pool, &slot, up.addr).await, "a");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_meanwhile_is_not_taken_up() {
    // Closes each connection 50 ms after its answer: an idle timeout, as
    // Node's servers have one of 5 s.
    let (addr, accepted) = answer_once_then_close(Duration::from_millis(50)).await;
    let pool = pool();
    for _ in 0..3 {
        let slot = Slot::new(pool.clone(), agent("a"));
        assert_eq!(get(&pool, &slot, addr).await, "ok");
        drop(slot);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

/// A server that answers one request on each connection as if it kept the
/// connection, and closes it `linger` later: what an upstream's idle
/// timeout looks like from here. It counts the connections it accepts.
async fn answer_once_then_close(linger: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(linger).await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn two_agent_connections_at_once_get_two_upstream_connections_never_more() {
    let up = upstream("127.0.0.1", "a", Duration::from_millis(20), 0).await;
    let pool = pool();
    let (one, two) = (
        Slot::new(pool.clone(), agent("a")),
        Slot::new(pool.clone(), agent("a")),
    );
    for _ in 0..4 {
        let (a, b) = tokio::join!(get(&pool, &one, up.addr), get(&pool, &two, up.addr));
        assert_eq!((a.as_str(), b.as_str()), ("a", "a"));
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_plain_http_agent_naming_two_hosts_keeps_their_connections_apart() {
    let a = upstream("127.0.0.1", "a", Duration::ZERO, 0).await;
    let b = upstream("127.0.0.2", "b", Duration::ZERO, 0).await;
    let pool = pool();
    let slot = Slot::new(pool.clone(), agent("a"));
    for _ in 0..3 {
        assert_eq!(get(&pool, &slot, a.addr).await, "a");
        assert_eq!(get(&pool, &slot, b.addr).await, "b");
    }
    assert_eq!(a.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(b.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_not_used_again() {
    let (addr, accepted) = answer_once_then_close(Duration::ZERO).await;
    let pool = pool();
    let slot = Slot::new(pool.clone(), agent("a"));
    for _ in 0..3 {
        assert_eq!(get(&pool, &slot, addr).await, "ok");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_answer_the_agent_left_unread_costs_its_connection_not_the_next_request() {
    let up = upstream("127.0.0.1", "a", Duration::ZERO, 4 << 20).await;
    let pool = pool();
    let slot = Slot::new(pool.clone(), agent("a"));
    let req = Request::get(format!("http://{}/big", up.addr))
        .body(empty())
        .expect("request");
    let resp = pool.send(&slot, req).await.expect("answer");
    drop(resp);
    let started = std::time::Instant::now();
    assert_eq!(get(&pool, &slot, up.addr).await, "a");
    assert!(
        started.elapsed() < super::READY_WAIT,
        "the next request waited for the abandoned answer"
    );
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn agents_never_share_a_connection() {
    let up = upstream("127.0.0.1", "a", Duration::ZERO, 0).await;
    let pool = pool();
    let first = Slot::new(pool.clone(), agent("first"));
    assert_eq!(get(&pool, &first, up.addr).await, "a");
    drop(first);
    assert_eq!(pool.idle_count(), 1);
    // Another agent, and the daemon's own token requests, open their own.
    let other = Slot::new(pool.clone(), agent("other"));
    assert_eq!(get(&pool, &other, up.addr).await, "a");
    let daemon = Slot::new(pool.clone(), None);
    assert_eq!(get(&pool, &daemon, up.addr).await, "a");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
    // The first agent's next connection finds its own idle one.
    let again = Slot::new(pool.clone(), agent("first"));
    assert_eq!(get(&pool, &again, up.addr).await, "a");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
}
