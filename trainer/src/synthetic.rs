//! Built-in tasks that make meaningful training and evaluation data offline, so a sweep
//! can train a tiny model from scratch and see held-out multiple-choice accuracy move.
//!
//! - `synthetic-arith`: `"12+35="` -> `" 47"`, operands 0..=99. Its `-mc` twin asks the
//!   same question with the right sum among a near miss (±1 or ±10) and two random sums.
//! - `synthetic-kv`: closed-book recall of a fixed table of 64 made-up facts,
//!   `"capital of zorb is"` -> `" plim"`. Its `-mc` twin offers the right value among
//!   three other values from the table.
//!
//! Every task has an item space that a fixed hash partitions into Train (80%),
//! Validation (10%) and Test (10%), so the splits never share an item. For arith an item
//! is an operand pair, so Test sums are never seen in training. For kv an item is a
//! (fact, variant) instance; the facts themselves are the knowledge being trained, so
//! every split asks about the same table and only the instances (distractors, answer
//! position) are disjoint. The table is fixed by a constant, not by the `seed`
//! argument, so training and evaluation always agree on it.
//!
//! Completions start with a space and the `-mc` choices do not, because scoring joins
//! context and choice with lm-eval's `" "` target delimiter: training text and scored
//! text are byte-for-byte the same format.

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Result, TrainerError};
use crate::tasks::{Gold, McItem};

/// Which part of a task's item space to draw from; the three are disjoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Validation,
    Test,
}

/// A training example; loss is taken on `completion` only when `prompt` is non-empty,
/// on all of it otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub prompt: String,
    pub completion: String,
}

/// Text tasks [`examples`] accepts.
pub const TEXT_TASKS: &[&str] = &["synthetic-arith", "synthetic-kv"];
/// Multiple-choice tasks [`mc_items`] accepts (and [`crate::tasks::load_task`] knows).
pub const MC_TASKS: &[&str] = &["synthetic-arith-mc", "synthetic-kv-mc"];

/// Largest operand of `synthetic-arith`.
const MAX_OPERAND: u32 = 99;
/// Number of facts in the `synthetic-kv` table.
const KV_FACTS: usize = 64;
/// Instances per fact in the `synthetic-kv` item space (so Test holds ~410 items).
const KV_VARIANTS: usize = 64;
/// Seed of the `synthetic-kv` table; a constant so every run shares one table.
const KV_TABLE_SEED: u64 = 0x006b_7674_6162_6c65;

/// The tasks this module knows, by their item space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Arith,
    Kv,
}

impl Family {
    fn tag(self) -> u64 {
        match self {
            Family::Arith => 1,
            Family::Kv => 2,
        }
    }

    fn space_size(self) -> usize {
        match self {
            Family::Arith => ((MAX_OPERAND + 1) * (MAX_OPERAND + 1)) as usize,
            Family::Kv => KV_FACTS * KV_VARIANTS,
        }
    }
}

fn family(task: &str, known: &[&str]) -> Result<Family> {
    let family = match task {
        "synthetic-arith" | "synthetic-arith-mc" => Family::Arith,
        "synthetic-kv" | "synthetic-kv-mc" => Family::Kv,
        _ => return Err(unknown(task, known)),
    };
    if !known.contains(&task) {
        return Err(unknown(task, known));
    }
    Ok(family)
}

fn unknown(task: &str, known: &[&str]) -> TrainerError {
    TrainerError::config(
        "task",
        format!(
            "unknown synthetic task {task:?} (expected one of: {})",
            known.join(", ")
        ),
    )
}

/// SplitMix64 finaliser: a fixed, well-mixed hash that never changes between builds.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The split an item of a family belongs to: 8 of 10 hash buckets train, 1 validates,
/// 1 tests.
fn split_of(family: Family, item: usize) -> Split {
    match mix((family.tag() << 32) ^ item as u64) % 10 {
        0..=7 => Split::Train,
        8 => Split::Validation,
        _ => Split::Test,
    }
}

/// The items of one split, in item-space order.
fn split_items(family: Family, split: Split) -> Vec<usize> {
    (0..family.space_size())
        .filter(|&item| split_of(family, item) == split)
        .collect()
}

/// The generator for one (family, split, purpose) under a user seed: separate ChaCha
/// streams keep e.g. the Train examples independent of the Test items.
fn rng_for(seed: u64, family: Family, split: Split, purpose: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let split_tag = match split {
        Split::Train => 0,
        Split::Validation => 1,
        Split::Test => 2,
    };
    rng.set_stream((family.tag() << 16) | (split_tag << 8) | purpose);
    rng
}

/// `count` training examples of `task` drawn (with replacement) from `split`.
/// Same (task, split, count, seed) -> identical output.
pub fn examples(task: &str, split: Split, count: usize, seed: u64) -> Result<Vec<Example>> {
    let family = family(task, TEXT_TASKS)?;
    let items = split_items(family, split);
    let mut rng = rng_for(seed, family, split, 1);
    let table = KvTable::get();
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let item = items[rng.random_range(0..items.len())];
        let (prompt, answer) = match family {
            Family::Arith => {
                let (prompt, sum) = arith_question(item);
                (prompt, sum.to_string())
            }
            Family::Kv => table.question(item / KV_VARIANTS),
        };
        out.push(Example {
            prompt,
            completion: format!(" {answer}"),
        });
    }
    Ok(out)
}

/// `count` distinct multiple-choice items of `task` from `split` (4 choices, gold at a
/// random position). Asking for more items than the split holds is an error.
/// Same (task, split, count, seed) -> identical output.
pub fn mc_items(task: &str, split: Split, count: usize, seed: u64) -> Result<Vec<McItem>> {
    let family = family(task, MC_TASKS)?;
    let mut items = split_items(family, split);
    if count > items.len() {
        return Err(TrainerError::config(
            "limit",
            format!(
                "{task} has {} {split:?} items, {count} were asked for",
                items.len()
            ),
        ));
    }
    let mut rng = rng_for(seed, family, split, 2);
    items.shuffle(&mut rng);
    let table = KvTable::get();
    let mut out = Vec::with_capacity(count);
    for &item in &items[..count] {
        let (context, answer, distractors) = match family {
            Family::Arith => {
                let (context, sum) = arith_question(item);
                (context, sum.to_string(), arith_distractors(sum, &mut rng))
            }
            Family::Kv => {
                let fact = item / KV_VARIANTS;
                let (context, value) = table.question(fact);
                (context, value, table.distractors(fact, &mut rng))
            }
        };
        let gold = rng.random_range(0..=distractors.len());
        let mut choices = distractors;
        choices.insert(gold, answer);
        out.push(McItem {
            context,
            choices,
            gold: Gold::Index(gold),
        });
    }
    Ok(out)
}

/// The prompt and the sum of arith item `item` (operands `item / 100`, `item % 100`).
fn arith_question(item: usize) -> (String, u32) {
    let base = (MAX_OPERAND + 1) as usize;
    let (a, b) = ((item / base) as u32, (item % base) as u32);
    (format!("{a}+{b}="), a + b)
}

/// Three distinct wrong sums: one near miss (±1 or ±10) and two random sums in 0..=198.
fn arith_distractors(sum: u32, rng: &mut ChaCha8Rng) -> Vec<String> {
    let mut near: Vec<u32> = [
        sum.checked_sub(1),
        Some(sum + 1),
        sum.checked_sub(10),
        Some(sum + 10),
    ]
    .into_iter()
    .flatten()
    .collect();
    near.shuffle(rng);
    let mut chosen: Vec<u32> = near.into_iter().take(1).collect();
    while chosen.len() < 3 {
        let random = rng.random_range(0..=2 * MAX_OPERAND);
        if random != sum && !chosen.contains(&random) {
            chosen.push(random);
        }
    }
    chosen.into_iter().map(|n| n.to_string()).collect()
}

/// The fixed `synthetic-kv` fact table: made-up keys and values, all distinct.
struct KvTable {
    keys: Vec<String>,
    values: Vec<String>,
}

impl KvTable {
    fn get() -> &'static KvTable {
        static TABLE: std::sync::OnceLock<KvTable> = std::sync::OnceLock::new();
        TABLE.get_or_init(KvTable::build)
    }

    fn build() -> KvTable {
        let mut rng = ChaCha8Rng::seed_from_u64(KV_TABLE_SEED);
        let mut words: Vec<String> = Vec::with_capacity(2 * KV_FACTS);
        while words.len() < 2 * KV_FACTS {
            let word = pseudo_word(&mut rng);
            if !words.contains(&word) {
                words.push(word);
            }
        }
        let values = words.split_off(KV_FACTS);
        KvTable {
            keys: words,
            values,
        }
    }

    fn question(&self, fact: usize) -> (String, String) {
        (
            format!("capital of {} is", self.keys[fact]),
            self.values[fact].clone(),
        )
    }

    /// Three distinct values of other facts.
    fn distractors(&self, fact: usize, rng: &mut ChaCha8Rng) -> Vec<String> {
        let others: Vec<usize> = (0..KV_FACTS).filter(|&f| f != fact).collect();
        others
            .choose_multiple(rng, 3)
            .map(|&f| self.values[f].clone())
            .collect()
    }
}

/// A pronounceable made-up word of 3 to 5 letters ("zorb", "plim", "ka").
fn pseudo_word(rng: &mut ChaCha8Rng) -> String {
    const ONSETS: &[&str] = &[
        "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "pl", "tr", "gr",
        "st", "br", "kl",
    ];
    const VOWELS: &[&str] = &["a", "e", "i", "o", "u"];
    const CODAS: &[&str] = &[
        "", "b", "d", "k", "l", "m", "n", "p", "r", "s", "t", "rb", "nd",
    ];
    let mut word = String::new();
    let syllables = rng.random_range(1..=2);
    for _ in 0..syllables {
        word.push_str(ONSETS[rng.random_range(0..ONSETS.len())]);
        word.push_str(VOWELS[rng.random_range(0..VOWELS.len())]);
    }
    word.push_str(CODAS[rng.random_range(0..CODAS.len())]);
    if word.len() < 3 || word.len() > 5 {
        return pseudo_word(rng);
    }
    word
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn same_arguments_give_identical_output() {
        for task in TEXT_TASKS {
            assert_eq!(
                examples(task, Split::Train, 50, 7).unwrap(),
                examples(task, Split::Train, 50, 7).unwrap()
            );
            assert_ne!(
                examples(task, Split::Train, 50, 7).unwrap(),
                examples(task, Split::Train, 50, 8).unwrap()
            );
        }
        for task in MC_TASKS {
            assert_eq!(
                mc_items(task, Split::Test, 50, 7).unwrap(),
                mc_items(task, Split::Test, 50, 7).unwrap()
            );
        }
    }

    #[test]
    fn arith_splits_are_disjoint() {
        let prompts = |split| -> HashSet<String> {
            examples("synthetic-arith", split, 3000, 1)
                .unwrap()
                .into_iter()
                .map(|e| e.prompt)
                .collect()
        };
        let train = prompts(Split::Train);
        let validation = prompts(Split::Validation);
        let test: HashSet<String> = mc_items("synthetic-arith-mc", Split::Test, 500, 1)
            .unwrap()
            .into_iter()
            .map(|item| item.context)
            .collect();
        assert!(train.is_disjoint(&validation));
        assert!(train.is_disjoint(&test));
        assert!(validation.is_disjoint(&test));
        assert!(train.len() > 1000 && test.len() == 500);
    }

    #[test]
    fn split_partition_covers_every_item_once() {
        for family in [Family::Arith, Family::Kv] {
            let sizes: Vec<usize> = [Split::Train, Split::Validation, Split::Test]
                .into_iter()
                .map(|split| split_items(family, split).len())
                .collect();
            assert_eq!(sizes.iter().sum::<usize>(), family.space_size());
            let train_share = sizes[0] as f64 / family.space_size() as f64;
            assert!((0.75..0.85).contains(&train_share), "{sizes:?}");
        }
    }

    #[test]
    fn arith_examples_are_correct_sums() {
        for example in examples("synthetic-arith", Split::Train, 200, 3).unwrap() {
            let (a, b) = example
                .prompt
                .trim_end_matches('=')
                .split_once('+')
                .unwrap();
            let sum: u32 = a.parse::<u32>().unwrap() + b.parse::<u32>().unwrap();
            assert_eq!(example.completion, format!(" {sum}"));
        }
    }

    #[test]
    fn mc_items_have_four_distinct_choices_and_a_right_gold() {
        let items = mc_items("synthetic-arith-mc", Split::Test, 300, 5).unwrap();
        let mut gold_positions = HashSet::new();
        let mut mixed_lengths = 0;
        for item in &items {
            assert_eq!(item.choices.len(), 4);
            let distinct: HashSet<&String> = item.choices.iter().collect();
            assert_eq!(distinct.len(), 4, "{item:?}");
            let (a, b) = item.context.trim_end_matches('=').split_once('+').unwrap();
            let sum = a.parse::<u32>().unwrap() + b.parse::<u32>().unwrap();
            let Gold::Index(gold) = item.gold else {
                panic!("arith items have one gold")
            };
            assert_eq!(item.choices[gold], sum.to_string());
            gold_positions.insert(gold);
            let lengths: HashSet<usize> = item.choices.iter().map(String::len).collect();
            mixed_lengths += usize::from(lengths.len() > 1);
        }
        assert_eq!(gold_positions.len(), 4);
        assert!(mixed_lengths > 10);

        let table = KvTable::get();
        for item in mc_items("synthetic-kv-mc", Split::Test, 100, 5).unwrap() {
            let Gold::Index(gold) = item.gold else {
                panic!("kv items have one gold")
            };
            let fact = table
                .keys
                .iter()
                .position(|k| item.context == format!("capital of {k} is"))
                .unwrap();
            assert_eq!(item.choices[gold], table.values[fact]);
            let distinct: HashSet<&String> = item.choices.iter().collect();
            assert_eq!(distinct.len(), 4);
        }
    }

    #[test]
    fn kv_table_is_fixed_and_distinct() {
        let table = KvTable::get();
        let keys: HashSet<&String> = table.keys.iter().collect();
        let values: HashSet<&String> = table.values.iter().collect();
        assert_eq!((keys.len(), values.len()), (KV_FACTS, KV_FACTS));
        assert_eq!(table.keys, KvTable::build().keys);
        // The seed picks which facts are drawn, never the facts themselves.
        let facts: HashSet<(String, String)> = examples("synthetic-kv", Split::Train, 2000, 9)
            .unwrap()
            .into_iter()
            .map(|e| (e.prompt, e.completion))
            .collect();
        assert_eq!(facts.len(), KV_FACTS);
        for (prompt, completion) in facts {
            let fact = table
                .keys
                .iter()
                .position(|k| prompt == format!("capital of {k} is"))
                .unwrap();
            assert_eq!(completion, format!(" {}", table.values[fact]));
        }
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let err = examples("synthetic-arith-mc", Split::Train, 1, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("synthetic-arith, synthetic-kv"), "{err}");
        let err = mc_items("nope", Split::Test, 1, 0).unwrap_err().to_string();
        assert!(err.contains("synthetic-arith-mc"), "{err}");
        assert!(mc_items("synthetic-kv-mc", Split::Test, 100_000, 0).is_err());
    }
}
