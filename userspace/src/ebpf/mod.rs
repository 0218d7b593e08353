//! The only modules that touch aya: load the embedded object, attach it to
//! the managed cgroup root or re-open the pinned links of a previous run,
//! and read the maps the kernel side fills.

mod bpffs;
mod load;
mod maps;
mod query;

pub use load::{Kernel, KernelError, detach_pinned};
pub use maps::{ConnTable, KernelConnTable, KernelStats};
pub use query::attached_program_count;

/// The eBPF object built from `agent-ebpf` by build.rs.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));
