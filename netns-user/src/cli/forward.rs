//! `netns-nat forward add|del|list`: the port forwards of a running eBPF NAT, changed live.

use anyhow::{Context as _, Result};
use clap::Subcommand;
use netns_user::ops::agent::{Request, request};

use super::{
    common::{PrefixArg, ebpf_lab},
    print::print_forwards,
};

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(subcommand)]
    action: Cmd,
}

/// `netns-nat forward ...`.
#[derive(Subcommand)]
enum Cmd {
    /// Forward PROTO port PORT of the uplink's address to TO (an internal address:port).
    Add {
        #[command(flatten)]
        prefix: PrefixArg,
        #[arg(long, value_enum)]
        proto: netns_user::config::L4Proto,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        to: std::net::SocketAddrV4,
    },
    /// Remove the forward of PROTO port PORT (and the connections that came in through it).
    Del {
        #[command(flatten)]
        prefix: PrefixArg,
        #[arg(long, value_enum)]
        proto: netns_user::config::L4Proto,
        #[arg(long)]
        port: u16,
    },
    /// The lab's forwards, and whether each is live in the NAT's maps.
    List {
        #[command(flatten)]
        prefix: PrefixArg,
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn exec(args: Args) -> Result<()> {
    use netns_user::config::ForwardSpec;
    let cmd = args.action;
    let p = match &cmd {
        Cmd::Add { prefix, .. } | Cmd::Del { prefix, .. } | Cmd::List { prefix, .. } => prefix.prefix.clone(),
    };
    // A kernel-NAT lab keeps the lab file's [[nat.forward]].
    let lab = ebpf_lab(&p, "live forwards are for the eBPF NAT")?;
    match cmd {
        Cmd::Add { proto, port, to, .. } => {
            let forward = ForwardSpec {
                protocol: proto,
                port,
                to,
            };
            request(&p, &Request::ForwardAdd { forward })?;
            println!("forwarding {proto} port {port} of lab {p:?} to {to}");
        }
        Cmd::Del { proto, port, .. } => {
            let v = request(
                &p,
                &Request::ForwardDel {
                    protocol: proto,
                    port,
                },
            )?;
            println!(
                "removed the forward of {proto} port {port} (to {})",
                v["to"].as_str().unwrap_or("?")
            );
        }
        Cmd::List { json, .. } => {
            let nat = lab.config.nat.as_ref().context("the lab has no [nat] section")?;
            let live = netns_user::ops::conntrack::mappings(&p)?;
            let ext = lab.config.uplink_address();
            let rows: Vec<serde_json::Value> = nat
                .forwards
                .iter()
                .map(|f| {
                    let external = ext.map(|a| format!("{a}:{}", f.port)).unwrap_or_default();
                    let is_live = live.iter().any(|m| {
                        m.is_static && m.protocol == f.protocol.to_string() && m.internal == f.to.to_string()
                    });
                    serde_json::json!({
                        "protocol": f.protocol.to_string(),
                        "port": f.port,
                        "to": f.to.to_string(),
                        "external": external,
                        "live": is_live,
                    })
                })
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print_forwards(&rows);
            }
        }
    }
    Ok(())
}
