//! What several commands share: the lab prefix argument, `--proto`, and the one guard for
//! commands that need the lab to run the eBPF NAT.

use anyhow::{Result, bail};
use netns_user::{
    lab::{self, DEFAULT_PREFIX, Lab},
    nat::NatKind,
};

#[derive(clap::Args)]
pub(super) struct PrefixArg {
    /// Lab prefix: namespace names are PREFIX + the name in the lab file (nn-red, ...).
    #[arg(long, short, default_value = DEFAULT_PREFIX)]
    pub(super) prefix: String,
}

/// `--proto` of `conntrack` and `trace`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(super) enum ProtoArg {
    Tcp,
    Udp,
    Icmp,
}

impl ProtoArg {
    pub(super) fn number(self) -> u8 {
        match self {
            ProtoArg::Tcp => netns_common::nat::PROTO_TCP,
            ProtoArg::Udp => netns_common::nat::PROTO_UDP,
            ProtoArg::Icmp => netns_common::nat::PROTO_ICMP,
        }
    }
}

/// Lab `prefix`, as root, refused unless it runs the eBPF NAT: every command that needs the
/// eBPF NAT's maps, programs or agent asks here. The error says
/// `lab "<prefix>" uses <nat> NAT: <why>`.
pub(super) fn ebpf_lab(prefix: &str, why: &str) -> Result<Lab> {
    lab::require_root()?;
    let lab = Lab::open(prefix)?;
    if lab.state.nat != NatKind::Ebpf {
        bail!("lab {prefix:?} uses {} NAT: {why}", lab.state.nat);
    }
    Ok(lab)
}
