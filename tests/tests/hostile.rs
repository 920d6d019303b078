//! Hostile input end to end: oversized sweep files, unknown ids, runs that print garbage
//! metric lines or floods of output, commands that do not exist and agents whose work
//! directory is unusable. ladder must reject or contain each of them with a clear message,
//! and the coordinator must stay healthy.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ladder_e2e::{
    as_str, describe, ladder_command, wait_until, write_file, write_script, Agent, Cluster,
    ClusterBuilder, Coordinator, TestDir, Value, WATCH_TIMEOUT,
};

/// The setup of these tests: a coordinator with a 10 s lease timeout, to which a test
/// adds its agents.
fn cluster_builder(dir: &Path) -> ClusterBuilder {
    Cluster::builder(dir).leases("10", "0.5")
}

fn sweeps(coordinator: &Coordinator) -> Vec<Value> {
    let listed = coordinator.json(&["sweep", "ls"]);
    listed["sweeps"]
        .as_array()
        .unwrap_or_else(|| panic!("no sweeps array in {listed}"))
        .clone()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The sweep file of a one-run grid sweep of `command` (a YAML flow list).
fn one_run_sweep(name: &str, command: &str) -> String {
    format!("name: {name}\nmethod: grid\nparameters:\n  x: {{value: 1}}\ncommand: {command}\n")
}

#[test]
fn oversized_sweep_files_are_refused() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let coordinator = cluster_builder(dir).start().coordinator;
    let base = "name: big\nmethod: grid\nparameters:\n  x: {values: [1, 2]}\ncommand: [\"true\", \"{{x}}\"]\n";
    // Valid YAML padded with comments: 1.5 MiB (over the 1 MiB sweep file limit) and
    // 5 MiB (also over gRPC's default 4 MiB message limit).
    for size in [3 << 19, 5 << 20] {
        let mut text = base.to_string();
        let pad = format!("# {}\n", "p".repeat(1022));
        while text.len() < size {
            text.push_str(&pad);
        }
        let file = write_file(dir, &format!("big-{size}.yaml"), &text);
        let args = ["sweep", "submit", file.to_str().unwrap()];
        let output = coordinator.ladder(&args);
        let message = stderr(&output);
        // The CLI checks the size before reading the file: exit 2, like any invalid file.
        assert_eq!(
            output.status.code(),
            Some(2),
            "{}",
            describe(&args, &output)
        );
        assert!(
            message.contains("the limit is 1048576"),
            "the message should name the limit: {}",
            describe(&args, &output)
        );
    }
    assert!(
        sweeps(&coordinator).is_empty(),
        "an oversized file created a sweep"
    );
}

#[test]
fn unknown_ids_are_named_and_harmless() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let coordinator = cluster_builder(dir).start().coordinator;
    for args in [
        vec!["runs", "show", "nope"],
        vec!["sweep", "show", "nope"],
        vec!["sweep", "cancel", "nope"],
        vec!["sweep", "pause", "nope"],
        vec!["sweep", "watch", "nope"],
    ] {
        let output = coordinator.ladder(&args);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{}",
            describe(&args, &output)
        );
        assert!(
            stderr(&output).contains("nope"),
            "{}",
            describe(&args, &output)
        );
    }
    // An id of 10 KB and one with control characters.
    let long = "x".repeat(10_000);
    for id in [long.as_str(), "a\u{1}b\u{7f}"] {
        let args = ["runs", "show", id];
        let output = coordinator.ladder(&args);
        assert!(!output.status.success(), "{}", describe(&args, &output));
    }
    assert!(sweeps(&coordinator).is_empty());
    assert!(coordinator.connected_agents().is_empty());
}

#[test]
fn deep_and_long_queries_are_refused_and_the_coordinator_keeps_answering() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let coordinator = cluster_builder(dir).start().coordinator;
    let parens = format!("{}status = failed{}", "(".repeat(5_000), ")".repeat(5_000));
    let nots = format!("{}status = failed", "not ".repeat(20_000));
    let sorts: Vec<&str> = ["--sort", "-metrics.loss"].repeat(17);
    let cursor = "7b".repeat(10_000);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["runs", "ls", "--where", &parens],
            "--where:1:65: query is nested more than 64 levels deep",
        ),
        (
            vec!["runs", "ls", "--where", &nots],
            "--where:1:16385: the query is 80015 bytes long, longer than the limit of 16384 bytes",
        ),
        (
            [&["runs", "ls"][..], &sorts].concat(),
            "--sort:1:1: 17 sort keys, more than the limit of 16",
        ),
        (
            vec!["runs", "ls", "--cursor", &cursor],
            "--cursor:1:4097: the cursor is 20000 bytes long",
        ),
    ];
    for (args, expected) in cases {
        let output = coordinator.ladder(&args);
        let shown = describe(&args[..3], &output);
        assert_eq!(output.status.code(), Some(2), "{shown}");
        assert!(
            stderr(&output).contains(expected),
            "expected {expected:?}: {shown}"
        );
        // The coordinator is still there and answers the next request.
        let listed = coordinator.json(&["runs", "ls"]);
        assert_eq!(listed["runs"].as_array().map(Vec::len), Some(0), "{listed}");
    }
    // Nesting within the limit is a query like any other.
    let nested = format!("{}status = failed{}", "(".repeat(64), ")".repeat(64));
    let listed = coordinator.json(&["runs", "ls", "--where", &nested]);
    assert_eq!(listed["runs"].as_array().map(Vec::len), Some(0), "{listed}");
}

/// Prints hostile `@ladder` lines, a huge plain line and one valid point.
const HOSTILE_PRINTER: &str = r#"
import sys
out = sys.stdout.buffer
lines = [
    b'@ladder {"step": 1, "nan": NaN}',
    b'@ladder {"step": 1, "inf": Infinity}',
    b'@ladder {"step": 1, "big": 1e400}',
    b'@ladder {"step": 1, "small": -1e400}',
    b'@ladder [1, 2, 3]',
    b'@ladder {"step": 1, "broken": ',
    b'@ladder {"step": 1, "bytes\xff\xfe": 1, "also": "x"}',
    b'plain \xc3\x28 invalid utf-8 \xff',
    b'@ladder {"step": 1, "pad": "' + b'p' * (200 * 1024) + b'", "padded": 1}',
    b'L' * (200 * 1024),
    b'@ladder {"step": 2, "good": 0.5, "huge": 1180591620717411303424, "nested": {"a": 1}}',
]
for line in lines:
    out.write(line + b'\n')
out.flush()
"#;

#[test]
fn hostile_metric_lines_are_logged_not_stored() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let cluster = cluster_builder(dir).agent("a1", 1).start();
    let coordinator = &cluster.coordinator;
    write_script(dir, "hostile.py", HOSTILE_PRINTER);
    let (sweep_id, sweep) = coordinator.run_sweep(
        dir,
        "hostile.yaml",
        &one_run_sweep(
            "hostile",
            "[python3, \"{{ladder.code_dir}}/hostile.py\", \"{{x}}\"]",
        ),
    );
    assert_eq!(sweep["counts"]["completed"], 1, "{sweep}");

    let run_id = as_str(&coordinator.runs(&sweep_id)[0]["id"], "run id").to_string();
    let detail = coordinator.run_detail(&run_id);
    // The valid point is there, with the finite values only.
    assert_eq!(detail["metrics"]["good"], 0.5, "{}", detail["metrics"]);
    // 2^70 (within an ulp: the test's own JSON parser may round the last digit).
    let huge = detail["metrics"]["huge"].as_f64().expect("huge");
    assert!((huge / 2f64.powi(70) - 1.0).abs() < 1e-15, "{huge}");
    assert_eq!(detail["last_step"], 2, "{detail}");
    let mut names = Vec::new();
    for attempt in detail["metric_history"].as_array().expect("metric_history") {
        for point in attempt["points"].as_array().expect("points") {
            for (name, value) in point["values"].as_object().expect("values") {
                assert!(
                    value.as_f64().is_some_and(f64::is_finite),
                    "{name} = {value}"
                );
                names.push(name.clone());
            }
        }
    }
    for absent in ["nan", "inf", "big", "small", "broken", "nested", "padded"] {
        assert!(
            !names.iter().any(|n| n == absent),
            "{absent} stored: {names:?}"
        );
    }
    // The bytes line parses after the lossy conversion; its key carries U+FFFD.
    assert!(
        names.iter().any(|n| n.starts_with("bytes\u{fffd}")),
        "{names:?}"
    );

    let tail = detail["log_tail"].as_array().expect("log_tail");
    let texts: Vec<&str> = tail.iter().map(|l| as_str(&l["text"], "text")).collect();
    let ignored = tail
        .iter()
        .filter(|l| {
            l["stream"] == "ladder" && as_str(&l["text"], "text").starts_with("ignored metric line")
        })
        .count();
    // NaN, Infinity, 1e400, -1e400, a list, broken JSON, the truncated 200 KiB metric line.
    assert_eq!(ignored, 7, "{texts:#?}");
    // Each note follows the line it is about, as the log was written: a metric line in
    // the log is one that was refused, and the next line says why.
    for (i, line) in tail.iter().enumerate() {
        if line["stream"] == "stdout" && as_str(&line["text"], "text").starts_with("@ladder ") {
            let after = tail.get(i + 1);
            assert!(
                after.is_some_and(|a| a["stream"] == "ladder"
                    && as_str(&a["text"], "text").starts_with("ignored metric line")),
                "line {i} is not followed by its note: {texts:#?}"
            );
        }
    }
    // Each note follows the line it is about, as the log was written.
    for (i, line) in tail.iter().enumerate() {
        if line["stream"] == "ladder"
            && as_str(&line["text"], "text").starts_with("ignored metric line")
        {
            let before = i.checked_sub(1).map(|j| &tail[j]);
            assert!(
                before.is_some_and(|b| b["stream"] == "stdout"
                    && as_str(&b["text"], "text").starts_with("@ladder")),
                "note {i} does not follow its line: {texts:#?}"
            );
        }
    }
    for bad in [
        "\"nan\": NaN",
        "\"inf\": Infinity",
        "1e400",
        "@ladder [1, 2, 3]",
    ] {
        assert!(
            texts.iter().any(|t| t.contains(bad)),
            "{bad} not in the log: {texts:#?}"
        );
    }
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("plain \u{fffd}( invalid utf-8 \u{fffd}")),
        "{texts:#?}"
    );
    let truncated: Vec<&&str> = texts
        .iter()
        .filter(|t| t.ends_with("[line truncated by ladder]"))
        .collect();
    assert_eq!(
        truncated.len(),
        2,
        "{:?}",
        texts.iter().map(|t| t.len()).collect::<Vec<_>>()
    );
    for text in truncated {
        assert!(text.len() <= 64 * 1024 + 64, "{} bytes", text.len());
    }
    let _ = fs::remove_file(dir.join("hostile.py"));
}

#[test]
fn a_log_flood_completes_and_the_coordinator_stays_responsive() {
    const LINES: u64 = 300_000;
    let tmp = TestDir::new();
    let dir = tmp.path();
    let cluster = cluster_builder(dir).agent("a1", 1).start();
    let coordinator = &cluster.coordinator;
    let file = write_file(
        dir,
        "flood.yaml",
        &one_run_sweep("flood", &format!("[seq, \"{{{{x}}}}\", \"{LINES}\"]")),
    );
    let sweep_id = coordinator.submit(&file);
    // While the run floods, client calls still answer.
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut calls = 0;
    loop {
        let call = Instant::now();
        let listed = sweeps(coordinator);
        slowest = slowest.max(call.elapsed());
        calls += 1;
        assert_eq!(listed.len(), 1);
        if listed[0]["status"] == "completed" || started.elapsed() > WATCH_TIMEOUT {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "flood of {LINES} lines: sweep done after {:.1?}; {calls} `sweep ls` calls, slowest {slowest:.1?}",
        started.elapsed()
    );
    assert!(
        slowest < Duration::from_secs(10),
        "sweep ls took {slowest:?} during the flood"
    );
    let sweep = coordinator.watch(&sweep_id, WATCH_TIMEOUT);
    assert_eq!(sweep["counts"]["completed"], 1, "{sweep}");
    let run_id = as_str(&coordinator.runs(&sweep_id)[0]["id"], "run id").to_string();
    let detail = coordinator.json(&["runs", "show", &run_id, "--log-lines", "3"]);
    let log_lines = detail["log_lines"]
        .as_u64()
        .unwrap_or_else(|| panic!("log_lines in {detail}"));
    assert!(log_lines >= LINES, "log_lines {log_lines}");
    let tail: Vec<&str> = detail["log_tail"]
        .as_array()
        .expect("log_tail")
        .iter()
        .map(|l| as_str(&l["text"], "text"))
        .collect();
    assert_eq!(
        tail.last().copied(),
        Some(LINES.to_string().as_str()),
        "{tail:?}"
    );
}

#[test]
fn a_missing_program_fails_with_its_name() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let cluster = cluster_builder(dir).agent("a1", 1).start();
    let coordinator = &cluster.coordinator;
    let (sweep_id, sweep) = coordinator.run_sweep(
        dir,
        "missing.yaml",
        &one_run_sweep("missing", "[/nonexistent/prog, \"{{x}}\"]"),
    );
    assert_eq!(sweep["counts"]["failed"], 1, "{sweep}");
    let run_id = as_str(&coordinator.runs(&sweep_id)[0]["id"], "run id").to_string();
    let detail = coordinator.run_detail(&run_id);
    let reason = as_str(&detail["attempt_history"][0]["reason"], "reason");
    assert!(reason.contains("/nonexistent/prog"), "{reason}");
}

#[test]
fn an_agent_refuses_a_work_dir_under_a_file() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let coordinator = cluster_builder(dir).start().coordinator;
    fs::write(dir.join("afile"), "not a directory").unwrap();
    let work_dir = dir.join("afile").join("work");
    let log = dir.join("bad-agent.log");
    let mut child = ladder_command()
        .arg("agent")
        .args([
            "--coordinator",
            &coordinator.url(),
            "--name",
            "bad",
            "--slots",
            "1",
        ])
        .arg("--work-dir")
        .arg(&work_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("start the agent");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the agent kept running with an unusable work dir: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let message = fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "exit {status}: {message}");
    assert!(
        message.contains(&work_dir.display().to_string()),
        "{message}"
    );
    assert!(message.contains("work directory"), "{message}");
    assert!(!coordinator.connected_agents().contains("bad"));
}

#[test]
fn a_run_directory_that_cannot_be_created_fails_the_run_not_the_sweep() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let cluster = cluster_builder(dir).agent("a1", 1).start();
    let coordinator = &cluster.coordinator;
    let work_dir = dir.join("a1");
    // `runs` becomes a file after the agent started.
    let _ = fs::remove_dir_all(work_dir.join("runs"));
    fs::write(work_dir.join("runs"), "in the way").unwrap();
    // Two runs: a third failure in a row would quarantine the agent (a separate feature).
    let file = write_file(
        dir,
        "blocked.yaml",
        "name: blocked\nmethod: grid\nparameters:\n  x: {values: [1, 2]}\ncommand: [\"true\", \"{{x}}\"]\n",
    );
    let sweep_id = coordinator.submit(&file);
    let sweep = coordinator.watch(&sweep_id, WATCH_TIMEOUT);
    assert_eq!(sweep["status"], "completed", "{sweep}");
    assert_eq!(
        sweep["counts"]["failed"], 2,
        "every run was tried and failed: {sweep}"
    );
    for run in coordinator.runs(&sweep_id) {
        let detail = coordinator.run_detail(as_str(&run["id"], "run id"));
        let reason = as_str(&detail["attempt_history"][0]["reason"], "reason");
        assert!(reason.contains("cannot create run directory"), "{reason}");
        assert!(
            reason.contains(&work_dir.join("runs").display().to_string()),
            "{reason}"
        );
    }
    // With the obstacle gone, the same agent runs the next sweep.
    fs::remove_file(work_dir.join("runs")).unwrap();
    let sweep_id = coordinator.submit(&file);
    let sweep = coordinator.watch(&sweep_id, WATCH_TIMEOUT);
    assert_eq!(sweep["counts"]["completed"], 2, "{sweep}");
}

#[test]
fn a_full_disk_does_not_lose_the_run() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let mount_point = dir.join("small");
    fs::create_dir(&mount_point).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mount_point)
        .stderr(Stdio::piped())
        .output();
    // CI runs as root and can mount; elsewhere this test fails rather than skips.
    match &mounted {
        Ok(output) if output.status.success() => {}
        other => panic!("cannot mount a 1 MiB tmpfs (this test needs root, as CI has): {other:?}"),
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mount_point);
    let cluster = cluster_builder(dir)
        .agent_in("a1", 1, &mount_point.join("work"))
        .start();
    let coordinator = &cluster.coordinator;
    // 1.2 MiB of output into a 1 MiB file system: the attempt's log file cannot hold it
    // (small enough that the note, written when the disk fills, is in the last 10,000
    // lines `runs show` returns).
    write_script(
        dir,
        "fill.py",
        "import sys\nfor i in range(12000):\n    print('%06d ' % i + 'f' * 100)\nprint('@ladder {\"done\": 1}')\n",
    );
    let (sweep_id, sweep) = coordinator.run_sweep(
        dir,
        "full.yaml",
        &one_run_sweep(
            "full",
            "[python3, \"{{ladder.code_dir}}/fill.py\", \"{{x}}\"]",
        ),
    );
    assert_eq!(sweep["counts"]["completed"], 1, "{sweep}");
    let run_id = as_str(&coordinator.runs(&sweep_id)[0]["id"], "run id").to_string();
    let detail = coordinator.run_detail(&run_id);
    assert_eq!(detail["metrics"]["done"], 1.0, "{detail}");
    assert!(
        detail["log_lines"].as_u64().unwrap_or(0) >= 12_000,
        "{}",
        detail["log_lines"]
    );
    // The agent says that its log file is incomplete, once.
    let all = coordinator.json(&["runs", "show", &run_id, "--log-lines", "10000"]);
    let notes: Vec<&str> = all["log_tail"]
        .as_array()
        .expect("log_tail")
        .iter()
        .filter(|l| l["stream"] == "ladder")
        .map(|l| as_str(&l["text"], "text"))
        .collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].starts_with("cannot write the log file"),
        "{notes:?}"
    );
    assert!(notes[0].contains("No space left on device"), "{notes:?}");
}

#[test]
fn huge_logs_rotate_the_local_file_and_reach_the_coordinator() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let cluster = cluster_builder(dir)
        .agent_with("rot", 1, &["--log-file-max-bytes", "100000"])
        .start();
    let coordinator = &cluster.coordinator;
    let work_dir = dir.join("rot");
    // 50,000 lines of 7 bytes ("NNNNNN\n") = ~350 KB: three rotations at 100 KB.
    let sweep = write_file(
        dir,
        "rot.yaml",
        "name: rot\nmethod: grid\nparameters:\n  i: {value: 1}\ncommand: [seq, 100000, 149999]\n",
    );
    let sweep_id = coordinator.submit(&sweep);
    let done = coordinator.watch(&sweep_id, Duration::from_secs(120));
    assert_eq!(done["counts"]["completed"], 1, "{done}");
    let run_id = format!("{sweep_id}-000000");
    let detail = coordinator.run_detail(&run_id);
    assert!(
        detail["log_lines"].as_u64().unwrap() >= 50_000,
        "every line reaches the coordinator: {}",
        detail["log_lines"]
    );
    let run_dir = work_dir.join("runs").join(&run_id);
    let current = fs::metadata(run_dir.join("attempt-1.log"))
        .expect("current log file")
        .len();
    let previous = fs::metadata(run_dir.join("attempt-1.log.1"))
        .expect("rotated log file")
        .len();
    assert!(
        current <= 100_000 && previous <= 100_000,
        "parts stay under the limit: {current}, {previous}"
    );
    assert!(
        !run_dir.join("attempt-1.log.2").exists(),
        "only one older part is kept"
    );
    // The last rotation note is among the last 10,000 lines of the run's log.
    let all = coordinator.json(&["runs", "show", &run_id, "--log-lines", "10000"]);
    let rotated = all["log_tail"]
        .as_array()
        .expect("log tail")
        .iter()
        .filter(|l| l["stream"] == "ladder")
        .filter(|l| l["text"].as_str().is_some_and(|t| t.contains("rotated")))
        .count();
    assert!(
        rotated >= 1,
        "the last rotation is reported in the run's log"
    );
}

/// Without `--auth` a name is still bound to the secret of the agent that enrolled it: a
/// second agent process claiming it is refused and stops, leaving the live one alone.
/// `agents forget --force` ends the live agent's session; that agent reconnects and
/// enrolls its name again with a new secret.
#[test]
fn without_auth_a_second_agent_cannot_take_a_live_agent_s_name() {
    let tmp = TestDir::new();
    let dir = tmp.path();
    let cluster = cluster_builder(dir).agent("a1", 1).start();
    let coordinator = &cluster.coordinator;
    let work_dir = dir.join("a1");
    let secret_file = work_dir.join("secrets").join("a1");
    let enrolled = fs::read_to_string(&secret_file).expect("the enrolled secret is kept");

    let mut impostor = Agent::start(&coordinator.url(), "a1", 1, &dir.join("other"), dir);
    let status = impostor
        .wait_exit(Duration::from_secs(60))
        .expect("the refused agent stops");
    let log = fs::read_to_string(impostor.log()).unwrap_or_default();
    assert!(!status.success(), "{log}");
    assert!(log.contains("ladder agents forget a1"), "{log}");
    assert!(coordinator.connected_agents().contains("a1"));

    let output = coordinator.ladder(&["agents", "forget", "a1"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("a1 is connected"),
        "{}",
        stderr(&output)
    );
    let forgotten = coordinator.json(&["agents", "forget", "a1", "--force"]);
    assert_eq!(forgotten["name"], "a1", "{forgotten}");
    // The live agent's session was ended; it reconnects and enrolls the name anew.
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        "a1 to enroll again",
        || {
            let now = fs::read_to_string(&secret_file).unwrap_or_default();
            (now.len() == enrolled.len() && now != enrolled).then_some(())
        },
    );
    coordinator.wait_for_agents(&["a1"], Duration::from_secs(60));
}

/// Idle sockets opened before any TLS or token (a slowloris) neither exhaust the
/// coordinator's descriptors nor lock clients out: with 300 descriptors it keeps 44
/// connections open, closes each silent one 10 s after accepting it, and serves a client
/// queued behind 120 of them; it never runs out of descriptors, so it never spins on
/// EMFILE.
#[test]
fn idle_connections_neither_exhaust_descriptors_nor_lock_clients_out() {
    use std::io::Read;
    let tmp = TestDir::new();
    // Started by hand: the coordinator runs under a limit of 300 descriptors.
    let coordinator = Coordinator::start_with_nofile(&tmp.path().join("data"), &[], Some(300));
    let idle: Vec<std::net::TcpStream> = (0..120)
        .map(|i| {
            std::net::TcpStream::connect(coordinator.addr())
                .unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
        })
        .collect();
    let started = Instant::now();
    let output = ladder_e2e::ladder_with_timeout(
        &["sweep", "ls", "--coordinator", &coordinator.url()],
        Duration::from_secs(180),
    );
    assert!(
        output.status.success(),
        "{}",
        describe(&["sweep", "ls"], &output)
    );
    eprintln!(
        "a client behind 120 idle connections was served after {:?}",
        started.elapsed()
    );
    // Every idle connection is closed by the coordinator (end of stream or reset), none
    // left open for ever.
    for (i, mut stream) in idle.into_iter().enumerate() {
        stream
            .set_read_timeout(Some(Duration::from_secs(180)))
            .expect("read timeout");
        // The server may say something first (HTTP/2 settings, a GOAWAY): read to the end.
        let mut received = Vec::new();
        if let Err(e) = stream.read_to_end(&mut received) {
            assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "idle connection {i} was still open after 180 s"
            );
        }
        assert!(
            received.len() < 4096,
            "idle connection {i} received {} bytes",
            received.len()
        );
    }
    let log = coordinator.log_text();
    assert!(
        log.contains("max_connections=44"),
        "the connection budget does not follow the descriptor limit:\n{log}"
    );
    assert!(
        !log.contains("out of file descriptors"),
        "the coordinator ran out of descriptors:\n{log}"
    );
    // Still serving.
    let output = coordinator.ladder(&["sweep", "ls"]);
    assert!(
        output.status.success(),
        "{}",
        describe(&["sweep", "ls"], &output)
    );
}

/// A viewer cannot hold the coordinator's watch machinery with endless streams: past
/// 256 open `WatchSweep`/`WatchRun` streams on one token, a further one is refused with
/// RESOURCE_EXHAUSTED (naming the limit), and closing streams gives the room back.
#[test]
fn watch_streams_per_token_are_capped_and_closing_them_frees_room() {
    use ladder_proto::v1 as pb;
    const LIMIT: usize = 256;
    let dir = TestDir::new();
    let coordinator = cluster_builder(dir.path()).start().coordinator;
    // A sweep no agent runs: its watchers stay open until dropped.
    let held = write_file(
        dir.path(),
        "held.yaml",
        &one_run_sweep("held", "[\"true\"]"),
    );
    let sweep_id = coordinator.submit(&held);
    let token = fs::read_to_string(coordinator.data_dir().join("admin-token"))
        .expect("admin token")
        .trim()
        .to_string();
    let url = coordinator.url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let watch = |client: &mut pb::sweep_service_client::SweepServiceClient<_>| {
            let mut request = tonic::Request::new(pb::WatchSweepRequest {
                sweep_id: sweep_id.clone(),
            });
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii"),
            );
            let mut client: pb::sweep_service_client::SweepServiceClient<
                tonic::transport::Channel,
            > = client.clone();
            async move { client.watch_sweep(request).await }
        };
        let mut client = pb::sweep_service_client::SweepServiceClient::new(channel);
        let mut open = Vec::new();
        for i in 0..LIMIT {
            let stream = watch(&mut client)
                .await
                .unwrap_or_else(|status| panic!("watch {i} of {LIMIT} refused: {status:?}"))
                .into_inner();
            open.push(stream);
        }
        let Err(refused) = watch(&mut client).await else {
            panic!("the stream past the limit was accepted");
        };
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "{refused:?}"
        );
        assert!(
            refused.message().contains("256 watch streams"),
            "{}",
            refused.message()
        );
        // Other requests of the same token are still served.
        let mut listing = tonic::Request::new(pb::ListSweepsRequest::default());
        listing.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
        let listed = client.list_sweeps(listing).await.expect("sweep ls");
        assert_eq!(listed.into_inner().sweeps.len(), 1);
        // Closing streams gives their slots back, though the sweep they watched never
        // changes again (the coordinator notices the client's reset).
        open.truncate(LIMIT - 8);
        let started = Instant::now();
        loop {
            match watch(&mut client).await {
                Ok(stream) => {
                    open.push(stream.into_inner());
                    break;
                }
                Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                    assert!(
                        started.elapsed() < Duration::from_secs(60),
                        "closed streams never gave their slots back"
                    );
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(status) => panic!("unexpected refusal: {status:?}"),
            }
        }
    });
}
