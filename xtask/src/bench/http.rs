//! `cargo xtask bench http`: oha against nginx over HTTPS, directly, as
//! an agent through Airlock, and through a peer (nginx as a TLS reverse
//! proxy), in one run.
//!
//! Layout on a 2-core machine: oha and the origin share core 0, the proxy
//! (Airlock or the peer) has core 1 ("the proxy on its own core"), except
//! for the one-connection latency scenario, where it joins core 0
//! ("sharing a core"). CPU is read from a cgroup per process; RSS is the
//! daemon's VmHWM at the end.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;

use super::{
    Binaries,
    daemon::BenchDaemon,
    held,
    meter::{Meter, cpu_busy_usec, status_kib},
    origin::{BIG_BYTES, BIG_PATH, CRED_HOST, HOST, Origin, SMALL_PATH, UPLOAD_PATH},
    peer::Peer,
};
use crate::run as run_cmd;

#[derive(Args)]
pub struct HttpArgs {
    /// Rounds per scenario, alternating direct and Airlock; figures are
    /// medians of rounds.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Requests per keep-alive run at 32 connections; the other scenarios
    /// scale from it.
    #[arg(long, default_value_t = 30_000)]
    requests: u32,
    /// 1 MiB responses per run.
    #[arg(long, default_value_t = 400)]
    big: u32,
    /// Run only these scenarios (repeatable); all by default.
    #[arg(long, value_enum)]
    only: Vec<Kind>,
    /// Leave out the peer (nginx as a TLS reverse proxy on Airlock's core).
    #[arg(long)]
    no_peer: bool,
    /// Connections the `held` scenario holds open at once (at most the
    /// daemon's max_connections_per_agent).
    #[arg(long, default_value_t = 500)]
    held: u32,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Kind {
    /// Keep-alive, small responses, 32 connections.
    Ka32,
    /// Keep-alive, small responses, 1 connection, Airlock sharing the
    /// load generator's core.
    Ka1,
    /// A new full TLS handshake per request.
    Fresh,
    /// 1 MiB responses.
    Big,
    /// Keep-alive at 32 connections as `ka32`, and 1 MiB responses as
    /// `big`, but with the origin passed through (TLS relayed, not
    /// terminated): what capture and a byte relay on the other core cost,
    /// the floor under any intercepting proxy in this layout.
    Relay,
    /// Connections held open at once, one request on each: the proxy's
    /// memory per connection an agent holds (Python's ssl as the client).
    Held,
    /// Keep-alive at 32 connections and 1 MiB responses, as `ka32` and
    /// `big`, but as an agent holds an API key: a placeholder in each
    /// request's Authorization header, swapped for the key, and every
    /// response scanned for the key (and its encodings) before the agent
    /// reads it. Direct, oha sends the key itself. The origin is named
    /// `CRED_HOST` here, so that only these scenarios are scrubbed.
    Cred,
    /// 1 MiB request bodies POSTed (a long prompt), as JSON, which the
    /// agent's policy makes Airlock read for a `_method` claim (its rules
    /// name methods), and as `application/octet-stream`, which no
    /// framework reads one from: what that reading costs.
    Upload,
}

/// The daemon's resident set, split into heap and mapped files (mostly
/// its own binary's pages).
struct Rss {
    total: u64,
    anon: u64,
    file: u64,
}

impl Rss {
    fn read(pid: u32) -> anyhow::Result<Rss> {
        Ok(Rss {
            total: status_kib(pid, "VmRSS")?,
            anon: status_kib(pid, "RssAnon")?,
            file: status_kib(pid, "RssFile")?,
        })
    }

    fn show(&self) -> String {
        format!(
            "{:.1} MiB ({:.1} + {:.1})",
            mib(self.total),
            mib(self.anon),
            mib(self.file)
        )
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// No single oha run may take longer than this.
const RUN_LIMIT: Duration = Duration::from_secs(180);

#[derive(Clone, Copy, PartialEq)]
enum Via {
    Direct,
    Airlock,
    /// Through Airlock as an agent whose policy passes the origin through.
    Relay,
    /// Through the peer, dialled directly (no capture).
    Peer,
    /// Through Airlock as an agent whose policy binds a secret to the
    /// origin.
    Credential,
}

/// The agent whose policy intercepts the origin, and the one whose policy
/// passes it through.
const AGENT: &str = "bench";
const RELAY_AGENT: &str = "bench-relay";
const CRED_AGENT: &str = "bench-cred";
/// The key `Kind::Cred` swaps in: made up, as long as a real API key.
const CRED_SECRET: &str = "bench-key-7f3a9c2e51d84b06a1e5c9d7f2b40e68";
const CRED_PLACEHOLDER: &str = "airlock-ph-bench-key";

#[derive(Clone, Copy)]
struct Run {
    count: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    proxy_cpu_us: u64,
    origin_cpu_us: u64,
    /// The load core's busy time (oha, nginx, and the kernel's work there).
    load_cpu_us: u64,
}

struct Scenario<'a> {
    name: &'a str,
    path: &'a str,
    requests: u32,
    connections: u32,
    keepalive: bool,
    /// Requests carry an API key (`Kind::Cred`), to `CRED_HOST`.
    credential: bool,
    /// Requests are POSTs of this file, with this Content-Type.
    upload: Option<(&'a Path, &'a str)>,
}

/// The figures of one scenario: direct, through Airlock (or relayed), and
/// through the peer where it ran.
struct Sides {
    direct: Run,
    airlock: Run,
    peer: Option<Run>,
    /// Airlock against the peer within each round, whose runs are seconds
    /// apart: the machine's drift between rounds, which moves the medians
    /// of both, cancels out of these.
    paired: Option<Paired>,
}

/// Medians over the rounds of Airlock's figure against the peer's.
struct Paired {
    cpu_ratio: f64,
    p50_gap_us: f64,
    p99_gap_us: f64,
}

impl Paired {
    fn of(airlock: &[Run], peer: &[Run]) -> Option<Paired> {
        if airlock.is_empty() || airlock.len() != peer.len() {
            return None;
        }
        let paired = |f: &dyn Fn(&Run, &Run) -> f64| {
            let mut xs: Vec<f64> = airlock.iter().zip(peer).map(|(a, p)| f(a, p)).collect();
            xs.sort_by(f64::total_cmp);
            xs[xs.len() / 2]
        };
        let cpu = |r: &Run| per_item(r.proxy_cpu_us, r.count);
        Some(Paired {
            cpu_ratio: paired(&|a, p| cpu(a) / cpu(p)),
            p50_gap_us: paired(&|a, p| a.p50_us - p.p50_us),
            p99_gap_us: paired(&|a, p| a.p99_us - p.p99_us),
        })
    }
}

struct Bench {
    daemon: BenchDaemon,
    origin: Origin,
    /// The peer and its CPU meter, unless `--no-peer`.
    peer: Option<(Peer, Meter)>,
    proxy_meter: Meter,
    origin_meter: Meter,
    airlock_ca: PathBuf,
    oha: PathBuf,
    taskset: PathBuf,
    load_cpu: u32,
    proxy_cpu: u32,
    out: PathBuf,
    /// The body `Kind::Upload` sends.
    upload: PathBuf,
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let home_cargo = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin"));
    std::env::split_paths(&path)
        .chain(home_cargo)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

pub fn http(bins: &Binaries, args: HttpArgs) -> anyhow::Result<()> {
    let oha = on_path("oha").context("oha is not installed: cargo install oha --locked")?;
    let taskset = on_path("taskset").context("taskset is not installed (util-linux)")?;
    let (load_cpu, proxy_cpu) = if cpus() >= 2 { (0, 1) } else { (0, 0) };

    let dir = std::env::temp_dir().join(format!("airlock-bench-http-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // The meters first, so that on an early return the processes they
    // measure are ended (dropped) before their cgroups are removed.
    let origin_meter = Meter::create("origin")?;
    let proxy_meter = Meter::create("proxy")?;
    let origin = Origin::start(&dir, load_cpu)?;
    origin_meter.adopt(origin.pid())?;

    let policy = format!(
        "agent: {AGENT}\nrules:\n  - host: {HOST}:{port}\n    methods: [GET]\n    paths: [\"{SMALL_PATH}\", \"{BIG_PATH}\"]\n  - host: {HOST}:{port}\n    methods: [POST]\n    paths: [\"{UPLOAD_PATH}\"]\n",
        port = origin.port
    );
    let relay_policy = format!(
        "agent: {RELAY_AGENT}\npassthrough:\n  - \"{HOST}:{}\"\n",
        origin.port
    );
    let cred_policy = format!(
        "agent: {CRED_AGENT}\nrules:\n  - host: {CRED_HOST}:{}\n    methods: [GET]\n    paths: [\"{SMALL_PATH}\", \"{BIG_PATH}\"]\n    credentials:\n      - secret: bench-key\n",
        origin.port
    );
    let extra = format!(
        "resolve:\n  {HOST}: 127.0.0.1\n  {CRED_HOST}: 127.0.0.1\nupstream_ca: [{}]\nagent_tls_resumption: false\n",
        origin.ca.display()
    );
    let daemon = BenchDaemon::start(
        &bins.airlock,
        &[
            (AGENT, &policy),
            (RELAY_AGENT, &relay_policy),
            (CRED_AGENT, &cred_policy),
        ],
        &extra,
        Some(proxy_cpu),
    )?;
    daemon.secret_set("bench-key", CRED_PLACEHOLDER, CRED_SECRET)?;
    proxy_meter.adopt(daemon.pid())?;
    let airlock_ca = daemon.ca_path()?;
    let peer = if args.no_peer {
        None
    } else {
        let peer = Peer::start(&dir, proxy_cpu, origin.port)?;
        let meter = Meter::create("peer")?;
        meter.adopt(peer.pid())?;
        Some((peer, meter))
    };
    let bench = Bench {
        daemon,
        origin,
        peer,
        proxy_meter,
        origin_meter,
        airlock_ca,
        oha,
        taskset,
        load_cpu,
        proxy_cpu,
        out: dir.join("oha.json"),
        upload: dir.join("upload.json"),
    };
    let result = bench.all(&args);
    drop(bench);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

impl Bench {
    fn all(&self, args: &HttpArgs) -> anyhow::Result<()> {
        let pid = self.daemon.pid();
        let idle = Rss::read(pid)?;
        // Warm both paths: leaf minted, upstream pool filled, caches hot.
        for via in [
            Via::Direct,
            Via::Airlock,
            Via::Relay,
            Via::Peer,
            Via::Credential,
        ] {
            if via != Via::Peer || self.peer.is_some() {
                let mut s = self.scenario("warm-up", SMALL_PATH, 500, 8, true);
                s.credential = via == Via::Credential;
                self.oha(via, &s)?;
            }
        }
        let wanted = |k: Kind| args.only.is_empty() || args.only.contains(&k);
        let mut rows = Vec::new();
        if wanted(Kind::Ka32) {
            let s = self.scenario("keep-alive", SMALL_PATH, args.requests, 32, true);
            let r = self.rounds(&s, args.rounds, Via::Airlock)?;
            rows.push(row(&s, "requests/s", &r, |r| r.rps));
            rows.push(cpu_row(&s, "proxy CPU per request", "µs", &r, |r| {
                per_item(r.proxy_cpu_us, r.count)
            }));
            rows.push(load_row(&s, &r));
            rows.extend(latency_rows(&s, &r));
            rows.extend(paired_rows(&s, &r));
        }
        if wanted(Kind::Ka1) {
            let s = self.scenario("keep-alive", SMALL_PATH, args.requests / 4, 1, true);
            self.pin_proxies(self.load_cpu)?;
            let runs = self.rounds(&s, args.rounds, Via::Airlock);
            self.pin_proxies(self.proxy_cpu)?;
            let r = runs?;
            rows.push(row(&s, "requests/s", &r, |r| r.rps));
            rows.push(cpu_row(&s, "proxy CPU per request", "µs", &r, |r| {
                per_item(r.proxy_cpu_us, r.count)
            }));
            rows.extend(latency_rows(&s, &r));
            rows.extend(paired_rows(&s, &r));
        }
        if wanted(Kind::Fresh) {
            let s = self.scenario(
                "new TLS connection per request",
                SMALL_PATH,
                args.requests / 6,
                8,
                false,
            );
            let r = self.rounds(&s, args.rounds, Via::Airlock)?;
            rows.push(row(&s, "connections/s", &r, |r| r.rps));
            // The origin's own CPU per connection, in the direct run, is
            // the yardstick for what a proxy's handshakes cost.
            let origin = per_item(r.direct.origin_cpu_us, r.direct.count);
            let proxy = |run: &Run| per_item(run.proxy_cpu_us, run.count);
            let peer = r.peer.as_ref().map_or(String::from("| | |"), |p| {
                format!("| {:.0} µs | {:.2}x |", proxy(p), proxy(p) / origin)
            });
            rows.push(format!(
                "| {} | CPU per connection: the origin's (direct column) vs the proxy's | {origin:.0} µs | {:.0} µs | {:.2}x {peer}",
                s.label(),
                proxy(&r.airlock),
                proxy(&r.airlock) / origin
            ));
        }
        if wanted(Kind::Big) {
            let s = self.scenario("1 MiB responses", BIG_PATH, args.big, 4, true);
            let r = self.rounds(&s, args.rounds, Via::Airlock)?;
            let mib = BIG_BYTES as f64 / (1024.0 * 1024.0);
            rows.push(row(&s, "MiB/s", &r, |r| r.rps * mib));
            rows.push(cpu_row(&s, "proxy CPU per MiB", "ms", &r, |r| {
                per_item(r.proxy_cpu_us, r.count) / 1000.0 / mib
            }));
        }
        if wanted(Kind::Cred) {
            let mut s = self.scenario(
                "keep-alive, with an API key",
                SMALL_PATH,
                args.requests,
                32,
                true,
            );
            s.credential = true;
            let r = self.rounds(&s, args.rounds, Via::Credential)?;
            rows.push(row(&s, "requests/s", &r, |r| r.rps));
            rows.push(cpu_row(&s, "proxy CPU per request", "µs", &r, |r| {
                per_item(r.proxy_cpu_us, r.count)
            }));
            rows.extend(latency_rows(&s, &r));
            let mut s = self.scenario(
                "1 MiB responses, with an API key",
                BIG_PATH,
                args.big,
                4,
                true,
            );
            s.credential = true;
            let r = self.rounds(&s, args.rounds, Via::Credential)?;
            let mib = BIG_BYTES as f64 / (1024.0 * 1024.0);
            rows.push(row(&s, "MiB/s", &r, |r| r.rps * mib));
            rows.push(cpu_row(&s, "proxy CPU per MiB", "ms", &r, |r| {
                per_item(r.proxy_cpu_us, r.count) / 1000.0 / mib
            }));
        }
        // The peak of the scenarios that intercept, before the uploads'
        // bodies in flight and the relay's buffers (16 KiB each way per
        // tunnel) add theirs: the loads the RSS aim is for.
        let intercept_peak = status_kib(pid, "VmHWM")?;
        let mut upload_peak = None;
        if wanted(Kind::Upload) {
            std::fs::write(&self.upload, prompt_json(BIG_BYTES))?;
            let mib = BIG_BYTES as f64 / (1024.0 * 1024.0);
            for (name, content_type) in [
                (
                    "1 MiB JSON uploads, read for a method claim",
                    "application/json",
                ),
                ("1 MiB uploads, not read", "application/octet-stream"),
            ] {
                let mut s = self.scenario(name, UPLOAD_PATH, args.big, 4, true);
                s.upload = Some((&self.upload, content_type));
                let r = self.rounds(&s, args.rounds, Via::Airlock)?;
                rows.push(row(&s, "MiB/s", &r, |r| r.rps * mib));
                rows.push(cpu_row(&s, "proxy CPU per MiB", "ms", &r, |r| {
                    per_item(r.proxy_cpu_us, r.count) / 1000.0 / mib
                }));
            }
            upload_peak = Some(status_kib(pid, "VmHWM")?);
        }
        if wanted(Kind::Relay) {
            let s = self.scenario(
                "keep-alive, TLS passed through",
                SMALL_PATH,
                args.requests,
                32,
                true,
            );
            let r = self.rounds(&s, args.rounds, Via::Relay)?;
            rows.push(row(&s, "requests/s", &r, |r| r.rps));
            rows.push(cpu_row(
                &s,
                "proxy CPU per request (relay only)",
                "µs",
                &r,
                |r| per_item(r.proxy_cpu_us, r.count),
            ));
            rows.push(load_row(&s, &r));
            let s = self.scenario(
                "1 MiB responses, TLS passed through",
                BIG_PATH,
                args.big,
                4,
                true,
            );
            let r = self.rounds(&s, args.rounds, Via::Relay)?;
            let mib = BIG_BYTES as f64 / (1024.0 * 1024.0);
            rows.push(row(&s, "MiB/s", &r, |r| r.rps * mib));
            rows.push(cpu_row(
                &s,
                "proxy CPU per MiB (relay only)",
                "ms",
                &r,
                |r| per_item(r.proxy_cpu_us, r.count) / 1000.0 / mib,
            ));
        }
        // The eBPF loader (and its parse of the kernel's BTF) runs in a
        // child process, so the daemon's own peak is set by serving.
        let after = Rss::read(pid)?;
        let peer_rss = |field| {
            self.peer
                .as_ref()
                .map(|(p, _)| status_kib(p.pid(), field).map(|kib| format!("{:.1} MiB", mib(kib))))
                .transpose()
                .map(Option::unwrap_or_default)
        };
        rows.push(format!(
            "| proxy | RSS idle after start-up (VmRSS: anonymous + file) | | {} | | | |",
            idle.show()
        ));
        rows.push(format!(
            "| proxy | peak RSS (VmHWM) of the intercepting scenarios | | {:.1} MiB | | {} | |",
            mib(intercept_peak),
            peer_rss("VmHWM")?
        ));
        if let Some(kib) = upload_peak {
            rows.push(format!(
                "| proxy | peak RSS (VmHWM) with the uploads too | | {:.1} MiB | | | |",
                mib(kib)
            ));
        }
        if wanted(Kind::Relay) {
            rows.push(format!(
                "| proxy | peak RSS (VmHWM) with the relay's tunnels too | | {:.1} MiB | | | |",
                mib(status_kib(pid, "VmHWM")?)
            ));
        }
        rows.push(format!(
            "| proxy | RSS after the runs (VmRSS: anonymous + file) | | {} | | {} | |",
            after.show(),
            peer_rss("VmRSS")?
        ));
        // Last: the connections it holds would raise the peak and the
        // resident set the rows above report.
        if wanted(Kind::Held) {
            rows.push(self.held_row(args.held)?);
        }

        println!(
            "\nHTTPS, {} -> nginx (1 worker, no session resumption); Airlock with agent TLS resumption off; {} rounds, medians",
            oha_version(&self.oha),
            args.rounds
        );
        println!(
            "oha and the origin on CPU {}, the proxy (Airlock, or the peer: nginx as a TLS reverse proxy) on CPU {} (CPU {} for the 1-connection rows)\n",
            self.load_cpu, self.proxy_cpu, self.load_cpu
        );
        println!(
            "| scenario | metric | direct | through Airlock | Airlock / direct | through nginx | nginx / direct |"
        );
        println!("|---|---|---|---|---|---|---|");
        for r in rows {
            println!("{r}");
        }
        Ok(())
    }

    /// Airlock's, and the peer's, resident set per connection held open.
    fn held_row(&self, count: u32) -> anyhow::Result<String> {
        let python = on_path("python3").context("python3 is not installed")?;
        let on_load_core = |mut cmd: Command| {
            cmd.args(["-c", &self.load_cpu.to_string()]).arg(&python);
            cmd
        };
        let origin_port = self.origin.port.to_string();
        let airlock = held::measure(
            on_load_core(self.daemon.agent(AGENT, &self.taskset)),
            self.daemon.pid(),
            [
                HOST,
                &origin_port,
                &self.airlock_ca.to_string_lossy(),
                SMALL_PATH,
            ],
            count,
        )?;
        let peer = match &self.peer {
            Some((peer, _)) => {
                let held = held::measure(
                    on_load_core(Command::new(&self.taskset)),
                    peer.pid(),
                    [
                        HOST,
                        &peer.port.to_string(),
                        &self.origin.ca.to_string_lossy(),
                        SMALL_PATH,
                    ],
                    count,
                )?;
                format!("{:.1} KiB", held.per_connection_kib(count))
            }
            None => String::new(),
        };
        Ok(format!(
            "| held open, {count} conn | proxy RSS per connection held (VmRSS while held, less before: {:.1} → {:.1} MiB) | | {:.1} KiB | | {peer} | |",
            mib(airlock.before),
            mib(airlock.held),
            airlock.per_connection_kib(count),
        ))
    }

    fn scenario<'a>(
        &self,
        name: &'a str,
        path: &'a str,
        requests: u32,
        connections: u32,
        keepalive: bool,
    ) -> Scenario<'a> {
        Scenario {
            name,
            path,
            requests,
            connections,
            keepalive,
            credential: false,
            upload: None,
        }
    }

    /// Moves every thread of the daemon and of the peer to `cpu` (new
    /// threads inherit it).
    fn pin_proxies(&self, cpu: u32) -> anyhow::Result<()> {
        let peer = self.peer.as_ref().map(|(p, _)| p.pid());
        for pid in std::iter::once(self.daemon.pid()).chain(peer) {
            run_cmd(
                Command::new(&self.taskset)
                    .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
                    .stdout(Stdio::null()),
            )?;
        }
        Ok(())
    }

    /// `rounds` alternating runs: direct, `via`, and the peer (when it
    /// runs and `via` intercepts); the median of each figure per side.
    fn rounds(&self, s: &Scenario, rounds: u32, via: Via) -> anyhow::Result<Sides> {
        let with_peer = via == Via::Airlock && self.peer.is_some();
        let (mut direct, mut airlock, mut peer) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds.max(1) {
            direct.push(self.oha(Via::Direct, s)?);
            airlock.push(self.oha(via, s)?);
            if with_peer {
                peer.push(self.oha(Via::Peer, s)?);
            }
        }
        Ok(Sides {
            direct: median(&direct),
            airlock: median(&airlock),
            peer: with_peer.then(|| median(&peer)),
            paired: Paired::of(&airlock, &peer),
        })
    }

    fn oha(&self, via: Via, s: &Scenario) -> anyhow::Result<Run> {
        // The peer is dialled as an explicit target; the agents dial the
        // origin and are captured.
        let (port, dial) = match (via, &self.peer) {
            (Via::Peer, Some((peer, _))) => (peer.port, peer.port),
            (Via::Peer, None) => bail!("the peer is not running"),
            _ => (self.origin.port, self.origin.port),
        };
        let mut cmd = match via {
            Via::Direct | Via::Peer => Command::new(&self.taskset),
            Via::Airlock => self.daemon.agent(AGENT, &self.taskset),
            Via::Relay => self.daemon.agent(RELAY_AGENT, &self.taskset),
            Via::Credential => self.daemon.agent(CRED_AGENT, &self.taskset),
        };
        let host = if s.credential { CRED_HOST } else { HOST };
        cmd.args(["-c", &self.load_cpu.to_string()])
            .arg(&self.oha)
            .arg(format!("https://{host}:{port}{}", s.path))
            .args(["--no-tui", "--output-format", "json", "-o"])
            .arg(&self.out)
            .args([
                "-n",
                &s.requests.to_string(),
                "-c",
                &s.connections.to_string(),
            ])
            .args(["--connect-to", &format!("{host}:{port}:127.0.0.1:{dial}")])
            .arg("--cacert")
            .arg(match via {
                // Passed through, the agent talks TLS with the origin
                // itself; the peer serves the origin's certificate.
                Via::Direct | Via::Relay | Via::Peer => &self.origin.ca,
                Via::Airlock | Via::Credential => &self.airlock_ca,
            });
        if s.credential {
            let key = if via == Via::Credential {
                CRED_PLACEHOLDER
            } else {
                CRED_SECRET
            };
            cmd.args(["-H", &format!("Authorization: Bearer {key}")]);
        }
        if !s.keepalive {
            cmd.arg("--disable-keepalive");
        }
        if let Some((body, content_type)) = s.upload {
            cmd.args(["-m", "POST", "-T", content_type, "-D"]).arg(body);
        }
        let proxy_meter = match (via, &self.peer) {
            (Via::Peer, Some((_, meter))) => meter,
            _ => &self.proxy_meter,
        };
        let (proxy0, origin0) = (proxy_meter.cpu_usec()?, self.origin_meter.cpu_usec()?);
        let load0 = cpu_busy_usec(self.load_cpu)?;
        let _ = std::fs::remove_file(&self.out);
        run_bounded(&mut cmd)?;
        let (proxy1, origin1) = (proxy_meter.cpu_usec()?, self.origin_meter.cpu_usec()?);
        let load1 = cpu_busy_usec(self.load_cpu)?;
        let text = std::fs::read_to_string(&self.out)
            .with_context(|| format!("reading oha's report {}", self.out.display()))?;
        let report: serde_json::Value = serde_json::from_str(&text).context("oha's JSON report")?;
        let ok = report["statusCodeDistribution"]["200"]
            .as_u64()
            .unwrap_or(0);
        let errors = &report["errorDistribution"];
        if ok != u64::from(s.requests) || errors.as_object().is_some_and(|e| !e.is_empty()) {
            bail!(
                "{} {}: {ok}/{} answered 200; statuses {}, errors {errors}",
                via.name(),
                s.label(),
                s.requests,
                report["statusCodeDistribution"]
            );
        }
        let secs = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
        Ok(Run {
            count: ok,
            rps: secs(&report["summary"]["requestsPerSec"]),
            p50_us: secs(&report["latencyPercentiles"]["p50"]) * 1e6,
            p99_us: secs(&report["latencyPercentiles"]["p99"]) * 1e6,
            proxy_cpu_us: proxy1 - proxy0,
            origin_cpu_us: origin1 - origin0,
            load_cpu_us: load1.saturating_sub(load0),
        })
    }
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Airlock => "through Airlock",
            Via::Relay => "passed through Airlock",
            Via::Peer => "through the peer",
            Via::Credential => "through Airlock with an API key",
        }
    }
}

impl Scenario<'_> {
    fn label(&self) -> String {
        format!("{}, {} conn", self.name, self.connections)
    }
}

fn run_bounded(cmd: &mut Command) -> anyhow::Result<()> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let deadline = Instant::now() + RUN_LIMIT;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                bail!("{cmd:?} failed ({status}): {err}");
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} exceeded {}s", RUN_LIMIT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn median(runs: &[Run]) -> Run {
    let pick = |f: fn(&Run) -> f64| {
        let mut xs: Vec<f64> = runs.iter().map(f).collect();
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    // CPU figures are per-run totals: take the median run's per-item cost
    // by scaling to the median count.
    let count = pick(|r| r.count as f64) as u64;
    let per = |f: fn(&Run) -> u64| {
        let mut xs: Vec<f64> = runs.iter().map(|r| f(r) as f64 / r.count as f64).collect();
        xs.sort_by(f64::total_cmp);
        (xs[xs.len() / 2] * count as f64) as u64
    };
    Run {
        count,
        rps: pick(|r| r.rps),
        p50_us: pick(|r| r.p50_us),
        p99_us: pick(|r| r.p99_us),
        proxy_cpu_us: per(|r| r.proxy_cpu_us),
        origin_cpu_us: per(|r| r.origin_cpu_us),
        load_cpu_us: per(|r| r.load_cpu_us),
    }
}

fn per_item(total_us: u64, count: u64) -> f64 {
    total_us as f64 / count.max(1) as f64
}

/// A figure on each side, and the proxies' ratios to direct.
fn row(s: &Scenario, metric: &str, r: &Sides, f: impl Fn(&Run) -> f64) -> String {
    let direct = f(&r.direct);
    let peer = r.peer.as_ref().map_or(String::from("| | |"), |p| {
        format!("| {:.0} | {:.2}x |", f(p), f(p) / direct)
    });
    format!(
        "| {} | {metric} | {direct:.0} | {:.0} | {:.2}x {peer}",
        s.label(),
        f(&r.airlock),
        f(&r.airlock) / direct
    )
}

/// A cost of the proxy's own, which the direct run does not have.
fn cpu_row(s: &Scenario, metric: &str, unit: &str, r: &Sides, f: impl Fn(&Run) -> f64) -> String {
    let digits = if unit == "ms" { 2 } else { 1 };
    let peer = r
        .peer
        .as_ref()
        .map_or(String::new(), |p| format!("{:.digits$} {unit}", f(p)));
    format!(
        "| {} | {metric} | | {:.digits$} {unit} | | {peer} | |",
        s.label(),
        f(&r.airlock)
    )
}

/// What each request costs the load core. Once that core is saturated,
/// direct / through is the most the throughput ratio can be.
fn load_row(s: &Scenario, r: &Sides) -> String {
    let per = |run: &Run| per_item(run.load_cpu_us, run.count);
    let direct = per(&r.direct);
    let peer = r.peer.as_ref().map_or(String::from("| | |"), |p| {
        format!("| {:.1} µs | {:.2}x |", per(p), per(p) / direct)
    });
    format!(
        "| {} | load core (CPU of oha + origin + their kernel work) per request | {direct:.1} µs | {:.1} µs | {:.2}x {peer}",
        s.label(),
        per(&r.airlock),
        per(&r.airlock) / direct
    )
}

/// Airlock against the peer round by round: the figures to compare two
/// builds by on a machine whose speed drifts.
fn paired_rows(s: &Scenario, r: &Sides) -> Vec<String> {
    let Some(p) = &r.paired else {
        return Vec::new();
    };
    vec![
        format!(
            "| {} | proxy CPU per request, Airlock / nginx, median of the rounds' ratios | | {:.2}x | | | |",
            s.label(),
            p.cpu_ratio
        ),
        format!(
            "| {} | p50 / p99 added, Airlock minus nginx, median of the rounds' differences | | {:+.0} / {:+.0} µs | | | |",
            s.label(),
            p.p50_gap_us,
            p.p99_gap_us
        ),
    ]
}

fn latency_rows(s: &Scenario, r: &Sides) -> Vec<String> {
    type Pick = fn(&Run) -> f64;
    let pick: [(&str, Pick); 2] = [("p50", |r| r.p50_us), ("p99", |r| r.p99_us)];
    pick.into_iter()
        .map(|(name, f)| {
            let direct = f(&r.direct);
            let peer = r.peer.as_ref().map_or(String::from("| | |"), |p| {
                format!("| {:.0} µs | {:+.0} µs added |", f(p), f(p) - direct)
            });
            format!(
                "| {} | {name} latency | {direct:.0} µs | {:.0} µs | {:+.0} µs added {peer}",
                s.label(),
                f(&r.airlock),
                f(&r.airlock) - direct
            )
        })
        .collect()
}

/// A chat request of about `size` bytes, as an agent sends a long
/// prompt: mostly one string, with the escapes text has (quotes, new
/// lines).
fn prompt_json(size: usize) -> Vec<u8> {
    let line = r#"The \"agent\" reads the file, then writes a summary of it.\n"#;
    let head =
        r#"{"model": "bench", "max_tokens": 1024, "messages": [{"role": "user", "content": ""#;
    let tail = r#""}]}"#;
    let mut body = head.as_bytes().to_vec();
    while body.len() + line.len() + tail.len() <= size {
        body.extend_from_slice(line.as_bytes());
    }
    body.extend_from_slice(tail.as_bytes());
    body
}

fn oha_version(oha: &Path) -> String {
    Command::new(oha)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::{Paired, Run};

    fn run(cpu_us_per_request: u64, p50_us: f64, p99_us: f64) -> Run {
        Run {
            count: 1000,
            rps: 0.0,
            p50_us,
            p99_us,
            proxy_cpu_us: cpu_us_per_request * 1000,
            origin_cpu_us: 0,
            load_cpu_us: 0,
        }
    }

    #[test]
    fn each_round_compares_airlock_with_the_peer_beside_it() {
        // The machine slows down by half after the first round, and one
        // round of the peer's is caught by a burst of noise.
        let airlock = [
            run(44, 70.0, 160.0),
            run(88, 140.0, 320.0),
            run(90, 141.0, 330.0),
        ];
        let peer = [
            run(40, 64.0, 140.0),
            run(80, 128.0, 290.0),
            run(160, 200.0, 600.0),
        ];
        let p = Paired::of(&airlock, &peer).expect("as many rounds on each side");
        // Ratios 1.10, 1.10, 0.56; gaps 6, 12, -59 and 20, 30, -270.
        assert!((p.cpu_ratio - 1.1).abs() < 1e-9, "{}", p.cpu_ratio);
        assert_eq!(p.p50_gap_us, 6.0);
        assert_eq!(p.p99_gap_us, 20.0);
        assert!(Paired::of(&airlock, &[]).is_none(), "no peer, no pairs");
    }
}
