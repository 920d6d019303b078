//! Bounded metric histories for run cards: a series longer than its share of the card
//! is cut into buckets of consecutive points, each represented by its minimum, maximum
//! and last point, as W&B and TensorBoard sample long curves. Peaks, valleys and the
//! final value survive; the full series stays available page by page.
//!
//! Pure: points in, points out. The output is a subsequence of the input points (in
//! report order), each keeping only the values chosen from it.

use std::collections::{BTreeMap, BTreeSet};

use ladder_shared::limits::{
    MAX_CARD_POINTS, MAX_CARD_POINTS_PER_METRIC, MIN_CARD_POINTS_PER_METRIC,
};

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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
