//! Many real clients at once: ordering, no gaps, no duplicates; and a slow consumer that must
//! not slow anybody else down.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use support::{Client, Ending, TestNode};
use tokio::sync::Barrier;

const CLIENTS: usize = 1_000;
const ROOMS: usize = 50;
const SENDS_EACH: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_in_fifty_rooms_see_every_message_in_order_without_gaps() {
    let node = TestNode::start(&[]).await;
    let per_room = (CLIENTS / ROOMS) as u64 * SENDS_EACH;
    let joined = Arc::new(Barrier::new(CLIENTS));
    let mut tasks = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let url = node.ws_url(&format!("user{i}"));
        let joined = joined.clone();
        tasks.push(tokio::spawn(async move {
            let room = format!("room-{}", i % ROOMS);
            let mut client = Client::connect(&url).await;
            client.join(&room).await;
            joined.wait().await;
            for k in 0..SENDS_EACH {
                client
                    .say(&room, &format!("{i}:{k}"), &format!("{i}-{k}"))
                    .await;
            }
            let mut seqs = Vec::with_capacity(per_room as usize);
            let mut ids = HashSet::new();
            let mut own = 0;
            while seqs.len() < per_room as usize {
                let frame = client.recv().await;
                match frame["op"].as_str() {
                    Some("msg") => {
                        assert_eq!(frame["room"], room.as_str());
                        seqs.push(frame["seq"].as_u64().expect("seq"));
                        assert!(
                            ids.insert(frame["id"].as_str().expect("id").to_owned()),
                            "duplicate id"
                        );
                        if frame["user"] == format!("user{i}") {
                            own += 1;
                        }
                    }
                    Some("presence") => {}
                    other => panic!("unexpected frame {other:?}: {frame}"),
                }
            }
            (seqs, own)
        }));
    }
    for task in tasks {
        let (seqs, own) = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("clients finish in time")
            .expect("client task");
        let expected: Vec<u64> = (1..=per_room).collect();
        assert_eq!(
            seqs, expected,
            "every member sees seq 1..={per_room} in order, no gaps"
        );
        assert_eq!(own, SENDS_EACH, "each sender gets its own messages back");
    }
    let (_, metrics) = node.http_get("/metrics").await;
    let delivered = format!(
        "roomshard_messages_delivered_total {}",
        CLIENTS as u64 * per_room
    );
    assert!(
        metrics.contains(&delivered),
        "expected `{delivered}` in\n{metrics}"
    );
    assert!(metrics.contains("roomshard_queue_drops_total 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_disconnected_and_the_others_get_everything() {
    let node = TestNode::start(&[
        "--outgoing-queue",
        "32",
        "--rate-per-sec",
        "100000",
        "--rate-burst",
        "100000",
    ])
    .await;
    let mut slow = node.client("slow").await;
    slow.join("r").await;
    let mut readers = Vec::new();
    for i in 0..3 {
        let mut reader = node.client(&format!("reader{i}")).await;
        reader.join("r").await;
        readers.push(reader);
    }
    let mut sender = node.client("sender").await;
    sender.join("r").await;
    // 2,000 messages of 4 KiB: far more than the slow client's socket buffers and queue hold.
    const MESSAGES: u64 = 2_000;
    let text = "z".repeat(4096);
    let reading = readers.into_iter().map(|mut reader| {
        tokio::spawn(async move {
            let mut next = 1;
            while next <= MESSAGES {
                let frame = reader.recv().await;
                if frame["op"] == "msg" {
                    assert_eq!(frame["seq"], next, "in order, no gaps");
                    next += 1;
                }
            }
        })
    });
    let reading: Vec<_> = reading.collect();
    for i in 0..MESSAGES {
        sender.say("r", &text, &i.to_string()).await;
        // Keep the sender's own queue drained so that it is not the slow one.
        while let Some(_frame) = sender.try_recv(Duration::from_millis(0)).await {}
    }
    for task in reading {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("readers finish")
            .expect("reader");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = node.http_get("/metrics").await;
        if metrics.contains("roomshard_slow_consumers_total 1") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slow consumer was not disconnected:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // When the slow client finally reads, it finds the close frame after what was buffered.
    match slow.ending(Duration::from_secs(30)).await {
        Ending::Closed { code, reason } => {
            assert_eq!(code, 1013);
            assert!(reason.contains("slow consumer"), "{reason}");
        }
        Ending::Dropped => panic!("expected a 1013 close frame with a reason"),
    }
    assert_eq!(sender.ping("alive").await["cid"], "alive");
}
