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

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use netns_common::counters::{Counter, Direction};

use crate::{
    maps::{UPLINK_COUNTERS, bump, count},
    packet::NEXT,
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
    verdict(nat::egress(&ctx))
}

#[classifier]
pub fn nat_ingress(ctx: TcContext) -> i32 {
    verdict(nat::ingress(&ctx))
}

#[classifier]
pub fn nat_hairpin(ctx: TcContext) -> i32 {
    verdict(nat::hairpin(&ctx))
}

#[classifier]
pub fn nat_fast_out(ctx: TcContext) -> i32 {
    verdict(fast::outbound(&ctx))
}

#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    sink::sink(&ctx)
}

#[classifier]
pub fn ceiling_tc_redirect(ctx: TcContext) -> i32 {
    ceiling::tc(&ctx)
}

#[xdp]
pub fn ceiling_xdp_redirect(ctx: XdpContext) -> u32 {
    ceiling::xdp(&ctx)
}

/// Drops are counted by reason; everything else carries its own verdict.
fn verdict(r: Result<i32, nat::Drop>) -> i32 {
    match r {
        Ok(v) => v,
        Err(d) => {
            count(d.counter());
            TC_ACT_SHOT
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
