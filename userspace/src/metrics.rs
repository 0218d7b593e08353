//! Prometheus metrics (prefix `airlock_`), served as text on metrics_addr.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tracing::warn;

use crate::audit::AuditState;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("registering metric {name}: {source}")]
    Register {
        name: &'static str,
        #[source]
        source: prometheus::Error,
    },
    #[error("cannot listen for metrics on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct Metrics {
    registry: Registry,
    pub connections: IntCounterVec,
    /// Read through [`Metrics::request_counter`], which bounds its hosts.
    requests: IntCounterVec,
    /// The hosts `requests` has a label for, per agent, at most
    /// [`HOST_LABELS_MAX`] each: one agent's hosts do not crowd out
    /// another's.
    host_labels: Mutex<HashMap<String, HashSet<String>>>,
    pub request_duration: Histogram,
    pub credential_injections: IntCounterVec,
    pub policy_reloads: IntCounterVec,
    pub approvals_pending: IntGauge,
    pub bpf_redirects: IntCounter,
    pub dns_queries: IntCounterVec,
    audit: AuditMetrics,
    /// Connections each agent holds open, and the most it may: to alert on
    /// an agent near `max_connections_per_agent`. Read at each scrape.
    live_connections: IntGaugeVec,
    connection_limit: IntGauge,
    /// Processes in each agent's cgroups without a system call filter
    /// (placed there without `airlock run`). Read at each scrape.
    unconfined_processes: IntGaugeVec,
    /// One scrape at a time refreshes and renders. Refreshing clears the
    /// per-agent gauges before it sets them again, and tops counters up
    /// from what they read: two scrapes at once could render an agent's
    /// gauge missing, or add the same difference twice.
    scraping: Mutex<()>,
}

/// Most distinct hosts `requests_total` names for one agent. An agent chooses the host
/// of a request it makes (any Host over plain HTTP, any name under a
/// wildcard rule), and a label once made is kept and rendered at every
/// scrape for as long as the daemon runs: without a bound, one agent
/// could grow the daemon's memory a request at a time. Past it, and for
/// a name no DNS name is as long as, the host is [`OTHER_HOSTS`].
pub const HOST_LABELS_MAX: usize = 1024;
/// The `host` label of requests to hosts past [`HOST_LABELS_MAX`].
pub const OTHER_HOSTS: &str = "(other)";
const HOST_LABEL_LEN_MAX: usize = 253;

/// The audit log's health, mirrored from [`AuditState`] at each scrape:
/// what to alert on, since a log that takes no records refuses requests
/// and a lost record is a gap in the trail.
struct AuditMetrics {
    accepting: IntGauge,
    backlog: IntGauge,
    lost_records: IntCounter,
    sync_failures: IntCounter,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    name: &'static str,
    metric: T,
) -> Result<T, MetricsError> {
    registry
        .register(Box::new(metric.clone()))
        .map_err(|source| MetricsError::Register { name, source })?;
    Ok(metric)
}

impl Metrics {
    /// The `requests_total` counter of `agent`'s requests to `host` that
    /// ended in `decision`; `host` is [`OTHER_HOSTS`] once the agent's
    /// label set is full.
    pub fn request_counter(&self, agent: &str, host: &str, decision: &str) -> IntCounter {
        let host = {
            let mut labels = self
                .host_labels
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Agents are as many as policies: a key each is bounded.
            if !labels.contains_key(agent) {
                labels.insert(agent.to_owned(), HashSet::new());
            }
            match labels.get_mut(agent) {
                Some(seen) => label_for(seen, host),
                None => OTHER_HOSTS,
            }
        };
        self.requests.with_label_values(&[agent, host, decision])
    }
}

/// `host`, if `seen` has or can take a label for it; else [`OTHER_HOSTS`].
fn label_for<'a>(seen: &mut HashSet<String>, host: &'a str) -> &'a str {
    if seen.contains(host) {
        host
    } else if seen.len() < HOST_LABELS_MAX && host.len() <= HOST_LABEL_LEN_MAX {
        seen.insert(host.to_owned());
        host
    } else {
        OTHER_HOSTS
    }
}

impl Metrics {
    pub fn new() -> Result<Arc<Metrics>, MetricsError> {
        let registry = Registry::new_custom(Some("airlock".into()), None).map_err(|source| {
            MetricsError::Register {
                name: "registry",
                source,
            }
        })?;
        let counter_vec = |name: &'static str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
                .map_err(|source| MetricsError::Register { name, source })
        };
        let gauge = |name: &'static str, help: &str| {
            let metric = IntGauge::new(name, help)
                .map_err(|source| MetricsError::Register { name, source })?;
            register(&registry, name, metric)
        };
        let counter = |name: &'static str, help: &str| {
            let metric = IntCounter::new(name, help)
                .map_err(|source| MetricsError::Register { name, source })?;
            register(&registry, name, metric)
        };
        let audit = AuditMetrics {
            accepting: gauge(
                "audit_accepting",
                "1 while the audit log takes records; 0 while requests are refused (503) for want of it",
            )?,
            backlog: gauge("audit_backlog", "Audit records waiting to be written")?,
            lost_records: counter(
                "audit_lost_records_total",
                "Audit records that could not be kept (past the backlog limit, or no room in the journal): gaps in the trail",
            )?,
            sync_failures: counter(
                "audit_sync_failures_total",
                "Failed syncs of the audit log to disk: records written before one may be missing from the disk",
            )?,
        };
        let live_connections = register(
            &registry,
            "live_connections",
            IntGaugeVec::new(
                Opts::new(
                    "live_connections",
                    "Connections each agent holds open through the proxy",
                ),
                &["agent"],
            )
            .map_err(|source| MetricsError::Register {
                name: "live_connections",
                source,
            })?,
        )?;
        let unconfined_processes = register(
            &registry,
            "unconfined_processes",
            IntGaugeVec::new(
                Opts::new(
                    "unconfined_processes",
                    "Processes in each agent's cgroups without a system call filter (placed without `airlock run`): they may open sockets the hooks never see",
                ),
                &["agent"],
            )
            .map_err(|source| MetricsError::Register {
                name: "unconfined_processes",
                source,
            })?,
        )?;
        let connection_limit = gauge(
            "connection_limit_per_agent",
            "Connections one agent may hold open at once (max_connections_per_agent); more are refused",
        )?;
        let m = Metrics {
            live_connections,
            connection_limit,
            unconfined_processes,
            connections: register(
                &registry,
                "connections_total",
                counter_vec(
                    "connections_total",
                    "Captured connections by decision",
                    &["agent", "decision"],
                )?,
            )?,
            requests: register(
                &registry,
                "requests_total",
                counter_vec(
                    "requests_total",
                    "HTTP requests by decision",
                    &["agent", "host", "decision"],
                )?,
            )?,
            request_duration: register(
                &registry,
                "request_duration_seconds",
                Histogram::with_opts(HistogramOpts::new(
                    "request_duration_seconds",
                    "Time from request to response head",
                ))
                .map_err(|source| MetricsError::Register {
                    name: "request_duration_seconds",
                    source,
                })?,
            )?,
            credential_injections: register(
                &registry,
                "credential_injections_total",
                counter_vec(
                    "credential_injections_total",
                    "Placeholders swapped for secrets",
                    &["secret"],
                )?,
            )?,
            policy_reloads: register(
                &registry,
                "policy_reload_total",
                counter_vec(
                    "policy_reload_total",
                    "Policy file loads by result",
                    &["result"],
                )?,
            )?,
            approvals_pending: register(
                &registry,
                "approvals_pending",
                IntGauge::new("approvals_pending", "Requests waiting for a human").map_err(
                    |source| MetricsError::Register {
                        name: "approvals_pending",
                        source,
                    },
                )?,
            )?,
            bpf_redirects: register(
                &registry,
                "bpf_redirects_total",
                IntCounter::new(
                    "bpf_redirects_total",
                    "Connects the kernel redirected to Airlock",
                )
                .map_err(|source| MetricsError::Register {
                    name: "bpf_redirects_total",
                    source,
                })?,
            )?,
            dns_queries: register(
                &registry,
                "dns_queries_total",
                counter_vec(
                    "dns_queries_total",
                    "Agents' DNS queries by outcome",
                    &["agent", "outcome"],
                )?,
            )?,
            audit,
            registry,
            host_labels: Mutex::default(),
            scraping: Mutex::new(()),
        };
        Ok(Arc::new(m))
    }

    pub fn connection(&self, agent: &str, decision: &str) {
        self.connections.with_label_values(&[agent, decision]).inc();
    }

    /// The kernel keeps its own counter; mirror it into the exported one.
    pub fn set_bpf_redirects(&self, total: u64) {
        mirror(&self.bpf_redirects, total);
    }

    /// Mirrors the audit writer's state into the exported metrics.
    pub fn set_audit(&self, state: &AuditState) {
        let audit = &self.audit;
        audit.accepting.set(i64::from(state.accepting));
        audit
            .backlog
            .set(i64::try_from(state.backlog).unwrap_or(i64::MAX));
        mirror(&audit.lost_records, state.lost_records);
        mirror(&audit.sync_failures, state.sync_failures);
    }

    /// Mirrors the proxy's count of open connections per agent; agents
    /// with none drop out of the export.
    pub fn set_live_connections(&self, by_agent: &BTreeMap<String, u64>, limit: u64) {
        self.live_connections.reset();
        for (agent, n) in by_agent {
            self.live_connections
                .with_label_values(&[agent.as_str()])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        self.connection_limit
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
    }

    /// Mirrors how many of each agent's processes have no system call
    /// filter; agents with no process drop out of the export.
    pub fn set_unconfined_processes(&self, by_agent: &BTreeMap<String, u64>) {
        self.unconfined_processes.reset();
        for (agent, n) in by_agent {
            self.unconfined_processes
                .with_label_values(&[agent.as_str()])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    /// What `GET /metrics` answers: the gauges read from elsewhere
    /// refreshed by `refresh`, then everything rendered, as one step.
    pub fn scrape(&self, refresh: &dyn Fn()) -> Vec<u8> {
        let _one_at_a_time = self.scraping.lock().unwrap_or_else(PoisonError::into_inner);
        refresh();
        self.render()
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            warn!(error = %err, "encoding metrics failed");
        }
        out
    }
}

/// Moves an exported counter up to a total kept elsewhere. A counter never
/// goes down, so a total that fell (a counter reset) is not followed.
fn mirror(counter: &IntCounter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Listen { addr, source })
}

/// Serve `GET /metrics`; `before_render` refreshes gauges read from
/// elsewhere (the kernel's counters).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    before_render: Arc<dyn Fn() + Send + Sync>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let refresh = before_render.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                let refresh = refresh.clone();
                async move {
                    let response = if req.uri().path() == "/metrics" {
                        // Refreshing reads the cgroup tree and /proc: off
                        // the threads that carry agents' requests.
                        match tokio::task::spawn_blocking(move || metrics.scrape(&*refresh)).await {
                            Ok(text) => Response::builder()
                                .header("content-type", "text/plain; version=0.0.4")
                                .body(Full::new(Bytes::from(text))),
                            Err(_) => Response::builder()
                                .status(500)
                                .body(Full::new(Bytes::from_static(b"scrape failed\n"))),
                        }
                    } else {
                        Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::from_static(b"see /metrics\n")))
                    };
                    Ok::<_, Infallible>(response.unwrap_or_else(|_| Response::new(Full::default())))
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_names_carry_the_airlock_prefix() {
        let m = Metrics::new().expect("metrics");
        m.connection("pr-bot", "allow");
        m.request_counter("pr-bot", "api.example.test", "deny")
            .inc();
        m.set_bpf_redirects(5);
        m.set_bpf_redirects(3);
        let text = String::from_utf8(m.render()).expect("utf8");
        assert!(
            text.contains("airlock_connections_total{agent=\"pr-bot\",decision=\"allow\"} 1"),
            "{text}"
        );
        assert!(text.contains("airlock_requests_total{agent=\"pr-bot\",decision=\"deny\",host=\"api.example.test\"} 1"), "{text}");
        assert!(text.contains("airlock_bpf_redirects_total 5"), "{text}");
        assert!(text.contains("airlock_approvals_pending 0"), "{text}");
    }

    /// Hosts are the agent's choice: past the bound, they share a label.
    #[test]
    fn requests_to_more_hosts_than_the_bound_share_one_label() {
        let m = Metrics::new().expect("metrics");
        for i in 0..HOST_LABELS_MAX + 50 {
            m.request_counter("pr-bot", &format!("h{i}.example.test"), "deny")
                .inc();
        }
        m.request_counter("pr-bot", &"a".repeat(300), "deny").inc();
        // A host named before the bound was reached keeps its own label,
        // and another agent has labels of its own.
        m.request_counter("pr-bot", "h0.example.test", "allow")
            .inc();
        m.request_counter("web-bot", "h9999.example.test", "deny")
            .inc();
        let text = String::from_utf8(m.render()).expect("utf8");
        let series = text
            .lines()
            .filter(|l| l.starts_with("airlock_requests_total{"))
            .count();
        assert_eq!(
            series,
            HOST_LABELS_MAX + 3,
            "one more for (other), one for the allow, one for web-bot"
        );
        assert!(
            text.contains(&format!(
                "airlock_requests_total{{agent=\"pr-bot\",decision=\"deny\",host=\"{OTHER_HOSTS}\"}} 51"
            )),
            "{}",
            text.lines().filter(|l| l.contains(OTHER_HOSTS)).collect::<Vec<_>>().join("\n")
        );
        assert!(text.contains(
            "airlock_requests_total{agent=\"pr-bot\",decision=\"allow\",host=\"h0.example.test\"} 1"
        ));
    }

    #[test]
    fn scrapes_at_the_same_time_each_see_every_agent_and_counters_match_their_totals() {
        let m = Metrics::new().expect("metrics");
        let live: BTreeMap<String, u64> =
            [("alpha".to_string(), 3), ("beta".to_string(), 1)].into();
        let kernel_total = std::sync::atomic::AtomicU64::new(0);
        let refresh = || {
            m.set_live_connections(&live, 64);
            m.set_bpf_redirects(kernel_total.load(std::sync::atomic::Ordering::Relaxed));
        };
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for round in 0..2_000u64 {
                        kernel_total.fetch_max(round, std::sync::atomic::Ordering::Relaxed);
                        let text = String::from_utf8(m.scrape(&refresh)).expect("utf8");
                        for agent in ["alpha", "beta"] {
                            assert!(
                                text.contains(&format!(
                                    "airlock_live_connections{{agent=\"{agent}\"}}"
                                )),
                                "a scrape lost {agent}'s gauge:\n{text}"
                            );
                        }
                    }
                });
            }
        });
        // Every scrape topped the counter up to the total it read; had two
        // added the same difference, it would stand above the total.
        assert_eq!(m.bpf_redirects.get(), 1_999);
    }

    #[test]
    fn the_audit_log_s_health_is_exported_and_its_counters_never_go_down() {
        let m = Metrics::new().expect("metrics");
        let state = |accepting, lost_records, sync_failures| AuditState {
            accepting,
            backlog: 12,
            write_failing: !accepting,
            sync_failures,
            lost_records,
            ..AuditState::healthy_example()
        };
        m.set_audit(&state(false, 3, 2));
        let text = String::from_utf8(m.render()).expect("utf8");
        for line in [
            "airlock_audit_accepting 0",
            "airlock_audit_backlog 12",
            "airlock_audit_lost_records_total 3",
            "airlock_audit_sync_failures_total 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}: {text}");
        }
        m.set_audit(&state(true, 1, 2));
        let text = String::from_utf8(m.render()).expect("utf8");
        assert!(
            text.lines().any(|l| l == "airlock_audit_accepting 1"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l == "airlock_audit_lost_records_total 3"),
            "{text}"
        );
    }
}
