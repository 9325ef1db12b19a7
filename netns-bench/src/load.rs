//! The load's frames and flows, and the CPU time the machine spends meanwhile.

use std::net::Ipv4Addr;

use bytes::Bytes;
use netns_common::names::{SINK_PORT, SINK_PORTS};

use netns_testkit::packet::{self, Ipv4, L4, Mac};

/// UDP payload bytes: with UDP (8), IPv4 (20) and Ethernet (14) headers, 60-byte frames,
/// the 64-byte minimum on a wire once the FCS is counted.
pub const PAYLOAD: usize = 18;
pub const FRAME_BYTES: usize = packet::ETH_HLEN + 20 + 8 + PAYLOAD;
/// Flows spread over this many source ports, then over further destination ports (the
/// sink counts SINK_PORT .. SINK_PORT + SINK_PORTS).
const SPORT_BASE: u16 = 1024;
const SPORTS: u32 = 50_000;

/// The most flows the generator can tell apart.
pub const MAX_FLOWS: u32 = SPORTS * SINK_PORTS as u32;

/// The (source port, destination port) of flow `i`.
pub fn flow_ports(i: u32) -> (u16, u16) {
    (SPORT_BASE + (i % SPORTS) as u16, SINK_PORT + (i / SPORTS) as u16)
}

/// Who sends the load to whom.
#[derive(Clone, Copy, Debug)]
pub struct Endpoints {
    /// The sender's MAC and its gateway's (the frames' source and destination).
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

/// Frame of flow `i`: UDP with valid IPv4 and UDP checksums, the flow number as payload.
pub fn frame(e: &Endpoints, i: u32) -> Bytes {
    let (sport, dport) = flow_ports(i);
    let payload: Vec<u8> = i.to_be_bytes().iter().copied().cycle().take(PAYLOAD).collect();
    packet::frame(
        e.dst_mac,
        e.src_mac,
        &Ipv4::new(e.src, e.dst),
        &L4::Udp {
            sport,
            dport,
            payload: &payload,
            zero_checksum: false,
        },
    )
    .freeze()
}

/// One frame per flow, `flows` of them (at most [`MAX_FLOWS`]).
pub fn frames(e: &Endpoints, flows: u32) -> Vec<Bytes> {
    (0..flows.clamp(1, MAX_FLOWS)).map(|i| frame(e, i)).collect()
}

/// Busy CPU time of the whole machine so far (user, nice, system, irq, softirq, steal), in
/// nanoseconds, from /proc/stat.
pub fn cpu_busy_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    // Safety: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let ticks: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|i| f.get(*i)).sum();
    ticks * (1_000_000_000 / hz)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netns_testkit::packet::parse_frame;

    fn ends() -> Endpoints {
        Endpoints {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: Ipv4Addr::new(192, 168, 15, 1),
            dst: Ipv4Addr::new(192, 168, 1, 3),
        }
    }

    #[test]
    fn frames_are_valid_60_byte_udp() {
        for i in [0, 7, 49_999, 50_000, 64_999] {
            let f = frame(&ends(), i);
            // What was built, not the constant: 60 bytes (64 on a wire with the FCS), as
            // the results' `frame_bytes` (FRAME_BYTES) say.
            assert_eq!(f.len(), 60, "flow {i}");
            assert_eq!(f.len(), FRAME_BYTES);
            let (dst, src, p) = parse_frame(&f).unwrap();
            assert_eq!((dst, src), ([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]));
            assert!(p.header_ok && p.l4_checksum_ok(), "flow {i}");
            assert_eq!(p.ports(), Some(flow_ports(i)));
            // The flow number as payload, so that flows differ in their bytes too.
            let want: Vec<u8> = i.to_be_bytes().iter().copied().cycle().take(PAYLOAD).collect();
            assert_eq!(&p.data[8..], &want[..], "flow {i}");
        }
    }

    #[test]
    fn flows_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for i in (0..MAX_FLOWS).step_by(997) {
            assert!(seen.insert(flow_ports(i)));
        }
        assert_eq!(flow_ports(SPORTS), (1024, SINK_PORT + 1));
        assert!(flow_ports(MAX_FLOWS - 1).1 < SINK_PORT + SINK_PORTS);
        assert_eq!(frames(&ends(), 65_000).len(), 65_000);
    }
}
