//! The scenario's acceptance exchanges, played with ordinary sockets from inside the lab's
//! namespaces: ICMP echo, UDP, TCP (payload checked by hash) and HTTP through the port
//! forward. Each side runs on its own thread in its own namespace; every wait is bounded.

use std::{
    io::{self, Read as _, Write as _},
    mem::MaybeUninit,
    net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    time::{Duration, Instant},
};

use netns_common::csum;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::{
    config::L4Proto,
    lab::Lab,
    sys::netns::{self, NetnsError},
};

/// UDP port the probe's echo server listens on in the external namespace.
pub const UDP_PORT: u16 = 7007;
/// TCP port of the probe's hash server in the external namespace.
pub const TCP_PORT: u16 = 7008;
/// Bytes the TCP probe sends.
pub const TCP_PAYLOAD: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{what}: {source}")]
    Io { what: &'static str, source: io::Error },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the server was not ready within {0:?}")]
    ServerNotReady(Duration),
    #[error("wrong answer: {0}")]
    Mismatch(String),
    #[error("bad checksum in {0}")]
    BadChecksum(&'static str),
    #[error("the lab has no {0}")]
    NotInLab(String),
}

type Result<T, E = ProbeError> = std::result::Result<T, E>;

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> ProbeError {
    move |source| ProbeError::Io { what, source }
}

/// What the far end of an exchange saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Seen {
    /// Source address of the request as the receiving namespace saw it.
    pub source: Ipv4Addr,
    /// Source port (or ICMP identifier) as seen there.
    pub port: u16,
}

/// Runs `server` in `server_ns` and, once it says it is ready, `client` in `client_ns`.
/// Returns both results; neither side waits longer than its own deadline.
fn exchange<S, C, RS, RC>(
    server_ns: &str,
    server: S,
    client_ns: &str,
    client: C,
    wait: Duration,
) -> Result<(RS, RC)>
where
    S: FnOnce(mpsc::Sender<()>) -> Result<RS> + Send,
    C: FnOnce() -> Result<RC> + Send,
    RS: Send,
    RC: Send,
{
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::scope(|s| {
        let srv = s.spawn(|| netns::run_in(server_ns, || server(ready_tx)));
        let cli = match ready_rx.recv_timeout(wait) {
            Ok(()) => netns::run_in(client_ns, client)
                .map_err(ProbeError::from)
                .and_then(|r| r),
            Err(_) => Err(ProbeError::ServerNotReady(wait)),
        };
        let srv = srv
            .join()
            .unwrap_or_else(|_| Err(NetnsError::Panicked(server_ns.to_owned())))
            .map_err(ProbeError::from)
            .and_then(|r| r);
        Ok((srv?, cli?))
    })
}

/// A payload that differs from call to call (so a stale answer cannot pass).
pub fn payload(len: usize) -> Vec<u8> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = (now
        ^ CALLS
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15))
        | 1;
    (0..len)
        .map(|_| {
            // xorshift64: enough to make payloads distinct; not for secrets.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn recv_into(sock: &Socket, buf: &mut [u8]) -> io::Result<usize> {
    // Safety: MaybeUninit<u8> has the layout of u8, and recv only writes into the buffer.
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
    sock.recv(uninit)
}

/// An ICMP echo message with a valid checksum.
fn echo_message(kind: u8, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut msg = vec![kind, 0, 0, 0];
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&seq.to_be_bytes());
    msg.extend_from_slice(data);
    let c = csum::checksum(&msg);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    msg
}

/// An ICMP echo request or reply read off a raw socket (IP header included).
struct Echo<'a> {
    source: Ipv4Addr,
    kind: u8,
    id: u16,
    data: &'a [u8],
}

fn parse_echo(pkt: &[u8]) -> Result<Option<Echo<'_>>> {
    let ihl = usize::from(pkt.first().copied().unwrap_or(0) & 0x0f) * 4;
    if ihl < 20 || pkt.len() < ihl + 8 {
        return Ok(None);
    }
    let icmp = &pkt[ihl..];
    if icmp[0] != 0 && icmp[0] != 8 {
        return Ok(None);
    }
    if !csum::verifies(&pkt[..ihl]) {
        return Err(ProbeError::BadChecksum("IPv4 header"));
    }
    if !csum::verifies(icmp) {
        return Err(ProbeError::BadChecksum("ICMP message"));
    }
    Ok(Some(Echo {
        source: Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]),
        kind: icmp[0],
        id: u16::from_be_bytes([icmp[4], icmp[5]]),
        data: &icmp[8..],
    }))
}

fn raw_icmp() -> Result<Socket> {
    let s =
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).map_err(io_err("raw ICMP socket"))?;
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(io_err("socket timeout"))?;
    Ok(s)
}

/// Pings `to` from `client_ns`; `observer_ns` (where `to` lives) records the request's
/// source as it arrives. Checks the reply's payload and every checksum on the way.
pub fn icmp_echo(client_ns: &str, observer_ns: &str, to: Ipv4Addr, wait: Duration) -> Result<Seen> {
    let data = payload(56);
    let id = u16::from_be_bytes([data[0], data[1]]);
    let (seen, ()) = exchange(
        observer_ns,
        |ready| {
            let sock = raw_icmp()?;
            let _ = ready.send(());
            let deadline = Instant::now() + wait;
            let mut buf = [0u8; 2048];
            while Instant::now() < deadline {
                let Ok(n) = recv_into(&sock, &mut buf) else {
                    continue;
                };
                if let Some(e) = parse_echo(&buf[..n])?
                    && e.kind == 8
                    && e.data == data.as_slice()
                {
                    return Ok(Seen {
                        source: e.source,
                        port: e.id,
                    });
                }
            }
            Err(ProbeError::Timeout(wait))
        },
        client_ns,
        || {
            let sock = raw_icmp()?;
            let dst = SockAddr::from(SocketAddrV4::new(to, 0));
            sock.send_to(&echo_message(8, id, 1, &data), &dst)
                .map_err(io_err("sending echo request"))?;
            let deadline = Instant::now() + wait;
            let mut buf = [0u8; 2048];
            while Instant::now() < deadline {
                let Ok(n) = recv_into(&sock, &mut buf) else {
                    continue;
                };
                if let Some(e) = parse_echo(&buf[..n])?
                    && e.kind == 0
                    && e.id == id
                {
                    if e.data != data.as_slice() {
                        return Err(ProbeError::Mismatch("echo reply payload differs".into()));
                    }
                    return Ok(());
                }
            }
            Err(ProbeError::Timeout(wait))
        },
        wait,
    )?;
    Ok(seen)
}

/// Sends a datagram from `client_ns` to `to`, where an echo server in `server_ns` answers.
pub fn udp_echo(client_ns: &str, server_ns: &str, to: SocketAddrV4, wait: Duration) -> Result<Seen> {
    let data = payload(512);
    let (seen, ()) = exchange(
        server_ns,
        |ready| {
            let sock =
                UdpSocket::bind((Ipv4Addr::UNSPECIFIED, to.port())).map_err(io_err("binding UDP server"))?;
            sock.set_read_timeout(Some(wait))
                .map_err(io_err("socket timeout"))?;
            let _ = ready.send(());
            let mut buf = [0u8; 2048];
            let (n, peer) = sock.recv_from(&mut buf).map_err(|_| ProbeError::Timeout(wait))?;
            sock.send_to(&buf[..n], peer).map_err(io_err("UDP reply"))?;
            match peer {
                SocketAddr::V4(p) => Ok(Seen {
                    source: *p.ip(),
                    port: p.port(),
                }),
                SocketAddr::V6(p) => Err(ProbeError::Mismatch(format!("IPv6 peer {p}"))),
            }
        },
        client_ns,
        || {
            let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(io_err("binding UDP client"))?;
            sock.set_read_timeout(Some(wait))
                .map_err(io_err("socket timeout"))?;
            sock.connect(to).map_err(io_err("UDP connect"))?;
            sock.send(&data).map_err(io_err("UDP send"))?;
            let mut buf = [0u8; 2048];
            let n = sock.recv(&mut buf).map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ProbeError::Timeout(wait),
                _ => ProbeError::Io {
                    what: "UDP receive",
                    source: e,
                },
            })?;
            if buf[..n] != data[..] {
                return Err(ProbeError::Mismatch(format!("UDP echo of {n} bytes differs")));
            }
            Ok(())
        },
        wait,
    )?;
    Ok(seen)
}

fn accept_until(listener: &TcpListener, wait: Duration) -> Result<(TcpStream, SocketAddr)> {
    listener.set_nonblocking(true).map_err(io_err("listener"))?;
    let deadline = Instant::now() + wait;
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                stream.set_nonblocking(false).map_err(io_err("stream"))?;
                stream.set_read_timeout(Some(wait)).map_err(io_err("stream"))?;
                stream.set_write_timeout(Some(wait)).map_err(io_err("stream"))?;
                return Ok((stream, peer));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(ProbeError::Timeout(wait));
            }
            Err(e) => return Err(io_err("accept")(e)),
        }
    }
}

fn seen_of(peer: SocketAddr) -> Result<Seen> {
    match peer {
        SocketAddr::V4(p) => Ok(Seen {
            source: *p.ip(),
            port: p.port(),
        }),
        SocketAddr::V6(p) => Err(ProbeError::Mismatch(format!("IPv6 peer {p}"))),
    }
}

fn connect(to: SocketAddrV4, wait: Duration) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&to.into(), wait).map_err(|e| match e.kind() {
        io::ErrorKind::TimedOut => ProbeError::Timeout(wait),
        _ => ProbeError::Io {
            what: "TCP connect",
            source: e,
        },
    })?;
    stream.set_read_timeout(Some(wait)).map_err(io_err("stream"))?;
    stream.set_write_timeout(Some(wait)).map_err(io_err("stream"))?;
    Ok(stream)
}

/// Sends [`TCP_PAYLOAD`] bytes from `client_ns` to `to`; the server in `server_ns` answers
/// with their SHA-256, which must match the client's own.
pub fn tcp_hash(client_ns: &str, server_ns: &str, to: SocketAddrV4, wait: Duration) -> Result<Seen> {
    let data = payload(TCP_PAYLOAD);
    let (seen, ()) = exchange(
        server_ns,
        |ready| {
            let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, to.port()))
                .map_err(io_err("binding TCP server"))?;
            let _ = ready.send(());
            let (mut stream, peer) = accept_until(&listener, wait)?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = stream.read(&mut buf).map_err(io_err("TCP server read"))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            stream
                .write_all(&hasher.finalize())
                .map_err(io_err("TCP server write"))?;
            seen_of(peer)
        },
        client_ns,
        || {
            let mut stream = connect(to, wait)?;
            stream.write_all(&data).map_err(io_err("TCP client write"))?;
            stream.shutdown(Shutdown::Write).map_err(io_err("TCP shutdown"))?;
            let mut digest = [0u8; 32];
            stream
                .read_exact(&mut digest)
                .map_err(io_err("TCP client read"))?;
            if digest[..] != Sha256::digest(&data)[..] {
                return Err(ProbeError::Mismatch(
                    "the server's SHA-256 of the payload differs".into(),
                ));
            }
            Ok(())
        },
        wait,
    )?;
    Ok(seen)
}

/// An HTTP GET from `client_ns` to `to`; a one-shot web server in `server_ns` (listening on
/// `listen_port`) answers with its own name, which must come back.
pub fn http_get(
    client_ns: &str,
    server_ns: &str,
    listen_port: u16,
    to: SocketAddrV4,
    wait: Duration,
) -> Result<Seen> {
    let body = format!("served by {server_ns}\n");
    let (seen, ()) = exchange(
        server_ns,
        |ready| {
            let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, listen_port))
                .map_err(io_err("binding HTTP server"))?;
            let _ = ready.send(());
            let (mut stream, peer) = accept_until(&listener, wait)?;
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).map_err(io_err("HTTP server read"))?;
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            let resp = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            stream
                .write_all(resp.as_bytes())
                .map_err(io_err("HTTP server write"))?;
            seen_of(peer)
        },
        client_ns,
        || {
            let mut stream = connect(to, wait)?;
            write!(stream, "GET / HTTP/1.0\r\nHost: {to}\r\n\r\n").map_err(io_err("HTTP client write"))?;
            let mut resp = String::new();
            stream
                .read_to_string(&mut resp)
                .map_err(io_err("HTTP client read"))?;
            if !resp.starts_with("HTTP/1.0 200") || !resp.ends_with(&body) {
                return Err(ProbeError::Mismatch(format!("unexpected HTTP response {resp:?}")));
            }
            Ok(())
        },
        wait,
    )?;
    Ok(seen)
}

/// One acceptance exchange and its verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    /// Whether the exchange should succeed with this lab's NAT.
    pub expect_ok: bool,
    pub ok: bool,
    /// What the far end saw, when the exchange went through.
    pub seen: Option<Seen>,
    /// The source address the far end should see.
    pub expect_source: Option<Ipv4Addr>,
    /// `ok == expect_ok` and, if it went through, the expected source.
    pub passed: bool,
    pub detail: String,
}

/// Who plays which part of the scenario in a lab, found from its addresses.
#[derive(Debug, Clone)]
pub struct Roles {
    /// Namespaces with an address in an internal prefix (red, blue), with that address.
    pub internal: Vec<(String, Ipv4Addr)>,
    /// A namespace beside the router on the uplink's network (lan), and its address.
    pub external: (String, Ipv4Addr),
    /// The router's uplink address (what SNAT translates to).
    pub uplink: Ipv4Addr,
    /// Port forwards: (protocol, port on the uplink, namespace of the target, target).
    pub forwards: Vec<(L4Proto, u16, String, SocketAddrV4)>,
}

impl Roles {
    pub fn of(lab: &Lab) -> Result<Roles> {
        let cfg = &lab.config;
        let nat = cfg
            .nat
            .as_ref()
            .ok_or_else(|| ProbeError::NotInLab("[nat] section".into()))?;
        let uplink = cfg
            .uplink_address()
            .ok_or_else(|| ProbeError::NotInLab("uplink address".into()))?;
        let uplink_net = cfg
            .interfaces()
            .into_iter()
            .find(|i| i.namespace == nat.router && i.name == nat.uplink)
            .and_then(|i| i.addresses.iter().find_map(|a| a.0.v4()))
            .ok_or_else(|| ProbeError::NotInLab("uplink".into()))?;
        let owner = |ip: Ipv4Addr| {
            cfg.interfaces()
                .into_iter()
                .find(|i| {
                    i.namespace != nat.router
                        && i.addresses.iter().any(|a| a.0.v4().is_some_and(|a| a.addr == ip))
                })
                .map(|i| lab.ns(i.namespace))
        };
        let mut internal = Vec::new();
        let mut external = None;
        for i in cfg.interfaces() {
            if i.namespace == nat.router {
                continue;
            }
            // The exchanges are IPv4's.
            for a in i.addresses.iter().filter_map(|a| a.0.v4()) {
                if nat.internal.iter().any(|n| n.0.contains(a.addr)) {
                    internal.push((lab.ns(i.namespace), a.addr));
                } else if uplink_net.contains(a.addr) && external.is_none() {
                    external = Some((lab.ns(i.namespace), a.addr));
                }
            }
        }
        let forwards = nat
            .forwards
            .iter()
            .filter_map(|f| owner(*f.to.ip()).map(|ns| (f.protocol, f.port, ns, f.to)))
            .collect();
        Ok(Roles {
            internal,
            external: external
                .ok_or_else(|| ProbeError::NotInLab("namespace on the uplink's network".into()))?,
            uplink,
            forwards,
        })
    }
}

/// Plays the scenario's acceptance exchanges in `lab`. With a NAT, every exchange must go
/// through and the far end must see the uplink's address; with `--nat none` the outbound
/// exchanges and the port forward must fail.
pub fn check(lab: &Lab, wait: Duration) -> Result<Vec<Check>> {
    if lab.config.attached {
        return Err(ProbeError::NotInLab(
            "hosts (an attached NAT's namespaces are not netns-nat's to know)".into(),
        ));
    }
    let roles = Roles::of(lab)?;
    Ok(play(&roles, lab.state.nat != crate::nat::NatKind::None, wait))
}

/// Plays the acceptance exchanges between the namespaces `roles` names (with a NAT on, or
/// not): for labs, and for topologies built by other tools.
pub fn play(roles: &Roles, nat_on: bool, wait: Duration) -> Vec<Check> {
    let (lan_ns, lan_ip) = roles.external.clone();
    let mut out = Vec::new();
    let mut record = |name: String, expect_source: Option<Ipv4Addr>, res: Result<Seen>| {
        let (ok, seen, detail) = match res {
            Ok(s) => (true, Some(s), format!("seen from {}:{}", s.source, s.port)),
            Err(e) => (false, None, e.to_string()),
        };
        let passed = ok == nat_on && seen.is_none_or(|s| expect_source.is_none_or(|e| s.source == e));
        out.push(Check {
            name,
            expect_ok: nat_on,
            ok,
            seen,
            expect_source: expect_source.filter(|_| nat_on),
            passed,
            detail,
        });
    };
    for (ns, _) in &roles.internal {
        record(
            format!("icmp echo {ns} -> {lan_ip}"),
            Some(roles.uplink),
            icmp_echo(ns, &lan_ns, lan_ip, wait),
        );
    }
    if let Some((ns, _)) = roles.internal.first() {
        record(
            format!("udp {ns} -> {lan_ip}:{UDP_PORT}"),
            Some(roles.uplink),
            udp_echo(ns, &lan_ns, SocketAddrV4::new(lan_ip, UDP_PORT), wait),
        );
        record(
            format!(
                "tcp {ns} -> {lan_ip}:{TCP_PORT} ({} KiB, sha256)",
                TCP_PAYLOAD / 1024
            ),
            Some(roles.uplink),
            tcp_hash(ns, &lan_ns, SocketAddrV4::new(lan_ip, TCP_PORT), wait),
        );
    }
    for (proto, port, target_ns, target) in &roles.forwards {
        if *proto != L4Proto::Tcp {
            continue;
        }
        let to = SocketAddrV4::new(roles.uplink, *port);
        record(
            format!("http {lan_ns} -> {to} (forwarded to {target_ns} {target})"),
            Some(lan_ip),
            http_get(&lan_ns, target_ns, target.port(), to, wait),
        );
    }
    out
}
