//! Builds the eBPF programs (agent-ebpf) with the nightly toolchain and
//! bpf-linker, so that `cargo build` yields one `airlock` binary with the
//! object embedded.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["locate-project", "--workspace", "--message-format=plain"])
            .output()
            .context("cargo locate-project")?;
    let manifest = String::from_utf8(metadata.stdout).context("workspace path is not UTF-8")?;
    let root = std::path::Path::new(manifest.trim())
        .parent()
        .ok_or_else(|| anyhow!("workspace manifest has no parent: {manifest}"))?;
    let ebpf_dir = root.join("agent-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("agent-ebpf path is not UTF-8"))?;
    println!("cargo:rerun-if-changed={ebpf_dir}/common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
