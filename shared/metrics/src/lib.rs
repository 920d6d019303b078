//! What runs report and how a metric's history stands for a run.
//!
//! - [`line`](mod@line): the agent scans a run's output with [`line::parse_metric_line`] and
//!   [`line::parse_info_line`]: `@ladder {json}` lines become metric points and
//!   `@ladder.info {json}` lines the run's info (provenance); [`line::parse_artifact_line`]
//!   reads `@ladder.artifact {"path": ...}` lines, files to upload to the artifact store.
//! - [`Goal`]: which direction of a metric is better.
//! - [`summary`]: which value of a metric's history stands for a run (last, min, max or
//!   best) and the running [`summary::MetricSummary`] the coordinator keeps per run and
//!   metric.

use std::fmt;

use serde::{Deserialize, Serialize};

pub mod line;
pub mod summary;

/// Direction of optimisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    Minimize,
    #[default]
    Maximize,
}

impl Goal {
    pub const ALL: [Goal; 2] = [Goal::Minimize, Goal::Maximize];
    /// The names the sweep file accepts, in the order of [`Goal::ALL`].
    pub const NAMES: [&'static str; Goal::ALL.len()] = {
        let mut names = [""; Goal::ALL.len()];
        let mut i = 0;
        while i < names.len() {
            names[i] = Goal::ALL[i].as_str();
            i += 1;
        }
        names
    };

    pub const fn as_str(self) -> &'static str {
        match self {
            Goal::Minimize => "minimize",
            Goal::Maximize => "maximize",
        }
    }

    /// Whether `candidate` is strictly better than `incumbent` under this goal.
    pub fn is_better(self, candidate: f64, incumbent: f64) -> bool {
        match self {
            Goal::Minimize => candidate < incumbent,
            Goal::Maximize => candidate > incumbent,
        }
    }
}

impl fmt::Display for Goal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
