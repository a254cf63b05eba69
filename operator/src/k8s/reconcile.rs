//! The reconciler: one level-triggered pass that makes a `ChatCluster`'s children, membership,
//! assignment table and status match its spec and its pods.
//!
//! # Flow
//!
//! [`reconcile`] runs, for one cluster:
//!
//! 1. **Deleted?** A cluster with a `deletionTimestamp` is left alone: its children carry owner
//!    references and the garbage collector removes them. There is no finalizer, because there
//!    is nothing outside the API to clean up.
//! 2. **Check the spec** ([`checks::check`]). A spec the schema let through but that cannot run
//!    (token auth without a Secret, ...) sets `Degraded=True/InvalidSpec` and stops there: no
//!    child changes, the running cluster keeps running.
//! 3. **Static children**, by server-side apply with the field manager `roomshard-operator`:
//!    the nodes' ServiceAccount/Role/RoleBinding, the two Services, the PodDisruptionBudget, the
//!    Ingress (or its removal). The peer-key Secret is created once and never written again.
//! 4. **Observe**: the StatefulSet's replica count (the pods that should exist), the table in
//!    the ConfigMap, the pods (by label), their readiness and addresses, and the `/status` of
//!    each ready pod through [`StatusReader`].
//! 5. **Decide** with [`crate::decide()`], the same pure function the local driver uses: clear
//!    completed moves, membership from readiness, plan, drain step, stuck drains.
//! 6. **Act**: write the ConfigMap only when the table's epoch changed (or it does not exist);
//!    apply the StatefulSet with the decided replica count, which is lowered only on
//!    [`DrainStep::Remove`] (a StatefulSet still on `RollingUpdate` is first switched to
//!    `OnDelete`); roll the pods: when the cluster is quiet, delete the one outdated pod
//!    [`rollout::next_to_replace`] names and publish `RolloutReplacing` on it; write the status
//!    only when it differs from the stored one; publish events on transitions (drain started,
//!    finished or cancelled, stuck, invalid spec).
//!    With `spec.autoscaling`, the [`autoscaler`] then decides from the ready pods' loads and,
//!    on a change, patches `spec.replicas` through the scale subresource (the next pass acts on
//!    it like on any scale), records why in `status.autoscaling` and publishes `Scaled`.
//! 7. **Requeue**: soon while anything is moving (node progress is not an API event), rarely
//!    when settled (every [`Options::autoscale_interval`] with autoscaling, to follow the load).
//!
//! # Guarantees
//!
//! - Idempotent: a pass over an unchanged cluster writes nothing new (no resourceVersion moves).
//! - A pod above `spec.replicas` is removed only after every live node has applied a table
//!   without it and every hand-off off it is done (see [`shard::drain_step`]); a drain past
//!   `spec.handoffTimeout` is reported (`Degraded=True/DrainStuck`, naming the pod and the
//!   moves), never forced.
//! - The table's epoch grows only when the table changes.
//! - A removed pod that still exists (Terminating: `preStop`, then SIGTERM tells its clients to
//!   reconnect) stays in the table, owning nothing, until it is gone, so the sends its clients
//!   wrote last are still forwarded over its peer links (see `lingering`).
//!
//! # Assumptions
//!
//! - Nothing about why it runs: every input is read again on every pass, so a restarted
//!   operator continues a drain from the ConfigMap and `status.drainStarted`.
//! - One writer per cluster (leader election); two concurrent writers would still converge, as
//!   both compute the same table from the same inputs, but could publish two epochs for it.
//! - Pods are named `{statefulset}-{ordinal}` and are the StatefulSet's; a pod's Ready
//!   condition is its membership.
//!
//! # Caveats
//!
//! - It trusts the nodes' `/status` (see [`shard::drain_step`]).
//! - A pod that is not ready cannot report, so a drain waiting on it stays stuck until it is
//!   ready again or leaves the StatefulSet's range.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::{Client, ResourceExt};
use shard::{AssignmentTable, DrainStep, LoadPolicy, NodeName, PlanOptions, nodes_to_drain};

use super::autoscaler;
use super::checks;
use super::children::{self, Owner, TABLE_KEY};
use super::crd::ChatCluster;
use super::map;
use super::metrics::{ClusterView, Metrics};
use super::observe::{StatusReader, pod_views};
use super::rollout::{self, Observed, PodState};
use super::status::{self, Pass, reasons, types};
use crate::Error;
use crate::decide::{DecideOptions, Inputs, decide};
use crate::map::{MapInputs, MapStore};

mod apply;
mod report;

pub use apply::ROLLOUT_REASON;
pub(super) use report::publish;

use apply::{apply, apply_static_children, replace_pod, switch_to_on_delete};
use report::{count, drain_finished, event, transition_events, write_status};

/// Knobs of the reconciler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// How long a new cluster waits for all its pods before assigning shards to those ready.
    pub initial_grace: Duration,
    /// At most this many hand-offs per node in one table.
    pub max_moves_per_node: usize,
    /// Load-aware placement by the per-shard load pods report (see [`shard::balance`]).
    pub balance: LoadPolicy,
    /// Requeue interval while pods start, shards move or a drain runs.
    pub busy_requeue: Duration,
    /// Requeue interval of a settled cluster (a safety net; changes arrive as watch events).
    pub idle_requeue: Duration,
    /// The longest error backoff.
    pub max_backoff: Duration,
    /// Requeue interval of a settled cluster with `spec.autoscaling`: how often its load is
    /// read for the autoscaler.
    pub autoscale_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            initial_grace: Duration::from_secs(30),
            max_moves_per_node: 64,
            balance: LoadPolicy::default(),
            busy_requeue: Duration::from_secs(2),
            idle_requeue: Duration::from_secs(60),
            max_backoff: Duration::from_secs(300),
            autoscale_interval: Duration::from_secs(5),
        }
    }
}

/// Everything a pass uses besides the cluster itself; tests build their own.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes events on the clusters.
    pub recorder: Recorder,
    /// Reconcile counters and cluster gauges.
    pub metrics: Arc<Metrics>,
    /// The latest shard map of each cluster, for `GET /map.json`.
    pub map: Arc<MapStore>,
    /// Reads the nodes' `/status`.
    pub status_reader: Arc<dyn StatusReader>,
    /// Knobs.
    pub options: Options,
    /// Consecutive failures per cluster, for the error backoff.
    failures: Mutex<HashMap<(String, String), u32>>,
    /// The autoscaler's recent recommendations per cluster.
    pub(super) autoscaler: autoscaler::Histories,
}

impl Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("status_reader", &self.status_reader)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context that reports events as `reporter`.
    pub fn new(
        client: Client,
        reporter: Reporter,
        status_reader: Arc<dyn StatusReader>,
        metrics: Arc<Metrics>,
        options: Options,
    ) -> Context {
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            map: Arc::new(MapStore::default()),
            status_reader,
            options,
            failures: Mutex::new(HashMap::new()),
            autoscaler: autoscaler::Histories::default(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), u32>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One pass over `cluster` (see the module doc).
///
/// # Errors
///
/// [`Error::Kube`] when an API call fails, [`Error::Shard`] when the ConfigMap holds an
/// unreadable table, [`Error::Invalid`] when the cluster lacks metadata. All are retried by
/// [`error_policy`].
pub async fn reconcile(cluster: Arc<ChatCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let action = pass(&cluster, &ctx).await?;
    ctx.metrics.reconciled(started.elapsed());
    let key = (cluster.namespace().unwrap_or_default(), cluster.name_any());
    ctx.failures().remove(&key);
    Ok(action)
}

/// What the controller does after a failed pass: counts it and retries with exponential
/// backoff (1 s, 2 s, 4 s, ... up to [`Options::max_backoff`]), reset by a good pass.
pub fn error_policy(cluster: Arc<ChatCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let kind = match error {
        Error::Kube(_) => "kube",
        Error::Shard(_) => "table",
        Error::Invalid(_) => "invalid",
        _ => "other",
    };
    ctx.metrics.failed(kind);
    let key = (cluster.namespace().unwrap_or_default(), cluster.name_any());
    let attempt = {
        let mut failures = ctx.failures();
        let n = failures.entry(key).or_default();
        *n = n.saturating_add(1);
        *n
    };
    let backoff = Duration::from_secs(1u64 << attempt.min(16).saturating_sub(1));
    tracing::warn!(cluster = %cluster.name_any(), %error, attempt, ?backoff, "reconcile failed");
    Action::requeue(backoff.min(ctx.options.max_backoff))
}

async fn pass(cluster: &ChatCluster, ctx: &Context) -> Result<Action, Error> {
    let owner = Owner::of(cluster)?;
    if cluster.metadata.deletion_timestamp.is_some() {
        ctx.metrics.forget(&owner.namespace, &owner.name);
        ctx.map.forget(&owner.namespace, &owner.name);
        ctx.autoscaler
            .forget(&(owner.namespace.clone(), owner.name.clone()));
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    let old = cluster.status.as_ref();
    let generation = cluster.metadata.generation;

    // 2. Check the spec.
    let checked = match checks::check(&cluster.spec) {
        Ok(checked) => checked,
        Err(message) => {
            let new = status::invalid_spec(old, generation, &message, now);
            let was = status::condition(old, types::DEGRADED);
            if was.is_none_or(|c| c.reason != reasons::INVALID_SPEC || c.message != message) {
                event(
                    ctx,
                    cluster,
                    EventType::Warning,
                    reasons::INVALID_SPEC,
                    &message,
                )
                .await;
            }
            write_status(ctx, &owner, old, &new).await?;
            return Ok(Action::await_change());
        }
    };

    // 3. Static children.
    apply_static_children(ctx, cluster, &owner).await?;

    // 4. Observe.
    let ns = owner.namespace.as_str();
    let names = &owner.names;
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
    let existing = statefulsets.get_opt(&names.statefulset).await?;
    let rollout = status::rollout_of(existing.as_ref());
    let on_delete = existing.as_ref().is_none_or(|s| {
        s.spec
            .as_ref()
            .and_then(|s| s.update_strategy.as_ref()?.type_.as_deref())
            == Some("OnDelete")
    });
    let current = existing
        .and_then(|s| s.spec?.replicas)
        .map_or(0, |r| u32::try_from(r).unwrap_or(0));
    let configmaps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let configmap = configmaps.get_opt(&names.configmap).await?;
    let table = match configmap
        .as_ref()
        .and_then(|c| c.data.as_ref()?.get(TABLE_KEY))
    {
        Some(text) => AssignmentTable::from_json(text)?,
        None => AssignmentTable::empty(checked.shards),
    };
    if table.shards != checked.shards {
        return Err(Error::Invalid(format!(
            "ConfigMap {} has a table of {} shards but spec.shards is {}",
            names.configmap, table.shards, checked.shards
        )));
    }
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let pods = pod_api
        .list(&ListParams::default().labels(&owner.selector_string()))
        .await?
        .items;
    let views = pod_views(
        &names.statefulset,
        current,
        &pods,
        ctx.status_reader.as_ref(),
    )
    .await?;

    // 5. Decide.
    let age = cluster
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| Duration::try_from(now.duration_since(t.0)).ok())
        .unwrap_or(Duration::MAX);
    let options = DecideOptions {
        plan: PlanOptions {
            max_moves_per_node: ctx.options.max_moves_per_node,
            replication: checked.replication,
        },
        balance: ctx.options.balance.clone(),
        drain_timeout: checked.handoff_timeout,
        pod_prefix: names.statefulset.clone(),
        initial_grace: ctx.options.initial_grace,
    };
    let inputs = Inputs {
        desired_replicas: checked.replicas,
        pods: &views,
        table: &table,
        drain_elapsed: status::drain_elapsed(old, now),
        age,
    };
    let mut decision = decide(inputs, &options)?;
    let lingering = lingering(&names.statefulset, decision.replicas, &pods, &table);
    let table_to_publish = crate::decide::keep_lingering(&table, &decision.table, &lingering);
    if table_to_publish != decision.table {
        tracing::debug!(cluster = %owner.name, ?lingering,
            "removed pods still exist: they stay in the table until they are gone");
    }
    let publish = decision.publish && table_to_publish.epoch != table.epoch;

    // What the nodes see from here on, for the status and the metrics too.
    decision.table = if publish || configmap.is_none() {
        table_to_publish
    } else {
        table.clone()
    };

    // 6. Act: table first, so nodes learn of a drain before anything else changes.
    if publish || configmap.is_none() {
        let cm = children::config::assignment_configmap(&owner, &decision.table)?;
        apply(&configmaps, &names.configmap, &cm).await?;
        tracing::info!(cluster = %owner.name, epoch = decision.table.epoch,
            moves = decision.table.moves.len(), draining = decision.table.draining.len(),
            "published table");
    }
    let sts =
        children::statefulset::statefulset(&owner, &cluster.spec, &checked, decision.replicas)?;
    if !on_delete {
        switch_to_on_delete(&statefulsets, &names.statefulset).await?;
    }
    let applied = apply(&statefulsets, &names.statefulset, &sts).await?;

    // The rollout: at most one outdated pod deleted, only while everything else is quiet.
    let quiet = decision.step == DrainStep::Steady
        && decision.table.moves.is_empty()
        && decision.table.draining.is_empty()
        && decision.exiting.is_empty()
        && decision.stuck.is_none()
        && decision.replicas == checked.replicas
        && current == checked.replicas;
    let states: Vec<PodState> = pods.iter().map(PodState::of).collect();
    let replace = rollout::next_to_replace(&Observed {
        statefulset: &names.statefulset,
        replicas: checked.replicas,
        update_revision: rollout::update_revision(&applied),
        pods: &states,
        quiet,
    });
    let replaced = match replace.and_then(|name| pods.iter().find(|p| p.name_any() == name)) {
        Some(pod) => replace_pod(ctx, &pod_api, pod, rollout::update_revision(&applied)).await?,
        None => false,
    };

    let names_now: Vec<NodeName> = views.iter().map(|v| v.name.clone()).collect();
    let draining: Vec<NodeName> = nodes_to_drain(checked.replicas, &names_now)
        .into_iter()
        .collect();
    let ready_nodes = views.iter().filter(|v| v.ready).count();
    let ready_nodes = u32::try_from(ready_nodes).unwrap_or(u32::MAX);
    let selector = owner.selector_string();
    let new = status::summarize(&Pass {
        generation,
        desired: checked.replicas,
        ready_nodes,
        draining: &draining,
        decision: &decision,
        rollout,
        old,
        now,
        pods: u32::try_from(pods.len()).unwrap_or(u32::MAX),
        selector: &selector,
    });

    // The autoscaler: a change of spec.replicas, through the scale subresource.
    let busy = crate::decide::draining_in_progress(&decision.step)
        || !decision.table.moves.is_empty()
        || !decision.exiting.is_empty()
        || rollout.in_progress
        || replaced
        || current != checked.replicas
        || decision.replicas != checked.replicas;
    autoscaler::run(ctx, cluster, &owner, &checked, &views, busy).await?;
    transition_events(ctx, cluster, old, &new, &decision, checked.replicas).await;
    if drain_finished(old, &new) && decision.replicas <= checked.replicas {
        let took = status::drain_elapsed(old, now);
        ctx.metrics.drained(&owner.namespace, &owner.name, took);
    }
    write_status(ctx, &owner, old, &new).await?;
    ctx.metrics.cluster(
        &owner.namespace,
        &owner.name,
        ClusterView {
            epoch: decision.table.epoch,
            moves: decision.table.moves.len(),
            ready_nodes,
            unowned_shards: count(decision.table.owners().iter().filter(|o| o.is_none())),
            drain_stuck: decision.stuck.is_some(),
        },
    );
    ctx.map.publish(crate::map::build(&MapInputs {
        namespace: &owner.namespace,
        name: &owner.name,
        desired_replicas: checked.replicas,
        pods: &views,
        table: &decision.table,
        step: &decision.step,
        drain_elapsed: status::drain_elapsed(Some(&new), now),
        stuck: decision.stuck.as_ref(),
        rollout: &map::rollout_progress(rollout, &states),
        updated: &map::updated(&states, rollout::update_revision(&applied)),
    }));

    // 7. Requeue.
    let settled = decision.step == DrainStep::Steady
        && decision.table.moves.is_empty()
        && ready_nodes == checked.replicas
        && current == checked.replicas
        && !rollout.in_progress
        && !replaced
        && decision.exiting.is_empty()
        && new.phase.as_deref() == Some(status::phases::RUNNING);
    Ok(Action::requeue(
        if settled && checked.autoscaling.is_some() {
            ctx.options.idle_requeue.min(ctx.options.autoscale_interval)
        } else if settled {
            ctx.options.idle_requeue
        } else {
            ctx.options.busy_requeue
        },
    ))
}

/// The pods above the StatefulSet's `replicas` that still exist (terminating after a drain's
/// removal) and that the published `table` still lists.
///
/// Such a pod owns nothing, but until its process has stopped it still has clients: after
/// `preStop` its SIGTERM tells them to `reconnect`, and the sends they wrote before reading that
/// are forwarded to the shards' owners over peer links. A table without it would close those
/// links at once and leave its clients' sends unanswered for the whole `preStop` sleep, so it
/// stays in the table until its pod is gone.
fn lingering(
    statefulset: &str,
    replicas: u32,
    pods: &[Pod],
    table: &AssignmentTable,
) -> Vec<NodeName> {
    pods.iter()
        .filter_map(|pod| NodeName::new(pod.name_any()).ok())
        .filter(|name| {
            shard::ordinal_of(name)
                .is_some_and(|o| o >= replicas && name.as_str() == format!("{statefulset}-{o}"))
                && table.nodes.contains_key(name)
        })
        .collect()
}
