//! Early termination of runs that are doing worse than their peers: ASHA, Hyperband and
//! the median stopping rule, as pure decisions over reported metric values.

use serde::{Deserialize, Serialize};

use crate::spec::Goal;

/// Which rule stops runs early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EarlyTerminateKind {
    /// Asynchronous successive halving (Li et al. 2018), as Ray Tune's ASHA and
    /// Determined's adaptive ASHA.
    Asha,
    /// Several ASHA brackets with different minimum resources, trials spread over them.
    Hyperband,
    /// Stop a run whose best value so far is worse than the median of the other runs'
    /// running averages at the same step (Google Vizier's median stopping rule).
    Median,
}

/// The `early_terminate:` section of a sweep, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyTerminateSpec {
    pub kind: EarlyTerminateKind,
    /// The metric the rule compares (default: the sweep's metric).
    pub metric: String,
    /// Whether larger or smaller values of `metric` are better (default: the sweep
    /// metric's goal when `metric` is the sweep's metric; otherwise it must be given).
    pub goal: Goal,
    /// First rung (ASHA/Hyperband) or first step where the median rule may stop a run;
    /// >= 1; default 1.
    pub min_step: i64,
    /// Steps a run needs to complete (the largest rung); optional for ASHA and median,
    /// required for Hyperband.
    pub max_step: Option<i64>,
    /// ASHA/Hyperband: rungs are at `min_step * reduction_factor^k` and the top
    /// `1/reduction_factor` of each rung continue; >= 2; default 3.
    pub reduction_factor: u32,
    /// Hyperband: number of brackets (default: as many as rungs fit between `min_step`
    /// and `max_step`).
    pub brackets: Option<u32>,
    /// Median: how many other runs must have reported at a step before the rule stops
    /// anything at that step; default 3.
    pub min_runs: u32,
}
