//! The body type the proxy serves and forwards, and the wrappers that count
//! the bytes that pass: into a shared tally (request bodies, which also
//! says whether the body was sent to its end), or up to the end of the
//! body, where the request's audit record is written (answers). Every
//! request makes one of each; the counting itself allocates nothing.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, Empty, Full, combinators::UnsyncBoxBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// No body. Costs no allocation: the box holds a zero-sized value.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Where a [`Counted`] body puts the byte count of each data frame.
pub trait Count {
    fn add(&mut self, bytes: u64);
    /// The body has given its last frame.
    fn end(&mut self) {}
}

/// A request body's tally, which someone else reads while the body may
/// still be streaming: the answer's audit record reads the bytes, and the
/// answer whether the agent is still uploading.
#[derive(Default)]
pub struct Upload {
    bytes: AtomicU64,
    ended: AtomicBool,
}

impl Upload {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The body went upstream to its end: the agent sent all of it.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }
}

impl Count for Arc<Upload> {
    fn add(&mut self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn end(&mut self) {
        self.ended.store(true, Ordering::Relaxed);
    }
}

/// Runs once when the body it rides on is dropped: at the end of the
/// stream, or when either side hangs up.
pub trait OnDone: Send + 'static {
    fn done(self, bytes: u64);
}

/// Counts locally and reports the total once, when dropped with its body.
pub struct Report<D: OnDone> {
    bytes: u64,
    on_done: Option<D>,
}

impl<D: OnDone> Report<D> {
    pub fn new(on_done: D) -> Self {
        Report {
            bytes: 0,
            on_done: Some(on_done),
        }
    }
}

impl<D: OnDone> Count for Report<D> {
    fn add(&mut self, bytes: u64) {
        self.bytes += bytes;
    }
}

impl<D: OnDone> Drop for Report<D> {
    fn drop(&mut self) {
        if let Some(done) = self.on_done.take() {
            done.done(self.bytes);
        }
    }
}

pin_project_lite::pin_project! {
    /// Counts the data bytes that pass into `C`.
    pub struct Counted<B, C> {
        #[pin]
        inner: B,
        count: C,
    }
}

impl<B, C: Count> Counted<B, C> {
    pub fn new(inner: B, count: C) -> Self {
        Self { inner, count }
    }
}

impl<B, C> Body for Counted<B, C>
where
    B: Body<Data = Bytes>,
    C: Count,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.count.add(data.len() as u64);
                }
                if this.inner.is_end_stream() {
                    this.count.end();
                }
            }
            Poll::Ready(None) => this.count.end(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    struct Record(Arc<Mutex<Vec<u64>>>);

    impl OnDone for Record {
        fn done(self, bytes: u64) {
            self.0.lock().expect("lock").push(bytes);
        }
    }

    /// A body that yields the given chunks, one frame each.
    struct Chunks(std::collections::VecDeque<&'static str>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(
                self.0
                    .pop_front()
                    .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes())))),
            )
        }
    }

    fn chunks(parts: &[&'static str]) -> Chunks {
        Chunks(parts.iter().copied().collect())
    }

    #[tokio::test]
    async fn a_finished_body_reports_its_bytes_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let body = Counted::new(
            chunks(&["hello ", "world"]),
            Report::new(Record(seen.clone())),
        );
        let all = body.collect().await.expect("body").to_bytes();
        assert_eq!(all, "hello world");
        assert_eq!(*seen.lock().expect("lock"), vec![11]);
    }

    #[tokio::test]
    async fn an_abandoned_body_reports_what_passed_so_far() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut body = Box::pin(Counted::new(
            chunks(&["abc", "defg"]),
            Report::new(Record(seen.clone())),
        ));
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "abc");
        drop(body);
        assert_eq!(*seen.lock().expect("lock"), vec![3]);
    }

    #[tokio::test]
    async fn a_tally_is_readable_while_the_body_streams() {
        let tally = Arc::new(Upload::default());
        let mut body = Box::pin(Counted::new(chunks(&["abc", "defg"]), tally.clone()));
        body.frame().await.expect("a frame").expect("data");
        assert_eq!(tally.bytes(), 3);
        body.frame().await.expect("a frame").expect("data");
        assert_eq!(tally.bytes(), 7);
        assert!(
            !tally.ended(),
            "a body is not known to end before it says so"
        );
        assert!(body.frame().await.is_none());
        assert!(tally.ended());
    }

    #[tokio::test]
    async fn a_body_that_knows_its_last_frame_ends_with_it() {
        let tally = Arc::new(Upload::default());
        let mut body = Box::pin(Counted::new(Full::new(Bytes::from("abc")), tally.clone()));
        body.frame().await.expect("a frame").expect("data");
        assert!(tally.ended());
    }

    #[test]
    fn an_empty_body_is_empty() {
        let body = empty();
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }
}
