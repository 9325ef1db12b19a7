//! The NAT, packet by packet: SNAT of outbound flows, DNAT through port forwards, replies
//! both ways, ICMP errors, fragments and hairpinning. Generic over the [`Packet`] (TC, XDP,
//! or a frame in memory) and the [`Tables`] holding the state (the eBPF maps, or
//! [`crate::host`]'s tables), so the same code runs in the kernel and in host tests, where
//! it is property-tested and fuzzed. Decisions that need no state (TCP states, timeouts,
//! port candidates, checksum arithmetic) come from [`crate::nat`] and [`crate::csum`].

use crate::{
    counters::NatCounter,
    csum,
    nat::{
        Binding, BindingKey, FLAG_DROP_UNSUPPORTED, FLAG_ENDPOINT_INDEPENDENT_FILTERING, Flow, FlowKey,
        FragKey, FragPorts, NatConfig, ORIGIN_INBOUND, ORIGIN_OUTBOUND, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
        PortRange, TcpState, holds_binding, port_candidate, port_from_wire, port_to_wire, tcp_next,
    },
    packet::*,
};

/// Why an exclusive insert failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertError {
    /// The key is there already.
    Exists,
    /// The table is full (or out of memory).
    Full,
}

/// The NAT's state and the few things it asks of its surroundings. In the kernel: the
/// maps and helpers; on the host: tables in memory, a clock and a generator the test sets.
/// Methods take `&self`: map elements are updated in place, as the kernel's are.
pub trait Tables {
    fn config(&self) -> Option<&NatConfig>;
    /// Monotonic nanoseconds.
    fn now(&self) -> u64;
    fn random(&self) -> u32;
    fn count(&self, c: NatCounter);
    /// Adds to a counter of a shared entry (atomically where CPUs share it).
    fn add(counter: &mut u64, by: u64);
    /// The same for a 32-bit count (wrapping: adding `u32::MAX` takes one away).
    fn add32(counter: &mut u32, by: u32);
    /// Moves a flow's TCP state from `old` to `new` if it still is `old` (atomically where
    /// CPUs share the flow); whether this call made the change.
    fn swap_state(f: &mut Flow, old: u8, new: u8) -> bool;
    /// Sets `word` to `new` if it still is `old` (atomically where CPUs share it); else
    /// the value found there.
    fn cas_u64(word: &mut u64, old: u64, new: u64) -> Result<(), u64>;
    fn binding(&self, key: &BindingKey) -> Option<Binding>;
    /// Runs `f` on the binding in place, if there is one.
    fn with_binding<R>(&self, key: &BindingKey, f: impl FnOnce(&mut Binding) -> R) -> Option<R>;
    /// Inserts only if `key` is absent.
    fn insert_binding(&self, key: &BindingKey, b: &Binding) -> Result<(), InsertError>;
    fn remove_binding(&self, key: &BindingKey);
    /// Runs `f` on the flow in place, if there is one.
    fn with_flow<R>(&self, key: &FlowKey, f: impl FnOnce(&mut Flow) -> R) -> Option<R>;
    /// Inserts or replaces.
    fn insert_flow(&self, key: &FlowKey, f: &Flow) -> Result<(), InsertError>;
    fn frag(&self, key: &FragKey) -> Option<FragPorts>;
    /// Remembers a first fragment's ports (best effort: the table forgets the oldest).
    fn insert_frag(&self, key: &FragKey, p: &FragPorts);
    /// Runs [`try_port`] for candidates 0, 1, ... up to [`MAX_PORT_TRIES`](crate::nat::MAX_PORT_TRIES) until it says
    /// the search is over.
    fn search_ports(&self, s: &mut PortSearch);
}

/// Why a packet is dropped; each has its counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    NoPort,
    Unsolicited,
    Malformed,
    MapFull,
    Unsupported,
    FragmentUnknown,
    BadChecksum,
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
            Drop::BadChecksum => NatCounter::DropBadChecksum,
        }
    }
}

pub type Res<T> = Result<T, Drop>;

/// Maps any access failure to [`Drop::Malformed`].
#[inline(always)]
pub fn malformed<E>(_: E) -> Drop {
    Drop::Malformed
}

/// Pushes the binding's expiry to at least `until`, so that its port is not reclaimed
/// while a flow uses it.
#[inline(always)]
fn refresh_binding<T: Tables>(t: &T, proto: u8, ext_addr: u32, ext_port: u16, until: u64) {
    t.with_binding(&BindingKey::external(proto, ext_addr, ext_port), |b| {
        let seen = b.expires_ns;
        // By compare-and-swap, never from 0: a mapping a search is reclaiming (expiry 0)
        // must stay dead. Losing to another refresh is fine.
        if !b.is_static() && seen != 0 && seen < until {
            let _ = T::cas_u64(&mut b.expires_ns, seen, until);
        }
    });
}

/// Advances a flow's state, expiry and counters for one packet.
#[expect(
    clippy::too_many_arguments,
    reason = "the flow, the packet and the time, all used"
)]
#[inline(always)]
pub fn touch<T: Tables>(
    t: &T,
    cfg: &NatConfig,
    f: &mut Flow,
    proto: u8,
    outbound: bool,
    tcp_flags: u8,
    len: u64,
    now: u64,
) {
    if proto == PROTO_TCP {
        let old = TcpState::from_u8(f.state);
        let new = tcp_next(old, outbound, tcp_flags);
        // Only the CPU whose compare-and-swap makes the change counts it: two RSTs at once
        // close a flow once, and a packet that changes nothing writes nothing back.
        let (was, is) = if new != old && T::swap_state(f, old as u8, new as u8) {
            (holds_binding(old), holds_binding(new))
        } else {
            let h = holds_binding(TcpState::from_u8(f.state));
            (h, h)
        };
        if was != is || !is {
            mind_binding(t, f, was, is, now + cfg.timeouts.tcp_transitory_ns);
        }
    }
    f.last_seen_ns = now;
    let timeout = cfg.timeout_ns(proto, f.state);
    f.expires_ns = now + timeout;
    if outbound {
        T::add(&mut f.packets_out, 1);
        T::add(&mut f.bytes_out, len);
    } else {
        T::add(&mut f.packets_in, 1);
        T::add(&mut f.bytes_in, len);
    }
    if f.expires_ns > f.binding_expires_ns {
        // A quarter timeout of slack: the binding is written about four times per
        // timeout per flow, not on every packet.
        let until = f.expires_ns + timeout / 4;
        refresh_binding(t, proto, f.ext_addr, f.ext_port, until);
        f.binding_expires_ns = until;
    }
}

/// Keeps a TCP binding's count of open flows (`was`/`is`: whether this flow held it open
/// before and after its packet), and, while this flow does not hold it open (before its
/// handshake, or closed), holds the port at least until `hold_until`, the flow's own expiry.
/// When the last open flow closes, the port is held for the transitory timeout and then free.
#[inline(always)]
fn mind_binding<T: Tables>(t: &T, f: &Flow, was: bool, is: bool, hold_until: u64) {
    t.with_binding(&BindingKey::external(PROTO_TCP, f.ext_addr, f.ext_port), |b| {
        if is && !was {
            T::add32(&mut b.open_flows, 1);
        } else if was && !is {
            T::add32(&mut b.open_flows, u32::MAX);
        }
        if !is && b.idle_until_ns < hold_until {
            b.idle_until_ns = hold_until;
        }
    });
}

/// Removes an expired binding (both of its entries) so its external port can be reused.
#[inline(always)]
fn reclaim<T: Tables>(t: &T, proto: u8, ekey: &BindingKey, old: &Binding) {
    let ikey = BindingKey::internal(proto, old.int_addr, old.int_port);
    if let Some(i) = t.binding(&ikey)
        && i.ext_addr == old.ext_addr
        && i.ext_port == old.ext_port
    {
        t.remove_binding(&ikey);
    }
    t.remove_binding(ekey);
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
fn claim<T: Tables>(t: &T, proto: u8, b: &Binding) -> Res<Claim> {
    let ekey = BindingKey::external(proto, b.ext_addr, b.ext_port);
    match t.insert_binding(&ekey, b) {
        Ok(()) => {}
        Err(InsertError::Exists) => return Ok(Claim::Taken),
        Err(InsertError::Full) => return Err(Drop::MapFull),
    }
    let ikey = BindingKey::internal(proto, b.int_addr, b.int_port);
    match t.insert_binding(&ikey, b) {
        Ok(()) => {
            t.count(NatCounter::NewMappings);
            Ok(Claim::Ours)
        }
        Err(e) => {
            t.remove_binding(&ekey);
            if e == InsertError::Full {
                return Err(Drop::MapFull);
            }
            match t.binding(&ikey) {
                Some(other) => Ok(Claim::Raced(other.ext_addr, other.ext_port)),
                None => Err(Drop::NoPort),
            }
        }
    }
}

/// The external endpoint of internal endpoint (int_addr, int_port): its existing binding
/// (endpoint-independent mapping: the same for every destination), or a new one.
#[inline(always)]
fn binding_for<T: Tables>(
    t: &T,
    cfg: &NatConfig,
    proto: u8,
    int_addr: u32,
    int_port: u16,
    now: u64,
) -> Res<(u32, u16)> {
    let ikey = BindingKey::internal(proto, int_addr, int_port);
    if let Some(b) = t.binding(&ikey) {
        let ekey = BindingKey::external(proto, b.ext_addr, b.ext_port);
        let ours = t.with_binding(&ekey, |e| {
            if e.int_addr != int_addr || e.int_port != int_port {
                return false;
            }
            if e.is_static() {
                return true;
            }
            // Taken (back) with a compare-and-swap on its expiry, even when it looks alive (a
            // packet's clock may lag that of a search reclaiming the port); a search swaps it
            // to 0, so exactly one of them has it. The idle time first: a search that sees
            // the new expiry sees it too.
            if proto == PROTO_TCP && e.open_flows == 0 {
                let idle = now + cfg.timeouts.tcp_transitory_ns;
                if e.idle_until_ns < idle {
                    e.idle_until_ns = idle;
                }
            }
            let mut seen = e.expires_ns;
            for _ in 0..3 {
                if seen == 0 {
                    // Reclaimed.
                    return false;
                }
                let until = now
                    .saturating_add(cfg.timeout_ns(proto, TcpState::None as u8))
                    .max(seen.saturating_add(1));
                match T::cas_u64(&mut e.expires_ns, seen, until) {
                    Ok(()) => return true,
                    Err(found) => seen = found,
                }
            }
            // Three packets of this endpoint moved it on meanwhile: alive, and ours.
            seen != 0
        });
        if ours == Some(true) {
            return Ok((b.ext_addr, b.ext_port));
        }
        // The port went to another endpoint after this binding expired (or is going now).
        // The internal entry goes only while it still names that port: another packet of
        // this endpoint may have bound it to a new one meanwhile. (Read, then remove: a
        // window of a few instructions remains, as in `reclaim`.)
        if t.binding(&ikey)
            .is_some_and(|i| i.ext_addr == b.ext_addr && i.ext_port == b.ext_port)
        {
            t.remove_binding(&ikey);
        }
    }
    let orig = port_from_wire(int_port);
    let range = cfg.range_for(proto, orig);
    let seed = t.random();
    let mut search = PortSearch {
        proto,
        orig,
        range,
        seed,
        now,
        binding: Binding {
            int_addr,
            ext_addr: cfg.ext_addr,
            int_port,
            ext_port: 0,
            flags: 0,
            open_flows: 0,
            _pad: 0,
            expires_ns: now + cfg.timeout_ns(proto, TcpState::None as u8),
            // A TCP binding no flow holds open is free after the transitory timeout.
            idle_until_ns: if proto == PROTO_TCP {
                now + cfg.timeouts.tcp_transitory_ns
            } else {
                u64::MAX
            },
        },
        found: None,
    };
    t.search_ports(&mut search);
    search.found.unwrap_or(Err(Drop::NoPort))
}

/// The search for a free external port for a new binding, one candidate per step
/// ([`try_port`]), so that the kernel can run the steps in a loop it verifies once
/// (`bpf_loop`) rather than once per iteration.
pub struct PortSearch {
    pub proto: u8,
    /// The internal port (host order): kept when it is free.
    pub orig: u16,
    pub range: PortRange,
    pub seed: u32,
    pub now: u64,
    /// The binding to claim; its external port is set per candidate.
    pub binding: Binding,
    /// The external endpoint, once claimed, or why the search failed.
    pub found: Option<Res<(u32, u16)>>,
}

/// Tries candidate `i` of a port search; true when the search is over (found, failed,
/// or out of candidates).
#[inline(always)]
pub fn try_port<T: Tables>(t: &T, s: &mut PortSearch, i: u32) -> bool {
    let Some(cand) = port_candidate(s.orig, s.range, s.seed, i) else {
        return true;
    };
    let proto = s.proto;
    s.binding.ext_port = port_to_wire(cand);
    let b = s.binding;
    let done = |s: &mut PortSearch, c: Res<Claim>| -> bool {
        match c {
            Ok(Claim::Ours) => s.found = Some(Ok((b.ext_addr, b.ext_port))),
            Ok(Claim::Raced(addr, port)) => s.found = Some(Ok((addr, port))),
            Ok(Claim::Taken) => return false,
            Err(d) => s.found = Some(Err(d)),
        }
        true
    };
    if done(s, claim(t, proto, &b)) {
        return true;
    }
    let ekey = BindingKey::external(proto, b.ext_addr, b.ext_port);
    // An expired binding is reclaimed by whoever zeroes its expiry first: its own endpoint
    // reviving it (`binding_for`) and another search cannot both have it.
    let won = t.with_binding(&ekey, |e| {
        // One copy decides, and its expiry is what the swap expects; 0 is another search's.
        let old = *e;
        (old.expires_ns != 0
            && old.expired(s.now)
            && T::cas_u64(&mut e.expires_ns, old.expires_ns, 0).is_ok())
        .then_some(old)
    });
    if let Some(Some(old)) = won {
        reclaim(t, proto, &ekey, &old);
        return done(s, claim(t, proto, &b));
    }
    false
}

/// Refreshes the live flow `key` for one packet and returns its external endpoint and
/// (new) TCP state; None if there is no flow or it has expired.
#[inline(always)]
pub fn touch_live<T: Tables>(
    t: &T,
    cfg: &NatConfig,
    key: &FlowKey,
    outbound: bool,
    tcp_flags: u8,
    len: u64,
    now: u64,
) -> Option<(u32, u16, u8)> {
    t.with_flow(key, |f| {
        if now >= f.expires_ns {
            return None;
        }
        touch(t, cfg, f, key.proto, outbound, tcp_flags, len, now);
        Some((f.ext_addr, f.ext_port, f.state))
    })?
}

/// Creates flow `key` on external endpoint `ext`, opened from `origin`, counting its first
/// packet.
#[expect(
    clippy::too_many_arguments,
    reason = "the flow, the packet and the time, all used"
)]
#[inline(always)]
fn new_flow<T: Tables>(
    t: &T,
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
        t,
        cfg,
        &mut f,
        key.proto,
        origin == ORIGIN_OUTBOUND,
        tcp_flags,
        len,
        now,
    );
    t.insert_flow(key, &f).map_err(|_| Drop::MapFull)?;
    t.count(NatCounter::NewFlows);
    Ok(())
}

/// The external endpoint of an outbound flow, creating flow (and binding) if needed.
#[inline(always)]
fn outbound_flow<T: Tables>(
    t: &T,
    cfg: &NatConfig,
    key: &FlowKey,
    tcp_flags: u8,
    len: u64,
    now: u64,
) -> Res<(u32, u16)> {
    if let Some((addr, port, _)) = touch_live(t, cfg, key, true, tcp_flags, len, now) {
        return Ok((addr, port));
    }
    let ext = binding_for(t, cfg, key.proto, key.int_addr, key.int_port, now)?;
    new_flow(t, cfg, key, ext, ORIGIN_OUTBOUND, tcp_flags, len, now)?;
    Ok(ext)
}

/// Admits an inbound packet to binding `b` from remote (rem_addr, rem_port): an existing
/// live flow, or a new one if `b` is a port forward or filtering is endpoint-independent.
#[inline(always)]
fn inbound_flow<T: Tables>(
    t: &T,
    cfg: &NatConfig,
    b: &Binding,
    key: &FlowKey,
    tcp_flags: u8,
    len: u64,
    now: u64,
) -> Res<()> {
    if touch_live(t, cfg, key, false, tcp_flags, len, now).is_some() {
        return Ok(());
    }
    let open = b.is_static() || (cfg.flags & FLAG_ENDPOINT_INDEPENDENT_FILTERING != 0 && !b.expired(now));
    if !open {
        return Err(Drop::Unsolicited);
    }
    new_flow(
        t,
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
fn unsupported<T: Tables>(t: &T, cfg: &NatConfig) -> Res<Action> {
    if cfg.flags & FLAG_DROP_UNSUPPORTED != 0 {
        Err(Drop::Unsupported)
    } else {
        t.count(NatCounter::DropUnsupported);
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
pub fn headers<'t, P: Packet, T: Tables>(ctx: &P, t: &'t T) -> Res<Option<(EthIp, &'t NatConfig, usize)>> {
    let (Some(h), Some(cfg)) = (eth_ipv4(ctx), t.config()) else {
        return Ok(None);
    };
    let ip = h.ip;
    match ip.header_len() {
        0 => Err(Drop::Malformed),
        ihl => Ok(Some((h, cfg, IP_OFF + ihl))),
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
pub fn egress<P: Packet, T: Tables>(ctx: &P, t: &T) -> Res<Action> {
    let Some((h, cfg, l4)) = headers(ctx, t)? else {
        return Ok(Action::Pass);
    };
    let ip = h.ip;
    let first = ip.frag_offset() == 0;
    if ip.proto == PROTO_ICMP && first {
        let kind: u8 = ctx.load(l4).map_err(malformed)?;
        if is_icmp_error(kind) {
            return icmp_error(ctx, t, &ip, l4, false);
        }
    }
    if !cfg.is_internal(ip.src) {
        t.count(NatCounter::Passed);
        return Ok(Action::Pass);
    }
    // The flow's ports (for ICMP echo: the identifier and 0) and TCP flags. Non-first
    // fragments of TCP, UDP and ICMP echo take the first one's from the fragment table.
    let (ports, flags) = match ip.proto {
        PROTO_TCP | PROTO_UDP | PROTO_ICMP if !first => {
            let Some(p) = t.frag(&frag_key(&ip)) else {
                return Err(Drop::FragmentUnknown);
            };
            ((p.sport, p.dport), 0)
        }
        PROTO_TCP | PROTO_UDP => {
            let (p, flags) = ports(ctx, ip.proto, l4)?;
            ((p[0], p[1]), flags)
        }
        PROTO_ICMP => {
            let kind: u8 = ctx.load(l4).map_err(malformed)?;
            if kind != ICMP_ECHO_REQUEST {
                return unsupported(t, cfg);
            }
            let id: u16 = ctx.load(l4 + 4).map_err(malformed)?;
            ((id, 0), 0)
        }
        _ => return unsupported(t, cfg),
    };
    // One place creates or refreshes the flow (fewer paths for the verifier to walk).
    let key = FlowKey::new(ip.proto, ip.src, ports.0, ip.dst, ports.1);
    let (ext_addr, ext_port) = outbound_flow(t, cfg, &key, flags, u64::from(ctx.len()), t.now())?;
    if !first {
        rewrite_addr(ctx, true, ip.src, ext_addr)?;
        t.count(NatCounter::Fragments);
        return Ok(Action::Pass);
    }
    rewrite(ctx, ip.proto, l4, true, (ip.src, ext_addr), (ports.0, ext_port))?;
    if ip.more_fragments() {
        let fp = FragPorts {
            sport: ports.0,
            dport: ports.1,
        };
        t.insert_frag(&frag_key(&ip), &fp);
    }
    t.count(match ip.proto {
        PROTO_TCP => NatCounter::OutTcp,
        PROTO_UDP => NatCounter::OutUdp,
        _ => NatCounter::OutIcmp,
    });
    Ok(Action::Pass)
}

/// TC ingress on the uplink.
pub fn ingress<P: Packet, T: Tables>(ctx: &P, t: &T) -> Res<Action> {
    let Some((h, cfg, l4)) = headers(ctx, t)? else {
        return Ok(Action::Pass);
    };
    let ip = h.ip;
    // A router discards these (RFC 1812 5.2.2); here, before they refresh any flow.
    if !header_ok(ctx, &ip, l4)? {
        return Err(Drop::BadChecksum);
    }
    let first = ip.frag_offset() == 0;
    // (remote port, external port, TCP flags) of the packet.
    let (sport, dport, flags) = match ip.proto {
        // Non-first fragments of TCP, UDP and ICMP echo: the first one's ports (identifier).
        PROTO_TCP | PROTO_UDP | PROTO_ICMP if !first => {
            let Some(p) = t.frag(&frag_key(&ip)) else {
                return Err(Drop::FragmentUnknown);
            };
            (p.sport, p.dport, 0)
        }
        PROTO_TCP | PROTO_UDP => {
            let (p, flags) = ports(ctx, ip.proto, l4)?;
            (p[0], p[1], flags)
        }
        PROTO_ICMP => {
            let kind: u8 = ctx.load(l4).map_err(malformed)?;
            if is_icmp_error(kind) {
                return icmp_error(ctx, t, &ip, l4, true);
            }
            if kind != ICMP_ECHO_REPLY {
                // Echo requests to the router are the router's to answer.
                t.count(NatCounter::Passed);
                return Ok(Action::Pass);
            }
            let id: u16 = ctx.load(l4 + 4).map_err(malformed)?;
            (0, id, 0)
        }
        _ => {
            t.count(NatCounter::Passed);
            return Ok(Action::Pass);
        }
    };
    let Some(b) = t.binding(&BindingKey::external(ip.proto, ip.dst, dport)) else {
        if !first {
            return Err(Drop::FragmentUnknown);
        }
        t.count(if ip.dst == cfg.ext_addr {
            NatCounter::InUnmapped
        } else {
            NatCounter::Passed
        });
        return Ok(Action::Pass);
    };
    let key = FlowKey::new(ip.proto, b.int_addr, b.int_port, ip.src, sport);
    inbound_flow(t, cfg, &b, &key, flags, u64::from(ctx.len()), t.now())?;
    if !first {
        rewrite_addr(ctx, false, ip.dst, b.int_addr)?;
        t.count(NatCounter::Fragments);
        return Ok(Action::Pass);
    }
    rewrite(
        ctx,
        ip.proto,
        l4,
        false,
        (ip.dst, b.int_addr),
        (dport, b.int_port),
    )?;
    if ip.more_fragments() {
        let fp = FragPorts { sport, dport };
        t.insert_frag(&frag_key(&ip), &fp);
    }
    t.count(match ip.proto {
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
fn icmp_error<P: Packet, T: Tables>(ctx: &P, t: &T, ip: &IpHdr, l4: usize, ingress: bool) -> Res<Action> {
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
            t.count(NatCounter::Passed);
            return Ok(Action::Pass);
        }
    };
    let now = t.now();
    // Find the binding, then require a live flow: filtering applies to errors too.
    let (b, key) = if ingress {
        let Some(b) = t.binding(&BindingKey::external(iproto, inner.src, isport)) else {
            t.count(NatCounter::Passed);
            return Ok(Action::Pass);
        };
        (b, FlowKey::new(iproto, b.int_addr, b.int_port, inner.dst, idport))
    } else {
        let Some(b) = t.binding(&BindingKey::internal(iproto, inner.dst, idport)) else {
            t.count(NatCounter::Passed);
            return Ok(Action::Pass);
        };
        (b, FlowKey::new(iproto, inner.dst, idport, inner.src, isport))
    };
    let live = t.with_flow(&key, |f| now < f.expires_ns) == Some(true);
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
    // The packet ends at its IPv4 total length; bytes after it (Ethernet padding) are not
    // covered by the ICMP checksum.
    let end = (ctx.len() as usize).min(IP_OFF + usize::from(u16::from_be(ip.tot_len)));
    if l4_csum_off + 2 <= end {
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
    t.count(if ingress {
        NatCounter::IcmpErrorIn
    } else {
        NatCounter::IcmpErrorOut
    });
    Ok(Action::Pass)
}

/// TC ingress on the internal interfaces: a packet from an internal host to the external
/// address on a mapped port is translated as if it had left by the uplink and come back in
/// (SNAT, then DNAT) (RFC 4787 REQ-9, hairpinning). True when it was: the caller sends it
/// straight back out.
pub fn hairpin<P: Packet, T: Tables>(ctx: &P, t: &T) -> Res<bool> {
    let Some(h) = eth_ipv4(ctx) else {
        return Ok(false);
    };
    let ip = h.ip;
    let Some(cfg) = t.config() else {
        return Ok(false);
    };
    if ip.dst != cfg.ext_addr || ip.frag_offset() != 0 || (ip.proto != PROTO_TCP && ip.proto != PROTO_UDP) {
        return Ok(false);
    }
    if !cfg.is_internal(ip.src) {
        return Ok(false);
    }
    let ihl = ip.header_len();
    if ihl == 0 {
        return Err(Drop::Malformed);
    }
    let l4 = IP_OFF + ihl;
    // The kernel drops it (its input path checks the header), untranslated.
    if !header_ok(ctx, &ip, l4)? {
        return Ok(false);
    }
    let (p, flags) = ports(ctx, ip.proto, l4)?;
    // A port nobody owns is the router's own business.
    let Some(b) = t.binding(&BindingKey::external(ip.proto, ip.dst, p[1])) else {
        return Ok(false);
    };
    let now = t.now();
    let len = u64::from(ctx.len());
    let out_key = FlowKey::new(ip.proto, ip.src, p[0], ip.dst, p[1]);
    let (ext_addr, ext_port) = outbound_flow(t, cfg, &out_key, flags, len, now)?;
    let in_key = FlowKey::new(ip.proto, b.int_addr, b.int_port, ext_addr, ext_port);
    inbound_flow(t, cfg, &b, &in_key, flags, len, now)?;
    rewrite(ctx, ip.proto, l4, true, (ip.src, ext_addr), (p[0], ext_port))?;
    rewrite(ctx, ip.proto, l4, false, (ip.dst, b.int_addr), (p[1], b.int_port))?;
    t.count(NatCounter::Hairpinned);
    Ok(true)
}
