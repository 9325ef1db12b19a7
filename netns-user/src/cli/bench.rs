//! `netns-nat bench`: runs the benchmark, a program of its own (`netns-nat-bench`, the
//! netns-bench crate) installed beside this one, so that the product carries no benchmark
//! code. Its arguments, `--help` included, are the benchmark's.

use std::{ffi::OsString, process::ExitCode};

use anyhow::{Context as _, Result, bail};

/// The benchmark's program, looked for beside this one.
const BENCH_BIN: &str = "netns-nat-bench";

#[derive(clap::Args)]
pub(super) struct Args {
    /// The benchmark's options (see `netns-nat bench --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

pub(super) fn exec(a: Args) -> Result<ExitCode> {
    let me = std::env::current_exe().context("where netns-nat runs from")?;
    let bench = me.with_file_name(BENCH_BIN);
    if !bench.exists() {
        bail!(
            "{} is missing: the benchmark is a program of its own, built beside netns-nat by \
             `cargo xtask build` (or `cargo build -p netns-bench`); `cargo xtask bench` builds and \
             runs it",
            bench.display()
        );
    }
    let status = std::process::Command::new(&bench)
        .args(&a.args)
        .status()
        .with_context(|| format!("running {}", bench.display()))?;
    // Its own exit status; a signal's end is a failure.
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}
