//! The decision step with per-shard loads: a skewed report moves the hot shards off the busy
//! node, an even one moves nothing, and planning again on the result changes nothing.

mod decide_support;

use std::time::Duration;

use decide_support::{name, options};
use operator::decide::{Decision, Inputs, PodView, Report, decide};
use shard::{AssignmentTable, Membership, NodeInfo, NodeLoad, PlanOptions, ShardId, ShardLoad};

const SHARDS: u32 = 12;

fn info(i: u32) -> NodeInfo {
    NodeInfo::new(format!("127.0.0.1:{}", 7000 + i))
}

/// Three nodes, four shards each (node-0 has 0..=3), nothing in flight.
fn balanced() -> AssignmentTable {
    let membership = Membership {
        ready: (0..3).map(|i| (name(i), info(i))).collect(),
        draining: Default::default(),
    };
    shard::plan(
        &AssignmentTable::empty(SHARDS),
        &membership,
        &PlanOptions::default(),
    )
}

/// Ready pods at `table`'s epoch, each reporting `load(shard)` deliveries/s for its shards.
fn pods(table: &AssignmentTable, load: impl Fn(u32) -> u64) -> Vec<PodView> {
    (0..3)
        .map(|i| PodView {
            name: name(i),
            running: true,
            ready: true,
            info: Some(info(i)),
            report: Some(Report {
                epoch: table.epoch,
                load: NodeLoad {
                    shards: table
                        .shards_of(&name(i))
                        .into_iter()
                        .map(|s| ShardLoad {
                            shard: s.0,
                            deliveries_per_sec: load(s.0),
                            members: 0,
                        })
                        .collect(),
                    ..NodeLoad::default()
                },
                ..Report::default()
            }),
            terminating: false,
        })
        .collect()
}

fn decide_on(table: &AssignmentTable, pods: &[PodView]) -> Decision {
    decide(
        Inputs {
            desired_replicas: 3,
            pods,
            table,
            drain_elapsed: Duration::ZERO,
            age: Duration::from_secs(3600),
        },
        &options(),
    )
    .expect("decide")
}

#[test]
fn a_skewed_report_moves_a_hot_shard_off_the_busy_node() {
    let table = balanced();
    assert_eq!(table.owner(ShardId(0)), Some(&name(0)));
    assert_eq!(table.owner(ShardId(1)), Some(&name(0)));
    // Shards 0 and 1 carry almost everything, both on node-0.
    let hot = |s: u32| if s < 2 { 1_000 } else { 10 };
    let decision = decide_on(&table, &pods(&table, hot));
    assert!(decision.publish);
    let next = &decision.table;
    assert_ne!(next.owner(ShardId(0)), next.owner(ShardId(1)));
    assert!(!next.moves.is_empty());
    assert!(next.moves.iter().any(|m| m.from == name(0)));
    // Counts stay within floor..ceil + 1 = 4..5.
    assert!(next.counts().values().all(|&c| (4..=5).contains(&c)));
    // Deciding again on the same reports republishes nothing.
    let again = decide_on(next, &pods(next, hot));
    assert!(!again.publish);
    assert_eq!(&again.table, next);
}

#[test]
fn an_even_report_moves_nothing() {
    let table = balanced();
    let decision = decide_on(&table, &pods(&table, |_| 100));
    assert!(!decision.publish);
    assert_eq!(decision.table, table);
}

#[test]
fn reports_without_shard_loads_plan_by_count_as_before() {
    let table = balanced();
    let decision = decide_on(&table, &pods(&table, |_| 0));
    assert!(!decision.publish);
    assert_eq!(decision.table, table);
}
