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

use aho_corasick::{AhoCorasick, Input, MatchKind};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use zeroize::Zeroizing;

use super::base64_forms::base64_forms;
use super::echo_forms::echo_forms;
use super::newer_secrets::Follow;
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
    /// The bytes of the secret outside [`key_byte`]: what else an end
    /// that may be it cut short may hold.
    odd: ByteSet,
}

struct Table {
    /// Longest secret first, so the first full match at a position is the
    /// longest one.
    pairs: Vec<Pair>,
    /// For each byte, the pairs whose secret starts with it (longest first).
    by_first: Vec<Vec<usize>>,
    /// Where a secret could begin: the first [`CANDIDATE_PREFIX`] bytes of
    /// every form, searched for at once (with SIMD where the CPU has it).
    /// A whole body is searched in one pass, where testing each byte
    /// against `by_first` cost a millisecond per MiB once a secret had a
    /// dozen forms. None only if the automaton could not be built; each
    /// byte is then tested.
    candidates: Option<AhoCorasick>,
    max_len: usize,
    /// Every pair's `odd` bytes: a byte outside this set ends the search
    /// for a secret cut short.
    odd: ByteSet,
}

/// How many first bytes of each form the candidate search holds. The
/// automaton is not wiped when dropped, so it holds no more of a secret
/// than this (many keys begin with their provider's public prefix
/// anyway); a candidate is confirmed against the whole form, which is.
const CANDIDATE_PREFIX: usize = 4;

/// Each pair, followed by a pair for every other form of its secret: as
/// the common encoders echo it, and inside base64 among other bytes, that
/// base64 itself as those encoders echo it (a request log served as JSON
/// by .NET writes `+` as `\u002B`, PHP `/` as `\/`; a URL carrying it
/// percent-encodes both). The agent gets the placeholder's base64 as it
/// is in place of an echoed one: it decodes the same.
fn with_echo_forms(pairs: Vec<(Secret, Vec<u8>)>) -> Vec<(Secret, Vec<u8>)> {
    let mut all = Vec::with_capacity(pairs.len());
    for (secret, placeholder) in pairs {
        for form in echo_forms(secret.expose()) {
            all.push((form, placeholder.clone()));
        }
        for (run, stand_in) in base64_forms(secret.expose(), &placeholder) {
            for form in echo_forms(run.expose()) {
                all.push((form, stand_in.clone()));
            }
            all.push((run, stand_in));
        }
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
                odd: ByteSet::odd_bytes_of(secret.expose()),
                secret,
                placeholder,
            })
            .collect();
        // Stable: among duplicates the first given stays first.
        pairs.sort_by_key(|p| Reverse(p.secret.len()));
        pairs.dedup_by(|later, earlier| later.secret.expose() == earlier.secret.expose());

        let mut by_first = vec![Vec::new(); 256];
        let mut prefixes: Vec<&[u8]> = Vec::new();
        for (i, pair) in pairs.iter().enumerate() {
            let secret = pair.secret.expose();
            by_first[usize::from(secret[0])].push(i);
            let prefix = &secret[..secret.len().min(CANDIDATE_PREFIX)];
            if !prefixes.contains(&prefix) {
                prefixes.push(prefix);
            }
        }
        // Leftmost: the search must report the first position where any
        // form begins, whichever form it is.
        let candidates = (!prefixes.is_empty())
            .then(|| {
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostFirst)
                    .build(&prefixes)
                    .ok()
            })
            .flatten();
        let max_len = pairs.first().map_or(0, |p| p.secret.len());
        let odd = pairs
            .iter()
            .fold(ByteSet::default(), |all, p| all.union(&p.odd));
        Scrubber {
            table: Arc::new(Table {
                pairs,
                by_first,
                candidates,
                max_len,
                odd,
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

    /// Every secret this scrubber knows and every one `older` knew (their
    /// forms included): for an answer that began under `older` and must go
    /// on scrubbing what it was sent then.
    pub fn joined(&self, older: &Scrubber) -> Scrubber {
        let pairs = self
            .table
            .pairs
            .iter()
            .chain(&older.table.pairs)
            .map(|p| (p.secret.clone(), p.placeholder.clone()))
            .collect();
        Scrubber::build(pairs)
    }

    /// True when there is nothing to scrub.
    pub fn is_empty(&self) -> bool {
        self.table.pairs.is_empty()
    }

    /// The value with secrets replaced, or `None` if it holds none. The
    /// result keeps the original's sensitivity flag.
    pub fn scrub_header_value(&self, value: &HeaderValue) -> Option<HeaderValue> {
        let out = self.scrub_final(value.as_bytes())?;
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
        self.table.next_start(bytes, 0)?;
        let scan = self.table.scan(bytes, true);
        if scan.hits.is_empty() {
            return None;
        }
        Some(self.table.render(bytes, &scan.hits, bytes.len()))
    }

    /// `bytes`, sent whole and last (a header value, a control frame's
    /// payload, an error's text), with secrets replaced and cut where
    /// they may end inside one ([`Scrubber::ends_inside_a_secret`]), or
    /// `None` if they need neither. A whole secret that holds that point
    /// is cut with it.
    pub fn scrub_final(&self, bytes: &[u8]) -> Option<BytesMut> {
        self.table.next_start(bytes, 0)?;
        let (hits, cut) = self.scan_end(bytes);
        if hits.is_empty() && cut.is_none() {
            return None;
        }
        Some(self.table.render(bytes, &hits, cut.unwrap_or(bytes.len())))
    }

    /// The secrets found whole in `buf`, which ends what is sent, and
    /// where it must be cut because it may end inside one, if it must.
    fn scan_end(&self, buf: &[u8]) -> (Vec<(usize, usize)>, Option<usize>) {
        let table = &*self.table;
        let mut hits = table.scan(buf, true).hits;
        let Some(mut cut) = self.cut_secret_at(buf) else {
            return (hits, None);
        };
        let end = |&(start, i): &(usize, usize)| start + table.pairs[i].secret.len();
        if let Some(&(start, _)) = hits.iter().find(|h| h.0 < cut && cut < end(h)) {
            cut = start;
        }
        hits.retain(|h| end(h) <= cut);
        (hits, Some(cut))
    }

    /// How many last bytes of what came before [`Scrubber::straddles`]
    /// needs: one less than the longest form of a secret.
    pub fn carry(&self) -> usize {
        self.table.max_len.saturating_sub(1)
    }

    /// Whether a secret begins in `before` and ends in `after`: one that
    /// pieces scrubbed each on its own (gRPC's messages) would let
    /// through. `before` may be cut to its last [`Scrubber::carry`] bytes.
    pub fn straddles(&self, before: &[u8], after: &[u8]) -> bool {
        let table = &*self.table;
        let before = &before[before.len().saturating_sub(self.carry())..];
        (0..before.len()).any(|at| {
            table.by_first[usize::from(before[at])].iter().any(|&i| {
                let secret = table.pairs[i].secret.expose();
                let (inside, rest) = secret.split_at(secret.len().min(before.len() - at));
                !rest.is_empty() && before[at..] == *inside && after.starts_with(rest)
            })
        })
    }

    /// Whether `tail`, the last bytes of what is sent as a whole (an
    /// answer's body, a gRPC or WebSocket message), may end inside a
    /// secret: some position there, [`CUT_START`] or more bytes before
    /// the end, begins with a form's first [`CUT_START`] bytes, the form
    /// is longer than what follows, and all that follows is bytes the
    /// form could be made of. An upstream that cuts its answer at a byte
    /// the agent chooses (a log read with a byte limit) would otherwise
    /// give it all of a secret but its last bytes. `tail` may be cut to
    /// its last [`Scrubber::carry`] bytes.
    ///
    /// What follows those first bytes is not compared with the form, so
    /// the answer tells an agent that writes it nothing of the secret
    /// beyond those bytes, the form's length, and which bytes outside
    /// [`key_byte`] the form holds. A secret's bytes are not `key_byte`s
    /// only where it holds such bytes itself, or in a form that escapes
    /// them (`%2F`, `\/`). Bytes from that position to the end that all
    /// lie in secrets found whole are no cut: their placeholders hide
    /// them (a SigV4 key's id at the end begins the whole `id:secret`
    /// value too).
    pub fn ends_inside_a_secret(&self, tail: &[u8]) -> bool {
        self.cut_secret_at(tail).is_some()
    }

    /// Where in `tail` the first secret it may end inside of begins; see
    /// [`Scrubber::ends_inside_a_secret`].
    fn cut_secret_at(&self, tail: &[u8]) -> Option<usize> {
        let table = &*self.table;
        // Only the last `carry` bytes can begin a form longer than what
        // follows.
        let first = tail.len().saturating_sub(self.carry());
        table.next_start(tail, first)?;
        let hits = table.scan(tail, true).hits;
        // Whether every byte from `at` on is in a secret found whole.
        let replaced_to_the_end = |at: usize| {
            let mut from = at;
            for &(start, i) in &hits {
                let end = start + table.pairs[i].secret.len();
                if end <= from {
                    continue;
                }
                if start > from {
                    return false;
                }
                from = end;
            }
            from == tail.len()
        };
        // From the end back, with the bytes outside `key_byte` seen so
        // far: each position costs a lookup per form, not a pass.
        let mut odd = ByteSet::default();
        let mut found = None;
        for at in (first..tail.len()).rev() {
            odd.note(tail[at]);
            if !odd.within(&table.odd) {
                break;
            }
            let rest = &tail[at..];
            if rest.len() >= CUT_START
                && table.by_first[usize::from(rest[0])].iter().any(|&i| {
                    let pair = &table.pairs[i];
                    let form = pair.secret.expose();
                    rest.len() < form.len()
                        && rest[..CUT_START] == form[..CUT_START]
                        && odd.within(&pair.odd)
                })
                && !replaced_to_the_end(at)
            {
                found = Some(at);
            }
        }
        found
    }

    /// What the bytes around message ends say, for a framing whose
    /// messages are scrubbed each on its own (a WebSocket's). `ends` are
    /// the offsets in `window` where messages ended, ascending; `window`
    /// holds at least [`Scrubber::carry`] bytes before the first of them,
    /// or all there were.
    ///
    /// A secret found whole across an end is [`Across::Split`]: it could
    /// be replaced in neither message. Where a form's first `min` bytes
    /// begin before an end and `window` stops before the form would, it
    /// is [`Across::Wait`], whatever the bytes after those first ones: a
    /// wait that compared them would tell an agent that writes them, and
    /// sees when they arrive, whether its guess goes on as a secret does.
    /// Only a byte no key is made of ([`key_byte`]) and the form does not
    /// hold, after them, ends the wait early: no form goes on past it.
    pub fn across(&self, window: &[u8], ends: &[usize], min: usize) -> Across {
        let (Some(&first), Some(&last)) = (ends.first(), ends.last()) else {
            return Across::Clear;
        };
        let table = &*self.table;
        // From the end back, with the bytes outside `key_byte` seen so
        // far, as in `cut_secret_at`.
        let mut odd = ByteSet::default();
        for &b in &window[last..] {
            odd.note(b);
        }
        let mut wait = false;
        for at in (first.saturating_sub(self.carry())..last).rev() {
            odd.note(window[at]);
            for &i in &table.by_first[usize::from(window[at])] {
                let pair = &table.pairs[i];
                let form = pair.secret.expose();
                let end = at + form.len();
                if !ends.iter().any(|&b| at < b && b < end) {
                    continue;
                }
                if end <= window.len() {
                    if window[at..end] == *form {
                        return Across::Split;
                    }
                } else if window.len() - at >= min
                    && window[at..at + min] == form[..min]
                    && odd.within(&pair.odd)
                {
                    wait = true;
                }
            }
        }
        if wait { Across::Wait } else { Across::Clear }
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
    /// (longest form - 1) trailing bytes: those after its last newline,
    /// or from where a secret may begin if that is earlier. They are sent
    /// before the next chunk, or at the end of the body, unless they may
    /// be a secret cut short ([`Scrubber::ends_inside_a_secret`]): the
    /// body then ends with [`ScrubBodyError::EndsInsideASecret`] instead.
    pub fn wrap<B>(&self, body: B) -> ScrubBody<B>
    where
        B: Body<Data = Bytes>,
    {
        ScrubBody {
            inner: body,
            scrubber: self.clone(),
            held: Zeroizing::new(Vec::new()),
            next: None,
            trailers: None,
            cut: false,
            ended: false,
            follow: None,
        }
    }

    /// Scrubs one data chunk, keeping in `held` its last bytes: what may
    /// be a secret's start, and whatever follows its last newline.
    ///
    /// The second rule is why the hold says nothing about the secrets. An
    /// agent that controls the end of a streamed answer (a log it writes,
    /// followed) and sees when bytes arrive would otherwise learn whether
    /// its guess begins a secret by whether the guess is held, and extend
    /// it a byte at a time. Bytes after the last newline are held however
    /// they read, up to the longest form, so only a secret holding a
    /// newline is held for what it is. A piece that ends in a newline (an
    /// SSE event, an NDJSON line, a log line) is sent whole at once.
    ///
    /// Two pieces come out where bytes were held before: the held bytes
    /// settled, then the rest of `chunk`, which stays uncopied unless it
    /// holds a secret.
    fn scrub_chunk(&self, chunk: Bytes, held: &mut Zeroizing<Vec<u8>>) -> Settled {
        if held.is_empty() {
            return Settled {
                before: Bytes::new(),
                chunk: self.scrub_fresh(chunk, held),
            };
        }
        let table = &*self.table;
        let carry = self.carry();
        if chunk.len() > carry {
            // Every position in the held bytes is decided by the chunk's
            // first `carry` bytes: no form is longer than `carry + 1`.
            let held_len = held.len();
            let mut junction = Zeroizing::new(Vec::with_capacity(held_len + carry));
            junction.extend_from_slice(held);
            junction.extend_from_slice(&chunk[..carry]);
            let mut hits = table.scan(&junction, false).hits;
            hits.retain(|&(start, _)| start < held_len);
            let goes_on = hits
                .last()
                .is_some_and(|&(start, i)| start + table.pairs[i].secret.len() > held_len);
            // A secret that goes on into the chunk is settled with the
            // whole of it, below.
            if !goes_on {
                held.clear();
                let before = table.render(&junction, &hits, held_len).freeze();
                let chunk = self.scrub_fresh(chunk, held);
                return Settled { before, chunk };
            }
        }
        let mut joined = Zeroizing::new(Vec::with_capacity(held.len() + chunk.len()));
        joined.extend_from_slice(held);
        joined.extend_from_slice(&chunk);
        held.clear();
        let (hits, cut) = self.settle(&joined);
        held.extend_from_slice(&joined[cut..]);
        Settled {
            before: Bytes::new(),
            chunk: table.render(&joined, &hits, cut).freeze(),
        }
    }

    /// [`Scrubber::scrub_chunk`] with nothing held before `chunk`.
    fn scrub_fresh(&self, chunk: Bytes, held: &mut Zeroizing<Vec<u8>>) -> Bytes {
        let (hits, cut) = self.settle(&chunk);
        held.extend_from_slice(&chunk[cut..]);
        if hits.is_empty() {
            return chunk.slice(..cut);
        }
        self.table.render(&chunk, &hits, cut).freeze()
    }

    /// The secrets found in `buf` before the bytes to hold, and where
    /// those begin: at the first that may begin a secret, or after the
    /// last newline (at most `carry` bytes from the end), whichever comes
    /// first. A secret found whole across that point is held whole: sent
    /// at once, it would tell whether the bytes after it went on as a
    /// longer form (a SigV4 key's id is the start of the whole value).
    fn settle(&self, buf: &[u8]) -> (Vec<(usize, usize)>, usize) {
        let table = &*self.table;
        let tail = buf.len().saturating_sub(self.carry());
        let blind = memchr::memrchr(b'\n', &buf[tail..]).map_or(tail, |at| tail + at + 1);
        if table.next_start(buf, 0).is_none() {
            return (Vec::new(), blind);
        }
        let Scan {
            mut hits,
            hold_from,
        } = table.scan(buf, false);
        let end = |&(start, i): &(usize, usize)| start + table.pairs[i].secret.len();
        let mut cut = hold_from.min(blind);
        if let Some(&(start, _)) = hits.iter().find(|h| h.0 < cut && cut < end(h)) {
            cut = start;
        }
        hits.retain(|h| end(h) <= cut);
        (hits, cut)
    }

    /// The held bytes at the end of the body, whatever secrets they
    /// complete replaced.
    fn flush(&self, held: &mut Zeroizing<Vec<u8>>) -> Bytes {
        if held.is_empty() {
            return Bytes::new();
        }
        let scan = self.table.scan(held, true);
        let out = self.table.render(held, &scan.hits, held.len()).freeze();
        held.clear();
        out
    }

    /// [`Scrubber::flush`] for the end of a body: the held bytes, with
    /// secrets replaced, before the first secret they may end inside of,
    /// and whether there is one (whose bytes are dropped).
    fn flush_at_end(&self, held: &mut Zeroizing<Vec<u8>>) -> (Bytes, bool) {
        if held.is_empty() {
            return (Bytes::new(), false);
        }
        let (hits, cut) = self.scan_end(held);
        let out = self.table.render(held, &hits, cut.unwrap_or(held.len()));
        held.clear();
        (out.freeze(), cut.is_some())
    }
}

/// How many first bytes of a form, at least, make an end that stops
/// short of the rest a cut secret ([`Scrubber::ends_inside_a_secret`]).
/// Fewer go on: they are, for most keys, their provider's public prefix,
/// and one byte would end one answer in a few hundred.
pub const CUT_START: usize = 4;

/// The bytes API keys and tokens are made of: letters, digits, and those
/// that base64, base64url and the common token formats add.
fn key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'+' | b'/' | b'=')
}

/// A set of bytes, one bit each.
#[derive(Clone, Copy, Default)]
struct ByteSet([u64; 4]);

impl ByteSet {
    /// The bytes of `bytes` outside [`key_byte`].
    fn odd_bytes_of(bytes: &[u8]) -> ByteSet {
        let mut set = ByteSet::default();
        for &b in bytes {
            set.note(b);
        }
        set
    }

    /// Adds `b` if it is outside [`key_byte`].
    fn note(&mut self, b: u8) {
        if !key_byte(b) {
            self.0[usize::from(b >> 6)] |= 1 << (b & 63);
        }
    }

    fn union(&self, other: &ByteSet) -> ByteSet {
        let mut set = *self;
        for (word, more) in set.0.iter_mut().zip(other.0) {
            *word |= more;
        }
        set
    }

    fn within(&self, other: &ByteSet) -> bool {
        self.0
            .iter()
            .zip(other.0)
            .all(|(mine, theirs)| mine & !theirs == 0)
    }
}

impl Table {
    /// The first position at or after `from` at which some secret could
    /// start: where the first bytes of a form lie whole, or, in the last
    /// bytes of `hay`, where its first byte does and `hay` ends too soon to
    /// tell.
    fn next_start(&self, hay: &[u8], from: usize) -> Option<usize> {
        if self.pairs.is_empty() {
            return None;
        }
        let plausible = |p: &usize| !self.by_first[usize::from(hay[*p])].is_empty();
        let Some(ac) = &self.candidates else {
            return (from..hay.len()).find(plausible);
        };
        let whole = ac
            .find(Input::new(hay).span(from..hay.len()))
            .map(|m| m.start());
        let tail = hay.len().saturating_sub(CANDIDATE_PREFIX - 1).max(from);
        (tail..whole.unwrap_or(hay.len())).find(plausible).or(whole)
    }

    /// Leftmost-longest matches in `buf`. Unless `at_end`, stops at the first
    /// position where a secret could begin but `buf` ends before it can be
    /// decided; that position is `hold_from`.
    fn scan(&self, buf: &[u8], at_end: bool) -> Scan {
        self.scan_candidates(buf, at_end, |buf, at| self.next_start(buf, at))
    }

    /// The scan, given `next`, which finds the first position at or after
    /// its second argument where a secret could start: it may report
    /// positions where none does, never skip one where one does.
    fn scan_candidates(
        &self,
        buf: &[u8],
        at_end: bool,
        next: impl Fn(&[u8], usize) -> Option<usize>,
    ) -> Scan {
        let mut hits = Vec::new();
        let mut at = 0;
        while let Some(pos) = next(buf, at) {
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

/// What [`Scrubber::across`] found at message ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Across {
    /// A secret begins in one message and ends in another.
    Split,
    /// A secret's first bytes begin before an end, and what follows may
    /// still complete it: the messages wait.
    Wait,
    /// The message that just ended may end inside a secret
    /// ([`Scrubber::ends_inside_a_secret`]): whether the next goes on with
    /// the rest or not, no part of it may go.
    Cut,
    /// No secret crosses an end, nor can.
    Clear,
}

/// What a chunk gives to send on: the bytes held before it, settled, then
/// the chunk's own, less what is held again. Either may be empty.
struct Settled {
    before: Bytes,
    chunk: Bytes,
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
        let Settled { before, chunk } = self.scrubber.scrub_chunk(chunk, &mut self.held);
        if before.is_empty() {
            return chunk;
        }
        let mut out = BytesMut::with_capacity(before.len() + chunk.len());
        out.extend_from_slice(&before);
        out.extend_from_slice(&chunk);
        out.freeze()
    }

    /// What is still held, at the end of the stream. Callers that must
    /// not send a secret cut short ask [`Scrubber::ends_inside_a_secret`]
    /// of the bytes as sent first.
    pub fn finish(&mut self) -> Bytes {
        self.scrubber.flush(&mut self.held)
    }

    /// Scrubs from now on with `scrubber`; what is held is read again
    /// with it, with the next piece.
    pub fn rescrub_with(&mut self, scrubber: Scrubber) {
        self.scrubber = scrubber;
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
        // A chunk's own bytes, waiting while the bytes held before it go.
        next: Option<Bytes>,
        // Trailers waiting until the held bytes before them are sent.
        trailers: Option<HeaderMap>,
        // The body's end was withheld: it ends with an error once the
        // bytes before are sent.
        cut: bool,
        ended: bool,
        // Secrets that came after the body began.
        follow: Option<Follow>,
    }
}

impl<B> ScrubBody<B> {
    /// The body scrubbed, from each piece on, for the secrets `follow`'s
    /// source has come to know as well.
    pub fn following(mut self, follow: Option<Follow>) -> Self {
        self.follow = follow;
        self
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

/// Why a scrubbed body ended early.
#[derive(Debug, thiserror::Error)]
pub enum ScrubBodyError {
    #[error(
        "the upstream's answer ended where a credential may have been cut short: its last bytes begin as one does and stop before its length, so they were withheld"
    )]
    EndsInsideASecret,
    #[error("reading the upstream's answer")]
    Upstream(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl<B> Body for ScrubBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = ScrubBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ScrubBodyError>>> {
        let mut this = self.project();
        loop {
            if let Some(next) = this.next.take() {
                return Poll::Ready(Some(Ok(Frame::data(next))));
            }
            if let Some(trailers) = this.trailers.take() {
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            if std::mem::take(this.cut) {
                return Poll::Ready(Some(Err(ScrubBodyError::EndsInsideASecret)));
            }
            if *this.ended {
                return Poll::Ready(None);
            }
            let frame = match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(err)) => {
                    return Poll::Ready(Some(Err(ScrubBodyError::Upstream(err.into()))));
                }
                None => {
                    *this.ended = true;
                    if let Some(follow) = this.follow {
                        follow.catch_up(this.scrubber);
                    }
                    let rest;
                    (rest, *this.cut) = this.scrubber.flush_at_end(this.held);
                    if rest.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
            };
            if let Some(follow) = this.follow {
                follow.catch_up(this.scrubber);
            }
            let frame = match frame.into_data() {
                Ok(chunk) => {
                    let Settled { before, chunk } = this.scrubber.scrub_chunk(chunk, this.held);
                    // An empty frame (everything held, or an empty chunk)
                    // would tell the peer nothing.
                    let out = match (before.is_empty(), chunk.is_empty()) {
                        (true, true) => continue,
                        (true, false) => chunk,
                        (false, true) => before,
                        (false, false) => {
                            *this.next = Some(chunk);
                            before
                        }
                    };
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                Err(frame) => frame,
            };
            if let Ok(mut trailers) = frame.into_trailers() {
                // Trailers end the body: nothing more can complete what
                // is held.
                *this.ended = true;
                let rest;
                (rest, *this.cut) = this.scrubber.flush_at_end(this.held);
                if *this.cut {
                    // What the trailers say would end the body as whole.
                    if rest.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
                this.scrubber.scrub_headers(&mut trailers);
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
        self.next.is_none()
            && self.trailers.is_none()
            && !self.cut
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The scan as it was before the candidate search: every byte tested
    /// against `by_first`. The two must agree everywhere.
    fn byte_by_byte(t: &Table, buf: &[u8], at_end: bool) -> (Vec<(usize, usize)>, usize) {
        let scan = t.scan_candidates(buf, at_end, |buf, at| {
            (at..buf.len()).find(|&p| !t.by_first[usize::from(buf[p])].is_empty())
        });
        (scan.hits, scan.hold_from)
    }

    #[test]
    fn the_candidate_search_finds_what_testing_every_byte_finds() {
        // Secrets with many forms (characters that encoders change), one
        // shorter than the candidate prefix, and two that share a start.
        let scrubber = Scrubber::new(
            [
                (&b"key-ant-A/b+c=d\"e\\f<g>"[..], &b"airlock-ph-one"[..]),
                (b"xy", b"airlock-ph-two"),
                (b"key-ant-Zzzz9999", b"airlock-ph-three"),
            ]
            .into_iter()
            .map(|(s, p)| (Secret::new(s.to_vec()), p.to_vec()))
            .collect(),
        );
        let table = &*scrubber.table;
        assert!(table.candidates.is_some());
        assert!(table.pairs.len() > 10, "the forms are there");
        let forms: Vec<Vec<u8>> = table
            .pairs
            .iter()
            .map(|p| p.secret.expose().to_vec())
            .collect();
        // xorshift: reproducible, no dependency.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for case in 0..20_000 {
            let mut buf = Vec::new();
            for _ in 0..next() % 8 {
                let form = &forms[(next() % forms.len() as u64) as usize];
                match next() % 4 {
                    // A whole form, a piece of one, or its start.
                    0 => buf.extend_from_slice(form),
                    1 => {
                        let a = (next() % form.len() as u64) as usize;
                        buf.extend_from_slice(&form[a..]);
                    }
                    2 => {
                        let b = 1 + (next() % form.len() as u64) as usize;
                        buf.extend_from_slice(&form[..b]);
                    }
                    _ => {
                        buf.extend((0..next() % 6).map(|_| b"ke-%x\\yzA/"[(next() % 10) as usize]))
                    }
                }
            }
            for at_end in [false, true] {
                let scan = table.scan(&buf, at_end);
                assert_eq!(
                    (scan.hits, scan.hold_from),
                    byte_by_byte(table, &buf, at_end),
                    "case {case}, at_end {at_end}: {:?}",
                    String::from_utf8_lossy(&buf)
                );
            }
        }
    }
}
