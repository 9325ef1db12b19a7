//! Tracing of the NAT's steps: while `netns-nat trace` listens, each step that translates or
//! drops a packet writes one [`TraceEvent`] into `NAT_TRACE`.
//!
//! The tuple before the step waits in a per-CPU slot rather than on the stack, so that the
//! verifier sees the same state through the step whether tracing is on or not (a value on
//! the stack would make it check the step twice). A slot left behind when tracing stopped
//! mid-step is recognised by its age.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_log_ebpf::warn;
use netns_common::{
    counters::NatCounter,
    packet::Packet,
    trace::{TraceEvent, VERDICT_DROP, VERDICT_PASS, VERDICT_REDIRECT, tuple, worth_tracing},
    translate::Res,
};

use crate::{
    maps::{NAT_TRACE, NAT_TRACE_SCRATCH, count},
    packet::Action,
};

/// A slot older than this belongs to an earlier packet.
const STALE_NS: u64 = 1_000_000;

/// Before a step, while anyone traces ([`tracing`], which the caller reads once for both
/// calls): remembers the packet's tuple.
#[inline(always)]
pub fn begin<P: Packet>(p: &P) {
    if let Some(slot) = NAT_TRACE_SCRATCH.get_ptr_mut(0) {
        // Safety: a per-CPU slot from a successful lookup; only this CPU's program, which
        // nothing on this CPU interrupts, uses it.
        unsafe {
            (*slot).ts_ns = bpf_ktime_get_ns();
            (*slot).before = tuple(p);
        }
    }
}

/// After a step with outcome `r` at `hook`, while anyone traces: writes the event if it is
/// one.
#[inline(always)]
pub fn end<P: Packet>(p: &P, hook: u8, r: &Res<Action>) {
    let Some(slot) = NAT_TRACE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // Safety: as in `begin`.
    let mut ev: TraceEvent = unsafe { *slot };
    // Safety: as in `begin`.
    unsafe { (*slot).before.valid = 0 };
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(ev.ts_ns) > STALE_NS {
        return;
    }
    ev.ts_ns = now;
    ev.hook = hook;
    (ev.verdict, ev.reason) = match r {
        Ok(Action::Pass) => (VERDICT_PASS, 0),
        Ok(Action::Redirect) => (VERDICT_REDIRECT, 0),
        Err(d) => (VERDICT_DROP, d.counter() as u8),
    };
    ev.after = tuple(p);
    if worth_tracing(&ev.before, &ev.after, ev.verdict) && NAT_TRACE.output::<TraceEvent>(&ev, 0).is_err() {
        count(NatCounter::TraceLost);
        warn!(&(), "the trace ring buffer is full: events lost");
    }
}
