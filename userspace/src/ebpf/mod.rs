//! The only modules that touch aya: load the embedded object and attach it
//! to the managed cgroup root, or re-open the pinned links of a previous
//! run (`load`, in a short-lived child), open the pinned maps for the
//! daemon (`kernel`), and read the maps the kernel side fills (`maps`).

mod bpffs;
mod kernel;
mod load;
mod maps;
mod query;
mod sys;
mod upgrade;

pub use kernel::{Kernel, LoaderOutcome, guard_hooks};
pub use load::{KernelError, attach, detach_pinned};
pub use maps::{ConnTable, KernelConnTable, KernelStats};
pub use query::{HOOK_COUNT, attached_program_count, missing_hooks};
pub use sys::netns_cookie;

/// The eBPF object built from `agent-ebpf` by build.rs.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));
