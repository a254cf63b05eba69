//! Node counters, exported at `/metrics` in the Prometheus text format.
//!
//! Plain atomics: every hot path only increments, and the exporter reads them all at once.
//! Every metric carries help text so an operator reading a dashboard knows what it counts.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::protocol::ErrorCode;

/// All counters and gauges of one node.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open client WebSocket connections.
    pub connections: AtomicI64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Room actors currently running (not passivated).
    pub rooms_active: AtomicI64,
    /// Room actors passivated because they were idle and empty.
    pub rooms_passivated: AtomicU64,
    /// Client frames received.
    pub frames_in: AtomicU64,
    /// Chat messages accepted by a room owner on this node (one per `send` that got a seq).
    pub messages_in: AtomicU64,
    /// Frames queued to local clients (every `msg`, `presence`, reply...).
    pub frames_delivered: AtomicU64,
    /// `msg` frames queued to local clients.
    pub messages_delivered: AtomicU64,
    /// Frames that found a client's outgoing queue full (the client is then disconnected).
    pub queue_drops: AtomicU64,
    /// Connections closed because they did not read fast enough.
    pub slow_consumers: AtomicU64,
    /// Connections refused for want of a usable identity.
    pub auth_failures: AtomicU64,
    /// Events for another node dropped because its link's outbox was full.
    pub peer_drops: AtomicU64,
    errors: [AtomicU64; ErrorCode::ALL.len()],
}

impl Metrics {
    /// Count one `error` frame sent to a client.
    pub fn error(&self, code: ErrorCode) {
        self.errors[code.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// How many `error` frames with `code` were sent.
    pub fn errors_of(&self, code: ErrorCode) -> u64 {
        self.errors[code.index()].load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let gauge = |out: &mut String, name: &str, help: &str, value: i64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        let counter = |out: &mut String, name: &str, help: &str, value: &AtomicU64| {
            let value = value.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        let load = |v: &AtomicI64| v.load(Ordering::Relaxed);
        gauge(
            &mut out,
            "roomshard_connections",
            "Open client WebSocket connections.",
            load(&self.connections),
        );
        counter(
            &mut out,
            "roomshard_connections_total",
            "Client connections accepted.",
            &self.connections_total,
        );
        gauge(
            &mut out,
            "roomshard_rooms_active",
            "Room actors running on this node.",
            load(&self.rooms_active),
        );
        counter(
            &mut out,
            "roomshard_rooms_passivated_total",
            "Idle empty rooms passivated.",
            &self.rooms_passivated,
        );
        counter(
            &mut out,
            "roomshard_frames_in_total",
            "Client frames received.",
            &self.frames_in,
        );
        counter(
            &mut out,
            "roomshard_messages_in_total",
            "Chat messages accepted by rooms owned here.",
            &self.messages_in,
        );
        counter(
            &mut out,
            "roomshard_frames_delivered_total",
            "Frames queued to local clients.",
            &self.frames_delivered,
        );
        counter(
            &mut out,
            "roomshard_messages_delivered_total",
            "Chat messages queued to local clients.",
            &self.messages_delivered,
        );
        counter(
            &mut out,
            "roomshard_queue_drops_total",
            "Frames refused by a full client queue.",
            &self.queue_drops,
        );
        counter(
            &mut out,
            "roomshard_slow_consumers_total",
            "Connections closed for not reading.",
            &self.slow_consumers,
        );
        counter(
            &mut out,
            "roomshard_auth_failures_total",
            "Connections refused for want of identity.",
            &self.auth_failures,
        );
        counter(
            &mut out,
            "roomshard_peer_drops_total",
            "Events for other nodes dropped by a full peer outbox.",
            &self.peer_drops,
        );
        let _ = writeln!(
            out,
            "# HELP roomshard_errors_total Error frames sent to clients, by code.\n# TYPE roomshard_errors_total counter"
        );
        for code in ErrorCode::ALL {
            let _ = writeln!(
                out,
                "roomshard_errors_total{{code=\"{code}\"}} {}",
                self.errors_of(code)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_exports_every_metric_with_help_and_errors_by_code() {
        let metrics = Metrics::default();
        metrics.error(ErrorCode::TooLarge);
        metrics.error(ErrorCode::TooLarge);
        metrics.connections.fetch_add(3, Ordering::Relaxed);
        let text = metrics.render();
        assert!(text.contains("roomshard_errors_total{code=\"too_large\"} 2"));
        assert!(text.contains("roomshard_errors_total{code=\"internal\"} 0"));
        assert!(text.contains("roomshard_connections 3"));
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP")).count();
        assert_eq!(helps, 13);
        assert_eq!(samples, 12 + ErrorCode::ALL.len());
    }
}
