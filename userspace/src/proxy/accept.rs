//! Accept loop and the connection-level decision.

use std::{
    cell::RefCell,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument as _, debug, info, info_span, warn};

use super::{
    log_gate::LogGate,
    orig_dst::{ClientAddr, Origin},
    peek::{self, FirstBytes},
    relay,
};
use crate::{
    audit::{Action, Audit, AuditRecord},
    cgroup::AgentIndex,
    dns::Resolver,
    ebpf::ConnTable,
    metrics::Metrics,
    policy::{Policy, PolicyStore, TcpMatch},
};

/// Everything a captured connection needs, shared by all of them.
pub struct Proxy {
    pub conns: Arc<dyn ConnTable>,
    pub agents: Arc<AgentIndex>,
    pub policies: Arc<PolicyStore>,
    pub audit: Audit,
    pub resolver: Arc<Resolver>,
    pub metrics: Arc<Metrics>,
    /// Airlock's own loopback ports: an agent may not reach them through
    /// the proxy (the proxy and resolver it reaches anyway, by redirect).
    pub own_ports: Vec<u16>,
    pub intercept: Arc<super::Intercept>,
    pub live: Arc<super::LiveConns>,
    /// Gates the warning for connections over an agent's limit.
    pub over_limit: super::AgentLogGates,
}

pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>) {
    // Out of descriptors, accept fails at once for as long as it lasts.
    let gate = LogGate::every(Duration::from_secs(1));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let proxy = proxy.clone();
                tokio::spawn(async move { proxy.handle(stream, ClientAddr(peer)).await });
            }
            Err(err) => {
                if let Some(held_back) = gate.open() {
                    if matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                        warn!(error = %err, held_back, "accept failed: out of open files; agents' connections wait until some close (raise LimitNOFILE= in the unit)");
                    } else {
                        warn!(error = %err, held_back, "accept failed");
                    }
                }
                // Back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Why a connection was refused before any protocol was spoken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    NoKernelRecord,
    UnknownCgroup,
    NoPolicy,
    AirlockPort,
    NoRule,
    AuditUnavailable,
    TooManyConnections,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::NoKernelRecord => "no_kernel_record",
            Refusal::UnknownCgroup => "unknown_cgroup",
            Refusal::NoPolicy => "no_policy",
            Refusal::AirlockPort => "airlock_port",
            Refusal::NoRule => "no_rule",
            Refusal::AuditUnavailable => "audit_unavailable",
            Refusal::TooManyConnections => "too_many_connections",
        }
    }
}

impl Proxy {
    async fn handle(self: Arc<Self>, stream: TcpStream, client: ClientAddr) {
        let started = Instant::now();
        let Some(record) = self.conns.take_tcp(client.0) else {
            // Not a connection the kernel redirected (or its record is
            // stale): whoever it is, it gets nothing.
            self.refuse(None, None, client, Refusal::NoKernelRecord);
            return;
        };
        let origin = Origin::from(&record);
        let Some(agent) = self.agents.agent(origin.cgroup_id) else {
            self.refuse(Some(&origin), None, client, Refusal::UnknownCgroup);
            return;
        };
        let span = info_span!("conn", agent = %agent, client = %client.0, orig_dst = %origin.dst.0);
        async move {
            let Some(policy) = self.policies.get(&agent) else {
                self.refuse(Some(&origin), Some(&agent), client, Refusal::NoPolicy);
                return;
            };
            if self.is_own_port(origin.dst.0) {
                self.refuse(Some(&origin), Some(&agent), client, Refusal::AirlockPort);
                return;
            }
            if !self.audit.accepting() {
                self.refuse(
                    Some(&origin),
                    Some(&agent),
                    client,
                    Refusal::AuditUnavailable,
                );
                return;
            }
            let Some(_live) = self.live.enter(agent.clone()) else {
                self.refuse_over_limit(&origin, &agent, client);
                return;
            };
            if origin.dst.0.port() == 53 {
                self.metrics.connection(&agent, "dns");
                let _ = self
                    .resolver
                    .clone()
                    .serve_tcp_conn(stream, Some(agent.to_string()), client.0)
                    .await;
                return;
            }
            if let Some(matched) = self.tcp_rule(&agent, &policy, origin.dst.0).await {
                self.relay(stream, &origin, &agent, matched, started).await;
                return;
            }
            let _ = stream.set_nodelay(true);
            match peek::classify(&stream).await {
                FirstBytes::Tls(hello) => {
                    self.intercept
                        .clone()
                        .serve_tls(stream, origin, agent, policy, hello)
                        .await;
                }
                FirstBytes::Http => {
                    self.intercept
                        .clone()
                        .serve_plain(stream, origin, agent)
                        .await;
                }
                FirstBytes::Other | FirstBytes::Silent => {
                    self.refuse(Some(&origin), Some(&agent), client, Refusal::NoRule);
                }
            }
        }
        .instrument(span)
        .await
    }

    fn is_own_port(&self, dst: SocketAddr) -> bool {
        let local = match dst.ip() {
            IpAddr::V4(v4) => v4.is_loopback() || v4.is_unspecified(),
            IpAddr::V6(v6) => v6.is_loopback() || v6.is_unspecified(),
        };
        local && self.own_ports.contains(&dst.port())
    }

    /// A `tcp:` rule matching the original destination: CIDR entries match
    /// directly; host entries match an address Airlock's resolver told
    /// this agent for the name (within its TTL), or one the daemon
    /// resolves the name to. What the agent resolved some other way is not
    /// trusted.
    async fn tcp_rule(&self, agent: &str, policy: &Policy, dst: SocketAddr) -> Option<TcpMatch> {
        let asked: RefCell<Vec<String>> = RefCell::new(Vec::new());
        let first = policy.tcp_match(dst.ip(), dst.port(), &|host| {
            asked.borrow_mut().push(host.to_string());
            self.resolver.told(agent, host)
        });
        if first.is_some() {
            return first;
        }
        let hosts = asked.into_inner();
        if hosts.is_empty() {
            return None;
        }
        let mut resolved = std::collections::HashMap::new();
        for host in hosts {
            let ips = match self.resolver.lookup_ip(&host).await {
                Ok(ips) => ips,
                Err(err) => {
                    // Among them: a name that DNS points at this host or
                    // the local link, which matches no connection.
                    debug!(host, error = %err, "tcp rule host not resolved");
                    Vec::new()
                }
            };
            resolved.insert(host, ips);
        }
        policy.tcp_match(dst.ip(), dst.port(), &|host| {
            resolved.get(host).cloned().unwrap_or_default()
        })
    }

    async fn relay(
        &self,
        stream: TcpStream,
        origin: &Origin,
        agent: &str,
        matched: TcpMatch,
        started: Instant,
    ) {
        let _ = stream.set_nodelay(true);
        let mut record = self.base_record(Some(origin), Some(agent));
        record.rule = Some(matched.label.as_str().into());
        match relay::connect(&[origin.dst.0]).await {
            Ok(upstream) => {
                self.metrics.connection(agent, "allow");
                debug!("relaying raw TCP");
                // A reload that drops the entry ends the tunnel.
                let revoked = self
                    .policies
                    .revoked(agent, |policy| policy.keeps_tcp(&matched));
                let spliced = relay::splice(stream, upstream, revoked).await;
                record.bytes_out = spliced.from_agent;
                record.bytes_in = spliced.to_agent;
                if spliced.stopped {
                    info!(rule = %matched.label, "tunnel closed: the policy no longer allows it");
                    record.action = Some(Action::Deny);
                    record.reason = Some("policy_revoked".into());
                } else {
                    record.action = Some(Action::Allow);
                }
            }
            Err(err) => {
                self.metrics.connection(agent, "error");
                record.action = Some(Action::Error);
                record.reason = Some(format!("upstream_connect: {err}").into());
            }
        }
        record.duration_ms = started.elapsed().as_millis() as u64;
        self.audit.record(record);
    }

    fn base_record(&self, origin: Option<&Origin>, agent: Option<&str>) -> AuditRecord {
        let mut record = AuditRecord {
            agent: agent.map(Arc::from),
            proto: "tcp",
            ..AuditRecord::default()
        };
        if let Some(o) = origin {
            record.cgroup = o.cgroup_id;
            record.pid = o.pid;
            record.uid = o.uid;
            record.host = o.dst.0.ip().to_string().into();
            record.port = o.dst.0.port();
            record.dst = o.dst.0.to_string().into();
        }
        record
    }

    /// An agent at `max_connections_per_agent`: each connection past it
    /// is refused and recorded; the warning comes once a second for each
    /// agent, since an agent that loops on connect would otherwise fill
    /// the daemon's log.
    fn refuse_over_limit(&self, origin: &Origin, agent: &Arc<str>, client: ClientAddr) {
        if let Some(held_back) = self.over_limit.open(agent) {
            warn!(
                limit = self.live.limit(),
                held_back,
                "agent holds as many connections as max_connections_per_agent allows; refusing more until some close"
            );
        }
        self.refuse(
            Some(origin),
            Some(agent),
            client,
            Refusal::TooManyConnections,
        );
    }

    fn refuse(
        &self,
        origin: Option<&Origin>,
        agent: Option<&str>,
        client: ClientAddr,
        why: Refusal,
    ) {
        self.metrics.connection(agent.unwrap_or("-"), "deny");
        let mut record = self.base_record(origin, agent);
        record.action = Some(Action::Deny);
        record.reason = Some(why.reason().into());
        if origin.is_none() {
            record.dst = format!("client {}", client.0).into();
        }
        debug!(reason = why.reason(), "connection refused");
        self.audit.record(record);
        // Dropping the stream closes it: a refused connection learns
        // nothing but the close.
    }
}
