//! `netns-nat status`: what a lab is made of and how its NAT is doing.

use anyhow::Result;
use netns_user::lab::{self, Lab};

use super::{common::PrefixArg, print::print_status};

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    prefix: PrefixArg,
    /// Machine-readable output (field names in the README).
    #[arg(long)]
    json: bool,
}

pub(super) fn exec(args: Args) -> Result<()> {
    lab::require_root()?;
    let status = Lab::open(&args.prefix.prefix)?.status()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_status(&status);
    }
    Ok(())
}
