//! The packet as every NAT step sees it, whatever runs it: header offsets and types for IPv4
//! over Ethernet, and the [`Packet`] operations. The eBPF programs implement them for TC
//! (the skb helpers) and XDP (direct access), and [`crate::host`] for a frame in memory, so
//! the NAT steps of [`crate::translate`] run unchanged in the kernel and in host tests.

use crate::{
    csum,
    wire::{WireAddr, WirePort},
};

/// A failed access (out of bounds, or refused by the kernel).
pub type Fail = i64;

/// Out of bounds (-EFAULT, as the kernel's helpers say it).
pub const OOB: Fail = -14;

/// What a step decided for a packet that is not dropped (drops are `Err`). Turned into a
/// hook's return code in one place (the eBPF crate's `main.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// On its way: the next program on the hook, then the kernel's stack.
    Pass,
    /// Redirected (the redirect is already set up).
    Redirect,
}

/// Flags of [`Packet::l4_csum_replace`], as the kernel's `bpf_l4_csum_replace` takes them
/// (`BPF_F_PSEUDO_HDR`): the field's size (2 or 4) or'd with these.
pub const CSUM_PSEUDO: u64 = 1 << 4;
/// A UDP checksum (`BPF_F_MARK_MANGLED_0`): zero means "none" and stays zero; a result of
/// zero is sent as 0xffff.
pub const CSUM_MANGLED_0: u64 = 1 << 5;

/// One packet. Values are as on the wire (network order); offsets from the start of the
/// Ethernet header. `T` of `load`/`store` is always a plain integer or an array or
/// `#[repr(C)]` aggregate of integers (every byte pattern valid).
#[expect(clippy::len_without_is_empty, reason = "a frame is never empty")]
pub trait Packet {
    fn load<T: Copy>(&self, off: usize) -> Result<T, Fail>;
    fn store<T: Copy>(&self, off: usize, v: &T) -> Result<(), Fail>;
    /// Updates the IPv4 header checksum at `off` for a field of `size` bytes (2 or 4)
    /// changing from `from` to `to`.
    fn l3_csum_replace(&self, off: usize, from: u64, to: u64, size: u64) -> Result<(), Fail>;
    /// Updates the L4 checksum at `off`: size in the low bits, [`CSUM_PSEUDO`] for a field
    /// of the pseudo header, [`CSUM_MANGLED_0`] for UDP.
    fn l4_csum_replace(&self, off: usize, from: u64, to: u64, flags: u64) -> Result<(), Fail>;
    /// Length of the whole frame.
    fn len(&self) -> u32;
    /// Copies the frame's first `len` bytes (1 to `HELD_BYTES - 1`) into `dst`, to hold it
    /// (only the slow path holds fragments: elsewhere, it cannot).
    fn copy_frame(&self, _dst: &mut [u8; crate::nat::HELD_BYTES], _len: u32) -> Result<(), Fail> {
        Err(OOB)
    }
    /// Whether the frame came with an 802.1Q tag for a VLAN (not 0) that the kernel has
    /// already taken out of the frame (TC sees it only in the skb's metadata). Such a frame
    /// belongs to that VLAN's interface, not to this one: the NAT leaves it alone, or it
    /// would forward another VLAN's traffic as its own.
    fn other_vlan(&self) -> bool {
        false
    }
    /// The interface the hook runs on (0 where unknown).
    fn ifindex(&self) -> u32 {
        0
    }
    /// The interface the packet last arrived on (at an egress hook: 0 for the router's own
    /// packets, else the interface it was routed from; where unknown, 0).
    fn arrived_on(&self) -> u32 {
        0
    }
}

/// The checksum (wire order) after a field of `size` bytes (2 or 4) changed from `from` to
/// `to` (both as loaded from the wire): RFC 1624.
#[inline(always)]
pub fn csum_updated(check: u16, from: u64, to: u64, size: u64) -> u16 {
    let c = u16::from_be(check);
    let c = if size == 4 {
        csum::update32(c, u32::from_be(from as u32), u32::from_be(to as u32))
    } else {
        csum::update16(c, u16::from_be(from as u16), u16::from_be(to as u16))
    };
    c.to_be()
}

/// What `bpf_l4_csum_replace` makes of checksum `check` (wire order) for a packet whose
/// checksum is complete: None when it stays as it is (a UDP checksum of zero, "none").
/// Pseudo-header fields are summed like the data (without offload state the two are the
/// same arithmetic).
#[inline(always)]
pub fn l4_csum_updated(check: u16, from: u64, to: u64, flags: u64) -> Option<u16> {
    let mangled = flags & CSUM_MANGLED_0 != 0;
    if mangled && check == 0 {
        return None;
    }
    let n = csum_updated(check, from, to, flags & 0xf);
    Some(if mangled && n == 0 { 0xffff } else { n })
}

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;

pub const IP_OFF: usize = ETH_HLEN;
pub const IP_CSUM_OFF: usize = IP_OFF + 10;
pub const IP_SRC_OFF: usize = IP_OFF + 12;
pub const IP_DST_OFF: usize = IP_OFF + 16;

/// Offsets within an IPv4 header.
pub const IPH_CSUM: usize = 10;
pub const IPH_SRC: usize = 12;
pub const IPH_DST: usize = 16;

/// Offsets of the checksum field within L4 headers.
pub const TCP_CSUM: usize = 16;
pub const UDP_CSUM: usize = 6;
pub const ICMP_CSUM: usize = 2;
/// Offset of the TCP flags byte.
pub const TCP_FLAGS: usize = 13;
/// Offset of the TCP options (after the fixed header).
pub const TCP_OPTIONS: usize = 20;

/// The first 16 bytes of a TCP header as on the wire: ports, sequence and acknowledgement
/// numbers, data offset and flags, window. One load where the fields are wanted together.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpHead {
    pub ports: [WirePort; 2],
    pub seq: u32,
    pub ack: u32,
    /// Data offset (high nibble of the first byte) and flags (second byte).
    pub off_flags: [u8; 2],
    pub win: u16,
}

impl TcpHead {
    pub const fn flags(&self) -> u8 {
        self.off_flags[1]
    }
    /// The header's length in bytes.
    pub const fn header_len(&self) -> usize {
        (self.off_flags[0] >> 4) as usize * 4
    }
}

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// More-fragments flag and offset mask of `frag_off` (host order).
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET: u16 = 0x1fff;

/// The IPv4 header as on the wire (multi-byte fields in network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IpHdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub csum: u16,
    pub src: WireAddr,
    pub dst: WireAddr,
}

impl IpHdr {
    /// Header length in bytes (0 if not IPv4 or shorter than the minimum).
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        if self.ver_ihl >> 4 != 4 {
            return 0;
        }
        let len = usize::from(self.ver_ihl & 0x0f) * 4;
        if len < 20 { 0 } else { len }
    }
    /// Fragment offset (in 8-byte units).
    #[inline(always)]
    pub fn frag_offset(&self) -> u16 {
        u16::from_be(self.frag_off) & IP_OFFSET
    }
    #[inline(always)]
    pub fn more_fragments(&self) -> bool {
        u16::from_be(self.frag_off) & IP_MF != 0
    }
}

/// The one's complement sum of the fixed IPv4 header's 16-bit words (checksum included).
#[inline(always)]
pub fn ip_header_sum(ip: &IpHdr) -> u32 {
    let word32 = |v: WireAddr| {
        let v = v.to_host();
        (v >> 16) + (v & 0xffff)
    };
    u32::from(u16::from_be_bytes([ip.ver_ihl, ip.tos]))
        + u32::from(u16::from_be(ip.tot_len))
        + u32::from(u16::from_be(ip.id))
        + u32::from(u16::from_be(ip.frag_off))
        + u32::from(u16::from_be_bytes([ip.ttl, ip.proto]))
        + u32::from(u16::from_be(ip.csum))
        + word32(ip.src)
        + word32(ip.dst)
}

/// Whether a 20-byte IPv4 header's checksum verifies.
#[inline(always)]
pub fn ip_header_ok(ip: &IpHdr) -> bool {
    csum::fold(ip_header_sum(ip)) == 0xffff
}

/// The Ethernet header and the IPv4 header after it, as on the wire: read with one load
/// (each helper call costs).
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct EthIp {
    pub macs: [[u8; 6]; 2],
    pub proto: u16,
    pub ip: IpHdr,
}

/// The Ethernet and IPv4 headers of the packet, or `None` if it is not IPv4 (or too short
/// to hold both).
#[inline(always)]
pub fn eth_ipv4<P: Packet>(ctx: &P) -> Option<EthIp> {
    if ctx.other_vlan() {
        return None;
    }
    let h: EthIp = ctx.load(0).ok()?;
    (u16::from_be(h.proto) == ETH_P_IP).then_some(h)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;

    fn header(b: &[u8; 20]) -> IpHdr {
        // Safety: IpHdr is 20 bytes of integers; any bytes are a valid value.
        unsafe { core::ptr::read_unaligned(b.as_ptr().cast()) }
    }

    proptest! {
        #[test]
        fn header_checksum_agrees_with_the_byte_sum(mut b: [u8; 20], flip in 0usize..160) {
            b[10] = 0;
            b[11] = 0;
            let c = csum::checksum(&b).to_be_bytes();
            b[10..12].copy_from_slice(&c);
            prop_assert!(ip_header_ok(&header(&b)));
            prop_assert_eq!(ip_header_ok(&header(&b)), csum::verifies(&b));
            b[flip / 8] ^= 1 << (flip % 8);
            prop_assert_eq!(ip_header_ok(&header(&b)), csum::verifies(&b));
        }
    }

    #[test]
    fn header_layouts() {
        assert_eq!(core::mem::size_of::<IpHdr>(), 20);
        assert_eq!(core::mem::size_of::<TcpHead>(), 16);
        assert_eq!(core::mem::size_of::<EthIp>(), ETH_HLEN + 20);
    }

    #[test]
    fn udp_zero_checksum_stays_zero_and_zero_results_are_mangled() {
        assert_eq!(l4_csum_updated(0, 1, 2, CSUM_MANGLED_0 | 2), None);
        // Some update that computes a checksum of zero: UDP sends it as 0xffff.
        let to = 0x1234u16.to_be() as u64;
        let check = (0..=u16::MAX)
            .find(|&c| csum_updated(c, 0, to, 2) == 0)
            .expect("an update yielding zero");
        assert_eq!(l4_csum_updated(check, 0, to, CSUM_MANGLED_0 | 2), Some(0xffff));
        assert_eq!(l4_csum_updated(check, 0, to, 2), Some(0));
    }
}
