//! Internet checksum arithmetic (RFC 1071, RFC 1624), on the host and in the programs.

/// Adds `data` (as big-endian 16-bit words, an odd last byte padded with zero) to a
/// running one's-complement sum, without folding.
pub fn sum(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([w[0], w[1]])));
        // Fold early so that any input length is safe.
        acc = (acc & 0xffff) + (acc >> 16);
    }
    if let [last] = chunks.remainder() {
        acc = acc.wrapping_add(u32::from(*last) << 8);
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// Folds a running sum into 16 bits. Two folds always suffice for a u32 (the first leaves
/// at most 0x1fffe, the second at most 0xffff); no loop, so the verifier sees the bound.
pub const fn fold(acc: u32) -> u16 {
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// The checksum field value for `data` (whose own checksum field is zero).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// Whether `data`, checksum field included, verifies (sums to 0xffff).
pub fn verifies(data: &[u8]) -> bool {
    fold(sum(data, 0)) == 0xffff
}

/// RFC 1624 eqn. 3: the new checksum after a 16-bit word of the covered data changes from
/// `old` to `new`: HC' = ~(~HC + ~m + m').
pub const fn update16(check: u16, old: u16, new: u16) -> u16 {
    let acc = (!check as u32) + (!old as u32) + (new as u32);
    !fold(acc)
}

/// As [`update16`] for a 32-bit field (an IPv4 address), as two 16-bit words.
pub const fn update32(check: u16, old: u32, new: u32) -> u16 {
    let c = update16(check, (old >> 16) as u16, (new >> 16) as u16);
    update16(c, old as u16, new as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fold_handles_the_extremes() {
        assert_eq!(fold(u32::MAX), 0xffff);
        assert_eq!(fold(0x1_fffe), 0xffff);
        assert_eq!(fold(0x1_0000), 1);
        assert_eq!(fold(0), 0);
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data, 0)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn ipv4_header_verifies() {
        // A real header (from a capture), checksum 0xb861 included.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01,
            0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert!(verifies(&hdr));
        let mut zeroed = hdr;
        zeroed[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(checksum(&zeroed), 0xb861);
    }

    proptest! {
        #[test]
        fn a_checksummed_buffer_verifies(mut data in proptest::collection::vec(any::<u8>(), 2..200)) {
            data[0] = 0;
            data[1] = 0;
            let c = checksum(&data);
            data[..2].copy_from_slice(&c.to_be_bytes());
            prop_assert!(verifies(&data));
        }

        #[test]
        fn incremental_equals_recomputed(
            mut data in proptest::collection::vec(any::<u8>(), 8..200),
            word in 1usize..100,
            new: u16,
        ) {
            // Field 0 holds the checksum; change one other aligned word.
            let i = 2 * (1 + word % (data.len() / 2 - 1));
            data[0] = 0;
            data[1] = 0;
            let before = checksum(&data);
            let old = u16::from_be_bytes([data[i], data[i + 1]]);
            data[i..i + 2].copy_from_slice(&new.to_be_bytes());
            let after = checksum(&data);
            // Equal as one's-complement numbers (0x0000 and 0xffff are both zero).
            let inc = update16(before, old, new);
            prop_assert!(inc == after || (inc == 0xffff && after == 0) || (inc == 0 && after == 0xffff),
                "inc {inc:#x} full {after:#x}");
        }

        #[test]
        fn update32_equals_recomputed(mut data in proptest::collection::vec(any::<u8>(), 8..64), new: u32) {
            data[0] = 0;
            data[1] = 0;
            let before = checksum(&data);
            let old = u32::from_be_bytes([data[2], data[3], data[4], data[5]]);
            data[2..6].copy_from_slice(&new.to_be_bytes());
            let after = checksum(&data);
            let inc = update32(before, old, new);
            prop_assert!(inc == after || (inc == 0xffff && after == 0) || (inc == 0 && after == 0xffff));
        }
    }
}
