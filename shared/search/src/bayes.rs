//! `method: bayes` and `method: gp`: the sweep's parameters as a [`crate::tpe`] search
//! space, and proposals that learn from every trial so far, from TPE or, for `gp`, from
//! the Gaussian process of [`crate::gp`] (over the same space; the spec refuses `when:`
//! for it, and it leaves out trials that lack a parameter).
//!
//! Each non-constant parameter is one TPE dimension: `values` a categorical (its
//! `probabilities` the prior), `uniform`/`log_uniform` floats, `int_uniform` integers,
//! `q_` forms stepped floats on the multiples of `q`, and normal forms floats on
//! `mu ± 4 sigma` (log-space for `log_normal`), which is the range TPE searches for them.
//! Every dimension is suggested; `when:` conditions are then applied in dependency order
//! and inactive parameters are dropped, and in the history a parameter absent from a
//! trial is an inactive dimension, so each parameter is modelled only on the trials that
//! had it.
//!
//! Trials already handed out but not finished are ranked by the loss their nearest
//! finished trials suggest ([`crate::tpe::PendingRule::Believer`]), so a sweep with
//! `parallel: 16` does not propose 16 copies of one point and its batch builds on the
//! good region.
//!
//! A sweep with `warm_start:` also gets the completed trials of an earlier sweep
//! ([`propose_with_warm_start`]): they are mapped onto the new space (see
//! [`warm_trial`]) and put before the sweep's own trials, as its oldest history.

use crate::gp::{self, GpConfig};
use crate::tpe::{self, Dim, DimSpec, DimValue, TpeConfig, Trial};
use crate::Observation;
use ladder_spec::space::{self as search, condition_holds, q_round, Params};
use ladder_spec::{Goal, Method, ParamSpec, ParamValue, SweepSpec};

/// The parameters of trial `index` of any sweep: grid and random are pure functions of the
/// index; bayes also reads `history` (indexed by trial, including in-flight trials).
pub fn propose(spec: &SweepSpec, index: u64, history: &[Observation]) -> Option<Params> {
    propose_with_warm_start(spec, index, history, &[])
}

/// [`propose`] for a sweep with `warm_start:`: `warm` holds the earlier sweep's finished
/// trials, oldest first. `bayes` models them as the oldest part of its history (they
/// count towards its start-up trials, not towards `max_runs`, which only `index` is
/// compared with); grid and random ignore them. Reproducible from `(seed, index,
/// history, warm)`.
pub fn propose_with_warm_start(
    spec: &SweepSpec,
    index: u64,
    history: &[Observation],
    warm: &[Observation],
) -> Option<Params> {
    if index >= search::trial_count(spec) {
        return None;
    }
    match spec.method {
        Method::Grid | Method::Random => search::trial(spec, index),
        Method::Bayes | Method::Gp => Some(bayes_trial(spec, index, history, warm)),
    }
}

/// How one parameter maps to a TPE dimension.
enum Axis {
    Constant(ParamValue),
    Choice(Vec<ParamValue>),
    Float,
    Int,
    /// Stepped by `q`; `integer` values are reported as `Int`.
    Quantized {
        q: f64,
        integer: bool,
    },
}

fn axis_of(spec: &ParamSpec) -> (Axis, Option<Dim>) {
    const SPREAD: f64 = 4.0;
    let first_multiple = |min: f64, q: f64| (min / q - 1e-9).ceil() * q;
    match spec {
        ParamSpec::Value(value) => (Axis::Constant(value.clone()), None),
        ParamSpec::Values {
            values,
            probabilities,
        } => (
            Axis::Choice(values.clone()),
            Some(Dim::Categorical {
                choices: values.len(),
                weights: probabilities.clone(),
            }),
        ),
        ParamSpec::Uniform { min, max } => (
            Axis::Float,
            Some(Dim::Float {
                low: *min,
                high: *max,
                log: false,
                step: None,
            }),
        ),
        ParamSpec::LogUniform { min, max } => (
            Axis::Float,
            Some(Dim::Float {
                low: *min,
                high: *max,
                log: true,
                step: None,
            }),
        ),
        ParamSpec::IntUniform { min, max } => (
            Axis::Int,
            Some(Dim::Int {
                low: *min,
                high: *max,
                log: false,
            }),
        ),
        ParamSpec::QUniform {
            min,
            max,
            q,
            integer,
        } => (
            Axis::Quantized {
                q: *q,
                integer: *integer,
            },
            Some(Dim::Float {
                low: first_multiple(*min, *q),
                high: *max,
                log: false,
                step: Some(*q),
            }),
        ),
        ParamSpec::QLogUniform {
            min,
            max,
            q,
            integer,
        } => (
            Axis::Quantized {
                q: *q,
                integer: *integer,
            },
            Some(Dim::Float {
                low: first_multiple(*min, *q).max(*q),
                high: *max,
                log: true,
                step: Some(*q),
            }),
        ),
        ParamSpec::Normal { mu, sigma } => (
            Axis::Float,
            Some(Dim::Float {
                low: mu - SPREAD * sigma,
                high: mu + SPREAD * sigma,
                log: false,
                step: None,
            }),
        ),
        ParamSpec::LogNormal { mu, sigma } => (
            Axis::Float,
            Some(Dim::Float {
                low: (mu - SPREAD * sigma).exp(),
                high: (mu + SPREAD * sigma).exp(),
                log: true,
                step: None,
            }),
        ),
        ParamSpec::QNormal {
            mu,
            sigma,
            q,
            integer,
        } => (
            Axis::Quantized {
                q: *q,
                integer: *integer,
            },
            Some(Dim::Float {
                low: first_multiple(mu - SPREAD * sigma, *q),
                high: mu + SPREAD * sigma,
                log: false,
                step: Some(*q),
            }),
        ),
        ParamSpec::QLogNormal {
            mu,
            sigma,
            q,
            integer,
        } => (
            Axis::Quantized {
                q: *q,
                integer: *integer,
            },
            Some(Dim::Float {
                low: first_multiple((mu - SPREAD * sigma).exp(), *q).max(*q),
                high: (mu + SPREAD * sigma).exp(),
                log: true,
                step: Some(*q),
            }),
        ),
    }
}

fn to_dim_value(axis: &Axis, value: &ParamValue) -> Option<DimValue> {
    let number = match value {
        ParamValue::Int(i) => Some(*i as f64),
        ParamValue::Float(f) => Some(*f),
        _ => None,
    };
    match axis {
        Axis::Constant(_) => None,
        Axis::Choice(values) => values.iter().position(|v| v == value).map(DimValue::Choice),
        Axis::Float | Axis::Quantized { .. } => number.map(DimValue::Float),
        Axis::Int => number.map(|n| DimValue::Int(n.round() as i64)),
    }
}

fn from_dim_value(axis: &Axis, value: DimValue) -> ParamValue {
    match (axis, value) {
        (Axis::Constant(constant), _) => constant.clone(),
        (Axis::Choice(values), DimValue::Choice(i)) => values[i.min(values.len() - 1)].clone(),
        (Axis::Quantized { q, integer }, DimValue::Float(x)) => q_round(x, *q, *integer),
        (Axis::Int, DimValue::Int(i)) => ParamValue::Int(i),
        (_, DimValue::Float(x)) => ParamValue::Float(x),
        (_, DimValue::Int(i)) => ParamValue::Int(i),
        (_, DimValue::Choice(i)) => ParamValue::Int(i as i64),
    }
}

/// How a parameter value of an earlier sweep's trial fits this sweep's parameter of the
/// same name (see [`warm_trial`]).
enum WarmValue {
    /// Inside the space: the dimension's value.
    Fits(DimValue),
    /// Of another type: the parameter counts as absent.
    OtherType,
    /// Of the right type but outside the bounds or choices: the trial is dropped.
    Outside,
}

fn warm_value(axis: &Axis, dim: &Dim, value: &ParamValue) -> WarmValue {
    let number = match value {
        ParamValue::Int(i) => Some(*i as f64),
        ParamValue::Float(f) if f.is_finite() => Some(*f),
        _ => None,
    };
    let inside = |x: f64, low: f64, high: f64| {
        let slack = 1e-9 * (high - low).abs().max(low.abs()).max(high.abs()).max(1.0);
        x >= low - slack && x <= high + slack
    };
    match (axis, dim) {
        (Axis::Choice(values), _) => match values.iter().position(|v| v == value) {
            Some(position) => WarmValue::Fits(DimValue::Choice(position)),
            None => WarmValue::Outside,
        },
        (Axis::Int, Dim::Int { low, high, .. }) => match number {
            Some(x) if x.fract() == 0.0 => {
                if inside(x, *low as f64, *high as f64) {
                    WarmValue::Fits(DimValue::Int(x as i64))
                } else {
                    WarmValue::Outside
                }
            }
            _ => WarmValue::OtherType,
        },
        (Axis::Float | Axis::Quantized { .. }, Dim::Float { low, high, .. }) => {
            let integer_only = matches!(axis, Axis::Quantized { integer: true, .. });
            match number {
                Some(x) if !integer_only || x.fract() == 0.0 => {
                    if inside(x, *low, *high) {
                        WarmValue::Fits(DimValue::Float(x))
                    } else {
                        WarmValue::Outside
                    }
                }
                _ => WarmValue::OtherType,
            }
        }
        _ => WarmValue::OtherType,
    }
}

/// An earlier sweep's trial as a trial of this space, or `None` when it is dropped: it
/// has no value (failed, never reported the metric, or was in flight), a value outside
/// this space's bounds or choices, or none of this space's modelled parameters. A
/// parameter it lacks, or holds with another type, is inactive in it.
fn warm_trial(
    observation: &Observation,
    parameters: &[(&str, usize, usize)],
    axes: &[Axis],
    space: &[DimSpec],
    goal: Goal,
) -> Option<Trial> {
    let value = observation
        .value
        .filter(|v| !v.is_nan() && !observation.pending)?;
    let mut values = vec![None; space.len()];
    for &(name, position, dim) in parameters {
        let Some(earlier) = observation.params.get(name) else {
            continue;
        };
        match warm_value(&axes[position], &space[dim].dim, earlier) {
            WarmValue::Fits(fits) => values[dim] = Some(fits),
            WarmValue::OtherType => {}
            WarmValue::Outside => return None,
        }
    }
    if values.iter().all(Option::is_none) {
        return None;
    }
    Some(Trial {
        values,
        loss: Some(if goal == Goal::Maximize {
            -value
        } else {
            value
        }),
        pending: false,
    })
}

/// A TPE proposal (a GP one for `method: gp`) for trial `index`, reproducible from
/// `(seed, index, history, warm)`.
fn bayes_trial(
    spec: &SweepSpec,
    index: u64,
    history: &[Observation],
    warm: &[Observation],
) -> Params {
    let mut axes = Vec::new();
    let mut space = Vec::new();
    // dimension index of each parameter (None for constants)
    let mut dim_of = Vec::new();
    for parameter in &spec.parameters {
        let (axis, dim) = axis_of(&parameter.spec);
        dim_of.push(dim.as_ref().map(|_| space.len()));
        if let Some(dim) = dim {
            space.push(DimSpec {
                name: parameter.name.clone(),
                dim,
                condition: None,
            });
        }
        axes.push(axis);
    }
    let goal = spec
        .metric
        .as_ref()
        .map(|m| m.goal)
        .unwrap_or(Goal::Minimize);
    // The modelled parameters sorted by name, so that each trial's parameters (a map
    // sorted by name) are matched to their dimensions in one merged pass.
    let mut by_name: Vec<(&str, usize, usize)> = spec
        .parameters
        .iter()
        .enumerate()
        .filter_map(|(i, parameter)| dim_of[i].map(|dim| (parameter.name.as_str(), i, dim)))
        .collect();
    by_name.sort_unstable_by_key(|&(name, _, _)| name);
    // The earlier sweep's trials first: the oldest part of the history.
    let mut trials: Vec<Trial> = warm
        .iter()
        .filter_map(|observation| warm_trial(observation, &by_name, &axes, &space, goal))
        .collect();
    trials.extend(history.iter().map(|observation| {
        let mut values = vec![None; space.len()];
        let mut wanted = by_name.iter();
        let mut next = wanted.next();
        for (name, value) in &observation.params {
            // Skip the modelled names sorting before this one (absent from the trial).
            while let Some(&(w, i, dim)) = next {
                match w.cmp(name.as_str()) {
                    std::cmp::Ordering::Less => next = wanted.next(),
                    std::cmp::Ordering::Equal => {
                        values[dim] = to_dim_value(&axes[i], value);
                        next = wanted.next();
                        break;
                    }
                    std::cmp::Ordering::Greater => break,
                }
            }
        }
        let loss = observation
            .value
            .map(|v| if goal == Goal::Maximize { -v } else { v });
        Trial {
            values,
            loss,
            pending: observation.pending,
        }
    }));
    let point = if spec.method == Method::Gp {
        gp::suggest_with_seed(&space, &GpConfig::default(), &trials, spec.seed, index)
            .map_err(|_| ())
    } else {
        let config = TpeConfig {
            multivariate: spec.bayes.multivariate,
            ..TpeConfig::default()
        };
        tpe::suggest_with_seed(&space, &config, &trials, spec.seed, index).map_err(|_| ())
    };
    let point = match point {
        Ok(point) => point,
        // A space the model cannot work with (validation should prevent it): sample at
        // random.
        Err(()) => return search::trial(spec, index).unwrap_or_default(),
    };
    let mut params = Params::new();
    for position in search::topological_order(&spec.parameters) {
        let parameter = &spec.parameters[position];
        if !condition_holds(parameter, &params) {
            continue;
        }
        let value = match (dim_of[position], &axes[position]) {
            (_, Axis::Constant(value)) => value.clone(),
            (Some(dim), axis) => match point[dim] {
                Some(value) => from_dim_value(axis, value),
                None => continue,
            },
            (None, _) => continue,
        };
        params.insert(parameter.name.clone(), value);
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;
    use ladder_spec::parse_sweep;

    const SPEC: &str = r#"
name: b
method: bayes
metric: {name: loss, goal: minimize}
max_runs: 60
seed: 5
parameters:
  lr: {distribution: log_uniform, min: 1.0e-5, max: 1.0}
  x: {distribution: uniform, min: -2, max: 2}
  width: {distribution: q_log_uniform, min: 16, max: 512, q: 16}
  optimizer: {values: [adamw, sgd]}
  momentum: {distribution: uniform, min: 0.5, max: 0.99, when: {optimizer: sgd}}
  fixed: {value: 3}
command: [t, "{{lr}}"]
"#;

    fn objective(params: &Params) -> f64 {
        let number = |name: &str| match params.get(name) {
            Some(ParamValue::Float(f)) => *f,
            Some(ParamValue::Int(i)) => *i as f64,
            _ => panic!("{name} missing"),
        };
        (number("lr").log10() + 2.5).powi(2) + (number("x") - 0.3).powi(2)
    }

    #[test]
    fn proposals_respect_the_space_and_conditions() {
        let spec = parse_sweep("b.yaml", SPEC).unwrap();
        let mut history = Vec::new();
        for index in 0..40 {
            let params = propose(&spec, index, &history).unwrap();
            let lr = match params["lr"] {
                ParamValue::Float(f) => f,
                ref other => panic!("{other:?}"),
            };
            assert!((1e-5..=1.0).contains(&lr));
            let ParamValue::Int(width) = params["width"] else {
                panic!("width is an int: {:?}", params["width"])
            };
            assert!((16..=512).contains(&width) && width % 16 == 0, "{width}");
            assert_eq!(params["fixed"], ParamValue::Int(3));
            let sgd = params["optimizer"] == ParamValue::Str("sgd".into());
            assert_eq!(params.contains_key("momentum"), sgd, "{params:?}");
            history.push(Observation {
                value: Some(objective(&params)),
                params,
                pending: false,
            });
        }
        assert_eq!(
            propose(&spec, 60, &history),
            None,
            "max_runs ends the sweep"
        );
    }

    #[test]
    fn proposals_are_reproducible_and_learn() {
        let spec = parse_sweep("b.yaml", SPEC).unwrap();
        let run = || {
            let mut history: Vec<Observation> = Vec::new();
            for index in 0..60 {
                let params = propose(&spec, index, &history).unwrap();
                history.push(Observation {
                    value: Some(objective(&params)),
                    params,
                    pending: false,
                });
            }
            history
        };
        let first = run();
        assert_eq!(first, run(), "same history and seed, same proposals");
        let mut startup: Vec<f64> = first[..10].iter().map(|o| o.value.unwrap()).collect();
        startup.sort_by(f64::total_cmp);
        let best_guided = first[10..]
            .iter()
            .map(|o| o.value.unwrap())
            .fold(f64::INFINITY, f64::min);
        assert!(
            best_guided < startup[0],
            "guided best {best_guided} vs random start-up best {}",
            startup[0]
        );
    }

    #[test]
    fn in_flight_trials_are_not_proposed_again() {
        let spec = parse_sweep("b.yaml", SPEC).unwrap();
        let mut history: Vec<Observation> = Vec::new();
        for index in 0..20 {
            let params = propose(&spec, index, &history).unwrap();
            history.push(Observation {
                value: Some(objective(&params)),
                params,
                pending: false,
            });
        }
        // 16 proposals handed out at once, none finished.
        for index in 20..36 {
            let params = propose(&spec, index, &history).unwrap();
            assert!(
                history.iter().all(|o| o.params != params),
                "trial {index} repeats an earlier one"
            );
            history.push(Observation {
                value: None,
                params,
                pending: true,
            });
        }
    }

    #[test]
    fn maximize_goals_are_turned_into_losses() {
        let spec =
            parse_sweep("b.yaml", &SPEC.replace("goal: minimize", "goal: maximize")).unwrap();
        let mut history: Vec<Observation> = Vec::new();
        for index in 0..50 {
            let params = propose(&spec, index, &history).unwrap();
            history.push(Observation {
                value: Some(-objective(&params)),
                params,
                pending: false,
            });
        }
        let mut startup: Vec<f64> = history[..10].iter().map(|o| o.value.unwrap()).collect();
        startup.sort_by(f64::total_cmp);
        let best_guided = history[10..]
            .iter()
            .map(|o| o.value.unwrap())
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(
            best_guided > startup[9],
            "guided best {best_guided} vs start-up best {}",
            startup[9]
        );
    }
}

#[cfg(test)]
mod warm_start_tests {
    use super::*;
    use ladder_spec::parse_sweep;

    fn earlier_sweep() -> SweepSpec {
        parse_sweep(
            "a.yaml",
            r#"
name: a
method: bayes
metric: {name: loss, goal: minimize}
max_runs: 60
seed: 1
parameters:
  x: {distribution: uniform, min: 0, max: 10}
  y: {distribution: uniform, min: 0, max: 10}
command: [t]
"#,
        )
        .unwrap()
    }

    fn later_sweep(extra: &str) -> SweepSpec {
        parse_sweep(
            "b.yaml",
            &format!(
                r#"
name: b
method: bayes
metric: {{name: loss, goal: minimize}}
max_runs: 20
seed: 9
warm_start: {{sweep: abcd2345}}
parameters:
  x: {{distribution: uniform, min: 0, max: 10}}
  y: {{distribution: uniform, min: 0, max: 10}}
{extra}command: [t]
"#
            ),
        )
        .unwrap()
    }

    fn number(params: &Params, name: &str) -> f64 {
        match params.get(name) {
            Some(ParamValue::Float(f)) => *f,
            Some(ParamValue::Int(i)) => *i as f64,
            other => panic!("{name}: {other:?}"),
        }
    }

    /// The earlier sweep's best region is around (7, 2).
    fn loss(params: &Params) -> f64 {
        (number(params, "x") - 7.0).powi(2) + (number(params, "y") - 2.0).powi(2)
    }

    /// 40 finished trials of the earlier sweep, proposed by bayes itself.
    fn earlier_history() -> Vec<Observation> {
        let spec = earlier_sweep();
        let mut history = Vec::new();
        for index in 0..40 {
            let params = propose(&spec, index, &history).unwrap();
            history.push(Observation {
                value: Some(loss(&params)),
                params,
                pending: false,
            });
        }
        history
    }

    #[test]
    fn first_proposals_of_a_warm_started_sweep_concentrate_near_the_earlier_best() {
        let warm = earlier_history();
        // The first 8 proposals of the new sweep for 10 sweep seeds: how many lie within 2
        // of (7, 2), a disc holding 12.6% of the 10 x 10 box.
        let near = |warm: &[Observation]| -> usize {
            let mut count = 0;
            for seed in 0..10 {
                let mut spec = later_sweep("");
                spec.seed = seed;
                for index in 0..8 {
                    let params = propose_with_warm_start(&spec, index, &[], warm).unwrap();
                    let distance = ((number(&params, "x") - 7.0).powi(2)
                        + (number(&params, "y") - 2.0).powi(2))
                    .sqrt();
                    count += usize::from(distance < 2.0);
                }
            }
            count
        };
        let (warm_near, cold_near) = (near(&warm), near(&[]));
        // Cold, they are start-up draws over the box (about 10 of 80 expected); warm, the
        // model of the 40 earlier trials places several times as many near their best.
        assert!(warm_near >= 30, "warm {warm_near} of 80 near the best");
        assert!(
            warm_near >= 2 * cold_near,
            "warm {warm_near} vs cold {cold_near}"
        );
        // Reproducible, and the earlier trials do not count towards max_runs.
        let spec = later_sweep("");
        assert_eq!(
            propose_with_warm_start(&spec, 3, &[], &warm),
            propose_with_warm_start(&spec, 3, &[], &warm)
        );
        assert!(propose_with_warm_start(&spec, 19, &[], &warm).is_some());
        assert_eq!(propose_with_warm_start(&spec, 20, &[], &warm), None);
    }

    #[test]
    fn earlier_trials_are_mapped_onto_the_new_space() {
        let spec = later_sweep(
            "  width: {distribution: int_uniform, min: 1, max: 8}\n  opt: {values: [adamw, sgd]}\n",
        );
        let (mut axes, mut space, mut parameters) = (Vec::new(), Vec::new(), Vec::new());
        for (position, parameter) in spec.parameters.iter().enumerate() {
            let (axis, dim) = axis_of(&parameter.spec);
            if let Some(dim) = dim {
                parameters.push((parameter.name.as_str(), position, space.len()));
                space.push(DimSpec {
                    name: parameter.name.clone(),
                    dim,
                    condition: None,
                });
            }
            axes.push(axis);
        }
        parameters.sort_unstable_by_key(|&(name, _, _)| name);
        let trial = |pairs: &[(&str, ParamValue)], value: Option<f64>| {
            let observation = Observation {
                params: pairs
                    .iter()
                    .map(|(name, value)| (name.to_string(), value.clone()))
                    .collect(),
                value,
                pending: false,
            };
            warm_trial(&observation, &parameters, &axes, &space, Goal::Minimize)
        };
        let dim = |name: &str| space.iter().position(|d| d.name == name).unwrap();
        let full = trial(
            &[
                ("x", ParamValue::Float(1.5)),
                ("y", ParamValue::Int(3)),
                ("width", ParamValue::Int(4)),
                ("opt", ParamValue::Str("sgd".into())),
                ("gone", ParamValue::Float(9.0)),
            ],
            Some(0.25),
        )
        .expect("inside the space");
        assert_eq!(full.values[dim("x")], Some(DimValue::Float(1.5)));
        assert_eq!(full.values[dim("y")], Some(DimValue::Float(3.0)));
        assert_eq!(full.values[dim("width")], Some(DimValue::Int(4)));
        assert_eq!(full.values[dim("opt")], Some(DimValue::Choice(1)));
        assert_eq!(full.loss, Some(0.25));
        // Missing parameters, and values of another type, are inactive.
        let partial = trial(
            &[
                ("x", ParamValue::Float(2.0)),
                ("width", ParamValue::Float(2.5)),
                ("y", ParamValue::Str("high".into())),
            ],
            Some(1.0),
        )
        .expect("kept");
        assert_eq!(partial.values[dim("x")], Some(DimValue::Float(2.0)));
        assert_eq!(partial.values[dim("width")], None, "2.5 is not an integer");
        assert_eq!(partial.values[dim("y")], None);
        assert_eq!(partial.values[dim("opt")], None);
        // Outside the bounds or choices: dropped.
        assert_eq!(trial(&[("x", ParamValue::Float(10.5))], Some(1.0)), None);
        assert_eq!(trial(&[("width", ParamValue::Int(9))], Some(1.0)), None);
        assert_eq!(
            trial(&[("opt", ParamValue::Str("adam".into()))], Some(1.0)),
            None
        );
        // No value, or nothing of this space: dropped.
        assert_eq!(trial(&[("x", ParamValue::Float(1.0))], None), None);
        assert_eq!(trial(&[("gone", ParamValue::Float(1.0))], Some(1.0)), None);
    }

    #[test]
    fn a_maximised_objective_is_turned_into_a_loss() {
        let spec = later_sweep("");
        let mut parameters = Vec::new();
        let mut axes = Vec::new();
        let mut space = Vec::new();
        for (position, parameter) in spec.parameters.iter().enumerate() {
            let (axis, dim) = axis_of(&parameter.spec);
            parameters.push((parameter.name.as_str(), position, space.len()));
            space.push(DimSpec {
                name: parameter.name.clone(),
                dim: dim.unwrap(),
                condition: None,
            });
            axes.push(axis);
        }
        let observation = Observation {
            params: [("x".to_string(), ParamValue::Float(1.0))]
                .into_iter()
                .collect(),
            value: Some(0.75),
            pending: false,
        };
        let trial = warm_trial(&observation, &parameters, &axes, &space, Goal::Maximize).unwrap();
        assert_eq!(trial.loss, Some(-0.75));
    }
}
