//! Pins the room -> shard hash. These constants were computed once (and cross-checked against an
//! independent implementation); if one of these tests fails, the hash changed, and every
//! deployed cluster would route rooms differently. Do not "fix" the constants.

use shard::{RoomId, ShardError, ShardId, room_hash, shard_of};

/// (room name, room_hash, shard of 256, shard of 65536).
const VECTORS: &[(&str, u64, u32, u32)] = &[
    ("", 0xefd0_1f60_ba99_2926, 38, 10534),
    ("a", 0x82a2_a958_a9be_ce5b, 91, 52827),
    ("lobby", 0xb4ea_f00b_b6c1_c767, 103, 51047),
    ("room-1", 0x656b_b5e5_6c35_0c3f, 63, 3135),
    ("room-2", 0x1c6e_9c06_33c2_a860, 96, 43104),
    ("general", 0x1cf2_653e_2086_7722, 34, 30498),
    ("Café ☕", 0xdbb2_f4a8_4dcb_461a, 26, 17946),
    ("чат", 0xc9a7_7148_4f89_501e, 30, 20510),
    ("日本語のチャット", 0xfc69_254e_0333_b95d, 93, 47453),
    ("🎉🎉🎉", 0xc293_d51c_ae2e_b2ba, 186, 45754),
    (
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        0xf49a_a9bd_d01b_d993,
        147,
        55699,
    ),
    (
        "the quick brown fox jumps over the lazy dog; the quick brown fox jumps over the lazy dog; tail",
        0x2771_9807_7cb3_1040,
        64,
        4160,
    ),
];

#[test]
fn room_hashes_match_the_pinned_vectors() {
    for &(name, hash, _, _) in VECTORS {
        assert_eq!(room_hash(name), hash, "room_hash({name:?})");
    }
}

#[test]
fn rooms_map_to_the_pinned_shards_for_256_and_65536_shards() -> Result<(), ShardError> {
    for &(name, hash, of_256, of_65536) in VECTORS {
        // The empty name hashes but is not a valid room.
        assert_eq!(hash % 256, u64::from(of_256));
        assert_eq!(hash % 65536, u64::from(of_65536));
        if name.is_empty() {
            continue;
        }
        let room = RoomId::new(name)?;
        assert_eq!(shard_of(&room, 256), ShardId(of_256), "{name:?} over 256");
        assert_eq!(
            shard_of(&room, 65536),
            ShardId(of_65536),
            "{name:?} over 65536"
        );
    }
    Ok(())
}

#[test]
fn the_longest_vector_is_exactly_the_longest_valid_room_name() {
    assert_eq!(VECTORS[10].0.len(), 128);
    assert!(RoomId::new(VECTORS[10].0).is_ok());
}

#[test]
fn similar_names_spread_evenly_over_256_shards() -> Result<(), ShardError> {
    const ROOMS: usize = 100_000;
    const SHARDS: u32 = 256;
    let mut counts = vec![0u32; SHARDS as usize];
    for i in 0..ROOMS {
        let room = RoomId::new(format!("room-{i}"))?;
        counts[shard_of(&room, SHARDS).0 as usize] += 1;
    }
    let expected = ROOMS as f64 / f64::from(SHARDS);
    let chi_square: f64 = counts
        .iter()
        .map(|&c| (f64::from(c) - expected).powi(2) / expected)
        .sum();
    // 255 degrees of freedom: mean 255, standard deviation about 22.6. 340 is p < 0.001.
    assert!(chi_square < 340.0, "chi-square {chi_square:.1} is too high");
    let (min, max) = (
        counts.iter().copied().min().unwrap_or(0),
        counts.iter().copied().max().unwrap_or(0),
    );
    // Expected 390.6 per shard, standard deviation about 19.8: +-20% is about 4 sigma.
    assert!(f64::from(min) > expected * 0.8, "min {min} is too low");
    assert!(f64::from(max) < expected * 1.2, "max {max} is too high");
    Ok(())
}
