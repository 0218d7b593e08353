//! One JSON object a line for every decision, appended to the audit log by
//! a single writer thread so that records never interleave. A thread, not a
//! task: a blocking write inside the runtime (block_in_place) hands the
//! worker to a fresh thread each time, and under load that grew the daemon
//! to a hundred threads.
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

use journal::{Appender, Drainer, Gauge, JournalError, LogEnd};
use log_file::{LogFile, Sink};
use syncer::Syncer;

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
    pub status: Option<u16>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: u64,
    pub request_id: RequestId,
    pub reason: Option<Cow<'static, str>>,
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
/// How often a failed write is tried again.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

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

// The writer thread's whole state, handed over once as it starts.
#[allow(clippy::too_many_arguments)]
fn write_loop<W: Sink>(
    mut out: W,
    path: PathBuf,
    rx: mpsc::Receiver<Msg>,
    pending: &Mutex<Pending>,
    mut journal: Drainer,
    health: &Health,
    syncer: &Syncer,
    pause: std::time::Duration,
    keep_free: u64,
) {
    // Records taken from the pending count and not written yet: they stay
    // in the backlog until written, which bounds it (`Audit::record` drops
    // past the backlog limit).
    let mut records = 0;
    // A disk already short of room at start refuses the first request,
    // rather than letting it out and then finding no room for its record.
    let mut failed = match out.follow().and_then(|_| has_room(&out, keep_free, 0)) {
        Ok(()) => false,
        Err(err) => {
            writes_fail(health, &path, &err);
            true
        }
    };
    loop {
        let mut flushed = Vec::new();
        let mut closed = false;
        let mut take = |msg: Option<Msg>, closed: &mut bool| match msg {
            Some(Msg::Lines) => {}
            Some(Msg::Flush(done)) => flushed.push(done),
            None => *closed = true,
        };
        if failed {
            // A write failed: try again now and then, whether or not new
            // records come, so that the log recovering is noticed without
            // a request having to be refused first.
            std::thread::sleep(RETRY_PAUSE);
        } else {
            take(rx.recv().ok(), &mut closed);
        }
        loop {
            match rx.try_recv() {
                Ok(next) => take(Some(next), &mut closed),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    take(None, &mut closed);
                    break;
                }
            }
        }
        // After the messages, so that a flush covers every record made
        // before it was sent; under the lock, so that the records counted
        // are the lines up to `end`.
        let end = {
            let mut pending = pending.lock().unwrap_or_else(PoisonError::into_inner);
            records += pending.take();
            journal.unwritten().1
        };
        // Room for what comes while this batch is written (a write
        // makes more room as it goes, but one may fail or hang).
        journal.allocate_ahead();
        let wrote = journal.unwritten().0 < end;
        // Failing, the log is tried again even with nothing to write: the
        // room it lacked may have come back.
        if wrote || failed {
            let written = write_batch(&mut out, &path, &mut journal, end, keep_free);
            failed = written.is_err();
            match written {
                Ok(()) => {
                    if wrote && let Some(disk) = out.disk() {
                        syncer.written(disk);
                    }
                    health.backlog.fetch_sub(records, Ordering::Relaxed);
                    records = 0;
                    if health.failing.swap(false, Ordering::Relaxed) {
                        *health
                            .write_error
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner) = None;
                        tracing::info!(path = %path.display(), "audit log writable again");
                    }
                }
                Err(err) => writes_fail(health, &path, &err),
            }
        }
        // A flush (a stop) returns once the lines are on the disk.
        if (closed || !flushed.is_empty())
            && let Some(disk) = out.disk()
        {
            syncer.sync_now(&*disk);
        }
        for done in flushed {
            let _ = done.send(());
        }
        if closed {
            if records > 0 {
                tracing::warn!(
                    path = %path.display(),
                    records,
                    "audit log not writable at stop: the records wait in the journal for the next start"
                );
            }
            return;
        }
        if wrote && !failed {
            // Under load, let records gather: one wake-up and one write per
            // batch instead of a context switch per request. Idle, the next
            // record is written as soon as it comes. A full batch unparks
            // the writer early (a stale unpark only makes one write early).
            std::thread::park_timeout(pause);
        }
    }
}

/// Marks the log failing, and says why the first time.
fn writes_fail(health: &Health, path: &Path, err: &std::io::Error) {
    *health
        .write_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(err.to_string());
    if !health.failing.swap(true, Ordering::Relaxed) {
        tracing::error!(
            path = %path.display(),
            error = %err,
            "audit log not writable; requests are refused until it is (tried again every {} ms)",
            RETRY_PAUSE.as_millis()
        );
    }
}

/// Writes the journal up to `end` to the file at the log's path, if its
/// file system keeps `keep_free` bytes available after the write.
fn write_batch(
    out: &mut impl Sink,
    path: &Path,
    journal: &mut Drainer,
    end: u64,
    keep_free: u64,
) -> std::io::Result<()> {
    let followed = out.follow()?;
    if followed.moved {
        tracing::info!(
            path = %path.display(),
            "audit log was moved or removed (rotated?): writing to a new file at its path"
        );
    }
    has_room(out, keep_free, end.saturating_sub(journal.unwritten().0))?;
    write_journal(out, journal, end, followed.end)
}

/// Whether `bytes` more leave `keep_free` available where the log is. Once
/// they would not, records wait in the journal (16 MiB) and requests are
/// refused: the disk is not filled for the rest of the host by an agent
/// that makes requests only to have them refused.
fn has_room(out: &impl Sink, keep_free: u64, bytes: u64) -> std::io::Result<()> {
    if keep_free == 0 {
        return Ok(());
    }
    match out.room()? {
        Some(available) if available.saturating_sub(bytes) < keep_free => Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!(
                "the audit log's file system is down to the {} MiB that audit_min_free_mib keeps free for the rest of the host ({:.1} MiB available): make room there (rotate or move old audit logs), or lower audit_min_free_mib",
                keep_free >> 20,
                available as f64 / f64::from(1 << 20),
            ),
        )),
        _ => Ok(()),
    }
}

/// Writes the journal up to `end` to the log, which ends at `log_end`,
/// moving the journal's head past each piece the log takes; on an error the
/// rest stays unwritten, so that a retry neither repeats nor skips a byte.
/// Before each write the journal notes where the log ends, for a start after
/// a kill to tell what this write got to.
fn write_journal(
    out: &mut impl std::io::Write,
    journal: &mut Drainer,
    end: u64,
    mut log_end: Option<LogEnd>,
) -> std::io::Result<()> {
    loop {
        let head = journal.unwritten().0;
        if head >= end {
            return Ok(());
        }
        journal.mark(log_end);
        match out.write(journal.piece(head, end)) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                journal.advance(n as u64);
                if let Some(log_end) = &mut log_end {
                    log_end.size += n as u64;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
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
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn flush_returns_once_everything_sent_before_it_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::start(&path, &journal_beside(&path), 0).expect("start");
        for round in 0..3 {
            for i in 0..1000u16 {
                audit.record(AuditRecord {
                    host: "api.example.test".into(),
                    port: i,
                    ..AuditRecord::default()
                });
            }
            assert!(
                audit.flush(std::time::Duration::from_secs(10)),
                "flush timed out"
            );
            // No polling: flush promises the lines are in the file now.
            let text = std::fs::read_to_string(&path).expect("audit log");
            assert_eq!(text.lines().count(), 1000 * (round + 1));
        }
    }

    /// The journal of the log at `path`, in its folder.
    fn journal_beside(path: &Path) -> PathBuf {
        path.with_file_name("audit.journal")
    }

    fn line_count(path: &Path) -> usize {
        std::fs::read_to_string(path)
            .expect("audit log")
            .lines()
            .count()
    }

    /// A log whose writer pauses far longer than a test may wait, once it
    /// has written its first record: idle, a record is written at once.
    fn pausing_writer(dir: &Path) -> (Audit, PathBuf) {
        let path = dir.join("audit.jsonl");
        let file = LogFile::open(&path).expect("create");
        let pause = std::time::Duration::from_secs(120);
        let audit =
            Audit::start_writer(file, &path, &journal_beside(&path), BACKLOG_LIMIT, pause, 0)
                .expect("start");
        audit.record(AuditRecord::default());
        wait_until("the first line", || line_count(&path) == 1);
        (audit, path)
    }

    #[test]
    fn a_full_batch_is_written_without_waiting_out_the_pause() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (audit, path) = pausing_writer(dir.path());
        let record = || AuditRecord {
            host: "a-host-name-long-enough-to-fill-a-batch-soon.example.test".into(),
            ..AuditRecord::default()
        };
        let per_batch = BATCH_BYTES / 200;
        for _ in 0..per_batch {
            audit.record(record());
        }
        wait_until("a full batch, long before the pause ends", || {
            line_count(&path) > BATCH_BYTES / 1024
        });
    }

    #[test]
    fn a_flush_does_not_wait_out_the_pause() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (audit, path) = pausing_writer(dir.path());
        // Two more pending while the writer pauses.
        audit.record(AuditRecord::default());
        audit.record(AuditRecord::default());
        assert!(
            audit.flush(std::time::Duration::from_secs(10)),
            "flush timed out"
        );
        assert_eq!(line_count(&path), 3);
    }

    #[test]
    fn records_from_many_threads_land_as_whole_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::start(&path, &journal_beside(&path), 0).expect("start");
        let threads: Vec<_> = (0..4u16)
            .map(|t| {
                let audit = audit.clone();
                std::thread::spawn(move || {
                    for i in 0..2000u16 {
                        audit.record(AuditRecord {
                            host: format!("host-{t}.example.test").into(),
                            port: i,
                            ..AuditRecord::default()
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("recording thread");
        }
        assert!(audit.flush(std::time::Duration::from_secs(10)));
        let text = std::fs::read_to_string(&path).expect("audit log");
        let mut per_thread = std::collections::HashMap::<String, Vec<u64>>::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("a whole JSON line");
            per_thread
                .entry(v["host"].as_str().expect("host").to_owned())
                .or_default()
                .push(v["port"].as_u64().expect("port"));
        }
        assert_eq!(per_thread.len(), 4);
        for ports in per_thread.values() {
            // Each thread's records, all there and in the order it made them.
            assert_eq!(*ports, (0..2000).collect::<Vec<u64>>());
        }
        assert_eq!(audit.state().backlog, 0);
    }

    #[test]
    fn a_record_made_while_its_thread_exits_is_kept() {
        // A body dropped by a thread-local's destructor records its request
        // after the thread's own formatting buffer may be gone.
        struct RecordOnDrop(Audit);
        impl Drop for RecordOnDrop {
            fn drop(&mut self) {
                self.0.record(AuditRecord {
                    host: "late.example.test".into(),
                    ..AuditRecord::default()
                });
            }
        }
        thread_local! {
            static LATE: std::cell::RefCell<Option<RecordOnDrop>> =
                const { std::cell::RefCell::new(None) };
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::start(&path, &journal_beside(&path), 0).expect("start");
        let late = audit.clone();
        std::thread::spawn(move || {
            LATE.with(|slot| *slot.borrow_mut() = Some(RecordOnDrop(late.clone())));
            // Made after LATE, so destroyed before it.
            late.record(AuditRecord {
                host: "early.example.test".into(),
                ..AuditRecord::default()
            });
        })
        .join()
        .expect("the exiting thread must not panic");
        assert!(audit.flush(std::time::Duration::from_secs(10)));
        let text = std::fs::read_to_string(&path).expect("audit log");
        let hosts = hosts_of(&text);
        assert_eq!(hosts, ["early.example.test", "late.example.test"]);
    }

    /// The host of each line of the audit log at `path`.
    fn hosts_in(path: &Path) -> Vec<String> {
        hosts_of(&std::fs::read_to_string(path).expect("audit log"))
    }

    /// The host of each line of an audit log, which must be whole JSON.
    fn hosts_of(text: &str) -> Vec<String> {
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("whole JSON lines");
                v["host"].as_str().expect("host").to_owned()
            })
            .collect()
    }

    fn format_rfc3339(secs: u64, millis: u32) -> String {
        let at = UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let at = at + std::time::Duration::from_millis(millis.into());
        serde_json::to_value(Timestamp(Some(at)))
            .expect("serializes")
            .as_str()
            .expect("a string")
            .to_owned()
    }

    #[test]
    fn timestamps_are_utc_rfc3339() {
        assert_eq!(format_rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339(1_795_546_924, 123),
            "2026-11-24T19:02:04.123Z"
        );
        assert_eq!(format_rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
    }

    /// A FIFO as the audit log, with a reader that takes nothing until
    /// told: a disk that stopped taking writes.
    fn stalled_log(
        dir: &Path,
    ) -> (
        PathBuf,
        std::sync::mpsc::Sender<()>,
        std::thread::JoinHandle<usize>,
    ) {
        let path = dir.join("audit.fifo");
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let reader_path = path.clone();
        let reader = std::thread::spawn(move || {
            let mut fifo = std::fs::File::open(reader_path).expect("open fifo");
            let _ = wait.recv();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut fifo, &mut text).expect("read fifo");
            text.lines().count()
        });
        (path, go, reader)
    }

    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !cond() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting: {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// A log that fails with ENOSPC while `full` is set, and otherwise
    /// takes at most 7 bytes a call (so lines are split across writes).
    #[derive(Clone, Default)]
    struct FlakyDisk {
        full: Arc<AtomicBool>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Sink for FlakyDisk {}

    impl Write for FlakyDisk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.full.load(Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = buf.len().min(7);
            self.written.lock().unwrap().extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A log whose writes land in a page cache that only `sync` puts on
    /// the disk.
    #[derive(Clone, Default)]
    struct CachedDisk(Arc<Mutex<CachedDiskState>>);

    #[derive(Default)]
    struct CachedDiskState {
        written: usize,
        on_disk: usize,
        writes: usize,
        syncs: usize,
        sync_error: bool,
        /// Syncs wait while this is set (a disk slow to flush)...
        hang: bool,
        /// ...and one did.
        hung: bool,
    }

    impl CachedDisk {
        /// Whether everything written is on the disk.
        fn all_synced(&self) -> bool {
            let state = self.0.lock().unwrap();
            state.on_disk == state.written
        }
    }

    impl Sink for CachedDisk {
        fn disk(&self) -> Option<Arc<dyn log_file::Disk>> {
            Some(Arc::new(self.clone()))
        }
    }

    impl log_file::Disk for CachedDisk {
        fn sync(&self) -> std::io::Result<()> {
            loop {
                let mut state = self.0.lock().unwrap();
                if state.sync_error {
                    return Err(std::io::Error::from_raw_os_error(libc::EIO));
                }
                if !state.hang {
                    state.on_disk = state.written;
                    state.syncs += 1;
                    return Ok(());
                }
                state.hung = true;
                drop(state);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }

    impl Write for CachedDisk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut state = self.0.lock().unwrap();
            state.written += buf.len();
            state.writes += 1;
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn cached_disk_writer(dir: &Path) -> (Audit, CachedDisk) {
        let disk = CachedDisk::default();
        let audit = Audit::start_writer(
            disk.clone(),
            Path::new("/cached/audit.jsonl"),
            &dir.join("audit.journal"),
            BACKLOG_LIMIT,
            BATCH_PAUSE,
            0,
        )
        .expect("start");
        (audit, disk)
    }

    #[test]
    fn the_last_records_before_a_lull_reach_the_disk_within_a_second() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (audit, disk) = cached_disk_writer(dir.path());
        audit.record(AuditRecord::default());
        wait_until("the record to be written", || {
            disk.0.lock().unwrap().written > 0
        });
        // No more records come to wake the writer: it must wake for the sync.
        wait_until("the record to be synced", || disk.all_synced());
    }

    #[test]
    fn under_load_the_log_is_synced_once_a_second_not_every_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (audit, disk) = cached_disk_writer(dir.path());
        let started = std::time::Instant::now();
        // 2.5 s of a record every 5 ms: over a hundred batches.
        for _ in 0..500 {
            audit.record(AuditRecord::default());
            std::thread::sleep(std::time::Duration::from_millis(5));
            if started.elapsed() > std::time::Duration::from_millis(2500) {
                break;
            }
        }
        let state = disk.0.lock().unwrap();
        assert!(state.writes > 20, "only {} batches", state.writes);
        assert!(
            (1..=4).contains(&state.syncs),
            "{} syncs for {} batches in {:?}",
            state.syncs,
            state.writes,
            started.elapsed()
        );
    }

    #[test]
    fn a_disk_that_cannot_sync_shows_in_the_state_until_it_can() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (audit, disk) = cached_disk_writer(dir.path());
        disk.0.lock().unwrap().sync_error = true;
        audit.record(AuditRecord::default());
        assert!(audit.flush(std::time::Duration::from_secs(10)));
        let state = audit.state();
        assert!(
            state.sync_failing,
            "a failed sync must show in `airlock status`"
        );
        // The records are in the file: requests still go.
        assert!(audit.accepting() && !state.write_failing);
        disk.0.lock().unwrap().sync_error = false;
        audit.record(AuditRecord::default());
        assert!(audit.flush(std::time::Duration::from_secs(10)));
        let state = audit.state();
        assert!(!state.sync_failing);
        // What the failed sync did not put on the disk, the kernel will
        // not write again: the failure stays on record. (The sync thread
        // may have failed too, if this test was slow to get here.)
        assert!(state.sync_failures >= 1, "{}", state.sync_failures);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        assert!(
            state
                .last_sync_failure
                .is_some_and(|at| now.abs_diff(at) <= 60),
            "when: {:?}, now {now}",
            state.last_sync_failure
        );
        assert!(disk.all_synced());
    }

    #[test]
    fn a_sync_that_hangs_does_not_hold_up_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (audit, disk) = cached_disk_writer(dir.path());
        disk.0.lock().unwrap().hang = true;
        audit.record(AuditRecord::default());
        wait_until("a sync to hang", || disk.0.lock().unwrap().hung);
        let before = disk.0.lock().unwrap().written;
        for _ in 0..10 {
            audit.record(AuditRecord::default());
        }
        wait_until("records written while the sync hangs", || {
            disk.0.lock().unwrap().written > before
        });
        assert!(
            audit.accepting(),
            "a slow disk flush must not refuse requests"
        );
        disk.0.lock().unwrap().hang = false;
        wait_until("the records to be synced", || disk.all_synced());
    }

    #[test]
    fn a_flush_returns_once_the_records_are_on_the_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (audit, disk) = cached_disk_writer(dir.path());
        for _ in 0..10 {
            audit.record(AuditRecord::default());
        }
        assert!(audit.flush(std::time::Duration::from_secs(10)));
        let state = disk.0.lock().unwrap();
        assert!(state.written > 0);
        assert_eq!(
            state.on_disk, state.written,
            "a stop must not leave lines in the page cache"
        );
    }

    #[test]
    fn records_outlive_a_full_disk_and_recovery_needs_no_refused_request() {
        let disk = FlakyDisk::default();
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = Audit::start_writer(
            disk.clone(),
            Path::new("/flaky/audit.jsonl"),
            &dir.path().join("audit.journal"),
            100,
            BATCH_PAUSE,
            0,
        )
        .expect("start");
        let record = |i: usize| AuditRecord {
            host: format!("host-{i}.example.test").into(),
            ..AuditRecord::default()
        };
        audit.record(record(0));
        assert!(audit.flush(std::time::Duration::from_secs(10)));
        disk.full.store(true, Ordering::SeqCst);
        audit.record(record(1));
        wait_until("the failed write to be seen", || {
            audit.state().write_failing
        });
        assert!(!audit.accepting(), "requests must stop while writes fail");
        // What a refused request records meanwhile is kept too.
        audit.record(record(2));
        audit.record(record(3));
        // Time for the writer to take them (and fail) before the disk
        // recovers, so that nothing but its retry can notice it.
        std::thread::sleep(std::time::Duration::from_millis(200));

        // The disk has room again; no new record comes, yet the proxy
        // accepts again, by the writer's own retry.
        disk.full.store(false, Ordering::SeqCst);
        wait_until("the retry to succeed", || audit.accepting());
        let state = audit.state();
        assert!(!state.write_failing && state.backlog == 0, "{state:?}");
        assert_eq!(state.lost_records, 0);
        let text = String::from_utf8(disk.written.lock().unwrap().clone()).expect("utf-8");
        let hosts = hosts_of(&text);
        assert_eq!(
            hosts,
            (0..4)
                .map(|i| format!("host-{i}.example.test"))
                .collect::<Vec<_>>()
        );
    }

    /// A log on a file system whose available bytes shrink as it is
    /// written to, and grow when `freed`.
    #[derive(Clone, Default)]
    struct ShrinkingDisk {
        room: Arc<AtomicU64>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl ShrinkingDisk {
        fn with_room(bytes: u64) -> ShrinkingDisk {
            let disk = ShrinkingDisk::default();
            disk.room.store(bytes, Ordering::SeqCst);
            disk
        }
    }

    impl Sink for ShrinkingDisk {
        fn room(&self) -> std::io::Result<Option<u64>> {
            Ok(Some(self.room.load(Ordering::SeqCst)))
        }
    }

    impl Write for ShrinkingDisk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len() as u64;
            self.room
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| r.checked_sub(n))
                .map_err(|_| std::io::Error::from_raw_os_error(libc::ENOSPC))?;
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const KEEP_FREE: u64 = 1 << 20;

    fn shrinking_writer(dir: &Path, disk: &ShrinkingDisk) -> Audit {
        Audit::start_writer(
            disk.clone(),
            Path::new("/small/audit.jsonl"),
            &dir.join("audit.journal"),
            BACKLOG_LIMIT,
            BATCH_PAUSE,
            KEEP_FREE,
        )
        .expect("start")
    }

    #[test]
    fn records_stop_short_of_the_room_kept_free_and_go_on_when_there_is_room() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Room for a few records above what is kept free.
        let disk = ShrinkingDisk::with_room(KEEP_FREE + 1_000);
        let audit = shrinking_writer(dir.path(), &disk);
        let record = |i: usize| AuditRecord {
            host: format!("host-{i}.example.test").into(),
            ..AuditRecord::default()
        };
        let mut made = 0;
        while audit.accepting() {
            assert!(made < 50, "the log never stopped: {:?}", audit.state());
            audit.record(record(made));
            made += 1;
            assert!(audit.flush(std::time::Duration::from_secs(10)));
        }
        assert!(made > 1, "there was room for the first records");
        assert!(
            disk.room.load(Ordering::SeqCst) >= KEEP_FREE,
            "the room kept free was written into"
        );
        let state = audit.state();
        assert!(state.write_failing, "{state:?}");
        let why = state.write_error.expect("a reason");
        assert!(
            why.starts_with(
                "the audit log's file system is down to the 1 MiB that audit_min_free_mib keeps free for the rest of the host (1.0 MiB available)"
            ),
            "{why}"
        );
        // Refused requests' records wait meanwhile.
        audit.record(record(made));
        made += 1;

        disk.room.fetch_add(10 << 20, Ordering::SeqCst);
        wait_until("the log to take records again", || audit.accepting());
        assert!(audit.flush(std::time::Duration::from_secs(10)));
        let state = audit.state();
        assert_eq!((state.backlog, state.lost_records), (0, 0), "{state:?}");
        assert_eq!(state.write_error, None);
        let text = String::from_utf8(disk.written.lock().unwrap().clone()).expect("utf-8");
        assert_eq!(
            hosts_of(&text),
            (0..made)
                .map(|i| format!("host-{i}.example.test"))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_log_already_short_of_room_refuses_before_the_first_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = ShrinkingDisk::with_room(KEEP_FREE - 1);
        let audit = shrinking_writer(dir.path(), &disk);
        wait_until("the log to be found short of room", || {
            audit.state().write_failing
        });
        assert!(!audit.accepting());
        disk.room.fetch_add(1 << 20, Ordering::SeqCst);
        wait_until("the room to be found", || audit.accepting());
    }

    #[test]
    fn a_rotated_log_loses_no_record_and_the_path_gets_the_new_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let rotated = dir.path().join("audit.jsonl.1");
        let audit = Audit::start(&path, &journal_beside(&path), 0).expect("start");
        let record = |host: &str| AuditRecord {
            host: host.into(),
            ..AuditRecord::default()
        };
        audit.record(record("before.example.test"));
        assert!(audit.flush(std::time::Duration::from_secs(10)));
        // As logrotate's `create` does it: rename, then a new empty file.
        std::fs::rename(&path, &rotated).expect("rename");
        std::fs::write(&path, b"").expect("create");
        audit.record(record("after.example.test"));
        assert!(audit.flush(std::time::Duration::from_secs(10)));
        assert_eq!(hosts_in(&rotated), ["before.example.test"]);
        assert_eq!(hosts_in(&path), ["after.example.test"]);
        // Removed outright, it is made again.
        std::fs::remove_file(&path).expect("rm");
        audit.record(record("later.example.test"));
        assert!(audit.flush(std::time::Duration::from_secs(10)));
        assert_eq!(hosts_in(&path), ["later.example.test"]);
        assert_eq!(audit.state().lost_records, 0);
    }

    #[test]
    fn a_log_path_that_takes_no_file_refuses_requests_until_it_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::start(&path, &journal_beside(&path), 0).expect("start");
        std::fs::remove_file(&path).expect("rm");
        std::fs::create_dir(&path).expect("a folder where the log was");
        audit.record(AuditRecord {
            host: "held.example.test".into(),
            ..AuditRecord::default()
        });
        wait_until("the failed open to be seen", || audit.state().write_failing);
        assert!(
            !audit.accepting(),
            "nothing goes out that cannot be recorded"
        );
        std::fs::remove_dir(&path).expect("rmdir");
        wait_until("the retry to open a new log", || audit.accepting());
        assert_eq!(hosts_in(&path), ["held.example.test"]);
        assert_eq!(audit.state().lost_records, 0);
    }

    #[test]
    fn records_a_stop_could_not_write_are_written_by_the_next_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let journal = journal_beside(&path);
        let audit = Audit::start(&path, &journal, 0).expect("start");
        std::fs::remove_file(&path).expect("rm");
        std::fs::create_dir(&path).expect("a folder where the log was");
        audit.record(AuditRecord {
            host: "held.example.test".into(),
            ..AuditRecord::default()
        });
        wait_until("the failed write to be seen", || {
            audit.state().write_failing
        });
        drop(audit);
        // The stopped writer lets go of the journal once it has seen the
        // stop (after its retry pause).
        let file = std::fs::File::open(&journal).expect("journal");
        wait_until("the stopped writer to let go of the journal", || {
            // SAFETY: a plain system call on a descriptor we own.
            unsafe {
                libc::flock(
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    libc::LOCK_EX | libc::LOCK_NB,
                ) == 0
            }
        });
        drop(file);
        std::fs::remove_dir(&path).expect("rmdir");
        let audit = Audit::start(&path, &journal, 0).expect("start again");
        assert_eq!(audit.state().recovered_at_start, 1);
        assert!(audit.flush(std::time::Duration::from_secs(10)));
        assert_eq!(hosts_in(&path), ["held.example.test"]);
        assert_eq!(audit.state().lost_records, 0);
    }

    #[test]
    fn a_stalled_log_stops_new_requests_and_bounds_the_queue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, go, reader) = stalled_log(dir.path());
        let limit = 200;
        let audit =
            Audit::start_with_limit(&path, &journal_beside(&path), limit, 0).expect("start");
        assert!(audit.accepting());
        // Enough lines to fill the pipe and block the writer, then more.
        let record = || AuditRecord {
            host: "a-rather-long-host-name-to-fill-the-pipe.example.test".into(),
            ..AuditRecord::default()
        };
        for _ in 0..5000 {
            audit.record(record());
        }
        assert!(
            !audit.accepting(),
            "a stalled writer must stop new requests"
        );
        let state = audit.state();
        assert!(state.backlog <= 2 * limit, "queue not bounded: {state:?}");
        assert!(state.lost_records > 0, "{state:?}");
        assert!(!state.write_failing, "a slow disk is not a failed write");

        // The disk comes back: the queue drains and requests go through.
        go.send(()).expect("reader");
        wait_until("the writer to catch up", || audit.accepting());
        let lost = audit.state().lost_records;
        drop(audit);
        let written = reader.join().expect("reader thread");
        assert_eq!(
            written as u64 + lost,
            5000,
            "every record written or counted lost"
        );
    }

    #[test]
    fn request_ids_are_16_hex_digits_in_the_log_and_the_header() {
        let id = RequestId(0x0123_4567_89ab_cdef);
        assert_eq!(
            serde_json::to_value(id).expect("serializes"),
            "0123456789abcdef"
        );
        assert_eq!(id.header_value(), "0123456789abcdef");
        assert_eq!(RequestId(0xa).header_value(), "000000000000000a");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_land_one_json_object_a_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit/audit.jsonl");
        let audit = Audit::start(&path, &journal_beside(&path), 0).expect("start");
        for i in 0..100u16 {
            audit.record(AuditRecord {
                agent: Some("pr-bot".into()),
                action: Some(if i % 2 == 0 {
                    Action::Allow
                } else {
                    Action::Deny
                }),
                host: "api.example.test".into(),
                port: i,
                credentials: vec!["github-token".into()],
                ..AuditRecord::default()
            });
        }
        let mut lines = Vec::new();
        for _ in 0..100 {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            lines = text.lines().map(str::to_owned).collect();
            if lines.len() == 100 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(lines.len(), 100);
        let first: serde_json::Value = serde_json::from_str(&lines[0]).expect("json");
        assert_eq!(first["action"], "allow");
        assert_eq!(first["credentials"][0], "github-token");
        assert!(first["request_id"].as_str().is_some_and(|s| s.len() == 16));
        assert_eq!(audit.recent_denials().len(), RECENT_DENIALS);
    }

    /// The real log, killed in the middle of a batch: the second write's
    /// bytes reach the file, and the process dies before the journal's head
    /// moves past them.
    struct KilledMidBatch {
        log: LogFile,
        writes: usize,
    }

    impl Sink for KilledMidBatch {
        fn follow(&mut self) -> std::io::Result<log_file::Followed> {
            self.log.follow()
        }
    }

    impl Write for KilledMidBatch {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.writes += 1;
            let n = self.log.write(&buf[..buf.len().min(5)])?;
            match self.writes {
                1 => Ok(n),
                _ => Err(std::io::Error::other("killed")),
            }
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_batch_cut_short_by_a_kill_after_a_rotation_is_finished_by_the_next_start_not_repeated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let journal_path = journal_beside(&path);
        let log = LogFile::open(&path).expect("log");
        // logrotate's `create`, between two batches: the writer must note
        // where the new file ends, not the one it let go.
        std::fs::rename(&path, dir.path().join("audit.jsonl.1")).expect("rotate");
        std::fs::write(&path, b"made by logrotate\n").expect("create");

        let mut opened = journal::open(&journal_path, &path).expect("journal");
        assert!(opened.appender.append(b"first\n"));
        assert!(opened.appender.append(b"second\n"));
        let mut out = KilledMidBatch { log, writes: 0 };
        let end = opened.drainer.unwritten().1;
        write_batch(&mut out, &path, &mut opened.drainer, end, 0).expect_err("killed mid-batch");
        drop(opened);

        let mut opened = journal::open(&journal_path, &path).expect("the next start");
        assert_eq!(
            opened.recovered.already_written, 5,
            "\"\\nseco\" is in the log"
        );
        let mut log = LogFile::open(&path).expect("log");
        let end = opened.drainer.unwritten().1;
        write_batch(&mut log, &path, &mut opened.drainer, end, 0).expect("write the rest");
        assert_eq!(
            std::fs::read_to_string(&path).expect("log"),
            "made by logrotate\nfirst\nsecond\n"
        );
    }
}
