//! The parser of `--where`: tokens → [`Expr`](crate::Expr), with positioned errors.

use super::*;

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
pub(super) struct Group {
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
pub(super) fn flat(mut terms: Vec<Node>, join: fn(Vec<Node>) -> Node) -> Node {
    debug_assert!(!terms.is_empty());
    if terms.len() == 1 {
        return terms.pop().expect("one term");
    }
    join(terms)
}

pub(super) struct Parser<'a> {
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

pub(super) fn describe(token: &Token) -> String {
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
pub(super) fn too_long(
    source: &str,
    what: &str,
    text: &str,
    limit: usize,
    hint: &str,
) -> QueryError {
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
