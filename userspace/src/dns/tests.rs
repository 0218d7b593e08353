//! Loopback tests against a fake upstream server that knows a few names.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::domain::Label;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use super::*;

const AGENT: &str = "agent-1";
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

// ---------------------------------------------------------------- policy

#[derive(Default)]
struct FakePolicy {
    unknown_peers: Mutex<HashSet<SocketAddr>>,
    allowed: HashSet<String>,
    allowed_suffixes: Vec<String>,
    statics: HashMap<String, Vec<IpAddr>>,
    events: Mutex<Vec<DnsEvent>>,
    asked: Mutex<Vec<String>>,
}

impl FakePolicy {
    fn standard() -> Self {
        Self {
            allowed: [
                "allowed.test",
                "static.test",
                "tc.test",
                "big.test",
                "alias.test",
                "missing.test",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            allowed_suffixes: vec![".wild.test".to_string()],
            statics: HashMap::from([(
                "static.test".to_string(),
                vec![
                    IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
                    IpAddr::V6("fd00::5".parse().unwrap()),
                ],
            )]),
            ..Self::default()
        }
    }

    fn events(&self) -> Vec<DnsEvent> {
        self.events.lock().unwrap().clone()
    }
}

impl DnsPolicy for FakePolicy {
    fn agent_for_udp_peer(&self, peer: SocketAddr) -> Option<String> {
        if self.unknown_peers.lock().unwrap().contains(&peer) {
            None
        } else {
            Some(AGENT.to_string())
        }
    }

    fn name_allowed(&self, agent: &str, name: &str) -> bool {
        assert_eq!(agent, AGENT);
        self.asked.lock().unwrap().push(name.to_string());
        self.allowed.contains(name) || self.allowed_suffixes.iter().any(|s| name.ends_with(s))
    }

    fn static_answer(&self, name: &str) -> Option<Vec<IpAddr>> {
        self.statics.get(name).cloned()
    }

    fn record(&self, event: DnsEvent) {
        self.events.lock().unwrap().push(event);
    }
}

// ---------------------------------------------------------------- fake upstream

/// Answers allowed.test / alias.test / big.test / tc.test over UDP and TCP
/// on one loopback port, NXDOMAIN for the rest, and counts what it sees.
struct FakeUpstream {
    addr: SocketAddr,
    udp_queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl FakeUpstream {
    async fn start() -> Self {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = TcpListener::bind((LOCALHOST, port)).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let udp_queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));

        let udp_task = {
            let count = Arc::clone(&udp_queries);
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let (len, peer) = udp.recv_from(&mut buf).await.unwrap();
                    assert!(peer.ip().is_loopback());
                    count.fetch_add(1, Ordering::SeqCst);
                    seen.lock().unwrap().push(buf[..len].to_vec());
                    let request = Message::from_vec(&buf[..len]).unwrap();
                    let reply = fake_answer(&request, false).to_vec().unwrap();
                    udp.send_to(&reply, peer).await.unwrap();
                }
            })
        };
        let tcp_task = {
            let count = Arc::clone(&tcp_queries);
            tokio::spawn(async move {
                loop {
                    let (mut stream, _) = tcp.accept().await.unwrap();
                    let count = Arc::clone(&count);
                    tokio::spawn(async move {
                        while let Ok(packet) = read_framed(&mut stream).await {
                            count.fetch_add(1, Ordering::SeqCst);
                            let request = Message::from_vec(&packet).unwrap();
                            let reply = fake_answer(&request, true).to_vec().unwrap();
                            write_framed(&mut stream, &reply).await;
                        }
                    });
                }
            })
        };
        Self {
            addr,
            udp_queries,
            tcp_queries,
            seen,
            tasks: vec![udp_task, tcp_task],
        }
    }

    fn queries(&self) -> usize {
        self.udp_queries.load(Ordering::SeqCst) + self.tcp_queries.load(Ordering::SeqCst)
    }
}

fn fake_answer(request: &Message, over_tcp: bool) -> Message {
    let mut reply = Message::new();
    reply
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .set_recursion_available(true)
        .add_queries(request.queries().iter().cloned());
    let query = &request.queries()[0];
    let owner = query.name().clone();
    let name = owner.to_lowercase().to_ascii();
    let qtype = query.query_type();
    let v4 = |octets: [u8; 4]| Record::from_rdata(owner.clone(), 300, RData::A(A(octets.into())));
    match name.as_str() {
        "allowed.test." => match qtype {
            RecordType::A => {
                reply.add_answer(v4([127, 0, 0, 7]));
            }
            RecordType::AAAA => {
                let ip: Ipv6Addr = "fd00::7".parse().unwrap();
                reply.add_answer(Record::from_rdata(owner, 300, RData::AAAA(AAAA(ip))));
            }
            _ => {}
        },
        "alias.test." if qtype == RecordType::A => {
            let target = Name::from_ascii("target.example.").unwrap();
            reply.add_answer(Record::from_rdata(
                owner,
                120,
                RData::CNAME(CNAME(target.clone())),
            ));
            reply.add_answer(Record::from_rdata(
                target,
                30,
                RData::A(A(Ipv4Addr::new(127, 0, 0, 8))),
            ));
        }
        "tc.test." if !over_tcp => {
            reply.set_truncated(true);
        }
        "tc.test." if qtype == RecordType::A => {
            reply.add_answer(v4([127, 0, 0, 9]));
        }
        "big.test." if qtype == RecordType::A => {
            for i in 1..=40 {
                reply.add_answer(v4([127, 0, 1, i]));
            }
        }
        // For the daemon's own lookups: an answer in the documentation
        // ranges, one that points at this host, and one that mixes both.
        "public.test." => match qtype {
            RecordType::A => {
                reply.add_answer(v4([192, 0, 2, 7]));
            }
            RecordType::AAAA => {
                let ip: Ipv6Addr = "2001:db8::7".parse().unwrap();
                reply.add_answer(Record::from_rdata(owner, 300, RData::AAAA(AAAA(ip))));
            }
            _ => {}
        },
        "rebind.test." => match qtype {
            RecordType::A => {
                reply.add_answer(v4([169, 254, 169, 254]));
            }
            RecordType::AAAA => {
                let ip: Ipv6Addr = "::ffff:127.0.0.1".parse().unwrap();
                reply.add_answer(Record::from_rdata(owner, 300, RData::AAAA(AAAA(ip))));
            }
            _ => {}
        },
        "mixed.test." if qtype == RecordType::A => {
            reply.add_answer(v4([127, 0, 0, 1]));
            reply.add_answer(v4([192, 0, 2, 8]));
        }
        "alias.test." | "tc.test." | "big.test." | "mixed.test." => {}
        _ => {
            reply.set_response_code(ResponseCode::NXDomain);
        }
    }
    reply
}

async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut packet).await?;
    Ok(packet)
}

async fn write_framed(stream: &mut TcpStream, packet: &[u8]) {
    let len = u16::try_from(packet.len()).unwrap();
    stream.write_all(&len.to_be_bytes()).await.unwrap();
    stream.write_all(packet).await.unwrap();
}

// ---------------------------------------------------------------- harness

struct Harness {
    resolver: Arc<Resolver>,
    policy: Arc<FakePolicy>,
    udp_addr: SocketAddr,
    server: JoinHandle<std::io::Result<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn start(upstreams: Vec<SocketAddr>, timeout: Duration) -> Harness {
    start_reaching(upstreams, timeout, DnsReach::WithPrivate).await
}

async fn start_reaching(upstreams: Vec<SocketAddr>, timeout: Duration, reach: DnsReach) -> Harness {
    let policy = Arc::new(FakePolicy::standard());
    let resolver = Resolver::new(
        Arc::clone(&policy) as Arc<dyn DnsPolicy>,
        upstreams,
        timeout,
        reach,
    );
    let socket = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let udp_addr = socket.local_addr().unwrap();
    let server = tokio::spawn(Arc::clone(&resolver).serve_udp(socket));
    Harness {
        resolver,
        policy,
        udp_addr,
        server,
    }
}

const SHORT: Duration = Duration::from_millis(200);
const PATIENCE: Duration = Duration::from_secs(5);

fn query(name: &str, qtype: RecordType) -> Message {
    let mut message = Message::new();
    message
        .set_id(rand::random())
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    message
}

fn with_edns(mut message: Message, payload: u16) -> Message {
    let mut edns = Edns::new();
    edns.set_max_payload(payload);
    message.set_edns(edns);
    message
}

async fn send_raw(socket: &UdpSocket, server: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    socket.send_to(packet, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(PATIENCE, socket.recv_from(&mut buf)).await {
        Ok(Ok((len, from))) => {
            assert_eq!(from, server);
            Some(buf[..len].to_vec())
        }
        Ok(Err(err)) => panic!("recv failed: {err}"),
        Err(_) => None,
    }
}

async fn ask_udp(server: SocketAddr, request: &Message) -> (Message, usize) {
    let socket = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let bytes = send_raw(&socket, server, &request.to_vec().unwrap())
        .await
        .expect("no reply from resolver");
    (Message::from_vec(&bytes).unwrap(), bytes.len())
}

fn ipv4s(message: &Message) -> Vec<Ipv4Addr> {
    message
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            Some(RData::A(a)) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn assert_echoes(reply: &Message, request: &Message) {
    assert_eq!(reply.id(), request.id());
    assert_eq!(reply.message_type(), MessageType::Response);
    assert_eq!(reply.queries(), request.queries());
    assert!(reply.recursion_available());
}

// ---------------------------------------------------------------- UDP answers

#[tokio::test]
async fn allowed_name_is_forwarded_and_answered() {
    let upstream = FakeUpstream::start().await;
    let h = start(vec![upstream.addr], PATIENCE).await;
    let request = query("allowed.test.", RecordType::A);
    let (reply, _) = ask_udp(h.udp_addr, &request).await;

    assert_echoes(&reply, &request);
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert_eq!(ipv4s(&reply), vec![Ipv4Addr::new(127, 0, 0, 7)]);
    assert_eq!(upstream.queries(), 1);

    let events = h.policy.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].agent.as_deref(), Some(AGENT));
    assert_eq!(events[0].name, "allowed.test");
    assert_eq!(events[0].qtype, "A");
    assert_eq!(events[0].outcome, DnsOutcome::Answered);
    assert_eq!(
        events[0].addrs,
        vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7))]
    );
    assert_eq!(events[0].ttl, 300);
}

#[tokio::test]
async fn aaaa_is_forwarded() {
    let upstream = FakeUpstream::start().await;
    let h = start(vec![upstream.addr], PATIENCE).await;
    let request = query("allowed.test.", RecordType::AAAA);
    let (reply, _) = ask_udp(h.udp_addr, &request).await;

    assert_echoes(&reply, &request);
    let expected: Ipv6Addr = "fd00::7".parse().unwrap();
    let got: Vec<Ipv6Addr> = reply
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            Some(RData::AAAA(aaaa)) => Some(aaaa.0),
            _ => None,
        })
        .collect();
    assert_eq!(got, vec![expected]);
    assert_eq!(upstream.queries(), 1);
}

#[tokio::test]
async fn cname_chain_addresses_are_reported() {
    let upstream = FakeUpstream::start().await;
    let h = start(vec![upstream.addr], PATIENCE).await;
    let request = query("alias.test.", RecordType::A);
    let (reply, _) = ask_udp(h.udp_addr, &request).await;

    assert_eq!(reply.answers().len(), 2);
    let events = h.policy.events();
    assert_eq!(
        events[0].addrs,
        vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 8))]
    );
    assert_eq!(events[0].ttl, 30);
}

#[tokio::test]
async fn disallowed_name_is_nxdomain_and_never_forwarded() {
    let upstream = FakeUpstream::start().await;
    let h = start(vec![upstream.addr], PATIENCE).await;
    let request = with_edns(query("c2VjcmV0.exfil.example.", RecordType::A), 1232);
    let (reply, _) = ask_udp(h.udp_addr, &request).await;

    assert_echoes(&reply, &request);
    assert_eq!(reply.response_code(), ResponseCode::NXDomain);
    assert!(reply.answers().is_empty());
    assert!(reply.extensions().is_some(), "EDNS client gets OPT back");
    assert_eq!(upstream.queries(), 0);
    let events = h.policy.events();
    assert_eq!(events[0].outcome, DnsOutcome::NxDomain);
    assert_eq!(events[0].name, "c2vjcmv0.exfil.example");
}

#[tokio::test]
async fn names_are_compared_case_insensitively() {
    let upstream = FakeUpstream::start().await;
    let h = start(vec![upstream.addr], PATIENCE).await;
    let request = query("AlLoWeD.TeSt.", RecordType::A);
    let (reply, _) = ask_udp(h.udp_addr, &request).await;

    assert_eq!(reply.response_code(), ResponseCode::NoError);
    // The question goes back exactly as asked (0x20-style clients check it).
    assert_eq!(reply.queries()[0].name().to_ascii(), "AlLoWeD.TeSt.");
    assert_eq!(ipv4s(&reply), vec![Ipv4Addr::new(127, 0, 0, 7)]);
    assert_eq!(h.policy.asked.lock().unwrap().as_slice(), ["allowed.test"]);
}

#[tokio::test]
async fn names_with_non_host_bytes_are_nxdomain() {
    let upstream = FakeUpstream::start().await;
    let h = start(vec![upstream.addr], PATIENCE).await;
    // One label "x.y": as text it would read like a subdomain of wild.test.
    let name = Name::from_labels(vec![
        Label::from_raw_bytes(b"x.y").unwrap(),
        Label::from_raw_bytes(b"wild").unwrap(),
        Label::from_raw_bytes(b"test").unwrap(),
    ])
    .unwrap();
    let mut request = query("ok.wild.test.", RecordType::A);
    request.queries_mut()[0].set_name(name);
    let (reply, _) = ask_udp(h.udp_addr, &request).await;

    assert_eq!(reply.response_code(), ResponseCode::NXDomain);
    assert_eq!(upstream.queries(), 0);
    assert!(h.policy.asked.lock().unwrap().is_empty());
    assert_eq!(h.policy.events()[0].outcome, DnsOutcome::NxDomain);
}

#[tokio::test]
async fn unknown_agent_is_refused() {
    let upstream = FakeUpstream::start().await;
    let h = start(vec![upstream.addr], PATIENCE).await;
    let socket = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    h.policy
        .unknown_peers
        .lock()
        .unwrap()
        .insert(socket.local_addr().unwrap());
    let request = query("allowed.test.", RecordType::A);
    let bytes = send_raw(&socket, h.udp_addr, &request.to_vec().unwrap())
        .await
        .unwrap();
    let reply = Message::from_vec(&bytes).unwrap();

    assert_echoes(&reply, &request);
    assert_eq!(reply.response_code(), ResponseCode::Refused);
    assert!(reply.answers().is_empty());
    assert_eq!(upstream.queries(), 0);
    let events = h.policy.events();
    assert_eq!(events[0].agent, None);
    assert_eq!(events[0].outcome, DnsOutcome::Refused);
}

#[tokio::test]
async fn non_in_class_is_refused() {
    let upstream = FakeUpstream::start().await;
    let h = start(vec![upstream.addr], PATIENCE).await;
    let mut request = query("allowed.test.", RecordType::TXT);
    request.queries_mut()[0].set_query_class(DNSClass::CH);
    let (reply, _) = ask_udp(h.udp_addr, &request).await;
    assert_eq!(reply.response_code(), ResponseCode::Refused);
    assert_eq!(upstream.queries(), 0);
}

#[tokio::test]
async fn static_answers_are_local() {
    let upstream = FakeUpstream::start().await;
    let h = start(vec![upstream.addr], PATIENCE).await;

    let request = query("static.test.", RecordType::A);
    let (reply, _) = ask_udp(h.udp_addr, &request).await;
    assert_echoes(&reply, &request);
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert_eq!(ipv4s(&reply), vec![Ipv4Addr::new(10, 1, 2, 3)]);
    assert_eq!(reply.answers()[0].ttl(), 60);

    let (reply, _) = ask_udp(h.udp_addr, &query("static.test.", RecordType::AAAA)).await;
    assert_eq!(reply.answers().len(), 1);
    assert_eq!(
        reply.answers()[0].data(),
        Some(&RData::AAAA(AAAA("fd00::5".parse().unwrap())))
    );

    let (reply, _) = ask_udp(h.udp_addr, &query("static.test.", RecordType::HTTPS)).await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert!(reply.answers().is_empty());

    assert_eq!(upstream.queries(), 0);
    let outcomes: Vec<DnsOutcome> = h.policy.events().iter().map(|e| e.outcome).collect();
    assert_eq!(outcomes, vec![DnsOutcome::Static; 3]);
}

#[tokio::test]
async fn unforwarded_types_get_nodata_without_upstream() {
    let upstream = FakeUpstream::start().await;
    let h = start(vec![upstream.addr], PATIENCE).await;
    for qtype in [
        RecordType::TXT,
        RecordType::NULL,
        RecordType::MX,
        RecordType::ANY,
    ] {
        let request = query("allowed.test.", qtype);
        let (reply, _) = ask_udp(h.udp_addr, &request).await;
        assert_echoes(&reply, &request);
        assert_eq!(reply.response_code(), ResponseCode::NoError, "{qtype}");
        assert!(reply.answers().is_empty(), "{qtype}");
    }
    assert_eq!(upstream.queries(), 0);
}

#[tokio::test]
async fn only_the_question_travels_upstream() {
    let upstream = FakeUpstream::start().await;
    let h = start(vec![upstream.addr], PATIENCE).await;
    let mut request = query("allowed.test.", RecordType::A);
    request.add_additional(Record::from_rdata(
        Name::from_ascii("allowed.test.").unwrap(),
        0,
        RData::TXT(TXT::new(vec!["smuggled-payload".to_string()])),
    ));
    let (reply, _) = ask_udp(h.udp_addr, &request).await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);

    let seen = upstream.seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let forwarded = Message::from_vec(&seen[0]).unwrap();
    assert!(forwarded.additionals().is_empty());
    assert_ne!(forwarded.id(), request.id());
    assert!(!seen[0].windows(b"smuggled".len()).any(|w| w == b"smuggled"));
}

// ---------------------------------------------------------------- protocol errors

#[tokio::test]
async fn malformed_packets_do_not_crash_the_server() {
    let upstream = FakeUpstream::start().await;
    let h = start(vec![upstream.addr], SHORT).await;
    let socket = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();

    // Too short for a header: dropped.
    socket.send_to(&[1, 2, 3], h.udp_addr).await.unwrap();
    let mut buf = [0u8; 512];
    let silent = tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await;
    assert!(silent.is_err(), "a headerless packet must get no reply");

    // A readable header (ID 0xBEEF, one question) followed by junk: FORMERR.
    let mut packet = vec![0xBE, 0xEF, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    packet.extend_from_slice(&[0x3f, b'a', b'b']);
    let bytes = send_raw(&socket, h.udp_addr, &packet).await.unwrap();
    let reply = Message::from_vec(&bytes).unwrap();
    assert_eq!(reply.id(), 0xBEEF);
    assert_eq!(reply.response_code(), ResponseCode::FormErr);

    // A response sent to the server is not answered.
    let mut response = query("allowed.test.", RecordType::A);
    response.set_message_type(MessageType::Response);
    socket
        .send_to(&response.to_vec().unwrap(), h.udp_addr)
        .await
        .unwrap();
    let silent = tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await;
    assert!(silent.is_err(), "responses must not be answered");

    // Still serving.
    let (reply, _) = ask_udp(h.udp_addr, &query("allowed.test.", RecordType::A)).await;
    assert_eq!(ipv4s(&reply), vec![Ipv4Addr::new(127, 0, 0, 7)]);
    assert!(!h.server.is_finished());
}

#[tokio::test]
async fn two_questions_are_formerr() {
    let upstream = FakeUpstream::start().await;
    let h = start(vec![upstream.addr], PATIENCE).await;
    let mut request = query("allowed.test.", RecordType::A);
    request.add_query(Query::query(
        Name::from_ascii("other.test.").unwrap(),
        RecordType::A,
    ));
    let (reply, _) = ask_udp(h.udp_addr, &request).await;
    assert_eq!(reply.id(), request.id());
    assert_eq!(reply.response_code(), ResponseCode::FormErr);
    assert_eq!(upstream.queries(), 0);
}

#[tokio::test]
async fn other_opcodes_are_notimp() {
    let upstream = FakeUpstream::start().await;
    let h = start(vec![upstream.addr], PATIENCE).await;
    let mut request = query("allowed.test.", RecordType::SOA);
    request.set_op_code(OpCode::Notify);
    let (reply, _) = ask_udp(h.udp_addr, &request).await;
    assert_eq!(reply.id(), request.id());
    assert_eq!(reply.op_code(), OpCode::Notify);
    assert_eq!(reply.response_code(), ResponseCode::NotImp);
    assert_eq!(upstream.queries(), 0);
}

// ---------------------------------------------------------------- sizes and TCP

#[tokio::test]
async fn large_answers_are_truncated_for_plain_udp_clients() {
    let upstream = FakeUpstream::start().await;
    let h = start(vec![upstream.addr], PATIENCE).await;

    let request = query("big.test.", RecordType::A);
    let (reply, len) = ask_udp(h.udp_addr, &request).await;
    assert!(len <= 512, "{len} bytes");
    assert!(reply.truncated());
    assert_eq!(reply.id(), request.id());
    assert_eq!(reply.queries(), request.queries());
    assert!(reply.answers().is_empty());

    let request = with_edns(query("big.test.", RecordType::A), 4096);
    let (reply, len) = ask_udp(h.udp_addr, &request).await;
    assert!(len > 512);
    assert!(!reply.truncated());
    assert_eq!(ipv4s(&reply).len(), 40);
}

#[tokio::test]
async fn truncated_upstream_reply_is_retried_over_tcp() {
    let upstream = FakeUpstream::start().await;
    let h = start(vec![upstream.addr], PATIENCE).await;
    let (reply, _) = ask_udp(h.udp_addr, &query("tc.test.", RecordType::A)).await;
    assert!(!reply.truncated());
    assert_eq!(ipv4s(&reply), vec![Ipv4Addr::new(127, 0, 0, 9)]);
    assert_eq!(upstream.udp_queries.load(Ordering::SeqCst), 1);
    assert_eq!(upstream.tcp_queries.load(Ordering::SeqCst), 1);
}

async fn tcp_pair(
    h: &Harness,
    agent: Option<&str>,
) -> (TcpStream, JoinHandle<std::io::Result<()>>) {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (stream, peer) = listener.accept().await.unwrap();
    let served =
        tokio::spawn(Arc::clone(&h.resolver).serve_tcp_conn(stream, agent.map(String::from), peer));
    (client, served)
}

#[tokio::test]
async fn tcp_serves_several_queries_per_connection() {
    let upstream = FakeUpstream::start().await;
    let h = start(vec![upstream.addr], PATIENCE).await;
    let (mut client, served) = tcp_pair(&h, Some(AGENT)).await;

    let first = query("allowed.test.", RecordType::A);
    let second = query("nope.test.", RecordType::A);
    let third = query("big.test.", RecordType::A);
    // Written back to back: framing, not packet boundaries, separates them.
    let mut both = Vec::new();
    for message in [&first, &second] {
        let bytes = message.to_vec().unwrap();
        both.extend_from_slice(&u16::try_from(bytes.len()).unwrap().to_be_bytes());
        both.extend_from_slice(&bytes);
    }
    client.write_all(&both).await.unwrap();

    let reply = Message::from_vec(&read_framed(&mut client).await.unwrap()).unwrap();
    assert_echoes(&reply, &first);
    assert_eq!(ipv4s(&reply), vec![Ipv4Addr::new(127, 0, 0, 7)]);
    let reply = Message::from_vec(&read_framed(&mut client).await.unwrap()).unwrap();
    assert_echoes(&reply, &second);
    assert_eq!(reply.response_code(), ResponseCode::NXDomain);

    // No 512-byte limit over TCP.
    write_framed(&mut client, &third.to_vec().unwrap()).await;
    let reply = Message::from_vec(&read_framed(&mut client).await.unwrap()).unwrap();
    assert!(!reply.truncated());
    assert_eq!(ipv4s(&reply).len(), 40);

    drop(client);
    served.await.unwrap().unwrap();
    assert_eq!(upstream.queries(), 2);
}

#[tokio::test]
async fn tcp_without_agent_is_refused() {
    let upstream = FakeUpstream::start().await;
    let h = start(vec![upstream.addr], PATIENCE).await;
    let (mut client, _served) = tcp_pair(&h, None).await;
    let request = query("allowed.test.", RecordType::A);
    write_framed(&mut client, &request.to_vec().unwrap()).await;
    let reply = Message::from_vec(&read_framed(&mut client).await.unwrap()).unwrap();
    assert_eq!(reply.response_code(), ResponseCode::Refused);
    assert_eq!(upstream.queries(), 0);
}

// ---------------------------------------------------------------- upstream failure

#[tokio::test]
async fn dead_upstream_gives_servfail_within_the_timeout() {
    // Bound but never read: queries to it simply go unanswered.
    let silent = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let h = start(vec![silent.local_addr().unwrap()], SHORT).await;
    let started = Instant::now();
    let request = query("allowed.test.", RecordType::A);
    let (reply, _) = ask_udp(h.udp_addr, &request).await;
    let took = started.elapsed();

    assert_echoes(&reply, &request);
    assert_eq!(reply.response_code(), ResponseCode::ServFail);
    assert!(took >= SHORT, "{took:?}");
    assert!(took < SHORT * 5, "{took:?}");
    assert_eq!(h.policy.events()[0].outcome, DnsOutcome::UpstreamFailed);
}

#[tokio::test]
async fn next_upstream_is_tried_after_a_dead_one() {
    let silent = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let upstream = FakeUpstream::start().await;
    let h = start(vec![silent.local_addr().unwrap(), upstream.addr], SHORT).await;
    let (reply, _) = ask_udp(h.udp_addr, &query("allowed.test.", RecordType::A)).await;
    assert_eq!(ipv4s(&reply), vec![Ipv4Addr::new(127, 0, 0, 7)]);
    assert_eq!(upstream.queries(), 1);
}

#[tokio::test]
async fn slow_upstream_does_not_block_other_queries() {
    let silent = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let upstream = FakeUpstream::start().await;
    let h = start(vec![silent.local_addr().unwrap(), upstream.addr], PATIENCE).await;

    // Stuck behind the silent first server for PATIENCE.
    let stuck_socket = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    stuck_socket
        .send_to(
            &query("allowed.test.", RecordType::A).to_vec().unwrap(),
            h.udp_addr,
        )
        .await
        .unwrap();
    // A static answer meanwhile must come back at once.
    let started = Instant::now();
    let (reply, _) = ask_udp(h.udp_addr, &query("static.test.", RecordType::A)).await;
    assert_eq!(ipv4s(&reply), vec![Ipv4Addr::new(10, 1, 2, 3)]);
    assert!(started.elapsed() < Duration::from_secs(1));
}

// ---------------------------------------------------------------- lookup_ip

#[tokio::test]
async fn lookup_ip_merges_and_caches() {
    let upstream = FakeUpstream::start().await;
    let h = start(vec![upstream.addr], PATIENCE).await;
    let expected = vec![
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        IpAddr::V6("2001:db8::7".parse().unwrap()),
    ];

    assert_eq!(h.resolver.lookup_ip("public.test").await.unwrap(), expected);
    assert_eq!(upstream.queries(), 2, "one A and one AAAA query");
    assert_eq!(
        h.resolver.lookup_ip("Public.Test.").await.unwrap(),
        expected
    );
    assert_eq!(upstream.queries(), 2, "second lookup served from cache");

    // Negative answers are remembered too.
    let err = h.resolver.lookup_ip("missing.test").await.unwrap_err();
    assert!(matches!(err, DnsError::NoAddresses { .. }), "{err}");
    assert_eq!(upstream.queries(), 4);
    assert!(h.resolver.lookup_ip("missing.test").await.is_err());
    assert_eq!(upstream.queries(), 4);
}

#[tokio::test]
async fn lookup_ip_uses_static_map_and_literals_first() {
    let upstream = FakeUpstream::start().await;
    let h = start(vec![upstream.addr], PATIENCE).await;
    assert_eq!(
        h.resolver.lookup_ip("static.test").await.unwrap(),
        h.policy.statics["static.test"]
    );
    assert_eq!(
        h.resolver.lookup_ip("127.0.0.42").await.unwrap(),
        vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 42))]
    );
    assert!(matches!(
        h.resolver.lookup_ip("bad name.test").await,
        Err(DnsError::InvalidName { .. })
    ));
    assert_eq!(upstream.queries(), 0);
}

#[tokio::test]
async fn lookup_ip_never_gives_this_host_or_the_link_for_a_name_from_dns() {
    let upstream = FakeUpstream::start().await;
    let h = start(vec![upstream.addr], PATIENCE).await;
    // An answer of only such addresses is refused, fresh and from the cache.
    for _ in 0..2 {
        match h.resolver.lookup_ip("rebind.test").await {
            Err(err @ DnsError::OffLimits { .. }) => {
                let text = err.to_string();
                assert!(text.contains("169.254.169.254"), "{text}");
                assert!(text.contains("::ffff:127.0.0.1"), "{text}");
            }
            other => panic!("expected OffLimits, got {other:?}"),
        }
    }
    assert_eq!(
        upstream.queries(),
        2,
        "the second lookup came from the cache"
    );
    // The rest of a mixed answer stands.
    assert_eq!(
        h.resolver.lookup_ip("mixed.test").await.unwrap(),
        vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 8))]
    );
    // What the agent is answered is not the daemon's business here: its
    // connects land on the proxy whatever address it dials.
    let (reply, _) = ask_udp(h.udp_addr, &query("allowed.test.", RecordType::A)).await;
    assert_eq!(ipv4s(&reply), vec![Ipv4Addr::new(127, 0, 0, 7)]);
}

#[tokio::test]
async fn lookup_ip_public_only_refuses_private_networks_from_dns_alone() {
    let upstream = FakeUpstream::start().await;
    let h = start_reaching(vec![upstream.addr], PATIENCE, DnsReach::PublicOnly).await;
    // allowed.test answers 127.0.0.7 and fd00::7 (unique local).
    assert!(matches!(
        h.resolver.lookup_ip("allowed.test").await,
        Err(DnsError::OffLimits { .. })
    ));
    assert_eq!(
        h.resolver.lookup_ip("public.test").await.unwrap(),
        vec![
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            IpAddr::V6("2001:db8::7".parse().unwrap()),
        ]
    );
    // The operator's static map still names private addresses.
    assert_eq!(
        h.resolver.lookup_ip("static.test").await.unwrap(),
        h.policy.statics["static.test"]
    );
    // The default reaches the unique-local address.
    let h = start(vec![upstream.addr], PATIENCE).await;
    assert_eq!(
        h.resolver.lookup_ip("allowed.test").await.unwrap(),
        vec![IpAddr::V6("fd00::7".parse().unwrap())]
    );
}

#[tokio::test]
async fn lookup_ip_reports_dead_upstreams() {
    let silent = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let h = start(vec![silent.local_addr().unwrap()], SHORT).await;
    let err = h.resolver.lookup_ip("allowed.test").await.unwrap_err();
    assert!(matches!(err, DnsError::UpstreamTimeout { .. }), "{err}");
}

// ---------------------------------------------------------------- resolv.conf

fn resolv_conf(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

#[test]
fn resolv_conf_nameservers_are_read_in_order() {
    let file = resolv_conf(
        "# Generated by NetworkManager\n\
         ; another comment style\n\
         search example.com corp.example\n\
         options edns0 trust-ad ndots:2\n\
         nameserver 192.0.2.53\n\
         #nameserver 192.0.2.99\n\
         nameserver   2001:db8::53   # trailing words are ignored\n\
         nameserver fe80::1%2\n\
         nameserver fe80::2%eth0\n\
         nameserver 192.0.2.53\n\
         domain example.com\n",
    );
    let servers = upstreams_from_resolv_conf(file.path()).unwrap();
    assert_eq!(
        servers,
        vec![
            "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
            "[2001:db8::53]:53".parse().unwrap(),
            "[fe80::1%2]:53".parse().unwrap(),
        ]
    );
}

#[test]
fn resolv_conf_errors_name_the_file() {
    let file = resolv_conf("search example.com\nnameserver not-an-ip\n");
    let err = upstreams_from_resolv_conf(file.path()).unwrap_err();
    assert!(
        matches!(err, DnsError::BadNameserver { line: 2, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains(&file.path().display().to_string()), "{text}");
    assert!(text.contains(":2:"), "{text}");

    let file = resolv_conf("# nothing here\noptions rotate\n");
    let err = upstreams_from_resolv_conf(file.path()).unwrap_err();
    assert!(matches!(err, DnsError::NoNameservers { .. }), "{err}");
    assert!(err.to_string().contains(&file.path().display().to_string()));

    let missing = std::path::Path::new("/nonexistent/airlock-test/resolv.conf");
    let err = upstreams_from_resolv_conf(missing).unwrap_err();
    assert!(matches!(err, DnsError::ReadResolvConf { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("/nonexistent/airlock-test/resolv.conf")
    );
}

#[test]
fn outcome_labels_are_stable() {
    let all = [
        (DnsOutcome::Answered, "answered"),
        (DnsOutcome::Static, "static"),
        (DnsOutcome::NxDomain, "nxdomain"),
        (DnsOutcome::Refused, "refused"),
        (DnsOutcome::UpstreamFailed, "upstream_failed"),
    ];
    for (outcome, label) in all {
        assert_eq!(outcome.as_str(), label);
    }
}
