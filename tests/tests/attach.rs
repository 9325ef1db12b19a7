//! `nat attach` and `nat detach` on namespaces built by hand, as the namespaces walkthrough
//! builds them (`ip netns add`, a bridge, veths): the acceptance exchanges pass through the
//! eBPF NAT, the operating commands work on it, and detach leaves every namespace exactly
//! as it was.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    process::Command,
    time::Duration,
};

use netns_tests::{in_ns, netns_nat_ok, netns_nat_refused, privileged, sh_in};
use netns_user::{
    bpf,
    config::L4Proto,
    probe::{self, Roles},
    sys::{ethtool, netns},
};

/// `netns-nat args`, which must succeed: its standard output.
fn ok(args: &[&str]) -> String {
    netns_nat_ok(args).0
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The walkthrough's namespaces, made with `ip` as a user would, removed when dropped.
struct HandMade {
    p: String,
}

impl HandMade {
    fn build(p: &str) -> HandMade {
        let h = HandMade { p: p.to_owned() };
        let ip = |args: &str| {
            let out = Command::new("ip")
                .args(args.split_whitespace())
                .output()
                .expect("ip runs");
            assert!(
                out.status.success(),
                "ip {args}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for n in ["router", "red", "blue", "lan"] {
            ip(&format!("netns add {p}{n}"));
            ip(&format!("-n {p}{n} link set lo up"));
        }
        ip(&format!("-n {p}router link add br0 type bridge"));
        ip(&format!("-n {p}router addr add 192.168.15.254/24 dev br0"));
        ip(&format!("-n {p}router link set br0 up"));
        for (host, addr) in [("red", "192.168.15.1/24"), ("blue", "192.168.15.2/24")] {
            ip(&format!(
                "-n {p}router link add p-{host} type veth peer name eth0 netns {p}{host}"
            ));
            ip(&format!("-n {p}router link set p-{host} master br0 up"));
            ip(&format!("-n {p}{host} addr add {addr} dev eth0"));
            ip(&format!("-n {p}{host} link set eth0 up"));
            ip(&format!("-n {p}{host} route add default via 192.168.15.254"));
        }
        ip(&format!(
            "-n {p}router link add wan type veth peer name eth0 netns {p}lan"
        ));
        ip(&format!("-n {p}router addr add 192.168.1.2/24 dev wan"));
        ip(&format!("-n {p}router link set wan up"));
        ip(&format!("-n {p}lan addr add 192.168.1.3/24 dev eth0"));
        ip(&format!("-n {p}lan link set eth0 up"));
        netns::run_in(&format!("{p}router"), || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        })
        .unwrap()
        .unwrap();
        h
    }

    /// Waits until IPv6 duplicate address detection has finished everywhere (its end adds
    /// local routes), so that the namespaces only change when something changes them.
    fn settle(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for n in ["router", "red", "blue", "lan"] {
            while sh_in(&self.ns(n), "ip", &["-6", "addr", "show"]).contains("tentative") {
                assert!(
                    std::time::Instant::now() < deadline,
                    "IPv6 DAD never ended in {n}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn ns(&self, n: &str) -> String {
        format!("{}{n}", self.p)
    }

    /// Everything `attach` could have changed, as text: links (with their details),
    /// addresses, routes, rules, qdiscs, filters, offloads, forwarding, BPF programs.
    fn snapshot(&self) -> String {
        let mut out = String::new();
        for n in ["router", "red", "blue", "lan"] {
            let ns = self.ns(n);
            out += &format!("== {ns}\n");
            for args in [
                &["-d", "link", "show"][..],
                &["-d", "addr", "show"],
                &["route", "show", "table", "all"],
                &["rule", "show"],
            ] {
                out += &steady(&sh_in(&ns, "ip", args));
            }
            out += &sh_in(&ns, "tc", &["qdisc", "show"]);
            let links: Vec<String> = sh_in(&ns, "ip", &["-o", "link", "show"])
                .lines()
                .filter_map(|l| l.split(':').nth(1))
                .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
                .collect();
            for l in &links {
                for dir in ["ingress", "egress"] {
                    // No clsact qdisc is a fine answer: say so rather than fail.
                    let o = netns::command(&ns, "tc")
                        .unwrap()
                        .args(["filter", "show", "dev", l, dir])
                        .output()
                        .unwrap();
                    out += &format!("filter {l} {dir}: {}\n", String::from_utf8_lossy(&o.stdout));
                }
                if l != "lo" {
                    for o in [
                        ethtool::Offload::Gro,
                        ethtool::Offload::TxChecksum,
                        ethtool::Offload::TxVlan,
                    ] {
                        out += &format!("{l} {}: {:?}\n", o.name(), ethtool::get(&ns, l, o).ok());
                    }
                }
            }
            out += &format!(
                "ip_forward {}\n",
                netns::run_in(&ns, || std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward"))
                    .unwrap()
                    .unwrap()
            );
            let mut progs: Vec<String> = bpf::attached_programs(&ns)
                .unwrap()
                .into_iter()
                .map(|p| p.label)
                .collect();
            progs.sort();
            out += &format!("programs {progs:?}\n");
        }
        out
    }
}

/// `ip` output without what changes by itself: the bridge's running timers, and IPv6
/// duplicate address detection still under way.
fn steady(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let mut kept = Vec::new();
        while let Some(w) = words.next() {
            if w.ends_with("_timer") {
                words.next();
            } else if w != "tentative" {
                kept.push(w);
            }
        }
        out += &kept.join(" ");
        out.push('\n');
    }
    out
}

/// Asserts two snapshots are equal, showing only the lines that differ.
fn assert_same(before: &str, after: &str, what: &str) {
    let b: Vec<&str> = before.lines().collect();
    let a: Vec<&str> = after.lines().collect();
    let gone: Vec<&&str> = b.iter().filter(|l| !a.contains(l)).collect();
    let new: Vec<&&str> = a.iter().filter(|l| !b.contains(l)).collect();
    assert!(
        before == after,
        "{what}:\n  before only: {gone:#?}\n  after only: {new:#?}"
    );
}

/// Where lan sees a datagram from red (red's own address: not translated) come from.
fn red_as_lan_sees_it(h: &HandMade) -> Ipv4Addr {
    let lan = in_ns(&h.ns("lan"), || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 7013)).unwrap()
    });
    lan.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let red = in_ns(&h.ns("red"), || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap()
    });
    red.send_to(b"who?", SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 3), 7013))
        .unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = lan.recv_from(&mut buf).expect("red's datagram reaches lan");
    assert_eq!(&buf[..n], b"who?");
    match from {
        SocketAddr::V4(a) => *a.ip(),
        other => panic!("{other}"),
    }
}

/// lan's datagram to the external address's UDP port 5353 reaches red's port 5353 from
/// lan's own address, and red's answer comes back from the external address: the forward
/// `udp:5353=192.168.15.1:5353` works both ways.
fn the_udp_forward_answers(h: &HandMade) {
    let ext = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 2), 5353);
    let red = in_ns(&h.ns("red"), || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5353)).unwrap()
    });
    red.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let lan = in_ns(&h.ns("lan"), || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap()
    });
    lan.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    lan.send_to(b"forwarded?", ext).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = red.recv_from(&mut buf).expect("the forward reaches red");
    assert_eq!(&buf[..n], b"forwarded?");
    assert_eq!(
        from.ip(),
        Ipv4Addr::new(192, 168, 1, 3),
        "DNAT keeps lan's address"
    );
    red.send_to(b"yes", from).unwrap();
    let (n, from) = lan.recv_from(&mut buf).expect("red's answer reaches lan");
    assert_eq!((&buf[..n], from), (&b"yes"[..], SocketAddr::V4(ext)));
}

impl Drop for HandMade {
    fn drop(&mut self) {
        for n in ["router", "red", "blue", "lan"] {
            let _ = netns::delete(&self.ns(n));
        }
    }
}

#[test]
fn attach_to_namespaces_made_by_hand_and_detach_leaves_them_as_they_were() {
    if !privileged("nat_attach") {
        return;
    }
    let p = netns_tests::prefix("hm");
    let h = HandMade::build(&p);
    let router = h.ns("router");
    h.settle();
    let before = h.snapshot();
    assert!(before.contains("programs []"), "{before}");

    // Refusals change nothing.
    let attach = |extra: &[&str], prefix: &str| {
        let mut a = vec![
            "nat",
            "attach",
            "--prefix",
            prefix,
            "--netns",
            &router,
            "--uplink",
            "wan",
            "--internal",
            "192.168.15.0/24",
            "--forward",
            "tcp:80=192.168.15.2:80",
        ];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<String>>()
    };
    let lab = format!("{p}nat-");
    let mut nowhere = attach(&[], &lab);
    nowhere[5] = format!("{p}nowhere");
    netns_nat_refused(&as_strs(&nowhere), "no namespace");
    netns_nat_refused(&as_strs(&attach(&["--fast-path", "xdp"], &lab)), "use tc");
    let mut no_uplink = attach(&[], &lab);
    no_uplink[7] = "wan9".into();
    netns_nat_refused(&as_strs(&no_uplink), "wan9");
    netns_nat_refused(
        &as_strs(&attach(&["--forward", "tcp:81=192.168.1.3:80"], &lab)),
        "no internal prefix",
    );
    assert_same(&before, &h.snapshot(), "a refused attach changed something");
    assert!(
        !netns_user::lab::list().contains(&lab),
        "nothing left of refused attaches"
    );

    let out = ok(&as_strs(&attach(&[], &lab)));
    assert!(out.contains("nat detach"), "{out}");
    let second = format!("{p}two-");
    netns_nat_refused(&as_strs(&attach(&[], &second)), "already runs netns-nat's NAT");

    // The acceptance exchanges, between the hand-made namespaces.
    let roles = Roles {
        internal: vec![
            (h.ns("red"), Ipv4Addr::new(192, 168, 15, 1)),
            (h.ns("blue"), Ipv4Addr::new(192, 168, 15, 2)),
        ],
        external: (h.ns("lan"), Ipv4Addr::new(192, 168, 1, 3)),
        uplink: Ipv4Addr::new(192, 168, 1, 2),
        forwards: vec![(
            L4Proto::Tcp,
            80,
            h.ns("blue"),
            SocketAddrV4::new(Ipv4Addr::new(192, 168, 15, 2), 80),
        )],
    };
    let checks = probe::play(&roles, true, Duration::from_secs(3));
    assert_eq!(checks.len(), 5, "{checks:#?}");
    assert!(checks.iter().all(|c| c.passed), "{checks:#?}");

    // The operating commands, as on a lab.
    let ct: serde_json::Value =
        serde_json::from_str(&ok(&["conntrack", "--prefix", &lab, "--json"])).unwrap();
    assert!(
        ct["flows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["internal"] == "192.168.15.2:80" && f["origin"] == "inbound"),
        "{ct}"
    );
    let stats: serde_json::Value = serde_json::from_str(&ok(&["stats", "--prefix", &lab, "--json"])).unwrap();
    assert!(stats["counters"]["new_flows"].as_u64().unwrap() >= 4, "{stats}");
    let st: serde_json::Value = serde_json::from_str(&ok(&["status", "--prefix", &lab, "--json"])).unwrap();
    assert_eq!(st["router"], router.as_str(), "{st}");
    assert!(st["ebpf"]["agent"]["health"]["pid"].is_u64(), "{st}");
    assert!(ok(&["metrics", "--prefix", &lab, "--once"]).contains("netns_nat_events_total"));
    ok(&[
        "forward",
        "add",
        "--prefix",
        &lab,
        "--proto",
        "udp",
        "--port",
        "5353",
        "--to",
        "192.168.15.1:5353",
    ]);
    the_udp_forward_answers(&h);
    // The upgrade puts new programs on every hook, and they translate as the old ones did.
    let programs = || {
        let mut ids: Vec<(String, u32)> = bpf::attached_programs(&router)
            .unwrap()
            .into_iter()
            .map(|prog| (prog.label, prog.id))
            .collect();
        ids.sort();
        ids
    };
    let before_upgrade = programs();
    assert!(!before_upgrade.is_empty());
    ok(&["up", "--prefix", &lab, "--upgrade"]);
    let after_upgrade = programs();
    assert_eq!(before_upgrade.len(), after_upgrade.len(), "{after_upgrade:?}");
    for ((l0, id0), (l1, id1)) in before_upgrade.iter().zip(&after_upgrade) {
        assert_eq!(l0, l1);
        assert_ne!(id0, id1, "{l0} still runs the old program");
    }
    assert_eq!(
        red_as_lan_sees_it(&h),
        Ipv4Addr::new(192, 168, 1, 2),
        "translated"
    );
    the_udp_forward_answers(&h);
    netns_nat_refused(&["check", "--prefix", &lab], "not netns-nat's to know");
    assert!(ok(&["list"]).contains(&lab));

    let out = ok(&["nat", "detach", "--prefix", &lab]);
    assert!(out.contains("programs and pins removed"), "{out}");
    assert_same(&before, &h.snapshot(), "detach left the namespaces changed");
    for n in ["router", "red", "blue", "lan"] {
        assert!(netns::exists(&h.ns(n)), "{n} is the user's: it stays");
    }
    netns_tests::assert_gone(&lab);
    // Once detached, nothing translates: lan sees red's own address, and no exchange
    // completes (lan has no way back).
    assert_eq!(red_as_lan_sees_it(&h), Ipv4Addr::new(192, 168, 15, 1));
    let checks = probe::play(&roles, false, Duration::from_millis(500));
    assert!(checks.iter().all(|c| c.passed), "{checks:#?}");

    // `down` on an attached NAT is a detach: it never deletes the user's namespaces.
    ok(&as_strs(&attach(&[], &lab)));
    ok(&["down", "--prefix", &lab]);
    for n in ["router", "red", "blue", "lan"] {
        assert!(netns::exists(&h.ns(n)), "down deleted the user's {n}");
    }
    assert_same(&before, &h.snapshot(), "down left the namespaces changed");
    netns_tests::assert_gone(&lab);
}

/// Detaches lab `0` when dropped (a failing test leaves nothing attached).
struct Detach(String);

impl Drop for Detach {
    fn drop(&mut self) {
        let _ = netns_tests::netns_nat(&["nat", "detach", "--prefix", &self.0]);
    }
}

/// Issue 17, item 7: a namespace that filters what it forwards (here an nftables forward
/// chain dropping large datagrams to one port) keeps its filter under an attached NAT: the
/// fast path, whose redirects would skip the forward hook, is off from the first packet
/// (and the agent keeps it off while the filter is there).
#[test]
fn a_filter_in_an_attached_namespace_holds_the_fast_path_off_from_the_start() {
    if !privileged("nat_attach_filter") {
        return;
    }
    let p = netns_tests::prefix("hf");
    let h = HandMade::build(&p);
    let router = h.ns("router");
    netns_tests::add_forward_filter(&router, 7006);
    let lab = format!("{p}nat-");
    let (_, err) = netns_nat_ok(&attach_args(&lab, &router));
    let _detach = Detach(lab.clone());
    assert!(
        err.contains("fast path is held off") && err.contains("userfw"),
        "{err}"
    );
    let fc = netns_user::bpf::NatMaps::open(&lab)
        .and_then(|m| m.fast_config())
        .unwrap();
    assert_eq!(
        fc.mode,
        netns_common::fwd::FAST_OFF,
        "held off before the first packet"
    );

    let _srv = netns_tests::UdpEcho::start(&h.ns("lan"), &[7006]);
    let s = netns_tests::in_ns(&h.ns("red"), || std::net::UdpSocket::bind("0.0.0.0:0").unwrap());
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let to = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 3), 7006);
    let echoed = |len: usize| {
        let data = vec![b'x'; len];
        s.send_to(&data, to).unwrap();
        let mut buf = [0u8; 2048];
        matches!(s.recv(&mut buf), Ok(n) if n == len)
    };
    for _ in 0..5 {
        assert!(echoed(20), "small datagrams pass the filter");
    }
    for _ in 0..5 {
        assert!(!echoed(200), "a large datagram passed the router's filter");
    }
    let c = netns_tests::nat_counters(&lab);
    assert_eq!(c["fast_out_tc"], 0, "{c:?}");
}

/// Issue 21: `nat attach` and `nat detach` are in force when they return: the first datagram
/// red sends after `attach` returns leaves translated, the first after `detach` returns
/// leaves as red sent it (lan sees red's own address), every time.
#[test]
fn the_first_packet_after_attach_is_translated_and_after_detach_is_not() {
    if !privileged("nat_attach_detach_at_once") {
        return;
    }
    let p = netns_tests::prefix("hd");
    let h = HandMade::build(&p);
    let router = h.ns("router");
    let lab = format!("{p}nat-");
    for i in 0..4 {
        ok(&attach_args(&lab, &router));
        let _detach = Detach(lab.clone());
        assert_eq!(
            red_as_lan_sees_it(&h),
            Ipv4Addr::new(192, 168, 1, 2),
            "try {i}: translated at once"
        );
        ok(&["nat", "detach", "--prefix", &lab]);
        assert_eq!(
            red_as_lan_sees_it(&h),
            Ipv4Addr::new(192, 168, 15, 1),
            "try {i}: not translated once detach returned"
        );
    }
}

/// `nat attach` of lab `lab` on the hand-made router namespace `router` (uplink wan, red and
/// blue's prefix internal), no forward.
fn attach_args<'a>(lab: &'a str, router: &'a str) -> [&'a str; 10] {
    [
        "nat",
        "attach",
        "--prefix",
        lab,
        "--netns",
        router,
        "--uplink",
        "wan",
        "--internal",
        "192.168.15.0/24",
    ]
}
