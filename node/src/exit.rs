//! A planned exit: what a node does between being asked to stop (SIGTERM, which is how
//! Kubernetes ends a pod on a rolling update, an eviction, a node drain or `kubectl delete pod`)
//! and telling its clients to `reconnect`.
//!
//! Dropping the rooms at once would lose the history of every room this node owns. Instead the
//! node says so: `/readyz` fails (no new clients) and `/status` reports `terminating`, which the
//! operator reads like a pod's `deletionTimestamp`: it marks the node draining and publishes a
//! table that moves its shards away. The node keeps serving meanwhile: its rooms are frozen,
//! snapshotted and handed to their new owners like in any planned move, and what its clients
//! send goes to the new owners.
//!
//! With two copies of every room the node also follows shards: that table names other
//! followers for them, which the owners bring up to date. Until they are, the owner holds the
//! only live copy, so the node stays until the new followers report, on their `/status`, that
//! they applied that table and have nothing catching up ([`shard::copies_moved_on`]).
//!
//! [`drain_before_exit`] returns once both hold, or after the exit drain timeout: a node whose
//! operator is gone must still stop within its grace period, and then behaves as it did before
//! (rooms it still owns restart empty elsewhere, as after a crash).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shard::{AssignmentTable, CopyReport, NodeName, ShardId};
use tokio::time::Instant;

use crate::peer_status::StatusReader;
use crate::state::NodeState;

/// How often the new followers' `/status` is read while the node waits for them.
const COPIES_POLL: Duration = Duration::from_millis(100);

/// How the wait before an exit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitDrain {
    /// Every shard was handed off (or the node owned none) and the shards it followed have live
    /// copies elsewhere: nothing is lost, and a crash of their owners would lose nothing either.
    HandedOff,
    /// Every shard was handed off, but when the timeout passed some shards it followed had no
    /// caught-up follower elsewhere: their owners hold the only copy until one catches up.
    CopiesBehind,
    /// The timeout passed first; what the node still owns is not handed off.
    TimedOut,
}

/// Mark `node` as stopping and wait until it has handed everything off and the shards it
/// followed are followed elsewhere, at most `timeout`. The new followers' copies are read from
/// their `/status`.
pub async fn drain_before_exit(node: &Arc<NodeState>, timeout: Duration) -> ExitDrain {
    let reader = StatusReader::default();
    drain_before_exit_reading(node, timeout, |table, followers| {
        let reader = reader.clone();
        let table = table.clone();
        let followers = followers.clone();
        async move { reader.copy_reports(&table, &followers).await }
    })
    .await
}

/// [`drain_before_exit`], reading the new followers' copy reports with `read` (the cluster
/// simulation reads its nodes directly).
pub async fn drain_before_exit_reading<F, R>(
    node: &Arc<NodeState>,
    timeout: Duration,
    read: F,
) -> ExitDrain
where
    F: Fn(&AssignmentTable, &BTreeSet<NodeName>) -> R,
    R: Future<Output = BTreeMap<NodeName, CopyReport>>,
{
    node.exiting.cancel();
    let deadline = Instant::now() + timeout;
    let me = &node.settings.name;
    let mut followed: BTreeSet<ShardId> = BTreeSet::new();
    loop {
        // Register for the next wake-up before looking, so a change in between is not missed.
        let progress = node.progress.notified();
        tokio::pin!(progress);
        progress.as_mut().enable();
        followed.extend(node.table().followed_by(me));
        if node.handed_off() {
            break;
        }
        tokio::select! {
            () = progress => {}
            () = tokio::time::sleep_until(deadline) => {
                if node.handed_off() {
                    break;
                }
                return ExitDrain::TimedOut;
            }
        }
    }
    if !followed.is_empty() {
        tracing::info!(
            followed = followed.len(),
            "owned shards handed off: waiting for the shards this node followed to be copied elsewhere"
        );
    }
    loop {
        let table = node.table();
        followed.extend(table.followed_by(me));
        let followers = shard::new_followers(&table, me, &followed);
        let reports = read(&table, &followers).await;
        if shard::copies_moved_on(&table, me, &followed, &reports) {
            return ExitDrain::HandedOff;
        }
        if Instant::now() + COPIES_POLL >= deadline {
            tracing::warn!(
                followed = followed.len(),
                followers = followers.len(),
                read = reports.len(),
                "exit drain timed out waiting for the shards this node followed to be copied elsewhere"
            );
            return ExitDrain::CopiesBehind;
        }
        tokio::time::sleep(COPIES_POLL).await;
    }
}
