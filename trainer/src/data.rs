//! Training data: examples from JSONL files or a built-in synthetic task, tokenized and
//! packed into fixed-length sequences with a loss mask, served in a seeded order that
//! depends only on `(seed, step)` so a resumed run sees exactly the batches it would have.

use std::path::Path;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::synthetic::{self, Example, Split};
use crate::tokenizer::Tokenizer;
use crate::{Result, TrainerError};

/// Reads a JSONL file of `{"text": ...}` or `{"prompt": ..., "completion": ...}` lines.
/// Blank lines are skipped; any other malformed line is an error naming `file:line`.
pub fn read_jsonl(path: &Path) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))?;
    let mut examples = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let location = format!("{}:{}", path.display(), index + 1);
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| TrainerError::invalid(&location, format!("not JSON: {e}")))?;
        let Some(object) = value.as_object() else {
            return Err(TrainerError::invalid(
                &location,
                "each line must be a JSON object with \"text\" or \"prompt\" and \"completion\"",
            ));
        };
        let string = |key: &str| -> Result<Option<String>> {
            match object.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(TrainerError::invalid(
                    &location,
                    format!("\"{key}\" must be a string, not {other}"),
                )),
            }
        };
        for key in object.keys() {
            if !matches!(key.as_str(), "text" | "prompt" | "completion") {
                return Err(TrainerError::invalid(
                    &location,
                    format!("unknown key \"{key}\" (expected text, or prompt and completion)"),
                ));
            }
        }
        let example = match (string("text")?, string("prompt")?, string("completion")?) {
            (Some(text), None, None) => Example {
                prompt: String::new(),
                completion: text,
            },
            (None, Some(prompt), Some(completion)) => Example { prompt, completion },
            (None, None, Some(completion)) => Example {
                prompt: String::new(),
                completion,
            },
            _ => {
                return Err(TrainerError::invalid(
                    &location,
                    "a line has either \"text\" or \"prompt\" and \"completion\"",
                ))
            }
        };
        if example.completion.is_empty() {
            return Err(TrainerError::invalid(
                &location,
                "the text to learn is empty",
            ));
        }
        examples.push(example);
    }
    if examples.is_empty() {
        return Err(TrainerError::invalid(
            path.display(),
            "no examples in the file",
        ));
    }
    Ok(examples)
}

/// Training and held-out examples for a config's `data:` section. `base_dir` resolves
/// relative paths.
pub fn load_examples(
    data: &ladder_spec::train_config::DataConfig,
    seed: u64,
    base_dir: &Path,
) -> Result<(Vec<Example>, Vec<Example>)> {
    if let Some(task) = &data.task {
        let train = synthetic::examples(task, Split::Train, data.examples, seed)?;
        let held_out = synthetic::examples(
            task,
            Split::Validation,
            (data.validation_sequences * 16).max(64),
            seed,
        )?;
        return Ok((train, held_out));
    }
    let path = data
        .path
        .as_ref()
        .ok_or_else(|| TrainerError::config("data", "needs task: or path:"))?;
    let train = read_jsonl(&base_dir.join(path))?;
    let held_out = match &data.validation {
        Some(validation) => read_jsonl(&base_dir.join(validation))?,
        None => Vec::new(),
    };
    Ok((train, held_out))
}

/// Examples tokenized and packed into rows of `seq_len + 1` tokens: the model reads
/// `tokens[..seq_len]` and predicts `tokens[1..]`; `mask[i]` says whether predicting
/// `tokens[i + 1]` counts towards the loss (completion tokens and each example's end of
/// sequence, not prompts or padding).
#[derive(Debug, Clone)]
pub struct PackedData {
    pub seq_len: usize,
    rows: Vec<Vec<u32>>,
    masks: Vec<Vec<u8>>,
}

impl PackedData {
    /// Packs examples in order: each example is `prompt ++ completion ++ EOS`; a row is
    /// filled with whole examples and padded with EOS (masked out); an example longer
    /// than a row is truncated.
    pub fn pack(examples: &[Example], tokenizer: &Tokenizer, seq_len: usize) -> Result<Self> {
        let row_len = seq_len + 1;
        let eos = tokenizer.eos_id().unwrap_or(0);
        let mut rows = Vec::new();
        let mut masks = Vec::new();
        let mut row: Vec<u32> = Vec::with_capacity(row_len);
        let mut mask: Vec<u8> = Vec::with_capacity(row_len);
        for example in examples {
            let (tokens, targets) = encode_example(example, tokenizer, eos)?;
            let take = tokens.len().min(row_len);
            if row.len() + take > row_len {
                flush(&mut rows, &mut masks, &mut row, &mut mask, row_len, eos);
            }
            row.extend_from_slice(&tokens[..take]);
            mask.extend_from_slice(&targets[..take]);
        }
        if !row.is_empty() {
            flush(&mut rows, &mut masks, &mut row, &mut mask, row_len, eos);
        }
        // `mask` was built per token ("this token is a target"); shift it so that
        // mask[i] refers to predicting token i + 1 from position i.
        for mask in &mut masks {
            mask.remove(0);
            mask.push(0);
        }
        Ok(PackedData {
            seq_len,
            rows,
            masks,
        })
    }

    /// The first `rows` sequences.
    pub fn truncated(mut self, rows: usize) -> Self {
        self.rows.truncate(rows);
        self.masks.truncate(rows);
        self
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Number of target tokens in the given rows.
    pub fn target_count(&self, rows: &[usize]) -> usize {
        rows.iter()
            .map(|&r| self.masks[r].iter().map(|&m| m as usize).sum::<usize>())
            .sum()
    }

    /// `(inputs (n, seq_len) u32, targets (n, seq_len) u32, mask (n, seq_len) f32)`.
    pub fn batch(&self, rows: &[usize], device: &Device) -> Result<Batch> {
        let n = rows.len();
        let mut inputs = Vec::with_capacity(n * self.seq_len);
        let mut targets = Vec::with_capacity(n * self.seq_len);
        let mut mask = Vec::with_capacity(n * self.seq_len);
        for &r in rows {
            let row = &self.rows[r];
            inputs.extend_from_slice(&row[..self.seq_len]);
            targets.extend_from_slice(&row[1..]);
            mask.extend(self.masks[r][..self.seq_len].iter().map(|&m| m as f32));
        }
        Ok(Batch {
            inputs: Tensor::from_vec(inputs, (n, self.seq_len), device)?,
            targets: Tensor::from_vec(targets, (n, self.seq_len), device)?,
            mask: Tensor::from_vec(mask, (n, self.seq_len), device)?,
            rows: n,
        })
    }
}

/// One micro-batch on the training device.
pub struct Batch {
    pub inputs: Tensor,
    pub targets: Tensor,
    pub mask: Tensor,
    pub rows: usize,
}

fn encode_example(
    example: &Example,
    tokenizer: &Tokenizer,
    eos: u32,
) -> Result<(Vec<u32>, Vec<u8>)> {
    let mut tokens = Vec::new();
    let mut targets = Vec::new();
    if !example.prompt.is_empty() {
        let prompt = tokenizer.encode(&example.prompt, true)?;
        targets.extend(std::iter::repeat_n(0u8, prompt.len()));
        tokens.extend(prompt);
        let completion = tokenizer.encode(&example.completion, false)?;
        targets.extend(std::iter::repeat_n(1u8, completion.len()));
        tokens.extend(completion);
    } else {
        let text = tokenizer.encode(&example.completion, true)?;
        targets.extend(std::iter::repeat_n(1u8, text.len()));
        tokens.extend(text);
    }
    tokens.push(eos);
    targets.push(1);
    Ok((tokens, targets))
}

fn flush(
    rows: &mut Vec<Vec<u32>>,
    masks: &mut Vec<Vec<u8>>,
    row: &mut Vec<u32>,
    mask: &mut Vec<u8>,
    row_len: usize,
    pad: u32,
) {
    row.resize(row_len, pad);
    mask.resize(row_len, 0);
    rows.push(std::mem::replace(row, Vec::with_capacity(row_len)));
    masks.push(std::mem::replace(mask, Vec::with_capacity(row_len)));
}

/// The order in which rows are visited: epoch `e` is a permutation drawn from
/// `ChaCha8Rng(seed ^ e)`, so the rows of any step can be computed without replaying the
/// steps before it (what makes resume exact).
#[derive(Debug)]
pub struct DataOrder {
    seed: u64,
    rows: usize,
    epoch: Option<(u64, Vec<usize>)>,
}

impl DataOrder {
    pub fn new(seed: u64, rows: usize) -> Self {
        debug_assert!(rows > 0);
        DataOrder {
            seed,
            rows,
            epoch: None,
        }
    }

    /// The rows of global sample indices `start..start + count`.
    pub fn rows(&mut self, start: u64, count: usize) -> Vec<usize> {
        (start..start + count as u64)
            .map(|sample| self.row(sample))
            .collect()
    }

    fn row(&mut self, sample: u64) -> usize {
        let epoch = sample / self.rows as u64;
        let offset = (sample % self.rows as u64) as usize;
        if self.epoch.as_ref().map(|(e, _)| *e) != Some(epoch) {
            let mut permutation: Vec<usize> = (0..self.rows).collect();
            let mut rng =
                ChaCha8Rng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            permutation.shuffle(&mut rng);
            self.epoch = Some((epoch, permutation));
        }
        self.epoch.as_ref().expect("set above").1[offset]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(prompt: &str, completion: &str) -> Example {
        Example {
            prompt: prompt.into(),
            completion: completion.into(),
        }
    }

    #[test]
    fn packing_masks_prompts_and_padding() {
        let tokenizer = Tokenizer::byte();
        let data = PackedData::pack(
            &[
                example("ab", "cd"),
                example("", "xy"),
                example("e", "fghij"),
            ],
            &tokenizer,
            8,
        )
        .unwrap();
        // Row 0: a b c d EOS x y EOS | 9th token pad; row 1: e f g h i j EOS pad pad.
        assert_eq!(data.len(), 2);
        let eos = 257;
        assert_eq!(
            data.rows[0],
            vec![
                b'a' as u32,
                b'b' as u32,
                b'c' as u32,
                b'd' as u32,
                eos,
                b'x' as u32,
                b'y' as u32,
                eos,
                eos
            ]
        );
        // mask[i]: is token i+1 a target? b->c yes? predicting c from b: yes (c is completion).
        assert_eq!(data.masks[0], vec![0, 1, 1, 1, 1, 1, 1, 0, 0]);
        assert_eq!(data.masks[1], vec![1, 1, 1, 1, 1, 1, 0, 0, 0]);
        assert_eq!(data.target_count(&[0, 1]), 6 + 6);
    }

    #[test]
    fn order_is_a_function_of_seed_and_sample() {
        let mut a = DataOrder::new(7, 10);
        let mut b = DataOrder::new(7, 10);
        let first = a.rows(0, 25);
        // Jumping straight to sample 15 gives what a sequential reader saw there.
        assert_eq!(b.rows(15, 10), first[15..].to_vec());
        let mut epoch0 = first[..10].to_vec();
        epoch0.sort();
        assert_eq!(epoch0, (0..10).collect::<Vec<_>>());
        assert_ne!(first[..10], first[10..20]);
        assert_ne!(DataOrder::new(8, 10).rows(0, 10), first[..10].to_vec());
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, "{\"text\": \"hi\"}\n\n{\"prompt\": \"q\"}\n").unwrap();
        let error = read_jsonl(&path).unwrap_err().to_string();
        assert!(error.contains("d.jsonl:3"), "{error}");
        std::fs::write(
            &path,
            "{\"text\": \"hi\"}\n{\"prompt\": \"q\", \"completion\": \"a\"}\n",
        )
        .unwrap();
        let examples = read_jsonl(&path).unwrap();
        assert_eq!(examples.len(), 2);
        assert_eq!(examples[1].prompt, "q");
        std::fs::write(&path, "[1]\n").unwrap();
        assert!(read_jsonl(&path)
            .unwrap_err()
            .to_string()
            .contains("d.jsonl:1"));
    }
}
