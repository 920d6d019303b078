//! A sweep's parameter space: which parameters trial `index` of a grid or random sweep
//! gets, and how they reach the run (argv substitution and `LADDER_PARAMS` JSON).
//!
//! Grid and random search are pure functions of `(spec, index)` ([`trial`]), so the
//! coordinator never materialises the trial list: it can create trial `n` lazily, after a
//! restart, or out of order, and always get the same parameters. `method: bayes`, which
//! learns from finished runs, is `ladder_search::propose`, built on these.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{is_parameter_name_char, Method, ParamSpec, ParamValue, Parameter, SweepSpec};

/// The parameters of one trial, by name.
pub type Params = BTreeMap<String, ParamValue>;

/// The crate's error type: problems turning a trial into a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    #[error("unclosed placeholder in {element:?}: \"{{{{\" without a matching \"}}}}\"")]
    UnclosedPlaceholder { element: String },
    #[error("invalid placeholder \"{{{{{inner}}}}}\" in {element:?}: expected {{{{name}}}} with a parameter name (letters, digits, _ . - /)")]
    InvalidPlaceholder { element: String, inner: String },
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
    for piece in scan_braces(element) {
        match piece {
            Brace::Text(text) => segments.push(Segment::Literal(text)),
            Brace::Unclosed => {
                return Err(SearchError::UnclosedPlaceholder {
                    element: element.to_string(),
                })
            }
            Brace::Inner(inner) => {
                let name = inner.trim();
                if name.is_empty() || !name.chars().all(is_parameter_name_char) {
                    return Err(SearchError::InvalidPlaceholder {
                        element: element.to_string(),
                        inner: inner.to_string(),
                    });
                }
                segments.push(Segment::Placeholder(name));
            }
        }
    }
    Ok(segments)
}

/// A piece of text as [`scan_braces`] cuts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Brace<'a> {
    /// Text outside `{{ }}` (never empty).
    Text(&'a str),
    /// What is between a `{{` and the next `}}`, untrimmed and unchecked.
    Inner(&'a str),
    /// A `{{` with no `}}` after it (the last piece).
    Unclosed,
}

/// The one scanner of `{{ }}` pairs, for commands and `train:` blocks alike: text and
/// the raw insides of each pair, in order; a lone `}}` is text.
pub fn scan_braces(text: &str) -> Vec<Brace<'_>> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            pieces.push(Brace::Text(&rest[..open]));
        }
        let after_open = &rest[open + 2..];
        let Some(close) = after_open.find("}}") else {
            pieces.push(Brace::Unclosed);
            return pieces;
        };
        pieces.push(Brace::Inner(&after_open[..close]));
        rest = &after_open[close + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Brace::Text(rest));
    }
    pieces
}

/// Placeholders filled in by the agent when it launches a run, not by the coordinator:
/// - `{{ladder.code_dir}}`: the agent's code directory (`--code-dir`, by default the
///   directory the agent was started in), where the sweep's scripts live;
/// - `{{ladder.run_dir}}`: the run's own working directory on the agent;
/// - `{{ladder.run_id}}`: the run's id;
/// - `{{ladder.exe}}`: the agent's own `ladder` executable (runs of the built-in trainer).
pub const AGENT_PLACEHOLDERS: &[&str] = &[
    "ladder.code_dir",
    "ladder.run_dir",
    "ladder.run_id",
    "ladder.exe",
];

/// Substitutes `{{name}}` in each argv element with the parameter's [`Display`] form.
/// [`AGENT_PLACEHOLDERS`] are left as they are, for the agent.
///
/// Each element stays exactly one argument whatever the value contains (no shell is ever
/// involved). A name absent from `params` renders as the empty string: validation
/// guarantees that every placeholder names a parameter, so an absent one is a conditional
/// parameter whose condition does not hold in this trial (the element stays, possibly
/// empty, so argv positions do not shift).
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
                        if let Some(value) = params.get(name) {
                            rendered.push_str(&value.to_string());
                        }
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
        let value = value.to_json();
        let parts: Vec<&str> = name.split('.').collect();
        if nests(&root, &parts) {
            insert_nested(&mut root, &parts, value);
        } else {
            root.insert(name.clone(), value);
        }
    }
    serde_json::Value::Object(root)
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

/// Grid axes longer than this are rejected by validation for `q_uniform` and
/// `q_log_uniform` (an `int_uniform` axis is only bounded by `i64`).
pub const MAX_Q_GRID_POINTS: u128 = 10_000_000;

/// Grids whose conditions refer to parameters with more value combinations than this are
/// rejected by validation: decoding a trial walks those combinations (see [`trial`]).
pub const MAX_CONDITION_BRANCHES: u128 = 100_000;

/// The multiples of `q` in `[min, max]`, as the range `k_low..=k_high` of `k` in `k * q`;
/// `None` when no multiple lies in the range (validation rejects such parameters) or the
/// inputs are not finite with `q > 0`.
///
/// A relative tolerance of `1e-12` absorbs decimal rounding (`0.3 / 0.1` is
/// `2.9999999999999996`), so bounds written as multiples of `q` are themselves included.
pub fn q_multiples(min: f64, max: f64, q: f64) -> Option<(f64, f64)> {
    if !(min.is_finite() && max.is_finite() && q.is_finite() && q > 0.0) {
        return None;
    }
    let (low, high) = (min / q, max / q);
    let k_low = (low - low.abs().max(1.0) * 1e-12).ceil();
    let k_high = (high + high.abs().max(1.0) * 1e-12).floor();
    (k_low.is_finite() && k_high.is_finite() && k_low <= k_high).then_some((k_low, k_high))
}

/// `k * q` as a parameter value: an `Int` when `integer` (all of min, max and q were
/// integers in the YAML, so the product is exact), else a float rounded to 15 significant
/// digits (so `3 * 0.1` is `0.3`, not `0.30000000000000004`) and clamped into `[min, max]`.
fn q_point(k: f64, q: f64, min: f64, max: f64, integer: bool) -> ParamValue {
    let value = k * q;
    if integer {
        // `as` saturates; validation keeps integer bounds within ±2^53, where this is exact.
        return ParamValue::Int(value as i64);
    }
    ParamValue::Float(tidy(value).clamp(min, max))
}

/// `round(x / q) * q`, unbounded (q_normal, q_log_normal), Int when `integer`.
pub fn q_round(x: f64, q: f64, integer: bool) -> ParamValue {
    let value = (x / q).round() * q;
    if integer {
        ParamValue::Int(value as i64)
    } else {
        ParamValue::Float(finite(tidy(value)))
    }
}

/// Rounds to 15 significant digits, hiding the binary representation error of products
/// like `3 * 0.1`; the result is within `1e-14` (relative) of the input.
fn tidy(value: f64) -> f64 {
    if value == 0.0 || !value.is_finite() {
        return value;
    }
    format!("{value:.14e}").parse().unwrap_or(value)
}

/// Keeps a sampled float finite (`ParamValue::Float` is finite by contract).
fn finite(value: f64) -> f64 {
    if value.is_nan() {
        0.0
    } else {
        value.clamp(f64::MIN, f64::MAX)
    }
}

/// Number of points of one parameter on a grid axis, `None` for parameters a grid cannot
/// use (continuous or unbounded ones, which validation rejects for grid sweeps):
/// `value` 1, `values` their count (probabilities are ignored by grids), `int_uniform`
/// `max - min + 1`, `q_uniform`/`q_log_uniform` the number of multiples of `q` in
/// `[min, max]`.
pub fn grid_axis_len(spec: &ParamSpec) -> Option<u128> {
    match spec {
        ParamSpec::Value(_) => Some(1),
        ParamSpec::Values { values, .. } => Some(values.len() as u128),
        ParamSpec::IntUniform { min, max } => {
            Some((i128::from(*max) - i128::from(*min) + 1).max(0) as u128)
        }
        ParamSpec::QUniform { min, max, q, .. } | ParamSpec::QLogUniform { min, max, q, .. } => {
            // Saturates (`as`) for absurd ranges; validation caps it at MAX_Q_GRID_POINTS.
            Some(q_multiples(*min, *max, *q).map_or(0, |(low, high)| (high - low + 1.0) as u128))
        }
        ParamSpec::Uniform { .. }
        | ParamSpec::LogUniform { .. }
        | ParamSpec::Normal { .. }
        | ParamSpec::LogNormal { .. }
        | ParamSpec::QNormal { .. }
        | ParamSpec::QLogNormal { .. } => None,
    }
}

/// Point number `digit` (`< grid_axis_len`) of a parameter's grid axis, in increasing
/// order for ranges and list order for `values`. Out-of-range digits and non-grid
/// parameters give the first point (or `min`), never a panic.
pub fn grid_axis_point(spec: &ParamSpec, digit: u128) -> ParamValue {
    match spec {
        ParamSpec::Value(value) => value.clone(),
        ParamSpec::Values { values, .. } => usize::try_from(digit)
            .ok()
            .and_then(|digit| values.get(digit))
            .or(values.first())
            .cloned()
            .unwrap_or(ParamValue::Int(0)),
        ParamSpec::IntUniform { min, max } => {
            let point = i128::from(*min) + i128::try_from(digit).unwrap_or(i128::MAX);
            ParamValue::Int(point.clamp(i128::from(*min), i128::from(*max)) as i64)
        }
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
        } => match q_multiples(*min, *max, *q) {
            Some((low, high)) => q_point((low + digit as f64).min(high), *q, *min, *max, *integer),
            None => ParamValue::Float(*min),
        },
        ParamSpec::Uniform { min, .. } | ParamSpec::LogUniform { min, .. } => {
            ParamValue::Float(*min)
        }
        ParamSpec::Normal { mu, .. } | ParamSpec::LogNormal { mu, .. } => ParamValue::Float(*mu),
        ParamSpec::QNormal { mu, q, integer, .. }
        | ParamSpec::QLogNormal { mu, q, integer, .. } => q_round(*mu, *q, *integer),
    }
}

/// Whether `parameter`'s conditions all hold for the values chosen so far (`params` holds
/// only active parameters, so a condition on an absent parameter fails).
pub fn condition_holds(parameter: &Parameter, params: &Params) -> bool {
    parameter.when.iter().all(|condition| {
        params
            .get(&condition.parameter)
            .is_some_and(|value| condition.any_of.contains(value))
    })
}

/// Indices of `parameters` ordered so that every parameter comes after those its
/// conditions refer to, otherwise in file order (stable Kahn). Parameters caught in a
/// cycle (validation rejects cycles) or referring to unknown names come last, in file
/// order; their conditions then see the referenced parameters absent and fail.
pub fn topological_order(parameters: &[Parameter]) -> Vec<usize> {
    let index_of: BTreeMap<&str, usize> = parameters
        .iter()
        .enumerate()
        .map(|(index, parameter)| (parameter.name.as_str(), index))
        .collect();
    let mut placed = vec![false; parameters.len()];
    let mut order = Vec::with_capacity(parameters.len());
    loop {
        let next = (0..parameters.len()).find(|&index| {
            !placed[index]
                && parameters[index].when.iter().all(|condition| {
                    index_of
                        .get(condition.parameter.as_str())
                        .is_some_and(|&parent| placed[parent])
                })
        });
        let Some(next) = next else { break };
        placed[next] = true;
        order.push(next);
    }
    order.extend((0..parameters.len()).filter(|&index| !placed[index]));
    order
}

/// Whether any parameter of the sweep is conditional.
fn has_conditions(spec: &SweepSpec) -> bool {
    spec.parameters
        .iter()
        .any(|parameter| !parameter.when.is_empty())
}

/// The grid's structure when conditions are present: the *controllers* (parameters some
/// condition refers to), in topological order, vary slowest; the other parameters follow
/// in file order, the last varying fastest, but only those whose conditions hold in the
/// current controller branch take part. Each assignment of the controllers (an inactive
/// controller contributes the single branch "absent") is a branch whose size is the
/// product of its active non-controller axes, so no two indices decode to the same point.
struct ConditionalGrid<'s> {
    parameters: &'s [Parameter],
    controllers: Vec<usize>,
    others: Vec<usize>,
}

impl<'s> ConditionalGrid<'s> {
    fn new(spec: &'s SweepSpec) -> ConditionalGrid<'s> {
        let referenced: Vec<&str> = spec
            .parameters
            .iter()
            .flat_map(|parameter| &parameter.when)
            .map(|condition| condition.parameter.as_str())
            .collect();
        let is_controller =
            |index: usize| referenced.contains(&spec.parameters[index].name.as_str());
        let controllers = topological_order(&spec.parameters)
            .into_iter()
            .filter(|&index| is_controller(index))
            .collect();
        let others = (0..spec.parameters.len())
            .filter(|&index| !is_controller(index))
            .collect();
        ConditionalGrid {
            parameters: &spec.parameters,
            controllers,
            others,
        }
    }

    /// The non-controller parameters active under a controller assignment, file order.
    fn active_others(&self, branch: &Params) -> Vec<&'s Parameter> {
        self.others
            .iter()
            .map(|&index| &self.parameters[index])
            .filter(|parameter| condition_holds(parameter, branch))
            .collect()
    }

    fn branch_size(&self, branch: &Params) -> u128 {
        self.active_others(branch)
            .iter()
            .fold(1u128, |size, parameter| {
                size.saturating_mul(grid_axis_len(&parameter.spec).unwrap_or(1))
            })
    }

    /// Calls `visit` with every controller assignment in enumeration order until it
    /// returns `false`. Returns whether the walk ran to the end.
    fn walk(
        &self,
        depth: usize,
        branch: &mut Params,
        visit: &mut dyn FnMut(&Params) -> bool,
    ) -> bool {
        let Some(&index) = self.controllers.get(depth) else {
            return visit(branch);
        };
        let parameter = &self.parameters[index];
        if !condition_holds(parameter, branch) {
            return self.walk(depth + 1, branch, visit);
        }
        let len = grid_axis_len(&parameter.spec).unwrap_or(1);
        for digit in 0..len {
            branch.insert(
                parameter.name.clone(),
                grid_axis_point(&parameter.spec, digit),
            );
            let go_on = self.walk(depth + 1, branch, visit);
            branch.remove(&parameter.name);
            if !go_on {
                return false;
            }
        }
        true
    }

    fn size(&self) -> u128 {
        let mut total = 0u128;
        self.walk(0, &mut Params::new(), &mut |branch| {
            total = total.saturating_add(self.branch_size(branch));
            true
        });
        total
    }

    fn point(&self, index: u128) -> Option<Params> {
        let mut rest = index;
        let mut found = None;
        self.walk(0, &mut Params::new(), &mut |branch| {
            let size = self.branch_size(branch);
            if rest >= size {
                rest -= size;
                return true;
            }
            let mut params = branch.clone();
            decode_mixed_radix(self.active_others(branch).into_iter(), rest, &mut params);
            found = Some(params);
            false
        });
        found
    }
}

/// Decodes `index` in mixed radix over `parameters` (the last varying fastest).
fn decode_mixed_radix<'p>(
    parameters: impl DoubleEndedIterator<Item = &'p Parameter>,
    index: u128,
    params: &mut Params,
) {
    let mut rest = index;
    for parameter in parameters.rev() {
        let radix = grid_axis_len(&parameter.spec).unwrap_or(1).max(1);
        let digit = rest % radix;
        rest /= radix;
        params.insert(
            parameter.name.clone(),
            grid_axis_point(&parameter.spec, digit),
        );
    }
}

/// The number of points of the full grid (saturating at `u128::MAX`; never materialised).
/// Without conditions it is the product of the axes; with conditions, the sum over the
/// controller branches (see [`trial`]).
pub fn grid_size(spec: &SweepSpec) -> u128 {
    if has_conditions(spec) {
        return ConditionalGrid::new(spec).size();
    }
    spec.parameters.iter().fold(1u128, |size, parameter| {
        size.saturating_mul(grid_axis_len(&parameter.spec).unwrap_or(1))
    })
}

/// Total trials the sweep will create: grid → `min(grid size, max_runs)`, random and
/// bayes → `max_runs` (0 when unset, which validation forbids).
pub fn trial_count(spec: &SweepSpec) -> u64 {
    match spec.method {
        Method::Grid => {
            let limit = spec.max_runs.unwrap_or(u64::MAX);
            u64::try_from(grid_size(spec)).map_or(limit, |size| size.min(limit))
        }
        Method::Random | Method::Bayes | Method::Gp => spec.max_runs.unwrap_or(0),
    }
}

/// The parameters of trial `index` (0-based), a pure function of `(spec, index)`; `None`
/// when `index >= trial_count(spec)`. A parameter whose condition does not hold is absent.
///
/// **Grid** without conditions decodes `index` in mixed radix over the parameters in file
/// order, the last one varying fastest. With conditions, the parameters that conditions
/// refer to (controllers, in dependency order) vary slowest: the grid is the
/// concatenation, over every assignment of the controllers, of the mixed-radix product of
/// the other parameters active in that assignment, so every index gives a distinct point
/// and points differing only in an inactive parameter are never produced. Decoding walks
/// the controller assignments (at most [`MAX_CONDITION_BRANCHES`]), never the points.
///
/// **Random** (and **bayes**, whose learning proposals live elsewhere; this is its
/// fallback) samples each parameter with a ChaCha8 generator seeded from
/// `(spec.seed, index, parameter name)`, so samples are reproducible, independent of the
/// order trials are created in, and a parameter's samples do not change when other
/// parameters are added or removed. Conditions are then applied in dependency order: a
/// parameter is kept when the parameters it refers to are present with an allowed value.
pub fn trial(spec: &SweepSpec, index: u64) -> Option<Params> {
    if index >= trial_count(spec) {
        return None;
    }
    match spec.method {
        Method::Grid => grid_trial(spec, index),
        Method::Random | Method::Bayes | Method::Gp => Some(random_trial(spec, index)),
    }
}

fn grid_trial(spec: &SweepSpec, index: u64) -> Option<Params> {
    if has_conditions(spec) {
        return ConditionalGrid::new(spec).point(u128::from(index));
    }
    let mut params = Params::new();
    decode_mixed_radix(spec.parameters.iter(), u128::from(index), &mut params);
    Some(params)
}

fn random_trial(spec: &SweepSpec, index: u64) -> Params {
    let mut params = Params::new();
    for position in topological_order(&spec.parameters) {
        let parameter = &spec.parameters[position];
        if condition_holds(parameter, &params) {
            let mut rng = parameter_rng(spec.seed, index, &parameter.name);
            params.insert(parameter.name.clone(), sample(&parameter.spec, &mut rng));
        }
    }
    params
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

/// A standard normal draw (Box–Muller). `1 - u` lies in `(0, 1]`, so the logarithm is
/// finite and so is the result (|z| < 8.6).
pub fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let radius = (-2.0 * (1.0 - rng.random::<f64>()).ln()).sqrt();
    let angle = std::f64::consts::TAU * rng.random::<f64>();
    radius * angle.cos()
}

/// A draw from `[min, max]` on a log scale (`0 < min < max`).
fn log_uniform(min: f64, max: f64, rng: &mut ChaCha8Rng) -> f64 {
    rng.random_range(min.ln()..max.ln()).exp().clamp(min, max)
}

/// The multiple of `q` nearest to `x`, stepped inward by `q` while outside `[min, max]`
/// (which amounts to clamping `k` into the range of [`q_multiples`]).
fn q_clipped(x: f64, min: f64, max: f64, q: f64, integer: bool) -> ParamValue {
    match q_multiples(min, max, q) {
        Some((low, high)) => q_point((x / q).round().clamp(low, high), q, min, max, integer),
        None => ParamValue::Float(min),
    }
}

/// Index drawn with the given weights; zero-weight entries are never drawn. Without
/// positive weights (validation prevents it), index 0.
fn weighted_index(weights: &[f64], rng: &mut ChaCha8Rng) -> usize {
    let total: f64 = weights.iter().filter(|weight| **weight > 0.0).sum();
    let target = rng.random::<f64>() * total;
    let mut cumulative = 0.0;
    let mut last_positive = 0;
    for (index, weight) in weights.iter().enumerate() {
        if *weight > 0.0 {
            cumulative += weight;
            last_positive = index;
            if target < cumulative {
                return index;
            }
        }
    }
    last_positive
}

/// One random draw from a parameter's support; degenerate (invalid) ranges yield `min`.
///
/// - `values` uniformly, or with `probabilities` as weights;
/// - `uniform` in `[min, max)`; `log_uniform` in `[min, max]`, uniform in `ln`;
/// - `int_uniform` in `min..=max`;
/// - `q_uniform` / `q_log_uniform`: a uniform / log-uniform `x` in `[min, max]`, then
///   `round(x / q) * q`, stepped inward by `q` when rounding leaves `[min, max]`;
/// - `normal` `mu + sigma * z` (unbounded, no clipping); `log_normal` `exp` of that (> 0);
///   `q_normal` / `q_log_normal` those rounded to a multiple of `q` (unbounded; the
///   latter is `>= 0` and may be 0).
pub fn sample(param: &ParamSpec, rng: &mut ChaCha8Rng) -> ParamValue {
    match param {
        ParamSpec::Value(value) => value.clone(),
        ParamSpec::Values { values, .. } if values.is_empty() => ParamValue::Int(0),
        ParamSpec::Values {
            values,
            probabilities: Some(weights),
        } if weights.len() == values.len() => values[weighted_index(weights, rng)].clone(),
        ParamSpec::Values { values, .. } => values[rng.random_range(0..values.len())].clone(),
        ParamSpec::Uniform { min, max } if min < max => {
            ParamValue::Float(rng.random_range(*min..*max))
        }
        ParamSpec::LogUniform { min, max } if 0.0 < *min && min < max => {
            ParamValue::Float(log_uniform(*min, *max, rng))
        }
        ParamSpec::IntUniform { min, max } if min <= max => {
            ParamValue::Int(rng.random_range(*min..=*max))
        }
        ParamSpec::QUniform {
            min,
            max,
            q,
            integer,
        } if min < max => q_clipped(rng.random_range(*min..=*max), *min, *max, *q, *integer),
        ParamSpec::QLogUniform {
            min,
            max,
            q,
            integer,
        } if 0.0 < *min && min < max => {
            q_clipped(log_uniform(*min, *max, rng), *min, *max, *q, *integer)
        }
        ParamSpec::Normal { mu, sigma } => {
            ParamValue::Float(finite(mu + sigma * standard_normal(rng)))
        }
        ParamSpec::LogNormal { mu, sigma } => ParamValue::Float(
            (mu + sigma * standard_normal(rng))
                .exp()
                .clamp(f64::MIN_POSITIVE, f64::MAX),
        ),
        ParamSpec::QNormal {
            mu,
            sigma,
            q,
            integer,
        } => q_round(finite(mu + sigma * standard_normal(rng)), *q, *integer),
        ParamSpec::QLogNormal {
            mu,
            sigma,
            q,
            integer,
        } => q_round(
            (mu + sigma * standard_normal(rng)).exp().min(f64::MAX),
            *q,
            *integer,
        ),
        ParamSpec::Uniform { min, .. }
        | ParamSpec::LogUniform { min, .. }
        | ParamSpec::QUniform { min, .. }
        | ParamSpec::QLogUniform { min, .. } => ParamValue::Float(*min),
        ParamSpec::IntUniform { min, .. } => ParamValue::Int(*min),
    }
}

#[cfg(test)]
mod tests;
