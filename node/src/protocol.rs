//! The client wire protocol, version 1 (`docs/protocol.md`), in one place.
//!
//! Incoming text frames are parsed into one enum, [`ClientOp`], at the edge of the node, so
//! nothing deeper ever sees raw JSON from a client. Outgoing frames are built here too, as
//! JSON text that is serialized once and then shared by every recipient.
//!
//! [`ClientOp::NAMES`], [`SERVER_OPS`] and [`ErrorCode::ALL`] list the protocol's vocabulary;
//! `node/tests/protocol_doc.rs` fails when `docs/protocol.md` lists a different one.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use shard::RoomId;

/// Error codes of protocol v1. The connection stays open after every one of them; the codes
/// that end a connection are WebSocket close codes, not `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame could not be understood (malformed JSON, unknown op, missing field).
    BadRequest,
    /// The identity was not accepted.
    Unauthorized,
    /// The request is understood but not allowed (for example too many rooms).
    Forbidden,
    /// `send` or `leave` for a room the connection has not joined.
    NotJoined,
    /// `text` is over the configured size limit.
    TooLarge,
    /// The connection is sending faster than its token bucket allows.
    RateLimited,
    /// The room's owner cannot take the request right now (hand-off, owner gone); retry.
    RoomUnavailable,
    /// The node is over a capacity limit (a room's queue is full); retry later.
    Overloaded,
    /// A bug or an unexpected failure inside the node.
    Internal,
}

impl ErrorCode {
    /// Every code, in a fixed order (metrics export them all, even at zero).
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotJoined,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::RoomUnavailable,
        ErrorCode::Overloaded,
        ErrorCode::Internal,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::RoomUnavailable => "room_unavailable",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Internal => "internal",
        }
    }

    /// Position in [`ErrorCode::ALL`], used to index per-code counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client request, parsed and validated. Its strings borrow from the frame it was read from
/// whenever they carry no JSON escapes; they are copied once, into the room command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp<'a> {
    /// Join a room, optionally replaying history after `since`.
    Join { room: RoomId, since: Option<u64> },
    /// Leave a room.
    Leave { room: RoomId },
    /// Post a message to a joined room.
    Send {
        room: RoomId,
        text: Cow<'a, str>,
        cid: Option<Cow<'a, str>>,
    },
    /// Liveness check.
    Ping { cid: Option<Cow<'a, str>> },
}

impl ClientOp<'_> {
    /// Every client op of protocol v1, as named on the wire.
    pub const NAMES: [&'static str; 4] = ["join", "leave", "send", "ping"];

    /// The op's name on the wire (one of [`ClientOp::NAMES`]).
    pub fn name(&self) -> &'static str {
        match self {
            ClientOp::Join { .. } => "join",
            ClientOp::Leave { .. } => "leave",
            ClientOp::Send { .. } => "send",
            ClientOp::Ping { .. } => "ping",
        }
    }

    /// The room the request is about, if any (echoed in errors).
    pub fn room(&self) -> Option<&RoomId> {
        match self {
            ClientOp::Join { room, .. }
            | ClientOp::Leave { room }
            | ClientOp::Send { room, .. } => Some(room),
            ClientOp::Ping { .. } => None,
        }
    }

    /// The client's correlation id, if it gave one.
    pub fn cid(&self) -> Option<&str> {
        match self {
            ClientOp::Send { cid, .. } | ClientOp::Ping { cid } => cid.as_deref(),
            ClientOp::Join { .. } | ClientOp::Leave { .. } => None,
        }
    }
}

/// Why a frame was refused: enough to build the `error` reply, including the `cid` and the
/// `room` when they could be read from the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The protocol error code.
    pub code: ErrorCode,
    /// A human-readable explanation, lowercase.
    pub message: String,
    /// The client's correlation id, when the frame carried a readable one.
    pub cid: Option<String>,
    /// The room, when the frame named a valid one.
    pub room: Option<RoomId>,
}

impl Refusal {
    /// A refusal with no cid or room attached.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            cid: None,
            room: None,
        }
    }

    /// The `error` frame for this refusal.
    pub fn to_frame(&self) -> String {
        error_frame(
            self.code,
            &self.message,
            self.cid.as_deref(),
            self.room.as_ref(),
        )
    }
}

/// The shape every op deserializes from, borrowing from the frame: each field is kept as raw
/// JSON and read per op afterwards, so that the error says exactly which field is missing or
/// of the wrong type.
#[derive(Deserialize)]
struct RawOp<'a> {
    #[serde(borrow)]
    op: Option<&'a RawValue>,
    #[serde(borrow)]
    room: Option<&'a RawValue>,
    #[serde(borrow)]
    since: Option<&'a RawValue>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    #[serde(borrow)]
    cid: Option<&'a RawValue>,
}

/// A JSON string, borrowed from the frame unless it had escapes to undo.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// `raw` as a string; `None` when it is JSON `null`, `Err` for any other type.
fn string<'a>(raw: Option<&'a RawValue>) -> Result<Option<Cow<'a, str>>, ()> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => serde_json::from_str::<Text<'a>>(raw.get())
            .map(|Text(text)| Some(text))
            .map_err(|_| ()),
    }
}

/// Parse one text frame into a [`ClientOp`], enforcing `max_text_bytes` on `send`. The frame is
/// read once; strings in the result borrow from it.
///
/// # Errors
/// A [`Refusal`] with `bad_request` for malformed JSON, a non-object, an unknown op, a missing
/// or mistyped field or an invalid room name; `too_large` for text over the limit.
pub fn parse_client_frame(frame: &str, max_text_bytes: usize) -> Result<ClientOp<'_>, Refusal> {
    if !frame.trim_start().starts_with('{') {
        // A struct would also read from a JSON array: say what is wrong instead.
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(frame) {
            Err(e) => Refusal::new(ErrorCode::BadRequest, format!("malformed json: {e}")),
            Ok(_) => Refusal::new(ErrorCode::BadRequest, "a frame must be a json object"),
        });
    }
    let raw: RawOp<'_> = serde_json::from_str(frame).map_err(|e| {
        let message = if e.is_data() {
            format!("invalid frame: {e}")
        } else {
            format!("malformed json: {e}")
        };
        Refusal::new(ErrorCode::BadRequest, message)
    })?;
    let cid = string(raw.cid)
        .map_err(|()| Refusal::new(ErrorCode::BadRequest, "`cid` must be a string"))?;
    let refuse = |code: ErrorCode, message: String| Refusal {
        code,
        message,
        cid: cid.as_deref().map(str::to_owned),
        room: None,
    };
    let op = match string(raw.op) {
        Ok(Some(op)) => op,
        Ok(None) => {
            return Err(refuse(
                ErrorCode::BadRequest,
                "invalid frame: missing field `op`".to_owned(),
            ));
        }
        Err(()) => {
            return Err(refuse(
                ErrorCode::BadRequest,
                "invalid frame: `op` must be a string".to_owned(),
            ));
        }
    };
    let room = || -> Result<RoomId, Refusal> {
        let name = match string(raw.room) {
            Ok(Some(name)) => name,
            Ok(None) => {
                return Err(refuse(
                    ErrorCode::BadRequest,
                    format!("missing field `room` for op `{op}`"),
                ));
            }
            Err(()) => {
                return Err(refuse(
                    ErrorCode::BadRequest,
                    "invalid room: `room` must be a string".to_owned(),
                ));
            }
        };
        RoomId::new(name).map_err(|e| refuse(ErrorCode::BadRequest, format!("invalid room: {e}")))
    };
    match &*op {
        "join" => {
            let room = room()?;
            let since = match raw.since.map(RawValue::get) {
                None | Some("null") => None,
                Some(since) => Some(serde_json::from_str::<u64>(since).map_err(|_| Refusal {
                    room: Some(room.clone()),
                    ..refuse(
                        ErrorCode::BadRequest,
                        "`since` must be a non-negative integer".to_owned(),
                    )
                })?),
            };
            Ok(ClientOp::Join { room, since })
        }
        "leave" => Ok(ClientOp::Leave { room: room()? }),
        "send" => {
            let room = room()?;
            let in_room = |code, message: String| Refusal {
                room: Some(room.clone()),
                ..refuse(code, message)
            };
            let text = match raw.text {
                None => {
                    return Err(in_room(
                        ErrorCode::BadRequest,
                        "missing field `text` for op `send`".to_owned(),
                    ));
                }
                Some(text) => match string(Some(text)) {
                    Ok(Some(text)) => text,
                    Ok(None) | Err(()) => {
                        return Err(in_room(
                            ErrorCode::BadRequest,
                            "`text` must be a string".to_owned(),
                        ));
                    }
                },
            };
            if text.len() > max_text_bytes {
                return Err(in_room(
                    ErrorCode::TooLarge,
                    format!(
                        "text is {} bytes, the limit is {max_text_bytes} bytes",
                        text.len()
                    ),
                ));
            }
            Ok(ClientOp::Send { room, text, cid })
        }
        "ping" => Ok(ClientOp::Ping { cid }),
        other => Err(refuse(
            ErrorCode::BadRequest,
            format!(
                "unknown op `{other}`, expected one of {}",
                ClientOp::NAMES.join(", ")
            ),
        )),
    }
}

/// A chat message as stored in a room's history and delivered to members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// The room it was posted to.
    pub room: RoomId,
    /// Per-room sequence number, from 1, no gaps.
    pub seq: u64,
    /// Cluster-unique snowflake id, as a decimal string on the wire.
    #[serde(with = "id_as_string")]
    pub id: u64,
    /// The sender's user name.
    pub user: String,
    /// The message text.
    pub text: String,
    /// Unix milliseconds at which the owner accepted it.
    pub ts: u64,
    /// The sender's correlation id, echoed back.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cid: Option<String>,
}

mod id_as_string {
    //! Message ids travel as decimal strings: JavaScript numbers lose precision past 2^53.
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(id)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Every server op of protocol v1, as named on the wire (the `op` of every frame built here).
pub const SERVER_OPS: [&str; 7] = [
    "msg",
    "joined",
    "left",
    "presence",
    "pong",
    "error",
    "reconnect",
];

#[derive(Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum ServerFrame<'a> {
    Msg(&'a ChatMessage),
    Joined {
        room: &'a RoomId,
        seq: u64,
        members: &'a [&'a str],
        history: &'a [&'a RawValue],
    },
    Left {
        room: &'a RoomId,
    },
    Presence {
        room: &'a RoomId,
        user: &'a str,
        event: &'a str,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        cid: Option<&'a str>,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        cid: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a RoomId>,
    },
    Reconnect {
        reason: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        after_ms: Option<u64>,
    },
}

impl ServerFrame<'_> {
    /// The frame's `op`; exhaustive, so a new frame cannot be added without naming it here,
    /// and a test checks the name against serde's and against [`SERVER_OPS`].
    #[cfg(test)]
    fn op(&self) -> &'static str {
        match self {
            ServerFrame::Msg(_) => "msg",
            ServerFrame::Joined { .. } => "joined",
            ServerFrame::Left { .. } => "left",
            ServerFrame::Presence { .. } => "presence",
            ServerFrame::Pong { .. } => "pong",
            ServerFrame::Error { .. } => "error",
            ServerFrame::Reconnect { .. } => "reconnect",
        }
    }
}

fn to_text(frame: &ServerFrame<'_>) -> String {
    // Serializing these plain structs cannot fail: every map key is a string.
    serde_json::to_string(frame).unwrap_or_else(|e| {
        tracing::error!(error = %e, "server frame failed to serialize");
        String::from(r#"{"op":"error","code":"internal","message":"serialization failed"}"#)
    })
}

/// The `msg` frame for a message.
pub fn msg_frame(message: &ChatMessage) -> String {
    to_text(&ServerFrame::Msg(message))
}

/// The `joined` frame; `history` holds `msg` frames as produced by [`msg_frame`].
pub fn joined_frame(room: &RoomId, seq: u64, members: &[&str], history: &[&str]) -> String {
    let raw: Vec<&RawValue> = history
        .iter()
        .filter_map(|text| serde_json::from_str::<&RawValue>(text).ok())
        .collect();
    to_text(&ServerFrame::Joined {
        room,
        seq,
        members,
        history: &raw,
    })
}

/// The `left` frame.
pub fn left_frame(room: &RoomId) -> String {
    to_text(&ServerFrame::Left { room })
}

/// Whether a member came or went, for `presence` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceEvent {
    /// The user's first connection joined the room.
    Join,
    /// The user's last connection left the room.
    Leave,
}

/// The `presence` frame.
pub fn presence_frame(room: &RoomId, user: &str, event: PresenceEvent) -> String {
    let event = match event {
        PresenceEvent::Join => "join",
        PresenceEvent::Leave => "leave",
    };
    to_text(&ServerFrame::Presence { room, user, event })
}

/// The `pong` frame.
pub fn pong_frame(cid: Option<&str>) -> String {
    to_text(&ServerFrame::Pong { cid })
}

/// An `error` frame.
pub fn error_frame(
    code: ErrorCode,
    message: &str,
    cid: Option<&str>,
    room: Option<&RoomId>,
) -> String {
    to_text(&ServerFrame::Error {
        code,
        message,
        cid,
        room,
    })
}

/// The `reconnect` frame sent before the node goes away.
pub fn reconnect_frame(reason: &str, after_ms: Option<u64>) -> String {
    to_text(&ServerFrame::Reconnect { reason, after_ms })
}

#[cfg(test)]
mod tests;
