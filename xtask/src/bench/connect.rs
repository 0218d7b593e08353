//! `cargo xtask bench connect`: the cost of connect() for a process inside
//! an agent cgroup (eBPF hooks, redirect to the proxy) against the same
//! process outside it.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;

use super::{Binaries, daemon::BenchDaemon};

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

pub fn connect(bins: &Binaries, count: u32, rounds: u32) -> anyhow::Result<()> {
    // Both sides connect to the same listener, the proxy's: outside the
    // cgroup directly, inside through the hooks' redirect (the agent dials
    // a port nobody listens on). The only difference is the eBPF path:
    // sock_create, connect4, sock_ops, the egress filter and the map
    // writes. The proxy refuses both (no kernel record / no rule), so no
    // connection is relayed and nothing else competes for the 4-tuples.
    let daemon = BenchDaemon::start(
        &bins.airlock,
        &[("bench", "agent: bench\nrules:\n  - host: bench.test\n")],
        "",
        None,
    )?;
    let direct = SocketAddr::from((Ipv4Addr::LOCALHOST, daemon.proxy_port));
    let dialled = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));

    let client = |inside: bool| -> anyhow::Result<Summary> {
        let mut cmd = if inside {
            daemon.agent("bench", &bins.xtask)
        } else {
            Command::new(&bins.xtask)
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
