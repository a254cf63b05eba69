//! What `GET /cluster` on the admin port answers, and its human summary for
//! `roomshard-operator status`.
//!
//! The same types serialize (driver) and deserialize (CLI, tests), so the JSON cannot drift
//! from what its readers expect.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use shard::{AssignmentTable, DrainStep, Move, NodeName};

use super::Config;
use super::pods::State;
use crate::decide::phase;

/// The whole local cluster as the driver sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    /// The admin (and table) HTTP base URL.
    pub admin_url: String,
    /// Where nodes follow the table.
    pub table_url: String,
    /// The replica count asked for (`--nodes`, then `scale`).
    pub desired_replicas: u32,
    /// The pods that exist now: above `desired_replicas` while a scale-down drains.
    pub replicas: u32,
    /// The published table's epoch.
    pub epoch: u64,
    /// The cluster's shard count.
    pub shards: u32,
    /// Every node process the driver knows, by ordinal (including ones being stopped).
    pub nodes: Vec<NodeView>,
    /// Shards per owning node in the published table.
    pub shards_per_node: BTreeMap<String, u32>,
    /// The published table's moves in flight.
    pub moves_in_flight: Vec<Move>,
    /// Where a scale-down stands.
    pub drain: DrainView,
    /// Where a rolling restart stands.
    #[serde(default)]
    pub rollout: RolloutView,
    /// Replication: copies per shard, how many shards have a live follower, and the
    /// `Replicated` condition as the Kubernetes status would show it.
    #[serde(default)]
    pub replication: ReplicationView,
    /// The autoscaler, when `--autoscale` is on: its bounds, its last change and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<super::AutoscalingView>,
}

/// Where a rolling restart (`roomshard-operator restart`) stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutView {
    /// A rolling restart is under way.
    pub in_progress: bool,
    /// Nodes with a new process so far (in the restart under way).
    pub updated: u32,
    /// Nodes the restart under way rolls in all.
    pub total: u32,
    /// The node being drained or started again now.
    pub current: Option<String>,
    /// Rolling restarts finished since the driver started.
    pub completed: u32,
}

/// Replication as `/cluster` shows it (see [`crate::replication`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationView {
    /// Copies of every shard (`--replication`): 1 or 2.
    pub copies: u8,
    /// Shards with an owner.
    pub assigned_shards: u32,
    /// Shards whose follower reports a live copy.
    pub shards_with_follower: u32,
    /// Shards whose follower is still receiving its copy.
    pub catching_up: u32,
    /// Every assigned shard has a live follower (the `Replicated` condition's status).
    pub replicated: bool,
    /// The condition's reason (`AllShardsFollowed`, `CatchingUp`, `FollowersMissing`,
    /// `NoAssignment`, `ReplicationOff`).
    pub reason: String,
    /// The condition's message.
    pub message: String,
    /// Nodes a scale-down waits on while they catch up followed shards (`node (shards)`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
}

/// One node process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// Its name, `node-{ordinal}`.
    pub name: String,
    /// The process id while it runs.
    pub pid: Option<u32>,
    /// Its client base URL (`http://127.0.0.1:PORT`), once it announced it.
    pub client_url: Option<String>,
    /// Its WebSocket URL (`ws://127.0.0.1:PORT/ws`).
    pub ws_url: Option<String>,
    /// Its peer-link address (`127.0.0.1:PORT`).
    pub peer_addr: Option<String>,
    /// A process runs for it.
    pub running: bool,
    /// Its readiness probe passes: it is a member.
    pub ready: bool,
    /// It is being drained for a scale-down.
    pub draining: bool,
    /// It has been told to stop (SIGTERM) and has not exited yet.
    pub stopping: bool,
    /// It is on a planned exit (stopped by the driver, or it reports `terminating` after a
    /// SIGTERM by hand) and hands its shards off before it exits.
    #[serde(default)]
    pub terminating: bool,
    /// How many times it was started again after exiting unexpectedly.
    pub restarts: u32,
    /// Shards it owns in the published table.
    pub shards: u32,
    /// Its last `/status`, as it sent it.
    pub status: Option<serde_json::Value>,
}

/// Where a scale-down stands: the phase of the last drain step and what it waits for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainView {
    /// `Steady`, `MarkDraining`, `WaitForEpoch`, `WaitForMoves` or `Remove`.
    pub phase: String,
    /// Nodes being drained.
    pub draining: Vec<String>,
    /// Nodes that have not applied the published epoch (in `WaitForEpoch`).
    pub lagging: Vec<String>,
    /// Moves off the draining nodes not yet done (in `WaitForMoves`).
    pub pending: Vec<Move>,
    /// Seconds the scale-down has been going on.
    pub elapsed_secs: u64,
    /// Set when the scale-down is past its deadline: what it is stuck on, in words.
    pub stuck: Option<String>,
}

impl ClusterView {
    /// The node called `name`, if the driver knows it.
    pub fn node(&self, name: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// True when every desired node is ready and reports the published epoch, nothing drains
    /// or moves, and every shard has an owner among the desired nodes.
    pub fn is_settled(&self) -> bool {
        let ready = self
            .nodes
            .iter()
            .filter(|n| n.ready && !n.stopping && !n.terminating)
            .count();
        let caught_up = self.nodes.iter().all(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.get("epoch"))
                .and_then(serde_json::Value::as_u64)
                == Some(self.epoch)
        });
        caught_up
            && !self.rollout.in_progress
            && self.replicas == self.desired_replicas
            && ready == self.desired_replicas as usize
            && self.nodes.len() == self.desired_replicas as usize
            && self.drain.phase == "Steady"
            && self.moves_in_flight.is_empty()
            && self.shards_per_node.len() == self.desired_replicas as usize
            && self.shards_per_node.values().sum::<u32>() == self.shards
    }

    /// A readable multi-line summary for people.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "roomshard local cluster at {}: {} of {} replicas, table epoch {}, {} shards",
            self.admin_url, self.replicas, self.desired_replicas, self.epoch, self.shards
        );
        let _ = writeln!(out, "phase: {}", self.drain.phase);
        let _ = writeln!(
            out,
            "replication {}: {}",
            self.replication.copies, self.replication.message
        );
        if !self.replication.waiting_for.is_empty() {
            let _ = writeln!(
                out,
                "scale-down waits for followers catching up on {}",
                self.replication.waiting_for.join(", ")
            );
        }
        if self.rollout.in_progress {
            let _ = writeln!(
                out,
                "rolling restart: {}/{} nodes updated, now {}",
                self.rollout.updated,
                self.rollout.total,
                self.rollout.current.as_deref().unwrap_or("-")
            );
        }
        if let Some(a) = &self.autoscaling {
            let _ = writeln!(
                out,
                "autoscaling {}..{}: {}",
                a.min_replicas, a.max_replicas, a.status
            );
            if let (Some(reason), Some(ago)) = (&a.last_reason, a.last_secs_ago) {
                let _ = writeln!(out, "last change ({ago}s ago): {reason}");
            }
        }
        if !self.drain.draining.is_empty() {
            let _ = writeln!(
                out,
                "draining: {} (for {}s)",
                self.drain.draining.join(", "),
                self.drain.elapsed_secs
            );
        }
        if let Some(stuck) = &self.drain.stuck {
            let _ = writeln!(out, "STUCK: {stuck}");
        }
        let _ = writeln!(
            out,
            "\n{:<10} {:>8} {:<9} {:>6} {:>6} {:>6} {:>6} {:>6}  CHAT PAGE",
            "NAME", "PID", "STATE", "SHARDS", "EPOCH", "MOVES", "ROOMS", "CONNS"
        );
        for node in &self.nodes {
            let state = if node.stopping || node.terminating {
                "stopping"
            } else if node.draining && node.ready {
                "draining"
            } else if node.ready {
                "ready"
            } else if node.running {
                "starting"
            } else {
                "down"
            };
            let field = |key: &str| {
                node.status
                    .as_ref()
                    .and_then(|s| s.get(key))
                    .map_or_else(|| "-".to_string(), |v| v.to_string())
            };
            let _ = writeln!(
                out,
                "{:<10} {:>8} {:<9} {:>6} {:>6} {:>6} {:>6} {:>6}  {}",
                node.name,
                node.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
                state,
                node.shards,
                field("epoch"),
                field("movesInFlight"),
                field("rooms"),
                field("connections"),
                node.client_url
                    .as_deref()
                    .map_or_else(|| "-".to_string(), |u| format!("{u}/")),
            );
        }
        if !self.moves_in_flight.is_empty() {
            let named: Vec<String> = self
                .moves_in_flight
                .iter()
                .take(8)
                .map(|m| format!("shard {} {} -> {}", m.shard, m.from, m.to))
                .collect();
            let more = self.moves_in_flight.len().saturating_sub(named.len());
            let _ = write!(
                out,
                "\nmoves in flight: {} ({}",
                self.moves_in_flight.len(),
                named.join(", ")
            );
            if more > 0 {
                let _ = write!(out, ", and {more} more");
            }
            let _ = writeln!(out, ")");
        }
        out
    }
}

/// The view of the driver's state `st` with the published `table`.
pub(super) fn build(st: &State, table: &AssignmentTable, config: &Config) -> ClusterView {
    let counts = table.counts();
    let nodes = st
        .pods
        .values()
        .map(|pod| {
            let proc = pod.proc.as_ref();
            let client = proc.and_then(|p| p.client);
            NodeView {
                name: pod.name.to_string(),
                pid: proc.and_then(|p| p.pid),
                client_url: client.map(|a| format!("http://{a}")),
                ws_url: client.map(|a| format!("ws://{a}/ws")),
                peer_addr: proc.and_then(|p| p.peer).map(|a| a.to_string()),
                running: proc.is_some(),
                ready: proc.is_some_and(|p| p.ready),
                draining: table.draining.contains(&pod.name),
                stopping: proc.is_some_and(|p| p.stopping),
                terminating: proc.is_some_and(|p| p.leaving()),
                restarts: pod.restarts,
                shards: counts.get(&pod.name).copied().unwrap_or(0),
                status: proc.and_then(|p| p.status.clone()),
            }
        })
        .collect();
    let names = |set: &std::collections::BTreeSet<NodeName>| -> Vec<String> {
        set.iter().map(ToString::to_string).collect()
    };
    let (draining, lagging, pending) = match &st.step {
        DrainStep::MarkDraining(set) | DrainStep::Remove(set) => (names(set), vec![], vec![]),
        DrainStep::WaitForEpoch { lagging, .. } => (
            names(&table.draining),
            lagging.iter().map(ToString::to_string).collect(),
            vec![],
        ),
        DrainStep::WaitForMoves { pending } => (names(&table.draining), vec![], pending.clone()),
        DrainStep::Steady => (vec![], vec![], vec![]),
    };
    let rollout = RolloutView {
        in_progress: st.rollout.is_some(),
        updated: st.rollout.as_ref().map_or(0, |r| r.updated),
        total: st.rollout.as_ref().map_or(0, |r| r.total),
        current: st
            .rollout
            .as_ref()
            .and_then(|r| r.current())
            .and_then(|o| st.pods.get(&o))
            .map(|p| p.name.to_string()),
        completed: st.rollouts_done,
    };
    ClusterView {
        admin_url: config.admin_url.clone(),
        table_url: config.table_url.clone(),
        desired_replicas: st.desired,
        replicas: st.replicas,
        epoch: table.epoch,
        shards: table.shards,
        nodes,
        shards_per_node: counts
            .into_iter()
            .map(|(n, k)| (n.to_string(), k))
            .collect(),
        moves_in_flight: table.moves.clone(),
        drain: DrainView {
            phase: phase(&st.step).to_string(),
            draining,
            lagging,
            pending,
            elapsed_secs: st.drain_since.map_or(0, |t| t.elapsed().as_secs()),
            stuck: st.stuck.as_ref().map(ToString::to_string),
        },
        rollout,
        replication: replication_view(st),
        autoscaling: st.autoscaler.as_ref().map(|a| a.view(st.scalings)),
    }
}

/// The replication part of the view, from the last pass.
fn replication_view(st: &State) -> ReplicationView {
    let summary = &st.followers;
    let (status, reason, message) = crate::replication::condition(summary);
    ReplicationView {
        copies: summary.replication,
        assigned_shards: summary.assigned,
        shards_with_follower: summary.with_follower,
        catching_up: summary.catching_up,
        replicated: status == "True",
        reason: reason.to_owned(),
        message,
        waiting_for: st
            .catching_up
            .iter()
            .map(|(n, k)| format!("{n} ({k})"))
            .collect(),
    }
}
