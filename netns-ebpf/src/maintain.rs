//! `nat_maintain`: what user space asks of the tables (expiry, removals, an address change),
//! done in the kernel with the packets' own compare-and-swap protocol
//! (`netns_common::translate::maintain`). Never attached: the agent and the command line run
//! it with BPF_PROG_TEST_RUN, the request in the packet's bytes and the results written back.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    cty::c_void,
    helpers::bpf_for_each_map_elem,
    programs::TcContext,
};
use netns_common::{
    nat::{Binding, BindingKey, Flow, FlowKey},
    translate::{
        Tables,
        maintain::{MaintainCmd, binding_step, flow_step},
    },
};

use crate::maps::{Maps, NAT_BINDINGS, NAT_FLOWS};

/// A run: the request, its results so far, and the tables.
struct Run {
    cmd: MaintainCmd,
    now: u64,
    maps: Maps,
}

pub fn run(ctx: &TcContext) -> i32 {
    let Ok(cmd) = ctx.load::<MaintainCmd>(0) else {
        return TC_ACT_SHOT;
    };
    let maps = Maps::on(ctx);
    let mut run = Run {
        cmd,
        now: maps.now(),
        maps,
    };
    let run_ptr = (&mut run as *mut Run).cast::<c_void>();
    // Mappings first: a removal run marks the flows of the mappings it marked.
    // Safety: the maps' own addresses (relocated to their descriptors), static callbacks
    // with the helper's signature, and a pointer to this stack frame, which outlives both
    // walks.
    unsafe {
        bpf_for_each_map_elem(
            core::ptr::addr_of!(NAT_BINDINGS) as *mut c_void,
            binding_cb as *mut c_void,
            run_ptr,
            0,
        );
        bpf_for_each_map_elem(
            core::ptr::addr_of!(NAT_FLOWS) as *mut c_void,
            flow_cb as *mut c_void,
            run_ptr,
            0,
        );
    }
    if ctx.store(0, &run.cmd, 0).is_err() {
        return TC_ACT_SHOT;
    }
    TC_ACT_OK
}

/// One mapping entry; 0: go on.
#[inline(never)]
extern "C" fn binding_cb(
    _map: *mut c_void,
    key: *const BindingKey,
    value: *mut Binding,
    ctx: *mut c_void,
) -> i64 {
    // Safety: the helper passes the element's key and value, valid for this call, and the
    // `Run` that `run` gave it.
    let (run, key, b) = unsafe { (&mut *ctx.cast::<Run>(), &*key, &mut *value) };
    run.cmd.seen += 1;
    let did = binding_step(&run.maps, &run.cmd, key, b, run.now);
    run.cmd.mappings += did.mappings;
    run.cmd.internal += did.internal;
    0
}

/// One flow; 0: go on.
#[inline(never)]
extern "C" fn flow_cb(_map: *mut c_void, key: *const FlowKey, value: *mut Flow, ctx: *mut c_void) -> i64 {
    // Safety: as in `binding_cb`.
    let (run, key, f) = unsafe { (&mut *ctx.cast::<Run>(), &*key, &mut *value) };
    run.cmd.seen += 1;
    if flow_step(&run.maps, &run.cmd, key, f, run.now) {
        run.cmd.flows += 1;
    }
    0
}
