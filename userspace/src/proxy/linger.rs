//! An agent connection that Airlock closes first is closed the way nginx's
//! lingering close does it: its write side shut, and what the agent still
//! sends read and thrown away for a while, before the socket goes.
//!
//! A socket closed with unread bytes in it makes the kernel answer with a
//! reset, and the reset can overtake the answer written just before it.
//! hyper answers a request head past the read buffer's cap with a 431 and
//! closes; Python's `requests`, still sending that head, got
//! `ConnectionResetError` in place of the 431 whenever the machine was
//! busy. The same holds for any answer hyper closes the connection after
//! while the agent is still writing.
//!
//! A connection the agent ended first (its reads reached the end) is
//! closed at once: nothing is left to read.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    time::{Instant, timeout_at},
};

use super::agent_body::{IDLE, LINGER};

/// Most bytes read while lingering: an agent sending more is cut off.
const LINGER_MAX_BYTES: u64 = 16 * 1024 * 1024;

pub struct Lingering<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    /// Taken when dropped, to linger with.
    inner: Option<T>,
    /// The agent's side reached its end, or failed: no linger needed.
    read_done: bool,
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Lingering<T> {
    pub fn new(inner: T) -> Self {
        Lingering {
            inner: Some(inner),
            read_done: false,
        }
    }

    fn inner(&mut self) -> io::Result<&mut T> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Lingering<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let wanted = buf.remaining() > 0;
        let polled = Pin::new(self.inner()?).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if wanted && buf.filled().len() == before => self.read_done = true,
            Poll::Ready(Err(_)) => self.read_done = true,
            _ => {}
        }
        polled
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.inner()?).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.inner()?).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|t| t.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.inner()?).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.inner()?).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Lingering<T> {
    fn drop(&mut self) {
        let Some(io) = self.inner.take() else {
            return;
        };
        if self.read_done {
            return;
        }
        // Dropped in the connection's task, on the runtime.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(io, IDLE, LINGER, LINGER_MAX_BYTES));
        }
    }
}

/// Shuts the write side (after what is written is sent), then reads until
/// the agent's end, a pause of `idle`, `total` in all, or `max` bytes.
/// Returns the bytes read, for the tests.
async fn linger<T>(mut io: T, idle: Duration, total: Duration, max: u64) -> u64
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let end = Instant::now() + total;
    if timeout_at(end.min(Instant::now() + idle), io.shutdown())
        .await
        .is_err()
    {
        return 0;
    }
    let mut buf = [0u8; 4096];
    let mut read = 0u64;
    while read <= max {
        match timeout_at(end.min(Instant::now() + idle), io.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => read += n as u64,
            _ => break,
        }
    }
    read
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn what_the_agent_still_sends_is_read_until_it_ends() {
        let (ours, mut agent) = tokio::io::duplex(64);
        let lingering = tokio::spawn(linger(ours, S, 10 * S, 1000));
        agent.write_all(b"the rest of a head").await.expect("write");
        // The write side was shut: the agent reads the end.
        let mut got = Vec::new();
        agent.read_to_end(&mut got).await.expect("read");
        assert!(got.is_empty());
        drop(agent);
        assert_eq!(lingering.await.expect("task"), 18);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_agent_is_given_up_on_after_the_idle_time() {
        let (ours, _agent) = tokio::io::duplex(64);
        let started = Instant::now();
        assert_eq!(linger(ours, S, 10 * S, 1000).await, 0);
        assert_eq!(started.elapsed(), S);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_dropped_while_the_agent_still_sends_lingers() {
        let (ours, mut agent) = tokio::io::duplex(64);
        drop(Lingering::new(ours));
        // Closed at once, the agent's write would fail (a reset, on a
        // socket); lingering, it is read, and the agent then sees the end.
        agent
            .write_all(b"the rest of a head")
            .await
            .expect("the agent's write is taken");
        let mut got = Vec::new();
        agent.read_to_end(&mut got).await.expect("read");
        assert!(got.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_the_agent_ended_is_not_lingered_on() {
        let (ours, agent) = tokio::io::duplex(64);
        let mut ours = Lingering::new(ours);
        drop(agent);
        let mut buf = [0u8; 8];
        assert_eq!(ours.read(&mut buf).await.expect("read"), 0);
        assert!(ours.read_done);
        let (ours, _agent) = tokio::io::duplex(64);
        let ours = Lingering::new(ours);
        assert!(!ours.read_done, "an open connection is lingered on");
    }
}
