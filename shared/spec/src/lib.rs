//! What a sweep file means: YAML text → validated [`SweepSpec`], or every problem found
//! as a [`SpecError`] with `file:line:column`; the parameter space a sweep defines; and
//! the built-in trainer's config.
//!
//! Modules and how data flows through them:
//!
//! - [`yaml`] builds a spanned tree (positions, duplicate keys, scalar types), then the
//!   `Checker` here walks it against the sweep schema, collecting all errors instead of
//!   stopping at the first. A [`SweepSpec`] is only returned when no error was found, so
//!   its invariants (documented per field) hold for every caller. The schema is extended
//!   by adding a key to the relevant `*_KEYS` list and a branch in the corresponding
//!   `Checker` method; `parameters:` (forms, distributions, nested groups, `when:`
//!   conditions) lives in `params`, `early_terminate:` in `early_terminate`,
//!   `metric.summary` and `summaries:` in `summaries`.
//! - [`space`]: the parameters of trial `n` of a grid or random sweep
//!   ([`space::trial`], a pure function of `(spec, n)`), the `{{placeholders}}` of a
//!   command ([`space::render_command`]) and the `LADDER_PARAMS` JSON
//!   ([`space::params_json`]). How a sweep picks its next trial, `bayes` included, is
//!   the `ladder-search` crate, one layer up.
//! - [`train_config`]: the `train:` block of a sweep of the built-in trainer.
//!
//! The language is documented for users in `docs/reference/sweep-file.md`.

mod early_terminate;
mod params;
pub mod space;
mod summaries;
pub mod train_config;
pub mod yaml;

#[cfg(test)]
mod fuzz_tests;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::space::{parse_template, Segment};
use ladder_early_stop::EarlyTerminateSpec;
pub use ladder_metrics::summary::Summary;
pub use ladder_metrics::Goal;
use yaml::{Entry, Node, NodeKind, Pos, Scalar};

/// A validated sweep.
///
/// Invariants after [`parse_sweep`]: `name`, `project` non-empty; `command` non-empty and
/// every `{{placeholder}}` in it names a parameter; parameter names are unique, valid
/// (see [`is_parameter_name_char`]), not reserved (`ladder.`) and no name is a dotted
/// prefix of another; every [`ParamSpec`] satisfies its documented invariants; conditions
/// refer to other parameters, compare with values those can take, and form no cycle;
/// `max_runs >= 1` when set and set for `random` and `bayes`; `parallel >= 1`; a `grid`
/// sweep has only discrete parameters (see [`ParamSpec::is_discrete`]), each `q_` axis
/// has at most [`crate::space::MAX_Q_GRID_POINTS`] points and the parameters its
/// conditions refer to at most [`crate::space::MAX_CONDITION_BRANCHES`] value
/// combinations; `early_terminate` satisfies the invariants documented on
/// [`EarlyTerminateSpec`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepSpec {
    pub name: String,
    /// Grouping of sweeps; `"default"` when not given.
    pub project: String,
    pub method: Method,
    /// The metric the sweep optimises, if any.
    pub metric: Option<MetricSpec>,
    /// The leaf parameters in file order, groups flattened (a group's leaves take the
    /// group's place, named `group.leaf`); grid enumeration order depends on it.
    pub parameters: Vec<Parameter>,
    /// Upper bound on trials; required for `random`.
    pub max_runs: Option<u64>,
    /// Runs of this sweep allowed to execute at the same time.
    pub parallel: u32,
    /// Seed of random sampling; trials are reproducible from `(seed, index)`.
    pub seed: u64,
    /// argv template of each run; `{{name}}` is replaced by the parameter's value.
    pub command: Vec<String>,
    /// How many times a run whose agent was lost is re-queued.
    pub max_restarts: u32,
    pub resources: Resources,
    pub description: Option<String>,
    /// Rule stopping runs that do worse than their peers, from `early_terminate:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_terminate: Option<EarlyTerminateSpec>,
    /// Options of `method: bayes`, from `bayes:`; the defaults when absent. Invariant: not
    /// the defaults only when the method is `bayes`.
    #[serde(default, skip_serializing_if = "BayesOptions::is_default")]
    pub bayes: BayesOptions,
    /// The summary chosen for metrics other than the objective, from `summaries:` (the
    /// objective's is [`MetricSpec::summary`]). Invariant: never names the objective, and
    /// `best` only for a metric whose goal is known (the `early_terminate` metric); see
    /// [`SweepSpec::reduction_of`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub summaries: BTreeMap<String, Summary>,
    /// The built-in trainer's configuration (the `train:` block as written, placeholders
    /// and all); `command` is then [`TRAIN_COMMAND`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<serde_json::Value>,
}

impl SweepSpec {
    /// Parameter `name` (a full dotted leaf name), if the sweep has one.
    pub fn parameter(&self, name: &str) -> Option<&Parameter> {
        self.parameters
            .iter()
            .find(|parameter| parameter.name == name)
    }
}

/// One leaf parameter of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parameter {
    /// Full name: group names and the leaf's key joined with `.` (`lora.rank`); the
    /// `{{placeholder}}` name and the path in `LADDER_PARAMS`.
    pub name: String,
    pub spec: ParamSpec,
    /// All must hold for the parameter to be part of a trial (the parameter's own `when:`
    /// and those of enclosing groups, outermost first); empty for unconditional ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// `when: {parameter: value}` or `when: {parameter: [a, b]}`: holds when `parameter` is
/// present in the trial with one of `any_of`.
///
/// Invariants after [`parse_sweep`]: `parameter` names another leaf parameter that is
/// discrete, and `any_of` is non-empty, duplicate-free and holds only values that
/// parameter can take, in the form the parameter produces them (`Float(1.0)` for a
/// `values: [1.0, 2.0]` parameter even when the condition says `1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    pub parameter: String,
    pub any_of: Vec<ParamValue>,
}

/// How trials are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Every combination of the (discrete) parameters, in mixed-radix order.
    Grid,
    /// Independent samples, `max_runs` of them.
    Random,
    /// Model-based proposals (TPE) learning from finished runs, `max_runs` of them;
    /// validated like `random` (any distribution allowed, `max_runs` required), and
    /// [`crate::space::trial`] falls back to random sampling for it.
    Bayes,
}

impl Method {
    pub const ALL: [Method; 3] = [Method::Grid, Method::Random, Method::Bayes];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Grid => "grid",
            Method::Random => "random",
            Method::Bayes => "bayes",
        }
    }

    fn from_name(name: &str) -> Option<Method> {
        Method::ALL
            .into_iter()
            .find(|method| method.as_str() == name)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How `method: bayes` models the trials so far (`bayes:` in the sweep file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BayesOptions {
    /// One joint model over the parameters that are active together (the default), or,
    /// when `false`, one model per parameter (which misses interactions between them).
    pub multivariate: bool,
}

impl Default for BayesOptions {
    fn default() -> Self {
        BayesOptions { multivariate: true }
    }
}

impl BayesOptions {
    fn is_default(&self) -> bool {
        *self == BayesOptions::default()
    }
}

/// The metric a sweep optimises.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricSpec {
    /// A metric name as reported on `@ladder` lines.
    pub name: String,
    pub goal: Goal,
    /// Which value of the metric stands for a run (queries, ranking, the search's
    /// objective); `None`: the last reported value, as before summaries existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
}

/// What a run needs from an agent.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Resources {
    /// GPUs each run gets exclusively.
    pub gpus: u32,
    /// Labels an agent must carry (exact match) to receive runs of this sweep.
    pub labels: BTreeMap<String, String>,
    /// How a command run on several GPUs is started (`resources.launch`). Specs stored
    /// before this key existed load as [`Launch::Single`].
    #[serde(default)]
    pub launch: Launch,
}

/// How the agent starts a command run that has GPUs, torchrun style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Launch {
    /// One process that sees all the run's GPUs and is told the world size
    /// (`WORLD_SIZE=N`, `RANK=0`); it starts its own workers.
    #[default]
    Single,
    /// One process per GPU (`RANK=i`, `LOCAL_RANK=i`), each seeing all the run's GPUs.
    PerGpu,
}

impl Launch {
    pub const NAMES: &'static [&'static str] = &["single", "per_gpu"];

    pub fn as_str(self) -> &'static str {
        match self {
            Launch::Single => "single",
            Launch::PerGpu => "per_gpu",
        }
    }

    pub fn from_name(name: &str) -> Option<Launch> {
        match name {
            "single" => Some(Launch::Single),
            "per_gpu" => Some(Launch::PerGpu),
            _ => None,
        }
    }
}

impl fmt::Display for Launch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one parameter's values are chosen. Bounds and parameters are finite floats.
///
/// Serialized externally tagged: `{"value": 1}`, `{"values": {"values": [1, 2]}}`,
/// `{"uniform": {"min": 0.0, "max": 1.0}}`, `{"q_uniform": {"min": .., "max": .., "q": ..,
/// "integer": false}}`, …
///
/// The `integer` flag of the `q_` forms makes the values `Int` instead of `Float`: set
/// when `min`, `max` and `q` (`q_uniform`, `q_log_uniform`) or `q` (`q_normal`,
/// `q_log_normal`) are written as integers in the YAML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamSpec {
    /// A constant (`value:` or `distribution: constant`).
    Value(ParamValue),
    /// A choice among a non-empty list of distinct values (`values:`, optionally with
    /// `distribution: categorical`). `probabilities`, when given, has one entry per value,
    /// each `>= 0`, summing to 1 (within 1e-6); random search draws with those weights,
    /// grid search ignores them.
    Values {
        values: Vec<ParamValue>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        probabilities: Option<Vec<f64>>,
    },
    /// Real in `[min, max)`, `min < max`.
    Uniform { min: f64, max: f64 },
    /// Real in `[min, max]` sampled uniformly on a log scale, `0 < min < max` (min and max
    /// are the values themselves, W&B's `log_uniform_values`).
    LogUniform { min: f64, max: f64 },
    /// Integer in `min..=max`, `min < max`.
    IntUniform { min: i64, max: i64 },
    /// A multiple of `q` in `[min, max]`: `round(U(min, max) / q) * q`, stepped inward by
    /// `q` when rounding leaves the range. `min < max`, `q > 0`, and at least one multiple
    /// of `q` lies in `[min, max]`. Integer bounds are within ±2^53.
    QUniform {
        min: f64,
        max: f64,
        q: f64,
        #[serde(default)]
        integer: bool,
    },
    /// Like `QUniform` with `x` drawn log-uniformly; `0 < min < max`.
    QLogUniform {
        min: f64,
        max: f64,
        q: f64,
        #[serde(default)]
        integer: bool,
    },
    /// `N(mu, sigma)`, unbounded; `sigma > 0`.
    Normal { mu: f64, sigma: f64 },
    /// `exp(N(mu, sigma))`, always `> 0`; `sigma > 0`.
    LogNormal { mu: f64, sigma: f64 },
    /// `round(N(mu, sigma) / q) * q`, unbounded; `sigma > 0`, `q > 0`.
    QNormal {
        mu: f64,
        sigma: f64,
        q: f64,
        #[serde(default)]
        integer: bool,
    },
    /// `round(exp(N(mu, sigma)) / q) * q`, `>= 0` (0 when the draw is below `q / 2`).
    QLogNormal {
        mu: f64,
        sigma: f64,
        q: f64,
        #[serde(default)]
        integer: bool,
    },
}

impl ParamSpec {
    /// Whether the parameter has finitely many values, so grid search and conditions can
    /// use it: `value`, `values`, `int_uniform`, `q_uniform`, `q_log_uniform`.
    pub fn is_discrete(&self) -> bool {
        crate::space::grid_axis_len(self).is_some()
    }

    /// The `distribution:` name of the form (`constant` and `categorical` for `value` and
    /// `values`).
    pub fn distribution_name(&self) -> &'static str {
        match self {
            ParamSpec::Value(_) => "constant",
            ParamSpec::Values { .. } => "categorical",
            ParamSpec::Uniform { .. } => "uniform",
            ParamSpec::LogUniform { .. } => "log_uniform",
            ParamSpec::IntUniform { .. } => "int_uniform",
            ParamSpec::QUniform { .. } => "q_uniform",
            ParamSpec::QLogUniform { .. } => "q_log_uniform",
            ParamSpec::Normal { .. } => "normal",
            ParamSpec::LogNormal { .. } => "log_normal",
            ParamSpec::QNormal { .. } => "q_normal",
            ParamSpec::QLogNormal { .. } => "q_log_normal",
        }
    }
}

/// A concrete parameter value (finite when it is a float).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

/// The form substituted into commands: integers plain, floats in Rust's shortest
/// round-trip form (`0.0001`, `1`), strings raw, booleans `true`/`false`.
impl ParamValue {
    /// The value as JSON (`LADDER_PARAMS`, the `train:` block); a float that JSON cannot
    /// hold (NaN, ±∞) is `null`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ParamValue::Bool(value) => serde_json::Value::Bool(*value),
            ParamValue::Int(value) => serde_json::Value::from(*value),
            ParamValue::Float(value) => serde_json::Number::from_f64(*value)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            ParamValue::Str(value) => serde_json::Value::String(value.clone()),
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Bool(value) => write!(f, "{value}"),
            ParamValue::Int(value) => write!(f, "{value}"),
            ParamValue::Float(value) => write!(f, "{value}"),
            ParamValue::Str(value) => f.write_str(value),
        }
    }
}

/// One problem in a sweep file.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecError {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, counted in characters.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Every problem found in a sweep file, sorted by position (never empty when returned by
/// [`parse_sweep`]).
#[derive(Debug, Clone)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

/// A misspelled required key is reported twice: as missing (at its map) and as unknown
/// (at its line, with "did you mean"). The second says what to fix, so it moves in front
/// of the first.
fn did_you_mean_first(errors: &mut Vec<SpecError>) {
    let mut index = 0;
    while index < errors.len() {
        let missing = errors[index]
            .message
            .strip_prefix("missing required key \"")
            .and_then(|rest| rest.split('"').next())
            .map(|key| format!("did you mean \"{key}\"?"));
        if let Some(suggestion) = missing {
            let explained = (index + 1..errors.len())
                .find(|&later| errors[later].message.ends_with(&suggestion));
            if let Some(later) = explained {
                let error = errors.remove(later);
                errors.insert(index, error);
                index += 1;
            }
        }
        index += 1;
    }
}

/// Characters allowed in parameter names (and thus in `{{placeholders}}`).
pub fn is_parameter_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')
}

/// Parses and validates a sweep file. `file_name` only labels the errors.
pub fn parse_sweep(file_name: &str, text: &str) -> Result<SweepSpec, SpecErrors> {
    let mut checker = Checker {
        file: file_name,
        errors: Vec::new(),
    };
    let Some(root) = checker.document_root(
        text,
        "sweep file is empty: expected a mapping with at least name, method and command",
    ) else {
        return Err(checker.finish());
    };
    let spec = checker.sweep(&root);
    match spec {
        Some(spec) if checker.errors.is_empty() => Ok(spec),
        _ => Err(checker.finish()),
    }
}

const SWEEP_KEYS: &[&str] = &[
    "name",
    "project",
    "description",
    "method",
    "metric",
    "parameters",
    "max_runs",
    "parallel",
    "seed",
    "command",
    "train",
    "max_restarts",
    "resources",
    "early_terminate",
    "summaries",
    "bayes",
];
const BAYES_KEYS: &[&str] = &["multivariate"];
const METRIC_KEYS: &[&str] = &["name", "goal", "summary"];
const RESOURCE_KEYS: &[&str] = &["gpus", "labels", "launch"];
const METHOD_NAMES: &[&str] = &["grid", "random", "bayes"];
const GOAL_NAMES: &[&str] = &["minimize", "maximize"];
const COMMAND_EXAMPLE: &str = "[python, train.py, --lr, \"{{lr}}\"]";

/// Walks the spanned tree, collecting errors. Methods return `None` after reporting why.
struct Checker<'f> {
    file: &'f str,
    errors: Vec<SpecError>,
}

impl Checker<'_> {
    /// The file's root node, with its structural diagnostics recorded; `None` (with the
    /// error recorded) on a syntax error or when the file holds nothing (`empty` says
    /// what was expected).
    fn document_root(&mut self, text: &str, empty: &str) -> Option<Node> {
        let document = match yaml::parse(text) {
            Ok(document) => document,
            Err(syntax) => {
                self.error(syntax.pos, syntax.message);
                return None;
            }
        };
        for diagnostic in document.diagnostics {
            self.error(diagnostic.pos, diagnostic.message);
        }
        let root = document.root.filter(|root| !root.is_null());
        if root.is_none() {
            self.error(Pos::START, empty);
        }
        root
    }

    fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.errors.push(SpecError {
            file: self.file.to_string(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
        });
    }

    fn finish(mut self) -> SpecErrors {
        if self.errors.is_empty() {
            self.error(Pos::START, "invalid sweep");
        }
        self.errors.sort_by_key(|error| (error.line, error.column));
        // A group's condition is checked once per leaf; report each problem once.
        self.errors.dedup();
        did_you_mean_first(&mut self.errors);
        SpecErrors(self.errors)
    }

    fn sweep(&mut self, root: &Node) -> Option<SweepSpec> {
        let NodeKind::Map(entries) = &root.kind else {
            self.error(
                root.pos,
                format!(
                    "a sweep must be a mapping of keys like name, method, parameters and command, not {}",
                    root.type_name()
                ),
            );
            return None;
        };
        self.check_keys(entries, "sweep", SWEEP_KEYS);

        let name = self
            .required(root, entries, "name", "sweep", "e.g. name: lr-sweep")
            .and_then(|node| self.non_empty_text(node, "name"));
        let project = match field(entries, "project") {
            None => Some("default".to_string()),
            Some(node) => self.non_empty_text(node, "project"),
        };
        let description = match field(entries, "description") {
            Some(node) if !node.is_null() => self.text(node, "description").map(Some),
            _ => Some(None),
        };
        let method = self
            .required(root, entries, "method", "sweep", "grid, random or bayes")
            .and_then(|node| self.method(node));
        let mut metric = match field(entries, "metric") {
            Some(node) if !node.is_null() => self.metric(node).map(Some),
            _ => Some(None),
        };
        let early_terminate = match field(entries, "early_terminate") {
            Some(node) if !node.is_null() => self.early_terminate(node, &metric).map(Some),
            _ => Some(None),
        };
        let summaries = match field(entries, "summaries") {
            Some(node) if !node.is_null() => self.summaries(node, &mut metric, &early_terminate),
            _ => Some(BTreeMap::new()),
        };
        let params::ParsedParameters {
            parameters,
            names: parameter_names,
        } = match field(entries, "parameters") {
            Some(node) if !node.is_null() => self.parameters(node, method.map(|(m, _)| m)),
            _ => params::ParsedParameters {
                parameters: Some(Vec::new()),
                names: Vec::new(),
            },
        };
        let max_runs = match field(entries, "max_runs") {
            Some(node) if !node.is_null() => self
                .integer(
                    node,
                    "max_runs",
                    1,
                    ladder_limits::MAX_SWEEP_RUNS,
                    "a positive integer",
                )
                .map(Some),
            _ => Some(None),
        };
        let parallel =
            self.optional_integer(entries, "parallel", 1, 1, ladder_limits::MAX_SWEEP_PARALLEL);
        let seed = self.optional_integer(entries, "seed", 0, 0, u64::MAX);
        let max_restarts = self.optional_integer(entries, "max_restarts", 3, 0, u32::MAX.into());
        let train_node = field(entries, "train").filter(|node| !node.is_null());
        let command = match (train_node, field(entries, "command")) {
            (Some(train), Some(_)) => {
                self.error(
                    train.pos,
                    "a sweep runs either a command or the built-in trainer (train:), not both",
                );
                None
            }
            (Some(train), None) => {
                self.train_placeholders(train, &parameter_names);
                Some(TRAIN_COMMAND.iter().map(|s| s.to_string()).collect())
            }
            (None, _) => self
                .required(root, entries, "command", "sweep", COMMAND_EXAMPLE)
                .and_then(|node| self.command(node, &parameter_names)),
        };
        let resources = match field(entries, "resources") {
            Some(node) if !node.is_null() => self.resources(node),
            _ => Some(Resources::default()),
        };
        // The built-in trainer runs one data-parallel rank per GPU.
        let resources = match (train_node, resources) {
            (Some(_), Some(mut resources)) => {
                let launch_node = field(entries, "resources").and_then(|node| match &node.kind {
                    NodeKind::Map(inner) => field(inner, "launch").filter(|n| !n.is_null()),
                    _ => None,
                });
                match launch_node {
                    None if resources.gpus >= 1 => resources.launch = Launch::PerGpu,
                    Some(node) if resources.launch == Launch::Single && resources.gpus > 1 => {
                        self.error(
                            node.pos,
                            "resources.launch: single starts one process, but the built-in trainer runs one rank per GPU; use per_gpu or leave launch out",
                        );
                    }
                    _ => {}
                }
                Some(resources)
            }
            (_, resources) => resources,
        };

        if let (Some((method @ (Method::Random | Method::Bayes), method_pos)), Some(None)) =
            (method, max_runs)
        {
            self.error(
                method_pos,
                format!(
                    "{method} search needs max_runs (it would never end); add e.g. max_runs: 20"
                ),
            );
        }

        let bayes = match field(entries, "bayes") {
            Some(node) if !node.is_null() => self.bayes(node, method),
            _ => Some(BayesOptions::default()),
        };

        let train = train_node.map(yaml_to_json);
        let spec = SweepSpec {
            name: name?,
            project: project?,
            method: method?.0,
            metric: metric?,
            parameters: parameters?,
            max_runs: max_runs?,
            parallel: u32::try_from(parallel?).ok()?,
            seed: seed?,
            command: command?,
            max_restarts: u32::try_from(max_restarts?).ok()?,
            resources: resources?,
            description: description?,
            early_terminate: early_terminate?,
            bayes: bayes?,
            summaries: summaries?,
            train,
        };
        if let Some(train) = train_node {
            self.check_train(&spec, train);
        }
        Some(spec)
    }

    /// Every `{{name}}` in the `train:` block must name a parameter (or be a `ladder.*`
    /// value the agent fills in).
    fn train_placeholders(&mut self, node: &Node, parameter_names: &[String]) {
        match &node.kind {
            NodeKind::Scalar { text, .. } => {
                let block = serde_json::Value::String(text.clone());
                for name in crate::train_config::placeholders(&block) {
                    let known = parameter_names.contains(&name)
                        || crate::space::AGENT_PLACEHOLDERS.contains(&name.as_str());
                    if !known {
                        let names: Vec<&str> = parameter_names.iter().map(String::as_str).collect();
                        let help = match suggestion(&name, &names) {
                            Some(close) => format!("; did you mean \"{close}\"?"),
                            None => String::new(),
                        };
                        self.error(
                            node.pos,
                            format!(
                                "train uses {{{{{name}}}}} but no parameter is named \"{name}\"{help}"
                            ),
                        );
                    }
                }
            }
            NodeKind::Seq(items) => {
                for item in items {
                    self.train_placeholders(item, parameter_names);
                }
            }
            NodeKind::Map(entries) => {
                for entry in entries {
                    self.train_placeholders(&entry.value, parameter_names);
                }
            }
        }
    }

    /// Checks the `train:` block as the trainer will read it, with the first trial's
    /// parameters substituted, and reports the first problem at its position.
    fn check_train(&mut self, spec: &SweepSpec, node: &Node) {
        let Some(block) = &spec.train else { return };
        let params = crate::space::trial(spec, 0).unwrap_or_default();
        let rendered = crate::train_config::render(block, &params);
        let config = match crate::train_config::TrainConfig::from_json(&rendered) {
            Ok(config) => config,
            Err(error) => {
                let pos = position_of_path(node, &error.path);
                let field = if error.path.is_empty() {
                    "train".to_string()
                } else {
                    format!("train.{}", error.path)
                };
                self.error(pos, format!("{field}: {}", error.message));
                return;
            }
        };
        let gpus = spec.resources.gpus as usize;
        if gpus > 1 && spec.resources.launch == Launch::PerGpu {
            if config.data_parallel > 1 {
                self.error(
                    position_of_path(node, "data_parallel"),
                    format!(
                        "train.data_parallel: {} ranks in one process cannot be combined with resources.gpus: {gpus} (one rank per GPU); leave data_parallel at 1",
                        config.data_parallel
                    ),
                );
            } else if !config.batch_size.is_multiple_of(gpus) {
                self.error(
                    position_of_path(node, "batch_size"),
                    format!(
                        "train.batch_size: {} does not split evenly over resources.gpus: {gpus} ranks",
                        config.batch_size
                    ),
                );
            }
        }
    }

    /// Reports keys of `entries` not in `known`, suggesting the closest known key.
    fn check_keys(&mut self, entries: &[Entry], what: &str, known: &[&str]) {
        for entry in entries {
            if known.contains(&entry.key.as_str()) {
                continue;
            }
            let message = unknown("key", &entry.key, &format!(" in {what}"), known);
            self.error(entry.key_pos, message);
        }
    }

    /// The value of a required key, or an error at the enclosing mapping's position.
    fn required<'n>(
        &mut self,
        map: &Node,
        entries: &'n [Entry],
        key: &str,
        what: &str,
        hint: &str,
    ) -> Option<&'n Node> {
        let node = field(entries, key);
        if node.is_none() {
            self.error(
                map.pos,
                format!("missing required key \"{key}\" in {what} ({hint})"),
            );
        }
        node
    }

    /// Any non-null scalar, as written.
    fn text(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.kind {
            NodeKind::Scalar { value, text } if *value != Scalar::Null => Some(text.clone()),
            _ => {
                self.error(
                    node.pos,
                    format!("{what} must be a string, not {}", node.type_name()),
                );
                None
            }
        }
    }

    fn non_empty_text(&mut self, node: &Node, what: &str) -> Option<String> {
        let text = self.text(node, what)?;
        if text.trim().is_empty() {
            self.error(node.pos, format!("{what} must not be empty"));
            return None;
        }
        Some(text)
    }

    /// An integer in `min..=max`; `expected` describes the type for messages.
    fn integer(
        &mut self,
        node: &Node,
        what: &str,
        min: u64,
        max: u64,
        expected: &str,
    ) -> Option<u64> {
        let NodeKind::Scalar { value, text } = &node.kind else {
            self.error(
                node.pos,
                format!("{what} must be {expected}, not {}", node.type_name()),
            );
            return None;
        };
        let Scalar::Int(int) = value else {
            self.error(
                node.pos,
                format!(
                    "{what} must be {expected} (got {} \"{text}\")",
                    value.type_name()
                ),
            );
            return None;
        };
        if *int < 0 {
            self.error(node.pos, format!("{what} must be {expected} (got {int})"));
            return None;
        }
        if *int < i128::from(min) {
            self.error(
                node.pos,
                format!("{what} must be at least {min} (got {int})"),
            );
            return None;
        }
        if *int > i128::from(max) {
            self.error(
                node.pos,
                format!("{what} must be at most {max} (got {int})"),
            );
            return None;
        }
        u64::try_from(*int).ok()
    }

    fn optional_integer(
        &mut self,
        entries: &[Entry],
        key: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Option<u64> {
        let expected = if min == 0 {
            "a non-negative integer"
        } else {
            "a positive integer"
        };
        match field(entries, key) {
            Some(node) if !node.is_null() => self.integer(node, key, min, max, expected),
            _ => Some(default),
        }
    }

    /// A name from a fixed list, with "expected one of" and "did you mean" on error.
    fn keyword(&mut self, node: &Node, what: &str, names: &[&str]) -> Option<String> {
        let name = self.text(node, what)?;
        if names.contains(&name.as_str()) {
            return Some(name);
        }
        self.error(node.pos, unknown(what, &name, "", names));
        None
    }

    fn method(&mut self, node: &Node) -> Option<(Method, Pos)> {
        let name = self.keyword(node, "method", METHOD_NAMES)?;
        Method::from_name(&name).map(|method| (method, node.pos))
    }

    /// `bayes: {multivariate: BOOL}`, only with `method: bayes`.
    fn bayes(&mut self, node: &Node, method: Option<(Method, Pos)>) -> Option<BayesOptions> {
        let entries = self.mapping(node, "bayes", "e.g. bayes: {multivariate: false}")?;
        if let Some((other @ (Method::Grid | Method::Random), _)) = method {
            self.error(
                node.pos,
                format!("bayes: options apply to method: bayes, not {other}; remove bayes: or use method: bayes"),
            );
            return None;
        }
        self.check_keys(entries, "bayes", BAYES_KEYS);
        let mut options = BayesOptions::default();
        if let Some(value) = field(entries, "multivariate").filter(|n| !n.is_null()) {
            options.multivariate = self.boolean(value, "bayes.multivariate")?;
        }
        Some(options)
    }

    /// `true` or `false`.
    fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        match &node.kind {
            NodeKind::Scalar {
                value: Scalar::Bool(value),
                ..
            } => Some(*value),
            NodeKind::Scalar { value, text } => {
                self.error(
                    node.pos,
                    format!(
                        "{what} must be true or false (got {} \"{text}\")",
                        value.type_name()
                    ),
                );
                None
            }
            _ => {
                self.error(
                    node.pos,
                    format!("{what} must be true or false, not {}", node.type_name()),
                );
                None
            }
        }
    }

    fn metric(&mut self, node: &Node) -> Option<MetricSpec> {
        let entries = self.mapping(
            node,
            "metric",
            "e.g. metric: {name: val_loss, goal: minimize}",
        )?;
        self.check_keys(entries, "metric", METRIC_KEYS);
        let name = self
            .required(
                node,
                entries,
                "name",
                "metric",
                "the metric to optimise, e.g. name: val_loss",
            )
            .and_then(|name| self.non_empty_text(name, "metric name"));
        let goal = match field(entries, "goal") {
            Some(goal) if !goal.is_null() => {
                let goal = self.keyword(goal, "goal", GOAL_NAMES)?;
                Goal::ALL
                    .into_iter()
                    .find(|candidate| candidate.as_str() == goal)
            }
            _ => Some(Goal::default()),
        };
        let summary = match field(entries, "summary") {
            Some(summary) if !summary.is_null() => self.summary(summary).map(Some),
            _ => Some(None),
        };
        Some(MetricSpec {
            name: name?,
            goal: goal?,
            summary: summary?,
        })
    }

    fn mapping<'n>(&mut self, node: &'n Node, what: &str, example: &str) -> Option<&'n [Entry]> {
        let NodeKind::Map(entries) = &node.kind else {
            self.error(
                node.pos,
                format!(
                    "{what} must be a mapping ({example}), not {}",
                    node.type_name()
                ),
            );
            return None;
        };
        Some(entries)
    }

    fn command(&mut self, node: &Node, parameter_names: &[String]) -> Option<Vec<String>> {
        let NodeKind::Seq(items) = &node.kind else {
            self.error(
                node.pos,
                format!(
                    "command is argv, a list like {COMMAND_EXAMPLE}, not {} (no shell is used)",
                    node.type_name()
                ),
            );
            return None;
        };
        if items.is_empty() {
            self.error(
                node.pos,
                format!("command must not be empty (a list like {COMMAND_EXAMPLE})"),
            );
            return None;
        }
        let names: Vec<&str> = parameter_names.iter().map(String::as_str).collect();
        let mut command = Some(Vec::with_capacity(items.len()));
        for item in items {
            let element = self.command_element(item, &names);
            match (element, command.as_mut()) {
                (Some(element), Some(list)) => list.push(element),
                _ => command = None,
            }
        }
        command
    }

    fn command_element(&mut self, item: &Node, parameter_names: &[&str]) -> Option<String> {
        let NodeKind::Scalar { value, text } = &item.kind else {
            self.error(
                item.pos,
                format!(
                    "command elements must be strings, not {} (command is argv, a list like {COMMAND_EXAMPLE})",
                    item.type_name()
                ),
            );
            return None;
        };
        if *value == Scalar::Null {
            self.error(
                item.pos,
                "command elements must be strings, not null (quote \"\" for an empty argument)",
            );
            return None;
        }
        let segments = match parse_template(text) {
            Ok(segments) => segments,
            Err(error) => {
                self.error(item.pos, format!("command element: {error}"));
                return None;
            }
        };
        let mut ok = true;
        for segment in segments {
            let Segment::Placeholder(name) = segment else {
                continue;
            };
            if parameter_names.contains(&name) || crate::space::AGENT_PLACEHOLDERS.contains(&name) {
                continue;
            }
            ok = false;
            let help = match suggestion(name, parameter_names) {
                Some(close) => format!("; did you mean \"{close}\"?"),
                None if parameter_names.is_empty() => "; the sweep has no parameters".to_string(),
                None => format!(" (parameters: {})", parameter_names.join(", ")),
            };
            self.error(
                item.pos,
                format!("command uses {{{{{name}}}}} but no parameter is named \"{name}\"{help}"),
            );
        }
        ok.then(|| text.clone())
    }

    fn resources(&mut self, node: &Node) -> Option<Resources> {
        let entries = self.mapping(
            node,
            "resources",
            "e.g. resources: {gpus: 1, labels: {zone: a}}",
        )?;
        self.check_keys(entries, "resources", RESOURCE_KEYS);
        let gpus = self.optional_integer(entries, "gpus", 0, 0, u32::MAX.into());
        let labels = match field(entries, "labels") {
            Some(labels) if !labels.is_null() => self.labels(labels),
            _ => Some(BTreeMap::new()),
        };
        let launch = match field(entries, "launch") {
            Some(node) if !node.is_null() => {
                let launch = self
                    .keyword(node, "resources.launch", Launch::NAMES)
                    .and_then(|name| Launch::from_name(&name));
                if launch == Some(Launch::PerGpu) && gpus == Some(0) {
                    self.error(
                        node.pos,
                        "resources.launch: per_gpu starts one process per GPU, so it needs resources.gpus of at least 1",
                    );
                    return None;
                }
                launch
            }
            _ => Some(Launch::default()),
        };
        Some(Resources {
            gpus: u32::try_from(gpus?).ok()?,
            labels: labels?,
            launch: launch?,
        })
    }

    fn labels(&mut self, node: &Node) -> Option<BTreeMap<String, String>> {
        let entries = self.mapping(
            node,
            "resources.labels",
            "e.g. labels: {zone: a, gpu: a100}",
        )?;
        let mut labels = Some(BTreeMap::new());
        for entry in entries {
            let value = self.text(&entry.value, &format!("label \"{}\"", entry.key));
            let key_ok = !entry.key.is_empty();
            if !key_ok {
                self.error(entry.key_pos, "label names must not be empty");
            }
            match (key_ok, value, labels.as_mut()) {
                (true, Some(value), Some(map)) => {
                    map.insert(entry.key.clone(), value);
                }
                _ => labels = None,
            }
        }
        labels
    }
}

fn entry_of<'e>(entries: &'e [Entry], key: &str) -> Option<&'e Entry> {
    entries.iter().find(|entry| entry.key == key)
}

/// Parses a `ladder train CONFIG.yaml` file: the same keys as a sweep's `train:` block,
/// without placeholders. Errors carry file, line and column.
pub fn parse_train_file(
    file_name: &str,
    text: &str,
) -> Result<crate::train_config::TrainConfig, SpecErrors> {
    let mut checker = Checker {
        file: file_name,
        errors: Vec::new(),
    };
    let Some(root) = checker.document_root(
        text,
        "train config is empty: expected a mapping with at least model and data",
    ) else {
        return Err(checker.finish());
    };
    let block = yaml_to_json(&root);
    if let Some(name) = crate::train_config::placeholders(&block).first() {
        checker.error(
            root.pos,
            format!("{{{{{name}}}}}: placeholders are filled in only for runs of a sweep"),
        );
    }
    match crate::train_config::TrainConfig::from_json(&block) {
        Ok(config) if checker.errors.is_empty() => Ok(config),
        Ok(_) => Err(checker.finish()),
        Err(error) => {
            let pos = position_of_path(&root, &error.path);
            checker.error(pos, error.to_string().trim_start_matches(": ").to_string());
            Err(checker.finish())
        }
    }
}

/// argv of a run of the built-in trainer; the scheduler appends the rendered `train:`
/// block as `--config-json JSON`.
pub const TRAIN_COMMAND: &[&str] = &["{{ladder.exe}}", "train", "--sweep-run"];

/// The spanned YAML node as JSON (positions dropped).
fn yaml_to_json(node: &Node) -> serde_json::Value {
    match &node.kind {
        NodeKind::Scalar { value, .. } => match value {
            Scalar::Null => serde_json::Value::Null,
            Scalar::Bool(b) => serde_json::Value::Bool(*b),
            Scalar::Int(i) => i64::try_from(*i)
                .map(serde_json::Value::from)
                .or_else(|_| u64::try_from(*i).map(serde_json::Value::from))
                .unwrap_or_else(|_| serde_json::Value::from(*i as f64)),
            Scalar::Float(f) => serde_json::Number::from_f64(*f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Scalar::Str(text) => serde_json::Value::String(text.clone()),
        },
        NodeKind::Seq(items) => serde_json::Value::Array(items.iter().map(yaml_to_json).collect()),
        NodeKind::Map(entries) => serde_json::Value::Object(
            entries
                .iter()
                .map(|entry| (entry.key.clone(), yaml_to_json(&entry.value)))
                .collect(),
        ),
    }
}

/// The position of the node at a dotted path (`optim.lr`, `eval.0.task`); the deepest
/// node that exists when the path goes further than the file does.
fn position_of_path(root: &Node, path: &str) -> Pos {
    let mut node = root;
    let mut pos = root.pos;
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        let next = match &node.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .find(|entry| entry.key == segment)
                .map(|entry| (entry.key_pos, &entry.value)),
            NodeKind::Seq(items) => segment
                .parse::<usize>()
                .ok()
                .and_then(|index| items.get(index))
                .map(|item| (item.pos, item)),
            NodeKind::Scalar { .. } => None,
        };
        let Some((key_pos, child)) = next else { break };
        pos = if matches!(child.kind, NodeKind::Scalar { .. }) {
            child.pos
        } else {
            key_pos
        };
        node = child;
    }
    pos
}

fn field<'e>(entries: &'e [Entry], key: &str) -> Option<&'e Node> {
    entry_of(entries, key).map(|entry| &entry.value)
}

/// `unknown {kind} "{got}"{context} (expected one of: ...)` plus a suggestion if close.
fn unknown(kind: &str, got: &str, context: &str, expected: &[&str]) -> String {
    let mut message = format!(
        "unknown {kind} \"{got}\"{context} (expected one of: {})",
        expected.join(", ")
    );
    if let Some(close) = suggestion(got, expected) {
        message.push_str(&format!("; did you mean \"{close}\"?"));
    }
    message
}

/// The candidate closest to `got` (case-insensitive edit distance), if close enough to be a
/// likely typo: at most a third of the candidate's length.
fn suggestion<'a>(got: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let got = got.to_lowercase();
    let got_len = got.chars().count();
    candidates
        .iter()
        // The distance is at least the difference in length: skip candidates that cannot
        // pass the filter below (cheap, so a 1 MiB key costs nothing).
        .filter(|candidate| {
            let len = candidate.chars().count();
            got_len.abs_diff(len) * 3 <= len.max(3)
        })
        .map(|candidate| (edit_distance(&got, &candidate.to_lowercase()), *candidate))
        .filter(|(distance, candidate)| distance * 3 <= candidate.chars().count().max(3))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Edit distance in characters where insertions, deletions, substitutions and swaps of
/// adjacent characters (`gaol` → `goal`) each cost 1 (optimal string alignment).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests;
