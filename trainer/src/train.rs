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
        // Scheduled evaluation follows lm-evaluation-harness 0.4.13's encoding.
        let scoring = eval::Scoring {
            shots: *shots,
            seed,
            special_tokens: eval::SpecialTokens::Tokenizer,
        };
        let score = eval::evaluate(model as &dyn LanguageModel, tokenizer, task, scoring)?;
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

mod checkpoint;
mod report;
mod setup;

pub use crate::collective::{Collective, SingleRank};
use checkpoint::*;
pub use report::*;
pub use setup::*;

#[cfg(test)]
mod tests;
