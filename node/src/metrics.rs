//! Node metrics, exported at `/metrics` in the Prometheus text format (0.0.4) through the
//! `prometheus-client` crate.
//!
//! Every hot-path metric is a `prometheus-client` [`Counter`] or [`Gauge`]: one shared atomic,
//! so counting costs what a plain `fetch_add` costs. The registry only reads them when
//! `/metrics` is scraped. The gauges that describe state kept elsewhere (peer links, the table)
//! are set by the `/metrics` handler just before it renders. Every metric carries help text, so
//! an operator reading a dashboard knows what it counts; `tests/deploy` checks that the chart's
//! alerts and dashboard use only names rendered here (see [`exported_names`]).

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use shard::ShardId;

use crate::protocol::ErrorCode;

/// Upper bounds (seconds) of the hand-off duration buckets: a snapshot of a few rooms arrives
/// in milliseconds, a large shard or a slow link in seconds; the hand-off timeout (10 s by
/// default, `--handoff-timeout`) bounds the wait.
const HANDOFF_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Upper bounds (seconds) of the send-to-fan-out buckets: normally tens of microseconds; the
/// upper ones catch a room queue that was full (a sender waits up to the 2 s send timeout).
const FANOUT_BUCKETS: [f64; 13] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// The label of the per-code error counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

/// The label of the per-shard hand-off histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: String,
}

fn handoff_histogram() -> Histogram {
    Histogram::new(HANDOFF_BUCKETS)
}

/// All metrics of one node.
#[derive(Debug)]
pub struct Metrics {
    /// Open client WebSocket connections.
    pub connections: Gauge,
    /// Connections accepted since start.
    pub connections_total: Counter,
    /// Room actors currently running (not passivated).
    pub rooms_active: Gauge,
    /// Room actors passivated because they were idle and empty.
    pub rooms_passivated: Counter,
    /// Client frames received.
    pub frames_in: Counter,
    /// Chat messages accepted by a room owner on this node (one per `send` that got a seq).
    pub messages_in: Counter,
    /// Frames queued to local clients (every `msg`, `presence`, reply...).
    pub frames_delivered: Counter,
    /// `msg` frames queued to local clients.
    pub messages_delivered: Counter,
    /// Frames that found a client's outgoing queue full (the client is then disconnected).
    pub queue_drops: Counter,
    /// Connections closed because they did not read fast enough.
    pub slow_consumers: Counter,
    /// Connections refused for want of a usable identity.
    pub auth_failures: Counter,
    /// Events for another node that its link's full outbox could not take: each is announced
    /// to that node as a gap once the outbox has room (see `peer::link`).
    pub peer_drops: Counter,
    /// Gap announcements queued for edge nodes (each makes the edge tell the affected
    /// members to reconnect and re-join with `since`).
    pub peer_gaps: Counter,
    /// Members this edge told to reconnect because they missed events of a room: an owner
    /// announced a gap, or a message's seq jumped past the member's (see `edge::order`).
    pub gap_reconnects: Counter,
    /// Connections told to reconnect because a node they had a request in flight with failed.
    pub lost_request_reconnects: Counter,
    /// Sends refused with `overloaded` before they got a seq, because a node with members in
    /// the room could not take more (its peer outbox was full).
    pub sends_refused_overloaded: Counter,
    /// Snapshots sent again because their acknowledgement did not come (see `state/outgoing`).
    pub snapshot_resends: Counter,
    /// Changes this node refused as a follower because their sender does not own the shard in
    /// its table (an old owner fenced out).
    pub replication_fenced: Counter,
    /// Rooms this node sent whole to a follower: a follower new to them, or a copy that
    /// missed a change.
    pub rooms_sent_whole: Counter,
    /// Followed shards sent whole again because their follower said it held no live copy
    /// (it lost its copy in a table this node skipped, or restarted).
    pub copies_resent: Counter,
    /// Shards the table still gives this node that its previous process owned: left to their
    /// followers, and the node not ready, until the table gives them elsewhere.
    pub shards_inherited: Gauge,
    /// Per-code error counters, in [`ErrorCode::ALL`] order (clones of the family's members,
    /// so counting one is an index and an atomic add, no lookup).
    errors: [Counter; ErrorCode::ALL.len()],
    peers_connected: Gauge,
    peers_expected: Gauge,
    peer_sessions: Counter,
    peer_unacked: Gauge,
    table_epoch: Gauge,
    shards_owned: Gauge,
    moves_in_flight: Gauge,
    handoff: Family<ShardLabel, Histogram, fn() -> Histogram>,
    send_fanout: Histogram,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// What the `/metrics` handler reads from the peer layer at each scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerView {
    /// Peer links with a live connection.
    pub connected: usize,
    /// Peer links this node should have: the other nodes of its table.
    pub expected: usize,
    /// Peer connections established since start (reconnects count again).
    pub sessions: u64,
    /// Messages to peers waiting for acknowledgement.
    pub unacked: usize,
}

fn gauge_value(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

impl Metrics {
    /// Every metric at zero, registered for export.
    pub fn new() -> Metrics {
        let errors_family = Family::<CodeLabel, Counter>::default();
        let errors = ErrorCode::ALL.map(|code| {
            errors_family
                .get_or_create(&CodeLabel {
                    code: code.to_string(),
                })
                .clone()
        });
        let mut m = Metrics {
            connections: Gauge::default(),
            connections_total: Counter::default(),
            rooms_active: Gauge::default(),
            rooms_passivated: Counter::default(),
            frames_in: Counter::default(),
            messages_in: Counter::default(),
            frames_delivered: Counter::default(),
            messages_delivered: Counter::default(),
            queue_drops: Counter::default(),
            slow_consumers: Counter::default(),
            auth_failures: Counter::default(),
            peer_drops: Counter::default(),
            snapshot_resends: Counter::default(),
            replication_fenced: Counter::default(),
            rooms_sent_whole: Counter::default(),
            copies_resent: Counter::default(),
            shards_inherited: Gauge::default(),
            peer_gaps: Counter::default(),
            gap_reconnects: Counter::default(),
            lost_request_reconnects: Counter::default(),
            sends_refused_overloaded: Counter::default(),
            errors,
            peers_connected: Gauge::default(),
            peers_expected: Gauge::default(),
            peer_sessions: Counter::default(),
            peer_unacked: Gauge::default(),
            table_epoch: Gauge::default(),
            shards_owned: Gauge::default(),
            moves_in_flight: Gauge::default(),
            handoff: Family::new_with_constructor(handoff_histogram),
            send_fanout: Histogram::new(FANOUT_BUCKETS),
            registry: Registry::default(),
        };
        // Counters are registered without `_total`: the encoder appends it.
        let r = &mut m.registry;
        r.register(
            "roomshard_connections",
            "Open client WebSocket connections",
            m.connections.clone(),
        );
        r.register(
            "roomshard_connections",
            "Client connections accepted",
            m.connections_total.clone(),
        );
        r.register(
            "roomshard_rooms_active",
            "Room actors running on this node",
            m.rooms_active.clone(),
        );
        r.register(
            "roomshard_rooms_passivated",
            "Idle empty rooms passivated",
            m.rooms_passivated.clone(),
        );
        r.register(
            "roomshard_frames_in",
            "Client frames received",
            m.frames_in.clone(),
        );
        r.register(
            "roomshard_messages_in",
            "Chat messages accepted by rooms owned here",
            m.messages_in.clone(),
        );
        r.register(
            "roomshard_frames_delivered",
            "Frames queued to local clients",
            m.frames_delivered.clone(),
        );
        r.register(
            "roomshard_messages_delivered",
            "Chat messages queued to local clients",
            m.messages_delivered.clone(),
        );
        r.register(
            "roomshard_queue_drops",
            "Frames refused by a full client queue",
            m.queue_drops.clone(),
        );
        r.register(
            "roomshard_slow_consumers",
            "Connections closed for not reading",
            m.slow_consumers.clone(),
        );
        r.register(
            "roomshard_auth_failures",
            "Connections refused for want of identity",
            m.auth_failures.clone(),
        );
        r.register(
            "roomshard_peer_drops",
            "Events for other nodes a full peer outbox could not take (announced as gaps)",
            m.peer_drops.clone(),
        );
        r.register(
            "roomshard_peer_gaps",
            "Gap announcements queued for edge nodes after their outbox had been full",
            m.peer_gaps.clone(),
        );
        r.register(
            "roomshard_gap_reconnects",
            "Members told to reconnect and re-join because they missed events of a room (an owner announced a gap, or a seq jumped)",
            m.gap_reconnects.clone(),
        );
        r.register(
            "roomshard_lost_request_reconnects",
            "Connections told to reconnect because a node holding one of their requests failed",
            m.lost_request_reconnects.clone(),
        );
        r.register(
            "roomshard_sends_refused_overloaded",
            "Sends refused with overloaded before taking a seq (a member node's peer outbox was full)",
            m.sends_refused_overloaded.clone(),
        );
        r.register(
            "roomshard_snapshot_resends",
            "Hand-off snapshots sent again because the new owner's acknowledgement did not come",
            m.snapshot_resends.clone(),
        );
        r.register(
            "roomshard_replication_fenced",
            "Changes refused as a follower because their sender does not own the shard here",
            m.replication_fenced.clone(),
        );
        r.register(
            "roomshard_rooms_sent_whole",
            "Rooms sent whole to a follower (a follower new to them, or a copy that missed a change)",
            m.rooms_sent_whole.clone(),
        );
        r.register(
            "roomshard_copies_resent",
            "Shards sent whole again to a follower that said it held no live copy of them, or restarted",
            m.copies_resent.clone(),
        );
        r.register(
            "roomshard_shards_inherited",
            "Shards the table still gives this node that its previous process owned (left to their followers; the node is not ready until none is left)",
            m.shards_inherited.clone(),
        );
        r.register(
            "roomshard_errors",
            "Error frames sent to clients, by code",
            errors_family,
        );
        r.register(
            "roomshard_peers_connected",
            "Peer links up",
            m.peers_connected.clone(),
        );
        r.register(
            "roomshard_peers_expected",
            "Peer links this node should have (the other nodes of its table)",
            m.peers_expected.clone(),
        );
        r.register(
            "roomshard_peer_sessions",
            "Peer connections established (reconnects count again)",
            m.peer_sessions.clone(),
        );
        r.register(
            "roomshard_peer_unacked",
            "Messages to peers waiting for acknowledgement",
            m.peer_unacked.clone(),
        );
        r.register(
            "roomshard_table_epoch",
            "Epoch of the assignment table applied",
            m.table_epoch.clone(),
        );
        r.register(
            "roomshard_shards_owned",
            "Shards this node owns",
            m.shards_owned.clone(),
        );
        r.register(
            "roomshard_moves_in_flight",
            "Hand-offs in progress on this node",
            m.moves_in_flight.clone(),
        );
        r.register(
            "roomshard_handoff_duration_seconds",
            "Hand-offs completed on this node as the new owner, by shard: from applying the \
             table that moves the shard here to its snapshot installed and buffered commands \
             replayed",
            m.handoff.clone(),
        );
        r.register(
            "roomshard_send_fanout_seconds",
            "Chat messages accepted by rooms owned here: from the owner's room registry \
             receiving the send (including any wait for room in a full room queue) to its \
             fan-out queued to every local client and peer link",
            m.send_fanout.clone(),
        );
        m
    }

    /// Count one `error` frame sent to a client.
    pub fn error(&self, code: ErrorCode) {
        self.errors[code.index()].inc();
    }

    /// How many `error` frames with `code` were sent.
    pub fn errors_of(&self, code: ErrorCode) -> u64 {
        self.errors[code.index()].get()
    }

    /// Records a hand-off of `shard` that this node, its new owner, completed in `took`.
    pub fn handoff_completed(&self, shard: ShardId, took: Duration) {
        self.handoff
            .get_or_create(&ShardLabel {
                shard: shard.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Records one accepted chat message whose fan-out was queued `took` after the room
    /// registry received it.
    pub fn send_fanned_out(&self, took: Duration) {
        self.send_fanout.observe(took.as_secs_f64());
    }

    /// Sets the peer-link gauges from what the peer layer reports (read at each scrape).
    pub fn set_peers(&self, view: PeerView) {
        self.peers_connected.set(gauge_value(view.connected));
        self.peers_expected.set(gauge_value(view.expected));
        self.peer_unacked.set(gauge_value(view.unacked));
        // The peer layer counts sessions itself; the exported counter catches up with it.
        let behind = view.sessions.saturating_sub(self.peer_sessions.get());
        self.peer_sessions.inc_by(behind);
    }

    /// Sets the table gauges: the epoch applied, shards owned, hand-offs in progress.
    pub fn set_table(&self, epoch: u64, shards_owned: u32, moves_in_flight: u32) {
        self.table_epoch.set(gauge_value(epoch));
        self.shards_owned.set(i64::from(shards_owned));
        self.moves_in_flight.set(i64::from(moves_in_flight));
    }

    /// The Prometheus text exposition (0.0.4) of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
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

    #[test]
    fn render_exports_every_metric_with_help_and_errors_by_code() {
        let metrics = Metrics::default();
        metrics.error(ErrorCode::TooLarge);
        metrics.error(ErrorCode::TooLarge);
        metrics.connections.inc_by(3);
        metrics.messages_in.inc();
        let text = metrics.render();
        assert!(text.contains("roomshard_errors_total{code=\"too_large\"} 2"));
        assert!(text.contains("roomshard_errors_total{code=\"internal\"} 0"));
        assert!(text.contains("roomshard_connections 3\n"));
        assert!(text.contains("roomshard_messages_in_total 1\n"));
        assert!(text.contains("# TYPE roomshard_messages_in_total counter"));
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP")).count();
        assert_eq!(helps, types, "every metric has help text");
        // 30: the hand-off histogram shows once a shard has been handed here.
        assert_eq!(types, 30);
        assert!(!text.contains(".."), "help text ends with one period");
    }

    #[test]
    fn the_send_histogram_counts_each_message_in_its_bucket() {
        let metrics = Metrics::default();
        metrics.send_fanned_out(Duration::from_micros(80));
        metrics.send_fanned_out(Duration::from_millis(3));
        let text = metrics.render();
        assert!(text.contains("# TYPE roomshard_send_fanout_seconds histogram"));
        assert!(text.contains("roomshard_send_fanout_seconds_bucket{le=\"5e-05\"} 0\n"));
        assert!(text.contains("roomshard_send_fanout_seconds_bucket{le=\"0.0001\"} 1\n"));
        assert!(text.contains("roomshard_send_fanout_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("roomshard_send_fanout_seconds_count 2\n"));
    }

    #[test]
    fn the_handoff_histogram_has_one_series_per_shard_handed_here() {
        let metrics = Metrics::default();
        assert!(
            !metrics
                .render()
                .contains("roomshard_handoff_duration_seconds_count")
        );
        metrics.handoff_completed(ShardId(7), Duration::from_millis(40));
        metrics.handoff_completed(ShardId(7), Duration::from_secs(3));
        metrics.handoff_completed(ShardId(9), Duration::from_millis(2));
        let text = metrics.render();
        assert!(text.contains("roomshard_handoff_duration_seconds_count{shard=\"7\"} 2\n"));
        assert!(
            text.contains("roomshard_handoff_duration_seconds_bucket{shard=\"7\",le=\"0.05\"} 1\n")
        );
        assert!(text.contains("roomshard_handoff_duration_seconds_count{shard=\"9\"} 1\n"));
    }

    /// Where the exported names are committed; `tests/deploy` checks the chart's alerts and
    /// dashboard against it.
    const COMMITTED: &str = "../tests/deploy/fixtures/metrics/node.txt";

    #[test]
    fn the_committed_list_of_exported_names_is_what_a_scrape_shows() {
        let metrics = Metrics::default();
        metrics.handoff_completed(ShardId(1), Duration::from_millis(1));
        let mut names = exported_names(&metrics.render()).join("\n");
        names.push('\n');
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(COMMITTED);
        if std::env::var_os("ROOMSHARD_WRITE_METRICS").is_some() {
            std::fs::write(&path, &names).expect("write the list");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == names,
            "{} is out of date with node/src/metrics.rs; regenerate it with\n    \
             ROOMSHARD_WRITE_METRICS=1 cargo test -p node --lib metrics",
            path.display()
        );
    }

    #[test]
    fn peer_and_table_gauges_follow_what_the_handler_sets() {
        let metrics = Metrics::default();
        let view = PeerView {
            connected: 1,
            expected: 2,
            sessions: 5,
            unacked: 3,
        };
        metrics.set_peers(view);
        metrics.set_peers(view);
        metrics.set_table(12, 85, 1);
        let text = metrics.render();
        for line in [
            "roomshard_peers_connected 1\n",
            "roomshard_peers_expected 2\n",
            "roomshard_peer_sessions_total 5\n",
            "roomshard_peer_unacked 3\n",
            "roomshard_table_epoch 12\n",
            "roomshard_shards_owned 85\n",
            "roomshard_moves_in_flight 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
