//! `netns-nat down`: remove a lab, whole or half-built.

use anyhow::Result;
use netns_user::lab;

use super::common::PrefixArg;

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    prefix: PrefixArg,
}

pub(super) fn exec(args: Args) -> Result<()> {
    let prefix = args.prefix;
    let report = lab::down(&prefix.prefix)?;
    if report.found_anything() {
        eprintln!(
            "removed lab {:?}: namespaces [{}]{}",
            prefix.prefix,
            report.namespaces.join(", "),
            if report.pins_removed {
                ", pinned eBPF objects"
            } else {
                ""
            }
        );
    } else {
        eprintln!("no lab with prefix {:?}: nothing to remove", prefix.prefix);
    }
    Ok(())
}
