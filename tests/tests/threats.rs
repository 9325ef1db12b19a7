//! A NAT on a hostile network (issue 17): each threat a scenario in a live lab, attacked from
//! lan (outside) or from an internal host with real sockets and raw frames, and checked by
//! what arrives where, what the tables hold and the counters. Every frame goes to the lab's
//! own router; every loop is bounded.
//!
//! - Ways in: direct reach of internal hosts, spoofed internal sources, protocols without
//!   ports.
//! - Ways to fill it: floods through a forward (bare ACKs, SYNs from random sources, one
//!   source's burst) while legitimate flows go on.
//! - Ways to poison it: spoofed RSTs and FINs, an address change, the router's own sockets.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use netns_common::nat::{
    FLOW_CONFIRMED, ORIGIN_INBOUND, SIDE_EXTERNAL, TCP_ACK as ACK, TCP_FIN as FIN, TCP_RST as RST,
    TCP_SYN as SYN, TcpState, addr_to_wire,
};
use netns_testkit::packet::{self, Ipv4, L4, Mac, parse_frame};
use netns_tests::{
    LabGuard, UdpEcho, counter_moved as moved, in_ns, nat_counters, privileged, raw_tables, record_summary,
    sh_in, tcp_echo_server, wait_for,
    wire::{Wire, ipv4_matching, mac_of},
};
use netns_user::{
    config::{FastPath, Inbound, LabConfig, Unsupported},
    nat::{NatKind, ebpf as nat_ebpf},
    probe,
};

const EXT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 3);
const RED: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 1);
const BLUE: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 2);
const WAIT: Duration = Duration::from_secs(2);
const SETTLE: Duration = Duration::from_millis(300);

/// A lab of the reference scenario with the fast path in `mode` and `edit` applied.
fn lab(tag: &str, mode: FastPath, edit: impl FnOnce(&mut LabConfig)) -> LabGuard {
    let mut cfg = LabConfig::reference();
    cfg.nat.as_mut().unwrap().ebpf.fast_path = mode;
    edit(&mut cfg);
    LabGuard::up_with(&cfg, &format!("{tag}{}", &mode.name()[..1]), NatKind::Ebpf)
}

/// A UDP socket in `ns` bound to `port` (0: any), with a short receive timeout.
fn udp_in(ns: &str, port: u16) -> UdpSocket {
    let s = in_ns(ns, || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind")
    });
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Whether `s` receives anything within `wait`.
fn got_anything(s: &UdpSocket, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 2048];
    s.recv_from(&mut b).is_ok()
}

/// Sends `data` to `to` and waits for the echo; the endpoint it came from.
fn echo(s: &UdpSocket, to: SocketAddrV4, data: &[u8]) -> SocketAddrV4 {
    s.send_to(data, to).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = s.recv_from(&mut buf).expect("an echo");
    assert_eq!(&buf[..n], data);
    match from {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("echo from {other}"),
    }
}

/// The lab's wire on lan's side and the MACs frames to the router need.
struct Outside {
    wire: Wire,
    lan_mac: Mac,
    uplink_mac: Mac,
}

impl Outside {
    fn of(g: &LabGuard) -> Outside {
        let lan = g.lab.ns("lan");
        Outside {
            wire: Wire::open(&lan, "lan0"),
            lan_mac: mac_of(&lan, "lan0"),
            uplink_mac: mac_of(&g.lab.ns("host"), "uplink"),
        }
    }

    /// Puts an IPv4 packet on the wire to the router, as lan would (any source).
    fn send(&self, ip: &Ipv4, l4: &L4) {
        let f = packet::frame(self.uplink_mac, self.lan_mac, ip, l4);
        self.wire.send(&f).expect("frame sent");
    }
}

fn tcp_seg(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> L4<'static> {
    L4::tcp(sport, dport, flags, (seq, ack), 8192, &[])
}

/// Item 1: a host on the uplink's network that routes the internal prefix via the router
/// reaches no internal host (dropped, counted); with `inbound = "route"` it does.
fn direct_reach_from_outside_is_dropped(mode: FastPath) {
    if !privileged("direct_reach") {
        return;
    }
    let g = lab("dr", mode, |_| {});
    let (lan, red) = (g.lab.ns("lan"), g.lab.ns("red"));
    sh_in(
        &lan,
        "ip",
        &["route", "add", "192.168.15.0/24", "via", "192.168.1.2"],
    );
    let red_sock = udp_in(&red, 7300);
    let red_wire = Wire::open(&red, "veth-red");
    let before = nat_counters(g.prefix());
    let intruder = udp_in(&lan, 0);
    for i in 0..5u8 {
        intruder.send_to(&[i; 16], SocketAddrV4::new(RED, 7300)).unwrap();
    }
    // A connection attempt to blue: never answered.
    let tried = in_ns(&lan, || {
        TcpStream::connect_timeout(&SocketAddrV4::new(BLUE, 22).into(), Duration::from_millis(500))
    });
    assert!(tried.is_err(), "lan reached blue directly");
    assert!(
        !got_anything(&red_sock, SETTLE),
        "a datagram from outside reached red"
    );
    let from_lan = ipv4_matching(&red_wire.received(Duration::ZERO), |ip| ip.header.src == LAN);
    assert_eq!(from_lan, 0, "no packet of lan's reaches red's wire");
    let after = nat_counters(g.prefix());
    // Five datagrams and the connection's SYN with its retransmits.
    assert!(moved(&before, &after, "drop_inbound") >= 6, "{after:?}");
    // Nothing was made for the intruder.
    let (flows, _) = raw_tables(g.prefix()).unwrap();
    assert!(
        flows.iter().all(|(k, _)| k.rem_addr != addr_to_wire(LAN)),
        "a flow for the intruder: {flows:?}"
    );
    // The NAT works on: red reaches lan.
    let echo_srv = UdpEcho::start(&lan, &[7301]);
    let s = udp_in(&red, 0);
    assert_eq!(*echo(&s, SocketAddrV4::new(LAN, 7301), b"out").ip(), LAN);
    assert_eq!(*echo_srv.seen()[0].1.ip(), EXT);
}
netns_tests::modes!(direct_reach_from_outside_is_dropped);

#[test]
fn inbound_route_keeps_plain_routing() {
    if !privileged("inbound_route") {
        return;
    }
    let g = lab("ir", FastPath::Tc, |c| {
        c.nat.as_mut().unwrap().ebpf.inbound = Inbound::Route
    });
    let (lan, red) = (g.lab.ns("lan"), g.lab.ns("red"));
    sh_in(
        &lan,
        "ip",
        &["route", "add", "192.168.15.0/24", "via", "192.168.1.2"],
    );
    let red_sock = udp_in(&red, 7300);
    let before = nat_counters(g.prefix());
    udp_in(&lan, 0)
        .send_to(b"routed", SocketAddrV4::new(RED, 7300))
        .unwrap();
    let mut b = [0u8; 64];
    let (n, from) = red_sock.recv_from(&mut b).expect("routed to red");
    assert_eq!((&b[..n], from.ip()), (&b"routed"[..], std::net::IpAddr::V4(LAN)));
    assert_eq!(moved(&before, &nat_counters(g.prefix()), "drop_inbound"), 0);
}

/// Item 2: frames from outside with an internal source, or the external address as
/// source, are dropped on the uplink and make no mapping or flow.
fn spoofed_sources_make_no_state(mode: FastPath) {
    if !privileged("spoofed_sources") {
        return;
    }
    let g = lab("ss", mode, |_| {});
    let out = Outside::of(&g);
    let before = nat_counters(g.prefix());
    let far = Ipv4Addr::new(192, 168, 1, 99);
    // An internal source to an outside address: routed back out, it would make red a mapping.
    for i in 0..4u16 {
        out.send(&Ipv4::new(RED, far), &L4::udp(41000 + i, 53, b"spoof"));
    }
    // An internal source to the external address; the external address as source.
    out.send(&Ipv4::new(RED, EXT), &L4::udp(41000, 41000, b"spoof"));
    out.send(&Ipv4::new(EXT, EXT), &L4::udp(41000, 41000, b"spoof"));
    out.send(&Ipv4::new(EXT, far), &tcp_seg(41000, 80, SYN, 1, 0));
    std::thread::sleep(SETTLE);
    let after = nat_counters(g.prefix());
    assert_eq!(moved(&before, &after, "drop_spoofed"), 7, "{after:?}");
    assert_eq!(moved(&before, &after, "new_mappings"), 0);
    assert_eq!(moved(&before, &after, "new_flows"), 0);
    let (flows, bindings) = raw_tables(g.prefix()).unwrap();
    assert!(flows.is_empty(), "{flows:?}");
    assert!(bindings.iter().all(|(_, b)| b.is_static()), "{bindings:?}");
    let leaked = ipv4_matching(&out.wire.received(Duration::ZERO), |ip| {
        ip.header.src == RED || ip.header.dst == far
    });
    assert_eq!(leaked, 0, "a spoofed packet left again");
}
netns_tests::modes!(spoofed_sources_make_no_state);

/// A raw IPv4 socket of protocol `proto` in `ns` (the kernel builds the IPv4 header).
fn raw_socket(ns: &str, proto: i32) -> OwnedFd {
    in_ns(ns, move || {
        // Safety: socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // Safety: a descriptor just made, and a timeval of the size given.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            OwnedFd::from_raw_fd(fd)
        }
    })
}

fn raw_send(fd: &OwnedFd, to: Ipv4Addr, data: &[u8]) {
    // Safety: all-zero is a valid sockaddr_in.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as u16;
    sa.sin_addr.s_addr = u32::from(to).to_be();
    // Safety: the buffer, the address and their sizes.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    assert_eq!(
        n,
        data.len() as isize,
        "raw send: {}",
        std::io::Error::last_os_error()
    );
}

/// The next packet a raw socket receives: (IPv4 packet bytes), or None after its timeout.
fn raw_recv(fd: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    // Safety: the buffer and its size.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    (n > 0).then(|| buf[..n as usize].to_vec())
}

const PROTO_GRE: u8 = 47;

/// Item 3: a protocol without ports (GRE) leaves with the external address and its replies
/// come back (address-only translation, one internal host per remote at a time); with
/// `unsupported = "drop"` it does not leave; an ICMP error from inside about nothing mapped,
/// and ICMP queries other than echo, never leave.
#[test]
fn protocols_without_ports_never_leave_with_an_internal_address() {
    if !privileged("other_protocols") {
        return;
    }
    let g = lab("op", FastPath::Tc, |_| {});
    let (lan, red, blue) = (g.lab.ns("lan"), g.lab.ns("red"), g.lab.ns("blue"));
    let out = Outside::of(&g);
    let red_gre = raw_socket(&red, i32::from(PROTO_GRE));
    let lan_gre = raw_socket(&lan, i32::from(PROTO_GRE));
    let before = nat_counters(g.prefix());
    raw_send(&red_gre, LAN, b"gre from red");
    let got = raw_recv(&lan_gre).expect("lan gets red's GRE");
    let ip = packet::parse_ipv4(&got).unwrap();
    assert_eq!((ip.header.src, ip.header.dst, ip.header_ok), (EXT, LAN, true));
    assert_eq!(&ip.data[..], b"gre from red");
    // The reply, to the external address, reaches red.
    raw_send(&lan_gre, EXT, b"gre back");
    let back = loop {
        let p = raw_recv(&red_gre).expect("red gets lan's GRE");
        let ip = packet::parse_ipv4(&p).unwrap();
        if ip.header.src == LAN {
            break ip;
        }
    };
    assert_eq!(
        (back.header.dst, back.header_ok, &back.data[..]),
        (RED, true, &b"gre back"[..])
    );
    // Blue, while red holds GRE with lan: refused (as MASQUERADE's clash).
    let blue_gre = raw_socket(&blue, i32::from(PROTO_GRE));
    out.wire.received(Duration::ZERO);
    raw_send(&blue_gre, LAN, b"gre from blue");
    std::thread::sleep(SETTLE);
    let after = nat_counters(g.prefix());
    assert_eq!(moved(&before, &after, "out_other"), 1);
    assert_eq!(moved(&before, &after, "in_other"), 1);
    assert_eq!(moved(&before, &after, "drop_no_port"), 1);
    // Nothing ever left with an internal source.
    let internal = ipv4_matching(&out.wire.received(Duration::ZERO), |ip| {
        ip.header.src.octets()[..3] == [192, 168, 15]
    });
    assert_eq!(internal, 0);

    // An ICMP error from red about a datagram nobody mapped (a port unreachable for lan's
    // 5555 -> red 9999), and an ICMP timestamp request: neither leaves.
    let red_icmp = raw_socket(&red, libc::IPPROTO_ICMP);
    let quoted = packet::ipv4_packet(&Ipv4::new(LAN, RED), &L4::udp(5555, 9999, b"q"));
    let err = packet::l4_bytes(
        RED,
        LAN,
        &L4::Icmp {
            typ: 3,
            code: 3,
            rest: [0; 4],
            body: &quoted,
        },
    );
    let ts = packet::l4_bytes(
        RED,
        LAN,
        &L4::Icmp {
            typ: 13,
            code: 0,
            rest: [0, 1, 0, 1],
            body: &[0; 12],
        },
    );
    let before = nat_counters(g.prefix());
    raw_send(&red_icmp, LAN, &err);
    raw_send(&red_icmp, LAN, &ts);
    std::thread::sleep(SETTLE);
    let after = nat_counters(g.prefix());
    assert_eq!(moved(&before, &after, "drop_error_unmapped"), 1);
    assert_eq!(moved(&before, &after, "drop_unsupported"), 1);
    let icmp_out = ipv4_matching(&out.wire.received(Duration::ZERO), |ip| ip.header.proto == 1);
    assert_eq!(icmp_out, 0, "an ICMP packet left");
}

#[test]
fn unsupported_drop_keeps_protocols_without_ports_inside() {
    if !privileged("unsupported_drop") {
        return;
    }
    let g = lab("ud", FastPath::Tc, |c| {
        c.nat.as_mut().unwrap().ebpf.unsupported = Unsupported::Drop
    });
    let out = Outside::of(&g);
    let red_gre = raw_socket(&g.lab.ns("red"), i32::from(PROTO_GRE));
    let before = nat_counters(g.prefix());
    raw_send(&red_gre, LAN, b"gre");
    std::thread::sleep(SETTLE);
    assert_eq!(moved(&before, &nat_counters(g.prefix()), "drop_unsupported"), 1);
    let gre = ipv4_matching(&out.wire.received(Duration::ZERO), |ip| {
        ip.header.proto == PROTO_GRE
    });
    assert_eq!(gre, 0);
}

/// Item 4: floods through a TCP forward (bare ACKs, then SYNs from thousands of spoofed
/// sources filling a small flow table, then one source's burst) while red opens outbound
/// flows and lan connects through the forward: every legitimate exchange succeeds, the
/// flood's flows are unconfirmed on the short timeout and are evicted to make room.
fn a_flood_through_a_forward_cannot_fill_the_table(mode: FastPath) {
    if !privileged("forward_flood") {
        return;
    }
    let g = lab("ff", mode, |c| {
        let e = &mut c.nat.as_mut().unwrap().ebpf;
        e.flows = 512;
        e.new_per_remote = 100;
    });
    let (lan, red, blue) = (g.lab.ns("lan"), g.lab.ns("red"), g.lab.ns("blue"));
    let _web = tcp_echo_server(&blue, 80);
    let echo_srv = UdpEcho::start(&lan, &[7600]);
    let out = Outside::of(&g);
    let spoofed = |i: u32| Ipv4Addr::from(0x0a40_0000 + i);

    // Bare ACKs open nothing. Bursts are paced like the flood below, so that the two modes,
    // run side by side, never overrun a veth's queue (a loss that is not the NAT's).
    let before = nat_counters(g.prefix());
    for i in 0..300 {
        out.send(&Ipv4::new(spoofed(i), EXT), &tcp_seg(20000, 80, ACK, i, 1));
        pace(i);
    }
    counter_reaches(&g, &before, "drop_not_syn", 300);
    let after = nat_counters(g.prefix());
    assert_eq!(moved(&before, &after, "drop_not_syn"), 300);
    assert_eq!(moved(&before, &after, "new_flows"), 0);

    // SYNs from 3,000 sources (six times the table) in the background, bounded.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let (stop, g_wire) = (stop.clone(), Outside::of(&g));
        std::thread::spawn(move || {
            let mut sent = 0u32;
            while sent < 3000 && !stop.load(Ordering::Relaxed) {
                g_wire.send(
                    &Ipv4::new(spoofed(1000 + sent), EXT),
                    &tcp_seg(20001, 80, SYN, 7, 0),
                );
                sent += 1;
                if sent.is_multiple_of(100) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            sent
        })
    };
    // Meanwhile: new outbound flows from red, and connections through the forward.
    // A datagram lost is sent again once, as a client would (TCP's connect does the same):
    // what this claims is that the flood leaves room, not that a loaded machine loses nothing.
    let mut outbound_ok = 0;
    let mut forward_ok = 0;
    let mut resent = Vec::new();
    for i in 0..20u16 {
        let s = udp_in(&red, 0);
        let to = SocketAddrV4::new(LAN, 7600);
        let mut ok = echo_once(&s, to, &i.to_be_bytes());
        if !ok {
            resent.push(i);
            ok = echo_once(&s, to, &i.to_be_bytes());
        }
        if ok {
            outbound_ok += 1;
        }
        let c = in_ns(&lan, || {
            TcpStream::connect_timeout(&SocketAddrV4::new(EXT, 80).into(), WAIT)
        });
        if let Ok(mut c) = c {
            c.set_read_timeout(Some(WAIT)).unwrap();
            let mut back = [0u8; 2];
            if c.write_all(&i.to_be_bytes()).is_ok()
                && c.read_exact(&mut back).is_ok()
                && back == i.to_be_bytes()
            {
                forward_ok += 1;
            }
        }
    }
    let flooded = flood.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let after = nat_counters(g.prefix());
    let drops: Vec<_> = after
        .iter()
        .filter(|(k, v)| k.starts_with("drop") && **v > before[k.as_str()])
        .map(|(k, v)| (k, v - before[k.as_str()]))
        .collect();
    assert_eq!(
        (outbound_ok, forward_ok),
        (20, 20),
        "legitimate traffic during the flood (datagrams resent: {resent:?}; the echo server \
         saw {}; drops {drops:?})",
        echo_srv.seen().len()
    );
    if !resent.is_empty() {
        eprintln!("datagrams resent: {resent:?}; drops {drops:?}");
    }
    assert!(echo_srv.seen().len() >= 20);
    assert!(flooded >= 3000);
    let evicted = moved(&before, &after, "evicted_unconfirmed");
    assert!(evicted > 1000, "{after:?}");
    // Evictions race the flood on two CPUs: a spoofed SYN may now and then find no
    // candidate left to evict (never a legitimate flow: those all went through, above).
    let refused = moved(&before, &after, "drop_map_full");
    assert!(refused <= u64::from(flooded) / 100, "{after:?}");
    // The flood's flows: unconfirmed, on the unconfirmed timeout.
    let cfg = netns_user::bpf::NatMaps::open(g.prefix())
        .and_then(|m| m.config())
        .unwrap();
    let now = nat_ebpf::monotonic_ns();
    let (flows, _) = raw_tables(g.prefix()).unwrap();
    let flood_flows: Vec<_> = flows
        .iter()
        .filter(|(k, f)| f.origin == ORIGIN_INBOUND && k.rem_addr.to_host() >> 16 == 0x0a40)
        .collect();
    assert!(
        flood_flows.len() > 400,
        "the flood's flows fill the table: {}",
        flood_flows.len()
    );
    for (k, f) in &flood_flows {
        assert_eq!(f.flags & FLOW_CONFIRMED, 0, "{k:?}");
        assert!(f.expires_ns <= now + cfg.timeouts.unconfirmed_ns, "{k:?} {f:?}");
    }

    // One source's burst: past its bound of new flows per second, refused.
    let before = nat_counters(g.prefix());
    let one = Ipv4Addr::new(10, 99, 0, 1);
    for p in 0..300u16 {
        out.send(&Ipv4::new(one, EXT), &tcp_seg(30000 + p, 80, SYN, 7, 0));
        pace(u32::from(p));
    }
    counter_reaches(&g, &before, "drop_remote_limit", 190);
    let after = nat_counters(g.prefix());
    record_summary(
        &format!("threats-flood-{}", mode.name()),
        &format!(
            "forward flood ({} fast path): 300 bare ACKs refused, {flooded} spoofed SYNs into a 512-flow table \
             ({} unconfirmed flows evicted, {} spoofed SYNs refused with no candidate left), 20/20 outbound \
             flows and 20/20 connections through the forward meanwhile; one source's 300 SYNs: {} over its \
             bound",
            mode.name(),
            evicted,
            refused,
            moved(&before, &after, "drop_remote_limit")
        ),
    );
}
netns_tests::modes!(a_flood_through_a_forward_cannot_fill_the_table);

/// A short pause every 50 frames of a burst (well inside a one-second rate window).
fn pace(i: u32) {
    if i % 50 == 49 {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits (3 s at most) until counter `name` of lab `g` has moved by `at_least` since
/// `before`, then lets what is still on its way arrive.
fn counter_reaches(g: &LabGuard, before: &BTreeMap<String, u64>, name: &str, at_least: u64) {
    wait_for(
        Duration::from_secs(3),
        Duration::from_millis(50),
        || moved(before, &nat_counters(g.prefix()), name) >= at_least,
        || format!("{name} moves by {at_least}: {:?}", nat_counters(g.prefix())),
    );
    std::thread::sleep(SETTLE);
}

/// One UDP exchange: whether the echo came back.
fn echo_once(s: &UdpSocket, to: SocketAddrV4, data: &[u8]) -> bool {
    s.send_to(data, to).unwrap();
    let mut buf = [0u8; 64];
    matches!(s.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == data)
}

/// The last TCP segment from `src` on `wire` among what arrived there: (seq, ack, sport,
/// dport).
fn last_segment(frames: &[Vec<u8>], src: Ipv4Addr) -> Option<(u32, u32, u16, u16)> {
    frames
        .iter()
        .rev()
        .filter_map(|f| parse_frame(f).ok())
        .filter(|(_, _, ip)| ip.header.src == src && ip.header.proto == 6 && ip.data.len() >= 20)
        .map(|(_, _, ip)| {
            let d = &ip.data;
            (
                u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
                u32::from_be_bytes([d[8], d[9], d[10], d[11]]),
                u16::from_be_bytes([d[0], d[1]]),
                u16::from_be_bytes([d[2], d[3]]),
            )
        })
        .next()
}

/// Item 5: spoofed RSTs and FINs outside the window change nothing (the connection goes on,
/// its flow stays established, the NAT counts them); a RST inside the window is the
/// connection's and closes it.
fn spoofed_rsts_and_fins_change_nothing(mode: FastPath) {
    if !privileged("spoofed_rst") {
        return;
    }
    let g = lab("rs", mode, |_| {});
    let (lan, red) = (g.lab.ns("lan"), g.lab.ns("red"));
    let _srv = tcp_echo_server(&lan, 7400);
    let out = Outside::of(&g);
    let mut c = in_ns(&red, || TcpStream::connect(SocketAddrV4::new(LAN, 7400)).unwrap());
    c.set_read_timeout(Some(WAIT)).unwrap();
    let round = |c: &mut TcpStream, n: u8| {
        c.write_all(&[n; 100]).unwrap();
        let mut b = [0u8; 100];
        c.read_exact(&mut b).unwrap();
        assert_eq!(b, [n; 100]);
    };
    round(&mut c, 1);
    std::thread::sleep(Duration::from_millis(50));
    // Red's last segment as lan saw it: its ports (translated) and what it acknowledged.
    let (_, red_ack, ext_port, _) =
        last_segment(&out.wire.received(Duration::ZERO), EXT).expect("red's segments");
    let state = |g: &LabGuard| {
        let (flows, _) = raw_tables(g.prefix()).unwrap();
        flows
            .iter()
            .find(|(k, _)| {
                k.int_addr == addr_to_wire(RED) && k.rem_port == netns_common::nat::WirePort::new(7400)
            })
            .map(|(_, f)| f.state)
    };
    assert_eq!(state(&g), Some(TcpState::Established as u8));
    let before = nat_counters(g.prefix());
    for off in [1u32 << 20, 1 << 30, u32::MAX - 100_000] {
        out.send(
            &Ipv4::new(LAN, EXT),
            &tcp_seg(7400, ext_port, RST, red_ack.wrapping_add(off), 0),
        );
        out.send(
            &Ipv4::new(LAN, EXT),
            &tcp_seg(7400, ext_port, FIN | ACK, red_ack.wrapping_add(off), 1),
        );
    }
    std::thread::sleep(SETTLE);
    let after = nat_counters(g.prefix());
    assert_eq!(moved(&before, &after, "drop_out_of_window"), 6, "{after:?}");
    assert_eq!(
        state(&g),
        Some(TcpState::Established as u8),
        "a spoofed segment moved the flow"
    );
    round(&mut c, 2);
    // In the window: the remote's RST (its sequence is what red acknowledged).
    std::thread::sleep(Duration::from_millis(50));
    let (_, red_ack, ext_port, _) = last_segment(&out.wire.received(Duration::ZERO), EXT).unwrap();
    out.send(&Ipv4::new(LAN, EXT), &tcp_seg(7400, ext_port, RST, red_ack, 0));
    wait_for(
        WAIT,
        Duration::from_millis(20),
        || state(&g) == Some(TcpState::Closed as u8),
        || format!("the in-window RST did not close the flow: {:?}", state(&g)),
    );
    // Red's kernel took it too: the connection is reset.
    std::thread::sleep(Duration::from_millis(100));
    let mut b = [0u8; 1];
    let r = c.read(&mut b);
    assert!(
        r.as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "red's socket after the RST: {r:?}"
    );
}
netns_tests::modes!(spoofed_rsts_and_fins_change_nothing);

/// Item 8: when the uplink's address changes, every flow moves to the new one at its next
/// packet (a UDP flow that keeps sending is not left on the old address), nothing stays on
/// the old address, and the forward moves.
#[test]
fn an_address_change_moves_every_flow() {
    if !privileged("address_change") {
        return;
    }
    // Sweeps far apart: only the agent's address events can explain a quick move.
    let g = lab("ac", FastPath::Tc, |c| {
        c.nat.as_mut().unwrap().ebpf.sweep_interval_ms = 600_000
    });
    let (lan, red, host) = (g.lab.ns("lan"), g.lab.ns("red"), g.lab.ns("host"));
    let srv = UdpEcho::start(&lan, &[7001]);
    let s = udp_in(&red, 0);
    let to = SocketAddrV4::new(LAN, 7001);
    assert_eq!(*echo(&s, to, b"before").ip(), LAN);
    assert_eq!(*srv.seen().last().unwrap().1.ip(), EXT);
    let new = Ipv4Addr::new(192, 168, 1, 4);
    // Old one first: deleting a primary address also deletes its secondaries.
    sh_in(&host, "ip", &["addr", "del", "192.168.1.2/24", "dev", "uplink"]);
    sh_in(&host, "ip", &["addr", "add", "192.168.1.4/24", "dev", "uplink"]);
    let moved_to_new = || {
        let (flows, bindings) = raw_tables(g.prefix()).unwrap();
        let old = addr_to_wire(EXT);
        flows.iter().all(|(_, f)| f.ext_addr != old)
            && bindings.iter().all(|(_, b)| b.ext_addr != old)
            && bindings
                .iter()
                .any(|(k, b)| k.side == SIDE_EXTERNAL && b.is_static() && b.ext_addr == addr_to_wire(new))
    };
    wait_for(
        Duration::from_secs(5),
        Duration::from_millis(50),
        moved_to_new,
        || {
            format!(
                "entries left on the old address: {:?}",
                raw_tables(g.prefix()).unwrap()
            )
        },
    );
    // The same socket's next datagram leaves with the new address, and its echo comes back.
    assert_eq!(*echo(&s, to, b"after").ip(), LAN);
    assert_eq!(*srv.seen().last().unwrap().1.ip(), new);
    // The forward moved too.
    let seen = probe::http_get(&lan, &g.lab.ns("blue"), 80, SocketAddrV4::new(new, 80), WAIT).unwrap();
    assert_eq!(seen.source, LAN);
}

/// Item 10: a mapping never takes a port the router's own sockets are bound to, and traffic
/// for the router's sockets is never taken for an internal host.
#[test]
fn the_routers_own_sockets_keep_their_ports() {
    if !privileged("router_sockets") {
        return;
    }
    let g = lab("rk", FastPath::Tc, |_| {});
    let (lan, red, host) = (g.lab.ns("lan"), g.lab.ns("red"), g.lab.ns("host"));
    let srv = UdpEcho::start(&lan, &[7001]);
    // The router listens on UDP 7500 and TCP 7501.
    let router_udp = udp_in(&host, 7500);
    let _router_tcp = in_ns(&host, || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, 7501)).unwrap()
    });
    // Red's endpoints on those ports get other external ports (no preservation here).
    let s = udp_in(&red, 7500);
    echo(&s, SocketAddrV4::new(LAN, 7001), b"x");
    assert_ne!(
        srv.seen().last().unwrap().1.port(),
        7500,
        "red took the router's port"
    );
    let _lan_tcp = tcp_echo_server(&lan, 7401);
    let seen_port = in_ns(&red, || {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 7501).into())
            .unwrap();
        sock.connect_timeout(&SocketAddrV4::new(LAN, 7401).into(), WAIT)
            .unwrap();
        let c: TcpStream = sock.into();
        c.local_addr().unwrap().port()
    });
    assert_eq!(seen_port, 7501);
    let (flows, _) = raw_tables(g.prefix()).unwrap();
    let f = flows
        .iter()
        .find(|(k, _)| {
            k.int_addr == addr_to_wire(RED) && k.int_port == netns_common::nat::WirePort::new(7501)
        })
        .expect("red's TCP flow");
    assert_ne!(
        f.1.ext_port.get(),
        7501,
        "red's TCP flow took the router's listening port"
    );
    // Lan to the router's UDP port: the router's socket gets it, not red.
    udp_in(&lan, 0)
        .send_to(b"for the router", SocketAddrV4::new(EXT, 7500))
        .unwrap();
    let mut b = [0u8; 64];
    let (n, _) = router_udp
        .recv_from(&mut b)
        .expect("the router's socket gets its datagram");
    assert_eq!(&b[..n], b"for the router");
    assert!(!got_anything(&s, SETTLE), "red got the router's datagram");

    // A router socket bound after a mapping took its port: what no flow of the mapping
    // expects is the router's (not dropped as unsolicited).
    let s2 = udp_in(&red, 7600);
    echo(&s2, SocketAddrV4::new(LAN, 7001), b"y");
    let mapped = srv.seen().last().unwrap().1.port();
    let late = udp_in(&host, mapped);
    let before = nat_counters(g.prefix());
    let stranger = udp_in(&lan, 7777);
    stranger.send_to(b"late", SocketAddrV4::new(EXT, mapped)).unwrap();
    let (n, _) = late.recv_from(&mut b).expect("the router's late socket gets it");
    assert_eq!(&b[..n], b"late");
    assert_eq!(moved(&before, &nat_counters(g.prefix()), "drop_unsolicited"), 0);
    assert!(!got_anything(&s2, SETTLE));
}

/// Drains what `s` has received within `wait`: the payloads.
fn drain(s: &UdpSocket, wait: Duration) -> Vec<Vec<u8>> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(n) = s.recv(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

/// Item 6: an internal host that sends with another's address (blue, with red's address and
/// port, from its own port and MAC) does not get the other's inbound traffic: which MAC an
/// internal address has comes from the router's neighbour table, never from what a frame
/// claims, and the fast path delivers replies to red's port still.
fn a_host_claiming_anothers_address_steers_nothing(mode: FastPath) {
    if !privileged("address_claim") {
        return;
    }
    let g = lab("cl", mode, |_| {});
    let (red, blue, lan) = (g.lab.ns("red"), g.lab.ns("blue"), g.lab.ns("lan"));
    let _srv = UdpEcho::start(&lan, &[7002]);
    let s = udp_in(&red, 0);
    let port = s.local_addr().unwrap().port();
    let to = SocketAddrV4::new(LAN, 7002);
    for i in 0..5 {
        echo(&s, to, format!("warm {i}").as_bytes());
    }
    let wire = Wire::open(&blue, "veth-blue");
    let blue_mac = mac_of(&blue, "veth-blue");
    let gw = mac_of(&g.lab.ns("host"), "v-net-0");
    let before = nat_counters(g.prefix());
    // Blue's claims: red's flow, from blue. Their echoes are red's flow's too.
    for _ in 0..10 {
        let f = packet::frame(gw, blue_mac, &Ipv4::new(RED, LAN), &L4::udp(port, 7002, b"claim"));
        wire.send(&f).unwrap();
    }
    std::thread::sleep(SETTLE);
    for i in 0..20 {
        s.send_to(format!("after {i}").as_bytes(), to).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let got = drain(&s, Duration::from_millis(500));
    let after = nat_counters(g.prefix());
    let to_blue = ipv4_matching(&wire.received(Duration::ZERO), |ip| ip.header.dst == RED);
    assert_eq!(to_blue, 0, "red's replies went to blue");
    let red_own = got.iter().filter(|p| p.starts_with(b"after ")).count();
    assert_eq!(red_own, 20, "red got {red_own} of its 20 echoes");
    assert_eq!(got.iter().filter(|p| p.as_slice() == b"claim").count(), 10);
    let fast_in = format!("fast_in_{}", mode.name());
    assert!(
        moved(&before, &after, &fast_in) >= 20,
        "the replies took the fast path: {after:?}"
    );
}
netns_tests::modes!(a_host_claiming_anothers_address_steers_nothing);

/// Item 6, the other side: a host that comes back with a new MAC (and announces it, as
/// Linux does with `arp_notify`) is not blackholed by what the fast path knew of its old
/// one: every reply of its flow reaches it, and the fast path carries them again once the
/// new MAC has been seen.
fn a_host_with_a_new_mac_is_reached_at_once(mode: FastPath) {
    if !privileged("new_mac") {
        return;
    }
    let g = lab("nm", mode, |_| {});
    let (red, lan) = (g.lab.ns("red"), g.lab.ns("lan"));
    let _srv = UdpEcho::start(&lan, &[7004]);
    let s = udp_in(&red, 0);
    let to = SocketAddrV4::new(LAN, 7004);
    for i in 0..5 {
        echo(&s, to, format!("warm {i}").as_bytes());
    }
    let old = mac_of(&red, "veth-red");
    let new: Mac = [0x02, 0x6e, 0x65, 0x77, old[4], old[5] ^ 0x01];
    let new_text = new.map(|b| format!("{b:02x}")).join(":");
    in_ns(&red, || {
        std::fs::write("/proc/sys/net/ipv4/conf/veth-red/arp_notify", "1")
    })
    .unwrap();
    sh_in(&red, "ip", &["link", "set", "veth-red", "address", &new_text]);
    assert_eq!(mac_of(&red, "veth-red"), new);
    // The router's neighbour entry follows the announcement.
    let router = g.lab.ns("host");
    wait_for(
        WAIT,
        Duration::from_millis(20),
        || sh_in(&router, "ip", &["neigh", "show", "192.168.15.1"]).contains(&new_text),
        || "the router never learnt red's new MAC".into(),
    );
    let before = nat_counters(g.prefix());
    let got: Vec<bool> = (0..20)
        .map(|i| echoed(&s, to, format!("new {i}").as_bytes(), WAIT))
        .collect();
    let after = nat_counters(g.prefix());
    assert!(got.iter().all(|&ok| ok), "echoes after the change: {got:?}");
    let fast_in = format!("fast_in_{}", mode.name());
    assert!(
        moved(&before, &after, &fast_in) >= 10,
        "the replies went back to the fast path: {after:?}"
    );
}
netns_tests::modes!(a_host_with_a_new_mac_is_reached_at_once);

/// Echoes one datagram from `s` to `to`; whether the echo came back within `wait`.
fn echoed(s: &UdpSocket, to: SocketAddrV4, data: &[u8], wait: Duration) -> bool {
    drain(s, Duration::from_millis(1));
    s.send_to(data, to).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 2048];
    matches!(s.recv(&mut buf), Ok(n) if &buf[..n] == data)
}

/// Item 7: what the router would refuse, the fast path refuses too, for packets of flows it
/// already carries: a policy rule, forwarding off on an interface, a bridge port down or
/// out of the bridge. Each stops red's flow (the kernel decides, counted as `slow_policy`),
/// and undoing it brings the flow back.
fn the_routers_policy_binds_the_fast_path(mode: FastPath) {
    if !privileged("router_policy") {
        return;
    }
    let g = lab("rp", mode, |_| {});
    let (red, lan, host) = (g.lab.ns("red"), g.lab.ns("lan"), g.lab.ns("host"));
    let _srv = UdpEcho::start(&lan, &[7003]);
    let s = udp_in(&red, 0);
    let to = SocketAddrV4::new(LAN, 7003);
    let fast_out = format!("fast_out_{}", mode.name());
    let fast_in = format!("fast_in_{}", mode.name());
    let flowing = |what: &str| {
        let before = nat_counters(g.prefix());
        for i in 0..5 {
            assert!(
                echoed(&s, to, format!("{what} {i}").as_bytes(), WAIT),
                "{what}: no echo"
            );
        }
        let after = nat_counters(g.prefix());
        assert!(
            moved(&before, &after, &fast_out) >= 4 && moved(&before, &after, &fast_in) >= 4,
            "{what}: not on the fast path: {after:?}"
        );
    };
    let stopped = |what: &str| {
        let before = nat_counters(g.prefix());
        for i in 0..3 {
            assert!(
                !echoed(
                    &s,
                    to,
                    format!("{what} {i}").as_bytes(),
                    Duration::from_millis(300)
                ),
                "{what}: the flow went on"
            );
        }
        let after = nat_counters(g.prefix());
        assert!(moved(&before, &after, "slow_policy") >= 3, "{what}: {after:?}");
    };
    let sh = |program: &str, args: &[&str]| sh_in(&host, program, args);
    flowing("warm");
    // A MAC of the bridge's own (a bridge without one takes its ports' lowest, so taking a
    // port out below would change it): the fast path follows (red, its ARP cache flushed,
    // sends to the new one).
    sh("ip", &["link", "set", "v-net-0", "address", "02:00:00:00:be:ef"]);
    sh_in(&red, "ip", &["neigh", "flush", "dev", "veth-red"]);
    std::thread::sleep(SETTLE);
    flowing("a new bridge MAC");

    sh(
        "ip",
        &["rule", "add", "iif", "v-net-0", "blackhole", "pref", "10"],
    );
    stopped("a blackhole rule for the bridge");
    sh("ip", &["rule", "del", "pref", "10"]);
    flowing("rule gone");

    sh("sysctl", &["-qw", "net.ipv4.conf.uplink.forwarding=0"]);
    stopped("forwarding off on the uplink");
    sh("sysctl", &["-qw", "net.ipv4.conf.uplink.forwarding=1"]);
    flowing("forwarding back on");

    // Inbound only from here (red's sends would die at its own port): lan sends to red's
    // mapping from the echo server's port, raw.
    let out = Outside::of(&g);
    let port_down = |what: &str, undo: &[&str], args: &[&str]| {
        echo(&s, to, b"mapping");
        let (flows, _) = raw_tables(g.prefix()).unwrap();
        let ext_port = flows
            .iter()
            .find(|(k, _)| {
                k.rem_addr == addr_to_wire(LAN) && k.rem_port == netns_common::nat::WirePort::new(7003)
            })
            .map(|(_, f)| f.ext_port.get())
            .expect("red's flow");
        sh("ip", args);
        // The agent hears of the link change and updates the fast path's port table.
        std::thread::sleep(SETTLE);
        let before = nat_counters(g.prefix());
        for i in 0..3 {
            out.send(
                &Ipv4::new(LAN, EXT),
                &L4::udp(7003, ext_port, format!("{what} {i}").as_bytes()),
            );
        }
        assert!(
            drain(&s, Duration::from_millis(300)).is_empty(),
            "{what}: red got them"
        );
        let after = nat_counters(g.prefix());
        assert!(moved(&before, &after, "slow_policy") >= 3, "{what}: {after:?}");
        sh("ip", undo);
        std::thread::sleep(SETTLE);
    };
    port_down(
        "red's port down",
        &["link", "set", "veth-red-br", "up"],
        &["link", "set", "veth-red-br", "down"],
    );
    wait_for(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || echoed(&s, to, b"up again", Duration::from_millis(200)),
        || "red's port back up: no echo".into(),
    );
    flowing("port up again");
    port_down(
        "red's port out of the bridge",
        &["link", "set", "veth-red-br", "master", "v-net-0"],
        &["link", "set", "veth-red-br", "nomaster"],
    );
    wait_for(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || echoed(&s, to, b"bridged again", Duration::from_millis(200)),
        || "red's port back in the bridge: no echo".into(),
    );
    flowing("port in the bridge again");
}
netns_tests::modes!(the_routers_policy_binds_the_fast_path);

/// Item 7: frames the fast path carries skip the bridge, whose forwarding database would
/// forget red (and flood what it forwards to red) after its ageing time; a frame of red's
/// takes the bridge every half ageing time, so the bridge keeps red for as long as red talks.
fn the_bridge_keeps_hosts_the_fast_path_carries(mode: FastPath) {
    if !privileged("bridge_refresh") {
        return;
    }
    let g = lab("br", mode, |_| {});
    let (red, lan, host) = (g.lab.ns("red"), g.lab.ns("lan"), g.lab.ns("host"));
    // 3 s: the agent hears of it and refreshes every 1.5 s.
    sh_in(
        &host,
        "ip",
        &["link", "set", "v-net-0", "type", "bridge", "ageing_time", "300"],
    );
    std::thread::sleep(SETTLE);
    let _srv = UdpEcho::start(&lan, &[7004]);
    let s = udp_in(&red, 0);
    let to = SocketAddrV4::new(LAN, 7004);
    let red_mac = mac_of(&red, "veth-red")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let before = nat_counters(g.prefix());
    // 8 s of talk, 10 datagrams a second, every echo back.
    for i in 0..80 {
        echo(&s, to, format!("talk {i}").as_bytes());
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = nat_counters(g.prefix());
    let fdb = sh_in(&host, "bridge", &["fdb", "show", "br", "v-net-0"]);
    assert!(
        fdb.lines()
            .any(|l| l.starts_with(&red_mac) && l.contains("veth-red-br")),
        "the bridge forgot red:\n{fdb}"
    );
    let refreshes = moved(&before, &after, "slow_bridge_refresh");
    assert!((3..=12).contains(&refreshes), "{refreshes} refreshes: {after:?}");
    let fast_out = format!("fast_out_{}", mode.name());
    assert!(moved(&before, &after, &fast_out) >= 60, "{after:?}");
}
netns_tests::modes!(the_bridge_keeps_hosts_the_fast_path_carries);

/// What the lab's agent reports holds the fast path off, if anything.
fn fast_path_held(prefix: &str) -> Option<String> {
    let (out, _) = netns_tests::netns_nat_ok(&["status", "--prefix", prefix, "--json"]);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    st["ebpf"]["agent"]["health"]["fast_path_held"]
        .as_str()
        .map(str::to_owned)
}

/// Item 7: a filter on the router's forward hook (nftables, or iptables-legacy) is the
/// router's policy too: within the agent's check (2 s) the fast path, whose redirects
/// would skip it, is held off and the filter applies to flows already on the fast path;
/// once the filter is gone the fast path comes back.
fn a_forward_filter_holds_the_fast_path_off(mode: FastPath) {
    if !privileged("forward_filter") {
        return;
    }
    let g = lab("fh", mode, |_| {});
    let (red, lan, host) = (g.lab.ns("red"), g.lab.ns("lan"), g.lab.ns("host"));
    let _srv = UdpEcho::start(&lan, &[7005]);
    let s = udp_in(&red, 0);
    let to = SocketAddrV4::new(LAN, 7005);
    let small = |i: usize| echoed(&s, to, format!("small {i}").as_bytes(), WAIT);
    let large = || echoed(&s, to, &[b'L'; 200], Duration::from_millis(300));
    let fast_out = format!("fast_out_{}", mode.name());
    let on_fast_path = || {
        let before = nat_counters(g.prefix())[&fast_out];
        (0..5).all(small) && nat_counters(g.prefix())[&fast_out] >= before + 4
    };
    assert!(on_fast_path() && large());

    let nft = |args: &[&str]| sh_in(&host, "nft", args);
    netns_tests::add_forward_filter(&host, 7005);
    // Until the agent sees it, the fast path carries large datagrams past it.
    wait_for(
        Duration::from_secs(6),
        Duration::from_millis(100),
        || !large(),
        || "the filter never applied to the flow".into(),
    );
    let before = nat_counters(g.prefix())[&fast_out];
    assert!((0..5).all(small), "small datagrams pass the filter");
    assert!((0..3).all(|_| !large()), "a large datagram passed the filter");
    assert_eq!(nat_counters(g.prefix())[&fast_out], before, "the fast path ran");
    assert!(
        fast_path_held(g.prefix()).is_some_and(|w| w.contains("ip userfw filter_fwd")),
        "{:?}",
        fast_path_held(g.prefix())
    );
    nft(&["delete", "table", "ip", "userfw"]);
    wait_for(
        Duration::from_secs(6),
        Duration::from_millis(200),
        on_fast_path,
        || "the fast path never came back".into(),
    );
    assert!(large());
    assert_eq!(fast_path_held(g.prefix()), None);

    // iptables-legacy: all of the flow's datagrams dropped in FORWARD.
    let rule = ["FORWARD", "-p", "udp", "--dport", "7005", "-j", "DROP"];
    sh_in(&host, "iptables-legacy", &[&["-A"][..], &rule].concat());
    wait_for(
        Duration::from_secs(6),
        Duration::from_millis(100),
        || !echoed(&s, to, b"legacy", Duration::from_millis(300)),
        || "iptables-legacy's filter never applied to the flow".into(),
    );
    assert!(fast_path_held(g.prefix()).is_some_and(|w| w.contains("iptables-legacy")));
    sh_in(&host, "iptables-legacy", &[&["-D"][..], &rule].concat());
    wait_for(
        Duration::from_secs(6),
        Duration::from_millis(200),
        on_fast_path,
        || "the fast path never came back after iptables-legacy".into(),
    );
}
netns_tests::modes!(a_forward_filter_holds_the_fast_path_off);

/// The frames of `data` (an L4 datagram under `ip`) cut into fragments of at most `max`
/// bytes, from `src_mac` to `dst_mac`, last first.
fn reversed_fragments(ip: &Ipv4, data: &[u8], max: usize, dst_mac: Mac, src_mac: Mac) -> Vec<Vec<u8>> {
    let mut f: Vec<Vec<u8>> = packet::fragments(ip, data, max)
        .iter()
        .map(|f| packet::ethernet(dst_mac, src_mac, packet::ETH_P_IP, f).to_vec())
        .collect();
    f.reverse();
    f
}

/// Item 9: fragments that arrive last first (reordered on the way) still cross the NAT
/// both ways: held until their first comes, then sent again, translated. Each datagram
/// arrives whole, its payload intact (the receiver's kernel reassembles it and checks the
/// UDP checksum over all of it).
fn reordered_fragments_cross_both_ways(mode: FastPath) {
    if !privileged("reordered_fragments") {
        return;
    }
    let g = lab("rf", mode, |_| {});
    let (red, lan, host) = (g.lab.ns("red"), g.lab.ns("lan"), g.lab.ns("host"));
    let red_s = udp_in(&red, 41500);
    let lan_s = udp_in(&lan, 7007);
    let red_wire = Wire::open(&red, "veth-red");
    let (red_mac, gw) = (mac_of(&red, "veth-red"), mac_of(&host, "v-net-0"));
    let before = nat_counters(g.prefix());
    let payload: Vec<u8> = (0..2400u32).map(|i| (i * 7) as u8).collect();
    let udp_ip = |src, dst, id| {
        let mut ip = Ipv4::new(src, dst).id(id);
        ip.proto = packet::PROTO_UDP;
        ip
    };

    let out = packet::l4_bytes(RED, LAN, &L4::udp(41500, 7007, &payload));
    for f in reversed_fragments(&udp_ip(RED, LAN, 0x2222), &out, 1000, gw, red_mac) {
        red_wire.send(&f).unwrap();
    }
    let mut buf = vec![0u8; 4096];
    let (n, from) = lan_s.recv_from(&mut buf).expect("the datagram, whole");
    assert_eq!(&buf[..n], &payload[..], "payload");
    let std::net::SocketAddr::V4(from) = from else {
        panic!("{from}")
    };
    assert_eq!(*from.ip(), EXT, "translated");

    let back: Vec<u8> = payload.iter().rev().copied().collect();
    let inb = packet::l4_bytes(LAN, EXT, &L4::udp(7007, from.port(), &back));
    let outside = Outside::of(&g);
    for f in reversed_fragments(
        &udp_ip(LAN, EXT, 0x3333),
        &inb,
        1000,
        outside.uplink_mac,
        outside.lan_mac,
    ) {
        outside.wire.send(&f).unwrap();
    }
    let n = red_s.recv(&mut buf).expect("the reply, whole");
    assert_eq!(&buf[..n], &back[..], "payload");
    let after = nat_counters(g.prefix());
    assert_eq!(moved(&before, &after, "fragments_held"), 4, "{after:?}");
    assert_eq!(moved(&before, &after, "fragments_replayed"), 4, "{after:?}");
    assert_eq!(moved(&before, &after, "drop_fragment_unknown"), 0);
}
netns_tests::modes!(reordered_fragments_cross_both_ways);

/// Item 9: fragments addressed to the router itself are its own, however they come: a
/// fragmented echo request to the external address (`ping -s 3000`, and the same last
/// fragment first) is answered.
fn fragments_to_the_router_itself_are_never_dropped(mode: FastPath) {
    if !privileged("router_fragments") {
        return;
    }
    let g = lab("rfr", mode, |_| {});
    let lan = g.lab.ns("lan");
    let payload = [0x5au8; 3000];
    // As `ping -s 3000` sends it: lan's kernel fragments it, in order.
    let icmp = raw_socket(&lan, libc::IPPROTO_ICMP);
    let req = packet::l4_bytes(LAN, EXT, &L4::echo(false, 0x4141, 1, &payload));
    raw_send(&icmp, EXT, &req);
    let reply = std::iter::from_fn(|| raw_recv(&icmp))
        .filter_map(|p| packet::parse_ipv4(&p).ok())
        .find(|ip| ip.header.src == EXT && ip.data.first() == Some(&0));
    let reply = reply.expect("an echo reply");
    assert_eq!(reply.data.len(), 8 + payload.len(), "whole");
    assert_eq!(&reply.data[8..], &payload[..]);
    let outside = Outside::of(&g);
    let req = packet::l4_bytes(LAN, EXT, &L4::echo(false, 0x4242, 1, &payload));
    let mut ip = Ipv4::new(LAN, EXT).id(0x4444);
    ip.proto = packet::PROTO_ICMP;
    for f in reversed_fragments(&ip, &req, 1000, outside.uplink_mac, outside.lan_mac) {
        outside.wire.send(&f).unwrap();
    }
    let replies = ipv4_matching(&outside.wire.received(WAIT), |ip| {
        ip.header.src == EXT
            && ip.header.proto == packet::PROTO_ICMP
            && ip.header.frag_offset == 0
            && ip.data.first() == Some(&0)
            && ip.data.get(4..6) == Some(&[0x42, 0x42][..])
    });
    assert_eq!(replies, 1, "the router answered the reordered request");
}
netns_tests::modes!(fragments_to_the_router_itself_are_never_dropped);

/// Item 9: fragmented datagrams hairpinned through a UDP forward (red to the external
/// address, forwarded to blue, and blue's echo back the same way) arrive whole.
fn hairpinned_fragments_arrive(mode: FastPath) {
    if !privileged("hairpin_fragments") {
        return;
    }
    let g = lab("hf", mode, |c| {
        c.nat
            .as_mut()
            .unwrap()
            .forwards
            .push(netns_user::config::ForwardSpec {
                protocol: netns_user::config::L4Proto::Udp,
                port: 7008,
                to: SocketAddrV4::new(BLUE, 7008),
            })
    });
    let (red, blue) = (g.lab.ns("red"), g.lab.ns("blue"));
    let srv = UdpEcho::start(&blue, &[7008]);
    let s = udp_in(&red, 0);
    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 13) as u8).collect();
    let before = nat_counters(g.prefix());
    s.send_to(&payload, SocketAddrV4::new(EXT, 7008)).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.recv(&mut buf).expect("the echo, whole");
    assert!(buf[..n] == payload[..], "payload");
    let seen = srv.seen();
    assert_eq!(
        seen.last().map(|(_, from, n)| (*from.ip(), *n)),
        Some((EXT, 3000))
    );
    let after = nat_counters(g.prefix());
    assert!(moved(&before, &after, "fragments") >= 4, "{after:?}");
    assert!(moved(&before, &after, "hairpinned") >= 4, "{after:?}");
}
netns_tests::modes!(hairpinned_fragments_arrive);
