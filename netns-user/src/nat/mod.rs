//! NAT backends. Each applies the lab's `[nat]` settings inside the router namespace; none
//! knows about the others. Rules live in the router namespace and go with it on `down`.

pub mod kernel;

use serde::{Deserialize, Serialize};

use crate::{config::NatSpec, netns::NetnsError};

#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{tool} is not installed (run `cargo xtask setup`, or apt-get install {package})")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
    },
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
    /// No NAT: plain routing (outbound replies have no way back).
    None,
    /// The kernel's NAT through iptables (MASQUERADE and DNAT rules).
    Iptables,
    /// The kernel's NAT through an nftables ruleset.
    Nftables,
}

impl NatKind {
    pub fn name(self) -> &'static str {
        match self {
            NatKind::None => "none",
            NatKind::Iptables => "iptables",
            NatKind::Nftables => "nftables",
        }
    }

    /// The backend that implements this kind, if any.
    pub fn backend(self) -> Option<Box<dyn NatBackend>> {
        match self {
            NatKind::None => None,
            NatKind::Iptables => Some(Box::new(kernel::Iptables)),
            NatKind::Nftables => Some(Box::new(kernel::Nftables)),
        }
    }
}

impl std::fmt::Display for NatKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A NAT implementation for the router namespace.
pub trait NatBackend {
    /// Installs SNAT masquerade for the internal prefixes out of the uplink, and the port
    /// forwards, in namespace `router_ns`.
    fn apply(&self, router_ns: &str, nat: &NatSpec) -> Result<(), NatError>;

    /// What is installed, in the backend's own words (for `status`).
    fn describe(&self, router_ns: &str) -> Result<String, NatError>;
}
