//! The programs' diagnostics (aya-log records from the NAT's ring buffer), written to the
//! agent's log with their numbers named, at a bounded rate.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::io::unix::AsyncFd;

/// Writes the programs' aya-log records to the agent's log (its stderr).
/// At most [`LOG_PER_S`] records a second: the log is in memory (/run), and a flood of
/// drops at `debug` must not fill it; the rest are counted.
#[derive(Default)]
pub(super) struct ProgramLog {
    /// (start of the current second, records written in it, records skipped in it).
    window: Mutex<(Option<Instant>, u32, u64)>,
}

const LOG_PER_S: u32 = 200;

impl log::Log for ProgramLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let mut w = self.window.lock().expect("not poisoned");
        let now = Instant::now();
        if w.0
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            if w.2 > 0 {
                eprintln!("bpf: {} more records in that second not written", w.2);
            }
            *w = (Some(now), 0, 0);
        }
        if w.1 >= LOG_PER_S {
            w.2 += 1;
            return;
        }
        w.1 += 1;
        eprintln!("bpf {}: {}", record.level(), named(&record.args().to_string()));
    }

    fn flush(&self) {}
}

/// A program's record with its numbers named: `hook=N` by the program, `reason=N` by the
/// counter (the programs log numbers; names would cost them too much to verify).
fn named(msg: &str) -> String {
    use netns_common::{counters::NatCounter, trace::hook_name};
    msg.split(' ')
        .map(|w| {
            if let Some(n) = w.strip_prefix("hook=").and_then(|n| n.parse::<u8>().ok()) {
                hook_name(n).to_owned()
            } else if let Some(c) = w
                .strip_prefix("reason=")
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| NatCounter::ALL.get(n))
            {
                c.name().to_owned()
            } else if let Some(p) = w.strip_prefix("proto=").and_then(|n| n.parse::<u8>().ok()) {
                crate::ops::conntrack::proto_name(p).to_owned()
            } else {
                w.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) async fn follow_program_log(mut fd: AsyncFd<aya_log::EbpfLogger<ProgramLog>>) {
    loop {
        let Ok(mut ready) = fd.readable_mut().await else {
            return;
        };
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::named;

    #[test]
    fn program_records_get_names() {
        assert_eq!(
            named("drop hook=1 reason=14 proto=17 192.168.1.3:7499 -> 192.168.1.2:1024"),
            "drop nat_ingress drop_unsolicited udp 192.168.1.3:7499 -> 192.168.1.2:1024"
        );
        assert_eq!(named("new mapping"), "new mapping");
        assert_eq!(named("hook=99 reason=999"), "? reason=999");
    }
}
