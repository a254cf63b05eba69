//! What nodes say to each other over a peer link, in an explicit, versioned binary encoding.
//!
//! Every frame is one binary WebSocket message: a format version byte
//! ([`PEER_WIRE_VERSION`]), a kind byte ([`kind`]), then the kind's fields in a fixed order.
//! Integers are LEB128 varints, strings and client frames are length-prefixed bytes (a client
//! frame crosses a link as its raw bytes: no JSON escaping on one side and unescaping on the
//! other), optional values are a `0`/`1` tag then the value. Nothing depends on the order of
//! Rust enum variants, so reordering code cannot silently change what goes over the wire; the
//! golden vectors in the tests catch any change of the encoding.
//!
//! Decoding never panics and never allocates from a length it has not checked against the
//! bytes present; a client frame's text is a slice of the received message, not a copy.
//! Data frames carry a per-link sequence number so that what a broken link may have lost is
//! resent after it comes back (see [`super::link`]). The layout of each kind is in
//! `docs/peer-links.md`.

mod codec;
mod messages;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use shard::{NodeName, RoomId, ShardId};

use crate::edge::EdgeEvent;
use crate::replication::{Answer, Change};
use crate::room::{RoomCommand, RoomSnapshot};
use codec::{Reader, Writer};
use messages::{get_msg, put_msg};

/// The peer wire format this node speaks. A frame with another version is refused as a whole
/// (there is no partial understanding), and a peer whose handshake uses another version is
/// refused with a log line saying which.
pub const PEER_WIRE_VERSION: u8 = 2;

/// The kind bytes, one namespace per level. Never reuse a retired number.
pub mod kind {
    /// Acceptor -> dialer, first frame.
    pub const CHALLENGE: u8 = 0x01;
    /// Dialer -> acceptor, answering the challenge.
    pub const PROOF: u8 = 0x02;
    /// Acceptor -> dialer, the handshake's last frame.
    pub const WELCOME: u8 = 0x03;
    /// A numbered [`super::PeerMsg`].
    pub const DATA: u8 = 0x04;
    /// Everything up to a seq arrived.
    pub const ACK: u8 = 0x05;

    /// Message kinds inside a data frame.
    pub mod msg {
        /// A room operation for the room's owner.
        pub const COMMAND: u8 = 0x01;
        /// An owner's event for an edge.
        pub const EVENT: u8 = 0x02;
        /// A shard's rooms, old owner -> new owner.
        pub const SNAPSHOT: u8 = 0x03;
        /// The new owner installed the snapshot.
        pub const SNAPSHOT_ACK: u8 = 0x04;
        /// Events for some rooms could not be queued (a full outbox).
        pub const GAP: u8 = 0x05;
        /// Owner -> follower: one change to a room's copy.
        pub const REPLICATE: u8 = 0x06;
        /// Follower -> owner: its answer to one change.
        pub const REPLICATED: u8 = 0x07;
        /// Owner -> follower: the whole shard has been sent.
        pub const CAUGHT_UP: u8 = 0x08;
        /// Acknowledge at once (a sender waits for it).
        pub const ACK_NOW: u8 = 0x09;
        /// Follower -> owner: send the shard whole, this node holds no live copy.
        pub const SEND_COPY: u8 = 0x0a;
    }

    /// Change kinds inside a replicate message.
    pub mod change {
        /// The room's whole state.
        pub const WHOLE: u8 = 0x01;
        /// A message took a seq.
        pub const MESSAGE: u8 = 0x02;
        /// A member joined.
        pub const JOINED: u8 = 0x03;
        /// A member left.
        pub const LEFT: u8 = 0x04;
        /// An edge node's members are gone.
        pub const NODE_LEFT: u8 = 0x05;
        /// The room passivated.
        pub const RESTED: u8 = 0x06;
    }

    /// A follower's answers.
    pub mod answer {
        /// Applied.
        pub const HELD: u8 = 0x01;
        /// The sender does not own the shard.
        pub const FENCED: u8 = 0x02;
        /// No copy of the room to apply it to.
        pub const NO_COPY: u8 = 0x03;
    }

    /// Room command kinds inside a command message.
    pub mod command {
        /// Join (or re-sync).
        pub const JOIN: u8 = 0x01;
        /// Leave.
        pub const LEAVE: u8 = 0x02;
        /// Post a message.
        pub const POST: u8 = 0x03;
        /// Drop an edge's members.
        pub const DROP_NODE: u8 = 0x04;
    }

    /// Edge event kinds inside an event message.
    pub mod event {
        /// A connection joined.
        pub const JOINED: u8 = 0x01;
        /// A connection left.
        pub const LEFT: u8 = 0x02;
        /// A frame for one connection.
        pub const TO_CONN: u8 = 0x03;
        /// A frame for a room's local members.
        pub const BROADCAST: u8 = 0x04;
    }
}

/// Why bytes are not a peer frame this node understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A message with no bytes at all.
    #[error("empty peer frame")]
    Empty,
    /// The sender speaks another version of this format.
    #[error(
        "peer wire format version {found} is not supported (this node speaks {PEER_WIRE_VERSION})"
    )]
    UnsupportedVersion {
        /// The version byte received.
        found: u8,
    },
    /// A kind byte this version does not define.
    #[error("unknown {what} kind {kind:#04x}")]
    UnknownKind {
        /// Which level: frame, message, command or event.
        what: &'static str,
        /// The byte received.
        kind: u8,
    },
    /// A field, or a length or count, runs past the end of the message.
    #[error("truncated peer frame: {what} needs {needed} bytes, {left} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes it claims.
        needed: u64,
        /// Bytes present.
        left: usize,
    },
    /// A varint longer than 64 bits.
    #[error("{what} is not a valid varint")]
    BadVarint {
        /// The field being read.
        what: &'static str,
    },
    /// A string that is not UTF-8.
    #[error("{what} is not valid UTF-8")]
    BadUtf8 {
        /// The field being read.
        what: &'static str,
    },
    /// A field whose value is out of its range (a bad name, tag or boolean).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The field being read.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Bytes after the last field.
    #[error("{0} unexpected bytes after the peer frame")]
    Trailing(usize),
}

/// A message between two nodes.
#[derive(Debug, Clone)]
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
        /// The highest seq the old owner forgot in the shard: the new owner's floor for it
        /// rises to at least this, so a forgotten room never repeats a seq after the move.
        floor: u64,
        rooms: Vec<RoomSnapshot>,
    },
    /// The new owner confirms it started the shard from the snapshot.
    SnapshotAck { shard: ShardId, epoch: u64 },
    /// Owner -> edge, once the outbox has room again: events for `rooms` (for every room the
    /// sender owns when `all`) could not be queued while it was full. The edge tells those
    /// rooms' members to reconnect and re-join with `since`, which replays what they missed.
    Gap { rooms: Vec<RoomId>, all: bool },
    /// Owner -> follower: change `rid` to `room`'s copy. `epoch` is the owner's table: a
    /// follower whose table says someone else owns the shard refuses it (fencing).
    Replicate {
        shard: ShardId,
        epoch: u64,
        room: RoomId,
        rid: u64,
        change: Change,
    },
    /// Follower -> owner: its answer to change `rid`.
    Replicated {
        shard: ShardId,
        room: RoomId,
        rid: u64,
        answer: Answer,
    },
    /// Owner -> follower: every room of `shard` has been sent (ahead of this, on the same
    /// link); here are the shard's floor and its passivated rooms. The copy is live now.
    CaughtUp {
        shard: ShardId,
        epoch: u64,
        floor: u64,
        resting: Vec<(RoomId, u64)>,
    },
    /// Acknowledge what you handled at once, this included, rather than on the next tick:
    /// the sender waits for it (a hand-off's old owner, before its snapshot leaves). The
    /// receiving link handles it; it goes no further.
    AckNow,
    /// Follower -> owner: this node follows `shard` in its table at `epoch` and still has no
    /// live copy of it. An owner that skipped the table that took the role away never saw
    /// the follower change, and would go on believing its copy current: it sends the shard
    /// whole again.
    SendCopy { shard: ShardId, epoch: u64 },
}

/// A frame on a peer link.
#[derive(Debug, Clone)]
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

fn header(kind: u8) -> Writer {
    header_with_capacity(kind, 32)
}

fn header_with_capacity(kind: u8, capacity: usize) -> Writer {
    let mut w = Writer {
        buf: Vec::with_capacity(capacity),
    };
    w.u8(PEER_WIRE_VERSION);
    w.u8(kind);
    w
}

/// Enough bytes for most data frames in one allocation: an event is mostly its client frame.
fn size_hint(msg: &PeerMsg) -> usize {
    let frame = match msg {
        PeerMsg::Event(
            EdgeEvent::Joined { frame, .. }
            | EdgeEvent::ToConn { frame, .. }
            | EdgeEvent::Broadcast { frame, .. },
        ) => frame.len(),
        PeerMsg::Command {
            command: RoomCommand::Post { text, .. },
            ..
        } => text.len(),
        PeerMsg::Replicate {
            change: Change::Message { frame, .. },
            ..
        } => frame.len(),
        _ => 0,
    };
    frame + 160
}

/// Encode a data frame without copying its message.
pub fn encode_data(seq: u64, msg: &PeerMsg) -> Vec<u8> {
    let mut w = header_with_capacity(kind::DATA, size_hint(msg));
    w.varint(seq);
    put_msg(&mut w, msg);
    w.buf
}

impl PeerFrame {
    /// The frame as the bytes of a binary WebSocket message.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            PeerFrame::Challenge {
                node,
                incarnation,
                nonce,
            } => {
                let mut w = header(kind::CHALLENGE);
                w.str(node.as_str());
                w.varint(*incarnation);
                w.str(nonce);
                w.buf
            }
            PeerFrame::Proof {
                node,
                incarnation,
                mac,
                nonce,
                last_received,
            } => {
                let mut w = header(kind::PROOF);
                w.str(node.as_str());
                w.varint(*incarnation);
                w.str(mac);
                w.str(nonce);
                w.varint(*last_received);
                w.buf
            }
            PeerFrame::Welcome { mac, last_received } => {
                let mut w = header(kind::WELCOME);
                w.str(mac);
                w.varint(*last_received);
                w.buf
            }
            PeerFrame::Data { seq, msg } => encode_data(*seq, msg),
            PeerFrame::Ack { seq } => {
                let mut w = header(kind::ACK);
                w.varint(*seq);
                w.buf
            }
        }
    }

    /// Parse a binary message (copies it first; the link uses [`PeerFrame::decode_shared`]).
    /// The entry point the fuzz target drives.
    ///
    /// # Errors
    /// [`WireError`] for bytes that are not a whole frame of [`PEER_WIRE_VERSION`].
    pub fn decode(bytes: &[u8]) -> Result<PeerFrame, WireError> {
        PeerFrame::decode_shared(&Bytes::copy_from_slice(bytes))
    }

    /// Parse a received binary message; client frames in it are slices of `bytes`.
    ///
    /// # Errors
    /// [`WireError`] for bytes that are not a whole frame of [`PEER_WIRE_VERSION`].
    pub fn decode_shared(bytes: &Bytes) -> Result<PeerFrame, WireError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("version").map_err(|_| WireError::Empty)?;
        if version != PEER_WIRE_VERSION {
            return Err(WireError::UnsupportedVersion { found: version });
        }
        let frame = match r.u8("frame kind")? {
            kind::CHALLENGE => PeerFrame::Challenge {
                node: r.node("node")?,
                incarnation: r.varint("incarnation")?,
                nonce: r.str("nonce")?.to_owned(),
            },
            kind::PROOF => PeerFrame::Proof {
                node: r.node("node")?,
                incarnation: r.varint("incarnation")?,
                mac: r.str("mac")?.to_owned(),
                nonce: r.str("nonce")?.to_owned(),
                last_received: r.varint("last received")?,
            },
            kind::WELCOME => PeerFrame::Welcome {
                mac: r.str("mac")?.to_owned(),
                last_received: r.varint("last received")?,
            },
            kind::DATA => PeerFrame::Data {
                seq: r.varint("seq")?,
                msg: get_msg(&mut r)?,
            },
            kind::ACK => PeerFrame::Ack {
                seq: r.varint("seq")?,
            },
            other => {
                return Err(WireError::UnknownKind {
                    what: "frame",
                    kind: other,
                });
            }
        };
        r.finish()?;
        Ok(frame)
    }
}
