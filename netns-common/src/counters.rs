//! Indices of the per-CPU counters the programs keep; user space sums them over CPUs.

/// One slot of the per-CPU counter array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Counter {
    IngressPackets = 0,
    IngressBytes = 1,
    EgressPackets = 2,
    EgressBytes = 3,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 4] = [
        Counter::IngressPackets,
        Counter::IngressBytes,
        Counter::EgressPackets,
        Counter::EgressBytes,
    ];
    /// Size of the counter array.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Stable name used in `status --json`.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::IngressPackets => "ingress_packets",
            Counter::IngressBytes => "ingress_bytes",
            Counter::EgressPackets => "egress_packets",
            Counter::EgressBytes => "egress_bytes",
        }
    }
}

/// Direction of a packet through a TC hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// The (packets, bytes) counters a packet in this direction adds to.
    pub const fn counters(self) -> (Counter, Counter) {
        match self {
            Direction::Ingress => (Counter::IngressPackets, Counter::IngressBytes),
            Direction::Egress => (Counter::EgressPackets, Counter::EgressBytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_in_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[test]
    fn directions_use_distinct_slots() {
        let (ip, ib) = Direction::Ingress.counters();
        let (ep, eb) = Direction::Egress.counters();
        let all = [ip, ib, ep, eb];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}

/// Declares [`NatCounter`] from one list, so that its variants, [`NatCounter::ALL`] (in
/// index order) and their names can never disagree.
macro_rules! nat_counters {
    ($($(#[$doc:meta])* $name:ident = $text:literal,)*) => {
        /// Outcomes counted by the eBPF NAT, one per-CPU slot each (map `NAT_COUNTERS`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u32)]
        pub enum NatCounter {
            $($(#[$doc])* $name,)*
        }

        impl NatCounter {
            /// Every counter, in index order.
            pub const ALL: &'static [NatCounter] = &[$(NatCounter::$name,)*];
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// Stable name used in `stats --json` and the metrics.
            pub const fn name(self) -> &'static str {
                match self {
                    $(NatCounter::$name => $text,)*
                }
            }
        }
    };
}

nat_counters! {
    /// Packets translated leaving by the uplink, per protocol.
    OutTcp = "out_tcp",
    OutUdp = "out_udp",
    OutIcmp = "out_icmp",
    /// Packets translated arriving on the uplink, per protocol.
    InTcp = "in_tcp",
    InUdp = "in_udp",
    InIcmp = "in_icmp",
    /// ICMP errors whose quoted packet was translated, per direction.
    IcmpErrorOut = "icmp_error_out",
    IcmpErrorIn = "icmp_error_in",
    /// Non-first fragments translated through the fragment table.
    Fragments = "fragments",
    /// Endpoint-independent mappings (bindings) created.
    NewMappings = "new_mappings",
    /// Flows created.
    NewFlows = "new_flows",
    /// Packets turned around inside the router (internal host to the external address).
    Hairpinned = "hairpinned",
    /// Packets that were not the NAT's business (the router's own traffic, other prefixes).
    Passed = "passed",
    /// Dropped: every port of the range is taken (for a protocol without ports: another
    /// internal host talks it with that remote).
    DropNoPort = "drop_no_port",
    /// Dropped: inbound with a mapping but no flow, under address-and-port-dependent filtering.
    DropUnsolicited = "drop_unsolicited",
    /// Dropped: headers too short or inconsistent.
    DropMalformed = "drop_malformed",
    /// Dropped: a conntrack or binding table is full.
    DropMapFull = "drop_map_full",
    /// Dropped: a protocol without ports under `unsupported = "drop"`, or an ICMP query
    /// other than echo.
    DropUnsupported = "drop_unsupported",
    /// Inbound to the external address on a port no mapping or forward owns (passed to the
    /// router's own stack).
    InUnmapped = "in_unmapped",
    /// A non-first fragment whose first fragment was not seen and that could not be held
    /// (too long, or its datagram's slots taken).
    DropFragmentUnknown = "drop_fragment_unknown",
    /// Fragments that arrived before their datagram's first, held until it comes (inbound,
    /// they also go on to the router's stack, in case the datagram is the router's own)...
    FragmentsHeld = "fragments_held",
    /// ...and those sent again, translated, once it came.
    FragmentsReplayed = "fragments_replayed",
    /// Fast path at TC: packets redirected straight to the uplink / to an internal port.
    FastOutTc = "fast_out_tc",
    FastInTc = "fast_in_tc",
    /// The same in XDP.
    FastOutXdp = "fast_out_xdp",
    FastInXdp = "fast_in_xdp",
    /// Hand-overs to the slow path, by reason (see [`crate::fwd::Slow`]).
    SlowNoFlow = "slow_no_flow",
    SlowTcpFlags = "slow_tcp_flags",
    SlowFragment = "slow_fragment",
    SlowIpOptions = "slow_ip_options",
    SlowTtl = "slow_ttl",
    SlowProtocol = "slow_protocol",
    SlowNoNeighbour = "slow_no_neighbour",
    SlowMtu = "slow_mtu",
    SlowPartialChecksum = "slow_partial_checksum",
    /// A redirect the hook refused or could not deliver (the packet went to the slow path,
    /// untouched).
    RedirectFailed = "redirect_failed",
    /// Hand-over to the slow path: an IPv4 header checksum that fails (the kernel drops it).
    SlowIpChecksum = "slow_ip_checksum",
    /// Dropped arriving on the uplink: an IPv4 header checksum that fails (RFC 1812 5.2.2),
    /// before it can touch any state.
    DropBadChecksum = "drop_bad_checksum",
    /// Trace events that did not fit in the ring buffer (`netns-nat trace` reads too slowly).
    TraceLost = "trace_lost",
    /// Packets of protocols without ports translated by address only, per direction.
    OutOther = "out_other",
    InOther = "in_other",
    /// Dropped: from outside to an internal address, through no flow or forward.
    DropInbound = "drop_inbound",
    /// Dropped: arriving on the uplink with an internal source or the external address as
    /// source (spoofed), or such a packet routed back out.
    DropSpoofed = "drop_spoofed",
    /// Dropped: a TCP segment other than a SYN trying to open an inbound flow.
    DropNotSyn = "drop_not_syn",
    /// Dropped: a RST or FIN outside the receiver's window (it changes nothing).
    DropOutOfWindow = "drop_out_of_window",
    /// Dropped: a remote address over its bound of new inbound flows per second.
    DropRemoteLimit = "drop_remote_limit",
    /// Dropped: an ICMP error from an internal host quoting nothing mapped (RFC 5508 REQ-4).
    DropErrorUnmapped = "drop_error_unmapped",
    /// Dropped: the entry the packet needs was being removed at that instant.
    DropBusy = "drop_busy",
    /// Unconfirmed inbound flows evicted to make room for a new flow (the table was full).
    EvictedUnconfirmed = "evicted_unconfirmed",
    /// Hand-over to the slow path: the router would not forward it (forwarding off, a
    /// policy rule, a port down).
    SlowPolicy = "slow_policy",
    /// Fast-path packets handed to the slow path so that the bridge sees the host again.
    SlowBridgeRefresh = "slow_bridge_refresh",
}

impl From<crate::fwd::Slow> for NatCounter {
    fn from(s: crate::fwd::Slow) -> Self {
        use crate::fwd::Slow;
        match s {
            Slow::NoFlow => NatCounter::SlowNoFlow,
            Slow::TcpFlags => NatCounter::SlowTcpFlags,
            Slow::Fragment => NatCounter::SlowFragment,
            Slow::IpOptions => NatCounter::SlowIpOptions,
            Slow::Ttl => NatCounter::SlowTtl,
            Slow::Protocol => NatCounter::SlowProtocol,
            Slow::NoNeighbour => NatCounter::SlowNoNeighbour,
            Slow::Mtu => NatCounter::SlowMtu,
            Slow::PartialChecksum => NatCounter::SlowPartialChecksum,
            Slow::Redirect => NatCounter::RedirectFailed,
            Slow::IpChecksum => NatCounter::SlowIpChecksum,
            Slow::Policy => NatCounter::SlowPolicy,
            Slow::BridgeRefresh => NatCounter::SlowBridgeRefresh,
        }
    }
}

#[cfg(test)]
mod nat_counter_tests {
    use super::NatCounter;

    /// The counter slots, in index order, written out apart from the macro: the maps of a
    /// running lab hold them so, and `up --upgrade` keeps those maps. A slot moved or renamed
    /// needs a new `layout::LAYOUT_VERSION` (one appended changes the stamp by itself).
    const SLOTS: [&str; 51] = [
        "out_tcp",
        "out_udp",
        "out_icmp",
        "in_tcp",
        "in_udp",
        "in_icmp",
        "icmp_error_out",
        "icmp_error_in",
        "fragments",
        "new_mappings",
        "new_flows",
        "hairpinned",
        "passed",
        "drop_no_port",
        "drop_unsolicited",
        "drop_malformed",
        "drop_map_full",
        "drop_unsupported",
        "in_unmapped",
        "drop_fragment_unknown",
        "fragments_held",
        "fragments_replayed",
        "fast_out_tc",
        "fast_in_tc",
        "fast_out_xdp",
        "fast_in_xdp",
        "slow_no_flow",
        "slow_tcp_flags",
        "slow_fragment",
        "slow_ip_options",
        "slow_ttl",
        "slow_protocol",
        "slow_no_neighbour",
        "slow_mtu",
        "slow_partial_checksum",
        "redirect_failed",
        "slow_ip_checksum",
        "drop_bad_checksum",
        "trace_lost",
        "out_other",
        "in_other",
        "drop_inbound",
        "drop_spoofed",
        "drop_not_syn",
        "drop_out_of_window",
        "drop_remote_limit",
        "drop_error_unmapped",
        "drop_busy",
        "evicted_unconfirmed",
        "slow_policy",
        "slow_bridge_refresh",
    ];

    #[test]
    fn all_lists_every_variant_once_in_slot_order() {
        assert_eq!(
            NatCounter::ALL.len(),
            SLOTS.len(),
            "a counter added or removed: update SLOTS"
        );
        assert_eq!(NatCounter::COUNT as usize, SLOTS.len());
        for (i, (c, name)) in NatCounter::ALL.iter().zip(SLOTS).enumerate() {
            assert_eq!(*c as usize, i, "{name}: its value is not its place in ALL");
            assert_eq!(c.name(), name, "slot {i}");
            assert_eq!(
                NatCounter::ALL.iter().filter(|d| *d == c).count(),
                1,
                "{name} listed twice"
            );
        }
    }

    #[test]
    fn nat_counters_are_dense_and_named_uniquely() {
        // The macro lists every variant once; their indices are their places.
        assert_eq!(NatCounter::ALL.len(), NatCounter::SlowBridgeRefresh as usize + 1);
        for (i, c) in NatCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            for d in &NatCounter::ALL[i + 1..] {
                assert_ne!(c.name(), d.name());
            }
        }
    }
}
