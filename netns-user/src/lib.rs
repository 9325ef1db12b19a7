//! netns-nat: network namespace labs over netlink, with their NAT done by eBPF programs or
//! by the kernel's iptables/nftables for comparison.
//!
//! Layers, each depending only on those above it in this list: `sys` (namespaces,
//! rtnetlink, offloads, state paths), `config` (lab files), `bpf` (the embedded object: load,
//! pin, attach, typed maps), `nat` (the backends behind one trait), `ops` (operating a
//! running eBPF NAT, its per-lab agent included: protocol, client, process), `lab` (up,
//! down, status; it starts and stops the agent), `probe` (acceptance exchanges); the
//! binary's `main.rs` is the command line. The benchmark (`netns-bench`) and the test kit
//! (`netns-testkit`: the frame builder, the programs' test runs) are crates of their own,
//! built on this one.

pub mod bpf;
pub mod config;
pub mod lab;
pub mod nat;
pub mod ops;
pub mod probe;
pub mod sys;
