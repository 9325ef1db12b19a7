//! eBPF programs of netns-nat. Entry points stay thin: they hand the context to small
//! functions, and everything that can be computed on the host lives in `netns-common`.
#![no_std]
#![no_main]
// The kernel's atomic add (`Maps::add`): core has no fetch_add for this target.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic_xadd is the only atomic add on bpfel")]

mod ceiling;
mod fast;
mod maps;
mod packet;
mod sink;
mod tc;
mod trace;
mod xdp;

use aya_ebpf::{
    bindings::{
        TC_ACT_REDIRECT, TC_ACT_SHOT,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_REDIRECT},
    },
    helpers::bpf_redirect_neigh,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::{
    debug,
    macro_support::{Level, level_enabled},
};
use netns_common::{
    counters::{Counter, Direction},
    packet::Packet,
    trace::{
        HOOK_EGRESS, HOOK_FAST_IN_XDP, HOOK_FAST_OUT_TC, HOOK_FAST_OUT_XDP, HOOK_HAIRPIN, HOOK_INGRESS, tuple,
    },
    translate::{self, Drop, Res},
};

use crate::{
    maps::{Maps, UPLINK_COUNTERS, bump, count},
    packet::{Action, Hooked, NEXT},
    tc::Tc,
    xdp::Xdp,
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

/// Runs a step on `p` at `hook`, traced while anyone listens (see `trace`), its drops
/// logged at the level set at load.
#[inline(always)]
fn traced<P: Packet>(p: &P, hook: u8, step: impl FnOnce(&P) -> Res<Action>) -> Res<Action> {
    trace::begin(p);
    let r = step(p);
    trace::end(p, hook, &r);
    if let Err(d) = r {
        log_drop(p, hook, d);
    }
    r
}

/// A drop as a debug record, with numbers only: string arguments make aya-log's code too
/// long for the verifier on paths this many (the agent names hook and reason).
#[inline(always)]
fn log_drop<P: Packet>(p: &P, hook: u8, d: Drop) {
    // The tuple only when the record is wanted (the macro tests the level again).
    if !level_enabled(Level::Debug) {
        return;
    }
    let t = tuple(p);
    debug!(
        &(),
        "drop hook={} reason={} proto={} {:i}:{} -> {:i}:{}",
        hook,
        d.counter() as u8,
        t.proto,
        u32::from_be(t.saddr),
        u16::from_be(t.sport),
        u32::from_be(t.daddr),
        u16::from_be(t.dport)
    );
}

#[classifier]
pub fn nat_egress(ctx: TcContext) -> i32 {
    tc_verdict(traced(&Tc(ctx), HOOK_EGRESS, |p| translate::egress(p, &Maps)))
}

/// The fast path first; what it passes on untouched, the slow path translates.
#[classifier]
pub fn nat_ingress(ctx: TcContext) -> i32 {
    tc_verdict(traced(&Tc(ctx), HOOK_INGRESS, |p| {
        fast::inbound(p).and_then(|a| match a {
            Action::Pass => translate::ingress(p, &Maps),
            a => Ok(a),
        })
    }))
}

#[classifier]
pub fn nat_hairpin(ctx: TcContext) -> i32 {
    tc_verdict(traced(&Tc(ctx), HOOK_HAIRPIN, hairpin))
}

/// Hairpinning: translated both ways, then sent straight back out of the port it came in
/// by (the kernel resolves the next hop).
#[inline(always)]
fn hairpin(p: &Tc) -> Res<Action> {
    if !translate::hairpin(p, &Maps)? {
        return Ok(Action::Pass);
    }
    // Safety: no parameters (the kernel looks up the next hop itself), no flags.
    let r = unsafe { bpf_redirect_neigh(p.ifindex(), core::ptr::null_mut(), 0, 0) };
    if r == i64::from(TC_ACT_REDIRECT) {
        Ok(Action::Redirect)
    } else {
        Err(Drop::Malformed)
    }
}

#[classifier]
pub fn nat_fast_out(ctx: TcContext) -> i32 {
    tc_verdict(traced(&Tc(ctx), HOOK_FAST_OUT_TC, fast::outbound))
}

#[xdp]
pub fn xdp_fast_out(ctx: XdpContext) -> u32 {
    xdp_verdict(traced(&Xdp(ctx), HOOK_FAST_OUT_XDP, fast::outbound))
}

/// What this passes on, TC's `nat_ingress` (the slow path) takes.
#[xdp]
pub fn xdp_fast_in(ctx: XdpContext) -> u32 {
    xdp_verdict(traced(&Xdp(ctx), HOOK_FAST_IN_XDP, fast::inbound))
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
fn tc_verdict(r: Res<Action>) -> i32 {
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
fn xdp_verdict(r: Res<Action>) -> u32 {
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
