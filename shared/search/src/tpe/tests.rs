//! Tests of `shared/search/src/tpe.rs`.

use super::*;
use proptest::prelude::*;

fn float(name: &str, low: f64, high: f64) -> DimSpec {
    DimSpec {
        name: name.into(),
        dim: Dim::Float {
            low,
            high,
            log: false,
            step: None,
        },
        condition: None,
    }
}

fn done(values: Vec<Option<DimValue>>, loss: f64) -> Trial {
    Trial {
        values,
        loss: Some(loss),
        pending: false,
    }
}

fn as_f64(v: Option<DimValue>) -> f64 {
    match v {
        Some(DimValue::Float(x)) => x,
        Some(DimValue::Int(i)) => i as f64,
        other => panic!("not numeric: {other:?}"),
    }
}

#[test]
fn erf_and_normal_cdf_match_reference_values() {
    // Reference values from mpmath.
    let cases = [
        (0.0, 0.0),
        (0.1, 0.112_462_916_018_284_9),
        (0.5, 0.520_499_877_813_046_5),
        (1.0, 0.842_700_792_949_714_9),
        (2.0, 0.995_322_265_018_952_7),
        (2.4999, 0.999_592_830_099_666_6),
        (3.0, 0.999_977_909_503_001_4),
    ];
    for (x, want) in cases {
        assert!((erf(x) - want).abs() < 1e-14, "erf({x}) = {}", erf(x));
        assert!((erf(-x) + want).abs() < 1e-14);
    }
    let tails = [
        (2.5, 4.069_520_174_449_589e-4),
        (3.0, 2.209_049_699_858_543_8e-5),
        (5.0, 1.537_459_794_428_035_1e-12),
        (10.0, 2.088_487_583_762_545e-45),
    ];
    for (x, want) in tails {
        assert!(
            ((erfc(x) - want) / want).abs() < 1e-12,
            "erfc({x}) = {}",
            erfc(x)
        );
    }
    assert!((norm_cdf(1.959_963_984_540_054) - 0.975).abs() < 1e-14);
    assert!((norm_cdf(-1.0) - 0.158_655_253_931_457_05).abs() < 1e-15);
    // Deep tail: ln Phi(-30) = ln(erfc(30 / sqrt 2) / 2) = -454.32124395634...
    assert!((log_norm_cdf(-30.0) + 454.321_243_956_343_1).abs() < 1e-9);
    assert!((log_norm_cdf(-19.9) - norm_cdf(-19.9).ln()).abs() < 1e-9);
    // Masses: central, tails, consistency.
    let central = log_gauss_mass(-1.0, 1.0).exp();
    assert!((central - 0.682_689_492_137_085_9).abs() < 1e-14);
    let left = log_gauss_mass(-3.0, -2.0).exp();
    assert!((left - (norm_cdf(-2.0) - norm_cdf(-3.0))).abs() < 1e-15);
    assert_eq!(log_gauss_mass(2.0, 3.0), log_gauss_mass(-3.0, -2.0));
    assert!(log_gauss_mass(40.0, 41.0).is_finite());
}

#[test]
fn gamma_and_weights_follow_optuna_defaults() {
    let gamma = Gamma::default();
    assert_eq!(gamma.n_below(0), 0);
    assert_eq!(gamma.n_below(1), 1);
    assert_eq!(gamma.n_below(10), 1);
    assert_eq!(gamma.n_below(11), 2);
    assert_eq!(gamma.n_below(1000), 25);
    let sqrt = Gamma::Sqrt {
        factor: 0.25,
        max: 25,
    };
    assert_eq!(sqrt.n_below(100), 3);
    assert_eq!(Weights::Ramp.weights(3), vec![1.0; 3]);
    let w = Weights::Ramp.weights(30);
    assert_eq!(w.len(), 30);
    assert!((w[0] - 1.0 / 30.0).abs() < 1e-15);
    assert!((w[4] - 1.0).abs() < 1e-15);
    assert!(w[..5].windows(2).all(|p| p[0] < p[1]));
    assert!(w[5..].iter().all(|&x| x == 1.0));
}

#[test]
fn rejects_invalid_spaces_and_configs() {
    let bad = |dim: Dim| {
        Tpe::new(
            vec![DimSpec {
                name: "x".into(),
                dim,
                condition: None,
            }],
            TpeConfig::default(),
        )
        .is_err()
    };
    assert!(bad(Dim::Float {
        low: 1.0,
        high: 0.0,
        log: false,
        step: None
    }));
    assert!(bad(Dim::Float {
        low: 0.0,
        high: 1.0,
        log: true,
        step: None
    }));
    assert!(bad(Dim::Float {
        low: 0.0,
        high: f64::INFINITY,
        log: false,
        step: None
    }));
    assert!(bad(Dim::Float {
        low: 0.0,
        high: 1.0,
        log: false,
        step: Some(0.0)
    }));
    assert!(bad(Dim::Int {
        low: 0,
        high: 10,
        log: true
    }));
    assert!(bad(Dim::Categorical {
        choices: 0,
        weights: None
    }));
    assert!(bad(Dim::Categorical {
        choices: 2,
        weights: Some(vec![0.0, 0.0])
    }));
    assert!(bad(Dim::Categorical {
        choices: 2,
        weights: Some(vec![1.0])
    }));
    let forward = DimSpec {
        condition: Some((1, vec![DimValue::Choice(0)])),
        ..float("x", 0.0, 1.0)
    };
    assert!(Tpe::new(vec![forward, float("y", 0.0, 1.0)], TpeConfig::default()).is_err());
    let config = TpeConfig {
        n_ei_candidates: 0,
        ..TpeConfig::default()
    };
    assert!(Tpe::new(vec![float("x", 0.0, 1.0)], config).is_err());
    for floor in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let config = TpeConfig {
            max_bandwidth_floor: floor,
            ..TpeConfig::default()
        };
        assert!(
            Tpe::new(vec![float("x", 0.0, 1.0)], config).is_err(),
            "{floor}"
        );
    }
}

#[test]
fn reproducible_with_the_same_seed() {
    let space = vec![
        float("x", -3.0, 3.0),
        DimSpec {
            name: "n".into(),
            dim: Dim::Int {
                low: 1,
                high: 1000,
                log: true,
            },
            condition: None,
        },
        DimSpec {
            name: "c".into(),
            dim: Dim::Categorical {
                choices: 4,
                weights: None,
            },
            condition: None,
        },
    ];
    for multivariate in [true, false] {
        let config = TpeConfig {
            multivariate,
            ..TpeConfig::default()
        };
        let mut history = Vec::new();
        for i in 0..30u64 {
            let a = suggest_with_seed(&space, &config, &history, 7, i).unwrap();
            let b = suggest_with_seed(&space, &config, &history, 7, i).unwrap();
            assert_eq!(a, b);
            let loss = as_f64(a[0]).powi(2) + as_f64(a[1]).ln();
            history.push(done(a, loss));
        }
        let other = suggest_with_seed(&space, &config, &history, 8, 30).unwrap();
        let same = suggest_with_seed(&space, &config, &history, 7, 30).unwrap();
        assert_ne!(other, same, "another seed, another proposal");
        let next = suggest_with_seed(&space, &config, &history, 7, 31).unwrap();
        assert_ne!(next, same, "another trial index, another proposal");
        let mut longer = history.clone();
        longer.push(done(same.clone(), -100.0));
        let learned = suggest_with_seed(&space, &config, &longer, 7, 30).unwrap();
        assert_ne!(learned, same, "another history, another proposal");
    }
}

#[test]
fn startup_trials_come_from_the_prior_and_failures_do_not_count() {
    let tpe = Tpe::new(vec![float("x", 0.0, 1.0)], TpeConfig::default()).unwrap();
    let failed = Trial {
        values: vec![Some(DimValue::Float(0.5))],
        loss: None,
        pending: false,
    };
    let history = vec![failed; 20];
    let mut a = ChaCha8Rng::seed_from_u64(1);
    let mut b = ChaCha8Rng::seed_from_u64(1);
    assert_eq!(tpe.suggest(&history, &mut a), tpe.sample_prior(&mut b));
}

#[test]
fn categorical_zero_weight_choices_are_never_proposed() {
    let space = vec![DimSpec {
        name: "c".into(),
        dim: Dim::Categorical {
            choices: 3,
            weights: Some(vec![1.0, 0.0, 3.0]),
        },
        condition: None,
    }];
    let tpe = Tpe::new(space, TpeConfig::default()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut history = Vec::new();
    let mut counts = [0usize; 3];
    for _ in 0..60 {
        let p = tpe.suggest(&history, &mut rng);
        let Some(DimValue::Choice(c)) = p[0] else {
            panic!("{p:?}")
        };
        counts[c] += 1;
        history.push(done(p, if c == 0 { 0.0 } else { 1.0 }));
    }
    assert_eq!(counts[1], 0);
    // The model learns that choice 0 is better despite its lower prior.
    assert!(counts[0] > counts[2], "{counts:?}");
}

/// A large space (two integers in `[0, 1000]`): 16 suggestions, each made with every
/// earlier one pending and the coordinator's per-trial generators, are all distinct.
/// With one generator shared by all 16 calls only the pending rule can make them
/// differ: ignoring pending trials all 16 are the same point; with the constant liar
/// (nearly) all differ, and with the believer several do (the beliefs change the good
/// group only when a pending trial ranks among the best).
#[test]
fn pending_trials_are_not_proposed_again() {
    let int = |name: &str| DimSpec {
        name: name.into(),
        dim: Dim::Int {
            low: 0,
            high: 1000,
            log: false,
        },
        condition: None,
    };
    let space = vec![int("i"), int("j")];
    let mut history = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let prior = Tpe::new(space.clone(), TpeConfig::default()).unwrap();
    for _ in 0..20 {
        let p = prior.sample_prior(&mut rng);
        let loss = (as_f64(p[0]) - 300.0).abs() + (as_f64(p[1]) - 700.0).abs();
        history.push(done(p, loss));
    }
    let distinct = |pending: PendingRule, same_generator: bool, multivariate: bool| {
        let config = TpeConfig {
            pending,
            multivariate,
            ..TpeConfig::default()
        };
        let mut with_pending = history.clone();
        let mut proposals: Vec<Vec<Option<DimValue>>> = Vec::new();
        for index in 20..36u64 {
            let index = if same_generator { 20 } else { index };
            let p = suggest_with_seed(&space, &config, &with_pending, 5, index).unwrap();
            with_pending.push(Trial {
                values: p.clone(),
                loss: None,
                pending: true,
            });
            if !proposals.contains(&p) {
                proposals.push(p);
            }
        }
        proposals.len()
    };
    for multivariate in [true, false] {
        let believer = PendingRule::default();
        for rule in [PendingRule::WorstLiar, believer, PendingRule::Ignore] {
            assert_eq!(distinct(rule, false, multivariate), 16, "{rule:?}");
        }
        assert_eq!(distinct(PendingRule::Ignore, true, multivariate), 1);
        let liar_alone = distinct(PendingRule::WorstLiar, true, multivariate);
        assert!(
            liar_alone >= 12,
            "multivariate {multivariate}: {liar_alone}"
        );
        let believer_alone = distinct(believer, true, multivariate);
        assert!(
            believer_alone >= 2,
            "multivariate {multivariate}: {believer_alone}"
        );
    }
}

/// Same test with the coordinator's per-trial seeds and a continuous space: 16 parallel
/// proposals spread out instead of piling up around the incumbent.
#[test]
fn constant_liar_spreads_parallel_proposals() {
    let space = vec![float("x", 0.0, 1.0)];
    let mut history = Vec::new();
    for i in 0..20u64 {
        let p = suggest_with_seed(&space, &TpeConfig::default(), &history, 1, i).unwrap();
        let loss = (as_f64(p[0]) - 0.25).powi(2);
        history.push(done(p, loss));
    }
    let spread = |liar: bool| {
        let config = TpeConfig {
            pending: if liar {
                PendingRule::WorstLiar
            } else {
                PendingRule::Ignore
            },
            ..TpeConfig::default()
        };
        let mut h = history.clone();
        let mut xs = Vec::new();
        for i in 20..36u64 {
            let p = suggest_with_seed(&space, &config, &h, 1, i).unwrap();
            xs.push(as_f64(p[0]));
            h.push(Trial {
                values: p,
                loss: None,
                pending: true,
            });
        }
        xs.sort_by(f64::total_cmp);
        xs.windows(2)
            .map(|w| w[1] - w[0])
            .fold(f64::INFINITY, f64::min)
    };
    assert!(spread(true) > 0.0);
    assert!(spread(true) >= spread(false));
}

#[test]
fn conditional_dimensions_follow_their_parent() {
    let space = vec![
        DimSpec {
            name: "opt".into(),
            dim: Dim::Categorical {
                choices: 2,
                weights: None,
            },
            condition: None,
        },
        DimSpec {
            condition: Some((0, vec![DimValue::Choice(1)])),
            ..float("momentum", 0.0, 1.0)
        },
        DimSpec {
            condition: Some((1, vec![DimValue::Float(0.5)])),
            ..float("never", 0.0, 1.0)
        },
    ];
    for multivariate in [true, false] {
        let config = TpeConfig {
            multivariate,
            ..TpeConfig::default()
        };
        let tpe = Tpe::new(space.clone(), config).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut history = Vec::new();
        for _ in 0..40 {
            let p = tpe.suggest(&history, &mut rng);
            tpe.check_point(&p).unwrap();
            assert_eq!(p[1].is_some(), p[0] == Some(DimValue::Choice(1)));
            assert_eq!(p[2], None);
            // Choice 1 with momentum near 0.8 is best.
            let loss = match p[1] {
                Some(DimValue::Float(m)) => (m - 0.8).abs(),
                _ => 1.0,
            };
            history.push(done(p, loss));
        }
        let late_ones = history[20..]
            .iter()
            .filter(|t| t.values[0] == Some(DimValue::Choice(1)))
            .count();
        assert!(late_ones >= 15, "multivariate {multivariate}: {late_ones}");
    }
}

/// 1-d quadratic: after 40 trials the best point is much closer to the optimum than
/// the typical (median) startup trial.
#[test]
fn converges_on_a_one_dimensional_quadratic() {
    let optimum = 1.3;
    let tpe = Tpe::new(vec![float("x", -10.0, 10.0)], TpeConfig::default()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let mut history = Vec::new();
    for _ in 0..40 {
        let p = tpe.suggest(&history, &mut rng);
        let loss = (as_f64(p[0]) - optimum).powi(2);
        history.push(done(p, loss));
    }
    let distance = |t: &Trial| (as_f64(t.values[0]) - optimum).abs();
    let mut startup: Vec<f64> = history[..10].iter().map(distance).collect();
    startup.sort_by(f64::total_cmp);
    let median = (startup[4] + startup[5]) / 2.0;
    let best = history.iter().map(distance).fold(f64::INFINITY, f64::min);
    let best_startup = startup[0];
    assert!(best < median / 50.0, "best {best}, startup median {median}");
    assert!(
        best < best_startup / 5.0,
        "best {best}, best startup {best_startup}"
    );
}

#[test]
fn stepped_and_log_dimensions_stay_on_their_grid() {
    let space = vec![
        DimSpec {
            name: "q".into(),
            dim: Dim::Float {
                low: 0.1,
                high: 1.05,
                log: false,
                step: Some(0.2),
            },
            condition: None,
        },
        DimSpec {
            name: "lq".into(),
            dim: Dim::Float {
                low: 0.001,
                high: 10.0,
                log: true,
                step: Some(0.5),
            },
            condition: None,
        },
        DimSpec {
            name: "lr".into(),
            dim: Dim::Float {
                low: 1e-5,
                high: 1e-1,
                log: true,
                step: None,
            },
            condition: None,
        },
    ];
    let tpe = Tpe::new(space, TpeConfig::default()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut history = Vec::new();
    for _ in 0..40 {
        let p = tpe.suggest(&history, &mut rng);
        tpe.check_point(&p).unwrap();
        // The grid of q ends at 0.9: 1.05 is not on it.
        assert!(as_f64(p[0]) <= 0.9 + 1e-12);
        let loss = (as_f64(p[2]).log10() + 3.0).abs() + as_f64(p[0]);
        history.push(done(p, loss));
    }
}

fn dim_strategy() -> impl Strategy<Value = Dim> {
    prop_oneof![
        (
            -1e3..1e3f64,
            0.0..1e3f64,
            any::<bool>(),
            proptest::option::of(0.01..50.0f64)
        )
            .prop_map(|(low, width, log, step)| {
                let low = if log { low.abs() + 1e-3 } else { low };
                Dim::Float {
                    low,
                    high: low + width,
                    log,
                    step,
                }
            }),
        (-1000i64..1000, 0i64..5000, any::<bool>()).prop_map(|(low, width, log)| {
            let low = if log { low.abs() + 1 } else { low };
            Dim::Int {
                low,
                high: low + width,
                log,
            }
        }),
        (
            1usize..6,
            any::<bool>(),
            proptest::collection::vec(0.0..1.0f64, 6)
        )
            .prop_map(|(choices, weighted, mut w)| {
                w.truncate(choices);
                w[0] += 0.1;
                Dim::Categorical {
                    choices,
                    weights: weighted.then_some(w),
                }
            }),
    ]
}

fn space_strategy() -> impl Strategy<Value = Vec<DimSpec>> {
    proptest::collection::vec((dim_strategy(), any::<u8>(), any::<u8>()), 1..6).prop_map(|dims| {
        let mut space: Vec<DimSpec> = Vec::new();
        for (i, (dim, parent_pick, value_pick)) in dims.into_iter().enumerate() {
            // Condition on an earlier categorical, if the draw asks for one.
            let condition = (i > 0 && parent_pick % 2 == 0)
                .then(|| {
                    let parent = parent_pick as usize % i;
                    match &space[parent].dim {
                        Dim::Categorical { choices, .. } => Some((
                            parent,
                            vec![DimValue::Choice(value_pick as usize % choices)],
                        )),
                        _ => None,
                    }
                })
                .flatten();
            space.push(DimSpec {
                name: format!("d{i}"),
                dim,
                condition,
            });
        }
        space
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every suggestion lies in the space: in bounds, integral, on the step grid,
    /// valid choices with non-zero prior, conditional dimensions active iff their
    /// condition holds — during startup and with the model, with failed and pending
    /// trials in the history.
    #[test]
    fn suggestions_stay_inside_the_space(
        space in space_strategy(),
        seed in any::<u64>(),
        n in 0usize..40,
        liar in 0u8..5,
        multivariate in any::<bool>(),
    ) {
        let pending = match liar {
            0 => PendingRule::Ignore,
            1 => PendingRule::WorstLiar,
            _ => PendingRule::Believer { neighbours: liar as usize - 1 },
        };
        let config = TpeConfig { pending, multivariate, ..TpeConfig::default() };
        let tpe = Tpe::new(space, config).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut history = Vec::new();
        for i in 0..n {
            let p = tpe.suggest(&history, &mut rng);
            if let Err(e) = tpe.check_point(&p) {
                return Err(TestCaseError::fail(format!("{e}: {p:?}")));
            }
            let loss: f64 = p.iter().flatten().map(|v| match v {
                DimValue::Float(x) => x.abs().sqrt(),
                DimValue::Int(x) => (*x as f64).abs().sqrt(),
                DimValue::Choice(c) => *c as f64,
            }).sum();
            let (loss, pending) = match i % 7 {
                5 => (None, false),
                6 => (None, true),
                _ => (Some(loss), false),
            };
            history.push(Trial { values: p, loss, pending });
        }
    }
}

/// The believer ranks a pending trial by its nearest completed trials: one next to the
/// best trial joins the good group (so a batch builds on it), one in a poor region the
/// bad group; and pending trials count towards the start-up once half of it completed.
#[test]
fn believed_pending_trials_join_the_group_of_their_neighbours() {
    let space = vec![float("x", 0.0, 1.0), float("y", 0.0, 1.0)];
    let tpe = Tpe::new(space, TpeConfig::default()).unwrap();
    let point = |x: f64, y: f64| vec![Some(DimValue::Float(x)), Some(DimValue::Float(y))];
    let loss = |x: f64, y: f64| (x - 0.2).powi(2) + (y - 0.7).powi(2);
    let mut history: Vec<Trial> = (0..30)
        .map(|i| {
            let (x, y) = ((i as f64 * 0.37) % 1.0, (i as f64 * 0.61) % 1.0);
            done(point(x, y), loss(x, y))
        })
        .collect();
    let completed: Vec<(usize, f64)> = history
        .iter()
        .enumerate()
        .map(|(i, t)| (i, t.loss.unwrap()))
        .collect();
    history.push(Trial {
        values: point(0.2, 0.7),
        loss: None,
        pending: true,
    });
    history.push(Trial {
        values: point(0.95, 0.05),
        loss: None,
        pending: true,
    });
    let beliefs = tpe.beliefs(&history, &completed, &[30, 31], 3);
    let mut losses: Vec<f64> = completed.iter().map(|c| c.1).collect();
    losses.sort_by(f64::total_cmp);
    let n_below = TpeConfig::default().gamma.n_below(losses.len());
    assert_eq!(
        beliefs.iter().map(|b| b.0).collect::<Vec<_>>(),
        vec![30, 31]
    );
    assert!(
        beliefs[0].1 < losses[n_below - 1],
        "near the best: {beliefs:?}"
    );
    assert!(
        beliefs[1].1 > losses[losses.len() / 2],
        "a poor region: {beliefs:?}"
    );
    // Each belief is the mean of three completed losses.
    for (_, belief) in &beliefs {
        assert!(*belief >= losses[0] && *belief <= losses[losses.len() - 1]);
    }

    // Start-up: 4 completed and 12 pending stay on the prior (fewer than half of the 10
    // start-up trials completed); 5 completed and 5 pending use the model.
    let startup = |completed: usize, pending: usize| {
        let history: Vec<Trial> = (0..completed + pending)
            .map(|i| {
                let (x, y) = ((i as f64 * 0.37) % 1.0, (i as f64 * 0.61) % 1.0);
                Trial {
                    values: point(x, y),
                    loss: (i < completed).then(|| loss(x, y)),
                    pending: i >= completed,
                }
            })
            .collect();
        let prior = tpe.sample_prior(&mut trial_rng(3, 0));
        tpe.suggest(&history, &mut trial_rng(3, 0)) == prior
    };
    assert!(startup(4, 12), "4 completed: start-up");
    assert!(!startup(5, 5), "5 completed and 5 pending: the model");
    assert!(startup(9, 0), "9 completed, none pending: start-up");
}
