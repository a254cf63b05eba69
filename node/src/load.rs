//! The node's load as rates: deliveries and client frames per second over the last few seconds.
//!
//! Rates are computed lazily when `/status` is read (the operator polls it every pass), from
//! samples of the monotonic counters in [`Metrics`]: no timer task, and a node nobody asks
//! costs nothing. The window keeps at most [`MAX_SAMPLES`] samples, so it is bounded however
//! often `/status` is read.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use shard::NodeLoad;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// Samples kept at most (older ones are dropped first).
pub const MAX_SAMPLES: usize = 32;

/// One reading of the counters the rates come from.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    deliveries: u64,
    frames_in: u64,
}

/// Turns counter readings into rates over a sliding window.
#[derive(Debug)]
pub struct LoadMeter {
    window: Duration,
    samples: Mutex<VecDeque<Sample>>,
}

impl LoadMeter {
    /// A meter averaging over at least `window` once it has been read for that long: the base of
    /// the rates is the newest sample that is `window` old or older.
    pub fn new(window: Duration) -> LoadMeter {
        LoadMeter {
            window,
            samples: Mutex::new(VecDeque::with_capacity(MAX_SAMPLES)),
        }
    }

    /// Record the counters now and return the rates since the oldest sample in the window.
    pub fn read(&self, metrics: &Metrics, now: Instant) -> NodeLoad {
        let sample = Sample {
            at: now,
            deliveries: metrics.messages_delivered.get(),
            frames_in: metrics.frames_in.get(),
        };
        let mut samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Keep one sample older than the window so a rarely polled node still has a base.
        while samples.len() >= 2
            && samples
                .get(1)
                .is_some_and(|s| now.saturating_duration_since(s.at) >= self.window)
        {
            samples.pop_front();
        }
        if samples.len() >= MAX_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
        let Some(first) = samples.front().copied() else {
            return NodeLoad::default();
        };
        let elapsed = now.saturating_duration_since(first.at);
        if elapsed.is_zero() {
            return NodeLoad::default();
        }
        let per_sec = |from: u64, to: u64| -> u64 {
            let n = u128::from(to.saturating_sub(from)) * 1000;
            u64::try_from(n / elapsed.as_millis().max(1)).unwrap_or(u64::MAX)
        };
        NodeLoad {
            deliveries_per_sec: per_sec(first.deliveries, sample.deliveries),
            frames_in_per_sec: per_sec(first.frames_in, sample.frames_in),
            window_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            shards: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rates_are_deliveries_per_second_since_the_oldest_sample_in_the_window() {
        let meter = LoadMeter::new(Duration::from_secs(10));
        let metrics = Metrics::default();
        let start = Instant::now();
        assert_eq!(meter.read(&metrics, start), NodeLoad::default());
        metrics.messages_delivered.inc_by(5_000);
        metrics.frames_in.inc_by(50);
        let load = meter.read(&metrics, start + Duration::from_secs(5));
        assert_eq!(load.deliveries_per_sec, 1_000);
        assert_eq!(load.frames_in_per_sec, 10);
        assert_eq!(load.window_ms, 5_000);
        // 20 s later with no traffic: the window forgets the busy period but keeps a base.
        let idle = meter.read(&metrics, start + Duration::from_secs(25));
        assert_eq!(idle.deliveries_per_sec, 0);
        assert_eq!(idle.window_ms, 20_000);
        // The base is the newest sample at least a window old (t = 5 s), not the one just taken.
        let later = meter.read(&metrics, start + Duration::from_secs(26));
        assert_eq!(later.window_ms, 21_000);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_holds_a_bounded_number_of_samples_however_often_it_is_read() {
        let meter = LoadMeter::new(Duration::from_secs(3600));
        let metrics = Metrics::default();
        let start = Instant::now();
        for i in 0..1_000u64 {
            metrics.messages_delivered.inc_by(10);
            meter.read(&metrics, start + Duration::from_millis(i * 10));
        }
        let len = meter.samples.lock().map(|s| s.len()).unwrap_or(usize::MAX);
        assert_eq!(len, MAX_SAMPLES);
    }
}
