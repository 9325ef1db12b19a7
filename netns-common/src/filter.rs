//! Selecting conntrack entries, as conntrack(8) does: by protocol, address, port, TCP state
//! and origin. Pure, so that `netns-nat conntrack` (list, count, delete, watch) and its
//! tests agree on what a filter selects. Addresses and ports are in wire order, as stored.

use crate::nat::{
    Binding, BindingKey, Flow, FlowKey, PROTO_TCP, SIDE_EXTERNAL, SIDE_REMOTE, TcpState, WireAddr, WirePort,
};

/// Every field that is set must match; an empty filter selects everything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryFilter {
    pub proto: Option<u8>,
    /// An address on any side: internal, external or remote.
    pub addr: Option<WireAddr>,
    /// A port (or ICMP echo identifier) on any side.
    pub port: Option<WirePort>,
    /// A TCP state (flows only: a filter with a state selects no mapping).
    pub state: Option<TcpState>,
    /// `ORIGIN_OUTBOUND` or `ORIGIN_INBOUND` (flows only, like `state`).
    pub origin: Option<u8>,
}

impl EntryFilter {
    /// Whether flow `k` -> `f` is selected.
    pub fn flow(&self, k: &FlowKey, f: &Flow) -> bool {
        self.proto.is_none_or(|p| p == k.proto)
            && self
                .addr
                .is_none_or(|a| a == k.int_addr || a == k.rem_addr || a == f.ext_addr)
            && self
                .port
                .is_none_or(|p| p == k.int_port || p == k.rem_port || p == f.ext_port)
            && self
                .state
                .is_none_or(|s| k.proto == PROTO_TCP && s as u8 == f.state)
            && self.origin.is_none_or(|o| o == f.origin)
    }

    /// Whether mapping `b` is selected (judged by its external entry `k`, or its one entry
    /// for an address-only mapping; internal entries are not mappings of their own).
    pub fn mapping(&self, k: &BindingKey, b: &Binding) -> bool {
        (k.side == SIDE_EXTERNAL || k.side == SIDE_REMOTE)
            && self.state.is_none()
            && self.origin.is_none()
            && self.proto.is_none_or(|p| p == k.proto)
            && self.addr.is_none_or(|a| a == b.int_addr || a == b.ext_addr)
            && self.port.is_none_or(|p| p == b.int_port || p == b.ext_port)
    }

    /// Whether the filter selects only flows (it names a state or an origin).
    pub fn flows_only(&self) -> bool {
        self.state.is_some() || self.origin.is_some()
    }
}

/// [`Selector::flags`]: which fields select.
pub const SEL_PROTO: u32 = 1;
pub const SEL_ADDR: u32 = 2;
pub const SEL_PORT: u32 = 4;
pub const SEL_STATE: u32 = 8;
pub const SEL_ORIGIN: u32 = 16;
/// Mappings: only port forwards (static), and only the one on external port `ext_port`.
pub const SEL_FORWARD: u32 = 32;
/// Mappings: port forwards too (else they are kept).
pub const SEL_WITH_FORWARDS: u32 = 64;

/// An [`EntryFilter`] as plain data, for the maintenance program (`translate::maintain`),
/// plus what only removals need (forwards).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    pub flags: u32,
    pub addr: WireAddr,
    pub port: WirePort,
    pub ext_port: WirePort,
    pub proto: u8,
    pub state: u8,
    pub origin: u8,
    pub _pad: u8,
}

impl Selector {
    /// A filter's selection; forwards are kept.
    pub fn of(f: &EntryFilter) -> Selector {
        let mut s = Selector::default();
        let mut set = |flag: u32| s.flags |= flag;
        if f.proto.is_some() {
            set(SEL_PROTO);
        }
        if f.addr.is_some() {
            set(SEL_ADDR);
        }
        if f.port.is_some() {
            set(SEL_PORT);
        }
        if f.state.is_some() {
            set(SEL_STATE);
        }
        if f.origin.is_some() {
            set(SEL_ORIGIN);
        }
        s.proto = f.proto.unwrap_or(0);
        s.addr = f.addr.unwrap_or_default();
        s.port = f.port.unwrap_or_default();
        s.state = f.state.map_or(0, |st| st as u8);
        s.origin = f.origin.unwrap_or(0);
        s
    }

    /// The port forward of `proto` on external port `ext_port`.
    pub fn forward(proto: u8, ext_port: WirePort) -> Selector {
        Selector {
            flags: SEL_PROTO | SEL_FORWARD,
            proto,
            ext_port,
            ..Selector::default()
        }
    }

    /// The filter it carries.
    pub fn filter(&self) -> EntryFilter {
        let on = |flag: u32| self.flags & flag != 0;
        EntryFilter {
            proto: on(SEL_PROTO).then_some(self.proto),
            addr: on(SEL_ADDR).then_some(self.addr),
            port: on(SEL_PORT).then_some(self.port),
            state: on(SEL_STATE).then_some(TcpState::from_u8(self.state)),
            origin: on(SEL_ORIGIN).then_some(self.origin),
        }
    }

    /// Whether flow `k` -> `f` is selected (a forward's selection selects no flow itself:
    /// its flows go with it).
    pub fn flow(&self, k: &FlowKey, f: &Flow) -> bool {
        self.flags & SEL_FORWARD == 0 && self.filter().flow(k, f)
    }

    /// Whether mapping entry `k` -> `b` is selected.
    pub fn mapping(&self, k: &BindingKey, b: &Binding) -> bool {
        if self.flags & SEL_FORWARD != 0 {
            return b.is_static()
                && k.side == SIDE_EXTERNAL
                && k.proto == self.proto
                && k.port == self.ext_port;
        }
        (self.flags & SEL_WITH_FORWARDS != 0 || !b.is_static()) && self.filter().mapping(k, b)
    }
}

/// Whether flow `k` -> `f` uses mapping `b` (of protocol `proto`): a flow goes with its
/// mapping when the mapping is deleted.
pub fn uses(k: &FlowKey, f: &Flow, proto: u8, b: &Binding) -> bool {
    k.proto == proto
        && f.ext_addr == b.ext_addr
        && f.ext_port == b.ext_port
        && k.int_addr == b.int_addr
        && k.int_port == b.int_port
}

#[cfg(feature = "user")]
// Safety: #[repr(C)], integer fields only, no padding (4 + 4 + 2 + 2 + 1 + 1 + 1 + 1).
unsafe impl aya::Pod for Selector {}

#[cfg(test)]
mod tests {
    use core::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;
    use crate::nat::{ORIGIN_INBOUND, ORIGIN_OUTBOUND, PROTO_UDP, addr_to_wire, port_to_wire};

    fn a(d: u8) -> WireAddr {
        addr_to_wire(Ipv4Addr::new(192, 168, 15, d))
    }

    fn flow() -> (FlowKey, Flow) {
        let k = FlowKey::new(PROTO_TCP, a(1), port_to_wire(40000), a(200), port_to_wire(80));
        let f = Flow {
            ext_addr: a(100),
            ext_port: port_to_wire(1234),
            state: TcpState::Established as u8,
            origin: ORIGIN_OUTBOUND,
            ..Flow::default()
        };
        (k, f)
    }

    #[test]
    fn each_field_selects_on_any_side() {
        let (k, f) = flow();
        assert!(EntryFilter::default().flow(&k, &f));
        for addr in [1, 100, 200] {
            let sel = EntryFilter {
                addr: Some(a(addr)),
                ..Default::default()
            };
            assert!(sel.flow(&k, &f), "address .{addr}");
        }
        for port in [40000, 1234, 80] {
            let sel = EntryFilter {
                port: Some(port_to_wire(port)),
                ..Default::default()
            };
            assert!(sel.flow(&k, &f), "port {port}");
        }
        let no = [
            EntryFilter {
                proto: Some(PROTO_UDP),
                ..Default::default()
            },
            EntryFilter {
                addr: Some(a(7)),
                ..Default::default()
            },
            EntryFilter {
                port: Some(port_to_wire(7)),
                ..Default::default()
            },
            EntryFilter {
                state: Some(TcpState::FinIn),
                ..Default::default()
            },
            EntryFilter {
                origin: Some(ORIGIN_INBOUND),
                ..Default::default()
            },
        ];
        for sel in no {
            assert!(!sel.flow(&k, &f), "{sel:?}");
        }
    }

    #[test]
    fn a_state_or_origin_selects_no_mapping_and_internal_entries_never() {
        let b = Binding {
            int_addr: a(1),
            ext_addr: a(100),
            int_port: port_to_wire(40000),
            ext_port: port_to_wire(1234),
            ..Binding::default()
        };
        let ext = BindingKey::external(PROTO_TCP, b.ext_addr, b.ext_port);
        let int = BindingKey::internal(PROTO_TCP, b.int_addr, b.int_port);
        assert!(EntryFilter::default().mapping(&ext, &b));
        assert!(!EntryFilter::default().mapping(&int, &b));
        let state = EntryFilter {
            state: Some(TcpState::Established),
            ..Default::default()
        };
        assert!(!state.mapping(&ext, &b) && state.flows_only());
        let (k, f) = flow();
        assert!(uses(
            &k,
            &f,
            PROTO_TCP,
            &Binding {
                ext_addr: a(100),
                ..b
            }
        ));
        assert!(!uses(&k, &f, PROTO_UDP, &b));
    }

    #[test]
    fn a_selector_carries_its_filter_and_selects_forwards_only_when_asked() {
        let f = EntryFilter {
            proto: Some(PROTO_TCP),
            addr: None,
            port: Some(port_to_wire(80)),
            state: Some(TcpState::Established),
            origin: Some(ORIGIN_INBOUND),
        };
        assert_eq!(Selector::of(&f).filter(), f);
        assert_eq!(
            Selector::of(&EntryFilter::default()).filter(),
            EntryFilter::default()
        );
        let fwd = Binding {
            int_addr: a(2),
            ext_addr: a(100),
            int_port: port_to_wire(80),
            ext_port: port_to_wire(80),
            flags: crate::nat::BINDING_STATIC,
            ..Binding::default()
        };
        let k = BindingKey::external(PROTO_TCP, fwd.ext_addr, fwd.ext_port);
        let by_port = Selector::of(&EntryFilter {
            port: Some(port_to_wire(80)),
            ..Default::default()
        });
        assert!(!by_port.mapping(&k, &fwd), "forwards are kept");
        assert!(Selector::forward(PROTO_TCP, port_to_wire(80)).mapping(&k, &fwd));
        assert!(!Selector::forward(PROTO_UDP, port_to_wire(80)).mapping(&k, &fwd));
        assert!(!Selector::forward(PROTO_TCP, port_to_wire(81)).mapping(&k, &fwd));
        let dynamic = Binding { flags: 0, ..fwd };
        assert!(!Selector::forward(PROTO_TCP, port_to_wire(80)).mapping(&k, &dynamic));
        let (fk, ff) = flow();
        assert!(!Selector::forward(PROTO_TCP, port_to_wire(80)).flow(&fk, &ff));
    }

    proptest! {
        /// A filter with one field set selects exactly the flows that carry that value.
        #[test]
        fn a_port_filter_matches_iff_some_port_is_it(p: u16, q: u16, r: u16, s: u16) {
            let (p, q, r, s) = (WirePort(p), WirePort(q), WirePort(r), WirePort(s));
            let k = FlowKey::new(PROTO_UDP, a(1), q, a(2), r);
            let f = Flow { ext_port: s, ..Flow::default() };
            let sel = EntryFilter { port: Some(p), ..Default::default() };
            prop_assert_eq!(sel.flow(&k, &f), p == q || p == r || p == s);
        }
    }
}
