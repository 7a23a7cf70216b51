//! A compact log-linear histogram with the API that openraft 0.10 calls on
//! `base2histogram` (`Histogram`, `PercentileStats`, `AsciiChart`).
//!
//! Buckets: values 0–3 each have their own bucket; above that every power of
//! two `[2^m, 2^(m+1))` is split into four equal buckets, so a bucket's width
//! is at most a quarter of its lower bound (percentiles within 25%, reported
//! as the lower bound of their bucket). 252 buckets cover all of `u64`; a
//! histogram is one array of counts, and nothing is shared or precomputed.

use std::fmt;
use std::marker::PhantomData;

/// Sub-buckets per power of two.
const SUB: usize = 4;
/// Buckets covering every `u64`: 4 exact ones, then 4 per power of two from
/// 2^2 to 2^63.
pub const BUCKETS: usize = SUB + SUB * 62;

/// The bucket a value falls in.
fn bucket_of(value: u64) -> usize {
    if value < SUB as u64 {
        return value as usize;
    }
    let msb = 63 - value.leading_zeros() as usize; // >= 2
    let sub = ((value >> (msb - 2)) & 3) as usize;
    SUB * (msb - 1) + sub
}

/// The smallest value of a bucket.
fn lower_bound(bucket: usize) -> u64 {
    if bucket < SUB {
        return bucket as u64;
    }
    let msb = bucket / SUB + 1;
    let sub = (bucket % SUB) as u64;
    (4 + sub) << (msb - 2)
}

/// Counts of recorded values by bucket. `T` is accepted for API
/// compatibility and carries nothing.
pub struct Histogram<T = ()> {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    _slot: PhantomData<fn() -> T>,
}

impl<T> Histogram<T> {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            counts: Box::new([0; BUCKETS]),
            total: 0,
            _slot: PhantomData,
        }
    }

    /// Records one value.
    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    /// Records `count` occurrences of a value.
    pub fn record_n(&mut self, value: u64, count: u64) {
        let b = bucket_of(value);
        self.counts[b] = self.counts[b].saturating_add(count);
        self.total = self.total.saturating_add(count);
    }

    /// Values recorded.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The value at quantile `p` (0.0–1.0): the lower bound of the bucket
    /// holding the sample of that rank; 0 when empty.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((p.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (b, c) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(*c);
            if seen >= rank {
                return lower_bound(b);
            }
        }
        lower_bound(BUCKETS - 1)
    }

    /// The sample count and the usual percentiles.
    pub fn percentile_stats(&self) -> PercentileStats {
        PercentileStats {
            samples: self.total,
            p0_1: self.percentile(0.001),
            p1: self.percentile(0.01),
            p5: self.percentile(0.05),
            p10: self.percentile(0.10),
            p50: self.percentile(0.50),
            p90: self.percentile(0.90),
            p99: self.percentile(0.99),
            p99_9: self.percentile(0.999),
        }
    }

    /// Non-empty buckets as (lower bound, count), in value order.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(b, c)| (lower_bound(b), *c))
    }
}

impl<T> Default for Histogram<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for Histogram<T> {
    fn clone(&self) -> Self {
        Self {
            counts: self.counts.clone(),
            total: self.total,
            _slot: PhantomData,
        }
    }
}

impl<T> PartialEq for Histogram<T> {
    fn eq(&self, other: &Self) -> bool {
        self.total == other.total && self.counts == other.counts
    }
}

impl<T> Eq for Histogram<T> {}

impl<T> fmt::Debug for Histogram<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("buckets", &self.buckets().collect::<Vec<_>>())
            .finish()
    }
}

/// Sample count and percentiles of a [`Histogram`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PercentileStats {
    /// Values recorded.
    pub samples: u64,
    /// 0.1th percentile.
    pub p0_1: u64,
    /// 1st percentile.
    pub p1: u64,
    /// 5th percentile.
    pub p5: u64,
    /// 10th percentile.
    pub p10: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p99_9: u64,
}

impl fmt::Display for PercentileStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "n={} p0.1={} p1={} p5={} p10={} p50={} p90={} p99={} p99.9={}",
            self.samples,
            self.p0_1,
            self.p1,
            self.p5,
            self.p10,
            self.p50,
            self.p90,
            self.p99,
            self.p99_9
        )
    }
}

/// Named histograms drawn as text bars, one line per non-empty bucket.
pub struct AsciiChart<T = ()> {
    series: Vec<(String, Histogram<T>)>,
}

impl<T> AsciiChart<T> {
    /// An empty chart.
    pub fn new() -> Self {
        Self { series: Vec::new() }
    }

    /// Adds a named histogram.
    pub fn add(mut self, name: &str, hist: Histogram<T>) -> Self {
        self.series.push((name.to_string(), hist));
        self
    }

    /// The chart with every non-empty bucket of every series.
    pub fn detailed(&self) -> &Self {
        self
    }
}

impl<T> Default for AsciiChart<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Widest bar, in characters.
const BAR: u64 = 40;

impl<T> fmt::Display for AsciiChart<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, h) in &self.series {
            writeln!(f, "{name} (n={})", h.total())?;
            let most = h.buckets().map(|(_, c)| c).max().unwrap_or(0).max(1);
            for (low, count) in h.buckets() {
                let len = (count.saturating_mul(BAR) / most).max(1) as usize;
                writeln!(f, "  {low:>12} {:<40} {count}", "#".repeat(len))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_the_bucket_whose_bounds_hold_it() {
        let mut values: Vec<u64> = (0..5000).collect();
        values.extend((0..64).map(|s| 1u64 << s));
        values.extend((1..64).map(|s| (1u64 << s) - 1));
        values.extend([u64::MAX, u64::MAX - 1, 12_345_678_901]);
        for v in values {
            let b = bucket_of(v);
            assert!(b < BUCKETS, "{v}");
            assert!(lower_bound(b) <= v, "{v} below bucket {b}");
            if b + 1 < BUCKETS {
                assert!(v < lower_bound(b + 1), "{v} above bucket {b}");
            }
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_are_within_a_quarter_below_the_true_value() {
        let mut h = Histogram::<()>::new();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        let s = h.percentile_stats();
        assert_eq!(s.samples, 10_000);
        for (got, exact) in [
            (s.p50, 5_000u64),
            (s.p90, 9_000),
            (s.p99, 9_900),
            (s.p1, 100),
        ] {
            assert!(got <= exact && got * 5 >= exact * 4, "{got} vs {exact}");
        }
        assert_eq!(
            Histogram::<()>::new().percentile_stats(),
            PercentileStats::default()
        );
    }

    #[test]
    fn record_n_counts_like_repeated_records_and_the_chart_names_each_series() {
        let mut a = Histogram::<()>::new();
        let mut b = Histogram::<()>::new();
        a.record_n(300, 3);
        for _ in 0..3 {
            b.record(300);
        }
        assert_eq!(a, b);
        let chart = AsciiChart::new().add("append", a).add("apply", b);
        let text = chart.detailed().to_string();
        assert!(
            text.contains("append (n=3)") && text.contains("apply (n=3)"),
            "{text}"
        );
        assert!(text.contains("256"), "{text}");
    }
}
