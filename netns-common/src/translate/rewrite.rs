//! Reading and rewriting headers: the Ethernet/IPv4 headers and their checks, a TCP or UDP
//! header's ports and segment, and the incremental rewrite of addresses and ports with their
//! checksums.

use super::{Drop, Res, Tables, malformed};
use crate::wire::{WireAddr, WirePort};
use crate::{
    csum,
    nat::{NatConfig, PROTO_TCP, PROTO_UDP, TCP_SYN},
    packet::*,
    tcp::{self, Segment, WSCALE_NONE},
};

/// Rewrites the source (`src`) or destination address and port of a TCP, UDP or ICMP echo
/// packet, with incremental updates of the IPv4 and L4 checksums. A UDP checksum of zero
/// stays zero; the helpers also handle CHECKSUM_PARTIAL (offloaded) packets.
#[inline(always)]
pub fn rewrite<P: Packet>(
    ctx: &P,
    proto: u8,
    l4: usize,
    src: bool,
    addrs: (WireAddr, WireAddr),
    ports: (WirePort, WirePort),
) -> Res<()> {
    let (old_addr, new_addr) = addrs;
    let (old_port, new_port) = ports;
    let (csum_off, mangled, pseudo, port_off) = match proto {
        PROTO_TCP => (l4 + TCP_CSUM, 0, true, if src { l4 } else { l4 + 2 }),
        PROTO_UDP => (l4 + UDP_CSUM, CSUM_MANGLED_0, true, if src { l4 } else { l4 + 2 }),
        // ICMP echo: the identifier is the port; ICMPv4 has no pseudo header.
        _ => (l4 + ICMP_CSUM, 0, false, l4 + 4),
    };
    if pseudo {
        ctx.l4_csum_replace(
            csum_off,
            u64::from(old_addr.0),
            u64::from(new_addr.0),
            CSUM_PSEUDO | mangled | 4,
        )
        .map_err(malformed)?;
    }
    if old_port != new_port {
        ctx.l4_csum_replace(
            csum_off,
            u64::from(old_port.0),
            u64::from(new_port.0),
            mangled | 2,
        )
        .map_err(malformed)?;
        ctx.store(port_off, &new_port).map_err(malformed)?;
    }
    addr(ctx, src, old_addr, new_addr)
}

/// Rewrites only the IPv4 address (non-first fragments carry no L4 header; protocols
/// without ports get no more).
#[inline(always)]
pub fn addr<P: Packet>(ctx: &P, src: bool, old_addr: WireAddr, new_addr: WireAddr) -> Res<()> {
    if old_addr == new_addr {
        return Ok(());
    }
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old_addr.0), u64::from(new_addr.0), 4)
        .map_err(malformed)?;
    ctx.store(if src { IP_SRC_OFF } else { IP_DST_OFF }, &new_addr)
        .map_err(malformed)
}

/// Ports (wire order) and TCP flags at `l4`.
#[inline(always)]
pub fn ports<P: Packet>(ctx: &P, proto: u8, l4: usize) -> Res<([WirePort; 2], u8)> {
    let p: [WirePort; 2] = ctx.load(l4).map_err(malformed)?;
    let flags = if proto == PROTO_TCP {
        ctx.load::<u8>(l4 + TCP_FLAGS).map_err(malformed)?
    } else {
        0
    };
    Ok((p, flags))
}

/// A TCP header's segment facts (host order; the options' window scale read for a SYN).
#[inline(always)]
pub fn segment<P: Packet>(ctx: &P, ip: &IpHdr, l4: usize, th: &TcpHead) -> Res<Segment> {
    let hlen = th.header_len();
    if hlen < 20 {
        return Err(Drop::Malformed);
    }
    let ip_len = usize::from(u16::from_be(ip.tot_len));
    let l4_len = ip_len.saturating_sub(l4 - IP_OFF);
    let flags = th.flags();
    let wscale = if flags & TCP_SYN != 0 && hlen > 20 {
        syn_wscale(ctx, l4, hlen - 20)?
    } else {
        WSCALE_NONE
    };
    Ok(Segment {
        flags,
        seq: u32::from_be(th.seq),
        ack: u32::from_be(th.ack),
        win: u16::from_be(th.win),
        len: l4_len.saturating_sub(hlen) as u32,
        wscale,
    })
}

/// The window scale option of a SYN whose options are `opt_len` bytes at `l4 + 20`.
// A function of its own in the kernel: its stack frame apart from the common path's.
#[inline(never)]
fn syn_wscale<P: Packet>(ctx: &P, l4: usize, opt_len: usize) -> Res<u8> {
    // Read a word at a time (each load costs at TC), at most the 40 bytes options have.
    let mut buf = [0u8; 40];
    let mut n = 0;
    for w in 0..10 {
        if w * 4 >= opt_len {
            break;
        }
        let word: [u8; 4] = ctx.load(l4 + TCP_OPTIONS + w * 4).map_err(malformed)?;
        buf[w * 4..w * 4 + 4].copy_from_slice(&word);
        n = w * 4 + 4;
    }
    Ok(tcp::wscale_option(&buf[..n.min(opt_len)]))
}

/// The (source, destination) ports (wire order) and, for TCP, the segment of a first
/// fragment's (or whole packet's) TCP or UDP header at `l4`.
#[inline(always)]
pub fn l4_facts<P: Packet>(ctx: &P, ip: &IpHdr, l4: usize) -> Res<([WirePort; 2], Segment)> {
    if ip.proto == PROTO_TCP {
        let th: TcpHead = ctx.load(l4).map_err(malformed)?;
        let seg = segment(ctx, ip, l4, &th)?;
        return Ok((th.ports, seg));
    }
    let p: [WirePort; 2] = ctx.load(l4).map_err(malformed)?;
    Ok((p, Segment::default()))
}

/// The Ethernet and IPv4 headers, the configuration and the L4 offset, or None when the
/// packet (not IPv4) or the moment (not configured yet) is not the NAT's.
#[inline(always)]
pub fn headers<'t, P: Packet, T: Tables>(ctx: &P, t: &'t T) -> Res<Option<(EthIp, &'t NatConfig, usize)>> {
    // One at a time: with both in a tuple, LLVM moves the parts of an absent header it left
    // undefined, and the verifier refuses to read such a register.
    let Some(cfg) = t.config() else {
        return Ok(None);
    };
    let Some(h) = eth_ipv4(ctx) else {
        return Ok(None);
    };
    let ip = h.ip;
    match ip.header_len() {
        0 => Err(Drop::Malformed),
        ihl => Ok(Some((h, cfg, IP_OFF + ihl))),
    }
}

/// The IPv4 header into `ip`, the configuration and the L4 offset, or None when the packet
/// (not IPv4) or the moment (not configured yet) is not the NAT's. (The header is written
/// into the caller's: a step's stack is short, and every copy of it takes a place there.)
#[inline(always)]
pub fn ip_header<'t, P: Packet, T: Tables>(
    ctx: &P,
    t: &'t T,
    ip: &mut IpHdr,
) -> Res<Option<(&'t NatConfig, usize)>> {
    if ctx.other_vlan() {
        return Ok(None);
    }
    let Some(cfg) = t.config() else {
        return Ok(None);
    };
    // Too short for the headers: not the NAT's (the kernel's input path drops it).
    let Ok(proto) = ctx.load::<u16>(ETH_HLEN - 2) else {
        return Ok(None);
    };
    if u16::from_be(proto) != ETH_P_IP {
        return Ok(None);
    }
    let Ok(hdr) = ctx.load::<IpHdr>(IP_OFF) else {
        return Ok(None);
    };
    *ip = hdr;
    match ip.header_len() {
        0 => Err(Drop::Malformed),
        ihl => Ok(Some((cfg, IP_OFF + ihl))),
    }
}

/// Whether the IPv4 header checksum verifies, options (up to `l4`) included. Checked
/// where the kernel has not checked it yet, before the packet touches any state.
#[inline(always)]
pub fn header_ok<P: Packet>(ctx: &P, ip: &IpHdr, l4: usize) -> Res<bool> {
    let mut acc = ip_header_sum(ip);
    let mut off = IP_OFF + 20;
    // At most 40 bytes of options, read a word at a time.
    for _ in 0..10 {
        if off >= l4 {
            break;
        }
        let w: u32 = ctx.load(off).map_err(malformed)?;
        let v = u32::from_be(w);
        acc += (v >> 16) + (v & 0xffff);
        off += 4;
    }
    Ok(csum::fold(acc) == 0xffff)
}
