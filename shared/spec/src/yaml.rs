//! A spanned YAML tree built from yaml-rust2's marked event parser.
//!
//! yaml-rust2's own `Yaml` tree drops source positions and silently keeps the last of
//! duplicate keys, so the sweep validator builds its own tree: every node (and every
//! mapping key) keeps its 1-based line and column, mapping entries keep file order,
//! duplicate keys are reported, aliases are expanded and `<<` merge keys are applied.
//!
//! Plain scalars are resolved with the YAML 1.2 core schema (null, bool, int, float incl.
//! `1e-4` and `.inf`, else string); quoted and block scalars are always strings. The
//! scalar's source text is kept so that callers that want a string (argv elements,
//! labels) get exactly what the user wrote (`1e-4`, not `0.0001`).

use std::collections::{HashMap, HashSet};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A 1-based source position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    /// The start of the file, used for errors that have no better position.
    pub const START: Pos = Pos { line: 1, column: 1 };

    /// yaml-rust2 markers have 1-based lines and 0-based columns.
    fn from_marker(mark: Marker) -> Pos {
        Pos {
            line: mark.line().max(1),
            column: mark.col() + 1,
        }
    }

    /// This position moved back inside `text`: onto its last line, and at most one
    /// column past the end of that line. The parser can report a syntax error past the
    /// end of a line (after a character it skipped), which no editor can show.
    fn within(self, text: &str) -> Pos {
        let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
        let lines: Vec<&str> = normalized.split('\n').collect();
        let line = self.line.clamp(1, lines.len().max(1));
        let width = lines.get(line - 1).map_or(0, |l| l.chars().count());
        let column = if line == self.line {
            self.column.clamp(1, width + 1)
        } else {
            width + 1
        };
        Pos { line, column }
    }
}

/// The resolved value of a scalar node.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Null,
    Bool(bool),
    /// Wide enough for every `u64` and `i64` literal; range checks are the caller's.
    Int(i128),
    Float(f64),
    Str(String),
}

impl Scalar {
    /// What the scalar is, for "wrong type" messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Bool(_) => "a boolean",
            Scalar::Int(_) => "an integer",
            Scalar::Float(_) => "a float",
            Scalar::Str(_) => "a string",
        }
    }
}

/// One node of the tree with the position where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub kind: NodeKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// `text` is the scalar as written (without quotes).
    Scalar {
        value: Scalar,
        text: String,
    },
    Seq(Vec<Node>),
    /// Entries in file order; keys are unique (duplicates were reported and dropped).
    Map(Vec<Entry>),
}

impl Node {
    /// What the node is, for "wrong type" messages.
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            NodeKind::Scalar { value, .. } => value.type_name(),
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(
            self.kind,
            NodeKind::Scalar {
                value: Scalar::Null,
                ..
            }
        )
    }
}

/// A mapping entry: the key (always a scalar, as text) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

/// A problem found while building the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub pos: Pos,
    pub message: String,
}

/// The result of reading a YAML text that is syntactically valid.
#[derive(Debug)]
pub struct Document {
    /// `None` when the text holds no document at all (empty or only comments).
    pub root: Option<Node>,
    /// Non-fatal structural problems (duplicate keys, non-scalar keys, extra documents).
    pub diagnostics: Vec<Diagnostic>,
}

fn closing(bracket: char) -> char {
    if bracket == '{' {
        '}'
    } else {
        ']'
    }
}

/// The innermost flow collection (`{` or `[` starting a value) still open at `upto`, with
/// where it opened: what a syntax error inside one usually means. Quotes and comments are
/// skipped; a bracket inside a plain scalar (`a: x{y`) is text, not an opener.
fn unclosed_bracket(text: &str, upto: Pos) -> Option<(Pos, char)> {
    let mut open: Vec<(Pos, char)> = Vec::new();
    // YAML breaks lines at "\r\n", "\n" and a lone "\r".
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    for (index, line) in text.split('\n').enumerate() {
        let line_number = index + 1;
        if line_number > upto.line {
            break;
        }
        let mut quote: Option<char> = None;
        let mut escaped = false;
        // The last character that was not a space: a bracket after one of these (or
        // at the start of the line) starts a value.
        let mut previous: Option<char> = None;
        for (column_index, c) in line.chars().enumerate() {
            let column = column_index + 1;
            if line_number == upto.line && column >= upto.column {
                break;
            }
            if let Some(q) = quote {
                if escaped {
                    escaped = false;
                } else if q == '"' && c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
                previous = Some(c);
                continue;
            }
            match c {
                '#' if previous.is_none()
                    || line[..line.char_indices().nth(column_index).map_or(0, |(i, _)| i)]
                        .ends_with([' ', '\t']) =>
                {
                    break
                }
                '"' | '\'' => quote = Some(c),
                '{' | '[' if matches!(previous, None | Some(':' | '-' | ',' | '[' | '{' | '?')) => {
                    open.push((
                        Pos {
                            line: line_number,
                            column,
                        },
                        c,
                    ));
                }
                '}' | ']' if open.last().is_some_and(|(_, b)| closing(*b) == c) => {
                    open.pop();
                }
                _ => {}
            }
            if !c.is_whitespace() {
                previous = Some(c);
            }
        }
    }
    open.pop()
}

/// Parses `text` into a spanned tree.
///
/// A YAML syntax error is returned as the single `Err` diagnostic (nothing after it can be
/// trusted); structural problems are collected in [`Document::diagnostics`].
pub fn parse(text: &str) -> Result<Document, Diagnostic> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    // Events are pulled one by one instead of through `Parser::load`, which recurses once
    // per nesting level and overflows the stack on deeply nested input (`- - - - …`).
    let mut depth = 0usize;
    loop {
        let (event, mark) = parser.next_token().map_err(|error| {
            let at = Pos::from_marker(*error.marker()).within(text);
            match unclosed_bracket(text, at) {
                Some((opened, bracket)) => Diagnostic {
                    pos: opened,
                    message: format!(
                        "\"{bracket}\" opened here is never closed: add \"{}\" (YAML syntax error at {}:{}: {})",
                        closing(bracket),
                        at.line,
                        at.column,
                        error.info()
                    ),
                },
                None => Diagnostic {
                    pos: at,
                    message: format!("YAML syntax error: {}", error.info()),
                },
            }
        })?;
        match event {
            Event::StreamEnd => break,
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(Diagnostic {
                        pos: Pos::from_marker(mark),
                        message: format!(
                            "lists and mappings are nested more than {MAX_DEPTH} levels deep"
                        ),
                    });
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            _ => {}
        }
        builder.on_event(event, mark);
        if builder.expanded > MAX_ALIAS_NODES {
            return Err(Diagnostic {
                pos: Pos::from_marker(mark),
                message: format!(
                    "aliases expand to more than {MAX_ALIAS_NODES} nodes; write the values out \
                     instead of nesting aliases"
                ),
            });
        }
    }
    let mut documents = builder.documents.into_iter();
    let root = documents.next();
    let mut diagnostics = builder.diagnostics;
    if let Some(extra) = documents.next() {
        diagnostics.push(Diagnostic {
            pos: extra.pos,
            message: "a sweep file holds a single YAML document; remove the extra \"---\" document"
                .to_string(),
        });
    }
    Ok(Document { root, diagnostics })
}

/// A collection being built; entries of a mapping are kept as (key node, value node)
/// pairs until the mapping ends so merge keys and duplicates can be handled together.
#[derive(Debug)]
enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        pairs: Vec<(Node, Node)>,
        pending_key: Option<Node>,
    },
}

/// Deepest nesting of lists and mappings accepted (a sweep needs a handful of levels);
/// the tree is walked recursively, so this also bounds stack use.
pub const MAX_DEPTH: usize = 64;
/// Most nodes that aliases may copy in all, so that an "alias bomb" (billion laughs)
/// cannot exhaust memory or time.
pub const MAX_ALIAS_NODES: usize = 100_000;

#[derive(Debug, Default)]
struct Builder {
    stack: Vec<Frame>,
    /// Anchored nodes with their node counts.
    anchors: HashMap<usize, (Node, usize)>,
    /// Nodes copied by aliases so far.
    expanded: usize,
    documents: Vec<Node>,
    diagnostics: Vec<Diagnostic>,
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let pos = Pos::from_marker(mark);
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let value = resolve_scalar(&text, style, tag.as_ref());
                let node = Node {
                    pos,
                    kind: NodeKind::Scalar { value, text },
                };
                self.complete(node, anchor);
            }
            Event::Alias(id) => {
                let node = match self.anchors.get(&id) {
                    // Over budget: `parse` stops before anything is copied.
                    Some((_, count)) if self.expanded + count > MAX_ALIAS_NODES => {
                        self.expanded += count;
                        return;
                    }
                    // The alias site is where the value is used; inner positions stay at
                    // the anchored definition.
                    Some((anchored, count)) => {
                        self.expanded += count;
                        Node {
                            pos,
                            kind: anchored.kind.clone(),
                        }
                    }
                    None => Node {
                        pos,
                        kind: NodeKind::Scalar {
                            value: Scalar::Null,
                            text: String::new(),
                        },
                    },
                };
                self.complete(node, 0);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                pos,
                anchor,
                items: Vec::new(),
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                pos,
                anchor,
                pairs: Vec::new(),
                pending_key: None,
            }),
            Event::SequenceEnd => {
                if let Some(Frame::Seq { pos, anchor, items }) = self.stack.pop() {
                    let node = Node {
                        pos,
                        kind: NodeKind::Seq(items),
                    };
                    self.complete(node, anchor);
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    pos, anchor, pairs, ..
                }) = self.stack.pop()
                {
                    // yaml-rust2 marks a block mapping's start after its first key; the
                    // mapping starts where that key does (a flow mapping's `{` comes first).
                    let pos = pairs.first().map_or(pos, |(key, _)| pos.min(key.pos));
                    let entries = self.finish_mapping(pairs);
                    let node = Node {
                        pos,
                        kind: NodeKind::Map(entries),
                    };
                    self.complete(node, anchor);
                }
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

impl Builder {
    /// Attaches a finished node to its parent (or makes it a document).
    fn complete(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            let count = node_count(&node);
            self.anchors.insert(anchor, (node.clone(), count));
        }
        match self.stack.last_mut() {
            None => self.documents.push(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                pairs, pending_key, ..
            }) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => pairs.push((key, node)),
            },
        }
    }

    /// Turns key/value pairs into entries: keys must be scalars, duplicates are reported
    /// (the first wins), `<<` merge keys insert the merged mapping's entries in place
    /// unless the key is given explicitly.
    fn finish_mapping(&mut self, pairs: Vec<(Node, Node)>) -> Vec<Entry> {
        let mut explicit: Vec<Entry> = Vec::new();
        // Key → position of its first definition (a map, so that huge mappings stay linear).
        let mut first_keys: HashMap<String, Pos> = HashMap::new();
        // Index into `explicit` before which each merge's entries go, with the entries.
        let mut merges: Vec<(usize, Vec<Entry>)> = Vec::new();
        for (key, value) in pairs {
            let NodeKind::Scalar { text, .. } = key.kind else {
                self.diagnostics.push(Diagnostic {
                    pos: key.pos,
                    message: format!("mapping keys must be plain names, not {}", key.type_name()),
                });
                continue;
            };
            if text == "<<" && is_merge(&value) {
                merges.push((explicit.len(), merged_entries(value)));
                continue;
            }
            if let Some(first) = first_keys.get(&text) {
                self.diagnostics.push(Diagnostic {
                    pos: key.pos,
                    message: format!(
                        "duplicate key \"{text}\" (first defined at line {}, column {}); remove one of them",
                        first.line, first.column
                    ),
                });
                continue;
            }
            first_keys.insert(text.clone(), key.pos);
            explicit.push(Entry {
                key: text,
                key_pos: key.pos,
                value,
            });
        }
        if merges.is_empty() {
            return explicit;
        }
        let mut entries: Vec<Entry> = Vec::new();
        let mut merges = merges.into_iter().peekable();
        let mut merged_keys: HashSet<String> = HashSet::new();
        let explicit_keys: HashSet<String> = first_keys.into_keys().collect();
        for (index, entry) in explicit.into_iter().enumerate() {
            while let Some((_, merged)) = merges.next_if(|(at, _)| *at == index) {
                add_merged(&mut entries, &mut merged_keys, &explicit_keys, merged);
            }
            entries.push(entry);
        }
        for (_, merged) in merges {
            add_merged(&mut entries, &mut merged_keys, &explicit_keys, merged);
        }
        entries
    }
}

/// Nodes in a tree (keys not counted), for the alias budget.
fn node_count(node: &Node) -> usize {
    1 + match &node.kind {
        NodeKind::Scalar { .. } => 0,
        NodeKind::Seq(items) => items.iter().map(node_count).sum(),
        NodeKind::Map(entries) => entries.iter().map(|entry| node_count(&entry.value)).sum(),
    }
}

/// Whether a `<<` value is a merge (a mapping or a list of mappings).
fn is_merge(value: &Node) -> bool {
    match &value.kind {
        NodeKind::Map(_) => true,
        NodeKind::Seq(items) => items
            .iter()
            .all(|item| matches!(item.kind, NodeKind::Map(_))),
        NodeKind::Scalar { .. } => false,
    }
}

/// The entries a merge brings in; with a list, earlier mappings take precedence.
fn merged_entries(value: Node) -> Vec<Entry> {
    match value.kind {
        NodeKind::Map(entries) => entries,
        NodeKind::Seq(items) => items
            .into_iter()
            .flat_map(|item| match item.kind {
                NodeKind::Map(entries) => entries,
                _ => Vec::new(),
            })
            .collect(),
        NodeKind::Scalar { .. } => Vec::new(),
    }
}

fn add_merged(
    entries: &mut Vec<Entry>,
    merged_keys: &mut HashSet<String>,
    explicit_keys: &HashSet<String>,
    merged: Vec<Entry>,
) {
    for entry in merged {
        let shadowed = explicit_keys.contains(&entry.key) || !merged_keys.insert(entry.key.clone());
        if !shadowed {
            entries.push(entry);
        }
    }
}

/// Resolves a scalar: quoted/block scalars and `!!str` are strings, plain ones use the
/// core schema.
fn resolve_scalar(text: &str, style: TScalarStyle, tag: Option<&Tag>) -> Scalar {
    if tag.is_some_and(|tag| tag.suffix == "str") || style != TScalarStyle::Plain {
        return Scalar::Str(text.to_string());
    }
    resolve_plain(text)
}

/// YAML 1.2 core schema resolution of a plain scalar.
pub fn resolve_plain(text: &str) -> Scalar {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Scalar::Null,
        "true" | "True" | "TRUE" => return Scalar::Bool(true),
        "false" | "False" | "FALSE" => return Scalar::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Scalar::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Scalar::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Scalar::Float(f64::NAN),
        _ => {}
    }
    if let Some(int) = parse_int(text) {
        return Scalar::Int(int);
    }
    if is_float_syntax(text) {
        if let Ok(float) = text.parse::<f64>() {
            return Scalar::Float(float);
        }
    }
    Scalar::Str(text.to_string())
}

/// `[-+]?[0-9]+`, `0x[0-9a-fA-F]+` or `0o[0-7]+`.
fn parse_int(text: &str) -> Option<i128> {
    if let Some(hex) = text.strip_prefix("0x") {
        return i128::from_str_radix(hex, 16)
            .ok()
            .filter(|_| !hex.starts_with(['+', '-']));
    }
    if let Some(octal) = text.strip_prefix("0o") {
        return i128::from_str_radix(octal, 8)
            .ok()
            .filter(|_| !octal.starts_with(['+', '-']));
    }
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<i128>().ok()
}

/// `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`
fn is_float_syntax(text: &str) -> bool {
    let bytes = text.strip_prefix(['+', '-']).unwrap_or(text).as_bytes();
    let mut i = 0;
    let count_digits = |from: usize| {
        bytes[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let integer_digits = count_digits(i);
    i += integer_digits;
    let mut fraction_digits = 0;
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        fraction_digits = count_digits(i);
        i += fraction_digits;
    }
    if integer_digits == 0 && fraction_digits == 0 {
        return false;
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exponent_digits = count_digits(i);
        if exponent_digits == 0 {
            return false;
        }
        i += exponent_digits;
    }
    i == bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(text: &str) -> Node {
        let document = parse(text).expect("valid YAML");
        assert!(
            document.diagnostics.is_empty(),
            "{:?}",
            document.diagnostics
        );
        document.root.expect("a document")
    }

    fn entries(node: &Node) -> &[Entry] {
        match &node.kind {
            NodeKind::Map(entries) => entries,
            other => panic!("not a mapping: {other:?}"),
        }
    }

    fn scalar(node: &Node) -> &Scalar {
        match &node.kind {
            NodeKind::Scalar { value, .. } => value,
            other => panic!("not a scalar: {other:?}"),
        }
    }

    #[test]
    fn plain_scalars_resolve_with_the_core_schema() {
        assert_eq!(resolve_plain("42"), Scalar::Int(42));
        assert_eq!(resolve_plain("-7"), Scalar::Int(-7));
        assert_eq!(resolve_plain("0x1f"), Scalar::Int(31));
        assert_eq!(resolve_plain("0o17"), Scalar::Int(15));
        assert_eq!(
            resolve_plain("18446744073709551615"),
            Scalar::Int(u64::MAX as i128)
        );
        assert_eq!(resolve_plain("1.0e-4"), Scalar::Float(1.0e-4));
        assert_eq!(resolve_plain("1e-4"), Scalar::Float(1e-4));
        assert_eq!(resolve_plain(".5"), Scalar::Float(0.5));
        assert_eq!(resolve_plain("3."), Scalar::Float(3.0));
        assert_eq!(resolve_plain(".inf"), Scalar::Float(f64::INFINITY));
        assert_eq!(resolve_plain("-.inf"), Scalar::Float(f64::NEG_INFINITY));
        assert!(matches!(resolve_plain(".nan"), Scalar::Float(f) if f.is_nan()));
        assert_eq!(resolve_plain("true"), Scalar::Bool(true));
        assert_eq!(resolve_plain("FALSE"), Scalar::Bool(false));
        assert_eq!(resolve_plain("~"), Scalar::Null);
        assert_eq!(resolve_plain(""), Scalar::Null);
        for string in [
            "inf", "nan", "yes", "1e", "e5", "1.2.3", "0x", "--1", "1_000", ".",
        ] {
            assert_eq!(
                resolve_plain(string),
                Scalar::Str(string.to_string()),
                "{string}"
            );
        }
    }

    #[test]
    fn quoted_scalars_are_strings_and_keep_text() {
        let node = root("a: \"1\"\nb: '2.5'\nc: !!str 3\nd: 1e-4\n");
        let entries = entries(&node);
        assert_eq!(scalar(&entries[0].value), &Scalar::Str("1".into()));
        assert_eq!(scalar(&entries[1].value), &Scalar::Str("2.5".into()));
        assert_eq!(scalar(&entries[2].value), &Scalar::Str("3".into()));
        let NodeKind::Scalar { text, .. } = &entries[3].value.kind else {
            panic!()
        };
        assert_eq!(text, "1e-4");
    }

    #[test]
    fn keys_and_values_keep_positions() {
        let node = root("name: x\nmetric:\n  name: loss\nlist: [1, 2]\n");
        assert_eq!(node.pos, Pos { line: 1, column: 1 });
        let entries = entries(&node);
        assert_eq!(entries[0].key_pos, Pos { line: 1, column: 1 });
        assert_eq!(entries[0].value.pos, Pos { line: 1, column: 7 });
        assert_eq!(entries[1].value.pos, Pos { line: 3, column: 3 });
        let metric = super::tests::entries(&entries[1].value);
        assert_eq!(metric[0].key_pos, Pos { line: 3, column: 3 });
        assert_eq!(metric[0].value.pos, Pos { line: 3, column: 9 });
        assert_eq!(entries[2].value.pos, Pos { line: 4, column: 7 });
        let NodeKind::Seq(items) = &entries[2].value.kind else {
            panic!()
        };
        assert_eq!(
            items[1].pos,
            Pos {
                line: 4,
                column: 11
            }
        );
    }

    #[test]
    fn duplicate_keys_are_reported_at_the_second_occurrence() {
        let document = parse("a: 1\nb: 2\na: 3\n").unwrap();
        assert_eq!(document.diagnostics.len(), 1);
        let diagnostic = &document.diagnostics[0];
        assert_eq!(diagnostic.pos, Pos { line: 3, column: 1 });
        assert!(diagnostic.message.contains("duplicate key \"a\""));
        assert!(diagnostic.message.contains("line 1, column 1"));
        let root = document.root.unwrap();
        assert_eq!(scalar(&entries(&root)[0].value), &Scalar::Int(1));
    }

    #[test]
    fn aliases_and_merge_keys_expand() {
        let node = root("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\ncopy: *b\n");
        let entries = entries(&node);
        let other = super::tests::entries(&entries[1].value);
        let keys: Vec<&str> = other.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["x", "y"]);
        assert_eq!(scalar(&other[1].value), &Scalar::Int(3));
        assert_eq!(entries[2].value.pos, Pos { line: 5, column: 7 });
        assert_eq!(super::tests::entries(&entries[2].value).len(), 2);
    }

    #[test]
    fn syntax_errors_have_positions() {
        let error = parse("a: 1\n  b: 2\n").unwrap_err();
        assert!(error.message.starts_with("YAML syntax error"));
        assert_eq!(error.pos.line, 2);
    }

    /// Found by `fuzz_sweep_yaml_punctuation_never_panics`: the parser put this error at
    /// column 6 of a line of 4 characters.
    #[test]
    fn a_syntax_error_past_the_end_of_its_line_is_shown_at_the_line_end() {
        let text = "a{<<: #---\n|\n  :\u{a1}";
        let error = parse(text).unwrap_err();
        assert!(error.message.starts_with("YAML syntax error"), "{error:?}");
        assert_eq!(error.pos.line, 3, "{error:?}");
        assert!(error.pos.column <= 5, "{error:?}");
    }

    #[test]
    fn an_unclosed_bracket_is_named_where_it_opened() {
        let text =
            "name: t\nparameters:\n  x: {values: [1, 2]\n  y: {value: 1}\ncommand: [\"true\"]\n";
        let error = parse(text).unwrap_err();
        assert_eq!(
            (error.pos.line, error.pos.column),
            (3, 6),
            "{}",
            error.message
        );
        assert!(
            error
                .message
                .starts_with("\"{\" opened here is never closed: add \"}\""),
            "{}",
            error.message
        );
        let error = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert_eq!(
            (error.pos.line, error.pos.column),
            (1, 4),
            "{}",
            error.message
        );
        assert!(error.message.contains("add \"]\""), "{}", error.message);
        // Brackets in quotes, comments and plain text are not openers.
        let error = parse("a: \"{\" # [\nb: x{y\nc: 1\n  d: 2\n").unwrap_err();
        assert!(
            error.message.starts_with("YAML syntax error"),
            "{}",
            error.message
        );
    }

    #[test]
    fn empty_text_has_no_document() {
        assert!(parse("").unwrap().root.is_none());
        assert!(parse("# just a comment\n").unwrap().root.is_none());
    }

    #[test]
    fn extra_documents_are_reported() {
        let document = parse("a: 1\n---\nb: 2\n").unwrap();
        assert_eq!(document.diagnostics.len(), 1);
        assert_eq!(document.diagnostics[0].pos.line, 3);
    }
}
