//! The validated policy: what `compile.rs` produces and `matcher.rs` reads.
//! Nothing here can be invalid, so matching never has to fail.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::host::HostPattern;
use super::path_patterns::PathPatterns;

/// One agent's compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub agent: String,
    /// The file it came from (for errors, audit and reload).
    pub source: PathBuf,
    /// What `airlock run` puts in the agent's environment, in file order.
    pub env: Vec<(String, EnvValue)>,
    pub(super) rules: Vec<AllowRule>,
    pub(super) deny: Vec<DenyRule>,
    pub(super) tcp: Vec<TcpEntry>,
    pub(super) passthrough: Vec<PassthroughEntry>,
    /// Secret names used by any rule's credentials, sorted and unique.
    pub(super) secrets: Vec<String>,
}

/// An environment value. A placeholder holds only the secret's name: the
/// placeholder string itself comes from the vault, and is all the agent sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    Plain(String),
    Placeholder { secret: String },
}

/// At most `count` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub per: Duration,
}

/// Index of an allow rule in its policy's `rules:` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleId(pub usize);

#[derive(Debug, Clone)]
pub(super) struct AllowRule {
    /// `rules[0] api.github.com`, for audit records and errors; shared
    /// with every request's record.
    pub label: Arc<str>,
    pub host: HostPattern,
    pub port: u16,
    pub methods: Option<Vec<String>>,
    pub paths: Option<PathPatterns>,
    pub credentials: Arc<[String]>,
    pub rate_limit: Option<RateLimit>,
    pub approval: bool,
    /// What the rule covers (host, port, methods, paths), hashed: its rate
    /// limit's bucket, which must follow the rule, not its place in the
    /// list, across a reload that adds or removes rules before it.
    pub limit_key: u64,
}

#[derive(Debug, Clone)]
pub(super) struct DenyRule {
    pub label: Arc<str>,
    pub host: HostPattern,
    /// `None`: every port.
    pub port: Option<u16>,
    pub methods: Option<Vec<String>>,
    pub paths: Option<PathPatterns>,
}

impl DenyRule {
    /// Denies the host outright: no port, method or path narrows it.
    pub(super) fn is_whole_host(&self) -> bool {
        self.port.is_none() && self.methods.is_none() && self.paths.is_none()
    }

    /// Denies every request on `port`: no method or path narrows it.
    pub(super) fn refuses_port(&self, port: u16) -> bool {
        self.port.is_none_or(|own| own == port) && self.methods.is_none() && self.paths.is_none()
    }
}

#[derive(Debug, Clone)]
pub(super) struct TcpEntry {
    /// `tcp[0] github.com:22`.
    pub label: String,
    pub target: TcpTarget,
    pub port: u16,
}

/// A `passthrough:` entry: TLS to these names, on this port, is tunnelled.
#[derive(Debug, Clone)]
pub(super) struct PassthroughEntry {
    pub host: HostPattern,
    /// 443 unless the entry names another: a tunnel is bytes the proxy
    /// never reads, so it goes to no port the policy did not name.
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TcpTarget {
    /// Matched directly against the destination address.
    Net(IpNet),
    /// Matched when the destination is one of the name's addresses.
    Name(String),
}
