//! Early termination of runs that are doing worse than their peers: ASHA, Hyperband and
//! the median stopping rule, as pure decisions over reported metric values.
//!
//! The coordinator keeps one [`EarlyStopper`] per sweep and feeds it every report of the
//! rule's metric, in the order it stored them: [`EarlyStopper::report`] returns a
//! [`Decision`], [`EarlyStopper::finished`] says a run ended. Nothing here reads a clock,
//! draws random numbers or does I/O, and the state is a function of the sequence of calls
//! alone — so after a restart the coordinator rebuilds it exactly by replaying the stored
//! reports (and `finished` calls) in their original order, and gets the same decisions.
//!
//! # Common semantics
//!
//! - **Trials.** A run is identified by its trial index within the sweep (`u64`).
//! - **Goal.** Values are compared with [`EarlyTerminateSpec::goal`]: under `maximize`
//!   larger is better, under `minimize` smaller is better. Internally every value is
//!   turned into a *score* (the value, or its negation under `minimize`) so both goals use
//!   exactly the same code and are exact mirrors of each other.
//! - **Ignored reports** (return [`Decision::Continue`] and change nothing):
//!   non-finite values (NaN, ±inf); reports whose step is smaller than a step the run
//!   already reported (steps must be non-decreasing; equal steps are fine); reports of a
//!   run after [`EarlyStopper::finished`].
//! - **Stopped runs.** Once a run got a [`Decision::Stop`], every later report of that
//!   run returns *the same* `Stop` again (idempotent: the coordinator may be slow to kill
//!   it) and is not recorded — the rule's view of a run ends at its stop. A stopped run's
//!   earlier values stay in the statistics, as do those of finished runs.
//! - **`min_step`.** A report at a step below `min_step` never stops anything (ASHA and
//!   Hyperband have no rung there; the median rule skips it, though the value still counts
//!   in that run's running average).
//! - **`max_step`.** Reaching `max_step` is completion, not something to cut short: a
//!   report at a step `>= max_step` never returns `Stop` (its value is still recorded at
//!   a rung it reaches, e.g. a rung exactly at `max_step`).
//! - Out-of-range spec values are clamped rather than rejected (the spec is validated
//!   elsewhere): `min_step < 1` acts as 1, `reduction_factor < 2` as 2, `brackets: 0` as 1.
//!
//! # ASHA (asynchronous successive halving)
//!
//! Li et al. 2018, "A System for Massively Parallel Hyperparameter Tuning", in its
//! *stopping* form, as Ray Tune's `AsyncHyperBandScheduler` and Determined's adaptive ASHA
//! in stopping mode. With `eta = reduction_factor`, the rungs are the steps
//! `min_step * eta^k`, k = 0, 1, …, up to and including `max_step` (unbounded without
//! `max_step`; the ladder ends where the step would overflow `i64`). Rung `k` is *global
//! rung index* `k`, the `rung` of a [`Decision::Stop`].
//!
//! A run **reaches** rung `r` at its first (accepted) report with `step >= r`; its value
//! at the rung is the value of that report. When it reaches a rung, its value is recorded
//! there and the cutoff is computed over *all values recorded at the rung so far,
//! including its own*: the `(1 - 1/eta)` quantile with linear interpolation (NumPy's
//! default `percentile`/`nanpercentile` method, the one Ray uses) for `maximize` — so a
//! run continues iff it is within the top `1/eta` of the rung's values — and, mirrored,
//! the `1/eta` quantile for `minimize`. The run continues iff its score is `>=` the cutoff
//! (equal values continue); otherwise it is stopped at that rung, and its value stays
//! recorded. Consequences: the first run at a rung always continues (the quantile of one
//! value is that value), and the best value recorded at a rung is never stopped there.
//! (Ray computes the cutoff before adding the run's own value; with its own value
//! included, a run is compared with a set that contains itself, as the brief for this
//! module asks. Both let the first run through.)
//!
//! The quantile position `(n-1)(eta-1)/eta` is computed in exact integer arithmetic, so a
//! cutoff that falls on a recorded value equals it exactly.
//!
//! If one report crosses several rungs (the run jumped from below rung `a` to beyond rung
//! `b`), the rungs are visited in increasing order, each recording the value; the run is
//! stopped at the first rung where it fails, and is not recorded at the rungs above it
//! (it would have been stopped before reaching them).
//!
//! # Hyperband (asynchronous)
//!
//! Ray's asynchronous Hyperband (`AsyncHyperBandScheduler` with `brackets > 1`, Li et al.
//! 2018 §3). There are `B` brackets: `B = brackets` if given, else the number of rungs
//! between `min_step` and `max_step`, i.e. `floor(log_eta(max_step / min_step)) + 1`
//! (counted exactly in integers; 1 without `max_step`). Trial `i` goes to bracket
//! `i mod B`. Bracket `s` is an independent ASHA (its own recorded values) whose rungs are
//! the global rungs `s, s+1, …` — its first rung is at `min_step * eta^s`, the largest
//! still `<= max_step`. Bracket 0 is plain ASHA, the most aggressive; bracket `s` lets
//! every run train at least `min_step * eta^s` steps before it can be stopped. With the
//! default `B`, the last bracket's only rung is the largest rung step `<= max_step`: when
//! `max_step` is `min_step * eta^(B-1)` exactly, that rung *is* `max_step`, and since a
//! run is never stopped at `max_step`, the last bracket never stops anything (it is the
//! "train everything fully" bracket of Hyperband); otherwise it can stop runs only at that
//! one rung. An explicit `brackets` larger than the default gives brackets with no rung
//! at all, which never stop. All brackets share `max_step` (runs train to `max_step`
//! unless stopped), unlike synchronous Hyperband.
//!
//! # Median stopping rule
//!
//! Google Vizier's median stopping rule (Golovin et al. 2017), as Ray Tune's
//! `MedianStoppingRule`. At a report of run `t` at step `s >= min_step` (and `< max_step`):
//!
//! - *other runs considered*: every other run (running, stopped or finished) whose largest
//!   reported step is `>= s` and which reported at least one value at a step `<= s`;
//! - the *running average* of such a run is the mean of all its values reported at steps
//!   `<= s` (all of them, also those below `min_step`; Ray only averages from its grace
//!   period on);
//! - if fewer than `max(min_runs, 1)` runs are considered, the run continues;
//! - otherwise the run is stopped iff its *best* value so far (over all its reports,
//!   including this one) is strictly worse than the median of those running averages
//!   (the mean of the two middle ones for an even count, as `np.median`).
//!
//! The cost of a median report is linear in the number of runs of the sweep.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use ladder_metrics::Goal;

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

impl EarlyTerminateKind {
    pub const ALL: [EarlyTerminateKind; 3] = [
        EarlyTerminateKind::Asha,
        EarlyTerminateKind::Hyperband,
        EarlyTerminateKind::Median,
    ];

    /// The kind named `name` in a sweep file.
    pub fn from_name(name: &str) -> Option<EarlyTerminateKind> {
        EarlyTerminateKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }
}

impl EarlyTerminateKind {
    /// The rule's name in the sweep file and in stop reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            EarlyTerminateKind::Asha => "asha",
            EarlyTerminateKind::Hyperband => "hyperband",
            EarlyTerminateKind::Median => "median",
        }
    }
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

/// What the coordinator should do with a run after one of its reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Keep running (also the answer to an ignored report).
    Continue,
    /// Stop the run now.
    Stop {
        /// The step of the report that triggered the stop.
        step: i64,
        /// ASHA/Hyperband: the global rung index `k` (rung step `min_step * eta^k`) where
        /// the run failed; `None` for the median rule.
        rung: Option<u32>,
        /// Why, for humans, e.g. `asha: eval/loss 0.82 at step 9 is not in the top 1/3 of
        /// 5 runs at rung 9 (cutoff 0.61)`.
        reason: String,
    },
}

impl Decision {
    /// Whether this is a [`Decision::Stop`].
    pub fn is_stop(&self) -> bool {
        matches!(self, Decision::Stop { .. })
    }
}

/// Values recorded at one rung of one bracket, as scores (higher is better), sorted
/// ascending.
#[derive(Debug, Clone, Default)]
struct Rung {
    scores: Vec<f64>,
}

impl Rung {
    fn insert(&mut self, score: f64) {
        let at = self.scores.partition_point(|&x| x <= score);
        self.scores.insert(at, score);
    }
}

/// What the stopper knows about one trial.
#[derive(Debug, Clone, Default)]
struct TrialState {
    /// Largest step of an accepted report.
    last_step: Option<i64>,
    /// ASHA/Hyperband: index (within the trial's bracket) of the next rung to reach.
    next_rung: usize,
    /// The decision that stopped the run, repeated for its later reports.
    stopped: Option<Decision>,
    finished: bool,
    /// Median: steps of accepted reports (non-decreasing).
    steps: Vec<i64>,
    /// Median: `prefix[j]` is the sum of the scores of reports `0..=j`.
    prefix: Vec<f64>,
    /// Median: best score so far.
    best: Option<f64>,
}

/// Per-sweep early-termination state; see the [module docs](self) for the rules.
///
/// Cloning gives an independent copy that, fed the same calls, makes the same decisions.
#[derive(Debug, Clone)]
pub struct EarlyStopper {
    spec: EarlyTerminateSpec,
    /// `min_step`, at least 1.
    min_step: i64,
    /// `reduction_factor`, at least 2.
    eta: i64,
    /// Number of brackets: 1 for ASHA and median.
    bracket_count: u32,
    /// `rungs[b][j]`: values recorded at rung `j` of bracket `b` (global rung `b + j`);
    /// grown on demand.
    rungs: Vec<Vec<Rung>>,
    trials: BTreeMap<u64, TrialState>,
}

impl EarlyStopper {
    /// A stopper with nothing recorded yet.
    pub fn new(spec: EarlyTerminateSpec) -> Self {
        let min_step = spec.min_step.max(1);
        let eta = i64::from(spec.reduction_factor.max(2));
        let bracket_count = match spec.kind {
            EarlyTerminateKind::Hyperband => match (spec.brackets, spec.max_step) {
                (Some(b), _) => b.max(1),
                (None, Some(max)) => {
                    let mut count = 0u32;
                    let mut step = Some(min_step);
                    while let Some(s) = step.filter(|&s| s <= max) {
                        count += 1;
                        step = s.checked_mul(eta);
                    }
                    count.max(1)
                }
                (None, None) => 1,
            },
            EarlyTerminateKind::Asha | EarlyTerminateKind::Median => 1,
        };
        EarlyStopper {
            spec,
            min_step,
            eta,
            bracket_count,
            rungs: vec![Vec::new(); bracket_count as usize],
            trials: BTreeMap::new(),
        }
    }

    /// The rule's spec.
    pub fn spec(&self) -> &EarlyTerminateSpec {
        &self.spec
    }

    /// Number of Hyperband brackets (1 for ASHA and median).
    pub fn brackets(&self) -> u32 {
        self.bracket_count
    }

    /// The Hyperband bracket of `trial` (`trial mod brackets`); `None` for ASHA and median.
    pub fn bracket_of(&self, trial: u64) -> Option<u32> {
        match self.spec.kind {
            EarlyTerminateKind::Hyperband => Some(self.bracket_index(trial) as u32),
            EarlyTerminateKind::Asha | EarlyTerminateKind::Median => None,
        }
    }

    /// The step a run of `trial` trains to unless stopped: `max_step` for every rule and
    /// every Hyperband bracket (asynchronous Hyperband brackets differ only in where they
    /// start stopping runs, see [`Self::rung_steps_for`]); `None` when unbounded.
    pub fn max_step_for(&self, trial: u64) -> Option<i64> {
        let _ = trial;
        self.spec.max_step
    }

    /// The steps at which `trial` can be stopped: its bracket's rung steps for
    /// ASHA/Hyperband (all `<= max_step`; without `max_step`, every rung up to `i64`
    /// overflow), empty for the median rule (which looks at every report from `min_step`).
    pub fn rung_steps_for(&self, trial: u64) -> Vec<i64> {
        match self.spec.kind {
            EarlyTerminateKind::Median => Vec::new(),
            EarlyTerminateKind::Asha | EarlyTerminateKind::Hyperband => {
                let bracket = self.bracket_index(trial);
                (0..).map_while(|j| self.rung_step(bracket, j)).collect()
            }
        }
    }

    /// The values (in metric units, sorted ascending) recorded so far at global rung
    /// `rung` of `bracket` (0 for ASHA); empty for the median rule or unknown rungs.
    pub fn rung_values(&self, bracket: u32, rung: u32) -> Vec<f64> {
        let (bracket, rung) = (bracket as usize, rung as usize);
        let Some(j) = rung.checked_sub(bracket) else {
            return Vec::new();
        };
        let mut values: Vec<f64> = self
            .rungs
            .get(bracket)
            .and_then(|rungs| rungs.get(j))
            .map(|r| r.scores.iter().map(|&s| self.value_of(s)).collect())
            .unwrap_or_default();
        values.sort_by(f64::total_cmp);
        values
    }

    /// The `Stop` decision `trial` got, if any.
    pub fn stop_decision(&self, trial: u64) -> Option<&Decision> {
        self.trials.get(&trial).and_then(|t| t.stopped.as_ref())
    }

    /// Run `trial` reported `value` of the rule's metric at `step`. Returns whether it
    /// should stop now; see the [module docs](self) for each rule and for the reports that
    /// are ignored. A run that was stopped before gets its original `Stop` again.
    pub fn report(&mut self, trial: u64, step: i64, value: f64) -> Decision {
        let state = self.trials.entry(trial).or_default();
        if let Some(stopped) = &state.stopped {
            return stopped.clone();
        }
        if state.finished || !value.is_finite() || state.last_step.is_some_and(|last| step < last) {
            return Decision::Continue;
        }
        state.last_step = Some(step);
        let score = match self.spec.goal {
            Goal::Maximize => value,
            Goal::Minimize => -value,
        };
        let decision = match self.spec.kind {
            EarlyTerminateKind::Asha | EarlyTerminateKind::Hyperband => {
                self.report_rungs(trial, step, value, score)
            }
            EarlyTerminateKind::Median => self.report_median(trial, step, value, score),
        };
        if decision.is_stop() {
            if let Some(state) = self.trials.get_mut(&trial) {
                state.stopped = Some(decision.clone());
            }
        }
        decision
    }

    /// Run `trial` ended (completed, failed or stopped): its values stay in the
    /// statistics and its later reports are ignored.
    pub fn finished(&mut self, trial: u64) {
        self.trials.entry(trial).or_default().finished = true;
    }

    fn bracket_index(&self, trial: u64) -> usize {
        (trial % u64::from(self.bracket_count)) as usize
    }

    /// Metric value of a score.
    fn value_of(&self, score: f64) -> f64 {
        match self.spec.goal {
            Goal::Maximize => score,
            Goal::Minimize => -score,
        }
    }

    /// Whether a report at `step` may stop its run at all.
    fn may_stop_at(&self, step: i64) -> bool {
        step >= self.min_step && self.spec.max_step.is_none_or(|max| step < max)
    }

    /// Step of rung `j` of `bracket` (global rung `bracket + j`), if it exists.
    fn rung_step(&self, bracket: usize, j: usize) -> Option<i64> {
        let k = u32::try_from(bracket.checked_add(j)?).ok()?;
        let step = self.eta.checked_pow(k)?.checked_mul(self.min_step)?;
        self.spec
            .max_step
            .is_none_or(|max| step <= max)
            .then_some(step)
    }

    fn report_rungs(&mut self, trial: u64, step: i64, value: f64, score: f64) -> Decision {
        let bracket = self.bracket_index(trial);
        let may_stop = self.may_stop_at(step);
        let mut j = self.trials[&trial].next_rung;
        let mut decision = Decision::Continue;
        while let Some(rung_step) = self.rung_step(bracket, j).filter(|&r| r <= step) {
            let ladder = &mut self.rungs[bracket];
            if ladder.len() <= j {
                ladder.resize_with(j + 1, Rung::default);
            }
            let rung = &mut ladder[j];
            rung.insert(score);
            let cutoff = upper_quantile_cutoff(&rung.scores, self.eta);
            let recorded = rung.scores.len();
            j += 1;
            if may_stop && score < cutoff {
                let rule = match self.spec.kind {
                    EarlyTerminateKind::Hyperband => format!("hyperband bracket {bracket}"),
                    _ => "asha".to_string(),
                };
                decision = Decision::Stop {
                    step,
                    rung: Some((bracket + j - 1) as u32),
                    reason: format!(
                        "{rule}: {} {} at step {step} is not in the top 1/{} of {recorded} \
                         runs at rung {rung_step} (cutoff {})",
                        self.spec.metric,
                        fmt_num(value),
                        self.eta,
                        fmt_num(self.value_of(cutoff)),
                    ),
                };
                break;
            }
        }
        if let Some(state) = self.trials.get_mut(&trial) {
            state.next_rung = j;
        }
        decision
    }

    fn report_median(&mut self, trial: u64, step: i64, value: f64, score: f64) -> Decision {
        let state = self.trials.get_mut(&trial).expect("trial state exists");
        let sum = state.prefix.last().copied().unwrap_or(0.0) + score;
        state.steps.push(step);
        state.prefix.push(sum);
        let best = state.best.map_or(score, |b| b.max(score));
        state.best = Some(best);
        if !self.may_stop_at(step) {
            return Decision::Continue;
        }
        let mut averages: Vec<f64> = self
            .trials
            .iter()
            .filter(|&(&id, other)| id != trial && other.last_step.is_some_and(|l| l >= step))
            .filter_map(|(_, other)| {
                let n = other.steps.partition_point(|&s| s <= step);
                (n > 0).then(|| other.prefix[n - 1] / n as f64)
            })
            .collect();
        if averages.is_empty() || averages.len() < self.spec.min_runs as usize {
            return Decision::Continue;
        }
        averages.sort_by(f64::total_cmp);
        let n = averages.len();
        let median = if n % 2 == 1 {
            averages[n / 2]
        } else {
            (averages[n / 2 - 1] + averages[n / 2]) / 2.0
        };
        if best < median {
            Decision::Stop {
                step,
                rung: None,
                reason: format!(
                    "median: {} best {} by step {step} (now {}) is worse than the median {} \
                     of {n} other runs' running averages at step {step}",
                    self.spec.metric,
                    fmt_num(self.value_of(best)),
                    fmt_num(value),
                    fmt_num(self.value_of(median)),
                ),
            }
        } else {
            Decision::Continue
        }
    }
}

/// The `(1 - 1/eta)` quantile of `sorted` (ascending, non-empty) with linear
/// interpolation, as NumPy's default `percentile`: position `h = (n-1)(eta-1)/eta`,
/// computed exactly in integers, between `sorted[floor(h)]` and the next value.
fn upper_quantile_cutoff(sorted: &[f64], eta: i64) -> f64 {
    let n = sorted.len() as u128;
    let eta = eta as u128;
    let num = (n - 1) * (eta - 1);
    let lo = (num / eta) as usize;
    let rem = num % eta;
    if rem == 0 {
        return sorted[lo];
    }
    let (a, b) = (sorted[lo], sorted[lo + 1]);
    let t = rem as f64 / eta as f64;
    // NumPy's `_lerp`: interpolate from the nearer end.
    if t >= 0.5 {
        b - (b - a) * (1.0 - t)
    } else {
        a + (b - a) * t
    }
}

/// A number for a stop reason: up to 6 significant digits, trailing zeros dropped.
fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    let magnitude = v.abs().log10().floor() as i32;
    if (-4..15).contains(&magnitude) {
        let decimals = (5 - magnitude).max(0) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    } else {
        let s = format!("{v:.5e}");
        match s.split_once('e') {
            Some((mantissa, exp)) if mantissa.contains('.') => format!(
                "{}e{exp}",
                mantissa.trim_end_matches('0').trim_end_matches('.')
            ),
            _ => s,
        }
    }
}

#[cfg(test)]
mod tests;
