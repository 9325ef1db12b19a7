//! Types and pure logic shared by the eBPF programs (`netns-ebpf`) and user space
//! (`netns-user`). `no_std`, so that everything here can run in the kernel and be tested on
//! the host.
#![no_std]
// In the kernel, closures that must not become functions of their own (each call adds a
// stack frame along the chain the verifier limits to 512 bytes) are marked inline.
#![cfg_attr(target_arch = "bpf", feature(stmt_expr_attributes))]

pub mod counters;
pub mod csum;
pub mod fast;
pub mod filter;
pub mod fwd;
#[cfg(any(test, feature = "host"))]
pub mod host;
pub mod layout;
pub mod memory;
pub mod names;
pub mod nat;
pub mod net;
pub mod packet;
pub mod tcp;
pub mod trace;
pub mod translate;
pub mod wire;
