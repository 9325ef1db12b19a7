//! The agent's process: its control socket's server, the sweep, the router's address and
//! link events, the forward-hook filter check, one task each on a one-thread runtime.

use std::{
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use netns_common::filter::EntryFilter;
use rtnetlink::{
    constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV4_RULE, RTMGRP_LINK, RTMGRP_NEIGH},
    sys::{SocketAddr, protocols::NETLINK_ROUTE},
};
use tokio::{
    io::unix::AsyncFd,
    io::{AsyncBufReadExt as _, AsyncWriteExt as _},
    net::UnixListener,
    signal::unix::{SignalKind, signal},
};

use super::{
    AgentError,
    lifecycle::{lab_present, pid_file, socket_path},
    log_rotation::rotate_log,
    program_log::{ProgramLog, follow_program_log},
    protocol::{CONNECTION_TIME, Health, MAX_REQUEST, Reply, Request, line},
    trace_flag,
};
use crate::{
    bpf::{self, NatMaps},
    config::{self, FastPath, LabConfig},
    ops::{conntrack, forwards, reconfig, sweeper},
    sys::netns,
};

/// What the agent's tasks share.
struct Shared {
    prefix: String,
    router_ns: String,
    /// The lab's configuration as it runs (the stored one, kept in step).
    config: Mutex<LabConfig>,
    /// The NAT's maps, opened once: every change to them is made through this one handle,
    /// one at a time (taken after `config` where both are held).
    maps: Mutex<NatMaps>,
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

    /// The maps, locked.
    fn maps(&self) -> std::sync::MutexGuard<'_, NatMaps> {
        self.maps.lock().expect("not poisoned")
    }

    fn note_error(&self, what: &str, e: impl std::fmt::Display) {
        eprintln!("{what}: {e}");
        self.health.lock().expect("not poisoned").last_error = Some(format!("{what}: {e}"));
    }

    /// Follows the uplink's address and the router's links (blocking: netlink requests in
    /// the router namespace).
    fn follow_router(&self) {
        self.follow_address();
        let synced = crate::nat::ebpf::router_links(&self.router_ns)
            .and_then(|links| crate::nat::ebpf::sync_ports(&mut self.maps(), &links));
        if let Err(e) = synced {
            self.note_error("following the router's links", e);
        }
    }

    /// Follows the uplink's address.
    fn follow_address(&self) {
        // Held throughout: a live change waits, then sees the new address (and a forward
        // added meanwhile is not left on the old one).
        let cfg = self.config.lock().expect("not poisoned");
        // Plain forwarding has no external address to follow.
        let Some(nat) = cfg.nat.as_ref().filter(|n| n.routed_fast_path.is_off()) else {
            return;
        };
        match sweeper::follow_uplink_address(&mut self.maps(), &self.prefix, nat, &self.router_ns) {
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
                return Reply::done(
                    serde_json::to_value(&*self.health.lock().expect("not poisoned"))
                        .expect("health serialises"),
                );
            }
            Request::ForwardAdd { forward } => {
                let mut cfg = self.config.lock().expect("not poisoned");
                forwards::add_live(&mut self.maps(), &self.prefix, &cfg, forward)
                    .map(|next| *cfg = next)
                    .map(|()| serde_json::Value::Null)
                    .map_err(|e| e.to_string())
            }
            Request::ForwardDel { protocol, port } => {
                let mut cfg = self.config.lock().expect("not poisoned");
                forwards::del_live(&mut self.maps(), &self.prefix, &cfg, protocol, port)
                    .map(|(next, to)| {
                        *cfg = next;
                        serde_json::json!({ "to": to })
                    })
                    .map_err(|e| e.to_string())
            }
            Request::ConntrackDelete { filter } => {
                // Under the configuration's lock, as every change: one at a time.
                let _cfg = self.config.lock().expect("not poisoned");
                EntryFilter::try_from(&filter)
                    .and_then(|f| {
                        conntrack::delete(&self.maps(), &self.prefix, &f).map_err(|e| e.to_string())
                    })
                    .map(|gone| serde_json::to_value(gone).expect("a count serialises"))
            }
            Request::TraceSync => {
                // Not a change of the NAT's configuration: not counted as one.
                return match trace_flag::sync(&self.prefix) {
                    Ok(live) => Reply::done(serde_json::json!({ "listening": live })),
                    Err(e) => Reply::refused(e.to_string()),
                };
            }
            Request::ConfigApply { nat } => {
                let mut cfg = self.config.lock().expect("not poisoned");
                reconfig::apply(&mut self.maps(), &self.prefix, &cfg, *nat)
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
                Reply::done(value)
            }
            Err(e) => {
                h.changes_refused += 1;
                Reply::refused(e)
            }
        }
    }
}

/// What the agent hears of the router namespace: every IPv4 address change and every link
/// change (up, down, into or out of a bridge, gone), which it follows.
const ROUTER_GROUPS: u32 = RTMGRP_IPV4_IFADDR | RTMGRP_LINK;
/// `RTNLGRP_IPV4_NETCONF` (forwarding turned on or off) as a group bit.
const RTMGRP_IPV4_NETCONF: u32 = 1 << (24 - 1);
/// Everything that can change where the router forwards a packet: those, and routes,
/// rules, neighbours and forwarding settings. Each moves the next-hop generation on, so the
/// fast path's cached next hops are looked up again.
const NEXT_HOP_GROUPS: u32 =
    ROUTER_GROUPS | RTMGRP_IPV4_ROUTE | RTMGRP_IPV4_RULE | RTMGRP_NEIGH | RTMGRP_IPV4_NETCONF;

/// A netlink socket in the router namespace that hears of the changes of `groups` there.
fn router_events(router_ns: &str, groups: u32) -> Result<AsyncFd<rtnetlink::sys::Socket>, String> {
    let s = netns::run_in(router_ns, || -> std::io::Result<rtnetlink::sys::Socket> {
        let mut s = rtnetlink::sys::Socket::new(NETLINK_ROUTE)?;
        s.bind(&SocketAddr::new(0, groups))?;
        s.set_non_blocking(true)?;
        Ok(s)
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    // Safety: the socket owns its descriptor, which stays open and the same until the
    // AsyncFd (its owner from here on) is dropped.
    unsafe { AsyncFd::register_with_interest(s, tokio::io::Interest::READABLE) }.map_err(|e| e.to_string())
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
    let maps = NatMaps::open(prefix).map_err(|e| fail(e.to_string()))?;
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let shared = Arc::new(Shared {
        prefix: prefix.to_owned(),
        router_ns: router_ns.clone(),
        sweep_ms: AtomicU64::new(nat.ebpf.sweep_interval_ms.max(10)),
        config: Mutex::new(config),
        maps: Mutex::new(maps),
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
        let sock = socket_path(prefix);
        let events =
            router_events(&router_ns, ROUTER_GROUPS).map_err(|e| fail(format!("router events: {e}")))?;
        let hop_events =
            router_events(&router_ns, NEXT_HOP_GROUPS).map_err(|e| fail(format!("router events: {e}")))?;
        let mut sigterm = signal(SignalKind::terminate()).map_err(|e| fail(e.to_string()))?;
        let mut sigint = signal(SignalKind::interrupt()).map_err(|e| fail(e.to_string()))?;

        // The address and the links may have changed while no agent ran.
        {
            let s = shared.clone();
            let _ = tokio::task::spawn_blocking(move || s.follow_router()).await;
        }
        tokio::spawn(follow_events(shared.clone(), events, |s| {
            s.health.lock().expect("not poisoned").router_events += 1;
            s.follow_router();
        }));
        tokio::spawn(follow_events(shared.clone(), hop_events, |s| {
            if let Err(e) = s.maps().renew_next_hops() {
                s.note_error("renewing the fast path's next hops", e);
            }
        }));
        let level = nat.ebpf.log_level;
        // Plain forwarding loads its programs without diagnostics.
        if level != crate::config::LogLevel::Off && nat.routed_fast_path.is_off() {
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
        if std::fs::read_to_string(pid_file(prefix)).is_ok_and(|p| p.trim() == std::process::id().to_string())
        {
            let _ = std::fs::remove_file(pid_file(prefix));
        }
        Ok(())
    })
}

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
    while let Some(text) = bounded_line(&mut read).await {
        let reply = match serde_json::from_str::<Request>(&text) {
            Ok(req) => {
                let s = shared.clone();
                // Map updates and netlink requests block: off the runtime's thread.
                tokio::task::spawn_blocking(move || s.handle(req))
                    .await
                    .unwrap_or_else(|e| Reply::refused(format!("the request failed: {e}")))
            }
            Err(e) => Reply::refused(format!("not a request: {e}")),
        };
        if write.write_all(line(&reply).as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Runs `follow` (off the event loop) after every batch of events `events` hears.
async fn follow_events(shared: Arc<Shared>, events: AsyncFd<rtnetlink::sys::Socket>, follow: fn(&Shared)) {
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
            let s = shared.clone();
            let _ = tokio::task::spawn_blocking(move || follow(&s)).await;
        }
    }
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
            .map(|n| n.dataplane_fast_path());
        let Some(wanted) = wanted else { return };
        let s = shared.clone();
        let held = tokio::task::spawn_blocking(move || {
            if wanted == FastPath::Off {
                return Ok((None, false));
            }
            // The filter check before the maps' lock: other changes need not wait for it.
            let why = crate::nat::ebpf::forward_filter(&s.router_ns)?;
            crate::nat::ebpf::hold_fast_path(&mut s.maps(), why.as_deref(), wanted)
                .map(|changed| (why, changed))
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
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || trace_flag::sync(&prefix)).await {
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
