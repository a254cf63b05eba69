//! The assignment table's JSON form: round trips, the errors for bad input, and its size.

mod common;

use std::collections::BTreeMap;

use common::{Cluster, event, info, node, node_count, shard_count};
use proptest::prelude::*;
use shard::{AssignmentTable, NodeName, PlanOptions, ShardError, ShardId, plan};

fn error_of(text: &str) -> String {
    match AssignmentTable::from_json(text) {
        Ok(table) => format!("unexpectedly parsed: {table:?}"),
        Err(e) => e.to_string(),
    }
}

const EXAMPLE: &str = r#"{
  "format": 1,
  "epoch": 7,
  "shards": 256,
  "nodes": {
    "chat-0": {"peerAddr": "10.0.0.5:7001", "clientAddr": "10.0.0.5:8080"},
    "chat-1": {"peerAddr": "10.0.0.6:7001"}
  },
  "assignments": {"chat-0": "0-127,201", "chat-1": "128-200,202-255"},
  "moves": [{"shard": 201, "from": "chat-1", "to": "chat-0"}],
  "draining": ["chat-1"]
}"#;

#[test]
fn the_documented_example_parses_into_the_table_it_describes() -> Result<(), ShardError> {
    let table = AssignmentTable::from_json(EXAMPLE)?;
    let (a, b) = (NodeName::new("chat-0")?, NodeName::new("chat-1")?);
    assert_eq!(table.epoch, 7);
    assert_eq!(table.shards, 256);
    assert_eq!(table.counts().get(&a), Some(&129));
    assert_eq!(table.counts().get(&b), Some(&127));
    assert_eq!(table.owner(ShardId(201)), Some(&a));
    assert_eq!(table.move_of(ShardId(201)).map(|m| &m.from), Some(&b));
    assert!(table.draining.contains(&b));
    assert_eq!(
        table.nodes.get(&a).and_then(|i| i.client_addr.as_deref()),
        Some("10.0.0.5:8080")
    );
    assert_eq!(
        table.nodes.get(&b).map(|i| i.client_addr.is_none()),
        Some(true)
    );
    Ok(())
}

#[test]
fn writing_uses_ranges_and_leaves_unassigned_shards_out() -> Result<(), ShardError> {
    let (a, b) = (node(0), node(1));
    let nodes = [(a.clone(), info(&a)), (b.clone(), info(&b))];
    let owners = vec![Some(a.clone()), Some(a.clone()), None, Some(b), Some(a)];
    let table = AssignmentTable::with_owners(owners, nodes.into_iter().collect())?;
    let json = table.to_json();
    assert!(
        json.contains(r#""assignments":{"node-0":"0-1,4","node-1":"3"}"#),
        "{json}"
    );
    assert!(
        json.starts_with(r#"{"format":1,"epoch":0,"shards":5,"#),
        "{json}"
    );
    assert_eq!(AssignmentTable::from_json(&json)?, table);
    Ok(())
}

#[test]
fn unknown_fields_are_ignored_everywhere() -> Result<(), ShardError> {
    let text = r#"{"format": 1, "epoch": 1, "shards": 2, "future": [1, 2],
        "nodes": {"a": {"peerAddr": "a:1", "zone": "z1"}},
        "assignments": {"a": "0-1"},
        "moves": [], "draining": []}"#;
    let table = AssignmentTable::from_json(text)?;
    assert_eq!(table.counts().get(&NodeName::new("a")?), Some(&2));
    Ok(())
}

#[test]
fn another_format_number_is_refused_before_anything_else() {
    assert_eq!(
        error_of(r#"{"format": 2, "assignments": [1, 2, 3]}"#),
        "unsupported assignment table format 2 (this version reads format 1)"
    );
}

#[test]
fn a_shard_listed_twice_names_both_nodes() {
    let text = r#"{"format":1,"epoch":1,"shards":16,
        "nodes":{"node-0":{"peerAddr":"a:1"},"node-1":{"peerAddr":"b:1"}},
        "assignments":{"node-0":"0-12","node-1":"12-15"}}"#;
    assert_eq!(
        error_of(text),
        "shard 12 is assigned to both node-0 and node-1"
    );
}

#[test]
fn a_node_listed_twice_in_assignments_is_refused() {
    let text = r#"{"format":1,"epoch":1,"shards":16,"nodes":{"a":{"peerAddr":"a:1"}},
        "assignments":{"a":"0","a":"1"}}"#;
    assert!(error_of(text).contains("node a is listed twice in assignments"));
}

#[test]
fn shards_out_of_range_are_refused() {
    let text = r#"{"format":1,"epoch":1,"shards":16,"nodes":{"a":{"peerAddr":"a:1"}},
        "assignments":{"a":"10-16"}}"#;
    assert_eq!(
        error_of(text),
        "shard 16 is out of range (the table has 16 shards)"
    );
    let text = r#"{"format":1,"epoch":1,"shards":16,"nodes":{"a":{"peerAddr":"a:1"},
        "b":{"peerAddr":"b:1"}},"assignments":{"a":"0"},
        "moves":[{"shard":99,"from":"b","to":"a"}]}"#;
    assert_eq!(
        error_of(text),
        "shard 99 is out of range (the table has 16 shards)"
    );
}

#[test]
fn malformed_ranges_are_refused_with_the_bad_piece() {
    for bad in ["5-2", "x", "1,,2", "-3", "1-2-3"] {
        let text = format!(
            r#"{{"format":1,"epoch":1,"shards":16,"nodes":{{"a":{{"peerAddr":"a:1"}}}},
            "assignments":{{"a":"{bad}"}}}}"#
        );
        let err = error_of(&text);
        assert!(err.starts_with("bad shard range"), "{bad}: {err}");
        assert!(err.ends_with("for node a"), "{bad}: {err}");
    }
}

#[test]
fn owners_and_move_endpoints_must_be_listed_in_nodes() {
    let owner = r#"{"format":1,"epoch":1,"shards":4,"nodes":{},"assignments":{"ghost":"0"}}"#;
    assert_eq!(error_of(owner), "owner ghost is not listed in nodes");
    let source = r#"{"format":1,"epoch":1,"shards":4,"nodes":{"a":{"peerAddr":"a:1"}},
        "assignments":{"a":"0"},"moves":[{"shard":0,"from":"ghost","to":"a"}]}"#;
    assert_eq!(error_of(source), "move source ghost is not listed in nodes");
    let draining = r#"{"format":1,"epoch":1,"shards":4,"nodes":{},"draining":["ghost"]}"#;
    assert_eq!(
        error_of(draining),
        "draining node ghost is not listed in nodes"
    );
}

#[test]
fn zero_shards_and_bad_names_are_refused() {
    assert_eq!(
        error_of(r#"{"format":1,"epoch":1,"shards":0}"#),
        "the shard count must be at least 1"
    );
    let err =
        error_of(r#"{"format":1,"epoch":1,"shards":4,"nodes":{"Bad_Name":{"peerAddr":"x"}}}"#);
    assert!(err.starts_with(r#"invalid node name "Bad_Name""#), "{err}");
    assert!(error_of("not json").starts_with("assignment table is not valid json"));
    assert!(error_of(r#"{"format":1,"epoch":1,"shards":4294967296}"#).contains("maximum"));
}

#[test]
fn the_table_also_works_as_a_serde_value() -> Result<(), serde_json::Error> {
    let table = common::balanced(64, 3);
    let value = serde_json::to_value(&table)?;
    assert_eq!(value["format"], 1);
    let back: AssignmentTable = serde_json::from_value(value)?;
    assert_eq!(back, table);
    let bad: Result<AssignmentTable, _> =
        serde_json::from_str(r#"{"format":3,"epoch":0,"shards":1}"#);
    assert!(bad.is_err());
    Ok(())
}

#[test]
fn the_largest_planned_table_stays_far_below_the_configmap_limit() {
    let table = common::balanced(65536, 200);
    let json = table.to_json();
    assert!(json.len() < 1 << 20, "{} bytes", json.len());
    // Planned from empty, every node's shards form one run.
    assert!(json.len() < 32 * 1024, "{} bytes", json.len());
}

#[test]
fn even_fully_scattered_ownership_fits_in_a_configmap() -> Result<(), ShardError> {
    let nodes: BTreeMap<NodeName, _> = (0..200).map(|i| (node(i), info(&node(i)))).collect();
    // Round-robin: no two consecutive shards on one node, the worst case for ranges.
    let owners = (0..65536).map(|s| Some(node(s % 200))).collect();
    let table = AssignmentTable::with_owners(owners, nodes)?;
    let json = table.to_json();
    assert!(json.len() < 1 << 20, "{} bytes", json.len());
    assert_eq!(AssignmentTable::from_json(&json)?, table);
    Ok(())
}

/// node-0 owns 0-2, node-1 owns 3-4; followers cross over, shard 2 has none.
fn with_followers() -> Result<AssignmentTable, ShardError> {
    let (a, b) = (node(0), node(1));
    let nodes = [
        (a.clone(), info(&a).in_zone("eu-1a")),
        (b.clone(), info(&b)),
    ];
    AssignmentTable::with_roles(
        vec![
            Some(a.clone()),
            Some(a.clone()),
            Some(a.clone()),
            Some(b.clone()),
            Some(b.clone()),
        ],
        vec![
            Some(b.clone()),
            Some(b.clone()),
            None,
            Some(a.clone()),
            Some(a),
        ],
        nodes.into_iter().collect(),
    )
}

#[test]
fn followers_are_written_as_ranges_and_read_back() -> Result<(), ShardError> {
    let table = with_followers()?;
    let json = table.to_json();
    assert!(
        json.contains(r#""followers":{"node-0":"3-4","node-1":"0-1"}"#),
        "{json}"
    );
    assert!(json.contains(r#""zone":"eu-1a""#), "{json}");
    let back = AssignmentTable::from_json(&json)?;
    assert_eq!(back.follower(ShardId(3)), Some(&node(0)));
    assert_eq!(back.follower(ShardId(2)), None);
    assert_eq!(back.followed_by(&node(1)), vec![ShardId(0), ShardId(1)]);
    assert_eq!(back.follower_counts().get(&node(0)), Some(&2));
    assert_eq!(
        back.nodes.get(&node(0)).and_then(|i| i.zone.as_deref()),
        Some("eu-1a")
    );
    assert_eq!(back, table);
    Ok(())
}

#[test]
fn a_table_without_followers_or_zones_is_written_as_before_with_each_members_epoch() {
    // `memberSince` is the only addition (format 1 still): readers from before ignore it, and
    // a table without it reads as members since epoch 0.
    let json = common::balanced(8, 2).to_json();
    assert_eq!(
        json,
        r#"{"format":1,"epoch":1,"shards":8,"nodes":{"node-0":{"peerAddr":"node-0.chat:7001","clientAddr":"node-0.chat:8080","memberSince":1},"node-1":{"peerAddr":"node-1.chat:7001","clientAddr":"node-1.chat:8080","memberSince":1}},"assignments":{"node-0":"0-3","node-1":"4-7"},"moves":[],"draining":[]}"#
    );
    let old = r#"{"format":1,"epoch":1,"shards":8,"nodes":{"node-0":{"peerAddr":"node-0.chat:7001","clientAddr":"node-0.chat:8080"},"node-1":{"peerAddr":"node-1.chat:7001","clientAddr":"node-1.chat:8080"}},"assignments":{"node-0":"0-3","node-1":"4-7"},"moves":[],"draining":[]}"#;
    let read = AssignmentTable::from_json(old).expect("a table from before reads");
    assert!(read.nodes.values().all(|info| info.member_since == 0));
}

#[test]
fn a_reader_that_ignores_followers_still_reads_the_owners() -> Result<(), ShardError> {
    // What a version before followers does: it does not know the field, so it skips it.
    let mut value: serde_json::Value = serde_json::from_str(&with_followers()?.to_json())?;
    if let Some(object) = value.as_object_mut() {
        object.remove("followers");
    }
    let owners_only = AssignmentTable::from_json(&value.to_string())?;
    assert_eq!(owners_only.owners(), with_followers()?.owners());
    assert!(owners_only.followers().iter().all(Option::is_none));
    Ok(())
}

const TWO_NODES: &str = r#""nodes":{"a":{"peerAddr":"a:1"},"b":{"peerAddr":"b:1"}}"#;

fn table_text(rest: &str) -> String {
    format!(
        r#"{{"format":1,"epoch":1,"shards":4,{TWO_NODES},"assignments":{{"a":"0-1","b":"2-3"}},{rest}}}"#
    )
}

#[test]
fn a_follower_that_owns_its_shard_is_refused() {
    assert_eq!(
        error_of(&table_text(r#""followers":{"a":"0"}"#)),
        "inconsistent assignment table: shard 0 is followed by its own owner a"
    );
}

#[test]
fn a_follower_not_listed_in_nodes_is_refused() {
    assert_eq!(
        error_of(&table_text(r#""followers":{"ghost":"0"}"#)),
        "follower ghost is not listed in nodes"
    );
}

#[test]
fn a_node_listed_twice_in_followers_is_refused() {
    assert_eq!(
        error_of(&table_text(r#""followers":{"b":"0","b":"1"}"#)),
        "inconsistent assignment table: node b is listed twice in followers"
    );
}

#[test]
fn a_shard_followed_twice_names_both_nodes() {
    let text = r#"{"format":1,"epoch":1,"shards":4,
        "nodes":{"a":{"peerAddr":"a:1"},"b":{"peerAddr":"b:1"},"c":{"peerAddr":"c:1"}},
        "assignments":{"a":"0-3"},"followers":{"b":"0-1","c":"1"}}"#;
    assert_eq!(error_of(text), "shard 1 is followed by both b and c");
}

#[test]
fn a_follower_of_an_unowned_shard_or_a_draining_follower_is_refused() {
    let unowned = r#"{"format":1,"epoch":1,"shards":4,"nodes":{"a":{"peerAddr":"a:1"},"b":{"peerAddr":"b:1"}},
        "assignments":{"a":"0-2"},"followers":{"b":"3"}}"#;
    assert_eq!(
        error_of(unowned),
        "inconsistent assignment table: shard 3 has follower b but no owner"
    );
    assert_eq!(
        error_of(&table_text(r#""followers":{"b":"0"},"draining":["b"]"#)),
        "inconsistent assignment table: shard 0 is followed by b, which is draining"
    );
}

#[test]
fn the_largest_replicated_table_fits_in_a_configmap() -> Result<(), ShardError> {
    let table = common::balanced_with(65536, 200, 2);
    let json = table.to_json();
    assert!(json.len() < 1 << 20, "{} bytes", json.len());
    assert_eq!(AssignmentTable::from_json(&json)?, table);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_planned_table_round_trips_through_json(
        shards in shard_count(),
        nodes in node_count(),
        events in proptest::collection::vec(event(), 0..5),
        replication in 1u8..=2,
    ) {
        let mut cluster = Cluster::replicated(shards, nodes, replication);
        let options = PlanOptions { replication, ..PlanOptions::default() };
        for e in &events {
            cluster.apply(e);
            cluster.table = plan(&cluster.table, &cluster.membership, &options);
        }
        let json = cluster.table.to_json();
        let back = AssignmentTable::from_json(&json);
        prop_assert_eq!(back.ok(), Some(cluster.table));
    }
}
