//! `ladder train` and `ladder eval`: the built-in trainer outside (and, through
//! `--sweep-run`, inside) sweeps.
//!
//! A sweep run is `ladder train --sweep-run --config-json JSON` started by the agent in
//! the run's directory: metrics go to stdout as `@ladder {...}` lines (the agent records
//! them), everything else is the run's log. Standalone, `ladder train CONFIG.yaml`
//! draws a progress bar on stderr and prints the final scores.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use ladder_trainer::train::Reporter;

#[derive(Args)]
pub struct TrainArgs {
    /// The train config (YAML: model, data, lora, optim, steps, eval, ...).
    config: Option<PathBuf>,
    /// Output directory: checkpoints/ and the final model/ (default: next to the config,
    /// `runs/<config name>`); an existing checkpoint there is resumed.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run as a sweep's run: config from --config-json, output in the current directory,
    /// metrics as `@ladder` lines on stdout.
    #[arg(long, requires = "config_json")]
    sweep_run: bool,
    /// The rendered `train:` block of a sweep (JSON).
    #[arg(long)]
    config_json: Option<String>,
    /// Print the final metrics as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Model directory (Hugging Face LLaMA format: config.json + safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Tasks: built-in names, .jsonl files or task .yaml files, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    tasks: Vec<String>,
    /// Few-shot examples per item.
    #[arg(long, default_value_t = 0)]
    shots: usize,
    /// At most this many items per task.
    #[arg(long)]
    limit: Option<usize>,
    /// Seeds the choice of few-shot examples.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Print per-task scores as JSON.
    #[arg(long)]
    json: bool,
    /// Special tokens prompts are encoded with: `tokenizer` (the tokenizer's own, e.g.
    /// BOS for LLaMA-family tokenizers, as lm-evaluation-harness 0.4.13 does) or `none`
    /// (no special tokens, as earlier harness versions did).
    #[arg(long, default_value = "tokenizer", value_parser = parse_special_tokens)]
    special_tokens: ladder_trainer::eval::SpecialTokens,
    /// Write one JSON line per scored item to FILE: task, item index, context, each
    /// choice's log-likelihood and greedy flag, gold answer and the item's metrics.
    #[arg(long, value_name = "FILE")]
    log_samples: Option<PathBuf>,
}

fn parse_special_tokens(text: &str) -> Result<ladder_trainer::eval::SpecialTokens, String> {
    text.parse()
        .map_err(|e: ladder_trainer::TrainerError| e.to_string())
}

/// `@ladder` metric lines on stdout, for the agent.
struct MetricLines;

impl Reporter for MetricLines {
    fn metrics(&mut self, step: u64, values: &[(String, f64)]) {
        let mut object = serde_json::Map::new();
        object.insert("step".into(), step.into());
        for (name, value) in values {
            if let Some(number) = serde_json::Number::from_f64(*value) {
                object.insert(name.clone(), serde_json::Value::Number(number));
            }
        }
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "@ladder {}", serde_json::Value::Object(object));
        let _ = stdout.flush();
    }

    fn note(&mut self, text: &str) {
        eprintln!("{text}");
    }
}

/// Prints what the run is made from (paths and content hashes) as an `@ladder.info`
/// line for the run's card. A file that cannot be read is reported in the log; training
/// then fails on it with the full error.
fn report_provenance(config: &ladder_trainer::config::TrainConfig, base: &Path) {
    match ladder_trainer::provenance::provenance(config, base) {
        Ok(facts) => {
            let object: serde_json::Map<String, serde_json::Value> = facts
                .into_iter()
                .map(|(key, value)| (key, serde_json::Value::String(value)))
                .collect();
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "@ladder.info {}", serde_json::Value::Object(object));
            let _ = stdout.flush();
        }
        Err(error) => eprintln!("could not hash the run's inputs: {error}"),
    }
}

/// Training progress on stderr: an indicatif bar redrawn in place on a terminal (eval
/// scores and notes printed above it); in a pipe, a plain line at the first step, every
/// 50 steps and at the end, so that a job's log shows progress without a redraw per
/// step.
struct ProgressBar {
    started: Instant,
    bar: Option<indicatif::ProgressBar>,
    last_draw: Option<Instant>,
    latest: Vec<(String, f64)>,
}

impl ProgressBar {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::stderr(),
            );
            bar.set_style(
                indicatif::ProgressStyle::with_template("[{bar:30}] {pos}/{len} {msg}")
                    .expect("a valid template")
                    .progress_chars("#>-"),
            );
            bar
        });
        ProgressBar {
            started: Instant::now(),
            bar,
            last_draw: None,
            latest: Vec::new(),
        }
    }

    /// Prints a line above the bar (or as is, without one).
    fn println(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }
}

impl Reporter for ProgressBar {
    fn metrics(&mut self, step: u64, values: &[(String, f64)]) {
        let eval: Vec<String> = values
            .iter()
            .filter(|(name, _)| name.starts_with("eval/"))
            .map(|(name, value)| format!("{name} {value:.4}"))
            .collect();
        if !eval.is_empty() {
            self.println(&format!("step {step}: {}", eval.join("  ")));
        }
        for (name, value) in values {
            match self.latest.iter_mut().find(|(n, _)| n == name) {
                Some(entry) => entry.1 = *value,
                None => self.latest.push((name.clone(), *value)),
            }
        }
    }

    fn progress(&mut self, step: u64, total: u64, loss: f64) {
        let now = Instant::now();
        let due = self
            .last_draw
            .is_none_or(|last| now.duration_since(last).as_millis() >= 200);
        if !due && step != total {
            return;
        }
        self.last_draw = Some(now);
        let elapsed = self.started.elapsed().as_secs_f64();
        let eta = if step > 0 {
            elapsed / step as f64 * (total - step) as f64
        } else {
            0.0
        };
        let lookup = |name: &str| self.latest.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        let (lr, tokens_per_s) = (lookup("train/lr"), lookup("train/tokens_per_s"));
        match &self.bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(step);
                bar.set_message(progress_message(loss, lr, tokens_per_s, eta));
                if step == total {
                    bar.finish();
                }
            }
            None if step.is_multiple_of(50) || step == total || step == 1 => {
                eprintln!(
                    "{}",
                    progress_line(step, total, loss, lr, tokens_per_s, eta)
                );
            }
            None => {}
        }
    }

    fn note(&mut self, text: &str) {
        self.println(text);
    }
}

/// What follows the bar: `loss 2.5000 lr 3.00e-4 1234 tok/s eta 10s`, the learning rate
/// and throughput once a metrics report has given them.
fn progress_message(loss: f64, lr: Option<f64>, tokens_per_s: Option<f64>, eta_s: f64) -> String {
    let mut message = format!("loss {loss:.4}");
    if let Some(lr) = lr.filter(|v| v.is_finite()) {
        message.push_str(&format!(" lr {lr:.2e}"));
    }
    if let Some(rate) = tokens_per_s.filter(|v| v.is_finite()) {
        message.push_str(&format!(" {rate:.0} tok/s"));
    }
    message.push_str(&format!(" eta {eta_s:.0}s"));
    message
}

/// One plain progress line, for a log: the bar drawn in text, then
/// [`progress_message`]. The learning rate and throughput appear once a metrics report
/// has given them (the first comes after `log_every` steps); until then they are left
/// out rather than shown as NaN.
fn progress_line(
    step: u64,
    total: u64,
    loss: f64,
    lr: Option<f64>,
    tokens_per_s: Option<f64>,
    eta_s: f64,
) -> String {
    let width = 30;
    let fraction = step as f64 / total.max(1) as f64;
    let filled = ((fraction * width as f64).round() as usize).min(width);
    format!(
        "[{}{}] {step}/{total} {}",
        "#".repeat(filled),
        "-".repeat(width - filled),
        progress_message(loss, lr, tokens_per_s, eta_s)
    )
}

pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    if args.sweep_run {
        let text = args.config_json.as_deref().unwrap_or_default();
        let config = ladder_trainer::config::from_json_text(text)?;
        let here = std::env::current_dir().context("failed to read the current directory")?;
        // Paths in a sweep's train block are relative to the agent's code directory.
        let base = std::env::var_os("LADDER_CODE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| here.clone());
        let launched = ladder_trainer::launch::Launched::from_env()?;
        let rank = launched.as_ref().map_or(0, |l| l.rank);
        if rank == 0 {
            report_provenance(&config, &base);
        }
        if let Some(l) = launched.as_ref().filter(|l| l.world_size > 1) {
            eprintln!(
                "rank {} of {}, meeting at {}",
                l.rank, l.world_size, l.master
            );
        }
        let outcome = ladder_trainer::launch::train_launched(
            &config,
            &base,
            &here,
            launched.as_ref(),
            &mut MetricLines,
        )?;
        eprintln!("finished {} steps", outcome.steps);
        return Ok(());
    }
    let Some(path) = args.config else {
        bail!("give a train config file: ladder train CONFIG.yaml");
    };
    let config = ladder_trainer::config::read_file(&path)?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let out = match args.out {
        Some(out) => out,
        None => {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "train".into());
            base.join("runs").join(stem)
        }
    };
    std::fs::create_dir_all(&out).with_context(|| format!("failed to create {}", out.display()))?;
    eprintln!("training into {}", out.display());
    let mut bar = ProgressBar::new();
    let launched = ladder_trainer::launch::Launched::from_env()?;
    let outcome =
        ladder_trainer::launch::train_launched(&config, &base, &out, launched.as_ref(), &mut bar)?;
    if launched.is_some_and(|l| l.rank != 0) {
        // Rank 0 prints the scores and writes the model.
        return Ok(());
    }
    if args.json {
        let metrics: serde_json::Map<String, serde_json::Value> = outcome
            .final_metrics
            .iter()
            .filter_map(|(name, value)| {
                serde_json::Number::from_f64(*value).map(|n| (name.clone(), n.into()))
            })
            .collect();
        let document = serde_json::json!({
            "steps": outcome.steps,
            "resumed_from": outcome.resumed_from,
            "model_dir": outcome.model_dir.map(|d| d.display().to_string()),
            "metrics": metrics,
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        for (name, value) in &outcome.final_metrics {
            println!("{name:<32} {value:.4}");
        }
    }
    Ok(())
}

pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    use ladder_trainer::eval::{average, evaluate_samples, LanguageModel, Scoring};
    let device = ladder_trainer::train::device_for(&args.device, 0)?;
    let model = ladder_trainer::model::Model::load(&args.model, &device)?;
    let tokenizer = ladder_trainer::tokenizer::Tokenizer::for_model_dir(&args.model)?;
    let scoring = Scoring {
        shots: args.shots,
        seed: args.seed,
        special_tokens: args.special_tokens,
    };
    let mut sample_log = match &args.log_samples {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("failed to create {}", path.display()))?;
            Some((path, std::io::BufWriter::new(file)))
        }
        None => None,
    };
    let mut scores = Vec::new();
    for spec in &args.tasks {
        let task = ladder_trainer::tasks::load_task(spec, args.limit)
            .with_context(|| format!("task {spec}"))?;
        let started = Instant::now();
        let (score, samples) =
            evaluate_samples(&model as &dyn LanguageModel, &tokenizer, &task, scoring)?;
        if let Some((path, log)) = sample_log.as_mut() {
            for sample in &samples {
                let mut line = serde_json::to_value(sample)?;
                line["task"] = serde_json::Value::String(score.task.clone());
                writeln!(log, "{line}")
                    .with_context(|| format!("failed to write {}", path.display()))?;
            }
        }
        if !args.json {
            eprintln!(
                "{}: {} items in {:.1}s",
                score.task,
                score.n,
                started.elapsed().as_secs_f64()
            );
        }
        scores.push(score);
    }
    if let Some((path, mut log)) = sample_log {
        log.flush()
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    let avg = average(&scores);
    if args.json {
        let tasks: Vec<serde_json::Value> = scores
            .iter()
            .map(|s| {
                serde_json::json!({
                    "task": s.task, "n": s.n, "shots": s.shots, "acc": s.acc,
                    "acc_norm": s.acc_norm, "mc2": s.mc2, "primary": s.primary,
                    "acc_stderr": s.acc_stderr,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "tasks": tasks,
                "avg": avg,
                "special_tokens": args.special_tokens.to_string(),
            }))?
        );
    } else {
        println!(
            "{:<28} {:>6} {:>8} {:>8} {:>8} {:>8}",
            "task", "n", "acc", "acc_norm", "mc2", "primary"
        );
        for s in &scores {
            let mc2 = s.mc2.map_or("-".to_string(), |v| format!("{v:.4}"));
            println!(
                "{:<28} {:>6} {:>8.4} {:>8.4} {:>8} {:>8.4}",
                s.task, s.n, s.acc, s.acc_norm, mc2, s.primary
            );
        }
        println!(
            "{:<28} {:>6} {:>8} {:>8} {:>8} {:>8.4}",
            "avg", "", "", "", "", avg
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_leaves_out_what_no_report_has_given_yet() {
        let first = progress_line(1, 100, 5.25, None, None, 99.0);
        assert!(!first.contains("NaN"), "{first}");
        assert!(first.contains("1/100 loss 5.2500 eta 99s"), "{first}");
        assert!(!first.contains("lr") && !first.contains("tok/s"), "{first}");

        let later = progress_line(50, 100, 2.5, Some(3e-4), Some(1234.4), 10.0);
        assert!(later.contains("lr 3.00e-4 1234 tok/s eta 10s"), "{later}");
        assert!(later.starts_with(&format!("[{}{}]", "#".repeat(15), "-".repeat(15))));
    }
}
