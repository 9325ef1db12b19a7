//! trafgen (Debian's netsniff-ng) as an independent generator for the packet workloads: the
//! same frames as the project's own generator (same MACs, addresses, ports, 60 bytes), so a
//! reader can see both measure the same thing.

use std::{
    fmt::Write as _,
    io,
    net::Ipv4Addr,
    path::Path,
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use netns_user::sys::netns;

use crate::load::{PAYLOAD, flow_ports};

/// The frames to describe: one flow per (source port, destination port) of flows 0..n.
#[derive(Clone, Debug)]
pub struct Spec {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub flows: u32,
}

fn mac(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// trafgen's packet configuration for `spec`: one packet per destination port, its source
/// port counting through that port's flows (trafgen sends the packets round robin).
pub fn config(spec: &Spec) -> String {
    let n = spec.flows.max(1);
    // Flows with the same destination port have consecutive source ports.
    let mut blocks: Vec<(u16, u16, u16)> = Vec::new();
    for i in 0..n {
        let (s, d) = flow_ports(i);
        match blocks.last_mut() {
            Some((_, hi, dport)) if *dport == d && s == hi.wrapping_add(1) => *hi = s,
            _ => blocks.push((s, s, d)),
        }
    }
    let mut out = String::new();
    for (lo, hi, dport) in blocks {
        let sport = if lo == hi {
            lo.to_string()
        } else {
            format!("dinc({lo}, {hi}, 1)")
        };
        let _ = writeln!(
            out,
            "{{ eth(da={}, sa={}, type=0x0800), ipv4(saddr={}, daddr={}, ttl=64, id=0), \
             udp(sport={sport}, dport={dport}), fill(0x00, {PAYLOAD}) }}",
            mac(&spec.dst_mac),
            mac(&spec.src_mac),
            spec.src,
            spec.dst,
        );
    }
    out
}

/// How long trafgen may take to stop and report before its process group is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How often trafgen may be restarted within one measurement before the point fails.
const MAX_RESTARTS: u32 = 100;

/// What trafgen 0.6.8 says when a non-blocking flush of its ring meets a full socket send
/// buffer. It happens when the receiving veth runs XDP: frames then wait in the veth's NAPI
/// ring, still charged to the socket, and trafgen takes the EAGAIN as fatal. Raising the
/// send buffer is a machine-wide sysctl (refused here), so the benchmark restarts trafgen
/// at once instead and reports how often it had to.
const EAGAIN_EXIT: &str = "Flushing TX_RING failed: Resource temporarily unavailable";

/// trafgen sending in namespace `ns`, restarted by a supervising thread when it exits with
/// [`EAGAIN_EXIT`].
pub struct Trafgen {
    stop: Arc<AtomicBool>,
    supervisor: JoinHandle<io::Result<Summary>>,
}

/// How trafgen's run went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub restarts: u32,
}

/// How long trafgen's workers may take to start.
const WORKER_START: Duration = Duration::from_millis(500);

/// Starts trafgen with `config_path` on `ifname` in `ns`, as `processes` processes (trafgen
/// pins process k to CPU k). It leaves the machine's socket memory and IRQ affinities alone
/// (`--no-sock-mem --notouch-irq`) and is stopped at the latest after `max`.
pub fn start(
    ns: &str,
    ifname: &str,
    config_path: &Path,
    processes: usize,
    max: Duration,
) -> io::Result<Trafgen> {
    let deadline = Instant::now() + max;
    let spawn = {
        let (ns, ifname, config_path) = (ns.to_owned(), ifname.to_owned(), config_path.to_owned());
        move || -> io::Result<Child> {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100));
            // `timeout` is the backstop should this process die: it stops trafgen anyway.
            netns::command(&ns, "timeout")
                .map_err(io::Error::other)?
                .arg("--signal=INT")
                .arg(format!("{:.1}", left.as_secs_f64()))
                .arg("trafgen")
                .args(["--dev", &ifname, "--cpus", &processes.to_string()])
                .args(["--no-sock-mem", "--notouch-irq", "--conf"])
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        }
    };
    let mut child = spawn()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let supervisor = std::thread::spawn(move || {
        let mut restarts = 0;
        loop {
            // With several workers, one that dies leaves the others running: watch their
            // number too, once all have started.
            let (mut all_started, spawned) = (false, Instant::now());
            while !stopping.load(Ordering::Relaxed) && Instant::now() < deadline {
                if child.try_wait()?.is_some() {
                    break;
                }
                let n = workers(child.id());
                if n >= processes {
                    all_started = true;
                } else if all_started || spawned.elapsed() > WORKER_START {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let asked = stopping.load(Ordering::Relaxed) || Instant::now() >= deadline;
            let text = end(child)?;
            if asked {
                // Its summary is not needed (the load is counted on the veth), and a worker
                // that died in the last moments, or a trafgen that had to be killed, leaves
                // none.
                return Ok(Summary { restarts });
            }
            if !text.contains(EAGAIN_EXIT) || restarts >= MAX_RESTARTS {
                return Err(io::Error::other(format!(
                    "trafgen exited early (after {restarts} restarts): {}",
                    text.trim()
                )));
            }
            restarts += 1;
            child = spawn()?;
        }
    });
    Ok(Trafgen { stop, supervisor })
}

/// How many worker processes the trafgen under `timeout` (process `timeout_pid`) has.
fn workers(timeout_pid: u32) -> usize {
    let children =
        |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children(&timeout_pid.to_string())
        .split_whitespace()
        .map(|trafgen| children(trafgen).split_whitespace().count())
        .sum()
}

/// Stops trafgen (SIGINT, as Ctrl-C) if it still runs and returns everything it printed.
fn end(mut child: Child) -> io::Result<String> {
    use nix::sys::signal::{Signal, killpg};
    // `timeout` leads a process group of its own, and trafgen forks one worker per CPU into
    // it. Signal the whole group: a worker that misses the signal keeps sending (orphaned,
    // at full speed) and holds trafgen's output open.
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = killpg(group, Signal::SIGINT);
    let deadline = Instant::now() + STOP_GRACE;
    loop {
        let reaped = child.try_wait()?.is_some();
        if reaped && killpg(group, None).is_err() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = killpg(group, Signal::SIGKILL);
            child.wait()?;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

impl Trafgen {
    /// Stops trafgen and says how its run went.
    pub fn stop(self) -> io::Result<Summary> {
        self.stop.store(true, Ordering::Relaxed);
        self.supervisor
            .join()
            .map_err(|_| io::Error::other("trafgen's supervisor panicked"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(flows: u32) -> Spec {
        Spec {
            dst_mac: [0x02, 0, 0, 0, 0, 1],
            src_mac: [0x02, 0, 0, 0, 0, 2],
            src: Ipv4Addr::new(192, 168, 15, 1),
            dst: Ipv4Addr::new(192, 168, 1, 3),
            flows,
        }
    }

    #[test]
    fn one_flow_is_one_fixed_packet() {
        let c = config(&spec(1));
        assert_eq!(c.lines().count(), 1);
        assert!(c.contains("da=02:00:00:00:00:01, sa=02:00:00:00:00:02"), "{c}");
        assert!(c.contains("udp(sport=1024, dport=9)"), "{c}");
        assert!(c.contains("fill(0x00, 18)"), "{c}");
    }

    #[test]
    fn many_flows_cover_the_same_ports_as_our_generator() {
        let c = config(&spec(65_000));
        // 50,000 source ports on port 9, the other 15,000 on port 10.
        assert_eq!(c.lines().count(), 2, "{c}");
        assert!(c.contains("udp(sport=dinc(1024, 51023, 1), dport=9)"), "{c}");
        assert!(c.contains("udp(sport=dinc(1024, 16023, 1), dport=10)"), "{c}");
    }
}
