//! Plain forwarding in eBPF (`--nat none --fast-path tc|xdp`) on real labs: routed packets
//! between the internal bridge and the uplink are redirected by `route_fast` /
//! `xdp_route_fast` both ways, untranslated, their TTL decremented; a last hop is the
//! kernel's, which answers it; and `--nat none` alone attaches no forwarding program. The
//! same steps on frames in memory: `fast.rs`.

use std::{
    io::Read,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use netns_testkit::packet;
use netns_tests::{
    LabGuard, UdpEcho, counter_moved as delta, in_ns, nat_counters as counters, prefix, privileged,
};
use netns_user::{
    bpf,
    config::{FastPath, LabConfig, RouteSpec},
    nat::NatKind,
};

const LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 3);
const RED: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 1);
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);

/// The reference lab without NAT, forwarding in `mode`, lan given the way back to the
/// internal network (NAT otherwise hides it).
fn lab(tag: &str, mode: FastPath) -> LabGuard {
    let mut cfg = LabConfig::reference();
    cfg.nat
        .as_mut()
        .expect("the reference lab has [nat]")
        .routed_fast_path = mode;
    cfg.routes.push(RouteSpec {
        namespace: "lan".into(),
        to: "192.168.15.0/24".parse().expect("literal"),
        via: Some(ROUTER.into()),
        dev: None,
    });
    LabGuard::up_with(&cfg, tag, NatKind::None)
}

fn tag(name: &str, mode: FastPath) -> String {
    format!("{name}{}", &mode.name()[..1])
}

/// A raw socket in lan that sees every UDP datagram arriving there.
fn raw_udp_in(g: &LabGuard, ns: &str) -> socket2::Socket {
    in_ns(&g.lab.ns(ns), || {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        s
    })
}

/// The (source, TTL, IPv4 header checksum valid) of the datagrams to port `dport` that `raw`
/// saw within 2 s, at most `n`.
fn arrivals(raw: &socket2::Socket, dport: u16, n: usize) -> Vec<(Ipv4Addr, u8, bool)> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(2);
    while seen.len() < n && Instant::now() < deadline {
        let mut r = raw;
        let Ok(len) = r.read(&mut buf) else {
            continue;
        };
        if let Ok(p) = packet::parse_ipv4(&buf[..len])
            && p.ports().is_some_and(|(_, d)| d == dport)
        {
            seen.push((p.header.src, p.header.ttl, p.header_ok));
        }
    }
    seen
}

/// Red sends `n` datagrams to lan's echo server with TTL `ttl`; how many came back
/// unchanged.
fn exchange(g: &LabGuard, n: usize, ttl: u32) -> usize {
    in_ns(&g.lab.ns("red"), || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 43000)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.set_ttl(ttl).unwrap();
        let mut answered = 0;
        let mut buf = [0u8; 2048];
        for i in 0..n {
            let msg = format!("routed {i}");
            s.send_to(msg.as_bytes(), SocketAddrV4::new(LAN, 7100)).unwrap();
            if let Ok((len, from)) = s.recv_from(&mut buf) {
                assert_eq!(&buf[..len], msg.as_bytes(), "payload changed on the way");
                assert_eq!(
                    from,
                    SocketAddrV4::new(LAN, 7100).into(),
                    "the answer was translated"
                );
                answered += 1;
            }
        }
        answered
    })
}

fn routed_traffic_takes_the_ebpf_forwarding_both_ways_untranslated(mode: FastPath) {
    if !privileged("routed_both_ways") {
        return;
    }
    let g = lab(&tag("rtb", mode), mode);
    let echo = UdpEcho::start(&g.lab.ns("lan"), &[7100]);
    let at_lan = raw_udp_in(&g, "lan");
    let at_red = raw_udp_in(&g, "red");
    // The first exchange resolves the neighbours (the kernel's, on the slow path).
    assert_eq!(exchange(&g, 1, 64), 1);
    let c0 = counters(g.prefix());
    assert_eq!(exchange(&g, 50, 64), 50);
    let c1 = counters(g.prefix());
    let (out, inb) = (
        format!("fast_out_{}", mode.name()),
        format!("fast_in_{}", mode.name()),
    );
    assert_eq!(delta(&c0, &c1, &out), 50, "{c1:?}");
    assert_eq!(delta(&c0, &c1, &inb), 50, "{c1:?}");
    assert_eq!(delta(&c0, &c1, "new_flows"), 0, "plain forwarding makes no flow");
    // Untranslated (red's own address at lan), one hop taken off the TTL, the header's
    // checksum valid after the change; the same for the answers at red.
    let there = arrivals(&at_lan, 7100, 51);
    assert_eq!(there.len(), 51, "{there:?}");
    assert!(there.iter().all(|a| *a == (RED, 63, true)), "{there:?}");
    let back = arrivals(&at_red, 43000, 51);
    assert_eq!(back.len(), 51, "{back:?}");
    assert!(back.iter().all(|a| *a == (LAN, 63, true)), "{back:?}");
    assert!(echo.seen().iter().all(|(_, from, _)| *from.ip() == RED));
}
netns_tests::modes!(routed_traffic_takes_the_ebpf_forwarding_both_ways_untranslated);

fn a_last_hop_is_left_to_the_kernel_which_answers_it(mode: FastPath) {
    if !privileged("routed_ttl") {
        return;
    }
    let g = lab(&tag("rtt", mode), mode);
    let echo = UdpEcho::start(&g.lab.ns("lan"), &[7100]);
    assert_eq!(exchange(&g, 1, 64), 1);
    let c0 = counters(g.prefix());
    // An ICMP socket in red hears the router's time exceeded.
    let icmp = in_ns(&g.lab.ns("red"), || {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        s
    });
    assert_eq!(exchange(&g, 3, 1), 0);
    let c1 = counters(g.prefix());
    assert_eq!(delta(&c0, &c1, "slow_ttl"), 3, "{c1:?}");
    assert_eq!(echo.seen().len(), 1, "a TTL-1 datagram crossed the router");
    let mut buf = [0u8; 2048];
    let mut exceeded = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while exceeded < 3 && Instant::now() < deadline {
        let mut r = &icmp;
        let Ok(len) = r.read(&mut buf) else {
            continue;
        };
        // Type 11 (time exceeded) from the router's address towards red.
        if let Ok(p) = packet::parse_ipv4(&buf[..len])
            && p.data.first() == Some(&11)
        {
            exceeded += 1;
        }
    }
    assert_eq!(exceeded, 3, "the router answered each last hop");
}
netns_tests::modes!(a_last_hop_is_left_to_the_kernel_which_answers_it);

#[test]
fn nat_none_alone_attaches_no_forwarding_program() {
    if !privileged("routed_off") {
        return;
    }
    let g = lab("rto", FastPath::Off);
    let router = g.lab.ns("host");
    let attached: Vec<String> = bpf::attached_programs(&router)
        .unwrap()
        .into_iter()
        .map(|p| p.label)
        .collect();
    assert!(
        attached.iter().all(|l| l.starts_with("uplink_count_")),
        "only the uplink's counters: {attached:?}"
    );
    assert!(g.lab.status().unwrap().nat_rules.is_none());
}

#[test]
fn the_routed_fast_path_is_refused_beside_a_nat() {
    if !privileged("routed_with_nat") {
        return;
    }
    let mut cfg = LabConfig::reference();
    cfg.nat.as_mut().unwrap().routed_fast_path = FastPath::Tc;
    let p = prefix("rtn");
    let err = netns_user::lab::Lab::up(&cfg, &p, NatKind::Ebpf, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("--nat none"), "{err}");
    assert!(netns_user::lab::list().iter().all(|l| l != &p), "nothing left");
}

/// Whether a datagram of `len` bytes from red to lan's echo server comes back within `wait`.
fn echoed(g: &LabGuard, len: usize, wait: Duration) -> bool {
    in_ns(&g.lab.ns("red"), || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        s.set_read_timeout(Some(wait)).unwrap();
        let msg = vec![b'r'; len];
        s.send_to(&msg, SocketAddrV4::new(LAN, 7100)).unwrap();
        let mut buf = [0u8; 2048];
        s.recv_from(&mut buf).is_ok_and(|(n, _)| buf[..n] == msg[..])
    })
}

#[test]
fn a_forward_filter_holds_the_ebpf_forwarding_off_while_it_is_there() {
    if !privileged("routed_filter") {
        return;
    }
    let g = lab("rtf", FastPath::Tc);
    let host = g.lab.ns("host");
    let _echo = UdpEcho::start(&g.lab.ns("lan"), &[7100]);
    let wait = Duration::from_millis(300);
    assert!(echoed(&g, 200, Duration::from_secs(2)));
    // The filter drops large datagrams to 7100 in the router's forward hook, which the
    // redirect would skip: the agent turns the forwarding off, and the kernel applies it.
    netns_tests::add_forward_filter(&host, 7100);
    netns_tests::wait_for(
        Duration::from_secs(6),
        Duration::from_millis(100),
        || !echoed(&g, 200, wait),
        || "the filter never applied".into(),
    );
    let c0 = counters(g.prefix());
    assert!(
        echoed(&g, 20, Duration::from_secs(1)),
        "small datagrams pass the filter"
    );
    assert!(
        (0..3).all(|_| !echoed(&g, 200, wait)),
        "a large datagram passed the filter"
    );
    assert_eq!(
        delta(&c0, &counters(g.prefix()), "fast_out_tc"),
        0,
        "the forwarding ran"
    );
    netns_tests::sh_in(&host, "nft", &["delete", "table", "ip", "userfw"]);
    // The kernel forwards it at once; the eBPF forwarding once the agent sees the filter
    // gone.
    let forwarded = || {
        let c = counters(g.prefix());
        echoed(&g, 200, wait) && delta(&c, &counters(g.prefix()), "fast_out_tc") == 1
    };
    netns_tests::wait_for(
        Duration::from_secs(6),
        Duration::from_millis(200),
        forwarded,
        || "the forwarding never came back".into(),
    );
}

#[test]
fn a_port_taken_out_of_the_bridge_is_forwarded_from_no_more() {
    if !privileged("routed_port") {
        return;
    }
    let g = lab("rtp", FastPath::Tc);
    let host = g.lab.ns("host");
    let _echo = UdpEcho::start(&g.lab.ns("lan"), &[7100]);
    assert!(echoed(&g, 20, Duration::from_secs(2)));
    // Out of the bridge, red's port is an interface without an address: the router routes
    // nothing from it, so neither may the forwarding (the agent follows the link event).
    netns_tests::sh_in(&host, "ip", &["link", "set", "veth-red-br", "nomaster"]);
    netns_tests::wait_for(
        Duration::from_secs(3),
        Duration::from_millis(100),
        || !echoed(&g, 20, Duration::from_millis(300)),
        || "red is still forwarded from a port out of the bridge".into(),
    );
    let c0 = counters(g.prefix());
    assert!((0..3).all(|_| !echoed(&g, 20, Duration::from_millis(300))));
    assert_eq!(delta(&c0, &counters(g.prefix()), "fast_out_tc"), 0);
    netns_tests::sh_in(&host, "ip", &["link", "set", "veth-red-br", "master", "v-net-0"]);
    netns_tests::wait_for(
        Duration::from_secs(6),
        Duration::from_millis(200),
        || echoed(&g, 20, Duration::from_millis(300)),
        || "red never got its way back".into(),
    );
}
