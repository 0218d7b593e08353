//! Bytes relayed uninspected: `tcp:` rules and passthrough tunnels.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("connecting to {addrs} timed out after {}s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout { addrs: String },
    #[error("connecting to {addrs}: {source}")]
    Connect {
        addrs: String,
        #[source]
        source: std::io::Error,
    },
}

/// A connection to the first of `addrs` that accepts (`dial`).
pub async fn connect(addrs: &[SocketAddr]) -> Result<TcpStream, RelayError> {
    let named = || {
        addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, super::dial::dial(addrs))
        .await
        .map_err(|_| RelayError::ConnectTimeout { addrs: named() })?
        .map_err(|source| RelayError::Connect {
            addrs: named(),
            source,
        })?;
    // Nagle on either leg stalls small writes behind delayed ACKs.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Each direction's buffer, allocated when the tunnel opens and held while
/// it lasts (idle SSH and WebSocket tunnels last for hours). One TLS
/// record's worth: 64 KiB cost four times the memory per tunnel and no
/// measurable CPU or throughput on 1 MiB bodies; 8 KiB cost about 15 %
/// more CPU per MiB (BENCHMARKS.md).
const SPLICE_BUFFER: usize = 16 * 1024;

/// How a tunnel ended, and what crossed it.
pub struct Spliced {
    pub from_agent: u64,
    pub to_agent: u64,
    /// Cut because `stop` came first (a reload took the permission away).
    pub stopped: bool,
}

/// Copies both ways until both sides are done, or until `stop` completes,
/// which closes both. The byte counts hold either way, also after an
/// error.
pub async fn splice(
    agent: TcpStream,
    upstream: TcpStream,
    stop: impl Future<Output = ()>,
) -> Spliced {
    let mut agent = Tally::new(agent);
    let mut upstream = Tally::new(upstream);
    let stopped = tokio::select! {
        _ = tokio::io::copy_bidirectional_with_sizes(
            &mut agent,
            &mut upstream,
            SPLICE_BUFFER,
            SPLICE_BUFFER,
        ) => false,
        () = stop => true,
    };
    Spliced {
        from_agent: agent.read,
        to_agent: upstream.read,
        stopped,
    }
}

/// A stream that counts the bytes read from it.
struct Tally<S> {
    inner: S,
    read: u64,
}

impl<S> Tally<S> {
    fn new(inner: S) -> Self {
        Tally { inner, read: 0 }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tally<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tally<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::{TcpListener, TcpStream},
    };

    use super::splice;

    /// A connected pair: (the end the test keeps, the end given to splice).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (kept, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (kept.expect("connect"), accepted.expect("accept").0)
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_are_counted_until_a_stop_cuts_the_tunnel() {
        let (mut agent, agent_end) = pair().await;
        let (mut upstream, upstream_end) = pair().await;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let tunnel = tokio::spawn(splice(agent_end, upstream_end, async {
            let _ = stop_rx.await;
        }));
        agent.write_all(b"hello").await.expect("write");
        let mut got = [0u8; 5];
        upstream.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello");
        upstream.write_all(b"hi").await.expect("write");
        let mut got = [0u8; 2];
        agent.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hi");

        let _ = stop_tx.send(());
        let spliced = tunnel.await.expect("the tunnel's task");
        assert!(spliced.stopped);
        assert_eq!((spliced.from_agent, spliced.to_agent), (5, 2));
        // Both ends were closed with the tunnel.
        let mut rest = Vec::new();
        assert_eq!(agent.read_to_end(&mut rest).await.expect("eof"), 0);
        assert_eq!(upstream.read_to_end(&mut rest).await.expect("eof"), 0);
    }

    #[tokio::test]
    async fn a_tunnel_both_sides_close_ends_on_its_own() {
        let (agent, agent_end) = pair().await;
        let (upstream, upstream_end) = pair().await;
        drop((agent, upstream));
        let spliced = splice(agent_end, upstream_end, std::future::pending()).await;
        assert!(!spliced.stopped);
        assert_eq!((spliced.from_agent, spliced.to_agent), (0, 0));
    }
}
