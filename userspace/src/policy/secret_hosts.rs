//! The hosts that any loaded policy binds secrets to, across agents.
//!
//! An upstream may keep what one agent sent it (a request log) and hand it
//! to another agent whose own policy binds no secret to that host: the
//! answers that second agent gets must be scrubbed too. So whether a host
//! holds secrets is a question about every policy in force, not the
//! requesting agent's alone. And an upstream keeps what it was sent after a
//! reload takes the rule that sent it away: a host once indexed stays so
//! for as long as the daemon runs. The index is built when policies load,
//! so a request pays one lookup (and a walk over the few wildcard and
//! address patterns), and nothing at all when no policy binds a secret.

use std::collections::HashMap;

use super::host::{Host, HostPattern};
use super::model::Policy;

const MEMORY_HEADER: &str = "\
# Hosts that a policy has bound secrets to, kept across restarts: their
# answers stay scrubbed after the rule is gone, since an upstream may keep
# what it was sent. Written by the Airlock daemon. To forget them, stop the
# daemon, delete this file, and start it again.
";

#[derive(Debug, Default)]
pub(super) struct SecretHosts {
    /// Exact names, with every port a rule with credentials names for them.
    names: HashMap<String, Vec<u16>>,
    /// `*.suffix` patterns and addresses, with their ports: few, walked.
    patterns: Vec<(HostPattern, u16)>,
}

impl SecretHosts {
    /// The hosts and ports of every allow rule with credentials in
    /// `policies`.
    pub(super) fn build<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> SecretHosts {
        let mut index = SecretHosts::default();
        let bound = policies
            .into_iter()
            .flat_map(|policy| policy.rules.iter())
            .filter(|rule| !rule.credentials.is_empty());
        for rule in bound {
            match &rule.host {
                HostPattern::Exact(name) => {
                    let ports = index.names.entry(name.clone()).or_default();
                    if !ports.contains(&rule.port) {
                        ports.push(rule.port);
                    }
                }
                pattern => {
                    let entry = (pattern.clone(), rule.port);
                    if !index.patterns.contains(&entry) {
                        index.patterns.push(entry);
                    }
                }
            }
        }
        index
    }

    /// Adds what `earlier` indexed: a reload never takes a host out.
    pub(super) fn keep(mut self, earlier: &SecretHosts) -> SecretHosts {
        for (name, ports) in &earlier.names {
            let kept = self.names.entry(name.clone()).or_default();
            for port in ports {
                if !kept.contains(port) {
                    kept.push(*port);
                }
            }
        }
        for entry in &earlier.patterns {
            if !self.patterns.contains(entry) {
                self.patterns.push(entry.clone());
            }
        }
        self
    }

    /// How many (host, port) pairs it holds.
    pub(super) fn len(&self) -> usize {
        self.names.values().map(Vec::len).sum::<usize>() + self.patterns.len()
    }

    /// The text of the file that keeps the index across restarts: one
    /// "host port" a line, as a policy names the host.
    pub(super) fn to_text(&self) -> String {
        let mut lines: Vec<String> = self
            .names
            .iter()
            .flat_map(|(name, ports)| ports.iter().map(move |port| format!("{name} {port}")))
            .chain(
                self.patterns
                    .iter()
                    .map(|(pattern, port)| format!("{pattern} {port}")),
            )
            .collect();
        lines.sort();
        let mut text = String::from(MEMORY_HEADER);
        for line in lines {
            text.push_str(&line);
            text.push('\n');
        }
        text
    }

    /// Reads what `to_text` wrote; an error names the line.
    pub(super) fn from_text(text: &str) -> Result<SecretHosts, String> {
        let mut index = SecretHosts::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entry = line
                .rsplit_once(' ')
                .ok_or("expected \"host port\"")
                .and_then(|(host, port)| {
                    let port = port.parse::<u16>().map_err(|_| "the port is not 1-65535")?;
                    Ok((HostPattern::parse(host.trim())?, port))
                });
            match entry {
                Ok((HostPattern::Exact(name), port)) => {
                    let ports = index.names.entry(name).or_default();
                    if !ports.contains(&port) {
                        ports.push(port);
                    }
                }
                Ok(entry) => {
                    if !index.patterns.contains(&entry) {
                        index.patterns.push(entry);
                    }
                }
                Err(why) => return Err(format!("line {}: {why}: {line:?}", n + 1)),
            }
        }
        Ok(index)
    }

    fn is_empty(&self) -> bool {
        self.names.is_empty() && self.patterns.is_empty()
    }

    /// Whether a rule with credentials, in any policy indexed, matches
    /// `host` on `port`. `host` is as the proxy saw it (SNI or Host); one
    /// that is no valid name or address matches no rule, here as in the
    /// matcher, which denies requests to it before they get this far.
    pub(super) fn holds(&self, host: &str, port: u16) -> bool {
        if self.is_empty() {
            return false;
        }
        let Some(host) = Host::parse(host) else {
            return false;
        };
        if let Host::Name(name) = &host
            && self
                .names
                .get(name.as_ref())
                .is_some_and(|ports| ports.contains(&port))
        {
            return true;
        }
        self.patterns
            .iter()
            .any(|(pattern, p)| *p == port && pattern.matches(&host))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::SecretHosts;
    use crate::policy::{Policy, parse_policy};

    fn policy(text: &str) -> Policy {
        match parse_policy(Path::new("test.yaml"), text) {
            Ok(policy) => policy,
            Err(errors) => panic!("policy should parse:\n{errors}"),
        }
    }

    #[test]
    fn a_host_bound_in_one_policy_holds_secrets_for_every_agent() {
        let bound = policy(
            "agent: a\nrules:\n  - host: api.example.com\n    credentials: [{secret: key}]\n  - host: \"*.corp.example\"\n    port: 8443\n    credentials: [{secret: key}]\n  - host: \"[2001:db8::1]\"\n    credentials: [{secret: key}]\n  - host: docs.example.org\n",
        );
        let unbound = policy(
            "agent: b\nrules:\n  - host: api.example.com\n  - host: git.corp.example:8443\n  - host: www.example.net\n",
        );
        let index = SecretHosts::build([&bound, &unbound]);
        assert!(index.holds("api.example.com", 443));
        assert!(index.holds("API.Example.com.", 443));
        assert!(index.holds("git.corp.example", 8443));
        assert!(index.holds("2001:db8::1", 443));
        // The port is part of what a rule names.
        assert!(!index.holds("api.example.com", 8443));
        assert!(!index.holds("git.corp.example", 443));
        // A wildcard never matches its own suffix.
        assert!(!index.holds("corp.example", 8443));
        // Rules without credentials, in either policy, bind nothing.
        assert!(!index.holds("docs.example.org", 443));
        assert!(!index.holds("www.example.net", 443));
        assert!(!index.holds("not a host", 443));
    }

    #[test]
    fn a_host_indexed_before_is_kept_by_the_next_index() {
        let before = SecretHosts::build([&policy(
            "agent: a\nrules:\n  - host: api.example.com\n    credentials: [{secret: key}]\n  - host: \"*.corp.example\"\n    credentials: [{secret: key}]\n",
        )]);
        let now = SecretHosts::build([&policy(
            "agent: a\nrules:\n  - host: api.example.com\n    port: 8443\n    credentials: [{secret: key}]\n  - host: api.example.com\n",
        )])
        .keep(&before);
        assert!(now.holds("api.example.com", 443));
        assert!(now.holds("api.example.com", 8443));
        assert!(now.holds("git.corp.example", 443));
        assert!(!now.holds("git.corp.example", 8443));
        assert!(!now.holds("www.example.org", 443));
    }

    #[test]
    fn the_index_reads_back_what_it_wrote() {
        let index = SecretHosts::build([&policy(
            "agent: a\nrules:\n  - host: api.example.com\n    credentials: [{secret: key}]\n  - host: api.example.com:8443\n    credentials: [{secret: key}]\n  - host: \"*.corp.example\"\n    credentials: [{secret: key}]\n  - host: \"[2001:db8::1]\"\n    credentials: [{secret: key}]\n  - host: 192.0.2.7:9000\n    credentials: [{secret: key}]\n",
        )]);
        let text = index.to_text();
        let back = SecretHosts::from_text(&text).expect("reads back");
        assert_eq!(back.len(), 5);
        assert_eq!(back.to_text(), text);
        for (host, port) in [
            ("api.example.com", 443),
            ("api.example.com", 8443),
            ("git.corp.example", 443),
            ("2001:db8::1", 443),
            ("192.0.2.7", 9000),
        ] {
            assert!(back.holds(host, port), "{host} {port}");
        }
        assert!(!back.holds("api.example.com", 80));
    }

    #[test]
    fn a_damaged_memory_names_its_line() {
        for (text, want) in [
            ("# header\napi.example.com 443\napi.example.com\n", "line 3"),
            ("api.example.com 70000\n", "line 1: the port"),
            ("bad*host.example 443\n", "line 1: '*'"),
        ] {
            let err = SecretHosts::from_text(text).expect_err(text);
            assert!(err.starts_with(want), "{err}");
        }
    }

    #[test]
    fn policies_without_credentials_index_nothing() {
        let plain = policy("agent: a\nrules:\n  - host: api.example.com\n");
        let index = SecretHosts::build([&plain]);
        assert!(index.is_empty());
        assert!(!index.holds("api.example.com", 443));
        assert!(SecretHosts::build([]).is_empty());
    }
}
