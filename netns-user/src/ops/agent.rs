//! The per-lab agent of an eBPF NAT: one process per lab (`netns-nat agent`, started by
//! `up`, stopped by `down`, restarted by `up --resume`). It expires entries (the sweep of
//! `ops::sweeper`), follows the uplink's address and the router's links (for the fast path's
//! port table) from rtnetlink events, and applies
//! live changes (forwards, `config apply`) one at a time, so that the maps, the stored
//! configuration and its own view of them never disagree. Its control socket
//! (`agent.sock` in the lab's state directory) takes one JSON request per line and answers one JSON line.
//!
//! The agent is not on the packet path: if it dies, packets go on being translated; only
//! expired entries stay (their ports are still reused) and address changes go unnoticed
//! until it is back.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::{fd::AsRawFd as _, unix::net::UnixStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use netns_common::names::MAP_NAT_CONFIG;
use rtnetlink::{
    constants::{RTMGRP_IPV4_IFADDR, RTMGRP_LINK},
    sys::{SocketAddr, protocols::NETLINK_ROUTE},
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::unix::AsyncFd,
    io::{AsyncBufReadExt as _, AsyncWriteExt as _},
    net::UnixListener,
    signal::unix::{SignalKind, signal},
};

use super::{forwards, reconfig, sweeper};
use crate::{
    bpf,
    config::{self, ForwardSpec, L4Proto, LabConfig, NatSpec},
    nat::ebpf::{agent_pid_file, agent_socket},
    sys::netns,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "the agent of lab {prefix:?} is not running ({detail}); start it again with \
         `netns-nat up --prefix {prefix} --resume`"
    )]
    NotRunning { prefix: String, detail: String },
    #[error("the agent of lab {prefix:?}: {detail}")]
    Protocol { prefix: String, detail: String },
    /// The agent refused the change; its words.
    #[error("{0}")]
    Refused(String),
    #[error("agent of lab {prefix:?}: {detail}")]
    Start { prefix: String, detail: String },
}

/// What a client asks the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Its health.
    Ping,
    ForwardAdd {
        forward: ForwardSpec,
    },
    ForwardDel {
        protocol: L4Proto,
        port: u16,
    },
    /// Replace the `[nat]` settings that can change live.
    ConfigApply {
        nat: Box<NatSpec>,
    },
}

/// The agent's answer: `ok`, and either `error` or what the request returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub value: serde_json::Value,
}

/// What `ping` answers (and `status` shows).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Health {
    pub pid: u32,
    pub started_unix: u64,
    pub sweeps: u64,
    pub swept_flows: u64,
    pub swept_mappings: u64,
    /// Milliseconds the last sweep took.
    pub last_sweep_ms: u64,
    /// Events (address or link changes) seen on the router's rtnetlink socket, and the
    /// changes of the uplink's address they led to.
    pub router_events: u64,
    pub address_changes: u64,
    /// Live changes applied (forwards, config apply) and refused.
    pub changes_applied: u64,
    pub changes_refused: u64,
    /// The last error of a sweep or of following the address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What holds the fast path off (a filter on the router's forward hook), if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_path_held: Option<String>,
}

/// Sends `req` to lab `prefix`'s agent and returns what it answers (`Refused` when it says
/// no).
pub fn request(prefix: &str, req: &Request) -> Result<serde_json::Value, AgentError> {
    request_within(prefix, req, Duration::from_secs(30))
}

pub fn request_within(
    prefix: &str,
    req: &Request,
    timeout: Duration,
) -> Result<serde_json::Value, AgentError> {
    let not_running = |detail: String| AgentError::NotRunning {
        prefix: prefix.to_owned(),
        detail,
    };
    let proto = |detail: String| AgentError::Protocol {
        prefix: prefix.to_owned(),
        detail,
    };
    let mut conn = UnixStream::connect(agent_socket(prefix)).map_err(|e| not_running(e.to_string()))?;
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| proto(e.to_string()))?;
    let mut line = serde_json::to_string(req).expect("a request serialises");
    line.push('\n');
    conn.write_all(line.as_bytes())
        .map_err(|e| proto(e.to_string()))?;
    let mut answer = String::new();
    BufReader::new(&conn)
        .read_line(&mut answer)
        .map_err(|e| proto(format!("no answer: {e}")))?;
    if answer.is_empty() {
        return Err(proto("it closed the connection without answering".into()));
    }
    let reply: Reply = serde_json::from_str(&answer).map_err(|e| proto(format!("bad answer: {e}")))?;
    if reply.ok {
        Ok(reply.value)
    } else {
        Err(AgentError::Refused(reply.error.unwrap_or_default()))
    }
}

/// The agent's health, if it runs and answers within a second.
pub fn health(prefix: &str) -> Result<Health, AgentError> {
    let v = request_within(prefix, &Request::Ping, Duration::from_secs(1))?;
    serde_json::from_value(v).map_err(|e| AgentError::Protocol {
        prefix: prefix.to_owned(),
        detail: e.to_string(),
    })
}

/// Waits until lab `prefix`'s agent answers (after it was started), at most `within`.
pub fn wait_ready(prefix: &str, within: Duration) -> Result<Health, AgentError> {
    let start = Instant::now();
    loop {
        match health(prefix) {
            Ok(h) => return Ok(h),
            Err(e) if start.elapsed() >= within => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// What the agent's tasks share.
struct Shared {
    prefix: String,
    router_ns: String,
    /// The lab's configuration as it runs (the stored one, kept in step).
    config: Mutex<LabConfig>,
    /// Its sweep interval, readable without the lock (the sweep loop runs on the runtime's
    /// one thread, which a held lock must not stop).
    sweep_ms: AtomicU64,
    health: Mutex<Health>,
}

impl Shared {
    /// Keeps `sweep_ms` in step with the configuration.
    fn configured(&self, cfg: &LabConfig) {
        if let Some(n) = &cfg.nat {
            self.sweep_ms
                .store(n.ebpf.sweep_interval_ms.max(10), Ordering::Relaxed);
        }
    }

    fn note_error(&self, what: &str, e: impl std::fmt::Display) {
        eprintln!("{what}: {e}");
        self.health.lock().expect("not poisoned").last_error = Some(format!("{what}: {e}"));
    }

    /// Follows the uplink's address and the router's links (blocking: netlink requests in
    /// the router namespace).
    fn follow_router(&self) {
        self.follow_address();
        if let Err(e) = crate::nat::ebpf::sync_ports(&self.prefix, &self.router_ns) {
            self.note_error("following the router's links", e);
        }
    }

    /// Follows the uplink's address.
    fn follow_address(&self) {
        // Held throughout: a live change waits, then sees the new address (and a forward
        // added meanwhile is not left on the old one).
        let cfg = self.config.lock().expect("not poisoned");
        let Some(nat) = cfg.nat.as_ref() else {
            return;
        };
        match sweeper::follow_uplink_address(&self.prefix, nat, &self.router_ns) {
            Ok(Some(addr)) => {
                eprintln!("uplink address is now {addr}: new flows use it");
                self.health.lock().expect("not poisoned").address_changes += 1;
            }
            Ok(None) => {}
            Err(e) => self.note_error("following the uplink's address", e),
        }
    }

    fn handle(&self, req: Request) -> Reply {
        let result: Result<serde_json::Value, String> = match req {
            Request::Ping => {
                return Reply {
                    ok: true,
                    error: None,
                    value: serde_json::to_value(&*self.health.lock().expect("not poisoned"))
                        .expect("health serialises"),
                };
            }
            Request::ForwardAdd { forward } => {
                let mut cfg = self.config.lock().expect("not poisoned");
                forwards::add_live(&self.prefix, &cfg, forward)
                    .map(|next| *cfg = next)
                    .map(|()| serde_json::Value::Null)
                    .map_err(|e| e.to_string())
            }
            Request::ForwardDel { protocol, port } => {
                let mut cfg = self.config.lock().expect("not poisoned");
                forwards::del_live(&self.prefix, &cfg, protocol, port)
                    .map(|(next, to)| {
                        *cfg = next;
                        serde_json::json!({ "to": to })
                    })
                    .map_err(|e| e.to_string())
            }
            Request::ConfigApply { nat } => {
                let mut cfg = self.config.lock().expect("not poisoned");
                reconfig::apply(&self.prefix, &cfg, *nat)
                    .map(|next| {
                        self.configured(&next);
                        *cfg = next
                    })
                    .map(|()| serde_json::Value::Null)
                    .map_err(|e| e.to_string())
            }
        };
        let mut h = self.health.lock().expect("not poisoned");
        match result {
            Ok(value) => {
                h.changes_applied += 1;
                Reply {
                    ok: true,
                    error: None,
                    value,
                }
            }
            Err(e) => {
                h.changes_refused += 1;
                Reply {
                    ok: false,
                    error: Some(e),
                    value: serde_json::Value::Null,
                }
            }
        }
    }
}

/// Whether the lab's NAT is still there (its pinned configuration map).
fn lab_present(prefix: &str) -> bool {
    bpf::pin_dir(prefix).join(MAP_NAT_CONFIG).exists()
}

/// A netlink socket in the router namespace that hears of every IPv4 address change and
/// every link change (up, down, into or out of a bridge, gone) there.
fn router_events(router_ns: &str) -> Result<rtnetlink::sys::Socket, String> {
    netns::run_in(router_ns, || -> std::io::Result<rtnetlink::sys::Socket> {
        let mut s = rtnetlink::sys::Socket::new(NETLINK_ROUTE)?;
        s.bind(&SocketAddr::new(0, RTMGRP_IPV4_IFADDR | RTMGRP_LINK))?;
        s.set_non_blocking(true)?;
        Ok(s)
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// Runs the agent of lab `prefix` until it is signalled (SIGINT, SIGTERM: a clean end; a
/// second signal ends it at once) or the lab's NAT is gone.
pub fn run(prefix: &str) -> Result<(), AgentError> {
    let fail = |detail: String| AgentError::Start {
        prefix: prefix.to_owned(),
        detail,
    };
    let config = config::load_stored(prefix).map_err(|e| fail(e.to_string()))?;
    let nat = config
        .nat
        .clone()
        .ok_or_else(|| fail("the lab has no [nat] section".into()))?;
    let router_ns = config.netns_name(prefix, &nat.router);
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let shared = Arc::new(Shared {
        prefix: prefix.to_owned(),
        router_ns: router_ns.clone(),
        sweep_ms: AtomicU64::new(nat.ebpf.sweep_interval_ms.max(10)),
        config: Mutex::new(config),
        health: Mutex::new(Health {
            pid: std::process::id(),
            started_unix,
            ..Health::default()
        }),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(e.to_string()))?;
    // One agent per lab: the lock is held for as long as this process lives.
    let lock_path = crate::sys::paths::state_dir(prefix).join("agent.lock");
    let lock =
        std::fs::File::create(&lock_path).map_err(|e| fail(format!("{}: {e}", lock_path.display())))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| fail("another agent runs for this lab".into()))?;
    rt.block_on(async move {
        let sock = agent_socket(prefix);
        let events = router_events(&router_ns).map_err(|e| fail(format!("router events: {e}")))?;
        // Safety: the socket owns its descriptor, which stays open and the same until the
        // AsyncFd (its owner from here on) is dropped.
        let events = unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
            .map_err(|e| fail(e.to_string()))?;
        let mut sigterm = signal(SignalKind::terminate()).map_err(|e| fail(e.to_string()))?;
        let mut sigint = signal(SignalKind::interrupt()).map_err(|e| fail(e.to_string()))?;

        // The address and the links may have changed while no agent ran.
        {
            let s = shared.clone();
            let _ = tokio::task::spawn_blocking(move || s.follow_router()).await;
        }
        tokio::spawn(follow_events(shared.clone(), events));
        let level = nat.ebpf.log_level;
        if level != crate::config::LogLevel::Off {
            match aya_log::EbpfLogger::init_from_id_with_logger(
                bpf::nat_program_id(prefix).map_err(|e| fail(e.to_string()))?,
                ProgramLog::default(),
            ) {
                Ok(logger) => {
                    eprintln!("the programs' diagnostics from level {} up follow", level.name());
                    // Safety: the logger owns its ring buffer's descriptor, open and the same
                    // until the AsyncFd that owns the logger from here on is dropped.
                    let fd =
                        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
                            .map_err(|e| fail(e.to_string()))?;
                    tokio::spawn(follow_program_log(fd));
                }
                Err(e) => shared.note_error("the programs' log", e),
            }
        }
        let mut sweeps = tokio::spawn(sweep_loop(shared.clone()));
        tokio::spawn(firewall_loop(shared.clone()));

        // Last: once the socket answers, the agent is whole (`up` waits for that). A file
        // left there is a dead agent's (this one holds the lock).
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock).map_err(|e| fail(format!("{}: {e}", sock.display())))?;
        eprintln!(
            "agent of lab {prefix} (pid {}): control socket {}",
            std::process::id(),
            sock.display()
        );
        let mut clients = tokio::task::JoinSet::new();
        let end = loop {
            tokio::select! {
                _ = sigterm.recv() => break "SIGTERM",
                _ = sigint.recv() => break "SIGINT",
                _ = &mut sweeps => break "the lab's NAT is gone",
                conn = listener.accept() => {
                    if let Ok((conn, _)) = conn {
                        clients.spawn(serve(shared.clone(), conn));
                    }
                }
                // Reap the clients that are done.
                Some(_) = clients.join_next(), if !clients.is_empty() => {}
            }
        };
        eprintln!("agent of lab {prefix}: {end}; ending");
        drop(listener);
        let _ = std::fs::remove_file(&sock);
        // A second signal while ending: end at once.
        tokio::spawn(async move {
            tokio::select! {
                _ = sigterm.recv() => {}
                _ = sigint.recv() => {}
            }
            eprintln!("second signal: ending now");
            std::process::exit(1);
        });
        // A change being applied is finished and answered (clients idle on an open
        // connection are not waited for long).
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while clients.join_next().await.is_some() {}
        })
        .await;
        if std::fs::read_to_string(agent_pid_file(prefix))
            .is_ok_and(|p| p.trim() == std::process::id().to_string())
        {
            let _ = std::fs::remove_file(agent_pid_file(prefix));
        }
        Ok(())
    })
}

/// The longest request line the agent reads (a `config apply` is a few kilobytes).
pub const MAX_REQUEST: u64 = 64 * 1024;
/// How long one client may keep a connection: every request of it, with its answers, in
/// this time (a client that trickles or stalls is cut off, however it paces its bytes).
pub const CONNECTION_TIME: Duration = Duration::from_secs(10);

/// One line of at most [`MAX_REQUEST`] bytes; None at the end of the connection or past the
/// limit.
async fn bounded_line<R: tokio::io::AsyncBufRead + Unpin>(read: &mut R) -> Option<String> {
    use tokio::io::AsyncReadExt as _;
    let mut line = Vec::new();
    let n = (&mut *read)
        .take(MAX_REQUEST + 1)
        .read_until(b'\n', &mut line)
        .await
        .ok()?;
    if n == 0 || line.last() != Some(&b'\n') {
        return None;
    }
    String::from_utf8(line).ok()
}

/// Answers one client: a JSON request per line, a JSON reply per line, within
/// [`CONNECTION_TIME`].
async fn serve(shared: Arc<Shared>, conn: tokio::net::UnixStream) {
    let _ = tokio::time::timeout(CONNECTION_TIME, serve_requests(shared, conn)).await;
}

async fn serve_requests(shared: Arc<Shared>, conn: tokio::net::UnixStream) {
    let (read, mut write) = conn.into_split();
    let mut read = tokio::io::BufReader::new(read);
    while let Some(line) = bounded_line(&mut read).await {
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                let s = shared.clone();
                // Map updates and netlink requests block: off the runtime's thread.
                tokio::task::spawn_blocking(move || s.handle(req))
                    .await
                    .unwrap_or_else(|e| Reply {
                        ok: false,
                        error: Some(format!("the request failed: {e}")),
                        value: serde_json::Value::Null,
                    })
            }
            Err(e) => Reply {
                ok: false,
                error: Some(format!("not a request: {e}")),
                value: serde_json::Value::Null,
            },
        };
        let mut out = serde_json::to_string(&reply).expect("a reply serialises");
        out.push('\n');
        if write.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Writes the programs' aya-log records to the agent's log (its stderr).
/// At most [`LOG_PER_S`] records a second: the log is in memory (/run), and a flood of
/// drops at `debug` must not fill it; the rest are counted.
#[derive(Default)]
struct ProgramLog {
    /// (start of the current second, records written in it, records skipped in it).
    window: Mutex<(Option<Instant>, u32, u64)>,
}

const LOG_PER_S: u32 = 200;

impl log::Log for ProgramLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let mut w = self.window.lock().expect("not poisoned");
        let now = Instant::now();
        if w.0
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            if w.2 > 0 {
                eprintln!("bpf: {} more records in that second not written", w.2);
            }
            *w = (Some(now), 0, 0);
        }
        if w.1 >= LOG_PER_S {
            w.2 += 1;
            return;
        }
        w.1 += 1;
        eprintln!("bpf {}: {}", record.level(), named(&record.args().to_string()));
    }

    fn flush(&self) {}
}

/// A program's record with its numbers named: `hook=N` by the program, `reason=N` by the
/// counter (the programs log numbers; names would cost them too much to verify).
fn named(msg: &str) -> String {
    use netns_common::{counters::NatCounter, trace::hook_name};
    msg.split(' ')
        .map(|w| {
            if let Some(n) = w.strip_prefix("hook=").and_then(|n| n.parse::<u8>().ok()) {
                hook_name(n).to_owned()
            } else if let Some(c) = w
                .strip_prefix("reason=")
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| NatCounter::ALL.get(n))
            {
                c.name().to_owned()
            } else if let Some(p) = w.strip_prefix("proto=").and_then(|n| n.parse::<u8>().ok()) {
                super::conntrack::proto_name(p).to_owned()
            } else {
                w.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

async fn follow_program_log(mut fd: AsyncFd<aya_log::EbpfLogger<ProgramLog>>) {
    loop {
        let Ok(mut ready) = fd.readable_mut().await else {
            return;
        };
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}

/// Re-reads the uplink's address and the router's links whenever they change.
async fn follow_events(shared: Arc<Shared>, events: AsyncFd<rtnetlink::sys::Socket>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let Ok(mut ready) = events.readable().await else {
            return;
        };
        let mut heard = false;
        loop {
            let fd = ready.get_inner().as_raw_fd();
            // Safety: `fd` is the open socket `events` owns, `buf` is writable for its length.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n > 0 {
                heard = true;
                continue;
            }
            if n == 0 {
                ready.clear_ready();
                break;
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                // Events were lost: re-read the address anyway.
                Some(libc::ENOBUFS) => heard = true,
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) => {
                    ready.clear_ready();
                    break;
                }
                _ => {
                    shared.note_error("router events", err);
                    ready.clear_ready();
                    break;
                }
            }
        }
        if heard {
            shared.health.lock().expect("not poisoned").router_events += 1;
            let s = shared.clone();
            let _ = tokio::task::spawn_blocking(move || s.follow_router()).await;
        }
    }
}

/// The agent's log (its stdout and stderr) is kept under [`LOG_MAX`]: past it, it becomes
/// `agent.log.1` (replacing the one before) and a new log begins. The log is in /run
/// (memory), so an agent that logs for weeks must not fill it.
pub const LOG_MAX: u64 = 1 << 20;

fn rotate_log(prefix: &str) -> std::io::Result<()> {
    rotate_log_at(&crate::nat::ebpf::agent_log(prefix), LOG_MAX, &[1, 2])
}

/// [`rotate_log`] of the log at `path`, written through descriptors `fds`, past `max` bytes.
fn rotate_log_at(path: &std::path::Path, max: u64, fds: &[i32]) -> std::io::Result<()> {
    if std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) <= max {
        return Ok(());
    }
    let path = path.to_owned();
    let mut old = path.clone().into_os_string();
    old.push(".1");
    std::fs::rename(&path, &old)?;
    let fresh = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    for &fd in fds {
        // Safety: dup2(2) of a descriptor this function owns onto the log's descriptors
        // (the agent's standard output and error), which no Rust object owns.
        if unsafe { libc::dup2(fresh.as_raw_fd(), fd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    if !fds.is_empty() {
        eprintln!("log rotated: the earlier lines are in {}", old.to_string_lossy());
    }
    Ok(())
}

/// How often the agent looks for a filter on the router's forward hook (two short commands).
const FIREWALL_CHECK: Duration = Duration::from_secs(2);

/// Holds the fast path off while the router's namespace filters what it forwards, and turns
/// it back on when the filter is gone (see `nat::ebpf::hold_fast_path`).
async fn firewall_loop(shared: Arc<Shared>) {
    loop {
        let wanted = shared
            .config
            .lock()
            .expect("not poisoned")
            .nat
            .as_ref()
            .map(|n| n.ebpf.fast_path);
        let Some(wanted) = wanted else { return };
        let s = shared.clone();
        let held = tokio::task::spawn_blocking(move || {
            crate::nat::ebpf::hold_fast_path(&s.prefix, &s.router_ns, wanted)
        })
        .await;
        match held {
            Ok(Ok((why, changed))) => {
                if changed {
                    match &why {
                        Some(why) => eprintln!(
                            "fast path off: {why}; packets take the router's stack, where it applies"
                        ),
                        None => eprintln!("fast path on again: nothing filters the forward hook now"),
                    }
                }
                shared.health.lock().expect("not poisoned").fast_path_held = why;
            }
            Ok(Err(_)) if !lab_present(&shared.prefix) => return,
            Ok(Err(e)) => shared.note_error("checking the router's forward filters", e),
            Err(e) => shared.note_error("checking the router's forward filters", e),
        }
        tokio::time::sleep(FIREWALL_CHECK).await;
    }
}

/// The sweep, every `sweep_interval_ms` (or less often on large tables: a sweep reads every
/// entry, and sweeping takes at most one part in `SWEEP_DUTY` of a CPU). Returns when the
/// lab's NAT is gone.
async fn sweep_loop(shared: Arc<Shared>) {
    const SWEEP_DUTY: u32 = 20;
    loop {
        let interval = Duration::from_millis(shared.sweep_ms.load(Ordering::Relaxed));
        if !lab_present(&shared.prefix) {
            return;
        }
        // A `trace` that died without cleaning up must not leave tracing on.
        let prefix = shared.prefix.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || super::trace::sync_flag(&prefix)).await {
            shared.note_error("trace listeners", e);
        }
        let started = Instant::now();
        let prefix = shared.prefix.clone();
        let swept = tokio::task::spawn_blocking(move || sweeper::sweep_once(&prefix)).await;
        let took = started.elapsed();
        match swept {
            Ok(Ok(s)) => {
                let mut h = shared.health.lock().expect("not poisoned");
                h.sweeps += 1;
                h.swept_flows += s.flows as u64;
                h.swept_mappings += s.bindings as u64;
                h.last_sweep_ms = took.as_millis() as u64;
                if s != sweeper::Swept::default() {
                    eprintln!("swept {} flows, {} mappings", s.flows, s.bindings);
                }
            }
            Ok(Err(e)) if lab_present(&shared.prefix) => shared.note_error("sweep", e),
            Ok(Err(_)) => return,
            Err(e) => shared.note_error("sweep", e),
        }
        if let Err(e) = rotate_log(&shared.prefix) {
            shared.note_error("log rotation", e);
        }
        // Expired entries are already inert, so a later sweep costs memory, not correctness.
        tokio::time::sleep(interval.max(took * SWEEP_DUTY)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::named;

    #[test]
    fn a_log_past_its_limit_is_rotated_once() {
        let dir = std::env::temp_dir().join(format!("netns-nat-rotate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("agent.log");
        std::fs::write(&log, vec![b'x'; 100]).unwrap();
        super::rotate_log_at(&log, 100, &[]).unwrap();
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 100, "at the limit: kept");
        std::fs::write(&log, vec![b'y'; 101]).unwrap();
        super::rotate_log_at(&log, 100, &[]).unwrap();
        assert_eq!(std::fs::read(dir.join("agent.log.1")).unwrap(), vec![b'y'; 101]);
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0, "a fresh log");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn program_records_get_names() {
        assert_eq!(
            named("drop hook=1 reason=14 proto=17 192.168.1.3:7499 -> 192.168.1.2:1024"),
            "drop nat_ingress drop_unsolicited udp 192.168.1.3:7499 -> 192.168.1.2:1024"
        );
        assert_eq!(named("new mapping"), "new mapping");
        assert_eq!(named("hook=99 reason=999"), "? reason=999");
    }
}
