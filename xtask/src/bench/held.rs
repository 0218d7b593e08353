//! What a proxy's memory pays per connection an agent holds open: a
//! Python client opens N HTTPS keep-alive connections, makes one request
//! on each, and keeps them all open while the proxy's resident set is
//! read, against the same read before it began.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::meter::status_kib;

/// argv: host port cafile path count. Dials 127.0.0.1 (the name is only
/// for SNI and Host: nothing here may ask this host's resolver), reads
/// each answer whole, prints `held N` and holds everything until stdin
/// closes.
const CLIENT: &str = r#"
import socket, ssl, sys
host, port, cafile, path, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
ctx = ssl.create_default_context(cafile=cafile)
request = f'GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n'.encode()
held = []
for _ in range(n):
    s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', port), timeout=10), server_hostname=host)
    s.sendall(request)
    data = b''
    while b'\r\n\r\n' not in data:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit('connection closed before the answer')
        data += chunk
    head, body = data.split(b'\r\n\r\n', 1)
    if not head.startswith(b'HTTP/1.1 200'):
        sys.exit('answer: ' + head.split(b'\r\n')[0].decode())
    length = next(int(l.split(b':')[1]) for l in head.split(b'\r\n') if l.lower().startswith(b'content-length:'))
    while len(body) < length:
        body += s.recv(65536)
    held.append(s)
print('held', len(held), flush=True)
sys.stdin.read()
"#;

/// No client may take longer than this to open its connections.
const OPEN_LIMIT: Duration = Duration::from_secs(120);
/// How long the held connections settle before the proxy's RSS is read.
const SETTLE: Duration = Duration::from_millis(500);

/// The proxy's VmRSS before the client began and while it held its
/// connections, in KiB.
pub struct HeldRss {
    pub before: u64,
    pub held: u64,
}

impl HeldRss {
    pub fn per_connection_kib(&self, n: u32) -> f64 {
        self.held.saturating_sub(self.before) as f64 / f64::from(n)
    }
}

/// Runs `python` (a command that ends in the interpreter: `taskset -c N
/// python3`, possibly under `airlock run`) with the client, and reads
/// `proxy`'s resident set.
pub fn measure(
    mut python: Command,
    proxy: u32,
    args: [&str; 4],
    count: u32,
) -> anyhow::Result<HeldRss> {
    let before = status_kib(proxy, "VmRSS")?;
    let mut child = python
        .arg("-c")
        .arg(CLIENT)
        .args(args)
        .arg(count.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the held-connections client (python3)")?;
    let stdout = child.stdout.take().context("the client's stdout")?;
    // The client blocks on stdin until dropped, so a reader thread with a
    // deadline keeps a stuck client from holding the bench.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let started = Instant::now();
    let line = rx.recv_timeout(OPEN_LIMIT).unwrap_or_default();
    let held = if line.trim() == format!("held {count}") {
        std::thread::sleep(SETTLE);
        Some(status_kib(proxy, "VmRSS")?)
    } else {
        None
    };
    drop(child.stdin.take());
    let _ = child.kill();
    let output = child.wait_with_output()?;
    match held {
        Some(held) => Ok(HeldRss { before, held }),
        None => bail!(
            "the client did not hold {count} connections within {}s ({:?}): {}",
            started.elapsed().as_secs(),
            line.trim(),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}
