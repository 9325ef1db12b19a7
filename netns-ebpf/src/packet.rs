//! The packet at a hook: `netns_common::packet`'s [`Packet`] (what every NAT step needs,
//! also run on the host) plus [`Hooked`], what only the kernel offers (FIB lookup, MTU check,
//! redirect). Implemented for TC (`tc.rs`, the skb helpers) and XDP (`xdp.rs`, direct
//! access and RFC 1624 arithmetic), the way Cilium's `ctx/xdp.h` emulates the skb helpers.
//! No step is written twice for the two hooks.

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_fib_lookup as FibParams,
    helpers::{bpf_check_mtu, bpf_fib_lookup},
};
pub use netns_common::packet::*;

/// Where a program runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Tc,
    Xdp,
}

/// A packet at a kernel hook.
pub trait Hooked: Packet {
    const HOOK: Hook;
    /// Whether the hook knows a packet's checksum offload state (an skb does; XDP does not).
    const SEES_OFFLOAD: bool;
    /// `bpf_check_mtu` flags for this hook.
    const MTU_FLAGS: u64;
    type Ctx: EbpfContext;
    /// The context the program was given.
    fn ctx(&self) -> &Self::Ctx;
    /// The IPv4 length the FIB lookup checks against the MTU (0: the kernel checks the
    /// packet itself).
    fn fib_tot_len(&self, ip: &IpHdr) -> u16;
    /// Sets up a redirect to the egress of `ifindex` or, with `peer` where the hook can, to
    /// the ingress of its veth peer; false if the hook refused it.
    fn redirect(&self, ifindex: u32, peer: bool) -> bool;

    /// The kernel's FIB lookup from this packet; returns the helper's code.
    #[inline(always)]
    fn fib_lookup(&self, fib: &mut FibParams, ip: &IpHdr, flags: u32) -> i64 {
        fib.__bindgen_anon_1.tot_len = self.fib_tot_len(ip);
        // Safety: the context the program was given and a parameter block of the stated size.
        unsafe {
            bpf_fib_lookup(
                self.ctx().as_ptr(),
                fib,
                core::mem::size_of::<FibParams>() as i32,
                flags,
            )
        }
    }

    /// `bpf_check_mtu` of the packet against interface `ifindex`: 0 if it fits, -ENODEV if
    /// there is no such interface (any longer).
    #[inline(always)]
    fn check_mtu(&self, ifindex: u32) -> i64 {
        let mut mtu_len = 0u32;
        // Safety: the context the program was given and a local for the result.
        unsafe { bpf_check_mtu(self.ctx().as_ptr(), ifindex, &mut mtu_len, 0, Self::MTU_FLAGS) }
    }
}

/// TCX verdict "go on": the next program on the hook runs, and after the last the packet
/// continues. (TC_ACT_PIPE would end the TCX chain: tcx_run stops at any code but -1.)
pub const NEXT: i32 = aya_ebpf::bindings::tcx_action_base::TCX_NEXT;
