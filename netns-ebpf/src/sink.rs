//! The benchmark's sink: an XDP program on the receiving veth that counts the load and
//! drops it, so that receiving costs almost nothing and the router is what is measured.
//! (An XDP program on a veth is also what lets it take redirected frames.)

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    programs::XdpContext,
};
use netns_common::names::{SINK_PORT, SINK_PORTS};

use crate::{
    maps::{SINK_COUNTERS, bump},
    packet::{ETH_HLEN, ETH_P_IP},
};

/// Whether the frame in `data..end` is the benchmark's load: IPv4 (no options) UDP to one
/// of the sink ports. Anything else (ARP, the tests' own traffic) is left alone.
/// Ethernet (14) + IPv4 without options (20) + UDP ports (4): what [`is_load`] reads.
pub const LOAD_HEADERS: usize = ETH_HLEN + 24;

#[inline(always)]
pub fn is_load(data: usize, end: usize) -> bool {
    if data + LOAD_HEADERS > end {
        return false;
    }
    // Safety: the bounds check above covers every byte read below (offsets < 38).
    let (proto, ver_ihl, l4proto, dport) = unsafe {
        (
            u16::from_be(*((data + 12) as *const u16)),
            *((data + ETH_HLEN) as *const u8),
            *((data + ETH_HLEN + 9) as *const u8),
            u16::from_be(*((data + ETH_HLEN + 22) as *const u16)),
        )
    };
    proto == ETH_P_IP
        && ver_ihl == 0x45
        && l4proto == 17
        && (SINK_PORT..SINK_PORT + SINK_PORTS).contains(&dport)
}

/// Counts and drops the load; everything else passes.
#[inline(always)]
pub fn sink(ctx: &XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if !is_load(data, end) {
        return XDP_PASS;
    }
    bump(&SINK_COUNTERS, 0, 1);
    bump(&SINK_COUNTERS, 1, (end - data) as u64);
    XDP_DROP
}
