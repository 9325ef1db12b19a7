//! The eBPF NAT's maps (keys, values, configuration) and its pure logic: TCP state
//! transitions, timeouts and external port choice. Shared by the programs and user space.
//!
//! Byte order: every address and port field is a [`WireAddr`] or [`WirePort`]: the bytes as
//! they are on the wire (network order), exactly as the program reads them from the packet;
//! [`addr_from_wire`]/[`port_from_wire`] and their inverses convert.
//! Types are `#[repr(C)]` with explicit padding, zeroed before use, so that a key is the same
//! bytes wherever it is built.

use core::net::Ipv4Addr;

pub use crate::wire::{WireAddr, WirePort};

/// IP protocol numbers the NAT translates with ports (ICMP echo: the identifier).
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// The name of IP protocol `proto` as the NAT's tools print it: `tcp`, `udp`, `icmp`, or
/// `other` for any protocol translated by address only.
pub const fn proto_name(proto: u8) -> &'static str {
    match proto {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_ICMP => "icmp",
        _ => "other",
    }
}

/// Whether the NAT translates `proto` with ports (TCP, UDP; ICMP echo by identifier). Every
/// other protocol gets address-only translation (see [`SIDE_REMOTE`]).
pub const fn has_ports(proto: u8) -> bool {
    matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_ICMP)
}

/// A wire-order address field as an address.
pub const fn addr_from_wire(a: WireAddr) -> Ipv4Addr {
    a.ipv4()
}
/// An address as a wire-order field.
pub const fn addr_to_wire(a: Ipv4Addr) -> WireAddr {
    WireAddr::new(a)
}
/// A wire-order port field as a number.
pub const fn port_from_wire(p: WirePort) -> u16 {
    p.get()
}
/// A port number as a wire-order field.
pub const fn port_to_wire(p: u16) -> WirePort {
    WirePort::new(p)
}

/// Which side of a binding a [`BindingKey`] names.
pub const SIDE_INTERNAL: u8 = 0;
pub const SIDE_EXTERNAL: u8 = 1;
/// An address-only mapping (protocols without ports, as MASQUERADE does them): keyed by the
/// protocol and the *remote* address, so one internal host at a time talks that protocol
/// with that remote through the external address. One entry, no internal twin.
pub const SIDE_REMOTE: u8 = 2;

/// Key of the endpoint-independent mapping table: each binding is two entries, one keyed by
/// its internal endpoint (`SIDE_INTERNAL`: internal address and port) and one by its
/// external endpoint (`SIDE_EXTERNAL`: external address and port). Both are created and
/// removed together. For ICMP echo the port is the identifier.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BindingKey {
    pub proto: u8,
    pub side: u8,
    pub _pad: u16,
    pub addr: WireAddr,
    pub port: WirePort,
    pub _pad2: u16,
}

impl BindingKey {
    pub const fn internal(proto: u8, addr: WireAddr, port: WirePort) -> Self {
        Self {
            proto,
            side: SIDE_INTERNAL,
            _pad: 0,
            addr,
            port,
            _pad2: 0,
        }
    }
    pub const fn external(proto: u8, addr: WireAddr, port: WirePort) -> Self {
        Self {
            proto,
            side: SIDE_EXTERNAL,
            _pad: 0,
            addr,
            port,
            _pad2: 0,
        }
    }
    /// The address-only mapping of `proto` with remote `rem_addr`.
    pub const fn remote(proto: u8, rem_addr: WireAddr) -> Self {
        Self {
            proto,
            side: SIDE_REMOTE,
            _pad: 0,
            addr: rem_addr,
            port: WirePort::ZERO,
            _pad2: 0,
        }
    }
    /// The entry a flow keeps alive: its mapping's external entry, or for a protocol
    /// without ports its address-only mapping.
    pub const fn of_flow(key: &FlowKey, ext_addr: WireAddr, ext_port: WirePort) -> Self {
        if has_ports(key.proto) {
            Self::external(key.proto, ext_addr, ext_port)
        } else {
            Self::remote(key.proto, key.rem_addr)
        }
    }
}

/// The binding is a port forward (DNAT): installed by user space, never expires.
pub const BINDING_STATIC: u32 = 1;

/// Value of both entries of a binding: internal endpoint <-> external endpoint. The
/// external entry is the one flows keep up to date (expiry, open TCP flows).
///
/// The first eight bytes (`ext_addr`, `ext_port`, `int_port`) are one aligned word
/// ([`Binding::ext_word`]): the internal entry is moved to another external port by a
/// compare-and-swap of that word, never by a delete and a new insert, and a reclaimer marks
/// it dying (external address 0) the same way before it deletes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Binding {
    pub ext_addr: WireAddr,
    pub ext_port: WirePort,
    pub int_port: WirePort,
    pub int_addr: WireAddr,
    pub flags: u32,
    /// TCP: flows using the binding that have begun and not closed. Changed atomically, only
    /// by the CPU that wins a flow's state change or its removal (compare-and-swap), so each
    /// open flow is taken off exactly once.
    pub open_flows: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC ns after which the binding is free (static ones: never); 0 while a
    /// reclaimer removes it. Kept at the latest expiry of the flows that use it, always by
    /// compare-and-swap.
    pub expires_ns: u64,
    /// TCP: while no flow is open, the binding is free from this time on (the transitory
    /// timeout after its last flow closed, or after it was made), so that a closed
    /// connection does not hold its port for the established timeout (RFC 5382 REQ-5).
    /// `u64::MAX` for other protocols.
    pub idle_until_ns: u64,
}

/// Where [`Binding::ext_word`] sits.
pub const BINDING_EXT_WORD: usize = core::mem::offset_of!(Binding, ext_addr);
const _: () = {
    assert!(BINDING_EXT_WORD == 0);
    assert!(core::mem::offset_of!(Binding, ext_port) == 4);
    assert!(core::mem::offset_of!(Binding, int_port) == 6);
    assert!(core::mem::align_of::<Binding>() == 8);
};

impl Binding {
    /// The aligned word of `ext_addr`, `ext_port` and `int_port`, as it is in memory.
    pub const fn word(ext_addr: WireAddr, ext_port: WirePort, int_port: WirePort) -> u64 {
        let a = ext_addr.0.to_ne_bytes();
        let p = ext_port.0.to_ne_bytes();
        let i = int_port.0.to_ne_bytes();
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], p[0], p[1], i[0], i[1]])
    }
    /// The (external address, external port) a word names.
    pub const fn unword(w: u64) -> (WireAddr, WirePort) {
        let b = w.to_ne_bytes();
        (
            WireAddr(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
            WirePort(u16::from_ne_bytes([b[4], b[5]])),
        )
    }
    /// This binding's word.
    pub const fn ext_word(&self) -> u64 {
        Self::word(self.ext_addr, self.ext_port, self.int_port)
    }
    /// The word as a mutable u64, for a compare-and-swap.
    pub fn ext_word_mut(&mut self) -> &mut u64 {
        // Safety: `Binding` is #[repr(C)], aligned to 8, with `ext_addr`, `ext_port` and
        // `int_port` filling its first 8 bytes (asserted above); any bits are valid there.
        unsafe { &mut *(self as *mut Binding).cast::<u64>() }
    }
    /// An internal entry a reclaimer is removing (or an orphan): it names no port.
    pub const fn is_dying(&self) -> bool {
        self.ext_addr.is_unspecified()
    }
    pub const fn is_static(&self) -> bool {
        self.flags & BINDING_STATIC != 0
    }
    /// When the binding's port becomes free (`u64::MAX`: not while things stay as they are).
    pub const fn free_at_ns(&self) -> u64 {
        if self.is_static() {
            return u64::MAX;
        }
        if self.open_flows == 0 && self.idle_until_ns < self.expires_ns {
            self.idle_until_ns
        } else {
            self.expires_ns
        }
    }
    pub const fn expired(&self, now_ns: u64) -> bool {
        now_ns >= self.free_at_ns()
    }
}

/// Index of a flow's two directions in its per-direction fields: from the internal host
/// (outbound) and from the remote (inbound).
pub const DIR_OUT: usize = 0;
pub const DIR_IN: usize = 1;

/// [`Flow::flags`]: the flow is confirmed (see [`Flow::confirmed`]); from then on it lives on
/// its protocol's timeout and is never evicted to make room.
pub const FLOW_CONFIRMED: u8 = 1;

/// Key of the flow table: one entry per (internal endpoint, remote endpoint), found from
/// both directions (inbound packets reach it through the binding), so a flow has no halves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub proto: u8,
    /// Padding as a byte and a halfword, not `[u8; 3]`: the eBPF target zeroes an array
    /// with a call to a byte loop (the layout is the same).
    pub _pad: u8,
    pub _pad2: u16,
    pub int_addr: WireAddr,
    pub rem_addr: WireAddr,
    pub int_port: WirePort,
    /// Remote port; 0 for ICMP echo.
    pub rem_port: WirePort,
}

impl FlowKey {
    pub const fn new(
        proto: u8,
        int_addr: WireAddr,
        int_port: WirePort,
        rem_addr: WireAddr,
        rem_port: WirePort,
    ) -> Self {
        Self {
            proto,
            _pad: 0,
            _pad2: 0,
            int_addr,
            rem_addr,
            int_port,
            rem_port,
        }
    }
}

/// The flow was opened from inside (SNAT) or from outside (a port forward, or
/// endpoint-independent filtering).
pub const ORIGIN_OUTBOUND: u8 = 0;
pub const ORIGIN_INBOUND: u8 = 1;

/// Value of the flow table.
///
/// Every write into a flow happens after a compare-and-swap of its `expires_ns` from the
/// value the packet found (see `translate::flows`): a flow removed and its memory handed to
/// another one meanwhile (the kernel reuses hash elements at once) has another expiry, so
/// the swap fails and nothing is written. 0 means a remover has it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub ext_addr: WireAddr,
    pub ext_port: WirePort,
    /// A [`TcpState`] for TCP; 0 otherwise.
    pub state: u8,
    pub origin: u8,
    pub created_ns: u64,
    pub expires_ns: u64,
    /// The binding's expiry as this flow last pushed it: the binding is only written when
    /// the flow's expiry passes it, not on every packet.
    pub binding_expires_ns: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    /// TCP, per direction ([`DIR_OUT`], [`DIR_IN`]): the sequence number after the last
    /// segment of the handshake phase (SYN + data), the last acknowledgement and the window
    /// (raw), and the window scale (from the SYN's option; see `crate::tcp`).
    pub tcp_end: [u32; 2],
    pub tcp_ack: [u32; 2],
    pub tcp_win: [u16; 2],
    pub tcp_wscale: [u8; 2],
    /// TCP: which of the fields above are known (`crate::tcp::SEEN_*`).
    pub tcp_seen: u8,
    /// [`FLOW_CONFIRMED`].
    pub flags: u8,
    /// The fast path's next hop per direction ([`DIR_OUT`], [`DIR_IN`]).
    pub hops: [crate::fwd::HopCache; 2],
}

impl Flow {
    /// Whether the other side of the flow has answered: a packet against the flow's origin.
    pub const fn replied(&self) -> bool {
        if self.origin == ORIGIN_OUTBOUND {
            self.packets_in != 0
        } else {
            self.packets_out != 0
        }
    }
    /// Whether the flow is confirmed: set once it has been replied to and, for TCP,
    /// established (the handshake done), for the others still active two seconds after it
    /// began (as Linux conntrack's "assured": one spoofed datagram and its answer stay
    /// unconfirmed).
    pub const fn confirmed(&self) -> bool {
        self.flags & FLOW_CONFIRMED != 0
    }
    /// The aligned 64-bit word that holds `ext_addr`, `ext_port`, `state` and `origin`, as
    /// it is with `state` (in memory order): what an atomic compare-and-swap of the state
    /// compares (eBPF has no narrower one on every CPU version). The other three never change
    /// after a flow is made.
    pub const fn state_word(&self, state: u8) -> u64 {
        let a = self.ext_addr.0.to_ne_bytes();
        let p = self.ext_port.0.to_ne_bytes();
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], p[0], p[1], state, self.origin])
    }
}

/// Where [`Flow::state_word`] sits in a flow.
pub const FLOW_STATE_WORD: usize = core::mem::offset_of!(Flow, ext_addr);
const _: () = {
    assert!(FLOW_STATE_WORD.is_multiple_of(8));
    assert!(core::mem::offset_of!(Flow, ext_port) == FLOW_STATE_WORD + 4);
    assert!(core::mem::offset_of!(Flow, state) == FLOW_STATE_WORD + 6);
    assert!(core::mem::offset_of!(Flow, origin) == FLOW_STATE_WORD + 7);
};

/// Key of the fragment table: the first fragment's ports, for the fragments that follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: WireAddr,
    pub dst: WireAddr,
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// What the first fragment of a datagram decided, for the fragments that follow: its ports
/// (before translation), and whether the datagram is the router's own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragPorts {
    pub sport: WirePort,
    pub dport: WirePort,
    /// [`FRAG_LOCAL`].
    pub flags: u32,
    /// After this the entry is forgotten (the fragments' reassembly time is over).
    pub expires_ns: u64,
}

/// Where a fragment that came before its datagram's first is held: its datagram and a slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HeldKey {
    pub frag: FragKey,
    /// 0 to `HELD_SLOTS - 1` ([`held_slot`]).
    pub slot: u32,
}

/// How many fragments of one datagram are held before its first arrives; more are dropped
/// (counted), as a bounded reassembly queue would.
pub const HELD_SLOTS: u32 = 8;
/// The longest frame held (a 1500-byte MTU with VLAN tags fits; a jumbo frame does not).
pub const HELD_BYTES: usize = 2048;

/// A fragment that arrived before its datagram's first, as it came (the whole frame), until
/// the first fragment says where it goes and it is sent again, or it expires.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldFrag {
    pub expires_ns: u64,
    /// The frame's length (at most `HELD_BYTES - 1`).
    pub len: u32,
    /// Its fragment offset (8-byte units, host order): two fragments of a datagram that
    /// map to one slot are told apart.
    pub offset: u16,
    pub _pad: u16,
    pub bytes: [u8; HELD_BYTES],
}

impl Default for HeldFrag {
    fn default() -> Self {
        HeldFrag {
            expires_ns: 0,
            len: 0,
            offset: 0,
            _pad: 0,
            bytes: [0; HELD_BYTES],
        }
    }
}

/// The `probe`th slot tried for a fragment at `offset` (8-byte units): from a mix of the
/// offset's bits, then the next ones round (so any [`HELD_SLOTS`] fragments of a datagram
/// find a slot, whatever size they were cut to).
pub const fn held_slot(offset: u16, probe: u32) -> u32 {
    let o = offset as u32;
    (o ^ (o >> 3) ^ (o >> 6) ^ (o >> 9)).wrapping_add(probe) % HELD_SLOTS
}

/// A remote address's count of new inbound flows in the current second (the bound
/// [`NatConfig::new_per_remote`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteRate {
    /// When the current one-second window began.
    pub window_ns: u64,
    pub count: u32,
    pub _pad: u32,
}

/// The datagram is not the NAT's (it is for the router itself): its fragments pass untouched.
pub const FRAG_LOCAL: u32 = 1;
/// How long a datagram's fragments are recognised after its first (Linux's `ipfrag_time`).
pub const FRAG_TIMEOUT_NS: u64 = 30 * SEC;

/// An internal prefix: address and mask.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prefix {
    pub addr: WireAddr,
    pub mask: WireAddr,
}

/// How many internal prefixes the configuration holds.
pub const MAX_INTERNAL: usize = 8;

/// Filtering of inbound packets to a dynamic binding (RFC 4787 section 5).
pub const FLAG_ENDPOINT_INDEPENDENT_FILTERING: u32 = 1;
/// Drop IP protocols without ports leaving by the uplink (rather than give them
/// address-only translation).
pub const FLAG_DROP_UNSUPPORTED: u32 = 2;
/// Let packets from outside to internal addresses be routed (rather than dropped): the
/// plain router's behaviour, for labs that want it.
pub const FLAG_INBOUND_ROUTE: u32 = 4;

/// Inclusive range of host-order port numbers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    pub const fn new(min: u16, max: u16) -> Self {
        Self { min, max }
    }
    pub const fn contains(&self, p: u16) -> bool {
        self.min <= p && p <= self.max
    }
    /// Number of ports in the range (0 if empty).
    pub const fn len(&self) -> u32 {
        if self.max < self.min {
            0
        } else {
            self.max as u32 - self.min as u32 + 1
        }
    }
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Timeouts in nanoseconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub udp_ns: u64,
    pub tcp_established_ns: u64,
    pub tcp_transitory_ns: u64,
    pub icmp_ns: u64,
    /// Protocols without ports (address-only translation).
    pub other_ns: u64,
    /// A flow not confirmed yet (see [`Flow::confirmed`]), whatever its protocol.
    pub unconfirmed_ns: u64,
}

/// A second in nanoseconds.
pub const SEC: u64 = 1_000_000_000;

impl Timeouts {
    /// The BCP defaults: UDP 5 min (RFC 4787 REQ-5), TCP established 2 h 4 min and
    /// transitory 4 min (RFC 5382 REQ-5), ICMP query 60 s (RFC 5508 REQ-1); other protocols
    /// 10 min and unconfirmed flows 30 s (Linux conntrack's generic and unreplied UDP).
    pub const DEFAULT: Timeouts = Timeouts {
        udp_ns: 300 * SEC,
        tcp_established_ns: 7440 * SEC,
        tcp_transitory_ns: 240 * SEC,
        icmp_ns: 60 * SEC,
        other_ns: 600 * SEC,
        unconfirmed_ns: 30 * SEC,
    };
}

/// The single entry of the configuration array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatConfig {
    /// The uplink's address: what new flows are translated to.
    pub ext_addr: WireAddr,
    pub flags: u32,
    pub internal: [Prefix; MAX_INTERNAL],
    pub n_internal: u32,
    /// Ports for internal ports >= 1024.
    pub ports: PortRange,
    /// Ports for internal ports < 1024 (RFC 4787: low ports map to low ports).
    pub low_ports: PortRange,
    /// ICMP echo identifiers.
    pub icmp_ids: PortRange,
    pub timeouts: Timeouts,
    /// New inbound flows one remote address may open per second (0: no bound).
    pub new_per_remote: u32,
    pub _pad: u32,
}

impl NatConfig {
    /// Whether `addr` is in one of the internal prefixes.
    pub fn is_internal(&self, addr: WireAddr) -> bool {
        // Only the prefixes in use (bounded for the verifier by the array's size).
        let mut i = 0;
        while i < MAX_INTERNAL && (i as u32) < self.n_internal {
            let p = self.internal[i];
            if addr.0 & p.mask.0 == p.addr.0 & p.mask.0 {
                return true;
            }
            i += 1;
        }
        false
    }

    /// The external range for internal port/identifier `port` (host order) of `proto`.
    pub const fn range_for(&self, proto: u8, port: u16) -> PortRange {
        if proto == PROTO_ICMP {
            self.icmp_ids
        } else if port < 1024 {
            self.low_ports
        } else {
            self.ports
        }
    }

    /// Idle timeout of a confirmed flow of `proto` in TCP state `state`.
    pub const fn timeout_ns(&self, proto: u8, state: u8) -> u64 {
        match proto {
            PROTO_TCP => {
                if state == TcpState::Established as u8 {
                    self.timeouts.tcp_established_ns
                } else {
                    self.timeouts.tcp_transitory_ns
                }
            }
            PROTO_UDP => self.timeouts.udp_ns,
            PROTO_ICMP => self.timeouts.icmp_ns,
            _ => self.timeouts.other_ns,
        }
    }

    /// Idle timeout of a flow: its protocol's, or the shorter unconfirmed one until it is
    /// confirmed.
    pub const fn flow_timeout_ns(&self, proto: u8, state: u8, confirmed: bool) -> u64 {
        let t = self.timeout_ns(proto, state);
        if !confirmed && self.timeouts.unconfirmed_ns < t {
            self.timeouts.unconfirmed_ns
        } else {
            t
        }
    }
}

/// How many external ports one new mapping may try before giving up (bounded for the
/// verifier; a range up to this size is searched exhaustively).
pub const MAX_PORT_TRIES: u32 = 64;

/// The `i`-th external port to try (host order) for internal port `orig`: first the
/// internal port itself when it is in range (port preservation, RFC 4787 REQ-3 is a MAY;
/// users expect it), then ports drawn independently across the range (a hash of the seed
/// and `i`): consecutive probes would run into the clusters that consecutive probing itself
/// builds, and fail where independent ones do not (see the test). A range no larger than
/// the number of tries is walked instead, from the internal port when it is in range (else
/// from a random start), so that it is searched exhaustively.
pub const fn port_candidate(orig: u16, range: PortRange, seed: u32, i: u32) -> Option<u16> {
    let len = range.len();
    if len == 0 {
        return None;
    }
    if i == 0 && range.contains(orig) {
        return Some(orig);
    }
    let off = if len <= MAX_PORT_TRIES {
        // Walking from the internal port, whose try comes first: from anywhere else, the
        // tries after it would miss one port of a range exactly as long as the tries.
        let start = if range.contains(orig) {
            orig as u32 - range.min as u32
        } else {
            seed % len
        };
        (start + i) % len
    } else {
        mix32(seed ^ i.wrapping_mul(0x9e37_79b9)) % len
    };
    Some((range.min as u32 + off) as u16)
}

/// A 32-bit finaliser (murmur3's): every input bit moves every output bit.
pub const fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}

/// TCP connection tracking states (after RFC 6146's simplified machine).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    /// No segment that moves the machine seen yet.
    None = 0,
    /// SYN seen from inside only.
    SynOut = 1,
    /// SYN seen from outside only.
    SynIn = 2,
    /// SYN seen both ways (or a connection picked up mid-stream).
    Established = 3,
    /// FIN seen from inside.
    FinOut = 4,
    /// FIN seen from outside.
    FinIn = 5,
    /// FIN seen both ways, or RST: on the transitory timeout until reclaimed.
    Closed = 6,
}

impl TcpState {
    pub const fn from_u8(v: u8) -> TcpState {
        match v {
            1 => TcpState::SynOut,
            2 => TcpState::SynIn,
            3 => TcpState::Established,
            4 => TcpState::FinOut,
            5 => TcpState::FinIn,
            6 => TcpState::Closed,
            _ => TcpState::None,
        }
    }

    /// Every state, in code order.
    pub const ALL: [TcpState; 7] = [
        TcpState::None,
        TcpState::SynOut,
        TcpState::SynIn,
        TcpState::Established,
        TcpState::FinOut,
        TcpState::FinIn,
        TcpState::Closed,
    ];

    /// The state called `name` (as [`TcpState::name`] writes it).
    pub fn from_name(name: &str) -> Option<TcpState> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    pub const fn name(self) -> &'static str {
        match self {
            TcpState::None => "none",
            TcpState::SynOut => "syn_out",
            TcpState::SynIn => "syn_in",
            TcpState::Established => "established",
            TcpState::FinOut => "fin_out",
            TcpState::FinIn => "fin_in",
            TcpState::Closed => "closed",
        }
    }
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Whether a TCP flow in `state` holds its binding open: it has begun and not closed.
#[inline(always)]
pub const fn holds_binding(state: TcpState) -> bool {
    !matches!(state, TcpState::None | TcpState::Closed)
}

/// The state after a segment with `flags` travelling outbound (`outbound`) or inbound.
/// Segments no TCP sends (SYN with FIN; anything but a first SYN or a RST without ACK)
/// move nothing.
#[inline(always)]
pub const fn tcp_next(state: TcpState, outbound: bool, flags: u8) -> TcpState {
    use TcpState::*;
    let syn = flags & TCP_SYN != 0;
    let fin = flags & TCP_FIN != 0;
    if syn && fin {
        return state;
    }
    if flags & TCP_RST != 0 {
        return Closed;
    }
    if !syn && flags & TCP_ACK == 0 {
        return state;
    }
    match state {
        None => {
            if syn {
                if outbound { SynOut } else { SynIn }
            } else {
                // Picked up mid-stream (e.g. after the NAT was reloaded): let it live.
                Established
            }
        }
        SynOut if syn && !outbound => Established,
        SynIn if syn && outbound => Established,
        Established | FinOut | FinIn if fin => match (state, outbound) {
            (FinOut, false) | (FinIn, true) => Closed,
            (Established, true) => FinOut,
            (Established, false) => FinIn,
            _ => state,
        },
        // A new SYN on a closed tuple (port reuse after TIME_WAIT) starts over.
        Closed if syn => {
            if outbound {
                SynOut
            } else {
                SynIn
            }
        }
        _ => state,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn protocols_are_named_as_printed() {
        assert_eq!(proto_name(PROTO_TCP), "tcp");
        assert_eq!(proto_name(PROTO_UDP), "udp");
        assert_eq!(proto_name(PROTO_ICMP), "icmp");
        assert_eq!(proto_name(47), "other");
    }

    #[test]
    fn layouts_have_no_hidden_padding() {
        // Sum of field sizes == size: nothing the compiler added that we did not zero.
        assert_eq!(core::mem::size_of::<BindingKey>(), 1 + 1 + 2 + 4 + 2 + 2);
        assert_eq!(core::mem::size_of::<Binding>(), 4 + 4 + 2 + 2 + 4 + 4 + 4 + 8 + 8);
        assert_eq!(core::mem::size_of::<FlowKey>(), 1 + 3 + 4 + 4 + 2 + 2);
        assert_eq!(
            core::mem::size_of::<Flow>(),
            4 + 2 + 1 + 1 + 7 * 8 + 4 * 2 + 4 * 2 + 2 * 2 + 2 + 1 + 1 + 2 * (4 + 4 + 16 + 2 + 2 + 4 + 4)
        );
        assert_eq!(core::mem::size_of::<FragKey>(), 4 + 4 + 2 + 1 + 1);
        assert_eq!(core::mem::size_of::<FragPorts>(), 2 + 2 + 4 + 8);
        assert_eq!(core::mem::size_of::<HeldKey>(), 12 + 4);
        assert_eq!(core::mem::size_of::<HeldFrag>(), 8 + 4 + 2 + 2 + HELD_BYTES);
        assert_eq!(core::mem::size_of::<Timeouts>(), 48);
        assert_eq!(
            core::mem::size_of::<NatConfig>(),
            4 + 4 + 8 * MAX_INTERNAL + 4 + 4 + 4 + 4 + 48 + 4 + 4
        );
    }

    #[test]
    fn wire_order_round_trips() {
        let a = Ipv4Addr::new(192, 168, 1, 2);
        assert_eq!(addr_from_wire(addr_to_wire(a)), a);
        // The wire bytes, as they sit in memory, are the dotted-quad order.
        assert_eq!(addr_to_wire(a).0.to_ne_bytes(), [192, 168, 1, 2]);
        assert_eq!(port_to_wire(80).0.to_ne_bytes(), [0, 80]);
    }

    fn cfg() -> NatConfig {
        let mut c = NatConfig {
            ports: PortRange::new(1024, 65535),
            low_ports: PortRange::new(1, 1023),
            icmp_ids: PortRange::new(0, 65535),
            timeouts: Timeouts::DEFAULT,
            n_internal: 1,
            ..Default::default()
        };
        c.internal[0] = Prefix {
            addr: addr_to_wire(Ipv4Addr::new(192, 168, 15, 0)),
            mask: addr_to_wire(Ipv4Addr::new(255, 255, 255, 0)),
        };
        c
    }

    #[test]
    fn internal_prefixes() {
        let c = cfg();
        assert!(c.is_internal(addr_to_wire(Ipv4Addr::new(192, 168, 15, 1))));
        assert!(!c.is_internal(addr_to_wire(Ipv4Addr::new(192, 168, 1, 3))));
        let mut none = c;
        none.n_internal = 0;
        assert!(!none.is_internal(addr_to_wire(Ipv4Addr::new(192, 168, 15, 1))));
    }

    #[test]
    fn low_ports_map_low() {
        let c = cfg();
        assert_eq!(c.range_for(PROTO_UDP, 53), PortRange::new(1, 1023));
        assert_eq!(c.range_for(PROTO_TCP, 40000), PortRange::new(1024, 65535));
        assert_eq!(c.range_for(PROTO_ICMP, 5), PortRange::new(0, 65535));
    }

    #[test]
    fn timeouts_follow_state() {
        let c = cfg();
        assert_eq!(c.timeout_ns(PROTO_TCP, TcpState::Established as u8), 7440 * SEC);
        assert_eq!(c.timeout_ns(PROTO_TCP, TcpState::SynOut as u8), 240 * SEC);
        assert_eq!(c.timeout_ns(PROTO_TCP, TcpState::Closed as u8), 240 * SEC);
        assert_eq!(c.timeout_ns(PROTO_UDP, 0), 300 * SEC);
        assert_eq!(c.timeout_ns(PROTO_ICMP, 0), 60 * SEC);
        assert_eq!(
            c.timeout_ns(47, 0),
            600 * SEC,
            "GRE, like every protocol without ports"
        );
        // Until confirmed, the shorter of the two.
        assert_eq!(c.flow_timeout_ns(PROTO_UDP, 0, false), 30 * SEC);
        assert_eq!(c.flow_timeout_ns(PROTO_UDP, 0, true), 300 * SEC);
        let mut short = c;
        short.timeouts.udp_ns = 10 * SEC;
        assert_eq!(short.flow_timeout_ns(PROTO_UDP, 0, false), 10 * SEC);
    }

    #[test]
    fn a_binding_word_is_its_first_eight_bytes() {
        let mut b = Binding {
            ext_addr: addr_to_wire(Ipv4Addr::new(192, 168, 1, 2)),
            ext_port: port_to_wire(4000),
            int_port: port_to_wire(5000),
            int_addr: WireAddr(7),
            ..Binding::default()
        };
        let w = b.ext_word();
        assert_eq!(*b.ext_word_mut(), w);
        assert_eq!(Binding::unword(w), (b.ext_addr, b.ext_port));
        *b.ext_word_mut() = Binding::word(WireAddr::UNSPECIFIED, b.ext_port, b.int_port);
        assert!(b.is_dying());
        assert_eq!(
            (b.ext_port, b.int_port, b.int_addr),
            (port_to_wire(4000), port_to_wire(5000), WireAddr(7))
        );
    }

    #[test]
    fn tcp_handshake_and_close() {
        use TcpState::*;
        let s = tcp_next(None, true, TCP_SYN);
        assert_eq!(s, SynOut);
        let s = tcp_next(s, false, TCP_SYN | TCP_ACK);
        assert_eq!(s, Established);
        let s = tcp_next(s, true, TCP_ACK);
        assert_eq!(s, Established);
        let s = tcp_next(s, true, TCP_FIN | TCP_ACK);
        assert_eq!(s, FinOut);
        let s = tcp_next(s, true, TCP_ACK);
        assert_eq!(s, FinOut);
        let s = tcp_next(s, false, TCP_FIN | TCP_ACK);
        assert_eq!(s, Closed);
        // Inbound (port forward) handshake.
        let s = tcp_next(None, false, TCP_SYN);
        assert_eq!(s, SynIn);
        assert_eq!(tcp_next(s, true, TCP_SYN | TCP_ACK), Established);
        // A SYN retransmit does not establish.
        assert_eq!(tcp_next(SynOut, true, TCP_SYN), SynOut);
        // RST closes from anywhere; a new SYN reopens a closed tuple.
        assert_eq!(tcp_next(Established, false, TCP_RST | TCP_ACK), Closed);
        assert_eq!(tcp_next(Closed, true, TCP_SYN), SynOut);
        // Mid-stream pickup.
        assert_eq!(tcp_next(None, true, TCP_ACK), Established);
    }

    #[test]
    fn segments_no_tcp_sends_move_nothing() {
        use TcpState::*;
        for s in [None, SynOut, SynIn, Established, FinOut, FinIn, Closed] {
            for out in [true, false] {
                // SYN with FIN (with or without ACK, even with RST), a null segment, FIN
                // without ACK, PSH or URG alone.
                for flags in [
                    TCP_SYN | TCP_FIN,
                    TCP_SYN | TCP_FIN | TCP_ACK,
                    TCP_SYN | TCP_FIN | TCP_RST,
                    0,
                    TCP_FIN,
                    0x08,
                    0x20,
                ] {
                    assert_eq!(tcp_next(s, out, flags), s, "{s:?} {out} {flags:#04x}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn state_codes_round_trip(v in 0u8..=6) {
            let s = TcpState::from_u8(v);
            prop_assert_eq!(s as u8, v);
            prop_assert_eq!(TcpState::from_name(s.name()), Some(s));
        }

        #[test]
        fn rst_closes_unless_with_syn_and_fin(s in 0u8..=6, out: bool, flags: u8) {
            let flags = flags | TCP_RST;
            let want = if flags & TCP_SYN != 0 && flags & TCP_FIN != 0 {
                TcpState::from_u8(s)
            } else {
                TcpState::Closed
            };
            prop_assert_eq!(tcp_next(TcpState::from_u8(s), out, flags), want);
        }

        #[test]
        fn candidates_stay_in_range_and_cover_small_ranges(
            min in 1u16..60000, len in 1u16..=64, orig: u16, seed: u32
        ) {
            let range = PortRange::new(min, min + (len - 1));
            let mut seen = HashSet::new();
            for i in 0..MAX_PORT_TRIES {
                let p = port_candidate(orig, range, seed, i).unwrap();
                prop_assert!(range.contains(p));
                seen.insert(p);
            }
            // A range no larger than the number of tries is searched exhaustively.
            prop_assert_eq!(seen.len(), range.len() as usize);
        }

        #[test]
        fn preserves_the_port_when_in_range(orig in 1024u16.., seed: u32) {
            let c = cfg();
            prop_assert_eq!(port_candidate(orig, c.range_for(PROTO_UDP, orig), seed, 0), Some(orig));
        }
    }

    /// How often a search of [`MAX_PORT_TRIES`] candidates fails in a range filled to
    /// `occupancy` by the same search (so that the clusters a strategy builds are there),
    /// with `candidate` as the strategy.
    fn search_failure_rate(
        occupancy: f64,
        candidate: impl Fn(u16, PortRange, u32, u32) -> Option<u16>,
    ) -> f64 {
        let range = PortRange::new(1024, 65535);
        let mut rng = 0x2545_f491_u32;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            rng
        };
        let mut taken = HashSet::new();
        let target = (f64::from(range.len()) * occupancy) as usize;
        while taken.len() < target {
            let (orig, seed) = (1024 + (next() % 64512) as u16, next());
            if let Some(p) = (0..MAX_PORT_TRIES)
                .find_map(|i| candidate(orig, range, seed, i).filter(|p| !taken.contains(p)))
            {
                taken.insert(p);
            }
        }
        let trials = 20_000;
        let failed = (0..trials)
            .filter(|_| {
                let (orig, seed) = (1024 + (next() % 64512) as u16, next());
                (0..MAX_PORT_TRIES)
                    .all(|i| candidate(orig, range, seed, i).is_none_or(|p| taken.contains(&p)))
            })
            .count();
        failed as f64 / f64::from(trials)
    }

    /// The strategy before independent probes: consecutive ports from a random start.
    fn consecutive_candidate(orig: u16, range: PortRange, seed: u32, i: u32) -> Option<u16> {
        if i == 0 && range.contains(orig) {
            return Some(orig);
        }
        Some((u32::from(range.min) + (seed % range.len() + i) % range.len()) as u16)
    }

    #[test]
    fn independent_probes_fail_less_than_consecutive_ones_in_a_crowded_range() {
        let mut lines = std::vec::Vec::new();
        for occupancy in [0.80, 0.85, 0.90, 0.95] {
            let random = search_failure_rate(occupancy, port_candidate);
            let consecutive = search_failure_rate(occupancy, consecutive_candidate);
            lines.push(std::format!(
                "{:.0} % occupied: {:.3} % of searches fail with independent probes, {:.3} % with consecutive ones",
                occupancy * 100.0,
                random * 100.0,
                consecutive * 100.0
            ));
            if occupancy <= 0.90 {
                // 0.9^63 = 0.13 %: independent probes fail about as often as chance says.
                assert!(random < 0.005, "{}", lines.last().unwrap());
                assert!(random < consecutive, "{}", lines.last().unwrap());
            }
        }
        std::eprintln!("{}", lines.join("\n"));
    }

    #[test]
    fn empty_range_has_no_candidate() {
        assert_eq!(port_candidate(5, PortRange::new(10, 9), 0, 0), None);
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // Safety: each type is #[repr(C)] with only integer fields (or arrays of such types),
    // and the layout test above shows no implicit padding, so every byte pattern is valid
    // and no uninitialised byte reaches the kernel.
    unsafe impl aya::Pod for BindingKey {}
    unsafe impl aya::Pod for Binding {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragPorts {}
    unsafe impl aya::Pod for HeldKey {}
    unsafe impl aya::Pod for HeldFrag {}
    unsafe impl aya::Pod for RemoteRate {}
    unsafe impl aya::Pod for NatConfig {}
}
