//! The follower's copies driven directly: changes in order, rooms without a copy, passivated
//! rooms, hand-over for a promotion.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use shard::NodeName;

use super::*;
use crate::edge::ConnId;
use crate::room::MemberKey;

const SHARDS: u32 = 8;

fn room(name: &str) -> RoomId {
    RoomId::new(name).expect("valid room")
}

fn shard_of(name: &str) -> ShardId {
    shard::shard_of(&room(name), SHARDS)
}

fn member(conn: u64) -> MemberKey {
    MemberKey {
        node: NodeName::new("edge").expect("valid"),
        conn: ConnId(conn),
    }
}

fn whole(name: &str, seq: u64) -> Change {
    Change::Whole(RoomSnapshot {
        room: room(name),
        seq,
        history: Vec::new(),
        members: Vec::new(),
    })
}

fn message(seq: u64) -> Change {
    Change::Message {
        seq,
        frame: Utf8Bytes::from(format!("{{\"seq\":{seq}}}")),
    }
}

#[test]
fn a_copy_that_missed_a_message_asks_for_the_whole_room_and_takes_it() {
    let mut copies = Copies::new(SHARDS, 10, 100);
    let (r, s) = (room("lobby"), shard_of("lobby"));
    assert_eq!(copies.apply(s, &r, whole("lobby", 4)), Answer::Held);
    // Seq 5 never came.
    assert_eq!(copies.apply(s, &r, message(6)), Answer::NoCopy);
    assert_eq!(copies.seq(&r), Some(4), "nothing applied over the gap");
    assert_eq!(copies.apply(s, &r, whole("lobby", 6)), Answer::Held);
    assert_eq!(copies.apply(s, &r, message(7)), Answer::Held);
    assert_eq!(copies.seq(&r), Some(7));
}

#[test]
fn a_copy_still_waiting_after_the_patience_is_named_once_per_patience_until_live() {
    let mut copies = Copies::new(SHARDS, 10, 100);
    let (a, b) = (ShardId(1), ShardId(2));
    copies.start(a);
    copies.start(b);
    let start = tokio::time::Instant::now();
    let patience = std::time::Duration::from_secs(2);
    assert!(copies.overdue(start, patience).is_empty(), "not yet");
    copies.caught_up(a, 0, Vec::new());
    let later = start + patience;
    assert_eq!(
        copies.overdue(later, patience),
        [b],
        "the live one is not named"
    );
    assert!(
        copies.overdue(later + patience / 2, patience).is_empty(),
        "asked once per patience"
    );
    assert_eq!(copies.overdue(later + patience, patience), [b]);
    copies.caught_up(b, 0, Vec::new());
    assert!(copies.overdue(later + patience * 3, patience).is_empty());
}

#[test]
fn a_copy_follows_its_owners_changes_in_order_and_ignores_a_repeat() {
    let mut copies = Copies::new(SHARDS, 10, 100);
    let (r, s) = (room("lobby"), shard_of("lobby"));
    assert_eq!(copies.apply(s, &r, whole("lobby", 4)), Answer::Held);
    let joined = Change::Joined {
        member: member(1),
        user: Arc::from("ann"),
    };
    assert_eq!(copies.apply(s, &r, joined), Answer::Held);
    assert_eq!(copies.apply(s, &r, message(5)), Answer::Held);
    assert_eq!(copies.apply(s, &r, message(6)), Answer::Held);
    assert_eq!(copies.apply(s, &r, message(6)), Answer::Held);
    assert_eq!(copies.seq(&r), Some(6));
    let taken = copies.take(s).expect("a copy");
    let snapshot = taken.rooms.iter().find(|x| x.room == r).expect("the room");
    let seqs: Vec<u64> = snapshot.history.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, [5, 6], "each message once, in order");
    assert_eq!(snapshot.members.len(), 1);
}

#[test]
fn a_change_to_a_room_without_a_copy_asks_for_the_whole_room() {
    let mut copies = Copies::new(SHARDS, 10, 100);
    let r = room("lobby");
    assert_eq!(
        copies.apply(shard_of("lobby"), &r, message(1)),
        Answer::NoCopy
    );
    assert_eq!(copies.seq(&r), None, "nothing made up");
}

#[test]
fn a_passivated_room_leaves_its_seq_and_a_promotion_continues_above_it() {
    let mut copies = Copies::new(SHARDS, 10, 100);
    let (r, s) = (room("lobby"), shard_of("lobby"));
    copies.apply(s, &r, whole("lobby", 0));
    copies.apply(s, &r, message(1));
    copies.apply(s, &r, Change::Rested { seq: 1 });
    assert_eq!(copies.rooms(), 0, "a rested room keeps no copy");
    // Running again on its owner: the whole room comes back, its seq never below the rest.
    copies.apply(s, &r, whole("lobby", 0));
    assert_eq!(copies.seq(&r), Some(1));
    copies.apply(s, &r, Change::Rested { seq: 1 });
    copies.caught_up(s, 0, Vec::new());
    let taken = copies.take(s).expect("a copy");
    assert!(taken.rooms.iter().any(|x| x.room == r && x.seq == 1));
    // The owner's floor travels with the copy, and covers what the follower forgot below it.
    copies.caught_up(s, 40, Vec::new());
    assert_eq!(copies.take(s).expect("a copy").floor, 40);
}

#[test]
fn a_shard_is_live_only_after_its_owner_sent_all_of_it_and_is_dropped_when_unfollowed() {
    let mut copies = Copies::new(SHARDS, 10, 100);
    let (r, s) = (room("lobby"), shard_of("lobby"));
    copies.start(s);
    assert_eq!(
        copies.counts(),
        FollowCounts {
            live: 0,
            catching_up: 1
        }
    );
    copies.apply(s, &r, whole("lobby", 2));
    assert!(!copies.is_live(s));
    copies.caught_up(s, 0, Vec::new());
    assert!(copies.is_live(s));
    assert_eq!(
        copies.counts(),
        FollowCounts {
            live: 1,
            catching_up: 0
        }
    );
    copies.drop_copy(s);
    assert_eq!(copies.counts(), FollowCounts::default());
    assert_eq!(copies.rooms(), 0);
    assert!(copies.take(s).is_none());
}

#[test]
fn a_copy_never_goes_back_to_an_older_state_of_a_room() {
    let mut copies = Copies::new(SHARDS, 10, 100);
    let (r, s) = (room("lobby"), shard_of("lobby"));
    copies.start(s);
    assert_eq!(copies.apply(s, &r, whole("lobby", 3)), Answer::Held);
    assert_eq!(copies.apply(s, &r, message(4)), Answer::Held);
    // A late resend from a node that owned the room before: already held.
    assert_eq!(copies.apply(s, &r, whole("lobby", 2)), Answer::Held);
    assert_eq!(copies.seq(&r), Some(4), "the newer state stays");
    assert_eq!(copies.apply(s, &r, Change::Rested { seq: 3 }), Answer::Held);
    assert_eq!(
        copies.seq(&r),
        Some(4),
        "an older passivation does not drop it"
    );
    assert_eq!(copies.apply(s, &r, whole("lobby", 4)), Answer::Held);
    assert_eq!(copies.seq(&r), Some(4));
}

#[test]
fn a_copy_sent_on_by_a_follower_that_goes_on_following_stays() {
    let mut copies = Copies::new(SHARDS, 10, 100);
    let (r, s) = (room("lobby"), shard_of("lobby"));
    copies.start(s);
    copies.apply(s, &r, whole("lobby", 5));
    copies.caught_up(s, 2, Vec::new());
    let sent = copies.snapshot(s).expect("a copy");
    assert!(sent.rooms.iter().any(|x| x.room == r && x.seq == 5));
    assert_eq!(sent.floor, 2);
    assert!(copies.holds(s) && copies.is_live(s), "kept, still live");
    assert_eq!(copies.seq(&r), Some(5));
}

#[test]
fn after_skipped_tables_every_copy_waits_for_its_owner_again() {
    let mut copies = Copies::new(SHARDS, 10, 100);
    let s = shard_of("lobby");
    copies.start(s);
    copies.caught_up(s, 0, Vec::new());
    assert!(copies.is_live(s));
    let patience = std::time::Duration::from_secs(5);
    let since = tokio::time::Instant::now() - patience;
    copies.unsettle(since);
    assert!(!copies.is_live(s));
    assert_eq!(
        copies.overdue(tokio::time::Instant::now(), patience),
        [s],
        "asked for at once"
    );
}
