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
//! mass of the true choices).

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

/// Splits a (context, continuation) pair into context and continuation tokens exactly
/// like lm-eval's `HFLM._encode_pair`: trailing whitespace of the context moves to the
/// start of the continuation, the continuation's tokens are those of the whole text
/// after the context's own encoding, and no special tokens are added. An empty context
/// becomes the EOS token (lm-eval's end-of-text prefix).
pub fn encode_pair(
    tok: &Tokenizer,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    if context.is_empty() {
        let eos = tok.eos_id().ok_or_else(|| {
            TrainerError::Tokenizer(
                "scoring a continuation with an empty context needs an EOS token, and the tokenizer has none"
                    .to_string(),
            )
        })?;
        return Ok((vec![eos], tok.encode(continuation, false)?));
    }
    let kept = python_rstrip(context);
    if kept.is_empty() {
        // lm-eval's `_encode_pair` has no context tokens left to split at, and stops.
        return Err(TrainerError::Tokenizer(format!(
            "context {context:?} (before continuation {continuation:?}) is only whitespace; \
             lm-evaluation-harness refuses such an item too"
        )));
    }
    let moved = &context[kept.len()..];
    let continuation = format!("{moved}{continuation}");
    let whole = tok.encode(&format!("{kept}{continuation}"), false)?;
    let context_enc = tok.encode(kept, false)?;
    let continuation_enc = whole.get(context_enc.len()..).unwrap_or(&[]).to_vec();
    Ok((context_enc, continuation_enc))
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
fn prepare(tok: &Tokenizer, max_len: usize, context: &str, continuation: &str) -> Result<Prepared> {
    let (context_enc, continuation_enc) = encode_pair(tok, context, continuation)?;
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

/// Summed log-likelihood (natural log) of each continuation after its context, in
/// request order. Requests are scored in length-sorted, right-padded batches.
pub fn loglikelihoods(
    model: &dyn LanguageModel,
    tok: &Tokenizer,
    requests: &[(String, String)],
) -> Result<Vec<f64>> {
    let max_len = model.max_len();
    let mut prepared = Vec::with_capacity(requests.len());
    for (context, continuation) in requests {
        prepared.push(prepare(tok, max_len, context, continuation)?);
    }
    // Longest first, like lm-eval: padding stays small and an out-of-memory shows early.
    let mut order: Vec<usize> = (0..prepared.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(prepared[i].input.len()));

    let mut scores = vec![0.0; prepared.len()];
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
/// each row's summed continuation log-probability.
fn score_batch(model: &dyn LanguageModel, batch: &[&Prepared], width: usize) -> Result<Vec<f64>> {
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

    let mut scores = Vec::with_capacity(rows);
    let mut next = 0;
    for request in batch {
        let count = request.continuation.len();
        scores.push(
            token_scores[next..next + count]
                .iter()
                .map(|&s| f64::from(s))
                .sum(),
        );
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

/// Scores every item of `task` with `shots` few-shot examples (see [`fewshot_context`]).
pub fn evaluate(
    model: &dyn LanguageModel,
    tok: &Tokenizer,
    task: &Task,
    shots: usize,
    seed: u64,
) -> Result<TaskScores> {
    let mut requests = Vec::new();
    for (index, item) in task.items.iter().enumerate() {
        let context = fewshot_context(task, index, shots, seed)?;
        for choice in &item.choices {
            requests.push((
                context.clone(),
                format!("{}{choice}", task.target_delimiter),
            ));
        }
    }
    let lls = loglikelihoods(model, tok, &requests)?;

    let mut accs = Vec::with_capacity(task.items.len());
    let mut acc_norms = Vec::with_capacity(task.items.len());
    let mut mc2s = Vec::with_capacity(task.items.len());
    let mut next = 0;
    for item in &task.items {
        let item_lls = &lls[next..next + item.choices.len()];
        next += item.choices.len();
        let normalised: Vec<f64> = item_lls
            .iter()
            .zip(&item.choices)
            .map(|(ll, choice)| ll / choice.chars().count().max(1) as f64)
            .collect();
        accs.push(f64::from(u8::from(item.is_correct(argmax(item_lls)))));
        acc_norms.push(f64::from(u8::from(item.is_correct(argmax(&normalised)))));
        mc2s.push(mc2(item, item_lls));
    }

    let has_labels = task
        .items
        .iter()
        .any(|item| matches!(item.gold, Gold::Labels(_)));
    let acc = mean(&accs);
    let acc_norm = mean(&acc_norms);
    let mc2_mean = mean(&mc2s);
    let primary = match task.primary {
        PrimaryMetric::Acc => acc,
        PrimaryMetric::AccNorm => acc_norm,
        PrimaryMetric::Mc2 => mc2_mean,
    };
    Ok(TaskScores {
        task: task.name.clone(),
        n: task.items.len(),
        shots,
        acc,
        acc_norm,
        mc2: (has_labels || task.primary == PrimaryMetric::Mc2).then_some(mc2_mean),
        primary,
        acc_stderr: stderr_of_mean(&accs),
    })
}

/// Open-LLM-Leaderboard-style average of each task's primary metric (reported as
/// `eval/avg`); 0 for no tasks.
pub fn average(scores: &[TaskScores]) -> f64 {
    let primaries: Vec<f64> = scores.iter().map(|s| s.primary).collect();
    mean(&primaries)
}

/// The trainer's LLaMA model scores through its causal forward pass.
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
        let scores = evaluate(&model, &tok, &task, 0, 0).unwrap();

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
        let lls = loglikelihoods(&model, &tok, &requests).unwrap();
        for ((context, continuation), ll) in requests.iter().zip(lls) {
            assert!(
                close(ll, reference_ll(context, continuation)),
                "{context:?} {continuation:?}"
            );
        }
    }

    #[test]
    fn trailing_whitespace_moves_to_the_continuation() {
        let tok = Tokenizer::byte();
        let (context, continuation) = encode_pair(&tok, "Answer: \n", "B").unwrap();
        assert_eq!(context, b"Answer:".map(u32::from).to_vec());
        assert_eq!(continuation, b" \nB".map(u32::from).to_vec());

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(crate::tokenizer::TOKENIZER_FILE),
            crate::tokenizer::tests::TINY_TOKENIZER_JSON,
        )
        .unwrap();
        let hf = Tokenizer::for_model_dir(dir.path()).unwrap();
        // No BOS even though the tokenizer's post-processor would add one.
        let (context, continuation) = encode_pair(&hf, "the cat ", "sat").unwrap();
        assert_eq!((context, continuation), (vec![3, 4], vec![5]));
    }

    #[test]
    fn trailing_separators_move_as_python_rstrip_moves_them() {
        let tok = Tokenizer::byte();
        // Python: "Q:\x1c\x1f ".rstrip() == "Q:"
        let (context, continuation) = encode_pair(&tok, "Q:\u{1c}\u{1f} ", "A").unwrap();
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
        let error = encode_pair(&tok, " \n", "B").unwrap_err().to_string();
        assert!(error.contains("is only whitespace"), "{error}");
        assert!(error.contains("\"B\""), "{error}");
        let model = Bigram::new(16);
        let requests = [
            ("Q: ".to_string(), "A".to_string()),
            ("  ".to_string(), "B".to_string()),
        ];
        assert!(loglikelihoods(&model, &tok, &requests).is_err());
    }

    #[test]
    fn empty_context_is_prefixed_with_eos() {
        let tok = Tokenizer::byte();
        let (context, continuation) = encode_pair(&tok, "", "ab").unwrap();
        assert_eq!((context, continuation), (vec![257], vec![97, 98]));
        let prepared = prepare(&tok, 16, "", "ab").unwrap();
        assert_eq!(prepared.input, vec![257, 97]);
        let model = Bigram::new(16);
        let ll = loglikelihoods(&model, &tok, &[(String::new(), "ab".to_string())]).unwrap();
        assert!((ll[0] - reference_ll("", "ab")).abs() < 1e-4);
    }

    #[test]
    fn long_requests_are_left_truncated() {
        let tok = Tokenizer::byte();
        let prepared = prepare(&tok, 4, "abcdef", "gh").unwrap();
        // whole = abcdefgh; keep the last 5 tokens (defgh) and drop the final one.
        assert_eq!(prepared.input, b"defg".map(u32::from).to_vec());
        assert_eq!(prepared.continuation, b"gh".map(u32::from).to_vec());
        let model = Bigram::new(4);
        let ll = loglikelihoods(&model, &tok, &[("abcdef".into(), "gh".into())]).unwrap();
        assert!((ll[0] - reference_ll("abcdef", "gh")).abs() < 1e-4);
        assert!(prepare(&tok, 4, "a", "bcdef").is_err());
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
        let lls = loglikelihoods(&model, &tok, &requests).unwrap();
        for ((context, continuation), ll) in requests.iter().zip(lls) {
            assert!((ll - reference_ll(context, continuation)).abs() < 1e-3);
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
