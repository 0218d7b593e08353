//! `airlock`: one binary for the daemon and the commands that talk to it.
//!
//! Follow a connection through the folders: agent-ebpf (capture) -> proxy
//! (accept, orig-dst, route) -> policy (decide) -> vault (credentials) ->
//! upstream -> audit.

mod agent_env;
mod agent_mounts;
mod agent_syscalls;
mod approvals;
mod atomic_file;
mod audit;
mod ca;
mod capabilities;
mod cgroup;
mod cli;
mod cmd;
mod config;
mod core_dumps;
mod creds;
mod daemon;
mod dns;
mod ebpf;
mod file_trust;
mod memory_lock;
mod metrics;
mod nearest_key;
mod policy;
mod proxy;
mod ratelimit;
mod secret;
#[cfg(test)]
mod test_bodies;
mod upstream_tls;
mod vault;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    // Every command but `run` may hold a key or a secret in memory; `run`
    // becomes the agent, which holds placeholders only, and whose cores are
    // its own.
    if !matches!(cli.command, cli::Command::Run(_))
        && let Err(err) = core_dumps::forbid()
    {
        eprintln!(
            "airlock: cannot forbid core dumps, which would hold keys and secrets in the clear: {err}"
        );
        return std::process::ExitCode::FAILURE;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("AIRLOCK_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // The journal and log files get plain text, a terminal colours.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cmd::dispatch(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("airlock: {}", render_error(&err));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and the causes its own message does not already include
/// (typed errors here carry their source's text in their message).
fn render_error(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
