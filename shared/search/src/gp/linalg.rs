//! Dense linear algebra for the GP: the Cholesky factor of a symmetric positive-definite
//! matrix and the solves built on it. Matrices are row-major `Vec<f64>`s of `n * n`;
//! `n` stays below [`super::MAX_GP_OBSERVATIONS`], so the cubic cost stays small.

/// The lower-triangular factor `L` of `A = L Lᵀ`.
#[derive(Debug, Clone)]
pub(crate) struct Cholesky {
    n: usize,
    /// Row-major; entries above the diagonal are zero.
    l: Vec<f64>,
}

impl Cholesky {
    /// Factors the `n x n` matrix `a` (only its lower triangle is read), or `None` when it
    /// is not numerically positive definite.
    pub(crate) fn new(a: &[f64], n: usize) -> Option<Cholesky> {
        debug_assert_eq!(a.len(), n * n);
        let mut l = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                let row_i = &l[i * n..i * n + j];
                let row_j = &l[j * n..j * n + j];
                let dot: f64 = row_i.iter().zip(row_j).map(|(x, y)| x * y).sum();
                let value = a[i * n + j] - dot;
                if i == j {
                    if !(value > 0.0 && value.is_finite()) {
                        return None;
                    }
                    l[i * n + i] = value.sqrt();
                } else {
                    l[i * n + j] = value / l[j * n + j];
                }
            }
        }
        Some(Cholesky { n, l })
    }

    /// Solves `L y = b` in place.
    pub(crate) fn solve_lower(&self, b: &mut [f64]) {
        let n = self.n;
        for i in 0..n {
            let row = &self.l[i * n..i * n + i];
            let dot: f64 = row.iter().zip(&b[..i]).map(|(x, y)| x * y).sum();
            b[i] = (b[i] - dot) / self.l[i * n + i];
        }
    }

    /// Solves `Lᵀ x = y` in place.
    pub(crate) fn solve_upper(&self, b: &mut [f64]) {
        let n = self.n;
        for i in (0..n).rev() {
            b[i] /= self.l[i * n + i];
            let value = b[i];
            for (bk, lik) in b[..i].iter_mut().zip(&self.l[i * n..i * n + i]) {
                *bk -= lik * value;
            }
        }
    }

    /// Solves `A x = b` in place.
    pub(crate) fn solve(&self, b: &mut [f64]) {
        self.solve_lower(b);
        self.solve_upper(b);
    }

    /// `ln det A = 2 Σ ln L_ii`.
    pub(crate) fn log_det(&self) -> f64 {
        2.0 * (0..self.n)
            .map(|i| self.l[i * self.n + i].ln())
            .sum::<f64>()
    }

    /// `A⁻¹`, row-major (`L⁻ᵀ L⁻¹` from the inverse of the triangular factor).
    pub(crate) fn inverse(&self) -> Vec<f64> {
        let n = self.n;
        // Column j of L⁻¹, stored as row j of `inv_l_t` (so rows are contiguous).
        let mut inv_l_t = vec![0.0; n * n];
        for j in 0..n {
            let column = &mut inv_l_t[j * n..(j + 1) * n];
            column[j] = 1.0 / self.l[j * n + j];
            for i in j + 1..n {
                let row = &self.l[i * n + j..i * n + i];
                let dot: f64 = row.iter().zip(&column[j..i]).map(|(x, y)| x * y).sum();
                column[i] = -dot / self.l[i * n + i];
            }
        }
        // (A⁻¹)_ab = Σ_k (L⁻¹)_ka (L⁻¹)_kb = Σ_k inv_l_t[a][k] inv_l_t[b][k], k >= max(a, b).
        let mut inverse = vec![0.0; n * n];
        for a in 0..n {
            for b in 0..=a {
                let start = a.max(b);
                let dot: f64 = inv_l_t[a * n + start..(a + 1) * n]
                    .iter()
                    .zip(&inv_l_t[b * n + start..(b + 1) * n])
                    .map(|(x, y)| x * y)
                    .sum();
                inverse[a * n + b] = dot;
                inverse[b * n + a] = dot;
            }
        }
        inverse
    }
}
