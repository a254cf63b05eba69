//! What nodes say to each other over a peer link, and how a link proves both ends hold the
//! cluster secret.
//!
//! Frames are binary WebSocket messages in postcard (compact, serde-driven): a client frame
//! crosses a link as its raw bytes, with no JSON escaping on one side and unescaping on the
//! other, which is most of what a link costs per message. Data frames carry a per-link sequence
//! number so that what a broken link may have lost is resent after it comes back.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use shard::{NodeName, RoomId, ShardId};

use crate::edge::EdgeEvent;
use crate::room::{RoomCommand, RoomSnapshot};

/// A message between two nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerMsg {
    /// An edge (or a forwarding node) sends a room operation to the room's owner. `hops` counts
    /// forwards, so tables that disagree for a moment cannot bounce a command forever.
    Command {
        room: RoomId,
        command: RoomCommand,
        hops: u8,
        /// The sender's table epoch: a receiver with an older table waits for that one before
        /// it decides who owns the room.
        epoch: u64,
    },
    /// An owner tells an edge node about a room (once per node, not per member).
    Event(EdgeEvent),
    /// The old owner hands a shard's rooms to the new owner.
    Snapshot {
        shard: ShardId,
        epoch: u64,
        rooms: Vec<RoomSnapshot>,
    },
    /// The new owner confirms it started the shard from the snapshot.
    SnapshotAck { shard: ShardId, epoch: u64 },
}

/// A frame on a peer link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerFrame {
    /// Acceptor -> dialer, first: who the acceptor is, and a nonce to sign.
    Challenge {
        node: NodeName,
        incarnation: u64,
        nonce: String,
    },
    /// Dialer -> acceptor: who the dialer is, the signed nonce, a nonce of its own, and how
    /// far it got in the acceptor's stream (for resending).
    Proof {
        node: NodeName,
        incarnation: u64,
        mac: String,
        nonce: String,
        last_received: u64,
    },
    /// Acceptor -> dialer: the dialer's nonce signed, and how far the acceptor got.
    Welcome { mac: String, last_received: u64 },
    /// One message, numbered within the sender's stream on this link.
    Data { seq: u64, msg: PeerMsg },
    /// Everything up to `seq` arrived.
    Ack { seq: u64 },
}

/// The borrowed twin of [`PeerFrame::Data`], serialized identically, so that sending a queued
/// message does not copy it first. The encoding names a variant by its position, so the
/// variants before `Data` stand in for [`PeerFrame`]'s (a test checks they stay in step).
#[derive(Serialize)]
#[allow(dead_code)]
enum PeerFrameRef<'a> {
    Challenge,
    Proof,
    Welcome,
    Data { seq: u64, msg: &'a PeerMsg },
}

/// Encode a data frame without copying its message.
pub fn encode_data(seq: u64, msg: &PeerMsg) -> Vec<u8> {
    postcard::to_allocvec(&PeerFrameRef::Data { seq, msg }).unwrap_or_default()
}

impl PeerFrame {
    /// The frame as the bytes of a binary WebSocket message.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Parse a binary message.
    ///
    /// # Errors
    /// The decoding error for bytes that are not a peer frame.
    pub fn decode(bytes: &[u8]) -> Result<PeerFrame, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// The MAC over what a handshake proves: protocol version, role, the other side's nonce, and
/// the signer's name (so a proof cannot be replayed for another node or role).
fn handshake_mac(secret: &[u8], role: &str, nonce: &str, node: &NodeName) -> Option<Hmac<Sha256>> {
    // HMAC accepts keys of any length, so this only fails on an impossible key.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    for part in [
        b"roomshard-peer-v1".as_slice(),
        role.as_bytes(),
        nonce.as_bytes(),
        node.as_str().as_bytes(),
    ] {
        mac.update(part);
        mac.update(b"|");
    }
    Some(mac)
}

/// Sign `nonce` for `node` in `role` with the cluster secret (HMAC-SHA256, hex).
pub fn sign(secret: &[u8], role: &str, nonce: &str, node: &NodeName) -> String {
    handshake_mac(secret, role, nonce, node)
        .map(|mac| hex::encode(mac.finalize().into_bytes()))
        .unwrap_or_default()
}

/// Check a signature from [`sign`] in constant time.
pub fn verify(secret: &[u8], role: &str, nonce: &str, node: &NodeName, mac_hex: &str) -> bool {
    let Ok(expected) = hex::decode(mac_hex) else {
        return false;
    };
    handshake_mac(secret, role, nonce, node).is_some_and(|mac| mac.verify_slice(&expected).is_ok())
}

/// A fresh random nonce.
pub fn nonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_the_same_secret_nonce_role_and_node() {
        let node = NodeName::new("node-1").expect("valid");
        let other = NodeName::new("node-2").expect("valid");
        let mac = sign(b"s3cret", "dialer", "abc", &node);
        assert!(verify(b"s3cret", "dialer", "abc", &node, &mac));
        assert!(!verify(b"other", "dialer", "abc", &node, &mac));
        assert!(!verify(b"s3cret", "acceptor", "abc", &node, &mac));
        assert!(!verify(b"s3cret", "dialer", "abd", &node, &mac));
        assert!(!verify(b"s3cret", "dialer", "abc", &other, &mac));
        assert!(!verify(b"s3cret", "dialer", "abc", &node, "not hex"));
    }

    #[test]
    fn a_borrowed_data_frame_decodes_as_the_owned_one() {
        let msg = PeerMsg::SnapshotAck {
            shard: ShardId(4),
            epoch: 9,
        };
        let frame = PeerFrame::decode(&encode_data(3, &msg)).expect("decodes");
        assert!(matches!(
            frame,
            PeerFrame::Data {
                seq: 3,
                msg: PeerMsg::SnapshotAck { epoch: 9, .. }
            }
        ));
    }

    #[test]
    fn every_message_kind_round_trips_through_the_binary_encoding() {
        use crate::edge::ConnId;
        use crate::room::MemberKey;
        let room = RoomId::new("lobby \u{1F600} \"quoted\"").expect("room");
        let member = MemberKey {
            node: NodeName::new("node-2").expect("name"),
            conn: ConnId(7),
        };
        let frame = r#"{"op":"msg","text":"a \"b\" \n c"}"#;
        let msgs = [
            PeerMsg::Command {
                room: room.clone(),
                command: RoomCommand::Post {
                    member: member.clone(),
                    user: "ann".into(),
                    text: "hi".into(),
                    cid: None,
                },
                hops: 2,
                epoch: 9,
            },
            PeerMsg::Command {
                room: room.clone(),
                command: RoomCommand::Join {
                    member: member.clone(),
                    user: "ann".into(),
                    since: Some(4),
                },
                hops: 0,
                epoch: 1,
            },
            PeerMsg::Event(EdgeEvent::Broadcast {
                room: room.clone(),
                frame: frame.into(),
                skip: Some(ConnId(3)),
                is_msg: true,
            }),
            PeerMsg::Event(EdgeEvent::Left {
                room: room.clone(),
                conn: ConnId(1),
                frame: None,
            }),
            PeerMsg::Event(EdgeEvent::Left {
                room: room.clone(),
                conn: ConnId(1),
                frame: Some(frame.into()),
            }),
            PeerMsg::Snapshot {
                shard: ShardId(12),
                epoch: 3,
                rooms: vec![RoomSnapshot {
                    room: room.clone(),
                    seq: 41,
                    history: vec![(41, frame.to_owned())],
                    members: vec![(member, "ann".into())],
                }],
            },
            PeerMsg::SnapshotAck {
                shard: ShardId(12),
                epoch: 3,
            },
        ];
        for (seq, msg) in msgs.iter().enumerate() {
            let decoded = PeerFrame::decode(&encode_data(seq as u64, msg)).expect("decodes");
            let PeerFrame::Data { msg: back, .. } = decoded else {
                panic!("not a data frame");
            };
            assert_eq!(format!("{back:?}"), format!("{msg:?}"));
        }
    }

    #[test]
    fn frames_round_trip_and_garbage_is_an_error() {
        let frame = PeerFrame::Ack { seq: 9 };
        let back = PeerFrame::decode(&frame.encode()).expect("decodes");
        assert!(matches!(back, PeerFrame::Ack { seq: 9 }));
        assert!(PeerFrame::decode(b"\x00\x01garbage").is_err());
    }
}
