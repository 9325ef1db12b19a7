//! Three interface offloads the XDP fast path depends on, through the SIOCETHTOOL ioctl (the
//! legacy commands, as `ethtool -K` falls back to): GRO, which gives a veth the NAPI
//! instance that frames redirected into its peer need; TX checksum offload, which leaves the
//! L4 checksum partial; and VLAN TX offload, which carries a VLAN tag beside the frame
//! rather than in it. XDP sees neither of the last two.

use std::{io, os::fd::AsRawFd};

use crate::sys::netns::{self, NetnsError};

#[derive(Debug, thiserror::Error)]
pub enum EthtoolError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{what} on {iface} in namespace {ns}: {source}")]
    Ioctl {
        what: &'static str,
        iface: String,
        ns: String,
        source: io::Error,
    },
}

/// An offload that can be switched on and off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offload {
    /// Generic receive offload.
    Gro,
    /// Transmit checksum offload (the L4 checksum is left for the device to finish).
    TxChecksum,
    /// 802.1Q tag insertion by the device (`txvlan`): the tag travels as metadata.
    TxVlan,
}

/// ETHTOOL_GFLAGS / ETHTOOL_SFLAGS, and their TX VLAN bit (ETH_FLAG_TXVLAN).
const GFLAGS: u32 = 0x25;
const SFLAGS: u32 = 0x26;
const FLAG_TXVLAN: u32 = 1 << 7;

impl Offload {
    /// (get, set) commands of linux/ethtool.h (TxVlan: a bit of the flags word).
    fn commands(self) -> (u32, u32) {
        match self {
            Offload::Gro => (0x2b, 0x2c),
            Offload::TxChecksum => (0x16, 0x17),
            Offload::TxVlan => (GFLAGS, SFLAGS),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Offload::Gro => "gro",
            Offload::TxChecksum => "tx-checksumming",
            Offload::TxVlan => "tx-vlan-offload",
        }
    }
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;

/// struct ethtool_value.
#[repr(C)]
struct Value {
    cmd: u32,
    data: u32,
}

/// struct ifreq with the ifr_data member of its union (40 bytes on 64-bit).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut Value,
    _rest: [u8; 16],
}

/// Runs one ethtool command on `iface` (already in the right namespace).
fn ioctl(iface: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let mut v = Value { cmd, data };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut v,
        _rest: [0; 16],
    };
    let n = iface.len().min(libc::IFNAMSIZ - 1);
    req.name[..n].copy_from_slice(&iface.as_bytes()[..n]);
    // Safety: SIOCETHTOOL with an ifreq whose data points at an ethtool_value, both alive
    // for the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v.data)
}

/// Whether `offload` is on for `iface` in namespace `ns`.
pub fn get(ns: &str, iface: &str, offload: Offload) -> Result<bool, EthtoolError> {
    let fail = |source| EthtoolError::Ioctl {
        what: "reading",
        iface: iface.to_owned(),
        ns: ns.to_owned(),
        source,
    };
    netns::run_in(ns, || ioctl(iface, offload.commands().0, 0))?
        .map(|d| match offload {
            Offload::TxVlan => d & FLAG_TXVLAN != 0,
            _ => d != 0,
        })
        .map_err(fail)
}

/// Switches `offload` on or off for `iface` in namespace `ns`.
pub fn set(ns: &str, iface: &str, offload: Offload, on: bool) -> Result<(), EthtoolError> {
    let fail = |source| EthtoolError::Ioctl {
        what: "setting",
        iface: iface.to_owned(),
        ns: ns.to_owned(),
        source,
    };
    netns::run_in(ns, || {
        let value = match offload {
            // The flags word holds other offloads too: change only this bit.
            Offload::TxVlan => {
                let flags = ioctl(iface, GFLAGS, 0)?;
                if on {
                    flags | FLAG_TXVLAN
                } else {
                    flags & !FLAG_TXVLAN
                }
            }
            _ => u32::from(on),
        };
        ioctl(iface, offload.commands().1, value)
    })?
    .map(|_| ())
    .map_err(fail)
}
