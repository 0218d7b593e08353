//! Asking the real resolvers: UDP first, TCP when the reply is truncated.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;
use tracing::debug;

use super::DnsError;

/// What we advertise upstream: the size RFC 9715 / DNS flag day 2020
/// recommend to stay clear of IP fragmentation.
pub(super) const EDNS_PAYLOAD: u16 = 1232;

/// Room for any UDP reply an upstream might send despite our advertised size.
const UDP_REPLY_BUF: usize = 4096;

pub(super) struct Upstreams {
    servers: Vec<SocketAddr>,
    timeout: Duration,
}

impl Upstreams {
    pub(super) fn new(servers: Vec<SocketAddr>, timeout: Duration) -> Self {
        Self { servers, timeout }
    }

    pub(super) fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Ask each server in order; the first usable reply wins, otherwise the
    /// last server's error is returned.
    pub(super) async fn query(&self, name: &Name, qtype: RecordType) -> Result<Message, DnsError> {
        let mut last = DnsError::NoUpstreams;
        for &server in &self.servers {
            match self.query_one(server, name, qtype).await {
                Ok(reply) => return Ok(reply),
                Err(err) => {
                    debug!(%server, %name, %qtype, error = %err, "upstream try failed");
                    last = err;
                }
            }
        }
        Err(last)
    }

    async fn query_one(
        &self,
        server: SocketAddr,
        name: &Name,
        qtype: RecordType,
    ) -> Result<Message, DnsError> {
        let id: u16 = rand::random();
        let packet = build_query(id, name, qtype)
            .to_vec()
            .map_err(|source| DnsError::Encode {
                name: name.to_ascii(),
                source,
            })?;
        let expected = Expected {
            server,
            id,
            name,
            qtype,
        };
        let timed_out = || DnsError::UpstreamTimeout {
            server,
            name: name.to_ascii(),
        };

        let reply = timeout(self.timeout, udp_exchange(&packet, &expected))
            .await
            .map_err(|_| timed_out())??;
        let reply = if reply.truncated() {
            timeout(self.timeout, tcp_exchange(&packet, &expected))
                .await
                .map_err(|_| timed_out())??
        } else {
            reply
        };

        // These say "this server cannot help", not "the name does not
        // exist": another server may do better.
        match reply.response_code() {
            ResponseCode::ServFail
            | ResponseCode::Refused
            | ResponseCode::NotImp
            | ResponseCode::FormErr => Err(DnsError::UpstreamRcode {
                server,
                name: name.to_ascii(),
                rcode: reply.response_code(),
            }),
            _ => Ok(reply),
        }
    }
}

/// A new query rather than the agent's packet: only the question travels
/// upstream, with an ID the agent cannot predict.
fn build_query(id: u16, name: &Name, qtype: RecordType) -> Message {
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name.clone(), qtype))
        .set_edns(edns);
    message
}

struct Expected<'a> {
    server: SocketAddr,
    id: u16,
    name: &'a Name,
    qtype: RecordType,
}

impl Expected<'_> {
    fn io_error(&self, source: std::io::Error) -> DnsError {
        DnsError::UpstreamIo {
            server: self.server,
            name: self.name.to_ascii(),
            source,
        }
    }

    fn parse(&self, bytes: &[u8]) -> Result<Message, DnsError> {
        Message::from_vec(bytes).map_err(|source| DnsError::UpstreamMalformed {
            server: self.server,
            name: self.name.to_ascii(),
            source,
        })
    }

    /// A reply is ours only if it answers our ID and exactly our question
    /// (names compare case-insensitively).
    fn matches(&self, reply: &Message) -> bool {
        reply.message_type() == MessageType::Response
            && reply.id() == self.id
            && reply.queries().len() == 1
            && reply.queries()[0].name() == self.name
            && reply.queries()[0].query_type() == self.qtype
            && reply.queries()[0].query_class() == DNSClass::IN
    }
}

async fn udp_exchange(packet: &[u8], expected: &Expected<'_>) -> Result<Message, DnsError> {
    let local: SocketAddr = match expected.server.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| expected.io_error(e))?;
    // Connected, so the kernel drops datagrams from any other source.
    socket
        .connect(expected.server)
        .await
        .map_err(|e| expected.io_error(e))?;
    socket
        .send(packet)
        .await
        .map_err(|e| expected.io_error(e))?;

    let mut buf = vec![0u8; UDP_REPLY_BUF];
    loop {
        let len = socket
            .recv(&mut buf)
            .await
            .map_err(|e| expected.io_error(e))?;
        // A stray or forged datagram must not end the wait for the real
        // reply; the caller's timeout bounds the loop.
        match expected.parse(&buf[..len]) {
            Ok(reply) if expected.matches(&reply) => return Ok(reply),
            Ok(_) => {
                debug!(server = %expected.server, "ignoring UDP reply with another ID or question")
            }
            Err(err) => debug!(error = %err, "ignoring unreadable UDP reply"),
        }
    }
}

async fn tcp_exchange(packet: &[u8], expected: &Expected<'_>) -> Result<Message, DnsError> {
    let mut stream = TcpStream::connect(expected.server)
        .await
        .map_err(|e| expected.io_error(e))?;
    let len = u16::try_from(packet.len()).map_err(|_| {
        expected.io_error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "query longer than TCP framing allows",
        ))
    })?;
    let mut framed = Vec::with_capacity(packet.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(packet);
    stream
        .write_all(&framed)
        .await
        .map_err(|e| expected.io_error(e))?;

    let mut len = [0u8; 2];
    stream
        .read_exact(&mut len)
        .await
        .map_err(|e| expected.io_error(e))?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream
        .read_exact(&mut reply)
        .await
        .map_err(|e| expected.io_error(e))?;
    let reply = expected.parse(&reply)?;
    if !expected.matches(&reply) {
        return Err(DnsError::UpstreamMismatch {
            server: expected.server,
            name: expected.name.to_ascii(),
        });
    }
    Ok(reply)
}

/// The A/AAAA addresses a reply gives for `qname`, following the CNAME chain
/// inside the answer section, and their smallest TTL (0 when none).
pub(super) fn addresses(reply: &Message, qname: &Name) -> (Vec<IpAddr>, u32) {
    let mut names = vec![qname.clone()];
    // Each pass can add at most one link; the answer count bounds the chain.
    for _ in 0..reply.answers().len() {
        let mut grew = false;
        for record in reply.answers() {
            if let Some(RData::CNAME(target)) = record.data()
                && names.contains(record.name())
                && !names.contains(&target.0)
            {
                names.push(target.0.clone());
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }

    let mut addrs = Vec::new();
    let mut ttl = u32::MAX;
    for record in reply.answers() {
        if !names.contains(record.name()) {
            continue;
        }
        let addr = match record.data() {
            Some(RData::A(a)) => IpAddr::V4(a.0),
            Some(RData::AAAA(aaaa)) => IpAddr::V6(aaaa.0),
            _ => continue,
        };
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
        ttl = ttl.min(record.ttl());
    }
    if addrs.is_empty() {
        ttl = 0;
    }
    (addrs, ttl)
}
