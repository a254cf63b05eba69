//! The shard map's model: what `GET /map.json` answers and the page draws, and [`build`], the
//! pure function that makes it from what a driver already holds after a reconcile pass.
//!
//! Both drivers call [`build`] with the same kind of inputs (the published table, the pods as
//! [`crate::decide()`] saw them, the drain step and the rollout's progress), so the page cannot
//! tell the Kubernetes controller from the local driver. The model is bounded: shards are listed
//! one by one only up to [`DETAIL_SHARDS`], and at most [`MOVES_LISTED`] moves are named.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shard::{AssignmentTable, DrainStep, Move, NodeName, ordinal_of};

use crate::decide::{PodView, Stuck, phase};

/// Above this many shards the model gives each pod's shard count but not the shards themselves:
/// a grid of a million cells helps nobody, and the JSON polled every second stays small.
pub const DETAIL_SHARDS: u32 = 16_384;

/// At most this many moves are named in a [`ClusterMap`]; [`ClusterMap::moves_total`] counts
/// them all.
pub const MOVES_LISTED: usize = 1_024;

/// Every cluster a server knows, as `GET /map.json` answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardMap {
    /// One entry per cluster, ordered by namespace and name.
    pub clusters: Vec<ClusterMap>,
}

/// One cluster: its pods, who owns which shard, what moves, and where a drain or a rollout
/// stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterMap {
    /// The `ChatCluster`'s namespace (empty for the local driver).
    pub namespace: String,
    /// The `ChatCluster`'s name (`local` for the local driver).
    pub name: String,
    /// The published table's epoch.
    pub epoch: u64,
    /// The cluster's shard count.
    pub shards: u32,
    /// The replica count asked for.
    pub desired_replicas: u32,
    /// True when every pod's [`PodMap::shards`] lists its shards (at most [`DETAIL_SHARDS`]
    /// shards); otherwise only [`PodMap::shard_count`] is filled in.
    pub detailed: bool,
    /// Shards without an owner in the table (a fresh cluster, or nobody ready).
    pub unowned: u32,
    /// Every pod: those the driver runs (by ordinal) and any other the table still lists.
    pub pods: Vec<PodMap>,
    /// Moves in flight, by shard; at most [`MOVES_LISTED`].
    pub moves: Vec<Move>,
    /// How many moves are in flight in all.
    pub moves_total: u32,
    /// Where a scale-down stands.
    pub drain: DrainProgress,
    /// Where a rolling update (or the local driver's rolling restart) stands.
    pub rollout: RolloutProgress,
}

/// One pod on the map.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodMap {
    /// The pod's name, `{prefix}-{ordinal}`.
    pub name: String,
    /// A process (container) runs for it.
    pub running: bool,
    /// Its readiness probe passes.
    pub ready: bool,
    /// The table drains it: its shards are planned off it.
    pub draining: bool,
    /// It is on its way out (deleted, stopped by the driver, or it said `terminating`).
    pub terminating: bool,
    /// It runs the current pod template; `None` when the driver cannot tell.
    pub updated: Option<bool>,
    /// The published table lists it.
    pub in_table: bool,
    /// Shards it owns in the published table.
    pub shard_count: u32,
    /// Those shards, ascending (empty when the map is not [`ClusterMap::detailed`]).
    pub shards: Vec<u32>,
    /// The table epoch it last reported applying.
    pub epoch: Option<u64>,
    /// Hand-offs it reports in progress, as source or target.
    pub moves_in_flight: Option<u32>,
    /// Its load, once it has reported.
    pub load: Option<PodLoad>,
}

/// A pod's load, from its last `/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodLoad {
    /// Client connections open.
    pub connections: u64,
    /// Chat messages written to its clients per second.
    pub deliveries_per_sec: u64,
    /// Client frames received per second.
    pub frames_in_per_sec: u64,
}

/// Where a scale-down stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainProgress {
    /// `Steady`, `MarkDraining`, `WaitForEpoch`, `WaitForMoves` or `Remove`.
    pub phase: String,
    /// The pods being emptied.
    pub draining: Vec<String>,
    /// Shards the draining pods still own or still send (moves from them): the work left.
    pub shards_left: u32,
    /// Pods that have not applied the published epoch yet (in `WaitForEpoch`).
    pub lagging: Vec<String>,
    /// Seconds the scale-down has been going on.
    pub elapsed_secs: u64,
    /// Set when the scale-down is past its deadline: what it is stuck on, in words.
    pub stuck: Option<String>,
}

/// Where a rolling update stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutProgress {
    /// Pods are being replaced one at a time.
    pub in_progress: bool,
    /// Pods on the new template (or with a new process) so far.
    pub updated: u32,
    /// Pods to roll in all.
    pub total: u32,
    /// The pod being replaced now, when the driver knows.
    pub current: Option<String>,
}

/// What [`build`] draws from: what a driver holds at the end of a reconcile pass.
#[derive(Debug, Clone, Copy)]
pub struct MapInputs<'a> {
    /// The cluster's namespace (empty for the local driver).
    pub namespace: &'a str,
    /// The cluster's name.
    pub name: &'a str,
    /// The replica count asked for.
    pub desired_replicas: u32,
    /// The pods as [`crate::decide()`] saw them.
    pub pods: &'a [PodView],
    /// The published table.
    pub table: &'a AssignmentTable,
    /// The pass's drain step.
    pub step: &'a DrainStep,
    /// How long the scale-down has been going on.
    pub drain_elapsed: Duration,
    /// The pass's stuck report, if any.
    pub stuck: Option<&'a Stuck>,
    /// Where a rolling update stands.
    pub rollout: &'a RolloutProgress,
    /// Per pod: does it run the current template. Pods not named are shown as unknown.
    pub updated: &'a BTreeMap<NodeName, bool>,
}

/// The map of one cluster (see the module doc). Pure: no clock, no I/O.
pub fn build(inputs: &MapInputs<'_>) -> ClusterMap {
    let table = inputs.table;
    let detailed = table.shards <= DETAIL_SHARDS;
    let mut owned: BTreeMap<&NodeName, Vec<u32>> = BTreeMap::new();
    let mut unowned = 0u32;
    for (shard, owner) in (0u32..).zip(table.owners()) {
        match owner {
            Some(node) => owned.entry(node).or_default().push(shard),
            None => unowned += 1,
        }
    }

    // The driver's pods, then whatever else the table lists (a removed pod still exiting).
    let mut names: Vec<&NodeName> = inputs.pods.iter().map(|p| &p.name).collect();
    let seen: BTreeSet<&NodeName> = names.iter().copied().collect();
    names.extend(table.nodes.keys().filter(|n| !seen.contains(n)));
    names.extend(owned.keys().copied().filter(|n| !seen.contains(n)));
    names.sort_by_key(|n| (ordinal_of(n).unwrap_or(u32::MAX), n.as_str()));
    names.dedup();

    let pods = names
        .into_iter()
        .map(|name| {
            let view = inputs.pods.iter().find(|p| &p.name == name);
            let report = view.and_then(|v| v.report.as_ref());
            let shards = owned.get(name).cloned().unwrap_or_default();
            PodMap {
                name: name.to_string(),
                running: view.is_some_and(|v| v.running),
                ready: view.is_some_and(|v| v.ready),
                draining: table.draining.contains(name),
                terminating: view.is_some_and(PodView::leaving),
                updated: inputs.updated.get(name).copied(),
                in_table: table.nodes.contains_key(name),
                shard_count: u32::try_from(shards.len()).unwrap_or(u32::MAX),
                shards: if detailed { shards } else { Vec::new() },
                epoch: report.map(|r| r.epoch),
                moves_in_flight: report.map(|r| r.moves_in_flight),
                load: report.map(|r| PodLoad {
                    connections: r.connections,
                    deliveries_per_sec: r.load.deliveries_per_sec,
                    frames_in_per_sec: r.load.frames_in_per_sec,
                }),
            }
        })
        .collect();

    ClusterMap {
        namespace: inputs.namespace.to_string(),
        name: inputs.name.to_string(),
        epoch: table.epoch,
        shards: table.shards,
        desired_replicas: inputs.desired_replicas,
        detailed,
        unowned,
        pods,
        moves: table.moves.iter().take(MOVES_LISTED).cloned().collect(),
        moves_total: u32::try_from(table.moves.len()).unwrap_or(u32::MAX),
        drain: drain_progress(inputs, &owned),
        rollout: inputs.rollout.clone(),
    }
}

/// The drain's phase and the work left: shards the draining pods still own or still send.
fn drain_progress(inputs: &MapInputs<'_>, owned: &BTreeMap<&NodeName, Vec<u32>>) -> DrainProgress {
    let table = inputs.table;
    let draining = &table.draining;
    let still_owned: usize = draining
        .iter()
        .map(|n| owned.get(n).map_or(0, Vec::len))
        .sum();
    let sending = table
        .moves
        .iter()
        .filter(|m| draining.contains(&m.from))
        .count();
    let lagging = match inputs.step {
        DrainStep::WaitForEpoch { lagging, .. } => {
            lagging.iter().map(ToString::to_string).collect()
        }
        _ => Vec::new(),
    };
    DrainProgress {
        phase: phase(inputs.step).to_string(),
        draining: draining.iter().map(ToString::to_string).collect(),
        shards_left: u32::try_from(still_owned + sending).unwrap_or(u32::MAX),
        lagging,
        elapsed_secs: inputs.drain_elapsed.as_secs(),
        stuck: inputs.stuck.map(ToString::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Report;
    use shard::{NodeInfo, NodeLoad, ShardId};

    fn name(s: &str) -> NodeName {
        NodeName::new(s).expect("valid name")
    }

    fn pod(n: &str, ready: bool, report: Option<Report>) -> PodView {
        PodView {
            name: name(n),
            running: true,
            ready,
            info: Some(NodeInfo::new(format!("{n}:7000"))),
            report,
            terminating: false,
        }
    }

    fn report(epoch: u64, connections: u64, deliveries: u64) -> Report {
        Report {
            epoch,
            connections,
            load: NodeLoad {
                deliveries_per_sec: deliveries,
                frames_in_per_sec: 1,
                window_ms: 10_000,
                ..NodeLoad::default()
            },
            ..Report::default()
        }
    }

    /// A table of `owners` (one pod name per shard, "" for none) over the pods named `nodes`.
    fn table(nodes: &[&str], owners: &[&str]) -> AssignmentTable {
        let infos = nodes
            .iter()
            .map(|n| (name(n), NodeInfo::new(format!("{n}:7000"))))
            .collect();
        let owners = owners
            .iter()
            .map(|o| (!o.is_empty()).then(|| name(o)))
            .collect();
        AssignmentTable::with_owners(owners, infos).expect("valid table")
    }

    fn inputs<'a>(
        pods: &'a [PodView],
        table: &'a AssignmentTable,
        step: &'a DrainStep,
        updated: &'a BTreeMap<NodeName, bool>,
    ) -> MapInputs<'a> {
        const NOT_ROLLING: &RolloutProgress = &RolloutProgress {
            in_progress: false,
            updated: 0,
            total: 0,
            current: None,
        };
        MapInputs {
            namespace: "ns",
            name: "chat",
            desired_replicas: 2,
            pods,
            table,
            step,
            drain_elapsed: Duration::from_secs(3),
            stuck: None,
            rollout: NOT_ROLLING,
            updated,
        }
    }

    /// The map of `pods` and `table` with nothing known about revisions.
    fn map_of(pods: &[PodView], table: &AssignmentTable, step: &DrainStep) -> ClusterMap {
        build(&inputs(pods, table, step, &BTreeMap::new()))
    }

    #[test]
    fn a_settled_cluster_shows_every_pod_with_its_shards_and_load_and_nothing_unowned() {
        let mut t = table(
            &["chat-0", "chat-1"],
            &["chat-0", "chat-1", "chat-1", "chat-0"],
        );
        t.epoch = 4;
        let pods = [
            pod("chat-0", true, Some(report(4, 10, 250))),
            pod("chat-1", true, None),
        ];
        let updated = BTreeMap::from([(name("chat-0"), true)]);
        let map = build(&inputs(&pods, &t, &DrainStep::Steady, &updated));
        assert_eq!((map.namespace.as_str(), map.name.as_str()), ("ns", "chat"));
        assert_eq!((map.epoch, map.shards, map.unowned), (4, 4, 0));
        assert!(map.detailed);
        let shards: Vec<(&str, &[u32])> = map
            .pods
            .iter()
            .map(|p| (p.name.as_str(), p.shards.as_slice()))
            .collect();
        assert_eq!(
            shards,
            vec![("chat-0", &[0, 3][..]), ("chat-1", &[1, 2][..])]
        );
        let first = &map.pods[0];
        assert!(first.ready && first.running && first.in_table && !first.draining);
        assert_eq!(first.updated, Some(true));
        assert_eq!(first.epoch, Some(4));
        assert_eq!(
            first.load,
            Some(PodLoad {
                connections: 10,
                deliveries_per_sec: 250,
                frames_in_per_sec: 1
            })
        );
        assert_eq!((map.pods[1].load, map.pods[1].updated), (None, None));
        assert_eq!(map.drain.phase, "Steady");
        assert!(map.drain.draining.is_empty() && map.moves.is_empty());
    }

    #[test]
    fn a_scale_down_shows_the_draining_pod_its_moves_and_the_shards_left() {
        // chat-2 drains: shard 2 is on its way to chat-0, shard 3 is still chat-2's.
        let mut t = table(
            &["chat-0", "chat-1", "chat-2"],
            &["chat-0", "chat-1", "chat-0", "chat-2"],
        );
        t.epoch = 9;
        t.draining.insert(name("chat-2"));
        t.moves.push(Move {
            shard: ShardId(2),
            from: name("chat-2"),
            to: name("chat-0"),
        });
        let mut leaving = pod("chat-2", false, Some(report(8, 0, 0)));
        leaving.terminating = true;
        let pods = [
            pod("chat-0", true, None),
            pod("chat-1", true, None),
            leaving,
        ];
        let step = DrainStep::WaitForEpoch {
            epoch: 9,
            lagging: vec![name("chat-2")],
        };
        let map = map_of(&pods, &t, &step);
        let draining = &map.pods[2];
        assert_eq!(draining.name, "chat-2");
        assert!(draining.draining && draining.terminating && !draining.ready);
        assert_eq!(draining.shards, vec![3]);
        assert_eq!(map.moves, t.moves);
        assert_eq!(map.moves_total, 1);
        assert_eq!(map.drain.phase, "WaitForEpoch");
        assert_eq!(map.drain.draining, vec!["chat-2".to_string()]);
        assert_eq!(map.drain.lagging, vec!["chat-2".to_string()]);
        assert_eq!(map.drain.shards_left, 2, "one still owned, one being sent");
        assert_eq!(map.drain.elapsed_secs, 3);
    }

    #[test]
    fn a_pod_the_table_still_lists_is_drawn_after_the_driver_stopped_counting_it() {
        let t = table(&["chat-0", "chat-1"], &["chat-0", "chat-0"]);
        let pods = [pod("chat-0", true, None)];
        let map = map_of(&pods, &t, &DrainStep::Steady);
        let names: Vec<&str> = map.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["chat-0", "chat-1"]);
        let lingering = &map.pods[1];
        assert!(lingering.in_table && !lingering.running && lingering.shards.is_empty());
    }

    #[test]
    fn pods_are_ordered_by_ordinal_and_unowned_shards_are_counted() {
        let t = table(&["chat-2", "chat-10"], &["chat-10", "", "chat-2"]);
        let pods = [pod("chat-10", true, None), pod("chat-2", true, None)];
        let map = map_of(&pods, &t, &DrainStep::Steady);
        let names: Vec<&str> = map.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["chat-2", "chat-10"]);
        assert_eq!(map.unowned, 1);
    }

    #[test]
    fn a_large_cluster_is_drawn_by_counts_and_names_a_bounded_number_of_moves() {
        let shards = DETAIL_SHARDS as usize * 2;
        let owners: Vec<&str> = (0..shards)
            .map(|s| if s % 2 == 0 { "chat-0" } else { "chat-1" })
            .collect();
        let mut t = table(&["chat-0", "chat-1"], &owners);
        t.moves = (0..MOVES_LISTED as u32 + 5)
            .map(|s| Move {
                shard: ShardId(s * 2 + 1),
                from: name("chat-0"),
                to: name("chat-1"),
            })
            .collect();
        let pods = [pod("chat-0", true, None), pod("chat-1", true, None)];
        let map = map_of(&pods, &t, &DrainStep::Steady);
        assert!(!map.detailed);
        assert!(map.pods.iter().all(|p| p.shards.is_empty()));
        assert_eq!(map.pods[0].shard_count, DETAIL_SHARDS);
        assert_eq!(map.moves.len(), MOVES_LISTED);
        assert_eq!(map.moves_total, MOVES_LISTED as u32 + 5);
    }

    #[test]
    fn the_json_uses_the_names_the_page_reads() {
        let t = table(&["chat-0"], &["chat-0"]);
        let pods = [pod("chat-0", true, Some(report(0, 1, 2)))];
        let map = map_of(&pods, &t, &DrainStep::Steady);
        let json = serde_json::to_value(ShardMap {
            clusters: vec![map],
        })
        .expect("serializes");
        let cluster = &json["clusters"][0];
        for key in [
            "desiredReplicas",
            "movesTotal",
            "unowned",
            "detailed",
            "drain",
            "rollout",
        ] {
            assert!(cluster.get(key).is_some(), "{key} missing");
        }
        assert_eq!(cluster["pods"][0]["shardCount"], 1);
        assert_eq!(cluster["pods"][0]["load"]["deliveriesPerSec"], 2);
        assert_eq!(cluster["drain"]["shardsLeft"], 0);
        assert_eq!(cluster["rollout"]["inProgress"], false);
    }
}
