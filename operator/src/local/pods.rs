//! What the driver knows about its pods and their processes, and how that changes when a probe
//! answers or a process exits. Plain data and plain functions: the supervisors
//! ([`super::process`]) and the reconcile pass ([`super::reconcile`]) call them under the
//! driver's lock, and the tests here call them directly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shard::{DrainStep, NodeInfo, NodeName};
use tokio_util::sync::CancellationToken;

use super::POD_PREFIX;
use super::rollout::{Rollout, RolloutPod};
use crate::decide::{PodView, Report, Stuck, pod_name};

/// The longest wait before starting again a pod that keeps crashing.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What the driver knows; guarded by a plain mutex, never held across an `await`.
#[derive(Debug)]
pub(super) struct State {
    pub desired: u32,
    /// The pods that should exist: ordinals `0..replicas` (the StatefulSet's replicas).
    pub replicas: u32,
    /// Every pod with a process or a history, by ordinal; includes pods being stopped.
    pub pods: BTreeMap<u32, Pod>,
    pub step: DrainStep,
    pub stuck: Option<Stuck>,
    /// How many shards have a live follower, from the last pass.
    pub followers: crate::replication::FollowerSummary,
    /// Nodes the drain waits on while they catch up followed shards, from the last pass.
    pub catching_up: Vec<(NodeName, u32)>,
    /// Since when a rolling restart has waited for followers catching up (none: not waiting).
    pub rollout_followers_since: Option<Instant>,
    pub drain_since: Option<Instant>,
    pub stuck_logged: Option<Instant>,
    pub started: Instant,
    /// A rolling restart in progress (`POST /restart`), and the last one's outcome.
    pub rollout: Option<Rollout>,
    /// Rolling restarts finished since the driver started.
    pub rollouts_done: u32,
    /// The autoscaler (`--autoscale`), when on.
    pub autoscaler: Option<super::autoscaler::Autoscaler>,
    /// Changes the autoscaler made since the driver started.
    pub scalings: u32,
}

/// One pod across its incarnations (processes).
#[derive(Debug)]
pub(super) struct Pod {
    pub name: NodeName,
    /// Bumped at each start, so a finished supervisor cannot touch its successor's state.
    pub generation: u64,
    pub restarts: u32,
    /// Unexpected exits since the pod was last ready; drives the back-off.
    pub crashes_in_a_row: u32,
    pub not_before: Option<Instant>,
    /// The client port its last process listened on; the next one listens there too.
    pub client_port: Option<u16>,
    /// The current process, while there is one.
    pub proc: Option<Proc>,
}

/// One process of a pod.
#[derive(Debug)]
pub(super) struct Proc {
    pub stop: CancellationToken,
    pub pid: Option<u32>,
    /// The driver told it to stop (a scale-down's removal or a rolling restart).
    pub stopping: bool,
    pub ready: bool,
    pub probe_failures: u32,
    pub client: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    pub report: Option<Report>,
    pub status: Option<serde_json::Value>,
}

impl Proc {
    /// A process just spawned: nothing known yet.
    pub(super) fn new(stop: CancellationToken) -> Proc {
        Proc {
            stop,
            pid: None,
            stopping: false,
            ready: false,
            probe_failures: 0,
            client: None,
            peer: None,
            report: None,
            status: None,
        }
    }

    /// Records a probe result: ready after one success, not ready after two failures in a row.
    /// Returns whether anything the reconcile pass looks at changed.
    pub(super) fn probed(&mut self, ok: bool, report: Option<Report>) -> bool {
        let was_ready = self.ready;
        if ok {
            self.probe_failures = 0;
            self.ready = true;
        } else {
            self.probe_failures = self.probe_failures.saturating_add(1);
            if self.probe_failures >= 2 {
                self.ready = false;
            }
        }
        let report_changed = report.is_some() && report != self.report;
        if report.is_some() {
            self.report = report;
        }
        was_ready != self.ready || report_changed
    }

    /// Whether this process is on a planned exit: the driver stopped it, or it said
    /// `terminating` (a SIGTERM sent by hand). Its exit is then not a crash.
    pub(super) fn leaving(&self) -> bool {
        self.stopping || self.report.as_ref().is_some_and(|r| r.terminating)
    }
}

impl State {
    /// A cluster that wants `desired` nodes and has started none yet.
    pub(super) fn new(desired: u32) -> Self {
        State {
            desired,
            replicas: 0,
            pods: BTreeMap::new(),
            step: DrainStep::Steady,
            stuck: None,
            followers: crate::replication::FollowerSummary::default(),
            catching_up: Vec::new(),
            rollout_followers_since: None,
            drain_since: None,
            stuck_logged: None,
            started: Instant::now(),
            rollout: None,
            rollouts_done: 0,
            autoscaler: None,
            scalings: 0,
        }
    }

    /// The process of pod `ordinal` if it is still incarnation `generation`.
    pub(super) fn proc_mut(&mut self, ordinal: u32, generation: u64) -> Option<&mut Proc> {
        self.pods
            .get_mut(&ordinal)
            .filter(|p| p.generation == generation)
            .and_then(|p| p.proc.as_mut())
    }

    /// The process of pod `ordinal`, incarnation `generation`, is gone. `stopped` says the
    /// driver stopped it; an exit after the node said `terminating` is a planned exit too.
    /// Anything else is a crash: it counts towards the back-off. Returns whether the pod was
    /// still this incarnation.
    pub(super) fn exited(
        &mut self,
        ordinal: u32,
        generation: u64,
        stopped: bool,
        now: Instant,
    ) -> bool {
        let replicas = self.replicas;
        let Some(pod) = self
            .pods
            .get_mut(&ordinal)
            .filter(|p| p.generation == generation)
        else {
            return false;
        };
        let planned = stopped || pod.proc.as_ref().is_some_and(Proc::leaving);
        pod.proc = None;
        if planned {
            tracing::info!(node = %pod.name, "node exited after handing its shards off");
        } else {
            pod.restarts += 1;
            pod.crashes_in_a_row += 1;
            pod.not_before = Some(now + backoff(pod.crashes_in_a_row));
        }
        if ordinal >= replicas {
            self.pods.remove(&ordinal);
        }
        true
    }

    /// What [`crate::decide()`] sees of pods `0..replicas`.
    pub(super) fn pod_views(&self) -> Vec<PodView> {
        (0..self.replicas)
            .filter_map(|ordinal| self.pod_view(ordinal))
            .collect()
    }

    pub(super) fn pod_view(&self, ordinal: u32) -> Option<PodView> {
        let Some(pod) = self.pods.get(&ordinal) else {
            // Not started yet: a pod that should exist but has no process.
            return pod_name(POD_PREFIX, ordinal).ok().map(|name| PodView {
                name,
                running: false,
                ready: false,
                info: None,
                report: None,
                terminating: false,
            });
        };
        let proc = pod.proc.as_ref();
        let info = proc.and_then(|p| {
            Some(NodeInfo {
                peer_addr: p.peer?.to_string(),
                client_addr: p.client.map(|a| a.to_string()),
                zone: None,
                member_since: 0,
            })
        });
        Some(PodView {
            name: pod.name.clone(),
            running: proc.is_some(),
            ready: proc.is_some_and(|p| p.ready),
            info,
            report: proc.and_then(|p| p.report.clone()),
            // A stop the driver sent is this pod's `deletionTimestamp`.
            terminating: proc.is_some_and(|p| p.stopping),
        })
    }

    /// What a rolling restart sees of pods `0..replicas`.
    pub(super) fn rollout_pods(&self) -> Vec<RolloutPod> {
        self.pods
            .iter()
            .filter(|(ordinal, _)| **ordinal < self.replicas)
            .map(|(&ordinal, pod)| RolloutPod {
                ordinal,
                generation: pod.generation,
                running: pod.proc.is_some(),
                ready: pod.proc.as_ref().is_some_and(|p| p.ready && !p.leaving()),
                name: pod.name.clone(),
                catching_up: pod
                    .proc
                    .as_ref()
                    .and_then(|p| p.report.as_ref())
                    .map_or(0, |r| r.catching_up),
            })
            .collect()
    }
}

/// How long to wait before starting a pod again after its `n`th crash in a row: at once the
/// first time, then 0.5 s, 1 s, 2 s, ... up to [`MAX_BACKOFF`].
pub(super) fn backoff(n: u32) -> Duration {
    if n <= 1 {
        return Duration::ZERO;
    }
    let exp = (n - 2).min(16);
    Duration::from_millis(500u64.saturating_mul(1 << exp)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(ordinal: u32, proc: Proc) -> State {
        let name = pod_name(POD_PREFIX, ordinal).expect("valid name");
        State {
            replicas: 3,
            pods: BTreeMap::from([(
                ordinal,
                Pod {
                    name,
                    generation: 1,
                    restarts: 0,
                    crashes_in_a_row: 0,
                    not_before: None,
                    client_port: None,
                    proc: Some(proc),
                },
            )]),
            ..State::new(3)
        }
    }

    #[test]
    fn a_crashing_pod_is_started_again_at_once_then_ever_more_slowly() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(3), Duration::from_secs(1));
        assert_eq!(backoff(5), Duration::from_secs(4));
        assert_eq!(backoff(6), Duration::from_secs(8));
        assert_eq!(backoff(7), MAX_BACKOFF);
        assert_eq!(backoff(1000), MAX_BACKOFF);
    }

    #[test]
    fn a_probe_makes_a_pod_ready_at_once_and_unready_after_two_failures() {
        let mut proc = Proc::new(CancellationToken::new());
        assert!(proc.probed(true, None));
        assert!(proc.ready);
        assert!(!proc.probed(false, None), "one failure is not enough");
        assert!(proc.ready);
        assert!(proc.probed(false, None));
        assert!(!proc.ready);
    }

    #[test]
    fn an_exit_after_the_node_said_terminating_is_not_a_crash() {
        let mut proc = Proc::new(CancellationToken::new());
        proc.probed(
            false,
            Some(Report {
                terminating: true,
                ..Report::default()
            }),
        );
        let mut st = state_with(1, proc);
        let now = Instant::now();
        assert!(st.exited(1, 1, false, now));
        let pod = &st.pods[&1];
        assert_eq!(pod.restarts, 0);
        assert_eq!(pod.not_before, None, "started again without back-off");
        assert!(pod.proc.is_none());
    }

    #[test]
    fn an_unexpected_exit_counts_as_a_crash() {
        let mut st = state_with(1, Proc::new(CancellationToken::new()));
        let now = Instant::now();
        assert!(st.exited(1, 1, false, now));
        assert_eq!(st.pods[&1].restarts, 1);
        // A stale supervisor of an older incarnation changes nothing.
        assert!(!st.exited(1, 0, false, now));
    }

    #[test]
    fn a_pod_the_driver_is_stopping_is_seen_as_terminating() {
        let mut proc = Proc::new(CancellationToken::new());
        proc.stopping = true;
        let st = state_with(0, proc);
        let views = st.pod_views();
        assert!(views[0].terminating);
        assert!(!views[1].running, "pods not started yet are listed too");
    }
}
