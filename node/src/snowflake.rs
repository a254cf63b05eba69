//! Cluster-unique 64-bit message ids, snowflake layout.
//!
//! `| 41 bits: ms since 2024-01-01 UTC | 10 bits: node id | 12 bits: counter |`
//!
//! The node id comes from the pod's StatefulSet ordinal (or a flag), so two nodes never mint the
//! same id. Within one node the generator is monotonic: when the clock stalls or steps back it
//! keeps counting from the last millisecond it used, and when 4,096 ids are taken in one
//! millisecond it borrows the next one. Ids are therefore unique even across a clock step.

use std::sync::atomic::{AtomicU64, Ordering};

/// Milliseconds between the Unix epoch and 2024-01-01T00:00:00Z, the id epoch.
pub const ID_EPOCH_MS: u64 = 1_704_067_200_000;
const COUNTER_BITS: u32 = 12;
const NODE_BITS: u32 = 10;
const COUNTER_MASK: u64 = (1 << COUNTER_BITS) - 1;
/// Largest node id the layout can carry.
pub const MAX_NODE_ID: u16 = (1 << NODE_BITS) - 1;

/// Mints ids for one node; shared by all of its room actors.
#[derive(Debug)]
pub struct Snowflake {
    node_id: u64,
    /// Last (ms << 12 | counter) handed out; ms is relative to [`ID_EPOCH_MS`].
    last: AtomicU64,
}

impl Snowflake {
    /// A generator for `node_id` (taken modulo 1,024).
    pub fn new(node_id: u16) -> Snowflake {
        Snowflake {
            node_id: u64::from(node_id & MAX_NODE_ID),
            last: AtomicU64::new(0),
        }
    }

    /// The next id, given the current Unix time in milliseconds.
    pub fn next(&self, unix_ms: u64) -> u64 {
        let now = unix_ms.saturating_sub(ID_EPOCH_MS) << COUNTER_BITS;
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let candidate = next_state(prev, now);
            match self.last.compare_exchange_weak(
                prev,
                candidate,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return self.compose(candidate),
                Err(actual) => prev = actual,
            }
        }
    }

    fn compose(&self, state: u64) -> u64 {
        let ms = state >> COUNTER_BITS;
        let counter = state & COUNTER_MASK;
        (ms << (COUNTER_BITS + NODE_BITS)) | (self.node_id << COUNTER_BITS) | counter
    }
}

/// The state after `prev`, given `now` (both `ms << 12`): a fresh millisecond starts the
/// counter at 0, otherwise the counter steps, carrying into the millisecond when it overflows.
fn next_state(prev: u64, now: u64) -> u64 {
    if now > prev { now } else { prev + 1 }
}

/// Split an id into (unix ms, node id, counter), for logs and tests.
pub fn decompose(id: u64) -> (u64, u16, u16) {
    let counter = (id & COUNTER_MASK) as u16;
    let node = ((id >> COUNTER_BITS) & u64::from(MAX_NODE_ID)) as u16;
    let ms = (id >> (COUNTER_BITS + NODE_BITS)) + ID_EPOCH_MS;
    (ms, node, counter)
}

/// The current Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const NOW: u64 = ID_EPOCH_MS + 86_400_000;

    #[test]
    fn ids_carry_time_node_and_counter() {
        let ids = Snowflake::new(7);
        let id = ids.next(NOW);
        assert_eq!(decompose(id), (NOW, 7, 0));
        assert_eq!(decompose(ids.next(NOW)), (NOW, 7, 1));
    }

    #[test]
    fn more_than_4096_ids_in_one_millisecond_borrow_the_next_one_and_stay_unique() {
        let ids = Snowflake::new(1);
        let minted: Vec<u64> = (0..10_000).map(|_| ids.next(NOW)).collect();
        assert!(minted.windows(2).all(|w| w[0] < w[1]), "ids are increasing");
        assert_eq!(decompose(minted[4096]), (NOW + 1, 1, 0));
    }

    #[test]
    fn a_clock_that_steps_back_never_repeats_an_id() {
        let ids = Snowflake::new(3);
        let a = ids.next(NOW);
        let b = ids.next(NOW - 5_000);
        assert!(b > a);
    }

    #[test]
    fn two_nodes_never_mint_the_same_id() {
        let (one, two) = (Snowflake::new(1), Snowflake::new(2));
        let mut seen = HashSet::new();
        for i in 0..5_000 {
            assert!(seen.insert(one.next(NOW + i / 7)));
            assert!(seen.insert(two.next(NOW + i / 7)));
        }
    }

    #[test]
    fn concurrent_callers_get_unique_ids() {
        let ids = std::sync::Arc::new(Snowflake::new(9));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let ids = ids.clone();
                std::thread::spawn(move || (0..20_000).map(|_| ids.next(NOW)).collect::<Vec<_>>())
            })
            .collect();
        let mut seen = HashSet::new();
        for handle in handles {
            for id in handle.join().expect("thread") {
                assert!(seen.insert(id), "duplicate id {id}");
            }
        }
        assert_eq!(seen.len(), 80_000);
    }
}
