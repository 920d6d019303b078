//! Runs at a real team's scale, as seen from the agent: long output lines, output far
//! beyond a run's budget, a run stopped while its agent drains, and processes that try to
//! outlive their run.

use std::path::Path;
use std::time::Duration;

use ladder_e2e::{as_str, wait_until, write_file, write_script, Agent, Cluster, TestDir};

/// A coordinator with a 10 s lease timeout and one agent, `a1`, of one slot started with
/// `agent_args`.
fn one_agent_cluster(dir: &Path, agent_args: &[&str]) -> Cluster {
    Cluster::builder(dir)
        .leases("10", "0.5")
        .agent_with("a1", 1, agent_args)
        .start()
}

/// The sweep file of a grid sweep named `name` whose runs execute `command` (a YAML flow
/// list), one run per value of `x`.
fn grid_sweep(name: &str, xs: &str, command: &str) -> String {
    format!(
        "name: {name}\nmethod: grid\nparallel: 1\nmax_restarts: 0\nparameters:\n  x: {{values: [{xs}]}}\ncommand: {command}\n"
    )
}

/// How many times the agent's log says it connected to the coordinator.
fn connections(agent: &Agent) -> usize {
    std::fs::read_to_string(agent.log())
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(" connected coordinator="))
        .count()
}

/// Prints 200 log lines of 60 KB (12 MB in all: three times what one message used to
/// carry) and five `@ladder` lines of ~45 KB each (200 metrics with long names).
const LONG_LINES: &str = r#"
import json, sys
for i in range(200):
    sys.stdout.write(("%05d " % i) + "x" * 60000 + "\n")
names = ["metric_%03d_" % k + "n" * 200 for k in range(200)]
for step in range(5):
    sys.stdout.write("@ladder " + json.dumps(dict({"step": step}, **{n: step + 0.5 for n in names})) + "\n")
sys.stdout.flush()
"#;

#[test]
fn long_output_lines_are_delivered_in_bounded_batches() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let cluster = one_agent_cluster(dir, &[]);
    let coordinator = &cluster.coordinator;
    write_script(dir, "long_lines.py", LONG_LINES);
    let (sweep_id, sweep) = coordinator.run_sweep(
        dir,
        "long-lines.yaml",
        &grid_sweep(
            "long-lines",
            "1, 2",
            r#"[python3, "{{ladder.code_dir}}/long_lines.py"]"#,
        ),
    );
    assert_eq!(sweep["status"], "completed", "{sweep}");

    // Both runs (the second one placed on the same agent after the first) completed,
    // every line and point stored.
    let runs = coordinator.runs(&sweep_id);
    assert_eq!(runs.len(), 2, "{runs:#?}");
    for run in &runs {
        assert_eq!(run["status"], "completed", "{run}");
        let id = as_str(&run["id"], "id");
        let detail = coordinator.json(&["runs", "show", id, "--log-lines", "5"]);
        assert_eq!(detail["log_lines"], 200, "{}", detail["log_lines"]);
        assert_eq!(run["last_step"], 4, "{run}");
        let metrics = run["metrics"].as_object().expect("metrics");
        assert_eq!(metrics.len(), 200, "{:?}", metrics.keys());
        for tail in detail["log_tail"].as_array().expect("log_tail") {
            assert_eq!(
                as_str(&tail["text"], "text").len(),
                60006,
                "{}",
                tail["stream"]
            );
        }
    }
    // One session did it all: no message was refused and resent.
    assert_eq!(connections(cluster.agent("a1")), 1, "the agent reconnected");
    assert!(
        coordinator.connected_agents().contains("a1"),
        "the agent is not connected"
    );
}

/// Sleeps until stopped; on SIGTERM it exits at once (as the default action would).
const SLEEPER: &str = r#"
import time
print("sleeping", flush=True)
time.sleep(1000)
"#;

fn signal_group(pgid: u32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid names a group.
    unsafe {
        libc::kill(-(pgid as i32), signal);
    }
}

/// A supervisor stopping the node (Slurm's `scancel`, systemd) sends SIGTERM to the runs
/// and to the agent at the same moment. The run dies of it while the agent starts to
/// drain: it is handed back (`released`, queued again), not failed.
#[test]
fn a_run_terminated_with_its_draining_agent_is_released_not_failed() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let mut cluster = one_agent_cluster(dir, &["--stop-grace", "5"]);
    let mut agent = cluster.take_agent("a1");
    let coordinator = &cluster.coordinator;
    write_script(dir, "sleeper.py", SLEEPER);
    let sweep_file = write_file(
        dir,
        "terminated.yaml",
        &grid_sweep(
            "terminated",
            "1",
            r#"[python3, "{{ladder.code_dir}}/sleeper.py"]"#,
        ),
    );
    let sweep_id = coordinator.submit(&sweep_file);
    let run_pid = wait_until(
        Duration::from_secs(60),
        Duration::from_millis(100),
        "the run to start",
        || {
            let running = coordinator
                .runs(&sweep_id)
                .iter()
                .any(|r| r["status"] == "running");
            let pids = agent.run_pids();
            (running && pids.len() == 1).then(|| pids[0])
        },
    );
    // The run's group first, the agent right after: the run's death can reach the agent
    // before its own signal does.
    signal_group(run_pid, libc::SIGTERM);
    agent.signal(libc::SIGTERM);
    let status = agent
        .wait_exit(Duration::from_secs(60))
        .expect("the agent drains and exits");
    assert!(status.success(), "{status}");

    let runs = coordinator.runs(&sweep_id);
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["status"], "queued", "{}", runs[0]);
    let detail = coordinator.run_detail(as_str(&runs[0]["id"], "id"));
    let attempts = detail["attempt_history"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{detail}");
    assert_eq!(attempts[0]["outcome"], "released", "{detail}");
    let sweep = coordinator.json(&["sweep", "show", &sweep_id]);
    assert_ne!(sweep["status"], "failed", "{sweep}");
}
