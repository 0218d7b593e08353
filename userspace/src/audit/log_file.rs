//! The audit log as a path, not as one open file: logrotate (and an admin
//! with `mv` or `rm`) replaces the file at the path, and a writer that kept
//! its old descriptor would go on appending to the rotated copy, or to a
//! file no name reaches, while the path stays empty.
//!
//! Before each batch the writer asks whether the path still names the file
//! it holds (same device and inode) and, if not, opens a new one there. A
//! `stat` per batch, at most about fifty a second, costs nothing beside
//! the write. A file truncated in place (`copytruncate`) needs nothing:
//! the log is opened for appending.

use super::journal::LogEnd;
use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

/// Where the audit writer's batches go.
pub trait Sink: Write {
    /// Called before each batch. True when the destination changed (the
    /// old file was moved or removed and a new one opened); an error when
    /// no destination could be opened, which counts as a failed write.
    fn follow(&mut self) -> io::Result<bool> {
        Ok(false)
    }

    /// Where the destination ends now, if it is a file: the journal notes
    /// it before each write so that a start after a kill can tell how much
    /// of that write the file got.
    fn end(&self) -> io::Result<Option<LogEnd>> {
        Ok(None)
    }

    /// The file that writes go to now, for the sync thread. None when
    /// there is nothing to sync.
    fn disk(&self) -> Option<Arc<dyn Disk>> {
        None
    }
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
}

impl LogFile {
    /// Opens the log at `path` for appending, creating it and its folder.
    pub fn open(path: &Path) -> io::Result<LogFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(MODE)
            .open(path)?;
        let meta = file.metadata()?;
        Ok(LogFile {
            path: path.to_path_buf(),
            file: Arc::new(file),
            id: (meta.dev(), meta.ino()),
        })
    }
}

impl Sink for LogFile {
    fn end(&self) -> io::Result<Option<LogEnd>> {
        let meta = self.file.metadata()?;
        // A FIFO or a device takes bytes but keeps no end to compare.
        if !meta.is_file() {
            return Ok(None);
        }
        Ok(Some(LogEnd {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
        }))
    }

    fn disk(&self) -> Option<Arc<dyn Disk>> {
        Some(self.file.clone())
    }

    fn follow(&mut self) -> io::Result<bool> {
        match std::fs::metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.id => return Ok(false),
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
        *self = LogFile::open(&self.path).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("the log was moved or removed, and opening a new one failed: {err}"),
            )
        })?;
        Ok(true)
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
        assert!(!log.follow().expect("follow"), "nothing moved yet");
        log.write_all(b"one\n").expect("write");
        std::fs::rename(&path, dir.path().join("audit.jsonl.1")).expect("rename");
        assert!(log.follow().expect("follow"), "the move must be seen");
        log.write_all(b"two\n").expect("write");
        assert_eq!(read(&dir.path().join("audit.jsonl.1")), "one\n");
        assert_eq!(read(&path), "two\n");
        assert!(!log.follow().expect("follow"), "the new file is followed");
    }

    #[test]
    fn a_file_put_in_its_place_is_appended_to_not_truncated() {
        // logrotate's `create`: the old file renamed, a new empty one made.
        let (dir, path, mut log) = fresh_log();
        log.write_all(b"one\n").expect("write");
        std::fs::rename(&path, dir.path().join("old")).expect("rename");
        std::fs::write(&path, b"made by logrotate\n").expect("create");
        assert!(log.follow().expect("follow"));
        log.write_all(b"two\n").expect("write");
        assert_eq!(read(&path), "made by logrotate\ntwo\n");
    }

    #[test]
    fn a_removed_file_is_made_again_root_and_group_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("logs/audit.jsonl");
        let mut log = LogFile::open(&path).expect("open");
        std::fs::remove_dir_all(dir.path().join("logs")).expect("rm -r");
        assert!(log.follow().expect("follow"));
        log.write_all(b"two\n").expect("write");
        assert_eq!(read(&path), "two\n");
        let mode = std::fs::metadata(&path).expect("stat").mode() & 0o777;
        assert_eq!(mode & !MODE, 0, "mode {mode:o}: no more than {MODE:o}");
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
        assert!(!log.follow().expect("follow"), "still the same file");
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
        assert!(log.follow().expect("follow"), "recovers once it can");
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
}
