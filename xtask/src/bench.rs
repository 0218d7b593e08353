//! Benchmarks (filled in below).
use clap::Args;

#[derive(Args)]
pub struct BenchArgs {}

#[derive(Args)]
pub struct ConnectClientArgs {}

pub fn run(_: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}

pub fn connect_client(_: ConnectClientArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
