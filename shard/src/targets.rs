//! Count targets: how many shards each eligible node should own, so that the planner reaches
//! balance (rule 2) with the fewest moves (rule 3) without redirecting hand-offs in flight.

use std::cmp::Reverse;

/// How many shards each eligible node should end with, given what it `have`s now and how many of
/// those are `pinned` by hand-offs in flight.
///
/// Water-filling: the largest level `c` with `sum(max(pinned, c)) <= shards`, every node gets
/// `max(pinned, c)`, and the `r` shards left over give `c + 1` to the nodes at level `c` holding
/// the most (ties by name, i.e. index), which is what minimises moves. Without pins this is
/// floor(S/N) for everyone and ceil(S/N) for the S mod N largest holders.
pub(crate) fn targets(have: &[u32], pinned: &[u32], shards: u32) -> Vec<u32> {
    let filled = |c: u32| -> u64 { pinned.iter().map(|&p| u64::from(p.max(c))).sum() };
    let total = u64::from(shards);
    // filled(0) = sum(pinned) <= shards, since pinned shards are distinct.
    let (mut lo, mut hi) = (0u32, shards);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if filled(mid) <= total {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let level = lo;
    let mut targets: Vec<u32> = pinned.iter().map(|&p| p.max(level)).collect();
    let mut left_over = total.saturating_sub(filled(level));
    let mut at_level: Vec<usize> = (0..pinned.len()).filter(|&i| pinned[i] <= level).collect();
    at_level.sort_by_key(|&i| (Reverse(have[i]), i));
    for i in at_level {
        if left_over == 0 {
            break;
        }
        targets[i] += 1;
        left_over -= 1;
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_without_pins_are_floor_and_ceil_with_ceil_for_the_largest_holders() {
        assert_eq!(targets(&[0, 0, 0], &[0, 0, 0], 10), vec![4, 3, 3]);
        assert_eq!(targets(&[1, 5, 4], &[0, 0, 0], 10), vec![3, 4, 3]);
        assert_eq!(targets(&[0], &[0], 7), vec![7]);
        assert_eq!(targets(&[0, 0, 0, 0], &[0, 0, 0, 0], 2), vec![1, 1, 0, 0]);
    }

    #[test]
    fn targets_never_go_below_the_pinned_shards() {
        // 10 shards, 4 nodes: 3 nodes have 3 hand-offs each in flight.
        assert_eq!(targets(&[3, 3, 3, 1], &[3, 3, 3, 0], 10), vec![3, 3, 3, 1]);
        assert_eq!(targets(&[6, 0, 0], &[6, 0, 0], 10), vec![6, 2, 2]);
        let t = targets(&[9, 0, 5, 0], &[9, 0, 0, 0], 20);
        assert_eq!(t.iter().sum::<u32>(), 20);
        assert_eq!(t, vec![9, 4, 4, 3]);
    }
}
