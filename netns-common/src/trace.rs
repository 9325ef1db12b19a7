//! Trace events: what `netns-nat trace` prints, one per translation or drop, written by the
//! programs into a ring buffer only while someone listens (a flag in a map), so that
//! tracing costs one array lookup per packet when nobody does.

use crate::{
    nat::{PROTO_ICMP, PROTO_TCP, PROTO_UDP},
    packet::{ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, IP_OFF, Packet, eth_ipv4},
    wire::{WireAddr, WirePort},
};

/// Where an event happened: the program.
pub const HOOK_EGRESS: u8 = 0;
pub const HOOK_INGRESS: u8 = 1;
pub const HOOK_HAIRPIN: u8 = 2;
pub const HOOK_FAST_OUT_TC: u8 = 3;
pub const HOOK_FAST_OUT_XDP: u8 = 4;
pub const HOOK_FAST_IN_XDP: u8 = 5;

/// What became of the packet.
pub const VERDICT_PASS: u8 = 0;
pub const VERDICT_REDIRECT: u8 = 1;
pub const VERDICT_DROP: u8 = 2;

/// An IPv4 packet's addresses and ports (ICMP echo: the identifier as the source port), all
/// in network order as on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuple {
    pub saddr: WireAddr,
    pub daddr: WireAddr,
    pub sport: WirePort,
    pub dport: WirePort,
    pub proto: u8,
    /// 1 when the rest is filled in.
    pub valid: u8,
    pub _pad: u16,
}

/// One event in the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    pub before: Tuple,
    pub after: Tuple,
    pub hook: u8,
    pub verdict: u8,
    /// For drops: the [`crate::counters::NatCounter`] of the reason.
    pub reason: u8,
    pub _pad: [u8; 5],
}

const _: () = assert!(core::mem::size_of::<Tuple>() == 16);
const _: () = assert!(core::mem::size_of::<TraceEvent>() == 48);

/// The tuple of an IPv4 packet (ports only in a first fragment), or an invalid one.
#[inline(always)]
pub fn tuple<P: Packet>(ctx: &P) -> Tuple {
    let Some(h) = eth_ipv4(ctx) else {
        return Tuple::default();
    };
    let ip = h.ip;
    let mut t = Tuple {
        saddr: ip.src,
        daddr: ip.dst,
        proto: ip.proto,
        valid: 1,
        ..Tuple::default()
    };
    let l4 = IP_OFF + ip.header_len();
    if ip.header_len() == 0 || ip.frag_offset() != 0 {
        return t;
    }
    match ip.proto {
        PROTO_TCP | PROTO_UDP => {
            if let Ok(p) = ctx.load::<[WirePort; 2]>(l4) {
                t.sport = p[0];
                t.dport = p[1];
            }
        }
        PROTO_ICMP => {
            if let Ok([ty, _]) = ctx.load::<[u8; 2]>(l4)
                && (ty == ICMP_ECHO_REQUEST || ty == ICMP_ECHO_REPLY)
                && let Ok(id) = ctx.load::<WirePort>(l4 + 4)
            {
                t.sport = id;
            }
        }
        _ => {}
    }
    t
}

/// Whether a step's outcome is worth a trace event: a drop, or a packet it changed (passing a
/// packet untouched is not the NAT's doing).
#[inline(always)]
pub fn worth_tracing(before: &Tuple, after: &Tuple, verdict: u8) -> bool {
    before.valid != 0 && (verdict == VERDICT_DROP || before != after)
}

/// The program of hook `h`, for printing.
pub fn hook_name(h: u8) -> &'static str {
    match h {
        HOOK_EGRESS => "nat_egress",
        HOOK_INGRESS => "nat_ingress",
        HOOK_HAIRPIN => "nat_hairpin",
        HOOK_FAST_OUT_TC => "nat_fast_out",
        HOOK_FAST_OUT_XDP => "xdp_fast_out",
        HOOK_FAST_IN_XDP => "xdp_fast_in",
        _ => "?",
    }
}

pub fn verdict_name(v: u8) -> &'static str {
    match v {
        VERDICT_PASS => "pass",
        VERDICT_REDIRECT => "redirect",
        VERDICT_DROP => "drop",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Frame;

    fn udp_frame() -> Frame {
        let mut f = [0u8; 14 + 20 + 8];
        f[12] = 0x08;
        f[14] = 0x45;
        f[14 + 9] = PROTO_UDP;
        f[14 + 12..14 + 16].copy_from_slice(&[192, 168, 15, 1]);
        f[14 + 16..14 + 20].copy_from_slice(&[192, 168, 1, 3]);
        f[34..36].copy_from_slice(&4000u16.to_be_bytes());
        f[36..38].copy_from_slice(&53u16.to_be_bytes());
        Frame::new(f.to_vec())
    }

    #[test]
    fn a_udp_tuple_and_what_counts_as_an_event() {
        let f = udp_frame();
        let t = tuple(&f);
        assert_eq!(t.valid, 1);
        assert_eq!(t.proto, PROTO_UDP);
        assert_eq!(t.sport.get(), 4000);
        assert_eq!(t.dport.get(), 53);
        assert_eq!(t.saddr.0.to_ne_bytes(), [192, 168, 15, 1]);
        assert!(
            !worth_tracing(&t, &t, VERDICT_PASS),
            "untouched and passed: no event"
        );
        assert!(worth_tracing(&t, &t, VERDICT_DROP));
        let mut after = t;
        after.saddr = WireAddr(u32::from_ne_bytes([192, 168, 1, 2]));
        assert!(worth_tracing(&t, &after, VERDICT_PASS));
        assert!(
            !worth_tracing(&Tuple::default(), &after, VERDICT_DROP),
            "not IPv4: no event"
        );
    }

    #[test]
    fn later_fragments_have_no_ports() {
        let mut bytes = udp_frame().bytes();
        bytes[14 + 6] = 0x00;
        bytes[14 + 7] = 0x10;
        let t = tuple(&Frame::new(bytes));
        assert_eq!((t.valid, t.sport, t.dport), (1, WirePort::ZERO, WirePort::ZERO));
    }
}
