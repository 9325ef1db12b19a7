//! Builds the eBPF programs (nightly, bpf-linker) so the binary can embed them.
//! `AYA_BUILD_SKIP=1` skips it, for `cargo check`/clippy where bpf-linker is absent; the
//! binary then embeds an empty object and says so when asked to load it.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let ebpf = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("netns-user has no parent directory"))?
        .join("netns-ebpf");
    let root_dir = ebpf.to_str().context("non-UTF-8 path to netns-ebpf")?;
    // aya-build watches the eBPF crate only; the programs also compile netns-common.
    let common = ebpf.with_file_name("netns-common");
    println!("cargo:rerun-if-changed={}", common.display());
    let skip = std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
        std::fs::write(out.join("netns-ebpf"), b"")?;
    }
    aya_build::build_ebpf(
        [Package {
            name: "netns-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
