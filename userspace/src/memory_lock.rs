//! No swap. The daemon's memory holds the master key, the CA's key and
//! every secret it has used, in the clear; pages the kernel swaps out are
//! written to a disk that outlives the process and that Airlock neither
//! encrypts nor erases. Locking all of it, rather than the buffers a
//! `Secret` owns, is the only lock that holds: a secret is copied into
//! request headers, hyper's buffers and rustls' records on its way out.

use std::{io, ops::Range, path::Path};

/// Locks every page the process has and will have into RAM. `MCL_ONFAULT`
/// locks pages as they are touched instead of faulting in every mapping
/// now, so the daemon's resident memory stays what it uses (the binary's
/// untouched pages and the threads' reserved stacks stay on disk and
/// unreserved). Memory locks are not inherited across `fork` or `exec`:
/// the agents and helpers the daemon starts are not locked.
pub fn lock_all() -> io::Result<()> {
    // SAFETY: mlockall takes flags only and changes no memory's contents.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Locks memory when the config asks for it (the default), and says what
/// to do when the kernel refuses: without `CAP_IPC_LOCK` a process may
/// lock only `RLIMIT_MEMLOCK` (8 MiB by default), less than the daemon
/// maps, so the call fails whole and nothing is half-locked.
pub fn lock_as_configured(lock_memory: bool, config_path: &Path) -> anyhow::Result<()> {
    if !lock_memory {
        return Ok(());
    }
    lock_all().map_err(|err| {
        anyhow::anyhow!(
            "cannot lock this process's memory into RAM (mlockall: {err}), so the master key and secrets could be written to swap: run it as root with CAP_IPC_LOCK (the installed unit grants it), or, on a host with no swap or an encrypted one, set `lock_memory: false` in {}",
            config_path.display()
        )
    })
}

/// What `release_code` gave back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReleasedCode {
    pub mappings: usize,
    pub bytes: usize,
}

/// Unlocks the daemon's own code and read-only data and unmaps their pages,
/// once start-up is over. They hold no secret, only what is on disk, yet
/// `mlockall` pinned every page of them the process touched, and the kernel
/// maps 64 KiB around each fault: most of a 12 MB binary, start-up code
/// (argument and config parsing, the eBPF loader, CA creation) included,
/// stayed resident and unevictable for the daemon's life. Unmapped, a page
/// of code comes back from the page cache when it runs again; the kernel
/// may reclaim the others. Only mappings of the executable that are not
/// writable and hold no page of their own (`Anonymous: 0`, so nothing in
/// them differs from the file, unlike relocated read-only data) are
/// released: dropping them changes nothing the process can read.
pub fn release_code() -> io::Result<ReleasedCode> {
    let exe = std::fs::metadata("/proc/self/exe")?;
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let file = FileId::of(&exe);
    let mut released = ReleasedCode::default();
    for range in clean_read_only_mappings(&smaps, file) {
        let len = range.end - range.start;
        let addr = range.start as *mut libc::c_void;
        // SAFETY: the range is a whole mapping of the executable, read-only
        // and holding no private page; unlocking it changes no contents.
        if unsafe { libc::munlock(addr, len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above: with no private page in the range, the pages
        // faulted back in after MADV_DONTNEED are the file's, as before.
        if unsafe { libc::madvise(addr, len, libc::MADV_DONTNEED) } != 0 {
            return Err(io::Error::last_os_error());
        }
        released.mappings += 1;
        released.bytes += len;
    }
    Ok(released)
}

/// A file as `/proc/<pid>/maps` names it: device (major, minor) and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    major: u64,
    minor: u64,
    inode: u64,
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        let dev = meta.dev();
        Self {
            major: u64::from(libc::major(dev)),
            minor: u64::from(libc::minor(dev)),
            inode: meta.ino(),
        }
    }

    /// Parses `fd:01` and `1234` from a mapping's header line.
    fn parse(dev: &str, inode: &str) -> Option<Self> {
        let (major, minor) = dev.split_once(':')?;
        Some(Self {
            major: u64::from_str_radix(major, 16).ok()?,
            minor: u64::from_str_radix(minor, 16).ok()?,
            inode: inode.parse().ok()?,
        })
    }
}

/// The address ranges of `file`'s mappings in `smaps` that are not writable
/// and hold no anonymous page. A mapping whose `Anonymous:` line is missing
/// or unreadable is left alone.
fn clean_read_only_mappings(smaps: &str, file: FileId) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    let mut candidate: Option<Range<usize>> = None;
    for line in smaps.lines() {
        if let Some(mapping) = Mapping::parse(line) {
            candidate = (mapping.file == Some(file) && !mapping.perms.contains('w'))
                .then_some(mapping.range);
        } else if let Some(kb) = line.strip_prefix("Anonymous:") {
            let clean = kb
                .trim()
                .strip_suffix("kB")
                .is_some_and(|n| n.trim() == "0");
            if let Some(range) = candidate.take().filter(|_| clean) {
                found.push(range);
            }
        }
    }
    found
}

/// A mapping's header line in `/proc/<pid>/smaps`:
/// `start-end perms offset major:minor inode [path]`.
struct Mapping<'a> {
    range: Range<usize>,
    perms: &'a str,
    /// `None` for memory no file backs (inode 0).
    file: Option<FileId>,
}

impl<'a> Mapping<'a> {
    /// `None` for the other lines (`Rss:       12 kB`), whose first field
    /// is no range of addresses.
    fn parse(line: &'a str) -> Option<Self> {
        let mut fields = line.split_ascii_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let range = usize::from_str_radix(start, 16).ok()?..usize::from_str_radix(end, 16).ok()?;
        let perms = fields.next()?;
        let _offset = fields.next()?;
        let file = FileId::parse(fields.next()?, fields.next()?).filter(|id| id.inode != 0);
        Some(Self { range, perms, file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXE: FileId = FileId {
        major: 0xfd,
        minor: 1,
        inode: 4242,
    };

    fn mapping(range: &str, perms: &str, dev_inode: &str, anonymous_kb: u32) -> String {
        format!(
            "{range} {perms} 00000000 {dev_inode} /usr/bin/airlock\nSize:   64 kB\nRss:   64 kB\nAnonymous:   {anonymous_kb} kB\nLocked:   64 kB\nVmFlags: rd ex mr mw me lo\n"
        )
    }

    #[test]
    fn only_the_executables_clean_read_only_mappings_are_released() {
        let smaps = [
            mapping("1000-2000", "r--p", "fd:01 4242", 0),
            mapping("2000-5000", "r-xp", "fd:01 4242", 0),
            // Relocated read-only data: its pages are the process's own.
            mapping("5000-6000", "r--p", "fd:01 4242", 8),
            mapping("6000-7000", "rw-p", "fd:01 4242", 0),
            // Another file, and the same inode on another device.
            mapping("7000-8000", "r-xp", "fd:01 99", 0),
            mapping("8000-9000", "r-xp", "fd:02 4242", 0),
            mapping("9000-a000", "rw-p", "00:00 0", 0),
        ]
        .concat();
        assert_eq!(
            clean_read_only_mappings(&smaps, EXE),
            vec![0x1000..0x2000, 0x2000..0x5000]
        );
    }

    #[test]
    fn a_mapping_whose_anonymous_line_is_missing_or_odd_is_kept() {
        let missing = "1000-2000 r-xp 00000000 fd:01 4242 /usr/bin/airlock\nRss:   4 kB\n";
        let odd = "1000-2000 r-xp 00000000 fd:01 4242 /usr/bin/airlock\nAnonymous:   0 pages\n";
        for smaps in [missing, odd] {
            assert!(clean_read_only_mappings(smaps, EXE).is_empty(), "{smaps}");
        }
        // The next mapping's line does not count for the one before it.
        let next = format!("{missing}{}", mapping("3000-4000", "rw-p", "00:00 0", 0));
        assert!(clean_read_only_mappings(&next, EXE).is_empty());
    }

    fn resident_kb_of_mapping_holding(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let mut inside = false;
        for line in smaps.lines() {
            if let Some(m) = Mapping::parse(line) {
                inside = m.range.contains(&addr);
            } else if let Some(kb) = line.strip_prefix("Rss:").filter(|_| inside) {
                return kb
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .expect("Rss");
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    fn releasing_unmaps_this_binarys_code_and_it_still_runs() {
        let code = release_code as *const () as usize;
        let before = resident_kb_of_mapping_holding(code);
        let released = release_code().expect("release");
        let after = resident_kb_of_mapping_holding(code);
        assert!(released.mappings >= 2, "{released:?}");
        assert!(
            after < before / 2,
            "resident code {before} kB before, {after} kB after"
        );
        // The code comes back from the file when it runs again.
        assert!(release_code().expect("again").mappings >= 2);
    }
}
