//! Tests of `coordinator/src/store.rs`.

use super::*;
use crate::model::AttemptOutcome;
use ladder_types::{RunStatus, SweepStatus};

/// A run record as stores before summaries wrote it: last values only.
fn old_run(spec: &SweepSpec) -> RunRecord {
    RunRecord {
        id: "s-000000".into(),
        sweep_id: "s".into(),
        project: spec.project.clone(),
        index: 0,
        params: Default::default(),
        argv: Vec::new(),
        status: RunStatus::Completed,
        attempts: vec![crate::model::AttemptRecord {
            outcome: AttemptOutcome::Completed,
            exit_code: Some(0),
            ended_ms: Some(1),
            acked_seq: 1,
            metric_points: 3,
            ..crate::model::AttemptRecord::running(1, 1, "a".into(), Vec::new(), 0)
        }],
        last_metrics: [("m".to_string(), 9.0), ("n".to_string(), 7.0)]
            .into_iter()
            .collect(),
        last_step: Some(3),
        created_ms: 0,
        ended_ms: Some(1),
        tags: Default::default(),
        notes: Vec::new(),
        summaries: Default::default(),
        info: Default::default(),
        metrics_dropped: 0,
        next_note_id: 0,
        artifacts: Vec::new(),
    }
}

#[test]
fn stores_written_before_summaries_are_upgraded_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "name: s\nproject: p\nmethod: grid\nmetric: {name: m, goal: minimize}\nparameters:\n  x: {value: 1}\ncommand: [\"true\"]\n";
    let spec = ladder_spec::parse_sweep("s.yaml", yaml).unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        store
            .put_sweep(&SweepRecord {
                id: "s".into(),
                spec: spec.clone(),
                file_name: "s.yaml".into(),
                yaml: yaml.into(),
                status: SweepStatus::Completed,
                created_ms: 0,
                ended_ms: None,
                planned_runs: 1,
                created_runs: 1,
                owner: String::new(),
                git_commit: String::new(),
                git_dirty: false,
            })
            .unwrap();
        // Written as an old coordinator did: the JSON has no `summaries`, `n` has no
        // stored points, and the store has only the version 1 index.
        let record = serde_json::to_vec(&old_run(&spec)).unwrap();
        assert!(!String::from_utf8_lossy(&record).contains("summaries"));
        store.runs.insert("s-000000", record).unwrap();
        let points: Vec<StoredPoint> = [5.0, 1.0, 9.0]
            .iter()
            .enumerate()
            .map(|(i, v)| StoredPoint {
                step: Some(i as i64 + 1),
                values: [("m".to_string(), *v)].into_iter().collect(),
                time_ms: 0,
            })
            .collect();
        store.put_output("s-000000", 1, 1, &points, &[]).unwrap();
        store.idx_metric_all.clear().unwrap();
        store.meta.remove(METRIC_INDEX_KEY).unwrap();
        store.meta.insert(b"idx_metric_v1", &[1u8]).unwrap();
        store.commit().unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    let run = store.get_run("s-000000").unwrap().unwrap();
    let m = run.summaries["m"];
    assert_eq!((m.min, m.min_step, m.max, m.last), (1.0, Some(2), 9.0, 9.0));
    let n = run.summaries["n"];
    assert_eq!(
        (n.min, n.max, n.last, n.last_step),
        (7.0, 7.0, 7.0, Some(3))
    );
    // Nothing stored is lost.
    assert_eq!(run.last_metrics, old_run(&spec).last_metrics);
    assert_eq!(run.attempts.len(), 1);
    assert_eq!(store.metrics("s-000000", 1).unwrap().len(), 3);
    for project in [Some("p"), None] {
        let walk: Vec<(f64, String)> = store
            .metric_index(project, "m", false, None)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        assert_eq!(walk, [(9.0, "s-000000".to_string())], "{project:?}");
    }
    assert!(store.check().unwrap().ok());
}

#[test]
fn a_step_lower_than_an_earlier_one_is_kept_and_the_check_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ladder_spec::parse_sweep(
        "s.yaml",
        "name: s\nproject: p\nmethod: grid\nparameters:\n  x: {value: 1}\ncommand: [\"true\"]\n",
    )
    .unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut run = old_run(&spec);
    run.attempts[0].acked_seq = 2;
    let point = |step: i64, value: f64| StoredPoint {
        step: Some(step),
        values: [("m".to_string(), value)].into(),
        time_ms: 0,
    };
    store
        .put_output(&run.id, 1, 1, &[point(10, 1.0)], &[])
        .unwrap();
    store
        .put_output(&run.id, 1, 2, &[point(5, 2.0)], &[])
        .unwrap();
    store.put_run(&run).unwrap();
    store
        .put_sweep(&SweepRecord {
            id: "s".into(),
            spec: spec.clone(),
            file_name: "s.yaml".into(),
            yaml: String::new(),
            status: SweepStatus::Completed,
            created_ms: 0,
            ended_ms: None,
            planned_runs: 1,
            created_runs: 1,
            owner: String::new(),
            git_commit: String::new(),
            git_dirty: false,
        })
        .unwrap();
    let report = store.check().unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    let steps: Vec<Option<i64>> = store
        .metrics(&run.id, 1)
        .unwrap()
        .iter()
        .map(|p| p.step)
        .collect();
    assert_eq!(steps, vec![Some(10), Some(5)], "kept as reported");
}

/// Points of `event` numbered from `from`, with a metric name long enough that a few
/// dozen fill a chunk.
fn points(from: i64, n: usize) -> Vec<StoredPoint> {
    (0..n as i64)
        .map(|i| StoredPoint {
            step: Some(from + i),
            values: [
                ("train/loss".to_string(), 1.0 / (1 + from + i) as f64),
                ("train/a_longer_metric_name_of_an_eval".to_string(), 0.5),
            ]
            .into(),
            time_ms: 1_796_469_698_743 + i,
        })
        .collect()
}

#[test]
fn the_points_of_an_event_are_stored_in_chunks_that_keep_sled_pages_inline() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    // Events of 512 points (a full agent batch) and of 1, as many as a long run sends.
    let mut expected = Vec::new();
    for seq in 1..=40u64 {
        let n = if seq % 2 == 0 { 512 } else { 1 };
        let batch = points(expected.len() as i64, n);
        store.put_output("s-000000", 1, seq, &batch, &[]).unwrap();
        expected.extend(batch);
    }
    store.commit().unwrap();
    assert_eq!(store.metrics("s-000000", 1).unwrap(), expected);
    let records = store.metrics.len();
    assert!(
        records < expected.len() / 20,
        "{records} records for {} points",
        expected.len()
    );
    for entry in store.metrics.iter() {
        let (_, value) = entry.unwrap();
        assert!(value.len() <= POINT_CHUNK_BYTES, "{} bytes", value.len());
    }
    let blobs: Vec<_> = std::fs::read_dir(dir.path().join("blobs"))
        .map(|entries| entries.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(blobs.is_empty(), "pages written as blobs: {blobs:?}");
}

#[test]
fn reading_points_after_a_key_resumes_inside_a_chunk_and_across_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut expected = Vec::new();
    for (seq, n) in [(1u64, 300usize), (2, 1), (5, 200)] {
        let batch = points(expected.len() as i64, n);
        for (index, point) in batch.iter().enumerate() {
            let key = PointKey {
                seq,
                index: index as u32,
            };
            expected.push((key, point.clone()));
        }
        store.put_output("s-000000", 1, seq, &batch, &[]).unwrap();
    }
    // Another attempt and another run around it, never read by mistake.
    store
        .put_output("s-000000", 2, 1, &points(0, 3), &[])
        .unwrap();
    store
        .put_output("s-00000", 1, 1, &points(0, 3), &[])
        .unwrap();
    // Every cursor, including each chunk's first and last point.
    for start in 0..expected.len() {
        let after = start.checked_sub(1).map(|i| expected[i].0);
        let got = store
            .metrics_after("s-000000", 1, after, 7, usize::MAX)
            .unwrap();
        let want: Vec<_> = expected[start..].iter().take(7).cloned().collect();
        assert_eq!(got, want, "after {after:?}");
    }
    // A byte budget still returns at least one point, and stops near the budget.
    let one = store.metrics_after("s-000000", 1, None, 1000, 1).unwrap();
    assert_eq!(one.len(), 1);
    let some = store
        .metrics_after("s-000000", 1, None, 1000, 2000)
        .unwrap();
    assert!(!some.is_empty() && some.len() < 100, "{}", some.len());
}

#[test]
fn points_stored_one_per_record_before_chunking_are_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let old = points(0, 3);
    for (index, point) in old.iter().enumerate() {
        store
            .metrics
            .insert(
                event_key("s-000000", 1, 1, index as u32),
                encode(point).unwrap(),
            )
            .unwrap();
    }
    let new = points(3, 2);
    store.put_output("s-000000", 1, 2, &new, &[]).unwrap();
    let all: Vec<StoredPoint> = old.iter().chain(&new).cloned().collect();
    assert_eq!(store.metrics("s-000000", 1).unwrap(), all);
    let after = store
        .metrics_after(
            "s-000000",
            1,
            Some(PointKey { seq: 1, index: 1 }),
            10,
            usize::MAX,
        )
        .unwrap();
    let keys: Vec<PointKey> = after.iter().map(|(key, _)| *key).collect();
    assert_eq!(
        keys,
        [
            PointKey { seq: 1, index: 2 },
            PointKey { seq: 2, index: 0 },
            PointKey { seq: 2, index: 1 }
        ]
    );
}

#[test]
fn a_store_reopened_at_once_after_its_handle_is_dropped_opens() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..20u64 {
        let store = SledStore::open(dir.path()).unwrap();
        store
            .put_output("s-000000", 1, round + 1, &points(0, 50), &[])
            .unwrap();
        store.commit().unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.metrics("s-000000", 1).unwrap().len(), 20 * 50);
}

#[test]
fn a_store_locked_by_another_process_is_refused_at_once_naming_it() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    drop(SledStore::open(dir.path()).unwrap());
    let mut holder = std::process::Command::new("python3")
            .args([
                "-c",
                "import fcntl, sys\nf = open(sys.argv[1], 'a')\nfcntl.flock(f, fcntl.LOCK_EX)\nprint('locked', flush=True)\nsys.stdin.read()\n",
            ])
            .arg(dir.path().join("db"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
    let mut line = String::new();
    std::io::BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    // The lock of this process's own dropped handle may still be there: the open
    // waits for it, then meets the other process's.
    let started = std::time::Instant::now();
    let error = SledStore::open(dir.path())
        .err()
        .expect("refused")
        .to_string();
    drop(holder.stdin.take());
    holder.wait().unwrap();
    assert!(
        error.contains(&format!("in use by process {}", holder.id())),
        "{error}"
    );
    assert!(
        started.elapsed() < OWN_LOCK_WAIT,
        "waited for another process"
    );
}

/// A completed run as `ladder bench history` writes them: ten parameters, five metrics
/// with their summaries, one attempt.
fn benchmark_like_run(index: u64) -> RunRecord {
    let value = |k: u64| ((index * 7919 + k * 104_729) % 1_000_003) as f64 / 1_000_003.0;
    let params: serde_json::Map<String, serde_json::Value> = (0..10)
        .map(|k| (format!("p{k}"), value(k).into()))
        .collect();
    let summaries: serde_json::Map<String, serde_json::Value> = (0..5)
        .map(|k| {
            let summary = serde_json::json!({
                "last": value(k + 10), "last_step": 99, "min": value(k + 20), "min_step": 7,
                "max": value(k + 30), "max_step": 42, "reduction": "last"
            });
            (format!("m{k}"), summary)
        })
        .collect();
    let last: serde_json::Map<String, serde_json::Value> = (0..5)
        .map(|k| (format!("m{k}"), value(k + 10).into()))
        .collect();
    serde_json::from_value(serde_json::json!({
        "id": format!("bench-sweep-0042-{index:06}"), "sweep_id": "bench-sweep-0042",
        "project": "bench", "index": index, "params": params,
        "argv": ["true"], "status": "completed",
        "attempts": [{
            "number": 1, "epoch": 1000 + index, "agent": "bench-agent-0", "gpus": [],
            "outcome": "completed", "exit_code": 0, "signal": null, "reason": "",
            "started_ms": 1_765_000_000_000_i64, "ended_ms": 1_765_000_001_000_i64,
            "acked_seq": 5, "log_lines": 0, "metric_points": 500, "stop_reason": null
        }],
        "last_metrics": last, "last_step": 99,
        "created_ms": 1_765_000_000_000_i64, "ended_ms": 1_765_000_001_000_i64,
        "summaries": summaries
    }))
    .expect("a valid run record")
}

#[test]
fn run_records_are_stored_compressed_and_plain_json_records_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut stored = 0;
    let mut json = 0;
    for index in 0..20 {
        let run = benchmark_like_run(index);
        store.put_run(&run).unwrap();
        let bytes = store.runs.get(run.id.as_bytes()).unwrap().unwrap();
        assert_eq!(bytes[0], RUN_DICT_V1_TAG, "run record not compressed");
        stored += bytes.len();
        json += serde_json::to_vec(&run).unwrap().len();
        let back = store.get_run(&run.id).unwrap().unwrap();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&run).unwrap()
        );
    }
    // About 1.6 KB of JSON each; the dictionary takes field names and shapes to a few
    // bits, leaving mostly the numbers' digits.
    assert!(json / 20 > 1400, "{json} bytes of JSON for 20 runs");
    assert!(stored / 20 < 600, "{stored} bytes stored for 20 runs");
    // A record written by an earlier version, plain JSON, reads as before, and is
    // compressed when it is next written.
    let old = benchmark_like_run(99);
    store
        .runs
        .insert(old.id.as_bytes(), serde_json::to_vec(&old).unwrap())
        .unwrap();
    let read = store.get_run(&old.id).unwrap().unwrap();
    assert_eq!(
        serde_json::to_value(&read).unwrap(),
        serde_json::to_value(&old).unwrap()
    );
    store.put_run(&read).unwrap();
    let bytes = store.runs.get(old.id.as_bytes()).unwrap().unwrap();
    assert_eq!(bytes[0], RUN_DICT_V1_TAG);
}

#[test]
fn a_damaged_compressed_record_is_reported_naming_its_tree_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let run = benchmark_like_run(1);
    store.put_run(&run).unwrap();
    let good = store.runs.get(run.id.as_bytes()).unwrap().unwrap().to_vec();
    let mut cut = good.clone();
    cut.truncate(good.len() - 10);
    // A frame header claiming more than a record may hold: refused before allocating.
    let mut huge = vec![RUN_DICT_V1_TAG];
    huge.extend_from_slice(&zstd::bulk::compress(&vec![b' '; 65 << 20], 1).unwrap());
    for (what, bytes) in [
        ("cut short", cut),
        ("not a frame", vec![RUN_DICT_V1_TAG, 1, 2, 3, 4, 5, 6, 7, 8]),
        ("too large", huge),
    ] {
        store.runs.insert(run.id.as_bytes(), bytes).unwrap();
        let error = store.get_run(&run.id).expect_err(what).to_string();
        assert!(
            error.contains("runs") && error.contains(&run.id),
            "{what}: {error}"
        );
    }
}

#[test]
fn the_run_record_dictionary_never_changes() {
    // Every compressed run record on disk is decoded with this dictionary: a change
    // would make them unreadable. A better dictionary gets a new tag byte instead.
    use sha2::Digest;
    let hash = sha2::Sha256::digest(RUN_DICT_V1);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "1d4cf318c49758f2c30b8168323890e0d9666b5ee9563319c2337b5c136c52a4"
    );
}
