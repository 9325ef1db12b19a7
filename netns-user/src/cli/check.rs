//! `netns-nat check`: play the scenario's acceptance exchanges; the exit status says.

use std::{process::ExitCode, time::Duration};

use anyhow::Result;
use netns_user::{
    lab::{self, Lab},
    probe,
};

use super::{common::PrefixArg, print::print_checks};

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    prefix: PrefixArg,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 2.0)]
    wait: f64,
    #[arg(long)]
    json: bool,
}

pub(super) fn exec(args: Args) -> Result<ExitCode> {
    lab::require_root()?;
    let lab = Lab::open(&args.prefix.prefix)?;
    let checks = probe::check(&lab, Duration::from_secs_f64(args.wait))?;
    let passed = checks.iter().filter(|c| c.passed).count();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        print_checks(&lab, &checks);
    }
    Ok(if passed == checks.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
