//! The NAT, packet by packet: SNAT of outbound flows, DNAT through port forwards, replies
//! both ways, ICMP errors, fragments and hairpinning, and the checks that keep hostile
//! traffic out of the tables. Generic over the [`Packet`] (TC, XDP, or a frame in memory)
//! and the [`Tables`] holding the state (the eBPF maps, or [`crate::host`]'s tables), so the
//! same code runs in the kernel and in host tests, where it is property-tested and fuzzed.
//! Decisions that need no state (TCP states, timeouts, port candidates, windows, checksum
//! arithmetic) come from [`crate::nat`], [`crate::tcp`] and [`crate::csum`].
//!
//! The steps, one file each: [`bindings`] (mappings: made, revived, reclaimed), [`flows`]
//! (conntrack entries: made, refreshed, confirmed, evicted), [`rewrite`] (headers and
//! checksums), [`icmp`] (errors and their quotes), [`frags`] (fragments), [`maintain`] (what
//! the agent runs: expiry and removals). This file holds the entry points.

pub mod bindings;
pub mod flows;
pub mod frags;
pub mod icmp;
pub mod maintain;
pub mod pair;
pub mod rewrite;

pub use bindings::{PortSearch, try_port};
pub use flows::{touch, touch_live};
pub use rewrite::{header_ok, headers, ip_header, l4_facts, ports, rewrite};

use crate::wire::{WireAddr, WirePort};
use crate::{
    counters::NatCounter,
    nat::{
        Binding, BindingKey, FLAG_DROP_UNSUPPORTED, FLAG_INBOUND_ROUTE, Flow, FlowKey, FragKey, FragPorts,
        HeldFrag, HeldKey, NatConfig, PROTO_ICMP, PROTO_TCP, PROTO_UDP, RemoteRate, has_ports,
    },
    packet::*,
    tcp::Segment,
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
    /// Counts an outcome (nothing else: what is worth a log record is [`Tables::log`]'s).
    fn count(&self, c: NatCounter);
    /// A diagnostics record, where the surroundings keep them (the kernel: aya-log, below
    /// the level set at load compiled out; the host: none).
    fn log(&self, _e: LogEvent) {}
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
    /// Inserts only if `key` is absent.
    fn insert_flow(&self, key: &FlowKey, f: &Flow) -> Result<(), InsertError>;
    fn remove_flow(&self, key: &FlowKey);
    /// Runs `f` on the flow being made (a scratch slot: in the kernel a per-CPU one, as a
    /// step's stack cannot hold it and the rest).
    fn with_new_flow<R>(&self, f: impl FnOnce(&mut Flow) -> R) -> Option<R>;
    /// Remembers a new inbound flow, not confirmed yet, as a candidate for eviction when the
    /// flow table is full (oldest first).
    fn note_unconfirmed(&self, key: &FlowKey);
    /// The oldest remembered candidate not handed out yet, if any.
    fn evict_candidate(&self) -> Option<FlowKey>;
    /// Runs [`flows::evict_step`] up to [`flows::EVICT_TRIES`] times, until it says the
    /// eviction is over.
    fn evict(&self, e: &mut flows::Eviction);
    /// Runs `f` on remote address `addr`'s count of new inbound flows, if there is one.
    fn with_remote<R>(&self, addr: WireAddr, f: impl FnOnce(&mut RemoteRate) -> R) -> Option<R>;
    /// Starts a remote address's count (best effort: the table forgets the quietest).
    fn insert_remote(&self, addr: WireAddr, r: &RemoteRate);
    /// Whether a socket of the router itself would take a packet of `proto` from remote
    /// (addr, port) to local (addr, port), all in wire order: a listener on the port, or a
    /// socket connected to that remote.
    fn router_socket(&self, proto: u8, local: (WireAddr, WirePort), remote: (WireAddr, WirePort)) -> bool;
    fn frag(&self, key: &FragKey) -> Option<FragPorts>;
    /// Remembers a first fragment's decision (best effort: the table forgets the oldest).
    fn insert_frag(&self, key: &FragKey, p: &FragPorts);
    /// Holds a fragment: `fill` writes it (into a scratch slot: in the kernel a per-CPU one,
    /// as no stack holds it) and says whether to keep it; then it is stored under `key`
    /// (best effort: the table forgets the oldest). Whether it was.
    fn hold_frag(&self, key: &HeldKey, fill: impl FnOnce(&mut HeldFrag) -> bool) -> bool;
    /// Runs `f` on the fragment held under `key`, if there is one.
    fn with_held<R>(&self, key: &HeldKey, f: impl FnOnce(&HeldFrag) -> R) -> Option<R>;
    fn remove_held(&self, key: &HeldKey);
    /// Asks for the fragments held for datagram `key` to be let go ([`frags::release`]) once
    /// the packet that asks (the datagram's first fragment) is through its step: sent
    /// again, or (`local`: the datagram is the router's, and they went on to it already)
    /// forgotten.
    fn release_held(&self, key: &FragKey, local: bool);
    /// Runs a port search: `init` sets it up (in a scratch slot: in the kernel a per-CPU
    /// one, as a step's stack cannot hold it and the rest), then [`try_port`] runs for
    /// candidates 0, 1, ... up to [`MAX_PORT_TRIES`](crate::nat::MAX_PORT_TRIES) until it
    /// says the search is over. What it found.
    fn search_ports(&self, init: impl FnOnce(&mut PortSearch)) -> Option<Res<(WireAddr, WirePort)>>;
}

/// What the NAT's steps log besides counting (see [`Tables::log`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogEvent {
    /// A new mapping was made (info).
    NewMapping,
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
    /// From outside to an internal address, not through a flow or a forward.
    Inbound,
    /// Arriving on the uplink with an internal source, or the external address as source.
    Spoofed,
    /// A TCP segment other than a SYN trying to open an inbound flow.
    NotSyn,
    /// A RST or FIN outside the receiver's window.
    OutOfWindow,
    /// A remote address over its bound of new inbound flows per second.
    RemoteLimit,
    /// An ICMP error from inside quoting nothing mapped (RFC 5508 REQ-4).
    ErrorUnmapped,
    /// The entry it needs is being removed this instant.
    Busy,
    /// A fragment ahead of its datagram's first, held to be sent again once that comes.
    Held,
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
            Drop::Inbound => NatCounter::DropInbound,
            Drop::Spoofed => NatCounter::DropSpoofed,
            Drop::NotSyn => NatCounter::DropNotSyn,
            Drop::OutOfWindow => NatCounter::DropOutOfWindow,
            Drop::RemoteLimit => NatCounter::DropRemoteLimit,
            Drop::ErrorUnmapped => NatCounter::DropErrorUnmapped,
            Drop::Busy => NatCounter::DropBusy,
            Drop::Held => NatCounter::FragmentsHeld,
        }
    }
}

impl Drop {
    /// Every reason, in code order.
    pub const ALL: [Drop; 15] = [
        Drop::NoPort,
        Drop::Unsolicited,
        Drop::Malformed,
        Drop::MapFull,
        Drop::Unsupported,
        Drop::FragmentUnknown,
        Drop::BadChecksum,
        Drop::Inbound,
        Drop::Spoofed,
        Drop::NotSyn,
        Drop::OutOfWindow,
        Drop::RemoteLimit,
        Drop::ErrorUnmapped,
        Drop::Busy,
        Drop::Held,
    ];

    /// A step's outcome as one number (what a kernel function returns): 0 pass, 1
    /// redirect, 2 + the reason's place in [`Drop::ALL`] for a drop (a round trip the test
    /// below checks for every reason).
    pub fn encode(r: Res<Action>) -> i32 {
        match r {
            Ok(Action::Pass) => 0,
            Ok(Action::Redirect) => 1,
            Err(d) => 2 + d as i32,
        }
    }

    /// The outcome [`Drop::encode`] made a number of (a `match`, not a table: the kernel's
    /// verifier cannot bound a read indexed by a computed number).
    pub fn decode(v: i32) -> Res<Action> {
        Err(match v {
            0 => return Ok(Action::Pass),
            1 => return Ok(Action::Redirect),
            2 => Drop::NoPort,
            3 => Drop::Unsolicited,
            5 => Drop::MapFull,
            6 => Drop::Unsupported,
            7 => Drop::FragmentUnknown,
            8 => Drop::BadChecksum,
            9 => Drop::Inbound,
            10 => Drop::Spoofed,
            11 => Drop::NotSyn,
            12 => Drop::OutOfWindow,
            13 => Drop::RemoteLimit,
            14 => Drop::ErrorUnmapped,
            15 => Drop::Busy,
            16 => Drop::Held,
            _ => Drop::Malformed,
        })
    }
}

pub type Res<T> = Result<T, Drop>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mapping_outcome_survives_its_encoding() {
        for r in [
            Ok(None),
            Ok(Some((WireAddr(0xc0a8_0102), WirePort(0xffff)))),
            Ok(Some((WireAddr(u32::MAX), WirePort(0)))),
            Ok(Some((WireAddr(0), WirePort(1)))),
        ] {
            assert_eq!(decode_ext(encode_ext(r)), r);
        }
        for d in Drop::ALL {
            assert_eq!(decode_ext(encode_ext(Err(d))), Err(d));
        }
    }

    #[test]
    fn every_outcome_survives_its_encoding() {
        for (i, d) in Drop::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i, "ALL is in code order");
            assert_eq!(Drop::decode(Drop::encode(Err(*d))), Err(*d));
        }
        for a in [Action::Pass, Action::Redirect] {
            assert_eq!(Drop::decode(Drop::encode(Ok(a))), Ok(a));
        }
    }
}

/// Maps any access failure to [`Drop::Malformed`].
#[inline(always)]
pub fn malformed<E>(_: E) -> Drop {
    Drop::Malformed
}

/// The fragment-table key of a packet (as it is before translation).
#[inline(always)]
pub(crate) fn frag_key(ip: &IpHdr) -> FragKey {
    FragKey {
        src: ip.src,
        dst: ip.dst,
        id: ip.id,
        proto: ip.proto,
        _pad: 0,
    }
}

/// The counter of a translated packet of `proto`, outbound or inbound.
#[inline(always)]
fn translated(proto: u8, outbound: bool) -> NatCounter {
    match (proto, outbound) {
        (PROTO_TCP, true) => NatCounter::OutTcp,
        (PROTO_UDP, true) => NatCounter::OutUdp,
        (PROTO_ICMP, true) => NatCounter::OutIcmp,
        (_, true) => NatCounter::OutOther,
        (PROTO_TCP, false) => NatCounter::InTcp,
        (PROTO_UDP, false) => NatCounter::InUdp,
        (PROTO_ICMP, false) => NatCounter::InIcmp,
        (_, false) => NatCounter::InOther,
    }
}

/// What a hook's first, cheap look at a packet decided: done with it, or which step takes
/// it. The steps are separate functions (in the kernel: functions the verifier checks once
/// each, whose stack frames are not stacked on one another).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Done(Action),
    /// An ICMP error: [`icmp::error`].
    IcmpError,
    /// A non-first fragment: [`frags`].
    Fragment,
    /// Everything else the NAT translates, through a live flow: [`egress_main`],
    /// [`ingress_main`], [`hairpin_main`].
    Main,
    /// The same when no live flow took it: [`egress_mapping`] and [`egress_new`],
    /// [`ingress_new`], [`hairpin_mapping`], [`hairpin_out`] and [`hairpin_in`] make it.
    New,
}

/// A mapping step's outcome as one number (what a kernel function returns): the external
/// endpoint (wire order) with bit 48 set, 0 for none, or minus one less than a drop's
/// [`Drop::encode`].
pub fn encode_ext(r: Res<Option<(WireAddr, WirePort)>>) -> i64 {
    match r {
        Ok(Some((addr, port))) => (1 << 48) | (i64::from(addr.0) << 16) | i64::from(port.0),
        Ok(None) => 0,
        Err(d) => -i64::from(Drop::encode(Err(d))) - 1,
    }
}

/// The outcome [`encode_ext`] made a number of.
pub fn decode_ext(v: i64) -> Res<Option<(WireAddr, WirePort)>> {
    if v < 0 {
        return match Drop::decode((-v - 1) as i32) {
            Err(d) => Err(d),
            Ok(_) => Err(Drop::Malformed),
        };
    }
    if v == 0 {
        return Ok(None);
    }
    Ok(Some((WireAddr((v >> 16) as u32), WirePort(v as u16))))
}

impl Step {
    /// A step's outcome as one number (what a kernel function returns): an outcome's
    /// [`Drop::encode`], or the next step's number.
    pub fn encode(r: Res<Step>) -> i32 {
        match r {
            Ok(Step::Done(a)) => Drop::encode(Ok(a)),
            Ok(Step::IcmpError) => 100,
            Ok(Step::Fragment) => 101,
            Ok(Step::Main) => 102,
            Ok(Step::New) => 103,
            Err(d) => Drop::encode(Err(d)),
        }
    }

    /// The outcome [`Step::encode`] made a number of.
    pub fn decode(v: i32) -> Res<Step> {
        Ok(match v {
            100 => Step::IcmpError,
            101 => Step::Fragment,
            102 => Step::Main,
            103 => Step::New,
            v => Step::Done(Drop::decode(v)?),
        })
    }
}

/// TC egress on the uplink: the whole step, as the kernel runs it (dispatch, then the step).
pub fn egress<P: Packet, T: Tables>(ctx: &P, t: &T) -> Res<Action> {
    match egress_step(ctx, t)? {
        Step::Done(a) => Ok(a),
        Step::IcmpError => icmp::error(ctx, t, false),
        Step::Fragment => frags::outbound(ctx, t),
        Step::Main | Step::New => match egress_main(ctx, t)? {
            Step::Done(a) => Ok(a),
            _ => {
                let ext = egress_mapping(ctx, t)?;
                egress_new(ctx, t, ext)
            }
        },
    }
}

/// TC egress on the uplink, first look.
#[inline(always)]
pub fn egress_step<P: Packet, T: Tables>(ctx: &P, t: &T) -> Res<Step> {
    let mut ip = IpHdr::default();
    let Some((cfg, l4)) = ip_header(ctx, t, &mut ip)? else {
        return Ok(Step::Done(Action::Pass));
    };
    let first = ip.frag_offset() == 0;
    if ip.proto == PROTO_ICMP && first {
        let kind: u8 = ctx.load(l4).map_err(malformed)?;
        if icmp::is_error(kind) {
            return Ok(Step::IcmpError);
        }
    }
    if !cfg.is_internal(ip.src) {
        t.count(NatCounter::Passed);
        return Ok(Step::Done(Action::Pass));
    }
    // An internal source on a packet that came in by the uplink itself was spoofed outside
    // and routed back out: it makes no state (the uplink's ingress drops these first; this
    // holds where it could not see them).
    let arrived = ctx.arrived_on();
    if arrived != 0 && arrived == ctx.ifindex() {
        return Err(Drop::Spoofed);
    }
    Ok(if first { Step::Main } else { Step::Fragment })
}

/// A (first fragment of a) packet from an internal host leaving by the uplink: its ports
/// and segment, with the headers' facts.
#[derive(Default)]
struct Outbound {
    ip: IpHdr,
    l4: usize,
    ports: [WirePort; 2],
    seg: Segment,
}

#[inline(always)]
fn outbound_facts<'t, P: Packet, T: Tables>(
    ctx: &P,
    t: &'t T,
    o: &mut Outbound,
) -> Res<Option<&'t NatConfig>> {
    let Some((cfg, l4)) = ip_header(ctx, t, &mut o.ip)? else {
        return Ok(None);
    };
    o.l4 = l4;
    // The flow's ports (for ICMP echo: the identifier and 0; none for protocols without
    // ports) and the TCP segment.
    match o.ip.proto {
        PROTO_TCP | PROTO_UDP => (o.ports, o.seg) = l4_facts(ctx, &o.ip, l4)?,
        PROTO_ICMP => {
            let kind: u8 = ctx.load(l4).map_err(malformed)?;
            if kind != ICMP_ECHO_REQUEST {
                // Other ICMP queries would share the echo identifiers' keys: not translated.
                return Err(Drop::Unsupported);
            }
            let id: WirePort = ctx.load(l4 + 4).map_err(malformed)?;
            o.ports = [id, WirePort::ZERO];
        }
        _ => {
            if cfg.flags & FLAG_DROP_UNSUPPORTED != 0 {
                return Err(Drop::Unsupported);
            }
        }
    }
    Ok(Some(cfg))
}

/// Translates an outbound packet to external endpoint `ext`.
#[inline(always)]
fn outbound_rewrite<P: Packet, T: Tables>(
    ctx: &P,
    t: &T,
    o: &Outbound,
    ext: (WireAddr, WirePort),
) -> Res<Action> {
    let ip = &o.ip;
    if has_ports(ip.proto) {
        rewrite(ctx, ip.proto, o.l4, true, (ip.src, ext.0), (o.ports[0], ext.1))?;
    } else {
        rewrite::addr(ctx, true, ip.src, ext.0)?;
    }
    if ip.more_fragments() {
        frags::remember(t, ip, o.ports, 0);
    }
    t.count(translated(ip.proto, true));
    Ok(Action::Pass)
}

/// TC egress on the uplink, a packet from an internal host: through its live flow, or
/// [`Step::New`] if it has none.
#[inline(always)]
pub fn egress_main<P: Packet, T: Tables>(ctx: &P, t: &T) -> Res<Step> {
    let mut o = Outbound::default();
    let Some(cfg) = outbound_facts(ctx, t, &mut o)? else {
        return Ok(Step::Done(Action::Pass));
    };
    let ip = &o.ip;
    let key = FlowKey::new(ip.proto, ip.src, o.ports[0], ip.dst, o.ports[1]);
    let Some((addr, port, _)) = flows::touch_live(t, cfg, &key, true, &o.seg, u64::from(ctx.len()), t.now())?
    else {
        return Ok(Step::New);
    };
    outbound_rewrite(ctx, t, &o, (addr, port)).map(Step::Done)
}

/// TC egress on the uplink, the first packet of a flow: the external endpoint its mapping
/// gives it (made if needed).
#[inline(always)]
pub fn egress_mapping<P: Packet, T: Tables>(ctx: &P, t: &T) -> Res<(WireAddr, WirePort)> {
    let mut o = Outbound::default();
    let Some(cfg) = outbound_facts(ctx, t, &mut o)? else {
        return Err(Drop::Malformed);
    };
    let ip = &o.ip;
    let key = FlowKey::new(ip.proto, ip.src, o.ports[0], ip.dst, o.ports[1]);
    flows::mapping_for(t, cfg, &key, t.now())
}

/// TC egress on the uplink, the first packet of a flow: its flow made on external endpoint
/// `ext` ([`egress_mapping`]'s), and translated.
#[inline(always)]
pub fn egress_new<P: Packet, T: Tables>(ctx: &P, t: &T, ext: (WireAddr, WirePort)) -> Res<Action> {
    let mut o = Outbound::default();
    let Some(cfg) = outbound_facts(ctx, t, &mut o)? else {
        return Ok(Action::Pass);
    };
    let ip = &o.ip;
    let key = FlowKey::new(ip.proto, ip.src, o.ports[0], ip.dst, o.ports[1]);
    let ext = flows::outbound_new(t, cfg, &key, ext, &o.seg, u64::from(ctx.len()), t.now())?;
    outbound_rewrite(ctx, t, &o, ext)
}

/// TC ingress on the uplink: the whole step, as the kernel runs it.
pub fn ingress<P: Packet, T: Tables>(ctx: &P, t: &T) -> Res<Action> {
    match ingress_step(ctx, t)? {
        Step::Done(a) => Ok(a),
        Step::IcmpError => icmp::error(ctx, t, true),
        Step::Fragment => frags::inbound(ctx, t),
        Step::Main | Step::New => match ingress_main(ctx, t)? {
            Step::Done(a) => Ok(a),
            _ => ingress_new(ctx, t),
        },
    }
}

/// TC ingress on the uplink, first look: what is not for the external address, or is
/// spoofed, never reaches the tables.
#[inline(always)]
pub fn ingress_step<P: Packet, T: Tables>(ctx: &P, t: &T) -> Res<Step> {
    let mut ip = IpHdr::default();
    let Some((cfg, l4)) = ip_header(ctx, t, &mut ip)? else {
        return Ok(Step::Done(Action::Pass));
    };
    // A router discards these (RFC 1812 5.2.2); here, before they refresh any flow.
    if !header_ok(ctx, &ip, l4)? {
        return Err(Drop::BadChecksum);
    }
    // Nothing from outside comes from inside, or from the router's own address.
    if cfg.is_internal(ip.src) || ip.src == cfg.ext_addr {
        return Err(Drop::Spoofed);
    }
    if ip.dst != cfg.ext_addr {
        // To an internal host directly (a route to the internal prefix via the router):
        // only through a flow or a forward, which are all on the external address.
        if cfg.is_internal(ip.dst) && cfg.flags & FLAG_INBOUND_ROUTE == 0 {
            return Err(Drop::Inbound);
        }
        t.count(NatCounter::Passed);
        return Ok(Step::Done(Action::Pass));
    }
    if ip.frag_offset() != 0 {
        return Ok(Step::Fragment);
    }
    if ip.proto == PROTO_ICMP {
        let kind: u8 = ctx.load(l4).map_err(malformed)?;
        if icmp::is_error(kind) {
            return Ok(Step::IcmpError);
        }
    }
    Ok(Step::Main)
}

/// A (first fragment of a) packet for the external address: its ports and segment, and
/// the mapping it reaches, with the headers' facts.
#[derive(Default)]
struct Inbound {
    ip: IpHdr,
    l4: usize,
    ports: [WirePort; 2],
    seg: Segment,
    b: Binding,
}

/// The facts of an inbound packet into `i`, or (`Err`) what becomes of a packet that
/// reaches no mapping.
#[inline(always)]
fn inbound_facts<'t, P: Packet, T: Tables>(
    ctx: &P,
    t: &'t T,
    i: &mut Inbound,
) -> Res<Result<&'t NatConfig, Action>> {
    let Some((cfg, l4)) = ip_header(ctx, t, &mut i.ip)? else {
        return Ok(Err(Action::Pass));
    };
    i.l4 = l4;
    // (remote port, external port) and the TCP segment.
    match i.ip.proto {
        PROTO_TCP | PROTO_UDP => (i.ports, i.seg) = l4_facts(ctx, &i.ip, l4)?,
        PROTO_ICMP => {
            let kind: u8 = ctx.load(l4).map_err(malformed)?;
            if kind != ICMP_ECHO_REPLY {
                // Echo requests to the router are the router's to answer.
                return local(t, &i.ip, [WirePort::ZERO; 2]).map(Err);
            }
            let id: WirePort = ctx.load(l4 + 4).map_err(malformed)?;
            i.ports = [WirePort::ZERO, id];
        }
        _ => {}
    }
    let bkey = if has_ports(i.ip.proto) {
        BindingKey::external(i.ip.proto, i.ip.dst, i.ports[1])
    } else {
        BindingKey::remote(i.ip.proto, i.ip.src)
    };
    match t.binding(&bkey) {
        Some(b) if b.ext_addr == cfg.ext_addr => i.b = b,
        _ => {
            t.count(NatCounter::InUnmapped);
            return local(t, &i.ip, i.ports).map(Err);
        }
    }
    Ok(Ok(cfg))
}

/// Translates an inbound packet to its mapping's internal endpoint.
#[inline(always)]
fn inbound_rewrite<P: Packet, T: Tables>(ctx: &P, t: &T, i: &Inbound) -> Res<Action> {
    let ip = &i.ip;
    if has_ports(ip.proto) {
        rewrite(
            ctx,
            ip.proto,
            i.l4,
            false,
            (ip.dst, i.b.int_addr),
            (i.ports[1], i.b.int_port),
        )?;
    } else {
        rewrite::addr(ctx, false, ip.dst, i.b.int_addr)?;
    }
    if ip.more_fragments() {
        frags::remember(t, ip, i.ports, 0);
    }
    t.count(translated(ip.proto, false));
    Ok(Action::Pass)
}

/// TC ingress on the uplink, a packet for the external address: through a live flow, or
/// [`Step::New`] if it reaches a mapping but no flow.
#[inline(always)]
pub fn ingress_main<P: Packet, T: Tables>(ctx: &P, t: &T) -> Res<Step> {
    let mut i = Inbound::default();
    let cfg = match inbound_facts(ctx, t, &mut i)? {
        Ok(cfg) => cfg,
        Err(a) => return Ok(Step::Done(a)),
    };
    let key = FlowKey::new(i.ip.proto, i.b.int_addr, i.b.int_port, i.ip.src, i.ports[0]);
    if flows::touch_live(t, cfg, &key, false, &i.seg, u64::from(ctx.len()), t.now())?.is_none() {
        return Ok(Step::New);
    }
    inbound_rewrite(ctx, t, &i).map(Step::Done)
}

/// TC ingress on the uplink, a packet that reaches a mapping and no flow: the router's own
/// (its socket holds the port), or a new inbound flow where filtering and the checks allow.
#[inline(always)]
pub fn ingress_new<P: Packet, T: Tables>(ctx: &P, t: &T) -> Res<Action> {
    let mut i = Inbound::default();
    let cfg = match inbound_facts(ctx, t, &mut i)? {
        Ok(cfg) => cfg,
        Err(a) => return Ok(a),
    };
    let ip = &i.ip;
    // A port the router's own socket holds (a listener, or its conversation with this
    // remote) is the router's; a forward's port is the forward's.
    if !i.b.is_static() && t.router_socket(ip.proto, (ip.dst, i.ports[1]), (ip.src, i.ports[0])) {
        return local(t, ip, i.ports);
    }
    let key = FlowKey::new(ip.proto, i.b.int_addr, i.b.int_port, ip.src, i.ports[0]);
    flows::inbound_new(t, cfg, &i.b, &key, &i.seg, u64::from(ctx.len()), t.now())?;
    inbound_rewrite(ctx, t, &i)
}

/// A packet for the router itself: passed on untouched, and, if it is a first fragment, its
/// fragments after it too.
#[inline(always)]
fn local<T: Tables>(t: &T, ip: &IpHdr, ports: [WirePort; 2]) -> Res<Action> {
    if ip.more_fragments() {
        frags::remember(t, ip, ports, crate::nat::FRAG_LOCAL);
    }
    t.count(NatCounter::Passed);
    Ok(Action::Pass)
}

/// TC ingress on the internal interfaces: a packet from an internal host to the external
/// address on a mapped port is translated as if it had left by the uplink and come back in
/// (SNAT, then DNAT) (RFC 4787 REQ-9, hairpinning). True when it was: the caller sends it
/// straight back out.
pub fn hairpin<P: Packet, T: Tables>(ctx: &P, t: &T) -> Res<bool> {
    match hairpin_step(ctx, t)? {
        Step::Fragment => frags::hairpin(ctx, t),
        Step::Main | Step::New => match hairpin_main(ctx, t)? {
            Step::Done(a) => Ok(a == Action::Redirect),
            _ => {
                if let Some(ext) = hairpin_mapping(ctx, t)? {
                    hairpin_out(ctx, t, ext)?;
                }
                hairpin_in(ctx, t)?;
                Ok(hairpin_main(ctx, t)? == Step::Done(Action::Redirect))
            }
        },
        _ => Ok(false),
    }
}

/// Hairpinning, first look.
#[inline(always)]
pub fn hairpin_step<P: Packet, T: Tables>(ctx: &P, t: &T) -> Res<Step> {
    let Some(h) = eth_ipv4(ctx) else {
        return Ok(Step::Done(Action::Pass));
    };
    let ip = h.ip;
    let Some(cfg) = t.config() else {
        return Ok(Step::Done(Action::Pass));
    };
    if ip.dst != cfg.ext_addr || (ip.proto != PROTO_TCP && ip.proto != PROTO_UDP) || !cfg.is_internal(ip.src)
    {
        return Ok(Step::Done(Action::Pass));
    }
    let ihl = ip.header_len();
    if ihl == 0 {
        return Err(Drop::Malformed);
    }
    // The kernel drops it (its input path checks the header), untranslated.
    if !header_ok(ctx, &ip, IP_OFF + ihl)? {
        return Ok(Step::Done(Action::Pass));
    }
    Ok(if ip.frag_offset() != 0 {
        Step::Fragment
    } else {
        Step::Main
    })
}

/// Hairpinning of a (first fragment of a) packet through two live flows: redirected when
/// translated, [`Step::New`] when a flow is missing. (A hairpinned flow's packet that made
/// its flows is counted on them twice: once making them, once here.)
#[inline(always)]
pub fn hairpin_main<P: Packet, T: Tables>(ctx: &P, t: &T) -> Res<Step> {
    let mut ip = IpHdr::default();
    let Some((cfg, l4)) = ip_header(ctx, t, &mut ip)? else {
        return Ok(Step::Done(Action::Pass));
    };
    let (p, seg) = l4_facts(ctx, &ip, l4)?;
    // A port nobody owns is the router's own business.
    let Some(b) = t
        .binding(&BindingKey::external(ip.proto, ip.dst, p[1]))
        .filter(|b| b.ext_addr == cfg.ext_addr)
    else {
        return Ok(Step::Done(Action::Pass));
    };
    let now = t.now();
    let len = u64::from(ctx.len());
    let out_key = FlowKey::new(ip.proto, ip.src, p[0], ip.dst, p[1]);
    let Some((ext_addr, ext_port, _)) = flows::touch_live(t, cfg, &out_key, true, &seg, len, now)? else {
        return Ok(Step::New);
    };
    let in_key = FlowKey::new(ip.proto, b.int_addr, b.int_port, ext_addr, ext_port);
    if flows::touch_live(t, cfg, &in_key, false, &seg, len, now)?.is_none() {
        return Ok(Step::New);
    }
    rewrite(ctx, ip.proto, l4, true, (ip.src, ext_addr), (p[0], ext_port))?;
    rewrite(ctx, ip.proto, l4, false, (ip.dst, b.int_addr), (p[1], b.int_port))?;
    if ip.more_fragments() {
        frags::remember(t, &ip, p, 0);
    }
    t.count(NatCounter::Hairpinned);
    Ok(Step::Done(Action::Redirect))
}

/// Hairpinning, third part for a packet whose flows are made: its inbound flow (the one
/// through the external address's mapping), once its outbound flow is live.
#[inline(always)]
pub fn hairpin_in<P: Packet, T: Tables>(ctx: &P, t: &T) -> Res<()> {
    let mut ip = IpHdr::default();
    let Some((cfg, l4)) = ip_header(ctx, t, &mut ip)? else {
        return Ok(());
    };
    let (p, seg) = l4_facts(ctx, &ip, l4)?;
    let Some(b) = t
        .binding(&BindingKey::external(ip.proto, ip.dst, p[1]))
        .filter(|b| b.ext_addr == cfg.ext_addr)
    else {
        return Ok(());
    };
    let now = t.now();
    let out_key = FlowKey::new(ip.proto, ip.src, p[0], ip.dst, p[1]);
    let mut ext = (WireAddr::UNSPECIFIED, WirePort::ZERO);
    let live = t.with_flow(&out_key, |f| {
        ext = (f.ext_addr, f.ext_port);
        f.expires_ns != 0 && now < f.expires_ns && f.ext_addr == cfg.ext_addr
    });
    if live != Some(true) {
        return Err(Drop::Busy);
    }
    let in_key = FlowKey::new(ip.proto, b.int_addr, b.int_port, ext.0, ext.1);
    let in_live = t.with_flow(&in_key, |f| {
        f.expires_ns != 0 && now < f.expires_ns && f.ext_addr == cfg.ext_addr
    });
    if in_live != Some(true) {
        flows::inbound_new(t, cfg, &b, &in_key, &seg, u64::from(ctx.len()), now)?;
    }
    Ok(())
}

/// The outbound flow of a hairpinned packet: live (its facts), or None.
#[inline(always)]
fn hairpin_flow<'t, P: Packet, T: Tables>(
    ctx: &P,
    t: &'t T,
    o: &mut Outbound,
) -> Res<Option<(&'t NatConfig, FlowKey, bool)>> {
    let Some(cfg) = outbound_facts(ctx, t, o)? else {
        return Ok(None);
    };
    let now = t.now();
    let ip = &o.ip;
    let key = FlowKey::new(ip.proto, ip.src, o.ports[0], ip.dst, o.ports[1]);
    let live = t.with_flow(&key, |f| {
        f.expires_ns != 0 && now < f.expires_ns && f.ext_addr == cfg.ext_addr
    });
    Ok(Some((cfg, key, live == Some(true))))
}

/// Hairpinning, first part for a packet whose flows are made: the external endpoint of its
/// outbound flow's mapping (made if needed), or None if that flow is live.
#[inline(always)]
pub fn hairpin_mapping<P: Packet, T: Tables>(ctx: &P, t: &T) -> Res<Option<(WireAddr, WirePort)>> {
    let mut o = Outbound::default();
    match hairpin_flow(ctx, t, &mut o)? {
        Some((cfg, key, false)) => flows::mapping_for(t, cfg, &key, t.now()).map(Some),
        _ => Ok(None),
    }
}

/// Hairpinning, second part: its outbound flow made on `ext` ([`hairpin_mapping`]'s),
/// counting the packet on it.
#[inline(always)]
pub fn hairpin_out<P: Packet, T: Tables>(ctx: &P, t: &T, ext: (WireAddr, WirePort)) -> Res<()> {
    let mut o = Outbound::default();
    if let Some((cfg, key, false)) = hairpin_flow(ctx, t, &mut o)? {
        flows::outbound_new(t, cfg, &key, ext, &o.seg, u64::from(ctx.len()), t.now())?;
    }
    Ok(())
}
