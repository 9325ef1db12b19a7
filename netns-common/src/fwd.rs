//! Forwarding without the router's stack: where a packet goes next, as the fast path and the
//! benchmark's bare-redirect ceilings write it into the frame before redirecting it.

/// The next hop of a redirected frame: the interface it leaves by and the MAC addresses its
/// Ethernet header gets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    /// Source MAC: the egress interface's own.
    pub src_mac: [u8; 6],
    /// Destination MAC: the neighbour's.
    pub dst_mac: [u8; 6],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hop_has_no_padding() {
        assert_eq!(core::mem::size_of::<NextHop>(), 4 + 6 + 6);
    }
}

#[cfg(feature = "user")]
mod pod {
    // Safety: #[repr(C)], integer fields only, no padding (tested above).
    unsafe impl aya::Pod for super::NextHop {}
}
