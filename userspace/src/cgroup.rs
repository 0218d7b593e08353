//! The managed cgroup tree: find the cgroup v2 mount, create the root and
//! agents' cgroups, and map the cgroup ids the kernel reports to agents.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no cgroup v2 filesystem is mounted (looked in /proc/self/mountinfo); Airlock needs cgroup v2: mount it, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NoCgroup2,
    #[error("cannot create cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot move process {pid} into {path}: {source}")]
    Enter {
        pid: u32,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "invalid cgroup_root {value:?}: it must be a relative path of plain names, like airlock.slice"
    )]
    BadRoot { value: String },
    #[error("invalid agent name {value:?}: use lower-case letters, digits, '-' and '_'")]
    BadAgent { value: String },
}

/// Where the cgroup v2 hierarchy is mounted, from a mountinfo text.
fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "<id> <parent> <maj:min> <root> <mount point> <opts> [optional...] - <fstype> <source> <super opts>"
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match octal {
            Some(code) => {
                out.push(code);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    cgroup2_mount_in(&text).ok_or(CgroupError::NoCgroup2)
}

pub fn valid_agent_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// The agent a cgroup directory directly under the root stands for:
/// `pr-bot` (made by `airlock run`) or a unit `systemd-run
/// --slice=airlock.slice --unit=pr-bot` made (`pr-bot.service`/`.scope`).
pub fn agent_of_dir_name(name: &str) -> Option<&str> {
    let base = name
        .strip_suffix(".service")
        .or_else(|| name.strip_suffix(".scope"))
        .unwrap_or(name);
    valid_agent_name(base).then_some(base)
}

/// The managed subtree: `<mount>/<cgroup_root>`.
#[derive(Clone, Debug)]
pub struct CgroupTree {
    pub mount: PathBuf,
    pub root: PathBuf,
}

impl CgroupTree {
    pub fn discover(cgroup_root: &str) -> Result<Self, CgroupError> {
        let rel = Path::new(cgroup_root);
        let plain = !cgroup_root.is_empty()
            && rel
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain {
            return Err(CgroupError::BadRoot {
                value: cgroup_root.to_string(),
            });
        }
        let mount = cgroup2_mount()?;
        let root = mount.join(rel);
        Ok(Self { mount, root })
    }

    pub fn ensure_root(&self) -> Result<(), CgroupError> {
        std::fs::create_dir_all(&self.root).map_err(|source| CgroupError::Create {
            path: self.root.clone(),
            source,
        })
    }

    pub fn agent_dir(&self, agent: &str) -> Result<PathBuf, CgroupError> {
        if !valid_agent_name(agent) {
            return Err(CgroupError::BadAgent {
                value: agent.to_string(),
            });
        }
        Ok(self.root.join(agent))
    }

    /// Create the agent's cgroup and move `pid` into it.
    pub fn enter(&self, agent: &str, pid: u32) -> Result<PathBuf, CgroupError> {
        let dir = self.agent_dir(agent)?;
        std::fs::create_dir_all(&dir).map_err(|source| CgroupError::Create {
            path: dir.clone(),
            source,
        })?;
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).map_err(|source| CgroupError::Enter {
            pid,
            path: procs.clone(),
            source,
        })?;
        Ok(dir)
    }

    /// Every cgroup under the root by id, with the agent its top-level
    /// directory stands for (None: a directory that names no agent).
    pub fn scan(&self) -> HashMap<u64, Option<Arc<str>>> {
        let mut out = HashMap::new();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return out;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_dir() {
                continue;
            }
            let name = entry.file_name();
            let agent: Option<Arc<str>> = name.to_str().and_then(agent_of_dir_name).map(Arc::from);
            walk(&entry.path(), meta.ino(), &agent, &mut out, 0);
        }
        out
    }
}

/// The processes of each agent: those in its top-level directory under
/// the root and in every cgroup below it.
fn processes_below(root: &Path) -> HashMap<Arc<str>, Vec<u32>> {
    fn collect(dir: &Path, pids: &mut Vec<u32>, depth: u32) {
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if depth > 16 {
            return;
        }
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect(&entry.path(), pids, depth + 1);
            }
        }
    }
    let mut out: HashMap<Arc<str>, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let Some(agent) = entry
            .file_name()
            .to_str()
            .and_then(agent_of_dir_name)
            .map(Arc::from)
        else {
            continue;
        };
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect(&entry.path(), out.entry(agent).or_default(), 0);
        }
    }
    out
}

fn walk(
    dir: &Path,
    ino: u64,
    agent: &Option<Arc<str>>,
    out: &mut HashMap<u64, Option<Arc<str>>>,
    depth: u32,
) {
    out.insert(ino, agent.clone());
    if depth > 16 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            walk(&entry.path(), meta.ino(), agent, out, depth + 1);
        }
    }
}

/// cgroup id -> agent, refreshed from the tree when an id is unknown.
pub struct AgentIndex {
    tree: CgroupTree,
    state: RwLock<IndexState>,
}

struct IndexState {
    by_id: HashMap<u64, Option<Arc<str>>>,
    scanned: Option<Instant>,
}

/// A burst of connections from an unknown cgroup must not turn into a
/// burst of directory walks.
const MIN_RESCAN_INTERVAL: Duration = Duration::from_millis(20);

impl AgentIndex {
    /// The processes in each agent's cgroups, read from the tree now.
    pub fn processes(&self) -> HashMap<Arc<str>, Vec<u32>> {
        processes_below(&self.tree.root)
    }

    pub fn new(tree: CgroupTree) -> Self {
        Self {
            tree,
            state: RwLock::new(IndexState {
                by_id: HashMap::new(),
                scanned: None,
            }),
        }
    }

    /// The agent a cgroup id belongs to; None for ids outside the managed
    /// tree or under a directory that names no agent.
    pub fn agent(&self, cgroup_id: u64) -> Option<Arc<str>> {
        if let Ok(state) = self.state.read()
            && let Some(found) = state.by_id.get(&cgroup_id)
        {
            return found.clone();
        }
        let Ok(mut state) = self.state.write() else {
            return None;
        };
        if let Some(found) = state.by_id.get(&cgroup_id) {
            return found.clone();
        }
        let due = state
            .scanned
            .is_none_or(|at| at.elapsed() >= MIN_RESCAN_INTERVAL);
        if due {
            state.by_id = self.tree.scan();
            state.scanned = Some(Instant::now());
        }
        state.by_id.get(&cgroup_id).cloned().flatten()
    }

    /// Agents with a cgroup now, with their cgroup ids.
    pub fn snapshot(&self) -> Vec<(u64, Arc<str>)> {
        let scan = self.tree.scan();
        let mut out: Vec<(u64, Arc<str>)> = scan
            .into_iter()
            .filter_map(|(id, agent)| agent.map(|a| (id, a)))
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unified_mount_on_a_hybrid_host() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                    40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_in(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_the_mount_on_a_unified_host_with_optional_fields() {
        let text =
            "29 22 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_mount_in(text),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            cgroup2_mount_in("1 2 0:3 / /x rw - ext4 /dev/vda rw\n"),
            None
        );
    }

    #[test]
    fn unescapes_octal_in_mount_points() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn agent_names_from_directories_and_units() {
        assert_eq!(agent_of_dir_name("pr-bot"), Some("pr-bot"));
        assert_eq!(agent_of_dir_name("pr-bot.service"), Some("pr-bot"));
        assert_eq!(agent_of_dir_name("run-u12.scope"), Some("run-u12"));
        assert_eq!(agent_of_dir_name("Bad"), None);
        assert_eq!(agent_of_dir_name("../x"), None);
        assert_eq!(agent_of_dir_name(""), None);
    }

    #[test]
    fn cgroup_root_must_be_relative_plain_names() {
        for bad in ["", "/abs", "../up", "a/../b"] {
            assert!(matches!(
                CgroupTree::discover(bad),
                Err(CgroupError::BadRoot { .. })
            ));
        }
    }
}
