//! Benchmarks. Every figure is a ratio against a direct run in the same
//! invocation, on the same machine, so drift between runs cancels out.
//!
//! `cargo xtask bench connect`: the cost of connect() for a process inside
//! an agent cgroup (eBPF hooks, redirect to the proxy) against the same
//! process outside it.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use crate::{cargo, is_root, run as run_cmd};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(Subcommand)]
enum Which {
    /// connect() inside an agent cgroup versus outside.
    Connect {
        /// Connections per round and side.
        #[arg(long, default_value_t = 3000)]
        count: u32,
        /// Rounds, alternating outside and inside.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
}

#[derive(Args)]
pub struct ConnectClientArgs {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long)]
    count: u32,
}

/// Runs inside or outside the cgroup: time socket()+connect() per
/// connection and print the sorted samples' summary as one line.
pub fn connect_client(args: ConnectClientArgs) -> anyhow::Result<()> {
    let mut samples = Vec::with_capacity(args.count as usize);
    let deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..args.count {
        let start = Instant::now();
        let stream = TcpStream::connect(args.addr).context("connect")?;
        samples.push(start.elapsed().as_nanos() as u64);
        drop(stream);
        if Instant::now() > deadline {
            bail!("connect benchmark exceeded its time bound");
        }
    }
    samples.sort_unstable();
    let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    println!(
        "{} {} {} {}",
        pick(0.5),
        pick(0.9),
        pick(0.99),
        samples.len()
    );
    Ok(())
}

struct Summary {
    p50: u64,
    p90: u64,
    p99: u64,
}

fn parse_summary(out: &std::process::Output) -> anyhow::Result<Summary> {
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<u64> = text
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    if !out.status.success() || fields.len() != 4 {
        bail!(
            "connect client failed: {}\n{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(Summary {
        p50: fields[0],
        p90: fields[1],
        p99: fields[2],
    })
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.which {
        Which::Connect { count, rounds } => connect(count, rounds),
    }
}

/// A daemon of the benchmark's own: temp dir, own cgroup root, pins, ports.
struct BenchDaemon {
    dir: PathBuf,
    config: PathBuf,
    proxy_port: u16,
    child: Child,
}

impl BenchDaemon {
    fn start(airlock: &Path, policy: &str) -> anyhow::Result<BenchDaemon> {
        let id = std::process::id();
        let dir = std::env::temp_dir().join(format!("airlock-bench-{id}"));
        std::fs::create_dir_all(dir.join("policies"))?;
        std::fs::write(dir.join("policies/bench.yaml"), policy)?;
        let port = |()| -> anyhow::Result<u16> {
            Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
                .local_addr()?
                .port())
        };
        let config = dir.join("airlock.yaml");
        let proxy_port = port(())?;
        std::fs::write(
            &config,
            format!(
                "cgroup_root: airlock-bench-{id}.slice\npolicy_dir: {d}/policies\nstate_dir: {d}/state\nproxy_port: {}\ndns_port: {}\nmetrics_addr: 127.0.0.1:{}\naudit_log: {d}/audit.jsonl\nadmin_socket: {d}/admin.sock\nbpf_pin_dir: /sys/fs/bpf/airlock-bench-{id}\n",
                proxy_port,
                port(())?,
                port(())?,
                d = dir.display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("daemon.log"))?;
        let child = Command::new(airlock)
            .args(["daemon", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the daemon")?;
        let daemon = BenchDaemon {
            dir,
            config,
            proxy_port,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new(airlock)
                .args(["status", "--json", "--config"])
                .arg(&daemon.config)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return Ok(daemon);
            }
            if Instant::now() > deadline {
                bail!(
                    "bench daemon not healthy; see {}",
                    daemon.dir.join("daemon.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = Command::new("target/release/airlock")
            .args(["detach", "--config"])
            .arg(&self.config)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn connect(count: u32, rounds: u32) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmark attaches eBPF programs: run it as root");
    }
    run_cmd(cargo().args([
        "build",
        "--release",
        "--package",
        "airlock",
        "--package",
        "xtask",
    ]))?;
    let root = std::env::current_dir()?;
    let airlock = root.join("target/release/airlock");
    let xtask = root.join("target/release/xtask");

    // Both sides connect to the same listener, the proxy's: outside the
    // cgroup directly, inside through the hooks' redirect (the agent dials
    // a port nobody listens on). The only difference is the eBPF path:
    // sock_create, connect4, sock_ops, the egress filter and the map
    // writes. The proxy refuses both (no kernel record / no rule), so no
    // connection is relayed and nothing else competes for the 4-tuples.
    let daemon = BenchDaemon::start(&airlock, "agent: bench\nrules:\n  - host: bench.test\n")?;
    let direct = SocketAddr::from((Ipv4Addr::LOCALHOST, daemon.proxy_port));
    let dialled = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));

    let client = |inside: bool| -> anyhow::Result<Summary> {
        let mut cmd = if inside {
            let mut c = Command::new(&airlock);
            c.args(["run", "--config"])
                .arg(&daemon.config)
                .args(["--agent", "bench", "--allow-root", "--"])
                .arg(&xtask);
            c
        } else {
            Command::new(&xtask)
        };
        let addr = if inside { dialled } else { direct };
        cmd.args([
            "connect-client",
            "--addr",
            &addr.to_string(),
            "--count",
            &count.to_string(),
        ]);
        parse_summary(&cmd.output()?)
    };
    let (mut outside, mut inside) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        outside.push(client(false)?);
        inside.push(client(true)?);
    }
    let median = |v: &[Summary], f: fn(&Summary) -> u64| {
        let mut xs: Vec<u64> = v.iter().map(f).collect();
        xs.sort_unstable();
        xs[xs.len() / 2]
    };
    let row = |name: &str, f: fn(&Summary) -> u64| {
        let (o, i) = (median(&outside, f), median(&inside, f));
        println!(
            "| connect() {name} | {:.1} µs | {:.1} µs | {:.2}x | {:+.1} µs |",
            o as f64 / 1000.0,
            i as f64 / 1000.0,
            i as f64 / o as f64,
            (i as f64 - o as f64) / 1000.0
        );
    };
    println!(
        "\nconnect() to the proxy listener: {rounds} rounds x {count} connections per side, median of rounds\n"
    );
    println!(
        "| metric | outside the cgroup (direct) | inside an agent cgroup (eBPF redirect) | ratio | added |"
    );
    println!("|---|---|---|---|---|");
    row("p50", |s| s.p50);
    row("p90", |s| s.p90);
    row("p99", |s| s.p99);
    Ok(())
}
