//! The command line: the parser and the dispatch. Each command is one file here with its
//! arguments and its `exec` (as cargo's `src/bin/cargo/commands/`); `common` has what
//! several commands share, `print` shows results for people.

mod agent;
mod bench;
mod check;
mod common;
mod config;
mod conntrack;
mod down;
mod exec;
mod forward;
mod list;
mod logs;
mod metrics;
mod nat;
mod print;
mod stats;
mod status;
mod trace;
mod up;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

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

#[derive(Subcommand)]
enum Command {
    /// Create a lab and return when it is ready; it stays until `down`.
    ///
    /// On a lab that exists: --resume restarts its agent if it died; --upgrade swaps this
    /// build's eBPF programs into it (flows, mappings and counters kept).
    Up(up::Args),
    /// Remove every namespace, link, rule and pinned object of a lab (and nothing else).
    /// Works on a half-built lab; a lab that is not there is not an error.
    Down(down::Args),
    /// Show a lab: namespaces, links, addresses, routes, NAT rules and uplink counters.
    Status(status::Args),
    /// List the labs on this machine (their prefixes).
    List(list::Args),
    /// Run a command inside lab namespace NAME (like `ip netns exec`).
    ///
    /// Example: netns-nat exec red -- ip addr
    Exec(exec::Args),
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
    Conntrack(conntrack::Args),
    /// Port forwards of a running eBPF NAT, changed live through its maps (no flow of any
    /// other forward or mapping is touched) and recorded in the lab's stored configuration.
    ///
    /// Example: netns-nat forward add --proto tcp --port 8080 --to 192.168.15.1:8080
    Forward(forward::Args),
    /// Serve the lab's NAT as Prometheus metrics (OpenMetrics text at /metrics): every
    /// counter, conntrack occupancy per protocol and TCP state, port-range use, table
    /// pressure, the uplink's counters. Runs until stopped (Ctrl-C).
    ///
    /// Example: netns-nat metrics --listen 127.0.0.1:9464, then curl 127.0.0.1:9464/metrics
    Metrics(metrics::Args),
    /// Show the NAT's counters (eBPF labs) and the uplink's packet counters (every lab).
    ///
    /// With --watch: the counters and their rates per second, refreshed in place every
    /// --interval seconds until Ctrl-C (or --for); with --json, one JSON object per refresh.
    Stats(stats::Args),
    /// Benchmark every NAT backend side by side: forwarding rate and CPU per packet at full
    /// offered rate (1 and many flows, 1 and one generator thread per CPU), TCP throughput,
    /// connection rate and latency, against the bare-redirect ceilings of the path. Every
    /// measurement point is taken for each backend in turn, round after round; results go
    /// to bench-results/<time>/ (results.json, report.md, SVG charts). Creates and removes
    /// its own labs; the full run takes about an hour (--quick: about 2).
    ///
    /// The benchmark is a program of its own, netns-nat-bench, beside this one (built by
    /// `cargo xtask build` and `cargo xtask bench`); `netns-nat bench --help` shows its
    /// options.
    #[command(disable_help_flag = true)]
    Bench(bench::Args),
    /// Run the eBPF NAT's agent for a lab (started by `up`, stopped by `down`; not for
    /// direct use).
    #[command(hide = true)]
    Agent(agent::Args),
    /// The eBPF NAT on a namespace you made yourself (`ip netns add`, a container, ...):
    /// the drop-in replacement for the iptables MASQUERADE and DNAT lines of the namespaces
    /// walkthrough. conntrack, stats, metrics, forward, config and status then work with
    /// its --prefix as with a lab.
    ///
    /// Example: netns-nat nat attach --netns router --uplink eth0 --internal 192.168.15.0/24
    /// --forward tcp:80=192.168.15.2:80
    Nat(nat::Args),
    /// Print each translation and drop of the eBPF NAT as it happens: hook, protocol,
    /// addresses and ports before and after, verdict, drop reason. The programs write events
    /// only while a trace runs (otherwise it costs them one array lookup per packet).
    ///
    /// Example: netns-nat trace --proto udp --host 192.168.15.1 --for 10
    Trace(trace::Args),
    /// The log of a lab's agent: its own messages and the eBPF programs' diagnostics (at
    /// the level set with `up --log-level`).
    Logs(logs::Args),
    /// The running configuration of a lab's NAT.
    Config(config::Args),
    /// Play the scenario's acceptance exchanges (ICMP, UDP, TCP, HTTP through the port
    /// forward) and say whether each behaves as the lab's NAT should. Exits non-zero if not.
    Check(check::Args),
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
        Command::Up(a) => up::exec(a)?,
        Command::Down(a) => down::exec(a)?,
        Command::Status(a) => status::exec(a)?,
        Command::List(a) => list::exec(a)?,
        Command::Exec(a) => exec::exec(a)?,
        Command::Conntrack(a) => conntrack::exec(a)?,
        Command::Forward(a) => forward::exec(a)?,
        Command::Metrics(a) => metrics::exec(a)?,
        Command::Stats(a) => stats::exec(a)?,
        Command::Bench(a) => return bench::exec(a),
        Command::Agent(a) => agent::exec(a)?,
        Command::Nat(a) => nat::exec(a)?,
        Command::Trace(a) => trace::exec(a)?,
        Command::Logs(a) => logs::exec(a)?,
        Command::Config(a) => config::exec(a)?,
        // The one command whose answer is its exit status.
        Command::Check(a) => return check::exec(a),
    }
    Ok(ExitCode::SUCCESS)
}
