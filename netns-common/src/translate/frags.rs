//! Fragments: only a datagram's first fragment carries its ports, so what it decided (its
//! ports, or that the datagram is the router's own) is remembered for the fragments that
//! follow, for the reassembly time. Protocols without ports need no memory: their flow is
//! found from the addresses alone.
//!
//! Fragments that come before their first (reordered on the way) are held, whole, a few
//! per datagram ([`HELD_SLOTS`]), until the first comes: then the program sends them again
//! through the same hook (`bpf_clone_redirect`), where they find what it decided
//! ([`release`]). Inbound, a held fragment also goes on to the router's stack at once: if
//! its datagram is the router's own, the router reassembles it, undelayed; if not, the
//! router's partial copy expires unused.

use super::{Drop, Res, Tables, flows, frag_key, rewrite};
use crate::wire::WirePort;
use crate::{
    counters::NatCounter,
    nat::{
        BindingKey, FRAG_LOCAL, FRAG_TIMEOUT_NS, FlowKey, FragKey, FragPorts, HELD_BYTES, HELD_SLOTS,
        HeldFrag, HeldKey, has_ports, held_slot,
    },
    packet::{Action, IpHdr, Packet, eth_ipv4},
    tcp::Segment,
};

/// Remembers what a first fragment decided (`flags`: [`FRAG_LOCAL`] or 0) for the rest, and
/// lets go of the fragments held for its datagram.
#[inline(always)]
pub(crate) fn remember<T: Tables>(t: &T, ip: &IpHdr, ports: [WirePort; 2], flags: u32) {
    let p = FragPorts {
        sport: ports[0],
        dport: ports[1],
        flags,
        expires_ns: t.now() + FRAG_TIMEOUT_NS,
    };
    let key = frag_key(ip);
    t.insert_frag(&key, &p);
    t.release_held(&key, flags & FRAG_LOCAL != 0);
}

/// Holds a non-first fragment whose first has not come (yet): whether it is held (the
/// caller counts it).
#[inline(always)]
fn hold<P: Packet, T: Tables>(ctx: &P, t: &T, ip: &IpHdr) -> bool {
    let len = ctx.len();
    if len == 0 || len as usize >= HELD_BYTES {
        return false;
    }
    let offset = ip.frag_offset();
    let now = t.now();
    // The first slot free (or its fragment expired) or holding this very fragment (a
    // duplicate replaces it); all taken by others: dropped.
    let mut found = None;
    for probe in 0..HELD_SLOTS {
        let key = HeldKey {
            frag: frag_key(ip),
            slot: held_slot(offset, probe),
        };
        if t.with_held(&key, |h| h.offset != offset && now < h.expires_ns)
            .unwrap_or(false)
        {
            continue;
        }
        found = Some(key);
        break;
    }
    let Some(key) = found else {
        return false;
    };
    let expires_ns = now + FRAG_TIMEOUT_NS;
    t.hold_frag(
        &key,
        #[cfg_attr(target_arch = "bpf", inline(always))]
        |h: &mut HeldFrag| {
            h.expires_ns = expires_ns;
            h.len = len;
            h.offset = offset;
            ctx.copy_frame(&mut h.bytes, len).is_ok()
        },
    )
}

/// Lets go of the fragments held for datagram `key`, now that its first fragment came:
/// `send` sends each again through the hook (where it now finds the first's decision), or,
/// if the datagram is the router's (`local`: they went on to it already) or a fragment has
/// expired, it is only forgotten. How many were sent.
#[inline(always)]
pub fn release<T: Tables>(t: &T, key: &FragKey, local: bool, mut send: impl FnMut(&HeldFrag) -> bool) -> u32 {
    let now = t.now();
    let mut sent = 0;
    for slot in 0..HELD_SLOTS {
        let hk = HeldKey { frag: *key, slot };
        let Some(ok) = t.with_held(
            &hk,
            #[cfg_attr(target_arch = "bpf", inline(always))]
            |h: &HeldFrag| !local && now < h.expires_ns && send(h),
        ) else {
            continue;
        };
        t.remove_held(&hk);
        if ok {
            sent += 1;
            t.count(NatCounter::FragmentsReplayed);
        }
    }
    sent
}

/// What the first fragment of this (non-first) fragment's datagram decided, while it holds.
#[inline(always)]
fn recall<T: Tables>(t: &T, ip: &IpHdr) -> Option<FragPorts> {
    let now = t.now();
    t.frag(&frag_key(ip)).filter(|p| now < p.expires_ns)
}

/// The (source, destination) ports of a non-first fragment's datagram: from its first
/// fragment, or none for a protocol without ports.
#[inline(always)]
fn datagram_ports<T: Tables>(t: &T, ip: &IpHdr) -> Res<Option<FragPorts>> {
    if !has_ports(ip.proto) {
        return Ok(Some(FragPorts::default()));
    }
    Ok(recall(t, ip))
}

/// A non-first fragment leaving by the uplink (from an internal host).
#[inline(always)]
pub fn outbound<P: Packet, T: Tables>(ctx: &P, t: &T) -> Res<Action> {
    let (Some(h), Some(cfg)) = (eth_ipv4(ctx), t.config()) else {
        return Ok(Action::Pass);
    };
    let ip = h.ip;
    let ip = &ip;
    let Some(p) = datagram_ports(t, ip)? else {
        // Never out untranslated: held, or dropped.
        return Err(if hold(ctx, t, ip) {
            Drop::Held
        } else {
            Drop::FragmentUnknown
        });
    };
    let key = FlowKey::new(ip.proto, ip.src, p.sport, ip.dst, p.dport);
    // The first fragment made the flow; the rest only refresh it.
    let Some((ext_addr, _, _)) = flows::touch_live(
        t,
        cfg,
        &key,
        true,
        &Segment::default(),
        u64::from(ctx.len()),
        t.now(),
    )?
    else {
        return Err(Drop::FragmentUnknown);
    };
    rewrite::addr(ctx, true, ip.src, ext_addr)?;
    t.count(NatCounter::Fragments);
    Ok(Action::Pass)
}

/// A non-first fragment arriving on the uplink for the external address.
#[inline(always)]
pub fn inbound<P: Packet, T: Tables>(ctx: &P, t: &T) -> Res<Action> {
    let (Some(h), Some(cfg)) = (eth_ipv4(ctx), t.config()) else {
        return Ok(Action::Pass);
    };
    let ip = h.ip;
    let ip = &ip;
    let Some(p) = datagram_ports(t, ip)? else {
        // Held if it can be, and on to the router's stack either way (see the top).
        t.count(if hold(ctx, t, ip) {
            NatCounter::FragmentsHeld
        } else {
            NatCounter::Passed
        });
        return Ok(Action::Pass);
    };
    if p.flags & FRAG_LOCAL != 0 {
        t.count(NatCounter::Passed);
        return Ok(Action::Pass);
    }
    let bkey = if has_ports(ip.proto) {
        BindingKey::external(ip.proto, ip.dst, p.dport)
    } else {
        BindingKey::remote(ip.proto, ip.src)
    };
    let Some(b) = t.binding(&bkey).filter(|b| b.ext_addr == cfg.ext_addr) else {
        return Err(Drop::FragmentUnknown);
    };
    let key = FlowKey::new(ip.proto, b.int_addr, b.int_port, ip.src, p.sport);
    let live = flows::touch_live(
        t,
        cfg,
        &key,
        false,
        &Segment::default(),
        u64::from(ctx.len()),
        t.now(),
    )?;
    if live.is_none() {
        return Err(Drop::Unsolicited);
    }
    rewrite::addr(ctx, false, ip.dst, b.int_addr)?;
    t.count(NatCounter::Fragments);
    Ok(Action::Pass)
}

/// A non-first fragment from an internal host to the external address: hairpinned like its
/// first fragment was (true), or not the NAT's (false).
#[inline(always)]
pub fn hairpin<P: Packet, T: Tables>(ctx: &P, t: &T) -> Res<bool> {
    let (Some(h), Some(cfg)) = (eth_ipv4(ctx), t.config()) else {
        return Ok(false);
    };
    let ip = h.ip;
    let ip = &ip;
    let Some(p) = recall(t, ip) else {
        return Ok(false);
    };
    let Some(b) = t
        .binding(&BindingKey::external(ip.proto, ip.dst, p.dport))
        .filter(|b| b.ext_addr == cfg.ext_addr)
    else {
        return Ok(false);
    };
    let now = t.now();
    let len = u64::from(ctx.len());
    let out_key = FlowKey::new(ip.proto, ip.src, p.sport, ip.dst, p.dport);
    let Some((ext_addr, ext_port, _)) =
        flows::touch_live(t, cfg, &out_key, true, &Segment::default(), len, now)?
    else {
        return Err(Drop::Unsolicited);
    };
    let in_key = FlowKey::new(ip.proto, b.int_addr, b.int_port, ext_addr, ext_port);
    if flows::touch_live(t, cfg, &in_key, false, &Segment::default(), len, now)?.is_none() {
        return Err(Drop::Unsolicited);
    }
    rewrite::addr(ctx, true, ip.src, ext_addr)?;
    rewrite::addr(ctx, false, ip.dst, b.int_addr)?;
    t.count(NatCounter::Fragments);
    t.count(NatCounter::Hairpinned);
    Ok(true)
}
