//! Tests of `shared/spec/src/space.rs`.

use super::*;

#[test]
fn agent_placeholders_survive_the_coordinator_and_are_filled_by_the_agent() {
    let params = Params::from([("lr".to_string(), ParamValue::Float(0.5))]);
    let command = vec![
        "{{ladder.code_dir}}/train.py".to_string(),
        "--lr={{lr}}".to_string(),
        "--out={{ladder.run_dir}}".to_string(),
    ];
    let rendered = render_command(&command, &params).unwrap();
    assert_eq!(
        rendered,
        vec![
            "{{ladder.code_dir}}/train.py",
            "--lr=0.5",
            "--out={{ladder.run_dir}}"
        ]
    );
    let values = BTreeMap::from([
        ("ladder.code_dir", "/src".to_string()),
        ("ladder.run_dir", "/w/r1".to_string()),
    ]);
    assert_eq!(
        render_agent_placeholders(&rendered, &values),
        vec!["/src/train.py", "--lr=0.5", "--out=/w/r1"]
    );
}
use crate::{Condition, Resources};
use proptest::prelude::*;
use std::collections::BTreeSet;

fn spec(method: Method, parameters: Vec<(&str, ParamSpec)>, max_runs: Option<u64>) -> SweepSpec {
    SweepSpec {
        name: "test".into(),
        project: "default".into(),
        method,
        metric: None,
        parameters: parameters
            .into_iter()
            .map(|(name, spec)| Parameter {
                name: name.to_string(),
                spec,
                when: Vec::new(),
            })
            .collect(),
        max_runs,
        parallel: 1,
        seed: 7,
        command: vec!["true".into()],
        max_restarts: 3,
        resources: Resources::default(),
        description: None,
        early_terminate: None,
        bayes: crate::BayesOptions::default(),
        warm_start: None,
        summaries: Default::default(),
        train: None,
        artifacts: Vec::new(),
    }
}

fn values(values: Vec<ParamValue>) -> ParamSpec {
    ParamSpec::Values {
        values,
        probabilities: None,
    }
}

fn params(pairs: &[(&str, ParamValue)]) -> Params {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.clone()))
        .collect()
}

fn key(params: &Params) -> String {
    serde_json::to_string(params).unwrap()
}

#[test]
fn grid_enumerates_last_parameter_fastest() {
    let spec = spec(
        Method::Grid,
        vec![
            ("b", values(vec![ParamValue::Int(1), ParamValue::Int(2)])),
            ("a", ParamSpec::IntUniform { min: 10, max: 12 }),
            ("c", ParamSpec::Value(ParamValue::Str("x".into()))),
        ],
        None,
    );
    assert_eq!(grid_size(&spec), 6);
    assert_eq!(trial_count(&spec), 6);
    let all: Vec<(i64, i64)> = (0..6)
        .map(|i| {
            let p = trial(&spec, i).unwrap();
            assert_eq!(p["c"], ParamValue::Str("x".into()));
            match (&p["b"], &p["a"]) {
                (ParamValue::Int(b), ParamValue::Int(a)) => (*b, *a),
                other => panic!("{other:?}"),
            }
        })
        .collect();
    assert_eq!(all, [(1, 10), (1, 11), (1, 12), (2, 10), (2, 11), (2, 12)]);
    assert_eq!(trial(&spec, 6), None);
}

#[test]
fn grid_is_capped_by_max_runs() {
    let spec = spec(
        Method::Grid,
        vec![("a", ParamSpec::IntUniform { min: 0, max: 99 })],
        Some(5),
    );
    assert_eq!(trial_count(&spec), 5);
    assert!(trial(&spec, 4).is_some());
    assert!(trial(&spec, 5).is_none());
}

#[test]
fn empty_grid_is_one_trial_and_random_without_parameters_repeats() {
    let grid = spec(Method::Grid, vec![], None);
    assert_eq!(trial_count(&grid), 1);
    assert_eq!(trial(&grid, 0), Some(Params::new()));
    let random = spec(Method::Random, vec![], Some(3));
    assert_eq!(trial_count(&random), 3);
    assert_eq!(trial(&random, 2), Some(Params::new()));
    assert_eq!(trial(&random, 3), None);
}

fn huge_grid() -> SweepSpec {
    let axis = || ParamSpec::IntUniform { min: 0, max: 999 };
    spec(
        Method::Grid,
        vec![("a", axis()), ("b", axis()), ("c", axis()), ("d", axis())],
        None,
    )
}

fn digits(params: &Params) -> [i64; 4] {
    ["a", "b", "c", "d"].map(|name| match params[name] {
        ParamValue::Int(value) => value,
        ref other => panic!("{other:?}"),
    })
}

/// `mode` (deep, flat) × a, b, c (0..=999) × d (0..=999, only when mode is deep):
/// 10^12 + 10^9 points.
fn huge_conditional_grid() -> SweepSpec {
    let axis = || ParamSpec::IntUniform { min: 0, max: 999 };
    let mut spec = spec(
        Method::Grid,
        vec![
            ("a", axis()),
            ("b", axis()),
            ("c", axis()),
            ("d", axis()),
            (
                "mode",
                values(vec![
                    ParamValue::Str("deep".into()),
                    ParamValue::Str("flat".into()),
                ]),
            ),
        ],
        None,
    );
    spec.parameters[3].when.push(Condition {
        parameter: "mode".into(),
        any_of: vec![ParamValue::Str("deep".into())],
    });
    spec
}

#[test]
fn a_conditional_grid_of_10_to_the_12_is_lazy() {
    let spec = huge_conditional_grid();
    let started = std::time::Instant::now();
    assert_eq!(trial_count(&spec), 1_001_000_000_000);
    let last = trial(&spec, 1_000_999_999_999).unwrap();
    assert_eq!(last.get("d"), None);
    assert_eq!(last["c"], ParamValue::Int(999));
    assert_eq!(trial(&spec, 1_001_000_000_000), None);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

#[test]
fn a_grid_of_10_to_the_12_is_lazy() {
    let spec = huge_grid();
    assert_eq!(trial_count(&spec), 1_000_000_000_000);
    let last = trial(&spec, 999_999_999_999).unwrap();
    assert_eq!(digits(&last), [999, 999, 999, 999]);
    assert_eq!(trial(&spec, 1_000_000_000_000), None);
}

#[test]
fn overflowing_grids_saturate() {
    let axis = || ParamSpec::IntUniform {
        min: i64::MIN,
        max: i64::MAX,
    };
    let spec = spec(
        Method::Grid,
        vec![("a", axis()), ("b", axis()), ("c", axis())],
        None,
    );
    assert_eq!(grid_size(&spec), u128::MAX);
    assert_eq!(trial_count(&spec), u64::MAX);
    let last = trial(&spec, u64::MAX - 1).unwrap();
    assert_eq!(last["a"], ParamValue::Int(i64::MIN));
    assert_eq!(last["b"], ParamValue::Int(i64::MIN));
    assert_eq!(last["c"], ParamValue::Int(i64::MAX - 1));
}

#[test]
fn random_is_seeded_per_sweep_trial_and_parameter() {
    let uniform = ParamSpec::Uniform { min: 0.0, max: 1.0 };
    let one = spec(Method::Random, vec![("x", uniform.clone())], Some(10));
    let two = spec(
        Method::Random,
        vec![
            ("y", ParamSpec::IntUniform { min: 0, max: 9 }),
            ("x", uniform),
        ],
        Some(10),
    );
    for index in 0..10 {
        assert_eq!(
            trial(&one, index).unwrap()["x"],
            trial(&two, index).unwrap()["x"]
        );
    }
    assert_ne!(trial(&one, 0), trial(&one, 1));
    let mut reseeded = one.clone();
    reseeded.seed = 8;
    assert_ne!(trial(&one, 0), trial(&reseeded, 0));
}

#[test]
fn render_substitutes_into_single_elements() {
    let params = params(&[
        ("lr", ParamValue::Float(0.0001)),
        ("layers", ParamValue::Int(4)),
        (
            "name",
            ParamValue::Str("a b; rm -rf / && echo $HOME `id` \"q\"".into()),
        ),
        ("flag", ParamValue::Bool(true)),
        ("template", ParamValue::Str("{{lr}}".into())),
    ]);
    let command: Vec<String> = [
        "python",
        "train.py",
        "--lr={{lr}}",
        "{{ layers }}",
        "{{name}}",
        "--x{{flag}}{{layers}}",
        "{{template}}",
    ]
    .map(String::from)
    .to_vec();
    let rendered = render_command(&command, &params).unwrap();
    assert_eq!(
        rendered,
        [
            "python",
            "train.py",
            "--lr=0.0001",
            "4",
            "a b; rm -rf / && echo $HOME `id` \"q\"",
            "--xtrue4",
            "{{lr}}",
        ]
    );
}

#[test]
fn render_reports_unknown_and_malformed_placeholders() {
    let params = params(&[("lr", ParamValue::Float(0.1))]);
    // Absent names are conditional parameters switched off in this trial.
    let absent = render_command(&["--x={{off}}".to_string(), "{{off}}".to_string()], &params);
    assert_eq!(absent.unwrap(), ["--x=", ""]);
    let unclosed = render_command(&["--lr={{lr".to_string()], &params).unwrap_err();
    assert!(matches!(unclosed, SearchError::UnclosedPlaceholder { .. }));
    assert!(unclosed.to_string().contains("\"{{\" without"));
    let invalid = render_command(&["{{a b}}".to_string()], &params).unwrap_err();
    assert!(matches!(invalid, SearchError::InvalidPlaceholder { .. }));
    assert_eq!(
        render_command(&["a}}b".to_string()], &params).unwrap(),
        ["a}}b"]
    );
}

#[test]
fn float_display_is_shortest_round_trip() {
    assert_eq!(ParamValue::Float(1e-4).to_string(), "0.0001");
    assert_eq!(ParamValue::Float(1.0).to_string(), "1");
    assert_eq!(
        ParamValue::Float(0.1 + 0.2).to_string(),
        "0.30000000000000004"
    );
    assert_eq!(ParamValue::Int(-3).to_string(), "-3");
    assert_eq!(ParamValue::Bool(false).to_string(), "false");
}

#[test]
fn params_json_nests_dotted_names() {
    let params = params(&[
        ("lora.rank", ParamValue::Int(8)),
        ("lora.alpha", ParamValue::Float(16.5)),
        ("lr", ParamValue::Float(0.001)),
        ("opt/name", ParamValue::Str("adam".into())),
        ("x", ParamValue::Bool(true)),
        ("x.y", ParamValue::Int(1)),
    ]);
    assert_eq!(
        params_json(&params),
        serde_json::json!({
            "lora": {"rank": 8, "alpha": 16.5},
            "lr": 0.001,
            "opt/name": "adam",
            "x": true,
            "x.y": 1,
        })
    );
}

/// A small grid axis: a constant, distinct values, or a small integer range.
fn axis() -> impl Strategy<Value = ParamSpec> {
    prop_oneof![
        any::<i64>().prop_map(|v| ParamSpec::Value(ParamValue::Int(v))),
        prop::collection::btree_set(-50i64..50, 1..4)
            .prop_map(|set| values(set.into_iter().map(ParamValue::Int).collect())),
        (-20i64..20, 1i64..4).prop_map(|(min, span)| ParamSpec::IntUniform {
            min,
            max: min + span
        }),
    ]
}

fn axis_points(param: &ParamSpec) -> Vec<ParamValue> {
    match param {
        ParamSpec::Value(value) => vec![value.clone()],
        ParamSpec::Values { values, .. } => values.clone(),
        ParamSpec::IntUniform { min, max } => (*min..=*max).map(ParamValue::Int).collect(),
        // Values checked separately by q_axis_points_are_the_multiples_in_range.
        ParamSpec::QUniform { .. } | ParamSpec::QLogUniform { .. } => (0..grid_axis_len(param)
            .unwrap())
            .map(|digit| grid_axis_point(param, digit))
            .collect(),
        other => panic!("not discrete: {other:?}"),
    }
}

/// A `q_` distribution with at least one multiple of `q` in range.
fn q_spec() -> impl Strategy<Value = ParamSpec> {
    let q = prop::sample::select(vec![0.1, 0.25, 1.0, 2.5, 3.0, 1e-3]);
    prop_oneof![
        (-1e3f64..1e3, 0.0f64..50.0, q.clone()).prop_map(|(min, span, q)| {
            ParamSpec::QUniform {
                min,
                max: min + q + span,
                q,
                integer: false,
            }
        }),
        (-100i64..100, 1i64..50, 1i64..7).prop_map(|(min, span, q)| ParamSpec::QUniform {
            min: min as f64,
            max: (min + span + q) as f64,
            q: q as f64,
            integer: true,
        }),
        (1e-3f64..1e2, 1.0f64..1e3, q).prop_map(|(min, factor, q)| ParamSpec::QLogUniform {
            min,
            max: (min * factor).max(min + q),
            q,
            integer: false,
        }),
        (1i64..100, 1i64..1000, 1i64..5).prop_map(|(min, span, q)| ParamSpec::QLogUniform {
            min: min as f64,
            max: (min + span + q) as f64,
            q: q as f64,
            integer: true,
        }),
    ]
}

fn normal_spec() -> impl Strategy<Value = ParamSpec> {
    let q = prop::sample::select(vec![0.1f64, 0.5, 1.0, 4.0]);
    prop_oneof![
        (-1e3f64..1e3, 1e-3f64..1e3).prop_map(|(mu, sigma)| ParamSpec::Normal { mu, sigma }),
        (-5f64..5.0, 1e-2f64..3.0).prop_map(|(mu, sigma)| ParamSpec::LogNormal { mu, sigma }),
        (-1e3f64..1e3, 1e-3f64..1e3, q.clone(), any::<bool>()).prop_map(
            |(mu, sigma, q, integer)| ParamSpec::QNormal {
                mu,
                sigma,
                q: if integer { q.ceil() } else { q },
                integer
            }
        ),
        (-5f64..5.0, 1e-2f64..3.0, q, any::<bool>()).prop_map(|(mu, sigma, q, integer)| {
            ParamSpec::QLogNormal {
                mu,
                sigma,
                q: if integer { q.ceil() } else { q },
                integer,
            }
        }),
    ]
}

/// Whether `x` is a multiple of `q` within 1e-9 relative.
fn is_multiple(x: f64, q: f64) -> bool {
    let ratio = x / q;
    (ratio - ratio.round()).abs() <= 1e-9 * ratio.abs().max(1.0)
}

fn as_number(value: &ParamValue, integer: bool) -> Option<f64> {
    match (value, integer) {
        (ParamValue::Int(x), true) => Some(*x as f64),
        (ParamValue::Float(x), false) => Some(*x),
        _ => None,
    }
}

fn continuous_or_discrete() -> impl Strategy<Value = ParamSpec> {
    prop_oneof![
        axis(),
        q_spec(),
        normal_spec(),
        (
            prop::collection::btree_set(-50i64..50, 1..5),
            prop::collection::vec(prop_oneof![Just(0.0), 0.01f64..1.0], 5)
        )
            .prop_filter_map("needs a positive weight", |(set, raw)| {
                let values: Vec<ParamValue> = set.into_iter().map(ParamValue::Int).collect();
                let raw = &raw[..values.len()];
                let total: f64 = raw.iter().sum();
                (total > 0.0).then(|| ParamSpec::Values {
                    probabilities: Some(raw.iter().map(|w| w / total).collect()),
                    values,
                })
            }),
        (-1e6f64..1e6, 1e-9f64..1e6).prop_map(|(min, span)| ParamSpec::Uniform {
            min,
            max: min + span
        }),
        (1e-12f64..1e3, 1.0001f64..1e6).prop_map(|(min, factor)| ParamSpec::LogUniform {
            min,
            max: min * factor
        }),
    ]
}

fn in_support(param: &ParamSpec, value: &ParamValue) -> bool {
    match (param, value) {
        (ParamSpec::Value(expected), value) => expected == value,
        (ParamSpec::Values { values, .. }, value) => values.contains(value),
        (ParamSpec::Uniform { min, max }, ParamValue::Float(x)) => min <= x && x < max,
        (ParamSpec::LogUniform { min, max }, ParamValue::Float(x)) => min <= x && x <= max,
        (ParamSpec::IntUniform { min, max }, ParamValue::Int(x)) => min <= x && x <= max,
        (
            ParamSpec::QUniform {
                min,
                max,
                q,
                integer,
            }
            | ParamSpec::QLogUniform {
                min,
                max,
                q,
                integer,
            },
            value,
        ) => {
            as_number(value, *integer).is_some_and(|x| *min <= x && x <= *max && is_multiple(x, *q))
        }
        (ParamSpec::Normal { .. }, ParamValue::Float(x)) => x.is_finite(),
        (ParamSpec::LogNormal { .. }, ParamValue::Float(x)) => x.is_finite() && *x > 0.0,
        (ParamSpec::QNormal { q, integer, .. }, value) => {
            as_number(value, *integer).is_some_and(|x| x.is_finite() && is_multiple(x, *q))
        }
        (ParamSpec::QLogNormal { q, integer, .. }, value) => as_number(value, *integer)
            .is_some_and(|x| x.is_finite() && x >= 0.0 && is_multiple(x, *q)),
        _ => false,
    }
}

/// Zero-probability values never appear.
fn respects_zero_probabilities(param: &ParamSpec, value: &ParamValue) -> bool {
    match param {
        ParamSpec::Values {
            values,
            probabilities: Some(weights),
        } => values
            .iter()
            .zip(weights)
            .all(|(candidate, weight)| *weight > 0.0 || candidate != value),
        _ => true,
    }
}

#[test]
fn weighted_categorical_frequencies_match() {
    let weights = [0.5, 0.3, 0.2, 0.0];
    let spec = spec(
        Method::Random,
        vec![(
            "x",
            ParamSpec::Values {
                values: (0..4).map(ParamValue::Int).collect(),
                probabilities: Some(weights.to_vec()),
            },
        )],
        Some(20_000),
    );
    let mut counts = [0u32; 4];
    for index in 0..20_000 {
        match trial(&spec, index).unwrap()["x"] {
            ParamValue::Int(value) => counts[value as usize] += 1,
            ref other => panic!("{other:?}"),
        }
    }
    assert_eq!(counts[3], 0, "zero-probability value drawn: {counts:?}");
    // Chi-square over the three positive cells, 2 degrees of freedom: p = 0.001 at 13.8.
    let chi_square: f64 = counts[..3]
        .iter()
        .zip(&weights[..3])
        .map(|(count, weight)| {
            let expected = weight * 20_000.0;
            (f64::from(*count) - expected).powi(2) / expected
        })
        .sum();
    assert!(
        chi_square < 13.8,
        "chi-square {chi_square}, counts {counts:?}"
    );
}

#[test]
fn q_values_round_and_step_inward() {
    // [0.3, 1.0] with q 0.4: multiples 0.4 and 0.8 only; 0.3 rounds to 0.4 (k = 1),
    // 1.0 rounds to 1.2 and steps inward to 0.8.
    let param = ParamSpec::QUniform {
        min: 0.3,
        max: 1.0,
        q: 0.4,
        integer: false,
    };
    let spec = spec(Method::Random, vec![("x", param.clone())], Some(500));
    let seen: BTreeSet<String> = (0..500)
        .map(|i| trial(&spec, i).unwrap()["x"].to_string())
        .collect();
    assert_eq!(seen, BTreeSet::from(["0.4".to_string(), "0.8".to_string()]));
    assert_eq!(grid_axis_len(&param), Some(2));
    let integer = spec_with_q(true);
    assert!(matches!(
        trial(&integer, 0).unwrap()["x"],
        ParamValue::Int(_)
    ));
    let float = spec_with_q(false);
    assert!(matches!(
        trial(&float, 0).unwrap()["x"],
        ParamValue::Float(_)
    ));
}

fn spec_with_q(integer: bool) -> SweepSpec {
    spec(
        Method::Random,
        vec![(
            "x",
            ParamSpec::QUniform {
                min: 0.0,
                max: 10.0,
                q: 2.0,
                integer,
            },
        )],
        Some(1),
    )
}

/// Builds a spec whose parameter `i` has axis `axes[i]` and, when `links[i]` is set,
/// a condition on a parameter placed earlier in the random order `ranks` (so there is
/// no cycle, but conditions may point forward in file order) with the allowed values
/// picked by a bit mask from that parameter's axis.
fn conditional_spec(
    method: Method,
    axes: Vec<ParamSpec>,
    links: Vec<Option<(usize, u8)>>,
    ranks: Vec<u8>,
) -> SweepSpec {
    let names = ["p0", "p1", "p2", "p3", "p4"];
    let mut spec = spec(
        method,
        names.iter().copied().zip(axes.iter().cloned()).collect(),
        Some(1_000),
    );
    let rank = |i: usize| (ranks[i], i);
    for (i, link) in links.iter().enumerate() {
        let Some((pick, mask)) = *link else {
            continue;
        };
        let earlier: Vec<usize> = (0..axes.len()).filter(|&j| rank(j) < rank(i)).collect();
        if earlier.is_empty() {
            continue;
        }
        let j = earlier[pick % earlier.len()];
        let points = axis_points(&axes[j]);
        let mut any_of: Vec<ParamValue> = points
            .iter()
            .enumerate()
            .filter(|(k, _)| mask & (1 << (k % 8)) != 0)
            .map(|(_, value)| value.clone())
            .collect();
        if any_of.is_empty() {
            any_of.push(points[0].clone());
        }
        spec.parameters[i].when.push(Condition {
            parameter: names[j].to_string(),
            any_of,
        });
    }
    spec
}

/// The active subset of a full assignment: a parameter is present when every
/// condition names a present parameter holding an allowed value (fixpoint, so file
/// order does not matter).
fn brute_force_active(spec: &SweepSpec, full: &Params) -> Params {
    let mut active: Params = Params::new();
    loop {
        let before = active.len();
        for parameter in &spec.parameters {
            let holds = parameter.when.iter().all(|c| {
                active
                    .get(&c.parameter)
                    .is_some_and(|value| c.any_of.contains(value))
            });
            if holds {
                active.insert(parameter.name.clone(), full[&parameter.name].clone());
            }
        }
        if active.len() == before {
            return active;
        }
    }
}

fn small_axis() -> impl Strategy<Value = ParamSpec> {
    prop_oneof![
        axis(),
        (
            prop::sample::select(vec![0.1, 0.5, 2.0]),
            -10i64..10,
            0i64..3,
            0.0f64..0.9
        )
            .prop_map(|(q, low, steps, extra)| ParamSpec::QUniform {
                min: low as f64 * q,
                max: (low + steps) as f64 * q + extra * q,
                q,
                integer: false,
            }),
    ]
}

/// Axes, optional (pick, value mask) links and order ranks, see [`conditional_spec`].
type ConditionalParts = (Vec<ParamSpec>, Vec<Option<(usize, u8)>>, Vec<u8>);

fn conditional_parts() -> impl Strategy<Value = ConditionalParts> {
    (1usize..=5).prop_flat_map(|n| {
        (
            prop::collection::vec(small_axis(), n),
            prop::collection::vec(prop::option::of((0usize..5, any::<u8>())), n),
            prop::collection::vec(any::<u8>(), n),
        )
    })
}

proptest! {
    #[test]
    fn grid_covers_the_product_exactly_once(axes in prop::collection::vec(axis(), 0..4)) {
        let names = ["p0", "p1", "p2", "p3"];
        let spec = spec(Method::Grid, names.iter().copied().zip(axes.iter().cloned()).collect(), None);
        let count = trial_count(&spec);
        let mut expected: BTreeSet<String> = BTreeSet::new();
        let mut partial = vec![Params::new()];
        for (name, param) in names.iter().zip(&axes) {
            partial = partial
                .into_iter()
                .flat_map(|params| axis_points(param).into_iter().map(move |value| {
                    let mut params = params.clone();
                    params.insert(name.to_string(), value);
                    params
                }))
                .collect();
        }
        expected.extend(partial.iter().map(key));
        prop_assert_eq!(count as usize, partial.len());
        let produced: Vec<String> = (0..count).map(|i| key(&trial(&spec, i).unwrap())).collect();
        let distinct: BTreeSet<String> = produced.iter().cloned().collect();
        prop_assert_eq!(distinct.len(), produced.len());
        prop_assert_eq!(distinct, expected);
        prop_assert_eq!(trial(&spec, count), None);
    }

    #[test]
    fn trial_is_a_pure_function(
        axes in prop::collection::vec(continuous_or_discrete(), 0..4),
        seed in any::<u64>(),
        index in 0u64..1000,
    ) {
        let names = ["p0", "p1", "p2", "p3"];
        let mut spec = spec(Method::Random, names.iter().copied().zip(axes).collect(), Some(1000));
        spec.seed = seed;
        let first = trial(&spec, index);
        prop_assert!(first.is_some());
        prop_assert_eq!(first, trial(&spec.clone(), index));
    }

    #[test]
    fn random_samples_lie_in_their_support(
        axes in prop::collection::vec(continuous_or_discrete(), 1..4),
        seed in any::<u64>(),
        index in 0..u64::MAX,
    ) {
        let names = ["p0", "p1", "p2", "p3"];
        let mut spec = spec(Method::Random, names.iter().copied().zip(axes.iter().cloned()).collect(), Some(u64::MAX));
        spec.seed = seed;
        let params = trial(&spec, index).unwrap();
        prop_assert_eq!(params.len(), axes.len());
        for (name, param) in names.iter().zip(&axes) {
            let value = &params[*name];
            prop_assert!(in_support(param, value), "{} = {:?} not in {:?}", name, value, param);
        }
    }

    #[test]
    fn zero_probability_values_never_appear(
        param in continuous_or_discrete(),
        seed in any::<u64>(),
    ) {
        let mut spec = spec(Method::Random, vec![("x", param.clone())], Some(200));
        spec.seed = seed;
        for index in 0..200 {
            let value = &trial(&spec, index).unwrap()["x"];
            prop_assert!(respects_zero_probabilities(&param, value), "{:?} from {:?}", value, param);
        }
    }

    #[test]
    fn q_axis_points_are_the_multiples_in_range(param in small_axis()) {
        let len = grid_axis_len(&param).unwrap();
        let points: Vec<f64> = (0..len)
            .map(|digit| match grid_axis_point(&param, digit) {
                ParamValue::Float(x) => x,
                ParamValue::Int(x) => x as f64,
                other => panic!("{other:?}"),
            })
            .collect();
        prop_assert!(points.windows(2).all(|w| w[0] < w[1]), "{:?}", points);
        if let ParamSpec::QUniform { min, max, q, .. } = param {
            prop_assert!(points.iter().all(|x| min <= *x && *x <= max && is_multiple(*x, q)));
            // Independently: count k whose k * q lies in range (with decimal slack).
            let slack = 1e-9 * q;
            let expected = ((min / q).floor() as i64 - 2..=(max / q).ceil() as i64 + 2)
                .filter(|k| {
                    let x = *k as f64 * q;
                    min - slack <= x && x <= max + slack
                })
                .count();
            prop_assert_eq!(points.len(), expected);
        }
    }

    #[test]
    fn random_children_appear_exactly_when_their_condition_holds(
        (axes, links, ranks) in conditional_parts(),
        seed in any::<u64>(),
        index in 0u64..1000,
    ) {
        let mut spec = conditional_spec(Method::Random, axes, links, ranks);
        spec.seed = seed;
        let params = trial(&spec, index).unwrap();
        for parameter in &spec.parameters {
            let holds = parameter.when.iter().all(|c| {
                params.get(&c.parameter).is_some_and(|value| c.any_of.contains(value))
            });
            prop_assert_eq!(params.contains_key(&parameter.name), holds, "{} in {:?}", parameter.name, params);
            if let Some(value) = params.get(&parameter.name) {
                prop_assert!(in_support(&parameter.spec, value));
            }
        }
        prop_assert_eq!(trial(&spec, index), Some(params));
    }

    #[test]
    fn conditional_grids_cover_the_active_points_exactly_once(
        (axes, links, ranks) in conditional_parts(),
    ) {
        let mut spec = conditional_spec(Method::Grid, axes.clone(), links, ranks);
        spec.max_runs = None;
        // Brute force: every full assignment, reduced to its active part, deduplicated.
        let mut full = vec![Params::new()];
        for (parameter, axis) in spec.parameters.iter().zip(&axes) {
            full = full
                .into_iter()
                .flat_map(|params| axis_points(axis).into_iter().map(move |value| {
                    let mut params = params.clone();
                    params.insert(parameter.name.clone(), value);
                    params
                }))
                .collect();
        }
        let expected: BTreeSet<String> = full
            .iter()
            .map(|params| key(&brute_force_active(&spec, params)))
            .collect();
        let count = trial_count(&spec);
        prop_assert_eq!(count as usize, expected.len());
        let produced: Vec<String> = (0..count).map(|i| key(&trial(&spec, i).unwrap())).collect();
        let distinct: BTreeSet<String> = produced.iter().cloned().collect();
        prop_assert_eq!(distinct.len(), produced.len());
        prop_assert_eq!(&distinct, &expected);
        prop_assert_eq!(trial(&spec, count), None);
        // Restartable: decoding in reverse gives the same points.
        let reversed: Vec<String> = (0..count).rev().map(|i| key(&trial(&spec, i).unwrap())).collect();
        prop_assert!(reversed.into_iter().rev().eq(produced.into_iter()));
    }

    #[test]
    fn huge_conditional_grid_index_round_trips(index in 0u64..1_001_000_000_000) {
        let spec = huge_conditional_grid();
        let params = trial(&spec, index).unwrap();
        let [a, b, c] = [params["a"].clone(), params["b"].clone(), params["c"].clone()]
            .map(|value| match value { ParamValue::Int(v) => v as u64, other => panic!("{other:?}") });
        let prefix = (a * 1000 + b) * 1000 + c;
        let reencoded = match (&params["mode"], params.get("d")) {
            (ParamValue::Str(mode), Some(ParamValue::Int(d))) if mode == "deep" => prefix * 1000 + *d as u64,
            (ParamValue::Str(mode), None) if mode == "flat" => 1_000_000_000_000 + prefix,
            other => panic!("{other:?}"),
        };
        prop_assert_eq!(reencoded, index);
    }

    #[test]
    fn huge_grid_index_round_trips(index in 0u64..1_000_000_000_000) {
        let params = trial(&huge_grid(), index).unwrap();
        let [a, b, c, d] = digits(&params);
        let reencoded = ((a * 1000 + b) * 1000 + c) * 1000 + d;
        prop_assert_eq!(reencoded as u64, index);
    }
}
