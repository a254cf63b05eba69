//! The follower figures: what replication 2 costs the table and the planner, and how a node's
//! failure is absorbed.
//!
//! For a few cluster sizes it plans a table from empty with replication 1 and with replication 2
//! and prints the JSON size of both and the time one replication-2 plan takes (the median of 5).
//! Then one node fails: how many of its shards are promoted at their follower (no hand-off), how
//! many are handed over from the follower's copy, and how many nodes share the promotions.
//!
//! Run with `cargo run --release -p shard --example followers`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use shard::{AssignmentTable, Membership, NodeInfo, NodeName, PlanOptions, plan};

fn membership(nodes: usize, skip: Option<usize>) -> Result<Membership, shard::ShardError> {
    let mut m = Membership::default();
    for i in (0..nodes).filter(|i| Some(*i) != skip) {
        let name = NodeName::new(format!("chat-{i}"))?;
        m.ready.insert(
            name,
            NodeInfo::new(format!("10.0.{}.{}:7001", i / 256, i % 256)),
        );
    }
    Ok(m)
}

fn main() -> Result<(), shard::ShardError> {
    println!(
        "{:>6} {:>5} | {:>10} {:>10} | {:>10} | {:>8} {:>8} {:>9}",
        "shards", "nodes", "json r=1", "json r=2", "plan r=2", "promoted", "handed", "promoters"
    );
    for (shards, nodes) in [(256, 3), (256, 8), (1024, 10), (4096, 100), (65536, 200)] {
        let empty = AssignmentTable::empty(shards);
        let m = membership(nodes, None)?;
        let one = plan(&empty, &m, &PlanOptions::default());
        let two_options = PlanOptions {
            replication: 2,
            ..PlanOptions::default()
        };
        let mut times: Vec<Duration> = Vec::new();
        let mut two = one.clone();
        for _ in 0..5 {
            let start = Instant::now();
            two = plan(&empty, &m, &two_options);
            times.push(start.elapsed());
        }
        times.sort();
        let failed = NodeName::new("chat-1")?;
        let after = plan(&two, &membership(nodes, Some(1))?, &two_options);
        let lost = two.shards_of(&failed);
        let handed = lost.iter().filter(|s| after.move_of(**s).is_some()).count();
        let promoters: BTreeSet<&NodeName> = lost
            .iter()
            .filter(|s| after.move_of(**s).is_none())
            .filter_map(|s| after.owner(*s))
            .collect();
        println!(
            "{:>6} {:>5} | {:>10} {:>10} | {:>8.1}ms | {:>8} {:>8} {:>9}",
            shards,
            nodes,
            one.to_json().len(),
            two.to_json().len(),
            times[times.len() / 2].as_secs_f64() * 1000.0,
            lost.len() - handed,
            handed,
            promoters.len()
        );
    }
    Ok(())
}
