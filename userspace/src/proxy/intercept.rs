//! Connections that speak HTTP: decide on the SNI, mint a certificate for
//! it only then, terminate TLS, and serve HTTP/1.1 or HTTP/2 (by ALPN) with
//! every request going through `forward`. Plain HTTP is served the same
//! way without TLS. Hosts listed as `passthrough` are tunnelled untouched.

use std::{sync::Arc, time::Duration};

use hyper::{Request, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpStream;
use tracing::debug;

use super::{
    forward::ConnCtx,
    h1_pool::{H1Pool, Slot},
    h2_pools::H2Pools,
    linger::Lingering,
    orig_dst::Origin,
    peek::ClientHello,
    relay,
};
use crate::{
    approvals::Approvals,
    audit::{Action, Audit, AuditRecord},
    ca::Ca,
    dns::Resolver,
    metrics::Metrics,
    policy::{Passthrough, Policy, PolicyStore},
    ratelimit::RateLimiter,
};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const H2: &[u8] = b"h2";
const H1: &[u8] = b"http/1.1";

/// Everything the HTTP layer shares across connections.
pub struct Intercept {
    pub ca: Arc<Ca>,
    /// Offer h2 first: for agents that speak HTTP/2, so that their
    /// streams stay multiplexed on the way out. One pool per agent.
    pub pools_h2: H2Pools,
    /// HTTP/1.1 only: for agents that speak HTTP/1.1, for upgrades
    /// (WebSocket), which cannot ride an h2 connection, and for token
    /// requests.
    pub pool_h1: Arc<H1Pool>,
    pub credentials: Arc<super::credentials::Credentials>,
    /// Asked, per request, whether any agent's policy binds secrets to
    /// the host: the connection's own policy cannot say.
    pub policies: Arc<PolicyStore>,
    pub limiter: Arc<RateLimiter>,
    pub approvals: Arc<Approvals>,
    pub metrics: Arc<Metrics>,
    pub audit: Audit,
    pub resolver: Arc<Resolver>,
    /// Gates the warnings an agent can cause request after request, or
    /// connection after connection (a placeholder where no rule allows
    /// it, an answer that cannot be scrubbed, a passed-through name that
    /// does not resolve): each is in the audit log; the daemon's log gets
    /// at most one a second for each agent.
    pub warnings: super::AgentLogGates,
}

/// The most an agent connection's read buffer grows to. hyper's default,
/// about 400 KiB, is reached on uploads, which a client sends faster than
/// the upstream takes them: four at once took the daemon's peak RSS from
/// 13 to 17 MiB, and capped, they move as fast (BENCHMARKS.md). It also
/// bounds a request's head: a larger one gets a 431 (nginx refuses past
/// 32 KiB by default).
const AGENT_READ_BUFFER_MAX: usize = 128 * 1024;

/// The server side's HTTP settings: both protocols, upgrades allowed.
fn http_server() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(AGENT_READ_BUFFER_MAX);
    builder.http2().max_concurrent_streams(256);
    builder
}

impl Intercept {
    pub async fn serve_tls(
        self: Arc<Self>,
        stream: TcpStream,
        origin: Origin,
        agent: Arc<str>,
        policy: Arc<Policy>,
        hello: ClientHello,
    ) {
        let host = hello
            .sni
            .clone()
            .unwrap_or_else(|| origin.dst.0.ip().to_string());
        let port = origin.dst.0.port();
        match policy.passthrough(&host, port) {
            Passthrough::Tunnel => {
                self.passthrough(stream, &origin, &agent, &host).await;
                return;
            }
            Passthrough::OtherPortsOnly => {
                if let Some(held_back) = self.warnings.open(&agent) {
                    tracing::warn!(
                        agent = %agent,
                        host,
                        port,
                        held_back,
                        "TLS refused: the host is passed through on other ports only; list \"{host}:{port}\" under passthrough to tunnel this one"
                    );
                }
                self.refuse(&origin, &agent, &host, "passthrough_port_not_listed");
                return;
            }
            Passthrough::Intercept => {}
        }
        let ip_host = host.parse::<std::net::IpAddr>().is_ok();
        if !ip_host && !policy.names_host(&host) {
            // Decide before minting: a host the policy never names, or
            // denies outright, gets no certificate (and no cache entry),
            // only a closed connection. The audit names the deny rule.
            match policy.whole_host_denial(&host) {
                Some(rule) => self.refuse_by(&origin, &agent, &host, "deny_rule", Some(rule)),
                None => self.refuse(&origin, &agent, &host, "no_rule_for_host"),
            }
            return;
        }
        let alpn: Vec<Vec<u8>> = if hello.alpn.iter().any(|p| p == H2) {
            vec![H2.to_vec(), H1.to_vec()]
        } else {
            vec![H1.to_vec()]
        };
        let config = match self.ca.server_config(&host, &alpn) {
            Ok(c) => c,
            Err(err) => {
                if let Some(held_back) = self.warnings.open(&agent) {
                    tracing::error!(host, error = %err, held_back, "cannot mint a certificate");
                }
                self.refuse(&origin, &agent, &host, "certificate_error");
                return;
            }
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(err)) => {
                // Usually the agent does not trust Airlock's CA.
                debug!(host, error = %err, "TLS handshake with agent failed");
                self.refuse(&origin, &agent, &host, "agent_tls_handshake_failed");
                return;
            }
            Err(_) => {
                self.refuse(&origin, &agent, &host, "agent_tls_handshake_timeout");
                return;
            }
        };
        self.metrics.connection(&agent, "intercept");
        let slot = Slot::new(self.pool_h1.clone(), Some(agent.clone()));
        let ctx = Arc::new(ConnCtx::new(agent, origin, Some(host), slot));
        self.serve_http_conn(TokioIo::new(Lingering::new(tls)), ctx)
            .await;
    }

    /// Plain HTTP: each request's Host names the host, and each is judged
    /// by the agent's policy in force when it comes.
    pub async fn serve_plain(self: Arc<Self>, stream: TcpStream, origin: Origin, agent: Arc<str>) {
        self.metrics.connection(&agent, "intercept");
        let slot = Slot::new(self.pool_h1.clone(), Some(agent.clone()));
        let ctx = Arc::new(ConnCtx::new(agent, origin, None, slot));
        self.serve_http_conn(TokioIo::new(Lingering::new(stream)), ctx)
            .await;
    }

    async fn serve_http_conn<I>(self: Arc<Self>, io: I, ctx: Arc<ConnCtx>)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let service = service_fn(move |req: Request<Incoming>| {
            let this = self.clone();
            let ctx = ctx.clone();
            async move { Ok::<_, std::convert::Infallible>(this.handle(ctx, req).await) }
        });
        if let Err(err) = http_server()
            .serve_connection_with_upgrades(io, service)
            .await
        {
            debug!(error = %err, "agent connection ended with an error");
        }
    }

    /// TLS tunnelled uninspected: decided on the SNI alone, no credentials.
    /// The upstream is the SNI host as the daemon resolves it.
    async fn passthrough(&self, stream: TcpStream, origin: &Origin, agent: &Arc<str>, host: &str) {
        let started = std::time::Instant::now();
        let port = origin.dst.0.port();
        let mut record = self.record(origin, agent, host);
        record.rule = Some(match port {
            443 => format!("passthrough {host}").into(),
            _ => format!("passthrough {host}:{port}").into(),
        });
        let targets: Vec<std::net::SocketAddr> = match self.resolver.lookup_ip(host).await {
            Ok(ips) => ips
                .into_iter()
                .map(|ip| std::net::SocketAddr::new(ip, port))
                .collect(),
            Err(err) => {
                // A name that DNS points at this host or the local link
                // lands here too.
                if let Some(held_back) = self.warnings.open(agent) {
                    tracing::warn!(agent = %agent, host, error = %err, held_back, "passthrough host not resolved");
                }
                Vec::new()
            }
        };
        if targets.is_empty() {
            record.action = Some(Action::Error);
            record.reason = Some("resolve_failed".into());
            self.audit.record(record);
            return;
        }
        match relay::connect(&targets).await {
            Ok(upstream) => {
                self.metrics.connection(agent, "passthrough");
                // A reload that stops passing the host through ends the
                // tunnel.
                let revoked = self.policies.revoked(agent, |policy| {
                    policy.passthrough(host, port) == Passthrough::Tunnel
                });
                let spliced = relay::splice(stream, upstream, revoked).await;
                record.bytes_out = spliced.from_agent;
                record.bytes_in = spliced.to_agent;
                if spliced.stopped {
                    tracing::info!(
                        agent = %agent,
                        host,
                        "tunnel closed: the policy no longer passes it through"
                    );
                    record.action = Some(Action::Deny);
                    record.reason = Some("policy_revoked".into());
                } else {
                    record.action = Some(Action::Allow);
                }
            }
            Err(err) => {
                record.action = Some(Action::Error);
                record.reason = Some(format!("upstream_connect: {err}").into());
            }
        }
        record.duration_ms = started.elapsed().as_millis() as u64;
        self.audit.record(record);
    }

    fn record(&self, origin: &Origin, agent: &str, host: &str) -> AuditRecord {
        AuditRecord {
            agent: Some(agent.into()),
            cgroup: origin.cgroup_id,
            pid: origin.pid,
            uid: origin.uid,
            host: host.into(),
            port: origin.dst.0.port(),
            dst: origin.dst.0.to_string().into(),
            proto: "tls",
            ..AuditRecord::default()
        }
    }

    fn refuse(&self, origin: &Origin, agent: &str, host: &str, reason: &'static str) {
        self.refuse_by(origin, agent, host, reason, None);
    }

    fn refuse_by(
        &self,
        origin: &Origin,
        agent: &str,
        host: &str,
        reason: &'static str,
        rule: Option<Arc<str>>,
    ) {
        self.metrics.connection(agent, "deny");
        let mut record = self.record(origin, agent, host);
        record.action = Some(Action::Deny);
        record.reason = Some(reason.into());
        record.rule = rule;
        self.audit.record(record);
    }
}
