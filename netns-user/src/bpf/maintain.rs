//! The tables of a running eBPF NAT changed from user space, always through its maintenance
//! program (`nat_maintain`, pinned with the lab, run with BPF_PROG_TEST_RUN): expiry,
//! removals and the uplink's address moving are decided in the kernel by the same
//! compare-and-swap protocol as the packets' (`netns_common::translate::maintain`), never by
//! a read here and a delete there with a packet in between.

use std::mem::size_of;

use aya::{TestRun as _, TestRunOptions, programs::SchedClassifier};
use netns_common::{
    filter::Selector,
    names::{PIN_NAT_MAINTAIN, PROG_NAT_MAINTAIN},
    translate::maintain::{MaintainCmd, OP_MOVE, OP_PURGE, OP_SWEEP, OP_TOMBSTONE},
};

use super::{EbpfError, Result, pin_dir};
use crate::sys::rcu;

/// Runs one request on lab `prefix`'s maintenance program; the request with its results.
pub fn run(prefix: &str, cmd: MaintainCmd) -> Result<MaintainCmd> {
    let path = pin_dir(prefix).join(PIN_NAT_MAINTAIN);
    let prog = SchedClassifier::from_pin(&path).map_err(|e| EbpfError::Pin {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    // Safety: MaintainCmd is #[repr(C)] plain data without padding; its bytes are the
    // request the program reads (and a test run's packet must hold an Ethernet header: it
    // is longer than one).
    let data: [u8; size_of::<MaintainCmd>()] = unsafe { core::mem::transmute(cmd) };
    let mut out = [0u8; size_of::<MaintainCmd>()];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(&data),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .map_err(|source| EbpfError::Program {
            name: PROG_NAT_MAINTAIN,
            source,
        })?;
    if r.return_value != 0 || r.data_size_out as usize != out.len() {
        return Err(EbpfError::Pin {
            path,
            detail: format!(
                "the maintenance program refused the request (code {}, {} bytes back)",
                r.return_value, r.data_size_out
            ),
        });
    }
    // Safety: as above, the bytes of a MaintainCmd.
    Ok(unsafe { core::mem::transmute::<[u8; size_of::<MaintainCmd>()], MaintainCmd>(out) })
}

/// Expired flows and mappings go (those that expired more than `grace_ns` ago).
pub fn sweep(prefix: &str, grace_ns: u64) -> Result<MaintainCmd> {
    run(
        prefix,
        MaintainCmd {
            op: OP_SWEEP,
            grace_ns,
            ..MaintainCmd::default()
        },
    )
}

/// Marks what `op` picks, waits for a grace period (no program still holds what was
/// marked), then deletes the marked entries: what was marked.
fn mark_then_purge(prefix: &str, op: u32, selector: Selector) -> Result<MaintainCmd> {
    let marked = run(
        prefix,
        MaintainCmd {
            op,
            selector,
            ..MaintainCmd::default()
        },
    )?;
    rcu::synchronize().map_err(|e| EbpfError::Pin {
        path: pin_dir(prefix),
        detail: format!("waiting for an RCU grace period (membarrier): {e}"),
    })?;
    run(
        prefix,
        MaintainCmd {
            op: OP_PURGE,
            ..MaintainCmd::default()
        },
    )?;
    Ok(marked)
}

/// Removes what `selector` picks: flows, mappings (with their flows).
pub fn remove(prefix: &str, selector: Selector) -> Result<MaintainCmd> {
    mark_then_purge(prefix, OP_TOMBSTONE, selector)
}

/// After the external address changed in the configuration (and the forwards' external
/// entries were made on it): flows and mappings on any other address go, the forwards'
/// internal entries move.
pub fn move_address(prefix: &str) -> Result<MaintainCmd> {
    mark_then_purge(prefix, OP_MOVE, Selector::default())
}
