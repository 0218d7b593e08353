//! CPU and memory of one process, read from a cgroup of its own: cgroup v2
//! `cpu.stat` counts every thread in microseconds, including threads that
//! have already exited, which per-thread /proc counters would lose.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

pub struct Meter {
    path: PathBuf,
}

/// The cgroup v2 mount, from /proc/self/mountinfo (never assumed).
fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup2 filesystem in /proc/self/mountinfo")
}

impl Meter {
    /// A leaf cgroup `airlock-bench-<pid>-meter/<name>`.
    pub fn create(name: &str) -> anyhow::Result<Meter> {
        let path = cgroup2_mount()?
            .join(format!("airlock-bench-{}-meter", std::process::id()))
            .join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Meter { path })
    }

    /// Moves `pid` (all its threads) into this cgroup.
    pub fn adopt(&self, pid: u32) -> anyhow::Result<()> {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", self.path.display()))
    }

    /// CPU time (user + system) of everything that ran in here, in µs.
    pub fn cpu_usec(&self) -> anyhow::Result<u64> {
        let stat = std::fs::read_to_string(self.path.join("cpu.stat"))?;
        stat.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no usage_usec in {}/cpu.stat", self.path.display()))
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        // Succeeds once the adopted process has exited; the parent goes
        // with its last child.
        let _ = std::fs::remove_dir(&self.path);
        if let Some(parent) = self.path.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// A `/proc/<pid>/status` memory figure (`VmHWM`, `VmRSS`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))?;
    match status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
    {
        Some(kib) => Ok(kib),
        None => bail!("no {field} for pid {pid}"),
    }
}

/// Busy time of one CPU (everything but idle and iowait, interrupts
/// included), in µs, from /proc/stat. The load core's time is what oha,
/// nginx and the kernel's work for them cost, wherever the kernel
/// accounts it: a wake-up sent to another core or a packet received for
/// a process there lands on this one.
pub fn cpu_busy_usec(cpu: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let name = format!("cpu{cpu}");
    let fields: Vec<u64> = stat
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == name).then(|| words.filter_map(|w| w.parse().ok()).collect())
        })
        .with_context(|| format!("no {name} line in /proc/stat"))?;
    // user nice system idle iowait irq softirq steal ...
    if fields.len() < 8 {
        bail!("short {name} line in /proc/stat");
    }
    let busy: u64 = fields[..8].iter().sum::<u64>() - fields[3] - fields[4];
    // /proc/stat counts in USER_HZ, which Linux fixes at 100 on every
    // architecture it exports to user space: 10 ms a tick.
    Ok(busy * 10_000)
}
