//! Serving agents: datagrams on the UDP socket, length-framed messages on
//! TCP connections the proxy hands over.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Header, Message, MessageType, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::debug;

use super::Resolver;

/// Large enough for any query with EDNS; a longer datagram is cut and then
/// fails to parse, which is the right outcome for it.
const UDP_QUERY_BUF: usize = 4096;

/// What a UDP client gets at most even if its EDNS claims more.
const UDP_MAX_RESPONSE: u16 = 4096;

/// A TCP connection that sends nothing for this long is closed, so idle
/// connections cannot pile up.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

impl Resolver {
    /// Serve UDP on an already-bound socket until the task is dropped/aborted.
    pub async fn serve_udp(self: Arc<Self>, socket: UdpSocket) -> io::Result<()> {
        let socket = Arc::new(socket);
        // Query tasks live in a JoinSet so that aborting this task also
        // aborts the queries still waiting on upstreams.
        let mut tasks = JoinSet::new();
        let mut buf = vec![0u8; UDP_QUERY_BUF];
        loop {
            while tasks.try_join_next().is_some() {}
            let (len, peer) = match socket.recv_from(&mut buf).await {
                Ok(received) => received,
                // ICMP errors for earlier replies surface here on some
                // kernels; they concern one peer, not the socket.
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    debug!(error = %err, "transient UDP receive error");
                    continue;
                }
                Err(err) => return Err(err),
            };
            let Ok(permit) = Arc::clone(&self.udp_slots).try_acquire_owned() else {
                debug!(%peer, "too many DNS queries in flight, dropping one");
                continue;
            };
            let packet = buf[..len].to_vec();
            let this = Arc::clone(&self);
            let socket = Arc::clone(&socket);
            tasks.spawn(async move {
                let _permit = permit;
                let agent = this.policy.agent_for_udp_peer(peer);
                let Some(reply) = this
                    .handle_packet(&packet, agent.as_deref(), peer, true)
                    .await
                else {
                    return;
                };
                if let Err(err) = socket.send_to(&reply, peer).await {
                    debug!(%peer, error = %err, "cannot send DNS reply");
                }
            });
        }
    }

    /// Serve one TCP DNS connection (2-byte length framing, several queries
    /// per connection), agent already known.
    pub async fn serve_tcp_conn(
        self: Arc<Self>,
        mut stream: TcpStream,
        agent: Option<String>,
        peer: SocketAddr,
    ) -> io::Result<()> {
        loop {
            let mut len = [0u8; 2];
            match timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut len)).await {
                Err(_) => return Ok(()),
                Ok(Err(err)) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(Err(err)) => return Err(err),
                Ok(Ok(_)) => {}
            }
            let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
            timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut packet))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "DNS query not completed")
                })??;

            // Nothing sensible to say to a message without a readable
            // header; the client would wait forever, so hang up instead.
            let Some(reply) = self
                .handle_packet(&packet, agent.as_deref(), peer, false)
                .await
            else {
                return Ok(());
            };
            let Ok(reply_len) = u16::try_from(reply.len()) else {
                return Ok(());
            };
            let mut framed = Vec::with_capacity(reply.len() + 2);
            framed.extend_from_slice(&reply_len.to_be_bytes());
            framed.extend_from_slice(&reply);
            stream.write_all(&framed).await?;
        }
    }

    /// The encoded reply to one packet, or None when it gets no reply at all.
    async fn handle_packet(
        &self,
        packet: &[u8],
        agent: Option<&str>,
        peer: SocketAddr,
        udp: bool,
    ) -> Option<Vec<u8>> {
        let request = match Message::from_vec(packet) {
            Ok(request) => request,
            Err(err) => {
                debug!(%peer, error = %err, "unparsable DNS message");
                return format_error(packet);
            }
        };
        // Never answer a response: a forged one could set two resolvers
        // talking to each other forever.
        if request.message_type() != MessageType::Query {
            return None;
        }
        let response = self.respond(&request, agent, peer).await;
        let max = if udp {
            // 512 without EDNS (RFC 1035), else what the client said it takes.
            request.max_payload().min(UDP_MAX_RESPONSE)
        } else {
            u16::MAX
        };
        encode(&response, max)
    }
}

/// FORMERR for a message whose header reads but whose body does not.
fn format_error(packet: &[u8]) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(packet)).ok()?;
    if header.message_type() != MessageType::Query {
        return None;
    }
    let response = Message::error_msg(header.id(), header.op_code(), ResponseCode::FormErr);
    response.to_vec().ok()
}

/// Encode within `max` bytes. A response that does not fit goes out as
/// header, question and OPT with TC set, and the client retries over TCP:
/// a partial RRset could be cached as if it were complete (RFC 2181 9).
fn encode(response: &Message, max: u16) -> Option<Vec<u8>> {
    match response.to_vec() {
        Ok(bytes) if bytes.len() <= usize::from(max) => return Some(bytes),
        Ok(_) => {}
        Err(err) => debug!(error = %err, "cannot encode DNS response, sending it truncated"),
    }
    let mut truncated = Message::new();
    truncated
        .set_header(*response.header())
        .set_truncated(true)
        .add_queries(response.queries().iter().cloned());
    if let Some(edns) = response.extensions() {
        truncated.set_edns(edns.clone());
    }
    match truncated.to_vec() {
        Ok(bytes) => Some(bytes),
        Err(err) => {
            debug!(error = %err, "cannot encode even a truncated DNS response");
            None
        }
    }
}
