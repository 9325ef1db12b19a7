//! The maps. Hash tables are not preallocated, so an element removed by one CPU is never
//! reused under another CPU that still holds a pointer to it.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMap, DevMapHash, HashMap, LruHashMap, PerCpuArray},
};
use netns_common::{
    counters::{Counter, NatCounter},
    fwd::{FastConfig, Neigh, NextHop},
    nat::{Binding, BindingKey, Flow, FlowKey, FragKey, FragPorts, NatConfig},
};

const BPF_F_NO_PREALLOC: u32 = 1;

/// Per-CPU packet and byte counters of the uplink, indexed by [`Counter`].
#[map(name = "UPLINK_COUNTERS")]
pub static UPLINK_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// The benchmark sink's per-CPU [packets, bytes].
#[map(name = "SINK_COUNTERS")]
pub static SINK_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// Where the benchmark's bare-redirect ceilings send the load.
#[map(name = "CEILING_NEXT_HOP")]
pub static CEILING_NEXT_HOP: Array<NextHop> = Array::with_max_entries(1, 0);

#[map(name = "CEILING_DEVMAP")]
pub static CEILING_DEVMAP: DevMap = DevMap::with_max_entries(1, 0);

/// Per-CPU NAT outcome counters, indexed by [`NatCounter`].
#[map(name = "NAT_COUNTERS")]
pub static NAT_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NatCounter::COUNT, 0);

#[map(name = "NAT_CONFIG")]
pub static NAT_CONFIG: Array<NatConfig> = Array::with_max_entries(1, 0);

/// Sizes are defaults; the loader sets them from the lab file.
#[map(name = "NAT_BINDINGS")]
pub static NAT_BINDINGS: HashMap<BindingKey, Binding> = HashMap::with_max_entries(262_144, BPF_F_NO_PREALLOC);

#[map(name = "NAT_FLOWS")]
pub static NAT_FLOWS: HashMap<FlowKey, Flow> = HashMap::with_max_entries(262_144, BPF_F_NO_PREALLOC);

#[map(name = "FAST_CONFIG")]
pub static FAST_CONFIG: Array<FastConfig> = Array::with_max_entries(1, 0);

/// Internal hosts by address: the port they sit behind and their MAC (for inbound fast-path
/// packets, which skip the bridge). Bounded like a neighbour table; LRU so a full table
/// forgets the quietest host rather than refusing a new one.
#[map(name = "NAT_NEIGH")]
pub static NAT_NEIGH: LruHashMap<u32, Neigh> = LruHashMap::with_max_entries(4096, 0);

/// The router's fast-path ports (bridge ports and the uplink) by ifindex: where XDP
/// redirects go.
#[map(name = "NAT_DEVMAP")]
pub static NAT_DEVMAP: DevMapHash = DevMapHash::with_max_entries(64, 0);

/// First fragments' ports; LRU because an entry only matters for the fragments that follow.
#[map(name = "NAT_FRAGS")]
pub static NAT_FRAGS: LruHashMap<FragKey, FragPorts> = LruHashMap::with_max_entries(8192, 0);

#[inline(always)]
pub fn bump(map: &PerCpuArray<u64>, index: u32, by: u64) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // Safety: the pointer comes from a successful per-CPU array lookup, so it is valid
        // and only this CPU touches it while the program runs.
        unsafe { *slot += by };
    }
}

#[inline(always)]
pub fn count(c: NatCounter) {
    bump(&NAT_COUNTERS, c as u32, 1);
}
