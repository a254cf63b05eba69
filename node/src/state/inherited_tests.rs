//! A process restarted while the table still names its node an owner leaves those shards to
//! their followers: it serves none of their rooms, sends their followers nothing, and is not
//! ready until a table gives the shards elsewhere.

use shard::{AssignmentTable, RoomId, ShardId};

use super::handoff_tests::{SHARDS, join_from_b, name, node_c, table, three_nodes};
use super::*;
use crate::rooms::RouteError;

/// Every shard owned by `owner` and followed by `follower`.
fn owned_by(epoch: u64, owner: &str, follower: &str) -> AssignmentTable {
    let owners = vec![Some(name(owner)); SHARDS as usize];
    let followers = vec![Some(name(follower)); SHARDS as usize];
    let mut table =
        AssignmentTable::with_roles(owners, followers, three_nodes()).expect("valid table");
    table.epoch = epoch;
    table
}

#[tokio::test(start_paused = true)]
async fn a_restarted_owner_serves_none_of_its_old_shards_until_the_table_gives_them_away() {
    let (state, peers) = node_c(1000);
    assert!(!state.inheritance_settled(), "not ready before it looked");
    // Another process of this pod ran before; the table the source held when this one
    // started gives node-c everything.
    state.restarted_in_place();
    let starting = owned_by(3, "node-c", "node-a");
    state.inherit(Some(&starting));
    assert!(
        !state.inheritance_settled(),
        "not ready while it is given old shards"
    );
    assert!(state.apply_table(starting).await);

    let room = RoomId::new("r").expect("valid room");
    let join = RoomCommand::Join {
        member: crate::room::MemberKey {
            node: name("node-b"),
            conn: ConnId(1),
        },
        user: "bob".into(),
        since: None,
    };
    assert!(matches!(
        state.route(&room, join).await,
        Err(RouteError::Unavailable)
    ));
    assert_eq!(state.rooms.active(), 0, "no room started from nothing");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        peers.outbox(&name("node-a")).is_empty(),
        "nothing goes to the follower, whose copy is the only one: {:?}",
        peers.outbox(&name("node-a"))
    );
    assert_eq!(
        state.table().shards_of(&name("node-c")),
        Vec::<ShardId>::new()
    );
    assert_eq!(state.metrics.shards_inherited.get(), i64::from(SHARDS));

    // The operator saw the pod unready: the follower owns the shards now.
    assert!(state.apply_table(owned_by(4, "node-a", "node-b")).await);
    assert!(state.inheritance_settled(), "ready again");
    assert_eq!(state.metrics.shards_inherited.get(), 0);

    // Given back by hand-off, as to any new member, the shards are its own.
    assert!(
        state
            .apply_table(table(5, "node-a", Some((ShardId(0), "node-c"))))
            .await
    );
    assert_eq!(state.table().owner(ShardId(0)), Some(&name("node-c")));
}

#[tokio::test(start_paused = true)]
async fn a_process_that_is_not_a_restart_owns_what_the_table_gives_it() {
    let (state, _peers) = node_c(1000);
    // A fresh pod, or a node run by hand against a table written before it started.
    let starting = owned_by(3, "node-c", "node-a");
    state.inherit(Some(&starting));
    assert!(state.inheritance_settled());
    assert!(state.apply_table(starting).await);
    assert_eq!(
        state.table().shards_of(&name("node-c")).len(),
        SHARDS as usize
    );
    join_from_b(&state, &RoomId::new("r").expect("valid room"), 1).await;
    assert_eq!(state.rooms.active(), 1);
}
