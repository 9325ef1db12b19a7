//! Operating a running eBPF NAT, from user space, through its pinned maps: the per-lab
//! agent (expiry, the uplink's address, live changes), conntrack (list, count, delete,
//! watch) and stats, live port forwards and settings, its status, metrics and tracing.

pub mod agent;
pub mod conntrack;
pub mod forwards;
pub mod metrics;
pub mod reconfig;
pub mod status;
pub mod sweeper;
pub mod trace;
