//! Two of the agent's jobs (`ops::agent`): expired flows and mappings removed, and the NAT
//! moved to the uplink's new address. Both are done by the NAT's maintenance program
//! (`bpf::maintain`), which decides each removal by the packets' own compare-and-swap, so a
//! flow or mapping a packet revives at that instant stays.

use std::net::Ipv4Addr;

use netns_common::{nat::addr_to_wire, translate::pair::BindingStore};

use crate::{
    bpf::{NatMaps, maintain},
    config::NatSpec,
    nat::{
        NatError,
        ebpf::{GRACE_NS, static_bindings, uplink_address},
    },
};

/// What one sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub flows: usize,
    pub bindings: usize,
}

/// Removes flows and mappings that expired more than a grace period ago (the grace keeps an
/// entry a reader of the tables has just seen from vanishing under it).
pub fn sweep_once(prefix: &str) -> Result<Swept, NatError> {
    let done = maintain::sweep(prefix, GRACE_NS)?;
    Ok(Swept {
        flows: done.flows as usize,
        bindings: done.mappings as usize,
    })
}

/// Follows a change of the uplink's address, as MASQUERADE does: new flows take the new
/// address at once (the programs treat a flow or mapping on another address as gone), the
/// port forwards move to it, and every flow and dynamic mapping on the old address is
/// removed.
pub fn follow_uplink_address(
    maps: &mut NatMaps,
    prefix: &str,
    nat: &NatSpec,
    router_ns: &str,
) -> Result<Option<Ipv4Addr>, NatError> {
    let Some(now_addr) = uplink_address(router_ns, &nat.uplink)? else {
        return Ok(None);
    };
    let mut cfg = maps.config()?;
    let new = addr_to_wire(now_addr);
    if cfg.ext_addr == new {
        return Ok(None);
    }
    cfg.ext_addr = new;
    maps.set_config(cfg)?;
    // The forwards' external entries on the new address (their internal entries are moved
    // to them by the maintenance program; a port some mapping held there first keeps it).
    for f in static_bindings(nat) {
        let [(ekey, eb), _] = f.entries(new);
        let _ = maps.insert_new(&ekey, &eb);
    }
    maintain::move_address(prefix)?;
    Ok(Some(now_addr))
}
