//! Search methods: which parameters trial `index` of a sweep gets, and how they reach the
//! run (argv substitution and `LADDER_PARAMS` JSON).
//!
//! Grid and random search are pure functions of `(spec, index)` ([`trial`]), so the
//! coordinator never materialises the trial list: it can create trial `n` lazily, after a
//! restart, or out of order, and always get the same parameters. Stateful methods that
//! learn from finished runs (e.g. a later Bayesian/TPE method) implement [`SearchMethod`],
//! which also receives the observations so far; [`method_for`] picks the implementation.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::spec::{is_parameter_name_char, Method, ParamSpec, ParamValue, SweepSpec};

/// The parameters of one trial, by name.
pub type Params = BTreeMap<String, ParamValue>;

/// The crate's error type: problems turning a trial into a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    #[error("unclosed placeholder in {element:?}: \"{{{{\" without a matching \"}}}}\"")]
    UnclosedPlaceholder { element: String },
    #[error("invalid placeholder \"{{{{{inner}}}}}\" in {element:?}: expected {{{{name}}}} with a parameter name (letters, digits, _ . - /)")]
    InvalidPlaceholder { element: String, inner: String },
    #[error("placeholder {{{{{name}}}}} names no parameter of this trial")]
    UnknownParameter { name: String },
}

/// A piece of an argv element template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    Literal(&'a str),
    /// The (trimmed) name inside `{{ }}`.
    Placeholder(&'a str),
}

/// Splits an argv element into literal text and `{{name}}` placeholders (whitespace inside
/// the braces is ignored). A `{{` without a later `}}`, or braces around something that is
/// not a parameter name, is an error; a lone `}}` is literal text.
pub fn parse_template(element: &str) -> Result<Vec<Segment<'_>>, SearchError> {
    let mut segments = Vec::new();
    let mut rest = element;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            segments.push(Segment::Literal(&rest[..open]));
        }
        let after_open = &rest[open + 2..];
        let Some(close) = after_open.find("}}") else {
            return Err(SearchError::UnclosedPlaceholder {
                element: element.to_string(),
            });
        };
        let inner = &after_open[..close];
        let name = inner.trim();
        if name.is_empty() || !name.chars().all(is_parameter_name_char) {
            return Err(SearchError::InvalidPlaceholder {
                element: element.to_string(),
                inner: inner.to_string(),
            });
        }
        segments.push(Segment::Placeholder(name));
        rest = &after_open[close + 2..];
    }
    if !rest.is_empty() {
        segments.push(Segment::Literal(rest));
    }
    Ok(segments)
}

/// Placeholders filled in by the agent when it launches a run, not by the coordinator:
/// - `{{ladder.code_dir}}`: the agent's code directory (`--code-dir`, by default the
///   directory the agent was started in), where the sweep's scripts live;
/// - `{{ladder.run_dir}}`: the run's own working directory on the agent;
/// - `{{ladder.run_id}}`: the run's id.
pub const AGENT_PLACEHOLDERS: &[&str] = &["ladder.code_dir", "ladder.run_dir", "ladder.run_id"];

/// Substitutes `{{name}}` in each argv element with the parameter's [`Display`] form.
/// [`AGENT_PLACEHOLDERS`] are left as they are, for the agent.
///
/// Each element stays exactly one argument whatever the value contains (no shell is ever
/// involved). Unknown names are an error; validation makes that impossible for trials of a
/// parsed spec.
///
/// [`Display`]: std::fmt::Display
pub fn render_command(command: &[String], params: &Params) -> Result<Vec<String>, SearchError> {
    command
        .iter()
        .map(|element| {
            let mut rendered = String::with_capacity(element.len());
            for segment in parse_template(element)? {
                match segment {
                    Segment::Literal(text) => rendered.push_str(text),
                    Segment::Placeholder(name) if AGENT_PLACEHOLDERS.contains(&name) => {
                        rendered.push_str("{{");
                        rendered.push_str(name);
                        rendered.push_str("}}");
                    }
                    Segment::Placeholder(name) => {
                        let Some(value) = params.get(name) else {
                            return Err(SearchError::UnknownParameter {
                                name: name.to_string(),
                            });
                        };
                        rendered.push_str(&value.to_string());
                    }
                }
            }
            Ok(rendered)
        })
        .collect()
}

/// Fills the [`AGENT_PLACEHOLDERS`] of an already rendered command; other text is kept.
pub fn render_agent_placeholders(argv: &[String], values: &BTreeMap<&str, String>) -> Vec<String> {
    argv.iter()
        .map(|element| {
            let Ok(segments) = parse_template(element) else {
                return element.clone();
            };
            let mut rendered = String::with_capacity(element.len());
            for segment in segments {
                match segment {
                    Segment::Literal(text) => rendered.push_str(text),
                    Segment::Placeholder(name) => match values.get(name) {
                        Some(value) => rendered.push_str(value),
                        None => {
                            rendered.push_str("{{");
                            rendered.push_str(name);
                            rendered.push_str("}}");
                        }
                    },
                }
            }
            rendered
        })
        .collect()
}

/// The `LADDER_PARAMS` JSON object of a trial; dotted names become nested objects
/// (`"lora.rank"` → `{"lora": {"rank": ..}}`). A name that cannot nest (a prefix is itself
/// a value, or a part is empty; validation rejects both) is kept flat under its full name.
pub fn params_json(params: &Params) -> serde_json::Value {
    let mut root = serde_json::Map::new();
    for (name, value) in params {
        let value = param_value_json(value);
        let parts: Vec<&str> = name.split('.').collect();
        if nests(&root, &parts) {
            insert_nested(&mut root, &parts, value);
        } else {
            root.insert(name.clone(), value);
        }
    }
    serde_json::Value::Object(root)
}

fn param_value_json(value: &ParamValue) -> serde_json::Value {
    match value {
        ParamValue::Bool(value) => serde_json::Value::Bool(*value),
        ParamValue::Int(value) => serde_json::Value::from(*value),
        ParamValue::Float(value) => serde_json::Number::from_f64(*value)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        ParamValue::Str(value) => serde_json::Value::String(value.clone()),
    }
}

/// Whether `parts` can be inserted as a nested path: no empty part, every prefix absent or
/// an object, and the leaf not taken.
fn nests(root: &serde_json::Map<String, serde_json::Value>, parts: &[&str]) -> bool {
    let Some((leaf, prefix)) = parts.split_last() else {
        return false;
    };
    if parts.iter().any(|part| part.is_empty()) {
        return false;
    }
    let mut object = root;
    for part in prefix {
        match object.get(*part) {
            None => return true,
            Some(serde_json::Value::Object(inner)) => object = inner,
            Some(_) => return false,
        }
    }
    !object.contains_key(*leaf)
}

/// Inserts along `parts`, creating objects; only called when [`nests`] holds.
fn insert_nested(
    root: &mut serde_json::Map<String, serde_json::Value>,
    parts: &[&str],
    value: serde_json::Value,
) {
    let Some((leaf, prefix)) = parts.split_last() else {
        return;
    };
    let mut object = root;
    for part in prefix {
        let slot = object
            .entry(part.to_string())
            .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
        let serde_json::Value::Object(inner) = slot else {
            return;
        };
        object = inner;
    }
    object.insert(leaf.to_string(), value);
}

/// Number of points of one parameter in a grid: `value` 1, `values` their count,
/// `int_uniform` `max - min + 1`. Continuous parameters (rejected by validation for grid)
/// count as the single point `min`.
fn grid_radix(spec: &ParamSpec) -> u128 {
    match spec {
        ParamSpec::Value(_) => 1,
        ParamSpec::Values(values) => values.len() as u128,
        ParamSpec::IntUniform { min, max } if max >= min => {
            (i128::from(*max) - i128::from(*min) + 1) as u128
        }
        ParamSpec::IntUniform { .. } => 0,
        ParamSpec::Uniform { .. } | ParamSpec::LogUniform { .. } => 1,
    }
}

/// The number of points of the full grid (saturating at `u128::MAX`; never materialised).
pub fn grid_size(spec: &SweepSpec) -> u128 {
    spec.parameters.iter().fold(1u128, |size, (_, param)| {
        size.saturating_mul(grid_radix(param))
    })
}

/// Total trials the sweep will create: grid → `min(grid size, max_runs)`, random →
/// `max_runs` (0 when unset, which validation forbids).
pub fn trial_count(spec: &SweepSpec) -> u64 {
    match spec.method {
        Method::Grid => {
            let limit = spec.max_runs.unwrap_or(u64::MAX);
            u64::try_from(grid_size(spec)).map_or(limit, |size| size.min(limit))
        }
        Method::Random => spec.max_runs.unwrap_or(0),
    }
}

/// The parameters of trial `index` (0-based), a pure function of `(spec, index)`; `None`
/// when `index >= trial_count(spec)`.
///
/// Grid decodes `index` in mixed radix over the parameters in file order, the last one
/// varying fastest. Random samples each parameter with a ChaCha8 generator seeded from
/// `(spec.seed, index, parameter name)`, so samples are reproducible, independent of the
/// order trials are created in, and a parameter's samples do not change when other
/// parameters are added or removed.
pub fn trial(spec: &SweepSpec, index: u64) -> Option<Params> {
    if index >= trial_count(spec) {
        return None;
    }
    Some(match spec.method {
        Method::Grid => grid_trial(spec, index),
        Method::Random => random_trial(spec, index),
    })
}

fn grid_trial(spec: &SweepSpec, index: u64) -> Params {
    let mut rest = u128::from(index);
    let mut params = Params::new();
    for (name, param) in spec.parameters.iter().rev() {
        let radix = grid_radix(param).max(1);
        let digit = rest % radix;
        rest /= radix;
        params.insert(name.clone(), grid_point(param, digit));
    }
    params
}

/// Point number `digit` (< radix) of a parameter's grid axis.
fn grid_point(param: &ParamSpec, digit: u128) -> ParamValue {
    match param {
        ParamSpec::Value(value) => value.clone(),
        ParamSpec::Values(values) => usize::try_from(digit)
            .ok()
            .and_then(|digit| values.get(digit))
            .or(values.first())
            .cloned()
            .unwrap_or(ParamValue::Int(0)),
        ParamSpec::IntUniform { min, .. } => {
            ParamValue::Int((i128::from(*min) + digit as i128) as i64)
        }
        ParamSpec::Uniform { min, .. } | ParamSpec::LogUniform { min, .. } => {
            ParamValue::Float(*min)
        }
    }
}

fn random_trial(spec: &SweepSpec, index: u64) -> Params {
    spec.parameters
        .iter()
        .map(|(name, param)| {
            let mut rng = parameter_rng(spec.seed, index, name);
            (name.clone(), sample(param, &mut rng))
        })
        .collect()
}

/// The generator of one parameter of one trial. Part of the stored-sweep contract:
/// changing the key layout changes the parameters of existing random sweeps.
fn parameter_rng(seed: u64, index: u64, name: &str) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&index.to_le_bytes());
    key[16..24].copy_from_slice(&fnv1a(name.as_bytes()).to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

/// 64-bit FNV-1a, a stable (across Rust versions) hash of parameter names.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// One random draw from a parameter's support; degenerate (invalid) ranges yield `min`.
fn sample(param: &ParamSpec, rng: &mut ChaCha8Rng) -> ParamValue {
    match param {
        ParamSpec::Value(value) => value.clone(),
        ParamSpec::Values(values) if values.is_empty() => ParamValue::Int(0),
        ParamSpec::Values(values) => values[rng.random_range(0..values.len())].clone(),
        ParamSpec::Uniform { min, max } if min < max => {
            ParamValue::Float(rng.random_range(*min..*max))
        }
        ParamSpec::LogUniform { min, max } if 0.0 < *min && min < max => {
            let log = rng.random_range(min.ln()..max.ln());
            ParamValue::Float(log.exp().clamp(*min, *max))
        }
        ParamSpec::IntUniform { min, max } if min <= max => {
            ParamValue::Int(rng.random_range(*min..=*max))
        }
        ParamSpec::Uniform { min, .. } | ParamSpec::LogUniform { min, .. } => {
            ParamValue::Float(*min)
        }
        ParamSpec::IntUniform { min, .. } => ParamValue::Int(*min),
    }
}

/// A trial as a search method sees it: finished, failed, or still in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub params: Params,
    /// The sweep metric's value (the run's last reported value, as the sweep's goal
    /// says: larger is better for `maximize`); `None` when the run failed, never reported
    /// it, or is still in flight.
    pub value: Option<f64>,
    /// The trial is queued or running: learning methods must not propose it again
    /// (e.g. treat it with a "constant liar" value).
    pub pending: bool,
}

/// A source of trials. Stateless methods ignore `history`; learning methods use it.
pub trait SearchMethod {
    /// The parameters of trial `index`, given the observations of finished trials so far;
    /// `None` when the method has no more trials to offer.
    fn propose(&mut self, index: u64, history: &[Observation]) -> Option<Params>;
}

/// Grid and random search: [`trial`] of the spec, history ignored.
#[derive(Debug, Clone)]
pub struct StatelessSearch {
    spec: SweepSpec,
}

impl StatelessSearch {
    pub fn new(spec: SweepSpec) -> StatelessSearch {
        StatelessSearch { spec }
    }
}

impl SearchMethod for StatelessSearch {
    fn propose(&mut self, index: u64, _history: &[Observation]) -> Option<Params> {
        trial(&self.spec, index)
    }
}

/// The search method implementing `spec.method`.
pub fn method_for(spec: &SweepSpec) -> Box<dyn SearchMethod + Send> {
    match spec.method {
        Method::Grid | Method::Random => Box::new(StatelessSearch::new(spec.clone())),
    }
}

#[cfg(test)]
mod tests {
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
    use crate::spec::Resources;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn spec(
        method: Method,
        parameters: Vec<(&str, ParamSpec)>,
        max_runs: Option<u64>,
    ) -> SweepSpec {
        SweepSpec {
            name: "test".into(),
            project: "default".into(),
            method,
            metric: None,
            parameters: parameters
                .into_iter()
                .map(|(name, spec)| (name.to_string(), spec))
                .collect(),
            max_runs,
            parallel: 1,
            seed: 7,
            command: vec!["true".into()],
            max_restarts: 3,
            resources: Resources::default(),
            description: None,
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
                (
                    "b",
                    ParamSpec::Values(vec![ParamValue::Int(1), ParamValue::Int(2)]),
                ),
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
    fn method_for_matches_trial() {
        let spec = spec(
            Method::Random,
            vec![(
                "x",
                ParamSpec::LogUniform {
                    min: 1e-5,
                    max: 1e-1,
                },
            )],
            Some(4),
        );
        let mut method = method_for(&spec);
        for index in 0..5 {
            assert_eq!(method.propose(index, &[]), trial(&spec, index));
        }
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
        let unknown = render_command(&["{{lrr}}".to_string()], &params).unwrap_err();
        assert_eq!(
            unknown,
            SearchError::UnknownParameter { name: "lrr".into() }
        );
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
                .prop_map(|set| ParamSpec::Values(set.into_iter().map(ParamValue::Int).collect())),
            (-20i64..20, 1i64..4).prop_map(|(min, span)| ParamSpec::IntUniform {
                min,
                max: min + span
            }),
        ]
    }

    fn axis_points(param: &ParamSpec) -> Vec<ParamValue> {
        match param {
            ParamSpec::Value(value) => vec![value.clone()],
            ParamSpec::Values(values) => values.clone(),
            ParamSpec::IntUniform { min, max } => (*min..=*max).map(ParamValue::Int).collect(),
            other => panic!("not discrete: {other:?}"),
        }
    }

    fn continuous_or_discrete() -> impl Strategy<Value = ParamSpec> {
        prop_oneof![
            axis(),
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
            (ParamSpec::Values(values), value) => values.contains(value),
            (ParamSpec::Uniform { min, max }, ParamValue::Float(x)) => min <= x && x < max,
            (ParamSpec::LogUniform { min, max }, ParamValue::Float(x)) => min <= x && x <= max,
            (ParamSpec::IntUniform { min, max }, ParamValue::Int(x)) => min <= x && x <= max,
            _ => false,
        }
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
        fn huge_grid_index_round_trips(index in 0u64..1_000_000_000_000) {
            let params = trial(&huge_grid(), index).unwrap();
            let [a, b, c, d] = digits(&params);
            let reencoded = ((a * 1000 + b) * 1000 + c) * 1000 + d;
            prop_assert_eq!(reencoded as u64, index);
        }
    }
}
