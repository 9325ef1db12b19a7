//! What the kernel spends on the NAT's tables: a hash map's element is its header, the key
//! and the value (each rounded up to 8 bytes) and the BPF allocator's own link, taken from
//! the allocator's next size class; the map also holds one bucket per entry of its capacity
//! rounded up to a power of two. (As `kernel/bpf/hashtab.c` and `memalloc.c` lay them out
//! on 64-bit kernels; the maps are not preallocated, so elements cost only while in use.)

use crate::nat::{Binding, BindingKey, Flow, FlowKey};

/// `struct htab_elem` up to its key.
const ELEMENT_HEADER: u64 = 48;
/// The allocator's link before each object.
const ALLOC_LINK: u64 = 8;
/// The allocator's size classes.
const SIZE_CLASSES: [u64; 11] = [16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096];
/// `struct bucket`: a list head and a lock.
const BUCKET: u64 = 16;

const fn round8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

/// Bytes one element of a hash map with keys of `key` and values of `value` bytes takes.
pub const fn element_bytes(key: usize, value: usize) -> u64 {
    let need = ELEMENT_HEADER + round8(key as u64) + round8(value as u64) + ALLOC_LINK;
    let mut i = 0;
    while i < SIZE_CLASSES.len() {
        if need <= SIZE_CLASSES[i] {
            return SIZE_CLASSES[i];
        }
        i += 1;
    }
    need
}

/// Bytes of a hash map of capacity `capacity` holding `entries` elements of `element` bytes.
pub const fn table_bytes(element: u64, entries: u64, capacity: u32) -> u64 {
    entries * element + (capacity as u64).next_power_of_two() * BUCKET
}

/// A flow-table element.
pub const FLOW_BYTES: u64 = element_bytes(size_of::<FlowKey>(), size_of::<Flow>());
/// A binding-table element (a mapping has two: one per side).
pub const BINDING_BYTES: u64 = element_bytes(size_of::<BindingKey>(), size_of::<Binding>());

/// Bytes of a tracked connection with a mapping of its own (the common case: a client's
/// every connection from a new source port), the buckets of both tables counted at
/// capacities `flows` and `bindings`.
pub const fn connection_bytes(flows: u32, bindings: u32) -> u64 {
    FLOW_BYTES + bucket_share(flows) + 2 * (BINDING_BYTES + bucket_share(bindings))
}

/// An entry's share of the buckets of a table of capacity `cap`.
const fn bucket_share(cap: u32) -> u64 {
    if cap == 0 {
        return 0;
    }
    (cap as u64).next_power_of_two() * BUCKET / cap as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_take_the_allocators_next_size_class() {
        // 48 + 16 + 16 + 8 = 88: the 96-byte class.
        assert_eq!(element_bytes(16, 16), 96);
        // Exactly a class.
        assert_eq!(element_bytes(16, 120), 192);
        assert_eq!(element_bytes(16, 121), 256);
        // Keys and values are rounded up to 8 bytes each.
        assert_eq!(element_bytes(12, 36), element_bytes(16, 40));
    }

    #[test]
    fn buckets_count_at_the_capacity_rounded_up_to_a_power_of_two() {
        assert_eq!(table_bytes(192, 0, 1000), 1024 * 16);
        assert_eq!(table_bytes(192, 10, 1024), 10 * 192 + 1024 * 16);
    }

    #[test]
    fn a_connection_is_its_flow_and_both_sides_of_its_mapping() {
        let c = connection_bytes(1 << 18, 1 << 18);
        assert_eq!(c, FLOW_BYTES + 16 + 2 * (BINDING_BYTES + 16));
    }
}
