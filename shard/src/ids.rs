//! Newtypes for the three things roomshard names: rooms, shards and nodes.
//!
//! Names arrive from clients (room names) and from the Kubernetes API (pod names), so they are
//! validated once, at construction, and every later use can trust them. Deserializing validates
//! too, so a table read from a ConfigMap cannot smuggle in a bad name.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ShardError;

/// The longest room name accepted, in bytes. Long enough for any human name, short enough that
/// room names cannot be used to bloat snapshots and routing messages.
pub const MAX_ROOM_BYTES: usize = 128;

/// The longest node name accepted, in bytes: the DNS-1123 subdomain limit Kubernetes applies to
/// pod names.
pub const MAX_NODE_BYTES: usize = 253;

/// A validated room name: 1..=128 bytes of UTF-8 without control characters.
///
/// Control characters are refused because room names end up in logs and status lines, where they
/// could forge or garble output.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoomId(String);

impl RoomId {
    /// Validates `name` as a room name.
    ///
    /// # Errors
    ///
    /// [`ShardError::InvalidRoomId`] when the name is empty, longer than 128 bytes or contains a
    /// control character.
    pub fn new(name: impl Into<String>) -> Result<RoomId, ShardError> {
        let name = name.into();
        if name.is_empty() {
            return Err(ShardError::InvalidRoomId("the name is empty".into()));
        }
        if name.len() > MAX_ROOM_BYTES {
            return Err(ShardError::InvalidRoomId(format!(
                "the name is {} bytes long (at most {MAX_ROOM_BYTES})",
                name.len()
            )));
        }
        if let Some((at, _)) = name.char_indices().find(|(_, c)| c.is_control()) {
            return Err(ShardError::InvalidRoomId(format!(
                "the name contains a control character at byte {at}"
            )));
        }
        Ok(RoomId(name))
    }

    /// The room name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for RoomId {
    type Error = ShardError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        RoomId::new(name)
    }
}

impl From<RoomId> for String {
    fn from(room: RoomId) -> String {
        room.0
    }
}

/// A shard index, `0..shards`. Rooms hash to shards; shards, not rooms, are what the planner
/// assigns to nodes, so the table stays small however many rooms there are.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct ShardId(pub u32);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A node (pod) name, validated as a DNS-1123 subdomain like Kubernetes does for pod names:
/// 1..=253 bytes of lowercase ASCII letters, digits, `-` and `.`, where every dot-separated label
/// starts and ends with a letter or digit.
///
/// It is an `Arc<str>` inside because the table names a node once per shard it owns: cloning must
/// be cheap.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(Arc<str>);

impl NodeName {
    /// Validates `name` as a node name.
    ///
    /// # Errors
    ///
    /// [`ShardError::InvalidNodeName`] when the name is not a DNS-1123 subdomain.
    pub fn new(name: impl Into<String>) -> Result<NodeName, ShardError> {
        let name = name.into();
        match node_name_problem(&name) {
            None => Ok(NodeName(Arc::from(name))),
            Some(reason) => Err(ShardError::InvalidNodeName {
                name,
                reason: reason.to_string(),
            }),
        }
    }

    /// The node name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why `name` is not a DNS-1123 subdomain, or `None` when it is one.
fn node_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("the name is empty");
    }
    if name.len() > MAX_NODE_BYTES {
        return Some("the name is longer than 253 bytes");
    }
    for label in name.split('.') {
        let bytes = label.as_bytes();
        let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
            return Some("the name has an empty dot-separated part");
        };
        if !bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        {
            return Some("only lowercase letters, digits, '-' and '.' are allowed");
        }
        if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
            return Some("every part must start and end with a letter or digit");
        }
    }
    None
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for NodeName {
    type Error = ShardError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        NodeName::new(name)
    }
}

impl From<NodeName> for String {
    fn from(node: NodeName) -> String {
        node.0.to_string()
    }
}

/// The StatefulSet ordinal of a pod name: the digits after the last `-` (`"chat-a-12"` -> 12).
///
/// `None` when there is no `-`, nothing but digits follows it, or the number does not fit a `u32`.
/// Scale-down drains the highest ordinals because those are the pods a StatefulSet removes.
pub fn ordinal_of(name: &NodeName) -> Option<u32> {
    let (_, digits) = name.as_str().rsplit_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids_accept_unicode_and_refuse_empty_long_or_control_names() {
        assert_eq!(
            RoomId::new("lobby").map(|r| r.to_string()).ok(),
            Some("lobby".into())
        );
        assert!(RoomId::new("кафе ☕").is_ok());
        assert!(RoomId::new("x".repeat(128)).is_ok());
        assert!(RoomId::new("x".repeat(129)).is_err());
        assert!(RoomId::new("").is_err());
        assert!(RoomId::new("a\nb").is_err());
        assert!(RoomId::new("a\u{7f}").is_err());
    }

    #[test]
    fn room_id_errors_are_lowercase_and_say_what_is_wrong() {
        let err = RoomId::new("ab\tc").err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("invalid room id: the name contains a control character at byte 2")
        );
    }

    #[test]
    fn node_names_follow_dns_1123_subdomain_rules() {
        for good in ["a", "chat-0", "chat-a-12", "node.example-1.local", "0"] {
            assert!(NodeName::new(good).is_ok(), "{good} should be valid");
        }
        for bad in [
            "", "Chat-0", "-a", "a-", "a..b", ".a", "a.", "a_b", "a b", "é", "a.-b",
        ] {
            assert!(NodeName::new(bad).is_err(), "{bad:?} should be invalid");
        }
        assert!(NodeName::new("a".repeat(253)).is_ok());
        assert!(NodeName::new("a".repeat(254)).is_err());
    }

    #[test]
    fn ordinal_is_the_number_after_the_last_dash() -> Result<(), ShardError> {
        assert_eq!(ordinal_of(&NodeName::new("chat-a-12")?), Some(12));
        assert_eq!(ordinal_of(&NodeName::new("chat-0")?), Some(0));
        assert_eq!(ordinal_of(&NodeName::new("chat")?), None);
        assert_eq!(ordinal_of(&NodeName::new("chat-1a")?), None);
        assert_eq!(ordinal_of(&NodeName::new("chat-99999999999")?), None);
        Ok(())
    }

    #[test]
    fn names_deserialize_only_when_valid() {
        let room: Result<RoomId, _> = serde_json::from_str("\"lobby\"");
        assert!(room.is_ok());
        let room: Result<RoomId, _> = serde_json::from_str("\"\"");
        assert!(room.is_err());
        let node: Result<NodeName, _> = serde_json::from_str("\"Node_0\"");
        assert!(node.is_err());
        let shard: Result<ShardId, _> = serde_json::from_str("7");
        assert_eq!(shard.ok(), Some(ShardId(7)));
    }
}
