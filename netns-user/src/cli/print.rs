//! Printing results for people (the JSON forms are serde's): every command's tables and
//! reports are written here.

use std::collections::BTreeMap;

use netns_user::{
    config::FastPath,
    lab::{Lab, LabStatus},
    ops::conntrack::{FlowEntry, MappingEntry},
    probe::Check,
};

pub(super) fn print_summary(lab: &Lab) {
    let p = lab.prefix();
    println!("lab {p:?} is up (nat: {}).", lab.state.nat);
    println!("  namespaces: {}", lab.state.namespaces.join(", "));
    if let Some(addr) = lab.config.uplink_address() {
        println!("  router uplink address: {addr}");
    }
    if let Some(n) = lab.config.nat.as_ref().filter(|n| !n.routed_fast_path.is_off()) {
        println!(
            "  forwarding: eBPF at {} (no NAT): routed packets skip the router's stack",
            n.routed_fast_path.name()
        );
    }
    let xdp = lab
        .config
        .nat
        .as_ref()
        .is_some_and(|n| n.dataplane_fast_path() == FastPath::Xdp);
    if lab.runs_ebpf() && xdp {
        // A lab's ports are veths: see docs/fast-path.md for the measurement.
        println!(
            "  note: fast path xdp on veth ports: bulk TCP through the router is several times \
             slower than with --fast-path tc (an XDP program on a veth turns its peer's software \
             GSO off, so senders segment at the MTU); small packets gain little. tc is the \
             default for that reason."
        );
    }
    let first = lab
        .config
        .namespaces
        .first()
        .map(|n| n.name.as_str())
        .unwrap_or("red");
    println!("try:");
    println!("  netns-nat exec --prefix {p} {first} -- ip addr");
    println!("  netns-nat check --prefix {p}      # the scenario's exchanges");
    println!("  netns-nat status --prefix {p}");
    println!("  netns-nat down --prefix {p}");
}

/// Every number in a `stats` object by its dotted path (`counters.out_udp`, `flows`, ...).
pub(super) fn flatten(v: &serde_json::Value) -> std::collections::BTreeMap<String, u64> {
    fn walk(v: &serde_json::Value, path: &str, out: &mut std::collections::BTreeMap<String, u64>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(v, &p, out);
                }
            }
            serde_json::Value::Number(n) => {
                if let Some(n) = n.as_u64() {
                    out.insert(path.to_owned(), n);
                }
            }
            _ => {}
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(v, "", &mut out);
    out
}

/// Change per second of each number between two readings `dt` seconds apart (a counter
/// that went down, e.g. live flows, gives a negative rate).
pub(super) fn rates(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    dt: f64,
) -> std::collections::BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| {
            let b = before.get(k).copied().unwrap_or(0);
            (k.clone(), (*v as f64 - b as f64) / dt.max(1e-9))
        })
        .collect()
}

pub(super) fn print_stats(v: &serde_json::Value) {
    if let Some(c) = v.get("counters").and_then(|c| c.as_object()) {
        println!("eBPF NAT counters:");
        for (name, n) in c {
            println!("  {name:<24} {n}");
        }
        println!("  {:<24} {}", "live flows", v["flows"]);
        println!("  {:<24} {}", "live mappings", v["mappings"]);
    }
    let u = &v["uplink"];
    println!(
        "uplink: in {} packets / {} bytes, out {} packets / {} bytes",
        u["ingress_packets"], u["ingress_bytes"], u["egress_packets"], u["egress_bytes"]
    );
}

pub(super) fn print_status(s: &LabStatus) {
    println!(
        "lab {:?}: {}, nat {}{}",
        s.prefix,
        if s.ready {
            "ready"
        } else {
            "NOT READY (half-built: run down)"
        },
        s.nat,
        s.router.as_ref().map(|r| format!(" in {r}")).unwrap_or_default()
    );
    for ns in &s.namespaces {
        println!(
            "  {} ({}){}",
            ns.name,
            ns.netns,
            if ns.present { "" } else { ": MISSING" }
        );
        for l in &ns.links {
            println!(
                "    {:<15} {:<6} {:<5} {}{}",
                l.name,
                l.kind.as_deref().unwrap_or("-"),
                if l.up { "up" } else { "down" },
                l.addresses.join(" "),
                l.master
                    .as_ref()
                    .map(|m| format!(" master {m}"))
                    .unwrap_or_default()
            );
        }
        for r in &ns.routes {
            println!(
                "    route {}{}{}",
                r.to,
                r.via.as_ref().map(|v| format!(" via {v}")).unwrap_or_default(),
                r.dev.as_ref().map(|d| format!(" dev {d}")).unwrap_or_default()
            );
        }
    }
    if let Some(rules) = &s.nat_rules {
        println!("  nat rules:");
        for line in rules.lines() {
            println!("    {line}");
        }
    }
    if let Some(e) = &s.ebpf {
        let t: Vec<String> = e.timeouts.iter().map(|(k, v)| format!("{k} {v}s")).collect();
        println!("  timeouts: {}", t.join(", "));
        for (name, u) in &e.tables {
            println!(
                "  table {name}: {} live of {} entries, capacity {}",
                u.live, u.entries, u.capacity
            );
        }
        println!(
            "  forwards: {}",
            if e.forwards.is_empty() {
                "none".to_owned()
            } else {
                e.forwards.join(", ")
            }
        );
        if let Some(why) = e.agent.health.as_ref().and_then(|h| h.fast_path_held.as_ref()) {
            println!("  fast path HELD OFF: {why} (the fast path would skip it)");
        }
        match (&e.agent.pid, &e.agent.health) {
            (Some(pid), Some(h)) => println!(
                "  agent: running (pid {pid}): {} sweeps (last {} ms), {} flows and {} mappings \
                 swept, {} router events ({} address changes), {} live changes applied, {} refused{}",
                h.sweeps,
                h.last_sweep_ms,
                h.swept_flows,
                h.swept_mappings,
                h.router_events,
                h.address_changes,
                h.changes_applied,
                h.changes_refused,
                h.last_error
                    .as_ref()
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            ),
            (Some(pid), None) => println!(
                "  agent: pid {pid} does NOT ANSWER: {}",
                e.agent.error.as_deref().unwrap_or("")
            ),
            (None, _) => println!(
                "  agent: NOT RUNNING (expired entries are not deleted, address changes are not \
                 followed, live changes are refused): `netns-nat up --prefix {} --resume`",
                s.prefix
            ),
        }
    }
    if let Some(c) = &s.uplink_counters {
        println!(
            "  uplink counters (eBPF): in {} pkts / {} B, out {} pkts / {} B",
            c.ingress_packets, c.ingress_bytes, c.egress_packets, c.egress_bytes
        );
    }
}

/// One line of `conntrack --watch`.
pub(super) fn event_line(e: &netns_user::ops::conntrack::ConntrackEvent) -> String {
    let tag = if e.event == "new" { "[NEW]" } else { "[DESTROY]" };
    match (&e.flow, &e.mapping) {
        (Some(f), _) => format!(
            "{tag:<9} flow    {:<4} {} -> {} as {} {} {}",
            f.protocol, f.internal, f.remote, f.external, f.state, f.origin
        ),
        (_, Some(m)) => format!(
            "{tag:<9} mapping {:<4} {} <-> {}{}",
            m.protocol,
            m.internal,
            m.external,
            if m.is_static { " static" } else { "" }
        ),
        _ => tag.to_owned(),
    }
}

/// The flows and mappings `conntrack` selected, one line each.
pub(super) fn print_conntrack(flows: &[FlowEntry], mappings: &[MappingEntry]) {
    println!("{} flows:", flows.len());
    for f in flows {
        println!(
            "  {:<4} {:<21} -> {:<21} as {:<21} {:<11} {:<8} age {:>6.1}s expires {:>7.1}s  out {}p/{}B in {}p/{}B",
            f.protocol,
            f.internal,
            f.remote,
            f.external,
            f.state,
            f.origin,
            f.age_s,
            f.expires_in_s,
            f.packets_out,
            f.bytes_out,
            f.packets_in,
            f.bytes_in
        );
    }
    println!("{} mappings:", mappings.len());
    for m in mappings {
        let exp = m
            .expires_in_s
            .map(|e| format!("expires {e:.1}s"))
            .unwrap_or_else(|| "static".into());
        println!(
            "  {:<4} {:<21} <-> {:<21} {exp}",
            m.protocol, m.internal, m.external
        );
    }
}

/// One refresh of `stats --watch`: each counter that is not zero or changes, with its rate;
/// in place on a terminal (`tty`), one block after another into a file or pipe.
pub(super) fn print_rates(totals: &BTreeMap<String, u64>, per_s: &BTreeMap<String, f64>, tty: bool) {
    print!("{}", if tty { "\x1b[H\x1b[2J" } else { "\n" });
    println!("{:<32} {:>16} {:>14}", "counter", "total", "per second");
    for (name, total) in totals {
        if *total != 0 || per_s[name] != 0.0 {
            println!("{name:<32} {total:>16} {:>14.1}", per_s[name]);
        }
    }
}

/// The rows of `forward list` (their JSON form).
pub(super) fn print_forwards(rows: &[serde_json::Value]) {
    if rows.is_empty() {
        println!("no port forwards");
        return;
    }
    for r in rows {
        println!(
            "{:<4} {:>5} -> {:<21} {}",
            r["protocol"].as_str().unwrap_or(""),
            r["port"],
            r["to"].as_str().unwrap_or(""),
            if r["live"] == true {
                ""
            } else {
                "(not in the maps!)"
            }
        );
    }
}

/// The verdict of each of `check`'s exchanges, and the tally.
pub(super) fn print_checks(lab: &Lab, checks: &[Check]) {
    let passed = checks.iter().filter(|c| c.passed).count();
    println!(
        "acceptance exchanges, lab {:?}, nat {}:",
        lab.prefix(),
        lab.state.nat
    );
    for c in checks {
        let expect = if c.expect_ok { "should pass" } else { "should fail" };
        let verdict = if c.passed { "ok  " } else { "FAIL" };
        println!("  {verdict} {:<60} {expect}: {}", c.name, c.detail);
    }
    println!("{passed} passed, {} failed", checks.len() - passed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_flatten_to_dotted_paths_and_rates_per_second() {
        let a = serde_json::json!({ "counters": { "out_udp": 10, "in_udp": 4 }, "flows": 3, "uplink": { "ingress_packets": 100 } });
        let b = serde_json::json!({ "counters": { "out_udp": 30, "in_udp": 4 }, "flows": 1, "uplink": { "ingress_packets": 150 } });
        let (fa, fb) = (flatten(&a), flatten(&b));
        assert_eq!(fa["counters.out_udp"], 10);
        assert_eq!(fa["uplink.ingress_packets"], 100);
        let r = rates(&fa, &fb, 2.0);
        assert_eq!(r["counters.out_udp"], 10.0);
        assert_eq!(r["counters.in_udp"], 0.0);
        assert_eq!(r["flows"], -1.0);
        assert_eq!(r["uplink.ingress_packets"], 25.0);
    }
}
