//! NAT behaviour after the BCPs (RFC 4787, 5382, 5508), with real namespaces and packets.
//! Tests marked `every_nat!` run against iptables and the eBPF NAT in each fast-path mode
//! (tc, xdp, off) alike; the others test what only the eBPF NAT does (hairpinning, its
//! tables, timeouts, counters).

use std::{
    collections::HashSet,
    io,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use netns_common::nat::{SIDE_EXTERNAL, SIDE_INTERNAL};
use netns_tests::{LabGuard, Nat, UdpEcho, in_ns, privileged, raw_tables, sh_in};
use netns_user::{
    config::{FastPath, LabConfig},
    nat::NatKind,
    probe,
};

const UPLINK: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 3);
const WAIT: Duration = Duration::from_secs(2);

macro_rules! every_nat {
    ($name:ident) => {
        mod $name {
            use netns_tests::Nat;
            use netns_user::{config::FastPath, nat::NatKind};
            #[test]
            fn iptables() {
                super::$name(NatKind::Iptables.into())
            }
            #[test]
            fn ebpf_tc() {
                super::$name(Nat::ebpf(FastPath::Tc))
            }
            #[test]
            fn ebpf_xdp() {
                super::$name(Nat::ebpf(FastPath::Xdp))
            }
            #[test]
            fn ebpf_off() {
                super::$name(Nat::ebpf(FastPath::Off))
            }
        }
    };
}

fn tag(name: &str, nat: Nat) -> String {
    format!("{}{}", &name[..3], nat.letter())
}

/// A UDP socket bound to `port` (0: any), with a receive timeout.
fn udp(port: u16) -> UdpSocket {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Sends `data` to `to` and waits for the echo; an error if none comes.
fn echo(s: &UdpSocket, to: SocketAddrV4, data: &[u8]) -> io::Result<()> {
    s.send_to(data, to)?;
    let mut buf = vec![0u8; 65536];
    let (n, from) = s.recv_from(&mut buf)?;
    assert_eq!(from, to.into(), "reply from the wrong endpoint");
    assert_eq!(&buf[..n], data, "echo payload differs");
    Ok(())
}

fn counter(prefix: &str, name: &str) -> u64 {
    netns_user::ops::conntrack::stats(prefix).unwrap().counters[name]
}

fn endpoint_independent_mapping(nat: Nat) {
    if !privileged("eim") {
        return;
    }
    let g = LabGuard::up(&tag("eim", nat), nat);
    let lan = UdpEcho::start(&g.lab.ns("lan"), &[7001, 7002]);
    in_ns(&g.lab.ns("red"), || {
        let s = udp(41000);
        echo(&s, SocketAddrV4::new(LAN, 7001), b"one").unwrap();
        echo(&s, SocketAddrV4::new(LAN, 7002), b"two").unwrap();
    });
    let seen = lan.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|(_, from, _)| *from.ip() == UPLINK), "{seen:?}");
    // One internal endpoint, one external port, whatever the destination.
    assert_eq!(seen[0].1.port(), seen[1].1.port(), "{seen:?}");
    if nat.is_ebpf() {
        assert_eq!(seen[0].1.port(), 41000, "the free source port is kept");
    }
}
every_nat!(endpoint_independent_mapping);

fn same_source_port_from_red_and_blue(nat: Nat) {
    if !privileged("same_port") {
        return;
    }
    let g = LabGuard::up(&tag("spo", nat), nat);
    let lan = UdpEcho::start(&g.lab.ns("lan"), &[7001]);
    let (red, blue) = (g.lab.ns("red"), g.lab.ns("blue"));
    // Both mappings are live at once: each host sends twice, interleaved.
    let r = in_ns(&red, || udp(42000));
    let b = in_ns(&blue, || udp(42000));
    for round in 0..2u8 {
        echo(&r, SocketAddrV4::new(LAN, 7001), &[b'r', round]).unwrap();
        echo(&b, SocketAddrV4::new(LAN, 7001), &[b'b', round]).unwrap();
    }
    let ports: HashSet<u16> = lan.seen().iter().map(|(_, from, _)| from.port()).collect();
    assert_eq!(
        ports.len(),
        2,
        "two internal endpoints never share an external port: {:?}",
        lan.seen()
    );
}
every_nat!(same_source_port_from_red_and_blue);

fn many_concurrent_udp_flows(nat: Nat) {
    if !privileged("many_flows") {
        return;
    }
    const FLOWS: usize = 2000;
    raise_fd_limit(FLOWS as u64 + 512);
    let g = LabGuard::up(&tag("mfl", nat), nat);
    let _lan = UdpEcho::start(&g.lab.ns("lan"), &[7001]);
    let answered = in_ns(&g.lab.ns("red"), || {
        let socks: Vec<UdpSocket> = (0..FLOWS)
            .map(|_| {
                let s = udp(0);
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect();
        let to = SocketAddrV4::new(LAN, 7001);
        let mut done = vec![false; FLOWS];
        let mut buf = [0u8; 64];
        // A few rounds: a datagram lost to a full socket buffer is sent again.
        for _round in 0..5 {
            for chunk in (0..FLOWS).filter(|i| !done[*i]).collect::<Vec<_>>().chunks(100) {
                for &i in chunk {
                    let _ = socks[i].send_to(&(i as u32).to_be_bytes(), to);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && done.iter().any(|d| !d) {
                for (i, s) in socks.iter().enumerate() {
                    if let Ok(n) = s.recv(&mut buf) {
                        assert_eq!(&buf[..n], &(i as u32).to_be_bytes());
                        done[i] = true;
                    }
                }
            }
            if done.iter().all(|d| *d) {
                break;
            }
        }
        done.iter().filter(|d| **d).count()
    });
    assert_eq!(answered, FLOWS, "every flow answered");
    if nat.is_ebpf() {
        let flows = netns_user::ops::conntrack::live_flows(g.prefix()).unwrap();
        assert!(flows.iter().filter(|f| f.protocol == "udp").count() >= FLOWS);
    }
}
every_nat!(many_concurrent_udp_flows);

fn raise_fd_limit(n: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < n {
        setrlimit(Resource::RLIMIT_NOFILE, n.min(hard), hard).unwrap();
    }
}

/// A raw UDP socket in `ns`: it sees each datagram's IPv4 and UDP headers as they arrived.
fn raw_udp(ns: &str) -> socket2::Socket {
    use socket2::{Domain, Protocol, Socket, Type};
    in_ns(ns, || {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s
    })
}

/// The source port of the datagram carrying `payload` from the uplink's address, as the raw
/// socket `raw` saw it arrive.
fn source_port_seen(raw: &socket2::Socket, payload: &[u8]) -> u16 {
    use std::io::Read as _;
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + WAIT;
    loop {
        let mut r = raw;
        let n = r.read(&mut buf).expect("the datagram on lan");
        let p = netns_testkit::packet::parse_ipv4(&buf[..n]).expect("an IPv4 packet");
        if p.header.src == UPLINK && p.data.get(8..) == Some(payload) {
            return p.ports().expect("UDP ports").0;
        }
        assert!(Instant::now() < deadline, "no datagram {payload:?} on lan");
    }
}

fn icmp_errors_reach_the_sender(nat: Nat) {
    if !privileged("icmp_errors") {
        return;
    }
    let g = LabGuard::up(&tag("ier", nat), nat);
    let raw = raw_udp(&g.lab.ns("lan"));
    let nobody = SocketAddrV4::new(LAN, 7999);
    // blue takes external port 46000 first, towards the same remote (so that every NAT must
    // give red another): the quote below then names a rewritten port, which the NAT must
    // restore (and the quoted checksum with it) for red's socket to match the error.
    in_ns(&g.lab.ns("blue"), || {
        udp(46000).send_to(b"blue first", nobody).unwrap();
    });
    assert_eq!(source_port_seen(&raw, b"blue first"), 46000);
    let err = in_ns(&g.lab.ns("red"), || {
        let s = udp(46000);
        // Nothing listens on lan:7999: lan answers "port unreachable", quoting our datagram
        // as it left the router; the NAT must translate the quote back for red to see it.
        s.connect(nobody).unwrap();
        s.send(b"anyone?").unwrap();
        s.recv(&mut [0u8; 16]).unwrap_err()
    });
    assert_ne!(
        source_port_seen(&raw, b"anyone?"),
        46000,
        "red's source port was not rewritten: the quote would prove nothing"
    );
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    if nat.is_ebpf() {
        assert!(counter(g.prefix(), "icmp_error_in") >= 1);
        if nat.fast != FastPath::Off {
            // ICMP, errors included, is the slow path's.
            assert!(counter(g.prefix(), "slow_protocol") >= 1);
        }
        // An ICMP error never removes a mapping.
        let maps = netns_user::ops::conntrack::mappings(g.prefix()).unwrap();
        assert!(
            maps.iter().any(|m| m.internal == "192.168.15.1:46000"),
            "{maps:?}"
        );
    }
}
every_nat!(icmp_errors_reach_the_sender);

fn fragmented_datagrams_cross_both_ways(nat: Nat) {
    if !privileged("fragments") {
        return;
    }
    let g = LabGuard::up(&tag("frg", nat), nat);
    let lan = UdpEcho::start(&g.lab.ns("lan"), &[7003]);
    let data = probe::payload(4000);
    in_ns(&g.lab.ns("red"), || {
        // 4000 bytes over a 1500-byte MTU: three fragments each way.
        echo(&udp(0), SocketAddrV4::new(LAN, 7003), &data).unwrap();
    });
    let seen = lan.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].1.ip(), seen[0].2), (&UPLINK, 4000));
    if nat.is_ebpf() {
        assert!(
            counter(g.prefix(), "fragments") >= 4,
            "two non-first fragments each way"
        );
        if nat.fast != FastPath::Off {
            // Every fragment, first or not, both ways, takes the slow path.
            assert!(counter(g.prefix(), "slow_fragment") >= 6);
        }
    }
}
every_nat!(fragmented_datagrams_cross_both_ways);

fn unsolicited_inbound_reaches_nobody(nat: Nat) {
    if !privileged("unsolicited") {
        return;
    }
    let g = LabGuard::up(&tag("uns", nat), nat);
    let lan = UdpEcho::start(&g.lab.ns("lan"), &[7001]);
    let red = g.lab.ns("red");
    let sock = in_ns(&red, || udp(43000));
    echo(&sock, SocketAddrV4::new(LAN, 7001), b"hello").unwrap();
    let mapped = lan.seen()[0].1.port();
    // Bound before lan sends, so that a datagram wrongly let in would be seen, not lost.
    let stray = in_ns(&red, || udp(44444));
    in_ns(&g.lab.ns("lan"), || {
        // From the right remote address but another port: address-and-port-dependent
        // filtering lets nothing through.
        let other = udp(7002);
        other
            .send_to(b"sneaky", SocketAddrV4::new(UPLINK, mapped))
            .unwrap();
        // To a port nobody mapped.
        other.send_to(b"knock", SocketAddrV4::new(UPLINK, 44444)).unwrap();
    });
    sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    stray.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    assert!(
        sock.recv(&mut [0u8; 16]).is_err(),
        "a filtered packet reached red"
    );
    assert!(
        stray.recv(&mut [0u8; 16]).is_err(),
        "an unmapped port reached red"
    );
    if nat.is_ebpf() {
        assert!(counter(g.prefix(), "drop_unsolicited") >= 1);
        assert!(counter(g.prefix(), "in_unmapped") >= 1);
    }
}
every_nat!(unsolicited_inbound_reaches_nobody);

fn checksum_offload_off(nat: Nat) {
    if !privileged("offload") {
        return;
    }
    let g = LabGuard::up(&tag("csm", nat), nat);
    // Every veth end computes and verifies checksums in software: a wrong incremental
    // update is dropped by the receiver instead of being trusted.
    for (ns, dev) in [
        ("red", "veth-red"),
        ("blue", "veth-blue"),
        ("host", "veth-red-br"),
        ("host", "veth-blue-br"),
        ("host", "uplink"),
        ("lan", "lan0"),
    ] {
        sh_in(&g.lab.ns(ns), "ethtool", &["-K", dev, "tx", "off", "rx", "off"]);
    }
    let checks = probe::check(&g.lab, Duration::from_secs(3)).unwrap();
    assert!(checks.iter().all(|c| c.passed), "{checks:#?}");
    let lan = UdpEcho::start(&g.lab.ns("lan"), &[7003]);
    in_ns(&g.lab.ns("red"), || {
        echo(&udp(0), SocketAddrV4::new(LAN, 7003), &probe::payload(3000)).unwrap();
    });
    assert_eq!(lan.seen().len(), 1);
}
every_nat!(checksum_offload_off);

/// The reference lab with eBPF NAT settings for the test.
fn lab_with(ebpf: &str) -> LabConfig {
    LabConfig::parse(&format!(
        "{}\n[nat.ebpf]\n{ebpf}\n",
        netns_user::config::REFERENCE_TOML
    ))
    .unwrap()
}

#[test]
fn ebpf_leaves_the_kernel_nat_and_conntrack_unused() {
    if !privileged("no_kernel_nat") {
        return;
    }
    let g = LabGuard::up("kn", NatKind::Ebpf);
    let checks = probe::check(&g.lab, WAIT).unwrap();
    assert!(checks.iter().all(|c| c.passed), "{checks:#?}");
    let host = g.lab.ns("host");
    assert!(
        !sh_in(&host, "iptables-save", &[]).contains("\n-A"),
        "iptables rules in the router"
    );
    assert_eq!(
        sh_in(&host, "nft", &["list", "ruleset"]).trim(),
        "",
        "nftables rules in the router"
    );
    let out = netns_user::sys::netns::command(&host, "conntrack")
        .unwrap()
        .arg("-L")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(" 0 flow entries"),
        "kernel conntrack in the router: {said}"
    );
    // The state is in the BPF maps instead.
    let flows = netns_user::ops::conntrack::live_flows(g.prefix()).unwrap();
    assert_eq!(flows.len(), 5, "{flows:#?}");
    let tcp = flows
        .iter()
        .find(|f| f.remote == format!("{LAN}:{}", probe::TCP_PORT))
        .unwrap();
    // Both sides closed the connection: on the transitory timeout now.
    assert_eq!(tcp.state, "closed");
    assert!(tcp.expires_in_s <= 240.0);
    assert!(tcp.bytes_out >= probe::TCP_PAYLOAD as u64);
    let stats = netns_user::ops::conntrack::stats(g.prefix()).unwrap();
    for (name, min) in [
        ("out_icmp", 2),
        ("in_icmp", 2),
        ("out_udp", 1),
        ("out_tcp", 3),
        ("in_tcp", 3),
    ] {
        assert!(stats.counters[name] >= min, "{name}: {:?}", stats.counters);
    }
    // The UDP reply found its flow established: the fast path took it, not the slow path's
    // translation (`in_*` count the slow path's).
    let c = &stats.counters;
    assert_eq!((c["in_udp"], c["fast_in_tc"] >= 1), (0, true), "{c:?}");
}

#[test]
fn hairpin_reaches_the_forward_through_the_external_address() {
    if !privileged("hairpin") {
        return;
    }
    let g = LabGuard::up("hp", NatKind::Ebpf);
    let seen = probe::http_get(
        &g.lab.ns("red"),
        &g.lab.ns("blue"),
        80,
        SocketAddrV4::new(UPLINK, 80),
        Duration::from_secs(3),
    )
    .unwrap();
    // blue sees the router's address, so its replies come back through the NAT.
    assert_eq!(seen.source, UPLINK);
    assert!(counter(g.prefix(), "hairpinned") >= 4);
}

/// RFC 4787 REQ-6: outbound traffic alone refreshes a mapping. The port range leaves out
/// red's source port, so the mapping's port is drawn from 10,000: a mapping that expired
/// and was made again would (but for a 1-in-10,000 chance) show another.
#[test]
fn short_timeouts_expire_and_outbound_traffic_refreshes() {
    if !privileged("timeouts") {
        return;
    }
    let cfg = lab_with(
        "ports = \"20000-29999\"\ntimeouts = { udp = 2, allow_short = true }\nsweep_interval_ms = 200",
    );
    let g = LabGuard::up_with(&cfg, "to", NatKind::Ebpf);
    // lan only listens: nothing inbound refreshes the mapping.
    let lan = in_ns(&g.lab.ns("lan"), || udp(7001));
    let sock = in_ns(&g.lab.ns("red"), || udp(45000));
    let to = SocketAddrV4::new(LAN, 7001);
    let mut buf = [0u8; 64];
    let mut seen = Vec::new();
    // 3.5 s of datagrams every 0.5 s outlive the 2 s timeout: the mapping stays the same.
    for i in 0..7u8 {
        sock.send_to(&[b'k', i], to).unwrap();
        let (n, from) = lan.recv_from(&mut buf).expect("red's datagram");
        assert_eq!(&buf[..n], &[b'k', i]);
        seen.push(from);
        std::thread::sleep(Duration::from_millis(500));
    }
    let ports: HashSet<u16> = seen.iter().map(|f| f.port()).collect();
    assert_eq!(ports.len(), 1, "refreshed, never remapped: {seen:?}");
    let ext = *ports.iter().next().unwrap();
    assert!((20000..=29999).contains(&ext), "rewritten into the range: {ext}");
    // The first inbound datagram finds the mapping.
    lan.send_to(b"still there?", SocketAddrV4::new(UPLINK, ext))
        .unwrap();
    let (n, from) = sock
        .recv_from(&mut buf)
        .expect("the mapping outlived its timeout");
    assert_eq!(
        (&buf[..n], from),
        (&b"still there?"[..], SocketAddrV4::new(LAN, 7001).into())
    );
    // Then silence: the flow expires and is reclaimed by the sweeper.
    // Expired after 2 s, reclaimed after 1 s more of grace, by a sweeper passing every 0.2 s.
    std::thread::sleep(Duration::from_millis(4500));
    let left = raw_tables(g.prefix()).unwrap().0;
    assert!(left.is_empty(), "expired flows reclaimed: {left:?}");
    // A late reply is unsolicited now.
    let before = counter(g.prefix(), "drop_unsolicited") + counter(g.prefix(), "in_unmapped");
    in_ns(&g.lab.ns("lan"), || {
        udp(0).send_to(b"late", SocketAddrV4::new(UPLINK, ext)).unwrap();
    });
    sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    assert!(sock.recv(&mut [0u8; 16]).is_err());
    assert!(counter(g.prefix(), "drop_unsolicited") + counter(g.prefix(), "in_unmapped") > before);
}

#[test]
fn a_port_range_of_eight_is_exhausted_and_recovers_after_expiry() {
    if !privileged("exhaustion") {
        return;
    }
    let cfg = lab_with("ports = \"40000-40007\"\ntimeouts = { udp = 2, allow_short = true }");
    let g = LabGuard::up_with(&cfg, "ex", NatKind::Ebpf);
    let lan = UdpEcho::start(&g.lab.ns("lan"), &[7001]);
    let to = SocketAddrV4::new(LAN, 7001);
    let socks: Vec<UdpSocket> = in_ns(&g.lab.ns("red"), || (0..9).map(|i| udp(50000 + i)).collect());
    for s in &socks[..8] {
        echo(s, to, b"mine").unwrap();
    }
    let ports: HashSet<u16> = lan.seen().iter().map(|(_, f, _)| f.port()).collect();
    assert_eq!(
        ports,
        (40000..=40007).collect(),
        "every port of the range used once"
    );
    // The ninth finds no port.
    socks[8]
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(echo(&socks[8], to, b"full?").is_err());
    assert!(counter(g.prefix(), "drop_no_port") >= 1);
    // After the timeout (2 s, plus the binding's quarter-timeout slack) the ports are free.
    std::thread::sleep(Duration::from_millis(3000));
    socks[8].set_read_timeout(Some(WAIT)).unwrap();
    echo(&socks[8], to, b"now").unwrap();
    let last = lan.seen().last().unwrap().1;
    assert!((40000..=40007).contains(&last.port()), "{last}");
}

/// Small tables under a flood from both sides: new endpoints beyond the port range and
/// flows beyond the table are dropped and counted, unsolicited traffic from outside creates
/// nothing, an established flow keeps working throughout, and once everything has expired
/// the tables drain to the forward's two static entries and take new flows again.
#[test]
fn a_flood_from_both_sides_is_contained_and_the_tables_drain() {
    if !privileged("flood") {
        return;
    }
    let cfg = lab_with(
        "ports = \"40000-40015\"\nflows = 32\nbindings = 40\nsweep_interval_ms = 200\n\
         timeouts = { udp = 2, allow_short = true }",
    );
    let g = LabGuard::up_with(&cfg, "fl", NatKind::Ebpf);
    let _lan = UdpEcho::start(&g.lab.ns("lan"), &[7001]);
    let to = SocketAddrV4::new(LAN, 7001);
    let kept = in_ns(&g.lab.ns("red"), || udp(47000));
    echo(&kept, to, b"established").unwrap();
    let before = netns_user::ops::conntrack::stats(g.prefix()).unwrap().counters;
    let n = |name: &str, c: &std::collections::BTreeMap<&str, u64>| c[name] - before[name];

    // From outside first, while both tables have room (full ones could take no entry
    // anyway): datagrams and SYNs to every port of the range and around it. They create
    // nothing.
    let tables = |g: &LabGuard| {
        let (f, b) = raw_tables(g.prefix()).unwrap();
        (f.len(), b.len())
    };
    let before_outside = tables(&g);
    assert!(
        before_outside.0 < 32 && before_outside.1 < 40,
        "room for new entries: {before_outside:?}"
    );
    in_ns(&g.lab.ns("lan"), || {
        let s = udp(0);
        for p in 39990..40030u16 {
            s.send_to(b"unsolicited", SocketAddrV4::new(UPLINK, p)).unwrap();
            let _ = std::net::TcpStream::connect_timeout(
                &SocketAddrV4::new(UPLINK, p).into(),
                Duration::from_millis(20),
            );
        }
    });
    assert_eq!(tables(&g), before_outside, "unsolicited traffic made no entry");
    echo(&kept, to, b"still here").unwrap();

    // From inside: 100 new endpoints on blue (16 ports for them all) ...
    let blue_socks: Vec<UdpSocket> = in_ns(&g.lab.ns("blue"), || (0..100).map(|i| udp(52000 + i)).collect());
    for s in &blue_socks {
        s.send_to(b"new", to).unwrap();
    }
    echo(&kept, to, b"still here").unwrap();
    // ... and red's established endpoint to 60 new remote ports (32 flows in all).
    for p in 0..60u16 {
        kept.send_to(b"more", SocketAddrV4::new(LAN, 8000 + p)).unwrap();
    }
    echo(&kept, to, b"still here").unwrap();
    let c = netns_user::ops::conntrack::stats(g.prefix()).unwrap().counters;
    assert!(
        n("drop_no_port", &c) >= 100 - 15,
        "endpoints beyond the range: {}",
        n("drop_no_port", &c)
    );
    assert!(n("drop_map_full", &c) >= 1, "flows beyond the table");
    assert!(n("drop_unsolicited", &c) >= 1, "unsolicited to mapped ports");
    assert!(n("in_unmapped", &c) >= 1, "unsolicited to free ports");
    let (flows, bindings) = raw_tables(g.prefix()).unwrap();
    assert!(
        flows.len() <= 32 && bindings.len() <= 40,
        "{} {}",
        flows.len(),
        bindings.len()
    );

    // Everything expires (2 s, a quarter more for bindings, then a sweep).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (flows, bindings) = raw_tables(g.prefix()).unwrap();
        if flows.is_empty() && bindings.iter().all(|(_, b)| b.is_static()) {
            assert_eq!(bindings.len(), 2, "the forward's two entries stay");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left after expiry: {} flows, {} bindings",
            flows.len(),
            bindings.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Capacity is back: a new endpoint gets a port.
    echo(&blue_socks[99], to, b"room again").unwrap();
}

#[test]
fn tiny_tables_under_pressure_never_keep_half_a_flow() {
    if !privileged("pressure") {
        return;
    }
    // Room for 4 mappings (8 binding entries) and 6 flows; 12 senders.
    let cfg = lab_with("flows = 6\nbindings = 8");
    let g = LabGuard::up_with(&cfg, "pr", NatKind::Ebpf);
    let _lan = UdpEcho::start(&g.lab.ns("lan"), &[7001, 7002]);
    let answered = in_ns(&g.lab.ns("red"), || {
        let mut n = 0;
        for i in 0..12u16 {
            let s = udp(51000 + i);
            s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            for port in [7001, 7002] {
                n += usize::from(echo(&s, SocketAddrV4::new(LAN, port), b"x").is_ok());
            }
        }
        n
    });
    let (flows, bindings) = raw_tables(g.prefix()).unwrap();
    assert!(
        counter(g.prefix(), "drop_map_full") >= 1,
        "the tables did fill up"
    );
    assert_eq!(
        answered,
        flows.len(),
        "every answered exchange has its flow, and only those"
    );
    // Every binding has both entries, pointing at each other.
    let find = |side, proto, addr, port| {
        bindings
            .iter()
            .find(|(k, _)| k.side == side && k.proto == proto && k.addr == addr && k.port == port)
    };
    for (k, b) in &bindings {
        let twin = if k.side == SIDE_EXTERNAL {
            find(SIDE_INTERNAL, k.proto, b.int_addr, b.int_port)
        } else {
            find(SIDE_EXTERNAL, k.proto, b.ext_addr, b.ext_port)
        };
        // (Only the external entry's expiry is kept current: compare the endpoints.)
        let ends = |b: &netns_common::nat::Binding| (b.int_addr, b.int_port, b.ext_addr, b.ext_port);
        assert_eq!(
            twin.map(|(_, t)| ends(t)),
            Some(ends(b)),
            "half a binding: {k:?} {b:?}"
        );
    }
    // Every flow's mapping is whole.
    for (k, f) in &flows {
        let ext = find(SIDE_EXTERNAL, k.proto, f.ext_addr, f.ext_port);
        assert!(
            ext.is_some_and(|(_, b)| b.int_addr == k.int_addr && b.int_port == k.int_port),
            "flow {k:?} without its mapping"
        );
    }
}

fn low_ports_map_to_low_ports(nat: Nat) {
    if !privileged("low_ports") {
        return;
    }
    let g = LabGuard::up(&tag("low", nat), nat);
    let lan = UdpEcho::start(&g.lab.ns("lan"), &[7001]);
    in_ns(&g.lab.ns("red"), || {
        echo(&udp(500), SocketAddrV4::new(LAN, 7001), b"low").unwrap()
    });
    let port = lan.seen()[0].1.port();
    assert!(port < 1024, "a port below 1024 maps below 1024, got {port}");
    if nat.is_ebpf() {
        assert_eq!(port, 500, "kept when free");
    }
}
every_nat!(low_ports_map_to_low_ports);

fn a_zero_udp_checksum_stays_zero(nat: Nat) {
    if !privileged("zero_checksum") {
        return;
    }
    use socket2::{Domain, Protocol, Socket, Type};
    let g = LabGuard::up(&tag("zcs", nat), nat);
    let lan_ns = g.lab.ns("lan");
    // A raw UDP socket on lan sees each datagram's UDP header as it arrived.
    let raw = in_ns(&lan_ns, || {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s
    });
    let _lan = UdpEcho::start(&lan_ns, &[7004]);
    in_ns(&g.lab.ns("red"), || {
        let s = udp(0);
        // SO_NO_CHECK: send without a UDP checksum (0), as IPv4 allows.
        let one: libc::c_int = 1;
        // Safety: a valid socket and a c_int option of the size given.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        assert_eq!(rc, 0);
        echo(&s, SocketAddrV4::new(LAN, 7004), b"no checksum").unwrap();
    });
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
    let deadline = Instant::now() + WAIT;
    loop {
        let n = raw.recv(&mut buf).expect("the datagram on lan");
        // Safety: recv initialised the first n bytes.
        let pkt: Vec<u8> = buf[..n].iter().map(|b| unsafe { b.assume_init() }).collect();
        let ihl = usize::from(pkt[0] & 0x0f) * 4;
        let dport = u16::from_be_bytes([pkt[ihl + 2], pkt[ihl + 3]]);
        if dport == 7004 {
            assert_eq!(&pkt[12..16], &UPLINK.octets(), "translated");
            assert_eq!(&pkt[ihl + 6..ihl + 8], &[0, 0], "a zero UDP checksum stays zero");
            break;
        }
        assert!(Instant::now() < deadline);
    }
}
every_nat!(a_zero_udp_checksum_stays_zero);

#[test]
fn endpoint_independent_filtering_by_configuration() {
    if !privileged("eif") {
        return;
    }
    let g = LabGuard::up_with(
        &lab_with("filtering = \"endpoint-independent\""),
        "ei",
        NatKind::Ebpf,
    );
    let lan = UdpEcho::start(&g.lab.ns("lan"), &[7001]);
    let sock = in_ns(&g.lab.ns("red"), || udp(47000));
    echo(&sock, SocketAddrV4::new(LAN, 7001), b"open").unwrap();
    let mapped = lan.seen()[0].1.port();
    // Another remote port (and it could be another host) reaches red through the mapping.
    in_ns(&g.lab.ns("lan"), || {
        udp(7002)
            .send_to(b"anyone", SocketAddrV4::new(UPLINK, mapped))
            .unwrap();
    });
    let mut buf = [0u8; 16];
    let (n, from) = sock
        .recv_from(&mut buf)
        .expect("endpoint-independent filtering lets it in");
    assert_eq!(
        (&buf[..n], from),
        (&b"anyone"[..], SocketAddrV4::new(LAN, 7002).into())
    );
}
