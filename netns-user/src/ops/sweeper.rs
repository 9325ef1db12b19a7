//! Two of the agent's jobs (`ops::agent`): deleting expired flows and mappings (a mapping's
//! two entries together), and moving the NAT to the uplink's new address.

use std::net::Ipv4Addr;

use netns_common::{
    names::{MAP_NAT_BINDINGS, MAP_NAT_CONFIG},
    nat::{Binding, BindingKey, FlowKey, SIDE_EXTERNAL, addr_to_wire},
};

use crate::{
    bpf,
    config::NatSpec,
    nat::{
        NatError,
        ebpf::{
            GRACE_NS, bindings_map, config_map, flows_map, map_err, remove_mapping, static_bindings,
            uplink_address,
        },
    },
};

/// What one sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub flows: usize,
    pub bindings: usize,
}

/// Deletes flows and bindings that expired more than a grace period before `now`; a
/// binding's two entries go together, and an internal entry whose external one is gone
/// (or taken by another endpoint) goes too.
pub fn sweep_once(prefix: &str, now: u64) -> Result<Swept, NatError> {
    let mut swept = Swept::default();
    let mut flows = flows_map(prefix)?;
    let old: Vec<FlowKey> = flows
        .iter()
        .filter_map(|r| r.ok())
        .filter(|(_, f)| f.expires_ns + GRACE_NS < now)
        .map(|(k, _)| k)
        .collect();
    for k in old {
        // Read again: a packet may have refreshed it since.
        if flows.get(&k, 0).is_ok_and(|f| f.expires_ns + GRACE_NS < now) && flows.remove(&k).is_ok() {
            swept.flows += 1;
        }
    }

    let mut bindings = bindings_map(prefix)?;
    let all: Vec<(BindingKey, Binding)> = bindings.iter().filter_map(|r| r.ok()).collect();
    for (k, b) in &all {
        if k.side == SIDE_EXTERNAL {
            if b.is_static() || b.free_at_ns().saturating_add(GRACE_NS) >= now {
                continue;
            }
            if !bindings
                .get(k, 0)
                .is_ok_and(|b| !b.is_static() && b.free_at_ns().saturating_add(GRACE_NS) < now)
            {
                continue;
            }
            if remove_mapping(&mut bindings, k, b) {
                swept.bindings += 1;
            }
        } else {
            let ekey = BindingKey::external(k.proto, b.ext_addr, b.ext_port);
            let owned = bindings
                .get(&ekey, 0)
                .is_ok_and(|e| e.int_addr == b.int_addr && e.int_port == b.int_port);
            if !owned {
                let _ = bindings.remove(k);
            }
        }
    }
    Ok(swept)
}

/// Follows a change of the uplink's address: new flows take the new address, and the port
/// forwards move to it. Flows already mapped keep their address until they expire.
pub fn follow_uplink_address(
    prefix: &str,
    nat: &NatSpec,
    router_ns: &str,
) -> Result<Option<Ipv4Addr>, NatError> {
    let Some(now_addr) = uplink_address(router_ns, &nat.uplink)? else {
        return Ok(None);
    };
    let mut cfg_map = config_map(prefix)?;
    let mut cfg = cfg_map.get(&0, 0).map_err(map_err(prefix, MAP_NAT_CONFIG))?;
    let new = addr_to_wire(now_addr);
    if cfg.ext_addr == new {
        return Ok(None);
    }
    let mut bindings = bindings_map(prefix)?;
    let forwards = static_bindings(nat);
    // Forwards on the old address stop; they are re-made on the new one.
    for f in &forwards {
        let _ = bindings.remove(&BindingKey::external(f.proto, cfg.ext_addr, f.ext_port));
    }
    bpf::install_forwards(&mut bindings, new, &forwards).map_err(map_err(prefix, MAP_NAT_BINDINGS))?;
    cfg.ext_addr = new;
    cfg_map.set(0, cfg, 0).map_err(map_err(prefix, MAP_NAT_CONFIG))?;
    Ok(Some(now_addr))
}
