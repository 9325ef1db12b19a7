//! A soak test, bounded in time: mixed UDP, TCP and ICMP from red and blue at once through
//! the eBPF NAT (fast path on), hundreds of UDP flows alive together, sockets and
//! connections opened and closed all along, and flows expiring and being swept while traffic
//! flows (UDP timeout 2 s, sweeper every 200 ms). Every reply is checked against what its
//! socket sent: nothing lost, nothing delivered to the wrong socket, no payload changed.
//! `NETNS_NAT_SOAK_SECS` sets the duration (default 20 s, what CI runs).

use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

use netns_tests::{LabGuard, privileged};
use netns_user::{config::LabConfig, nat::NatKind, nat::ebpf as nat_ebpf, probe, sys::netns};

const LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 3);
const UPLINK: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const UDP_PORTS: [u16; 4] = [7300, 7301, 7302, 7303];
const TCP_PORT: u16 = 7310;
/// UDP sockets per host, each its own flow: 2 x 150 alive at once.
const SOCKETS: usize = 150;
/// Rounds a socket set lives before it is closed and a new one opened.
const ROUNDS_PER_SET: u32 = 10;

#[derive(Default)]
struct Tally {
    udp_sent: AtomicU64,
    udp_ok: AtomicU64,
    udp_lost: AtomicU64,
    mismatched: AtomicU64,
    tcp_conns: AtomicU64,
    tcp_bytes: AtomicU64,
    tcp_failed: AtomicU64,
    corrupted: AtomicU64,
    pings: AtomicU64,
    pings_failed: AtomicU64,
    socket_sets: AtomicU64,
}

/// Packets the kernel dropped because a CPU's input backlog was full (the second column of
/// /proc/net/softnet_stat, machine-wide): where a datagram can go without any counter of the
/// NAT or of a socket seeing it.
fn backlog_drops() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|d| u64::from_str_radix(d, 16).ok())
        .sum()
}

fn soak_duration() -> Duration {
    let secs = std::env::var("NETNS_NAT_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(20);
    Duration::from_secs(secs.clamp(1, 3600))
}

/// The bytes socket `sock` of `host` sends in `round`: its identity, then a pattern.
fn message(host: u8, sock: usize, round: u32) -> Vec<u8> {
    let mut m = format!("{host}/{sock}/{round}/").into_bytes();
    let len = 16 + (sock * 37 + round as usize * 11) % 500;
    m.extend((0..len).map(|i| (i as u32 ^ round ^ sock as u32) as u8));
    m
}

/// UDP echo on every port of `UDP_PORTS`, until stopped (or the deadline).
fn udp_server(stop: &AtomicBool, ready: &dyn Fn(), deadline: Instant) {
    let socks: Vec<UdpSocket> = UDP_PORTS
        .iter()
        .map(|p| {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, *p)).expect("bind");
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    ready();
    let mut buf = vec![0u8; 2048];
    while !stop.load(Relaxed) && Instant::now() < deadline {
        let mut idle = true;
        for s in &socks {
            while let Ok((n, peer)) = s.recv_from(&mut buf) {
                idle = false;
                let _ = s.send_to(&buf[..n], peer);
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// TCP echo, one thread per connection, until stopped (or the deadline).
fn tcp_server(stop: &AtomicBool, ready: &dyn Fn(), deadline: Instant) {
    let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, TCP_PORT)).expect("bind");
    l.set_nonblocking(true).unwrap();
    ready();
    std::thread::scope(|s| {
        while !stop.load(Relaxed) && Instant::now() < deadline {
            match l.accept() {
                Ok((mut c, _)) => {
                    s.spawn(move || {
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        let mut buf = vec![0u8; 65536];
                        while let Ok(n) = c.read(&mut buf) {
                            if n == 0 || c.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => panic!("accept: {e}"),
            }
        }
    });
}

/// Sets of `SOCKETS` UDP sockets, each sending its own message every round and checking
/// that exactly its message comes back, from the server port it sent to.
fn udp_client(host: u8, deadline: Instant, t: &Tally) {
    let mut round = 0u32;
    let mut buf = vec![0u8; 2048];
    while Instant::now() < deadline {
        let socks: Vec<UdpSocket> = (0..SOCKETS)
            .map(|_| {
                let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
                s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                s
            })
            .collect();
        t.socket_sets.fetch_add(1, Relaxed);
        for _ in 0..ROUNDS_PER_SET {
            if Instant::now() >= deadline {
                break;
            }
            for (i, s) in socks.iter().enumerate() {
                let to = SocketAddrV4::new(LAN, UDP_PORTS[i % UDP_PORTS.len()]);
                s.send_to(&message(host, i, round), to).expect("send");
                t.udp_sent.fetch_add(1, Relaxed);
            }
            for (i, s) in socks.iter().enumerate() {
                let to = SocketAddr::V4(SocketAddrV4::new(LAN, UDP_PORTS[i % UDP_PORTS.len()]));
                match s.recv_from(&mut buf) {
                    Ok((n, from)) if from == to && buf[..n] == message(host, i, round)[..] => {
                        t.udp_ok.fetch_add(1, Relaxed);
                    }
                    Ok(_) => {
                        t.mismatched.fetch_add(1, Relaxed);
                    }
                    Err(_) => {
                        t.udp_lost.fetch_add(1, Relaxed);
                    }
                }
            }
            round += 1;
        }
    }
}

/// Connections opened, filled with a pattern of varying size, read back and closed.
fn tcp_client(host: u8, deadline: Instant, t: &Tally) {
    let mut n = 0u32;
    while Instant::now() < deadline {
        let len = 1 + (n as usize * 7919 + host as usize * 104_729) % 200_000;
        let data: Vec<u8> = (0..len).map(|i| (i as u32 * 31 + n) as u8).collect();
        let ok = (|| -> std::io::Result<bool> {
            let mut c =
                TcpStream::connect_timeout(&SocketAddrV4::new(LAN, TCP_PORT).into(), Duration::from_secs(3))?;
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            let writer = c.try_clone()?;
            let back = std::thread::scope(|s| {
                let w = s.spawn(move || {
                    let mut writer = writer;
                    writer.write_all(&data)?;
                    writer.shutdown(std::net::Shutdown::Write)?;
                    Ok::<_, std::io::Error>(data)
                });
                let mut back = Vec::with_capacity(len);
                let r = c.read_to_end(&mut back);
                (w.join().expect("writer"), r.map(|_| back))
            });
            let (data, back) = (back.0?, back.1?);
            t.tcp_bytes.fetch_add(back.len() as u64, Relaxed);
            Ok(back == data)
        })();
        match ok {
            Ok(true) => {
                t.tcp_conns.fetch_add(1, Relaxed);
            }
            Ok(false) => {
                t.corrupted.fetch_add(1, Relaxed);
            }
            Err(_) => {
                t.tcp_failed.fetch_add(1, Relaxed);
            }
        }
        n += 1;
    }
}

#[test]
fn mixed_traffic_for_a_while_loses_and_corrupts_nothing() {
    if !privileged("soak") {
        return;
    }
    let cfg = LabConfig::parse(&format!(
        "{}\n[nat.ebpf]\ntimeouts = {{ udp = 2, allow_short = true }}\nsweep_interval_ms = 200\n",
        netns_user::config::REFERENCE_TOML
    ))
    .unwrap();
    let g = LabGuard::up_with(&cfg, "soak", NatKind::Ebpf);
    let run_for = soak_duration();
    let started = Instant::now();
    let backlog_drops_before = backlog_drops();
    let deadline = started + run_for;
    let lan = g.lab.ns("lan");
    let servers_until = deadline + Duration::from_secs(15);
    let udp =
        netns::spawn_in(&lan, move |stop, ready| udp_server(stop, ready, servers_until)).expect("UDP server");
    let tcp =
        netns::spawn_in(&lan, move |stop, ready| tcp_server(stop, ready, servers_until)).expect("TCP server");
    let t = Tally::default();
    let mut peak_flows = 0usize;
    std::thread::scope(|s| {
        for (host, name) in [(1u8, "red"), (2, "blue")] {
            let ns = g.lab.ns(name);
            let t = &t;
            let ns2 = ns.clone();
            s.spawn(move || netns::run_in(&ns, || udp_client(host, deadline, t)).unwrap());
            s.spawn(move || netns::run_in(&ns2, || tcp_client(host, deadline, t)).unwrap());
        }
        // ICMP from both hosts, and the conntrack's size, twice a second.
        let mut i = 0;
        while Instant::now() < deadline {
            let host = g.lab.ns(if i % 2 == 0 { "red" } else { "blue" });
            match probe::icmp_echo(&host, &lan, LAN, Duration::from_secs(2)) {
                Ok(seen) if seen.source == UPLINK => t.pings.fetch_add(1, Relaxed),
                _ => t.pings_failed.fetch_add(1, Relaxed),
            };
            peak_flows = peak_flows.max(netns_user::ops::conntrack::live_flows(g.prefix()).unwrap().len());
            std::thread::sleep(Duration::from_millis(500));
            i += 1;
        }
    });
    let _ = udp.stop();
    let _ = tcp.stop();
    let stats = netns_user::ops::conntrack::stats(g.prefix()).unwrap();
    let c = &stats.counters;
    // Where a lost datagram went, if the kernel dropped it at a socket: said in the summary.
    let udp_errors = |n: &str| {
        let ns = g.lab.ns(n);
        format!(
            "{}/{}",
            netns_tests::snmp(&ns, "Udp", "InErrors"),
            netns_tests::snmp(&ns, "Udp", "RcvbufErrors")
        )
    };
    let get = |x: &AtomicU64| x.load(Relaxed);
    let summary = format!(
        "soak: {:.0} s; UDP {} sent, {} echoed, {} lost, {} mismatched ({} sets of {SOCKETS} \
         sockets per host); TCP {} connections, {} bytes echoed, {} failed, {} corrupted; ICMP \
         {} pings, {} failed; conntrack peak {peak_flows} flows, {} new flows, {} new mappings; \
         drops: no_port {}, unsolicited {}, malformed {}, map_full {}; in_unmapped {}; fast path \
         {} out / {} in; kernel UDP InErrors/RcvbufErrors red {}, blue {}, lan {}; backlog drops (all CPUs) {}",
        started.elapsed().as_secs_f64(),
        get(&t.udp_sent),
        get(&t.udp_ok),
        get(&t.udp_lost),
        get(&t.mismatched),
        get(&t.socket_sets),
        get(&t.tcp_conns),
        get(&t.tcp_bytes),
        get(&t.tcp_failed),
        get(&t.corrupted),
        get(&t.pings),
        get(&t.pings_failed),
        c["new_flows"],
        c["new_mappings"],
        c["drop_no_port"],
        c["drop_unsolicited"],
        c["drop_malformed"],
        c["drop_map_full"],
        c["in_unmapped"],
        c["fast_out_tc"],
        c["fast_in_tc"],
        udp_errors("red"),
        udp_errors("blue"),
        udp_errors("lan"),
        backlog_drops() - backlog_drops_before,
    );
    eprintln!("{summary}");
    netns_tests::record_summary("soak", &summary);
    assert!(
        get(&t.udp_sent) > 0 && get(&t.tcp_conns) > 0 && get(&t.pings) > 0,
        "{summary}"
    );
    assert_eq!(get(&t.udp_ok), get(&t.udp_sent), "{summary}");
    assert_eq!(get(&t.mismatched) + get(&t.corrupted), 0, "{summary}");
    assert_eq!(get(&t.tcp_failed) + get(&t.pings_failed), 0, "{summary}");
    for d in [
        "drop_no_port",
        "drop_unsolicited",
        "drop_malformed",
        "drop_map_full",
    ] {
        assert_eq!(c[d], 0, "{d}: {summary}");
    }
    assert!(c["fast_out_tc"] > 0 && c["fast_in_tc"] > 0, "{summary}");
    // Bounded: closed sockets' flows expire (2 s) and are swept, so the table holds the
    // flows of the last few seconds, not of the whole run, and no UDP flow outlives its
    // timeout once the traffic stops.
    if run_for >= Duration::from_secs(10) {
        assert!((peak_flows as u64) < c["new_flows"] / 2, "{summary}");
    }
    // Expired after 2 s, and swept: the sweeper paces itself on large tables (at most 5 %
    // of a CPU), so give it up to 60 s for what the run left.
    let until = Instant::now() + Duration::from_secs(60);
    let (mut udp_left, mut raw_udp);
    loop {
        std::thread::sleep(Duration::from_millis(1000));
        udp_left = netns_user::ops::conntrack::live_flows(g.prefix())
            .unwrap()
            .into_iter()
            .filter(|f| f.protocol == "udp")
            .count();
        raw_udp = nat_ebpf::raw_tables(g.prefix())
            .unwrap()
            .0
            .iter()
            .filter(|(k, _)| k.proto == netns_common::nat::PROTO_UDP)
            .count();
        if raw_udp == 0 || Instant::now() > until {
            break;
        }
    }
    assert_eq!(
        (udp_left, raw_udp),
        (0, 0),
        "UDP flows left after their timeout: {summary}"
    );
}
