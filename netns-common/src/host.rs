//! The NAT on the host: [`Frame`], a packet in memory with the kernel helpers' checksum
//! semantics (as the XDP programs have them), and [`MemTables`], the state in memory with a
//! clock and a random generator the caller sets, and [`AtHook`], a frame at a fast-path hook
//! with the kernel's forwarding as tables. With them the steps of [`crate::translate`] and
//! [`crate::fast`] run in ordinary tests, property tests and the fuzz target.
extern crate std;

use crate::wire::{WireAddr, WirePort};
use std::{
    cell::{Cell, RefCell},
    collections::{HashMap, HashSet, VecDeque},
    vec::Vec,
};

use crate::{
    counters::{Counter, Direction, NatCounter},
    fast::{FastTables, FibQuery, Forwarding},
    fwd::{FAST_XDP, FORWARDABLE_SLACK, FastConfig, FdbEntry, LearnHint, MacKey, NextHop, PortState},
    nat::MAX_PORT_TRIES,
    nat::{
        Binding, BindingKey, Flow, FlowKey, FragKey, FragPorts, HELD_BYTES, HeldFrag, HeldKey, NatConfig,
        RemoteRate,
    },
    packet::{Fail, OOB, Packet, csum_updated, l4_csum_updated},
    translate::{
        InsertError, PortSearch, Tables,
        maintain::{self, MaintainCmd, OP_SWEEP},
        try_port,
    },
};

/// A frame in memory. Every access is bounds-checked, as the verifier makes the programs'.
#[derive(Debug)]
pub struct Frame {
    bytes: RefCell<Vec<u8>>,
    /// The hook's interface and the one the frame arrived on (see [`Packet::arrived_on`]).
    pub ifindex: u32,
    pub arrived_on: u32,
}

impl Frame {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self {
            bytes: RefCell::new(bytes),
            ifindex: 0,
            arrived_on: 0,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.borrow().clone()
    }

    fn check(&self, off: usize, size: usize) -> Result<(), Fail> {
        match off.checked_add(size) {
            Some(end) if end <= self.bytes.borrow().len() => Ok(()),
            _ => Err(OOB),
        }
    }
}

impl Packet for Frame {
    fn load<T: Copy>(&self, off: usize) -> Result<T, Fail> {
        self.check(off, core::mem::size_of::<T>())?;
        let b = self.bytes.borrow();
        // Safety: `check` found size_of::<T>() bytes at `off`; T is plain data (see the
        // trait), so any bytes are a valid T; the read is unaligned.
        Ok(unsafe { b.as_ptr().add(off).cast::<T>().read_unaligned() })
    }

    fn store<T: Copy>(&self, off: usize, v: &T) -> Result<(), Fail> {
        self.check(off, core::mem::size_of::<T>())?;
        let mut b = self.bytes.borrow_mut();
        // Safety: as in `load`.
        unsafe { b.as_mut_ptr().add(off).cast::<T>().write_unaligned(*v) };
        Ok(())
    }

    fn l3_csum_replace(&self, off: usize, from: u64, to: u64, size: u64) -> Result<(), Fail> {
        let c: u16 = self.load(off)?;
        self.store(off, &csum_updated(c, from, to, size))
    }

    fn l4_csum_replace(&self, off: usize, from: u64, to: u64, flags: u64) -> Result<(), Fail> {
        let c: u16 = self.load(off)?;
        match l4_csum_updated(c, from, to, flags) {
            Some(n) => self.store(off, &n),
            None => Ok(()),
        }
    }

    fn len(&self) -> u32 {
        self.bytes.borrow().len() as u32
    }

    fn copy_frame(&self, dst: &mut [u8; HELD_BYTES], len: u32) -> Result<(), Fail> {
        let len = len as usize;
        self.check(0, len)?;
        if len == 0 || len >= HELD_BYTES {
            return Err(OOB);
        }
        dst[..len].copy_from_slice(&self.bytes.borrow()[..len]);
        Ok(())
    }

    fn ifindex(&self) -> u32 {
        self.ifindex
    }

    fn arrived_on(&self) -> u32 {
        self.arrived_on
    }
}

/// Table sizes: an insert beyond them fails as a full map does.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub bindings: usize,
    pub flows: usize,
    pub frags: usize,
}

impl Default for Sizes {
    fn default() -> Self {
        Self {
            bindings: 1 << 16,
            flows: 1 << 16,
            frags: 1024,
        }
    }
}

/// A socket of the router: (protocol, local address, local port, remote address, remote
/// port), wire order; remote (0, 0) for a listener.
pub type RouterSocket = (u8, WireAddr, WirePort, WireAddr, WirePort);

/// The NAT's tables in memory.
#[derive(Debug)]
pub struct MemTables {
    pub cfg: Option<NatConfig>,
    pub sizes: Sizes,
    clock: Cell<u64>,
    rng: Cell<u32>,
    counters: RefCell<[u64; NatCounter::COUNT as usize]>,
    bindings: RefCell<HashMap<BindingKey, Binding>>,
    flows: RefCell<HashMap<FlowKey, Flow>>,
    frags: RefCell<HashMap<FragKey, FragPorts>>,
    unconfirmed: RefCell<VecDeque<FlowKey>>,
    new_flow: RefCell<Flow>,
    remotes: RefCell<HashMap<WireAddr, RemoteRate>>,
    /// The router's own sockets.
    pub router_sockets: RefCell<HashSet<RouterSocket>>,
    /// How many evictions another CPU races (for tests): at the instant each is done, a new
    /// unconfirmed inbound flow of the other CPU takes the room it made.
    pub rivals: Cell<u32>,
    held: RefCell<HashMap<HeldKey, std::boxed::Box<HeldFrag>>>,
    /// The datagrams whose held fragments a step asked to let go, and whether they are the
    /// router's own (the kernel's program does it when the step is through: see
    /// [`MemTables::take_releases`]).
    releases: RefCell<Vec<(FragKey, bool)>>,
    /// The fast path's configuration (off: None).
    pub fast: Option<FastConfig>,
    /// The router's ports as the loader and agent write them (see [`FastTables::port`]).
    pub ports: RefCell<HashMap<u32, PortState>>,
    /// Where internal MAC addresses were last seen.
    pub fdb: RefCell<HashMap<MacKey, FdbEntry>>,
    /// FDB lookups so far (tests count them).
    pub fdb_lookups: Cell<u32>,
    fdb_gen: Cell<u64>,
    /// Which CPU's [`LearnHint`] the fast path uses (tests play two CPUs).
    pub cpu: Cell<usize>,
    hints: RefCell<[LearnHint; 2]>,
    uplink: RefCell<[u64; Counter::COUNT as usize]>,
}

impl MemTables {
    pub fn new(cfg: NatConfig, sizes: Sizes, seed: u32) -> Self {
        Self {
            cfg: Some(cfg),
            sizes,
            // Not zero: a flow's expiry of 0 would read as "never seen".
            clock: Cell::new(1_000_000_000),
            rng: Cell::new(seed | 1),
            counters: RefCell::new([0; NatCounter::COUNT as usize]),
            bindings: RefCell::default(),
            flows: RefCell::default(),
            frags: RefCell::default(),
            unconfirmed: RefCell::default(),
            new_flow: RefCell::default(),
            remotes: RefCell::default(),
            router_sockets: RefCell::default(),
            rivals: Cell::new(0),
            held: RefCell::default(),
            releases: RefCell::default(),
            fast: None,
            ports: RefCell::default(),
            fdb: RefCell::default(),
            fdb_lookups: Cell::new(0),
            fdb_gen: Cell::new(0),
            cpu: Cell::new(0),
            hints: RefCell::default(),
            uplink: RefCell::default(),
        }
    }

    /// The uplink's packet counter (see [`FastTables::count_uplink`]).
    pub fn uplink_counter(&self, c: Counter) -> u64 {
        self.uplink.borrow()[c as usize]
    }

    /// The releases asked for since the last call (see `releases`).
    pub fn take_releases(&self) -> Vec<(FragKey, bool)> {
        self.releases.take()
    }

    /// How many fragments are held.
    pub fn held_count(&self) -> usize {
        self.held.borrow().len()
    }

    pub fn advance(&self, ns: u64) {
        self.clock.set(self.clock.get() + ns);
    }

    pub fn counter(&self, c: NatCounter) -> u64 {
        self.counters.borrow()[c as usize]
    }

    pub fn flows(&self) -> Vec<(FlowKey, Flow)> {
        self.flows.borrow().iter().map(|(k, v)| (*k, *v)).collect()
    }

    pub fn bindings(&self) -> Vec<(BindingKey, Binding)> {
        self.bindings.borrow().iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// Adds an entry as user space does (a port forward's static binding).
    pub fn put_binding(&self, key: BindingKey, b: Binding) {
        self.bindings.borrow_mut().insert(key, b);
    }

    /// Runs a maintenance request as the kernel's `nat_maintain` program does: every
    /// mapping entry, then every flow, through the same steps. Returns the request with its
    /// results.
    pub fn maintain(&self, mut cmd: MaintainCmd) -> MaintainCmd {
        let now = self.now();
        let keys: Vec<BindingKey> = self.bindings.borrow().keys().copied().collect();
        for k in keys {
            let Some(mut b) = self.binding(&k) else {
                continue;
            };
            cmd.seen += 1;
            let did = maintain::binding_step(self, &cmd, &k, &mut b, now);
            cmd.mappings += did.mappings;
            cmd.internal += did.internal;
            if let Some(slot) = self.bindings.borrow_mut().get_mut(&k) {
                *slot = b;
            }
        }
        let keys: Vec<FlowKey> = self.flows.borrow().keys().copied().collect();
        for k in keys {
            let Some(mut f) = self.flows.borrow().get(&k).copied() else {
                continue;
            };
            cmd.seen += 1;
            if maintain::flow_step(self, &cmd, &k, &mut f, now) {
                cmd.flows += 1;
            }
            if let Some(slot) = self.flows.borrow_mut().get_mut(&k) {
                *slot = f;
            }
        }
        cmd
    }

    /// What the agent's sweep does, without its grace period: expired flows and mappings
    /// go (a mapping's two entries together, and an internal entry left without its
    /// external one); fragment entries are forgotten.
    pub fn sweep(&self) {
        self.maintain(MaintainCmd {
            op: OP_SWEEP,
            ..MaintainCmd::default()
        });
        self.frags.borrow_mut().clear();
    }
}

impl Tables for MemTables {
    fn config(&self) -> Option<&NatConfig> {
        self.cfg.as_ref()
    }

    fn now(&self) -> u64 {
        self.clock.get()
    }

    fn random(&self) -> u32 {
        // xorshift32: deterministic for a seed, so a failing case replays.
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.rng.set(x);
        x
    }

    fn count(&self, c: NatCounter) {
        self.counters.borrow_mut()[c as usize] += 1;
    }

    fn add(counter: &mut u64, by: u64) {
        *counter += by;
    }

    fn add32(counter: &mut u32, by: u32) {
        *counter = counter.wrapping_add(by);
    }

    fn swap_state(f: &mut Flow, old: u8, new: u8) -> bool {
        let won = f.state == old;
        if won {
            f.state = new;
        }
        won
    }

    fn cas_u64(word: &mut u64, old: u64, new: u64) -> Result<(), u64> {
        if *word == old {
            *word = new;
            Ok(())
        } else {
            Err(*word)
        }
    }

    fn binding(&self, key: &BindingKey) -> Option<Binding> {
        self.bindings.borrow().get(key).copied()
    }

    fn with_binding<R>(&self, key: &BindingKey, f: impl FnOnce(&mut Binding) -> R) -> Option<R> {
        // Copied out and back (unless removed meanwhile), so that `f` may use the tables.
        let mut b = self.bindings.borrow().get(key).copied()?;
        let r = f(&mut b);
        if let Some(slot) = self.bindings.borrow_mut().get_mut(key) {
            *slot = b;
        }
        Some(r)
    }

    fn insert_binding(&self, key: &BindingKey, b: &Binding) -> Result<(), InsertError> {
        let mut m = self.bindings.borrow_mut();
        if m.contains_key(key) {
            return Err(InsertError::Exists);
        }
        if m.len() >= self.sizes.bindings {
            return Err(InsertError::Full);
        }
        m.insert(*key, *b);
        Ok(())
    }

    fn remove_binding(&self, key: &BindingKey) {
        self.bindings.borrow_mut().remove(key);
    }

    fn with_flow<R>(&self, key: &FlowKey, f: impl FnOnce(&mut Flow) -> R) -> Option<R> {
        // Copied out and back (unless removed meanwhile), so that `f` may use the other
        // tables (it refreshes bindings).
        let mut flow = self.flows.borrow().get(key).copied()?;
        let r = f(&mut flow);
        if let Some(slot) = self.flows.borrow_mut().get_mut(key) {
            *slot = flow;
        }
        Some(r)
    }

    fn insert_flow(&self, key: &FlowKey, f: &Flow) -> Result<(), InsertError> {
        let mut m = self.flows.borrow_mut();
        if m.contains_key(key) {
            return Err(InsertError::Exists);
        }
        if m.len() >= self.sizes.flows {
            return Err(InsertError::Full);
        }
        m.insert(*key, *f);
        Ok(())
    }

    fn remove_flow(&self, key: &FlowKey) {
        self.flows.borrow_mut().remove(key);
    }

    fn with_new_flow<R>(&self, f: impl FnOnce(&mut Flow) -> R) -> Option<R> {
        Some(f(&mut self.new_flow.borrow_mut()))
    }

    fn note_unconfirmed(&self, key: &FlowKey) {
        let mut q = self.unconfirmed.borrow_mut();
        // As the kernel's ring: the oldest are forgotten.
        if q.len() >= self.sizes.flows {
            q.pop_front();
        }
        q.push_back(*key);
    }

    fn evict_candidate(&self) -> Option<FlowKey> {
        self.unconfirmed.borrow_mut().pop_front()
    }

    fn evict(&self, e: &mut crate::translate::flows::Eviction) {
        for _ in 0..crate::translate::flows::EVICT_TRIES {
            if crate::translate::flows::evict_step(self, e) {
                break;
            }
        }
        let rivals = self.rivals.get();
        if e.done && rivals > 0 {
            self.rivals.set(rivals - 1);
            // The other CPU's flow: from a remote no test uses, one per race.
            let key = FlowKey::new(
                crate::nat::PROTO_TCP,
                WireAddr::UNSPECIFIED,
                WirePort::new(80),
                WireAddr::from_host(0xfe00_0000 + rivals),
                WirePort::new(1),
            );
            let f = Flow {
                origin: crate::nat::ORIGIN_INBOUND,
                expires_ns: self.now() + 1,
                ..Flow::default()
            };
            self.flows.borrow_mut().insert(key, f);
            self.note_unconfirmed(&key);
        }
    }

    fn with_remote<R>(&self, addr: WireAddr, f: impl FnOnce(&mut RemoteRate) -> R) -> Option<R> {
        self.remotes.borrow_mut().get_mut(&addr).map(f)
    }

    fn insert_remote(&self, addr: WireAddr, r: &RemoteRate) {
        self.remotes.borrow_mut().insert(addr, *r);
    }

    fn router_socket(&self, proto: u8, local: (WireAddr, WirePort), remote: (WireAddr, WirePort)) -> bool {
        let s = self.router_sockets.borrow();
        s.contains(&(proto, local.0, local.1, WireAddr::UNSPECIFIED, WirePort::ZERO))
            || s.contains(&(proto, local.0, local.1, remote.0, remote.1))
    }

    fn frag(&self, key: &FragKey) -> Option<FragPorts> {
        self.frags.borrow().get(key).copied()
    }

    fn insert_frag(&self, key: &FragKey, p: &FragPorts) {
        let mut m = self.frags.borrow_mut();
        if !m.contains_key(key) && m.len() >= self.sizes.frags {
            // An LRU table forgets one: which one does not matter here.
            let victim = *m.keys().next().expect("a full table has a key");
            m.remove(&victim);
        }
        m.insert(*key, *p);
    }

    fn hold_frag(&self, key: &HeldKey, fill: impl FnOnce(&mut HeldFrag) -> bool) -> bool {
        let mut h = std::boxed::Box::<HeldFrag>::default();
        if !fill(&mut h) {
            return false;
        }
        let mut m = self.held.borrow_mut();
        if !m.contains_key(key) && m.len() >= self.sizes.frags {
            let victim = *m.keys().next().expect("a full table has a key");
            m.remove(&victim);
        }
        m.insert(*key, h);
        true
    }

    fn with_held<R>(&self, key: &HeldKey, f: impl FnOnce(&HeldFrag) -> R) -> Option<R> {
        self.held.borrow().get(key).map(|h| f(h))
    }

    fn remove_held(&self, key: &HeldKey) {
        self.held.borrow_mut().remove(key);
    }

    fn release_held(&self, key: &FragKey, local: bool) {
        self.releases.borrow_mut().push((*key, local));
    }

    fn search_ports(
        &self,
        init: impl FnOnce(&mut PortSearch),
    ) -> Option<crate::translate::Res<(WireAddr, WirePort)>> {
        let mut s = PortSearch::default();
        init(&mut s);
        for i in 0..MAX_PORT_TRIES {
            if try_port(self, &mut s, i) {
                break;
            }
        }
        s.found
    }
}

impl FastTables for MemTables {
    fn fast_config(&self) -> Option<&FastConfig> {
        self.fast.as_ref()
    }

    fn port(&self, ifindex: u32) -> Option<PortState> {
        self.ports.borrow().get(&ifindex).copied()
    }

    fn fdb(&self, mac: &MacKey) -> Option<FdbEntry> {
        self.fdb_lookups.set(self.fdb_lookups.get() + 1);
        self.fdb.borrow().get(mac).copied()
    }

    fn with_fdb<R>(&self, mac: &MacKey, f: impl FnOnce(&mut FdbEntry) -> R) -> Option<R> {
        self.fdb_lookups.set(self.fdb_lookups.get() + 1);
        self.fdb.borrow_mut().get_mut(mac).map(f)
    }

    fn insert_fdb(&self, mac: &MacKey, e: &FdbEntry) {
        self.fdb.borrow_mut().insert(*mac, *e);
        self.fdb_gen.set(self.fdb_gen.get() + 1);
    }

    fn fdb_generation(&self) -> u64 {
        self.fdb_gen.get()
    }

    fn with_learn_hint<R>(&self, f: impl FnOnce(&mut LearnHint) -> R) -> Option<R> {
        Some(f(&mut self.hints.borrow_mut()[self.cpu.get()]))
    }

    fn count_uplink(&self, dir: Direction, bytes: u64) {
        let (packets, octets) = dir.counters();
        let mut c = self.uplink.borrow_mut();
        c[packets as usize] += 1;
        c[octets as usize] += bytes;
    }
}

/// A route of [`AtHook`]'s FIB: packets to `dst` (wire order) get `answer` and, when it is
/// success, `hop` and (at TC) the egress MTU `mtu` (0: 1500).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route {
    pub dst: WireAddr,
    pub answer: i64,
    pub hop: NextHop,
    pub mtu: u16,
}

/// What [`Route::mtu`] 0 stands for.
const DEFAULT_MTU: u16 = 1500;

/// A frame at a fast-path hook of mode `MODE` ([`crate::fwd::FAST_TC`] or [`FAST_XDP`]), with
/// the kernel's forwarding as tables the caller fills: the FIB by destination (no route:
/// `BPF_FIB_LKUP_RET_NOT_FWDED`), MTU answers by interface (none: it fits), and whether
/// redirects are refused. What the fast path asked and set up is recorded.
#[derive(Debug)]
pub struct AtHook<const MODE: u32> {
    pub frame: Frame,
    pub routes: Vec<Route>,
    pub mtu: HashMap<u32, i64>,
    /// The hook refuses redirects (XDP: the port is not in the DEVMAP).
    pub refuse_redirect: bool,
    /// Every FIB lookup asked.
    pub queries: RefCell<Vec<FibQuery>>,
    /// The redirect set up: (interface, to its peer).
    pub redirected: Cell<Option<(u32, bool)>>,
}

/// `BPF_FIB_LKUP_RET_NOT_FWDED`: no route.
const FIB_NOT_FWDED: i64 = 4;

impl<const MODE: u32> AtHook<MODE> {
    pub fn new(frame: Frame) -> Self {
        Self {
            frame,
            routes: Vec::new(),
            mtu: HashMap::new(),
            refuse_redirect: false,
            queries: RefCell::default(),
            redirected: Cell::new(None),
        }
    }
}

impl<const MODE: u32> Packet for AtHook<MODE> {
    fn load<T: Copy>(&self, off: usize) -> Result<T, Fail> {
        self.frame.load(off)
    }

    fn store<T: Copy>(&self, off: usize, v: &T) -> Result<(), Fail> {
        self.frame.store(off, v)
    }

    fn l3_csum_replace(&self, off: usize, from: u64, to: u64, size: u64) -> Result<(), Fail> {
        self.frame.l3_csum_replace(off, from, to, size)
    }

    fn l4_csum_replace(&self, off: usize, from: u64, to: u64, flags: u64) -> Result<(), Fail> {
        self.frame.l4_csum_replace(off, from, to, flags)
    }

    fn len(&self) -> u32 {
        self.frame.len()
    }

    fn ifindex(&self) -> u32 {
        self.frame.ifindex
    }

    fn arrived_on(&self) -> u32 {
        self.frame.arrived_on
    }
}

impl<const MODE: u32> Forwarding for AtHook<MODE> {
    const MODE: u32 = MODE;
    const SEES_OFFLOAD: bool = MODE != FAST_XDP;
    const REACHES_BRIDGES: bool = MODE != FAST_XDP;
    const KEEPS_HOPS: bool = MODE != FAST_XDP;

    fn fib_lookup(&self, q: &FibQuery) -> (i64, NextHop, u16) {
        self.queries.borrow_mut().push(*q);
        match self.routes.iter().find(|r| r.dst == q.dst) {
            // As the kernel: the MTU comes with the answer at TC only.
            Some(r) if r.answer == 0 && MODE == FAST_XDP => (0, r.hop, 0),
            Some(r) if r.answer == 0 => (0, r.hop, if r.mtu == 0 { DEFAULT_MTU } else { r.mtu }),
            Some(r) => (r.answer, NextHop::default(), 0),
            None => (FIB_NOT_FWDED, NextHop::default(), 0),
        }
    }

    fn fits(&self, mtu: u16) -> bool {
        self.frame.len() <= u32::from(mtu) + FORWARDABLE_SLACK
    }

    fn check_mtu(&self, ifindex: u32) -> i64 {
        self.mtu.get(&ifindex).copied().unwrap_or(0)
    }

    fn redirect(&self, ifindex: u32, peer: bool) -> bool {
        if self.refuse_redirect {
            return false;
        }
        self.redirected.set(Some((ifindex, peer)));
        true
    }
}
