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
/// Array of one [`crate::nat::NatConfig`].
pub const MAP_NAT_CONFIG: &str = "NAT_CONFIG";
/// Hash of [`crate::nat::BindingKey`] to [`crate::nat::Binding`].
pub const MAP_NAT_BINDINGS: &str = "NAT_BINDINGS";
/// Hash of [`crate::nat::FlowKey`] to [`crate::nat::Flow`].
pub const MAP_NAT_FLOWS: &str = "NAT_FLOWS";
/// LRU hash of [`crate::nat::FragKey`] to [`crate::nat::FragPorts`].
pub const MAP_NAT_FRAGS: &str = "NAT_FRAGS";
/// Per-CPU array of [`crate::counters::NatCounter`] values.
pub const MAP_NAT_COUNTERS: &str = "NAT_COUNTERS";

/// XDP program of the benchmark's sink: counts and drops UDP to [`SINK_PORT`].
pub const PROG_SINK: &str = "bench_sink";
/// Per-CPU array: [packets, bytes] the sink dropped.
pub const MAP_SINK_COUNTERS: &str = "SINK_COUNTERS";
/// First UDP destination port of the benchmark's load (the discard port).
pub const SINK_PORT: u16 = 9;
/// The sink counts destination ports SINK_PORT .. SINK_PORT + SINK_PORTS (flows beyond the
/// source ports' range use the next destination port).
pub const SINK_PORTS: u16 = 16;
