//! Replacing secrets with their placeholders in responses, as they stream.
//!
//! An upstream may echo a credential back (an error page quoting the
//! Authorization header, a "whoami" endpoint, a debug endpoint). The agent must
//! never see a real secret, so response headers, bodies and trailers pass
//! through a [`Scrubber`] that puts the placeholder back.
//!
//! Each secret is looked for as it is and in the forms the common URL and
//! JSON encoders give it (`super::echo_forms`): an upstream reflecting a
//! request URL or a JSON document of its headers gives those back. Inside
//! base64 among other bytes (a Basic value kept in a request log) it is
//! found at each alignment (`super::base64_forms`). The base64 of a Basic
//! value Airlock rewrote is also added whole for that response
//! ([`Scrubber::with`]), so an echoed Authorization header gives back the
//! agent's own encoding. Other encodings an upstream may make of its own
//! (a changed letter case, a hash) are not recognised.

use std::cmp::Reverse;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use zeroize::Zeroizing;

use super::base64_forms::base64_forms;
use super::echo_forms::echo_forms;
use crate::secret::Secret;

/// Replaces secrets with placeholders. Cloning is cheap: the table is shared.
#[derive(Clone)]
pub struct Scrubber {
    table: Arc<Table>,
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scrubber")
            .field("secrets", &self.table.pairs.len())
            .finish()
    }
}

struct Pair {
    secret: Secret,
    placeholder: Vec<u8>,
}

struct Table {
    /// Longest secret first, so the first full match at a position is the
    /// longest one.
    pairs: Vec<Pair>,
    /// For each byte, the pairs whose secret starts with it (longest first).
    by_first: Vec<Vec<usize>>,
    /// Distinct first bytes, so up to three can be searched with `memchr`.
    first_bytes: Vec<u8>,
    max_len: usize,
}

/// Each pair, followed by a pair for every other form of its secret: as
/// the common encoders echo it, and inside base64 among other bytes.
fn with_echo_forms(pairs: Vec<(Secret, Vec<u8>)>) -> Vec<(Secret, Vec<u8>)> {
    let mut all = Vec::with_capacity(pairs.len());
    for (secret, placeholder) in pairs {
        for form in echo_forms(secret.expose()) {
            all.push((form, placeholder.clone()));
        }
        all.extend(base64_forms(secret.expose(), &placeholder));
        all.push((secret, placeholder));
    }
    all
}

/// Result of scanning a buffer: matches to replace in `..hold_from`, and where
/// the bytes that might be the start of a secret begin.
struct Scan {
    /// `(start, pair)`, ascending and non-overlapping.
    hits: Vec<(usize, usize)>,
    hold_from: usize,
}

impl Scrubber {
    /// Each secret is looked for in every form an upstream may echo it in
    /// ([`echo_forms`]). Empty secrets are ignored (they would match
    /// everywhere), and a secret listed twice is kept once, with the first
    /// placeholder given for it.
    pub fn new(pairs: Vec<(Secret, Vec<u8>)>) -> Self {
        Scrubber::build(with_echo_forms(pairs))
    }

    fn build(pairs: Vec<(Secret, Vec<u8>)>) -> Self {
        let mut pairs: Vec<Pair> = pairs
            .into_iter()
            .filter(|(secret, _)| !secret.is_empty())
            .map(|(secret, placeholder)| Pair {
                secret,
                placeholder,
            })
            .collect();
        // Stable: among duplicates the first given stays first.
        pairs.sort_by_key(|p| Reverse(p.secret.len()));
        pairs.dedup_by(|later, earlier| later.secret.expose() == earlier.secret.expose());

        let mut by_first = vec![Vec::new(); 256];
        let mut first_bytes = Vec::new();
        for (i, pair) in pairs.iter().enumerate() {
            let first = pair.secret.expose()[0];
            if by_first[usize::from(first)].is_empty() {
                first_bytes.push(first);
            }
            by_first[usize::from(first)].push(i);
        }
        let max_len = pairs.first().map_or(0, |p| p.secret.len());
        Scrubber {
            table: Arc::new(Table {
                pairs,
                by_first,
                first_bytes,
                max_len,
            }),
        }
    }

    /// This scrubber with `extra` pairs besides, for one response.
    pub fn with(&self, extra: Vec<(Secret, Vec<u8>)>) -> Scrubber {
        // The table holds every form already; only the extra are expanded.
        let mut pairs: Vec<(Secret, Vec<u8>)> = self
            .table
            .pairs
            .iter()
            .map(|p| (p.secret.clone(), p.placeholder.clone()))
            .collect();
        pairs.extend(with_echo_forms(extra));
        Scrubber::build(pairs)
    }

    /// True when there is nothing to scrub.
    pub fn is_empty(&self) -> bool {
        self.table.pairs.is_empty()
    }

    /// The value with secrets replaced, or `None` if it holds none. The
    /// result keeps the original's sensitivity flag.
    pub fn scrub_header_value(&self, value: &HeaderValue) -> Option<HeaderValue> {
        let out = self.scrub_bytes(value.as_bytes())?;
        // A placeholder that is not a valid header value can only come from a
        // caller error; an empty value still keeps the secret out.
        let mut new = HeaderValue::from_maybe_shared(out.freeze())
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        new.set_sensitive(value.is_sensitive());
        Some(new)
    }

    /// `bytes`, complete in themselves, with secrets replaced, or `None`
    /// if they hold none.
    pub fn scrub_bytes(&self, bytes: &[u8]) -> Option<BytesMut> {
        self.table.next_start(bytes)?;
        let scan = self.table.scan(bytes, true);
        if scan.hits.is_empty() {
            return None;
        }
        Some(self.table.render(bytes, &scan.hits, bytes.len()))
    }

    /// A byte stream to scrub piece by piece, for framings other than
    /// HTTP bodies (a WebSocket message split over frames).
    pub fn stream(&self) -> ScrubStream {
        ScrubStream {
            scrubber: self.clone(),
            held: Zeroizing::new(Vec::new()),
        }
    }

    /// Scrubs every value of `headers` in place.
    pub fn scrub_headers(&self, headers: &mut HeaderMap) {
        if self.is_empty() {
            return;
        }
        for (_, value) in headers.iter_mut() {
            if let Some(new) = self.scrub_header_value(value) {
                *value = new;
            }
        }
    }

    /// Wraps a response body so secrets in its data and trailers are
    /// replaced as the body streams.
    ///
    /// A placeholder is usually not as long as the secret it replaces, so the
    /// body length changes: the caller must drop `Content-Length` from the
    /// response head (and let the body be sent chunked or framed by HTTP/2).
    ///
    /// Each chunk is forwarded as soon as it arrives, minus at most
    /// (longest secret - 1) trailing bytes that could be the start of a
    /// secret continuing in the next chunk; those are sent with the next
    /// chunk, or unchanged at the end of the body if no secret completes.
    pub fn wrap<B>(&self, body: B) -> ScrubBody<B>
    where
        B: Body<Data = Bytes>,
    {
        ScrubBody {
            inner: body,
            scrubber: self.clone(),
            held: Zeroizing::new(Vec::new()),
            trailers: None,
            ended: false,
        }
    }

    /// Scrubs one data chunk, keeping in `held` what may be a secret's start.
    fn scrub_chunk(&self, chunk: Bytes, held: &mut Zeroizing<Vec<u8>>) -> Bytes {
        let table = &*self.table;
        if held.is_empty() {
            if table.next_start(&chunk).is_none() {
                return chunk;
            }
            let scan = table.scan(&chunk, false);
            held.extend_from_slice(&chunk[scan.hold_from..]);
            if scan.hits.is_empty() {
                return chunk.slice(..scan.hold_from);
            }
            return table.render(&chunk, &scan.hits, scan.hold_from).freeze();
        }
        let mut joined = Zeroizing::new(Vec::with_capacity(held.len() + chunk.len()));
        joined.extend_from_slice(held);
        joined.extend_from_slice(&chunk);
        held.clear();
        let scan = table.scan(&joined, false);
        held.extend_from_slice(&joined[scan.hold_from..]);
        table.render(&joined, &scan.hits, scan.hold_from).freeze()
    }

    /// The held bytes at the end of the body: whatever secrets they complete
    /// are replaced, a partial prefix is emitted as it is.
    fn flush(&self, held: &mut Zeroizing<Vec<u8>>) -> Bytes {
        if held.is_empty() {
            return Bytes::new();
        }
        let scan = self.table.scan(held, true);
        let out = self.table.render(held, &scan.hits, held.len()).freeze();
        held.clear();
        out
    }
}

impl Table {
    /// Offset of the first byte in `hay` at which some secret could start.
    fn next_start(&self, hay: &[u8]) -> Option<usize> {
        match *self.first_bytes.as_slice() {
            [] => None,
            [a] => memchr::memchr(a, hay),
            [a, b] => memchr::memchr2(a, b, hay),
            [a, b, c] => memchr::memchr3(a, b, c, hay),
            _ => hay
                .iter()
                .position(|&b| !self.by_first[usize::from(b)].is_empty()),
        }
    }

    /// Leftmost-longest matches in `buf`. Unless `at_end`, stops at the first
    /// position where a secret could begin but `buf` ends before it can be
    /// decided; that position is `hold_from`.
    fn scan(&self, buf: &[u8], at_end: bool) -> Scan {
        let mut hits = Vec::new();
        let mut at = 0;
        while let Some(offset) = self.next_start(&buf[at..]) {
            let pos = at + offset;
            let rest = &buf[pos..];
            let mut found = None;
            for &i in &self.by_first[usize::from(rest[0])] {
                let secret = self.pairs[i].secret.expose();
                if secret.len() > rest.len() {
                    // A longer secret could still complete here and must win
                    // over any shorter one that already matches.
                    if !at_end && secret.starts_with(rest) {
                        return Scan {
                            hits,
                            hold_from: pos,
                        };
                    }
                } else if rest.starts_with(secret) {
                    found = Some((i, secret.len()));
                    break;
                }
            }
            match found {
                Some((i, len)) => {
                    hits.push((pos, i));
                    at = pos + len;
                }
                None => at = pos + 1,
            }
        }
        Scan {
            hits,
            hold_from: buf.len(),
        }
    }

    /// `buf[..end]` with each hit replaced by its placeholder.
    fn render(&self, buf: &[u8], hits: &[(usize, usize)], end: usize) -> BytesMut {
        let mut out = BytesMut::with_capacity(end + self.max_len);
        let mut done = 0;
        for &(start, i) in hits {
            let pair = &self.pairs[i];
            out.extend_from_slice(&buf[done..start]);
            out.extend_from_slice(&pair.placeholder);
            done = start + pair.secret.len();
        }
        out.extend_from_slice(&buf[done..end]);
        out
    }
}

/// Secrets replaced in a stream of bytes as it arrives; see
/// [`Scrubber::stream`].
pub struct ScrubStream {
    scrubber: Scrubber,
    // Bytes that may begin a secret; wiped when dropped.
    held: Zeroizing<Vec<u8>>,
}

impl ScrubStream {
    /// The bytes that can go on now: `chunk` scrubbed, less a tail that may
    /// begin a secret, plus what was held before it.
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        self.scrubber.scrub_chunk(chunk, &mut self.held)
    }

    /// What is still held, at the end of the stream.
    pub fn finish(&mut self) -> Bytes {
        self.scrubber.flush(&mut self.held)
    }
}

impl fmt::Debug for ScrubStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScrubStream")
            .field("held", &self.held.len())
            .finish()
    }
}

pin_project_lite::pin_project! {
    /// A response body with secrets replaced by placeholders; see
    /// [`Scrubber::wrap`].
    pub struct ScrubBody<B> {
        #[pin]
        inner: B,
        scrubber: Scrubber,
        // Bytes that may begin a secret; wiped when dropped.
        held: Zeroizing<Vec<u8>>,
        // Trailers waiting until the held bytes before them are sent.
        trailers: Option<HeaderMap>,
        ended: bool,
    }
}

impl<B> fmt::Debug for ScrubBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScrubBody")
            .field("held", &self.held.len())
            .field("ended", &self.ended)
            .finish()
    }
}

impl<B> Body for ScrubBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        loop {
            if let Some(trailers) = this.trailers.take() {
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            if *this.ended {
                return Poll::Ready(None);
            }
            let frame = match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                None => {
                    *this.ended = true;
                    let rest = this.scrubber.flush(this.held);
                    if rest.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
            };
            let frame = match frame.into_data() {
                Ok(chunk) => {
                    let out = this.scrubber.scrub_chunk(chunk, this.held);
                    if out.is_empty() {
                        // Everything was held (or the chunk was empty): an
                        // empty frame would tell the peer nothing.
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                Err(frame) => frame,
            };
            if let Ok(mut trailers) = frame.into_trailers() {
                this.scrubber.scrub_headers(&mut trailers);
                let rest = this.scrubber.flush(this.held);
                if rest.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                *this.trailers = Some(trailers);
                return Poll::Ready(Some(Ok(Frame::data(rest))));
            }
            // http-body 1 has only data and trailer frames; anything else
            // cannot carry bytes for the agent, so it is dropped.
        }
    }

    fn is_end_stream(&self) -> bool {
        self.trailers.is_none()
            && self.held.is_empty()
            && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.scrubber.is_empty() {
            return self.inner.size_hint();
        }
        // Replacements change the length; only the lower bound of zero holds.
        SizeHint::default()
    }
}
