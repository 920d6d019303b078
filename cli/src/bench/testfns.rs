//! Standard optimisation test functions (minimisation, known global minima) and the
//! search benchmark behind `ladder bench search`: random search versus TPE
//! ([`ladder_search::tpe`]) and the GP method ([`ladder_search::gp`]) on the same spaces
//! with the same seeds, scored by simple regret
//! (best value found so far minus the global minimum).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use ladder_search::gp::{self, GpConfig};
use ladder_search::tpe::{Dim, DimSpec, DimValue, PendingRule, Tpe, TpeConfig, Trial};

/// A test function with a known global minimum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TestFunction {
    /// 2-d, `x1 in [-5, 10]`, `x2 in [0, 15]`; three global minima, value 0.397887.
    Branin,
    /// 6-d on `[0, 1]^6`; minimum -3.32237.
    Hartmann6,
    /// 4-d on `[-5, 10]^4`; minimum 0 at `(1, 1, 1, 1)`.
    Rosenbrock,
    /// 5-d on `[-32.768, 32.768]^5`; minimum 0 at the origin.
    Ackley,
}

impl TestFunction {
    pub const ALL: [TestFunction; 4] = [
        TestFunction::Branin,
        TestFunction::Hartmann6,
        TestFunction::Rosenbrock,
        TestFunction::Ackley,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            TestFunction::Branin => "branin",
            TestFunction::Hartmann6 => "hartmann6",
            TestFunction::Rosenbrock => "rosenbrock4",
            TestFunction::Ackley => "ackley5",
        }
    }

    /// The box, one `(low, high)` per coordinate.
    pub fn bounds(&self) -> Vec<(f64, f64)> {
        match self {
            TestFunction::Branin => vec![(-5.0, 10.0), (0.0, 15.0)],
            TestFunction::Hartmann6 => vec![(0.0, 1.0); 6],
            TestFunction::Rosenbrock => vec![(-5.0, 10.0); 4],
            TestFunction::Ackley => vec![(-32.768, 32.768); 5],
        }
    }

    pub fn global_min(&self) -> f64 {
        match self {
            TestFunction::Branin => 0.397_887_357_729_738_1, // 5 / (4 pi)
            TestFunction::Hartmann6 => -3.322_368_011_415_51,
            TestFunction::Rosenbrock | TestFunction::Ackley => 0.0,
        }
    }

    /// Points where the global minimum is attained (to the precision published); the
    /// tests check the minima against them.
    #[cfg(test)]
    pub fn minimisers(&self) -> Vec<Vec<f64>> {
        use std::f64::consts::PI;
        match self {
            TestFunction::Branin => vec![vec![-PI, 12.275], vec![PI, 2.275], vec![3.0 * PI, 2.475]],
            TestFunction::Hartmann6 => vec![vec![
                0.201_690, 0.150_011, 0.476_874, 0.275_332, 0.311_652, 0.657_301,
            ]],
            TestFunction::Rosenbrock => vec![vec![1.0; 4]],
            TestFunction::Ackley => vec![vec![0.0; 5]],
        }
    }

    pub fn eval(&self, x: &[f64]) -> f64 {
        match self {
            TestFunction::Branin => branin(x),
            TestFunction::Hartmann6 => hartmann6(x),
            TestFunction::Rosenbrock => rosenbrock(x),
            TestFunction::Ackley => ackley(x),
        }
    }

    /// The search space: one uniform float dimension per coordinate, named `x1`, `x2`, …
    pub fn space(&self) -> Vec<DimSpec> {
        self.bounds()
            .into_iter()
            .enumerate()
            .map(|(i, (low, high))| DimSpec {
                name: format!("x{}", i + 1),
                dim: Dim::Float {
                    low,
                    high,
                    log: false,
                    step: None,
                },
                condition: None,
            })
            .collect()
    }
}

pub fn branin(x: &[f64]) -> f64 {
    use std::f64::consts::PI;
    let (x1, x2) = (x[0], x[1]);
    let b = 5.1 / (4.0 * PI * PI);
    let c = 5.0 / PI;
    let t = 1.0 / (8.0 * PI);
    (x2 - b * x1 * x1 + c * x1 - 6.0).powi(2) + 10.0 * (1.0 - t) * x1.cos() + 10.0
}

pub fn hartmann6(x: &[f64]) -> f64 {
    const ALPHA: [f64; 4] = [1.0, 1.2, 3.0, 3.2];
    const A: [[f64; 6]; 4] = [
        [10.0, 3.0, 17.0, 3.5, 1.7, 8.0],
        [0.05, 10.0, 17.0, 0.1, 8.0, 14.0],
        [3.0, 3.5, 1.7, 10.0, 17.0, 8.0],
        [17.0, 8.0, 0.05, 10.0, 0.1, 14.0],
    ];
    const P: [[f64; 6]; 4] = [
        [1312.0, 1696.0, 5569.0, 124.0, 8283.0, 5886.0],
        [2329.0, 4135.0, 8307.0, 3736.0, 1004.0, 9991.0],
        [2348.0, 1451.0, 3522.0, 2883.0, 3047.0, 6650.0],
        [4047.0, 8828.0, 8732.0, 5743.0, 1091.0, 381.0],
    ];
    -(0..4)
        .map(|i| {
            let inner: f64 = (0..6)
                .map(|j| A[i][j] * (x[j] - 1e-4 * P[i][j]).powi(2))
                .sum();
            ALPHA[i] * (-inner).exp()
        })
        .sum::<f64>()
}

pub fn rosenbrock(x: &[f64]) -> f64 {
    x.windows(2)
        .map(|w| 100.0 * (w[1] - w[0] * w[0]).powi(2) + (1.0 - w[0]).powi(2))
        .sum()
}

pub fn ackley(x: &[f64]) -> f64 {
    use std::f64::consts::{E, TAU};
    let d = x.len() as f64;
    let squares = x.iter().map(|v| v * v).sum::<f64>() / d;
    let cosines = x.iter().map(|v| (TAU * v).cos()).sum::<f64>() / d;
    -20.0 * (-0.2 * squares.sqrt()).exp() - cosines.exp() + 20.0 + E
}

/// A search method of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    /// Independent draws from the prior of the space (uniform here).
    Random,
    /// [`Tpe`] with [`TpeConfig::default`]: multivariate, Optuna 5's defaults, 10 startup
    /// trials; what `method: bayes` runs.
    Tpe,
    /// [`Tpe`] modelling each dimension on its own (`bayes: {multivariate: false}`).
    TpeUnivariate,
    /// [`Method::Tpe`] with `in_flight` trials in flight (`parallel: N`): each proposal
    /// sees the others as pending, handled by the default [`PendingRule`] (the believer),
    /// and trials finish oldest first.
    TpeParallel { in_flight: usize },
    /// [`Method::TpeParallel`] with Optuna's constant liar ([`PendingRule::WorstLiar`]) for
    /// the pending trials, for comparison.
    TpeParallelLiar { in_flight: usize },
    /// The Gaussian-process sampler ([`ladder_search::gp`]) with [`GpConfig::default`]:
    /// what `method: gp` runs.
    Gp,
    /// [`Method::Gp`] with `in_flight` trials in flight, believed at the GP's posterior mean.
    GpParallel { in_flight: usize },
}

impl Method {
    pub fn name(&self) -> String {
        match self {
            Method::Random => "random".into(),
            Method::Tpe => "tpe".into(),
            Method::TpeUnivariate => "tpe-univariate".into(),
            Method::TpeParallel { in_flight } => format!("tpe-parallel{in_flight}"),
            Method::TpeParallelLiar { in_flight } => format!("tpe-parallel{in_flight}-liar"),
            Method::Gp => "gp".into(),
            Method::GpParallel { in_flight } => format!("gp-parallel{in_flight}"),
        }
    }

    /// The method a `--methods` name stands for (`N` is `parallel`).
    pub fn from_name(name: &str, parallel: usize) -> Option<Method> {
        let all = [
            Method::Random,
            Method::Tpe,
            Method::TpeUnivariate,
            Method::TpeParallel {
                in_flight: parallel,
            },
            Method::TpeParallelLiar {
                in_flight: parallel,
            },
            Method::Gp,
            Method::GpParallel {
                in_flight: parallel,
            },
        ];
        all.into_iter().find(|method| method.name() == name)
    }

    /// The sequential method a parallel variant is compared with; `None` for sequential
    /// methods.
    pub fn sequential(&self) -> Option<Method> {
        match self {
            Method::TpeParallel { .. } | Method::TpeParallelLiar { .. } => Some(Method::Tpe),
            Method::GpParallel { .. } => Some(Method::Gp),
            _ => None,
        }
    }

    /// Trials in flight at once.
    pub fn parallel(&self) -> usize {
        match self {
            Method::TpeParallel { in_flight }
            | Method::TpeParallelLiar { in_flight }
            | Method::GpParallel { in_flight } => (*in_flight).max(1),
            _ => 1,
        }
    }
}

/// Simple-regret curves of one method on one function: `curves[seed][t]` is the best
/// value among the first `t + 1` trials minus the global minimum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegretCurves {
    pub function: TestFunction,
    pub method: Method,
    pub curves: Vec<Vec<f64>>,
}

impl RegretCurves {
    /// The `q`-quantile (linear interpolation, like numpy's default) over seeds of the
    /// regret after `trials` trials (1-based).
    pub fn quantile_at(&self, trials: usize, q: f64) -> f64 {
        let mut values: Vec<f64> = self.curves.iter().map(|c| c[trials - 1]).collect();
        quantile(&mut values, q)
    }

    pub fn median_at(&self, trials: usize) -> f64 {
        self.quantile_at(trials, 0.5)
    }
}

fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let pos = q * (values.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    values[lo] + (values[hi] - values[lo]) * (pos - lo as f64)
}

/// One run: `trials` suggestions with the generator seeded from `seed`; returns the
/// regret curve in the order trials finish. Up to [`Method::parallel`] trials are in
/// flight (pending in the history) and the oldest finishes first, so with one at a time
/// the history grows by one completed trial per suggestion. Every method draws from the
/// same generator, so TPE's startup trials equal random's first trials.
pub fn run_once(function: TestFunction, method: Method, seed: u64, trials: usize) -> Vec<f64> {
    let config = TpeConfig {
        multivariate: method != Method::TpeUnivariate,
        pending: match method {
            Method::TpeParallelLiar { .. } => PendingRule::WorstLiar,
            _ => PendingRule::default(),
        },
        ..TpeConfig::default()
    };
    let tpe = Tpe::new(function.space(), config).expect("valid test space");
    let gp_config = GpConfig::default();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut history: Vec<Trial> = Vec::with_capacity(trials);
    let mut in_flight = std::collections::VecDeque::new();
    let mut best = f64::INFINITY;
    let mut curve = Vec::with_capacity(trials);
    while curve.len() < trials {
        while in_flight.len() < method.parallel() && history.len() < trials {
            let point = match method {
                Method::Random => tpe.sample_prior(&mut rng),
                Method::Gp | Method::GpParallel { .. } => {
                    gp::suggest(tpe.space(), &gp_config, &history, &mut rng)
                        .expect("valid test space")
                }
                _ => tpe.suggest(&history, &mut rng),
            };
            in_flight.push_back(history.len());
            history.push(Trial {
                values: point,
                loss: None,
                pending: true,
            });
        }
        let finished = in_flight.pop_front().expect("a trial is in flight");
        let x: Vec<f64> = history[finished]
            .values
            .iter()
            .map(|v| match v {
                Some(DimValue::Float(x)) => *x,
                other => unreachable!("test spaces are all-float: {other:?}"),
            })
            .collect();
        let y = function.eval(&x);
        best = best.min(y);
        curve.push(best - function.global_min());
        history[finished].loss = Some(y);
        history[finished].pending = false;
    }
    curve
}

/// One run per seed in `seeds` of `trials` trials each.
pub fn benchmark(
    function: TestFunction,
    method: Method,
    seeds: std::ops::Range<u64>,
    trials: usize,
) -> RegretCurves {
    RegretCurves {
        function,
        method,
        curves: seeds
            .map(|seed| run_once(function, method, seed, trials))
            .collect(),
    }
}

/// Proposals per second of `method: bayes` (multivariate unless `univariate`) with
/// `observed` completed trials of a `dims`-dimensional uniform space in the history, each
/// proposal going through [`ladder_search::propose`] as the coordinator calls it: `rounds`
/// rounds of `calls` proposals, each round timed on its own; returns the median round's
/// rate and the fastest round's (the least disturbed by other work on the machine).
pub fn proposal_rate(
    dims: usize,
    observed: usize,
    univariate: bool,
    rounds: usize,
    calls: u64,
) -> (f64, f64) {
    use ladder_search::Observation;
    use ladder_spec::{space::Params, ParamValue};

    let mut yaml = format!(
        "name: speed\nmethod: bayes\nmetric: {{name: loss, goal: minimize}}\nmax_runs: {}\ncommand: [t]\n",
        observed as u64 + calls * rounds as u64
    );
    if univariate {
        yaml.push_str("bayes: {multivariate: false}\n");
    }
    yaml.push_str("parameters:\n");
    for d in 0..dims {
        yaml.push_str(&format!(
            "  x{d}: {{distribution: uniform, min: 0, max: 1}}\n"
        ));
    }
    let spec = ladder_spec::parse_sweep("speed.yaml", &yaml).expect("valid benchmark sweep");
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let history: Vec<Observation> = (0..observed)
        .map(|_| {
            let x: Vec<f64> = (0..dims).map(|_| rand::Rng::random(&mut rng)).collect();
            let params: Params = x
                .iter()
                .enumerate()
                .map(|(d, v)| (format!("x{d}"), ParamValue::Float(*v)))
                .collect();
            Observation {
                params,
                value: Some(x.iter().map(|v| (v - 0.3) * (v - 0.3)).sum()),
                pending: false,
            }
        })
        .collect();
    let mut rates: Vec<f64> = Vec::with_capacity(rounds);
    for round in 0..rounds as u64 {
        let began = std::time::Instant::now();
        for call in 0..calls {
            let index = observed as u64 + round * calls + call;
            std::hint::black_box(ladder_search::propose(&spec, index, &history));
        }
        rates.push(calls as f64 / began.elapsed().as_secs_f64());
    }
    let fastest = rates.iter().copied().fold(0.0, f64::max);
    (quantile(&mut rates, 0.5), fastest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_minima_are_attained() {
        for f in TestFunction::ALL {
            assert_eq!(f.space().len(), f.bounds().len());
            for x in f.minimisers() {
                assert_eq!(x.len(), f.bounds().len(), "{}", f.name());
                let y = f.eval(&x);
                assert!(
                    (y - f.global_min()).abs() < 1e-5,
                    "{}: f({x:?}) = {y}, want {}",
                    f.name(),
                    f.global_min()
                );
                for (v, (lo, hi)) in x.iter().zip(f.bounds()) {
                    assert!(*v >= lo && *v <= hi);
                }
            }
        }
        assert!((TestFunction::Branin.global_min() - 0.397_887).abs() < 1e-6);
        assert!((TestFunction::Hartmann6.global_min() + 3.322_37).abs() < 1e-5);
    }

    #[test]
    fn minima_are_minimal_nearby() {
        // Small perturbations of a minimiser never go meaningfully below the minimum.
        for f in TestFunction::ALL {
            for x in f.minimisers() {
                for i in 0..x.len() {
                    for delta in [-1e-2, 1e-2] {
                        let mut y = x.clone();
                        y[i] += delta;
                        assert!(f.eval(&y) > f.global_min() - 1e-6, "{} at {y:?}", f.name());
                    }
                }
            }
        }
    }

    #[test]
    fn benchmark_curves_are_monotone_and_reproducible() {
        let a = benchmark(TestFunction::Branin, Method::Tpe, 0..2, 30);
        let b = benchmark(TestFunction::Branin, Method::Tpe, 0..2, 30);
        assert_eq!(a, b);
        let r = benchmark(TestFunction::Branin, Method::Random, 0..2, 30);
        for curve in a.curves.iter().chain(&r.curves) {
            assert_eq!(curve.len(), 30);
            assert!(curve.windows(2).all(|w| w[1] <= w[0]));
            assert!(curve.iter().all(|&v| v >= -1e-9));
        }
        // Same seeds: TPE's startup trials are random's first trials.
        for (t, r) in a.curves.iter().zip(&r.curves) {
            assert_eq!(t[..10], r[..10]);
        }
        let univariate = benchmark(TestFunction::Branin, Method::TpeUnivariate, 0..2, 30);
        let parallel = benchmark(
            TestFunction::Branin,
            Method::TpeParallel { in_flight: 8 },
            0..2,
            30,
        );
        for curve in univariate.curves.iter().chain(&parallel.curves) {
            assert_eq!(curve.len(), 30);
            assert!(curve.windows(2).all(|w| w[1] <= w[0]));
        }
        assert_ne!(univariate, a, "the univariate model proposes other points");
        assert_ne!(parallel, a, "trials in flight change the proposals");
        assert!((a.quantile_at(30, 0.0) - a.curves[0][29].min(a.curves[1][29])).abs() < 1e-15);
    }

    #[test]
    fn quantiles_interpolate_like_numpy() {
        assert_eq!(quantile(&mut [3.0, 1.0, 2.0, 4.0], 0.5), 2.5);
        assert_eq!(quantile(&mut [3.0, 1.0, 2.0, 4.0], 0.25), 1.75);
        assert_eq!(quantile(&mut [5.0], 0.75), 5.0);
    }
}
