//! A body for tests, fed piece by piece as a test goes.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

pub struct Fed {
    rx: mpsc::UnboundedReceiver<Bytes>,
    /// Bytes still to come, when the body's length is known.
    left: Option<usize>,
    /// Whether the body says it has ended once `left` is 0 (as an
    /// HTTP/1.1 body with a Content-Length does), or only once the sender
    /// is gone (as an HTTP/2 body does at END_STREAM).
    ends_at_length: bool,
}

impl Body for Fed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = self.rx.poll_recv(cx);
        if let (Poll::Ready(Some(piece)), Some(left)) = (&polled, &mut self.left) {
            *left -= piece.len();
        }
        polled.map(|piece| piece.map(|p| Ok(Frame::data(p))))
    }

    fn is_end_stream(&self) -> bool {
        self.ends_at_length && self.left == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        self.left
            .map_or_else(SizeHint::default, |left| SizeHint::with_exact(left as u64))
    }
}

/// A body whose pieces a test sends; it ends when the sender is dropped,
/// or, given its length, once that many bytes have come: as a body with a
/// Content-Length knows which piece is its last.
pub fn fed(length: Option<usize>) -> (Fed, mpsc::UnboundedSender<Bytes>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let body = Fed {
        rx,
        left: length,
        ends_at_length: true,
    };
    (body, tx)
}

/// [`fed`] of a known length, as HTTP/2 sends it: the body tells its
/// length (hyper counts down a Content-Length), but says it has ended
/// only at END_STREAM, which may come later than its last byte.
pub fn fed_as_http2(length: usize) -> (Fed, mpsc::UnboundedSender<Bytes>) {
    let (mut body, tx) = fed(Some(length));
    body.ends_at_length = false;
    (body, tx)
}

/// [`fed`], of unknown length, with `pieces` sent already.
pub fn fed_with(pieces: &[&'static [u8]]) -> (Fed, mpsc::UnboundedSender<Bytes>) {
    let (body, tx) = fed(None);
    for piece in pieces {
        tx.send(Bytes::from_static(piece))
            .expect("the body is held");
    }
    (body, tx)
}
