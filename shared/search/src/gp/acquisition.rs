//! Log expected improvement, computed stably far into the tail (Ament et al. 2023,
//! "Unexpected improvements to expected improvement for Bayesian optimization"), and its
//! gradient with respect to the candidate point.
//!
//! For a minimised objective with posterior `N(μ, σ²)` at `x` and incumbent `f*`,
//! `EI(x) = σ h(z)`, `z = (f* - μ) / σ`, `h(z) = φ(z) + z Φ(z)`. `ln h` is evaluated
//! directly where that is accurate (`z > -1`) and otherwise as
//! `-z²/2 - ln √(2π) + ln(1 - √(π/2) |z| erfcx(|z| / √2))` through `log1mexp`, with the
//! asymptote `-z²/2 - ln √(2π) - 2 ln |z|` beyond `|z| > 1/√ε`; so log-EI never
//! underflows to `-∞` and its gradient never vanishes where the naive EI is zero.

use crate::tpe::{erfc, norm_cdf};

use super::model::Gp;

const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_8;
/// `ln √(π/2)`.
const LN_SQRT_HALF_PI: f64 = 0.225_791_352_644_727_43;
const SQRT_2: f64 = std::f64::consts::SQRT_2;

/// The scaled complementary error function `erfcx(x) = e^{x²} erfc(x)` for `x >= 0`.
pub(crate) fn erfcx(x: f64) -> f64 {
    debug_assert!(x >= 0.0);
    if x < 25.0 {
        (x * x).exp() * erfc(x)
    } else {
        // Asymptotic series; the next term is below 1e-11 relative at x = 25.
        let inv2 = 1.0 / (x * x);
        let series = 1.0 - 0.5 * inv2 + 0.75 * inv2 * inv2 - 1.875 * inv2 * inv2 * inv2;
        series / (x * std::f64::consts::PI.sqrt())
    }
}

/// `ln(1 - e^a)` for `a < 0`.
fn log1mexp(a: f64) -> f64 {
    if a > -std::f64::consts::LN_2 {
        (-a.exp_m1()).ln()
    } else {
        (-a.exp()).ln_1p()
    }
}

/// `ln h(z)`, `h(z) = φ(z) + z Φ(z)`.
pub(crate) fn log_h(z: f64) -> f64 {
    if z > -1.0 {
        let phi = (-0.5 * z * z - LN_SQRT_2PI).exp();
        return (phi + z * norm_cdf(z)).ln();
    }
    let tail = -0.5 * z * z - LN_SQRT_2PI;
    if z > -1.0 / f64::EPSILON.sqrt() {
        let magnitude = -z;
        tail + log1mexp((erfcx(magnitude / SQRT_2) * magnitude).ln() + LN_SQRT_HALF_PI)
    } else {
        tail - 2.0 * (-z).ln()
    }
}

/// `ln Φ(z)`, accurate in the lower tail.
fn log_norm_cdf(z: f64) -> f64 {
    if z > -1.0 {
        norm_cdf(z).ln()
    } else {
        // Φ(z) = ½ erfc(-z/√2) = ½ erfcx(-z/√2) e^{-z²/2}
        (0.5 * erfcx(-z / SQRT_2)).ln() - 0.5 * z * z
    }
}

/// `d ln h / dz = Φ(z) / h(z)`.
fn log_h_slope(z: f64) -> f64 {
    (log_norm_cdf(z) - log_h(z)).exp()
}

/// `ln EI` for posterior mean `mean`, variance `variance` and incumbent `best` (minimising).
pub(crate) fn log_ei(mean: f64, variance: f64, best: f64) -> f64 {
    let sigma = variance.sqrt();
    let z = (best - mean) / sigma;
    sigma.ln() + log_h(z)
}

/// `ln EI` of `gp` at `point` and its gradient with respect to `point` (written to
/// `gradient`); `scratch` holds two vectors of `point.len()`.
pub(crate) fn log_ei_with_gradient(
    gp: &Gp,
    point: &[f64],
    best: f64,
    gradient: &mut [f64],
    scratch: &mut [f64],
) -> f64 {
    let dims = point.len();
    let (mean_gradient, variance_gradient) = scratch.split_at_mut(dims);
    let (mean, variance) = gp.predict_with_gradient(point, mean_gradient, variance_gradient);
    let sigma = variance.sqrt();
    let z = (best - mean) / sigma;
    let slope = log_h_slope(z);
    for d in 0..dims {
        let sigma_gradient = variance_gradient[d] / (2.0 * sigma);
        let z_gradient = (-mean_gradient[d] - z * sigma_gradient) / sigma;
        gradient[d] = sigma_gradient / sigma + slope * z_gradient;
    }
    sigma.ln() + log_h(z)
}
