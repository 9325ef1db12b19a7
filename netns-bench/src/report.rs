//! What a run leaves behind: `results.json`, `report.md`, SVG charts, and the summary table
//! printed at the end.

use std::{collections::BTreeMap, fmt::Write as _, fs, path::Path};

use anyhow::{Context as _, Result};
use plotters::prelude::*;

use crate::{Results, Row};

/// Backends in the order the tables and charts show them.
const ORDER: [&str; 13] = [
    "generator",
    "none",
    "none-tc",
    "none-xdp",
    "iptables",
    "nftables",
    "ebpf",
    "ebpf-off",
    "ebpf-tc",
    "ebpf-xdp",
    "ebpf-traced",
    "tc-redirect",
    "xdp-redirect",
];

fn order(b: &str) -> usize {
    ORDER.iter().position(|o| *o == b).unwrap_or(ORDER.len())
}

/// `k=v, k=v` of a row's parameters.
pub fn params_label(p: &serde_json::Value) -> String {
    p.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    format!(
                        "{k}={}",
                        v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn fmt_value(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    match unit {
        "pps" | "conn/s" => {
            if v >= 1e6 {
                format!("{:.2} M", v / 1e6)
            } else if v >= 1e3 {
                format!("{:.1} k", v / 1e3)
            } else {
                format!("{v:.0}")
            }
        }
        "entries" | "conns" | "ns/pkt" | "ns/run" => format!("{v:.0}"),
        "%" => format!("{v:.2}"),
        _ => format!("{v:.2}"),
    }
}

/// Rows grouped by (workload, metric, params), each with its rows in backend order.
fn groups(results: &Results) -> BTreeMap<(usize, &'static str, String), Vec<&Row>> {
    let mut g: BTreeMap<(usize, &'static str, String), Vec<&Row>> = BTreeMap::new();
    for r in &results.rows {
        let w = results
            .workloads
            .iter()
            .position(|w| *w == r.workload)
            .unwrap_or(99);
        g.entry((w, r.metric, r.params.to_string())).or_default().push(r);
    }
    for rows in g.values_mut() {
        rows.sort_by_key(|r| order(&r.backend));
    }
    g
}

/// The row of `backend` for (workload, metric) at the headline's point: one generator
/// thread of our own, `flows` flows.
fn headline_row<'a>(
    results: &'a Results,
    backend: &str,
    workload: &str,
    metric: &str,
    flows: Option<u64>,
) -> Option<&'a Row> {
    results.rows.iter().find(|r| {
        r.backend == backend
            && r.workload == workload
            && r.metric == metric
            && r.params["threads"] == 1
            && r.params["generator"] == "netns-nat"
            && flows.is_none_or(|f| r.params["flows"] == f)
    })
}

/// The headline table (markdown): per backend, the delivered rate with 1 flow and with each
/// count of many (and that against its own 1-flow rate: how its cost grows with the flows),
/// the router's CPU per packet, the ratios to iptables and the share of each ceiling.
pub fn headline(results: &Results) -> String {
    let mut many: Vec<u64> = results
        .rows
        .iter()
        .filter(|r| r.workload == "many-flows")
        .filter_map(|r| r.params["flows"].as_u64())
        .collect();
    many.sort_unstable();
    many.dedup();
    let mut backends: Vec<&str> = results.rows.iter().map(|r| r.backend.as_str()).collect();
    backends.sort_by_key(|b| order(b));
    backends.dedup();
    if !results.rows.iter().any(|r| r.workload == "small-packet") {
        return String::new();
    }
    let mut md = String::new();
    let many_cols: String = many
        .iter()
        .map(|m| format!(" {m} flows: delivered (x 1 flow) |"))
        .collect();
    let _ = writeln!(
        md,
        "| backend | 1 flow: delivered |{many_cols} router ns/packet (1 flow) | \
         x iptables: rate | x iptables: router ns | of TC ceiling | of XDP ceiling |"
    );
    let _ = writeln!(
        md,
        "|---|---|{}---|---|---|---|---|---|",
        "---|".repeat(many.len())
    );
    let ratio = |x: Option<f64>| x.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
    let pct = |x: Option<f64>| {
        x.map(|x| format!("{:.0} %", 100.0 * x))
            .unwrap_or_else(|| "-".into())
    };
    for b in backends {
        let one = headline_row(results, b, "small-packet", "delivered_pps", Some(1));
        let Some(one) = one else { continue };
        let lots: String = many
            .iter()
            .map(
                |&m| match headline_row(results, b, "many-flows", "delivered_pps", Some(m)) {
                    Some(r) => format!(" {} ({:.2}) |", fmt_value(r.median, "pps"), r.median / one.median),
                    None => " - |".into(),
                },
            )
            .collect();
        let router = headline_row(results, b, "small-packet", "router_ns_per_pkt", Some(1));
        let _ = writeln!(
            md,
            "| {b} | {} |{lots} {} | {} | {} | {} | {} |",
            fmt_value(one.median, "pps"),
            router
                .map(|r| format!("{:.0}", r.median))
                .unwrap_or_else(|| "-".into()),
            ratio(one.ratio_to_iptables),
            ratio(router.and_then(|r| r.ratio_to_iptables)),
            pct(one.ratio_to_tc_redirect),
            pct(one.ratio_to_xdp_redirect),
        );
    }
    md
}

/// The summary: one line per (workload, metric, params), a column per backend.
pub fn table(results: &Results) -> String {
    let mut backends: Vec<&str> = results.rows.iter().map(|r| r.backend.as_str()).collect();
    backends.sort_by_key(|b| order(b));
    backends.dedup();
    let mut out = format!("{:<15} {:<22} {:<28}", "workload", "metric", "params");
    for b in &backends {
        let _ = write!(out, " {b:>16}");
    }
    out.push('\n');
    for ((_, metric, _), rows) in groups(results) {
        let first = rows[0];
        let _ = write!(
            out,
            "{:<15} {:<22} {:<28}",
            first.workload,
            format!("{metric} ({})", first.unit),
            params_label(&first.params)
        );
        for b in &backends {
            let cell = rows
                .iter()
                .find(|r| r.backend == *b)
                .map(|r| match r.ratio_to_iptables {
                    Some(x) if r.backend != "iptables" => format!("{} x{x:.2}", fmt_value(r.median, r.unit)),
                    _ => fmt_value(r.median, r.unit),
                })
                .unwrap_or_default();
            let _ = write!(out, " {cell:>16}");
        }
        out.push('\n');
    }
    out
}

/// `report.md`: per workload, median [min-max] per backend and the ratio to iptables.
pub fn markdown(results: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# netns-nat benchmark\n");
    let _ = writeln!(md, "- command: `{}`", results.command);
    let _ = writeln!(
        md,
        "- machine: {} CPUs, {} GiB, kernel {}",
        results.machine.cpus, results.machine.memory_gib, results.machine.kernel
    );
    let _ = writeln!(
        md,
        "- {} round(s) of {} s per point; in each round every backend in turn; ratio = median over rounds of (backend / iptables) in the same round",
        results.rounds, results.duration_s
    );
    let m = &results.machine;
    let known = |v: Option<u64>| v.map_or_else(|| "unknown".to_owned(), |v| v.to_string());
    let _ = writeln!(
        md,
        "- memory per tracked connection: eBPF NAT {} B (its flow {} B, and both sides of a mapping of its own, with the tables' buckets); the kernel's conntrack entry {} B (slab object; its extensions and hash bucket come on top)",
        m.ebpf_connection_bytes,
        m.ebpf_flow_bytes,
        known(m.nf_conntrack_entry_bytes)
    );
    let _ = writeln!(
        md,
        "- the kernel's NATs track at most {} connections (the machine's nf_conntrack_max, which a lab namespace cannot raise): many-flows points above it are theirs to drop or leave untracked\n",
        known(m.nf_conntrack_max)
    );
    if !results.retries.is_empty() {
        let _ = writeln!(md, "- points measured twice after a failure:");
        for r in &results.retries {
            let _ = writeln!(
                md,
                "  - round {}, {} {} ({}): {}",
                r.round,
                r.workload,
                r.backend,
                params_label(&r.params),
                r.error
            );
        }
    }
    let _ = writeln!(
        md,
        "\n## Headline\n\nOne generator thread, 60-byte UDP frames; \"router ns/packet\" is the machine's CPU time per delivered packet minus the generator's alone; the ceilings are bare redirects from the bridge port to the uplink (MAC rewrite only, no NAT).\n"
    );
    md.push_str(&headline(results));
    let mut last = "";
    for ((_, metric, _), rows) in groups(results) {
        let first = rows[0];
        if first.workload != last {
            let _ = writeln!(md, "\n## {}\n", first.workload);
            let _ = writeln!(
                md,
                "| metric | params | backend | median | min | max | ratio to iptables | x tc-redirect | x xdp-redirect |"
            );
            let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
            last = first.workload;
        }
        for r in rows {
            let ratio = |x: Option<f64>| x.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                md,
                "| {metric} ({}) | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.unit,
                params_label(&r.params),
                r.backend,
                fmt_value(r.median, r.unit),
                fmt_value(r.min, r.unit),
                fmt_value(r.max, r.unit),
                ratio(r.ratio_to_iptables),
                ratio(r.ratio_to_tc_redirect),
                ratio(r.ratio_to_xdp_redirect),
            );
        }
    }
    md
}

/// One grouped bar chart: an x group per params, a bar per backend (median, with a min-max
/// whisker).
fn chart(path: &Path, title: &str, unit: &str, rows: &[&Row]) -> Result<()> {
    let mut labels: Vec<String> = rows.iter().map(|r| params_label(&r.params)).collect();
    labels.dedup();
    labels.sort();
    labels.dedup();
    let mut backends: Vec<&str> = rows.iter().map(|r| r.backend.as_str()).collect();
    backends.sort_by_key(|b| order(b));
    backends.dedup();
    // Headroom above the tallest bar for the group labels and the legend.
    let top = rows
        .iter()
        .map(|r| r.max)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        * 1.45;
    let top = if top > 0.0 { top } else { 1.0 };

    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = labels.len().max(1);
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, 0f64..top)?;
    let short = |v: &f64| {
        if v.abs() >= 1e6 {
            format!("{:.1}M", v / 1e6)
        } else if v.abs() >= 1e3 {
            format!("{:.0}k", v / 1e3)
        } else {
            format!("{v:.1}")
        }
    };
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_label_formatter(&short)
        .y_desc(unit)
        .draw()?;
    // Each group's parameters above its bars.
    c.draw_series(labels.iter().enumerate().map(|(i, l)| {
        Text::new(
            l.clone(),
            (i as f64 + 0.1, top * 0.76),
            ("sans-serif", 14).into_font().color(&BLACK),
        )
    }))?;
    let width = 0.8 / backends.len().max(1) as f64;
    for (bi, b) in backends.iter().enumerate() {
        let color = Palette99::pick(order(b)).to_rgba();
        let mine: Vec<(f64, &Row)> = rows
            .iter()
            .filter(|r| r.backend == *b)
            .filter_map(|r| {
                let l = params_label(&r.params);
                labels
                    .iter()
                    .position(|x| *x == l)
                    .map(|i| (i as f64 + 0.1 + width * bi as f64, *r))
            })
            .collect();
        c.draw_series(mine.iter().map(|(x, r)| {
            Rectangle::new([(*x, 0.0), (*x + width * 0.9, r.median.max(0.0))], color.filled())
        }))?
        .label(*b)
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        c.draw_series(mine.iter().filter(|(_, r)| r.min.is_finite()).map(|(x, r)| {
            let mid = *x + width * 0.45;
            PathElement::new(vec![(mid, r.min), (mid, r.max)], BLACK.stroke_width(2))
        }))?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Writes results.json, report.md and the charts into `dir`.
pub fn write_all(results: &Results, dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let json = dir.join("results.json");
    fs::write(&json, serde_json::to_string_pretty(results)?)?;
    written.push(json);
    let md = dir.join("report.md");
    fs::write(&md, markdown(results))?;
    written.push(md);
    // One chart per (workload, metric) that matters most to readers.
    let charts = [
        (
            "small-packet",
            "delivered_pps",
            "Small-packet forwarding rate (60-byte UDP frames)",
        ),
        (
            "many-flows",
            "delivered_pps",
            "Forwarding rate by number of concurrent flows",
        ),
        ("tcp-throughput", "gbps", "TCP throughput (iperf3)"),
        ("conn-rate", "conns_per_s", "New TCP connections per second"),
        ("latency", "p99_us", "UDP round trip, 99th percentile"),
        ("latency", "p50_us", "UDP round trip, median"),
        (
            "small-packet",
            "router_ns_per_pkt",
            "Router CPU per packet, ns (whole machine minus the generator's)",
        ),
        (
            "many-flows",
            "router_ns_per_pkt",
            "Router CPU per packet with many flows, ns",
        ),
    ];
    for (w, m, title) in charts {
        let rows: Vec<&Row> = results
            .rows
            .iter()
            .filter(|r| r.workload == w && r.metric == m)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let path = dir.join(format!("{w}-{m}.svg"));
        chart(&path, title, rows[0].unit, &rows)?;
        written.push(path);
    }
    Ok(written)
}
