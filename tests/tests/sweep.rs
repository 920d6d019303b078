//! Sweeps on a healthy cluster: one coordinator, real agents, real subprocess runs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ladder_e2e::{
    as_f64, as_str, write_file, write_script, Cluster, TestDir, Value, WATCH_TIMEOUT,
};

/// The objective of the grid test: prints `score` at steps 1..=3 and `loss` at steps 1
/// and 2 only (so the last `loss` is from step 2), sleeping a little so both agents get
/// work, then exits 0. All values are exact in binary floating point.
const OBJECTIVE: &str = r#"
import json, sys, time
a = int(sys.argv[1])
b = sys.argv[2]
bonus = {"x": 0.25, "y": 0.5, "z": 0.75, "w": 1.0}[b]
for step in (1, 2, 3):
    point = {"step": step, "score": a * step + bonus}
    if step < 3:
        point["loss"] = 1.0 / (2 ** step) + a
    print("@ladder " + json.dumps(point), flush=True)
    print("log line at step %d" % step, flush=True)
time.sleep(0.3)
"#;

fn expected_metrics(a: i64, b: &str) -> (f64, f64) {
    let bonus = match b {
        "x" => 0.25,
        "y" => 0.5,
        "z" => 0.75,
        "w" => 1.0,
        other => panic!("unexpected b {other}"),
    };
    let score = a as f64 * 3.0 + bonus;
    let loss = 1.0 / 4.0 + a as f64;
    (score, loss)
}

#[test]
fn grid_sweep_runs_everywhere_once() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let cluster = Cluster::builder(dir)
        .leases("10", "0.5")
        .agent("alpha", 2)
        .agent("beta", 2)
        .start();
    let coordinator = &cluster.coordinator;

    write_script(dir, "objective.py", OBJECTIVE);
    let (sweep_id, sweep) = coordinator.run_sweep(
        dir,
        "grid.yaml",
        r#"name: grid-e2e
project: e2e
method: grid
metric: {name: score, goal: maximize}
parallel: 4
parameters:
  a: {values: [1, 2, 3]}
  b: {values: [x, y, z, w]}
command: [python3, "{{ladder.code_dir}}/objective.py", "{{a}}", "{{b}}"]
"#,
    );
    assert_eq!(sweep["id"], sweep_id.as_str(), "{sweep}");
    assert_eq!(sweep["status"], "completed", "{sweep}");
    assert_eq!(sweep["planned_runs"], 12, "{sweep}");
    assert_eq!(sweep["created_runs"], 12, "{sweep}");
    assert_eq!(sweep["counts"]["completed"], 12, "{sweep}");
    assert_eq!(sweep["metric"]["name"], "score", "{sweep}");

    let runs = coordinator.runs(&sweep_id);
    assert_eq!(runs.len(), 12, "runs ls: {runs:#?}");
    let mut seen = BTreeMap::new();
    let mut agents = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for run in &runs {
        let id = as_str(&run["id"], "run id");
        assert_eq!(run["status"], "completed", "{run}");
        assert_eq!(run["sweep_id"], sweep_id.as_str(), "{run}");
        assert_eq!(run["project"], "e2e", "{run}");
        assert_eq!(run["attempts"], 1, "{run}");
        assert_eq!(run["exit_code"], 0, "{run}");
        assert_eq!(run["last_step"], 3, "{run}");
        let index = run["index"].as_u64().expect("index");
        assert_eq!(id, format!("{sweep_id}-{index:06}"), "run id format: {run}");
        assert!(ids.insert(id.to_string()), "run id {id} listed twice");
        let a = run["params"]["a"]
            .as_i64()
            .unwrap_or_else(|| panic!("a: {run}"));
        let b = as_str(&run["params"]["b"], "param b").to_string();
        let (score, loss) = expected_metrics(a, &b);
        assert_eq!(
            as_f64(&run["metrics"]["score"], "score"),
            score,
            "last score of {run}"
        );
        assert_eq!(
            as_f64(&run["metrics"]["loss"], "loss"),
            loss,
            "last loss of {run}"
        );
        if let Some(previous) = seen.insert((a, b.clone()), id.to_string()) {
            panic!("params a={a} b={b} ran twice: {previous} and {id}");
        }
        agents.insert(as_str(&run["agent"], "agent").to_string());
    }
    let expected: BTreeSet<(i64, String)> = [1, 2, 3]
        .into_iter()
        .flat_map(|a| ["x", "y", "z", "w"].map(move |b| (a, b.to_string())))
        .collect();
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "the runs' params are not the grid"
    );
    assert_eq!(
        agents,
        BTreeSet::from(["alpha".to_string(), "beta".to_string()]),
        "runs did not spread over both agents"
    );

    // One run in detail: its metric history is exactly what the script printed.
    let first = as_str(&runs[0]["id"], "id").to_string();
    let detail = coordinator.run_detail(&first);
    let history = detail["metric_history"].as_array().expect("metric_history");
    assert_eq!(history.len(), 1, "{detail}");
    let steps: Vec<i64> = history[0]["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p["step"].as_i64().expect("step"))
        .collect();
    assert_eq!(steps, [1, 2, 3], "{detail}");
    let logs: Vec<&str> = detail["log_tail"]
        .as_array()
        .expect("log_tail")
        .iter()
        .map(|l| as_str(&l["text"], "log text"))
        .collect();
    assert_eq!(
        logs,
        [
            "log line at step 1",
            "log line at step 2",
            "log line at step 3"
        ],
        "metric lines must not appear in the log: {detail}"
    );
}

#[test]
fn failing_command_is_failed_with_exit_code() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let cluster = Cluster::builder(dir)
        .leases("10", "0.5")
        .agent("solo", 2)
        .start();
    let coordinator = &cluster.coordinator;

    // The argv is executed directly, so a shell is `sh -c SCRIPT sh ARGS...`.
    let (sweep_id, sweep) = coordinator.run_sweep(
        dir,
        "fail.yaml",
        r#"name: fail-e2e
method: grid
parallel: 2
parameters:
  code: {values: [0, 1, 2, 3]}
command:
  - sh
  - -c
  - |
    echo "@ladder {\"step\": 1, \"code\": $1}"
    echo "working on code $1"
    if [ "$1" = 3 ]; then
      echo "fatal: code $1 requested" >&2
      exit 3
    fi
  - sh
  - "{{code}}"
"#,
    );
    assert_eq!(sweep["status"], "completed", "{sweep}");
    assert_eq!(sweep["counts"]["completed"], 3, "{sweep}");
    assert_eq!(sweep["counts"]["failed"], 1, "{sweep}");
    assert_eq!(sweep["counts"]["queued"], 0, "{sweep}");
    assert_eq!(sweep["counts"]["running"], 0, "{sweep}");

    let runs = coordinator.runs(&sweep_id);
    assert_eq!(runs.len(), 4, "{runs:#?}");
    let mut failed = Vec::new();
    for run in &runs {
        let code = run["params"]["code"].as_i64().expect("code param");
        // A failed command is not retried.
        assert_eq!(run["attempts"], 1, "{run}");
        assert_eq!(as_f64(&run["metrics"]["code"], "code metric"), code as f64);
        if code == 3 {
            assert_eq!(run["status"], "failed", "{run}");
            assert_eq!(run["exit_code"], 3, "{run}");
            assert_eq!(run["signal"], Value::Null, "{run}");
            failed.push(as_str(&run["id"], "id").to_string());
        } else {
            assert_eq!(run["status"], "completed", "{run}");
            assert_eq!(run["exit_code"], 0, "{run}");
        }
    }
    assert_eq!(failed.len(), 1);

    let detail = coordinator.run_detail(&failed[0]);
    assert_eq!(detail["status"], "failed", "{detail}");
    assert_eq!(detail["exit_code"], 3, "{detail}");
    let attempts = detail["attempt_history"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{detail}");
    assert_eq!(attempts[0]["number"], 1, "{detail}");
    assert_eq!(attempts[0]["outcome"], "failed", "{detail}");
    assert_eq!(attempts[0]["exit_code"], 3, "{detail}");
    assert_eq!(attempts[0]["agent"], "solo", "{detail}");
    let logs = detail["log_tail"].as_array().expect("log_tail");
    assert!(
        logs.iter()
            .any(|l| l["stream"] == "stderr" && l["text"] == "fatal: code 3 requested"),
        "the stderr line is not in the log tail: {detail}"
    );
    assert!(
        logs.iter()
            .any(|l| l["stream"] == "stdout" && l["text"] == "working on code 3"),
        "the stdout line is not in the log tail: {detail}"
    );
}

/// Notes the run's start and end on one line each (one `write` of less than a pipe
/// buffer in append mode, so lines of concurrent runs never mix) around a short nap.
const SPAN: &str = r#"
import os, sys, time
path = sys.argv[1]
def note(what):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, ("%s %d\n" % (what, time.monotonic_ns())).encode())
    os.close(fd)
note("start")
time.sleep(0.05)
note("end")
"#;

/// A sweep of short runs gets runs waiting in the agent's queue (started by the agent
/// the moment a run ends), yet the agent never runs more than its slots at once: every
/// run notes when it started and ended, and at no instant were more than two running.
#[test]
fn runs_queued_on_an_agent_never_exceed_its_slots() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let cluster = Cluster::builder(dir)
        .leases("10", "0.5")
        .agent("solo", 2)
        .start();
    let spans = dir.join("spans.txt");
    write_script(dir, "span.py", SPAN);
    let (_, done) = cluster.coordinator.run_sweep(
        dir,
        "short.yaml",
        &format!(
            "name: short-e2e\nmethod: grid\nparallel: 2\nparameters:\n  i: {{distribution: int_uniform, min: 1, max: 40}}\ncommand: [python3, \"{{{{ladder.code_dir}}}}/span.py\", \"{}\"]\n",
            spans.display()
        ),
    );
    assert_eq!(done["counts"]["completed"], 40, "{done}");
    let text = std::fs::read_to_string(&spans).unwrap();
    let mut events: Vec<(u64, i32)> = text
        .lines()
        .map(|line| {
            let (what, at) = line.split_once(' ').expect("what and when");
            let delta = if what == "start" { 1 } else { -1 };
            (at.parse().expect("nanoseconds"), delta)
        })
        .collect();
    assert_eq!(events.len(), 80, "{text}");
    // Ends before starts at the same instant.
    events.sort();
    let mut running = 0;
    let mut most = 0;
    for (_, delta) in events {
        running += delta;
        most = most.max(running);
    }
    assert!(most <= 2, "{most} runs at once on an agent of 2 slots");
    let log = std::fs::read_to_string(cluster.agent("solo").log()).unwrap();
    assert!(
        log.contains("run queued until a slot frees"),
        "no run waited in the agent's queue:\n{log}"
    );
}

#[test]
fn paused_sweep_proposes_nothing_until_resumed() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let cluster = Cluster::builder(dir)
        .leases("10", "0.5")
        .agent("solo", 2)
        .start();
    let coordinator = &cluster.coordinator;
    let sweep_file = write_file(
        dir,
        "pause.yaml",
        r#"name: pause-e2e
method: grid
parallel: 1
parameters:
  i: {distribution: int_uniform, min: 1, max: 4}
command: [sleep, "1"]
"#,
    );
    let sweep_id = coordinator.submit(&sweep_file);
    ladder_e2e::wait_until(
        Duration::from_secs(60),
        Duration::from_millis(50),
        "a running run",
        || {
            let sweep = coordinator.json(&["sweep", "show", &sweep_id]);
            (sweep["counts"]["running"] == 1).then_some(())
        },
    );
    let paused = coordinator.json(&["sweep", "pause", &sweep_id]);
    assert_eq!(paused["status"], "paused", "{paused}");
    // The running run finishes; nothing new is created while paused.
    let sweep = ladder_e2e::wait_until(
        Duration::from_secs(60),
        Duration::from_millis(100),
        "the running run to end",
        || {
            let sweep = coordinator.json(&["sweep", "show", &sweep_id]);
            (sweep["counts"]["completed"] == 1 && sweep["counts"]["running"] == 0).then_some(sweep)
        },
    );
    assert_eq!(sweep["created_runs"], 1, "{sweep}");
    std::thread::sleep(Duration::from_secs(2));
    let sweep = coordinator.json(&["sweep", "show", &sweep_id]);
    assert_eq!(sweep["status"], "paused", "{sweep}");
    assert_eq!(
        sweep["created_runs"], 1,
        "a paused sweep created a run: {sweep}"
    );
    assert_eq!(sweep["counts"]["running"], 0, "{sweep}");

    let resumed = coordinator.json(&["sweep", "resume", &sweep_id]);
    assert_eq!(resumed["status"], "running", "{resumed}");
    let done = coordinator.watch(&sweep_id, WATCH_TIMEOUT);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["counts"]["completed"], 4, "{done}");
}

#[test]
fn cancelled_sweep_stops_its_runs() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let cluster = Cluster::builder(dir)
        .leases("10", "0.5")
        .agent("solo", 2)
        .start();
    let coordinator = &cluster.coordinator;
    let sweep_file = write_file(
        dir,
        "cancel.yaml",
        r#"name: cancel-e2e
method: grid
parallel: 2
parameters:
  i: {distribution: int_uniform, min: 1, max: 10}
command: [sleep, "30"]
"#,
    );
    let sweep_id = coordinator.submit(&sweep_file);
    ladder_e2e::wait_until(
        Duration::from_secs(60),
        Duration::from_millis(50),
        "two running runs",
        || {
            let sweep = coordinator.json(&["sweep", "show", &sweep_id]);
            (sweep["counts"]["running"] == 2).then_some(())
        },
    );
    let cancelled = coordinator.json(&["sweep", "cancel", &sweep_id]);
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let runs = ladder_e2e::wait_until(
        Duration::from_secs(60),
        Duration::from_millis(100),
        "runs to end",
        || {
            let runs = coordinator.runs(&sweep_id);
            runs.iter()
                .all(|r| r["status"] != "running")
                .then_some(runs)
        },
    );
    assert_eq!(runs.len(), 2, "no run is created after cancel: {runs:#?}");
    for run in &runs {
        assert_eq!(run["status"], "cancelled", "{run}");
        let detail = coordinator.run_detail(as_str(&run["id"], "id"));
        assert_eq!(
            detail["attempt_history"][0]["outcome"], "cancelled",
            "{detail}"
        );
    }
}
