//! Forwarding without the router's stack: where a packet goes next, as the fast path and the
//! benchmark's bare-redirect ceilings write it into the frame before redirecting it.

/// The next hop of a redirected frame: the interface it leaves by and the MAC addresses its
/// Ethernet header gets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    /// Source MAC: the egress interface's own.
    pub src_mac: [u8; 6],
    /// Destination MAC: the neighbour's.
    pub dst_mac: [u8; 6],
}

/// A flow's copy of its next hop in one direction, so that its packets skip the FIB
/// lookup: valid while the fast path's configuration has the generation it was taken in
/// (the agent moves it on at every route, rule, neighbour, link, address or forwarding
/// change the router's namespace announces) and for at most [`HOP_MAX_EPOCHS`] epochs of
/// about a second after, whatever was missed. Inbound it also keeps the bridge port the
/// host was found behind, valid while the FDB generation is the one it was found in (a
/// port's state changing moves the configuration's generation on).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HopCache {
    /// The generation plus one (0: nothing cached). Written last, read first and last, so a
    /// reader never takes half of one next hop and half of another.
    pub tag: u32,
    /// When it was taken, in epochs of 2^30 ns.
    pub epoch: u32,
    pub hop: NextHop,
    /// The egress interface's MTU, which the cached path checks instead of the lookup.
    pub mtu: u16,
    pub _pad: u16,
    /// Inbound: the bridge port the host was found behind (0: none kept).
    pub port: u32,
    /// The FDB generation (its low 32 bits) `port` was found in.
    pub fdb_gen: u32,
}

/// What the kernel's forwarding check (`is_skb_forwardable`) allows past the MTU: the
/// link-layer header and a VLAN tag.
pub const FORWARDABLE_SLACK: u32 = 14 + 4;

/// How many epochs (2^30 ns, about a second) a cached next hop may be used after the one it
/// was taken in: so 7.5 to 8.6 seconds. Only what the agent did not hear waits that long
/// (it announces every change at once); shorter, and a flow whose packets come every few
/// seconds (a million flows at this machine's rates) would look up every packet.
pub const HOP_MAX_EPOCHS: u32 = 7;

impl HopCache {
    #[inline(always)]
    const fn epoch(now: u64) -> u32 {
        (now >> 30) as u32
    }

    /// What `read` takes from the cache if it is still good in generation `gen` at `now`.
    #[inline(always)]
    fn read<R>(&self, generation: u32, now: u64, read: impl FnOnce(&Self) -> R) -> Option<R> {
        let want = generation.wrapping_add(1);
        // Safety: reads of a field of a live reference.
        let tag = unsafe { core::ptr::read_volatile(&self.tag) };
        if tag != want || want == 0 || Self::epoch(now).wrapping_sub(self.epoch) > HOP_MAX_EPOCHS {
            return None;
        }
        let got = read(self);
        // Safety: as above. Another CPU rewriting it meanwhile zeroed the tag first.
        let again = unsafe { core::ptr::read_volatile(&self.tag) };
        (again == tag).then_some(got)
    }

    /// The cached next hop and its MTU if it is still good in generation `gen` at `now`.
    #[inline(always)]
    pub fn get(&self, generation: u32, now: u64) -> Option<(NextHop, u16)> {
        self.read(generation, now, |c| (c.hop, c.mtu))
    }

    /// Caches `hop` (egress MTU `mtu`), looked up in generation `gen` at `now`.
    #[inline(always)]
    pub fn put(&mut self, generation: u32, now: u64, hop: &NextHop, mtu: u16) {
        // Safety: writes of fields of a live mutable reference.
        unsafe { core::ptr::write_volatile(&mut self.tag, 0) };
        self.epoch = Self::epoch(now);
        self.hop = *hop;
        self.mtu = mtu;
        self.port = 0;
        // Safety: as above.
        unsafe { core::ptr::write_volatile(&mut self.tag, generation.wrapping_add(1)) };
    }

    /// The port kept with the next hop if both still hold in generation `gen` and FDB
    /// generation `fdb_gen` at `now` (0: none).
    #[inline(always)]
    pub fn port(&self, generation: u32, fdb_gen: u32, now: u64) -> u32 {
        self.read(generation, now, |c| if c.fdb_gen == fdb_gen { c.port } else { 0 })
            .unwrap_or(0)
    }

    /// Keeps `port`, found in FDB generation `fdb_gen`, with the next hop cached in
    /// generation `gen`; nothing if none is (XDP caches none).
    #[inline(always)]
    pub fn keep_port(&mut self, generation: u32, port: u32, fdb_gen: u32) {
        let want = generation.wrapping_add(1);
        // Safety: reads and writes of fields of a live mutable reference.
        if want == 0 || unsafe { core::ptr::read_volatile(&self.tag) } != want {
            return;
        }
        // Safety: as above.
        unsafe { core::ptr::write_volatile(&mut self.tag, 0) };
        self.port = port;
        self.fdb_gen = fdb_gen;
        // Safety: as above.
        unsafe { core::ptr::write_volatile(&mut self.tag, want) };
    }
}

/// Fast path off: every packet takes the router's stack.
pub const FAST_OFF: u32 = 0;
/// Fast path at TC: established flows are redirected at TCX ingress.
pub const FAST_TC: u32 = 1;
/// Fast path in XDP: the same, redirected through a DEVMAP before an skb exists.
pub const FAST_XDP: u32 = 2;

/// The single entry of the fast path's configuration array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastConfig {
    /// [`FAST_OFF`], [`FAST_TC`] or [`FAST_XDP`].
    pub mode: u32,
    /// Where outbound fast-path packets leave.
    pub uplink_ifindex: u32,
    /// The router's MAC on the internal side (the bridge's): frames addressed to it are
    /// routed.
    pub gateway_mac: [u8; 6],
    /// [`PEER_UPLINK`], [`PEER_PORTS`].
    pub flags: u16,
    /// How often a host's frames are let through the bridge (the slow path) so that its
    /// forwarding database keeps the host: half the bridge's ageing time (0: never, no
    /// bridge).
    pub bridge_refresh_ns: u64,
    /// The bridge whose MAC `gateway_mac` is (kept in step when it changes: a bridge
    /// without a MAC of its own takes its ports' lowest).
    pub bridge_ifindex: u32,
    /// The next-hop generation: every write of this configuration moves it on, and so
    /// does the agent at every routing change (see [`HopCache`]).
    pub hop_gen: u32,
    /// The uplink's MAC: frames to it arriving on the uplink are routed (plain forwarding,
    /// `--nat none`, where nothing else tells them from the uplink's other traffic).
    pub uplink_mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// The uplink is a veth: at TC, outbound packets go straight into its peer's ingress
/// (bpf_redirect_peer), skipping the uplink's egress, its qdisc and the backlog queue.
pub const PEER_UPLINK: u16 = 1;
/// The same for inbound packets into the bridge ports' peers (the internal hosts' veths).
pub const PEER_PORTS: u16 = 2;

/// A MAC address as a map key (padded to 8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MacKey {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

impl MacKey {
    pub const fn of(mac: [u8; 6]) -> MacKey {
        MacKey { mac, _pad: [0; 2] }
    }
}

/// Behind which of the router's bridge ports a MAC address was last seen (as the bridge's
/// forwarding database knows it, for fast-path packets, which skip the bridge). Which MAC
/// an internal address has is never taken from here: the kernel's neighbour table says
/// (a FIB lookup), so a host claiming another's address steers nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdbEntry {
    pub ifindex: u32,
    pub _pad: u32,
    /// When a frame from the address last arrived on that port.
    pub seen_ns: u64,
    /// When the bridge itself last saw a frame from it (one let through the slow path).
    pub bridged_ns: u64,
}

/// An entry is used only this long after its address's last frame: a host that moved or
/// went away is not sent to where it was for longer.
pub const FDB_FRESH_NS: u64 = 30 * 1_000_000_000;

impl FdbEntry {
    /// Whether it may steer a packet at `now`.
    pub const fn fresh(&self, now: u64) -> bool {
        now.saturating_sub(self.seen_ns) < FDB_FRESH_NS
    }
    /// Whether a frame from the address should now pass the bridge, for the bridge to see
    /// it (every `refresh_ns`; never with 0).
    pub const fn bridge_due(&self, now: u64, refresh_ns: u64) -> bool {
        refresh_ns != 0 && now.saturating_sub(self.bridged_ns) >= refresh_ns
    }
    /// Until when frames from the address need not look at the entry: its age is written
    /// every `seen_every_ns` and the bridge is due every `refresh_ns` (never with 0).
    pub const fn quiet_until(&self, seen_every_ns: u64, refresh_ns: u64) -> u64 {
        let seen = self.seen_ns.saturating_add(seen_every_ns);
        if refresh_ns == 0 {
            return seen;
        }
        let bridged = self.bridged_ns.saturating_add(refresh_ns);
        if bridged < seen { bridged } else { seen }
    }
}

/// One CPU's note of the last frame the fast path learned from: its source MAC `mac` was
/// behind `port` in the FDB with nothing to write there before `until_ns`, as of FDB
/// generation `fdb_gen` (moved on by every entry added or moved) and fast-path configuration
/// generation `config_gen`. While all of that holds, a frame from `mac` on `port` needs no
/// FDB lookup: a busy host costs one a second instead of one a frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LearnHint {
    pub mac: [u8; 6],
    pub _pad: u16,
    /// 0: no note (ports are never 0).
    pub port: u32,
    pub config_gen: u32,
    pub fdb_gen: u64,
    pub until_ns: u64,
}

impl LearnHint {
    /// Whether a frame from `mac` on `port` at `now` may skip the FDB lookup.
    #[inline(always)]
    pub fn covers(&self, mac: &[u8; 6], port: u32, config_gen: u32, fdb_gen: u64, now: u64) -> bool {
        self.port == port
            && now < self.until_ns
            && self.fdb_gen == fdb_gen
            && self.config_gen == config_gen
            && self.mac == *mac
    }
}

/// One of the router's fast-path ports (and the uplink), as the kernel has it: kept by the
/// loader and the agent (from rtnetlink link events).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortState {
    /// The bridge it is a port of (0: none): the interface the router routes its packets
    /// from.
    pub master: u32,
    /// [`PORT_UP`], [`PORT_BRIDGE`].
    pub flags: u32,
}

/// The port is administratively up with its carrier on: the bridge forwards to it.
pub const PORT_UP: u32 = 1;
/// The interface is a bridge: a packet routed to it goes to the bridge port its
/// destination MAC was last seen behind.
pub const PORT_BRIDGE: u32 = 2;

/// `bpf_fib_lookup`'s answers.
pub const FIB_SUCCESS: i64 = 0;
pub const FIB_FRAG_NEEDED: i64 = 8;
pub const FIB_NO_NEIGH: i64 = 7;

/// What a FIB lookup's answer means for the fast path: go on, or the slow path for a reason.
/// Anything but success, "fragmentation needed" and "no neighbour" (blackhole, unreachable,
/// prohibit, not forwarded, forwarding off on the interface) is the router's policy: the
/// kernel decides, as for any packet.
pub const fn fib_verdict(rc: i64) -> Result<(), Slow> {
    match rc {
        FIB_SUCCESS => Ok(()),
        FIB_FRAG_NEEDED => Err(Slow::Mtu),
        FIB_NO_NEIGH => Err(Slow::NoNeighbour),
        _ => Err(Slow::Policy),
    }
}

/// Why a packet of the NAT's leaves the fast path to the router's stack (the slow path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slow {
    /// No live flow: a flow's first packet, or one that expired.
    NoFlow,
    /// SYN, FIN or RST, or a TCP flow not established: the state machine advances in one place.
    TcpFlags,
    /// A fragment (first or not).
    Fragment,
    /// IP options (IHL > 5).
    IpOptions,
    /// TTL <= 1: the router owes the sender an ICMP time exceeded.
    Ttl,
    /// Neither TCP nor UDP (ICMP, errors included).
    Protocol,
    /// No route by the expected port, or its neighbour is not resolved yet.
    NoNeighbour,
    /// Larger than the egress MTU.
    Mtu,
    /// In XDP: an L4 checksum that is only the pseudo-header sum (the sender left it to
    /// offload); the skb helpers of the slow path finish it right.
    PartialChecksum,
    /// The hook refused the redirect (in XDP: the port is not in the DEVMAP).
    Redirect,
    /// The IPv4 header checksum fails: the kernel's input path drops it, as a router must
    /// (RFC 1812 5.2.2); the fast path, which skips that path, must not forward it.
    IpChecksum,
    /// The router would not forward it this way (no route, a local destination, forwarding
    /// off on the interface, a policy rule, a port down or out of the bridge): the kernel
    /// decides, as for any packet.
    Policy,
    /// The bridge has not seen this host for a while: this packet takes the bridge, so that
    /// its forwarding database keeps the host (fast-path frames never pass it).
    BridgeRefresh,
}

/// The IPv4 facts the fast path decides on (host order where it matters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpFacts {
    pub ver_ihl: u8,
    /// `frag_off` in host order (flags and offset).
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
}

/// Whether a packet may be forwarded without the router's stack, from its IPv4 header
/// alone: no options (the kernel acts on some), not a fragment (a policy rule may match
/// ports a later fragment does not carry), a TTL left after this hop. Any protocol: plain
/// forwarding touches nothing past the IPv4 header.
pub const fn routable_ip(f: &IpFacts) -> Result<(), Slow> {
    if f.ver_ihl != 0x45 {
        return Err(Slow::IpOptions);
    }
    // More-fragments flag or a non-zero offset.
    if f.frag_off & 0x3fff != 0 {
        return Err(Slow::Fragment);
    }
    if f.ttl <= 1 {
        return Err(Slow::Ttl);
    }
    Ok(())
}

/// Whether the kernel's input path would route a packet from `src` to `dst` (host order) with
/// IPv4 total length `tot_len` in a frame of `frame_len` bytes at all: it drops a total
/// length past the frame or shorter than the header, and martians (a multicast, broadcast,
/// `0.0.0.0/8` or loopback source; a `0.0.0.0/8` or loopback destination), which a FIB
/// lookup does not refuse. Only plain forwarding needs the addresses checked: the NAT's fast
/// path carries only flows the kernel's path made.
pub const fn kernel_would_route(src: u32, dst: u32, tot_len: u16, frame_len: u32) -> Result<(), Slow> {
    let tot = tot_len as u32;
    if tot < 20 || tot + crate::packet::ETH_HLEN as u32 > frame_len {
        return Err(Slow::Policy);
    }
    // 0.0.0.0/8 and 127.0.0.0/8 either way; multicast (224/4), class E and the limited
    // broadcast (240/4) as a source; multicast and the limited broadcast as a destination
    // (delivered locally or dropped, never forwarded).
    let (s8, d8) = (src >> 24, dst >> 24);
    if src >> 28 >= 0xe || s8 == 0 || s8 == 127 || d8 == 0 || d8 == 127 {
        return Err(Slow::Policy);
    }
    if dst >> 28 == 0xe || dst == u32::MAX {
        return Err(Slow::Policy);
    }
    Ok(())
}

/// Whether a packet may take the NAT's fast path, from its IPv4 header alone: routable, and
/// TCP or UDP (the protocols whose flows it translates).
pub const fn fast_ip(f: &IpFacts) -> Result<(), Slow> {
    if let Err(why) = routable_ip(f) {
        return Err(why);
    }
    if f.proto != crate::nat::PROTO_TCP && f.proto != crate::nat::PROTO_UDP {
        return Err(Slow::Protocol);
    }
    Ok(())
}

/// Whether a TCP segment with `flags` of a flow in `state` may take the fast path: only
/// established flows, and never a segment that would move the state machine.
pub const fn fast_tcp(flags: u8, state: u8) -> Result<(), Slow> {
    use crate::nat::{TCP_FIN, TCP_RST, TCP_SYN, TcpState};
    if flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 || state != TcpState::Established as u8 {
        return Err(Slow::TcpFlags);
    }
    Ok(())
}

/// Whether an L4 checksum field (host order) holds only the folded pseudo-header sum of a
/// TCP or UDP packet from `src` to `dst` (host order) with `l4_len` bytes of L4 header and
/// data: what a sender with TX checksum offload leaves there for the device to finish
/// (CHECKSUM_PARTIAL). A complete checksum equals it only by a 1-in-65,536 coincidence,
/// which then costs the packet the slow path, nothing more.
pub const fn partial_checksum(check: u16, src: u32, dst: u32, proto: u8, l4_len: u16) -> bool {
    let sum = (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + proto as u32 + l4_len as u32;
    check == crate::csum::fold(sum)
}

/// The TTL after one hop and the IPv4 header checksum (both as on the wire) that goes with
/// it. The TTL shares a 16-bit word with the protocol (RFC 1624 update of that word).
pub const fn decrement_ttl(ttl: u8, proto: u8, check_wire: u16) -> (u8, u16) {
    let old = u16::from_be_bytes([ttl, proto]);
    let new = u16::from_be_bytes([ttl - 1, proto]);
    let c = crate::csum::update16(u16::from_be(check_wire), old, new);
    (ttl - 1, c.to_be())
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::nat::{PROTO_ICMP, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpState};

    #[test]
    fn shared_types_have_no_padding() {
        assert_eq!(core::mem::size_of::<NextHop>(), 4 + 6 + 6);
        assert_eq!(
            core::mem::size_of::<FastConfig>(),
            4 + 4 + 6 + 2 + 8 + 4 + 4 + 6 + 2
        );
        assert_eq!(core::mem::size_of::<MacKey>(), 6 + 2);
        assert_eq!(core::mem::size_of::<FdbEntry>(), 4 + 4 + 8 + 8);
        assert_eq!(core::mem::size_of::<PortState>(), 4 + 4);
        assert_eq!(core::mem::size_of::<HopCache>(), 4 + 4 + 16 + 2 + 2 + 4 + 4);
        assert_eq!(core::mem::size_of::<LearnHint>(), 6 + 2 + 4 + 4 + 8 + 8);
    }

    #[test]
    fn fib_answers_map_to_the_fast_path_or_a_reason() {
        // The kernel's BPF_FIB_LKUP_RET_* values.
        assert_eq!(fib_verdict(0), Ok(()));
        assert_eq!(fib_verdict(8), Err(Slow::Mtu));
        assert_eq!(fib_verdict(7), Err(Slow::NoNeighbour));
        for rc in [1, 2, 3, 4, 5, 6, 9, -19] {
            assert_eq!(fib_verdict(rc), Err(Slow::Policy), "{rc}");
        }
    }

    #[test]
    fn fdb_entries_age_and_bridge_refreshes_come_due() {
        let s = 1_000_000_000u64;
        let e = FdbEntry {
            ifindex: 3,
            seen_ns: 100 * s,
            bridged_ns: 100 * s,
            ..FdbEntry::default()
        };
        assert!(e.fresh(100 * s) && e.fresh(129 * s) && !e.fresh(130 * s));
        assert!(!e.bridge_due(110 * s, 15 * s) && e.bridge_due(115 * s, 15 * s));
        assert!(!e.bridge_due(1000 * s, 0), "no bridge, no refresh");
    }

    fn ip_facts(ver_ihl: u8, frag_off: u16, ttl: u8, proto: u8) -> IpFacts {
        IpFacts {
            ver_ihl,
            frag_off,
            ttl,
            proto,
        }
    }

    #[test]
    fn only_plain_tcp_and_udp_take_the_fast_path() {
        assert_eq!(fast_ip(&ip_facts(0x45, 0, 64, PROTO_UDP)), Ok(()));
        assert_eq!(
            fast_ip(&ip_facts(0x45, 0x4000, 64, PROTO_TCP)),
            Ok(()),
            "DF is fine"
        );
        assert_eq!(fast_ip(&ip_facts(0x46, 0, 64, PROTO_UDP)), Err(Slow::IpOptions));
        assert_eq!(
            fast_ip(&ip_facts(0x45, 0x2000, 64, PROTO_UDP)),
            Err(Slow::Fragment)
        );
        assert_eq!(
            fast_ip(&ip_facts(0x45, 0x0001, 64, PROTO_UDP)),
            Err(Slow::Fragment)
        );
        assert_eq!(fast_ip(&ip_facts(0x45, 0, 1, PROTO_UDP)), Err(Slow::Ttl));
        assert_eq!(fast_ip(&ip_facts(0x45, 0, 0, PROTO_UDP)), Err(Slow::Ttl));
        assert_eq!(fast_ip(&ip_facts(0x45, 0, 64, PROTO_ICMP)), Err(Slow::Protocol));
    }

    #[test]
    fn martians_and_lengths_past_the_frame_are_the_kernels() {
        let a = |s: &str| u32::from(s.parse::<core::net::Ipv4Addr>().unwrap());
        let ok = |src: &str, dst: &str| kernel_would_route(a(src), a(dst), 100, 114);
        assert_eq!(ok("192.168.15.1", "192.168.1.3"), Ok(()));
        assert_eq!(ok("10.0.0.1", "223.255.255.255"), Ok(()));
        for (src, dst) in [
            ("224.0.0.1", "192.168.1.3"),
            ("239.1.2.3", "192.168.1.3"),
            ("240.0.0.1", "192.168.1.3"),
            ("255.255.255.255", "192.168.1.3"),
            ("0.0.0.0", "192.168.1.3"),
            ("0.1.2.3", "192.168.1.3"),
            ("127.0.0.1", "192.168.1.3"),
            ("192.168.15.1", "127.0.0.1"),
            ("192.168.15.1", "0.0.0.9"),
            ("192.168.15.1", "224.0.0.1"),
            ("192.168.15.1", "239.1.2.3"),
            ("192.168.15.1", "255.255.255.255"),
        ] {
            assert_eq!(ok(src, dst), Err(Slow::Policy), "{src} -> {dst}");
        }
        let (s, d) = (a("192.168.15.1"), a("192.168.1.3"));
        assert_eq!(
            kernel_would_route(s, d, 100, 113),
            Err(Slow::Policy),
            "past the frame"
        );
        assert_eq!(
            kernel_would_route(s, d, 19, 114),
            Err(Slow::Policy),
            "shorter than a header"
        );
        assert_eq!(
            kernel_would_route(s, d, 60, 114),
            Ok(()),
            "padding after it is fine"
        );
    }

    #[test]
    fn plain_forwarding_takes_any_protocol_but_not_options_fragments_or_a_last_hop() {
        for proto in [PROTO_ICMP, PROTO_TCP, PROTO_UDP, 47, 132] {
            assert_eq!(routable_ip(&ip_facts(0x45, 0x4000, 64, proto)), Ok(()), "{proto}");
        }
        assert_eq!(
            routable_ip(&ip_facts(0x46, 0, 64, PROTO_ICMP)),
            Err(Slow::IpOptions)
        );
        assert_eq!(routable_ip(&ip_facts(0x45, 0x2000, 64, 47)), Err(Slow::Fragment));
        assert_eq!(routable_ip(&ip_facts(0x45, 0x0010, 64, 47)), Err(Slow::Fragment));
        assert_eq!(routable_ip(&ip_facts(0x45, 0, 1, PROTO_ICMP)), Err(Slow::Ttl));
        assert_eq!(routable_ip(&ip_facts(0x45, 0, 2, PROTO_ICMP)), Ok(()));
    }

    #[test]
    fn only_established_segments_without_syn_fin_rst() {
        let est = TcpState::Established as u8;
        assert_eq!(fast_tcp(TCP_ACK, est), Ok(()));
        assert_eq!(fast_tcp(TCP_ACK | 0x08, est), Ok(()), "PSH");
        for f in [TCP_SYN, TCP_FIN | TCP_ACK, TCP_RST, TCP_SYN | TCP_FIN] {
            assert_eq!(fast_tcp(f, est), Err(Slow::TcpFlags));
        }
        assert_eq!(fast_tcp(TCP_ACK, TcpState::SynOut as u8), Err(Slow::TcpFlags));
        assert_eq!(fast_tcp(TCP_ACK, TcpState::FinIn as u8), Err(Slow::TcpFlags));
    }

    /// A TCP segment from 192.168.15.1:40000 to 192.168.1.3:80, 4 bytes of data, with its
    /// checksum field as given.
    fn segment(check: u16) -> [u8; 24] {
        let mut s = [0u8; 24];
        s[0..2].copy_from_slice(&40000u16.to_be_bytes());
        s[2..4].copy_from_slice(&80u16.to_be_bytes());
        s[12] = 5 << 4;
        s[13] = TCP_ACK;
        s[16..18].copy_from_slice(&check.to_be_bytes());
        s[20..24].copy_from_slice(b"data");
        s
    }

    const SRC: u32 = 0xc0a8_0f01;
    const DST: u32 = 0xc0a8_0103;

    fn pseudo(len: u16) -> u32 {
        (SRC >> 16) + (SRC & 0xffff) + (DST >> 16) + (DST & 0xffff) + u32::from(PROTO_TCP) + u32::from(len)
    }

    #[test]
    fn a_partial_checksum_is_recognised_and_a_complete_one_is_not() {
        // What the kernel writes for CHECKSUM_PARTIAL: ~csum_tcpudp_magic(.., 0), the folded
        // pseudo-header sum.
        let partial = crate::csum::fold(pseudo(24));
        assert!(partial_checksum(partial, SRC, DST, PROTO_TCP, 24));
        let full = !crate::csum::fold(crate::csum::sum(&segment(0), pseudo(24)));
        let mut seg = segment(full);
        let mut with_pseudo = Vec::new();
        for w in [
            SRC >> 16,
            SRC & 0xffff,
            DST >> 16,
            DST & 0xffff,
            u32::from(PROTO_TCP),
            24,
        ] {
            with_pseudo.extend_from_slice(&(w as u16).to_be_bytes());
        }
        with_pseudo.extend_from_slice(&seg);
        assert!(
            crate::csum::verifies(&with_pseudo),
            "the complete checksum is right"
        );
        assert!(!partial_checksum(full, SRC, DST, PROTO_TCP, 24));
        // Another length or address is another pseudo header.
        assert!(!partial_checksum(partial, SRC, DST, PROTO_TCP, 25));
        assert!(!partial_checksum(partial, SRC + 1, DST, PROTO_TCP, 24));
        seg[16] ^= 1;
        assert!(!partial_checksum(
            u16::from_be_bytes([seg[16], seg[17]]),
            SRC,
            DST,
            PROTO_TCP,
            24
        ));
    }

    proptest::proptest! {
        #[test]
        fn ttl_decrement_keeps_the_header_checksum_valid(
            mut header in proptest::array::uniform20(proptest::prelude::any::<u8>()),
            ttl in 2u8..=255,
        ) {
            header[0] = 0x45;
            header[8] = ttl;
            header[10] = 0;
            header[11] = 0;
            let c = crate::csum::checksum(&header);
            header[10..12].copy_from_slice(&c.to_be_bytes());
            let (new_ttl, new_c) = decrement_ttl(ttl, header[9], u16::from_be_bytes([header[10], header[11]]).to_be());
            header[8] = new_ttl;
            header[10..12].copy_from_slice(&u16::from_be(new_c).to_be_bytes());
            proptest::prop_assert_eq!(new_ttl, ttl - 1);
            proptest::prop_assert!(crate::csum::verifies(&header));
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // Safety: #[repr(C)], integer fields only, no padding (tested above).
    unsafe impl aya::Pod for super::NextHop {}
    unsafe impl aya::Pod for super::FastConfig {}
    unsafe impl aya::Pod for super::MacKey {}
    unsafe impl aya::Pod for super::FdbEntry {}
    unsafe impl aya::Pod for super::PortState {}
}
