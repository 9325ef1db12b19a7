//! The command line: what each command takes (clap) and does, by calling the library.
//! `print` shows results, `args` parses arguments, `live` has the commands that change a
//! running NAT (forward, config, nat attach/detach).

mod args;
mod live;
mod print;

use args::{OriginArg, ProtoArg, parse_tcp_state};
use live::{ConfigCmd, ForwardCmd, NatCmd, config_cmd, forward, nat_cmd};
use print::{event_line, flatten, print_stats, print_status, print_summary, rates};

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use netns_common::{
    filter::EntryFilter,
    nat::{TcpState, addr_to_wire, port_to_wire},
};
use netns_user::{
    bench,
    config::LabConfig,
    lab::{self, DEFAULT_PREFIX, Lab},
    nat::{NatKind, Resumed},
    probe,
    sys::netns,
};

/// Network namespace labs over netlink, with their NAT in eBPF or in the kernel
/// (iptables, nftables) for comparison.
///
/// The default lab is the classic walkthrough: namespaces red (192.168.15.1) and blue
/// (192.168.15.2) on bridge v-net-0 in a router namespace "host" (192.168.15.254, uplink
/// 192.168.1.2), and a LAN namespace "lan" (192.168.1.3). The router masquerades
/// 192.168.15.0/24 out of its uplink and forwards TCP port 80 to blue.
/// Every namespace name gets the lab prefix, so labs never collide; nothing is created in
/// the machine's own namespace. Needs root.
#[derive(Parser)]
#[command(name = "netns-nat", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
pub(super) struct PrefixArg {
    /// Lab prefix: namespace names are PREFIX + the name in the lab file (nn-red, ...).
    #[arg(long, short, default_value = DEFAULT_PREFIX)]
    pub(super) prefix: String,
}

#[derive(Subcommand)]
enum Command {
    /// Create a lab and return when it is ready; it stays until `down`.
    ///
    /// On a lab that exists: --resume restarts its agent if it died; --upgrade swaps this
    /// build's eBPF programs into it (flows, mappings and counters kept).
    Up {
        /// Lab file (TOML); the built-in default is the reference lab
        /// (netns-user/labs/reference.toml).
        #[arg(long, short, conflicts_with_all = ["resume", "upgrade"])]
        config: Option<PathBuf>,
        #[command(flatten)]
        prefix: PrefixArg,
        /// NAT in the router namespace.
        #[arg(long, value_enum, default_value_t = NatKind::Ebpf, conflicts_with_all = ["resume", "upgrade"])]
        nat: NatKind,
        /// eBPF NAT only: where established flows skip the bridge and routing (overrides
        /// the lab file's [nat.ebpf] fast_path; default tc).
        #[arg(long, value_enum, conflicts_with_all = ["resume", "upgrade"])]
        fast_path: Option<netns_user::config::FastPath>,
        /// The lab exists: start its agent again if it is not running (after a crash or a
        /// kill). Packets were translated all along; this brings back expiry, address
        /// following and live changes.
        #[arg(long, conflicts_with = "upgrade")]
        resume: bool,
        /// The lab exists: load this build's eBPF programs and swap them into the running
        /// hooks atomically (TCX and XDP link updates), keeping the pinned maps, so
        /// established connections keep flowing; the agent is restarted from this build.
        /// Refused, with nothing changed, if the maps' layout differs from this build's.
        #[arg(long)]
        upgrade: bool,
        /// eBPF NAT only: the programs' diagnostics (aya-log) from this level up, written to
        /// the agent's log (`netns-nat logs`). Set when the programs load: with `up`, or
        /// changed with --upgrade. Default: the lab file's [nat.ebpf] log_level, off.
        #[arg(long, value_enum, conflicts_with = "resume")]
        log_level: Option<netns_user::config::LogLevel>,
    },
    /// Remove every namespace, link, rule and pinned object of a lab (and nothing else).
    /// Works on a half-built lab; a lab that is not there is not an error.
    Down {
        #[command(flatten)]
        prefix: PrefixArg,
    },
    /// Show a lab: namespaces, links, addresses, routes, NAT rules and uplink counters.
    Status {
        #[command(flatten)]
        prefix: PrefixArg,
        /// Machine-readable output (field names in the README).
        #[arg(long)]
        json: bool,
    },
    /// List the labs on this machine (their prefixes).
    List,
    /// Run a command inside lab namespace NAME (like `ip netns exec`).
    ///
    /// Example: netns-nat exec red -- ip addr
    Exec {
        #[command(flatten)]
        prefix: PrefixArg,
        /// Namespace name as in the lab file (red, blue, host, lan).
        name: String,
        /// The command and its arguments.
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// The eBPF NAT's conntrack tables, like conntrack(8): list, count, delete or watch its
    /// flows and mappings.
    ///
    /// Filters select entries by what is on any side of them (internal, external or remote):
    /// --proto, --addr, --port; --state and --origin select flows only. Examples:
    ///
    ///   netns-nat conntrack --proto tcp --state established
    ///
    ///   netns-nat conntrack --addr 192.168.15.1 --count
    ///
    ///   netns-nat conntrack --port 7001 --delete
    ///
    ///   netns-nat conntrack --watch --for 10
    Conntrack {
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
    },
    /// Port forwards of a running eBPF NAT, changed live through its maps (no flow of any
    /// other forward or mapping is touched) and recorded in the lab's stored configuration.
    ///
    /// Example: netns-nat forward add --proto tcp --port 8080 --to 192.168.15.1:8080
    Forward {
        #[command(subcommand)]
        action: ForwardCmd,
    },
    /// Serve the lab's NAT as Prometheus metrics (OpenMetrics text at /metrics): every
    /// counter, conntrack occupancy per protocol and TCP state, port-range use, table
    /// pressure, the uplink's counters. Runs until stopped (Ctrl-C).
    ///
    /// Example: netns-nat metrics --listen 127.0.0.1:9464, then curl 127.0.0.1:9464/metrics
    Metrics {
        #[command(flatten)]
        prefix: PrefixArg,
        /// Address to serve on.
        #[arg(long, default_value = "127.0.0.1:9464")]
        listen: std::net::SocketAddr,
        /// Print the metrics once and exit, instead of serving them.
        #[arg(long)]
        once: bool,
    },
    /// Show the NAT's counters (eBPF labs) and the uplink's packet counters (every lab).
    ///
    /// With --watch: the counters and their rates per second, refreshed in place every
    /// --interval seconds until Ctrl-C (or --for); with --json, one JSON object per refresh.
    Stats {
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
    },
    /// Benchmark every NAT backend side by side: forwarding rate and CPU per packet at full
    /// offered rate (1 and many flows, 1 and one generator thread per CPU), TCP throughput,
    /// connection rate and latency, against the bare-redirect ceilings of the path. Every
    /// measurement point is taken for each backend in turn, round after round; results go
    /// to bench-results/<time>/ (results.json, report.md, SVG charts). Creates and removes
    /// its own labs; the full run takes about 40 minutes (--quick: about 2).
    Bench {
        /// One short round of every workload, own generator and client only.
        #[arg(long)]
        quick: bool,
        /// Backends to compare (comma-separated; tc-redirect and xdp-redirect are the
        /// ceilings: bare redirects with no NAT, for packet workloads only).
        #[arg(long, value_enum, value_delimiter = ',')]
        backends: Option<Vec<bench::Backend>>,
        /// Workloads to run (comma-separated).
        #[arg(long, value_enum, value_delimiter = ',')]
        workloads: Option<Vec<bench::Workload>>,
        /// Generators of the packet workloads (comma-separated): netns-nat (the project's
        /// AF_PACKET ring) and/or trafgen (independent check). Full run: both.
        #[arg(long, value_enum, value_delimiter = ',')]
        generator: Option<Vec<bench::Generator>>,
        /// Generator threads (pinned, one per CPU) of the packet workloads, each its own
        /// point (comma-separated). Default: 1 and the number of CPUs.
        #[arg(long, value_delimiter = ',')]
        gen_threads: Option<Vec<usize>>,
        /// Clients of the connection-rate workload (comma-separated): netns-nat and/or wrk.
        #[arg(long, value_enum, value_delimiter = ',')]
        conn_client: Option<Vec<bench::ConnClient>>,
        /// Concurrent flows of the many-flows workload.
        #[arg(long)]
        flows: Option<u32>,
        /// Rounds (default 3, --quick 1).
        #[arg(long)]
        rounds: Option<u32>,
        /// Seconds per measurement (default 5, --quick 1).
        #[arg(long)]
        duration: Option<f64>,
        /// Where the run's directory goes.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
        /// Also write results.json here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Run the eBPF NAT's agent for a lab (started by `up`, stopped by `down`; not for
    /// direct use).
    #[command(hide = true)]
    Agent {
        #[command(flatten)]
        prefix: PrefixArg,
    },
    /// The eBPF NAT on a namespace you made yourself (`ip netns add`, a container, ...):
    /// the drop-in replacement for the iptables MASQUERADE and DNAT lines of the namespaces
    /// walkthrough. conntrack, stats, metrics, forward, config and status then work with
    /// its --prefix as with a lab.
    ///
    /// Example: netns-nat nat attach --netns router --uplink eth0 --internal 192.168.15.0/24
    /// --forward tcp:80=192.168.15.2:80
    Nat {
        #[command(subcommand)]
        action: NatCmd,
    },
    /// Print each translation and drop of the eBPF NAT as it happens: hook, protocol,
    /// addresses and ports before and after, verdict, drop reason. The programs write events
    /// only while a trace runs (otherwise it costs them one array lookup per packet).
    ///
    /// Example: netns-nat trace --proto udp --host 192.168.15.1 --for 10
    Trace {
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
    },
    /// The log of a lab's agent: its own messages and the eBPF programs' diagnostics (at
    /// the level set with `up --log-level`).
    Logs {
        #[command(flatten)]
        prefix: PrefixArg,
        /// Keep printing what is appended, until Ctrl-C (or --for).
        #[arg(long)]
        follow: bool,
        /// With --follow: stop after this many seconds.
        #[arg(long = "for", value_name = "SECS", requires = "follow")]
        follow_for: Option<f64>,
    },
    /// The running configuration of a lab's NAT.
    Config {
        #[command(subcommand)]
        action: ConfigCmd,
    },
    /// Play the scenario's acceptance exchanges (ICMP, UDP, TCP, HTTP through the port
    /// forward) and say whether each behaves as the lab's NAT should. Exits non-zero if not.
    Check {
        #[command(flatten)]
        prefix: PrefixArg,
        /// Seconds to wait for each answer.
        #[arg(long, default_value_t = 2.0)]
        wait: f64,
        #[arg(long)]
        json: bool,
    },
}

/// Prints file `path`, and with `follow` what is appended to it until Ctrl-C or `within`.
fn follow_file(path: &std::path::Path, follow: bool, within: Option<Duration>) -> Result<()> {
    use std::io::{Read as _, Write as _};
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let start = std::time::Instant::now();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        f.read_to_end(&mut buf)?;
        std::io::stdout().write_all(&buf)?;
        std::io::stdout().flush()?;
        if !follow || within.is_some_and(|w| start.elapsed() >= w) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Lab `prefix`, as root, refused unless it runs the eBPF NAT (`what` needs its maps).
pub(super) fn ebpf_lab(prefix: &str, what: &str) -> Result<Lab> {
    lab::require_root()?;
    let lab = Lab::open(prefix)?;
    if lab.state.nat != NatKind::Ebpf {
        bail!(
            "lab {prefix:?} uses {} NAT: {what} for the eBPF NAT",
            lab.state.nat
        );
    }
    Ok(lab)
}

pub fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("netns-nat: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Up {
            prefix, resume: true, ..
        } => {
            let lab = Lab::open(&prefix.prefix)?;
            match lab.resume()? {
                Resumed::Nothing => eprintln!(
                    "lab {:?} ({} NAT) has nothing to resume: the kernel runs its NAT",
                    prefix.prefix, lab.state.nat
                ),
                Resumed::Running(pid) => {
                    eprintln!("the agent of lab {:?} is running (pid {pid})", prefix.prefix)
                }
                Resumed::Started(pid) => {
                    eprintln!("started the agent of lab {:?} (pid {pid})", prefix.prefix)
                }
            }
        }
        Command::Up {
            prefix,
            upgrade: true,
            log_level,
            ..
        } => {
            let mut lab = Lab::open(&prefix.prefix)?;
            eprintln!("upgrading lab {:?}: {}", prefix.prefix, lab.upgrade(log_level)?);
        }
        Command::Up {
            config,
            prefix,
            nat,
            fast_path,
            log_level,
            ..
        } => {
            let mut cfg = match &config {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    LabConfig::parse(&text).with_context(|| format!("in {}", path.display()))?
                }
                None => LabConfig::reference(),
            };
            if let Some(fp) = fast_path {
                if nat != NatKind::Ebpf {
                    bail!("--fast-path is a setting of the eBPF NAT (--nat ebpf), not of --nat {nat}");
                }
                match cfg.nat.as_mut() {
                    Some(n) => n.ebpf.fast_path = fp,
                    None => bail!("--fast-path: the lab file has no [nat] section"),
                }
            }
            if let Some(level) = log_level {
                if nat != NatKind::Ebpf {
                    bail!("--log-level is a setting of the eBPF NAT (--nat ebpf), not of --nat {nat}");
                }
                match cfg.nat.as_mut() {
                    Some(n) => n.ebpf.log_level = level,
                    None => bail!("--log-level: the lab file has no [nat] section"),
                }
            }
            let lab = Lab::up(&cfg, &prefix.prefix, nat, &mut |step| eprintln!("  {step}"))?;
            print_summary(&lab);
        }
        Command::Down { prefix } => {
            let report = lab::down(&prefix.prefix)?;
            if report.found_anything() {
                eprintln!(
                    "removed lab {:?}: namespaces [{}]{}",
                    prefix.prefix,
                    report.namespaces.join(", "),
                    if report.pins_removed {
                        ", pinned eBPF objects"
                    } else {
                        ""
                    }
                );
            } else {
                eprintln!("no lab with prefix {:?}: nothing to remove", prefix.prefix);
            }
        }
        Command::Status { prefix, json } => {
            lab::require_root()?;
            let status = Lab::open(&prefix.prefix)?.status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
        }
        Command::List => {
            for p in lab::list() {
                let nat = Lab::open(&p)
                    .map(|l| l.state.nat.to_string())
                    .unwrap_or_else(|e| format!("unreadable: {e}"));
                println!("{p}\tnat={nat}");
            }
        }
        Command::Exec {
            prefix,
            name,
            command,
        } => {
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
        Command::Conntrack {
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
        } => {
            lab::require_root()?;
            let lab = Lab::open(&prefix.prefix)?;
            if lab.state.nat != NatKind::Ebpf {
                bail!(
                    "lab {:?} uses {} NAT: its state is in the kernel's conntrack \
                     (netns-nat exec --prefix {} <router> -- conntrack -L)",
                    prefix.prefix,
                    lab.state.nat,
                    prefix.prefix
                );
            }
            let filter = EntryFilter {
                proto: proto.map(ProtoArg::number),
                addr: addr.map(addr_to_wire),
                port: port.map(port_to_wire),
                state,
                origin: origin.map(OriginArg::code),
            };
            let p = &prefix.prefix;
            if delete || flush {
                if delete && filter == EntryFilter::default() {
                    bail!(
                        "--delete needs a filter (--proto, --addr, --port, --state, --origin); \
                         --flush deletes everything"
                    );
                }
                let gone = netns_user::ops::conntrack::delete(p, &filter)?;
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
                return Ok(ExitCode::SUCCESS);
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
                return Ok(ExitCode::SUCCESS);
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
                println!("{} flows:", flows.len());
                for f in &flows {
                    println!(
                        "  {:<4} {:<21} -> {:<21} as {:<21} {:<11} {:<8} age {:>6.1}s expires {:>7.1}s  out {}p/{}B in {}p/{}B",
                        f.protocol,
                        f.internal,
                        f.remote,
                        f.external,
                        f.state,
                        f.origin,
                        f.age_s,
                        f.expires_in_s,
                        f.packets_out,
                        f.bytes_out,
                        f.packets_in,
                        f.bytes_in
                    );
                }
                println!("{} mappings:", mappings.len());
                for m in &mappings {
                    let exp = m
                        .expires_in_s
                        .map(|e| format!("expires {e:.1}s"))
                        .unwrap_or_else(|| "static".into());
                    println!(
                        "  {:<4} {:<21} <-> {:<21} {exp}",
                        m.protocol, m.internal, m.external
                    );
                }
            }
        }
        Command::Forward { action } => forward(action)?,
        Command::Metrics { prefix, listen, once } => {
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
        }
        Command::Stats {
            prefix,
            json,
            watch,
            interval,
            watch_for,
        } => {
            lab::require_root()?;
            let lab = Lab::open(&prefix.prefix)?;
            let read = || -> Result<serde_json::Value> {
                Ok(if lab.state.nat == NatKind::Ebpf {
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
                        // In place on a terminal; one block after another into a file or pipe.
                        print!("{}", if tty { "\x1b[H\x1b[2J" } else { "\n" });
                        println!("{:<32} {:>16} {:>14}", "counter", "total", "per second");
                        for (name, total) in &now.1 {
                            if *total != 0 || per_s[name] != 0.0 {
                                println!("{name:<32} {total:>16} {:>14.1}", per_s[name]);
                            }
                        }
                    }
                    let _ = std::io::Write::flush(&mut std::io::stdout());
                    before = now;
                }
                return Ok(ExitCode::SUCCESS);
            }
            let out = read()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print_stats(&out);
            }
        }
        Command::Bench {
            quick,
            backends,
            workloads,
            generator,
            gen_threads,
            conn_client,
            flows,
            rounds,
            duration,
            out,
            json,
        } => {
            let mut opts = if quick {
                bench::BenchOptions::quick()
            } else {
                bench::BenchOptions::full()
            };
            if let Some(b) = backends {
                opts.backends = b;
            }
            if let Some(w) = workloads {
                opts.workloads = w;
            }
            if let Some(g) = generator {
                opts.generators = g;
            }
            if let Some(t) = gen_threads {
                opts.gen_threads = t.into_iter().map(|t| t.max(1)).collect();
            }
            if let Some(c) = conn_client {
                opts.conn_clients = c;
            }
            if let Some(f) = flows {
                opts.many_flows = f.clamp(1, bench::load::MAX_FLOWS);
            }
            if let Some(r) = rounds {
                opts.rounds = r.max(1);
            }
            if let Some(d) = duration {
                opts.duration = std::time::Duration::from_secs_f64(d.max(0.2));
            }
            opts.command = std::env::args().collect::<Vec<_>>().join(" ");
            let results = bench::run(&opts, &mut |line| eprint!("\r\x1b[K{line}"))?;
            eprintln!();
            let dir = bench::results_dir(&out, results.started_unix);
            let written = bench::report::write_all(&results, &dir)?;
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&results)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            println!("{}", bench::report::headline(&results));
            println!("{}", bench::report::table(&results));
            println!("written:");
            for p in written {
                println!("  {}", p.display());
            }
            if !results.failures.is_empty() {
                bail!(
                    "{} measurement(s) failed twice (recorded in results.json):\n  {}",
                    results.failures.len(),
                    results.failures.join("\n  ")
                );
            }
        }
        Command::Agent { prefix } => {
            lab::require_root()?;
            netns_user::ops::agent::run(&prefix.prefix)?;
        }
        Command::Config { action } => config_cmd(action)?,
        Command::Logs {
            prefix,
            follow,
            follow_for,
        } => {
            lab::require_root()?;
            let lab = Lab::open(&prefix.prefix)?;
            let path = netns_user::nat::ebpf::agent_log(lab.prefix());
            if lab.state.nat != NatKind::Ebpf {
                bail!(
                    "lab {:?} uses {} NAT: it has no agent and no programs to log",
                    prefix.prefix,
                    lab.state.nat
                );
            }
            follow_file(&path, follow, follow_for.map(Duration::from_secs_f64))?;
        }
        Command::Trace {
            prefix,
            proto,
            host,
            port,
            trace_for,
            count,
            json,
        } => {
            use std::sync::atomic::{AtomicBool, Ordering};
            static STOP: AtomicBool = AtomicBool::new(false);
            let p = prefix.prefix;
            ebpf_lab(&p, "trace is")?;
            ctrlc::set_handler(|| STOP.store(true, Ordering::Relaxed))
                .context("installing the Ctrl-C handler")?;
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
        }
        Command::Nat { action } => nat_cmd(action)?,
        Command::Check { prefix, wait, json } => {
            lab::require_root()?;
            let lab = Lab::open(&prefix.prefix)?;
            let checks = probe::check(&lab, Duration::from_secs_f64(wait))?;
            let passed = checks.iter().filter(|c| c.passed).count();
            if json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                println!(
                    "acceptance exchanges, lab {:?}, nat {}:",
                    lab.prefix(),
                    lab.state.nat
                );
                for c in &checks {
                    let expect = if c.expect_ok { "should pass" } else { "should fail" };
                    let verdict = if c.passed { "ok  " } else { "FAIL" };
                    println!("  {verdict} {:<60} {expect}: {}", c.name, c.detail);
                }
                println!("{passed} passed, {} failed", checks.len() - passed);
            }
            if passed != checks.len() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
