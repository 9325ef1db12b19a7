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

/// Outcomes counted by the eBPF NAT, one per-CPU slot each (map `NAT_COUNTERS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum NatCounter {
    /// Packets translated leaving by the uplink, per protocol.
    OutTcp = 0,
    OutUdp,
    OutIcmp,
    /// Packets translated arriving on the uplink, per protocol.
    InTcp,
    InUdp,
    InIcmp,
    /// ICMP errors whose quoted packet was translated, per direction.
    IcmpErrorOut,
    IcmpErrorIn,
    /// Non-first fragments translated through the fragment table.
    Fragments,
    /// Endpoint-independent mappings (bindings) created.
    NewMappings,
    /// Flows created.
    NewFlows,
    /// Packets turned around inside the router (internal host to the external address).
    Hairpinned,
    /// Packets that were not the NAT's business (the router's own traffic, other prefixes).
    Passed,
    /// Dropped: every port of the range is taken.
    DropNoPort,
    /// Dropped: inbound with a mapping but no flow, under address-and-port-dependent filtering.
    DropUnsolicited,
    /// Dropped: headers too short or inconsistent.
    DropMalformed,
    /// Dropped: a conntrack or binding table is full.
    DropMapFull,
    /// Dropped (or passed, by configuration): a protocol the NAT does not translate.
    DropUnsupported,
    /// Inbound to the external address on a port no mapping or forward owns (passed to the
    /// router's own stack, where nothing listens).
    InUnmapped,
    /// A non-first fragment whose first fragment was not seen.
    DropFragmentUnknown,
    /// Fast path at TC: packets redirected straight to the uplink / to an internal port.
    FastOutTc,
    FastInTc,
    /// The same in XDP.
    FastOutXdp,
    FastInXdp,
    /// Hand-overs to the slow path, by reason (see [`crate::fwd::Slow`]).
    SlowNoFlow,
    SlowTcpFlags,
    SlowFragment,
    SlowIpOptions,
    SlowTtl,
    SlowProtocol,
    SlowNoNeighbour,
    SlowMtu,
    SlowPartialChecksum,
    /// A redirect the hook refused (the packet went to the slow path, untouched).
    RedirectFailed,
    /// Hand-over to the slow path: an IPv4 header checksum that fails (the kernel drops it).
    SlowIpChecksum,
    /// Dropped arriving on the uplink: an IPv4 header checksum that fails (RFC 1812 5.2.2),
    /// before it can touch any state.
    DropBadChecksum,
    /// Trace events that did not fit in the ring buffer (`netns-nat trace` reads too slowly).
    TraceLost,
}

impl NatCounter {
    pub const ALL: [NatCounter; 37] = [
        NatCounter::OutTcp,
        NatCounter::OutUdp,
        NatCounter::OutIcmp,
        NatCounter::InTcp,
        NatCounter::InUdp,
        NatCounter::InIcmp,
        NatCounter::IcmpErrorOut,
        NatCounter::IcmpErrorIn,
        NatCounter::Fragments,
        NatCounter::NewMappings,
        NatCounter::NewFlows,
        NatCounter::Hairpinned,
        NatCounter::Passed,
        NatCounter::DropNoPort,
        NatCounter::DropUnsolicited,
        NatCounter::DropMalformed,
        NatCounter::DropMapFull,
        NatCounter::DropUnsupported,
        NatCounter::InUnmapped,
        NatCounter::DropFragmentUnknown,
        NatCounter::FastOutTc,
        NatCounter::FastInTc,
        NatCounter::FastOutXdp,
        NatCounter::FastInXdp,
        NatCounter::SlowNoFlow,
        NatCounter::SlowTcpFlags,
        NatCounter::SlowFragment,
        NatCounter::SlowIpOptions,
        NatCounter::SlowTtl,
        NatCounter::SlowProtocol,
        NatCounter::SlowNoNeighbour,
        NatCounter::SlowMtu,
        NatCounter::SlowPartialChecksum,
        NatCounter::RedirectFailed,
        NatCounter::SlowIpChecksum,
        NatCounter::DropBadChecksum,
        NatCounter::TraceLost,
    ];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Stable name used in `stats --json`.
    pub const fn name(self) -> &'static str {
        match self {
            NatCounter::OutTcp => "out_tcp",
            NatCounter::OutUdp => "out_udp",
            NatCounter::OutIcmp => "out_icmp",
            NatCounter::InTcp => "in_tcp",
            NatCounter::InUdp => "in_udp",
            NatCounter::InIcmp => "in_icmp",
            NatCounter::IcmpErrorOut => "icmp_error_out",
            NatCounter::IcmpErrorIn => "icmp_error_in",
            NatCounter::Fragments => "fragments",
            NatCounter::NewMappings => "new_mappings",
            NatCounter::NewFlows => "new_flows",
            NatCounter::Hairpinned => "hairpinned",
            NatCounter::Passed => "passed",
            NatCounter::DropNoPort => "drop_no_port",
            NatCounter::DropUnsolicited => "drop_unsolicited",
            NatCounter::DropMalformed => "drop_malformed",
            NatCounter::DropMapFull => "drop_map_full",
            NatCounter::DropUnsupported => "drop_unsupported",
            NatCounter::InUnmapped => "in_unmapped",
            NatCounter::DropFragmentUnknown => "drop_fragment_unknown",
            NatCounter::FastOutTc => "fast_out_tc",
            NatCounter::FastInTc => "fast_in_tc",
            NatCounter::FastOutXdp => "fast_out_xdp",
            NatCounter::FastInXdp => "fast_in_xdp",
            NatCounter::SlowNoFlow => "slow_no_flow",
            NatCounter::SlowTcpFlags => "slow_tcp_flags",
            NatCounter::SlowFragment => "slow_fragment",
            NatCounter::SlowIpOptions => "slow_ip_options",
            NatCounter::SlowTtl => "slow_ttl",
            NatCounter::SlowProtocol => "slow_protocol",
            NatCounter::SlowNoNeighbour => "slow_no_neighbour",
            NatCounter::SlowMtu => "slow_mtu",
            NatCounter::SlowPartialChecksum => "slow_partial_checksum",
            NatCounter::RedirectFailed => "redirect_failed",
            NatCounter::SlowIpChecksum => "slow_ip_checksum",
            NatCounter::DropBadChecksum => "drop_bad_checksum",
            NatCounter::TraceLost => "trace_lost",
        }
    }
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
        }
    }
}

#[cfg(test)]
mod nat_counter_tests {
    use super::NatCounter;

    #[test]
    fn nat_counters_are_dense_and_named_uniquely() {
        for (i, c) in NatCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            for d in &NatCounter::ALL[i + 1..] {
                assert_ne!(c.name(), d.name());
            }
        }
    }
}
