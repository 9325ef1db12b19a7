//! The eBPF NAT as it runs, for `status`: address, fast path, timeouts, forwards, tables,
//! programs attached, the agent.

use std::collections::BTreeMap;

use netns_common::nat::{FLAG_ENDPOINT_INDEPENDENT_FILTERING, SIDE_EXTERNAL, addr_from_wire};
use serde::Serialize;

use super::conntrack::mappings_in;
use crate::{
    bpf::{self, NatMaps},
    nat::{
        NatError, NatTarget,
        ebpf::{NS, monotonic_ns},
    },
};

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
    /// The agent: its PID (null when it does not run) and what it answers.
    pub agent: AgentStatus,
    /// The programs' diagnostics level (aya-log), set when they were loaded.
    pub log_level: &'static str,
    /// How many `trace` listen (the programs write trace events while this is not 0).
    pub trace_listeners: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentStatus {
    pub pid: Option<i32>,
    /// Its answer to a ping (null when it does not answer within a second).
    pub health: Option<super::agent::Health>,
    /// Why there is no answer.
    pub error: Option<String>,
}

fn trace_listeners(prefix: &str) -> u32 {
    super::agent::listeners(prefix).unwrap_or(0)
}

fn agent_status(prefix: &str) -> AgentStatus {
    let pid = super::agent::pid(prefix);
    let (health, error) = match pid.map(|_| super::agent::health(prefix)) {
        None => (None, Some("not running".to_owned())),
        Some(Ok(h)) => (Some(h), None),
        Some(Err(e)) => (None, Some(e.to_string())),
    };
    AgentStatus { pid, health, error }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct TableUse {
    pub entries: usize,
    pub live: usize,
    pub capacity: u32,
}

/// The eBPF NAT of `t` as it runs.
pub fn status(t: &NatTarget) -> Result<EbpfStatus, NatError> {
    let maps = NatMaps::open(t.prefix)?;
    let cfg = maps.config()?;
    let (flows, bindings) = maps.tables()?;
    let now = monotonic_ns();
    let s = |ns: u64| ns / NS;
    // The mappings from the entries just read, not a second walk of the table.
    let live_maps = mappings_in(&bindings, &Default::default(), now);
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
            ("other", s(cfg.timeouts.other_ns)),
            ("unconfirmed", s(cfg.timeouts.unconfirmed_ns)),
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
        attached: bpf::attached_programs(&t.router_ns)
            .map_err(NatError::Ebpf)?
            .into_iter()
            .map(|p| p.label)
            .collect(),
        agent: agent_status(t.prefix),
        trace_listeners: trace_listeners(t.prefix),
        log_level: t.nat.ebpf.log_level.name(),
    })
}
