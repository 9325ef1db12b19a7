//! ICMP errors (RFC 5508): the quoted packet translated back, with every checksum. An error
//! never creates, refreshes or removes state.

use super::{Drop, Res, Tables, malformed, rewrite};
use crate::wire::WirePort;
use crate::{
    counters::NatCounter,
    csum,
    nat::{BindingKey, FlowKey, PROTO_ICMP, PROTO_TCP, PROTO_UDP, has_ports},
    packet::*,
};

#[inline(always)]
pub fn is_error(t: u8) -> bool {
    t == ICMP_DEST_UNREACH || t == ICMP_TIME_EXCEEDED || t == ICMP_PARAMETER_PROBLEM
}

/// Adds a change of one 16-bit word of the ICMP message to its checksum.
#[inline(always)]
fn csum16<P: Packet>(ctx: &P, icmp_csum: usize, old: u16, new: u16) -> Res<()> {
    ctx.l4_csum_replace(icmp_csum, old as u64, new as u64, 2)
        .map_err(malformed)
}

/// Translates an ICMP error: the quoted packet's address, port and checksums, the outer
/// address, and the ICMP checksum over all of it. Inbound (`ingress`), the quote is a packet
/// we sent out (its source is external); outbound, a packet we let in (its destination is
/// internal). An error about nothing mapped is the router's business when it comes in; from
/// an internal host it is dropped (RFC 5508 REQ-4), as it would carry an internal address
/// out.
#[inline(always)]
pub fn error<P: Packet, T: Tables>(ctx: &P, t: &T, ingress: bool) -> Res<Action> {
    let ip: IpHdr = ctx.load(IP_OFF).map_err(malformed)?;
    let ip = &ip;
    let ihl = ip.header_len();
    if ihl == 0 {
        return Err(Drop::Malformed);
    }
    let l4 = IP_OFF + ihl;
    let inner_off = l4 + 8;
    let inner: IpHdr = ctx.load(inner_off).map_err(malformed)?;
    let iihl = inner.header_len();
    if iihl == 0 || inner.frag_offset() != 0 {
        return Err(Drop::Malformed);
    }
    let Some(cfg) = t.config() else {
        return Ok(Action::Pass);
    };
    let il4 = inner_off + iihl;
    let iproto = inner.proto;
    // What an error from inside about nothing of ours becomes.
    let unmapped = || -> Res<Action> {
        if !ingress && cfg.is_internal(ip.src) {
            return Err(Drop::ErrorUnmapped);
        }
        t.count(NatCounter::Passed);
        Ok(Action::Pass)
    };
    // The quoted packet's (source, destination) ports; for ICMP echo, the identifier.
    let (isport, idport) = match iproto {
        PROTO_TCP | PROTO_UDP => {
            let p: [WirePort; 2] = ctx.load(il4).map_err(malformed)?;
            (p[0], p[1])
        }
        PROTO_ICMP if ingress => {
            let id: WirePort = ctx.load(il4 + 4).map_err(malformed)?;
            (id, WirePort::ZERO)
        }
        PROTO_ICMP => return unmapped(),
        _ => (WirePort::ZERO, WirePort::ZERO),
    };
    let now = t.now();
    // Find the mapping, then require a live flow: filtering applies to errors too.
    let (b, key) = if ingress {
        let bkey = if has_ports(iproto) {
            BindingKey::external(iproto, inner.src, isport)
        } else {
            BindingKey::remote(iproto, inner.dst)
        };
        let Some(b) = t.binding(&bkey).filter(|b| b.ext_addr == inner.src) else {
            return unmapped();
        };
        (b, FlowKey::new(iproto, b.int_addr, b.int_port, inner.dst, idport))
    } else {
        let b = if has_ports(iproto) {
            t.binding(&BindingKey::internal(iproto, inner.dst, idport))
        } else {
            t.binding(&BindingKey::remote(iproto, inner.src))
                .filter(|b| b.int_addr == inner.dst)
        };
        let Some(b) = b.filter(|b| !b.is_dying()) else {
            return unmapped();
        };
        (b, FlowKey::new(iproto, inner.dst, idport, inner.src, isport))
    };
    let live = t.with_flow(&key, |f| f.expires_ns != 0 && now < f.expires_ns) == Some(true);
    if !live {
        return Err(Drop::Unsolicited);
    }
    // Quoted addresses and ports: before and after.
    let (old_addr, new_addr, old_port, new_port) = if ingress {
        (inner.src, b.int_addr, isport, b.int_port)
    } else {
        (inner.dst, b.ext_addr, idport, b.ext_port)
    };
    let icmp_csum = l4 + ICMP_CSUM;

    // Quoted IPv4 address and header checksum.
    let addr_off = inner_off + if ingress { IPH_SRC } else { IPH_DST };
    ctx.store(addr_off, &new_addr).map_err(malformed)?;
    ctx.l4_csum_replace(icmp_csum, u64::from(old_addr.0), u64::from(new_addr.0), 4)
        .map_err(malformed)?;
    let new_ip_csum =
        csum::update32(u16::from_be(inner.csum), old_addr.to_host(), new_addr.to_host()).to_be();
    ctx.store(inner_off + IPH_CSUM, &new_ip_csum).map_err(malformed)?;
    csum16(ctx, icmp_csum, inner.csum, new_ip_csum)?;

    if has_ports(iproto) {
        // Quoted port (or echo identifier).
        let port_off = match iproto {
            PROTO_ICMP => il4 + 4,
            _ if ingress => il4,
            _ => il4 + 2,
        };
        if old_port != new_port {
            ctx.store(port_off, &new_port).map_err(malformed)?;
            csum16(ctx, icmp_csum, old_port.0, new_port.0)?;
        }

        // Quoted L4 checksum, when the quote is long enough to hold it.
        let (l4_csum_off, pseudo) = match iproto {
            PROTO_TCP => (il4 + TCP_CSUM, true),
            PROTO_UDP => (il4 + UDP_CSUM, true),
            _ => (il4 + ICMP_CSUM, false),
        };
        // The packet ends at its IPv4 total length; bytes after it (Ethernet padding) are
        // not covered by the ICMP checksum.
        let end = (ctx.len() as usize).min(IP_OFF + usize::from(u16::from_be(ip.tot_len)));
        if l4_csum_off + 2 <= end {
            let old_c: u16 = ctx.load(l4_csum_off).map_err(malformed)?;
            if !(iproto == PROTO_UDP && old_c == 0) {
                let mut c = u16::from_be(old_c);
                if pseudo {
                    c = csum::update32(c, old_addr.to_host(), new_addr.to_host());
                }
                c = csum::update16(c, old_port.get(), new_port.get());
                let new_c = c.to_be();
                ctx.store(l4_csum_off, &new_c).map_err(malformed)?;
                csum16(ctx, icmp_csum, old_c, new_c)?;
            }
        }
    }

    // The outer address: inbound, if it is the translated host's (not the router's own);
    // outbound, any internal source (the quoted host, or a router between it and this
    // one), which must never leave by the uplink, as MASQUERADE does.
    if ingress && ip.dst == old_addr {
        rewrite::addr(ctx, false, ip.dst, new_addr)?;
    } else if !ingress && (ip.src == old_addr || cfg.is_internal(ip.src)) {
        rewrite::addr(ctx, true, ip.src, new_addr)?;
    }
    t.count(if ingress {
        NatCounter::IcmpErrorIn
    } else {
        NatCounter::IcmpErrorOut
    });
    Ok(Action::Pass)
}
