//! Faults: a coordinator killed and restarted mid-sweep, an agent that disappears.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ladder_e2e::{as_str, wait_until, write_file, write_script, Cluster, TestDir, Value};

const POLL: Duration = Duration::from_millis(200);

/// Each run prints five metric steps ~0.2 s apart, then appends
/// `RUN_ID ATTEMPT` to the completions file (argv[1]) and exits 0.
const STEPPER: &str = r#"
import json, os, sys, time
completions = sys.argv[1]
x = int(sys.argv[2])
for step in range(1, 6):
    print("@ladder " + json.dumps({"step": step, "value": x * 100 + step}), flush=True)
    time.sleep(0.2)
line = "%s %s\n" % (os.environ["LADDER_RUN_ID"], os.environ["LADDER_ATTEMPT"])
fd = os.open(completions, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, line.encode())
os.close(fd)
"#;

fn completed(runs: &[Value]) -> Vec<&Value> {
    runs.iter().filter(|r| r["status"] == "completed").collect()
}

#[test]
fn coordinator_killed_mid_sweep_loses_nothing() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let mut cluster = Cluster::builder(dir)
        .leases("5", "0.5")
        .agent("alpha", 2)
        .agent("beta", 2)
        .start();
    let url = cluster.url();
    let coordinator = &mut cluster.coordinator;

    write_script(dir, "stepper.py", STEPPER);
    let completions = dir.join("completions.txt");
    let sweep_file = write_file(
        dir,
        "sweep.yaml",
        &format!(
            r#"name: restart-e2e
method: grid
parallel: 4
parameters:
  x: {{values: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]}}
command: [python3, "{{{{ladder.code_dir}}}}/stepper.py", "{completions}", "{{{{x}}}}"]
"#,
            completions = completions.display()
        ),
    );
    let sweep_id = coordinator.submit(&sweep_file);

    // Let a few runs complete, then take a last look before the crash.
    let before = wait_until(Duration::from_secs(120), POLL, "3 runs to complete", || {
        let runs = coordinator.runs(&sweep_id);
        (completed(&runs).len() >= 3).then_some(runs)
    });
    coordinator.kill9();
    let completed_before: BTreeMap<String, Value> = completed(&before)
        .into_iter()
        .map(|r| (as_str(&r["id"], "id").to_string(), r.clone()))
        .collect();
    assert!(
        completed_before.len() < 16,
        "the sweep finished before the crash; nothing was tested"
    );

    // The runs in flight (~1 s each) keep going and end while the coordinator is down;
    // their agents must hold on to what they could not report.
    std::thread::sleep(Duration::from_millis(1500));
    let finished_while_down = std::fs::read_to_string(&completions)
        .map(|text| text.lines().count())
        .unwrap_or(0)
        .saturating_sub(completed_before.len());
    eprintln!("runs that ended after the last look before the crash: {finished_while_down}");
    coordinator.restart();
    assert_eq!(coordinator.url(), url);

    let sweep = coordinator.watch(&sweep_id, Duration::from_secs(180));
    assert_eq!(sweep["status"], "completed", "{sweep}");
    assert_eq!(sweep["counts"]["completed"], 16, "{sweep}");

    let runs = coordinator.runs(&sweep_id);
    assert_eq!(runs.len(), 16, "{runs:#?}");
    let xs: BTreeSet<i64> = runs
        .iter()
        .map(|r| r["params"]["x"].as_i64().expect("x"))
        .collect();
    assert_eq!(xs, (1..=16).collect::<BTreeSet<i64>>());
    for run in &runs {
        let id = as_str(&run["id"], "id");
        assert_eq!(run["status"], "completed", "{run}");
        let x = run["params"]["x"].as_i64().expect("x");
        assert_eq!(run["last_step"], 5, "{run}");
        assert_eq!(run["metrics"]["value"].as_f64(), Some((x * 100 + 5) as f64));
        if let Some(old) = completed_before.get(id) {
            assert_eq!(
                run["metrics"], old["metrics"],
                "metrics of {id} changed over the restart"
            );
            assert_eq!(run["last_step"], old["last_step"], "{id}");
            assert_eq!(run["attempts"], old["attempts"], "{id}");
            assert_eq!(run["agent"], old["agent"], "{id}");
        }

        let detail = coordinator.run_detail(id);
        let attempts = detail["attempt_history"].as_array().expect("attempts");
        assert_eq!(
            attempts.last().map(|a| &a["outcome"]),
            Some(&Value::from("completed")),
            "{detail}"
        );
        for earlier in &attempts[..attempts.len() - 1] {
            // Only an attempt whose agent never got it may be lost and retried.
            assert_eq!(earlier["outcome"], "lost", "{detail}");
        }
        for history in detail["metric_history"].as_array().expect("history") {
            let steps: Vec<i64> = history["points"]
                .as_array()
                .expect("points")
                .iter()
                .map(|p| p["step"].as_i64().expect("step"))
                .collect();
            assert!(
                steps.windows(2).all(|w| w[0] < w[1]),
                "run {id} attempt {}: steps not strictly increasing: {steps:?}",
                history["attempt"]
            );
        }
        let last = detail["metric_history"]
            .as_array()
            .and_then(|h| h.last())
            .expect("metric history of the completed attempt");
        let steps: Vec<i64> = last["points"]
            .as_array()
            .expect("points")
            .iter()
            .map(|p| p["step"].as_i64().expect("step"))
            .collect();
        assert_eq!(steps, [1, 2, 3, 4, 5], "run {id}: {detail}");
    }

    // Each run executed to completion exactly once.
    let text = std::fs::read_to_string(&completions).expect("completions file");
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for line in text.lines() {
        let run_id = line.split_whitespace().next().expect("run id");
        *count.entry(run_id).or_default() += 1;
    }
    let ids: BTreeSet<&str> = runs.iter().map(|r| as_str(&r["id"], "id")).collect();
    assert_eq!(
        count.keys().copied().collect::<BTreeSet<_>>(),
        ids,
        "completions:\n{text}"
    );
    assert!(
        count.values().all(|n| *n == 1),
        "some runs completed more than once:\n{text}"
    );

    let sweeps = coordinator.json(&["sweep", "ls"]);
    let sweeps = sweeps["sweeps"].as_array().expect("sweeps");
    assert_eq!(sweeps.len(), 1, "{sweeps:#?}");
    assert_eq!(sweeps[0]["id"], sweep_id.as_str());
}

/// Sleeps ~4 s in small steps, exiting early if the agent that started it goes away
/// (its parent changes), so a killed agent leaves nothing behind.
const SLEEPER: &str = r#"
import os, sys, time
parent = os.getppid()
print("@ladder {\"step\": 0, \"alive\": 1}", flush=True)
for _ in range(40):
    time.sleep(0.1)
    if os.getppid() != parent:
        sys.exit(1)
print("@ladder {\"step\": 1, \"alive\": 2}", flush=True)
"#;

#[test]
fn lost_agent_runs_are_requeued() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let mut cluster = Cluster::builder(dir)
        .leases("2", "0.3")
        .agent("agent-a", 1)
        .agent("agent-b", 1)
        .start();
    let mut agent_a = cluster.take_agent("agent-a");
    let coordinator = &cluster.coordinator;

    write_script(dir, "sleeper.py", SLEEPER);
    let sweep_file = write_file(
        dir,
        "sweep.yaml",
        r#"name: lost-e2e
method: grid
parallel: 2
parameters:
  n: {values: [1, 2]}
command: [python3, "{{ladder.code_dir}}/sleeper.py", "{{n}}"]
"#,
    );
    let sweep_id = coordinator.submit(&sweep_file);

    // Wait until each agent runs one of the two runs.
    let on_a = wait_until(
        Duration::from_secs(60),
        Duration::from_millis(100),
        "both runs running, one per agent",
        || {
            let runs = coordinator.runs(&sweep_id);
            let running: BTreeMap<String, String> = runs
                .iter()
                .filter(|r| r["status"] == "running")
                .filter_map(|r| {
                    Some((
                        r["agent"].as_str()?.to_string(),
                        r["id"].as_str()?.to_string(),
                    ))
                })
                .collect();
            (running.len() == 2).then(|| running["agent-a"].clone())
        },
    );
    agent_a.kill9_with_runs();

    let sweep = coordinator.watch(&sweep_id, Duration::from_secs(120));
    assert_eq!(sweep["status"], "completed", "{sweep}");
    assert_eq!(sweep["counts"]["completed"], 2, "{sweep}");

    let runs = coordinator.runs(&sweep_id);
    assert_eq!(runs.len(), 2);
    for run in &runs {
        assert_eq!(run["status"], "completed", "{run}");
        assert_eq!(run["agent"], "agent-b", "{run}");
        assert_eq!(run["last_step"], 1, "{run}");
        let id = as_str(&run["id"], "id");
        let expected_attempts = if id == on_a { 2 } else { 1 };
        assert_eq!(run["attempts"], expected_attempts, "{run}");
    }

    let detail = coordinator.run_detail(&on_a);
    let attempts = detail["attempt_history"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{detail}");
    assert_eq!(attempts[0]["number"], 1, "{detail}");
    assert_eq!(attempts[0]["agent"], "agent-a", "{detail}");
    assert_eq!(attempts[0]["outcome"], "lost", "{detail}");
    let reason = as_str(&attempts[0]["reason"], "reason");
    assert!(
        reason.contains("lease timeout"),
        "the lost attempt's reason does not mention the lease timeout: {reason:?}"
    );
    assert_eq!(attempts[1]["number"], 2, "{detail}");
    assert_eq!(attempts[1]["agent"], "agent-b", "{detail}");
    assert_eq!(attempts[1]["outcome"], "completed", "{detail}");
    assert_eq!(attempts[1]["exit_code"], 0, "{detail}");
    // The second attempt reported its own, complete metric history.
    let history = detail["metric_history"].as_array().expect("history");
    let second = history
        .iter()
        .find(|h| h["attempt"] == 2)
        .unwrap_or_else(|| panic!("no metrics of attempt 2: {detail}"));
    let steps: Vec<i64> = second["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p["step"].as_i64().expect("step"))
        .collect();
    assert_eq!(steps, [0, 1], "{detail}");

    let agents = coordinator.json(&["agents", "ls"]);
    let a = agents["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .find(|a| a["name"] == "agent-a")
        .unwrap_or_else(|| panic!("agent-a not listed: {agents}"));
    assert_eq!(a["connected"], false, "{agents}");
}
