//! Tests of the autoscaling decision, including flapping loads.

use super::*;
use crate::decide::Report;
use shard::{NodeLoad, NodeName};

fn view(name: &str, ready: bool, terminating: bool, connections: Option<u64>) -> PodView {
    PodView {
        name: NodeName::new(name).expect("name"),
        running: true,
        ready,
        info: None,
        report: connections.map(|c| Report {
            connections: c,
            load: NodeLoad {
                deliveries_per_sec: c * 10,
                ..NodeLoad::default()
            },
            ..Report::default()
        }),
        terminating,
    }
}

#[test]
fn only_ready_pods_that_stay_and_reported_count_toward_the_load() {
    let views = [
        view("c-0", true, false, Some(5)),
        view("c-1", false, false, Some(7)),
        view("c-2", true, true, Some(9)),
        view("c-3", true, false, None),
    ];
    assert_eq!(
        super::loads(&views),
        [PodLoad {
            connections: 5,
            deliveries_per_sec: 50
        }]
    );
}

fn conns(policy_min: u32, policy_max: u32, target: u64) -> Policy {
    let mut policy = Policy::new(
        policy_min,
        policy_max,
        Targets {
            connections_per_pod: Some(target),
            deliveries_per_sec_per_pod: None,
        },
    );
    policy.scale_down_window = Duration::from_secs(60);
    policy
}

fn loads(per_pod: &[u64]) -> Vec<PodLoad> {
    per_pod
        .iter()
        .map(|c| PodLoad {
            connections: *c,
            deliveries_per_sec: 0,
        })
        .collect()
}

/// Runs one pass at `t0 + at`.
fn pass(
    policy: &Policy,
    history: &mut History,
    t0: Instant,
    at: u64,
    current: u32,
    per_pod: &[u64],
) -> Recommendation {
    recommend(
        policy,
        &Observed {
            current,
            loads: &loads(per_pod),
            busy: false,
            now: t0 + Duration::from_secs(at),
        },
        history,
    )
}

#[test]
fn a_load_above_target_scales_up_to_total_over_target() {
    let policy = conns(1, 10, 100);
    let rec = pass(
        &policy,
        &mut History::default(),
        Instant::now(),
        0,
        2,
        &[250, 250],
    );
    assert_eq!(rec.desired, 5);
    assert!(
        rec.reason.to_string().contains("connections per pod 250.0"),
        "{}",
        rec.reason
    );
}

#[test]
fn a_load_within_the_tolerance_band_changes_nothing() {
    let policy = conns(1, 10, 100);
    let rec = pass(
        &policy,
        &mut History::default(),
        Instant::now(),
        0,
        3,
        &[105, 108, 100],
    );
    assert_eq!(rec.desired, 3);
}

#[test]
fn the_largest_recommendation_over_the_targets_wins() {
    let mut policy = conns(1, 20, 100);
    policy.targets.deliveries_per_sec_per_pod = Some(1000);
    let observed = [PodLoad {
        connections: 10,
        deliveries_per_sec: 5500,
    }];
    let rec = recommend(
        &policy,
        &Observed {
            current: 1,
            loads: &observed,
            busy: false,
            now: Instant::now(),
        },
        &mut History::default(),
    );
    assert_eq!(rec.desired, 5, "capped at a step of 4 from 1");
    assert!(
        rec.reason.to_string().starts_with("deliveries/s per pod"),
        "{}",
        rec.reason
    );
}

#[test]
fn the_step_cap_limits_how_far_one_decision_goes() {
    let mut policy = conns(1, 50, 10);
    policy.max_step = 2;
    let rec = pass(
        &policy,
        &mut History::default(),
        Instant::now(),
        0,
        3,
        &[100, 100, 100],
    );
    assert_eq!(rec.desired, 5);
    assert!(matches!(
        rec.reason,
        Reason::Load {
            capped: true,
            wanted: 30,
            ..
        }
    ));
}

#[test]
fn the_count_never_leaves_the_bounds() {
    let policy = conns(2, 4, 10);
    let t0 = Instant::now();
    assert_eq!(
        pass(&policy, &mut History::default(), t0, 0, 4, &[1000; 4]).desired,
        4
    );
    let mut policy = policy;
    policy.scale_down_window = Duration::ZERO;
    assert_eq!(
        pass(&policy, &mut History::default(), t0, 0, 3, &[0, 0, 0]).desired,
        2
    );
}

#[test]
fn a_count_outside_the_bounds_is_brought_back_at_once_even_without_reports() {
    let policy = conns(2, 4, 10);
    let t0 = Instant::now();
    let low = pass(&policy, &mut History::default(), t0, 0, 1, &[]);
    assert_eq!(low.desired, 2);
    assert_eq!(low.reason, Reason::BelowMin { min: 2 });
    let high = pass(&policy, &mut History::default(), t0, 0, 9, &[]);
    assert_eq!(high.desired, 4);
    assert_eq!(high.reason, Reason::AboveMax { max: 4 });
}

#[test]
fn no_reports_hold_the_count() {
    let policy = conns(1, 10, 10);
    let rec = pass(&policy, &mut History::default(), Instant::now(), 0, 3, &[]);
    assert_eq!(
        rec,
        Recommendation {
            desired: 3,
            reason: Reason::NoReports
        }
    );
}

#[test]
fn a_drain_or_rollout_in_progress_holds_the_count_and_records_nothing() {
    let policy = conns(1, 10, 10);
    let mut history = History::default();
    let rec = recommend(
        &policy,
        &Observed {
            current: 2,
            loads: &loads(&[500, 500]),
            busy: true,
            now: Instant::now(),
        },
        &mut history,
    );
    assert_eq!(
        rec,
        Recommendation {
            desired: 2,
            reason: Reason::Busy
        }
    );
    assert!(history.is_empty());
}

#[test]
fn a_missing_report_never_lets_the_cluster_look_idle() {
    let mut policy = conns(1, 10, 100);
    policy.scale_down_window = Duration::ZERO;
    let rec = pass(
        &policy,
        &mut History::default(),
        Instant::now(),
        0,
        3,
        &[0, 0],
    );
    assert_eq!(
        rec,
        Recommendation {
            desired: 3,
            reason: Reason::MissingReports { reporting: 2 }
        }
    );
    // Starting pods that do not report yet do not hold a scale-up back.
    let rec = pass(
        &policy,
        &mut History::default(),
        Instant::now(),
        0,
        3,
        &[400, 400],
    );
    assert_eq!(rec.desired, 7);
}

#[test]
fn scale_down_waits_for_the_whole_down_window() {
    let policy = conns(1, 10, 100); // down-window 60 s
    let t0 = Instant::now();
    let mut history = History::default();
    assert_eq!(pass(&policy, &mut history, t0, 0, 4, &[100; 4]).desired, 4);
    for at in [10, 30, 59] {
        let rec = pass(&policy, &mut history, t0, at, 4, &[10; 4]);
        assert_eq!(
            rec.desired, 4,
            "at {at}s the high recommendation is still in the window"
        );
        assert!(matches!(
            rec.reason,
            Reason::Load {
                stabilized: true,
                ..
            }
        ));
    }
    assert_eq!(pass(&policy, &mut history, t0, 61, 4, &[10; 4]).desired, 1);
}

#[test]
fn scale_up_waits_for_the_whole_up_window() {
    let mut policy = conns(1, 10, 100);
    policy.scale_up_window = Duration::from_secs(20);
    let t0 = Instant::now();
    let mut history = History::default();
    assert_eq!(
        pass(&policy, &mut history, t0, 0, 2, &[100, 100]).desired,
        2
    );
    assert_eq!(
        pass(&policy, &mut history, t0, 5, 2, &[200, 200]).desired,
        2
    );
    assert_eq!(
        pass(&policy, &mut history, t0, 21, 2, &[200, 200]).desired,
        4
    );
}

#[test]
fn a_flapping_load_does_not_make_the_cluster_flap() {
    let mut policy = conns(1, 10, 100);
    policy.scale_up_window = Duration::from_secs(15);
    let t0 = Instant::now();
    let mut history = History::default();
    let mut current = 3;
    let mut changes = 0;
    // The load alternates every 5 s between twice and half the target, for ten minutes.
    for step in 0..120u64 {
        let per_pod = if step % 2 == 0 { 200 } else { 50 };
        let total = per_pod * 3;
        let each = total / u64::from(current);
        let rec = pass(
            &policy,
            &mut history,
            t0,
            step * 5,
            current,
            &vec![each; current as usize],
        );
        if rec.desired != current {
            changes += 1;
            current = rec.desired;
        }
    }
    assert_eq!(changes, 0, "ended at {current}");
    assert!(history.len() <= HISTORY_CAP);
}

#[test]
fn a_load_that_rises_then_falls_grows_then_shrinks_the_cluster_once_each() {
    let policy = conns(1, 8, 100);
    let t0 = Instant::now();
    let mut history = History::default();
    let mut current = 1;
    let mut path = vec![current];
    for at in (0..400u64).step_by(5) {
        let total: u64 = if (50..150).contains(&at) { 600 } else { 50 };
        let each = total / u64::from(current);
        let rec = pass(
            &policy,
            &mut history,
            t0,
            at,
            current,
            &vec![each; current as usize],
        );
        if rec.desired != current {
            current = rec.desired;
            path.push(current);
        }
    }
    // Up in steps of at most 4 to 6, then down to 1 once the down-window has passed.
    assert_eq!(path, [1, 5, 6, 2, 1]);
}

#[test]
fn the_history_forgets_what_is_older_than_the_longer_window() {
    let policy = conns(1, 10, 100);
    let t0 = Instant::now();
    let mut history = History::default();
    for at in 0..200 {
        pass(&policy, &mut history, t0, at, 2, &[100, 100]);
    }
    assert!(history.len() <= 63, "{}", history.len());
}

#[test]
fn invalid_policies_are_refused_with_the_field_named() {
    let ok = conns(1, 3, 10);
    assert!(ok.validate().is_ok());
    let cases = [
        (
            Policy {
                min: 0,
                ..ok.clone()
            },
            "minReplicas",
        ),
        (
            Policy {
                max: 0,
                min: 1,
                ..ok.clone()
            },
            "maxReplicas",
        ),
        (
            Policy {
                targets: Targets::default(),
                ..ok.clone()
            },
            "target",
        ),
        (
            Policy {
                targets: Targets {
                    connections_per_pod: Some(0),
                    deliveries_per_sec_per_pod: None,
                },
                ..ok.clone()
            },
            "targets",
        ),
        (
            Policy {
                max_step: 0,
                ..ok.clone()
            },
            "maxStep",
        ),
    ];
    for (policy, field) in cases {
        let err = policy.validate().expect_err(field);
        assert!(err.contains(field), "{err}");
    }
}
