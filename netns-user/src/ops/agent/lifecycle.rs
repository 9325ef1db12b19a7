//! The agent as a process: its files in the lab's state directory, starting it (the hidden
//! `netns-nat agent` subcommand, which runs [`super::run`]) until it answers a ping, finding
//! it, stopping it, and resuming it when it died or went deaf.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use netns_common::names::MAP_NAT_CONFIG;

use super::{AgentError, client::answers};
use crate::{bpf, sys::paths::state_dir};

/// The agent's PID file, control socket and log.
pub fn pid_file(prefix: &str) -> PathBuf {
    state_dir(prefix).join("agent.pid")
}

pub fn socket_path(prefix: &str) -> PathBuf {
    state_dir(prefix).join("agent.sock")
}

pub fn log_path(prefix: &str) -> PathBuf {
    state_dir(prefix).join("agent.log")
}

/// Whether the lab's NAT is still there (its pinned configuration map).
pub(super) fn lab_present(prefix: &str) -> bool {
    bpf::pin_dir(prefix).join(MAP_NAT_CONFIG).exists()
}

fn lifecycle_err(prefix: &str, detail: impl Into<String>) -> AgentError {
    AgentError::Lifecycle {
        prefix: prefix.to_owned(),
        detail: detail.into(),
    }
}

/// The `netns-nat` executable that runs the agent: this one, or (for the library used
/// from elsewhere, e.g. tests) `$NETNS_NAT_BIN` or one found beside the running program.
fn netns_nat_binary(prefix: &str) -> Result<PathBuf, AgentError> {
    if let Some(p) = std::env::var_os("NETNS_NAT_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().map_err(|e| lifecycle_err(prefix, e.to_string()))?;
    if exe.file_name().is_some_and(|n| n == "netns-nat") {
        return Ok(exe);
    }
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    [dir.join("netns-nat"), dir.join("../netns-nat")]
        .into_iter()
        .find(|p| p.exists())
        .ok_or_else(|| {
            lifecycle_err(
                prefix,
                "cannot find the netns-nat binary to run the agent (set NETNS_NAT_BIN)",
            )
        })
}

/// Starts lab `prefix`'s agent and returns its PID once its control socket answers (it has
/// read the lab, bound the socket and subscribed to the router's address events).
pub fn start(prefix: &str) -> Result<u32, AgentError> {
    use std::os::unix::process::CommandExt as _;
    let fail = |detail: String| lifecycle_err(prefix, detail);
    let log_path = log_path(prefix);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| fail(format!("{}: {e}", log_path.display())))?;
    let log2 = log.try_clone().map_err(|e| fail(e.to_string()))?;
    let sock = socket_path(prefix);
    let _ = fs::remove_file(&sock);
    let mut child = Command::new(netns_nat_binary(prefix)?)
        .args(["agent", "--prefix", prefix])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: Ctrl-C in the terminal that ran `up` does not reach it.
        .process_group(0)
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    let pid = child.id();
    fs::write(pid_file(prefix), pid.to_string()).map_err(|e| fail(e.to_string()))?;
    let started = std::time::Instant::now();
    loop {
        if answers(prefix) {
            return Ok(pid);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            return Err(fail(format!(
                "it ended at start ({status}): {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            )));
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail("its control socket did not answer within 10 s".into()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The PID of lab `prefix`'s agent, if one runs (a process that is that agent).
pub fn pid(prefix: &str) -> Option<i32> {
    let pid = fs::read_to_string(pid_file(prefix))
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    // A zombie has an empty command line: not running.
    (args.contains(&b"agent".as_slice()) && args.contains(&prefix.as_bytes())).then_some(pid)
}

/// Stops lab `prefix`'s agent, if it runs (only a process that is that agent): SIGTERM,
/// and SIGKILL if it has not ended within 6 s (it waits up to 5 s for a change it is
/// applying). Returns once it is gone.
pub fn stop(prefix: &str) {
    use nix::sys::{
        signal::{Signal, kill},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    };
    let Some(pid) = pid(prefix) else {
        return;
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    let gone = || match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
        // Our child (the lab was made by this process): reaped when it ends.
        Ok(WaitStatus::StillAlive) => false,
        Ok(_) => true,
        Err(_) => fs::metadata(format!("/proc/{pid}")).is_err(),
    };
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        let _ = kill(pid, signal);
        for _ in 0..600 {
            if gone() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// What [`resume`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// Nothing runs beside this lab's NAT (the kernel's).
    Nothing,
    /// It was running (this PID).
    Running(u32),
    /// It was not; now it is (this PID).
    Started(u32),
}

/// Brings lab `prefix`'s agent back if it died, or replaces it if it does not answer.
pub fn resume(prefix: &str) -> Result<Resumed, AgentError> {
    if !lab_present(prefix) {
        return Err(lifecycle_err(
            prefix,
            "the NAT's pinned maps are gone: nothing to resume (`down`, then `up`)",
        ));
    }
    Ok(match pid(prefix) {
        Some(pid) if answers(prefix) => Resumed::Running(pid as u32),
        // Alive but deaf (stuck, or its socket gone): replaced.
        Some(_) => {
            stop(prefix);
            Resumed::Started(start(prefix)?)
        }
        None => Resumed::Started(start(prefix)?),
    })
}
