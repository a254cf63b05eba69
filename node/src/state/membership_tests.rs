//! A table that adds a node comes into force only once this node has a link to it. A command
//! routed by the new table the moment it is in force finds that link (its outbox, while it
//! connects); were the link made just after, the command would find none and its sender would
//! be answered `room_unavailable`, as a scale-up under load once showed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use shard::{AssignmentTable, NodeInfo};

use super::handoff_tests::{name, node_c};
use super::*;

/// Tables applied, alternately with and without `node-b`.
const TABLES: u64 = 400;

/// A table of `nodes` at `epoch`, every shard on `node-c`.
fn table_of(epoch: u64, shards: u32, nodes: &[&str]) -> AssignmentTable {
    let members: BTreeMap<NodeName, NodeInfo> = nodes
        .iter()
        .map(|n| (name(n), NodeInfo::new("127.0.0.1:9")))
        .collect();
    let owners = vec![Some(name("node-c")); shards as usize];
    let mut table = AssignmentTable::with_owners(owners, members).expect("valid table");
    table.epoch = epoch;
    table
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_the_table_in_force_names_always_has_a_link() {
    let (state, peers) = node_c(1000);
    let shards = state.settings.shards;
    assert!(
        state
            .apply_table(table_of(1, shards, &["node-a", "node-c"]))
            .await
    );
    // A reader on another thread, as a connection routing a command would be: every time it
    // finds `node-b` in the table in force, the link to it must be there.
    let done = Arc::new(AtomicBool::new(false));
    let (looks, misses) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reader = {
        let (state, peers) = (state.clone(), peers.clone());
        let (done, looks, misses) = (done.clone(), looks.clone(), misses.clone());
        std::thread::spawn(move || {
            let b = name("node-b");
            while !done.load(Ordering::Relaxed) {
                let before = state.table();
                let linked = peers.has_link(&b);
                // Only a look during which one table stayed in force counts: a link dropped
                // by a newer table that no longer names node-b is right.
                if before.epoch == state.table().epoch && before.nodes.contains_key(&b) {
                    looks.fetch_add(1, Ordering::Relaxed);
                    if !linked {
                        misses.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    for epoch in 2..TABLES + 2 {
        let nodes: &[&str] = if epoch % 2 == 0 {
            &["node-a", "node-b", "node-c"]
        } else {
            &["node-a", "node-c"]
        };
        assert!(state.apply_table(table_of(epoch, shards, nodes)).await);
        // Let the reader look at each table a while.
        tokio::time::sleep(std::time::Duration::from_micros(200)).await;
    }
    done.store(true, Ordering::Relaxed);
    reader.join().expect("reader thread");
    assert!(
        looks.load(Ordering::Relaxed) > 0,
        "the reader saw the tables naming node-b"
    );
    assert_eq!(
        misses.load(Ordering::Relaxed),
        0,
        "times the table in force named node-b with no link to it (of {} looks)",
        looks.load(Ordering::Relaxed)
    );
    // And once a table drops it, its link goes too.
    assert!(!peers.has_link(&name("node-b")));
}
