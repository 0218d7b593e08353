//! Airlock's resolver for agents.
//!
//! The kernel side sends every UDP datagram an agent addresses to port 53
//! here, and the proxy hands over DNS-over-TCP connections. DNS is an
//! exfiltration channel (data can ride in the query name), so a name the
//! agent's policy does not name is answered NXDOMAIN locally and never
//! reaches an upstream server. Allowed names are answered from the static
//! `resolve:` map or forwarded as a freshly built query, so nothing the agent
//! put in other sections of its packet travels further.

mod answer;
mod lookup;
mod name;
mod rebinding;
mod resolv_conf;
mod server;
mod told;
mod upstream;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::error::ProtoError;
use hickory_proto::op::ResponseCode;
use tokio::sync::Semaphore;

pub use rebinding::DnsReach;
pub use resolv_conf::upstreams_from_resolv_conf;

/// Queries handled at once on the UDP socket; past this, datagrams are
/// dropped (the client retries) rather than queued without bound behind a
/// slow upstream.
const UDP_MAX_IN_FLIGHT: usize = 256;

/// What the daemon needs to know from the rest of Airlock.
pub trait DnsPolicy: Send + Sync + 'static {
    /// Which agent sent a UDP query from `peer` (the kernel knows; None = unknown -> REFUSED).
    fn agent_for_udp_peer(&self, peer: SocketAddr) -> Option<String>;
    /// May `agent` resolve `name` (lower-case, no trailing dot)?
    fn name_allowed(&self, agent: &str, name: &str) -> bool;
    /// A static mapping (config `resolve:` host -> IPs), answered locally with TTL 60 instead of forwarding.
    fn static_answer(&self, name: &str) -> Option<Vec<IpAddr>>;
    /// Called for every decision, for audit/metrics.
    fn record(&self, event: DnsEvent);
}

/// One decision about one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsEvent {
    pub agent: Option<String>,
    pub peer: SocketAddr,
    /// Lower-case, no trailing dot; names with unusual bytes are shown escaped.
    pub name: String,
    pub qtype: String,
    pub outcome: DnsOutcome,
    /// A/AAAA addresses given to the agent (static or from upstream), so that
    /// `tcp:` rules naming a host can match the addresses the agent was told.
    pub addrs: Vec<IpAddr>,
    /// Smallest TTL among `addrs`, in seconds (0 when `addrs` is empty).
    pub ttl: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DnsOutcome {
    /// Forwarded and the upstream reply returned, or answered NODATA locally
    /// for an allowed name whose query type is not forwarded.
    Answered,
    /// Answered from the static `resolve:` map.
    Static,
    /// The policy does not name it (or the name is unusable).
    NxDomain,
    /// Unknown agent, or a class other than IN.
    Refused,
    /// Every upstream failed; the agent got SERVFAIL.
    UpstreamFailed,
}

impl DnsOutcome {
    /// A bounded label for metrics and audit.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Static => "static",
            Self::NxDomain => "nxdomain",
            Self::Refused => "refused",
            Self::UpstreamFailed => "upstream_failed",
        }
    }
}

impl fmt::Display for DnsOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot read {}: {source}", path.display())]
    ReadResolvConf {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: invalid nameserver address {value:?}", path.display())]
    BadNameserver {
        path: PathBuf,
        line: usize,
        value: String,
    },
    #[error("{}: no usable nameserver lines", path.display())]
    NoNameservers { path: PathBuf },
    #[error("invalid DNS name {name:?}")]
    InvalidName { name: String },
    #[error("no upstream DNS servers configured")]
    NoUpstreams,
    #[error("cannot encode DNS query for {name}: {source}")]
    Encode { name: String, source: ProtoError },
    #[error("upstream {server} did not answer {name} in time")]
    UpstreamTimeout { server: SocketAddr, name: String },
    #[error("upstream {server} for {name}: {source}")]
    UpstreamIo {
        server: SocketAddr,
        name: String,
        source: std::io::Error,
    },
    #[error("upstream {server} sent an unreadable reply for {name}: {source}")]
    UpstreamMalformed {
        server: SocketAddr,
        name: String,
        source: ProtoError,
    },
    #[error("upstream {server} replied to {name} with a different ID or question")]
    UpstreamMismatch { server: SocketAddr, name: String },
    #[error("upstream {server} answered {name} with {rcode}")]
    UpstreamRcode {
        server: SocketAddr,
        name: String,
        rcode: ResponseCode,
    },
    #[error("{name} has no A or AAAA records")]
    NoAddresses { name: String },
    #[error(
        "{name} resolves only to {addrs}, which Airlock does not connect to for a name from DNS (this host, the local link, a cloud metadata service, or a private network under private_upstreams_from_dns: false); if the name is meant to reach it, map it under resolve: in the config"
    )]
    OffLimits { name: String, addrs: String },
}

/// The resolver: one per daemon, shared by the UDP server, the TCP
/// connections the proxy hands over, and the proxy's own upstream lookups.
pub struct Resolver {
    policy: Arc<dyn DnsPolicy>,
    upstream: upstream::Upstreams,
    cache: lookup::LookupCache,
    told: told::Told,
    reach: DnsReach,
    udp_slots: Arc<Semaphore>,
}

impl Resolver {
    /// `timeout` bounds each try against one upstream server.
    /// `reach`: which networks a name from DNS may lead the daemon to.
    pub fn new(
        policy: Arc<dyn DnsPolicy>,
        upstreams: Vec<SocketAddr>,
        timeout: Duration,
        reach: DnsReach,
    ) -> Arc<Self> {
        Arc::new(Self {
            policy,
            upstream: upstream::Upstreams::new(upstreams, timeout),
            cache: lookup::LookupCache::default(),
            told: told::Told::default(),
            reach,
            udp_slots: Arc::new(Semaphore::new(UDP_MAX_IN_FLIGHT)),
        })
    }
}

impl Resolver {
    /// The addresses this resolver answered `agent` for `name` (lower
    /// case, no trailing dot) from upstream DNS, while their TTL lasts:
    /// what a `tcp:` entry naming the host matches besides the daemon's
    /// own lookup.
    pub fn told(&self, agent: &str, name: &str) -> Vec<IpAddr> {
        self.told.addresses(agent, name, std::time::Instant::now())
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("upstreams", &self.upstream.servers())
            .field("timeout", &self.upstream.timeout())
            .finish_non_exhaustive()
    }
}
