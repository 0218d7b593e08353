use std::process::ExitCode;

use agent_common::Settings;

use crate::{
    cli::KernelAttachArgs,
    ebpf::{self, LoaderOutcome},
};

/// The daemon's loader: one JSON outcome on stdout, which the daemon reads.
pub fn run(args: &KernelAttachArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings {
        proxy_port: args.proxy_port,
        dns_port: args.dns_port,
        _pad: 0,
        netns_cookie: args.netns_cookie,
    };
    let (outcome, code) = match ebpf::attach(&args.cgroup_root, &args.pin_dir, settings) {
        Ok(report) => (LoaderOutcome::Attached(report), ExitCode::SUCCESS),
        Err(err) => (LoaderOutcome::Failed(err.to_string()), ExitCode::FAILURE),
    };
    println!("{}", serde_json::to_string(&outcome)?);
    Ok(code)
}
