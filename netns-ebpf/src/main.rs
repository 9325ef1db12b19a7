//! eBPF programs of netns-nat. Entry points stay thin: they hand the context to small
//! functions, and everything that can be computed on the host lives in `netns-common`.
#![no_std]
#![no_main]
// The kernel's atomic add (`Maps::add`): core has no fetch_add for this target.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic_xadd is the only atomic add on bpfel")]

mod maintain;
mod maps;
mod packet;
mod tc;
mod trace;
mod xdp;

use aya_ebpf::{
    bindings::{
        __sk_buff, BPF_F_INGRESS, BPF_F_RECOMPUTE_CSUM, TC_ACT_REDIRECT, TC_ACT_SHOT,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_REDIRECT},
    },
    helpers::{bpf_clone_redirect, bpf_redirect_neigh, bpf_skb_change_tail, bpf_skb_store_bytes},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::{
    debug,
    macro_support::{Level, level_enabled},
    warn,
};
use netns_common::{
    counters::Direction,
    fast::{self, Forwarding},
    nat::HELD_BYTES,
    packet::Packet,
    trace::{
        HOOK_EGRESS, HOOK_FAST_IN_XDP, HOOK_FAST_OUT_TC, HOOK_FAST_OUT_XDP, HOOK_HAIRPIN, HOOK_INGRESS, tuple,
    },
    translate::{self, Drop, Res, Step},
};

use crate::{
    maps::{Maps, count},
    packet::{Action, Context, NEXT},
    tc::{Tc, TcDirect},
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
    maps::count_uplink(dir, u64::from(ctx.len()));
    NEXT
}

/// Runs a step on `p` at `hook`, traced while anyone listens (see `trace`), its drops
/// logged at the level set at load.
#[inline(always)]
fn traced<P: Packet>(p: &P, hook: u8, step: impl FnOnce(&P) -> Res<Action>) -> Res<Action> {
    let on = maps::tracing();
    if on {
        trace::begin(p);
    }
    let r = step(p);
    if on {
        trace::end(p, hook, &r);
    }
    if let Err(d) = r {
        log_drop(p, hook, d);
    }
    r
}

/// [`traced`] for the slow path's programs, whose own stack must stay short (their steps'
/// frames sit under it): the tracing is done by functions of its own.
#[inline(always)]
fn traced_tc(p: &Tc, hook: u8, step: impl FnOnce(&Tc) -> Res<Action>) -> Res<Action> {
    let on = maps::tracing();
    if on {
        nat_trace_begin(skb(p));
    }
    let r = step(p);
    if on || (r.is_err() && level_enabled(Level::Debug)) {
        nat_trace_end(skb(p), u32::from(hook), Drop::encode(r), u32::from(on));
    }
    r
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_trace_begin(skb: *mut __sk_buff) -> i32 {
    trace::begin(&Tc(TcContext::new(skb)));
    0
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_trace_end(skb: *mut __sk_buff, hook: u32, outcome: i32, traced: u32) -> i32 {
    let p = Tc(TcContext::new(skb));
    let r = Drop::decode(outcome);
    if traced != 0 {
        trace::end(&p, hook as u8, &r);
    }
    if let Err(d) = r {
        log_drop(&p, hook as u8, d);
    }
    0
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
        t.saddr.to_host(),
        t.sport.get(),
        t.daddr.to_host(),
        t.dport.get()
    );
}

/// Drops an operator must hear of (the NAT is out of room), at the warning level.
#[inline(always)]
fn warn_drop(d: Drop) {
    match d {
        Drop::MapFull => warn!(&(), "a table is full: a new flow or mapping was dropped"),
        Drop::NoPort => warn!(&(), "no free port in the range: a new mapping was dropped"),
        _ => {}
    }
}

// The programs of the slow path run their steps one after another, each a global function:
// the kernel verifies each once, on its own, rather than once for every way a program
// reaches it, and their stack frames sit side by side under the program's rather than on
// top of one another (the verifier allows 512 bytes along a chain of calls). A step returns
// its outcome as a number (`Step::encode`).

/// The skb a program was given, as the steps take it.
#[inline(always)]
fn skb(p: &Tc) -> *mut __sk_buff {
    p.0.skb.skb
}

/// Runs a step on the packet `skb` (a global function's argument) with the tables.
#[inline(always)]
fn on_skb(skb: *mut __sk_buff, step: impl FnOnce(&Tc, &Maps) -> Res<Step>) -> i32 {
    let p = Tc(TcContext::new(skb));
    let maps = Maps::on(&p.0);
    Step::encode(step(&p, &maps))
}

/// A step that ends the packet's way through the program.
#[inline(always)]
fn done(r: Res<Action>) -> Res<Step> {
    r.map(Step::Done)
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_step_egress_kind(skb: *mut __sk_buff) -> i32 {
    on_skb(skb, translate::egress_step)
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_step_egress(skb: *mut __sk_buff) -> i32 {
    on_skb(skb, translate::egress_main)
}

/// The mapping of a flow's first packet (its external endpoint, `translate::encode_ext`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_step_egress_mapping(skb: *mut __sk_buff) -> i64 {
    let p = Tc(TcContext::new(skb));
    translate::encode_ext(translate::egress_mapping(&p, &Maps::on(&p.0)).map(Some))
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_step_egress_new(skb: *mut __sk_buff, ext: i64) -> i32 {
    on_skb(skb, |p, t| match translate::decode_ext(ext) {
        Ok(Some(ext)) => done(translate::egress_new(p, t, ext)),
        Ok(None) => Err(Drop::Malformed),
        Err(d) => Err(d),
    })
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_step_ingress_kind(skb: *mut __sk_buff) -> i32 {
    on_skb(skb, translate::ingress_step)
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_step_ingress(skb: *mut __sk_buff) -> i32 {
    on_skb(skb, translate::ingress_main)
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_step_ingress_new(skb: *mut __sk_buff) -> i32 {
    on_skb(skb, |p, t| done(translate::ingress_new(p, t)))
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_step_icmp_error(skb: *mut __sk_buff, ingress: u32) -> i32 {
    on_skb(skb, |p, t| done(translate::icmp::error(p, t, ingress != 0)))
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_step_frag_out(skb: *mut __sk_buff) -> i32 {
    on_skb(skb, |p, t| done(translate::frags::outbound(p, t)))
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_step_frag_in(skb: *mut __sk_buff) -> i32 {
    on_skb(skb, |p, t| done(translate::frags::inbound(p, t)))
}

/// Hairpinning's steps: redirected when translated.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_step_hairpin_kind(skb: *mut __sk_buff) -> i32 {
    on_skb(skb, translate::hairpin_step)
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_step_hairpin(skb: *mut __sk_buff) -> i32 {
    on_skb(skb, translate::hairpin_main)
}

/// Hairpinning of a non-first fragment.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_step_hairpin_frag(skb: *mut __sk_buff) -> i32 {
    on_skb(skb, |p, t| {
        translate::frags::hairpin(p, t).map(|h| Step::Done(if h { Action::Redirect } else { Action::Pass }))
    })
}

/// Hairpinning's inbound flow, made once the outbound one is.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_step_hairpin_in(skb: *mut __sk_buff) -> i32 {
    on_skb(skb, |p, t| translate::hairpin_in(p, t).map(|()| Step::New))
}

/// Hairpinning's first steps for a packet whose flows are made: the mapping of its outbound
/// flow (none if that flow is live), then the flow, so that `nat_step_hairpin_new` finds it.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_step_hairpin_mapping(skb: *mut __sk_buff) -> i64 {
    let p = Tc(TcContext::new(skb));
    translate::encode_ext(translate::hairpin_mapping(&p, &Maps::on(&p.0)))
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_step_hairpin_out(skb: *mut __sk_buff, ext: i64) -> i32 {
    on_skb(skb, |p, t| match translate::decode_ext(ext) {
        Ok(Some(ext)) => translate::hairpin_out(p, t, ext).map(|()| Step::New),
        Ok(None) => Ok(Step::New),
        Err(d) => Err(d),
    })
}

/// Runs `kind`, then the step it names (and the new-flow step after the main one when no
/// live flow took the packet): `steps` are (ICMP error, fragment, main, new).
#[inline(always)]
fn run_steps(
    p: &Tc,
    kind: extern "C" fn(*mut __sk_buff) -> i32,
    icmp: impl FnOnce(*mut __sk_buff) -> i32,
    frag: impl FnOnce(*mut __sk_buff) -> i32,
    main: extern "C" fn(*mut __sk_buff) -> i32,
    new: impl FnOnce(*mut __sk_buff) -> i32,
) -> Res<Action> {
    let next = match Step::decode(kind(skb(p)))? {
        Step::Done(a) => return Ok(a),
        Step::IcmpError => icmp(skb(p)),
        Step::Fragment => frag(skb(p)),
        Step::Main | Step::New => match Step::decode(main(skb(p)))? {
            Step::Done(a) => return Ok(a),
            _ => new(skb(p)),
        },
    };
    match Step::decode(next)? {
        Step::Done(a) => Ok(a),
        _ => Err(Drop::Malformed),
    }
}

/// Once a first fragment is through its step, sends again the fragments of its datagram
/// that came before it (`translate::frags::release`): each in turn becomes this skb's frame
/// and a clone of it goes back into the hook (`ingress`: the uplink's ingress, else its
/// egress), where it now finds the first's decision; then the first's frame is put back.
/// 0, or 1 if the first's frame could not be put back (it is dropped).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_frag_release(skb: *mut __sk_buff, ingress: u32) -> i32 {
    let p = Tc(TcContext::new(skb));
    let t = Maps::on(&p.0);
    let Some((key, local)) = maps::take_release() else {
        return 0;
    };
    let first = maps::NAT_FRAG_SCRATCH.get_ptr_mut(1);
    let len = p.len();
    let Some(first) = first.filter(|_| !local && (len as usize) < HELD_BYTES) else {
        // The router's own datagram (its fragments went on already), or a first fragment
        // too long to keep aside: they are only forgotten.
        translate::frags::release(&t, &key, true, |_| false);
        return 0;
    };
    // Safety: this CPU's slot 1, used only here; nothing else on this CPU runs while the
    // program does (the clones sent to egress run the hook's program nested, which never
    // comes here for them: they are not first fragments).
    let first = unsafe { &mut *first };
    if p.copy_frame(&mut first.bytes, len).is_err() {
        translate::frags::release(&t, &key, true, |_| false);
        return 0;
    }
    let ifindex = p.ifindex();
    let flags = if ingress != 0 { u64::from(BPF_F_INGRESS) } else { 0 };
    let mut changed = false;
    translate::frags::release(&t, &key, false, |h| {
        changed = true;
        become_frame(&p, &h.bytes, h.len)
            // Safety: the skb the program was given; the hook's own interface.
            && unsafe { bpf_clone_redirect(self::skb(&p), ifindex, flags) } == 0
    });
    if changed && !become_frame(&p, &first.bytes, len) {
        return 1;
    }
    0
}

/// Makes `skb`'s frame the first `len` bytes of `bytes` (its length, then its bytes, with
/// a received checksum, if the skb has one, kept in step).
#[inline(always)]
fn become_frame(p: &Tc, bytes: &[u8; HELD_BYTES], len: u32) -> bool {
    let skb = skb(p);
    // The mask bounds the length for the verifier (HELD_BYTES is 2048); black_box keeps
    // LLVM from dropping it where it knows the bound from an earlier test (the verifier
    // may not).
    let len = core::hint::black_box(len) & (HELD_BYTES as u32 - 1);
    if len == 0 {
        return false;
    }
    // Safety: the skb the program was given; `len` bytes of `bytes`, fewer than its size.
    unsafe {
        bpf_skb_change_tail(skb, len, 0) == 0
            && bpf_skb_store_bytes(
                skb,
                0,
                bytes.as_ptr().cast(),
                len,
                u64::from(BPF_F_RECOMPUTE_CSUM),
            ) == 0
    }
}

/// Lets the held fragments of a first fragment's datagram go (see `nat_frag_release`) once
/// the slow path has passed the first.
#[inline(always)]
fn released(p: &Tc, r: Res<Action>, ingress: u32) -> Res<Action> {
    if r == Ok(Action::Pass) && maps::release_pending() && nat_frag_release(skb(p), ingress) != 0 {
        return Err(Drop::Malformed);
    }
    r
}

#[classifier]
pub fn nat_egress(ctx: TcContext) -> i32 {
    tc_verdict(traced_tc(&Tc(ctx), HOOK_EGRESS, |p| {
        maps::clear_release();
        let r = run_steps(
            p,
            nat_step_egress_kind,
            |s| nat_step_icmp_error(s, 0),
            |s| nat_step_frag_out(s),
            nat_step_egress,
            |s| nat_step_egress_new(s, nat_step_egress_mapping(s)),
        );
        released(p, r, 0)
    }))
}

/// The fast path first; what it passes on untouched, the slow path translates.
#[classifier]
pub fn nat_ingress(ctx: TcContext) -> i32 {
    tc_verdict(traced_tc(&Tc(ctx), HOOK_INGRESS, |p| {
        fast_in(&TcDirect::new(TcContext::new(skb(p)))).and_then(|a| match a {
            Action::Pass => {
                maps::clear_release();
                let r = run_steps(
                    p,
                    nat_step_ingress_kind,
                    |s| nat_step_icmp_error(s, 1),
                    |s| nat_step_frag_in(s),
                    nat_step_ingress,
                    |s| nat_step_ingress_new(s),
                );
                released(p, r, 1)
            }
            a => Ok(a),
        })
    }))
}

#[classifier]
pub fn nat_hairpin(ctx: TcContext) -> i32 {
    tc_verdict(traced_tc(&Tc(ctx), HOOK_HAIRPIN, hairpin))
}

/// Hairpinning: translated both ways, then sent straight back out of the port it came in
/// by (the kernel resolves the next hop).
#[inline(always)]
fn hairpin(p: &Tc) -> Res<Action> {
    let translated = run_steps(
        p,
        nat_step_hairpin_kind,
        |_| Drop::encode(Ok(Action::Pass)),
        |s| nat_step_hairpin_frag(s),
        nat_step_hairpin,
        |s| {
            let out = nat_step_hairpin_out(s, nat_step_hairpin_mapping(s));
            if Step::decode(out) != Ok(Step::New) {
                return out;
            }
            let inb = nat_step_hairpin_in(s);
            if Step::decode(inb) != Ok(Step::New) {
                return inb;
            }
            nat_step_hairpin(s)
        },
    )?;
    if translated != Action::Redirect {
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

/// The fast path out (`netns_common::fast`) on the maps of the program given `p`.
#[inline(always)]
fn fast_out<P: Forwarding + Context>(p: &P) -> Res<Action> {
    fast::outbound(p, &Maps::on(p.context()))
}

/// The fast path in. A function of its own in the kernel, so that its stack frame and the
/// slow path's are not one (the verifier allows 512 bytes along a chain of calls).
#[inline(never)]
fn fast_in<P: Forwarding + Context>(p: &P) -> Res<Action> {
    fast::inbound(p, &Maps::on(p.context()))
}

#[classifier]
#[expect(
    clippy::redundant_closure,
    reason = "the closure is forced inline; the function item's call shim is not"
)]
pub fn nat_fast_out(ctx: TcContext) -> i32 {
    // A closure forced inline: the function item's call shim is left a call of its own
    // once the step is large, and its frame then adds to the program's.
    tc_verdict(traced(
        &TcDirect::new(ctx),
        HOOK_FAST_OUT_TC,
        #[inline(always)]
        |p| fast_out(p),
    ))
}

#[xdp]
#[expect(
    clippy::redundant_closure,
    reason = "the closure is forced inline; the function item's call shim is not"
)]
pub fn xdp_fast_out(ctx: XdpContext) -> u32 {
    xdp_verdict(traced(
        &Xdp(ctx),
        HOOK_FAST_OUT_XDP,
        #[inline(always)]
        |p| fast_out(p),
    ))
}

/// What this passes on, TC's `nat_ingress` (the slow path) takes.
#[xdp]
pub fn xdp_fast_in(ctx: XdpContext) -> u32 {
    xdp_verdict(traced(&Xdp(ctx), HOOK_FAST_IN_XDP, fast_in))
}

/// Plain forwarding (`--nat none` with the fast path at TC): routed packets straight to
/// their next hop, the rest to the kernel.
#[classifier]
pub fn route_fast(ctx: TcContext) -> i32 {
    let p = TcDirect::new(ctx);
    tc_verdict(fast::routed(&p, &Maps::on(p.context())))
}

/// The same in XDP.
#[xdp]
pub fn xdp_route_fast(ctx: XdpContext) -> u32 {
    let p = Xdp(ctx);
    xdp_verdict(fast::routed(&p, &Maps::on(p.context())))
}

/// The tables' maintenance (expiry, removals, address changes): run by the agent and the
/// command line with BPF_PROG_TEST_RUN, never attached.
#[classifier]
pub fn nat_maintain(ctx: TcContext) -> i32 {
    maintain::run(&ctx)
}

/// A step's outcome as a TC return code; drops are counted by reason.
#[inline(always)]
fn tc_verdict(r: Res<Action>) -> i32 {
    match r {
        Ok(Action::Pass) => NEXT,
        Ok(Action::Redirect) => TC_ACT_REDIRECT,
        Err(d) => {
            count(d.counter());
            warn_drop(d);
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
            warn_drop(d);
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
