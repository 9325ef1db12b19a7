//! `cargo xtask`: what a fresh machine needs, in one place.
//!
//! - `setup`: installs what is missing (Debian packages, the nightly's rust-src, a
//!   bpf-linker that matches the nightly's LLVM); quick when all is there.
//! - `build`: setup, then builds `netns-nat` with its eBPF programs.
//! - `run`: build, bring the reference lab up, wait for Ctrl-C, tear it down
//!   (`--check`: play the acceptance exchanges instead of waiting).
//! - `test`: setup, formatting, clippy, then every test.
//! - `bench`: setup, release build, the benchmark (`netns-nat-bench`).

mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: Debian packages, rust-src for nightly, bpf-linker.
    Setup,
    /// Setup, then build netns-nat (user space and eBPF).
    Build,
    /// Build, bring the reference lab up, and wait for Ctrl-C; then tear it down.
    Run {
        /// Play the scenario's acceptance exchanges, tear down, and exit with their result.
        #[arg(long)]
        check: bool,
        /// NAT backend: ebpf, iptables, nftables or none (see `netns-nat up --help`).
        #[arg(long, default_value = "ebpf")]
        nat: String,
        /// Lab prefix.
        #[arg(long, default_value = "nn-")]
        prefix: String,
        /// Lab file instead of the built-in reference lab.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Setup, release build, then the benchmark (`netns-nat-bench`) with these arguments
    /// (e.g. --quick, --json PATH, --rounds N, --backends ebpf,iptables); results in
    /// bench-results/.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, rustfmt and clippy checks, then the whole test suite (as root: real labs).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.command {
        Cmd::Setup => setup::run(),
        Cmd::Build => {
            setup::run()?;
            build(&root, WITH_BENCH).map(|_| ())
        }
        Cmd::Run {
            check,
            nat,
            prefix,
            config,
        } => {
            setup::run()?;
            let bin = build(&root, &["netns-user"])?;
            run_lab(&bin, check, &nat, &prefix, config.as_deref())
        }
        Cmd::Bench { args } => {
            setup::run()?;
            sh(cargo(&root)
                .args(["build", "--release", "--bins"])
                .args(WITH_BENCH.iter().flat_map(|p| ["--package", p])))?;
            let dir = root.join("target/release");
            sh(Command::new(dir.join("netns-nat-bench"))
                .args(&args)
                .env("NETNS_NAT_BIN", dir.join("netns-nat"))
                .current_dir(&root))
        }
        Cmd::Test { args } => {
            setup::run()?;
            test(&root, &args)
        }
    }
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .context("xtask has no parent directory")?
        .to_owned())
}

/// Runs a command, echoing it, and fails if it fails.
pub fn sh(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", shown(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", shown(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", shown(cmd));
    }
    Ok(())
}

pub fn shown(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn cargo(root: &Path) -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root);
    c
}

/// Builds netns-nat and returns the binary's path.
/// The product and the benchmark (`netns-nat bench` runs `netns-nat-bench` from beside
/// itself).
const WITH_BENCH: &[&str] = &["netns-user", "netns-bench"];

/// Builds the binaries of `packages` (debug) and returns netns-nat's path.
fn build(root: &Path, packages: &[&str]) -> Result<PathBuf> {
    sh(cargo(root)
        .args(["build", "--bins"])
        .args(packages.iter().flat_map(|p| ["--package", p])))?;
    Ok(root.join("target/debug/netns-nat"))
}

fn run_lab(bin: &Path, check: bool, nat: &str, prefix: &str, config: Option<&Path>) -> Result<()> {
    // Ctrl-C reaches the whole process group: keep going long enough to tear down.
    let (stop_tx, stop_rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .context("installing the Ctrl-C handler")?;

    let mut up = Command::new(bin);
    up.args(["up", "--prefix", prefix, "--nat", nat]);
    if let Some(c) = config {
        up.arg("--config").arg(c);
    }
    let res = sh(&mut up).and_then(|()| {
        if check {
            sh(Command::new(bin).args(["check", "--prefix", prefix]))
        } else {
            eprintln!();
            eprintln!("the lab runs until Ctrl-C; in another terminal, for example:");
            eprintln!("  {} exec --prefix {prefix} red -- ip route", bin.display());
            eprintln!("  {} status --prefix {prefix}", bin.display());
            let _ = stop_rx.recv();
            eprintln!("\nCtrl-C: tearing the lab down");
            Ok(())
        }
    });
    let down = sh(Command::new(bin).args(["down", "--prefix", prefix]));
    res.and(down)
}

/// clippy on the eBPF crate at `dir`, for its own target (nightly, core built from source).
fn clippy_ebpf(dir: &Path) -> Result<()> {
    sh(Command::new("rustup")
        .current_dir(dir)
        // The outer (stable) cargo's settings must not leak into the nightly one.
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]))
}

fn test(root: &Path, args: &[String]) -> Result<()> {
    sh(cargo(root).args(["fmt", "--all", "--check"]))?;
    sh(cargo(root).args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The eBPF crates only build for their own target.
    for ebpf in ["netns-ebpf", "netns-bench/ebpf"] {
        clippy_ebpf(&root.join(ebpf))?;
    }
    let bin = build(root, WITH_BENCH)?;
    if !is_root() {
        // Most tests build labs: skipped, they would prove nothing, so nothing passes.
        bail!("cargo xtask test needs root (network namespaces and BPF); run it as root");
    }
    // Long tests (soak, hostile traffic) leave one-line summaries here: printed at the end.
    let summaries = std::env::temp_dir().join("netns-nat-test-summaries");
    let _ = std::fs::remove_dir_all(&summaries);
    // A test that cannot run fails rather than skips (tests/src/lib.rs `privileged`).
    sh(cargo(root)
        .arg("test")
        .args(args)
        .env("NETNS_NAT_BIN", &bin)
        .env("NETNS_NAT_NO_SKIP", "1"))?;
    if let Ok(dir) = std::fs::read_dir(&summaries) {
        let mut files: Vec<_> = dir.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            if let Ok(text) = std::fs::read_to_string(&f) {
                print!("{text}");
            }
        }
    }
    if args.is_empty() {
        // The README's other command, end to end.
        run_lab(&bin, true, "ebpf", "xt-", None)?;
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}
