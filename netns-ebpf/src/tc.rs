//! [`Packet`] at TC: the skb helpers, which bound-check every access and keep offloaded
//! checksums (CHECKSUM_PARTIAL, CHECKSUM_COMPLETE) right, as direct writes would not; and
//! for the fast path, whose every packet counts, [`TcDirect`]: direct access to the
//! headers, with the helper kept for the one field offload can own (the L4 checksum).

use aya_ebpf::{
    bindings::TC_ACT_REDIRECT,
    helpers::{bpf_redirect, bpf_redirect_peer, bpf_skb_load_bytes},
    programs::TcContext,
};

use netns_common::{
    nat::HELD_BYTES,
    packet::{ETH_HLEN, OOB},
};

use netns_common::{
    fast::{FibQuery, Forwarding},
    fwd::{FAST_TC, NextHop},
};

use crate::packet::{self, Context, Direct, Fail, Packet};

/// bpf_check_mtu: check every segment of a GSO packet, not its total length.
const BPF_MTU_CHK_SEGS: u64 = 1;

/// A packet at TC (the shared traits are foreign to `TcContext`).
pub struct Tc(pub TcContext);

impl Packet for Tc {
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Result<T, Fail> {
        self.0.load(off)
    }

    #[inline(always)]
    fn store<T: Copy>(&self, off: usize, v: &T) -> Result<(), Fail> {
        self.0.store(off, v, 0)
    }

    #[inline(always)]
    fn l3_csum_replace(&self, off: usize, from: u64, to: u64, size: u64) -> Result<(), Fail> {
        self.0.l3_csum_replace(off, from, to, size)
    }

    #[inline(always)]
    fn l4_csum_replace(&self, off: usize, from: u64, to: u64, flags: u64) -> Result<(), Fail> {
        self.0.l4_csum_replace(off, from, to, flags)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        self.0.len()
    }

    #[inline(always)]
    fn copy_frame(&self, dst: &mut [u8; HELD_BYTES], len: u32) -> Result<(), Fail> {
        // The mask bounds the length for the verifier (HELD_BYTES is 2048); black_box
        // keeps LLVM from dropping it where it knows the bound from an earlier test (the
        // verifier may not).
        let len = core::hint::black_box(len) & (HELD_BYTES as u32 - 1);
        if len == 0 {
            return Err(OOB);
        }
        // Safety: the skb the program was given, and `len` bytes of `dst` (fewer than its
        // size).
        let rc = unsafe { bpf_skb_load_bytes(self.0.skb.skb.cast(), 0, dst.as_mut_ptr().cast(), len) };
        if rc == 0 { Ok(()) } else { Err(rc) }
    }

    #[inline(always)]
    fn other_vlan(&self) -> bool {
        // Safety: reading fields of the skb the program was given.
        let (present, tci) = unsafe { ((*self.0.skb.skb).vlan_present, (*self.0.skb.skb).vlan_tci) };
        // VLAN 0 (a priority tag) is this interface's own traffic.
        present != 0 && tci & 0x0fff != 0
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // Safety: reading a field of the skb the program was given.
        unsafe { (*self.0.skb.skb).ifindex }
    }

    #[inline(always)]
    fn arrived_on(&self) -> u32 {
        // Safety: as in `ifindex`.
        unsafe { (*self.0.skb.skb).ingress_ifindex }
    }
}

impl Context for Tc {
    type Ctx = TcContext;
    #[inline(always)]
    fn context(&self) -> &TcContext {
        &self.0
    }
}

impl Forwarding for Tc {
    const MODE: u32 = FAST_TC;
    const SEES_OFFLOAD: bool = true;
    const REACHES_BRIDGES: bool = true;
    const KEEPS_HOPS: bool = true;

    #[inline(always)]
    fn fib_lookup(&self, q: &FibQuery) -> (i64, NextHop, u16) {
        // The kernel checks the skb itself (each segment, if GSO) against the MTU.
        packet::fib_lookup(&self.0, q, 0)
    }

    #[inline(always)]
    fn fits(&self, mtu: u16) -> bool {
        // As the kernel's is_skb_forwardable: a GSO packet is segmented to fit later.
        // Safety: reading a field of the skb the program was given.
        let gso = unsafe { (*self.0.skb.skb).gso_size } != 0;
        gso || self.len() <= u32::from(mtu) + packet::FORWARDABLE_SLACK
    }

    #[inline(always)]
    fn check_mtu(&self, ifindex: u32) -> i64 {
        packet::check_mtu(&self.0, ifindex, BPF_MTU_CHK_SEGS)
    }

    #[inline(always)]
    fn redirect(&self, ifindex: u32, peer: bool) -> bool {
        // Safety: helpers taking plain integers.
        let rc = unsafe {
            if peer {
                bpf_redirect_peer(ifindex, 0)
            } else {
                bpf_redirect(ifindex, 0)
            }
        };
        rc == i64::from(TC_ACT_REDIRECT)
    }
}

/// The headers the fast path reads and writes: Ethernet, IPv4 without options and the first
/// 20 bytes of L4 (TCP's fixed header; UDP's is shorter).
const FAST_HEAD: u32 = (ETH_HLEN + 20 + 20) as u32;

/// A packet at TC with its headers accessed directly: one helper call fewer per load and
/// per store (six on the fast path), and the IPv4 checksum updated in the program. The L4
/// checksum still goes through `bpf_l4_csum_replace`, which knows when it is only a partial
/// sum (CHECKSUM_PARTIAL, a local sender's offload); the rewrites leave a CHECKSUM_COMPLETE
/// sum right as the helpers would, since each changes a header together with its checksum.
pub struct TcDirect(pub Tc);

impl TcDirect {
    /// Makes the packet's first bytes (up to the fast path's headers) linear and writable,
    /// if they are not yet (a sender's zero-copy pages, say). If that fails, the accesses
    /// past the linear part fail as if the packet were short.
    #[inline(always)]
    pub fn new(ctx: TcContext) -> TcDirect {
        let want = ctx.len().min(FAST_HEAD);
        if ctx.data() + want as usize > ctx.data_end() {
            let _ = ctx.pull_data(want);
        }
        TcDirect(Tc(ctx))
    }
}

impl Direct for TcDirect {
    #[inline(always)]
    fn span(&self) -> (usize, usize) {
        (self.0.0.data(), self.0.0.data_end())
    }
}

impl Packet for TcDirect {
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Result<T, Fail> {
        self.load_direct(off)
    }

    #[inline(always)]
    fn store<T: Copy>(&self, off: usize, v: &T) -> Result<(), Fail> {
        self.store_direct(off, v)
    }

    #[inline(always)]
    fn l3_csum_replace(&self, off: usize, from: u64, to: u64, size: u64) -> Result<(), Fail> {
        self.l3_csum_replace_direct(off, from, to, size)
    }

    #[inline(always)]
    fn l4_csum_replace(&self, off: usize, from: u64, to: u64, flags: u64) -> Result<(), Fail> {
        self.0.l4_csum_replace(off, from, to, flags)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        self.0.len()
    }

    #[inline(always)]
    fn other_vlan(&self) -> bool {
        self.0.other_vlan()
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.0.ifindex()
    }

    #[inline(always)]
    fn arrived_on(&self) -> u32 {
        self.0.arrived_on()
    }
}

impl Context for TcDirect {
    type Ctx = TcContext;
    #[inline(always)]
    fn context(&self) -> &TcContext {
        &self.0.0
    }
}

impl Forwarding for TcDirect {
    const MODE: u32 = FAST_TC;
    const SEES_OFFLOAD: bool = true;
    const REACHES_BRIDGES: bool = true;
    const KEEPS_HOPS: bool = true;

    #[inline(always)]
    fn fib_lookup(&self, q: &FibQuery) -> (i64, NextHop, u16) {
        self.0.fib_lookup(q)
    }

    #[inline(always)]
    fn fits(&self, mtu: u16) -> bool {
        self.0.fits(mtu)
    }

    #[inline(always)]
    fn check_mtu(&self, ifindex: u32) -> i64 {
        self.0.check_mtu(ifindex)
    }

    #[inline(always)]
    fn redirect(&self, ifindex: u32, peer: bool) -> bool {
        self.0.redirect(ifindex, peer)
    }
}
