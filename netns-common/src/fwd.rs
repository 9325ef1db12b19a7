//! Forwarding without the router's stack: where a packet goes next, as the fast path and the
//! benchmark's bare-redirect ceilings write it into the frame before redirecting it.

/// The next hop of a redirected frame: the interface it leaves by and the MAC addresses its
/// Ethernet header gets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    /// Source MAC: the egress interface's own.
    pub src_mac: [u8; 6],
    /// Destination MAC: the neighbour's.
    pub dst_mac: [u8; 6],
}

/// Fast path off: every packet takes the router's stack.
pub const FAST_OFF: u32 = 0;
/// Fast path at TC: established flows are redirected at TCX ingress.
pub const FAST_TC: u32 = 1;

/// The single entry of the fast path's configuration array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastConfig {
    /// [`FAST_OFF`] or [`FAST_TC`].
    pub mode: u32,
    /// Where outbound fast-path packets leave.
    pub uplink_ifindex: u32,
    /// The router's MAC on the internal side (the bridge's): frames addressed to it are
    /// routed, and fast-path frames to internal hosts come from it.
    pub gateway_mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Where an internal host was last seen: the router's port it sits behind and its MAC.
/// Learnt from its own packets; replaces the bridge's FDB for fast-path packets only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Neigh {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Why a packet of the NAT's leaves the fast path to the router's stack (the slow path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slow {
    /// No live flow: a flow's first packet, or one that expired.
    NoFlow,
    /// SYN, FIN or RST, or a TCP flow not established: the state machine advances in one place.
    TcpFlags,
    /// A fragment (first or not).
    Fragment,
    /// IP options (IHL > 5).
    IpOptions,
    /// TTL <= 1: the router owes the sender an ICMP time exceeded.
    Ttl,
    /// Neither TCP nor UDP (ICMP, errors included).
    Protocol,
    /// No route by the expected port, or its neighbour is not resolved yet.
    NoNeighbour,
    /// Larger than the egress MTU.
    Mtu,
}

/// The IPv4 facts the fast path decides on (host order where it matters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    pub ver_ihl: u8,
    /// `frag_off` in host order (flags and offset).
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
}

/// Whether a packet may take the fast path, from its IPv4 header alone.
pub const fn fast_ip(f: &Facts) -> Result<(), Slow> {
    if f.ver_ihl != 0x45 {
        return Err(Slow::IpOptions);
    }
    // More-fragments flag or a non-zero offset.
    if f.frag_off & 0x3fff != 0 {
        return Err(Slow::Fragment);
    }
    if f.ttl <= 1 {
        return Err(Slow::Ttl);
    }
    if f.proto != crate::nat::PROTO_TCP && f.proto != crate::nat::PROTO_UDP {
        return Err(Slow::Protocol);
    }
    Ok(())
}

/// Whether a TCP segment with `flags` of a flow in `state` may take the fast path: only
/// established flows, and never a segment that would move the state machine.
pub const fn fast_tcp(flags: u8, state: u8) -> Result<(), Slow> {
    use crate::nat::{TCP_FIN, TCP_RST, TCP_SYN, TcpState};
    if flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 || state != TcpState::Established as u8 {
        return Err(Slow::TcpFlags);
    }
    Ok(())
}

/// The TTL after one hop and the IPv4 header checksum (both as on the wire) that goes with
/// it. The TTL shares a 16-bit word with the protocol (RFC 1624 update of that word).
pub const fn decrement_ttl(ttl: u8, proto: u8, check_wire: u16) -> (u8, u16) {
    let old = u16::from_be_bytes([ttl, proto]);
    let new = u16::from_be_bytes([ttl - 1, proto]);
    let c = crate::csum::update16(u16::from_be(check_wire), old, new);
    (ttl - 1, c.to_be())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::{PROTO_ICMP, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpState};

    #[test]
    fn shared_types_have_no_padding() {
        assert_eq!(core::mem::size_of::<NextHop>(), 4 + 6 + 6);
        assert_eq!(core::mem::size_of::<FastConfig>(), 4 + 4 + 6 + 2);
        assert_eq!(core::mem::size_of::<Neigh>(), 4 + 6 + 2);
    }

    fn facts(ver_ihl: u8, frag_off: u16, ttl: u8, proto: u8) -> Facts {
        Facts {
            ver_ihl,
            frag_off,
            ttl,
            proto,
        }
    }

    #[test]
    fn only_plain_tcp_and_udp_take_the_fast_path() {
        assert_eq!(fast_ip(&facts(0x45, 0, 64, PROTO_UDP)), Ok(()));
        assert_eq!(fast_ip(&facts(0x45, 0x4000, 64, PROTO_TCP)), Ok(()), "DF is fine");
        assert_eq!(fast_ip(&facts(0x46, 0, 64, PROTO_UDP)), Err(Slow::IpOptions));
        assert_eq!(fast_ip(&facts(0x45, 0x2000, 64, PROTO_UDP)), Err(Slow::Fragment));
        assert_eq!(fast_ip(&facts(0x45, 0x0001, 64, PROTO_UDP)), Err(Slow::Fragment));
        assert_eq!(fast_ip(&facts(0x45, 0, 1, PROTO_UDP)), Err(Slow::Ttl));
        assert_eq!(fast_ip(&facts(0x45, 0, 0, PROTO_UDP)), Err(Slow::Ttl));
        assert_eq!(fast_ip(&facts(0x45, 0, 64, PROTO_ICMP)), Err(Slow::Protocol));
    }

    #[test]
    fn only_established_segments_without_syn_fin_rst() {
        let est = TcpState::Established as u8;
        assert_eq!(fast_tcp(TCP_ACK, est), Ok(()));
        assert_eq!(fast_tcp(TCP_ACK | 0x08, est), Ok(()), "PSH");
        for f in [TCP_SYN, TCP_FIN | TCP_ACK, TCP_RST, TCP_SYN | TCP_FIN] {
            assert_eq!(fast_tcp(f, est), Err(Slow::TcpFlags));
        }
        assert_eq!(fast_tcp(TCP_ACK, TcpState::SynOut as u8), Err(Slow::TcpFlags));
        assert_eq!(fast_tcp(TCP_ACK, TcpState::FinIn as u8), Err(Slow::TcpFlags));
    }

    proptest::proptest! {
        #[test]
        fn ttl_decrement_keeps_the_header_checksum_valid(
            mut header in proptest::array::uniform20(proptest::prelude::any::<u8>()),
            ttl in 2u8..=255,
        ) {
            header[0] = 0x45;
            header[8] = ttl;
            header[10] = 0;
            header[11] = 0;
            let c = crate::csum::checksum(&header);
            header[10..12].copy_from_slice(&c.to_be_bytes());
            let (new_ttl, new_c) = decrement_ttl(ttl, header[9], u16::from_be_bytes([header[10], header[11]]).to_be());
            header[8] = new_ttl;
            header[10..12].copy_from_slice(&u16::from_be(new_c).to_be_bytes());
            proptest::prop_assert_eq!(new_ttl, ttl - 1);
            proptest::prop_assert!(crate::csum::verifies(&header));
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // Safety: #[repr(C)], integer fields only, no padding (tested above).
    unsafe impl aya::Pod for super::NextHop {}
    unsafe impl aya::Pod for super::FastConfig {}
    unsafe impl aya::Pod for super::Neigh {}
}
