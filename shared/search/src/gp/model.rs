//! Gaussian-process regression with a Matérn 5/2 ARD kernel on the unit cube:
//! `k(x, x') = s · m(r²)`, `r² = Σ_d λ_d (x_d - x'_d)²`,
//! `m(r²) = (1 + √5 r + 5 r² / 3) e^{-√5 r}`, plus `noise` on the diagonal.
//!
//! The hyperparameters (the inverse squared length scales `λ_d`, the kernel scale `s` and
//! the noise variance) are fitted by maximising the log marginal likelihood plus the log
//! prior Optuna's `GPSampler` uses (`-(0.1/λ + 0.1 λ)` per dimension, Gamma(2, 1) on `s`,
//! Gamma(1.1, 30) on the noise), with analytic gradients and L-BFGS, in log space.
//! The outputs are expected standardised (mean 0, variance 1), the mean function is zero.

use rand::Rng;

use super::lbfgs;
use super::linalg::Cholesky;

/// The smallest noise variance (of standardised outputs): keeps the kernel matrix well
/// conditioned when observations nearly coincide.
pub(crate) const MIN_NOISE: f64 = 1e-6;

/// Bounds of every log-scale hyperparameter during the fit.
const LOG_LOWER: f64 = -15.0;
const LOG_UPPER: f64 = 12.0;

const SQRT_5: f64 = 2.236_067_977_499_79;
const LN_2PI: f64 = 1.837_877_066_409_345_3;

/// `m(r²)` and `dm/d(r²)` of the Matérn 5/2 kernel.
pub(crate) fn matern52(r2: f64) -> (f64, f64) {
    let r = r2.max(0.0).sqrt();
    let decay = (-SQRT_5 * r).exp();
    let value = (1.0 + SQRT_5 * r + 5.0 / 3.0 * r2) * decay;
    let slope = -5.0 / 6.0 * (1.0 + SQRT_5 * r) * decay;
    (value, slope)
}

/// The kernel's parameters. As a vector `θ` (what the fit moves):
/// `[ln λ_1, …, ln λ_D, ln s, ln(noise - MIN_NOISE)]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Hyper {
    pub(crate) inv_sq_lengthscales: Vec<f64>,
    pub(crate) scale: f64,
    pub(crate) noise: f64,
}

impl Hyper {
    pub(crate) fn from_theta(theta: &[f64]) -> Hyper {
        let dims = theta.len() - 2;
        Hyper {
            inv_sq_lengthscales: theta[..dims].iter().map(|t| t.exp()).collect(),
            scale: theta[dims].exp(),
            noise: MIN_NOISE + theta[dims + 1].exp(),
        }
    }
}

/// Squared coordinate differences of every pair `j < i` of rows, pair-major.
struct PairDistances {
    dims: usize,
    squares: Vec<f64>,
}

impl PairDistances {
    fn new(x: &[Vec<f64>]) -> PairDistances {
        let dims = x.first().map_or(0, Vec::len);
        let mut squares = Vec::with_capacity(x.len() * x.len().saturating_sub(1) / 2 * dims);
        for i in 0..x.len() {
            for j in 0..i {
                squares.extend(x[i].iter().zip(&x[j]).map(|(a, b)| (a - b) * (a - b)));
            }
        }
        PairDistances { dims, squares }
    }

    fn pair(&self, index: usize) -> &[f64] {
        &self.squares[index * self.dims..(index + 1) * self.dims]
    }
}

/// The log marginal likelihood of `y` at `x` plus the log prior of the hyperparameters, and
/// its gradient with respect to `θ` (see [`Hyper`]); `None` when the kernel matrix is not
/// numerically positive definite.
#[cfg(test)]
pub(crate) fn log_posterior(x: &[Vec<f64>], y: &[f64], theta: &[f64]) -> Option<(f64, Vec<f64>)> {
    log_posterior_of(&PairDistances::new(x), y, theta)
}

fn log_posterior_of(pairs: &PairDistances, y: &[f64], theta: &[f64]) -> Option<(f64, Vec<f64>)> {
    let n = y.len();
    let dims = pairs.dims;
    let hyper = Hyper::from_theta(theta);
    let lambda = &hyper.inv_sq_lengthscales;
    // The kernel matrix, and per pair m and dm/dr².
    let mut k = vec![0.0; n * n];
    let pair_count = n * n.saturating_sub(1) / 2;
    let mut values = Vec::with_capacity(pair_count);
    let mut slopes = Vec::with_capacity(pair_count);
    let mut index = 0;
    for i in 0..n {
        for j in 0..i {
            let r2: f64 = pairs
                .pair(index)
                .iter()
                .zip(lambda)
                .map(|(d, l)| d * l)
                .sum();
            let (value, slope) = matern52(r2);
            k[i * n + j] = hyper.scale * value;
            k[j * n + i] = hyper.scale * value;
            values.push(value);
            slopes.push(slope);
            index += 1;
        }
        k[i * n + i] = hyper.scale + hyper.noise;
    }
    let chol = Cholesky::new(&k, n)?;
    let mut alpha = y.to_vec();
    chol.solve(&mut alpha);
    let fit: f64 = y.iter().zip(&alpha).map(|(a, b)| a * b).sum();
    let log_likelihood = -0.5 * fit - 0.5 * chol.log_det() - 0.5 * n as f64 * LN_2PI;
    // d lml / dθ_j = ½ tr((α αᵀ - K⁻¹) dK/dθ_j).
    let inverse = chol.inverse();
    let mut gradient = vec![0.0; dims + 2];
    let mut index = 0;
    for i in 0..n {
        for j in 0..i {
            let w = alpha[i] * alpha[j] - inverse[i * n + j];
            // Both (i, j) and (j, i): the ½ cancels.
            let common = w * hyper.scale * slopes[index];
            for ((g, d), l) in gradient[..dims]
                .iter_mut()
                .zip(pairs.pair(index))
                .zip(lambda)
            {
                *g += common * l * d;
            }
            gradient[dims] += w * hyper.scale * values[index];
            index += 1;
        }
        let w = alpha[i] * alpha[i] - inverse[i * n + i];
        gradient[dims] += 0.5 * w * hyper.scale;
        gradient[dims + 1] += 0.5 * w * (hyper.noise - MIN_NOISE);
    }
    // Optuna's prior.
    let mut log_prior = 0.0;
    for (g, l) in gradient[..dims].iter_mut().zip(lambda) {
        log_prior -= 0.1 / l + 0.1 * l;
        *g += 0.1 / l - 0.1 * l;
    }
    log_prior += hyper.scale.ln() - hyper.scale;
    gradient[dims] += 1.0 - hyper.scale;
    log_prior += 0.1 * hyper.noise.ln() - 30.0 * hyper.noise;
    gradient[dims + 1] += (0.1 / hyper.noise - 30.0) * (hyper.noise - MIN_NOISE);
    Some((log_likelihood + log_prior, gradient))
}

/// A GP conditioned on observations.
#[derive(Debug, Clone)]
pub(crate) struct Gp {
    x: Vec<Vec<f64>>,
    hyper: Hyper,
    chol: Cholesky,
    /// `K⁻¹ y`.
    alpha: Vec<f64>,
}

impl Gp {
    /// Fits the hyperparameters to `(x, y)` (`y` standardised) from a default start and
    /// `restarts` random ones drawn from `rng`, `iterations` L-BFGS steps each, and
    /// conditions on the data with the best. `None` if no start could be evaluated.
    pub(crate) fn fit<R: Rng + ?Sized>(
        x: &[Vec<f64>],
        y: &[f64],
        restarts: usize,
        iterations: usize,
        rng: &mut R,
    ) -> Option<Gp> {
        let dims = x.first().map_or(0, Vec::len);
        let pairs = PairDistances::new(x);
        let objective = |theta: &[f64]| {
            log_posterior_of(&pairs, y, theta)
                .map(|(value, gradient)| (-value, gradient.into_iter().map(|g| -g).collect()))
        };
        let mut starts = Vec::with_capacity(restarts + 1);
        // λ = 1 (a length scale of the whole cube), s = 1, noise 1e-3.
        let mut default = vec![0.0; dims + 2];
        default[dims + 1] = (1e-3f64).ln();
        starts.push(default);
        for _ in 0..restarts {
            let mut theta: Vec<f64> = (0..dims).map(|_| rng.random_range(-1.0..4.0)).collect();
            theta.push(rng.random_range(-1.0..1.0));
            theta.push(rng.random_range(-12.0..-3.0));
            starts.push(theta);
        }
        let mut best: Option<(Vec<f64>, f64)> = None;
        for start in &starts {
            let Some((theta, value)) =
                lbfgs::minimize(objective, start, LOG_LOWER, LOG_UPPER, iterations)
            else {
                continue;
            };
            if best.as_ref().is_none_or(|(_, b)| value < *b) {
                best = Some((theta, value));
            }
        }
        let (theta, _) = best?;
        Gp::new(x, y, Hyper::from_theta(&theta))
    }

    /// The GP with hyperparameters `hyper` conditioned on `(x, y)`; `None` when the kernel
    /// matrix is not numerically positive definite.
    pub(crate) fn new(x: &[Vec<f64>], y: &[f64], hyper: Hyper) -> Option<Gp> {
        let n = x.len();
        let mut k = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..i {
                let value = hyper.scale * matern52(r2(&x[i], &x[j], &hyper)).0;
                k[i * n + j] = value;
                k[j * n + i] = value;
            }
            k[i * n + i] = hyper.scale + hyper.noise;
        }
        let chol = Cholesky::new(&k, n)?;
        let mut alpha = y.to_vec();
        chol.solve(&mut alpha);
        Some(Gp {
            x: x.to_vec(),
            hyper,
            chol,
            alpha,
        })
    }

    pub(crate) fn hyper(&self) -> &Hyper {
        &self.hyper
    }

    /// The posterior mean and variance of the latent function at `point`.
    pub(crate) fn predict(&self, point: &[f64]) -> (f64, f64) {
        let k: Vec<f64> = self
            .x
            .iter()
            .map(|row| self.hyper.scale * matern52(r2(point, row, &self.hyper)).0)
            .collect();
        let mean = k.iter().zip(&self.alpha).map(|(a, b)| a * b).sum();
        let mut v = k;
        self.chol.solve_lower(&mut v);
        let explained: f64 = v.iter().map(|a| a * a).sum();
        (mean, self.floor_variance(self.hyper.scale - explained))
    }

    /// [`Gp::predict`] and the gradients of the mean and variance with respect to `point`,
    /// written to `mean_gradient` and `variance_gradient`.
    pub(crate) fn predict_with_gradient(
        &self,
        point: &[f64],
        mean_gradient: &mut [f64],
        variance_gradient: &mut [f64],
    ) -> (f64, f64) {
        let n = self.x.len();
        let mut k = Vec::with_capacity(n);
        let mut slopes = Vec::with_capacity(n);
        for row in &self.x {
            let (value, slope) = matern52(r2(point, row, &self.hyper));
            k.push(self.hyper.scale * value);
            slopes.push(self.hyper.scale * slope);
        }
        let mean = k.iter().zip(&self.alpha).map(|(a, b)| a * b).sum();
        let mut w = k;
        self.chol.solve_lower(&mut w);
        let explained: f64 = w.iter().map(|a| a * a).sum();
        self.chol.solve_upper(&mut w); // now K⁻¹ k
        mean_gradient.fill(0.0);
        variance_gradient.fill(0.0);
        for (i, row) in self.x.iter().enumerate() {
            for d in 0..point.len() {
                let dk = slopes[i] * 2.0 * self.hyper.inv_sq_lengthscales[d] * (point[d] - row[d]);
                mean_gradient[d] += dk * self.alpha[i];
                variance_gradient[d] -= 2.0 * w[i] * dk;
            }
        }
        (mean, self.floor_variance(self.hyper.scale - explained))
    }

    fn floor_variance(&self, variance: f64) -> f64 {
        variance.max(1e-12 * self.hyper.scale)
    }
}

fn r2(a: &[f64], b: &[f64], hyper: &Hyper) -> f64 {
    a.iter()
        .zip(b)
        .zip(&hyper.inv_sq_lengthscales)
        .map(|((x, y), l)| l * (x - y) * (x - y))
        .sum()
}
