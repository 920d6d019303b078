//! The benchmark exporter against lm-evaluation-harness: the ARC-Challenge, HellaSwag,
//! MMLU and TruthfulQA-MC2 task files `clients/python/export_tasks.py` writes give the
//! contexts, choices, gold answers, few-shot examples and delimiters of lm-eval 0.4.13's
//! own task definitions, and `ladder eval` scores exactly those requests.
//!
//! Needs `python3` with lm-eval 0.4.13 (`--no-deps`), jinja2 and pyyaml, which
//! `tests/setup.sh` installs; without them the tests fail, they never skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ladder_e2e::{describe, ladder_in, TestDir};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Runs a script of `clients/python` with `args` and asserts it exits 0.
fn python(script: &str, args: &[&Path]) {
    let path = repo_root().join("clients/python").join(script);
    let output = Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("python3 {} does not run: {e}", path.display()));
    assert!(
        output.status.success(),
        "{} failed (tests/setup.sh installs lm-eval 0.4.13, jinja2 and pyyaml):\n{}{}",
        path.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `test_export_tasks.py` builds lm-eval's requests with lm-eval's own task machinery
/// and YAML (ARC, HellaSwag, MMLU, TruthfulQA-MC2 at several shot counts, every MMLU
/// description) and compares them with the exported files; then `ladder eval
/// --log-samples` on the exported tasks at the Open LLM Leaderboard shot counts must
/// score lm-eval's very contexts, continuations and gold answers.
#[test]
fn exported_benchmarks_equal_lm_eval_task_definitions() {
    let dir = TestDir::new();
    let exported = dir.path().join("exported");
    std::fs::create_dir(&exported).expect("mkdir");
    python(
        "test_export_tasks.py",
        &[Path::new("--write"), exported.as_path()],
    );

    let model = dir.path().join("model");
    python(
        "lm_eval_reference.py",
        &[Path::new("make"), model.as_path(), Path::new("llama")],
    );
    let names = [
        "arc_challenge",
        "hellaswag",
        "mmlu_high_school_european_history",
        "truthfulqa_mc2",
    ];
    let task_files: Vec<String> = names
        .iter()
        .map(|name| {
            exported
                .join(name)
                .join(format!("{name}.yaml"))
                .display()
                .to_string()
        })
        .collect();
    let tasks = task_files.join(",");
    let samples = dir.path().join("samples.jsonl");
    let args = [
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--tasks",
        &tasks,
        "--device",
        "cpu",
        "--json",
        "--log-samples",
        samples.to_str().unwrap(),
    ];
    let output = ladder_in(None, &args, Duration::from_secs(300));
    assert!(output.status.success(), "{}", describe(&args, &output));

    let read_lines = |path: &Path| -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .lines()
            .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
            .collect()
    };
    let ours = read_lines(&samples);
    let theirs = read_lines(&exported.join("lm_eval_requests.jsonl"));
    for name in names {
        let ours: Vec<&Value> = ours.iter().filter(|l| l["task"] == name).collect();
        let theirs: Vec<&Value> = theirs.iter().filter(|l| l["task"] == name).collect();
        assert!(!theirs.is_empty(), "no lm-eval requests for {name}");
        assert_eq!(ours.len(), theirs.len(), "{name}: items scored");
        for (line, reference) in ours.iter().zip(&theirs) {
            for key in ["item", "context", "continuations", "gold"] {
                assert_eq!(
                    line[key], reference[key],
                    "{name} {key}: ladder scored {line}\nlm-eval builds {reference}"
                );
            }
        }
    }
}
