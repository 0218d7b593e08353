//! Puts written audit lines on the disk once a second, on a thread of its
//! own. Unsynced, they sit in the page cache until the kernel writes them
//! back (up to 30 s), and a power cut takes them. An `fdatasync` on a busy
//! disk can take seconds; on the writer's thread it would stop the log, and
//! the queue behind it would refuse requests.

use std::{
    path::PathBuf,
    sync::{Arc, Condvar, Mutex, PoisonError, atomic::Ordering},
    time::{Duration, Instant},
};

use super::Health;
use super::log_file::Disk;

/// How long written lines may stay in the page cache only.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

/// The writer's handle on the sync thread. Dropping it lets the thread
/// sync what is left and end.
pub struct Syncer {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    health: Arc<Health>,
    path: PathBuf,
}

#[derive(Default)]
struct State {
    /// The file written to since the last sync.
    dirty: Option<Arc<dyn Disk>>,
    closed: bool,
}

impl Syncer {
    pub fn start(health: Arc<Health>, path: PathBuf) -> std::io::Result<Syncer> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            health,
            path,
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("airlock-sync".into())
            .spawn(move || sync_loop(&thread_shared))?;
        Ok(Syncer {
            shared,
            thread: Some(thread),
        })
    }

    /// Lines were written to `disk`: it is synced within [`SYNC_EVERY`].
    /// Wakes the thread only when nothing was waiting: at most twice a
    /// second, not once a batch.
    pub fn written(&self, disk: Arc<dyn Disk>) {
        let mut state = self.shared.lock();
        if state.dirty.replace(disk).is_none() {
            self.shared.wake.notify_one();
        }
    }

    /// Syncs `disk` now, on the caller's thread: for a flush (a stop),
    /// which promises the lines are on the disk when it returns.
    pub fn sync_now(&self, disk: &dyn Disk) {
        self.shared.sync(disk);
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sync(&self, disk: &dyn Disk) {
        match disk.sync() {
            Ok(()) => {
                if self.health.sync_failing.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        path = %self.path.display(),
                        "audit log syncs to disk again; records written before the failed sync may still be missing from the disk, since the kernel does not write again what it failed to write (`airlock status` keeps the failure on record)"
                    );
                }
            }
            Err(err) => {
                // The lines are in the file; only a power cut would take
                // them. Tried again at the next sync.
                self.health.sync_failures.fetch_add(1, Ordering::Relaxed);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                self.health.last_sync_failure.store(now, Ordering::Relaxed);
                if !self.health.sync_failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        path = %self.path.display(),
                        error = %err,
                        "audit log cannot be synced to disk; records written since the last sync would not survive a power cut"
                    );
                }
            }
        }
    }
}

fn sync_loop(shared: &Shared) {
    let mut synced_at = Instant::now();
    loop {
        let disk = {
            let mut state = shared.lock();
            while state.dirty.is_none() && !state.closed {
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            // Not before a second since the last sync, unless stopping.
            let due = synced_at + SYNC_EVERY;
            while !state.closed {
                let now = Instant::now();
                if now >= due {
                    break;
                }
                state = shared
                    .wake
                    .wait_timeout(state, due - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            match state.dirty.take() {
                Some(disk) => disk,
                None => return,
            }
        };
        shared.sync(&*disk);
        synced_at = Instant::now();
    }
}
