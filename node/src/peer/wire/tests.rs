//! The peer encoding: every kind round-trips, a golden byte vector pins each kind's layout,
//! and damaged or forged input is an error naming what is wrong, never a panic.

use super::*;
use crate::edge::ConnId;
use crate::replication::{Answer, Change};
use crate::room::MemberKey;

fn name(n: &str) -> NodeName {
    NodeName::new(n).expect("valid node name")
}

fn room(n: &str) -> RoomId {
    RoomId::new(n).expect("valid room")
}

fn member() -> MemberKey {
    MemberKey {
        node: name("n2"),
        conn: ConnId(7),
    }
}

/// One frame of every kind, with the bytes it must encode to.
fn golden() -> Vec<(&'static str, PeerFrame, &'static str)> {
    let data = |msg| PeerFrame::Data { seq: 300, msg };
    vec![
        (
            "challenge",
            PeerFrame::Challenge {
                node: name("n1"),
                incarnation: 5,
                nonce: "ab".into(),
            },
            "0201026e3105026162",
        ),
        (
            "proof",
            PeerFrame::Proof {
                node: name("n2"),
                incarnation: 6,
                mac: "m".into(),
                nonce: "cd".into(),
                last_received: 2,
            },
            "0202026e3206016d02636402",
        ),
        (
            "welcome",
            PeerFrame::Welcome {
                mac: "m".into(),
                last_received: 128,
            },
            "0203016d8001",
        ),
        ("ack", PeerFrame::Ack { seq: 1 }, "020501"),
        (
            "join",
            data(PeerMsg::Command {
                room: room("r"),
                command: RoomCommand::Join {
                    member: member(),
                    user: "u".into(),
                    since: Some(4),
                },
                hops: 1,
                epoch: 9,
            }),
            "0204ac02010172010901026e32070175 0104"
                .replace(' ', "")
                .leak(),
        ),
        (
            "leave",
            data(PeerMsg::Command {
                room: room("r"),
                command: RoomCommand::Leave {
                    member: member(),
                    reply: true,
                },
                hops: 0,
                epoch: 1,
            }),
            "0204ac02010172000102026e320701",
        ),
        (
            "post",
            data(PeerMsg::Command {
                room: room("r"),
                command: RoomCommand::Post {
                    member: member(),
                    user: "u".into(),
                    text: "hi".into(),
                    cid: None,
                },
                hops: 0,
                epoch: 1,
            }),
            "0204ac02010172000103026e3207017502686900",
        ),
        (
            "drop node",
            data(PeerMsg::Command {
                room: room("r"),
                command: RoomCommand::DropNode { node: name("n3") },
                hops: 0,
                epoch: 1,
            }),
            "0204ac0201017200010402 6e33".replace(' ', "").leak(),
        ),
        (
            "joined",
            data(PeerMsg::Event(EdgeEvent::Joined {
                room: room("r"),
                conn: ConnId(3),
                frame: "{}".into(),
            })),
            "0204ac020201017203027b7d",
        ),
        (
            "left",
            data(PeerMsg::Event(EdgeEvent::Left {
                room: room("r"),
                conn: ConnId(3),
                frame: None,
            })),
            "0204ac02020201720300",
        ),
        (
            "to conn",
            data(PeerMsg::Event(EdgeEvent::ToConn {
                conn: ConnId(3),
                frame: "{}".into(),
            })),
            "0204ac02020303027b7d",
        ),
        (
            "broadcast",
            data(PeerMsg::Event(EdgeEvent::Broadcast {
                room: room("r"),
                frame: "{}".into(),
                skip: Some(ConnId(3)),
                is_msg: true,
            })),
            "0204ac0202040172027b7d010301",
        ),
        (
            "snapshot",
            data(PeerMsg::Snapshot {
                shard: ShardId(2),
                epoch: 3,
                floor: 5,
                rooms: vec![RoomSnapshot {
                    room: room("r"),
                    seq: 4,
                    history: vec![(4, "{}".into())],
                    members: vec![(member(), "u".into())],
                }],
            }),
            "0204ac020302030501017204010402 7b7d 01 026e32 07 0175"
                .replace(' ', "")
                .leak(),
        ),
        (
            "send copy",
            data(PeerMsg::SendCopy {
                shard: ShardId(2),
                epoch: 3,
            }),
            "0204ac02 0a 02 03".replace(' ', "").leak(),
        ),
        (
            "ack now",
            data(PeerMsg::AckNow),
            "0204ac02 09".replace(' ', "").leak(),
        ),
        (
            "snapshot ack",
            data(PeerMsg::SnapshotAck {
                shard: ShardId(2),
                epoch: 3,
            }),
            "0204ac02040203",
        ),
        (
            "gap",
            data(PeerMsg::Gap {
                rooms: vec![room("r")],
                all: false,
            }),
            "0204ac0205000101 72".replace(' ', "").leak(),
        ),
        (
            "replicate whole",
            replicate(Change::Whole(RoomSnapshot {
                room: room("r"),
                seq: 4,
                history: vec![(4, "{}".into())],
                members: vec![(member(), "u".into())],
            })),
            "0204ac02 06 02 03 0172 09 01 0172 04 01 04 027b7d 01 026e32 07 0175"
                .replace(' ', "")
                .leak(),
        ),
        (
            "replicate message",
            replicate(Change::Message {
                seq: 4,
                frame: "{}".into(),
            }),
            "0204ac02 06 02 03 0172 09 02 04 027b7d"
                .replace(' ', "")
                .leak(),
        ),
        (
            "replicate joined",
            replicate(Change::Joined {
                member: member(),
                user: "u".into(),
            }),
            "0204ac02 06 02 03 0172 09 03 026e32 07 0175"
                .replace(' ', "")
                .leak(),
        ),
        (
            "replicate left",
            replicate(Change::Left { member: member() }),
            "0204ac02 06 02 03 0172 09 04 026e32 07"
                .replace(' ', "")
                .leak(),
        ),
        (
            "replicate node left",
            replicate(Change::NodeLeft { node: name("n2") }),
            "0204ac02 06 02 03 0172 09 05 026e32"
                .replace(' ', "")
                .leak(),
        ),
        (
            "replicate rested",
            replicate(Change::Rested { seq: 4 }),
            "0204ac02 06 02 03 0172 09 06 04".replace(' ', "").leak(),
        ),
        (
            "replicated",
            data(PeerMsg::Replicated {
                shard: ShardId(2),
                room: room("r"),
                rid: 9,
                answer: Answer::Fenced,
            }),
            "0204ac02 07 02 0172 09 02".replace(' ', "").leak(),
        ),
        (
            "caught up",
            data(PeerMsg::CaughtUp {
                shard: ShardId(2),
                epoch: 3,
                floor: 5,
                resting: vec![(room("r"), 4)],
            }),
            "0204ac02 08 02 03 05 01 0172 04".replace(' ', "").leak(),
        ),
    ]
}

/// A data frame carrying one change to room `r` of shard 2, rid 9, epoch 3.
fn replicate(change: Change) -> PeerFrame {
    PeerFrame::Data {
        seq: 300,
        msg: PeerMsg::Replicate {
            shard: ShardId(2),
            epoch: 3,
            room: room("r"),
            rid: 9,
            change,
        },
    }
}

#[test]
fn every_kind_encodes_to_its_golden_bytes() {
    for (kind, frame, bytes) in golden() {
        assert_eq!(hex::encode(frame.encode()), bytes, "{kind}");
    }
}

#[test]
fn every_kind_round_trips() {
    for (kind, frame, bytes) in golden() {
        let bytes = hex::decode(bytes).expect("hex");
        let back = PeerFrame::decode(&bytes).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(format!("{back:?}"), format!("{frame:?}"), "{kind}");
    }
}

#[test]
fn odd_text_and_large_numbers_round_trip() {
    let frame = r#"{"op":"msg","text":"a \"b\" \n c \u{1F600}"}"#;
    let msg = PeerMsg::Event(EdgeEvent::Broadcast {
        room: room("lobby \u{1F600} \"quoted\""),
        frame: frame.into(),
        skip: None,
        is_msg: false,
    });
    let back = PeerFrame::decode(&encode_data(u64::MAX, &msg)).expect("decodes");
    let PeerFrame::Data { seq, msg: back } = back else {
        panic!("not a data frame")
    };
    assert_eq!(seq, u64::MAX);
    assert_eq!(format!("{back:?}"), format!("{msg:?}"));
}

#[test]
fn a_client_frame_decodes_as_a_slice_of_the_received_message() {
    let msg = PeerMsg::Event(EdgeEvent::ToConn {
        conn: ConnId(1),
        frame: "{\"op\":\"pong\"}".into(),
    });
    let received = Bytes::from(encode_data(1, &msg));
    let Ok(PeerFrame::Data {
        msg: PeerMsg::Event(EdgeEvent::ToConn { frame, .. }),
        ..
    }) = PeerFrame::decode_shared(&received)
    else {
        panic!("decodes");
    };
    let range = received.as_ptr_range();
    assert!(
        range.contains(&frame.as_str().as_ptr()),
        "the frame's text points into the received bytes"
    );
}

#[test]
fn every_truncation_of_every_kind_is_an_error() {
    for (kind, _, bytes) in golden() {
        let bytes = hex::decode(bytes).expect("hex");
        for len in 0..bytes.len() {
            assert!(
                PeerFrame::decode(&bytes[..len]).is_err(),
                "{kind} cut to {len} bytes decoded"
            );
        }
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    let mut bytes = PeerFrame::Ack { seq: 1 }.encode();
    bytes.push(0);
    assert_eq!(
        PeerFrame::decode(&bytes).err(),
        Some(WireError::Trailing(1))
    );
}

#[test]
fn another_version_is_refused_by_number() {
    // Version 1: a node from before the ack-now request.
    let err = PeerFrame::decode(&[1, kind::ACK, 1]).expect_err("version 1");
    assert_eq!(err, WireError::UnsupportedVersion { found: 1 });
    assert_eq!(
        err.to_string(),
        "peer wire format version 1 is not supported (this node speaks 2)"
    );
    // What a node from before this format sent first (a postcard challenge) is refused too.
    assert_eq!(
        PeerFrame::decode(&[0, 6, b'n']).err(),
        Some(WireError::UnsupportedVersion { found: 0 })
    );
    assert_eq!(PeerFrame::decode(&[]).err(), Some(WireError::Empty));
}

#[test]
fn unknown_kinds_are_errors_naming_the_kind() {
    let unknown = |bytes: &[u8]| PeerFrame::decode(bytes).expect_err("unknown kind");
    assert_eq!(
        unknown(&[2, 0x7f]),
        WireError::UnknownKind {
            what: "frame",
            kind: 0x7f
        }
    );
    assert_eq!(
        unknown(&[2, kind::DATA, 1, 0x19]),
        WireError::UnknownKind {
            what: "message",
            kind: 0x19
        }
    );
    assert_eq!(
        unknown(&[2, kind::DATA, 1, kind::msg::EVENT, 0]),
        WireError::UnknownKind {
            what: "event",
            kind: 0
        }
    );
    assert_eq!(
        unknown(&[2, kind::DATA, 1, kind::msg::COMMAND, 1, b'r', 0, 1, 9]),
        WireError::UnknownKind {
            what: "command",
            kind: 9
        }
    );
    assert_eq!(
        unknown(&[
            2,
            kind::DATA,
            1,
            kind::msg::REPLICATE,
            2,
            3,
            1,
            b'r',
            9,
            0x7e
        ]),
        WireError::UnknownKind {
            what: "change",
            kind: 0x7e
        }
    );
    assert_eq!(
        unknown(&[2, kind::DATA, 1, kind::msg::REPLICATED, 2, 1, b'r', 9, 0]),
        WireError::UnknownKind {
            what: "answer",
            kind: 0
        }
    );
    assert_eq!(unknown(&[2, 0x7f]).to_string(), "unknown frame kind 0x7f");
}

#[test]
fn a_forged_length_or_count_is_refused_before_allocating() {
    // A frame text claiming 2^62 bytes.
    let mut forged = vec![2, kind::DATA, 1, kind::msg::EVENT, kind::event::TO_CONN, 1];
    forged.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
    forged.extend(b"{}");
    assert!(matches!(
        PeerFrame::decode(&forged),
        Err(WireError::Truncated { what: "frame", .. })
    ));
    // A snapshot claiming four billion rooms in a few bytes.
    let forged = [
        2,
        kind::DATA,
        1,
        kind::msg::SNAPSHOT,
        2,
        3,
        0xff,
        0xff,
        0xff,
        0xff,
        0x0f,
    ];
    assert!(matches!(
        PeerFrame::decode(&forged),
        Err(WireError::Truncated {
            what: "snapshot rooms",
            ..
        })
    ));
    // A varint that never ends, and one past 64 bits.
    assert!(matches!(
        PeerFrame::decode(&[
            2,
            kind::ACK,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x01
        ]),
        Err(WireError::BadVarint { .. })
    ));
    assert!(matches!(
        PeerFrame::decode(&[
            2,
            kind::ACK,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x02
        ]),
        Err(WireError::BadVarint { .. })
    ));
}

#[test]
fn invalid_names_text_and_tags_are_errors() {
    // A room name with a control character.
    let bad_room = [
        2,
        kind::DATA,
        1,
        kind::msg::EVENT,
        kind::event::LEFT,
        1,
        0x07,
        3,
        0,
    ];
    assert!(matches!(
        PeerFrame::decode(&bad_room),
        Err(WireError::Invalid { what: "room", .. })
    ));
    // A frame that is not UTF-8.
    let bad_text = [
        2,
        kind::DATA,
        1,
        kind::msg::EVENT,
        kind::event::TO_CONN,
        1,
        1,
        0xff,
    ];
    assert_eq!(
        PeerFrame::decode(&bad_text).err(),
        Some(WireError::BadUtf8 { what: "frame" })
    );
    // An option tag of 2.
    let bad_tag = [
        2,
        kind::DATA,
        1,
        kind::msg::EVENT,
        kind::event::LEFT,
        1,
        b'r',
        3,
        2,
    ];
    assert!(matches!(
        PeerFrame::decode(&bad_tag),
        Err(WireError::Invalid { what: "frame", .. })
    ));
    // A shard number past u32.
    let bad_shard = [
        2,
        kind::DATA,
        1,
        kind::msg::SNAPSHOT_ACK,
        0x80,
        0x80,
        0x80,
        0x80,
        0x10,
        1,
    ];
    assert!(matches!(
        PeerFrame::decode(&bad_shard),
        Err(WireError::Invalid { what: "shard", .. })
    ));
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_decode_to_a_frame_or_an_error_never_a_panic(
        bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
        version_and_kind in proptest::option::of((1u8..=1, 1u8..=5)),
    ) {
        let mut bytes = bytes;
        if let Some((version, kind)) = version_and_kind {
            bytes.splice(0..0, [version, kind]);
        }
        let _ = PeerFrame::decode(&bytes);
    }

    #[test]
    fn any_text_and_numbers_round_trip(
        room_name in "[a-z0-9 ]{1,40}",
        frame in ".{0,200}",
        user in ".{0,20}",
        seq in proptest::num::u64::ANY,
        conn in proptest::num::u64::ANY,
        skip in proptest::option::of(proptest::num::u64::ANY),
    ) {
        let room = room(&room_name);
        let msgs = [
            PeerMsg::Event(EdgeEvent::Broadcast {
                room: room.clone(),
                frame: frame.as_str().into(),
                skip: skip.map(ConnId),
                is_msg: true,
            }),
            PeerMsg::Command {
                room: room.clone(),
                command: RoomCommand::Post {
                    member: MemberKey { node: name("n1"), conn: ConnId(conn) },
                    user: user.as_str().into(),
                    text: frame.clone(),
                    cid: Some(user.clone()),
                },
                hops: 3,
                epoch: seq,
            },
        ];
        for msg in msgs {
            let back = PeerFrame::decode(&encode_data(seq, &msg)).expect("decodes");
            proptest::prop_assert_eq!(
                format!("{back:?}"),
                format!("{:?}", PeerFrame::Data { seq, msg })
            );
        }
    }
}
