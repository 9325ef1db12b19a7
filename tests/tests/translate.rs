//! The NAT's packet steps (`netns_common::translate`, the code the eBPF programs run) on the
//! host, on frames and tables in memory (`netns_common::host`): property tests and a fuzz
//! target. No root needed. Debug builds check arithmetic overflow, so an overflow the
//! programs would wrap silently fails here.
//!
//! - Out then in gives back the original tuple, and every translated frame is byte for byte
//!   the frame the packet builder makes (every checksum computed in full) for the expected
//!   header values: incremental checksums equal full recomputation.
//! - ICMP errors quoting a translated packet, truncated at every length, come back exactly.
//! - Exhaustion: small tables and port ranges drop the excess, counted, without hurting
//!   established flows, and capacity comes back after expiry; nothing leaks.
//! - The fuzz target mutates valid frames of every kind (bounded in time by
//!   `NETNS_NAT_FUZZ_SECS`, default 5; seed from `NETNS_NAT_FUZZ_SEED`) and checks after each:
//!   no panic, the frame's length kept, checksums that were valid still valid, and the
//!   tables' invariants (a binding never by halves, a live flow's binding outliving it).

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use netns_common::{
    counters::NatCounter,
    host::{Frame, MemTables, Sizes},
    nat::{
        BindingKey, NatConfig, PROTO_ICMP, PROTO_TCP, PROTO_UDP, PortRange, SIDE_EXTERNAL, SIDE_REMOTE,
        TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Timeouts, WireAddr, WirePort, addr_to_wire,
    },
    packet::Action,
    translate::{self, Drop, Tables},
};
use netns_testkit::packet::{self, Ipv4, L4, Mac, assert_same, parse_frame};
use netns_user::{config::LabConfig, nat::ebpf as nat_ebpf};
use proptest::prelude::*;

const EXT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 3);
const BLUE: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 2);
const MAC_A: Mac = [2, 0, 0, 0, 0, 1];
const MAC_B: Mac = [2, 0, 0, 0, 0, 2];
const SEC: u64 = 1_000_000_000;

/// The reference lab's NAT (external address 192.168.1.2, TCP 80 forwarded to blue), with
/// `adjust` applied to its configuration.
fn nat_with(sizes: Sizes, seed: u32, adjust: impl FnOnce(&mut NatConfig)) -> MemTables {
    let lab = LabConfig::reference();
    let spec = lab.nat.as_ref().expect("the reference lab has NAT");
    let mut cfg = nat_ebpf::nat_config(spec, EXT);
    adjust(&mut cfg);
    let t = MemTables::new(cfg, sizes, seed);
    for f in nat_ebpf::static_bindings(spec) {
        for (k, b) in f.entries(addr_to_wire(EXT)) {
            t.put_binding(k, b);
        }
    }
    t
}

fn nat(seed: u32) -> MemTables {
    nat_with(Sizes::default(), seed, |_| {})
}

/// Port ranges (ports, low ports, echo identifiers) that all leave out `port`: a new mapping
/// of `port` must rewrite it, where ranges holding it would keep it (port preservation) and
/// a test could not tell a translated port from one left alone.
fn ranges_without(port: u16) -> impl FnOnce(&mut NatConfig) {
    move |c: &mut NatConfig| {
        c.ports = if port < 40000 {
            PortRange::new(40000, 65535)
        } else {
            PortRange::new(1024, 39999)
        };
        c.low_ports = if port < 512 {
            PortRange::new(512, 1023)
        } else {
            PortRange::new(1, 511)
        };
        c.icmp_ids = if port < 32768 {
            PortRange::new(32768, 65535)
        } else {
            PortRange::new(1, 32767)
        };
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Egress,
    Ingress,
    Hairpin,
}

/// Runs one step on a copy of `f`: the verdict and the frame as the step left it.
fn run(t: &MemTables, step: Step, f: &[u8]) -> (Result<Action, Drop>, Vec<u8>) {
    let frame = Frame::new(f.to_vec());
    let r = match step {
        Step::Egress => translate::egress(&frame, t),
        Step::Ingress => translate::ingress(&frame, t),
        Step::Hairpin => {
            translate::hairpin(&frame, t).map(|h| if h { Action::Redirect } else { Action::Pass })
        }
    };
    (r, frame.bytes())
}

fn frame(src: Ipv4Addr, dst: Ipv4Addr, l4: &L4) -> Vec<u8> {
    packet::frame(MAC_B, MAC_A, &Ipv4::new(src, dst), l4).to_vec()
}

fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> L4<'_> {
    tcp_at(sport, dport, flags, 7, 9, payload)
}

/// A TCP segment with its sequence and acknowledgement numbers (a RST or FIN must lie in the
/// receiver's window to change anything).
fn tcp_at(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32, payload: &[u8]) -> L4<'_> {
    L4::tcp(sport, dport, flags, (seq, ack), 512, payload)
}

/// The protocols of the round trips: (protocol, zero UDP checksum).
fn l4_of(proto: u8, zero: bool, sport: u16, dport: u16, payload: &[u8]) -> L4<'_> {
    match proto {
        PROTO_UDP => L4::Udp {
            sport,
            dport,
            payload,
            zero_checksum: zero,
        },
        PROTO_TCP => tcp(sport, dport, TCP_ACK, payload),
        // Echo: the identifier is the "port"; the reply carries it back.
        _ => L4::echo(dport == 0, sport, 1, payload),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Out then in: the reply reaches the original endpoint, and both translated frames are
    /// exactly what the builder makes for the expected headers. The ranges leave out the
    /// source port, so every case rewrites it (TCP and UDP ports, echo identifiers) and its
    /// checksum.
    #[test]
    fn out_then_in_gives_back_the_original_tuple(
        host in 1u8..=254,
        proto in prop::sample::select(vec![PROTO_UDP, PROTO_TCP, PROTO_ICMP]),
        zero in any::<bool>(),
        sport in 1u16..,
        rport in 1u16..,
        remote in (1u8..=223, any::<u8>(), any::<u8>(), 1u8..=254),
        payload in prop::collection::vec(any::<u8>(), 0..64),
        reply_payload in prop::collection::vec(any::<u8>(), 0..64),
        seed in any::<u32>(),
    ) {
        let int = Ipv4Addr::new(192, 168, 15, host);
        let rem = Ipv4Addr::new(remote.0, remote.1, remote.2, remote.3);
        prop_assume!(rem != EXT && !rem.octets().starts_with(&[192, 168, 15]));
        let t = nat_with(Sizes::default(), seed, ranges_without(sport));
        let rport = if proto == PROTO_ICMP { 1 } else { rport };
        let out = frame(int, rem, &l4_of(proto, zero, sport, rport, &payload));
        let (v, got) = run(&t, Step::Egress, &out);
        prop_assert_eq!(v, Ok(Action::Pass));
        let (_, _, ip) = parse_frame(&got).unwrap();
        prop_assert_eq!(ip.header.src, EXT);
        let ext_port = if proto == PROTO_ICMP {
            u16::from_be_bytes([ip.data[4], ip.data[5]])
        } else {
            ip.ports().unwrap().0
        };
        prop_assert_ne!(ext_port, sport, "the source port was not rewritten");
        assert_same(&got, &frame(EXT, rem, &l4_of(proto, zero, ext_port, rport, &payload)));

        // The reply (for ICMP, an echo reply: `dport` 0 marks it).
        let back = if proto == PROTO_ICMP {
            frame(rem, EXT, &l4_of(proto, zero, ext_port, 0, &reply_payload))
        } else {
            frame(rem, EXT, &l4_of(proto, zero, rport, ext_port, &reply_payload))
        };
        let (v, got) = run(&t, Step::Ingress, &back);
        prop_assert_eq!(v, Ok(Action::Pass));
        let want = if proto == PROTO_ICMP {
            frame(rem, int, &l4_of(proto, zero, sport, 0, &reply_payload))
        } else {
            frame(rem, int, &l4_of(proto, zero, rport, sport, &reply_payload))
        };
        assert_same(&got, &want);
        check_tables(&t);
    }

    /// The forward both ways: in to blue:80, blue's answer out from the external address.
    #[test]
    fn forwarded_connections_come_back_from_the_external_address(
        sport in 1u16..,
        remote in (1u8..=223, any::<u8>(), any::<u8>(), 1u8..=254),
        payload in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let rem = Ipv4Addr::new(remote.0, remote.1, remote.2, remote.3);
        prop_assume!(rem != EXT && !rem.octets().starts_with(&[192, 168, 15]));
        let t = nat(1);
        let (v, got) = run(&t, Step::Ingress, &frame(rem, EXT, &tcp(sport, 80, TCP_SYN, &payload)));
        prop_assert_eq!(v, Ok(Action::Pass));
        assert_same(&got, &frame(rem, BLUE, &tcp(sport, 80, TCP_SYN, &payload)));
        let (v, got) = run(&t, Step::Egress, &frame(BLUE, rem, &tcp(80, sport, TCP_SYN | TCP_ACK, &payload)));
        prop_assert_eq!(v, Ok(Action::Pass));
        assert_same(&got, &frame(EXT, rem, &tcp(80, sport, TCP_SYN | TCP_ACK, &payload)));
    }

    /// An ICMP error quoting a packet the NAT sent out, the quote cut at any length: either
    /// translated exactly (quote, outer address, every checksum) or, too short to name its
    /// flow, dropped; never passed half-translated. The quoted port (echo: identifier) was
    /// rewritten on the way out, so its restoration is checked too.
    #[test]
    fn icmp_errors_come_back_with_their_quote_at_any_length(
        proto in prop::sample::select(vec![PROTO_UDP, PROTO_TCP, PROTO_ICMP]),
        sport in 1u16..,
        payload in prop::collection::vec(any::<u8>(), 0..32),
        cut in 0usize..100,
        from_router in any::<bool>(),
    ) {
        let int = Ipv4Addr::new(192, 168, 15, 1);
        let t = nat_with(Sizes::default(), 7, ranges_without(sport));
        let (_, got) = run(&t, Step::Egress, &frame(int, LAN, &l4_of(proto, false, sport, 53, &payload)));
        let sent = got[packet::ETH_HLEN..].to_vec();
        let original = packet::ipv4_packet(&Ipv4::new(int, LAN), &l4_of(proto, false, sport, 53, &payload));
        // The source port (echo: the identifier, after type, code and checksum) went out
        // rewritten.
        let port_at = if proto == PROTO_ICMP { 24 } else { 20 };
        prop_assert_ne!(&sent[port_at..port_at + 2], &original[port_at..port_at + 2]);
        let cut = cut.min(sent.len());
        // From the remote itself, or from a router on the way (the outer source differs).
        let reporter = if from_router { Ipv4Addr::new(192, 168, 1, 254) } else { LAN };
        let error = |quote: &[u8], dst: Ipv4Addr| {
            frame(reporter, dst, &L4::Icmp { typ: 3, code: 3, rest: [0; 4], body: quote })
        };
        let (v, got) = run(&t, Step::Ingress, &error(&sent[..cut], EXT));
        // The quote must hold the inner header and the ports (echo: the identifier).
        let needed = 20 + if proto == PROTO_ICMP { 6 } else { 4 };
        if cut < needed {
            prop_assert_eq!(v, Err(Drop::Malformed));
        } else {
            prop_assert_eq!(v, Ok(Action::Pass));
            // A quoted L4 checksum cut in half cannot be updated and is left as it was
            // (as Linux leaves it): its one byte is the translated packet's.
            let mut want_quote = original[..cut].to_vec();
            let csum_at = 20 + match proto { PROTO_UDP => 6, PROTO_TCP => 16, _ => 2 };
            if cut == csum_at + 1 {
                want_quote[csum_at] = sent[csum_at];
            }
            assert_same(&got, &error(&want_quote, int));
        }
    }

    /// Random bytes after a valid Ethernet + IPv4 start never panic any step.
    #[test]
    fn arbitrary_bytes_never_panic(tail in prop::collection::vec(any::<u8>(), 0..120), ihl in 0u8..16) {
        let t = nat(3);
        let mut f = frame(Ipv4Addr::new(192, 168, 15, 1), LAN, &L4::udp(1, 2, &[]));
        f.truncate(packet::ETH_HLEN);
        f.push(0x40 | ihl);
        f.extend_from_slice(&tail);
        for step in [Step::Egress, Step::Ingress, Step::Hairpin] {
            let (_, out) = run(&t, step, &f);
            prop_assert_eq!(out.len(), f.len());
        }
        check_tables(&t);
    }
}

/// A header checksum that fails: dropped arriving (before it touches a flow), passed
/// leaving (the kernel checked it on the way in), untouched by hairpinning.
#[test]
fn bad_header_checksums_are_dropped_before_any_state() {
    let t = nat(4);
    let red = Ipv4Addr::new(192, 168, 15, 1);
    let (_, out) = run(&t, Step::Egress, &frame(red, LAN, &L4::udp(5000, 53, b"q")));
    let (_, _, ip) = parse_frame(&out).unwrap();
    let (ext_port, _) = ip.ports().unwrap();
    let before = t.flows();
    let mut reply = frame(LAN, EXT, &L4::udp(53, ext_port, b"a"));
    reply[packet::ETH_HLEN + 10] ^= 0x40;
    assert_eq!(
        run(&t, Step::Ingress, &reply),
        (Err(Drop::BadChecksum), reply.clone())
    );
    assert_eq!(t.flows(), before, "no flow refreshed");
    // With options too.
    let mut opts = Ipv4::new(LAN, EXT);
    opts.options = vec![1, 1, 1, 0];
    let mut f = packet::frame(MAC_B, MAC_A, &opts, &L4::udp(53, ext_port, b"a")).to_vec();
    assert_eq!(run(&t, Step::Ingress, &f).0, Ok(Action::Pass));
    f[packet::ETH_HLEN + 21] ^= 1;
    assert_eq!(run(&t, Step::Ingress, &f).0, Err(Drop::BadChecksum));
    // Leaving, the kernel has checked it already: translated like any (still failing).
    let mut leaving = frame(red, LAN, &L4::udp(5000, 53, b"q"));
    leaving[packet::ETH_HLEN + 10] ^= 0x40;
    assert_eq!(run(&t, Step::Egress, &leaving).0, Ok(Action::Pass));
    let mut hp = frame(red, EXT, &tcp(4000, 80, TCP_SYN, b""));
    hp[packet::ETH_HLEN + 10] ^= 1;
    assert_eq!(run(&t, Step::Hairpin, &hp), (Ok(Action::Pass), hp.clone()));
}

/// Hairpinning: red to the external address's port 80 reaches blue from the external
/// address, and blue's answer goes back to red the same way.
#[test]
fn hairpinned_connections_are_translated_both_ways() {
    let t = nat(9);
    let red = Ipv4Addr::new(192, 168, 15, 1);
    let (v, got) = run(
        &t,
        Step::Hairpin,
        &frame(red, EXT, &tcp(40000, 80, TCP_SYN, b"hi")),
    );
    assert_eq!(v, Ok(Action::Redirect));
    let (_, _, ip) = parse_frame(&got).unwrap();
    let (ext_port, _) = ip.ports().unwrap();
    assert_same(&got, &frame(EXT, BLUE, &tcp(ext_port, 80, TCP_SYN, b"hi")));
    let (v, got) = run(
        &t,
        Step::Hairpin,
        &frame(BLUE, EXT, &tcp(80, ext_port, TCP_SYN | TCP_ACK, b"")),
    );
    assert_eq!(v, Ok(Action::Redirect));
    assert_same(&got, &frame(EXT, red, &tcp(80, 40000, TCP_SYN | TCP_ACK, b"")));
    assert_eq!(t.counter(NatCounter::Hairpinned), 2);
}

/// A binding never exists by halves; a live flow's binding outlives it and is its own.
fn check_tables(t: &MemTables) {
    let now = t.now();
    let bindings: BTreeMap<_, _> = t
        .bindings()
        .into_iter()
        .map(|(k, b)| ((k.proto, k.side, k.addr, k.port), (k, b)))
        .collect();
    for (k, b) in bindings.values() {
        if k.side == SIDE_REMOTE {
            // An address-only mapping is one entry.
            continue;
        }
        let twin = if k.side == SIDE_EXTERNAL {
            BindingKey::internal(k.proto, b.int_addr, b.int_port)
        } else {
            BindingKey::external(k.proto, b.ext_addr, b.ext_port)
        };
        let other = t.binding(&twin);
        assert!(
            other.is_some_and(|o| o.int_addr == b.int_addr
                && o.int_port == b.int_port
                && o.ext_addr == b.ext_addr
                && o.ext_port == b.ext_port),
            "binding {k:?} -> {b:?} without its twin ({other:?})"
        );
    }
    for (k, f) in t.flows() {
        if f.expires_ns <= now {
            continue;
        }
        let b = t.binding(&BindingKey::of_flow(&k, f.ext_addr, f.ext_port));
        assert!(
            b.is_some_and(|b| b.int_addr == k.int_addr
                && b.int_port == k.int_port
                && b.free_at_ns() >= f.expires_ns),
            "live flow {k:?} ({f:?}) without its binding ({b:?})"
        );
    }
}

/// Issue 22: a protocol whose port range is exhausted costs nothing to the others or to
/// established flows: with every UDP port taken, new UDP endpoints are refused
/// (`drop_no_port`) while a new TCP connection and a new ping get theirs, and the
/// established UDP flow's packets pass both ways.
#[test]
fn an_exhausted_range_costs_no_other_protocol_or_established_flow() {
    let t = nat_with(Sizes::default(), 9, |c| {
        c.ports = PortRange::new(20000, 20015);
        c.low_ports = PortRange::new(20000, 20015);
    });
    let red = Ipv4Addr::new(192, 168, 15, 1);
    let (v, got) = run(&t, Step::Egress, &frame(red, LAN, &L4::udp(5000, 53, b"q")));
    assert_eq!(v, Ok(Action::Pass));
    let kept = parse_frame(&got).unwrap().2.ports().unwrap().0;
    let mut refused = 0;
    for i in 0..40u16 {
        let host = Ipv4Addr::new(192, 168, 15, 10 + i as u8);
        match run(&t, Step::Egress, &frame(host, LAN, &L4::udp(6000 + i, 53, b"x"))).0 {
            Ok(Action::Pass) => {}
            Err(Drop::NoPort) => refused += 1,
            other => panic!("datagram {i}: {other:?}"),
        }
    }
    assert_eq!(refused, 40 - 15, "UDP exhausted");
    let blue = Ipv4Addr::new(192, 168, 15, 2);
    let (v, got) = run(&t, Step::Egress, &frame(blue, LAN, &tcp(7000, 443, TCP_SYN, b"")));
    assert_eq!(v, Ok(Action::Pass), "a new TCP connection");
    let (sport, _) = parse_frame(&got).unwrap().2.ports().unwrap();
    assert!((20000..=20015).contains(&sport), "TCP has its own ports: {sport}");
    let (v, _) = run(
        &t,
        Step::Egress,
        &frame(blue, LAN, &L4::echo(false, 77, 1, b"ping")),
    );
    assert_eq!(v, Ok(Action::Pass), "a new ping");
    // The established flow, both ways.
    let (v, _) = run(&t, Step::Egress, &frame(red, LAN, &L4::udp(5000, 53, b"again")));
    assert_eq!(v, Ok(Action::Pass));
    let (v, got) = run(&t, Step::Ingress, &frame(LAN, EXT, &L4::udp(53, kept, b"answer")));
    assert_eq!(v, Ok(Action::Pass));
    assert_same(&got, &frame(LAN, red, &L4::udp(53, 5000, b"answer")));
}

/// A small port range and small tables: a flood of new flows from inside and of
/// unsolicited packets from outside. The excess is dropped and counted, the established
/// flow goes on, capacity returns after expiry, and the tables drain to empty.
#[test]
fn exhaustion_drops_the_excess_and_recovers() {
    let sizes = Sizes {
        bindings: 64,
        flows: 48,
        frags: 8,
    };
    let t = nat_with(sizes, 5, |c| {
        c.ports = PortRange::new(20000, 20015);
        c.low_ports = PortRange::new(20000, 20015);
        c.timeouts = Timeouts {
            udp_ns: 30 * SEC,
            ..c.timeouts
        };
    });
    let red = Ipv4Addr::new(192, 168, 15, 1);
    // An established flow first.
    let (v, got) = run(&t, Step::Egress, &frame(red, LAN, &L4::udp(5000, 53, b"q")));
    assert_eq!(v, Ok(Action::Pass));
    let (_, _, ip) = parse_frame(&got).unwrap();
    let (kept_port, _) = ip.ports().unwrap();

    // 16 ports for 200 endpoints: the first 15 others get one, the rest are refused.
    let mut refused = 0;
    for i in 0..200u16 {
        let host = Ipv4Addr::new(192, 168, 15, 10 + (i % 100) as u8);
        match run(&t, Step::Egress, &frame(host, LAN, &L4::udp(6000 + i, 53, b"x"))).0 {
            Ok(Action::Pass) => {}
            Err(Drop::NoPort) => refused += 1,
            other => panic!("flood packet {i}: {other:?}"),
        }
    }
    assert_eq!(refused, 185, "every free port used once, the rest refused");
    // Many flows on existing endpoints (new remotes): the flow table fills, then refuses.
    let mut full = 0;
    for i in 0..100u8 {
        match run(
            &t,
            Step::Egress,
            &frame(red, Ipv4Addr::new(192, 168, 1, 100 + i), &L4::udp(5000, 53, b"y")),
        )
        .0
        {
            Ok(Action::Pass) => {}
            Err(Drop::MapFull) => full += 1,
            other => panic!("flow {i}: {other:?}"),
        }
    }
    assert_eq!(t.flows().len(), sizes.flows);
    assert_eq!(
        full,
        100 - (sizes.flows - 16),
        "the flows beyond the table refused"
    );
    assert!(t.bindings().len() <= sizes.bindings);
    // Unsolicited from outside to mapped and unmapped ports: refused or passed to the
    // router's own stack, none creating state.
    let before = (t.flows().len(), t.bindings().len());
    let mut unsolicited = 0;
    for p in 19990..20030u16 {
        match run(
            &t,
            Step::Ingress,
            &frame(Ipv4Addr::new(10, 9, 8, 7), EXT, &L4::udp(1234, p, b"z")),
        )
        .0
        {
            Err(Drop::Unsolicited) => unsolicited += 1,
            Ok(Action::Pass) => {}
            other => panic!("port {p}: {other:?}"),
        }
    }
    assert_eq!((t.flows().len(), t.bindings().len()), before);
    assert_eq!(unsolicited, 16, "every mapped port refuses");
    assert_eq!(t.counter(NatCounter::InUnmapped), 24);
    // The established flow is unaffected, both ways.
    assert_eq!(
        run(&t, Step::Egress, &frame(red, LAN, &L4::udp(5000, 53, b"q"))).0,
        Ok(Action::Pass)
    );
    let (v, got) = run(&t, Step::Ingress, &frame(LAN, EXT, &L4::udp(53, kept_port, b"a")));
    assert_eq!(v, Ok(Action::Pass));
    assert_same(&got, &frame(LAN, red, &L4::udp(53, 5000, b"a")));
    check_tables(&t);

    // After expiry (bindings are held a quarter timeout longer) and a sweep, capacity is
    // back: the tables are not LRU, so a full one never evicts a live flow.
    t.advance(40 * SEC);
    t.sweep();
    let late = Ipv4Addr::new(192, 168, 15, 250);
    assert_eq!(
        run(&t, Step::Egress, &frame(late, LAN, &L4::udp(7000, 53, b"n"))).0,
        Ok(Action::Pass)
    );
    t.advance(40 * SEC);
    t.sweep();
    // Only the forward's static entries are left.
    assert!(t.flows().is_empty(), "{:?}", t.flows());
    assert!(
        t.bindings().iter().all(|(_, b)| b.is_static()),
        "{:?}",
        t.bindings()
    );
}

/// An expired mapping is decided once: its endpoint coming back takes it back (same port,
/// expiry pushed into the future, so no search can reclaim it after), and a search that
/// reclaimed it first leaves that endpoint a new port, never a shared one.
#[test]
fn an_expired_mapping_goes_to_one_side_only() {
    let t = nat_with(
        Sizes {
            bindings: 64,
            flows: 64,
            frags: 8,
        },
        9,
        |c| {
            // One port: whoever has it, has it alone.
            c.ports = PortRange::new(30000, 30000);
            c.timeouts = Timeouts {
                udp_ns: 30 * SEC,
                ..c.timeouts
            };
        },
    );
    let (a, b) = (Ipv4Addr::new(192, 168, 15, 1), Ipv4Addr::new(192, 168, 15, 2));
    let out_port = |host, remote| {
        let (v, got) = run(&t, Step::Egress, &frame(host, remote, &L4::udp(5000, 53, b"q")));
        v.map(|_| parse_frame(&got).unwrap().2.ports().unwrap().0)
    };
    assert_eq!(out_port(a, LAN), Ok(30000));
    // Expired, nobody swept: a comes back first, to a new remote, and keeps its port...
    t.advance(60 * SEC);
    assert_eq!(out_port(a, Ipv4Addr::new(192, 168, 1, 77)), Ok(30000));
    let ext = t
        .bindings()
        .into_iter()
        .find(|(k, b)| k.side == SIDE_EXTERNAL && !b.is_static())
        .unwrap()
        .1;
    assert!(ext.expires_ns > t.now(), "taken back with a new expiry: {ext:?}");
    // ... so b finds no port.
    assert_eq!(out_port(b, LAN), Err(Drop::NoPort));
    check_tables(&t);

    // Expired again: this time b's search comes first and reclaims the port...
    t.advance(60 * SEC);
    assert_eq!(out_port(b, LAN), Ok(30000));
    // ... and a, whose mapping is gone, cannot share it.
    assert_eq!(out_port(a, LAN), Err(Drop::NoPort));
    let owners: Vec<_> = t
        .bindings()
        .into_iter()
        .filter(|(k, b)| k.side == SIDE_EXTERNAL && !b.is_static())
        .map(|(_, b)| b.int_addr)
        .collect();
    assert_eq!(owners, [netns_common::nat::addr_to_wire(b)]);
    check_tables(&t);
}

/// A closed TCP connection gives its port back after the closed timeout, not after the
/// established one: a flood of short connections from many hosts does not exhaust the range.
#[test]
fn closed_tcp_connections_give_their_ports_back() {
    let t = nat_with(Sizes::default(), 11, |c| {
        c.ports = PortRange::new(30000, 30003);
    });
    let closed = t.config().unwrap().timeouts.tcp_transitory_ns;
    for round in 0..3u8 {
        for h in 0..4u8 {
            let host = Ipv4Addr::new(192, 168, 15, 20 + round * 4 + h);
            let sport = 41000;
            let out = |flags, seq, ack| {
                run(
                    &t,
                    Step::Egress,
                    &frame(host, LAN, &tcp_at(sport, 443, flags, seq, ack, b"")),
                )
                .0
            };
            assert_eq!(
                out(TCP_SYN, 100, 0),
                Ok(Action::Pass),
                "round {round} host {h}: a port"
            );
            let ext = t
                .flows()
                .into_iter()
                .find(|(k, _)| k.int_addr == addr_to_wire(host))
                .map(|(_, f)| f.ext_port)
                .unwrap();
            let back = |flags, seq, ack| {
                run(
                    &t,
                    Step::Ingress,
                    &frame(LAN, EXT, &tcp_at(443, ext.get(), flags, seq, ack, b"")),
                )
                .0
            };
            assert_eq!(back(TCP_SYN | TCP_ACK, 500, 101), Ok(Action::Pass));
            assert_eq!(out(TCP_ACK, 101, 501), Ok(Action::Pass));
            assert_eq!(out(TCP_FIN | TCP_ACK, 101, 501), Ok(Action::Pass));
            assert_eq!(back(TCP_FIN | TCP_ACK, 501, 102), Ok(Action::Pass));
            assert_eq!(out(TCP_ACK, 102, 502), Ok(Action::Pass));
        }
        // Every port is held by a closed connection for the transitory timeout (RFC 5382
        // REQ-5), then free.
        let late = Ipv4Addr::new(192, 168, 15, 200);
        let syn = |t: &MemTables| {
            run(
                t,
                Step::Egress,
                &frame(late, LAN, &tcp(41000 + u16::from(round), 443, TCP_SYN, b"")),
            )
            .0
        };
        assert_eq!(syn(&t), Err(Drop::NoPort), "round {round}: held while closing");
        t.advance(closed / 2);
        assert_eq!(syn(&t), Err(Drop::NoPort), "round {round}: still held");
        t.advance(closed);
    }
    check_tables(&t);
}

/// A TCP mapping shared by two connections (one endpoint, two remotes): when one closes and
/// the transitory timeout passes, the other still holds the port, and its replies still
/// reach it, however hard other endpoints ask for ports.
#[test]
fn an_open_connection_keeps_its_port_when_a_sibling_closes() {
    let t = nat_with(Sizes::default(), 13, |c| {
        c.ports = PortRange::new(30000, 30000);
    });
    let red = Ipv4Addr::new(192, 168, 15, 1);
    let (a, b) = (Ipv4Addr::new(192, 168, 1, 10), Ipv4Addr::new(192, 168, 1, 11));
    // Sequence numbers: the inside host's from 100, the remote's from 500.
    let out = |to: Ipv4Addr, flags, seq, ack| {
        run(
            &t,
            Step::Egress,
            &frame(red, to, &tcp_at(41000, 443, flags, seq, ack, b"")),
        )
        .0
    };
    let back = |from: Ipv4Addr, flags, seq, ack| {
        run(
            &t,
            Step::Ingress,
            &frame(from, EXT, &tcp_at(443, 30000, flags, seq, ack, b"")),
        )
    };
    for remote in [a, b] {
        assert_eq!(out(remote, TCP_SYN, 100, 0), Ok(Action::Pass));
        assert_eq!(back(remote, TCP_SYN | TCP_ACK, 500, 101).0, Ok(Action::Pass));
        assert_eq!(out(remote, TCP_ACK, 101, 501), Ok(Action::Pass));
    }
    // a closes both ways.
    assert_eq!(out(a, TCP_FIN | TCP_ACK, 101, 501), Ok(Action::Pass));
    assert_eq!(back(a, TCP_FIN | TCP_ACK, 501, 102).0, Ok(Action::Pass));
    assert_eq!(out(a, TCP_ACK, 102, 502), Ok(Action::Pass));
    let closed = t.config().unwrap().timeouts.tcp_transitory_ns;
    for _ in 0..4 {
        t.advance(closed);
        t.sweep();
        // Others ask for the one port: it is b's.
        let other = Ipv4Addr::new(192, 168, 15, 77);
        assert_eq!(
            run(&t, Step::Egress, &frame(other, b, &tcp(50000, 443, TCP_SYN, b""))).0,
            Err(Drop::NoPort)
        );
        let (v, got) = back(b, TCP_ACK, 501, 101);
        assert_eq!(v, Ok(Action::Pass));
        assert_same(&got, &frame(b, red, &tcp_at(443, 41000, TCP_ACK, 501, 101, b"")));
        assert_eq!(out(b, TCP_ACK, 101, 501), Ok(Action::Pass));
        check_tables(&t);
    }
    // b closes: after the transitory timeout the port is free.
    assert_eq!(out(b, TCP_RST, 101, 0), Ok(Action::Pass));
    t.advance(closed + 1);
    let other = Ipv4Addr::new(192, 168, 15, 77);
    assert_eq!(
        run(&t, Step::Egress, &frame(other, b, &tcp(50000, 443, TCP_SYN, b""))).0,
        Ok(Action::Pass)
    );
}

/// What the threats look like packet by packet (the live-lab tests in threats.rs
/// show them end to end).
#[test]
fn hostile_packets_are_refused_before_any_state() {
    let t = nat(21);
    let red = Ipv4Addr::new(192, 168, 15, 1);
    let stranger = Ipv4Addr::new(10, 1, 2, 3);
    // To an internal address from outside; from an internal source or the external address.
    assert_eq!(
        run(&t, Step::Ingress, &frame(stranger, red, &L4::udp(1, 2, b"x"))).0,
        Err(Drop::Inbound)
    );
    assert_eq!(
        run(&t, Step::Ingress, &frame(red, EXT, &L4::udp(1, 2, b"x"))).0,
        Err(Drop::Spoofed)
    );
    assert_eq!(
        run(&t, Step::Ingress, &frame(EXT, EXT, &L4::udp(1, 2, b"x"))).0,
        Err(Drop::Spoofed)
    );
    // An internal source leaving by the interface it came in by (routed back out).
    let f = Frame::new(frame(red, LAN, &L4::udp(40000, 53, b"x")));
    let (f_in, f_out) = (7, 7);
    let mut f = f;
    f.ifindex = f_out;
    f.arrived_on = f_in;
    assert_eq!(translate::egress(&f, &t), Err(Drop::Spoofed));
    // A bare ACK to the forward opens nothing; a SYN does.
    assert_eq!(
        run(
            &t,
            Step::Ingress,
            &frame(stranger, EXT, &tcp_at(9000, 80, TCP_ACK, 1, 1, b""))
        )
        .0,
        Err(Drop::NotSyn)
    );
    assert!(t.flows().is_empty(), "{:?}", t.flows());
    assert_eq!(
        run(
            &t,
            Step::Ingress,
            &frame(stranger, EXT, &tcp_at(9000, 80, TCP_SYN, 1, 0, b""))
        )
        .0,
        Ok(Action::Pass)
    );
    let (_, f) = t.flows()[0];
    assert!(!f.confirmed());
    assert_eq!(
        f.expires_ns,
        t.now() + t.config().unwrap().timeouts.unconfirmed_ns
    );
}

/// An established connection's flow is confirmed only by the handshake's last ACK, and a
/// RST or FIN outside the window changes nothing.
#[test]
fn the_window_decides_which_rst_counts() {
    let t = nat(22);
    let red = Ipv4Addr::new(192, 168, 15, 1);
    let out = |flags, seq, ack| {
        run(
            &t,
            Step::Egress,
            &frame(red, LAN, &tcp_at(41000, 443, flags, seq, ack, b"")),
        )
        .0
    };
    let back = |flags, seq, ack| {
        run(
            &t,
            Step::Ingress,
            &frame(LAN, EXT, &tcp_at(443, 41000, flags, seq, ack, b"")),
        )
        .0
    };
    assert_eq!(out(TCP_SYN, 100, 0), Ok(Action::Pass));
    assert_eq!(back(TCP_SYN | TCP_ACK, 500, 101), Ok(Action::Pass));
    let flow = || t.flows()[0].1;
    assert!(!flow().confirmed(), "the SYN-ACK alone does not confirm");
    assert_eq!(out(TCP_ACK, 101, 501), Ok(Action::Pass));
    assert!(flow().confirmed(), "the last ACK of the handshake confirms");
    let state = flow().state;
    for seq in [0u32, 100_000, 501 + 2 * 512 + 1] {
        assert_eq!(back(TCP_RST, seq, 0), Err(Drop::OutOfWindow), "seq {seq}");
        assert_eq!(
            back(TCP_FIN | TCP_ACK, seq, 101),
            Err(Drop::OutOfWindow),
            "seq {seq}"
        );
    }
    assert_eq!(flow().state, state);
    assert_eq!(back(TCP_RST, 501, 0), Ok(Action::Pass));
    assert_eq!(flow().state, netns_common::nat::TcpState::Closed as u8);
}

/// An ICMP error leaving for the uplink from an internal address other than the quoted
/// host's (a router between it and this one) takes the external address as its source too:
/// no internal address leaves by the uplink, as with MASQUERADE.
#[test]
fn an_icmp_error_from_another_internal_host_leaves_from_the_external_address() {
    let red = Ipv4Addr::new(192, 168, 15, 1);
    let hop = Ipv4Addr::new(192, 168, 15, 7);
    let t = nat_with(Sizes::default(), 23, ranges_without(40000));
    let (_, out) = run(&t, Step::Egress, &frame(red, LAN, &L4::udp(40000, 53, b"query")));
    let ext_port = parse_frame(&out).unwrap().2.ports().unwrap().0;
    assert_ne!(ext_port, 40000);
    // The answer, let in towards red, meets a dead end at the hop, which reports it.
    let (v, _) = run(
        &t,
        Step::Ingress,
        &frame(LAN, EXT, &L4::udp(53, ext_port, b"answer")),
    );
    assert_eq!(v, Ok(Action::Pass));
    let error = |src: Ipv4Addr, quote: &[u8]| {
        frame(
            src,
            LAN,
            &L4::Icmp {
                typ: 3,
                code: 1,
                rest: [0; 4],
                body: quote,
            },
        )
    };
    let quote_in = packet::ipv4_packet(&Ipv4::new(LAN, red), &L4::udp(53, 40000, b"answer"));
    let quote_out = packet::ipv4_packet(&Ipv4::new(LAN, EXT), &L4::udp(53, ext_port, b"answer"));
    let (v, got) = run(&t, Step::Egress, &error(hop, &quote_in));
    assert_eq!(v, Ok(Action::Pass));
    assert_same(&got, &error(EXT, &quote_out));
    // And an address outside the internal prefix (a router on the uplink's side) is kept.
    let outside = Ipv4Addr::new(10, 9, 9, 9);
    let (v, got) = run(&t, Step::Egress, &error(outside, &quote_in));
    assert_eq!(v, Ok(Action::Pass));
    assert_same(&got, &error(outside, &quote_out));
}

/// When the external address changes, the programs alone (before any maintenance) treat
/// flows and mappings on the old one as gone: the next packet leaves with the new address.
#[test]
fn a_flow_never_outlives_its_address() {
    let mut t = nat(23);
    let red = Ipv4Addr::new(192, 168, 15, 1);
    let (_, got) = run(&t, Step::Egress, &frame(red, LAN, &L4::udp(40000, 53, b"a")));
    assert_eq!(parse_frame(&got).unwrap().2.header.src, EXT);
    let new = Ipv4Addr::new(192, 168, 1, 4);
    t.cfg.as_mut().unwrap().ext_addr = addr_to_wire(new);
    let (v, got) = run(&t, Step::Egress, &frame(red, LAN, &L4::udp(40000, 53, b"b")));
    assert_eq!(v, Ok(Action::Pass));
    assert_eq!(parse_frame(&got).unwrap().2.header.src, new);
    // A reply to the old address is no longer the NAT's.
    let (v, got) = run(&t, Step::Ingress, &frame(LAN, EXT, &L4::udp(53, 40000, b"c")));
    assert_eq!(
        (v, parse_frame(&got).unwrap().2.header.dst),
        (Ok(Action::Pass), EXT)
    );
}

/// SYNs to the forward on port 80 from `n` sources, each let in (a new unconfirmed flow).
fn syns_to_the_forward(t: &MemTables, n: u32) {
    for i in 0..n {
        let src = Ipv4Addr::from(0x0a00_0000 + i);
        let (v, _) = run(
            t,
            Step::Ingress,
            &frame(src, EXT, &tcp_at(9000, 80, TCP_SYN, 1, 0, b"")),
        );
        assert_eq!(v, Ok(Action::Pass), "SYN {i}");
    }
}

/// A full flow table evicts the oldest unconfirmed inbound flow before it refuses a new
/// one; flows opened from inside are never evicted.
#[test]
fn a_full_table_evicts_unconfirmed_inbound_flows_only() {
    let t = nat_with(
        Sizes {
            bindings: 64,
            flows: 8,
            frags: 8,
        },
        24,
        |_| {},
    );
    let red = Ipv4Addr::new(192, 168, 15, 1);
    for i in 0..4u16 {
        let (v, _) = run(
            &t,
            Step::Egress,
            &frame(red, LAN, &L4::udp(40000 + i, 53, b"out")),
        );
        assert_eq!(v, Ok(Action::Pass));
    }
    // Twenty SYNs to the forward from twenty sources: four places, evicted in turn.
    syns_to_the_forward(&t, 20);
    assert_eq!(t.counter(NatCounter::EvictedUnconfirmed), 16);
    let outbound = t
        .flows()
        .iter()
        .filter(|(k, _)| k.int_addr == addr_to_wire(red))
        .count();
    assert_eq!(outbound, 4, "red's flows stay");
    // A new outbound flow finds room too.
    let (v, _) = run(&t, Step::Egress, &frame(red, LAN, &L4::udp(40010, 53, b"out")));
    assert_eq!(v, Ok(Action::Pass));
    check_tables(&t);
}

/// Two CPUs find the table full at once: the room one's eviction makes may be taken by the
/// other's new flow before its own insert; it evicts again rather than refuse the flow.
#[test]
fn a_new_flow_evicts_again_when_another_cpu_takes_its_room() {
    let t = nat_with(
        Sizes {
            bindings: 64,
            flows: 8,
            frags: 8,
        },
        26,
        |_| {},
    );
    syns_to_the_forward(&t, 8);
    assert_eq!(t.flows().len(), 8, "the table is full");
    // Twice the other CPU takes the room made.
    t.rivals.set(2);
    let red = Ipv4Addr::new(192, 168, 15, 1);
    let (v, _) = run(&t, Step::Egress, &frame(red, LAN, &L4::udp(40000, 53, b"out")));
    assert_eq!(v, Ok(Action::Pass));
    assert_eq!(t.rivals.get(), 0);
    assert_eq!(t.counter(NatCounter::EvictedUnconfirmed), 3);
    assert_eq!(t.counter(NatCounter::DropMapFull), 0);
    assert!(
        t.flows().iter().any(|(k, _)| k.int_addr == addr_to_wire(red)),
        "red's flow is in"
    );
}

/// A port the router's own socket is bound to is never a mapping's, and what a router
/// socket takes is the router's.
#[test]
fn the_port_search_skips_the_routers_own_ports() {
    let t = nat(25);
    let red = Ipv4Addr::new(192, 168, 15, 1);
    t.router_sockets.borrow_mut().insert((
        PROTO_UDP,
        addr_to_wire(EXT),
        WirePort::new(40000),
        WireAddr::UNSPECIFIED,
        WirePort::ZERO,
    ));
    let (_, got) = run(&t, Step::Egress, &frame(red, LAN, &L4::udp(40000, 53, b"x")));
    let port = parse_frame(&got).unwrap().2.ports().unwrap().0;
    assert_ne!(port, 40000, "the router's port was given to red");
    // A socket bound later on red's external port, for a remote red never talked to.
    t.router_sockets.borrow_mut().insert((
        PROTO_UDP,
        addr_to_wire(EXT),
        WirePort::new(port),
        WireAddr::UNSPECIFIED,
        WirePort::ZERO,
    ));
    let (v, got) = run(
        &t,
        Step::Ingress,
        &frame(Ipv4Addr::new(192, 168, 1, 9), EXT, &L4::udp(7, port, b"y")),
    );
    assert_eq!(v, Ok(Action::Pass));
    assert_eq!(parse_frame(&got).unwrap().2.header.dst, EXT, "left to the router");
    assert_eq!(t.counter(NatCounter::DropUnsolicited), 0);
}

/// A protocol without ports is translated by address only, byte for byte, and one internal
/// host at a time talks it with one remote.
#[test]
fn protocols_without_ports_get_address_only_translation() {
    let t = nat(26);
    let (red, blue) = (Ipv4Addr::new(192, 168, 15, 1), Ipv4Addr::new(192, 168, 15, 2));
    let gre = L4::Raw {
        proto: 47,
        bytes: b"a gre payload",
    };
    let (v, got) = run(&t, Step::Egress, &frame(red, LAN, &gre));
    assert_eq!(v, Ok(Action::Pass));
    assert_same(&got, &frame(EXT, LAN, &gre));
    let (v, got) = run(&t, Step::Ingress, &frame(LAN, EXT, &gre));
    assert_eq!(v, Ok(Action::Pass));
    assert_same(&got, &frame(LAN, red, &gre));
    assert_eq!(
        run(&t, Step::Egress, &frame(blue, LAN, &gre)).0,
        Err(Drop::NoPort)
    );
    check_tables(&t);
}

/// Item 9 of issue 17: fragments that come before their first are held, and once the first
/// is through, sent again (as the kernel's program does, through the same step) and
/// translated; those of a datagram that is the router's own are only forgotten; a held one
/// past the reassembly time is never sent, and a first fragment's decision expires too.
#[test]
fn reordered_fragments_are_held_then_sent_again_translated() {
    let t = nat(27);
    let red = Ipv4Addr::new(192, 168, 15, 1);
    let payload = [5u8; 96];
    let dgram = |src, dst, sport, dport| packet::l4_bytes(src, dst, &L4::udp(sport, dport, &payload));
    let ip = |src, dst, id| {
        let mut ip = Ipv4::new(src, dst).id(id);
        ip.proto = PROTO_UDP;
        ip
    };
    let eth = |b: &[u8]| packet::ethernet(MAC_B, MAC_A, packet::ETH_P_IP, b).to_vec();
    let frags: Vec<Vec<u8>> = packet::fragments(&ip(red, LAN, 0x77), &dgram(red, LAN, 41000, 7000), 32)
        .iter()
        .map(|f| eth(f))
        .collect();
    assert!(frags.len() >= 4);
    // Last to second: held, never out untranslated.
    for f in frags[1..].iter().rev() {
        assert_eq!(run(&t, Step::Egress, f).0, Err(Drop::Held));
    }
    assert_eq!(t.held_count(), frags.len() - 1);
    let (v, first) = run(&t, Step::Egress, &frags[0]);
    assert_eq!(v, Ok(Action::Pass));
    let releases = t.take_releases();
    assert_eq!(releases.len(), 1);
    let (key, local) = releases[0];
    assert!(!local);
    let mut again = Vec::new();
    let sent = translate::frags::release(&t, &key, local, |h| {
        again.push(run(&t, Step::Egress, &h.bytes[..h.len as usize]));
        true
    });
    assert_eq!(sent as usize, frags.len() - 1);
    assert_eq!(t.held_count(), 0);
    // Every fragment as the NAT must send it: from the external address, the first's UDP
    // checksum covering the translated datagram.
    let ext_port = parse_frame(&first).unwrap().2.ports().unwrap().0;
    let want = packet::fragments(&ip(EXT, LAN, 0x77), &dgram(EXT, LAN, ext_port, 7000), 32);
    assert_same(&first, &eth(&want[0]));
    again.sort_by_key(|(_, f)| parse_frame(f).unwrap().2.header.frag_offset);
    for ((v, got), want) in again.iter().zip(&want[1..]) {
        assert_eq!(*v, Ok(Action::Pass));
        assert_same(got, &eth(want));
    }
    assert_eq!(t.counter(NatCounter::FragmentsReplayed) as usize, frags.len() - 1);

    // The router's own datagram (an echo request to the external address): its early
    // fragments went on to the router; held too, they are forgotten, not sent again.
    let echo = packet::l4_bytes(LAN, EXT, &L4::echo(false, 9, 1, &payload));
    let mut eip = Ipv4::new(LAN, EXT).id(0x78);
    eip.proto = PROTO_ICMP;
    let efrags: Vec<Vec<u8>> = packet::fragments(&eip, &echo, 32)
        .iter()
        .map(|f| eth(f))
        .collect();
    for f in efrags[1..].iter().rev() {
        let (v, got) = run(&t, Step::Ingress, f);
        assert_eq!((v, &got), (Ok(Action::Pass), f), "on to the router, untouched");
    }
    assert_eq!(run(&t, Step::Ingress, &efrags[0]).0, Ok(Action::Pass));
    let (key, local) = t.take_releases()[0];
    assert!(local);
    assert_eq!(translate::frags::release(&t, &key, local, |_| true), 0);
    assert_eq!(t.held_count(), 0);

    // Held past the reassembly time: forgotten, not sent.
    let late = packet::fragments(&ip(red, LAN, 0x79), &dgram(red, LAN, 41001, 7000), 32);
    assert_eq!(run(&t, Step::Egress, &eth(&late[1])).0, Err(Drop::Held));
    t.advance(31 * SEC);
    assert_eq!(run(&t, Step::Egress, &eth(&late[0])).0, Ok(Action::Pass));
    let (key, local) = t.take_releases()[0];
    assert_eq!(translate::frags::release(&t, &key, local, |_| true), 0);
    assert_eq!(t.held_count(), 0);
    // The first datagram's decision has expired too: a late fragment of it is held again,
    // not translated by what its first decided 31 s ago.
    assert_eq!(run(&t, Step::Egress, &frags[1]).0, Err(Drop::Held));
    check_tables(&t);
}

/// Frames of every kind the NAT meets, each with the step that meets it: the fuzz target's
/// seeds. Their flows are opened first, so that mutations reach the deep paths.
fn corpus(t: &MemTables) -> Vec<(Step, Vec<u8>)> {
    let red = Ipv4Addr::new(192, 168, 15, 1);
    let mut out = Vec::new();
    // A protocol without ports, both ways.
    let gre = L4::Raw {
        proto: 47,
        bytes: &[0x11; 24],
    };
    let f = frame(red, LAN, &gre);
    let _ = run(t, Step::Egress, &f);
    out.push((Step::Egress, f));
    out.push((Step::Ingress, frame(LAN, EXT, &gre)));
    let payload = [0x5au8; 40];
    for proto in [PROTO_UDP, PROTO_TCP, PROTO_ICMP] {
        let f = frame(red, LAN, &l4_of(proto, false, 3333, 53, &payload));
        let (_, sent) = run(t, Step::Egress, &f);
        out.push((Step::Egress, f));
        let (_, _, ip) = parse_frame(&sent).unwrap();
        let ext_port = if proto == PROTO_ICMP {
            u16::from_be_bytes([ip.data[4], ip.data[5]])
        } else {
            ip.ports().unwrap().0
        };
        let reply = if proto == PROTO_ICMP {
            frame(LAN, EXT, &l4_of(proto, false, ext_port, 0, &payload))
        } else {
            frame(LAN, EXT, &l4_of(proto, false, 53, ext_port, &payload))
        };
        out.push((Step::Ingress, reply));
        let quote = &sent[packet::ETH_HLEN..];
        let err = |q: &[u8]| {
            frame(
                LAN,
                EXT,
                &L4::Icmp {
                    typ: 3,
                    code: 3,
                    rest: [0; 4],
                    body: q,
                },
            )
        };
        out.push((Step::Ingress, err(quote)));
        out.push((Step::Ingress, err(&quote[..28])));
        // An error about a packet let in, leaving.
        let q = packet::ipv4_packet(&Ipv4::new(LAN, red), &l4_of(proto, false, 53, 3333, &payload));
        out.push((
            Step::Egress,
            frame(
                red,
                LAN,
                &L4::Icmp {
                    typ: 11,
                    code: 0,
                    rest: [0; 4],
                    body: &q,
                },
            ),
        ));
    }
    // Fragments both ways, IP options, the forward, hairpinning.
    let mut ip = Ipv4::new(red, LAN).id(77);
    ip.proto = PROTO_UDP;
    let data = packet::l4_bytes(red, LAN, &L4::udp(3333, 53, &[1u8; 64]));
    for fr in packet::fragments(&ip, &data, 32) {
        out.push((
            Step::Egress,
            packet::ethernet(MAC_B, MAC_A, packet::ETH_P_IP, &fr).to_vec(),
        ));
    }
    let mut opts = Ipv4::new(red, LAN);
    opts.options = vec![1, 1, 1, 0];
    out.push((
        Step::Egress,
        packet::frame(MAC_B, MAC_A, &opts, &L4::udp(3333, 53, b"o")).to_vec(),
    ));
    out.push((Step::Ingress, frame(LAN, EXT, &tcp(5555, 80, TCP_SYN, b""))));
    out.push((Step::Hairpin, frame(red, EXT, &tcp(4444, 80, TCP_SYN, b"h"))));
    for (step, f) in &out {
        let _ = run(t, *step, f);
    }
    out
}

/// A small deterministic generator: a failing case replays from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of a frame: bytes flipped or set to boundary values (mostly in the
/// headers), length fields and flags changed, the frame cut or extended.
fn mutate(r: &mut Rng, f: &mut Vec<u8>) {
    const INTERESTING: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, 0x45, 0x20, 0x40];
    for _ in 0..1 + r.below(4) {
        let head = f.len().min(96);
        match r.below(8) {
            0 | 1 => {
                let i = r.below(head);
                f[i] ^= 1 << r.below(8);
            }
            2 => {
                let i = r.below(head);
                f[i] = INTERESTING[r.below(INTERESTING.len())];
            }
            3 => {
                let i = r.below(f.len());
                f[i] = r.next() as u8;
            }
            // IHL, total length, fragment flags and offset, protocol.
            4 => {
                if f.len() > 24 {
                    match r.below(4) {
                        0 => f[14] = 0x40 | r.below(16) as u8,
                        1 => {
                            let l = r.below(f.len() + 40) as u16;
                            f[16..18].copy_from_slice(&l.to_be_bytes());
                        }
                        2 => f[20] ^= [0x20, 0x1f, 0x40, 0x3f][r.below(4)],
                        _ => f[23] = [1, 6, 17, 0, 47][r.below(5)],
                    }
                }
            }
            5 => f.truncate(r.below(f.len() + 1)),
            6 => {
                let n = r.below(32);
                f.extend((0..n).map(|_| r.next() as u8));
            }
            _ => {
                // Copy a header-sized piece from elsewhere (a quote's header over the outer).
                let (a, b) = (r.below(f.len()), r.below(f.len()));
                let n = r.below(20).min(f.len() - a).min(f.len() - b);
                let piece = f[a..a + n].to_vec();
                f[b..b + n].copy_from_slice(&piece);
            }
        }
        if f.is_empty() {
            break;
        }
    }
}

/// Whether the frame is a whole, consistent IPv4 packet whose checksums verify: such a
/// packet must come out of any step with checksums that still verify.
fn sound(f: &[u8]) -> bool {
    let Ok((_, _, ip)) = parse_frame(f) else {
        return false;
    };
    // Total length within the frame (the rest is padding); the reader stops at it.
    ip.total_len >= ip.header_len
        && ip.total_len <= f.len() - packet::ETH_HLEN
        && !ip.is_fragment()
        && ip.header_ok
        && ip.l4_checksum_ok()
}

#[test]
fn fuzz_mutated_frames() {
    let secs: u64 = std::env::var("NETNS_NAT_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let seed: u64 = std::env::var("NETNS_NAT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
        | 1;
    println!("fuzz: seed {seed} (NETNS_NAT_FUZZ_SEED replays it), {secs} s");
    let mut r = Rng(seed);
    let t = nat_with(
        Sizes {
            bindings: 256,
            flows: 256,
            frags: 16,
        },
        seed as u32,
        |c| c.ports = PortRange::new(40000, 40063),
    );
    let seeds = corpus(&t);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tried = 0u64;
    let mut verdicts: BTreeMap<String, u64> = BTreeMap::new();
    while Instant::now() < deadline {
        for _ in 0..256 {
            let (step, base) = &seeds[r.below(seeds.len())];
            let mut f = base.clone();
            mutate(&mut r, &mut f);
            let step = if r.below(8) == 0 {
                [Step::Egress, Step::Ingress, Step::Hairpin][r.below(3)]
            } else {
                *step
            };
            let was_sound = sound(&f);
            let (v, out) = run(&t, step, &f);
            tried += 1;
            *verdicts.entry(format!("{step:?} {v:?}")).or_default() += 1;
            assert_eq!(out.len(), f.len(), "length changed: {step:?} {f:02x?}");
            if was_sound && v.is_ok() && !sound(&out) {
                panic!("checksums broken by {step:?} ({v:?}):\n in  {f:02x?}\n out {out:02x?}");
            }
            if r.below(64) == 0 {
                t.advance(r.below(400) as u64 * SEC);
                if r.below(4) == 0 {
                    t.sweep();
                }
            }
        }
        check_tables(&t);
    }
    assert!(tried > 1000, "only {tried} frames in {secs} s");
    let summary: Vec<String> = verdicts.iter().map(|(k, n)| format!("  {k}: {n}")).collect();
    println!("fuzz: {tried} frames\n{}", summary.join("\n"));
    netns_tests::record_summary(
        "fuzz",
        &format!(
            "fuzz (host, {secs} s, seed {seed}): {tried} mutated frames, no panic, checksums kept, tables consistent; verdicts:\n{}",
            summary.join("\n")
        ),
    );
}
