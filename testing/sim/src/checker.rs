//! The promises, checked against what the clients saw and what every room holds at the end.
//!
//! Each check states a promise, not a scenario (Jepsen's way): after any run whose failures
//! stayed within what two copies survive,
//!
//! 1. every acknowledged message is in its room's history, once, at the seq it was
//!    acknowledged with;
//! 2. no seq of a room is ever given to two different messages (one owner per room at a time),
//!    across everything anyone saw;
//! 3. each member sees a room's messages in seq order, with no gap it was not told about (a
//!    `joined` tells it: its history covers what came before);
//! 4. one connection's messages to a room get seqs in the order it sent them;
//! 5. nothing was silently reset: a room whose seq went back is reported (within the promise
//!    there is none);
//! 6. a send answered with an error was not taken: it is never delivered (a client that
//!    retries it would post it twice).

use std::collections::BTreeMap;

use crate::clients::{Observations, Seen};

/// What the checker found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Acknowledged messages checked.
    pub acknowledged: u64,
    /// Messages every room holds at the end.
    pub held: u64,
    /// Each broken promise, in words.
    pub violations: Vec<String>,
}

/// Check `seen` against `rooms`, each room's history at the end (`(seq, id)` in order, from a
/// join with `since: 0`).
pub fn check(seen: &Observations, rooms: &BTreeMap<String, Vec<(u64, u64)>>) -> Verdict {
    let mut verdict = Verdict {
        acknowledged: seen.acks.len() as u64,
        held: rooms.values().map(|h| h.len() as u64).sum(),
        violations: Vec::new(),
    };
    let mut fail = |what: String| {
        if verdict.violations.len() < 20 {
            verdict.violations.push(what);
        }
    };

    // The rooms' histories are whole: seq 1, 2, ... with nothing missing.
    for (room, history) in rooms {
        for (i, (seq, _)) in history.iter().enumerate() {
            if *seq != i as u64 + 1 {
                fail(format!(
                    "room {room}'s history is not whole at position {i}: seq {seq}"
                ));
                break;
            }
        }
    }

    // 2. One message per seq, over everything seen.
    let mut ids: BTreeMap<(String, u64), u64> = BTreeMap::new();
    let mut claim = |room: &str, seq: u64, id: u64, fail: &mut dyn FnMut(String)| match ids
        .insert((room.to_owned(), seq), id)
    {
        Some(other) if other != id => fail(format!(
            "room {room}: seq {seq} was given to two messages ({other} and {id})"
        )),
        _ => {}
    };
    for (room, history) in rooms {
        for (seq, id) in history {
            claim(room, *seq, *id, &mut fail);
        }
    }
    for ack in &seen.acks {
        claim(&ack.room, ack.seq, ack.id, &mut fail);
    }
    for ((_, _, room), events) in &seen.seen {
        for event in events {
            match event {
                Seen::Msg { seq, id } => claim(room, *seq, *id, &mut fail),
                Seen::Joined { history, .. } => {
                    for (seq, id) in history {
                        claim(room, *seq, *id, &mut fail);
                    }
                }
            }
        }
    }

    // 1. Every acknowledged message is in its room at its seq (rooms that could not be read
    // are reported by the caller).
    for ack in seen.acks.iter().filter(|a| rooms.contains_key(&a.room)) {
        let held = rooms
            .get(&ack.room)
            .and_then(|h| h.get((ack.seq as usize).wrapping_sub(1)))
            .copied();
        if held != Some((ack.seq, ack.id)) {
            fail(format!(
                "acknowledged {} (seq {} id {}) in room {} is not in its history (there: {held:?})",
                ack.cid, ack.seq, ack.id, ack.room
            ));
        }
    }

    // 3 and 5. Each member's view: in order, no silent gap, no reset.
    let mut newest: BTreeMap<(u32, &str), u64> = BTreeMap::new();
    for ((client, connection, room), events) in &seen.seen {
        let mut at: Option<u64> = None;
        for event in events {
            match event {
                Seen::Joined { seq, history } => {
                    let top = history.last().map_or(*seq, |(s, _)| (*s).max(*seq));
                    let before = newest.get(&(*client, room.as_str())).copied().unwrap_or(0);
                    if top < before {
                        fail(format!(
                            "client {client} saw room {room} go back from seq {before} to {top} (connection {connection}): a reset"
                        ));
                    }
                    at = Some(top);
                }
                Seen::Msg { seq, .. } => {
                    match at {
                        Some(now) if *seq <= now => {} // a repeat, dropped by id
                        Some(now) if *seq == now + 1 => at = Some(*seq),
                        Some(now) => {
                            fail(format!(
                                "client {client} (connection {connection}) got seq {seq} of room {room} after {now}: a gap nobody announced"
                            ));
                            at = Some(*seq);
                        }
                        None => fail(format!(
                            "client {client} (connection {connection}) got seq {seq} of room {room} before joining it"
                        )),
                    }
                }
            }
            if let Some(now) = at {
                let best = newest.entry((*client, room.as_str())).or_insert(0);
                *best = (*best).max(now);
            }
        }
    }

    // 4. Per-sender order: one connection's sends to a room.
    let seq_of: BTreeMap<&str, u64> = seen.acks.iter().map(|a| (a.cid.as_str(), a.seq)).collect();
    for ((client, _, room), cids) in &seen.sends {
        let mut last = 0;
        for cid in cids {
            if let Some(&seq) = seq_of.get(cid.as_str()) {
                if seq <= last {
                    fail(format!(
                        "client {client}'s {cid} in room {room} got seq {seq} after an earlier send got {last}"
                    ));
                }
                last = seq;
            }
        }
    }

    // 6. A refused send is never delivered.
    for ack in &seen.acks {
        if let Some(code) = seen.refused.get(&ack.cid) {
            fail(format!(
                "{} in room {} was refused ({code}) and delivered too, at seq {}",
                ack.cid, ack.room, ack.seq
            ));
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::Ack;

    fn ack(room: &str, cid: &str, seq: u64, id: u64) -> Ack {
        Ack {
            room: room.to_owned(),
            cid: cid.to_owned(),
            seq,
            id,
        }
    }

    fn rooms(history: &[(u64, u64)]) -> BTreeMap<String, Vec<(u64, u64)>> {
        BTreeMap::from([("r".to_owned(), history.to_vec())])
    }

    #[test]
    fn a_run_that_kept_every_promise_passes() {
        let mut seen = Observations {
            acks: vec![ack("r", "c1-1", 1, 10), ack("r", "c1-2", 2, 11)],
            ..Observations::default()
        };
        seen.sends
            .insert((1, 1, "r".to_owned()), vec!["c1-1".into(), "c1-2".into()]);
        seen.seen.insert(
            (1, 1, "r".to_owned()),
            vec![
                Seen::Joined {
                    seq: 0,
                    history: vec![],
                },
                Seen::Msg { seq: 1, id: 10 },
                Seen::Msg { seq: 2, id: 11 },
            ],
        );
        let verdict = check(&seen, &rooms(&[(1, 10), (2, 11)]));
        assert!(verdict.violations.is_empty(), "{verdict:?}");
        assert_eq!(verdict.acknowledged, 2);
    }

    #[test]
    fn a_refused_send_that_was_delivered_is_found() {
        let mut seen = Observations {
            acks: vec![ack("r", "c1-1", 1, 10)],
            ..Observations::default()
        };
        seen.refused
            .insert("c1-1".to_owned(), "room_unavailable".to_owned());
        let verdict = check(&seen, &rooms(&[(1, 10)]));
        assert_eq!(verdict.violations.len(), 1, "{verdict:?}");
        assert!(verdict.violations[0].contains("refused (room_unavailable)"));
    }

    #[test]
    fn a_lost_acknowledged_message_is_found() {
        let seen = Observations {
            acks: vec![ack("r", "c1-1", 1, 10), ack("r", "c1-2", 2, 11)],
            ..Observations::default()
        };
        let verdict = check(&seen, &rooms(&[(1, 10)]));
        assert_eq!(verdict.violations.len(), 1, "{verdict:?}");
        assert!(verdict.violations[0].contains("c1-2"));
    }

    #[test]
    fn a_seq_given_twice_is_found() {
        let mut seen = Observations::default();
        seen.seen.insert(
            (2, 1, "r".to_owned()),
            vec![
                Seen::Joined {
                    seq: 0,
                    history: vec![],
                },
                Seen::Msg { seq: 1, id: 99 },
            ],
        );
        let verdict = check(&seen, &rooms(&[(1, 10)]));
        assert!(
            verdict
                .violations
                .iter()
                .any(|v| v.contains("two messages")),
            "{verdict:?}"
        );
    }

    #[test]
    fn a_silent_gap_and_a_reset_are_found() {
        let mut seen = Observations::default();
        seen.seen.insert(
            (3, 1, "r".to_owned()),
            vec![
                Seen::Joined {
                    seq: 0,
                    history: vec![],
                },
                Seen::Msg { seq: 1, id: 10 },
                Seen::Msg { seq: 3, id: 12 },
            ],
        );
        seen.seen.insert(
            (3, 2, "r".to_owned()),
            vec![Seen::Joined {
                seq: 1,
                history: vec![(1, 10)],
            }],
        );
        let verdict = check(&seen, &rooms(&[(1, 10), (2, 11), (3, 12)]));
        assert!(
            verdict.violations.iter().any(|v| v.contains("gap")),
            "{verdict:?}"
        );
        assert!(
            verdict.violations.iter().any(|v| v.contains("reset")),
            "{verdict:?}"
        );
    }

    #[test]
    fn sends_acknowledged_out_of_order_are_found() {
        let mut seen = Observations {
            acks: vec![ack("r", "c1-1", 2, 11), ack("r", "c1-2", 1, 10)],
            ..Observations::default()
        };
        seen.sends
            .insert((1, 1, "r".to_owned()), vec!["c1-1".into(), "c1-2".into()]);
        let verdict = check(&seen, &rooms(&[(1, 10), (2, 11)]));
        assert!(
            verdict
                .violations
                .iter()
                .any(|v| v.contains("after an earlier send")),
            "{verdict:?}"
        );
    }
}
