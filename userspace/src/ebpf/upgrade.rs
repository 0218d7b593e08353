//! Bringing the pins of a previous run up to this build. A pinned link
//! keeps the program it was created with: without this, upgrading Airlock
//! and restarting the daemon would leave a fix to the kernel side
//! unapplied, silently. Each pinned link whose program differs from this
//! build's (by the kernel's tag, a hash of its instructions) is switched
//! to the new program with one BPF_LINK_UPDATE, so the hook is never
//! absent, not even for an instant.
//!
//! Maps are the other half. The new programs re-use the pinned maps when
//! their layout is the one this build defines. When it is not, the new
//! programs get new maps, made in a staging directory beside the old pins
//! and moved over them once every link runs the new code. Connections in
//! flight at that moment lose their records, so the proxy refuses them:
//! closed, never open.

use std::{
    ffi::CString,
    fmt,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use aya::{
    maps::MapInfo,
    programs::{ProgramInfo, links::FdLink},
};

use super::{
    load::{KernelError, map_pin},
    sys,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;
/// Replace only if the link still runs `old_prog_fd`.
const BPF_F_REPLACE: u32 = 1 << 2;
/// BPF_MAP_TYPE_RINGBUF: aya rounds its size to pages, so its entry
/// count is not part of the layout.
const RINGBUF: u32 = 27;

/// Where new maps wait while the links are switched to the new programs.
const STAGING: &str = "staged";

/// What the programs of one build rely on in a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MapShape {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

impl MapShape {
    fn built(map: &aya_obj::Map) -> MapShape {
        MapShape {
            map_type: map.map_type(),
            key_size: map.key_size(),
            value_size: map.value_size(),
            max_entries: map.max_entries(),
        }
    }

    fn pinned(info: &MapInfo) -> Option<MapShape> {
        Some(MapShape {
            map_type: info.map_type().ok()? as u32,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        })
    }

    fn same_layout(&self, pinned: &MapShape) -> bool {
        self.map_type == pinned.map_type
            && self.key_size == pinned.key_size
            && self.value_size == pinned.value_size
            && (self.map_type == RINGBUF || self.max_entries == pinned.max_entries)
    }
}

impl fmt::Display for MapShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type {}, key {} B, value {} B, {} entries",
            self.map_type, self.key_size, self.value_size, self.max_entries
        )
    }
}

/// A pinned map whose layout is not this build's.
#[derive(Debug)]
pub struct LayoutChange {
    map: String,
    pinned: Option<MapShape>,
    built: MapShape,
}

impl fmt::Display for LayoutChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pinned {
            Some(pinned) => write!(
                f,
                "map {}: pinned {pinned}; this build {}",
                self.map, self.built
            ),
            None => write!(
                f,
                "map {}: the pin is not a readable map; this build {}",
                self.map, self.built
            ),
        }
    }
}

/// The first pinned map (by name) whose layout differs from the one
/// `object` defines, if any. Maps without a pin are new: the loader makes
/// them.
pub fn layout_change(pin_dir: &Path, object: &[u8]) -> Result<Option<LayoutChange>, KernelError> {
    let object = aya_obj::Object::parse(object).map_err(KernelError::Object)?;
    let mut names: Vec<&String> = object.maps.keys().collect();
    names.sort();
    for name in names {
        let pin = map_pin(pin_dir, name);
        if !pin.exists() {
            continue;
        }
        let built = MapShape::built(&object.maps[name]);
        let pinned = MapInfo::from_pin(&pin)
            .ok()
            .and_then(|info| MapShape::pinned(&info));
        if pinned.is_none_or(|pinned| !built.same_layout(&pinned)) {
            return Ok(Some(LayoutChange {
                map: name.clone(),
                pinned,
                built,
            }));
        }
    }
    Ok(None)
}

/// An empty staging directory for new maps (what a run that failed
/// half-way left there is dropped: those maps are not in use by any pin).
pub fn fresh_staging(pin_dir: &Path) -> Result<PathBuf, KernelError> {
    let staging = pin_dir.join(STAGING);
    let staging_error = |source| KernelError::Staging {
        path: staging.clone(),
        source,
    };
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(staging_error)?;
    }
    std::fs::create_dir(&staging).map_err(staging_error)?;
    Ok(staging)
}

/// Move the staged maps over the old pins (rename replaces a pin in one
/// step) and remove the staging directory.
pub fn promote_staged(staging: &Path, pin_dir: &Path) -> Result<(), KernelError> {
    let staging_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KernelError::Staging { path, source }
    };
    for entry in std::fs::read_dir(staging).map_err(staging_error(staging))? {
        let entry = entry.map_err(staging_error(staging))?;
        let target = pin_dir.join(entry.file_name());
        std::fs::rename(entry.path(), &target).map_err(staging_error(&target))?;
    }
    std::fs::remove_dir(staging).map_err(staging_error(staging))
}

/// The program a pinned link runs, if the kernel still lists it.
pub fn linked_program(
    name: &'static str,
    link: &FdLink,
) -> Result<Option<ProgramInfo>, KernelError> {
    let id = link
        .info()
        .map_err(|source| KernelError::Link { name, source })?
        .program_id();
    // A program unloaded while the list is read is simply not the one.
    Ok(aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == id))
}

/// Make the link pinned at `pin` run `new` from now on. With `old` known, the kernel makes
/// the switch only if the link still runs it, so two loaders racing cannot
/// undo each other's choice unseen.
pub fn replace_program(
    name: &'static str,
    pin: &Path,
    new: BorrowedFd<'_>,
    old: Option<&ProgramInfo>,
) -> Result<(), KernelError> {
    let upgrade_error = |source| KernelError::Upgrade { name, source };
    let old_fd = old
        .map(ProgramInfo::fd)
        .transpose()
        .map_err(|e| upgrade_error(std::io::Error::other(e)))?;
    let link_fd = open_pin(pin).map_err(upgrade_error)?;
    let mut attr = LinkUpdateAttr {
        link_fd: link_fd.as_raw_fd() as u32,
        new_prog_fd: new.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    if let Some(old_fd) = &old_fd {
        attr.flags = BPF_F_REPLACE;
        attr.old_prog_fd = old_fd.as_fd().as_raw_fd() as u32;
    }
    // SAFETY: `attr` is the link_update member of union bpf_attr, fully
    // initialised; every fd in it is open for the duration of the call.
    unsafe { sys::bpf(BPF_LINK_UPDATE, &mut attr) }.map_err(upgrade_error)?;
    Ok(())
}

/// An fd of the object pinned at `path` (aya does not lend a link's own).
fn open_pin(path: &Path) -> std::io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut attr = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: `attr` is the obj_get member of union bpf_attr; `pathname`
    // points to a NUL-terminated string that outlives the call.
    let fd = unsafe { sys::bpf(BPF_OBJ_GET, &mut attr) }?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `union bpf_attr` as BPF_OBJ_GET reads it.
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `union bpf_attr` as BPF_LINK_UPDATE reads it.
#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORDS: MapShape = MapShape {
        map_type: 9,
        key_size: 8,
        value_size: 40,
        max_entries: 65_536,
    };

    #[test]
    fn any_difference_but_a_ring_buffer_size_is_another_layout() {
        assert!(RECORDS.same_layout(&RECORDS));
        for other in [
            MapShape {
                value_size: 48,
                ..RECORDS
            },
            MapShape {
                key_size: 16,
                ..RECORDS
            },
            MapShape {
                max_entries: 1024,
                ..RECORDS
            },
            MapShape {
                map_type: 1,
                ..RECORDS
            },
        ] {
            assert!(!RECORDS.same_layout(&other), "{other}");
        }
        let ring = MapShape {
            map_type: RINGBUF,
            key_size: 0,
            value_size: 0,
            max_entries: 1 << 17,
        };
        assert!(ring.same_layout(&MapShape {
            max_entries: 1 << 18,
            ..ring
        }));
    }

    #[test]
    fn a_layout_change_names_the_map_and_both_layouts() {
        let change = LayoutChange {
            map: "ORIG_BY_COOKIE".into(),
            pinned: Some(MapShape {
                value_size: 48,
                ..RECORDS
            }),
            built: RECORDS,
        };
        let text = change.to_string();
        assert!(text.contains("ORIG_BY_COOKIE"), "{text}");
        assert!(
            text.contains("value 48 B") && text.contains("value 40 B"),
            "{text}"
        );
        let unreadable = LayoutChange {
            pinned: None,
            ..change
        };
        assert!(unreadable.to_string().contains("not a readable map"));
    }

    #[test]
    fn this_builds_object_defines_every_map_the_daemon_opens() {
        let object = aya_obj::Object::parse(crate::ebpf::OBJECT).expect("object parses");
        for name in [
            agent_common::maps::SETTINGS,
            agent_common::maps::ORIG_BY_COOKIE,
            agent_common::maps::ORIG_BY_CLIENT,
            agent_common::maps::DNS_CLIENTS,
            agent_common::maps::DNS_ORIG,
            agent_common::maps::STATS,
        ] {
            assert!(object.maps.contains_key(name), "{name}");
        }
    }
}
