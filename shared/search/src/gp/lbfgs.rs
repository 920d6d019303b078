//! A small L-BFGS minimiser with a backtracking (Armijo) line search, for the GP's
//! hyperparameters: a handful of unconstrained log-scale parameters, each kept inside a
//! box by projection.

/// Memory of the quasi-Newton approximation (pairs of steps and gradient changes).
const MEMORY: usize = 8;

/// Minimises `f` (value and gradient; `None` where it cannot be evaluated, treated as
/// worse than anything) from `x0`, keeping every coordinate in `[lower, upper]`, for at
/// most `max_iterations` steps. Returns the best point found and its value.
pub(crate) fn minimize(
    mut f: impl FnMut(&[f64]) -> Option<(f64, Vec<f64>)>,
    x0: &[f64],
    lower: f64,
    upper: f64,
    max_iterations: usize,
) -> Option<(Vec<f64>, f64)> {
    let project = |x: &mut [f64]| {
        for v in x.iter_mut() {
            *v = v.clamp(lower, upper);
        }
    };
    let mut x = x0.to_vec();
    project(&mut x);
    let (mut fx, mut gx) = f(&x)?;
    let mut steps: Vec<(Vec<f64>, Vec<f64>, f64)> = Vec::with_capacity(MEMORY);
    for _ in 0..max_iterations {
        let direction = two_loop(&gx, &steps);
        let slope: f64 = direction.iter().zip(&gx).map(|(d, g)| d * g).sum();
        let (direction, slope) = if slope < 0.0 {
            (direction, slope)
        } else {
            // Not a descent direction: fall back to steepest descent, forget the memory.
            steps.clear();
            let direction: Vec<f64> = gx.iter().map(|g| -g).collect();
            let slope = -gx.iter().map(|g| g * g).sum::<f64>();
            (direction, slope)
        };
        if slope.abs() < 1e-12 {
            break;
        }
        // The first step of steepest descent moves at most one unit in log space.
        let norm = direction.iter().map(|d| d * d).sum::<f64>().sqrt();
        let mut alpha = if steps.is_empty() {
            (1.0 / norm).min(1.0)
        } else {
            1.0
        };
        let mut accepted = None;
        for _ in 0..30 {
            let mut candidate: Vec<f64> = x
                .iter()
                .zip(&direction)
                .map(|(xi, di)| xi + alpha * di)
                .collect();
            project(&mut candidate);
            if let Some((fc, gc)) = f(&candidate) {
                if fc <= fx + 1e-4 * alpha * slope {
                    accepted = Some((candidate, fc, gc));
                    break;
                }
            }
            alpha *= 0.5;
        }
        let Some((candidate, fc, gc)) = accepted else {
            break;
        };
        let s: Vec<f64> = candidate.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = gc.iter().zip(&gx).map(|(a, b)| a - b).collect();
        let sy: f64 = s.iter().zip(&y).map(|(a, b)| a * b).sum();
        if sy > 1e-12 {
            if steps.len() == MEMORY {
                steps.remove(0);
            }
            steps.push((s, y, 1.0 / sy));
        }
        let improvement = fx - fc;
        x = candidate;
        fx = fc;
        gx = gc;
        if improvement.abs() < 1e-9 * fx.abs().max(1.0) {
            break;
        }
    }
    Some((x, fx))
}

/// The L-BFGS direction `-H g` from the stored `(s, y, 1 / sᵀy)` pairs, oldest first.
fn two_loop(gradient: &[f64], steps: &[(Vec<f64>, Vec<f64>, f64)]) -> Vec<f64> {
    let mut q = gradient.to_vec();
    let mut alphas = vec![0.0; steps.len()];
    for (k, (s, y, rho)) in steps.iter().enumerate().rev() {
        let alpha = rho * s.iter().zip(&q).map(|(a, b)| a * b).sum::<f64>();
        for (qi, yi) in q.iter_mut().zip(y) {
            *qi -= alpha * yi;
        }
        alphas[k] = alpha;
    }
    if let Some((s, y, _)) = steps.last() {
        let sy: f64 = s.iter().zip(y).map(|(a, b)| a * b).sum();
        let yy: f64 = y.iter().map(|v| v * v).sum();
        if yy > 0.0 {
            for qi in q.iter_mut() {
                *qi *= sy / yy;
            }
        }
    }
    for (k, (s, y, rho)) in steps.iter().enumerate() {
        let beta = rho * y.iter().zip(&q).map(|(a, b)| a * b).sum::<f64>();
        for (qi, si) in q.iter_mut().zip(s) {
            *qi += (alphas[k] - beta) * si;
        }
    }
    q.iter().map(|v| -v).collect()
}
