//! `netns-nat config apply|show`: the running configuration of a lab's NAT.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use netns_user::lab::{self, Lab};

use super::common::{PrefixArg, ebpf_lab};

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(subcommand)]
    action: Cmd,
}

/// `netns-nat config ...`.
#[derive(Subcommand)]
enum Cmd {
    /// Apply FILE's [nat] settings to the running eBPF NAT: port ranges, timeouts,
    /// filtering, unsupported protocols, internal prefixes, the sweep interval. New flows
    /// follow them at once; existing flows and mappings keep what they were made with.
    /// Anything else that differs (router, uplink, table sizes, fast path, namespaces,
    /// forwards) refuses the whole file and nothing changes.
    ///
    /// FILE is a lab file, or a file with only a [nat] section.
    Apply {
        #[command(flatten)]
        prefix: PrefixArg,
        file: PathBuf,
    },
    /// Print the lab's running configuration (the lab file with every live change).
    Show {
        #[command(flatten)]
        prefix: PrefixArg,
    },
}

pub(super) fn exec(args: Args) -> Result<()> {
    lab::require_root()?;
    match args.action {
        Cmd::Apply { prefix, file } => {
            let p = prefix.prefix;
            let lab = ebpf_lab(&p, "live settings are for the eBPF NAT")?;
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let nat = lab
                .config
                .nat_from_file(&text)
                .with_context(|| format!("in {}", file.display()))?;
            // Checked here for a clear error, and again by the agent against what runs.
            lab.config.with_live_nat(nat.clone())?;
            netns_user::ops::agent::request(
                &p,
                &netns_user::ops::agent::Request::ConfigApply { nat: Box::new(nat) },
            )?;
            println!("applied {} to lab {p:?}", file.display());
        }
        Cmd::Show { prefix } => {
            let lab = Lab::open(&prefix.prefix)?;
            print!("{}", lab.config.to_toml());
        }
    }
    Ok(())
}
