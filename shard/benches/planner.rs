//! Planner benchmarks: 4,096 shards over 100 nodes.
fn main() {}
