//! The per-lab agent of an eBPF NAT: one process per lab (`netns-nat agent`, started by
//! `up`, stopped by `down`, restarted by `up --resume`). It expires entries (the sweep of
//! `ops::sweeper`), follows the uplink's address and the router's links (for the fast path's
//! port table) from rtnetlink events, and applies
//! live changes (forwards, `config apply`, `conntrack --delete/--flush`, the trace flag) one
//! at a time, so that the maps, the stored
//! configuration and its own view of them never disagree. Its control socket
//! (`agent.sock` in the lab's state directory) takes one JSON request per line and answers one JSON line.
//!
//! The agent is not on the packet path: if it dies, packets go on being translated; only
//! expired entries stay (their ports are still reused) and address changes go unnoticed
//! until it is back.
//!
//! - `protocol`: what the control socket speaks (requests, replies, health, the framing),
//!   one definition for both ends;
//! - `client`: a request and its answer, a ping, waiting for a started agent;
//! - `lifecycle`: the agent as a process (its files, start, stop, resume), used by `lab`
//!   (`up`, `up --resume`, `up --upgrade`, `down`, `nat attach`, `nat detach`);
//! - `server`: the agent itself ([`run`]: the socket's server, the sweep, the router's
//!   events, the forward-hook filter check);
//! - `trace_flag`: `NAT_TRACE_ON`, which only the agent writes;
//! - `log_rotation` (its own log) and `program_log` (the programs' diagnostics in it).

mod client;
mod lifecycle;
mod log_rotation;
mod program_log;
mod protocol;
mod server;
mod trace_flag;

pub use client::{answers, health, request, request_within, wait_ready};
pub use lifecycle::{Resumed, log_path, pid, pid_file, resume, socket_path, start, stop};
pub use log_rotation::LOG_MAX;
pub use protocol::{CONNECTION_TIME, Filter, Health, MAX_REQUEST, Reply, Request};
pub use server::run;
pub use trace_flag::{FlagError, listen_lock_path, listeners};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "the agent of lab {prefix:?} is not running ({detail}); start it again with \
         `netns-nat up --prefix {prefix} --resume`"
    )]
    NotRunning { prefix: String, detail: String },
    #[error("the agent of lab {prefix:?}: {detail}")]
    Protocol { prefix: String, detail: String },
    /// The agent refused the change; its words.
    #[error("{0}")]
    Refused(String),
    /// The agent could not start (in the agent's own process).
    #[error("agent of lab {prefix:?}: {detail}")]
    Start { prefix: String, detail: String },
    /// Starting, finding or resuming the agent failed (in the process that starts it).
    #[error("the agent of lab {prefix}: {detail}")]
    Lifecycle { prefix: String, detail: String },
}
