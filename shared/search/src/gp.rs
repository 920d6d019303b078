//! Gaussian-process Bayesian optimisation: the sampler behind `method: gp`.
//!
//! It follows Optuna's `GPSampler` (`optuna/_gp`), with log-EI as in BoTorch:
//!
//! - Until [`GpConfig::n_startup_trials`] trials have completed, points come from the
//!   prior, the same draws as TPE's start-up trials ([`crate::tpe::Tpe::sample_prior`]).
//! - Every dimension is mapped onto `[0, 1]` (module `gp/model.rs` works on the unit
//!   cube): floats linearly, `log` ones in log space, integers and stepped floats over
//!   their grid widened by half a step at each end (rounded back to the grid when
//!   proposed), categoricals one-hot (one column per choice).
//! - The completed losses are warped ([`OutputWarping`]) and standardised, and a GP with a
//!   Matérn 5/2 kernel with one length scale per column is fitted by maximising the
//!   marginal likelihood with Optuna's prior on the hyperparameters (L-BFGS with analytic
//!   gradients from a default start and [`GpConfig::restarts`] random ones).
//! - Trials in flight get the GP's posterior mean as their value (the "kriging
//!   believer"): the posterior mean does not move, the posterior variance around them
//!   shrinks, so a parallel sweep's proposals spread out instead of piling up.
//! - The next point maximises log expected improvement (module `gp/acquisition.rs`) over
//!   [`GpConfig::n_candidates`] candidates (half uniform in the cube, half around the best
//!   trials so far), the best few refined by projected gradient ascent on the numeric
//!   columns.
//! - At most [`MAX_GP_OBSERVATIONS`] completed trials are modelled (the best half and the
//!   most recent rest), so a proposal's cubic cost stays bounded.
//!
//! Conditional dimensions are refused ([`GpError::Conditional`]); trials with an inactive
//! or missing dimension (an earlier sweep's, with `warm_start:`) are left out. Everything
//! is a pure function of `(space, config, history, rng)`.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::tpe::{self, Dim, DimSpec, DimValue, Tpe, TpeConfig, TpeError, Trial};

mod acquisition;
mod lbfgs;
mod linalg;
mod model;

use model::Gp;

/// The most completed trials a GP proposal models: the kernel matrix is factored by hand
/// (no BLAS), `O(n³)` per likelihood evaluation. Beyond it the best half and the most
/// recent rest are kept.
pub const MAX_GP_OBSERVATIONS: usize = 200;

/// The most in-flight trials a GP proposal believes (the most recent ones).
pub const MAX_GP_PENDING: usize = 64;

/// How completed losses are transformed before they are standardised and modelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputWarping {
    /// Losses as they are.
    None,
    /// `ln(loss - min + c)` with `c` the median's distance to the minimum (a shifted
    /// Box-Cox transform with λ = 0): long upper tails (Rosenbrock's) no longer dominate
    /// the fit, while the losses below the median keep nearly their linear spacing.
    Log,
    /// Normal scores of the ranks (a Gaussian copula): only the order of the losses is
    /// modelled.
    Rank,
}

/// Settings of the sampler; [`Default`] is what `method: gp` runs. The default warping,
/// [`OutputWarping::Log`], was chosen on `ladder bench search` (docs/internals/benchmarks.md):
/// against no warping it cuts Rosenbrock4's regret 4× at 100 trials and 20× at 40, and
/// keeps Branin and Hartmann6 as good; rank warping was worse on all four functions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpConfig {
    /// Completed trials before the model is used; until then points come from the prior.
    pub n_startup_trials: usize,
    /// Candidates on which log-EI is evaluated per proposal.
    pub n_candidates: usize,
    /// The best candidates refined by gradient ascent.
    pub n_refined: usize,
    /// Random starts of the hyperparameter fit besides the default one, while at most
    /// [`GpConfig::restarts_up_to`] trials are modelled (beyond, the default start only:
    /// each start costs a few cubic factorisations per iteration).
    pub restarts: usize,
    pub restarts_up_to: usize,
    /// L-BFGS iterations per start.
    pub fit_iterations: usize,
    pub warping: OutputWarping,
}

impl Default for GpConfig {
    fn default() -> Self {
        GpConfig {
            n_startup_trials: 10,
            n_candidates: 1024,
            n_refined: 5,
            restarts: 2,
            restarts_up_to: 100,
            fit_iterations: 60,
            warping: OutputWarping::Log,
        }
    }
}

/// A search space the GP sampler cannot work with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GpError {
    #[error(transparent)]
    Space(#[from] TpeError),
    #[error("dimension {name:?} is conditional; the GP method models only spaces whose parameters are always active")]
    Conditional { name: String },
}

/// The coordinator's entry point: the suggestion for trial `index` of a sweep with `seed`,
/// given the history so far (see [`suggest`]).
pub fn suggest_with_seed(
    space: &[DimSpec],
    config: &GpConfig,
    history: &[Trial],
    seed: u64,
    index: u64,
) -> Result<Vec<Option<DimValue>>, GpError> {
    suggest(space, config, history, &mut tpe::trial_rng(seed, index))
}

/// The next point to evaluate, given every trial created so far (completed, failed and
/// pending, in creation order). Same history and same generator state → same point.
pub fn suggest<R: Rng + ?Sized>(
    space: &[DimSpec],
    config: &GpConfig,
    history: &[Trial],
    rng: &mut R,
) -> Result<Vec<Option<DimValue>>, GpError> {
    let prior = Tpe::new(space.to_vec(), TpeConfig::default())?;
    if let Some(conditional) = space.iter().find(|spec| spec.condition.is_some()) {
        return Err(GpError::Conditional {
            name: conditional.name.clone(),
        });
    }
    let encoding = Encoding::new(space);
    let mut completed: Vec<(Vec<f64>, f64)> = Vec::new();
    let mut pending: Vec<Vec<f64>> = Vec::new();
    for trial in history {
        let Some(row) = encoding.encode(&trial.values) else {
            continue;
        };
        if trial.pending {
            pending.push(row);
        } else if let Some(loss) = trial.loss.filter(|l| l.is_finite()) {
            completed.push((row, loss));
        }
    }
    if completed.len() < config.n_startup_trials.max(1) {
        return Ok(prior.sample_prior(rng));
    }
    let completed = bounded(completed);
    let pending = &pending[pending.len().saturating_sub(MAX_GP_PENDING)..];
    let x: Vec<Vec<f64>> = completed.iter().map(|(row, _)| row.clone()).collect();
    let losses: Vec<f64> = completed.iter().map(|(_, loss)| *loss).collect();
    let y = standardize(&warp(&losses, config.warping));
    let restarts = if x.len() <= config.restarts_up_to {
        config.restarts
    } else {
        0
    };
    let Some(fitted) = Gp::fit(&x, &y, restarts, config.fit_iterations, rng) else {
        return Ok(prior.sample_prior(rng));
    };
    let gp = believe_pending(fitted, &x, &y, pending);
    let best = y.iter().copied().fold(f64::INFINITY, f64::min);
    // The best few trials, as centres of local candidates.
    let mut order: Vec<usize> = (0..y.len()).collect();
    order.sort_by(|&a, &b| y[a].total_cmp(&y[b]));
    let centres: Vec<&Vec<f64>> = order.iter().take(5).map(|&i| &x[i]).collect();
    let point = encoding.maximize(&gp, best, &centres, config, rng);
    Ok(encoding.decode(&point))
}

/// At most [`MAX_GP_OBSERVATIONS`] trials: the best half and the most recent rest, in
/// history order.
fn bounded(completed: Vec<(Vec<f64>, f64)>) -> Vec<(Vec<f64>, f64)> {
    if completed.len() <= MAX_GP_OBSERVATIONS {
        return completed;
    }
    let mut by_loss: Vec<usize> = (0..completed.len()).collect();
    by_loss.sort_by(|&a, &b| completed[a].1.total_cmp(&completed[b].1).then(a.cmp(&b)));
    let mut keep = vec![false; completed.len()];
    for &i in &by_loss[..MAX_GP_OBSERVATIONS / 2] {
        keep[i] = true;
    }
    let mut kept = MAX_GP_OBSERVATIONS / 2;
    for i in (0..completed.len()).rev() {
        if kept == MAX_GP_OBSERVATIONS {
            break;
        }
        if !keep[i] {
            keep[i] = true;
            kept += 1;
        }
    }
    completed
        .into_iter()
        .zip(keep)
        .filter_map(|(trial, keep)| keep.then_some(trial))
        .collect()
}

/// The kriging believer: `gp` conditioned also on the pending points, each with the
/// posterior mean there as its value (same hyperparameters).
fn believe_pending(gp: Gp, x: &[Vec<f64>], y: &[f64], pending: &[Vec<f64>]) -> Gp {
    if pending.is_empty() {
        return gp;
    }
    let mut x_all = x.to_vec();
    let mut y_all = y.to_vec();
    for row in pending {
        y_all.push(gp.predict(row).0);
        x_all.push(row.clone());
    }
    Gp::new(&x_all, &y_all, gp.hyper().clone()).unwrap_or(gp)
}

/// The losses transformed by `warping`.
pub(crate) fn warp(losses: &[f64], warping: OutputWarping) -> Vec<f64> {
    match warping {
        OutputWarping::None => losses.to_vec(),
        OutputWarping::Log => {
            let min = losses.iter().copied().fold(f64::INFINITY, f64::min);
            let mut sorted = losses.to_vec();
            sorted.sort_by(f64::total_cmp);
            let median = sorted[sorted.len() / 2];
            let offset = (median - min).max(1e-12 * min.abs().max(1.0));
            losses.iter().map(|l| (l - min + offset).ln()).collect()
        }
        OutputWarping::Rank => {
            let n = losses.len();
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| losses[a].total_cmp(&losses[b]));
            let mut scores = vec![0.0; n];
            let mut start = 0;
            while start < n {
                // Ties share their mean rank.
                let mut end = start + 1;
                while end < n && losses[order[end]] == losses[order[start]] {
                    end += 1;
                }
                let rank = (start + end - 1) as f64 / 2.0;
                let score = inverse_norm_cdf((rank + 0.5) / n as f64);
                for &i in &order[start..end] {
                    scores[i] = score;
                }
                start = end;
            }
            scores
        }
    }
}

/// `(y - mean) / std`; a constant `y` becomes zeros.
fn standardize(y: &[f64]) -> Vec<f64> {
    let n = y.len() as f64;
    let mean = y.iter().sum::<f64>() / n;
    let variance = y.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let std = if variance > 0.0 { variance.sqrt() } else { 1.0 };
    y.iter().map(|v| (v - mean) / std).collect()
}

/// `Φ⁻¹(p)` for `p` in `(0, 1)`, by bisection on [`tpe::norm_cdf`].
fn inverse_norm_cdf(p: f64) -> f64 {
    let (mut lo, mut hi) = (-40.0, 40.0);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if tpe::norm_cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// How the dimensions map onto the columns of the unit cube.
struct Encoding {
    axes: Vec<Axis>,
    columns: usize,
}

enum Axis {
    Numeric {
        column: usize,
        /// Raw bounds (`high` lowered to the last grid point when stepped).
        low: f64,
        high: f64,
        log: bool,
        step: Option<f64>,
        int: bool,
        /// The (log-)space interval mapped onto `[0, 1]`.
        a: f64,
        b: f64,
    },
    Categorical {
        column: usize,
        /// Cumulative prior probabilities.
        cumulative: Vec<f64>,
    },
}

impl Encoding {
    fn new(space: &[DimSpec]) -> Encoding {
        let mut axes = Vec::with_capacity(space.len());
        let mut columns = 0;
        for spec in space {
            let (low, high, log, step, int) = match &spec.dim {
                Dim::Float {
                    low,
                    high,
                    log,
                    step,
                } => (*low, *high, *log, *step, false),
                Dim::Int { low, high, log } => (*low as f64, *high as f64, *log, Some(1.0), true),
                Dim::Categorical { choices, weights } => {
                    let mut cumulative = Vec::with_capacity(*choices);
                    let total: f64 = weights.as_ref().map_or(*choices as f64, |w| w.iter().sum());
                    let mut sum = 0.0;
                    for c in 0..*choices {
                        sum += weights.as_ref().map_or(1.0, |w| w[c]) / total;
                        cumulative.push(sum);
                    }
                    axes.push(Axis::Categorical {
                        column: columns,
                        cumulative,
                    });
                    columns += choices;
                    continue;
                }
            };
            let high = match step {
                Some(step) => low + ((high - low) / step + 1e-9).floor() * step,
                None => high,
            };
            let half = step.map_or(0.0, |s| s / 2.0);
            let (a, b) = if log {
                ((low - half).max(low / 2.0).ln(), (high + half).ln())
            } else {
                (low - half, high + half)
            };
            axes.push(Axis::Numeric {
                column: columns,
                low,
                high,
                log,
                step,
                int,
                a,
                b,
            });
            columns += 1;
        }
        Encoding { axes, columns }
    }

    /// The unit-cube row of a trial, or `None` when a dimension is inactive or of the
    /// wrong kind.
    fn encode(&self, values: &[Option<DimValue>]) -> Option<Vec<f64>> {
        let mut row = vec![0.0; self.columns];
        for (index, axis) in self.axes.iter().enumerate() {
            let value = values.get(index).copied().flatten()?;
            match (axis, value) {
                (Axis::Categorical { column, cumulative }, DimValue::Choice(c))
                    if c < cumulative.len() =>
                {
                    row[column + c] = 1.0;
                }
                (
                    Axis::Numeric {
                        column, log, a, b, ..
                    },
                    DimValue::Float(_) | DimValue::Int(_),
                ) => {
                    let raw = match value {
                        DimValue::Float(f) => f,
                        DimValue::Int(i) => i as f64,
                        DimValue::Choice(_) => unreachable!(),
                    };
                    if !raw.is_finite() {
                        return None;
                    }
                    let t = if *log {
                        raw.max(f64::MIN_POSITIVE).ln()
                    } else {
                        raw
                    };
                    row[*column] = if b > a {
                        ((t - a) / (b - a)).clamp(0.0, 1.0)
                    } else {
                        0.5
                    };
                }
                _ => return None,
            }
        }
        Some(row)
    }

    /// The point a unit-cube row stands for: numeric columns mapped back and rounded to
    /// their grid, the largest one-hot column as the choice.
    fn decode(&self, row: &[f64]) -> Vec<Option<DimValue>> {
        self.axes
            .iter()
            .map(|axis| {
                Some(match axis {
                    Axis::Categorical { column, cumulative } => {
                        let columns = &row[*column..*column + cumulative.len()];
                        let mut best = 0;
                        for (c, v) in columns.iter().enumerate() {
                            if *v > columns[best] {
                                best = c;
                            }
                        }
                        DimValue::Choice(best)
                    }
                    Axis::Numeric {
                        column,
                        low,
                        high,
                        log,
                        step,
                        int,
                        a,
                        b,
                    } => {
                        let t = a + row[*column].clamp(0.0, 1.0) * (b - a);
                        let raw = if *log { t.exp() } else { t };
                        let raw = match step {
                            Some(step) => {
                                let k_max = ((high - low) / step).round();
                                low + ((raw - low) / step).round().clamp(0.0, k_max) * step
                            }
                            None => raw,
                        }
                        .clamp(*low, *high);
                        if *int {
                            DimValue::Int(raw.round() as i64)
                        } else {
                            DimValue::Float(raw)
                        }
                    }
                })
            })
            .collect()
    }

    /// Columns that gradient ascent moves (numeric ones with a non-empty range).
    fn movable(&self) -> Vec<bool> {
        let mut movable = vec![false; self.columns];
        for axis in &self.axes {
            if let Axis::Numeric {
                column, low, high, ..
            } = axis
            {
                movable[*column] = high > low;
            }
        }
        movable
    }

    /// A uniform row: numeric columns uniform, each categorical one choice by its prior.
    fn random_row<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<f64> {
        let mut row = vec![0.0; self.columns];
        for axis in &self.axes {
            match axis {
                Axis::Numeric { column, .. } => row[*column] = rng.random::<f64>(),
                Axis::Categorical { column, cumulative } => {
                    let u = rng.random::<f64>();
                    let choice = cumulative
                        .iter()
                        .position(|c| u < *c)
                        .unwrap_or(cumulative.len() - 1);
                    row[column + choice] = 1.0;
                }
            }
        }
        row
    }

    /// The row maximising log-EI: candidates scored, the best refined.
    fn maximize<R: Rng + ?Sized>(
        &self,
        gp: &Gp,
        best: f64,
        centres: &[&Vec<f64>],
        config: &GpConfig,
        rng: &mut R,
    ) -> Vec<f64> {
        let movable = self.movable();
        let mut candidates: Vec<(Vec<f64>, f64)> = Vec::with_capacity(config.n_candidates);
        for i in 0..config.n_candidates.max(1) {
            let row = if i % 2 == 0 || centres.is_empty() {
                self.random_row(rng)
            } else {
                // Around one of the best trials: a Gaussian step in every numeric column.
                let centre = centres[(i / 2) % centres.len()];
                let mut row = centre.clone();
                let spread = [0.2, 0.05, 0.01][(i / 2 / centres.len()) % 3];
                for (value, movable) in row.iter_mut().zip(&movable) {
                    if *movable {
                        let step = spread * ladder_spec::space::standard_normal(rng);
                        *value = (*value + step).clamp(0.0, 1.0);
                    }
                }
                row
            };
            let (mean, variance) = gp.predict(&row);
            candidates.push((row, acquisition::log_ei(mean, variance, best)));
        }
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut winner = candidates[0].clone();
        for (row, value) in candidates.into_iter().take(config.n_refined) {
            let refined = refine(gp, best, row, value, &movable);
            if refined.1 > winner.1 {
                winner = refined;
            }
        }
        winner.0
    }
}

/// Projected gradient ascent of log-EI over the movable columns, from `(row, value)`.
fn refine(gp: &Gp, best: f64, row: Vec<f64>, value: f64, movable: &[bool]) -> (Vec<f64>, f64) {
    let dims = row.len();
    let mut gradient = vec![0.0; dims];
    let mut scratch = vec![0.0; 2 * dims];
    let (mut row, mut value) = (row, value);
    acquisition::log_ei_with_gradient(gp, &row, best, &mut gradient, &mut scratch);
    let mut step = 0.05;
    for _ in 0..60 {
        let norm = gradient
            .iter()
            .zip(movable)
            .filter(|(_, m)| **m)
            .map(|(g, _)| g * g)
            .sum::<f64>()
            .sqrt();
        if !(norm > 0.0 && norm.is_finite()) || step < 1e-6 {
            break;
        }
        let candidate: Vec<f64> = row
            .iter()
            .zip(&gradient)
            .zip(movable)
            .map(|((x, g), m)| {
                if *m {
                    (x + step * g / norm).clamp(0.0, 1.0)
                } else {
                    *x
                }
            })
            .collect();
        let mut candidate_gradient = vec![0.0; dims];
        let candidate_value = acquisition::log_ei_with_gradient(
            gp,
            &candidate,
            best,
            &mut candidate_gradient,
            &mut scratch,
        );
        if candidate_value > value {
            row = candidate;
            value = candidate_value;
            gradient = candidate_gradient;
            step *= 1.5;
        } else {
            step *= 0.4;
        }
    }
    (row, value)
}

#[cfg(test)]
mod tests;
