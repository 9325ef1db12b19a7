//! Printing results for people (the JSON forms are serde's).

use netns_user::lab::{Lab, LabStatus};

pub(super) fn print_summary(lab: &Lab) {
    let p = lab.prefix();
    println!("lab {p:?} is up (nat: {}).", lab.state.nat);
    println!("  namespaces: {}", lab.state.namespaces.join(", "));
    if let Some(addr) = lab.config.uplink_address() {
        println!("  router uplink address: {addr}");
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
