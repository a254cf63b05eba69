//! Load-aware placement end to end: two busy rooms whose shards live on the same node make it
//! the busiest; the local driver reads the per-shard load from the nodes' `/status` and hands
//! one of the two shards to another node, while the rooms keep working.
//!
//! Needs the workspace's binaries (`cargo build --workspace --bins`), like `cluster_e2e`.

mod real_nodes;

use std::time::Duration;

use real_nodes::{Client, cluster, ws_urls};
use serde_json::json;
use shard::{AssignmentTable, RoomId, ShardId};
use tokio_util::sync::CancellationToken;

/// Two room names whose shards differ but have the same owner in `table`.
fn two_rooms_on_one_node(table: &AssignmentTable) -> (String, String, ShardId, ShardId) {
    let rooms: Vec<(String, ShardId)> = (0..10_000)
        .map(|i| {
            let name = format!("hot-{i}");
            let shard = table.shard_of(&RoomId::new(&name).expect("valid room"));
            (name, shard)
        })
        .collect();
    for (i, (a, sa)) in rooms.iter().enumerate() {
        for (b, sb) in &rooms[i + 1..] {
            if sa != sb && table.owner(*sa).is_some() && table.owner(*sa) == table.owner(*sb) {
                return (a.clone(), b.clone(), *sa, *sb);
            }
        }
    }
    panic!("no two rooms on one node");
}

/// One client in `room` sending 25 messages a second (under the rate limit) until `stop`,
/// each after the previous one's echo.
async fn chatter(url: String, room: String, stop: CancellationToken) -> u64 {
    let mut client = Client::connect(&url, &format!("{room}-talker")).await;
    client.join(&room).await;
    let mut pace = tokio::time::interval(Duration::from_millis(40));
    let mut sent = 0u64;
    while !stop.is_cancelled() {
        pace.tick().await;
        client
            .send(json!({"op": "send", "room": room, "text": "x", "cid": sent.to_string()}))
            .await;
        client.recv_op("msg").await;
        sent += 1;
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_busy_rooms_on_one_node_are_split_by_the_operator() {
    let cluster = cluster(3).await;
    let table = cluster.table();
    let (a, b, sa, sb) = two_rooms_on_one_node(&table);
    let urls = ws_urls(&cluster);
    let stop = CancellationToken::new();
    let talkers = [
        tokio::spawn(chatter(urls[0].1.clone(), a, stop.clone())),
        tokio::spawn(chatter(urls[1].1.clone(), b, stop.clone())),
    ];
    let mut tables = cluster.subscribe_table();
    let split = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let current = tables.borrow_and_update().clone();
            if current.owner(sa) != current.owner(sb) && current.moves.is_empty() {
                return current;
            }
            tables.changed().await.expect("the driver runs");
        }
    })
    .await
    .expect("the operator splits the two busy shards");
    // Only the busy shards' neighbourhood moved: every node keeps 42..=44 shards of 128.
    assert!(
        split.counts().values().all(|&c| (42..=44).contains(&c)),
        "{:?}",
        split.counts()
    );
    stop.cancel();
    for talker in talkers {
        let sent = tokio::time::timeout(Duration::from_secs(30), talker)
            .await
            .expect("talkers stop")
            .expect("talker task");
        assert!(sent > 0);
    }
    cluster.shutdown().await.expect("clean shutdown");
}
