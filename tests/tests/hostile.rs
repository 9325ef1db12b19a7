//! Hostile traffic in real labs: frames crafted byte by byte and put on the wire with
//! AF_PACKET from lan (outside) and red (inside), each kind checked for what the NAT must do
//! with it (drop it, or pass it on as designed), the counter that says so, nothing reaching
//! a host it must not reach, an established TCP connection unaffected, and the lab passing
//! its acceptance exchanges afterwards. Runs with the fast path at TC and in XDP; the
//! summary (kinds, frames, outcomes) is printed by `cargo xtask test`.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use netns_testkit::packet::{self, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Ipv4, L4, Mac};
use netns_tests::{
    LabGuard, UdpEcho, in_ns, privileged, record_summary, snmp,
    wire::{Wire, ipv4_matching, mac_of, no_ipv4},
};
use netns_user::{
    config::{FastPath, LabConfig},
    nat::NatKind,
    probe,
};

const EXT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 3);
const RED: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 1);
const BLUE: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 254);
/// How long a kind's effects are waited for (nothing is expected to take longer).
const SETTLE: Duration = Duration::from_millis(300);

fn counters(prefix: &str) -> BTreeMap<String, u64> {
    let mut c: BTreeMap<String, u64> = netns_user::ops::conntrack::stats(prefix)
        .unwrap()
        .counters
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    // Translated inbound UDP, by whichever path took it.
    let in_udp = c["in_udp"] + c["fast_in_tc"] + c["fast_in_xdp"];
    c.insert("in_udp_any".into(), in_udp);
    c
}

/// A TCP connection from red to an echo server on lan, kept open through the whole suite:
/// after each kind a block of bytes must come back unchanged.
struct Bystander {
    stream: TcpStream,
    /// Its external port (what lan sees).
    ext_port: u16,
    rounds: u32,
    _server: std::thread::JoinHandle<()>,
}

impl Bystander {
    fn start(g: &LabGuard) -> Bystander {
        let listener = in_ns(&g.lab.ns("lan"), || {
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, 7200)).unwrap()
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            let (mut s, peer) = listener.accept().unwrap();
            tx.send(peer).unwrap();
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        let stream = in_ns(&g.lab.ns("red"), || {
            TcpStream::connect(SocketAddrV4::new(LAN, 7200)).unwrap()
        });
        stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let peer = rx.recv_timeout(Duration::from_secs(3)).unwrap();
        assert_eq!(
            peer.ip(),
            std::net::IpAddr::V4(EXT),
            "the bystander is translated"
        );
        Bystander {
            stream,
            ext_port: peer.port(),
            rounds: 0,
            _server: server,
        }
    }

    fn still_flowing(&mut self, after: &str) {
        self.rounds += 1;
        let block: Vec<u8> = (0..2048u32).map(|i| (i * 7 + self.rounds) as u8).collect();
        self.stream.write_all(&block).unwrap();
        let mut back = vec![0u8; block.len()];
        self.stream
            .read_exact(&mut back)
            .unwrap_or_else(|e| panic!("the bystander connection after {after}: {e}"));
        assert_eq!(back, block, "the bystander's bytes after {after}");
    }
}

/// The lab's wires and addresses.
struct Net {
    lan: Wire,
    red: Wire,
    blue: Wire,
    lan_mac: Mac,
    uplink_mac: Mac,
    red_mac: Mac,
    gw_mac: Mac,
}

impl Net {
    fn of(g: &LabGuard) -> Net {
        let (lan_ns, red_ns, router) = (g.lab.ns("lan"), g.lab.ns("red"), g.lab.ns("host"));
        Net {
            lan: Wire::open(&lan_ns, "lan0"),
            red: Wire::open(&red_ns, "veth-red"),
            blue: Wire::open(&g.lab.ns("blue"), "veth-blue"),
            lan_mac: mac_of(&lan_ns, "lan0"),
            uplink_mac: mac_of(&router, "uplink"),
            red_mac: mac_of(&red_ns, "veth-red"),
            gw_mac: mac_of(&router, "v-net-0"),
        }
    }

    /// An IPv4 frame from lan to the router.
    fn lan_frame(&self, ip: &Ipv4, l4: &L4) -> Vec<u8> {
        packet::frame(self.uplink_mac, self.lan_mac, ip, l4).to_vec()
    }

    /// An IPv4 packet's bytes, framed from lan to the router.
    fn lan_raw(&self, ip_bytes: &[u8]) -> Vec<u8> {
        packet::ethernet(self.uplink_mac, self.lan_mac, ETH_P_IP, ip_bytes).to_vec()
    }

    fn red_frame(&self, ip: &Ipv4, l4: &L4) -> Vec<u8> {
        packet::frame(self.gw_mac, self.red_mac, ip, l4).to_vec()
    }

    /// Frames the kernel has taken on all three wires so far.
    fn sent(&self) -> usize {
        self.lan.sent() + self.red.sent() + self.blue.sent()
    }

    /// Drains what is still arriving from earlier kinds.
    fn quiet(&self) {
        for w in [&self.lan, &self.red, &self.blue] {
            let _ = w.received(Duration::from_millis(50));
        }
    }
}

fn tcp(sport: u16, dport: u16, flags: u8) -> L4<'static> {
    L4::tcp(sport, dport, flags, (1, 0), 1024, &[])
}

/// One kind of hostile traffic: what was sent and what came of it, for the summary.
struct Outcome {
    kind: &'static str,
    frames: usize,
    result: String,
}

/// Runs one kind: `send` puts its frames on the wire (counted as the kernel takes them, so
/// the summary never counts a frame that was refused); then every counter in `expect` must
/// have moved by exactly that much, no other `drop_*` counter may have moved, and `check`
/// looks at what arrived where (red, blue, lan).
struct Suite<'a> {
    g: &'a LabGuard,
    net: Net,
    bystander: Bystander,
    outcomes: Vec<Outcome>,
}

impl Suite<'_> {
    fn kind(
        &mut self,
        kind: &'static str,
        expect: &[(&str, u64)],
        send: impl FnOnce(&Net),
        check: impl FnOnce(&Net, &Arrived) -> String,
    ) {
        self.net.quiet();
        let before = counters(self.g.prefix());
        let sent_before = self.net.sent();
        send(&self.net);
        let frames = self.net.sent() - sent_before;
        assert!(frames > 0, "{kind}: no frame reached the wire");
        let arrived = Arrived {
            red: self.net.red.received(SETTLE),
            blue: self.net.blue.received(Duration::ZERO),
            lan: self.net.lan.received(Duration::ZERO),
        };
        let after = counters(self.g.prefix());
        for (name, want) in expect {
            assert_eq!(after[*name] - before[*name], *want, "{kind}: counter {name}");
        }
        for (name, v) in &after {
            if name.starts_with("drop_") && !expect.iter().any(|(n, _)| n == name) {
                assert_eq!(*v, before[name], "{kind}: unexpected {name}");
            }
        }
        let result = check(&self.net, &arrived);
        self.bystander.still_flowing(kind);
        self.outcomes.push(Outcome { kind, frames, result });
    }
}

struct Arrived {
    red: Vec<Vec<u8>>,
    blue: Vec<Vec<u8>>,
    lan: Vec<Vec<u8>>,
}

fn hostile_traffic_is_dropped_or_passed_as_designed(mode: FastPath) {
    if !privileged("hostile") {
        return;
    }
    let mut cfg = LabConfig::reference();
    cfg.nat.as_mut().unwrap().ebpf.fast_path = mode;
    let g = LabGuard::up_with(&cfg, &format!("hs{}", &mode.name()[..1]), NatKind::Ebpf);
    let (red_ns, lan_ns, router) = (g.lab.ns("red"), g.lab.ns("lan"), g.lab.ns("host"));

    // Red's UDP mapping, the target of the inbound kinds.
    let echo = UdpEcho::start(&lan_ns, &[7101]);
    let red_sock = in_ns(&red_ns, || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 47100)).unwrap()
    });
    red_sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    red_sock.send_to(b"open", SocketAddrV4::new(LAN, 7101)).unwrap();
    let mut buf = [0u8; 2048];
    red_sock.recv_from(&mut buf).expect("the mapping works");
    let mapped = echo.seen()[0].1.port();
    red_sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let red_got_nothing = |what: &str| {
        let mut b = [0u8; 2048];
        assert!(red_sock.recv_from(&mut b).is_err(), "red's socket got {what}");
    };

    let start = counters(g.prefix());
    let bystander = Bystander::start(&g);
    let mut s = Suite {
        g: &g,
        net: Net::of(&g),
        bystander,
        outcomes: Vec::new(),
    };
    let to_mapped = |sport: u16| (Ipv4::new(LAN, EXT), sport, mapped);

    // --- Truncated headers, from lan. ---
    // No frame shorter than an Ethernet header: the kernel refuses one on a veth (EINVAL, its
    // min_header_len is 14, root or not), so it could never reach the NAT. The shortest that
    // does is a bare header.
    let hdr_errors = || snmp(&router, "Ip", "InHdrErrors") + snmp(&router, "IpExt", "InTruncatedPkts");
    let errors_before = hdr_errors();
    s.kind(
        "Ethernet header alone (IPv4 EtherType, no IPv4 header)",
        &[],
        |n| n.lan.send(&n.lan_raw(&[])).unwrap(),
        |_, a| {
            assert!(no_ipv4(&a.red) && no_ipv4(&a.blue));
            "passed untouched; the router's kernel drops it".into()
        },
    );
    // It did reach the router.
    assert!(
        hdr_errors() > errors_before,
        "the router's kernel counts the bare header"
    );
    let errors_before = hdr_errors();
    s.kind(
        "truncated IPv4 header (12 of 20 bytes)",
        &[],
        |n| {
            let ip = packet::ipv4_packet(&Ipv4::new(LAN, EXT), &L4::udp(7101, mapped, b"x"));
            n.lan.send(&n.lan_raw(&ip[..12])).unwrap();
        },
        |_, a| {
            assert!(no_ipv4(&a.red));
            "passed untouched; the router's kernel drops it".into()
        },
    );
    assert!(
        hdr_errors() > errors_before,
        "the router's kernel counts the truncated header"
    );
    for (kind, proto, keep) in [
        ("truncated UDP header (3 of 8 bytes)", packet::PROTO_UDP, 3usize),
        ("truncated TCP header (10 of 20 bytes)", packet::PROTO_TCP, 10),
        ("truncated ICMP echo reply (4 of 8 bytes)", packet::PROTO_ICMP, 4),
    ] {
        s.kind(
            kind,
            &[("drop_malformed", 1)],
            |n| {
                let l4 = match proto {
                    packet::PROTO_UDP => L4::udp(7101, mapped, &[]),
                    packet::PROTO_TCP => tcp(7200, mapped, 0x10),
                    _ => L4::echo(true, mapped, 1, &[]),
                };
                let full = packet::l4_bytes(LAN, EXT, &l4);
                let mut ip = Ipv4::new(LAN, EXT);
                ip.proto = proto;
                n.lan
                    .send(&n.lan_raw(&packet::ipv4_raw(&ip, &full[..keep])))
                    .unwrap();
            },
            |_, a| {
                assert!(no_ipv4(&a.red));
                "dropped (drop_malformed)".into()
            },
        );
    }

    // --- Checksums. ---
    s.kind(
        "bad IPv4 header checksum to a mapping",
        &[("drop_bad_checksum", 1), ("slow_ip_checksum", 1)],
        |n| {
            let (ip, sport, dport) = to_mapped(7101);
            let mut f = n.lan_frame(&ip, &L4::udp(sport, dport, b"bad ip csum"));
            f[packet::ETH_HLEN + 10] ^= 0x5a;
            n.lan.send(&f).unwrap();
        },
        |_, a| {
            assert!(no_ipv4(&a.red), "nothing reaches red");
            "dropped before any state (drop_bad_checksum)".into()
        },
    );
    red_got_nothing("a datagram with a bad IPv4 checksum");
    let csum_errors = snmp(&red_ns, "Udp", "InCsumErrors");
    s.kind(
        "bad UDP checksum to a mapping",
        &[("in_udp_any", 1)],
        |n| {
            let (ip, sport, dport) = to_mapped(7101);
            let mut f = n.lan_frame(&ip, &L4::udp(sport, dport, b"bad udp csum"));
            f[packet::ETH_HLEN + 20 + 6] ^= 0x5a;
            n.lan.send(&f).unwrap();
        },
        |_, a| {
            let delivered = ipv4_matching(&a.red, |ip| {
                ip.header.dst == RED
                    && ip.ports() == Some((7101, 47100))
                    && ip.header_ok
                    && !ip.l4_checksum_ok()
            });
            assert_eq!(delivered, 1, "translated, still failing its checksum");
            "translated (L4 checksums are not verified: too costly); red's kernel drops it".into()
        },
    );
    red_got_nothing("a datagram with a bad UDP checksum");
    assert!(
        snmp(&red_ns, "Udp", "InCsumErrors") > csum_errors,
        "red's kernel counts it"
    );

    // --- TTL. ---
    for ttl in [1u8, 0] {
        s.kind(
            if ttl == 1 {
                "TTL 1 from red"
            } else {
                "TTL 0 from red"
            },
            &[],
            |n| {
                n.red
                    .send(&n.red_frame(&Ipv4::new(RED, LAN).ttl(ttl), &L4::udp(47101, 7101, b"ttl")))
                    .unwrap();
            },
            |_, a| {
                let exceeded = ipv4_matching(&a.red, |ip| {
                    ip.header.src == GATEWAY
                        && ip.header.proto == packet::PROTO_ICMP
                        && ip.data.first() == Some(&11)
                });
                assert_eq!(exceeded, 1, "red gets time exceeded");
                assert_eq!(
                    ipv4_matching(&a.lan, |ip| ip.header.dst == LAN),
                    0,
                    "nothing leaves"
                );
                "slow path; the router answers time exceeded".into()
            },
        );
    }
    s.kind(
        "TTL 1 from lan to the port forward",
        &[("icmp_error_out", 1)],
        |n| {
            n.lan
                .send(&n.lan_frame(&Ipv4::new(LAN, EXT).ttl(1), &tcp(5501, 80, 0x02)))
                .unwrap();
        },
        |_, a| {
            assert!(no_ipv4(&a.blue), "nothing reaches blue");
            // The router's time exceeded quotes the packet as lan sent it (RFC 5508).
            let quoted = ipv4_matching(&a.lan, |ip| {
                let q = ip.data.get(8..8 + 24);
                ip.header.proto == packet::PROTO_ICMP
                    && ip.data.first() == Some(&11)
                    && ip.l4_checksum_ok()
                    && q.is_some_and(|q| q[16..20] == EXT.octets() && q[22..24] == 80u16.to_be_bytes())
            });
            assert_eq!(quoted, 1, "lan gets time exceeded quoting 192.168.1.2:80");
            "DNAT, then time exceeded, its quote translated back".into()
        },
    );

    // --- Fragments. ---
    s.kind(
        "tiny first TCP fragment (8 bytes) to the port forward",
        &[("drop_malformed", 1), ("fragments_held", 1)],
        |n| {
            let seg = packet::l4_bytes(LAN, EXT, &tcp(5502, 80, 0x02));
            let mut ip = Ipv4::new(LAN, EXT).id(901);
            ip.proto = packet::PROTO_TCP;
            let mut first = ip.clone();
            first.more_fragments = true;
            n.lan
                .send(&n.lan_raw(&packet::ipv4_raw(&first, &seg[..8])))
                .unwrap();
            let mut rest = ip.clone();
            rest.frag_offset = 1;
            n.lan
                .send(&n.lan_raw(&packet::ipv4_raw(&rest, &seg[8..])))
                .unwrap();
        },
        |_, a| {
            assert!(no_ipv4(&a.blue), "nothing reaches blue");
            "dropped: the first fragment cannot show its flags; the rest, with no first, is held \
             (never sent on) and goes to the router only"
                .into()
        },
    );
    let overlaps = snmp(&red_ns, "IpExt", "ReasmOverlaps");
    s.kind(
        "overlapping UDP fragments to a mapping",
        &[("in_udp", 1), ("fragments", 1)],
        |n| {
            let dgram = packet::l4_bytes(LAN, EXT, &L4::udp(7101, mapped, &[0x33; 16]));
            let mut ip = Ipv4::new(LAN, EXT).id(902);
            ip.proto = packet::PROTO_UDP;
            let mut first = ip.clone();
            first.more_fragments = true;
            n.lan
                .send(&n.lan_raw(&packet::ipv4_raw(&first, &dgram[..16])))
                .unwrap();
            // Offset 8 bytes: rewrites bytes 8..16 the first fragment already carried.
            let mut second = ip.clone();
            second.frag_offset = 1;
            n.lan
                .send(&n.lan_raw(&packet::ipv4_raw(&second, &dgram[8..])))
                .unwrap();
        },
        |_, a| {
            assert_eq!(
                ipv4_matching(&a.red, |ip| ip.is_fragment() && ip.header.dst == RED),
                2
            );
            "translated (the NAT does not reassemble); red's kernel drops the overlap".into()
        },
    );
    red_got_nothing("an overlapping datagram");
    assert!(
        snmp(&red_ns, "IpExt", "ReasmOverlaps") > overlaps,
        "red's kernel counts the overlap"
    );
    s.kind(
        "tiny UDP fragments (header alone first) to a mapping",
        &[("in_udp", 1), ("fragments", 2)],
        |n| {
            let dgram = packet::l4_bytes(LAN, EXT, &L4::udp(7101, mapped, b"in two pieces..."));
            let mut ip = Ipv4::new(LAN, EXT).id(903);
            ip.proto = packet::PROTO_UDP;
            for f in packet::fragments(&ip, &dgram, 8) {
                n.lan.send(&n.lan_raw(&f)).unwrap();
            }
        },
        |_, _| {
            let mut b = [0u8; 64];
            let (len, from) = red_sock.recv_from(&mut b).expect("red gets the datagram");
            assert_eq!(
                (&b[..len], from),
                (&b"in two pieces..."[..], SocketAddrV4::new(LAN, 7101).into())
            );
            "translated and reassembled by red, checksum valid".into()
        },
    );

    // --- Spoofing and unsolicited traffic. ---
    s.kind(
        "ICMP errors quoting flows that do not exist",
        &[("drop_unsolicited", 1)],
        |n| {
            let quote = |dport: u16, sport: u16| {
                packet::ipv4_packet(&Ipv4::new(EXT, LAN), &L4::udp(sport, dport, b"q")).to_vec()
            };
            let unreachable = |q: &[u8]| {
                n.lan_frame(
                    &Ipv4::new(LAN, EXT),
                    &L4::Icmp {
                        typ: 3,
                        code: 3,
                        rest: [0; 4],
                        body: q,
                    },
                )
            };
            // Red's mapping, but to a port it never sent to: refused by filtering.
            n.lan.send(&unreachable(&quote(9999, mapped))).unwrap();
            // A port nobody holds: the router's own business (its stack ignores it).
            n.lan.send(&unreachable(&quote(7101, 1))).unwrap();
        },
        |_, a| {
            assert!(no_ipv4(&a.red), "no ICMP reaches red");
            "dropped (mapping without that flow) / passed to the router (no mapping)".into()
        },
    );
    s.kind(
        "spoofed replies to a mapping (other address, other port)",
        &[("drop_unsolicited", 2)],
        |n| {
            let mut spoofed = Ipv4::new(Ipv4Addr::new(192, 168, 1, 99), EXT);
            spoofed.ttl = 64;
            n.lan
                .send(&n.lan_frame(&spoofed, &L4::udp(7101, mapped, b"spoof")))
                .unwrap();
            n.lan
                .send(&n.lan_frame(&Ipv4::new(LAN, EXT), &L4::udp(7999, mapped, b"spoof")))
                .unwrap();
        },
        |_, a| {
            assert!(no_ipv4(&a.red));
            "dropped (address-and-port-dependent filtering)".into()
        },
    );
    red_got_nothing("a spoofed reply");
    let syn_port = s.bystander.ext_port;
    s.kind(
        "unsolicited SYN to a TCP mapping",
        &[("drop_unsolicited", 1)],
        |n| {
            n.lan
                .send(&n.lan_frame(&Ipv4::new(LAN, EXT), &tcp(5503, syn_port, 0x02)))
                .unwrap();
        },
        |_, a| {
            assert!(no_ipv4(&a.red));
            let answers = ipv4_matching(&a.lan, |ip| {
                ip.header.src == EXT && ip.header.proto == packet::PROTO_TCP
            });
            assert_eq!(answers, 0, "no RST or SYN-ACK (RFC 5382 REQ-4)");
            "dropped silently".into()
        },
    );

    // --- Not IPv4: left alone. ---
    let arp_request = |sender_mac: Mac, sender: Ipv4Addr, target: Ipv4Addr| {
        let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
        a.extend_from_slice(&sender_mac);
        a.extend_from_slice(&sender.octets());
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&target.octets());
        packet::ethernet([0xff; 6], sender_mac, ETH_P_ARP, &a).to_vec()
    };
    let ipv6_multicast = |src: Mac| {
        let mut h = vec![0x60, 0, 0, 0, 0, 8, 17, 1];
        h.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        h.extend_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        h.extend_from_slice(&[0x13, 0x88, 0x13, 0x88, 0, 8, 0, 0]);
        packet::ethernet([0x33, 0x33, 0, 0, 0, 1], src, ETH_P_IPV6, &h).to_vec()
    };
    // VLAN 100, carrying a datagram of an established flow: were it taken for untagged
    // traffic, it would cross the NAT into the other network.
    let vlan_tagged = |dst: Mac, src: Mac, ip: &Ipv4, sport: u16, dport: u16| {
        let inner = packet::ipv4_packet(ip, &L4::udp(sport, dport, b"tagged"));
        let mut payload = vec![0x00, 100, 0x08, 0x00];
        payload.extend_from_slice(&inner);
        packet::ethernet(dst, src, packet::ETH_P_8021Q, &payload).to_vec()
    };
    s.kind(
        "ARP, IPv6 and VLAN-tagged frames from red",
        &[],
        |n| {
            let before = counters(g.prefix());
            n.red.send(&arp_request(n.red_mac, RED, Ipv4Addr::new(192, 168, 15, 77))).unwrap();
            n.red.send(&ipv6_multicast(n.red_mac)).unwrap();
            n.red.send(&vlan_tagged([0xff; 6], n.red_mac, &Ipv4::new(RED, BLUE), 1000, 2000)).unwrap();
            n.red
                .send(&vlan_tagged(n.gw_mac, n.red_mac, &Ipv4::new(RED, LAN), 47100, 7101))
                .unwrap();
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(counters(g.prefix()), before, "the NAT counts nothing");
        },
        |n, a| {
            let arp = arp_request(n.red_mac, RED, Ipv4Addr::new(192, 168, 15, 77));
            assert!(a.blue.contains(&arp), "blue sees the ARP request byte for byte");
            assert!(
                a.blue.iter().any(|f| f[12..14] == ETH_P_IPV6.to_be_bytes() && f[14..] == ipv6_multicast([0; 6])[14..]),
                "blue sees the IPv6 frame byte for byte"
            );
            // The kernel moves a VLAN tag out of the frame on receipt; the rest is untouched.
            let tagged = vlan_tagged([0; 6], [0; 6], &Ipv4::new(RED, BLUE), 1000, 2000);
            assert!(
                a.blue.iter().any(|f| f.len() > 18 && f[14..] == tagged[18..]),
                "blue sees the tagged broadcast's IPv4 packet untranslated"
            );
            assert!(no_ipv4(&a.lan), "the tagged datagram to the gateway does not cross");
            "bridged untouched; a tagged frame to the gateway does not cross the NAT".into()
        },
    );
    s.kind(
        "ARP, IPv6 and VLAN-tagged frames from lan",
        &[],
        |n| {
            let before = counters(g.prefix());
            n.lan.send(&arp_request(n.lan_mac, LAN, EXT)).unwrap();
            n.lan.send(&ipv6_multicast(n.lan_mac)).unwrap();
            n.lan
                .send(&vlan_tagged(
                    n.uplink_mac,
                    n.lan_mac,
                    &Ipv4::new(LAN, EXT),
                    7101,
                    mapped,
                ))
                .unwrap();
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(counters(g.prefix()), before, "the NAT counts nothing");
        },
        |_, a| {
            let reply = a.lan.iter().any(|f| {
                f[12..14] == ETH_P_ARP.to_be_bytes() && f[20..22] == [0, 2] && f[28..32] == EXT.octets()
            });
            assert!(reply, "the router still answers ARP");
            assert!(no_ipv4(&a.red) && no_ipv4(&a.blue));
            "passed to the router's stack untouched".into()
        },
    );

    // Afterwards: the acceptance exchanges, and the bystander one last time.
    s.bystander.still_flowing("the suite");
    let checks = probe::check(&g.lab, Duration::from_secs(3)).unwrap();
    for c in &checks {
        assert!(
            c.passed,
            "acceptance after the hostile suite: {} ({})",
            c.name, c.detail
        );
    }
    let total: usize = s.outcomes.iter().map(|o| o.frames).sum();
    let mut text = format!(
        "hostile ({} fast path): {} kinds, {total} frames (those the kernel took; none shorter than an \
         Ethernet header, which it refuses on a veth); the bystander TCP connection checked {} times, \
         no byte lost; acceptance {}/{} afterwards",
        mode.name(),
        s.outcomes.len(),
        s.bystander.rounds,
        checks.len(),
        checks.len()
    );
    let end = counters(g.prefix());
    let drops: Vec<String> = end
        .iter()
        .filter(|(k, v)| k.starts_with("drop_") && **v > start[*k])
        .map(|(k, v)| format!("{k} {}", v - start[k]))
        .collect();
    text.push_str(&format!("\n  drops by reason: {}", drops.join(", ")));
    for o in &s.outcomes {
        text.push_str(&format!("\n  {} ({} frames): {}", o.kind, o.frames, o.result));
    }
    println!("{text}");
    record_summary(&format!("hostile-{}", mode.name()), &text);
}
netns_tests::modes!(hostile_traffic_is_dropped_or_passed_as_designed);
