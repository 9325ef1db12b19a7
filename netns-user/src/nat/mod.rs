//! NAT backends. Each applies the lab's `[nat]` settings inside the router namespace; none
//! knows about the others. Rules live in the router namespace and go with it on `down`.

pub mod ebpf;
pub mod kernel;
pub mod routed;

use serde::{Deserialize, Serialize};

use crate::{bpf::EbpfError, config::NatSpec, sys::netlink::NetlinkError, sys::netns::NetnsError};

#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{tool} is not installed (run `cargo xtask setup`, or apt-get install {package})")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
    },
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Ethtool(#[from] crate::sys::ethtool::EthtoolError),
    #[error(transparent)]
    Firewall(#[from] crate::sys::firewall::FirewallError),
    #[error("{0}")]
    Unsupported(String),
    #[error("`{command}` in namespace {ns} failed: {detail}")]
    Command {
        ns: String,
        command: String,
        detail: String,
    },
}

/// Which NAT the router runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NatKind {
    /// No NAT: plain routing (outbound replies have no way back), by the kernel or, with
    /// --fast-path tc|xdp, by an eBPF redirect driven by the kernel's FIB.
    None,
    /// The kernel's NAT through iptables (MASQUERADE and DNAT rules).
    Iptables,
    /// The kernel's NAT through an nftables ruleset.
    Nftables,
    /// eBPF programs (TC) with BPF conntrack maps; no iptables, nftables or kernel conntrack.
    Ebpf,
}

impl NatKind {
    pub fn name(self) -> &'static str {
        match self {
            NatKind::None => "none",
            NatKind::Iptables => "iptables",
            NatKind::Nftables => "nftables",
            NatKind::Ebpf => "ebpf",
        }
    }

    /// The backend that implements this kind, if any.
    pub fn backend(self) -> Option<Box<dyn NatBackend>> {
        match self {
            NatKind::None => None,
            NatKind::Iptables => Some(Box::new(kernel::Iptables)),
            NatKind::Nftables => Some(Box::new(kernel::Nftables)),
            NatKind::Ebpf => Some(Box::new(ebpf::EbpfNat)),
        }
    }
}

impl std::fmt::Display for NatKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a backend applies the lab's `[nat]` settings.
#[derive(Debug, Clone)]
pub struct NatTarget<'a> {
    pub prefix: &'a str,
    /// Full name of the router namespace.
    pub router_ns: String,
    pub nat: &'a NatSpec,
    /// The router's interfaces on internal networks (where hairpinned traffic arrives).
    pub internal_ifaces: Vec<String>,
    /// (port, bridge): the ports of those interfaces that are bridges (where the fast path
    /// takes packets).
    pub bridge_ports: Vec<(String, String)>,
    /// (namespace, interface): the far ends of the bridge ports' veths, and of the uplink's
    /// if it is a veth (the fast path redirects into them and configures their offloads).
    pub port_peers: Vec<(String, String)>,
    pub uplink_peer: Option<(String, String)>,
}

/// A NAT implementation for the router namespace.
pub trait NatBackend {
    /// Installs SNAT masquerade for the internal prefixes out of the uplink, and the port
    /// forwards, in the router namespace.
    fn apply(&self, target: &NatTarget) -> Result<(), NatError>;

    /// What is installed, in the backend's own words (for `status`).
    fn describe(&self, target: &NatTarget) -> Result<String, NatError>;

    /// How many connections the NAT tracks now (the kernel's conntrack table, or the eBPF
    /// NAT's live flows): what the benchmark reports after a connection-rate run.
    fn live_entries(&self, target: &NatTarget) -> Result<usize, NatError>;
}
