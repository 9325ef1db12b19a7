//! Raw frames on a lab's wires: an AF_PACKET socket per interface that sends frames as
//! they are and receives every frame that arrives, and what the hostile tests look for in
//! what arrived.

use std::{
    ffi::CString,
    io,
    net::{Ipv4Addr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use netns_testkit::packet::{self, Mac, parse_frame};

use crate::in_ns;

const ETH_P_ALL: u16 = 0x0003;

/// An AF_PACKET socket on one interface of a lab namespace: sends frames as they are and
/// receives every frame that arrives there.
pub struct Wire {
    fd: OwnedFd,
    /// Frames the kernel took (a refused send is not counted).
    sent: AtomicUsize,
}

impl Wire {
    pub fn open(ns: &str, ifname: &str) -> Wire {
        let ifname = ifname.to_owned();
        in_ns(ns, move || {
            let proto = i32::from(ETH_P_ALL.to_be());
            // Safety: plain socket(2).
            let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
            assert!(raw >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
            // Safety: a descriptor just returned by socket(2), owned from here on.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let name = CString::new(ifname.clone()).unwrap();
            // Safety: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert!(ifindex > 0, "no interface {ifname}");
            // Safety: all-zero is a valid sockaddr_ll.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ETH_P_ALL.to_be();
            sll.sll_ifindex = ifindex as i32;
            // Safety: the address and its size.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(rc, 0, "bind to {ifname}: {}", io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 20_000,
            };
            // Safety: a timeval of the size given.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                )
            };
            Wire {
                fd,
                sent: AtomicUsize::new(0),
            }
        })
    }

    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // Safety: the buffer and its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// How many frames the kernel has taken from [`Wire::send`] so far.
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// The frames that arrived at the interface (not those sent from it) within `wait`.
    pub fn received(&self, wait: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // Safety: all-zero is a valid sockaddr_ll.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // Safety: the buffer, the address and their sizes.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut sll as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n >= 0 && sll.sll_pkttype != libc::PACKET_OUTGOING {
                out.push(buf[..n as usize].to_vec());
            }
            // Past the deadline, only what is already queued (until a read times out).
            if n < 0 && Instant::now() >= deadline {
                return out;
            }
        }
    }
}

/// The MAC address of `ifname` in namespace `ns`.
pub fn mac_of(ns: &str, ifname: &str) -> Mac {
    let ifname = ifname.to_owned();
    in_ns(ns, move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        // Safety: all-zero is a valid ifreq.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, c) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
            *d = c as libc::c_char;
        }
        // Safety: SIOCGIFHWADDR with an ifreq naming the interface.
        let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
        assert_eq!(rc, 0, "SIOCGIFHWADDR {ifname}: {}", io::Error::last_os_error());
        // Safety: the union member SIOCGIFHWADDR fills.
        let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
        std::array::from_fn(|i| data[i] as u8)
    })
}

/// IPv4 frames among `frames` (Ethernet + IPv4, parsed) matching `pred`.
pub fn ipv4_matching(frames: &[Vec<u8>], pred: impl Fn(&packet::ParsedIpv4) -> bool) -> usize {
    frames
        .iter()
        .filter_map(|f| parse_frame(f).ok())
        .filter(|(_, _, ip)| pred(ip))
        .count()
}

/// Whether no unicast IPv4 frame is among `frames` (the lab's hosts and bridge send IPv6,
/// ARP and IGMP of their own).
pub fn no_ipv4(frames: &[Vec<u8>]) -> bool {
    let ipv4: Vec<_> = frames
        .iter()
        .filter_map(|f| parse_frame(f).ok())
        .filter(|(_, _, ip)| !ip.header.dst.is_multicast())
        .collect();
    if !ipv4.is_empty() {
        eprintln!("IPv4 frames: {ipv4:?}");
    }
    ipv4.is_empty()
}
