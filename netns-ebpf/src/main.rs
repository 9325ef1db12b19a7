//! eBPF programs of netns-nat. Entry points stay thin: they hand the context to small
//! functions, and everything that can be computed on the host lives in `netns-common`.
#![no_std]
#![no_main]

mod ceiling;
mod fast;
mod maps;
mod nat;
mod packet;
mod sink;
mod tc;
mod xdp;

use aya_ebpf::{
    bindings::{
        TC_ACT_REDIRECT, TC_ACT_SHOT,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_REDIRECT},
    },
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use netns_common::counters::{Counter, Direction};

use crate::{
    maps::{UPLINK_COUNTERS, bump, count},
    packet::{Action, NEXT},
};

#[classifier]
pub fn uplink_count_ingress(ctx: TcContext) -> i32 {
    count_uplink(&ctx, Direction::Ingress)
}

#[classifier]
pub fn uplink_count_egress(ctx: TcContext) -> i32 {
    count_uplink(&ctx, Direction::Egress)
}

/// Adds one packet and its length to the direction's counters, then lets the packet go on
/// (`NEXT`, so programs after this one on the same TCX hook still run).
fn count_uplink(ctx: &TcContext, dir: Direction) -> i32 {
    let (packets, bytes): (Counter, Counter) = dir.counters();
    bump(&UPLINK_COUNTERS, packets as u32, 1);
    bump(&UPLINK_COUNTERS, bytes as u32, u64::from(ctx.len()));
    NEXT
}

#[classifier]
pub fn nat_egress(ctx: TcContext) -> i32 {
    tc_verdict(nat::egress(&ctx))
}

/// The fast path first; what it passes on untouched, the slow path translates.
#[classifier]
pub fn nat_ingress(ctx: TcContext) -> i32 {
    tc_verdict(fast::inbound(&ctx).and_then(|a| match a {
        Action::Pass => nat::ingress(&ctx),
        a => Ok(a),
    }))
}

#[classifier]
pub fn nat_hairpin(ctx: TcContext) -> i32 {
    tc_verdict(nat::hairpin(&ctx))
}

#[classifier]
pub fn nat_fast_out(ctx: TcContext) -> i32 {
    tc_verdict(fast::outbound(&ctx))
}

#[xdp]
pub fn xdp_fast_out(ctx: XdpContext) -> u32 {
    xdp_verdict(fast::outbound(&ctx))
}

/// What this passes on, TC's `nat_ingress` (the slow path) takes.
#[xdp]
pub fn xdp_fast_in(ctx: XdpContext) -> u32 {
    xdp_verdict(fast::inbound(&ctx))
}

#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    sink::sink(&ctx)
}

#[classifier]
pub fn bench_tc_sink(ctx: TcContext) -> i32 {
    sink::sink_tc(&ctx)
}

#[classifier]
pub fn ceiling_tc_redirect(ctx: TcContext) -> i32 {
    ceiling::tc(&ctx)
}

#[xdp]
pub fn ceiling_xdp_redirect(ctx: XdpContext) -> u32 {
    ceiling::xdp(&ctx)
}

/// A step's outcome as a TC return code; drops are counted by reason.
#[inline(always)]
fn tc_verdict(r: nat::Res<Action>) -> i32 {
    match r {
        Ok(Action::Pass) => NEXT,
        Ok(Action::Redirect) => TC_ACT_REDIRECT,
        Err(d) => {
            count(d.counter());
            TC_ACT_SHOT
        }
    }
}

/// The same as an XDP return code.
#[inline(always)]
fn xdp_verdict(r: nat::Res<Action>) -> u32 {
    match r {
        Ok(Action::Pass) => XDP_PASS,
        Ok(Action::Redirect) => XDP_REDIRECT,
        Err(d) => {
            count(d.counter());
            XDP_DROP
        }
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
