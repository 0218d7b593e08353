//! The daemon's configuration (`/etc/airlock/airlock.yaml`). Every key is
//! optional; the defaults below are the documented ones.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::Deserialize;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/airlock/airlock.yaml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}", render_invalid(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

fn render_invalid(path: &Path, problems: &[String]) -> String {
    problems
        .iter()
        .map(|p| format!("{}: {p}", path.display()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The keys of [`RawConfig`], for the hint to a typo (a test checks that
/// they are serde's).
const KEYS: &[&str] = &[
    "version",
    "cgroup_root",
    "policy_dir",
    "state_dir",
    "proxy_port",
    "dns_port",
    "metrics_addr",
    "audit_log",
    "audit_min_free_mib",
    "admin_socket",
    "dns_upstream",
    "resolve",
    "upstream_ca",
    "bpf_pin_dir",
    "approval_timeout_secs",
    "approval_webhook",
    "rotate_grace_secs",
    "agent_tls_resumption",
    "private_upstreams_from_dns",
    "max_connections_per_agent",
    "lock_memory",
    "agent_hidden_sockets",
];

/// serde's message, without the position our prefix gives; an unknown key
/// is said as a policy's is, with the key it was likely meant to be.
fn parse_message(err: &serde_yaml::Error) -> String {
    let message = err.to_string();
    let message = match err.location() {
        Some(at) => message.replacen(
            &format!(" at line {} column {}", at.line(), at.column()),
            "",
            1,
        ),
        None => message,
    };
    let Some(key) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(key, _)| key)
    else {
        return message;
    };
    let list = KEYS.join(", ");
    match crate::nearest_key::closest(key, KEYS) {
        Some(guess) => {
            format!("unknown key `{key}` (hint: did you mean `{guess}`? valid keys: {list})")
        }
        None => format!("unknown key `{key}` (hint: valid keys: {list})"),
    }
}

/// The file as written. Unknown keys are errors: a typo must not silently
/// fall back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    version: Option<u32>,
    cgroup_root: Option<String>,
    policy_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    proxy_port: Option<u16>,
    dns_port: Option<u16>,
    metrics_addr: Option<String>,
    audit_log: Option<PathBuf>,
    audit_min_free_mib: Option<u64>,
    admin_socket: Option<PathBuf>,
    dns_upstream: Option<Vec<String>>,
    resolve: Option<BTreeMap<String, OneOrMany>>,
    upstream_ca: Option<Vec<PathBuf>>,
    bpf_pin_dir: Option<PathBuf>,
    approval_timeout_secs: Option<u64>,
    approval_webhook: Option<String>,
    rotate_grace_secs: Option<u64>,
    agent_tls_resumption: Option<bool>,
    private_upstreams_from_dns: Option<bool>,
    max_connections_per_agent: Option<u64>,
    lock_memory: Option<bool>,
    agent_hidden_sockets: Option<Vec<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The managed cgroup, relative to the cgroup v2 mount.
    pub cgroup_root: String,
    pub policy_dir: PathBuf,
    /// Vault, master key and CA.
    pub state_dir: PathBuf,
    /// The proxy listens on `127.0.0.1` and `[::1]` at this port.
    pub proxy_port: u16,
    /// The resolver agents' DNS lands on (UDP, `127.0.0.1` and `[::1]`).
    pub dns_port: u16,
    pub metrics_addr: SocketAddr,
    pub audit_log: PathBuf,
    /// Space the audit log leaves available on its file system (MiB, as
    /// `df` counts "Avail"). Below it, records wait in the journal and
    /// requests are refused until there is room: an agent that floods the
    /// log with refused requests must not fill the disk that the rest of
    /// the host writes to. 0: the log may fill the disk.
    pub audit_min_free_mib: u64,
    pub admin_socket: PathBuf,
    /// Empty: the nameservers of /etc/resolv.conf.
    pub dns_upstream: Vec<SocketAddr>,
    /// host -> addresses, like curl --resolve: answers agents' lookups and
    /// the proxy's own upstream connects. The operator's word: unlike an
    /// answer from DNS, it may name loopback or link-local addresses.
    pub resolve: BTreeMap<String, Vec<IpAddr>>,
    /// Extra PEM files trusted for upstream TLS.
    pub upstream_ca: Vec<PathBuf>,
    /// Where the eBPF links and maps are pinned (on bpffs).
    pub bpf_pin_dir: PathBuf,
    /// How long a request waits for `airlock approvals approve`.
    pub approval_timeout_secs: u64,
    /// Where approval notices are POSTed (http:// on loopback or https://).
    pub approval_webhook: Option<String>,
    /// How long `secret rotate` keeps the previous value valid.
    pub rotate_grace_secs: u64,
    /// Agents may resume TLS sessions with Airlock (saves the leaf
    /// signature on a reconnect). Benchmarks turn it off to measure full
    /// handshakes.
    pub agent_tls_resumption: bool,
    /// A name from DNS may lead the daemon to a private network (RFC 1918,
    /// 100.64.0.0/10, 198.18.0.0/15, fc00::/7), where internal APIs live.
    /// `false` refuses such answers as loopback and link-local always are,
    /// for hosts whose agents must reach only the internet.
    pub private_upstreams_from_dns: bool,
    /// Connections one agent may hold through the proxy at once; more are
    /// closed as they arrive. Each costs the daemon about 55 KiB and two
    /// open files; the limit keeps one agent from taking them from the
    /// others.
    pub max_connections_per_agent: u64,
    /// The daemon and `airlock secret` lock their memory into RAM, so that
    /// the master key and secrets are never written to swap. `false` is for
    /// hosts with no swap, or an encrypted one, where the daemon may not
    /// have `CAP_IPC_LOCK`.
    pub lock_memory: bool,
    /// Unix sockets of the host's services that `airlock run` hides from
    /// the agent (`/dev/null` is mounted over each, in a mount namespace
    /// of the agent's own). Such a service acts for the agent outside its
    /// cgroup: systemd-resolved, nscd and avahi resolve any name asked,
    /// which is a DNS channel around Airlock's resolver.
    pub agent_hidden_sockets: Vec<PathBuf>,
}

/// The sockets of the services that resolve names for any local caller.
/// Each under `/run` and `/var/run`, which is a symlink to it on most
/// hosts and another mount of it on some.
pub const HIDDEN_SOCKETS: [&str; 10] = [
    "/run/systemd/resolve/io.systemd.Resolve",
    "/run/systemd/resolve/io.systemd.Resolve.Monitor",
    "/run/dbus/system_bus_socket",
    "/run/nscd/socket",
    "/run/avahi-daemon/socket",
    "/var/run/systemd/resolve/io.systemd.Resolve",
    "/var/run/systemd/resolve/io.systemd.Resolve.Monitor",
    "/var/run/dbus/system_bus_socket",
    "/var/run/nscd/socket",
    "/var/run/avahi-daemon/socket",
];

impl Default for Config {
    fn default() -> Self {
        Self {
            cgroup_root: "airlock.slice".into(),
            policy_dir: "/etc/airlock/policies".into(),
            state_dir: "/var/lib/airlock".into(),
            proxy_port: 15001,
            dns_port: 15053,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            audit_log: "/var/log/airlock/audit.jsonl".into(),
            audit_min_free_mib: 256,
            admin_socket: "/run/airlock/admin.sock".into(),
            dns_upstream: Vec::new(),
            resolve: BTreeMap::new(),
            upstream_ca: Vec::new(),
            bpf_pin_dir: "/sys/fs/bpf/airlock".into(),
            approval_timeout_secs: 300,
            approval_webhook: None,
            rotate_grace_secs: 3600,
            agent_tls_resumption: true,
            private_upstreams_from_dns: true,
            max_connections_per_agent: 1024,
            lock_memory: true,
            agent_hidden_sockets: HIDDEN_SOCKETS.iter().map(PathBuf::from).collect(),
        }
    }
}

impl Config {
    /// Where audit records wait for their write: beside the admin socket,
    /// on the runtime folder's tmpfs, which outlives the daemon but not a
    /// reboot.
    pub fn audit_journal(&self) -> PathBuf {
        self.admin_socket.with_file_name("audit.journal")
    }

    /// `audit_min_free_mib` in bytes.
    pub fn audit_min_free(&self) -> u64 {
        self.audit_min_free_mib.saturating_mul(1 << 20)
    }

    /// Load `path`. The default path may be absent (all defaults); a path
    /// the user named must exist.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(err) if !explicit && err.kind() == std::io::ErrorKind::NotFound => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|err| {
                let loc = err.location();
                ConfigError::Parse {
                    path: path.to_path_buf(),
                    line: loc.as_ref().map_or(1, |l| l.line()),
                    column: loc.as_ref().map_or(1, |l| l.column()),
                    message: parse_message(&err),
                }
            })?
        };
        let mut problems = Vec::new();
        let mut cfg = Config::default();
        if let Some(v) = raw.version
            && v != 1
        {
            problems.push(format!(
                "version: {v} is not supported (this Airlock reads version 1)"
            ));
        }
        if let Some(root) = raw.cgroup_root {
            cfg.cgroup_root = root;
        }
        macro_rules! take {
            ($field:ident) => {
                if let Some(v) = raw.$field {
                    cfg.$field = v;
                }
            };
        }
        take!(policy_dir);
        take!(state_dir);
        take!(proxy_port);
        take!(dns_port);
        take!(audit_log);
        take!(audit_min_free_mib);
        take!(admin_socket);
        take!(upstream_ca);
        take!(bpf_pin_dir);
        take!(approval_timeout_secs);
        take!(rotate_grace_secs);
        take!(agent_tls_resumption);
        take!(private_upstreams_from_dns);
        take!(max_connections_per_agent);
        take!(lock_memory);
        take!(agent_hidden_sockets);
        for path in &cfg.agent_hidden_sockets {
            if !path.is_absolute() {
                problems.push(format!(
                    "agent_hidden_sockets: {} is not an absolute path",
                    path.display()
                ));
            }
        }
        cfg.approval_webhook = raw.approval_webhook;
        if cfg.max_connections_per_agent == 0 {
            problems.push(
                "max_connections_per_agent: must be at least 1 (an agent needs a connection to reach anything)"
                    .into(),
            );
        }
        if cfg.proxy_port == 0 {
            problems.push("proxy_port: must be 1-65535".into());
        }
        if cfg.dns_port == 0 {
            problems.push("dns_port: must be 1-65535".into());
        }
        if cfg.proxy_port == cfg.dns_port {
            problems.push("dns_port: must differ from proxy_port".into());
        }
        if let Some(addr) = raw.metrics_addr {
            match addr.parse() {
                Ok(a) => cfg.metrics_addr = a,
                Err(_) => problems.push(format!(
                    "metrics_addr: {addr:?} is not an address:port (e.g. 127.0.0.1:9464)"
                )),
            }
        }
        for entry in raw.dns_upstream.unwrap_or_default() {
            match parse_upstream(&entry) {
                Some(a) => cfg.dns_upstream.push(a),
                None => problems.push(format!(
                    "dns_upstream: {entry:?} is not an IP or IP:port (e.g. 127.0.0.53 or [::1]:5353)"
                )),
            }
        }
        for (host, ips) in raw.resolve.unwrap_or_default() {
            let list = match ips {
                OneOrMany::One(one) => vec![one],
                OneOrMany::Many(many) => many,
            };
            let mut parsed = Vec::new();
            for ip in list {
                match ip.parse::<IpAddr>() {
                    Ok(ip) => parsed.push(ip),
                    Err(_) => problems.push(format!("resolve.{host}: {ip:?} is not an IP address")),
                }
            }
            cfg.resolve
                .insert(host.trim_end_matches('.').to_ascii_lowercase(), parsed);
        }
        for (key, path) in [
            ("policy_dir", &cfg.policy_dir),
            ("state_dir", &cfg.state_dir),
            ("audit_log", &cfg.audit_log),
            ("admin_socket", &cfg.admin_socket),
            ("bpf_pin_dir", &cfg.bpf_pin_dir),
        ] {
            if !path.is_absolute() {
                problems.push(format!(
                    "{key}: {} must be an absolute path",
                    path.display()
                ));
            }
        }
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            })
        }
    }
}

fn parse_upstream(s: &str) -> Option<SocketAddr> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(addr);
    }
    s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/airlock/airlock.yaml"), text)
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let cfg = parse("").expect("defaults");
        assert_eq!(cfg.cgroup_root, "airlock.slice");
        assert_eq!(cfg.proxy_port, 15001);
        assert_eq!(cfg.dns_port, 15053);
        assert_eq!(cfg.metrics_addr.to_string(), "127.0.0.1:9464");
        assert_eq!(cfg.admin_socket, PathBuf::from("/run/airlock/admin.sock"));
        assert_eq!(cfg.audit_min_free(), 256 << 20);
        let cfg = parse("audit_min_free_mib: 0\n").expect("no floor");
        assert_eq!(cfg.audit_min_free(), 0);
        assert!(parse("").expect("defaults").lock_memory);
        assert!(!parse("lock_memory: false\n").expect("unlocked").lock_memory);
        assert!(
            cfg.agent_hidden_sockets
                .contains(&PathBuf::from("/run/systemd/resolve/io.systemd.Resolve"))
        );
        let err = parse("agent_hidden_sockets: [run/nscd/socket]\n").expect_err("relative");
        assert!(
            err.to_string()
                .contains("agent_hidden_sockets: run/nscd/socket is not an absolute path"),
            "{err}"
        );
    }

    #[test]
    fn a_typo_is_an_error_with_its_position() {
        let err = parse("version: 1\nproxy_prot: 15001\n").expect_err("typo");
        let text = err.to_string();
        assert!(
            text.starts_with(
                "/etc/airlock/airlock.yaml:2:1: unknown key `proxy_prot` (hint: did you mean `proxy_port`? valid keys: version, "
            ),
            "{text}"
        );
        assert!(!text.contains(" at line "), "the position twice: {text}");
        let err = parse("zzzz: 1\n").expect_err("unknown");
        assert!(
            err.to_string()
                .ends_with("unknown key `zzzz` (hint: valid keys: version, cgroup_root, policy_dir, state_dir, proxy_port, dns_port, metrics_addr, audit_log, audit_min_free_mib, admin_socket, dns_upstream, resolve, upstream_ca, bpf_pin_dir, approval_timeout_secs, approval_webhook, rotate_grace_secs, agent_tls_resumption, private_upstreams_from_dns, max_connections_per_agent, lock_memory, agent_hidden_sockets)"),
            "{err}"
        );
        let err = parse("proxy_port: abc\n").expect_err("a string");
        assert_eq!(
            err.to_string(),
            "/etc/airlock/airlock.yaml:1:13: proxy_port: invalid type: string \"abc\", expected u16"
        );
    }

    #[test]
    fn the_keys_of_the_hint_are_the_keys_serde_reads() {
        let err = serde_yaml::from_str::<RawConfig>("zzzz: 1\n").expect_err("unknown");
        let message = err.to_string();
        let (_, expected) = message
            .split_once("expected one of ")
            .expect("serde's list");
        let serde_keys: Vec<&str> = expected
            .split(" at line ")
            .next()
            .expect("list")
            .split(", ")
            .map(|k| k.trim_matches('`'))
            .collect();
        assert_eq!(serde_keys, KEYS);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err =
            parse("version: 2\nproxy_port: 0\nmetrics_addr: nowhere\ndns_upstream: [bogus]\n")
                .expect_err("invalid");
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid");
        };
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    #[test]
    fn private_upstreams_from_dns_is_allowed_unless_turned_off() {
        assert!(Config::default().private_upstreams_from_dns);
        let cfg = parse("private_upstreams_from_dns: false\n").expect("valid config");
        assert!(!cfg.private_upstreams_from_dns);
        let err = parse("private_upstreams_from_dns: nope\n").expect_err("not a boolean");
        let text = err.to_string();
        assert!(text.starts_with("/etc/airlock/airlock.yaml:1:"), "{text}");
    }

    /// The config the installer writes says its values are the defaults,
    /// and names every key, so that it is where a user finds them all.
    #[test]
    fn the_installed_config_holds_the_defaults_and_names_every_key() {
        let text = include_str!("../../xtask/src/default-config.yaml");
        let installed = parse(text).expect("the installed config parses");
        assert_eq!(format!("{installed:?}"), format!("{:?}", Config::default()));
        for key in KEYS {
            assert!(
                text.lines().any(|l| {
                    let l = l.trim_start_matches("# ");
                    l.starts_with(key) && l[key.len()..].starts_with(':')
                }),
                "the installed config does not name {key}"
            );
        }
    }

    #[test]
    fn an_agent_connection_limit_of_zero_is_refused() {
        assert_eq!(Config::default().max_connections_per_agent, 1024);
        let cfg = parse("max_connections_per_agent: 64\n").expect("valid config");
        assert_eq!(cfg.max_connections_per_agent, 64);
        let err = parse("max_connections_per_agent: 0\n").expect_err("zero");
        assert!(
            err.to_string().starts_with(
                "/etc/airlock/airlock.yaml: max_connections_per_agent: must be at least 1"
            ),
            "{err}"
        );
        let err = parse("max_connections_per_agent: -1\n").expect_err("negative");
        assert!(
            err.to_string().starts_with("/etc/airlock/airlock.yaml:1:"),
            "{err}"
        );
    }

    #[test]
    fn upstreams_and_resolve_entries_parse() {
        let cfg = parse(
            "dns_upstream: [127.0.0.53, '[::1]:5353']\nresolve:\n  API.Example.test.: 127.0.0.9\n  two.test: [127.0.0.1, '::1']\n",
        )
        .expect("valid");
        assert_eq!(cfg.dns_upstream[0].to_string(), "127.0.0.53:53");
        assert_eq!(cfg.dns_upstream[1].to_string(), "[::1]:5353");
        assert_eq!(cfg.resolve["api.example.test"].len(), 1);
        assert_eq!(cfg.resolve["two.test"].len(), 2);
    }

    #[test]
    fn missing_default_file_is_defaults_but_missing_named_file_is_an_error() {
        let missing = Path::new("/nonexistent/airlock.yaml");
        assert!(Config::load(missing, false).is_ok());
        assert!(matches!(
            Config::load(missing, true),
            Err(ConfigError::Read { .. })
        ));
    }
}
