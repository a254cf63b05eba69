//! Two copies of every room, with real nodes and peer links on loopback: an owner that leaves
//! loses no acknowledged message, the next follower catches up without pausing the room, and
//! an owner that lost its role can no longer get a message acknowledged.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use shard::{AssignmentTable, Membership, NodeName, PlanOptions, RoomId};
use support::Client;
use support::cluster::{ClusterNode, TableServer, wait_applied, wait_linked};

const SHARDS: u32 = 16;

fn two_copies() -> PlanOptions {
    PlanOptions {
        replication: 2,
        ..PlanOptions::default()
    }
}

/// The next table for `ready`, with a follower for every shard.
fn plan(current: &AssignmentTable, ready: &[&ClusterNode]) -> AssignmentTable {
    let membership = Membership {
        ready: ready.iter().map(|n| (n.name.clone(), n.info())).collect(),
        draining: Default::default(),
    };
    shard::plan(current, &membership, &two_copies())
}

fn room_id(room: &str) -> RoomId {
    RoomId::new(room).expect("valid room")
}

/// A room whose shard `owner` owns in `table`.
fn room_owned_by(table: &AssignmentTable, owner: &NodeName) -> String {
    (0..10_000)
        .map(|i| format!("room-{i}"))
        .find(|r| table.owner_of_room(&room_id(r)) == Some(owner))
        .expect("a room owned by the node")
}

/// Send `count` messages from `client`, each waiting for its echo (its acknowledgement);
/// returns the acknowledged seqs.
async fn say_acknowledged(client: &mut Client, room: &str, from: u64, count: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    for k in from..from + count {
        let cid = format!("c{k}");
        client.say(room, &format!("m{k}"), &cid).await;
        loop {
            let frame = client.recv().await;
            if frame["cid"] == cid.as_str() {
                assert_eq!(frame["op"], "msg", "acknowledged, not refused: {frame}");
                seqs.push(frame["seq"].as_u64().expect("seq"));
                break;
            }
        }
    }
    seqs
}

fn history_seqs(joined: &Value) -> Vec<u64> {
    joined["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

/// Wait until `node`'s `/status` says it holds a live copy of every shard the table says it
/// follows.
async fn wait_caught_up(node: &ClusterNode, table: &AssignmentTable) {
    let want = table.followed_by(&node.name).len() as u32;
    assert!(want > 0, "{} follows some shards", node.name);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = node.state.status();
        if status.following == want && status.catching_up == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} did not catch up: {} live, {} catching up, {want} followed",
            node.name,
            status.following,
            status.catching_up
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_that_leave_one_after_the_other_lose_no_acknowledged_message() {
    let server = TableServer::start(SHARDS).await;
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(Some(
            ClusterNode::start(&format!("node-{i}"), &server.url, SHARDS, &[]).await,
        ));
    }
    let live = |nodes: &[Option<ClusterNode>]| -> Vec<usize> {
        (0..nodes.len()).filter(|&i| nodes[i].is_some()).collect()
    };
    let refs: Vec<&ClusterNode> = nodes.iter().flatten().collect();
    let table = plan(&server.current(), &refs);
    assert!(
        (0..SHARDS).all(|s| table.follower(shard::ShardId(s)).is_some()),
        "every shard has a follower"
    );
    server.publish(table.clone());
    wait_applied(&refs, table.epoch).await;
    wait_linked(&refs).await;
    for node in &refs {
        wait_caught_up(node, &table).await;
    }

    let first_owner = nodes[0].as_ref().expect("node").name.clone();
    let room = room_owned_by(&table, &first_owner);
    let follower = table
        .follower(table.shard_of(&room_id(&room)))
        .expect("a follower")
        .clone();
    // The client sits on the third node, which stays to the end.
    let third = (0..3)
        .find(|&i| {
            let name = &nodes[i].as_ref().expect("node").name;
            *name != first_owner && *name != follower
        })
        .expect("a third node");
    let mut ann = nodes[third].as_ref().expect("node").client("ann").await;
    ann.join(&room).await;
    let mut acknowledged = say_acknowledged(&mut ann, &room, 1, 20).await;

    // The owner goes; the table makes its follower the owner, with no hand-off.
    let owner_index = 0;
    nodes[owner_index].take().expect("node").stop().await;
    let refs: Vec<&ClusterNode> = nodes.iter().flatten().collect();
    let after = plan(&server.current(), &refs);
    let shard = after.shard_of(&room_id(&room));
    assert_eq!(
        after.owner(shard),
        Some(&follower),
        "the follower is promoted"
    );
    assert!(
        after.move_of(shard).is_none(),
        "no hand-off from a node that is gone"
    );
    server.publish(after.clone());
    wait_applied(&refs, after.epoch).await;

    let joined = ann.join_since(&room, 0).await;
    assert_eq!(
        history_seqs(&joined),
        acknowledged,
        "every acknowledged message is there"
    );
    acknowledged.extend(say_acknowledged(&mut ann, &room, 21, 5).await);
    assert_eq!(
        acknowledged,
        (1..=25).collect::<Vec<u64>>(),
        "no gap, no repeat"
    );

    // The remaining node became the follower and caught up while the room went on talking;
    // now the new owner goes too, and that copy serves the room.
    wait_caught_up(nodes[third].as_ref().expect("node"), &after).await;
    let promoted_node = nodes
        .iter()
        .flatten()
        .find(|n| n.name == follower)
        .expect("the promoted node");
    assert!(
        promoted_node.state.metrics.rooms_sent_whole.get() >= 1,
        "the promoted owner sent its new follower the room whole"
    );
    let promoted = live(&nodes)
        .into_iter()
        .find(|&i| nodes[i].as_ref().expect("node").name == follower)
        .expect("the promoted node");
    nodes[promoted].take().expect("node").stop().await;
    let refs: Vec<&ClusterNode> = nodes.iter().flatten().collect();
    let alone = plan(&server.current(), &refs);
    server.publish(alone.clone());
    wait_applied(&refs, alone.epoch).await;
    let joined = ann.join_since(&room, 0).await;
    assert_eq!(history_seqs(&joined), acknowledged);
    assert_eq!(say_acknowledged(&mut ann, &room, 26, 1).await, [26]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_lost_its_role_cannot_get_a_message_acknowledged() {
    // The old owner reads its tables from a server of its own, which never tells it that it
    // lost the shard: it stands for a partitioned or slow pod.
    let stale = TableServer::start(SHARDS).await;
    let server = TableServer::start(SHARDS).await;
    let old_owner = ClusterNode::start("node-0", &stale.url, SHARDS, &[]).await;
    let others = [
        ClusterNode::start("node-1", &server.url, SHARDS, &[]).await,
        ClusterNode::start("node-2", &server.url, SHARDS, &[]).await,
    ];
    let all = [&old_owner, &others[0], &others[1]];
    let table = plan(&server.current(), &all);
    stale.publish(table.clone());
    server.publish(table.clone());
    wait_applied(&all, table.epoch).await;
    wait_linked(&all).await;

    let room = room_owned_by(&table, &old_owner.name);
    let shard = table.shard_of(&room_id(&room));
    let follower = table.follower(shard).expect("a follower").clone();
    let mut ann = old_owner.client("ann").await;
    ann.join(&room).await;
    assert_eq!(say_acknowledged(&mut ann, &room, 1, 3).await, [1, 2, 3]);

    // The others' table gives the shard to its follower (as after a failover); node-0 still
    // believes it owns it.
    let mut owners = table.owners().to_vec();
    let mut followers = table.followers().to_vec();
    owners[shard.0 as usize] = Some(follower.clone());
    followers[shard.0 as usize] = Some(old_owner.name.clone());
    let nodes: BTreeMap<_, _> = table.nodes.clone();
    let mut moved = AssignmentTable::with_roles(owners, followers, nodes).expect("valid table");
    moved.epoch = table.epoch + 1;
    server.publish(moved.clone());
    wait_applied(&[&others[0], &others[1]], moved.epoch).await;

    ann.say(&room, "from the past", "late").await;
    let answer = loop {
        let frame = ann.recv().await;
        if frame["cid"] == "late" {
            break frame;
        }
    };
    assert_eq!(answer["op"], "error", "not acknowledged: {answer}");
    assert_eq!(answer["code"], "room_unavailable");
    let fenced: u64 = others
        .iter()
        .map(|n| n.state.metrics.replication_fenced.get())
        .sum();
    assert!(fenced >= 1, "the follower refused the change");

    // The refused message exists nowhere: the room's history on its new owner (promoted with
    // no copy of its own yet, it started the shard as the follower had it) and on the old
    // owner, rolled back, both end at seq 3.
    let on_old = ann.join_since(&room, 0).await;
    assert_eq!(
        history_seqs(&on_old),
        [1, 2, 3],
        "rolled back on the old owner"
    );
    let new_owner = others
        .iter()
        .find(|n| n.name == follower)
        .expect("the new owner");
    let mut bob = new_owner.client("bob").await;
    bob.send(json!({"op": "join", "room": room, "since": 0}))
        .await;
    let joined = bob.recv_op("joined").await;
    assert_eq!(history_seqs(&joined), [1, 2, 3]);
    assert_eq!(joined["seq"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_asked_to_stop_stays_until_its_shards_are_followed_elsewhere() {
    // node-2 reads its tables from a server of its own, so the test decides when it learns
    // that it follows node-0's shards.
    let server = TableServer::start(SHARDS).await;
    let late = TableServer::start(SHARDS).await;
    let quick_exit = ["--exit-drain-timeout", "100ms"];
    let a = ClusterNode::start("node-0", &server.url, SHARDS, &quick_exit).await;
    let mut b = ClusterNode::start("node-1", &server.url, SHARDS, &[]).await;
    let c = ClusterNode::start("node-2", &late.url, SHARDS, &[]).await;

    // node-1 owns nothing and follows every shard; node-0 and node-2 own half each.
    let owners = (0..SHARDS)
        .map(|s| Some(if s % 2 == 0 { &a.name } else { &c.name }.clone()))
        .collect();
    let followers = vec![Some(b.name.clone()); SHARDS as usize];
    let infos: BTreeMap<NodeName, shard::NodeInfo> = [&a, &b, &c]
        .iter()
        .map(|n| (n.name.clone(), n.info()))
        .collect();
    let mut first =
        AssignmentTable::with_roles(owners, followers, infos.clone()).expect("a valid table");
    first.epoch = 1;
    server.publish(first.clone());
    late.publish(first.clone());
    wait_applied(&[&a, &b, &c], first.epoch).await;
    wait_linked(&[&a, &b, &c]).await;
    wait_caught_up(&b, &first).await;
    let room = room_owned_by(&first, &a.name);
    let mut ann = a.client("ann").await;
    ann.join(&room).await;
    let acknowledged = say_acknowledged(&mut ann, &room, 1, 5).await;

    // node-1 is asked to stop. It owns nothing, so it has nothing to hand off; the driver marks
    // it draining, and the shards it followed get the other owner as follower.
    b.request_stop();
    let membership = Membership {
        ready: infos,
        draining: [b.name.clone()].into(),
    };
    let second = shard::plan(&first, &membership, &two_copies());
    assert!(second.moves.is_empty(), "no owner changes: {second:?}");
    assert!(second.followed_by(&b.name).is_empty());
    assert_eq!(second.followed_by(&c.name), first.shards_of(&a.name));
    server.publish(second.clone());
    wait_applied(&[&a, &b], second.epoch).await;

    // node-2 has not applied that table, so node-0's shards have no live copy but node-0's own:
    // node-1 keeps its copies and stays.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !b.exited(),
        "node-1 stays while its followed shards have no follower that caught up"
    );
    assert!(b.state.status().terminating);

    late.publish(second.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !b.exited() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node-1 exits once the new followers caught up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // When it left, every shard had a live copy on the other node, and nothing changed since.
    for (node, owner) in [(&a, &c), (&c, &a)] {
        let status = node.state.status();
        assert_eq!(status.epoch, second.epoch);
        assert_eq!(status.catching_up, 0, "{} caught up", node.name);
        assert_eq!(
            status.following as usize,
            second.shards_of(&owner.name).len(),
            "{} holds a live copy of every shard {} owns",
            node.name,
            owner.name
        );
    }

    // That copy is whole: node-0 goes without handing anything off (its drain times out at
    // once), and node-2, promoted from its copy, serves the room's history.
    a.stop().await;
    let third = shard::plan(
        &second,
        &Membership {
            ready: [(c.name.clone(), c.info())].into(),
            draining: Default::default(),
        },
        &two_copies(),
    );
    assert!(third.moves.is_empty(), "node-2 is promoted, nothing moves");
    server.publish(third.clone());
    late.publish(third.clone());
    wait_applied(&[&c], third.epoch).await;
    let mut bob = c.client("bob").await;
    bob.send(json!({"op": "join", "room": room, "since": 0}))
        .await;
    let joined = bob.recv_op("joined").await;
    assert_eq!(history_seqs(&joined), acknowledged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_named_again_after_a_table_its_owner_skipped_gets_the_rooms_again() {
    // node-0 (the owner) reads its tables from a server of its own, so it can skip a table the
    // others apply, as a node does when tables come faster than it fetches them.
    let owner_server = TableServer::start(SHARDS).await;
    let server = TableServer::start(SHARDS).await;
    let quick_exit = ["--exit-drain-timeout", "100ms"];
    let mut owner =
        Some(ClusterNode::start("node-0", &owner_server.url, SHARDS, &quick_exit).await);
    let b = ClusterNode::start("node-1", &server.url, SHARDS, &[]).await;
    let c = ClusterNode::start("node-2", &server.url, SHARDS, &[]).await;
    let a = owner.as_ref().expect("owner");
    let infos: BTreeMap<NodeName, shard::NodeInfo> = [a, &b, &c]
        .iter()
        .map(|n| (n.name.clone(), n.info()))
        .collect();
    let table = |epoch: u64, follower: &NodeName| {
        let owners = vec![Some(a.name.clone()); SHARDS as usize];
        let followers = vec![Some(follower.clone()); SHARDS as usize];
        let mut t = AssignmentTable::with_roles(owners, followers, infos.clone()).expect("valid");
        t.epoch = epoch;
        t
    };
    let first = table(1, &b.name);
    owner_server.publish(first.clone());
    server.publish(first.clone());
    wait_applied(&[a, &b, &c], 1).await;
    wait_linked(&[a, &b, &c]).await;
    wait_caught_up(&b, &first).await;
    let room = room_owned_by(&first, &a.name);
    let mut ann = c.client("ann").await;
    ann.join(&room).await;
    let mut acknowledged = say_acknowledged(&mut ann, &room, 1, 5).await;

    // node-1 and node-2 apply a table that moves every copy to node-2; node-1 drops its
    // copies. The owner never sees it.
    server.publish(table(2, &c.name));
    wait_applied(&[&b, &c], 2).await;
    assert_eq!(b.state.status().following, 0, "node-1 dropped its copies");
    // The next table names node-1 again: for the owner nothing changed (1 -> 3).
    let third = table(3, &b.name);
    owner_server.publish(third.clone());
    server.publish(third.clone());
    wait_applied(&[a, &b, &c], 3).await;
    // node-1 asks the owner for the shards it holds no copy of, and gets them.
    wait_caught_up(&b, &third).await;
    assert!(
        a.state.metrics.copies_resent.get() >= 1,
        "the owner sent them again"
    );
    acknowledged.extend(say_acknowledged(&mut ann, &room, 6, 5).await);

    // The owner goes: node-1's copy serves every acknowledged message.
    owner.take().expect("owner").stop().await;
    let mut fourth = AssignmentTable::with_roles(
        vec![Some(b.name.clone()); SHARDS as usize],
        vec![Some(c.name.clone()); SHARDS as usize],
        infos.clone(),
    )
    .expect("valid");
    fourth.epoch = 4;
    server.publish(fourth.clone());
    wait_applied(&[&b, &c], 4).await;
    let joined = ann.join_since(&room, 0).await;
    assert_eq!(history_seqs(&joined), acknowledged);
}
