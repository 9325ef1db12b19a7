//! `netns-nat conntrack`: list, count, delete or watch the eBPF NAT's flows and mappings.

use std::time::Duration;

use anyhow::{Result, bail};
use netns_common::{
    filter::EntryFilter,
    nat::{TcpState, addr_to_wire, port_to_wire},
};

use netns_user::ops::{
    agent::{Filter, Request, request},
    conntrack::Deleted,
};

use super::{
    common::{PrefixArg, ProtoArg, ebpf_lab},
    print::{event_line, print_conntrack},
};

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    prefix: PrefixArg,
    /// Machine-readable output (field names in the README; with --watch one JSON object
    /// per line).
    #[arg(long)]
    json: bool,
    /// Only this protocol.
    #[arg(long, value_enum)]
    proto: Option<ProtoArg>,
    /// Only entries with this IPv4 address on any side.
    #[arg(long)]
    addr: Option<std::net::Ipv4Addr>,
    /// Only entries with this port (or ICMP echo identifier) on any side.
    #[arg(long)]
    port: Option<u16>,
    /// Only TCP flows in this state: none, syn_out, syn_in, established, fin_out, fin_in,
    /// closed.
    #[arg(long, value_parser = parse_tcp_state)]
    state: Option<TcpState>,
    /// Only flows opened from inside (outbound) or from outside (inbound).
    #[arg(long, value_enum)]
    origin: Option<OriginArg>,
    /// Print how many flows and mappings the filters select.
    #[arg(long, conflicts_with_all = ["delete", "flush", "watch"])]
    count: bool,
    /// Delete the selected flows and mappings (a mapping goes with both of its entries
    /// and every flow that uses it; port forwards stay). Needs at least one filter.
    #[arg(long, conflicts_with_all = ["flush", "watch"])]
    delete: bool,
    /// Delete every flow and mapping except the port forwards.
    #[arg(long, conflicts_with_all = ["watch", "proto", "addr", "port", "state", "origin"])]
    flush: bool,
    /// Print flows and mappings as they appear and go ([NEW], [DESTROY]), until Ctrl-C
    /// (or --for).
    #[arg(long)]
    watch: bool,
    /// With --watch: stop after this many seconds.
    #[arg(long = "for", value_name = "SECS", requires = "watch")]
    watch_for: Option<f64>,
}

/// `--origin`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum OriginArg {
    Outbound,
    Inbound,
}

impl OriginArg {
    fn code(self) -> u8 {
        match self {
            OriginArg::Outbound => netns_common::nat::ORIGIN_OUTBOUND,
            OriginArg::Inbound => netns_common::nat::ORIGIN_INBOUND,
        }
    }
}

fn parse_tcp_state(s: &str) -> Result<TcpState, String> {
    TcpState::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = TcpState::ALL.iter().map(|s| s.name()).collect();
        format!("unknown TCP state {s:?}; one of {}", names.join(", "))
    })
}

pub(super) fn exec(args: Args) -> Result<()> {
    let Args {
        prefix,
        json,
        proto,
        addr,
        port,
        state,
        origin,
        count,
        delete,
        flush,
        watch,
        watch_for,
    } = args;
    let p = &prefix.prefix;
    ebpf_lab(
        p,
        &format!(
            "its state is in the kernel's conntrack \
             (netns-nat exec --prefix {p} <router> -- conntrack -L)"
        ),
    )?;
    let filter = EntryFilter {
        proto: proto.map(ProtoArg::number),
        addr: addr.map(addr_to_wire),
        port: port.map(port_to_wire),
        state,
        origin: origin.map(OriginArg::code),
    };
    if delete || flush {
        if delete && filter == EntryFilter::default() {
            bail!(
                "--delete needs a filter (--proto, --addr, --port, --state, --origin); \
                 --flush deletes everything"
            );
        }
        // The agent makes every change to a running NAT, this one too.
        let v = request(
            p,
            &Request::ConntrackDelete {
                filter: Filter::from(&filter),
            },
        )?;
        let gone: Deleted = serde_json::from_value(v)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&gone)?);
        } else {
            println!(
                "deleted {} flows and {} mappings{}",
                gone.flows,
                gone.mappings,
                if gone.forwards_kept > 0 {
                    format!(
                        " ({} port forwards kept: they are the lab's configuration)",
                        gone.forwards_kept
                    )
                } else {
                    String::new()
                }
            );
        }
        return Ok(());
    }
    if watch {
        let until = watch_for.map(|s| std::time::Instant::now() + Duration::from_secs_f64(s));
        let go_on = || until.is_none_or(|u| std::time::Instant::now() < u);
        netns_user::ops::conntrack::watch(p, &filter, Duration::from_millis(100), go_on, |e| {
            if json {
                println!("{}", serde_json::to_string(&e).unwrap_or_default());
            } else {
                println!("{}", event_line(&e));
            }
            let _ = std::io::Write::flush(&mut std::io::stdout());
        })?;
        return Ok(());
    }
    let flows = netns_user::ops::conntrack::live_flows_where(p, &filter)?;
    let mappings = if filter.flows_only() {
        Vec::new()
    } else {
        netns_user::ops::conntrack::mappings_where(p, &filter)?
    };
    if count {
        if json {
            let out = serde_json::json!({ "flows": flows.len(), "mappings": mappings.len() });
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            println!("{} flows, {} mappings", flows.len(), mappings.len());
        }
    } else if json {
        let out = serde_json::json!({ "flows": flows, "mappings": mappings });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_conntrack(&flows, &mappings);
    }
    Ok(())
}
