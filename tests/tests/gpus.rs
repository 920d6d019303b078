//! Runs on GPU nodes, with fake GPU inventories (`ladder agent --gpus fake:8`): each run
//! sees exactly its GPUs, gets torchrun's variables, and a `per_gpu` run is one process
//! per rank that fails as a whole when one rank fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use ladder_e2e::{
    as_str, wait_until, write_file, write_script, Agent, Cluster, ClusterBuilder, Coordinator,
    TestDir, Value, WATCH_TIMEOUT,
};

/// Writes what the process sees into `probes/RUN_ID-rank-RANK.json` under the code dir,
/// reports a metric naming its rank, prints a log line, and stays up a while so that
/// runs overlap.
const PROBE: &str = r#"
import json, os, sys, time
start = time.time()
rank = os.environ.get("RANK", "none")
print("@ladder " + json.dumps({"step": 1, "reporting_rank": int(rank) if rank.isdigit() else -1}), flush=True)
print("hello from rank %s" % rank, flush=True)
time.sleep(2.0)
names = ["CUDA_VISIBLE_DEVICES", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "LOCAL_RANK",
         "MASTER_ADDR", "MASTER_PORT", "LADDER_RUN_ID"]
seen = {name: os.environ.get(name) for name in names}
seen["pid"] = os.getpid()
seen["start"] = start
seen["end"] = time.time()
probes = os.path.join(sys.argv[1], "probes")
os.makedirs(probes, exist_ok=True)
path = os.path.join(probes, "%s-rank-%s.json" % (os.environ["LADDER_RUN_ID"], rank))
with open(path + ".tmp", "w") as f:
    json.dump(seen, f)
os.rename(path + ".tmp", path)
"#;

/// Rank 1 fails after a moment; rank 0 writes its pid and sleeps far longer than the test.
const FAILING_RANK: &str = r#"
import os, sys, time
rank = int(os.environ["RANK"])
if rank == 1:
    time.sleep(1.0)
    print("rank 1 giving up", flush=True)
    sys.exit(1)
with open(os.path.join(sys.argv[1], "rank0.pid"), "w") as f:
    f.write(str(os.getpid()))
time.sleep(600)
"#;

/// The arguments of an agent on a node with eight fake GPUs.
const EIGHT_GPUS: [&str; 2] = ["--gpus", "fake:8"];

/// A coordinator with a 10 s lease timeout and the agent `gpu-node` with eight fake GPUs
/// and eight slots, and `extra` arguments.
fn gpu_node(dir: &Path, extra: &[&str]) -> ClusterBuilder {
    let mut args = EIGHT_GPUS.to_vec();
    args.extend_from_slice(extra);
    Cluster::builder(dir)
        .leases("10", "0.5")
        .agent_with("gpu-node", 8, &args)
}

/// The probes the runs wrote, by run id then rank.
fn read_probes(dir: &Path) -> BTreeMap<String, BTreeMap<u32, Value>> {
    let mut probes: BTreeMap<String, BTreeMap<u32, Value>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir.join("probes")).expect("probes dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let probe: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read probe"))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let run_id = as_str(&probe["LADDER_RUN_ID"], "run id").to_string();
        let rank: u32 = as_str(&probe["RANK"], "RANK").parse().expect("RANK");
        probes.entry(run_id).or_default().insert(rank, probe);
    }
    probes
}

fn gpu_list(text: &str) -> Vec<u32> {
    text.split(',')
        .map(|g| {
            g.parse()
                .unwrap_or_else(|_| panic!("bad GPU {g:?} in {text:?}"))
        })
        .collect()
}

#[test]
fn command_runs_see_their_gpus_and_torchrun_variables() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let cluster = gpu_node(dir, &[]).start();
    let coordinator = &cluster.coordinator;
    let agents = coordinator.json(&["agents", "ls"]);
    let gpus = agents["agents"][0]["gpus"].as_array().expect("gpus");
    assert_eq!(gpus.len(), 8, "{agents}");
    assert!(gpus.iter().all(|g| g["name"] == "fake"), "{agents}");

    write_script(dir, "probe.py", PROBE);
    let single = write_file(
        dir,
        "single.yaml",
        r#"name: gpus-single
project: e2e
method: grid
parallel: 4
max_restarts: 0
parameters:
  i: {values: [1, 2, 3, 4]}
resources: {gpus: 2}
command: [python3, "{{ladder.code_dir}}/probe.py", "{{ladder.code_dir}}", "{{i}}"]
"#,
    );
    let per_gpu = write_file(
        dir,
        "per_gpu.yaml",
        r#"name: gpus-per-gpu
project: e2e
method: grid
parallel: 2
max_restarts: 0
parameters:
  i: {values: [1, 2]}
resources: {gpus: 2, launch: per_gpu}
command: [python3, "{{ladder.code_dir}}/probe.py", "{{ladder.code_dir}}", "{{i}}"]
"#,
    );
    let single_id = coordinator.submit(&single);
    let per_gpu_id = coordinator.submit(&per_gpu);

    // While runs are running, `agents ls` says which run holds which GPU.
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(100),
        "agents ls to show a GPU held by a run",
        || {
            let agents = coordinator.json(&["agents", "ls"]);
            let gpus = agents["agents"][0]["gpus"].as_array()?.clone();
            gpus.iter()
                .filter_map(|g| g["run"].as_str().map(String::from))
                .find(|run| run.starts_with(&single_id) || run.starts_with(&per_gpu_id))
        },
    );

    for sweep_id in [&single_id, &per_gpu_id] {
        let sweep = coordinator.watch(sweep_id, WATCH_TIMEOUT);
        assert_eq!(sweep["status"], "completed", "{sweep}");
    }
    let probes = read_probes(dir);

    // Every run sees exactly the GPUs it was given, with torchrun's variables.
    let mut gpus_of_run: BTreeMap<String, (Vec<u32>, f64, f64)> = BTreeMap::new();
    for (sweep_id, ranks) in [(&single_id, 1u32), (&per_gpu_id, 2)] {
        let runs = coordinator.runs(sweep_id);
        assert_eq!(runs.len(), if ranks == 1 { 4 } else { 2 }, "{runs:#?}");
        for run in &runs {
            let run_id = as_str(&run["id"], "run id");
            assert_eq!(run["status"], "completed", "{run}");
            let detail = coordinator.run_detail(run_id);
            let given: Vec<u32> = detail["attempt_history"][0]["gpus"]
                .as_array()
                .expect("gpus")
                .iter()
                .map(|g| g.as_u64().expect("gpu") as u32)
                .collect();
            assert_eq!(given.len(), 2, "{detail}");
            assert!(given.iter().all(|&g| g < 8), "{detail}");
            let run_probes = probes
                .get(run_id)
                .unwrap_or_else(|| panic!("no probe of {run_id}: {probes:#?}"));
            assert_eq!(
                run_probes.keys().copied().collect::<Vec<_>>(),
                (0..ranks).collect::<Vec<_>>(),
                "ranks of {run_id}"
            );
            let port = as_str(&run_probes[&0]["MASTER_PORT"], "MASTER_PORT");
            assert!(
                port.parse::<u16>().is_ok_and(|p| p > 0),
                "MASTER_PORT {port}"
            );
            let mut pids = BTreeSet::new();
            for (rank, probe) in run_probes {
                let visible = as_str(&probe["CUDA_VISIBLE_DEVICES"], "CUDA_VISIBLE_DEVICES");
                assert_eq!(gpu_list(visible), given, "{run_id} rank {rank}: {probe}");
                assert_eq!(probe["WORLD_SIZE"], "2", "{probe}");
                assert_eq!(probe["LOCAL_WORLD_SIZE"], "2", "{probe}");
                assert_eq!(probe["RANK"], rank.to_string(), "{probe}");
                assert_eq!(probe["LOCAL_RANK"], rank.to_string(), "{probe}");
                assert_eq!(probe["MASTER_ADDR"], "127.0.0.1", "{probe}");
                assert_eq!(
                    probe["MASTER_PORT"], port,
                    "ranks share MASTER_PORT: {probe}"
                );
                assert!(
                    pids.insert(probe["pid"].as_u64().expect("pid")),
                    "one process per rank"
                );
            }
            let start = run_probes[&0]["start"].as_f64().expect("start");
            let end = run_probes[&0]["end"].as_f64().expect("end");
            gpus_of_run.insert(run_id.to_string(), (given, start, end));

            // Rank 0's metric lines are the run's metrics; other ranks' are log lines.
            assert_eq!(run["metrics"]["reporting_rank"], 0.0, "{run}");
            let logs: Vec<&str> = detail["log_tail"]
                .as_array()
                .expect("log_tail")
                .iter()
                .filter_map(|l| l["text"].as_str())
                .collect();
            if ranks == 1 {
                assert!(logs.contains(&"hello from rank 0"), "{logs:?}");
            } else {
                assert!(logs.contains(&"[rank 0] hello from rank 0"), "{logs:?}");
                assert!(logs.contains(&"[rank 1] hello from rank 1"), "{logs:?}");
                assert!(
                    logs.iter().any(|l| l.starts_with("[rank 1] @ladder ")),
                    "rank 1's metric line is kept as log: {logs:?}"
                );
            }
        }
    }

    // Runs that ran at the same time never shared a GPU.
    let runs: Vec<_> = gpus_of_run.iter().collect();
    let mut overlapping_pairs = 0;
    for (i, (run_a, (gpus_a, start_a, end_a))) in runs.iter().enumerate() {
        for (run_b, (gpus_b, start_b, end_b)) in &runs[i + 1..] {
            if start_a < end_b && start_b < end_a {
                overlapping_pairs += 1;
                let shared: Vec<_> = gpus_a.iter().filter(|g| gpus_b.contains(g)).collect();
                assert!(
                    shared.is_empty(),
                    "{run_a} and {run_b} ran at once on GPUs {shared:?}"
                );
            }
        }
    }
    assert!(
        overlapping_pairs > 0,
        "no two runs overlapped, so GPU exclusivity was not exercised: {gpus_of_run:?}"
    );
}

#[test]
fn a_sweep_no_agent_could_ever_fit_is_refused_at_submit() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    // Started by hand: the agent joins after the first submission.
    let coordinator = Coordinator::start(&dir.join("data"), &[]);
    let too_big = write_file(
        dir,
        "too_big.yaml",
        "name: too-big\nmethod: grid\nparameters:\n  i: {value: 1}\nresources: {gpus: 9}\ncommand: [\"true\"]\n",
    );
    // No agent known yet: accepted, since a big enough one may still join.
    coordinator.submit(&too_big);
    let _agent = Agent::start_with(
        &coordinator.url(),
        "gpu-node",
        8,
        &dir.join("gpu-node"),
        dir,
        &EIGHT_GPUS,
    );
    coordinator.wait_for_agents(&["gpu-node"], Duration::from_secs(60));
    let file = too_big.to_str().expect("utf-8");
    let output = coordinator.ladder(&["sweep", "submit", file]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("needs 9 GPUs") && stderr.contains("gpu-node, has 8"),
        "the refusal names the largest agent: {stderr}"
    );
}

#[test]
fn per_gpu_run_fails_when_a_rank_fails_and_stops_the_others() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let cluster = gpu_node(dir, &["--stop-grace", "2"]).start();
    let coordinator = &cluster.coordinator;
    write_script(dir, "failing_rank.py", FAILING_RANK);
    let sweep_file = write_file(
        dir,
        "failing.yaml",
        r#"name: gpus-failing-rank
project: e2e
method: grid
max_restarts: 0
parameters:
  i: {value: 1}
resources: {gpus: 2, launch: per_gpu}
command: [python3, "{{ladder.code_dir}}/failing_rank.py", "{{ladder.code_dir}}"]
"#,
    );
    let sweep_id = coordinator.submit(&sweep_file);
    // Rank 0 would sleep for ten minutes: the sweep ending at all shows it was stopped.
    let sweep = coordinator.watch(&sweep_id, Duration::from_secs(90));
    assert_eq!(sweep["status"], "completed", "{sweep}");
    let runs = coordinator.runs(&sweep_id);
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let run = &runs[0];
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["exit_code"], 1, "{run}");
    let detail = coordinator.run_detail(as_str(&run["id"], "run id"));
    let reason = as_str(&detail["attempt_history"][0]["reason"], "reason");
    assert!(
        reason.contains("rank 1") && reason.contains("exit code 1"),
        "reason names the failed rank: {reason}"
    );
    let logs: Vec<&str> = detail["log_tail"]
        .as_array()
        .expect("log_tail")
        .iter()
        .filter_map(|l| l["text"].as_str())
        .collect();
    assert!(logs.contains(&"[rank 1] rank 1 giving up"), "{logs:?}");

    // Rank 0 is gone, not left sleeping.
    let pid: i32 = std::fs::read_to_string(dir.join("rank0.pid"))
        .expect("rank 0 wrote its pid")
        .trim()
        .parse()
        .expect("pid");
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "rank 0 to be gone",
        || {
            // SAFETY: signal 0 only checks that the process exists.
            let alive = unsafe { libc::kill(pid, 0) } == 0;
            (!alive).then_some(())
        },
    );
}

/// A `train:` sweep with `resources: {gpus: 2}` on a node with two (fake) GPUs runs the
/// built-in trainer as two processes, one data-parallel rank each, meeting over TCP
/// because the config keeps them on the CPU. Rank 0 reports; the run's final metrics
/// equal, bit for bit, `ladder train` with the same config as two in-process ranks,
/// and match one rank on the whole batch up to float summation order.
#[test]
fn trainer_runs_one_rank_per_gpu_and_equals_in_process_data_parallelism() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let cluster = Cluster::builder(dir)
        .leases("10", "0.5")
        .agent_with("gpu-node", 2, &["--gpus", "fake:2"])
        .start();
    let coordinator = &cluster.coordinator;
    // (Each line indented by two spaces: the block goes under `train:`.)
    let body = "  model: {init: random, arch: {d_model: 32, layers: 2, heads: 4}}
  data: {task: synthetic-kv, examples: 400, validation_sequences: 4}
  optim: {lr: 0.003, warmup: 2}
  steps: 10
  batch_size: 8
  seq_len: 48
  log_every: 1
  eval: [{task: synthetic-kv-mc, limit: 20}]
  device: cpu
";
    let sweep_file = write_file(
        dir,
        "dp.yaml",
        &format!(
            "name: dp-train\nproject: e2e\nmethod: grid\nmax_restarts: 0\nparameters:\n  seed: {{value: 1234}}\nresources: {{gpus: 2}}\ntrain:\n{body}  seed: \"{{{{seed}}}}\"\n"
        ),
    );
    let sweep_id = coordinator.submit(&sweep_file);
    let sweep = coordinator.watch(&sweep_id, Duration::from_secs(600));
    assert_eq!(sweep["status"], "completed", "{sweep}");
    let runs = coordinator.runs(&sweep_id);
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let run = &runs[0];
    assert_eq!(run["status"], "completed", "{run}");
    let detail = coordinator.run_detail(as_str(&run["id"], "run id"));
    let logs: Vec<&str> = detail["log_tail"]
        .as_array()
        .expect("log_tail")
        .iter()
        .filter_map(|l| l["text"].as_str())
        .collect();
    for rank in 0..2 {
        let needle = format!("[rank {rank}] rank {rank} of 2, meeting at 127.0.0.1:");
        assert!(
            logs.iter().any(|l| l.starts_with(&needle)),
            "rank {rank} joined the group: {logs:?}"
        );
    }
    // The trainer's provenance line reaches the run's card.
    assert_eq!(
        detail["info"]["data.train"], "synthetic-kv (built-in, 400 examples, seed 1234)",
        "{detail}"
    );
    assert_eq!(
        detail["info"]["base_model"], "random init (seed 1234)",
        "{detail}"
    );
    let distributed = &run["metrics"];

    // The same config as one `ladder train` process with two in-process ranks, and
    // with one rank on the whole batch.
    let standalone = |extra: &str, name: &str| -> Value {
        let text = format!("{}{extra}", body.replace("\n  ", "\n").trim_start());
        let config = write_file(dir, &format!("{name}.yaml"), &format!("{text}seed: 1234\n"));
        ladder_e2e::train_json(&config, &dir.join(name), Duration::from_secs(600))["metrics"]
            .clone()
    };
    let threads = standalone("data_parallel: 2\n", "threads");
    let whole = standalone("", "whole");
    for name in ["eval/loss", "eval/synthetic-kv-mc/acc"] {
        let got = distributed[name]
            .as_f64()
            .unwrap_or_else(|| panic!("{name} in {run}"));
        assert_eq!(
            got.to_bits(),
            threads[name].as_f64().expect(name).to_bits(),
            "{name}: two processes {got} vs two threads {}",
            threads[name]
        );
    }
    let (a, b) = (
        distributed["eval/loss"].as_f64().unwrap(),
        whole["eval/loss"].as_f64().unwrap(),
    );
    eprintln!("eval/loss: 2 rank processes {a}, 1 rank on the whole batch {b}");
    assert!((a - b).abs() < 1e-4, "2 ranks {a} vs 1 rank {b}");
}

/// Every sweep file shipped in `sweeps/` (the quickstart and the examples, GPU ones
/// included) passes `ladder sweep validate`.
#[test]
fn shipped_sweep_files_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let mut files = Vec::new();
    for dir in ["sweeps", "sweeps/examples"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("sweeps dir") {
            let path = entry.expect("entry").path();
            if path.extension().and_then(|e| e.to_str()) == Some("yaml") {
                files.push(path);
            }
        }
    }
    assert!(
        files.iter().any(|f| f.ends_with("examples/lora-gpus.yaml")),
        "{files:?}"
    );
    for file in &files {
        let args = ["sweep", "validate", file.to_str().expect("utf-8")];
        let output = ladder_e2e::ladder_in(Some(root), &args, Duration::from_secs(60));
        assert!(
            output.status.success(),
            "{}",
            ladder_e2e::describe(&args, &output)
        );
    }
}
