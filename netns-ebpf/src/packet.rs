//! The packet as every NAT step sees it, whatever the hook: header offsets and types for
//! IPv4 over Ethernet, and the [`Packet`] operations, implemented for TC (`tc.rs`, the skb
//! helpers) and for XDP (`xdp.rs`, direct access and RFC 1624 arithmetic), the way Cilium's
//! `ctx/xdp.h` emulates the skb helpers. No step is written twice for the two hooks.

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_fib_lookup as FibParams,
    helpers::{bpf_check_mtu, bpf_fib_lookup},
};

/// A failed access (out of bounds, or refused by the kernel).
pub type Fail = i64;

/// What a step decided for a packet that is not dropped (drops are `Err`). Turned into
/// the hook's return code in one place (`main.rs`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// On its way: the next program on the hook, then the kernel's stack.
    Pass,
    /// Redirected (the redirect is already set up).
    Redirect,
}

/// Flags of [`Packet::l4_csum_replace`], as the kernel's `bpf_l4_csum_replace` takes them:
/// the field's size (2 or 4) or'd with these.
pub const CSUM_PSEUDO: u64 = aya_ebpf::bindings::BPF_F_PSEUDO_HDR as u64;
/// A UDP checksum: zero means "none" and stays zero; a result of zero is sent as 0xffff.
pub const CSUM_MANGLED_0: u64 = aya_ebpf::bindings::BPF_F_MARK_MANGLED_0 as u64;

/// Where a program runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Tc,
    Xdp,
}

/// One packet at one hook. Values are as on the wire (network order); offsets from the
/// start of the Ethernet header.
pub trait Packet: EbpfContext {
    const HOOK: Hook;
    /// Whether the hook knows a packet's checksum offload state (an skb does; XDP does not).
    const SEES_OFFLOAD: bool;
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
    /// The interface the packet arrived on.
    fn ifindex(&self) -> u32;
    /// The IPv4 length the FIB lookup checks against the MTU (0: the kernel checks the
    /// packet itself).
    fn fib_tot_len(&self, ip: &IpHdr) -> u16;
    /// `bpf_check_mtu` flags for this hook.
    const MTU_FLAGS: u64;

    /// The kernel's FIB lookup from this packet; returns the helper's code.
    #[inline(always)]
    fn fib_lookup(&self, fib: &mut FibParams, ip: &IpHdr, flags: u32) -> i64 {
        fib.__bindgen_anon_1.tot_len = self.fib_tot_len(ip);
        // Safety: the context the program was given and a parameter block of the stated size.
        unsafe {
            bpf_fib_lookup(
                self.as_ptr(),
                fib,
                core::mem::size_of::<FibParams>() as i32,
                flags,
            )
        }
    }

    /// Whether the packet fits the MTU of `ifindex`.
    #[inline(always)]
    fn fits_mtu(&self, ifindex: u32) -> bool {
        let mut mtu_len = 0u32;
        // Safety: the context the program was given and a local for the result.
        unsafe { bpf_check_mtu(self.as_ptr(), ifindex, &mut mtu_len, 0, Self::MTU_FLAGS) == 0 }
    }
    /// Sets up a redirect to the egress of `ifindex` or, with `peer` where the hook can, to
    /// the ingress of its veth peer; false if the hook refused it.
    fn redirect(&self, ifindex: u32, peer: bool) -> bool;
}

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
    let h: EthIp = ctx.load(0).ok()?;
    (u16::from_be(h.proto) == ETH_P_IP).then_some(h)
}
