use std::{path::PathBuf, process::ExitCode};

use crate::{cli::PolicyAction, policy};

/// Offline validation: needs no privileges and no daemon.
pub fn run(action: PolicyAction) -> anyhow::Result<ExitCode> {
    let PolicyAction::Check { config, paths } = action;
    let paths: Vec<PathBuf> = if paths.is_empty() {
        let (cfg, _) = super::load_config(&config)?;
        vec![cfg.policy_dir]
    } else {
        paths
    };
    let mut failed = 0usize;
    let mut ok = 0usize;
    for path in paths {
        let report = if path.is_dir() {
            policy::load_dir(&path)
        } else if let Err(untrusted) = policy::check_trusted(&path) {
            policy::LoadReport {
                policies: vec![],
                errors: vec![untrusted],
            }
        } else {
            match std::fs::read_to_string(&path) {
                Ok(text) => match policy::parse_policy(&path, &text) {
                    Ok(p) => policy::LoadReport {
                        policies: vec![p],
                        errors: vec![],
                    },
                    Err(e) => policy::LoadReport {
                        policies: vec![],
                        errors: vec![e],
                    },
                },
                Err(err) => {
                    eprintln!("{}: cannot read: {err}", path.display());
                    failed += 1;
                    continue;
                }
            }
        };
        for p in &report.policies {
            let secrets: Vec<&str> = p.secrets().collect();
            if secrets.is_empty() {
                println!("ok: {} (agent {})", p.source.display(), p.agent);
            } else {
                // What `airlock secret set` must hold before the agent runs.
                println!(
                    "ok: {} (agent {}; secrets: {})",
                    p.source.display(),
                    p.agent,
                    secrets.join(", ")
                );
            }
            ok += 1;
        }
        for e in &report.errors {
            eprintln!("{e}");
            failed += 1;
        }
    }
    if failed > 0 {
        eprintln!("{failed} file(s) rejected, {ok} ok");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
