//! A mapping's two entries as one: the external entry (the port, what inbound packets find)
//! and the internal one (the endpoint, what outbound packets find) are inserted exclusively
//! and undone together, so that a port never has two owners and an endpoint never two
//! ports. Written once for every store of entries: the programs' tables (through
//! [`Tables`]) and user space's pinned map (`netns-user`'s `NatMaps`), so the host tests
//! here cover both. The programs' own dynamic claim, which races other CPUs, is
//! [`super::bindings`]'s; removal is [`super::maintain`]'s, run by the maintenance program.

use super::{InsertError, Tables};
use crate::nat::{BINDING_STATIC, Binding, BindingKey, WireAddr, WirePort};

/// Why a store refused an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError<E> {
    /// The key has an entry already.
    Exists,
    /// The table is full.
    Full,
    /// Anything else the store failed with (user space: the map's error).
    Other(E),
}

/// A store of mapping entries.
pub trait BindingStore {
    type Error;
    /// Inserts `b` at `key` only if the key has no entry.
    fn insert_new(&mut self, key: &BindingKey, b: &Binding) -> Result<(), StoreError<Self::Error>>;
    /// Removes the entry at `key` (none: nothing to do).
    fn remove(&mut self, key: &BindingKey) -> Result<(), Self::Error>;
}

/// The programs' tables, as a store (their methods take `&self`: map elements are updated in
/// place).
impl<T: Tables + ?Sized> BindingStore for &T {
    type Error = core::convert::Infallible;

    fn insert_new(&mut self, key: &BindingKey, b: &Binding) -> Result<(), StoreError<Self::Error>> {
        self.insert_binding(key, b).map_err(|e| match e {
            InsertError::Exists => StoreError::Exists,
            InsertError::Full => StoreError::Full,
        })
    }

    fn remove(&mut self, key: &BindingKey) -> Result<(), Self::Error> {
        self.remove_binding(key);
        Ok(())
    }
}

/// A port forward as the NAT holds it: a static mapping (it never expires) of external port
/// `ext_port` to an internal endpoint. Ports and address in wire order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaticBinding {
    pub proto: u8,
    pub ext_port: WirePort,
    pub int_addr: WireAddr,
    pub int_port: WirePort,
}

impl StaticBinding {
    /// Its two entries (external, internal) for external address `ext_addr`.
    pub fn entries(&self, ext_addr: WireAddr) -> [(BindingKey, Binding); 2] {
        let b = Binding {
            int_addr: self.int_addr,
            ext_addr,
            int_port: self.int_port,
            ext_port: self.ext_port,
            flags: BINDING_STATIC,
            open_flows: 0,
            _pad: 0,
            expires_ns: u64::MAX,
            idle_until_ns: u64::MAX,
        };
        [
            (BindingKey::external(self.proto, ext_addr, self.ext_port), b),
            (BindingKey::internal(self.proto, self.int_addr, self.int_port), b),
        ]
    }
}

/// Which entry of a pair a store refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairError<E> {
    /// The external entry: the port is held (`Exists`), or no room.
    External(StoreError<E>),
    /// The internal entry: the endpoint is mapped already (`Exists`), or no room. The
    /// external entry inserted before it was removed again.
    Internal(StoreError<E>),
}

/// Inserts static mapping `s` on external address `ext_addr`: the external entry, then the
/// internal one, each only where there is none; if the internal one is refused, the external
/// one is removed again, so a refusal leaves the store as it was.
pub fn insert_static<S: BindingStore>(
    store: &mut S,
    s: &StaticBinding,
    ext_addr: WireAddr,
) -> Result<(), PairError<S::Error>> {
    let [(ekey, eb), (ikey, ib)] = s.entries(ext_addr);
    store.insert_new(&ekey, &eb).map_err(PairError::External)?;
    if let Err(e) = store.insert_new(&ikey, &ib) {
        // Undo: the port goes back as it was. (A store that fails here too keeps an
        // external entry without its internal one, which the sweep removes.)
        let _ = store.remove(&ekey);
        return Err(PairError::Internal(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::{
        host::{MemTables, Sizes},
        nat::{NatConfig, PROTO_TCP, PROTO_UDP},
    };

    const EXT: WireAddr = WireAddr::new(core::net::Ipv4Addr::new(192, 168, 1, 2));
    const BLUE: WireAddr = WireAddr::new(core::net::Ipv4Addr::new(192, 168, 15, 2));
    const RED: WireAddr = WireAddr::new(core::net::Ipv4Addr::new(192, 168, 15, 3));

    fn forward(proto: u8, port: u16, int_addr: WireAddr, int_port: u16) -> StaticBinding {
        StaticBinding {
            proto,
            ext_port: WirePort::new(port),
            int_addr,
            int_port: WirePort::new(int_port),
        }
    }

    fn tables(bindings: usize) -> MemTables {
        let sizes = Sizes {
            bindings,
            ..Sizes::default()
        };
        MemTables::new(NatConfig::default(), sizes, 1)
    }

    fn sorted(t: &MemTables) -> std::vec::Vec<(BindingKey, Binding)> {
        let mut v = t.bindings();
        v.sort_by_key(|(k, _)| (k.side, k.proto, k.addr, k.port));
        v
    }

    #[test]
    fn a_static_pair_is_both_entries_each_naming_the_other() {
        let t = tables(16);
        let f = forward(PROTO_TCP, 80, BLUE, 8080);
        insert_static(&mut &t, &f, EXT).unwrap();
        let [(ekey, _), (ikey, _)] = f.entries(EXT);
        for key in [ekey, ikey] {
            let b = t.binding(&key).expect("both entries");
            assert!(b.is_static());
            assert_eq!((b.ext_addr, b.ext_port), (EXT, WirePort::new(80)));
            assert_eq!((b.int_addr, b.int_port), (BLUE, WirePort::new(8080)));
        }
        assert_eq!(t.bindings().len(), 2);
    }

    #[test]
    fn a_held_port_is_refused_and_nothing_changes() {
        let t = tables(16);
        insert_static(&mut &t, &forward(PROTO_TCP, 80, BLUE, 80), EXT).unwrap();
        let before = sorted(&t);
        let again = insert_static(&mut &t, &forward(PROTO_TCP, 80, RED, 80), EXT);
        assert_eq!(again, Err(PairError::External(StoreError::Exists)));
        assert_eq!(sorted(&t), before);
        // Another protocol's port 80 is another port.
        insert_static(&mut &t, &forward(PROTO_UDP, 80, RED, 80), EXT).unwrap();
    }

    #[test]
    fn a_mapped_endpoint_is_refused_and_the_port_given_back() {
        let t = tables(16);
        insert_static(&mut &t, &forward(PROTO_TCP, 80, BLUE, 80), EXT).unwrap();
        let before = sorted(&t);
        // Blue:80 already has a port: a second one would give it two.
        let second = insert_static(&mut &t, &forward(PROTO_TCP, 81, BLUE, 80), EXT);
        assert_eq!(second, Err(PairError::Internal(StoreError::Exists)));
        assert_eq!(sorted(&t), before, "port 81's external entry was not undone");
    }

    #[test]
    fn a_full_table_refuses_the_pair_whole() {
        // Room for one entry: the external goes in, the internal does not, and the external
        // is taken out again.
        let t = tables(1);
        let r = insert_static(&mut &t, &forward(PROTO_TCP, 80, BLUE, 80), EXT);
        assert_eq!(r, Err(PairError::Internal(StoreError::Full)));
        assert!(t.bindings().is_empty());
    }
}
