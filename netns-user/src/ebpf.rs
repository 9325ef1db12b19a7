//! The embedded eBPF object: loading it into a lab's router, attaching it, pinning it per
//! lab, and reading what it counted.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Map, MapData, PerCpuArray},
    programs::{SchedClassifier, TcAttachType, links::FdLink},
};
use netns_common::{
    counters::Counter,
    names::{MAP_UPLINK_COUNTERS, PIN_ROOT, PROG_UPLINK_COUNT_EGRESS, PROG_UPLINK_COUNT_INGRESS},
};
use nix::{
    fcntl::{Flock, FlockArg},
    mount::{MntFlags, MsFlags, mount, umount2},
};
use serde::Serialize;

use crate::netns::{self, NetnsError};

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
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

type Result<T, E = EbpfError> = std::result::Result<T, E>;

/// Where a lab pins its objects.
pub fn pin_dir(prefix: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(prefix)
}

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
    if OBJECT.is_empty() {
        return Err(EbpfError::NotBuilt);
    }
    let dir = pin_dir(prefix);
    {
        // Once the lab's directory exists, no other lab's teardown removes the root or
        // unmounts bpffs under it.
        let _lock = pins_lock()?;
        ensure_bpffs()?;
        fs::create_dir_all(&dir).map_err(|e| EbpfError::Pin {
            path: dir.clone(),
            detail: e.to_string(),
        })?;
    }
    let res = netns::run_in(ns, || attach_here(uplink, &dir))?;
    if res.is_err() {
        let _ = remove_pins(prefix);
    }
    res
}

fn attach_here(uplink: &str, dir: &Path) -> Result<()> {
    let mut ebpf = Ebpf::load(OBJECT).map_err(EbpfError::Load)?;
    let mut links = Vec::new();
    for (name, hook) in [
        (PROG_UPLINK_COUNT_INGRESS, TcAttachType::Ingress),
        (PROG_UPLINK_COUNT_EGRESS, TcAttachType::Egress),
    ] {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(EbpfError::Missing(name))?
            .try_into()
            .map_err(|source| EbpfError::Program { name, source })?;
        prog.load()
            .map_err(|source| EbpfError::Program { name, source })?;
        let id = prog.attach(uplink, hook).map_err(|source| EbpfError::Attach {
            name,
            iface: uplink.to_owned(),
            source,
        })?;
        // Owned links detach when dropped: an early return rolls back the first attach.
        let link = prog
            .take_link(id)
            .map_err(|source| EbpfError::Program { name, source })?;
        let link: FdLink = link.try_into().map_err(|e| EbpfError::Pin {
            path: dir.into(),
            detail: format!("{name} is not a TCX link ({e}); a kernel >= 6.6 is needed"),
        })?;
        links.push((name, link));
    }
    let map = ebpf
        .map(MAP_UPLINK_COUNTERS)
        .ok_or(EbpfError::Missing(MAP_UPLINK_COUNTERS))?;
    let map_path = dir.join(MAP_UPLINK_COUNTERS);
    map.pin(&map_path).map_err(|e| EbpfError::Pin {
        path: map_path,
        detail: e.to_string(),
    })?;
    for (name, link) in links {
        let path = dir.join(format!("link_{name}"));
        link.pin(&path).map_err(|e| EbpfError::Pin {
            path,
            detail: e.to_string(),
        })?;
    }
    Ok(())
}

/// Removes a lab's pinned objects: unpinning the links detaches the programs. Returns
/// whether there was anything.
pub fn remove_pins(prefix: &str) -> io::Result<bool> {
    let dir = pin_dir(prefix);
    let _lock = pins_lock().map_err(io::Error::other)?;
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
    let path = pin_dir(prefix).join(MAP_UPLINK_COUNTERS);
    let fail = |source| EbpfError::Map {
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(fail)?;
    let map = Map::from_map_data(data).map_err(fail)?;
    let array: PerCpuArray<MapData, u64> = PerCpuArray::try_from(map).map_err(fail)?;
    let mut out = UplinkCounters::default();
    for c in Counter::ALL {
        let total: u64 = array.get(&(c as u32), 0).map_err(fail)?.iter().sum();
        let slot = match c {
            Counter::IngressPackets => &mut out.ingress_packets,
            Counter::IngressBytes => &mut out.ingress_bytes,
            Counter::EgressPackets => &mut out.egress_packets,
            Counter::EgressBytes => &mut out.egress_bytes,
        };
        *slot = total;
    }
    Ok(out)
}
