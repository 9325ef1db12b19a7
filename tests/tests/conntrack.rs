//! `netns-nat conntrack` as conntrack(8): filters, `--count`, `--delete`, `--flush` and
//! `--watch`, run through the binary against a live eBPF lab with real flows.

use std::{
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    process::{Command, Output, Stdio},
    time::Duration,
};

use netns_tests::{LabGuard, UdpEcho, bin, in_ns, privileged};
use netns_user::nat::{NatKind, ebpf as nat_ebpf};
use serde_json::Value;

const LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 3);

fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("netns-nat runs")
}

fn json(args: &[&str]) -> Value {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
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
    let before_new = nat_ebpf::stats(&p).unwrap().counters["new_flows"];
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
    let (raw_flows, raw_bindings) = nat_ebpf::raw_tables(&p).unwrap();
    assert!(
        !raw_bindings.iter().any(|(_, b)| b.int_port == 47002u16.to_be()),
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
    assert_eq!(nat_ebpf::stats(&p).unwrap().counters["new_flows"], before_new + 1);

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
    assert!(last["totals"]["counters.new_flows"].as_u64() <= now["counters"]["new_flows"].as_u64());

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
