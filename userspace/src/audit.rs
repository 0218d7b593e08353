//! One JSON object a line for every decision, appended to the audit log by
//! a single writer thread ([`writer`]) so that records never interleave. A
//! thread, not a task: a blocking write inside the runtime
//! (block_in_place) hands the worker to a fresh thread each time, and under
//! load that grew the daemon to a hundred threads.
//!
//! Each record is formatted where it is made and copied into the journal
//! ([`journal`]), a ring in a shared file mapping that outlives the
//! process, so that a record the daemon made is written even if it is
//! killed before its batch goes out. Formatting takes under a microsecond a
//! record; done by the writer, a batch's worth ran at once on the proxy's
//! core and held up whichever request came meanwhile, which made the tail
//! latency. A second thread ([`syncer`]) puts what the writer wrote on the
//! disk within a second.

use std::{
    borrow::Cow,
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

mod journal;
mod line;
mod log_file;
mod syncer;
mod writer;

use journal::{Appender, Gauge, JournalError};
use log_file::{LogFile, Sink};
use syncer::Syncer;
use writer::write_loop;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Deny,
    Approve,
    RateLimited,
    Error,
}

impl Action {
    /// The name serde gives it, for the hand-written audit line.
    fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Approve => "approve",
            Action::RateLimited => "rate_limited",
            Action::Error => "error",
        }
    }
}

/// The fields of DESIGN.md's audit record. Credentials are secret names,
/// never values.
///
/// A record is built for every request, so what is fixed per connection
/// (agent, host, dialled address) or per policy (rule) is shared rather
/// than copied.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditRecord {
    pub ts: Timestamp,
    pub agent: Option<Arc<str>>,
    pub cgroup: u64,
    pub pid: u32,
    pub uid: u32,
    pub action: Option<Action>,
    /// What the agent named (SNI, Host) or, without one, the address it dialled.
    pub host: Arc<str>,
    pub port: u16,
    /// The address the agent's socket dialled, as the kernel recorded it.
    pub dst: Arc<str>,
    pub proto: &'static str,
    pub method: Option<Cow<'static, str>>,
    /// A copy: the request's own path shares the buffer its head was read
    /// into, which would stay allocated until the record is written.
    pub path: Option<String>,
    pub rule: Option<Arc<str>>,
    pub credentials: Vec<String>,
    /// Methods the request claimed besides its own (an override header, a
    /// `_method` in its query or body), which a server may act on instead.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub claimed_methods: Vec<String>,
    pub status: Option<u16>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: u64,
    pub request_id: RequestId,
    pub reason: Option<Cow<'static, str>>,
}

impl AuditRecord {
    /// Adds methods the request claimed (its body's, found as it streamed)
    /// to those already listed.
    pub fn note_claims(&mut self, claims: &[String]) {
        for claim in claims {
            if !claim.is_empty()
                && !self
                    .claimed_methods
                    .iter()
                    .any(|listed| listed.eq_ignore_ascii_case(claim))
            {
                self.claimed_methods.push(claim.clone());
            }
        }
    }
}

/// When a record was made; set by [`Audit::record`] if the maker did not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timestamp(Option<SystemTime>);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(Some(SystemTime::now()))
    }

    /// RFC 3339 in UTC with milliseconds: digits and punctuation only.
    fn text(self) -> [u8; 24] {
        let since = self
            .0
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        rfc3339(since.as_secs(), since.subsec_millis())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(std::str::from_utf8(&self.text()).unwrap_or("-"))
    }
}

/// Identifies one request in the audit log and in the
/// `x-airlock-request-id` header of its answer: 16 hex digits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestId(u64);

impl RequestId {
    fn is_unset(self) -> bool {
        self.0 == 0
    }

    fn hex(self) -> [u8; 16] {
        let mut digits = [0u8; 16];
        for (i, d) in digits.iter_mut().enumerate() {
            let nibble = (self.0 >> (60 - 4 * i)) & 0xf;
            *d = b"0123456789abcdef"[nibble as usize];
        }
        digits
    }

    /// As a header value, without going through a `String`.
    pub fn header_value(self) -> http::HeaderValue {
        // Hex digits are always a valid header value.
        http::HeaderValue::from_bytes(&self.hex())
            .unwrap_or_else(|_| http::HeaderValue::from_static("-"))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Straight to digits: every request formats one, and going through
        // `fmt` cost a tenth of a record's formatting.
        s.serialize_str(std::str::from_utf8(&self.hex()).unwrap_or("-"))
    }
}

const RECENT_DENIALS: usize = 32;
/// Records queued for the writer beyond which no new request or connection
/// is let through (fail closed): a disk that stops taking writes must not
/// grow the daemon without bound, and what cannot be recorded does not go
/// out. About 270 ms of writes at 60k requests/s. Past twice this, records
/// of requests already under way (and of refusals) are counted as lost
/// instead of queued.
pub const BACKLOG_LIMIT: usize = 16_384;
/// How long a record may wait for others to share its write. Each write
/// costs the writer a wake-up and ext4's per-write work, taken from
/// whichever request shares its core, so it is the number of writes, more
/// than their size, that reaches the 1-connection p99: 5 ms → 20 ms took
/// 10-20 µs off it, and 20 ms → 100 ms took the gap to nginx from +46 to
/// +11 µs on a slower machine (BENCHMARKS.md). The journal keeps the lines
/// meanwhile, so a kill loses none; a clean stop flushes.
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
/// Pending lines this long are written without waiting out the pause. It
/// bounds the lines resident in the journal and the length of one write:
/// at 40k requests/s, 10 ms of lines. (Writes of 300 KB held the proxy's
/// core long enough to show in its 32-connection p99, and 256 KiB did no
/// better on one connection than this.)
const BATCH_BYTES: usize = 128 * 1024;

/// What the writer thread is sent.
enum Msg {
    /// Lines are pending: sent by the record that found none.
    Lines,
    /// Write everything recorded before this, then answer.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// What appending a line did to the pending lines.
struct Appended {
    /// It is the first: the writer is told lines are pending.
    first: bool,
    /// It filled a batch: the writer need not wait out its pause.
    full: bool,
}

/// Lines in the journal that the writer has not taken yet.
struct Pending {
    journal: Appender,
    records: usize,
    /// Bytes appended since the writer last took them.
    bytes: usize,
}

impl Pending {
    /// How many records were appended since the last call.
    fn take(&mut self) -> usize {
        self.bytes = 0;
        std::mem::take(&mut self.records)
    }
}

/// Room for a typical line (about 350 bytes), so that formatting does not
/// reallocate.
const LINE_CAPACITY: usize = 512;

/// The audit sink: cheap to clone, never blocks the caller.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Msg>,
    /// Unparked when the pending lines fill a batch.
    writer: std::thread::Thread,
    pending: Arc<Mutex<Pending>>,
    recent: Arc<Mutex<VecDeque<AuditRecord>>>,
    next_id: Arc<AtomicU64>,
    health: Arc<Health>,
    limit: usize,
    journal: Gauge,
    /// Where the log is, for `airlock status`.
    path: Arc<Path>,
    journal_path: Arc<Path>,
    recovered_at_start: usize,
}

/// What the writer thread tells the proxy.
#[derive(Default)]
struct Health {
    /// Records sent and not yet written (or failed).
    backlog: AtomicUsize,
    /// Whether the last write failed (disk full, I/O error, or less room
    /// than is kept free).
    failing: AtomicBool,
    /// Why, while it does: for `airlock status`.
    write_error: Mutex<Option<String>>,
    /// Whether the last sync to disk failed: written records would not
    /// outlive a power cut.
    sync_failing: AtomicBool,
    /// Syncs that failed since start, and when the last did (Unix time).
    /// A later sync that succeeds does not bring back what the failed one
    /// lost: Linux marks the pages it could not write clean.
    sync_failures: AtomicU64,
    last_sync_failure: AtomicU64,
    /// Records lost: not queued because of the backlog, or no room for
    /// them in the journal. Those unwritten at a stop are not lost: they
    /// wait in the journal for the next start.
    lost: AtomicU64,
}

/// The writer's state, for `airlock status`.
#[derive(Debug, Serialize)]
pub struct AuditState {
    pub path: Arc<Path>,
    /// Where records wait for their write.
    pub journal: Arc<Path>,
    /// Records a killed run left in the journal, found at start.
    pub recovered_at_start: usize,
    pub accepting: bool,
    pub backlog: usize,
    pub write_failing: bool,
    /// Why writes fail, while they do.
    pub write_error: Option<String>,
    pub sync_failing: bool,
    /// Failed syncs since start: records written before one may be missing
    /// from the disk, even after syncs succeed again.
    pub sync_failures: u64,
    /// When the last sync failed (Unix time).
    pub last_sync_failure: Option<u64>,
    pub lost_records: u64,
}

#[cfg(test)]
impl AuditState {
    /// A log that takes records and has never failed, for tests of what
    /// reads the state.
    pub fn healthy_example() -> AuditState {
        AuditState {
            path: Path::new("/var/log/airlock/audit.jsonl").into(),
            journal: Path::new("/run/airlock/audit.journal").into(),
            recovered_at_start: 0,
            accepting: true,
            backlog: 0,
            write_failing: false,
            write_error: None,
            sync_failing: false,
            sync_failures: 0,
            last_sync_failure: None,
            lost_records: 0,
        }
    }
}

impl Audit {
    /// Open (append) the log and its journal, and start the writer thread.
    /// Records a previous run left in the journal are written first.
    /// The writer stops, and requests are refused, while the log's file
    /// system has less than `keep_free` bytes available: a flood of
    /// records must not fill the disk that the rest of the host writes to.
    pub fn start(path: &Path, journal: &Path, keep_free: u64) -> Result<Audit, AuditError> {
        Self::start_with_limit(path, journal, BACKLOG_LIMIT, keep_free)
    }

    fn start_with_limit(
        path: &Path,
        journal: &Path,
        limit: usize,
        keep_free: u64,
    ) -> Result<Audit, AuditError> {
        let file = LogFile::open(path).map_err(|source| AuditError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Self::start_writer(file, path, journal, limit, BATCH_PAUSE, keep_free)
    }

    /// The writer thread over `out`, which is the log at `path`, letting
    /// records gather for `pause` under load.
    fn start_writer<W: Sink + Send + 'static>(
        out: W,
        path: &Path,
        journal_path: &Path,
        limit: usize,
        pause: std::time::Duration,
        keep_free: u64,
    ) -> Result<Audit, AuditError> {
        let journal::Opened {
            appender,
            drainer,
            gauge,
            recovered,
        } = journal::open(journal_path, path)?;
        if recovered.lines > 0 {
            tracing::warn!(
                journal = %journal_path.display(),
                records = recovered.lines,
                already_in_log_bytes = recovered.already_written,
                "the last run stopped before writing these audit records; writing them to the log first"
            );
        }
        let (tx, rx) = mpsc::channel();
        let log_path = path.to_path_buf();
        let health = Arc::new(Health::default());
        health.backlog.store(recovered.lines, Ordering::Relaxed);
        let writer_health = health.clone();
        let pending = Arc::new(Mutex::new(Pending {
            journal: appender,
            records: recovered.lines,
            bytes: 0,
        }));
        if recovered.lines > 0 {
            let _ = tx.send(Msg::Lines);
        }
        let writer_pending = pending.clone();
        let syncer = Syncer::start(health.clone(), path.to_path_buf()).map_err(|source| {
            AuditError::Open {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let writer = std::thread::Builder::new()
            .name("airlock-audit".into())
            .spawn(move || {
                write_loop(
                    out,
                    log_path,
                    rx,
                    &writer_pending,
                    drainer,
                    &writer_health,
                    &syncer,
                    pause,
                    keep_free,
                )
            })
            .map_err(|source| AuditError::Open {
                path: path.to_path_buf(),
                source,
            })?
            .thread()
            .clone();
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Ok(Audit {
            tx,
            writer,
            pending,
            recent: Arc::new(Mutex::new(VecDeque::with_capacity(RECENT_DENIALS))),
            next_id: Arc::new(AtomicU64::new(seed << 16)),
            health,
            limit,
            journal: gauge,
            path: path.into(),
            journal_path: journal_path.into(),
            recovered_at_start: recovered.lines,
        })
    }

    /// Whether a new request or connection may go ahead: the writer keeps
    /// up and its last write succeeded. When not, the proxy refuses
    /// (`audit_unavailable`) until it does.
    pub fn accepting(&self) -> bool {
        self.health.backlog.load(Ordering::Relaxed) < self.limit
            && !self.health.failing.load(Ordering::Relaxed)
            && self.journal.has_room()
    }

    pub fn state(&self) -> AuditState {
        AuditState {
            path: self.path.clone(),
            journal: self.journal_path.clone(),
            recovered_at_start: self.recovered_at_start,
            accepting: self.accepting(),
            backlog: self.health.backlog.load(Ordering::Relaxed),
            write_failing: self.health.failing.load(Ordering::Relaxed),
            write_error: self
                .health
                .write_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            sync_failing: self.health.sync_failing.load(Ordering::Relaxed),
            sync_failures: self.health.sync_failures.load(Ordering::Relaxed),
            last_sync_failure: Some(self.health.last_sync_failure.load(Ordering::Relaxed))
                .filter(|at| *at > 0),
            lost_records: self.health.lost.load(Ordering::Relaxed),
        }
    }

    pub fn request_id(&self) -> RequestId {
        RequestId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub fn record(&self, mut record: AuditRecord) {
        if record.ts == Timestamp::default() {
            record.ts = Timestamp::now();
        }
        if record.request_id.is_unset() {
            record.request_id = self.request_id();
        }
        if matches!(
            record.action,
            Some(Action::Deny | Action::RateLimited | Action::Error)
        ) && let Ok(mut recent) = self.recent.lock()
        {
            if recent.len() == RECENT_DENIALS {
                recent.pop_front();
            }
            recent.push_back(record.clone());
        }
        if self.health.backlog.fetch_add(1, Ordering::Relaxed) >= 2 * self.limit {
            self.health.backlog.fetch_sub(1, Ordering::Relaxed);
            self.health.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // The thread's own buffer, unless the thread is exiting (a body
        // dropped by a thread-local's destructor) or already using it.
        let appended = LINE
            .try_with(|cell| match cell.try_borrow_mut() {
                Ok(mut line) => self.append(&mut line, &record),
                Err(_) => self.append(&mut Vec::with_capacity(LINE_CAPACITY), &record),
            })
            .unwrap_or_else(|_| self.append(&mut Vec::with_capacity(LINE_CAPACITY), &record));
        let Some(Appended { first, full }) = appended else {
            // A journal full (16 MiB behind): counted, not hidden.
            self.health.backlog.fetch_sub(1, Ordering::Relaxed);
            self.health.lost.fetch_add(1, Ordering::Relaxed);
            return;
        };
        // One wake-up per batch. The writer runs as long as the process;
        // at a clean stop the daemon flushes it (see `flush`).
        if first {
            let _ = self.tx.send(Msg::Lines);
        }
        if full {
            self.writer.unpark();
        }
    }

    /// Formats `record` into `line`, outside the lock so that proxy threads
    /// do not queue behind each other's formatting, then appends it whole
    /// to the journal. None if the journal has no room for it.
    fn append(&self, line: &mut Vec<u8>, record: &AuditRecord) -> Option<Appended> {
        line.clear();
        line::write(line, record);
        line.push(b'\n');
        // The lock only orders appends: the journal it guards holds whole
        // lines even if a panic elsewhere poisoned it.
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if !pending.journal.append(line) {
            return None;
        }
        let before = pending.bytes;
        pending.bytes += line.len();
        pending.records += 1;
        Some(Appended {
            first: pending.records == 1,
            full: before < BATCH_BYTES && pending.bytes >= BATCH_BYTES,
        })
    }

    /// Waits until every record sent before this call is written, or
    /// `timeout` passes (a stuck disk must not hang shutdown). Returns
    /// whether the log is complete.
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(done_tx)).is_err() {
            return false;
        }
        // Not after the writer's pause: a stop waits for this.
        self.writer.unpark();
        done_rx.recv_timeout(timeout).is_ok()
    }

    pub fn recent_denials(&self) -> Vec<AuditRecord> {
        self.recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }
}

thread_local! {
    /// Where a record is formatted before it joins the pending lines.
    static LINE: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(LINE_CAPACITY));
}

/// UTC with milliseconds, e.g. 2026-11-24T19:02:04.123Z, written as digits
/// without `fmt`: it is part of every record. Years past 9999 wrap to four
/// digits.
fn rfc3339(secs: u64, millis: u32) -> [u8; 24] {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, value: u64| {
        let mut v = value;
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y.rem_euclid(10_000) as u64);
    put(5, 2, mo as u64);
    put(8, 2, d as u64);
    put(11, 2, h);
    put(14, 2, m);
    put(17, 2, s);
    put(20, 3, u64::from(millis.min(999)));
    out
}

#[cfg(test)]
mod tests;
