//! `netns-nat trace`: the programs' translations and drops as they happen, read from the
//! `NAT_TRACE` ring buffer. A ring buffer has one reader, so a lab has at most one trace: it
//! holds a lock (`trace.listen` in the lab's state directory) while it runs. The programs
//! write events only while `NAT_TRACE_ON` is 1, which says whether that lock is held; the
//! agent, which makes every change to a running NAT, writes it (`agent::trace_flag`) when a
//! trace asks as it starts and ends.

use std::{
    fs,
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::maps::RingBuf;
use netns_common::{
    counters::NatCounter,
    names::MAP_NAT_TRACE,
    nat::{addr_from_wire, addr_to_wire, port_from_wire, port_to_wire},
    trace::{TraceEvent, Tuple, VERDICT_DROP, hook_name, verdict_name},
};
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;

use super::{agent, conntrack::proto_name};
use crate::{bpf, nat::ebpf::monotonic_ns};

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(transparent)]
    Ebpf(#[from] Box<bpf::EbpfError>),
    #[error("tracing lab {prefix:?}: {detail}")]
    Io { prefix: String, detail: String },
    #[error(
        "another `netns-nat trace` of lab {0:?} is running (a ring buffer has one reader): \
         stop it first"
    )]
    Busy(String),
    #[error(transparent)]
    Agent(#[from] Box<agent::AgentError>),
}

impl From<agent::AgentError> for TraceError {
    fn from(e: agent::AgentError) -> Self {
        TraceError::Agent(Box::new(e))
    }
}

impl From<bpf::EbpfError> for TraceError {
    fn from(e: bpf::EbpfError) -> Self {
        TraceError::Ebpf(Box::new(e))
    }
}

/// Which events to show (all that are given must match; address and port on any side,
/// before or after translation).
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceFilter {
    pub proto: Option<u8>,
    pub host: Option<Ipv4Addr>,
    pub port: Option<u16>,
}

impl TraceFilter {
    pub fn matches(&self, ev: &TraceEvent) -> bool {
        let sides = [ev.before, ev.after];
        self.proto.is_none_or(|p| ev.before.proto == p)
            && self.host.is_none_or(|h| {
                let h = addr_to_wire(h);
                sides.iter().any(|t| t.saddr == h || t.daddr == h)
            })
            && self.port.is_none_or(|p| {
                let p = port_to_wire(p);
                sides.iter().any(|t| t.sport == p || t.dport == p)
            })
    }
}

/// One event as printed (`trace --json`: one object per line).
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Seconds since the trace started.
    pub t_s: f64,
    pub hook: &'static str,
    pub verdict: &'static str,
    /// Drops: the counter of the reason (as in `stats`).
    pub reason: Option<&'static str>,
    pub protocol: &'static str,
    /// `source -> destination` before and after the step (`address:port`).
    pub before: String,
    pub after: String,
}

fn side(t: &Tuple) -> String {
    format!(
        "{}:{} -> {}:{}",
        addr_from_wire(t.saddr),
        port_from_wire(t.sport),
        addr_from_wire(t.daddr),
        port_from_wire(t.dport)
    )
}

impl Event {
    fn of(ev: &TraceEvent, start_ns: u64) -> Event {
        Event {
            t_s: ev.ts_ns.saturating_sub(start_ns) as f64 / 1e9,
            hook: hook_name(ev.hook),
            verdict: verdict_name(ev.verdict),
            reason: (ev.verdict == VERDICT_DROP)
                .then(|| NatCounter::ALL.get(usize::from(ev.reason)).map(|c| c.name()))
                .flatten(),
            protocol: proto_name(ev.before.proto),
            before: side(&ev.before),
            after: side(&ev.after),
        }
    }

    /// One line of text.
    pub fn line(&self) -> String {
        let outcome = match self.reason {
            Some(r) => format!("drop ({r})"),
            None => self.verdict.to_owned(),
        };
        if self.before == self.after {
            format!(
                "{:>10.6} {:<12} {:<4} {:<43} {outcome}",
                self.t_s, self.hook, self.protocol, self.before
            )
        } else {
            format!(
                "{:>10.6} {:<12} {:<4} {:<43} => {:<43} {outcome}",
                self.t_s, self.hook, self.protocol, self.before, self.after
            )
        }
    }
}

fn io_err(prefix: &str) -> impl Fn(std::io::Error) -> TraceError + '_ {
    move |e| TraceError::Io {
        prefix: prefix.to_owned(),
        detail: e.to_string(),
    }
}

fn listen_lock(prefix: &str) -> Result<fs::File, TraceError> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(agent::listen_lock_path(prefix))
        .map_err(io_err(prefix))
}

/// Asks lab `prefix`'s agent, the flag's one writer, to recount the listeners into it.
fn ask_sync(prefix: &str) -> Result<(), TraceError> {
    agent::request(prefix, &agent::Request::TraceSync)?;
    Ok(())
}

/// This process as the lab's trace, for as long as it lives.
struct Listening<'a> {
    prefix: &'a str,
    lock: Option<Flock<fs::File>>,
}

impl<'a> Listening<'a> {
    fn start(prefix: &'a str) -> Result<Self, TraceError> {
        let lock = match Flock::lock(listen_lock(prefix)?, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(TraceError::Busy(prefix.to_owned()));
            }
            Err((_, e)) => return Err(io_err(prefix)(e.into())),
        };
        Ok(Listening {
            prefix,
            lock: Some(lock),
        })
    }
}

impl Drop for Listening<'_> {
    fn drop(&mut self) {
        drop(self.lock.take());
        let _ = ask_sync(self.prefix);
    }
}

/// Traces lab `prefix`: calls `show` for every event `filter` selects until `stop` is set,
/// `within` has passed or `max` events were shown. Returns how many were shown.
pub fn run(
    prefix: &str,
    filter: TraceFilter,
    within: Option<Duration>,
    max: Option<u64>,
    stop: &AtomicBool,
    mut show: impl FnMut(&Event),
) -> Result<u64, TraceError> {
    // The lock first: draining the ring belongs to its one reader.
    let _listening = Listening::start(prefix)?;
    let mut ring = RingBuf::try_from(bpf::pinned_map(prefix, MAP_NAT_TRACE)?)
        .map_err(bpf::map_err_at(&bpf::pin_dir(prefix).join(MAP_NAT_TRACE)))?;
    // Events left from an earlier trace are not this one's.
    while ring.next().is_some() {}
    ask_sync(prefix)?;
    let start = Instant::now();
    let start_ns = monotonic_ns();
    let mut shown = 0u64;
    while !stop.load(Ordering::Relaxed)
        && within.is_none_or(|w| start.elapsed() < w)
        && max.is_none_or(|m| shown < m)
    {
        let mut any = false;
        while let Some(item) = ring.next() {
            any = true;
            if item.len() < size_of::<TraceEvent>() {
                continue;
            }
            // Safety: the programs write whole TraceEvents (repr(C), any bit pattern valid);
            // read unaligned, as the ring gives no alignment promise to Rust.
            let ev: TraceEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            if filter.matches(&ev) {
                show(&Event::of(&ev, start_ns));
                shown += 1;
                if max.is_some_and(|m| shown >= m) {
                    break;
                }
            }
        }
        if !any {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(shown)
}
