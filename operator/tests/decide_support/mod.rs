//! Shared inputs for tests of the pure decision step ([`operator::decide`]): the options a
//! cluster of `node-N` pods is decided with, and the names of those pods.

#![allow(dead_code)]

use std::time::Duration;

use operator::decide::{DecideOptions, pod_name};
use shard::{LoadPolicy, NodeName, PlanOptions};

/// The test cluster's options: default planning and balancing, a 30 s drain timeout, pods
/// named `node-N`, a 10 s initial grace.
pub fn options() -> DecideOptions {
    DecideOptions {
        plan: PlanOptions::default(),
        balance: LoadPolicy::default(),
        drain_timeout: Duration::from_secs(30),
        pod_prefix: "node".into(),
        initial_grace: Duration::from_secs(10),
    }
}

/// The name of pod `i`, `node-{i}`.
pub fn name(i: u32) -> NodeName {
    pod_name("node", i).expect("valid pod name")
}
