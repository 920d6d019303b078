use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::acquisition::{erfcx, log_ei, log_ei_with_gradient, log_h};
use super::linalg::Cholesky;
use super::model::{log_posterior, matern52, Gp, Hyper};
use super::*;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn random_data(n: usize, dims: usize, seed: u64) -> (Vec<Vec<f64>>, Vec<f64>) {
    let mut rng = rng(seed);
    let x: Vec<Vec<f64>> = (0..n)
        .map(|_| (0..dims).map(|_| rng.random::<f64>()).collect())
        .collect();
    let y: Vec<f64> = x
        .iter()
        .map(|row| (3.0 * row[0]).sin() + row.iter().map(|v| (v - 0.4) * (v - 0.4)).sum::<f64>())
        .collect();
    (x, standardize(&y))
}

#[test]
fn cholesky_of_a_known_matrix() {
    let a = [4.0, 12.0, -16.0, 12.0, 37.0, -43.0, -16.0, -43.0, 98.0];
    let chol = Cholesky::new(&a, 3).expect("positive definite");
    // L = [[2, 0, 0], [6, 1, 0], [-8, 5, 3]]
    let mut e0 = [1.0, 0.0, 0.0];
    chol.solve_lower(&mut e0);
    assert!((e0[0] - 0.5).abs() < 1e-12 && (e0[1] + 3.0).abs() < 1e-12);
    assert!((chol.log_det() - 2.0 * 6.0f64.ln()).abs() < 1e-12);
    let mut b = [1.0, 2.0, 3.0];
    chol.solve(&mut b);
    for i in 0..3 {
        let back: f64 = (0..3).map(|j| a[i * 3 + j] * b[j]).sum();
        assert!((back - [1.0, 2.0, 3.0][i]).abs() < 1e-9, "{back}");
    }
    let inverse = chol.inverse();
    for i in 0..3 {
        for j in 0..3 {
            let product: f64 = (0..3).map(|k| a[i * 3 + k] * inverse[k * 3 + j]).sum();
            let identity = if i == j { 1.0 } else { 0.0 };
            assert!((product - identity).abs() < 1e-9, "({i}, {j}): {product}");
        }
    }
    assert!(
        Cholesky::new(&[1.0, 2.0, 2.0, 1.0], 2).is_none(),
        "indefinite"
    );
}

#[test]
fn matern_slope_matches_finite_differences() {
    for r2 in [0.0, 1e-4, 0.3, 2.0, 9.0] {
        let h = 1e-6;
        let numeric =
            (matern52(r2 + h).0 - matern52((r2 - h).max(0.0)).0) / (r2 + h - (r2 - h).max(0.0));
        let analytic = matern52(r2).1;
        assert!(
            (numeric - analytic).abs() < 1e-5,
            "r2 {r2}: {numeric} vs {analytic}"
        );
    }
    assert_eq!(matern52(0.0).0, 1.0);
}

#[test]
fn likelihood_gradient_matches_finite_differences() {
    let (x, y) = random_data(15, 3, 1);
    let theta = [0.3, -0.5, 1.2, 0.2, (1e-2f64).ln()];
    let (_, gradient) = log_posterior(&x, &y, &theta).unwrap();
    for j in 0..theta.len() {
        let h = 1e-5;
        let mut plus = theta;
        plus[j] += h;
        let mut minus = theta;
        minus[j] -= h;
        let numeric = (log_posterior(&x, &y, &plus).unwrap().0
            - log_posterior(&x, &y, &minus).unwrap().0)
            / (2.0 * h);
        assert!(
            (numeric - gradient[j]).abs() < 1e-4 * numeric.abs().max(1.0),
            "θ_{j}: {numeric} vs {}",
            gradient[j]
        );
    }
}

#[test]
fn predictive_and_log_ei_gradients_match_finite_differences() {
    let (x, y) = random_data(12, 2, 2);
    let gp = Gp::fit(&x, &y, 1, 50, &mut rng(3)).unwrap();
    let best = y.iter().copied().fold(f64::INFINITY, f64::min);
    for point in [[0.3, 0.7], [0.9, 0.1], [0.51, 0.49]] {
        let mut mean_gradient = [0.0; 2];
        let mut variance_gradient = [0.0; 2];
        gp.predict_with_gradient(&point, &mut mean_gradient, &mut variance_gradient);
        let mut gradient = [0.0; 2];
        let mut scratch = [0.0; 4];
        let value = log_ei_with_gradient(&gp, &point, best, &mut gradient, &mut scratch);
        let (mean, variance) = gp.predict(&point);
        assert!((value - log_ei(mean, variance, best)).abs() < 1e-12);
        for d in 0..2 {
            let h = 1e-6;
            let mut plus = point;
            plus[d] += h;
            let mut minus = point;
            minus[d] -= h;
            let (mp, vp) = gp.predict(&plus);
            let (mm, vm) = gp.predict(&minus);
            let fd_mean = (mp - mm) / (2.0 * h);
            let fd_variance = (vp - vm) / (2.0 * h);
            let fd_log_ei = (log_ei(mp, vp, best) - log_ei(mm, vm, best)) / (2.0 * h);
            assert!((fd_mean - mean_gradient[d]).abs() < 1e-5 * fd_mean.abs().max(1.0));
            assert!((fd_variance - variance_gradient[d]).abs() < 1e-5 * fd_variance.abs().max(1.0));
            assert!(
                (fd_log_ei - gradient[d]).abs() < 1e-4 * fd_log_ei.abs().max(1.0),
                "{point:?} d {d}: {fd_log_ei} vs {}",
                gradient[d]
            );
        }
    }
}

#[test]
fn the_gp_interpolates_noise_free_data() {
    let (x, y) = random_data(20, 2, 4);
    let gp = Gp::fit(&x, &y, 2, 60, &mut rng(5)).unwrap();
    assert!(gp.hyper().noise < 1e-2, "noise-free data: {:?}", gp.hyper());
    for (row, value) in x.iter().zip(&y) {
        let (mean, variance) = gp.predict(row);
        assert!((mean - value).abs() < 0.05, "{mean} vs {value}");
        assert!(variance < 0.05, "{variance}");
    }
    // Far from the data the variance returns towards the prior's.
    let hyper = Hyper {
        inv_sq_lengthscales: vec![400.0, 400.0],
        scale: 1.0,
        noise: 1e-6,
    };
    let sharp = Gp::new(&x, &y, hyper).unwrap();
    for (row, value) in x.iter().zip(&y) {
        let (mean, variance) = sharp.predict(row);
        assert!((mean - value).abs() < 1e-4 && variance < 1e-4);
    }
}

#[test]
fn log_ei_matches_the_naive_ei_where_that_is_representable() {
    let phi = |z: f64| (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt();
    for i in 0..=300 {
        let z = -25.0 + i as f64 * 0.1;
        let naive = phi(z) + z * crate::tpe::norm_cdf(z);
        let stable = log_h(z);
        // The naive form cancels catastrophically for z << 0; compare it only where it
        // keeps a few digits.
        if z > -5.0 {
            assert!(
                (naive.ln() - stable).abs() < 1e-6 * stable.abs().max(1.0),
                "z {z}: {} vs {stable}",
                naive.ln()
            );
        }
        assert!(stable.is_finite(), "z {z}");
    }
    // Beyond: finite, decreasing, and close to the asymptote -z²/2 - ln √(2π) - 2 ln |z|.
    let mut last = log_h(-5.0);
    for z in [-10.0, -40.0, -1e3, -1e6, -1e9, -1e12] {
        let value = log_h(z);
        assert!(value.is_finite() && value < last, "z {z}: {value}");
        let asymptote = -0.5 * z * z - 0.918_938_533_204_672_8 - 2.0 * (-z).ln();
        assert!((value - asymptote).abs() < 0.02 * asymptote.abs(), "z {z}");
        last = value;
    }
    // EI itself: σ h(z).
    let (mean, variance, best) = (0.3, 0.25, 0.1);
    let z = (best - mean) / 0.5;
    let naive = 0.5 * (phi(z) + z * crate::tpe::norm_cdf(z));
    assert!((log_ei(mean, variance, best) - naive.ln()).abs() < 1e-10);
}

#[test]
fn erfcx_is_continuous_and_exact_at_zero() {
    assert!((erfcx(0.0) - 1.0).abs() < 1e-15);
    let below = erfcx(25.0 - 1e-9);
    let above = erfcx(25.0);
    assert!((below - above).abs() < 1e-10 * above, "{below} vs {above}");
    // erfcx(x) ~ 1 / (x √π) for large x.
    let x = 1e4;
    assert!((erfcx(x) * x * std::f64::consts::PI.sqrt() - 1.0).abs() < 1e-8);
}

fn float(name: &str, low: f64, high: f64, log: bool, step: Option<f64>) -> DimSpec {
    DimSpec {
        name: name.into(),
        dim: Dim::Float {
            low,
            high,
            log,
            step,
        },
        condition: None,
    }
}

fn mixed_space() -> Vec<DimSpec> {
    vec![
        float("lr", 1e-5, 1.0, true, None),
        float("x", -2.0, 2.0, false, None),
        float("width", 16.0, 512.0, true, Some(16.0)),
        DimSpec {
            name: "layers".into(),
            dim: Dim::Int {
                low: 1,
                high: 6,
                log: false,
            },
            condition: None,
        },
        DimSpec {
            name: "optimizer".into(),
            dim: Dim::Categorical {
                choices: 3,
                weights: Some(vec![1.0, 0.0, 1.0]),
            },
            condition: None,
        },
    ]
}

fn mixed_loss(point: &[Option<DimValue>]) -> f64 {
    let number = |i: usize| match point[i] {
        Some(DimValue::Float(f)) => f,
        Some(DimValue::Int(i)) => i as f64,
        other => panic!("{other:?}"),
    };
    let Some(DimValue::Choice(choice)) = point[4] else {
        panic!("{:?}", point[4])
    };
    (number(0).log10() + 2.5).powi(2)
        + (number(1) - 0.3).powi(2)
        + (number(3) - 4.0).abs()
        + if choice == 2 { 0.0 } else { 1.0 }
}

#[test]
fn encoding_round_trips_every_kind_of_dimension() {
    let encoding = Encoding::new(&mixed_space());
    assert_eq!(encoding.columns, 4 + 3);
    let point = vec![
        Some(DimValue::Float(1e-3)),
        Some(DimValue::Float(-1.25)),
        Some(DimValue::Float(128.0)),
        Some(DimValue::Int(6)),
        Some(DimValue::Choice(2)),
    ];
    let row = encoding.encode(&point).unwrap();
    assert!(row.iter().all(|v| (0.0..=1.0).contains(v)));
    assert_eq!(&row[4..], &[0.0, 0.0, 1.0]);
    let back = encoding.decode(&row);
    match back[0] {
        Some(DimValue::Float(lr)) => assert!((lr - 1e-3).abs() < 1e-12),
        ref other => panic!("{other:?}"),
    }
    assert_eq!(back[1..], point[1..]);
    let mut missing = point.clone();
    missing[3] = None;
    assert_eq!(encoding.encode(&missing), None);
}

#[test]
fn proposals_respect_the_space_are_reproducible_and_learn() {
    let space = mixed_space();
    let config = GpConfig::default();
    let run = |seed: u64| {
        let mut history: Vec<Trial> = Vec::new();
        for index in 0..30 {
            let point = suggest_with_seed(&space, &config, &history, seed, index).unwrap();
            let tpe = Tpe::new(space.clone(), TpeConfig::default()).unwrap();
            tpe.check_point(&point).unwrap();
            assert_ne!(point[4], Some(DimValue::Choice(1)), "zero prior weight");
            history.push(Trial {
                loss: Some(mixed_loss(&point)),
                values: point,
                pending: false,
            });
        }
        history
    };
    let a = run(3);
    assert_eq!(a, run(3));
    let best = |history: &[Trial]| {
        history
            .iter()
            .filter_map(|t| t.loss)
            .fold(f64::INFINITY, f64::min)
    };
    let startup = best(&a[..10]);
    assert!(
        best(&a) < startup / 2.0,
        "{} vs start-up {startup}",
        best(&a)
    );
}

#[test]
fn pending_trials_push_the_next_proposal_elsewhere() {
    let space = vec![
        float("x", 0.0, 1.0, false, None),
        float("y", 0.0, 1.0, false, None),
    ];
    let config = GpConfig::default();
    let mut history: Vec<Trial> = (0..12)
        .map(|i| {
            let x = (i as f64 * 0.618).fract();
            let y = (i as f64 * 0.382 + 0.1).fract();
            Trial {
                values: vec![Some(DimValue::Float(x)), Some(DimValue::Float(y))],
                loss: Some((x - 0.3).powi(2) + (y - 0.7).powi(2)),
                pending: false,
            }
        })
        .collect();
    let first = suggest_with_seed(&space, &config, &history, 1, 12).unwrap();
    let same = suggest_with_seed(&space, &config, &history, 1, 12).unwrap();
    assert_eq!(first, same);
    history.push(Trial {
        values: first.clone(),
        loss: None,
        pending: true,
    });
    let second = suggest_with_seed(&space, &config, &history, 1, 12).unwrap();
    let coordinate = |p: &[Option<DimValue>], i: usize| match p[i] {
        Some(DimValue::Float(f)) => f,
        ref other => panic!("{other:?}"),
    };
    let distance = ((coordinate(&first, 0) - coordinate(&second, 0)).powi(2)
        + (coordinate(&first, 1) - coordinate(&second, 1)).powi(2))
    .sqrt();
    assert!(distance > 1e-3, "{first:?} then {second:?}");
}

#[test]
fn conditional_spaces_are_refused_by_name() {
    let mut space = mixed_space();
    space.push(DimSpec {
        name: "momentum".into(),
        dim: Dim::Float {
            low: 0.5,
            high: 0.99,
            log: false,
            step: None,
        },
        condition: Some((4, vec![DimValue::Choice(2)])),
    });
    let error = suggest_with_seed(&space, &GpConfig::default(), &[], 0, 0).unwrap_err();
    assert_eq!(
        error,
        GpError::Conditional {
            name: "momentum".into()
        }
    );
    assert!(error.to_string().contains("\"momentum\""));
}

#[test]
fn warping_keeps_the_order_of_the_losses() {
    let losses = [3.0, 1e4, 0.5, 0.5, 2.0];
    for warping in [OutputWarping::None, OutputWarping::Log, OutputWarping::Rank] {
        let warped = warp(&losses, warping);
        for i in 0..losses.len() {
            for j in 0..losses.len() {
                if losses[i] < losses[j] {
                    assert!(warped[i] < warped[j], "{warping:?}: {warped:?}");
                }
            }
        }
        assert_eq!(warped[2], warped[3]);
    }
    let ranks = warp(&[3.0, 1e4, 0.5, 0.7, 2.0], OutputWarping::Rank);
    assert!(
        ranks.iter().sum::<f64>().abs() < 1e-9,
        "normal scores are symmetric"
    );
}

#[test]
fn observations_beyond_the_bound_keep_the_best_half_and_the_most_recent() {
    let completed: Vec<(Vec<f64>, f64)> = (0..MAX_GP_OBSERVATIONS + 50)
        .map(|i| (vec![i as f64], ((i * 37) % 101) as f64))
        .collect();
    let kept = bounded(completed.clone());
    assert_eq!(kept.len(), MAX_GP_OBSERVATIONS);
    assert_eq!(kept.last(), completed.last(), "the newest is kept");
    let best = completed.iter().map(|t| t.1).fold(f64::INFINITY, f64::min);
    assert!(kept.iter().any(|t| t.1 == best));
    assert!(
        kept.windows(2).all(|w| w[0].0[0] < w[1].0[0]),
        "history order"
    );
}

fn branin(x1: f64, x2: f64) -> f64 {
    use std::f64::consts::PI;
    let b = 5.1 / (4.0 * PI * PI);
    let c = 5.0 / PI;
    let t = 1.0 / (8.0 * PI);
    (x2 - b * x1 * x1 + c * x1 - 6.0).powi(2) + 10.0 * (1.0 - t) * x1.cos() + 10.0
}

/// Simple regret after `trials` trials on Branin; `gp: false` is random search (the
/// prior's draws, which are also the GP's start-up trials).
fn branin_regret(seed: u64, trials: u64, gp: bool) -> f64 {
    let space = vec![
        float("x1", -5.0, 10.0, false, None),
        float("x2", 0.0, 15.0, false, None),
    ];
    let config = GpConfig::default();
    let prior = Tpe::new(space.clone(), TpeConfig::default()).unwrap();
    let mut history: Vec<Trial> = Vec::new();
    let mut best = f64::INFINITY;
    for index in 0..trials {
        let point = if gp {
            suggest_with_seed(&space, &config, &history, seed, index).unwrap()
        } else {
            prior.sample_prior(&mut crate::tpe::trial_rng(seed, index))
        };
        let (Some(DimValue::Float(x1)), Some(DimValue::Float(x2))) = (point[0], point[1]) else {
            panic!("{point:?}")
        };
        let loss = branin(x1, x2);
        best = best.min(loss);
        history.push(Trial {
            values: point,
            loss: Some(loss),
            pending: false,
        });
    }
    best - 0.397_887_357_729_738_1
}

#[test]
fn on_branin_the_gp_beats_random_search_at_40_trials() {
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let seeds = 0..5;
    let gp = median(seeds.clone().map(|s| branin_regret(s, 40, true)).collect());
    let random = median(seeds.map(|s| branin_regret(s, 40, false)).collect());
    assert!(gp < 0.05, "GP median regret {gp}");
    assert!(gp < random / 5.0, "GP {gp} vs random {random}");
}
