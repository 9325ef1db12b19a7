//! eBPF programs of netns-nat. Entry points stay thin: they hand the context to small
//! functions, and everything that can be computed on the host lives in `netns-common`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::TC_ACT_PIPE,
    macros::{classifier, map},
    maps::PerCpuArray,
    programs::TcContext,
};
use netns_common::counters::{Counter, Direction};

/// Per-CPU packet and byte counters of the uplink, indexed by [`Counter`].
#[map(name = "UPLINK_COUNTERS")]
static UPLINK_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[classifier]
pub fn uplink_count_ingress(ctx: TcContext) -> i32 {
    count(&ctx, Direction::Ingress)
}

#[classifier]
pub fn uplink_count_egress(ctx: TcContext) -> i32 {
    count(&ctx, Direction::Egress)
}

/// Adds one packet and its length to the direction's counters, then lets the packet go on
/// (`TC_ACT_PIPE`, so programs after this one on the same TCX hook still run).
fn count(ctx: &TcContext, dir: Direction) -> i32 {
    let (packets, bytes) = dir.counters();
    bump(packets, 1);
    bump(bytes, u64::from(ctx.len()));
    TC_ACT_PIPE
}

fn bump(counter: Counter, by: u64) {
    if let Some(slot) = UPLINK_COUNTERS.get_ptr_mut(counter as u32) {
        // Safety: the pointer comes from a successful per-CPU array lookup, so it is valid
        // and only this CPU touches it while the program runs.
        unsafe { *slot += by };
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
