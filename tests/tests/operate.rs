//! Operating a running eBPF NAT through the binary, against live labs with real flows:
//! `conntrack` as conntrack(8) (filters, `--count`, `--delete`, `--flush`, `--watch`),
//! `stats --watch`, `metrics` over HTTP, port forwards added and removed live, `config
//! apply`, the agent (killed, resumed, signalled) and `up --upgrade`.

use std::{
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    process::{Command, Stdio},
    time::Duration,
};

use netns_tests::{
    LabGuard, UdpEcho, bin, in_ns, netns_nat as run, netns_nat_ok, netns_nat_refused as refused, privileged,
    raw_tables, tcp_echo_server, wait_for, wait_gone,
};
use netns_user::nat::NatKind;
use serde_json::Value;

const LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 3);

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&netns_nat_ok(args).0).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// `conntrack --json` with `filters`: (flows, mappings).
fn listed(p: &str, filters: &[&str]) -> (Vec<Value>, Vec<Value>) {
    let mut args = vec!["conntrack", "--prefix", p, "--json"];
    args.extend_from_slice(filters);
    let v = json(&args);
    (
        v["flows"].as_array().unwrap().clone(),
        v["mappings"].as_array().unwrap().clone(),
    )
}

fn udp_echo(s: &UdpSocket, to: SocketAddrV4, data: &[u8]) -> bool {
    s.send_to(data, to).unwrap();
    let mut buf = [0u8; 256];
    matches!(s.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == data)
}

#[test]
fn filters_count_delete_flush_and_watch() {
    if !privileged("conntrack_tools") {
        return;
    }
    let g = LabGuard::up("ctt", NatKind::Ebpf);
    let p = g.prefix().to_owned();
    let _echo = UdpEcho::start(&g.lab.ns("lan"), &[7001, 7002]);
    let red = in_ns(&g.lab.ns("red"), || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 47001)).unwrap()
    });
    let blue = in_ns(&g.lab.ns("blue"), || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 47002)).unwrap()
    });
    for s in [&red, &blue] {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    }
    assert!(udp_echo(&red, SocketAddrV4::new(LAN, 7001), b"r1"));
    assert!(udp_echo(&red, SocketAddrV4::new(LAN, 7002), b"r2"));
    assert!(udp_echo(&blue, SocketAddrV4::new(LAN, 7001), b"b1"));
    // A TCP connection, established, from red.
    let listener = in_ns(&g.lab.ns("lan"), || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, 7003)).unwrap()
    });
    let _conn = in_ns(&g.lab.ns("red"), || {
        TcpStream::connect(SocketAddrV4::new(LAN, 7003)).unwrap()
    });
    let _accepted = listener.accept().unwrap();

    // Filters.
    let (all, maps) = listed(&p, &[]);
    assert_eq!(all.len(), 4, "{all:#?}");
    let (udp, _) = listed(&p, &["--proto", "udp"]);
    assert_eq!(udp.len(), 3);
    assert!(udp.iter().all(|f| f["protocol"] == "udp"));
    let (of_blue, blue_maps) = listed(&p, &["--addr", "192.168.15.2"]);
    assert_eq!(of_blue.len(), 1);
    assert_eq!(of_blue[0]["internal"], "192.168.15.2:47002");
    // Blue's mapping, and the port forward to blue:80.
    assert_eq!(blue_maps.len(), 2, "{blue_maps:#?}");
    assert_eq!(blue_maps.iter().filter(|m| m["static"] == true).count(), 1);
    let (to_7001, _) = listed(&p, &["--port", "7001"]);
    assert_eq!(to_7001.len(), 2);
    let (est, est_maps) = listed(&p, &["--state", "established"]);
    assert_eq!(est.len(), 1);
    assert_eq!(est[0]["remote"], "192.168.1.3:7003");
    assert!(est_maps.is_empty(), "a state selects flows only");
    let (inbound, _) = listed(&p, &["--origin", "inbound"]);
    assert!(inbound.is_empty());
    let (red_udp, _) = listed(
        &p,
        &["--proto", "udp", "--addr", "192.168.15.1", "--port", "7002"],
    );
    assert_eq!(red_udp.len(), 1, "filters combine");

    // --count agrees with the lists.
    let c = json(&["conntrack", "--prefix", &p, "--count", "--json"]);
    assert_eq!(
        (c["flows"].as_u64(), c["mappings"].as_u64()),
        (Some(4), Some(maps.len() as u64))
    );
    let c = json(&["conntrack", "--prefix", &p, "--count", "--json", "--proto", "udp"]);
    assert_eq!(c["flows"], 3);

    // Bad input is refused clearly.
    let out = run(&["conntrack", "--prefix", &p, "--delete"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--flush"),
        "{out:?}"
    );
    let out = run(&["conntrack", "--prefix", &p, "--state", "half-open"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("established"),
        "{out:?}"
    );

    // --watch sees a new flow appear and a deleted one go.
    let watcher = Command::new(bin())
        .args([
            "conntrack",
            "--prefix",
            &p,
            "--watch",
            "--for",
            "3",
            "--json",
            "--addr",
            "192.168.15.2",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(udp_echo(&blue, SocketAddrV4::new(LAN, 7002), b"b2"));
    std::thread::sleep(Duration::from_millis(400));

    // --delete: blue's mapping and both of its flows go; red's stay.
    let before_new = netns_user::ops::conntrack::stats(&p).unwrap().counters["new_flows"];
    let d = json(&[
        "conntrack",
        "--prefix",
        &p,
        "--delete",
        "--json",
        "--addr",
        "192.168.15.2",
    ]);
    assert_eq!(
        (d["flows"].as_u64(), d["mappings"].as_u64()),
        (Some(2), Some(1)),
        "{d}"
    );
    let (left, _) = listed(&p, &["--addr", "192.168.15.2"]);
    assert!(left.is_empty());
    let (raw_flows, raw_bindings) = raw_tables(&p).unwrap();
    assert!(
        !raw_bindings
            .iter()
            .any(|(_, b)| b.int_port == netns_common::nat::WirePort::new(47002)),
        "both entries of blue's mapping are gone"
    );
    assert_eq!(raw_flows.len(), 3, "red's flows stay");
    let events = watcher.wait_with_output().unwrap();
    let lines: Vec<Value> = String::from_utf8_lossy(&events.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let saw = |event: &str, remote: &str| {
        lines
            .iter()
            .any(|e| e["event"] == event && e["flow"]["remote"] == remote)
    };
    assert!(saw("new", "192.168.1.3:7002"), "{lines:#?}");
    assert!(
        saw("destroy", "192.168.1.3:7002") && saw("destroy", "192.168.1.3:7001"),
        "{lines:#?}"
    );
    assert!(lines.iter().all(|e| {
        e["flow"]["internal"]
            .as_str()
            .is_none_or(|i| i.starts_with("192.168.15.2"))
    }));

    // The deleted flow's next packet is a new flow, and gets through.
    assert!(udp_echo(&blue, SocketAddrV4::new(LAN, 7001), b"again"));
    assert_eq!(
        netns_user::ops::conntrack::stats(&p).unwrap().counters["new_flows"],
        before_new + 1
    );

    // stats --watch: rates per second while red sends, totals as `stats --json` has them.
    let watcher = Command::new(bin())
        .args([
            "stats",
            "--prefix",
            &p,
            "--watch",
            "--interval",
            "0.5",
            "--for",
            "2",
            "--json",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    for i in 0..20 {
        assert!(udp_echo(
            &red,
            SocketAddrV4::new(LAN, 7001),
            format!("rate {i}").as_bytes()
        ));
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = watcher.wait_with_output().unwrap();
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 3, "{lines:#?}");
    let rate = |l: &Value, k: &str| l["per_s"][k].as_f64().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| rate(l, "counters.fast_out_tc") + rate(l, "counters.out_udp") > 2.0),
        "outbound UDP counted per second: {lines:#?}"
    );
    let last = lines.last().unwrap();
    let now = json(&["stats", "--prefix", &p, "--json"]);
    // Values, not Options (None <= anything would pass).
    let (watched, later) = (
        last["totals"]["counters.new_flows"]
            .as_u64()
            .expect("a total of new flows"),
        now["counters"]["new_flows"].as_u64().expect("new flows"),
    );
    assert!((1..=later).contains(&watched), "{watched} then {later}");

    // --flush: every flow and mapping but the forward's.
    let d = json(&["conntrack", "--prefix", &p, "--flush", "--json"]);
    assert_eq!(d["forwards_kept"], 1, "{d}");
    let (flows, maps) = listed(&p, &[]);
    assert!(flows.is_empty(), "{flows:#?}");
    assert!(
        maps.iter().all(|m| m["static"] == true) && maps.len() == 1,
        "{maps:#?}"
    );
    // Traffic goes on, with new flows.
    assert!(udp_echo(&red, SocketAddrV4::new(LAN, 7001), b"after flush"));
}

/// Kills a background `netns-nat` when the test ends, whatever happens.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET `path` from 127.0.0.1:`port` inside namespace `ns`: (status line, body).
fn http_get(ns: &str, port: u16, path: &str) -> Option<(String, String)> {
    use std::io::{Read, Write};
    let path = path.to_owned();
    in_ns(ns, move || {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        Some((head.lines().next()?.to_owned(), body.to_owned()))
    })
}

/// Prometheus text, checked line by line: `# HELP`/`# TYPE`, samples `name{labels} value`,
/// and `# EOF` last. Samples by `name{labels}`.
fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "OpenMetrics ends with # EOF");
    for l in &lines[..lines.len() - 1] {
        if l.starts_with("# HELP ") || l.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = l
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {l:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "metric name {name:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "labels of {l:?}");
            for pair in series[name_end + 1..series.len() - 1].split(',') {
                let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("label {pair:?}"));
                assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{k:?}");
                assert!(v.starts_with('"') && v.ends_with('"'), "{v:?}");
            }
        }
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("value of {l:?}"));
        assert!(out.insert(series.to_owned(), v).is_none(), "{series} twice");
    }
    out
}

/// The agent's control socket reads a request line of at most 64 KiB, and a connection
/// lives at most 10 s, however its client paces its bytes; the agent answers others meanwhile.
#[test]
fn the_agent_cuts_off_oversized_and_slow_clients() {
    if !privileged("agent_clients") {
        return;
    }
    let g = LabGuard::up("acl", NatKind::Ebpf);
    let sock = netns_user::ops::agent::socket_path(g.prefix());
    let slow = {
        let sock = sock.clone();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_secs(14) && c.write_all(b" ").is_ok() {
                std::thread::sleep(Duration::from_millis(250));
            }
            let mut rest = Vec::new();
            let _ = c.read_to_end(&mut rest);
            (rest, started.elapsed())
        })
    };
    {
        use std::io::{Read, Write};
        let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = c.write_all(&vec![b'{'; 70 * 1024]);
        let mut rest = Vec::new();
        let r = c.read_to_end(&mut rest);
        assert!(r.is_ok() && rest.is_empty(), "a 70 KiB line got {r:?} {rest:?}");
    }
    // Others are answered while the slow one trickles.
    netns_user::ops::agent::health(g.prefix()).expect("the agent answers a ping");
    let (rest, took) = slow.join().unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(13),
        "the slow client was cut off after {took:?}"
    );
}

#[test]
fn metrics_over_http_parse_and_agree_with_stats() {
    if !privileged("metrics") {
        return;
    }
    let g = LabGuard::up("met", NatKind::Ebpf);
    let p = g.prefix().to_owned();
    let lan = g.lab.ns("lan");
    let _echo = UdpEcho::start(&lan, &[7001]);
    let red = in_ns(&g.lab.ns("red"), || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 47005)).unwrap()
    });
    red.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    for i in 0..5 {
        assert!(udp_echo(
            &red,
            SocketAddrV4::new(LAN, 7001),
            format!("m{i}").as_bytes()
        ));
    }
    // Served inside the lab (lan's loopback), so the test touches nothing of the machine's.
    let _server = Killed(
        netns_user::sys::netns::command(&lan, bin())
            .unwrap()
            .args(["metrics", "--prefix", &p, "--listen", "127.0.0.1:9464"])
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (status, _) = loop {
        if let Some(r) = http_get(&lan, 9464, "/metrics") {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "the metrics server answers");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.contains("200"), "{status}");
    // Counters read just before and just after the scrape bracket it: the lab's own
    // background traffic (IPv6 neighbour discovery on a fresh uplink) may move them between.
    let before = json(&["stats", "--prefix", &p, "--json"]);
    let (status, body) = http_get(&lan, 9464, "/metrics").unwrap();
    assert!(status.contains("200"), "{status}");
    let m = parse_metrics(&body);
    let stats = json(&["stats", "--prefix", &p, "--json"]);
    let bracketed = |key: &str, lo: &serde_json::Value, hi: &serde_json::Value| {
        let (lo, hi) = (lo.as_f64().unwrap(), hi.as_f64().unwrap());
        let got = m.get(key).copied();
        assert!(
            got.is_some_and(|v| lo <= v && v <= hi),
            "{key}: {got:?} not in {lo}..={hi}"
        );
    };
    for (name, v) in stats["counters"].as_object().unwrap() {
        let key = format!("netns_nat_events_total{{name=\"{name}\"}}");
        bracketed(&key, &before["counters"][name], v);
    }
    let sum = |prefix: &str| -> f64 {
        m.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(sum("netns_nat_flows{"), stats["flows"].as_f64().unwrap());
    assert_eq!(sum("netns_nat_mappings{"), stats["mappings"].as_f64().unwrap());
    assert_eq!(m["netns_nat_ports_in_use{proto=\"udp\"}"], 1.0);
    assert_eq!(
        m["netns_nat_mappings{proto=\"tcp\",kind=\"static\"}"], 1.0,
        "the forward"
    );
    assert_eq!(m["netns_nat_ports_available{proto=\"udp\"}"], 65535.0);
    assert_eq!(m["netns_nat_table_capacity{table=\"flows\"}"], 262_144.0);
    bracketed(
        "netns_nat_uplink_packets_total{direction=\"out\"}",
        &before["uplink"]["egress_packets"],
        &stats["uplink"]["egress_packets"],
    );
    let (status, _) = http_get(&lan, 9464, "/nothing").unwrap();
    assert!(status.contains("404"), "{status}");
    // A head longer than 8 KiB, and one trickled a byte at a time: cut off, the first at
    // once, the second after 5 s for the whole head (not per read); then answers again.
    let cut_off = |trickle: bool| {
        in_ns(&lan, move || {
            use std::io::{Read, Write};
            let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, 9464)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            let started = std::time::Instant::now();
            if trickle {
                write!(s, "GET /metrics HTTP/1.1\r\n").unwrap();
                while started.elapsed() < Duration::from_secs(8) && s.write_all(b"X").is_ok() {
                    std::thread::sleep(Duration::from_millis(200));
                }
            } else {
                let _ = write!(s, "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(10_000));
            }
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer);
            (answer, started.elapsed())
        })
    };
    let (answer, _) = cut_off(false);
    assert!(
        answer.is_empty(),
        "an oversized head got {:?}",
        String::from_utf8_lossy(&answer)
    );
    let (answer, took) = cut_off(true);
    assert!(
        answer.is_empty() && took < Duration::from_secs(7),
        "a trickled head: {took:?}"
    );
    let (status, _) = http_get(&lan, 9464, "/metrics").unwrap();
    assert!(status.contains("200"), "{status}");
    // --once prints the same families.
    let once = run(&["metrics", "--prefix", &p, "--once"]);
    assert!(once.status.success());
    assert!(
        parse_metrics(&String::from_utf8_lossy(&once.stdout))
            .contains_key("netns_nat_events_total{name=\"new_flows\"}")
    );
}

/// Sends a block on `s` and checks it comes back.
fn still_echoes(s: &mut TcpStream, round: u8) {
    use std::io::{Read, Write};
    let block = vec![round; 1500];
    s.write_all(&block).unwrap();
    let mut back = vec![0u8; block.len()];
    s.read_exact(&mut back)
        .expect("the other connection keeps flowing");
    assert_eq!(back, block);
}

/// Connects from lan to the external address's `port`: whether it was answered.
fn lan_connects(g: &LabGuard, port: u16) -> bool {
    in_ns(&g.lab.ns("lan"), || {
        TcpStream::connect_timeout(
            &SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 2), port).into(),
            Duration::from_secs(1),
        )
        .is_ok()
    })
}

#[test]
fn forwards_added_and_removed_live() {
    if !privileged("live_forwards") {
        return;
    }
    let g = LabGuard::up("fwd", NatKind::Ebpf);
    let p = g.prefix().to_owned();
    // A connection that must not notice anything: red to lan.
    let _lan_server = tcp_echo_server(&g.lab.ns("lan"), 7100);
    let mut other = in_ns(&g.lab.ns("red"), || {
        TcpStream::connect(SocketAddrV4::new(LAN, 7100)).unwrap()
    });
    other.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    still_echoes(&mut other, 1);
    // red serves on 8080, which nobody outside can reach yet.
    let _red_server = tcp_echo_server(&g.lab.ns("red"), 8080);
    assert!(!lan_connects(&g, 8080), "not forwarded yet");

    let out = run(&[
        "forward",
        "add",
        "--prefix",
        &p,
        "--proto",
        "tcp",
        "--port",
        "8080",
        "--to",
        "192.168.15.1:8080",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(lan_connects(&g, 8080), "the new forward answers");
    still_echoes(&mut other, 2);
    let list = json(&["forward", "list", "--prefix", &p, "--json"]);
    let rows = list.as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["port"] == 8080 && r["to"] == "192.168.15.1:8080" && r["live"] == true),
        "{list}"
    );
    assert!(
        rows.iter().any(|r| r["port"] == 80 && r["live"] == true),
        "the lab's own forward: {list}"
    );
    // status shows the NAT as it runs.
    let st = json(&["status", "--prefix", &p, "--json"]);
    let e = &st["ebpf"];
    assert_eq!(e["external_address"], "192.168.1.2", "{e}");
    assert_eq!(e["fast_path"], "tc");
    assert_eq!(e["timeouts"]["tcp_established"], 7440);
    assert_eq!(e["tables"]["flows"]["capacity"], 262_144);
    assert!(e["tables"]["flows"]["live"].as_u64().unwrap() >= 1);
    assert!(e["agent"]["pid"].as_u64().is_some(), "the agent runs: {e}");
    assert_eq!(
        e["agent"]["health"]["changes_applied"], 1,
        "the agent applied the add: {e}"
    );
    let has = |k: &str, v: &str| e[k].as_array().unwrap().iter().any(|x| x == v);
    assert!(
        has("forwards", "tcp 192.168.1.2:8080 -> 192.168.15.1:8080"),
        "{e}"
    );
    assert!(has("attached", "nat_egress@uplink:tcx-egress"), "{e}");
    // The lab's stored configuration follows what runs.
    let stored = netns_user::lab::Lab::open(&p).unwrap().config;
    assert!(stored.nat.unwrap().forwards.iter().any(|f| f.port == 8080));

    // Refused, whole, and nothing changes: a duplicate, a target outside, a port a mapping holds.
    let refused = |args: &[&str], why: &str| {
        let mut a = vec!["forward", "add", "--prefix", &p];
        a.extend_from_slice(args);
        let out = run(&a);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && err.contains(why), "{args:?}: {err}");
    };
    refused(
        &["--proto", "tcp", "--port", "8080", "--to", "192.168.15.2:8080"],
        "declared twice",
    );
    refused(
        &["--proto", "tcp", "--port", "8081", "--to", "192.168.1.3:80"],
        "no internal prefix",
    );
    let held = json(&["conntrack", "--prefix", &p, "--json", "--port", "7100"])["flows"][0]["external"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    refused(
        &["--proto", "tcp", "--port", &held, "--to", "192.168.15.2:9000"],
        "held by the mapping",
    );
    let after = netns_user::lab::Lab::open(&p).unwrap().config;
    assert_eq!(
        after.nat.unwrap().forwards.len(),
        2,
        "nothing recorded for refused changes"
    );

    let out = run(&[
        "forward", "del", "--prefix", &p, "--proto", "tcp", "--port", "8080",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!lan_connects(&g, 8080), "a removed forward stops answering");
    still_echoes(&mut other, 3);
    let out = run(&[
        "forward", "del", "--prefix", &p, "--proto", "tcp", "--port", "8080",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no tcp port 8080 is forwarded"));
    let stored = netns_user::lab::Lab::open(&p).unwrap().config;
    assert!(!stored.nat.unwrap().forwards.iter().any(|f| f.port == 8080));
    // The lab still passes its acceptance exchanges (the forward to blue:80 included).
    let checks = netns_user::probe::check(&g.lab, Duration::from_secs(3)).unwrap();
    assert!(checks.iter().all(|c| c.passed), "{checks:#?}");
}

/// A connection from red to lan's echo server on `port` that exchanges a block every 20 ms
/// from another thread until `stop` is set: how many rounds came back intact, or the first
/// failure.
type Paced = std::thread::JoinHandle<Result<(u32, TcpStream), String>>;

/// (The stream comes back open, so that its flow can be looked at afterwards.)
fn paced_connection(g: &LabGuard, port: u16, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Paced {
    use std::io::{Read, Write};
    let mut s = in_ns(&g.lab.ns("red"), || {
        TcpStream::connect(SocketAddrV4::new(LAN, port)).unwrap()
    });
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    std::thread::spawn(move || {
        // Until told, or a minute at most.
        let end = std::time::Instant::now() + Duration::from_secs(60);
        let mut rounds = 0u32;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && std::time::Instant::now() < end {
            let block: Vec<u8> = (0..4000u32).map(|i| (i ^ rounds) as u8).collect();
            s.write_all(&block)
                .map_err(|e| format!("round {rounds}: write: {e}"))?;
            let mut back = vec![0u8; block.len()];
            s.read_exact(&mut back)
                .map_err(|e| format!("round {rounds}: read: {e}"))?;
            if back != block {
                return Err(format!("round {rounds}: the echo differs"));
            }
            rounds += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok((rounds, s))
    })
}

/// `netns-nat args`, which must succeed: what it printed, out and err.
fn ok(args: &[&str]) -> String {
    let (out, err) = netns_nat_ok(args);
    out + &err
}

fn agent_pid(p: &str) -> Option<i32> {
    netns_user::ops::agent::pid(p)
}

/// The programs attached in the router, as `status --json` has them, with their ids.
fn program_ids(g: &LabGuard) -> Vec<(String, u32)> {
    let mut ids: Vec<(String, u32)> = netns_user::bpf::attached_programs(&g.lab.ns("host"))
        .unwrap()
        .into_iter()
        .map(|p| (p.label, p.id))
        .collect();
    ids.sort();
    ids
}

/// The agent killed with SIGKILL and brought back by `up --resume`, then the programs
/// swapped by `up --upgrade`, while a TCP connection exchanges data all along: it never
/// notices, its flow entry is the same one (made at the same instant, not made again by a
/// later packet), and the new programs are the ones attached.
fn agent_restart_and_upgrade_keep_connections(fast: netns_user::config::FastPath) {
    if !privileged("agent_resume_upgrade") {
        return;
    }
    let g = LabGuard::up(
        &format!("upg{}", netns_tests::Nat::ebpf(fast).letter()),
        netns_tests::Nat::ebpf(fast),
    );
    let p = g.prefix().to_owned();
    let _server = tcp_echo_server(&g.lab.ns("lan"), 7200);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let conn = paced_connection(&g, 7200, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let flow_before = json(&["conntrack", "--prefix", &p, "--json", "--port", "7200"])["flows"].clone();
    assert_eq!(flow_before.as_array().unwrap().len(), 1, "{flow_before}");
    // The entry as stored: its creation time tells it from one made again.
    let stored = || {
        raw_tables(&p)
            .unwrap()
            .0
            .into_iter()
            .find(|(k, _)| {
                k.proto == netns_common::nat::PROTO_TCP
                    && k.rem_port == netns_common::nat::WirePort::new(7200)
            })
            .map(|(_, f)| f)
            .expect("the connection's flow entry")
    };
    let entry_before = stored();

    // kill -9: nothing cleans up; packets go on being translated; live changes are refused.
    let pid = agent_pid(&p).expect("up started the agent");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_gone(pid, Duration::from_secs(3), "the agent did not die");
    assert_eq!(agent_pid(&p), None);
    let st = json(&["status", "--prefix", &p, "--json"]);
    assert!(st["ebpf"]["agent"]["pid"].is_null(), "{}", st["ebpf"]["agent"]);
    refused(
        &[
            "forward",
            "add",
            "--prefix",
            &p,
            "--proto",
            "udp",
            "--port",
            "5000",
            "--to",
            "192.168.15.1:5000",
        ],
        "--resume",
    );
    let out = ok(&["up", "--prefix", &p, "--resume"]);
    assert!(out.contains("started the agent"), "{out}");
    let new_pid = agent_pid(&p).expect("resumed");
    assert_ne!(new_pid, pid);
    let out = ok(&["up", "--prefix", &p, "--resume"]);
    assert!(
        out.contains("is running"),
        "a second resume starts nothing: {out}"
    );
    assert_eq!(agent_pid(&p), Some(new_pid));
    let h = &json(&["status", "--prefix", &p, "--json"])["ebpf"]["agent"]["health"];
    assert_eq!(h["pid"], new_pid, "the new agent answers: {h}");

    // The upgrade: every link gets a new program; the maps are the same objects.
    let before = program_ids(&g);
    let counters_before = json(&["stats", "--prefix", &p, "--json"]);
    let out = ok(&["up", "--prefix", &p, "--upgrade"]);
    assert!(out.contains("links updated in place"), "{out}");
    let after = program_ids(&g);
    assert_eq!(before.len(), after.len(), "{before:?} vs {after:?}");
    for ((l0, id0), (l1, id1)) in before.iter().zip(&after) {
        assert_eq!(l0, l1);
        assert_ne!(id0, id1, "{l0} still runs the old program");
    }
    let upgraded_pid = agent_pid(&p).expect("the upgrade restarts the agent");
    assert_ne!(upgraded_pid, new_pid);

    // Still exchanging after the upgrade (it stops only when told, or on a failure).
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !conn.is_finished(),
        "the connection ended during the kill, resume or upgrade: {:?}",
        conn.join()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (rounds, _open) = conn.join().unwrap().expect("the connection never noticed");
    assert!(rounds > 50, "only {rounds} rounds");
    // The same flow, carried over with its state, and counters that went on counting.
    let flow_after = json(&["conntrack", "--prefix", &p, "--json", "--port", "7200"])["flows"].clone();
    assert_eq!(
        flow_after[0]["external"], flow_before[0]["external"],
        "{flow_after}"
    );
    assert_eq!(flow_after[0]["state"], "established", "{flow_after}");
    let entry_after = stored();
    assert_eq!(
        entry_after.created_ns, entry_before.created_ns,
        "the flow entry was made again: {entry_before:?} then {entry_after:?}"
    );
    assert!(
        entry_after.packets_out > entry_before.packets_out,
        "{entry_before:?} then {entry_after:?}"
    );
    let counters_after = json(&["stats", "--prefix", &p, "--json"]);
    let out_tcp = |v: &Value| v["uplink"]["egress_packets"].as_u64().unwrap_or(0);
    assert!(
        out_tcp(&counters_after) > out_tcp(&counters_before),
        "{counters_before} -> {counters_after}"
    );
    let checks = netns_user::probe::check(&g.lab, Duration::from_secs(3)).unwrap();
    assert!(checks.iter().all(|c| c.passed), "{checks:#?}");
}
netns_tests::modes!(agent_restart_and_upgrade_keep_connections);

/// Maps pinned by a build with another layout are refused by `up --upgrade`, and nothing
/// changes: the same programs stay attached.
#[test]
fn an_upgrade_onto_another_layout_is_refused() {
    use aya::maps::{Array, MapData};
    use netns_common::{layout::LAYOUT_STAMP, names::MAP_NAT_LAYOUT};
    if !privileged("upgrade_layout") {
        return;
    }
    let g = LabGuard::up("lay", NatKind::Ebpf);
    let p = g.prefix().to_owned();
    let set_stamp = |v: u64| {
        let mut a: Array<MapData, u64> =
            Array::try_from(netns_user::bpf::pinned_map(&p, MAP_NAT_LAYOUT).unwrap()).unwrap();
        a.set(0, v, 0).unwrap();
    };
    assert_eq!(netns_user::bpf::pinned_layout(&p).unwrap(), LAYOUT_STAMP);
    let before = program_ids(&g);
    set_stamp(LAYOUT_STAMP ^ 1);
    refused(&["up", "--prefix", &p, "--upgrade"], "another layout");
    assert_eq!(program_ids(&g), before, "nothing was swapped");
    let checks = netns_user::probe::check(&g.lab, Duration::from_secs(3)).unwrap();
    assert!(checks.iter().all(|c| c.passed), "{checks:#?}");
    set_stamp(LAYOUT_STAMP);
    ok(&["up", "--prefix", &p, "--upgrade"]);
    assert_ne!(program_ids(&g), before);
}

/// `config apply`: a good file changes the running settings (status, stored config) and new
/// flows follow them; a bad one, of any kind, is refused whole and changes nothing.
#[test]
fn config_apply_changes_live_settings_or_nothing() {
    if !privileged("config_apply") {
        return;
    }
    let g = LabGuard::up("cfa", NatKind::Ebpf);
    let p = g.prefix().to_owned();
    let dir = std::env::temp_dir().join(format!("{p}config-apply"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let nat = |ebpf: &str, uplink: &str, fwd_port: u16| {
        format!(
            "[nat]\nrouter = \"host\"\nuplink = \"{uplink}\"\ninternal = [\"192.168.15.0/24\"]\n\
             [[nat.forward]]\nprotocol = \"tcp\"\nport = {fwd_port}\nto = \"192.168.15.2:80\"\n\
             [nat.ebpf]\n{ebpf}\n"
        )
    };
    let ebpf_of = |st: &Value| {
        let mut e = st["ebpf"].clone();
        e["agent"] = Value::Null;
        e["tables"] = Value::Null;
        e
    };
    let before = ebpf_of(&json(&["status", "--prefix", &p, "--json"]));
    let stored_before = ok(&["config", "show", "--prefix", &p]);
    for (name, text, why) in [
        ("syntax.toml", "[nat\n".to_owned(), "invalid lab file"),
        ("uplink.toml", nat("", "v-net-0", 80), "uplink cannot change"),
        ("fwd.toml", nat("", "uplink", 81), "forward add|del"),
        (
            "short.toml",
            nat("timeouts = { udp = 30 }", "uplink", 80),
            "RFC 4787",
        ),
        ("range.toml", nat("ports = \"2000-1000\"", "uplink", 80), "empty"),
        (
            "table.toml",
            nat("flows = 1024", "uplink", 80),
            "flows cannot change",
        ),
        (
            "unknown.toml",
            nat("colour = \"red\"", "uplink", 80),
            "unknown field",
        ),
    ] {
        refused(&["config", "apply", "--prefix", &p, &file(name, text)], why);
    }
    assert_eq!(
        ebpf_of(&json(&["status", "--prefix", &p, "--json"])),
        before,
        "nothing changed"
    );
    assert_eq!(ok(&["config", "show", "--prefix", &p]), stored_before);

    let good = file(
        "good.toml",
        nat(
            "filtering = \"endpoint-independent\"\nports = \"20000-20009\"\n\
             timeouts = { udp = 150, icmp = 30 }",
            "uplink",
            80,
        ),
    );
    ok(&["config", "apply", "--prefix", &p, &good]);
    let e = json(&["status", "--prefix", &p, "--json"])["ebpf"].clone();
    assert_eq!(e["filtering"], "endpoint-independent", "{e}");
    assert_eq!(e["timeouts"]["udp"], 150);
    assert_eq!(e["timeouts"]["icmp"], 30);
    let shown = ok(&["config", "show", "--prefix", &p]);
    assert!(
        shown.contains("ports = \"20000-20009\"") && shown.contains("udp = 150"),
        "{shown}"
    );
    // A new flow takes its port from the new range.
    let _echo = UdpEcho::start(&g.lab.ns("lan"), &[7301]);
    let red = in_ns(&g.lab.ns("red"), || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 47301)).unwrap()
    });
    red.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert!(udp_echo(&red, SocketAddrV4::new(LAN, 7301), b"x"));
    let (flows, _) = listed(&p, &["--port", "7301"]);
    let port: u16 = flows[0]["external"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((20000..=20009).contains(&port), "{flows:?}");
    // A whole lab file whose other sections differ is refused.
    let mut other = netns_user::lab::Lab::open(&p).unwrap().config;
    other.routes.retain(|r| r.namespace != "blue");
    refused(
        &[
            "config",
            "apply",
            "--prefix",
            &p,
            &file("whole.toml", other.to_toml()),
        ],
        "cannot change",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM ends the agent cleanly (its socket and PID file go); `down` stops it too.
#[test]
fn the_agent_ends_on_sigterm_and_with_the_lab() {
    if !privileged("agent_signals") {
        return;
    }
    let g = LabGuard::up("sig", NatKind::Ebpf);
    let p = g.prefix().to_owned();
    let pid = agent_pid(&p).expect("running");
    let sock = netns_user::ops::agent::socket_path(&p);
    assert!(sock.exists());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_gone(pid, Duration::from_secs(3), "the agent did not end on SIGTERM");
    assert!(!sock.exists(), "its socket is removed");
    assert!(
        !netns_user::ops::agent::pid_file(&p).exists(),
        "its PID file is removed"
    );
    let log = std::fs::read_to_string(netns_user::ops::agent::log_path(&p)).unwrap();
    assert!(log.contains("SIGTERM; ending"), "{log}");
    ok(&["up", "--prefix", &p, "--resume"]);
    let pid = agent_pid(&p).expect("resumed");
    drop(g);
    let _ = nix::sys::wait::waitpid(
        nix::unistd::Pid::from_raw(pid),
        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
    );
    assert!(
        std::fs::metadata(format!("/proc/{pid}")).is_err(),
        "down stopped the agent"
    );
}

/// The agent is the one owner of every change to a running NAT: with it stopped,
/// `conntrack --flush`, `conntrack --delete` and `trace` (which needs the trace flag set)
/// are refused with the way to start it again, and nothing is deleted; with it back, the
/// flush is its change (counted in its health) and empties the tables.
#[test]
fn changes_to_a_running_nat_go_through_its_agent() {
    if !privileged("agent_owner") {
        return;
    }
    let g = LabGuard::up("own", NatKind::Ebpf);
    let p = g.prefix().to_owned();
    let _echo = UdpEcho::start(&g.lab.ns("lan"), &[7501]);
    let red = in_ns(&g.lab.ns("red"), || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 47501)).unwrap()
    });
    red.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert!(udp_echo(&red, SocketAddrV4::new(LAN, 7501), b"owned"));
    assert_eq!(listed(&p, &["--port", "7501"]).0.len(), 1);
    let pid = agent_pid(&p).expect("running");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_gone(pid, Duration::from_secs(3), "the agent did not end on SIGTERM");
    let resume = format!("netns-nat up --prefix {p} --resume");
    refused(&["conntrack", "--prefix", &p, "--flush"], &resume);
    refused(
        &["conntrack", "--prefix", &p, "--delete", "--port", "7501"],
        &resume,
    );
    refused(&["trace", "--prefix", &p, "--for", "1"], &resume);
    assert_eq!(
        listed(&p, &["--port", "7501"]).0.len(),
        1,
        "a refused delete deleted nothing"
    );
    ok(&["up", "--prefix", &p, "--resume"]);
    let health = || json(&["status", "--prefix", &p, "--json"])["ebpf"]["agent"]["health"].clone();
    let applied = health()["changes_applied"].as_u64().unwrap();
    let d = json(&["conntrack", "--prefix", &p, "--flush", "--json"]);
    assert!(d["flows"].as_u64().unwrap() >= 1, "{d}");
    assert_eq!(listed(&p, &[]).0.len(), 0);
    assert_eq!(
        health()["changes_applied"].as_u64().unwrap(),
        applied + 1,
        "the agent made the flush"
    );
}

/// `trace` shows the translation of packets the test sends, both ways, and a drop with its
/// reason; filters select; tracing is off again when the last listener ends (even one
/// killed with SIGKILL, once the agent recounts).
#[test]
fn trace_shows_translations_and_drops_as_they_happen() {
    if !privileged("trace") {
        return;
    }
    let g = LabGuard::up("trc", NatKind::Ebpf);
    let p = g.prefix().to_owned();
    let listeners = || json(&["status", "--prefix", &p, "--json"])["ebpf"]["trace_listeners"].clone();
    assert_eq!(listeners(), 0);
    let _echo = UdpEcho::start(&g.lab.ns("lan"), &[7401]);
    let tracer = Command::new(bin())
        .args([
            "trace", "--prefix", &p, "--json", "--proto", "udp", "--port", "7401", "--for", "4",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Listening once the flag says so.
    wait_for(
        Duration::from_secs(3),
        Duration::from_millis(50),
        || listeners() == 1,
        || "trace never started listening".into(),
    );
    let red = in_ns(&g.lab.ns("red"), || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 47401)).unwrap()
    });
    red.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert!(udp_echo(&red, SocketAddrV4::new(LAN, 7401), b"traced"));
    // Traffic the filter leaves out.
    let other = in_ns(&g.lab.ns("red"), || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 47402)).unwrap()
    });
    other.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let _echo2 = UdpEcho::start(&g.lab.ns("lan"), &[7402]);
    assert!(udp_echo(&other, SocketAddrV4::new(LAN, 7402), b"not traced"));
    // For the drop below: lan will answer from another port, which the mapping's filtering
    // refuses.
    let (flows, _) = listed(&p, &["--port", "7401"]);
    let ext_port: u16 = flows[0]["external"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let lan = in_ns(&g.lab.ns("lan"), || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 7499)).unwrap()
    });

    let out = tracer.wait_with_output().unwrap();
    assert!(out.status.success());
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let out_ev = events
        .iter()
        .find(|e| e["hook"] == "nat_egress")
        .unwrap_or_else(|| panic!("no egress event: {events:#?}"));
    assert_eq!(out_ev["protocol"], "udp");
    assert_eq!(
        out_ev["before"], "192.168.15.1:47401 -> 192.168.1.3:7401",
        "{out_ev}"
    );
    assert_eq!(
        out_ev["after"],
        format!("192.168.1.2:{ext_port} -> 192.168.1.3:7401"),
        "{out_ev}"
    );
    assert_eq!(out_ev["verdict"], "pass");
    let in_ev = events
        .iter()
        .find(|e| e["hook"] == "nat_ingress")
        .unwrap_or_else(|| panic!("no ingress event: {events:#?}"));
    assert_eq!(
        in_ev["before"],
        format!("192.168.1.3:7401 -> 192.168.1.2:{ext_port}"),
        "{in_ev}"
    );
    assert_eq!(
        in_ev["after"], "192.168.1.3:7401 -> 192.168.15.1:47401",
        "{in_ev}"
    );
    assert!(
        events
            .iter()
            .all(|e| !e["before"].as_str().unwrap().contains("7402")),
        "the filter let another flow through: {events:#?}"
    );
    assert_eq!(listeners(), 0, "tracing is off after the trace");

    // Drops, with their reason; and a listener killed with SIGKILL does not leave tracing on.
    let mut tracer = Command::new(bin())
        .args([
            "trace",
            "--prefix",
            &p,
            "--json",
            "--host",
            "192.168.1.3",
            "--for",
            "30",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        Duration::from_secs(3),
        Duration::from_millis(50),
        || listeners() == 1,
        || "trace never started listening".into(),
    );
    // One trace at a time: the ring buffer has one reader.
    refused(
        &["trace", "--prefix", &p, "--for", "1"],
        "another `netns-nat trace`",
    );
    lan.send_to(
        b"spoof",
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 2), ext_port),
    )
    .unwrap();
    let mut first = String::new();
    {
        use std::io::BufRead as _;
        let mut r = std::io::BufReader::new(tracer.stdout.take().unwrap());
        r.read_line(&mut first).unwrap();
    }
    let ev: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(ev["verdict"], "drop", "{ev}");
    assert_eq!(ev["reason"], "drop_unsolicited", "{ev}");
    assert_eq!(
        ev["before"],
        format!("192.168.1.3:7499 -> 192.168.1.2:{ext_port}"),
        "{ev}"
    );
    tracer.kill().unwrap();
    tracer.wait().unwrap();
    wait_for(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || listeners() == 0,
        || "tracing stayed on after its listener died".into(),
    );
}

/// The programs' diagnostics (aya-log) reach the agent's log at the level set when they
/// load, with hook, reason and addresses named; an upgrade to `off` silences them (the
/// reader that finds nothing then is shown, at `debug`, to find the record).
#[test]
fn the_programs_log_at_the_level_set_at_load() {
    if !privileged("program_logs") {
        return;
    }
    let mut cfg = netns_user::config::LabConfig::reference();
    cfg.nat.as_mut().unwrap().ebpf.log_level = netns_user::config::LogLevel::Debug;
    let g = LabGuard::up_with(&cfg, "log", NatKind::Ebpf);
    let p = g.prefix().to_owned();
    assert_eq!(
        json(&["status", "--prefix", &p, "--json"])["ebpf"]["log_level"],
        "debug"
    );
    let _echo = UdpEcho::start(&g.lab.ns("lan"), &[7501]);
    let red = in_ns(&g.lab.ns("red"), || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 47501)).unwrap()
    });
    red.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert!(udp_echo(&red, SocketAddrV4::new(LAN, 7501), b"x"));
    let (flows, _) = listed(&p, &["--port", "7501"]);
    let ext = flows[0]["external"].as_str().unwrap().to_owned();
    let ext_port: u16 = ext.rsplit(':').next().unwrap().parse().unwrap();
    let lan = in_ns(&g.lab.ns("lan"), || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 7599)).unwrap()
    });
    let spoof = || {
        lan.send_to(
            b"spoof",
            SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 2), ext_port),
        )
        .unwrap()
    };
    spoof();
    let drop_line = format!("bpf DEBUG: drop nat_ingress drop_unsolicited udp 192.168.1.3:7599 -> {ext}");
    let logs = || ok(&["logs", "--prefix", &p]);
    wait_for(
        Duration::from_secs(3),
        Duration::from_millis(100),
        || logs().contains(&drop_line),
        || format!("no drop record in the agent's log:\n{}", logs()),
    );
    assert!(logs().contains("bpf INFO: new mapping"), "{}", logs());

    // The reader used below, at a level that logs: with the agent (the log's one reader)
    // stopped, it gets the drop's record itself.
    let pid = agent_pid(&p).expect("the agent runs");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_gone(pid, Duration::from_secs(3), "the agent did not end on SIGTERM");
    {
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut reader = aya_log::EbpfLogger::init_from_id_with_logger(
            netns_user::bpf::nat_program_id(&p).unwrap(),
            Counting(seen.clone(), Some(log::Level::Debug)),
        )
        .unwrap();
        spoof();
        wait_for(
            Duration::from_secs(3),
            Duration::from_millis(50),
            || {
                reader.flush();
                seen.load(std::sync::atomic::Ordering::Relaxed) > 0
            },
            || "the reader saw no drop record at level debug".into(),
        );
    }
    ok(&["up", "--prefix", &p, "--resume"]);

    // The level is the programs': config apply cannot change it, an upgrade can.
    let file = std::env::temp_dir().join(format!("{p}log.toml"));
    let mut next = netns_user::lab::Lab::open(&p).unwrap().config;
    next.nat.as_mut().unwrap().ebpf.log_level = netns_user::config::LogLevel::Off;
    std::fs::write(&file, next.to_toml()).unwrap();
    refused(
        &["config", "apply", "--prefix", &p, file.to_str().unwrap()],
        "--upgrade --log-level",
    );
    let _ = std::fs::remove_file(&file);
    ok(&["up", "--prefix", &p, "--upgrade", "--log-level", "off"]);
    assert_eq!(
        json(&["status", "--prefix", &p, "--json"])["ebpf"]["log_level"],
        "off"
    );
    // The new programs' own log buffer, read here (the agent does not read it when off):
    // the drop writes nothing into it, nor into the agent's log.
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut reader = aya_log::EbpfLogger::init_from_id_with_logger(
        netns_user::bpf::nat_program_id(&p).unwrap(),
        Counting(seen.clone(), None),
    )
    .unwrap();
    let before = logs().matches(&drop_line).count();
    let drops = || json(&["stats", "--prefix", &p, "--json"])["counters"]["drop_unsolicited"].clone();
    let dropped = drops();
    spoof();
    wait_for(
        Duration::from_secs(3),
        Duration::from_millis(50),
        || drops() != dropped,
        || "the spoofed datagram was not dropped".into(),
    );
    let after = json(&["stats", "--prefix", &p, "--json"]);
    assert!(
        after["counters"]["drop_unsolicited"].as_u64().unwrap() >= 3,
        "{after}"
    );
    // Time for a record, had the drop written one, to arrive.
    std::thread::sleep(Duration::from_millis(200));
    reader.flush();
    assert_eq!(
        seen.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a record written while off"
    );
    assert_eq!(logs().matches(&drop_line).count(), before, "logged while off");
}

/// Counts the records of a program's log (of one level only, if given).
struct Counting(std::sync::Arc<std::sync::atomic::AtomicUsize>, Option<log::Level>);

impl log::Log for Counting {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, r: &log::Record) {
        if self.1.is_none_or(|l| r.level() == l) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn flush(&self) {}
}

/// Issue 21: a lab translates from the moment `up` returns: the first datagram red sends
/// leaves with the uplink's address, every time.
#[test]
fn a_lab_translates_from_the_moment_up_returns() {
    if !privileged("up_at_once") {
        return;
    }
    for i in 0..3 {
        let g = LabGuard::up(&format!("ua{i}"), NatKind::Ebpf);
        let lan_s = in_ns(&g.lab.ns("lan"), || UdpSocket::bind("0.0.0.0:7010").unwrap());
        lan_s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let red_s = in_ns(&g.lab.ns("red"), || UdpSocket::bind("0.0.0.0:0").unwrap());
        red_s.send_to(b"first", SocketAddrV4::new(LAN, 7010)).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = lan_s.recv_from(&mut buf).expect("the first datagram");
        assert_eq!(&buf[..n], b"first");
        assert_eq!(
            from.ip(),
            std::net::IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2)),
            "try {i}"
        );
    }
}
