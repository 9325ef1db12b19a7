//! The eBPF NAT backend: loads the programs and BPF conntrack maps into the router, and
//! keeps the fast path's port table and its hold-off (through `bpf::NatMaps`, the typed
//! handle on the pinned maps). No iptables, nftables or kernel conntrack is involved. What
//! runs beside the dataplane (the per-lab process that sweeps and follows the router) is not
//! this layer's: the layers above start and stop it.
//!
//! Expiry: every entry carries its expiry time and the programs ignore expired entries, so
//! correctness never waits for cleanup. Reclaiming the memory and ports is done twice over:
//! the programs take over an expired binding's port when they need it, and user space
//! deletes expired flows and bindings (a binding's two entries together) every
//! `sweep_interval_ms`. User space rather than bpf_timer, because aya-ebpf 0.2's maps carry
//! no BTF for their values, which bpf_timer requires; user space also follows the uplink's
//! address, which a program cannot read.

use std::net::Ipv4Addr;

use netns_common::{
    fwd::{
        FAST_OFF, FAST_TC, FAST_XDP, FastConfig, PEER_PORTS, PEER_UPLINK, PORT_BRIDGE, PORT_UP, PortState,
    },
    memory,
    nat::{
        FLAG_DROP_UNSUPPORTED, FLAG_ENDPOINT_INDEPENDENT_FILTERING, FLAG_INBOUND_ROUTE, MAX_INTERNAL,
        NatConfig, PortRange, Prefix, SIDE_EXTERNAL, Timeouts, WireAddr, addr_from_wire, addr_to_wire,
        port_to_wire,
    },
};

use super::{NatBackend, NatError, NatTarget};
use crate::{
    bpf::{self, NatLoad, NatMaps, StaticBinding},
    config::{EbpfNatSpec, FastPath, Filtering, ForwardSpec, Inbound, NatSpec, Unsupported},
    sys::{
        ethtool::{self, Offload},
        firewall,
        netlink::{self, LinkBrief},
    },
};

pub struct EbpfNat;

pub(crate) const NS: u64 = 1_000_000_000;
/// How long past its expiry an entry is kept, so that the sweeper never races a packet
/// that is refreshing it.
pub(crate) const GRACE_NS: u64 = NS;

/// The programs' configuration for `nat` with external address `ext`.
pub fn nat_config(nat: &NatSpec, ext: Ipv4Addr) -> NatConfig {
    let e = &nat.ebpf;
    let mut cfg = NatConfig {
        ext_addr: addr_to_wire(ext),
        flags: 0,
        n_internal: nat.internal.len().min(MAX_INTERNAL) as u32,
        ports: PortRange::new(e.ports.min, e.ports.max),
        low_ports: PortRange::new(e.low_ports.min, e.low_ports.max),
        icmp_ids: PortRange::new(e.icmp_ids.min, e.icmp_ids.max),
        timeouts: Timeouts {
            udp_ns: e.timeouts.udp * NS,
            tcp_established_ns: e.timeouts.tcp_established * NS,
            tcp_transitory_ns: e.timeouts.tcp_transitory * NS,
            icmp_ns: e.timeouts.icmp * NS,
            other_ns: e.timeouts.other * NS,
            unconfirmed_ns: e.timeouts.unconfirmed * NS,
        },
        new_per_remote: e.new_per_remote,
        ..NatConfig::default()
    };
    if e.filtering == Filtering::EndpointIndependent {
        cfg.flags |= FLAG_ENDPOINT_INDEPENDENT_FILTERING;
    }
    if e.unsupported == Unsupported::Drop {
        cfg.flags |= FLAG_DROP_UNSUPPORTED;
    }
    if e.inbound == Inbound::Route {
        cfg.flags |= FLAG_INBOUND_ROUTE;
    }
    for (slot, net) in cfg.internal.iter_mut().zip(&nat.internal) {
        *slot = Prefix {
            addr: addr_to_wire(net.0.network().addr),
            mask: WireAddr::from_host(net.0.mask()),
        };
    }
    cfg
}

/// The port forwards as static bindings.
pub fn static_bindings(nat: &NatSpec) -> Vec<StaticBinding> {
    nat.forwards.iter().map(static_binding).collect()
}

/// Port forward `f` as a static binding.
pub fn static_binding(f: &ForwardSpec) -> StaticBinding {
    StaticBinding {
        proto: f.protocol.number(),
        ext_port: port_to_wire(f.port),
        int_addr: addr_to_wire(*f.to.ip()),
        int_port: port_to_wire(f.to.port()),
    }
}

/// The fast path's ports and configuration in mode `wanted`, if it is on: the uplink's
/// ifindex and MAC and the MAC of the (first) internal bridge, the router's address on the
/// internal side.
pub(crate) fn fast_config(
    t: &NatTarget,
    wanted: FastPath,
) -> Result<Option<(Vec<String>, FastConfig)>, NatError> {
    let Some((_, bridge)) = t.bridge_ports.first() else {
        return Ok(None);
    };
    let mode = match wanted {
        FastPath::Off => return Ok(None),
        wanted => fast_mode(wanted),
    };
    // One gateway MAC: the ports of the first internal bridge.
    let ports = t
        .bridge_ports
        .iter()
        .filter(|(_, b)| b == bridge)
        .map(|(p, _)| p.clone())
        .collect();
    let (uplink, gw) = netlink::in_ns(&t.router_ns, |r| async move {
        Ok((r.link(&t.nat.uplink).await?, r.link(bridge).await?))
    })?;
    Ok(Some((
        ports,
        FastConfig {
            mode,
            uplink_ifindex: uplink.index,
            gateway_mac: gw.mac,
            flags: peer_flags(t),
            bridge_refresh_ns: bridge_refresh_ns(gw.bridge_ageing_cs),
            bridge_ifindex: gw.index,
            hop_gen: 0,
            uplink_mac: uplink.mac,
            _pad: [0; 2],
        },
    )))
}

/// The fast path's mode for `wanted`.
pub(crate) fn fast_mode(wanted: FastPath) -> u32 {
    match wanted {
        FastPath::Off => FAST_OFF,
        FastPath::Tc => FAST_TC,
        FastPath::Xdp => FAST_XDP,
    }
}

/// What would hold the fast path off in the router's namespace: a filter on its forward
/// hook (packets the fast path redirects would skip it). Two short commands: callers run it
/// before they take the agent's lock on the maps, so other changes need not wait.
pub fn forward_filter(router_ns: &str) -> Result<Option<String>, NatError> {
    Ok(firewall::forward_filter(router_ns)?)
}

/// Keeps the fast path off while `why` (from [`forward_filter`]) says something filters what
/// the router forwards, and in mode `wanted` otherwise. Returns whether this call changed the
/// mode. A read-modify-write of FAST_CONFIG, as `sync_ports` does: the agent, their one
/// caller on a running NAT, runs both on its one `NatMaps` under a lock, so neither writes
/// back what the other changed.
pub fn hold_fast_path(maps: &mut NatMaps, why: Option<&str>, wanted: FastPath) -> Result<bool, NatError> {
    if wanted == FastPath::Off {
        return Ok(false);
    }
    let mut fc = maps.fast_config()?;
    let mode = if why.is_some() {
        FAST_OFF
    } else {
        fast_mode(wanted)
    };
    let changed = fc.mode != mode;
    if changed {
        fc.mode = mode;
        maps.set_fast_config(fc)?;
    }
    Ok(changed)
}

/// How often the fast path lets a host's frame through a bridge that forgets a MAC after
/// `ageing_cs` centiseconds: at half that, so the bridge never forgets a host the fast path
/// carries (0: not a bridge, or one that keeps nothing anyway).
fn bridge_refresh_ns(ageing_cs: Option<u32>) -> u64 {
    ageing_cs.map_or(0, |cs| u64::from(cs) * 10_000_000 / 2)
}

/// The router's interfaces as the kernel has them now, for [`sync_ports`] (a netlink query:
/// callers run it before they take the agent's lock on the maps).
pub fn router_links(router_ns: &str) -> Result<Vec<LinkBrief>, NatError> {
    Ok(netlink::in_ns(router_ns, |r| async move { r.links().await })?)
}

/// Writes the router's interfaces `links` (bridge, up and carrier) into the fast path's port
/// table, and the bridge's MAC and ageing time into its configuration: at load, and from
/// the agent on every link change. A port the kernel brings down, moves out of the bridge or
/// deletes stops getting fast-path packets.
pub fn sync_ports(maps: &mut NatMaps, links: &[LinkBrief]) -> Result<(), NatError> {
    let ports = maps.ports();
    let stale: Vec<u32> = ports
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !links.iter().any(|l| l.index == *k))
        .collect();
    let mut changed = !stale.is_empty();
    for k in stale {
        let _ = ports.remove(&k);
    }
    for l in links {
        let state = PortState {
            master: l.master,
            flags: if l.up { PORT_UP } else { 0 }
                | if l.bridge_ageing_cs.is_some() {
                    PORT_BRIDGE
                } else {
                    0
                },
        };
        if ports.get(&l.index, 0).ok() != Some(state) {
            // A full table (more interfaces than it holds) leaves the rest to the slow path.
            let _ = ports.insert(l.index, state, 0);
            changed = true;
        }
    }
    let mut fc = maps.fast_config()?;
    if fc.mode == FAST_OFF {
        return Ok(());
    }
    if let Some(bridge) = links.iter().find(|l| l.index == fc.bridge_ifindex) {
        let refresh = bridge_refresh_ns(bridge.bridge_ageing_cs);
        if refresh != fc.bridge_refresh_ns || bridge.mac != fc.gateway_mac {
            fc.bridge_refresh_ns = refresh;
            fc.gateway_mac = bridge.mac;
            changed = true;
        }
    }
    if let Some(up) = links.iter().find(|l| l.index == fc.uplink_ifindex)
        && up.mac != fc.uplink_mac
    {
        fc.uplink_mac = up.mac;
        changed = true;
    }
    // Written after the ports: the generation it moves on makes flows drop the ports they
    // kept (see `HopCache`), and they must find the table as it is now.
    if changed {
        maps.set_fast_config(fc)?;
    }
    Ok(())
}

/// Where the TC fast path may hand packets straight to the far end of a veth
/// (bpf_redirect_peer): only into another namespace, and for the ports only if every one
/// is such a veth.
fn peer_flags(t: &NatTarget) -> u16 {
    let elsewhere = |(ns, _): &(String, String)| *ns != t.router_ns;
    let mut flags = 0;
    if t.uplink_peer.as_ref().is_some_and(elsewhere) {
        flags |= PEER_UPLINK;
    }
    if t.port_peers.len() == t.bridge_ports.len() && t.port_peers.iter().all(elsewhere) {
        flags |= PEER_PORTS;
    }
    flags
}

/// Readies the far ends of the XDP ports, in the lab's own namespaces (no program goes
/// there, so a user's XDP program can still attach): GRO on, which gives a veth the NAPI
/// instance that frames redirected into its peer need (without it they are dropped), and
/// TX checksum offload off, because XDP cannot tell a partial L4 checksum from a complete
/// one and a partial one would arrive, and be dropped, as a bad checksum.
pub(crate) fn prepare_xdp_peers(t: &NatTarget) -> Result<(), NatError> {
    for (ns, iface) in t.port_peers.iter().chain(&t.uplink_peer) {
        ethtool::set(ns, iface, Offload::Gro, true)?;
        ethtool::set(ns, iface, Offload::TxChecksum, false)?;
        // A VLAN interface on the peer then puts its tag in the frame, where XDP sees it
        // (and leaves the frame alone) instead of beside it, where XDP would not.
        ethtool::set(ns, iface, Offload::TxVlan, false)?;
    }
    Ok(())
}

/// The uplink's current address (the first IPv4 one).
pub(crate) fn uplink_address(router_ns: &str, uplink: &str) -> Result<Option<Ipv4Addr>, NatError> {
    let addrs = netlink::in_ns(router_ns, |r| async move { r.ipv4_addresses(uplink).await })?;
    Ok(addrs.first().map(|c| c.addr))
}

impl EbpfNat {
    /// Swaps this build's programs into the running NAT, keeping every pinned map (flows,
    /// mappings, forwards, counters, configuration); what it did, in words. Only the eBPF
    /// NAT has a dataplane of this build to swap, so this is not the backends' trait. What
    /// runs beside it (the agent) is the caller's to stop before and start after.
    pub fn upgrade(&self, t: &NatTarget) -> Result<String, NatError> {
        let done = bpf::upgrade_nat(&t.router_ns, t.prefix, t.nat.ebpf.log_level as u8)?;
        let swapped: Vec<String> = done
            .links
            .iter()
            .map(|(link, old, new)| format!("{link}: program {old} -> {new}"))
            .collect();
        Ok(format!(
            "{} links updated in place, maps kept\n  {}",
            done.links.len(),
            swapped.join("\n  ")
        ))
    }
}

impl NatBackend for EbpfNat {
    fn apply(&self, t: &NatTarget) -> Result<(), NatError> {
        if t.nat.internal.len() > MAX_INTERNAL {
            return Err(NatError::Unsupported(format!(
                "the eBPF NAT takes at most {MAX_INTERNAL} internal prefixes"
            )));
        }
        let ext = uplink_address(&t.router_ns, &t.nat.uplink)?
            .ok_or_else(|| NatError::Unsupported(format!("uplink {} has no IPv4 address", t.nat.uplink)))?;
        if t.nat.ebpf.fast_path == FastPath::Xdp {
            prepare_xdp_peers(t)?;
        }
        let mut fast = fast_config(t, t.nat.ebpf.fast_path)?;
        if let Some((_, fc)) = &mut fast
            && let Some(why) = firewall::forward_filter(&t.router_ns)?
        {
            // The agent turns it on once the filter is gone.
            fc.mode = FAST_OFF;
            eprintln!("note: the fast path is held off: {why} (redirected packets would skip it)");
        }
        let load = NatLoad {
            config: nat_config(t.nat, ext),
            forwards: static_bindings(t.nat),
            flows: t.nat.ebpf.flows,
            bindings: t.nat.ebpf.bindings,
            fast,
            log_level: t.nat.ebpf.log_level as u8,
        };
        bpf::attach_nat(&t.router_ns, &t.nat.uplink, &t.internal_ifaces, t.prefix, &load)?;
        sync_ports(&mut NatMaps::open(t.prefix)?, &router_links(&t.router_ns)?)
    }

    fn live_entries(&self, t: &NatTarget) -> Result<usize, NatError> {
        let now = monotonic_ns();
        let flows = NatMaps::open(t.prefix)?.flows()?;
        Ok(flows.iter().filter(|(_, f)| f.expires_ns > now).count())
    }

    fn describe(&self, t: &NatTarget) -> Result<String, NatError> {
        let maps = NatMaps::open(t.prefix)?;
        let cfg = maps.config()?;
        let now = monotonic_ns();
        let (flows, bindings) = maps.tables()?;
        let memory = table_memory(&t.nat.ebpf, flows.len() as u64, bindings.len() as u64);
        let flows = flows.iter().filter(|(_, f)| f.expires_ns > now).count();
        let mappings = bindings
            .iter()
            .filter(|(k, b)| k.side == SIDE_EXTERNAL && !b.expired(now))
            .count();
        // What the kernel has attached, not what the lab meant to attach.
        let attached: Vec<String> = bpf::attached_programs(&t.router_ns)
            .map_err(NatError::Ebpf)?
            .into_iter()
            .map(|p| p.label)
            .collect();
        Ok(format!(
            "eBPF NAT: nat_egress + nat_ingress (TCX) on {}, nat_hairpin on {}\n\
             fast path: {}\n\
             external address {}, {} live flows, {} mappings, filtering {}\n\
             {}\n\
             maps and links pinned in {}\n\
             attached: {}\n",
            t.nat.uplink,
            t.internal_ifaces.join(", "),
            match t.nat.ebpf.fast_path {
                FastPath::Xdp => format!(
                    "xdp (xdp_fast_out on {}, xdp_fast_in on {}; the rest at TC)",
                    t.bridge_ports
                        .iter()
                        .map(|(p, _)| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    t.nat.uplink
                ),
                FastPath::Tc => format!(
                    "tc (nat_fast_out on {}; nat_ingress redirects established flows)",
                    t.bridge_ports
                        .iter()
                        .map(|(p, _)| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                FastPath::Off => "off".to_owned(),
            },
            addr_from_wire(cfg.ext_addr),
            flows,
            mappings,
            if cfg.flags & FLAG_ENDPOINT_INDEPENDENT_FILTERING != 0 {
                "endpoint-independent"
            } else {
                "address-and-port-dependent"
            },
            memory,
            bpf::pin_dir(t.prefix).display(),
            attached.join(", ")
        ))
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * NS + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// What the NAT's tables take in the kernel's memory, now (`flows` and `binding_entries`
/// stored, expired ones included until swept) and when full, as `status` shows it.
pub fn table_memory(spec: &EbpfNatSpec, flows: u64, binding_entries: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let now = memory::table_bytes(memory::FLOW_BYTES, flows, spec.flows)
        + memory::table_bytes(memory::BINDING_BYTES, binding_entries, spec.bindings);
    let full = memory::table_bytes(memory::FLOW_BYTES, u64::from(spec.flows), spec.flows)
        + memory::table_bytes(memory::BINDING_BYTES, u64::from(spec.bindings), spec.bindings);
    format!(
        "tables: {:.1} MiB now, {:.1} MiB when full ({} flows, {} binding entries); a connection \
         with a mapping of its own takes {} B (its flow {} B, each side of the mapping {} B, \
         with their buckets)",
        now as f64 / MIB,
        full as f64 / MIB,
        spec.flows,
        spec.bindings,
        memory::connection_bytes(spec.flows, spec.bindings),
        memory::FLOW_BYTES,
        memory::BINDING_BYTES,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LabConfig;
    use netns_common::nat::PROTO_TCP;

    #[test]
    fn status_shows_the_tables_in_mib_now_and_when_full() {
        let spec = EbpfNatSpec {
            flows: 1 << 16,
            bindings: 1 << 17,
            ..EbpfNatSpec::default()
        };
        let full = (1u64 << 16) * (memory::FLOW_BYTES + 16) + (1u64 << 17) * (memory::BINDING_BYTES + 16);
        let empty = (1u64 << 16) * 16 + (1u64 << 17) * 16;
        let line = table_memory(&spec, 0, 0);
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
        assert!(line.contains(&format!("{} now", mib(empty))), "{line}");
        assert!(line.contains(&format!("{} when full", mib(full))), "{line}");
        let some = table_memory(&spec, 1000, 0);
        assert!(
            some.contains(&format!("{} now", mib(empty + 1000 * memory::FLOW_BYTES))),
            "{some}"
        );
        assert!(line.contains(&format!("takes {} B", memory::connection_bytes(1 << 16, 1 << 17))));
    }

    #[test]
    fn config_of_the_reference_lab() {
        let lab = LabConfig::reference();
        let nat = lab.nat.as_ref().unwrap();
        let cfg = nat_config(nat, Ipv4Addr::new(192, 168, 1, 2));
        assert_eq!(addr_from_wire(cfg.ext_addr), Ipv4Addr::new(192, 168, 1, 2));
        assert_eq!(cfg.n_internal, 1);
        assert!(cfg.is_internal(addr_to_wire(Ipv4Addr::new(192, 168, 15, 77))));
        assert!(!cfg.is_internal(addr_to_wire(Ipv4Addr::new(192, 168, 1, 3))));
        assert_eq!(cfg.ports, PortRange::new(1024, 65535));
        assert_eq!(cfg.timeouts.udp_ns, 300 * NS);
        assert_eq!(cfg.flags, 0);
        let fwd = static_bindings(nat);
        assert_eq!(
            fwd,
            [StaticBinding {
                proto: PROTO_TCP,
                ext_port: port_to_wire(80),
                int_addr: addr_to_wire(Ipv4Addr::new(192, 168, 15, 2)),
                int_port: port_to_wire(80),
            }]
        );
    }
}
