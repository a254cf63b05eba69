//! The `ChatCluster` status: a pure summary of one reconcile pass.
//!
//! The condition types and reasons are constants here so that alerting rules and tests name the
//! same strings. `lastTransitionTime` moves only when a condition's status changes, and a
//! summary of an unchanged cluster is equal to the stored one, so the reconciler can skip the
//! write and a pass with nothing new writes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use shard::NodeName;

use super::crd::ChatClusterStatus;
use crate::decide::{Decision, draining_in_progress};

/// Condition types.
pub mod types {
    /// Every desired node is a ready member, every shard is owned, nothing moves.
    pub const READY: &str = "Ready";
    /// The cluster is changing: pods starting, shards moving, or a drain under way.
    pub const PROGRESSING: &str = "Progressing";
    /// Something needs a person: an invalid spec, or a drain that does not finish.
    pub const DEGRADED: &str = "Degraded";
    /// Every pod runs the current pod template (False while a rolling update goes on).
    pub const UP_TO_DATE: &str = "UpToDate";
    /// Every shard has a live follower (replication 2); False names how many have none, or
    /// says replication is off (`replication: 1`). Reasons in [`crate::replication::reasons`].
    pub const REPLICATED: &str = "Replicated";
}

/// Condition reasons.
pub mod reasons {
    /// Ready: all nodes ready and the table settled.
    pub const ALL_NODES_READY: &str = "AllNodesReady";
    /// Not ready / progressing: fewer ready nodes than desired.
    pub const NODES_NOT_READY: &str = "NodesNotReady";
    /// Not ready: no table has been published yet.
    pub const NO_ASSIGNMENT: &str = "NoAssignment";
    /// Progressing: shards are being handed off between live nodes.
    pub const REBALANCING: &str = "Rebalancing";
    /// Progressing: a scale-down is emptying the highest ordinals.
    pub const DRAINING: &str = "Draining";
    /// Progressing false: nothing to do.
    pub const STABLE: &str = "Stable";
    /// Degraded: a drain took longer than `spec.handoffTimeout`.
    pub const DRAIN_STUCK: &str = "DrainStuck";
    /// Degraded: the spec passed the schema but cannot be run (see `checks`).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Degraded false.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// UpToDate true: every pod runs the current template.
    pub const ALL_PODS_UPDATED: &str = "AllPodsUpdated";
    /// UpToDate false, Progressing true: pods are being replaced one at a time, each drained
    /// first.
    pub const ROLLING_UPDATE: &str = "RollingUpdate";
}

/// Phases shown in `kubectl get chat`.
pub mod phases {
    /// No table yet.
    pub const PENDING: &str = "Pending";
    /// Settled.
    pub const RUNNING: &str = "Running";
    /// Pods starting or shards moving.
    pub const SCALING: &str = "Scaling";
    /// A scale-down is in progress.
    pub const DRAINING: &str = "Draining";
    /// A rolling update replaces the pods one at a time.
    pub const UPDATING: &str = "Updating";
    /// See the Degraded condition.
    pub const DEGRADED: &str = "Degraded";
}

/// What one pass observed and decided, for [`summarize`].
#[derive(Debug, Clone, Copy)]
pub struct Pass<'a> {
    /// `metadata.generation` of the cluster.
    pub generation: Option<i64>,
    /// `spec.replicas`.
    pub desired: u32,
    /// Ready member pods among ordinals `0..replicas`.
    pub ready_nodes: u32,
    /// The pods being drained (ordinals at and above `desired`).
    pub draining: &'a [NodeName],
    /// What [`crate::decide()`] said.
    pub decision: &'a Decision,
    /// Where the StatefulSet's rolling update stands.
    pub rollout: Rollout,
    /// The status stored before this pass.
    pub old: Option<&'a ChatClusterStatus>,
    /// When the pass runs.
    pub now: Timestamp,
    /// Node pods that exist (the scale subresource's `status.replicas`).
    pub pods: u32,
    /// The node pods' label selector (the scale subresource's `status.selector`).
    pub selector: &'a str,
}

/// Where a rolling update of the pods stands, from the StatefulSet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rollout {
    /// Pods on the current template (`status.updatedReplicas`); `None` before the StatefulSet
    /// controller has reported.
    pub updated: Option<u32>,
    /// The StatefulSet's replicas.
    pub replicas: u32,
    /// Pods are being replaced: the controller has not caught up with the template yet, or
    /// fewer than `replicas` pods are on the update revision.
    pub in_progress: bool,
}

/// Reads the rolling update's progress from a StatefulSet's status. A StatefulSet that has no
/// status yet (just created) is not rolling.
pub fn rollout_of(sts: Option<&k8s_openapi::api::apps::v1::StatefulSet>) -> Rollout {
    let Some(sts) = sts else {
        return Rollout::default();
    };
    let replicas = sts
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .map_or(0, |r| u32::try_from(r).unwrap_or(0));
    let Some(status) = &sts.status else {
        return Rollout {
            replicas,
            ..Rollout::default()
        };
    };
    let updated = status
        .updated_replicas
        .map(|u| u32::try_from(u).unwrap_or(0));
    let behind = status.observed_generation < sts.metadata.generation;
    // Not `currentRevision != updateRevision`: with `OnDelete` the StatefulSet controller
    // never moves `currentRevision` on, even once every pod is updated.
    Rollout {
        updated,
        replicas,
        in_progress: status.update_revision.is_some()
            && (behind || updated.is_some_and(|u| u < replicas)),
    }
}

/// The status after pass `pass`.
pub fn summarize(pass: &Pass<'_>) -> ChatClusterStatus {
    let Pass {
        generation,
        desired,
        ready_nodes,
        draining,
        decision,
        rollout,
        old,
        now,
        pods,
        selector,
    } = *pass;
    let table = &decision.table;
    let draining_now = draining_in_progress(&decision.step);
    let moves = table.moves.len();
    let assigned = table.owners().iter().all(Option::is_some) && table.epoch > 0;
    let old_started = old.and_then(|s| s.drain_started.clone());
    let drain_started = draining_now.then(|| old_started.unwrap_or_else(|| rfc3339(now)));

    let (phase, progressing) = if draining_now {
        let names: Vec<&str> = draining.iter().map(NodeName::as_str).collect();
        (
            phases::DRAINING,
            Some((reasons::DRAINING, format!("draining {}", names.join(", ")))),
        )
    } else if rollout.in_progress {
        (
            phases::UPDATING,
            Some((
                reasons::ROLLING_UPDATE,
                format!(
                    "rolling update: {}/{} pods updated",
                    rollout.updated.unwrap_or(0),
                    rollout.replicas
                ),
            )),
        )
    } else if !assigned {
        (
            phases::PENDING,
            Some((
                reasons::NO_ASSIGNMENT,
                format!("waiting for nodes: {ready_nodes}/{desired} ready"),
            )),
        )
    } else if ready_nodes < desired {
        (
            phases::SCALING,
            Some((
                reasons::NODES_NOT_READY,
                format!("{ready_nodes}/{desired} nodes ready"),
            )),
        )
    } else if moves > 0 {
        (
            phases::SCALING,
            Some((
                reasons::REBALANCING,
                format!("{moves} shard hand-offs in flight"),
            )),
        )
    } else {
        (phases::RUNNING, None)
    };
    let phase = if decision.stuck.is_some() {
        phases::DEGRADED
    } else {
        phase
    };

    let mut conditions = old.map(|s| s.conditions.clone()).unwrap_or_default();
    let ready = match &progressing {
        None => (
            "True",
            reasons::ALL_NODES_READY,
            format!(
                "{ready_nodes} nodes ready, {} shards assigned",
                table.shards
            ),
        ),
        Some((reason, message)) => ("False", *reason, message.clone()),
    };
    set_condition(&mut conditions, types::READY, ready, generation, now);
    let progressing = match progressing {
        Some((reason, message)) => ("True", reason, message),
        None => ("False", reasons::STABLE, "nothing to do".to_owned()),
    };
    set_condition(
        &mut conditions,
        types::PROGRESSING,
        progressing,
        generation,
        now,
    );
    let degraded = match &decision.stuck {
        Some(stuck) => ("True", reasons::DRAIN_STUCK, stuck.to_string()),
        None => ("False", reasons::AS_EXPECTED, String::new()),
    };
    set_condition(&mut conditions, types::DEGRADED, degraded, generation, now);
    set_condition(
        &mut conditions,
        types::REPLICATED,
        crate::replication::condition(&decision.followers),
        generation,
        now,
    );
    if let Some(updated) = rollout.updated {
        let up_to_date = if rollout.in_progress {
            (
                "False",
                reasons::ROLLING_UPDATE,
                format!("{updated}/{} pods updated", rollout.replicas),
            )
        } else {
            (
                "True",
                reasons::ALL_PODS_UPDATED,
                format!("{updated} pods run the current template"),
            )
        };
        set_condition(
            &mut conditions,
            types::UP_TO_DATE,
            up_to_date,
            generation,
            now,
        );
    }

    ChatClusterStatus {
        observed_generation: generation,
        phase: Some(phase.to_owned()),
        ready_nodes: i32::try_from(ready_nodes).unwrap_or(i32::MAX),
        updated_replicas: rollout
            .updated
            .map(|u| i32::try_from(u).unwrap_or(i32::MAX)),
        epoch: i64::try_from(table.epoch).unwrap_or(i64::MAX),
        shards_per_node: table
            .counts()
            .into_iter()
            .map(|(n, k)| (n.to_string(), i32::try_from(k).unwrap_or(i32::MAX)))
            .collect::<BTreeMap<_, _>>(),
        moves_in_flight: i32::try_from(moves).unwrap_or(i32::MAX),
        shards_with_follower: i32::try_from(decision.followers.with_follower).unwrap_or(i32::MAX),
        draining: if draining_now {
            draining.iter().map(ToString::to_string).collect()
        } else {
            Vec::new()
        },
        drain_started,
        conditions,
        replicas: i32::try_from(pods).unwrap_or(i32::MAX),
        selector: Some(selector.to_owned()),
        // Written by the autoscaler under its own field manager, never by the status apply;
        // carried here so that an unchanged cluster still compares equal to its stored status.
        autoscaling: old.and_then(|s| s.autoscaling.clone()),
    }
}

/// The status of a cluster whose spec cannot be run: what was there, with Degraded set to
/// `message` and the phase Degraded. Nothing else changes, as nothing else was done.
pub fn invalid_spec(
    old: Option<&ChatClusterStatus>,
    generation: Option<i64>,
    message: &str,
    now: Timestamp,
) -> ChatClusterStatus {
    let mut status = old.cloned().unwrap_or_default();
    status.observed_generation = generation;
    status.phase = Some(phases::DEGRADED.to_owned());
    set_condition(
        &mut status.conditions,
        types::DEGRADED,
        ("True", reasons::INVALID_SPEC, message.to_owned()),
        generation,
        now,
    );
    status
}

/// How long ago the drain recorded in `status` started; zero when none is recorded or the
/// record cannot be read (a drain then gets its full time again).
pub fn drain_elapsed(status: Option<&ChatClusterStatus>, now: Timestamp) -> Duration {
    status
        .and_then(|s| s.drain_started.as_deref())
        .and_then(|t| t.parse::<Timestamp>().ok())
        .and_then(|started| Duration::try_from(now.duration_since(started)).ok())
        .unwrap_or(Duration::ZERO)
}

/// The condition `type_` of `status`, if set.
pub fn condition<'a>(status: Option<&'a ChatClusterStatus>, type_: &str) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

/// Sets condition `type_` to `(status, reason, message)`, keeping its `lastTransitionTime`
/// unless the status flips, and keeping it byte-for-byte when nothing changed.
fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    (status, reason, message): (&str, &str, String),
    generation: Option<i64>,
    now: Timestamp,
) {
    let existing = conditions.iter_mut().find(|c| c.type_ == type_);
    match existing {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Time(truncate(now));
            }
            c.status = status.to_owned();
            c.reason = reason.to_owned();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
            last_transition_time: Time(truncate(now)),
        }),
    }
}

/// Whole seconds: what the API server stores for a `Time`, so a read-back compares equal.
fn truncate(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// `2025-01-02T03:04:05Z`.
fn rfc3339(t: Timestamp) -> String {
    truncate(t).to_string()
}

#[cfg(test)]
mod tests;
