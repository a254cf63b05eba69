//! Per-shard load, as the owner of the shard's rooms measures it: deliveries and members.
//!
//! The room actors count into [`ShardCounters`], one slot per shard of the cluster (so the
//! memory is bounded by the shard count, fixed for the life of a cluster): each accepted message
//! adds its recipients (the room's members) to the shard's deliveries, and each actor keeps the
//! shard's member gauge up to date with its room's members. [`ShardMeter`] turns the counters
//! into rates lazily when `/status` is read, like [`LoadMeter`](crate::load::LoadMeter): no timer
//! task, and at most three copies of the counters (the base, the next base and the current
//! reading), however often it is read.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use shard::ShardLoad;
use tokio::time::Instant;

/// The per-shard counters the room actors write.
#[derive(Debug)]
pub struct ShardCounters {
    /// Deliveries (messages accepted x recipients) per shard, monotonic.
    deliveries: Vec<AtomicU64>,
    /// Members of the shard's running rooms, per shard.
    members: Vec<AtomicI64>,
}

impl ShardCounters {
    /// Zeroed counters for `shards` shards.
    pub fn new(shards: u32) -> ShardCounters {
        let n = shards as usize;
        ShardCounters {
            deliveries: (0..n).map(|_| AtomicU64::new(0)).collect(),
            members: (0..n).map(|_| AtomicI64::new(0)).collect(),
        }
    }

    /// A message accepted in a room of `shard` with `recipients` members.
    pub fn delivered(&self, shard: u32, recipients: usize) {
        if let Some(c) = self.deliveries.get(shard as usize) {
            c.fetch_add(recipients as u64, Ordering::Relaxed);
        }
    }

    /// A room of `shard` gained (`delta > 0`) or lost members.
    pub fn members_changed(&self, shard: u32, delta: i64) {
        if let Some(c) = self.members.get(shard as usize) {
            c.fetch_add(delta, Ordering::Relaxed);
        }
    }

    /// Every shard's deliveries so far.
    pub(crate) fn deliveries(&self) -> Vec<u64> {
        self.deliveries
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Members of `shard`'s running rooms now.
    pub(crate) fn members(&self, shard: usize) -> u64 {
        self.members
            .get(shard)
            .map_or(0, |c| u64::try_from(c.load(Ordering::Relaxed)).unwrap_or(0))
    }
}

/// One reading of the delivery counters.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    deliveries: Vec<u64>,
}

#[derive(Debug, Default)]
struct Samples {
    /// What rates are measured from.
    base: Option<Sample>,
    /// Taken once the base is a window old; becomes the base a window later. So the rates
    /// cover between one and two windows once the node has been read for a while.
    next: Option<Sample>,
}

/// Turns [`ShardCounters`] into per-shard rates over a sliding window.
#[derive(Debug)]
pub struct ShardMeter {
    window: Duration,
    samples: Mutex<Samples>,
}

impl ShardMeter {
    /// A meter whose rates cover one to two `window`s.
    pub fn new(window: Duration) -> ShardMeter {
        ShardMeter {
            window,
            samples: Mutex::default(),
        }
    }

    /// The load of the shards for which `owned` is true and that have any, ascending by shard.
    pub fn read(
        &self,
        counters: &ShardCounters,
        now: Instant,
        owned: impl Fn(u32) -> bool,
    ) -> Vec<ShardLoad> {
        let current = Sample {
            at: now,
            deliveries: counters.deliveries(),
        };
        let mut samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if samples
            .next
            .as_ref()
            .is_some_and(|n| now.saturating_duration_since(n.at) >= self.window)
        {
            samples.base = samples.next.take();
        }
        let base = match &samples.base {
            Some(base) => base.clone(),
            None => {
                samples.base = Some(current.clone());
                current.clone()
            }
        };
        if samples.next.is_none() && now.saturating_duration_since(base.at) >= self.window {
            samples.next = Some(current.clone());
        }
        drop(samples);
        let elapsed_ms = now.saturating_duration_since(base.at).as_millis();
        let mut out = Vec::new();
        for (shard, &to) in current.deliveries.iter().enumerate() {
            let Ok(id) = u32::try_from(shard) else { break };
            if !owned(id) {
                continue;
            }
            let from = base.deliveries.get(shard).copied().unwrap_or(0);
            let deliveries_per_sec = (u128::from(to.saturating_sub(from)) * 1000)
                .checked_div(elapsed_ms)
                .map_or(0, |n| u64::try_from(n).unwrap_or(u64::MAX));
            let members = counters.members(shard);
            if deliveries_per_sec > 0 || members > 0 {
                out.push(ShardLoad {
                    shard: id,
                    deliveries_per_sec,
                    members,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn owned_shards_report_deliveries_per_second_and_members() {
        let counters = ShardCounters::new(8);
        let meter = ShardMeter::new(Duration::from_secs(10));
        let start = Instant::now();
        assert!(meter.read(&counters, start, |_| true).is_empty());
        counters.members_changed(3, 4);
        // 500 messages to 4 members in 5 s: 400 deliveries per second.
        for _ in 0..500 {
            counters.delivered(3, 4);
        }
        counters.delivered(5, 10);
        let load = meter.read(&counters, start + Duration::from_secs(5), |s| s != 5);
        assert_eq!(
            load,
            vec![ShardLoad {
                shard: 3,
                deliveries_per_sec: 400,
                members: 4,
            }]
        );
        // Members leave and traffic stops: after two windows the shard reads idle and is gone.
        counters.members_changed(3, -4);
        meter.read(&counters, start + Duration::from_secs(12), |_| true);
        meter.read(&counters, start + Duration::from_secs(25), |_| true);
        let idle = meter.read(&counters, start + Duration::from_secs(40), |s| s != 5);
        assert!(idle.is_empty(), "{idle:?}");
    }

    #[test]
    fn counts_for_shards_out_of_range_are_ignored() {
        let counters = ShardCounters::new(2);
        counters.delivered(7, 3);
        counters.members_changed(9, 1);
        assert_eq!(counters.deliveries(), vec![0, 0]);
        assert_eq!(counters.members(9), 0);
    }
}
