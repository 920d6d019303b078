//! The run query language of `ladder runs ls --where/--sort/--cursor` and the
//! leaderboard's task convention. Pure: text in, values out; the coordinator evaluates
//! a parsed `Query` against each run it considers (see `coordinator/src/history.rs`).
//!
//! Grammar (keywords case-insensitive):
//!
//! ```text
//! expr    := and ("or" and)*
//! and     := atom ("and" atom)*
//! atom    := "not" atom | "(" expr ")" | field op literal
//!          | field "in" "[" literal ("," literal)* "]"
//! field   := params.NAME | metrics.NAME | status | sweep | project | owner | tag | agent | created
//! op      := "=" | "==" | "!=" | "<" | "<=" | ">" | ">="   ("==" is "=")
//! literal := number | "quoted string" | 'quoted string' | bare-word | -2h | RFC3339 time
//! ```
//!
//! A word is a run of characters other than white space, quotes and `()[],<>=!`, so
//! metric names keep their `/`, `.` and `-` (`metrics.eval/hellaswag/acc_norm`).
//! Comparisons with a value a run does not have (a missing metric or parameter, a type
//! mismatch) are false, whichever the operator. `tag = x` holds when the run has tag `x`,
//! `tag != x` when it has not; `not` negates what follows it (so `not metrics.x < 1`
//! holds for a run without `x`). `created` compares times: RFC3339
//! (`2024-05-01T12:00:00Z`) or relative to now (`-2h`, `-30m`, `-7d`, `-45s`).
//!
//! Sorting ([`SortKey`]): `metrics.eval/avg` ascending, `-params.lr` descending; runs
//! without the value come last in both directions; ties are broken by the run's
//! position (sweep creation time, sweep id, trial index), which is also the order when
//! no sort is given. Pages are cut by [`Cursor`]s: the position of the last row shown,
//! so the next page starts strictly after it and pages never overlap or skip.
//!
//! Everything here reads text a client sent, so everything is bounded
//! ([`ladder_limits`]): a query is at most `MAX_QUERY_BYTES` long and at most
//! `MAX_QUERY_DEPTH` parentheses and `not`s deep, chains of `and`/`or` become flat nodes,
//! and so the parsed tree is at most [`MAX_TREE_DEPTH`] deep whatever the input; a
//! listing has at most `MAX_SORT_KEYS` sort keys and a client's cursor is at most
//! `MAX_CURSOR_BYTES` long.
//!
//! This file holds the tree ([`Expr`]) and its evaluation; beside it: `lexer` and
//! `parser` (`--where` text to a tree), `time` (RFC 3339 and relative times), `pages`
//! (sort keys, row order, cursors, pages), `keys` (order-preserving index keys) and
//! `tasks` (the leaderboard's task convention).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use ladder_limits::{MAX_CURSOR_BYTES, MAX_QUERY_BYTES, MAX_QUERY_DEPTH, MAX_SORT_KEYS};

/// A positioned error in a query: `--where:1:12: unknown operator "=<" (did you mean "<="?)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    /// What the text was (`--where`, `--sort`, `--cursor`).
    pub source: String,
    /// 1-based column (characters) of the offending token.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:1:{}: {}", self.source, self.column, self.message)
    }
}

impl std::error::Error for QueryError {}

/// What a query can look at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Field {
    Param(String),
    Metric(String),
    Status,
    Sweep,
    Project,
    Owner,
    Tag,
    Agent,
    Created,
}

const FIELD_NAMES: &str =
    "params.NAME, metrics.NAME, status, sweep, project, owner, tag, agent, created";

impl Field {
    fn parse(word: &str) -> Option<Field> {
        if let Some(name) = word.strip_prefix("params.") {
            return (!name.is_empty()).then(|| Field::Param(name.to_string()));
        }
        if let Some(name) = word.strip_prefix("metrics.") {
            return (!name.is_empty()).then(|| Field::Metric(name.to_string()));
        }
        Some(match word.to_ascii_lowercase().as_str() {
            "status" => Field::Status,
            "sweep" => Field::Sweep,
            "project" => Field::Project,
            "owner" => Field::Owner,
            "tag" | "tags" => Field::Tag,
            "agent" => Field::Agent,
            "created" => Field::Created,
            _ => return None,
        })
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Param(name) => write!(f, "params.{name}"),
            Field::Metric(name) => write!(f, "metrics.{name}"),
            Field::Status => f.write_str("status"),
            Field::Sweep => f.write_str("sweep"),
            Field::Project => f.write_str("project"),
            Field::Owner => f.write_str("owner"),
            Field::Tag => f.write_str("tag"),
            Field::Agent => f.write_str("agent"),
            Field::Created => f.write_str("created"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn holds(self, ordering: Ordering) -> bool {
        match self {
            Op::Eq => ordering == Ordering::Equal,
            Op::Ne => ordering != Ordering::Equal,
            Op::Lt => ordering == Ordering::Less,
            Op::Le => ordering != Ordering::Greater,
            Op::Gt => ordering == Ordering::Greater,
            Op::Ge => ordering != Ordering::Less,
        }
    }
}

/// A literal of the query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Literal {
    Number(f64),
    Text(String),
    Bool(bool),
}

/// A value a run has for a field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Number(f64),
    Text(String),
    Bool(bool),
}

impl Value {
    /// Order within a kind (numbers as IEEE, so -0 = 0); `None` across kinds or with NaN.
    fn compare(&self, other: &Value) -> Option<Ordering> {
        match (self, other) {
            (Value::Number(a), Value::Number(b)) => a.partial_cmp(b),
            (Value::Text(a), Value::Text(b)) => Some(a.cmp(b)),
            (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    fn kind_rank(&self) -> u8 {
        match self {
            Value::Bool(_) => 0,
            Value::Number(_) => 1,
            Value::Text(_) => 2,
        }
    }

    /// A total order over all values: by kind (bool < number < text), then within it.
    pub fn total_cmp(&self, other: &Value) -> Ordering {
        if let (Value::Number(a), Value::Number(b)) = (self, other) {
            return a.total_cmp(b);
        }
        self.compare(other)
            .unwrap_or_else(|| self.kind_rank().cmp(&other.kind_rank()))
    }

    fn matches(&self, literal: &Literal, op: Op) -> bool {
        let other = match literal {
            Literal::Number(n) => Value::Number(*n),
            Literal::Text(t) => Value::Text(t.clone()),
            Literal::Bool(b) => Value::Bool(*b),
        };
        match self.compare(&other) {
            Some(ordering) => op.holds(ordering),
            None => false,
        }
    }
}

/// What the evaluator asks of a run. Implemented by the coordinator over its records.
pub trait RunFacts {
    fn param(&self, name: &str) -> Option<Value>;
    fn metric(&self, name: &str) -> Option<f64>;
    /// `queued`, `running`, `completed`, `failed`, `stopped` or `cancelled`.
    fn status(&self) -> &str;
    fn sweep(&self) -> &str;
    fn project(&self) -> &str;
    fn owner(&self) -> &str;
    fn has_tag(&self, tag: &str) -> bool;
    fn agent(&self) -> &str;
    fn created_ms(&self) -> i64;

    /// The value of `field` (`tag` has no single value: `None`).
    fn value(&self, field: &Field) -> Option<Value> {
        let text = |s: &str| (!s.is_empty()).then(|| Value::Text(s.to_string()));
        match field {
            Field::Param(name) => self.param(name),
            Field::Metric(name) => self.metric(name).map(Value::Number),
            Field::Status => text(self.status()),
            Field::Sweep => text(self.sweep()),
            Field::Project => text(self.project()),
            Field::Owner => text(self.owner()),
            Field::Agent => text(self.agent()),
            Field::Created => Some(Value::Number(self.created_ms() as f64)),
            Field::Tag => None,
        }
    }
}

/// Deepest tree [`parse_where`] builds: each level of nesting (a parenthesis or a `not`,
/// at most [`MAX_QUERY_DEPTH`]) adds at most an `or` node and an `and` node, and the
/// innermost level an `or`, an `and` and a condition. Chains of `and`/`or` are flat
/// nodes, so however long a query is, its tree is no deeper than this and evaluating,
/// cloning, comparing or dropping it recurses at most this many times.
pub const MAX_TREE_DEPTH: usize = 2 * MAX_QUERY_DEPTH + 3;

/// A parsed `--where` expression. Only [`parse_where`] builds one, so its depth is at
/// most [`MAX_TREE_DEPTH`].
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    root: Node,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Compare {
        field: Field,
        op: Op,
        value: Literal,
    },
    In {
        field: Field,
        values: Vec<Literal>,
    },
    /// Every one holds (two or more).
    All(Vec<Node>),
    /// At least one holds (two or more).
    Any(Vec<Node>),
    Not(Box<Node>),
}

impl Expr {
    /// Whether the run satisfies the expression.
    pub fn matches(&self, run: &dyn RunFacts) -> bool {
        self.root.matches(run)
    }

    /// Every `project = X` that must hold for the expression to hold (used to narrow
    /// the runs considered).
    pub fn required_project(&self) -> Option<&str> {
        self.root.required_project()
    }

    /// Levels of the tree (a lone condition is 1); at most [`MAX_TREE_DEPTH`].
    pub fn depth(&self) -> usize {
        self.root.depth()
    }
}

impl Node {
    fn matches(&self, run: &dyn RunFacts) -> bool {
        match self {
            Node::All(nodes) => nodes.iter().all(|node| node.matches(run)),
            Node::Any(nodes) => nodes.iter().any(|node| node.matches(run)),
            Node::Not(node) => !node.matches(run),
            Node::Compare { field, op, value } => compare(run, field, *op, value),
            Node::In { field, values } => values.iter().any(|v| compare(run, field, Op::Eq, v)),
        }
    }

    fn required_project(&self) -> Option<&str> {
        match self {
            Node::Compare {
                field: Field::Project,
                op: Op::Eq,
                value: Literal::Text(project),
            } => Some(project),
            Node::All(nodes) => nodes.iter().find_map(|node| node.required_project()),
            _ => None,
        }
    }

    fn depth(&self) -> usize {
        match self {
            Node::All(nodes) | Node::Any(nodes) => {
                1 + nodes.iter().map(Node::depth).max().unwrap_or(0)
            }
            Node::Not(node) => 1 + node.depth(),
            Node::Compare { .. } | Node::In { .. } => 1,
        }
    }
}

fn compare(run: &dyn RunFacts, field: &Field, op: Op, literal: &Literal) -> bool {
    if *field == Field::Tag {
        let Literal::Text(tag) = literal else {
            return false;
        };
        return match op {
            Op::Eq => run.has_tag(tag),
            Op::Ne => !run.has_tag(tag),
            _ => false,
        };
    }
    match run.value(field) {
        Some(value) => value.matches(literal, op),
        None => false,
    }
}

mod lexer;
mod pages;
mod parser;
mod tasks;
mod time;

use lexer::*;
pub use pages::*;
pub use parser::*;
pub use tasks::*;
pub use time::*;

#[cfg(test)]
mod tests;
