//! Operating a running eBPF NAT, from user space, through its pinned maps: the sweeper's
//! work, conntrack (list, count, delete, watch) and stats, live port forwards, its status,
//! and metrics.

pub mod conntrack;
pub mod forwards;
pub mod metrics;
pub mod status;
pub mod sweeper;
