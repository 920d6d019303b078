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
mod tests {
    use super::*;
    use crate::tokenizer::BYTE_VOCAB_SIZE;

    const V: usize = BYTE_VOCAB_SIZE;

    /// Fixed bigram logits over the byte vocabulary: the logit of `next` after `prev`.
    /// A few pairs are boosted so that some continuations are clearly likelier.
    fn bigram_logit(prev: usize, next: usize) -> f32 {
        let base = ((prev * 7 + next * 13) % 11) as f32 * 0.3;
        let boost = match (prev as u8, next as u8) {
            (b' ', b'a') => 4.0,
            (b'a', b'b') => 2.0,
            (b'b', b'c') => 1.5,
            (b'=', b' ') => 3.0,
            (b' ', b'x') => 3.5,
            _ => 0.0,
        };
        base + if prev < 256 && next < 256 { boost } else { 0.0 }
    }

    /// A model whose logits at position t depend only on the id at t.
    struct Bigram {
        table: Tensor,
        max_len: usize,
        device: Device,
    }

    impl Bigram {
        fn new(max_len: usize) -> Self {
            let mut values = Vec::with_capacity(V * V);
            for prev in 0..V {
                for next in 0..V {
                    values.push(bigram_logit(prev, next));
                }
            }
            let device = Device::Cpu;
            let table = Tensor::from_vec(values, (V, V), &device).unwrap();
            Bigram {
                table,
                max_len,
                device,
            }
        }
    }

    impl LanguageModel for Bigram {
        fn logits(&self, ids: &Tensor) -> Result<Tensor> {
            let (batch, seq) = ids.dims2()?;
            let rows = self.table.index_select(&ids.flatten_all()?, 0)?;
            Ok(rows.reshape((batch, seq, V))?)
        }
        fn device(&self) -> &Device {
            &self.device
        }
        fn max_len(&self) -> usize {
            self.max_len
        }
    }

    /// log p(next | prev) computed directly in f64, independently of candle.
    fn log_prob(prev: u32, next: u32) -> f64 {
        let logits: Vec<f64> = (0..V)
            .map(|j| f64::from(bigram_logit(prev as usize, j)))
            .collect();
        let top = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let log_z = top + logits.iter().map(|l| (l - top).exp()).sum::<f64>().ln();
        logits[next as usize] - log_z
    }

    /// The log-likelihood of `continuation` after `context` under the byte tokenizer
    /// and the bigram model, by an explicit loop over positions.
    fn reference_ll(context: &str, continuation: &str) -> f64 {
        let mut tokens: Vec<u32> = context.bytes().map(u32::from).collect();
        if tokens.is_empty() {
            tokens.push(crate::tokenizer::BYTE_EOS);
        }
        let first = tokens.len();
        tokens.extend(continuation.bytes().map(u32::from));
        (first..tokens.len())
            .map(|t| log_prob(tokens[t - 1], tokens[t]))
            .sum()
    }

    fn item(context: &str, choices: &[&str], gold: Gold) -> McItem {
        McItem {
            context: context.to_string(),
            choices: choices.iter().map(|c| c.to_string()).collect(),
            gold,
        }
    }

    #[test]
    fn scores_match_hand_computed_values() {
        let items = vec![
            // Short "x" against long "abcabc": raw ll favours the short choice, per-char ll
            // the long one.
            item("2+2=", &["x", "abcabc", "qz"], Gold::Index(1)),
            item("Q: pick\nA:", &["ab", "zq", "x"], Gold::Index(0)),
            item(
                "mc2 item",
                &["ab", "qq", "x", "zzz"],
                Gold::Labels(vec![true, false, true, false]),
            ),
        ];
        let mut task = Task::new("hand", items.clone(), Vec::new());
        task.primary = PrimaryMetric::AccNorm;
        let model = Bigram::new(64);
        let tok = Tokenizer::byte();
        let scores = evaluate(&model, &tok, &task, Scoring::default()).unwrap();

        let mut expected_acc = Vec::new();
        let mut expected_norm = Vec::new();
        let mut expected_mc2 = Vec::new();
        for item in &items {
            let lls: Vec<f64> = item
                .choices
                .iter()
                .map(|c| reference_ll(&item.context, &format!(" {c}")))
                .collect();
            let pick = argmax(&lls);
            let per_char: Vec<f64> = lls
                .iter()
                .zip(&item.choices)
                .map(|(ll, c)| ll / c.len() as f64)
                .collect();
            let pick_norm = argmax(&per_char);
            expected_acc.push(f64::from(u8::from(item.is_correct(pick))));
            expected_norm.push(f64::from(u8::from(item.is_correct(pick_norm))));
            let true_mass: f64 = lls
                .iter()
                .enumerate()
                .filter(|(i, _)| item.is_correct(*i))
                .map(|(_, ll)| ll.exp())
                .sum();
            expected_mc2.push(true_mass / lls.iter().map(|ll| ll.exp()).sum::<f64>());
        }
        // The first item really separates acc from acc_norm.
        assert_eq!((expected_acc[0], expected_norm[0]), (0.0, 1.0));

        let close = |a: f64, b: f64| (a - b).abs() < 1e-4;
        assert!(
            close(scores.acc, mean(&expected_acc)),
            "{scores:?} {expected_acc:?}"
        );
        assert!(
            close(scores.acc_norm, mean(&expected_norm)),
            "{scores:?} {expected_norm:?}"
        );
        assert!(
            close(scores.mc2.unwrap(), mean(&expected_mc2)),
            "{scores:?} {expected_mc2:?}"
        );
        assert!(close(scores.primary, scores.acc_norm));
        assert!(close(scores.acc_stderr, stderr_of_mean(&expected_acc)));
        assert_eq!((scores.n, scores.shots), (3, 0));
        assert!(expected_mc2[2] > 0.0 && expected_mc2[2] < 1.0);

        // loglikelihoods itself agrees with the reference loop, request by request.
        let requests: Vec<(String, String)> = items
            .iter()
            .flat_map(|item| {
                item.choices
                    .iter()
                    .map(|c| (item.context.clone(), format!(" {c}")))
            })
            .collect();
        let lls = loglikelihoods(&model, &tok, SpecialTokens::Tokenizer, &requests).unwrap();
        for ((context, continuation), ll) in requests.iter().zip(lls) {
            assert!(
                close(ll.loglikelihood, reference_ll(context, continuation)),
                "{context:?} {continuation:?}"
            );
        }
    }

    const DEFAULT: SpecialTokens = SpecialTokens::Tokenizer;

    fn tiny_hf_tokenizer() -> Tokenizer {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(crate::tokenizer::TOKENIZER_FILE),
            crate::tokenizer::tests::TINY_TOKENIZER_JSON,
        )
        .unwrap();
        Tokenizer::for_model_dir(dir.path()).unwrap()
    }

    #[test]
    fn trailing_whitespace_moves_to_the_continuation() {
        let tok = Tokenizer::byte();
        let (context, continuation) = encode_pair(&tok, DEFAULT, "Answer: \n", "B").unwrap();
        assert_eq!(context, b"Answer:".map(u32::from).to_vec());
        assert_eq!(continuation, b" \nB".map(u32::from).to_vec());

        let hf = tiny_hf_tokenizer();
        let (context, continuation) =
            encode_pair(&hf, SpecialTokens::None, "the cat ", "sat").unwrap();
        assert_eq!((context, continuation), (vec![3, 4], vec![5]));
    }

    #[test]
    fn a_bos_adding_tokenizer_puts_bos_before_every_prompt() {
        let hf = tiny_hf_tokenizer();
        // lm-eval 0.4.13: context and whole text both get the tokenizer's BOS, and the
        // continuation is what follows the context's token count.
        let (context, continuation) = encode_pair(&hf, DEFAULT, "the cat ", "sat").unwrap();
        assert_eq!((context, continuation), (vec![1, 3, 4], vec![5]));
        let prepared = prepare(&hf, DEFAULT, 16, "the cat", " sat on").unwrap();
        assert_eq!(prepared.input, vec![1, 3, 4, 5]);
        assert_eq!(prepared.continuation, vec![5, 6]);
        // Left truncation drops BOS first, as lm-eval's does.
        let prepared = prepare(&hf, DEFAULT, 2, "the cat", " sat").unwrap();
        assert_eq!(prepared.input, vec![3, 4]);
        // The older encoding stays available.
        let prepared = prepare(&hf, SpecialTokens::None, 16, "the cat", " sat on").unwrap();
        assert_eq!(prepared.input, vec![3, 4, 5]);
        // The byte tokenizer has no special tokens of its own to add.
        let (context, _) = encode_pair(&Tokenizer::byte(), DEFAULT, "ab", "c").unwrap();
        assert_eq!(context, vec![97, 98]);
    }

    #[test]
    fn special_tokens_parse_and_print() {
        for name in SpecialTokens::NAMES {
            let parsed: SpecialTokens = name.parse().unwrap();
            assert_eq!(parsed.to_string(), name);
        }
        let error = "bos".parse::<SpecialTokens>().unwrap_err().to_string();
        assert!(
            error.contains("special_tokens") && error.contains("tokenizer, none"),
            "{error}"
        );
    }

    #[test]
    fn trailing_separators_move_as_python_rstrip_moves_them() {
        let tok = Tokenizer::byte();
        // Python: "Q:\x1c\x1f ".rstrip() == "Q:"
        let (context, continuation) = encode_pair(&tok, DEFAULT, "Q:\u{1c}\u{1f} ", "A").unwrap();
        assert_eq!(context, b"Q:".map(u32::from).to_vec());
        assert_eq!(continuation, b"\x1c\x1f A".map(u32::from).to_vec());
        assert_eq!(python_rstrip("a\u{a0}\u{2003}\u{1e}"), "a");
        assert_eq!(
            python_rstrip("a\u{1b}"),
            "a\u{1b}",
            "U+001B is not whitespace"
        );
    }

    #[test]
    fn a_whitespace_only_context_is_refused_naming_the_item() {
        let tok = Tokenizer::byte();
        let error = encode_pair(&tok, DEFAULT, " \n", "B")
            .unwrap_err()
            .to_string();
        assert!(error.contains("is only whitespace"), "{error}");
        assert!(error.contains("\"B\""), "{error}");
        let model = Bigram::new(16);
        let requests = [
            ("Q: ".to_string(), "A".to_string()),
            ("  ".to_string(), "B".to_string()),
        ];
        assert!(loglikelihoods(&model, &tok, DEFAULT, &requests).is_err());
    }

    #[test]
    fn empty_context_is_prefixed_with_bos_when_the_tokenizer_has_one() {
        let tok = Tokenizer::byte();
        let (context, continuation) = encode_pair(&tok, DEFAULT, "", "ab").unwrap();
        assert_eq!((context, continuation), (vec![256], vec![97, 98]));
        let prepared = prepare(&tok, DEFAULT, 16, "", "ab").unwrap();
        assert_eq!(prepared.input, vec![256, 97]);
        let model = Bigram::new(16);
        let requests = [(String::new(), "ab".to_string())];
        let ll = loglikelihoods(&model, &tok, DEFAULT, &requests).unwrap();
        let expected = log_prob(256, 97) + log_prob(97, 98);
        assert!((ll[0].loglikelihood - expected).abs() < 1e-4);

        let hf = tiny_hf_tokenizer();
        // The continuation is encoded without special tokens after the BOS prefix...
        let pair = encode_pair(&hf, DEFAULT, "", "the cat").unwrap();
        assert_eq!(pair, (vec![1], vec![3, 4]));
        // ...and one that already starts with BOS lends its own BOS as the context.
        let pair = encode_pair(&hf, DEFAULT, "", "<s> cat").unwrap();
        assert_eq!(pair, (vec![1], vec![4]));
    }

    #[test]
    fn empty_context_falls_back_to_eos_without_bos_and_in_the_older_encoding() {
        let tok = Tokenizer::byte();
        let pair = encode_pair(&tok, SpecialTokens::None, "", "ab").unwrap();
        assert_eq!(pair, (vec![257], vec![97, 98]));
        let model = Bigram::new(16);
        let requests = [(String::new(), "ab".to_string())];
        let ll = loglikelihoods(&model, &tok, SpecialTokens::None, &requests).unwrap();
        assert!((ll[0].loglikelihood - reference_ll("", "ab")).abs() < 1e-4);

        let no_bos = crate::tokenizer::tests::tokenizer_without_bos();
        assert_eq!(no_bos.bos_id(), None);
        let pair = encode_pair(&no_bos, DEFAULT, "", "the cat").unwrap();
        assert_eq!(pair, (vec![2], vec![3, 4]));
        // EOS is only lent by the continuation under the 0.4.13 rule.
        let pair = encode_pair(&no_bos, DEFAULT, "", "</s> cat").unwrap();
        assert_eq!(pair, (vec![2], vec![4]));
    }

    #[test]
    fn long_requests_are_left_truncated() {
        let tok = Tokenizer::byte();
        let prepared = prepare(&tok, DEFAULT, 4, "abcdef", "gh").unwrap();
        // whole = abcdefgh; keep the last 5 tokens (defgh) and drop the final one.
        assert_eq!(prepared.input, b"defg".map(u32::from).to_vec());
        assert_eq!(prepared.continuation, b"gh".map(u32::from).to_vec());
        let model = Bigram::new(4);
        let requests = [("abcdef".into(), "gh".into())];
        let ll = loglikelihoods(&model, &tok, DEFAULT, &requests).unwrap();
        assert!((ll[0].loglikelihood - reference_ll("abcdef", "gh")).abs() < 1e-4);
        assert!(prepare(&tok, DEFAULT, 4, "a", "bcdef").is_err());
    }

    #[test]
    fn batching_does_not_change_scores() {
        let tok = Tokenizer::byte();
        let model = Bigram::new(512);
        let requests: Vec<(String, String)> = (0..150)
            .map(|i| {
                (
                    "q".repeat(1 + i % 70),
                    format!(" {}", "ab".repeat(1 + i % 5)),
                )
            })
            .collect();
        let lls = loglikelihoods(&model, &tok, DEFAULT, &requests).unwrap();
        for ((context, continuation), ll) in requests.iter().zip(lls) {
            assert!((ll.loglikelihood - reference_ll(context, continuation)).abs() < 1e-3);
        }
    }

    /// Whether greedy decoding after `context` yields `continuation`, by the reference
    /// bigram probabilities (ties go to the lowest id, as argmax does).
    fn reference_greedy(context: &str, continuation: &str) -> bool {
        let mut tokens: Vec<u32> = context.bytes().map(u32::from).collect();
        let first = tokens.len();
        tokens.extend(continuation.bytes().map(u32::from));
        (first..tokens.len()).all(|t| {
            let scores: Vec<f64> = (0..V as u32).map(|j| log_prob(tokens[t - 1], j)).collect();
            argmax(&scores) == tokens[t] as usize
        })
    }

    #[test]
    fn greedy_flags_match_the_reference() {
        let tok = Tokenizer::byte();
        let model = Bigram::new(64);
        let requests: Vec<(String, String)> = [
            ("=", " a"),
            ("=", " ab"),
            ("=", " x"),
            ("Q:", " zq"),
            ("2+2=", " abc"),
        ]
        .iter()
        .map(|(c, x)| (c.to_string(), x.to_string()))
        .collect();
        let scored = loglikelihoods(&model, &tok, DEFAULT, &requests).unwrap();
        let flags: Vec<bool> = scored.iter().map(|s| s.is_greedy).collect();
        let expected: Vec<bool> = requests
            .iter()
            .map(|(c, x)| reference_greedy(c, x))
            .collect();
        assert_eq!(flags, expected);
        assert!(flags.contains(&true) && flags.contains(&false), "{flags:?}");
    }

    #[test]
    fn samples_record_each_item_as_scored() {
        let items = vec![
            item("2+2=", &["x", "abcabc", "qz"], Gold::Index(1)),
            item("mc2 item", &["ab", "qq"], Gold::Labels(vec![true, false])),
        ];
        let mut task = Task::new("samples", items.clone(), Vec::new());
        task.primary = PrimaryMetric::Mc2;
        let model = Bigram::new(64);
        let tok = Tokenizer::byte();
        let (scores, samples) = evaluate_samples(&model, &tok, &task, Scoring::default()).unwrap();
        assert_eq!(samples.len(), 2);
        for (index, (sample, item)) in samples.iter().zip(&items).enumerate() {
            assert_eq!(sample.item, index);
            assert_eq!(sample.context, item.context);
            let continuations: Vec<String> = item.choices.iter().map(|c| format!(" {c}")).collect();
            assert_eq!(sample.continuations, continuations);
            let requests: Vec<(String, String)> = continuations
                .iter()
                .map(|c| (item.context.clone(), c.clone()))
                .collect();
            let direct = loglikelihoods(&model, &tok, DEFAULT, &requests).unwrap();
            for ((ll, greedy), scored) in sample
                .loglikelihoods
                .iter()
                .zip(&sample.is_greedy)
                .zip(&direct)
            {
                assert!((ll - scored.loglikelihood).abs() < 1e-9);
                assert_eq!(*greedy, scored.is_greedy);
            }
            assert_eq!(
                sample.acc,
                f64::from(u8::from(item.is_correct(argmax(&sample.loglikelihoods))))
            );
        }
        assert_eq!(samples[0].gold, serde_json::json!(1));
        assert_eq!(samples[1].gold, serde_json::json!([true, false]));
        let mean_of = |f: fn(&Sample) -> f64| samples.iter().map(f).sum::<f64>() / 2.0;
        assert_eq!(scores.acc, mean_of(|s| s.acc));
        assert_eq!(scores.acc_norm, mean_of(|s| s.acc_norm));
        assert!((scores.mc2.unwrap() - mean_of(|s| s.mc2.unwrap())).abs() < 1e-12);
        let line = serde_json::to_value(&samples[1]).unwrap();
        for key in [
            "item",
            "context",
            "continuations",
            "loglikelihoods",
            "is_greedy",
            "gold",
            "acc",
            "acc_norm",
            "mc2",
        ] {
            assert!(line.get(key).is_some(), "{key} missing from {line}");
        }
    }

    fn fewshot_task() -> Task {
        let pool: Vec<McItem> = (0..20)
            .map(|i| item(&format!("q{i}"), &["yes", "no"], Gold::Index(i % 2)))
            .collect();
        let items = vec![
            item("q3", &["yes", "no"], Gold::Index(1)),
            item("new", &["a", "b"], Gold::Index(0)),
        ];
        Task::new("shots", items, pool)
    }

    #[test]
    fn fewshot_is_reproducible_and_seed_dependent() {
        let task = fewshot_task();
        let a = fewshot_context(&task, 1, 3, 11).unwrap();
        assert_eq!(a, fewshot_context(&task, 1, 3, 11).unwrap());
        let differs = (12..20).any(|seed| fewshot_context(&task, 1, 3, seed).unwrap() != a);
        assert!(differs);
        assert!(a.ends_with("\n\nnew"));
        assert!(fewshot_context(&task, 1, 21, 0).is_err());
    }

    #[test]
    fn fewshot_never_shows_the_item_itself() {
        let task = fewshot_task();
        for seed in 0..200 {
            let prompt = fewshot_context(&task, 0, 19, seed).unwrap();
            assert_eq!(prompt.matches("q3").count(), 1, "{prompt}");
            assert!(prompt.ends_with("\n\nq3"));
        }
    }

    #[test]
    fn two_shot_prompt_renders_exactly() {
        let pool = vec![
            item("Question: 1+1?\nAnswer:", &["2", "3"], Gold::Index(0)),
            item(
                "Question: truth?\nAnswer:",
                &["a", "b", "c"],
                Gold::Labels(vec![false, true, true]),
            ),
            item(
                "Question: sky?\nAnswer:",
                &["green", "blue"],
                Gold::Index(1),
            ),
        ];
        let target = item("Question: sky?\nAnswer:", &["blue", "red"], Gold::Index(0));
        let mut task = Task::new("render", vec![target], pool);
        task.description = "About sums.\n\n".to_string();
        let prompt = fewshot_context(&task, 0, 2, 5).unwrap();
        assert_eq!(
            prompt,
            "About sums.\n\nQuestion: 1+1?\nAnswer: 2\n\nQuestion: truth?\nAnswer: b\n\nQuestion: sky?\nAnswer:"
        );
        assert_eq!(
            fewshot_context(&task, 0, 0, 5).unwrap(),
            "About sums.\n\nQuestion: sky?\nAnswer:"
        );
    }

    #[test]
    fn average_is_the_mean_of_primaries() {
        let score = |primary| TaskScores {
            task: "t".into(),
            n: 1,
            shots: 0,
            acc: 0.0,
            acc_norm: 0.0,
            mc2: None,
            primary,
            acc_stderr: 0.0,
        };
        assert!((average(&[score(0.5), score(0.25)]) - 0.375).abs() < 1e-12);
        assert_eq!(average(&[]), 0.0);
    }
}
