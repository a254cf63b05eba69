//! The protocol v1 frames the bench sends and the ones it reads (`docs/protocol.md`).
//!
//! The bench is an outside client: it depends on the written protocol, not on the node's
//! `protocol` module, so a silent change on the node side shows up here as a failure.
//!
//! Latency is measured without shared state: a message's text starts with its scheduled send
//! time and the time it was written to the socket (microseconds since the bench started, one
//! clock for every task), so each receiver computes both on its own: from the due time (a late
//! send is not flattering) and from the write (what the nodes took, without the bench's own
//! timer and task hops before the write).

use serde::{Deserialize, Serialize};

/// Separates the embedded times from the padding in a message's text.
const TIME_MARK: char = '|';
/// Separates the due time from the write time.
const STAMP_MARK: char = ',';

/// When a message was due and when it was written, in µs on the bench's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamps {
    /// When the room's pacer asked for it.
    pub due_us: u64,
    /// When the sender wrote it to its socket.
    pub written_us: u64,
}

#[derive(Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum ClientFrame<'a> {
    Join {
        room: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
    },
    Send {
        room: &'a str,
        text: &'a str,
        cid: &'a str,
    },
    Ping {
        cid: &'a str,
    },
}

fn to_text(frame: &ClientFrame<'_>) -> String {
    // Plain structs of strings and integers always serialize; keep a valid frame regardless.
    serde_json::to_string(frame).unwrap_or_else(|_| String::from(r#"{"op":"ping"}"#))
}

/// `join`, with `since` when resuming after a reconnect.
pub fn join(room: &str, since: Option<u64>) -> String {
    to_text(&ClientFrame::Join { room, since })
}

/// `send` with a correlation id, so the echo or the refusal can be matched to it.
pub fn send(room: &str, text: &str, cid: &str) -> String {
    to_text(&ClientFrame::Send { room, text, cid })
}

/// `ping`, used by idle connections to know the node serves them.
pub fn ping(cid: &str) -> String {
    to_text(&ClientFrame::Ping { cid })
}

/// A message text of `len` bytes (or just the time stamps, if longer) carrying `stamps`.
pub fn message_text(stamps: Stamps, len: usize) -> String {
    let mut text = format!(
        "{}{STAMP_MARK}{}{TIME_MARK}",
        stamps.due_us, stamps.written_us
    );
    if text.len() < len {
        text.extend(std::iter::repeat_n('x', len - text.len()));
    }
    text
}

/// The times embedded by [`message_text`], if the text is one of ours.
pub fn stamps(text: &str) -> Option<Stamps> {
    let (due, written) = text.split_once(TIME_MARK)?.0.split_once(STAMP_MARK)?;
    Some(Stamps {
        due_us: due.parse().ok()?,
        written_us: written.parse().ok()?,
    })
}

/// A frame from a node, as far as the bench cares; unknown ops are tolerated.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ServerFrame {
    /// A chat message.
    Msg(WireMsg),
    /// Answer to `join`.
    Joined {
        /// The room joined.
        room: String,
        /// The room's last seq when the join was served.
        seq: u64,
        /// Messages after `since` (or the room's recent history without it).
        #[serde(default)]
        history: Vec<WireMsg>,
    },
    /// A refused request.
    Error {
        /// The protocol error code.
        code: String,
        /// The explanation.
        #[serde(default)]
        message: String,
        /// The refused `send`'s cid.
        #[serde(default)]
        cid: Option<String>,
        /// The room concerned.
        #[serde(default)]
        room: Option<String>,
    },
    /// The node is going away.
    Reconnect {
        /// Why.
        #[serde(default)]
        reason: String,
        /// How long to wait before reconnecting.
        #[serde(default)]
        after_ms: Option<u64>,
    },
    /// Answer to `ping`.
    Pong {
        /// The ping's cid.
        #[serde(default)]
        cid: Option<String>,
    },
    /// `presence`, `left` and anything newer: nothing to measure.
    #[serde(other)]
    Other,
}

/// A `msg` frame's fields the bench checks.
#[derive(Debug, Deserialize)]
pub struct WireMsg {
    /// The room.
    pub room: String,
    /// Per-room sequence number.
    pub seq: u64,
    /// Cluster-unique id, a decimal string on the wire.
    pub id: String,
    /// Sender's user name.
    pub user: String,
    /// Text, carrying the send time when the bench sent it.
    pub text: String,
    /// Sender's correlation id.
    #[serde(default)]
    pub cid: Option<String>,
}

/// Parse a text frame from a node.
///
/// # Errors
/// The JSON error, for a frame that is not a protocol v1 server frame.
pub fn parse(frame: &str) -> Result<ServerFrame, serde_json::Error> {
    serde_json::from_str(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_times_survive_the_text_at_any_length() {
        let sent = Stamps {
            due_us: 123_456,
            written_us: 123_789,
        };
        for len in [0, 5, 64, 1000] {
            let text = message_text(sent, len);
            assert_eq!(stamps(&text), Some(sent));
            assert_eq!(text.len(), len.max("123456,123789|".len()));
        }
        assert_eq!(stamps("hello"), None);
        assert_eq!(stamps("x|y"), None);
        assert_eq!(stamps("1|y"), None);
        assert_eq!(stamps("1,x|y"), None);
    }

    #[test]
    fn client_frames_follow_the_protocol() {
        assert_eq!(join("r", None), r#"{"op":"join","room":"r"}"#);
        assert_eq!(join("r", Some(7)), r#"{"op":"join","room":"r","since":7}"#);
        assert_eq!(
            send("r", "t", "c1"),
            r#"{"op":"send","room":"r","text":"t","cid":"c1"}"#
        );
        assert_eq!(ping("p"), r#"{"op":"ping","cid":"p"}"#);
    }

    #[test]
    fn server_frames_parse_and_unknown_ops_are_other() {
        let msg =
            r#"{"op":"msg","room":"r","seq":3,"id":"99","user":"u","text":"1|x","ts":1,"cid":"c"}"#;
        match parse(msg) {
            Ok(ServerFrame::Msg(m)) => {
                assert_eq!(
                    (m.seq, m.id.as_str(), m.cid.as_deref()),
                    (3, "99", Some("c"))
                );
            }
            other => panic!("{other:?}"),
        }
        let joined =
            format!(r#"{{"op":"joined","room":"r","seq":3,"members":["u"],"history":[{msg}]}}"#);
        assert!(
            matches!(parse(&joined), Ok(ServerFrame::Joined { seq: 3, history, .. }) if history.len() == 1)
        );
        assert!(matches!(
            parse(r#"{"op":"error","code":"rate_limited","message":"m","cid":"c"}"#),
            Ok(ServerFrame::Error { code, cid: Some(_), .. }) if code == "rate_limited"
        ));
        assert!(matches!(
            parse(r#"{"op":"reconnect","reason":"drain","after_ms":0}"#),
            Ok(ServerFrame::Reconnect {
                after_ms: Some(0),
                ..
            })
        ));
        assert!(matches!(
            parse(r#"{"op":"presence","room":"r","user":"u","event":"join"}"#),
            Ok(ServerFrame::Other)
        ));
        assert!(parse("[]").is_err());
    }
}
