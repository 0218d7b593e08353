//! Shared pieces of the privileged end-to-end tests: a real daemon per
//! test (its own cgroup root, pin directory, ports and temp dir), real
//! clients run as agents, and servers on loopback. Everything a test starts
//! is stopped by a guard, even when the test panics.
#![allow(dead_code)]

pub mod bpf;
pub mod git_http;
pub mod grpc;
pub mod netns;
pub mod servers;
pub mod upstream;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU16, Ordering},
    time::{Duration, Instant},
};

pub const AIRLOCK: &str = env!("CARGO_BIN_EXE_airlock");

/// curl printing only the status code it got (000: no answer); the
/// options and URL follow.
pub const CURL_STATUS: [&str; 6] = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}"];

/// The tests need root and BPF; without them they fail, loudly.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these end-to-end tests load eBPF programs into real cgroups and need root: run `sudo -E cargo xtask test`"
    );
}

/// The Python SDKs of the LLM APIs (Anthropic's, OpenAI's) and gRPC's,
/// installed where an agent run as nobody can import them. `.ci/run` puts
/// them there.
pub const PYTHON_SDKS: &str = "/opt/airlock-tests/python";
/// The pip command that does, given in the failure when they are missing.
pub const PYTHON_SDKS_INSTALL: &str = "/usr/bin/python3 -m pip install --break-system-packages --only-binary :all: --target /opt/airlock-tests/python anthropic==2.17.0 openai==3.63.0 grpcio==1.85.4";

/// The directory to put on an agent's PYTHONPATH for the SDKs; a missing
/// one fails the test, saying how to install it.
pub fn python_sdks() -> &'static str {
    let check = Command::new("/usr/bin/python3")
        .args(["-c", "import anthropic, openai, grpc"])
        .env("PYTHONPATH", PYTHON_SDKS)
        .output()
        .expect("python3");
    assert!(
        check.status.success(),
        "the Python SDKs are not installed at {PYTHON_SDKS}: `{PYTHON_SDKS_INSTALL}` ({})",
        String::from_utf8_lossy(&check.stderr).trim()
    );
    PYTHON_SDKS
}

/// A port nobody else in this test run uses, free on 127.0.0.1 and ::1
/// for TCP and UDP (a daemon listens on both, with both). It lies below
/// the kernel's range of ephemeral ports, so that while a test holds it
/// unbound (a daemon killed and started again) no outgoing connection of
/// a test running beside it can take it.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let top = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let bottom = top.saturating_sub(12_000).max(1024);
    let span = top - bottom;
    // Test binaries run one after another, each from its own place in
    // the span.
    let start = (std::process::id() % u32::from(span)) as u16;
    for _ in 0..span {
        let port = bottom + (start + NEXT.fetch_add(1, Ordering::Relaxed) % span) % span;
        let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let free = [v4, v6]
            .iter()
            .all(|addr| TcpListener::bind(addr).is_ok() && std::net::UdpSocket::bind(addr).is_ok());
        if free {
            return port;
        }
    }
    panic!("no free loopback port between {bottom} and {top}");
}

/// `AIRLOCK_TEST_DAEMON_CPU=N` starts every daemon confined to CPU N, as
/// `taskset -c N` would. A daemon that starts on one CPU runs a
/// single-threaded runtime, so `cargo xtask test` runs the proxy suites
/// both ways.
fn daemon_cpu() -> Option<usize> {
    let value = std::env::var("AIRLOCK_TEST_DAEMON_CPU").ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("AIRLOCK_TEST_DAEMON_CPU={value:?} is not a CPU number")),
    )
}

fn confine_to_cpu(cmd: &mut Command, cpu: usize) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: between fork and exec only sched_setaffinity runs, which is
    // async-signal-safe; the cpu_set_t lives on the child's stack.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Starts the child with this soft limit on open files, its hard limit
/// unchanged, as a login shell or a container would hand it.
fn limit_open_files(cmd: &mut Command, soft: u64) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: between fork and exec only getrlimit and setrlimit run, which
    // are async-signal-safe; the rlimit lives on the child's stack.
    unsafe {
        cmd.pre_exec(move || {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limit.rlim_cur = soft.min(limit.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Starts the child allowed to dump a core of any size, as a host that
/// keeps cores would have it: whether a process dumps one is then its own
/// choice.
pub fn allow_core_dumps(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: between fork and exec only setrlimit runs, which is
    // async-signal-safe; the rlimit lives on the child's stack.
    unsafe {
        cmd.pre_exec(|| {
            let any = libc::rlimit {
                rlim_cur: libc::RLIM_INFINITY,
                rlim_max: libc::RLIM_INFINITY,
            };
            if libc::setrlimit(libc::RLIMIT_CORE, &any) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

static NEXT_ID: AtomicU16 = AtomicU16::new(0);

pub struct DaemonOptions {
    pub policies: Vec<(String, String)>,
    pub extra_config: String,
}

impl DaemonOptions {
    pub fn with_policy(name: &str, yaml: &str) -> Self {
        Self {
            policies: vec![(name.to_string(), yaml.to_string())],
            extra_config: String::new(),
        }
    }
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub cgroup_root: String,
    pub pin_dir: PathBuf,
    pub proxy_port: u16,
    pub dns_port: u16,
    pub metrics_port: u16,
    pub audit: PathBuf,
    pub policy_dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    /// The soft limit on open files the daemon is started with, when a
    /// test sets one.
    open_files: Option<u64>,
}

impl Daemon {
    pub fn start(opts: DaemonOptions) -> Daemon {
        Self::start_with_open_files(opts, None)
    }

    /// Starts the daemon with this soft limit on open files.
    pub fn start_with_open_files(opts: DaemonOptions, open_files: Option<u64>) -> Daemon {
        require_root();
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix("airlock-e2e-")
            .tempdir()
            .expect("tempdir");
        // Agents (uid nobody) must reach the CA files under the state dir.
        set_mode(dir.path(), 0o755);
        let policy_dir = dir.path().join("policies");
        std::fs::create_dir_all(&policy_dir).expect("policy dir");
        for (name, yaml) in &opts.policies {
            std::fs::write(policy_dir.join(name), yaml).expect("write policy");
        }
        let (proxy_port, dns_port, metrics_port) = (free_port(), free_port(), free_port());
        let cgroup_root = format!("airlock-e2e-{id}.slice");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/airlock-e2e-{id}"));
        let audit = dir.path().join("log/audit.jsonl");
        let config = dir.path().join("airlock.yaml");
        // The default floor under the audit log (256 MiB available) would
        // make a test depend on how full the machine's disk is; a test of
        // the floor sets its own.
        let floor = if opts.extra_config.contains("audit_min_free_mib:") {
            ""
        } else {
            "audit_min_free_mib: 1\n"
        };
        let text = format!(
            "version: 1\ncgroup_root: {cgroup_root}\npolicy_dir: {}\nstate_dir: {}\nproxy_port: {proxy_port}\ndns_port: {dns_port}\nmetrics_addr: 127.0.0.1:{metrics_port}\naudit_log: {}\nadmin_socket: {}\nbpf_pin_dir: {}\n{floor}{}",
            policy_dir.display(),
            dir.path().join("state").display(),
            audit.display(),
            dir.path().join("run/admin.sock").display(),
            pin_dir.display(),
            opts.extra_config,
        );
        std::fs::write(&config, text).expect("write config");
        let log = dir.path().join("daemon.log");
        let mut daemon = Daemon {
            dir,
            config,
            cgroup_root,
            pin_dir,
            proxy_port,
            dns_port,
            metrics_port,
            audit,
            policy_dir,
            child: None,
            log,
            open_files,
        };
        daemon.spawn();
        daemon
    }

    /// Start (or restart) the daemon process and wait until it is healthy.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("daemon log");
        let mut cmd = Command::new(AIRLOCK);
        // In its own directory, where a core (were it to dump one) would be
        // kept with the test's other files, not in the source tree.
        cmd.args(["daemon", "--config"])
            .arg(&self.config)
            .current_dir(self.dir.path())
            .env("AIRLOCK_LOG", "info,airlock=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        if let Some(cpu) = daemon_cpu() {
            confine_to_cpu(&mut cmd, cpu);
        }
        if let Some(soft) = self.open_files {
            limit_open_files(&mut cmd, soft);
        }
        allow_core_dumps(&mut cmd);
        let child = cmd.spawn().expect("start airlock daemon");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("daemon exited early ({status}):\n{}", self.log_text());
            }
            if let Ok(s) = self.status()
                && s["healthy"] == true
            {
                if daemon_cpu().is_some() {
                    // The point of confining it: the single-threaded runtime.
                    let log = self.log_text();
                    assert!(
                        log.contains("runtime=single-threaded"),
                        "daemon confined to one CPU did not start single-threaded:\n{log}"
                    );
                }
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon not healthy after 30s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to 5 s for `needle` in the daemon's log (kernel-side log
    /// records reach it through a ring the daemon polls); panics with the
    /// log and `what` otherwise.
    pub fn wait_for_log(&self, needle: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.log_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{what} never reached the daemon log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn status(&self) -> Result<serde_json::Value, String> {
        let out = Command::new(AIRLOCK)
            .args(["status", "--json", "--config"])
            .arg(&self.config)
            .output()
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
    }

    /// SIGTERM, as `systemctl stop` sends, and wait for the exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait().expect("wait for the daemon");
            assert!(
                status.success(),
                "the daemon stopped badly ({status}):\n{}",
                self.log_text()
            );
        }
    }

    /// SIGKILL: no chance to clean anything up, as in a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGABRT, as an abort (a failed assertion in a library, a panic
    /// that aborts) ends it; returns how it ended. Not SIGSEGV: Rust's
    /// handler for stack overflows swallows the first one sent by kill(2).
    pub fn crash(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the daemon is running");
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGABRT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait for the daemon") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon did not end on SIGABRT:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `airlock run --agent AGENT --user nobody -- CMD...`
    pub fn run_agent(&self, agent: &str, cmd: &[&str]) -> Output {
        self.run_agent_as(agent, &["--user", "nobody"], cmd)
    }

    pub fn run_agent_as(&self, agent: &str, who: &[&str], cmd: &[&str]) -> Output {
        self.run_agent_with(agent, who, &[], cmd)
    }

    /// `run_agent_as`, with `env` set in the environment `airlock run`
    /// starts with (as a caller's shell would have it).
    pub fn run_agent_with(
        &self,
        agent: &str,
        who: &[&str],
        env: &[(&str, &str)],
        cmd: &[&str],
    ) -> Output {
        Command::new(AIRLOCK)
            .args(["run", "--config"])
            .arg(&self.config)
            .args(["--agent", agent])
            .args(who)
            .arg("--")
            .args(cmd)
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("airlock run")
    }

    /// Run an agent whose resolver is 127.0.0.53 (a private
    /// /etc/resolv.conf in its own mount namespace): its lookups are
    /// captured and answered by Airlock's resolver, and if capture ever
    /// failed they would still stay on loopback.
    pub fn run_agent_dns(&self, agent: &str, cmd: &[&str]) -> Output {
        let resolv = self.dir.path().join("resolv.conf");
        if !resolv.exists() {
            std::fs::write(
                &resolv,
                "nameserver 127.0.0.53\noptions timeout:2 attempts:1\n",
            )
            .expect("resolv.conf");
            set_mode(&resolv, 0o644);
        }
        let script = format!(
            "mount --bind {} /etc/resolv.conf && exec \"$@\"",
            resolv.display()
        );
        Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
                "sh",
                AIRLOCK,
                "run",
                "--config",
            ])
            .arg(&self.config)
            .args(["--agent", agent, "--user", "nobody", "--"])
            .args(cmd)
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .stdin(Stdio::null())
            .output()
            .expect("unshare + airlock run")
    }

    /// `airlock secret set NAME` with the value on stdin.
    pub fn secret_set(&self, name: &str, value: &str) {
        self.secret_with_value(&["set", name], value);
    }

    /// `airlock secret set NAME --kind KIND --placeholder PH` with the value on stdin.
    pub fn secret_set_kind(&self, name: &str, kind: &str, placeholder: &str, value: &str) {
        self.secret_with_value(
            &["set", name, "--kind", kind, "--placeholder", placeholder],
            value,
        );
    }

    /// `airlock secret rotate NAME` with the new value on stdin.
    pub fn secret_rotate(&self, name: &str, value: &str) {
        self.secret_with_value(&["rotate", name], value);
    }

    /// `airlock secret ARGS...` with `value` on stdin; it must succeed.
    pub fn secret_with_value(&self, args: &[&str], value: &str) {
        let out = self.secret_with_value_noted(args, value);
        assert!(
            out.stderr.is_empty(),
            "secret {} warned: {}",
            args[0],
            describe(&out)
        );
    }

    /// As [`Self::secret_with_value`], for a command that may print a
    /// note on stderr: the output, once checked for success and the value.
    pub fn secret_with_value_noted(&self, args: &[&str], value: &str) -> Output {
        let action = args[0];
        let mut child = Command::new(AIRLOCK)
            .arg("secret")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("airlock secret");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(value.as_bytes())
            .expect("write secret");
        let out = child.wait_with_output().expect("airlock secret");
        assert!(
            out.status.success(),
            "secret {action} failed: {}",
            describe(&out)
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(value)
                && !String::from_utf8_lossy(&out.stderr).contains(value),
            "secret {action} printed the secret"
        );
        out
    }

    /// GET /metrics from the daemon.
    pub fn metrics(&self) -> String {
        let mut s =
            std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).expect("metrics");
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .expect("get");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut s, &mut text).expect("read metrics");
        text
    }

    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Wait (bounded) until the audit log holds a record matching `pred`.
    pub fn wait_audit(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = self.audit_records().into_iter().find(|r| pred(r)) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no audit record {what} within 10s; audit log:\n{}\ndaemon log:\n{}",
                std::fs::read_to_string(&self.audit).unwrap_or_default(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn attached_programs(&self) -> u64 {
        self.status().expect("status")["attached_programs"]
            .as_u64()
            .expect("attached_programs")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_cgroup_members(&self.cgroup_root);
        let _ = Command::new(AIRLOCK)
            .args(["detach", "--config"])
            .arg(&self.config)
            .output();
    }
}

/// End whatever agent processes a failed test left in its own cgroups.
fn kill_cgroup_members(cgroup_root: &str) {
    let Some(mount) = cgroup2_mount() else { return };
    let root = mount.join(cgroup_root);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return;
    };
    for e in entries.flatten() {
        let procs = std::fs::read_to_string(e.path().join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
            // SAFETY: these processes were started by this test run, inside
            // its own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    std::thread::sleep(Duration::from_millis(50));
}

pub fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap_or("/")))
    })
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn describe(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Write a helper script into the test's temp dir, readable by agents.
pub fn script(daemon: &Daemon, name: &str, text: &str) -> String {
    let path = daemon.dir.path().join(name);
    let mut f = std::fs::File::create(&path).expect("script");
    f.write_all(text.as_bytes()).expect("write script");
    set_mode(&path, 0o755);
    path.display().to_string()
}

pub fn read_line_from(stream: &mut std::net::TcpStream) -> String {
    let mut line = String::new();
    let _ = BufReader::new(stream).read_line(&mut line);
    line
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}
