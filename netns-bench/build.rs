//! Builds the benchmark's eBPF programs (nightly, bpf-linker) so the library can embed them.
//! `AYA_BUILD_SKIP=1` skips it, as for netns-user: the object is then empty and loading it
//! says so.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let ebpf = here.join("ebpf");
    let root_dir = ebpf.to_str().context("non-UTF-8 path to netns-bench/ebpf")?;
    // aya-build watches the eBPF crate only; the programs also compile netns-common.
    let common = here
        .parent()
        .ok_or_else(|| anyhow!("netns-bench has no parent directory"))?
        .join("netns-common");
    println!("cargo:rerun-if-changed={}", common.display());
    let skip = std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
        std::fs::write(out.join("netns-bench-ebpf"), b"")?;
    }
    aya_build::build_ebpf(
        [Package {
            name: "netns-bench-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
