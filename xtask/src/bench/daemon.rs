//! A daemon of the benchmark's own: temp dir, its own cgroup root, pins and
//! ports, so a benchmark never touches an installed Airlock.

use std::{
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub struct BenchDaemon {
    pub dir: PathBuf,
    /// Where the admin socket and the audit journal are.
    run_dir: PathBuf,
    pub config: PathBuf,
    pub proxy_port: u16,
    airlock: PathBuf,
    child: Child,
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

impl BenchDaemon {
    /// `policies` are (agent, policy text) pairs. `extra_config` is
    /// appended to the generated config (YAML lines). With `cpu`, the
    /// daemon starts pinned there, so its runtime sizes itself to that one
    /// core rather than to the machine.
    pub fn start(
        airlock: &Path,
        policies: &[(&str, &str)],
        extra_config: &str,
        cpu: Option<u32>,
    ) -> anyhow::Result<BenchDaemon> {
        let id = std::process::id();
        let dir = std::env::temp_dir().join(format!("airlock-bench-{id}"));
        std::fs::create_dir_all(dir.join("policies"))?;
        for (agent, policy) in policies {
            std::fs::write(dir.join(format!("policies/{agent}.yaml")), policy)?;
        }
        // The runtime folder on tmpfs, as /run is where the daemon is
        // installed: the audit journal is a shared mapping of a file there.
        let shm = Path::new("/dev/shm");
        let run_dir =
            if shm.is_dir() { shm } else { dir.as_path() }.join(format!("airlock-bench-run-{id}"));
        std::fs::create_dir_all(&run_dir)?;
        let config = dir.join("airlock.yaml");
        let proxy_port = free_port()?;
        std::fs::write(
            &config,
            format!(
                "cgroup_root: airlock-bench-{id}.slice\npolicy_dir: {d}/policies\nstate_dir: {d}/state\nproxy_port: {proxy_port}\ndns_port: {}\nmetrics_addr: 127.0.0.1:{}\naudit_log: {d}/audit.jsonl\nadmin_socket: {r}/admin.sock\nbpf_pin_dir: /sys/fs/bpf/airlock-bench-{id}\n{extra_config}",
                free_port()?,
                free_port()?,
                d = dir.display(),
                r = run_dir.display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("daemon.log"))?;
        let mut cmd = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(airlock);
                c
            }
            None => Command::new(airlock),
        };
        // taskset execs the daemon: the child's pid is the daemon's.
        let child = cmd
            .args(["daemon", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the daemon")?;
        let daemon = BenchDaemon {
            dir,
            run_dir,
            config,
            proxy_port,
            airlock: airlock.to_path_buf(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !daemon.healthy() {
            if Instant::now() > deadline {
                bail!(
                    "bench daemon not healthy; see {}",
                    daemon.dir.join("daemon.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(daemon)
    }

    fn healthy(&self) -> bool {
        Command::new(&self.airlock)
            .args(["status", "--json", "--config"])
            .arg(&self.config)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `program args...` as `agent`, in the agent's cgroup.
    pub fn agent(&self, agent: &str, program: &Path) -> Command {
        let mut c = Command::new(&self.airlock);
        c.args(["run", "--config"])
            .arg(&self.config)
            .args(["--agent", agent, "--allow-root", "--"])
            .arg(program);
        c
    }

    /// `airlock secret set NAME --placeholder PLACEHOLDER`, the value on
    /// stdin.
    pub fn secret_set(&self, name: &str, placeholder: &str, value: &str) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut child = Command::new(&self.airlock)
            .args([
                "secret",
                "set",
                name,
                "--placeholder",
                placeholder,
                "--config",
            ])
            .arg(&self.config)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("secret set's stdin")?
            .write_all(value.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "airlock secret set: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The CA certificate agents trust.
    pub fn ca_path(&self) -> anyhow::Result<PathBuf> {
        let out = Command::new(&self.airlock)
            .args(["ca", "path", "--config"])
            .arg(&self.config)
            .output()?;
        if !out.status.success() {
            bail!("airlock ca path: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = Command::new(&self.airlock)
            .args(["detach", "--config"])
            .arg(&self.config)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}
