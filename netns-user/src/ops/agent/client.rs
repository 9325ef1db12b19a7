//! The client end of the control socket: a request and its answer, the agent's health, and
//! waiting for a started agent to answer.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use super::{
    AgentError,
    lifecycle::socket_path,
    protocol::{Health, Reply, Request, line},
};

/// Sends `req` to lab `prefix`'s agent and returns what it answers (`Refused` when it says
/// no).
pub fn request(prefix: &str, req: &Request) -> Result<serde_json::Value, AgentError> {
    request_within(prefix, req, Duration::from_secs(30))
}

pub fn request_within(
    prefix: &str,
    req: &Request,
    timeout: Duration,
) -> Result<serde_json::Value, AgentError> {
    let not_running = |detail: String| AgentError::NotRunning {
        prefix: prefix.to_owned(),
        detail,
    };
    let proto = |detail: String| AgentError::Protocol {
        prefix: prefix.to_owned(),
        detail,
    };
    let mut conn = UnixStream::connect(socket_path(prefix)).map_err(|e| not_running(e.to_string()))?;
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| proto(e.to_string()))?;
    conn.write_all(line(req).as_bytes())
        .map_err(|e| proto(e.to_string()))?;
    let mut answer = String::new();
    BufReader::new(&conn)
        .read_line(&mut answer)
        .map_err(|e| proto(format!("no answer: {e}")))?;
    if answer.is_empty() {
        return Err(proto("it closed the connection without answering".into()));
    }
    let reply: Reply = serde_json::from_str(&answer).map_err(|e| proto(format!("bad answer: {e}")))?;
    if reply.ok {
        Ok(reply.value)
    } else {
        Err(AgentError::Refused(reply.error.unwrap_or_default()))
    }
}

/// Whether lab `prefix`'s agent answers a ping within a second.
pub fn answers(prefix: &str) -> bool {
    request_within(prefix, &Request::Ping, Duration::from_secs(1)).is_ok()
}

/// The agent's health, if it runs and answers within a second.
pub fn health(prefix: &str) -> Result<Health, AgentError> {
    let v = request_within(prefix, &Request::Ping, Duration::from_secs(1))?;
    serde_json::from_value(v).map_err(|e| AgentError::Protocol {
        prefix: prefix.to_owned(),
        detail: e.to_string(),
    })
}

/// Waits until lab `prefix`'s agent answers (after it was started), at most `within`.
pub fn wait_ready(prefix: &str, within: Duration) -> Result<Health, AgentError> {
    let start = Instant::now();
    loop {
        match health(prefix) {
            Ok(h) => return Ok(h),
            Err(e) if start.elapsed() >= within => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
