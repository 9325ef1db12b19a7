//! `netns-nat list`: the labs on this machine.

use anyhow::Result;
use netns_user::lab::{self, Lab};

#[derive(clap::Args)]
pub(super) struct Args {}

pub(super) fn exec(_: Args) -> Result<()> {
    for p in lab::list() {
        let nat = Lab::open(&p)
            .map(|l| l.state.nat.to_string())
            .unwrap_or_else(|e| format!("unreadable: {e}"));
        println!("{p}\tnat={nat}");
    }
    Ok(())
}
