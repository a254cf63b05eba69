//! Timing of one user's move from a node that told it `reconnect` to another node, and the
//! account of the longest pause: where the silence went (told, new connection open, re-joined,
//! first delivery after), so a pause can be pinned on the node, the client or the bench.
//!
//! All times are microseconds on the bench's clock ([`crate::client::Shared::clock`]).

use serde::Serialize;

/// One move from a connection that was told `reconnect` (or dropped) to a new one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Marks {
    /// When the old connection said `reconnect` (or failed).
    pub told_us: u64,
    /// Whether the old connection was still open and read while the new one came up
    /// (make-before-break), or was gone (it dropped, or was closed by the node).
    pub overlapped: bool,
    /// When the new connection's WebSocket handshake finished.
    pub open_us: Option<u64>,
    /// When the new connection's `joined` (the re-join with `since`) arrived.
    pub joined_us: Option<u64>,
    /// When the old connection was closed (by us after the re-join, or by the node).
    pub old_closed_us: Option<u64>,
    /// The last message the old connection delivered after it was told.
    pub old_last_msg_us: Option<u64>,
    /// Connection attempts it took (several when the next node was going away too).
    pub attempts: u32,
    /// Sends made on the old connection after it was told.
    pub old_sends: u32,
}

/// The longest pause one user saw, and the move that fell inside it, if any.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pause {
    /// Last delivery before the silence.
    pub from_us: u64,
    /// First delivery after it.
    pub until_us: u64,
    /// The move that overlapped the silence.
    pub marks: Option<Marks>,
    /// The message that ended it: when its sender was due to send it, and whether the sender
    /// was this user.
    pub ended_by: Option<(u64, bool)>,
}

/// The report's account of the longest pause, in milliseconds from the last delivery before it.
#[derive(Debug, Serialize)]
pub struct PauseAccount {
    /// The silence itself.
    pub pause_ms: f64,
    /// The room's own interval between messages, which every silence includes.
    pub pace_ms: f64,
    /// Told `reconnect` (absent: the pause had no move in it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub told_ms: Option<f64>,
    /// New connection open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_ms: Option<f64>,
    /// Re-joined on the new connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub joined_ms: Option<f64>,
    /// Old connection closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_closed_ms: Option<f64>,
    /// The old connection's last delivery after it was told.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_last_msg_ms: Option<f64>,
    /// Connection attempts of the move.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Whether the old connection was still read while the new one came up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlapped: Option<bool>,
    /// When the message that ended the silence was due to be sent: early in the silence means
    /// it was held up on its way; late means nothing was sent before it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_by_due_ms: Option<f64>,
    /// Whether that message was this user's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_by_own: Option<bool>,
}

impl PauseAccount {
    /// The account of `pause` in a room paced every `pace_us`.
    pub fn of(pause: &Pause, pace_us: u64) -> Self {
        let rel = |at: u64| round1(at.saturating_sub(pause.from_us) as f64 / 1000.0);
        let marks = pause.marks;
        Self {
            pause_ms: rel(pause.until_us),
            pace_ms: round1(pace_us as f64 / 1000.0),
            told_ms: marks.map(|m| rel(m.told_us)),
            open_ms: marks.and_then(|m| m.open_us).map(rel),
            joined_ms: marks.and_then(|m| m.joined_us).map(rel),
            old_closed_ms: marks.and_then(|m| m.old_closed_us).map(rel),
            old_last_msg_ms: marks.and_then(|m| m.old_last_msg_us).map(rel),
            attempts: marks.map(|m| m.attempts),
            overlapped: marks.map(|m| m.overlapped),
            ended_by_due_ms: pause
                .ended_by
                .map(|(due, _)| round1((due as f64 - pause.from_us as f64) / 1000.0)),
            ended_by_own: pause.ended_by.map(|(_, own)| own),
        }
    }
}

/// Every move's steps over the run, as quantiles in milliseconds after being told.
#[derive(Debug, Serialize)]
pub struct MovesSummary {
    /// Moves that completed (re-joined).
    pub moves: usize,
    /// Moves during which the old connection was still read.
    pub overlapped: usize,
    /// Moves whose old connection still delivered a message after it was told.
    pub old_delivered: usize,
    /// Sends made on old connections after they were told.
    pub old_sends: u64,
    /// Told to the old connection's last message: p50, p99, max (moves where it delivered).
    pub old_last_msg_ms: [f64; 3],
    /// Told to new connection open: p50, p99, max.
    pub open_ms: [f64; 3],
    /// Told to re-joined: p50, p99, max.
    pub joined_ms: [f64; 3],
}

impl MovesSummary {
    /// Summarize `moves`.
    pub fn of(moves: &[Marks]) -> Self {
        let done: Vec<&Marks> = moves.iter().filter(|m| m.joined_us.is_some()).collect();
        let after = |pick: fn(&Marks) -> Option<u64>| {
            let mut ms: Vec<u64> = done
                .iter()
                .filter_map(|m| pick(m).map(|at| at.saturating_sub(m.told_us)))
                .collect();
            ms.sort_unstable();
            let q = |p: f64| {
                if ms.is_empty() {
                    return 0.0;
                }
                let i = ((ms.len() - 1) as f64 * p).round() as usize;
                round1(ms[i.min(ms.len() - 1)] as f64 / 1000.0)
            };
            [q(0.5), q(0.99), q(1.0)]
        };
        Self {
            moves: done.len(),
            overlapped: done.iter().filter(|m| m.overlapped).count(),
            old_delivered: done.iter().filter(|m| m.old_last_msg_us.is_some()).count(),
            old_sends: done.iter().map(|m| u64::from(m.old_sends)).sum(),
            old_last_msg_ms: after(|m| m.old_last_msg_us),
            open_ms: after(|m| m.open_us),
            joined_ms: after(|m| m.joined_us),
        }
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
