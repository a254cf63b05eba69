//! The node's own WebSocket layer against a reference client (tungstenite): control frames,
//! fragmented messages, the close handshake, framing errors and non-upgrade requests.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::{Ending, FRAME_TIMEOUT, TestNode};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

#[tokio::test]
async fn a_websocket_ping_is_answered_with_a_pong_carrying_its_payload() {
    let node = TestNode::start(&[]).await;
    let mut ann = node.client("ann").await;
    ann.send_raw(Message::Ping(b"are you there".to_vec().into()))
        .await;
    let answer = tokio::time::timeout(FRAME_TIMEOUT, ann.ws.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("frame");
    assert_eq!(answer, Message::Pong(b"are you there".to_vec().into()));
}

#[tokio::test]
async fn a_message_sent_in_fragments_is_read_as_one() {
    let node = TestNode::start(&[]).await;
    let mut ann = node.client("ann").await;
    let text = br#"{"op":"ping","cid":"in-three-parts"}"#;
    let parts = [
        Frame::message(text[..5].to_vec(), OpCode::Data(Data::Text), false),
        Frame::message(text[5..20].to_vec(), OpCode::Data(Data::Continue), false),
        Frame::message(text[20..].to_vec(), OpCode::Data(Data::Continue), true),
    ];
    for part in parts {
        ann.send_raw(Message::Frame(part)).await;
    }
    assert_eq!(ann.recv_op("pong").await["cid"], "in-three-parts");
}

#[tokio::test]
async fn a_close_from_the_client_is_answered_with_a_close() {
    let node = TestNode::start(&[]).await;
    let mut ann = node.client("ann").await;
    ann.send_raw(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await;
    match ann.ending(Duration::from_secs(10)).await {
        Ending::Closed { code, .. } => assert_eq!(code, 1000),
        Ending::Dropped => panic!("expected the close answered"),
    }
}

#[tokio::test]
async fn an_unmasked_client_frame_closes_the_connection_with_1002_and_others_go_on() {
    let node = TestNode::start(&[]).await;
    let mut ann = node.client("ann").await;
    // Written past the client library, which would mask it.
    let MaybeTlsStream::Plain(tcp) = ann.ws.get_mut() else {
        panic!("a plain test connection")
    };
    tcp.write_all(&[0x81, 0x02, b'h', b'i'])
        .await
        .expect("raw write");
    match ann.ending(Duration::from_secs(10)).await {
        Ending::Closed { code, .. } => assert_eq!(code, 1002),
        Ending::Dropped => panic!("expected a 1002 close frame"),
    }
    let mut bob = node.client("bob").await;
    assert_eq!(bob.ping("still-serving").await["cid"], "still-serving");
}

#[tokio::test]
async fn a_plain_http_request_to_the_websocket_path_is_a_bad_request() {
    let node = TestNode::start(&[]).await;
    let (status, body) = node.http_get("/ws?user=ann").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("websocket"), "{body}");
}
