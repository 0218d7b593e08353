//! The writer thread: takes the lines the journal holds in batches,
//! writes them to the log where its path now points, keeps the log's file
//! system from filling, and tells the proxy (through [`Health`]) whether
//! records can be kept.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError, atomic::Ordering, mpsc},
};

use super::{
    Health, Msg, Pending,
    journal::{Drainer, LogEnd},
    log_file::Sink,
    syncer::Syncer,
};

/// How often a failed write is tried again.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

// The writer thread's whole state, handed over once as it starts.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_loop<W: Sink>(
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
pub(super) fn write_batch(
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
