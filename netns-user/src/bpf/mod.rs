//! The embedded eBPF object: loading it into a lab's router, attaching it, pinning it per
//! lab, and reading what it counted.

pub mod maintain;
mod maps;

pub use maps::{NatMaps, RawTables};

use std::{
    fs, io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, Map, MapData, PerCpuArray},
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, links::FdLink},
};
use netns_common::{
    counters::Counter,
    fwd::{FAST_XDP, FastConfig},
    layout::LAYOUT_STAMP,
    names::{
        MAP_NAT_BINDINGS, MAP_NAT_DEVMAP, MAP_NAT_FLOWS, MAP_NAT_LAYOUT, MAP_UPLINK_COUNTERS, NAT_MAPS,
        PIN_NAT_MAINTAIN, PIN_ROOT, PROG_NAT_EGRESS, PROG_NAT_FAST_OUT, PROG_NAT_HAIRPIN, PROG_NAT_INGRESS,
        PROG_NAT_MAINTAIN, PROG_ROUTE_FAST, PROG_UPLINK_COUNT_EGRESS, PROG_UPLINK_COUNT_INGRESS,
        PROG_XDP_FAST_IN, PROG_XDP_FAST_OUT, PROG_XDP_ROUTE_FAST, full_program_name,
    },
    nat::NatConfig,
};
use nix::{
    fcntl::{Flock, FlockArg},
    mount::{MntFlags, MsFlags, mount, umount2},
};
use serde::Serialize;

use crate::{
    sys::netlink,
    sys::netns::{self, NetnsError},
};

/// The programs, built by `build.rs` for bpfel-unknown-none.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netns-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error(
        "this binary was built without its eBPF programs (AYA_BUILD_SKIP); rebuild with `cargo xtask build`"
    )]
    NotBuilt,
    #[error(
        "cannot load the eBPF programs: {0}\n(needs root with CAP_BPF and CAP_NET_ADMIN, and a \
         kernel with BPF, BTF and TCX: Linux >= 6.6)"
    )]
    Load(#[source] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error(
        "the kernel's verifier refused eBPF program {name} ({reason}); the end of its log:\n{tail}\n\
         (the whole log, {lines} lines: {path})"
    )]
    Verifier {
        name: &'static str,
        reason: io::Error,
        tail: String,
        lines: usize,
        path: String,
    },
    #[error("cannot attach {name} to {iface}: {source}")]
    Attach {
        name: &'static str,
        iface: String,
        source: aya::programs::ProgramError,
    },
    #[error("eBPF object has no {0}")]
    Missing(&'static str),
    #[error("pinning {path}: {detail}")]
    Pin { path: PathBuf, detail: String },
    #[error("map {path}: {source}")]
    Map {
        path: PathBuf,
        source: aya::maps::MapError,
    },
    #[error("bpffs: {0}")]
    Bpffs(String),
    #[error("map {name}: {detail}")]
    MapSet { name: &'static str, detail: String },
    #[error("BPF statistics: {0}")]
    Stats(String),
    #[error(
        "the pinned maps in {dir} were made by a build with another layout (stamp {pinned:#018x}, \
         this build {build:#018x}): this build would misread them, so it is not swapped in; \
         recreate the lab (`netns-nat down` then `up`) to run this build"
    )]
    LayoutMismatch { dir: PathBuf, pinned: u64, build: u64 },
    #[error(
        "the pinned maps in {0} carry no layout stamp (made by an older netns-nat): recreate the \
         lab (`netns-nat down` then `up`) to run this build"
    )]
    NoLayoutStamp(PathBuf),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Netlink(#[from] Box<netlink::NetlinkError>),
}

impl From<netlink::NetlinkError> for EbpfError {
    fn from(e: netlink::NetlinkError) -> Self {
        EbpfError::Netlink(Box::new(e))
    }
}

type Result<T, E = EbpfError> = std::result::Result<T, E>;

/// Where a lab pins its objects.
pub fn pin_dir(prefix: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(prefix)
}

/// `BPF_NOEXIST`: a map update that inserts only (the kernel's flag; one name for every
/// user-space insert that must not replace an entry).
pub const BPF_NOEXIST: u64 = 1;

/// Marker left when netns-nat mounted bpffs itself, so the last lab's `down` can leave the
/// machine as it found it.
const BPFFS_MARKER: &str = "/run/netns-nat/bpffs-mounted-by-netns-nat";
const BPFFS: &str = "/sys/fs/bpf";

fn bpffs_mounted() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/self/mounts").map_err(|e| EbpfError::Bpffs(e.to_string()))?;
    Ok(mounts.lines().any(|l| {
        let mut f = l.split_whitespace().skip(1);
        f.next() == Some(BPFFS) && f.next() == Some("bpf")
    }))
}

/// Serialises changes to the shared parts of the pin tree (the root directory, the bpffs
/// mount) between labs, in this process and others.
fn pins_lock() -> Result<Flock<fs::File>> {
    let path = Path::new(BPFFS_MARKER).with_file_name(".pins.lock");
    let fail = |detail: String| EbpfError::Bpffs(format!("lock {}: {detail}", path.display()));
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    }
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| fail(e.to_string()))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| fail(e.to_string()))
}

/// Mounts bpffs at /sys/fs/bpf unless it is there already (new machines lack it).
pub fn ensure_bpffs() -> Result<()> {
    if !bpffs_mounted()? {
        fs::create_dir_all(BPFFS).map_err(|e| EbpfError::Bpffs(e.to_string()))?;
        mount(Some("bpffs"), BPFFS, Some("bpf"), MsFlags::empty(), None::<&str>)
            .map_err(|e| EbpfError::Bpffs(format!("cannot mount bpffs at {BPFFS}: {e}")))?;
        if let Some(dir) = Path::new(BPFFS_MARKER).parent() {
            let _ = fs::create_dir_all(dir);
        }
        let _ = fs::write(BPFFS_MARKER, b"");
    }
    Ok(())
}

/// Unmounts the bpffs that netns-nat mounted once no lab pins anything in it. Entries the
/// kernel itself puts there (`maps.debug`, `progs.debug` of bpf_preload) do not count.
fn release_bpffs() {
    if !Path::new(BPFFS_MARKER).exists() {
        return;
    }
    let in_use = fs::read_dir(BPFFS)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| !matches!(e.file_name().to_str(), Some("maps.debug" | "progs.debug")))
        })
        .unwrap_or(true);
    if !in_use && umount2(BPFFS, MntFlags::MNT_DETACH).is_ok() {
        let _ = fs::remove_file(BPFFS_MARKER);
    }
}

/// Loads the counters, attaches them to `uplink` in namespace `ns` (TCX ingress and egress)
/// and pins links and map under `pin_dir(prefix)`. A failure detaches whatever it attached.
pub fn attach_uplink_counters(ns: &str, uplink: &str, prefix: &str) -> Result<()> {
    let dir = prepare_pin_dir(prefix)?;
    let res = netns::run_in(ns, || {
        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &LOG_OFF, false)
            .load(object()?)
            .map_err(EbpfError::Load)?;
        let links = attach_tcx(
            &mut ebpf,
            &[
                (PROG_UPLINK_COUNT_INGRESS, uplink, TcAttachType::Ingress),
                (PROG_UPLINK_COUNT_EGRESS, uplink, TcAttachType::Egress),
            ],
        )?;
        pin(&ebpf, &dir, &[MAP_UPLINK_COUNTERS], links)
    })?;
    if res.is_err() {
        let _ = remove_pins(prefix);
    }
    res
}

/// A port forward as the eBPF NAT holds it: a static binding (one pair of entries).
pub use netns_common::translate::pair::StaticBinding;

/// What the eBPF NAT is loaded with.
#[derive(Clone, Debug)]
pub struct NatLoad {
    pub config: NatConfig,
    pub forwards: Vec<StaticBinding>,
    pub flows: u32,
    pub bindings: u32,
    /// The fast path: where it takes packets (bridge ports) and its configuration (the
    /// uplink's ifindex and the bridge's MAC are filled in here), if it is on.
    pub fast: Option<(Vec<String>, FastConfig)>,
    /// The programs' diagnostics from this aya-log level up (0: off).
    pub log_level: u8,
}

/// The aya-log level of loads that are not a lab's NAT (counters, the benchmark's
/// programs): off.
pub const LOG_OFF: u8 = 0;

/// A map error of the map pinned at `path`.
pub fn map_err_at(path: &Path) -> impl Fn(aya::maps::MapError) -> EbpfError + '_ {
    move |source| EbpfError::Map {
        path: path.to_owned(),
        source,
    }
}

pub fn map_err(path: &str) -> impl Fn(aya::maps::MapError) -> EbpfError + '_ {
    move |source| EbpfError::Map {
        path: path.into(),
        source,
    }
}

/// Loads the NAT programs, fills their configuration and port forwards, attaches them (TC
/// egress and ingress on `uplink`, TC ingress on each internal interface for hairpinning)
/// in namespace `ns`, and pins maps and links under `pin_dir(prefix)`. A failure detaches
/// whatever it attached and leaves no pin.
pub fn attach_nat(ns: &str, uplink: &str, internal: &[String], prefix: &str, load: &NatLoad) -> Result<()> {
    in_pin_dir(ns, prefix, |dir| {
        let mut ebpf = load_nat_object(dir, load.log_level, load.flows, load.bindings)?;
        // The maps are pinned first and filled through the one handle on them; nothing runs
        // them before the programs are attached below.
        let mut maps = pin_nat_maps(&ebpf, prefix)?;
        maps.set_config(load.config)?;
        maps.install_forwards(load.config.ext_addr, &load.forwards)?;
        maps.set_layout(LAYOUT_STAMP)?;
        if let Some((_, fast)) = &load.fast {
            maps.set_fast_config(*fast)?;
        }
        let mut hooks = vec![
            (PROG_NAT_EGRESS, uplink, TcAttachType::Egress),
            (PROG_NAT_INGRESS, uplink, TcAttachType::Ingress),
        ];
        for iface in internal {
            hooks.push((PROG_NAT_HAIRPIN, iface.as_str(), TcAttachType::Ingress));
        }
        let mut xdp_hooks = Vec::new();
        if let Some((ports, fast)) = &load.fast {
            if fast.mode == FAST_XDP {
                maps.fill_devmap(ports.iter().map(String::as_str).chain([uplink]))?;
                xdp_hooks.extend(ports.iter().map(|p| (PROG_XDP_FAST_OUT, p.as_str())));
                xdp_hooks.push((PROG_XDP_FAST_IN, uplink));
            } else {
                hooks.extend(
                    ports
                        .iter()
                        .map(|p| (PROG_NAT_FAST_OUT, p.as_str(), TcAttachType::Ingress)),
                );
            }
        }
        let mut links = attach_tcx(&mut ebpf, &hooks)?;
        // XDP after TC: by the time frames skip the stack, the slow path is in place.
        links.extend(attach_xdp(&mut ebpf, &xdp_hooks)?);
        pin_links(dir, links)?;
        pin_maintenance(&mut ebpf, dir)
    })
}

/// Runs `f` in namespace `ns` with lab `prefix`'s pin directory ready; if it fails, nothing
/// stays pinned (the links it attached go with their pins).
fn in_pin_dir(ns: &str, prefix: &str, f: impl FnOnce(&Path) -> Result<()> + Send) -> Result<()> {
    let dir = prepare_pin_dir(prefix)?;
    let res = netns::run_in(ns, || f(&dir))?;
    if res.is_err() {
        let _ = remove_pins(prefix);
    }
    res
}

/// Loads the NAT's object with its diagnostics from `log_level` up and its tables sized
/// `flows` and `bindings`. The uplink's counters are the ones `attach_uplink_counters`
/// pinned in `dir`: the fast path counts there what skips the uplink's own TC hook.
fn load_nat_object(dir: &Path, log_level: u8, flows: u32, bindings: u32) -> Result<Ebpf> {
    let counters = dir.join(MAP_UPLINK_COUNTERS);
    EbpfLoader::new()
        .override_global(aya_log::LEVEL, &log_level, false)
        .map_max_entries(MAP_NAT_FLOWS, flows)
        .map_max_entries(MAP_NAT_BINDINGS, bindings)
        .map_pin_path(MAP_UPLINK_COUNTERS, counters.as_path())
        .load(object()?)
        .map_err(EbpfError::Load)
}

/// Loads the object for plain forwarding (`--nat none` with a fast path): no NAT, only the
/// routing program at the ingress of `ports` and `uplink` (TCX or XDP, as `fast.mode`
/// says), with the fast path's configuration `fast`; maps and links pinned under
/// `pin_dir(prefix)` (the counters, the port table and the FDB are the NAT's own maps, so
/// `stats` reads them as for the NAT). A failure detaches whatever it attached and leaves
/// no pin.
pub fn attach_router(ns: &str, uplink: &str, ports: &[String], prefix: &str, fast: FastConfig) -> Result<()> {
    in_pin_dir(ns, prefix, |dir| {
        // The NAT's tables are not used: small ones.
        let mut ebpf = load_nat_object(dir, LOG_OFF, ROUTER_TABLE_ENTRIES, ROUTER_TABLE_ENTRIES)?;
        let mut maps = pin_nat_maps(&ebpf, prefix)?;
        maps.set_layout(LAYOUT_STAMP)?;
        maps.set_fast_config(fast)?;
        let all = ports.iter().map(String::as_str).chain([uplink]);
        let links = if fast.mode == FAST_XDP {
            maps.fill_devmap(all.clone())?;
            let hooks: Vec<_> = all.map(|i| (PROG_XDP_ROUTE_FAST, i)).collect();
            attach_xdp(&mut ebpf, &hooks)?
        } else {
            let hooks: Vec<_> = all.map(|i| (PROG_ROUTE_FAST, i, TcAttachType::Ingress)).collect();
            attach_tcx(&mut ebpf, &hooks)?
        };
        pin_links(dir, links)?;
        // The agent's sweep runs it (on empty tables): one agent, whatever the dataplane.
        pin_maintenance(&mut ebpf, dir)
    })
}

/// The size of the NAT's tables where no NAT runs (plain forwarding).
const ROUTER_TABLE_ENTRIES: u32 = 64;

/// Pins a fresh load's NAT maps under `pin_dir(prefix)` and opens them: how a new NAT's
/// maps are filled, a lab's as the test kit's.
pub fn pin_nat_maps(ebpf: &Ebpf, prefix: &str) -> Result<NatMaps> {
    let dir = prepare_pin_dir(prefix)?;
    pin_maps(ebpf, &dir, NAT_MAPS)?;
    NatMaps::open(prefix)
}

/// Loads the maintenance program (`bpf::maintain`: never attached, run on demand) and pins
/// it in `dir`, over the pin of an earlier build (an upgrade) if there is one: the new one is
/// pinned beside it and renamed over it, so the path never names nothing.
fn pin_maintenance(ebpf: &mut Ebpf, dir: &Path) -> Result<()> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(PROG_NAT_MAINTAIN)
        .ok_or(EbpfError::Missing(PROG_NAT_MAINTAIN))?
        .try_into()
        .map_err(|source| program_error(PROG_NAT_MAINTAIN, source))?;
    prog.load()
        .map_err(|source| program_error(PROG_NAT_MAINTAIN, source))?;
    let path = dir.join(PIN_NAT_MAINTAIN);
    // (bpffs refuses a dot in a name.)
    let fresh = dir.join(format!("{PIN_NAT_MAINTAIN}_new"));
    let fail = |path: &Path, detail: String| EbpfError::Pin {
        path: path.to_owned(),
        detail,
    };
    let _ = fs::remove_file(&fresh);
    prog.pin(&fresh).map_err(|e| fail(&fresh, e.to_string()))?;
    fs::rename(&fresh, &path).map_err(|e| fail(&path, e.to_string()))
}

/// The programs whose links a lab pins, longest name first (a link's pin is named
/// `link_<program>_<interface>_<hook>`, and interface names may hold underscores).
const PINNED_PROGRAMS: &[&str] = &[
    PROG_UPLINK_COUNT_INGRESS,
    PROG_UPLINK_COUNT_EGRESS,
    PROG_XDP_ROUTE_FAST,
    PROG_NAT_FAST_OUT,
    PROG_XDP_FAST_OUT,
    PROG_ROUTE_FAST,
    PROG_NAT_HAIRPIN,
    PROG_NAT_INGRESS,
    PROG_XDP_FAST_IN,
    PROG_NAT_EGRESS,
];

/// The layout stamp of lab `prefix`'s pinned maps.
pub fn pinned_layout(prefix: &str) -> Result<u64> {
    let dir = pin_dir(prefix);
    let path = dir.join(MAP_NAT_LAYOUT);
    if !path.exists() {
        return Err(EbpfError::NoLayoutStamp(dir));
    }
    let stamp: Array<MapData, u64> =
        Array::try_from(pinned_map(prefix, MAP_NAT_LAYOUT)?).map_err(|source| EbpfError::Map {
            path: path.clone(),
            source,
        })?;
    stamp.get(&0, 0).map_err(|source| EbpfError::Map { path, source })
}

/// The id of the program behind lab `prefix`'s pinned `nat_egress` link: the one eBPF
/// object of the NAT, whose log ring buffer the agent reads.
pub fn nat_program_id(prefix: &str) -> Result<u32> {
    let dir = pin_dir(prefix);
    let fail = |detail: String| EbpfError::Pin {
        path: dir.clone(),
        detail,
    };
    let entry = fs::read_dir(&dir)
        .map_err(|e| fail(e.to_string()))?
        .filter_map(|e| e.ok())
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("link_{PROG_NAT_EGRESS}_"))
        })
        .ok_or_else(|| fail(format!("no pinned link of {PROG_NAT_EGRESS}")))?;
    let link: FdLink = aya::programs::links::PinnedLink::from_pin(entry.path())
        .map_err(|e| fail(e.to_string()))?
        .into();
    Ok(link.info().map_err(|e| fail(e.to_string()))?.program_id())
}

/// What an upgrade swapped.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Upgraded {
    /// (link pin, old program id, new program id).
    pub links: Vec<(String, u32, u32)>,
}

/// Swaps this build's programs into lab `prefix`'s pinned links (BPF_LINK_UPDATE: each hook
/// changes program atomically, no packet sees none), reusing every pinned map as it is, so
/// flows, mappings, forwards, counters and the running configuration carry over. Refused,
/// with nothing changed, when the pinned maps' layout stamp is not this build's.
pub fn upgrade_nat(ns: &str, prefix: &str, log_level: u8) -> Result<Upgraded> {
    let dir = pin_dir(prefix);
    let pinned = pinned_layout(prefix)?;
    if pinned != LAYOUT_STAMP {
        return Err(EbpfError::LayoutMismatch {
            dir,
            pinned,
            build: LAYOUT_STAMP,
        });
    }
    // Every link is found before anything is swapped, so that a surprise leaves all as it was.
    let mut found: Vec<(String, &'static str)> = Vec::new();
    let entries = fs::read_dir(&dir).map_err(|e| EbpfError::Pin {
        path: dir.clone(),
        detail: e.to_string(),
    })?;
    for entry in entries.filter_map(|e| e.ok()) {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix("link_") else {
            continue;
        };
        let prog = PINNED_PROGRAMS
            .iter()
            .find(|p| rest.strip_prefix(**p).is_some_and(|r| r.starts_with('_')))
            .ok_or_else(|| EbpfError::Pin {
                path: entry.path(),
                detail: "a link of no program this build knows".into(),
            })?;
        found.push((file, prog));
    }
    found.sort();
    netns::run_in(ns, || {
        let mut loader = EbpfLoader::new();
        loader.override_global(aya_log::LEVEL, &log_level, false);
        let paths: Vec<(&str, PathBuf)> = NAT_MAPS
            .iter()
            .chain(&[MAP_UPLINK_COUNTERS])
            .map(|m| (*m, dir.join(m)))
            .collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object()?).map_err(EbpfError::Load)?;
        // Every program loaded (verified) and every link opened before the first swap, so
        // that a refusal leaves all hooks on the old build.
        let mut links = Vec::new();
        for (file, name) in &found {
            let path = dir.join(file);
            let pin_err = |detail: String| EbpfError::Pin {
                path: path.clone(),
                detail,
            };
            let link: FdLink = aya::programs::links::PinnedLink::from_pin(&path)
                .map_err(|e| pin_err(e.to_string()))?
                .into();
            let old = link.info().map_err(|e| pin_err(e.to_string()))?.program_id();
            let prog = ebpf.program_mut(name).ok_or(EbpfError::Missing(name))?;
            // One program may serve several links: loaded once.
            match prog {
                aya::programs::Program::Xdp(p) if p.fd().is_err() => {
                    p.load().map_err(|source| program_error(name, source))?
                }
                aya::programs::Program::SchedClassifier(p) if p.fd().is_err() => {
                    p.load().map_err(|source| program_error(name, source))?
                }
                aya::programs::Program::Xdp(_) | aya::programs::Program::SchedClassifier(_) => {}
                _ => return Err(EbpfError::Missing(name)),
            }
            links.push((file, *name, path, link, old));
        }
        let mut out = Upgraded::default();
        for (file, name, path, link, old) in links {
            let pin_err = |detail: String| EbpfError::Pin {
                path: path.clone(),
                detail,
            };
            let prog = ebpf.program_mut(name).ok_or(EbpfError::Missing(name))?;
            let new = if file.ends_with("_xdp") {
                let prog: &mut Xdp = prog.try_into().map_err(|source| program_error(name, source))?;
                let link = aya::programs::xdp::XdpLink::try_from(link).map_err(|e| pin_err(e.to_string()))?;
                prog.attach_to_link(link)
                    .map_err(|source| program_error(name, source))?;
                prog.info().map_err(|source| program_error(name, source))?.id()
            } else {
                let prog: &mut SchedClassifier =
                    prog.try_into().map_err(|source| program_error(name, source))?;
                let link = aya::programs::tc::SchedClassifierLink::try_from(link)
                    .map_err(|e| pin_err(e.to_string()))?;
                prog.attach_to_link(link)
                    .map_err(|source| program_error(name, source))?;
                prog.info().map_err(|source| program_error(name, source))?.id()
            };
            out.links.push((file.clone(), old, new));
        }
        pin_maintenance(&mut ebpf, &dir)?;
        Ok(out)
    })?
}

/// An error of program `name`. A verifier refusal is made readable: its log's last lines
/// (where the verifier says what it stopped at and why) in the message, the whole log,
/// often thousands of lines, in a file.
pub fn program_error(name: &'static str, source: aya::programs::ProgramError) -> EbpfError {
    match source {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } if !verifier_log.to_string().trim().is_empty() => {
            let log = verifier_log.to_string();
            // A new file each time (two loads never share one, and no existing path is
            // followed or overwritten).
            let file = std::env::temp_dir().join(format!(
                "netns-nat-verifier-{name}-{}-{}.log",
                std::process::id(),
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            ));
            let written = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&file)
                .and_then(|mut f| io::Write::write_all(&mut f, log.as_bytes()));
            let path = match written {
                Ok(()) => file.display().to_string(),
                Err(e) => format!("not written to {}: {e}", file.display()),
            };
            let (tail, lines) = log_tail(&log, VERIFIER_TAIL);
            EbpfError::Verifier {
                name,
                reason: io_error,
                tail,
                lines,
                path,
            }
        }
        source => EbpfError::Program { name, source },
    }
}

/// Lines of a verifier log shown in an error.
const VERIFIER_TAIL: usize = 12;

/// The last `n` non-empty lines of a verifier log, indented, and how many lines it has.
pub fn log_tail(log: &str, n: usize) -> (String, usize) {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    (tail, lines.len())
}

/// The NAT's object, as built into this binary.
pub fn object() -> Result<&'static [u8]> {
    embedded(OBJECT)
}

/// An eBPF object a build script embedded: refused when the build skipped it
/// (`AYA_BUILD_SKIP` leaves it empty).
pub fn embedded(object: &'static [u8]) -> Result<&'static [u8]> {
    if object.is_empty() {
        Err(EbpfError::NotBuilt)
    } else {
        Ok(object)
    }
}

/// Creates the lab's pin directory. Under the lock, and once it exists, no other lab's
/// teardown removes the root or unmounts bpffs under it.
fn prepare_pin_dir(prefix: &str) -> Result<PathBuf> {
    let dir = pin_dir(prefix);
    let _lock = pins_lock()?;
    ensure_bpffs()?;
    let fail = |e: io::Error| EbpfError::Pin {
        path: dir.clone(),
        detail: e.to_string(),
    };
    fs::create_dir_all(&dir).map_err(fail)?;
    // Root's only: whoever opens a pinned map can change the NAT.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(fail)?;
    Ok(dir)
}

/// Loads (once) and attaches each program `name` of `ebpf` at TCX `hook` of `iface`, in the
/// current namespace; the links, named for pinning. The links are owned, so an early return
/// (a failed later attach) detaches the earlier ones.
pub fn attach_tcx(
    ebpf: &mut Ebpf,
    hooks: &[(&'static str, &str, TcAttachType)],
) -> Result<Vec<(String, FdLink)>> {
    let mut links = Vec::new();
    for &(name, iface, hook) in hooks {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(EbpfError::Missing(name))?
            .try_into()
            .map_err(|source| program_error(name, source))?;
        // One program may serve several interfaces: load it once.
        if prog.fd().is_err() {
            prog.load().map_err(|source| program_error(name, source))?;
        }
        let id = prog.attach(iface, hook).map_err(|source| EbpfError::Attach {
            name,
            iface: iface.to_owned(),
            source,
        })?;
        let link = prog.take_link(id).map_err(|source| program_error(name, source))?;
        let link: FdLink = link.try_into().map_err(|e| EbpfError::Pin {
            path: PathBuf::from(name),
            detail: format!("not a TCX link ({e}); a kernel >= 6.6 is needed"),
        })?;
        let hook = if hook == TcAttachType::Ingress {
            "ingress"
        } else {
            "egress"
        };
        links.push((format!("link_{name}_{iface}_{hook}"), link));
    }
    Ok(links)
}

/// Pins the named maps and the links in `dir`.
fn pin(ebpf: &Ebpf, dir: &Path, maps: &[&'static str], links: Vec<(String, FdLink)>) -> Result<()> {
    pin_maps(ebpf, dir, maps)?;
    pin_links(dir, links)
}

/// Pins the named maps in `dir`.
fn pin_maps(ebpf: &Ebpf, dir: &Path, maps: &[&'static str]) -> Result<()> {
    for &name in maps {
        let map = ebpf.map(name).ok_or(EbpfError::Missing(name))?;
        let path = dir.join(name);
        map.pin(&path).map_err(|e| EbpfError::Pin {
            path,
            detail: e.to_string(),
        })?;
    }
    Ok(())
}

/// Pins the links in `dir`.
fn pin_links(dir: &Path, links: Vec<(String, FdLink)>) -> Result<()> {
    for (name, link) in links {
        let path = dir.join(name);
        link.pin(&path).map_err(|e| EbpfError::Pin {
            path,
            detail: e.to_string(),
        })?;
    }
    Ok(())
}

/// Opens one of a lab's pinned maps.
pub fn pinned_map(prefix: &str, name: &str) -> Result<Map> {
    let path = pin_dir(prefix).join(name);
    let fail = |source| EbpfError::Map {
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(fail)?;
    Map::from_map_data(data).map_err(fail)
}

/// Sums a pinned per-CPU u64 array over CPUs, slot by slot.
fn per_cpu_sums(prefix: &str, name: &str, slots: u32) -> Result<Vec<u64>> {
    let path = pin_dir(prefix).join(name);
    let fail = |source| EbpfError::Map {
        path: path.clone(),
        source,
    };
    let array: PerCpuArray<MapData, u64> = PerCpuArray::try_from(pinned_map(prefix, name)?).map_err(fail)?;
    (0..slots)
        .map(|i| Ok(array.get(&i, 0).map_err(fail)?.iter().sum()))
        .collect()
}

/// `bpf(2)` commands used directly: aya has no call for a link's explicit detach.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `bpf(cmd, attr)` with `attr` as the first bytes of a zeroed `union bpf_attr`.
fn bpf_cmd(cmd: libc::c_long, attr: &[u64]) -> io::Result<libc::c_long> {
    let mut buf = [0u64; 16];
    buf[..attr.len()].copy_from_slice(attr);
    // Safety: bpf(2) with a buffer of the size passed; the commands used read it only.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, buf.as_mut_ptr(), std::mem::size_of_val(&buf)) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Detaches the link pinned at `path` from its hook, now: unpinning only drops a reference,
/// and the kernel may release the link (and take the program off the hook) later.
fn detach_pinned_link(path: &Path) -> io::Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // union bpf_attr for BPF_OBJ_GET: pathname (a pointer), bpf_fd, file_flags.
    let fd = bpf_cmd(BPF_OBJ_GET, &[name.as_ptr() as u64])?;
    // Safety: a descriptor bpf(2) just returned, owned here from now on.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    // union bpf_attr for BPF_LINK_DETACH: link_fd.
    bpf_cmd(BPF_LINK_DETACH, &[u64::from(fd.as_raw_fd() as u32)]).map(|_| ())
}

/// Removes a lab's pinned objects, its links detached first (so that when this returns no
/// program of the lab is on any hook). Returns whether there was anything.
pub fn remove_pins(prefix: &str) -> io::Result<bool> {
    let dir = pin_dir(prefix);
    let _lock = pins_lock().map_err(io::Error::other)?;
    if let Ok(entries) = fs::read_dir(&dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("link_") {
                match detach_pinned_link(&e.path()) {
                    Ok(()) => {}
                    // A link whose interface (or namespace) is gone is detached already.
                    Err(err) if matches!(err.raw_os_error(), Some(libc::ENOLINK | libc::ENODEV)) => {}
                    Err(err) => return Err(io::Error::other(format!("{}: {err}", e.path().display()))),
                }
            }
        }
    }
    match fs::remove_dir_all(&dir) {
        Ok(()) => {
            // Leave the shared root, and bpffs, only when no other lab uses them.
            if fs::remove_dir(PIN_ROOT).is_ok() {
                release_bpffs();
            }
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Uplink counters summed over CPUs.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct UplinkCounters {
    pub ingress_packets: u64,
    pub ingress_bytes: u64,
    pub egress_packets: u64,
    pub egress_bytes: u64,
}

/// Reads a lab's pinned uplink counters.
pub fn read_uplink_counters(prefix: &str) -> Result<UplinkCounters> {
    let sums = per_cpu_sums(prefix, MAP_UPLINK_COUNTERS, Counter::COUNT)?;
    let at = |c: Counter| sums[c as usize];
    Ok(UplinkCounters {
        ingress_packets: at(Counter::IngressPackets),
        ingress_bytes: at(Counter::IngressBytes),
        egress_packets: at(Counter::EgressPackets),
        egress_bytes: at(Counter::EgressBytes),
    })
}

/// Puts `ifaces` (of the current namespace) in DEVMAP `d`, keyed by ifindex.
pub(crate) fn put_ifaces<'a, T: std::borrow::BorrowMut<MapData>>(
    d: &mut DevMapHash<T>,
    ifaces: impl Iterator<Item = &'a str>,
) -> Result<()> {
    for iface in ifaces {
        let fail = |detail: String| EbpfError::MapSet {
            name: MAP_NAT_DEVMAP,
            detail: format!("{iface}: {detail}"),
        };
        let name = std::ffi::CString::new(iface).map_err(|e| fail(e.to_string()))?;
        // Safety: a NUL-terminated name that outlives the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(fail(io::Error::last_os_error().to_string()));
        }
        d.insert(index, index, None, 0).map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
}

/// Attaches XDP programs (native mode) as links to pin, one per (program, interface).
pub fn attach_xdp(ebpf: &mut Ebpf, hooks: &[(&'static str, &str)]) -> Result<Vec<(String, FdLink)>> {
    let mut links = Vec::new();
    for &(name, iface) in hooks {
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or(EbpfError::Missing(name))?
            .try_into()
            .map_err(|source| program_error(name, source))?;
        if prog.fd().is_err() {
            prog.load().map_err(|source| program_error(name, source))?;
        }
        let id = prog
            .attach(iface, XdpMode::Driver)
            .map_err(|source| EbpfError::Attach {
                name,
                iface: iface.to_owned(),
                source,
            })?;
        let link = prog.take_link(id).map_err(|source| program_error(name, source))?;
        let link: FdLink = link.try_into().map_err(|e| EbpfError::Pin {
            path: PathBuf::from(name),
            detail: format!("not an XDP link ({e}); a kernel >= 5.9 is needed"),
        })?;
        links.push((format!("link_{name}_{iface}_xdp"), link));
    }
    Ok(links)
}

/// The kernel's BPF run-time statistics, on for as long as this lives (held as a file
/// descriptor, so nothing machine-wide stays switched on when the holder goes).
pub struct RunTimeStats {
    _fd: std::os::fd::OwnedFd,
}

pub fn enable_run_time_stats() -> Result<RunTimeStats> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map(|fd| RunTimeStats { _fd: fd })
        .map_err(|e| EbpfError::Stats(e.to_string()))
}

/// A BPF program attached in a namespace, with its cumulative run time and run count (both
/// advance only while run-time statistics are on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramRuns {
    /// `name@interface:hook`, e.g. `nat_egress@uplink:tcx-egress`.
    pub label: String,
    pub id: u32,
    pub run_time_ns: u64,
    pub run_count: u64,
}

fn program_name(p: &aya::programs::ProgramInfo) -> String {
    full_program_name(p.name_as_str().unwrap_or("?")).to_string()
}

/// Every BPF program attached to an interface of namespace `ns` (TCX both ways, XDP).
pub fn attached_programs(ns: &str) -> Result<Vec<ProgramRuns>> {
    let links = netlink::in_ns(ns, |r| async move { r.links().await })?;
    let xdp_ids: Vec<(String, u32)> = links
        .iter()
        .filter_map(|l| l.xdp_prog.map(|id| (l.name.clone(), id)))
        .collect();
    let mut out = netns::run_in(ns, || {
        let mut out = Vec::new();
        for l in &links {
            for (hook, attach) in [
                ("tcx-ingress", TcAttachType::Ingress),
                ("tcx-egress", TcAttachType::Egress),
            ] {
                let Ok((_, progs)) = SchedClassifier::query_tcx(&l.name, attach) else {
                    continue;
                };
                for p in progs {
                    out.push(ProgramRuns {
                        label: format!("{}@{}:{hook}", program_name(&p), l.name),
                        id: p.id(),
                        run_time_ns: p.run_time().as_nanos() as u64,
                        run_count: p.run_count(),
                    });
                }
            }
        }
        out
    })?;
    if !xdp_ids.is_empty() {
        for p in aya::programs::loaded_programs().filter_map(|p| p.ok()) {
            for (iface, id) in &xdp_ids {
                if p.id() == *id {
                    out.push(ProgramRuns {
                        label: format!("{}@{iface}:xdp", program_name(&p)),
                        id: *id,
                        run_time_ns: p.run_time().as_nanos() as u64,
                        run_count: p.run_count(),
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| a.label.cmp(&b.label));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loading the NAT makes the NAT's programs and maps, nothing of the benchmark's (its
    /// sink and ceilings are an object of their own, in netns-bench).
    #[test]
    fn the_nat_object_holds_the_nat_programs_and_maps_only() {
        assert!(
            !OBJECT.is_empty(),
            "built without its eBPF object (AYA_BUILD_SKIP)"
        );
        let obj = aya_obj::Object::parse(OBJECT).expect("the NAT's object parses");
        let mut programs: Vec<&str> = obj.programs.keys().map(String::as_str).collect();
        programs.sort_unstable();
        let mut want = netns_common::names::NAT_PROGRAMS.to_vec();
        want.sort_unstable();
        assert_eq!(programs, want);
        // The maps a lab pins, the NAT's per-CPU scratch maps (NAT_*), aya-log's buffer and
        // the globals the loader sets: nothing else.
        let maps: Vec<&str> = obj.maps.keys().map(String::as_str).collect();
        for m in NAT_MAPS.iter().chain(&[MAP_UPLINK_COUNTERS]) {
            assert!(maps.contains(m), "{m} missing from {maps:?}");
        }
        let foreign: Vec<&&str> = maps
            .iter()
            .filter(|m| {
                !(m.starts_with("NAT_")
                    || m.starts_with('.')
                    || m.starts_with("AYA_LOG")
                    || NAT_MAPS.contains(m)
                    || **m == MAP_UPLINK_COUNTERS)
            })
            .collect();
        assert!(foreign.is_empty(), "maps not the NAT's: {foreign:?}");
    }

    #[test]
    fn a_verifier_refusal_shows_the_end_of_its_log_and_keeps_all_of_it() {
        let log: String = (0..5000)
            .map(|i| format!("{i}: (bf) r{} = r1\n", i % 10))
            .collect::<String>()
            + "\nBPF program is too large. Processed 1000001 insn\n\
               processed 1000001 insns (limit 1000000) max_states_per_insn 34\n";
        let e = program_error(
            "test_prog",
            aya::programs::ProgramError::LoadError {
                io_error: io::Error::from_raw_os_error(7),
                verifier_log: aya_obj::VerifierLog::new(log.clone()),
            },
        );
        let text = e.to_string();
        assert!(text.contains("verifier refused eBPF program test_prog"), "{text}");
        let path = text
            .rsplit("lines: ")
            .next()
            .unwrap()
            .trim_end_matches(')')
            .to_owned();
        assert!(
            text.contains("  processed 1000001 insns (limit 1000000)"),
            "{text}"
        );
        assert!(text.contains("  4999: (bf) r9 = r1"), "{text}");
        assert!(!text.contains("  0: (bf)"), "only the end: {text}");
        assert!(text.contains("5002 lines"), "{text}");
        assert_eq!(fs::read_to_string(&path).unwrap(), log, "{path}");
        let _ = fs::remove_file(path);
        assert!(text.lines().count() < 20, "short: {text}");
        // No log (a refusal that is not the verifier's): the plain error.
        let e = program_error(
            "test_prog",
            aya::programs::ProgramError::LoadError {
                io_error: io::Error::from_raw_os_error(1),
                verifier_log: aya_obj::VerifierLog::new(String::new()),
            },
        );
        assert!(matches!(e, EbpfError::Program { .. }), "{e}");
    }
}
