//! `airlock daemon`: put the kernel side in place, then serve the proxy,
//! the resolver, the admin socket and the metrics until told to stop.

mod admin;
mod confinement;
mod dns_view;
mod notify;
mod open_files;
mod status;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use agent_common::{Settings, Stat};
use anyhow::Context as _;
use tracing::{error, info, warn};

pub use admin::{AdminError, AdminRequest, request as admin_request};

use crate::{
    approvals::Approvals,
    audit::Audit,
    ca::Ca,
    cgroup::{AgentIndex, CgroupTree},
    config::Config,
    dns::{DnsReach, Resolver, upstreams_from_resolv_conf},
    ebpf::{ConnTable, Kernel},
    metrics::{self, Metrics},
    policy::PolicyStore,
    proxy::{self, Proxy, listener},
    proxy::{AgentLogGates, Credentials, Intercept, LiveConns},
    ratelimit::RateLimiter,
    upstream_tls,
    vault::Vault,
};

const DNS_TIMEOUT: Duration = Duration::from_secs(3);

/// Refuse to run inside the managed tree: the daemon's own connects would
/// be redirected to itself.
fn ensure_outside(tree: &CgroupTree) -> anyhow::Result<()> {
    let text = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let own = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| tree.mount.join(p.trim_start_matches('/')));
    if let Some(own) = own
        && own.starts_with(&tree.root)
    {
        anyhow::bail!(
            "the daemon runs inside the managed cgroup {} ({}); start it outside, e.g. from systemd or a root shell",
            tree.root.display(),
            own.display()
        );
    }
    Ok(())
}

/// How the async runtime runs, for the start-up line: operators pinning
/// the daemon to CPUs can see what they got.
fn runtime_shape() -> String {
    let handle = tokio::runtime::Handle::current();
    match handle.runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => "single-threaded".to_owned(),
        _ => format!("{} worker threads", handle.metrics().num_workers()),
    }
}

/// The managed cgroup, found and made. The daemon does this before it
/// drops the capabilities it needs only at start: at the top of the cgroup
/// v2 mount, which is read-only (0555) to all but `CAP_DAC_OVERRIDE`.
pub fn prepare_cgroup(config: &Config) -> anyhow::Result<CgroupTree> {
    let tree = CgroupTree::discover(&config.cgroup_root)?;
    ensure_outside(&tree)?;
    tree.ensure_root()?;
    Ok(tree)
}

/// The soft limit on open files raised to the hard one: each agent
/// connection holds two. The limit now, if it could be read.
fn raise_open_files() -> Option<u64> {
    match open_files::raise() {
        Ok(files) => {
            if files.before < files.now {
                info!(
                    from = files.before,
                    to = files.now,
                    "raised the soft limit on open files to the hard limit"
                );
            }
            if files.is_low() {
                warn!(
                    open_files = files.now,
                    "the limit on open files lets the proxy hold only about {} agent connections at once; raise the hard limit (LimitNOFILE= in the unit, or `ulimit -Hn` before starting)",
                    files.connections()
                );
            }
            Some(files.now)
        }
        Err(err) => {
            warn!(error = %err, "cannot raise the limit on open files; the proxy holds as many agent connections as the limit it was started with allows");
            None
        }
    }
}

/// The resolver the daemon and agents' DNS share: upstream servers from
/// the config, or else from /etc/resolv.conf.
fn resolver(config: &Config, view: dns_view::DnsView) -> Arc<Resolver> {
    let upstreams = if config.dns_upstream.is_empty() {
        upstreams_from_resolv_conf(std::path::Path::new("/etc/resolv.conf")).unwrap_or_else(|err| {
            warn!(error = %err, "no DNS upstreams; agents' allowed names will fail to resolve (set dns_upstream)");
            Vec::new()
        })
    } else {
        config.dns_upstream.clone()
    };
    let reach = if config.private_upstreams_from_dns {
        DnsReach::WithPrivate
    } else {
        DnsReach::PublicOnly
    };
    Resolver::new(Arc::new(view), upstreams, DNS_TIMEOUT, reach)
}

/// What a stop does before the process ends: the hooks closed, so that
/// agents are refused rather than sent to a port nothing listens on, and
/// the audit log written out.
fn stop_serving(
    kernel: &Kernel,
    guard: tokio::task::JoinHandle<()>,
    audit: &Audit,
    config: &Config,
) {
    // No attaching again after this: the loader would open the hooks that
    // the close below shuts.
    guard.abort();
    match kernel.close() {
        Ok(()) => info!(
            "stopping; agents' connections are refused until the daemon is back (the pinned programs stay attached)"
        ),
        Err(err) => error!(
            error = %err,
            "stopping; cannot close the hooks, so agents' connections go on to the proxy's ports, where nothing listens"
        ),
    }
    if !audit.flush(AUDIT_FLUSH_AT_STOP) {
        error!(
            path = %config.audit_log.display(),
            journal = %config.audit_journal().display(),
            "audit log not fully written at stop: the records still queued wait in the journal, and the next start writes them first"
        );
    }
}

/// The service, until a stop signal: limits raised, listeners bound
/// before the hooks send agents to them, the state the proxy needs loaded,
/// then the proxy, DNS, metrics and admin socket served.
pub async fn run(config: Config, config_path: PathBuf, tree: CgroupTree) -> anyhow::Result<()> {
    let stop = StopSignals::catch();
    let open_files = raise_open_files();

    // Listen before the hooks point agents at us, so that the first
    // redirected connect finds a listener.
    let proxy_listeners = listener::tcp_pair(config.proxy_port)?;
    let dns_sockets = listener::udp_pair(config.dns_port).await?;
    let metrics_listener = metrics::bind(config.metrics_addr).await?;
    let admin_listener = admin::bind(&config.admin_socket)?;

    let kernel = Kernel::open(
        &tree.root,
        &config.bpf_pin_dir,
        Settings {
            proxy_port: config.proxy_port,
            dns_port: config.dns_port,
            _pad: 0,
            netns_cookie: crate::ebpf::netns_cookie(&proxy_listeners[0])
                .context("reading the network namespace of the proxy's listener")?,
        },
    )?;
    let conns: Arc<dyn ConnTable> = kernel.conns.clone();
    let kernel = Arc::new(kernel);
    let guard = tokio::spawn(crate::ebpf::guard_hooks(kernel.clone()));

    // State the proxy needs before the first agent request: the CA (and
    // the trust bundle agents are pointed at) and the vault's master key.
    let ca = Arc::new(
        Ca::load_or_create(&config.state_dir)?.with_session_resumption(config.agent_tls_resumption),
    );
    ca.write_trust_bundle()?;
    let ca_path = ca.cert_path().to_path_buf();
    let vault = Vault::open(&config.state_dir)?;
    let upstream_tls =
        upstream_tls::client_config(&config.upstream_ca, &[b"h2".to_vec(), b"http/1.1".to_vec()])?;
    let upstream_tls_h1 =
        upstream_tls::client_config(&config.upstream_ca, &[b"http/1.1".to_vec()])?;

    let audit = Audit::start(
        &config.audit_log,
        &config.audit_journal(),
        config.audit_min_free(),
    )?;
    let audit_at_stop = audit.clone();
    let metrics = Metrics::new()?;
    let agents = Arc::new(AgentIndex::new(tree.clone()));
    let policies = PolicyStore::load_remembering(
        &config.policy_dir,
        Some(config.state_dir.join("secret-hosts")),
        metrics.clone(),
    );
    policies.clone().watch();

    let resolver = resolver(
        &config,
        dns_view::DnsView {
            conns: conns.clone(),
            agents: agents.clone(),
            policies: policies.clone(),
            resolve: config.resolve.clone(),
            audit: audit.clone(),
            metrics: metrics.clone(),
        },
    );

    let approvals = Approvals::new(
        Duration::from_secs(config.approval_timeout_secs),
        config.approval_webhook.clone(),
    )?;
    let credentials = Arc::new(Credentials::new(vault));
    let intercept = Arc::new(Intercept {
        ca,
        pools_h2: proxy::H2Pools::new(resolver.clone(), upstream_tls),
        pool_h1: proxy::H1Pool::new(proxy::UpstreamConnector::new(
            resolver.clone(),
            upstream_tls_h1,
        )),
        credentials: credentials.clone(),
        policies: policies.clone(),
        limiter: Arc::new(RateLimiter::new()),
        approvals: approvals.clone(),
        metrics: metrics.clone(),
        audit: audit.clone(),
        resolver: resolver.clone(),
        warnings: AgentLogGates::every(Duration::from_secs(1)),
    });
    let live = Arc::new(LiveConns::new(config.max_connections_per_agent));
    let proxy = Arc::new(Proxy {
        intercept,
        live: live.clone(),
        over_limit: AgentLogGates::every(Duration::from_secs(1)),
        conns,
        agents: agents.clone(),
        policies: policies.clone(),
        audit: audit.clone(),
        resolver: resolver.clone(),
        metrics: metrics.clone(),
        own_ports: vec![
            config.proxy_port,
            config.dns_port,
            config.metrics_addr.port(),
        ],
    });
    for l in proxy_listeners {
        tokio::spawn(proxy::serve(l, proxy.clone()));
    }
    for s in dns_sockets {
        let resolver = resolver.clone();
        tokio::spawn(async move {
            if let Err(err) = resolver.serve_udp(s).await {
                error!(error = %err, "DNS listener stopped");
            }
        });
    }
    let refresh_kernel = kernel.clone();
    let refresh_metrics = metrics.clone();
    let refresh_audit = audit.clone();
    let refresh_live = live.clone();
    let refresh_agents = agents.clone();
    tokio::spawn(metrics::serve(
        metrics_listener,
        metrics.clone(),
        Arc::new(move || {
            refresh_metrics.set_bpf_redirects(refresh_kernel.stats.get(Stat::TcpRedirected));
            refresh_metrics.set_audit(&refresh_audit.state());
            refresh_metrics.set_live_connections(&refresh_live.snapshot(), refresh_live.limit());
            refresh_metrics.set_unconfined_processes(&confinement::unconfined_by_agent(
                &refresh_agents.processes(),
            ));
        }),
    ));
    let status = Arc::new(status::StatusSource {
        started: std::time::Instant::now(),
        config: config.clone(),
        config_path,
        kernel: kernel.clone(),
        agents,
        policies,
        audit,
        approvals,
        live,
        credentials,
        listening: Listening {
            proxy: vec![
                SocketAddr::from(([127, 0, 0, 1], config.proxy_port)),
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, config.proxy_port)),
            ],
            dns: vec![
                SocketAddr::from(([127, 0, 0, 1], config.dns_port)),
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, config.dns_port)),
            ],
            metrics: config.metrics_addr,
        },
    });
    tokio::spawn(admin::serve(admin_listener, status));

    // Start-up code runs once: from here on, what the daemon keeps of its
    // binary is what serving runs.
    match crate::memory_lock::release_code() {
        Ok(released) => tracing::debug!(
            mappings = released.mappings,
            bytes = released.bytes,
            "binary's code and read-only data unlocked and unmapped until used"
        ),
        Err(err) => {
            warn!(error = %err, "cannot release the binary's start-up pages; they stay resident")
        }
    }
    info!(
        proxy_port = config.proxy_port,
        dns_port = config.dns_port,
        cgroup = %tree.root.display(),
        ca = %ca_path.display(),
        runtime = %runtime_shape(),
        open_files = %open_files.map_or_else(|| "unknown".to_owned(), |n| n.to_string()),
        memory = if config.lock_memory { "locked" } else { "swappable (lock_memory: false)" },
        "airlock daemon ready"
    );
    notify::ready();
    stop.wait().await;
    stop_serving(&kernel, guard, &audit_at_stop, &config);
    Ok(())
}

/// How long a stopping daemon waits for the audit log to be written.
const AUDIT_FLUSH_AT_STOP: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, serde::Serialize)]
pub struct Listening {
    pub proxy: Vec<SocketAddr>,
    pub dns: Vec<SocketAddr>,
    pub metrics: SocketAddr,
}

/// SIGTERM (`systemctl stop`) and SIGINT, caught from the start of
/// `run`: once `status` answers or systemd hears "ready", a stop takes
/// the clean way out (hooks closed, audit log flushed), however soon it
/// comes. Caught any later, a stop sent between "ready" and the wait
/// would end the process by the signal's default action.
struct StopSignals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl StopSignals {
    fn catch() -> StopSignals {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => StopSignals(Some((term, int))),
            (Err(err), _) | (_, Err(err)) => {
                warn!(error = %err, "cannot catch SIGTERM and SIGINT; a stop ends the daemon without closing its hooks or flushing the audit log (the next start recovers both)");
                StopSignals(None)
            }
        }
    }

    async fn wait(self) {
        let Some((mut term, mut int)) = self.0 else {
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
