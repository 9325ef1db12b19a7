//! What the agent and the command line ask of a running NAT's tables, done by one program
//! in the kernel (`nat_maintain`, run with BPF_PROG_TEST_RUN; on the host by
//! `crate::host::MemTables`) with the same compare-and-swap protocol as the packets, so that
//! no removal ever takes an entry a packet has just revived or re-made:
//! - [`OP_SWEEP`]: expired flows and mappings go (a flow's expiry, a mapping's expiry,
//!   swapped to 0 by whoever wins, then removed at once: nothing has written them for a
//!   whole timeout). A TCP flow that still held its mapping open gives it back.
//! - [`OP_TOMBSTONE`] then [`OP_PURGE`]: entries a [`Selector`] picks (and the flows of the
//!   mappings it picks) are marked (expiry 0, internal entries dying) in one run and removed
//!   in a second, after an RCU grace period (user space waits for it between the runs), so
//!   that a packet that found an entry before it was marked is done with it before its
//!   memory can serve another.
//! - [`OP_MOVE`] then [`OP_PURGE`]: the uplink's address changed (already in the
//!   configuration): flows and dynamic mappings on another address are marked; port
//!   forwards' internal entries move to the new address (their new external entries are
//!   made by user space first), the old external entries are marked.

use super::{Tables, bindings, flows};
use crate::wire::WireAddr;
use crate::{
    filter::{Selector, uses},
    nat::{Binding, BindingKey, Flow, FlowKey, NatConfig, SIDE_EXTERNAL, SIDE_INTERNAL, SIDE_REMOTE},
};

pub const OP_SWEEP: u32 = 1;
pub const OP_TOMBSTONE: u32 = 2;
pub const OP_PURGE: u32 = 3;
pub const OP_MOVE: u32 = 4;

/// One request to the maintenance program, and what it did (written back).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaintainCmd {
    pub op: u32,
    pub _pad: u32,
    /// [`OP_TOMBSTONE`]: what goes.
    pub selector: Selector,
    /// [`OP_SWEEP`]: entries go this long after they expired (user space reads the tables
    /// while the program runs; a grace keeps what it just saw from vanishing under it).
    pub grace_ns: u64,
    /// Results: flows and mappings this run removed or marked, internal entries removed.
    pub flows: u32,
    pub mappings: u32,
    pub internal: u32,
    /// Flows and mappings the run looked at.
    pub seen: u32,
}

#[cfg(feature = "user")]
// Safety: #[repr(C)], integer fields and a Pod struct, no padding (asserted by the test).
unsafe impl aya::Pod for MaintainCmd {}

/// Marks flow `f` removed (expiry 0) if it is not already: true if this call did, after
/// settling what it owed its mapping.
#[inline(always)]
fn mark_flow<T: Tables>(t: &T, cfg: &NatConfig, key: &FlowKey, f: &mut Flow, now: u64) -> bool {
    let mut seen = f.expires_ns;
    for _ in 0..3 {
        if seen == 0 {
            return false;
        }
        match T::cas_u64(&mut f.expires_ns, seen, 0) {
            Ok(()) => {
                flows::ended(t, key, f, now + cfg.timeouts.tcp_transitory_ns);
                return true;
            }
            Err(found) => seen = found,
        }
    }
    false
}

/// Marks mapping entry `key` (external or address-only) removed, and its internal entry
/// dying, unless a packet of its endpoint moved that one on meanwhile: true if this call did.
#[inline(always)]
fn mark_mapping<T: Tables>(t: &T, key: &BindingKey, b: &mut Binding) -> bool {
    let mut seen = b.expires_ns;
    for _ in 0..3 {
        if seen == 0 {
            return false;
        }
        match T::cas_u64(&mut b.expires_ns, seen, 0) {
            Ok(()) => {
                if key.side == SIDE_EXTERNAL {
                    let ikey = BindingKey::internal(key.proto, b.int_addr, b.int_port);
                    let named = b.ext_word();
                    let dying = Binding::word(WireAddr::UNSPECIFIED, b.ext_port, b.int_port);
                    t.with_binding(&ikey, |i| {
                        let _ = T::cas_u64(i.ext_word_mut(), named, dying);
                    });
                }
                return true;
            }
            Err(found) => seen = found,
        }
    }
    false
}

/// Whether flow `key` -> `f`'s mapping is marked removed (or gone).
#[inline(always)]
fn mapping_marked<T: Tables>(t: &T, key: &FlowKey, f: &Flow) -> bool {
    t.binding(&BindingKey::of_flow(key, f.ext_addr, f.ext_port))
        .is_none_or(|b| b.expires_ns == 0 && uses(key, f, key.proto, &b))
}

/// One flow of a run (the run visits mappings first). Returns what it did to count.
#[inline(always)]
pub fn flow_step<T: Tables>(t: &T, cmd: &MaintainCmd, key: &FlowKey, f: &mut Flow, now: u64) -> bool {
    let Some(cfg) = t.config() else {
        return false;
    };
    match cmd.op {
        OP_SWEEP => {
            let seen = f.expires_ns;
            if seen == 0 || seen.saturating_add(cmd.grace_ns) >= now {
                return false;
            }
            if T::cas_u64(&mut f.expires_ns, seen, 0).is_err() {
                return false;
            }
            flows::ended(t, key, f, now + cfg.timeouts.tcp_transitory_ns);
            t.remove_flow(key);
            true
        }
        OP_TOMBSTONE => {
            (cmd.selector.flow(key, f) || mapping_marked(t, key, f)) && mark_flow(t, cfg, key, f, now)
        }
        OP_MOVE => f.ext_addr != cfg.ext_addr && mark_flow(t, cfg, key, f, now),
        OP_PURGE => {
            if f.expires_ns != 0 {
                return false;
            }
            t.remove_flow(key);
            true
        }
        _ => false,
    }
}

/// What one mapping entry's step did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Did {
    pub mappings: u32,
    pub internal: u32,
}

/// One mapping entry of a run.
#[inline(always)]
pub fn binding_step<T: Tables>(t: &T, cmd: &MaintainCmd, key: &BindingKey, b: &mut Binding, now: u64) -> Did {
    let mut did = Did::default();
    let Some(cfg) = t.config() else {
        return did;
    };
    let mapping = key.side == SIDE_EXTERNAL || key.side == SIDE_REMOTE;
    match cmd.op {
        OP_SWEEP if mapping => {
            if b.is_static() || b.free_at_ns().saturating_add(cmd.grace_ns) >= now {
                return did;
            }
            let Some(old) = bindings::claim_expired(t, key, now) else {
                return did;
            };
            if key.side == SIDE_EXTERNAL {
                bindings::reclaim(t, key, &old);
            } else {
                t.remove_binding(key);
            }
            did.mappings = 1;
        }
        OP_SWEEP => {
            // An internal entry left without its external one (or dying and left by a
            // reclaimer) goes; one whose external entry names it is the mapping's.
            let owned = !b.is_dying()
                && t.binding(&BindingKey::external(key.proto, b.ext_addr, b.ext_port))
                    .is_some_and(|e| e.int_addr == b.int_addr && e.int_port == b.int_port);
            if owned {
                return did;
            }
            let w = b.ext_word();
            let dying = Binding::word(WireAddr::UNSPECIFIED, b.ext_port, b.int_port);
            if b.is_dying() || T::cas_u64(b.ext_word_mut(), w, dying).is_ok() {
                t.remove_binding(key);
                did.internal = 1;
            }
        }
        OP_TOMBSTONE if mapping => {
            did.mappings = u32::from(cmd.selector.mapping(key, b) && mark_mapping(t, key, b));
        }
        OP_MOVE if mapping && b.ext_addr != cfg.ext_addr => {
            if b.is_static() && key.side == SIDE_EXTERNAL {
                // The forward's internal entry moves to its new external entry, already made.
                let ikey = BindingKey::internal(key.proto, b.int_addr, b.int_port);
                let from = b.ext_word();
                let to = Binding::word(cfg.ext_addr, b.ext_port, b.int_port);
                t.with_binding(&ikey, |i| {
                    let _ = T::cas_u64(i.ext_word_mut(), from, to);
                });
                let seen = b.expires_ns;
                if seen != 0 && T::cas_u64(&mut b.expires_ns, seen, 0).is_ok() {
                    did.mappings = 1;
                }
            } else if mark_mapping(t, key, b) {
                did.mappings = 1;
            }
        }
        OP_PURGE => {
            if mapping && b.expires_ns == 0 {
                t.remove_binding(key);
                did.mappings = 1;
            } else if key.side == SIDE_INTERNAL && b.is_dying() {
                t.remove_binding(key);
                did.internal = 1;
            }
        }
        _ => {}
    }
    did
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_has_no_hidden_padding() {
        assert_eq!(
            core::mem::size_of::<MaintainCmd>(),
            4 + 4 + core::mem::size_of::<Selector>() + 8 + 4 * 4
        );
        assert_eq!(core::mem::size_of::<Selector>(), 4 + 4 + 2 + 2 + 1 + 1 + 1 + 1);
    }
}
