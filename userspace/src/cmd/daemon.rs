use std::process::ExitCode;

use anyhow::Context as _;

use crate::cli::ConfigArg;

pub fn run(arg: ConfigArg) -> anyhow::Result<ExitCode> {
    let (config, path) = super::load_config(&arg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("airlock")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(crate::daemon::run(config, path))?;
    Ok(ExitCode::SUCCESS)
}
