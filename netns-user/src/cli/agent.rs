//! `netns-nat agent` (hidden): the eBPF NAT's agent of a lab, started by `up`.

use anyhow::Result;
use netns_user::lab;

use super::common::PrefixArg;

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    prefix: PrefixArg,
}

pub(super) fn exec(args: Args) -> Result<()> {
    lab::require_root()?;
    netns_user::ops::agent::run(&args.prefix.prefix)?;
    Ok(())
}
