//! Project tasks: `cargo xtask test` (everything CI runs) and
//! `cargo xtask bench` (the measurements in BENCHMARKS.md).

mod bench;
mod install;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Unit tests, privileged end-to-end tests (real cgroups, real eBPF,
    /// real clients) and unit-file verification. Needs root.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Build, install and start Airlock as a service with the example policies.
    Install,
    /// Stop Airlock, detach its programs, remove its cgroup; keeps the vault.
    Uninstall(install::UninstallArgs),
    /// Install, check the running service with a Node agent, uninstall, and
    /// check nothing is left (CI runs this after the tests).
    InstallCheck,
    /// Benchmarks; results are printed as Markdown rows for BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// Internal: the connect() timing client that the benchmark runs inside
    /// and outside an agent cgroup.
    #[command(hide = true)]
    ConnectClient(bench::ConnectClientArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Test { args } => test(&args),
        Task::Install => install::install(),
        Task::Uninstall(args) => install::uninstall(args),
        Task::InstallCheck => install::install_check(),
        Task::Bench(args) => bench::run(args),
        Task::ConnectClient(args) => bench::connect_client(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the end-to-end tests load eBPF programs into real cgroups and need root: run `sudo -E cargo xtask test`"
        );
    }
    // agent-ebpf builds only for the BPF target (userspace/build.rs does that).
    run(cargo()
        .args(["test", "--workspace", "--exclude", "agent-ebpf"])
        .args(extra))?;
    // A daemon confined to one CPU runs a single-threaded runtime, the
    // others a thread pool: the end-to-end suites run against both.
    let cpu = first_allowed_cpu()?;
    eprintln!("+ the end-to-end suites again, with each daemon confined to CPU {cpu}");
    run(cargo()
        .env("AIRLOCK_TEST_DAEMON_CPU", cpu.to_string())
        .args(["test", "--package", "airlock"])
        .args([
            "--test",
            "capture",
            "--test",
            "intercept",
            "--test",
            "operations",
        ])
        .args(extra))?;
    verify_units()?;
    Ok(())
}

/// The lowest CPU this process may run on (CI runners are often given a
/// subset of the machine's CPUs).
fn first_allowed_cpu() -> anyhow::Result<u32> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|list| {
            let first = list.trim().split([',', '-']).next()?;
            first.parse().ok()
        })
        .context("no Cpus_allowed_list in /proc/self/status")
}

/// `systemd-analyze verify` on the shipped units. verify insists that
/// ExecStart's binary exists, so it checks a copy of each unit whose
/// ExecStart points at the binary this build produced.
fn verify_units() -> anyhow::Result<()> {
    let units: Vec<_> = std::fs::read_dir("systemd")
        .context("reading systemd/")?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "service" || e == "slice")
        })
        .collect();
    if units.is_empty() {
        return Ok(());
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!(
            "systemd-analyze is not installed (apt-get install systemd); it verifies the unit files"
        );
    }
    run(cargo().args(["build", "--package", "airlock"]))?;
    let built = std::env::current_dir()?.join("target/debug/airlock");
    let dir = std::env::temp_dir().join(format!("airlock-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut copies = Vec::new();
    for unit in &units {
        let text =
            std::fs::read_to_string(unit).with_context(|| format!("reading {}", unit.display()))?;
        let text = text.replace("/usr/local/bin/airlock", &built.display().to_string());
        let copy = dir.join(unit.file_name().context("unit name")?);
        std::fs::write(&copy, text)?;
        copies.push(copy);
    }
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify").args(&copies);
    let result = run(&mut cmd);
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    println!("systemd units verified ({} files)", units.len());
    Ok(())
}
