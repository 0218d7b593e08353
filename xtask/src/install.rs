//! `cargo xtask install` / `uninstall`: Airlock as a service on this host.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{cargo, is_root, run};

const BIN: &str = "/usr/local/bin/airlock";
const CONFIG_DIR: &str = "/etc/airlock";
const CONFIG: &str = "/etc/airlock/airlock.yaml";
const UNIT_DIR: &str = "/etc/systemd/system";
const PID_FILE: &str = "/run/airlock/airlock.pid";
const DAEMON_LOG: &str = "/var/log/airlock/daemon.log";
const AUDIT_LOG: &str = "/var/log/airlock/audit.jsonl";
const LOGROTATE_DIR: &str = "/etc/logrotate.d";
const LOGROTATE: &str = "/etc/logrotate.d/airlock";
const DEFAULT_CONFIG: &str = include_str!("default-config.yaml");

#[derive(Args)]
pub struct UninstallArgs {
    /// Also delete /etc/airlock and /var/lib/airlock (vault, master key, CA).
    #[arg(long)]
    pub purge: bool,
}

fn systemd_is_pid1() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn say(msg: impl AsRef<str>) {
    println!("==> {}", msg.as_ref());
}

pub fn install() -> anyhow::Result<()> {
    if !is_root() {
        bail!("installing a system service needs root: run `sudo -E cargo xtask install`");
    }
    say("building the release binary (the eBPF object is embedded)");
    run(cargo().args(["build", "--release", "--package", "airlock"]))?;

    say(format!("installing {BIN}"));
    // Copy then rename, so a running daemon keeps its old inode.
    let staged = PathBuf::from(format!("{BIN}.new"));
    std::fs::copy("target/release/airlock", &staged).context("copying the binary")?;
    set_mode(&staged, 0o755)?;
    std::fs::rename(&staged, BIN).with_context(|| format!("installing {BIN}"))?;

    // Root's alone, whatever the umask or the checkout's modes: the daemon
    // refuses a config or policy that another user could change.
    let policy_dir = format!("{CONFIG_DIR}/policies");
    std::fs::create_dir_all(&policy_dir)?;
    set_mode(Path::new(CONFIG_DIR), 0o755)?;
    set_mode(Path::new(&policy_dir), 0o755)?;
    if Path::new(CONFIG).exists() {
        say(format!("keeping {CONFIG}"));
    } else {
        std::fs::write(CONFIG, DEFAULT_CONFIG)?;
        set_mode(Path::new(CONFIG), 0o644)?;
        say(format!("wrote {CONFIG}"));
    }
    for entry in std::fs::read_dir("policies")
        .context("reading policies/")?
        .flatten()
    {
        let dst = Path::new(CONFIG_DIR)
            .join("policies")
            .join(entry.file_name());
        if dst.exists() {
            continue;
        }
        std::fs::copy(entry.path(), &dst)?;
        set_mode(&dst, 0o644)?;
        say(format!("example policy {}", dst.display()));
    }
    for unit in ["airlock.service", "airlock.slice"] {
        std::fs::create_dir_all(UNIT_DIR)?;
        std::fs::copy(
            Path::new("systemd").join(unit),
            Path::new(UNIT_DIR).join(unit),
        )?;
    }
    if Path::new(LOGROTATE_DIR).is_dir() {
        std::fs::copy("systemd/airlock.logrotate", LOGROTATE)
            .with_context(|| format!("installing {LOGROTATE}"))?;
        set_mode(Path::new(LOGROTATE), 0o644)?;
        say(format!("log rotation: {LOGROTATE}"));
    } else {
        say(format!(
            "logrotate is not installed ({LOGROTATE_DIR} is missing): {AUDIT_LOG} grows until it is rotated; rename or remove it at any time and the daemon opens a new one"
        ));
    }
    for (dir, mode) in [
        ("/var/lib/airlock", 0o711),
        ("/var/log/airlock", 0o750),
        ("/run/airlock", 0o755),
    ] {
        std::fs::create_dir_all(dir)?;
        set_mode(Path::new(dir), mode)?;
    }

    if systemd_is_pid1() {
        say("starting airlock.service with systemd");
        run(Command::new("systemctl").arg("daemon-reload"))?;
        run(Command::new("systemctl").args(["enable", "airlock.service"]))?;
        run(Command::new("systemctl").args(["restart", "airlock.service"]))?;
    } else {
        stop_background()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(DAEMON_LOG)?;
        // setsid: the daemon leaves this terminal's session and outlives it.
        let child = Command::new("setsid")
            .args([BIN, "daemon", "--config", CONFIG])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the daemon")?;
        std::fs::write(PID_FILE, format!("{}\n", child.id()))?;
        say(format!(
            "systemd is not PID 1 here: started the daemon in the background (pid {}, log {DAEMON_LOG}, pid file {PID_FILE})",
            child.id()
        ));
    }
    wait_healthy()?;
    let out = Command::new(BIN).args(["status"]).output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!(
        "\nAirlock is running. Run an agent with, for example:\n  sudo airlock run --agent package-fetcher --user nobody -- node -e \"fetch('https://registry.npmjs.org/left-pad').then(r => console.log(r.status))\"\nPolicies: {CONFIG_DIR}/policies (edits apply at once). Audit: {AUDIT_LOG}. Uninstall: sudo -E cargo xtask uninstall"
    );
    Ok(())
}

fn wait_healthy() -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(BIN).args(["status", "--json"]).output()?;
        if out.status.success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(DAEMON_LOG).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            bail!(
                "the daemon did not become healthy within 30s:\n{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Stop a daemon that a previous install started without systemd.
fn stop_background() -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(PID_FILE) else {
        return Ok(());
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        return Ok(());
    };
    let is_airlock = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .map(|c| c.contains("airlock") && c.contains("daemon"))
        .unwrap_or(false);
    if !is_airlock {
        let _ = std::fs::remove_file(PID_FILE);
        return Ok(());
    }
    say(format!("stopping the running daemon (pid {pid})"));
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if Path::new(&format!("/proc/{pid}")).exists() {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = std::fs::remove_file(PID_FILE);
    Ok(())
}

pub fn uninstall(args: UninstallArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!("uninstalling a system service needs root: run `sudo -E cargo xtask uninstall`");
    }
    if systemd_is_pid1() {
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "airlock.service"])
            .status();
    }
    stop_background()?;
    if Path::new(BIN).exists() {
        say("detaching the eBPF programs and removing the agents' cgroup root");
        let mut detach = Command::new(BIN);
        detach.args(["detach", "--config", CONFIG]);
        if !Path::new(CONFIG).exists() {
            detach = Command::new(BIN);
            detach.arg("detach");
        }
        run(&mut detach)?;
        std::fs::remove_file(BIN)?;
    }
    for unit in ["airlock.service", "airlock.slice"] {
        let _ = std::fs::remove_file(Path::new(UNIT_DIR).join(unit));
    }
    let _ = std::fs::remove_file(LOGROTATE);
    if systemd_is_pid1() {
        let _ = Command::new("systemctl").arg("daemon-reload").status();
    }
    let _ = std::fs::remove_dir_all("/run/airlock");
    if args.purge {
        for dir in [CONFIG_DIR, "/var/lib/airlock", "/var/log/airlock"] {
            let _ = std::fs::remove_dir_all(dir);
        }
        say("removed configuration, vault, CA and logs");
    } else {
        say(
            "kept /etc/airlock (config, policies) and /var/lib/airlock (vault, CA); --purge removes them",
        );
    }
    say("Airlock is uninstalled");
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Install, prove the installed service works for a Node agent under the
/// example policies, uninstall, and prove nothing is left behind. CI runs
/// it after the tests. Traffic stays on loopback: the agent's resolver is
/// pointed at 127.0.0.53 and its request goes to a listener of ours.
pub fn install_check() -> anyhow::Result<()> {
    install()?;
    let result = check_installed();
    let removed = uninstall(UninstallArgs { purge: true });
    result?;
    removed?;
    check_removed()?;
    println!("install-check: ok");
    Ok(())
}

fn check_installed() -> anyhow::Result<()> {
    let out = Command::new(BIN).args(["status", "--json"]).output()?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).context("status JSON")?;
    if status["healthy"] != true || status["attached_programs"] != 11 {
        bail!("installed daemon is not healthy: {status}");
    }
    // A target the example policies do not name.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let dir = std::env::temp_dir().join(format!("airlock-install-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = agent_is_judged(&dir, port).and_then(|()| audit_log_rotates(&dir, port));
    let _ = std::fs::remove_dir_all(&dir);
    drop(listener);
    result
}

/// A Node agent under the example policies, asking for a target they do
/// not name, gets Airlock's 403.
fn agent_is_judged(dir: &Path, port: u16) -> anyhow::Result<()> {
    node_agent_get(dir, port, "/")?;
    say(
        "installed service: healthy, 11 programs attached, Node agent captured and judged by the example policy",
    );
    Ok(())
}

/// logrotate, run as its timer would with the installed configuration,
/// moves the audit log away; the daemon's next record goes to a new file
/// at the path, and the rotated file keeps the records before it.
fn audit_log_rotates(dir: &Path, port: u16) -> anyhow::Result<()> {
    let logrotate = Path::new("/usr/sbin/logrotate");
    if !logrotate.exists() {
        bail!(
            "logrotate is not installed (apt-get install logrotate): cannot check the installed {LOGROTATE}"
        );
    }
    let rotated = format!("{AUDIT_LOG}.1");
    node_agent_get(dir, port, "/before-rotation")?;
    wait_for_line(Path::new(AUDIT_LOG), "/before-rotation")?;
    run(Command::new(logrotate)
        .arg("--force")
        .arg("--state")
        .arg(dir.join("logrotate.state"))
        .arg(LOGROTATE))?;
    node_agent_get(dir, port, "/after-rotation")?;
    wait_for_line(Path::new(AUDIT_LOG), "/after-rotation")?;
    let old = std::fs::read_to_string(&rotated).with_context(|| format!("reading {rotated}"))?;
    let new = std::fs::read_to_string(AUDIT_LOG)?;
    if !old.contains("\"/before-rotation\"")
        || old.contains("/after-rotation")
        || new.contains("/before-rotation")
    {
        bail!(
            "the audit log did not rotate cleanly: {rotated} and {AUDIT_LOG} hold the wrong records"
        );
    }
    say(format!(
        "log rotation: after logrotate --force, the record before it is in {rotated} and the next one in a new {AUDIT_LOG}"
    ));
    Ok(())
}

/// Waits (up to 10 s: the writer gathers records for 20 ms) for a record
/// of `path` in the audit log at `log`.
fn wait_for_line(log: &Path, path: &str) -> anyhow::Result<()> {
    let needle = format!("\"path\":\"{path}\"");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(&needle) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no audit record of {path} in {} after 10 s", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a Node agent, `package-fetcher` as user nobody, that fetches
/// `http://127.0.0.1:{port}{path}`, and checks that Airlock answered 403.
/// Its resolver is pointed at 127.0.0.53 so nothing leaves loopback.
fn node_agent_get(dir: &Path, port: u16, path: &str) -> anyhow::Result<()> {
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.53\n")?;
    set_mode(dir, 0o755)?;
    set_mode(&resolv, 0o644)?;
    let node = format!(
        "fetch('http://127.0.0.1:{port}{path}').then(async r => console.log(r.status, JSON.stringify(await r.json())), e => console.log('error', e))"
    );
    let script = format!(
        "mount --bind {} /etc/resolv.conf && exec \"$@\"",
        resolv.display()
    );
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
            BIN,
        ])
        .args([
            "run",
            "--agent",
            "package-fetcher",
            "--user",
            "nobody",
            "--",
            "node",
            "-e",
            &node,
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !(text.starts_with("403 ") && text.contains("\"agent\":\"package-fetcher\"")) {
        bail!(
            "a Node agent under the example policy was not answered by Airlock: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn check_removed() -> anyhow::Result<()> {
    let mut left = Vec::new();
    if Path::new("/sys/fs/bpf/airlock").exists() {
        left.push("pinned programs in /sys/fs/bpf/airlock".to_string());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    if let Some(mount) = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(str::to_owned))?
    }) {
        let slice = Path::new(&mount).join("airlock.slice");
        if slice.exists() {
            left.push(format!("cgroup {}", slice.display()));
        }
    }
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.starts_with(BIN) && cmdline.contains(" daemon") {
            left.push(format!(
                "process {} ({cmdline})",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    for file in [BIN, LOGROTATE] {
        if Path::new(file).exists() {
            left.push(file.to_string());
        }
    }
    if !left.is_empty() {
        bail!("uninstall left things behind: {}", left.join(", "));
    }
    say("uninstalled: no pinned program, cgroup, process or binary left");
    Ok(())
}
