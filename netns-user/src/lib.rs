//! netns-nat: network namespace labs over netlink, with their NAT done by eBPF programs or
//! by the kernel's iptables/nftables for comparison.

pub mod bench;
pub mod config;
pub mod ebpf;
pub mod ethtool;
pub mod lab;
pub mod metrics;
pub mod nat;
pub mod netlink;
pub mod netns;
pub mod packet;
pub mod probe;
pub mod progtest;
