//! The benchmark: every backend on the same lab, round after round. Each measurement point
//! (a workload with its parameters) is measured for every backend in turn before the next
//! point, so that drift on a shared machine hits them alike; medians, ranges, and ratios
//! to iptables and to the bare-redirect ceilings taken round by round. All traffic stays
//! inside the lab's namespaces; every load is bounded in time.
//!
//! Packet workloads run at full offered rate: the generator (`gen`, or trafgen as an
//! independent check) sends 60-byte UDP frames from red as fast as its CPU allows, and an
//! XDP sink on lan's veth counts and drops them. On veth the whole path of a packet runs in
//! the sender's context, so "delivered" is the capacity of the sending CPUs for generator +
//! router, and the router's cost per packet is the machine's CPU time per delivered packet
//! minus that of the generator sending straight into a sink (the `generator` rows).

pub mod conn;
pub mod ebpf;
pub mod load;
pub mod report;
pub mod trafgen;
pub mod txring;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::PathBuf,
    process::Stdio,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use serde_json::json;

use netns_common::{fwd::NextHop, names::SINK_PORT};

use netns_user::{
    bpf::{self, ProgramRuns},
    config::{FastPath, ForwardSpec, L4Proto, LabConfig},
    lab::{self, Lab},
    nat::NatKind,
    sys::netlink,
    sys::netns,
};

use crate::ebpf::CeilingHook;

/// A backend the benchmark compares: a NAT of the lab, or a bare-redirect ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Plain routing, no NAT (lan is given a route back): the kernel path's own cost.
    None,
    /// Plain routing, no NAT, with the eBPF forwarding at TC (`--nat none --fast-path tc`):
    /// what the eBPF forwarding alone buys.
    NoneTc,
    /// The same in XDP (`--nat none --fast-path xdp`).
    NoneXdp,
    /// The kernel's NAT through iptables.
    Iptables,
    /// The kernel's NAT through nftables.
    Nftables,
    /// The eBPF NAT with its default fast path (TC: established flows skip the bridge and
    /// routing).
    Ebpf,
    /// The eBPF NAT with the fast path off: every packet takes the bridge and routing.
    EbpfOff,
    /// The eBPF NAT with the fast path at TC.
    EbpfTc,
    /// The eBPF NAT with the fast path in XDP.
    EbpfXdp,
    /// The default eBPF NAT while `trace` listens (every translation written to the ring
    /// buffer and read, none shown): what tracing costs when on. `ebpf` is the cost when
    /// off.
    EbpfTraced,
    /// Ceiling: the load redirected at TC from red's bridge port straight into the ingress
    /// of the uplink's veth peer (bpf_redirect_peer, as the TC fast path does), MAC
    /// addresses rewritten, nothing else (no NAT, no routing). Packet workloads only.
    TcRedirect,
    /// Ceiling: the same in XDP, through a DEVMAP. Packet workloads only.
    XdpRedirect,
}

impl Backend {
    pub const ALL: [Backend; 12] = [
        Backend::None,
        Backend::NoneTc,
        Backend::NoneXdp,
        Backend::Iptables,
        Backend::Nftables,
        Backend::Ebpf,
        Backend::EbpfOff,
        Backend::EbpfTc,
        Backend::EbpfXdp,
        Backend::EbpfTraced,
        Backend::TcRedirect,
        Backend::XdpRedirect,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Backend::None => "none",
            Backend::NoneTc => "none-tc",
            Backend::NoneXdp => "none-xdp",
            Backend::Iptables => "iptables",
            Backend::Nftables => "nftables",
            Backend::Ebpf => "ebpf",
            Backend::EbpfOff => "ebpf-off",
            Backend::EbpfTc => "ebpf-tc",
            Backend::EbpfXdp => "ebpf-xdp",
            Backend::EbpfTraced => "ebpf-traced",
            Backend::TcRedirect => "tc-redirect",
            Backend::XdpRedirect => "xdp-redirect",
        }
    }

    /// The NAT the lab runs.
    pub fn nat(self) -> NatKind {
        match self {
            Backend::Iptables => NatKind::Iptables,
            Backend::Nftables => NatKind::Nftables,
            Backend::Ebpf | Backend::EbpfOff | Backend::EbpfTc | Backend::EbpfXdp | Backend::EbpfTraced => {
                NatKind::Ebpf
            }
            Backend::None
            | Backend::NoneTc
            | Backend::NoneXdp
            | Backend::TcRedirect
            | Backend::XdpRedirect => NatKind::None,
        }
    }

    /// The fast-path mode it sets (None: the lab's default).
    pub fn fast_path(self) -> Option<FastPath> {
        match self {
            Backend::EbpfOff => Some(FastPath::Off),
            Backend::EbpfTc => Some(FastPath::Tc),
            Backend::EbpfXdp => Some(FastPath::Xdp),
            _ => None,
        }
    }

    /// The eBPF forwarding it sets where no NAT runs (None: the kernel forwards).
    pub fn routed_fast_path(self) -> Option<FastPath> {
        match self {
            Backend::NoneTc => Some(FastPath::Tc),
            Backend::NoneXdp => Some(FastPath::Xdp),
            _ => None,
        }
    }

    /// The ceiling program it attaches, if it is a ceiling.
    pub fn ceiling(self) -> Option<CeilingHook> {
        match self {
            Backend::TcRedirect => Some(CeilingHook::Tc),
            Backend::XdpRedirect => Some(CeilingHook::Xdp),
            _ => None,
        }
    }
}

/// What sends the packet workloads' load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Generator {
    /// The project's own: an AF_PACKET TX ring with qdisc bypass, one pinned thread per CPU.
    NetnsNat,
    /// trafgen (netsniff-ng), one pinned process per CPU: the independent check.
    Trafgen,
}

impl Generator {
    pub fn name(self) -> &'static str {
        match self {
            Generator::NetnsNat => "netns-nat",
            Generator::Trafgen => "trafgen",
        }
    }
}

/// What drives the connection-rate workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ConnClient {
    /// The project's own: non-blocking connects and epoll, one pinned thread per CPU.
    NetnsNat,
    /// wrk with `Connection: close`: the independent check.
    Wrk,
}

impl ConnClient {
    pub fn name(self) -> &'static str {
        match self {
            ConnClient::NetnsNat => "netns-nat",
            ConnClient::Wrk => "wrk",
        }
    }
}

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// 60-byte UDP red -> lan at full rate, one flow.
    SmallPacket,
    /// The same over many concurrent flows (65,000 by default).
    ManyFlows,
    /// TCP bulk (iperf3), 1 and 4 streams, SNAT and DNAT paths.
    TcpThroughput,
    /// Short TCP connections (HTTP, Connection: close) through SNAT.
    ConnRate,
    /// UDP request/response round trips at a low rate.
    Latency,
    /// 60-byte UDP lan -> the uplink's UDP port forward -> blue at full rate, one flow (blue
    /// answers once, so the fast path knows its port): the inbound fast path (its ceilings
    /// redirect from the uplink to blue's bridge port).
    Inbound,
}

impl Workload {
    pub const ALL: [Workload; 6] = [
        Workload::SmallPacket,
        Workload::ManyFlows,
        Workload::TcpThroughput,
        Workload::ConnRate,
        Workload::Latency,
        Workload::Inbound,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Workload::SmallPacket => "small-packet",
            Workload::ManyFlows => "many-flows",
            Workload::TcpThroughput => "tcp-throughput",
            Workload::ConnRate => "conn-rate",
            Workload::Latency => "latency",
            Workload::Inbound => "inbound",
        }
    }
}

/// A pseudo-backend: the generator sending straight to a sink on red's own veth peer, the
/// ceiling of the load and the cost that is the same for every backend.
pub const GENERATOR: &str = "generator";

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub backends: Vec<Backend>,
    pub workloads: Vec<Workload>,
    pub rounds: u32,
    pub duration: Duration,
    pub warmup: Duration,
    /// The window after each packet measurement in which BPF run-time statistics are on.
    pub stats_window: Duration,
    /// Concurrent flows of the many-flows workload, each a point. Points above
    /// [`LARGE_FLOWS`] run with the project's generator and one thread only (each takes a
    /// long warm-up: every flow is created through the slow path first).
    pub many_flows: Vec<u32>,
    /// Generator threads (one per CPU, pinned) of the packet workloads, each a point.
    pub gen_threads: Vec<usize>,
    pub generators: Vec<Generator>,
    pub conn_clients: Vec<ConnClient>,
    /// Request rate of the `latency` workload.
    pub latency_rps: f64,
    /// How the run was asked for, recorded in the results.
    pub command: String,
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl BenchOptions {
    pub fn full() -> Self {
        let mut threads = vec![1, cpus()];
        threads.dedup();
        BenchOptions {
            backends: Backend::ALL.to_vec(),
            workloads: Workload::ALL.to_vec(),
            rounds: 3,
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            stats_window: Duration::from_secs(1),
            many_flows: vec![65_000, 1_000_000],
            gen_threads: threads,
            generators: vec![Generator::NetnsNat, Generator::Trafgen],
            conn_clients: vec![ConnClient::NetnsNat, ConnClient::Wrk],
            latency_rps: 1000.0,
            command: String::new(),
        }
    }

    /// One short round of everything, with the project's own generator and client.
    pub fn quick() -> Self {
        BenchOptions {
            rounds: 1,
            duration: Duration::from_secs(1),
            warmup: Duration::from_millis(300),
            stats_window: Duration::from_millis(300),
            generators: vec![Generator::NetnsNat],
            conn_clients: vec![ConnClient::NetnsNat],
            many_flows: vec![65_000],
            ..Self::full()
        }
    }
}

/// One row of `results.json` (schema in the README).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub backend: String,
    pub workload: &'static str,
    pub metric: &'static str,
    pub unit: &'static str,
    pub params: serde_json::Value,
    /// One value per round, in order.
    pub rounds: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Median over rounds of (this backend / iptables) in the same round.
    pub ratio_to_iptables: Option<f64>,
    /// The same against the bare-redirect ceilings.
    pub ratio_to_tc_redirect: Option<f64>,
    pub ratio_to_xdp_redirect: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub kernel: String,
    pub memory_gib: f64,
    /// The most connections the kernel's NATs track (the machine's `nf_conntrack_max`; a
    /// lab namespace cannot raise it).
    pub nf_conntrack_max: Option<u64>,
    /// What one tracked connection takes: the kernel's conntrack entry (its slab object;
    /// extensions and hash bucket come on top) and the eBPF NAT's (its flow and both sides
    /// of a mapping of its own, with their share of the buckets, at the lab's default
    /// table sizes).
    pub nf_conntrack_entry_bytes: Option<u64>,
    pub ebpf_connection_bytes: u64,
    pub ebpf_flow_bytes: u64,
}

/// A point that failed once and was measured again.
#[derive(Debug, Clone, Serialize)]
pub struct Retry {
    pub round: u32,
    pub workload: &'static str,
    pub backend: String,
    pub params: serde_json::Value,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub schema: u32,
    pub started_unix: u64,
    pub command: String,
    pub machine: Machine,
    pub rounds: u32,
    pub duration_s: f64,
    pub backends: Vec<String>,
    pub workloads: Vec<&'static str>,
    pub generators: Vec<&'static str>,
    pub gen_threads: Vec<usize>,
    pub retries: Vec<Retry>,
    /// Points that failed on their retry too (workload, backend, params, round, error):
    /// the run goes on without them and ends with an error.
    pub failures: Vec<String>,
    pub rows: Vec<Row>,
}

/// (backend, workload, metric, params) -> (unit, value per round).
type Samples = BTreeMap<(String, &'static str, &'static str, String), (&'static str, Vec<f64>)>;

struct Recorder {
    samples: Samples,
}

impl Recorder {
    /// Each program's run time per run (`bpf_ns_per_run`), its label as `params.program`.
    fn put_runs(&mut self, backend: &str, w: Workload, params: &serde_json::Value, runs: Vec<(String, f64)>) {
        for (label, ns) in runs {
            let mut p = params.clone();
            p["program"] = json!(label);
            self.put(backend, w, "bpf_ns_per_run", "ns/run", &p, ns);
        }
    }

    fn put(
        &mut self,
        backend: &str,
        w: Workload,
        metric: &'static str,
        unit: &'static str,
        params: &serde_json::Value,
        v: f64,
    ) {
        self.samples
            .entry((backend.to_owned(), w.name(), metric, params.to_string()))
            .or_insert((unit, Vec::new()))
            .1
            .push(v);
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// The `pct`-th percentile (0-100) of sorted values, nearest rank.
pub fn percentile(sorted: &[f64], pct: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // The epsilon keeps 99.9 % of 1000 at rank 999 despite 0.999 * 1000 = 999.0000000000001.
    let rank = ((pct / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median over rounds of `vals / base` in the same round, if `base` has the same rounds.
fn ratio_to(
    samples: &Samples,
    base: &str,
    key: &(String, &'static str, &'static str, String),
) -> Option<f64> {
    let (_, vals) = samples.get(key)?;
    samples
        .get(&(base.to_owned(), key.1, key.2, key.3.clone()))
        .filter(|(_, b)| b.len() == vals.len())
        .map(|(_, b)| {
            let r: Vec<f64> = vals.iter().zip(b).map(|(v, b)| v / b).collect();
            median(&r)
        })
        .filter(|r| r.is_finite())
}

/// Turns the samples into rows, with ratios taken round by round.
fn rows(samples: &Samples) -> Vec<Row> {
    samples
        .iter()
        .map(|(key, (unit, vals))| {
            let (backend, workload, metric, params) = key;
            Row {
                backend: backend.clone(),
                workload,
                metric,
                unit,
                params: serde_json::from_str(params).unwrap_or(json!({})),
                rounds: vals.clone(),
                median: median(vals),
                min: vals.iter().copied().fold(f64::INFINITY, f64::min),
                max: vals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                ratio_to_iptables: ratio_to(samples, "iptables", key),
                ratio_to_tc_redirect: ratio_to(samples, "tc-redirect", key),
                ratio_to_xdp_redirect: ratio_to(samples, "xdp-redirect", key),
            }
        })
        .collect()
}

/// The reference lab's parts that the workloads use.
struct Parts {
    red: String,
    lan: String,
    blue: String,
    host: String,
    red_ip: Ipv4Addr,
    lan_ip: Ipv4Addr,
    blue_ip: Ipv4Addr,
    uplink_ip: Ipv4Addr,
    /// red's MAC and its gateway's (the bridge's): the load's frames carry them.
    red_mac: [u8; 6],
    gateway_mac: [u8; 6],
    /// lan0's and the uplink's: the inbound load's frames carry them.
    lan_mac: [u8; 6],
    uplink_mac: [u8; 6],
    /// Where the ceilings send the load: the uplink, with lan0's MAC.
    uplink_hop: NextHop,
    /// Where the inbound ceilings send it: blue's bridge port, with blue's MAC.
    blue_hop: NextHop,
}

impl Parts {
    fn of(lab: &Lab) -> Result<Parts> {
        let (red, host, lan) = (lab.ns("red"), lab.ns("host"), lab.ns("lan"));
        let red_mac = netlink::in_ns(&red, |r| async move { r.link("veth-red").await })?.mac;
        let (gw, uplink, blue_port) = netlink::in_ns(&host, |r| async move {
            Ok((
                r.link("v-net-0").await?,
                r.link("uplink").await?,
                r.link("veth-blue-br").await?,
            ))
        })?;
        let lan0 = netlink::in_ns(&lan, |r| async move { r.link("lan0").await })?;
        let blue = lab.ns("blue");
        let blue_mac = netlink::in_ns(&blue, |r| async move { r.link("veth-blue").await })?.mac;
        Ok(Parts {
            blue,
            red_ip: Ipv4Addr::new(192, 168, 15, 1),
            lan_ip: Ipv4Addr::new(192, 168, 1, 3),
            blue_ip: Ipv4Addr::new(192, 168, 15, 2),
            uplink_ip: Ipv4Addr::new(192, 168, 1, 2),
            red_mac,
            gateway_mac: gw.mac,
            lan_mac: lan0.mac,
            uplink_mac: uplink.mac,
            uplink_hop: NextHop {
                ifindex: uplink.index,
                src_mac: uplink.mac,
                dst_mac: lan0.mac,
            },
            blue_hop: NextHop {
                ifindex: blue_port.index,
                src_mac: gw.mac,
                dst_mac: blue_mac,
            },
            red,
            host,
            lan,
        })
    }
}

/// A lab for one measurement, taken down however the measurement ends.
struct BenchLab {
    lab: Lab,
    parts: Parts,
    _ceiling: Option<ebpf::Ceiling>,
    _tracer: Option<Tracer>,
}

/// A `trace` listener for the whole measurement, reading every event and showing none.
struct Tracer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tracer {
    fn start(prefix: &str) -> Result<Tracer> {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (p, flag) = (prefix.to_owned(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Matches no event: the programs write them all, this reads them all.
            let none = netns_user::ops::trace::TraceFilter {
                proto: Some(0),
                host: None,
                port: None,
            };
            if let Err(e) = netns_user::ops::trace::run(&p, none, None, None, &flag, |_| {}) {
                eprintln!("bench tracer: {e}");
            }
        });
        let tracer = Tracer {
            stop,
            thread: Some(thread),
        };
        // Listening before the load starts.
        let start = Instant::now();
        while netns_user::ops::agent::listeners(prefix)? == 0 {
            if start.elapsed() > Duration::from_secs(5) {
                bail!("the bench's trace listener did not start");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(tracer)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl BenchLab {
    /// The lab of `backend` (None: the generator alone, on a lab without NAT), its eBPF
    /// flow table large enough for `flows` flows; `inbound`: with the inbound load's port
    /// forward, its ceiling on the uplink. (The kernel's conntrack keeps the machine's
    /// `nf_conntrack_max`, which a namespace cannot raise.)
    fn up(backend: Option<Backend>, flows: u32, inbound: bool) -> Result<BenchLab> {
        let nat = backend.map_or(NatKind::None, Backend::nat);
        let prefix = format!("nnb{}-", std::process::id());
        let mut cfg = LabConfig::reference();
        if let Some(n) = cfg.nat.as_mut() {
            if let Some(mode) = backend.and_then(Backend::fast_path) {
                n.ebpf.fast_path = mode;
            }
            if let Some(mode) = backend.and_then(Backend::routed_fast_path) {
                n.routed_fast_path = mode;
            }
            // Twice the flows, so that the hash table stays sparse.
            n.ebpf.flows = n.ebpf.flows.max(flows.saturating_mul(2).next_power_of_two());
            if inbound {
                n.forwards.push(ForwardSpec {
                    protocol: L4Proto::Udp,
                    port: SINK_PORT,
                    to: SocketAddrV4::new(Ipv4Addr::new(192, 168, 15, 2), SINK_PORT),
                });
            }
        }
        let lab = Lab::up(&cfg, &prefix, nat, &mut |_| {})?;
        // From here on, the guard takes the lab down if anything fails.
        let guard = LabGuard(Some(lab));
        let lab = guard.0.as_ref().expect("just set");
        if nat == NatKind::None {
            // Plain routing: lan is given the way back that NAT otherwise provides.
            netlink::in_ns(&lab.ns("lan"), |r| async move {
                r.add_route(
                    "192.168.15.0/24".parse().expect("literal"),
                    Some(Ipv4Addr::new(192, 168, 1, 2).into()),
                    None,
                )
                .await
            })?;
        }
        let parts = Parts::of(lab)?;
        let (ceiling_at, hop) = if inbound {
            ("uplink", parts.blue_hop)
        } else {
            ("veth-red-br", parts.uplink_hop)
        };
        let ceiling = match backend.and_then(Backend::ceiling) {
            Some(hook) => Some(ebpf::attach_ceiling(&parts.host, ceiling_at, hook, hop)?),
            None => None,
        };
        let tracer = match backend {
            Some(Backend::EbpfTraced) => Some(Tracer::start(lab.prefix())?),
            _ => None,
        };
        Ok(BenchLab {
            lab: guard.take(),
            parts,
            _ceiling: ceiling,
            _tracer: tracer,
        })
    }
}

struct LabGuard(Option<Lab>);

impl LabGuard {
    fn take(mut self) -> Lab {
        self.0.take().expect("taken once")
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Some(l) = &self.0 {
            let _ = lab::down(l.prefix());
        }
    }
}

impl Drop for BenchLab {
    fn drop(&mut self) {
        // Ceiling programs go with the namespaces.
        let _ = lab::down(self.lab.prefix());
    }
}

/// Set by SIGINT/SIGTERM: the run stops after the current measurement, whose lab is
/// taken down as usual, instead of dying with a lab left behind.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn stop_on_signals() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // Safety: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

/// One measurement point: a workload with its parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Point {
    Packets {
        flows: u32,
        threads: usize,
        generator: Generator,
    },
    Tcp {
        path: &'static str,
        streams: u32,
    },
    Conn {
        client: ConnClient,
    },
    Latency,
}

impl Point {
    fn params(self, opts: &BenchOptions) -> serde_json::Value {
        match self {
            Point::Packets {
                flows,
                threads,
                generator,
            } => json!({
                "flows": flows,
                "threads": threads,
                "generator": generator.name(),
                "frame_bytes": load::FRAME_BYTES,
            }),
            Point::Tcp { path, streams } => json!({ "path": path, "streams": streams }),
            Point::Conn { client } => json!({ "path": "snat", "client": client.name() }),
            Point::Latency => json!({ "rate_rps": opts.latency_rps, "payload_bytes": 32 }),
        }
    }
}

/// The shortest warm-up of the inbound load: its UDP flow is confirmed (and takes the fast
/// path) once it has been active for two seconds.
const INBOUND_WARMUP: Duration = Duration::from_secs(3);

/// Flow counts above this are measured with one generator, one thread (see
/// [`BenchOptions::many_flows`]).
pub const LARGE_FLOWS: u32 = 100_000;

/// New flows per second the warm-up of a many-flows point allows for (the eBPF NAT's slow
/// path and the kernel's conntrack both create them faster on this machine's kind).
const WARMUP_FLOWS_PER_S: u32 = 50_000;

/// The warm-up before a packet point with `flows` flows: long enough for the NAT to have
/// seen every flow.
fn warmup(opts: &BenchOptions, flows: u32) -> Duration {
    opts.warmup.max(Duration::from_secs_f64(
        f64::from(flows) / f64::from(WARMUP_FLOWS_PER_S),
    ))
}

/// The points of workload `w`.
fn points(opts: &BenchOptions, w: Workload) -> Vec<Point> {
    let packets = |flows: u32| {
        opts.generators
            .iter()
            .filter(move |&&g| flows <= LARGE_FLOWS || g == Generator::NetnsNat)
            .flat_map(move |&generator| {
                opts.gen_threads
                    .iter()
                    .filter(move |&&t| flows <= LARGE_FLOWS || t == 1)
                    .map(move |&threads| Point::Packets {
                        flows,
                        threads,
                        generator,
                    })
            })
            .collect::<Vec<_>>()
    };
    match w {
        Workload::SmallPacket => packets(1),
        Workload::ManyFlows => opts.many_flows.iter().flat_map(|&f| packets(f)).collect(),
        Workload::TcpThroughput => ["snat", "dnat"]
            .iter()
            .flat_map(|&path| [1, 4].map(|streams| Point::Tcp { path, streams }))
            .collect(),
        Workload::ConnRate => opts
            .conn_clients
            .iter()
            .map(|&client| Point::Conn { client })
            .collect(),
        Workload::Latency => vec![Point::Latency],
        Workload::Inbound => packets(1),
    }
}

/// Who is measured at `point`: the generator alone first (packet points), then every
/// backend that applies (the ceilings only carry packets).
fn runs(opts: &BenchOptions, point: Point) -> Vec<Option<Backend>> {
    let packets = matches!(point, Point::Packets { .. });
    let mut out: Vec<Option<Backend>> = Vec::new();
    if packets {
        out.push(None);
    }
    out.extend(
        opts.backends
            .iter()
            .filter(|b| packets || b.ceiling().is_none())
            .map(|b| Some(*b)),
    );
    out
}

fn backend_name(b: Option<Backend>) -> &'static str {
    b.map_or(GENERATOR, Backend::name)
}

/// Runs the benchmark. `progress` hears a line per measurement.
pub fn run(opts: &BenchOptions, progress: &mut dyn FnMut(&str)) -> Result<Results> {
    lab::require_root()?;
    if !opts.backends.contains(&Backend::Iptables) {
        progress("note: iptables is not among the backends, so there will be no ratios to it\n");
    }
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut rec = Recorder {
        samples: Samples::new(),
    };
    let mut retries = Vec::new();
    let mut failures = Vec::new();
    let per_round: usize = opts
        .workloads
        .iter()
        .flat_map(|w| points(opts, *w))
        .map(|p| runs(opts, p).len())
        .sum();
    let total = opts.rounds as usize * per_round;
    let mut done = 0;
    stop_on_signals();
    for round in 1..=opts.rounds {
        for &w in &opts.workloads {
            for point in points(opts, w) {
                for b in runs(opts, point) {
                    if STOP.load(Ordering::Relaxed) {
                        bail!(
                            "interrupted: stopped after {done} of {total} measurements; no lab is left behind"
                        );
                    }
                    done += 1;
                    let name = backend_name(b);
                    let params = point.params(opts);
                    progress(&format!(
                        "[round {round}/{}] {:<14} {:<12} {:<40} ({done}/{total})",
                        opts.rounds,
                        w.name(),
                        name,
                        report::params_label(&params)
                    ));
                    let mut attempt = measure(opts, w, point, b, &mut rec);
                    if let Err(e) = &attempt {
                        // One retry: a set-up that failed once (a port not yet free, a
                        // server slow to start) should not sink a whole run.
                        retries.push(Retry {
                            round,
                            workload: w.name(),
                            backend: name.to_owned(),
                            params: params.clone(),
                            error: format!("{e:#}"),
                        });
                        progress(&format!("  failed ({e:#}); retrying once\n"));
                        attempt = measure(opts, w, point, b, &mut rec);
                    }
                    if let Err(e) = attempt {
                        // Recorded, and the run goes on: the rest of a long run is not
                        // thrown away. The command fails at the end, naming the point.
                        let what = format!(
                            "workload {}, backend {name}, round {round} ({}): failed twice: {e:#}",
                            w.name(),
                            report::params_label(&params)
                        );
                        progress(&format!("  {what}\n"));
                        failures.push(what);
                    }
                }
            }
        }
    }
    derive_router_share(&mut rec);
    Ok(Results {
        schema: 2,
        started_unix,
        command: opts.command.clone(),
        machine: machine(),
        rounds: opts.rounds,
        duration_s: opts.duration.as_secs_f64(),
        backends: opts.backends.iter().map(|b| b.name().to_owned()).collect(),
        workloads: opts.workloads.iter().map(|w| w.name()).collect(),
        generators: opts.generators.iter().map(|g| g.name()).collect(),
        gen_threads: opts.gen_threads.clone(),
        retries,
        failures,
        rows: rows(&rec.samples),
    })
}

/// The router's own cost per packet: each backend's CPU per delivered packet minus the
/// generator's alone, at the same point and in the same round.
fn derive_router_share(rec: &mut Recorder) {
    let generator: Vec<((&'static str, String), Vec<f64>)> = rec
        .samples
        .iter()
        .filter(|((b, _, m, _), _)| b == GENERATOR && *m == "cpu_ns_per_pkt")
        .map(|((_, w, _, p), (_, v))| ((*w, p.clone()), v.clone()))
        .collect();
    for ((w, params), gen_vals) in generator {
        let mine: Vec<(String, Vec<f64>)> = rec
            .samples
            .iter()
            .filter(|((b, ww, m, p), _)| b != GENERATOR && *ww == w && *m == "cpu_ns_per_pkt" && *p == params)
            .map(|((b, ..), (_, v))| (b.clone(), v.clone()))
            .collect();
        for (b, vals) in mine {
            let share: Vec<f64> = vals.iter().zip(&gen_vals).map(|(x, g)| x - g).collect();
            let key = (b, w, "router_ns_per_pkt", params.clone());
            rec.samples.insert(key, ("ns/pkt", share));
        }
    }
}

fn machine() -> Machine {
    let mem_kib: f64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0.0);
    Machine {
        cpus: cpus(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        nf_conntrack_max: std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
            .ok()
            .and_then(|s| s.trim().parse().ok()),
        nf_conntrack_entry_bytes: slab_object_bytes("nf_conntrack"),
        ebpf_connection_bytes: {
            let d = netns_user::config::EbpfNatSpec::default();
            netns_common::memory::connection_bytes(d.flows, d.bindings)
        },
        ebpf_flow_bytes: netns_common::memory::FLOW_BYTES,
    }
}

/// The object size of slab cache `name` (`/proc/slabinfo`, read only).
fn slab_object_bytes(name: &str) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/slabinfo").ok()?;
    info.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
}

/// One point for one backend (None: the generator alone), on a lab of its own.
fn measure(
    opts: &BenchOptions,
    w: Workload,
    point: Point,
    backend: Option<Backend>,
    rec: &mut Recorder,
) -> Result<()> {
    let flows = match point {
        Point::Packets { flows, .. } => flows,
        _ => 1,
    };
    let inbound = w == Workload::Inbound;
    let bl = BenchLab::up(backend, flows, inbound)?;
    let name = backend_name(backend);
    let params = point.params(opts);
    let mut put =
        |metric: &'static str, unit: &'static str, v: f64| rec.put(name, w, metric, unit, &params, v);
    match point {
        Point::Packets {
            flows,
            threads,
            generator,
        } => {
            let r = packets(opts, &bl, backend, inbound, flows, threads, generator)?;
            put("offered_pps", "pps", r.offered_pps);
            put("delivered_pps", "pps", r.delivered_pps);
            put("loss_pct", "%", r.loss_pct);
            put("cpu_ns_per_pkt", "ns/pkt", r.cpu_ns_per_pkt);
            if let Some(n) = r.generator_restarts {
                put("generator_restarts", "restarts", f64::from(n));
            }
            if let Some(b) = r.bpf_ns_per_pkt {
                put("bpf_ns_per_pkt", "ns/pkt", b);
            }
            rec.put_runs(name, w, &params, r.bpf_ns_per_run);
        }
        Point::Tcp { path, streams } => {
            let b = backend.context("the generator has no TCP workload")?;
            put(
                "gbps",
                "Gbit/s",
                tcp_throughput(opts, &bl.parts, b, path, streams)?,
            );
        }
        Point::Conn { client } => {
            let b = backend.context("the generator has no TCP workload")?;
            let r = conn_rate(opts, &bl, b, client)?;
            put("conns_per_s", "conn/s", r.rate);
            put("failed", "conns", r.failed as f64);
            put("conntrack_entries", "entries", r.left as f64);
            if let Some(ns) = r.bpf_ns_per_conn {
                put("bpf_ns_per_conn", "ns/conn", ns);
            }
            rec.put_runs(name, w, &params, r.bpf_ns_per_run);
        }
        Point::Latency => {
            let lat = latency(opts, &bl.parts)?;
            put("p50_us", "us", lat.0);
            put("p99_us", "us", lat.1);
            put("p99_9_us", "us", lat.2);
        }
    }
    Ok(())
}

/// What a packet point measured.
struct PacketRun {
    offered_pps: f64,
    delivered_pps: f64,
    loss_pct: f64,
    cpu_ns_per_pkt: f64,
    /// BPF run time of the router's programs per delivered packet, when it has any.
    bpf_ns_per_pkt: Option<f64>,
    /// Each program's run time per run.
    bpf_ns_per_run: Vec<(String, f64)>,
    /// trafgen only: how often it had to be restarted (see `trafgen::EAGAIN_EXIT`).
    generator_restarts: Option<u32>,
}

/// The generator at work, whichever it is.
enum Sending {
    Own(txring::Running),
    Trafgen(trafgen::Trafgen, PathBuf),
}

/// 60-byte UDP frames at full rate for a warm-up, the measurement window and the BPF
/// statistics window: from red to lan or, `inbound`, from lan to the uplink's port forward
/// (to blue itself with no NAT). The generator alone (`backend` None) has its sink on the
/// sender's own veth peer.
fn packets(
    opts: &BenchOptions,
    bl: &BenchLab,
    backend: Option<Backend>,
    inbound: bool,
    flows: u32,
    threads: usize,
    generator: Generator,
) -> Result<PacketRun> {
    let p = &bl.parts;
    let (sink_ns, sink_dev) = match (backend.is_none(), inbound) {
        (true, false) => (p.host.as_str(), "veth-red-br"),
        (true, true) => (p.host.as_str(), "uplink"),
        (false, false) => (p.lan.as_str(), "lan0"),
        (false, true) => (p.blue.as_str(), "veth-blue"),
    };
    let sink = ebpf::attach_sink(sink_ns, sink_dev)?;
    let (from_ns, from_dev, ends) = if inbound {
        let plain = backend.is_some_and(|b| b.nat() == NatKind::None);
        let ends = load::Endpoints {
            src_mac: p.lan_mac,
            dst_mac: p.uplink_mac,
            src: p.lan_ip,
            dst: if plain { p.blue_ip } else { p.uplink_ip },
        };
        (p.lan.as_str(), "lan0", ends)
    } else {
        let ends = load::Endpoints {
            src_mac: p.red_mac,
            dst_mac: p.gateway_mac,
            src: p.red_ip,
            dst: p.lan_ip,
        };
        (p.red.as_str(), "veth-red", ends)
    };
    // An inbound UDP flow takes the fast path once confirmed: two seconds after it began.
    let warm = if inbound {
        warmup(opts, flows).max(INBOUND_WARMUP)
    } else {
        warmup(opts, flows)
    };
    let max = warm + opts.duration + opts.stats_window + Duration::from_secs(2);
    let sending = match generator {
        Generator::NetnsNat => Sending::Own(txring::start(
            from_ns,
            &txring::Plan {
                ifname: from_dev.into(),
                frames: load::frames(&ends, flows),
                threads,
                max_duration: max,
            },
        )?),
        Generator::Trafgen => {
            let spec = trafgen::Spec {
                dst_mac: ends.dst_mac,
                src_mac: ends.src_mac,
                src: ends.src,
                dst: ends.dst,
                flows,
            };
            let path = lab::state_dir(bl.lab.prefix()).join("trafgen.cfg");
            std::fs::write(&path, trafgen::config(&spec)).context("writing trafgen's configuration")?;
            let t = trafgen::start(from_ns, from_dev, &path, threads, max)
                .context("starting trafgen (installed by cargo xtask setup)")?;
            Sending::Trafgen(t, path)
        }
    };
    if inbound && backend.is_some() {
        // Once the first packets made the flow, blue answers once: a host that talks is
        // known to the fast path behind its bridge port (the common case), as a server's
        // replies make it. One that only ever receives is reached through the bridge.
        std::thread::sleep(Duration::from_millis(500));
        hello_from_blue(p)?;
    }
    let measured = window(opts, bl, (from_ns, from_dev), &sink, &sending, warm);
    let restarts = match sending {
        Sending::Own(r) => r.stop().context("generator").map(|_| None),
        Sending::Trafgen(t, path) => {
            let stopped = t.stop().context("trafgen").map(|s| Some(s.restarts));
            let _ = std::fs::remove_file(path);
            stopped
        }
    };
    let (mut run, window_sent) = measured?;
    run.generator_restarts = restarts?;
    run.offered_pps = window_sent.map_or(f64::NAN, |(n, secs)| n as f64 / secs);
    run.loss_pct = (100.0 * (1.0 - run.delivered_pps / run.offered_pps)).max(0.0);
    Ok(run)
}

/// One datagram from blue's forwarded port back to the inbound load's first flow.
fn hello_from_blue(p: &Parts) -> Result<()> {
    let (sport, dport) = load::flow_ports(0);
    let to = SocketAddrV4::new(p.lan_ip, sport);
    netns::run_in(&p.blue, || -> std::io::Result<()> {
        let s = UdpSocket::bind(SocketAddrV4::new(p.blue_ip, dport))?;
        s.send_to(b"hello", to).map(|_| ())
    })?
    .context("blue's answer to the inbound load")
}

/// The measurement window (delivered packets and CPU time), then the BPF statistics window.
/// Returns the run and, for our own generator, what it sent in the window.
fn window(
    opts: &BenchOptions,
    bl: &BenchLab,
    (from_ns, from_dev): (&str, &str),
    sink: &ebpf::Sink,
    sending: &Sending,
    warmup: Duration,
) -> Result<(PacketRun, Option<(u64, f64)>)> {
    // trafgen only reports its total when it ends (and not at all when it had to be
    // restarted): count what the sender's veth took in the window instead.
    let (from_ns, from_dev) = (from_ns.to_owned(), from_dev.to_owned());
    // A netlink round trip takes milliseconds: each count carries the time it was read at.
    let sent_now = || {
        let n = match sending {
            Sending::Own(r) => Some(r.sent()),
            Sending::Trafgen(..) => {
                let dev = from_dev.clone();
                netlink::in_ns(&from_ns, |r| async move { r.link(&dev).await })
                    .ok()
                    .map(|l| l.tx_packets + l.tx_dropped)
            }
        };
        n.map(|n| (n, Instant::now()))
    };
    std::thread::sleep(warmup);
    let s0 = sent_now();
    let (d0, _) = sink.counts()?;
    let (cpu0, t0) = (load::cpu_busy_ns(), Instant::now());
    std::thread::sleep(opts.duration);
    let (d1, _) = sink.counts()?;
    let (cpu1, secs) = (load::cpu_busy_ns(), t0.elapsed().as_secs_f64());
    let s1 = sent_now();
    let delivered = d1.saturating_sub(d0);
    if delivered == 0 {
        bail!("no packet reached the sink in {secs:.1} s");
    }
    let mut run = PacketRun {
        offered_pps: f64::NAN,
        delivered_pps: delivered as f64 / secs,
        loss_pct: f64::NAN,
        cpu_ns_per_pkt: cpu1.saturating_sub(cpu0) as f64 / delivered as f64,
        bpf_ns_per_pkt: None,
        bpf_ns_per_run: Vec::new(),
        generator_restarts: None,
    };
    if !opts.stats_window.is_zero() {
        let (runs, any, sunk) = with_run_time_stats(&bl.parts.host, || -> Result<u64> {
            let (s0, _) = sink.counts()?;
            std::thread::sleep(opts.stats_window);
            let (s1, _) = sink.counts()?;
            Ok(s1.saturating_sub(s0))
        })?;
        let pkts = sunk?.max(1) as f64;
        let mut total_ns = 0u64;
        for (label, dt, dn) in runs {
            total_ns += dt;
            // A program that ran only a handful of times (the reverse direction of a one-way
            // load) reports cold-cache outliers, not a cost per packet: leave it out.
            if dn as f64 >= (pkts / 100.0).max(100.0) {
                run.bpf_ns_per_run.push((label, dt as f64 / dn as f64));
            }
        }
        if any {
            run.bpf_ns_per_pkt = Some(total_ns as f64 / pkts);
        }
    }
    let window_sent = match (s0, s1) {
        (Some((a, ta)), Some((b, tb))) => Some((b.saturating_sub(a), (tb - ta).as_secs_f64())),
        _ => None,
    };
    Ok((run, window_sent))
}

/// iperf3 through the SNAT path (red -> lan) or the DNAT path (lan -> uplink:80 -> blue;
/// with no NAT, lan -> blue directly).
fn tcp_throughput(opts: &BenchOptions, p: &Parts, b: Backend, path: &str, streams: u32) -> Result<f64> {
    let (server_ns, client_ns, port, target) = match path {
        "snat" => (&p.lan, &p.red, 5201u16, p.lan_ip),
        _ if b.nat() == NatKind::None => (&p.blue, &p.lan, 80, p.blue_ip),
        _ => (&p.blue, &p.lan, 80, p.uplink_ip),
    };
    // One-off (-1): the server serves the one client and exits. Readiness is read from the
    // namespace's socket table, never by connecting: iperf3 takes any connection as its
    // test's control channel, and a probe connection that goes away makes it reset the
    // real client ("unable to receive control message: Connection reset by peer").
    let mut server = netns::command(server_ns, "iperf3")?
        .args(["-s", "-1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 (installed by cargo xtask setup)")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !conn::listening(server_ns, port)? {
        if Instant::now() > deadline || server.try_wait().ok().flatten().is_some() {
            let _ = server.kill();
            let _ = server.wait();
            bail!("iperf3 server in {server_ns} does not listen on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = opts.duration.as_secs().max(1).to_string();
    let out = netns::command(client_ns, "iperf3")?
        .args([
            "-c",
            &target.to_string(),
            "-p",
            &port.to_string(),
            "-t",
            &secs,
            "-P",
            &streams.to_string(),
        ])
        .args(["-J", "--connect-timeout", "3000"])
        .output();
    let _ = server.kill();
    let _ = server.wait();
    let out = out.context("running the iperf3 client")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 gave no result: {}", v["error"]))?;
    Ok(bps / 1e9)
}

/// Short HTTP connections from red to a server on lan for the run's duration. Returns
/// connections per second, connections failed, and the conntrack entries left.
/// What a connection-rate point measured.
struct ConnRun {
    rate: f64,
    failed: u64,
    /// Entries the NAT still held after the run.
    left: usize,
    /// With the project's client: each program's run time per run, and the router's
    /// programs' run time per connection, from a separate window with run-time statistics
    /// on. (Not per new flow: a client's source port comes round again while the NAT still
    /// holds the closed connection's flow, which the new one then takes over.)
    bpf_ns_per_run: Vec<(String, f64)>,
    bpf_ns_per_conn: Option<f64>,
}

fn conn_rate(opts: &BenchOptions, bl: &BenchLab, b: Backend, client: ConnClient) -> Result<ConnRun> {
    let p = &bl.parts;
    // Namespace-local: the whole port range for the client.
    netns::run_in(&p.red, || {
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535")
    })??;
    let port = 7100;
    let server = conn::Server::start(&p.lan, port, cpus()).context("HTTP server")?;
    let to = SocketAddrV4::new(p.lan_ip, port);
    let measured = match client {
        ConnClient::NetnsNat => conn::client(&p.red, to, cpus(), 32, opts.duration)?
            .map_err(anyhow::Error::from)
            .map(|r| (r.completed as f64 / r.elapsed.as_secs_f64(), r.failed)),
        ConnClient::Wrk => wrk(opts, &p.red, to),
    };
    // The slow path's cost: a second, shorter run with run-time statistics on (they cost
    // every program two clock reads per run, so never while the rate is measured).
    let mut run = ConnRun {
        rate: 0.0,
        failed: 0,
        left: 0,
        bpf_ns_per_run: Vec::new(),
        bpf_ns_per_conn: None,
    };
    let stats = if client == ConnClient::NetnsNat && !opts.stats_window.is_zero() && measured.is_ok() {
        Some(conn_stats(opts, bl, to, &mut run))
    } else {
        None
    };
    let _ = server.stop();
    (run.rate, run.failed) = measured?;
    if let Some(s) = stats {
        s?;
    }
    if run.rate == 0.0 {
        bail!("no connection completed ({} failed)", run.failed);
    }
    run.left = match (b.nat().backend(), bl.lab.nat_target()) {
        (Some(backend), Some(t)) => backend.live_entries(&t)?,
        _ => 0,
    };
    Ok(run)
}

/// Connections for the statistics window, and what the router's programs spent on them.
fn conn_stats(opts: &BenchOptions, bl: &BenchLab, to: SocketAddrV4, run: &mut ConnRun) -> Result<()> {
    let (runs, any, r) = with_run_time_stats(&bl.parts.host, || {
        conn::client(&bl.parts.red, to, cpus(), 32, opts.stats_window)
    })?;
    let r = r??;
    let mut total_ns = 0u64;
    for (label, dt, dn) in runs {
        total_ns += dt;
        if dn >= 100 {
            run.bpf_ns_per_run.push((label, dt as f64 / dn as f64));
        }
    }
    if any && r.completed > 0 {
        run.bpf_ns_per_conn = Some(total_ns as f64 / r.completed as f64);
    }
    Ok(())
}

/// wrk with `Connection: close` against the same server: (requests per second, errors).
fn wrk(opts: &BenchOptions, ns: &str, to: SocketAddrV4) -> Result<(f64, u64)> {
    let secs = opts.duration.as_secs().max(1);
    let out = netns::command(ns, "timeout")?
        .arg((secs + 10).to_string())
        .arg("wrk")
        .args(["-t", &cpus().to_string(), "-c", "64", "-d", &format!("{secs}s")])
        .args(["-H", "Connection: close", &format!("http://{to}/")])
        .stdin(Stdio::null())
        .output()
        .context("running wrk (installed by cargo xtask setup)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    conn::parse_wrk(&text).with_context(|| {
        format!(
            "wrk gave no result: {}{}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// UDP request/response from red to an echo server on lan at `latency_rps`; (p50, p99,
/// p99.9) round trip in microseconds.
fn latency(opts: &BenchOptions, p: &Parts) -> Result<(f64, f64, f64)> {
    let port = 7200;
    let server = netns::spawn_in(&p.lan, move |stop, ready| -> std::io::Result<()> {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?;
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        ready();
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        }
        Ok(())
    })
    .context("echo server")?;
    let to = SocketAddrV4::new(p.lan_ip, port);
    let rtts = netns::run_in(&p.red, || -> std::io::Result<Vec<f64>> {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.connect(to)?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        let gap = Duration::from_secs_f64(1.0 / opts.latency_rps);
        let start = Instant::now();
        let mut rtts = Vec::new();
        let mut buf = [0u8; 32];
        let mut i: u64 = 0;
        while start.elapsed() < opts.duration {
            buf[..8].copy_from_slice(&i.to_be_bytes());
            let t = Instant::now();
            s.send(&buf)?;
            let mut got = [0u8; 64];
            // A reply to an earlier (timed-out) request is skipped.
            while let Ok(n) = s.recv(&mut got) {
                if n >= 8 && got[..8] == buf[..8] {
                    rtts.push(t.elapsed().as_secs_f64() * 1e6);
                    break;
                }
            }
            i += 1;
            let next = start + gap * i as u32;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        Ok(rtts)
    })??;
    let _ = server.stop();
    if rtts.is_empty() {
        bail!("no UDP reply at all");
    }
    let mut sorted = rtts;
    sorted.sort_by(|a, b| a.total_cmp(b));
    Ok((
        percentile(&sorted, 50.0),
        percentile(&sorted, 99.0),
        percentile(&sorted, 99.9),
    ))
}

/// Where a run writes: `bench-results/<UTC timestamp>/`.
pub fn results_dir(root: &std::path::Path, started_unix: u64) -> PathBuf {
    let t = started_unix;
    let (d, s) = (t / 86_400, t % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = d as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    root.join(format!(
        "{year:04}-{month:02}-{day:02}T{:02}{:02}{:02}Z",
        s / 3600,
        (s % 3600) / 60,
        s % 60
    ))
}

/// Per program: (label, run time in ns, runs).
type ProgramRunTimes = Vec<(String, u64, u64)>;

/// What the router's programs ran while `during` ran, with run-time statistics on only
/// then (they cost every program two clock reads per run, so never while rates and CPU are
/// counted): each program's (label, run time, runs), whether any program is attached, and
/// what `during` returned.
fn with_run_time_stats<R>(router: &str, during: impl FnOnce() -> R) -> Result<(ProgramRunTimes, bool, R)> {
    let stats = bpf::enable_run_time_stats()?;
    let p0 = bpf::attached_programs(router)?;
    let r = during();
    let p1 = bpf::attached_programs(router)?;
    drop(stats);
    Ok((program_runs(&p0, &p1), !p1.is_empty(), r))
}

/// What each program ran between two readings of the attached programs: (label, run time,
/// runs). A program's statistics are its own, however many interfaces it is attached to, so
/// a program attached twice (`nat_fast_out` on each bridge port) is one entry, labelled with
/// every attachment (`name@a:hook+b:hook`), and its run time is counted once.
fn program_runs(before: &[ProgramRuns], after: &[ProgramRuns]) -> ProgramRunTimes {
    let mut out: Vec<(u32, String, u64, u64)> = Vec::new();
    for b in after {
        let Some(a) = before.iter().find(|a| a.id == b.id && a.label == b.label) else {
            continue;
        };
        if let Some(seen) = out.iter_mut().find(|o| o.0 == b.id) {
            // Another attachment of a program already counted: only its name.
            let place = b.label.split_once('@').map_or(b.label.as_str(), |(_, p)| p);
            seen.1 = format!("{}+{place}", seen.1);
            continue;
        }
        out.push((
            b.id,
            b.label.clone(),
            b.run_time_ns.saturating_sub(a.run_time_ns),
            b.run_count.saturating_sub(a.run_count),
        ));
    }
    out.into_iter().map(|(_, l, t, n)| (l, t, n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_attached_twice_is_counted_once() {
        let at = |label: &str, id, t, n| ProgramRuns {
            label: label.into(),
            id,
            run_time_ns: t,
            run_count: n,
        };
        let before = [
            at("nat_fast_out@veth-red-br:tcx-ingress", 7, 1_000, 10),
            at("nat_fast_out@veth-blue-br:tcx-ingress", 7, 1_000, 10),
            at("uplink_count_egress@uplink:tcx-egress", 9, 50, 5),
        ];
        let after = [
            at("nat_fast_out@veth-red-br:tcx-ingress", 7, 8_000, 20),
            at("nat_fast_out@veth-blue-br:tcx-ingress", 7, 8_000, 20),
            at("uplink_count_egress@uplink:tcx-egress", 9, 150, 15),
        ];
        assert_eq!(
            program_runs(&before, &after),
            vec![
                (
                    "nat_fast_out@veth-red-br:tcx-ingress+veth-blue-br:tcx-ingress".to_string(),
                    7_000,
                    10
                ),
                ("uplink_count_egress@uplink:tcx-egress".to_string(), 100, 10),
            ]
        );
    }

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 500.0);
        assert_eq!(percentile(&v, 99.0), 990.0);
        assert_eq!(percentile(&v, 99.9), 999.0);
        assert_eq!(percentile(&v, 100.0), 1000.0);
    }

    #[test]
    fn ratios_are_taken_round_by_round() {
        let mut s = Samples::new();
        let key = |b: &str| (b.to_owned(), "small-packet", "delivered_pps", "{}".to_owned());
        s.insert(key("iptables"), ("pps", vec![100.0, 200.0, 100.0]));
        s.insert(key("ebpf"), ("pps", vec![150.0, 200.0, 300.0]));
        s.insert(key("xdp-redirect"), ("pps", vec![300.0, 400.0, 300.0]));
        let rows = rows(&s);
        let e = rows.iter().find(|r| r.backend == "ebpf").unwrap();
        // Per round: 1.5, 1.0, 3.0 -> median 1.5 (not 216.7 / 133.3).
        assert_eq!(e.ratio_to_iptables, Some(1.5));
        assert_eq!(e.ratio_to_xdp_redirect, Some(0.5));
        assert_eq!(e.ratio_to_tc_redirect, None);
        assert_eq!((e.median, e.min, e.max), (200.0, 150.0, 300.0));
        let i = rows.iter().find(|r| r.backend == "iptables").unwrap();
        assert_eq!(i.ratio_to_iptables, Some(1.0));
    }

    #[test]
    fn router_share_is_taken_round_by_round_at_the_same_point() {
        let mut rec = Recorder {
            samples: Samples::new(),
        };
        let p1 = json!({"flows": 1});
        let p2 = json!({"flows": 2});
        for (b, p, v) in [
            (GENERATOR, &p1, [500.0, 600.0]),
            (GENERATOR, &p2, [100.0, 100.0]),
            ("iptables", &p1, [1300.0, 1500.0]),
            ("iptables", &p2, [900.0, 1000.0]),
        ] {
            for x in v {
                rec.put(b, Workload::SmallPacket, "cpu_ns_per_pkt", "ns/pkt", p, x);
            }
        }
        derive_router_share(&mut rec);
        let get = |p: &serde_json::Value| {
            rec.samples[&(
                "iptables".to_owned(),
                "small-packet",
                "router_ns_per_pkt",
                p.to_string(),
            )]
                .1
                .clone()
        };
        assert_eq!(get(&p1), vec![800.0, 900.0]);
        assert_eq!(get(&p2), vec![800.0, 900.0]);
        assert!(
            !rec.samples
                .keys()
                .any(|k| k.0 == GENERATOR && k.2 == "router_ns_per_pkt")
        );
    }

    #[test]
    fn a_large_flow_count_is_one_point_warmed_up_for_its_flows() {
        let mut o = BenchOptions::full();
        o.gen_threads = vec![1, 2];
        o.many_flows = vec![65_000, 1_000_000];
        let pts = points(&o, Workload::ManyFlows);
        let at = |n: u32| {
            pts.iter()
                .filter(|p| matches!(p, Point::Packets { flows, .. } if *flows == n))
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(at(65_000).len(), 4, "both generators, both thread counts");
        assert_eq!(
            at(1_000_000),
            [Point::Packets {
                flows: 1_000_000,
                threads: 1,
                generator: Generator::NetnsNat,
            }]
        );
        assert_eq!(warmup(&o, 1_000_000), Duration::from_secs(20));
        assert_eq!(warmup(&o, 1), o.warmup);
    }

    #[test]
    fn ceilings_only_carry_packets() {
        let opts = BenchOptions::quick();
        let tcp = Point::Tcp {
            path: "snat",
            streams: 1,
        };
        assert!(
            !runs(&opts, tcp)
                .iter()
                .any(|b| b.is_some_and(|b| b.ceiling().is_some()))
        );
        assert!(!runs(&opts, tcp).contains(&None));
        let pk = points(&opts, Workload::SmallPacket)[0];
        let r = runs(&opts, pk);
        assert_eq!(r[0], None, "the generator alone comes first");
        assert!(r.contains(&Some(Backend::XdpRedirect)));
    }

    #[test]
    fn result_directories_are_utc_timestamps() {
        let d = results_dir(std::path::Path::new("bench-results"), 1_795_340_096);
        assert_eq!(d, PathBuf::from("bench-results/2026-11-22T093456Z"));
    }
}
