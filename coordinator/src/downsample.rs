//! Bounded metric histories for run cards: a series longer than its share of the card
//! is cut into buckets of consecutive points, each represented by its minimum, maximum
//! and last point, as W&B and TensorBoard sample long curves. Peaks, valleys and the
//! final value survive; the full series stays available page by page.
//!
//! Pure: points in, points out. The output is a subsequence of the input points (in
//! report order), each keeping only the values chosen from it.

use std::collections::BTreeMap;

use ladder_limits::{MAX_CARD_POINTS, MAX_CARD_POINTS_PER_METRIC, MIN_CARD_POINTS_PER_METRIC};

use crate::model::StoredPoint;

/// How many points each metric may keep when `metrics` metrics share a card.
pub fn points_per_metric(metrics: usize) -> usize {
    if metrics == 0 {
        return MAX_CARD_POINTS_PER_METRIC;
    }
    (MAX_CARD_POINTS / metrics).clamp(MIN_CARD_POINTS_PER_METRIC, MAX_CARD_POINTS_PER_METRIC)
}

/// The card's view of `points`: unchanged when every metric has at most its share of
/// points ([`points_per_metric`]), else each longer series reduced to at most that many
/// points (min, max and last of each bucket). Returns whether anything was dropped.
pub fn downsample(points: &[StoredPoint]) -> (Vec<StoredPoint>, bool) {
    let mut lengths = Lengths::default();
    points.iter().for_each(|point| lengths.count(point));
    let mut sampler = Sampler::new(&lengths);
    points.iter().for_each(|point| sampler.feed(point));
    sampler.finish()
}

/// The first of two passes over a series: how many values each metric has.
#[derive(Debug, Default)]
pub struct Lengths(BTreeMap<String, usize>);

impl Lengths {
    pub fn count(&mut self, point: &StoredPoint) {
        for name in point.values.keys() {
            match self.0.get_mut(name) {
                Some(length) => *length += 1,
                None => {
                    self.0.insert(name.clone(), 1);
                }
            }
        }
    }
}

/// A point kept by the sampler and the value it keeps for one metric.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    ordinal: usize,
    value: f64,
    step: Option<i64>,
    time_ms: i64,
}

/// One metric's walk through its buckets.
#[derive(Debug)]
struct Series {
    length: usize,
    buckets: usize,
    bucket: usize,
    /// Position (within this metric's values) where the current bucket ends.
    end: usize,
    position: usize,
    lowest: Option<Candidate>,
    highest: Option<Candidate>,
    last: Option<Candidate>,
}

/// The second pass: the card's points, holding only what the card keeps (so a series
/// of any length is downsampled in memory bounded by the card's size).
#[derive(Debug)]
pub struct Sampler {
    /// Every point, unchanged, when no metric exceeds its share.
    all: Option<Vec<StoredPoint>>,
    series: BTreeMap<String, Series>,
    kept: BTreeMap<usize, StoredPoint>,
    ordinal: usize,
}

impl Sampler {
    pub fn new(lengths: &Lengths) -> Sampler {
        let share = points_per_metric(lengths.0.len());
        let cut = lengths.0.values().any(|length| *length > share);
        let series = lengths
            .0
            .iter()
            .map(|(name, &length)| {
                let buckets = if length > share {
                    (share / 3).max(1)
                } else {
                    length
                };
                let series = Series {
                    length,
                    buckets,
                    bucket: 0,
                    end: length.checked_div(buckets).unwrap_or(0),
                    position: 0,
                    lowest: None,
                    highest: None,
                    last: None,
                };
                (name.clone(), series)
            })
            .collect();
        Sampler {
            all: (!cut).then(Vec::new),
            series,
            kept: BTreeMap::new(),
            ordinal: 0,
        }
    }

    /// The next point of the series, in the order of the first pass (points past its
    /// lengths are ignored).
    pub fn feed(&mut self, point: &StoredPoint) {
        let ordinal = self.ordinal;
        self.ordinal += 1;
        if let Some(all) = self.all.as_mut() {
            all.push(point.clone());
            return;
        }
        for (name, &value) in &point.values {
            let Some(series) = self.series.get_mut(name) else {
                continue;
            };
            if series.position >= series.length {
                continue;
            }
            while series.position >= series.end {
                close_bucket(&mut self.kept, name, series);
            }
            let candidate = Candidate {
                ordinal,
                value,
                step: point.step,
                time_ms: point.time_ms,
            };
            if series.lowest.is_none_or(|low| value < low.value) {
                series.lowest = Some(candidate);
            }
            if series.highest.is_none_or(|high| value > high.value) {
                series.highest = Some(candidate);
            }
            series.last = Some(candidate);
            series.position += 1;
        }
    }

    /// The card's points, in report order, and whether anything was dropped.
    pub fn finish(mut self) -> (Vec<StoredPoint>, bool) {
        if let Some(all) = self.all {
            return (all, false);
        }
        for (name, series) in self.series.iter_mut() {
            if series.last.is_some() {
                close_bucket(&mut self.kept, name, series);
            }
        }
        (self.kept.into_values().collect(), true)
    }
}

/// Keeps the current bucket's lowest, highest and last values and moves to the next
/// bucket.
fn close_bucket(kept: &mut BTreeMap<usize, StoredPoint>, name: &str, series: &mut Series) {
    for candidate in [series.lowest, series.highest, series.last]
        .into_iter()
        .flatten()
    {
        kept.entry(candidate.ordinal)
            .or_insert_with(|| StoredPoint {
                step: candidate.step,
                values: BTreeMap::new(),
                time_ms: candidate.time_ms,
            })
            .values
            .insert(name.to_string(), candidate.value);
    }
    series.lowest = None;
    series.highest = None;
    series.last = None;
    series.bucket += 1;
    series.end = if series.bucket >= series.buckets {
        usize::MAX
    } else {
        series.length * (series.bucket + 1) / series.buckets
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// The card's view of `points`: unchanged when every metric has at most its share of
    /// points ([`points_per_metric`]), else each longer series reduced to at most that many
    /// points (min, max and last of each bucket). Returns whether anything was dropped.
    fn reference(points: &[StoredPoint]) -> (Vec<StoredPoint>, bool) {
        // Which points carry each metric, in report order.
        let mut carriers: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (ordinal, point) in points.iter().enumerate() {
            for name in point.values.keys() {
                carriers.entry(name.as_str()).or_default().push(ordinal);
            }
        }
        let share = points_per_metric(carriers.len());
        if carriers.values().all(|series| series.len() <= share) {
            return (points.to_vec(), false);
        }
        // (ordinal, metric) pairs to keep.
        let mut kept: BTreeMap<usize, BTreeSet<&str>> = BTreeMap::new();
        for (name, series) in &carriers {
            if series.len() <= share {
                for &ordinal in series {
                    kept.entry(ordinal).or_default().insert(name);
                }
                continue;
            }
            let buckets = (share / 3).max(1);
            for bucket in 0..buckets {
                let from = series.len() * bucket / buckets;
                let to = series.len() * (bucket + 1) / buckets;
                if from == to {
                    continue;
                }
                let slice = &series[from..to];
                let value = |ordinal: usize| points[ordinal].values[*name];
                let mut lowest = slice[0];
                let mut highest = slice[0];
                for &ordinal in slice {
                    if value(ordinal) < value(lowest) {
                        lowest = ordinal;
                    }
                    if value(ordinal) > value(highest) {
                        highest = ordinal;
                    }
                }
                for ordinal in [lowest, highest, slice[slice.len() - 1]] {
                    kept.entry(ordinal).or_default().insert(name);
                }
            }
        }
        let sampled = kept
            .into_iter()
            .map(|(ordinal, names)| {
                let point = &points[ordinal];
                StoredPoint {
                    step: point.step,
                    values: names
                        .into_iter()
                        .map(|name| (name.to_string(), point.values[name]))
                        .collect(),
                    time_ms: point.time_ms,
                }
            })
            .collect();
        (sampled, true)
    }

    fn point(step: i64, values: &[(&str, f64)]) -> StoredPoint {
        StoredPoint {
            step: Some(step),
            values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            time_ms: step,
        }
    }

    #[test]
    fn short_histories_are_kept_as_reported() {
        let points: Vec<StoredPoint> = (0..500)
            .map(|i| point(i, &[("loss", 1.0 / (i + 1) as f64), ("acc", i as f64)]))
            .collect();
        let (sampled, downsampled) = downsample(&points);
        assert!(!downsampled);
        assert_eq!(sampled, points);
    }

    #[test]
    fn a_hundred_thousand_steps_keep_the_peaks_and_the_last_value() {
        let points: Vec<StoredPoint> = (0..100_000)
            .map(|i| {
                let spike = if i == 54_321 { 100.0 } else { 0.0 };
                point(
                    i,
                    &[
                        ("loss", 1.0 / (i + 1) as f64 + spike),
                        ("acc", i as f64),
                        ("lr", 0.1),
                    ],
                )
            })
            .collect();
        let (sampled, downsampled) = downsample(&points);
        assert!(downsampled);
        for name in ["loss", "acc", "lr"] {
            let series: Vec<&StoredPoint> = sampled
                .iter()
                .filter(|p| p.values.contains_key(name))
                .collect();
            assert!(
                series.len() <= MAX_CARD_POINTS_PER_METRIC,
                "{name}: {} points",
                series.len()
            );
            assert_eq!(
                series.last().unwrap().step,
                Some(99_999),
                "{name}: last kept"
            );
        }
        let loss_max = sampled
            .iter()
            .filter_map(|p| p.values.get("loss"))
            .fold(f64::MIN, |a, b| a.max(*b));
        assert!(loss_max > 100.0, "the spike survives: {loss_max}");
        assert!(sampled.windows(2).all(|w| w[0].step < w[1].step));
    }

    proptest! {
        #[test]
        fn the_two_pass_sampler_agrees_with_the_reference(
            lengths in proptest::collection::vec(0usize..3_000, 1..6),
            gaps in proptest::collection::vec(any::<bool>(), 0..200),
            seed in any::<u64>(),
        ) {
            let longest = lengths.iter().copied().max().unwrap_or(0);
            let points: Vec<StoredPoint> = (0..longest)
                .map(|i| {
                    let values = lengths
                        .iter()
                        .enumerate()
                        .filter(|(m, len)| i < **len && !gaps.get((i + m) % 200).copied().unwrap_or(false))
                        .map(|(m, _)| (format!("m{m}"), ((i as u64).wrapping_mul(seed | 1) % 997) as f64))
                        .collect();
                    StoredPoint { step: Some(i as i64), values, time_ms: i as i64 }
                })
                .collect();
            prop_assert_eq!(downsample(&points), reference(&points));
        }

        #[test]
        fn every_metric_stays_within_its_share_and_values_are_real(
            lengths in proptest::collection::vec(0usize..3_000, 1..6),
            seed in any::<u64>(),
        ) {
            let mut points = Vec::new();
            let longest = lengths.iter().copied().max().unwrap_or(0);
            for i in 0..longest {
                let mut values = BTreeMap::new();
                for (m, len) in lengths.iter().enumerate() {
                    if i < *len {
                        let v = ((i as u64).wrapping_mul(seed | 1) % 1_000) as f64;
                        values.insert(format!("m{m}"), v);
                    }
                }
                points.push(StoredPoint { step: Some(i as i64), values, time_ms: 0 });
            }
            let (sampled, _) = downsample(&points);
            let share = points_per_metric(lengths.iter().filter(|l| **l > 0).count());
            for (m, len) in lengths.iter().enumerate() {
                let name = format!("m{m}");
                let kept: Vec<&StoredPoint> = sampled.iter().filter(|p| p.values.contains_key(&name)).collect();
                prop_assert!(kept.len() <= share.max(*len.min(&share)));
                if *len > 0 {
                    // The last value is always there, and every kept value is the
                    // reported one at that step.
                    prop_assert_eq!(kept.last().unwrap().step, Some(*len as i64 - 1));
                }
                for p in kept {
                    let original = &points[p.step.unwrap() as usize];
                    prop_assert_eq!(p.values[&name], original.values[&name]);
                }
            }
        }
    }
}
