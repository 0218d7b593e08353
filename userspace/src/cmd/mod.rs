//! One file per subcommand.

mod approvals;
mod ca;
mod daemon;
mod detach;
mod hidden_line;
mod kernel_attach;
mod policy;
mod run;
mod secret;
mod status;

use std::{path::PathBuf, process::ExitCode};

use crate::{
    cli::{Command, ConfigArg},
    config::{Config, DEFAULT_CONFIG_PATH},
};

pub fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Daemon(config) => daemon::run(config),
        Command::Run(args) => run::run(args),
        Command::Secret { config, action } => secret::run(&config, action),
        Command::Policy { action } => policy::run(action),
        Command::Status { config, json } => status::run(&config, json),
        Command::Ca { config, action } => ca::run(&config, action),
        Command::Approvals { config, action } => approvals::run(&config, action),
        Command::Detach { config } => detach::run(&config),
        Command::KernelAttach(args) => kernel_attach::run(&args),
    }
}

/// The config file named on the command line, or the default one.
pub(crate) fn load_config(arg: &ConfigArg) -> anyhow::Result<(Config, PathBuf)> {
    let (path, explicit) = match &arg.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let config = Config::load(&path, explicit)?;
    Ok((config, path))
}
