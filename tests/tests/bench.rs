//! `netns-nat bench --quick` end to end: every backend and workload present in a results
//! file of the documented schema, with its report and charts. Not a speed test: the
//! figures are only checked to be figures.

use std::{collections::HashSet, process::Command};

use netns_tests::{bin, privileged};
use serde_json::Value;

const BACKENDS: [&str; 4] = ["none", "iptables", "nftables", "ebpf"];

/// (workload, metrics every backend reports, how many parameter sets).
const EXPECTED: [(&str, &[&str], usize); 6] = [
    ("small-packet", &["offered_pps", "delivered_pps", "loss_pct"], 1),
    ("many-flows", &["offered_pps", "delivered_pps", "loss_pct"], 3),
    ("tcp-throughput", &["gbps"], 4),
    ("conn-rate", &["conns_per_s", "conntrack_entries"], 1),
    ("latency", &["p50_us", "p99_us", "p99_9_us"], 1),
    (
        "cpu",
        &[
            "delivered_pps",
            "cpu_s_per_mpkt",
            "sender_cpu_s_per_mpkt",
            "router_cpu_s_per_mpkt",
        ],
        1,
    ),
];

#[test]
fn quick_bench_writes_every_backend_and_workload() {
    if !privileged("bench_quick") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("netns-nat-bench-{}", std::process::id()));
    let json = dir.join("quick.json");
    let out = Command::new(bin())
        .args(["bench", "--quick", "--json"])
        .arg(&json)
        .arg("--out")
        .arg(dir.join("runs"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The summary table names every backend.
    for b in BACKENDS {
        assert!(stdout.contains(b), "summary lacks {b}: {stdout}");
    }

    let r: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["schema"], 1);
    assert_eq!(r["rounds"], 1);
    assert!(r["machine"]["cpus"].as_u64().unwrap() >= 1);
    assert!(r["command"].as_str().unwrap().contains("--quick"));
    let rows = r["rows"].as_array().unwrap();
    for row in rows {
        for (field, ok) in [
            ("backend", row["backend"].is_string()),
            ("workload", row["workload"].is_string()),
            ("metric", row["metric"].is_string()),
            ("unit", row["unit"].is_string()),
            ("params", row["params"].is_object()),
            ("rounds", row["rounds"].as_array().is_some_and(|v| v.len() == 1)),
            ("median", row["median"].is_number()),
            ("min", row["min"].is_number()),
            ("max", row["max"].is_number()),
            (
                "ratio_to_iptables",
                row["ratio_to_iptables"].is_number() || row["ratio_to_iptables"].is_null(),
            ),
        ] {
            assert!(ok, "field {field} of {row}");
        }
        // x / x is 1, except 0 / 0 (a loss of 0 %), which has no ratio.
        if row["backend"] == "iptables" && row["median"] != 0.0 {
            assert_eq!(row["ratio_to_iptables"], 1.0, "{row}");
        }
    }
    for b in BACKENDS {
        for (w, metrics, params) in EXPECTED {
            for m in metrics {
                let sets: HashSet<String> = rows
                    .iter()
                    .filter(|x| x["backend"] == b && x["workload"] == w && x["metric"] == *m)
                    .map(|x| x["params"].to_string())
                    .collect();
                assert_eq!(sets.len(), params, "{b} {w} {m}: {sets:?}");
            }
        }
    }
    // Traffic went through: every backend forwarded the load.
    for b in BACKENDS {
        let sp = rows
            .iter()
            .find(|x| x["backend"] == b && x["workload"] == "small-packet" && x["metric"] == "delivered_pps")
            .unwrap();
        assert!(sp["median"].as_f64().unwrap() > 1000.0, "{sp}");
    }
    // The generator's own ceiling is reported too.
    assert!(
        rows.iter()
            .any(|x| x["backend"] == "generator" && x["workload"] == "small-packet")
    );

    let runs: Vec<_> = std::fs::read_dir(dir.join("runs")).unwrap().flatten().collect();
    assert_eq!(runs.len(), 1);
    let run = runs[0].path();
    for f in [
        "results.json",
        "report.md",
        "small-packet-delivered_pps.svg",
        "cpu-router_cpu_s_per_mpkt.svg",
    ] {
        assert!(run.join(f).exists(), "{f} missing in {}", run.display());
    }
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("## many-flows") && report.contains("ratio to iptables"));
    std::fs::remove_dir_all(&dir).unwrap();
}
