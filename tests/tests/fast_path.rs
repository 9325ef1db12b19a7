//! The fast path at TC and in XDP, on real labs: established flows are redirected from the
//! bridge port to the uplink and back, skipping the bridge and routing, while a flow's first
//! packet, SYN/FIN, TTL-1 packets and (in XDP) partial checksums take the slow path;
//! conntrack counts both the same way. Each test runs in both modes.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use netns_tests::{LabGuard, UdpEcho, in_ns, privileged};
use netns_user::{
    config::{FastPath, LabConfig},
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

fn counters(prefix: &str) -> std::collections::BTreeMap<String, u64> {
    netns_user::ops::conntrack::stats(prefix)
        .unwrap()
        .counters
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn delta(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    name: &str,
) -> u64 {
    after[name] - before[name]
}

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
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
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
    // TTL 2 crosses (one hop), on the fast path, with the TTL decremented on the way.
    assert_eq!(udp_exchange(&g, 2, Some(2)), 2);
    let c2 = counters(g.prefix());
    assert_eq!(delta(&c1, &c2, &fast(mode, "out")), 2, "{c2:?}");
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

/// TX checksum offload on the senders (the kernel's default for veth; the XDP mode turns
/// it off on the peers of its ports, so this test turns it back on): at TC the fast path
/// takes the packets (the skb helpers keep a partial checksum right); in XDP, which cannot
/// see offload state, partial checksums are recognised and handed to the slow path. Either
/// way every exchange passes, and the UDP receivers of XDP-redirected frames, which arrive
/// without checksum status, verify every checksum themselves.
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
    // Offload off first: XDP takes the packets on the fast path too.
    let _echo = UdpEcho::start(&lan, &[7100]);
    assert_eq!(udp_exchange(&g, 10, None), 10);
    let c0 = counters(g.prefix());
    assert_eq!(c0["slow_partial_checksum"], 0, "{c0:?}");
    assert!(c0[&fast(mode, "out")] >= 9, "{c0:?}");
    for (ns, dev) in [(&red, "veth-red"), (&lan, "lan0")] {
        ethtool::set(ns, dev, Offload::TxChecksum, true).unwrap();
        assert!(ethtool::get(ns, dev, Offload::TxChecksum).unwrap());
    }
    assert_eq!(udp_exchange(&g, 20, None), 20);
    let c1 = counters(g.prefix());
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
/// leave the frame alone (hostile.rs sends tagged frames that way). At TC the kernel has the
/// tag in the packet's metadata, which the programs read, so nothing is changed. (VLAN
/// interfaces themselves cannot be made here: this kernel has no CONFIG_VLAN_8021Q.)
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
    // And traffic flows as before.
    let _echo = UdpEcho::start(&g.lab.ns("lan"), &[7100]);
    assert_eq!(udp_exchange(&g, 5, None), 5);
}
netns_tests::modes!(vlan_tags_stay_visible_to_the_fast_path);
