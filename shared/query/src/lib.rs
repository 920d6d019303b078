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

// ----- lexer -----

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Op(Op),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
}

#[derive(Debug, Clone)]
struct Spanned {
    token: Token,
    /// 1-based character column.
    column: usize,
}

fn is_word_char(c: char) -> bool {
    !(c.is_whitespace() || "\"'()[],<>=!".contains(c))
}

fn lex(source: &str, text: &str) -> Result<Vec<Spanned>, QueryError> {
    let chars: Vec<char> = text.chars().collect();
    let error = |column: usize, message: String| QueryError {
        source: source.to_string(),
        column,
        message,
    };
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let single = match c {
            '(' => Some(Token::LParen),
            ')' => Some(Token::RParen),
            '[' => Some(Token::LBracket),
            ']' => Some(Token::RBracket),
            ',' => Some(Token::Comma),
            _ => None,
        };
        if let Some(token) = single {
            tokens.push(Spanned { token, column });
            i += 1;
            continue;
        }
        if c == '"' || c == '\'' {
            let mut value = String::new();
            let mut j = i + 1;
            loop {
                match chars.get(j) {
                    None => {
                        return Err(error(column, format!("unterminated string (missing {c})")))
                    }
                    Some('\\') if chars.get(j + 1).is_some() => {
                        value.push(chars[j + 1]);
                        j += 2;
                    }
                    Some(&d) if d == c => break,
                    Some(&d) => {
                        value.push(d);
                        j += 1;
                    }
                }
            }
            tokens.push(Spanned {
                token: Token::Quoted(value),
                column,
            });
            i = j + 1;
            continue;
        }
        if "<>=!".contains(c) {
            let mut j = i;
            while j < chars.len() && "<>=!".contains(chars[j]) {
                j += 1;
            }
            let raw: String = chars[i..j].iter().collect();
            let op = match raw.as_str() {
                "=" | "==" => Op::Eq,
                "!=" => Op::Ne,
                "<" => Op::Lt,
                "<=" => Op::Le,
                ">" => Op::Gt,
                ">=" => Op::Ge,
                other => {
                    let hint = match other {
                        "=<" => " (did you mean \"<=\"?)",
                        "=>" => " (did you mean \">=\"?)",
                        "<>" | "=!" => " (did you mean \"!=\"?)",
                        "===" => " (did you mean \"=\"?)",
                        _ => " (expected one of: = != < <= > >=)",
                    };
                    return Err(error(column, format!("unknown operator \"{other}\"{hint}")));
                }
            };
            tokens.push(Spanned {
                token: Token::Op(op),
                column,
            });
            i = j;
            continue;
        }
        let mut j = i;
        while j < chars.len() && is_word_char(chars[j]) {
            j += 1;
        }
        tokens.push(Spanned {
            token: Token::Word(chars[i..j].iter().collect()),
            column,
        });
        i = j;
    }
    Ok(tokens)
}

// ----- parser -----

/// Run statuses a query may name.
pub const STATUSES: [&str; 6] = [
    "queued",
    "running",
    "completed",
    "failed",
    "stopped",
    "cancelled",
];

/// The terms of one parenthesis (or of the whole query) read so far: `a and b or c and`
/// is `any: [a and b]`, `all: [c]`.
#[derive(Default)]
struct Group {
    /// `not`s in front of the parenthesis, applied to its value when it closes.
    nots: usize,
    /// Finished `and` chains, joined by `or`.
    any: Vec<Node>,
    /// The `and` chain being read.
    all: Vec<Node>,
}

impl Group {
    /// Ends the `and` chain being read (at an `or`).
    fn close_and(&mut self) {
        let all = std::mem::take(&mut self.all);
        self.any.push(flat(all, Node::All));
    }

    /// The group's value: one flat `or` of flat `and`s (a single term stands alone).
    fn finish(mut self) -> Node {
        self.close_and();
        flat(self.any, Node::Any)
    }
}

/// `terms` under one node made by `join`, or the term itself when there is one.
fn flat(mut terms: Vec<Node>, join: fn(Vec<Node>) -> Node) -> Node {
    debug_assert!(!terms.is_empty());
    if terms.len() == 1 {
        return terms.pop().expect("one term");
    }
    join(terms)
}

struct Parser<'a> {
    source: &'a str,
    tokens: Vec<Spanned>,
    position: usize,
    end_column: usize,
    now_ms: i64,
    /// Parentheses and `not`s open around the current token.
    depth: usize,
}

impl Parser<'_> {
    fn error(&self, column: usize, message: impl Into<String>) -> QueryError {
        QueryError {
            source: self.source.to_string(),
            column,
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<&Spanned> {
        self.tokens.get(self.position)
    }

    fn column(&self) -> usize {
        self.peek().map(|t| t.column).unwrap_or(self.end_column)
    }

    fn next(&mut self) -> Option<Spanned> {
        let token = self.tokens.get(self.position).cloned();
        self.position += 1;
        token
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Spanned { token: Token::Word(w), .. }) if w.eq_ignore_ascii_case(word))
    }

    /// Parses `expr` (see the grammar) without recursion: open parentheses are a stack
    /// of [`Group`]s on the heap, so parsing needs the same few frames however deeply a
    /// query nests. `and` and `or` chains are gathered into flat nodes.
    fn expr(&mut self) -> Result<Node, QueryError> {
        let mut groups = vec![Group::default()];
        // `not`s read since the last operand, waiting for the operand they negate.
        let mut nots = 0;
        loop {
            let column = self.column();
            if self.keyword("not") {
                self.next();
                self.enter(column)?;
                nots += 1;
                continue;
            }
            let Some(token) = self.next() else {
                return Err(self.error(
                    column,
                    "expected a condition such as `metrics.loss < 0.5`, found the end",
                ));
            };
            if token.token == Token::LParen {
                self.enter(column)?;
                groups.push(Group {
                    nots,
                    ..Group::default()
                });
                nots = 0;
                continue;
            }
            let mut operand = self.condition(token.token, column)?;
            // Whatever follows an operand: `and`, `or`, a `)` closing its group (whose
            // value is then the operand of the group around it), or the end.
            loop {
                for _ in 0..nots {
                    operand = Node::Not(Box::new(operand));
                }
                self.depth -= nots;
                nots = 0;
                let group = groups.last_mut().expect("the outermost group stays");
                group.all.push(operand);
                if self.keyword("and") {
                    self.next();
                    break;
                }
                if self.keyword("or") {
                    self.next();
                    group.close_and();
                    break;
                }
                if groups.len() == 1 {
                    // The end, or a token `parse_where` reports.
                    let outermost = groups.pop().expect("the outermost group");
                    return Ok(outermost.finish());
                }
                let column = self.column();
                if !matches!(self.peek().map(|t| &t.token), Some(Token::RParen)) {
                    return Err(self.error(column, "expected `)`"));
                }
                self.next();
                let closed = groups.pop().expect("an open parenthesis");
                self.depth -= 1;
                nots = closed.nots;
                operand = closed.finish();
            }
        }
    }

    /// Enters a parenthesis or a `not` at `column`; refused past [`MAX_QUERY_DEPTH`].
    /// This is what bounds the depth of the tree.
    fn enter(&mut self, column: usize) -> Result<(), QueryError> {
        self.depth += 1;
        if self.depth > MAX_QUERY_DEPTH {
            return Err(self.error(
                column,
                format!(
                    "query is nested more than {MAX_QUERY_DEPTH} levels deep (parentheses and `not` inside one another)"
                ),
            ));
        }
        Ok(())
    }

    /// A comparison or an `in` list starting with `token` (the field) at `column`.
    fn condition(&mut self, token: Token, column: usize) -> Result<Node, QueryError> {
        let word = match token {
            Token::Word(word) => word,
            other => {
                return Err(self.error(
                    column,
                    format!(
                        "expected a field ({FIELD_NAMES}), found {}",
                        describe(&other)
                    ),
                ))
            }
        };
        let field = Field::parse(&word).ok_or_else(|| {
            let hint = if word.starts_with("param.") || word.starts_with("metric.") {
                format!(
                    " (did you mean \"{}s.{}\"?)",
                    word.split('.').next().unwrap_or(""),
                    &word[word.find('.').map(|i| i + 1).unwrap_or(0)..]
                )
            } else {
                String::new()
            };
            self.error(
                column,
                format!("unknown field \"{word}\"{hint} (expected one of: {FIELD_NAMES})"),
            )
        })?;
        if self.keyword("in") {
            self.next();
            let column = self.column();
            if !matches!(self.next().map(|t| t.token), Some(Token::LBracket)) {
                return Err(self.error(column, "expected `[` after `in`"));
            }
            let mut values = Vec::new();
            loop {
                values.push(self.literal(&field, Op::Eq)?);
                let column = self.column();
                match self.next().map(|t| t.token) {
                    Some(Token::Comma) => continue,
                    Some(Token::RBracket) => break,
                    _ => return Err(self.error(column, "expected `,` or `]` in the list")),
                }
            }
            return Ok(Node::In { field, values });
        }
        let column = self.column();
        let op = match self.next().map(|t| t.token) {
            Some(Token::Op(op)) => op,
            Some(other) => {
                return Err(self.error(
                    column,
                    format!(
                        "expected an operator (= != < <= > >= or in) after {field}, found {}",
                        describe(&other)
                    ),
                ))
            }
            None => {
                return Err(self.error(
                    column,
                    format!("expected an operator (= != < <= > >= or in) after {field}"),
                ))
            }
        };
        let ordered = !matches!(op, Op::Eq | Op::Ne);
        if ordered && matches!(field, Field::Status | Field::Tag) {
            return Err(self.error(
                column,
                format!("{field} can only be compared with =, != or in"),
            ));
        }
        let value = self.literal(&field, op)?;
        Ok(Node::Compare { field, op, value })
    }

    fn literal(&mut self, field: &Field, _op: Op) -> Result<Literal, QueryError> {
        let column = self.column();
        let (text, quoted) = match self.next().map(|t| t.token) {
            Some(Token::Word(w)) => (w, false),
            Some(Token::Quoted(q)) => (q, true),
            Some(other) => {
                return Err(self.error(
                    column,
                    format!("expected a value, found {}", describe(&other)),
                ))
            }
            None => return Err(self.error(column, "expected a value, found the end")),
        };
        match field {
            Field::Metric(_) => match text.parse::<f64>() {
                Ok(n) if !quoted => Ok(Literal::Number(n)),
                _ => Err(self.error(column, format!("{field} is a number; \"{text}\" is not"))),
            },
            Field::Created => parse_time(&text, self.now_ms)
                .map(|ms| Literal::Number(ms as f64))
                .ok_or_else(|| {
                    self.error(
                        column,
                        format!("\"{text}\" is not a time (expected RFC3339 like 2024-05-01T12:00:00Z, or relative like -2h, -30m, -7d)"),
                    )
                }),
            Field::Status => {
                let lower = text.to_ascii_lowercase();
                if STATUSES.contains(&lower.as_str()) {
                    Ok(Literal::Text(lower))
                } else {
                    Err(self.error(
                        column,
                        format!("unknown status \"{text}\" (expected one of: {})", STATUSES.join(", ")),
                    ))
                }
            }
            Field::Param(_) if !quoted => {
                if let Ok(n) = text.parse::<f64>() {
                    return Ok(Literal::Number(n));
                }
                match text.as_str() {
                    "true" => Ok(Literal::Bool(true)),
                    "false" => Ok(Literal::Bool(false)),
                    _ => Ok(Literal::Text(text)),
                }
            }
            _ => Ok(Literal::Text(text)),
        }
    }
}

fn describe(token: &Token) -> String {
    match token {
        Token::Word(w) => format!("\"{w}\""),
        Token::Quoted(q) => format!("\"{q}\""),
        Token::Op(_) => "an operator".into(),
        Token::LParen => "`(`".into(),
        Token::RParen => "`)`".into(),
        Token::LBracket => "`[`".into(),
        Token::RBracket => "`]`".into(),
        Token::Comma => "`,`".into(),
    }
}

/// The error for `text` longer than `limit` bytes, at the column of the first character
/// that does not fit.
fn too_long(source: &str, what: &str, text: &str, limit: usize, hint: &str) -> QueryError {
    let fitting = text
        .char_indices()
        .take_while(|(start, c)| start + c.len_utf8() <= limit)
        .count();
    QueryError {
        source: source.to_string(),
        column: fitting + 1,
        message: format!(
            "the {what} is {} bytes long, longer than the limit of {limit} bytes{hint}",
            text.len()
        ),
    }
}

/// Parses a `--where` expression. `now_ms` resolves relative times (`created > -2h`).
///
/// At most [`MAX_QUERY_BYTES`] long and [`MAX_QUERY_DEPTH`] parentheses and `not`s deep;
/// the work is linear in the length.
pub fn parse_where(source: &str, text: &str, now_ms: i64) -> Result<Expr, QueryError> {
    if text.len() > MAX_QUERY_BYTES {
        return Err(too_long(source, "query", text, MAX_QUERY_BYTES, ""));
    }
    let tokens = lex(source, text)?;
    let mut parser = Parser {
        source,
        end_column: text.chars().count() + 1,
        tokens,
        position: 0,
        now_ms,
        depth: 0,
    };
    let root = parser.expr()?;
    debug_assert!(root.depth() <= MAX_TREE_DEPTH);
    let expr = Expr { root };
    if let Some(extra) = parser.peek() {
        return Err(parser.error(
            extra.column,
            format!(
                "expected `and`, `or` or the end, found {}",
                describe(&extra.token)
            ),
        ));
    }
    Ok(expr)
}

/// Milliseconds since the epoch of an RFC3339 time or of a time relative to `now_ms`
/// (`-2h`: two hours ago; units s, m, h, d, w).
pub fn parse_time(text: &str, now_ms: i64) -> Option<i64> {
    if let Some(relative) = text.strip_prefix('-') {
        let unit = relative.chars().last()?;
        let amount: f64 = relative[..relative.len() - unit.len_utf8()].parse().ok()?;
        let unit_ms = match unit {
            's' => 1_000.0,
            'm' => 60_000.0,
            'h' => 3_600_000.0,
            'd' => 86_400_000.0,
            'w' => 604_800_000.0,
            _ => return None,
        };
        if !amount.is_finite() || amount < 0.0 {
            return None;
        }
        return Some(now_ms - (amount * unit_ms) as i64);
    }
    parse_rfc3339(text)
}

/// An RFC 3339 time with its offset (`2024-05-01T12:00:00Z`, `...T14:00:00.5+02:00`) as
/// milliseconds since the epoch; a bare date (`2024-05-01`) is midnight UTC. Parsed by
/// `jiff`.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    if let Ok(time) = text.parse::<jiff::Timestamp>() {
        return Some(time.as_millisecond());
    }
    let date = jiff::civil::Date::strptime("%Y-%m-%d", text).ok()?;
    let midnight = date.to_zoned(jiff::tz::TimeZone::UTC).ok()?;
    Some(midnight.timestamp().as_millisecond())
}

// ----- sorting and pages -----

/// One `--sort` key: a field, ascending unless written `-field`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SortKey {
    pub field: Field,
    pub descending: bool,
}

/// Parses a `--sort` key: `metrics.eval/avg`, `-params.lr`, `+created`.
pub fn parse_sort(text: &str) -> Result<SortKey, QueryError> {
    let error = |message: String| QueryError {
        source: "--sort".into(),
        column: 1,
        message,
    };
    let trimmed = text.trim();
    let (descending, name) = match trimmed.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, trimmed.strip_prefix('+').unwrap_or(trimmed)),
    };
    let field = Field::parse(name).ok_or_else(|| {
        error(format!(
            "unknown field \"{name}\" (expected one of: {FIELD_NAMES})"
        ))
    })?;
    if field == Field::Tag {
        return Err(error("runs cannot be sorted by tag".into()));
    }
    Ok(SortKey { field, descending })
}

/// Parses the `--sort` keys of one listing: at most [`MAX_SORT_KEYS`] of them, each at
/// most [`MAX_QUERY_BYTES`] long.
pub fn parse_sort_keys(texts: &[String]) -> Result<Vec<SortKey>, QueryError> {
    if texts.len() > MAX_SORT_KEYS {
        return Err(QueryError {
            source: "--sort".into(),
            column: 1,
            message: format!(
                "{} sort keys, more than the limit of {MAX_SORT_KEYS}",
                texts.len()
            ),
        });
    }
    let mut keys = Vec::with_capacity(texts.len());
    for text in texts {
        if text.len() > MAX_QUERY_BYTES {
            return Err(too_long("--sort", "sort key", text, MAX_QUERY_BYTES, ""));
        }
        keys.push(parse_sort(text)?);
    }
    Ok(keys)
}

/// Decodes a `--cursor` sent by a client: at most [`MAX_CURSOR_BYTES`], then
/// [`Cursor::decode`].
pub fn parse_cursor(text: &str) -> Result<Cursor, QueryError> {
    if text.len() > MAX_CURSOR_BYTES {
        return Err(too_long(
            "--cursor",
            "cursor",
            text,
            MAX_CURSOR_BYTES,
            " (pass the `next_cursor` of the previous page)",
        ));
    }
    Cursor::decode(text)
}

/// Where a run stands in every listing: sweep creation time, sweep id, trial index.
/// Unique per run; the last tie-break of every order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub sweep_created_ms: i64,
    pub sweep_id: String,
    pub index: u64,
}

/// A row's sort values and position: what the order compares and what a cursor keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowKey {
    pub values: Vec<Option<Value>>,
    pub position: Position,
}

/// The sort values of a run for `keys`.
pub fn row_key(run: &dyn RunFacts, keys: &[SortKey], position: Position) -> RowKey {
    RowKey {
        values: keys.iter().map(|k| run.value(&k.field)).collect(),
        position,
    }
}

/// The order of rows under `keys`: each key in its direction with missing values last,
/// then position. Total: two rows compare equal only with the same position.
pub fn compare_rows(keys: &[SortKey], a: &RowKey, b: &RowKey) -> Ordering {
    for (i, key) in keys.iter().enumerate() {
        let ordering = match (
            a.values.get(i).cloned().flatten(),
            b.values.get(i).cloned().flatten(),
        ) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => {
                let natural = x.total_cmp(&y);
                if key.descending {
                    natural.reverse()
                } else {
                    natural
                }
            }
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    a.position.cmp(&b.position)
}

/// The position after which the next page starts, with the sort it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// The `--sort` keys as written (a cursor is only valid for the same sort).
    pub sort: Vec<String>,
    pub last: RowKey,
}

impl Cursor {
    /// Opaque, URL-safe text: base64 of the cursor as a JSON array without field names
    /// (`[sort, values, sweep_created_ms, sweep_id, index]`), a few dozen characters
    /// for the usual listings.
    pub fn encode(&self) -> String {
        use base64::Engine;
        let position = &self.last.position;
        let compact = (
            &self.sort,
            &self.last.values,
            position.sweep_created_ms,
            &position.sweep_id,
            position.index,
        );
        let json = serde_json::to_vec(&compact).expect("cursor serialises");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    pub fn decode(text: &str) -> Result<Cursor, QueryError> {
        use base64::Engine;
        let error = || {
            QueryError {
            source: "--cursor".into(),
            column: 1,
            message: "not a cursor returned by this coordinator (pass the `next_cursor` of the previous page)".into(),
        }
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| error())?;
        type Compact = (Vec<String>, Vec<Option<Value>>, i64, String, u64);
        let (sort, values, sweep_created_ms, sweep_id, index): Compact =
            serde_json::from_slice(&bytes).map_err(|_| error())?;
        Ok(Cursor {
            sort,
            last: RowKey {
                values,
                position: Position {
                    sweep_created_ms,
                    sweep_id,
                    index,
                },
            },
        })
    }
}

/// One page of `rows` (already filtered) in `keys` order, starting strictly after
/// `after`; returns the page and whether more rows follow.
pub fn page<T>(
    keys: &[SortKey],
    mut rows: Vec<(RowKey, T)>,
    after: Option<&RowKey>,
    limit: usize,
) -> (Vec<(RowKey, T)>, bool) {
    if let Some(after) = after {
        rows.retain(|(key, _)| compare_rows(keys, key, after) == Ordering::Greater);
    }
    rows.sort_by(|a, b| compare_rows(keys, &a.0, &b.0));
    let more = limit > 0 && rows.len() > limit;
    if limit > 0 {
        rows.truncate(limit);
    }
    (rows, more)
}

/// [`page`] over rows offered one at a time, holding at most about `2 * (limit + 1)` of
/// them (all of them when `limit` is 0): a scan of a million runs keeps a page's worth
/// in memory, not the million.
pub struct PageCollector<'k, T> {
    keys: &'k [SortKey],
    after: Option<RowKey>,
    limit: usize,
    rows: Vec<(RowKey, T)>,
}

impl<'k, T> PageCollector<'k, T> {
    pub fn new(keys: &'k [SortKey], after: Option<RowKey>, limit: usize) -> Self {
        PageCollector {
            keys,
            after,
            limit,
            rows: Vec::new(),
        }
    }

    /// Offers one row; rows at or before the cursor are dropped at once.
    pub fn offer(&mut self, key: RowKey, row: T) {
        if let Some(after) = &self.after {
            if compare_rows(self.keys, &key, after) != Ordering::Greater {
                return;
            }
        }
        self.rows.push((key, row));
        if self.limit > 0 && self.rows.len() >= 2 * (self.limit + 1) {
            let keys = self.keys;
            self.rows.sort_by(|a, b| compare_rows(keys, &a.0, &b.0));
            // One more than the page, so `finish` can tell whether more follow.
            self.rows.truncate(self.limit + 1);
        }
    }

    /// The page and whether more rows follow it: the same as [`page`] of every row
    /// offered.
    pub fn finish(self) -> (Vec<(RowKey, T)>, bool) {
        page(self.keys, self.rows, None, self.limit)
    }
}

// ----- index ordering -----

/// Order-preserving bytes of an `f64`: comparing the bytes lexicographically gives
/// `f64::total_cmp` (so -inf < -1 < -0 < +0 < 1 < inf; NaNs at the ends).
pub fn f64_key(value: f64) -> [u8; 8] {
    let bits = value.to_bits();
    let ordered = if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    };
    ordered.to_be_bytes()
}

/// The inverse of [`f64_key`].
pub fn f64_from_key(bytes: [u8; 8]) -> f64 {
    let ordered = u64::from_be_bytes(bytes);
    let bits = if ordered >> 63 == 1 {
        ordered & !(1 << 63)
    } else {
        !ordered
    };
    f64::from_bits(bits)
}

/// Order-preserving, self-delimiting bytes of a [`Value`]: comparing the bytes of two
/// values lexicographically gives [`Value::total_cmp`] (booleans, then numbers by
/// [`f64_key`], then texts byte by byte), and no value's bytes are a prefix of another's,
/// so an index key may carry more bytes after them without disturbing the order.
///
/// Layout: a kind byte (0 boolean, 1 number, 2 text), then the boolean's byte, the
/// number's [`f64_key`], or the text with each 0x00 written as 0x00 0xFF and ended by
/// 0x00 0x00.
pub fn value_key(value: &Value) -> Vec<u8> {
    let mut key = Vec::new();
    push_value_key(&mut key, value);
    key
}

/// Appends [`value_key`] of `value` to `key`.
pub fn push_value_key(key: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(flag) => key.extend_from_slice(&[0, u8::from(*flag)]),
        Value::Number(number) => {
            key.push(1);
            key.extend_from_slice(&f64_key(*number));
        }
        Value::Text(text) => {
            key.push(2);
            push_escaped(key, text.as_bytes());
        }
    }
}

/// The value at the start of `bytes` written by [`value_key`], and how many bytes it
/// took; `None` when they are not such a key.
pub fn value_from_key(bytes: &[u8]) -> Option<(Value, usize)> {
    let (&kind, rest) = bytes.split_first()?;
    match kind {
        0 => match rest.first()? {
            0 => Some((Value::Bool(false), 2)),
            1 => Some((Value::Bool(true), 2)),
            _ => None,
        },
        1 => {
            let number: [u8; 8] = rest.get(..8)?.try_into().ok()?;
            Some((Value::Number(f64_from_key(number)), 9))
        }
        2 => {
            let (text, used) = read_escaped(rest)?;
            Some((Value::Text(String::from_utf8(text).ok()?), 1 + used))
        }
        _ => None,
    }
}

/// Order-preserving, self-delimiting bytes of a [`Position`]: comparing them gives
/// `Position`'s order (sweep creation time, sweep id, trial index).
pub fn position_key(position: &Position) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + position.sweep_id.len() + 2 + 8);
    push_position_key(&mut key, position);
    key
}

/// Appends [`position_key`] of `position` to `key`.
pub fn push_position_key(key: &mut Vec<u8>, position: &Position) {
    let created = (position.sweep_created_ms as u64) ^ (1 << 63);
    key.extend_from_slice(&created.to_be_bytes());
    push_escaped(key, position.sweep_id.as_bytes());
    key.extend_from_slice(&position.index.to_be_bytes());
}

/// The position at the start of `bytes` written by [`position_key`], and how many bytes
/// it took.
pub fn position_from_key(bytes: &[u8]) -> Option<(Position, usize)> {
    let created: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    let sweep_created_ms = (u64::from_be_bytes(created) ^ (1 << 63)) as i64;
    let (sweep_id, used) = read_escaped(&bytes[8..])?;
    let start = 8 + used;
    let index: [u8; 8] = bytes.get(start..start + 8)?.try_into().ok()?;
    let position = Position {
        sweep_created_ms,
        sweep_id: String::from_utf8(sweep_id).ok()?,
        index: u64::from_be_bytes(index),
    };
    Some((position, start + 8))
}

/// `bytes` with 0x00 written as 0x00 0xFF, then 0x00 0x00: order-preserving and
/// self-delimiting.
fn push_escaped(key: &mut Vec<u8>, bytes: &[u8]) {
    for &byte in bytes {
        key.push(byte);
        if byte == 0 {
            key.push(0xff);
        }
    }
    key.extend_from_slice(&[0, 0]);
}

/// The inverse of [`push_escaped`]: the bytes and how many key bytes they took.
fn read_escaped(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        match *bytes.get(i)? {
            0 => match *bytes.get(i + 1)? {
                0 => return Some((out, i + 2)),
                0xff => {
                    out.push(0);
                    i += 2;
                }
                _ => return None,
            },
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
}

// ----- leaderboard tasks -----

/// Score names tried per task, best first: `eval/<task>/acc_norm`, then `acc`, then `mc2`.
pub const TASK_SCORES: [&str; 3] = ["acc_norm", "acc", "mc2"];

/// The task scores of a run under the Open-LLM-Leaderboard convention: every metric
/// named `eval/<task>/<score>` with `<score>` one of [`TASK_SCORES`] makes `<task>` a
/// task, scored by the first of `acc_norm`, `acc`, `mc2` the run reported.
pub fn task_scores(metrics: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let mut best: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for (name, value) in metrics {
        let Some(rest) = name.strip_prefix("eval/") else {
            continue;
        };
        let Some((task, score)) = rest.rsplit_once('/') else {
            continue;
        };
        let Some(rank) = TASK_SCORES.iter().position(|s| *s == score) else {
            continue;
        };
        if task.is_empty() || !value.is_finite() {
            continue;
        }
        let entry = best.entry(task.to_string()).or_insert((rank, *value));
        if rank < entry.0 {
            *entry = (rank, *value);
        }
    }
    best.into_iter().map(|(task, (_, v))| (task, v)).collect()
}

/// The mean of a run's task scores, when it has any.
pub fn tasks_average(metrics: &BTreeMap<String, f64>) -> Option<f64> {
    let scores = task_scores(metrics);
    if scores.is_empty() {
        return None;
    }
    Some(scores.values().sum::<f64>() / scores.len() as f64)
}

#[cfg(test)]
mod tests;
