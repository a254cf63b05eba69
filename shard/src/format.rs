//! The assignment table's JSON form, format 1. It lives in a Kubernetes ConfigMap (1 MiB limit)
//! and is served over HTTP, so it lists each node's shards as run-length ranges rather than one
//! entry per shard:
//!
//! ```json
//! {
//!   "format": 1,
//!   "epoch": 7,
//!   "shards": 256,
//!   "nodes": {
//!     "chat-0": {"peerAddr": "10.0.0.5:7001", "clientAddr": "10.0.0.5:8080"},
//!     "chat-1": {"peerAddr": "10.0.0.6:7001"}
//!   },
//!   "assignments": {"chat-0": "0-127", "chat-1": "128-200,202-255"},
//!   "followers": {"chat-0": "128-255", "chat-1": "0-127"},
//!   "moves": [{"shard": 201, "from": "chat-1", "to": "chat-0"}],
//!   "draining": ["chat-1"]
//! }
//! ```
//!
//! (There shard 201 is owned by `chat-0`, which is receiving it from `chat-1`.) Unassigned shards
//! appear nowhere. `followers` lists, in the same run-length form, the shards each node follows
//! (keeps a copy of, with replication 2); it is omitted when no shard has a follower, so a
//! replication-1 table is exactly what versions before followers wrote, and those versions read a
//! table with followers by ignoring the field. Unknown fields are ignored so that a newer writer can add some; a different
//! `format` number is refused, because it means the meaning of known fields changed. Reading
//! checks everything [`AssignmentTable::validate`] checks, plus that no shard is listed twice.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::ShardError;
use crate::ids::{NodeName, ShardId};
use crate::table::{AssignmentTable, Move, NodeInfo};

/// The format number this version writes and the only one it reads.
pub const FORMAT: u64 = 1;

/// The largest shard count a table may have. It bounds the memory a table read from outside can
/// make us allocate; a real cluster uses far fewer (65,536 is already generous).
pub const MAX_SHARDS: u32 = 1 << 20;

impl AssignmentTable {
    /// The table as format-1 JSON (see the module doc), compact and deterministic.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .expect("a table serializes to a string: every map key is a string")
    }

    /// Reads a format-1 JSON table and checks it.
    ///
    /// # Errors
    ///
    /// A [`ShardError`] saying what is wrong: not JSON, another format, zero shards, a bad range,
    /// a shard out of range or listed twice, a bad name, or a node used but not listed.
    pub fn from_json(text: &str) -> Result<AssignmentTable, ShardError> {
        // Look at the format first: a table in another format may not even have the shape of
        // this one, and "unsupported format" is the useful error then.
        let probe: FormatProbe = serde_json::from_str(text)?;
        if probe.format != FORMAT {
            return Err(ShardError::UnsupportedFormat(probe.format));
        }
        let wire: WireIn = serde_json::from_str(text)?;
        wire.into_table()
    }
}

impl Serialize for AssignmentTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let wire = WireOut {
            format: FORMAT,
            epoch: self.epoch,
            shards: self.shards,
            nodes: self.nodes.iter().map(|(n, i)| (n.as_str(), i)).collect(),
            assignments: by_node(self.owners()),
            followers: by_node(self.followers()),
            moves: &self.moves,
            draining: self.draining.iter().map(NodeName::as_str).collect(),
        };
        wire.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for AssignmentTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireIn::deserialize(deserializer)?;
        if wire.format != FORMAT {
            return Err(de::Error::custom(ShardError::UnsupportedFormat(
                wire.format,
            )));
        }
        wire.into_table().map_err(de::Error::custom)
    }
}

/// Node -> its shards as ranges, from a per-shard role slice (owners or followers).
fn by_node(roles: &[Option<NodeName>]) -> BTreeMap<&str, String> {
    let mut shards_by_node: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (shard, node) in roles.iter().enumerate() {
        if let Some(node) = node {
            shards_by_node
                .entry(node.as_str())
                .or_default()
                .push(shard as u32);
        }
    }
    shards_by_node
        .into_iter()
        .map(|(node, shards)| (node, ranges_to_string(&shards)))
        .collect()
}

#[derive(Serialize)]
struct WireOut<'a> {
    format: u64,
    epoch: u64,
    shards: u32,
    nodes: BTreeMap<&'a str, &'a NodeInfo>,
    assignments: BTreeMap<&'a str, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    followers: BTreeMap<&'a str, String>,
    moves: &'a [Move],
    draining: Vec<&'a str>,
}

#[derive(Deserialize)]
struct FormatProbe {
    format: u64,
}

#[derive(Deserialize)]
struct WireIn {
    format: u64,
    epoch: u64,
    shards: u64,
    #[serde(default)]
    nodes: BTreeMap<String, NodeInfo>,
    #[serde(default)]
    assignments: Entries,
    #[serde(default)]
    followers: Entries,
    #[serde(default)]
    moves: Vec<WireMove>,
    #[serde(default)]
    draining: Vec<String>,
}

#[derive(Deserialize)]
struct WireMove {
    shard: u64,
    from: String,
    to: String,
}

impl WireIn {
    fn into_table(self) -> Result<AssignmentTable, ShardError> {
        let shards = match u32::try_from(self.shards) {
            Ok(0) => return Err(ShardError::ZeroShards),
            Ok(n) if n <= MAX_SHARDS => n,
            _ => {
                return Err(ShardError::Inconsistent(format!(
                    "the shard count {} is above the maximum of {MAX_SHARDS}",
                    self.shards
                )));
            }
        };
        let mut nodes = BTreeMap::new();
        for (name, info) in self.nodes {
            nodes.insert(NodeName::new(name)?, info);
        }
        let owners = per_shard(self.assignments, shards, "assignments", "assigned to")?;
        let followers = per_shard(self.followers, shards, "followers", "followed by")?;
        let mut moves = Vec::with_capacity(self.moves.len());
        for m in self.moves {
            let shard = u32::try_from(m.shard).ok().filter(|s| *s < shards).ok_or(
                ShardError::ShardOutOfRange {
                    shard: m.shard,
                    shards,
                },
            )?;
            moves.push(Move {
                shard: ShardId(shard),
                from: NodeName::new(m.from)?,
                to: NodeName::new(m.to)?,
            });
        }
        // Writers sort moves; tolerate one that did not, duplicates are still caught below.
        moves.sort();
        let draining = self
            .draining
            .into_iter()
            .map(NodeName::new)
            .collect::<Result<BTreeSet<_>, _>>()?;
        let mut table = AssignmentTable::with_roles(owners, followers, nodes)?;
        table.epoch = self.epoch;
        table.moves = moves;
        table.draining = draining;
        table.validate()?;
        Ok(table)
    }
}

/// One role (owner or follower) per shard from the node -> ranges object `field`, refusing a node
/// listed twice and a shard listed for two nodes. `role` words the error ("assigned to").
fn per_shard(
    entries: Entries,
    shards: u32,
    field: &str,
    role: &'static str,
) -> Result<Vec<Option<NodeName>>, ShardError> {
    if let Some(node) = entries.listed_twice {
        return Err(ShardError::Inconsistent(format!(
            "node {node} is listed twice in {field}"
        )));
    }
    let mut slots: Vec<Option<NodeName>> = vec![None; shards as usize];
    for (name, ranges) in entries.entries {
        let node = NodeName::new(name)?;
        for (first, last) in parse_ranges(&node, &ranges)? {
            if last >= u64::from(shards) {
                return Err(ShardError::ShardOutOfRange {
                    shard: last,
                    shards,
                });
            }
            for shard in first..=last {
                let slot = slots
                    .get_mut(shard as usize)
                    .ok_or(ShardError::ShardOutOfRange { shard, shards })?;
                if let Some(first_node) = slot {
                    return Err(ShardError::DuplicateShard {
                        shard: shard as u32,
                        role,
                        first: first_node.to_string(),
                        second: node.to_string(),
                    });
                }
                *slot = Some(node.clone());
            }
        }
    }
    Ok(slots)
}

/// `assignments` (or `followers`) as the list of its entries, so that a node listed twice is an
/// error instead of the JSON parser silently keeping the last entry.
#[derive(Default)]
struct Entries {
    entries: Vec<(String, String)>,
    /// The first node found listed twice, reported by [`per_shard`] with the field's name.
    listed_twice: Option<String>,
}

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;

        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object mapping node names to shard ranges")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut seen = BTreeSet::new();
                let mut out = Entries::default();
                while let Some((node, ranges)) = map.next_entry::<String, String>()? {
                    if !seen.insert(node.clone()) {
                        out.listed_twice.get_or_insert(node);
                        continue;
                    }
                    out.entries.push((node, ranges));
                }
                Ok(out)
            }
        }

        deserializer.deserialize_map(EntriesVisitor)
    }
}

/// Sorted shard ids as comma-separated runs: `[0, 1, 2, 5, 7, 8]` -> `"0-2,5,7-8"`.
pub(crate) fn ranges_to_string(sorted: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while let Some(&first) = sorted.get(i) {
        let mut last = first;
        i += 1;
        while sorted
            .get(i)
            .is_some_and(|&next| Some(next) == last.checked_add(1))
        {
            last += 1;
            i += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        // Writing to a String cannot fail.
        let _ = if first == last {
            write!(out, "{first}")
        } else {
            write!(out, "{first}-{last}")
        };
    }
    out
}

/// Parses `"0-2,5"` into inclusive `(first, last)` pairs. An empty string is no shards.
fn parse_ranges(node: &NodeName, text: &str) -> Result<Vec<(u64, u64)>, ShardError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let bad = |piece: &str| ShardError::BadRange {
        node: node.to_string(),
        range: piece.to_string(),
    };
    let number = |piece: &str, digits: &str| -> Result<u64, ShardError> {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(piece));
        }
        digits.parse().map_err(|_| bad(piece))
    };
    text.split(',')
        .map(|piece| {
            let (first, last) = match piece.split_once('-') {
                Some((a, b)) => (number(piece, a)?, number(piece, b)?),
                None => {
                    let n = number(piece, piece)?;
                    (n, n)
                }
            };
            if first > last {
                return Err(bad(piece));
            }
            Ok((first, last))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_consecutive_shards_become_ranges() {
        assert_eq!(ranges_to_string(&[]), "");
        assert_eq!(ranges_to_string(&[4]), "4");
        assert_eq!(ranges_to_string(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(
            ranges_to_string(&[u32::MAX - 1, u32::MAX]),
            "4294967294-4294967295"
        );
    }

    #[test]
    fn ranges_parse_back_and_reject_garbage() -> Result<(), ShardError> {
        let node = NodeName::new("n")?;
        assert_eq!(parse_ranges(&node, "0-2,5")?, vec![(0, 2), (5, 5)]);
        for bad in ["5-2", "a", "1-", "-1", "1,,2", " 1", "1-2-3", "+1"] {
            assert!(
                parse_ranges(&node, bad).is_err(),
                "{bad:?} should be refused"
            );
        }
        Ok(())
    }
}
