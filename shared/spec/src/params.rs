//! The `parameters:` section: leaves, nested groups and `when:` conditions.
//!
//! Checking happens in three passes so that every problem is reported once and errors do
//! not cascade:
//!
//! 1. [`Checker::collect`] walks the (possibly nested) mappings, checks each key, parses
//!    each leaf's form into a [`ParamSpec`] and its `when:` (plus those inherited from
//!    enclosing groups) into [`RawCondition`]s, keeping positions;
//! 2. the full dotted names are checked across the whole tree (reserved, duplicate,
//!    nesting under a leaf);
//! 3. conditions are resolved against the leaves (existence, discreteness, possible
//!    values, cycles) and, for grids, the number of controller branches is bounded.
//!
//! A leaf whose own spec is invalid is still known by name, so placeholders and conditions
//! naming it do not produce follow-up errors.

use std::collections::HashMap;

use super::yaml::{Entry, Node, NodeKind, Pos, Scalar};
use super::{
    entry_of, field, is_parameter_name_char, suggestion, unknown, Checker, Condition, Method,
    ParamSpec, ParamValue, Parameter,
};
use crate::space::{
    grid_axis_len, grid_axis_point, q_multiples, MAX_CONDITION_BRANCHES, MAX_Q_GRID_POINTS,
};

/// Keys of a leaf parameter mapping.
const PARAMETER_KEYS: &[&str] = &[
    "value",
    "values",
    "probabilities",
    "distribution",
    "min",
    "max",
    "q",
    "mu",
    "sigma",
    "when",
    "parameters",
];
/// Keys of a group mapping (one with `parameters:`).
const GROUP_KEYS: &[&str] = &["parameters", "when"];
/// Keys that configure a distribution; each form takes a subset (see [`Distribution::keys`]).
const SHAPE_KEYS: &[&str] = &["probabilities", "min", "max", "q", "mu", "sigma"];
/// Distribution names accepted in `distribution:`.
const DISTRIBUTIONS: &[&str] = &[
    "constant",
    "categorical",
    "uniform",
    "log_uniform",
    "log_uniform_values",
    "int_uniform",
    "q_uniform",
    "q_log_uniform",
    "q_log_uniform_values",
    "normal",
    "log_normal",
    "q_normal",
    "q_log_normal",
];
/// Integers written for `q_` bounds must be exactly representable as `f64`.
const MAX_EXACT_INTEGER: i128 = 1 << 53;
/// How far probabilities may sum from 1.
const PROBABILITY_TOLERANCE: f64 = 1e-6;

/// The sampling rules a `distribution:` name (or the `value`/`values` shorthand) selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Distribution {
    Constant,
    Categorical,
    Uniform,
    LogUniform,
    IntUniform,
    QUniform,
    QLogUniform,
    Normal,
    LogNormal,
    QNormal,
    QLogNormal,
}

impl Distribution {
    fn from_name(name: &str) -> Option<Distribution> {
        Some(match name {
            "constant" => Distribution::Constant,
            "categorical" => Distribution::Categorical,
            "uniform" => Distribution::Uniform,
            // ladder's log_uniform takes the values themselves, like W&B's
            // `log_uniform_values` (W&B's own `log_uniform` takes exponents).
            "log_uniform" | "log_uniform_values" => Distribution::LogUniform,
            "int_uniform" => Distribution::IntUniform,
            "q_uniform" => Distribution::QUniform,
            "q_log_uniform" | "q_log_uniform_values" => Distribution::QLogUniform,
            "normal" => Distribution::Normal,
            "log_normal" => Distribution::LogNormal,
            "q_normal" => Distribution::QNormal,
            "q_log_normal" => Distribution::QLogNormal,
            _ => return None,
        })
    }

    /// The [`SHAPE_KEYS`] this form takes.
    fn keys(self) -> &'static [&'static str] {
        match self {
            Distribution::Constant => &[],
            Distribution::Categorical => &["probabilities"],
            Distribution::Uniform | Distribution::LogUniform | Distribution::IntUniform => {
                &["min", "max"]
            }
            Distribution::QUniform | Distribution::QLogUniform => &["min", "max", "q"],
            Distribution::Normal | Distribution::LogNormal => &["mu", "sigma"],
            Distribution::QNormal | Distribution::QLogNormal => &["mu", "sigma", "q"],
        }
    }

    /// Why a grid cannot use this form, if it cannot.
    fn grid_problem(self) -> Option<&'static str> {
        match self {
            Distribution::Uniform | Distribution::LogUniform => Some("continuous"),
            Distribution::Normal
            | Distribution::LogNormal
            | Distribution::QNormal
            | Distribution::QLogNormal => Some("unbounded"),
            _ => None,
        }
    }
}

/// A finite numeric bound as written.
#[derive(Debug, Clone, Copy)]
enum Bound {
    Int(i128),
    Float(f64),
}

impl Bound {
    fn as_f64(self) -> f64 {
        match self {
            Bound::Int(value) => value as f64,
            Bound::Float(value) => value,
        }
    }

    fn is_int(self) -> bool {
        matches!(self, Bound::Int(_))
    }
}

/// A `when:` entry as written, before the parameter it names is looked up.
#[derive(Debug, Clone)]
pub(super) struct RawCondition {
    /// Whose `when:` it is, for messages (`parameter "m"`, `parameter group "g"`): a
    /// group's condition is checked for each of its leaves but reads (and is reported,
    /// deduplicated) as the group's.
    owner: String,
    parameter: String,
    /// The key naming the parameter.
    pos: Pos,
    values: Vec<(ParamValue, Pos)>,
}

/// A leaf as collected in pass 1.
#[derive(Debug)]
struct Leaf {
    name: String,
    /// The leaf's key (for a dotted top-level name, the whole key).
    pos: Pos,
    /// `None` when the leaf's own form or conditions were invalid (already reported).
    spec: Option<ParamSpec>,
    when: Vec<RawCondition>,
    when_ok: bool,
}

/// The parameters of a sweep and the full names written (also those of invalid leaves),
/// so that placeholders can be checked without cascading errors.
pub(super) struct ParsedParameters {
    pub parameters: Option<Vec<Parameter>>,
    pub names: Vec<String>,
}

impl Checker<'_> {
    /// The `parameters:` section: every leaf in file order, groups flattened.
    pub(super) fn parameters(&mut self, node: &Node, method: Option<Method>) -> ParsedParameters {
        let Some(entries) = self.mapping(
            node,
            "parameters",
            "parameter name to {values: [...]}, {value: x}, {distribution: ..., min: ..., max: ...} or {parameters: {...}}",
        ) else {
            return ParsedParameters {
                parameters: None,
                names: Vec::new(),
            };
        };
        let mut leaves = Vec::new();
        let mut ok = self.collect(entries, "", &[], method, &mut leaves);
        let names: Vec<String> = leaves.iter().map(|leaf| leaf.name.clone()).collect();
        ok &= self.check_full_names(&leaves);
        let resolved = self.resolve_conditions(&leaves);
        ok &= resolved.is_some();
        if method == Some(Method::Gp) {
            ok &= self.check_unconditional(&leaves);
        }
        if let (Some(conditions), true) = (&resolved, ok) {
            ok &= self.check_cycles(&leaves, conditions);
            if ok && method == Some(Method::Grid) {
                ok &= self.check_grid_branches(&leaves, conditions);
            }
        }
        let parameters = match (ok, resolved) {
            (true, Some(conditions)) => leaves
                .into_iter()
                .zip(conditions)
                .map(|(leaf, when)| {
                    leaf.spec.map(|spec| Parameter {
                        name: leaf.name,
                        spec,
                        when,
                    })
                })
                .collect(),
            _ => None,
        };
        ParsedParameters { parameters, names }
    }

    /// Pass 1 over one mapping level: leaves are appended to `leaves` with names
    /// `prefix + key` and conditions `inherited + own`. Returns whether all was valid.
    fn collect(
        &mut self,
        entries: &[Entry],
        prefix: &str,
        inherited: &[RawCondition],
        method: Option<Method>,
        leaves: &mut Vec<Leaf>,
    ) -> bool {
        let mut ok = true;
        for entry in entries {
            let name = format!("{prefix}{}", entry.key);
            let name_ok = self.parameter_key(entry, &name);
            let what = format!("parameter \"{name}\"");
            let inner = match &entry.value.kind {
                NodeKind::Map(inner) => Some(inner.as_slice()),
                _ => None,
            };
            let is_group = inner.is_some_and(|inner| entry_of(inner, "parameters").is_some());
            let owner = if is_group {
                format!("parameter group \"{name}\"")
            } else {
                what.clone()
            };
            let own = match inner.and_then(|inner| field(inner, "when")) {
                Some(when) => self.when(when, &owner),
                None => Some(Vec::new()),
            };
            let when_ok = own.is_some();
            let mut conditions = inherited.to_vec();
            conditions.extend(own.unwrap_or_default());
            if let (true, Some(inner)) = (is_group, inner) {
                ok &= name_ok && when_ok;
                ok &= self.group(inner, &name, &conditions, method, leaves);
                continue;
            }
            let spec = self.leaf(entry, method);
            ok &= name_ok && when_ok && spec.is_some();
            leaves.push(Leaf {
                name,
                pos: entry.key_pos,
                spec,
                when: conditions,
                when_ok,
            });
        }
        ok
    }

    /// A group (a parameter mapping with `parameters:`): only `parameters` and `when`.
    fn group(
        &mut self,
        inner: &[Entry],
        name: &str,
        conditions: &[RawCondition],
        method: Option<Method>,
        leaves: &mut Vec<Leaf>,
    ) -> bool {
        let what = format!("parameter group \"{name}\"");
        let mut ok = true;
        for extra in inner
            .iter()
            .filter(|e| !GROUP_KEYS.contains(&e.key.as_str()))
        {
            ok = false;
            let message = if PARAMETER_KEYS.contains(&extra.key.as_str()) {
                format!(
                    "{what} has parameters: and {}; a group takes only parameters and when (move {} into a parameter of the group)",
                    extra.key, extra.key
                )
            } else {
                unknown("key", &extra.key, &format!(" in {what}"), GROUP_KEYS)
            };
            self.error(extra.key_pos, message);
        }
        let Some(sub) = field(inner, "parameters") else {
            return false;
        };
        let Some(sub_entries) = self.mapping(
            sub,
            &format!("{what} parameters"),
            "e.g. parameters: {rank: {values: [8, 16]}}",
        ) else {
            return false;
        };
        if sub_entries.is_empty() {
            self.error(
                sub.pos,
                format!("{what} has no parameters; add at least one or remove the group"),
            );
            return false;
        }
        ok & self.collect(sub_entries, &format!("{name}."), conditions, method, leaves)
    }

    /// Checks one key of a parameter mapping (a name part; dots nest too). `full` is the
    /// dotted name so far; names under `ladder.` are reserved for the agent.
    fn parameter_key(&mut self, entry: &Entry, full: &str) -> bool {
        let name = &entry.key;
        if name.is_empty() {
            self.error(entry.key_pos, "parameter names must not be empty");
            return false;
        }
        if let Some(bad) = name.chars().find(|c| !is_parameter_name_char(*c)) {
            self.error(
                entry.key_pos,
                format!(
                    "parameter name \"{name}\" contains {bad:?}; use only letters, digits, \"_\", \".\", \"-\" and \"/\""
                ),
            );
            return false;
        }
        if name.split('.').any(str::is_empty) {
            self.error(
                entry.key_pos,
                format!("parameter name \"{name}\" has an empty part around a \".\" (dotted names nest, e.g. lora.rank)"),
            );
            return false;
        }
        if full.starts_with("ladder.") {
            self.error(
                entry.key_pos,
                format!(
                    "parameter name \"{full}\" is reserved: names starting with \"ladder.\" are filled in by the agent ({}); rename it",
                    crate::space::AGENT_PLACEHOLDERS.join(", ")
                ),
            );
            return false;
        }
        true
    }

    /// Pass 2: full names are unique and none nests under another leaf.
    fn check_full_names(&mut self, leaves: &[Leaf]) -> bool {
        let mut ok = true;
        // Name → index of its first leaf (maps, so that many parameters stay linear).
        let first_index = name_index(leaves);
        for (index, leaf) in leaves.iter().enumerate() {
            let first = first_index[leaf.name.as_str()];
            if let Some(first) = (first < index).then(|| &leaves[first]) {
                ok = false;
                self.error(
                    leaf.pos,
                    format!(
                        "parameter \"{}\" is defined twice (first at line {}, column {}); a group's parameters are named group.parameter",
                        leaf.name, first.pos.line, first.pos.column
                    ),
                );
                continue;
            }
            // The first leaf (in file order) whose name is a dotted prefix of this one.
            let parent = leaf
                .name
                .match_indices('.')
                .filter_map(|(dot, _)| first_index.get(&leaf.name[..dot]).copied())
                .min()
                .map(|parent| &leaves[parent]);
            if let Some(parent) = parent {
                ok = false;
                self.error(
                    leaf.pos,
                    format!(
                        "parameter \"{}\" nests under parameter \"{}\", which has a value itself (dotted names become nested objects in LADDER_PARAMS); rename one of them",
                        leaf.name, parent.name
                    ),
                );
            }
        }
        ok
    }

    /// A `when:` mapping: parameter name → a value or a non-empty list of values.
    fn when(&mut self, node: &Node, what: &str) -> Option<Vec<RawCondition>> {
        let entries = self.mapping(
            node,
            &format!("{what} when"),
            "e.g. when: {optimizer: sgd} or when: {optimizer: [sgd, rmsprop]}",
        )?;
        if entries.is_empty() {
            self.error(
                node.pos,
                format!("{what} when must not be empty (e.g. when: {{optimizer: sgd}}); remove it for an unconditional parameter"),
            );
            return None;
        }
        let mut conditions = Some(Vec::new());
        for entry in entries {
            let context = format!("{what} when.{}", entry.key);
            let items: Vec<&Node> = match &entry.value.kind {
                NodeKind::Seq(items) if items.is_empty() => {
                    self.error(
                        entry.value.pos,
                        format!("{context} must list at least one value"),
                    );
                    conditions = None;
                    continue;
                }
                NodeKind::Seq(items) => items.iter().collect(),
                _ => vec![&entry.value],
            };
            let mut values = Some(Vec::new());
            for item in items {
                match (self.param_value(item, &context), values.as_mut()) {
                    (Some(value), Some(list)) => list.push((value, item.pos)),
                    _ => values = None,
                }
            }
            match (values, conditions.as_mut()) {
                (Some(values), Some(list)) => list.push(RawCondition {
                    owner: what.to_string(),
                    parameter: entry.key.clone(),
                    pos: entry.key_pos,
                    values,
                }),
                _ => conditions = None,
            }
        }
        conditions
    }

    /// Pass 3a: each leaf's conditions, resolved against the other leaves. `None` when
    /// any condition is invalid (reported) or names a leaf whose spec is invalid.
    fn resolve_conditions(&mut self, leaves: &[Leaf]) -> Option<Vec<Vec<Condition>>> {
        let names: Vec<&str> = leaves.iter().map(|leaf| leaf.name.as_str()).collect();
        let index = name_index(leaves);
        let mut all = Some(Vec::with_capacity(leaves.len()));
        for leaf in leaves {
            let mut conditions = Some(Vec::new());
            if !leaf.when_ok {
                conditions = None;
            }
            for raw in &leaf.when {
                match (
                    self.condition(leaf, raw, leaves, &names, &index),
                    conditions.as_mut(),
                ) {
                    (Some(condition), Some(list)) => list.push(condition),
                    _ => conditions = None,
                }
            }
            match (conditions, all.as_mut()) {
                (Some(conditions), Some(list)) => list.push(conditions),
                _ => all = None,
            }
        }
        all
    }

    fn condition(
        &mut self,
        leaf: &Leaf,
        raw: &RawCondition,
        leaves: &[Leaf],
        names: &[&str],
        index: &HashMap<&str, usize>,
    ) -> Option<Condition> {
        let what = &raw.owner;
        let Some(target) = index.get(raw.parameter.as_str()).map(|&at| &leaves[at]) else {
            let group_prefix = format!("{}.", raw.parameter);
            let message = if let Some(member) = names.iter().find(|n| n.starts_with(&group_prefix))
            {
                format!(
                    "{what}: when refers to \"{}\", a parameter group; conditions compare a single parameter such as \"{member}\"",
                    raw.parameter
                )
            } else {
                let help = match suggestion(&raw.parameter, names) {
                    Some(close) => format!("; did you mean \"{close}\"?"),
                    None => format!(" (parameters: {}; use full dotted names)", names.join(", ")),
                };
                format!(
                    "{what}: when refers to \"{}\", but no parameter has that name{help}",
                    raw.parameter
                )
            };
            self.error(raw.pos, message);
            return None;
        };
        if target.name == leaf.name {
            self.error(
                raw.pos,
                format!("{what}: when refers to the parameter itself; a condition must name another parameter"),
            );
            return None;
        }
        // The target's own problems were reported where they are.
        let spec = target.spec.as_ref()?;
        if !spec.is_discrete() {
            self.error(
                raw.pos,
                format!(
                    "{what}: when refers to \"{}\", a {} parameter, which never repeats a value; conditions need a parameter with value, values, int_uniform, q_uniform or q_log_uniform",
                    target.name,
                    spec.distribution_name()
                ),
            );
            return None;
        }
        let mut any_of: Vec<ParamValue> = Vec::new();
        let mut ok = true;
        for (value, pos) in &raw.values {
            match possible_value(spec, value) {
                Some(canonical) if !any_of.contains(&canonical) => any_of.push(canonical),
                Some(_) => {}
                None => {
                    ok = false;
                    let mut message = format!(
                        "{what}: when compares \"{}\" with {}, but {} never takes that value ({})",
                        target.name,
                        quoted(value),
                        target.name,
                        domain(spec)
                    );
                    if let (ParamValue::Str(got), ParamSpec::Values { values, .. }) = (value, spec)
                    {
                        let texts: Vec<String> = values.iter().map(ToString::to_string).collect();
                        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
                        if let Some(close) = suggestion(got, &texts) {
                            message.push_str(&format!("; did you mean \"{close}\"?"));
                        }
                    }
                    self.error(*pos, message);
                }
            }
        }
        ok.then(|| Condition {
            parameter: target.name.clone(),
            any_of,
        })
    }

    /// Pass 3b: conditions form no cycle. Reported at the condition closing the cycle.
    fn check_cycles(&mut self, leaves: &[Leaf], conditions: &[Vec<Condition>]) -> bool {
        let index = name_index(leaves);
        let index_of = |name: &str| index.get(name).copied();
        // 0 unvisited, 1 on the current path, 2 done.
        let mut state = vec![0u8; leaves.len()];
        let mut ok = true;
        for start in 0..leaves.len() {
            if state[start] != 0 {
                continue;
            }
            // Iterative DFS: (node, next edge) frames; `path` mirrors the stack.
            let mut stack = vec![(start, 0usize)];
            state[start] = 1;
            while let Some(&mut (node, ref mut edge)) = stack.last_mut() {
                let Some(condition) = conditions[node].get(*edge) else {
                    state[node] = 2;
                    stack.pop();
                    continue;
                };
                *edge += 1;
                let Some(next) = index_of(&condition.parameter) else {
                    continue;
                };
                match state[next] {
                    0 => {
                        state[next] = 1;
                        stack.push((next, 0));
                    }
                    1 => {
                        ok = false;
                        let from = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                        let mut cycle: Vec<&str> = stack[from..]
                            .iter()
                            .map(|(n, _)| leaves[*n].name.as_str())
                            .collect();
                        cycle.push(&leaves[next].name);
                        let pos = leaves[node]
                            .when
                            .iter()
                            .find(|raw| raw.parameter == condition.parameter)
                            .map_or(leaves[node].pos, |raw| raw.pos);
                        self.error(
                            pos,
                            format!(
                                "conditions form a cycle: {} (each parameter is present only when the next one is); remove one of these conditions",
                                cycle.join(" → ")
                            ),
                        );
                    }
                    _ => {}
                }
            }
        }
        ok
    }

    /// Pass 3c (grid only): the parameters conditions refer to have few enough value
    /// combinations for [`crate::space::trial`] to walk them.
    fn check_grid_branches(&mut self, leaves: &[Leaf], conditions: &[Vec<Condition>]) -> bool {
        let mut controllers: Vec<&str> = Vec::new();
        for condition in conditions.iter().flatten() {
            if !controllers.contains(&condition.parameter.as_str()) {
                controllers.push(&condition.parameter);
            }
        }
        let branches = controllers.iter().fold(1u128, |product, name| {
            let len = leaves
                .iter()
                .find(|leaf| leaf.name == *name)
                .and_then(|leaf| leaf.spec.as_ref())
                .and_then(grid_axis_len)
                .unwrap_or(1);
            product.saturating_mul(len.max(1))
        });
        if branches <= MAX_CONDITION_BRANCHES {
            return true;
        }
        let pos = leaves
            .iter()
            .find_map(|leaf| leaf.when.first())
            .map_or(Pos::START, |raw| raw.pos);
        self.error(
            pos,
            format!(
                "grid search with conditions: the parameters that conditions refer to ({}) have {branches} value combinations, more than {MAX_CONDITION_BRANCHES}; condition on parameters with fewer values or use method: random",
                controllers.join(", ")
            ),
        );
        false
    }

    /// `method: gp` models only spaces whose parameters are always present: each leaf
    /// with a `when:` (its own or its group's) is reported by name.
    fn check_unconditional(&mut self, leaves: &[Leaf]) -> bool {
        let mut ok = true;
        for leaf in leaves {
            if let Some(raw) = leaf.when.first() {
                self.error(
                    raw.pos,
                    format!(
                        "parameter \"{}\" has a when: condition, but method: gp models only parameters that every trial has; remove the condition or use method: bayes",
                        leaf.name
                    ),
                );
                ok = false;
            }
        }
        ok
    }

    /// One leaf parameter's form. `when` is read by [`Checker::collect`].
    fn leaf(&mut self, entry: &Entry, method: Option<Method>) -> Option<ParamSpec> {
        let what = format!("parameter \"{}\"", entry.key);
        let node = &entry.value;
        let entries = self.mapping(
            node,
            &what,
            "like {value: 1}, {values: [1, 2]} or {distribution: uniform, min: 0, max: 1}",
        )?;
        self.check_keys(entries, &what, PARAMETER_KEYS);
        let value = entry_of(entries, "value");
        let values = entry_of(entries, "values");
        let distribution = entry_of(entries, "distribution");
        if let (Some(_), Some(second)) = (value, values) {
            self.error(
                second.key_pos,
                format!("{what} has both value and values; use exactly one of value, values, distribution"),
            );
            return None;
        }
        let (form, form_node) = match (distribution, value, values) {
            (Some(distribution), _, _) => {
                let name = self.text(&distribution.value, &format!("{what} distribution"))?;
                let Some(form) = Distribution::from_name(&name) else {
                    self.error(
                        distribution.value.pos,
                        unknown(
                            "distribution",
                            &name,
                            &format!(" for {what}"),
                            DISTRIBUTIONS,
                        ),
                    );
                    return None;
                };
                let clash = if values.is_some() && form != Distribution::Categorical {
                    Some(("values", "categorical"))
                } else if value.is_some() && form != Distribution::Constant {
                    Some(("value", "constant"))
                } else {
                    None
                };
                if let Some((key, goes_with)) = clash {
                    self.error(
                        distribution.key_pos,
                        format!(
                            "{what} has both {key} and distribution {name}; {key} goes with distribution: {goes_with} only (or leave distribution out)"
                        ),
                    );
                    return None;
                }
                (form, &distribution.value)
            }
            (None, Some(value), _) => (Distribution::Constant, &value.value),
            (None, None, Some(values)) => (Distribution::Categorical, &values.value),
            (None, None, None) => {
                self.error(
                    node.pos,
                    format!("{what} needs one of value, values or distribution (or parameters: for a group)"),
                );
                return None;
            }
        };
        let mut ok = true;
        for key in SHAPE_KEYS {
            let Some(extra) = entry_of(entries, key) else {
                continue;
            };
            if form.keys().contains(key) {
                continue;
            }
            ok = false;
            let message = match form {
                _ if *key == "probabilities" => {
                    format!("{what}: probabilities only applies with values: [...]")
                }
                Distribution::Constant | Distribution::Categorical if distribution.is_none() => {
                    format!(
                        "{what}: {key} only applies with a distribution (e.g. distribution: uniform)"
                    )
                }
                _ => {
                    let takes = form.keys();
                    let takes = if takes.is_empty() {
                        "nothing else".to_string()
                    } else {
                        takes.join(", ")
                    };
                    format!(
                        "{what}: {key} does not apply to distribution {} (it takes {takes})",
                        form_name(distribution, form)
                    )
                }
            };
            self.error(extra.key_pos, message);
        }
        let grid_conflict = method == Some(Method::Grid) && form.grid_problem().is_some();
        if let (true, Some(kind)) = (grid_conflict, form.grid_problem()) {
            self.error(
                form_node.pos,
                format!(
                    "grid search needs discrete parameters: {what} has the {kind} distribution {}; use values: [...] or method: random (q_uniform gives evenly spaced values)",
                    form_name(distribution, form)
                ),
            );
        }
        let spec = match form {
            Distribution::Constant => self
                .required(
                    node,
                    entries,
                    "value",
                    &what,
                    "distribution constant needs value: x",
                )
                .and_then(|value| self.param_value(value, &format!("{what} value")))
                .map(ParamSpec::Value),
            Distribution::Categorical => self.categorical(node, entries, &what),
            _ => self.numeric(
                node,
                entries,
                &what,
                form,
                form_name(distribution, form),
                method,
            ),
        };
        if !ok || grid_conflict {
            return None;
        }
        spec
    }

    /// `values` with optional `probabilities`.
    fn categorical(&mut self, node: &Node, entries: &[Entry], what: &str) -> Option<ParamSpec> {
        let values_node = self.required(
            node,
            entries,
            "values",
            what,
            "distribution categorical needs values: [...]",
        )?;
        let values = self.values(values_node, what);
        let probabilities = match field(entries, "probabilities") {
            Some(probabilities) if !probabilities.is_null() => {
                let count = values.as_ref().map(Vec::len);
                self.probabilities(probabilities, what, count).map(Some)
            }
            _ => Some(None),
        };
        Some(ParamSpec::Values {
            values: values?,
            probabilities: probabilities?,
        })
    }

    /// One weight per value, each finite and `>= 0`, summing to 1 within 1e-6.
    fn probabilities(&mut self, node: &Node, what: &str, count: Option<usize>) -> Option<Vec<f64>> {
        let NodeKind::Seq(items) = &node.kind else {
            self.error(
                node.pos,
                format!(
                    "{what} probabilities must be a list of numbers like [0.7, 0.3], not {}",
                    node.type_name()
                ),
            );
            return None;
        };
        let mut weights = Some(Vec::with_capacity(items.len()));
        for item in items {
            let weight = self
                .bound(item, &format!("{what} probabilities element"))
                .map(Bound::as_f64);
            match weight {
                Some(weight) if weight < 0.0 => {
                    self.error(
                        item.pos,
                        format!("{what}: probabilities must be >= 0 (got {weight})"),
                    );
                    weights = None;
                }
                Some(weight) => {
                    if let Some(list) = weights.as_mut() {
                        list.push(weight);
                    }
                }
                None => weights = None,
            }
        }
        let weights = weights?;
        if let Some(count) = count.filter(|count| *count != weights.len()) {
            self.error(
                node.pos,
                format!(
                    "{what}: probabilities has {} entries but values has {count}; give one probability per value",
                    weights.len()
                ),
            );
            return None;
        }
        let sum: f64 = weights.iter().sum();
        if (sum - 1.0).abs() > PROBABILITY_TOLERANCE {
            self.error(
                node.pos,
                format!("{what}: probabilities must sum to 1 (they sum to {sum})"),
            );
            return None;
        }
        Some(weights)
    }

    /// The numeric distributions: bounds (`min`, `max`), step `q`, `mu`, `sigma`.
    fn numeric(
        &mut self,
        node: &Node,
        entries: &[Entry],
        what: &str,
        form: Distribution,
        name: &str,
        method: Option<Method>,
    ) -> Option<ParamSpec> {
        let takes = form.keys();
        let needed: Vec<&str> = takes
            .iter()
            .copied()
            .filter(|key| !matches!(*key, "mu" | "sigma"))
            .collect();
        let hint = format!("distribution {name} needs {}", needed.join(", "));
        let read =
            |checker: &mut Self, key: &str, required: bool| -> Option<Option<(Bound, Pos)>> {
                if !takes.contains(&key) {
                    return Some(None);
                }
                let node = if required {
                    checker.required(node, entries, key, what, &hint)?
                } else {
                    match field(entries, key) {
                        Some(node) if !node.is_null() => node,
                        _ => return Some(None),
                    }
                };
                checker
                    .bound(node, &format!("{what} {key}"))
                    .map(|bound| Some((bound, node.pos)))
            };
        let min = read(self, "min", true);
        let max = read(self, "max", true);
        let q = read(self, "q", true);
        let mu = read(self, "mu", false);
        let sigma = read(self, "sigma", false);
        let (min, max, q, mu, sigma) = (min?, max?, q?, mu?, sigma?);

        if let Some((sigma, pos)) = sigma {
            if sigma.as_f64() <= 0.0 {
                self.error(
                    pos,
                    format!(
                        "{what}: sigma must be greater than 0 (got {})",
                        sigma.as_f64()
                    ),
                );
                return None;
            }
        }
        if let Some((q, pos)) = q {
            if q.as_f64() <= 0.0 {
                self.error(
                    pos,
                    format!("{what}: q must be greater than 0 (got {})", q.as_f64()),
                );
                return None;
            }
        }
        let mu_value = mu.map_or(0.0, |(mu, _)| mu.as_f64());
        let sigma_value = sigma.map_or(1.0, |(sigma, _)| sigma.as_f64());
        let q_integer = |checker: &mut Self| -> Option<bool> {
            let (q, q_pos) = q?;
            Some(q.is_int() && checker.exact_integer(q, q_pos, what, "q"))
        };
        match form {
            Distribution::Normal => {
                return Some(ParamSpec::Normal {
                    mu: mu_value,
                    sigma: sigma_value,
                })
            }
            Distribution::LogNormal => {
                return Some(ParamSpec::LogNormal {
                    mu: mu_value,
                    sigma: sigma_value,
                })
            }
            Distribution::QNormal | Distribution::QLogNormal => {
                let integer = q_integer(self)?;
                let q = q?.0.as_f64();
                return Some(if form == Distribution::QNormal {
                    ParamSpec::QNormal {
                        mu: mu_value,
                        sigma: sigma_value,
                        q,
                        integer,
                    }
                } else {
                    ParamSpec::QLogNormal {
                        mu: mu_value,
                        sigma: sigma_value,
                        q,
                        integer,
                    }
                });
            }
            _ => {}
        }
        let ((min, min_pos), (max, max_pos)) = (min?, max?);
        let (low, high) = (min.as_f64(), max.as_f64());
        let spec = match form {
            Distribution::Uniform => ParamSpec::Uniform {
                min: low,
                max: high,
            },
            Distribution::LogUniform => ParamSpec::LogUniform {
                min: low,
                max: high,
            },
            Distribution::IntUniform => {
                let min = self.int_bound(min, min_pos, what, "min");
                let max = self.int_bound(max, max_pos, what, "max");
                ParamSpec::IntUniform {
                    min: min?,
                    max: max?,
                }
            }
            _ => {
                let (q_bound, q_pos) = q?;
                let integer = min.is_int()
                    && max.is_int()
                    && q_bound.is_int()
                    && self.exact_integer(min, min_pos, what, "min")
                    && self.exact_integer(max, max_pos, what, "max")
                    && self.exact_integer(q_bound, q_pos, what, "q");
                let q = q_bound.as_f64();
                if low < high
                    && q_multiples(low, high, q).is_none()
                    && (form != Distribution::QLogUniform || low > 0.0)
                {
                    self.error(
                        q_pos,
                        format!("{what}: no multiple of q = {q} lies in [min, max] = [{low}, {high}]; widen the range or use a smaller q"),
                    );
                    return None;
                }
                if form == Distribution::QUniform {
                    ParamSpec::QUniform {
                        min: low,
                        max: high,
                        q,
                        integer,
                    }
                } else {
                    ParamSpec::QLogUniform {
                        min: low,
                        max: high,
                        q,
                        integer,
                    }
                }
            }
        };
        if low >= high {
            self.error(
                min_pos,
                format!("{what}: min must be less than max (got min {low}, max {high})"),
            );
            return None;
        }
        if matches!(form, Distribution::LogUniform | Distribution::QLogUniform) && low <= 0.0 {
            self.error(
                min_pos,
                format!("{what}: {name} needs min > 0 (min and max are the actual values, sampled on a log scale; got min {low})"),
            );
            return None;
        }
        if method == Some(Method::Grid) {
            if let (ParamSpec::QUniform { .. } | ParamSpec::QLogUniform { .. }, Some((_, q_pos))) =
                (&spec, q)
            {
                let points = grid_axis_len(&spec).unwrap_or(0);
                if points > MAX_Q_GRID_POINTS {
                    self.error(
                        q_pos,
                        format!("{what}: {name} has {points} grid points, more than {MAX_Q_GRID_POINTS}; use a larger q or method: random"),
                    );
                    return None;
                }
            }
        }
        Some(spec)
    }

    /// Whether an integer bound is exactly representable as `f64` (reports if not).
    fn exact_integer(&mut self, bound: Bound, pos: Pos, what: &str, key: &str) -> bool {
        match bound {
            Bound::Int(int) if int.abs() > MAX_EXACT_INTEGER => {
                self.error(
                    pos,
                    format!("{what} {key} {int} is too large for exact integer steps (at most 2^53 = {MAX_EXACT_INTEGER} in magnitude)"),
                );
                false
            }
            _ => true,
        }
    }

    /// A concrete value: a number (finite), string or boolean.
    pub(super) fn param_value(&mut self, node: &Node, what: &str) -> Option<ParamValue> {
        let NodeKind::Scalar { value, text } = &node.kind else {
            self.error(
                node.pos,
                format!(
                    "{what} must be a number, string or boolean, not {} (nested values are not supported)",
                    node.type_name()
                ),
            );
            return None;
        };
        match value {
            Scalar::Null => {
                self.error(
                    node.pos,
                    format!("{what} must be a number, string or boolean, not null (quote it for the string \"null\")"),
                );
                None
            }
            Scalar::Bool(value) => Some(ParamValue::Bool(*value)),
            Scalar::Int(int) => match i64::try_from(*int) {
                Ok(int) => Some(ParamValue::Int(int)),
                Err(_) => {
                    self.error(
                        node.pos,
                        format!("{what} {text} does not fit a 64-bit integer"),
                    );
                    None
                }
            },
            Scalar::Float(float) if float.is_finite() => Some(ParamValue::Float(*float)),
            Scalar::Float(_) => {
                self.error(node.pos, format!("{what} must be finite (got {text})"));
                None
            }
            Scalar::Str(string) => Some(ParamValue::Str(string.clone())),
        }
    }

    fn values(&mut self, node: &Node, what: &str) -> Option<Vec<ParamValue>> {
        let NodeKind::Seq(items) = &node.kind else {
            self.error(
                node.pos,
                format!(
                    "{what} values must be a list like [1, 2, 3], not {}",
                    node.type_name()
                ),
            );
            return None;
        };
        if items.is_empty() {
            self.error(node.pos, format!("{what} values must not be empty"));
            return None;
        }
        let mut values = Some(Vec::with_capacity(items.len()));
        // Values seen so far, by `value_key` (a set, so that long lists stay linear).
        let mut seen = std::collections::HashSet::with_capacity(items.len());
        for item in items {
            let value = self.param_value(item, &format!("{what} values element"));
            match (value, values.as_mut()) {
                (Some(value), Some(_)) if !seen.insert(value_key(&value)) => {
                    self.error(item.pos, format!("{what} lists the value {value} twice"));
                    values = None;
                }
                (Some(value), Some(list)) => list.push(value),
                _ => values = None,
            }
        }
        values
    }

    fn bound(&mut self, node: &Node, what: &str) -> Option<Bound> {
        let NodeKind::Scalar { value, text } = &node.kind else {
            self.error(
                node.pos,
                format!("{what} must be a number, not {}", node.type_name()),
            );
            return None;
        };
        match value {
            Scalar::Int(int) => Some(Bound::Int(*int)),
            Scalar::Float(float) if float.is_finite() => Some(Bound::Float(*float)),
            Scalar::Float(_) => {
                self.error(
                    node.pos,
                    format!("{what} must be a finite number (got {text})"),
                );
                None
            }
            other => {
                self.error(
                    node.pos,
                    format!(
                        "{what} must be a number (got {} \"{text}\")",
                        other.type_name()
                    ),
                );
                None
            }
        }
    }

    fn int_bound(&mut self, bound: Bound, pos: Pos, what: &str, key: &str) -> Option<i64> {
        match bound {
            Bound::Int(int) => match i64::try_from(int) {
                Ok(int) => Some(int),
                Err(_) => {
                    self.error(
                        pos,
                        format!("{what} {key} {int} does not fit a 64-bit integer"),
                    );
                    None
                }
            },
            Bound::Float(float) => {
                self.error(
                    pos,
                    format!("{what}: int_uniform bounds must be integers (got {key} {float}); use distribution: uniform for real values"),
                );
                None
            }
        }
    }
}

/// Leaf name → index of the first leaf with that name (what a front-to-back search finds).
fn name_index(leaves: &[Leaf]) -> HashMap<&str, usize> {
    let mut index = HashMap::with_capacity(leaves.len());
    for (at, leaf) in leaves.iter().enumerate() {
        index.entry(leaf.name.as_str()).or_insert(at);
    }
    index
}

/// A hashable key equal for two values exactly when they are `==` (floats are finite
/// here; `0.0 == -0.0`).
fn value_key(value: &ParamValue) -> (u8, u64, Option<String>) {
    match value {
        ParamValue::Bool(flag) => (0, u64::from(*flag), None),
        ParamValue::Int(int) => (1, *int as u64, None),
        ParamValue::Float(float) => (2, if *float == 0.0 { 0 } else { float.to_bits() }, None),
        ParamValue::Str(string) => (3, 0, Some(string.clone())),
    }
}

/// The distribution name as written (`log_uniform_values` stays itself), or the form's
/// own name for the `value`/`values` shorthand.
fn form_name(distribution: Option<&Entry>, form: Distribution) -> &'static str {
    let written = distribution.and_then(|entry| match &entry.value.kind {
        NodeKind::Scalar { text, .. } => DISTRIBUTIONS.iter().find(|name| **name == text).copied(),
        _ => None,
    });
    written.unwrap_or(match form {
        Distribution::Constant => "constant",
        Distribution::Categorical => "categorical",
        Distribution::Uniform => "uniform",
        Distribution::LogUniform => "log_uniform",
        Distribution::IntUniform => "int_uniform",
        Distribution::QUniform => "q_uniform",
        Distribution::QLogUniform => "q_log_uniform",
        Distribution::Normal => "normal",
        Distribution::LogNormal => "log_normal",
        Distribution::QNormal => "q_normal",
        Distribution::QLogNormal => "q_log_normal",
    })
}

/// Whether two values are equal, numbers compared by value (`1` equals `1.0`).
fn same_value(a: &ParamValue, b: &ParamValue) -> bool {
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn number(value: &ParamValue) -> Option<f64> {
    match value {
        ParamValue::Int(int) => Some(*int as f64),
        ParamValue::Float(float) => Some(*float),
        _ => None,
    }
}

/// `value` in the form a discrete parameter produces it (e.g. `Float(1.0)` for `1` when
/// the parameter's values are floats), or `None` when the parameter never takes it.
/// Multiples of `q` match within `1e-9` relative.
pub(crate) fn possible_value(spec: &ParamSpec, value: &ParamValue) -> Option<ParamValue> {
    match spec {
        ParamSpec::Value(only) => same_value(only, value).then(|| only.clone()),
        ParamSpec::Values { values, .. } => values
            .iter()
            .find(|candidate| same_value(candidate, value))
            .cloned(),
        ParamSpec::IntUniform { min, max } => {
            let x = number(value)?;
            (x.fract() == 0.0 && *min as f64 <= x && x <= *max as f64)
                .then_some(ParamValue::Int(x as i64))
        }
        ParamSpec::QUniform { min, max, q, .. } | ParamSpec::QLogUniform { min, max, q, .. } => {
            let x = number(value)?;
            let (low, high) = q_multiples(*min, *max, *q)?;
            let k = (x / q).round();
            if k < low || k > high {
                return None;
            }
            let point = grid_axis_point(spec, (k - low) as u128);
            let exact = number(&point)?;
            ((x - exact).abs() <= 1e-9 * x.abs().max(*q)).then_some(point)
        }
        _ => None,
    }
}

/// A value in messages: strings quoted, others as substituted.
fn quoted(value: &ParamValue) -> String {
    match value {
        ParamValue::Str(text) => format!("\"{text}\""),
        other => other.to_string(),
    }
}

/// The values a discrete parameter takes, for "never takes the value" messages.
fn domain(spec: &ParamSpec) -> String {
    match spec {
        ParamSpec::Value(value) => format!("value: {value}"),
        ParamSpec::Values { values, .. } => format!(
            "values: {}",
            values
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        ParamSpec::IntUniform { min, max } => format!("integers {min} to {max}"),
        ParamSpec::QUniform { min, max, q, .. } | ParamSpec::QLogUniform { min, max, q, .. } => {
            format!("multiples of {q} from {min} to {max}")
        }
        other => other.distribution_name().to_string(),
    }
}

#[cfg(test)]
mod tests;
