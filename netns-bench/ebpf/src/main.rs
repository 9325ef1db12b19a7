//! The benchmark's eBPF programs, in an object of their own so that the NAT's holds the
//! NAT only.
//!
//! - The sink: an XDP program on the receiving veth that counts the load and drops it, so
//!   that receiving costs almost nothing and the router is what is measured. (An XDP program
//!   on a veth is also what lets it take redirected frames.) Its twin at TCX ingress counts
//!   what reaches the veth past XDP: frames a router sent straight into the veth's ingress
//!   with bpf_redirect_peer.
//! - The ceilings: the load redirected from a bridge port straight to the uplink, MAC
//!   addresses rewritten and nothing else (no NAT, no TTL, no lookup). What a fast path on
//!   that hook cannot beat, so each uses the redirect the fast path uses there: at TC into
//!   the uplink's veth peer (bpf_redirect_peer), in XDP through a DEVMAP.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        TC_ACT_SHOT,
        tcx_action_base::TCX_NEXT,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    helpers::bpf_redirect_peer,
    macros::{classifier, map, xdp},
    maps::{Array, DevMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use netns_common::{
    fwd::NextHop,
    names::{SINK_PORT, SINK_PORTS},
    packet::{ETH_HLEN, ETH_P_IP},
};

/// The sink's per-CPU [packets, bytes].
#[map(name = "SINK_COUNTERS")]
static SINK_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// Where the ceilings send the load.
#[map(name = "CEILING_NEXT_HOP")]
static CEILING_NEXT_HOP: Array<NextHop> = Array::with_max_entries(1, 0);

/// The XDP ceiling's one redirect target (the next hop's interface).
#[map(name = "CEILING_DEVMAP")]
static CEILING_DEVMAP: DevMap = DevMap::with_max_entries(1, 0);

/// TCX verdict "go on": the next program on the hook runs, then the packet continues.
const NEXT: i32 = TCX_NEXT;

/// Ethernet (14) + IPv4 without options (20) + UDP ports (4): what [`is_load`] reads.
const LOAD_HEADERS: usize = ETH_HLEN + 24;

#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if !is_load(data, end) {
        return XDP_PASS;
    }
    counted((end - data) as u64);
    XDP_DROP
}

#[classifier]
pub fn bench_tc_sink(ctx: TcContext) -> i32 {
    if !pulled(&ctx) || !is_load(ctx.data(), ctx.data_end()) {
        return NEXT;
    }
    counted(u64::from(ctx.len()));
    TC_ACT_SHOT
}

/// TC ingress: the load goes into the ingress of the next hop interface's peer, the rest on
/// its way.
#[classifier]
pub fn ceiling_tc_redirect(ctx: TcContext) -> i32 {
    let Some(hop) = CEILING_NEXT_HOP.get(0) else {
        return NEXT;
    };
    if hop.ifindex == 0 || !pulled(&ctx) || !is_load(ctx.data(), ctx.data_end()) {
        return NEXT;
    }
    write_macs(ctx.data(), hop);
    // Safety: a helper taking plain integers; it returns TC_ACT_REDIRECT (or SHOT).
    unsafe { bpf_redirect_peer(hop.ifindex, 0) as i32 }
}

/// XDP: the same through the DEVMAP.
#[xdp]
pub fn ceiling_xdp_redirect(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    let Some(hop) = CEILING_NEXT_HOP.get(0) else {
        return XDP_PASS;
    };
    if hop.ifindex == 0 || !is_load(data, end) {
        return XDP_PASS;
    }
    write_macs(data, hop);
    CEILING_DEVMAP.redirect(0, 0).unwrap_or(XDP_PASS)
}

/// Whether the frame in `data..end` is the benchmark's load: IPv4 (no options) UDP to one
/// of the sink ports. Anything else (ARP, the tests' own traffic) is left alone.
#[inline(always)]
fn is_load(data: usize, end: usize) -> bool {
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

/// Whether the headers [`is_load`] reads are in the skb's linear part: a redirected skb, or
/// a frame from an AF_PACKET ring, may carry only its Ethernet header there.
#[inline(always)]
fn pulled(ctx: &TcContext) -> bool {
    ctx.data() + LOAD_HEADERS <= ctx.data_end() || ctx.pull_data(LOAD_HEADERS as u32).is_ok()
}

#[inline(always)]
fn counted(len: u64) {
    for (i, by) in [(0, 1), (1, len)] {
        if let Some(slot) = SINK_COUNTERS.get_ptr_mut(i) {
            // Safety: a pointer from a successful per-CPU array lookup: valid, and only this
            // CPU touches it while the program runs.
            unsafe { *slot += by };
        }
    }
}

/// Writes the next hop's MAC addresses over the frame's (12 bytes at `data`, checked by
/// the caller).
#[inline(always)]
fn write_macs(data: usize, hop: &NextHop) {
    // Safety: the caller checked that the frame holds at least an Ethernet header.
    unsafe {
        *(data as *mut [u8; 6]) = hop.dst_mac;
        *((data + 6) as *mut [u8; 6]) = hop.src_mac;
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
