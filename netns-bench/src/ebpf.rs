//! Loading the benchmark's own eBPF programs (`netns-bench-ebpf`, built by `build.rs`):
//! the sink on the receiving veth and the bare-redirect ceilings. Each load is its own
//! object, attached for as long as the returned value lives; nothing is pinned.

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMap, MapData, PerCpuArray},
    programs::{TcAttachType, links::FdLink},
};
use netns_common::{
    fwd::NextHop,
    names::{
        MAP_CEILING_DEVMAP, MAP_CEILING_NEXT_HOP, MAP_SINK_COUNTERS, PROG_CEILING_TC, PROG_CEILING_XDP,
        PROG_SINK, PROG_SINK_TC,
    },
};
use netns_user::{
    bpf::{EbpfError, LOG_OFF, attach_tcx, attach_xdp, embedded, map_err},
    sys::netns,
};

/// The benchmark's programs, built by `build.rs` for bpfel-unknown-none.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netns-bench-ebpf"));

type Result<T, E = EbpfError> = std::result::Result<T, E>;

/// The benchmark's sink, attached (XDP and TCX ingress) for as long as this lives.
pub struct Sink {
    ebpf: Ebpf,
    _links: Vec<(String, FdLink)>,
}

/// Attaches the sink to `iface` in namespace `ns`, in XDP and at TCX ingress (for frames
/// redirected into the veth's ingress, which skip its XDP); both count and drop UDP to the
/// sink ports into one map. Detached when the returned value is dropped.
pub fn attach_sink(ns: &str, iface: &str) -> Result<Sink> {
    netns::run_in(ns, || {
        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &LOG_OFF, false)
            .load(embedded(OBJECT)?)
            .map_err(EbpfError::Load)?;
        let mut links = attach_xdp(&mut ebpf, &[(PROG_SINK, iface)])?;
        links.extend(attach_tcx(
            &mut ebpf,
            &[(PROG_SINK_TC, iface, TcAttachType::Ingress)],
        )?);
        Ok(Sink { ebpf, _links: links })
    })?
}

impl Sink {
    /// (packets, bytes) dropped so far, summed over CPUs.
    pub fn counts(&self) -> Result<(u64, u64)> {
        let map = self
            .ebpf
            .map(MAP_SINK_COUNTERS)
            .ok_or(EbpfError::Missing(MAP_SINK_COUNTERS))?;
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(map_err(MAP_SINK_COUNTERS))?;
        let sum = |i: u32| -> Result<u64> {
            Ok(array.get(&i, 0).map_err(map_err(MAP_SINK_COUNTERS))?.iter().sum())
        };
        Ok((sum(0)?, sum(1)?))
    }
}

/// Where the benchmark's bare-redirect ceiling runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CeilingHook {
    /// TCX ingress, `bpf_redirect_peer` into the next hop interface's veth peer.
    Tc,
    /// XDP (native), redirect through a DEVMAP.
    Xdp,
}

/// A bare-redirect ceiling, attached for as long as this lives.
pub struct Ceiling {
    _ebpf: Ebpf,
    /// The ceiling's link (TCX or XDP): detached when dropped.
    _links: Vec<(String, FdLink)>,
}

/// Attaches the ceiling program to `iface` in namespace `ns`: the load arriving there is
/// sent to `hop` with only its MAC addresses rewritten. Detached when dropped.
pub fn attach_ceiling(ns: &str, iface: &str, hook: CeilingHook, hop: NextHop) -> Result<Ceiling> {
    netns::run_in(ns, || {
        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &LOG_OFF, false)
            .load(embedded(OBJECT)?)
            .map_err(EbpfError::Load)?;
        {
            let map = ebpf
                .map_mut(MAP_CEILING_NEXT_HOP)
                .ok_or(EbpfError::Missing(MAP_CEILING_NEXT_HOP))?;
            let mut a: Array<_, NextHop> = Array::try_from(map).map_err(map_err(MAP_CEILING_NEXT_HOP))?;
            a.set(0, hop, 0).map_err(map_err(MAP_CEILING_NEXT_HOP))?;
        }
        let links = match hook {
            CeilingHook::Tc => attach_tcx(&mut ebpf, &[(PROG_CEILING_TC, iface, TcAttachType::Ingress)])?,
            CeilingHook::Xdp => {
                {
                    let map = ebpf
                        .map_mut(MAP_CEILING_DEVMAP)
                        .ok_or(EbpfError::Missing(MAP_CEILING_DEVMAP))?;
                    let mut d: DevMap<_> = DevMap::try_from(map).map_err(map_err(MAP_CEILING_DEVMAP))?;
                    d.set(0, hop.ifindex, None, 0).map_err(|e| EbpfError::MapSet {
                        name: MAP_CEILING_DEVMAP,
                        detail: e.to_string(),
                    })?;
                }
                attach_xdp(&mut ebpf, &[(PROG_CEILING_XDP, iface)])?
            }
        };
        Ok(Ceiling {
            _ebpf: ebpf,
            _links: links,
        })
    })?
}
