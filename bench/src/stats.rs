//! Summaries of latency samples: median and tail percentiles.

use std::time::Duration;

use serde::Serialize;

/// Median, p90 and p99 of a set of durations, in milliseconds.
///
/// Percentiles use the nearest-rank method: the p-th percentile is the
/// smallest sample such that at least p % of the samples are at or below it.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Median, in ms.
    pub median_ms: f64,
    /// 90th percentile, in ms.
    pub p90_ms: f64,
    /// 99th percentile, in ms.
    pub p99_ms: f64,
    /// Smallest sample, in ms.
    pub min_ms: f64,
    /// Largest sample, in ms.
    pub max_ms: f64,
}

impl Summary {
    /// Summarizes `samples`; all zero when there are none.
    pub fn of(samples: &[Duration]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        Self {
            count: ms.len(),
            median_ms: nearest_rank(&ms, 50.0),
            p90_ms: nearest_rank(&ms, 90.0),
            p99_ms: nearest_rank(&ms, 99.0),
            min_ms: ms[0],
            max_ms: ms[ms.len() - 1],
        }
    }
}

/// The `p`-th percentile (0 < p ≤ 100) of sorted, non-empty `sorted`.
fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `a / b`, or `None` when `b` is zero or either is not finite.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    let r = a / b;
    (b != 0.0 && r.is_finite()).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_of_one_to_hundred() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::of(&samples);
        assert_eq!(s.count, 100);
        assert_eq!(s.median_ms, 50.0);
        assert_eq!(s.p90_ms, 90.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.min_ms, 1.0);
        assert_eq!(s.max_ms, 100.0);
    }

    #[test]
    fn single_sample_is_every_percentile() {
        let s = Summary::of(&[Duration::from_millis(7)]);
        assert_eq!((s.median_ms, s.p99_ms), (7.0, 7.0));
    }

    #[test]
    fn ratio_of_zero_is_none() {
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
    }
}
