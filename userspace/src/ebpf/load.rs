//! Load the embedded object and attach its programs to the managed cgroup
//! root, or re-open the links a previous run pinned. Links are pinned so
//! that enforcement outlives the daemon: while it is down, redirected
//! connects find no listener and fail (closed), and a restarted daemon
//! picks the links up again instead of stacking a second copy of every
//! hook.
//!
//! This runs in `airlock kernel-attach`, a short-lived child of the daemon
//! (see `kernel.rs`): aya's loader reads and parses the kernel's whole BTF
//! (megabytes), and that memory should not stay with the long-running
//! daemon.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use agent_common::{Settings, maps as map_names, programs as prog};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, SockOps,
        links::{FdLink, PinnedLink},
    },
};
use tracing::{info, warn};

use super::{OBJECT, bpffs};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "the BPF filesystem at {path} is not usable: {source} (Airlock needs root and a kernel with BPF)"
    )]
    BpfFs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "loading the eBPF object failed: {0} (pins under /sys/fs/bpf/airlock from another Airlock version? run `airlock uninstall` first)"
    )]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no {kind} named {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF program {name}: cannot pin its link at {path}: {source}")]
    Pin {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("eBPF program {name}: link is not pinnable: {source}")]
    Link {
        name: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot start the eBPF loader `{exe} kernel-attach`: {source}")]
    LoaderSpawn {
        exe: String,
        #[source]
        source: std::io::Error,
    },
    /// The loader's own error, as it printed it.
    #[error("{0}")]
    LoaderFailed(String),
    #[error(
        "the eBPF loader did not finish within {secs}s and was stopped; check `dmesg` and that /sys/fs/bpf is a usable bpf filesystem"
    )]
    LoaderTimeout { secs: u64 },
    #[error("the eBPF loader exited ({status}) without a report; its log is above")]
    LoaderNoReport { status: std::process::ExitStatus },
    #[error("eBPF map {name}: cannot open its pin {path}: {source}")]
    MapPin {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot remove pin {path}: {source}")]
    Unpin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// cgroup links (BPF_LINK_CREATE) always coexist with other programs on
/// the cgroup, and the kernel refuses BPF_F_ALLOW_MULTI for them (EINVAL):
/// "Single" is aya's name for flags = 0.
const ATTACH_MODE: CgroupAttachMode = CgroupAttachMode::Single;

#[derive(Clone, Copy)]
enum Hook {
    SockAddr,
    SockOps,
    SockCreate,
    SkbEgress,
}

const PROGRAMS: [(&str, Hook); 9] = [
    // sock_create and the egress filter first: from the moment connect
    // hooks exist, nothing must be able to go around them.
    (prog::SOCK_CREATE, Hook::SockCreate),
    (prog::UDP_EGRESS, Hook::SkbEgress),
    (prog::SOCK_OPS, Hook::SockOps),
    (prog::RECVMSG4, Hook::SockAddr),
    (prog::RECVMSG6, Hook::SockAddr),
    (prog::SENDMSG4, Hook::SockAddr),
    (prog::SENDMSG6, Hook::SockAddr),
    (prog::CONNECT4, Hook::SockAddr),
    (prog::CONNECT6, Hook::SockAddr),
];

/// Whether each program was attached now or re-opened from its pin.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ProgramState {
    pub name: String,
    pub reused: bool,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AttachReport {
    pub pin_dir: PathBuf,
    pub cgroup: PathBuf,
    pub programs: Vec<ProgramState>,
}

/// Where the object's maps are pinned: by name, under the pin directory.
pub(super) fn map_pin(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join(name)
}

/// The program that writes the kernel log (refused sockets): the log ring
/// is found among its maps.
pub(super) const LOG_PROGRAM: &str = prog::SOCK_CREATE;

/// Load the object (re-using pinned maps), publish `settings`, and make
/// sure every program is attached to `cgroup_root` exactly once.
pub fn attach(
    cgroup_root: &Path,
    pin_dir: &Path,
    settings: Settings,
) -> Result<AttachReport, KernelError> {
    bpffs::ensure_mounted()?;
    let pin_dir = pin_dir.to_path_buf();
    std::fs::create_dir_all(&pin_dir).map_err(|source| KernelError::PinDir {
        path: pin_dir.clone(),
        source,
    })?;
    let log_pin = map_pin(&pin_dir, "AYA_LOGS");
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&pin_dir)
        .map_pin_path("AYA_LOGS", log_pin.as_path())
        .load(OBJECT)
        .map_err(KernelError::Load)?;

    // Settings before attaching: a hook that runs with all-zero settings
    // denies, so the order only matters for availability, never safety.
    let mut settings_map: Array<MapData, Settings> = take_map(&mut ebpf, map_names::SETTINGS)?;
    settings_map
        .set(0, settings, 0)
        .map_err(|source| KernelError::Map {
            name: map_names::SETTINGS,
            source,
        })?;

    let cgroup = File::open(cgroup_root).map_err(|source| KernelError::Cgroup {
        path: cgroup_root.to_path_buf(),
        source,
    })?;
    let mut programs = Vec::with_capacity(PROGRAMS.len());
    for (name, hook) in PROGRAMS {
        let reused = attach_or_reopen(&mut ebpf, &cgroup, &pin_dir, name, hook)?;
        programs.push(ProgramState {
            name: name.to_owned(),
            reused,
        });
    }
    let reused = programs.iter().filter(|p| p.reused).count();
    info!(
        cgroup = %cgroup_root.display(),
        attached = programs.len() - reused,
        reopened = reused,
        "eBPF programs in place"
    );
    Ok(AttachReport {
        pin_dir,
        cgroup: cgroup_root.to_path_buf(),
        programs,
    })
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(KernelError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(|source| KernelError::Map { name, source })
}

pub(super) fn link_pin_path(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join(format!("link_{name}"))
}

/// Returns true when a pinned link was re-opened, false when the program
/// was attached now.
fn attach_or_reopen(
    ebpf: &mut Ebpf,
    cgroup: &File,
    pin_dir: &Path,
    name: &'static str,
    hook: Hook,
) -> Result<bool, KernelError> {
    let pin = link_pin_path(pin_dir, name);
    if pin.exists() {
        match PinnedLink::from_pin(&pin) {
            // Dropping a PinnedLink closes our fd; the pin keeps the link.
            Ok(_link) => return Ok(true),
            Err(err) => {
                warn!(pin = %pin.display(), error = %err, "unusable link pin; attaching afresh");
                std::fs::remove_file(&pin).map_err(|source| KernelError::Unpin {
                    path: pin.clone(),
                    source,
                })?;
            }
        }
    }
    let program = ebpf.program_mut(name).ok_or(KernelError::Missing {
        kind: "program",
        name,
    })?;
    let err = |source| KernelError::Program { name, source };
    let link: FdLink = match hook {
        Hook::SockAddr => {
            let p: &mut CgroupSockAddr = program.try_into().map_err(err)?;
            p.load().map_err(err)?;
            let id = p.attach(cgroup, ATTACH_MODE).map_err(err)?;
            fd_link(name, p.take_link(id).map_err(err)?)?
        }
        Hook::SockOps => {
            let p: &mut SockOps = program.try_into().map_err(err)?;
            p.load().map_err(err)?;
            let id = p.attach(cgroup, ATTACH_MODE).map_err(err)?;
            fd_link(name, p.take_link(id).map_err(err)?)?
        }
        Hook::SockCreate => {
            let p: &mut CgroupSock = program.try_into().map_err(err)?;
            p.load().map_err(err)?;
            let id = p.attach(cgroup, ATTACH_MODE).map_err(err)?;
            fd_link(name, p.take_link(id).map_err(err)?)?
        }
        Hook::SkbEgress => {
            let p: &mut CgroupSkb = program.try_into().map_err(err)?;
            p.load().map_err(err)?;
            let id = p
                .attach(cgroup, CgroupSkbAttachType::Egress, ATTACH_MODE)
                .map_err(err)?;
            fd_link(name, p.take_link(id).map_err(err)?)?
        }
    };
    link.pin(&pin).map_err(|source| KernelError::Pin {
        name,
        path: pin.clone(),
        source,
    })?;
    Ok(false)
}

fn fd_link<L>(name: &'static str, link: L) -> Result<FdLink, KernelError>
where
    FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    FdLink::try_from(link).map_err(|source| KernelError::Link { name, source })
}

/// Detach every pinned program and remove the pins (used by uninstall).
/// Returns how many links were detached.
pub fn detach_pinned(pin_dir: &Path) -> Result<usize, KernelError> {
    let Ok(entries) = std::fs::read_dir(pin_dir) else {
        return Ok(0);
    };
    let mut detached = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let is_link = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("link_"));
        if is_link {
            if let Ok(link) = PinnedLink::from_pin(&path) {
                // Unpinning hands back the last reference; dropping it
                // detaches the program from the cgroup.
                if link.unpin().is_ok() {
                    detached += 1;
                    continue;
                }
            }
        }
        std::fs::remove_file(&path).map_err(|source| KernelError::Unpin {
            path: path.clone(),
            source,
        })?;
    }
    std::fs::remove_dir(pin_dir).map_err(|source| KernelError::Unpin {
        path: pin_dir.to_path_buf(),
        source,
    })?;
    Ok(detached)
}
