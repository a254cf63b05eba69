//! The load-aware placement figure: how busy the busiest node is, by count only and load-aware,
//! under a skewed room popularity.
//!
//! 3,000 rooms `room-1` .. `room-3000` with Zipf popularity (s = 1.1: room k carries load
//! proportional to 1 / k^1.1, a million deliveries per second in all) are mapped to shards with
//! `shard::shard_of`. For each shard and node count, the table planned by count alone is
//! compared with the one load-aware planning reaches by planning and completing hand-offs until
//! nothing changes (with the default `LoadPolicy`, once without a move cap and once with the
//! local driver's default of 64 moves per node and a tight cap of 4).
//!
//! Run with `cargo run --release -p shard --example placement`. Columns: max/mean of node load
//! by count and load-aware, the bound no placement can beat (the hottest shard, or the mean),
//! the moves (hand-offs) and plan rounds it took.

use std::collections::BTreeMap;

use shard::{
    AssignmentTable, LoadPolicy, Membership, NodeInfo, NodeName, PlanOptions, RoomId, ShardId,
    complete_moves, plan, plan_with_load, shard_of,
};

const ROOMS: usize = 3_000;
const ZIPF_S: f64 = 1.1;
const TOTAL_LOAD: f64 = 1_000_000.0;

fn main() -> Result<(), shard::ShardError> {
    println!("Zipf s = {ZIPF_S} over {ROOMS} rooms; node load as max/mean (1.00 = perfectly even)");
    println!(
        "{:>6} {:>5} {:>9} {:>9} {:>7} {:>6} {:>6} | {:>10} {:>6} | {:>9} {:>6}",
        "shards",
        "nodes",
        "by count",
        "by load",
        "bound",
        "moves",
        "rounds",
        "cap 64 max",
        "rounds",
        "cap 4 max",
        "rounds"
    );
    let weights: Vec<f64> = (1..=ROOMS).map(|k| 1.0 / (k as f64).powf(ZIPF_S)).collect();
    let sum: f64 = weights.iter().sum();
    for shards in [64u32, 128, 256] {
        let mut loads: BTreeMap<ShardId, u64> = BTreeMap::new();
        for (k, w) in weights.iter().enumerate() {
            let room = RoomId::new(format!("room-{}", k + 1))?;
            *loads.entry(shard_of(&room, shards)).or_insert(0) += (w / sum * TOTAL_LOAD) as u64;
        }
        for nodes in [3usize, 5, 8] {
            let membership = membership(nodes)?;
            let by_count = plan(
                &AssignmentTable::empty(shards),
                &membership,
                &PlanOptions::default(),
            );
            let uncapped = settle(&by_count, &membership, usize::MAX, &loads);
            let cap64 = settle(&by_count, &membership, 64, &loads);
            let cap4 = settle(&by_count, &membership, 4, &loads);
            let total: u64 = loads.values().sum();
            let mean = total as f64 / nodes as f64;
            let hottest = loads.values().copied().max().unwrap_or(0) as f64;
            println!(
                "{:>6} {:>5} {:>9.2} {:>9.2} {:>7.2} {:>6} {:>6} | {:>10.2} {:>6} | {:>9.2} {:>6}",
                shards,
                nodes,
                max_load(&by_count, &loads) / mean,
                max_load(&uncapped.0, &loads) / mean,
                hottest.max(mean) / mean,
                uncapped.1,
                uncapped.2,
                max_load(&cap64.0, &loads) / mean,
                cap64.2,
                max_load(&cap4.0, &loads) / mean,
                cap4.2,
            );
        }
    }
    Ok(())
}

fn membership(nodes: usize) -> Result<Membership, shard::ShardError> {
    let mut membership = Membership::default();
    for i in 0..nodes {
        let name = NodeName::new(format!("chat-{i}"))?;
        membership
            .ready
            .insert(name, NodeInfo::new(format!("chat-{i}:7001")));
    }
    Ok(membership)
}

/// Plans and completes until the table stops changing: (table, hand-offs, rounds).
fn settle(
    start: &AssignmentTable,
    membership: &Membership,
    cap: usize,
    loads: &BTreeMap<ShardId, u64>,
) -> (AssignmentTable, usize, usize) {
    let options = PlanOptions {
        max_moves_per_node: cap,
        ..PlanOptions::default()
    };
    let policy = LoadPolicy::default();
    let (mut table, mut moves, mut rounds) = (start.clone(), 0, 0);
    loop {
        let next = plan_with_load(&table, membership, &options, &policy, loads);
        if next == table || rounds > 1_000 {
            return (table, moves, rounds);
        }
        moves += next.moves.len();
        rounds += 1;
        table = complete_moves(&next, &next.moves);
    }
}

fn max_load(table: &AssignmentTable, loads: &BTreeMap<ShardId, u64>) -> f64 {
    let mut per_node: BTreeMap<&NodeName, u64> = BTreeMap::new();
    for (s, owner) in table.owners().iter().enumerate() {
        if let Some(owner) = owner {
            *per_node.entry(owner).or_insert(0) +=
                loads.get(&ShardId(s as u32)).copied().unwrap_or(0);
        }
    }
    per_node.values().copied().max().unwrap_or(0) as f64
}
