//! The outbox on real loopback sockets, read by a reference WebSocket client (tungstenite).

use super::*;
use crate::edge::{CLOSE_SLOW_CONSUMER, ConnHandle, ConnId, EdgeEvent, EdgeHub};
use crate::metrics::Metrics;
use futures_util::StreamExt;
use shard::RoomId;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Message as Received, protocol::CloseFrame};

const WAIT: Duration = Duration::from_secs(10);

/// A server socket with small kernel buffers on both ends, so a client that does not read
/// blocks it after a few frames; and the client's end.
async fn pair() -> (Arc<TcpStream>, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let client = TcpStream::connect(addr).await.expect("connect");
    let (server, _) = listener.accept().await.expect("accept");
    socket2::SockRef::from(&server)
        .set_send_buffer_size(4096)
        .expect("sndbuf");
    socket2::SockRef::from(&client)
        .set_recv_buffer_size(4096)
        .expect("rcvbuf");
    (Arc::new(server), client)
}

async fn client(tcp: TcpStream) -> WebSocketStream<TcpStream> {
    WebSocketStream::from_raw_socket(tcp, Role::Client, None).await
}

fn numbered(i: usize) -> WireFrame {
    // Long enough that a few fill the small buffers.
    WireFrame::text(&format!("{i:06}{}", "x".repeat(994)))
}

/// Everything the client reads until the connection ends: texts, then the close frame if any.
async fn read_all(mut ws: WebSocketStream<TcpStream>) -> (Vec<String>, Option<CloseFrame>) {
    let mut texts = Vec::new();
    let read = async {
        while let Some(Ok(message)) = ws.next().await {
            match message {
                Received::Text(text) => texts.push(text.to_string()),
                Received::Close(frame) => return frame,
                _ => {}
            }
        }
        None
    };
    let close = tokio::time::timeout(WAIT, read)
        .await
        .expect("ends in time");
    (texts, close)
}

fn index(text: &str) -> usize {
    text[..6].parse().expect("numbered")
}

#[tokio::test]
async fn frames_to_a_socket_with_room_are_written_at_once_and_arrive_in_order() {
    let (server, tcp) = pair().await;
    let outbox = Outbox::new(server, 16);
    for i in 0..3 {
        assert_eq!(
            outbox.push(&WireFrame::text(&format!("{i:06}"))),
            Pushed::Written
        );
    }
    assert_eq!(
        outbox.queued(),
        0,
        "nothing waits: no writer wake-up needed"
    );
    let control = ConnControl::default();
    control.close(CloseReason {
        code: 1000,
        reason: String::new(),
        flush: true,
    });
    outbox.run(&control, WAIT).await;
    let (texts, close) = read_all(client(tcp).await).await;
    assert_eq!(texts, ["000000", "000001", "000002"]);
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1000));
}

#[tokio::test]
async fn a_blocked_socket_queues_frames_and_the_writer_drains_them_in_order() {
    let (server, tcp) = pair().await;
    let outbox = Arc::new(Outbox::new(server, 10_000));
    let mut pushed = 0;
    while outbox.queued() < 5 {
        assert_ne!(outbox.push(&numbered(pushed)), Pushed::Full);
        pushed += 1;
        assert!(pushed < 10_000, "the socket never filled");
    }
    // More behind the queued ones are queued too, never written ahead of them.
    for _ in 0..5 {
        assert_eq!(outbox.push(&numbered(pushed)), Pushed::Queued);
        pushed += 1;
    }
    let control = Arc::new(ConnControl::default());
    let writer = {
        let (outbox, control) = (outbox.clone(), control.clone());
        tokio::spawn(async move { outbox.run(&control, WAIT).await })
    };
    let reader = tokio::spawn(read_all(client(tcp).await));
    // Wait for the writer to empty the queue, then close with flush.
    tokio::time::timeout(WAIT, async {
        while outbox.queued() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("drained");
    control.close(CloseReason {
        code: 1001,
        reason: "bye".into(),
        flush: true,
    });
    writer.await.expect("writer");
    let (texts, close) = reader.await.expect("reader");
    let order: Vec<usize> = texts.iter().map(|t| index(t)).collect();
    assert_eq!(order, (0..pushed).collect::<Vec<_>>());
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1001));
}

#[tokio::test]
async fn a_full_queue_refuses_frames_and_the_close_frame_still_arrives_whole() {
    let (server, tcp) = pair().await;
    let outbox = Outbox::new(server, 3);
    let mut pushed = 0;
    loop {
        match outbox.push(&numbered(pushed)) {
            Pushed::Full => break,
            _ => pushed += 1,
        }
        assert!(pushed < 10_000, "the queue never filled");
    }
    let control = ConnControl::default();
    control.close(CloseReason {
        code: CLOSE_SLOW_CONSUMER,
        reason: "slow consumer".into(),
        flush: false,
    });
    assert_eq!(outbox.push(&numbered(0)), Pushed::Full);
    let reader = tokio::spawn(read_all(client(tcp).await));
    outbox.run(&control, WAIT).await;
    assert_eq!(outbox.push(&numbered(0)), Pushed::Closed);
    let (texts, close) = reader.await.expect("reader");
    // What was in the socket, and a frame it had started, arrive whole and in order; the
    // queue behind them is dropped; the close frame ends the stream cleanly.
    let order: Vec<usize> = texts.iter().map(|t| index(t)).collect();
    assert_eq!(order, (0..order.len()).collect::<Vec<_>>());
    assert!(order.len() < pushed, "the queued frames were dropped");
    assert_eq!(close.map(|c| u16::from(c.code)), Some(CLOSE_SLOW_CONSUMER));
}

#[tokio::test]
async fn a_slow_consumer_is_cut_alone_and_the_others_get_every_frame() {
    let metrics = Arc::new(Metrics::default());
    let hub = EdgeHub::new(metrics.clone());
    let room = RoomId::new("r").expect("room");
    let mut handles = Vec::new();
    let mut clients = Vec::new();
    for id in 1..=3 {
        let (server, tcp) = pair().await;
        let handle = ConnHandle {
            id: ConnId(id),
            user: "u".into(),
            out: Arc::new(Outbox::new(server, 8)),
            control: Arc::default(),
        };
        hub.register(handle.clone());
        hub.deliver(EdgeEvent::Joined {
            room: room.clone(),
            conn: ConnId(id),
            frame: "000000 joined".into(),
        });
        let writer = {
            let handle = handle.clone();
            tokio::spawn(async move { handle.out.run(&handle.control, WAIT).await })
        };
        handles.push((handle, writer));
        clients.push(client(tcp).await);
    }
    // Connection 1 never reads; 2 and 3 read as the frames come.
    let mut clients = clients.into_iter();
    let slow = clients.next().expect("slow");
    let readers: Vec<_> = clients.map(|ws| tokio::spawn(read_all(ws))).collect();
    let frames = 2_000;
    for i in 1..=frames {
        hub.deliver(EdgeEvent::Broadcast {
            room: room.clone(),
            frame: String::from_utf8(numbered(i).payload().to_vec())
                .expect("text")
                .into(),
            skip: None,
            is_msg: true,
        });
        if i % 4 == 0 {
            // Let the readers and writers run, as a real node's runtime would.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let (slow_handle, _) = &handles[0];
    assert_eq!(
        slow_handle.control.reason().map(|r| r.code),
        Some(CLOSE_SLOW_CONSUMER)
    );
    assert_eq!(metrics.slow_consumers.get(), 1);
    for (handle, _) in &handles[1..] {
        assert!(!handle.control.is_closed(), "a reading client is not cut");
        handle.control.close(CloseReason {
            code: 1000,
            reason: String::new(),
            flush: true,
        });
    }
    for (_, writer) in handles {
        writer.await.expect("writer");
    }
    for reader in readers {
        let (texts, close) = reader.await.expect("reader");
        let order: Vec<usize> = texts.iter().map(|t| index(t)).collect();
        assert_eq!(
            order,
            (0..=frames).collect::<Vec<_>>(),
            "every frame, in order"
        );
        assert_eq!(close.map(|c| u16::from(c.code)), Some(1000));
    }
    drop(slow);
}
