//! Protocol v1 against a real node over loopback: every op, every error code, identity.

mod support;

use std::time::Duration;

use node::auth::Authenticator;
use serde_json::json;
use support::{Client, Ending, TestNode};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn ping_is_answered_with_pong_carrying_the_cid() {
    let node = TestNode::start(&[]).await;
    let mut ann = node.client("ann").await;
    let pong = ann.ping("p-1").await;
    assert_eq!(pong, json!({"op": "pong", "cid": "p-1"}));
    ann.send(json!({"op": "ping"})).await;
    assert_eq!(ann.recv().await, json!({"op": "pong"}));
}

#[tokio::test]
async fn join_answers_with_seq_members_and_history() {
    let node = TestNode::start(&[]).await;
    let mut ann = node.client("ann").await;
    let joined = ann.join("lobby").await;
    assert_eq!(joined["room"], "lobby");
    assert_eq!(joined["seq"], 0);
    assert_eq!(joined["members"], json!(["ann"]));
    assert_eq!(joined["history"], json!([]));
    ann.say("lobby", "first", "c1").await;
    ann.recv_op("msg").await;
    let mut bob = node.client("bob").await;
    let joined = bob.join("lobby").await;
    assert_eq!(joined["seq"], 1);
    assert_eq!(joined["members"], json!(["ann", "bob"]));
    assert_eq!(joined["history"][0]["text"], "first");
}

#[tokio::test]
async fn a_message_reaches_every_member_with_seq_id_ts_and_the_senders_cid() {
    let node = TestNode::start(&[]).await;
    let mut ann = node.client("ann").await;
    let mut bob = node.client("bob").await;
    ann.join("r").await;
    bob.join("r").await;
    ann.recv_op("presence").await;
    ann.say("r", "hello", "c-42").await;
    for client in [&mut ann, &mut bob] {
        let msg = client.recv_op("msg").await;
        assert_eq!(msg["room"], "r");
        assert_eq!(msg["seq"], 1);
        assert_eq!(msg["user"], "ann");
        assert_eq!(msg["text"], "hello");
        assert_eq!(msg["cid"], "c-42");
        let id: u64 = msg["id"]
            .as_str()
            .expect("id is a string")
            .parse()
            .expect("decimal id");
        assert!(id > 0);
        assert!(msg["ts"].as_u64().expect("ts") > 1_700_000_000_000);
    }
}

#[tokio::test]
async fn presence_tells_other_members_who_joined_and_left() {
    let node = TestNode::start(&[]).await;
    let mut ann = node.client("ann").await;
    ann.join("r").await;
    let mut bob = node.client("bob").await;
    bob.join("r").await;
    assert_eq!(
        ann.recv().await,
        json!({"op": "presence", "room": "r", "user": "bob", "event": "join"})
    );
    bob.send(json!({"op": "leave", "room": "r"})).await;
    assert_eq!(bob.recv().await, json!({"op": "left", "room": "r"}));
    assert_eq!(
        ann.recv().await,
        json!({"op": "presence", "room": "r", "user": "bob", "event": "leave"})
    );
    let mut cy = node.client("cy").await;
    cy.join("r").await;
    ann.recv_op("presence").await;
    drop(cy);
    let gone = ann.recv().await;
    assert_eq!(
        gone,
        json!({"op": "presence", "room": "r", "user": "cy", "event": "leave"}),
        "a dropped connection leaves"
    );
}

#[tokio::test]
async fn after_leave_no_more_messages_arrive_and_send_is_not_joined() {
    let node = TestNode::start(&[]).await;
    let mut ann = node.client("ann").await;
    let mut bob = node.client("bob").await;
    ann.join("r").await;
    bob.join("r").await;
    bob.send(json!({"op": "leave", "room": "r"})).await;
    bob.recv_op("left").await;
    ann.say("r", "after", "c").await;
    ann.recv_op("msg").await;
    bob.say("r", "me too", "c9").await;
    let error = bob.recv().await;
    assert_eq!(error["op"], "error", "bob got {error} instead of an error");
    assert_eq!(error["code"], "not_joined");
    assert_eq!(error["cid"], "c9");
    assert_eq!(error["room"], "r");
}

#[tokio::test]
async fn join_with_since_replays_exactly_the_missed_messages() {
    let node = TestNode::start(&[]).await;
    let mut ann = node.client("ann").await;
    ann.join("r").await;
    for i in 1..=10 {
        ann.say("r", &format!("m{i}"), &i.to_string()).await;
        ann.recv_op("msg").await;
    }
    let mut late = node.client("late").await;
    let joined = late.join_since("r", 7).await;
    let seqs: Vec<u64> = joined["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, [8, 9, 10]);
    assert_eq!(joined["seq"], 10);
}

#[tokio::test]
async fn history_is_bounded_by_history_per_room() {
    let node = TestNode::start(&["--history-per-room", "5"]).await;
    let mut ann = node.client("ann").await;
    ann.join("r").await;
    for i in 1..=12 {
        ann.say("r", &format!("m{i}"), "c").await;
        ann.recv_op("msg").await;
    }
    let joined = node.client("bob").await.join_since("r", 0).await;
    let seqs: Vec<u64> = joined["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, [8, 9, 10, 11, 12]);
}

async fn assert_refused(client: &mut Client, frame: serde_json::Value, code: &str, mentions: &str) {
    client.send(frame.clone()).await;
    let error = client.recv().await;
    assert_eq!(error["op"], "error", "for {frame}: {error}");
    assert_eq!(error["code"], code, "for {frame}: {error}");
    let message = error["message"].as_str().expect("message");
    assert!(
        message.contains(mentions),
        "for {frame}: `{message}` should mention `{mentions}`"
    );
    assert_eq!(
        client.ping("still-open").await["cid"],
        "still-open",
        "connection survives {frame}"
    );
}

#[tokio::test]
async fn bad_frames_get_a_clear_bad_request_and_the_connection_survives() {
    let node = TestNode::start(&[]).await;
    let mut ann = node.client("ann").await;
    ann.send_raw(Message::Text("{nope".into())).await;
    let error = ann.recv().await;
    assert_eq!(
        (error["code"].as_str(), error["op"].as_str()),
        (Some("bad_request"), Some("error"))
    );
    assert!(
        error["message"]
            .as_str()
            .expect("message")
            .contains("malformed json")
    );
    let long_room = "x".repeat(129);
    for (frame, mentions) in [
        (json!({"op": "fly", "cid": "u1"}), "unknown op `fly`"),
        (json!({"op": "join"}), "`room`"),
        (json!({"op": "send", "room": "r"}), "`text`"),
        (json!({"room": "r"}), "op"),
        (json!({"op": "join", "room": ""}), "invalid room"),
        (json!({"op": "join", "room": long_room}), "invalid room"),
        (json!({"op": "join", "room": "tab\there"}), "invalid room"),
        (
            json!({"op": "join", "room": "r", "since": "yesterday"}),
            "since",
        ),
    ] {
        assert_refused(&mut ann, frame, "bad_request", mentions).await;
    }
    ann.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    let error = ann.recv().await;
    assert_eq!(error["code"], "bad_request");
    assert!(
        error["message"]
            .as_str()
            .expect("message")
            .contains("binary")
    );
    assert_eq!(ann.ping("after-binary").await["cid"], "after-binary");
    let (_, metrics) = node.http_get("/metrics").await;
    assert!(
        metrics.contains("roomshard_errors_total{code=\"bad_request\"} 10"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_room_name_of_128_bytes_is_accepted() {
    let node = TestNode::start(&[]).await;
    let mut ann = node.client("ann").await;
    let name = "é".repeat(64);
    assert_eq!(ann.join(&name).await["room"], name);
}

#[tokio::test]
async fn text_over_the_limit_is_too_large_and_nothing_is_posted() {
    let node = TestNode::start(&["--max-message-bytes", "1024"]).await;
    let mut ann = node.client("ann").await;
    ann.join("r").await;
    assert_refused(
        &mut ann,
        json!({"op": "send", "room": "r", "text": "x".repeat(1025), "cid": "big"}),
        "too_large",
        "1024",
    )
    .await;
    ann.say("r", &"y".repeat(1024), "ok").await;
    let msg = ann.recv_op("msg").await;
    assert_eq!(msg["seq"], 1, "the refused message took no seq");
}

#[tokio::test]
async fn a_frame_past_the_hard_limit_closes_the_connection_with_1009() {
    let node = TestNode::start(&["--max-message-bytes", "1024"]).await;
    let mut ann = node.client("ann").await;
    let huge = json!({"op": "send", "room": "r", "text": "x".repeat(64 * 1024)});
    ann.send(huge).await;
    match ann.ending(Duration::from_secs(10)).await {
        Ending::Closed { code, .. } => assert_eq!(code, 1009),
        Ending::Dropped => panic!("expected a 1009 close frame"),
    }
    let mut bob = node.client("bob").await;
    assert_eq!(bob.ping("node-fine").await["cid"], "node-fine");
}

#[tokio::test]
async fn send_and_leave_for_a_room_not_joined_are_not_joined() {
    let node = TestNode::start(&[]).await;
    let mut ann = node.client("ann").await;
    assert_refused(
        &mut ann,
        json!({"op": "send", "room": "r", "text": "hi", "cid": "s"}),
        "not_joined",
        "join it first",
    )
    .await;
    assert_refused(
        &mut ann,
        json!({"op": "leave", "room": "r"}),
        "not_joined",
        "`r`",
    )
    .await;
}

#[tokio::test]
async fn joining_more_rooms_than_allowed_is_forbidden() {
    let node = TestNode::start(&["--max-rooms-per-connection", "3"]).await;
    let mut ann = node.client("ann").await;
    for room in ["a", "b", "c"] {
        ann.join(room).await;
    }
    assert_refused(
        &mut ann,
        json!({"op": "join", "room": "d"}),
        "forbidden",
        "at most 3",
    )
    .await;
    let rejoin = ann.join("a").await;
    assert_eq!(
        rejoin["room"], "a",
        "re-joining a room already joined is fine"
    );
    ann.send(json!({"op": "leave", "room": "c"})).await;
    ann.recv_op("left").await;
    assert_eq!(ann.join("d").await["room"], "d");
}

#[tokio::test]
async fn a_connection_over_its_rate_is_rate_limited_then_recovers() {
    let node = TestNode::start(&["--rate-per-sec", "20", "--rate-burst", "5"]).await;
    let mut ann = node.client("ann").await;
    for i in 0..8 {
        ann.send(json!({"op": "ping", "cid": i.to_string()})).await;
    }
    let mut codes = Vec::new();
    for _ in 0..8 {
        let frame = ann.recv().await;
        codes.push(
            frame["op"].as_str().map(str::to_owned).unwrap_or_default()
                + ":"
                + frame["code"].as_str().unwrap_or(""),
        );
    }
    let pongs = codes.iter().filter(|c| c.starts_with("pong")).count();
    let limited = codes
        .iter()
        .filter(|c| c.as_str() == "error:rate_limited")
        .count();
    assert!(pongs >= 5, "the burst passes: {codes:?}");
    assert!(limited >= 1, "the rest is rate limited: {codes:?}");
    assert_eq!(pongs + limited, 8);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ann.ping("later").await["cid"], "later");
}

#[tokio::test]
async fn a_connection_without_identity_is_closed_with_1008_and_a_reason() {
    let node = TestNode::start(&[]).await;
    let mut anon = Client::connect(&format!("ws://{}/ws", node.addr)).await;
    match anon.ending(Duration::from_secs(5)).await {
        Ending::Closed { code, reason } => {
            assert_eq!(code, 1008);
            assert!(reason.contains("?user="), "{reason}");
        }
        Ending::Dropped => panic!("expected a close frame"),
    }
}

fn token(secret: &[u8], sub: &str, exp: u64) -> String {
    use jsonwebtoken::{EncodingKey, Header, encode};
    encode(
        &Header::default(),
        &json!({"sub": sub, "exp": exp}),
        &EncodingKey::from_secret(secret),
    )
    .expect("token")
}

#[tokio::test]
async fn with_auth_on_a_signed_token_is_required_and_names_the_user() {
    let node = TestNode::start_with_auth(&[], Authenticator::with_hs256_key(b"secret")).await;
    let exp = node::snowflake::unix_ms() / 1000 + 600;
    let good = token(b"secret", "zoe", exp);
    let mut zoe =
        Client::connect(&format!("ws://{}/ws?token={good}&user=mallory", node.addr)).await;
    let joined = zoe.join("r").await;
    assert_eq!(joined["members"], json!(["zoe"]));

    for (url, expect) in [
        (
            format!("ws://{}/ws?user=mallory", node.addr),
            "authentication required",
        ),
        (
            format!(
                "ws://{}/ws?token={}",
                node.addr,
                token(b"wrong", "zoe", exp)
            ),
            "invalid token",
        ),
        (
            format!(
                "ws://{}/ws?token={}",
                node.addr,
                token(b"secret", "zoe", 1000)
            ),
            "invalid token",
        ),
    ] {
        let mut client = Client::connect(&url).await;
        match client.ending(Duration::from_secs(5)).await {
            Ending::Closed { code, reason } => {
                assert_eq!(code, 1008, "{url}");
                assert!(reason.contains(expect), "{url}: {reason}");
            }
            Ending::Dropped => panic!("expected a 1008 close for {url}"),
        }
    }
}

#[tokio::test]
async fn probes_metrics_status_and_the_chat_page_are_served() {
    let node = TestNode::start(&["--name", "chat-3"]).await;
    let mut ann = node.client("ann").await;
    ann.join("r").await;
    ann.say("r", "x", "c").await;
    ann.recv_op("msg").await;
    assert_eq!(node.http_get("/healthz").await, (200, "ok".to_owned()));
    assert_eq!(node.http_get("/readyz").await.0, 200);
    let (code, metrics) = node.http_get("/metrics").await;
    assert_eq!(code, 200);
    for line in [
        "roomshard_connections 1",
        "roomshard_messages_in_total 1",
        "roomshard_messages_delivered_total 1",
        "roomshard_rooms_active 1",
    ] {
        assert!(metrics.contains(line), "missing `{line}` in\n{metrics}");
    }
    let (code, status) = node.http_get("/status").await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).expect("status json");
    assert_eq!(status["node"], "chat-3");
    assert_eq!(status["shardsOwned"], 256);
    assert_eq!(status["connections"], 1);
    let (code, page) = node.http_get("/").await;
    assert_eq!(code, 200);
    assert!(
        page.contains("<html") && page.contains("/ws"),
        "the chat page is served"
    );
    let (code, module) = node.http_get("/roomshard.js").await;
    assert_eq!(code, 200);
    assert!(
        module.contains("export class RoomshardClient") && page.contains("./roomshard.js"),
        "the client module the page imports is served"
    );
}

#[tokio::test]
async fn message_ids_carry_the_node_ordinal() {
    let node = TestNode::start(&["--name", "chat-7"]).await;
    let mut ann = node.client("ann").await;
    ann.join("r").await;
    ann.say("r", "x", "c").await;
    let msg = ann.recv_op("msg").await;
    let id: u64 = msg["id"].as_str().expect("id").parse().expect("decimal");
    assert_eq!(node::snowflake::decompose(id).1, 7);
}

#[tokio::test]
async fn an_idle_empty_room_is_passivated_and_its_seq_continues() {
    let node = TestNode::start(&["--passivate-after", "200ms"]).await;
    let mut ann = node.client("ann").await;
    ann.join("r").await;
    for _ in 0..3 {
        ann.say("r", "x", "c").await;
        ann.recv_op("msg").await;
    }
    ann.send(json!({"op": "leave", "room": "r"})).await;
    ann.recv_op("left").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while node.state.rooms.active() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "room was not passivated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, metrics) = node.http_get("/metrics").await;
    assert!(
        metrics.contains("roomshard_rooms_passivated_total 1"),
        "{metrics}"
    );
    let joined = ann.join("r").await;
    assert_eq!(joined["seq"], 3, "seq survives passivation");
    ann.say("r", "y", "c").await;
    assert_eq!(ann.recv_op("msg").await["seq"], 4);
}
