//! Tests of `shared/query/src/lib.rs`.

use super::*;
use proptest::prelude::*;

#[derive(Default, Clone, Debug)]
struct Fake {
    params: BTreeMap<String, Value>,
    metrics: BTreeMap<String, f64>,
    status: String,
    tags: Vec<String>,
    created: i64,
}

impl RunFacts for Fake {
    fn param(&self, name: &str) -> Option<Value> {
        self.params.get(name).cloned()
    }
    fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.get(name).copied()
    }
    fn status(&self) -> &str {
        &self.status
    }
    fn sweep(&self) -> &str {
        "sw1"
    }
    fn project(&self) -> &str {
        "demo"
    }
    fn owner(&self) -> &str {
        "ann"
    }
    fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
    fn agent(&self) -> &str {
        "gpu-01"
    }
    fn created_ms(&self) -> i64 {
        self.created
    }
}

fn run(lr: f64, avg: Option<f64>, status: &str) -> Fake {
    let mut fake = Fake {
        status: status.into(),
        ..Default::default()
    };
    fake.params.insert("lr".into(), Value::Number(lr));
    fake.params
        .insert("opt".into(), Value::Text("adamw".into()));
    if let Some(avg) = avg {
        fake.metrics.insert("eval/avg".into(), avg);
    }
    fake
}

fn matches(text: &str, fake: &Fake) -> bool {
    parse_where("--where", text, 0).unwrap().matches(fake)
}

#[test]
fn the_example_query_filters_by_params_metrics_and_status() {
    let q = "params.lr < 1e-3 and metrics.eval/avg >= 0.6 and status = completed";
    assert!(matches(q, &run(1e-4, Some(0.7), "completed")));
    assert!(!matches(q, &run(1e-2, Some(0.7), "completed")));
    assert!(!matches(q, &run(1e-4, Some(0.5), "completed")));
    assert!(!matches(q, &run(1e-4, None, "completed")));
    assert!(!matches(q, &run(1e-4, Some(0.7), "failed")));
}

#[test]
fn or_in_parentheses_tags_and_strings() {
    let mut fake = run(1e-4, Some(0.7), "failed");
    fake.tags.push("baseline".into());
    assert!(matches(
        "status in [completed, failed] and (tag = baseline or params.lr > 1)",
        &fake
    ));
    assert!(!matches("tag != baseline", &fake));
    assert!(matches(
        "params.opt = adamw and owner = ann and agent = \"gpu-01\"",
        &fake
    ));
    assert!(matches("params.opt in ['sgd', adamw]", &fake));
    assert!(!matches("params.missing != 3", &fake));
    assert!(matches("project = demo and sweep != other", &fake));
}

#[test]
fn and_binds_tighter_than_or() {
    let fake = run(1.0, Some(0.1), "completed");
    assert!(matches(
        "status = failed and params.lr = 2 or metrics.eval/avg < 0.5",
        &fake
    ));
    assert!(!matches(
        "status = failed and (params.lr = 1 or metrics.eval/avg < 0.5)",
        &fake
    ));
}

#[test]
fn times_absolute_and_relative() {
    let now = parse_rfc3339("2024-05-01T12:00:00Z").unwrap();
    assert_eq!(now, 1_714_564_800_000);
    assert_eq!(parse_rfc3339("2024-05-01T14:00:00+02:00"), Some(now));
    assert_eq!(parse_rfc3339("1970-01-01"), Some(0));
    assert_eq!(parse_rfc3339("2024-05-01 12:00:00.250Z"), Some(now + 250));
    assert_eq!(parse_rfc3339("2024-02-30"), None, "no such day");
    assert_eq!(
        parse_rfc3339("2024-05-01T12:00:00"),
        None,
        "no offset: ambiguous"
    );
    assert_eq!(parse_rfc3339("yesterday"), None);
    assert_eq!(parse_time("-2h", now), Some(now - 7_200_000));
    let mut fake = run(1.0, None, "completed");
    fake.created = now - 3_600_000;
    let expr = parse_where(
        "--where",
        "created > -2h and created < 2024-05-01T12:00:00Z",
        now,
    )
    .unwrap();
    assert!(expr.matches(&fake));
}

#[test]
fn errors_are_positioned_and_helpful() {
    let error = parse_where("--where", "params.lr =< 1", 0).unwrap_err();
    assert_eq!(
        error.to_string(),
        "--where:1:11: unknown operator \"=<\" (did you mean \"<=\"?)"
    );
    let error = parse_where("--where", "param.lr < 1", 0).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("--where:1:1: unknown field \"param.lr\" (did you mean \"params.lr\"?)"),
        "{error}"
    );
    let error = parse_where("--where", "status = done", 0).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("--where:1:10: unknown status \"done\""),
        "{error}"
    );
    let error = parse_where("--where", "metrics.loss < abc", 0).unwrap_err();
    assert_eq!(error.column, 16);
    let error = parse_where("--where", "metrics.loss < 1 metrics.acc > 2", 0).unwrap_err();
    assert_eq!(error.column, 18);
    let error = parse_where("--where", "(status = failed", 0).unwrap_err();
    assert_eq!(error.to_string(), "--where:1:17: expected `)`");
    assert!(parse_where("--where", "status < failed", 0).is_err());
    assert!(parse_where("--where", "created > yesterday", 0).is_err());
    assert!(parse_where("--where", "'open", 0).is_err());
}

/// Runs `check` on a thread with a 256 KiB stack: recursion over the input that the
/// limits failed to bound overflows it and aborts the test binary, loudly.
fn on_small_stack<T: Send + 'static>(check: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(check)
        .expect("spawn a thread")
        .join()
        .expect("the check panicked")
}

fn where_error(text: String) -> QueryError {
    on_small_stack(move || parse_where("--where", &text, 0).unwrap_err())
}

const TOO_DEEP: &str =
    "query is nested more than 64 levels deep (parentheses and `not` inside one another)";

#[test]
fn five_thousand_nested_parentheses_are_refused_at_the_65th() {
    let text = format!("{}status = failed{}", "(".repeat(5_000), ")".repeat(5_000));
    let error = where_error(text);
    assert_eq!(error.to_string(), format!("--where:1:65: {TOO_DEEP}"));
}

#[test]
fn nested_nots_are_refused_beyond_the_depth_limit() {
    // 100,000 `not`s are over the length limit before they are too deep.
    let error = where_error(format!("{}status = failed", "not ".repeat(100_000)));
    assert_eq!(error.column, MAX_QUERY_BYTES + 1, "{error}");
    assert!(error.message.contains("longer than"), "{error}");
    // 1,000 fit in the length: the 65th is refused.
    let error = where_error(format!("{}status = failed", "not ".repeat(1_000)));
    assert_eq!(error.to_string(), format!("--where:1:257: {TOO_DEEP}"));
    // Parentheses and `not` count together.
    let error = where_error(format!("{}status = failed", "not (".repeat(40)));
    assert_eq!(error.column, 32 * 5 + 1, "{error}");
    assert_eq!(error.message, TOO_DEEP);
}

#[test]
fn a_megabyte_query_is_refused_by_its_length() {
    let error = where_error("a".repeat(1 << 20));
    assert_eq!(
        error.to_string(),
        "--where:1:16385: the query is 1048576 bytes long, longer than the limit of 16384 bytes"
    );
    let error = where_error("status = failed or ".repeat(60_000));
    assert_eq!(error.column, MAX_QUERY_BYTES + 1);
    // The column counts characters, not bytes.
    let error = where_error("é".repeat(MAX_QUERY_BYTES));
    assert_eq!(error.column, MAX_QUERY_BYTES / 2 + 1, "{error}");
}

#[test]
fn a_chain_of_fifty_thousand_ands_is_refused_and_a_long_one_within_the_limit_evaluates() {
    let error = where_error(format!("status = failed{}", " and tag = x".repeat(50_000)));
    assert_eq!(error.column, MAX_QUERY_BYTES + 1);
    // As many conditions as fit: a flat node, evaluated and dropped on a small stack.
    let (all_tags, one_missing) = on_small_stack(|| {
        let terms: Vec<String> = (0..1_000).map(|i| format!("tag=t{i}")).collect();
        let conjunction = terms.join(" and ");
        let disjunction = terms.join(" or ");
        assert!(conjunction.len() <= MAX_QUERY_BYTES);
        let mut fake = run(1.0, None, "completed");
        fake.tags = (0..1_000).map(|i| format!("t{i}")).collect();
        let and = parse_where("--where", &conjunction, 0).unwrap();
        let or = parse_where("--where", &disjunction, 0).unwrap();
        assert_eq!(and.depth(), 2);
        assert_eq!(or.depth(), 2);
        let all_tags = and.matches(&fake) && or.matches(&fake);
        fake.tags.remove(700);
        let one_missing = (and.matches(&fake), or.matches(&fake));
        (all_tags, one_missing)
    });
    assert!(all_tags);
    assert_eq!(one_missing, (false, true));
}

#[test]
fn nesting_up_to_the_limit_parses_and_evaluates_on_a_small_stack() {
    let (parens, nots, mixed) = on_small_stack(|| {
        let fake = run(1.0, Some(0.5), "failed");
        let parens = format!("{}status = failed{}", "(".repeat(64), ")".repeat(64));
        let nots = format!("{}status = failed", "not ".repeat(64));
        // Every level an `or` of an `and`: the deepest tree the parser builds.
        let mixed = format!(
            "{}tag = x or params.lr = 1 and status = failed{}",
            "tag = x or params.lr = 1 and (".repeat(64),
            ")".repeat(64)
        );
        let parsed: Vec<Expr> = [parens, nots, mixed]
            .iter()
            .map(|text| parse_where("--where", text, 0).unwrap())
            .collect();
        assert!(parsed.iter().all(|e| e.depth() <= MAX_TREE_DEPTH));
        assert_eq!(parsed[2].depth(), MAX_TREE_DEPTH);
        (
            parsed[0].matches(&fake),
            parsed[1].matches(&fake),
            parsed[2].matches(&fake),
        )
    });
    assert!(parens);
    assert!(nots, "64 `not`s cancel out");
    assert!(mixed);
}

#[test]
fn not_negates_the_condition_after_it() {
    let fake = run(1.0, None, "failed");
    assert!(matches("not status = completed", &fake));
    assert!(!matches("not status = failed", &fake));
    assert!(
        matches("NOT metrics.eval/avg > 0", &fake),
        "a missing metric"
    );
    assert!(matches("not status = failed or params.lr = 1", &fake));
    assert!(!matches("not (status = failed or params.lr = 1)", &fake));
    assert!(matches("params.lr = 1 and not not status = failed", &fake));
    let error = parse_where("--where", "status = failed and not", 0).unwrap_err();
    assert_eq!(error.column, 24, "{error}");
}

#[test]
fn sort_keys_and_cursors_are_bounded() {
    let keys: Vec<String> = (0..=MAX_SORT_KEYS)
        .map(|_| "-metrics.loss".to_string())
        .collect();
    let error = parse_sort_keys(&keys).unwrap_err();
    assert_eq!(
        error.to_string(),
        "--sort:1:1: 17 sort keys, more than the limit of 16"
    );
    assert_eq!(
        parse_sort_keys(&keys[..MAX_SORT_KEYS]).unwrap().len(),
        MAX_SORT_KEYS
    );
    let long = format!("metrics.{}", "m".repeat(MAX_QUERY_BYTES));
    let error = parse_sort_keys(&[long]).unwrap_err();
    assert!(error.message.contains("longer than the limit"), "{error}");
    let error = parse_cursor(&"7b".repeat(MAX_CURSOR_BYTES)).unwrap_err();
    assert_eq!(
            error.to_string(),
            "--cursor:1:4097: the cursor is 8192 bytes long, longer than the limit of 4096 bytes (pass the `next_cursor` of the previous page)"
        );
    let cursor = Cursor {
        sort: vec![],
        last: RowKey {
            values: vec![],
            position: Position {
                sweep_created_ms: 1,
                sweep_id: "s".into(),
                index: 2,
            },
        },
    };
    assert_eq!(parse_cursor(&cursor.encode()).unwrap(), cursor);
}

#[test]
fn sort_keys_parse() {
    assert_eq!(
        parse_sort("-params.lr").unwrap(),
        SortKey {
            field: Field::Param("lr".into()),
            descending: true
        }
    );
    assert_eq!(
        parse_sort("metrics.eval/avg").unwrap(),
        SortKey {
            field: Field::Metric("eval/avg".into()),
            descending: false
        }
    );
    assert!(parse_sort("tag").is_err());
    assert!(parse_sort("bogus").is_err());
}

#[test]
fn tasks_prefer_acc_norm_then_acc_then_mc2() {
    let metrics: BTreeMap<String, f64> = [
        ("eval/arc/acc", 0.5),
        ("eval/arc/acc_norm", 0.6),
        ("eval/truthfulqa/mc2", 0.4),
        ("eval/mmlu/acc", 0.8),
        ("eval/loss", 1.0),
        ("train/hellaswag/acc", 0.9),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let scores = task_scores(&metrics);
    assert_eq!(scores.len(), 3);
    assert_eq!(scores["arc"], 0.6);
    assert_eq!(scores["truthfulqa"], 0.4);
    assert_eq!(scores["mmlu"], 0.8);
    assert!((tasks_average(&metrics).unwrap() - 0.6).abs() < 1e-12);
    assert_eq!(tasks_average(&BTreeMap::new()), None);
}

#[test]
fn double_equals_is_the_same_as_equals() {
    for (single, double) in [
        ("status = completed", "status == completed"),
        ("params.lr=0.1 and tag=x", "params.lr==0.1 and tag==x"),
    ] {
        assert_eq!(
            parse_where("--where", single, 0).unwrap(),
            parse_where("--where", double, 0).unwrap()
        );
    }
}

#[test]
fn cursor_round_trips_and_rejects_garbage() {
    let cursor = Cursor {
        sort: vec!["-metrics.loss".into()],
        last: RowKey {
            values: vec![Some(Value::Number(0.5)), None],
            position: Position {
                sweep_created_ms: 5,
                sweep_id: "abc".into(),
                index: 7,
            },
        },
    };
    let text = cursor.encode();
    assert_eq!(Cursor::decode(&text).unwrap(), cursor);
    assert!(text.len() < 80, "{} characters: {text}", text.len());
    assert!(text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    assert!(Cursor::decode("zz").is_err());
    assert!(Cursor::decode("e30").is_err(), "{{}} is JSON but no cursor");
    assert!(Cursor::decode("not base64!").is_err());
}

fn value_strategy() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![
        1 => Just(None),
        4 => (-5i32..5).prop_map(|v| Some(v as f64 / 2.0)),
    ]
}

proptest! {
    #[test]
    fn pages_cover_every_row_exactly_once_in_order(
        values in proptest::collection::vec((value_strategy(), value_strategy()), 0..40),
        descending in any::<bool>(),
        two_keys in any::<bool>(),
        limit in 1usize..7,
    ) {
        let mut keys = vec![SortKey { field: Field::Metric("a".into()), descending }];
        if two_keys {
            keys.push(SortKey { field: Field::Param("b".into()), descending: !descending });
        }
        let rows: Vec<(RowKey, usize)> = values.iter().enumerate().map(|(i, (a, b))| {
            let mut fake = Fake::default();
            if let Some(a) = a { fake.metrics.insert("a".into(), *a); }
            if let Some(b) = b { fake.params.insert("b".into(), Value::Number(*b)); }
            let position = Position { sweep_created_ms: (i % 3) as i64, sweep_id: format!("s{}", i % 2), index: i as u64 };
            (row_key(&fake, &keys, position), i)
        }).collect();
        let mut seen = Vec::new();
        let mut after: Option<RowKey> = None;
        loop {
            let (page, more) = page(&keys, rows.clone(), after.as_ref(), limit);
            prop_assert!(page.len() <= limit);
            if let Some(last) = page.last() { after = Some(last.0.clone()); }
            seen.extend(page);
            if !more { break; }
        }
        prop_assert_eq!(seen.len(), rows.len());
        let mut ids: Vec<usize> = seen.iter().map(|(_, i)| *i).collect();
        ids.sort();
        ids.dedup();
        prop_assert_eq!(ids.len(), rows.len());
        for pair in seen.windows(2) {
            prop_assert_eq!(compare_rows(&keys, &pair[0].0, &pair[1].0), Ordering::Less);
            // Missing values come last whatever the direction.
            if pair[0].0.values[0].is_none() { prop_assert!(pair[1].0.values[0].is_none()); }
        }
    }

    #[test]
    fn parser_never_panics(text in "[a-z.()\\[\\],<>=! '\"0-9/-]{0,40}") {
        let _ = parse_where("--where", &text, 0);
    }

    #[test]
    fn numeric_comparisons_agree_with_f64(x in -1e6f64..1e6, y in -1e6f64..1e6) {
        let mut fake = Fake::default();
        fake.metrics.insert("m".into(), x);
        for (op, expected) in [("<", x < y), ("<=", x <= y), (">", x > y), (">=", x >= y), ("=", x == y), ("!=", x != y)] {
            let text = format!("metrics.m {op} {y:e}");
            prop_assert_eq!(parse_where("--where", &text, 0).unwrap().matches(&fake), expected, "{}", text);
        }
    }
}

proptest::proptest! {
    #[test]
    fn the_collector_gives_the_same_page_as_sorting_everything(
        values in proptest::collection::vec(proptest::option::of(-5i32..5), 0..200),
        limit in 0usize..20,
        descending in proptest::bool::ANY,
        cursor_at in proptest::option::of(0usize..200),
    ) {
        let keys = vec![SortKey { field: Field::Metric("m".into()), descending }];
        let rows: Vec<(RowKey, usize)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (
                RowKey {
                    values: vec![v.map(|v| Value::Number(f64::from(v)))],
                    position: Position { sweep_created_ms: 0, sweep_id: "s".into(), index: i as u64 },
                },
                i,
            ))
            .collect();
        let after = cursor_at.and_then(|i| rows.get(i)).map(|(k, _)| k.clone());
        let expected = page(&keys, rows.clone(), after.as_ref(), limit);
        let mut collector = PageCollector::new(&keys, after, limit);
        for (key, row) in rows {
            collector.offer(key, row);
        }
        let (got, more) = collector.finish();
        proptest::prop_assert_eq!(got.iter().map(|r| r.1).collect::<Vec<_>>(), expected.0.iter().map(|r| r.1).collect::<Vec<_>>());
        proptest::prop_assert_eq!(more, expected.1);
    }
}
