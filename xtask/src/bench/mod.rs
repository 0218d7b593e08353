//! Benchmarks. Every figure is a ratio against a direct run in the same
//! invocation, on the same machine, so drift between runs cancels out.
//!
//! - `cargo xtask bench connect`: connect() inside an agent cgroup (eBPF
//!   hooks, redirect to the proxy) against the same process outside it.
//! - `cargo xtask bench http`: a real load generator (oha) against a
//!   loopback HTTPS origin (nginx), directly, as an agent through Airlock,
//!   and through a peer (nginx as a TLS reverse proxy) on the same core.

mod connect;
mod daemon;
mod held;
mod http;
mod meter;
mod origin;
mod peer;

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};

pub use connect::{ConnectClientArgs, connect_client};

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
    /// HTTPS through Airlock versus direct: keep-alive, new handshakes,
    /// 1 MiB bodies, CPU and RSS.
    Http(http::HttpArgs),
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmarks attach eBPF programs and create cgroups: run them as root");
    }
    let bins = build_release()?;
    match args.which {
        Which::Connect { count, rounds } => connect::connect(&bins, count, rounds),
        Which::Http(args) => http::http(&bins, args),
    }
}

/// The release binaries the benchmarks run.
pub struct Binaries {
    airlock: PathBuf,
    xtask: PathBuf,
}

fn build_release() -> anyhow::Result<Binaries> {
    run_cmd(cargo().args([
        "build",
        "--release",
        "--package",
        "airlock",
        "--package",
        "xtask",
    ]))?;
    let root = std::env::current_dir()?;
    Ok(Binaries {
        airlock: root.join("target/release/airlock"),
        xtask: root.join("target/release/xtask"),
    })
}
