//! `duty`: what one node does about one shard when it applies a table, from what it holds of
//! it, in the cases that matter most; `composition.rs` runs the same rule through random
//! interleavings.

mod common;

use common::{balanced_with, membership, node};
use shard::{
    AssignmentTable, Duty, Holding, Membership, PlanOptions, RoomsDuty, ShardId, duty, plan,
};

fn replicated() -> PlanOptions {
    PlanOptions {
        replication: 2,
        ..PlanOptions::default()
    }
}

fn plan_for(current: &AssignmentTable, m: &Membership) -> AssignmentTable {
    plan(current, m, &replicated())
}

fn serving() -> Holding {
    Holding {
        serving: true,
        ..Holding::default()
    }
}

fn copy() -> Holding {
    Holding {
        copy: true,
        ..Holding::default()
    }
}

/// Three nodes, then a fourth joins: the moves to it, with the shards' followers.
fn joined() -> (AssignmentTable, AssignmentTable) {
    let before = balanced_with(64, 3, 2);
    let after = plan_for(&before, &membership(0..4, &[]));
    assert!(!after.moves.is_empty());
    (before, after)
}

#[test]
fn the_old_owner_hands_off_and_the_new_one_receives_from_it() {
    let (_, after) = joined();
    let m = after.moves[0].clone();
    let source = duty(&after, &m.from, m.shard, &serving());
    assert_eq!(source.rooms, RoomsDuty::HandOff { to: m.to.clone() });
    assert!(source.keep_frozen, "the source keeps what it sends");
    let target = duty(&after, &m.to, m.shard, &Holding::default());
    assert_eq!(
        target.rooms,
        RoomsDuty::Receive {
            from: m.from.clone()
        }
    );
    // Applying the same table again changes nothing.
    let waiting = Holding {
        receiving: Some(m.from.clone()),
        ..Holding::default()
    };
    assert_eq!(
        duty(&after, &m.to, m.shard, &waiting).rooms,
        RoomsDuty::Keep
    );
    let sending = Holding {
        frozen_for: Some(m.to.clone()),
        ..Holding::default()
    };
    let again = duty(&after, &m.from, m.shard, &sending);
    assert_eq!(again.rooms, RoomsDuty::Keep);
    assert!(again.keep_frozen);
}

/// Seed 620 of the simulation: an owner paused past its failover comes back to a table
/// that moves the shard back to it from the node that served it meanwhile. Its own rooms
/// are an old prefix: it drops them and receives, and a served shard's owner that merely
/// sees the same move again keeps what it installed.
#[test]
fn an_owner_back_from_an_absence_drops_its_stale_rooms_for_the_snapshot() {
    let (_, after) = joined();
    let m = after.moves[0].clone();
    let stale = Holding {
        serving: true,
        stale: true,
        ..Holding::default()
    };
    let back = duty(&after, &m.to, m.shard, &stale);
    assert_eq!(
        back.rooms,
        RoomsDuty::Reclaim {
            from: m.from.clone()
        }
    );
    assert!(!back.keep_frozen);
    // The same rooms are the shard's when the table moves nothing to it.
    let unmoved = (0..64)
        .map(ShardId)
        .find(|&s| after.owner(s) == Some(&m.to) && after.move_of(s).is_none());
    if let Some(shard) = unmoved {
        assert_eq!(duty(&after, &m.to, shard, &stale).rooms, RoomsDuty::Keep);
    }
    // Rooms installed from this very move are not stale: only acknowledged again.
    assert_eq!(
        duty(&after, &m.to, m.shard, &serving()).rooms,
        RoomsDuty::Keep
    );
}

#[test]
fn a_draining_target_keeps_receiving() {
    let (_, after) = joined();
    let m = after.moves[0].clone();
    let drained = plan_for(&after, &membership(0..4, &[3]));
    assert_eq!(drained.move_of(m.shard), Some(&m), "the move goes on");
    let target = duty(&drained, &m.to, m.shard, &Holding::default());
    assert!(matches!(target.rooms, RoomsDuty::Receive { .. }));
}

#[test]
fn a_move_whose_target_left_goes_to_the_follower_which_merges_its_copy() {
    let (_, after) = joined();
    let m = after.moves[0].clone();
    let follower = after.follower(m.shard).expect("a follower").clone();
    let target_left = plan_for(&after, &membership(0..3, &[]));
    let moved = target_left.move_of(m.shard).expect("a move");
    assert_eq!((&moved.from, &moved.to), (&m.from, &follower));
    // The source sends the rooms it froze to the new target, never freezes again.
    let sent = Holding {
        frozen_for: Some(m.to.clone()),
        ..Holding::default()
    };
    let source = duty(&target_left, &m.from, m.shard, &sent);
    assert_eq!(
        source.rooms,
        RoomsDuty::Resend {
            to: follower.clone()
        }
    );
    assert!(source.keep_frozen);
    // The follower receives, keeping its copy to merge with the snapshot.
    let target = duty(&target_left, &follower, m.shard, &copy());
    assert_eq!(
        target.rooms,
        RoomsDuty::Receive {
            from: m.from.clone()
        }
    );
    assert!(target.keep_copy);
}

#[test]
fn a_move_whose_source_left_goes_on_from_the_follower_which_keeps_following() {
    let (_, after) = joined();
    let m = after.moves[0].clone();
    let follower = after.follower(m.shard).expect("a follower").clone();
    let ready: Vec<usize> = (0..4).filter(|i| node(*i) != m.from).collect();
    let source_left = plan_for(&after, &membership(ready, &[]));
    let moved = source_left.move_of(m.shard).expect("a move");
    assert_eq!((&moved.from, &moved.to), (&follower, &m.to));
    assert_eq!(source_left.follower(m.shard), Some(&follower));
    let stand_in = duty(&source_left, &follower, m.shard, &copy());
    assert_eq!(stand_in.rooms, RoomsDuty::SendCopy { to: m.to.clone() });
    assert!(stand_in.keep_copy, "it goes on following");
    // A target still waiting now waits for the follower; one that installed the source's
    // rooms already keeps them (the follower's snapshot is only acknowledged).
    let waiting = Holding {
        receiving: Some(m.from.clone()),
        ..Holding::default()
    };
    assert_eq!(
        duty(&source_left, &m.to, m.shard, &waiting).rooms,
        RoomsDuty::Receive { from: follower }
    );
    assert_eq!(
        duty(&source_left, &m.to, m.shard, &serving()).rooms,
        RoomsDuty::Keep
    );
}

#[test]
fn a_follower_whose_owner_left_serves_from_its_copy() {
    let before = balanced_with(64, 3, 2);
    let shard = ShardId(0);
    let owner = before.owner(shard).expect("an owner").clone();
    let follower = before.follower(shard).expect("a follower").clone();
    let ready: Vec<usize> = (0..3).filter(|i| node(*i) != owner).collect();
    let after = plan_for(&before, &membership(ready, &[]));
    if after.owner(shard) == Some(&follower) && after.move_of(shard).is_none() {
        let promoted = duty(&after, &follower, shard, &copy());
        assert_eq!(promoted.rooms, RoomsDuty::Serve);
        assert!(!promoted.keep_copy, "the copy became the rooms");
    } else {
        let to = after.owner(shard).expect("an owner").clone();
        assert_eq!(
            duty(&after, &follower, shard, &copy()).rooms,
            RoomsDuty::SendCopy { to }
        );
    }
}

#[test]
fn a_source_whose_hand_off_was_acknowledged_sends_nothing_more_until_the_target_changes() {
    let (_, after) = joined();
    let m = after.moves[0].clone();
    let handed = Holding {
        handed_to: Some(m.to.clone()),
        ..Holding::default()
    };
    assert_eq!(
        duty(&after, &m.from, m.shard, &handed).rooms,
        RoomsDuty::Keep
    );
    // The target left before the operator saw the move done: the follower merges its own copy
    // with an empty snapshot (it holds everything the target acknowledged).
    let target_left = plan_for(&after, &membership(0..3, &[]));
    let moved = target_left.move_of(m.shard).expect("a move");
    assert_eq!(
        duty(&target_left, &m.from, m.shard, &handed).rooms,
        RoomsDuty::SendEmpty {
            to: moved.to.clone()
        }
    );
}

#[test]
fn a_shard_given_back_to_its_source_is_served_from_the_frozen_rooms() {
    let (before, after) = joined();
    let m = after.moves[0].clone();
    // A table that has the source own the shard again, with no move.
    let back = before.clone();
    let sent = Holding {
        frozen_for: Some(m.to.clone()),
        ..Holding::default()
    };
    let d = duty(&back, &m.from, m.shard, &sent);
    assert_eq!(
        d,
        Duty {
            rooms: RoomsDuty::Serve,
            keep_frozen: false,
            keep_copy: false,
            start_copy: false,
        }
    );
}

#[test]
fn with_every_node_draining_owners_keep_serving() {
    let before = balanced_with(16, 2, 2);
    let after = plan_for(&before, &membership(0..2, &[0, 1]));
    for shard in (0..16).map(ShardId) {
        let owner = after.owner(shard).expect("still owned").clone();
        assert_eq!(
            duty(&after, &owner, shard, &serving()).rooms,
            RoomsDuty::Keep
        );
    }
}

#[test]
fn a_node_with_no_role_stops_serving_stops_receiving_and_drops_what_it_kept() {
    let (_, after) = joined();
    let shard = ShardId(0);
    let outsider = node(9);
    let everything = Holding {
        serving: true,
        receiving: None,
        frozen_for: Some(node(3)),
        copy: true,
        handed_to: None,
        stale: true,
    };
    let d = duty(&after, &outsider, shard, &everything);
    assert_eq!(d.rooms, RoomsDuty::Stop);
    assert!(!d.keep_frozen && !d.keep_copy && !d.start_copy);
    let waiting = Holding {
        receiving: Some(node(1)),
        ..Holding::default()
    };
    assert_eq!(
        duty(&after, &outsider, shard, &waiting).rooms,
        RoomsDuty::StopReceiving
    );
}

#[test]
fn a_node_newly_named_follower_starts_a_copy() {
    let (before, after) = joined();
    let newcomer = node(3);
    let shard = (0..64)
        .map(ShardId)
        .find(|&s| after.follower(s) == Some(&newcomer) && before.follower(s) != Some(&newcomer))
        .expect("the newcomer follows some shard");
    let d = duty(&after, &newcomer, shard, &Holding::default());
    assert_eq!(d.rooms, RoomsDuty::Keep);
    assert!(d.start_copy && !d.keep_copy);
    assert!(!duty(&after, &newcomer, shard, &copy()).start_copy);
}
