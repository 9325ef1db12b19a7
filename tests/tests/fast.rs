//! The fast path (`netns_common::fast`, the code the TC and XDP fast-path programs run) on the
//! host: frames and tables in memory (`netns_common::host`), the kernel's FIB, MTU check and
//! redirect as tables the test fills. No root needed. The live lab's fast path is
//! `fast_path.rs`.
//!
//! - An established flow's packets are translated, their TTL decremented, their MACs set
//!   from the next hop, and redirected: byte for byte the frame the packet builder makes
//!   (every checksum computed in full), and the same translation the slow path makes.
//! - Every reason to leave the fast path leaves the packet as it came and the flow as it
//!   was, and is counted as that reason.
//! - Internal hosts are learned behind their ports; the bridge sees them again in time.

use std::net::Ipv4Addr;

use netns_common::{
    counters::{Counter, NatCounter},
    fast::{self, ENODEV, FastTables},
    fwd::{
        FAST_TC, FAST_XDP, FastConfig, FdbEntry, MacKey, NextHop, PEER_PORTS, PEER_UPLINK, PORT_BRIDGE,
        PORT_UP, PortState,
    },
    host::{AtHook, Frame, MemTables, Route, Sizes},
    nat::{
        FlowKey, NatConfig, PROTO_TCP, PROTO_UDP, PortRange, TCP_ACK, TCP_FIN, TCP_SYN, TcpState, WireAddr,
        WirePort, addr_to_wire,
    },
    packet::{Action, Packet},
    translate::{self, Drop},
};
use netns_testkit::packet::{self, Ipv4, L4, Mac, assert_same};
use netns_user::{config::LabConfig, nat::ebpf as nat_ebpf};
use proptest::prelude::*;

const EXT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 3);
const BLUE: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 2);
const SEC: u64 = 1_000_000_000;

/// The router's interfaces: the uplink, the bridge and two of its ports.
const UPLINK: u32 = 10;
const BRIDGE: u32 = 20;
const PORT_A: u32 = 21;
const PORT_B: u32 = 22;
/// The bridge's MAC (the internal hosts' gateway), the uplink's, the next hop's outside and
/// the internal host's.
const GW_MAC: Mac = [2, 0, 0, 0, 0, 0x20];
const UP_MAC: Mac = [2, 0, 0, 0, 0, 0x10];
const NEXT_MAC: Mac = [2, 0, 0, 0, 0, 0x03];
const HOST_MAC: Mac = [2, 0, 0, 0, 0, 0x02];

type Tc = AtHook<FAST_TC>;
type Xdp = AtHook<FAST_XDP>;

/// The reference lab's NAT with the fast path on in `mode` (peer redirects on, the bridge
/// refreshed every `refresh_ns`), its ports up, and `adjust` applied to the configuration.
fn router(mode: u32, refresh_ns: u64, adjust: impl FnOnce(&mut NatConfig)) -> MemTables {
    let lab = LabConfig::reference();
    let spec = lab.nat.as_ref().expect("the reference lab has NAT");
    let mut cfg = nat_ebpf::nat_config(spec, EXT);
    adjust(&mut cfg);
    let mut t = MemTables::new(cfg, Sizes::default(), 7);
    t.fast = Some(FastConfig {
        mode,
        uplink_ifindex: UPLINK,
        gateway_mac: GW_MAC,
        flags: PEER_UPLINK | PEER_PORTS,
        bridge_refresh_ns: refresh_ns,
        bridge_ifindex: BRIDGE,
        hop_gen: 0,
        uplink_mac: UP_MAC,
        _pad: [0; 2],
    });
    let mut ports = t.ports.borrow_mut();
    ports.insert(
        BRIDGE,
        PortState {
            master: 0,
            flags: PORT_BRIDGE | PORT_UP,
        },
    );
    for p in [PORT_A, PORT_B] {
        ports.insert(
            p,
            PortState {
                master: BRIDGE,
                flags: PORT_UP,
            },
        );
    }
    ports.insert(
        UPLINK,
        PortState {
            master: 0,
            flags: PORT_UP,
        },
    );
    drop(ports);
    t
}

fn wire(a: Ipv4Addr) -> WireAddr {
    addr_to_wire(a)
}

/// The routes of the lab's router: the remote host out of the uplink, the internal host on
/// the bridge.
fn routes(remote: Ipv4Addr, host: Ipv4Addr) -> Vec<Route> {
    vec![
        Route {
            dst: wire(remote),
            answer: 0,
            hop: NextHop {
                ifindex: UPLINK,
                src_mac: UP_MAC,
                dst_mac: NEXT_MAC,
            },
            mtu: 0,
        },
        Route {
            dst: wire(host),
            answer: 0,
            hop: NextHop {
                ifindex: BRIDGE,
                src_mac: GW_MAC,
                dst_mac: HOST_MAC,
            },
            mtu: 0,
        },
    ]
}

fn tcp(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32, payload: &[u8]) -> L4<'_> {
    L4::tcp(sport, dport, flags, (seq, ack), 512, payload)
}

/// A packet of an internal host to the router's MAC, at the hook of bridge port `port`.
fn from_inside<const M: u32>(ip: &Ipv4, l4: &L4, port: u32, remote: Ipv4Addr) -> AtHook<M> {
    let mut f = Frame::new(packet::frame(GW_MAC, HOST_MAC, ip, l4).to_vec());
    f.ifindex = port;
    let mut h = AtHook::new(f);
    h.routes = routes(remote, ip.src);
    h
}

/// A packet from outside to the router's uplink.
fn from_outside<const M: u32>(ip: &Ipv4, l4: &L4, host: Ipv4Addr) -> AtHook<M> {
    let mut f = Frame::new(packet::frame(UP_MAC, NEXT_MAC, ip, l4).to_vec());
    f.ifindex = UPLINK;
    let mut h = AtHook::new(f);
    h.routes = routes(ip.src, host);
    h
}

/// The slow path's translation of a frame (the uplink's programs): the verdict.
fn slow(t: &MemTables, out: bool, ip: &Ipv4, l4: &L4) -> Result<Action, Drop> {
    let f = Frame::new(packet::frame(UP_MAC, NEXT_MAC, ip, l4).to_vec());
    if out {
        translate::egress(&f, t)
    } else {
        translate::ingress(&f, t)
    }
}

/// The flow of `host:sport` to `remote:rport`.
fn flow_of(
    t: &MemTables,
    proto: u8,
    host: Ipv4Addr,
    sport: u16,
    remote: Ipv4Addr,
    rport: u16,
) -> netns_common::nat::Flow {
    let key = FlowKey::new(
        proto,
        wire(host),
        WirePort::new(sport),
        wire(remote),
        WirePort::new(rport),
    );
    t.flows()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, f)| f)
        .expect("the flow exists")
}

/// The external port (host order) of a flow.
fn ext_port(t: &MemTables, proto: u8, sport: u16, rport: u16) -> u16 {
    flow_of(t, proto, BLUE, sport, LAN, rport).ext_port.get()
}

/// Opens a UDP flow blue:sport -> lan:rport through the slow path, answered and still active
/// after 2 s (confirmed); returns its external port.
fn open_udp(t: &MemTables, sport: u16, rport: u16) -> u16 {
    assert_eq!(
        slow(t, true, &Ipv4::new(BLUE, LAN), &L4::udp(sport, rport, b"hi")),
        Ok(Action::Pass)
    );
    let ext = ext_port(t, PROTO_UDP, sport, rport);
    assert_eq!(
        slow(t, false, &Ipv4::new(LAN, EXT), &L4::udp(rport, ext, b"ho")),
        Ok(Action::Pass)
    );
    t.advance(3 * SEC);
    assert_eq!(
        slow(t, true, &Ipv4::new(BLUE, LAN), &L4::udp(sport, rport, b"hi")),
        Ok(Action::Pass)
    );
    assert!(flow_of(t, PROTO_UDP, BLUE, sport, LAN, rport).confirmed());
    ext
}

/// Opens a TCP connection blue:sport -> lan:rport through the slow path to established (the
/// host's next sequence number is 8, the remote's 101); returns its external port.
fn open_tcp(t: &MemTables, sport: u16, rport: u16) -> u16 {
    assert_eq!(
        slow(
            t,
            true,
            &Ipv4::new(BLUE, LAN),
            &tcp(sport, rport, TCP_SYN, 7, 0, b"")
        ),
        Ok(Action::Pass)
    );
    let ext = ext_port(t, PROTO_TCP, sport, rport);
    assert_eq!(
        slow(
            t,
            false,
            &Ipv4::new(LAN, EXT),
            &tcp(rport, ext, TCP_SYN | TCP_ACK, 100, 8, b"")
        ),
        Ok(Action::Pass)
    );
    assert_eq!(
        slow(
            t,
            true,
            &Ipv4::new(BLUE, LAN),
            &tcp(sport, rport, TCP_ACK, 8, 101, b"")
        ),
        Ok(Action::Pass)
    );
    let f = flow_of(t, PROTO_TCP, BLUE, sport, LAN, rport);
    assert_eq!(f.state, TcpState::Established as u8);
    ext
}

/// Runs one outbound and one inbound packet of an open flow on the fast path at hook mode
/// `M` and checks each frame, redirect and counter.
fn round_trip<const M: u32>(proto: u8) {
    let t = router(M, 0, |_| {});
    let (sport, rport) = (5000, 7000);
    let ext = if proto == PROTO_TCP {
        open_tcp(&t, sport, rport)
    } else {
        open_udp(&t, sport, rport)
    };
    let before = flow_of(&t, proto, BLUE, sport, LAN, rport);
    let data = b"fast path payload";
    let (out_l4, out_want) = if proto == PROTO_TCP {
        (
            tcp(sport, rport, TCP_ACK, 8, 101, data),
            tcp(ext, rport, TCP_ACK, 8, 101, data),
        )
    } else {
        (L4::udp(sport, rport, data), L4::udp(ext, rport, data))
    };
    let out = from_inside::<M>(&Ipv4::new(BLUE, LAN), &out_l4, PORT_A, LAN);
    assert_eq!(fast::outbound(&out, &t), Ok(Action::Redirect));
    let want = packet::frame(NEXT_MAC, UP_MAC, &Ipv4::new(EXT, LAN).ttl(63), &out_want);
    assert_same(&out.frame.bytes(), &want);
    assert_eq!(out.redirected.get(), Some((UPLINK, true)));
    // Routed as the router would: from the port's bridge, from the external address.
    let q = out.queries.borrow()[0];
    assert_eq!((q.ifindex, q.src, q.dst), (BRIDGE, wire(EXT), wire(LAN)));
    assert_eq!((q.sport, q.dport), (WirePort::new(ext), WirePort::new(rport)));
    let after = flow_of(&t, proto, BLUE, sport, LAN, rport);
    assert_eq!(after.packets_out, before.packets_out + 1);
    assert_eq!(after.bytes_out, before.bytes_out + u64::from(out.frame.len()));

    let (in_l4, in_want) = if proto == PROTO_TCP {
        (
            tcp(rport, ext, TCP_ACK, 101, 8 + data.len() as u32, data),
            tcp(rport, sport, TCP_ACK, 101, 8 + data.len() as u32, data),
        )
    } else {
        (L4::udp(rport, ext, data), L4::udp(rport, sport, data))
    };
    let inb = from_outside::<M>(&Ipv4::new(LAN, EXT), &in_l4, BLUE);
    assert_eq!(fast::inbound(&inb, &t), Ok(Action::Redirect));
    let want = packet::frame(HOST_MAC, GW_MAC, &Ipv4::new(LAN, BLUE).ttl(63), &in_want);
    assert_same(&inb.frame.bytes(), &want);
    // To the port the host was seen behind (its outbound packet came in there).
    assert_eq!(inb.redirected.get(), Some((PORT_A, true)));
    assert_eq!(
        flow_of(&t, proto, BLUE, sport, LAN, rport).packets_in,
        after.packets_in + 1
    );

    let (c_out, c_in) = if M == FAST_XDP {
        (NatCounter::FastOutXdp, NatCounter::FastInXdp)
    } else {
        (NatCounter::FastOutTc, NatCounter::FastInTc)
    };
    assert_eq!((t.counter(c_out), t.counter(c_in)), (1, 1));
    // The uplink's own hooks count what skips them: in XDP both ways, at TC the outbound
    // packet sent into the uplink's peer.
    let skipped_in = u64::from(M == FAST_XDP);
    assert_eq!(t.uplink_counter(Counter::EgressPackets), 1);
    assert_eq!(t.uplink_counter(Counter::IngressPackets), skipped_in);
}

#[test]
fn an_established_udp_flow_takes_the_fast_path_both_ways_at_tc() {
    round_trip::<FAST_TC>(PROTO_UDP);
}

#[test]
fn an_established_udp_flow_takes_the_fast_path_both_ways_in_xdp() {
    round_trip::<FAST_XDP>(PROTO_UDP);
}

#[test]
fn an_established_tcp_connection_takes_the_fast_path_both_ways_at_tc() {
    round_trip::<FAST_TC>(PROTO_TCP);
}

#[test]
fn an_established_tcp_connection_takes_the_fast_path_both_ways_in_xdp() {
    round_trip::<FAST_XDP>(PROTO_TCP);
}

#[test]
fn the_fast_path_is_off_in_the_other_mode() {
    let t = router(FAST_XDP, 0, |_| {});
    open_udp(&t, 5000, 7000);
    let out = from_inside::<FAST_TC>(&Ipv4::new(BLUE, LAN), &L4::udp(5000, 7000, b"x"), PORT_A, LAN);
    let bytes = out.frame.bytes();
    assert_eq!(fast::outbound(&out, &t), Ok(Action::Pass));
    assert_eq!(out.frame.bytes(), bytes);
    assert_eq!(out.redirected.get(), None);
}

/// One way a packet must leave the fast path: what to change before it is sent, and the
/// reason it must be counted as.
struct Case {
    name: &'static str,
    outbound: bool,
    tcp: bool,
    want: NatCounter,
    /// Changes the tables, the packet (IPv4 header, L4) or the hook.
    setup: fn(&MemTables, &mut Ipv4, &mut u8, &mut Vec<Route>, &mut HookKnobs),
}

#[derive(Default)]
struct HookKnobs {
    refuse_redirect: bool,
    mtu: Option<i64>,
    /// Breaks the IPv4 header checksum.
    bad_ip_checksum: bool,
    /// Makes the UDP checksum the bare pseudo-header sum (offload left it to the device).
    partial_checksum: bool,
    /// A different remote port: no flow.
    other_port: bool,
    /// An ICMP echo request instead.
    icmp: bool,
}

fn cases() -> Vec<Case> {
    fn none(_: &MemTables, _: &mut Ipv4, _: &mut u8, _: &mut Vec<Route>, _: &mut HookKnobs) {}
    vec![
        Case {
            name: "no flow",
            outbound: true,
            tcp: false,
            want: NatCounter::SlowNoFlow,
            setup: |_, _, _, _, k| k.other_port = true,
        },
        Case {
            name: "no flow (inbound)",
            outbound: false,
            tcp: false,
            want: NatCounter::SlowNoFlow,
            setup: |_, _, _, _, k| k.other_port = true,
        },
        Case {
            name: "expired flow",
            outbound: true,
            tcp: false,
            want: NatCounter::SlowNoFlow,
            setup: |t, _, _, _, _| t.advance(301 * SEC),
        },
        Case {
            name: "FIN",
            outbound: true,
            tcp: true,
            want: NatCounter::SlowTcpFlags,
            setup: |_, _, flags, _, _| *flags |= TCP_FIN,
        },
        Case {
            name: "SYN (inbound)",
            outbound: false,
            tcp: true,
            want: NatCounter::SlowTcpFlags,
            setup: |_, _, flags, _, _| *flags |= TCP_SYN,
        },
        Case {
            name: "fragment",
            outbound: true,
            tcp: false,
            want: NatCounter::SlowFragment,
            setup: |_, ip, _, _, _| ip.more_fragments = true,
        },
        Case {
            name: "IP options",
            outbound: false,
            tcp: false,
            want: NatCounter::SlowIpOptions,
            setup: |_, ip, _, _, _| ip.options = vec![1, 1, 1, 0],
        },
        Case {
            name: "TTL 1",
            outbound: true,
            tcp: false,
            want: NatCounter::SlowTtl,
            setup: |_, ip, _, _, _| ip.ttl = 1,
        },
        Case {
            name: "ICMP",
            outbound: true,
            tcp: false,
            want: NatCounter::SlowProtocol,
            setup: |_, _, _, _, k| k.icmp = true,
        },
        Case {
            name: "IP checksum",
            outbound: true,
            tcp: false,
            want: NatCounter::SlowIpChecksum,
            setup: |_, _, _, _, k| k.bad_ip_checksum = true,
        },
        Case {
            name: "neighbour unresolved",
            outbound: true,
            tcp: false,
            want: NatCounter::SlowNoNeighbour,
            setup: |_, _, _, r, _| r[0].answer = 7,
        },
        Case {
            name: "fragmentation needed",
            outbound: true,
            tcp: false,
            want: NatCounter::SlowMtu,
            setup: |_, _, _, r, _| r[0].answer = 8,
        },
        Case {
            name: "no route",
            outbound: true,
            tcp: false,
            want: NatCounter::SlowPolicy,
            setup: |_, _, _, r, _| r.clear(),
        },
        Case {
            name: "routed elsewhere than the uplink",
            outbound: true,
            tcp: false,
            want: NatCounter::SlowPolicy,
            setup: |_, _, _, r, _| r[0].hop.ifindex = PORT_B,
        },
        Case {
            name: "redirect refused",
            outbound: true,
            tcp: false,
            want: NatCounter::RedirectFailed,
            setup: |_, _, _, _, k| k.refuse_redirect = true,
        },
        Case {
            name: "redirect refused (inbound)",
            outbound: false,
            tcp: false,
            want: NatCounter::RedirectFailed,
            setup: |_, _, _, _, k| k.refuse_redirect = true,
        },
        Case {
            name: "port down",
            outbound: false,
            tcp: false,
            want: NatCounter::SlowPolicy,
            setup: |t, _, _, _, _| t.ports.borrow_mut().get_mut(&PORT_A).unwrap().flags = 0,
        },
        Case {
            name: "port left the bridge",
            outbound: false,
            tcp: false,
            want: NatCounter::SlowPolicy,
            setup: |t, _, _, _, _| t.ports.borrow_mut().get_mut(&PORT_A).unwrap().master = 0,
        },
        Case {
            name: "too large for the port",
            outbound: false,
            tcp: false,
            want: NatCounter::SlowMtu,
            setup: |_, _, _, _, k| k.mtu = Some(1),
        },
        Case {
            name: "port gone",
            outbound: false,
            tcp: false,
            want: NatCounter::RedirectFailed,
            setup: |_, _, _, _, k| k.mtu = Some(ENODEV),
        },
        Case {
            name: "nothing wrong (the cases' control)",
            outbound: true,
            tcp: false,
            want: NatCounter::FastOutTc,
            setup: none,
        },
    ]
}

/// Runs `case` at TC on a router with an open flow (UDP or TCP) whose host was seen behind
/// PORT_A: the verdict, and whether the frame and the flow are as they were.
fn run_case(case: &Case) {
    let t = router(FAST_TC, 0, |c| c.timeouts.udp_ns = 300 * SEC);
    let (sport, rport) = (5000, 7000);
    let proto = if case.tcp { PROTO_TCP } else { PROTO_UDP };
    let ext = if case.tcp {
        open_tcp(&t, sport, rport)
    } else {
        open_udp(&t, sport, rport)
    };
    t.fdb.borrow_mut().insert(
        MacKey::of(HOST_MAC),
        FdbEntry {
            ifindex: PORT_A,
            _pad: 0,
            seen_ns: t_now(&t),
            bridged_ns: t_now(&t),
        },
    );
    let mut ip = if case.outbound {
        Ipv4::new(BLUE, LAN)
    } else {
        Ipv4::new(LAN, EXT)
    };
    let mut flags = TCP_ACK;
    let mut routes = routes(LAN, BLUE);
    let mut k = HookKnobs::default();
    (case.setup)(&t, &mut ip, &mut flags, &mut routes, &mut k);
    let rport = if k.other_port { rport + 1 } else { rport };
    let (seq, ack) = if case.outbound { (8, 101) } else { (101, 8) };
    let l4 = match (case.tcp, case.outbound) {
        _ if k.icmp => L4::echo(false, sport, 1, b"data"),
        (true, true) => tcp(sport, rport, flags, seq, ack, b"data"),
        (true, false) => tcp(rport, ext, flags, seq, ack, b"data"),
        (false, true) => L4::udp(sport, rport, b"data"),
        (false, false) => L4::udp(rport, ext, b"data"),
    };
    let (dst, src) = if case.outbound {
        (GW_MAC, HOST_MAC)
    } else {
        (UP_MAC, NEXT_MAC)
    };
    let mut bytes = packet::frame(dst, src, &ip, &l4).to_vec();
    let l4_off = 14 + ip.header_len();
    if k.bad_ip_checksum {
        bytes[14 + 10] ^= 0x40;
    }
    if k.partial_checksum {
        let len = (bytes.len() - l4_off) as u16;
        let sum = packet::pseudo_header_sum(ip.src, ip.dst, proto, len as usize);
        let folded = netns_common::csum::fold(sum);
        bytes[l4_off + 6..l4_off + 8].copy_from_slice(&folded.to_be_bytes());
    }
    let mut f = Frame::new(bytes.clone());
    f.ifindex = if case.outbound { PORT_A } else { UPLINK };
    let mut h: Tc = AtHook::new(f);
    h.routes = routes;
    h.refuse_redirect = k.refuse_redirect;
    if let Some(m) = k.mtu {
        h.mtu.insert(PORT_A, m);
    }
    let flow = flow_of(&t, proto, BLUE, sport, LAN, 7000);
    let r = if case.outbound {
        fast::outbound(&h, &t)
    } else {
        fast::inbound(&h, &t)
    };
    let name = case.name;
    if case.want == NatCounter::FastOutTc {
        assert_eq!(r, Ok(Action::Redirect), "{name}");
        return;
    }
    assert_eq!(r, Ok(Action::Pass), "{name}");
    assert_eq!(h.frame.bytes(), bytes, "{name}: the frame was changed");
    assert_eq!(
        flow_of(&t, proto, BLUE, sport, LAN, 7000),
        flow,
        "{name}: the flow was changed"
    );
    let counted: Vec<&str> = NatCounter::ALL
        .iter()
        .filter(|c| c.name().starts_with("slow") || c.name().starts_with("redirect"))
        .filter(|c| t.counter(**c) != 0)
        .map(|c| c.name())
        .collect();
    assert_eq!(
        t.counter(case.want),
        1,
        "{name}: not counted as its reason but as {counted:?}"
    );
    assert_eq!(
        t.counter(NatCounter::FastOutTc) + t.counter(NatCounter::FastInTc),
        0,
        "{name}"
    );
    assert_eq!(t.uplink_counter(Counter::EgressPackets), 0, "{name}");
}

fn t_now(t: &MemTables) -> u64 {
    use netns_common::translate::Tables;
    t.now()
}

#[test]
fn every_reason_to_leave_the_fast_path_leaves_the_packet_and_flow_as_they_were_and_is_counted() {
    for case in cases() {
        run_case(&case);
    }
}

#[test]
fn in_xdp_a_partial_checksum_takes_the_slow_path_and_at_tc_it_does_not() {
    // At TC the skb helpers keep an offloaded checksum right: the fast path may take it.
    let case = Case {
        name: "partial checksum",
        outbound: true,
        tcp: false,
        want: NatCounter::FastOutTc,
        setup: |_, _, _, _, k| k.partial_checksum = true,
    };
    run_case(&case);
    // In XDP it is left to the slow path, untouched.
    let t = router(FAST_XDP, 0, |_| {});
    open_udp(&t, 5000, 7000);
    let ip = Ipv4::new(BLUE, LAN);
    let mut bytes = packet::frame(GW_MAC, HOST_MAC, &ip, &L4::udp(5000, 7000, b"data")).to_vec();
    let sum = packet::pseudo_header_sum(BLUE, LAN, PROTO_UDP, bytes.len() - 34);
    bytes[34 + 6..34 + 8].copy_from_slice(&netns_common::csum::fold(sum).to_be_bytes());
    let mut f = Frame::new(bytes.clone());
    f.ifindex = PORT_A;
    let mut h: Xdp = AtHook::new(f);
    h.routes = routes(LAN, BLUE);
    assert_eq!(fast::outbound(&h, &t), Ok(Action::Pass));
    assert_eq!(h.frame.bytes(), bytes);
    assert_eq!(t.counter(NatCounter::SlowPartialChecksum), 1);
}

/// One datagram of the UDP flow 5000 -> 7000 from the host on `port`, redirected at TC.
fn out_from(t: &MemTables, port: u32) {
    let h: Tc = from_inside(&Ipv4::new(BLUE, LAN), &L4::udp(5000, 7000, b"x"), port, LAN);
    assert_eq!(fast::outbound(&h, t), Ok(Action::Redirect));
}

/// One answer of that flow to external port `ext`, redirected at TC: the port it went to.
fn in_to(t: &MemTables, ext: u16) -> Option<u32> {
    let h: Tc = from_outside(&Ipv4::new(LAN, EXT), &L4::udp(7000, ext, b"y"), BLUE);
    assert_eq!(fast::inbound(&h, t), Ok(Action::Redirect));
    h.redirected.get().map(|(port, _)| port)
}

#[test]
fn a_host_is_learned_behind_its_port_and_followed_when_it_moves() {
    let t = router(FAST_TC, 0, |_| {});
    let ext = open_udp(&t, 5000, 7000);
    out_from(&t, PORT_A);
    assert_eq!(in_to(&t, ext), Some(PORT_A));
    out_from(&t, PORT_B);
    assert_eq!(in_to(&t, ext), Some(PORT_B), "the host moved to port B");
}

#[test]
fn an_inbound_flow_looks_for_its_host_once_until_an_fdb_entry_changes() {
    let t = router(FAST_TC, 0, |_| {});
    let ext = open_udp(&t, 5000, 7000);
    out_from(&t, PORT_A);
    let before = t.fdb_lookups.get();
    for _ in 0..10 {
        assert_eq!(in_to(&t, ext), Some(PORT_A));
    }
    assert_eq!(
        t.fdb_lookups.get() - before,
        1,
        "the port is kept with the next hop"
    );
    // Another host appears behind port B: the FDB changed, so the port is looked for again
    // (once).
    t.fdb.borrow_mut().clear();
    let other = FdbEntry {
        ifindex: PORT_B,
        _pad: 0,
        seen_ns: t_now(&t),
        bridged_ns: t_now(&t),
    };
    t.insert_fdb(&MacKey::of([2, 0, 0, 0, 0, 0x99]), &other);
    out_from(&t, PORT_A);
    let before = t.fdb_lookups.get();
    assert_eq!(in_to(&t, ext), Some(PORT_A));
    assert_eq!(in_to(&t, ext), Some(PORT_A));
    assert_eq!(t.fdb_lookups.get() - before, 1);
}

#[test]
fn a_busy_host_costs_each_cpu_one_fdb_lookup_a_second() {
    let t = router(FAST_TC, 0, |_| {});
    open_udp(&t, 5000, 7000);
    let send = || out_from(&t, PORT_A);
    let before = t.fdb_lookups.get();
    for _ in 0..100 {
        send();
    }
    // The first frame finds no entry and adds one; the second finds it and notes it for
    // the rest.
    assert_eq!(
        t.fdb_lookups.get() - before,
        2,
        "lookups for 100 frames in a second"
    );
    t.advance(SEC);
    send();
    send();
    assert_eq!(t.fdb_lookups.get() - before, 3, "a second later, one more");
    t.cpu.set(1);
    send();
    send();
    assert_eq!(t.fdb_lookups.get() - before, 4, "another CPU has its own note");
}

#[test]
fn a_host_that_moves_away_and_back_within_a_second_is_followed_whatever_the_cpu() {
    let t = router(FAST_TC, 0, |_| {});
    let ext = open_udp(&t, 5000, 7000);
    let send_out = |cpu: usize, port: u32| {
        t.cpu.set(cpu);
        out_from(&t, port);
    };
    let send_in = || in_to(&t, ext);
    // CPU 0 notes the host behind port A; CPU 1 sees it move to B; back on A, CPU 0's note
    // is stale and the host is learned again.
    send_out(0, PORT_A);
    send_out(0, PORT_A);
    send_out(1, PORT_B);
    assert_eq!(send_in(), Some(PORT_B));
    send_out(0, PORT_A);
    assert_eq!(send_in(), Some(PORT_A), "the host came back to port A");
}

#[test]
fn a_host_that_keeps_sending_stays_in_the_fdb() {
    let t = router(FAST_TC, 0, |_| {});
    let ext = open_udp(&t, 5000, 7000);
    // Frames every half second for well past the FDB's freshness (30 s): each second one
    // of them writes the entry's age.
    for _ in 0..100 {
        out_from(&t, PORT_A);
        t.advance(SEC / 2);
    }
    assert_eq!(in_to(&t, ext), Some(PORT_A));
}

/// An inbound packet's verdict and where it was redirected (port, to its peer).
type Inbound = (Result<Action, Drop>, Option<(u32, bool)>);

/// A router whose fast path saw the host behind PORT_A, then `forget` made it forget;
/// returns the router and a function sending one inbound datagram of the flow: its verdict
/// and where it was redirected (checking the translation on a redirect).
fn forgetful<const M: u32>(forget: impl FnOnce(&MemTables)) -> (MemTables, impl Fn(&MemTables) -> Inbound) {
    let t = router(M, 10 * SEC, |c| c.timeouts.udp_ns = 300 * SEC);
    let ext = open_udp(&t, 5000, 7000);
    let h: AtHook<M> = from_inside(&Ipv4::new(BLUE, LAN), &L4::udp(5000, 7000, b"x"), PORT_A, LAN);
    let _ = fast::outbound(&h, &t);
    assert_eq!(
        t.fdb.borrow().get(&MacKey::of(HOST_MAC)).map(|e| e.ifindex),
        Some(PORT_A)
    );
    forget(&t);
    let send_in = move |t: &MemTables| {
        let h: AtHook<M> = from_outside(&Ipv4::new(LAN, EXT), &L4::udp(7000, ext, b"y"), BLUE);
        let verdict = fast::inbound(&h, t);
        if verdict == Ok(Action::Redirect) {
            let (dst_mac, _, ip) = packet::parse_frame(&h.frame.bytes()).expect("an IPv4 frame");
            assert_eq!(dst_mac, HOST_MAC);
            assert_eq!(ip.header.dst, BLUE);
            assert!(ip.header_ok && ip.l4_checksum_ok());
        }
        (verdict, h.redirected.get())
    };
    (t, send_in)
}

#[test]
fn a_host_the_fast_path_has_not_seen_gets_its_packets_through_the_bridge_at_tc_and_the_slow_path_in_xdp() {
    let unknown = |t: &MemTables| t.fdb.borrow_mut().clear();
    // Seen 31 s ago: older than the FDB's freshness (the flow's timeout is longer).
    let stale = |t: &MemTables| t.advance(31 * SEC);
    for (what, forget) in [("unknown", unknown as fn(&MemTables)), ("not seen lately", stale)] {
        let (t, send_in) = forgetful::<FAST_TC>(forget);
        let slow = t.counter(NatCounter::SlowNoNeighbour) + t.counter(NatCounter::SlowBridgeRefresh);
        for _ in 0..3 {
            assert_eq!(
                send_in(&t),
                (Ok(Action::Redirect), Some((BRIDGE, false))),
                "TC, host {what}: to the bridge's own transmit, not a port's peer"
            );
        }
        let now = t.counter(NatCounter::SlowNoNeighbour) + t.counter(NatCounter::SlowBridgeRefresh);
        assert_eq!(now, slow, "TC, host {what}: nothing on the slow path");

        let (t, send_in) = forgetful::<FAST_XDP>(forget);
        let slow = t.counter(NatCounter::SlowNoNeighbour);
        assert_eq!(send_in(&t), (Ok(Action::Pass), None), "XDP, host {what}");
        assert_eq!(
            t.counter(NatCounter::SlowNoNeighbour),
            slow + 1,
            "XDP, host {what}"
        );
    }
}

#[test]
fn a_host_reached_through_the_bridge_has_one_packet_a_refresh_period_take_the_slow_path() {
    // The slow path's packet makes the router use (and probe) its neighbour entry, whose
    // answer the bridge learns the host from: it never forgets the host and floods.
    let (t, send_in) = forgetful::<FAST_TC>(|t| t.fdb.borrow_mut().clear());
    let via_bridge = (Ok(Action::Redirect), Some((BRIDGE, false)));
    assert_eq!(send_in(&t), via_bridge);
    let refreshes = t.counter(NatCounter::SlowBridgeRefresh);
    t.advance(10 * SEC - 1);
    assert_eq!(send_in(&t), via_bridge);
    t.advance(1);
    assert_eq!(send_in(&t), (Ok(Action::Pass), None), "a refresh is due");
    assert_eq!(send_in(&t), via_bridge, "one packet was enough");
    assert_eq!(t.counter(NatCounter::SlowBridgeRefresh), refreshes + 1);
    // The host speaks again from its port: straight to it once more.
    let h: Tc = from_inside(&Ipv4::new(BLUE, LAN), &L4::udp(5000, 7000, b"x"), PORT_A, LAN);
    let _ = fast::outbound(&h, &t);
    assert_eq!(send_in(&t), (Ok(Action::Redirect), Some((PORT_A, true))));
}

#[test]
fn the_bridge_sees_a_new_host_and_then_each_host_again_every_refresh_period() {
    let refresh = 10 * SEC;
    let t = router(FAST_TC, refresh, |_| {});
    open_udp(&t, 5000, 7000);
    let send = || {
        let h: Tc = from_inside(&Ipv4::new(BLUE, LAN), &L4::udp(5000, 7000, b"x"), PORT_A, LAN);
        fast::outbound(&h, &t).unwrap()
    };
    // New here: the bridge learns it from this frame.
    assert_eq!(send(), Action::Pass);
    assert_eq!(send(), Action::Redirect);
    t.advance(refresh - 1);
    assert_eq!(send(), Action::Redirect);
    t.advance(1);
    assert_eq!(send(), Action::Pass, "a refresh is due");
    assert_eq!(send(), Action::Redirect, "one frame refreshes it");
    assert_eq!(t.counter(NatCounter::SlowBridgeRefresh), 2);
}

fn l4_for(proto: u8, zero: bool, sport: u16, dport: u16, payload: &[u8]) -> L4<'_> {
    if proto == PROTO_TCP {
        tcp(sport, dport, TCP_ACK, 8, 101, payload)
    } else {
        L4::Udp {
            sport,
            dport,
            payload,
            zero_checksum: zero,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// What the fast path sends is what the slow path would: the uplink's translation of the
    /// packet the kernel routed (TTL decremented), with the next hop's MAC addresses.
    #[test]
    fn the_fast_path_translates_as_the_slow_path_does(
        proto in prop::sample::select(vec![PROTO_UDP, PROTO_TCP]),
        zero in any::<bool>(),
        sport in 1u16..,
        rport in 1u16..,
        ttl in 2u8..,
        id in any::<u16>(),
        payload in prop::collection::vec(any::<u8>(), 0..64),
        xdp in any::<bool>(),
    ) {
        let mode = if xdp { FAST_XDP } else { FAST_TC };
        let t = router(mode, 0, |c| c.ports = PortRange::new(1024, 65535));
        let ext = if proto == PROTO_TCP { open_tcp(&t, sport, rport) } else { open_udp(&t, sport, rport) };
        let ip = Ipv4::new(BLUE, LAN).ttl(ttl).id(id);
        let l4 = l4_for(proto, zero, sport, rport, &payload);
        let got = if xdp {
            let h: Xdp = from_inside(&ip, &l4, PORT_A, LAN);
            prop_assert_eq!(fast::outbound(&h, &t), Ok(Action::Redirect));
            h.frame.bytes()
        } else {
            let h: Tc = from_inside(&ip, &l4, PORT_A, LAN);
            prop_assert_eq!(fast::outbound(&h, &t), Ok(Action::Redirect));
            h.frame.bytes()
        };
        // The slow path: routed (TTL - 1, the next hop's MACs), then the uplink's egress.
        let routed = Frame::new(packet::frame(NEXT_MAC, UP_MAC, &ip.clone().ttl(ttl - 1), &l4).to_vec());
        prop_assert_eq!(translate::egress(&routed, &t), Ok(Action::Pass));
        assert_same(&got, &routed.bytes());
        let want = packet::frame(NEXT_MAC, UP_MAC, &Ipv4::new(EXT, LAN).ttl(ttl - 1).id(id), &l4_for(proto, zero, ext, rport, &payload));
        assert_same(&got, &want);
    }
}

/// Sends an outbound UDP packet of blue:5000 -> lan:7000 through the fast path at hook `M`
/// with the router's routes changed by `reroute`; returns the hook as it left it.
fn send_out<const M: u32>(t: &MemTables, payload: &[u8], reroute: impl FnOnce(&mut Vec<Route>)) -> AtHook<M> {
    let mut out = from_inside::<M>(&Ipv4::new(BLUE, LAN), &L4::udp(5000, 7000, payload), PORT_A, LAN);
    reroute(&mut out.routes);
    fast::outbound(&out, t).expect("no drop");
    out
}

#[test]
fn a_flow_keeps_its_next_hop_until_the_routing_changes_or_eight_seconds_pass() {
    let mut t = router(FAST_TC, 0, |_| {});
    open_udp(&t, 5000, 7000);
    let first = send_out::<FAST_TC>(&t, b"one", |_| {});
    assert_eq!(
        first.queries.borrow().len(),
        1,
        "the first packet looks its next hop up"
    );
    // The route changes, unannounced: the flow keeps its next hop (no lookup at all).
    let moved: Mac = [2, 0, 0, 0, 0, 0x33];
    let reroute = |r: &mut Vec<Route>| r[0].hop.dst_mac = moved;
    let cached = send_out::<FAST_TC>(&t, b"two", reroute);
    assert!(
        cached.queries.borrow().is_empty(),
        "a cached next hop is not looked up"
    );
    assert_eq!(cached.frame.bytes()[..6], NEXT_MAC);
    // Announced (the agent moves the generation on): the next packet looks it up again.
    t.fast.as_mut().expect("fast path on").hop_gen += 1;
    let renewed = send_out::<FAST_TC>(&t, b"three", reroute);
    assert_eq!(renewed.queries.borrow().len(), 1);
    assert_eq!(renewed.frame.bytes()[..6], moved);
    // Unannounced again: good for 7.5 to 8.6 seconds, whatever was missed.
    let back = |r: &mut Vec<Route>| r[0].hop.dst_mac = NEXT_MAC;
    assert!(send_out::<FAST_TC>(&t, b"four", back).queries.borrow().is_empty());
    t.advance(7_000_000_000);
    let kept = send_out::<FAST_TC>(&t, b"five", back);
    assert!(kept.queries.borrow().is_empty(), "still cached after 7 s");
    assert_eq!(kept.frame.bytes()[..6], moved);
    t.advance(1_700_000_000);
    let aged = send_out::<FAST_TC>(&t, b"six", back);
    assert_eq!(aged.queries.borrow().len(), 1);
    assert_eq!(aged.frame.bytes()[..6], NEXT_MAC);
    assert_eq!(t.counter(NatCounter::FastOutTc), 6);
}

#[test]
fn a_cached_next_hop_still_sends_packets_over_its_mtu_to_the_slow_path() {
    let t = router(FAST_TC, 0, |_| {});
    open_udp(&t, 5000, 7000);
    let small_mtu = |r: &mut Vec<Route>| r[0].mtu = 100;
    send_out::<FAST_TC>(&t, b"fits", small_mtu);
    let big = send_out::<FAST_TC>(&t, &[7u8; 200], small_mtu);
    assert!(big.queries.borrow().is_empty(), "the cached next hop answered");
    assert_eq!(big.redirected.get(), None);
    assert_eq!(t.counter(NatCounter::SlowMtu), 1);
    assert_eq!(t.counter(NatCounter::FastOutTc), 1);
}

#[test]
fn xdp_looks_every_next_hop_up_since_its_lookup_tells_no_mtu() {
    let t = router(FAST_XDP, 0, |_| {});
    open_udp(&t, 5000, 7000);
    for payload in [b"one", b"two"] {
        let out = send_out::<FAST_XDP>(&t, payload, |_| {});
        assert_eq!(out.queries.borrow().len(), 1);
    }
    assert_eq!(t.counter(NatCounter::FastOutXdp), 2);
}

// Plain forwarding (`--nat none` with a fast path): `fast::routed` on the same router, with
// no NAT state.

const RED: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 1);

/// Runs one routed packet each way, blue <-> lan, at hook mode `M` with `l4` (lan's port
/// first when it is the source): each redirected to its next hop untranslated, the TTL one
/// lower and every checksum valid (the frames the packet builder makes), counted, and no
/// flow made.
fn routes_both_ways<const M: u32>(out_l4: &L4, in_l4: &L4) {
    let t = router(M, 0, |_| {});
    let out = from_inside::<M>(&Ipv4::new(BLUE, LAN), out_l4, PORT_A, LAN);
    assert_eq!(fast::routed(&out, &t), Ok(Action::Redirect));
    let want = packet::frame(NEXT_MAC, UP_MAC, &Ipv4::new(BLUE, LAN).ttl(63), out_l4);
    assert_same(&out.frame.bytes(), &want);
    assert_eq!(out.redirected.get(), Some((UPLINK, true)));
    // Routed as the router would: from the port's bridge, with the packet's own addresses.
    let q = out.queries.borrow()[0];
    assert_eq!((q.ifindex, q.src, q.dst), (BRIDGE, wire(BLUE), wire(LAN)));

    let inb = from_outside::<M>(&Ipv4::new(LAN, BLUE), in_l4, BLUE);
    assert_eq!(fast::routed(&inb, &t), Ok(Action::Redirect));
    let want = packet::frame(HOST_MAC, GW_MAC, &Ipv4::new(LAN, BLUE).ttl(63), in_l4);
    assert_same(&inb.frame.bytes(), &want);
    // To the port the host was seen behind (its outbound packet came in there).
    assert_eq!(inb.redirected.get(), Some((PORT_A, true)));
    let q = inb.queries.borrow()[0];
    assert_eq!((q.ifindex, q.src, q.dst), (UPLINK, wire(LAN), wire(BLUE)));

    let (c_out, c_in) = if M == FAST_XDP {
        (NatCounter::FastOutXdp, NatCounter::FastInXdp)
    } else {
        (NatCounter::FastOutTc, NatCounter::FastInTc)
    };
    assert_eq!((t.counter(c_out), t.counter(c_in)), (1, 1));
    assert!(t.flows().is_empty(), "plain forwarding keeps no flow");
}

#[test]
fn routed_udp_goes_straight_to_its_next_hop_both_ways_untranslated_at_tc() {
    routes_both_ways::<FAST_TC>(&L4::udp(5000, 7000, b"routed"), &L4::udp(7000, 5000, b"back"));
}

#[test]
fn routed_udp_goes_straight_to_its_next_hop_both_ways_untranslated_in_xdp() {
    routes_both_ways::<FAST_XDP>(&L4::udp(5000, 7000, b"routed"), &L4::udp(7000, 5000, b"back"));
}

#[test]
fn routed_tcp_and_icmp_take_it_too_whatever_their_flags() {
    // No state to advance: a SYN is forwarded like any segment, ICMP like any protocol.
    routes_both_ways::<FAST_TC>(
        &tcp(5000, 80, TCP_SYN, 7, 0, b""),
        &tcp(80, 5000, TCP_SYN | TCP_ACK, 100, 8, b""),
    );
    routes_both_ways::<FAST_TC>(&L4::echo(false, 9, 1, b"ping"), &L4::echo(true, 9, 1, b"ping"));
}

/// What plain forwarding must leave to the kernel, from a bridge port (blue -> lan): the
/// change to make, and the counter it is counted in (None: not the router's to route, not
/// counted).
#[expect(clippy::type_complexity, reason = "a table of cases")]
fn routed_cases() -> Vec<(
    &'static str,
    Option<NatCounter>,
    fn(&mut Ipv4, &mut AtHook<FAST_TC>, &MemTables),
)> {
    vec![
        ("last hop", Some(NatCounter::SlowTtl), |ip, _, _| {
            *ip = ip.clone().ttl(1)
        }),
        ("IP options", Some(NatCounter::SlowIpOptions), |ip, _, _| {
            ip.options = vec![1, 1, 1, 0]
        }),
        ("fragment", Some(NatCounter::SlowFragment), |ip, _, _| {
            ip.more_fragments = true
        }),
        ("no route", Some(NatCounter::SlowPolicy), |_, h, _| {
            h.routes.clear()
        }),
        (
            "unresolved neighbour",
            Some(NatCounter::SlowNoNeighbour),
            |_, h, _| h.routes[0].answer = netns_common::fwd::FIB_NO_NEIGH,
        ),
        ("too big", Some(NatCounter::SlowMtu), |_, h, _| {
            h.routes[0].answer = netns_common::fwd::FIB_FRAG_NEEDED
        }),
        (
            "back out the way it came",
            Some(NatCounter::SlowPolicy),
            |ip, h, _| {
                // To red, on the same bridge, through the router's MAC: the kernel redirects.
                ip.dst = RED;
                h.routes = routes(LAN, RED);
            },
        ),
        ("uplink down", Some(NatCounter::SlowPolicy), |_, _, t| {
            t.ports.borrow_mut().get_mut(&UPLINK).expect("listed").flags = 0
        }),
        ("redirect refused", Some(NatCounter::RedirectFailed), |_, h, _| {
            h.refuse_redirect = true
        }),
        // A FIB lookup routes a martian; the kernel's input path drops it.
        ("loopback source", Some(NatCounter::SlowPolicy), |ip, _, _| {
            ip.src = Ipv4Addr::LOCALHOST
        }),
        ("multicast source", Some(NatCounter::SlowPolicy), |ip, _, _| {
            ip.src = Ipv4Addr::new(224, 0, 0, 5)
        }),
        // Even where a route covers it (a default route, say).
        (
            "multicast destination",
            Some(NatCounter::SlowPolicy),
            |ip, h, _| {
                ip.dst = Ipv4Addr::new(239, 1, 2, 3);
                h.routes[0].dst = wire(ip.dst);
            },
        ),
        (
            "broadcast destination",
            Some(NatCounter::SlowPolicy),
            |ip, h, _| {
                ip.dst = Ipv4Addr::BROADCAST;
                h.routes[0].dst = wire(ip.dst);
            },
        ),
        ("another host's frame", None, |_, h, _| {
            h.frame = Frame::new(
                packet::frame(
                    HOST_MAC,
                    [2, 0, 0, 0, 0, 9],
                    &Ipv4::new(BLUE, LAN),
                    &L4::udp(1, 2, b"x"),
                )
                .to_vec(),
            );
            h.frame.ifindex = PORT_A;
        }),
    ]
}

#[test]
fn what_the_kernel_would_not_forward_this_way_is_left_to_it_untouched_and_counted() {
    for (name, want, setup) in routed_cases() {
        let t = router(FAST_TC, 0, |_| {});
        let mut ip = Ipv4::new(BLUE, LAN);
        let l4 = L4::udp(5000, 7000, b"data");
        // Twice (each setup is idempotent): once for the header, then on the hook built
        // from it, so that the frame's checksums match its header.
        let mut scratch = from_inside::<FAST_TC>(&ip, &l4, PORT_A, LAN);
        setup(&mut ip, &mut scratch, &t);
        let mut h = from_inside::<FAST_TC>(&ip, &l4, PORT_A, LAN);
        setup(&mut ip, &mut h, &t);
        let bytes = h.frame.bytes();
        let before: Vec<u64> = NatCounter::ALL.iter().map(|c| t.counter(*c)).collect();
        assert_eq!(fast::routed(&h, &t), Ok(Action::Pass), "{name}");
        assert_eq!(h.frame.bytes(), bytes, "{name}: the packet is as it came");
        assert!(
            h.redirected.get().is_none() || want == Some(NatCounter::RedirectFailed),
            "{name}: no redirect"
        );
        let moved: Vec<_> = NatCounter::ALL
            .iter()
            .zip(&before)
            .filter(|(c, b)| t.counter(**c) != **b)
            .map(|(c, _)| c)
            .collect();
        match want {
            Some(c) => assert_eq!(moved, [&c], "{name}"),
            None => assert!(moved.is_empty(), "{name}: counted {moved:?}"),
        }
    }
}

#[test]
fn a_bad_ip_header_checksum_is_the_kernels_to_drop() {
    let t = router(FAST_TC, 0, |_| {});
    let h = from_inside::<FAST_TC>(&Ipv4::new(BLUE, LAN), &L4::udp(5000, 7000, b"data"), PORT_A, LAN);
    let mut bytes = h.frame.bytes().to_vec();
    bytes[14 + 10] ^= 0x40;
    let mut bad = AtHook::<FAST_TC>::new(Frame::new(bytes.clone()));
    bad.frame.ifindex = PORT_A;
    bad.routes = h.routes.clone();
    assert_eq!(fast::routed(&bad, &t), Ok(Action::Pass));
    assert_eq!(bad.frame.bytes(), bytes);
    assert_eq!(t.counter(NatCounter::SlowIpChecksum), 1);
}

#[test]
fn plain_forwarding_is_off_in_the_other_mode_and_on_ports_it_does_not_serve() {
    let t = router(FAST_XDP, 0, |_| {});
    let h = from_inside::<FAST_TC>(&Ipv4::new(BLUE, LAN), &L4::udp(5000, 7000, b"x"), PORT_A, LAN);
    assert_eq!(fast::routed(&h, &t), Ok(Action::Pass));
    assert_eq!(h.redirected.get(), None);
    let t = router(FAST_TC, 0, |_| {});
    // A port the table does not know (not the bridge's, not the uplink).
    let h = from_inside::<FAST_TC>(&Ipv4::new(BLUE, LAN), &L4::udp(5000, 7000, b"x"), 99, LAN);
    assert_eq!(fast::routed(&h, &t), Ok(Action::Pass));
    assert_eq!(h.redirected.get(), None);
}

#[test]
fn a_packet_routed_to_an_interface_that_is_neither_uplink_nor_bridge_port_gets_a_plain_redirect() {
    // A third router interface (a dummy, a tunnel): the peer flags say nothing of it, and a
    // peer redirect to an interface without a peer in another namespace is lost.
    const OTHER: u32 = 30;
    let t = router(FAST_TC, 0, |_| {});
    t.ports.borrow_mut().insert(
        OTHER,
        PortState {
            master: 0,
            flags: PORT_UP,
        },
    );
    let l4 = L4::udp(7000, 5000, b"elsewhere");
    let mut h = from_outside::<FAST_TC>(&Ipv4::new(LAN, BLUE), &l4, BLUE);
    h.routes[1].hop.ifindex = OTHER;
    assert_eq!(fast::routed(&h, &t), Ok(Action::Redirect));
    assert_eq!(h.redirected.get(), Some((OTHER, false)));
}
