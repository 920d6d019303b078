//! Search that learns and stops bad runs early, on real processes: ASHA, bayes (TPE) and gp.

use std::collections::BTreeSet;

use ladder_e2e::{as_f64, as_str, write_script, Cluster, TestDir, Value};

/// A training curve: the loss decays from 2.1 toward a floor set by `x` through a
/// permutation (so good and bad runs arrive in mixed order), printing one point per step.
/// The best run is x = 7 (floor 0.1).
const CURVE: &str = r#"
import json, math, sys, time
x = int(sys.argv[1])
steps = int(sys.argv[2])
floor = 0.1 + 0.03 * ((7 * x + 5) % 27)
for step in range(1, steps + 1):
    loss = floor + 2.0 * math.exp(-step / 4.0)
    print("@ladder " + json.dumps({"step": step, "loss": loss}), flush=True)
    time.sleep(0.04)
"#;

#[test]
fn asha_stops_poor_runs_at_their_rung() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let cluster = Cluster::builder(dir)
        .leases("10", "0.5")
        .agent("a", 2)
        .agent("b", 2)
        .start();
    let coordinator = &cluster.coordinator;
    write_script(dir, "curve.py", CURVE);
    let max_step = 27;
    let (sweep_id, sweep) = coordinator.run_sweep(
        dir,
        "asha.yaml",
        r#"name: asha-e2e
method: grid
metric: {name: loss, goal: minimize}
parallel: 4
parameters:
  x: {distribution: int_uniform, min: 0, max: 26}
early_terminate: {type: asha, min_step: 1, max_step: 27, reduction_factor: 3}
command: [python3, "{{ladder.code_dir}}/curve.py", "{{x}}", "27"]
"#,
    );
    assert_eq!(sweep["status"], "completed", "{sweep}");
    let runs = coordinator.runs(&sweep_id);
    assert_eq!(runs.len(), 27);

    let mut steps_executed = 0i64;
    let mut stopped = 0;
    for run in &runs {
        let last_step = run["last_step"].as_i64().unwrap_or(0);
        steps_executed += last_step;
        match as_str(&run["status"], "status") {
            "completed" => assert_eq!(last_step, max_step, "a completed run ran to the end: {run}"),
            "stopped" => {
                stopped += 1;
                assert!(last_step < max_step, "{run}");
                let detail = coordinator.run_detail(as_str(&run["id"], "id"));
                let attempt = &detail["attempt_history"][0];
                assert_eq!(attempt["outcome"], "stopped", "{detail}");
                let reason = as_str(&attempt["reason"], "reason");
                assert!(
                    reason.contains("asha") && reason.contains("rung"),
                    "the stop names the rule and rung: {reason}"
                );
            }
            other => panic!("unexpected status {other}: {run}"),
        }
    }
    let best = runs
        .iter()
        .find(|r| r["params"]["x"] == 7)
        .expect("run x=7");
    assert_eq!(
        best["status"], "completed",
        "the best run is never stopped: {best}"
    );
    assert_eq!(best["last_step"], max_step, "{best}");
    let ratio = steps_executed as f64 / (27.0 * max_step as f64);
    eprintln!("asha: {stopped} of 27 runs stopped early; {steps_executed} of {} steps executed (ratio {ratio:.3})", 27 * max_step);
    assert!(stopped >= 9, "ASHA stopped only {stopped} runs");
    assert!(
        ratio < 0.6,
        "ASHA executed {ratio:.3} of the steps of a full grid"
    );
}

/// A smooth objective with its minimum at lr = 10^-2.5, x = 0.3; one point, then exit.
const BOWL: &str = r#"
import json, math, sys
lr = float(sys.argv[1]); x = float(sys.argv[2]); opt = sys.argv[3]
loss = (math.log10(lr) + 2.5) ** 2 + 4 * (x - 0.3) ** 2 + (0.0 if opt == "adamw" else 0.3)
print("@ladder " + json.dumps({"loss": loss}))
"#;

fn loss_of(run: &Value) -> f64 {
    as_f64(&run["metrics"]["loss"], "loss")
}

#[test]
fn bayes_with_parallel_trials_converges_without_duplicates() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let cluster = Cluster::builder(dir)
        .leases("10", "0.5")
        .agent("a", 2)
        .agent("b", 2)
        .start();
    let coordinator = &cluster.coordinator;
    write_script(dir, "bowl.py", BOWL);
    let (sweep_id, sweep) = coordinator.run_sweep(
        dir,
        "bayes.yaml",
        r#"name: bayes-e2e
method: bayes
metric: {name: loss, goal: minimize}
max_runs: 40
parallel: 4
seed: 3
parameters:
  lr: {distribution: log_uniform, min: 1.0e-5, max: 1.0}
  x: {distribution: uniform, min: -2, max: 2}
  opt: {values: [adamw, sgd]}
command: [python3, "{{ladder.code_dir}}/bowl.py", "{{lr}}", "{{x}}", "{{opt}}"]
"#,
    );
    assert_eq!(sweep["status"], "completed", "{sweep}");
    let runs = coordinator.runs(&sweep_id);
    assert_eq!(runs.len(), 40);
    assert!(runs.iter().all(|r| r["status"] == "completed"), "{runs:#?}");

    let params: BTreeSet<String> = runs.iter().map(|r| r["params"].to_string()).collect();
    assert_eq!(params.len(), 40, "two trials got identical parameters");

    let mut first_ten: Vec<f64> = runs
        .iter()
        .filter(|r| r["index"].as_u64().unwrap() < 10)
        .map(loss_of)
        .collect();
    first_ten.sort_by(f64::total_cmp);
    let median_first_ten = (first_ten[4] + first_ten[5]) / 2.0;
    let best = runs.iter().map(loss_of).fold(f64::INFINITY, f64::min);
    let best_late = runs
        .iter()
        .filter(|r| r["index"].as_u64().unwrap() >= 10)
        .map(loss_of)
        .fold(f64::INFINITY, f64::min);
    eprintln!("bayes: median of first 10 = {median_first_ten:.4}, best = {best:.4}, best after 10 = {best_late:.4}");
    assert!(
        best < median_first_ten,
        "best {best} is not better than the first ten's median {median_first_ten}"
    );
    assert!(
        best_late < first_ten[0],
        "the model-guided trials found nothing better than the random start-up ({best_late} vs {})",
        first_ten[0]
    );
}

/// `method: gp` through a real coordinator and agents: trials in flight on four slots,
/// a categorical parameter among numeric ones, no duplicate trials, and the guided
/// trials after the 10 random start-up ones find a better point than any of those.
#[test]
fn gaussian_process_sweep_runs_in_parallel_and_improves_on_its_start_up() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let cluster = Cluster::builder(dir)
        .leases("10", "0.5")
        .agent("a", 2)
        .agent("b", 2)
        .start();
    let coordinator = &cluster.coordinator;
    write_script(dir, "bowl.py", BOWL);
    let (sweep_id, sweep) = coordinator.run_sweep(
        dir,
        "gp.yaml",
        r#"name: gp-e2e
method: gp
metric: {name: loss, goal: minimize}
max_runs: 22
parallel: 4
seed: 5
parameters:
  lr: {distribution: log_uniform, min: 1.0e-5, max: 1.0}
  x: {distribution: uniform, min: -2, max: 2}
  opt: {values: [adamw, sgd]}
command: [python3, "{{ladder.code_dir}}/bowl.py", "{{lr}}", "{{x}}", "{{opt}}"]
"#,
    );
    assert_eq!(sweep["status"], "completed", "{sweep}");
    let runs = coordinator.runs(&sweep_id);
    assert_eq!(runs.len(), 22);
    assert!(runs.iter().all(|r| r["status"] == "completed"), "{runs:#?}");
    let params: BTreeSet<String> = runs.iter().map(|r| r["params"].to_string()).collect();
    assert_eq!(params.len(), 22, "two trials got identical parameters");
    let best_of = |early: bool| {
        runs.iter()
            .filter(|r| (r["index"].as_u64().unwrap() < 10) == early)
            .map(loss_of)
            .fold(f64::INFINITY, f64::min)
    };
    let (start_up, guided) = (best_of(true), best_of(false));
    eprintln!("gp: best of the 10 start-up trials {start_up:.4}, of the 12 guided {guided:.4}");
    assert!(
        guided < start_up,
        "the guided trials found nothing better than the start-up ({guided} vs {start_up})"
    );
}
