//! The layout stamp of the maps a lab pins: what a new build of the programs checks before
//! it takes over a running NAT's maps (`netns-nat up --upgrade`). A pinned map carries no
//! description of its values, so a build whose keys or values differ would misread them;
//! the stamp makes that a refusal instead.

use core::mem::size_of;

use crate::{
    counters::{Counter, NatCounter},
    fwd::{FastConfig, FdbEntry, MacKey, PortState},
    nat::{Binding, BindingKey, Flow, FlowKey, FragKey, FragPorts, NatConfig, RemoteRate},
};

/// Bumped whenever a pinned key or value changes meaning without changing size (a field
/// reordered or reinterpreted, a flag bit reused, a counter slot renamed) or a pinned map
/// is added (3: `NAT_FDB_GEN`).
pub const LAYOUT_VERSION: u64 = 3;

/// The stamp of this build: [`LAYOUT_VERSION`] and the size of every pinned key, value and
/// counter array.
pub const LAYOUT_STAMP: u64 = stamp(&[
    LAYOUT_VERSION,
    size_of::<BindingKey>() as u64,
    size_of::<Binding>() as u64,
    size_of::<FlowKey>() as u64,
    size_of::<Flow>() as u64,
    size_of::<FragKey>() as u64,
    size_of::<FragPorts>() as u64,
    size_of::<NatConfig>() as u64,
    size_of::<FastConfig>() as u64,
    size_of::<MacKey>() as u64,
    size_of::<FdbEntry>() as u64,
    size_of::<PortState>() as u64,
    size_of::<RemoteRate>() as u64,
    NatCounter::COUNT as u64,
    Counter::COUNT as u64,
]);

/// FNV-1a over the words' little-endian bytes.
pub const fn stamp(words: &[u64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < words.len() {
        let bytes = words[i].to_le_bytes();
        let mut j = 0;
        while j < 8 {
            h ^= bytes[j] as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
            j += 1;
        }
        i += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_and_its_place_changes_the_stamp() {
        let base = [1, 8, 24, 16];
        let s = stamp(&base);
        for i in 0..base.len() {
            let mut w = base;
            w[i] += 1;
            assert_ne!(stamp(&w), s, "word {i}");
        }
        assert_ne!(stamp(&[8, 1, 24, 16]), s, "order counts");
        assert_ne!(LAYOUT_STAMP, 0);
    }
}
