//! Where audit lines wait for the writer: a ring in a file mapped shared,
//! so that a line is in the kernel's keeping the moment it is recorded.
//! The writer batches its writes to the log (one wake-up per 100 ms or
//! 128 KiB under load); lines held on the daemon's heap meanwhile died
//! with it when it was killed. In the mapping they outlive the process
//! (the file is on tmpfs, `/run/airlock`, and lasts until reboot), and the
//! next start writes them to the log before anything else.
//!
//! Appending is a copy into memory, as it was into the heap: no system call
//! on the request's path. The writer writes straight from the mapping and
//! then gives the pages it has finished with back to the file system
//! (a punched hole), so resident memory is the lines waiting, not the ring.
//!
//! The first page is a header; offsets are byte counts since the journal
//! was made, never wrapped, and index the ring modulo its capacity. Lines
//! between `head` and `tail` are unwritten. `tail` moves after a whole line
//! is copied, so the ring holds only whole lines.
//!
//! So that a line is written exactly once, the writer notes before each
//! write where the log ended and how far the ring had been written (the
//! mark). After a kill, the bytes past that end are compared with the ring
//! past the mark: what the log already has is not written again, even if
//! the kill came in the middle of a line.

use std::{
    fs::File,
    io::{self, Read as _, Seek as _},
    os::{
        fd::AsRawFd as _,
        unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
    ptr::NonNull,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

/// "AIRLJNL1", little-endian.
const MAGIC: u64 = u64::from_le_bytes(*b"AIRLJNL1");
const HEADER: usize = 4096;
/// The ring's size. Sparse: only pages holding unwritten lines take memory.
/// Twice the audit queue's limit of typical lines, so that the queue's own
/// bound (and the refusals it brings) comes first.
pub const CAPACITY: u64 = 16 << 20;
/// Larger rings in a file are refused as damage: the mapping would be
/// that large.
const MAX_CAPACITY: u64 = 1 << 30;
const PAGE: u64 = 4096;
/// How far ahead of the appender the writer keeps pages allocated: at
/// 40k records/s, about 70 ms of lines: eight full batches (128 KiB, which
/// wakes the writer at once).
const AHEAD: u64 = 1 << 20;

/// Header fields, each a u64 at this byte offset.
mod field {
    pub const MAGIC: usize = 0;
    pub const CAPACITY: usize = 8;
    pub const HEAD: usize = 16;
    pub const TAIL: usize = 24;
    /// Non-zero while the mark below is whole.
    pub const MARKED: usize = 32;
    pub const MARK_HEAD: usize = 40;
    pub const LOG_DEV: usize = 48;
    pub const LOG_INO: usize = 56;
    pub const LOG_SIZE: usize = 64;
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open audit journal {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "audit journal {path} is in use by another process (is another airlock daemon running? `airlock status` tells)"
    )]
    Busy { path: PathBuf },
    #[error(
        "audit journal {path} is not a regular file; remove it, or point admin_socket elsewhere"
    )]
    NotAFile { path: PathBuf },
}

/// Where the log stood when a write began: its file and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogEnd {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
}

/// What a start found left over from the run before.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Whole lines waiting to be written.
    pub lines: usize,
    /// Bytes found already in the log (a kill during a write).
    pub already_written: u64,
    /// Set when the file was not a journal this version can read; it was
    /// moved to this path and a new one made.
    pub set_aside: Option<PathBuf>,
}

/// The shared file mapping. Only [`Appender`] writes the ring (beyond
/// `tail`) and only [`Drainer`] reads it (between `head` and `tail`).
struct Mapping {
    base: NonNull<u8>,
    len: usize,
    capacity: u64,
    /// Up to this offset the ring's pages are allocated in the file. The
    /// appender writes no further: a page of a shared mapping that the file
    /// system has no room for faults with SIGBUS, and a full `/run` must
    /// refuse requests, not kill the daemon.
    ready: AtomicU64,
    /// Holds the lock (`flock`) that keeps a second daemon out.
    file: File,
}

// SAFETY: the mapping is plain memory shared between one Appender and one
// Drainer, which touch disjoint byte ranges (see their docs) and hand
// ranges over through the atomic `head` and `tail`.
unsafe impl Send for Mapping {}
// SAFETY: as above; shared access goes through atomics or disjoint ranges.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` are what mmap returned, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

impl Mapping {
    fn field(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset + 8 <= HEADER && offset.is_multiple_of(8));
        // SAFETY: inside the header page, 8-aligned (the mapping is
        // page-aligned), and only ever accessed as atomics.
        unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    fn ring(&self) -> *mut u8 {
        // SAFETY: the ring starts right after the header, inside the mapping.
        unsafe { self.base.as_ptr().add(HEADER) }
    }

    fn position(&self, offset: u64) -> usize {
        (offset % self.capacity) as usize
    }

    fn head(&self) -> u64 {
        self.field(field::HEAD).load(Ordering::Acquire)
    }

    /// How far ahead of the tail pages are kept allocated.
    fn ahead(&self) -> u64 {
        AHEAD.min(self.capacity / 2)
    }

    fn tail(&self) -> u64 {
        self.field(field::TAIL).load(Ordering::Acquire)
    }

    /// The unwritten bytes in `[from, to)` that lie in one piece from
    /// `from`: up to `to`, or to the ring's end.
    fn piece(&self, from: u64, to: u64) -> &[u8] {
        let start = self.position(from);
        let len = (to - from).min(self.capacity - start as u64) as usize;
        // SAFETY: `[from, to)` is within `[head, tail)`, which the Appender
        // does not write until `head` passes it, and lies inside the ring.
        unsafe { std::slice::from_raw_parts(self.ring().add(start), len) }
    }

    /// Frees the pages of the ring's file wholly inside `[from, to)`.
    fn punch(&self, from: u64, to: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            from.div_ceil(PAGE) * PAGE,
            to / PAGE * PAGE,
        )
    }

    /// Allocates the ring's pages from `ready` up to `to` (whole pages),
    /// and moves `ready` there; on an error (ENOSPC), as far as it got.
    /// The writer and the appender may both call it: a range allocated
    /// twice is no harm, and `ready` only moves forward.
    fn allocate(&self, to: u64) -> io::Result<()> {
        let mut from = self.ready.load(Ordering::Relaxed);
        let to = to / PAGE * PAGE;
        while from < to {
            // A page at a time past the first failure would be slow; a
            // window at once is one call, and on failure page by page
            // finds how far there is room.
            let step = if self.fallocate(0, from, to).is_ok() {
                to - from
            } else {
                self.fallocate(0, from, from + PAGE)?;
                PAGE
            };
            from += step;
            self.ready.fetch_max(from, Ordering::Release);
        }
        Ok(())
    }

    /// `fallocate(mode)` over the ring's offsets `[from, to)`, in at most
    /// two pieces where they wrap. Both ends page-aligned.
    fn fallocate(&self, mode: libc::c_int, mut from: u64, to: u64) -> io::Result<()> {
        while from < to {
            let start = self.position(from) as u64;
            let len = (to - from).min(self.capacity - start);
            // SAFETY: a plain system call on our own descriptor.
            let rc = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    mode,
                    (HEADER as u64 + start) as libc::off_t,
                    len as libc::off_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            from += len;
        }
        Ok(())
    }
}

/// Appends whole lines. One exists per journal: `&mut self` keeps appends
/// from racing each other.
pub struct Appender {
    map: Arc<Mapping>,
}

impl Appender {
    /// Copies `line` into the ring. False when it does not fit: the writer
    /// is that far behind, and the caller counts the line lost.
    pub fn append(&mut self, line: &[u8]) -> bool {
        let map = &*self.map;
        let head = map.head();
        let tail = map.field(field::TAIL).load(Ordering::Relaxed);
        let len = line.len() as u64;
        // Not into the page that holds `head`, even where it is written
        // already: the Drainer gives whole pages back, that one included,
        // before it moves `head` past them. Nor past the pages allocated.
        let limit = head / PAGE * PAGE + map.capacity;
        if tail + len > limit {
            return false;
        }
        if tail + len > map.ready.load(Ordering::Acquire) {
            // The writer has not kept room ahead: it has not had the CPU
            // for a burst this large. Room is made here, one system call on
            // the request path, rather than the line lost.
            let want = (tail + len + map.ahead() / 4).div_ceil(PAGE) * PAGE;
            if map.allocate(want.min(limit)).is_err()
                && tail + len > map.ready.load(Ordering::Acquire)
            {
                return false;
            }
        }
        let start = map.position(tail);
        let first = line.len().min(map.capacity as usize - start);
        // SAFETY: `[tail, tail + len)` is inside the ring (modulo its
        // capacity) and not in `[head, tail)`, which the Drainer reads, nor
        // in a page it may be punching; only this Appender writes, and it
        // is borrowed mutably.
        unsafe {
            std::ptr::copy_nonoverlapping(line.as_ptr(), map.ring().add(start), first);
            std::ptr::copy_nonoverlapping(line[first..].as_ptr(), map.ring(), line.len() - first);
        }
        map.field(field::TAIL).store(tail + len, Ordering::Release);
        true
    }
}

/// How full the journal is, read without the appender's lock.
#[derive(Clone)]
pub struct Gauge {
    map: Arc<Mapping>,
}

impl Gauge {
    /// Whether less than half the ring waits for the writer, and half the
    /// window ahead is allocated. Beyond that new requests are refused, so
    /// that records of requests already under way still find room.
    pub fn has_room(&self) -> bool {
        let tail = self.map.tail();
        tail.saturating_sub(self.map.head()) < self.map.capacity / 2
            && self.map.ready.load(Ordering::Acquire).saturating_sub(tail) >= self.map.ahead() / 2
    }
}

/// Reads what is unwritten and moves `head` past what the log took.
pub struct Drainer {
    map: Arc<Mapping>,
    /// Up to here the ring's pages have been given back.
    punched: u64,
    punch_failed: bool,
    allocate_failed: bool,
}

impl Drainer {
    /// `(head, tail)`: the unwritten bytes, whole lines.
    pub fn unwritten(&self) -> (u64, u64) {
        (self.map.head(), self.map.tail())
    }

    /// The unwritten bytes from `from` that lie in one piece.
    pub fn piece(&self, from: u64, to: u64) -> &[u8] {
        self.map.piece(from, to)
    }

    /// Notes, before a write, where the log ends: after a kill, what the
    /// log has past `end` is the ring from `head` on. None (a log that is
    /// no file) notes nothing, and such a write may be repeated.
    pub fn mark(&mut self, end: Option<LogEnd>) {
        let map = &*self.map;
        let marked = map.field(field::MARKED);
        marked.store(0, Ordering::Release);
        let Some(end) = end else {
            return;
        };
        map.field(field::MARK_HEAD)
            .store(map.head(), Ordering::Relaxed);
        map.field(field::LOG_DEV).store(end.dev, Ordering::Relaxed);
        map.field(field::LOG_INO).store(end.ino, Ordering::Relaxed);
        map.field(field::LOG_SIZE)
            .store(end.size, Ordering::Relaxed);
        marked.store(1, Ordering::Release);
    }

    /// `n` more bytes are in the log. Whole pages behind the new head go
    /// back to the file system first: once `head` moves, the appender may
    /// write to those places of the ring again, and a hole punched after
    /// that would wipe its lines.
    pub fn advance(&mut self, n: u64) {
        let map = &*self.map;
        let head = map.head() + n;
        if !self.punch_failed {
            let from = self.punched.max(head.saturating_sub(map.capacity));
            if let Err(err) = map.punch(from, head) {
                // Still correct, only resident: the ring's pages stay.
                self.punch_failed = true;
                tracing::warn!(error = %err, "audit journal cannot give pages back; it keeps up to {} MiB resident", map.capacity >> 20);
            }
            self.punched = head / PAGE * PAGE;
        }
        map.field(field::HEAD).store(head, Ordering::Release);
        self.allocate_ahead();
    }

    /// Keeps [`AHEAD`] bytes past the tail allocated, within the ring.
    /// Called after each write and each batch taken; when the file system
    /// is full, says so once until it has room again.
    pub fn allocate_ahead(&mut self) {
        let map = &*self.map;
        let limit = map.head() / PAGE * PAGE + map.capacity;
        let want = (map.tail() + map.ahead()).div_ceil(PAGE) * PAGE;
        match map.allocate(want.min(limit)) {
            Ok(()) => {
                if std::mem::take(&mut self.allocate_failed) {
                    tracing::info!("audit journal has room again");
                }
            }
            Err(err) => {
                if !std::mem::replace(&mut self.allocate_failed, true) {
                    tracing::error!(
                        error = %err,
                        "audit journal cannot allocate room for new records (is /run full?); requests are refused until it can"
                    );
                }
            }
        }
    }
}

/// A journal's three handles, and what it held.
pub struct Opened {
    pub appender: Appender,
    pub drainer: Drainer,
    pub gauge: Gauge,
    pub recovered: Recovered,
}

/// Opens the journal at `path`, making it if need be, and takes the lines
/// a previous run left unwritten. `log` is the audit log they belong to:
/// bytes a killed write already put there are not kept twice.
pub fn open(path: &Path, log: &Path) -> Result<Opened, JournalError> {
    open_sized(path, log, CAPACITY)
}

/// [`open`], making a new journal's ring `capacity` bytes (tests use small
/// ones).
fn open_sized(path: &Path, log: &Path, capacity: u64) -> Result<Opened, JournalError> {
    let open_err = |source| JournalError::Open {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(open_err)?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(open_err)?;
    let meta = file.metadata().map_err(open_err)?;
    if !meta.is_file() {
        return Err(JournalError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    // SAFETY: a plain system call on our own descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        return Err(if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            JournalError::Busy {
                path: path.to_path_buf(),
            }
        } else {
            open_err(err)
        });
    }
    let mut recovered = Recovered::default();
    let (file, capacity) = match existing_capacity(&file, meta.len()) {
        Ok(Some(capacity)) => (file, capacity),
        Ok(None) => (fresh(file, capacity).map_err(open_err)?, capacity),
        Err(why) => {
            drop(file);
            return set_aside_and_open(path, log, capacity, why);
        }
    };
    let len = HEADER + capacity as usize;
    // SAFETY: a new shared mapping of `len` bytes of our own file, which is
    // that long; checked for failure below.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(open_err(io::Error::last_os_error()));
    }
    let map = Arc::new(Mapping {
        base: NonNull::new(base.cast()).ok_or_else(|| open_err(io::ErrorKind::Other.into()))?,
        len,
        capacity,
        ready: AtomicU64::new(0),
        file,
    });
    if let Some(why) = damaged(&map) {
        drop(map);
        return set_aside_and_open(path, log, capacity, why);
    }
    // Pages given back just before a kill stopped `head` moving past them
    // read as zeros, which no line holds; the log has what they held.
    let punched = leading_zeros(&map);
    recovered.already_written = punched + already_written(&map, log, map.head() + punched);
    let head = map.head() + recovered.already_written;
    map.field(field::HEAD).store(head, Ordering::Release);
    map.field(field::MARKED).store(0, Ordering::Release);
    let tail = map.tail();
    let mut from = head;
    while from < tail {
        let piece = map.piece(from, tail);
        recovered.lines += piece.iter().filter(|&&b| b == b'\n').count();
        from += piece.len() as u64;
    }
    Ok(Opened {
        appender: Appender { map: map.clone() },
        gauge: Gauge { map: map.clone() },
        drainer: {
            // What is unwritten is in the file already; room for what
            // comes next is made before the first append.
            map.ready
                .store(tail.div_ceil(PAGE) * PAGE, Ordering::Release);
            let mut drainer = Drainer {
                map,
                punched: head / PAGE * PAGE,
                punch_failed: false,
                allocate_failed: false,
            };
            drainer.allocate_ahead();
            drainer
        },
        recovered,
    })
}

/// The capacity of a journal already in the file, None for a new (empty)
/// file, or why it is no journal this version reads.
fn existing_capacity(file: &File, len: u64) -> Result<Option<u64>, &'static str> {
    if len == 0 {
        return Ok(None);
    }
    let mut header = [0u8; 16];
    if len < HEADER as u64 || (&*file).read_exact(&mut header).is_err() {
        return Err("shorter than a journal's header");
    }
    let word = |i: usize| u64::from_le_bytes(header[i..i + 8].try_into().unwrap_or_default());
    if word(field::MAGIC) != MAGIC {
        return Err("not an airlock audit journal");
    }
    let capacity = word(field::CAPACITY);
    if capacity == 0
        || capacity % PAGE != 0
        || capacity > MAX_CAPACITY
        || len != HEADER as u64 + capacity
    {
        return Err("its size does not match its header");
    }
    Ok(Some(capacity))
}

/// Sizes a new file as an empty journal with a ring of `capacity` bytes.
fn fresh(mut file: File, capacity: u64) -> io::Result<File> {
    file.set_len(HEADER as u64 + capacity)?;
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(&MAGIC.to_le_bytes());
    header[8..].copy_from_slice(&capacity.to_le_bytes());
    file.rewind()?;
    std::io::Write::write_all(&mut file, &header)?;
    Ok(file)
}

/// Why the header's offsets cannot be right, if they cannot: the lines
/// between them must fit the ring and end a line.
fn damaged(map: &Mapping) -> Option<&'static str> {
    let (head, tail) = (map.head(), map.tail());
    if head > tail || tail - head > map.capacity {
        return Some("its offsets are out of order");
    }
    if tail > head && map.piece(tail - 1, tail) != b"\n" {
        return Some("its last line is not whole");
    }
    None
}

/// How many NUL bytes the unwritten lines start with.
fn leading_zeros(map: &Mapping) -> u64 {
    let (mut from, tail) = (map.head(), map.tail());
    while from < tail {
        let piece = map.piece(from, tail);
        match piece.iter().position(|&b| b != 0) {
            Some(at) => return from + at as u64 - map.head(),
            None => from += piece.len() as u64,
        }
    }
    tail - map.head()
}

/// How many bytes from `head` on the log already has: those a write that
/// the kill interrupted put there. The mark says where the log ended when
/// the ring had been written up to its `mark_head`; the bytes from `head`
/// belong that far past the mark's end. Zero unless the log is still the
/// marked file and those bytes are the ring's.
fn already_written(map: &Mapping, log: &Path, head: u64) -> u64 {
    if map.field(field::MARKED).load(Ordering::Acquire) == 0 {
        return 0;
    }
    let mark_head = map.field(field::MARK_HEAD).load(Ordering::Relaxed);
    let end = LogEnd {
        dev: map.field(field::LOG_DEV).load(Ordering::Relaxed),
        ino: map.field(field::LOG_INO).load(Ordering::Relaxed),
        size: map.field(field::LOG_SIZE).load(Ordering::Relaxed),
    };
    let tail = map.tail();
    if mark_head > head {
        return 0;
    }
    // Only a regular file has an end to compare: opening a FIFO to read
    // would wait for a writer, and hold up the start.
    if !std::fs::metadata(log).is_ok_and(|m| m.is_file()) {
        return 0;
    }
    let Ok(mut file) = File::open(log) else {
        return 0;
    };
    let Ok(meta) = file.metadata() else {
        return 0;
    };
    let at_head = end.size + (head - mark_head);
    if (meta.dev(), meta.ino()) != (end.dev, end.ino) || meta.len() <= at_head {
        return 0;
    }
    let past = (meta.len() - at_head).min(tail - head);
    let mut in_log = vec![0u8; past as usize];
    if file.seek(io::SeekFrom::Start(at_head)).is_err() || file.read_exact(&mut in_log).is_err() {
        return 0;
    }
    let mut ring = Vec::with_capacity(in_log.len());
    let mut from = head;
    while from < head + past {
        let piece = map.piece(from, head + past);
        ring.extend_from_slice(piece);
        from += piece.len() as u64;
    }
    if ring != in_log {
        // Somebody else wrote there: write it all again rather than skip.
        return 0;
    }
    past
}

/// Moves a file that is no journal this version can read out of the way,
/// keeping it for whoever wants to look, and opens a new journal.
fn set_aside_and_open(
    path: &Path,
    log: &Path,
    capacity: u64,
    why: &'static str,
) -> Result<Opened, JournalError> {
    let aside = set_aside_path(path);
    std::fs::rename(path, &aside).map_err(|source| JournalError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    tracing::warn!(
        journal = %path.display(),
        moved_to = %aside.display(),
        reason = why,
        "audit journal unreadable: set aside, and a new one made; records in it were not written to the log"
    );
    let mut opened = open_sized(path, log, capacity)?;
    opened.recovered.set_aside = Some(aside);
    Ok(opened)
}

/// `audit.journal.damaged-<seconds since 1970>`, with `-2`, `-3`... if
/// that is taken: an earlier one set aside is not overwritten.
fn set_aside_path(path: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let named = |n: u32| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".damaged-{secs}"));
        if n > 1 {
            name.push(format!("-{n}"));
        }
        PathBuf::from(name)
    };
    (1..)
        .map(named)
        .find(|p| std::fs::symlink_metadata(p).is_err())
        .unwrap_or_else(|| named(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// A journal and a log in a new folder.
    struct Setup {
        dir: tempfile::TempDir,
        journal: PathBuf,
        log: PathBuf,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        Setup {
            journal: dir.path().join("audit.journal"),
            log: dir.path().join("audit.jsonl"),
            dir,
        }
    }

    /// Every unwritten byte, in order.
    fn unwritten(drainer: &Drainer) -> Vec<u8> {
        let (mut from, to) = drainer.unwritten();
        let mut out = Vec::new();
        while from < to {
            let piece = drainer.piece(from, to);
            out.extend_from_slice(piece);
            from += piece.len() as u64;
        }
        out
    }

    /// Writes what is unwritten to the log, as the audit writer does.
    fn drain_to(drainer: &mut Drainer, log: &Path) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log");
        let bytes = unwritten(drainer);
        file.write_all(&bytes).expect("write");
        drainer.advance(bytes.len() as u64);
    }

    fn log_end(log: &Path) -> LogEnd {
        let meta = std::fs::metadata(log).expect("stat log");
        LogEnd {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
        }
    }

    #[test]
    fn lines_a_killed_run_left_are_found_by_the_next() {
        let s = setup();
        let mut opened = open(&s.journal, &s.log).expect("open");
        assert_eq!(opened.recovered, Recovered::default());
        for line in ["one\n", "two\n", "three\n"] {
            assert!(opened.appender.append(line.as_bytes()));
        }
        // What a SIGKILL leaves: the handles gone, the file as it was.
        drop(opened);
        let opened = open(&s.journal, &s.log).expect("reopen");
        assert_eq!(opened.recovered.lines, 3);
        assert_eq!(unwritten(&opened.drainer), b"one\ntwo\nthree\n");
    }

    #[test]
    fn a_write_cut_short_by_a_kill_is_finished_not_repeated() {
        let s = setup();
        std::fs::write(&s.log, b"old\n").expect("log");
        let mut opened = open(&s.journal, &s.log).expect("open");
        assert!(opened.appender.append(b"first\n"));
        assert!(opened.appender.append(b"second\n"));
        opened.drainer.mark(Some(log_end(&s.log)));
        // The kill comes in the middle of the write, mid-line.
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(&s.log)
            .expect("log");
        log.write_all(b"first\nsec").expect("write");
        drop(opened);

        let mut opened = open(&s.journal, &s.log).expect("reopen");
        assert_eq!(opened.recovered.already_written, 9);
        assert_eq!(unwritten(&opened.drainer), b"ond\n");
        drain_to(&mut opened.drainer, &s.log);
        assert_eq!(std::fs::read(&s.log).expect("log"), b"old\nfirst\nsecond\n");
    }

    #[test]
    fn a_kill_after_a_whole_write_repeats_nothing() {
        let s = setup();
        let mut opened = open(&s.journal, &s.log).expect("open");
        assert!(opened.appender.append(b"only\n"));
        std::fs::write(&s.log, b"").expect("log");
        opened.drainer.mark(Some(log_end(&s.log)));
        std::fs::write(&s.log, b"only\n").expect("the write");
        // Killed before the head moved past it.
        drop(opened);
        let opened = open(&s.journal, &s.log).expect("reopen");
        assert_eq!(opened.recovered.already_written, 5);
        assert!(unwritten(&opened.drainer).is_empty());
    }

    #[test]
    fn pages_given_back_before_a_kill_moved_the_head_are_not_written_again() {
        let s = setup();
        std::fs::write(&s.log, b"").expect("log");
        let mut opened = open(&s.journal, &s.log).expect("open");
        let mut lines = Vec::new();
        for i in 0..300 {
            let line = format!("line {i:04} {}\n", "y".repeat(40));
            assert!(opened.appender.append(line.as_bytes()));
            lines.extend_from_slice(line.as_bytes());
        }
        opened.drainer.mark(Some(log_end(&s.log)));
        let first = 3 * PAGE as usize + 100;
        std::fs::write(&s.log, &lines[..first]).expect("the write");
        // The writer gave the written pages back, and was killed before
        // it moved the head.
        opened.drainer.map.punch(0, first as u64).expect("punch");
        drop(opened);
        let mut opened = open(&s.journal, &s.log).expect("reopen");
        assert_eq!(opened.recovered.already_written, first as u64);
        drain_to(&mut opened.drainer, &s.log);
        assert_eq!(std::fs::read(&s.log).expect("log"), lines);
    }

    #[test]
    fn bytes_past_the_mark_that_are_not_the_journal_s_are_not_skipped() {
        let s = setup();
        std::fs::write(&s.log, b"").expect("log");
        let mut opened = open(&s.journal, &s.log).expect("open");
        assert!(opened.appender.append(b"mine\n"));
        opened.drainer.mark(Some(log_end(&s.log)));
        // Somebody else appended to the log; our write never happened.
        std::fs::write(&s.log, b"echo\n").expect("another writer");
        drop(opened);
        let opened = open(&s.journal, &s.log).expect("reopen");
        assert_eq!(opened.recovered.already_written, 0);
        assert_eq!(unwritten(&opened.drainer), b"mine\n");
        // A log that was rotated away since the mark: all written again.
        std::fs::remove_file(&s.log).expect("rm");
        std::fs::write(&s.log, b"mine\n").expect("a new file");
        drop(opened);
        let opened = open(&s.journal, &s.log).expect("reopen");
        assert_eq!(unwritten(&opened.drainer), b"mine\n");
    }

    #[test]
    fn lines_wrap_around_the_ring_and_come_out_whole_and_in_order() {
        let s = setup();
        let mut opened = open_sized(&s.journal, &s.log, 2 * PAGE).expect("open");
        let mut expected = Vec::new();
        for i in 0..2000 {
            let line = format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "x".repeat(i % 97));
            assert!(opened.appender.append(line.as_bytes()), "room for line {i}");
            expected.extend_from_slice(line.as_bytes());
            if i % 7 == 6 {
                drain_to(&mut opened.drainer, &s.log);
            }
        }
        drain_to(&mut opened.drainer, &s.log);
        assert_eq!(std::fs::read(&s.log).expect("log"), expected);
    }

    #[test]
    fn a_burst_past_the_room_kept_ahead_is_given_room_not_lost() {
        // The writer keeps 1 MiB allocated ahead; here it never runs.
        let s = setup();
        let mut opened = open(&s.journal, &s.log).expect("open");
        let mut line = vec![b'x'; 1023];
        line.push(b'\n');
        let lines = 3 * AHEAD as usize / line.len();
        for i in 0..lines {
            assert!(opened.appender.append(&line), "line {i} of {lines} lost");
        }
        drain_to(&mut opened.drainer, &s.log);
        assert_eq!(
            std::fs::read(&s.log).expect("log").len(),
            lines * line.len()
        );
    }

    #[test]
    fn a_full_ring_refuses_a_line_and_takes_lines_again_once_written() {
        let s = setup();
        let mut opened = open_sized(&s.journal, &s.log, PAGE).expect("open");
        let line = [b'x'; 1023];
        let mut line = line.to_vec();
        line.push(b'\n');
        for _ in 0..4 {
            assert!(opened.appender.append(&line));
        }
        assert!(!opened.gauge.has_room());
        assert!(
            !opened.appender.append(b"one too many\n"),
            "the ring is full"
        );
        drain_to(&mut opened.drainer, &s.log);
        assert!(opened.gauge.has_room());
        assert!(opened.appender.append(b"room again\n"));
    }

    #[test]
    fn written_pages_are_given_back() {
        let s = setup();
        let mut opened = open(&s.journal, &s.log).expect("open");
        let blocks = || std::fs::metadata(&s.journal).expect("stat").blocks() * 512;
        let mut line = vec![b'x'; 4095];
        line.push(b'\n');
        // 4 MiB through the ring, half a MiB at a time.
        for _ in 0..8 {
            for _ in 0..128 {
                assert!(opened.appender.append(&line));
            }
            drain_to(&mut opened.drainer, &s.log);
        }
        // What stays is the room kept ahead, not what went through.
        let kept = AHEAD + 2 * PAGE + HEADER as u64;
        assert!(
            blocks() <= kept,
            "the journal takes {} bytes after 4 MiB went through, more than {kept}",
            blocks()
        );
    }

    #[test]
    fn a_file_that_is_no_journal_is_set_aside_not_overwritten() {
        let s = setup();
        std::fs::write(&s.journal, b"something else entirely").expect("write");
        let mut opened = open(&s.journal, &s.log).expect("open");
        let aside = opened.recovered.set_aside.clone().expect("set aside");
        assert_eq!(
            std::fs::read(&aside).expect("kept"),
            b"something else entirely"
        );
        assert!(opened.appender.append(b"works\n"));
        drop(opened);
        // A journal whose offsets are wrong is set aside too.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&s.journal)
            .expect("open");
        std::os::unix::fs::FileExt::write_all_at(
            &file,
            &u64::MAX.to_le_bytes(),
            field::TAIL as u64,
        )
        .expect("damage");
        let opened = open(&s.journal, &s.log).expect("reopen");
        assert!(opened.recovered.set_aside.is_some());
        assert!(unwritten(&opened.drainer).is_empty());
        assert!(s.dir.path().read_dir().expect("ls").count() >= 3);
    }

    #[test]
    fn a_fifo_as_the_log_does_not_hold_up_a_start() {
        let s = setup();
        let c_path = std::ffi::CString::new(s.log.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
        let mut opened = open(&s.journal, &s.log).expect("open");
        assert!(opened.appender.append(b"to the pipe\n"));
        let meta = std::fs::metadata(&s.log).expect("stat fifo");
        opened.drainer.mark(Some(LogEnd {
            dev: meta.dev(),
            ino: meta.ino(),
            size: 0,
        }));
        drop(opened);
        let (done, wait) = std::sync::mpsc::channel();
        let (journal, log) = (s.journal.clone(), s.log.clone());
        std::thread::spawn(move || {
            let lines = open(&journal, &log).map(|o| o.recovered.lines);
            let _ = done.send(lines.ok());
        });
        let lines = wait
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the start waited on the FIFO");
        assert_eq!(lines, Some(1));
    }

    /// A tmpfs of `size` mounted on a new folder, unmounted on drop.
    struct SmallFs(tempfile::TempDir);

    impl SmallFs {
        fn mount(size: &str) -> SmallFs {
            let dir = tempfile::tempdir().expect("tempdir");
            let target =
                std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).expect("path");
            let data = std::ffi::CString::new(format!("size={size}")).expect("data");
            // SAFETY: valid NUL-terminated strings that outlive the call.
            let rc = unsafe {
                libc::mount(
                    c"tmpfs".as_ptr(),
                    target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    data.as_ptr().cast(),
                )
            };
            assert_eq!(
                rc,
                0,
                "mounting a tmpfs needs root: {}",
                io::Error::last_os_error()
            );
            SmallFs(dir)
        }
    }

    impl Drop for SmallFs {
        fn drop(&mut self) {
            let target =
                std::ffi::CString::new(self.0.path().as_os_str().as_encoded_bytes()).expect("path");
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }

    #[test]
    fn a_full_file_system_refuses_lines_instead_of_faulting() {
        // Without room for a page, writing it through the mapping would
        // kill the process with SIGBUS.
        let fs = SmallFs::mount("64k");
        let s = setup();
        let journal = fs.0.path().join("audit.journal");
        let mut opened = open(&journal, &s.log).expect("open");
        let mut line = vec![b'x'; 1023];
        line.push(b'\n');
        let mut taken = 0;
        while opened.appender.append(&line) {
            taken += 1;
            assert!(taken < 1000, "more lines than the file system holds");
        }
        assert!(taken > 8, "only {taken} lines");
        assert!(!opened.gauge.has_room(), "requests must be refused");
        // Written, the lines give their pages back, and there is room again.
        drain_to(&mut opened.drainer, &s.log);
        assert!(opened.appender.append(&line));
        assert_eq!(
            std::fs::read(&s.log).expect("log").len(),
            taken * line.len()
        );
    }

    #[test]
    fn a_second_daemon_cannot_share_the_journal() {
        let s = setup();
        let _first = open(&s.journal, &s.log).expect("open");
        let err = open(&s.journal, &s.log).err().expect("busy");
        assert!(matches!(err, JournalError::Busy { .. }), "{err}");
        assert!(err.to_string().contains("another airlock daemon"), "{err}");
    }
}
