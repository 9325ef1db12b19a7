//! Helpers for the integration tests: privilege checks that skip (or, under `CI=true`,
//! fail), unique lab prefixes, and a guard that takes a lab down however a test ends.

pub mod wire;

use std::path::PathBuf;

use netns_user::{
    config::{FastPath, LabConfig},
    lab::{self, Lab},
    nat::NatKind,
    sys::netns,
};

/// Whether this test can run: root is needed for namespaces and BPF. A test without it is
/// skipped with a reason, except under `cargo xtask test` (which sets `NETNS_NAT_NO_SKIP=1`)
/// or `CI=true`, where a skip is a failure: a suite that skipped has not passed.
pub fn privileged(test: &str) -> bool {
    if lab::require_root().is_ok() {
        return true;
    }
    let why = format!("{test}: needs root for network namespaces and BPF");
    if skips_fail() {
        panic!("{why}; under `cargo xtask test` or CI=true a skip is a failure");
    }
    eprintln!("SKIPPED {why}");
    false
}

/// Whether a skipped test must fail instead (see [`privileged`]).
pub fn skips_fail() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("NETNS_NAT_NO_SKIP").is_ok_and(|v| v == "1")
}

/// A prefix no other test (in this or another process) uses.
pub fn prefix(tag: &str) -> String {
    format!("nt{}{tag}-", std::process::id())
}

/// A NAT under test: the backend and, for the eBPF NAT, its fast-path mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nat {
    pub kind: NatKind,
    pub fast: FastPath,
}

impl Nat {
    pub const fn ebpf(fast: FastPath) -> Nat {
        Nat {
            kind: NatKind::Ebpf,
            fast,
        }
    }

    pub fn is_ebpf(self) -> bool {
        self.kind == NatKind::Ebpf
    }

    /// One letter for lab prefixes: i(ptables), n(ftables), e(BPF at TC), x(DP), o(ff), -.
    pub fn letter(self) -> char {
        match (self.kind, self.fast) {
            (NatKind::Ebpf, FastPath::Tc) => 'e',
            (NatKind::Ebpf, FastPath::Xdp) => 'x',
            (NatKind::Ebpf, FastPath::Off) => 'o',
            (k, _) => k.name().chars().next().unwrap_or('-'),
        }
    }
}

impl From<NatKind> for Nat {
    /// The backend with the lab's default fast path.
    fn from(kind: NatKind) -> Nat {
        Nat {
            kind,
            fast: FastPath::default(),
        }
    }
}

/// A lab that is taken down when the guard goes, even if the test panics.
pub struct LabGuard {
    pub lab: Lab,
}

impl LabGuard {
    pub fn up(tag: &str, nat: impl Into<Nat>) -> LabGuard {
        let nat = nat.into();
        let mut cfg = LabConfig::reference();
        if let Some(n) = cfg.nat.as_mut() {
            n.ebpf.fast_path = nat.fast;
        }
        Self::up_with(&cfg, tag, nat.kind)
    }

    pub fn up_with(cfg: &LabConfig, tag: &str, nat: NatKind) -> LabGuard {
        let prefix = prefix(tag);
        let lab =
            Lab::up(cfg, &prefix, nat, &mut |_| {}).unwrap_or_else(|e| panic!("lab {prefix} ({nat}): {e}"));
        LabGuard { lab }
    }

    pub fn prefix(&self) -> &str {
        self.lab.prefix()
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = lab::down(self.lab.prefix()) {
            eprintln!("cleanup of lab {}: {e}", self.lab.prefix());
        }
    }
}

/// Asserts that nothing of lab `prefix` is left: no namespace, pinned object or state.
pub fn assert_gone(prefix: &str) {
    let left: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let pins = netns_user::bpf::pin_dir(prefix);
    assert!(!pins.exists(), "pinned objects left behind in {}", pins.display());
    let state = PathBuf::from(lab::STATE_ROOT).join(prefix);
    assert!(!state.exists(), "lab state left behind in {}", state.display());
    assert!(!lab::list().iter().any(|p| p == prefix), "lab still listed");
}

/// The `netns-nat` binary (built by `cargo xtask test` before the tests run).
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NETNS_NAT_BIN") {
        return p.into();
    }
    // target/<profile>/deps/<test> -> target/<profile>/netns-nat
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("netns-nat"))
        .expect("target directory");
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build -p netns-user`, done by `cargo xtask test`)",
        path.display()
    );
    path
}

/// A UDP echo server in a lab namespace, on a thread of its own until dropped: answers
/// every datagram on its ports with the same bytes and remembers who sent what.
pub struct UdpEcho {
    seen: std::sync::Arc<std::sync::Mutex<Vec<(u16, std::net::SocketAddrV4, usize)>>>,
    _server: netns::Background<()>,
}

impl UdpEcho {
    /// Starts serving `ports` in namespace `ns`; returns once the sockets are bound.
    pub fn start(ns: &str, ports: &[u16]) -> UdpEcho {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (ports, log) = (ports.to_vec(), seen.clone());
        let server = netns::spawn_in(ns, move |stop, ready| serve_udp(&ports, stop, &log, ready))
            .expect("UDP echo server ready");
        UdpEcho {
            seen,
            _server: server,
        }
    }

    /// (server port, source as seen, datagram length) of everything received so far.
    pub fn seen(&self) -> Vec<(u16, std::net::SocketAddrV4, usize)> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve_udp(
    ports: &[u16],
    stop: &std::sync::atomic::AtomicBool,
    seen: &std::sync::Mutex<Vec<(u16, std::net::SocketAddrV4, usize)>>,
    ready: &dyn Fn(),
) {
    use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
    let socks: Vec<UdpSocket> = ports
        .iter()
        .map(|p| {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, *p)).expect("bind echo port");
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    ready();
    let mut buf = vec![0u8; 65536];
    // Bounded: a test that forgets to drop the server still ends.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && std::time::Instant::now() < deadline {
        let mut idle = true;
        for (s, port) in socks.iter().zip(ports) {
            while let Ok((n, SocketAddr::V4(peer))) = s.recv_from(&mut buf) {
                idle = false;
                seen.lock().unwrap().push((*port, peer, n));
                let _ = s.send_to(&buf[..n], peer);
            }
        }
        if idle {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

/// Runs `f` inside namespace `ns` and returns its result.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    netns::run_in(ns, f).expect("enter namespace")
}

/// Runs `program args` inside namespace `ns`; panics unless it succeeds. Returns stdout.
pub fn sh_in(ns: &str, program: &str, args: &[&str]) -> String {
    let out = netns::command(ns, program)
        .expect("namespace")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where long tests leave a one-line summary; `cargo xtask test` prints them at the end.
pub fn summaries_dir() -> PathBuf {
    std::env::temp_dir().join("netns-nat-test-summaries")
}

/// Leaves `text` as the summary of test `name` (see [`summaries_dir`]).
pub fn record_summary(name: &str, text: &str) {
    let dir = summaries_dir();
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{name}.txt")), format!("{text}\n"));
}

/// Runs a test function `fn name(mode: FastPath)` with the fast path at TC and in XDP, as
/// the tests `name::tc` and `name::xdp`.
#[macro_export]
macro_rules! modes {
    ($name:ident) => {
        mod $name {
            use netns_user::config::FastPath;
            #[test]
            fn tc() {
                super::$name(FastPath::Tc)
            }
            #[test]
            fn xdp() {
                super::$name(FastPath::Xdp)
            }
        }
    };
}

/// A counter of the kernel's SNMP tables (`/proc/net/snmp`, `/proc/net/netstat`) in `ns`,
/// by section ("Udp", "Ip", "TcpExt" ...) and name.
pub fn snmp(ns: &str, section: &str, field: &str) -> u64 {
    let (section, field) = (format!("{section}:"), field.to_owned());
    in_ns(ns, move || {
        for file in ["/proc/thread-self/net/snmp", "/proc/thread-self/net/netstat"] {
            let text = std::fs::read_to_string(file).unwrap();
            let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&section)).collect();
            if let [names, values] = lines[..] {
                let names: Vec<&str> = names.split_whitespace().collect();
                let values: Vec<&str> = values.split_whitespace().collect();
                if let Some(i) = names.iter().position(|n| *n == field) {
                    return values[i].parse().unwrap();
                }
            }
        }
        panic!("no SNMP counter {section} {field}");
    })
}

/// Runs the `netns-nat` binary with `args`.
pub fn netns_nat(args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin())
        .args(args)
        .output()
        .expect("netns-nat runs")
}

/// Runs `netns-nat args`, which must succeed: its (stdout, stderr).
pub fn netns_nat_ok(args: &[&str]) -> (String, String) {
    let out = netns_nat(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `netns-nat args`, which must fail with an error that says `why`.
pub fn netns_nat_refused(args: &[&str], why: &str) {
    let out = netns_nat(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && err.contains(why), "{args:?}: {err}");
}

/// Waits, polling every `every`, until `done()` holds; panics with `what()` after `within`.
pub fn wait_for(
    within: std::time::Duration,
    every: std::time::Duration,
    mut done: impl FnMut() -> bool,
    what: impl FnOnce() -> String,
) {
    let deadline = std::time::Instant::now() + within;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{}", what());
        std::thread::sleep(every);
    }
}

/// Waits until process `pid` is gone (reaping it if it is this process's child); panics
/// with `what` after `within`.
pub fn wait_gone(pid: i32, within: std::time::Duration, what: &str) {
    let pid = nix::unistd::Pid::from_raw(pid);
    wait_for(
        within,
        std::time::Duration::from_millis(20),
        || {
            let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
            std::fs::metadata(format!("/proc/{pid}")).is_err()
        },
        || what.to_owned(),
    );
}

/// A TCP echo server on `port` in namespace `ns`, for the connections of one test (its
/// thread ends with the test process).
pub fn tcp_echo_server(ns: &str, port: u16) -> std::thread::JoinHandle<()> {
    use std::io::{Read, Write};
    let listener = in_ns(ns, || {
        std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port)).expect("bind the echo port")
    });
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    })
}

/// How much counter `name` moved from `before` to `after` (two [`nat_counters`] readings).
pub fn counter_moved(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    name: &str,
) -> u64 {
    after[name] - before[name]
}

/// Lab `prefix`'s flow and mapping tables as stored (expired entries included).
pub fn raw_tables(prefix: &str) -> Result<netns_user::bpf::RawTables, netns_user::bpf::EbpfError> {
    netns_user::bpf::NatMaps::open(prefix)?.tables()
}

/// Adds an nftables filter on the forward hook of namespace `ns` (table `ip userfw`, as a
/// user's own firewall would be) that drops UDP datagrams to `port` longer than 100 bytes.
pub fn add_forward_filter(ns: &str, port: u16) {
    let nft = |args: &[&str]| sh_in(ns, "nft", args);
    nft(&["add", "table", "ip", "userfw"]);
    nft(&["add chain ip userfw filter_fwd { type filter hook forward priority 0; policy accept; }"]);
    let port = port.to_string();
    nft(&[
        "add",
        "rule",
        "ip",
        "userfw",
        "filter_fwd",
        "udp",
        "dport",
        &port,
        "ip",
        "length",
        "gt",
        "100",
        "drop",
    ]);
}

/// The eBPF NAT's counters of lab `prefix`, by name.
pub fn nat_counters(prefix: &str) -> std::collections::BTreeMap<String, u64> {
    netns_user::ops::conntrack::stats(prefix)
        .expect("the NAT's counters")
        .counters
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}
