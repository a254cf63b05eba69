//! Nodes in a cluster, in one process with real sockets: routing to owners, per-node fan-out,
//! hand-off under load, peer authentication.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::Client;
use support::cluster::{ClusterNode, SECRET, TableServer, plan, settle, wait_applied, wait_linked};
use tokio_tungstenite::tungstenite::Message;

const SHARDS: u32 = 64;

/// The sum of every sample in a `/metrics` scrape whose series starts with `series`.
fn sample_sum(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn three_nodes(server: &TableServer) -> Vec<ClusterNode> {
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(ClusterNode::start(&format!("node-{i}"), &server.url, SHARDS, &[]).await);
    }
    let refs: Vec<&ClusterNode> = nodes.iter().collect();
    let table = plan(&server.current(), &refs, &[]);
    let epoch = table.epoch;
    server.publish(table);
    wait_applied(&refs, epoch).await;
    wait_linked(&refs).await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_every_node_get_every_message_in_order_whoever_owns_the_room() {
    let server = TableServer::start(SHARDS).await;
    let nodes = three_nodes(&server).await;
    let rooms: Vec<String> = (0..6).map(|i| format!("room-{i}")).collect();
    let owners: HashSet<String> = rooms
        .iter()
        .filter_map(|r| {
            server
                .current()
                .owner_of_room(&shard::RoomId::new(r.as_str()).expect("room"))
                .map(|o| o.to_string())
        })
        .collect();
    assert!(
        owners.len() >= 2,
        "the rooms are spread over several owners: {owners:?}"
    );
    let mut clients = Vec::new();
    for (i, room) in rooms.iter().enumerate() {
        for (n, node) in nodes.iter().enumerate() {
            let mut client = node.client(&format!("u{i}-{n}")).await;
            client.join(room).await;
            clients.push((room.clone(), client));
        }
    }
    for (room, client) in clients.iter_mut() {
        for k in 0..4 {
            client.say(room, &format!("{k}"), &format!("c{k}")).await;
        }
    }
    for (room, client) in clients.iter_mut() {
        let mut seqs = Vec::new();
        let mut ids = HashSet::new();
        while seqs.len() < 12 {
            let frame = client.recv().await;
            if frame["op"] == "msg" {
                assert_eq!(frame["room"], room.as_str());
                seqs.push(frame["seq"].as_u64().expect("seq"));
                assert!(ids.insert(frame["id"].as_str().expect("id").to_owned()));
            }
        }
        assert_eq!(seqs, (1..=12).collect::<Vec<u64>>());
    }
    // Fan-out is per node: each owner sent one event per message to each other node. A node
    // counts a delivery just after writing it to the socket, so the last count may trail the
    // client's read by a moment: wait for it (bounded), then compare.
    let delivered = || -> u64 {
        nodes
            .iter()
            .map(|n| n.state.metrics.messages_delivered.get())
            .sum()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while delivered() < 6 * 3 * 12 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(delivered(), 6 * 3 * 12);
    // Every message an owner accepted was timed from its room receiving it to its fan-out, and
    // every node is linked to both others.
    let mut accepted = 0.0;
    for node in &nodes {
        let (_, text) = support::http_get(node.addr, "/metrics").await;
        let here = sample_sum(&text, "roomshard_messages_in_total");
        assert_eq!(
            sample_sum(&text, "roomshard_send_fanout_seconds_count"),
            here
        );
        assert!(text.contains("roomshard_peers_connected 2\n"), "{text}");
        assert!(text.contains("roomshard_peers_expected 2\n"), "{text}");
        accepted += here;
    }
    assert_eq!(accepted, 6.0 * 3.0 * 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_on_one_node_sees_history_and_presence_from_the_others() {
    let server = TableServer::start(SHARDS).await;
    let nodes = three_nodes(&server).await;
    let mut ann = nodes[0].client("ann").await;
    ann.join("lobby").await;
    ann.say("lobby", "hello", "h").await;
    ann.recv_op("msg").await;
    let mut bob = nodes[2].client("bob").await;
    let joined = bob.join("lobby").await;
    assert_eq!(joined["members"], json!(["ann", "bob"]));
    assert_eq!(joined["history"][0]["text"], "hello");
    assert_eq!(ann.recv_op("presence").await["user"], "bob");
}

/// A client that keeps sending to its room and records what it sees.
struct Traffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<u64>, usize, Vec<String>)>,
}

fn keep_talking(mut client: Client, room: String, pause: Duration) -> Traffic {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let mut seqs = Vec::new();
        let mut errors = Vec::new();
        let mut sent = 0usize;
        while !flag.load(Ordering::Relaxed) {
            client.say(&room, "tick", &sent.to_string()).await;
            sent += 1;
            let deadline = tokio::time::Instant::now() + pause;
            while let Ok(frame) = tokio::time::timeout_at(deadline, client.recv()).await {
                match frame["op"].as_str() {
                    Some("msg") => seqs.push(frame["seq"].as_u64().unwrap_or(0)),
                    Some("error") => errors.push(frame["code"].as_str().unwrap_or("").to_owned()),
                    _ => {}
                }
            }
        }
        // Drain what is still on its way.
        while let Some(frame) = client.try_recv(Duration::from_millis(500)).await {
            match frame["op"].as_str() {
                Some("msg") => seqs.push(frame["seq"].as_u64().unwrap_or(0)),
                Some("error") => errors.push(frame["code"].as_str().unwrap_or("").to_owned()),
                _ => {}
            }
        }
        (seqs, sent, errors)
    });
    Traffic { stop, task }
}

/// Stop every talker and check what each saw: no error, and every seq from 1 with no gap or
/// repeat. Returns the number of messages seen.
async fn stop_and_check(traffic: Vec<Traffic>, min_sent: usize, during: &str) -> usize {
    for t in &traffic {
        t.stop.store(true, Ordering::Relaxed);
    }
    let mut total = 0;
    for t in traffic {
        let (seqs, sent, errors) = t.task.await.expect("traffic task");
        assert!(errors.is_empty(), "no errors during {during}: {errors:?}");
        assert!(sent > min_sent, "the talker kept talking during {during}");
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "no gap and no repeat during {during}");
        total += seqs.len();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_handed_off_under_load_lose_and_repeat_nothing() {
    let server = TableServer::start(SHARDS).await;
    let mut nodes = three_nodes(&server).await;
    // Clients on nodes 0 and 1 talk in 20 rooms while node-3 joins and node-1 is drained.
    let mut talkers = Vec::new();
    for r in 0..20 {
        let room = format!("busy-{r}");
        for n in [0, 1] {
            let mut client = nodes[n].client(&format!("t{r}-{n}")).await;
            client.join(&room).await;
            talkers.push((client, room.clone()));
        }
    }
    // Everyone is in before anyone talks, so every member sees every seq from 1.
    let traffic: Vec<Traffic> = talkers
        .into_iter()
        .map(|(client, room)| keep_talking(client, room, Duration::from_millis(20)))
        .collect();
    let owners = |table: &shard::AssignmentTable| -> Vec<Option<String>> {
        (0..20)
            .map(|r| {
                let room = shard::RoomId::new(format!("busy-{r}")).expect("room");
                table.owner_of_room(&room).map(|o| o.to_string())
            })
            .collect()
    };
    let before = owners(&server.current());
    tokio::time::sleep(Duration::from_millis(300)).await;
    nodes.push(ClusterNode::start("node-3", &server.url, SHARDS, &[]).await);
    let refs: Vec<&ClusterNode> = nodes.iter().collect();
    let grown = plan(&server.current(), &refs, &[]);
    assert!(!grown.moves.is_empty(), "adding a node moves shards");
    let mut handed = grown.moves.len();
    server.publish(grown);
    settle(&server, &refs).await;
    let shrinking = plan(&server.current(), &refs, &["node-2"]);
    assert!(shrinking.moves.iter().all(|m| m.from.as_str() == "node-2"));
    handed += shrinking.moves.len();
    server.publish(shrinking);
    settle(&server, &refs).await;
    // Each completed hand-off was timed once, by its new owner, under its shard's label.
    let mut timed = 0.0;
    for node in &nodes {
        let (_, text) = support::http_get(node.addr, "/metrics").await;
        timed += sample_sum(&text, "roomshard_handoff_duration_seconds_count{shard=");
    }
    assert_eq!(timed, handed as f64);
    assert!(
        server.current().shards_of(&nodes[2].name).is_empty(),
        "the drained node owns nothing"
    );
    let after = owners(&server.current());
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    assert!(
        moved >= 3,
        "several busy rooms changed owner ({moved} of 20)"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let total = stop_and_check(traffic, 5, "planned moves").await;
    assert!(total > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_connection_without_the_secret_is_refused() {
    let server = TableServer::start(SHARDS).await;
    let nodes = three_nodes(&server).await;
    let url = format!("ws://{}/peer", nodes[0].peer_addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("upgrade");
    let challenge = match ws.next().await {
        Some(Ok(Message::Binary(bytes))) => {
            node::peer::wire::PeerFrame::decode(&bytes).expect("challenge")
        }
        other => panic!("expected a challenge, got {other:?}"),
    };
    let node::peer::wire::PeerFrame::Challenge { nonce, .. } = challenge else {
        panic!("not a challenge")
    };
    let forger = shard::NodeName::new("node-9").expect("name");
    let proof = node::peer::wire::PeerFrame::Proof {
        node: forger.clone(),
        incarnation: 1,
        mac: node::peer::handshake::sign(b"wrong secret", "dialer", &nonce, &forger),
        nonce: "n".into(),
        last_received: 0,
    };
    ws.send(Message::Binary(proof.encode().into()))
        .await
        .expect("send proof");
    match tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("answer in time")
    {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1008);
            assert!(frame.reason.contains("authentication"), "{}", frame.reason);
        }
        other => panic!("expected a 1008 close, got {other:?}"),
    }
    // The real secret passes the same check.
    assert!(node::peer::handshake::verify(
        SECRET,
        "dialer",
        "x",
        &forger,
        &node::peer::handshake::sign(SECRET, "dialer", "x", &forger)
    ));
    // And a browser-style client cannot open it as a chat socket either: /peer is not on the client port.
    let (code, _) = support::http_get(nodes[0].addr, "/peer").await;
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_connections_that_drop_and_come_back_lose_and_repeat_nothing() {
    let server = TableServer::start(SHARDS).await;
    let nodes = three_nodes(&server).await;
    let refs: Vec<&ClusterNode> = nodes.iter().collect();
    let mut talkers = Vec::new();
    for r in 0..12 {
        let room = format!("blip-{r}");
        for (n, node) in nodes.iter().enumerate() {
            let mut client = node.client(&format!("b{r}-{n}")).await;
            client.join(&room).await;
            talkers.push((client, room.clone()));
        }
    }
    let traffic: Vec<Traffic> = talkers
        .into_iter()
        .map(|(client, room)| keep_talking(client, room, Duration::from_millis(15)))
        .collect();
    let sessions = |nodes: &[ClusterNode]| -> u64 {
        nodes
            .iter()
            .filter_map(|n| n.state.peers.as_ref())
            .map(|p| p.sessions())
            .sum()
    };
    let sessions_before = sessions(&nodes);
    // Cut every link a few times while messages cross them.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        for node in &nodes {
            if let Some(peers) = &node.state.peers {
                for other in &nodes {
                    if other.name != node.name {
                        peers.reset(&other.name);
                    }
                }
            }
        }
    }
    wait_linked(&refs).await;
    let reconnects = sessions(&nodes) - sessions_before;
    assert!(
        reconnects >= 15,
        "links really dropped and came back ({reconnects} new sessions)"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_and_check(traffic, 10, "link resets").await;
    let resent: u64 = nodes.iter().map(|n| n.state.metrics.peer_drops.get()).sum();
    assert_eq!(resent, 0, "nothing was dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_that_times_out_answers_room_unavailable_never_silence() {
    let server = TableServer::start(SHARDS).await;
    let flags = ["--handoff-timeout", "300ms"];
    let nodes = [
        ClusterNode::start("node-0", &server.url, SHARDS, &flags).await,
        ClusterNode::start("node-1", &server.url, SHARDS, &flags).await,
    ];
    // node-9 is in the table but never answers: its shards' snapshots will never come.
    let ghost = shard::NodeName::new("node-9").expect("name");
    let mut ready: std::collections::BTreeMap<_, _> =
        nodes.iter().map(|n| (n.name.clone(), n.info())).collect();
    ready.insert(ghost.clone(), shard::NodeInfo::new("127.0.0.1:9"));
    let with_ghost = shard::Membership {
        ready,
        draining: Default::default(),
    };
    let first = shard::plan(
        &server.current(),
        &with_ghost,
        &shard::PlanOptions::default(),
    );
    let draining = shard::Membership {
        draining: [ghost.clone()].into_iter().collect(),
        ..with_ghost
    };
    let second = shard::plan(&first, &draining, &shard::PlanOptions::default());
    let moving = second
        .moves
        .iter()
        .find(|m| m.from == ghost && m.to == nodes[1].name)
        .expect("a shard moves from the ghost to node-1")
        .shard;
    let room = (0..10_000)
        .map(|i| format!("stuck-{i}"))
        .find(|r| second.shard_of(&shard::RoomId::new(r.as_str()).expect("room")) == moving)
        .expect("a room in the moving shard");
    server.publish(first);
    server.publish(second.clone());
    let refs: Vec<&ClusterNode> = nodes.iter().collect();
    wait_applied(&refs, second.epoch).await;
    let mut ann = nodes[0].client("ann").await;
    ann.send(json!({"op": "join", "room": room})).await;
    let started = std::time::Instant::now();
    let answer = ann.recv().await;
    assert_eq!(
        answer["op"], "error",
        "the join is answered, not dropped: {answer}"
    );
    assert_eq!(answer["code"], "room_unavailable");
    assert_eq!(answer["room"], room.as_str());
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "it waited for the snapshot first"
    );
    // While the hand-off stays overdue, new requests are answered at once.
    ann.send(json!({"op": "send", "room": room, "text": "x", "cid": "late"}))
        .await;
    let again = ann.recv().await;
    assert_eq!(
        (again["code"].as_str(), again["cid"].as_str()),
        (Some("room_unavailable"), Some("late"))
    );
    // And the stuck hand-offs stay visible in /status, which is how the operator reports them.
    let expected = second
        .moves
        .iter()
        .filter(|m| m.to == nodes[1].name)
        .count();
    assert_eq!(nodes[1].state.status().moves_in_flight as usize, expected);
}
