//! The `netns-nat` binary as a user runs it: up, status, exec, check, down, and its errors.

use std::process::{Command, Output};

use netns_tests::{assert_gone, bin, prefix, privileged};
use netns_user::sys::netns;

fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("netns-nat runs")
}

/// Takes a lab made through the CLI down whatever happens to the test.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(bin()).args(["down", "--prefix", &self.0]).output();
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn up_status_exec_check_down() {
    if !privileged("cli") {
        return;
    }
    let p = prefix("cli");
    let out = run(&["up", "--prefix", &p, "--nat", "iptables"]);
    let _down = Down(p.clone());
    assert!(out.status.success(), "up: {}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("is up") && said.contains(&format!("netns-nat exec --prefix {p}")),
        "{said}"
    );

    let out = run(&["status", "--prefix", &p, "--json"]);
    assert!(out.status.success(), "status: {}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["nat"], "iptables");
    assert_eq!(status["ready"], true);
    assert_eq!(status["uplink_address"], "192.168.1.2");
    let host = status["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "host")
        .unwrap();
    assert_eq!(host["netns"], format!("{p}host"));
    let port = host["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "veth-red-br")
        .unwrap();
    assert_eq!(port["master"], "v-net-0");
    assert!(status["nat_rules"].as_str().unwrap().contains("MASQUERADE"));

    // Only the eBPF NAT has programs of this build to swap in: refused, the rules kept.
    let out = run(&["up", "--prefix", &p, "--upgrade"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("nothing of this build to upgrade (only --nat ebpf does)"),
        "{}",
        text(&out.stderr)
    );
    let after: serde_json::Value =
        serde_json::from_slice(&run(&["status", "--prefix", &p, "--json"]).stdout).unwrap();
    assert_eq!(
        after["nat_rules"], status["nat_rules"],
        "the rules are as they were"
    );

    // exec runs inside the namespace: red's own interfaces, not the machine's.
    let out = run(&["exec", "--prefix", &p, "red", "--", "cat", "/proc/net/dev"]);
    assert!(out.status.success(), "exec: {}", text(&out.stderr));
    let dev = text(&out.stdout);
    assert!(dev.contains("veth-red") && !dev.contains("uplink"), "{dev}");
    let out = run(&["exec", "--prefix", &p, "mars", "--", "true"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no namespace \"mars\""),
        "{}",
        text(&out.stderr)
    );

    let out = run(&["check", "--prefix", &p]);
    assert!(
        out.status.success(),
        "check: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("5 passed, 0 failed"),
        "{}",
        text(&out.stdout)
    );

    let out = run(&["list"]);
    assert!(text(&out.stdout).contains(&format!("{p}\tnat=iptables")));

    let out = run(&["up", "--prefix", &p]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );

    let out = run(&["down", "--prefix", &p]);
    assert!(out.status.success(), "down: {}", text(&out.stderr));
    assert_gone(&p);
}

#[test]
fn a_bad_lab_file_is_refused_before_anything_is_made() {
    if !privileged("cli_bad_file") {
        return;
    }
    let p = prefix("bad");
    let dir = std::env::temp_dir().join(format!("{p}cfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("veth-red-br", "veth-red-bridge0", "at most 15"),
        ("192.168.15.1/24", "192.168.15.1", "missing prefix length"),
        ("192.168.1.3/24", "192.168.1.300/24", "not an IPv4 address"),
        ("[[route]]", "[[route]", "invalid lab file"),
    ];
    for (from, to, expect) in cases {
        let file = dir.join("lab.toml");
        let text_in = netns_user::config::REFERENCE_TOML.replacen(from, to, 1);
        std::fs::write(&file, text_in).unwrap();
        let out = run(&["up", "--prefix", &p, "--config", file.to_str().unwrap()]);
        assert!(!out.status.success(), "{from} -> {to} was accepted");
        let err = text(&out.stderr);
        assert!(err.contains(expect), "{from} -> {to}: {err}");
        assert_gone(&p);
    }
    let out = run(&["up", "--prefix", "a/b"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("lab prefix"), "{}", text(&out.stderr));
    let out = run(&["up", "--prefix", &p, "--config", "/nonexistent/lab.toml"]);
    assert!(
        text(&out.stderr).contains("reading /nonexistent/lab.toml"),
        "{}",
        text(&out.stderr)
    );
    assert_gone(&p);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn without_root_it_says_so_and_does_nothing() {
    if !privileged("cli_not_root") {
        return;
    }
    use std::os::unix::process::CommandExt as _;
    let p = prefix("nr");
    for args in [vec!["up", "--prefix", &p], vec!["down", "--prefix", &p]] {
        let out = Command::new(bin())
            .args(&args)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded as nobody");
        assert!(
            text(&out.stderr).contains("needs root"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    assert!(!netns::list().iter().any(|n| n.starts_with(&p)));
}

#[test]
fn help_explains_the_commands() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for word in [
        "up",
        "down",
        "status",
        "exec",
        "check",
        "list",
        "conntrack",
        "stats",
        "192.168.15.0/24",
    ] {
        assert!(help.contains(word), "--help lacks {word}: {help}");
    }
    let out = run(&["up", "--help"]);
    let help = text(&out.stdout);
    assert!(
        help.contains("iptables") && help.contains("nftables") && help.contains("--prefix"),
        "{help}"
    );
}

#[test]
fn conntrack_and_stats_of_an_ebpf_lab() {
    if !privileged("cli_conntrack") {
        return;
    }
    let p = prefix("ct");
    // ebpf is the default backend.
    let out = run(&["up", "--prefix", &p]);
    let _down = Down(p.clone());
    assert!(out.status.success(), "up: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("(nat: ebpf)"), "{}", text(&out.stdout));
    let out = run(&["check", "--prefix", &p]);
    assert!(out.status.success(), "check: {}", text(&out.stdout));

    let out = run(&["conntrack", "--prefix", &p, "--json"]);
    assert!(out.status.success(), "conntrack: {}", text(&out.stderr));
    let ct: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let flows = ct["flows"].as_array().unwrap();
    assert_eq!(flows.len(), 5, "{ct:#}");
    let udp = flows.iter().find(|f| f["protocol"] == "udp").unwrap();
    assert_eq!(
        udp["internal"].as_str().unwrap().split(':').next(),
        Some("192.168.15.1")
    );
    assert_eq!(
        udp["external"].as_str().unwrap().split(':').next(),
        Some("192.168.1.2")
    );
    assert_eq!(udp["remote"], "192.168.1.3:7007");
    assert_eq!(udp["origin"], "outbound");
    for field in [
        "state",
        "age_s",
        "expires_in_s",
        "packets_out",
        "bytes_out",
        "packets_in",
        "bytes_in",
    ] {
        assert!(!udp[field].is_null(), "{field} missing: {udp}");
    }
    assert_eq!(udp["packets_in"], 1);
    let http = flows.iter().find(|f| f["origin"] == "inbound").unwrap();
    assert_eq!(http["internal"], "192.168.15.2:80");
    assert_eq!(http["external"], "192.168.1.2:80");
    let maps = ct["mappings"].as_array().unwrap();
    assert!(
        maps.iter()
            .any(|m| m["static"] == true && m["external"] == "192.168.1.2:80"),
        "{ct:#}"
    );

    let out = run(&["stats", "--prefix", &p, "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(stats["counters"]["out_tcp"].as_u64().unwrap() >= 3, "{stats:#}");
    assert_eq!(stats["counters"]["drop_malformed"], 0);
    assert_eq!(stats["flows"], 5);
    assert!(stats["uplink"]["egress_packets"].as_u64().unwrap() > 0);
}

#[test]
fn conntrack_of_a_kernel_nat_lab_points_to_the_kernel() {
    if !privileged("cli_conntrack_kernel") {
        return;
    }
    let p = prefix("ck");
    assert!(run(&["up", "--prefix", &p, "--nat", "nftables"]).status.success());
    let out = run(&["conntrack", "--prefix", &p]);
    let stats = run(&["stats", "--prefix", &p, "--json"]);
    let _ = run(&["down", "--prefix", &p]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("conntrack -L"),
        "{}",
        text(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert!(
        stats["uplink"].is_object() && stats["counters"].is_null(),
        "{stats}"
    );
    assert_gone(&p);
}

/// On veth ports the XDP fast path costs bulk TCP its GSO: `up` says so when it is chosen,
/// and only then.
#[test]
fn up_with_the_xdp_fast_path_says_what_it_costs_on_veths() {
    if !privileged("cli_xdp_note") {
        return;
    }
    for (fast, noted) in [("xdp", true), ("tc", false)] {
        let p = prefix(&format!("xn{}", &fast[..1]));
        let out = run(&["up", "--prefix", &p, "--fast-path", fast]);
        let said = text(&out.stdout);
        let down = run(&["down", "--prefix", &p]);
        assert!(out.status.success(), "up: {}", text(&out.stderr));
        assert!(down.status.success(), "down: {}", text(&down.stderr));
        assert_gone(&p);
        assert_eq!(said.contains("bulk TCP"), noted, "--fast-path {fast}: {said}");
    }
}
