//! The eBPF NAT backend: loads the TC programs and BPF conntrack maps into the router,
//! keeps them company with a sweeper process, and reads them back for `conntrack` and
//! `stats`. No iptables, nftables or kernel conntrack is involved.
//!
//! Expiry: every entry carries its expiry time and the programs ignore expired entries, so
//! correctness never waits for cleanup. Reclaiming the memory and ports is done twice over:
//! the programs take over an expired binding's port when they need it, and a per-lab
//! sweeper process (`netns-nat sweep`) deletes expired flows and bindings (a binding's two
//! entries together) every `sweep_interval_ms`. A sweeper rather than bpf_timer, because
//! aya-ebpf 0.2's maps carry no BTF for their values, which bpf_timer requires; the sweeper
//! also watches the uplink's address, which a program cannot read.

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, MapData};
use netns_common::{
    filter::{self, EntryFilter},
    fwd::{FAST_TC, FAST_XDP, FastConfig, PEER_PORTS, PEER_UPLINK},
    names::{MAP_NAT_BINDINGS, MAP_NAT_CONFIG, MAP_NAT_FLOWS},
    nat::{
        Binding, BindingKey, FLAG_DROP_UNSUPPORTED, FLAG_ENDPOINT_INDEPENDENT_FILTERING, Flow, FlowKey,
        MAX_INTERNAL, NatConfig, ORIGIN_INBOUND, PROTO_ICMP, PROTO_TCP, PROTO_UDP, PortRange, Prefix,
        SIDE_EXTERNAL, TcpState, Timeouts, addr_from_wire, addr_to_wire, port_from_wire, port_to_wire,
    },
};
use serde::Serialize;

use super::{NatBackend, NatError, NatTarget};
use crate::{
    config::{FastPath, Filtering, ForwardSpec, L4Proto, NatSpec, Unsupported},
    ebpf::{self, EbpfError, NatLoad, StaticBinding, UplinkCounters},
    ethtool::{self, Offload},
    lab, netlink,
};

pub struct EbpfNat;

const NS: u64 = 1_000_000_000;
/// How long past its expiry an entry is kept, so that the sweeper never races a packet
/// that is refreshing it.
const GRACE_NS: u64 = NS;

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
        },
        ..NatConfig::default()
    };
    if e.filtering == Filtering::EndpointIndependent {
        cfg.flags |= FLAG_ENDPOINT_INDEPENDENT_FILTERING;
    }
    if e.unsupported == Unsupported::Drop {
        cfg.flags |= FLAG_DROP_UNSUPPORTED;
    }
    for (slot, net) in cfg.internal.iter_mut().zip(&nat.internal) {
        *slot = Prefix {
            addr: addr_to_wire(net.0.network().addr),
            mask: net.0.mask().to_be(),
        };
    }
    cfg
}

/// The port forwards as static bindings.
pub fn static_bindings(nat: &NatSpec) -> Vec<StaticBinding> {
    nat.forwards
        .iter()
        .map(|f| StaticBinding {
            proto: match f.protocol {
                L4Proto::Tcp => PROTO_TCP,
                L4Proto::Udp => PROTO_UDP,
            },
            ext_port: port_to_wire(f.port),
            int_addr: addr_to_wire(*f.to.ip()),
            int_port: port_to_wire(f.to.port()),
        })
        .collect()
}

/// The fast path's ports and configuration, if it is on: the uplink's ifindex and the MAC of
/// the (first) internal bridge, the router's address on the internal side.
fn fast_config(t: &NatTarget) -> Result<Option<(Vec<String>, FastConfig)>, NatError> {
    let Some((_, bridge)) = t.bridge_ports.first() else {
        return Ok(None);
    };
    let mode = match t.nat.ebpf.fast_path {
        FastPath::Off => return Ok(None),
        FastPath::Tc => FAST_TC,
        FastPath::Xdp => FAST_XDP,
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
        },
    )))
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
fn prepare_xdp_peers(t: &NatTarget) -> Result<(), NatError> {
    for (ns, iface) in t.port_peers.iter().chain(&t.uplink_peer) {
        ethtool::set(ns, iface, Offload::Gro, true)?;
        ethtool::set(ns, iface, Offload::TxChecksum, false)?;
    }
    Ok(())
}

/// The uplink's current address (the first IPv4 one).
fn uplink_address(router_ns: &str, uplink: &str) -> Result<Option<Ipv4Addr>, NatError> {
    let addrs = netlink::in_ns(router_ns, |r| async move { r.ipv4_addresses(uplink).await })?;
    Ok(addrs.first().map(|c| c.addr))
}

impl NatBackend for EbpfNat {
    fn apply(&self, t: &NatTarget) -> Result<(), NatError> {
        if t.nat.internal.len() > MAX_INTERNAL {
            return Err(NatError::Sweeper {
                prefix: t.prefix.to_owned(),
                detail: format!("the eBPF NAT takes at most {MAX_INTERNAL} internal prefixes"),
            });
        }
        let ext = uplink_address(&t.router_ns, &t.nat.uplink)?.ok_or_else(|| NatError::Sweeper {
            prefix: t.prefix.to_owned(),
            detail: format!("uplink {} has no IPv4 address", t.nat.uplink),
        })?;
        if t.nat.ebpf.fast_path == FastPath::Xdp {
            prepare_xdp_peers(t)?;
        }
        let load = NatLoad {
            config: nat_config(t.nat, ext),
            forwards: static_bindings(t.nat),
            flows: t.nat.ebpf.flows,
            bindings: t.nat.ebpf.bindings,
            fast: fast_config(t)?,
        };
        ebpf::attach_nat(&t.router_ns, &t.nat.uplink, &t.internal_ifaces, t.prefix, &load)?;
        spawn_sweeper(t.prefix)
    }

    fn describe(&self, t: &NatTarget) -> Result<String, NatError> {
        let cfg = read_config(t.prefix)?;
        let (flows, mappings) = (live_flows(t.prefix)?.len(), mappings(t.prefix)?.len());
        // What the kernel has attached, not what the lab meant to attach.
        let attached: Vec<String> = ebpf::attached_programs(&t.router_ns)
            .map_err(NatError::Ebpf)?
            .into_iter()
            .map(|p| p.label)
            .collect();
        Ok(format!(
            "eBPF NAT: nat_egress + nat_ingress (TCX) on {}, nat_hairpin on {}\n\
             fast path: {}\n\
             external address {}, {} live flows, {} mappings, filtering {}\n\
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
            ebpf::pin_dir(t.prefix).display(),
            attached.join(", ")
        ))
    }
}

fn map_err(prefix: &str, name: &str) -> impl Fn(aya::maps::MapError) -> NatError {
    let path = ebpf::pin_dir(prefix).join(name);
    move |source| {
        NatError::Ebpf(EbpfError::Map {
            path: path.clone(),
            source,
        })
    }
}

fn config_map(prefix: &str) -> Result<Array<MapData, NatConfig>, NatError> {
    Array::try_from(ebpf::pinned_map(prefix, MAP_NAT_CONFIG)?).map_err(map_err(prefix, MAP_NAT_CONFIG))
}

/// The configuration the programs run with now.
pub fn running_config(prefix: &str) -> Result<NatConfig, NatError> {
    read_config(prefix)
}

fn read_config(prefix: &str) -> Result<NatConfig, NatError> {
    config_map(prefix)?
        .get(&0, 0)
        .map_err(map_err(prefix, MAP_NAT_CONFIG))
}

fn flows_map(prefix: &str) -> Result<HashMap<MapData, FlowKey, Flow>, NatError> {
    HashMap::try_from(ebpf::pinned_map(prefix, MAP_NAT_FLOWS)?).map_err(map_err(prefix, MAP_NAT_FLOWS))
}

fn bindings_map(prefix: &str) -> Result<HashMap<MapData, BindingKey, Binding>, NatError> {
    HashMap::try_from(ebpf::pinned_map(prefix, MAP_NAT_BINDINGS)?).map_err(map_err(prefix, MAP_NAT_BINDINGS))
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * NS + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn proto_name(p: u8) -> &'static str {
    match p {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_ICMP => "icmp",
        _ => "other",
    }
}

fn endpoint(addr: u32, port: u16) -> String {
    format!("{}:{}", addr_from_wire(addr), port_from_wire(port))
}

/// One flow of `conntrack --json` (field names documented in the README).
#[derive(Debug, Clone, Serialize)]
pub struct FlowEntry {
    pub protocol: &'static str,
    /// Internal endpoint, `address:port` (for ICMP echo the port is the identifier).
    pub internal: String,
    /// What the internal endpoint is translated to.
    pub external: String,
    /// The other end (port 0 for ICMP echo).
    pub remote: String,
    /// TCP state (`syn_out`, `established`, `fin_in`, ...), `-` otherwise.
    pub state: &'static str,
    /// `outbound` (opened from inside) or `inbound` (through a forward or open filtering).
    pub origin: &'static str,
    pub age_s: f64,
    pub expires_in_s: f64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
}

/// One mapping (binding) of `conntrack --json`.
#[derive(Debug, Clone, Serialize)]
pub struct MappingEntry {
    pub protocol: &'static str,
    pub internal: String,
    pub external: String,
    /// A port forward: never expires.
    #[serde(rename = "static")]
    pub is_static: bool,
    /// Seconds until the port may be reused (null for a static mapping).
    pub expires_in_s: Option<f64>,
}

/// The flows that are live now.
pub fn live_flows(prefix: &str) -> Result<Vec<FlowEntry>, NatError> {
    live_flows_where(prefix, &EntryFilter::default())
}

/// The live flows `filter` selects, sorted.
pub fn live_flows_where(prefix: &str, filter: &EntryFilter) -> Result<Vec<FlowEntry>, NatError> {
    let map = flows_map(prefix)?;
    let now = monotonic_ns();
    let mut out = Vec::new();
    for item in map.iter() {
        let (k, f) = item.map_err(map_err(prefix, MAP_NAT_FLOWS))?;
        if f.expires_ns > now && filter.flow(&k, &f) {
            out.push(flow_entry(&k, &f, now));
        }
    }
    out.sort_by(|a, b| (a.protocol, &a.internal, &a.remote).cmp(&(b.protocol, &b.internal, &b.remote)));
    Ok(out)
}

fn flow_entry(k: &FlowKey, f: &Flow, now: u64) -> FlowEntry {
    FlowEntry {
        protocol: proto_name(k.proto),
        internal: endpoint(k.int_addr, k.int_port),
        external: endpoint(f.ext_addr, f.ext_port),
        remote: endpoint(k.rem_addr, k.rem_port),
        state: if k.proto == PROTO_TCP {
            TcpState::from_u8(f.state).name()
        } else {
            "-"
        },
        origin: if f.origin == ORIGIN_INBOUND {
            "inbound"
        } else {
            "outbound"
        },
        age_s: now.saturating_sub(f.created_ns) as f64 / NS as f64,
        expires_in_s: f.expires_ns.saturating_sub(now) as f64 / NS as f64,
        packets_out: f.packets_out,
        bytes_out: f.bytes_out,
        packets_in: f.packets_in,
        bytes_in: f.bytes_in,
    }
}

/// The mappings that hold a port now (one per binding, from its external entry).
pub fn mappings(prefix: &str) -> Result<Vec<MappingEntry>, NatError> {
    mappings_where(prefix, &EntryFilter::default())
}

/// The live mappings `filter` selects, sorted.
pub fn mappings_where(prefix: &str, filter: &EntryFilter) -> Result<Vec<MappingEntry>, NatError> {
    let map = bindings_map(prefix)?;
    let now = monotonic_ns();
    let mut out = Vec::new();
    for item in map.iter() {
        let (k, b) = item.map_err(map_err(prefix, MAP_NAT_BINDINGS))?;
        if !b.expired(now) && filter.mapping(&k, &b) {
            out.push(mapping_entry(&k, &b, now));
        }
    }
    out.sort_by(|a, b| (a.protocol, &a.external).cmp(&(b.protocol, &b.external)));
    Ok(out)
}

fn mapping_entry(k: &BindingKey, b: &Binding, now: u64) -> MappingEntry {
    MappingEntry {
        protocol: proto_name(k.proto),
        internal: endpoint(b.int_addr, b.int_port),
        external: endpoint(b.ext_addr, b.ext_port),
        is_static: b.is_static(),
        expires_in_s: (!b.is_static()).then(|| b.free_at_ns().saturating_sub(now) as f64 / NS as f64),
    }
}

/// `status --json`'s `ebpf` object: the eBPF NAT as it runs.
#[derive(Debug, Clone, Serialize)]
pub struct EbpfStatus {
    pub external_address: String,
    pub fast_path: &'static str,
    pub filtering: &'static str,
    /// Idle timeouts in seconds, as the programs have them.
    pub timeouts: BTreeMap<&'static str, u64>,
    /// Port forwards in the maps: `proto port -> address:port`.
    pub forwards: Vec<String>,
    /// Entries and capacity of each table.
    pub tables: BTreeMap<&'static str, TableUse>,
    /// Programs attached in the router, `name@interface:hook`.
    pub attached: Vec<String>,
    /// The sweeper's PID, null when it does not run.
    pub sweeper_pid: Option<i32>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct TableUse {
    pub entries: usize,
    pub live: usize,
    pub capacity: u32,
}

/// The eBPF NAT of `t` as it runs.
pub fn status(t: &NatTarget) -> Result<EbpfStatus, NatError> {
    let cfg = read_config(t.prefix)?;
    let (flows, bindings) = raw_tables(t.prefix)?;
    let now = monotonic_ns();
    let s = |ns: u64| ns / NS;
    let live_maps = mappings(t.prefix)?;
    Ok(EbpfStatus {
        external_address: addr_from_wire(cfg.ext_addr).to_string(),
        fast_path: t.nat.ebpf.fast_path.name(),
        filtering: if cfg.flags & FLAG_ENDPOINT_INDEPENDENT_FILTERING != 0 {
            "endpoint-independent"
        } else {
            "address-and-port-dependent"
        },
        timeouts: [
            ("udp", s(cfg.timeouts.udp_ns)),
            ("tcp_established", s(cfg.timeouts.tcp_established_ns)),
            ("tcp_transitory", s(cfg.timeouts.tcp_transitory_ns)),
            ("icmp", s(cfg.timeouts.icmp_ns)),
        ]
        .into_iter()
        .collect(),
        forwards: live_maps
            .iter()
            .filter(|m| m.is_static)
            .map(|m| format!("{} {} -> {}", m.protocol, m.external, m.internal))
            .collect(),
        tables: [
            (
                "flows",
                TableUse {
                    entries: flows.len(),
                    live: flows.iter().filter(|(_, f)| f.expires_ns > now).count(),
                    capacity: t.nat.ebpf.flows,
                },
            ),
            (
                "bindings",
                TableUse {
                    entries: bindings.len(),
                    // A mapping's two entries live as long as its external one.
                    live: 2 * bindings
                        .iter()
                        .filter(|(k, b)| k.side == SIDE_EXTERNAL && !b.expired(now))
                        .count(),
                    capacity: t.nat.ebpf.bindings,
                },
            ),
        ]
        .into_iter()
        .collect(),
        attached: ebpf::attached_programs(&t.router_ns)
            .map_err(NatError::Ebpf)?
            .into_iter()
            .map(|p| p.label)
            .collect(),
        sweeper_pid: sweeper_pid(t.prefix),
    })
}

/// What `conntrack --delete` or `--flush` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Deleted {
    pub flows: usize,
    pub mappings: usize,
    /// Port forwards the filter selected: they stay (they are the lab's configuration).
    pub forwards_kept: usize,
}

/// Deletes the flows `filter` selects (live or expired) and, unless it names a TCP state or
/// an origin, the dynamic mappings it selects: a mapping with both of its entries and every
/// flow that uses it, so that no flow is left translated to a port another endpoint may
/// take. The next packet of a deleted flow starts a new one.
pub fn delete(prefix: &str, filter: &EntryFilter) -> Result<Deleted, NatError> {
    let mut flows = flows_map(prefix)?;
    let mut bindings = bindings_map(prefix)?;
    let all_flows: Vec<(FlowKey, Flow)> = flows.iter().filter_map(|r| r.ok()).collect();
    let mut gone = Deleted::default();
    for (k, f) in &all_flows {
        if filter.flow(k, f) && flows.remove(k).is_ok() {
            gone.flows += 1;
        }
    }
    if filter.flows_only() {
        return Ok(gone);
    }
    let all_bindings: Vec<(BindingKey, Binding)> = bindings.iter().filter_map(|r| r.ok()).collect();
    for (k, b) in &all_bindings {
        if !filter.mapping(k, b) {
            continue;
        }
        if b.is_static() {
            gone.forwards_kept += 1;
            continue;
        }
        for (fk, ff) in &all_flows {
            if filter::uses(fk, ff, k.proto, b) && flows.remove(fk).is_ok() {
                gone.flows += 1;
            }
        }
        let ikey = BindingKey::internal(k.proto, b.int_addr, b.int_port);
        if bindings
            .get(&ikey, 0)
            .is_ok_and(|i| i.ext_addr == b.ext_addr && i.ext_port == b.ext_port)
        {
            let _ = bindings.remove(&ikey);
        }
        if bindings.remove(k).is_ok() {
            gone.mappings += 1;
        }
    }
    Ok(gone)
}

/// Why a port forward cannot be added or removed live.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{proto} port {port} is already forwarded (to {to})")]
    Exists { proto: L4Proto, port: u16, to: String },
    #[error(
        "{proto} port {port} is held by the mapping of {internal}; it is free again when that \
         expires, or now with `netns-nat conntrack --delete --proto {proto} --port {port}`"
    )]
    PortInUse {
        proto: L4Proto,
        port: u16,
        internal: String,
    },
    #[error(
        "{internal} already has a mapping ({external}); a forward to it would give it two: \
         `netns-nat conntrack --delete --proto {proto} --addr {addr} --port {int_port}` first"
    )]
    TargetMapped {
        proto: L4Proto,
        internal: String,
        external: String,
        addr: Ipv4Addr,
        int_port: u16,
    },
    #[error("no {proto} port {port} is forwarded")]
    NoSuchForward { proto: L4Proto, port: u16 },
    #[error(transparent)]
    Nat(#[from] Box<NatError>),
}

fn nat_err(e: impl Into<NatError>) -> ForwardError {
    ForwardError::Nat(Box::new(e.into()))
}

fn l4(proto: L4Proto) -> u8 {
    match proto {
        L4Proto::Tcp => PROTO_TCP,
        L4Proto::Udp => PROTO_UDP,
    }
}

/// Adds port forward `f` to the running NAT: both static entries, exclusively, so that a
/// port some mapping holds, or a target that has a mapping of its own, is refused rather
/// than taken; nothing else changes, so every flow goes on as it was.
pub fn add_forward(prefix: &str, f: &ForwardSpec) -> Result<(), ForwardError> {
    let ext = read_config(prefix).map_err(nat_err)?.ext_addr;
    let sb = StaticBinding {
        proto: l4(f.protocol),
        ext_port: port_to_wire(f.port),
        int_addr: addr_to_wire(*f.to.ip()),
        int_port: port_to_wire(f.to.port()),
    };
    let [(ekey, eb), (ikey, ib)] = sb.entries(ext);
    let mut bindings = bindings_map(prefix).map_err(nat_err)?;
    let now = monotonic_ns();
    if let Ok(old) = bindings.get(&ekey, 0) {
        if old.is_static() {
            return Err(ForwardError::Exists {
                proto: f.protocol,
                port: f.port,
                to: endpoint(old.int_addr, old.int_port),
            });
        }
        if !old.expired(now) {
            return Err(ForwardError::PortInUse {
                proto: f.protocol,
                port: f.port,
                internal: endpoint(old.int_addr, old.int_port),
            });
        }
    }
    // The internal entry is a copy made when the mapping was; whether the mapping lives
    // is its external entry's to say (the one flows keep up to date).
    if let Ok(old) = bindings.get(&ikey, 0)
        && bindings
            .get(&BindingKey::external(ikey.proto, old.ext_addr, old.ext_port), 0)
            .is_ok_and(|e| e.int_addr == old.int_addr && e.int_port == old.int_port && !e.expired(now))
    {
        return Err(ForwardError::TargetMapped {
            proto: f.protocol,
            internal: endpoint(old.int_addr, old.int_port),
            external: endpoint(old.ext_addr, old.ext_port),
            addr: *f.to.ip(),
            int_port: f.to.port(),
        });
    }
    // An expired mapping on the port or of the target is reclaimed, as the programs would.
    for key in [ekey, ikey] {
        if bindings.get(&key, 0).is_ok_and(|b| !b.is_static()) {
            let _ = bindings.remove(&key);
        }
    }
    const BPF_NOEXIST: u64 = 1;
    bindings
        .insert(ekey, eb, BPF_NOEXIST)
        .map_err(map_err(prefix, MAP_NAT_BINDINGS))
        .map_err(nat_err)?;
    if let Err(e) = bindings.insert(ikey, ib, BPF_NOEXIST) {
        let _ = bindings.remove(&ekey);
        return Err(nat_err(map_err(prefix, MAP_NAT_BINDINGS)(e)));
    }
    Ok(())
}

/// Removes the forward of `proto` port `port` from the running NAT: both entries and the
/// flows that came in through it (their next packet finds nothing, as for a port nobody
/// holds). Other flows are not touched. Returns where it went.
pub fn del_forward(prefix: &str, proto: L4Proto, port: u16) -> Result<String, ForwardError> {
    let ext = read_config(prefix).map_err(nat_err)?.ext_addr;
    let p = l4(proto);
    let ekey = BindingKey::external(p, ext, port_to_wire(port));
    let mut bindings = bindings_map(prefix).map_err(nat_err)?;
    let b = match bindings.get(&ekey, 0) {
        Ok(b) if b.is_static() => b,
        _ => return Err(ForwardError::NoSuchForward { proto, port }),
    };
    let mut flows = flows_map(prefix).map_err(nat_err)?;
    let all: Vec<(FlowKey, Flow)> = flows.iter().filter_map(|r| r.ok()).collect();
    for (k, f) in &all {
        if filter::uses(k, f, p, &b) {
            let _ = flows.remove(k);
        }
    }
    let ikey = BindingKey::internal(p, b.int_addr, b.int_port);
    if bindings
        .get(&ikey, 0)
        .is_ok_and(|i| i.is_static() && i.ext_port == b.ext_port)
    {
        let _ = bindings.remove(&ikey);
    }
    let _ = bindings.remove(&ekey);
    Ok(endpoint(b.int_addr, b.int_port))
}

/// A change `conntrack --watch` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ConntrackEvent {
    /// `new` or `destroy` (deleted, expired or replaced).
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapping: Option<MappingEntry>,
}

/// A flow's identity: protocol, internal address and port, remote address and port.
type FlowId = (u8, u32, u16, u32, u16);

/// What the tables hold, by entry, for finding what changed.
#[derive(Default)]
struct Seen {
    /// Flows by key, with their creation time (a flow replaced under the same key is new).
    flows: BTreeMap<FlowId, (u64, FlowEntry)>,
    mappings: BTreeMap<(u8, u32, u16), MappingEntry>,
}

fn seen_now(prefix: &str, filter: &EntryFilter) -> Result<Seen, NatError> {
    let now = monotonic_ns();
    let mut seen = Seen::default();
    for (k, f) in flows_map(prefix)?.iter().filter_map(|r| r.ok()) {
        if f.expires_ns > now && filter.flow(&k, &f) {
            let id = (k.proto, k.int_addr, k.int_port, k.rem_addr, k.rem_port);
            seen.flows.insert(id, (f.created_ns, flow_entry(&k, &f, now)));
        }
    }
    for (k, b) in bindings_map(prefix)?.iter().filter_map(|r| r.ok()) {
        if !b.expired(now) && filter.mapping(&k, &b) {
            seen.mappings
                .insert((k.proto, k.addr, k.port), mapping_entry(&k, &b, now));
        }
    }
    Ok(seen)
}

/// Reports flows and mappings (those `filter` selects) as they appear and go, every
/// `every`, until `go_on` says stop. Reads the tables, so a flow that lives less than
/// `every` may go unseen.
pub fn watch(
    prefix: &str,
    filter: &EntryFilter,
    every: Duration,
    mut go_on: impl FnMut() -> bool,
    mut emit: impl FnMut(ConntrackEvent),
) -> Result<(), NatError> {
    let mut before = seen_now(prefix, filter)?;
    while go_on() {
        std::thread::sleep(every);
        let now = seen_now(prefix, filter)?;
        for (id, (created, f)) in &before.flows {
            if now.flows.get(id).is_none_or(|(c, _)| c != created) {
                emit(ConntrackEvent {
                    event: "destroy",
                    flow: Some(f.clone()),
                    mapping: None,
                });
            }
        }
        for (id, m) in &before.mappings {
            if !now.mappings.contains_key(id) {
                emit(ConntrackEvent {
                    event: "destroy",
                    flow: None,
                    mapping: Some(m.clone()),
                });
            }
        }
        for (id, m) in &now.mappings {
            if !before.mappings.contains_key(id) {
                emit(ConntrackEvent {
                    event: "new",
                    flow: None,
                    mapping: Some(m.clone()),
                });
            }
        }
        for (id, (created, f)) in &now.flows {
            if before.flows.get(id).is_none_or(|(c, _)| c != created) {
                emit(ConntrackEvent {
                    event: "new",
                    flow: Some(f.clone()),
                    mapping: None,
                });
            }
        }
        before = now;
    }
    Ok(())
}

/// `stats --json` of an eBPF lab.
#[derive(Debug, Clone, Serialize)]
pub struct NatStats {
    /// Every counter by name (see README), summed over CPUs.
    pub counters: BTreeMap<&'static str, u64>,
    /// Live flows and mappings now.
    pub flows: usize,
    pub mappings: usize,
    pub uplink: UplinkCounters,
}

pub fn stats(prefix: &str) -> Result<NatStats, NatError> {
    Ok(NatStats {
        counters: ebpf::read_nat_counters(prefix)?.into_iter().collect(),
        flows: live_flows(prefix)?.len(),
        mappings: mappings(prefix)?.len(),
        uplink: ebpf::read_uplink_counters(prefix)?,
    })
}

/// Every entry of the flow and binding tables as stored, expired ones included: for
/// checking invariants (a binding's two entries, a flow's binding) from outside.
pub type RawTables = (Vec<(FlowKey, Flow)>, Vec<(BindingKey, Binding)>);

pub fn raw_tables(prefix: &str) -> Result<RawTables, NatError> {
    let flows = flows_map(prefix)?.iter().filter_map(|r| r.ok()).collect();
    let bindings = bindings_map(prefix)?.iter().filter_map(|r| r.ok()).collect();
    Ok((flows, bindings))
}

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
            let ikey = BindingKey::internal(k.proto, b.int_addr, b.int_port);
            if bindings
                .get(&ikey, 0)
                .is_ok_and(|i| i.ext_addr == b.ext_addr && i.ext_port == b.ext_port)
            {
                let _ = bindings.remove(&ikey);
            }
            if bindings.remove(k).is_ok() {
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
fn follow_uplink_address(prefix: &str, nat: &NatSpec, router_ns: &str) -> Result<Option<Ipv4Addr>, NatError> {
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
    ebpf::install_forwards(&mut bindings, new, &forwards).map_err(map_err(prefix, MAP_NAT_BINDINGS))?;
    cfg.ext_addr = new;
    cfg_map.set(0, cfg, 0).map_err(map_err(prefix, MAP_NAT_CONFIG))?;
    Ok(Some(now_addr))
}

/// The sweeper spends at most one part in this many of a CPU on sweeping.
const SWEEP_DUTY: u32 = 20;

/// The sweeper's loop; returns when the lab's pinned maps are gone.
pub fn sweep_forever(prefix: &str) -> Result<(), NatError> {
    let lab = lab::Lab::open(prefix).map_err(|e| NatError::Sweeper {
        prefix: prefix.to_owned(),
        detail: e.to_string(),
    })?;
    let nat = lab.config.nat.clone().ok_or_else(|| NatError::Sweeper {
        prefix: prefix.to_owned(),
        detail: "the lab has no [nat] section".into(),
    })?;
    let router_ns = lab.ns(&nat.router);
    let interval = Duration::from_millis(nat.ebpf.sweep_interval_ms);
    eprintln!("sweeper for lab {prefix}: every {interval:?}");
    let mut next_sweep = Instant::now();
    while ebpf::pin_dir(prefix).join(MAP_NAT_CONFIG).exists() {
        match follow_uplink_address(prefix, &nat, &router_ns) {
            Ok(Some(addr)) => eprintln!("uplink address is now {addr}: new flows use it"),
            Ok(None) => {}
            // The lab may be going away under us; the loop condition decides.
            Err(e) => eprintln!("uplink address check: {e}"),
        }
        if Instant::now() >= next_sweep {
            let started = Instant::now();
            match sweep_once(prefix, monotonic_ns()) {
                Ok(s) if s != Swept::default() => {
                    eprintln!("swept {} flows, {} mappings", s.flows, s.bindings)
                }
                Ok(_) => {}
                Err(e) => eprintln!("sweep: {e}"),
            }
            // A sweep reads every entry (two system calls each): with large tables, back off
            // so that sweeping takes at most 1/SWEEP_DUTY of a CPU. Expired entries are
            // already inert, so a later sweep costs memory, never correctness.
            next_sweep = Instant::now() + interval.max(started.elapsed() * SWEEP_DUTY);
        }
        std::thread::sleep(interval);
    }
    eprintln!("lab {prefix} is gone: sweeper exits");
    Ok(())
}

fn sweeper_pid_file(prefix: &str) -> PathBuf {
    lab::state_dir(prefix).join("sweeper.pid")
}

/// The `netns-nat` executable that runs the sweeper: this one, or (for the library used
/// from elsewhere, e.g. tests) `$NETNS_NAT_BIN` or one found beside the running program.
fn netns_nat_binary() -> Result<PathBuf, NatError> {
    if let Some(p) = std::env::var_os("NETNS_NAT_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().map_err(|e| NatError::Sweeper {
        prefix: String::new(),
        detail: e.to_string(),
    })?;
    if exe.file_name().is_some_and(|n| n == "netns-nat") {
        return Ok(exe);
    }
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    [dir.join("netns-nat"), dir.join("../netns-nat")]
        .into_iter()
        .find(|p| p.exists())
        .ok_or_else(|| NatError::Sweeper {
            prefix: String::new(),
            detail: "cannot find the netns-nat binary to run the sweeper (set NETNS_NAT_BIN)".into(),
        })
}

fn spawn_sweeper(prefix: &str) -> Result<(), NatError> {
    use std::os::unix::process::CommandExt as _;
    let fail = |detail: String| NatError::Sweeper {
        prefix: prefix.to_owned(),
        detail,
    };
    let log_path = lab::state_dir(prefix).join("sweeper.log");
    let log = fs::File::create(&log_path).map_err(|e| fail(format!("{}: {e}", log_path.display())))?;
    let log2 = log.try_clone().map_err(|e| fail(e.to_string()))?;
    let child = Command::new(netns_nat_binary()?)
        .args(["sweep", "--prefix", prefix])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: Ctrl-C in the terminal that ran `up` does not reach it.
        .process_group(0)
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    fs::write(sweeper_pid_file(prefix), child.id().to_string()).map_err(|e| fail(e.to_string()))
}

/// The PID of lab `prefix`'s sweeper, if one runs (a process that is that sweeper).
pub fn sweeper_pid(prefix: &str) -> Option<i32> {
    let pid = fs::read_to_string(sweeper_pid_file(prefix))
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    (args.contains(&b"sweep".as_slice()) && args.contains(&prefix.as_bytes())).then_some(pid)
}

/// Stops lab `prefix`'s sweeper, if it runs (only a process that is that sweeper).
pub fn stop_sweeper(prefix: &str) {
    let Some(pid) = sweeper_pid(prefix) else {
        return;
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    // Reap it if it is our child (it is when the lab was made by this process).
    for _ in 0..100 {
        match nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(10)),
            Ok(_) => return,
            // Not our child: wait for it to go away.
            Err(_) if fs::metadata(format!("/proc/{pid}")).is_ok() => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LabConfig;

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
