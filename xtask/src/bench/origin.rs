//! The origin the HTTP benchmark talks to: nginx on loopback, serving
//! HTTPS with a CA of the benchmark's own, one worker, no TLS session
//! resumption (every new connection is a full handshake). It offers h2 and
//! http/1.1 by ALPN, as API servers do.

use std::{
    net::{Ipv4Addr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

use super::daemon::free_port;

pub const HOST: &str = "bench.test";
/// The same origin under a second name, which a policy binds a secret to:
/// its answers are scrubbed, and `HOST`'s are not.
pub const CRED_HOST: &str = "api.bench.test";
pub const SMALL_PATH: &str = "/small";
pub const BIG_PATH: &str = "/1m";
pub const BIG_BYTES: usize = 1 << 20;
/// Where request bodies are sent; the origin answers once it has them.
pub const UPLOAD_PATH: &str = "/upload";

pub struct Origin {
    pub port: u16,
    /// The CA the origin's certificate chains to.
    pub ca: PathBuf,
    nginx: Nginx,
}

/// CA and leaf for `HOST` and `CRED_HOST`, both ECDSA P-256 like
/// Airlock's own leaves.
fn write_pki(dir: &Path) -> anyhow::Result<()> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Airlock benchmark origin CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let leaf_key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec![HOST.to_owned(), CRED_HOST.to_owned()])?
        .signed_by(&leaf_key, &ca_cert, &ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    std::fs::write(dir.join("chain.pem"), leaf.pem() + &ca_cert.pem())?;
    std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem())?;
    Ok(())
}

/// What every nginx of the benchmark's shares: one process, one worker,
/// its files in `dir` under `name`, and keep-alive that outlasts any run.
/// The `http` block is left open for the caller's directives.
pub fn nginx_preamble(dir: &Path, name: &str) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/{name}.pid;
error_log {d}/{name}-error.log warn;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {d}/tmp;
    proxy_temp_path {d}/tmp;
    fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp;
    scgi_temp_path {d}/tmp;
    keepalive_requests 10000000;
    keepalive_timeout 60s;
"#
    )
}

/// `inner` is a plain-HTTP port on which the origin answers uploads once
/// it has read them.
fn nginx_conf(dir: &Path, port: u16, inner: u16) -> String {
    let d = dir.display();
    let preamble = nginx_preamble(dir, "origin");
    format!(
        r#"{preamble}    access_log off;
    open_file_cache max=16;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        server_name {HOST} {CRED_HOST};
        ssl_certificate {d}/chain.pem;
        ssl_certificate_key {d}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        location = {SMALL_PATH} {{
            default_type text/plain;
            return 200 "hello from the benchmark origin\n";
        }}
        # A `return` would answer before the body is read, so that a
        # client's next upload could race the rest of this one. Proxied,
        # with request buffering on, nginx reads the whole body (in memory)
        # first; the body itself is not passed on.
        location = {UPLOAD_PATH} {{
            client_max_body_size 4m;
            client_body_buffer_size 2m;
            proxy_pass http://127.0.0.1:{inner};
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }}
        location / {{
            root {d}/www;
        }}
    }}
    server {{
        listen 127.0.0.1:{inner};
        location / {{
            default_type text/plain;
            return 200 "received\n";
        }}
    }}
}}
"#
    )
}

impl Origin {
    /// Starts nginx pinned to `cpu`.
    pub fn start(dir: &Path, cpu: u32) -> anyhow::Result<Origin> {
        if Command::new("nginx").arg("-v").output().is_err() {
            bail!("nginx is not installed: apt-get install nginx-light (the benchmark's origin)");
        }
        std::fs::create_dir_all(dir.join("www"))?;
        std::fs::create_dir_all(dir.join("tmp"))?;
        write_pki(dir)?;
        let body: Vec<u8> = (0..BIG_BYTES).map(|i| b'a' + (i % 26) as u8).collect();
        std::fs::write(dir.join("www").join(&BIG_PATH[1..]), body)?;
        let port = free_port()?;
        let inner = free_port()?;
        let nginx = Nginx::start(dir, "origin", &nginx_conf(dir, port, inner), port, cpu)?;
        Ok(Origin {
            port,
            ca: dir.join("ca.pem"),
            nginx,
        })
    }

    pub fn pid(&self) -> u32 {
        self.nginx.pid()
    }
}

/// One nginx process (no master, one worker) of the benchmark's, pinned to
/// a CPU, stopped gracefully on drop.
pub struct Nginx {
    child: Child,
}

impl Nginx {
    /// Writes `conf` as `<name>.conf` in `dir` and starts nginx on it,
    /// waiting until it listens on `port`.
    pub fn start(dir: &Path, name: &str, conf: &str, port: u16, cpu: u32) -> anyhow::Result<Nginx> {
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, conf)?;
        let error_log = dir.join(format!("{name}-error.log"));
        let child = Command::new("taskset")
            .args(["-c", &cpu.to_string(), "nginx", "-e"])
            .arg(&error_log)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting nginx ({name})"))?;
        let nginx = Nginx { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "nginx ({name}) did not listen on 127.0.0.1:{port}; see {}",
                    error_log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(nginx)
    }

    /// taskset execs nginx: this is nginx's own pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
