//! Policy text -> validated `Policy`, or every problem found, each with its
//! file, line and column.
//!
//! Two stages, like a compiler: serde checks the shape (types, unknown keys),
//! then `Compiler` checks the values. Problems are collected with the path of
//! the node they concern and positioned at the end by `locate`, so validation
//! code never deals with text offsets.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use globset::{GlobBuilder, GlobSetBuilder};
use ipnet::{IpNet, Ipv4Net};
use serde::de::IgnoredAny;

use super::error::{PolicyError, PolicyErrors, Problem, is_method_token};
use super::host::{HostPattern, check_dns_name, parse_ip_literal, parse_port, split_host_port};
use super::locate::{KeyProblemKind, NodePath, key_problems, locate};
use super::model::{
    AllowRule, DenyRule, EnvValue, PassthroughEntry, Policy, RateLimit, TcpEntry, TcpTarget,
};
use super::path_patterns::{PathPatterns, as_servers_may_read, upper_escapes};
use super::schema::{DenySpec, PolicyFile, RuleSpec};

const DEFAULT_PORT: u16 = 443;

pub(super) fn parse(path: &Path, text: &str) -> Result<Policy, PolicyErrors> {
    match serde_yaml::from_str::<PolicyFile>(text) {
        Ok(file) => compile(path, text, file),
        Err(error) => Err(shape_errors(path, text, &error)),
    }
}

/// Turns a problem found at `at` into a positioned error.
pub(super) fn positioned(path: &Path, text: &str, at: &NodePath, problem: Problem) -> PolicyError {
    let (line, column) = locate(text, at);
    PolicyError {
        path: path.to_owned(),
        line,
        column,
        hint: problem.hint(),
        message: problem.to_string(),
    }
}

/// serde stops at its first error; the key walk adds every unknown or
/// repeated key so they can all be fixed in one round.
fn shape_errors(path: &Path, text: &str, error: &serde_yaml::Error) -> PolicyErrors {
    let whole = |line, column, problem: Problem| PolicyError {
        path: path.to_owned(),
        line,
        column,
        hint: problem.hint(),
        message: problem.to_string(),
    };
    // Empty, comments only, or a bare `~`: say so instead of serde's
    // "missing field `agent`" at some line past the end.
    if matches!(serde_yaml::from_str::<Option<IgnoredAny>>(text), Ok(None)) {
        return PolicyErrors(vec![whole(1, 1, Problem::Empty)]);
    }
    let mut errors: Vec<PolicyError> = key_problems(text)
        .into_iter()
        .map(|found| {
            let problem = match found.kind {
                KeyProblemKind::Unknown { valid } => Problem::UnknownKey {
                    key: found.key,
                    valid,
                },
                KeyProblemKind::Duplicate => Problem::DuplicateKey { key: found.key },
            };
            positioned(path, text, &found.path, problem)
        })
        .collect();
    let (line, column) = error
        .location()
        .map_or((1, 1), |location| (location.line(), location.column()));
    // serde's unknown- or duplicate-field error is one the walk has already
    // reported, with a better hint or position; keep serde's only if the
    // walk found nothing.
    let message = error.to_string();
    let about_keys = message.contains("unknown field") || message.contains("duplicate field");
    let reported = errors
        .iter()
        .any(|found| found.line == line && found.column == column);
    if !reported && (!about_keys || errors.is_empty()) {
        let message = yaml_message(error, line, column);
        errors.push(whole(line, column, Problem::Yaml { message }));
    }
    sorted(errors)
}

/// Source order; the same problem reached twice (through a YAML alias)
/// is reported once.
fn sorted(mut errors: Vec<PolicyError>) -> PolicyErrors {
    // Stable: problems on one node keep the order they were found in.
    errors.sort_by_key(|error| (error.line, error.column));
    errors.dedup();
    PolicyErrors(errors)
}

/// serde_yaml's message without its trailing " at line L column C", which
/// our `path:line:column:` prefix already says.
fn yaml_message(error: &serde_yaml::Error, line: usize, column: usize) -> String {
    let position = format!(" at line {line} column {column}");
    error.to_string().replacen(&position, "", 1)
}

fn compile(path: &Path, text: &str, file: PolicyFile) -> Result<Policy, PolicyErrors> {
    let mut compiler = Compiler::default();
    let policy = compiler.policy(path, file);
    if compiler.problems.is_empty() {
        return Ok(policy);
    }
    let errors: Vec<PolicyError> = compiler
        .problems
        .into_iter()
        .map(|(at, problem)| positioned(path, text, &at, problem))
        .collect();
    Err(sorted(errors))
}

#[derive(Default)]
struct Compiler {
    problems: Vec<(NodePath, Problem)>,
}

impl Compiler {
    fn report(&mut self, at: NodePath, problem: Problem) {
        self.problems.push((at, problem));
    }

    fn policy(&mut self, path: &Path, file: PolicyFile) -> Policy {
        let root = NodePath::root();
        if let Some(found) = file.version.filter(|version| *version != 1) {
            self.report(root.key("version"), Problem::Version { found });
        }
        self.agent(&root.key("agent"), &file.agent);

        let rules: Vec<AllowRule> = file
            .rules
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .filter_map(|(i, spec)| self.allow_rule(&root.key("rules").index(i), i, spec))
            .collect();
        let deny: Vec<DenyRule> = file
            .deny
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .filter_map(|(i, spec)| self.deny_rule(&root.key("deny").index(i), i, spec))
            .collect();
        let tcp: Vec<TcpEntry> = file
            .tcp
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, entry)| self.tcp_entry(&root.key("tcp").index(i), i, entry))
            .collect();
        let passthrough: Vec<PassthroughEntry> = file
            .passthrough
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, entry)| self.passthrough(&root.key("passthrough").index(i), entry))
            .collect();

        let secrets: Vec<String> = rules
            .iter()
            .flat_map(|rule| rule.credentials.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let env = self.env(&root.key("env"), file.env.unwrap_or_default().0, &secrets);

        Policy {
            agent: file.agent,
            source: path.to_owned(),
            env,
            rules,
            deny,
            tcp,
            passthrough,
            secrets,
        }
    }

    fn agent(&mut self, at: &NodePath, agent: &str) {
        if agent.is_empty() {
            self.report(at.clone(), Problem::AgentEmpty);
        } else if !is_agent_name(agent) {
            self.report(
                at.clone(),
                Problem::AgentName {
                    name: agent.to_owned(),
                },
            );
        }
    }

    fn env(
        &mut self,
        at: &NodePath,
        entries: Vec<(String, String)>,
        secrets: &[String],
    ) -> Vec<(String, EnvValue)> {
        let mut env = Vec::with_capacity(entries.len());
        for (name, raw) in entries {
            let here = at.key(&name);
            if !is_env_name(&name) {
                self.report(
                    here.clone().the_key(),
                    Problem::EnvName { name: name.clone() },
                );
            }
            let value = match parse_env_value(&raw) {
                Ok(value) => value,
                Err(()) => {
                    self.report(here, Problem::PlaceholderSyntax { var: name });
                    continue;
                }
            };
            if let EnvValue::Placeholder { secret } = &value {
                if !is_secret_name(secret) {
                    self.report(
                        here.clone(),
                        Problem::SecretName {
                            name: secret.clone(),
                        },
                    );
                } else if !secrets.contains(secret) {
                    // The vault would swap this placeholder on no request at
                    // all, so the agent would carry a useless credential.
                    self.report(
                        here.clone(),
                        Problem::UnusedPlaceholder {
                            var: name.clone(),
                            secret: secret.clone(),
                        },
                    );
                }
            }
            env.push((name, value));
        }
        env
    }

    /// Host, then port from `host:port` or `port:`; `None` (reported) when
    /// either is invalid.
    fn host_port(
        &mut self,
        at: &NodePath,
        host: &str,
        port: Option<u16>,
    ) -> Option<(HostPattern, Option<u16>)> {
        let bad_host = |reason| Problem::Host {
            host: host.to_owned(),
            reason,
        };
        let (name, inline_port) = match split_host_port(host) {
            Ok(split) => split,
            Err(reason) => {
                self.report(at.key("host"), bad_host(reason));
                return None;
            }
        };
        let pattern = match HostPattern::parse(name) {
            Ok(pattern) => pattern,
            Err(reason) => {
                self.report(at.key("host"), bad_host(reason));
                return None;
            }
        };
        match (inline_port, port) {
            (_, Some(0)) => {
                self.report(at.key("port"), Problem::PortZero);
                None
            }
            (Some(_), Some(port)) => {
                self.report(
                    at.key("port"),
                    Problem::PortTwice {
                        host: host.to_owned(),
                        port,
                    },
                );
                None
            }
            (inline, field) => Some((pattern, inline.or(field))),
        }
    }

    fn allow_rule(&mut self, at: &NodePath, index: usize, spec: RuleSpec) -> Option<AllowRule> {
        let limit_key = {
            use std::hash::{Hash as _, Hasher as _};
            // Fixed keys: the same within the daemon, which is as long as
            // buckets live.
            let mut h = std::hash::DefaultHasher::new();
            (&spec.host, spec.port, &spec.methods, &spec.paths).hash(&mut h);
            h.finish()
        };
        let host_port = self.host_port(at, &spec.host, spec.port);
        let methods = self.methods(at, spec.methods);
        let paths = self.paths(at, spec.paths, false);
        let mut credentials = Vec::new();
        for (i, credential) in spec.credentials.unwrap_or_default().into_iter().enumerate() {
            if is_secret_name(&credential.secret) {
                credentials.push(credential.secret);
            } else {
                self.report(
                    at.key("credentials").index(i).key("secret"),
                    Problem::SecretName {
                        name: credential.secret,
                    },
                );
            }
        }
        let rate_limit = match spec.rate_limit {
            None => None,
            Some(value) => match parse_rate_limit(&value) {
                Ok(limit) => Some(limit),
                Err(reason) => {
                    self.report(at.key("rate_limit"), Problem::RateLimit { value, reason });
                    None
                }
            },
        };
        let (host, port) = host_port?;
        let port = port.unwrap_or(DEFAULT_PORT);
        Some(AllowRule {
            label: label("rules", index, &host, Some(port)).into(),
            host,
            port,
            methods: methods?,
            paths: paths?,
            credentials: credentials.into(),
            rate_limit,
            approval: spec.approval.unwrap_or(false),
            limit_key,
        })
    }

    fn deny_rule(&mut self, at: &NodePath, index: usize, spec: DenySpec) -> Option<DenyRule> {
        let host_port = self.host_port(at, &spec.host, spec.port);
        let methods = self.methods(at, spec.methods);
        // Some servers (GitHub's repository paths, Windows hosts) ignore
        // case: a deny rule must not be sidestepped by `/ADMIN`. Widening a
        // deny is safe; allow rules stay exact.
        let paths = self.paths(at, spec.paths, true);
        let (host, port) = host_port?;
        Some(DenyRule {
            label: label("deny", index, &host, port).into(),
            host,
            port,
            methods: methods?,
            paths: paths?,
        })
    }

    /// `Some(None)`: any method; `None`: invalid (reported).
    fn methods(
        &mut self,
        at: &NodePath,
        methods: Option<Vec<String>>,
    ) -> Option<Option<Vec<String>>> {
        let Some(methods) = methods else {
            return Some(None);
        };
        if methods.is_empty() {
            self.report(at.key("methods"), Problem::EmptyList { key: "methods" });
            return None;
        }
        let mut ok = true;
        for (i, method) in methods.iter().enumerate() {
            if !is_method_token(method) {
                ok = false;
                self.report(
                    at.key("methods").index(i),
                    Problem::Method {
                        method: method.clone(),
                    },
                );
            }
        }
        ok.then_some(Some(methods))
    }

    /// `Some(None)`: any path; `None`: invalid (reported).
    fn paths(
        &mut self,
        at: &NodePath,
        paths: Option<Vec<String>>,
        ignore_case: bool,
    ) -> Option<Option<PathPatterns>> {
        let Some(paths) = paths else {
            return Some(None);
        };
        if paths.is_empty() {
            self.report(at.key("paths"), Problem::EmptyList { key: "paths" });
            return None;
        }
        let mut ok = true;
        let mut as_written = GlobSetBuilder::new();
        let mut as_read = GlobSetBuilder::new();
        for (i, pattern) in paths.iter().enumerate() {
            let here = at.key("paths").index(i);
            if !pattern.starts_with('/') {
                ok = false;
                self.report(
                    here,
                    Problem::PathNotAbsolute {
                        pattern: pattern.clone(),
                    },
                );
                continue;
            }
            // `*` must stop at '/', or "/repos/org/*" would reach every
            // sub-resource of every repo of the org.
            let glob = |pattern: &str| {
                GlobBuilder::new(pattern)
                    .literal_separator(true)
                    .case_insensitive(ignore_case)
                    .build()
            };
            let normalized = upper_escapes(pattern);
            let read = as_servers_may_read(&normalized);
            match glob(&normalized)
                .and_then(|written| Ok((written, read.as_deref().map(glob).transpose()?)))
            {
                Ok((written, read)) => {
                    as_read.add(read.unwrap_or_else(|| written.clone()));
                    as_written.add(written);
                }
                Err(error) => {
                    ok = false;
                    self.report(
                        here,
                        Problem::PathGlob {
                            pattern: pattern.clone(),
                            reason: error.kind().to_string(),
                        },
                    );
                }
            }
        }
        if !ok {
            return None;
        }
        match as_written
            .build()
            .and_then(|written| Ok((written, as_read.build()?)))
        {
            Ok((written, read)) => Some(Some(PathPatterns::new(written, read))),
            Err(error) => {
                self.report(
                    at.key("paths"),
                    Problem::PathGlob {
                        pattern: paths.join(", "),
                        reason: error.kind().to_string(),
                    },
                );
                None
            }
        }
    }

    fn tcp_entry(&mut self, at: &NodePath, index: usize, entry: &str) -> Option<TcpEntry> {
        match parse_tcp(entry) {
            Ok((target, port)) => Some(TcpEntry {
                label: format!("tcp[{index}] {entry}"),
                target,
                port,
            }),
            Err(reason) => {
                self.report(
                    at.clone(),
                    Problem::Tcp {
                        entry: entry.to_owned(),
                        reason,
                    },
                );
                None
            }
        }
    }

    fn passthrough(&mut self, at: &NodePath, entry: &str) -> Option<PassthroughEntry> {
        let problem = |reason| Problem::Passthrough {
            entry: entry.to_owned(),
            reason,
        };
        let (name, port) = match split_host_port(entry) {
            Ok(split) => split,
            Err(reason) => {
                self.report(at.clone(), problem(reason));
                return None;
            }
        };
        if parse_ip_literal(name).is_some() {
            // SNI carries names only (RFC 6066), so an address never matches.
            self.report(at.clone(), problem("SNI never carries an IP address"));
            return None;
        }
        match HostPattern::parse(name) {
            Ok(host) => Some(PassthroughEntry {
                host,
                port: port.unwrap_or(DEFAULT_PORT),
            }),
            Err(reason) => {
                self.report(at.clone(), problem(reason));
                None
            }
        }
    }
}

fn label(list: &str, index: usize, host: &HostPattern, port: Option<u16>) -> String {
    match port {
        Some(port) if port != DEFAULT_PORT => format!("{list}[{index}] {host}:{port}"),
        _ => format!("{list}[{index}] {host}"),
    }
}

/// `[a-z0-9][a-z0-9_-]{0,62}`: the agent name is also a cgroup directory.
fn is_agent_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    matches!(bytes.first(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

/// `[a-z0-9][a-z0-9_.-]*`, at most 128 characters.
pub(super) fn is_secret_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    matches!(bytes.first(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && bytes.len() <= 128
        && bytes
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'))
}

/// POSIX shell variable names, so `airlock run` can export them.
fn is_env_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    matches!(bytes.first(), Some(b'A'..=b'Z' | b'a'..=b'z' | b'_'))
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

/// `{{ placeholder: NAME }}` (any whitespace) or a plain string. A value
/// that mentions a placeholder in any other form is an error rather than a
/// plain string: the agent would otherwise carry the literal text, and the
/// author would think a credential was wired up.
pub(super) fn parse_env_value(raw: &str) -> Result<EnvValue, ()> {
    let trimmed = raw.trim();
    if let Some(inner) = trimmed
        .strip_prefix("{{")
        .and_then(|rest| rest.strip_suffix("}}"))
    {
        let inner = inner.trim();
        if let Some(rest) = inner.strip_prefix("placeholder") {
            if let Some(name) = rest.trim_start().strip_prefix(':') {
                let name = name.trim();
                if !name.is_empty() && !name.contains(char::is_whitespace) {
                    return Ok(EnvValue::Placeholder {
                        secret: name.to_owned(),
                    });
                }
            }
            return Err(());
        }
    }
    if let Some(open) = raw.find("{{")
        && raw[open + 2..].trim_start().starts_with("placeholder")
    {
        return Err(());
    }
    Ok(EnvValue::Plain(raw.to_owned()))
}

/// `N/unit` with N >= 1 and unit second, minute, hour or day (plural too).
pub(super) fn parse_rate_limit(text: &str) -> Result<RateLimit, &'static str> {
    let (count, unit) = text.split_once('/').ok_or("expected N/unit")?;
    let count = count.trim();
    if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the count must be a whole number");
    }
    let count: u32 = count.parse().map_err(|_| "the count is too large")?;
    if count == 0 {
        return Err("the count must be at least 1");
    }
    let unit = unit.trim().to_ascii_lowercase();
    let seconds = match unit.strip_suffix('s').unwrap_or(&unit) {
        "second" => 1,
        "minute" => 60,
        "hour" => 3_600,
        "day" => 86_400,
        _ => return Err("the unit must be second, minute, hour or day"),
    };
    Ok(RateLimit {
        count,
        per: Duration::from_secs(seconds),
    })
}

/// `host:port`, `a.b.c.d[/len]:port` or `[v6[/len]]:port`.
pub(super) fn parse_tcp(entry: &str) -> Result<(TcpTarget, u16), &'static str> {
    let (target, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or("unclosed '['")?;
        let port = after.strip_prefix(':').ok_or("a port is required")?;
        if !inside.contains(':') {
            return Err("brackets are for IPv6 addresses");
        }
        (inside, port)
    } else {
        let (target, port) = entry.rsplit_once(':').ok_or("a port is required")?;
        if target.contains(':') {
            return Err("write IPv6 addresses in brackets: \"[2001:db8::/32]:22\"");
        }
        (target, port)
    };
    let port = parse_port(port)?;
    if target.contains('/') {
        let net: IpNet = target.parse().map_err(|_| "invalid CIDR")?;
        return Ok((TcpTarget::Net(canonical_net(net.trunc())), port));
    }
    if let Ok(ip) = target.parse::<IpAddr>() {
        return Ok((TcpTarget::Net(IpNet::from(ip.to_canonical())), port));
    }
    if target.contains('*') {
        return Err("a wildcard cannot be resolved; name each host");
    }
    let lower = target.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    check_dns_name(name)?;
    Ok((TcpTarget::Name(name.to_owned()), port))
}

/// Destinations are compared as v4 when v4-mapped, so a v4-mapped CIDR
/// (`::ffff:10.0.0.0/104`) must become the v4 network it stands for.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Some(len) = v6.prefix_len().checked_sub(96)
        && let Ok(v4net) = Ipv4Net::new(v4, len)
    {
        return IpNet::V4(v4net);
    }
    net
}
