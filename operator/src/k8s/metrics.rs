//! The controller's metrics, exported at `/metrics` in the Prometheus text format (0.0.4)
//! through the `prometheus-client` crate.
//!
//! Counters and histograms are `prometheus-client` metrics (atomics, and a short lock per
//! histogram observation); the per-cluster gauges are label families written once per
//! reconcile and forgotten when the ChatCluster is deleted, so the registry stays bounded by
//! the clusters that exist. Every metric has help text; `tests/deploy` checks that the chart's
//! alerts and dashboard use only names rendered here (see [`exported_names`]).

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the reconcile-duration histogram buckets, in seconds.
const RECONCILE_BUCKETS: [f64; 8] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Upper bounds of the drain-duration histogram buckets, in seconds: a drain of idle shards
/// takes a few reconcile passes, a busy one tens of seconds, a stuck one up to its deadline.
const DRAIN_BUCKETS: [f64; 10] = [
    5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

/// The labels of every per-cluster metric.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    namespace: String,
    cluster: String,
}

impl ClusterLabels {
    fn of(namespace: &str, cluster: &str) -> ClusterLabels {
        ClusterLabels {
            namespace: namespace.to_owned(),
            cluster: cluster.to_owned(),
        }
    }
}

/// The label of the failure counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

fn drain_histogram() -> Histogram {
    Histogram::new(DRAIN_BUCKETS)
}

type PerCluster = Family<ClusterLabels, Gauge>;

/// What one reconcile pass saw of a cluster, for its gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Epoch of the published assignment table.
    pub epoch: u64,
    /// Shard hand-offs in the published table.
    pub moves: usize,
    /// Node pods that are Ready members.
    pub ready_nodes: u32,
    /// Shards the published table assigns to no node.
    pub unowned_shards: u32,
    /// Whether a drain is past its deadline (`Degraded=True/DrainStuck`).
    pub drain_stuck: bool,
}

/// All metrics of one operator process.
#[derive(Debug)]
pub struct Metrics {
    reconciles: Counter,
    failures: Family<KindLabel, Counter>,
    reconcile_duration: Histogram,
    drain_duration: Family<ClusterLabels, Histogram, fn() -> Histogram>,
    epoch: PerCluster,
    moves: PerCluster,
    ready: PerCluster,
    unowned: PerCluster,
    drain_stuck: PerCluster,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn gauge_value(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

impl Metrics {
    /// Every metric at zero, registered for export.
    pub fn new() -> Metrics {
        let mut m = Metrics {
            reconciles: Counter::default(),
            failures: Family::default(),
            reconcile_duration: Histogram::new(RECONCILE_BUCKETS),
            drain_duration: Family::new_with_constructor(drain_histogram),
            epoch: Family::default(),
            moves: Family::default(),
            ready: Family::default(),
            unowned: Family::default(),
            drain_stuck: Family::default(),
            registry: Registry::default(),
        };
        // Counters are registered without `_total`: the encoder appends it.
        let r = &mut m.registry;
        r.register(
            "roomshard_operator_reconciles",
            "Reconcile passes that finished without error",
            m.reconciles.clone(),
        );
        r.register(
            "roomshard_operator_reconcile_failures",
            "Reconcile passes that failed, by error kind (each is retried with backoff)",
            m.failures.clone(),
        );
        r.register(
            "roomshard_operator_reconcile_duration_seconds",
            "Time one successful reconcile pass took",
            m.reconcile_duration.clone(),
        );
        r.register(
            "roomshard_cluster_drain_duration_seconds",
            "Scale-down drains that completed: from the drain's start (status.drainStarted) to \
             the pass that lowered the StatefulSet's replicas",
            m.drain_duration.clone(),
        );
        r.register(
            "roomshard_cluster_epoch",
            "Epoch of the published assignment table",
            m.epoch.clone(),
        );
        r.register(
            "roomshard_cluster_moves_in_flight",
            "Shard hand-offs in the published table",
            m.moves.clone(),
        );
        r.register(
            "roomshard_cluster_ready_nodes",
            "Node pods that are Ready members",
            m.ready.clone(),
        );
        r.register(
            "roomshard_cluster_unowned_shards",
            "Shards the published table assigns to no node (their rooms are unavailable)",
            m.unowned.clone(),
        );
        r.register(
            "roomshard_cluster_drain_stuck",
            "1 while a drain is past its deadline (Degraded=True, reason DrainStuck), else 0",
            m.drain_stuck.clone(),
        );
        m
    }

    /// Counts a finished reconcile of `duration`.
    pub fn reconciled(&self, duration: Duration) {
        self.reconciles.inc();
        self.reconcile_duration.observe(duration.as_secs_f64());
    }

    /// Counts a failed reconcile, by error kind.
    pub fn failed(&self, kind: &str) {
        self.failures
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Records a drain of cluster `namespace/name` that completed `took` after it started.
    pub fn drained(&self, namespace: &str, name: &str, took: Duration) {
        self.drain_duration
            .get_or_create(&ClusterLabels::of(namespace, name))
            .observe(took.as_secs_f64());
    }

    /// Records what this pass saw of cluster `namespace/name`.
    pub fn cluster(&self, namespace: &str, name: &str, view: ClusterView) {
        let labels = ClusterLabels::of(namespace, name);
        let set = |family: &PerCluster, value: i64| {
            family.get_or_create(&labels).set(value);
        };
        set(&self.epoch, gauge_value(view.epoch));
        set(&self.moves, gauge_value(view.moves));
        set(&self.ready, i64::from(view.ready_nodes));
        set(&self.unowned, i64::from(view.unowned_shards));
        set(&self.drain_stuck, i64::from(view.drain_stuck));
    }

    /// Forgets a deleted cluster's series.
    pub fn forget(&self, namespace: &str, name: &str) {
        let labels = ClusterLabels::of(namespace, name);
        for family in [
            &self.epoch,
            &self.moves,
            &self.ready,
            &self.unowned,
            &self.drain_stuck,
        ] {
            family.remove(&labels);
        }
        self.drain_duration.remove(&labels);
    }

    /// Reconciles counted so far.
    pub fn reconciles(&self) -> u64 {
        self.reconciles.get()
    }

    /// The Prometheus text exposition (0.0.4) of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The metric names a scrape of `text` shows, as Prometheus stores them (sample names, with
/// their `_total`, `_bucket`, `_sum` and `_count` suffixes), sorted and without duplicates.
pub fn exported_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> ClusterView {
        ClusterView {
            epoch: 7,
            moves: 3,
            ready_nodes: 2,
            unowned_shards: 5,
            drain_stuck: true,
        }
    }

    #[test]
    fn every_metric_has_help_and_the_histogram_is_cumulative() {
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(5));
        m.reconciled(Duration::from_millis(300));
        m.failed("kube");
        m.cluster("ns", "chat", view());
        let text = m.render();
        for name in [
            "roomshard_operator_reconciles_total",
            "roomshard_operator_reconcile_failures_total",
            "roomshard_operator_reconcile_duration_seconds",
            "roomshard_cluster_epoch",
            "roomshard_cluster_moves_in_flight",
            "roomshard_cluster_unowned_shards",
            "roomshard_cluster_drain_stuck",
        ] {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no help for {name}"
            );
        }
        assert!(text.contains("roomshard_operator_reconciles_total 2\n"));
        assert!(text.contains("roomshard_operator_reconcile_failures_total{kind=\"kube\"} 1\n"));
        assert!(
            text.contains("roomshard_operator_reconcile_duration_seconds_bucket{le=\"0.01\"} 1\n")
        );
        assert!(
            text.contains("roomshard_operator_reconcile_duration_seconds_bucket{le=\"0.5\"} 2\n")
        );
        assert!(text.contains("roomshard_operator_reconcile_duration_seconds_count 2\n"));
        assert!(text.contains("roomshard_cluster_epoch{namespace=\"ns\",cluster=\"chat\"} 7\n"));
        assert!(
            text.contains(
                "roomshard_cluster_unowned_shards{namespace=\"ns\",cluster=\"chat\"} 5\n"
            )
        );
        assert!(
            text.contains("roomshard_cluster_drain_stuck{namespace=\"ns\",cluster=\"chat\"} 1\n")
        );
        m.forget("ns", "chat");
        assert!(!m.render().contains("cluster=\"chat\""));
    }

    #[test]
    fn a_completed_drain_is_counted_in_its_clusters_histogram_until_the_cluster_goes() {
        let m = Metrics::default();
        m.drained("ns", "chat", Duration::from_secs(42));
        m.drained("ns", "chat", Duration::from_secs(8));
        let text = m.render();
        assert!(text.contains("# TYPE roomshard_cluster_drain_duration_seconds histogram"));
        assert!(text.contains(
            "roomshard_cluster_drain_duration_seconds_bucket{namespace=\"ns\",cluster=\"chat\",le=\"10\"} 1\n"
        ));
        assert!(text.contains(
            "roomshard_cluster_drain_duration_seconds_bucket{namespace=\"ns\",cluster=\"chat\",le=\"60\"} 2\n"
        ));
        assert!(text.contains(
            "roomshard_cluster_drain_duration_seconds_count{namespace=\"ns\",cluster=\"chat\"} 2\n"
        ));
        m.forget("ns", "chat");
        assert!(!m.render().contains("drain_duration_seconds_count"));
    }

    /// Where the exported names are committed; `tests/deploy` checks the chart's alerts and
    /// dashboard against it.
    const COMMITTED: &str = "../tests/deploy/fixtures/metrics/operator.txt";

    #[test]
    fn the_committed_list_of_exported_names_is_what_a_scrape_shows() {
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(1));
        m.failed("kube");
        m.drained("ns", "chat", Duration::from_secs(1));
        m.cluster("ns", "chat", view());
        let mut names = exported_names(&m.render()).join("\n");
        names.push('\n');
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(COMMITTED);
        if std::env::var_os("ROOMSHARD_WRITE_METRICS").is_some() {
            std::fs::write(&path, &names).expect("write the list");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == names,
            "{} is out of date with operator/src/k8s/metrics.rs; regenerate it with\n    \
             ROOMSHARD_WRITE_METRICS=1 cargo test -p operator --lib metrics",
            path.display()
        );
    }
}
