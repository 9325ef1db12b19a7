//! The load: a UDP generator that writes whole IPv4 datagrams through a raw socket in
//! `sendmmsg` batches (one system call per 64 packets), cycling over a number of flows, at
//! full speed or at a fixed rate; and the CPU time the machine spent meanwhile.

use std::{
    io,
    mem::size_of,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use netns_common::{
    csum,
    names::{SINK_PORT, SINK_PORTS},
};

/// UDP payload bytes: with UDP (8), IPv4 (20) and Ethernet (14) headers, 60-byte frames,
/// the 64-byte minimum on a wire once the FCS is counted.
pub const PAYLOAD: usize = 18;
const IP_LEN: usize = 20 + 8 + PAYLOAD;
const BATCH: usize = 64;
/// Flows spread over this many source ports, then over further destination ports (the
/// sink counts SINK_PORT .. SINK_PORT + SINK_PORTS).
const SPORT_BASE: u16 = 1024;
const SPORTS: u32 = 50_000;

/// What a run of the generator did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    pub packets: u64,
    pub elapsed: Duration,
}

impl Sent {
    pub fn pps(&self) -> f64 {
        self.packets as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The (source port, destination port) of flow `i`.
pub fn flow_ports(i: u32) -> (u16, u16) {
    (SPORT_BASE + (i % SPORTS) as u16, SINK_PORT + (i / SPORTS) as u16)
}

/// The most flows the generator can tell apart.
pub const MAX_FLOWS: u32 = SPORTS * SINK_PORTS as u32;

/// One datagram of flow `i`, with valid UDP checksum (the kernel fills the IP checksum).
pub fn datagram(src: Ipv4Addr, dst: Ipv4Addr, i: u32, buf: &mut [u8; IP_LEN]) {
    let (sport, dport) = flow_ports(i);
    buf.fill(0);
    buf[0] = 0x45;
    buf[2..4].copy_from_slice(&(IP_LEN as u16).to_be_bytes());
    buf[8] = 64;
    buf[9] = 17;
    buf[12..16].copy_from_slice(&src.octets());
    buf[16..20].copy_from_slice(&dst.octets());
    let udp_len = (8 + PAYLOAD) as u16;
    buf[20..22].copy_from_slice(&sport.to_be_bytes());
    buf[22..24].copy_from_slice(&dport.to_be_bytes());
    buf[24..26].copy_from_slice(&udp_len.to_be_bytes());
    buf[28..].copy_from_slice(&i.to_be_bytes().repeat(PAYLOAD / 4 + 1)[..PAYLOAD]);
    // Pseudo header + UDP header and payload.
    let mut acc = csum::sum(&buf[12..20], 0);
    acc = csum::sum(&[0, 17], acc);
    acc = csum::sum(&udp_len.to_be_bytes(), acc);
    acc = csum::sum(&buf[20..], acc);
    let c = !csum::fold(acc);
    buf[26..28].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
}

/// Sends datagrams from `src` to `dst` for `duration`, cycling over `flows` flows, at most
/// `rate` packets per second (None: as fast as it goes). Call it inside the sender's
/// namespace. Bounded by `duration`, whatever happens.
pub fn run(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    flows: u32,
    rate: Option<f64>,
    duration: Duration,
) -> io::Result<Sent> {
    let flows = flows.clamp(1, MAX_FLOWS);
    // Safety: plain socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // Safety: fd is a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    // Safety: addr is a valid sockaddr_in of the size given.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            &addr as *const _ as *const libc::sockaddr,
            size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }

    // A ring of prepared datagrams: flow i's packet is rebuilt only when flows > ring.
    let ring = (flows as usize).min(4096);
    let mut packets = vec![[0u8; IP_LEN]; ring];
    for (i, p) in packets.iter_mut().enumerate() {
        datagram(src, dst, i as u32, p);
    }
    let mut iov: Vec<libc::iovec> = vec![
        libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: IP_LEN
        };
        BATCH
    ];
    // Safety: an all-zero mmsghdr is a valid empty message.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];

    let start = Instant::now();
    let deadline = start + duration;
    let mut sent: u64 = 0;
    let mut flow: u32 = 0;
    while Instant::now() < deadline {
        if let Some(rate) = rate {
            // Ahead of schedule: wait for it.
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep((due - now).min(deadline - now));
                continue;
            }
        }
        // Slots within one batch are distinct (BATCH <= ring whenever packets are rebuilt),
        // and sendmmsg has copied a batch before the next one rebuilds any slot.
        for k in 0..BATCH {
            let slot = (flow as usize) % ring;
            if flows as usize > ring {
                datagram(src, dst, flow, &mut packets[slot]);
            }
            iov[k].iov_base = packets[slot].as_mut_ptr().cast();
            msgs[k].msg_hdr.msg_iov = &mut iov[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
            flow = (flow + 1) % flows;
        }
        // Safety: msgs point at live iovecs over live buffers of IP_LEN bytes each.
        let rc = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // A full queue or a neighbour still resolving: try again.
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
        sent += rc as u64;
    }
    Ok(Sent {
        packets: sent,
        elapsed: start.elapsed(),
    })
}

/// Busy CPU time so far (user, nice, system, irq, softirq, steal), in seconds, from
/// /proc/stat: `(whole machine, CPU 0)`. CPU 0 is where the pinned generator sends, and so
/// where the whole path of its packets runs.
pub fn cpu_busy_s() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    // Safety: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let busy = |prefix: &str| {
        let Some(line) = stat.lines().find(|l| l.starts_with(prefix)) else {
            return 0.0;
        };
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal
        [0, 1, 2, 5, 6, 7].iter().filter_map(|i| f.get(*i)).sum::<u64>() as f64 / hz
    };
    (busy("cpu "), busy("cpu0 "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_are_well_formed() {
        let mut p = [0u8; IP_LEN];
        datagram(
            Ipv4Addr::new(192, 168, 15, 1),
            Ipv4Addr::new(192, 168, 1, 3),
            7,
            &mut p,
        );
        assert_eq!(p.len() + 14, 60, "60-byte frames");
        // The UDP checksum verifies over pseudo header + datagram.
        let mut acc = csum::sum(&p[12..20], 0);
        acc = csum::sum(&[0, 17], acc);
        acc = csum::sum(&((8 + PAYLOAD) as u16).to_be_bytes(), acc);
        acc = csum::sum(&p[20..], acc);
        assert_eq!(csum::fold(acc), 0xffff);
        assert_eq!(u16::from_be_bytes([p[20], p[21]]), 1024 + 7);
        assert_eq!(u16::from_be_bytes([p[22], p[23]]), SINK_PORT);
    }

    #[test]
    fn flows_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for i in (0..MAX_FLOWS).step_by(997) {
            assert!(seen.insert(flow_ports(i)));
        }
        assert_eq!(flow_ports(SPORTS), (1024, SINK_PORT + 1));
        assert!(flow_ports(MAX_FLOWS - 1).1 < SINK_PORT + SINK_PORTS);
    }
}
