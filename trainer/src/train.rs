//! The training loop: builds the model, tokenizer and data a [`TrainConfig`] names,
//! trains with AdamW (gradient accumulation, clipping, warmup + decay), evaluates on a
//! schedule, writes resumable checkpoints and the final Hugging Face-format model.
//!
//! A run restarted in the same output directory continues from its newest checkpoint
//! and, on the same device, reproduces the uninterrupted run's losses exactly: the data
//! order is a pure function of `(seed, step)` ([`crate::data::DataOrder`]), the
//! optimizer's moments are checkpointed, and nothing else carries state between steps.
//!
//! Data parallelism: each of `data_parallel` ranks computes gradients on its share of
//! every micro-batch, normalised by the whole step's target count, and a
//! [`Collective`] sums them, so every rank applies the same update as one rank on the
//! whole batch would.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use ladder_spec::train_config::TrainConfig;
use serde::{Deserialize, Serialize};

use crate::data::{load_examples, DataOrder, PackedData};
use crate::eval::{self, LanguageModel, TaskScores};
use crate::model::{LlamaConfig, LoraConfig, Model};
use crate::optim::{clip_grad_norm, learning_rate, AdamW};
use crate::tasks::{self, Task};
use crate::tokenizer::Tokenizer;
use crate::{Result, TrainerError};

/// Where a run's metrics and progress go: `@ladder` lines for the agent, a progress bar
/// for `ladder train`, a vector in tests.
pub trait Reporter {
    /// Metrics at optimizer step `step` (1-based: the number of updates applied).
    fn metrics(&mut self, step: u64, values: &[(String, f64)]);
    /// Called after every step.
    fn progress(&mut self, _step: u64, _total: u64, _loss: f64) {}
    /// A line for humans (resumed from a checkpoint, model saved, ...).
    fn note(&mut self, _text: &str) {}
    /// Asked after every step: `true` ends training there, as if the process had been
    /// killed (nothing more is written), e.g. when a signal asked the run to stop.
    fn should_stop(&mut self) -> bool {
        false
    }
}

/// A reporter that keeps everything, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct Recorded {
    pub metrics: Vec<(u64, Vec<(String, f64)>)>,
    pub losses: Vec<(u64, f64)>,
    pub notes: Vec<String>,
    /// Stop after this step (simulates a killed run).
    pub stop_after: Option<u64>,
}

impl Reporter for Recorded {
    fn metrics(&mut self, step: u64, values: &[(String, f64)]) {
        self.metrics.push((step, values.to_vec()));
    }
    fn progress(&mut self, step: u64, _total: u64, loss: f64) {
        self.losses.push((step, loss));
    }
    fn note(&mut self, text: &str) {
        self.notes.push(text.to_string());
    }
    fn should_stop(&mut self) -> bool {
        let last = self.losses.last().map(|(step, _)| *step);
        self.stop_after.is_some() && last >= self.stop_after
    }
}

/// Sums gradients across the data-parallel ranks of one run.
pub trait Collective {
    /// This rank, `0..world_size`.
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Replaces each tensor by the element-wise sum of that tensor over all ranks.
    fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<()>;
    /// Replaces each tensor by rank 0's value (identical initial weights everywhere).
    fn broadcast(&self, tensors: &mut [Tensor]) -> Result<()>;
}

/// The collective of a run with one rank: nothing to exchange.
pub struct SingleRank;

impl Collective for SingleRank {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _tensors: &mut [Tensor]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _tensors: &mut [Tensor]) -> Result<()> {
        Ok(())
    }
}

/// What a finished run leaves behind.
#[derive(Debug)]
pub struct Outcome {
    /// Optimizer steps completed.
    pub steps: u64,
    /// The metrics of the last evaluation (held-out loss, task scores, `eval/avg`).
    pub final_metrics: Vec<(String, f64)>,
    pub eval: Vec<TaskScores>,
    /// The saved model, when saving is enabled (rank 0 only).
    pub model_dir: Option<PathBuf>,
    /// Step the run resumed from, if it found a checkpoint.
    pub resumed_from: Option<u64>,
    /// The reporter asked to stop before the last step.
    pub interrupted: bool,
}

/// Picks the device named by the config: `auto` is the first visible GPU when ladder was
/// built with `cuda` and one is there, else the CPU.
pub fn device_for(name: &str, local_rank: usize) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                Ok(Device::new_cuda(local_rank)?)
            } else {
                Ok(Device::Cpu)
            }
        }
        "cuda" => Ok(Device::new_cuda(local_rank)?),
        other => {
            let ordinal = other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| {
                    TrainerError::config("device", format!("unknown device \"{other}\""))
                })?;
            Ok(Device::new_cuda(ordinal)?)
        }
    }
}

/// Everything a run needs, built from its config.
pub struct Setup {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub train: PackedData,
    pub held_out: Option<PackedData>,
    pub tasks: Vec<(Task, usize)>,
}

/// Builds the model (fresh or loaded, with adapters when LoRA is configured), the
/// tokenizer, the packed data and the evaluation tasks. Relative paths are resolved
/// against `base_dir`.
pub fn setup(config: &TrainConfig, base_dir: &Path, device: &Device) -> Result<Setup> {
    let resolve = |path: &str| -> PathBuf { base_dir.join(path) };
    let model_dir = config.model.path.as_deref().map(resolve);
    let tokenizer = match (&config.tokenizer, &model_dir) {
        (Some(path), _) => {
            Tokenizer::for_model_dir(resolve(path).parent().unwrap_or_else(|| Path::new(".")))?
        }
        (None, Some(dir)) => Tokenizer::for_model_dir(dir)?,
        (None, None) => Tokenizer::byte(),
    };
    let mut model = match (config.model.init.as_str(), &model_dir, &config.model.arch) {
        ("random", _, Some(arch)) => {
            let llama = llama_config(arch, &tokenizer, config.seq_len)?;
            Model::random(llama, config.seed, device)?
        }
        (_, Some(dir), _) => Model::load(dir, device)?,
        _ => {
            return Err(TrainerError::config(
                "model",
                "needs init: random with an arch, or a path",
            ))
        }
    };
    let vocab = model.config().vocab_size;
    if tokenizer.vocab_size() > vocab {
        return Err(TrainerError::config(
            "model",
            format!(
                "the tokenizer has {} tokens but the model's vocabulary only {vocab}",
                tokenizer.vocab_size()
            ),
        ));
    }
    if config.seq_len > model.config().max_position_embeddings {
        return Err(TrainerError::config(
            "seq_len",
            format!(
                "{} is longer than the model's max_position_embeddings {}",
                config.seq_len,
                model.config().max_position_embeddings
            ),
        ));
    }
    if let Some(lora) = &config.lora {
        let lora = LoraConfig {
            rank: lora.rank,
            alpha: lora.alpha.unwrap_or(2.0 * lora.rank as f64),
            targets: lora.targets.clone(),
        };
        model.add_lora(&lora, config.seed ^ 0x4c6f_5241)?;
    }
    let (train_examples, held_out_examples) = load_examples(&config.data, config.seed, base_dir)?;
    let train = PackedData::pack(&train_examples, &tokenizer, config.seq_len)?;
    if train.is_empty() {
        return Err(TrainerError::config("data", "no training sequences"));
    }
    let held_out = if held_out_examples.is_empty() {
        None
    } else {
        let packed = PackedData::pack(&held_out_examples, &tokenizer, config.seq_len)?;
        Some(packed.truncated(config.data.validation_sequences))
    };
    let mut loaded_tasks = Vec::new();
    for (index, task) in config.eval.iter().enumerate() {
        let local = resolve(&task.task);
        let spec = if local.exists() {
            local.display().to_string()
        } else {
            task.task.clone()
        };
        let loaded = tasks::load_task(&spec, task.limit).map_err(|error| {
            TrainerError::config(format!("eval.{index}.task"), error.to_string())
        })?;
        loaded_tasks.push((loaded, task.shots));
    }
    Ok(Setup {
        model,
        tokenizer,
        train,
        held_out,
        tasks: loaded_tasks,
    })
}

/// The Hugging Face config of a fresh model of shape `arch`.
fn llama_config(
    arch: &ladder_spec::train_config::ArchConfig,
    tokenizer: &Tokenizer,
    seq_len: usize,
) -> Result<LlamaConfig> {
    let d_ff = arch
        .d_ff
        .unwrap_or_else(|| (arch.d_model * 8 / 3).div_ceil(32) * 32);
    let value = serde_json::json!({
        "vocab_size": arch.vocab.unwrap_or(tokenizer.vocab_size()),
        "hidden_size": arch.d_model,
        "intermediate_size": d_ff,
        "num_hidden_layers": arch.layers,
        "num_attention_heads": arch.heads,
        "num_key_value_heads": arch.kv_heads.unwrap_or(arch.heads),
        "rms_norm_eps": 1e-5,
        "rope_theta": arch.rope_theta,
        "max_position_embeddings": arch.max_seq.unwrap_or(seq_len.max(512)),
        "tie_word_embeddings": arch.tie_embeddings,
        "bos_token_id": tokenizer.bos_id(),
        "eos_token_id": tokenizer.eos_id(),
    });
    let config: LlamaConfig = serde_json::from_value(value)
        .map_err(|e| TrainerError::config("model.arch", e.to_string()))?;
    config.validate()?;
    Ok(config)
}

/// Summed negative log-likelihood of `targets` where `mask` is 1, and the logits'
/// differentiable log-softmax (the max is detached: log-softmax does not depend on it).
pub fn masked_nll_sum(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (batch, seq, vocab) = logits.dims3()?;
    let flat = logits.reshape((batch * seq, vocab))?;
    let max = flat.max_keepdim(D::Minus1)?.detach();
    let shifted = flat.broadcast_sub(&max)?;
    let log_norm = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let picked = shifted.gather(&targets.reshape((batch * seq, 1))?, 1)?;
    let log_probs = (picked - log_norm)?.squeeze(1)?;
    let weighted = (log_probs * mask.reshape(batch * seq)?)?;
    Ok(weighted.sum_all()?.neg()?)
}

/// Checkpoint metadata (`state.json`).
#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    step: u64,
    /// The trajectory-relevant part of the config; a checkpoint from another config is
    /// refused rather than silently mixed in.
    fingerprint: serde_json::Value,
}

fn fingerprint(config: &TrainConfig) -> serde_json::Value {
    serde_json::json!({
        "model": config.model,
        "data": config.data,
        "tokenizer": config.tokenizer,
        "lora": config.lora,
        "optim": config.optim,
        "steps": config.steps,
        "batch_size": config.batch_size,
        "grad_accum": config.grad_accum,
        "seq_len": config.seq_len,
        "seed": config.seed,
        "data_parallel": config.data_parallel,
    })
}

const LATEST: &str = "latest";
const KEEP_CHECKPOINTS: usize = 2;

/// Trains one run (this rank of it). Writes checkpoints under `out_dir/checkpoints` and
/// the final model to `out_dir/model`; resumes from the newest checkpoint there.
pub fn train(
    config: &TrainConfig,
    base_dir: &Path,
    out_dir: &Path,
    collective: &dyn Collective,
    reporter: &mut dyn Reporter,
) -> Result<Outcome> {
    let device = device_for(&config.device, collective.rank())?;
    let setup = setup(config, base_dir, &device)?;
    train_with(config, setup, out_dir, collective, reporter)
}

/// Trains a run with all its ranks: one rank in this thread when `data_parallel` is 1,
/// else `data_parallel` ranks as threads joined by a [`CpuCollective`] (rank 0 reports
/// and writes). A rank that fails releases the others, and the run fails with the
/// first error.
///
/// [`CpuCollective`]: crate::collective::CpuCollective
pub fn train_run(
    config: &TrainConfig,
    base_dir: &Path,
    out_dir: &Path,
    reporter: &mut dyn Reporter,
) -> Result<Outcome> {
    let world = config.data_parallel;
    if world == 1 {
        return train(config, base_dir, out_dir, &SingleRank, reporter);
    }
    let group = crate::collective::CpuCollective::group(world);
    std::thread::scope(|scope| {
        let mut others = Vec::new();
        for collective in group.iter().skip(1) {
            others.push(scope.spawn(move || {
                let result = train(config, base_dir, out_dir, collective, &mut Silent);
                if let Err(error) = &result {
                    collective.poison(&error.to_string());
                }
                result
            }));
        }
        let first = &group[0];
        let result = train(config, base_dir, out_dir, first, reporter);
        if let Err(error) = &result {
            first.poison(&error.to_string());
        }
        let mut first_error = None;
        for (index, handle) in others.into_iter().enumerate() {
            match handle.join() {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    first_error.get_or_insert(error);
                }
                Err(_) => {
                    first_error.get_or_insert(TrainerError::config(
                        "data_parallel",
                        format!("rank {} panicked", index + 1),
                    ));
                }
            }
        }
        match (result, first_error) {
            (Ok(outcome), None) => Ok(outcome),
            (Ok(_), Some(error)) => Err(error),
            (Err(error), _) => Err(error),
        }
    })
}

/// The reporter of ranks other than 0.
pub(crate) struct Silent;

impl Reporter for Silent {
    fn metrics(&mut self, _step: u64, _values: &[(String, f64)]) {}
}

/// [`train`] on an already built [`Setup`] (tests build theirs).
pub fn train_with(
    config: &TrainConfig,
    setup: Setup,
    out_dir: &Path,
    collective: &dyn Collective,
    reporter: &mut dyn Reporter,
) -> Result<Outcome> {
    let Setup {
        model,
        tokenizer,
        train,
        held_out,
        tasks,
    } = setup;
    let world = collective.world_size();
    let rank = collective.rank();
    let per_rank = config.batch_size / world;
    let mut optimizer = AdamW::new(model.trainable(), config.optim.clone())?;
    // Identical starting weights on every rank.
    if world > 1 {
        let mut weights: Vec<Tensor> = optimizer
            .vars()
            .iter()
            .map(|(_, var)| var.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?;
        collective.broadcast(&mut weights)?;
        for ((_, var), weight) in optimizer.vars().iter().zip(&weights) {
            var.set(weight)?;
        }
    }

    let checkpoints = out_dir.join("checkpoints");
    let resumed_from = resume(&checkpoints, config, &mut optimizer, model.device())?;
    if let Some(step) = resumed_from {
        reporter.note(&format!("resumed from the checkpoint at step {step}"));
    }
    let mut order = DataOrder::new(config.seed, train.len());
    let tokens_per_step = (config.batch_size * config.grad_accum * config.seq_len) as f64;
    let mut window_start = Instant::now();
    let mut window_steps = 0u64;
    let mut final_metrics = Vec::new();
    let mut final_eval = Vec::new();
    let start = resumed_from.unwrap_or(0);

    for step in start..config.steps {
        let lr = learning_rate(&config.optim, step, config.steps);
        let sample_base = step * (config.batch_size * config.grad_accum) as u64;
        // The step's rows over all ranks and micro-batches, to normalise by their
        // target count so accumulation and data parallelism equal one big batch.
        let all_rows = order.rows(sample_base, config.batch_size * config.grad_accum);
        let targets = train.target_count(&all_rows).max(1) as f64;
        let mut grads: Option<Vec<Tensor>> = None;
        let mut loss_sum = 0f64;
        for micro in 0..config.grad_accum {
            let offset = micro * config.batch_size + rank * per_rank;
            let rows = &all_rows[offset..offset + per_rank];
            let batch = train.batch(rows, model.device())?;
            let logits = model.forward(&batch.inputs)?;
            let nll = masked_nll_sum(&logits, &batch.targets, &batch.mask)?;
            loss_sum += nll.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let scaled = (nll / targets)?;
            let store = scaled.backward()?;
            let mut micro_grads = Vec::with_capacity(optimizer.vars().len());
            for (name, var) in optimizer.vars() {
                let grad = match store.get(var.as_tensor()) {
                    Some(grad) => grad.clone(),
                    None => {
                        return Err(TrainerError::invalid(
                            name,
                            "received no gradient (the model does not use this tensor)",
                        ))
                    }
                };
                micro_grads.push(grad);
            }
            grads = Some(match grads {
                None => micro_grads,
                Some(sum) => sum
                    .iter()
                    .zip(&micro_grads)
                    .map(|(a, b)| a + b)
                    .collect::<candle_core::Result<_>>()?,
            });
        }
        let mut grads = grads.expect("grad_accum >= 1");
        collective.all_reduce_sum(&mut grads)?;
        if world > 1 {
            let mut loss = [Tensor::new(&[loss_sum], &Device::Cpu)?];
            collective.all_reduce_sum(&mut loss)?;
            loss_sum = loss[0].to_vec1::<f64>()?[0];
        }
        let grad_norm = clip_grad_norm(&mut grads, config.optim.grad_clip)?;
        optimizer.step(&grads, lr)?;
        let done = step + 1;
        let loss = loss_sum / targets;
        if !loss.is_finite() {
            return Err(TrainerError::config(
                "optim.lr",
                format!("the loss diverged to {loss} at step {done}; lower the learning rate"),
            ));
        }
        reporter.progress(done, config.steps, loss);
        window_steps += 1;

        let last = done == config.steps;
        if done % config.log_every == 0 || last {
            let elapsed = window_start.elapsed().as_secs_f64().max(1e-9);
            let tokens_per_s = tokens_per_step * window_steps as f64 / elapsed;
            reporter.metrics(
                done,
                &[
                    ("train/loss".into(), loss),
                    ("train/lr".into(), lr),
                    ("train/grad_norm".into(), grad_norm),
                    ("train/tokens_per_s".into(), tokens_per_s),
                ],
            );
            window_start = Instant::now();
            window_steps = 0;
        }
        let eval_due = config.eval_every.is_some_and(|every| done % every == 0);
        if (eval_due || last) && rank == 0 {
            let (metrics, scores) =
                evaluate(&model, &tokenizer, held_out.as_ref(), &tasks, config.seed)?;
            reporter.metrics(done, &metrics);
            final_metrics = metrics;
            final_eval = scores;
            window_start = Instant::now();
        }
        let checkpoint_due = config
            .checkpoint_every
            .is_some_and(|every| done % every == 0);
        if checkpoint_due && !last && rank == 0 {
            save_checkpoint(&checkpoints, config, &optimizer, done)?;
        }
        if !last && reporter.should_stop() {
            return Ok(Outcome {
                steps: done,
                final_metrics,
                eval: final_eval,
                model_dir: None,
                resumed_from,
                interrupted: true,
            });
        }
    }

    let mut model_dir = None;
    if config.save.enabled && rank == 0 && (resumed_from != Some(config.steps)) {
        let dir = out_dir.join("model");
        model.save(&dir, config.save.merge_lora)?;
        tokenizer.save(&dir)?;
        reporter.note(&format!("model saved to {}", dir.display()));
        model_dir = Some(dir);
    }
    Ok(Outcome {
        steps: config.steps,
        final_metrics,
        eval: final_eval,
        model_dir,
        resumed_from,
        interrupted: false,
    })
}

/// Named metric values, in report order.
pub type Metrics = Vec<(String, f64)>;

/// Held-out loss and every task's scores, as metrics.
pub fn evaluate(
    model: &Model,
    tokenizer: &Tokenizer,
    held_out: Option<&PackedData>,
    tasks: &[(Task, usize)],
    seed: u64,
) -> Result<(Metrics, Vec<TaskScores>)> {
    let mut metrics = Vec::new();
    if let Some(held_out) = held_out {
        metrics.push(("eval/loss".to_string(), held_out_loss(model, held_out)?));
    }
    let mut scores = Vec::new();
    for (task, shots) in tasks {
        let score = eval::evaluate(model as &dyn LanguageModel, tokenizer, task, *shots, seed)?;
        metrics.push((format!("eval/{}/acc", score.task), score.acc));
        metrics.push((format!("eval/{}/acc_norm", score.task), score.acc_norm));
        if let Some(mc2) = score.mc2 {
            metrics.push((format!("eval/{}/mc2", score.task), mc2));
        }
        scores.push(score);
    }
    if !scores.is_empty() {
        metrics.push(("eval/avg".to_string(), eval::average(&scores)));
    }
    Ok((metrics, scores))
}

/// Mean loss per target token over the held-out sequences.
pub fn held_out_loss(model: &Model, data: &PackedData) -> Result<f64> {
    let mut total = 0f64;
    let mut count = 0usize;
    let rows: Vec<usize> = (0..data.len()).collect();
    for chunk in rows.chunks(8) {
        let batch = data.batch(chunk, model.device())?;
        let logits = model.forward(&batch.inputs)?.detach();
        total += masked_nll_sum(&logits, &batch.targets, &batch.mask)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        count += data.target_count(chunk);
    }
    Ok(total / count.max(1) as f64)
}

fn save_checkpoint(dir: &Path, config: &TrainConfig, optimizer: &AdamW, step: u64) -> Result<()> {
    let name = format!("step-{step:08}");
    let staging = dir.join(format!("{name}.partial"));
    let final_dir = dir.join(&name);
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| TrainerError::io(&staging, e))?;
    let weights: HashMap<String, Tensor> = optimizer
        .vars()
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
        .collect();
    let (moments, steps) = optimizer.state();
    debug_assert_eq!(steps, step);
    candle_core::safetensors::save(&weights, staging.join("trainable.safetensors"))?;
    candle_core::safetensors::save(&moments, staging.join("optimizer.safetensors"))?;
    let state = CheckpointState {
        step,
        fingerprint: fingerprint(config),
    };
    write_synced(
        &staging.join("state.json"),
        serde_json::to_vec_pretty(&state)
            .expect("serializable")
            .as_slice(),
    )?;
    for file in ["trainable.safetensors", "optimizer.safetensors"] {
        let path = staging.join(file);
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| TrainerError::io(&path, e))?;
    }
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&staging, &final_dir).map_err(|e| TrainerError::io(&final_dir, e))?;
    let pointer = dir.join(format!("{LATEST}.partial"));
    write_synced(&pointer, name.as_bytes())?;
    std::fs::rename(&pointer, dir.join(LATEST)).map_err(|e| TrainerError::io(dir, e))?;
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
    // Keep the newest few.
    let mut existing: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| TrainerError::io(dir, e))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("step-") && !n.ends_with(".partial"))
        .collect();
    existing.sort();
    while existing.len() > KEEP_CHECKPOINTS {
        let old = existing.remove(0);
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(|e| TrainerError::io(path, e))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| TrainerError::io(path, e))
}

/// Loads the newest checkpoint into the trainable variables and the optimizer; returns
/// its step, or `None` when there is none.
fn resume(
    dir: &Path,
    config: &TrainConfig,
    optimizer: &mut AdamW,
    device: &Device,
) -> Result<Option<u64>> {
    let pointer = dir.join(LATEST);
    let name = match std::fs::read_to_string(&pointer) {
        Ok(name) => name.trim().to_string(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(TrainerError::io(pointer, error)),
    };
    let checkpoint = dir.join(&name);
    let state_path = checkpoint.join("state.json");
    let state_text =
        std::fs::read_to_string(&state_path).map_err(|e| TrainerError::io(&state_path, e))?;
    let state: CheckpointState = serde_json::from_str(&state_text)
        .map_err(|e| TrainerError::invalid(state_path.display(), e.to_string()))?;
    if state.fingerprint != fingerprint(config) {
        return Err(TrainerError::invalid(
            checkpoint.display(),
            "this checkpoint was written by a run with a different configuration; \
             remove the checkpoints directory or train into another output directory",
        ));
    }
    let weights = candle_core::safetensors::load(checkpoint.join("trainable.safetensors"), device)?;
    for (name, var) in optimizer.vars() {
        let tensor = weights.get(name).ok_or_else(|| {
            TrainerError::invalid(
                checkpoint.join("trainable.safetensors").display(),
                format!("missing {name}"),
            )
        })?;
        var.set(&tensor.to_dtype(var.dtype())?)?;
    }
    let moments = candle_core::safetensors::load(checkpoint.join("optimizer.safetensors"), device)?;
    optimizer.restore(&moments, state.step)?;
    Ok(Some(state.step))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(value: serde_json::Value) -> TrainConfig {
        TrainConfig::from_json(&value).unwrap()
    }

    fn tiny(steps: u64) -> serde_json::Value {
        json!({
            "model": {"init": "random", "arch": {"d_model": 32, "layers": 2, "heads": 4, "kv_heads": 2}},
            "data": {"task": "synthetic-arith", "examples": 2000, "validation_sequences": 4},
            "optim": {"lr": 3e-3, "warmup": 3, "weight_decay": 0.01},
            "steps": steps,
            "batch_size": 4,
            "grad_accum": 2,
            "seq_len": 32,
            "log_every": 1,
            "checkpoint_every": 5,
            "device": "cpu",
            "seed": 11,
        })
    }

    fn run(config: &TrainConfig, out: &Path, stop_after: Option<u64>) -> (Outcome, Recorded) {
        let mut recorded = Recorded {
            stop_after,
            ..Recorded::default()
        };
        let outcome = train(config, Path::new("."), out, &SingleRank, &mut recorded).unwrap();
        (outcome, recorded)
    }

    /// A run stopped after step 8 (its last checkpoint is at step 5) and restarted in
    /// the same directory reproduces the uninterrupted run's losses from step 6 on,
    /// bit for bit.
    #[test]
    fn resumed_run_reproduces_the_uninterrupted_losses() {
        let config = config(tiny(12));
        let whole_dir = tempfile::tempdir().unwrap();
        let (whole, whole_log) = run(&config, whole_dir.path(), None);
        assert_eq!(whole.steps, 12);
        assert_eq!(whole_log.losses.len(), 12);

        let split_dir = tempfile::tempdir().unwrap();
        let (first, first_log) = run(&config, split_dir.path(), Some(8));
        assert!(first.interrupted);
        assert_eq!(first_log.losses.len(), 8);
        assert_eq!(first_log.losses[..], whole_log.losses[..8]);
        let (second, second_log) = run(&config, split_dir.path(), None);
        assert_eq!(second.resumed_from, Some(5));
        let resumed: Vec<(u64, f64)> = second_log.losses.clone();
        assert_eq!(resumed.first().map(|(s, _)| *s), Some(6));
        assert_eq!(
            resumed[..],
            whole_log.losses[5..],
            "losses after the checkpoint differ"
        );
        // The final models are identical too.
        let a = Model::load(&whole_dir.path().join("model"), &Device::Cpu).unwrap();
        let b = Model::load(&split_dir.path().join("model"), &Device::Cpu).unwrap();
        for ((name, x), (_, y)) in a.named_tensors().iter().zip(b.named_tensors()) {
            let x: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(x, y, "{name}");
        }
    }

    #[test]
    fn a_checkpoint_from_another_config_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _) = run(&config(tiny(12)), dir.path(), Some(6));
        let mut other = tiny(12);
        other["optim"]["lr"] = json!(1e-2);
        let mut recorded = Recorded::default();
        let error = train(
            &config(other),
            Path::new("."),
            dir.path(),
            &SingleRank,
            &mut recorded,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("different configuration"), "{error}");
    }

    /// Gradient accumulation is normalised by the step's target count: two
    /// micro-batches of 4 give the same update as one batch of 8.
    #[test]
    fn accumulation_equals_one_big_batch() {
        let mut accumulated = tiny(3);
        accumulated["checkpoint_every"] = json!(null);
        let mut big = accumulated.clone();
        big["batch_size"] = json!(8);
        big["grad_accum"] = json!(1);
        let dir_a = tempfile::tempdir().unwrap();
        let dir_b = tempfile::tempdir().unwrap();
        let (_, a) = run(&config(accumulated), dir_a.path(), None);
        let (_, b) = run(&config(big), dir_b.path(), None);
        for ((_, x), (_, y)) in a.losses.iter().zip(&b.losses) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }

    fn metric(outcome_metrics: &[(String, f64)], name: &str) -> f64 {
        outcome_metrics
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no {name} in {outcome_metrics:?}"))
            .1
    }

    fn tensors(model: &Model) -> Vec<(String, Vec<f32>)> {
        model
            .named_tensors()
            .into_iter()
            .map(|(name, t)| (name, t.flatten_all().unwrap().to_vec1().unwrap()))
            .collect()
    }

    /// A base model trained briefly on `synthetic-kv` is saved, reloaded and fine-tuned
    /// further, fully and with LoRA: both lower the held-out loss and raise accuracy on
    /// the held-out multiple-choice twin; every trainable tensor changes and, with LoRA,
    /// every base tensor stays bit-identical.
    #[test]
    fn fine_tuning_a_saved_model_lowers_loss_and_raises_accuracy() {
        let base_dir = tempfile::tempdir().unwrap();
        let common = json!({
            "data": {"task": "synthetic-kv", "examples": 4000, "validation_sequences": 8},
            "batch_size": 8,
            "seq_len": 64,
            "log_every": 10,
            "device": "cpu",
            "eval": [{"task": "synthetic-kv-mc", "limit": 96}],
        });
        let with = |extra: serde_json::Value| {
            let mut value = common.clone();
            for (k, v) in extra.as_object().unwrap() {
                value[k] = v.clone();
            }
            config(value)
        };
        let base = with(json!({
            "model": {"init": "random", "arch": {"d_model": 64, "layers": 2, "heads": 4}},
            "optim": {"lr": 3e-3, "warmup": 5},
            "steps": 30,
        }));
        let (outcome, _) = run(&base, base_dir.path(), None);
        let saved = outcome.model_dir.expect("saved");
        let base_model = Model::load(&saved, &Device::Cpu).unwrap();
        let base_tensors = tensors(&base_model);

        for (label, extra) in [
            ("full", json!({"optim": {"lr": 3e-3, "warmup": 5}})),
            (
                "lora",
                json!({"optim": {"lr": 1e-2, "warmup": 5},
                       "lora": {"rank": 8, "targets": ["q_proj", "k_proj", "v_proj", "o_proj",
                                                       "gate_proj", "up_proj", "down_proj"]}}),
            ),
        ] {
            let mut value = extra.clone();
            value["model"] = json!({"path": saved.display().to_string()});
            value["steps"] = json!(120);
            let tune = with(value);
            let before = setup(&tune, Path::new("."), &Device::Cpu).unwrap();
            let (start_metrics, _) = evaluate(
                &before.model,
                &before.tokenizer,
                before.held_out.as_ref(),
                &before.tasks,
                0,
            )
            .unwrap();
            let out = tempfile::tempdir().unwrap();
            let (outcome, _) = run(&tune, out.path(), None);
            let end_metrics = outcome.final_metrics;
            let (loss0, loss1) = (
                metric(&start_metrics, "eval/loss"),
                metric(&end_metrics, "eval/loss"),
            );
            let acc = "eval/synthetic-kv-mc/acc";
            let (acc0, acc1) = (metric(&start_metrics, acc), metric(&end_metrics, acc));
            eprintln!("{label}: eval/loss {loss0:.4} -> {loss1:.4}, acc {acc0:.3} -> {acc1:.3}");
            assert!(
                loss1 < loss0,
                "{label}: held-out loss did not fall: {loss0} -> {loss1}"
            );
            assert!(
                acc1 > acc0,
                "{label}: accuracy did not rise: {acc0} -> {acc1}"
            );

            let tuned = Model::load(&outcome.model_dir.unwrap(), &Device::Cpu).unwrap();
            let after = tensors(&tuned);
            let before_by_name: std::collections::BTreeMap<_, _> =
                base_tensors.iter().cloned().collect();
            let mut adapters = 0;
            for (name, values) in &after {
                match before_by_name.get(name) {
                    Some(original) if label == "lora" => {
                        assert_eq!(original, values, "lora: frozen {name} changed")
                    }
                    Some(original) => assert_ne!(original, values, "full: {name} did not train"),
                    None => {
                        assert!(name.contains("lora_"), "unexpected tensor {name}");
                        adapters += 1;
                        assert!(values.iter().any(|v| *v != 0.0), "{name} is all zero");
                    }
                }
            }
            if label == "lora" {
                // A and B for each of 7 modules in each of 2 layers.
                assert_eq!(adapters, 2 * 7 * 2);
                // B starts at zero, so non-zero B means it trained; A must have moved
                // from its seeded start too.
                let fresh = setup(&tune, Path::new("."), &Device::Cpu).unwrap();
                let start: std::collections::BTreeMap<_, _> =
                    tensors(&fresh.model).into_iter().collect();
                for (name, values) in after.iter().filter(|(n, _)| n.contains("lora_")) {
                    assert_ne!(&start[name], values, "{name} did not train");
                }
            } else {
                assert_eq!(adapters, 0);
            }
        }
    }

    /// Two data-parallel ranks, each on half of every batch, end with the weights of one
    /// rank on the whole batch (up to float summation order), through the same training
    /// loop and `Collective` trait the NCCL backend plugs into.
    #[test]
    fn two_ranks_on_half_batches_equal_one_rank_on_the_whole_batch() {
        let mut single = tiny(6);
        single["checkpoint_every"] = json!(null);
        single["batch_size"] = json!(8);
        single["grad_accum"] = json!(1);
        let mut parallel = single.clone();
        parallel["data_parallel"] = json!(2);
        let dir_single = tempfile::tempdir().unwrap();
        let dir_parallel = tempfile::tempdir().unwrap();
        let mut log_single = Recorded::default();
        let mut log_parallel = Recorded::default();
        train_run(
            &config(single),
            Path::new("."),
            dir_single.path(),
            &mut log_single,
        )
        .unwrap();
        train_run(
            &config(parallel),
            Path::new("."),
            dir_parallel.path(),
            &mut log_parallel,
        )
        .unwrap();
        for ((_, a), (_, b)) in log_single.losses.iter().zip(&log_parallel.losses) {
            assert!((a - b).abs() < 1e-5, "loss {a} vs {b}");
        }
        let a = Model::load(&dir_single.path().join("model"), &Device::Cpu).unwrap();
        let b = Model::load(&dir_parallel.path().join("model"), &Device::Cpu).unwrap();
        let start = Model::random(a.config().clone(), 11, &Device::Cpu).unwrap();
        let mut largest = 0f32;
        for (((name, x), (_, y)), (_, s)) in
            tensors(&a).iter().zip(tensors(&b)).zip(tensors(&start))
        {
            assert_ne!(x, &s, "{name} did not train");
            for (p, q) in x.iter().zip(&y) {
                largest = largest.max((p - q).abs());
            }
        }
        eprintln!("largest weight difference after 6 steps: {largest:e}");
        // Tolerance: f32 sums in a different order, amplified by 6 Adam steps.
        assert!(largest < 1e-4, "weights differ by up to {largest}");
    }

    /// Two ranks as separate endpoints of the TCP collective (what the agent's one
    /// process per GPU uses on a CPU node), sharing one run directory, end with exactly
    /// the weights of two in-process ranks: both sum in rank order. Only rank 0 reports
    /// and writes the model.
    #[test]
    fn tcp_ranks_train_bit_for_bit_like_in_process_ranks() {
        let mut value = tiny(6);
        value["checkpoint_every"] = json!(3);
        value["batch_size"] = json!(8);
        value["grad_accum"] = json!(1);
        let mut threaded = value.clone();
        threaded["data_parallel"] = json!(2);
        let dir_threads = tempfile::tempdir().unwrap();
        let mut log_threads = Recorded::default();
        train_run(
            &config(threaded),
            Path::new("."),
            dir_threads.path(),
            &mut log_threads,
        )
        .unwrap();

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir_tcp = tempfile::tempdir().unwrap();
        let tcp_config = config(value);
        let launched = |rank: usize| {
            crate::launch::Launched::from_vars(|name| match name {
                "WORLD_SIZE" => Some("2".to_string()),
                "RANK" | "LOCAL_RANK" => Some(rank.to_string()),
                "MASTER_PORT" => Some(port.to_string()),
                "LADDER_RUN_ID" => Some("run-tcp".to_string()),
                _ => None,
            })
            .unwrap()
            .unwrap()
        };
        let (log_tcp, log_rank1) = std::thread::scope(|scope| {
            let (config, dir) = (&tcp_config, dir_tcp.path());
            let second = scope.spawn(move || {
                let mut log = Recorded::default();
                crate::launch::train_launched(
                    config,
                    Path::new("."),
                    dir,
                    Some(&launched(1)),
                    &mut log,
                )
                .unwrap();
                log
            });
            let mut log = Recorded::default();
            let outcome = crate::launch::train_launched(
                config,
                Path::new("."),
                dir,
                Some(&launched(0)),
                &mut log,
            )
            .unwrap();
            assert!(outcome.model_dir.is_some(), "rank 0 saves the model");
            (log, second.join().unwrap())
        });
        assert!(log_rank1.metrics.is_empty(), "rank 1 reports nothing");
        // Everything rank 0 reported (losses, evaluation) agrees, except throughput.
        let timeless = |log: &Recorded| {
            log.metrics
                .iter()
                .map(|(step, values)| {
                    let kept: Vec<_> = values
                        .iter()
                        .filter(|(name, _)| name != "train/tokens_per_s")
                        .cloned()
                        .collect();
                    (*step, kept)
                })
                .collect::<Vec<_>>()
        };
        assert!(!log_tcp.metrics.is_empty());
        assert_eq!(timeless(&log_tcp), timeless(&log_threads));
        let a = Model::load(&dir_threads.path().join("model"), &Device::Cpu).unwrap();
        let b = Model::load(&dir_tcp.path().join("model"), &Device::Cpu).unwrap();
        for ((name, x), (_, y)) in tensors(&a).iter().zip(tensors(&b)) {
            assert_eq!(x, &y, "{name} differs between TCP and in-process ranks");
        }
        let losses = |log: &Recorded| {
            log.losses
                .iter()
                .map(|(_, l)| l.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(losses(&log_tcp), losses(&log_threads));
    }
}
