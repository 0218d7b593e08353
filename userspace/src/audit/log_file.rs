//! The audit log as a path, not as one open file: logrotate (and an admin
//! with `mv` or `rm`) replaces the file at the path, and a writer that kept
//! its old descriptor would go on appending to the rotated copy, or to a
//! file no name reaches, while the path stays empty.
//!
//! Before each batch the writer asks whether the path still names the file
//! it holds (same device and inode) and, if not, opens a new one there. The
//! same `stat` tells where the file ends, which the journal notes before the
//! write, and an `fstatvfs` how much room its file system has left: two
//! system calls per batch, at most about fifty batches a second. A file
//! truncated in place (`copytruncate`) needs nothing: the log is opened for
//! appending.

use super::journal::LogEnd;
use std::{
    fs::{File, Metadata, OpenOptions},
    io::{self, Write},
    os::unix::{
        fs::{MetadataExt as _, OpenOptionsExt as _},
        io::AsRawFd as _,
    },
    path::{Path, PathBuf},
    sync::Arc,
};

/// Where the audit writer's batches go.
pub trait Sink: Write {
    /// Called before each batch: an error when no destination could be
    /// opened, which counts as a failed write.
    fn follow(&mut self) -> io::Result<Followed> {
        Ok(Followed::default())
    }

    /// The file that writes go to now, for the sync thread. None when
    /// there is nothing to sync.
    fn disk(&self) -> Option<Arc<dyn Disk>> {
        None
    }

    /// Bytes that unprivileged writers could still put on the
    /// destination's file system (`df`'s "Avail"; root's reserve is not
    /// counted). None when the destination is not a file on one.
    fn room(&self) -> io::Result<Option<u64>> {
        Ok(None)
    }
}

/// What the writer learns of its destination before a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Followed {
    /// The destination changed: the old file was moved or removed and a
    /// new one opened at the path.
    pub moved: bool,
    /// Where the destination ends now, if it is a file: the journal notes
    /// it before each write so that a start after a kill can tell how much
    /// of that write the file got.
    pub end: Option<LogEnd>,
}

/// Where written bytes wait in the page cache until a sync.
pub trait Disk: Send + Sync {
    /// Puts what was written on the disk (`fdatasync`).
    fn sync(&self) -> io::Result<()>;
}

impl Disk for File {
    fn sync(&self) -> io::Result<()> {
        match self.sync_data() {
            // A FIFO or a device keeps nothing to sync.
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            done => done,
        }
    }
}

/// Readable by root and the log's group, as logrotate's `create` makes it
/// (README, systemd/airlock.logrotate): records name hosts and paths.
const MODE: u32 = 0o640;

/// An append-only file that follows its path.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    /// Shared with the sync thread.
    file: Arc<File>,
    /// Device and inode of `file`.
    id: (u64, u64),
    /// Whether `file` is a regular file: a FIFO's or a device's file
    /// system says nothing of where its bytes go.
    regular: bool,
}

impl LogFile {
    /// Opens the log at `path` for appending, creating it and its folder.
    pub fn open(path: &Path) -> io::Result<LogFile> {
        Ok(LogFile::open_with_meta(path)?.0)
    }

    fn open_with_meta(path: &Path) -> io::Result<(LogFile, Metadata)> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Not through a symlink: one put at the log's path, by whoever can
        // write its folder, would have root append records to any file.
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let meta = file.metadata()?;
        let log = LogFile {
            path: path.to_path_buf(),
            file: Arc::new(file),
            id: (meta.dev(), meta.ino()),
            regular: meta.is_file(),
        };
        Ok((log, meta))
    }
}

/// Where a file ends. A FIFO or a device takes bytes but keeps no end to
/// compare.
fn end_of(meta: &Metadata) -> Option<LogEnd> {
    meta.is_file().then(|| LogEnd {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.len(),
    })
}

impl Sink for LogFile {
    fn disk(&self) -> Option<Arc<dyn Disk>> {
        Some(self.file.clone())
    }

    fn room(&self) -> io::Result<Option<u64>> {
        if !self.regular {
            return Ok(None);
        }
        // SAFETY: an all-zero statvfs is a valid value to be overwritten.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: the descriptor is open for as long as `self.file` lives,
        // and `st` is a valid out pointer.
        let rc = unsafe { libc::fstatvfs(self.file.as_raw_fd(), &mut st) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        #[allow(clippy::unnecessary_cast)]
        Ok(Some(
            (st.f_bavail as u64).saturating_mul(st.f_frsize as u64),
        ))
    }

    fn follow(&mut self) -> io::Result<Followed> {
        match std::fs::metadata(&self.path) {
            // The path names the file held, so its size is that file's.
            Ok(meta) if (meta.dev(), meta.ino()) == self.id => {
                return Ok(Followed {
                    moved: false,
                    end: end_of(&meta),
                });
            }
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        // The old file is synced no more once let go: its last lines go
        // to disk now. A failure there leaves them where a power cut takes
        // them, which is what the writer's own sync errors are logged for.
        if let Err(err) = self.file.sync() {
            tracing::warn!(path = %self.path.display(), error = %err, "the moved audit log could not be synced to disk");
        }
        let (log, meta) = LogFile::open_with_meta(&self.path).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("the log was moved or removed, and opening a new one failed: {err}"),
            )
        })?;
        *self = log;
        Ok(Followed {
            moved: true,
            end: end_of(&meta),
        })
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.file).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self.file).flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).expect("log file")
    }

    /// A log opened at `audit.jsonl` in a new folder (kept alive by the
    /// returned guard).
    fn fresh_log() -> (tempfile::TempDir, PathBuf, LogFile) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = LogFile::open(&path).expect("open");
        (dir, path, log)
    }

    #[test]
    fn a_file_moved_away_keeps_what_it_had_and_a_new_one_takes_the_rest() {
        let (dir, path, mut log) = fresh_log();
        assert!(!log.follow().expect("follow").moved, "nothing moved yet");
        log.write_all(b"one\n").expect("write");
        std::fs::rename(&path, dir.path().join("audit.jsonl.1")).expect("rename");
        assert!(log.follow().expect("follow").moved, "the move must be seen");
        log.write_all(b"two\n").expect("write");
        assert_eq!(read(&dir.path().join("audit.jsonl.1")), "one\n");
        assert_eq!(read(&path), "two\n");
        assert!(
            !log.follow().expect("follow").moved,
            "the new file is followed"
        );
    }

    #[test]
    fn a_file_put_in_its_place_is_appended_to_not_truncated() {
        // logrotate's `create`: the old file renamed, a new empty one made.
        let (dir, path, mut log) = fresh_log();
        log.write_all(b"one\n").expect("write");
        std::fs::rename(&path, dir.path().join("old")).expect("rename");
        std::fs::write(&path, b"made by logrotate\n").expect("create");
        assert!(log.follow().expect("follow").moved);
        log.write_all(b"two\n").expect("write");
        assert_eq!(read(&path), "made by logrotate\ntwo\n");
    }

    #[test]
    fn a_removed_file_is_made_again_root_and_group_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("logs/audit.jsonl");
        let mut log = LogFile::open(&path).expect("open");
        std::fs::remove_dir_all(dir.path().join("logs")).expect("rm -r");
        assert!(log.follow().expect("follow").moved);
        log.write_all(b"two\n").expect("write");
        assert_eq!(read(&path), "two\n");
        let mode = std::fs::metadata(&path).expect("stat").mode() & 0o777;
        assert_eq!(mode & !MODE, 0, "mode {mode:o}: no more than {MODE:o}");
    }

    #[test]
    fn a_symlink_put_in_its_place_is_not_followed() {
        let (dir, path, mut log) = fresh_log();
        let target = dir.path().join("passwd");
        std::fs::write(&target, b"root:x:0:0\n").expect("target");
        std::fs::rename(&path, dir.path().join("old")).expect("rename");
        std::os::unix::fs::symlink(&target, &path).expect("symlink");
        let err = log.follow().expect_err("a symlink is no log");
        assert!(
            err.to_string().ends_with(
                "opening a new one failed: Too many levels of symbolic links (os error 40)"
            ),
            "{err}"
        );
        assert_eq!(
            read(&target),
            "root:x:0:0\n",
            "the link's target was written"
        );
    }

    #[test]
    fn a_file_truncated_in_place_is_written_from_its_new_end() {
        // logrotate's `copytruncate`.
        let (_dir, path, mut log) = fresh_log();
        log.write_all(b"a long first line\n").expect("write");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(0))
            .expect("truncate");
        assert!(!log.follow().expect("follow").moved, "still the same file");
        log.write_all(b"two\n").expect("write");
        assert_eq!(read(&path), "two\n");
    }

    #[test]
    fn a_path_that_cannot_take_a_file_is_an_error_that_says_why() {
        let (_dir, path, mut log) = fresh_log();
        std::fs::remove_file(&path).expect("rm");
        std::fs::create_dir(&path).expect("a folder where the log was");
        let err = log.follow().expect_err("a folder is no log");
        assert!(
            err.to_string().contains("moved or removed"),
            "unclear error: {err}"
        );
        std::fs::remove_dir(&path).expect("rmdir");
        assert!(log.follow().expect("follow").moved, "recovers once it can");
    }

    #[test]
    fn a_file_syncs_and_a_device_that_keeps_nothing_is_no_error() {
        let (_dir, _path, mut log) = fresh_log();
        log.write_all(b"{}\n").expect("write");
        log.file.sync().expect("a file syncs");
        // /dev/null takes writes and has nothing to sync (EINVAL): the
        // writer must not report it failing every second.
        let mut null = LogFile::open(Path::new("/dev/null")).expect("open /dev/null");
        null.write_all(b"{}\n").expect("write");
        null.file.sync().expect("nothing to sync is no error");
    }

    #[test]
    fn follow_tells_where_the_file_at_the_path_ends() {
        let (dir, path, mut log) = fresh_log();
        let end_of_path = |size| {
            let meta = std::fs::metadata(&path).expect("stat");
            Some(LogEnd {
                dev: meta.dev(),
                ino: meta.ino(),
                size,
            })
        };
        log.write_all(b"one\n").expect("write");
        let followed = log.follow().expect("follow");
        assert_eq!(followed.end, end_of_path(4), "after one line");

        // Rotated: the end is the new file's, not the one let go.
        std::fs::rename(&path, dir.path().join("audit.jsonl.1")).expect("rename");
        std::fs::write(&path, b"made by logrotate\n").expect("create");
        let followed = log.follow().expect("follow");
        assert!(followed.moved);
        assert_eq!(followed.end, end_of_path(18), "after a rotation");

        // Truncated in place: the same file, ending sooner.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(0))
            .expect("truncate");
        assert_eq!(log.follow().expect("follow").end, end_of_path(0));

        let mut null = LogFile::open(Path::new("/dev/null")).expect("open /dev/null");
        assert_eq!(
            null.follow().expect("follow"),
            Followed::default(),
            "a device keeps no end"
        );
    }
}
