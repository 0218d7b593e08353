//! A body for tests, fed piece by piece as a test goes.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::mpsc;

pub struct Fed {
    rx: mpsc::UnboundedReceiver<Bytes>,
    /// Bytes still to come, when the body's length is known.
    left: Option<usize>,
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
        self.left == Some(0)
    }
}

/// A body whose pieces a test sends; it ends when the sender is dropped,
/// or, given its length, once that many bytes have come: as a body with a
/// Content-Length knows which piece is its last.
pub fn fed(length: Option<usize>) -> (Fed, mpsc::UnboundedSender<Bytes>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Fed { rx, left: length }, tx)
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
