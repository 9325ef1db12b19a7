//! The scenario's acceptance exchanges, through each kernel NAT backend and without NAT:
//! real namespaces, real packets, the peers' view checked.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::Duration,
};

use netns_tests::{LabGuard, Nat, in_ns, privileged};
use netns_user::{bpf, config::FastPath, nat::NatKind, probe};

const UPLINK: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 3);
const RED: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 1);
const WAIT: Duration = Duration::from_secs(3);

fn scenario_passes_with(nat: impl Into<Nat>, tag: &str) {
    let nat = nat.into();
    if !privileged(tag) {
        return;
    }
    let g = LabGuard::up(tag, nat);
    let checks = probe::check(&g.lab, WAIT).unwrap();
    // red and blue ping, red's UDP and TCP, lan's HTTP through the forward.
    assert_eq!(checks.len(), 5, "{checks:#?}");
    for c in &checks {
        assert!(c.ok && c.passed, "{nat:?}: {} failed: {}", c.name, c.detail);
        let seen = c.seen.expect("a successful exchange records what the peer saw");
        if c.name.starts_with("http") {
            // DNAT keeps the client's own address.
            assert_eq!(seen.source, LAN, "{}", c.name);
        } else {
            // SNAT: lan sees the router's uplink address, never 192.168.15.x.
            assert_eq!(seen.source, UPLINK, "{}", c.name);
        }
    }
    // The lab's eBPF program on the uplink saw the traffic both ways.
    let counters = bpf::read_uplink_counters(g.prefix()).unwrap();
    assert!(
        counters.egress_packets >= 5 && counters.ingress_packets >= 5,
        "{counters:?}"
    );
    // The 1 MiB TCP payload left by the uplink.
    assert!(counters.egress_bytes >= probe::TCP_PAYLOAD as u64, "{counters:?}");
}

#[test]
fn iptables_nat_passes_the_scenario() {
    scenario_passes_with(NatKind::Iptables, "ipt");
}

#[test]
fn nftables_nat_passes_the_scenario() {
    scenario_passes_with(NatKind::Nftables, "nft");
}

#[test]
fn ebpf_nat_passes_the_scenario() {
    scenario_passes_with(NatKind::Ebpf, "ebp");
}

#[test]
fn ebpf_nat_with_the_xdp_fast_path_passes_the_scenario() {
    scenario_passes_with(Nat::ebpf(FastPath::Xdp), "ebx");
}

#[test]
fn ebpf_nat_without_the_fast_path_passes_the_scenario() {
    scenario_passes_with(Nat::ebpf(FastPath::Off), "ebo");
}

#[test]
fn without_nat_replies_have_no_way_back() {
    if !privileged("without_nat") {
        return;
    }
    let g = LabGuard::up("none", NatKind::None);
    let red = g.lab.ns("red");
    let lan = g.lab.ns("lan");
    let wait = Duration::from_millis(800);
    // lan gets red's datagram from red's own address, but has no route to answer it.
    let lan_sock = in_ns(&lan, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 7011)).unwrap());
    lan_sock.set_read_timeout(Some(WAIT)).unwrap();
    let red_sock = in_ns(&red, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 47011)).unwrap());
    red_sock
        .send_to(b"from red", SocketAddrV4::new(LAN, 7011))
        .unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = lan_sock.recv_from(&mut buf).expect("red's datagram reaches lan");
    assert_eq!(
        (&buf[..n], from),
        (&b"from red"[..], SocketAddrV4::new(RED, 47011).into()),
        "lan sees red's own address"
    );
    assert!(lan_sock.send_to(b"back", from).is_err(), "lan has a route back");
    // So no exchange completes.
    assert!(probe::icmp_echo(&red, &lan, LAN, wait).is_err());
    assert!(probe::udp_echo(&red, &lan, SocketAddrV4::new(LAN, probe::UDP_PORT), wait).is_err());
    assert!(probe::tcp_hash(&red, &lan, SocketAddrV4::new(LAN, probe::TCP_PORT), wait).is_err());
    assert!(probe::http_get(&lan, &g.lab.ns("blue"), 80, SocketAddrV4::new(UPLINK, 80), wait).is_err());
    // ...while the same lab routes fine inside the bridge, so the failure is the NAT's.
    let blue = g.lab.ns("blue");
    let seen = probe::udp_echo(
        &red,
        &blue,
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 15, 2), 9000),
        WAIT,
    )
    .unwrap();
    assert_eq!(seen.source, RED);
    // The combined verdict agrees: every exchange "should fail" and did.
    let checks = probe::check(&g.lab, wait).unwrap();
    assert!(checks.iter().all(|c| !c.ok && c.passed), "{checks:#?}");
}
