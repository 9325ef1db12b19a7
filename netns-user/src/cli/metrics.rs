//! `netns-nat metrics`: the lab's NAT as Prometheus metrics.

use anyhow::Result;
use netns_user::lab::{self, Lab};

use super::common::PrefixArg;

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    prefix: PrefixArg,
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:9464")]
    listen: std::net::SocketAddr,
    /// Print the metrics once and exit, instead of serving them.
    #[arg(long)]
    once: bool,
}

pub(super) fn exec(args: Args) -> Result<()> {
    let Args { prefix, listen, once } = args;
    lab::require_root()?;
    let lab = Lab::open(&prefix.prefix)?;
    let src = netns_user::ops::metrics::Source {
        prefix: &prefix.prefix,
        kind: lab.state.nat,
        nat: lab.config.nat.as_ref(),
    };
    if once {
        print!("{}", netns_user::ops::metrics::scrape(src)?);
    } else {
        eprintln!(
            "serving the metrics of lab {:?} on http://{listen}/metrics",
            prefix.prefix
        );
        netns_user::ops::metrics::serve(src, listen)?;
    }
    Ok(())
}
