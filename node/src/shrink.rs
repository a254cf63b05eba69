//! Giving back the memory of collections that emptied.
//!
//! A `HashMap` keeps its capacity when entries are removed, so a registry that a hostile client
//! filled once (200,000 room names) would hold its peak size forever. Registries that input can
//! grow call these after removing entries: when a collection has fallen far below its capacity,
//! it is shrunk to twice its length, so that the cost is amortised over many removals.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};

/// Below this capacity a collection is not worth shrinking.
const SMALL: usize = 64;

/// Whether a collection of `len` entries and `capacity` slots should shrink.
fn sparse(len: usize, capacity: usize) -> bool {
    capacity > SMALL && capacity > len.saturating_mul(4)
}

/// Shrink `map` to twice its length when it is less than a quarter full.
pub fn map_if_sparse<K: Eq + Hash, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) {
    if sparse(map.len(), map.capacity()) {
        map.shrink_to(map.len() * 2);
    }
}

/// Shrink `deque` to twice its length when it is less than a quarter full.
pub fn deque_if_sparse<T>(deque: &mut VecDeque<T>) {
    if sparse(deque.len(), deque.capacity()) {
        deque.shrink_to(deque.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_that_emptied_gives_its_memory_back() {
        let mut map: HashMap<u32, u32> = (0..10_000).map(|i| (i, i)).collect();
        map.retain(|k, _| *k < 10);
        map_if_sparse(&mut map);
        assert!(map.capacity() < 100, "capacity {}", map.capacity());
        assert_eq!(map.len(), 10);
    }

    #[test]
    fn a_small_map_is_left_alone() {
        let mut map: HashMap<u32, u32> = HashMap::with_capacity(32);
        map_if_sparse(&mut map);
        assert!(map.capacity() >= 32);
    }
}
