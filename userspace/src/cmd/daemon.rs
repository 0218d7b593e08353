use std::process::ExitCode;

use anyhow::Context as _;

use crate::cli::ConfigArg;

pub fn run(arg: ConfigArg) -> anyhow::Result<ExitCode> {
    let (config, path) = super::load_config(&arg)?;
    // The config and the CAs it trusts for upstreams decide what agents
    // reach and who sees their secrets, as the policies do.
    let trusted = std::iter::once(("config", &path))
        .chain(config.upstream_ca.iter().map(|ca| ("upstream_ca", ca)));
    for (what, file) in trusted {
        crate::file_trust::check(file)
            .with_context(|| format!("not starting: {what} {}", file.display()))?;
    }
    // Before the runtime's threads and the vault: locked from the start,
    // nothing the daemon holds is ever swapped out.
    crate::memory_lock::lock_as_configured(config.lock_memory, &path).context("not starting")?;
    // Capabilities belong to each thread: dropped here, before the
    // runtime's threads exist, they are dropped for all of them.
    let tree = crate::daemon::prepare_cgroup(&config)?;
    if let Err(err) = crate::capabilities::keep_only_needed() {
        tracing::warn!(error = %err, "cannot drop the capabilities the daemon does not need; it runs with more than the unit grants");
    }
    let runtime = runtime().context("starting the async runtime")?;
    runtime.block_on(crate::daemon::run(config, path, tree))?;
    Ok(ExitCode::SUCCESS)
}

/// A daemon confined to one CPU (`taskset`, `CPUAffinity=`) runs every task
/// on the thread that polls the sockets. A one-worker thread pool would do
/// the same work but pay for queues and wake-ups made for several threads:
/// 3 % of the CPU per request (BENCHMARKS.md). Blocking work
/// (`spawn_blocking`) has its own threads either way.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().thread_name("airlock").build()
}
