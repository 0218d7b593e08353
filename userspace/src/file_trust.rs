//! The files that decide what agents may do (policies, the config, the CAs
//! trusted for upstreams) must be root's alone, as sudo asks of sudoers:
//! a user who can change one, or replace it through a directory they can
//! write, can grant any agent anything, and the agent may be that user.

use std::{
    fmt,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Why a file is not trusted; its text names the path and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untrusted {
    /// The file itself, or the directory that lets it be replaced.
    path: PathBuf,
    what: Culprit,
    uid: u32,
    mode: u32,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Culprit {
    /// The path checked (a file, or the state directory).
    Itself,
    /// A directory above it.
    Above,
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.path.display();
        let who = if self.uid != 0 && !owned_by_self(self.uid) {
            format!("owned by uid {}", self.uid)
        } else if self.mode & 0o002 != 0 {
            "writable by every user".to_owned()
        } else {
            "writable by its group".to_owned()
        };
        match self.what {
            Culprit::Itself => write!(f, "it is {who}")?,
            Culprit::Above => write!(f, "the directory {p} above it is {who}")?,
        }
        write!(
            f,
            " (mode {:04o}): whoever can change it decides what agents may do; fix: chown root:root {p} && chmod go-w {p}",
            self.mode
        )
    }
}

impl std::error::Error for Untrusted {}

fn owned_by_self(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions.
    uid == unsafe { libc::geteuid() }
}

/// Checks that `path` (after its symlinks), every directory above it, and
/// every directory above the name given can be changed by root (or this
/// process's user) alone. A directory
/// others may write is allowed only with the sticky bit (`/tmp`), where
/// they cannot rename or remove what they do not own. Errors to stat are
/// left to the caller's read, which names them.
pub fn check(path: &Path) -> Result<(), Untrusted> {
    let Ok(real) = std::fs::canonicalize(path) else {
        return Ok(());
    };
    let untrusted = |at: &Path, what: Culprit, meta: &std::fs::Metadata| Untrusted {
        path: at.to_path_buf(),
        what,
        uid: meta.uid(),
        mode: meta.mode() & 0o7777,
    };
    if let Ok(meta) = std::fs::metadata(&real) {
        let owner_ok = meta.uid() == 0 || owned_by_self(meta.uid());
        if !owner_ok || meta.mode() & 0o022 != 0 {
            return Err(untrusted(&real, Culprit::Itself, &meta));
        }
    }
    // The directories above the target, and above the name given: whoever
    // can write where a symlink lies can point it elsewhere.
    let named_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .and_then(|p| std::fs::canonicalize(p).ok());
    let above_named = named_dir.iter().flat_map(|d| d.ancestors());
    for dir in real.ancestors().skip(1).chain(above_named) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let owner_ok = meta.uid() == 0 || owned_by_self(meta.uid());
        let sticky = meta.mode() & libc::S_ISVTX != 0;
        if !owner_ok || (meta.mode() & 0o022 != 0 && !sticky) {
            return Err(untrusted(dir, Culprit::Above, &meta));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::check;

    fn chmod(path: &std::path::Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// A file of root's, 0644, in a directory of root's, 0755.
    fn root_file() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        chmod(dir.path(), 0o755);
        let file = dir.path().join("agent.yaml");
        std::fs::write(&file, "agent: a\n").expect("write");
        chmod(&file, 0o644);
        (dir, file)
    }

    #[test]
    fn a_file_only_its_owner_writes_is_trusted_and_one_others_write_is_not() {
        let (_dir, file) = root_file();
        assert_eq!(check(&file), Ok(()));
        chmod(&file, 0o664);
        let err = check(&file).expect_err("group-writable").to_string();
        assert!(
            err.starts_with("it is writable by its group (mode 0664)")
                && err.ends_with(&format!(
                    "fix: chown root:root {p} && chmod go-w {p}",
                    p = file.display()
                )),
            "{err}"
        );
        chmod(&file, 0o646);
        assert!(
            check(&file)
                .expect_err("world-writable")
                .to_string()
                .contains("writable by every user"),
        );
    }

    /// A directory that others may write lets them put another file in
    /// the file's place, whatever the file's own mode; with the sticky bit
    /// they may not, as in /tmp.
    #[test]
    fn a_directory_others_write_is_untrusted_unless_sticky() {
        let dir = tempfile::tempdir().expect("tempdir");
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).expect("mkdir");
        let file = policies.join("agent.yaml");
        std::fs::write(&file, "agent: a\n").expect("write");
        chmod(&file, 0o644);
        chmod(dir.path(), 0o755);
        chmod(&policies, 0o777);
        let err = check(&file).expect_err("world-writable dir").to_string();
        assert!(
            err.starts_with(&format!(
                "the directory {} above it is writable by every user (mode 0777)",
                policies.display()
            )),
            "{err}"
        );
        chmod(&policies, 0o1777);
        assert_eq!(check(&file), Ok(()));
    }

    /// A symlink in a directory others may write can be pointed anywhere,
    /// however safe its target is today.
    #[test]
    fn a_symlink_in_a_directory_others_write_is_untrusted() {
        let (dir, target) = root_file();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        chmod(&open, 0o777);
        let link = open.join("linked.yaml");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert_eq!(check(&target), Ok(()));
        let err = check(&link)
            .expect_err("a link others may repoint")
            .to_string();
        assert!(
            err.starts_with(&format!("the directory {} above it", open.display())),
            "{err}"
        );
    }

    /// A symlink is judged by what it points to, and where.
    #[test]
    fn a_symlink_is_judged_by_its_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        chmod(dir.path(), 0o755);
        let open = dir.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        chmod(&open, 0o777);
        let target = open.join("agent.yaml");
        std::fs::write(&target, "agent: a\n").expect("write");
        chmod(&target, 0o644);
        let link = dir.path().join("agent.yaml");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let err = check(&link).expect_err("target in an open dir").to_string();
        assert!(
            err.starts_with(&format!("the directory {} above it", open.display())),
            "{err}"
        );
    }

    #[test]
    fn a_file_of_another_user_is_untrusted() {
        let (_dir, file) = root_file();
        std::os::unix::fs::chown(&file, Some(65534), None).expect("chown: this test needs root");
        let err = check(&file).expect_err("nobody's").to_string();
        assert!(err.starts_with("it is owned by uid 65534"), "{err}");
    }
}
