//! `ladder bench memory`: the memory it takes to load and score a checkpoint.
//!
//! Writes a randomly initialised LLaMA checkpoint (about 1.5 B parameters by default,
//! stored in bf16, generated a tensor at a time by
//! [`ladder_trainer::model::write_random_checkpoint`]) into a fresh temporary directory,
//! then measures each loader in its own child process (`--child`), so that each peak is
//! its own:
//!
//! - `mmap`: [`Model::load`], what `ladder eval` uses: each tensor memory-mapped in turn,
//!   kept in its stored dtype, widened to f32 only where the forward pass uses it;
//! - `f32`: [`Model::load_trainable`], what training uses: memory-mapped, every weight
//!   widened to an f32 variable at load;
//! - `read`: the loader ladder had before memory-mapping, reproduced here for comparison
//!   (it is no longer in the trainer): the whole file read into memory and every tensor
//!   widened to f32 while the file's bytes are still held. It only loads (its scoring
//!   would add what `f32`'s adds) and needs a bf16 checkpoint.
//!
//! The two model loaders then score the same few short requests (log-likelihoods of a
//! continuation after a context, byte tokens) and the benchmark checks that their scores
//! are identical. Figures per loader: load and scoring time, peak RSS (the kernel's
//! `VmHWM`) and peak anonymous memory (`RssAnon`, RSS minus mapped file pages, sampled
//! every 5 ms from /proc/self/status by a thread of the child). The directory is removed
//! afterwards unless `--dir` named it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use ladder_trainer::model::{LlamaConfig, Model};
use serde_json::json;

/// Requests scored by each loader: a context and a continuation, as multiple-choice items
/// ask them. Short, so that a 1.5 B model on a laptop's cores scores them in seconds.
const REQUESTS: [(&str, &str); 8] = [
    ("The capital of France is", " Paris"),
    ("The capital of France is", " Rome"),
    ("The capital of France is", " Berlin"),
    ("The capital of France is", " Madrid"),
    ("Two plus two is", " four"),
    ("Two plus two is", " five"),
    ("Two plus two is", " three"),
    ("Two plus two is", " twenty"),
];

/// How often the child samples its anonymous memory.
const SAMPLE_EVERY: Duration = Duration::from_millis(5);

#[derive(clap::Args)]
pub struct MemoryArgs {
    /// Hidden size of the synthetic LLaMA model.
    #[arg(long, default_value_t = 2048)]
    hidden: usize,
    /// MLP width.
    #[arg(long, default_value_t = 5632)]
    intermediate: usize,
    #[arg(long, default_value_t = 28)]
    layers: usize,
    #[arg(long, default_value_t = 16)]
    heads: usize,
    #[arg(long, default_value_t = 32000)]
    vocab: usize,
    /// The dtype the checkpoint stores: bf16 or f16.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Loaders to measure, each in its own process: mmap (scoring), f32 (training), read
    /// (the loader before memory-mapping, reproduced).
    #[arg(long, value_delimiter = ',', default_value = "mmap,f32,read")]
    loaders: Vec<String>,
    /// Checkpoint directory: written when it holds no checkpoint yet, reused when it does,
    /// and kept. Default: a fresh directory under the temporary directory, removed after.
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long)]
    json: bool,
    /// Measure only this loader on the checkpoint in `--dir` and print its figures as JSON
    /// (the benchmark runs each loader in a child process this way).
    #[arg(long, hide = true, requires = "dir")]
    child: Option<String>,
}

pub fn run(args: MemoryArgs) -> anyhow::Result<()> {
    if let Some(loader) = &args.child {
        let dir = args
            .dir
            .as_deref()
            .expect("clap requires --dir with --child");
        let figures = measure(loader, dir)?;
        println!("{figures}");
        return Ok(());
    }
    for loader in &args.loaders {
        anyhow::ensure!(
            matches!(loader.as_str(), "mmap" | "f32" | "read"),
            "--loaders: unknown loader {loader:?} (expected mmap, f32 or read)"
        );
    }
    anyhow::ensure!(
        matches!(args.dtype.as_str(), "bf16" | "f16"),
        "--dtype: {:?} is not supported (expected bf16 or f16)",
        args.dtype
    );
    let config = LlamaConfig {
        vocab_size: args.vocab,
        hidden_size: args.hidden,
        intermediate_size: args.intermediate,
        num_hidden_layers: args.layers,
        num_attention_heads: args.heads,
        num_key_value_heads: args.heads,
        ..LlamaConfig::default()
    };
    let (dir, remove_after) = match &args.dir {
        Some(dir) => (dir.clone(), false),
        None => (super::fresh_dir("ladder-bench-memory")?, true),
    };
    let outcome = measure_all(&args, &config, &dir);
    if remove_after {
        let _ = std::fs::remove_dir_all(&dir);
    }
    outcome
}

fn measure_all(args: &MemoryArgs, config: &LlamaConfig, dir: &Path) -> anyhow::Result<()> {
    let weights = dir.join("model.safetensors");
    let file_bytes = if weights.exists() && dir.join("config.json").exists() {
        let existing = LlamaConfig::from_file(&dir.join("config.json"))?;
        anyhow::ensure!(
            &existing == config,
            "{} holds a checkpoint of another shape; remove it or pass the same shape",
            dir.display()
        );
        std::fs::metadata(&weights)?.len()
    } else {
        if !args.json {
            eprintln!(
                "writing a {:.2} B-parameter {} checkpoint into {}",
                config.parameter_count() as f64 / 1e9,
                args.dtype,
                dir.display()
            );
        }
        let started = Instant::now();
        let dtype = args
            .dtype
            .parse()
            .map_err(|e| anyhow::anyhow!("--dtype: {e}"))?;
        let bytes = ladder_trainer::model::write_random_checkpoint(dir, config, dtype, 0)?;
        if !args.json {
            eprintln!("written in {:.0} s", started.elapsed().as_secs_f64());
        }
        bytes
    };

    let mut results = Vec::new();
    for loader in &args.loaders {
        if loader == "read" && args.dtype != "bf16" {
            eprintln!("skipping the read loader: it is reproduced for bf16 checkpoints only");
            continue;
        }
        if !args.json {
            eprintln!("measuring {loader}");
        }
        let output = std::process::Command::new(std::env::current_exe()?)
            .args(["bench", "memory", "--child", loader, "--dir"])
            .arg(dir)
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("failed to start the measuring child")?;
        anyhow::ensure!(
            output.status.success(),
            "the {loader} child failed ({})",
            output.status
        );
        let figures: serde_json::Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("the {loader} child printed no figures"))?;
        results.push(figures);
    }

    // The model loaders must agree on every score.
    let scores: Vec<(&str, Vec<f64>)> = results
        .iter()
        .filter_map(|r| {
            let lls = r["loglikelihoods"].as_array()?;
            let values = lls.iter().filter_map(serde_json::Value::as_f64).collect();
            Some((r["loader"].as_str().unwrap_or_default(), values))
        })
        .collect();
    let max_score_diff = scores
        .windows(2)
        .flat_map(|pair| {
            pair[0]
                .1
                .iter()
                .zip(&pair[1].1)
                .map(|(a, b)| (a - b).abs())
                .collect::<Vec<_>>()
        })
        .fold(0.0f64, f64::max);

    let parameters = config.parameter_count();
    let f32_bytes = parameters as u64 * 4;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "parameters": parameters,
                "dtype": args.dtype,
                "file_bytes": file_bytes,
                "f32_bytes": f32_bytes,
                "requests": REQUESTS.len(),
                "max_score_diff_between_loaders": max_score_diff,
                "loaders": results,
            }))?
        );
        return Ok(());
    }
    let gb = |bytes: f64| bytes / 1e9;
    println!(
        "{:.3} B parameters ({} layers, hidden {}, vocab {}), {}: file {:.2} GB, f32 {:.2} GB; {} requests scored",
        parameters as f64 / 1e9,
        config.num_hidden_layers,
        config.hidden_size,
        config.vocab_size,
        args.dtype,
        gb(file_bytes as f64),
        gb(f32_bytes as f64),
        REQUESTS.len()
    );
    println!(
        "{:<6} {:>7} {:>8} {:>10} {:>10} {:>11} {:>10}",
        "loader", "load s", "score s", "peak RSS", "peak anon", "anon/file", "anon/f32"
    );
    for r in &results {
        let anon = r["peak_anon_bytes"].as_f64().unwrap_or(f64::NAN);
        let score = r["score_s"]
            .as_f64()
            .map_or("-".to_string(), |s| format!("{s:.1}"));
        println!(
            "{:<6} {:>7.1} {:>8} {:>7.2} GB {:>7.2} GB {:>11.2} {:>10.2}",
            r["loader"].as_str().unwrap_or_default(),
            r["load_s"].as_f64().unwrap_or(f64::NAN),
            score,
            gb(r["vm_hwm_bytes"].as_f64().unwrap_or(f64::NAN)),
            gb(anon),
            anon / file_bytes as f64,
            anon / f32_bytes as f64,
        );
    }
    if scores.len() > 1 {
        println!("scores of the model loaders: max difference {max_score_diff:e}");
    }
    Ok(())
}

/// Loads (and, for the model loaders, scores) the checkpoint in `dir` with `loader` and
/// returns this process's figures.
fn measure(loader: &str, dir: &Path) -> anyhow::Result<serde_json::Value> {
    let sampler = AnonSampler::start();
    let device = ladder_trainer::train::device_for("cpu", 0)?;
    let started = Instant::now();
    let model = match loader {
        "mmap" => Some(Model::load(dir, &device)?),
        "f32" => Some(Model::load_trainable(dir, &device)?),
        "read" => {
            let held = read_whole_and_widen(&dir.join("model.safetensors"))?;
            drop(held);
            None
        }
        other => anyhow::bail!("unknown loader {other:?}"),
    };
    let load_s = started.elapsed().as_secs_f64();
    let anon_after_load = status_bytes("RssAnon:")?;
    let mut score_s = None;
    let mut lls = None;
    if let Some(model) = &model {
        use ladder_trainer::eval::{loglikelihoods, SpecialTokens};
        let requests: Vec<(String, String)> = REQUESTS
            .iter()
            .map(|(c, x)| (c.to_string(), x.to_string()))
            .collect();
        let tokenizer = ladder_trainer::tokenizer::Tokenizer::byte();
        let started = Instant::now();
        let scores = loglikelihoods(model, &tokenizer, SpecialTokens::None, &requests)?;
        score_s = Some(started.elapsed().as_secs_f64());
        lls = Some(scores.iter().map(|s| s.loglikelihood).collect::<Vec<f64>>());
    }
    let peak_anon = sampler.stop().max(status_bytes("RssAnon:")?);
    Ok(json!({
        "loader": loader,
        "load_s": load_s,
        "score_s": score_s,
        "vm_hwm_bytes": status_bytes("VmHWM:")?,
        "peak_anon_bytes": peak_anon,
        "anon_after_load_bytes": anon_after_load,
        "loglikelihoods": lls,
    }))
}

/// The loader before memory-mapping, as it was: `std::fs::read` of the whole file, then
/// each tensor widened from bf16 to a new f32 buffer, every buffer kept (they were the
/// model's weights) while the file's bytes are still held. Returns what it holds.
fn read_whole_and_widen(path: &Path) -> anyhow::Result<(Vec<u8>, Vec<Vec<f32>>)> {
    let bytes =
        std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    let header_len = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + header_len])?;
    let data = &bytes[8 + header_len..];
    let mut widened = Vec::with_capacity(header.len());
    for (name, entry) in &header {
        if name == "__metadata__" {
            continue;
        }
        anyhow::ensure!(entry["dtype"] == "BF16", "{name}: not bf16");
        let start = entry["data_offsets"][0].as_u64().context("offsets")? as usize;
        let end = entry["data_offsets"][1].as_u64().context("offsets")? as usize;
        let values: Vec<f32> = data[start..end]
            .chunks_exact(2)
            .map(|pair| f32::from_bits(u32::from(u16::from_le_bytes([pair[0], pair[1]])) << 16))
            .collect();
        widened.push(values);
    }
    Ok((bytes, widened))
}

/// A value in bytes from /proc/self/status (`VmHWM:`, `RssAnon:`, ... in kB).
fn status_bytes(field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .with_context(|| format!("no {field} in /proc/self/status"))?;
    Ok(kb * 1024)
}

/// A thread that samples this process's `RssAnon` every [`SAMPLE_EVERY`] and keeps the
/// largest value (the kernel keeps no peak of anonymous memory alone).
struct AnonSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl AnonSampler {
    fn start() -> AnonSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(status_bytes("RssAnon:").unwrap_or(0));
                std::thread::sleep(SAMPLE_EVERY);
            }
            peak
        });
        AnonSampler { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}
