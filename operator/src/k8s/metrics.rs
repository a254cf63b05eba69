//! The controller's metrics, exported at `/metrics` in the Prometheus text format.
//!
//! Counters are plain atomics; the per-cluster gauges (epoch, moves in flight) sit behind a
//! mutex taken once per reconcile. Every metric has help text.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the reconcile-duration histogram buckets, in seconds.
const BUCKETS: [f64; 8] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// All metrics of one operator process.
#[derive(Debug, Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    /// Reconciles per bucket of [`BUCKETS`] (not cumulative), and one more for `+Inf`.
    durations: [AtomicU64; BUCKETS.len() + 1],
    duration_micros: AtomicU64,
    clusters: Mutex<BTreeMap<(String, String), ClusterGauges>>,
}

/// A per-cluster gauge: name, help, and how to read it.
type Gauge = (&'static str, &'static str, fn(&ClusterGauges) -> u64);

/// The gauges of one cluster.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct ClusterGauges {
    epoch: u64,
    moves: u64,
    ready: u64,
}

impl Metrics {
    /// Counts a finished reconcile of `duration`.
    pub fn reconciled(&self, duration: Duration) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        let secs = duration.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.durations[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.duration_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Counts a failed reconcile, by error kind.
    pub fn failed(&self, kind: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        *failures.entry(kind.to_owned()).or_default() += 1;
    }

    /// Records cluster `namespace/name`'s table epoch, moves in flight and ready nodes.
    pub fn cluster(&self, namespace: &str, name: &str, epoch: u64, moves: usize, ready: u32) {
        let mut clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        clusters.insert(
            (namespace.to_owned(), name.to_owned()),
            ClusterGauges {
                epoch,
                moves: moves as u64,
                ready: u64::from(ready),
            },
        );
    }

    /// Forgets a deleted cluster's gauges.
    pub fn forget(&self, namespace: &str, name: &str) {
        let mut clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        clusters.remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// Reconciles counted so far.
    pub fn reconciles(&self) -> u64 {
        self.reconciles.load(Ordering::Relaxed)
    }

    /// Failures counted so far, all kinds.
    pub fn failures(&self) -> u64 {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.values().sum()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let count = self.reconciles();
        let _ = writeln!(
            out,
            "# HELP roomshard_operator_reconciles_total Reconcile passes that finished without error."
        );
        let _ = writeln!(out, "# TYPE roomshard_operator_reconciles_total counter");
        let _ = writeln!(out, "roomshard_operator_reconciles_total {count}");

        let _ = writeln!(
            out,
            "# HELP roomshard_operator_reconcile_failures_total Reconcile passes that failed, by error kind (each is retried with backoff)."
        );
        let _ = writeln!(
            out,
            "# TYPE roomshard_operator_reconcile_failures_total counter"
        );
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (kind, n) in failures {
            let _ = writeln!(
                out,
                "roomshard_operator_reconcile_failures_total{{kind=\"{kind}\"}} {n}"
            );
        }

        let _ = writeln!(
            out,
            "# HELP roomshard_operator_reconcile_duration_seconds Time one successful reconcile pass took."
        );
        let _ = writeln!(
            out,
            "# TYPE roomshard_operator_reconcile_duration_seconds histogram"
        );
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.durations[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "roomshard_operator_reconcile_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.durations[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "roomshard_operator_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.duration_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "roomshard_operator_reconcile_duration_seconds_sum {sum}"
        );
        let _ = writeln!(
            out,
            "roomshard_operator_reconcile_duration_seconds_count {cumulative}"
        );

        let clusters = self
            .clusters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let gauges: [Gauge; 3] = [
            (
                "roomshard_cluster_epoch",
                "Epoch of the published assignment table.",
                |g| g.epoch,
            ),
            (
                "roomshard_cluster_moves_in_flight",
                "Shard hand-offs in the published table.",
                |g| g.moves,
            ),
            (
                "roomshard_cluster_ready_nodes",
                "Node pods that are Ready members.",
                |g| g.ready,
            ),
        ];
        for (name, help, get) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for ((namespace, cluster), g) in &clusters {
                let _ = writeln!(
                    out,
                    "{name}{{namespace=\"{namespace}\",cluster=\"{cluster}\"}} {}",
                    get(g)
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_help_and_the_histogram_is_cumulative() {
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(5));
        m.reconciled(Duration::from_millis(300));
        m.failed("kube");
        m.cluster("ns", "chat", 7, 3, 2);
        let text = m.render();
        for name in [
            "roomshard_operator_reconciles_total",
            "roomshard_operator_reconcile_failures_total",
            "roomshard_operator_reconcile_duration_seconds",
            "roomshard_cluster_epoch",
            "roomshard_cluster_moves_in_flight",
        ] {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no help for {name}"
            );
        }
        assert!(text.contains("roomshard_operator_reconciles_total 2"));
        assert!(text.contains("roomshard_operator_reconcile_failures_total{kind=\"kube\"} 1"));
        assert!(
            text.contains("roomshard_operator_reconcile_duration_seconds_bucket{le=\"0.01\"} 1")
        );
        assert!(
            text.contains("roomshard_operator_reconcile_duration_seconds_bucket{le=\"0.5\"} 2")
        );
        assert!(text.contains("roomshard_cluster_epoch{namespace=\"ns\",cluster=\"chat\"} 7"));
        m.forget("ns", "chat");
        assert!(!m.render().contains("cluster=\"chat\""));
    }
}
