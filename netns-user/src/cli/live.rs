//! Commands that change a running NAT: forward, config, nat attach/detach.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use netns_user::lab::{self, Lab};

use super::{PrefixArg, ebpf_lab};

/// `netns-nat forward ...`.
#[derive(Subcommand)]
pub(super) enum ForwardCmd {
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

pub(super) fn forward(cmd: ForwardCmd) -> Result<()> {
    use netns_user::config::ForwardSpec;
    let p = match &cmd {
        ForwardCmd::Add { prefix, .. } | ForwardCmd::Del { prefix, .. } | ForwardCmd::List { prefix, .. } => {
            prefix.prefix.clone()
        }
    };
    // A kernel-NAT lab keeps the lab file's [[nat.forward]].
    let lab = ebpf_lab(&p, "live forwards are")?;
    use netns_user::ops::agent::{Request, request};
    match cmd {
        ForwardCmd::Add { proto, port, to, .. } => {
            let forward = ForwardSpec {
                protocol: proto,
                port,
                to,
            };
            request(&p, &Request::ForwardAdd { forward })?;
            println!("forwarding {proto} port {port} of lab {p:?} to {to}");
        }
        ForwardCmd::Del { proto, port, .. } => {
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
        ForwardCmd::List { json, .. } => {
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
            } else if rows.is_empty() {
                println!("no port forwards");
            } else {
                for r in &rows {
                    println!(
                        "{:<4} {:>5} -> {:<21} {}",
                        r["protocol"].as_str().unwrap_or(""),
                        r["port"],
                        r["to"].as_str().unwrap_or(""),
                        if r["live"] == true {
                            ""
                        } else {
                            "(not in the maps!)"
                        }
                    );
                }
            }
        }
    }
    Ok(())
}

/// `netns-nat config ...`.
#[derive(Subcommand)]
pub(super) enum ConfigCmd {
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

pub(super) fn config_cmd(cmd: ConfigCmd) -> Result<()> {
    lab::require_root()?;
    match cmd {
        ConfigCmd::Apply { prefix, file } => {
            let p = prefix.prefix;
            let lab = ebpf_lab(&p, "live settings are")?;
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
        ConfigCmd::Show { prefix } => {
            let lab = Lab::open(&prefix.prefix)?;
            print!("{}", lab.config.to_toml());
        }
    }
    Ok(())
}

/// `netns-nat nat ...`.
#[derive(Subcommand)]
pub(super) enum NatCmd {
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

pub(super) fn parse_forward(s: &str) -> Result<netns_user::config::ForwardSpec, String> {
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

pub(super) fn nat_cmd(cmd: NatCmd) -> Result<()> {
    match cmd {
        NatCmd::Attach {
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
        NatCmd::Detach { prefix } => {
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
