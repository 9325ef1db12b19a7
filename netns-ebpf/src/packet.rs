//! The packet at a hook: `netns_common::packet`'s [`Packet`] (what every NAT step needs,
//! also run on the host) and `netns_common::fast`'s `Forwarding` (what only the kernel
//! offers: FIB lookup, MTU check, redirect). Implemented for TC (`tc.rs`, the skb helpers)
//! and XDP (`xdp.rs`, direct access and RFC 1624 arithmetic), the way Cilium's `ctx/xdp.h`
//! emulates the skb helpers. No step is written twice for the two hooks. The fast path at
//! TC uses direct access too (`tc::TcDirect`): the accesses below serve both.

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_fib_lookup as FibParams,
    helpers::{bpf_check_mtu, bpf_fib_lookup},
};
pub use netns_common::fwd::FORWARDABLE_SLACK;
pub use netns_common::packet::*;
use netns_common::{fast::FibQuery, fwd::NextHop};

const AF_INET: u8 = 2;

/// The context the program was given, under a packet type.
pub trait Context {
    type Ctx: EbpfContext;
    fn context(&self) -> &Self::Ctx;
}

/// The address of `size` bytes at `off` of the packet at `data`..`data_end`, if it holds
/// them (the check the verifier needs before a direct access).
#[inline(always)]
fn at(data: usize, data_end: usize, off: usize, size: usize) -> Result<usize, Fail> {
    let p = data + off;
    if p + size > data_end {
        return Err(OOB);
    }
    Ok(p)
}

/// Direct access to a packet's bytes: the same load, store and IPv4 checksum update at
/// XDP and at TC (where the packet's head is made linear first).
pub trait Direct {
    /// The packet's first byte and the end of its directly accessible part.
    fn span(&self) -> (usize, usize);

    #[inline(always)]
    fn load_direct<T: Copy>(&self, off: usize) -> Result<T, Fail> {
        let (data, end) = self.span();
        let p = at(data, end, off, core::mem::size_of::<T>())?;
        // Safety: `at` checked that the packet holds a T at p.
        Ok(unsafe { (p as *const T).read_unaligned() })
    }

    #[inline(always)]
    fn store_direct<T: Copy>(&self, off: usize, v: &T) -> Result<(), Fail> {
        let (data, end) = self.span();
        let p = at(data, end, off, core::mem::size_of::<T>())?;
        // Safety: as in `load_direct`.
        unsafe { (p as *mut T).write_unaligned(*v) };
        Ok(())
    }

    /// RFC 1624 in the program: the IPv4 header's checksum is never offloaded.
    #[inline(always)]
    fn l3_csum_replace_direct(&self, off: usize, from: u64, to: u64, size: u64) -> Result<(), Fail> {
        let c: u16 = self.load_direct(off)?;
        self.store_direct(off, &csum_updated(c, from, to, size))
    }
}

/// The kernel's FIB lookup for `q` from the program given `ctx`; `tot_len` is the IPv4
/// length it checks against the MTU (0: the kernel checks the skb itself). Returns the
/// helper's answer and, on success, the next hop and, without `tot_len`, the egress MTU.
#[inline(always)]
pub fn fib_lookup<C: EbpfContext>(ctx: &C, q: &FibQuery, tot_len: u16) -> (i64, NextHop, u16) {
    // Zeroed word by word: `mem::zeroed` becomes a call to a byte-at-a-time memset here.
    let mut words = [0u64; 8];
    for w in &mut words {
        // Safety: a local, aligned u64.
        unsafe { core::ptr::write_volatile(w, 0) };
    }
    const _: () = assert!(core::mem::size_of::<FibParams>() == 64);
    // Safety: 64 zeroed bytes, aligned for u64 (more than the block needs), are a valid
    // parameter block (plain integers), used in place.
    let fib: &mut FibParams = unsafe { &mut *words.as_mut_ptr().cast::<FibParams>() };
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
            fib as *mut FibParams,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    let hop = NextHop {
        ifindex: fib.ifindex,
        src_mac: fib.smac,
        dst_mac: fib.dmac,
    };
    // Asked without a length (an skb's lookup), a successful one tells the egress MTU.
    // Safety: a field of the union the kernel wrote (plain integers either way).
    let mtu = if tot_len == 0 && rc == 0 {
        unsafe { fib.__bindgen_anon_1.mtu_result }
    } else {
        0
    };
    (rc, hop, mtu)
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
