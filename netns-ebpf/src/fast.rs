//! The fast path: packets of established flows skip the bridge and routing. Outbound (TCX
//! or XDP ingress of the bridge ports) they are translated and redirected straight to the
//! uplink, the next hop from the kernel's FIB; inbound (TCX or XDP ingress of the uplink)
//! straight to the bridge port behind which the internal host was last seen. The same
//! functions serve both hooks through [`Packet`]. Everything else goes on to the slow path
//! (the kernel's bridge and routing, and the NAT programs on the uplink), so state is
//! created and TCP states advance in one place; the fast path only refreshes the same
//! conntrack entries, checking everything before it changes anything.

use aya_ebpf::bindings::bpf_fib_lookup as FibParams;
use netns_common::{
    counters::{Direction, NatCounter},
    fwd::{
        FAST_TC, FAST_XDP, FastConfig, FdbEntry, IpFacts, MacKey, PEER_PORTS, PEER_UPLINK, PORT_BRIDGE,
        PORT_UP, PortState, Slow, decrement_ttl, fast_ip, fast_tcp, fib_verdict, partial_checksum,
    },
    nat::{BindingKey, Flow, FlowKey, NatConfig, PROTO_TCP, PROTO_UDP},
};

use netns_common::{
    packet::TcpHead,
    tcp::Segment,
    translate::{self as nat, Res, Tables},
};

use crate::{
    maps::{FAST_CONFIG, Maps, NAT_FDB, NAT_FLOWS, NAT_PORTS, UPLINK_COUNTERS, bump, count},
    packet::{Action, Hook, Hooked, IP_CSUM_OFF, IP_OFF, IpHdr, TCP_CSUM, UDP_CSUM, ip_header_ok},
};

const AF_INET: u8 = 2;
/// `bpf_check_mtu` of an interface that no longer exists.
const ENODEV: i64 = -19;
/// Offset of the TTL (the first byte of the TTL/protocol word).
const IP_TTL_OFF: usize = IP_OFF + 8;
/// The L4 header of a fast-path packet: `fast_ip` admits no IP options.
const L4: usize = IP_OFF + 20;

/// The fast path's configuration, when it is on at this hook.
#[inline(always)]
fn config(hook: Hook) -> Option<&'static FastConfig> {
    let mode = match hook {
        Hook::Tc => FAST_TC,
        Hook::Xdp => FAST_XDP,
    };
    FAST_CONFIG.get(0).filter(|c| c.mode == mode)
}

/// The fast-path counter of a hook and direction.
#[inline(always)]
fn fast_counter(hook: Hook, outbound: bool) -> NatCounter {
    match (hook, outbound) {
        (Hook::Tc, true) => NatCounter::FastOutTc,
        (Hook::Tc, false) => NatCounter::FastInTc,
        (Hook::Xdp, true) => NatCounter::FastOutXdp,
        (Hook::Xdp, false) => NatCounter::FastInXdp,
    }
}

#[inline(always)]
fn ip_facts(ip: &IpHdr) -> IpFacts {
    IpFacts {
        ver_ihl: ip.ver_ihl,
        frag_off: u16::from_be(ip.frag_off),
        ttl: ip.ttl,
        proto: ip.proto,
    }
}

/// Remembers behind which port MAC `mac` sits (a frame from it arrived here), as the
/// bridge would. Written when it moved or a second went by, so a busy host costs one lookup
/// per packet. True when this frame should pass the bridge (the slow path), for the bridge
/// to see the host again before its own entry ages out.
// Keys by reference: passed by value, LLVM gives xdp_fast_out a path that reads an
// unset register, which the verifier refuses.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn learn<P: Hooked>(ctx: &P, mac: [u8; 6], fc: &FastConfig, now: u64) -> bool {
    let key = MacKey::of(mac);
    let port = ctx.ifindex();
    if let Some(e) = NAT_FDB.get_ptr_mut(&key) {
        // Safety: a pointer from a successful lookup; the fields are written as plain
        // stores (a lost one is a second's age).
        let e = unsafe { &mut *e };
        if e.ifindex == port {
            if now.saturating_sub(e.seen_ns) >= 1_000_000_000 {
                e.seen_ns = now;
            }
            if e.bridge_due(now, fc.bridge_refresh_ns) {
                e.bridged_ns = now;
                return true;
            }
            return false;
        }
    }
    let fresh = FdbEntry {
        ifindex: port,
        _pad: 0,
        seen_ns: now,
        bridged_ns: now,
    };
    let _ = NAT_FDB.insert(&key, &fresh, 0);
    // A host new here (or moved): the bridge, if there is one, learns it from this frame.
    fc.bridge_refresh_ns != 0
}

/// What the loader or agent last wrote of port `ifindex`.
// Keys by reference: passed by value, LLVM gives xdp_fast_out a path that reads an
// unset register, which the verifier refuses.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn port_state(ifindex: u32) -> Option<PortState> {
    // Safety: a pointer from a successful lookup, copied at once (8 bytes, written whole by
    // user space).
    NAT_PORTS.get_ptr(&ifindex).map(|p| unsafe { *p })
}

/// The interface the router routes a packet arriving on port `ifindex` from: the port's
/// bridge, or the port itself.
#[inline(always)]
fn routed_from(ifindex: u32) -> u32 {
    match port_state(ifindex) {
        Some(p) if p.master != 0 => p.master,
        _ => ifindex,
    }
}

/// The port to hand a packet for internal host MAC `mac`, routed to `via` (a bridge, or a
/// port of the router's): the port itself, or the bridge port the host was last seen behind,
/// if that port is up and still the bridge's.
// Keys by reference: passed by value, LLVM gives xdp_fast_out a path that reads an
// unset register, which the verifier refuses.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn port_for(via: u32, mac: &[u8; 6], now: u64) -> Result<u32, Slow> {
    match port_state(via) {
        Some(p) if p.flags & PORT_BRIDGE != 0 => {}
        Some(p) if p.master == 0 && p.flags & PORT_UP != 0 => return Ok(via),
        Some(p) if p.master == 0 => return Err(Slow::Policy),
        // A port of a bridge itself, or one the table does not know.
        _ => return Err(Slow::NoNeighbour),
    }
    // Safety: a pointer from a successful lookup, copied at once (a torn copy is at worst
    // a stale age).
    let Some(e) = NAT_FDB.get_ptr(&MacKey::of(*mac)).map(|e| unsafe { *e }) else {
        return Err(Slow::NoNeighbour);
    };
    if !e.fresh(now) {
        return Err(Slow::NoNeighbour);
    }
    let port = e.ifindex;
    match port_state(port) {
        Some(p) if p.master == via && p.flags & PORT_UP != 0 => Ok(port),
        // Down, or no longer this bridge's: the bridge would not send it there.
        Some(_) => Err(Slow::Policy),
        None => Err(Slow::NoNeighbour),
    }
}

/// The live flow `key` (a pointer into NAT_FLOWS) and its TCP state.
#[inline(always)]
fn live_flow(key: &FlowKey, now: u64) -> Option<(*mut Flow, u8)> {
    let f = NAT_FLOWS.get_ptr_mut(key)?;
    // Safety: a pointer from a successful lookup (the map is not preallocated, so the
    // element stays valid for the rest of the program), read at once.
    let (state, expires_ns) = unsafe { ((*f).state, (*f).expires_ns) };
    (now < expires_ns).then_some((f, state))
}

/// Where the hook cannot see offload state (XDP): whether the L4 checksum is complete, so
/// that incremental updates keep it right. A partial one is the slow path's, whose skb
/// helpers finish it.
#[inline(always)]
fn checksum_complete<P: Hooked>(ctx: &P, ip: &IpHdr) -> Res<Result<(), Slow>> {
    if P::SEES_OFFLOAD {
        return Ok(Ok(()));
    }
    let off = if ip.proto == PROTO_TCP {
        L4 + TCP_CSUM
    } else {
        L4 + UDP_CSUM
    };
    let c = u16::from_be(ctx.load(off).map_err(nat::malformed)?);
    if ip.proto == PROTO_UDP && c == 0 {
        return Ok(Ok(()));
    }
    let l4_len = u16::from_be(ip.tot_len).wrapping_sub(20);
    if partial_checksum(c, u32::from_be(ip.src), u32::from_be(ip.dst), ip.proto, l4_len) {
        return Ok(Err(Slow::PartialChecksum));
    }
    Ok(Ok(()))
}

/// Decrements the TTL in the packet and updates the IPv4 checksum as it is now (after any
/// translation).
#[inline(always)]
fn decrement_ttl_in_place<P: Hooked>(ctx: &P, ip: &IpHdr) -> Res<()> {
    let check: u16 = ctx.load(IP_CSUM_OFF).map_err(nat::malformed)?;
    let (ttl, check) = decrement_ttl(ip.ttl, ip.proto, check);
    // TTL, protocol and checksum are adjacent: one store (each helper call costs at TC).
    let c = check.to_ne_bytes();
    let word: [u8; 4] = [ttl, ip.proto, c[0], c[1]];
    ctx.store(IP_TTL_OFF, &word).map_err(nat::malformed)
}

/// Sets up the redirect to `ifindex` (to its peer's ingress with `peer`) before anything
/// is written: both hooks only record the target, applied when the program returns, so a
/// refusal leaves the packet untouched for the slow path.
#[inline(always)]
fn prepare_redirect<P: Hooked>(ctx: &P, ifindex: u32, peer: bool) -> Result<(), Slow> {
    if ctx.redirect(ifindex, peer) {
        Ok(())
    } else {
        Err(Slow::Redirect)
    }
}

/// Writes the MAC addresses of a packet whose redirect is prepared; counts it on the fast
/// path, and in the uplink's packet counters when the redirect skips the uplink's own TC
/// hook, where they are otherwise counted.
#[inline(always)]
fn write_macs_and_count<P: Hooked>(
    ctx: &P,
    dst: &[u8; 6],
    src: &[u8; 6],
    peer: bool,
    outbound: bool,
) -> Res<Action> {
    let macs: [[u8; 6]; 2] = [*dst, *src];
    ctx.store(0, &macs).map_err(nat::malformed)?;
    count(fast_counter(P::HOOK, outbound));
    // XDP runs before the uplink's TC ingress and sends past its TC egress; at TC only a
    // redirect into the uplink's peer skips its egress.
    if P::HOOK == Hook::Xdp || (outbound && peer) {
        let (packets, bytes) = if outbound {
            Direction::Egress.counters()
        } else {
            Direction::Ingress.counters()
        };
        bump(&UPLINK_COUNTERS, packets as u32, 1);
        bump(&UPLINK_COUNTERS, bytes as u32, u64::from(ctx.len()));
    }
    Ok(Action::Redirect)
}

/// The fast path's action, or the slow path (Pass) with its reason counted.
#[inline(always)]
fn or_slow(r: Result<Action, Slow>) -> Res<Action> {
    match r {
        Ok(a) => Ok(a),
        Err(why) => {
            count(why.into());
            Ok(Action::Pass)
        }
    }
}

/// Ingress of a bridge port: outbound packets.
pub fn outbound<P: Hooked>(ctx: &P) -> Res<Action> {
    let Some(fc) = config(P::HOOK) else {
        return Ok(Action::Pass);
    };
    let maps = Maps::on(ctx.ctx());
    let Some((h, cfg, _)) = nat::headers(ctx, &maps)? else {
        return Ok(Action::Pass);
    };
    let ip = h.ip;
    if !cfg.is_internal(ip.src) {
        return Ok(Action::Pass);
    }
    let macs = h.macs;
    let now = maps.now();
    let bridge_due = learn(ctx, macs[1], fc, now);
    // Only frames the router routes: to its MAC, and neither to another internal host nor
    // to its own external address (hairpinning is the bridge-side program's).
    if macs[0] != fc.gateway_mac || cfg.is_internal(ip.dst) || ip.dst == cfg.ext_addr {
        return Ok(Action::Pass);
    }
    or_slow(outbound_fast(ctx, &maps, cfg, fc, &ip, now, bridge_due)?)
}

/// The ports (wire order) and, for TCP, what the tracker needs of a fast-path segment (never
/// a SYN: its options are not read), with one load.
#[inline(always)]
fn l4<P: Hooked>(ctx: &P, ip: &IpHdr) -> Res<([u16; 2], Segment)> {
    if ip.proto != PROTO_TCP {
        let p: [u16; 2] = ctx.load(L4).map_err(nat::malformed)?;
        return Ok((p, Segment::default()));
    }
    let th: TcpHead = ctx.load(L4).map_err(nat::malformed)?;
    let seg = Segment {
        flags: th.flags(),
        seq: u32::from_be(th.seq),
        ack: u32::from_be(th.ack),
        win: u16::from_be(th.win),
        len: 0,
        wscale: netns_common::tcp::WSCALE_NONE,
    };
    Ok((th.ports, seg))
}

#[inline(always)]
fn outbound_fast<P: Hooked>(
    ctx: &P,
    maps: &Maps,
    cfg: &NatConfig,
    fc: &FastConfig,
    ip: &IpHdr,
    now: u64,
    bridge_due: bool,
) -> Res<Result<Action, Slow>> {
    if let Err(why) = fast_ip(&ip_facts(ip)) {
        return Ok(Err(why));
    }
    if !ip_header_ok(ip) {
        return Ok(Err(Slow::IpChecksum));
    }
    let (p, seg) = l4(ctx, ip)?;
    if let Err(why) = checksum_complete(ctx, ip)? {
        return Ok(Err(why));
    }
    let key = FlowKey::new(ip.proto, ip.src, p[0], ip.dst, p[1]);
    let Some((f, state)) = live_flow(&key, now) else {
        return Ok(Err(Slow::NoFlow));
    };
    if ip.proto == PROTO_TCP
        && let Err(why) = fast_tcp(seg.flags, state)
    {
        return Ok(Err(why));
    }
    // Safety: as in `live_flow`.
    let (ext_addr, ext_port) = unsafe { ((*f).ext_addr, (*f).ext_port) };
    // Safety: a zeroed plain-data struct.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = ip.proto;
    fib.sport = ext_port;
    fib.dport = p[1];
    // As the router routes it: from the port's bridge, through its policy rules and its
    // forwarding setting (a lookup refused by either is the kernel's to handle).
    fib.ifindex = routed_from(ctx.ifindex());
    fib.__bindgen_anon_3.ipv4_src = ext_addr;
    fib.__bindgen_anon_4.ipv4_dst = ip.dst;
    if let Err(why) = fib_verdict(ctx.fib_lookup(&mut fib, ip, 0)) {
        return Ok(Err(why));
    }
    if fib.ifindex != fc.uplink_ifindex {
        return Ok(Err(Slow::Policy));
    }
    // Any other reason to leave has been counted by now: this one only when the packet
    // would otherwise have taken the fast path (the bridge sees the frame either way).
    if bridge_due {
        return Ok(Err(Slow::BridgeRefresh));
    }
    let peer = fc.flags & PEER_UPLINK != 0;
    if let Err(why) = prepare_redirect(ctx, fc.uplink_ifindex, peer) {
        return Ok(Err(why));
    }
    // Safety: as in `live_flow`; every write into it follows a compare-and-swap (`touch`).
    if !nat::touch(
        maps,
        cfg,
        &key,
        unsafe { &mut *f },
        true,
        &seg,
        u64::from(ctx.len()),
        now,
    )? {
        return Ok(Err(Slow::NoFlow));
    }
    nat::rewrite(ctx, ip.proto, L4, true, (ip.src, ext_addr), (p[0], ext_port))?;
    decrement_ttl_in_place(ctx, ip)?;
    write_macs_and_count(ctx, &fib.dmac, &fib.smac, peer, true).map(Ok)
}

/// Ingress of the uplink: inbound packets, before the slow path's translation (which
/// runs only if this passes the packet on untouched). A function of its own in the kernel,
/// so that its stack frame and the slow path's are not one (the verifier allows 512 bytes
/// along a chain of calls).
#[inline(never)]
pub fn inbound<P: Hooked>(ctx: &P) -> Res<Action> {
    let Some(fc) = config(P::HOOK) else {
        return Ok(Action::Pass);
    };
    let maps = Maps::on(ctx.ctx());
    let Some((h, cfg, _)) = nat::headers(ctx, &maps)? else {
        return Ok(Action::Pass);
    };
    let ip = h.ip;
    if ip.dst != cfg.ext_addr {
        return Ok(Action::Pass);
    }
    or_slow(inbound_fast(ctx, &maps, cfg, fc, &ip)?)
}

#[inline(always)]
fn inbound_fast<P: Hooked>(
    ctx: &P,
    maps: &Maps,
    cfg: &NatConfig,
    fc: &FastConfig,
    ip: &IpHdr,
) -> Res<Result<Action, Slow>> {
    if let Err(why) = fast_ip(&ip_facts(ip)) {
        return Ok(Err(why));
    }
    if !ip_header_ok(ip) {
        return Ok(Err(Slow::IpChecksum));
    }
    let (p, seg) = l4(ctx, ip)?;
    if let Err(why) = checksum_complete(ctx, ip)? {
        return Ok(Err(why));
    }
    let Some(b) = maps.binding(&BindingKey::external(ip.proto, ip.dst, p[1])) else {
        return Ok(Err(Slow::NoFlow));
    };
    let now = maps.now();
    let key = FlowKey::new(ip.proto, b.int_addr, b.int_port, ip.src, p[0]);
    let Some((f, state)) = live_flow(&key, now) else {
        return Ok(Err(Slow::NoFlow));
    };
    if ip.proto == PROTO_TCP
        && let Err(why) = fast_tcp(seg.flags, state)
    {
        return Ok(Err(why));
    }
    // The next hop as the router has it: its FIB from the uplink (policy rules, forwarding
    // on) to the internal host, whose MAC its neighbour table knows; then the port that MAC
    // was last seen behind.
    // Safety: a zeroed plain-data struct.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = ip.proto;
    fib.sport = p[0];
    fib.dport = b.int_port;
    fib.ifindex = ctx.ifindex();
    fib.__bindgen_anon_3.ipv4_src = ip.src;
    fib.__bindgen_anon_4.ipv4_dst = b.int_addr;
    if let Err(why) = fib_verdict(ctx.fib_lookup(&mut fib, ip, 0)) {
        return Ok(Err(why));
    }
    let port = match port_for(fib.ifindex, &fib.dmac, now) {
        Ok(port) => port,
        Err(why) => return Ok(Err(why)),
    };
    match ctx.check_mtu(port) {
        0 => {}
        // The port is gone: a redirect would vanish.
        ENODEV => return Ok(Err(Slow::Redirect)),
        _ => return Ok(Err(Slow::Mtu)),
    }
    let peer = fc.flags & PEER_PORTS != 0;
    if let Err(why) = prepare_redirect(ctx, port, peer) {
        return Ok(Err(why));
    }
    // Safety: as in `live_flow`; every write into it follows a compare-and-swap (`touch`).
    if !nat::touch(
        maps,
        cfg,
        &key,
        unsafe { &mut *f },
        false,
        &seg,
        u64::from(ctx.len()),
        now,
    )? {
        return Ok(Err(Slow::NoFlow));
    }
    nat::rewrite(ctx, ip.proto, L4, false, (ip.dst, b.int_addr), (p[1], b.int_port))?;
    decrement_ttl_in_place(ctx, ip)?;
    write_macs_and_count(ctx, &fib.dmac, &fib.smac, peer, false).map(Ok)
}
