//! Load-aware placement's input: the per-shard loads the nodes report, merged for the planner.
//!
//! Each node reports, in its `/status`, the load of the shards it owns ([`shard::ShardLoad`]).
//! [`shard_loads`] turns the reports of the running pods into one map, shard -> weight, which
//! [`decide`](crate::decide::decide) hands to [`shard::plan_with_load`]. While a shard is handed
//! off both ends may report it; the larger figure counts, so a shard that just moved does not
//! look cold because its new owner has measured it only briefly. Reports of pods whose process
//! is gone are ignored: they describe load that is no longer anywhere.

use std::collections::BTreeMap;

use shard::ShardId;

use crate::decide::PodView;

/// Shard -> load weight ([`shard::ShardLoad::weight`]) from the running pods' last reports;
/// shards nobody reports are absent (the planner reads them as idle).
pub fn shard_loads(pods: &[PodView]) -> BTreeMap<ShardId, u64> {
    let mut loads: BTreeMap<ShardId, u64> = BTreeMap::new();
    for report in pods
        .iter()
        .filter(|p| p.running)
        .filter_map(|p| p.report.as_ref())
    {
        for shard in &report.load.shards {
            let weight = loads.entry(ShardId(shard.shard)).or_insert(0);
            *weight = (*weight).max(shard.weight());
        }
    }
    loads
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Report;
    use shard::{NodeLoad, NodeName, ShardLoad};

    fn pod(name: &str, running: bool, shards: &[(u32, u64, u64)]) -> PodView {
        PodView {
            name: NodeName::new(name).expect("valid name"),
            running,
            ready: running,
            info: None,
            report: Some(Report {
                load: NodeLoad {
                    shards: shards
                        .iter()
                        .map(|&(shard, deliveries_per_sec, members)| ShardLoad {
                            shard,
                            deliveries_per_sec,
                            members,
                        })
                        .collect(),
                    ..NodeLoad::default()
                },
                ..Report::default()
            }),
            terminating: false,
        }
    }

    #[test]
    fn loads_merge_reports_taking_the_larger_figure_and_skip_pods_that_are_gone() {
        let pods = [
            pod("chat-0", true, &[(1, 100, 5), (2, 10, 0)]),
            // Shard 2 is being handed off to chat-1, which has measured more already.
            pod("chat-1", true, &[(2, 40, 2)]),
            pod("chat-2", false, &[(3, 1_000, 0)]),
        ];
        let loads = shard_loads(&pods);
        assert_eq!(
            loads.into_iter().collect::<Vec<_>>(),
            vec![(ShardId(1), 105), (ShardId(2), 42)]
        );
    }
}
