//! The load generator: whole Ethernet frames through an AF_PACKET TX ring (TPACKET_V2) with
//! `PACKET_QDISC_BYPASS`, the way trafgen sends. Frames are copied into a ring shared with
//! the kernel and one `send(2)` hands a batch of hundreds over, so a packet costs the
//! generator a 60-byte copy and a share of a system call; the kernel's transmit path (and,
//! on veth, the whole receive path behind it) is what the CPU spends its time on.
//!
//! Each frame goes with a `virtio_net_hdr` (`PACKET_VNET_HDR`) whose `hdr_len` asks the
//! kernel to copy the frame's first [`LINEAR_BYTES`] into the skb's linear part: without it
//! the ring leaves everything after the Ethernet header in the ring's pages, and every hop
//! that reads or writes the IP or L4 header first pulls it (a copy) and, across a namespace,
//! copies the pages. A socket's small packets, and a driver's, arrive linear; so do these.
//!
//! One thread per requested CPU, each pinned, each with its own socket and ring; the flows
//! are dealt out among the threads. Every thread stops at its deadline whatever happens.

use std::{
    ffi::CString,
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    ptr::NonNull,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering, fence},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;

use netns_user::sys::netns::{self, Background, NetnsError};

/// Bytes of the TPACKET_V2 frame header before the packet data (TPACKET_ALIGN(32)).
const DATA_OFF: usize = 32;
/// Frames in each thread's ring.
const RING_FRAMES: usize = 4096;
/// Frames handed to the kernel per send(2).
const BATCH: usize = 512;
/// `struct virtio_net_hdr` (no GSO, no checksum offload), before each frame.
const VNET_HDR: usize = 10;
/// How much of each frame goes into the skb's linear part: a small frame whole, a large
/// one's headers.
const LINEAR_BYTES: usize = 128;

/// The `virtio_net_hdr` of a frame of `len` bytes: only `hdr_len` set (little-endian, as
/// the kernel reads it on this little-endian machine's legacy virtio layout).
fn vnet_hdr(len: usize) -> [u8; VNET_HDR] {
    let hdr_len = (len.min(LINEAR_BYTES) as u16).to_le_bytes();
    [0, 0, hdr_len[0], hdr_len[1], 0, 0, 0, 0, 0, 0]
}

/// What to send, from where.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Interface to send by, in the sender's namespace.
    pub ifname: String,
    /// One frame per flow, sent in turn.
    pub frames: Vec<Bytes>,
    /// Sending threads; thread k is pinned to CPU k (modulo the CPUs there are).
    pub threads: usize,
    /// The longest the threads run, however the caller fares.
    pub max_duration: Duration,
}

/// Generator threads at work.
pub struct Running {
    threads: Vec<Background<io::Result<()>>>,
    sent: Arc<AtomicU64>,
}

impl Running {
    /// Frames handed to the kernel so far, all threads together.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops every thread and returns the frames sent, or the first thread's error.
    pub fn stop(self) -> io::Result<u64> {
        let sent = self.sent.clone();
        for t in self.threads {
            match t.stop() {
                Ok(r) => r?,
                Err(e) => return Err(io::Error::other(e)),
            }
        }
        Ok(sent.load(Ordering::Relaxed))
    }
}

/// Starts the generator's threads in namespace `ns`; returns once every one has its ring.
pub fn start(ns: &str, plan: &Plan) -> Result<Running, NetnsError> {
    let threads = plan.threads.max(1);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sent = Arc::new(AtomicU64::new(0));
    let mut running = Running {
        threads: Vec::new(),
        sent: sent.clone(),
    };
    for k in 0..threads {
        // Thread k sends flows k, k + threads, ...; with fewer flows than threads they all
        // send every flow (several CPUs on one flow is a case worth measuring too).
        let frames: Vec<Bytes> = if plan.frames.len() >= threads {
            plan.frames.iter().skip(k).step_by(threads).cloned().collect()
        } else {
            plan.frames.clone()
        };
        let (ifname, sent, cpu, max) = (plan.ifname.clone(), sent.clone(), k % cpus, plan.max_duration);
        let t = netns::spawn_in(ns, move |stop, ready| {
            pin_to_cpu(cpu);
            let mut ring = TxRing::open(&ifname, frames.iter().map(|f| f.len()).max().unwrap_or(60))?;
            ready();
            ring.send_until(&frames, stop, Instant::now() + max, &sent)
        })?;
        running.threads.push(t);
    }
    Ok(running)
}

/// Keeps this thread on `cpu`: a veth transmit runs the whole path of the packet on the
/// sender's CPU, so a thread that migrates mid-run adds noise that is not the router's.
pub fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// An AF_PACKET socket with its mapped TX ring.
struct TxRing {
    sock: OwnedFd,
    map: NonNull<u8>,
    map_len: usize,
    frame_size: usize,
    next: usize,
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // Safety: `value` is a live T of the size given.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
}

impl TxRing {
    /// Opens a TX ring on `ifname` (in this thread's namespace) for frames up to `max_len`.
    fn open(ifname: &str, max_len: usize) -> io::Result<TxRing> {
        let name = CString::new(ifname).map_err(io::Error::other)?;
        // Safety: a plain C call on a valid, NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // Protocol 0: the socket only sends; it never gets a copy of received packets.
        // Safety: plain socket(2); the descriptor is owned at once.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        check(fd)?;
        // Safety: fd is a fresh descriptor that nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        setsockopt(
            &sock,
            libc::SOL_PACKET,
            libc::PACKET_VERSION,
            &libc::tpacket_versions::TPACKET_V2,
        )?;
        setsockopt(
            &sock,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            &1 as &libc::c_int,
        )?;
        // Before the ring: the kernel refuses it once a ring is set up.
        setsockopt(&sock, libc::SOL_PACKET, libc::PACKET_VNET_HDR, &1 as &libc::c_int)?;
        // A send(2) that waits for its frames' completion must not wait for ever.
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        setsockopt(&sock, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &timeout)?;
        let frame_size = (DATA_OFF + VNET_HDR + max_len).next_power_of_two().max(128);
        let block_size = 1 << 16;
        let req = libc::tpacket_req {
            tp_block_size: block_size as u32,
            tp_block_nr: (RING_FRAMES * frame_size / block_size) as u32,
            tp_frame_size: frame_size as u32,
            tp_frame_nr: RING_FRAMES as u32,
        };
        setsockopt(&sock, libc::SOL_PACKET, libc::PACKET_TX_RING, &req)?;
        let map_len = RING_FRAMES * frame_size;
        // Safety: maps the ring the socket just set up; checked for MAP_FAILED below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                sock.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ring = TxRing {
            sock,
            map: NonNull::new(map.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?,
            map_len,
            frame_size,
            next: 0,
        };
        // Safety: an all-zero sockaddr_ll is valid; the fields that matter are set.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        // Safety: sll is a valid sockaddr_ll of the size given.
        check(unsafe {
            libc::bind(
                ring.sock.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        Ok(ring)
    }

    /// The header of ring frame `i`.
    fn header(&self, i: usize) -> *mut libc::tpacket2_hdr {
        // Safety (of the pointer arithmetic): i < RING_FRAMES, so the frame lies in the map.
        unsafe { self.map.as_ptr().add(i * self.frame_size).cast() }
    }

    /// Sends `frames` in turn until `stop` or `deadline`, adding what it hands over to `sent`.
    fn send_until(
        &mut self,
        frames: &[Bytes],
        stop: &AtomicBool,
        deadline: Instant,
        sent: &AtomicU64,
    ) -> io::Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        let mut flow = 0;
        let mut batches: u32 = 0;
        loop {
            // The clock and the flag are read every 16 batches (every ~8,000 frames).
            if batches.is_multiple_of(16) && (stop.load(Ordering::Relaxed) || Instant::now() >= deadline) {
                return Ok(());
            }
            batches = batches.wrapping_add(1);
            let mut queued = 0;
            while queued < BATCH {
                let h = self.header(self.next);
                // Safety: h points at a frame header inside the ring; the kernel writes the
                // status word, so it is read volatile and ordered before the data writes.
                let status = unsafe { std::ptr::read_volatile(&(*h).tp_status) };
                fence(Ordering::Acquire);
                if status == libc::TP_STATUS_WRONG_FORMAT {
                    return Err(io::Error::other("the kernel refused a frame (wrong format)"));
                }
                if status != libc::TP_STATUS_AVAILABLE {
                    // Still owned by the kernel (its skb is in flight): hand over what we have.
                    break;
                }
                let f = &frames[flow];
                let vnet = vnet_hdr(f.len());
                // Safety: the frame slot is ours (status available) and frame_size >=
                // DATA_OFF + VNET_HDR + the longest frame, so the copies stay inside the slot.
                unsafe {
                    let data = h.cast::<u8>().add(DATA_OFF);
                    std::ptr::copy_nonoverlapping(vnet.as_ptr(), data, VNET_HDR);
                    std::ptr::copy_nonoverlapping(f.as_ptr(), data.add(VNET_HDR), f.len());
                    (*h).tp_len = (VNET_HDR + f.len()) as u32;
                    fence(Ordering::Release);
                    std::ptr::write_volatile(&mut (*h).tp_status, libc::TP_STATUS_SEND_REQUEST);
                }
                flow = (flow + 1) % frames.len();
                self.next = (self.next + 1) % RING_FRAMES;
                queued += 1;
            }
            // Safety: send(2) with no buffer: the kernel takes the frames marked in the ring.
            let rc = unsafe { libc::send(self.sock.as_raw_fd(), std::ptr::null(), 0, 0) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    // A full device queue, or the completion wait timing out: go on.
                    Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => {}
                    _ => return Err(e),
                }
            }
            sent.fetch_add(queued as u64, Ordering::Relaxed);
        }
    }
}

impl Drop for TxRing {
    fn drop(&mut self) {
        // Safety: unmaps exactly the region mapped in `open`, which nothing uses any more.
        unsafe {
            libc::munmap(self.map.as_ptr().cast(), self.map_len);
        }
    }
}

// Safety: the ring is only touched by the thread that owns the TxRing.
unsafe impl Send for TxRing {}
