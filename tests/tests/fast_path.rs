//! The fast path at TC and in XDP, on real labs: established flows are redirected from the
//! bridge port to the uplink and back, skipping the bridge and routing, while a flow's first
//! packet, SYN/FIN, TTL-1 packets and (in XDP) partial checksums take the slow path;
//! conntrack counts both the same way. Each test runs in both modes.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use netns_common::fwd::partial_checksum;
use netns_testkit::packet::{self, Ipv4, L4};
use netns_tests::{
    LabGuard, UdpEcho, counter_moved as delta, in_ns, nat_counters as counters, privileged, sh_in, wait_for,
    wire::{Wire, mac_of, no_ipv4},
};
use netns_user::{
    bpf::NatMaps,
    config::{FastPath, ForwardSpec, L4Proto, LabConfig},
    nat::NatKind,
    probe,
    sys::ethtool::{self, Offload},
    sys::netns,
};

/// The fast-path counter of `mode` for one direction ("out" or "in").
fn fast(mode: FastPath, dir: &str) -> String {
    format!("fast_{dir}_{}", mode.name())
}

fn tag(name: &str, mode: FastPath) -> String {
    format!("{name}{}", &mode.name()[..1])
}

const LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 3);
const EXT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const RED: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 1);
const BLUE: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 2);

fn lab(tag: &str, fast: FastPath) -> LabGuard {
    let mut cfg = LabConfig::reference();
    cfg.nat
        .as_mut()
        .expect("the reference lab has NAT")
        .ebpf
        .fast_path = fast;
    LabGuard::up_with(&cfg, tag, NatKind::Ebpf)
}

/// Sends `n` datagrams from red to lan's echo server on one flow, each answered.
fn udp_exchange(g: &LabGuard, n: usize, ttl: Option<u32>) -> usize {
    in_ns(&g.lab.ns("red"), || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 42000)).unwrap();
        // Long enough for the lab's first exchange (neighbour resolution) on a loaded machine.
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        if let Some(t) = ttl {
            s.set_ttl(t).unwrap();
        }
        let mut answered = 0;
        let mut buf = [0u8; 2048];
        for i in 0..n {
            let msg = format!("datagram {i}");
            s.send_to(msg.as_bytes(), SocketAddrV4::new(LAN, 7100)).unwrap();
            if let Ok((len, _)) = s.recv_from(&mut buf) {
                assert_eq!(&buf[..len], msg.as_bytes(), "payload changed on the way");
                answered += 1;
            }
        }
        answered
    })
}

fn established_udp_takes_the_fast_path_both_ways(mode: FastPath) {
    if !privileged("fast_udp") {
        return;
    }
    let g = lab(&tag("fpu", mode), mode);
    // status says the mode and lists what the kernel has attached, on every bridge port.
    let rules = g.lab.status().unwrap().nat_rules.expect("eBPF NAT rules");
    assert!(rules.contains(&format!("fast path: {}", mode.name())), "{rules}");
    assert!(rules.contains("MiB when full"), "{rules}");
    for port in ["veth-red-br", "veth-blue-br"] {
        let attached = match mode {
            FastPath::Xdp => format!("xdp_fast_out@{port}:xdp"),
            _ => format!("nat_fast_out@{port}:tcx-ingress"),
        };
        assert!(rules.contains(&attached), "{rules}");
    }
    if mode == FastPath::Xdp {
        assert!(rules.contains("xdp_fast_in@uplink:xdp"), "{rules}");
    }
    let _echo = UdpEcho::start(&g.lab.ns("lan"), &[7100]);
    let c0 = counters(g.prefix());
    assert_eq!(udp_exchange(&g, 50, None), 50);
    let c1 = counters(g.prefix());
    // The first datagram creates the flow on the slow path; the rest skip it.
    assert_eq!(delta(&c0, &c1, "out_udp"), 1, "{c1:?}");
    assert_eq!(delta(&c0, &c1, &fast(mode, "out")), 49, "{c1:?}");
    // Every reply finds its flow (made by the first datagram) and the host's port, so none
    // needs the slow path's translation.
    assert_eq!(delta(&c0, &c1, &fast(mode, "in")), 50, "{c1:?}");
    assert_eq!(delta(&c0, &c1, "in_udp"), 0, "{c1:?}");
    assert_eq!(delta(&c0, &c1, "slow_no_flow"), 1, "{c1:?}");
    // One conntrack truth: the flow counted every packet, whichever path it took.
    let flows = netns_user::ops::conntrack::live_flows(g.prefix()).unwrap();
    let f = flows
        .iter()
        .find(|f| f.protocol == "udp" && f.internal == "192.168.15.1:42000")
        .expect("the flow is in conntrack");
    assert_eq!((f.packets_out, f.packets_in), (50, 50), "{f:?}");
    // Fast-path packets push the expiry on, as the slow path's do.
    std::thread::sleep(Duration::from_millis(1500));
    let c2 = counters(g.prefix());
    assert_eq!(udp_exchange(&g, 5, None), 5);
    let c3 = counters(g.prefix());
    assert_eq!(delta(&c2, &c3, &fast(mode, "out")), 5, "{c3:?}");
    let flows = netns_user::ops::conntrack::live_flows(g.prefix()).unwrap();
    let f2 = flows
        .iter()
        .find(|f| f.protocol == "udp" && f.internal == "192.168.15.1:42000")
        .expect("the flow is still in conntrack");
    assert!(f2.expires_in_s > f.expires_in_s - 0.5, "{f:?} then {f2:?}");
    assert_eq!((f2.packets_out, f2.packets_in), (55, 55), "{f2:?}");
}
netns_tests::modes!(established_udp_takes_the_fast_path_both_ways);

/// A host behind a port forward that only receives sends the router nothing, so the fast
/// path never learns behind which bridge port it sits: at TC its inbound packets still skip
/// routing, handed to the bridge's own transmit, which knows the port (from the host's ARP
/// replies) as it would on the slow path. Before, each of them took the slow path.
#[test]
fn a_host_that_only_receives_gets_its_inbound_packets_through_the_bridge_on_the_fast_path() {
    if !privileged("fast_receive_only") {
        return;
    }
    let mut cfg = LabConfig::reference();
    let nat = cfg.nat.as_mut().expect("the reference lab has NAT");
    nat.ebpf.fast_path = FastPath::Tc;
    nat.forwards.push(ForwardSpec {
        protocol: L4Proto::Udp,
        port: 7200,
        to: SocketAddrV4::new(BLUE, 7200),
    });
    let g = LabGuard::up_with(&cfg, "frcv", NatKind::Ebpf);
    let rx = in_ns(&g.lab.ns("blue"), || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 7200)).unwrap()
    });
    rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let send = |from: usize, n: usize| {
        in_ns(&g.lab.ns("lan"), || {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 42100)).unwrap();
            for i in from..from + n {
                s.send_to(format!("to blue {i}").as_bytes(), SocketAddrV4::new(EXT, 7200))
                    .unwrap();
            }
        })
    };
    let receive = |from: usize, n: usize| {
        let mut buf = [0u8; 256];
        for i in from..from + n {
            let (len, src) = rx.recv_from(&mut buf).expect("a datagram for blue");
            assert_eq!(&buf[..len], format!("to blue {i}").as_bytes());
            assert_eq!(src, std::net::SocketAddr::from((LAN, 42100)));
        }
    };
    // The first datagram makes the flow on the slow path (and the router resolves blue).
    send(0, 1);
    receive(0, 1);
    let c0 = counters(g.prefix());
    send(1, 30);
    receive(1, 30);
    let c1 = counters(g.prefix());
    assert_eq!(delta(&c0, &c1, "fast_in_tc"), 30, "{c1:?}");
    assert_eq!(delta(&c0, &c1, "slow_no_neighbour"), 0, "{c1:?}");
    assert_eq!(delta(&c0, &c1, "in_udp"), 0, "{c1:?}");
}

/// The fast path's next-hop generation of the lab (see `HopCache`).
fn hop_gen(g: &LabGuard) -> u32 {
    NatMaps::open(g.prefix()).unwrap().fast_config().unwrap().hop_gen
}

/// Routes the router to lan the way `how` says ("add" or "del" a blackhole route), then
/// waits for the agent to have moved the next-hop generation on.
fn blackhole_lan(g: &LabGuard, how: &str) {
    let before = hop_gen(g);
    sh_in(
        &g.lab.ns("host"),
        "ip",
        &["route", how, "blackhole", "192.168.1.3/32"],
    );
    wait_for(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || hop_gen(g) != before,
        || "the agent did not renew the next hops after a route change".into(),
    );
}

/// TC caches each flow's next hop (XDP does not): a route change on the router reaches the
/// flows at once, not when the cache ages out.
#[test]
fn a_route_change_reaches_established_flows_at_once() {
    if !privileged("fast_reroute") {
        return;
    }
    let g = lab("fprr", FastPath::Tc);
    let _echo = UdpEcho::start(&g.lab.ns("lan"), &[7100]);
    assert_eq!(udp_exchange(&g, 20, None), 20);
    // Let the neighbour events of the first exchange pass.
    std::thread::sleep(Duration::from_millis(300));
    let c0 = counters(g.prefix());
    blackhole_lan(&g, "add");
    assert_eq!(
        udp_exchange(&g, 3, None),
        0,
        "a blackholed destination was still reached"
    );
    let c1 = counters(g.prefix());
    assert_eq!(delta(&c0, &c1, "fast_out_tc"), 0, "{c1:?}");
    assert_eq!(delta(&c0, &c1, "slow_policy"), 3, "{c1:?}");
    blackhole_lan(&g, "del");
    assert_eq!(udp_exchange(&g, 5, None), 5);
    let c2 = counters(g.prefix());
    assert_eq!(delta(&c1, &c2, "fast_out_tc"), 5, "{c2:?}");
}

fn ttl_one_takes_the_slow_path_and_goes_no_further(mode: FastPath) {
    if !privileged("fast_ttl") {
        return;
    }
    let g = lab(&tag("fpt", mode), mode);
    let echo = UdpEcho::start(&g.lab.ns("lan"), &[7100]);
    assert_eq!(udp_exchange(&g, 3, None), 3);
    let c0 = counters(g.prefix());
    // TTL 1 would expire at the router: the router's stack must see it (and answer with
    // time exceeded), so it is not forwarded.
    assert_eq!(udp_exchange(&g, 3, Some(1)), 0);
    let c1 = counters(g.prefix());
    assert_eq!(delta(&c0, &c1, "slow_ttl"), 3, "{c1:?}");
    assert_eq!(delta(&c0, &c1, &fast(mode, "out")), 0, "{c1:?}");
    assert_eq!(echo.seen().len(), 3, "a TTL-1 datagram crossed the router");
    // TTL 2 crosses (one hop), on the fast path, with the TTL decremented on the way: a raw
    // socket on lan reads it off each datagram as it arrived.
    let raw = in_ns(&g.lab.ns("lan"), || {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    });
    assert_eq!(udp_exchange(&g, 2, Some(2)), 2);
    let c2 = counters(g.prefix());
    assert_eq!(delta(&c1, &c2, &fast(mode, "out")), 2, "{c2:?}");
    assert_eq!(
        ttls_on_arrival(&raw, 2),
        [1, 1],
        "TTL 2 arrives as 1 after one hop"
    );
}

/// The TTLs of the first `n` datagrams to lan's port 7100 that the raw socket `raw` saw
/// (fewer if they do not come within 2 s).
fn ttls_on_arrival(raw: &socket2::Socket, n: usize) -> Vec<u8> {
    let mut ttls = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(2);
    while ttls.len() < n && Instant::now() < deadline {
        let mut r = raw;
        let Ok(len) = r.read(&mut buf) else {
            break;
        };
        match packet::parse_ipv4(&buf[..len]) {
            Ok(p) if p.header.src == EXT && p.ports().is_some_and(|(_, d)| d == 7100) => {
                ttls.push(p.header.ttl)
            }
            _ => {}
        }
    }
    ttls
}
netns_tests::modes!(ttl_one_takes_the_slow_path_and_goes_no_further);

#[test]
fn fast_path_off_takes_every_packet_through_the_router() {
    if !privileged("fast_off") {
        return;
    }
    let g = lab("fpo", FastPath::Off);
    let rules = g.lab.status().unwrap().nat_rules.expect("eBPF NAT rules");
    assert!(
        rules.contains("fast path: off") && !rules.contains("nat_fast_out@") && !rules.contains("xdp_fast_"),
        "{rules}"
    );
    let _echo = UdpEcho::start(&g.lab.ns("lan"), &[7100]);
    assert_eq!(udp_exchange(&g, 20, None), 20);
    let c = counters(g.prefix());
    for mode in [FastPath::Tc, FastPath::Xdp] {
        assert_eq!((c[&fast(mode, "out")], c[&fast(mode, "in")]), (0, 0), "{c:?}");
    }
    assert_eq!((c["out_udp"], c["in_udp"]), (20, 20), "{c:?}");
}

/// A TCP connection carrying data: its handshake and close take the slow path, the data in
/// between the fast path, and the bytes arrive intact both ways.
fn a_tcp_connection_moves_between_the_paths(mode: FastPath) {
    if !privileged("fast_tcp") {
        return;
    }
    let g = lab(&tag("fpc", mode), mode);
    let server = netns::spawn_in(&g.lab.ns("lan"), |_stop, ready| {
        let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 7200)).unwrap();
        ready();
        let (mut c, peer) = l.accept().unwrap();
        let mut buf = vec![0u8; 65536];
        let mut total = 0;
        loop {
            let n = c.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n;
            c.write_all(&buf[..n]).unwrap();
        }
        (peer, total)
    })
    .expect("TCP server ready");
    let c0 = counters(g.prefix());
    in_ns(&g.lab.ns("red"), || {
        let mut s = TcpStream::connect(SocketAddrV4::new(LAN, 7200)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for i in 0..200u32 {
            let chunk: Vec<u8> = (0..1000u32).map(|j| (i * 7 + j) as u8).collect();
            s.write_all(&chunk).unwrap();
            let mut back = vec![0u8; chunk.len()];
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, chunk, "chunk {i} came back changed");
        }
    });
    let (peer, total) = server.stop().expect("server");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2)));
    assert_eq!(total, 200_000);
    let c1 = counters(g.prefix());
    assert!(delta(&c0, &c1, &fast(mode, "out")) >= 150, "{c1:?}");
    assert!(delta(&c0, &c1, &fast(mode, "in")) >= 150, "{c1:?}");
    // SYN and FIN (and the handshake's last ACK, before the flow is established) go slow.
    assert!(
        delta(&c0, &c1, "slow_tcp_flags") + delta(&c0, &c1, "slow_no_flow") >= 3,
        "{c1:?}"
    );
    assert!(delta(&c0, &c1, "out_tcp") >= 2, "{c1:?}");
}
netns_tests::modes!(a_tcp_connection_moves_between_the_paths);

/// Checks the UDP checksum of each datagram among `frames` (as they arrived on a wire) from
/// `src` to `dst` that `pick` takes by its ports: complete and valid, or partial (left for a
/// device to finish: a receiver trusts it unchecked) and then exactly the pseudo-header sum
/// of the packet as it is now, translated. Anything else is a checksum the NAT broke.
/// Returns (complete, partial).
fn checksums_on_arrival(
    frames: &[Vec<u8>],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    pick: impl Fn(u16, u16) -> bool,
) -> (usize, usize) {
    let mut n = (0, 0);
    for f in frames {
        let Ok((_, _, ip)) = packet::parse_frame(f) else {
            continue;
        };
        let ours = ip.header.src == src
            && ip.header.dst == dst
            && ip.header.proto == packet::PROTO_UDP
            && ip.ports().is_some_and(|(s, d)| pick(s, d));
        if !ours {
            continue;
        }
        assert!(ip.header_ok, "IPv4 header checksum: {ip:?}");
        if ip.l4_checksum_ok() {
            n.0 += 1;
            continue;
        }
        let check = u16::from_be_bytes([ip.data[6], ip.data[7]]);
        let len = ip.data.len() as u16;
        assert!(
            partial_checksum(check, u32::from(src), u32::from(dst), packet::PROTO_UDP, len),
            "a UDP checksum neither complete nor partial: {ip:?}"
        );
        n.1 += 1;
    }
    n
}

/// TX checksum offload on the senders, off first and then on (on is the kernel's default
/// for veth; the XDP mode turns it off on the peers of its ports). On, red and lan send
/// partial checksums (the pseudo-header's sum only): at TC the fast path takes them (the skb
/// helpers keep a partial checksum right); in XDP, which cannot see offload state, they are
/// recognised and handed to the slow path. A receiver trusts a partial checksum unchecked,
/// so every exchange passing proves little: each datagram is also read off the wire where
/// it arrives, and its checksum checked, partial or not.
fn checksum_offload_on_at_the_senders(mode: FastPath) {
    if !privileged("fast_offload") {
        return;
    }
    let g = lab(&tag("fpk", mode), mode);
    let (red, lan) = (g.lab.ns("red"), g.lab.ns("lan"));
    if mode == FastPath::Xdp {
        // What the lab set up for XDP.
        assert!(!ethtool::get(&red, "veth-red", Offload::TxChecksum).unwrap());
        assert!(ethtool::get(&red, "veth-red", Offload::Gro).unwrap());
        assert!(!ethtool::get(&lan, "lan0", Offload::TxChecksum).unwrap());
    }
    // Offload off first (in XDP it is already): XDP takes the packets on the fast path too.
    for (ns, dev) in [(&red, "veth-red"), (&lan, "lan0")] {
        ethtool::set(ns, dev, Offload::TxChecksum, false).unwrap();
    }
    let _echo = UdpEcho::start(&lan, &[7100]);
    assert_eq!(udp_exchange(&g, 10, None), 10);
    let c0 = counters(g.prefix());
    assert_eq!(c0["slow_partial_checksum"], 0, "{c0:?}");
    assert!(c0[&fast(mode, "out")] >= 9, "{c0:?}");
    for (ns, dev) in [(&red, "veth-red"), (&lan, "lan0")] {
        ethtool::set(ns, dev, Offload::TxChecksum, true).unwrap();
        assert!(ethtool::get(ns, dev, Offload::TxChecksum).unwrap());
    }
    let (at_lan, at_red) = (Wire::open(&lan, "lan0"), Wire::open(&red, "veth-red"));
    assert_eq!(udp_exchange(&g, 20, None), 20);
    let c1 = counters(g.prefix());
    // red's datagrams as lan got them, lan's answers as red got them.
    let out = checksums_on_arrival(&at_lan.received(Duration::from_millis(300)), EXT, LAN, |_, d| {
        d == 7100
    });
    let back = checksums_on_arrival(&at_red.received(Duration::ZERO), LAN, RED, |s, _| s == 7100);
    assert_eq!(
        (out.0 + out.1, back.0 + back.1),
        (20, 20),
        "every datagram seen: out {out:?}, back {back:?}"
    );
    if mode != FastPath::Xdp {
        // At TC they stay partial all the way: the check above saw the NAT's own updates
        // of partial checksums.
        assert!(
            out.1 > 0 && back.1 > 0,
            "offload in force: out {out:?}, back {back:?}"
        );
    }
    match mode {
        FastPath::Xdp => {
            // 20 datagrams out and 20 replies in, all partial.
            assert_eq!(delta(&c0, &c1, "slow_partial_checksum"), 40, "{c1:?}");
            assert_eq!(delta(&c0, &c1, &fast(mode, "out")), 0, "{c1:?}");
        }
        _ => {
            assert_eq!(delta(&c0, &c1, &fast(mode, "out")), 20, "{c1:?}");
            assert_eq!(delta(&c0, &c1, &fast(mode, "in")), 20, "{c1:?}");
        }
    }
    // The whole scenario, TCP and the port forward included.
    let checks = probe::check(&g.lab, Duration::from_secs(3)).unwrap();
    assert!(checks.iter().all(|c| c.passed), "{checks:#?}");
}
netns_tests::modes!(checksum_offload_on_at_the_senders);

/// In XDP the fast path cannot see a VLAN tag that a veth carries beside the frame (VLAN TX
/// offload, used by a VLAN interface on top of it): the lab turns that offload off on the
/// far ends of the XDP ports, so such a tag is in the frame, where the programs see it and
/// leave the frame alone. At TC the kernel has the tag in the packet's metadata, which the
/// programs read, so nothing is changed. (VLAN interfaces themselves cannot be made here:
/// this kernel has no CONFIG_VLAN_8021Q.) Then what arrives where: a tagged datagram of an
/// established flow, put on red's wire, does not cross the NAT (the same one untagged is
/// the fast path's), and a tagged broadcast reaches blue untranslated.
fn vlan_tags_stay_visible_to_the_fast_path(mode: FastPath) {
    if !privileged("fast_vlan") {
        return;
    }
    let g = lab(&tag("fpv", mode), mode);
    for (ns, iface) in [("red", "veth-red"), ("blue", "veth-blue"), ("lan", "lan0")] {
        let on = ethtool::get(&g.lab.ns(ns), iface, Offload::TxVlan).unwrap();
        assert_eq!(
            on,
            mode != FastPath::Xdp,
            "txvlan of {iface} with the fast path in {}",
            mode.name()
        );
    }
    // And traffic flows as before: red's flow to lan is established, on the fast path.
    let (red, lan) = (g.lab.ns("red"), g.lab.ns("lan"));
    let echo = UdpEcho::start(&lan, &[7100]);
    assert_eq!(udp_exchange(&g, 5, None), 5);

    let (red_wire, lan_wire) = (Wire::open(&red, "veth-red"), Wire::open(&lan, "lan0"));
    let blue_wire = Wire::open(&g.lab.ns("blue"), "veth-blue");
    let (red_mac, gw_mac) = (mac_of(&red, "veth-red"), mac_of(&g.lab.ns("host"), "v-net-0"));
    let of_the_flow =
        |payload: &[u8]| packet::ipv4_packet(&Ipv4::new(RED, LAN), &L4::udp(42000, 7100, payload));
    // VLAN 100 around an IPv4 packet.
    let tagged = |dst: [u8; 6], ip: &[u8]| {
        let mut p = vec![0x00, 100, 0x08, 0x00];
        p.extend_from_slice(ip);
        packet::ethernet(dst, red_mac, packet::ETH_P_8021Q, &p).to_vec()
    };
    let to_blue = packet::ipv4_packet(&Ipv4::new(RED, BLUE), &L4::udp(1000, 2000, b"tagged"));
    let c0 = counters(g.prefix());
    let seen = echo.seen().len();
    red_wire.send(&tagged(gw_mac, &of_the_flow(b"tagged"))).unwrap();
    red_wire.send(&tagged([0xff; 6], &to_blue)).unwrap();
    let at_lan = lan_wire.received(Duration::from_millis(300));
    let at_blue = blue_wire.received(Duration::ZERO);
    let c1 = counters(g.prefix());
    assert_eq!(
        (delta(&c0, &c1, &fast(mode, "out")), delta(&c0, &c1, "out_udp")),
        (0, 0),
        "the tagged datagram was translated: {c1:?}"
    );
    assert!(no_ipv4(&at_lan), "the tagged datagram crossed the NAT");
    assert_eq!(
        echo.seen().len(),
        seen,
        "the tagged datagram reached lan's socket"
    );
    // The kernel moves a tag out of the frame on receipt; the packet is blue's untouched.
    assert!(
        at_blue
            .iter()
            .any(|f| f.len() > packet::ETH_HLEN && f[packet::ETH_HLEN..] == to_blue[..]),
        "blue sees the tagged broadcast's packet untranslated"
    );
    // The control: the same datagram untagged is the fast path's, to lan.
    red_wire
        .send(&packet::ethernet(
            gw_mac,
            red_mac,
            packet::ETH_P_IP,
            &of_the_flow(b"untagged"),
        ))
        .unwrap();
    wait_for(
        Duration::from_secs(2),
        Duration::from_millis(20),
        || echo.seen().len() > seen,
        || "the untagged datagram never reached lan".into(),
    );
    let c2 = counters(g.prefix());
    assert_eq!(delta(&c1, &c2, &fast(mode, "out")), 1, "{c2:?}");
    let (_, from, len) = echo.seen()[seen];
    assert_eq!((*from.ip(), len), (EXT, 8), "translated");
}
netns_tests::modes!(vlan_tags_stay_visible_to_the_fast_path);
