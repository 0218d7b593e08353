//! gRPC answers from a host that holds secrets, scrubbed message by
//! message.
//!
//! A gRPC body is a series of messages, each behind a flag byte and a
//! 4-byte length. A placeholder is rarely as long as the secret it
//! replaces, so bytes scrubbed as they stream would leave a length wrong,
//! and the client would read a message cut short or run into the next one
//! (grpcio then returns no message and status OK). So each message is read
//! whole, scrubbed, and sent on with its new length. A secret split
//! across two messages cannot be replaced in either, so it ends the call
//! with an error, and so does a message that may end inside a secret
//! ([`Scrubber::ends_inside_a_secret`]): whether the next message goes on
//! with the rest (a split) or not (a secret cut short), no part of it
//! may go. A compressed message
//! cannot be read: Airlock asks for none (`grpc-accept-encoding:
//! identity`), and one that comes all the same ends the call with an
//! error, as does a message longer than gRPC's own default limit, a large
//! message when the daemon's budget for bodies held whole is spent, or a
//! body that ends inside a message.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{BufMut as _, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, header};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::SemaphorePermit;
use zeroize::Zeroizing;

use super::{Follow, Scrubber};

/// The largest message read whole: gRPC's default limit on a message a
/// client receives.
pub const GRPC_MESSAGE_MAX: usize = 4 * 1024 * 1024;

/// Messages up to this size are held without asking the budget: a call
/// holds at most one message at a time.
const HELD_FREELY: usize = 64 * 1024;

/// A share of the daemon's budget for bytes held whole, or `None` when it
/// is spent.
pub type Hold = fn(usize) -> Option<SemaphorePermit<'static>>;

const PREFIX: usize = 5;
/// The flag bit of a compressed message.
pub const COMPRESSED_FLAG: u8 = 1;

/// Whether a response is gRPC's framing (gRPC, and gRPC-Web in binary);
/// gRPC-Web as base64 text frames its messages inside the text.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
        .is_some_and(|t| {
            t.starts_with("application/grpc") && !t.starts_with("application/grpc-web-text")
        })
}

/// Ask for messages the scrubber can read: `identity` is the one message
/// coding every gRPC server takes.
pub fn ask_for_uncompressed_messages(headers: &mut HeaderMap) {
    headers.insert("grpc-accept-encoding", HeaderValue::from_static("identity"));
}

#[derive(Debug, thiserror::Error)]
pub enum GrpcScrubError {
    #[error(
        "the upstream sent a compressed gRPC message though Airlock asked for none; a compressed message cannot be checked for echoed credentials"
    )]
    Compressed,
    #[error(
        "the upstream sent a gRPC message of {len} bytes; Airlock reads messages from a host that holds secrets whole, up to {GRPC_MESSAGE_MAX} bytes"
    )]
    TooLarge { len: usize },
    #[error("the upstream's answer ended inside a gRPC message")]
    CutShort,
    #[error(
        "the upstream sent a credential split across two gRPC messages, which cannot be replaced in either"
    )]
    Split,
    #[error(
        "the upstream sent a gRPC message that may end inside a credential: its last bytes begin as one does and stop before its length"
    )]
    EndsInsideASecret,
    #[error(
        "the daemon already holds as many bodies and messages read whole as its budget allows; a gRPC message of {len} bytes was not read"
    )]
    BudgetSpent { len: usize },
    #[error("reading the upstream's answer")]
    Upstream(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pin_project_lite::pin_project! {
    /// A gRPC response body with secrets replaced message by message; see
    /// the module's documentation.
    pub struct GrpcScrubBody<B> {
        #[pin]
        inner: B,
        scrubber: Scrubber,
        // The message being read (prefix included); wiped when dropped.
        partial: Zeroizing<Vec<u8>>,
        hold: Hold,
        // The budget's share for a large message being read.
        held: Option<SemaphorePermit<'static>>,
        // The last bytes of the messages before, as the upstream sent them,
        // for a secret that begins in one and ends in another; wiped when
        // dropped.
        before: Zeroizing<Vec<u8>>,
        // Trailers waiting until the messages before them are sent.
        trailers: Option<HeaderMap>,
        ended: bool,
        // Secrets that came after the body began.
        follow: Option<Follow>,
    }
}

impl<B> GrpcScrubBody<B> {
    /// The body scrubbed, from each piece on, for the secrets `follow`'s
    /// source has come to know as well.
    pub fn following(mut self, follow: Option<Follow>) -> Self {
        self.follow = follow;
        self
    }

    /// `hold` gives a share of the budget for a large message while it is
    /// read.
    pub fn new(inner: B, scrubber: &Scrubber, hold: Hold) -> Self {
        GrpcScrubBody {
            inner,
            scrubber: scrubber.clone(),
            partial: Zeroizing::new(Vec::new()),
            hold,
            held: None,
            before: Zeroizing::new(Vec::new()),
            trailers: None,
            ended: false,
            follow: None,
        }
    }
}

/// The first whole message in `partial`, scrubbed and prefixed with its
/// new length, taken out of it; `None` until one is whole.
fn next_message(
    scrubber: &Scrubber,
    partial: &mut Zeroizing<Vec<u8>>,
    hold: Hold,
    held: &mut Option<SemaphorePermit<'static>>,
    before: &mut Zeroizing<Vec<u8>>,
) -> Result<Option<Bytes>, GrpcScrubError> {
    let Some(prefix) = partial.first_chunk::<PREFIX>() else {
        return Ok(None);
    };
    let flags = prefix[0];
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if flags & COMPRESSED_FLAG != 0 {
        return Err(GrpcScrubError::Compressed);
    }
    if len > GRPC_MESSAGE_MAX {
        return Err(GrpcScrubError::TooLarge { len });
    }
    let Some(message) = partial.get(PREFIX..PREFIX + len) else {
        if len > HELD_FREELY && held.is_none() {
            *held = Some(hold(len).ok_or(GrpcScrubError::BudgetSpent { len })?);
        }
        return Ok(None);
    };
    if scrubber.straddles(before, message) {
        return Err(GrpcScrubError::Split);
    }
    // What the next message's check needs: the last bytes of all so far,
    // however short each message.
    before.extend_from_slice(message);
    let keep = before.len().saturating_sub(scrubber.carry());
    before.drain(..keep);
    if scrubber.ends_inside_a_secret(before) {
        return Err(GrpcScrubError::EndsInsideASecret);
    }
    let scrubbed = scrubber.scrub_bytes(message);
    let body = scrubbed.as_deref().unwrap_or(message);
    let mut out = BytesMut::with_capacity(PREFIX + body.len());
    out.put_u8(flags);
    // At most GRPC_MESSAGE_MAX plus the longest placeholder: it fits.
    out.put_u32(body.len() as u32);
    out.put_slice(body);
    partial.drain(..PREFIX + len);
    *held = None;
    Ok(Some(out.freeze()))
}

impl<B> Body for GrpcScrubBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = GrpcScrubError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, GrpcScrubError>>> {
        let mut this = self.project();
        loop {
            if let Some(message) = next_message(
                this.scrubber,
                this.partial,
                *this.hold,
                this.held,
                this.before,
            )? {
                return Poll::Ready(Some(Ok(Frame::data(message))));
            }
            if *this.ended {
                if !this.partial.is_empty() {
                    this.partial.clear();
                    return Poll::Ready(Some(Err(GrpcScrubError::CutShort)));
                }
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let frame = match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(err)) => {
                    return Poll::Ready(Some(Err(GrpcScrubError::Upstream(err.into()))));
                }
                None => {
                    *this.ended = true;
                    continue;
                }
            };
            if let Some(follow) = this.follow {
                follow.catch_up(this.scrubber);
            }
            match frame.into_data() {
                Ok(chunk) => this.partial.extend_from_slice(&chunk),
                Err(frame) => {
                    if let Ok(mut trailers) = frame.into_trailers() {
                        this.scrubber.scrub_headers(&mut trailers);
                        *this.trailers = Some(trailers);
                        *this.ended = true;
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // A call that fails at once is answered with its status in the
        // head and no body ("trailers-only"): over HTTP/2 that head must
        // end the stream, or the client reads an empty body that ends
        // without the trailers it then expects.
        self.trailers.is_none()
            && self.partial.is_empty()
            && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
