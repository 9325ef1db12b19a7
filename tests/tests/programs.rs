//! The programs tested packet by packet with BPF_PROG_TEST_RUN: crafted frames in, exact
//! frames and verdicts out, every checksum recomputed by the packet builder and compared
//! byte for byte. Each test loads its own copy of the programs in a namespace of its own.

use std::{collections::BTreeMap, net::Ipv4Addr};

use netns_common::{
    fwd::{FAST_TC, FAST_XDP, FastConfig, FdbEntry, PORT_BRIDGE, PORT_UP, PortState},
    names::{
        PROG_NAT_EGRESS, PROG_NAT_FAST_OUT, PROG_NAT_HAIRPIN, PROG_NAT_INGRESS, PROG_XDP_FAST_IN,
        PROG_XDP_FAST_OUT,
    },
    nat::{Flow, FlowKey, SIDE_INTERNAL, TcpState, addr_to_wire, port_from_wire, port_to_wire},
};
use netns_testkit::{
    packet::{self, Ipv4, L4, Mac, parse_frame},
    progtest::{Outcome, ProgBed},
};
use netns_tests::{prefix, privileged};
use netns_user::{config::LabConfig, nat::ebpf as nat_ebpf};

const RED: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 1);
const BLUE: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 2);
const EXT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 3);
const MAC_A: Mac = [2, 0, 0, 0, 0, 1];
const MAC_B: Mac = [2, 0, 0, 0, 0, 2];

/// TC verdicts: go on (TCX_NEXT), drop.
const NEXT: i32 = -1;
const SHOT: i32 = 2;
const XDP_PASS: i32 = 2;
const XDP_REDIRECT: i32 = 4;
const TC_REDIRECT: i32 = 7;

/// A bed with the reference lab's NAT (external address 192.168.1.2, forward of TCP 80 to
/// blue), and the fast path as given.
fn bed(tag: &str, fast: Option<FastConfig>) -> Option<ProgBed> {
    if !privileged(tag) {
        return None;
    }
    let cfg = LabConfig::reference();
    let nat = cfg.nat.as_ref().expect("the reference lab has NAT");
    let bed = ProgBed::new(
        &prefix(tag),
        nat_ebpf::nat_config(nat, EXT),
        &nat_ebpf::static_bindings(nat),
        fast,
    )
    .unwrap_or_else(|e| panic!("loading the programs: {e}"));
    Some(bed)
}

fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> L4<'_> {
    tcp_at(sport, dport, flags, 1000, 2000, payload)
}

/// A TCP segment with its sequence and acknowledgement numbers (a RST or FIN must lie in the
/// receiver's window to change anything).
fn tcp_at(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32, payload: &[u8]) -> L4<'_> {
    L4::tcp(sport, dport, flags, (seq, ack), 65535, payload)
}

/// The frame a router hands its uplink: `src` -> `dst` carrying `l4`.
fn frame(src: Ipv4Addr, dst: Ipv4Addr, l4: &L4) -> Vec<u8> {
    packet::frame(MAC_B, MAC_A, &Ipv4::new(src, dst), l4).to_vec()
}

fn run(bed: &ProgBed, prog: &'static str, f: &[u8]) -> Outcome {
    bed.run(prog, f).unwrap_or_else(|e| panic!("{prog}: {e}"))
}

fn counters(bed: &ProgBed) -> BTreeMap<&'static str, u64> {
    bed.counters().unwrap()
}

/// Asserts that `out` is exactly `want` (a frame built, with full checksums, by the packet
/// builder), and names the first difference.
fn assert_frame(out: &Outcome, want: &[u8]) {
    if out.frame != want {
        let at = out
            .frame
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(out.frame.len().min(want.len()));
        panic!(
            "frames differ at byte {at} (lengths {} / {}):\n got  {:02x?}\n want {:02x?}",
            out.frame.len(),
            want.len(),
            out.frame,
            want
        );
    }
    let (_, _, ip) = parse_frame(&out.frame).expect("IPv4 out");
    assert!(ip.header_ok && ip.l4_checksum_ok(), "checksums of {ip:?}");
}

fn flow(bed: &ProgBed, key: FlowKey) -> Option<Flow> {
    bed.flows()
        .unwrap()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, f)| f)
}

fn flow_key(proto: u8, int: Ipv4Addr, int_port: u16, rem: Ipv4Addr, rem_port: u16) -> FlowKey {
    FlowKey::new(
        proto,
        addr_to_wire(int),
        port_to_wire(int_port),
        addr_to_wire(rem),
        port_to_wire(rem_port),
    )
}

#[test]
fn udp_is_translated_out_and_back_byte_for_byte() {
    let Some(bed) = bed("pudp", None) else {
        return;
    };
    let data = b"hello through the NAT";
    let out = run(
        &bed,
        PROG_NAT_EGRESS,
        &frame(RED, LAN, &L4::udp(40000, 7000, data)),
    );
    assert_eq!(out.code, NEXT);
    // The free source port is kept; only the source address changes.
    assert_frame(&out, &frame(EXT, LAN, &L4::udp(40000, 7000, data)));
    let back = run(
        &bed,
        PROG_NAT_INGRESS,
        &frame(LAN, EXT, &L4::udp(7000, 40000, b"reply")),
    );
    assert_eq!(back.code, NEXT);
    assert_frame(&back, &frame(LAN, RED, &L4::udp(7000, 40000, b"reply")));
    let c = counters(&bed);
    assert_eq!((c["out_udp"], c["in_udp"], c["new_flows"]), (1, 1, 1), "{c:?}");
}

#[test]
fn a_zero_udp_checksum_stays_zero_both_ways() {
    let Some(bed) = bed("pzero", None) else {
        return;
    };
    let none = |sport, dport, payload| L4::Udp {
        sport,
        dport,
        payload,
        zero_checksum: true,
    };
    let out = run(&bed, PROG_NAT_EGRESS, &frame(RED, LAN, &none(40001, 7000, b"x")));
    assert_frame(&out, &frame(EXT, LAN, &none(40001, 7000, b"x")));
    let back = run(&bed, PROG_NAT_INGRESS, &frame(LAN, EXT, &none(7000, 40001, b"y")));
    assert_frame(&back, &frame(LAN, RED, &none(7000, 40001, b"y")));
}

/// red and blue use the same source port (echo identifier): the second gets another, and
/// its frames are rewritten byte for byte (port, checksum) both ways, for UDP, TCP and ICMP
/// echo, whose checksums sit in different places.
#[test]
fn a_taken_port_is_replaced_and_checksums_follow() {
    let Some(bed) = bed("pport", None) else {
        return;
    };
    // red and blue use the same source port: the second gets another external port.
    run(
        &bed,
        PROG_NAT_EGRESS,
        &frame(RED, LAN, &L4::udp(40002, 7000, b"a")),
    );
    let out = run(
        &bed,
        PROG_NAT_EGRESS,
        &frame(BLUE, LAN, &L4::udp(40002, 7000, b"b")),
    );
    let (_, _, ip) = parse_frame(&out.frame).unwrap();
    let (sport, dport) = ip.ports().unwrap();
    assert_ne!(sport, 40002);
    assert_eq!(dport, 7000);
    assert_frame(&out, &frame(EXT, LAN, &L4::udp(sport, 7000, b"b")));
    // The reply to that port reaches blue, not red.
    let back = run(
        &bed,
        PROG_NAT_INGRESS,
        &frame(LAN, EXT, &L4::udp(7000, sport, b"c")),
    );
    assert_frame(&back, &frame(LAN, BLUE, &L4::udp(7000, 40002, b"c")));

    // TCP: a SYN each, then the answer to blue's.
    use netns_common::nat::{TCP_ACK as ACK, TCP_SYN as SYN};
    run(
        &bed,
        PROG_NAT_EGRESS,
        &frame(RED, LAN, &tcp(41500, 443, SYN, b"")),
    );
    let out = run(
        &bed,
        PROG_NAT_EGRESS,
        &frame(BLUE, LAN, &tcp(41500, 443, SYN, b"")),
    );
    let (_, _, ip) = parse_frame(&out.frame).unwrap();
    let (sport, dport) = ip.ports().unwrap();
    assert_ne!(sport, 41500);
    assert_eq!(dport, 443);
    assert_frame(&out, &frame(EXT, LAN, &tcp(sport, 443, SYN, b"")));
    let back = run(
        &bed,
        PROG_NAT_INGRESS,
        &frame(LAN, EXT, &tcp_at(443, sport, SYN | ACK, 5000, 1001, b"")),
    );
    assert_frame(
        &back,
        &frame(LAN, BLUE, &tcp_at(443, 41500, SYN | ACK, 5000, 1001, b"")),
    );

    // ICMP echo: the identifier is the port.
    run(
        &bed,
        PROG_NAT_EGRESS,
        &frame(RED, LAN, &L4::echo(false, 78, 1, b"red")),
    );
    let out = run(
        &bed,
        PROG_NAT_EGRESS,
        &frame(BLUE, LAN, &L4::echo(false, 78, 1, b"blue")),
    );
    let (_, _, ip) = parse_frame(&out.frame).unwrap();
    let id = u16::from_be_bytes([ip.data[4], ip.data[5]]);
    assert_ne!(id, 78);
    assert_frame(&out, &frame(EXT, LAN, &L4::echo(false, id, 1, b"blue")));
    let back = run(
        &bed,
        PROG_NAT_INGRESS,
        &frame(LAN, EXT, &L4::echo(true, id, 1, b"blue")),
    );
    assert_frame(&back, &frame(LAN, BLUE, &L4::echo(true, 78, 1, b"blue")));
}

#[test]
fn tcp_handshake_data_and_close_move_the_state_machine() {
    let Some(bed) = bed("ptcp", None) else {
        return;
    };
    use netns_common::nat::{TCP_ACK as ACK, TCP_FIN as FIN, TCP_SYN as SYN};
    let key = flow_key(packet::PROTO_TCP, RED, 41000, LAN, 80);
    let state = |bed: &ProgBed| flow(bed, key).map(|f| f.state);
    let out = run(&bed, PROG_NAT_EGRESS, &frame(RED, LAN, &tcp(41000, 80, SYN, b"")));
    assert_frame(&out, &frame(EXT, LAN, &tcp(41000, 80, SYN, b"")));
    assert_eq!(state(&bed), Some(TcpState::SynOut as u8));
    // The inside host's sequence numbers from 1000, the remote's from 5000.
    let back = run(
        &bed,
        PROG_NAT_INGRESS,
        &frame(LAN, EXT, &tcp_at(80, 41000, SYN | ACK, 5000, 1001, b"")),
    );
    assert_frame(
        &back,
        &frame(LAN, RED, &tcp_at(80, 41000, SYN | ACK, 5000, 1001, b"")),
    );
    assert_eq!(state(&bed), Some(TcpState::Established as u8));
    let data = vec![0xa5u8; 1200];
    let out = run(
        &bed,
        PROG_NAT_EGRESS,
        &frame(RED, LAN, &tcp_at(41000, 80, ACK, 1001, 5001, &data)),
    );
    assert_frame(&out, &frame(EXT, LAN, &tcp_at(41000, 80, ACK, 1001, 5001, &data)));
    // Segments that must not move an established flow: no flags at all, SYN+FIN.
    for flags in [0, SYN | FIN, SYN | FIN | ACK] {
        run(
            &bed,
            PROG_NAT_EGRESS,
            &frame(RED, LAN, &tcp_at(41000, 80, flags, 2201, 5001, b"")),
        );
        run(
            &bed,
            PROG_NAT_INGRESS,
            &frame(LAN, EXT, &tcp_at(80, 41000, flags, 5001, 2201, b"")),
        );
        assert_eq!(
            state(&bed),
            Some(TcpState::Established as u8),
            "flags {flags:#04x} moved the state"
        );
    }
    run(
        &bed,
        PROG_NAT_EGRESS,
        &frame(RED, LAN, &tcp_at(41000, 80, FIN | ACK, 2201, 5001, b"")),
    );
    assert_eq!(state(&bed), Some(TcpState::FinOut as u8));
    run(
        &bed,
        PROG_NAT_INGRESS,
        &frame(LAN, EXT, &tcp_at(80, 41000, FIN | ACK, 5001, 2202, b"")),
    );
    assert_eq!(state(&bed), Some(TcpState::Closed as u8));
}

#[test]
fn a_bare_segment_opens_no_flow_as_established() {
    let Some(bed) = bed("pnull", None) else {
        return;
    };
    // A segment with no flags (a "null scan") or SYN+FIN is no connection.
    for (port, flags) in [(41100u16, 0u8), (41101, 0x03)] {
        run(
            &bed,
            PROG_NAT_EGRESS,
            &frame(RED, LAN, &tcp(port, 80, flags, b"")),
        );
        let f = flow(&bed, flow_key(packet::PROTO_TCP, RED, port, LAN, 80));
        assert_ne!(
            f.map(|f| f.state),
            Some(TcpState::Established as u8),
            "flags {flags:#04x}"
        );
    }
}

#[test]
fn icmp_echo_out_and_back() {
    let Some(bed) = bed("picmp", None) else {
        return;
    };
    let out = run(
        &bed,
        PROG_NAT_EGRESS,
        &frame(RED, LAN, &L4::echo(false, 77, 1, b"ping")),
    );
    let (_, _, ip) = parse_frame(&out.frame).unwrap();
    let id = u16::from_be_bytes([ip.data[4], ip.data[5]]);
    assert_frame(&out, &frame(EXT, LAN, &L4::echo(false, id, 1, b"ping")));
    let back = run(
        &bed,
        PROG_NAT_INGRESS,
        &frame(LAN, EXT, &L4::echo(true, id, 1, b"ping")),
    );
    assert_frame(&back, &frame(LAN, RED, &L4::echo(true, 77, 1, b"ping")));
}

#[test]
fn ip_options_are_kept_and_the_header_checksum_follows() {
    let Some(bed) = bed("popt", None) else {
        return;
    };
    let mut ip = Ipv4::new(RED, LAN);
    // Record route with room for two addresses, then end of list (IHL 8).
    ip.options = vec![7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0];
    let l4 = L4::udp(40010, 7000, b"options");
    let out = run(&bed, PROG_NAT_EGRESS, &packet::frame(MAC_B, MAC_A, &ip, &l4));
    assert_eq!(out.code, NEXT);
    let mut want = ip.clone();
    want.src = EXT;
    assert_frame(&out, &packet::frame(MAC_B, MAC_A, &want, &l4));
}

#[test]
fn the_forward_is_translated_to_blue_and_its_replies_back() {
    let Some(bed) = bed("pfwd", None) else {
        return;
    };
    let req = tcp(50000, 80, 0x02, b"");
    let out = run(&bed, PROG_NAT_INGRESS, &frame(LAN, EXT, &req));
    assert_frame(&out, &frame(LAN, BLUE, &req));
    let reply = tcp(80, 50000, 0x12, b"");
    let out = run(&bed, PROG_NAT_EGRESS, &frame(BLUE, LAN, &reply));
    assert_frame(&out, &frame(EXT, LAN, &reply));
}

#[test]
fn unsolicited_inbound_is_dropped_and_counted() {
    let Some(bed) = bed("punsol", None) else {
        return;
    };
    // red talked to lan:7000; lan:7001 answering from another port is refused
    // (address-and-port-dependent filtering).
    run(
        &bed,
        PROG_NAT_EGRESS,
        &frame(RED, LAN, &L4::udp(40020, 7000, b"a")),
    );
    let out = run(
        &bed,
        PROG_NAT_INGRESS,
        &frame(LAN, EXT, &L4::udp(7001, 40020, b"b")),
    );
    assert_eq!(out.code, SHOT);
    assert_eq!(counters(&bed)["drop_unsolicited"], 1);
    // A port nobody owns is the router's own business: passed untouched.
    let f = frame(LAN, EXT, &L4::udp(7000, 40999, b"c"));
    let out = run(&bed, PROG_NAT_INGRESS, &f);
    assert_eq!((out.code, &out.frame), (NEXT, &f));
    assert_eq!(counters(&bed)["in_unmapped"], 1);
}

/// An ICMP error from lan quoting the datagram red sent (as it left the NAT), cut after
/// `quote_len` bytes of the quoted packet.
fn port_unreachable(quote: &[u8]) -> Vec<u8> {
    frame(
        LAN,
        EXT,
        &L4::Icmp {
            typ: 3,
            code: 3,
            rest: [0; 4],
            body: quote,
        },
    )
}

#[test]
fn icmp_errors_are_translated_with_their_quote_at_every_length() {
    let Some(bed) = bed("pierr", None) else {
        return;
    };
    // blue holds external port 40030 first: red's datagram leaves from another, so the
    // quote's port and its checksum must be translated back, not merely left as they are.
    run(
        &bed,
        PROG_NAT_EGRESS,
        &frame(BLUE, LAN, &L4::udp(40030, 7000, b"blue's")),
    );
    let out = run(
        &bed,
        PROG_NAT_EGRESS,
        &frame(RED, LAN, &L4::udp(40030, 7000, b"0123456789")),
    );
    let ext_port = parse_frame(&out.frame).unwrap().2.ports().unwrap().0;
    assert_ne!(ext_port, 40030, "red's port was not rewritten");
    assert_frame(&out, &frame(EXT, LAN, &L4::udp(ext_port, 7000, b"0123456789")));
    let sent = packet::ipv4_packet(&Ipv4::new(EXT, LAN), &L4::udp(ext_port, 7000, b"0123456789"));
    let seen = packet::ipv4_packet(&Ipv4::new(RED, LAN), &L4::udp(40030, 7000, b"0123456789"));
    for len in 0..=sent.len() {
        let out = run(&bed, PROG_NAT_INGRESS, &port_unreachable(&sent[..len]));
        if len < 20 + 4 {
            // No quoted header and ports to translate by: dropped as malformed, never
            // passed on half-translated.
            assert_eq!(out.code, SHOT, "quote of {len} bytes");
            continue;
        }
        assert_eq!(out.code, NEXT, "quote of {len} bytes");
        // The quote is translated back to what red sent (its UDP checksum too, when the
        // quote holds it), the outer destination is red, and the ICMP checksum is right.
        let want = frame(
            LAN,
            RED,
            &L4::Icmp {
                typ: 3,
                code: 3,
                rest: [0; 4],
                body: &seen[..len],
            },
        );
        if len < 20 + 8 {
            // Without the whole quoted UDP checksum, the quote's own checksum is not
            // compared; its header, ports and length are.
            let (_, _, got) = parse_frame(&out.frame).unwrap();
            assert_eq!(got.header.dst, RED, "quote of {len} bytes");
            assert!(got.header_ok && got.l4_checksum_ok(), "quote of {len} bytes");
            let upto = len.min(20 + 6);
            assert_eq!(
                &got.data[8..8 + upto],
                &seen[..upto],
                "quoted header and ports, {len} bytes"
            );
        } else {
            assert_frame(&out, &want);
        }
    }
}

/// Fragments are translated after their first; one that comes before it is held (never
/// sent untranslated), and sent again once the first is through, which leaves the first's
/// frame as translated. (The lab tests show the held one arriving: `nat_behaviour.rs`.)
#[test]
fn fragments_follow_their_first_and_one_before_it_is_held() {
    let Some(bed) = bed("pfrag", None) else {
        return;
    };
    // Test runs' frames are on the bed's loopback: held fragments are sent again there.
    netns_tests::sh_in(bed.namespace(), "ip", &["link", "set", "lo", "up"]);
    let data = packet::l4_bytes(RED, LAN, &L4::udp(40040, 7000, &[7u8; 100]));
    let mut ip = Ipv4::new(RED, LAN).id(0x1234);
    ip.proto = packet::PROTO_UDP;
    let frags = packet::fragments(&ip, &data, 48);
    assert!(frags.len() >= 3);
    // A non-first fragment before its first: nobody knows its ports yet.
    let early = packet::ethernet(MAC_B, MAC_A, packet::ETH_P_IP, &frags[1]);
    assert_eq!(run(&bed, PROG_NAT_EGRESS, &early).code, SHOT);
    let c = counters(&bed);
    assert_eq!((c["fragments_held"], c["drop_fragment_unknown"]), (1, 0), "{c:?}");
    // In order, every fragment is translated (addresses; ports in the first).
    let mut out_ip = ip.clone();
    out_ip.src = EXT;
    let want = packet::fragments(&out_ip, &data, 48);
    // The first fragment's UDP checksum covers the whole datagram: rewrite it as the NAT
    // must (incrementally), by building the datagram from the external address.
    let ext_data = packet::l4_bytes(EXT, LAN, &L4::udp(40040, 7000, &[7u8; 100]));
    let want_first = packet::fragments(&out_ip, &ext_data, 48).remove(0);
    for (i, f) in frags.iter().enumerate() {
        let out = run(
            &bed,
            PROG_NAT_EGRESS,
            &packet::ethernet(MAC_B, MAC_A, packet::ETH_P_IP, f),
        );
        assert_eq!(out.code, NEXT, "fragment {i}");
        let w = if i == 0 { &want_first } else { &want[i] };
        let w = packet::ethernet(MAC_B, MAC_A, packet::ETH_P_IP, w);
        assert_eq!(out.frame, w.to_vec(), "fragment {i}");
        if i == 0 {
            let c = counters(&bed);
            assert_eq!(c["fragments_replayed"], 1, "the held one went again: {c:?}");
        }
    }
    // Inbound, one before its first goes on to the router (in case the datagram is its
    // own) and is held too.
    let reply = packet::l4_bytes(LAN, EXT, &L4::udp(7000, 40040, &[8u8; 100]));
    let mut rip = Ipv4::new(LAN, EXT).id(0x4321);
    rip.proto = packet::PROTO_UDP;
    let rfrags = packet::fragments(&rip, &reply, 48);
    let early = packet::ethernet(MAC_B, MAC_A, packet::ETH_P_IP, &rfrags[2]);
    let out = run(&bed, PROG_NAT_INGRESS, &early);
    assert_eq!((out.code, out.frame), (NEXT, early.to_vec()));
    assert_eq!(counters(&bed)["fragments_held"], 2);
}

/// Whether `ip` (parsed from the frame `bytes`) is a whole IPv4 packet whose checksums
/// verify.
fn sound(bytes: &[u8], ip: &packet::ParsedIpv4) -> bool {
    ip.total_len >= ip.header_len
        && ip.total_len <= bytes.len() - packet::ETH_HLEN
        && !ip.is_fragment()
        && ip.header_ok
        && ip.l4_checksum_ok()
}

#[test]
fn hostile_frames_never_pass_half_translated() {
    let Some(bed) = bed("phost", None) else {
        return;
    };
    // blue holds external port 40050 first, so red's mapping rewrites the port as well as
    // the address: a frame with one translated and not the other is caught.
    run(
        &bed,
        PROG_NAT_EGRESS,
        &frame(BLUE, LAN, &L4::udp(40050, 7000, b"blue's")),
    );
    let good = frame(RED, LAN, &L4::udp(40050, 7000, b"0123456789abcdef"));
    // The external port red's UDP port `p` is mapped to, as the NAT's table has it.
    let ext_port_of = |p: u16| {
        bed.bindings()
            .unwrap()
            .into_iter()
            .find(|(k, _)| {
                k.side == SIDE_INTERNAL
                    && k.proto == packet::PROTO_UDP
                    && k.addr == addr_to_wire(RED)
                    && k.port == port_to_wire(p)
            })
            .map(|(_, b)| port_from_wire(b.ext_port))
    };
    // Every truncation of a good frame, and every IHL: a verdict, never a crash, and what
    // is passed on is either untouched or fully translated.
    // (A test run needs at least an Ethernet header.)
    let mut cases: Vec<Vec<u8>> = (packet::ETH_HLEN..good.len())
        .map(|n| good[..n].to_vec())
        .collect();
    for ihl in 0..16u8 {
        let mut f = good.clone();
        f[14] = 0x40 | ihl;
        cases.push(f);
    }
    // Total length longer and shorter than the frame.
    for tot in [0u16, 20, 27, 28, 1500, 65535] {
        let mut f = good.clone();
        f[16..18].copy_from_slice(&tot.to_be_bytes());
        cases.push(f);
    }
    let (mut ran, mut refused) = (0, 0);
    for (i, f) in cases.iter().enumerate() {
        for prog in [PROG_NAT_EGRESS, PROG_NAT_INGRESS, PROG_NAT_HAIRPIN] {
            // The kernel's test run refuses some of these itself (an IPv4 header it cannot
            // parse): no program ever sees them that way.
            let Ok(out) = bed.run(prog, f) else {
                refused += 1;
                continue;
            };
            ran += 1;
            assert!(
                out.code == NEXT || out.code == SHOT,
                "{prog}, case {i}: {}",
                out.code
            );
            if out.code == NEXT && out.frame != *f {
                // Changed: the whole outbound translation (no case may be taken inbound:
                // red's address arriving is spoofed), checksums that verified still verify.
                let (_, _, ip) = parse_frame(&out.frame).expect("a translated frame is IPv4");
                let (_, _, was) = parse_frame(f).expect("a frame that was changed is IPv4");
                assert!(
                    ip.header.src == EXT && was.header.src == RED && ip.header.dst == was.header.dst,
                    "{prog}, case {i}: changed but not translated: {ip:?}"
                );
                if let Some((sport, dport)) = was.ports() {
                    let ext = ext_port_of(sport);
                    assert!(ext.is_some(), "{prog}, case {i}: translated without a mapping");
                    assert_eq!(ip.ports(), ext.map(|e| (e, dport)), "{prog}, case {i}: ports");
                }
                assert!(
                    !was.header_ok || ip.header_ok,
                    "{prog}, case {i}: the IPv4 header checksum broken: {ip:?}"
                );
                if sound(f, &was) {
                    assert!(
                        ip.l4_checksum_ok(),
                        "{prog}, case {i}: the UDP checksum broken: {ip:?}"
                    );
                }
            }
        }
    }
    assert!(ran >= 2 * refused, "{ran} run, {refused} refused by the kernel");
}

#[test]
fn the_xdp_fast_path_passes_what_it_cannot_take_untouched() {
    // The fast path on, in XDP, in a namespace without routes: no next hop is known, so
    // even a packet of a live flow goes to the slow path, untouched.
    let fast = FastConfig {
        mode: FAST_XDP,
        uplink_ifindex: 1,
        gateway_mac: MAC_B,
        flags: 0,
        bridge_refresh_ns: 0,
        bridge_ifindex: 0,
        hop_gen: 0,
        ..FastConfig::default()
    };
    let Some(bed) = bed("pxdp", Some(fast)) else {
        return;
    };
    run(
        &bed,
        PROG_NAT_EGRESS,
        &frame(RED, LAN, &L4::udp(40060, 7000, b"first")),
    );
    // Inbound: the FIB has no route to red; the kernel decides what becomes of it.
    let c0 = counters(&bed);
    let reply = frame(LAN, EXT, &L4::udp(7000, 40060, b"reply"));
    let out = run(&bed, PROG_XDP_FAST_IN, &reply);
    assert_eq!((out.code, &out.frame), (XDP_PASS, &reply));
    let c1 = counters(&bed);
    assert_eq!(c1["slow_policy"] - c0["slow_policy"], 1, "{c1:?}");
    // Outbound, no route: the same.
    let next = frame(RED, LAN, &L4::udp(40060, 7000, b"second"));
    let out = run(&bed, PROG_XDP_FAST_OUT, &next);
    assert_eq!((out.code, &out.frame), (XDP_PASS, &next));
    let c2 = counters(&bed);
    assert_eq!(c2["slow_policy"] - c1["slow_policy"], 1, "{c2:?}");
    assert_eq!((c2["fast_in_xdp"], c2["fast_out_xdp"]), (0, 0));
    // Hostile frames: passed untouched or dropped, never changed.
    for n in packet::ETH_HLEN..next.len() {
        for prog in [PROG_XDP_FAST_OUT, PROG_XDP_FAST_IN] {
            let out = run(&bed, prog, &next[..n]);
            assert!(out.code == XDP_PASS || out.code == 1, "{prog}, {n} bytes");
            if out.code == XDP_PASS {
                assert_eq!(out.frame, next[..n].to_vec(), "{prog}, {n} bytes");
            }
        }
    }
}

#[test]
fn a_flood_from_outside_creates_no_state() {
    let Some(bed) = bed("pflood", None) else {
        return;
    };
    run(
        &bed,
        PROG_NAT_EGRESS,
        &frame(RED, LAN, &L4::udp(40070, 7000, b"a")),
    );
    let (flows, bindings) = (bed.flows().unwrap(), bed.bindings().unwrap());
    let c0 = counters(&bed);
    // Ports all over the external address, from a remote red never talked to and from the
    // one it did (but from another port), UDP and TCP SYNs.
    let mut sent = 0u64;
    for port in (1..=65535u16).step_by(7) {
        let from = if port % 2 == 0 {
            LAN
        } else {
            Ipv4Addr::new(192, 168, 1, 99)
        };
        let f = if port % 3 == 0 {
            frame(from, EXT, &tcp(33000, port, 0x02, b""))
        } else {
            frame(from, EXT, &L4::udp(7001, port, b"x"))
        };
        let out = run(&bed, PROG_NAT_INGRESS, &f);
        // (Port 80, the forward's, is not among them: 80 is not 1 + 7k.)
        // Passed untouched (to a router where nothing listens) or dropped.
        assert!(out.code == SHOT || out.frame == f, "port {port}");
        sent += 1;
    }
    let c1 = counters(&bed);
    let refused = (c1["in_unmapped"] - c0["in_unmapped"]) + (c1["drop_unsolicited"] - c0["drop_unsolicited"]);
    assert_eq!(refused, sent, "{c1:?}");
    assert_eq!(bed.flows().unwrap().len(), flows.len(), "a flow was created");
    assert_eq!(
        bed.bindings().unwrap().len(),
        bindings.len(),
        "a binding was created"
    );
}

/// Runs each of `frags` (IPv4 packets) through `prog` and compares it with `want`.
fn fragments_through<B: std::ops::Deref<Target = [u8]>>(
    bed: &ProgBed,
    prog: &'static str,
    frags: &[B],
    want: &[B],
) {
    assert_eq!(frags.len(), want.len());
    for (i, (f, w)) in frags.iter().zip(want).enumerate() {
        let out = run(bed, prog, &packet::ethernet(MAC_B, MAC_A, packet::ETH_P_IP, f));
        assert_eq!(out.code, NEXT, "{prog}, fragment {i}");
        let w = packet::ethernet(MAC_B, MAC_A, packet::ETH_P_IP, w);
        assert_eq!(out.frame, w.to_vec(), "{prog}, fragment {i}");
    }
}

#[test]
fn fragmented_icmp_echo_is_translated_both_ways() {
    let Some(bed) = bed("pficmp", None) else {
        return;
    };
    let payload = [9u8; 200];
    let with_ip = |src, dst, id| {
        let mut ip = Ipv4::new(src, dst).id(id);
        ip.proto = packet::PROTO_ICMP;
        ip
    };
    let req = packet::l4_bytes(RED, LAN, &L4::echo(false, 77, 1, &payload));
    let frags = packet::fragments(&with_ip(RED, LAN, 0x4321), &req, 64);
    assert!(frags.len() >= 3);
    // The first fragment carries the identifier: its translation is the external one.
    let first = run(
        &bed,
        PROG_NAT_EGRESS,
        &packet::ethernet(MAC_B, MAC_A, packet::ETH_P_IP, &frags[0]),
    );
    let ext_id = u16::from_be_bytes([first.frame[38], first.frame[39]]);
    let want_req = packet::l4_bytes(EXT, LAN, &L4::echo(false, ext_id, 1, &payload));
    let want = packet::fragments(&with_ip(EXT, LAN, 0x4321), &want_req, 64);
    assert_eq!(
        first.frame,
        packet::ethernet(MAC_B, MAC_A, packet::ETH_P_IP, &want[0]).to_vec()
    );
    fragments_through(&bed, PROG_NAT_EGRESS, &frags[1..], &want[1..]);
    // The reply, fragmented too, comes back to red with its own identifier.
    let reply = packet::l4_bytes(LAN, EXT, &L4::echo(true, ext_id, 1, &payload));
    let frags = packet::fragments(&with_ip(LAN, EXT, 0x5555), &reply, 64);
    let want_reply = packet::l4_bytes(LAN, RED, &L4::echo(true, 77, 1, &payload));
    let want = packet::fragments(&with_ip(LAN, RED, 0x5555), &want_reply, 64);
    fragments_through(&bed, PROG_NAT_INGRESS, &frags, &want);
    assert_eq!(counters(&bed)["fragments"], 2 * (frags.len() as u64 - 1));
}

/// The fast path with a next hop: the bed's namespace gets a bridge port (`port0`) and an
/// uplink (`up0`, 192.168.1.2/24, lan's MAC as a permanent neighbour), so that the FIB lookup,
/// the MTU check and the redirect run for real. Outbound and inbound frames come out exactly
/// as the builder makes them (MACs of the next hop, translated, TTL one less, checksums
/// right) with the hook's redirect code; with the router's policy refusing it (a rule,
/// forwarding off, the port down) or the neighbour gone, the slow path takes over and the
/// frame is untouched.
fn the_fast_path_rewrites_and_redirects_to_the_next_hop(xdp: bool) {
    let tag = if xdp { "pfnx" } else { "pfnt" };
    let Some(mut bed) = bed(tag, None) else {
        return;
    };
    const LAN_MAC: Mac = [2, 0, 0, 0, 0, 3];
    const GW_MAC: Mac = [2, 0, 0, 0, 0, 0xfe];
    let ns = bed.namespace().to_owned();
    let ip = |args: &[&str]| netns_tests::sh_in(&ns, "ip", args);
    ip(&["link", "add", "port0", "type", "veth", "peer", "name", "host0"]);
    ip(&["link", "add", "up0", "type", "veth", "peer", "name", "lan0"]);
    for dev in ["port0", "host0", "up0", "lan0"] {
        ip(&["link", "set", dev, "up"]);
    }
    ip(&["addr", "add", "192.168.1.2/24", "dev", "up0"]);
    // Red behind port0, as the router's neighbour table knows it: the inbound fast path
    // takes red's MAC from there (a FIB lookup), never from what red's frames claim.
    ip(&["addr", "add", "192.168.15.254/24", "dev", "port0"]);
    ip(&[
        "neigh",
        "replace",
        &RED.to_string(),
        "lladdr",
        "02:00:00:00:00:01",
        "dev",
        "port0",
        "nud",
        "permanent",
    ]);
    ip(&[
        "neigh",
        "replace",
        "192.168.1.3",
        "lladdr",
        "02:00:00:00:00:03",
        "dev",
        "up0",
        "nud",
        "permanent",
    ]);
    netns_tests::sh_in(&ns, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    let (port0, up0) = netns_user::sys::netlink::in_ns(&ns, |r| async move {
        Ok((r.link("port0").await?, r.link("up0").await?))
    })
    .unwrap();
    bed.set_fast(FastConfig {
        mode: if xdp { FAST_XDP } else { FAST_TC },
        uplink_ifindex: up0.index,
        gateway_mac: GW_MAC,
        flags: 0,
        bridge_refresh_ns: 0,
        bridge_ifindex: 0,
        hop_gen: 0,
        ..FastConfig::default()
    })
    .unwrap();
    for l in [&port0, &up0] {
        bed.set_port(
            l.index,
            PortState {
                master: 0,
                flags: PORT_UP,
            },
        )
        .unwrap();
    }
    let (out_prog, in_prog, redirect, pass) = if xdp {
        (PROG_XDP_FAST_OUT, PROG_XDP_FAST_IN, XDP_REDIRECT, XDP_PASS)
    } else {
        (PROG_NAT_FAST_OUT, PROG_NAT_INGRESS, TC_REDIRECT, NEXT)
    };
    let fast = if xdp { "xdp" } else { "tc" };

    // The flow's first packet, by the slow path.
    let first = run(
        &bed,
        PROG_NAT_EGRESS,
        &frame(RED, LAN, &L4::udp(45000, 7000, b"first")),
    );
    assert_frame(&first, &frame(EXT, LAN, &L4::udp(45000, 7000, b"first")));
    if xdp {
        // With the uplink not in the DEVMAP, the redirect is refused before anything is
        // written: the slow path gets the frame untouched, counted.
        let f = packet::frame(
            GW_MAC,
            MAC_A,
            &Ipv4::new(RED, LAN),
            &L4::udp(45000, 7000, b"no devmap"),
        )
        .to_vec();
        let o = bed.run_on(PROG_XDP_FAST_OUT, &f, Some(port0.index)).unwrap();
        assert_eq!((o.code, &o.frame), (XDP_PASS, &f));
        assert_eq!(counters(&bed)["redirect_failed"], 1);
        bed.allow_xdp_redirect(&["port0", "up0"]).unwrap();
    }

    let from_red = |ttl: u8, payload: &[u8]| {
        packet::frame(
            GW_MAC,
            MAC_A,
            &Ipv4::new(RED, LAN).ttl(ttl),
            &L4::udp(45000, 7000, payload),
        )
        .to_vec()
    };
    let out = bed
        .run_on(out_prog, &from_red(64, b"fast out"), Some(port0.index))
        .unwrap();
    assert_eq!(out.code, redirect, "redirected to the uplink");
    let want = packet::frame(
        LAN_MAC,
        up0.mac,
        &Ipv4::new(EXT, LAN).ttl(63),
        &L4::udp(45000, 7000, b"fast out"),
    );
    assert_frame(&out, &want);

    let from_lan = packet::frame(
        up0.mac,
        LAN_MAC,
        &Ipv4::new(LAN, EXT),
        &L4::udp(7000, 45000, b"fast in"),
    )
    .to_vec();
    let back = bed.run_on(in_prog, &from_lan, Some(up0.index)).unwrap();
    assert_eq!(back.code, redirect, "redirected to red's port");
    let want = packet::frame(
        MAC_A,
        port0.mac,
        &Ipv4::new(LAN, RED).ttl(63),
        &L4::udp(7000, 45000, b"fast in"),
    );
    assert_frame(&back, &want);
    let c = counters(&bed);
    assert_eq!(
        (c[&*format!("fast_out_{fast}")], c[&*format!("fast_in_{fast}")]),
        (1, 1),
        "{c:?}"
    );

    // TTL 1: the router owes red a time exceeded: the slow path, untouched.
    let f = from_red(1, b"ttl");
    let o = bed.run_on(out_prog, &f, Some(port0.index)).unwrap();
    assert_eq!((o.code, &o.frame), (pass, &f));
    // A failing IPv4 header checksum: the kernel's input path must see (and drop) it.
    let mut f = from_red(64, b"bad header");
    f[packet::ETH_HLEN + 10] ^= 0x40;
    let o = bed.run_on(out_prog, &f, Some(port0.index)).unwrap();
    assert_eq!((o.code, &o.frame), (pass, &f));
    // The router's policy is the kernel's to apply: a rule refusing what comes from port0,
    // forwarding off on the uplink, port0 down: each sends the packet to the slow path,
    // untouched. (Each change announced to the fast path as a lab's agent does: the flows
    // have their next hops cached.)
    ip(&["rule", "add", "iif", "port0", "prohibit", "pref", "10"]);
    bed.renew_next_hops().unwrap();
    let f = from_red(64, b"prohibited");
    let o = bed.run_on(out_prog, &f, Some(port0.index)).unwrap();
    assert_eq!((o.code, &o.frame), (pass, &f));
    ip(&["rule", "del", "pref", "10"]);
    netns_tests::sh_in(&ns, "sysctl", &["-qw", "net.ipv4.conf.up0.forwarding=0"]);
    bed.renew_next_hops().unwrap();
    // (Inbound at TC, the slow path is the same program: it translates and passes.)
    let slow_in = |o: Outcome| {
        assert_eq!(o.code, pass);
        if xdp {
            assert_eq!(o.frame, from_lan);
        }
    };
    slow_in(bed.run_on(in_prog, &from_lan, Some(up0.index)).unwrap());
    netns_tests::sh_in(&ns, "sysctl", &["-qw", "net.ipv4.conf.up0.forwarding=1"]);
    bed.renew_next_hops().unwrap();
    bed.set_port(port0.index, PortState { master: 0, flags: 0 })
        .unwrap();
    slow_in(bed.run_on(in_prog, &from_lan, Some(up0.index)).unwrap());
    bed.set_port(
        port0.index,
        PortState {
            master: 0,
            flags: PORT_UP,
        },
    )
    .unwrap();
    assert_eq!(counters(&bed)["slow_policy"], 3);
    // No neighbour for the next hop: the slow path (the kernel resolves it), untouched.
    ip(&["neigh", "del", "192.168.1.3", "dev", "up0"]);
    bed.renew_next_hops().unwrap();
    let f = from_red(64, b"no neighbour");
    let o = bed.run_on(out_prog, &f, Some(port0.index)).unwrap();
    assert_eq!((o.code, &o.frame), (pass, &f));
    let c = counters(&bed);
    assert_eq!(
        (
            c["slow_ttl"],
            c["slow_ip_checksum"],
            c["slow_no_neighbour"],
            c["slow_policy"]
        ),
        (1, 1, 1, 3),
        "{c:?}"
    );
}

#[test]
fn the_fast_path_rewrites_and_redirects_to_the_next_hop_tc() {
    the_fast_path_rewrites_and_redirects_to_the_next_hop(false);
}

#[test]
fn the_fast_path_rewrites_and_redirects_to_the_next_hop_xdp() {
    the_fast_path_rewrites_and_redirects_to_the_next_hop(true);
}

/// A redirect to a port that is gone would vanish in the kernel (at TC, silently): the fast
/// path checks the port exists first, and leaves the packet to the slow path, counted as
/// `redirect_failed`. Here red sits behind a bridge, the fast path last saw red's MAC behind
/// port 9999, and there is no interface 9999.
#[test]
fn a_redirect_to_a_vanished_port_is_counted_and_left_to_the_slow_path() {
    for xdp in [false, true] {
        let Some(mut bed) = bed(if xdp { "pgonex" } else { "pgonet" }, None) else {
            return;
        };
        let ns = bed.namespace().to_owned();
        let ip = |args: &[&str]| netns_tests::sh_in(&ns, "ip", args);
        ip(&["link", "add", "br0", "type", "bridge"]);
        ip(&["link", "add", "up0", "type", "veth", "peer", "name", "lan0"]);
        for dev in ["br0", "up0", "lan0"] {
            ip(&["link", "set", dev, "up"]);
        }
        ip(&["addr", "add", "192.168.1.2/24", "dev", "up0"]);
        ip(&["addr", "add", "192.168.15.254/24", "dev", "br0"]);
        ip(&[
            "neigh",
            "replace",
            &RED.to_string(),
            "lladdr",
            "02:00:00:00:00:01",
            "dev",
            "br0",
            "nud",
            "permanent",
        ]);
        netns_tests::sh_in(&ns, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        let (br0, up0) = netns_user::sys::netlink::in_ns(&ns, |r| async move {
            Ok((r.link("br0").await?, r.link("up0").await?))
        })
        .unwrap();
        bed.set_fast(FastConfig {
            mode: if xdp { FAST_XDP } else { FAST_TC },
            uplink_ifindex: up0.index,
            gateway_mac: br0.mac,
            flags: 0,
            bridge_refresh_ns: 0,
            bridge_ifindex: br0.index,
            hop_gen: 0,
            ..FastConfig::default()
        })
        .unwrap();
        bed.set_port(
            br0.index,
            PortState {
                master: 0,
                flags: PORT_UP | PORT_BRIDGE,
            },
        )
        .unwrap();
        bed.set_port(
            up0.index,
            PortState {
                master: 0,
                flags: PORT_UP,
            },
        )
        .unwrap();
        bed.set_port(
            9999,
            PortState {
                master: br0.index,
                flags: PORT_UP,
            },
        )
        .unwrap();
        let now = nat_ebpf::monotonic_ns();
        bed.set_fdb(
            MAC_A,
            FdbEntry {
                ifindex: 9999,
                _pad: 0,
                seen_ns: now,
                bridged_ns: now,
            },
        )
        .unwrap();
        run(
            &bed,
            PROG_NAT_EGRESS,
            &frame(RED, LAN, &L4::udp(45100, 7000, b"first")),
        );
        let from_lan = packet::frame(
            up0.mac,
            [2, 0, 0, 0, 0, 3],
            &Ipv4::new(LAN, EXT),
            &L4::udp(7000, 45100, b"in"),
        )
        .to_vec();
        let (prog, pass) = if xdp {
            (PROG_XDP_FAST_IN, XDP_PASS)
        } else {
            (PROG_NAT_INGRESS, NEXT)
        };
        let o = bed.run_on(prog, &from_lan, Some(up0.index)).unwrap();
        assert_eq!(o.code, pass, "left to the slow path");
        if xdp {
            assert_eq!(o.frame, from_lan, "untouched");
        }
        let c = counters(&bed);
        assert_eq!(c["redirect_failed"], 1, "{c:?}");
        assert_eq!(c[if xdp { "fast_in_xdp" } else { "fast_in_tc" }], 0);
    }
}

/// Every program passes the verifier at every diagnostics level (the logging code grows the
/// programs; a level that makes one too complex would refuse `up --log-level`), and what
/// each costs the verifier is in the summary (`cargo xtask test` prints it).
#[test]
fn every_program_passes_the_verifier_at_every_log_level() {
    if !privileged("verifier") {
        return;
    }
    let mut lines = Vec::new();
    for level in 0u8..=5 {
        let costs = netns_testkit::progtest::verifier_costs(level).expect("object loads");
        let mut text = Vec::new();
        for (name, cost) in costs {
            match cost {
                Ok(n) => text.push(format!("{name} {n}")),
                Err(e) => panic!("log level {level}: the verifier refused {name}: {e}"),
            }
        }
        text.sort();
        lines.push(format!("  log level {level}: {}", text.join(", ")));
    }
    let text = format!(
        "verifier: instructions processed per program\n{}",
        lines.join("\n")
    );
    println!("{text}");
    netns_tests::record_summary("verifier", &text);
}
