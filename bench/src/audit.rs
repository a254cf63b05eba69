//! After a load run: read every room's whole history (`join` with `since: 0`) and count the
//! rooms whose history is cut, i.e. not exactly seq 1, 2, ... up to the room's seq. A room
//! that restarted empty on a new owner (a lost hand-off) shows as a cut; so does a room whose
//! history outgrew the nodes' `--history-per-room`, so run with a limit above the messages a
//! room gets.

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
}

/// Whether `history` (the seqs of a `joined`'s history, in order) is whole up to `seq`.
pub fn history_whole(seq: u64, history: &[u64]) -> bool {
    history.len() as u64 == seq && history.iter().copied().eq(1..=seq)
}

/// Reads rooms `{prefix}-0 .. {prefix}-{rooms-1}` over connections spread on `nodes`.
pub async fn audit(nodes: &[NodeAddr], prefix: &str, rooms: usize) -> HistoryAudit {
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
        let part = audit_chunk(node, prefix, i, chunk).await;
        result.cut += part.cut;
        result.messages += part.messages;
        result.unreadable += part.unreadable;
    }
    result
}

async fn audit_chunk(node: &NodeAddr, prefix: &str, index: usize, rooms: &[usize]) -> HistoryAudit {
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
                if !history_whole(seq, &history) {
                    part.cut += 1;
                }
            }
            _ => part.unreadable += 1,
        }
    }
    let _ = ws.close(None).await;
    part
}

/// The next `joined` for `room`: its seq and its history's seqs.
async fn joined<S>(ws: &mut S, room: &str) -> Option<(u64, Vec<u64>)>
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
                .filter_map(|m| m["seq"].as_u64())
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
}
