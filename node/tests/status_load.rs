//! `/status` reports the load of the shards a node owns, from real client traffic.

mod support;

use shard::{RoomId, shard_of};
use support::TestNode;

#[tokio::test]
async fn status_reports_members_and_deliveries_of_the_shards_with_traffic_only() {
    let node = TestNode::start(&["--shards", "64"]).await;
    // The first reading is the base the rates are measured from.
    assert!(node.state.status().load.shards.is_empty());
    let mut ann = node.client("ann").await;
    let mut bob = node.client("bob").await;
    ann.join("lobby").await;
    bob.join("lobby").await;
    for i in 0..3 {
        ann.say("lobby", &format!("hi {i}"), &format!("c{i}")).await;
    }
    for _ in 0..3 {
        bob.recv_op("msg").await;
    }
    let shard = shard_of(&RoomId::new("lobby").expect("valid room"), 64);
    let status = node.state.status();
    let loads = &status.load.shards;
    assert_eq!(loads.len(), 1, "only the lobby's shard has load: {loads:?}");
    assert_eq!(loads[0].shard, shard.0);
    assert_eq!(loads[0].members, 2);
    let text = serde_json::to_string(&status).expect("serialise");
    assert!(text.contains("\"shards\":[{\"shard\":"), "{text}");
}
