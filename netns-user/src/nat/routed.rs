//! Plain forwarding in eBPF (`--nat none --fast-path tc|xdp`): the router runs no NAT, and
//! routed packets between the lab's internal bridge and its uplink take an eBPF redirect
//! driven by the kernel's FIB (next hop, neighbour, MTU; TTL decremented), as the NAT's fast
//! path forwards, with no state of its own. Whatever the kernel would not forward that way
//! is left to it (`netns_common::fast::routed`).
//!
//! The lab's agent keeps it in step with the router, as for the NAT: the port table and the
//! bridge's and uplink's MACs from link events, and a filter on the forward hook holds it
//! off while it is there.

use netns_common::fwd::{FAST_OFF, FAST_XDP};

use super::{
    NatError, NatTarget,
    ebpf::{fast_config, prepare_xdp_peers, router_links, sync_ports},
};
use crate::{
    bpf::{self, NatMaps},
    config::FastPath,
    sys::firewall,
};

/// Loads and attaches the forwarding program in mode `t.nat.routed_fast_path` (nothing if
/// off). Refused, with nothing attached, where the lab has no internal bridge to forward
/// from.
pub fn apply(t: &NatTarget) -> Result<(), NatError> {
    let wanted = t.nat.routed_fast_path;
    if wanted == FastPath::Off {
        return Ok(());
    }
    let Some((ports, mut fc)) = fast_config(t, wanted)? else {
        return Err(NatError::Unsupported(format!(
            "--fast-path {}: the router has no bridge on an internal network ([nat] internal) to \
             forward from",
            wanted.name()
        )));
    };
    if wanted == FastPath::Xdp {
        prepare_xdp_peers(t)?;
    }
    if let Some(why) = firewall::forward_filter(&t.router_ns)? {
        fc.mode = FAST_OFF;
        eprintln!("note: the eBPF forwarding is held off: {why} (redirected packets would skip it)");
    }
    bpf::attach_router(&t.router_ns, &t.nat.uplink, &ports, t.prefix, fc)?;
    sync_ports(&mut NatMaps::open(t.prefix)?, &router_links(&t.router_ns)?)
}

/// What runs, in words (for `status`), or None when the kernel forwards alone.
pub fn describe(t: &NatTarget) -> Result<Option<String>, NatError> {
    if t.nat.routed_fast_path == FastPath::Off {
        return Ok(None);
    }
    let fc = NatMaps::open(t.prefix)?.fast_config()?;
    let program = if fc.mode == FAST_XDP {
        "xdp_route_fast (XDP)"
    } else {
        "route_fast (TCX ingress)"
    };
    // The first internal bridge's ports, as `fast_config` attaches.
    let first = t.bridge_ports.first().map(|(_, b)| b);
    let ports: Vec<&str> = t
        .bridge_ports
        .iter()
        .filter(|(_, b)| Some(b) == first)
        .map(|(p, _)| p.as_str())
        .chain([t.nat.uplink.as_str()])
        .collect();
    Ok(Some(format!(
        "eBPF forwarding, no NAT: {program} on {}{}\n",
        ports.join(", "),
        if fc.mode == FAST_OFF {
            " (HELD OFF: a filter on the forward hook)"
        } else {
            ""
        }
    )))
}
