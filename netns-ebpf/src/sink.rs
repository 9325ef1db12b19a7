//! The benchmark's sink: an XDP program on the receiving veth that counts the load and
//! drops it, so that receiving costs almost nothing and the router is what is measured.
//! (An XDP program on a veth is also what lets it take redirected frames.) Its twin at TCX
//! ingress counts what reaches the veth past XDP: frames a router sent straight into the
//! veth's ingress with bpf_redirect_peer.

use aya_ebpf::{
    bindings::{
        TC_ACT_SHOT,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    programs::{TcContext, XdpContext},
};
use netns_common::names::{SINK_PORT, SINK_PORTS};

use crate::{
    maps::{SINK_COUNTERS, bump},
    packet::{ETH_HLEN, ETH_P_IP, NEXT},
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

#[inline(always)]
fn counted(len: u64) {
    bump(&SINK_COUNTERS, 0, 1);
    bump(&SINK_COUNTERS, 1, len);
}

/// Counts and drops the load; everything else passes.
#[inline(always)]
pub fn sink(ctx: &XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if !is_load(data, end) {
        return XDP_PASS;
    }
    counted((end - data) as u64);
    XDP_DROP
}

/// The same at TCX ingress.
#[inline(always)]
pub fn sink_tc(ctx: &TcContext) -> i32 {
    // A redirected skb may carry only part of its headers in the linear part.
    if ctx.data() + LOAD_HEADERS > ctx.data_end() && ctx.pull_data(LOAD_HEADERS as u32).is_err() {
        return NEXT;
    }
    if !is_load(ctx.data(), ctx.data_end()) {
        return NEXT;
    }
    counted(u64::from(ctx.len()));
    TC_ACT_SHOT
}
