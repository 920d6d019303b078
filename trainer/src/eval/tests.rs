//! Tests of `trainer/src/eval.rs`.

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
    let (context, continuation) = encode_pair(&hf, SpecialTokens::None, "the cat ", "sat").unwrap();
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
