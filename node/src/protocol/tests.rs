//! Unit tests of the wire format: parsing every op and every refusal, and the frames built.

use super::*;

const LIMIT: usize = 16 * 1024;

fn refused(frame: &str) -> Refusal {
    match parse_client_frame(frame, LIMIT) {
        Err(refusal) => refusal,
        Ok(op) => panic!("expected a refusal for {frame}, got {op:?}"),
    }
}

#[test]
fn every_op_parses_with_its_fields() {
    let room = RoomId::new("lobby").expect("valid room");
    assert_eq!(
        parse_client_frame(r#"{"op":"join","room":"lobby","since":4}"#, LIMIT),
        Ok(ClientOp::Join {
            room: room.clone(),
            since: Some(4)
        })
    );
    assert_eq!(
        parse_client_frame(r#"{"op":"leave","room":"lobby"}"#, LIMIT),
        Ok(ClientOp::Leave { room: room.clone() })
    );
    assert_eq!(
        parse_client_frame(
            r#"{"op":"send","room":"lobby","text":"hi","cid":"c1"}"#,
            LIMIT
        ),
        Ok(ClientOp::Send {
            room,
            text: "hi".into(),
            cid: Some("c1".into())
        })
    );
    assert_eq!(
        parse_client_frame(r#"{"op":"ping","future":true}"#, LIMIT),
        Ok(ClientOp::Ping { cid: None })
    );
}

#[test]
fn every_client_op_name_parses_into_the_op_of_that_name() {
    for name in ClientOp::NAMES {
        let frame = format!(r#"{{"op":"{name}","room":"a","text":"t"}}"#);
        let op = parse_client_frame(&frame, LIMIT).expect("a listed op parses");
        assert_eq!(op.name(), name);
    }
}

#[test]
fn every_server_frame_is_named_in_server_ops_as_serde_writes_it() {
    let room = RoomId::new("a").expect("valid room");
    let message = ChatMessage {
        room: room.clone(),
        seq: 1,
        id: 1,
        user: "ann".into(),
        text: "hi".into(),
        ts: 1,
        cid: None,
    };
    let frames = [
        ServerFrame::Msg(&message),
        ServerFrame::Joined {
            room: &room,
            seq: 0,
            members: &[],
            history: &[],
        },
        ServerFrame::Left { room: &room },
        ServerFrame::Presence {
            room: &room,
            user: "ann",
            event: "join",
        },
        ServerFrame::Pong { cid: None },
        ServerFrame::Error {
            code: ErrorCode::Internal,
            message: "m",
            cid: None,
            room: None,
        },
        ServerFrame::Reconnect {
            reason: "r",
            after_ms: None,
        },
    ];
    let mut seen = Vec::new();
    for frame in &frames {
        let value: serde_json::Value = serde_json::from_str(&to_text(frame)).expect("json");
        assert_eq!(value["op"], frame.op());
        seen.push(frame.op());
    }
    assert_eq!(seen, SERVER_OPS);
}

#[test]
fn malformed_json_is_a_bad_request() {
    let refusal = refused("{not json");
    assert_eq!(refusal.code, ErrorCode::BadRequest);
    assert!(
        refusal.message.starts_with("malformed json"),
        "{}",
        refusal.message
    );
}

#[test]
fn unknown_op_is_named_in_the_error_and_keeps_the_cid() {
    let refusal = refused(r#"{"op":"dance","cid":"x"}"#);
    assert_eq!(refusal.code, ErrorCode::BadRequest);
    assert!(refusal.message.contains("`dance`"));
    assert_eq!(refusal.cid.as_deref(), Some("x"));
}

#[test]
fn a_missing_field_is_named() {
    assert!(refused(r#"{"op":"join"}"#).message.contains("`room`"));
    assert!(
        refused(r#"{"op":"send","room":"a"}"#)
            .message
            .contains("`text`")
    );
    assert!(refused(r#"{"room":"a"}"#).message.contains("`op`"));
}

#[test]
fn invalid_room_names_are_refused() {
    let long = "r".repeat(129);
    for frame in [
        r#"{"op":"join","room":""}"#.to_owned(),
        format!(r#"{{"op":"join","room":"{long}"}}"#),
        r#"{"op":"join","room":"a\u0007b"}"#.to_owned(),
    ] {
        let refusal = refused(&frame);
        assert_eq!(refusal.code, ErrorCode::BadRequest, "{frame}");
        assert!(
            refusal.message.starts_with("invalid room"),
            "{}",
            refusal.message
        );
    }
}

#[test]
fn text_over_the_limit_is_too_large_and_names_the_room() {
    let text = "x".repeat(LIMIT + 1);
    let refusal = refused(&format!(r#"{{"op":"send","room":"a","text":"{text}"}}"#));
    assert_eq!(refusal.code, ErrorCode::TooLarge);
    assert_eq!(
        refusal.room.map(|r| r.as_str().to_owned()),
        Some("a".into())
    );
    let exactly = "x".repeat(LIMIT);
    assert!(
        parse_client_frame(
            &format!(r#"{{"op":"send","room":"a","text":"{exactly}"}}"#),
            LIMIT
        )
        .is_ok()
    );
}

#[test]
fn wrong_types_are_refused() {
    assert!(
        refused(r#"{"op":"join","room":"a","since":-1}"#)
            .message
            .contains("since")
    );
    assert!(
        refused(r#"{"op":"send","room":"a","text":5}"#)
            .message
            .contains("text")
    );
    assert!(refused(r#"{"op":"ping","cid":7}"#).message.contains("cid"));
    assert!(refused("[1,2]").message.contains("object"));
}

#[test]
fn a_msg_frame_carries_the_id_as_a_decimal_string() {
    let message = ChatMessage {
        room: RoomId::new("a").expect("valid room"),
        seq: 3,
        id: u64::MAX,
        user: "ann".into(),
        text: "hi \"there\"".into(),
        ts: 1,
        cid: None,
    };
    let frame = msg_frame(&message);
    let value: serde_json::Value = serde_json::from_str(&frame).expect("json");
    assert_eq!(value["op"], "msg");
    assert_eq!(value["id"], u64::MAX.to_string());
    assert!(value.get("cid").is_none());
    let joined = joined_frame(&message.room, 3, &["ann"], &[&frame]);
    let value: serde_json::Value = serde_json::from_str(&joined).expect("json");
    assert_eq!(value["history"][0]["text"], "hi \"there\"");
    assert_eq!(value["members"][0], "ann");
}
