//! After a load run: read every room's whole history (`join` with `since: 0`) and count the
//! rooms whose history is cut, i.e. not exactly seq 1, 2, ... up to the room's seq. A room
//! that restarted empty on a new owner (a lost hand-off) shows as a cut; so does a room whose
//! history outgrew the nodes' `--history-per-room`, so run with a limit above the messages a
//! room gets. Then check that every message whose sender got its echo (its acknowledgement)
//! is in its room's history under the same seq and id: a room that lost state and filled up
//! again from seq 1 has a whole history, but not the messages it acknowledged before.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use crate::args::NodeAddr;

/// Rooms read over one connection: within a node's default burst of 100 frames.
const ROOMS_PER_CONNECTION: usize = 40;

/// How long one `joined` answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the audit found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HistoryAudit {
    /// Rooms read.
    pub rooms: usize,
    /// Rooms whose history is not seq 1..=seq with nothing missing or out of order.
    pub cut: usize,
    /// Messages the rooms hold in all.
    pub messages: u64,
    /// Rooms that could not be read (no answer, connection failed).
    pub unreadable: usize,
    /// Acknowledged messages looked for.
    pub acknowledged: u64,
    /// Acknowledged messages not in their room's history (under their seq, with their id).
    pub acknowledged_missing: u64,
}

/// Whether `history` (the seqs of a `joined`'s history, in order) is whole up to `seq`.
pub fn history_whole(seq: u64, history: &[u64]) -> bool {
    history.len() as u64 == seq && history.iter().copied().eq(1..=seq)
}

/// How many of `acknowledged` (`(seq, id)`) are not in `history` (`(seq, id)`, in seq order).
pub fn missing(acknowledged: &[(u64, String)], history: &[(u64, String)]) -> u64 {
    acknowledged
        .iter()
        .filter(|(seq, id)| {
            history
                .binary_search_by_key(seq, |(s, _)| *s)
                .map_or(true, |i| &history[i].1 != id)
        })
        .count() as u64
}

/// Reads rooms `{prefix}-0 .. {prefix}-{n-1}` over connections spread on `nodes`, `n` being
/// the number of rooms in `acknowledged` (each room's acknowledged messages, by index).
pub async fn audit(
    nodes: &[NodeAddr],
    prefix: &str,
    acknowledged: &[Vec<(u64, String)>],
) -> HistoryAudit {
    let rooms = acknowledged.len();
    let mut result = HistoryAudit {
        rooms,
        ..HistoryAudit::default()
    };
    let chunks: Vec<Vec<usize>> = (0..rooms)
        .collect::<Vec<_>>()
        .chunks(ROOMS_PER_CONNECTION)
        .map(<[usize]>::to_vec)
        .collect();
    for (i, chunk) in chunks.iter().enumerate() {
        if nodes.is_empty() {
            result.unreadable += chunk.len();
            continue;
        }
        let node = &nodes[i % nodes.len()];
        let part = audit_chunk(node, prefix, i, chunk, acknowledged).await;
        result.cut += part.cut;
        result.messages += part.messages;
        result.unreadable += part.unreadable;
        result.acknowledged += part.acknowledged;
        result.acknowledged_missing += part.acknowledged_missing;
    }
    result
}

async fn audit_chunk(
    node: &NodeAddr,
    prefix: &str,
    index: usize,
    rooms: &[usize],
    acknowledged: &[Vec<(u64, String)>],
) -> HistoryAudit {
    let mut part = HistoryAudit::default();
    let url = format!("{}/ws?user={prefix}-auditor-{index}", node.base);
    let Ok(Ok((mut ws, _))) = tokio::time::timeout(
        ANSWER_TIMEOUT,
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    else {
        part.unreadable = rooms.len();
        return part;
    };
    for &r in rooms {
        let room = format!("{prefix}-{r}");
        let join = serde_json::json!({"op": "join", "room": room, "since": 0}).to_string();
        if ws.send(Message::Text(join.into())).await.is_err() {
            part.unreadable += 1;
            continue;
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, joined(&mut ws, &room)).await {
            Ok(Some((seq, history))) => {
                part.messages += seq;
                let seqs: Vec<u64> = history.iter().map(|(s, _)| *s).collect();
                if !history_whole(seq, &seqs) {
                    part.cut += 1;
                }
                let acked = &acknowledged[r];
                part.acknowledged += acked.len() as u64;
                part.acknowledged_missing += missing(acked, &history);
            }
            _ => part.unreadable += 1,
        }
    }
    let _ = ws.close(None).await;
    part
}

/// The next `joined` for `room`: its seq and its history's `(seq, id)`s.
async fn joined<S>(ws: &mut S, room: &str) -> Option<(u64, Vec<(u64, String)>)>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(frame) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
            continue;
        };
        if frame["op"] == "joined" && frame["room"] == room {
            let seq = frame["seq"].as_u64()?;
            let history = frame["history"]
                .as_array()?
                .iter()
                .filter_map(|m| Some((m["seq"].as_u64()?, m["id"].as_str()?.to_owned())))
                .collect();
            return Some((seq, history));
        }
        if frame["op"] == "error" && frame["room"] == room {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_is_whole_only_from_seq_1_to_the_rooms_seq_in_order() {
        assert!(history_whole(3, &[1, 2, 3]));
        assert!(history_whole(0, &[]));
        assert!(!history_whole(3, &[2, 3]), "the start is cut");
        assert!(!history_whole(3, &[1, 3, 2]), "out of order");
        assert!(!history_whole(4, &[1, 2, 3]), "the end is missing");
    }

    #[test]
    fn an_acknowledged_message_counts_as_missing_unless_its_seq_holds_its_id() {
        let m = |seq: u64, id: &str| (seq, id.to_owned());
        let history = [m(1, "a"), m(2, "b"), m(3, "c")];
        assert_eq!(missing(&[m(1, "a"), m(3, "c")], &history), 0);
        assert_eq!(
            missing(&[m(2, "x")], &history),
            1,
            "another message took its seq"
        );
        assert_eq!(
            missing(&[m(4, "d")], &history),
            1,
            "beyond the room's history"
        );
        assert_eq!(missing(&[], &history), 0);
    }
}
