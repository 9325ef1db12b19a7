//! The eBPF NAT's conntrack tables read and changed from user space, as conntrack(8) does:
//! live flows and mappings (filtered), counts, deletion (a mapping with both of its entries
//! and its flows), a watch of what appears and goes, and the counters of `stats`.

use std::{collections::BTreeMap, time::Duration};

use netns_common::{
    filter::{EntryFilter, Selector},
    nat::{
        Binding, BindingKey, Flow, FlowKey, ORIGIN_INBOUND, PROTO_TCP, TcpState, WireAddr, WirePort,
        addr_from_wire, port_from_wire,
    },
};
use serde::{Deserialize, Serialize};

use crate::{
    bpf::{self, NatMaps, UplinkCounters, maintain},
    nat::{
        NatError,
        ebpf::{NS, monotonic_ns},
    },
};

pub(crate) use netns_common::nat::proto_name;

pub(crate) fn endpoint(addr: WireAddr, port: WirePort) -> String {
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
    let flows = NatMaps::open(prefix)?.flows()?;
    Ok(flows_in(&flows, filter, monotonic_ns()))
}

/// The flows among `flows` that are live at `now` and that `filter` selects, sorted.
fn flows_in(flows: &[(FlowKey, Flow)], filter: &EntryFilter, now: u64) -> Vec<FlowEntry> {
    let mut out: Vec<FlowEntry> = flows
        .iter()
        .filter(|(k, f)| f.expires_ns > now && filter.flow(k, f))
        .map(|(k, f)| flow_entry(k, f, now))
        .collect();
    out.sort_by(|a, b| (a.protocol, &a.internal, &a.remote).cmp(&(b.protocol, &b.internal, &b.remote)));
    out
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
    let bindings = NatMaps::open(prefix)?.bindings()?;
    Ok(mappings_in(&bindings, filter, monotonic_ns()))
}

/// The mappings among binding entries `bindings` that are live at `now` and that `filter`
/// selects, sorted.
pub(crate) fn mappings_in(
    bindings: &[(BindingKey, Binding)],
    filter: &EntryFilter,
    now: u64,
) -> Vec<MappingEntry> {
    let mut out: Vec<MappingEntry> = bindings
        .iter()
        .filter(|(k, b)| !b.expired(now) && filter.mapping(k, b))
        .map(|(k, b)| mapping_entry(k, b, now))
        .collect();
    out.sort_by(|a, b| (a.protocol, &a.external).cmp(&(b.protocol, &b.external)));
    out
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

/// What `conntrack --delete` or `--flush` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    pub flows: usize,
    pub mappings: usize,
    /// Port forwards the filter selected: they stay (they are the lab's configuration).
    pub forwards_kept: usize,
}

/// Deletes the flows `filter` selects (live or expired) and, unless it names a TCP state or
/// an origin, the dynamic mappings it selects: a mapping with both of its entries and every
/// flow that uses it, so that no flow is left translated to a port another endpoint may
/// take. The next packet of a deleted flow starts a new one. Done by the NAT's maintenance
/// program (marked, then removed after an RCU grace period, so that no packet still writes
/// into what is removed).
pub fn delete(maps: &NatMaps, prefix: &str, filter: &EntryFilter) -> Result<Deleted, NatError> {
    // Forwards are the lab's configuration: counted, kept.
    let forwards_kept = if filter.flows_only() {
        0
    } else {
        maps.bindings()?
            .iter()
            .filter(|(k, b)| b.is_static() && filter.mapping(k, b))
            .count()
    };
    let done = maintain::remove(prefix, Selector::of(filter))?;
    Ok(Deleted {
        flows: done.flows as usize,
        mappings: done.mappings as usize,
        forwards_kept,
    })
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
type FlowId = (u8, WireAddr, WirePort, WireAddr, WirePort);

/// What the tables hold, by entry, for finding what changed.
#[derive(Default)]
struct Seen {
    /// Flows by key, with their creation time (a flow replaced under the same key is new).
    flows: BTreeMap<FlowId, (u64, FlowEntry)>,
    mappings: BTreeMap<(u8, WireAddr, WirePort), MappingEntry>,
}

fn seen_now(prefix: &str, filter: &EntryFilter) -> Result<Seen, NatError> {
    let now = monotonic_ns();
    let mut seen = Seen::default();
    let (flows, bindings) = NatMaps::open(prefix)?.tables()?;
    for (k, f) in flows {
        if f.expires_ns > now && filter.flow(&k, &f) {
            let id = (k.proto, k.int_addr, k.int_port, k.rem_addr, k.rem_port);
            seen.flows.insert(id, (f.created_ns, flow_entry(&k, &f, now)));
        }
    }
    for (k, b) in bindings {
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
    let maps = NatMaps::open(prefix)?;
    let (flows, bindings) = maps.tables()?;
    let (all, now) = (EntryFilter::default(), monotonic_ns());
    Ok(NatStats {
        counters: maps.counters()?.into_iter().collect(),
        flows: flows_in(&flows, &all, now).len(),
        mappings: mappings_in(&bindings, &all, now).len(),
        uplink: bpf::read_uplink_counters(prefix)?,
    })
}
