//! Short TCP connections at the highest rate the machine allows: a minimal HTTP/1.1 server
//! (answers every request with a 2-byte body and closes, as `Connection: close` asks) and a
//! client that keeps many connections in flight per thread with non-blocking connects and
//! epoll, so that the client is not what limits the rate. The server closes first, as a web
//! server does, so TIME_WAIT stays on its side and the client's ports are free at once.
//! wrk (`Connection: close`) can drive the same server, as an independent check.

use std::{
    collections::HashMap,
    io,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use socket2::{Domain, Socket, Type};

use crate::txring::pin_to_cpu;
use netns_user::sys::netns::{self, Background, NetnsError};

pub const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: lan\r\nConnection: close\r\n\r\n";
pub const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

/// A connection that takes longer than this is given up and counted as failed.
const CONN_TIMEOUT: Duration = Duration::from_secs(2);

/// An epoll instance.
struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // Safety: plain epoll_create1; the descriptor is owned at once.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // Safety: a fresh descriptor nothing else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events,
            u64: fd as u64,
        };
        // Safety: ev is a valid epoll_event; fd is a descriptor the caller owns.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms`; returns (fd, events) of the ready descriptors.
    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        // Safety: the buffer holds events.len() entries.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(n as usize)
    }
}

fn read_some(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // Safety: buf is a live, writable buffer of buf.len() bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn write_all_now(fd: RawFd, data: &[u8]) -> io::Result<()> {
    // Safety: data is a live buffer of data.len() bytes. Requests and responses are far
    // smaller than a fresh socket's send buffer, so one write takes all of it.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != data.len() {
        return Err(io::Error::other("short write"));
    }
    Ok(())
}

/// The HTTP server: one thread per CPU, each with its own `SO_REUSEPORT` listener.
pub struct Server {
    threads: Vec<Background<io::Result<u64>>>,
}

impl Server {
    /// Starts serving `port` in namespace `ns`; returns once every listener is bound.
    pub fn start(ns: &str, port: u16, threads: usize) -> Result<Server, NetnsError> {
        let mut server = Server { threads: Vec::new() };
        for k in 0..threads.max(1) {
            server.threads.push(netns::spawn_in(ns, move |stop, ready| {
                serve(port, k, stop, ready)
            })?);
        }
        Ok(server)
    }

    /// Stops the server; returns the requests it answered.
    pub fn stop(self) -> io::Result<u64> {
        let mut answered = 0;
        for t in self.threads {
            answered += t.stop().map_err(io::Error::other)??;
        }
        Ok(answered)
    }
}

fn serve(port: u16, cpu: usize, stop: &AtomicBool, ready: &dyn Fn()) -> io::Result<u64> {
    pin_to_cpu(cpu);
    let l = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    l.set_reuse_address(true)?;
    l.set_reuse_port(true)?;
    l.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
    l.listen(4096)?;
    l.set_nonblocking(true)?;
    let ep = Epoll::new()?;
    let lfd = l.as_raw_fd();
    ep.ctl(libc::EPOLL_CTL_ADD, lfd, libc::EPOLLIN as u32)?;
    ready();
    // Requests received in pieces wait here until complete.
    let mut partial: HashMap<RawFd, (OwnedFd, Vec<u8>)> = HashMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = [0u8; 1024];
    let mut answered = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let n = ep.wait(&mut events, 50)?;
        for ev in &events[..n] {
            let fd = ev.u64 as RawFd;
            if fd == lfd {
                loop {
                    // Safety: accept4 on our listener; the new descriptor is owned at once.
                    let c = unsafe {
                        libc::accept4(
                            lfd,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        )
                    };
                    if c < 0 {
                        break;
                    }
                    // Safety: a fresh descriptor nothing else owns.
                    let owned = unsafe { OwnedFd::from_raw_fd(c) };
                    if ep.ctl(libc::EPOLL_CTL_ADD, c, libc::EPOLLIN as u32).is_ok() {
                        partial.insert(c, (owned, Vec::new()));
                    }
                }
                continue;
            }
            let Some((_, got)) = partial.get_mut(&fd) else {
                continue;
            };
            let done = match read_some(fd, &mut buf) {
                Ok(0) => true,
                Ok(k) => {
                    got.extend_from_slice(&buf[..k]);
                    if got.ends_with(b"\r\n\r\n") {
                        if write_all_now(fd, RESPONSE).is_ok() {
                            answered += 1;
                        }
                        true
                    } else {
                        got.len() > 4096
                    }
                }
                Err(e) => e.kind() != io::ErrorKind::WouldBlock,
            };
            if done {
                // Dropping the descriptor closes it (and removes it from the epoll set).
                partial.remove(&fd);
            }
        }
    }
    Ok(answered)
}

/// What the client did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientRun {
    /// Connections that got the whole response.
    pub completed: u64,
    /// Connections refused, reset, timed out or answered wrongly.
    pub failed: u64,
    pub elapsed: Duration,
}

/// Runs the client in namespace `ns` against `to`: `threads` threads (pinned, one per CPU)
/// with `in_flight` connections each, for `duration`.
pub fn client(
    ns: &str,
    to: SocketAddrV4,
    threads: usize,
    in_flight: usize,
    duration: Duration,
) -> Result<io::Result<ClientRun>, NetnsError> {
    let start = Instant::now();
    let deadline = start + duration;
    let results: Vec<Result<io::Result<ClientRun>, NetnsError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|k| {
                s.spawn(move || {
                    netns::run_in(ns, || {
                        pin_to_cpu(k);
                        client_thread(to, in_flight, deadline)
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(NetnsError::Panicked(ns.to_owned())))
            })
            .collect()
    });
    let mut total = ClientRun::default();
    for r in results {
        match r? {
            Ok(run) => {
                total.completed += run.completed;
                total.failed += run.failed;
            }
            Err(e) => return Ok(Err(e)),
        }
    }
    total.elapsed = start.elapsed();
    Ok(Ok(total))
}

struct Conn {
    /// Open until the connection is done with (dropping it closes the socket).
    _sock: OwnedFd,
    started: Instant,
    sent: bool,
    got: Vec<u8>,
}

fn open(ep: &Epoll, to: SocketAddrV4, conns: &mut HashMap<RawFd, Conn>) -> io::Result<()> {
    let s = Socket::new(Domain::IPV4, Type::STREAM.nonblocking(), None)?;
    match s.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let fd = s.as_raw_fd();
    ep.ctl(libc::EPOLL_CTL_ADD, fd, (libc::EPOLLOUT | libc::EPOLLIN) as u32)?;
    conns.insert(
        fd,
        Conn {
            _sock: s.into(),
            started: Instant::now(),
            sent: false,
            got: Vec::new(),
        },
    );
    Ok(())
}

fn client_thread(to: SocketAddrV4, in_flight: usize, deadline: Instant) -> io::Result<ClientRun> {
    let ep = Epoll::new()?;
    let mut conns: HashMap<RawFd, Conn> = HashMap::new();
    let mut run = ClientRun::default();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = [0u8; 512];
    let mut last_sweep = Instant::now();
    while Instant::now() < deadline {
        while conns.len() < in_flight {
            if let Err(e) = open(&ep, to, &mut conns) {
                // Out of ports or descriptors for a moment: count it and let others finish.
                run.failed += 1;
                if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
                    break;
                }
            }
        }
        let n = ep.wait(&mut events, 10)?;
        for ev in &events[..n] {
            let fd = ev.u64 as RawFd;
            let Some(c) = conns.get_mut(&fd) else {
                continue;
            };
            let mut finished: Option<bool> = None;
            if ev.events & (libc::EPOLLERR as u32) != 0 {
                finished = Some(false);
            } else if !c.sent && ev.events & (libc::EPOLLOUT as u32) != 0 {
                if write_all_now(fd, REQUEST).is_ok() {
                    c.sent = true;
                    let _ = ep.ctl(libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN as u32);
                } else {
                    finished = Some(false);
                }
            }
            if finished.is_none() && c.sent && ev.events & ((libc::EPOLLIN | libc::EPOLLHUP) as u32) != 0 {
                loop {
                    match read_some(fd, &mut buf) {
                        Ok(0) => {
                            finished = Some(c.got == RESPONSE);
                            break;
                        }
                        Ok(k) => c.got.extend_from_slice(&buf[..k]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            finished = Some(false);
                            break;
                        }
                    }
                }
            }
            if let Some(ok) = finished {
                if ok {
                    run.completed += 1;
                } else {
                    run.failed += 1;
                }
                conns.remove(&fd);
            }
        }
        if last_sweep.elapsed() > Duration::from_millis(100) {
            last_sweep = Instant::now();
            let before = conns.len();
            conns.retain(|_, c| c.started.elapsed() < CONN_TIMEOUT);
            run.failed += (before - conns.len()) as u64;
        }
    }
    // Connections still in flight at the deadline are neither counted nor failed.
    drop(conns);
    Ok(run)
}

/// Whether something listens on TCP `port` in namespace `ns` (IPv4 or IPv6 socket), read
/// from the namespace's own /proc/net tables: a readiness check that never connects, so a
/// single-shot server (iperf3) is not disturbed by it.
pub fn listening(ns: &str, port: u16) -> Result<bool, NetnsError> {
    netns::run_in(ns, || {
        ["tcp", "tcp6"].iter().any(|t| {
            std::fs::read_to_string(format!("/proc/thread-self/net/{t}"))
                .map(|s| listens_on(&s, port))
                .unwrap_or(false)
        })
    })
}

/// Whether a /proc/net/tcp{,6} table has a socket listening (state 0A) on `port`.
pub fn listens_on(table: &str, port: u16) -> bool {
    table.lines().skip(1).any(|l| {
        let mut f = l.split_whitespace();
        let local = f.nth(1);
        let state = f.nth(1);
        let lport = local
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        lport == Some(port) && state == Some("0A")
    })
}

/// The `Requests/sec` figure and the error count of wrk's report.
pub fn parse_wrk(out: &str) -> Option<(f64, u64)> {
    let rate = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())?;
    // "Socket errors: connect 0, read 0, write 0, timeout 0" and "Non-2xx ... responses: N".
    let mut errors = 0;
    for l in out.lines() {
        let l = l.trim();
        if let Some(rest) = l.strip_prefix("Socket errors:") {
            errors += rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        } else if l.starts_with("Non-2xx") {
            errors += l
                .split_whitespace()
                .last()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    Some((rate, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_listening_sockets_in_proc_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   1: 0100007F:0050 0300A8C0:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n";
        assert!(listens_on(tcp, 5201));
        assert!(
            !listens_on(tcp, 80),
            "port 80 is an established connection, not a listener"
        );
        assert!(!listens_on(tcp, 5202));
        let tcp6 = "  sl  local_address                         remote_address                        st\n   0: 00000000000000000000000000000000:1451 00000000000000000000000000000000:0000 0A 0\n";
        assert!(listens_on(tcp6, 5201));
    }

    #[test]
    fn reads_wrk_reports() {
        let out = "Running 5s test @ http://192.168.1.3:7100/\n  2 threads and 64 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     3.10ms    1.2ms  20ms   80%\n  78000 requests in 5.00s, 5.1MB read\n  Socket errors: connect 0, read 3, write 0, timeout 2\nRequests/sec:  15600.12\nTransfer/sec:      1.02MB\n";
        assert_eq!(parse_wrk(out), Some((15600.12, 5)));
        assert_eq!(parse_wrk("nothing"), None);
    }

    #[test]
    fn server_and_client_talk_http() {
        // In a namespace of its own (its loopback only): needs root, skipped without.
        if !nix::unistd::geteuid().is_root() {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI runs as root");
            eprintln!("SKIPPED server_and_client_talk_http: needs root for a namespace");
            return;
        }
        let ns = format!("nnu{}-conn", std::process::id());
        netns::create(&ns).unwrap();
        let res = std::panic::catch_unwind(|| {
            netns_user::sys::netlink::in_ns(&ns, |r| async move { r.set_up("lo").await }).unwrap();
            let server = Server::start(&ns, 7100, 1).unwrap();
            let run = client(
                &ns,
                SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7100),
                1,
                8,
                Duration::from_millis(300),
            )
            .unwrap()
            .unwrap();
            let answered = server.stop().unwrap();
            assert!(run.completed > 10, "{run:?}");
            assert_eq!(run.failed, 0, "{run:?}");
            assert!(answered >= run.completed);
        });
        netns::delete(&ns).unwrap();
        res.unwrap();
    }
}
