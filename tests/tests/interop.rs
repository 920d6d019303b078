//! Generic clients: a Python gRPC client that ladder did not write discovers the
//! coordinator's services through server reflection, probes the health service and lists
//! runs using only the reflected descriptors (clients/python/reflect.py).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ladder_e2e::{as_str, runtime_dir, write_file, Cluster, TestDir, Value};

#[test]
fn python_grpc_client_discovers_and_calls_the_coordinator() {
    let probe = Command::new("python3")
        .args([
            "-c",
            "import grpc, grpc_reflection, grpc_health, google.protobuf",
        ])
        .output()
        .expect("python3 is needed");
    assert!(
        probe.status.success(),
        "the interop test needs Python's gRPC packages: pip install -r clients/python/requirements.txt\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let tmp = TestDir::new();
    let dir = tmp.path();
    let cluster = Cluster::builder(dir)
        .leases("10", "0.5")
        .agent("solo", 2)
        .start();
    let coordinator = &cluster.coordinator;
    let sweep_file = write_file(
        dir,
        "two.yaml",
        r#"name: interop
project: interop
method: grid
metric: {name: score, goal: maximize}
parallel: 2
parameters:
  i: {values: [1, 2]}
command: [sh, -c, 'printf ''@ladder {"score": %s}\n'' "$0"', "{{i}}"]
"#,
    );
    let sweep_id = coordinator.submit(&sweep_file);
    coordinator.watch(&sweep_id, Duration::from_secs(60));

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../clients/python/reflect.py");
    // The client finds the coordinator's token in the runtime directory its user's
    // processes share, as the ladder CLI does.
    let output = Command::new("python3")
        .env("XDG_RUNTIME_DIR", runtime_dir())
        .env_remove("LADDER_TOKEN")
        .arg(&script)
        .arg(coordinator.addr().to_string())
        .arg(&sweep_id)
        .arg("interop")
        .output()
        .expect("run the python client");
    assert!(
        output.status.success(),
        "python client failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: Value = serde_json::from_slice(&output.stdout).expect("python client prints JSON");
    let services: Vec<&str> = answer["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| as_str(s, "service"))
        .collect();
    for service in [
        "ladder.v1.SweepService",
        "ladder.v1.RunService",
        "ladder.v1.AgentService",
    ] {
        assert!(
            services.contains(&service),
            "{service} not discoverable: {services:?}"
        );
    }
    assert_eq!(answer["health"], "SERVING", "{answer}");
    let runs = answer["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{answer}");
    for run in runs {
        assert_eq!(run["sweepId"], sweep_id.as_str(), "{run}");
        assert_eq!(run["status"], "RUN_STATUS_COMPLETED", "{run}");
    }
    // The leaderboard, called from the reflected descriptors: best score first.
    let board = &answer["leaderboard"];
    assert_eq!(board["metric"], "score", "{board}");
    let rows = board["rows"].as_array().expect("leaderboard rows");
    assert_eq!(rows.len(), 2, "{board}");
    assert_eq!(rows[0]["value"], 2.0, "{board}");
    assert_eq!(rows[1]["value"], 1.0, "{board}");
}
