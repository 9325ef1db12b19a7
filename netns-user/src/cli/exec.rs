//! `netns-nat exec`: run a command inside one of a lab's namespaces.

use anyhow::{Result, bail};
use netns_user::{
    lab::{self, Lab},
    sys::netns,
};

use super::common::PrefixArg;

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    prefix: PrefixArg,
    /// Namespace name as in the lab file (red, blue, host, lan).
    name: String,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

pub(super) fn exec(args: Args) -> Result<()> {
    let Args {
        prefix,
        name,
        command,
    } = args;
    lab::require_root()?;
    let lab = Lab::open(&prefix.prefix)?;
    if !lab.config.namespaces.iter().any(|n| n.name == name) {
        let names: Vec<_> = lab.config.namespaces.iter().map(|n| n.name.as_str()).collect();
        bail!(
            "lab {:?} has no namespace {name:?} (it has: {})",
            prefix.prefix,
            names.join(", ")
        );
    }
    netns::enter_for_exec(&lab.ns(&name))?;
    use std::os::unix::process::CommandExt as _;
    let err = std::process::Command::new(&command[0]).args(&command[1..]).exec();
    bail!("cannot run {:?}: {err}", command[0]);
}
