//! The team's shared history through the real CLI and coordinator: queries (where, sort,
//! cursor pages, columns), the leaderboard (objective, tasks average, per sweep, across
//! projects), per-metric summaries (best / min / max instead of last), run cards (git
//! commit, owner, what the run reported with `@ladder.info`), notes and tags, compare,
//! export and watch.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ladder_e2e::{
    as_f64, as_str, describe, ladder_command, parse_json_output, write_file, write_script, Cluster,
    Coordinator, TestDir, Value, WATCH_TIMEOUT,
};

/// Prints, at steps 1..3: `score = a * step`, two task scores (arc by `acc_norm` over
/// `acc`: a/10; mmlu: (7-a)/5; so the tasks average is (14-a)/20 and ranks the runs
/// opposite to score),
/// and `extra` only for even `a` (so sorting by it has missing values).
const OBJECTIVE: &str = r#"
import json, sys
a = int(sys.argv[1])
for step in (1, 2, 3):
    point = {"step": step, "score": a * step, "eval/arc/acc_norm": a / 10.0, "eval/arc/acc": 0.0,
             "eval/mmlu/acc": (7 - a) / 5.0}
    if a % 2 == 0:
        point["extra"] = 10 - a
    print("@ladder " + json.dumps(point), flush=True)
    print("line %d" % step, flush=True)
"#;

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("git runs");
    assert!(status.success(), "git {args:?} failed");
}

fn git_head(dir: &Path) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .output()
        .expect("git runs");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn ids(listed: &Value) -> Vec<String> {
    listed["runs"]
        .as_array()
        .unwrap_or_else(|| panic!("no runs in {listed}"))
        .iter()
        .map(|r| as_str(&r["id"], "id").to_string())
        .collect()
}

fn submit_as(coordinator: &Coordinator, file: &Path, user: &str) -> String {
    let url = coordinator.url();
    let args = [
        "sweep",
        "submit",
        file.to_str().unwrap(),
        "--json",
        "--coordinator",
        &url,
    ];
    let output = ladder_command()
        .args(args)
        .env("LADDER_USER", user)
        .output()
        .expect("ladder runs");
    let sweep = parse_json_output(&args, &output);
    as_str(&sweep["id"], "sweep id").to_string()
}

fn sweep_file(dir: &Path, name: &str, values: &str) -> std::path::PathBuf {
    write_file(
        dir,
        &format!("{name}.yaml"),
        &format!(
            r#"name: {name}
project: hist
method: grid
metric: {{name: score, goal: maximize}}
parallel: 4
parameters:
  a: {{values: [{values}]}}
command: [python3, "{{{{ladder.code_dir}}}}/objective.py", "{{{{a}}}}"]
"#
        ),
    )
}

#[test]
fn queries_leaderboard_cards_notes_compare_and_export() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let code = dir.join("code");
    std::fs::create_dir_all(&code).unwrap();
    write_script(&code, "objective.py", OBJECTIVE);
    let first = sweep_file(&code, "first", "1, 2, 3");
    let second = sweep_file(&code, "second", "4, 5, 6");
    git(&code, &["init", "-q"]);
    git(&code, &["add", "."]);
    git(&code, &["commit", "-q", "-m", "init"]);
    let head = git_head(&code);
    assert_eq!(head.len(), 40, "git HEAD {head:?}");

    let cluster = Cluster::builder(dir)
        .code_dir(&code)
        .coordinator_args(&["--heartbeat-interval", "0.5"])
        .agent("alpha", 4)
        .start();
    let coordinator = &cluster.coordinator;

    let first_id = submit_as(coordinator, &first, "alice");
    // Dirty the tree before the second submission.
    std::fs::write(code.join("untracked.txt"), "x").unwrap();
    let second_id = submit_as(coordinator, &second, "bob");
    for id in [&first_id, &second_id] {
        let sweep = coordinator.watch(id, WATCH_TIMEOUT);
        assert_eq!(sweep["counts"]["completed"], 3, "{sweep}");
    }
    let run_of = |sweep: &str, a: i64| format!("{sweep}-{:06}", (a - 1) % 3);

    // --where with and / or / in.
    let listed = coordinator.json(&[
        "runs",
        "ls",
        "--project",
        "hist",
        "--where",
        "params.a >= 2 and metrics.score < 15 and status = completed",
    ]);
    let got: BTreeSet<String> = ids(&listed).into_iter().collect();
    let want: BTreeSet<String> = [
        run_of(&first_id, 2),
        run_of(&first_id, 3),
        run_of(&second_id, 4),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want, "{listed}");
    let query = format!("params.a in [1, 6] or (metrics.extra < 7 and sweep = {second_id})");
    let listed = coordinator.json(&["runs", "ls", "--where", &query]);
    let got: BTreeSet<String> = ids(&listed).into_iter().collect();
    let want: BTreeSet<String> = [
        run_of(&first_id, 1),
        run_of(&second_id, 4),
        run_of(&second_id, 6),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want, "{listed}");
    let listed = coordinator.json(&["runs", "ls", "--where", "tag = nothing"]);
    assert!(ids(&listed).is_empty(), "{listed}");

    // A positioned error, exit code 2.
    let output = coordinator.ladder(&["runs", "ls", "--where", "metrics.score =< 3"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        describe(&["runs", "ls"], &output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(r#"--where:1:15: unknown operator "=<" (did you mean "<="?)"#),
        "{stderr}"
    );

    // Sorting, ascending and descending, missing values last; the index walk (project +
    // one metric + limit) and the scan agree.
    let missing = vec![
        run_of(&first_id, 1),
        run_of(&first_id, 3),
        run_of(&second_id, 5),
    ];
    let mut ascending = vec![
        run_of(&second_id, 6),
        run_of(&second_id, 4),
        run_of(&first_id, 2),
    ];
    ascending.extend(missing.clone());
    let mut descending = vec![
        run_of(&first_id, 2),
        run_of(&second_id, 4),
        run_of(&second_id, 6),
    ];
    descending.extend(missing.clone());
    for (sort, want) in [
        ("metrics.extra", &ascending),
        ("-metrics.extra", &descending),
    ] {
        let scanned = coordinator.json(&["runs", "ls", "--sort", sort]);
        assert_eq!(&ids(&scanned), want, "scan, --sort {sort}: {scanned}");
        let indexed = coordinator.json(&[
            "runs",
            "ls",
            "--project",
            "hist",
            "--sort",
            sort,
            "--limit",
            "100",
        ]);
        assert_eq!(&ids(&indexed), want, "index, --sort {sort}: {indexed}");
    }

    // Sorting by a parameter: the parameter index (project + limit, page by page) and
    // the scan agree, both directions, with a filter applied while walking.
    for sort in ["params.a", "-params.a"] {
        let scanned = coordinator.json(&["runs", "ls", "--sort", sort, "--where", "params.a != 3"]);
        let mut paged = Vec::new();
        let mut cursor: Option<String> = None;
        for _page in 0..10 {
            let mut args = vec![
                "runs",
                "ls",
                "--project",
                "hist",
                "--sort",
                sort,
                "--where",
                "params.a != 3",
                "--limit",
                "2",
            ];
            if let Some(cursor) = &cursor {
                args.extend(["--cursor", cursor.as_str()]);
            }
            let page = coordinator.json(&args);
            paged.extend(ids(&page));
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => break,
            }
        }
        assert_eq!(ids(&scanned).len(), 5, "{scanned}");
        assert_eq!(paged, ids(&scanned), "--sort {sort}: {scanned}");
    }

    // Limit + cursor pages cover every run exactly once, in order, indexed or scanned.
    let by_score: Vec<String> = [6, 5, 4, 3, 2, 1]
        .iter()
        .map(|a| {
            if *a > 3 {
                run_of(&second_id, *a)
            } else {
                run_of(&first_id, *a)
            }
        })
        .collect();
    for project in [None, Some("hist")] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        for _page in 0..10 {
            let mut args = vec!["runs", "ls", "--sort", "-metrics.score", "--limit", "4"];
            if let Some(project) = project {
                args.extend(["--project", project]);
            }
            if let Some(cursor) = &cursor {
                args.extend(["--cursor", cursor.as_str()]);
            }
            let page = coordinator.json(&args);
            let page_ids = ids(&page);
            assert!(page_ids.len() <= 4, "{page}");
            seen.extend(page_ids);
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => break,
            }
        }
        assert_eq!(seen, by_score, "pages (project {project:?})");
    }

    // --columns.
    let output = coordinator.ladder(&[
        "runs",
        "ls",
        "--sweep",
        &first_id,
        "--columns",
        "id,status,params.a,metrics.score",
    ]);
    assert!(
        output.status.success(),
        "{}",
        describe(&["runs", "ls"], &output)
    );
    let table = String::from_utf8_lossy(&output.stdout);
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["ID", "STATUS", "PARAMS.A", "METRICS.SCORE"],
        "{table}"
    );
    let first_row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        first_row,
        [run_of(&first_id, 1).as_str(), "completed", "1", "3"],
        "{table}"
    );

    // Leaderboard by the sweeps' objective (score, maximize).
    let board = coordinator.json(&["leaderboard", "--project", "hist"]);
    assert_eq!(board["metric"], "score", "{board}");
    assert_eq!(board["goal"], "maximize", "{board}");
    let ranked: Vec<String> = board["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| as_str(&r["run"]["id"], "id").to_string())
        .collect();
    assert_eq!(ranked, by_score, "{board}");
    assert_eq!(board["rows"][0]["rank"], 1, "{board}");
    assert_eq!(as_f64(&board["rows"][0]["value"], "value"), 18.0, "{board}");
    assert_eq!(board["rows"][0]["sweep_name"], "second", "{board}");

    // By the tasks average, with per-task columns: (14 - a) / 20, best a = 1.
    let board = coordinator.json(&[
        "leaderboard",
        "--project",
        "hist",
        "--tasks",
        "avg",
        "--limit",
        "3",
    ]);
    assert_eq!(
        board["tasks"],
        serde_json::json!(["arc", "mmlu"]),
        "{board}"
    );
    let rows = board["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{board}");
    assert_eq!(
        rows[0]["run"]["id"],
        run_of(&first_id, 1).as_str(),
        "{board}"
    );
    assert!(
        (as_f64(&rows[0]["value"], "value") - 0.65).abs() < 1e-9,
        "{board}"
    );
    assert!(
        (as_f64(&rows[0]["tasks"]["arc"], "arc") - 0.1).abs() < 1e-9,
        "{board}"
    );
    assert!(
        (as_f64(&rows[0]["tasks"]["mmlu"], "mmlu") - 1.2).abs() < 1e-9,
        "{board}"
    );
    assert_eq!(
        rows[1]["run"]["id"],
        run_of(&first_id, 2).as_str(),
        "{board}"
    );

    // The best run of each sweep.
    let board = coordinator.json(&["board", "--project", "hist", "--per", "sweep"]);
    let ranked: Vec<&str> = board["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| as_str(&r["run"]["id"], "id"))
        .collect();
    assert_eq!(
        ranked,
        [run_of(&second_id, 6), run_of(&first_id, 3)],
        "{board}"
    );

    // Cards: owner, git commit and dirty flag, objective final and best, min/max.
    let card = coordinator.run_detail(&run_of(&first_id, 2));
    assert_eq!(card["owner"], "alice", "{card}");
    assert_eq!(card["git_commit"], head.as_str(), "{card}");
    assert_eq!(card["git_dirty"], false, "{card}");
    assert_eq!(card["sweep_name"], "first", "{card}");
    assert_eq!(as_f64(&card["objective"]["final"], "final"), 6.0, "{card}");
    assert_eq!(as_f64(&card["objective"]["best"], "best"), 6.0, "{card}");
    assert_eq!(as_f64(&card["min_metrics"]["score"], "min"), 2.0, "{card}");
    assert_eq!(card["attempt_history"][0]["agent"], "alpha", "{card}");
    let card = coordinator.run_detail(&run_of(&second_id, 4));
    assert_eq!(card["owner"], "bob", "{card}");
    assert_eq!(card["git_commit"], head.as_str(), "{card}");
    assert_eq!(card["git_dirty"], true, "{card}");

    // Notes and tags round trip, and tags are queryable.
    let run = run_of(&first_id, 2);
    coordinator.json(&["runs", "note", &run, "lr too high?"]);
    coordinator.json(&["runs", "tag", &run, "+best", "baseline"]);
    let updated = coordinator.json(&["runs", "tag", &run, "-baseline"]);
    assert_eq!(updated["tags"], serde_json::json!(["best"]), "{updated}");
    let card = coordinator.run_detail(&run);
    assert_eq!(card["tags"], serde_json::json!(["best"]), "{card}");
    assert_eq!(card["notes"][0]["text"], "lr too high?", "{card}");
    let listed = coordinator.json(&["runs", "ls", "--where", "tag = best"]);
    assert_eq!(ids(&listed), std::slice::from_ref(&run), "{listed}");
    let output = coordinator.ladder(&["runs", "tag", &format!("{first_id}-999999"), "+x"]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        describe(&["runs", "tag"], &output)
    );

    // Compare: differing params marked, the sweep metric aligned by step.
    let a = run_of(&first_id, 1);
    let b = run_of(&second_id, 5);
    let compared = coordinator.json(&["runs", "compare", &a, &b]);
    assert_eq!(
        compared["differing"],
        serde_json::json!(["a"]),
        "{compared}"
    );
    assert_eq!(compared["metric"], "score", "{compared}");
    assert_eq!(
        compared["steps"],
        serde_json::json!([
            {"step": 1, "values": [1.0, 5.0]},
            {"step": 2, "values": [2.0, 10.0]},
            {"step": 3, "values": [3.0, 15.0]},
        ]),
        "{compared}"
    );

    // Export: CSV with a header and one row per run; JSON lines of a query.
    let output = coordinator.ladder(&["runs", "export", "--format", "csv", "--project", "hist"]);
    assert!(
        output.status.success(),
        "{}",
        describe(&["runs", "export"], &output)
    );
    let csv = String::from_utf8_lossy(&output.stdout);
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 7, "{csv}");
    let a_column = rows[0]
        .iter()
        .position(|c| *c == "params.a")
        .expect("params.a column");
    let score_column = rows[0]
        .iter()
        .position(|c| *c == "metrics.score")
        .expect("score column");
    for row in &rows[1..] {
        assert_eq!(row.len(), rows[0].len(), "{csv}");
        let a: f64 = row[a_column].parse().unwrap();
        let score: f64 = row[score_column].parse().unwrap();
        assert_eq!(score, 3.0 * a, "{csv}");
    }
    let output = coordinator.ladder(&[
        "runs",
        "export",
        "--format",
        "jsonl",
        "--where",
        "params.a > 3",
        "--sort",
        "params.a",
    ]);
    assert!(
        output.status.success(),
        "{}",
        describe(&["runs", "export"], &output)
    );
    let exported: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let run: Value = serde_json::from_str(line).expect("a JSON line");
            as_str(&run["id"], "id").to_string()
        })
        .collect();
    assert_eq!(
        exported,
        [
            run_of(&second_id, 4),
            run_of(&second_id, 5),
            run_of(&second_id, 6)
        ]
    );
}

/// Prints a point and a log line every 0.4 s for 8 steps.
const SLOW: &str = r#"
import json, time
for step in range(1, 9):
    print("@ladder " + json.dumps({"step": step, "loss": 1.0 / step}), flush=True)
    print("working on step %d" % step, flush=True)
    time.sleep(0.4)
"#;

#[test]
fn watch_prints_the_points_and_lines_of_a_running_run() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    write_script(dir, "slow.py", SLOW);
    let file = write_file(
        dir,
        "slow.yaml",
        r#"name: slow
method: grid
metric: {name: loss, goal: minimize}
parameters:
  x: {value: 1}
command: [python3, "{{ladder.code_dir}}/slow.py"]
"#,
    );
    let cluster = Cluster::builder(dir)
        .coordinator_args(&["--heartbeat-interval", "0.5"])
        .agent("alpha", 1)
        .start();
    let coordinator = &cluster.coordinator;
    let sweep_id = coordinator.submit(&file);
    let run_id = format!("{sweep_id}-000000");
    ladder_e2e::wait_until(
        Duration::from_secs(60),
        Duration::from_millis(100),
        "the run to be running",
        || {
            let runs = coordinator.runs(&sweep_id);
            (runs.first().map(|r| r["status"] == "running") == Some(true)).then_some(())
        },
    );
    // Watchers share one reader of the run's changes: two join now, three more once
    // the run is halfway, and each sees every point once and every line.
    let watch = || {
        let url = coordinator.url();
        let run_id = run_id.clone();
        std::thread::spawn(move || {
            ladder_e2e::ladder(&["runs", "watch", &run_id, "--coordinator", &url])
        })
    };
    let mut watchers: Vec<_> = (0..2).map(|_| watch()).collect();
    ladder_e2e::wait_until(
        Duration::from_secs(60),
        Duration::from_millis(50),
        "the run halfway",
        || {
            let runs = coordinator.runs(&sweep_id);
            (runs.first().and_then(|r| r["last_step"].as_i64()) >= Some(4)).then_some(())
        },
    );
    watchers.extend((0..3).map(|_| watch()));
    for watcher in watchers {
        let output = watcher.join().expect("watcher thread");
        assert!(
            output.status.success(),
            "{}",
            describe(&["runs", "watch"], &output)
        );
        let text = String::from_utf8_lossy(&output.stdout);
        for step in 1..=8 {
            assert!(text.contains(&format!("working on step {step}")), "{text}");
            let point = format!("step {step:>6}  loss=");
            assert_eq!(text.matches(&point).count(), 1, "{point:?} once in {text}");
        }
    }
    let detail = coordinator.run_detail(&run_id);
    assert_eq!(detail["status"], "completed", "{detail}");
}

/// Prints `eval/loss` at steps 1..3 along a curve chosen by `a`, whose best (lowest) and
/// last values rank the runs differently, and `train/loss = 1 - eval/loss` (whose maximum
/// and last values rank them differently too).
const CURVES: &str = r#"
import json, sys
curves = {1: [0.5, 0.1, 0.9], 2: [0.4, 0.3, 0.35], 3: [0.6, 0.5, 0.45], 4: [0.2, 0.05, 0.25]}
for step, loss in enumerate(curves[int(sys.argv[1])], start=1):
    print("@ladder " + json.dumps({"step": step, "eval/loss": loss, "train/loss": 1 - loss}), flush=True)
"#;

fn curve_sweep(dir: &Path, name: &str, project: &str, metric: &str, values: &str) -> PathBuf {
    write_file(
        dir,
        &format!("{name}.yaml"),
        &format!(
            r#"name: {name}
project: {project}
method: grid
{metric}
parallel: 3
parameters:
  a: {{values: [{values}]}}
command: [python3, "{{{{ladder.code_dir}}}}/curves.py", "{{{{a}}}}"]
"#
        ),
    )
}

fn values_of(rows: &Value, what: &str) -> Vec<f64> {
    rows.as_array()
        .unwrap_or_else(|| panic!("no rows in {rows}"))
        .iter()
        .map(|row| as_f64(&row["value"], what))
        .collect()
}

#[test]
fn summaries_choose_the_ranked_value_and_the_board_spans_projects() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    write_script(dir, "curves.py", CURVES);
    // Ranked by the best (lowest) eval/loss; train/loss summarised by its maximum.
    let best = curve_sweep(
        dir,
        "best",
        "sum-a",
        "metric: {name: eval/loss, goal: minimize, summary: best}\nsummaries: {train/loss: max}",
        "1, 2, 3",
    );
    // Another project, summarised by the last value (the default).
    let last = curve_sweep(
        dir,
        "last",
        "sum-b",
        "metric: {name: eval/loss, goal: minimize}",
        "4",
    );
    let cluster = Cluster::builder(dir)
        .coordinator_args(&["--heartbeat-interval", "0.5"])
        .agent("alpha", 3)
        .start();
    let coordinator = &cluster.coordinator;
    let best_id = coordinator.submit(&best);
    let last_id = coordinator.submit(&last);
    for (id, runs) in [(&best_id, 3), (&last_id, 1)] {
        let sweep = coordinator.watch(id, WATCH_TIMEOUT);
        assert_eq!(sweep["counts"]["completed"], runs, "{sweep}");
    }
    let run_of = |a: i64| format!("{best_id}-{:06}", a - 1);

    // The leaderboard ranks by the best value (by the last one it would be 2, 3, 1).
    let board = coordinator.json(&["board", "--project", "sum-a"]);
    assert_eq!(board["metric"], "eval/loss", "{board}");
    assert_eq!(board["goal"], "minimize", "{board}");
    let ranked: Vec<String> = board["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| as_str(&row["run"]["id"], "run id").to_string())
        .collect();
    assert_eq!(ranked, [run_of(1), run_of(2), run_of(3)], "{board}");
    assert_eq!(
        values_of(&board["rows"], "value"),
        [0.1, 0.3, 0.45],
        "{board}"
    );

    // Sorting (the indexed path) and --where use the same value.
    let listed = coordinator.json(&[
        "runs",
        "ls",
        "--project",
        "sum-a",
        "--sort",
        "metrics.eval/loss",
        "--limit",
        "2",
    ]);
    assert_eq!(ids(&listed), [run_of(1), run_of(2)], "{listed}");
    let listed = coordinator.json(&["runs", "ls", "--where", "metrics.eval/loss < 0.2"]);
    // By last values run 1 (0.9) would fail it and the last sweep's run (best 0.05) pass.
    assert_eq!(ids(&listed), [run_of(1)], "{listed}");
    let listed = coordinator.json(&[
        "runs",
        "ls",
        "--project",
        "sum-a",
        "--sort",
        "-metrics.train/loss",
    ]);
    assert_eq!(ids(&listed), [run_of(1), run_of(2), run_of(3)], "{listed}");

    // The card shows last, min and max with their steps, and which one ranks.
    let card = coordinator.run_detail(&run_of(1));
    let loss = &card["summaries"]["eval/loss"];
    assert_eq!(loss["summary"], "min", "{card}");
    assert_eq!(as_f64(&loss["value"], "value"), 0.1, "{card}");
    assert_eq!(as_f64(&loss["last"], "last"), 0.9, "{card}");
    assert_eq!(loss["last_step"], 3, "{card}");
    assert_eq!(as_f64(&loss["min"], "min"), 0.1, "{card}");
    assert_eq!(loss["min_step"], 2, "{card}");
    assert_eq!(as_f64(&loss["max"], "max"), 0.9, "{card}");
    assert_eq!(loss["max_step"], 3, "{card}");
    assert_eq!(card["summaries"]["train/loss"]["summary"], "max", "{card}");
    assert_eq!(as_f64(&card["metrics"]["eval/loss"], "last"), 0.9, "{card}");
    let text = coordinator.ladder(&["runs", "show", &run_of(1)]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("eval/loss") && l.contains("min") && l.contains("0.9 @3")),
        "{text}"
    );

    // Without --project the board ranks every project's runs, each by its sweep's
    // summary: the last sweep's run by its last value 0.25 (its best would be 0.05).
    let board = coordinator.json(&["board"]);
    assert_eq!(board["project"], Value::Null, "{board}");
    assert_eq!(board["metric"], "eval/loss", "{board}");
    let rows = board["rows"].as_array().unwrap();
    let projects: Vec<&str> = rows
        .iter()
        .map(|row| as_str(&row["run"]["project"], "project"))
        .collect();
    assert_eq!(projects, ["sum-a", "sum-b", "sum-a", "sum-a"], "{board}");
    assert_eq!(
        values_of(&board["rows"], "value"),
        [0.1, 0.25, 0.3, 0.45],
        "{board}"
    );
    let board = coordinator.json(&["board", "--per", "sweep", "--limit", "5"]);
    let ranked: Vec<&str> = board["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| as_str(&row["sweep_name"], "sweep"))
        .collect();
    assert_eq!(ranked, ["best", "last"], "{board}");
    let table = coordinator.ladder(&["board"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("all projects") && table.contains("PROJECT"),
        "{table}"
    );
}

/// Reports its provenance with `@ladder.info` lines: a first line, a metric, a second
/// line that overrides one key (and carries a null, which is skipped), then a malformed
/// info line, which stays in the log with a warning.
const PROVENANCE: &str = r#"
import json
print("@ladder.info " + json.dumps({"base_model": "models/tiny", "base_model.sha256": "ab12",
                                   "data.train": "data/train.jsonl", "epochs": 3, "lora": True}), flush=True)
print("@ladder " + json.dumps({"step": 1, "loss": 0.5}), flush=True)
print("@ladder.info " + json.dumps({"base_model.sha256": "cd34", "note": None}), flush=True)
print("@ladder.info {broken", flush=True)
print("done", flush=True)
"#;

#[test]
fn what_a_run_reports_with_ladder_info_is_on_its_card() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    write_script(dir, "provenance.py", PROVENANCE);
    let mut cluster = Cluster::builder(dir)
        .coordinator_args(&["--heartbeat-interval", "0.5"])
        .agent("alpha", 1)
        .start();
    let coordinator = &mut cluster.coordinator;
    let (sweep_id, sweep) = coordinator.run_sweep(
        dir,
        "provenance.yaml",
        r#"name: provenance
project: prov
method: grid
parameters:
  x: {value: 1}
command: [python3, "{{ladder.code_dir}}/provenance.py"]
"#,
    );
    assert_eq!(sweep["counts"]["completed"], 1, "{sweep}");
    let run_id = format!("{sweep_id}-000000");
    // Strings as printed, numbers and booleans in their JSON form; the later line's
    // `base_model.sha256` overrides the first one's.
    let want = serde_json::json!({
        "base_model": "models/tiny",
        "base_model.sha256": "cd34",
        "data.train": "data/train.jsonl",
        "epochs": "3",
        "lora": "true",
    });

    let card = coordinator.run_detail(&run_id);
    assert_eq!(card["info"], want, "{card}");
    assert_eq!(as_f64(&card["metrics"]["loss"], "loss"), 0.5, "{card}");
    // The skipped null and the malformed line are in the log with warnings; the
    // malformed line itself is kept as a log line.
    let tail = card["log_tail"].as_array().expect("log_tail");
    let texts: Vec<&str> = tail.iter().map(|l| as_str(&l["text"], "text")).collect();
    let warned = |prefix: &str, detail: &str| {
        tail.iter().any(|l| {
            let text = as_str(&l["text"], "text");
            l["stream"] == "ladder" && text.starts_with(prefix) && text.contains(detail)
        })
    };
    assert!(
        warned("skipped in info line", "\"note\": value is null"),
        "{texts:#?}"
    );
    assert!(warned("ignored info line", "not valid JSON"), "{texts:#?}");
    assert!(texts.contains(&"@ladder.info {broken"), "{texts:#?}");
    assert!(texts.contains(&"done"), "{texts:#?}");
    assert!(
        !texts.iter().any(|t| t.contains("models/tiny")),
        "a valid info line is not a log line: {texts:#?}"
    );

    // The text card has its own section.
    let output = coordinator.ladder(&["runs", "show", &run_id]);
    assert!(
        output.status.success(),
        "{}",
        describe(&["runs", "show"], &output)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let section: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "reported by the run")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(str::trim)
        .collect();
    let rows: Vec<Vec<&str>> = section
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["base_model", "models/tiny"],
            vec!["base_model.sha256", "cd34"],
            vec!["data.train", "data/train.jsonl"],
            vec!["epochs", "3"],
            vec!["lora", "true"],
        ],
        "{text}"
    );

    // Listings, --columns and JSON lines export carry it too.
    let listed = coordinator.json(&["runs", "ls", "--sweep", &sweep_id]);
    assert_eq!(listed["runs"][0]["info"], want, "{listed}");
    let output = coordinator.ladder(&[
        "runs",
        "export",
        "--format",
        "csv",
        "--sweep",
        &sweep_id,
        "--columns",
        "id,info.base_model.sha256",
    ]);
    let csv = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        csv.lines().collect::<Vec<_>>(),
        ["id,info.base_model.sha256", &format!("{run_id},cd34")],
        "{}",
        describe(&["runs", "export"], &output)
    );
    let output = coordinator.ladder(&["runs", "export", "--format", "jsonl", "--sweep", &sweep_id]);
    let exported: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(
        exported.len(),
        1,
        "{}",
        describe(&["runs", "export"], &output)
    );
    assert_eq!(exported[0]["info"], want);

    // The store keeps it across a coordinator restart (kill -9).
    coordinator.restart();
    let card = coordinator.run_detail(&run_id);
    assert_eq!(card["info"], want, "{card}");
}
