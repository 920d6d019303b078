//! Property-based fuzzing of the parsers that see untrusted text: sweep files
//! ([`parse_sweep`]), `@ladder` metric lines ([`parse_metric_line`]) and the run query
//! language (`--where`, `--sort` and `--cursor`: [`parse_where`], [`parse_sort_keys`],
//! [`parse_cursor`]).
//!
//! Each property runs a fixed number of generated inputs through `ladder_fuzz::fuzz` and
//! prints how many it executed (`cargo nextest run -p ladder-spec -E 'test(fuzz_)'
//! --no-capture`). A panic anywhere in a parser fails the property with the shrunk input.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{TestCaseError, TestRunner};

use crate::{parse_sweep, SweepSpec};
use ladder_fuzz::fuzz;
use ladder_limits::{MAX_CURSOR_BYTES, MAX_QUERY_BYTES, MAX_QUERY_DEPTH, MAX_SORT_KEYS};
use ladder_metrics::line::{parse_metric_line, parse_metric_line_detailed};
use ladder_query::{
    parse_cursor, parse_sort_keys, parse_where, Op, RunFacts, Value, MAX_TREE_DEPTH, STATUSES,
};

// ----- sweep files -----

const FILE: &str = "fuzz.yaml";

/// A valid sweep using most of the language.
const VALID_SWEEP: &str = r#"name: lr-width
project: demo
description: free text
method: bayes
bayes: {multivariate: false}
metric: {name: eval/loss, goal: minimize}
parallel: 4
max_runs: 30
seed: 0
max_restarts: 3
resources: {gpus: 0, labels: {pool: cpu}}
parameters:
  lr:        {distribution: log_uniform, min: 1.0e-4, max: 3.0e-2}
  warmup:    {distribution: int_uniform, min: 0, max: 200}
  width:     {distribution: q_log_uniform, min: 16, max: 512, q: 16}
  optimizer: {values: [adamw, sgd], probabilities: [0.7, 0.3]}
  momentum:  {distribution: uniform, min: 0.5, max: 0.99, when: {optimizer: sgd}}
  noise:     {distribution: normal, mu: 0, sigma: 1.5}
  lora:      {parameters: {rank: {values: [4, 8, 16]}, alpha: {value: 16}}}
early_terminate: {type: asha, metric: eval/loss, min_step: 3, max_step: 81, reduction_factor: 3}
command: [python3, "{{ladder.code_dir}}/train.py", --lr, "{{lr}}", "--rank={{lora.rank}}"]
"#;

/// A valid grid sweep in block style.
const VALID_GRID: &str = "name: grid
method: grid
parallel: 2
metric:
  name: acc
parameters:
  lr:
    values: [0.1, 0.01, 0.001]
  depth:
    distribution: q_uniform
    min: 1
    max: 9
    q: 2
  act:
    value: relu
command:
  - python3
  - train.py
  - --lr={{lr}}
  - --depth={{depth}}
";

/// Checks every documented property of a `parse_sweep` result on `text`.
fn check_sweep(text: &str) -> Result<Option<SweepSpec>, TestCaseError> {
    match parse_sweep(FILE, text) {
        Ok(spec) => {
            // The coordinator stores the spec as JSON: the round trip must be lossless.
            let json = serde_json::to_string(&spec)
                .map_err(|e| TestCaseError::fail(format!("serialize: {e}")))?;
            let back: SweepSpec = serde_json::from_str(&json)
                .map_err(|e| TestCaseError::fail(format!("deserialize {json}: {e}")))?;
            prop_assert_eq!(&back, &spec, "JSON round trip changed the spec: {}", json);
            Ok(Some(spec))
        }
        Err(errors) => {
            prop_assert!(!errors.0.is_empty(), "an Err without errors");
            // Lines as YAML counts them: "\r\n", "\r" and "\n" all end a line.
            let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
            let lines: Vec<&str> = normalized.split('\n').collect();
            for error in &errors.0 {
                prop_assert_eq!(&error.file, FILE);
                prop_assert!(error.line >= 1 && error.column >= 1, "{}", error);
                prop_assert!(
                    error.line <= lines.len() + 1,
                    "{} is past the last line ({} lines)",
                    error,
                    lines.len()
                );
                let width = lines
                    .get(error.line - 1)
                    .map_or(0, |line| line.chars().count());
                prop_assert!(
                    error.column <= width + 1,
                    "{} is past the end of its line ({} characters)",
                    error,
                    width
                );
                prop_assert!(!error.message.is_empty());
                prop_assert_eq!(
                    error.to_string(),
                    format!("{FILE}:{}:{}: {}", error.line, error.column, error.message)
                );
            }
            let display = errors.to_string();
            prop_assert_eq!(display.lines().count() >= errors.0.len(), true);
            Ok(None)
        }
    }
}

/// Tokens that YAML gives meaning to, plus a few plain words and numbers.
fn yaml_token() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            ":", ": ", "{", "}", "[", "]", "-", "- ", ",", ", ", "#", "&", "&a ", "*a", "*b",
            "&b ", "!", "!!str ", "!!int ", "|", ">", "'", "\"", "%", "@", "?", "? ", "<<: ",
            "\n", "\n  ", "\n    ", "\t", " ", "  ", "---\n", "...\n", "\\", "\r\n",
            "name", "method", "grid", "random", "parameters", "values", "value",
            "distribution", "command", "min", "max", "q", "when", "metric", "{{x}}", "{{",
            "x", "0", "1", "-1", "0.5", "1e400", ".nan", ".inf", "-.inf", "-0",
            "1180591620717411303424", "0x", "0o7", "~", "null", "true",
        ])
        .prop_map(String::from),
        1 => any::<char>().prop_map(String::from),
    ]
}

fn yaml_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(yaml_token(), 0..120).prop_map(|tokens| tokens.concat())
}

#[test]
fn fuzz_sweep_arbitrary_unicode_never_panics() {
    fuzz("sweep/unicode", 5_000, "(?s).{0,300}", |text| {
        check_sweep(&text).map(drop)
    });
}

#[test]
fn fuzz_sweep_yaml_punctuation_never_panics() {
    fuzz("sweep/yaml-punctuation", 6_000, yaml_soup(), |text| {
        check_sweep(&text).map(drop)
    });
}

/// One edit of a valid file.
#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    /// Inserts text at a character position (taken modulo the length).
    Insert(usize, String),
    /// Deletes up to `len` characters at a position.
    Delete(usize, usize),
    /// Replaces the n-th number-like scalar with an edge value.
    Number(usize, &'static str),
    /// Replaces the n-th plain word with a long string.
    Long(usize, usize),
}

const EDGE_NUMBERS: &[&str] = &[
    ".nan",
    ".NaN",
    ".inf",
    "-.inf",
    "1e400",
    "-1e400",
    "-0",
    "-0.0",
    "0",
    "1e-400",
    "1180591620717411303424",
    "-1180591620717411303424",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "9007199254740993",
    "4.9e-324",
    "1.7976931348623157e308",
    "0x7fffffffffffffffffff",
    "0.1",
    "3",
    "-3",
    "\"3\"",
    "[]",
    "{}",
    "~",
    "true",
    "1.0000000000000002",
    "123456789.123456789",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0..40usize).prop_map(Mutation::DeleteLine),
        (0..40usize).prop_map(Mutation::DuplicateLine),
        (0..40usize, 0..40usize).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (any::<usize>(), yaml_token()).prop_map(|(at, text)| Mutation::Insert(at, text)),
        (any::<usize>(), 1..8usize).prop_map(|(at, len)| Mutation::Delete(at, len)),
        (0..30usize, prop::sample::select(EDGE_NUMBERS)).prop_map(|(n, v)| Mutation::Number(n, v)),
        (0..60usize, prop::sample::select(vec![1_000usize, 20_000]))
            .prop_map(|(n, len)| Mutation::Long(n, len)),
    ]
}

fn apply(text: &str, mutation: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let n = lines.len();
    match mutation {
        Mutation::DeleteLine(i) => {
            lines.remove(i % n);
        }
        Mutation::DuplicateLine(i) => {
            let line = lines[i % n].clone();
            lines.insert(i % n, line);
        }
        Mutation::SwapLines(a, b) => lines.swap(a % n, b % n),
        Mutation::Insert(at, insert) => {
            let mut chars: Vec<char> = text.chars().collect();
            let at = at % (chars.len() + 1);
            chars.splice(at..at, insert.chars());
            return chars.into_iter().collect();
        }
        Mutation::Delete(at, len) => {
            let mut chars: Vec<char> = text.chars().collect();
            let at = at % (chars.len() + 1);
            let end = (at + len).min(chars.len());
            chars.drain(at..end);
            return chars.into_iter().collect();
        }
        Mutation::Number(k, value) => return replace_nth(text, *k, is_number_word, value),
        Mutation::Long(k, len) => {
            return replace_nth(
                text,
                *k,
                |w| w.chars().all(char::is_alphabetic),
                &"w".repeat(*len),
            )
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

fn is_number_word(word: &str) -> bool {
    !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | '-'))
        && word.chars().any(|c| c.is_ascii_digit())
}

/// Replaces the `k`-th (modulo the count) word matching `predicate`.
fn replace_nth(text: &str, k: usize, predicate: impl Fn(&str) -> bool, with: &str) -> String {
    let is_word = |c: char| c.is_alphanumeric() || matches!(c, '.' | '-' | '_');
    let mut words = Vec::new();
    let mut start = None;
    for (i, c) in text
        .char_indices()
        .chain(std::iter::once((text.len(), ' ')))
    {
        match (start, is_word(c)) {
            (None, true) => start = Some(i),
            (Some(s), false) => {
                if predicate(&text[s..i]) {
                    words.push(s..i);
                }
                start = None;
            }
            _ => {}
        }
    }
    if words.is_empty() {
        return text.to_string();
    }
    let range = words[k % words.len()].clone();
    format!("{}{}{}", &text[..range.start], with, &text[range.end..])
}

#[test]
fn fuzz_sweep_mutations_of_valid_files_never_panic() {
    for base in [VALID_SWEEP, VALID_GRID] {
        let spec = check_sweep(base).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            spec.is_some(),
            "{:?}",
            parse_sweep(FILE, base).unwrap_err().to_string()
        );
    }
    let strategy = (prop::bool::ANY, prop::collection::vec(mutation(), 1..6));
    let mut valid = 0u64;
    let executions = fuzz("sweep/mutations", 5_000, strategy, |(grid, mutations)| {
        let mut text = if grid { VALID_GRID } else { VALID_SWEEP }.to_string();
        for mutation in &mutations {
            text = apply(&text, mutation);
        }
        check_sweep(&text).map(drop)
    });
    // Count how many mutants were still valid (reported, not asserted: it shows that
    // the round-trip property saw real specs).
    let mut runner = TestRunner::deterministic();
    for _ in 0..500 {
        let (grid, mutations) = (prop::bool::ANY, prop::collection::vec(mutation(), 1..3))
            .new_tree(&mut runner)
            .expect("value")
            .current();
        let mut text = if grid { VALID_GRID } else { VALID_SWEEP }.to_string();
        for mutation in &mutations {
            text = apply(&text, mutation);
        }
        valid += u64::from(parse_sweep(FILE, &text).is_ok());
    }
    eprintln!(
        "fuzz sweep/mutations: {executions} executions; {valid} of 500 sampled mutants valid"
    );
}

/// Valid sweeps with generated values (floats of every magnitude, odd strings) exercise
/// the JSON round trip on real specs.
#[test]
fn fuzz_sweep_valid_specs_round_trip_through_json() {
    let float = prop_oneof![
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
        (-1e6..1e6f64),
        (1e-300..1e-290f64),
    ];
    let word = "[A-Za-z_][A-Za-z0-9_ .:/\\\\\"'{}#-]{0,20}";
    let strategy = (
        prop::collection::vec(float.clone(), 1..6),
        prop::collection::vec(word, 1..4),
        any::<i64>(),
        any::<u64>(),
        float.clone(),
        float,
    );
    let mut valid = 0u64;
    let valid_counter = std::cell::Cell::new(0u64);
    fuzz(
        "sweep/json-round-trip",
        3_000,
        strategy,
        |(floats, words, int, seed, a, b)| {
            let floats: Vec<String> = {
                let mut seen = Vec::new();
                for f in floats {
                    let f = if f == 0.0 { 0.0 } else { f };
                    if !seen.contains(&f) {
                        seen.push(f);
                    }
                }
                seen.iter().map(|f| format!("{f:e}")).collect()
            };
            let mut distinct_words: Vec<String> = Vec::new();
            for w in words {
                if !distinct_words.contains(&w) {
                    distinct_words.push(w);
                }
            }
            let strings: Vec<String> = distinct_words
                .iter()
                .map(|w| serde_json::to_string(w).expect("json string"))
                .collect();
            let (lo, hi) = if a < b { (a, b) } else { (b, a) };
            let uniform = if lo < hi {
                format!("  u: {{distribution: uniform, min: {lo:e}, max: {hi:e}}}\n")
            } else {
                String::new()
            };
            let text = format!(
            "name: {name}\nmethod: random\nmax_runs: 5\nseed: {seed}\nparameters:\n  f: {{values: [{floats}]}}\n  s: {{values: [{strings}]}}\n  i: {{value: {int}}}\n{uniform}command: [prog, \"{{{{f}}}}\", \"{{{{s}}}}\"]\n",
            name = strings[0],
            floats = floats.join(", "),
            strings = strings.join(", "),
        );
            if check_sweep(&text)?.is_some() {
                valid_counter.set(valid_counter.get() + 1);
            }
            Ok(())
        },
    );
    valid += valid_counter.get();
    eprintln!("fuzz sweep/json-round-trip: {valid} valid specs round-tripped");
    assert!(valid > 1_000, "too few valid specs generated: {valid}");
}

/// Parses `text`, checks the properties and that it took less than `limit`.
fn parse_within(text: &str, limit: Duration) -> Result<SweepSpec, String> {
    let started = Instant::now();
    let result = parse_sweep(FILE, text);
    let elapsed = started.elapsed();
    assert!(
        elapsed < limit,
        "parsing {} bytes took {elapsed:?} (limit {limit:?})",
        text.len()
    );
    check_sweep(text).unwrap_or_else(|e| panic!("{e}"));
    result.map_err(|errors| errors.to_string())
}

#[test]
fn alias_bombs_are_refused_quickly() {
    // Billion laughs: 10 levels of 10 aliases each would expand to 10^10 nodes.
    let mut laughs = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        laughs.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    let error = parse_within(&laughs, Duration::from_secs(5)).unwrap_err();
    assert!(
        error.contains("aliases expand to more than 100000 nodes"),
        "{error}"
    );
    // The same inside a real sweep, in the values of a parameter.
    let sweep =
        format!("{laughs}name: x\nmethod: grid\ncommand: [a]\nparameters:\n  p: {{values: *a9}}\n");
    let error = parse_within(&sweep, Duration::from_secs(5)).unwrap_err();
    assert!(error.contains("aliases expand"), "{error}");
    // Modest, legitimate aliases still work.
    let ok = "name: x\nmethod: grid\ncommand: [a, \"{{p}}\", \"{{q}}\"]\nparameters:\n  p: &v {values: [1, 2, 3]}\n  q: *v\n";
    parse_within(ok, Duration::from_secs(5)).expect("aliases within budget");
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    let limit = Duration::from_secs(5);
    for text in [
        "[".repeat(10_000),
        "{".repeat(10_000),
        format!("{}{}", "[".repeat(200), "]".repeat(200)),
        "- ".repeat(100_000),
        (0..5_000)
            .map(|i| format!("{}k:\n", " ".repeat(i)))
            .collect::<String>(),
        format!(
            "name: x\nparameters:\n{}",
            (1..200)
                .map(|i| format!(
                    "{}g{i}:\n{}  parameters:\n",
                    "    ".repeat(i - 1),
                    "    ".repeat(i - 1)
                ))
                .collect::<String>()
        ),
    ] {
        let error = parse_within(&text, limit).unwrap_err();
        assert!(
            error.contains("nested more than 64 levels") || error.contains("recursion limit"),
            "{}",
            error.lines().next().unwrap_or_default()
        );
    }
    // Nesting within the limit is fine.
    let nested = format!("name: {}1{}\n", "[".repeat(60), "]".repeat(60));
    let error = parse_within(&nested, limit).unwrap_err();
    assert!(error.contains("name must be a string"), "{error}");
}

#[test]
fn huge_files_parse_in_linear_time() {
    let limit = Duration::from_secs(20);
    // Every structure at 0.5 to 1 MiB (the coordinator's limit is 1 MiB): long lists, many keys, many
    // parameters, many conditions, a long command. Quadratic checks used to take minutes.
    let values: String = (0..100_000)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    parse_within(
        &format!("name: x\nmethod: grid\ncommand: [a, \"{{{{p}}}}\"]\nparameters:\n  p: {{values: [{values}]}}\n"),
        limit,
    )
    .expect("valid");
    let keys: String = (0..40_000).map(|i| format!("    k{i}: a\n")).collect();
    parse_within(&format!("name: x\nresources:\n  labels:\n{keys}"), limit).unwrap_err();
    let params: String = (0..20_000)
        .map(|i| format!("  p{i}: {{value: 1, when: {{zz: a}}}}\n"))
        .collect();
    parse_within(
        &format!(
            "name: x\nmethod: grid\ncommand: [a]\nparameters:\n{params}  zz: {{values: [a, b]}}\n"
        ),
        limit,
    )
    .expect("valid");
    let duplicates: String = (0..40_000).map(|_| "  p: {value: 1}\n").collect();
    let error = parse_within(&format!("name: x\nparameters:\n{duplicates}"), limit).unwrap_err();
    assert!(error.contains("duplicate key \"p\""));
    let command = vec!["\"{{p}}\""; 60_000].join(",");
    parse_within(
        &format!("name: x\nmethod: grid\nparameters:\n  p: {{value: 1}}\ncommand: [{command}]\n"),
        limit,
    )
    .expect("valid");
}

// ----- metric lines -----

/// A metric line's result holds only finite values and a non-negative step.
fn check_metric_line(line: &str) -> Result<(), TestCaseError> {
    let plain = parse_metric_line(line);
    let detailed = parse_metric_line_detailed(line);
    prop_assert_eq!(plain.is_some(), detailed.is_some());
    if let Some(Ok(point)) = plain {
        prop_assert!(!point.values.is_empty(), "Ok without values for {:?}", line);
        for (name, value) in &point.values {
            prop_assert!(value.is_finite(), "{:?} = {} from {:?}", name, value, line);
            prop_assert!(
                !name.is_empty() && name.len() <= ladder_metrics::line::MAX_METRIC_NAME_BYTES
            );
        }
        if let Some(step) = point.step {
            prop_assert!(step >= 0);
        }
    }
    Ok(())
}

fn json_number() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "NaN",
            "nan",
            "-NaN",
            "Infinity",
            "-Infinity",
            "inf",
            "1e400",
            "-1e400",
            "1e308",
            "-1e308",
            "1E+400",
            "1180591620717411303424",
            "-1180591620717411303424",
            "18446744073709551616",
            "9223372036854775808",
            "-0",
            "0.0",
            "4.9e-324",
            "1e-400",
            "0.1",
            "-5",
            "00",
            "1.",
            ".5",
            "+1",
            "0x10",
            "true",
            "false",
            "null",
            "\"1\"",
            "[1]",
            "{\"a\": 1}",
            "{\"a\": {\"b\": {\"c\": 1}}}",
        ])
        .prop_map(String::from),
        any::<f64>().prop_map(|f| format!("{f}")),
        any::<i64>().prop_map(|i| i.to_string()),
        "[0-9]{1,400}",
        "-?[0-9]{1,3}(\\.[0-9]{0,30})?([eE][-+]?[0-9]{1,5})?",
    ]
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["step", "loss", "acc", "", "eval/acc", "step "])
            .prop_map(String::from),
        "[a-z/_\\\\\"]{0,10}",
        (250..300usize).prop_map(|n| "k".repeat(n)),
        "\\PC{0,8}",
    ]
}

fn metric_line() -> impl Strategy<Value = String> {
    let entry = (json_key(), json_number()).prop_map(|(key, value)| {
        let key = serde_json::to_string(&key).expect("json string");
        format!("{key}: {value}")
    });
    prop_oneof![
        // Objects of entries (duplicate keys come up by chance: "step", "loss", ...).
        (
            prop::sample::select(vec![
                "@ladder ",
                "@ladder",
                "@ladder\t",
                " @ladder ",
                "@ladder  "
            ]),
            prop::collection::vec(entry, 0..8),
            prop::sample::select(vec!["", "}", "\r", "\n", "\r\n", " trailing", ","]),
        )
            .prop_map(|(prefix, entries, end)| format!("{prefix}{{{}}}{end}", entries.join(", "))),
        // Arbitrary text after the prefix, and arbitrary text.
        "@ladder(?s).{0,200}",
        "(?s).{0,200}",
        // Nesting.
        (1..200usize).prop_map(|n| format!(
            "@ladder {{\"x\": 1, \"deep\": {}1{}}}",
            "[".repeat(n),
            "]".repeat(n)
        )),
        // Non-UTF-8 bytes, converted lossily as the agent does.
        prop::collection::vec(any::<u8>(), 0..100).prop_map(|mut bytes| {
            let mut line = b"@ladder {\"loss\": 1, \"".to_vec();
            line.append(&mut bytes);
            line.extend_from_slice(b"\": 2}");
            String::from_utf8_lossy(&line).into_owned()
        }),
    ]
}

#[test]
fn fuzz_metric_lines_give_only_finite_values() {
    fuzz("metric-line/structured", 10_000, metric_line(), |line| {
        check_metric_line(&line)
    });
    fuzz("metric-line/unicode", 5_000, "(?s).{0,300}", |line| {
        check_metric_line(&line)
    });
}

#[test]
fn hostile_metric_lines() {
    let long_key = "k".repeat(1_000_000);
    let deep = format!(
        "@ladder {{\"x\": 1, \"d\": {}1{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let huge_line = format!(
        "@ladder {{\"x\": 1, \"pad\": \"{}\"}}",
        "p".repeat(200 * 1024)
    );
    let lines = [
        "@ladder {\"x\": NaN}".to_string(),
        "@ladder {\"x\": Infinity}".to_string(),
        "@ladder {\"x\": -Infinity}".to_string(),
        "@ladder {\"x\": 1e400}".to_string(),
        "@ladder {\"x\": -1e400}".to_string(),
        "@ladder {\"x\": 1180591620717411303424}".to_string(),
        "@ladder {\"x\": 1, \"x\": 1e400}".to_string(),
        "@ladder {\"x\": 1, \"x\": 2}".to_string(),
        "@ladder {\"step\": 1, \"step\": -1, \"x\": 1}".to_string(),
        "@ladder {\"step\": 1180591620717411303424, \"x\": 1}".to_string(),
        "@ladder {\"step\": 9223372036854775807, \"x\": 1}".to_string(),
        "@ladder {\"step\": 9.3e18, \"x\": 1}".to_string(),
        "@ladder {\"x\": {\"y\": 1}}".to_string(),
        format!("@ladder {{\"{long_key}\": 1}}"),
        deep.clone(),
        huge_line,
        String::from_utf8_lossy(b"@ladder {\"x\xff\xfe\": 1}").into_owned(),
        String::from_utf8_lossy(b"@ladder {\"x\": 1\xff}").into_owned(),
    ];
    for line in &lines {
        check_metric_line(line).unwrap_or_else(|e| panic!("{e}"));
    }
    let ok = |line: &str| parse_metric_line(line).unwrap().unwrap();
    assert_eq!(
        ok("@ladder {\"x\": 1, \"x\": 2}").values["x"],
        2.0,
        "the last duplicate wins"
    );
    assert_eq!(
        ok("@ladder {\"x\": 1180591620717411303424}").values["x"],
        2f64.powi(70)
    );
    assert!(parse_metric_line("@ladder {\"x\": 1, \"x\": 1e400}")
        .unwrap()
        .is_err());
    // Nesting deeper than serde_json's limit (128) is an error, not a stack overflow.
    assert!(parse_metric_line(&deep).unwrap().is_err());
    assert!(parse_metric_line(&format!("@ladder {{\"{long_key}\": 1}}"))
        .unwrap()
        .is_err());
}

// ----- run queries -----

/// A run the query fuzzers evaluate: one metric, a status and tags among `a`, `b`, `c`.
#[derive(Debug, Clone)]
struct QueryRun {
    metric: Option<i32>,
    status: &'static str,
    tags: Vec<&'static str>,
}

impl RunFacts for QueryRun {
    fn param(&self, _name: &str) -> Option<Value> {
        None
    }
    fn metric(&self, name: &str) -> Option<f64> {
        (name == "m").then_some(self.metric?.into())
    }
    fn status(&self) -> &str {
        self.status
    }
    fn sweep(&self) -> &str {
        "s"
    }
    fn project(&self) -> &str {
        "p"
    }
    fn owner(&self) -> &str {
        "o"
    }
    fn has_tag(&self, tag: &str) -> bool {
        self.tags.contains(&tag)
    }
    fn agent(&self) -> &str {
        ""
    }
    fn created_ms(&self) -> i64 {
        0
    }
}

fn query_run() -> impl Strategy<Value = QueryRun> {
    (
        proptest::option::of(-3i32..3),
        prop::sample::select(STATUSES.to_vec()),
        prop::sample::subsequence(vec!["a", "b", "c"], 0..=3),
    )
        .prop_map(|(metric, status, tags)| QueryRun {
            metric,
            status,
            tags,
        })
}

/// Checks what `parse_where` promises for any text: no panic (the caller sees one), an
/// error positioned within the text, a tree no deeper than [`MAX_TREE_DEPTH`] that
/// evaluates. Runs on a 256 KiB stack so that unbounded recursion aborts the test.
fn check_query(text: String) -> Result<(), TestCaseError> {
    let checked = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || -> Result<(), String> {
            let width = text.chars().count();
            match parse_where("--where", &text, 0) {
                Ok(expr) => {
                    if text.len() > MAX_QUERY_BYTES {
                        return Err(format!("{} bytes accepted", text.len()));
                    }
                    if expr.depth() > MAX_TREE_DEPTH {
                        return Err(format!("a tree {} deep", expr.depth()));
                    }
                    let run = QueryRun {
                        metric: Some(0),
                        status: "failed",
                        tags: vec!["a"],
                    };
                    let _ = expr.matches(&run);
                    Ok(())
                }
                Err(error) => {
                    if error.column < 1 || error.column > width + 1 || error.message.is_empty() {
                        return Err(format!("{error} is outside {width} characters"));
                    }
                    Ok(())
                }
            }
        })
        .expect("spawn a thread")
        .join();
    match checked {
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => Err(TestCaseError::fail(message)),
        Err(_) => Err(TestCaseError::fail("parse_where panicked")),
    }
}

/// Tokens of the query language, runs of openers, and a few other characters.
fn query_token() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec![
            "(", ")", "[", "]", ",", " ", "  ", "\t", "\n", "not ", "NOT ", "and ", " AND ",
            "or ", " or ", "in ", "=", "==", "!=", "<", "<=", ">", ">=", "=<", "<>", "!",
            "\"", "'", "\\", "metrics.m", "metrics.", "params.lr", "param.lr", "status",
            "tag", "tags", "created", "project", "sweep", "owner", "agent", "failed",
            "completed", "x", "0", "-1", "1e400", "NaN", "inf", "-2h", "-1e300d",
            "2024-05-01T12:00:00Z", "2024-13-01", "((((((((((", "))))))))))",
            "not not not not ", "not (not (not (", "é", "\u{0}",
        ])
        .prop_map(String::from),
        1 => any::<char>().prop_map(String::from),
    ]
}

#[test]
fn fuzz_query_arbitrary_unicode_never_panics() {
    fuzz("query/unicode", 5_000, "(?s).{0,300}", check_query);
}

#[test]
fn fuzz_query_token_soup_never_panics() {
    // Short soups, and soups repeated up to 600 times: beyond the length limit.
    let soup = prop::collection::vec(query_token(), 0..60).prop_map(|tokens| tokens.concat());
    let strategy = (soup, prop_oneof![3 => Just(1usize), 1 => 1usize..600])
        .prop_map(|(text, times)| text.repeat(times));
    fuzz("query/token-soup", 5_000, strategy, check_query);
}

/// A query built to be deep or long: `openers` (`not ` when true, `(` when false) around
/// a parenthesised chain `(status = failed and tag = a and ...)` of `chain` more
/// conditions, the parentheses closed, then `pad` spaces.
#[derive(Debug, Clone)]
struct DeepQuery {
    openers: Vec<bool>,
    or: bool,
    chain: usize,
    pad: usize,
}

impl DeepQuery {
    /// The text and the column of each opener.
    fn render(&self) -> (String, Vec<usize>) {
        let mut text = String::new();
        let mut columns = Vec::new();
        for &not in &self.openers {
            columns.push(text.len() + 1);
            text.push_str(if not { "not " } else { "(" });
        }
        columns.push(text.len() + 1);
        text.push_str("(status = failed");
        let joiner = if self.or {
            " or tag = a"
        } else {
            " and tag = a"
        };
        text.push_str(&joiner.repeat(self.chain));
        let parens = self.openers.iter().filter(|not| !**not).count();
        text.push_str(&")".repeat(parens + 1));
        text.push_str(&" ".repeat(self.pad));
        (text, columns)
    }
}

#[test]
fn fuzz_query_deep_and_long_inputs_are_refused_at_the_limits() {
    let strategy = (
        prop::collection::vec(any::<bool>(), 0..200),
        any::<bool>(),
        prop_oneof![0usize..20, 0usize..3_000],
        prop_oneof![Just(0usize), 0usize..20_000],
        prop::collection::vec(query_run(), 1..6),
    )
        .prop_map(|(openers, or, chain, pad, runs)| {
            (
                DeepQuery {
                    openers,
                    or,
                    chain,
                    pad,
                },
                runs,
            )
        });
    fuzz("query/deep-and-long", 2_000, strategy, |(query, runs)| {
        let (text, columns) = query.render();
        check_query(text.clone())?;
        let result = parse_where("--where", &text, 0);
        if text.len() > MAX_QUERY_BYTES {
            let error = result.expect_err("too long");
            prop_assert_eq!(error.column, MAX_QUERY_BYTES + 1);
            prop_assert!(error.message.contains("longer than the limit"), "{}", error);
            return Ok(());
        }
        if columns.len() > MAX_QUERY_DEPTH {
            let error = result.expect_err("too deep");
            prop_assert_eq!(error.column, columns[MAX_QUERY_DEPTH]);
            prop_assert!(error.message.contains("nested more than 64 levels deep"));
            return Ok(());
        }
        let expr = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
        let nots = query.openers.iter().filter(|not| **not).count();
        for run in &runs {
            let failed = run.status == "failed";
            let tagged = run.tags.contains(&"a") && query.chain > 0;
            let chain = if query.or {
                failed || tagged
            } else {
                failed && (query.chain == 0 || run.tags.contains(&"a"))
            };
            prop_assert_eq!(expr.matches(run), chain ^ (nots % 2 == 1), "{:?}", run);
        }
        Ok(())
    });
}

/// A valid query as a tree, evaluated directly: the reference `parse_where` must agree
/// with.
#[derive(Debug, Clone)]
enum QueryModel {
    Metric(Op, i32),
    StatusIn(Vec<&'static str>),
    Tag { equal: bool, tag: &'static str },
    Not(Box<QueryModel>),
    Paren(Box<QueryModel>),
    All(Vec<QueryModel>),
    Any(Vec<QueryModel>),
}

impl QueryModel {
    fn eval(&self, run: &QueryRun) -> bool {
        match self {
            QueryModel::Metric(op, value) => run.metric.is_some_and(|m| match op {
                Op::Eq => m == *value,
                Op::Ne => m != *value,
                Op::Lt => m < *value,
                Op::Le => m <= *value,
                Op::Gt => m > *value,
                Op::Ge => m >= *value,
            }),
            QueryModel::StatusIn(statuses) => statuses.contains(&run.status),
            QueryModel::Tag { equal, tag } => run.tags.contains(tag) == *equal,
            QueryModel::Not(inner) => !inner.eval(run),
            QueryModel::Paren(inner) => inner.eval(run),
            QueryModel::All(terms) => terms.iter().all(|t| t.eval(run)),
            QueryModel::Any(terms) => terms.iter().any(|t| t.eval(run)),
        }
    }

    /// The query text; `loud` writes keywords in capitals, `==` for `=` and more space.
    fn render(&self, loud: bool) -> String {
        let (and, or, not, space) = if loud {
            ("  AND\t", " OR\n ", "NOT  ", "  ")
        } else {
            (" and ", " or ", "not ", " ")
        };
        match self {
            QueryModel::Metric(op, value) => {
                let op = match op {
                    Op::Eq if loud => "==",
                    Op::Eq => "=",
                    Op::Ne => "!=",
                    Op::Lt => "<",
                    Op::Le => "<=",
                    Op::Gt => ">",
                    Op::Ge => ">=",
                };
                format!("metrics.m{space}{op}{space}{value}")
            }
            QueryModel::StatusIn(statuses) => {
                let statuses: Vec<String> = statuses
                    .iter()
                    .map(|s| {
                        if loud {
                            s.to_uppercase()
                        } else {
                            s.to_string()
                        }
                    })
                    .collect();
                format!("status in [{}]", statuses.join(","))
            }
            QueryModel::Tag { equal, tag } => {
                format!("tag {} '{tag}'", if *equal { "=" } else { "!=" })
            }
            QueryModel::Not(inner) => match **inner {
                QueryModel::All(_) | QueryModel::Any(_) => {
                    format!("{not}({})", inner.render(loud))
                }
                _ => format!("{not}{}", inner.render(loud)),
            },
            QueryModel::Paren(inner) => format!("({})", inner.render(loud)),
            QueryModel::All(terms) => terms
                .iter()
                .map(|term| match term {
                    QueryModel::Any(_) => format!("({})", term.render(loud)),
                    _ => term.render(loud),
                })
                .collect::<Vec<_>>()
                .join(and),
            QueryModel::Any(terms) => terms
                .iter()
                .map(|term| term.render(loud))
                .collect::<Vec<_>>()
                .join(or),
        }
    }
}

fn query_model() -> impl Strategy<Value = QueryModel> {
    let op = prop::sample::select(vec![Op::Eq, Op::Ne, Op::Lt, Op::Le, Op::Gt, Op::Ge]);
    let leaf = prop_oneof![
        (op, -3i32..3).prop_map(|(op, value)| QueryModel::Metric(op, value)),
        prop::collection::vec(prop::sample::select(STATUSES.to_vec()), 1..4)
            .prop_map(QueryModel::StatusIn),
        (any::<bool>(), prop::sample::select(vec!["a", "b", "c"]))
            .prop_map(|(equal, tag)| QueryModel::Tag { equal, tag }),
    ];
    leaf.prop_recursive(8, 64, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|m| QueryModel::Not(Box::new(m))),
            inner.clone().prop_map(|m| QueryModel::Paren(Box::new(m))),
            prop::collection::vec(inner.clone(), 2..5).prop_map(QueryModel::All),
            prop::collection::vec(inner, 2..5).prop_map(QueryModel::Any),
        ]
    })
}

#[test]
fn fuzz_query_valid_queries_evaluate_as_written() {
    let strategy = (query_model(), prop::collection::vec(query_run(), 1..8));
    fuzz("query/valid", 3_000, strategy, |(model, runs)| {
        let text = model.render(false);
        let expr = parse_where("--where", &text, 0)
            .map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        // The same query written differently parses to the same tree.
        let loud = model.render(true);
        let same = parse_where("--where", &loud, 0)
            .map_err(|e| TestCaseError::fail(format!("{loud}: {e}")))?;
        prop_assert_eq!(&same, &expr, "{} / {}", text, loud);
        prop_assert!(expr.depth() <= MAX_TREE_DEPTH);
        for run in &runs {
            prop_assert_eq!(expr.matches(run), model.eval(run), "{} on {:?}", text, run);
        }
        Ok(())
    });
}

#[test]
fn fuzz_query_sort_keys_and_cursors_never_panic() {
    let key = prop_oneof![
        4 => prop::sample::select(vec![
            "metrics.m", "-metrics.m", "+params.lr", "created", "tag", "-", "", " status ",
        ])
        .prop_map(String::from),
        1 => "(?s).{0,40}",
        1 => (Just("x"), 0usize..20_000).prop_map(|(s, n)| s.repeat(n)),
    ];
    let cursor = prop_oneof![
        "[0-9a-f]{0,200}",
        "(?s).{0,100}",
        (Just("7b"), 0usize..5_000).prop_map(|(s, n)| s.repeat(n)),
    ];
    let strategy = (prop::collection::vec(key, 0..40), cursor);
    fuzz(
        "query/sort-and-cursor",
        2_000,
        strategy,
        |(keys, cursor)| {
            match parse_sort_keys(&keys) {
                Ok(parsed) => {
                    prop_assert!(parsed.len() <= MAX_SORT_KEYS);
                    prop_assert!(keys.iter().all(|k| k.len() <= MAX_QUERY_BYTES));
                }
                Err(error) => prop_assert!(error.column >= 1 && !error.message.is_empty()),
            }
            match parse_cursor(&cursor) {
                Ok(_) => prop_assert!(cursor.len() <= MAX_CURSOR_BYTES),
                Err(error) => {
                    prop_assert!(error.column >= 1 && error.column <= cursor.chars().count() + 1);
                    prop_assert!(!error.message.is_empty());
                }
            }
            Ok(())
        },
    );
}
