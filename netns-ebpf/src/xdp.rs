//! [`Packet`] in XDP: direct packet access (every access checked against `data_end`, which
//! is what the verifier proves) and the RFC 1624 arithmetic of `netns_common::csum` for
//! checksums. XDP sees no checksum offload state: a frame whose L4 checksum is only partial
//! (a veth peer with TX checksum offload on) is recognised by its value and left to the slow
//! path (`fast::checksum_complete`); the lab turns that offload off for the peers of XDP
//! ports so that it does not happen (docs/fast-path.md).

use aya_ebpf::programs::XdpContext;
use netns_common::csum;

use crate::{
    maps::NAT_DEVMAP,
    packet::{CSUM_MANGLED_0, Fail, Hook, IpHdr, Packet},
};

/// Out of bounds.
const OOB: Fail = -14;

/// The address of `size` bytes at `off`, if the frame holds them.
#[inline(always)]
fn at(ctx: &XdpContext, off: usize, size: usize) -> Result<usize, Fail> {
    let p = ctx.data() + off;
    if p + size > ctx.data_end() {
        return Err(OOB);
    }
    Ok(p)
}

/// The checksum (wire order) after a field of `size` bytes changed from `from` to `to`
/// (both as loaded from the wire).
#[inline(always)]
fn updated(check: u16, from: u64, to: u64, size: u64) -> u16 {
    let c = u16::from_be(check);
    let c = if size == 4 {
        csum::update32(c, u32::from_be(from as u32), u32::from_be(to as u32))
    } else {
        csum::update16(c, u16::from_be(from as u16), u16::from_be(to as u16))
    };
    c.to_be()
}

impl Packet for XdpContext {
    const SEES_OFFLOAD: bool = false;
    const MTU_FLAGS: u64 = 0;
    const HOOK: Hook = Hook::Xdp;

    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Result<T, Fail> {
        let p = at(self, off, core::mem::size_of::<T>())?;
        // Safety: `at` checked that the frame holds a T at p.
        Ok(unsafe { (p as *const T).read_unaligned() })
    }

    #[inline(always)]
    fn store<T: Copy>(&self, off: usize, v: &T) -> Result<(), Fail> {
        let p = at(self, off, core::mem::size_of::<T>())?;
        // Safety: as in `load`.
        unsafe { (p as *mut T).write_unaligned(*v) };
        Ok(())
    }

    #[inline(always)]
    fn l3_csum_replace(&self, off: usize, from: u64, to: u64, size: u64) -> Result<(), Fail> {
        let c: u16 = self.load(off)?;
        self.store(off, &updated(c, from, to, size))
    }

    #[inline(always)]
    fn l4_csum_replace(&self, off: usize, from: u64, to: u64, flags: u64) -> Result<(), Fail> {
        let c: u16 = self.load(off)?;
        let mangled = flags & CSUM_MANGLED_0 != 0;
        if mangled && c == 0 {
            // UDP without a checksum: it stays without one.
            return Ok(());
        }
        // Pseudo-header fields (CSUM_PSEUDO) are summed like the data: without offload
        // state the two are the same arithmetic.
        let mut n = updated(c, from, to, flags & 0xf);
        if mangled && n == 0 {
            n = 0xffff;
        }
        self.store(off, &n)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        (self.data_end() - self.data()) as u32
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ingress_ifindex() as u32
    }

    #[inline(always)]
    fn fib_tot_len(&self, ip: &IpHdr) -> u16 {
        // XDP has no skb to check: the lookup checks the IPv4 length against the MTU.
        u16::from_be(ip.tot_len)
    }

    #[inline(always)]
    fn redirect(&self, ifindex: u32, _peer: bool) -> bool {
        // The DEVMAP holds the router's fast-path ports, keyed by ifindex. (A frame sent to a
        // veth in XDP goes to its peer anyway.)
        NAT_DEVMAP.redirect(ifindex, 0).is_ok()
    }
}
