//! Load the embedded object and attach its programs to the managed cgroup
//! root, or re-open the links a previous run pinned. Links are pinned so
//! that enforcement outlives the daemon: while it is down, connects are
//! refused (a clean stop closes the hooks, `Kernel::close`) or find no
//! listener (a crash), and a restarted daemon
//! picks the links up again instead of stacking a second copy of every
//! hook.
//!
//! This runs in `airlock kernel-attach`, a short-lived child of the daemon
//! (see `kernel.rs`): aya's loader reads and parses the kernel's whole BTF
//! (megabytes), and that memory should not stay with the long-running
//! daemon.

use std::{
    fs::File,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use agent_common::{Settings, maps as map_names, programs as prog};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, Program,
        ProgramError, SockOps,
        cgroup_skb::CgroupSkbLink,
        cgroup_sock::CgroupSockLink,
        cgroup_sock_addr::CgroupSockAddrLink,
        links::{FdLink, PinnedLink},
        sock_ops::SockOpsLink,
    },
};
use tracing::{info, warn};

use super::{OBJECT, bpffs, query, upgrade};

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
    #[error(
        "the pin directory {path} is {problem}: whoever can write to it can unpin Airlock's hooks and maps. {fix}"
    )]
    PinDirUntrusted {
        path: PathBuf,
        problem: String,
        fix: String,
    },
    #[error("cannot open the cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "loading the eBPF object failed: {0} (Airlock needs a kernel with BPF, BTF and cgroup v2; `dmesg` may say more)"
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
    #[error("the embedded eBPF object does not parse: {0}")]
    Object(#[source] aya_obj::ParseError),
    #[error(
        "eBPF program {name}: cannot switch its pinned link to this build's program: {source} (the link keeps the program it had; restart the daemon to try again)"
    )]
    Upgrade {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "eBPF program {name}: cannot ask the kernel what is attached to the cgroup root: {source}"
    )]
    Query {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot move the new maps into place at {path}: {source}")]
    Staging {
        path: PathBuf,
        #[source]
        source: std::io::Error,
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

/// Each program, its hook, and its attach type (enum bpf_attach_type).
const PROGRAMS: [(&str, Hook, u32); 11] = [
    // sock_create, the egress filter and bind first: from the moment
    // connect hooks exist, nothing must be able to go around them.
    (prog::SOCK_CREATE, Hook::SockCreate, 2),
    (prog::UDP_EGRESS, Hook::SkbEgress, 1),
    (prog::BIND4, Hook::SockAddr, 8),
    (prog::BIND6, Hook::SockAddr, 9),
    (prog::SOCK_OPS, Hook::SockOps, 3),
    (prog::RECVMSG4, Hook::SockAddr, 19),
    (prog::RECVMSG6, Hook::SockAddr, 20),
    (prog::SENDMSG4, Hook::SockAddr, 14),
    (prog::SENDMSG6, Hook::SockAddr, 15),
    (prog::CONNECT4, Hook::SockAddr, 10),
    (prog::CONNECT6, Hook::SockAddr, 11),
];

/// What became of a program's link on this start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkOutcome {
    /// No pinned link: attached and pinned now.
    Attached,
    /// The pinned link already runs this build's program.
    Reopened,
    /// The pinned link ran another program (an older build, or one put
    /// there behind Airlock's back) and was switched to this build's.
    Replaced,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ProgramState {
    pub name: String,
    pub link: LinkOutcome,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AttachReport {
    pub pin_dir: PathBuf,
    pub cgroup: PathBuf,
    pub programs: Vec<ProgramState>,
    /// Set when the pinned maps had another layout and were replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maps_replaced: Option<String>,
}

/// Where the object's maps are pinned: by name, under the pin directory.
pub(super) fn map_pin(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join(name)
}

/// The program that writes the kernel log (refused sockets): the log ring
/// is found among its maps.
pub(super) const LOG_PROGRAM: &str = prog::SOCK_CREATE;

/// Makes `pin_dir` (root's, mode 0700) unless it exists, and checks that
/// an existing one is root's and writable by no one else. bpffs is mounted
/// world-writable (1777) unless told otherwise, so any user could make the
/// directory first and then unlink the pins in it: a hook whose link pin
/// is gone is detached.
fn make_pin_dir(pin_dir: &Path) -> Result<(), KernelError> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    if let Some(parent) = pin_dir.parent() {
        std::fs::create_dir_all(parent).map_err(|source| KernelError::PinDir {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(pin_dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(KernelError::PinDir {
                path: pin_dir.to_path_buf(),
                source,
            });
        }
    }
    let meta = std::fs::symlink_metadata(pin_dir).map_err(|source| KernelError::PinDir {
        path: pin_dir.to_path_buf(),
        source,
    })?;
    // Removing the directory unpins the hooks in it, and agents would go
    // unconfined until the daemon pins new ones: a fix that keeps them is
    // named first.
    let shown = pin_dir.display();
    let untrusted = |problem: String, fix: String| {
        Err(KernelError::PinDirUntrusted {
            path: pin_dir.to_path_buf(),
            problem,
            fix,
        })
    };
    if !meta.file_type().is_dir() {
        untrusted(
            "not a directory".to_owned(),
            format!(
                "Move it aside (`mv {shown} {shown}.old`) and start Airlock again, or set another `bpf_pin_dir`"
            ),
        )
    } else if meta.uid() != 0 {
        untrusted(
            format!("owned by uid {}, not root", meta.uid()),
            format!(
                "Stop the agents, remove it (`rm -r {shown}`, which detaches the hooks it pins) and start Airlock again, or set another `bpf_pin_dir`"
            ),
        )
    } else if meta.mode() & 0o022 != 0 {
        untrusted(
            format!(
                "writable by group or others (mode {:o})",
                meta.mode() & 0o7777
            ),
            format!(
                "Check that everything in it is root's (`ls -la {shown}`), then `chmod 0700 {shown}` and start Airlock again"
            ),
        )
    } else {
        Ok(())
    }
}

/// Load the object (re-using pinned maps), publish `settings`, and make
/// sure every program is attached to `cgroup_root` exactly once.
pub fn attach(
    cgroup_root: &Path,
    pin_dir: &Path,
    settings: Settings,
) -> Result<AttachReport, KernelError> {
    bpffs::ensure_mounted()?;
    let pin_dir = pin_dir.to_path_buf();
    make_pin_dir(&pin_dir)?;
    // Maps of another layout cannot serve this build's programs: new ones
    // are made beside them and take over their pins once every link runs
    // the new code.
    let layout_change = upgrade::layout_change(&pin_dir, OBJECT)?;
    let map_dir = match &layout_change {
        Some(change) => {
            warn!(%change, "pinned maps have another layout; replacing them (connections in flight are refused)");
            upgrade::fresh_staging(&pin_dir)?
        }
        None => pin_dir.clone(),
    };
    let log_pin = map_pin(&map_dir, "AYA_LOGS");
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&map_dir)
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
    let new_maps = layout_change.is_some();
    let mut programs = Vec::with_capacity(PROGRAMS.len());
    for (name, hook, attach_type) in PROGRAMS {
        let link = place(
            &mut ebpf,
            &cgroup,
            &pin_dir,
            (name, hook, attach_type),
            new_maps,
        )?;
        programs.push(ProgramState {
            name: name.to_owned(),
            link,
        });
    }
    if new_maps {
        upgrade::promote_staged(&map_dir, &pin_dir)?;
    }
    let count = |outcome| programs.iter().filter(|p| p.link == outcome).count();
    info!(
        cgroup = %cgroup_root.display(),
        attached = count(LinkOutcome::Attached),
        reopened = count(LinkOutcome::Reopened),
        replaced = count(LinkOutcome::Replaced),
        "eBPF programs in place"
    );
    Ok(AttachReport {
        pin_dir,
        cgroup: cgroup_root.to_path_buf(),
        programs,
        maps_replaced: layout_change.map(|change| change.to_string()),
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

/// Load `name` and make sure the pinned link at its pin runs it: re-open
/// a link that already does, switch one that runs another program (or any
/// program, when `new_maps` says the old ones use maps being replaced), or
/// attach and pin a new link.
fn place(
    ebpf: &mut Ebpf,
    cgroup: &File,
    pin_dir: &Path,
    (name, hook, attach_type): (&'static str, Hook, u32),
    new_maps: bool,
) -> Result<LinkOutcome, KernelError> {
    let err = |source| KernelError::Program { name, source };
    let program = ebpf.program_mut(name).ok_or(KernelError::Missing {
        kind: "program",
        name,
    })?;
    load(program, hook).map_err(err)?;
    let pin = link_pin_path(pin_dir, name);
    if let Some(link) = open_pinned_link(&pin)? {
        let built = program.info().map_err(err)?;
        let running = upgrade::linked_program(name, &link)?;
        let on_root = match &running {
            Some(p) => query::is_attached(cgroup, attach_type, p.id())
                .map_err(|source| KernelError::Query { name, source })?,
            None => false,
        };
        if !on_root {
            // The cgroup the link was made for is gone (removed, or made
            // anew by systemd): the link enforces nothing there. Re-using
            // it would leave the cgroup of today's agents without a hook.
            warn!(
                program = name,
                "pinned link is not attached to the cgroup root (it was removed and made anew); attaching afresh"
            );
            std::fs::remove_file(&pin).map_err(|source| KernelError::Unpin {
                path: pin.clone(),
                source,
            })?;
            drop(link);
        } else if !new_maps && running.as_ref().is_some_and(|p| p.tag() == built.tag()) {
            return Ok(LinkOutcome::Reopened);
        } else {
            warn!(
                program = name,
                running_tag = running.as_ref().map(|p| format!("{:016x}", p.tag())),
                built_tag = format!("{:016x}", built.tag()),
                "pinned link runs another program; switching it to this build's"
            );
            let new = program.fd().map_err(err)?;
            upgrade::replace_program(name, &pin, new.as_fd(), running.as_ref())?;
            return Ok(LinkOutcome::Replaced);
        }
    }
    let link = attach_loaded(program, hook, cgroup).map_err(err)?;
    fd_link(name, link)?
        .pin(&pin)
        .map_err(|source| KernelError::Pin {
            name,
            path: pin.clone(),
            source,
        })?;
    Ok(LinkOutcome::Attached)
}

/// The link pinned at `pin`, if there is a usable one; an unusable pin is
/// removed so that a new link can take its place.
fn open_pinned_link(pin: &Path) -> Result<Option<FdLink>, KernelError> {
    if !pin.exists() {
        return Ok(None);
    }
    match PinnedLink::from_pin(pin) {
        // Dropping the FdLink closes our fd; the pin keeps the link.
        Ok(link) => Ok(Some(link.into())),
        Err(err) => {
            warn!(pin = %pin.display(), error = %err, "unusable link pin; attaching afresh");
            std::fs::remove_file(pin).map_err(|source| KernelError::Unpin {
                path: pin.to_path_buf(),
                source,
            })?;
            Ok(None)
        }
    }
}

fn load(program: &mut Program, hook: Hook) -> Result<(), ProgramError> {
    match hook {
        Hook::SockAddr => <&mut CgroupSockAddr>::try_from(program)?.load(),
        Hook::SockOps => <&mut SockOps>::try_from(program)?.load(),
        Hook::SockCreate => <&mut CgroupSock>::try_from(program)?.load(),
        Hook::SkbEgress => <&mut CgroupSkb>::try_from(program)?.load(),
    }
}

/// The attach types differ only in their link types; each becomes an
/// `FdLink` to be pinned.
enum NewLink {
    SockAddr(CgroupSockAddrLink),
    SockOps(SockOpsLink),
    SockCreate(CgroupSockLink),
    SkbEgress(CgroupSkbLink),
}

fn attach_loaded(
    program: &mut Program,
    hook: Hook,
    cgroup: &File,
) -> Result<NewLink, ProgramError> {
    Ok(match hook {
        Hook::SockAddr => {
            let p = <&mut CgroupSockAddr>::try_from(program)?;
            let id = p.attach(cgroup, ATTACH_MODE)?;
            NewLink::SockAddr(p.take_link(id)?)
        }
        Hook::SockOps => {
            let p = <&mut SockOps>::try_from(program)?;
            let id = p.attach(cgroup, ATTACH_MODE)?;
            NewLink::SockOps(p.take_link(id)?)
        }
        Hook::SockCreate => {
            let p = <&mut CgroupSock>::try_from(program)?;
            let id = p.attach(cgroup, ATTACH_MODE)?;
            NewLink::SockCreate(p.take_link(id)?)
        }
        Hook::SkbEgress => {
            let p = <&mut CgroupSkb>::try_from(program)?;
            let id = p.attach(cgroup, CgroupSkbAttachType::Egress, ATTACH_MODE)?;
            NewLink::SkbEgress(p.take_link(id)?)
        }
    })
}

fn fd_link(name: &'static str, link: NewLink) -> Result<FdLink, KernelError> {
    match link {
        NewLink::SockAddr(l) => FdLink::try_from(l),
        NewLink::SockOps(l) => FdLink::try_from(l),
        NewLink::SockCreate(l) => FdLink::try_from(l),
        NewLink::SkbEgress(l) => FdLink::try_from(l),
    }
    .map_err(|source| KernelError::Link { name, source })
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
        if is_link && let Ok(link) = PinnedLink::from_pin(&path) {
            // Unpinning hands back the last reference; dropping it
            // detaches the program from the cgroup.
            if link.unpin().is_ok() {
                detached += 1;
                continue;
            }
        }
        // A staging directory an interrupted upgrade left: maps only.
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|source| KernelError::Unpin {
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use super::{KernelError, make_pin_dir};

    /// A pin directory someone else could write to could lose its pins.
    #[test]
    fn a_pin_directory_must_be_roots_and_writable_by_no_one_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fresh = dir.path().join("bpf").join("airlock");
        make_pin_dir(&fresh).expect("made");
        let meta = std::fs::metadata(&fresh).expect("stat");
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o700));
        make_pin_dir(&fresh).expect("taken as it is");

        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let err = make_pin_dir(&fresh).expect_err("world-writable");
        assert!(
            matches!(&err, KernelError::PinDirUntrusted { problem, .. } if problem.contains("1777")),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 0700"), "{err}");

        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::os::unix::fs::chown(&fresh, Some(65534), None).expect("chown");
        let err = make_pin_dir(&fresh).expect_err("another user's");
        assert!(err.to_string().contains("owned by uid 65534"), "{err}");
    }
}
