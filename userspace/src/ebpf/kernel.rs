//! The daemon's handle on the kernel side. Loading and attaching run in a
//! child, `airlock kernel-attach` (see `load.rs`), which pins everything
//! and exits; the daemon then opens the pinned maps it reads and writes.
//! The loader's parse of the kernel's BTF (megabytes) is thereby freed
//! with the child instead of setting the daemon's peak memory for good.

use std::{
    ffi::OsString,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use agent_common::{Settings, maps as map_names};
use aya::{
    maps::{Array, Map, MapData, PerCpuArray},
    programs::links::{FdLink, PinnedLink},
};
use tracing::warn;

use super::{
    KernelConnTable, KernelStats,
    load::{AttachReport, KernelError, LOG_PROGRAM, ProgramState, link_pin_path, map_pin},
};

/// The loader is this very binary, whatever its path is now.
const SELF_EXE: &str = "/proc/self/exe";
/// Loading takes well under a second; this only bounds a stuck kernel call.
const LOADER_TIMEOUT: Duration = Duration::from_secs(60);

/// What the loader prints on standard output, one JSON document.
#[derive(serde::Serialize, serde::Deserialize)]
pub enum LoaderOutcome {
    Attached(AttachReport),
    Failed(String),
}

/// The loaded kernel side: the maps the daemon reads and writes, and the
/// links, which stay pinned when this value is dropped.
pub struct Kernel {
    /// The loader's report at start-up.
    pub report: AttachReport,
    /// The loader's reports when the hooks were found missing since.
    reattached: std::sync::Mutex<Reattached>,
    pub conns: Arc<KernelConnTable>,
    pub stats: KernelStats,
    settings: Array<MapData, Settings>,
    /// What the loader was asked to publish, for attaching again.
    requested: Settings,
}

impl Kernel {
    /// Have the loader publish `settings` and attach every program to
    /// `cgroup_root` exactly once, then open the pinned maps.
    pub fn open(
        cgroup_root: &Path,
        pin_dir: &Path,
        settings: Settings,
    ) -> Result<Kernel, KernelError> {
        let report = run_loader(cgroup_root, pin_dir, settings)?;
        let requested = settings;
        let settings: Array<MapData, Settings> =
            Array::try_from(Map::Array(open_pin(pin_dir, map_names::SETTINGS)?)).map_err(
                |source| KernelError::Map {
                    name: map_names::SETTINGS,
                    source,
                },
            )?;
        let stats: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(Map::PerCpuArray(open_pin(pin_dir, map_names::STATS)?)).map_err(
                |source| KernelError::Map {
                    name: map_names::STATS,
                    source,
                },
            )?;
        let conns = Arc::new(KernelConnTable::new(
            open_pin(pin_dir, map_names::ORIG_BY_CLIENT)?,
            open_pin(pin_dir, map_names::DNS_CLIENTS)?,
        ));
        start_kernel_log(pin_dir);
        Ok(Kernel {
            report,
            reattached: std::sync::Mutex::default(),
            conns,
            stats: KernelStats::new(stats),
            settings,
            requested,
        })
    }

    /// At a clean stop: the hooks refuse every agent connect and DNS send
    /// (EPERM) until a daemon publishes its settings again, instead of
    /// sending them to ports that nothing, or another local process, may
    /// hold meanwhile. The ports stay known, so agents still may not bind
    /// them. (A crash leaves the settings as they were; the bind hooks
    /// still keep agents off the ports.)
    pub fn close(&self) -> Result<(), KernelError> {
        let mut settings: Array<MapData, Settings> = Array::try_from(Map::Array(open_pin(
            &self.report.pin_dir,
            map_names::SETTINGS,
        )?))
        .map_err(|source| KernelError::Map {
            name: map_names::SETTINGS,
            source,
        })?;
        let closed = Settings {
            netns_cookie: 0,
            ..self.requested
        };
        settings
            .set(0, closed, 0)
            .map_err(|source| KernelError::Map {
                name: map_names::SETTINGS,
                source,
            })
    }

    /// The settings this daemon gave the hooks.
    pub fn requested(&self) -> Settings {
        self.requested
    }

    /// The settings the hooks currently use.
    pub fn settings(&self) -> Option<Settings> {
        self.settings.get(&0, 0).ok()
    }

    /// Run the loader again, onto the same cgroup root and pins.
    pub fn reattach(&self) -> Result<AttachReport, KernelError> {
        let report = run_loader(&self.report.cgroup, &self.report.pin_dir, self.requested)?;
        if let Ok(mut r) = self.reattached.lock() {
            r.count += 1;
            r.at_unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            r.last = Some(report.clone());
        }
        Ok(report)
    }

    /// The programs as the loader last left them: at start-up, or when it
    /// last attached them again.
    pub fn programs(&self) -> Vec<ProgramState> {
        self.reattached
            .lock()
            .ok()
            .and_then(|r| r.last.as_ref().map(|l| l.programs.clone()))
            .unwrap_or_else(|| self.report.programs.clone())
    }

    /// How often the hooks were attached again since start-up, and when
    /// last (Unix seconds).
    pub fn reattached(&self) -> (u64, Option<u64>) {
        self.reattached
            .lock()
            .map(|r| (r.count, (r.count > 0).then_some(r.at_unix)))
            .unwrap_or((0, None))
    }
}

#[derive(Default)]
struct Reattached {
    count: u64,
    at_unix: u64,
    last: Option<AttachReport>,
}

/// How often the daemon checks that the cgroup root still has its hooks.
const HOOK_CHECK: Duration = Duration::from_secs(2);

/// Keeps Airlock's programs on the cgroup root for as long as the daemon
/// runs. A root removed and made anew (by hand, or by systemd for
/// airlock.slice) comes back without them, and `airlock run` refuses to
/// place agents there until they are back: this puts them back.
pub async fn guard_hooks(kernel: Arc<Kernel>) {
    let root = kernel.report.cgroup.clone();
    let mut tick = tokio::time::interval(HOOK_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match super::missing_hooks(&root) {
            Ok(missing) if missing.is_empty() => continue,
            Ok(missing) => warn!(
                root = %root.display(),
                missing = missing.len(),
                "the cgroup root has lost Airlock's programs (removed and made anew?); attaching them again"
            ),
            // Gone: nothing can be placed there (`run` refuses a missing
            // root); its return is seen on a later tick.
            Err(_) => continue,
        }
        let loader = kernel.clone();
        match tokio::task::spawn_blocking(move || loader.reattach()).await {
            Ok(Ok(report)) => tracing::info!(
                programs = report.programs.len(),
                "eBPF programs attached to the cgroup root again"
            ),
            Ok(Err(err)) => tracing::error!(error = %err, "cannot attach the eBPF programs again"),
            Err(err) => tracing::error!(error = %err, "the eBPF loader task failed"),
        }
    }
}

/// The loader's command line (after the program name): `cli::Command::KernelAttach`.
fn loader_args(cgroup_root: &Path, pin_dir: &Path, settings: Settings) -> Vec<OsString> {
    vec![
        "kernel-attach".into(),
        "--cgroup-root".into(),
        cgroup_root.into(),
        "--pin-dir".into(),
        pin_dir.into(),
        "--proxy-port".into(),
        settings.proxy_port.to_string().into(),
        "--dns-port".into(),
        settings.dns_port.to_string().into(),
        "--netns-cookie".into(),
        settings.netns_cookie.to_string().into(),
    ]
}

fn run_loader(
    cgroup_root: &Path,
    pin_dir: &Path,
    settings: Settings,
) -> Result<AttachReport, KernelError> {
    let spawn_error = |source| KernelError::LoaderSpawn {
        exe: std::env::current_exe()
            .map_or_else(|_| SELF_EXE.to_owned(), |p| p.display().to_string()),
        source,
    };
    // Its log lines (stderr) go where the daemon's go.
    let mut child = Command::new(SELF_EXE)
        .args(loader_args(cgroup_root, pin_dir, settings))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(spawn_error)?;
    // The report is a few hundred bytes, well inside the pipe's buffer, so
    // waiting before reading cannot deadlock. A loader stuck in the kernel
    // must not leave the daemon hanging at start-up without a word.
    let deadline = Instant::now() + LOADER_TIMEOUT;
    let status = loop {
        match child.try_wait().map_err(spawn_error)? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(KernelError::LoaderTimeout {
                    secs: LOADER_TIMEOUT.as_secs(),
                });
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let mut stdout = Vec::new();
    if let Some(mut pipe) = child.stdout.take() {
        pipe.read_to_end(&mut stdout).map_err(spawn_error)?;
    }
    interpret(status, &stdout)
}

/// Only a successful exit with a report counts as attached; anything else
/// is an error, and the daemon does not start.
fn interpret(status: ExitStatus, stdout: &[u8]) -> Result<AttachReport, KernelError> {
    match serde_json::from_slice::<LoaderOutcome>(stdout) {
        Ok(LoaderOutcome::Attached(report)) if status.success() => Ok(report),
        Ok(LoaderOutcome::Failed(message)) => Err(KernelError::LoaderFailed(message)),
        _ => Err(KernelError::LoaderNoReport { status }),
    }
}

fn open_pin(pin_dir: &Path, name: &'static str) -> Result<MapData, KernelError> {
    let path: PathBuf = map_pin(pin_dir, name);
    MapData::from_pin(&path).map_err(|source| KernelError::MapPin { name, path, source })
}

/// Forward the kernel side's log records (refused sockets) into tracing.
/// The log ring is pinned, and found through the program that writes it,
/// so a restarted daemon reads what programs attached by its predecessor
/// write.
fn start_kernel_log(pin_dir: &Path) {
    let program_id = PinnedLink::from_pin(link_pin_path(pin_dir, LOG_PROGRAM))
        .map_err(|err| err.to_string())
        .and_then(|pinned| {
            // Dropping the FdLink closes our fd; the pin keeps the link.
            FdLink::from(pinned)
                .info()
                .map(|info| info.program_id())
                .map_err(|err| err.to_string())
        });
    let logger = match program_id
        .and_then(|id| aya_log::EbpfLogger::init_from_id(id).map_err(|err| err.to_string()))
    {
        Ok(logger) => logger,
        Err(error) => {
            warn!(%error, "kernel log unavailable");
            return;
        }
    };
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        // SAFETY: the logger owns the ring buffer's fd and is moved into
        // the AsyncFd, so the fd stays open for as long as it is registered.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        };
        let mut fd = match registered {
            Ok(fd) => fd,
            Err(err) => {
                warn!(error = %err, "kernel log unavailable");
                return;
            }
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command as Cmd};

    #[test]
    fn the_loader_command_line_parses_back_to_the_same_settings() {
        let settings = Settings {
            proxy_port: 15001,
            dns_port: 15053,
            _pad: 0,
            netns_cookie: 4099,
        };
        let args = loader_args(
            Path::new("/sys/fs/cgroup/airlock.slice"),
            Path::new("/sys/fs/bpf/airlock"),
            settings,
        );
        let cli = Cli::try_parse_from(std::iter::once(OsString::from("airlock")).chain(args))
            .expect("the daemon's loader command line must parse");
        let Cmd::KernelAttach(parsed) = cli.command else {
            panic!("parsed as another command");
        };
        assert_eq!(
            parsed.cgroup_root,
            Path::new("/sys/fs/cgroup/airlock.slice")
        );
        assert_eq!(parsed.pin_dir, Path::new("/sys/fs/bpf/airlock"));
        assert_eq!(
            (parsed.proxy_port, parsed.dns_port, parsed.netns_cookie),
            (15001, 15053, 4099)
        );
    }

    #[test]
    fn only_a_clean_exit_with_a_report_counts_as_attached() {
        use std::os::unix::process::ExitStatusExt as _;
        let ok = ExitStatus::from_raw(0);
        let failed = ExitStatus::from_raw(1 << 8);
        let killed = ExitStatus::from_raw(9);
        let report = serde_json::to_vec(&LoaderOutcome::Attached(AttachReport {
            pin_dir: "/sys/fs/bpf/airlock".into(),
            cgroup: "/sys/fs/cgroup/airlock.slice".into(),
            programs: Vec::new(),
            maps_replaced: None,
        }))
        .unwrap();
        assert!(interpret(ok, &report).is_ok());
        // A report followed by a failing exit is not trusted.
        assert!(matches!(
            interpret(failed, &report),
            Err(KernelError::LoaderNoReport { .. })
        ));
        // The loader's own error reaches the daemon's error verbatim.
        let message = "the BPF filesystem at /sys/fs/bpf is not usable";
        let err = interpret(
            failed,
            &serde_json::to_vec(&LoaderOutcome::Failed(message.into())).unwrap(),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), message);
        // Killed half-way, or printing nothing usable: no report, an error.
        for (status, out) in [(killed, &b""[..]), (ok, &b"{\"Attached\""[..])] {
            assert!(matches!(
                interpret(status, out),
                Err(KernelError::LoaderNoReport { .. })
            ));
        }
    }
}
