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

/// Counts and drops IPv4 UDP to the sink port; everything else (ARP, the tests' other
/// traffic) passes.
#[inline(always)]
pub fn sink(ctx: &XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    // Ethernet (14) + IPv4 without options (20) + UDP ports (4).
    if data + ETH_HLEN + 24 > end {
        return XDP_PASS;
    }
    // Safety: the bounds check above covers every byte read below.
    let (proto, ver_ihl, l4proto) = unsafe {
        (
            u16::from_be(*((data + 12) as *const u16)),
            *((data + ETH_HLEN) as *const u8),
            *((data + ETH_HLEN + 9) as *const u8),
        )
    };
    if proto != ETH_P_IP || ver_ihl != 0x45 || l4proto != 17 {
        return XDP_PASS;
    }
    // Safety: as above (offset 36..38 < 38).
    let dport = u16::from_be(unsafe { *((data + ETH_HLEN + 22) as *const u16) });
    if !(SINK_PORT..SINK_PORT + SINK_PORTS).contains(&dport) {
        return XDP_PASS;
    }
    bump(&SINK_COUNTERS, 0, 1);
    bump(&SINK_COUNTERS, 1, (end - data) as u64);
    XDP_DROP
}
