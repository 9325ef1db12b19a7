//! [`Packet`] in XDP: direct packet access (every access checked against `data_end`, which
//! is what the verifier proves) and the RFC 1624 arithmetic of `netns_common::csum` for
//! checksums. XDP sees no checksum offload state: a frame whose L4 checksum is only partial
//! (a veth peer with TX checksum offload on) is recognised by its value and left to the slow
//! path (`netns_common::fast`); the lab turns that offload off for the peers of XDP
//! ports so that it does not happen (docs/fast-path.md).

use aya_ebpf::programs::XdpContext;

use netns_common::{
    fast::{FibQuery, Forwarding},
    fwd::{FAST_XDP, NextHop},
};

use crate::{
    maps::NAT_DEVMAP,
    packet::{self, Context, Direct, Fail, Packet, l4_csum_updated},
};

/// A packet in XDP (the shared traits are foreign to `XdpContext`).
pub struct Xdp(pub XdpContext);

impl Direct for Xdp {
    #[inline(always)]
    fn span(&self) -> (usize, usize) {
        (self.0.data(), self.0.data_end())
    }
}

impl Packet for Xdp {
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
        let c: u16 = self.load(off)?;
        match l4_csum_updated(c, from, to, flags) {
            Some(n) => self.store(off, &n),
            None => Ok(()),
        }
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        (self.0.data_end() - self.0.data()) as u32
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.0.ingress_ifindex() as u32
    }

    #[inline(always)]
    fn arrived_on(&self) -> u32 {
        self.0.ingress_ifindex() as u32
    }
}

impl Context for Xdp {
    type Ctx = XdpContext;
    #[inline(always)]
    fn context(&self) -> &XdpContext {
        &self.0
    }
}

impl Forwarding for Xdp {
    const MODE: u32 = FAST_XDP;
    const SEES_OFFLOAD: bool = false;
    const REACHES_BRIDGES: bool = false;
    const KEEPS_HOPS: bool = false;

    #[inline(always)]
    fn fib_lookup(&self, q: &FibQuery) -> (i64, NextHop, u16) {
        // XDP has no skb to check: the lookup checks the IPv4 length against the MTU.
        packet::fib_lookup(&self.0, q, q.tot_len)
    }

    #[inline(always)]
    fn fits(&self, mtu: u16) -> bool {
        // Never asked: the lookup gives XDP no MTU, so nothing is cached.
        self.len() <= u32::from(mtu) + packet::FORWARDABLE_SLACK
    }

    #[inline(always)]
    fn check_mtu(&self, ifindex: u32) -> i64 {
        packet::check_mtu(&self.0, ifindex, 0)
    }

    #[inline(always)]
    fn redirect(&self, ifindex: u32, _peer: bool) -> bool {
        // The DEVMAP holds the router's fast-path ports, keyed by ifindex. (A frame sent to a
        // veth in XDP goes to its peer anyway.)
        NAT_DEVMAP.redirect(ifindex, 0).is_ok()
    }
}
