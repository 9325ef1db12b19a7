//! The benchmark: every backend on the same lab, round after round, each workload measured
//! for each backend in turn so that drift on a shared machine hits them alike; medians,
//! ranges, and ratios to iptables taken round by round. All traffic stays inside the
//! lab's namespaces; every load is bounded in time.

pub mod load;
pub mod report;

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use serde_json::json;

use crate::{
    config::LabConfig,
    ebpf,
    lab::{self, Lab, netlink},
    nat::{NatKind, ebpf as nat_ebpf},
    netns,
};

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// 64-byte UDP red -> lan as fast as the generator goes, a few flows.
    SmallPacket,
    /// The same with 1, 1,000 and 100,000 concurrent flows.
    ManyFlows,
    /// TCP bulk (iperf3), 1 and 4 streams, SNAT and DNAT paths.
    TcpThroughput,
    /// Short TCP connections through SNAT.
    ConnRate,
    /// UDP request/response round trips at a low rate.
    Latency,
    /// CPU per forwarded packet at a fixed rate every backend sustains.
    Cpu,
}

impl Workload {
    pub const ALL: [Workload; 6] = [
        Workload::SmallPacket,
        Workload::ManyFlows,
        Workload::TcpThroughput,
        Workload::ConnRate,
        Workload::Latency,
        Workload::Cpu,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Workload::SmallPacket => "small-packet",
            Workload::ManyFlows => "many-flows",
            Workload::TcpThroughput => "tcp-throughput",
            Workload::ConnRate => "conn-rate",
            Workload::Latency => "latency",
            Workload::Cpu => "cpu",
        }
    }
}

/// A pseudo-backend: the generator sending straight to a sink on red's own veth peer, the
/// ceiling of the load and the cost that is the same for every backend.
pub const GENERATOR: &str = "generator";

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub backends: Vec<NatKind>,
    pub workloads: Vec<Workload>,
    pub rounds: u32,
    pub duration: Duration,
    pub warmup: Duration,
    pub flows: Vec<u32>,
    /// Offered rate of the `cpu` workload.
    pub cpu_pps: f64,
    /// Request rate of the `latency` workload.
    pub latency_rps: f64,
    /// How the run was asked for, recorded in the results.
    pub command: String,
}

impl BenchOptions {
    pub fn full() -> Self {
        BenchOptions {
            backends: vec![NatKind::None, NatKind::Iptables, NatKind::Nftables, NatKind::Ebpf],
            workloads: Workload::ALL.to_vec(),
            rounds: 3,
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            flows: vec![1, 1000, 100_000],
            cpu_pps: 50_000.0,
            latency_rps: 1000.0,
            command: String::new(),
        }
    }

    /// One short round of everything.
    pub fn quick() -> Self {
        BenchOptions {
            rounds: 1,
            duration: Duration::from_secs(1),
            warmup: Duration::from_millis(300),
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
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub kernel: String,
    pub memory_gib: f64,
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
    pub rows: Vec<Row>,
}

/// (backend, workload, metric, params) -> (unit, value per round).
type Samples = BTreeMap<(String, &'static str, &'static str, String), (&'static str, Vec<f64>)>;

struct Recorder {
    samples: Samples,
}

impl Recorder {
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

/// Turns the samples into rows, with ratios to iptables taken round by round.
fn rows(samples: &Samples) -> Vec<Row> {
    samples
        .iter()
        .map(|((backend, workload, metric, params), (unit, vals))| {
            let ratio = samples
                .get(&("iptables".to_owned(), *workload, *metric, params.clone()))
                .filter(|(_, base)| base.len() == vals.len())
                .map(|(_, base)| {
                    let r: Vec<f64> = vals.iter().zip(base).map(|(v, b)| v / b).collect();
                    median(&r)
                })
                .filter(|r| r.is_finite());
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
                ratio_to_iptables: ratio,
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
}

impl Parts {
    fn of(lab: &Lab) -> Parts {
        Parts {
            red: lab.ns("red"),
            lan: lab.ns("lan"),
            blue: lab.ns("blue"),
            host: lab.ns("host"),
            red_ip: Ipv4Addr::new(192, 168, 15, 1),
            lan_ip: Ipv4Addr::new(192, 168, 1, 3),
            blue_ip: Ipv4Addr::new(192, 168, 15, 2),
            uplink_ip: Ipv4Addr::new(192, 168, 1, 2),
        }
    }
}

/// A lab for one measurement, taken down however the measurement ends.
struct BenchLab(Lab);

impl BenchLab {
    fn up(nat: NatKind) -> Result<BenchLab> {
        let prefix = format!("nnb{}-", std::process::id());
        let lab = Lab::up(&LabConfig::reference(), &prefix, nat, &mut |_| {})?;
        let guard = BenchLab(lab);
        if nat == NatKind::None {
            // Plain routing: lan is given the way back that NAT otherwise provides.
            let lan = guard.0.ns("lan");
            netlink::in_ns(&lan, |r| async move {
                r.add_route(
                    "192.168.15.0/24".parse().expect("literal"),
                    Some(Ipv4Addr::new(192, 168, 1, 2)),
                    None,
                )
                .await
            })?;
        }
        Ok(guard)
    }
}

impl Drop for BenchLab {
    fn drop(&mut self) {
        let _ = lab::down(self.0.prefix());
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

/// Runs the benchmark. `progress` hears a line per measurement.
pub fn run(opts: &BenchOptions, progress: &mut dyn FnMut(&str)) -> Result<Results> {
    lab::require_root()?;
    if !opts.backends.contains(&NatKind::Iptables) {
        progress("note: iptables is not among the backends, so there will be no ratios");
    }
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut rec = Recorder {
        samples: Samples::new(),
    };
    let with_generator = |w: &Workload| matches!(w, Workload::SmallPacket | Workload::Cpu);
    let per_round: usize = opts
        .workloads
        .iter()
        .map(|w| opts.backends.len() + usize::from(with_generator(w)))
        .sum();
    let total = opts.rounds as usize * per_round;
    let mut done = 0;
    stop_on_signals();
    for round in 1..=opts.rounds {
        for &w in &opts.workloads {
            // The generator's own figures, where the workload has them, come first.
            let mut runs: Vec<Option<NatKind>> = opts.backends.iter().copied().map(Some).collect();
            if with_generator(&w) {
                runs.insert(0, None);
            }
            for b in runs {
                if STOP.load(Ordering::Relaxed) {
                    bail!("interrupted: stopped after {done} of {total} measurements; no lab is left behind");
                }
                done += 1;
                let name = b.map(|b| b.name()).unwrap_or(GENERATOR);
                progress(&format!(
                    "[round {round}/{}] {:<14} {:<9} ({done}/{total})",
                    opts.rounds,
                    w.name(),
                    name
                ));
                measure(opts, w, b, &mut rec).with_context(|| format!("{} with {name}", w.name()))?;
            }
        }
    }
    // The router's own CPU share: each backend's cost minus the generator's, per round.
    let generator = rec
        .samples
        .get(&(
            GENERATOR.to_owned(),
            Workload::Cpu.name(),
            "cpu_s_per_mpkt",
            cpu_params(opts).to_string(),
        ))
        .map(|(_, v)| v.clone());
    if let Some(generator) = generator {
        let mine: Vec<(String, Vec<f64>)> = rec
            .samples
            .iter()
            .filter(|((b, w, m, _), _)| *w == "cpu" && *m == "cpu_s_per_mpkt" && b != GENERATOR)
            .map(|((b, ..), (_, v))| (b.clone(), v.clone()))
            .collect();
        for (b, v) in mine {
            for (x, g) in v.iter().zip(&generator) {
                rec.put(
                    &b,
                    Workload::Cpu,
                    "router_cpu_s_per_mpkt",
                    "cpu_s/Mpkt",
                    &cpu_params(opts),
                    x - g,
                );
            }
        }
    }
    Ok(Results {
        schema: 1,
        started_unix,
        command: opts.command.clone(),
        machine: machine(),
        rounds: opts.rounds,
        duration_s: opts.duration.as_secs_f64(),
        backends: opts.backends.iter().map(|b| b.name().to_owned()).collect(),
        workloads: opts.workloads.iter().map(|w| w.name()).collect(),
        rows: rows(&rec.samples),
    })
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
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
    }
}

fn cpu_params(opts: &BenchOptions) -> serde_json::Value {
    json!({ "offered_pps": opts.cpu_pps, "frame_bytes": 60 })
}

/// One workload for one backend (None: the generator alone), on a lab of its own.
fn measure(opts: &BenchOptions, w: Workload, backend: Option<NatKind>, rec: &mut Recorder) -> Result<()> {
    let lab = BenchLab::up(backend.unwrap_or(NatKind::None))?;
    let p = Parts::of(&lab.0);
    let name = backend.map(|b| b.name()).unwrap_or(GENERATOR);
    // The generator alone sinks at red's own veth peer; everything else at lan.
    let (sink_ns, sink_dev) = if backend.is_none() {
        (p.host.clone(), "veth-red-br")
    } else {
        (p.lan.clone(), "lan0")
    };
    match w {
        Workload::SmallPacket | Workload::ManyFlows => {
            let flows: Vec<u32> = if w == Workload::SmallPacket {
                vec![4]
            } else {
                opts.flows.clone()
            };
            for f in flows {
                let params = json!({ "flows": f, "frame_bytes": 60 });
                let r = udp_load(opts, &p, &sink_ns, sink_dev, f, None)?;
                rec.put(name, w, "offered_pps", "pps", &params, r.offered_pps);
                rec.put(name, w, "delivered_pps", "pps", &params, r.delivered_pps);
                rec.put(name, w, "loss_pct", "%", &params, r.loss_pct);
            }
        }
        Workload::Cpu => {
            let r = udp_load(opts, &p, &sink_ns, sink_dev, 4, Some(opts.cpu_pps))?;
            let params = cpu_params(opts);
            rec.put(name, w, "delivered_pps", "pps", &params, r.delivered_pps);
            rec.put(name, w, "cpu_s_per_mpkt", "cpu_s/Mpkt", &params, r.cpu_s_per_mpkt);
            rec.put(
                name,
                w,
                "sender_cpu_s_per_mpkt",
                "cpu_s/Mpkt",
                &params,
                r.sender_cpu_s_per_mpkt,
            );
        }
        Workload::TcpThroughput => {
            let b = backend.expect("the generator has no TCP workload");
            for path in ["snat", "dnat"] {
                for streams in [1u32, 4] {
                    let gbps = tcp_throughput(opts, &p, b, path, streams)?;
                    rec.put(
                        name,
                        w,
                        "gbps",
                        "Gbit/s",
                        &json!({ "path": path, "streams": streams }),
                        gbps,
                    );
                }
            }
        }
        Workload::ConnRate => {
            let b = backend.expect("the generator has no TCP workload");
            let (rate, left) = conn_rate(opts, &lab.0, &p, b)?;
            let params = json!({ "path": "snat", "payload_bytes": 8 });
            rec.put(name, w, "conns_per_s", "conn/s", &params, rate);
            rec.put(name, w, "conntrack_entries", "entries", &params, left as f64);
        }
        Workload::Latency => {
            let lat = latency(opts, &p)?;
            let params = json!({ "rate_rps": opts.latency_rps, "payload_bytes": 32 });
            rec.put(name, w, "p50_us", "us", &params, lat.0);
            rec.put(name, w, "p99_us", "us", &params, lat.1);
            rec.put(name, w, "p99_9_us", "us", &params, lat.2);
        }
    }
    Ok(())
}

struct Load {
    offered_pps: f64,
    delivered_pps: f64,
    loss_pct: f64,
    cpu_s_per_mpkt: f64,
    /// The same for CPU 0 alone, where the pinned generator's packets are processed.
    sender_cpu_s_per_mpkt: f64,
}

/// Keeps the generator's thread on CPU 0 for every backend alike: the whole path of a
/// veth transmit runs on the sender's CPU, so a generator that migrates mid-run adds
/// noise that is not the router's.
fn pin_to_first_cpu() {
    let mut set = nix::sched::CpuSet::new();
    if set.set(0).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// UDP from red to lan's discard port, counted and dropped by the XDP sink on `sink_dev`.
fn udp_load(
    opts: &BenchOptions,
    p: &Parts,
    sink_ns: &str,
    sink_dev: &str,
    flows: u32,
    rate: Option<f64>,
) -> Result<Load> {
    let sink = ebpf::attach_sink(sink_ns, sink_dev)?;
    let (src, dst) = (p.red_ip, p.lan_ip);
    // Warm-up: neighbours resolved, every flow's state created, caches warm.
    let warm = netns::run_in(&p.red, || -> std::io::Result<()> {
        pin_to_first_cpu();
        let deadline = Instant::now() + opts.warmup.max(Duration::from_millis(100)) * 4;
        let mut sent = 0u64;
        while sent < u64::from(flows) || sent == 0 {
            sent += load::run(src, dst, flows, rate, opts.warmup)?.packets;
            if Instant::now() > deadline {
                break;
            }
        }
        Ok(())
    })?;
    warm.context("generator warm-up")?;
    let (before, _) = sink.counts()?;
    let cpu0 = load::cpu_busy_s();
    let sent = netns::run_in(&p.red, || {
        pin_to_first_cpu();
        load::run(src, dst, flows, rate, opts.duration)
    })?
    .context("generator")?;
    // Let the last batch land.
    std::thread::sleep(Duration::from_millis(50));
    let cpu1 = load::cpu_busy_s();
    let (after, _) = sink.counts()?;
    let delivered = after.saturating_sub(before);
    let secs = sent.elapsed.as_secs_f64();
    let per_mpkt = |cpu_s: f64| {
        if delivered == 0 {
            f64::NAN
        } else {
            cpu_s / (delivered as f64 / 1e6)
        }
    };
    Ok(Load {
        offered_pps: sent.pps(),
        delivered_pps: delivered as f64 / secs,
        loss_pct: if sent.packets == 0 {
            0.0
        } else {
            (100.0 * (1.0 - delivered as f64 / sent.packets as f64)).max(0.0)
        },
        cpu_s_per_mpkt: per_mpkt(cpu1.0 - cpu0.0),
        sender_cpu_s_per_mpkt: per_mpkt(cpu1.1 - cpu0.1),
    })
}

/// iperf3 through the SNAT path (red -> lan) or the DNAT path (lan -> uplink:80 -> blue;
/// with no NAT, lan -> blue directly).
fn tcp_throughput(opts: &BenchOptions, p: &Parts, b: NatKind, path: &str, streams: u32) -> Result<f64> {
    let (server_ns, client_ns, port, target) = match path {
        "snat" => (&p.lan, &p.red, 5201u16, p.lan_ip),
        _ if b == NatKind::None => (&p.blue, &p.lan, 80, p.blue_ip),
        _ => (&p.blue, &p.lan, 80, p.uplink_ip),
    };
    let mut server = netns::command(server_ns, "iperf3")?
        .args(["-s", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 (installed by cargo xtask setup)")?;
    // Wait until it listens (iperf3 shrugs off the empty probe connection).
    let ready = netns::run_in(client_ns, || {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(
                &SocketAddrV4::new(target, port).into(),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    })?;
    if !ready {
        let _ = server.kill();
        let _ = server.wait();
        bail!("iperf3 server in {server_ns} not reachable at {target}:{port}");
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
        .output()?;
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 gave no result: {}", v["error"]))?;
    Ok(bps / 1e9)
}

/// Short connections from red to a server on lan for the run's duration: connect, 8 bytes
/// each way, close. Returns connections per second and the conntrack entries left.
fn conn_rate(opts: &BenchOptions, lab: &Lab, p: &Parts, b: NatKind) -> Result<(f64, usize)> {
    // Namespace-local: the whole port range, and TIME_WAIT tuples reused.
    netns::run_in(&p.red, || {
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535")?;
        std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1")
    })??;
    let port = 7100;
    let server = netns::spawn_in(&p.lan, move |stop, ready| -> std::io::Result<()> {
        let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
        l.set_nonblocking(true)?;
        ready();
        let mut buf = [0u8; 8];
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false)?;
                    s.set_read_timeout(Some(Duration::from_secs(1)))?;
                    if s.read_exact(&mut buf).is_ok() {
                        let _ = s.write_all(&buf);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(_) => {}
            }
        }
        Ok(())
    })
    .context("connection server")?;
    let count = Arc::new(AtomicU64::new(0));
    let to = SocketAddrV4::new(p.lan_ip, port);
    let start = Instant::now();
    let deadline = start + opts.duration;
    std::thread::scope(|s| {
        let count = &count;
        s.spawn(move || {
            let _ = netns::run_in(&p.red, || {
                while Instant::now() < deadline {
                    let Ok(mut c) = TcpStream::connect_timeout(&to.into(), Duration::from_secs(1)) else {
                        continue;
                    };
                    let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut buf = *b"12345678";
                    if c.write_all(&buf).is_ok() && c.read_exact(&mut buf).is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        });
    });
    let elapsed = start.elapsed().as_secs_f64();
    let _ = server.stop();
    let left = match b {
        NatKind::Ebpf => nat_ebpf::live_flows(lab.prefix())?.len(),
        NatKind::None => 0,
        _ => {
            let out = netns::command(&p.host, "conntrack")?.arg("-C").output()?;
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
        }
    };
    Ok((count.load(Ordering::Relaxed) as f64 / elapsed, left))
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let rows = rows(&s);
        let e = rows.iter().find(|r| r.backend == "ebpf").unwrap();
        // Per round: 1.5, 1.0, 3.0 -> median 1.5 (not 216.7 / 133.3).
        assert_eq!(e.ratio_to_iptables, Some(1.5));
        assert_eq!((e.median, e.min, e.max), (200.0, 150.0, 300.0));
        let i = rows.iter().find(|r| r.backend == "iptables").unwrap();
        assert_eq!(i.ratio_to_iptables, Some(1.0));
    }

    #[test]
    fn result_directories_are_utc_timestamps() {
        let d = results_dir(std::path::Path::new("bench-results"), 1_795_340_096);
        assert_eq!(d, PathBuf::from("bench-results/2026-11-22T093456Z"));
    }
}
