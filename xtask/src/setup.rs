//! Installs what the project needs on a fresh Debian 12 machine, skipping what is there:
//! Debian packages (iproute2, iptables, nftables, LLVM for bpf-linker), the nightly
//! toolchain's rust-src and clippy, and a bpf-linker built against the same LLVM major as
//! the nightly, so that a newer nightly cannot silently break the eBPF build.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::sh;

/// bpf-linker release series known to work with aya 0.14 (shared/reference/toolchain.md).
const BPF_LINKER_VERSION: &str = "^0.13";

/// Debian packages the labs and tests use at run time.
// conntrack: tests show the kernel conntrack is unused by the eBPF NAT; ethtool: tests turn
// veth checksum offload off and on.
const RUNTIME_PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "nftables",
    "iperf3",
    "conntrack",
    "ethtool",
    // The benchmark's independent cross-checks: trafgen (packet workloads) and wrk (conn-rate).
    "netsniff-ng",
    "wrk",
];

pub fn run() -> Result<()> {
    let llvm = nightly_llvm_major()?;
    let mut packages: Vec<String> = RUNTIME_PACKAGES.iter().map(|s| s.to_string()).collect();
    // What bpf-linker links against: the nightly's LLVM major.
    packages.extend([
        format!("llvm-{llvm}-dev"),
        format!("libpolly-{llvm}-dev"),
        "libzstd-dev".into(),
    ]);
    apt_install(&packages)?;
    rustup_components()?;
    bpf_linker(llvm)?;
    eprintln!("setup: all present (nightly LLVM {llvm}, bpf-linker built against it)");
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {}", crate::shown(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            crate::shown(cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The LLVM major version of the nightly toolchain (its `rustc -vV`), installing the
/// nightly first if it is missing.
fn nightly_llvm_major() -> Result<u32> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        sh(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let vv = output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))?;
    vv.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
        .context("cannot read the nightly's LLVM version from `rustc -vV`")
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
}

fn apt_install(packages: &[String]) -> Result<()> {
    let missing: Vec<&String> = packages.iter().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
    eprintln!("setup: installing Debian packages: {}", names.join(" "));
    sh(Command::new("apt-get").args(["update", "-q"]))?;
    sh(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&names))
    .context("installing Debian packages (needs root)")
}

fn rustup_components() -> Result<()> {
    let have =
        output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]))?;
    // rust-src: -Z build-std=core for bpfel-unknown-none; clippy: linting the eBPF crate.
    for component in ["rust-src", "clippy"] {
        if !have.lines().any(|l| l.starts_with(component)) {
            sh(Command::new("rustup").args(["component", "add", component, "--toolchain", "nightly"]))?;
        }
    }
    let stable = output(Command::new("rustup").args(["component", "list", "--installed"]))?;
    for component in ["rustfmt", "clippy"] {
        if !stable.lines().any(|l| l.starts_with(component)) {
            sh(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    Ok(())
}

/// Whether the bpf-linker on PATH is of the right series and links LLVM `llvm`.
fn bpf_linker_ok(llvm: u32) -> bool {
    let Ok(version) = output(Command::new("bpf-linker").arg("--version")) else {
        return false;
    };
    if !version.contains(" 0.13.") {
        return false;
    }
    let Ok(path) = output(Command::new("sh").args(["-c", "command -v bpf-linker"])) else {
        return false;
    };
    match output(Command::new("ldd").arg(path.trim())) {
        // A statically linked LLVM shows no libLLVM line: trust the feature it was built with.
        Ok(libs) => !libs.contains("libLLVM") || libs.contains(&format!("libLLVM.so.{llvm}")),
        Err(_) => true,
    }
}

fn bpf_linker(llvm: u32) -> Result<()> {
    if bpf_linker_ok(llvm) {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker against LLVM {llvm} (about a minute)");
    sh(Command::new("cargo")
        .env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}"))
        .env_remove("CARGO_TARGET_DIR")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--force",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features", &format!("llvm-{llvm}")]))
}
