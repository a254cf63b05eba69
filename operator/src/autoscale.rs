//! The autoscaling decision: from the load the nodes report, how many replicas the cluster
//! should have, and why.
//!
//! [`recommend`] is a pure function of a [`Policy`], what was [`Observed`] this pass and the
//! [`History`] of earlier recommendations (which it updates). Both drivers call it and act on a
//! change the way a person would: the Kubernetes driver through the `ChatCluster`'s scale
//! subresource, the local driver through its own scale path. Either way a scale-in drains
//! first, like any other.
//!
//! One pass, in order, modelled on the Horizontal Pod Autoscaler:
//!
//! 1. **Hold** while a drain, hand-offs or a rolling update are in progress: their pods'
//!    loads are moving, and a decision now would read a cluster in transit.
//! 2. **Bounds.** A replica count outside `min..=max` (set by hand, or the policy changed) is
//!    brought to the nearest bound at once.
//! 3. **Raw recommendation per target.** `total / target` pods, rounded up, where `total` is
//!    the load summed over the pods that report. Within the tolerance band around the target
//!    (`|total / (current x target) - 1| <= tolerance`) a target recommends the current count.
//!    The largest recommendation over the targets wins. Pods that do not report yet (starting)
//!    add nothing to the total, so a scale-up counts them as idle; a scale-down needs a report
//!    from every pod, so a node that missed one pass cannot make the cluster look idle.
//! 4. **Stabilization.** The recommendation is recorded; the count may rise only to the
//!    lowest recommendation within the scale-up window, and fall only to the highest within
//!    the scale-down window. A load that flaps therefore does not make the cluster flap: it
//!    grows when the load has been high for the whole up-window, and shrinks when it has been
//!    low for the whole down-window. Until the history reaches back a whole window (a restarted
//!    operator, a new policy), the current count counts as one of its recommendations.
//! 5. **Step cap and bounds.** At most [`Policy::max_step`] pods are added or removed per
//!    decision, and the result stays within `min..=max`.
//!
//! Guarantees: deterministic (the same inputs and history give the same answer); never outside
//! `min..=max` once out of a hold; never more than `max_step` from the current count except to
//! reach a bound; the history stays bounded ([`HISTORY_CAP`] entries, none older than the longer
//! window).

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::decide::PodView;

/// The most recommendations a [`History`] keeps, whatever the windows: a pass every 250 ms for a
/// ten-minute window fits.
pub const HISTORY_CAP: usize = 4096;

/// The default tolerance band around a target: a load within 10 % of it changes nothing.
pub const DEFAULT_TOLERANCE: f64 = 0.1;

/// What the autoscaler aims at, per pod. At least one target is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Targets {
    /// Open client connections per pod.
    pub connections_per_pod: Option<u64>,
    /// Chat messages delivered to clients per second per pod.
    pub deliveries_per_sec_per_pod: Option<u64>,
}

/// How to autoscale: bounds, targets, windows and the step cap.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Never fewer replicas than this (at least 1).
    pub min: u32,
    /// Never more replicas than this (at least `min`).
    pub max: u32,
    /// The per-pod load to aim at.
    pub targets: Targets,
    /// A load within this fraction of its target changes nothing (0.1 = 10 %).
    pub tolerance: f64,
    /// The count rises only to the lowest recommendation within this window.
    pub scale_up_window: Duration,
    /// The count falls only to the highest recommendation within this window.
    pub scale_down_window: Duration,
    /// The most pods added or removed in one decision (at least 1).
    pub max_step: u32,
}

impl Policy {
    /// A policy between `min` and `max` with the defaults of the CRD: no up-window, a
    /// five-minute down-window, steps of at most 4 pods.
    pub fn new(min: u32, max: u32, targets: Targets) -> Policy {
        Policy {
            min,
            max,
            targets,
            tolerance: DEFAULT_TOLERANCE,
            scale_up_window: Duration::ZERO,
            scale_down_window: Duration::from_secs(300),
            max_step: 4,
        }
    }

    /// Why this policy cannot be used, if it cannot.
    ///
    /// # Errors
    ///
    /// A message naming the first problem: `min` below 1, `max` below `min`, no target, a
    /// zero target or a zero step.
    pub fn validate(&self) -> Result<(), String> {
        if self.min < 1 {
            return Err("autoscaling.minReplicas must be at least 1".into());
        }
        if self.max < self.min {
            return Err(format!(
                "autoscaling.maxReplicas ({}) must not be below minReplicas ({})",
                self.max, self.min
            ));
        }
        let Targets {
            connections_per_pod: c,
            deliveries_per_sec_per_pod: d,
        } = self.targets;
        if c.is_none() && d.is_none() {
            return Err("autoscaling.targets needs at least one target".into());
        }
        if c == Some(0) || d == Some(0) {
            return Err("autoscaling.targets must be above 0".into());
        }
        if self.max_step == 0 {
            return Err("autoscaling.maxStep must be at least 1".into());
        }
        if !(self.tolerance >= 0.0 && self.tolerance < 1.0) {
            return Err("autoscaling tolerance must be in [0, 1)".into());
        }
        Ok(())
    }
}

/// One ready pod's load, from its `/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodLoad {
    /// Client connections open.
    pub connections: u64,
    /// Deliveries per second over the node's load window.
    pub deliveries_per_sec: u64,
}

/// What one pass observed.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The replica count in effect (`spec.replicas`, or the local driver's desired count).
    pub current: u32,
    /// The loads of the ready pods that reported this pass.
    pub loads: &'a [PodLoad],
    /// A drain, hand-offs or a rolling update are in progress: hold.
    pub busy: bool,
    /// When this pass runs.
    pub now: Instant,
}

/// The recommendations of the recent passes, newest last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    entries: VecDeque<(Instant, u32)>,
}

impl History {
    /// How many recommendations are kept now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// When the newest recommendation was recorded.
    pub fn newest(&self) -> Option<Instant> {
        self.entries.back().map(|(t, _)| *t)
    }

    /// Records `replicas` at `now`, forgetting what is older than `keep` except the newest such
    /// entry (it shows how far back the history reaches).
    fn record(&mut self, now: Instant, replicas: u32, keep: Duration) {
        let old = |t: &Instant| now.saturating_duration_since(*t) > keep;
        while self.entries.get(1).is_some_and(|(t, _)| old(t)) || self.entries.len() >= HISTORY_CAP
        {
            self.entries.pop_front();
        }
        self.entries.push_back((now, replicas));
    }

    /// The recommendations within `window` of `now`, plus `current` when the history does not
    /// reach back that far (just started, or the policy just changed): a decision needs a whole
    /// window of evidence, so a restarted operator neither grows nor shrinks the cluster at once.
    fn within(
        &self,
        now: Instant,
        window: Duration,
        current: u32,
    ) -> impl Iterator<Item = u32> + '_ {
        let covered = self
            .entries
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= window);
        self.entries
            .iter()
            .filter(move |(t, _)| now.saturating_duration_since(*t) <= window)
            .map(|(_, r)| *r)
            .chain((!covered).then_some(current))
    }
}

/// Why the count is what it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// A drain, hand-offs or a rolling update are in progress.
    Busy,
    /// No ready pod reported a load.
    NoReports,
    /// The count was below `min`.
    BelowMin { min: u32 },
    /// The count was above `max`.
    AboveMax { max: u32 },
    /// The load, per pod, against its target.
    Load {
        /// `connections` or `deliveries/s`.
        metric: &'static str,
        /// The load summed over the reporting pods, divided by the current count.
        per_pod: f64,
        /// The target per pod.
        target: u64,
        /// The pods the load alone asks for.
        wanted: u32,
        /// The stabilization window held the count back.
        stabilized: bool,
        /// The step cap or a bound held the count back.
        capped: bool,
    },
    /// Some pods did not report, so the count is not lowered.
    MissingReports { reporting: u32 },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Busy => write!(f, "holding: a drain, hand-off or rollout is in progress"),
            Reason::NoReports => write!(f, "holding: no ready pod reported its load"),
            Reason::BelowMin { min } => write!(f, "below minReplicas {min}"),
            Reason::AboveMax { max } => write!(f, "above maxReplicas {max}"),
            Reason::Load {
                metric,
                per_pod,
                target,
                wanted,
                stabilized,
                capped,
            } => {
                write!(
                    f,
                    "{metric} per pod {per_pod:.1} against a target of {target}: {wanted} pods wanted"
                )?;
                if *stabilized {
                    write!(f, " (held by the stabilization window)")?;
                }
                if *capped {
                    write!(f, " (limited by maxStep or the bounds)")?;
                }
                Ok(())
            }
            Reason::MissingReports { reporting } => write!(
                f,
                "not scaling in: only {reporting} pods reported their load"
            ),
        }
    }
}

/// The outcome of one pass: the replica count to have and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    /// The replica count the cluster should have now.
    pub desired: u32,
    /// Why.
    pub reason: Reason,
}

impl Recommendation {
    /// True when the count should change from `current`.
    pub fn changes(&self, current: u32) -> bool {
        self.desired != current
    }
}

/// The loads of the pods that are ready members and reported this pass; pods on their way out
/// are left out (their clients are leaving them).
pub fn loads(views: &[PodView]) -> Vec<PodLoad> {
    views
        .iter()
        .filter(|v| v.ready && !v.leaving())
        .filter_map(|v| v.report.as_ref())
        .map(|r| PodLoad {
            connections: r.connections,
            deliveries_per_sec: r.load.deliveries_per_sec,
        })
        .collect()
}

/// One autoscaling pass (see the module doc). Records the raw recommendation in `history`.
pub fn recommend(
    policy: &Policy,
    observed: &Observed<'_>,
    history: &mut History,
) -> Recommendation {
    let Observed {
        current,
        loads,
        busy,
        now,
    } = *observed;
    let hold = |reason| Recommendation {
        desired: current,
        reason,
    };
    if busy {
        return hold(Reason::Busy);
    }
    if current < policy.min {
        return Recommendation {
            desired: policy.min,
            reason: Reason::BelowMin { min: policy.min },
        };
    }
    if current > policy.max {
        return Recommendation {
            desired: policy.max,
            reason: Reason::AboveMax { max: policy.max },
        };
    }
    if loads.is_empty() {
        return hold(Reason::NoReports);
    }

    // 3. Raw recommendation: the largest over the targets.
    let connections: u64 = loads.iter().map(|l| l.connections).sum();
    let deliveries: u64 = loads.iter().map(|l| l.deliveries_per_sec).sum();
    let per_target = [
        (
            "connections",
            connections,
            policy.targets.connections_per_pod,
        ),
        (
            "deliveries/s",
            deliveries,
            policy.targets.deliveries_per_sec_per_pod,
        ),
    ];
    let Some((metric, total, target, wanted)) = per_target
        .into_iter()
        .filter_map(|(metric, total, target)| {
            let target = target.filter(|t| *t > 0)?;
            Some((
                metric,
                total,
                target,
                wanted(policy, current, total, target),
            ))
        })
        .max_by_key(|(_, _, _, wanted)| *wanted)
    else {
        return hold(Reason::NoReports);
    };
    let reporting = u32::try_from(loads.len()).unwrap_or(u32::MAX);
    let raw = if wanted < current && reporting < current {
        current
    } else {
        wanted
    }
    .clamp(policy.min, policy.max);

    // 4. Stabilization.
    let keep = policy.scale_up_window.max(policy.scale_down_window);
    history.record(now, raw, keep);
    let up = history
        .within(now, policy.scale_up_window, current)
        .min()
        .unwrap_or(raw);
    let down = history
        .within(now, policy.scale_down_window, current)
        .max()
        .unwrap_or(raw);
    let mut stabilized = current;
    if stabilized < up {
        stabilized = up;
    }
    if stabilized > down {
        stabilized = down;
    }

    // 5. Step cap and bounds.
    let step = policy.max_step.max(1);
    let desired = stabilized
        .clamp(current.saturating_sub(step), current.saturating_add(step))
        .clamp(policy.min, policy.max);

    if wanted < current && reporting < current && desired == current {
        return hold(Reason::MissingReports { reporting });
    }
    #[allow(clippy::cast_precision_loss)] // loads and counts far below 2^52
    let per_pod = total as f64 / f64::from(current.max(1));
    Recommendation {
        desired,
        reason: Reason::Load {
            metric,
            per_pod,
            target,
            wanted,
            stabilized: stabilized != raw,
            capped: desired != stabilized,
        },
    }
}

/// The pods `total` load asks for at `target` per pod: `current` within the tolerance band,
/// otherwise `ceil(total / target)`.
fn wanted(policy: &Policy, current: u32, total: u64, target: u64) -> u32 {
    #[allow(clippy::cast_precision_loss)] // loads and counts far below 2^52
    let ratio = total as f64 / (f64::from(current.max(1)) * target as f64);
    if (ratio - 1.0).abs() <= policy.tolerance {
        return current;
    }
    u32::try_from(total.div_ceil(target)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
