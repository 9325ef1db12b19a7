//! Address and name parsing shared by configuration and tools: pure, `no_std`, host-tested.

use core::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// Why an address or a name was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// No `/len` after the address.
    MissingPrefixLen,
    /// The part before `/` is not a dotted-quad IPv4 address.
    BadAddress,
    /// The prefix length is not a number in 0..=32.
    BadPrefixLen,
    /// An interface name longer than [`IFNAME_MAX`] bytes.
    NameTooLong { len: usize },
    /// An empty name.
    EmptyName,
    /// A character the kernel (or a path) would not take: `/`, whitespace, `:` or a control.
    BadNameChar { ch: char },
    /// `.` and `..` are refused by the kernel as interface names.
    ReservedName,
    /// No `/len` after an IPv6 address.
    MissingPrefixLen6,
    /// The part before `/` is not an IPv6 address.
    BadAddress6,
    /// An IPv6 prefix length not in 0..=128.
    BadPrefixLen6,
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::MissingPrefixLen => {
                f.write_str("missing prefix length (write it as a.b.c.d/len, e.g. 192.168.15.1/24)")
            }
            NetError::BadAddress => f.write_str("not an IPv4 address"),
            NetError::BadPrefixLen => f.write_str("prefix length must be 0 to 32"),
            NetError::NameTooLong { len } => {
                write!(f, "is {len} bytes long; interface names are at most {IFNAME_MAX}")
            }
            NetError::EmptyName => f.write_str("is empty"),
            NetError::BadNameChar { ch } => write!(f, "contains {ch:?}, which is not allowed"),
            NetError::ReservedName => f.write_str("is reserved"),
            NetError::MissingPrefixLen6 => {
                f.write_str("missing prefix length (write it as addr/len, e.g. fd00:15::1/64)")
            }
            NetError::BadAddress6 => f.write_str("not an IPv6 address"),
            NetError::BadPrefixLen6 => f.write_str("prefix length must be 0 to 128"),
        }
    }
}

impl core::error::Error for NetError {}

/// An IPv4 interface address with its prefix length, as in `192.168.15.1/24`.
///
/// The host part is kept: `192.168.15.1/24` is an address on a /24, not the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    /// Builds one, refusing a prefix length over 32.
    pub const fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Self, NetError> {
        if prefix_len > 32 {
            return Err(NetError::BadPrefixLen);
        }
        Ok(Self { addr, prefix_len })
    }

    /// The netmask as a host-order integer.
    pub const fn mask(&self) -> u32 {
        if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix_len as u32)
        }
    }

    /// The network this address is on (host bits cleared).
    pub const fn network(&self) -> Ipv4Cidr {
        Ipv4Cidr {
            addr: Ipv4Addr::from_bits(self.addr.to_bits() & self.mask()),
            prefix_len: self.prefix_len,
        }
    }

    /// Whether `ip` lies in this address's network.
    pub const fn contains(&self, ip: Ipv4Addr) -> bool {
        ip.to_bits() & self.mask() == self.addr.to_bits() & self.mask()
    }
}

impl FromStr for Ipv4Cidr {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s.trim().split_once('/').ok_or(NetError::MissingPrefixLen)?;
        let addr = Ipv4Addr::from_str(addr).map_err(|_| NetError::BadAddress)?;
        // u8::from_str accepts a leading '+'; a prefix length is plain digits.
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) || len.len() > 2 {
            return Err(NetError::BadPrefixLen);
        }
        let len = u8::from_str(len).map_err(|_| NetError::BadPrefixLen)?;
        Ipv4Cidr::new(addr, len)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// The prefix length after `/`: plain digits (u8::from_str would take a leading '+'), at
/// most `max`.
fn prefix_len(len: &str, max: u8, err: NetError) -> Result<u8, NetError> {
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) || len.len() > 3 {
        return Err(err);
    }
    match u8::from_str(len) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(err),
    }
}

/// An IPv6 interface address with its prefix length, as in `fd00:15::1/64` (the host part
/// kept, as for [`Ipv4Cidr`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv6Cidr {
    pub addr: Ipv6Addr,
    pub prefix_len: u8,
}

impl Ipv6Cidr {
    /// Builds one, refusing a prefix length over 128.
    pub const fn new(addr: Ipv6Addr, prefix_len: u8) -> Result<Self, NetError> {
        if prefix_len > 128 {
            return Err(NetError::BadPrefixLen6);
        }
        Ok(Self { addr, prefix_len })
    }

    /// The netmask as an integer.
    pub const fn mask(&self) -> u128 {
        if self.prefix_len == 0 {
            0
        } else {
            u128::MAX << (128 - self.prefix_len as u32)
        }
    }

    /// The network this address is on (host bits cleared).
    pub const fn network(&self) -> Ipv6Cidr {
        Ipv6Cidr {
            addr: Ipv6Addr::from_bits(self.addr.to_bits() & self.mask()),
            prefix_len: self.prefix_len,
        }
    }

    /// Whether `ip` lies in this address's network.
    pub const fn contains(&self, ip: Ipv6Addr) -> bool {
        ip.to_bits() & self.mask() == self.addr.to_bits() & self.mask()
    }
}

impl FromStr for Ipv6Cidr {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s.trim().split_once('/').ok_or(NetError::MissingPrefixLen6)?;
        let addr = Ipv6Addr::from_str(addr).map_err(|_| NetError::BadAddress6)?;
        Ipv6Cidr::new(addr, prefix_len(len, 128, NetError::BadPrefixLen6)?)
    }
}

impl fmt::Display for Ipv6Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// An interface address or route destination of either family. Parsed as IPv6 when it
/// holds a `:` (no IPv4 form does), so an IPv4 mistake reads as one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpCidr {
    V4(Ipv4Cidr),
    V6(Ipv6Cidr),
}

impl IpCidr {
    pub const fn network(&self) -> IpCidr {
        match self {
            IpCidr::V4(c) => IpCidr::V4(c.network()),
            IpCidr::V6(c) => IpCidr::V6(c.network()),
        }
    }

    /// Whether `ip` lies in this address's network (never across families).
    pub const fn contains(&self, ip: IpAddr) -> bool {
        match (self, ip) {
            (IpCidr::V4(c), IpAddr::V4(a)) => c.contains(a),
            (IpCidr::V6(c), IpAddr::V6(a)) => c.contains(a),
            _ => false,
        }
    }

    pub const fn addr(&self) -> IpAddr {
        match self {
            IpCidr::V4(c) => IpAddr::V4(c.addr),
            IpCidr::V6(c) => IpAddr::V6(c.addr),
        }
    }

    pub const fn prefix_len(&self) -> u8 {
        match self {
            IpCidr::V4(c) => c.prefix_len,
            IpCidr::V6(c) => c.prefix_len,
        }
    }

    /// The IPv4 address, if it is one.
    pub const fn v4(&self) -> Option<Ipv4Cidr> {
        match self {
            IpCidr::V4(c) => Some(*c),
            IpCidr::V6(_) => None,
        }
    }

    pub const fn is_ipv6(&self) -> bool {
        matches!(self, IpCidr::V6(_))
    }
}

impl FromStr for IpCidr {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            s.parse().map(IpCidr::V6)
        } else {
            s.parse().map(IpCidr::V4)
        }
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpCidr::V4(c) => c.fmt(f),
            IpCidr::V6(c) => c.fmt(f),
        }
    }
}

/// Checks an interface name the way the kernel's `dev_valid_name` does.
pub fn validate_ifname(name: &str) -> Result<(), NetError> {
    if name.is_empty() {
        return Err(NetError::EmptyName);
    }
    if name.len() > IFNAME_MAX {
        return Err(NetError::NameTooLong { len: name.len() });
    }
    if name == "." || name == ".." {
        return Err(NetError::ReservedName);
    }
    match name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        Some(ch) => Err(NetError::BadNameChar { ch }),
        None => Ok(()),
    }
}

/// Checks a namespace name or lab prefix: it becomes a file name under `/run/netns`, so
/// only letters, digits, `-`, `_` and `.` (and no leading `.`).
pub fn validate_ns_name(name: &str) -> Result<(), NetError> {
    if name.is_empty() {
        return Err(NetError::EmptyName);
    }
    if name.starts_with('.') {
        return Err(NetError::ReservedName);
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(ch) => Err(NetError::BadNameChar { ch }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::string::ToString;

    #[test]
    fn parses_interface_addresses() {
        let c: Ipv4Cidr = "192.168.15.1/24".parse().unwrap();
        assert_eq!(c.addr, Ipv4Addr::new(192, 168, 15, 1));
        assert_eq!(c.prefix_len, 24);
        assert_eq!(c.network().to_string(), "192.168.15.0/24");
        assert!(c.contains(Ipv4Addr::new(192, 168, 15, 254)));
        assert!(!c.contains(Ipv4Addr::new(192, 168, 1, 2)));
        assert_eq!("0.0.0.0/0".parse::<Ipv4Cidr>().unwrap().mask(), 0);
        assert_eq!("10.0.0.1/32".parse::<Ipv4Cidr>().unwrap().mask(), u32::MAX);
    }

    #[test]
    fn refuses_bad_addresses() {
        // The classic mistake of the walkthrough: the forgotten netmask.
        assert_eq!(
            "192.168.15.1".parse::<Ipv4Cidr>(),
            Err(NetError::MissingPrefixLen)
        );
        assert_eq!("192.168.15.300/24".parse::<Ipv4Cidr>(), Err(NetError::BadAddress));
        assert_eq!("192.168.15/24".parse::<Ipv4Cidr>(), Err(NetError::BadAddress));
        assert_eq!("fe80::1/64".parse::<Ipv4Cidr>(), Err(NetError::BadAddress));
        assert_eq!("192.168.15.1/33".parse::<Ipv4Cidr>(), Err(NetError::BadPrefixLen));
        assert_eq!("192.168.15.1/".parse::<Ipv4Cidr>(), Err(NetError::BadPrefixLen));
        assert_eq!("192.168.15.1/+8".parse::<Ipv4Cidr>(), Err(NetError::BadPrefixLen));
        assert_eq!("192.168.15.1/-1".parse::<Ipv4Cidr>(), Err(NetError::BadPrefixLen));
    }

    #[test]
    fn interface_names_follow_the_kernel() {
        assert!(validate_ifname("veth-red-br").is_ok());
        assert!(validate_ifname("abcdefghijklmno").is_ok()); // 15 bytes
        assert_eq!(
            validate_ifname("abcdefghijklmnop"),
            Err(NetError::NameTooLong { len: 16 })
        );
        assert_eq!(validate_ifname(""), Err(NetError::EmptyName));
        assert_eq!(validate_ifname(".."), Err(NetError::ReservedName));
        assert_eq!(validate_ifname("a/b"), Err(NetError::BadNameChar { ch: '/' }));
        assert_eq!(validate_ifname("a b"), Err(NetError::BadNameChar { ch: ' ' }));
        assert_eq!(validate_ifname("eth0:1"), Err(NetError::BadNameChar { ch: ':' }));
    }

    #[test]
    fn namespace_names_are_safe_file_names() {
        assert!(validate_ns_name("nn-red").is_ok());
        assert!(validate_ns_name("t1-").is_ok());
        assert_eq!(validate_ns_name("../etc"), Err(NetError::ReservedName));
        assert_eq!(validate_ns_name("a/b"), Err(NetError::BadNameChar { ch: '/' }));
        assert_eq!(validate_ns_name(""), Err(NetError::EmptyName));
    }

    #[test]
    fn parses_ipv6_interface_addresses_and_says_what_is_wrong() {
        let c: IpCidr = "fd00:15::1/64".parse().unwrap();
        assert!(c.is_ipv6());
        assert_eq!(c.network().to_string(), "fd00:15::/64");
        assert!(c.contains("fd00:15::fe".parse().unwrap()));
        assert!(!c.contains("fd00:1::2".parse().unwrap()));
        assert!(
            !c.contains("192.168.15.1".parse().unwrap()),
            "never across families"
        );
        assert_eq!("fd00:15::1".parse::<IpCidr>(), Err(NetError::MissingPrefixLen6));
        assert_eq!("fd00:15::g/64".parse::<IpCidr>(), Err(NetError::BadAddress6));
        assert_eq!("fd00:15::1/129".parse::<IpCidr>(), Err(NetError::BadPrefixLen6));
        assert_eq!("fd00:15::1/+64".parse::<IpCidr>(), Err(NetError::BadPrefixLen6));
        // An IPv4 mistake is still told as one.
        assert_eq!("192.168.15.1".parse::<IpCidr>(), Err(NetError::MissingPrefixLen));
        assert_eq!("::/0".parse::<IpCidr>().unwrap().prefix_len(), 0);
    }

    proptest! {
        #[test]
        fn ipv6_display_parse_round_trip(bits: u128, len in 0u8..=128, other: u128) {
            let c = IpCidr::V6(Ipv6Cidr::new(Ipv6Addr::from_bits(bits), len).unwrap());
            prop_assert_eq!(c.to_string().parse::<IpCidr>().unwrap(), c);
            let IpCidr::V6(v6) = c else { unreachable!() };
            prop_assert_eq!(v6.contains(Ipv6Addr::from_bits(other)), (other ^ bits) & v6.mask() == 0);
        }

        #[test]
        fn display_parse_round_trip(bits: u32, len in 0u8..=32) {
            let c = Ipv4Cidr::new(Ipv4Addr::from_bits(bits), len).unwrap();
            prop_assert_eq!(c.to_string().parse::<Ipv4Cidr>().unwrap(), c);
        }

        #[test]
        fn network_contains_its_addresses(bits: u32, len in 0u8..=32, other: u32) {
            let c = Ipv4Cidr::new(Ipv4Addr::from_bits(bits), len).unwrap();
            prop_assert!(c.contains(c.addr));
            prop_assert!(c.network().contains(c.addr));
            let o = Ipv4Addr::from_bits(other);
            // Membership is exactly "same bits under the mask".
            prop_assert_eq!(c.contains(o), (other ^ bits) & c.mask() == 0);
        }
    }
}
