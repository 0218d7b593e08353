use super::{writer::write_batch, *};
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
    let audit = Audit::start_writer(file, &path, &journal_beside(&path), BACKLOG_LIMIT, pause, 0)
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
    let audit = Audit::start_with_limit(&path, &journal_beside(&path), limit, 0).expect("start");
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
