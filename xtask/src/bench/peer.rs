//! The peer the HTTP benchmark holds Airlock against, in the same run:
//! nginx as a TLS-terminating reverse proxy in front of the origin, on
//! Airlock's core. It does what Airlock does for an allowed request that
//! carries no credential (terminate the client's TLS, forward over a
//! pooled, verified TLS connection, stream the answer back, log one line),
//! tuned as such proxies are: keep-alive upstream pool, 64 KiB buffers,
//! streaming instead of buffering, TCP_NODELAY, a buffered access log. It
//! captures nothing: the load generator dials it as its explicit target.

use std::path::Path;

use super::{
    daemon::free_port,
    origin::{HOST, Nginx, nginx_preamble},
};

pub struct Peer {
    pub port: u16,
    nginx: Nginx,
}

impl Peer {
    /// Starts the proxy pinned to `cpu`, forwarding to the origin at
    /// `origin_port`. It serves the origin's own certificate (the load
    /// generator trusts the origin's CA) and verifies the origin against
    /// that CA, as Airlock does with `upstream_ca`.
    pub fn start(dir: &Path, cpu: u32, origin_port: u16) -> anyhow::Result<Peer> {
        let port = free_port()?;
        let nginx = Nginx::start(dir, "peer", &conf(dir, port, origin_port), port, cpu)?;
        Ok(Peer { port, nginx })
    }

    pub fn pid(&self) -> u32 {
        self.nginx.pid()
    }
}

fn conf(dir: &Path, port: u16, origin_port: u16) -> String {
    let d = dir.display();
    let preamble = nginx_preamble(dir, "peer");
    format!(
        r#"{preamble}    access_log {d}/peer-access.log combined buffer=64k flush=1s;
    tcp_nodelay on;
    upstream origin {{
        server 127.0.0.1:{origin_port};
        keepalive 64;
        keepalive_requests 10000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {HOST};
        ssl_certificate {d}/chain.pem;
        ssl_certificate_key {d}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        client_max_body_size 4m;
        location / {{
            proxy_pass https://origin;
            proxy_request_buffering off;
            proxy_http_version 1.1;
            proxy_set_header Host {HOST};
            proxy_set_header Connection "";
            proxy_ssl_server_name on;
            proxy_ssl_name {HOST};
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {d}/ca.pem;
            proxy_ssl_session_reuse on;
            proxy_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 4 64k;
            proxy_busy_buffers_size 128k;
        }}
    }}
}}
"#
    )
}
