//! The agent's request body, read to its end even when nothing upstream
//! wants the rest: a request Airlock refused before reading its body, or
//! one whose upstream answered (or failed) before it had read it all.
//!
//! A client still uploading when its answer arrives must be let finish, or
//! it never reads the answer:
//! - Python's `requests` (http.client) sends the whole body before it reads
//!   a byte of the answer. A connection closed under it is an `SSLError`.
//! - Over HTTP/2, a body dropped unread makes the server reset the stream
//!   (RST_STREAM NO_ERROR, as RFC 9113 §8.1 allows), and curl 7.88
//!   (Debian 12's) reports that as error 92 in place of the answer.
//!
//! What is left is read and thrown away in a task of its own, bounded as
//! nginx bounds its lingering close, so that a client cannot hold the
//! daemon's attention for long.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::{
    sync::oneshot,
    time::{Instant, timeout_at},
};

/// Longest wait for the next piece of the body (nginx's lingering_timeout).
pub(super) const IDLE: Duration = Duration::from_secs(5);
/// Longest time spent reading it in all (nginx's lingering_time).
pub(super) const LINGER: Duration = Duration::from_secs(30);
/// Most bytes read: a larger upload is cut off (a reset over HTTP/2, a
/// closed connection over HTTP/1.1), as it would be unread.
const MAX_BYTES: u64 = 64 * 1024 * 1024;

pub struct AgentBody {
    inner: Option<Incoming>,
    /// Read to its end, or broken: nothing left to read away.
    done: bool,
    /// The client waits for `100 Continue`, which hyper sends when the body
    /// is first read: until then, no byte of it is coming, and an answer
    /// without that tells the client to send none.
    waits_for_continue: bool,
    /// Dropped once the client has sent all of its body, or no more of it
    /// will be read: its receiver then resolves ([`AgentBody::until_sent`]).
    sending: Option<oneshot::Sender<()>>,
}

impl AgentBody {
    pub fn new(body: Incoming, headers: &HeaderMap) -> AgentBody {
        // Most requests (GET) have no body: no header to look up.
        let done = body.is_end_stream();
        AgentBody {
            inner: Some(body),
            done,
            waits_for_continue: !done && expects_continue(headers),
            sending: None,
        }
    }

    /// Resolves once the client has sent the whole body, or it is no
    /// longer read (past the limits below, or the client gone); `None`
    /// when there is nothing to wait for. An answer for an HTTP/2 client
    /// still sending waits for it ([`super::early_answer`]). Made on
    /// demand: most requests have no body to wait for.
    pub fn until_sent(&mut self) -> Option<oneshot::Receiver<()>> {
        if self.done
            || self.waits_for_continue
            || self.inner.as_ref().is_none_or(|b| b.is_end_stream())
        {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.sending = Some(tx);
        Some(rx)
    }
}

impl Body for AgentBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        this.waits_for_continue = false;
        let polled = Pin::new(inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.done = true;
            this.sending = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for AgentBody {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if self.done || self.waits_for_continue || body.is_end_stream() {
            return;
        }
        // Dropped on the runtime's threads (in a request's task, or in
        // hyper's connection task); nowhere else to spawn from.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let sending = self.sending.take();
            runtime.spawn(async move {
                drain(body, IDLE, LINGER, MAX_BYTES).await;
                drop(sending);
            });
        }
    }
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::EXPECT)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// How a drain ended, for the tests.
#[derive(Debug, PartialEq, Eq)]
enum Drained {
    /// The client sent the rest of its body.
    Whole(u64),
    /// A limit was reached first, or the client went away.
    CutOff,
}

async fn drain<B>(mut body: B, idle: Duration, linger: Duration, max: u64) -> Drained
where
    B: Body + Unpin,
{
    let end = Instant::now() + linger;
    let mut read: u64 = 0;
    loop {
        let next = timeout_at(end.min(Instant::now() + idle), body.frame()).await;
        match next {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    use bytes::Buf as _;
                    read += data.remaining() as u64;
                    if read > max {
                        return Drained::CutOff;
                    }
                }
            }
            Ok(None) => return Drained::Whole(read),
            Ok(Some(Err(_))) | Err(_) => return Drained::CutOff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_bodies::fed_with as fed;

    const S: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_body_the_client_finishes_is_read_to_its_end() {
        let (body, tx) = fed(&[b"abc", b"de"]);
        drop(tx);
        assert_eq!(drain(body, S, 10 * S, 100).await, Drained::Whole(5));
    }

    #[tokio::test(start_paused = true)]
    async fn reading_stops_past_the_byte_limit() {
        let (body, tx) = fed(&[b"abc", b"de"]);
        drop(tx);
        assert_eq!(drain(body, S, 10 * S, 5).await, Drained::Whole(5));
        let (body, _tx) = fed(&[b"abc", b"def"]);
        assert_eq!(drain(body, S, 10 * S, 5).await, Drained::CutOff);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_given_up_on() {
        let (body, _tx) = fed(&[b"abc"]);
        let started = Instant::now();
        assert_eq!(drain(body, S, 10 * S, 100).await, Drained::CutOff);
        assert_eq!(started.elapsed(), S);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_cut_off_at_the_linger_time() {
        let (body, tx) = fed(&[]);
        tokio::spawn(async move {
            while tx.send(Bytes::from_static(b"x")).is_ok() {
                tokio::time::sleep(S / 2).await;
            }
        });
        let started = Instant::now();
        assert_eq!(drain(body, S, 3 * S, 100).await, Drained::CutOff);
        assert_eq!(started.elapsed(), 3 * S);
    }

    #[test]
    fn only_a_client_waiting_for_100_continue_is_not_waited_for() {
        let mut h = HeaderMap::new();
        assert!(!expects_continue(&h));
        h.insert(header::EXPECT, "100-Continue".parse().expect("value"));
        assert!(expects_continue(&h));
    }
}
