//! Latency percentiles in fixed memory: a log-linear (HDR-style) histogram of microseconds.
//!
//! Values below 128 are counted exactly; above, each power of two is split into 64 equal
//! buckets, so a reported percentile is at most 1/64 (1.6 %) above the true value, whatever
//! the range. The whole table is ~30 KiB, so a handful of shared histograms hold millions of
//! samples without growing. A bucket reports its highest value (like HdrHistogram's
//! "highest equivalent value"), so percentiles never flatter the system; `max` is exact.

/// Bits of the exactly-counted range: values `0..2^LINEAR_BITS` get one bucket each.
const LINEAR_BITS: u32 = 7;
/// Buckets per power of two above the linear range.
const SUB_BUCKETS: u64 = 1 << (LINEAR_BITS - 1);
/// Enough buckets for any `u64`.
const BUCKETS: usize =
    ((64 - LINEAR_BITS as usize + 1) * SUB_BUCKETS as usize) + SUB_BUCKETS as usize;

/// A histogram of non-negative integers (the bench records microseconds).
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    /// Count one value.
    pub fn record(&mut self, value: u64) {
        self.counts[index_of(value)] += 1;
        self.total += 1;
        self.max = self.max.max(value);
    }

    /// Values recorded.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// The largest value recorded (exact), 0 when empty.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at or below which `quantile` (0..=1) of the samples fall, as the highest
    /// value of its bucket (never above `max`); 0 when empty.
    pub fn quantile(&self, quantile: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((quantile.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return highest_of(index).min(self.max);
            }
        }
        self.max
    }
}

fn index_of(value: u64) -> usize {
    if value < (1 << LINEAR_BITS) {
        return value as usize;
    }
    // Shift so the value keeps LINEAR_BITS significant bits: it lands in 64..128.
    let shift = 63 - value.leading_zeros() - (LINEAR_BITS - 1);
    (shift as u64 * SUB_BUCKETS + (value >> shift)) as usize
}

fn highest_of(index: usize) -> u64 {
    let index = index as u64;
    if index < (1 << LINEAR_BITS) {
        return index;
    }
    let shift = index / SUB_BUCKETS - 1;
    let top = index - shift * SUB_BUCKETS;
    // u128: the top bucket's end is 2^64, one past u64::MAX.
    let end = u128::from(top + 1) << shift;
    u64::try_from(end - 1).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_exact_and_buckets_are_contiguous() {
        let mut previous = None;
        for value in (0..5000).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let index = index_of(value);
            assert!(index < BUCKETS);
            assert!(highest_of(index) >= value, "{value}");
            if let Some((v, i)) = previous
                && value == v + 1
            {
                assert!(index == i || index == i + 1, "{value}: {i} -> {index}");
            }
            if value < 128 {
                assert_eq!(highest_of(index), value);
            }
            previous = Some((value, index));
        }
    }

    #[test]
    fn percentiles_are_within_two_percent_above_the_truth() {
        let mut histogram = Histogram::default();
        for value in 1..=100_000u64 {
            histogram.record(value);
        }
        for (quantile, truth) in [(0.5, 50_000.0), (0.9, 90_000.0), (0.99, 99_000.0)] {
            let got = histogram.quantile(quantile) as f64;
            assert!(got >= truth && got <= truth * 1.02, "{quantile}: {got}");
        }
        assert_eq!(histogram.quantile(1.0), 100_000);
        assert_eq!(histogram.max(), 100_000);
        assert_eq!(histogram.len(), 100_000);
    }

    #[test]
    fn the_max_is_exact_and_an_empty_histogram_reads_zero() {
        let mut histogram = Histogram::default();
        histogram.record(10);
        histogram.record(7_000_001);
        assert_eq!(histogram.len(), 2);
        assert_eq!(histogram.max(), 7_000_001);
        assert_eq!(histogram.quantile(0.5), 10);
        assert_eq!(histogram.quantile(1.0), 7_000_001);
        assert_eq!(Histogram::default().quantile(0.99), 0);
    }
}
