//! Each member's view of a room stays in seq order at the edge, whatever the owners do.
//!
//! A member's messages normally come from one owner, in order, over one link. Around a change
//! of owner they can come from two: a hand-off that gave up waiting for a lagging edge (a
//! partition, a slow node) lets the new owner's first messages overtake the old owner's last
//! ones on their way to that edge, and an edge that was out of the cluster for a while may get
//! the new owner's messages before it re-joined. So the edge remembers, for each member of each
//! room, the last seq it gave it, and checks every message against it:
//!
//! - the next one is delivered;
//! - one at or below it is dropped (the member has it: a late message of the old owner, or one
//!   its `joined` history carried already);
//! - one further ahead means the member missed some: it is sent away (a `reconnect` frame,
//!   then close 1013), before it sees the message, and re-joins with `since` = its last seq,
//!   which replays what it missed from the room's history. Nothing past the gap reaches it on
//!   this connection, so a client that counts seqs never skips the missing ones.
//!
//! A `joined` sets the member's seq (its history covers what came before; a room that
//! restarted from nothing says seq 0, which starts the count again).

use std::borrow::Cow;

use serde::Deserialize;
use shard::RoomId;

/// What to do with a message for one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Deliver it; the member's seq moves to it.
    Deliver,
    /// The member has it already: drop it.
    Repeat,
    /// The member missed messages before it: send the member away to re-join.
    Gap,
}

/// What to do with message `seq` for a member last given `seen` (`None`: nothing counted
/// yet). A member that joined an empty room has seen 0, and its next message is seq 1: seq 0
/// is a count like any other (seed 303 of the simulation: a member given seq 3 after joining
/// at 0 missed two messages, and was not told).
pub(super) fn step(seen: Option<u64>, seq: u64) -> Step {
    match seen {
        None => Step::Deliver,
        Some(seen) if seq == seen + 1 => Step::Deliver,
        Some(seen) if seq <= seen => Step::Repeat,
        Some(_) => Step::Gap,
    }
}

/// The `seq` of a `msg` or `joined` frame as this node's protocol encodes them: the first
/// `"seq":` in the text. Nothing before it can hold one (`op` and `room` come first, and a quote
/// inside a room name is escaped, so `"seq":` cannot appear in it); user text comes after. Hot:
/// one search per message per edge, not a JSON parse.
pub(super) fn frame_seq(frame: &str) -> Option<u64> {
    let at = frame.find(r#""seq":"#)? + r#""seq":"#.len();
    let rest = &frame[at..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

/// The room and seq of a `msg` frame sent to one connection alone (its own message's echo);
/// `None` for any other frame. Parsed properly: one per send, not per delivery.
pub(super) fn echo_of(frame: &str) -> Option<(RoomId, u64)> {
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        room: Cow<'a, str>,
        seq: u64,
    }
    if !frame.starts_with(r#"{"op":"msg""#) {
        return None;
    }
    let head: Head<'_> = serde_json::from_str(frame).ok()?;
    Some((RoomId::new(head.room.into_owned()).ok()?, head.seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ChatMessage, joined_frame, msg_frame};

    fn message(room: &str, seq: u64, text: &str) -> String {
        msg_frame(&ChatMessage {
            room: RoomId::new(room).expect("room"),
            seq,
            id: 77,
            user: "u\"seq\":9".into(),
            text: text.into(),
            ts: 1,
            cid: None,
        })
    }

    #[test]
    fn the_seq_is_read_from_the_frames_this_node_encodes_whatever_the_names_and_text_hold() {
        // A room name and a text made to look like a seq field.
        let tricky = r#"a","seq":5,"x":""#;
        assert_eq!(frame_seq(&message(tricky, 42, r#""seq":1"#)), Some(42));
        assert_eq!(frame_seq(&message("lobby", 1, "hi")), Some(1));
        let history = [message(tricky, 6, "a").clone()];
        let history: Vec<&str> = history.iter().map(String::as_str).collect();
        let joined = joined_frame(
            &RoomId::new(tricky).expect("room"),
            6,
            &["\"seq\":3"],
            &history,
        );
        assert_eq!(frame_seq(&joined), Some(6));
        assert_eq!(frame_seq(r#"{"op":"presence","room":"r"}"#), None);
        assert_eq!(frame_seq("m1"), None);
    }

    #[test]
    fn an_echo_names_its_room_and_seq_and_nothing_else_is_an_echo() {
        let tricky = r#"a","seq":5,"x":""#;
        assert_eq!(
            echo_of(&message(tricky, 42, "hi")),
            Some((RoomId::new(tricky).expect("room"), 42))
        );
        assert_eq!(
            echo_of(r#"{"op":"error","code":"overloaded","room":"r","cid":"c"}"#),
            None
        );
        assert_eq!(echo_of("not json"), None);
    }

    #[test]
    fn the_next_message_is_delivered_an_old_one_dropped_and_a_jump_is_a_gap() {
        assert_eq!(step(None, 17), Step::Deliver, "nothing counted yet");
        assert_eq!(
            step(Some(0), 1),
            Step::Deliver,
            "the first of an empty room"
        );
        assert_eq!(step(Some(0), 3), Step::Gap, "joined empty, two missed");
        assert_eq!(step(Some(29), 30), Step::Deliver);
        assert_eq!(step(Some(29), 29), Step::Repeat);
        assert_eq!(
            step(Some(43), 30),
            Step::Repeat,
            "a late message of the old owner"
        );
        assert_eq!(step(Some(29), 40), Step::Gap);
    }
}
