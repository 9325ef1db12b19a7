//! Addresses and ports as they are on the wire: network byte order, held in a native integer
//! exactly as a program loads it from a packet. Their own types, so that a byte-order
//! mistake (a host-order number where the packet's bytes belong, or the reverse) is a type
//! error rather than a silently wrong key. The raw bits are `.0`, for checksum arithmetic and
//! compare-and-swap words, where the order does not matter.
//!
//! A host-order number where a key wants the packet's bytes does not compile:
//!
//! ```compile_fail
//! use netns_common::nat::{BindingKey, PROTO_TCP};
//! // 192.168.1.2:80 written as host-order numbers: refused.
//! let key = BindingKey::external(PROTO_TCP, 0xc0a8_0102_u32, 80_u16);
//! ```
//!
//! ```
//! use core::net::Ipv4Addr;
//! use netns_common::nat::{BindingKey, PROTO_TCP, WireAddr, WirePort};
//! let key = BindingKey::external(PROTO_TCP, WireAddr::new(Ipv4Addr::new(192, 168, 1, 2)), WirePort::new(80));
//! assert_eq!(key.port.get(), 80);
//! ```

use core::{fmt, net::Ipv4Addr};

/// An IPv4 address in network byte order.
#[repr(transparent)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WireAddr(pub u32);

impl WireAddr {
    /// 0.0.0.0 (in a map entry: none, or being removed).
    pub const UNSPECIFIED: WireAddr = WireAddr(0);

    pub const fn new(a: Ipv4Addr) -> Self {
        WireAddr(a.to_bits().to_be())
    }
    /// The address a host-order number names.
    pub const fn from_host(h: u32) -> Self {
        WireAddr(h.to_be())
    }
    /// The address as a host-order number.
    pub const fn to_host(self) -> u32 {
        u32::from_be(self.0)
    }
    pub const fn ipv4(self) -> Ipv4Addr {
        Ipv4Addr::from_bits(self.to_host())
    }
    pub const fn is_unspecified(self) -> bool {
        self.0 == 0
    }
}

impl From<Ipv4Addr> for WireAddr {
    fn from(a: Ipv4Addr) -> Self {
        WireAddr::new(a)
    }
}

impl From<WireAddr> for Ipv4Addr {
    fn from(a: WireAddr) -> Self {
        a.ipv4()
    }
}

impl fmt::Display for WireAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.ipv4(), f)
    }
}

impl fmt::Debug for WireAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.ipv4(), f)
    }
}

/// A TCP or UDP port (or ICMP echo identifier) in network byte order.
#[repr(transparent)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WirePort(pub u16);

impl WirePort {
    /// Port 0 (in a key: none, as for ICMP echo's remote side).
    pub const ZERO: WirePort = WirePort(0);

    /// The port numbered `host`.
    pub const fn new(host: u16) -> Self {
        WirePort(host.to_be())
    }
    /// The port's number.
    pub const fn get(self) -> u16 {
        u16::from_be(self.0)
    }
}

impl fmt::Display for WirePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.get(), f)
    }
}

impl fmt::Debug for WirePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.get(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_its_bytes_in_wire_order() {
        let a = WireAddr::new(Ipv4Addr::new(192, 168, 15, 2));
        assert_eq!(a.0.to_ne_bytes(), [192, 168, 15, 2]);
        assert_eq!(a.ipv4(), Ipv4Addr::new(192, 168, 15, 2));
        assert_eq!(a.to_host(), 0xc0a8_0f02);
        assert_eq!(WireAddr::from_host(0xc0a8_0f02), a);
        extern crate std;
        assert_eq!(std::format!("{a} {a:?}"), "192.168.15.2 192.168.15.2");
    }

    #[test]
    fn a_port_holds_its_bytes_in_wire_order() {
        let p = WirePort::new(0x1f90);
        assert_eq!(p.0.to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(p.get(), 8080);
        extern crate std;
        assert_eq!(std::format!("{p}"), "8080");
    }
}
