//! Names that the loader, the programs and the tests must agree on.

/// TC program counting packets that arrive on the uplink.
pub const PROG_UPLINK_COUNT_INGRESS: &str = "uplink_count_ingress";
/// TC program counting packets that leave by the uplink.
pub const PROG_UPLINK_COUNT_EGRESS: &str = "uplink_count_egress";
/// Per-CPU array of [`crate::counters::Counter`] values.
pub const MAP_UPLINK_COUNTERS: &str = "UPLINK_COUNTERS";

/// bpffs directory under which every lab pins its objects, one sub-directory per prefix.
pub const PIN_ROOT: &str = "/sys/fs/bpf/netns-nat";

/// TC egress on the uplink: SNAT of outbound flows, replies of forwarded ones.
pub const PROG_NAT_EGRESS: &str = "nat_egress";
/// TC ingress on the uplink: replies of outbound flows, new inbound flows to forwards.
pub const PROG_NAT_INGRESS: &str = "nat_ingress";
/// TC ingress on the internal interfaces: hairpinning to the external address.
pub const PROG_NAT_HAIRPIN: &str = "nat_hairpin";
/// TCX ingress on the bridge ports: established outbound flows straight to the uplink,
/// skipping the bridge and routing (the fast path at TC).
pub const PROG_NAT_FAST_OUT: &str = "nat_fast_out";
/// The fast path in XDP: on the bridge ports (outbound) and on the uplink (inbound).
pub const PROG_XDP_FAST_OUT: &str = "xdp_fast_out";
pub const PROG_XDP_FAST_IN: &str = "xdp_fast_in";
/// Plain forwarding (`--nat none` with a fast path): routed packets straight to their next
/// hop, at TCX ingress or in XDP of the bridge ports and the uplink.
pub const PROG_ROUTE_FAST: &str = "route_fast";
pub const PROG_XDP_ROUTE_FAST: &str = "xdp_route_fast";
/// The tables' maintenance (expiry, removals, address moves): never attached, run with
/// BPF_PROG_TEST_RUN by the agent and the command line (`translate::maintain`).
pub const PROG_NAT_MAINTAIN: &str = "nat_maintain";
/// Its pin in a lab's pin directory.
pub const PIN_NAT_MAINTAIN: &str = "prog_nat_maintain";
/// Array of one [`crate::nat::NatConfig`].
pub const MAP_NAT_CONFIG: &str = "NAT_CONFIG";
/// Hash of [`crate::nat::BindingKey`] to [`crate::nat::Binding`].
pub const MAP_NAT_BINDINGS: &str = "NAT_BINDINGS";
/// Hash of [`crate::nat::FlowKey`] to [`crate::nat::Flow`].
pub const MAP_NAT_FLOWS: &str = "NAT_FLOWS";
/// Array of one [`crate::fwd::FastConfig`].
pub const MAP_FAST_CONFIG: &str = "FAST_CONFIG";
/// LRU hash of a MAC address ([`crate::fwd::MacKey`]) to its [`crate::fwd::FdbEntry`].
pub const MAP_NAT_FDB: &str = "NAT_FDB";
/// Array of one u64: the FDB generation (see [`crate::fwd::LearnHint`]).
pub const MAP_NAT_FDB_GEN: &str = "NAT_FDB_GEN";
/// Hash of a fast-path port's ifindex to its [`crate::fwd::PortState`].
pub const MAP_NAT_PORTS: &str = "NAT_PORTS";
/// DEVMAP_HASH of the router's fast-path ports by ifindex (XDP redirects).
pub const MAP_NAT_DEVMAP: &str = "NAT_DEVMAP";
/// LRU hash of [`crate::nat::FragKey`] to [`crate::nat::FragPorts`].
pub const MAP_NAT_FRAGS: &str = "NAT_FRAGS";
/// Per-CPU array of [`crate::counters::NatCounter`] values.
pub const MAP_NAT_COUNTERS: &str = "NAT_COUNTERS";
/// Array of one u64: the [`crate::layout::LAYOUT_STAMP`] of the build that made the maps.
pub const MAP_NAT_LAYOUT: &str = "NAT_LAYOUT";
/// Ring of new inbound flows not confirmed yet (eviction candidates), and its positions.
pub const MAP_NAT_EVICT: &str = "NAT_EVICT";
pub const MAP_NAT_EVICT_POS: &str = "NAT_EVICT_POS";
/// LRU hash of a remote address to its [`crate::nat::RemoteRate`].
pub const MAP_NAT_REMOTES: &str = "NAT_REMOTES";
/// Array of one u32: how many `netns-nat trace` listen (0: no events written).
pub const MAP_NAT_TRACE_ON: &str = "NAT_TRACE_ON";
/// Ring buffer of [`crate::trace::TraceEvent`].
pub const MAP_NAT_TRACE: &str = "NAT_TRACE";

/// XDP program of the benchmark's sink: counts and drops UDP to [`SINK_PORT`].
pub const PROG_SINK: &str = "bench_sink";
/// Its twin at TCX ingress, for frames redirected into the veth's ingress past XDP.
pub const PROG_SINK_TC: &str = "bench_tc_sink";
/// Per-CPU array: [packets, bytes] the sink dropped.
pub const MAP_SINK_COUNTERS: &str = "SINK_COUNTERS";
/// First UDP destination port of the benchmark's load (the discard port).
pub const SINK_PORT: u16 = 9;
/// The sink counts destination ports SINK_PORT .. SINK_PORT + SINK_PORTS (flows beyond the
/// source ports' range use the next destination port).
pub const SINK_PORTS: u16 = 32;

/// The benchmark's bare-redirect ceilings (no NAT): TC ingress and XDP on a bridge port.
pub const PROG_CEILING_TC: &str = "ceiling_tc_redirect";
pub const PROG_CEILING_XDP: &str = "ceiling_xdp_redirect";
/// Array of one [`crate::fwd::NextHop`]: where the ceilings send the load.
pub const MAP_CEILING_NEXT_HOP: &str = "CEILING_NEXT_HOP";
/// DEVMAP of one entry (the uplink) for the XDP ceiling.
pub const MAP_CEILING_DEVMAP: &str = "CEILING_DEVMAP";

/// The programs of the NAT's object, by their full (function) names.
pub const NAT_PROGRAMS: &[&str] = &[
    PROG_UPLINK_COUNT_INGRESS,
    PROG_UPLINK_COUNT_EGRESS,
    PROG_NAT_EGRESS,
    PROG_NAT_INGRESS,
    PROG_NAT_HAIRPIN,
    PROG_NAT_FAST_OUT,
    PROG_XDP_FAST_OUT,
    PROG_XDP_FAST_IN,
    PROG_ROUTE_FAST,
    PROG_XDP_ROUTE_FAST,
    PROG_NAT_MAINTAIN,
];

/// The NAT's maps, all pinned by a lab; its object's other map is [`MAP_UPLINK_COUNTERS`]
/// (pinned with the counting programs).
pub const NAT_MAPS: &[&str] = &[
    MAP_NAT_CONFIG,
    MAP_NAT_BINDINGS,
    MAP_NAT_FLOWS,
    MAP_FAST_CONFIG,
    MAP_NAT_FDB,
    MAP_NAT_FDB_GEN,
    MAP_NAT_PORTS,
    MAP_NAT_DEVMAP,
    MAP_NAT_FRAGS,
    MAP_NAT_COUNTERS,
    MAP_NAT_LAYOUT,
    MAP_NAT_EVICT,
    MAP_NAT_EVICT_POS,
    MAP_NAT_REMOTES,
    MAP_NAT_TRACE_ON,
    MAP_NAT_TRACE,
];

/// The programs of the benchmark's own object (`netns-bench-ebpf`).
pub const BENCH_PROGRAMS: &[&str] = &[PROG_SINK, PROG_SINK_TC, PROG_CEILING_TC, PROG_CEILING_XDP];

/// Every program the project loads.
fn programs() -> impl Iterator<Item = &'static str> {
    NAT_PROGRAMS.iter().chain(BENCH_PROGRAMS).copied()
}

/// The kernel keeps only the first 15 bytes of a program's name (BPF_OBJ_NAME_LEN - 1); this
/// gives back the full name of one of the project's programs, or the kernel's name if none
/// matches.
pub fn full_program_name(kernel_name: &str) -> &str {
    programs()
        .find(|p| p.len() >= kernel_name.len() && p.starts_with(kernel_name) && !kernel_name.is_empty())
        .unwrap_or(kernel_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_names_map_back_uniquely() {
        for p in programs() {
            let truncated = &p[..p.len().min(15)];
            assert_eq!(full_program_name(truncated), p);
            // No two programs share their kernel-visible 15 bytes.
            let clashes = programs().filter(|q| q.starts_with(truncated)).count();
            assert_eq!(clashes, 1, "{p} is ambiguous once truncated");
        }
        assert_eq!(full_program_name("someone_elses"), "someone_elses");
    }
}
