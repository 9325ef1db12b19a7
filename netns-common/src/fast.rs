//! The fast path: packets of established flows skip the bridge and routing. Outbound (TCX
//! or XDP ingress of the bridge ports) they are translated and redirected straight to the
//! uplink, the next hop from the kernel's FIB; inbound (TCX or XDP ingress of the uplink)
//! straight to the bridge port behind which the internal host was last seen. Everything
//! else goes on to the slow path (the kernel's bridge and routing, and the NAT programs on
//! the uplink), so state is created and TCP states advance in one place; the fast path only
//! refreshes the same conntrack entries, checking everything before it changes anything.
//!
//! Written once for both hooks and the host: the packet and the kernel's forwarding helpers
//! come through [`Forwarding`] (TC, XDP, or a frame in memory), the state through
//! [`FastTables`] (the maps, or tables in memory), as [`crate::translate`] does.

use crate::wire::{WireAddr, WirePort};
use crate::{
    counters::{Direction, NatCounter},
    fwd::{
        FAST_XDP, FastConfig, FdbEntry, HopCache, IpFacts, LearnHint, MacKey, NextHop, PEER_PORTS,
        PEER_UPLINK, PORT_BRIDGE, PORT_UP, PortState, Slow, decrement_ttl, fast_ip, fast_tcp, fib_verdict,
        kernel_would_route, partial_checksum, routable_ip,
    },
    nat::{BindingKey, DIR_IN, DIR_OUT, Flow, FlowKey, NatConfig, PROTO_TCP, PROTO_UDP},
    packet::{Action, IP_CSUM_OFF, IP_OFF, IpHdr, Packet, TCP_CSUM, TcpHead, UDP_CSUM, ip_header_ok},
    tcp::{Segment, WSCALE_NONE},
    translate::{self as nat, Res, Tables},
};

/// `bpf_check_mtu` of an interface that no longer exists (-ENODEV).
pub const ENODEV: i64 = -19;
/// Offset of the TTL (the first byte of the TTL/protocol word).
const IP_TTL_OFF: usize = IP_OFF + 8;
/// The L4 header of a fast-path packet: `fast_ip` admits no IP options.
const L4: usize = IP_OFF + 20;
/// A second: how often a busy host's forwarding entry is rewritten.
const SEEN_EVERY_NS: u64 = 1_000_000_000;

/// What a FIB lookup is asked: the packet as the router would route it. Addresses and ports
/// in wire order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FibQuery {
    /// The interface the router routes the packet from.
    pub ifindex: u32,
    pub src: WireAddr,
    pub dst: WireAddr,
    pub sport: WirePort,
    pub dport: WirePort,
    pub proto: u8,
    /// The IPv4 total length (host order): what a hook without an skb has the lookup check
    /// against the MTU.
    pub tot_len: u16,
}

/// A packet at a fast-path hook with the kernel's forwarding helpers: TC and XDP in the
/// kernel, a frame and a routing table in memory on the host.
pub trait Forwarding: Packet {
    /// The fast-path mode this hook serves ([`crate::fwd::FAST_TC`] or [`FAST_XDP`]).
    const MODE: u32;
    /// Whether the hook knows a packet's checksum offload state (an skb does; XDP does not).
    const SEES_OFFLOAD: bool;
    /// Whether the hook can hand a packet to a bridge's own transmit, which forwards it by
    /// the bridge's FDB (TC can; XDP cannot: a bridge has no XDP transmit).
    const REACHES_BRIDGES: bool;
    /// Whether flows keep their next hops (and inbound ports) at this hook: only where the
    /// FIB lookup tells the egress MTU, which a cached next hop is checked against (TC).
    const KEEPS_HOPS: bool;
    /// The kernel's FIB lookup: its `BPF_FIB_LKUP_RET_*` answer and, on success, the next
    /// hop (returned whole rather than filled in, so that nothing is zeroed first) and the
    /// egress interface's MTU where the hook's lookup gives it (0 where not: XDP, whose
    /// next hops are then not cached).
    fn fib_lookup(&self, q: &FibQuery) -> (i64, NextHop, u16);
    /// Whether the packet may leave by an interface of MTU `mtu`, as the lookup would have
    /// said: the check a cached next hop makes instead.
    fn fits(&self, mtu: u16) -> bool;
    /// Whether the packet fits the MTU of `ifindex`: 0 if it does, [`ENODEV`] if there is no
    /// such interface (any longer), anything else if it does not.
    fn check_mtu(&self, ifindex: u32) -> i64;
    /// Sets up a redirect to the egress of `ifindex` or, with `peer` where the hook can, to
    /// the ingress of its veth peer; false if the hook refused it. Applied when the program
    /// returns it, so a refusal leaves the packet as it was.
    fn redirect(&self, ifindex: u32, peer: bool) -> bool;
}

/// The fast path's own state beside the NAT's tables: its configuration, the router's
/// ports, where internal MAC addresses were seen, and the uplink's packet counters.
pub trait FastTables: Tables {
    fn fast_config(&self) -> Option<&FastConfig>;
    /// What the loader or agent last wrote of port `ifindex`.
    fn port(&self, ifindex: u32) -> Option<PortState>;
    fn fdb(&self, mac: &MacKey) -> Option<FdbEntry>;
    /// Runs `f` on the entry of `mac` in place (plain stores: a lost one is a second's age).
    fn with_fdb<R>(&self, mac: &MacKey, f: impl FnOnce(&mut FdbEntry) -> R) -> Option<R>;
    /// Adds or replaces the entry of `mac`, then moves the FDB generation on.
    fn insert_fdb(&self, mac: &MacKey, e: &FdbEntry);
    /// The FDB generation: moved on by every entry added or moved.
    fn fdb_generation(&self) -> u64;
    /// Runs `f` on this CPU's [`LearnHint`].
    fn with_learn_hint<R>(&self, f: impl FnOnce(&mut LearnHint) -> R) -> Option<R>;
    /// Counts a packet of `bytes` in the uplink's counters of direction `dir`.
    fn count_uplink(&self, dir: Direction, bytes: u64);
    /// The time as the fast path takes it: the clock of [`Tables::now`] at a tick's
    /// resolution, which is cheaper to read (no clock source read). Expiries are seconds
    /// long, and a flow's creation time, which tells reused elements apart, is only ever
    /// taken from `now`.
    fn now_coarse(&self) -> u64 {
        self.now()
    }
}

/// The fast path's configuration, when it is on at this hook.
#[inline(always)]
fn config<P: Forwarding, T: FastTables>(t: &T) -> Option<&FastConfig> {
    t.fast_config().filter(|c| c.mode == P::MODE)
}

/// The fast-path counter of a hook and direction.
#[inline(always)]
pub const fn fast_counter(mode: u32, outbound: bool) -> NatCounter {
    match (mode == FAST_XDP, outbound) {
        (false, true) => NatCounter::FastOutTc,
        (false, false) => NatCounter::FastInTc,
        (true, true) => NatCounter::FastOutXdp,
        (true, false) => NatCounter::FastInXdp,
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
/// bridge would. Written when it moved or a second went by; looked up only when this CPU's
/// [`LearnHint`] does not cover the frame, so a busy host costs each CPU one lookup a second
/// (the lookup was an eighth of the fast path's time). True when this frame should pass the
/// bridge (the slow path), for the bridge to see the host again before its own entry ages
/// out.
#[inline(always)]
fn learn<P: Forwarding, T: FastTables>(ctx: &P, t: &T, mac: &[u8; 6], fc: &FastConfig, now: u64) -> bool {
    let port = ctx.ifindex();
    // Read before the lookup: an entry added or moved meanwhile makes the note stale.
    let fdb_gen = t.fdb_generation();
    if t.with_learn_hint(|h| h.covers(mac, port, fc.hop_gen, fdb_gen, now)) == Some(true) {
        return false;
    }
    let key = MacKey::of(*mac);
    let mut until = 0;
    // 0: not here (moved, or new); 1: here, nothing due; 2: here, a bridge refresh due.
    // (Closures return plain values: see `translate::flows::touch_live`.)
    let here = t.with_fdb(
        &key,
        #[cfg_attr(target_arch = "bpf", inline(always))]
        |e| {
            if e.ifindex != port {
                return 0u8;
            }
            if now.saturating_sub(e.seen_ns) >= SEEN_EVERY_NS {
                e.seen_ns = now;
            }
            if e.bridge_due(now, fc.bridge_refresh_ns) {
                e.bridged_ns = now;
                return 2;
            }
            until = e.quiet_until(SEEN_EVERY_NS, fc.bridge_refresh_ns);
            1
        },
    );
    match here {
        Some(1) => {
            t.with_learn_hint(|h| {
                *h = LearnHint {
                    mac: *mac,
                    _pad: 0,
                    port,
                    config_gen: fc.hop_gen,
                    fdb_gen,
                    until_ns: until,
                }
            });
            return false;
        }
        Some(2) => return true,
        _ => {}
    }
    let fresh = FdbEntry {
        ifindex: port,
        _pad: 0,
        seen_ns: now,
        bridged_ns: now,
    };
    t.insert_fdb(&key, &fresh);
    // A host new here (or moved): the bridge, if there is one, learns it from this frame.
    fc.bridge_refresh_ns != 0
}

/// The interface the router routes a packet arriving on port `ifindex` from: the port's
/// bridge, or the port itself.
#[inline(always)]
fn routed_from<T: FastTables>(t: &T, ifindex: u32) -> u32 {
    match t.port(ifindex) {
        Some(p) if p.master != 0 => p.master,
        _ => ifindex,
    }
}

/// Where to hand a packet for internal host MAC `mac`, routed to `via` (a bridge, or a
/// port of the router's), and whether that is a port (true: the packet may go straight to
/// its peer) or the bridge itself: the port itself; the bridge port the host was last seen
/// behind, if that port is up and still the bridge's; or, where the fast path has not seen
/// the host lately (a host that only receives sends it nothing) and the hook can, the
/// bridge's own transmit, which forwards by the bridge's FDB as the slow path would. The
/// FDB then notes the host as behind the bridge itself, and every bridge refresh period
/// one packet takes the slow path: the router uses its neighbour entry, whose probes the
/// host answers through the bridge, so the bridge keeps knowing the host's port (it would
/// flood the host's packets to every port once it forgot).
#[inline(always)]
fn port_for<P: Forwarding, T: FastTables>(
    t: &T,
    fc: &FastConfig,
    via: u32,
    mac: &[u8; 6],
    now: u64,
) -> Result<(u32, bool), Slow> {
    match t.port(via) {
        Some(p) if p.flags & PORT_BRIDGE != 0 => {}
        Some(p) if p.master == 0 && p.flags & PORT_UP != 0 => return Ok((via, true)),
        Some(p) if p.master == 0 => return Err(Slow::Policy),
        // A port of a bridge itself, or one the table does not know.
        _ => return Err(Slow::NoNeighbour),
    }
    let key = MacKey::of(*mac);
    let entry = t.fdb(&key);
    match entry {
        Some(e) if e.ifindex != via && e.fresh(now) => {
            let port = e.ifindex;
            return match t.port(port) {
                Some(p) if p.master == via && p.flags & PORT_UP != 0 => Ok((port, true)),
                // Down, or no longer this bridge's: the bridge would not send it there.
                Some(_) => Err(Slow::Policy),
                None => Err(Slow::NoNeighbour),
            };
        }
        _ if !P::REACHES_BRIDGES => return Err(Slow::NoNeighbour),
        Some(e) if e.ifindex == via => {
            if e.bridge_due(now, fc.bridge_refresh_ns) {
                // Plain stores, as in `learn`: two CPUs may each let one through.
                t.with_fdb(&key, |e| e.bridged_ns = now);
                return Err(Slow::BridgeRefresh);
            }
        }
        // Not seen, or not lately: behind the bridge from now on.
        _ => t.insert_fdb(
            &key,
            &FdbEntry {
                ifindex: via,
                _pad: 0,
                seen_ns: now,
                bridged_ns: now,
            },
        ),
    }
    Ok((via, false))
}

/// Where the hook cannot see offload state (XDP): whether the L4 checksum is complete, so
/// that incremental updates keep it right. A partial one is the slow path's, whose skb
/// helpers finish it.
#[inline(always)]
fn checksum_complete<P: Forwarding>(ctx: &P, ip: &IpHdr) -> Res<Result<(), Slow>> {
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
    if partial_checksum(c, ip.src.to_host(), ip.dst.to_host(), ip.proto, l4_len) {
        return Ok(Err(Slow::PartialChecksum));
    }
    Ok(Ok(()))
}

/// Decrements the TTL in the packet and updates the IPv4 checksum as it is now (after any
/// translation).
#[inline(always)]
fn decrement_ttl_in_place<P: Packet>(ctx: &P, ip: &IpHdr) -> Res<()> {
    let check: u16 = ctx.load(IP_CSUM_OFF).map_err(nat::malformed)?;
    let (ttl, check) = decrement_ttl(ip.ttl, ip.proto, check);
    // TTL, protocol and checksum are adjacent: one store (each helper call costs at TC).
    let c = check.to_ne_bytes();
    let word: [u8; 4] = [ttl, ip.proto, c[0], c[1]];
    ctx.store(IP_TTL_OFF, &word).map_err(nat::malformed)
}

/// The next hop: the flow's cached one while it holds (checked against the egress MTU as
/// the lookup would check the packet), else the kernel's FIB lookup of the query `query`
/// makes (only then: outbound, its interface costs a table lookup of its own), returned
/// with its MTU for [`keep_hop`] to cache once the flow is known to be this packet's.
#[inline(always)]
fn next_hop<P: Forwarding>(
    ctx: &P,
    fc: &FastConfig,
    cache: &HopCache,
    now: u64,
    query: impl FnOnce() -> FibQuery,
) -> Result<(NextHop, Option<u16>), Slow> {
    match cache.get(fc.hop_gen, now) {
        Some((_, mtu)) if !ctx.fits(mtu) => Err(Slow::Mtu),
        Some((hop, _)) => Ok((hop, None)),
        None => {
            let (rc, hop, mtu) = ctx.fib_lookup(&query());
            fib_verdict(rc)?;
            Ok((hop, (mtu != 0).then_some(mtu)))
        }
    }
}

/// Caches a next hop [`next_hop`] looked up (`fresh`: its MTU) in the flow.
#[inline(always)]
fn keep_hop(fc: &FastConfig, cache: &mut HopCache, hop: &NextHop, fresh: Option<u16>, now: u64) {
    if let Some(mtu) = fresh {
        cache.put(fc.hop_gen, now, hop, mtu);
    }
}

/// Sets up the redirect to `ifindex` (to its peer's ingress with `peer`) before anything
/// is written: both hooks only record the target, applied when the program returns, so a
/// refusal leaves the packet untouched for the slow path.
#[inline(always)]
fn prepare_redirect<P: Forwarding>(ctx: &P, ifindex: u32, peer: bool) -> Result<(), Slow> {
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
fn write_macs_and_count<P: Forwarding, T: FastTables>(
    ctx: &P,
    t: &T,
    hop: &NextHop,
    peer: bool,
    outbound: bool,
) -> Res<Action> {
    let macs: [[u8; 6]; 2] = [hop.dst_mac, hop.src_mac];
    ctx.store(0, &macs).map_err(nat::malformed)?;
    t.count(fast_counter(P::MODE, outbound));
    // XDP runs before the uplink's TC ingress and sends past its TC egress; at TC only a
    // redirect into the uplink's peer skips its egress.
    if P::MODE == FAST_XDP || (outbound && peer) {
        let dir = if outbound {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        t.count_uplink(dir, u64::from(ctx.len()));
    }
    Ok(Action::Redirect)
}

/// The fast path's action, or the slow path (Pass) with its reason counted.
#[inline(always)]
fn or_slow<T: Tables>(t: &T, r: Result<Action, Slow>) -> Action {
    match r {
        Ok(a) => a,
        Err(why) => {
            t.count(why.into());
            Action::Pass
        }
    }
}

/// Ingress of a bridge port: outbound packets. Inlined into the program: a call would put
/// its frame on top of the program's (the verifier allows 512 bytes along a chain).
#[inline(always)]
pub fn outbound<P: Forwarding, T: FastTables>(ctx: &P, t: &T) -> Res<Action> {
    let Some(fc) = config::<P, T>(t) else {
        return Ok(Action::Pass);
    };
    let Some((h, cfg, _)) = nat::headers(ctx, t)? else {
        return Ok(Action::Pass);
    };
    let ip = h.ip;
    if !cfg.is_internal(ip.src) {
        return Ok(Action::Pass);
    }
    let macs = h.macs;
    let now = t.now_coarse();
    let bridge_due = learn(ctx, t, &macs[1], fc, now);
    // Only frames the router routes: to its MAC, and neither to another internal host nor
    // to its own external address (hairpinning is the bridge-side program's).
    if macs[0] != fc.gateway_mac || cfg.is_internal(ip.dst) || ip.dst == cfg.ext_addr {
        return Ok(Action::Pass);
    }
    outbound_fast(ctx, t, cfg, fc, &ip, now, bridge_due)
}

/// The ports (wire order) and, for TCP, what the tracker needs of a fast-path segment (never
/// a SYN: its options are not read), with one load.
#[inline(always)]
fn l4<P: Packet>(ctx: &P, ip: &IpHdr) -> Res<([WirePort; 2], Segment)> {
    if ip.proto != PROTO_TCP {
        let p: [WirePort; 2] = ctx.load(L4).map_err(nat::malformed)?;
        return Ok((p, Segment::default()));
    }
    let th: TcpHead = ctx.load(L4).map_err(nat::malformed)?;
    let seg = Segment {
        flags: th.flags(),
        seq: u32::from_be(th.seq),
        ack: u32::from_be(th.ack),
        win: u16::from_be(th.win),
        len: 0,
        wscale: WSCALE_NONE,
    };
    Ok((th.ports, seg))
}

/// What every fast-path packet must be before its flow is looked up: its ports and TCP
/// facts, or the reason it takes the slow path.
#[inline(always)]
fn fast_packet<P: Forwarding>(ctx: &P, ip: &IpHdr) -> Res<Result<([WirePort; 2], Segment), Slow>> {
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
    Ok(Ok((p, seg)))
}

/// The flow's TCP state allows the fast path (UDP: always), and it is live.
#[inline(always)]
fn flow_ok(f: &Flow, proto: u8, seg: &Segment, now: u64) -> Result<(), Slow> {
    if now >= f.expires_ns {
        return Err(Slow::NoFlow);
    }
    if proto == PROTO_TCP {
        fast_tcp(seg.flags, f.state)?;
    }
    Ok(())
}

#[inline(always)]
fn outbound_fast<P: Forwarding, T: FastTables>(
    ctx: &P,
    t: &T,
    cfg: &NatConfig,
    fc: &FastConfig,
    ip: &IpHdr,
    now: u64,
    bridge_due: bool,
) -> Res<Action> {
    let (p, seg) = match fast_packet(ctx, ip)? {
        Ok(l4) => l4,
        Err(why) => return Ok(or_slow(t, Err(why))),
    };
    let key = FlowKey::new(ip.proto, ip.src, p[0], ip.dst, p[1]);
    // Everything from here runs on the flow in place (one lookup).
    let done = t.with_flow(
        &key,
        #[cfg_attr(target_arch = "bpf", inline(always))]
        |f| outbound_flow(ctx, t, cfg, fc, ip, &key, f, &p, &seg, now, bridge_due),
    );
    match done {
        Some(r) => r,
        None => Ok(or_slow(t, Err(Slow::NoFlow))),
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "the packet, its headers and flow, both configurations and the time"
)]
#[inline(always)]
fn outbound_flow<P: Forwarding, T: FastTables>(
    ctx: &P,
    t: &T,
    cfg: &NatConfig,
    fc: &FastConfig,
    ip: &IpHdr,
    key: &FlowKey,
    f: &mut Flow,
    p: &[WirePort; 2],
    seg: &Segment,
    now: u64,
    bridge_due: bool,
) -> Res<Action> {
    if let Err(why) = flow_ok(f, ip.proto, seg, now) {
        return Ok(or_slow(t, Err(why)));
    }
    let (ext_addr, ext_port) = (f.ext_addr, f.ext_port);
    // As the router routes it: from the port's bridge, through its policy rules and its
    // forwarding setting (a lookup refused by either is the kernel's to handle).
    let found = next_hop(
        ctx,
        fc,
        &f.hops[DIR_OUT],
        now,
        #[cfg_attr(target_arch = "bpf", inline(always))]
        || FibQuery {
            ifindex: routed_from(t, ctx.ifindex()),
            src: ext_addr,
            dst: ip.dst,
            sport: ext_port,
            dport: p[1],
            proto: ip.proto,
            tot_len: u16::from_be(ip.tot_len),
        },
    );
    let (hop, fresh) = match found {
        Ok(h) => h,
        Err(why) => return Ok(or_slow(t, Err(why))),
    };
    if hop.ifindex != fc.uplink_ifindex {
        return Ok(or_slow(t, Err(Slow::Policy)));
    }
    // Any other reason to leave has been counted by now: this one only when the packet
    // would otherwise have taken the fast path (the bridge sees the frame either way).
    if bridge_due {
        return Ok(or_slow(t, Err(Slow::BridgeRefresh)));
    }
    let peer = fc.flags & PEER_UPLINK != 0;
    if let Err(why) = prepare_redirect(ctx, fc.uplink_ifindex, peer) {
        return Ok(or_slow(t, Err(why)));
    }
    // Every write into the flow follows a compare-and-swap (`touch`).
    if !nat::touch(t, cfg, key, f, true, seg, u64::from(ctx.len()), now)? {
        return Ok(or_slow(t, Err(Slow::NoFlow)));
    }
    keep_hop(fc, &mut f.hops[DIR_OUT], &hop, fresh, now);
    nat::rewrite(ctx, ip.proto, L4, true, (ip.src, ext_addr), (p[0], ext_port))?;
    decrement_ttl_in_place(ctx, ip)?;
    write_macs_and_count(ctx, t, &hop, peer, true)
}

/// Ingress of the uplink: inbound packets, before the slow path's translation (which
/// runs only if this passes the packet on untouched). A function of its own in the kernel,
/// so that its stack frame and the slow path's are not one (the verifier allows 512 bytes
/// along a chain of calls).
#[inline(never)]
pub fn inbound<P: Forwarding, T: FastTables>(ctx: &P, t: &T) -> Res<Action> {
    let Some(fc) = config::<P, T>(t) else {
        return Ok(Action::Pass);
    };
    let Some((h, cfg, _)) = nat::headers(ctx, t)? else {
        return Ok(Action::Pass);
    };
    let ip = h.ip;
    if ip.dst != cfg.ext_addr {
        return Ok(Action::Pass);
    }
    inbound_fast(ctx, t, cfg, fc, &ip)
}

#[inline(always)]
fn inbound_fast<P: Forwarding, T: FastTables>(
    ctx: &P,
    t: &T,
    cfg: &NatConfig,
    fc: &FastConfig,
    ip: &IpHdr,
) -> Res<Action> {
    let (p, seg) = match fast_packet(ctx, ip)? {
        Ok(l4) => l4,
        Err(why) => return Ok(or_slow(t, Err(why))),
    };
    let Some(b) = t.binding(&BindingKey::external(ip.proto, ip.dst, p[1])) else {
        return Ok(or_slow(t, Err(Slow::NoFlow)));
    };
    let now = t.now_coarse();
    let key = FlowKey::new(ip.proto, b.int_addr, b.int_port, ip.src, p[0]);
    let int = (b.int_addr, b.int_port);
    let done = t.with_flow(
        &key,
        #[cfg_attr(target_arch = "bpf", inline(always))]
        |f| inbound_flow(ctx, t, cfg, fc, ip, &key, f, &p, int, &seg, now),
    );
    match done {
        Some(r) => r,
        None => Ok(or_slow(t, Err(Slow::NoFlow))),
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "the packet, its headers, flow and binding, both configurations and the time"
)]
#[inline(always)]
fn inbound_flow<P: Forwarding, T: FastTables>(
    ctx: &P,
    t: &T,
    cfg: &NatConfig,
    fc: &FastConfig,
    ip: &IpHdr,
    key: &FlowKey,
    f: &mut Flow,
    p: &[WirePort; 2],
    int: (WireAddr, WirePort),
    seg: &Segment,
    now: u64,
) -> Res<Action> {
    if let Err(why) = flow_ok(f, ip.proto, seg, now) {
        return Ok(or_slow(t, Err(why)));
    }
    // Read before the port is looked for: an FDB change meanwhile makes the port found stale.
    let fdb_gen = if P::KEEPS_HOPS {
        t.fdb_generation() as u32
    } else {
        0
    };
    // The next hop as the router has it: its FIB from the uplink (policy rules, forwarding
    // on) to the internal host, whose MAC its neighbour table knows; then the port that MAC
    // was last seen behind, kept with the next hop while no FDB entry changes.
    let kept = if P::KEEPS_HOPS {
        f.hops[DIR_IN].port(fc.hop_gen, fdb_gen, now)
    } else {
        0
    };
    let found = next_hop(
        ctx,
        fc,
        &f.hops[DIR_IN],
        now,
        #[cfg_attr(target_arch = "bpf", inline(always))]
        || FibQuery {
            ifindex: ctx.ifindex(),
            src: ip.src,
            dst: int.0,
            sport: p[0],
            dport: int.1,
            proto: ip.proto,
            tot_len: u16::from_be(ip.tot_len),
        },
    );
    let (hop, fresh) = match found {
        Ok(h) => h,
        Err(why) => return Ok(or_slow(t, Err(why))),
    };
    let (port, to_port) = if kept != 0 {
        (kept, true)
    } else {
        match port_for::<P, T>(t, fc, hop.ifindex, &hop.dst_mac, now) {
            Ok(found) => found,
            Err(why) => return Ok(or_slow(t, Err(why))),
        }
    };
    match ctx.check_mtu(port) {
        0 => {}
        // The port is gone: a redirect would vanish.
        ENODEV => return Ok(or_slow(t, Err(Slow::Redirect))),
        _ => return Ok(or_slow(t, Err(Slow::Mtu))),
    }
    let peer = to_port && fc.flags & PEER_PORTS != 0;
    if let Err(why) = prepare_redirect(ctx, port, peer) {
        return Ok(or_slow(t, Err(why)));
    }
    // Every write into the flow follows a compare-and-swap (`touch`).
    if !nat::touch(t, cfg, key, f, false, seg, u64::from(ctx.len()), now)? {
        return Ok(or_slow(t, Err(Slow::NoFlow)));
    }
    keep_hop(fc, &mut f.hops[DIR_IN], &hop, fresh, now);
    // A port (not the bridge's own transmit, whose refresh needs the FDB) is kept.
    if P::KEEPS_HOPS && kept == 0 && to_port {
        f.hops[DIR_IN].keep_port(fc.hop_gen, port, fdb_gen);
    }
    nat::rewrite(ctx, ip.proto, L4, false, (ip.dst, int.0), (p[1], int.1))?;
    decrement_ttl_in_place(ctx, ip)?;
    write_macs_and_count(ctx, t, &hop, peer, false)
}

/// Ingress of a router port (a bridge port or the uplink) when the router runs no NAT
/// (`--nat none` with a fast path): a routed packet goes straight to its next hop as the
/// kernel's FIB has it (route, neighbour, MTU), its TTL decremented; the same next-hop and
/// port steps as the NAT's fast path, with no state of its own. What the kernel would not
/// forward this way (a local or broadcast destination, no route, an unresolved neighbour,
/// a last hop, options, fragments, out the way it came) goes to the kernel unchanged.
#[inline(always)]
pub fn routed<P: Forwarding, T: FastTables>(ctx: &P, t: &T) -> Res<Action> {
    let Some(fc) = config::<P, T>(t) else {
        return Ok(Action::Pass);
    };
    let Some(h) = crate::packet::eth_ipv4(ctx) else {
        return Ok(Action::Pass);
    };
    let arrived = ctx.ifindex();
    let now = t.now_coarse();
    // The interface the router routes it from, the MAC a routed frame is sent to there, and
    // whether the bridge is due to see this host.
    let (from, router_mac, bridge_due) = if arrived == fc.uplink_ifindex {
        (arrived, fc.uplink_mac, false)
    } else {
        match t.port(arrived) {
            Some(p) if p.master == fc.bridge_ifindex && p.master != 0 => {
                (p.master, fc.gateway_mac, learn(ctx, t, &h.macs[1], fc, now))
            }
            _ => return Ok(Action::Pass),
        }
    };
    // Another host's frame (bridged), or a broadcast: not routed.
    if h.macs[0] != router_mac {
        return Ok(Action::Pass);
    }
    let ip = h.ip;
    match route(ctx, t, fc, &ip, from, now, bridge_due) {
        Ok((hop, peer, outbound)) => {
            decrement_ttl_in_place(ctx, &ip)?;
            write_macs_and_count(ctx, t, &hop, peer, outbound)
        }
        Err(why) => Ok(or_slow(t, Err(why))),
    }
}

/// The next hop of a routed packet, with the redirect to it set up: the hop, whether the
/// redirect goes to the port's peer, and whether it leaves by the uplink.
#[inline(always)]
fn route<P: Forwarding, T: FastTables>(
    ctx: &P,
    t: &T,
    fc: &FastConfig,
    ip: &IpHdr,
    from: u32,
    now: u64,
    bridge_due: bool,
) -> Result<(NextHop, bool, bool), Slow> {
    routable_ip(&ip_facts(ip))?;
    if !ip_header_ok(ip) {
        return Err(Slow::IpChecksum);
    }
    kernel_would_route(
        ip.src.to_host(),
        ip.dst.to_host(),
        u16::from_be(ip.tot_len),
        ctx.len(),
    )?;
    // Ports for policy rules that match them (absent, or too short: none).
    let p: [WirePort; 2] = if ip.proto == PROTO_TCP || ip.proto == PROTO_UDP {
        ctx.load(L4).unwrap_or_default()
    } else {
        Default::default()
    };
    let (rc, hop, _) = ctx.fib_lookup(&FibQuery {
        ifindex: from,
        src: ip.src,
        dst: ip.dst,
        sport: p[0],
        dport: p[1],
        proto: ip.proto,
        tot_len: u16::from_be(ip.tot_len),
    });
    fib_verdict(rc)?;
    // Back out the way it came: the kernel owes the sender a redirect.
    if hop.ifindex == from {
        return Err(Slow::Policy);
    }
    let (port, to_port) = port_for::<P, T>(t, fc, hop.ifindex, &hop.dst_mac, now)?;
    // A bridge port: the lookup checked the bridge's MTU, not the port's.
    if port != hop.ifindex {
        match ctx.check_mtu(port) {
            0 => {}
            ENODEV => return Err(Slow::Redirect),
            _ => return Err(Slow::Mtu),
        }
    }
    if bridge_due {
        return Err(Slow::BridgeRefresh);
    }
    // Into the peer only where the flags vouch for one in another namespace: the uplink's,
    // or a bridge port's (found behind the bridge); any other interface gets a plain
    // redirect (a peer redirect to it would be lost).
    let outbound = port == fc.uplink_ifindex;
    let peer_flag = if outbound {
        PEER_UPLINK
    } else if port != hop.ifindex {
        PEER_PORTS
    } else {
        0
    };
    let peer = to_port && fc.flags & peer_flag != 0;
    prepare_redirect(ctx, port, peer)?;
    Ok((hop, peer, outbound))
}
