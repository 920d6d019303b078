//! Per-metric summaries: which single value of a metric's history stands for a run.
//!
//! A run reports a metric many times (`eval/loss` at steps 100, 200, ...). Queries,
//! sorting, the leaderboard and the search's objective need one number per run and
//! metric, as W&B's `run.summary` does. By default it is the last reported value; a sweep
//! may choose another per metric (`metric: {name: eval/loss, goal: minimize, summary:
//! best}`, `summaries: {train/loss: min}`, see `docs/reference/sweep-file.md`):
//!
//! - [`Summary`] is the choice as written in the sweep file (`best` included);
//! - [`Reduction`] is what it resolves to once the metric's goal is known (`best` is
//!   `min` for a minimized metric and `max` for a maximized one);
//! - [`MetricSummary`] is what the coordinator keeps per run and metric as points arrive
//!   (last, min and max with the step of each), so any reduction can be answered without
//!   reading the run's points again.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Goal;

/// A sweep file's choice of the value that stands for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Summary {
    /// The best value by the metric's goal; only valid where a goal is known.
    Best,
    Last,
    Min,
    Max,
}

impl Summary {
    pub const ALL: [Summary; 4] = [Summary::Best, Summary::Last, Summary::Min, Summary::Max];

    pub fn as_str(self) -> &'static str {
        match self {
            Summary::Best => "best",
            Summary::Last => "last",
            Summary::Min => "min",
            Summary::Max => "max",
        }
    }

    pub fn from_name(name: &str) -> Option<Summary> {
        Summary::ALL
            .into_iter()
            .find(|summary| summary.as_str() == name)
    }

    /// The reduction this choice means for a metric with `goal` (`None`: no goal known,
    /// which only `best` needs; it then falls back to the last value).
    pub fn resolve(self, goal: Option<Goal>) -> Reduction {
        match (self, goal) {
            (Summary::Best, Some(Goal::Minimize)) | (Summary::Min, _) => Reduction::Min,
            (Summary::Best, Some(Goal::Maximize)) | (Summary::Max, _) => Reduction::Max,
            (Summary::Best, None) | (Summary::Last, _) => Reduction::Last,
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which of a metric's values a summary takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduction {
    #[default]
    Last,
    Min,
    Max,
}

impl Reduction {
    pub fn as_str(self) -> &'static str {
        match self {
            Reduction::Last => "last",
            Reduction::Min => "min",
            Reduction::Max => "max",
        }
    }
}

impl fmt::Display for Reduction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The running summary of one metric of one run: its last, smallest and largest value,
/// each with the step of the point that carried it (`None` for points without a step),
/// and the [`Reduction`] its sweep chose, which [`MetricSummary::value`] applies.
///
/// Invariants: `min <= last <= max` in value; `min`/`max` keep the earliest point among
/// equal values. Values are finite (metric lines reject anything else).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricSummary {
    pub last: f64,
    pub last_step: Option<i64>,
    pub min: f64,
    pub min_step: Option<i64>,
    pub max: f64,
    pub max_step: Option<i64>,
    /// The value [`MetricSummary::value`] answers with; fixed by the run's sweep.
    #[serde(default)]
    pub reduction: Reduction,
}

impl MetricSummary {
    /// The summary of a metric whose first point is `value` at `step`.
    pub fn first(value: f64, step: Option<i64>, reduction: Reduction) -> Self {
        MetricSummary {
            last: value,
            last_step: step,
            min: value,
            min_step: step,
            max: value,
            max_step: step,
            reduction,
        }
    }

    /// Takes in the next point of the metric, in report order.
    pub fn observe(&mut self, value: f64, step: Option<i64>) {
        self.last = value;
        self.last_step = step;
        if value < self.min {
            self.min = value;
            self.min_step = step;
        }
        if value > self.max {
            self.max = value;
            self.max_step = step;
        }
    }

    /// The value that stands for the run: last, min or max as the sweep chose.
    pub fn value(&self) -> f64 {
        self.reduced(self.reduction).0
    }

    /// The value and step a reduction picks.
    pub fn reduced(&self, reduction: Reduction) -> (f64, Option<i64>) {
        match reduction {
            Reduction::Last => (self.last, self.last_step),
            Reduction::Min => (self.min, self.min_step),
            Reduction::Max => (self.max, self.max_step),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn best_follows_the_goal_and_needs_one() {
        assert_eq!(Summary::Best.resolve(Some(Goal::Minimize)), Reduction::Min);
        assert_eq!(Summary::Best.resolve(Some(Goal::Maximize)), Reduction::Max);
        assert_eq!(Summary::Best.resolve(None), Reduction::Last);
        for goal in [None, Some(Goal::Minimize), Some(Goal::Maximize)] {
            assert_eq!(Summary::Last.resolve(goal), Reduction::Last);
            assert_eq!(Summary::Min.resolve(goal), Reduction::Min);
            assert_eq!(Summary::Max.resolve(goal), Reduction::Max);
        }
        for summary in Summary::ALL {
            assert_eq!(Summary::from_name(summary.as_str()), Some(summary));
        }
        assert_eq!(Summary::from_name("mean"), None);
    }

    #[test]
    fn a_summary_keeps_last_min_max_and_their_steps() {
        let mut summary = MetricSummary::first(0.9, Some(1), Reduction::Min);
        summary.observe(0.4, Some(2));
        summary.observe(1.5, Some(3));
        summary.observe(0.4, Some(4));
        summary.observe(0.7, None);
        assert_eq!(summary.reduced(Reduction::Last), (0.7, None));
        assert_eq!(summary.reduced(Reduction::Min), (0.4, Some(2)));
        assert_eq!(summary.reduced(Reduction::Max), (1.5, Some(3)));
        assert_eq!(summary.value(), 0.4);
    }

    #[test]
    fn records_without_a_reduction_mean_last() {
        let json = r#"{"last":2.0,"last_step":5,"min":1.0,"min_step":1,"max":3.0,"max_step":2}"#;
        let summary: MetricSummary = serde_json::from_str(json).unwrap();
        assert_eq!(summary.reduction, Reduction::Last);
        assert_eq!(summary.value(), 2.0);
    }

    proptest! {
        #[test]
        fn summaries_match_a_full_scan(
            values in prop::collection::vec(-1.0e6f64..1.0e6, 1..40),
        ) {
            let mut summary = MetricSummary::first(values[0], Some(0), Reduction::Last);
            for (step, value) in values.iter().enumerate().skip(1) {
                summary.observe(*value, Some(step as i64));
            }
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            prop_assert_eq!(summary.min, min);
            prop_assert_eq!(summary.max, max);
            prop_assert_eq!(summary.last, *values.last().unwrap());
            let first_min = values.iter().position(|v| *v == min).unwrap() as i64;
            prop_assert_eq!(summary.min_step, Some(first_min));
            prop_assert!(summary.min <= summary.last && summary.last <= summary.max);
        }
    }
}
