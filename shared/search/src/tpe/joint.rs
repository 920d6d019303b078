//! Multivariate TPE: one joint Parzen estimator per group of dimensions that are active
//! together (Optuna 5's `_ParzenEstimator` with `multivariate=True, group=True`).
//!
//! - [`groups`] splits the dimensions into groups whose members were always active
//!   together in the completed trials (Optuna's `_SearchSpaceGroup`): every trial's set of
//!   active dimensions cuts each group into the part inside the set and the part outside.
//! - [`JointParzen`] is a mixture with one kernel per observation (a trial in which the
//!   whole group was active) plus one prior kernel. A kernel is a product over the group's
//!   dimensions: a Gaussian truncated to the range for numeric ones (its centre the
//!   observed value, its bandwidth that dimension's larger gap to a sorted neighbour,
//!   clipped as in the univariate estimator but with a floor of at most
//!   [`TpeConfig::max_bandwidth_floor`] of the range), a smoothed one-hot vector for categorical
//!   ones. The prior kernel is centred on each range with the range as bandwidth, and
//!   uniform (or the prior weights) over choices.
//! - A proposal draws candidates from `l` (the good trials' estimator) and keeps the one
//!   maximising `log l(x) - log g(x)`, so correlated good regions (a valley along a
//!   diagonal, a learning rate that only works with a given batch size) are followed
//!   instead of being treated one coordinate at a time.

use rand::Rng;

use super::{
    cumulative, log_gauss_mass, log_norm_cdf, sample_index, Numeric, TpeConfig, LN_SQRT_2PI,
};
use ladder_spec::space::standard_normal;

/// Partitions `dims` (ascending dimension indices) into groups of dimensions that were
/// active together in every one of `active_sets` (each ascending), in first-seen order.
/// Dimensions never active are in no group.
pub(super) fn groups<'a>(active_sets: impl Iterator<Item = &'a [usize]>) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    // Cutting by a set a second time changes nothing, so each distinct set is used once.
    let mut seen: std::collections::BTreeSet<&[usize]> = std::collections::BTreeSet::new();
    for active in active_sets {
        if !seen.insert(active) {
            continue;
        }
        let mut remaining: Vec<usize> = active.to_vec();
        let mut next = Vec::with_capacity(groups.len() * 2 + 1);
        for group in &groups {
            let (inside, outside): (Vec<usize>, Vec<usize>) =
                group.iter().partition(|d| active.binary_search(d).is_ok());
            remaining.retain(|d| !inside.contains(d));
            next.push(inside);
            next.push(outside);
        }
        next.push(remaining);
        next.retain(|group| !group.is_empty());
        groups = next;
    }
    groups
}

/// The value of one dimension as the estimator sees it: a position in estimator space
/// (`ln` for log dimensions) or a choice index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Coord {
    Real(f64),
    Choice(usize),
}

/// How far below the largest kernel term (in `ln`) a term may be before [`JointParzen::log_pdf`]
/// skips it.
const NEGLIGIBLE: f64 = 40.0;

/// One dimension of a joint estimator.
#[derive(Debug, Clone)]
enum Axis {
    /// Kernel `k` is a Gaussian `(mus[k], sigmas[k])` truncated to `[num.a, num.b]`.
    Numeric {
        num: Numeric,
        mus: Vec<f64>,
        sigmas: Vec<f64>,
        /// `1 / sigmas[k]`.
        inv_sigmas: Vec<f64>,
        /// `ln` of kernel `k`'s mass inside `[a, b]` (stepped dimensions only; continuous
        /// ones fold it into [`JointParzen::log_const`]).
        log_norm: Vec<f64>,
    },
    /// Kernel `k` picks choice `c` with probability `probs[k][c]`.
    Categorical {
        log_probs: Vec<Vec<f64>>,
        cum_probs: Vec<Vec<f64>>,
    },
}

/// What a dimension of a group is, for [`JointParzen::build`].
#[derive(Debug, Clone)]
pub(super) enum AxisKind<'a> {
    Numeric(&'a Numeric),
    /// The prior probabilities of the choices (normalised, zero = never proposed).
    Categorical(&'a [f64]),
}

/// A mixture of product kernels over the dimensions of one group.
#[derive(Debug, Clone)]
pub(super) struct JointParzen {
    axes: Vec<Axis>,
    /// Running sums of the kernel weights (observations oldest first, the prior last).
    cum_weights: Vec<f64>,
    /// Per kernel: `ln(weight)` plus, for every continuous dimension, `-ln(sigma) -
    /// ln(sqrt(2 pi)) - ln(mass inside [a, b])`; a density is this minus half the squared
    /// standardised distances, summed over the dimensions.
    log_const: Vec<f64>,
}

impl JointParzen {
    /// The estimator over the observed trials, given as one column per axis (in the order
    /// of `kinds`), each holding the trials' coordinates oldest first; every column has
    /// the same length and every coordinate lies inside the space.
    pub(super) fn build(
        kinds: &[AxisKind<'_>],
        columns: &[Vec<Coord>],
        config: &TpeConfig,
    ) -> JointParzen {
        debug_assert_eq!(kinds.len(), columns.len());
        let n = columns.first().map_or(0, Vec::len);
        debug_assert!(columns.iter().all(|column| column.len() == n));
        let mut weights = config.weights.weights(n);
        weights.push(if n == 0 { 1.0 } else { config.prior_weight });
        let total: f64 = weights.iter().sum();
        let mut log_const: Vec<f64> = weights.iter().map(|w| (w / total).ln()).collect();
        let mut axes = Vec::with_capacity(kinds.len());
        for (position, kind) in kinds.iter().enumerate() {
            match kind {
                AxisKind::Numeric(num) => {
                    let observed: Vec<f64> = columns[position]
                        .iter()
                        .map(|coord| match *coord {
                            Coord::Real(x) => x,
                            Coord::Choice(c) => c as f64,
                        })
                        .collect();
                    let (mus, sigmas) = kernels(num, &observed, config);
                    let mut log_norm = Vec::with_capacity(mus.len());
                    // Many bandwidths are the clip's floor: their logarithm is reused.
                    let mut last_ln = (f64::NAN, f64::NAN);
                    for k in 0..mus.len() {
                        let z = log_mass_inside(
                            (num.a - mus[k]) / sigmas[k],
                            (num.b - mus[k]) / sigmas[k],
                        );
                        if num.step.is_some() {
                            log_norm.push(z);
                        } else {
                            if sigmas[k] != last_ln.0 {
                                last_ln = (sigmas[k], sigmas[k].ln());
                            }
                            log_const[k] -= z + last_ln.1 + LN_SQRT_2PI;
                        }
                    }
                    axes.push(Axis::Numeric {
                        num: (*num).clone(),
                        inv_sigmas: sigmas.iter().map(|s| 1.0 / s).collect(),
                        mus,
                        sigmas,
                        log_norm,
                    });
                }
                AxisKind::Categorical(prior) => {
                    let observed: Vec<usize> = columns[position]
                        .iter()
                        .map(|coord| match *coord {
                            Coord::Choice(c) => c,
                            Coord::Real(x) => x as usize,
                        })
                        .collect();
                    let probs = categorical_kernels(prior, &observed, config.prior_weight);
                    axes.push(Axis::Categorical {
                        log_probs: probs
                            .iter()
                            .map(|row| row.iter().map(|p| p.ln()).collect())
                            .collect(),
                        cum_probs: probs.iter().map(|row| cumulative(row)).collect(),
                    });
                }
            }
        }
        JointParzen {
            axes,
            cum_weights: cumulative(&weights),
            log_const,
        }
    }

    /// One draw: a kernel by weight, then each coordinate from that kernel (numeric ones
    /// snapped onto their step grid).
    pub(super) fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<Coord> {
        let k = sample_index(&self.cum_weights, rng);
        self.axes
            .iter()
            .map(|axis| match axis {
                Axis::Numeric {
                    num, mus, sigmas, ..
                } => {
                    let x = truncated_normal(mus[k], sigmas[k], num.a, num.b, rng);
                    Coord::Real(num.t(num.snap(num.t_inv(x))))
                }
                Axis::Categorical { cum_probs, .. } => {
                    Coord::Choice(sample_index(&cum_probs[k], rng))
                }
            })
            .collect()
    }

    /// `ln` of the density at `point` (of the probability for stepped and categorical
    /// dimensions): a density over the continuous dimensions times a mass over the
    /// discrete ones.
    pub(super) fn log_pdf(&self, point: &[Coord]) -> f64 {
        let kernels = self.log_const.len();
        let mut terms = self.log_const.clone();
        for (axis, coord) in self.axes.iter().zip(point) {
            match (axis, *coord) {
                (
                    Axis::Numeric {
                        num,
                        mus,
                        sigmas,
                        inv_sigmas,
                        log_norm,
                    },
                    Coord::Real(x),
                ) => match num.step {
                    None => {
                        for ((term, mu), inv_sigma) in terms.iter_mut().zip(mus).zip(inv_sigmas) {
                            let z = (x - mu) * inv_sigma;
                            *term -= 0.5 * z * z;
                        }
                    }
                    Some(_) => {
                        let (lo, hi) = num.bin(num.t_inv(x));
                        for k in 0..kernels {
                            let (mu, s) = (mus[k], sigmas[k]);
                            terms[k] += log_gauss_mass((lo - mu) / s, (hi - mu) / s) - log_norm[k];
                        }
                    }
                },
                (Axis::Categorical { log_probs, .. }, Coord::Choice(c)) => {
                    for k in 0..kernels {
                        terms[k] += log_probs[k].get(c).copied().unwrap_or(f64::NEG_INFINITY);
                    }
                }
                _ => return f64::NEG_INFINITY,
            }
        }
        let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if max == f64::NEG_INFINITY {
            return max;
        }
        // Kernels more than e^-40 below the largest change the sum by less than a double's
        // precision allows (there are at most MAX_SWEEP_RUNS of them), so they are skipped
        // rather than exponentiated: with many trials nearly all kernels are that far.
        let sum: f64 = terms
            .iter()
            .filter(|&&t| t - max > -NEGLIGIBLE)
            .map(|t| (t - max).exp())
            .sum();
        max + sum.ln()
    }
}

/// Centres and bandwidths of a numeric dimension's kernels: one per observation (in
/// estimator space) and the prior last. Optuna 5's `_calculate_numerical_distributions`:
/// each bandwidth is the larger gap to a sorted neighbour (range ends included, the
/// outermost observations measured inwards only), clipped to `[range / min(100, 1 +
/// kernels), range]`, except that the lower clip is at most
/// [`TpeConfig::max_bandwidth_floor`] times the range.
fn kernels(num: &Numeric, observed: &[f64], config: &TpeConfig) -> (Vec<f64>, Vec<f64>) {
    let (a, b) = (num.a, num.b);
    let range = b - a;
    let n = observed.len();
    // Sorted by value, ties by age: (order key of the value, observation index).
    let mut order: Vec<(u64, usize)> = observed
        .iter()
        .map(|&x| total_order_key(x))
        .zip(0..)
        .collect();
    order.sort_unstable();
    let mut sorted = Vec::with_capacity(n + 2);
    sorted.push(a);
    sorted.extend(order.iter().map(|&(_, i)| observed[i]));
    sorted.push(b);
    let mut sorted_sigmas: Vec<f64> = (0..n)
        .map(|i| (sorted[i + 1] - sorted[i]).max(sorted[i + 2] - sorted[i + 1]))
        .collect();
    if !config.consider_endpoints && sorted.len() >= 4 {
        sorted_sigmas[0] = sorted[2] - sorted[1];
        sorted_sigmas[n - 1] = sorted[n] - sorted[n - 1];
    }
    let kernel_count = (n + 1) as f64;
    let magic_clip = range / 100f64.min(1.0 + kernel_count);
    let min_sigma = magic_clip.min(range * config.max_bandwidth_floor);
    let mut sigmas = vec![0.0; n + 1];
    for (rank, &(_, i)) in order.iter().enumerate() {
        sigmas[i] = sorted_sigmas[rank].clamp(min_sigma, range);
    }
    sigmas[n] = range;
    let mut mus = observed.to_vec();
    mus.push(0.5 * (a + b));
    (mus, sigmas)
}

/// An integer that sorts like `x` under [`f64::total_cmp`] (sign bit flipped for positive
/// numbers, all bits for negative ones), so that sorting needs no float comparisons.
fn total_order_key(x: f64) -> u64 {
    let bits = x.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

/// Kernel rows of a categorical dimension (Optuna 5's `_calculate_categorical_distributions`
/// with prior weights): each observation's row puts `prior_weight / kernels` on every
/// choice (times `choices * prior[c]`, i.e. evenly for a uniform prior) and 1 more on the
/// observed choice, normalised; the last row is the prior itself.
fn categorical_kernels(prior: &[f64], observed: &[usize], prior_weight: f64) -> Vec<Vec<f64>> {
    let choices = prior.len() as f64;
    let smoothing = prior_weight / (observed.len() + 1) as f64;
    let mut rows = Vec::with_capacity(observed.len() + 1);
    for &c in observed {
        let mut row: Vec<f64> = prior.iter().map(|p| smoothing * choices * p).collect();
        if let Some(hit) = row.get_mut(c) {
            *hit += 1.0;
        }
        let total: f64 = row.iter().sum();
        rows.push(row.iter().map(|p| p / total).collect());
    }
    rows.push(prior.to_vec());
    rows
}

/// `ln P(lo <= Z <= hi)` for a standard normal `Z`, `lo <= hi`. A tail beyond 8.3 standard
/// deviations holds less than half an ulp of 1 (5e-17), so it is dropped: the mass is
/// exactly 1 when both ends are that far out (most kernels of a large estimator), one tail
/// when one end is, and [`log_gauss_mass`] otherwise.
fn log_mass_inside(lo: f64, hi: f64) -> f64 {
    const FAR: f64 = 8.3;
    match (lo < -FAR, hi > FAR) {
        (true, true) => 0.0,
        (true, false) => log_norm_cdf(hi),
        (false, true) => log_norm_cdf(-lo),
        (false, false) => log_gauss_mass(lo, hi),
    }
}

/// A draw from `N(mu, sigma)` truncated to `[a, b]`, by rejection (`mu` lies in `[a, b]`
/// and `sigma <= b - a`, so at least a third of the draws land inside); the clamped centre
/// after 1,000 misses.
fn truncated_normal<R: Rng + ?Sized>(mu: f64, sigma: f64, a: f64, b: f64, rng: &mut R) -> f64 {
    for _ in 0..1000 {
        let x = mu + sigma * standard_normal(rng);
        if x >= a && x <= b {
            return x;
        }
    }
    mu.clamp(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tpe::{trial_rng, Dim};

    fn numeric(low: f64, high: f64, log: bool, step: Option<f64>) -> Numeric {
        Numeric::from_dim(&Dim::Float {
            low,
            high,
            log,
            step,
        })
        .expect("a numeric dimension")
    }

    /// `columns`, with one empty column per axis when there are no rows.
    fn columns_of(kinds: &[AxisKind<'_>], rows: &[Vec<Coord>]) -> Vec<Vec<Coord>> {
        let mut out = columns(rows);
        out.resize(kinds.len(), Vec::new());
        out
    }

    /// The columns of `rows` (one row per trial).
    fn columns(rows: &[Vec<Coord>]) -> Vec<Vec<Coord>> {
        let width = rows.first().map_or(0, Vec::len);
        (0..width)
            .map(|axis| rows.iter().map(|row| row[axis]).collect())
            .collect()
    }

    /// Midpoints of `cells` equal cells covering `[a, b]`, with the cell width.
    fn midpoints(a: f64, b: f64, cells: usize) -> (Vec<f64>, f64) {
        let width = (b - a) / cells as f64;
        (
            (0..cells).map(|i| a + (i as f64 + 0.5) * width).collect(),
            width,
        )
    }

    #[test]
    fn groups_split_on_every_trial_and_keep_first_seen_order() {
        let sets: Vec<Vec<usize>> = vec![vec![0, 1, 2], vec![0, 1, 3], vec![0, 1, 2], vec![0]];
        let groups = groups(sets.iter().map(Vec::as_slice));
        assert_eq!(groups, vec![vec![0], vec![1], vec![2], vec![3]]);
        let sets: Vec<Vec<usize>> = vec![vec![0, 2, 3], vec![0, 1, 2, 3], vec![0, 2, 3]];
        let groups = groups_of(&sets);
        assert_eq!(groups, vec![vec![0, 2, 3], vec![1]]);
        assert!(groups_of(&[]).is_empty(), "no trials, no groups");
    }

    fn groups_of(sets: &[Vec<usize>]) -> Vec<Vec<usize>> {
        groups(sets.iter().map(Vec::as_slice))
    }

    #[test]
    fn continuous_densities_integrate_to_one_over_the_box() {
        let config = TpeConfig::default();
        let x = numeric(-5.0, 10.0, false, None);
        let y = numeric(1e-3, 10.0, true, None);
        let kinds = [AxisKind::Numeric(&x), AxisKind::Numeric(&y)];
        let rows: Vec<Vec<Coord>> = [(-4.9, 0.002), (0.0, 1.0), (9.9, 9.0), (3.0, 0.05)]
            .iter()
            .map(|&(a, b)| vec![Coord::Real(a), Coord::Real(f64::ln(b))])
            .collect();
        for observed in [0, 1, 4] {
            let estimator =
                JointParzen::build(&kinds, &columns_of(&kinds, &rows[..observed]), &config);
            let (xs, dx) = midpoints(x.a, x.b, 600);
            let (ys, dy) = midpoints(y.a, y.b, 600);
            let mut total = 0.0;
            for &u in &xs {
                for &v in &ys {
                    total += estimator.log_pdf(&[Coord::Real(u), Coord::Real(v)]).exp() * dx * dy;
                }
            }
            assert!(
                (total - 1.0).abs() < 2e-3,
                "{observed} observations: integral {total}"
            );
        }
    }

    #[test]
    fn mixed_densities_sum_and_integrate_to_one() {
        let config = TpeConfig::default();
        let x = numeric(0.0, 1.0, false, None);
        let width = numeric(16.0, 512.0, true, Some(16.0));
        let prior = [0.5, 0.3, 0.2];
        let kinds = [
            AxisKind::Numeric(&x),
            AxisKind::Numeric(&width),
            AxisKind::Categorical(&prior),
        ];
        let rows: Vec<Vec<Coord>> = [(0.1, 32.0, 0), (0.7, 512.0, 2), (0.5, 16.0, 0)]
            .iter()
            .map(|&(a, w, c)| vec![Coord::Real(a), Coord::Real(f64::ln(w)), Coord::Choice(c)])
            .collect();
        let estimator = JointParzen::build(&kinds, &columns(&rows), &config);
        let (xs, dx) = midpoints(0.0, 1.0, 400);
        let grid: Vec<f64> = (1..=32).map(|k| (16 * k) as f64).collect();
        let mut total = 0.0;
        for &u in &xs {
            for &w in &grid {
                for c in 0..prior.len() {
                    let point = [Coord::Real(u), Coord::Real(w.ln()), Coord::Choice(c)];
                    total += estimator.log_pdf(&point).exp() * dx;
                }
            }
        }
        assert!((total - 1.0).abs() < 2e-3, "integral {total}");
    }

    #[test]
    fn samples_stay_in_the_box_and_on_the_grid() {
        let config = TpeConfig::default();
        let x = numeric(-1.0, 1.0, false, None);
        let step = numeric(0.0, 1.0, false, Some(0.25));
        let prior = [0.0, 1.0, 1.0];
        let kinds = [
            AxisKind::Numeric(&x),
            AxisKind::Numeric(&step),
            AxisKind::Categorical(&prior),
        ];
        let rows = vec![
            vec![Coord::Real(0.99), Coord::Real(1.0), Coord::Choice(1)],
            vec![Coord::Real(-1.0), Coord::Real(0.0), Coord::Choice(2)],
        ];
        let estimator = JointParzen::build(&kinds, &columns(&rows), &config);
        let mut rng = trial_rng(3, 0);
        for _ in 0..2000 {
            let sample = estimator.sample(&mut rng);
            let [Coord::Real(u), Coord::Real(s), Coord::Choice(c)] = sample[..] else {
                panic!("wrong kinds: {sample:?}")
            };
            assert!((-1.0..=1.0).contains(&u), "{u}");
            assert!((0.0..=1.0).contains(&s) && (s * 4.0 - (s * 4.0).round()).abs() < 1e-9);
            assert!(c == 1 || c == 2, "choice {c} has prior weight 0");
            assert!(estimator.log_pdf(&sample).is_finite());
        }
    }

    #[test]
    fn joint_kernels_keep_correlations_that_marginals_lose() {
        // Good points on the diagonal y = x: a product of per-dimension estimators would
        // draw x and y independently; the joint one keeps them together.
        let config = TpeConfig::default();
        let x = numeric(0.0, 1.0, false, None);
        let kinds = [AxisKind::Numeric(&x), AxisKind::Numeric(&x)];
        let rows: Vec<Vec<Coord>> = (0..20)
            .map(|i| {
                let t = (i as f64 + 0.5) / 20.0;
                vec![Coord::Real(t), Coord::Real(t)]
            })
            .collect();
        let estimator = JointParzen::build(&kinds, &columns(&rows), &config);
        let mut rng = trial_rng(11, 0);
        let samples: Vec<(f64, f64)> = (0..4000)
            .map(|_| match estimator.sample(&mut rng)[..] {
                [Coord::Real(u), Coord::Real(v)] => (u, v),
                ref other => panic!("{other:?}"),
            })
            .collect();
        let n = samples.len() as f64;
        let (mu, mv) = samples
            .iter()
            .fold((0.0, 0.0), |(a, b), (u, v)| (a + u / n, b + v / n));
        let cov: f64 = samples
            .iter()
            .map(|(u, v)| (u - mu) * (v - mv))
            .sum::<f64>()
            / n;
        let var_u: f64 = samples.iter().map(|(u, _)| (u - mu).powi(2)).sum::<f64>() / n;
        let var_v: f64 = samples.iter().map(|(_, v)| (v - mv).powi(2)).sum::<f64>() / n;
        let correlation = cov / (var_u * var_v).sqrt();
        assert!(correlation > 0.8, "correlation {correlation}");
        // And the density is higher on the diagonal than off it.
        let on = estimator.log_pdf(&[Coord::Real(0.3), Coord::Real(0.3)]);
        let off = estimator.log_pdf(&[Coord::Real(0.3), Coord::Real(0.8)]);
        assert!(on > off + 1.0, "on {on}, off {off}");
    }

    #[test]
    fn order_keys_sort_like_total_cmp() {
        let mut values = vec![
            3.5,
            -0.0,
            0.0,
            -2.0,
            1e-300,
            -1e300,
            f64::INFINITY,
            7.0,
            -7.0,
        ];
        let mut by_key = values.clone();
        by_key.sort_by_key(|&x| total_order_key(x));
        values.sort_by(f64::total_cmp);
        assert_eq!(
            by_key.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            values.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn bandwidths_follow_the_neighbours_within_the_clip() {
        let x = numeric(0.0, 1.0, false, None);
        // Ten good trials packed near 0.5: Optuna's floor would be 1/12 of the range.
        let observed: Vec<f64> = (0..10).map(|i| 0.5 + 0.001 * i as f64).collect();
        let lowered = TpeConfig::default();
        let (mus, sigmas) = kernels(&x, &observed, &lowered);
        assert_eq!(mus.len(), 11);
        assert_eq!((mus[10], sigmas[10]), (0.5, 1.0), "the prior kernel");
        for s in &sigmas[..10] {
            assert!((s - lowered.max_bandwidth_floor).abs() < 1e-12, "{s}");
        }
        let optuna = TpeConfig {
            max_bandwidth_floor: 1.0,
            ..TpeConfig::default()
        };
        let (_, wide) = kernels(&x, &observed, &optuna);
        for s in &wide[..10] {
            assert!((s - 1.0 / 12.0).abs() < 1e-12, "{s}");
        }
        // Spread-out observations keep their neighbour gaps: the outermost measured inwards.
        let (_, gaps) = kernels(&x, &[0.1, 0.5, 0.6], &lowered);
        assert!((gaps[0] - 0.4).abs() < 1e-12, "{gaps:?}");
        assert!((gaps[1] - 0.4).abs() < 1e-12, "{gaps:?}");
        assert!((gaps[2] - 0.1).abs() < 1e-12, "{gaps:?}");
    }

    proptest::proptest! {
        /// The groups partition the dimensions seen active, and every trial's active set
        /// holds each group whole or not at all (so a group's trials are exactly those in
        /// which one of its dimensions was active).
        #[test]
        fn groups_partition_and_never_straddle_a_trial(
            sets in proptest::collection::vec(
                proptest::collection::btree_set(0usize..8, 0..8),
                0..12,
            )
        ) {
            let sets: Vec<Vec<usize>> = sets.into_iter().map(|s| s.into_iter().collect()).collect();
            let found = groups(sets.iter().map(Vec::as_slice));
            let mut members: Vec<usize> = found.iter().flatten().copied().collect();
            members.sort_unstable();
            let mut seen: Vec<usize> = sets.iter().flatten().copied().collect();
            seen.sort_unstable();
            seen.dedup();
            proptest::prop_assert_eq!(members, seen, "each seen dimension in exactly one group");
            for group in &found {
                proptest::prop_assert!(!group.is_empty());
                for set in &sets {
                    let inside = group.iter().filter(|d| set.contains(d)).count();
                    proptest::prop_assert!(
                        inside == 0 || inside == group.len(),
                        "group {:?} straddles {:?}", group, set
                    );
                }
            }
            // Maximal: two dimensions in different groups are split by some trial.
            for (i, a) in found.iter().enumerate() {
                for b in &found[i + 1..] {
                    let split = sets.iter().any(|set| set.contains(&a[0]) != set.contains(&b[0]));
                    proptest::prop_assert!(split, "{:?} and {:?} could be one group", a, b);
                }
            }
        }
    }
}
