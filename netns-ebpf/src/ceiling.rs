//! The benchmark's ceilings: the load redirected from a bridge port straight to the uplink,
//! MAC addresses rewritten and nothing else (no NAT, no TTL, no lookup). What a fast path on
//! that hook cannot beat, so each uses the redirect the fast path uses there: at TC into the
//! uplink's veth peer (bpf_redirect_peer), in XDP through a DEVMAP. `netns-nat bench` only.

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    helpers::bpf_redirect_peer,
    programs::{TcContext, XdpContext},
};
use netns_common::fwd::NextHop;

use crate::{
    maps::{CEILING_DEVMAP, CEILING_NEXT_HOP},
    packet::NEXT,
    sink::{LOAD_HEADERS, is_load},
};

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

/// TC ingress: the load goes into the ingress of the next hop interface's peer, the rest on
/// its way.
#[inline(always)]
pub fn tc(ctx: &TcContext) -> i32 {
    let Some(hop) = CEILING_NEXT_HOP.get(0) else {
        return NEXT;
    };
    if hop.ifindex == 0 {
        return NEXT;
    }
    // Frames from an AF_PACKET ring carry only their Ethernet header in the linear part.
    if ctx.data() + LOAD_HEADERS > ctx.data_end() && ctx.pull_data(LOAD_HEADERS as u32).is_err() {
        return NEXT;
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    if !is_load(data, end) {
        return NEXT;
    }
    write_macs(data, hop);
    // Safety: a helper taking plain integers; it returns TC_ACT_REDIRECT (or SHOT).
    unsafe { bpf_redirect_peer(hop.ifindex, 0) as i32 }
}

/// XDP: the same through the DEVMAP (whose only entry is the next hop's interface).
#[inline(always)]
pub fn xdp(ctx: &XdpContext) -> u32 {
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
