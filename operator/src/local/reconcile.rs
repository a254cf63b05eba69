//! The driver's controller: a loop that runs one reconcile pass every `interval` and whenever
//! something it looks at changes (a probe flips, a report changes, a process exits, a scale or
//! restart request arrives).
//!
//! A pass observes the pods ([`State::pod_views`]), calls [`crate::decide()`] and acts: publish
//! the table if its epoch changed (keeping drained pods that still run, see
//! [`crate::decide::keep_lingering`]), log drain transitions and stuck drains, SIGTERM the pods
//! a scale-down removes, step the autoscaler ([`super::autoscaler`]) and a rolling restart
//! ([`super::rollout`]), and start the pods the decision names. It never waits: processes are
//! started and stopped by their supervisors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shard::{NodeName, ordinal_of};

use super::pods::{Pod, Proc, State};
use super::rollout::Step;
use super::{Shared, process, view};
use crate::decide::{Decision, Inputs, decide, draining_in_progress, keep_lingering, phase};

/// How often a stuck scale-down is logged again.
const STUCK_LOG_EVERY: Duration = Duration::from_secs(10);

/// Runs passes until the driver shuts down.
pub(super) async fn run(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => break,
            () = shared.wake.notified() => {}
            _ = tick.tick() => {}
        }
        pass(&shared);
    }
}

/// One reconcile pass: observe, [`decide`], act.
pub(super) fn pass(shared: &Arc<Shared>) {
    if shared.shutdown.is_cancelled() || shared.releasing.load(std::sync::atomic::Ordering::SeqCst)
    {
        return;
    }
    let now = Instant::now();
    let published = shared.table.borrow().clone();
    let mut st = shared.lock();
    let pods = st.pod_views();
    let inputs = Inputs {
        desired_replicas: st.desired,
        pods: &pods,
        table: &published,
        drain_elapsed: st.drain_since.map_or(Duration::ZERO, |t| now - t),
        age: now - st.started,
    };
    let decision = match decide(inputs, &shared.config.decide) {
        Ok(decision) => decision,
        Err(e) => {
            tracing::error!(error = %e, "cannot decide");
            return;
        }
    };

    // Pods removed by the drain whose processes still run (telling their clients to
    // reconnect) stay in the table until they exit: see `keep_lingering`.
    let lingering: Vec<NodeName> = st
        .pods
        .iter()
        .filter(|(ordinal, pod)| **ordinal >= decision.replicas && pod.proc.is_some())
        .map(|(_, pod)| pod.name.clone())
        .filter(|name| published.nodes.contains_key(name))
        .collect();
    let next = keep_lingering(&published, &decision.table, &lingering);
    if decision.publish && next.epoch != published.epoch {
        let owners: Vec<String> = next
            .counts()
            .iter()
            .map(|(n, k)| format!("{n}={k}"))
            .collect();
        tracing::info!(
            epoch = next.epoch,
            owners = %owners.join(" "),
            moves = next.moves.len(),
            draining = next.draining.len(),
            exiting = decision.exiting.len(),
            "published table"
        );
        shared.table.send_replace(Arc::new(next.clone()));
    }
    track_drain(&mut st, &decision, now);
    autoscale(shared, &mut st, &decision, &pods, now);

    for name in &decision.stop {
        if let Some(ordinal) = ordinal_of(name) {
            stop(&mut st, ordinal, "drained; stopping it (SIGTERM)");
        }
    }
    st.replicas = decision.replicas;
    let replicas = st.replicas;
    st.pods
        .retain(|&ordinal, pod| ordinal < replicas || pod.proc.is_some());

    step_rollout(shared, &mut st, &next, now);

    for name in &decision.start {
        start(shared, &mut st, name, now);
    }

    let view = view::build(&st, &shared.table.borrow(), &shared.config);
    drop(st);
    shared.view.send_replace(Arc::new(view));
}

/// Drain bookkeeping: when the scale-down started, its phase, and the stuck report.
fn track_drain(st: &mut State, decision: &Decision, now: Instant) {
    if phase(&decision.step) != phase(&st.step) {
        tracing::info!(phase = phase(&decision.step), "scale-down step");
    }
    if draining_in_progress(&decision.step) {
        st.drain_since.get_or_insert(now);
    } else {
        st.drain_since = None;
    }
    match &decision.stuck {
        Some(stuck) => {
            if st
                .stuck_logged
                .is_none_or(|t| now.duration_since(t) >= STUCK_LOG_EVERY)
            {
                if matches!(decision.step, shard::DrainStep::Remove(_)) {
                    tracing::error!("{stuck} (Kubernetes: Degraded)");
                } else {
                    tracing::error!(
                        "{stuck}; not stopping anything, still retrying (Kubernetes: Degraded)"
                    );
                }
                st.stuck_logged = Some(now);
            }
        }
        None => {
            if st.stuck.is_some() {
                tracing::info!("scale-down no longer stuck");
            }
            st.stuck_logged = None;
        }
    }
    st.step = decision.step.clone();
    st.stuck = decision.stuck.clone();
    st.followers = decision.followers.clone();
    st.catching_up.clone_from(&decision.catching_up);
}

/// One autoscaler step (`--autoscale`): a change sets the desired count, as `POST /scale`
/// does, and wakes the next pass to act on it.
fn autoscale(
    shared: &Shared,
    st: &mut State,
    decision: &Decision,
    pods: &[crate::decide::PodView],
    now: Instant,
) {
    let busy = draining_in_progress(&decision.step)
        || !decision.table.moves.is_empty()
        || !decision.exiting.is_empty()
        || st.rollout.is_some()
        || decision.replicas != st.desired
        || st.replicas != st.desired;
    let desired = st.desired;
    let mut scalings = st.scalings;
    let Some(autoscaler) = st.autoscaler.as_mut() else {
        return;
    };
    if let Some(to) = autoscaler.step(desired, pods, busy, now, &mut scalings) {
        st.desired = to;
        shared.wake.notify_one();
    }
    st.scalings = scalings;
}

/// One step of the rolling restart in progress, if any.
fn step_rollout(shared: &Shared, st: &mut State, table: &shard::AssignmentTable, now: Instant) {
    let mut pods = st.rollout_pods();
    let copying: Vec<String> = pods
        .iter()
        .filter(|p| p.ready && p.catching_up > 0)
        .map(|p| format!("{} ({})", p.name, p.catching_up))
        .collect();
    if copying.is_empty() || st.rollout.is_none() {
        st.rollout_followers_since = None;
    } else {
        let since = *st.rollout_followers_since.get_or_insert(now);
        // Bounded like a drain: past the drain timeout a follower that does not catch up no
        // longer holds the restart up.
        if now.duration_since(since) >= shared.config.decide.drain_timeout {
            tracing::warn!(followers = %copying.join(", "),
                "rolling restart: followers still catching up past the drain timeout; going on");
            for p in &mut pods {
                p.catching_up = 0;
            }
        }
    }
    let Some(rollout) = st.rollout.as_mut() else {
        return;
    };
    match rollout.step(&pods, table) {
        Step::Stop(ordinal) => {
            let (updated, total) = (rollout.updated, rollout.total);
            tracing::info!(ordinal, updated, total, "rolling restart: next node");
            stop(
                st,
                ordinal,
                "rolling restart: draining it, then a new process (SIGTERM)",
            );
            // The next pass must see it leaving.
            shared.wake.notify_one();
        }
        Step::Wait => {}
        Step::Done => {
            tracing::info!(nodes = rollout.updated, "rolling restart done");
            st.rollout = None;
            st.rollouts_done += 1;
        }
    }
}

/// Tells pod `ordinal`'s process to stop (once): its supervisor sends SIGTERM, and from the
/// next pass on the pod counts as leaving, so its shards are handed off before it exits.
fn stop(st: &mut State, ordinal: u32, why: &str) {
    let Some(pod) = st.pods.get_mut(&ordinal) else {
        return;
    };
    if let Some(proc) = pod.proc.as_mut()
        && !proc.stopping
    {
        tracing::info!(node = %pod.name, "{why}");
        proc.stopping = true;
        proc.stop.cancel();
    }
}

/// Starts a process for pod `name` unless one runs or its back-off has not passed.
fn start(shared: &Arc<Shared>, st: &mut State, name: &NodeName, now: Instant) {
    let Some(ordinal) = ordinal_of(name) else {
        return;
    };
    let pod = st.pods.entry(ordinal).or_insert_with(|| Pod {
        name: name.clone(),
        generation: 0,
        restarts: 0,
        crashes_in_a_row: 0,
        not_before: None,
        client_port: None,
        proc: None,
    });
    if pod.proc.is_some() || pod.not_before.is_some_and(|t| now < t) {
        return;
    }
    pod.generation += 1;
    let stop = shared.shutdown.child_token();
    pod.proc = Some(Proc::new(stop.clone()));
    shared.tasks.spawn(process::supervise(
        shared.clone(),
        ordinal,
        name.clone(),
        pod.generation,
        stop,
    ));
}
