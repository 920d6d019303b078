//! Tests of `coordinator/src/reads/runs.rs`.

use super::*;
use ladder_proto::v1 as pb;
use std::sync::Arc;

use crate::convert;
use crate::store::{SledStore, Store};
use ladder_spec::ParamValue;
use ladder_types::SweepStatus;

fn sweep(store: &SledStore, id: &str, created_ms: i64, runs: u64) {
    let yaml = format!(
            "name: {id}\nproject: p\nmethod: grid\nmetric: {{name: m, goal: minimize}}\nparameters:\n  x: {{values: [1, 2]}}\ncommand: [\"true\"]\n"
        );
    let spec = ladder_spec::parse_sweep("s.yaml", &yaml).unwrap();
    store
        .put_sweep(&SweepRecord {
            id: id.into(),
            spec,
            file_name: "s.yaml".into(),
            yaml,
            status: SweepStatus::Completed,
            created_ms,
            ended_ms: None,
            planned_runs: runs,
            created_runs: runs,
            owner: String::new(),
            git_commit: String::new(),
            git_dirty: false,
        })
        .unwrap();
}

fn run(sweep: &str, index: u64, metric: Option<f64>) -> RunRecord {
    RunRecord {
        id: format!("{sweep}-{index:06}"),
        sweep_id: sweep.into(),
        project: "p".into(),
        index,
        params: [("x".to_string(), ParamValue::Int(index as i64))]
            .into_iter()
            .collect(),
        argv: Vec::new(),
        status: RunStatus::Completed,
        attempts: Vec::new(),
        last_metrics: metric.into_iter().map(|v| ("m".to_string(), v)).collect(),
        last_step: None,
        created_ms: index as i64,
        ended_ms: None,
        tags: Default::default(),
        notes: Vec::new(),
        summaries: Default::default(),
        info: Default::default(),
        metrics_dropped: 0,
        next_note_id: 0,
        artifacts: Vec::new(),
    }
}

/// A sweep of `project` whose `metric:` line is `metric`; its spec.
fn sweep_in(
    store: &SledStore,
    id: &str,
    project: &str,
    metric: &str,
    created_ms: i64,
) -> ladder_spec::SweepSpec {
    let yaml = format!(
            "name: {id}\nproject: {project}\nmethod: grid\n{metric}\nparameters:\n  x: {{values: [1, 2]}}\ncommand: [\"true\"]\n"
        );
    let spec = ladder_spec::parse_sweep("s.yaml", &yaml).unwrap();
    store
        .put_sweep(&SweepRecord {
            id: id.into(),
            spec: spec.clone(),
            file_name: "s.yaml".into(),
            yaml,
            status: SweepStatus::Completed,
            created_ms,
            ended_ms: None,
            planned_runs: 2,
            created_runs: 2,
            owner: String::new(),
            git_commit: String::new(),
            git_dirty: false,
        })
        .unwrap();
    spec
}

/// A completed run of `spec` that reported `m` = each of `curve` at steps 1, 2, ...
fn curve_run(spec: &ladder_spec::SweepSpec, sweep: &str, index: u64, curve: &[f64]) -> RunRecord {
    let mut record = run(sweep, index, None);
    record.project = spec.project.clone();
    let points: Vec<crate::model::StoredPoint> = curve
        .iter()
        .enumerate()
        .map(|(i, value)| crate::model::StoredPoint {
            step: Some(i as i64 + 1),
            values: [("m".to_string(), *value)].into_iter().collect(),
            time_ms: 0,
        })
        .collect();
    record.apply_metrics(Some(spec), &points);
    record
}

fn board(queries: &Queries, project: &str) -> Vec<(String, f64)> {
    let request = pb::LeaderboardRequest {
        project: project.into(),
        ..Default::default()
    };
    let query = LeaderboardQuery::try_from(request).unwrap();
    queries
        .leaderboard(&query)
        .unwrap()
        .rows
        .into_iter()
        .map(|row| (row.run.id, row.value))
        .collect()
}

#[test]
fn the_chosen_summary_ranks_and_the_board_spans_projects() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let best = sweep_in(
        &store,
        "s",
        "p",
        "metric: {name: m, goal: minimize, summary: best}",
        1,
    );
    let last = sweep_in(&store, "t", "q", "metric: {name: m, goal: minimize}", 2);
    store
        .put_run(&curve_run(&best, "s", 0, &[5.0, 1.0, 9.0]))
        .unwrap();
    store
        .put_run(&curve_run(&best, "s", 1, &[4.0, 3.0, 3.5]))
        .unwrap();
    store
        .put_run(&curve_run(&last, "t", 0, &[2.0, 0.5, 2.5]))
        .unwrap();
    let queries = Queries::new(store.clone());
    let by_best = vec![("s-000000".to_string(), 1.0), ("s-000001".to_string(), 3.0)];
    assert_eq!(board(&queries, "p"), by_best);
    // Across projects: each run by its own sweep's summary (t's last value, 2.5).
    assert_eq!(
        board(&queries, ""),
        vec![
            ("s-000000".to_string(), 1.0),
            ("t-000000".to_string(), 2.5),
            ("s-000001".to_string(), 3.0),
        ]
    );
    let all: Vec<String> = store
        .metric_index(None, "m", false, None)
        .unwrap()
        .map(|e| e.unwrap().1)
        .collect();
    assert_eq!(all, ["s-000000", "t-000000", "s-000001"]);
    // --where sees the same values.
    let request = pb::ListRunsRequest {
        r#where: "metrics.m < 2".into(),
        ..Default::default()
    };
    let page = queries
        .query_runs(&RunQuery::parse(&request).unwrap())
        .unwrap();
    let ids: Vec<String> = page.runs.into_iter().map(|r| r.id).collect();
    assert_eq!(ids, ["s-000000"]);
    // The card's min and max come from the stored summaries.
    let run = store.get_run("s-000000").unwrap().unwrap();
    let mut card = crate::reads::RunCard::new(run.clone());
    queries.fill_card(&mut card).unwrap();
    assert_eq!(card.min_metrics["m"], 1.0);
    assert_eq!(card.max_metrics["m"], 9.0);
    assert_eq!(card.best_value, Some(1.0));
    let summary = &convert::run_to_pb(&run).summaries["m"];
    assert_eq!((summary.value, summary.summary.as_str()), (1.0, "min"));
    assert_eq!((summary.last, summary.last_step), (9.0, Some(3)));
}

#[test]
fn a_project_less_board_needs_some_sweep_with_a_metric() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let queries = Queries::new(store);
    let query = LeaderboardQuery::try_from(pb::LeaderboardRequest::default()).unwrap();
    let error = queries.leaderboard(&query).err().unwrap().to_string();
    assert!(error.contains("no sweep has a metric"), "{error}");
}

fn walk(store: &SledStore, descending: bool, from: Option<f64>) -> Vec<(f64, String)> {
    store
        .metric_index(Some("p"), "m", descending, from)
        .unwrap()
        .map(|e| e.unwrap())
        .collect()
}

#[test]
fn the_index_follows_put_run_and_orders_special_values() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    sweep(&store, "s", 0, 5);
    let values = [Some(0.5), Some(-0.0), Some(f64::MIN), Some(-3.0), None];
    for (i, v) in values.iter().enumerate() {
        store.put_run(&run("s", i as u64, *v)).unwrap();
    }
    let ascending: Vec<f64> = walk(&store, false, None).into_iter().map(|e| e.0).collect();
    assert_eq!(ascending.len(), 4);
    assert_eq!(ascending[0], f64::MIN);
    assert_eq!(ascending[1], -3.0);
    assert!(ascending[2] == 0.0 && ascending[2].is_sign_negative());
    assert_eq!(ascending[3], 0.5);
    // A new value replaces the old entry.
    store.put_run(&run("s", 0, Some(-10.0))).unwrap();
    let descending = walk(&store, true, None);
    assert_eq!(descending.len(), 4);
    assert_eq!(
        descending.last().unwrap(),
        &(f64::MIN, "s-000002".to_string())
    );
    assert_eq!(walk(&store, true, Some(-3.0)).len(), 3);
    assert_eq!(walk(&store, false, Some(-3.0)).len(), 2);
    // Reopening a store without the index marker rebuilds the same index.
    drop(store);
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(walk(&store, false, None).len(), 4);
}

#[test]
fn indexed_and_scanned_pages_agree() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    sweep(&store, "a", 1, 30);
    sweep(&store, "b", 2, 30);
    for i in 0..30u64 {
        let value = if i % 4 == 0 {
            None
        } else {
            Some((i % 7) as f64)
        };
        store.put_run(&run("a", i, value)).unwrap();
        store.put_run(&run("b", i, value.map(|v| -v))).unwrap();
    }
    let queries = Queries::new(store.clone());
    // One key (the index order up to ties), or a second key after it.
    for (sort, second) in [
        ("m", None),
        ("-m", None),
        ("m", Some("-params.x")),
        ("-m", Some("created")),
    ] {
        for limit in [1u32, 7, 100] {
            let request = |project: &str, cursor: String| pb::ListRunsRequest {
                project: project.into(),
                sort: std::iter::once(format!("{}metrics.m", if sort == "-m" { "-" } else { "" }))
                    .chain(second.map(str::to_string))
                    .collect(),
                r#where: "params.x >= 2".into(),
                limit,
                cursor,
                ..Default::default()
            };
            let mut pages: Vec<Vec<String>> = Vec::new();
            for project in ["p", ""] {
                let mut ids = Vec::new();
                let mut cursor = String::new();
                loop {
                    let query = RunQuery::parse(&request(project, cursor.clone())).unwrap();
                    let page = queries.query_runs(&query).unwrap();
                    ids.extend(page.runs.into_iter().map(|r| r.id));
                    match page.next_cursor {
                        Some(next) => cursor = next,
                        None => break,
                    }
                }
                pages.push(ids);
            }
            assert_eq!(pages[0].len(), 56, "sort {sort} limit {limit}");
            assert_eq!(pages[0], pages[1], "sort {sort} limit {limit}");
        }
    }
}

/// A run of sweep `sweep` whose parameter `v` is `value` (absent when `None`) and
/// whose parameter `x` is its index.
fn param_run(sweep: &str, index: u64, value: Option<ParamValue>) -> RunRecord {
    let mut record = run(sweep, index, None);
    if let Some(value) = value {
        record.params.insert("v".into(), value);
    }
    record
}

/// Mixed kinds, many ties, some runs without the parameter.
fn mixed_value(i: u64) -> Option<ParamValue> {
    match i % 7 {
        0 => None,
        1 => Some(ParamValue::Int((i % 3) as i64)),
        2 => Some(ParamValue::Float(0.5 * (i % 4) as f64)),
        3 => Some(ParamValue::Str(
            ["x", "y", "x\0z", ""][(i % 4) as usize].into(),
        )),
        4 => Some(ParamValue::Bool(i.is_multiple_of(2))),
        5 => Some(ParamValue::Float(-(i as f64))),
        _ => Some(ParamValue::Int(1)),
    }
}

/// Two sweeps whose creation order is not their id order (so positions and run ids
/// order ties differently), 40 runs each with mixed values of `v`.
fn mixed_store() -> (tempfile::TempDir, Arc<SledStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    sweep(&store, "a", 2, 40);
    sweep(&store, "b", 1, 40);
    for i in 0..40u64 {
        store.put_run(&param_run("a", i, mixed_value(i))).unwrap();
        store
            .put_run(&param_run("b", i, mixed_value(i + 3)))
            .unwrap();
    }
    (dir, store)
}

/// Every page of a query, following cursors.
fn all_pages(queries: &Queries, request: &pb::ListRunsRequest) -> Vec<String> {
    let mut ids = Vec::new();
    let mut request = request.clone();
    loop {
        let query = RunQuery::parse(&request).unwrap();
        let page = queries.query_runs(&query).unwrap();
        assert!(request.limit == 0 || page.runs.len() <= request.limit as usize);
        ids.extend(page.runs.into_iter().map(|r| r.id));
        match page.next_cursor {
            Some(next) => request.cursor = next,
            None => return ids,
        }
    }
}

#[test]
fn the_param_index_walks_in_listing_order() {
    let (dir, store) = mixed_store();
    let queries = Queries::new(store.clone());
    let sweeps = queries.sweep_map().unwrap();
    for descending in [false, true] {
        let sort = vec![SortKey {
            field: Field::Param("v".into()),
            descending,
        }];
        // The listing order of the runs that have `v`, from the records.
        let mut rows: Vec<(RowKey, String)> = Vec::new();
        for run in store.list_runs(None).unwrap() {
            if !run.params.contains_key("v") {
                continue;
            }
            let facts = Facts {
                run: &run,
                sweep: sweeps.get(&run.sweep_id),
            };
            rows.push((
                row_key(&facts, &sort, position(&run, &sweeps)),
                run.id.clone(),
            ));
        }
        rows.sort_by(|a, b| compare_rows(&sort, &a.0, &b.0));
        let listed: Vec<String> = rows.iter().map(|(_, id)| id.clone()).collect();
        let walk = |store: &SledStore, from: Option<(&Value, &Position)>| -> Vec<String> {
            store
                .param_index("p", "v", descending, from)
                .unwrap()
                .map(|e| e.unwrap().run_id)
                .collect()
        };
        assert_eq!(walk(&store, None), listed, "descending {descending}");
        // Starting at any entry continues the same order from that entry.
        for (i, (key, _)) in rows.iter().enumerate() {
            let value = key.values[0].clone().unwrap();
            assert_eq!(
                walk(&store, Some((&value, &key.position))),
                listed[i..],
                "descending {descending} from #{i}"
            );
        }
        // Other projects and parameters are not in the walk.
        assert_eq!(
            store
                .param_index("q", "v", descending, None)
                .unwrap()
                .count(),
            0
        );
        assert_eq!(
            store
                .param_index("p", "w", descending, None)
                .unwrap()
                .count(),
            0
        );
    }
    // A store written before the parameter index gets it on open.
    let ascending: Vec<String> = store
        .param_index("p", "v", false, None)
        .unwrap()
        .map(|e| e.unwrap().run_id)
        .collect();
    store.forget_param_index();
    drop(queries);
    drop(store);
    let store = SledStore::open(dir.path()).unwrap();
    let rebuilt: Vec<String> = store
        .param_index("p", "v", false, None)
        .unwrap()
        .map(|e| e.unwrap().run_id)
        .collect();
    assert_eq!(rebuilt, ascending);
}

#[test]
fn param_indexed_and_scanned_pages_agree() {
    let (_dir, store) = mixed_store();
    let queries = Queries::new(store.clone());
    let sorts: [&[&str]; 4] = [
        &["params.v"],
        &["-params.v"],
        &["params.v", "-params.x"],
        &["-params.v", "created"],
    ];
    for sort in sorts {
        for (filter, admitted) in [("", 80), ("params.x >= 2 and status = completed", 76)] {
            for limit in [1u32, 7, 100] {
                let request = |project: &str| pb::ListRunsRequest {
                    project: project.into(),
                    sort: sort.iter().map(|k| k.to_string()).collect(),
                    r#where: filter.into(),
                    limit,
                    ..Default::default()
                };
                let indexed = all_pages(&queries, &request("p"));
                let scanned = all_pages(&queries, &request(""));
                let label = format!("sort {sort:?} where {filter:?} limit {limit}");
                assert_eq!(indexed.len(), admitted, "{label}");
                assert_eq!(indexed, scanned, "{label}");
                // Without a limit the query scans; the order is the same.
                let mut unlimited = request("p");
                unlimited.limit = 0;
                assert_eq!(all_pages(&queries, &unlimited), scanned, "{label}");
            }
        }
    }
    // Runs without the parameter come last in both directions.
    for sort in ["params.v", "-params.v"] {
        let request = pb::ListRunsRequest {
            project: "p".into(),
            sort: vec![sort.into()],
            limit: 9,
            ..Default::default()
        };
        let listed = all_pages(&queries, &request);
        let missing = listed
            .iter()
            .position(|id| !store.get_run(id).unwrap().unwrap().params.contains_key("v"))
            .unwrap();
        assert!(listed[missing..].iter().all(|id| !store
            .get_run(id)
            .unwrap()
            .unwrap()
            .params
            .contains_key("v")));
        assert_eq!(listed.len() - missing, 12, "{sort}");
    }
}
