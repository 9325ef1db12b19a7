//! The NAT: SNAT of outbound flows, DNAT through port forwards, replies both ways, ICMP
//! errors, fragments and hairpinning. Decisions that need no map (TCP states, timeouts,
//! port candidates, checksum arithmetic) come from `netns_common`, tested on the host.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_REDIRECT},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect_neigh},
    programs::TcContext,
};
use netns_common::{
    counters::NatCounter,
    csum,
    nat::{
        Binding, BindingKey, FLAG_DROP_UNSUPPORTED, FLAG_ENDPOINT_INDEPENDENT_FILTERING, Flow, FlowKey,
        FragKey, FragPorts, MAX_PORT_TRIES, NatConfig, ORIGIN_INBOUND, ORIGIN_OUTBOUND, PROTO_ICMP,
        PROTO_TCP, PROTO_UDP, TcpState, port_candidate, port_from_wire, port_to_wire, tcp_next,
    },
};

use crate::{
    maps::{NAT_BINDINGS, NAT_CONFIG, NAT_FLOWS, NAT_FRAGS, count},
    packet::*,
};

const EEXIST: i32 = 17;

/// Why a packet is dropped; each has its counter.
#[derive(Clone, Copy)]
pub enum Drop {
    NoPort,
    Unsolicited,
    Malformed,
    MapFull,
    Unsupported,
    FragmentUnknown,
}

impl Drop {
    pub fn counter(self) -> NatCounter {
        match self {
            Drop::NoPort => NatCounter::DropNoPort,
            Drop::Unsolicited => NatCounter::DropUnsolicited,
            Drop::Malformed => NatCounter::DropMalformed,
            Drop::MapFull => NatCounter::DropMapFull,
            Drop::Unsupported => NatCounter::DropUnsupported,
            Drop::FragmentUnknown => NatCounter::DropFragmentUnknown,
        }
    }
}

pub type Res<T> = Result<T, Drop>;

#[inline(always)]
pub fn malformed<E>(_: E) -> Drop {
    Drop::Malformed
}

#[inline(always)]
pub fn config() -> Option<&'static NatConfig> {
    NAT_CONFIG.get(0)
}

#[inline(always)]
pub fn now() -> u64 {
    // Safety: a helper without arguments or side effects.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn get_binding(key: &BindingKey) -> Option<Binding> {
    // Safety: the pointer comes from a successful lookup; the map is not preallocated, so
    // the element stays valid for the rest of the program even if another CPU removes it.
    NAT_BINDINGS.get_ptr(key).map(|p| unsafe { *p })
}

/// Pushes the binding's expiry to at least `until`, so that its port is not reclaimed
/// while a flow uses it.
#[inline(always)]
fn refresh_binding(proto: u8, ext_addr: u32, ext_port: u16, until: u64) {
    if let Some(b) = NAT_BINDINGS.get_ptr_mut(BindingKey::external(proto, ext_addr, ext_port)) {
        // Safety: as in `get_binding`; a racing write of a u64 expiry is benign.
        unsafe {
            if !(*b).is_static() && (*b).expires_ns < until {
                (*b).expires_ns = until;
            }
        }
    }
}

/// Advances a flow's state, expiry and counters for one packet.
#[inline(always)]
pub fn touch(cfg: &NatConfig, f: &mut Flow, proto: u8, outbound: bool, tcp_flags: u8, len: u64, now: u64) {
    if proto == PROTO_TCP {
        f.state = tcp_next(TcpState::from_u8(f.state), outbound, tcp_flags) as u8;
    }
    f.last_seen_ns = now;
    let timeout = cfg.timeout_ns(proto, f.state);
    f.expires_ns = now + timeout;
    if outbound {
        f.packets_out += 1;
        f.bytes_out += len;
    } else {
        f.packets_in += 1;
        f.bytes_in += len;
    }
    if f.expires_ns > f.binding_expires_ns {
        // A quarter timeout of slack: the binding is written about four times per
        // timeout per flow, not on every packet.
        let until = f.expires_ns + timeout / 4;
        refresh_binding(proto, f.ext_addr, f.ext_port, until);
        f.binding_expires_ns = until;
    }
}

/// Removes an expired binding (both of its entries) so its external port can be reused.
#[inline(always)]
fn reclaim(proto: u8, ekey: &BindingKey, old: &Binding) {
    let ikey = BindingKey::internal(proto, old.int_addr, old.int_port);
    if let Some(i) = get_binding(&ikey)
        && i.ext_addr == old.ext_addr
        && i.ext_port == old.ext_port
    {
        let _ = NAT_BINDINGS.remove(ikey);
    }
    let _ = NAT_BINDINGS.remove(ekey);
}

/// What [`claim`] got.
enum Claim {
    /// The port is ours now (both entries written).
    Ours,
    /// Another endpoint holds the port: try another.
    Taken,
    /// Another CPU bound this same internal endpoint a moment ago: use its port.
    Raced(u32, u16),
}

/// Takes external port `b.ext_port` for `b`'s internal endpoint: the external entry first,
/// then the internal one, both exclusive (BPF_NOEXIST), so a port never has two owners and
/// an endpoint never two ports; if the second fails the first is removed, so a binding
/// never exists by halves.
#[inline(always)]
fn claim(proto: u8, b: &Binding) -> Res<Claim> {
    let ekey = BindingKey::external(proto, b.ext_addr, b.ext_port);
    match NAT_BINDINGS.insert(ekey, b, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(e) if e == -EEXIST => return Ok(Claim::Taken),
        Err(_) => return Err(Drop::MapFull),
    }
    let ikey = BindingKey::internal(proto, b.int_addr, b.int_port);
    match NAT_BINDINGS.insert(ikey, b, BPF_NOEXIST as u64) {
        Ok(()) => {
            count(NatCounter::NewMappings);
            Ok(Claim::Ours)
        }
        Err(e) => {
            let _ = NAT_BINDINGS.remove(ekey);
            if e != -EEXIST {
                return Err(Drop::MapFull);
            }
            match get_binding(&ikey) {
                Some(other) => Ok(Claim::Raced(other.ext_addr, other.ext_port)),
                None => Err(Drop::NoPort),
            }
        }
    }
}

/// The external endpoint of internal endpoint (int_addr, int_port): its existing binding
/// (endpoint-independent mapping: the same for every destination), or a new one.
#[inline(always)]
fn binding_for(cfg: &NatConfig, proto: u8, int_addr: u32, int_port: u16, now: u64) -> Res<(u32, u16)> {
    let ikey = BindingKey::internal(proto, int_addr, int_port);
    if let Some(b) = get_binding(&ikey) {
        if let Some(e) = get_binding(&BindingKey::external(proto, b.ext_addr, b.ext_port))
            && e.int_addr == int_addr
            && e.int_port == int_port
        {
            // Still ours, even if expired: nobody took the port, so reviving it is safe.
            return Ok((b.ext_addr, b.ext_port));
        }
        // The port went to another endpoint after this binding expired.
        let _ = NAT_BINDINGS.remove(ikey);
    }
    let orig = port_from_wire(int_port);
    let range = cfg.range_for(proto, orig);
    // Safety: a helper without arguments or side effects.
    let seed = unsafe { bpf_get_prandom_u32() };
    let mut b = Binding {
        int_addr,
        ext_addr: cfg.ext_addr,
        int_port,
        ext_port: 0,
        flags: 0,
        expires_ns: now + cfg.timeout_ns(proto, TcpState::None as u8),
    };
    for i in 0..MAX_PORT_TRIES {
        let Some(cand) = port_candidate(orig, range, seed, i) else {
            break;
        };
        b.ext_port = port_to_wire(cand);
        match claim(proto, &b)? {
            Claim::Ours => return Ok((b.ext_addr, b.ext_port)),
            Claim::Raced(addr, port) => return Ok((addr, port)),
            Claim::Taken => {}
        }
        let ekey = BindingKey::external(proto, b.ext_addr, b.ext_port);
        if let Some(old) = get_binding(&ekey)
            && old.expired(now)
        {
            reclaim(proto, &ekey, &old);
            match claim(proto, &b)? {
                Claim::Ours => return Ok((b.ext_addr, b.ext_port)),
                Claim::Raced(addr, port) => return Ok((addr, port)),
                Claim::Taken => {}
            }
        }
    }
    Err(Drop::NoPort)
}

/// Refreshes the live flow `key` for one packet and returns its external endpoint and
/// (new) TCP state; None if there is no flow or it has expired.
#[inline(always)]
pub fn touch_live(
    cfg: &NatConfig,
    key: &FlowKey,
    outbound: bool,
    tcp_flags: u8,
    len: u64,
    now: u64,
) -> Option<(u32, u16, u8)> {
    let f = NAT_FLOWS.get_ptr_mut(key)?;
    // Safety: see `get_binding`; concurrent updates of counters may lose an increment.
    let f = unsafe { &mut *f };
    if now >= f.expires_ns {
        return None;
    }
    touch(cfg, f, key.proto, outbound, tcp_flags, len, now);
    Some((f.ext_addr, f.ext_port, f.state))
}

/// Creates flow `key` on external endpoint `ext`, opened from `origin`, counting its first
/// packet.
#[inline(always)]
fn new_flow(
    cfg: &NatConfig,
    key: &FlowKey,
    ext: (u32, u16),
    origin: u8,
    tcp_flags: u8,
    len: u64,
    now: u64,
) -> Res<()> {
    let mut f = Flow {
        ext_addr: ext.0,
        ext_port: ext.1,
        origin,
        created_ns: now,
        ..Flow::default()
    };
    touch(
        cfg,
        &mut f,
        key.proto,
        origin == ORIGIN_OUTBOUND,
        tcp_flags,
        len,
        now,
    );
    NAT_FLOWS.insert(key, f, 0).map_err(|_| Drop::MapFull)?;
    count(NatCounter::NewFlows);
    Ok(())
}

/// The external endpoint of an outbound flow, creating flow (and binding) if needed.
#[inline(always)]
fn outbound_flow(cfg: &NatConfig, key: &FlowKey, tcp_flags: u8, len: u64, now: u64) -> Res<(u32, u16)> {
    if let Some((addr, port, _)) = touch_live(cfg, key, true, tcp_flags, len, now) {
        return Ok((addr, port));
    }
    let ext = binding_for(cfg, key.proto, key.int_addr, key.int_port, now)?;
    new_flow(cfg, key, ext, ORIGIN_OUTBOUND, tcp_flags, len, now)?;
    Ok(ext)
}

/// Admits an inbound packet to binding `b` from remote (rem_addr, rem_port): an existing
/// live flow, or a new one if `b` is a port forward or filtering is endpoint-independent.
#[inline(always)]
fn inbound_flow(cfg: &NatConfig, b: &Binding, key: &FlowKey, tcp_flags: u8, len: u64, now: u64) -> Res<()> {
    if touch_live(cfg, key, false, tcp_flags, len, now).is_some() {
        return Ok(());
    }
    let open = b.is_static() || (cfg.flags & FLAG_ENDPOINT_INDEPENDENT_FILTERING != 0 && !b.expired(now));
    if !open {
        return Err(Drop::Unsolicited);
    }
    new_flow(
        cfg,
        key,
        (b.ext_addr, b.ext_port),
        ORIGIN_INBOUND,
        tcp_flags,
        len,
        now,
    )
}

/// Rewrites the source (`src`) or destination address and port of a TCP, UDP or ICMP echo
/// packet, with incremental updates of the IPv4 and L4 checksums. A UDP checksum of zero
/// stays zero; the helpers also handle CHECKSUM_PARTIAL (offloaded) packets.
#[inline(always)]
pub fn rewrite<P: Packet>(
    ctx: &P,
    proto: u8,
    l4: usize,
    src: bool,
    addrs: (u32, u32),
    ports: (u16, u16),
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
            old_addr as u64,
            new_addr as u64,
            CSUM_PSEUDO | mangled | 4,
        )
        .map_err(malformed)?;
    }
    if old_port != new_port {
        ctx.l4_csum_replace(csum_off, old_port as u64, new_port as u64, mangled | 2)
            .map_err(malformed)?;
        ctx.store(port_off, &new_port).map_err(malformed)?;
    }
    rewrite_addr(ctx, src, old_addr, new_addr)
}

/// Rewrites only the IPv4 address (non-first fragments carry no L4 header).
#[inline(always)]
fn rewrite_addr<P: Packet>(ctx: &P, src: bool, old_addr: u32, new_addr: u32) -> Res<()> {
    if old_addr == new_addr {
        return Ok(());
    }
    ctx.l3_csum_replace(IP_CSUM_OFF, old_addr as u64, new_addr as u64, 4)
        .map_err(malformed)?;
    ctx.store(if src { IP_SRC_OFF } else { IP_DST_OFF }, &new_addr)
        .map_err(malformed)
}

#[inline(always)]
fn is_icmp_error(t: u8) -> bool {
    t == ICMP_DEST_UNREACH || t == ICMP_TIME_EXCEEDED || t == ICMP_PARAMETER_PROBLEM
}

#[inline(always)]
fn unsupported(cfg: &NatConfig) -> Res<Action> {
    if cfg.flags & FLAG_DROP_UNSUPPORTED != 0 {
        Err(Drop::Unsupported)
    } else {
        count(NatCounter::DropUnsupported);
        Ok(Action::Pass)
    }
}

/// Ports (wire order) and TCP flags at `l4`.
#[inline(always)]
pub fn ports<P: Packet>(ctx: &P, proto: u8, l4: usize) -> Res<([u16; 2], u8)> {
    let p: [u16; 2] = ctx.load(l4).map_err(malformed)?;
    let flags = if proto == PROTO_TCP {
        ctx.load::<u8>(l4 + TCP_FLAGS).map_err(malformed)?
    } else {
        0
    };
    Ok((p, flags))
}

/// The Ethernet and IPv4 headers, the configuration and the L4 offset, or None when the
/// packet (not IPv4) or the moment (not configured yet) is not the NAT's.
#[inline(always)]
pub fn headers<P: Packet>(ctx: &P) -> Res<Option<(EthIp, &'static NatConfig, usize)>> {
    let (Some(h), Some(cfg)) = (eth_ipv4(ctx), config()) else {
        return Ok(None);
    };
    let ip = h.ip;
    match ip.header_len() {
        0 => Err(Drop::Malformed),
        ihl => Ok(Some((h, cfg, IP_OFF + ihl))),
    }
}

/// The fragment-table key of a packet (as it is before translation).
#[inline(always)]
fn frag_key(ip: &IpHdr) -> FragKey {
    FragKey {
        src: ip.src,
        dst: ip.dst,
        id: ip.id,
        proto: ip.proto,
        _pad: 0,
    }
}

/// TC egress on the uplink.
pub fn egress<P: Packet>(ctx: &P) -> Res<Action> {
    let Some((h, cfg, l4)) = headers(ctx)? else {
        return Ok(Action::Pass);
    };
    let ip = h.ip;
    let first = ip.frag_offset() == 0;
    if ip.proto == PROTO_ICMP && first {
        let t: u8 = ctx.load(l4).map_err(malformed)?;
        if is_icmp_error(t) {
            return icmp_error(ctx, &ip, l4, false);
        }
    }
    if !cfg.is_internal(ip.src) {
        count(NatCounter::Passed);
        return Ok(Action::Pass);
    }
    let now = now();
    let len = u64::from(ctx.len());
    match ip.proto {
        // Non-first fragments of TCP, UDP and ICMP echo: the first one's ports (identifier).
        PROTO_TCP | PROTO_UDP | PROTO_ICMP if !first => {
            let Some(p) = NAT_FRAGS.get_ptr(frag_key(&ip)) else {
                return Err(Drop::FragmentUnknown);
            };
            // Safety: a pointer from a successful lookup, copied at once.
            let p = unsafe { *p };
            let key = FlowKey::new(ip.proto, ip.src, p.sport, ip.dst, p.dport);
            let (ext_addr, _) = outbound_flow(cfg, &key, 0, len, now)?;
            rewrite_addr(ctx, true, ip.src, ext_addr)?;
            count(NatCounter::Fragments);
        }
        PROTO_TCP | PROTO_UDP => {
            let (p, flags) = ports(ctx, ip.proto, l4)?;
            let key = FlowKey::new(ip.proto, ip.src, p[0], ip.dst, p[1]);
            let (ext_addr, ext_port) = outbound_flow(cfg, &key, flags, len, now)?;
            rewrite(ctx, ip.proto, l4, true, (ip.src, ext_addr), (p[0], ext_port))?;
            if ip.more_fragments() {
                let fk = frag_key(&ip);
                let fp = FragPorts {
                    sport: p[0],
                    dport: p[1],
                };
                let _ = NAT_FRAGS.insert(fk, fp, 0);
            }
            count(if ip.proto == PROTO_TCP {
                NatCounter::OutTcp
            } else {
                NatCounter::OutUdp
            });
        }
        PROTO_ICMP if first => {
            let t: u8 = ctx.load(l4).map_err(malformed)?;
            if t != ICMP_ECHO_REQUEST {
                return unsupported(cfg);
            }
            let id: u16 = ctx.load(l4 + 4).map_err(malformed)?;
            let key = FlowKey::new(PROTO_ICMP, ip.src, id, ip.dst, 0);
            let (ext_addr, ext_id) = outbound_flow(cfg, &key, 0, len, now)?;
            rewrite(ctx, PROTO_ICMP, l4, true, (ip.src, ext_addr), (id, ext_id))?;
            if ip.more_fragments() {
                let fp = FragPorts { sport: id, dport: 0 };
                let _ = NAT_FRAGS.insert(frag_key(&ip), fp, 0);
            }
            count(NatCounter::OutIcmp);
        }
        _ => return unsupported(cfg),
    }
    Ok(Action::Pass)
}

/// TC ingress on the uplink.
pub fn ingress<P: Packet>(ctx: &P) -> Res<Action> {
    let Some((h, cfg, l4)) = headers(ctx)? else {
        return Ok(Action::Pass);
    };
    let ip = h.ip;
    let now = now();
    let len = u64::from(ctx.len());
    let first = ip.frag_offset() == 0;
    // (remote port, external port, TCP flags) of the packet.
    let (sport, dport, flags) = match ip.proto {
        // Non-first fragments of TCP, UDP and ICMP echo: the first one's ports (identifier).
        PROTO_TCP | PROTO_UDP | PROTO_ICMP if !first => {
            let fk = frag_key(&ip);
            let Some(p) = NAT_FRAGS.get_ptr(fk) else {
                return Err(Drop::FragmentUnknown);
            };
            // Safety: a pointer from a successful lookup, copied at once.
            let p = unsafe { *p };
            let Some(b) = get_binding(&BindingKey::external(ip.proto, ip.dst, p.dport)) else {
                return Err(Drop::FragmentUnknown);
            };
            let key = FlowKey::new(ip.proto, b.int_addr, b.int_port, ip.src, p.sport);
            inbound_flow(cfg, &b, &key, 0, len, now)?;
            rewrite_addr(ctx, false, ip.dst, b.int_addr)?;
            count(NatCounter::Fragments);
            return Ok(Action::Pass);
        }
        PROTO_TCP | PROTO_UDP => {
            let (p, flags) = ports(ctx, ip.proto, l4)?;
            (p[0], p[1], flags)
        }
        PROTO_ICMP if first => {
            let t: u8 = ctx.load(l4).map_err(malformed)?;
            if is_icmp_error(t) {
                return icmp_error(ctx, &ip, l4, true);
            }
            if t != ICMP_ECHO_REPLY {
                // Echo requests to the router are the router's to answer.
                count(NatCounter::Passed);
                return Ok(Action::Pass);
            }
            let id: u16 = ctx.load(l4 + 4).map_err(malformed)?;
            (0, id, 0)
        }
        _ => {
            count(NatCounter::Passed);
            return Ok(Action::Pass);
        }
    };
    let Some(b) = get_binding(&BindingKey::external(ip.proto, ip.dst, dport)) else {
        count(if ip.dst == cfg.ext_addr {
            NatCounter::InUnmapped
        } else {
            NatCounter::Passed
        });
        return Ok(Action::Pass);
    };
    let key = FlowKey::new(ip.proto, b.int_addr, b.int_port, ip.src, sport);
    inbound_flow(cfg, &b, &key, flags, len, now)?;
    rewrite(
        ctx,
        ip.proto,
        l4,
        false,
        (ip.dst, b.int_addr),
        (dport, b.int_port),
    )?;
    if ip.more_fragments() {
        let fk = frag_key(&ip);
        let fp = FragPorts { sport, dport };
        let _ = NAT_FRAGS.insert(fk, fp, 0);
    }
    count(match ip.proto {
        PROTO_TCP => NatCounter::InTcp,
        PROTO_UDP => NatCounter::InUdp,
        _ => NatCounter::InIcmp,
    });
    Ok(Action::Pass)
}

/// Adds a change of one 16-bit word of the ICMP message to its checksum.
#[inline(always)]
fn icmp_csum16<P: Packet>(ctx: &P, icmp_csum: usize, old: u16, new: u16) -> Res<()> {
    ctx.l4_csum_replace(icmp_csum, old as u64, new as u64, 2)
        .map_err(malformed)
}

/// Translates an ICMP error (RFC 5508): the quoted packet's address, port and checksums,
/// the outer address, and the ICMP checksum over all of it. Inbound (`ingress`), the quote
/// is a packet we sent out (its source is external); outbound, a packet we let in (its
/// destination is internal). An error never creates, refreshes or removes state.
#[inline(always)]
fn icmp_error<P: Packet>(ctx: &P, ip: &IpHdr, l4: usize, ingress: bool) -> Res<Action> {
    let inner_off = l4 + 8;
    let inner: IpHdr = ctx.load(inner_off).map_err(malformed)?;
    let iihl = inner.header_len();
    if iihl == 0 || inner.frag_offset() != 0 {
        return Err(Drop::Malformed);
    }
    let il4 = inner_off + iihl;
    let iproto = inner.proto;
    // The quoted packet's (source, destination) ports; for ICMP echo, the identifier.
    let (isport, idport) = match iproto {
        PROTO_TCP | PROTO_UDP => {
            let p: [u16; 2] = ctx.load(il4).map_err(malformed)?;
            (p[0], p[1])
        }
        PROTO_ICMP if ingress => {
            let id: u16 = ctx.load(il4 + 4).map_err(malformed)?;
            (id, 0)
        }
        _ => {
            count(NatCounter::Passed);
            return Ok(Action::Pass);
        }
    };
    let now = now();
    // Find the binding, then require a live flow: filtering applies to errors too.
    let (b, key) = if ingress {
        let Some(b) = get_binding(&BindingKey::external(iproto, inner.src, isport)) else {
            count(NatCounter::Passed);
            return Ok(Action::Pass);
        };
        (b, FlowKey::new(iproto, b.int_addr, b.int_port, inner.dst, idport))
    } else {
        let Some(b) = get_binding(&BindingKey::internal(iproto, inner.dst, idport)) else {
            count(NatCounter::Passed);
            return Ok(Action::Pass);
        };
        (b, FlowKey::new(iproto, inner.dst, idport, inner.src, isport))
    };
    let live = NAT_FLOWS.get_ptr(key).is_some_and(|f| {
        // Safety: a pointer from a successful lookup, read at once.
        now < unsafe { (*f).expires_ns }
    });
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
    ctx.l4_csum_replace(icmp_csum, old_addr as u64, new_addr as u64, 4)
        .map_err(malformed)?;
    let new_ip_csum = port_to_wire(csum::update32(
        u16::from_be(inner.csum),
        u32::from_be(old_addr),
        u32::from_be(new_addr),
    ));
    ctx.store(inner_off + IPH_CSUM, &new_ip_csum).map_err(malformed)?;
    icmp_csum16(ctx, icmp_csum, inner.csum, new_ip_csum)?;

    // Quoted port (or echo identifier).
    let port_off = match iproto {
        PROTO_ICMP => il4 + 4,
        _ if ingress => il4,
        _ => il4 + 2,
    };
    if old_port != new_port {
        ctx.store(port_off, &new_port).map_err(malformed)?;
        icmp_csum16(ctx, icmp_csum, old_port, new_port)?;
    }

    // Quoted L4 checksum, when the quote is long enough to hold it.
    let (l4_csum_off, pseudo) = match iproto {
        PROTO_TCP => (il4 + TCP_CSUM, true),
        PROTO_UDP => (il4 + UDP_CSUM, true),
        _ => (il4 + ICMP_CSUM, false),
    };
    if l4_csum_off + 2 <= ctx.len() as usize {
        let old_c: u16 = ctx.load(l4_csum_off).map_err(malformed)?;
        if !(iproto == PROTO_UDP && old_c == 0) {
            let mut c = u16::from_be(old_c);
            if pseudo {
                c = csum::update32(c, u32::from_be(old_addr), u32::from_be(new_addr));
            }
            c = csum::update16(c, port_from_wire(old_port), port_from_wire(new_port));
            let new_c = port_to_wire(c);
            ctx.store(l4_csum_off, &new_c).map_err(malformed)?;
            icmp_csum16(ctx, icmp_csum, old_c, new_c)?;
        }
    }

    // The outer address, if it is the translated host's own (not the router's).
    if ingress && ip.dst == old_addr {
        rewrite_addr(ctx, false, ip.dst, new_addr)?;
    } else if !ingress && ip.src == old_addr {
        rewrite_addr(ctx, true, ip.src, new_addr)?;
    }
    count(if ingress {
        NatCounter::IcmpErrorIn
    } else {
        NatCounter::IcmpErrorOut
    });
    Ok(Action::Pass)
}

/// TC ingress on the internal interfaces: a packet from an internal host to the external
/// address on a mapped port is translated as if it had left by the uplink and come back in
/// (SNAT, then DNAT), and sent straight back out (RFC 4787 REQ-9, hairpinning).
pub fn hairpin(ctx: &TcContext) -> Res<Action> {
    let Some(h) = eth_ipv4(ctx) else {
        return Ok(Action::Pass);
    };
    let ip = h.ip;
    let Some(cfg) = config() else {
        return Ok(Action::Pass);
    };
    if ip.dst != cfg.ext_addr || ip.frag_offset() != 0 || (ip.proto != PROTO_TCP && ip.proto != PROTO_UDP) {
        return Ok(Action::Pass);
    }
    if !cfg.is_internal(ip.src) {
        return Ok(Action::Pass);
    }
    let ihl = ip.header_len();
    if ihl == 0 {
        return Err(Drop::Malformed);
    }
    let l4 = IP_OFF + ihl;
    let (p, flags) = ports(ctx, ip.proto, l4)?;
    // A port nobody owns is the router's own business.
    let Some(b) = get_binding(&BindingKey::external(ip.proto, ip.dst, p[1])) else {
        return Ok(Action::Pass);
    };
    let now = now();
    let len = u64::from(ctx.len());
    let out_key = FlowKey::new(ip.proto, ip.src, p[0], ip.dst, p[1]);
    let (ext_addr, ext_port) = outbound_flow(cfg, &out_key, flags, len, now)?;
    let in_key = FlowKey::new(ip.proto, b.int_addr, b.int_port, ext_addr, ext_port);
    inbound_flow(cfg, &b, &in_key, flags, len, now)?;
    rewrite(ctx, ip.proto, l4, true, (ip.src, ext_addr), (p[0], ext_port))?;
    rewrite(ctx, ip.proto, l4, false, (ip.dst, b.int_addr), (p[1], b.int_port))?;
    count(NatCounter::Hairpinned);
    let ifindex = ctx.ifindex();
    // Safety: no parameters (the kernel looks up the next hop itself), no flags.
    let r = unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) };
    if r == TC_ACT_REDIRECT as i64 {
        Ok(Action::Redirect)
    } else {
        Err(Drop::Malformed)
    }
}
