//! The node's hash maps. In a running node they are seeded at random, like the standard
//! library's (room names come from clients: a known seed would let a client pick names that
//! collide). In a simulation run, [`fix_iteration_order`] makes every map created afterwards
//! iterate in an order that depends only on its keys, so that a run, which iterates maps in
//! many places (rooms to re-join, hand-offs to expire, links to retire), replays from its seed.

use std::collections::hash_map::{DefaultHasher, RandomState};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once by a simulation, before it builds nodes.
static FIXED: AtomicBool = AtomicBool::new(false);

/// Make the maps created from now on in this process iterate in an order that depends only on
/// their keys. For simulations: a node serving clients must not call it.
pub fn fix_iteration_order() {
    FIXED.store(true, Ordering::Relaxed);
}

/// The hasher of the node's maps: random keys, or fixed ones after [`fix_iteration_order`].
#[derive(Debug, Clone)]
pub struct NodeHasher(Option<RandomState>);

impl Default for NodeHasher {
    fn default() -> Self {
        if FIXED.load(Ordering::Relaxed) {
            NodeHasher(None)
        } else {
            NodeHasher(Some(RandomState::new()))
        }
    }
}

impl BuildHasher for NodeHasher {
    type Hasher = DefaultHasher;

    fn build_hasher(&self) -> DefaultHasher {
        match &self.0 {
            Some(random) => random.build_hasher(),
            None => DefaultHasher::new(),
        }
    }
}

/// A hash map of the node.
pub type HashMap<K, V> = std::collections::HashMap<K, V, NodeHasher>;

/// A hash set of the node.
pub type HashSet<T> = std::collections::HashSet<T, NodeHasher>;
