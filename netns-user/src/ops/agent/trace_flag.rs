//! `NAT_TRACE_ON`, the flag the programs read before writing a trace event: whether a
//! `trace` listens, that is, holds the listen lock (`trace.listen` in the lab's state
//! directory). The agent is its one writer: it recounts when a trace asks (as it starts and
//! ends: `Request::TraceSync`) and at every sweep, so that a trace killed with SIGKILL (its
//! lock released by the kernel) does not leave tracing on.

use std::{fs, path::PathBuf};

use aya::maps::{Array, MapData};
use netns_common::names::MAP_NAT_TRACE_ON;
use nix::fcntl::{Flock, FlockArg};

use crate::{bpf, sys::paths::state_dir};

#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error(transparent)]
    Ebpf(#[from] Box<bpf::EbpfError>),
    #[error("the trace flag of lab {prefix:?}: {detail}")]
    Io { prefix: String, detail: String },
}

impl From<bpf::EbpfError> for FlagError {
    fn from(e: bpf::EbpfError) -> Self {
        FlagError::Ebpf(Box::new(e))
    }
}

fn io_err(prefix: &str) -> impl Fn(std::io::Error) -> FlagError + '_ {
    move |e| FlagError::Io {
        prefix: prefix.to_owned(),
        detail: e.to_string(),
    }
}

/// The file whose lock a listening trace holds.
pub fn listen_lock_path(prefix: &str) -> PathBuf {
    state_dir(prefix).join("trace.listen")
}

/// Sets the flag to whether a trace listens. Returns it.
pub(super) fn sync(prefix: &str) -> Result<u32, FlagError> {
    let io = io_err(prefix);
    // Serialises recounts (the sweep's and a request's): one never undoes a newer one.
    let lock = fs::File::create(state_dir(prefix).join("trace.lock")).map_err(&io)?;
    let _lock = Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| io(e.into()))?;
    let listen = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(listen_lock_path(prefix))
        .map_err(&io)?;
    // A lock taken through another open file conflicts even within one process.
    let live = match Flock::lock(listen, FlockArg::LockExclusiveNonblock) {
        Ok(_free) => 0,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => 1,
        Err((_, e)) => return Err(io(e.into())),
    };
    let (mut flag, path) = flag(prefix)?;
    if flag.get(&0, 0).map_err(bpf::map_err_at(&path))? != live {
        flag.set(0, live, 0).map_err(bpf::map_err_at(&path))?;
    }
    Ok(live)
}

/// Whether a trace listens now (the flag as the programs see it: 0 or 1).
pub fn listeners(prefix: &str) -> Result<u32, FlagError> {
    let (flag, path) = flag(prefix)?;
    Ok(flag.get(&0, 0).map_err(bpf::map_err_at(&path))?)
}

/// Lab `prefix`'s pinned flag, and its path (for errors).
fn flag(prefix: &str) -> Result<(Array<MapData, u32>, PathBuf), FlagError> {
    let path = bpf::pin_dir(prefix).join(MAP_NAT_TRACE_ON);
    let flag = Array::try_from(bpf::pinned_map(prefix, MAP_NAT_TRACE_ON)?).map_err(bpf::map_err_at(&path))?;
    Ok((flag, path))
}
