//! An answer that comes while an HTTP/2 agent is still uploading, sent
//! with its body in one go.
//!
//! curl stops sending on an error status that arrives before its upload is
//! done: over HTTP/2 it ends the stream there, short of the length it
//! declared. The server's h2 takes that as a protocol error and resets
//! the stream, discarding whatever of the answer's body it had not yet
//! written. Sent as the head alone and the body a moment later (as it
//! comes from the upstream), the answer reached curl as a 413 with no
//! body and `curl: (92) ... PROTOCOL_ERROR`. An answer gathered first is
//! queued in one piece, and curl has all of it before it can react.
//!
//! Queued in one piece is not yet written in one piece: h2 writes the head
//! as soon as it is queued, and the body only once the stream has been
//! given send capacity, a turn of the connection's task later. curl,
//! quick enough, had the head alone. So a gathered answer also waits,
//! within the same limit, for the agent to finish sending its body (or for
//! Airlock to stop reading it): an agent that has sent all it declared
//! has nothing to cut short.
//!
//! Only small answers of a declared length are gathered, within a time
//! limit: a stream that answers while the agent still sends (gRPC's
//! bidirectional calls) must go on at once.

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::{
    sync::oneshot,
    time::{Instant, timeout_at},
};

/// Largest answer gathered: an error page, not a download.
pub const GATHER_MAX: u64 = 64 * 1024;
/// Longest wait for the rest of an answer whose head has come.
pub const GATHER_TIME: Duration = Duration::from_secs(2);

/// Whether an answer of `size` is one to gather.
pub fn worth_gathering(size: &SizeHint) -> bool {
    size.exact().is_some_and(|n| n <= GATHER_MAX)
}

/// `body` as far as it came within `limit` and [`GATHER_MAX`] bytes: every
/// frame up to its end, or those that came in time, and the rest of it
/// after them. The byte bound holds for what the body yields, which may be
/// more than the upstream declared: a compressed answer is decoded for the
/// scrubber before it is gathered. A body gathered whole is handed on once
/// `agent_sent` resolves too, or at the limit.
pub async fn gather<B>(
    mut body: B,
    limit: Duration,
    agent_sent: Option<oneshot::Receiver<()>>,
) -> Gathered<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    let deadline = Instant::now() + limit;
    let mut frames = VecDeque::new();
    let read_all = async {
        let mut held = 0u64;
        while held <= GATHER_MAX {
            match body.frame().await {
                Some(Ok(frame)) => {
                    held += frame.data_ref().map_or(0, |d| d.len() as u64);
                    frames.push_back(frame);
                }
                Some(Err(e)) => return Some(Err(e)),
                None => return Some(Ok(())),
            }
        }
        None
    };
    let end = timeout_at(deadline, read_all).await.ok().flatten();
    if let (Some(Ok(())), Some(sent)) = (&end, agent_sent) {
        // Resolved, or its sender dropped: either way no more is coming.
        let _ = timeout_at(deadline, sent).await;
    }
    Gathered {
        frames,
        end,
        rest: body,
    }
}

/// A body read in part or whole: its frames, then how it ended (or, when
/// it had not, the rest of it).
pub struct Gathered<B: Body> {
    frames: VecDeque<Frame<Bytes>>,
    end: Option<Result<(), B::Error>>,
    rest: B,
}

// Nothing in it is pinned in place: the frames and the error are moved
// out, and the rest of the body is Unpin.
impl<B: Body + Unpin> Unpin for Gathered<B> {}

impl<B> Body for Gathered<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        if let Some(frame) = this.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match this.end.take() {
            Some(Ok(())) => {
                this.end = Some(Ok(()));
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                this.end = Some(Ok(()));
                Poll::Ready(Some(Err(e)))
            }
            None => Pin::new(&mut this.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        if !self.frames.is_empty() {
            return false;
        }
        match &self.end {
            Some(Ok(())) => true,
            // An error still to be handed on.
            Some(Err(_)) => false,
            None => self.rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let held: u64 = self
            .frames
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        match &self.end {
            Some(_) => SizeHint::with_exact(held),
            None => {
                let rest = self.rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + held);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + held);
                }
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_bodies::fed_with as fed;

    const S: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_body_that_ends_in_time_is_gathered_whole() {
        let (body, tx) = fed(&[b"too ", b"large"]);
        drop(tx);
        let gathered = gather(body, S, None).await;
        assert!(gathered.end.is_some());
        assert_eq!(gathered.size_hint().exact(), Some(9));
        let all = gathered.collect().await.expect("body").to_bytes();
        assert_eq!(all, "too large");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_still_coming_at_the_limit_goes_on_after_what_came() {
        let (body, tx) = fed(&[b"first "]);
        let gathered = gather(body, S, None).await;
        assert!(gathered.end.is_none());
        assert!(!gathered.is_end_stream());
        tx.send(Bytes::from_static(b"second")).expect("send");
        drop(tx);
        let all = gathered.collect().await.expect("body").to_bytes();
        assert_eq!(all, "first second");
    }

    #[tokio::test(start_paused = true)]
    async fn gathering_stops_past_its_byte_bound_and_the_rest_streams() {
        // An answer that grows past what it declared (decoded, say).
        let piece: &'static [u8] = &[b'x'; 16 * 1024];
        let (body, tx) = fed(&[piece; 8]);
        drop(tx);
        let gathered = gather(body, S, None).await;
        assert!(gathered.end.is_none(), "gathered past the bound");
        let held: usize = gathered
            .frames
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len())
            .sum();
        assert!(held as u64 <= GATHER_MAX + piece.len() as u64, "{held}");
        let all = gathered.collect().await.expect("body").to_bytes();
        assert_eq!(all.len(), 8 * piece.len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_answer_waits_for_the_agent_to_finish_sending() {
        let started = Instant::now();
        let (body, tx) = fed(&[b"too large"]);
        drop(tx);
        let (sending, sent) = oneshot::channel::<()>();
        tokio::spawn(async move {
            tokio::time::sleep(S / 4).await;
            drop(sending);
        });
        let gathered = gather(body, S, Some(sent)).await;
        assert_eq!(started.elapsed(), S / 4);
        assert_eq!(
            gathered.collect().await.expect("body").to_bytes(),
            "too large"
        );
        // An agent that never finishes is waited for until the limit only.
        let started = Instant::now();
        let (body, tx) = fed(&[b"too large"]);
        drop(tx);
        let (_sending, sent) = oneshot::channel::<()>();
        let gathered = gather(body, S, Some(sent)).await;
        assert_eq!(started.elapsed(), S);
        assert!(gathered.end.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_still_coming_does_not_wait_for_the_agent() {
        let started = Instant::now();
        let (body, _tx) = fed(&[b"first "]);
        let (sending, sent) = oneshot::channel::<()>();
        let gathered = gather(body, S, Some(sent)).await;
        // Not a moment past the limit: the agent's upload is not waited on.
        assert_eq!(started.elapsed(), S);
        assert!(gathered.end.is_none());
        drop(sending);
    }

    #[test]
    fn only_small_answers_of_a_declared_length_are_gathered() {
        assert!(worth_gathering(&SizeHint::with_exact(31)));
        assert!(worth_gathering(&SizeHint::with_exact(GATHER_MAX)));
        assert!(!worth_gathering(&SizeHint::with_exact(GATHER_MAX + 1)));
        // A stream (SSE, gRPC) declares no length.
        assert!(!worth_gathering(&SizeHint::new()));
    }
}
