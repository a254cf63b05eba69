//! The room -> shard hash. **This is a stable contract**: every node of every roomshard version
//! must map a room to the same shard, or messages for one room would be split between two owners.
//! Never change it; a new hash would need a new table format and a migration.
//!
//! The hash of a room name is:
//!
//! 1. FNV-1a, 64-bit, over the name's UTF-8 bytes (offset basis `0xcbf29ce484222325`, prime
//!    `0x100000001b3`), then
//! 2. the MurmurHash3 `fmix64` finalizer (`k ^= k >> 33; k *= 0xff51afd7ed558ccd; k ^= k >> 33;
//!    k *= 0xc4ceb9fe1a85ec53; k ^= k >> 33`, wrapping multiplication).
//!
//! The shard is `hash % shards`. FNV-1a alone is simple and fully specified, but its low bits mix
//! poorly for similar names ("room-1", "room-2"); the finalizer spreads every input bit over the
//! whole word so the modulo is uniform. Neither step is keyed: room names are not secret, and a
//! keyed hash would differ between processes.

use crate::ids::{RoomId, ShardId};

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The stable 64-bit hash of a room name: FNV-1a 64 then murmur3's `fmix64` (see the module doc).
pub fn room_hash(room: &str) -> u64 {
    let mut hash = FNV_OFFSET_BASIS;
    for byte in room.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    fmix64(hash)
}

/// MurmurHash3's 64-bit finalizer: a bijection that makes every output bit depend on every input
/// bit.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The shard a room lives in when there are `shards` shards: `room_hash(room) % shards`.
///
/// A shard count of 0 is meaningless (tables refuse it); rather than panic, every room then maps
/// to `ShardId(0)`.
pub fn shard_of(room: &RoomId, shards: u32) -> ShardId {
    if shards == 0 {
        return ShardId(0);
    }
    let shard = room_hash(room.as_str()) % u64::from(shards);
    // The remainder is below `shards`, a u32, so it always fits.
    ShardId(u32::try_from(shard).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_name_hashes_to_the_finalized_fnv_offset_basis() {
        assert_eq!(room_hash(""), fmix64(FNV_OFFSET_BASIS));
    }

    #[test]
    fn zero_shards_maps_every_room_to_shard_zero() -> Result<(), crate::ShardError> {
        assert_eq!(shard_of(&RoomId::new("lobby")?, 0), ShardId(0));
        Ok(())
    }
}
