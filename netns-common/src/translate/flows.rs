//! Flows (conntrack entries): made by a flow's first packet, refreshed by the others,
//! confirmed once the other side has really answered, evicted early when the table is full
//! and they are not, removed when they expire.
//!
//! Every write into a flow follows a compare-and-swap of its expiry from the value this
//! packet found (or, for a new flow, an exclusive insert): a flow removed meanwhile and its
//! memory handed to another one has another expiry, so the swap fails and nothing is
//! written (see [`crate::nat::Flow`]). Expired flows are removed by whoever swaps their
//! expiry to 0 first; a packet never writes into a flow at 0. The one removal of live flows
//! on the packet path, early drop, takes only unconfirmed inbound flows: a packet of such a
//! flow writing at that very instant can at worst miscount the flow that took its place.

use super::{Drop, InsertError, Res, Tables, bindings};
use crate::wire::{WireAddr, WirePort};
use crate::{
    counters::NatCounter,
    nat::{
        Binding, BindingKey, DIR_IN, DIR_OUT, FLAG_ENDPOINT_INDEPENDENT_FILTERING, FLOW_CONFIRMED, Flow,
        FlowKey, NatConfig, ORIGIN_INBOUND, ORIGIN_OUTBOUND, PROTO_TCP, RemoteRate, SEC, TCP_ACK, TCP_FIN,
        TCP_RST, TCP_SYN, TcpState, has_ports, holds_binding, tcp_next,
    },
    tcp::{self, Segment, WSCALE_NONE},
};

/// How many remembered candidates a new flow looks at before the full table refuses it.
pub const EVICT_TRIES: u32 = 8;

/// How many evictions a new flow makes for its room: after the first, another CPU's new
/// flow may take the place before this one is inserted (both found the table full).
pub const EVICT_ROUNDS: u32 = 3;

/// Whether the packet of direction `d` (segment `seg`) confirms flow `f`: the other side
/// has answered and, for TCP, the handshake's last ACK acknowledged the answer's SYN
/// (within the originator's window: a blind spoof cannot), for the others the flow is still
/// going two seconds after it began.
#[inline(always)]
fn confirms(f: &Flow, proto: u8, d: usize, seg: &Segment, now: u64) -> bool {
    if !f.replied() {
        return false;
    }
    if proto != PROTO_TCP {
        return now >= f.created_ns.saturating_add(2 * SEC);
    }
    let st = TcpState::from_u8(f.state);
    if !matches!(st, TcpState::Established | TcpState::FinOut | TcpState::FinIn) {
        return false;
    }
    if f.tcp_seen & tcp::SEEN_MIDSTREAM != 0 {
        return true;
    }
    let orig = tcp::dir(if f.origin == ORIGIN_OUTBOUND {
        DIR_OUT
    } else {
        DIR_IN
    });
    let resp = tcp::dir(orig ^ 1);
    if d != orig
        || seg.flags & (TCP_ACK | TCP_SYN | TCP_RST) != TCP_ACK
        || f.tcp_seen & tcp::seen_end(resp) == 0
    {
        return false;
    }
    // What the responder may have sent since its SYN: the originator's window.
    let win = (u64::from(f.tcp_win[orig]).max(65535)) << tcp::scale(f, orig);
    u64::from(seg.ack.wrapping_sub(f.tcp_end[resp])) <= win
}

/// What the end of flow `f` owes its binding: a TCP flow that held it open no longer does.
#[inline(always)]
pub(crate) fn ended<T: Tables>(t: &T, key: &FlowKey, f: &Flow, hold_until: u64) {
    if key.proto == PROTO_TCP && holds_binding(TcpState::from_u8(f.state)) {
        bindings::update_binding_open_flows(
            t,
            &BindingKey::of_flow(key, f.ext_addr, f.ext_port),
            true,
            false,
            hold_until,
        );
    }
}

/// The effects of one packet on a flow whose write this caller holds: TCP state (by
/// compare-and-swap), sequence tracking, counters, confirmation, the final expiry (by
/// compare-and-swap from `provisional`, what the caller's swap set) and the binding.
#[expect(
    clippy::too_many_arguments,
    reason = "the flow, the packet and the time, all used"
)]
#[inline(always)]
fn account<T: Tables>(
    t: &T,
    cfg: &NatConfig,
    key: &FlowKey,
    f: &mut Flow,
    outbound: bool,
    seg: &Segment,
    len: u64,
    now: u64,
    provisional: u64,
) {
    let proto = key.proto;
    let d = if outbound { DIR_OUT } else { DIR_IN };
    let bkey = BindingKey::of_flow(key, f.ext_addr, f.ext_port);
    if proto == PROTO_TCP {
        let old = TcpState::from_u8(f.state);
        let new = tcp_next(old, outbound, seg.flags);
        // Only the CPU whose compare-and-swap makes the change counts it: two RSTs at once
        // close a flow once, and a packet that changes nothing writes nothing back.
        let (was, is) = if new != old && T::swap_state(f, old as u8, new as u8) {
            (holds_binding(old), holds_binding(new))
        } else {
            let h = holds_binding(TcpState::from_u8(f.state));
            (h, h)
        };
        tcp::record(f, d, seg);
        if was != is || !is {
            bindings::update_binding_open_flows(t, &bkey, was, is, now + cfg.timeouts.tcp_transitory_ns);
        }
    }
    if outbound {
        T::add(&mut f.packets_out, 1);
        T::add(&mut f.bytes_out, len);
    } else {
        T::add(&mut f.packets_in, 1);
        T::add(&mut f.bytes_in, len);
    }
    if !f.confirmed() && confirms(f, proto, d, seg, now) {
        f.flags |= FLOW_CONFIRMED;
    }
    let timeout = cfg.flow_timeout_ns(proto, f.state, f.confirmed());
    let until = now + timeout;
    if until != provisional {
        // Lost only to another packet's refresh or to a remover, both of which win.
        let _ = T::cas_u64(&mut f.expires_ns, provisional, until);
    }
    if until > f.binding_expires_ns {
        // A quarter timeout of slack: the binding is written about four times per
        // timeout per flow, not on every packet.
        let hold = until + timeout / 4;
        bindings::refresh(t, &bkey, hold);
        f.binding_expires_ns = hold;
    }
}

/// Refreshes flow `key` (at `f`) for one packet of direction `outbound`. `Ok(false)`: the
/// flow is not live (expired, being removed, or on an external address that is no longer
/// the uplink's); nothing was written. A RST or FIN outside the window is refused before
/// anything is written.
#[expect(
    clippy::too_many_arguments,
    reason = "the flow, the packet and the time, all used"
)]
#[inline(always)]
pub fn touch<T: Tables>(
    t: &T,
    cfg: &NatConfig,
    key: &FlowKey,
    f: &mut Flow,
    outbound: bool,
    seg: &Segment,
    len: u64,
    now: u64,
) -> Res<bool> {
    let seen = f.expires_ns;
    if seen == 0 || now >= seen || f.ext_addr != cfg.ext_addr {
        return Ok(false);
    }
    let d = if outbound { DIR_OUT } else { DIR_IN };
    if key.proto == PROTO_TCP && !tcp::in_window(f, d, seg) {
        return Err(Drop::OutOfWindow);
    }
    let created = f.created_ns;
    let provisional = now + cfg.flow_timeout_ns(key.proto, f.state, f.confirmed());
    // The expiry this packet's write holds: its own swap's, or (another CPU refreshed this
    // flow a moment ago, so the rest is ours to write too) that CPU's.
    let held = match T::cas_u64(&mut f.expires_ns, seen, provisional) {
        Ok(()) => provisional,
        // 0: a remover has it. Another creation time: the element is another flow's now.
        Err(found) if found == 0 || f.created_ns != created => return Ok(false),
        Err(found) => found,
    };
    account(t, cfg, key, f, outbound, seg, len, now, held);
    Ok(true)
}

/// Refreshes the live flow `key` for one packet and returns its external endpoint and
/// (new) TCP state; None if there is no live flow.
#[inline(always)]
pub fn touch_live<T: Tables>(
    t: &T,
    cfg: &NatConfig,
    key: &FlowKey,
    outbound: bool,
    seg: &Segment,
    len: u64,
    now: u64,
) -> Res<Option<(WireAddr, WirePort, u8)>> {
    // Closures return plain values (the kernel's verifier refuses what the compiler makes
    // of enums left partly undefined across a call).
    let mut out = (WireAddr::UNSPECIFIED, WirePort::ZERO, 0u8);
    let mut refused = None;
    let live = t.with_flow(key, |f| match touch(t, cfg, key, f, outbound, seg, len, now) {
        Ok(true) => {
            out = (f.ext_addr, f.ext_port, f.state);
            true
        }
        Ok(false) => false,
        Err(d) => {
            refused = Some(d);
            false
        }
    });
    if let Some(d) = refused {
        return Err(d);
    }
    Ok((live == Some(true)).then_some(out))
}

/// One try of an eviction (run by [`Tables::evict`] up to [`EVICT_TRIES`] times): takes the
/// oldest remembered candidate and evicts it if it still is an unconfirmed inbound flow.
/// Only those: whatever floods the table from outside, flows opened from inside and flows
/// that really talk are never evicted. True when the eviction is over (done, or no
/// candidate left).
#[inline(always)]
pub fn evict_step<T: Tables>(t: &T, e: &mut Eviction) -> bool {
    let Some(cfg) = t.config() else {
        return true;
    };
    let now = e.now;
    {
        let Some(k) = t.evict_candidate() else {
            return true;
        };
        let won = t.with_flow(&k, |f| {
            let seen = f.expires_ns;
            let won = seen != 0
                && f.origin == ORIGIN_INBOUND
                && !f.confirmed()
                && T::cas_u64(&mut f.expires_ns, seen, 0).is_ok();
            if won {
                ended(t, &k, f, now + cfg.timeouts.tcp_transitory_ns);
            }
            won
        });
        if won == Some(true) {
            t.remove_flow(&k);
            t.count(NatCounter::EvictedUnconfirmed);
            e.done = true;
            return true;
        }
    }
    false
}

/// An eviction in progress ([`evict_step`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Eviction {
    pub now: u64,
    /// Whether a flow was evicted.
    pub done: bool,
    /// For the [`Tables`] that runs it (as [`super::PortSearch::hook`]).
    pub hook: usize,
}

/// Creates flow `key` on external endpoint `ext`, opened from `origin`, counting its first
/// packet; returns the external endpoint the flow has (another CPU's, if it made the same
/// flow a moment before). An expired flow, or one on an old external address, still in the
/// table is taken over in place.
#[expect(
    clippy::too_many_arguments,
    reason = "the flow, the packet and the time, all used"
)]
#[inline(always)]
fn new_flow<T: Tables>(
    t: &T,
    cfg: &NatConfig,
    key: &FlowKey,
    ext: (WireAddr, WirePort),
    origin: u8,
    seg: &Segment,
    len: u64,
    now: u64,
) -> Res<(WireAddr, WirePort)> {
    let mut out = ext;
    let made = t.with_new_flow(
        #[cfg_attr(target_arch = "bpf", inline(always))]
        |f| new_flow_in(t, cfg, key, f, &mut out, origin, seg, len, now),
    );
    match made {
        Some(Ok(())) => Ok(out),
        Some(Err(d)) => Err(d),
        None => Err(Drop::MapFull),
    }
}

/// [`new_flow`], with `f` the scratch slot the new flow is made in; `ext` is the external
/// endpoint to give it, and the one it has when this returns.
#[expect(
    clippy::too_many_arguments,
    reason = "the flow, the packet and the time, all used"
)]
#[inline(always)]
fn new_flow_in<T: Tables>(
    t: &T,
    cfg: &NatConfig,
    key: &FlowKey,
    f: &mut Flow,
    ext: &mut (WireAddr, WirePort),
    origin: u8,
    seg: &Segment,
    len: u64,
    now: u64,
) -> Res<()> {
    let outbound = origin == ORIGIN_OUTBOUND;
    let timeout = cfg.flow_timeout_ns(key.proto, 0, false);
    *f = Flow {
        ext_addr: ext.0,
        ext_port: ext.1,
        origin,
        created_ns: now,
        expires_ns: now + timeout,
        tcp_wscale: [WSCALE_NONE; 2],
        ..Flow::default()
    };
    let provisional = f.expires_ns;
    account(t, cfg, key, f, outbound, seg, len, now, provisional);
    let hold = now + cfg.timeouts.tcp_transitory_ns;
    let mut inserted = t.insert_flow(key, f);
    let mut round = 0;
    while inserted == Err(InsertError::Full) && round < EVICT_ROUNDS {
        round += 1;
        let mut ev = Eviction {
            now,
            ..Eviction::default()
        };
        t.evict(&mut ev);
        if !ev.done {
            break;
        }
        inserted = t.insert_flow(key, f);
    }
    match inserted {
        Ok(()) => {
            t.count(NatCounter::NewFlows);
            if origin == ORIGIN_INBOUND {
                t.note_unconfirmed(key);
            }
            return Ok(());
        }
        Err(InsertError::Full) => {
            ended(t, key, f, hold);
            return Err(Drop::MapFull);
        }
        Err(InsertError::Exists) => ended(t, key, f, hold),
    }
    // The key is there: made by another CPU a moment ago (refresh it), or expired, or on an
    // old address (take it over, by compare-and-swap against the agent's sweep).
    // 1: made by another CPU a moment ago, 2: taken over, 0: being removed.
    let r = t.with_flow(key, |e| -> u8 {
        let seen = e.expires_ns;
        if seen == 0 {
            return 0;
        }
        if now < seen && e.ext_addr == cfg.ext_addr {
            // This packet is one of its first too: counted there, its state left to the
            // packet that made it (the two raced within microseconds).
            if outbound {
                T::add(&mut e.packets_out, 1);
                T::add(&mut e.bytes_out, len);
            } else {
                T::add(&mut e.packets_in, 1);
                T::add(&mut e.bytes_in, len);
            }
            *ext = (e.ext_addr, e.ext_port);
            return 1;
        }
        if T::cas_u64(&mut e.expires_ns, seen, f.expires_ns).is_err() {
            return 0;
        }
        // What the old flow owed its mapping, before it is written over.
        ended(t, key, e, hold);
        let expires = f.expires_ns;
        *e = *f;
        e.expires_ns = expires;
        // The fresh flow's own accounting (its open TCP state, if any) is redone on the
        // entry it now is.
        if key.proto == PROTO_TCP && holds_binding(TcpState::from_u8(f.state)) {
            bindings::update_binding_open_flows(
                t,
                &BindingKey::of_flow(key, f.ext_addr, f.ext_port),
                false,
                true,
                hold,
            );
        }
        t.count(NatCounter::NewFlows);
        2
    });
    match r {
        Some(1 | 2) => Ok(()),
        // Removed this instant (or being removed): the next packet makes it anew.
        _ => Err(Drop::Busy),
    }
}

/// The external endpoint a new outbound flow `key` (no live one) gets: its internal
/// endpoint's mapping (made if needed), or for a protocol without ports its address-only
/// mapping.
#[inline(always)]
pub(crate) fn mapping_for<T: Tables>(
    t: &T,
    cfg: &NatConfig,
    key: &FlowKey,
    now: u64,
) -> Res<(WireAddr, WirePort)> {
    if has_ports(key.proto) {
        bindings::binding_for(t, cfg, key.proto, key.int_addr, key.int_port, now)
    } else {
        bindings::remote_binding_for(t, cfg, key.proto, key.int_addr, key.rem_addr, now)
    }
}

/// Makes outbound flow `key` on external endpoint `ext` (from [`mapping_for`]); the
/// endpoint the flow has.
#[inline(always)]
pub(crate) fn outbound_new<T: Tables>(
    t: &T,
    cfg: &NatConfig,
    key: &FlowKey,
    ext: (WireAddr, WirePort),
    seg: &Segment,
    len: u64,
    now: u64,
) -> Res<(WireAddr, WirePort)> {
    new_flow(t, cfg, key, ext, ORIGIN_OUTBOUND, seg, len, now)
}

/// Whether remote address `addr` may open another inbound flow this second.
#[inline(always)]
fn admit_remote<T: Tables>(t: &T, addr: WireAddr, now: u64, limit: u32) -> bool {
    let counted = t.with_remote(addr, |r| {
        if now.saturating_sub(r.window_ns) >= SEC {
            r.window_ns = now;
            r.count = 1;
            return true;
        }
        if r.count >= limit {
            return false;
        }
        T::add32(&mut r.count, 1);
        true
    });
    counted.unwrap_or_else(|| {
        t.insert_remote(
            addr,
            &RemoteRate {
                window_ns: now,
                count: 1,
                _pad: 0,
            },
        );
        true
    })
}

/// Opens an inbound flow through binding `b` (no live flow exists): only through a port
/// forward, or a live mapping under endpoint-independent filtering; for TCP only with a SYN;
/// within the remote's bound of new flows per second.
#[inline(always)]
pub(crate) fn inbound_new<T: Tables>(
    t: &T,
    cfg: &NatConfig,
    b: &Binding,
    key: &FlowKey,
    seg: &Segment,
    len: u64,
    now: u64,
) -> Res<()> {
    let open = b.is_static()
        || (has_ports(key.proto) && cfg.flags & FLAG_ENDPOINT_INDEPENDENT_FILTERING != 0 && !b.expired(now));
    if !open {
        return Err(Drop::Unsolicited);
    }
    if key.proto == PROTO_TCP && seg.flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) != TCP_SYN {
        return Err(Drop::NotSyn);
    }
    if cfg.new_per_remote != 0 && !admit_remote(t, key.rem_addr, now, cfg.new_per_remote) {
        return Err(Drop::RemoteLimit);
    }
    new_flow(
        t,
        cfg,
        key,
        (b.ext_addr, b.ext_port),
        ORIGIN_INBOUND,
        seg,
        len,
        now,
    )
    .map(|_| ())
}
