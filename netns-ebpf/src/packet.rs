//! The packet at a hook: `netns_common::packet`'s [`Packet`] (what every NAT step needs,
//! also run on the host) and `netns_common::fast`'s `Forwarding` (what only the kernel
//! offers: FIB lookup, MTU check, redirect). Implemented for TC (`tc.rs`, the skb helpers)
//! and XDP (`xdp.rs`, direct access and RFC 1624 arithmetic), the way Cilium's `ctx/xdp.h`
//! emulates the skb helpers. No step is written twice for the two hooks.

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_fib_lookup as FibParams,
    helpers::{bpf_check_mtu, bpf_fib_lookup},
};
pub use netns_common::packet::*;
use netns_common::{fast::FibQuery, fwd::NextHop};

const AF_INET: u8 = 2;

/// The context the program was given, under a packet type.
pub trait Context {
    type Ctx: EbpfContext;
    fn context(&self) -> &Self::Ctx;
}

/// The kernel's FIB lookup for `q` from the program given `ctx`; `tot_len` is the IPv4
/// length it checks against the MTU (0: the kernel checks the skb itself). Returns the
/// helper's answer; on success the next hop is in `hop`.
#[inline(always)]
pub fn fib_lookup<C: EbpfContext>(ctx: &C, q: &FibQuery, tot_len: u16, hop: &mut NextHop) -> i64 {
    // Safety: a zeroed plain-data struct.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = q.proto;
    fib.sport = q.sport.0;
    fib.dport = q.dport.0;
    fib.ifindex = q.ifindex;
    fib.__bindgen_anon_1.tot_len = tot_len;
    fib.__bindgen_anon_3.ipv4_src = q.src.0;
    fib.__bindgen_anon_4.ipv4_dst = q.dst.0;
    // Safety: the context the program was given and a parameter block of the stated size.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    hop.ifindex = fib.ifindex;
    hop.src_mac = fib.smac;
    hop.dst_mac = fib.dmac;
    rc
}

/// `bpf_check_mtu` of the packet against interface `ifindex` with `flags`: 0 if it fits,
/// -ENODEV if there is no such interface (any longer).
#[inline(always)]
pub fn check_mtu<C: EbpfContext>(ctx: &C, ifindex: u32, flags: u64) -> i64 {
    let mut mtu_len = 0u32;
    // Safety: the context the program was given and a local for the result.
    unsafe { bpf_check_mtu(ctx.as_ptr(), ifindex, &mut mtu_len, 0, flags) }
}

/// TCX verdict "go on": the next program on the hook runs, and after the last the packet
/// continues. (TC_ACT_PIPE would end the TCX chain: tcx_run stops at any code but -1.)
pub const NEXT: i32 = aya_ebpf::bindings::tcx_action_base::TCX_NEXT;
