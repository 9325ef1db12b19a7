//! `netns-nat logs`: the log of a lab's agent, once or followed.

use std::time::Duration;

use anyhow::{Context as _, Result};

use super::common::{PrefixArg, ebpf_lab};

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    prefix: PrefixArg,
    /// Keep printing what is appended, until Ctrl-C (or --for).
    #[arg(long)]
    follow: bool,
    /// With --follow: stop after this many seconds.
    #[arg(long = "for", value_name = "SECS", requires = "follow")]
    follow_for: Option<f64>,
}

pub(super) fn exec(args: Args) -> Result<()> {
    let lab = ebpf_lab(&args.prefix.prefix, "it has no agent and no programs to log")?;
    let path = netns_user::ops::agent::log_path(lab.prefix());
    follow_file(&path, args.follow, args.follow_for.map(Duration::from_secs_f64))
}

/// Prints file `path`, and with `follow` what is appended to it until Ctrl-C or `within`.
fn follow_file(path: &std::path::Path, follow: bool, within: Option<Duration>) -> Result<()> {
    use std::io::{Read as _, Write as _};
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let start = std::time::Instant::now();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        f.read_to_end(&mut buf)?;
        std::io::stdout().write_all(&buf)?;
        std::io::stdout().flush()?;
        if !follow || within.is_some_and(|w| start.elapsed() >= w) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
