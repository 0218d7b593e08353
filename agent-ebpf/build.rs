//! The BPF object is linked by `bpf-linker`, which cargo does not track:
//! rebuild when the linker binary changes.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!(
            "cargo:warning=bpf-linker not found on PATH ({err}); run .ci/run or `cargo install bpf-linker@0.10.4 --locked`"
        ),
    }
}
