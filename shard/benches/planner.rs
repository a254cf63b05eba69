//! Planner benchmarks at a realistic size: 4,096 shards over 100 nodes.
//!
//! Three plans the operator makes: the initial assignment, one node joining (100 -> 101) and one
//! node draining (100 -> 99 eligible).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use shard::{AssignmentTable, Membership, NodeInfo, NodeName, PlanOptions, plan};

const SHARDS: u32 = 4096;
const NODES: usize = 100;

fn membership(nodes: usize, draining: &[usize]) -> Membership {
    let name = |i: usize| NodeName::new(format!("chat-{i}")).expect("chat-{i} is a valid name");
    Membership {
        ready: (0..nodes)
            .map(|i| (name(i), NodeInfo::new(format!("10.0.0.{i}:7001"))))
            .collect(),
        draining: draining.iter().map(|&i| name(i)).collect(),
    }
}

fn planner(c: &mut Criterion) {
    let options = PlanOptions::default();
    let empty = AssignmentTable::empty(SHARDS);
    let hundred = membership(NODES, &[]);
    let balanced = plan(&empty, &hundred, &options);
    let joined = membership(NODES + 1, &[]);
    let drained = membership(NODES, &[NODES - 1]);

    c.bench_function("plan 4096 shards over 100 nodes from empty", |b| {
        b.iter(|| plan(black_box(&empty), black_box(&hundred), &options));
    });
    c.bench_function("plan 4096 shards, one node joins (100 -> 101)", |b| {
        b.iter(|| plan(black_box(&balanced), black_box(&joined), &options));
    });
    c.bench_function("plan 4096 shards, one node drains (100 -> 99)", |b| {
        b.iter(|| plan(black_box(&balanced), black_box(&drained), &options));
    });
}

criterion_group!(benches, planner);
criterion_main!(benches);
