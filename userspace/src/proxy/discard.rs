//! The body of a request Airlock refused before reading it, read and thrown
//! away after the refusal is sent.
//!
//! A client still uploading when its 403 arrives must be let finish, or it
//! never reads the 403:
//! - Python's `requests` (http.client) sends the whole body before it reads
//!   a byte of the answer. A connection closed under it is an `SSLError`.
//! - Over HTTP/2, a body dropped unread makes the server reset the stream
//!   (RST_STREAM NO_ERROR, as RFC 9113 §8.1 allows), and curl before 8.1
//!   (Debian 12's 7.88) reports that as error 92 in place of the answer.
//!
//! Reading is bounded as nginx bounds its lingering close, so that a
//! refused client cannot hold the daemon's attention for long.

use std::time::Duration;

use http::{HeaderMap, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::time::{Instant, timeout_at};

/// Longest wait for the next piece of the body (nginx's lingering_timeout).
const IDLE: Duration = Duration::from_secs(5);
/// Longest time spent reading it in all (nginx's lingering_time).
const LINGER: Duration = Duration::from_secs(30);
/// Most bytes read: a larger upload is cut off (a reset over HTTP/2, a
/// closed connection over HTTP/1.1), as it was before its first byte.
const MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Reads and drops what is left of `body` in a task of its own, once the
/// refusal is on its way. A client that asked to be told before it sends
/// (`Expect: 100-continue`) is not waited for: the refusal tells it not to.
pub fn after_refusal(body: Incoming, headers: &HeaderMap) {
    use http_body::Body as _;
    if body.is_end_stream() || expects_continue(headers) {
        return;
    }
    tokio::spawn(drain(body, IDLE, LINGER, MAX_BYTES));
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
    B: http_body::Body + Unpin,
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
    use std::{
        pin::Pin,
        task::{Context, Poll},
    };

    use bytes::Bytes;
    use http_body::Frame;
    use tokio::sync::mpsc;

    use super::*;

    /// A body whose pieces a test sends; it ends when the sender is dropped.
    struct Fed(mpsc::Receiver<Bytes>);

    impl http_body::Body for Fed {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|piece| piece.map(|p| Ok(Frame::data(p))))
        }
    }

    fn fed(pieces: &[&'static [u8]]) -> (Fed, mpsc::Sender<Bytes>) {
        let (tx, rx) = mpsc::channel(16);
        for p in pieces {
            tx.try_send(Bytes::from_static(p)).expect("room");
        }
        (Fed(rx), tx)
    }

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
            while tx.send(Bytes::from_static(b"x")).await.is_ok() {
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
