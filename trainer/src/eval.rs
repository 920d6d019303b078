//! Multiple-choice scoring that reproduces lm-evaluation-harness's `multiple_choice`
//! output type, so ladder's numbers sit next to Open LLM Leaderboard figures.
//!
//! [`evaluate`] renders each item's prompt ([`fewshot_context`]: description, few-shot
//! examples, the item's context), turns every choice into a (context,
//! target_delimiter + choice) request, and asks [`loglikelihoods`] for the summed
//! log-probability of each continuation. The requests of many items go through the
//! model together, longest first, right-padded into batches of bounded token count.
//! Per item it then takes acc (argmax log-likelihood is right), acc_norm (argmax of
//! log-likelihood divided by the choice's length in characters, delimiter excluded, as
//! lm-eval's `process_results` does) and, for labelled items, mc2 (the probability
//! mass of the true choices); [`evaluate_samples`] also returns one [`Sample`] per item
//! (what `ladder eval --log-samples` writes).
//!
//! Prompts are encoded as [`encode_pair`] describes, with the special tokens
//! [`SpecialTokens`] selects: by default the tokenizer's own, as lm-evaluation-harness
//! 0.4.13 does.

use candle_core::{DType, Device, Tensor, D};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Result, TrainerError};
use crate::tasks::{Gold, McItem, PrimaryMetric, Task};
use crate::tokenizer::Tokenizer;

/// Upper bound on (rows × padded length) of one scoring forward pass; bounds the logits
/// tensor to about this many × vocab floats.
const BATCH_TOKENS: usize = 8192;
/// Upper bound on rows in one scoring forward pass.
const MAX_BATCH_ROWS: usize = 64;

/// What scoring needs from a model: next-token logits for a batch of token ids.
pub trait LanguageModel {
    /// Maps (batch, seq) u32 ids to (batch, seq, vocab) logits (any float dtype).
    /// Position `t` must depend only on ids `..=t` (causal), so right padding is inert.
    fn logits(&self, ids: &Tensor) -> Result<Tensor>;
    /// The device ids must be on.
    fn device(&self) -> &Device;
    /// The longest input the model accepts; longer requests are left-truncated.
    fn max_len(&self) -> usize;
}

/// Which special tokens prompts are encoded with.
///
/// [`SpecialTokens::Tokenizer`] is lm-evaluation-harness 0.4.13's default for Hugging
/// Face models: the tokenizer adds its own special tokens (a LLaMA-family tokenizer puts
/// BOS before every prompt, a GPT-2-style one adds nothing), and an empty context is
/// replaced by BOS when the tokenizer has one, else by EOS. [`SpecialTokens::None`] is
/// the behaviour of earlier harness versions (and of ladder before it followed 0.4.13):
/// no special tokens at all and EOS for an empty context; it exists to compare with
/// numbers published under those versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpecialTokens {
    /// The tokenizer's own special tokens (lm-evaluation-harness 0.4.13).
    #[default]
    Tokenizer,
    /// No special tokens; EOS before an empty context (older harness versions).
    None,
}

impl SpecialTokens {
    /// The names accepted by `SpecialTokens::from_str`, in the order documented.
    pub const NAMES: [&'static str; 2] = ["tokenizer", "none"];
}

impl std::fmt::Display for SpecialTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SpecialTokens::Tokenizer => "tokenizer",
            SpecialTokens::None => "none",
        })
    }
}

impl std::str::FromStr for SpecialTokens {
    type Err = TrainerError;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "tokenizer" => Ok(SpecialTokens::Tokenizer),
            "none" => Ok(SpecialTokens::None),
            other => Err(TrainerError::config(
                "special_tokens",
                format!(
                    "unknown value {other:?} (expected one of: {})",
                    SpecialTokens::NAMES.join(", ")
                ),
            )),
        }
    }
}

/// Splits a (context, continuation) pair into context and continuation tokens exactly
/// like lm-eval's `TemplateLM._encode_pair` and `loglikelihood`: trailing whitespace of
/// the context moves to the start of the continuation; the context and the whole text
/// are encoded (with the special tokens `special` asks for) and the continuation's
/// tokens are those of the whole text after the context's token count.
///
/// An empty context becomes one prefix token before the continuation, which is encoded
/// without special tokens: under [`SpecialTokens::Tokenizer`] the prefix is BOS when
/// the tokenizer has one and EOS otherwise, and when the continuation's own first token
/// already is that prefix, that token becomes the context instead of being repeated;
/// under [`SpecialTokens::None`] the prefix is always EOS.
pub fn encode_pair(
    tok: &Tokenizer,
    special: SpecialTokens,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    if context.is_empty() {
        return encode_without_context(tok, special, continuation);
    }
    let kept = python_rstrip(context);
    if kept.is_empty() {
        // lm-eval's `_encode_pair` has no context tokens left to split at, and stops.
        return Err(TrainerError::Tokenizer(format!(
            "context {context:?} (before continuation {continuation:?}) is only whitespace; \
             lm-evaluation-harness refuses such an item too"
        )));
    }
    let add_special = special == SpecialTokens::Tokenizer;
    let moved = &context[kept.len()..];
    let continuation = format!("{moved}{continuation}");
    let whole = tok.encode(&format!("{kept}{continuation}"), add_special)?;
    let context_enc = tok.encode(kept, add_special)?;
    let continuation_enc = whole.get(context_enc.len()..).unwrap_or(&[]).to_vec();
    Ok((context_enc, continuation_enc))
}

/// The empty-context case of [`encode_pair`].
fn encode_without_context(
    tok: &Tokenizer,
    special: SpecialTokens,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let continuation_enc = tok.encode(continuation, false)?;
    let prefix = match special {
        SpecialTokens::Tokenizer => tok.bos_id().or_else(|| tok.eos_id()),
        SpecialTokens::None => tok.eos_id(),
    };
    let Some(prefix) = prefix else {
        let needed = match special {
            SpecialTokens::Tokenizer => "a BOS or EOS token",
            SpecialTokens::None => "an EOS token",
        };
        return Err(TrainerError::Tokenizer(format!(
            "scoring continuation {continuation:?} after an empty context needs {needed}, \
             and the tokenizer has none"
        )));
    };
    if special == SpecialTokens::Tokenizer && continuation_enc.first() == Some(&prefix) {
        let (first, rest) = continuation_enc.split_at(1);
        return Ok((first.to_vec(), rest.to_vec()));
    }
    Ok((vec![prefix], continuation_enc))
}

/// `text` without trailing whitespace as Python's `str.rstrip()` sees it: Rust's
/// `char::is_whitespace` plus the separators U+001C–U+001F, which Python counts as
/// whitespace too.
fn python_rstrip(text: &str) -> &str {
    text.trim_end_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// One request ready for the model: the input ids and the continuation ids that its
/// last `continuation.len()` positions predict.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Prepared {
    input: Vec<u32>,
    continuation: Vec<u32>,
}

/// Encodes a request and applies lm-eval's truncation:
/// `input = (context_enc + continuation_enc)[-(max_len + 1):][:-1]`.
fn prepare(
    tok: &Tokenizer,
    special: SpecialTokens,
    max_len: usize,
    context: &str,
    continuation: &str,
) -> Result<Prepared> {
    let (context_enc, continuation_enc) = encode_pair(tok, special, context, continuation)?;
    if continuation_enc.is_empty() {
        return Err(TrainerError::Tokenizer(format!(
            "continuation {continuation:?} of context {context:?} encodes to no tokens"
        )));
    }
    if continuation_enc.len() > max_len {
        return Err(TrainerError::Tokenizer(format!(
            "continuation {continuation:?} is {} tokens, longer than the model's {max_len}",
            continuation_enc.len()
        )));
    }
    let mut tokens = context_enc;
    tokens.extend_from_slice(&continuation_enc);
    let start = tokens.len().saturating_sub(max_len + 1);
    let input = tokens[start..tokens.len() - 1].to_vec();
    Ok(Prepared {
        input,
        continuation: continuation_enc,
    })
}

/// What the model says about one continuation, as lm-eval's `loglikelihood` returns it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Likelihood {
    /// Summed log-probability (natural log) of the continuation's tokens.
    pub loglikelihood: f64,
    /// Whether every continuation token is the model's most likely next token (greedy
    /// decoding would have produced the continuation).
    pub is_greedy: bool,
}

/// The [`Likelihood`] of each continuation after its context, in request order, with
/// prompts encoded as `special` says. Requests are scored in length-sorted,
/// right-padded batches.
pub fn loglikelihoods(
    model: &dyn LanguageModel,
    tok: &Tokenizer,
    special: SpecialTokens,
    requests: &[(String, String)],
) -> Result<Vec<Likelihood>> {
    let max_len = model.max_len();
    let mut prepared = Vec::with_capacity(requests.len());
    for (context, continuation) in requests {
        prepared.push(prepare(tok, special, max_len, context, continuation)?);
    }
    // Longest first, like lm-eval: padding stays small and an out-of-memory shows early.
    let mut order: Vec<usize> = (0..prepared.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(prepared[i].input.len()));

    let mut scores = vec![
        Likelihood {
            loglikelihood: 0.0,
            is_greedy: false,
        };
        prepared.len()
    ];
    let mut start = 0;
    while start < order.len() {
        let width = prepared[order[start]].input.len();
        let rows = (BATCH_TOKENS / width.max(1)).clamp(1, MAX_BATCH_ROWS);
        let end = (start + rows).min(order.len());
        let batch: Vec<&Prepared> = order[start..end].iter().map(|&i| &prepared[i]).collect();
        let batch_scores = score_batch(model, &batch, width)?;
        for (&index, score) in order[start..end].iter().zip(batch_scores) {
            scores[index] = score;
        }
        start = end;
    }
    Ok(scores)
}

/// One forward pass over right-padded `batch` (all inputs at most `width` long); returns
/// each row's summed continuation log-probability and greedy flag.
fn score_batch(
    model: &dyn LanguageModel,
    batch: &[&Prepared],
    width: usize,
) -> Result<Vec<Likelihood>> {
    let rows = batch.len();
    let mut ids = vec![0u32; rows * width];
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    for (row, request) in batch.iter().enumerate() {
        let input_len = request.input.len();
        debug_assert!(input_len <= width && request.continuation.len() <= input_len);
        ids[row * width..row * width + input_len].copy_from_slice(&request.input);
        let first = input_len - request.continuation.len();
        for (offset, &target) in request.continuation.iter().enumerate() {
            positions.push((row * width + first + offset) as u32);
            targets.push(target);
        }
    }
    let device = model.device();
    let ids = Tensor::from_vec(ids, (rows, width), device)?;
    let logits = model.logits(&ids)?;
    let vocab = logits.dim(D::Minus1)?;
    let flat = logits.reshape((rows * width, vocab))?;
    let positions = Tensor::from_vec(positions, targets.len(), device)?;
    let picked = flat.index_select(&positions, 0)?.to_dtype(DType::F32)?;
    let log_probs = candle_nn::ops::log_softmax(&picked, D::Minus1)?;
    let target_ids = Tensor::from_vec(targets.clone(), (targets.len(), 1), device)?;
    let token_scores = log_probs
        .gather(&target_ids, 1)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let greedy_ids = log_probs.argmax(D::Minus1)?.to_vec1::<u32>()?;

    let mut scores = Vec::with_capacity(rows);
    let mut next = 0;
    for request in batch {
        let count = request.continuation.len();
        let span = next..next + count;
        scores.push(Likelihood {
            loglikelihood: token_scores[span.clone()]
                .iter()
                .map(|&s| f64::from(s))
                .sum(),
            is_greedy: greedy_ids[span.clone()] == targets[span],
        });
        next += count;
    }
    Ok(scores)
}

/// The prompt for item `item_index` of `task` with `shots` few-shot examples, rendered
/// like lm-eval: `description + shot₁ + fewshot_delimiter + … + shotₙ + fewshot_delimiter
/// + context`, each shot being `context + target_delimiter + gold choice`.
///
/// Shots are drawn without replacement from the few-shot pool, skipping any pool item
/// with the scored item's context, by a ChaCha8 generator seeded with `seed` on stream
/// `item_index`: the same (seed, item) always gets the same shots, in pool order.
pub fn fewshot_context(task: &Task, item_index: usize, shots: usize, seed: u64) -> Result<String> {
    let item = task.items.get(item_index).ok_or_else(|| {
        TrainerError::config("item", format!("{} has no item {item_index}", task.name))
    })?;
    let mut prompt = task.description.clone();
    if shots > 0 {
        let candidates: Vec<&McItem> = task
            .fewshot_pool
            .iter()
            .filter(|candidate| candidate.context != item.context)
            .collect();
        if shots > candidates.len() {
            return Err(TrainerError::config(
                "shots",
                format!(
                    "{} shots asked for but task {} has {} few-shot examples for this item",
                    shots,
                    task.name,
                    candidates.len()
                ),
            ));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(item_index as u64);
        let mut picked = rand::seq::index::sample(&mut rng, candidates.len(), shots).into_vec();
        picked.sort_unstable();
        for index in picked {
            let shot = candidates[index];
            prompt.push_str(&shot.context);
            prompt.push_str(&task.target_delimiter);
            prompt.push_str(shot.gold_choice());
            prompt.push_str(&task.fewshot_delimiter);
        }
    }
    prompt.push_str(&item.context);
    Ok(prompt)
}

/// One task's scores. `acc`, `acc_norm` and `mc2` are means over the `n` items;
/// `mc2` is present only for tasks with labelled items or an mc2 primary metric.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TaskScores {
    pub task: String,
    pub n: usize,
    pub shots: usize,
    pub acc: f64,
    pub acc_norm: f64,
    pub mc2: Option<f64>,
    /// The task's primary metric (`acc`, `acc_norm` or `mc2`).
    pub primary: f64,
    /// Sample standard error of the `acc` mean (`sqrt(var / n)` with `n - 1` in var).
    pub acc_stderr: f64,
}

/// Index of the first maximum, like `np.argmax`.
fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (index, &value) in values.iter().enumerate() {
        if value > values[best] {
            best = index;
        }
    }
    best
}

/// TruthfulQA's mc2: the share of probability mass on the true choices,
/// `Σ_true exp(ll) / Σ_all exp(ll)`, computed relative to the largest ll so it cannot
/// underflow.
fn mc2(item: &McItem, lls: &[f64]) -> f64 {
    let top = lls.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut true_mass = 0.0;
    let mut total_mass = 0.0;
    for (index, &ll) in lls.iter().enumerate() {
        let mass = (ll - top).exp();
        total_mass += mass;
        if item.is_correct(index) {
            true_mass += mass;
        }
    }
    true_mass / total_mass
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// Sample standard error of the mean: sample standard deviation (n - 1) over sqrt(n).
fn stderr_of_mean(values: &[f64]) -> f64 {
    let n = values.len();
    if n < 2 {
        return 0.0;
    }
    let mu = mean(values);
    let variance = values.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / (n - 1) as f64;
    (variance / n as f64).sqrt()
}

/// How a task is scored: few-shot examples per item, the seed that picks them, and the
/// special tokens prompts are encoded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scoring {
    pub shots: usize,
    pub seed: u64,
    pub special_tokens: SpecialTokens,
}

/// One scored item, the record `ladder eval --log-samples` writes (lm-eval's
/// `--log_samples` equivalent): the rendered prompt, each choice's log-likelihood and
/// greedy flag, the gold answer and the item's metrics.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Sample {
    /// Index of the item within the task (after `--limit`).
    pub item: usize,
    /// The prompt the choices were scored after (description and few-shot examples
    /// included).
    pub context: String,
    /// Each choice as scored: the target delimiter followed by the choice.
    pub continuations: Vec<String>,
    pub loglikelihoods: Vec<f64>,
    pub is_greedy: Vec<bool>,
    /// The right choice's index, or (mc2 items) one flag per choice.
    pub gold: serde_json::Value,
    pub acc: f64,
    pub acc_norm: f64,
    /// Present for tasks that report mc2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mc2: Option<f64>,
}

/// Scores every item of `task` (see [`evaluate_samples`]).
pub fn evaluate(
    model: &dyn LanguageModel,
    tok: &Tokenizer,
    task: &Task,
    scoring: Scoring,
) -> Result<TaskScores> {
    Ok(evaluate_samples(model, tok, task, scoring)?.0)
}

/// Scores every item of `task` with `scoring.shots` few-shot examples (see
/// [`fewshot_context`]) and returns the task's scores with one [`Sample`] per item.
pub fn evaluate_samples(
    model: &dyn LanguageModel,
    tok: &Tokenizer,
    task: &Task,
    scoring: Scoring,
) -> Result<(TaskScores, Vec<Sample>)> {
    let mut contexts = Vec::with_capacity(task.items.len());
    let mut requests = Vec::new();
    for (index, item) in task.items.iter().enumerate() {
        let context = fewshot_context(task, index, scoring.shots, scoring.seed)?;
        for choice in &item.choices {
            requests.push((
                context.clone(),
                format!("{}{choice}", task.target_delimiter),
            ));
        }
        contexts.push(context);
    }
    let likelihoods = loglikelihoods(model, tok, scoring.special_tokens, &requests)?;

    let has_labels = task
        .items
        .iter()
        .any(|item| matches!(item.gold, Gold::Labels(_)));
    let reports_mc2 = has_labels || task.primary == PrimaryMetric::Mc2;
    let mut accs = Vec::with_capacity(task.items.len());
    let mut acc_norms = Vec::with_capacity(task.items.len());
    let mut mc2s = Vec::with_capacity(task.items.len());
    let mut samples = Vec::with_capacity(task.items.len());
    let mut next = 0;
    for ((index, item), context) in task.items.iter().enumerate().zip(contexts) {
        let span = next..next + item.choices.len();
        next = span.end;
        let item_lls: Vec<f64> = likelihoods[span.clone()]
            .iter()
            .map(|l| l.loglikelihood)
            .collect();
        let normalised: Vec<f64> = item_lls
            .iter()
            .zip(&item.choices)
            .map(|(ll, choice)| ll / choice.chars().count().max(1) as f64)
            .collect();
        let acc = f64::from(u8::from(item.is_correct(argmax(&item_lls))));
        let acc_norm = f64::from(u8::from(item.is_correct(argmax(&normalised))));
        let item_mc2 = mc2(item, &item_lls);
        accs.push(acc);
        acc_norms.push(acc_norm);
        mc2s.push(item_mc2);
        samples.push(Sample {
            item: index,
            context,
            continuations: requests[span.clone()]
                .iter()
                .map(|(_, continuation)| continuation.clone())
                .collect(),
            loglikelihoods: item_lls,
            is_greedy: likelihoods[span].iter().map(|l| l.is_greedy).collect(),
            gold: match &item.gold {
                Gold::Index(gold) => serde_json::json!(gold),
                Gold::Labels(labels) => serde_json::json!(labels),
            },
            acc,
            acc_norm,
            mc2: reports_mc2.then_some(item_mc2),
        });
    }

    let acc = mean(&accs);
    let acc_norm = mean(&acc_norms);
    let mc2_mean = mean(&mc2s);
    let primary = match task.primary {
        PrimaryMetric::Acc => acc,
        PrimaryMetric::AccNorm => acc_norm,
        PrimaryMetric::Mc2 => mc2_mean,
    };
    let scores = TaskScores {
        task: task.name.clone(),
        n: task.items.len(),
        shots: scoring.shots,
        acc,
        acc_norm,
        mc2: reports_mc2.then_some(mc2_mean),
        primary,
        acc_stderr: stderr_of_mean(&accs),
    };
    Ok((scores, samples))
}

/// Open-LLM-Leaderboard-style average of each task's primary metric (reported as
/// `eval/avg`); 0 for no tasks.
pub fn average(scores: &[TaskScores]) -> f64 {
    let primaries: Vec<f64> = scores.iter().map(|s| s.primary).collect();
    mean(&primaries)
}

/// The trainer's LLaMA-family model scores through its causal forward pass.
impl LanguageModel for crate::model::Model {
    fn logits(&self, ids: &Tensor) -> Result<Tensor> {
        self.forward(ids)
    }
    fn device(&self) -> &Device {
        crate::model::Model::device(self)
    }
    fn max_len(&self) -> usize {
        self.config().max_position_embeddings
    }
}

#[cfg(test)]
mod tests;
