//! `netns-nat stats`: the NAT's counters and the uplink's, once or refreshed with rates.

use std::time::Duration;

use anyhow::{Result, bail};
use netns_user::lab::{self, Lab};

use super::{
    common::PrefixArg,
    print::{flatten, print_rates, print_stats, rates},
};

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    prefix: PrefixArg,
    #[arg(long)]
    json: bool,
    /// Refresh, with rates per second.
    #[arg(long)]
    watch: bool,
    /// With --watch: seconds between refreshes.
    #[arg(long, default_value_t = 1.0, requires = "watch")]
    interval: f64,
    /// With --watch: stop after this many seconds.
    #[arg(long = "for", value_name = "SECS", requires = "watch")]
    watch_for: Option<f64>,
}

pub(super) fn exec(args: Args) -> Result<()> {
    let Args {
        prefix,
        json,
        watch,
        interval,
        watch_for,
    } = args;
    lab::require_root()?;
    let lab = Lab::open(&prefix.prefix)?;
    // Not refused on a kernel-NAT lab: it has the uplink's counters.
    let read = || -> Result<serde_json::Value> {
        Ok(if lab.runs_ebpf() {
            serde_json::to_value(netns_user::ops::conntrack::stats(&prefix.prefix)?)?
        } else {
            serde_json::json!({ "uplink": netns_user::bpf::read_uplink_counters(&prefix.prefix)? })
        })
    };
    if watch {
        if !(0.05..=3600.0).contains(&interval) {
            bail!("--interval {interval}: give 0.05 to 3600 seconds");
        }
        let until = watch_for.map(|s| std::time::Instant::now() + Duration::from_secs_f64(s));
        let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
        let mut before = (std::time::Instant::now(), flatten(&read()?));
        while until.is_none_or(|u| std::time::Instant::now() < u) {
            std::thread::sleep(Duration::from_secs_f64(interval));
            let now = (std::time::Instant::now(), flatten(&read()?));
            let dt = now.0.duration_since(before.0).as_secs_f64();
            let per_s = rates(&before.1, &now.1, dt);
            if json {
                let out = serde_json::json!({ "interval_s": dt, "totals": now.1, "per_s": per_s });
                println!("{}", serde_json::to_string(&out)?);
            } else {
                print_rates(&now.1, &per_s, tty);
            }
            let _ = std::io::Write::flush(&mut std::io::stdout());
            before = now;
        }
        return Ok(());
    }
    let out = read()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_stats(&out);
    }
    Ok(())
}
