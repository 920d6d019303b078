//! The built-in trainer through the real binary: the quickstart sweep end to end
//! (coordinator, agent, `ladder train --sweep-run` runs, leaderboard by `eval/avg`),
//! `ladder train` killed with SIGKILL and resumed, and `ladder eval`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ladder_e2e::{describe, ladder_command, ladder_in, train_json, write_file, TestDir};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The quickstart as a user runs it (from the repository root): every run completes,
/// reports `eval/avg` and the final table is ranked by it.
#[test]
fn quickstart_sweep_trains_evaluates_and_ranks_by_eval_avg() {
    let dir = TestDir::new();
    let data = dir.path().join("store");
    let args = [
        "run",
        "sweeps/quickstart.yaml",
        "--data",
        data.to_str().unwrap(),
        "--json",
    ];
    let output = ladder_in(Some(&repo_root()), &args, Duration::from_secs(1500));
    assert!(output.status.success(), "{}", describe(&args, &output));
    let result: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", describe(&args, &output)));
    let ranking = result["ranking"].as_array().expect("ranking");
    assert_eq!(ranking.len(), 12, "{result:#}");
    let mut scores = Vec::new();
    for run in ranking {
        assert_eq!(run["status"], "completed", "{run:#}");
        let avg = run["metrics"]["eval/avg"]
            .as_f64()
            .unwrap_or_else(|| panic!("no eval/avg in {run:#}"));
        assert!((0.0..=1.0).contains(&avg));
        assert!(
            run["metrics"]["eval/synthetic-arith-mc/acc"].is_number(),
            "{run:#}"
        );
        assert!(run["metrics"]["train/loss"].is_number(), "{run:#}");
        scores.push(avg);
    }
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "not ranked by eval/avg: {scores:?}"
    );
    // The parameters matter: the best and the worst run are far apart.
    assert!(
        scores[0] - scores[scores.len() - 1] > 0.05,
        "all runs scored alike: {scores:?}"
    );
    // The human table (same store, re-ranked by the leaderboard verb is covered by
    // history tests); here the --json ranking is what `ladder run` printed.
}

const TRAIN_CONFIG: &str = "\
model:
  init: random
  arch: {d_model: 32, layers: 2, heads: 4}
data: {task: synthetic-kv, examples: 2000, validation_sequences: 4}
optim: {lr: 3.0e-3, warmup: 5}
steps: 60
batch_size: 8
seq_len: 48
log_every: 1
checkpoint_every: 10
eval: [{task: synthetic-kv-mc, limit: 40}]
device: cpu
";

/// `ladder train` killed with SIGKILL after its checkpoint at step 20 and started again
/// resumes there and ends with exactly the metrics of an uninterrupted run.
#[test]
fn train_killed_and_restarted_resumes_to_the_same_result() {
    let dir = TestDir::new();
    let config = write_file(dir.path(), "tiny.yaml", TRAIN_CONFIG);
    let whole = train_json(&config, &dir.path().join("whole"), Duration::from_secs(900));
    assert_eq!(whole["resumed_from"], Value::Null);

    let out = dir.path().join("killed");
    let mut child = ladder_command()
        .args([
            "train",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ladder train");
    let latest = out.join("checkpoints").join("latest");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let text = std::fs::read_to_string(&latest).unwrap_or_default();
        if text.trim() >= "step-00000020" {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpoint at step 20");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("ladder train ended ({status}) before it was killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let resumed = train_json(&config, &out, Duration::from_secs(900));
    let from = resumed["resumed_from"].as_u64().expect("resumed");
    assert!((20..60).contains(&from), "{resumed:#}");
    assert_eq!(
        resumed["metrics"], whole["metrics"],
        "resumed run ended elsewhere"
    );

    // The saved model scores the same through `ladder eval` as at the end of training.
    let model = out.join("model");
    let args = [
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--tasks",
        "synthetic-kv-mc",
        "--limit",
        "40",
        "--device",
        "cpu",
        "--seed",
        "0",
        "--json",
    ];
    let output = ladder_in(None, &args, Duration::from_secs(300));
    assert!(output.status.success(), "{}", describe(&args, &output));
    let scores: Value = serde_json::from_slice(&output.stdout).expect("json");
    let task = &scores["tasks"][0];
    assert_eq!(task["task"], "synthetic-kv-mc");
    assert_eq!(task["n"], 40);
    assert_eq!(
        task["acc"].as_f64(),
        resumed["metrics"]["eval/synthetic-kv-mc/acc"].as_f64(),
        "{scores:#} vs {resumed:#}"
    );
}

/// A bad config names the file, line and field.
#[test]
fn train_config_errors_name_file_line_and_field() {
    let dir = TestDir::new();
    let config = write_file(
        dir.path(),
        "bad.yaml",
        &TRAIN_CONFIG.replace("lr: 3.0e-3", "lr: fast"),
    );
    let args = ["train", config.to_str().unwrap()];
    let output = ladder_in(None, &args, Duration::from_secs(60));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.yaml:5:") && stderr.contains("optim.lr"),
        "{}",
        describe(&args, &output)
    );
}

/// Runs `clients/python/lm_eval_reference.py` with `args`; its stdout as JSON when it
/// prints any.
fn lm_eval_reference(args: &[&Path]) -> Option<Value> {
    let script = repo_root().join("clients/python/lm_eval_reference.py");
    let output = std::process::Command::new("python3")
        .arg(&script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{} failed (install clients/python/requirements.txt):\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    (!output.stdout.is_empty()).then(|| serde_json::from_slice(&output.stdout).expect("json"))
}

/// A tiny random LLaMA with a BOS-adding tokenizer and a transformers 5 `config.json`
/// scores the same through `ladder eval` as through an independent NumPy implementation
/// of lm-evaluation-harness 0.4.13's loglikelihood scoring: acc, acc_norm and mc2, and
/// every choice's log-likelihood and greedy flag, as `--log-samples` writes them.
#[test]
fn eval_agrees_with_an_independent_lm_eval_scoring_on_a_bos_tokenizer() {
    eval_agrees_with_the_reference_scoring("llama");
}

/// The same check on a tiny model of each other family, each with a RoPE scaling: Mistral
/// (a sliding window shorter than the prompts, YaRN), Qwen2 (q/k/v biases, tied
/// embeddings, linear scaling) and Qwen3 (q/k norms, attention biases, Llama 3 scaling).
#[test]
fn eval_agrees_with_the_independent_scoring_on_mistral_qwen2_and_qwen3() {
    for family in ["mistral", "qwen2", "qwen3"] {
        eval_agrees_with_the_reference_scoring(family);
    }
}

fn eval_agrees_with_the_reference_scoring(family: &str) {
    let dir = TestDir::new();
    let model = dir.path().join("model");
    lm_eval_reference(&[Path::new("make"), &model, Path::new(family)]);
    let arc = write_file(
        dir.path(),
        "arc.jsonl",
        concat!(
            r#"{"context": "Question: what sat on the mat ?\nAnswer:", "choices": ["the cat", "a dog", "red"], "answer": 0}"#,
            "\n",
            r#"{"context": "", "choices": ["cat", "dog sat", "yes"], "answer": 1}"#,
            "\n",
            r#"{"context": "the big dog ran under the ", "choices": ["log", "sky", "small sea", "mat"], "answer": 3}"#,
            "\n",
            r#"{"context": "Question: who is big ?\nAnswer:", "choices": ["the sea", "one", "a cat and a dog"], "answer": 2}"#,
            "\n",
            r#"{"context": "is the sky blue ? yes . is the sea red ?", "choices": ["no", "yes"], "answer": 0}"#,
            "\n",
        ),
    );
    let tqa = write_file(
        dir.path(),
        "tqa.jsonl",
        concat!(
            r#"{"context": "Question: where is the cat ?\nAnswer:", "mc2_targets": {"choices": ["on the mat", "under the log", "in the sky ."], "labels": [1, 1, 0]}}"#,
            "\n",
            r#"{"context": "Question: what is blue ?\nAnswer:", "mc2_targets": {"choices": ["the sky", "a red dog", "two", "the mat"], "labels": [1, 0, 0, 0]}}"#,
            "\n",
        ),
    );
    let samples = dir.path().join("samples.jsonl");
    let tasks = format!("{},{}", arc.display(), tqa.display());
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
    let scores: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(scores["special_tokens"], "tokenizer");
    let lines: Vec<Value> = std::fs::read_to_string(&samples)
        .expect("samples written")
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 7, "one line per item");

    for (index, (task, path)) in [("arc", &arc), ("tqa", &tqa)].into_iter().enumerate() {
        let reference = lm_eval_reference(&[Path::new("score"), &model, path]).expect("scores");
        let ours = &scores["tasks"][index];
        assert_eq!(ours["task"], task);
        for metric in ["acc", "acc_norm", "mc2"] {
            let Some(expected) = reference[metric].as_f64() else {
                continue;
            };
            let got = ours[metric].as_f64().unwrap_or(f64::NAN);
            // acc and acc_norm are means of 0/1 decisions and must be identical; mc2 is a
            // smooth function of the log-likelihoods, equal up to their float rounding.
            let tolerance = if metric == "mc2" { 1e-6 } else { 1e-9 };
            assert!(
                (got - expected).abs() < tolerance,
                "{family} {task} {metric}: ladder {got}, reference {expected}"
            );
        }
        let task_lines: Vec<&Value> = lines.iter().filter(|l| l["task"] == task).collect();
        let items = reference["items"].as_array().expect("items");
        assert_eq!(task_lines.len(), items.len());
        for (line, item) in task_lines.iter().zip(items) {
            for key in [
                "item",
                "context",
                "continuations",
                "gold",
                "acc",
                "acc_norm",
            ] {
                assert!(line.get(key).is_some(), "{key} missing from {line}");
            }
            assert_eq!(line["is_greedy"], item["is_greedy"], "{line}");
            let ours = line["loglikelihoods"].as_array().expect("loglikelihoods");
            let theirs = item["loglikelihoods"].as_array().expect("loglikelihoods");
            assert_eq!(ours.len(), theirs.len());
            for (a, b) in ours.iter().zip(theirs) {
                let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                assert!(
                    (a - b).abs() < 1e-4,
                    "{family}: ladder {a}, reference {b} in {line}"
                );
            }
        }
    }
}
