//! The local driver's autoscaler (`roomshard-operator local --autoscale MIN:MAX ...`).
//!
//! Each reconcile pass hands it the pods it observed and whether anything moves; it asks
//! [`crate::autoscale::recommend`] and, on a change, sets the desired replica count, the same
//! field `POST /scale` sets. The next pass acts on it like on any scale: new pods start, or the
//! highest ordinals drain before they stop. What it did last, and why, shows in `GET /cluster`
//! and in the log.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::autoscale::{History, Observed, Policy, Reason, loads, recommend};
use crate::decide::PodView;

/// The policy and what the autoscaler remembers.
#[derive(Debug)]
pub(super) struct Autoscaler {
    policy: Policy,
    history: History,
    /// The last change it made.
    last: Option<LastScale>,
    /// Why the count is what it is, after the last pass.
    now: String,
}

#[derive(Debug, Clone)]
struct LastScale {
    from: u32,
    to: u32,
    at: Instant,
    reason: String,
}

/// The autoscaler in `GET /cluster`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingView {
    /// The fewest nodes.
    pub min_replicas: u32,
    /// The most nodes.
    pub max_replicas: u32,
    /// Why the count is what it is, after the last pass (holding, within the target, ...).
    pub status: String,
    /// The last change: from this many nodes...
    pub last_from: Option<u32>,
    /// ...to this many...
    pub last_to: Option<u32>,
    /// ...this many seconds ago...
    pub last_secs_ago: Option<u64>,
    /// ...and why.
    pub last_reason: Option<String>,
    /// Changes made since the driver started.
    pub scalings: u32,
}

impl Autoscaler {
    /// An autoscaler following `policy`, with no history yet.
    pub(super) fn new(policy: Policy) -> Autoscaler {
        Autoscaler {
            policy,
            history: History::default(),
            last: None,
            now: "no decision yet".into(),
        }
    }

    /// One decision: the replica count to have instead of `current`, if it should change.
    pub(super) fn step(
        &mut self,
        current: u32,
        pods: &[PodView],
        busy: bool,
        now: Instant,
        scalings: &mut u32,
    ) -> Option<u32> {
        let loads = loads(pods);
        let rec = recommend(
            &self.policy,
            &Observed {
                current,
                loads: &loads,
                busy,
                now,
            },
            &mut self.history,
        );
        self.now = rec.reason.to_string();
        if !rec.changes(current) {
            if !matches!(rec.reason, Reason::Busy) {
                tracing::debug!(replicas = current, reason = %rec.reason, "autoscaler: no change");
            }
            return None;
        }
        let reason = format!("scaled from {current} to {}: {}", rec.desired, rec.reason);
        tracing::info!(from = current, to = rec.desired, "autoscaler {reason}");
        self.last = Some(LastScale {
            from: current,
            to: rec.desired,
            at: now,
            reason,
        });
        *scalings += 1;
        Some(rec.desired)
    }

    /// What `GET /cluster` shows.
    pub(super) fn view(&self, scalings: u32) -> AutoscalingView {
        let last = self.last.as_ref();
        AutoscalingView {
            min_replicas: self.policy.min,
            max_replicas: self.policy.max,
            status: self.now.clone(),
            last_from: last.map(|l| l.from),
            last_to: last.map(|l| l.to),
            last_secs_ago: last.map(|l| l.at.elapsed().as_secs()),
            last_reason: last.map(|l| l.reason.clone()),
            scalings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscale::Targets;
    use crate::decide::Report;
    use shard::NodeName;

    fn pod(name: &str, connections: u64) -> PodView {
        PodView {
            name: NodeName::new(name).expect("name"),
            running: true,
            ready: true,
            info: None,
            report: Some(Report {
                connections,
                ..Report::default()
            }),
            terminating: false,
        }
    }

    #[test]
    fn a_change_is_remembered_with_its_reason_for_the_cluster_view() {
        let targets = Targets {
            connections_per_pod: Some(10),
            deliveries_per_sec_per_pod: None,
        };
        let mut autoscaler = Autoscaler::new(Policy::new(1, 4, targets));
        let mut scalings = 0;
        let pods = [pod("node-0", 30)];
        let to = autoscaler.step(1, &pods, false, Instant::now(), &mut scalings);
        assert_eq!(to, Some(3));
        let view = autoscaler.view(scalings);
        assert_eq!(
            (view.last_from, view.last_to, view.scalings),
            (Some(1), Some(3), 1)
        );
        let reason = view.last_reason.expect("reason");
        assert!(
            reason.starts_with("scaled from 1 to 3: connections per pod 30.0"),
            "{reason}"
        );
        // While the new pods drain in or start, it holds.
        assert_eq!(
            autoscaler.step(3, &pods, true, Instant::now(), &mut scalings),
            None
        );
        assert!(autoscaler.view(scalings).status.starts_with("holding"));
    }
}
