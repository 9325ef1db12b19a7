//! `netns-nat trace`: each translation and drop of the eBPF NAT as it happens.

use std::time::Duration;

use anyhow::{Context as _, Result};

use super::common::{PrefixArg, ProtoArg, ebpf_lab};

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    prefix: PrefixArg,
    /// Only this protocol.
    #[arg(long, value_enum)]
    proto: Option<ProtoArg>,
    /// Only packets with this address on any side, before or after translation.
    #[arg(long)]
    host: Option<std::net::Ipv4Addr>,
    /// Only packets with this port (or ICMP echo identifier) on any side.
    #[arg(long)]
    port: Option<u16>,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long = "for", value_name = "SECS")]
    trace_for: Option<f64>,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// One JSON object per event (field names in the README).
    #[arg(long)]
    json: bool,
}

pub(super) fn exec(args: Args) -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOP: AtomicBool = AtomicBool::new(false);
    let Args {
        prefix,
        proto,
        host,
        port,
        trace_for,
        count,
        json,
    } = args;
    let p = prefix.prefix;
    ebpf_lab(&p, "trace is for the eBPF NAT")?;
    ctrlc::set_handler(|| STOP.store(true, Ordering::Relaxed)).context("installing the Ctrl-C handler")?;
    let filter = netns_user::ops::trace::TraceFilter {
        proto: proto.map(ProtoArg::number),
        host,
        port,
    };
    if !json {
        eprintln!("tracing lab {p:?} (Ctrl-C to stop)");
    }
    let n = netns_user::ops::trace::run(
        &p,
        filter,
        trace_for.map(Duration::from_secs_f64),
        count,
        &STOP,
        |e| {
            if json {
                println!("{}", serde_json::to_string(e).expect("an event serialises"));
            } else {
                println!("{}", e.line());
            }
        },
    )?;
    if !json {
        eprintln!("{n} events");
    }
    Ok(())
}
