//! One typed handle on a NAT's maps: opened from the lab's pin directory (a new NAT pins
//! its maps first and fills them through it), a typed field per map, so that every
//! operation reads and writes through the same names and types (and its errors name the
//! pin). The trace ring stays with its one consumer (`ops::trace`), and the uplink's
//! counters with `read_uplink_counters` (kernel-NAT labs have them too, and no NAT maps).

use std::path::{Path, PathBuf};

use aya::maps::{Array, DevMapHash, HashMap, Map, MapData, MapError, PerCpuArray};
use netns_common::{
    counters::NatCounter,
    fwd::{FastConfig, FdbEntry, MacKey, PortState},
    names::{
        MAP_FAST_CONFIG, MAP_NAT_BINDINGS, MAP_NAT_CONFIG, MAP_NAT_COUNTERS, MAP_NAT_DEVMAP, MAP_NAT_FDB,
        MAP_NAT_FDB_GEN, MAP_NAT_FLOWS, MAP_NAT_LAYOUT, MAP_NAT_PORTS,
    },
    nat::{Binding, BindingKey, Flow, FlowKey, NatConfig, WireAddr},
    translate::pair::{self, BindingStore, PairError, StoreError},
};

use super::{BPF_NOEXIST, EbpfError, StaticBinding, pin_dir, put_ifaces};

type Result<T, E = EbpfError> = std::result::Result<T, E>;

/// Every entry of the flow and binding tables as stored, expired ones included.
pub type RawTables = (Vec<(FlowKey, Flow)>, Vec<(BindingKey, Binding)>);

/// A lab's NAT maps, open.
pub struct NatMaps {
    dir: PathBuf,
    config: Array<MapData, NatConfig>,
    bindings: HashMap<MapData, BindingKey, Binding>,
    flows: HashMap<MapData, FlowKey, Flow>,
    fast: Array<MapData, FastConfig>,
    ports: HashMap<MapData, u32, PortState>,
    counters: PerCpuArray<MapData, u64>,
}

/// Opens the map pinned as `name` in `dir` as a `T`.
fn typed<T: TryFrom<Map, Error = MapError>>(dir: &Path, name: &str) -> Result<T> {
    let path = dir.join(name);
    let fail = |source| EbpfError::Map {
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(fail)?;
    T::try_from(Map::from_map_data(data).map_err(fail)?).map_err(fail)
}

impl NatMaps {
    /// Opens lab `prefix`'s pinned NAT maps.
    pub fn open(prefix: &str) -> Result<Self> {
        let dir = pin_dir(prefix);
        Ok(Self {
            config: typed(&dir, MAP_NAT_CONFIG)?,
            bindings: typed(&dir, MAP_NAT_BINDINGS)?,
            flows: typed(&dir, MAP_NAT_FLOWS)?,
            fast: typed(&dir, MAP_FAST_CONFIG)?,
            ports: typed(&dir, MAP_NAT_PORTS)?,
            counters: typed(&dir, MAP_NAT_COUNTERS)?,
            dir,
        })
    }

    /// The error of map `name` (pinned in this lab's directory).
    fn err(&self, name: &str) -> impl Fn(MapError) -> EbpfError + use<> {
        let path = self.dir.join(name);
        move |source| EbpfError::Map {
            path: path.clone(),
            source,
        }
    }

    /// The configuration the programs run with now.
    pub fn config(&self) -> Result<NatConfig> {
        self.config.get(&0, 0).map_err(self.err(MAP_NAT_CONFIG))
    }

    pub fn set_config(&mut self, cfg: NatConfig) -> Result<()> {
        let err = self.err(MAP_NAT_CONFIG);
        self.config.set(0, cfg, 0).map_err(err)
    }

    /// The fast path's configuration now.
    pub fn fast_config(&self) -> Result<FastConfig> {
        self.fast.get(&0, 0).map_err(self.err(MAP_FAST_CONFIG))
    }

    /// Writes the fast path's configuration with the next-hop generation moved on, so
    /// that no flow's cached next hop outlives a change of it.
    pub fn set_fast_config(&mut self, fc: FastConfig) -> Result<()> {
        let hop_gen = self.fast_config()?.hop_gen.wrapping_add(1);
        let err = self.err(MAP_FAST_CONFIG);
        self.fast.set(0, FastConfig { hop_gen, ..fc }, 0).map_err(err)
    }

    /// Moves the next-hop generation on: every flow's cached next hop is looked up again.
    pub fn renew_next_hops(&mut self) -> Result<()> {
        let fc = self.fast_config()?;
        self.set_fast_config(fc)
    }

    /// The flows as stored now, expired ones included (an entry removed while the table is
    /// walked is left out).
    pub fn flows(&self) -> Result<Vec<(FlowKey, Flow)>> {
        self.flows
            .iter()
            .collect::<Result<_, _>>()
            .map_err(self.err(MAP_NAT_FLOWS))
    }

    /// The mapping entries (both sides of each mapping) as stored now, expired included.
    pub fn bindings(&self) -> Result<Vec<(BindingKey, Binding)>> {
        self.bindings
            .iter()
            .collect::<Result<_, _>>()
            .map_err(self.err(MAP_NAT_BINDINGS))
    }

    /// Both tables ([`Self::flows`], [`Self::bindings`]).
    pub fn tables(&self) -> Result<RawTables> {
        Ok((self.flows()?, self.bindings()?))
    }

    /// Mapping entry `key`, if there is one.
    pub fn binding(&self, key: &BindingKey) -> Result<Option<Binding>> {
        match self.bindings.get(key, 0) {
            Ok(b) => Ok(Some(b)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(self.err(MAP_NAT_BINDINGS)(e)),
        }
    }

    /// Removes mapping entry `key` (absent: nothing to do).
    pub fn remove_binding(&mut self, key: &BindingKey) -> Result<()> {
        match self.bindings.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(self.err(MAP_NAT_BINDINGS)(e)),
        }
    }

    /// Writes both entries of every port forward for external address `ext` (a new NAT's
    /// tables are empty: nothing is refused).
    pub fn install_forwards(&mut self, ext: WireAddr, forwards: &[StaticBinding]) -> Result<()> {
        for f in forwards {
            pair::insert_static(self, f, ext).map_err(Self::pair_error)?;
        }
        Ok(())
    }

    /// A refused pair as an error of the mapping table.
    pub fn pair_error(e: PairError<EbpfError>) -> EbpfError {
        let (side, e) = match e {
            PairError::External(e) => ("external", e),
            PairError::Internal(e) => ("internal", e),
        };
        let why = match e {
            StoreError::Other(e) => return e,
            StoreError::Exists => "is there already",
            StoreError::Full => "finds the table full",
        };
        EbpfError::MapSet {
            name: MAP_NAT_BINDINGS,
            detail: format!("a port forward's {side} entry {why}"),
        }
    }

    /// Stamps the maps with the layout of the build that made them (read back by
    /// `upgrade`, before any map is opened: see `pinned_layout`).
    pub fn set_layout(&self, stamp: u64) -> Result<()> {
        let mut layout: Array<MapData, u64> = typed(&self.dir, MAP_NAT_LAYOUT)?;
        layout.set(0, stamp, 0).map_err(self.err(MAP_NAT_LAYOUT))
    }

    /// Lets XDP redirect to `ifaces` (of the current namespace).
    pub fn fill_devmap<'a>(&self, ifaces: impl Iterator<Item = &'a str>) -> Result<()> {
        let mut devmap: DevMapHash<MapData> = typed(&self.dir, MAP_NAT_DEVMAP)?;
        put_ifaces(&mut devmap, ifaces)
    }

    /// Sets what the fast path knows of interface `ifindex`.
    pub fn set_port(&mut self, ifindex: u32, state: PortState) -> Result<()> {
        let err = self.err(MAP_NAT_PORTS);
        self.ports.insert(ifindex, state, 0).map_err(err)
    }

    /// Sets behind which port the fast path saw MAC `mac` (the programs learn it; the test
    /// kit sets it).
    pub fn set_fdb(&self, mac: [u8; 6], entry: FdbEntry) -> Result<()> {
        let mut fdb: HashMap<MapData, MacKey, FdbEntry> = typed(&self.dir, MAP_NAT_FDB)?;
        fdb.insert(MacKey::of(mac), entry, 0)
            .map_err(self.err(MAP_NAT_FDB))?;
        // Moves the FDB generation to a value no CPU has noted (the programs add 1; this
        // adds 2^32, so a racing program's add, lost here, still leaves every note stale).
        let mut generation: Array<MapData, u64> = typed(&self.dir, MAP_NAT_FDB_GEN)?;
        let now = generation.get(&0, 0).map_err(self.err(MAP_NAT_FDB_GEN))?;
        generation
            .set(0, now.wrapping_add(1 << 32), 0)
            .map_err(self.err(MAP_NAT_FDB_GEN))
    }

    /// The fast path's port table, by ifindex.
    pub fn ports(&mut self) -> &mut HashMap<MapData, u32, PortState> {
        &mut self.ports
    }

    /// The NAT's counters, by name, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>> {
        NatCounter::ALL
            .iter()
            .map(|c| {
                let per_cpu = self
                    .counters
                    .get(&(*c as u32), 0)
                    .map_err(self.err(MAP_NAT_COUNTERS))?;
                Ok((c.name(), per_cpu.iter().sum()))
            })
            .collect()
    }
}

/// The pinned mapping table as a store of entries: user space inserts and removes port
/// forwards through the same pair operations as the host tests check
/// (`netns_common::translate::pair`).
impl BindingStore for NatMaps {
    type Error = EbpfError;

    fn insert_new(&mut self, key: &BindingKey, b: &Binding) -> Result<(), StoreError<EbpfError>> {
        match self.bindings.insert(*key, *b, BPF_NOEXIST) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) => match e.io_error.raw_os_error() {
                Some(libc::EEXIST) => Err(StoreError::Exists),
                Some(libc::E2BIG | libc::ENOMEM) => Err(StoreError::Full),
                _ => Err(StoreError::Other(self.err(MAP_NAT_BINDINGS)(
                    MapError::SyscallError(e),
                ))),
            },
            Err(e) => Err(StoreError::Other(self.err(MAP_NAT_BINDINGS)(e))),
        }
    }

    fn remove(&mut self, key: &BindingKey) -> Result<()> {
        self.remove_binding(key)
    }
}
