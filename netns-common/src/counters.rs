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
