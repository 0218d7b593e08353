use std::process::ExitCode;

use crate::{cgroup::CgroupTree, cli::ConfigArg};

/// Undo what the daemon put in the kernel: unpin and detach the programs,
/// then remove the (empty) agent cgroups and the root.
pub fn run(arg: &ConfigArg) -> anyhow::Result<ExitCode> {
    let (config, _) = super::load_config(arg)?;
    let detached = crate::ebpf::detach_pinned(&config.bpf_pin_dir)?;
    println!("detached {detached} eBPF program(s)");
    let tree = CgroupTree::discover(&config.cgroup_root)?;
    if tree.root.exists() {
        let mut busy = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&tree.root) {
            for e in entries.flatten() {
                if e.path().is_dir() && std::fs::remove_dir(e.path()).is_err() {
                    busy.push(e.path());
                }
            }
        }
        if busy.is_empty() && std::fs::remove_dir(&tree.root).is_ok() {
            println!("removed {}", tree.root.display());
        } else {
            for b in &busy {
                eprintln!(
                    "cgroup {} still has processes; stop them and run this again",
                    b.display()
                );
            }
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}
