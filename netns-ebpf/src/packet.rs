//! Header offsets and reads for IPv4 over Ethernet, through the skb helpers (bounds are
//! checked by the kernel, so the verifier has nothing to prove about packet pointers).

use aya_ebpf::programs::TcContext;

/// TCX verdict "go on": the next program on the hook runs, and after the last the packet
/// continues. (TC_ACT_PIPE would end the TCX chain: tcx_run stops at any code but -1.)
pub const NEXT: i32 = aya_ebpf::bindings::tcx_action_base::TCX_NEXT;

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
#[derive(Clone, Copy)]
pub struct IpHdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub csum: u16,
    pub src: u32,
    pub dst: u32,
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

/// The IPv4 header of the packet, or `None` if it is not IPv4.
#[inline(always)]
pub fn ipv4(ctx: &TcContext) -> Option<IpHdr> {
    let proto: u16 = ctx.load(12).ok()?;
    if u16::from_be(proto) != ETH_P_IP {
        return None;
    }
    ctx.load::<IpHdr>(IP_OFF).ok()
}
