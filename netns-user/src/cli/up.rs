//! `netns-nat up`: create a lab, or resume or upgrade one that exists.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use netns_user::{
    config::{EbpfNatSpec, LabConfig},
    lab::Lab,
    nat::NatKind,
    ops::agent::Resumed,
};

use super::{common::PrefixArg, print::print_summary};

#[derive(clap::Args)]
pub(super) struct Args {
    /// Lab file (TOML); the built-in default is the reference lab
    /// (netns-user/labs/reference.toml).
    #[arg(long, short, conflicts_with_all = ["resume", "upgrade"])]
    config: Option<PathBuf>,
    #[command(flatten)]
    prefix: PrefixArg,
    /// NAT in the router namespace.
    #[arg(long, value_enum, default_value_t = NatKind::Ebpf, conflicts_with_all = ["resume", "upgrade"])]
    nat: NatKind,
    /// With the eBPF NAT: where established flows skip the bridge and routing (overrides
    /// the lab file's [nat.ebpf] fast_path; default tc). With --nat none: where routed
    /// packets take an eBPF redirect driven by the kernel's FIB instead of the kernel's
    /// forwarding ([nat] routed_fast_path; default off).
    #[arg(long, value_enum, conflicts_with_all = ["resume", "upgrade"])]
    fast_path: Option<netns_user::config::FastPath>,
    /// The lab exists: start its agent again if it is not running (after a crash or a
    /// kill). Packets were translated all along; this brings back expiry, address
    /// following and live changes.
    #[arg(long, conflicts_with = "upgrade")]
    resume: bool,
    /// The lab exists: load this build's eBPF programs and swap them into the running
    /// hooks atomically (TCX and XDP link updates), keeping the pinned maps, so
    /// established connections keep flowing; the agent is restarted from this build.
    /// Refused, with nothing changed, if the maps' layout differs from this build's.
    #[arg(long)]
    upgrade: bool,
    /// eBPF NAT only: the programs' diagnostics (aya-log) from this level up, written to
    /// the agent's log (`netns-nat logs`). Set when the programs load: with `up`, or
    /// changed with --upgrade. Default: the lab file's [nat.ebpf] log_level, off.
    #[arg(long, value_enum, conflicts_with = "resume")]
    log_level: Option<netns_user::config::LogLevel>,
}

pub(super) fn exec(args: Args) -> Result<()> {
    let Args {
        config,
        prefix,
        nat,
        fast_path,
        resume,
        upgrade,
        log_level,
    } = args;
    if resume {
        let lab = Lab::open(&prefix.prefix)?;
        match lab.resume()? {
            Resumed::Nothing => eprintln!(
                "lab {:?} ({} NAT) has nothing to resume: the kernel runs its NAT",
                prefix.prefix, lab.state.nat
            ),
            Resumed::Running(pid) => {
                eprintln!("the agent of lab {:?} is running (pid {pid})", prefix.prefix)
            }
            Resumed::Started(pid) => {
                eprintln!("started the agent of lab {:?} (pid {pid})", prefix.prefix)
            }
        }
        return Ok(());
    }
    if upgrade {
        let mut lab = Lab::open(&prefix.prefix)?;
        eprintln!("upgrading lab {:?}: {}", prefix.prefix, lab.upgrade(log_level)?);
        return Ok(());
    }
    let mut cfg = match &config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            LabConfig::parse(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => LabConfig::reference(),
    };
    match (nat, fast_path) {
        (_, None) => {}
        (NatKind::None, Some(fp)) => match cfg.nat.as_mut() {
            Some(n) => n.routed_fast_path = fp,
            None => bail!("--fast-path with --nat none: the lab file has no [nat] section (router, uplink)"),
        },
        (NatKind::Ebpf, Some(fp)) => ebpf_setting(&mut cfg, nat, "--fast-path")?.fast_path = fp,
        (other, Some(_)) => bail!(
            "--fast-path is for --nat ebpf (the NAT's fast path) or --nat none (eBPF forwarding \
             without NAT), not for --nat {other}, whose NAT is the kernel's"
        ),
    }
    if let Some(level) = log_level {
        ebpf_setting(&mut cfg, nat, "--log-level")?.log_level = level;
    }
    let lab = Lab::up(&cfg, &prefix.prefix, nat, &mut |step| eprintln!("  {step}"))?;
    print_summary(&lab);
    Ok(())
}

/// The lab file's [nat.ebpf] settings, for option `flag` to change: refused unless the lab
/// is to run the eBPF NAT (`nat`) and the file has a [nat] section.
fn ebpf_setting<'a>(cfg: &'a mut LabConfig, nat: NatKind, flag: &str) -> Result<&'a mut EbpfNatSpec> {
    if nat != NatKind::Ebpf {
        bail!("{flag} is a setting of the eBPF NAT (--nat ebpf), not of --nat {nat}");
    }
    match cfg.nat.as_mut() {
        Some(n) => Ok(&mut n.ebpf),
        None => bail!("{flag}: the lab file has no [nat] section"),
    }
}
