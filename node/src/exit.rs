//! A planned exit: what a node does between being asked to stop (SIGTERM, which is how
//! Kubernetes ends a pod on a rolling update, an eviction, a node drain or `kubectl delete pod`)
//! and telling its clients to `reconnect`.
//!
//! Dropping the rooms at once would lose the history of every room this node owns. Instead the
//! node says so: `/readyz` fails (no new clients) and `/status` reports `terminating`, which the
//! operator reads like a pod's `deletionTimestamp`: it marks the node draining and publishes a
//! table that moves its shards away. The node keeps serving meanwhile: its rooms are frozen,
//! snapshotted and handed to their new owners like in any planned move, and what its clients
//! send goes to the new owners. [`drain_before_exit`] returns once the node has nothing left to
//! hand off ([`shard::handed_off`]), or after the exit drain timeout: a node whose operator is
//! gone must still stop within its grace period, and then behaves as it did before (rooms it
//! still owns restart empty elsewhere, as after a crash).

use std::sync::Arc;
use std::time::Duration;

use crate::state::NodeState;

/// How the wait before an exit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitDrain {
    /// Every shard was handed off (or the node owned none): nothing is lost.
    HandedOff,
    /// The timeout passed first; what the node still owns is not handed off.
    TimedOut,
}

/// Mark `node` as stopping and wait until it has handed everything off, at most `timeout`.
pub async fn drain_before_exit(node: &Arc<NodeState>, timeout: Duration) -> ExitDrain {
    node.exiting.cancel();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // Register for the next wake-up before looking, so a change in between is not missed.
        let progress = node.progress.notified();
        tokio::pin!(progress);
        progress.as_mut().enable();
        if node.handed_off() {
            return ExitDrain::HandedOff;
        }
        tokio::select! {
            () = progress => {}
            () = tokio::time::sleep_until(deadline) => {
                return if node.handed_off() { ExitDrain::HandedOff } else { ExitDrain::TimedOut };
            }
        }
    }
}
