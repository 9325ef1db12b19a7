//! The agent's own log (`agent.log`, its stdout and stderr), kept small by rotation.

use std::os::fd::AsRawFd as _;

/// The agent's log (its stdout and stderr) is kept under [`LOG_MAX`]: past it, it becomes
/// `agent.log.1` (replacing the one before) and a new log begins. The log is in /run
/// (memory), so an agent that logs for weeks must not fill it.
pub const LOG_MAX: u64 = 1 << 20;

pub(super) fn rotate_log(prefix: &str) -> std::io::Result<()> {
    rotate_log_at(&super::lifecycle::log_path(prefix), LOG_MAX, &[1, 2])
}

/// [`rotate_log`] of the log at `path`, written through descriptors `fds`, past `max` bytes.
fn rotate_log_at(path: &std::path::Path, max: u64, fds: &[i32]) -> std::io::Result<()> {
    if std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) <= max {
        return Ok(());
    }
    let path = path.to_owned();
    let mut old = path.clone().into_os_string();
    old.push(".1");
    std::fs::rename(&path, &old)?;
    let fresh = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    for &fd in fds {
        // Safety: dup2(2) of a descriptor this function owns onto the log's descriptors
        // (the agent's standard output and error), which no Rust object owns.
        if unsafe { libc::dup2(fresh.as_raw_fd(), fd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    if !fds.is_empty() {
        eprintln!("log rotated: the earlier lines are in {}", old.to_string_lossy());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_log_past_its_limit_is_rotated_once() {
        let dir = std::env::temp_dir().join(format!("netns-nat-rotate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("agent.log");
        std::fs::write(&log, vec![b'x'; 100]).unwrap();
        super::rotate_log_at(&log, 100, &[]).unwrap();
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 100, "at the limit: kept");
        std::fs::write(&log, vec![b'y'; 101]).unwrap();
        super::rotate_log_at(&log, 100, &[]).unwrap();
        assert_eq!(std::fs::read(dir.join("agent.log.1")).unwrap(), vec![b'y'; 101]);
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0, "a fresh log");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
