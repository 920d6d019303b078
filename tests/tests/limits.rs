//! ladder at a team's real scale, end to end: thousands of sweeps listed through pages,
//! a run of 100,000 steps shown, watched and exported, and benchmarks that never touch a
//! directory they did not create.

use std::fs;
use std::path::Path;
use std::time::Duration;

use ladder_e2e::{
    describe, ladder_with_timeout, parse_json_output, write_file, Cluster, ClusterBuilder,
    Coordinator, TestDir, Value,
};

const SLOW: Duration = Duration::from_secs(600);

/// The setup of these tests: a coordinator with a 30 s lease timeout, to which a test
/// adds its agents.
fn cluster_builder(dir: &Path) -> ClusterBuilder {
    Cluster::builder(dir).leases("30", "0.5")
}

/// `ladder ARGS --coordinator URL --json` with a long timeout; panics on failure.
fn json_slow(coordinator: &Coordinator, args: &[&str]) -> Value {
    let url = coordinator.url();
    let mut args = args.to_vec();
    args.extend(["--coordinator", &url, "--json"]);
    let output = ladder_with_timeout(&args, SLOW);
    parse_json_output(&args, &output)
}

#[test]
fn five_thousand_sweeps_are_listed_completely_through_pages() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let coordinator = cluster_builder(dir).start().coordinator;
    // Quickstart-sized files (about 1.3 KB each): listing them all in one message would
    // pass gRPC's 4 MiB limit near 3,000 sweeps.
    let comment = format!("# {}\n", "c".repeat(1200));
    let files: Vec<String> = (0..5_000)
        .map(|i| {
            let text = format!(
                "{comment}name: s{i}\nproject: many\nmethod: grid\nparameters:\n  x: {{value: {i}}}\ncommand: [\"true\"]\n"
            );
            let path = write_file(dir, &format!("s{i}.yaml"), &text);
            path.to_str().expect("utf-8 path").to_string()
        })
        .collect();
    let mut submitted = std::collections::BTreeSet::new();
    for chunk in files.chunks(1_000) {
        let mut args = vec!["sweep", "submit"];
        args.extend(chunk.iter().map(String::as_str));
        let answer = json_slow(&coordinator, &args);
        for sweep in answer["sweeps"].as_array().expect("sweeps array") {
            submitted.insert(sweep["id"].as_str().expect("id").to_string());
        }
    }
    assert_eq!(submitted.len(), 5_000);

    let listed = json_slow(&coordinator, &["sweep", "ls"]);
    let sweeps = listed["sweeps"].as_array().expect("sweeps array");
    let ids: std::collections::BTreeSet<String> = sweeps
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(sweeps.len(), 5_000, "every sweep listed once");
    assert_eq!(ids, submitted);
    // Oldest first.
    let created: Vec<i64> = sweeps
        .iter()
        .filter_map(|s| s["created_ms"].as_i64())
        .collect();
    assert_eq!(created.len(), 5_000);
    assert!(
        created.windows(2).all(|w| w[0] <= w[1]),
        "listed oldest first"
    );
    // The YAML stays on `sweep show`.
    assert!(sweeps.iter().all(|s| s.get("yaml").is_none()));
    let shown = json_slow(
        &coordinator,
        &["sweep", "show", sweeps[0]["id"].as_str().unwrap()],
    );
    assert!(
        shown["yaml"]
            .as_str()
            .is_some_and(|y| y.contains("cccccccc") && y.contains("name: s")),
        "sweep show has the file as submitted: {}",
        shown["yaml"]
    );
}

#[test]
fn a_hundred_thousand_step_run_is_shown_watched_and_exported() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let code = dir.join("code");
    fs::create_dir_all(&code).unwrap();
    let cluster = cluster_builder(dir)
        .code_dir(&code)
        .agent_in("big", 1, &dir.join("work"))
        .start();
    let coordinator = &cluster.coordinator;
    let program = "import sys\nw = sys.stdout.write\nfor i in range(1, 100001):\n    w('@ladder {\"step\": %d, \"loss\": %r, \"acc\": %r, \"lr\": 0.1}\\n' % (i, 1.0 / i + (5.0 if i == 54321 else 0.0), i / 100000.0))\n";
    write_file(&code, "steps.py", program);
    let sweep = write_file(
        dir,
        "long.yaml",
        "name: long\nmethod: grid\nparameters:\n  x: {value: 1}\ncommand: [python3, \"{{ladder.code_dir}}/steps.py\"]\n",
    );
    let sweep_id = coordinator.submit(&sweep);
    let done = json_slow(coordinator, &["sweep", "watch", &sweep_id]);
    assert_eq!(done["counts"]["completed"], 1, "{done}");
    let runs = coordinator.runs(&sweep_id);
    let run_id = runs[0]["id"].as_str().expect("run id").to_string();

    // Shown: the card carries a bounded history with the peak and the last point.
    let card = json_slow(coordinator, &["runs", "show", &run_id]);
    let history = &card["metric_history"][0];
    assert_eq!(
        history["total_points"], 100_000,
        "{}",
        history["total_points"]
    );
    assert_eq!(history["downsampled"], true);
    let points = history["points"].as_array().expect("points");
    for metric in ["loss", "acc", "lr"] {
        let series: Vec<&Value> = points
            .iter()
            .filter(|p| p["values"].get(metric).is_some())
            .collect();
        assert!(
            !series.is_empty() && series.len() <= 1_000,
            "{metric}: {} points on the card",
            series.len()
        );
        assert_eq!(
            series.last().unwrap()["step"],
            100_000,
            "{metric}: last step kept"
        );
    }
    let peak = points
        .iter()
        .filter_map(|p| p["values"]["loss"].as_f64())
        .fold(f64::MIN, f64::max);
    assert!(peak > 5.0, "the loss spike at step 54321 survives: {peak}");

    // Watched: the finished run's stream delivers its (bounded) history and ends.
    let url = coordinator.url();
    let args = ["runs", "watch", &run_id, "--json", "--coordinator", &url];
    let output = ladder_with_timeout(&args, SLOW);
    assert!(output.status.success(), "{}", describe(&args, &output));
    let messages: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(messages.last().unwrap()["status"], "completed");
    assert!(messages.iter().any(|m| m["downsampled"] == true));

    // Exported: every point, page by page.
    let args = [
        "runs",
        "metrics",
        &run_id,
        "--format",
        "csv",
        "--coordinator",
        &url,
    ];
    let output = ladder_with_timeout(&args, SLOW);
    assert!(output.status.success(), "{}", describe(&args, &output));
    let csv = String::from_utf8_lossy(&output.stdout);
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("step,time_ms,metric,value"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 300_000, "3 metrics x 100,000 steps");
    assert!(rows[0].starts_with("1,"), "{}", rows[0]);
    assert!(rows[rows.len() - 1].starts_with("100000,"));
}

#[test]
fn the_history_benchmark_never_deletes_a_directory_it_did_not_create() {
    let tmp = TestDir::new();
    let dir = tmp.path().join("precious");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("keep.txt"), "data").unwrap();
    let data = dir.to_str().unwrap();
    let args = [
        "bench", "history", "--data", data, "--runs", "10", "--sweeps", "1", "--calls", "1",
    ];
    let output = ladder_with_timeout(&args, SLOW);
    assert!(!output.status.success(), "{}", describe(&args, &output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("exists and is not empty"),
        "{}",
        describe(&args, &output)
    );
    assert_eq!(fs::read_to_string(dir.join("keep.txt")).unwrap(), "data");
}

/// Mounts a tmpfs of `size` at `dir`; unmounted on drop. CI runs as root, so this test
/// fails (never skips) where it cannot mount.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("cannot run mount");
        assert!(
            status.success(),
            "cannot mount a {size} tmpfs at {} (this test needs root, as CI has)",
            dir.display()
        );
        SmallDisk {
            dir: dir.to_path_buf(),
        }
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut file = fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

#[test]
fn a_full_disk_stops_the_coordinator_with_a_clear_message_and_it_resumes_once_space_is_freed() {
    let tmp = TestDir::new();
    // The store's directory is the small disk; the coordinator's log, written next to
    // it, is not.
    let data = tmp.path().join("data");
    let disk = SmallDisk::mount(&data, "32m");
    let mut coordinator = Coordinator::start(&data, &[]);
    let url = coordinator.url();
    let sweep = |name: &str| {
        write_file(
            tmp.path(),
            &format!("{name}.yaml"),
            &format!(
                "name: {name}\nmethod: grid\nparameters:\n  x: {{value: 1}}\ncommand: [\"true\"]\n"
            ),
        )
    };
    let before = coordinator.submit(&sweep("before"));
    let filler = disk.fill();
    // Writes now fail: nothing more is acknowledged, and the coordinator exits with a
    // message that names the cause instead of serving as a zombie.
    let mut refused = 0;
    for i in 0..50 {
        let file = sweep(&format!("full{i}"));
        let args = [
            "sweep",
            "submit",
            file.to_str().unwrap(),
            "--coordinator",
            &url,
        ];
        let output = ladder_with_timeout(&args, SLOW);
        if !output.status.success() {
            refused += 1;
            break;
        }
    }
    assert!(refused > 0, "some submission on a full disk was refused");
    let status = coordinator.wait_exit(Duration::from_secs(120));
    let log = coordinator.log_text();
    let status =
        status.unwrap_or_else(|| panic!("the coordinator still runs on a full disk; log:\n{log}"));
    assert!(!status.success(), "exit status {status:?}");
    assert!(
        log.contains("No space left on device") && log.contains("start it again"),
        "log:\n{log}"
    );

    // Space is freed; the supervisor starts it again: what was acknowledged is there.
    fs::remove_file(filler).unwrap();
    coordinator.restart();
    let shown = coordinator.json(&["sweep", "show", &before]);
    assert_eq!(shown["id"], before.as_str());
    let after = coordinator.submit(&sweep("after"));
    let listed = coordinator.json(&["sweep", "ls"]);
    let ids: Vec<&str> = listed["sweeps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert!(
        ids.contains(&before.as_str()) && ids.contains(&after.as_str()),
        "{listed}"
    );
}
