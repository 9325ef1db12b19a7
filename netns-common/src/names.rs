//! Names that the loader, the programs and the tests must agree on.

/// TC program counting packets that arrive on the uplink.
pub const PROG_UPLINK_COUNT_INGRESS: &str = "uplink_count_ingress";
/// TC program counting packets that leave by the uplink.
pub const PROG_UPLINK_COUNT_EGRESS: &str = "uplink_count_egress";
/// Per-CPU array of [`crate::counters::Counter`] values.
pub const MAP_UPLINK_COUNTERS: &str = "UPLINK_COUNTERS";

/// bpffs directory under which every lab pins its objects, one sub-directory per prefix.
pub const PIN_ROOT: &str = "/sys/fs/bpf/netns-nat";
