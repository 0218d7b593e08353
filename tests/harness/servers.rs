//! Servers on loopback that tests aim agents at.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

/// A TCP server that answers every connection with one line naming
/// itself, then echoes; it counts the connections it accepted.
pub struct TagServer {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
}

impl TagServer {
    pub fn start(bind: &str, tag: &str) -> TagServer {
        let listener = TcpListener::bind(bind).expect("bind tag server");
        deepen_backlog(&listener);
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let tag = tag.to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let tag = tag.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let _ = stream.write_all(format!("{tag}\n").as_bytes());
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        TagServer { addr, accepted }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// std listens with a backlog of 128. Tests that hold hundreds of
/// connections, while others run, outpace this server's accept thread;
/// past 128 the kernel drops the handshake and the proxy's dial waits for
/// a retransmission, 1, 3, 7, 15 s later: longer than an agent's timeout.
/// Calling `listen` again on a listening socket only sets its backlog.
fn deepen_backlog(listener: &TcpListener) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: listen on a descriptor the listener owns and keeps open.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
}

/// A UDP server that counts datagrams (to prove none arrived).
pub struct UdpSink {
    pub addr: SocketAddr,
    pub received: Arc<AtomicUsize>,
}

impl UdpSink {
    pub fn start(bind: &str) -> UdpSink {
        let sock = UdpSocket::bind(bind).expect("bind udp sink");
        let addr = sock.local_addr().expect("addr");
        let received = Arc::new(AtomicUsize::new(0));
        let count = received.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while sock.recv_from(&mut buf).is_ok() {
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        UdpSink { addr, received }
    }
}

/// A tiny authoritative DNS server: answers A queries for the names it is
/// given, NXDOMAIN for the rest, and counts the queries it saw. A name
/// given more than once gets its addresses in turn, one per A query, as
/// a load balancer's name does.
pub struct FakeDns {
    pub addr: SocketAddr,
    pub queries: Arc<AtomicUsize>,
    pub names_seen: Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeDns {
    pub fn start(bind: &str, records: &[(&str, [u8; 4])]) -> FakeDns {
        let sock = UdpSocket::bind(bind).expect("bind fake dns");
        let addr = sock.local_addr().expect("addr");
        let queries = Arc::new(AtomicUsize::new(0));
        let names_seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let records: Vec<(String, [u8; 4])> =
            records.iter().map(|(n, ip)| (n.to_string(), *ip)).collect();
        let (count, seen) = (queries.clone(), names_seen.clone());
        let mut turns: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, peer)) = sock.recv_from(&mut buf) {
                count.fetch_add(1, Ordering::SeqCst);
                let Some((name, qend)) = parse_question(&buf[..n]) else {
                    continue;
                };
                if let Ok(mut s) = seen.lock() {
                    s.push(name.clone());
                }
                let qtype = u16::from_be_bytes([buf[qend - 4], buf[qend - 3]]);
                let all: Vec<&(String, [u8; 4])> = records
                    .iter()
                    .filter(|(r, _)| r.eq_ignore_ascii_case(&name))
                    .collect();
                let found = if all.is_empty() {
                    None
                } else if qtype == 1 {
                    let turn = turns.entry(name.clone()).or_default();
                    *turn += 1;
                    Some(all[(*turn - 1) % all.len()])
                } else {
                    Some(all[0])
                };
                let mut out = Vec::with_capacity(512);
                out.extend_from_slice(&buf[0..2]);
                let rcode = if found.is_some() { 0 } else { 3 };
                out.extend_from_slice(&[0x81, 0x80 | rcode]);
                let answers = u16::from(found.is_some() && qtype == 1);
                out.extend_from_slice(&[0, 1, 0, answers as u8, 0, 0, 0, 0]);
                out.extend_from_slice(&buf[12..qend]);
                if let (Some((_, ip)), 1) = (found, answers) {
                    out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
                    out.extend_from_slice(ip);
                }
                let _ = sock.send_to(&out, peer);
            }
        });
        FakeDns {
            addr,
            queries,
            names_seen,
        }
    }

    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

/// (lower-case name, offset just past QTYPE/QCLASS)
fn parse_question(msg: &[u8]) -> Option<(String, usize)> {
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(msg.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    (msg.len() >= i + 4).then(|| (labels.join("."), i + 4))
}
