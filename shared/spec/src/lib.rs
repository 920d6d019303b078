//! What a sweep file means: YAML text → validated [`SweepSpec`], or every problem found
//! as a [`SpecError`] with `file:line:column`; the parameter space a sweep defines; and
//! the built-in trainer's config.
//!
//! Modules and how data flows through them:
//!
//! - [`yaml`] builds a spanned tree (positions, duplicate keys, scalar types), then the
//!   `Checker` (`check`) walks it against the sweep schema, collecting all errors instead of
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

mod check;
pub use check::{parse_sweep, parse_train_file, TRAIN_COMMAND};
// The checker's helpers, for the modules that check a part of the file.
use check::*;

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
    /// The earlier sweep whose completed trials seed `method: bayes`'s model, from
    /// `warm_start:`. Invariant: set only for `method: bayes` with a `metric:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_start: Option<WarmStart>,
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
    /// Paths in each run's directory uploaded to the artifact store when its command
    /// ends, from `artifacts:`: relative, `/`-separated, without `.` or `..`; a trailing
    /// `/` marks a directory (each file in it is uploaded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<String>,
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
    /// Gaussian-process Bayesian optimisation learning from finished runs, `max_runs` of
    /// them; validated like `bayes`, except that no parameter may have a `when:`
    /// condition (the GP models spaces whose parameters are always present).
    Gp,
}

impl Method {
    pub const ALL: [Method; 4] = [Method::Grid, Method::Random, Method::Bayes, Method::Gp];
    /// The names the sweep file accepts, in the order of [`Method::ALL`].
    pub const NAMES: [&'static str; Method::ALL.len()] = {
        let mut names = [""; Method::ALL.len()];
        let mut i = 0;
        while i < names.len() {
            names[i] = Method::ALL[i].as_str();
            i += 1;
        }
        names
    };

    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Grid => "grid",
            Method::Random => "random",
            Method::Bayes => "bayes",
            Method::Gp => "gp",
        }
    }

    /// Whether the method's proposals depend on the results so far (`bayes`, `gp`): its
    /// trials are created one at a time as slots free up, never queued ahead.
    pub const fn learns(self) -> bool {
        matches!(self, Method::Bayes | Method::Gp)
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

/// `warm_start: {sweep: ID}`: start `method: bayes` from the results of an earlier sweep.
/// Its completed trials join the model (not the new sweep's run count): parameters of the
/// same name and a compatible type are used, a trial with a value outside the new bounds
/// or choices is dropped, and a parameter it lacks is inactive in it. The coordinator
/// refuses the sweep at submit unless the earlier one exists with the same objective
/// (metric name, goal and summary).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmStart {
    /// The earlier sweep's ID.
    pub sweep: String,
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

/// Characters allowed in parameter names (and thus in `{{placeholders}}`).
pub fn is_parameter_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')
}

#[cfg(test)]
mod tests;
