//! `netns-nat-bench` (also run as `netns-nat bench`): every NAT backend measured side by
//! side, with a report.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::Parser as _;
use netns_bench as bench;

/// Benchmark every NAT backend side by side: forwarding rate and CPU per packet at full
/// offered rate (1 and many flows, 1 and one generator thread per CPU), TCP throughput,
/// connection rate and latency, against the bare-redirect ceilings of the path. Every
/// measurement point is taken for each backend in turn, round after round; results go to
/// bench-results/<time>/ (results.json, report.md, SVG charts). Creates and removes its own
/// labs (needs root); all traffic stays inside them and every load stops by itself. The full
/// run takes about an hour (--quick: about 2).
#[derive(clap::Parser)]
#[command(name = "netns-nat-bench", version)]
struct Args {
    /// One short round of every workload, own generator and client only.
    #[arg(long)]
    quick: bool,
    /// Backends to compare (comma-separated; none-tc and none-xdp route without NAT
    /// through the eBPF forwarding; tc-redirect and xdp-redirect are the ceilings: bare
    /// redirects with no NAT and no routing, for packet workloads only).
    #[arg(long, value_enum, value_delimiter = ',')]
    backends: Option<Vec<bench::Backend>>,
    /// Workloads to run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    workloads: Option<Vec<bench::Workload>>,
    /// Generators of the packet workloads (comma-separated): netns-nat (the project's
    /// AF_PACKET ring) and/or trafgen (independent check). Full run: both.
    #[arg(long, value_enum, value_delimiter = ',')]
    generator: Option<Vec<bench::Generator>>,
    /// Generator threads (pinned, one per CPU) of the packet workloads, each its own
    /// point (comma-separated). Default: 1 and the number of CPUs.
    #[arg(long, value_delimiter = ',')]
    gen_threads: Option<Vec<usize>>,
    /// Clients of the connection-rate workload (comma-separated): netns-nat and/or wrk.
    #[arg(long, value_enum, value_delimiter = ',')]
    conn_client: Option<Vec<bench::ConnClient>>,
    /// Concurrent flows of the many-flows workload, each a point (comma-separated; default
    /// 65000 and 1000000, --quick 65000). Points above 100000 flows run with the project's
    /// generator and one thread, after a warm-up of a second per 50,000 flows; the kernel's
    /// NATs then hit the machine's nf_conntrack_max, which a lab namespace cannot raise.
    #[arg(long, value_delimiter = ',')]
    flows: Option<Vec<u32>>,
    /// Rounds (default 3, --quick 1).
    #[arg(long)]
    rounds: Option<u32>,
    /// Seconds per measurement (default 5, --quick 1).
    #[arg(long)]
    duration: Option<f64>,
    /// Where the run's directory goes.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Also write results.json here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> Result<()> {
    exec(Args::parse())
}

fn exec(args: Args) -> Result<()> {
    let Args {
        quick,
        backends,
        workloads,
        generator,
        gen_threads,
        conn_client,
        flows,
        rounds,
        duration,
        out,
        json,
    } = args;
    let mut opts = if quick {
        bench::BenchOptions::quick()
    } else {
        bench::BenchOptions::full()
    };
    if let Some(b) = backends {
        opts.backends = b;
    }
    if let Some(w) = workloads {
        opts.workloads = w;
    }
    if let Some(g) = generator {
        opts.generators = g;
    }
    if let Some(t) = gen_threads {
        opts.gen_threads = t.into_iter().map(|t| t.max(1)).collect();
    }
    if let Some(c) = conn_client {
        opts.conn_clients = c;
    }
    if let Some(f) = flows {
        opts.many_flows = f
            .into_iter()
            .map(|f| f.clamp(1, bench::load::MAX_FLOWS))
            .collect();
    }
    if let Some(r) = rounds {
        opts.rounds = r.max(1);
    }
    if let Some(d) = duration {
        opts.duration = std::time::Duration::from_secs_f64(d.max(0.2));
    }
    opts.command = std::env::args().collect::<Vec<_>>().join(" ");
    let results = bench::run(&opts, &mut |line| eprint!("\r\x1b[K{line}"))?;
    eprintln!();
    let dir = bench::results_dir(&out, results.started_unix);
    let written = bench::report::write_all(&results, &dir)?;
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{}", bench::report::headline(&results));
    println!("{}", bench::report::table(&results));
    println!("written:");
    for p in written {
        println!("  {}", p.display());
    }
    if !results.failures.is_empty() {
        bail!(
            "{} measurement(s) failed twice (recorded in results.json):\n  {}",
            results.failures.len(),
            results.failures.join("\n  ")
        );
    }
    Ok(())
}
