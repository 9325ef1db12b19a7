//! The maps. The kernel hands a removed hash element to the next insert at once (even while
//! another CPU still holds a pointer to it); `netns_common::translate` is written for that:
//! every write into an entry is a compare-and-swap from a value read from it.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, BPF_F_CURRENT_NETNS, BPF_NOEXIST, bpf_sock_tuple},
    cty::c_void,
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_loop, bpf_sk_lookup_udp,
        bpf_sk_release, bpf_skc_lookup_tcp,
    },
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use aya_log_ebpf::info;
use netns_common::{
    counters::{Counter, Direction, NatCounter},
    fast::FastTables,
    fwd::{FastConfig, FdbEntry, LearnHint, MacKey, PortState},
    nat::{
        Binding, BindingKey, FLOW_STATE_WORD, Flow, FlowKey, FragKey, FragPorts, HeldFrag, HeldKey,
        MAX_PORT_TRIES, NatConfig, PROTO_TCP, PROTO_UDP, RemoteRate, WireAddr, WirePort,
    },
    trace::TraceEvent,
    translate::{
        InsertError, LogEvent, PortSearch, Res, Tables,
        flows::{EVICT_TRIES, Eviction, evict_step},
        try_port,
    },
};

const BPF_F_NO_PREALLOC: u32 = 1;
const EEXIST: i32 = 17;

/// Per-CPU packet and byte counters of the uplink, indexed by [`Counter`].
#[map(name = "UPLINK_COUNTERS")]
pub static UPLINK_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

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

/// MAC addresses seen on the bridge ports: the port each sits behind (for inbound fast-path
/// packets, which skip the bridge). Bounded like a forwarding database; LRU so a full table
/// forgets the quietest host rather than refusing a new one.
#[map(name = "NAT_FDB")]
pub static NAT_FDB: LruHashMap<MacKey, FdbEntry> = LruHashMap::with_max_entries(4096, 0);

/// Moved on by every FDB entry added or moved (see [`netns_common::fwd::LearnHint`]).
#[map(name = "NAT_FDB_GEN")]
pub static NAT_FDB_GEN: Array<u64> = Array::with_max_entries(1, 0);

/// Each CPU's [`LearnHint`].
#[map(name = "NAT_LEARN_HINT")]
pub static NAT_LEARN_HINT: PerCpuArray<LearnHint> = PerCpuArray::with_max_entries(1, 0);

/// The fast-path ports and the uplink, by ifindex: their bridge and whether they are up
/// (the loader and the agent keep it).
#[map(name = "NAT_PORTS")]
pub static NAT_PORTS: HashMap<u32, PortState> = HashMap::with_max_entries(64, 0);

/// The router's fast-path ports (bridge ports and the uplink) by ifindex: where XDP
/// redirects go.
#[map(name = "NAT_DEVMAP")]
pub static NAT_DEVMAP: DevMapHash = DevMapHash::with_max_entries(64, 0);

/// New inbound flows not confirmed yet, in the order they came (a ring): the candidates a
/// full flow table evicts to make room (see `translate::flows`).
#[map(name = "NAT_EVICT")]
pub static NAT_EVICT: Array<FlowKey> = Array::with_max_entries(EVICT_SLOTS, 0);
/// The ring's positions: [written, handed out], counting up (the slot is the count modulo
/// its size).
#[map(name = "NAT_EVICT_POS")]
pub static NAT_EVICT_POS: Array<u64> = Array::with_max_entries(2, 0);
const EVICT_SLOTS: u32 = 65_536;

/// The port search a step runs (a step's stack cannot hold it and the rest).
#[map(name = "NAT_SEARCH")]
pub static NAT_SEARCH: PerCpuArray<PortSearch> = PerCpuArray::with_max_entries(1, 0);

/// The flow a step is making (a step's stack cannot hold it and the rest).
#[map(name = "NAT_NEW_FLOW")]
pub static NAT_NEW_FLOW: PerCpuArray<Flow> = PerCpuArray::with_max_entries(1, 0);

/// Remote addresses' new inbound flows in the current second; LRU, as only busy remotes
/// matter.
#[map(name = "NAT_REMOTES")]
pub static NAT_REMOTES: LruHashMap<u32, RemoteRate> = LruHashMap::with_max_entries(65_536, 0);

/// First fragments' ports; LRU because an entry only matters for the fragments that follow.
#[map(name = "NAT_FRAGS")]
pub static NAT_FRAGS: LruHashMap<FragKey, FragPorts> = LruHashMap::with_max_entries(8192, 0);

/// Fragments that came before their datagram's first (see `translate::frags`). LRU: under
/// pressure the oldest is forgotten, as a reassembly queue's would be.
#[map(name = "NAT_HELD")]
pub static NAT_HELD: LruHashMap<HeldKey, HeldFrag> = LruHashMap::with_max_entries(256, 0);

/// This CPU's fragment being held (0) and the first fragment's frame while held ones go out
/// in its skb (1): no stack holds 2 KiB.
#[map(name = "NAT_FRAG_SCRATCH")]
pub static NAT_FRAG_SCRATCH: PerCpuArray<HeldFrag> = PerCpuArray::with_max_entries(2, 0);

/// A datagram whose held fragments this CPU's step asked to let go, for the program to do
/// once the step is through.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FragRelease {
    pub key: FragKey,
    pub pending: u16,
    pub local: u16,
}

#[map(name = "NAT_FRAG_RELEASE")]
pub static NAT_FRAG_RELEASE: PerCpuArray<FragRelease> = PerCpuArray::with_max_entries(1, 0);

/// Forgets any release asked for on this CPU (a program's run starts clean).
#[inline(always)]
pub fn clear_release() {
    if let Some(r) = NAT_FRAG_RELEASE.get_ptr_mut(0) {
        // Safety: this CPU's slot; nothing else on this CPU runs while the program does.
        unsafe { (*r).pending = 0 };
    }
}

/// Whether this CPU's steps asked for a release.
#[inline(always)]
pub fn release_pending() -> bool {
    // Safety: as in `clear_release`.
    NAT_FRAG_RELEASE
        .get_ptr(0)
        .is_some_and(|r| unsafe { (*r).pending != 0 })
}

/// The release this CPU's steps asked for, if any (taken: asked once, done once).
#[inline(always)]
pub fn take_release() -> Option<(FragKey, bool)> {
    let r = NAT_FRAG_RELEASE.get_ptr_mut(0)?;
    // Safety: as in `clear_release`.
    let r = unsafe { &mut *r };
    if r.pending == 0 {
        return None;
    }
    r.pending = 0;
    Some((r.key, r.local != 0))
}

/// The layout stamp of the build that made these maps, written by user space and read only
/// by it (before an upgrade); no program touches it.
#[map(name = "NAT_LAYOUT")]
pub static NAT_LAYOUT: Array<u64> = Array::with_max_entries(1, 0);

/// How many `netns-nat trace` listen: while 0, the programs write no trace event.
#[map(name = "NAT_TRACE_ON")]
pub static NAT_TRACE_ON: Array<u32> = Array::with_max_entries(1, 0);

/// Trace events, for `netns-nat trace`.
#[map(name = "NAT_TRACE")]
pub static NAT_TRACE: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// The event being traced on this CPU: its tuple before the step, until the step ends.
#[map(name = "NAT_TRACE_SCRATCH")]
pub static NAT_TRACE_SCRATCH: PerCpuArray<TraceEvent> = PerCpuArray::with_max_entries(1, 0);

/// Whether anyone traces (an array lookup, which the verifier inlines).
#[inline(always)]
pub fn tracing() -> bool {
    NAT_TRACE_ON.get(0).is_some_and(|n| *n != 0)
}

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32, by: u64) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // Safety: the pointer comes from a successful per-CPU array lookup, so it is valid
        // and only this CPU touches it while the program runs.
        unsafe { *slot += by };
    }
}

/// Adds one packet of `bytes` to the uplink's counters of direction `dir`.
#[inline(always)]
pub fn count_uplink(dir: Direction, bytes: u64) {
    let (packets, octets) = dir.counters();
    bump(&UPLINK_COUNTERS, packets as u32, 1);
    bump(&UPLINK_COUNTERS, octets as u32, bytes);
}

#[inline(always)]
pub fn count(c: NatCounter) {
    bump(&NAT_COUNTERS, c as u32, 1);
}

/// The NAT's state as `netns_common::translate` sees it: these maps and the helpers, and
/// the context of the program that runs the step (for the kernel's socket lookups).
pub struct Maps {
    ctx: *mut c_void,
}

impl Maps {
    /// The tables for a step of the program given `ctx`.
    #[inline(always)]
    pub fn on<C: EbpfContext>(ctx: &C) -> Maps {
        Maps { ctx: ctx.as_ptr() }
    }
}

/// Adds one to a shared counter; its value before (`atomic_xadd`'s own return value is
/// not available at this BPF CPU version, a compare-and-swap is).
#[inline(always)]
fn fetch_inc(word: *mut u64) -> u64 {
    // Safety: an aligned u64 of an array element, read and swapped atomically.
    unsafe {
        let mut seen = *word;
        for _ in 0..4 {
            let (found, won) = atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                word,
                seen,
                seen + 1,
            );
            if won {
                break;
            }
            seen = found;
        }
        seen
    }
}

impl Tables for Maps {
    #[inline(always)]
    fn config(&self) -> Option<&NatConfig> {
        NAT_CONFIG.get(0)
    }

    #[inline(always)]
    fn now(&self) -> u64 {
        // Safety: a helper without arguments or side effects.
        unsafe { bpf_ktime_get_ns() }
    }

    #[inline(always)]
    fn random(&self) -> u32 {
        // Safety: as in `now`.
        unsafe { bpf_get_prandom_u32() }
    }

    #[inline(always)]
    fn count(&self, c: NatCounter) {
        count(c);
    }

    #[inline(always)]
    fn log(&self, e: LogEvent) {
        // Below the level set at load the record is gone (the level is a constant the
        // verifier sees, so its code is never even checked).
        match e {
            LogEvent::NewMapping => info!(&(), "new mapping"),
        }
    }

    #[inline(always)]
    fn add(counter: &mut u64, by: u64) {
        // Safety: a valid, aligned u64 (a field of a map element); the kernel's atomic add,
        // as two CPUs may count packets of one flow at once.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, by) };
    }

    #[inline(always)]
    fn add32(counter: &mut u32, by: u32) {
        // Safety: as in `add`.
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(counter, by) };
    }

    #[inline(always)]
    fn swap_state(f: &mut Flow, old: u8, new: u8) -> bool {
        let (o, n) = (f.state_word(old), f.state_word(new));
        let word = (f as *mut Flow)
            .cast::<u8>()
            .wrapping_add(FLOW_STATE_WORD)
            .cast::<u64>();
        // Safety: the aligned u64 of a flow (a map element or the caller's own) that holds
        // ext_addr, ext_port, state and origin (layout asserted in netns-common); the
        // kernel's compare-and-swap, so that one CPU wins a state change.
        unsafe { atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(word, o, n).1 }
    }

    #[inline(always)]
    fn cas_u64(word: &mut u64, old: u64, new: u64) -> Result<(), u64> {
        // Safety: an aligned u64 of a map element (or the caller's own value); the kernel's
        // compare-and-swap, so that one CPU wins.
        let (found, won) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(word, old, new)
        };
        if won { Ok(()) } else { Err(found) }
    }

    #[inline(always)]
    fn binding(&self, key: &BindingKey) -> Option<Binding> {
        // Safety: the pointer comes from a successful lookup; the map is not preallocated, so
        // the element stays valid for the rest of the program even if another CPU removes it.
        NAT_BINDINGS.get_ptr(key).map(|p| unsafe { *p })
    }

    #[inline(always)]
    fn with_binding<R>(&self, key: &BindingKey, f: impl FnOnce(&mut Binding) -> R) -> Option<R> {
        // Safety: as in `binding`. The callers only raise expiries there (check, then
        // store): a race can lose one raise by the microseconds between two CPUs' packets.
        NAT_BINDINGS.get_ptr_mut(key).map(|p| f(unsafe { &mut *p }))
    }

    #[inline(always)]
    fn insert_binding(&self, key: &BindingKey, b: &Binding) -> Result<(), InsertError> {
        NAT_BINDINGS
            .insert(key, b, u64::from(BPF_NOEXIST))
            .map_err(insert_error)
    }

    #[inline(always)]
    fn remove_binding(&self, key: &BindingKey) {
        let _ = NAT_BINDINGS.remove(key);
    }

    #[inline(always)]
    fn with_flow<R>(&self, key: &FlowKey, f: impl FnOnce(&mut Flow) -> R) -> Option<R> {
        // Safety: as in `with_binding`. Counters are added atomically (`add`), the TCP state
        // changes by compare-and-swap (`swap_state`); expiries are plain stores of "now +
        // timeout", where the last writer wins by microseconds.
        NAT_FLOWS.get_ptr_mut(key).map(|p| f(unsafe { &mut *p }))
    }

    #[inline(always)]
    fn insert_flow(&self, key: &FlowKey, f: &Flow) -> Result<(), InsertError> {
        NAT_FLOWS
            .insert(key, f, u64::from(BPF_NOEXIST))
            .map_err(insert_error)
    }

    #[inline(always)]
    fn remove_flow(&self, key: &FlowKey) {
        let _ = NAT_FLOWS.remove(key);
    }

    #[inline(always)]
    fn with_new_flow<R>(&self, f: impl FnOnce(&mut Flow) -> R) -> Option<R> {
        // Safety: this CPU's slot from a successful lookup; nothing else on this CPU runs
        // while the program does.
        NAT_NEW_FLOW.get_ptr_mut(0).map(|p| f(unsafe { &mut *p }))
    }

    #[inline(always)]
    fn note_unconfirmed(&self, key: &FlowKey) {
        let Some(written) = NAT_EVICT_POS.get_ptr_mut(0) else {
            return;
        };
        // CPUs share the ring: the count before is this key's place.
        let n = fetch_inc(written);
        if let Some(slot) = NAT_EVICT.get_ptr_mut((n % u64::from(EVICT_SLOTS)) as u32) {
            // Safety: an element of the ring from a successful lookup. Two CPUs write one slot
            // only a whole ring apart; a torn key names no flow, or one the caller checks.
            unsafe { *slot = *key };
        }
    }

    #[inline(always)]
    fn evict_candidate(&self) -> Option<FlowKey> {
        let written = NAT_EVICT_POS.get_ptr_mut(0)?;
        let taken = NAT_EVICT_POS.get_ptr_mut(1)?;
        // Safety: an aligned u64 of an array element.
        let w = unsafe { *written };
        let mut t = fetch_inc(taken);
        if t >= w {
            // Nothing left: give the count back.
            // Safety: as above; the kernel's atomic add.
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(taken, u64::MAX) };
            return None;
        }
        if w - t > u64::from(EVICT_SLOTS) {
            // The oldest were written over: start at the oldest still there.
            t = w - u64::from(EVICT_SLOTS);
            // Safety: as above; a plain store, as losing it only repeats a candidate.
            unsafe { *taken = t + 1 };
        }
        // Safety: an element from a successful lookup, copied at once.
        NAT_EVICT
            .get_ptr((t % u64::from(EVICT_SLOTS)) as u32)
            .map(|p| unsafe { *p })
    }

    #[inline(always)]
    fn evict(&self, e: &mut Eviction) {
        e.hook = self.ctx as usize;
        // Safety: as in `search_ports`.
        unsafe {
            bpf_loop(
                EVICT_TRIES,
                evict_try as *mut c_void,
                (e as *mut Eviction).cast(),
                0,
            )
        };
    }

    #[inline(always)]
    fn with_remote<R>(&self, addr: WireAddr, f: impl FnOnce(&mut RemoteRate) -> R) -> Option<R> {
        // Safety: as in `with_binding`; a count a reused element loses is one second's.
        NAT_REMOTES.get_ptr_mut(addr.0).map(|p| f(unsafe { &mut *p }))
    }

    #[inline(always)]
    fn insert_remote(&self, addr: WireAddr, r: &RemoteRate) {
        let _ = NAT_REMOTES.insert(addr.0, r, 0);
    }

    #[inline(always)]
    fn router_socket(&self, proto: u8, local: (WireAddr, WirePort), remote: (WireAddr, WirePort)) -> bool {
        // Safety: a zeroed plain-data union.
        let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
        // Safety: writing the IPv4 member of the union.
        unsafe {
            let t = &mut tuple.__bindgen_anon_1.ipv4;
            t.saddr = remote.0.0;
            t.sport = remote.1.0;
            t.daddr = local.0.0;
            t.dport = local.1.0;
        }
        let size = core::mem::size_of::<[u32; 3]>() as u32;
        let netns = BPF_F_CURRENT_NETNS as u64;
        // Safety: the program's own context, a tuple of the size given; a socket found is
        // released at once (the verifier insists).
        unsafe {
            let sk = match proto {
                PROTO_TCP => bpf_skc_lookup_tcp(self.ctx, &mut tuple, size, netns, 0).cast::<c_void>(),
                PROTO_UDP => bpf_sk_lookup_udp(self.ctx, &mut tuple, size, netns, 0).cast::<c_void>(),
                _ => return false,
            };
            if sk.is_null() {
                return false;
            }
            bpf_sk_release(sk);
        }
        true
    }

    #[inline(always)]
    fn frag(&self, key: &FragKey) -> Option<FragPorts> {
        // Safety: a pointer from a successful lookup, copied at once.
        NAT_FRAGS.get_ptr(key).map(|p| unsafe { *p })
    }

    #[inline(always)]
    fn insert_frag(&self, key: &FragKey, p: &FragPorts) {
        let _ = NAT_FRAGS.insert(key, p, 0);
    }

    #[inline(always)]
    fn hold_frag(&self, key: &HeldKey, fill: impl FnOnce(&mut HeldFrag) -> bool) -> bool {
        let Some(h) = NAT_FRAG_SCRATCH.get_ptr_mut(0) else {
            return false;
        };
        // Safety: this CPU's slot 0, used only here; nothing else on this CPU runs while the
        // program does.
        let h = unsafe { &mut *h };
        fill(h) && NAT_HELD.insert(key, h, 0).is_ok()
    }

    #[inline(always)]
    fn with_held<R>(&self, key: &HeldKey, f: impl FnOnce(&HeldFrag) -> R) -> Option<R> {
        // Safety: a pointer from a successful lookup, read in `f` (a held fragment is
        // written once, before it is inserted).
        NAT_HELD.get_ptr(key).map(|h| f(unsafe { &*h }))
    }

    #[inline(always)]
    fn remove_held(&self, key: &HeldKey) {
        let _ = NAT_HELD.remove(key);
    }

    #[inline(always)]
    fn release_held(&self, key: &FragKey, local: bool) {
        if let Some(r) = NAT_FRAG_RELEASE.get_ptr_mut(0) {
            // Safety: as in `clear_release`.
            unsafe {
                *r = FragRelease {
                    key: *key,
                    pending: 1,
                    local: u16::from(local),
                }
            };
        }
    }

    #[inline(always)]
    fn search_ports(&self, init: impl FnOnce(&mut PortSearch)) -> Option<Res<(WireAddr, WirePort)>> {
        let slot = NAT_SEARCH.get_ptr_mut(0)?;
        // Safety: this CPU's slot from a successful lookup; nothing else on this CPU runs
        // while the program does.
        init(unsafe { &mut *slot });
        nat_port_search(self.ctx.cast());
        // Safety: as above.
        unsafe { (*slot).found }
    }
}

/// The hook's context, for the steps of a search (on the stack: the helper passes a stack
/// pointer to them, and a map cannot hold a pointer).
struct Hook {
    ctx: *mut c_void,
}

/// The port search of this CPU's `NAT_SEARCH` slot: a global function, which the kernel
/// verifies once on its own rather than once for every state a program reaches it in.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_port_search(ctx: *mut __sk_buff) -> i32 {
    let mut hook = Hook { ctx: ctx.cast() };
    // bpf_loop: the verifier checks the step once, not once per candidate (64 unrolled
    // searches, each followed by the rest of the program, exceed its budget).
    // Safety: a static callback and a pointer to this stack, as the helper takes them; the
    // callback casts it back to what it is.
    unsafe {
        bpf_loop(
            MAX_PORT_TRIES,
            port_step as *mut c_void,
            (&mut hook as *mut Hook).cast(),
            0,
        );
    }
    0
}

/// One step of `search_ports`: 1 ends the loop.
#[inline(never)]
extern "C" fn port_step(i: u64, ctx: *mut c_void) -> i64 {
    // Safety: `nat_port_search` passes its `Hook`, which outlives the loop.
    let maps = Maps {
        ctx: unsafe { (*ctx.cast::<Hook>()).ctx },
    };
    let Some(s) = NAT_SEARCH.get_ptr_mut(0) else {
        return 1;
    };
    // Safety: as in `search_ports`.
    i64::from(try_port(&maps, unsafe { &mut *s }, i as u32))
}

/// One try of `evict`: 1 ends the loop.
#[inline(never)]
extern "C" fn evict_try(_i: u64, ctx: *mut c_void) -> i64 {
    // Safety: `evict` passes its `&mut Eviction`, which outlives the loop.
    let e = unsafe { &mut *ctx.cast::<Eviction>() };
    let maps = Maps {
        ctx: e.hook as *mut c_void,
    };
    i64::from(evict_step(&maps, e))
}

#[inline(always)]
fn insert_error(e: i32) -> InsertError {
    if e == -EEXIST {
        InsertError::Exists
    } else {
        InsertError::Full
    }
}

impl FastTables for Maps {
    #[inline(always)]
    fn fast_config(&self) -> Option<&FastConfig> {
        FAST_CONFIG.get(0)
    }

    // Keys by reference: passed by value, LLVM gives xdp_fast_out a path that reads an
    // unset register, which the verifier refuses.
    #[allow(clippy::needless_borrows_for_generic_args)]
    #[inline(always)]
    fn port(&self, ifindex: u32) -> Option<PortState> {
        // Safety: a pointer from a successful lookup, copied at once (8 bytes, written whole
        // by user space).
        NAT_PORTS.get_ptr(&ifindex).map(|p| unsafe { *p })
    }

    #[inline(always)]
    fn fdb(&self, mac: &MacKey) -> Option<FdbEntry> {
        // Safety: a pointer from a successful lookup, copied at once (a torn copy is at
        // worst a stale age).
        NAT_FDB.get_ptr(mac).map(|e| unsafe { *e })
    }

    #[inline(always)]
    fn with_fdb<R>(&self, mac: &MacKey, f: impl FnOnce(&mut FdbEntry) -> R) -> Option<R> {
        // Safety: a pointer from a successful lookup; the fields are written as plain
        // stores (a lost one is a second's age).
        NAT_FDB.get_ptr_mut(mac).map(|e| f(unsafe { &mut *e }))
    }

    #[inline(always)]
    fn insert_fdb(&self, mac: &MacKey, e: &FdbEntry) {
        let _ = NAT_FDB.insert(mac, e, 0);
        if let Some(g) = NAT_FDB_GEN.get_ptr_mut(0) {
            // Safety: a valid, aligned u64 of a map; atomic, as other CPUs move it too.
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(g, 1) };
        }
    }

    #[inline(always)]
    fn fdb_generation(&self) -> u64 {
        // Safety: a pointer from a successful lookup of an array element.
        NAT_FDB_GEN
            .get_ptr(0)
            .map_or(0, |g| unsafe { core::ptr::read_volatile(g) })
    }

    #[inline(always)]
    fn with_learn_hint<R>(&self, f: impl FnOnce(&mut LearnHint) -> R) -> Option<R> {
        // Safety: this CPU's element; nothing else runs on this CPU while the program does.
        NAT_LEARN_HINT.get_ptr_mut(0).map(|h| f(unsafe { &mut *h }))
    }

    #[inline(always)]
    fn count_uplink(&self, dir: Direction, bytes: u64) {
        count_uplink(dir, bytes);
    }

    #[inline(always)]
    fn now_coarse(&self) -> u64 {
        // Safety: a helper without arguments or side effects.
        unsafe { bpf_ktime_get_coarse_ns() }
    }
}
