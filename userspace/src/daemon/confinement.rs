//! Whether the processes in agents' cgroups run under a system call
//! filter. `airlock run` puts one on every agent, and a unit with
//! `RestrictAddressFamilies=` or `SystemCallFilter=` has one too. A
//! process placed in an agent's cgroup by other means has none, and may
//! open sockets the cgroup hooks never see (`AF_VSOCK`, io_uring): `status`
//! names such processes and a metric counts them, so that an alert fires.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

/// How many of each agent's processes have no system call filter; every
/// agent with a process is listed, at 0 when all are filtered.
pub fn unconfined_by_agent(processes: &HashMap<Arc<str>, Vec<u32>>) -> BTreeMap<String, u64> {
    processes
        .iter()
        .map(|(agent, pids)| (agent.to_string(), unconfined(pids)))
        .collect()
}

/// How many of `pids` have no system call filter.
pub fn unconfined(pids: &[u32]) -> u64 {
    pids.iter().filter(|pid| !has_syscall_filter(**pid)).count() as u64
}

/// A process gone meanwhile counts as filtered: it opens nothing.
fn has_syscall_filter(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).map_or(true, |status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .is_some_and(|mode| mode.trim() == "2")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_without_a_filter_counts_and_one_gone_does_not() {
        // Whether this test process runs under a filter depends on where
        // the tests run (a container's default profile adds one); pid 0
        // names no process.
        let me = std::process::id();
        let status = std::fs::read_to_string("/proc/self/status").expect("own status");
        let filtered = status
            .lines()
            .any(|l| l.split_whitespace().eq(["Seccomp:", "2"]));
        let processes =
            HashMap::from([(Arc::from("alpha"), vec![me]), (Arc::from("beta"), vec![0])]);
        let counts = unconfined_by_agent(&processes);
        assert_eq!(counts.get("alpha"), Some(&u64::from(!filtered)));
        assert_eq!(counts.get("beta"), Some(&0));
    }
}
