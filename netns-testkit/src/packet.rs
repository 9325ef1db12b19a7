//! Frames built byte by byte, and read back: Ethernet, IPv4 (options and fragments
//! allowed), UDP, TCP and ICMP, every checksum computed in full over what was written. The
//! benchmark's generator builds its load with it, and the tests build their crafted and
//! hostile input with it and check what comes out.

use std::net::Ipv4Addr;

use bytes::{BufMut as _, BytesMut};
use netns_common::csum;

pub use netns_common::{
    nat::{PROTO_ICMP, PROTO_TCP, PROTO_UDP},
    packet::{ETH_HLEN, ETH_P_IP},
};
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;

/// A MAC address.
pub type Mac = [u8; 6];

/// The IPv4 header of a packet to build. Length and checksum are computed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub tos: u8,
    pub id: u16,
    pub dont_fragment: bool,
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    /// Options, padded with zeros (end of list) to a multiple of 4 bytes.
    pub options: Vec<u8>,
    /// The protocol field; set by the builders from the L4 header.
    pub proto: u8,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr) -> Ipv4 {
        Ipv4 {
            src,
            dst,
            ttl: 64,
            tos: 0,
            id: 0,
            dont_fragment: false,
            more_fragments: false,
            frag_offset: 0,
            options: Vec::new(),
            proto: 0,
        }
    }

    pub fn ttl(mut self, ttl: u8) -> Ipv4 {
        self.ttl = ttl;
        self
    }

    pub fn id(mut self, id: u16) -> Ipv4 {
        self.id = id;
        self
    }

    fn options_len(&self) -> usize {
        self.options.len().div_ceil(4) * 4
    }

    /// Header length in bytes (20 plus the padded options).
    pub fn header_len(&self) -> usize {
        20 + self.options_len()
    }
}

/// What follows the IPv4 header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4<'a> {
    /// `zero_checksum`: send the checksum field as 0 ("none", allowed for UDP over IPv4).
    Udp {
        sport: u16,
        dport: u16,
        payload: &'a [u8],
        zero_checksum: bool,
    },
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
        payload: &'a [u8],
    },
    /// ICMP with its 4 bytes after the checksum (`rest`: identifier and sequence for echo,
    /// unused or next-hop MTU for errors) and body (an error's quoted packet).
    Icmp {
        typ: u8,
        code: u8,
        rest: [u8; 4],
        body: &'a [u8],
    },
    /// Bytes as they are, under protocol `proto` (a non-first fragment, another protocol).
    Raw { proto: u8, bytes: &'a [u8] },
}

impl<'a> L4<'a> {
    /// A UDP datagram, its checksum computed.
    pub fn udp(sport: u16, dport: u16, payload: &'a [u8]) -> L4<'a> {
        L4::Udp {
            sport,
            dport,
            payload,
            zero_checksum: false,
        }
    }

    /// A TCP segment: sequence and acknowledgement numbers (a RST or FIN must lie in the
    /// receiver's window to change anything) and the window it advertises.
    pub fn tcp(
        sport: u16,
        dport: u16,
        flags: u8,
        (seq, ack): (u32, u32),
        window: u16,
        payload: &'a [u8],
    ) -> L4<'a> {
        L4::Tcp {
            sport,
            dport,
            seq,
            ack,
            flags,
            window,
            payload,
        }
    }

    pub fn proto(&self) -> u8 {
        match self {
            L4::Udp { .. } => PROTO_UDP,
            L4::Tcp { .. } => PROTO_TCP,
            L4::Icmp { .. } => PROTO_ICMP,
            L4::Raw { proto, .. } => *proto,
        }
    }

    /// An ICMP echo request (`reply`: an echo reply).
    pub fn echo(reply: bool, id: u16, seq: u16, payload: &'a [u8]) -> L4<'a> {
        let mut rest = [0; 4];
        rest[..2].copy_from_slice(&id.to_be_bytes());
        rest[2..].copy_from_slice(&seq.to_be_bytes());
        L4::Icmp {
            typ: if reply { 0 } else { 8 },
            code: 0,
            rest,
            body: payload,
        }
    }
}

/// The TCP/UDP pseudo-header sum (RFC 793/768) for an L4 segment of `len` bytes.
pub fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut acc = csum::sum(&src.octets(), 0);
    acc = csum::sum(&dst.octets(), acc);
    acc = csum::sum(&[0, proto], acc);
    csum::sum(&(len as u16).to_be_bytes(), acc)
}

/// The L4 bytes of `l4` with its checksum computed (for TCP and UDP over `src`/`dst`).
pub fn l4_bytes(src: Ipv4Addr, dst: Ipv4Addr, l4: &L4) -> BytesMut {
    let mut b = BytesMut::new();
    let csum_at = match l4 {
        L4::Udp {
            sport,
            dport,
            payload,
            ..
        } => {
            b.put_u16(*sport);
            b.put_u16(*dport);
            b.put_u16((8 + payload.len()) as u16);
            b.put_u16(0);
            b.put_slice(payload);
            Some(6)
        }
        L4::Tcp {
            sport,
            dport,
            seq,
            ack,
            flags,
            window,
            payload,
        } => {
            b.put_u16(*sport);
            b.put_u16(*dport);
            b.put_u32(*seq);
            b.put_u32(*ack);
            b.put_u8(5 << 4);
            b.put_u8(*flags);
            b.put_u16(*window);
            b.put_u16(0);
            b.put_u16(0);
            b.put_slice(payload);
            Some(16)
        }
        L4::Icmp {
            typ,
            code,
            rest,
            body,
        } => {
            b.put_u8(*typ);
            b.put_u8(*code);
            b.put_u16(0);
            b.put_slice(rest);
            b.put_slice(body);
            Some(2)
        }
        L4::Raw { bytes, .. } => {
            b.put_slice(bytes);
            None
        }
    };
    if let Some(at) = csum_at {
        let c = match l4 {
            L4::Icmp { .. } => csum::checksum(&b),
            L4::Udp {
                zero_checksum: true, ..
            } => 0,
            _ => {
                let acc = pseudo_header_sum(src, dst, l4.proto(), b.len());
                let c = !csum::fold(csum::sum(&b, acc));
                // A computed UDP checksum of 0 is sent as all ones (RFC 768).
                if c == 0 && l4.proto() == PROTO_UDP {
                    0xffff
                } else {
                    c
                }
            }
        };
        b[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    b
}

/// An IPv4 packet: `ip`'s header (checksummed) and `payload` as its data, which the caller
/// has built for `ip.proto` (see [`ipv4_packet`] for the usual case).
pub fn ipv4_raw(ip: &Ipv4, payload: &[u8]) -> BytesMut {
    let hl = ip.header_len();
    let mut b = BytesMut::with_capacity(hl + payload.len());
    b.put_u8(0x40 | (hl / 4) as u8);
    b.put_u8(ip.tos);
    b.put_u16((hl + payload.len()) as u16);
    b.put_u16(ip.id);
    let mut frag = ip.frag_offset & 0x1fff;
    if ip.dont_fragment {
        frag |= 0x4000;
    }
    if ip.more_fragments {
        frag |= 0x2000;
    }
    b.put_u16(frag);
    b.put_u8(ip.ttl);
    b.put_u8(ip.proto);
    b.put_u16(0);
    b.put_slice(&ip.src.octets());
    b.put_slice(&ip.dst.octets());
    b.put_slice(&ip.options);
    b.put_bytes(0, ip.options_len() - ip.options.len());
    let c = csum::checksum(&b[..hl]);
    b[10..12].copy_from_slice(&c.to_be_bytes());
    b.put_slice(payload);
    b
}

/// A whole IPv4 packet carrying `l4`; `ip.proto` is taken from it.
pub fn ipv4_packet(ip: &Ipv4, l4: &L4) -> BytesMut {
    let mut ip = ip.clone();
    ip.proto = l4.proto();
    ipv4_raw(&ip, &l4_bytes(ip.src, ip.dst, l4))
}

/// An Ethernet frame around `payload`.
pub fn ethernet(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> BytesMut {
    let mut b = BytesMut::with_capacity(ETH_HLEN + payload.len());
    b.put_slice(&dst);
    b.put_slice(&src);
    b.put_u16(ethertype);
    b.put_slice(payload);
    b
}

/// An Ethernet frame carrying an IPv4 packet with `l4`.
pub fn frame(dst: Mac, src: Mac, ip: &Ipv4, l4: &L4) -> BytesMut {
    ethernet(dst, src, ETH_P_IP, &ipv4_packet(ip, l4))
}

/// Splits an IPv4 packet's data into fragments of at most `max_data` bytes (rounded down to
/// a multiple of 8), each with its own header (options copied into every one, for tests).
pub fn fragments(ip: &Ipv4, data: &[u8], max_data: usize) -> Vec<BytesMut> {
    let step = (max_data / 8).max(1) * 8;
    let chunks: Vec<&[u8]> = data.chunks(step).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut h = ip.clone();
            h.frag_offset = ip.frag_offset + (i * step / 8) as u16;
            h.more_fragments = i + 1 < chunks.len() || ip.more_fragments;
            ipv4_raw(&h, c)
        })
        .collect()
}

/// An IPv4 packet read back from bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedIpv4 {
    pub header: Ipv4,
    pub header_len: usize,
    pub total_len: usize,
    /// The header checksum verifies.
    pub header_ok: bool,
    /// The data after the header, up to the total length (or the end of the buffer).
    pub data: Vec<u8>,
}

impl ParsedIpv4 {
    pub fn is_fragment(&self) -> bool {
        self.header.more_fragments || self.header.frag_offset != 0
    }

    /// Source and destination ports of a TCP or UDP packet (first fragment or whole).
    pub fn ports(&self) -> Option<(u16, u16)> {
        if self.header.frag_offset != 0 || !matches!(self.header.proto, PROTO_TCP | PROTO_UDP) {
            return None;
        }
        let d = self.data.get(..4)?;
        Some((u16::from_be_bytes([d[0], d[1]]), u16::from_be_bytes([d[2], d[3]])))
    }

    /// Whether the L4 checksum verifies over the data (a whole, unfragmented packet; a UDP
    /// checksum of 0, meaning none, counts as valid).
    pub fn l4_checksum_ok(&self) -> bool {
        let d = &self.data;
        match self.header.proto {
            PROTO_UDP if d.len() >= 8 && d[6..8] == [0, 0] => true,
            PROTO_TCP | PROTO_UDP => {
                let acc = pseudo_header_sum(self.header.src, self.header.dst, self.header.proto, d.len());
                csum::fold(csum::sum(d, acc)) == 0xffff
            }
            PROTO_ICMP => csum::verifies(d),
            _ => true,
        }
    }
}

/// Why bytes are not an IPv4 packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("shorter than its headers")]
    Truncated,
    #[error("not IPv4 (ethertype {0:#06x})")]
    NotIpv4(u16),
    #[error("IP version {0}")]
    BadVersion(u8),
    #[error("header length {0} bytes")]
    BadHeaderLen(usize),
}

/// Reads an IPv4 packet (no Ethernet header).
pub fn parse_ipv4(b: &[u8]) -> Result<ParsedIpv4, ParseError> {
    if b.len() < 20 {
        return Err(ParseError::Truncated);
    }
    if b[0] >> 4 != 4 {
        return Err(ParseError::BadVersion(b[0] >> 4));
    }
    let hl = usize::from(b[0] & 0x0f) * 4;
    if hl < 20 {
        return Err(ParseError::BadHeaderLen(hl));
    }
    if b.len() < hl {
        return Err(ParseError::Truncated);
    }
    let total = usize::from(u16::from_be_bytes([b[2], b[3]]));
    let frag = u16::from_be_bytes([b[6], b[7]]);
    let header = Ipv4 {
        src: Ipv4Addr::new(b[12], b[13], b[14], b[15]),
        dst: Ipv4Addr::new(b[16], b[17], b[18], b[19]),
        ttl: b[8],
        tos: b[1],
        id: u16::from_be_bytes([b[4], b[5]]),
        dont_fragment: frag & 0x4000 != 0,
        more_fragments: frag & 0x2000 != 0,
        frag_offset: frag & 0x1fff,
        options: b[20..hl].to_vec(),
        proto: b[9],
    };
    let end = total.clamp(hl, b.len());
    Ok(ParsedIpv4 {
        header,
        header_len: hl,
        total_len: total,
        header_ok: csum::verifies(&b[..hl]),
        data: b[hl..end].to_vec(),
    })
}

/// Reads an Ethernet frame carrying IPv4: (destination MAC, source MAC, packet).
pub fn parse_frame(f: &[u8]) -> Result<(Mac, Mac, ParsedIpv4), ParseError> {
    if f.len() < ETH_HLEN {
        return Err(ParseError::Truncated);
    }
    let ethertype = u16::from_be_bytes([f[12], f[13]]);
    if ethertype != ETH_P_IP {
        return Err(ParseError::NotIpv4(ethertype));
    }
    let mac = |o: usize| -> Mac { f[o..o + 6].try_into().expect("6 bytes") };
    Ok((mac(0), mac(6), parse_ipv4(&f[ETH_HLEN..])?))
}

/// Asserts `got` is `want`, where a checksum may differ only as 0x0000 against 0xffff (the
/// two forms of zero in one's complement: incremental updates and full computation may
/// pick either, and receivers accept both).
pub fn assert_same(got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let mut i = 0;
    while i < got.len() {
        if got[i] != want[i] {
            let at = i & !1;
            let pair = |b: &[u8]| [b[at], b.get(at + 1).copied().unwrap_or(0)];
            let (g, w) = (pair(got), pair(want));
            let zeros = [[0, 0], [0xff, 0xff]];
            assert!(
                zeros.contains(&g) && zeros.contains(&w),
                "frames differ at byte {i}:\n got  {got:02x?}\n want {want:02x?}"
            );
            i = at + 2;
        } else {
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 1);
    const B: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 3);

    /// The RFC 1071 sum over everything a checksum covers, computed without the builder's
    /// code path: a valid packet sums to 0xffff.
    fn full_sum(ip: &[u8]) -> (u16, u16) {
        let hl = usize::from(ip[0] & 0x0f) * 4;
        let l4 = &ip[hl..];
        let mut acc: u32 = 0;
        let mut add = |bytes: &[u8]| {
            for w in bytes.chunks(2) {
                let v = u32::from(w[0]) << 8 | u32::from(*w.get(1).unwrap_or(&0));
                acc += v;
            }
        };
        if ip[9] != PROTO_ICMP {
            add(&ip[12..20]);
            add(&[0, ip[9]]);
            add(&(l4.len() as u16).to_be_bytes());
        }
        add(l4);
        let fold = |mut a: u32| {
            while a > 0xffff {
                a = (a & 0xffff) + (a >> 16);
            }
            a as u16
        };
        let l4_sum = fold(acc);
        let mut h: u32 = 0;
        for w in ip[..hl].chunks(2) {
            h += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        (fold(h), l4_sum)
    }

    #[test]
    fn a_udp_frame_is_laid_out_as_on_the_wire() {
        let f = frame(
            [2; 6],
            [4; 6],
            &Ipv4::new(A, B).id(7),
            &L4::Udp {
                sport: 1024,
                dport: 9,
                payload: &[0xab; 18],
                zero_checksum: false,
            },
        );
        assert_eq!(f.len(), 60, "the benchmark's 60-byte frame");
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(f[14], 0x45);
        assert_eq!(&f[16..18], &46u16.to_be_bytes());
        assert_eq!(f[14 + 9], 17);
        assert_eq!(&f[34..36], &1024u16.to_be_bytes());
        assert_eq!(full_sum(&f[14..]), (0xffff, 0xffff));
        let (dst, src, p) = parse_frame(&f).unwrap();
        assert_eq!((dst, src), ([2; 6], [4; 6]));
        assert!(p.header_ok && p.l4_checksum_ok());
        assert_eq!(p.ports(), Some((1024, 9)));
        assert_eq!(p.header.id, 7);
    }

    #[test]
    fn zero_udp_checksum_is_kept_and_valid() {
        let p = ipv4_packet(
            &Ipv4::new(A, B),
            &L4::Udp {
                sport: 1,
                dport: 2,
                payload: b"x",
                zero_checksum: true,
            },
        );
        assert_eq!(&p[26..28], &[0, 0]);
        assert!(parse_ipv4(&p).unwrap().l4_checksum_ok());
    }

    #[test]
    fn options_pad_the_header() {
        let mut ip = Ipv4::new(A, B);
        ip.options = vec![0x94, 0x04, 0, 0, 1]; // router alert + one byte
        let p = ipv4_packet(&ip, &L4::echo(false, 9, 1, b"ping"));
        assert_eq!(p[0], 0x47, "IHL 7: 20 + 8 bytes of options");
        let parsed = parse_ipv4(&p).unwrap();
        assert_eq!(parsed.header_len, 28);
        assert!(parsed.header_ok && parsed.l4_checksum_ok());
        assert_eq!(full_sum(&p), (0xffff, 0xffff));
    }

    #[test]
    fn fragments_cover_the_data_in_order() {
        let data = l4_bytes(
            A,
            B,
            &L4::Udp {
                sport: 5,
                dport: 6,
                payload: &[7; 100],
                zero_checksum: false,
            },
        );
        let mut ip = Ipv4::new(A, B).id(99);
        ip.proto = PROTO_UDP;
        let frags = fragments(&ip, &data, 50);
        assert_eq!(frags.len(), 3);
        let mut joined = Vec::new();
        for (i, f) in frags.iter().enumerate() {
            let p = parse_ipv4(f).unwrap();
            assert!(p.header_ok);
            assert_eq!(usize::from(p.header.frag_offset) * 8, joined.len());
            assert_eq!(p.header.more_fragments, i < 2);
            joined.extend_from_slice(&p.data);
        }
        assert_eq!(joined, data.to_vec());
    }

    #[test]
    fn refuses_what_is_not_ipv4() {
        assert_eq!(parse_ipv4(&[0x45; 10]), Err(ParseError::Truncated));
        assert_eq!(parse_ipv4(&[0x60; 40]), Err(ParseError::BadVersion(6)));
        assert_eq!(parse_ipv4(&[0x44; 40]), Err(ParseError::BadHeaderLen(16)));
        let arp = ethernet([0xff; 6], [1; 6], ETH_P_ARP, &[0; 28]);
        assert_eq!(parse_frame(&arp), Err(ParseError::NotIpv4(ETH_P_ARP)));
    }

    proptest! {
        #[test]
        fn every_checksum_equals_a_full_recomputation(
            src: u32, dst: u32, sport: u16, dport: u16, seq: u32, flags: u8, ttl: u8, id: u16,
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            kind in 0u8..3,
        ) {
            let ip = Ipv4::new(Ipv4Addr::from_bits(src), Ipv4Addr::from_bits(dst)).ttl(ttl).id(id);
            let l4 = match kind {
                0 => L4::Udp { sport, dport, payload: &payload, zero_checksum: false },
                1 => L4::Tcp { sport, dport, seq, ack: !seq, flags, window: 512, payload: &payload },
                _ => L4::echo(false, sport, dport, &payload),
            };
            let p = ipv4_packet(&ip, &l4);
            prop_assert_eq!(full_sum(&p), (0xffff, 0xffff));
            let parsed = parse_ipv4(&p).unwrap();
            prop_assert!(parsed.header_ok && parsed.l4_checksum_ok());
            prop_assert_eq!(parsed.data.len() + 20, p.len());
        }
    }
}
