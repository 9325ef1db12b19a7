//! `netns-nat nat attach|detach`: the eBPF NAT on a namespace made outside netns-nat.

use anyhow::{Result, bail};
use clap::Subcommand;
use netns_user::lab::{self, Lab};

use super::common::PrefixArg;

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(subcommand)]
    action: Cmd,
}

/// `netns-nat nat ...`.
#[derive(Subcommand)]
enum Cmd {
    /// Attach the eBPF NAT to existing namespace NETNS: SNAT of the internal prefixes out of
    /// the uplink, the port forwards, conntrack in BPF maps. Only programs are added (and the
    /// agent started); no link, address, route or setting of the namespace changes.
    Attach {
        #[command(flatten)]
        prefix: PrefixArg,
        /// The router namespace (as `ip netns list` names it).
        #[arg(long)]
        netns: String,
        /// Its interface towards the outside; SNAT takes its address.
        #[arg(long)]
        uplink: String,
        /// Source prefixes to masquerade (comma-separated or repeated).
        #[arg(long, required = true, value_delimiter = ',')]
        internal: Vec<netns_user::config::Cidr>,
        /// A port forward, PROTO:PORT=ADDRESS:PORT (repeatable), e.g. tcp:80=192.168.15.2:80.
        #[arg(long = "forward", value_parser = parse_forward)]
        forwards: Vec<netns_user::config::ForwardSpec>,
        /// Where established flows skip the bridge and routing: tc (default) or off.
        #[arg(long, value_enum, default_value_t = netns_user::config::FastPath::Tc)]
        fast_path: netns_user::config::FastPath,
        /// The programs' diagnostics from this level up, in the agent's log.
        #[arg(long, value_enum, default_value_t = netns_user::config::LogLevel::Off)]
        log_level: netns_user::config::LogLevel,
    },
    /// Remove what `nat attach` added (programs, pins, agent, state); the namespace stays
    /// exactly as it was before.
    Detach {
        #[command(flatten)]
        prefix: PrefixArg,
    },
}

fn parse_forward(s: &str) -> Result<netns_user::config::ForwardSpec, String> {
    let bad = || format!("{s:?}: write a forward as PROTO:PORT=ADDRESS:PORT, e.g. tcp:80=192.168.15.2:80");
    let (from, to) = s.split_once('=').ok_or_else(bad)?;
    let (proto, port) = from.split_once(':').ok_or_else(bad)?;
    let protocol = match proto {
        "tcp" => netns_user::config::L4Proto::Tcp,
        "udp" => netns_user::config::L4Proto::Udp,
        _ => return Err(format!("{s:?}: the protocol is tcp or udp")),
    };
    Ok(netns_user::config::ForwardSpec {
        protocol,
        port: port.parse().map_err(|_| bad())?,
        to: to.parse().map_err(|_| bad())?,
    })
}

pub(super) fn exec(args: Args) -> Result<()> {
    match args.action {
        Cmd::Attach {
            prefix,
            netns,
            uplink,
            internal,
            forwards,
            fast_path,
            log_level,
        } => {
            let spec = netns_user::lab::AttachSpec {
                netns,
                uplink,
                internal,
                forwards,
                fast_path,
                log_level,
            };
            let lab = Lab::attach(&spec, &prefix.prefix, &mut |step| eprintln!("  {step}"))?;
            println!(
                "the eBPF NAT runs in namespace {} as lab {:?}: netns-nat conntrack|stats|status --prefix {}; \
                 netns-nat nat detach --prefix {} removes it",
                spec.netns,
                lab.prefix(),
                lab.prefix(),
                lab.prefix()
            );
        }
        Cmd::Detach { prefix } => {
            let p = prefix.prefix;
            let lab = Lab::open(&p)?;
            if !lab.config.attached {
                bail!(
                    "lab {p:?} was made by `up`, not `nat attach`: remove it with `netns-nat down --prefix {p}`"
                );
            }
            let report = lab::down(&p)?;
            println!(
                "detached the NAT of lab {p:?} from namespace {}{}",
                lab.config.namespaces[0].name,
                if report.pins_removed {
                    " (programs and pins removed)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}
