//! Mappings (bindings): an internal endpoint's external endpoint, made by a port search,
//! revived by its own endpoint, reclaimed when expired.
//!
//! One compare-and-swap protocol decides every change, here, in the maintenance program
//! ([`super::maintain`]) and wherever user space asks it to:
//! - an external entry's `expires_ns` is only ever moved by compare-and-swap; 0 means a
//!   reclaimer has it. A reviver swaps it forward (never from 0); a reclaimer swaps an
//!   expired value to 0, then removes the entry. Exactly one of them wins.
//! - an internal entry is never removed to be made again: it is moved to its new external
//!   port by a swap of its first word ([`Binding::ext_word`]), and a reclaimer marks it dying
//!   by the same swap (to external address 0) before removing it; a packet that finds it
//!   dying waits for the removal rather than writing.
//! - an element removed here can be handed to another key at once (the kernel reuses hash
//!   elements immediately); only expired entries are removed on the packet path, and every
//!   write into an entry is a swap from a value read from it, so a write through a pointer
//!   to an element that changed hands fails instead of landing in the wrong entry. (The
//!   one plain store, the idle time a reviver raises before its swap, can at worst hold
//!   another mapping's port a little longer.)

use super::{Drop, InsertError, LogEvent, Res, Tables};
use crate::wire::{WireAddr, WirePort};
use crate::{
    counters::NatCounter,
    nat::{
        Binding, BindingKey, NatConfig, PROTO_TCP, PortRange, TcpState, port_candidate, port_from_wire,
        port_to_wire,
    },
};

/// Pushes the binding's expiry to at least `until`, so that its port is not reclaimed
/// while a flow uses it: by compare-and-swap, never from 0 (a mapping a reclaimer has must
/// stay dead), again if another CPU moved it meanwhile but not far enough.
#[inline(always)]
pub(crate) fn refresh<T: Tables>(t: &T, key: &BindingKey, until: u64) {
    t.with_binding(key, |b| {
        if b.is_static() {
            return;
        }
        let mut seen = b.expires_ns;
        for _ in 0..3 {
            if seen == 0 || seen >= until {
                return;
            }
            match T::cas_u64(&mut b.expires_ns, seen, until) {
                Ok(()) => return,
                Err(found) => seen = found,
            }
        }
    });
}

/// Keeps a TCP binding's count of open flows (`was`/`is`: whether a flow held it open
/// before and after its packet), and, while that flow does not hold it open (before its
/// handshake, or closed), holds the port at least until `hold_until`, the flow's own expiry.
/// When the last open flow closes, the port is held for the transitory timeout and then free.
#[inline(always)]
pub(crate) fn update_binding_open_flows<T: Tables>(
    t: &T,
    key: &BindingKey,
    was: bool,
    is: bool,
    hold_until: u64,
) {
    t.with_binding(key, |b| {
        if b.expires_ns == 0 {
            return;
        }
        if is && !was {
            T::add32(&mut b.open_flows, 1);
        } else if was && !is && b.open_flows != 0 {
            T::add32(&mut b.open_flows, u32::MAX);
        }
        if !is && b.idle_until_ns < hold_until {
            b.idle_until_ns = hold_until;
        }
    });
}

/// Takes a mapping found for its own endpoint (back): a compare-and-swap of its expiry
/// forward, even when it looks alive (a packet's clock may lag that of a reclaimer), never
/// from 0. The TCP idle time first: a reclaimer that sees the new expiry sees it too.
#[inline(always)]
fn revive<T: Tables>(e: &mut Binding, cfg: &NatConfig, proto: u8, now: u64) -> bool {
    if e.is_static() {
        return true;
    }
    if proto == PROTO_TCP && e.open_flows == 0 {
        let idle = now + cfg.timeouts.tcp_transitory_ns;
        if e.idle_until_ns < idle {
            e.idle_until_ns = idle;
        }
    }
    let mut seen = e.expires_ns;
    for _ in 0..3 {
        if seen == 0 {
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
}

/// Removes an expired mapping whose expiry this caller swapped to 0: the external entry,
/// then the internal one if it still names that port (marked dying by a swap first, so that
/// a packet of its endpoint moving it meanwhile keeps it).
#[inline(always)]
pub(crate) fn reclaim<T: Tables>(t: &T, ekey: &BindingKey, old: &Binding) {
    t.remove_binding(ekey);
    let ikey = BindingKey::internal(ekey.proto, old.int_addr, old.int_port);
    let named = Binding::word(old.ext_addr, old.ext_port, old.int_port);
    let dying = Binding::word(WireAddr::UNSPECIFIED, old.ext_port, old.int_port);
    if t.with_binding(&ikey, |i| T::cas_u64(i.ext_word_mut(), named, dying).is_ok()) == Some(true) {
        t.remove_binding(&ikey);
    }
}

/// Wins an expired mapping for removal: swaps its expiry (from one copy of the entry) to
/// 0; the copy if this caller won.
#[inline(always)]
pub(crate) fn claim_expired<T: Tables>(t: &T, key: &BindingKey, now: u64) -> Option<Binding> {
    // Closures return plain values (the kernel's verifier refuses what the compiler makes
    // of enums left partly undefined across a call).
    let mut old = Binding::default();
    let won = t.with_binding(key, |e| {
        old = *e;
        !old.is_static()
            && old.expires_ns != 0
            && old.expired(now)
            && T::cas_u64(&mut e.expires_ns, old.expires_ns, 0).is_ok()
    });
    (won == Some(true)).then_some(old)
}

/// What [`claim`] got.
enum Claim {
    /// The port is ours now (both entries written).
    Ours,
    /// Another endpoint holds the port: try another.
    Taken,
    /// Another CPU bound this same internal endpoint a moment ago: use its port.
    Raced(WireAddr, WirePort),
}

/// Takes external port `b.ext_port` for `b`'s internal endpoint: the external entry first
/// (exclusive), then the internal one: moved from `prev` (its word when the search began)
/// by a swap, or inserted exclusively when there was none. So a port never has two owners
/// and an endpoint never two ports; if the second step fails the first is undone.
#[inline(always)]
fn claim<T: Tables>(t: &T, proto: u8, b: &Binding, prev: u64) -> Res<Claim> {
    let ekey = BindingKey::external(proto, b.ext_addr, b.ext_port);
    match t.insert_binding(&ekey, b) {
        Ok(()) => {}
        Err(InsertError::Exists) => return Ok(Claim::Taken),
        Err(InsertError::Full) => return Err(Drop::MapFull),
    }
    let ikey = BindingKey::internal(proto, b.int_addr, b.int_port);
    // The internal entry's word when another packet got there first.
    let mut found = 0u64;
    let moved = if prev == 0 {
        None
    } else {
        t.with_binding(&ikey, |i| {
            match T::cas_u64(i.ext_word_mut(), prev, b.ext_word()) {
                Ok(()) => true,
                Err(w) => {
                    found = w;
                    false
                }
            }
        })
    };
    let ours = match moved {
        Some(won) => won,
        None => match t.insert_binding(&ikey, b) {
            Ok(()) => true,
            Err(InsertError::Full) => {
                t.remove_binding(&ekey);
                return Err(Drop::MapFull);
            }
            Err(InsertError::Exists) => {
                found = t.binding(&ikey).map_or(0, |i| i.ext_word());
                false
            }
        },
    };
    if ours {
        t.count(NatCounter::NewMappings);
        t.log(LogEvent::NewMapping);
        return Ok(Claim::Ours);
    }
    // Another packet of this endpoint moved or made its internal entry meanwhile: its port
    // wins; a dying entry is being removed this instant.
    t.remove_binding(&ekey);
    let (addr, port) = Binding::unword(found);
    if addr.is_unspecified() {
        return Err(Drop::Busy);
    }
    Ok(Claim::Raced(addr, port))
}

/// The external endpoint of internal endpoint (int_addr, int_port): its existing mapping
/// (endpoint-independent mapping: the same for every destination), or a new one on the
/// external address. A mapping on another address (the uplink's address changed) is not
/// taken back: the endpoint gets a new one, as MASQUERADE does.
#[inline(always)]
pub(crate) fn binding_for<T: Tables>(
    t: &T,
    cfg: &NatConfig,
    proto: u8,
    int_addr: WireAddr,
    int_port: WirePort,
    now: u64,
) -> Res<(WireAddr, WirePort)> {
    let ikey = BindingKey::internal(proto, int_addr, int_port);
    let mut prev = 0;
    if let Some(i) = t.binding(&ikey) {
        if i.is_dying() {
            // A reclaimer is removing it: a new one can be made right after.
            return Err(Drop::Busy);
        }
        if i.ext_addr == cfg.ext_addr {
            let ekey = BindingKey::external(proto, i.ext_addr, i.ext_port);
            let ours = t.with_binding(&ekey, |e| {
                e.int_addr == int_addr && e.int_port == int_port && revive::<T>(e, cfg, proto, now)
            });
            if ours == Some(true) {
                return Ok((i.ext_addr, i.ext_port));
            }
        }
        // The port went to another endpoint after the mapping expired (or is going now), or
        // the address changed: the internal entry moves to the new port.
        prev = i.ext_word();
    }
    let orig = port_from_wire(int_port);
    let range = cfg.range_for(proto, orig);
    let seed = t.random();
    let found = t.search_ports(|search| {
        *search = PortSearch {
            proto,
            orig,
            range,
            seed,
            now,
            prev,
            binding: Binding {
                ext_addr: cfg.ext_addr,
                ext_port: WirePort::ZERO,
                int_port,
                int_addr,
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
    });
    found.unwrap_or(Err(Drop::NoPort))
}

/// The search for a free external port for a new binding, one candidate per step
/// ([`try_port`]), so that the kernel can run the steps in a loop it verifies once
/// (`bpf_loop`) rather than once per iteration.
#[derive(Clone, Copy, Default)]
pub struct PortSearch {
    pub proto: u8,
    /// The internal port (host order): kept when it is free.
    pub orig: u16,
    pub range: PortRange,
    pub seed: u32,
    pub now: u64,
    /// The internal entry's word when the search began (0: there was none).
    pub prev: u64,
    /// The binding to claim; its external port is set per candidate.
    pub binding: Binding,
    /// The external endpoint, once claimed, or why the search failed.
    pub found: Option<Res<(WireAddr, WirePort)>>,
}

/// Tries candidate `i` of a port search; true when the search is over (found, failed,
/// or out of candidates). A port the router's own sockets listen on is skipped.
#[inline(always)]
pub fn try_port<T: Tables>(t: &T, s: &mut PortSearch, i: u32) -> bool {
    let Some(cand) = port_candidate(s.orig, s.range, s.seed, i) else {
        return true;
    };
    let proto = s.proto;
    s.binding.ext_port = port_to_wire(cand);
    let b = s.binding;
    if proto != crate::nat::PROTO_ICMP
        && t.router_socket(
            proto,
            (b.ext_addr, b.ext_port),
            (WireAddr::UNSPECIFIED, WirePort::ZERO),
        )
    {
        return false;
    }
    let done = |s: &mut PortSearch, c: Res<Claim>| -> bool {
        match c {
            Ok(Claim::Ours) => s.found = Some(Ok((b.ext_addr, b.ext_port))),
            Ok(Claim::Raced(addr, port)) => s.found = Some(Ok((addr, port))),
            Ok(Claim::Taken) => return false,
            Err(d) => s.found = Some(Err(d)),
        }
        true
    };
    if done(s, claim(t, proto, &b, s.prev)) {
        return true;
    }
    // An expired binding is reclaimed by whoever zeroes its expiry first: its own endpoint
    // reviving it (`binding_for`), the agent's sweep and another search cannot both have it.
    let ekey = BindingKey::external(proto, b.ext_addr, b.ext_port);
    if let Some(old) = claim_expired(t, &ekey, s.now) {
        reclaim(t, &ekey, &old);
        return done(s, claim(t, proto, &b, s.prev));
    }
    false
}

/// The address-only mapping of an internal host talking protocol `proto` (one without
/// ports) with remote `rem_addr`: its own, taken back, or a new one; another internal
/// host's live one for that protocol and remote refuses it (as MASQUERADE's clash does).
#[inline(always)]
pub(crate) fn remote_binding_for<T: Tables>(
    t: &T,
    cfg: &NatConfig,
    proto: u8,
    int_addr: WireAddr,
    rem_addr: WireAddr,
    now: u64,
) -> Res<(WireAddr, WirePort)> {
    let key = BindingKey::remote(proto, rem_addr);
    // 1: ours, 2: another host's (alive), 3: reclaimed here, 0: going (a reclaimer has it).
    let found = t.with_binding(&key, |e| {
        if e.int_addr == int_addr && e.ext_addr == cfg.ext_addr {
            return if revive::<T>(e, cfg, proto, now) { 1 } else { 0 };
        }
        let old = *e;
        if old.expires_ns != 0 && old.expired(now) && T::cas_u64(&mut e.expires_ns, old.expires_ns, 0).is_ok()
        {
            3
        } else {
            2
        }
    });
    match found {
        Some(1) => return Ok((cfg.ext_addr, WirePort::ZERO)),
        Some(2) => return Err(Drop::NoPort),
        Some(3) => t.remove_binding(&key),
        _ => {}
    }
    let b = Binding {
        ext_addr: cfg.ext_addr,
        ext_port: WirePort::ZERO,
        int_port: WirePort::ZERO,
        int_addr,
        flags: 0,
        open_flows: 0,
        _pad: 0,
        expires_ns: now + cfg.timeout_ns(proto, 0),
        idle_until_ns: u64::MAX,
    };
    match t.insert_binding(&key, &b) {
        Ok(()) => {
            t.count(NatCounter::NewMappings);
            t.log(LogEvent::NewMapping);
            Ok((cfg.ext_addr, WirePort::ZERO))
        }
        Err(InsertError::Exists) => Err(Drop::Busy),
        Err(InsertError::Full) => Err(Drop::MapFull),
    }
}
