//! Where labs keep their state: `STATE_ROOT/<prefix>/` (state.json, lab.toml, the agent's
//! PID, socket, lock and log, the trace locks).

use std::path::{Path, PathBuf};

pub const STATE_ROOT: &str = "/run/netns-nat";

/// Where lab `prefix` keeps its state.
pub fn state_dir(prefix: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(prefix)
}
