//! The proxy's side toward the real servers: the connector, which resolves
//! names with the daemon's resolver (never the address the agent dialled)
//! and speaks verified TLS (system roots plus the configured extra CAs),
//! and the pooled hyper client that an HTTP/2 agent's requests share
//! (one per agent, `h2_pools`). HTTP/1.1 requests go on connections of
//! their own (`h1_pool`).

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Limited};
use hyper_util::{
    client::legacy::{
        Client,
        connect::{Connected, Connection},
    },
    rt::{TokioExecutor, TokioIo},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::h1_pool::{H1Pool, Slot};
use crate::{creds::Transport, dns::Resolver};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const UPSTREAM_READ_BUFFER_MAX: usize = 64 * 1024;
/// The largest response head passed on. hyper's read buffer limit alone
/// is soft (a head that arrives in one read may pass it), so the size is
/// also checked once the head is parsed: a head past it is a 502 whatever
/// the timing. (nginx refuses past 4-8 KiB by default.)
pub const RESPONSE_HEAD_MAX: usize = UPSTREAM_READ_BUFFER_MAX;

/// The size of a response head as it came, near enough: names, values and
/// the `: ` and CRLF of each line.
pub fn head_size(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}
/// A token endpoint's answer is a small JSON object.
const TOKEN_ANSWER_MAX: usize = 64 * 1024;

pub type UpstreamClient = Client<Connector, super::body::ProxyBody>;

/// A pooling client; `http2_only` for plain-text upstreams spoken to in
/// HTTP/2 from the first byte.
pub fn client(
    resolver: Arc<Resolver>,
    tls: Arc<rustls::ClientConfig>,
    http2_only: bool,
) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .http2_only(http2_only)
        .pool_idle_timeout(Duration::from_secs(90))
        // Without a timer the idle timeout is only applied when the pool
        // is next asked for a connection: an agent that stopped would keep
        // its idle upstream connections open for as long as the upstream
        // allows.
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .pool_max_idle_per_host(64)
        // hyper grows its read buffer to 400 KiB per connection on large
        // bodies; capped at 64 KiB, 1 MiB bodies move as fast and the
        // daemon's peak RSS stays lower (BENCHMARKS.md). It also bounds an
        // upstream's response head.
        .http1_max_buf_size(UPSTREAM_READ_BUFFER_MAX)
        // Agents' own Host header was checked against the SNI; keep it.
        .set_host(true)
        .build(Connector::new(resolver, tls))
}

/// Token requests (OAuth2, GitHub App) go out on the same verified,
/// daemon-resolved connections as agents' HTTP/1.1 requests.
pub struct TokenTransport<'a>(pub &'a Arc<H1Pool>);

impl Transport for TokenTransport<'_> {
    async fn send(&self, req: Request<Bytes>) -> Result<(StatusCode, Bytes), String> {
        // Its own slot: the connection goes back to the pool once the
        // answer is read.
        let slot = Slot::new(self.0.clone(), None);
        let resp = self
            .0
            .send(&slot, req.map(super::body::full))
            .await
            .map_err(|err| error_chain(&err))?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, TOKEN_ANSWER_MAX)
            .collect()
            .await
            .map_err(|err| format!("reading the answer: {}", error_chain(&*err)))?
            .to_bytes();
        Ok((parts.status, body))
    }
}

/// An error and its sources, as one line.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = describe(err);
    let mut source = err.source();
    while let Some(s) = source {
        let next = describe(s);
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// One error's own text. An HTTP/2 GOAWAY from the upstream is named by
/// its code alone: h2 quotes the frame's debug data, which is the
/// upstream's text, and an upstream that holds a secret could put any
/// piece of it there, in an escaped form no scrubber cuts. The text
/// reaches the agent (a 502's `detail`) and the log.
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    match err.downcast_ref::<h2::Error>() {
        Some(h2) if h2.is_go_away() && h2.is_remote() => match h2.reason() {
            Some(reason) => format!("connection error received: {reason}"),
            None => "connection error received".to_owned(),
        },
        _ => err.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no host in upstream URI {uri}")]
    NoHost { uri: String },
    #[error("resolving {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: crate::dns::DnsError,
    },
    #[error("connecting to {host} ({addrs}): {source}")]
    Connect {
        host: String,
        addrs: String,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {host}: timed out after {}s", CONNECT_TIMEOUT.as_secs())]
    Timeout { host: String },
    #[error("TLS with {host}: {source}")]
    Tls {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("{host} is not a valid TLS server name")]
    ServerName { host: String },
}

#[derive(Clone)]
pub struct Connector {
    resolver: Arc<Resolver>,
    tls: Arc<rustls::ClientConfig>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = UpstreamIo;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(uri).await })
    }
}

impl Connector {
    pub fn new(resolver: Arc<Resolver>, tls: Arc<rustls::ClientConfig>) -> Connector {
        Connector { resolver, tls }
    }

    async fn connect(self, uri: Uri) -> Result<UpstreamIo, ConnectError> {
        let host = uri.host().ok_or_else(|| ConnectError::NoHost {
            uri: uri.to_string(),
        })?;
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        self.connect_to(https, host, port).await
    }

    /// A connection to `host` (a name, or an IP literal, bracketed or
    /// not) as the daemon resolves it, with verified TLS when `https`.
    pub async fn connect_to(
        &self,
        https: bool,
        host: &str,
        port: u16,
    ) -> Result<UpstreamIo, ConnectError> {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let ips = self
            .resolver
            .lookup_ip(&host)
            .await
            .map_err(|source| ConnectError::Resolve {
                host: host.clone(),
                source,
            })?;
        let addrs: Vec<SocketAddr> = ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, super::dial::dial(&addrs))
            .await
            .map_err(|_| ConnectError::Timeout { host: host.clone() })?
            .map_err(|source| ConnectError::Connect {
                host: host.clone(),
                addrs: addrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                source,
            })?;
        // Nagle on the upstream leg stalls small writes behind delayed ACKs.
        let _ = tcp.set_nodelay(true);
        if !https {
            return Ok(UpstreamIo {
                inner: TokioIo::new(Stream::new(Conn::Plain(tcp))),
                h2: false,
            });
        }
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|_| ConnectError::ServerName { host: host.clone() })?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|source| ConnectError::Tls { host, source })?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok(UpstreamIo {
            inner: TokioIo::new(Stream::new(Conn::Tls(Box::new(tls)))),
            h2,
        })
    }
}

/// The connection to an upstream, plain or TLS, and what its writes and
/// reads have shown of it.
pub struct Stream {
    conn: Conn,
    /// A write failed because the upstream is gone: see [`gone`].
    gone: bool,
    /// Reading has come to the end of the stream, or failed.
    read_ended: bool,
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Whether a write's error says that the upstream is gone (it reset the
/// connection). It may have answered first: a server that refuses an
/// upload before reading it (a 413, a 401) answers and closes, and the
/// close, with the upload unread, resets the connection under the upload.
/// hyper would report the failed write in place of the answer waiting to
/// be read ("error writing a body to connection: Broken pipe"). So such a
/// write is taken as sent, and so is every one after it while reading goes
/// on: the answer, if there is one, is read; if there is none, the read
/// fails on the reset as the write did. Once reading has ended, writes fail
/// again, so that a tunnel (a WebSocket) whose upstream is gone still ends.
fn gone(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

impl Stream {
    fn new(conn: Conn) -> Stream {
        Stream {
            conn,
            gone: false,
            read_ended: false,
        }
    }

    fn tcp(&self) -> &TcpStream {
        match &self.conn {
            Conn::Plain(tcp) => tcp,
            Conn::Tls(tls) => tls.get_ref().0,
        }
    }

    /// `written` as it went, unless the upstream is (or has just turned
    /// out to be) gone while its answer may still be read: then `sent`,
    /// as if it had been.
    fn unless_gone<T>(
        &mut self,
        sent: T,
        written: impl FnOnce(Pin<&mut (dyn AsyncWrite + Unpin)>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if self.gone {
            return Poll::Ready(if self.read_ended {
                Err(io::ErrorKind::BrokenPipe.into())
            } else {
                Ok(sent)
            });
        }
        let conn: &mut (dyn AsyncWrite + Unpin) = match &mut self.conn {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.as_mut(),
        };
        match written(Pin::new(conn)) {
            Poll::Ready(Err(err)) if gone(&err) && !self.read_ended => {
                self.gone = true;
                Poll::Ready(Ok(sent))
            }
            other => other,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let (room, before) = (buf.remaining(), buf.filled().len());
        let read = match &mut this.conn {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        match &read {
            Poll::Ready(Ok(())) if room > 0 && buf.filled().len() == before => {
                this.read_ended = true
            }
            Poll::Ready(Err(_)) => this.read_ended = true,
            _ => {}
        }
        read
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .unless_gone(buf.len(), |conn| conn.poll_write(cx, buf))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        self.get_mut()
            .unless_gone(len, |conn| conn.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match &self.conn {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().unless_gone((), |conn| conn.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .unless_gone((), |conn| conn.poll_shutdown(cx))
    }
}

/// A connection to an upstream, as hyper's client wants it.
pub struct UpstreamIo {
    inner: TokioIo<Stream>,
    h2: bool,
}

impl UpstreamIo {
    /// Whether the upstream has neither closed this idle connection nor
    /// sent anything on it, as curl checks before it reuses one: with no
    /// task reading an idle connection, a close (an idle timeout, which is
    /// 5 s on Node's servers) is only seen here. Bytes waiting (an alert, a
    /// `close_notify`) or the end of the stream both mean it is not to be
    /// used: a request written into a closed connection is lost with it.
    pub fn seems_open(&self) -> bool {
        let tcp = self.inner.inner().tcp();
        let mut byte = [std::mem::MaybeUninit::uninit()];
        // The socket is non-blocking (tokio's): an open, quiet one has
        // nothing to peek at.
        matches!(
            socket2::SockRef::from(tcp).peek(&mut byte),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock
        )
    }
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        if self.h2 {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::{io::AsyncWriteExt as _, net::TcpListener};

    use super::*;

    fn plain(tcp: TcpStream) -> UpstreamIo {
        UpstreamIo {
            inner: TokioIo::new(Stream::new(Conn::Plain(tcp))),
            h2: false,
        }
    }

    async fn pair() -> (UpstreamIo, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let dialled = TcpStream::connect(listener.local_addr().expect("addr"));
        let (ours, accepted) = tokio::join!(dialled, listener.accept());
        (plain(ours.expect("connect")), accepted.expect("accept").0)
    }

    /// Waits (bounded) for what the peer did to reach this end.
    async fn settle(io: &UpstreamIo) -> bool {
        for _ in 0..100 {
            if !io.seems_open() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    #[tokio::test]
    async fn a_quiet_connection_seems_open_one_closed_or_spoken_on_does_not() {
        let (io, _peer) = pair().await;
        assert!(settle(&io).await, "a quiet connection seems closed");

        let (io, peer) = pair().await;
        drop(peer);
        assert!(!settle(&io).await, "a closed connection seems open");

        let (io, mut peer) = pair().await;
        peer.write_all(b"\x15").await.expect("write");
        assert!(
            !settle(&io).await,
            "a connection with bytes waiting seems open"
        );
    }

    async fn write(io: &mut UpstreamIo, bytes: &[u8]) -> io::Result<usize> {
        std::future::poll_fn(|cx| hyper::rt::Write::poll_write(Pin::new(&mut *io), cx, bytes)).await
    }

    async fn read(io: &mut UpstreamIo) -> io::Result<Vec<u8>> {
        let mut space = [std::mem::MaybeUninit::uninit(); 64];
        let mut buf = hyper::rt::ReadBuf::uninit(&mut space);
        std::future::poll_fn(|cx| {
            hyper::rt::Read::poll_read(Pin::new(&mut *io), cx, buf.unfilled())
        })
        .await?;
        Ok(buf.filled().to_vec())
    }

    /// The peer answers, then resets the connection, as a server that
    /// closes with an upload unread does.
    async fn answered_then_reset(answer: &[u8]) -> UpstreamIo {
        let (mut io, mut peer) = pair().await;
        write(&mut io, b"POST /upload").await.expect("first write");
        peer.write_all(answer).await.expect("answer");
        socket2::SockRef::from(&peer)
            .set_linger(Some(Duration::ZERO))
            .expect("linger 0");
        drop(peer);
        tokio::time::sleep(Duration::from_millis(50)).await;
        io
    }

    #[tokio::test]
    async fn writes_to_an_upstream_that_answered_and_reset_are_taken_as_sent() {
        let mut io = answered_then_reset(b"HTTP/1.1 413 Too Large").await;
        for _ in 0..3 {
            assert_eq!(
                write(&mut io, b"more of the body").await.expect("write"),
                16
            );
        }
        assert_eq!(
            read(&mut io).await.expect("read"),
            b"HTTP/1.1 413 Too Large"
        );
        assert_ended(&mut io).await;
    }

    #[tokio::test]
    async fn an_upstream_reset_without_an_answer_fails_the_read() {
        let mut io = answered_then_reset(b"").await;
        assert_eq!(write(&mut io, b"more").await.expect("write"), 4);
        assert_ended(&mut io).await;
    }

    /// Nothing more to read: the read fails as the write did, or finds the
    /// end; and with reading over, writes fail again, so that a tunnel to
    /// the upstream ends.
    async fn assert_ended(io: &mut UpstreamIo) {
        let after = read(io).await;
        assert!(
            matches!(&after, Ok(rest) if rest.is_empty()) || after.as_ref().is_err_and(gone),
            "{after:?}"
        );
        let write = write(io, b"into a tunnel").await;
        assert!(write.as_ref().is_err_and(gone), "{write:?}");
    }
}
