//! Per-agent egress policies: YAML files, one agent each.
//!
//! `schema.rs` (the file as written) -> `compile.rs` (validated model, every
//! problem with file:line:column) -> `matcher.rs` (decisions). A file that
//! fails validation yields no `Policy` at all: callers keep the previous
//! version in force rather than run with part of a policy.

mod compile;
mod error;
mod host;
mod locate;
mod matcher;
mod model;
mod path_patterns;
mod schema;
mod secret_hosts;
mod store;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

pub use error::{PolicyError, PolicyErrors};
pub use matcher::{Allowed, HttpDecision, Passthrough, TcpMatch};
#[cfg(test)]
use matcher::{Denied, DenyReason};
#[cfg(test)]
use model::RateLimit;
pub use model::{EnvValue, Policy, RuleId};
pub use store::PolicyStore;

use error::Problem;
use locate::NodePath;

/// Parses and validates one policy. `path` is only used in errors and as
/// `Policy::source`; nothing is read from disk.
pub fn parse_policy(path: &Path, text: &str) -> Result<Policy, PolicyErrors> {
    compile::parse(path, text)
}

/// Refuses a policy file that a user other than root could change, or
/// replace through a directory above it (`file_trust`).
pub fn check_trusted(path: &Path) -> Result<(), PolicyErrors> {
    crate::file_trust::check(path)
        .map_err(|untrusted| whole_file(path, Problem::Untrusted(untrusted)))
}

/// Everything `load_dir` found: the valid policies, and the errors of each
/// file that was rejected.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub policies: Vec<Policy>,
    pub errors: Vec<PolicyErrors>,
}

/// Loads `*.yaml` and `*.yml` in `dir` (not recursive), in file-name order.
/// Hidden files are skipped (editor lock and swap files live there). When two
/// files name the same agent, the first one in that order is kept and the
/// later one is rejected, so the outcome does not depend on directory order.
pub fn load_dir(dir: &Path) -> LoadReport {
    let mut report = LoadReport::default();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(source) => {
            report.errors.push(whole_file(
                dir,
                Problem::Io {
                    what: "policy directory",
                    source,
                },
            ));
            return report;
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => {
                let path = entry.path();
                if is_policy_file_name(&path) {
                    files.push(path);
                }
            }
            Err(source) => report.errors.push(whole_file(
                dir,
                Problem::Io {
                    what: "policy directory",
                    source,
                },
            )),
        }
    }
    files.sort();

    let mut owners: HashMap<String, PathBuf> = HashMap::new();
    for path in files {
        // Follows symlinks: a linked policy is a policy; a directory named
        // `x.yaml` is not.
        match fs::metadata(&path) {
            Ok(meta) if !meta.is_file() => continue,
            Ok(_) => {}
            Err(source) => {
                report.errors.push(whole_file(
                    &path,
                    Problem::Io {
                        what: "policy file",
                        source,
                    },
                ));
                continue;
            }
        }
        if let Err(untrusted) = check_trusted(&path) {
            report.errors.push(untrusted);
            continue;
        }
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(source) => {
                report.errors.push(whole_file(
                    &path,
                    Problem::Io {
                        what: "policy file",
                        source,
                    },
                ));
                continue;
            }
        };
        match parse_policy(&path, &text) {
            Ok(policy) => match owners.get(&policy.agent) {
                Some(other) => {
                    let problem = Problem::DuplicateAgent {
                        agent: policy.agent.clone(),
                        other: other.clone(),
                    };
                    let at = NodePath::root().key("agent");
                    report.errors.push(PolicyErrors(vec![compile::positioned(
                        &path, &text, &at, problem,
                    )]));
                }
                None => {
                    owners.insert(policy.agent.clone(), path.clone());
                    report.policies.push(policy);
                }
            },
            Err(errors) => report.errors.push(errors),
        }
    }
    report
}

pub(crate) fn is_policy_file_name(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
        return false;
    };
    if name.starts_with('.') {
        return false;
    }
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml"))
}

fn whole_file(path: &Path, problem: Problem) -> PolicyErrors {
    PolicyErrors(vec![PolicyError {
        path: path.to_owned(),
        line: 0,
        column: 0,
        hint: problem.hint(),
        message: problem.to_string(),
    }])
}
