//! The reconcile decision: from what the operator observes, what to do next.
//!
//! [`decide`] is a pure function of its [`Inputs`]: the desired replica count, the pods that
//! exist (running or not, ready or not, with their last reports), the published table and how
//! long a scale-down has been going on. It returns a [`Decision`]: the table to publish (if it
//! changed), the scale-down step, how many pods should exist, which pods to start and which to
//! stop. The local driver acts on it with processes; the Kubernetes reconciler will act on it
//! with a ConfigMap and a StatefulSet. Nothing here knows about either.
//!
//! One pass, in order:
//!
//! 1. **Completed hand-offs.** Moves that a node reports done as their source are cleared with
//!    [`complete_moves`], but only from reports of the published epoch: a report of an older
//!    table could name an earlier move of the same shard between the same nodes. Only the
//!    source knows the snapshot went out, so a move named by any other node is ignored.
//! 2. **Membership.** The ready pods with known addresses, plus the draining set: always
//!    [`nodes_to_drain`]`(desired, pods)`, the highest ordinals above the desired count, and
//!    every pod on a planned exit ([`PodView::leaving`]: a `deletionTimestamp`, a stop sent by
//!    the driver, or a node that reports `terminating` after a SIGTERM by hand). Such a pod
//!    stays a member while its process runs and the table lists it, ready or not (its
//!    readiness fails on purpose once it is stopping), so its shards are handed off from it
//!    rather than restarted empty; it leaves the table once its process is gone. A leaving pod
//!    the table does not list never joins. A
//!    scale-up in the middle of a scale-down therefore simply un-drains. A brand-new cluster
//!    (table epoch 0) waits until every desired pod is ready, or
//!    [`DecideOptions::initial_grace`] has passed, before the first assignment: otherwise the
//!    first pod to be ready would get every shard and hand most of them on right away.
//! 3. **Plan.** [`plan_with_load`] gives the next table, balancing by shard count and by the
//!    per-shard loads the running pods report ([`shard_loads`], under
//!    [`DecideOptions::balance`]; with no loads it is [`plan`]); it is published only when its
//!    epoch changed.
//! 4. **Drain step.** [`drain_step`] on the planned table says whether the pods above the
//!    desired count may go: only on [`DrainStep::Remove`] does the replica count drop. With
//!    replication 2 a `Remove` also waits until no remaining node reports followed shards still
//!    catching up at the table's epoch ([`crate::replication::catching_up`]): the step reads
//!    `WaitForMoves` with no moves pending and [`Decision::catching_up`] names those nodes.
//!    The wait is bounded by [`DecideOptions::drain_timeout`]: past it the pods are removed
//!    anyway and [`Decision::stuck`] says which followers were not caught up.
//! 5. **Pods to start.** Pods below the desired count whose process is not running, once the
//!    table no longer lists them (a dead pod first leaves membership, its shards are reassigned
//!    fresh, then a replacement with the same name starts), and new ordinals on scale-up. New
//!    pods get shards only when they are ready, through an ordinary rebalance.
//! 6. **Stuck.** A scale-down still in progress after [`DecideOptions::drain_timeout`] is
//!    reported as [`Stuck`], naming the nodes and what they wait for. Nothing is forced: the
//!    caller logs it (or sets a Degraded condition) and asks again later.
//!
//! Guarantees: idempotent (deciding again on the same inputs gives the same decision, and
//! deciding on a table this function produced republishes nothing); a pod is stopped only on
//! `Remove` (see [`drain_step`] for what that guarantees); a running pod is never started again.
//! Assumptions: pod names end in their ordinal (`node-3`), the `pods` are the ordinals
//! `0..replicas` of the current replica count, and reports are what the nodes' `/status` said
//! (a node that lies about its epoch or moves can make a removal early).

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use shard::{
    AssignmentTable, DrainStep, LoadPolicy, Membership, Move, NodeInfo, NodeLoad, NodeName,
    NodeReport, NodeStatus, PlanOptions, ShardError, complete_moves, drain_step, nodes_to_drain,
    ordinal_of, plan_with_load,
};

use crate::placement::shard_loads;
use crate::replication::{self, FollowerSummary};
#[cfg(doc)]
use shard::plan;

/// What a node's `/status` said, as far as decisions go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The epoch of the last table the node applied.
    pub epoch: u64,
    /// Hand-offs the node still has in progress, as source or target.
    pub moves_in_flight: u32,
    /// Moves of the table at `epoch` that the node completed as the source.
    pub moves_done: Vec<Move>,
    /// The node was asked to stop (SIGTERM) and waits to hand its shards off.
    pub terminating: bool,
    /// Shards the node follows whose copy is live (replication 2).
    pub following: u32,
    /// Shards the node follows that are still receiving their copy.
    pub catching_up: u32,
    /// Client connections open on the node.
    pub connections: u64,
    /// How busy the node is (rates over its load window).
    pub load: NodeLoad,
}

/// The table to publish when `lingering` pods, removed by a drain, still run: `next` with them
/// kept in (as listed in `published`), and the epoch moved only if that still changes anything.
///
/// A pod removed by a drain owns nothing, but until its process has stopped it still serves
/// clients: it told them to `reconnect`, and what they sent just before is forwarded to the
/// rooms' owners over its peer links. A table without it would close those links early and
/// leave those sends unanswered, so both drivers keep it listed until it is gone (its exit
/// triggers the next pass). Nodes that are gone are dropped at once, lingering ones or not.
pub fn keep_lingering(
    published: &AssignmentTable,
    next: &AssignmentTable,
    lingering: &[NodeName],
) -> AssignmentTable {
    let mut table = next.clone();
    for name in lingering {
        let owns_or_moves = !next.shards_of(name).is_empty()
            || next.moves.iter().any(|m| &m.from == name || &m.to == name);
        if table.nodes.contains_key(name) || owns_or_moves {
            continue;
        }
        if let Some(info) = published.nodes.get(name) {
            table.nodes.insert(name.clone(), info.clone());
            if published.draining.contains(name) {
                table.draining.insert(name.clone());
            }
        }
    }
    table.epoch = published.epoch;
    if table != *published {
        table.epoch = published.epoch + 1;
    }
    table
}

impl Report {
    /// Read a node's `/status` JSON, checking that it comes from `node` (an address reused by
    /// another pod must not report for this one).
    ///
    /// # Errors
    /// A readable reason when the JSON is not a status or names another node.
    pub fn from_status(node: &str, status: &serde_json::Value) -> Result<Report, String> {
        let wire = NodeStatus::deserialize(status)
            .map_err(|e| format!("invalid /status from {node}: {e}"))?;
        if wire.node != node {
            return Err(format!("{node}'s address answers as {}", wire.node));
        }
        Ok(Report {
            epoch: wire.epoch,
            moves_in_flight: wire.moves_in_flight,
            moves_done: wire.moves_done,
            terminating: wire.terminating,
            following: wire.following,
            catching_up: wire.catching_up,
            connections: wire.connections,
            load: wire.load,
        })
    }
}

/// One pod as observed: does its process (container) run, is it ready, how to reach it, and
/// what it last reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// The pod's name; ends in its ordinal.
    pub name: NodeName,
    /// A process runs for it (possibly still starting, possibly shutting down).
    pub running: bool,
    /// Its readiness probe passes: it is a member and may own shards.
    pub ready: bool,
    /// Its addresses, once known; a pod without them cannot be a member.
    pub info: Option<NodeInfo>,
    /// Its last `/status`, if it gave one since it started.
    pub report: Option<Report>,
    /// It is going away: a `deletionTimestamp` (Kubernetes), or a stop the driver sent. A node
    /// that says `terminating` in its report counts too (SIGTERM sent by hand).
    pub terminating: bool,
}

impl PodView {
    /// Whether this pod is on its way out, by its own report or by the driver's knowledge.
    pub fn leaving(&self) -> bool {
        self.terminating || self.report.as_ref().is_some_and(|r| r.terminating)
    }
}

/// Knobs for [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecideOptions {
    /// Passed to [`plan`]: caps the moves per node in one table.
    pub plan: PlanOptions,
    /// When and how far reported per-shard load moves shards ([`LoadPolicy::off`] plans by
    /// count only).
    pub balance: LoadPolicy,
    /// How long a scale-down may take before it is reported as [`Stuck`].
    pub drain_timeout: Duration,
    /// Pod names are `{pod_prefix}-{ordinal}`.
    pub pod_prefix: String,
    /// How long a brand-new cluster waits for all its pods before assigning shards anyway.
    pub initial_grace: Duration,
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The replica count the user asked for.
    pub desired_replicas: u32,
    /// The pods that exist now: ordinals `0..replicas` of the current replica count.
    pub pods: &'a [PodView],
    /// The published table.
    pub table: &'a AssignmentTable,
    /// How long the scale-down in progress has been going on (zero when none was).
    pub drain_elapsed: Duration,
    /// How long the operator has been managing this cluster (decides the initial grace).
    pub age: Duration,
}

/// What to do, as the result of one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The table after this pass: the published one, or the next one.
    pub table: AssignmentTable,
    /// True when `table` has a new epoch and must be published (long-poll waiters wake up).
    pub publish: bool,
    /// The scale-down step, computed on `table`.
    pub step: DrainStep,
    /// How many pods should exist (the StatefulSet's replicas): never below the current count
    /// until the step is `Remove`.
    pub replicas: u32,
    /// Pods to start (the local driver's job; a StatefulSet does it in Kubernetes).
    pub start: Vec<NodeName>,
    /// Pods to stop: those of `DrainStep::Remove`.
    pub stop: BTreeSet<NodeName>,
    /// Set when a scale-down has been going on for longer than the drain timeout.
    pub stuck: Option<Stuck>,
    /// Pods on a planned exit (see [`PodView::leaving`]) that are still in the table: they are
    /// draining members, handing their shards off before their process ends.
    pub exiting: BTreeSet<NodeName>,
    /// How many shards have a live follower, from the reports (replication 2).
    pub followers: FollowerSummary,
    /// Nodes still catching up followed shards of `table`, with how many: a removal waits for
    /// them (see step 4 of the module doc).
    pub catching_up: Vec<(NodeName, u32)>,
}

/// A scale-down that has not finished in time, with what it waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    /// The nodes being drained.
    pub draining: Vec<NodeName>,
    /// How long the drain has been going on.
    pub elapsed: Duration,
    /// Live nodes that have not applied the table's epoch.
    pub lagging: Vec<NodeName>,
    /// The table's moves from or to the draining nodes.
    pub pending: Vec<Move>,
    /// Nodes that report hand-offs in progress, with how many.
    pub busy: Vec<(NodeName, u32)>,
    /// Nodes whose new followed shards were still catching up, with how many: past the
    /// timeout the pods are removed without waiting for them.
    pub catching_up: Vec<(NodeName, u32)>,
    /// The table epoch the drain waits on.
    pub epoch: u64,
}

/// At most this many moves are named in a [`Stuck`] message.
const MOVES_NAMED: usize = 8;

impl fmt::Display for Stuck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "scale-down stuck for {}s: draining {}",
            self.elapsed.as_secs(),
            join(&self.draining)
        )?;
        if !self.lagging.is_empty() {
            write!(
                f,
                "; not yet at epoch {}: {}",
                self.epoch,
                join(&self.lagging)
            )?;
        }
        if !self.pending.is_empty() {
            let named: Vec<String> = self
                .pending
                .iter()
                .take(MOVES_NAMED)
                .map(|m| format!("shard {} {} -> {}", m.shard, m.from, m.to))
                .collect();
            write!(f, "; moves not done: {}", named.join(", "))?;
            if self.pending.len() > MOVES_NAMED {
                write!(f, " and {} more", self.pending.len() - MOVES_NAMED)?;
            }
        }
        if !self.busy.is_empty() {
            let busy: Vec<String> = self
                .busy
                .iter()
                .map(|(n, k)| format!("{n} ({k})"))
                .collect();
            write!(f, "; hand-offs in progress on {}", busy.join(", "))?;
        }
        if !self.catching_up.is_empty() {
            let copying: Vec<String> = self
                .catching_up
                .iter()
                .map(|(n, k)| format!("{n} ({k})"))
                .collect();
            write!(
                f,
                "; followers still catching up on {}: removed without waiting for them",
                copying.join(", ")
            )?;
        }
        Ok(())
    }
}

fn join(names: &[NodeName]) -> String {
    let names: Vec<&str> = names.iter().map(NodeName::as_str).collect();
    names.join(", ")
}

/// The phase of a drain step, as shown in status (`/cluster`, the ChatCluster status).
pub fn phase(step: &DrainStep) -> &'static str {
    match step {
        DrainStep::Steady => "Steady",
        DrainStep::MarkDraining(_) => "MarkDraining",
        DrainStep::WaitForEpoch { .. } => "WaitForEpoch",
        DrainStep::WaitForMoves { .. } => "WaitForMoves",
        DrainStep::Remove(_) => "Remove",
    }
}

/// True while a scale-down is under way and not yet safe to finish.
pub fn draining_in_progress(step: &DrainStep) -> bool {
    matches!(
        step,
        DrainStep::MarkDraining(_)
            | DrainStep::WaitForEpoch { .. }
            | DrainStep::WaitForMoves { .. }
    )
}

/// The name of the pod with this ordinal.
///
/// # Errors
///
/// [`ShardError::InvalidNodeName`] when the prefix does not make a valid pod name.
pub fn pod_name(prefix: &str, ordinal: u32) -> Result<NodeName, ShardError> {
    NodeName::new(format!("{prefix}-{ordinal}"))
}

/// One reconcile pass (see the module doc).
///
/// # Errors
///
/// [`ShardError::InvalidNodeName`] when a new pod's name cannot be built from the prefix.
pub fn decide(inputs: Inputs<'_>, options: &DecideOptions) -> Result<Decision, ShardError> {
    let Inputs {
        desired_replicas,
        pods,
        table: published,
        drain_elapsed,
        age,
    } = inputs;

    // 1. Completed hand-offs, from their sources' reports of the published epoch only.
    let done: Vec<Move> = pods
        .iter()
        .filter_map(|p| Some((&p.name, p.report.as_ref()?)))
        .filter(|(_, r)| r.epoch == published.epoch)
        .flat_map(|(name, r)| r.moves_done.iter().filter(move |m| m.from == *name))
        .cloned()
        .collect();
    let completed = complete_moves(published, &done);

    // 2. Membership. A pod on a planned exit stays a member while its process runs, even once
    //    its readiness fails, but only as a draining source: its shards are planned off at once.
    let names: Vec<NodeName> = pods.iter().map(|p| p.name.clone()).collect();
    let exiting: BTreeSet<NodeName> = pods
        .iter()
        .filter(|p| p.leaving() && p.running && published.nodes.contains_key(&p.name))
        .map(|p| p.name.clone())
        .collect();
    let mut membership = Membership {
        ready: pods
            .iter()
            // A leaving pod not in the table never becomes a member: it must not get shards.
            .filter(|p| {
                if p.leaving() {
                    exiting.contains(&p.name)
                } else {
                    p.ready
                }
            })
            .filter_map(|p| Some((p.name.clone(), p.info.clone()?)))
            .collect(),
        draining: nodes_to_drain(desired_replicas, &names),
    };
    membership.draining.extend(exiting.iter().cloned());
    let first_assignment = published.epoch == 0 && published.nodes.is_empty();
    let all_ready = membership.ready.len() >= desired_replicas as usize;
    if first_assignment && !all_ready && age < options.initial_grace {
        // Planning with nobody ready leaves the empty table as it is: nothing is published.
        membership.ready.clear();
    }

    // 3. Plan.
    let loads = shard_loads(pods);
    let table = plan_with_load(
        &completed,
        &membership,
        &options.plan,
        &options.balance,
        &loads,
    );
    let publish = table.epoch != published.epoch;

    // 4. Drain step, on the table the nodes are about to get.
    let reports: Vec<NodeReport> = pods
        .iter()
        .filter_map(|p| {
            p.report.as_ref().map(|r| NodeReport {
                name: p.name.clone(),
                epoch_applied: r.epoch,
                moves_pending: r.moves_in_flight,
            })
        })
        .collect();
    let mut step = drain_step(desired_replicas, &names, &table, &reports);
    let catching_up = if options.plan.copies() >= 2 {
        replication::catching_up(pods, &table)
    } else {
        Vec::new()
    };
    let mut followers_late = Vec::new();
    if matches!(step, DrainStep::Remove(_)) && !catching_up.is_empty() {
        if drain_elapsed < options.drain_timeout {
            step = DrainStep::WaitForMoves {
                pending: Vec::new(),
            };
        } else {
            followers_late.clone_from(&catching_up);
        }
    }
    let current = u32::try_from(pods.len()).unwrap_or(u32::MAX);
    let (replicas, stop) = match &step {
        DrainStep::Remove(nodes) => (desired_replicas, nodes.clone()),
        _ => (desired_replicas.max(current), BTreeSet::new()),
    };

    // 5. Pods to start: dead ones below the desired count once out of the table, then new ones.
    let mut start: Vec<NodeName> = pods
        .iter()
        .filter(|p| !p.running && !table.nodes.contains_key(&p.name))
        .filter(|p| ordinal_of(&p.name).is_some_and(|o| o < desired_replicas))
        .map(|p| p.name.clone())
        .collect();
    for ordinal in current..replicas {
        start.push(pod_name(&options.pod_prefix, ordinal)?);
    }

    // 6. Stuck.
    let mut stuck = (draining_in_progress(&step) && drain_elapsed >= options.drain_timeout)
        .then(|| stuck(&step, &membership.draining, drain_elapsed, &table, &reports));
    if !followers_late.is_empty() {
        let mut late = self::stuck(&step, &membership.draining, drain_elapsed, &table, &reports);
        late.catching_up = followers_late;
        stuck = Some(late);
    }
    let followers = replication::summarize(pods, &table, options.plan.copies());

    Ok(Decision {
        table,
        publish,
        step,
        replicas,
        start,
        stop,
        stuck,
        exiting,
        followers,
        catching_up,
    })
}

fn stuck(
    step: &DrainStep,
    draining: &BTreeSet<NodeName>,
    elapsed: Duration,
    table: &AssignmentTable,
    reports: &[NodeReport],
) -> Stuck {
    let (lagging, pending) = match step {
        DrainStep::WaitForEpoch { lagging, .. } => (lagging.clone(), Vec::new()),
        DrainStep::WaitForMoves { pending } => (Vec::new(), pending.clone()),
        _ => (Vec::new(), Vec::new()),
    };
    Stuck {
        draining: draining.iter().cloned().collect(),
        elapsed,
        lagging,
        pending,
        busy: reports
            .iter()
            .filter(|r| r.moves_pending > 0 && table.nodes.contains_key(&r.name))
            .map(|r| (r.name.clone(), r.moves_pending))
            .collect(),
        catching_up: Vec::new(),
        epoch: table.epoch,
    }
}

#[cfg(test)]
mod tests;
