//! The configuration of one run of the built-in trainer: the `train:` section of a sweep
//! file, or the whole of a `ladder train CONFIG.yaml` file.
//!
//! The types are plain serde structs (unknown keys are errors) so the coordinator can
//! validate a sweep's `train:` block at submit time without linking the trainer, and the
//! trainer receives the rendered block as JSON in its argv.
//!
//! Parameters reach the block through placeholders: a string that is exactly `"{{lr}}"`
//! becomes the parameter's value with its type (a float stays a float); a placeholder
//! inside a longer string is replaced by the value's text. [`render`] does both.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::space::Params;
use crate::ParamValue;

/// One run of the built-in trainer. Every field but `model` and `data` has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub data: DataConfig,
    /// Hugging Face `tokenizer.json` to use instead of the model directory's own (or the
    /// byte-level tokenizer when the model directory has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// Present: LoRA fine-tuning with a frozen base. Absent: every weight trains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSection>,
    #[serde(default)]
    pub optim: OptimConfig,
    /// Optimizer steps.
    #[serde(default = "defaults::steps")]
    pub steps: u64,
    /// Sequences per micro-batch (over all data-parallel ranks together).
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed before each optimizer step.
    #[serde(default = "defaults::one")]
    pub grad_accum: usize,
    /// Tokens per training sequence; examples are packed into sequences of this length.
    #[serde(default = "defaults::seq_len")]
    pub seq_len: usize,
    /// Seeds the initial weights, the adapters and the data order.
    #[serde(default)]
    pub seed: u64,
    /// Multiple-choice tasks scored during and after training.
    #[serde(default)]
    pub eval: Vec<EvalTaskConfig>,
    /// Held-out loss and eval tasks every this many steps (and always after the last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_every: Option<u64>,
    /// `train/*` metrics every this many steps.
    #[serde(default = "defaults::log_every")]
    pub log_every: u64,
    /// A resumable checkpoint every this many steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<u64>,
    /// The final model: where and how it is written.
    #[serde(default)]
    pub save: SaveConfig,
    /// `auto` (a GPU when built with `cuda` and one is visible, else the CPU), `cpu`,
    /// `cuda` or `cuda:N`.
    #[serde(default = "defaults::device")]
    pub device: String,
    /// Ranks training data-parallel; each takes an equal share of every batch.
    #[serde(default = "defaults::one")]
    pub data_parallel: usize,
}

/// Where the starting weights come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `pretrained` (load `path`) or `random` (build `arch`).
    #[serde(default = "defaults::init")]
    pub init: String,
    /// A Hugging Face LLaMA-format model directory (config.json + safetensors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<ArchConfig>,
}

/// The shape of a freshly initialised LLaMA model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchConfig {
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    /// Grouped-query attention: key/value heads (default: `heads`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_heads: Option<usize>,
    /// SwiGLU hidden size (default: about 8/3 × d_model, rounded up to a multiple of 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d_ff: Option<usize>,
    /// Vocabulary size (default: the tokenizer's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab: Option<usize>,
    /// Longest sequence (default: the larger of 512 and `seq_len`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_seq: Option<usize>,
    #[serde(default)]
    pub tie_embeddings: bool,
    #[serde(default = "defaults::rope_theta")]
    pub rope_theta: f64,
}

/// Training data: a built-in synthetic task or JSONL files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A built-in synthetic task (`synthetic-arith`, `synthetic-kv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// JSONL of `{"text": ...}` or `{"prompt": ..., "completion": ...}` lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Held-out JSONL for `eval/loss` (synthetic tasks use their validation split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<String>,
    /// Examples drawn from a synthetic task's training split.
    #[serde(default = "defaults::examples")]
    pub examples: usize,
    /// Held-out sequences for `eval/loss`.
    #[serde(default = "defaults::validation_sequences")]
    pub validation_sequences: usize,
}

/// LoRA adapters on a frozen base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    #[serde(default = "defaults::lora_rank")]
    pub rank: usize,
    /// The adapter path is scaled by `alpha / rank` (default: `2 × rank`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    #[serde(default = "defaults::lora_targets")]
    pub targets: Vec<String>,
}

/// AdamW with a warmup + decay schedule and gradient clipping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    #[serde(default = "defaults::lr")]
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "defaults::beta1")]
    pub beta1: f64,
    #[serde(default = "defaults::beta2")]
    pub beta2: f64,
    #[serde(default = "defaults::eps")]
    pub eps: f64,
    /// Steps of linear warmup from 0 to `lr`.
    #[serde(default)]
    pub warmup: u64,
    /// `cosine`, `linear` or `constant` decay after warmup.
    #[serde(default = "defaults::schedule")]
    pub schedule: String,
    /// The decayed learning rate never goes below `min_lr_ratio × lr`.
    #[serde(default)]
    pub min_lr_ratio: f64,
    /// Clip the global gradient norm to this (0 disables).
    #[serde(default = "defaults::grad_clip")]
    pub grad_clip: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: defaults::lr(),
            weight_decay: 0.0,
            beta1: defaults::beta1(),
            beta2: defaults::beta2(),
            eps: defaults::eps(),
            warmup: 0,
            schedule: defaults::schedule(),
            min_lr_ratio: 0.0,
            grad_clip: defaults::grad_clip(),
        }
    }
}

/// One multiple-choice task scored during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalTaskConfig {
    /// A built-in task name, a `.jsonl` file or a task `.yaml`.
    pub task: String,
    #[serde(default)]
    pub shots: usize,
    /// At most this many items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// How the final model is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveConfig {
    /// Write the final model at all.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// With LoRA: write merged weights instead of base + PEFT adapter.
    #[serde(default)]
    pub merge_lora: bool,
}

impl Default for SaveConfig {
    fn default() -> Self {
        SaveConfig {
            enabled: true,
            merge_lora: false,
        }
    }
}

mod defaults {
    pub fn steps() -> u64 {
        300
    }
    pub fn batch_size() -> usize {
        8
    }
    pub fn one() -> usize {
        1
    }
    pub fn seq_len() -> usize {
        128
    }
    pub fn log_every() -> u64 {
        10
    }
    pub fn device() -> String {
        "auto".into()
    }
    pub fn init() -> String {
        "pretrained".into()
    }
    pub fn rope_theta() -> f64 {
        10_000.0
    }
    pub fn examples() -> usize {
        20_000
    }
    pub fn validation_sequences() -> usize {
        32
    }
    pub fn lora_rank() -> usize {
        8
    }
    pub fn lora_targets() -> Vec<String> {
        ["q_proj", "k_proj", "v_proj", "o_proj"]
            .map(String::from)
            .to_vec()
    }
    pub fn lr() -> f64 {
        1e-3
    }
    pub fn beta1() -> f64 {
        0.9
    }
    pub fn beta2() -> f64 {
        0.999
    }
    pub fn eps() -> f64 {
        1e-8
    }
    pub fn schedule() -> String {
        "cosine".into()
    }
    pub fn grad_clip() -> f64 {
        1.0
    }
    pub fn yes() -> bool {
        true
    }
}

/// A problem with a train configuration: the dotted path of the field (`optim.lr`) and
/// what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TrainConfigError {
    /// Dotted path from the config's root (`optim.lr`, `eval.0.task`); empty for the root.
    pub path: String,
    pub message: String,
}

impl TrainConfig {
    /// Reads a rendered config (no placeholders left) and checks what serde cannot.
    pub fn from_json(value: &serde_json::Value) -> Result<TrainConfig, TrainConfigError> {
        let config: TrainConfig = deserialize_with_path(value)?;
        config.validate()?;
        Ok(config)
    }

    /// Value checks beyond types: names, ranges and the combinations that make sense.
    pub fn validate(&self) -> Result<(), TrainConfigError> {
        let fail = |path: &str, message: String| {
            Err(TrainConfigError {
                path: path.to_string(),
                message,
            })
        };
        match self.model.init.as_str() {
            "pretrained" => {
                if self.model.path.is_none() {
                    return fail(
                        "model.path",
                        "init: pretrained needs a model directory (path: models/base), or use init: random with an arch".into(),
                    );
                }
            }
            "random" => {
                let Some(arch) = &self.model.arch else {
                    return fail(
                        "model.arch",
                        "init: random needs an arch, e.g. {d_model: 128, layers: 4, heads: 4}"
                            .into(),
                    );
                };
                if arch.d_model == 0 || arch.layers == 0 || arch.heads == 0 {
                    return fail(
                        "model.arch",
                        "d_model, layers and heads must be positive".into(),
                    );
                }
                if arch.d_model % arch.heads != 0 || (arch.d_model / arch.heads) % 2 != 0 {
                    return fail(
                        "model.arch.heads",
                        format!(
                            "d_model {} must split into {} heads of an even size",
                            arch.d_model, arch.heads
                        ),
                    );
                }
                if let Some(kv) = arch.kv_heads {
                    if kv == 0 || arch.heads % kv != 0 {
                        return fail(
                            "model.arch.kv_heads",
                            format!("must divide heads ({}), got {kv}", arch.heads),
                        );
                    }
                }
            }
            other => {
                return fail(
                    "model.init",
                    format!("unknown init \"{other}\" (expected pretrained or random)"),
                )
            }
        }
        match (&self.data.task, &self.data.path) {
            (None, None) => {
                return fail(
                    "data",
                    "needs task: (a built-in synthetic task) or path: (a JSONL file)".into(),
                )
            }
            (Some(_), Some(_)) => {
                return fail("data", "give task: or path:, not both".into());
            }
            _ => {}
        }
        if self.data.examples == 0 {
            return fail("data.examples", "must be positive".into());
        }
        if let Some(lora) = &self.lora {
            if lora.rank == 0 {
                return fail("lora.rank", "must be positive".into());
            }
            if lora.targets.is_empty() {
                return fail("lora.targets", "name at least one module".into());
            }
            for (index, target) in lora.targets.iter().enumerate() {
                if !LORA_TARGETS.contains(&target.as_str()) {
                    return fail(
                        &format!("lora.targets.{index}"),
                        format!(
                            "unknown module \"{target}\" (expected one of: {})",
                            LORA_TARGETS.join(", ")
                        ),
                    );
                }
            }
            if let Some(alpha) = lora.alpha {
                if !(alpha.is_finite() && alpha > 0.0) {
                    return fail("lora.alpha", format!("must be positive, got {alpha}"));
                }
            }
        }
        let optim = &self.optim;
        if !(optim.lr.is_finite() && optim.lr >= 0.0) {
            return fail(
                "optim.lr",
                format!("must be a non-negative number, got {}", optim.lr),
            );
        }
        if !(optim.weight_decay.is_finite() && optim.weight_decay >= 0.0) {
            return fail("optim.weight_decay", "must be non-negative".into());
        }
        for (name, beta) in [("optim.beta1", optim.beta1), ("optim.beta2", optim.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return fail(name, format!("must be in [0, 1), got {beta}"));
            }
        }
        if !(optim.eps.is_finite() && optim.eps > 0.0) {
            return fail("optim.eps", "must be positive".into());
        }
        if !SCHEDULES.contains(&optim.schedule.as_str()) {
            return fail(
                "optim.schedule",
                format!(
                    "unknown schedule \"{}\" (expected one of: {})",
                    optim.schedule,
                    SCHEDULES.join(", ")
                ),
            );
        }
        if !(0.0..=1.0).contains(&optim.min_lr_ratio) {
            return fail("optim.min_lr_ratio", "must be in [0, 1]".into());
        }
        if !(optim.grad_clip.is_finite() && optim.grad_clip >= 0.0) {
            return fail(
                "optim.grad_clip",
                "must be non-negative (0 disables)".into(),
            );
        }
        for (name, value) in [
            ("steps", self.steps as usize),
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("seq_len", self.seq_len),
            ("log_every", self.log_every as usize),
            ("data_parallel", self.data_parallel),
        ] {
            if value == 0 {
                return fail(name, "must be positive".into());
            }
        }
        if !self.batch_size.is_multiple_of(self.data_parallel) {
            return fail(
                "batch_size",
                format!(
                    "{} does not split evenly over data_parallel: {}",
                    self.batch_size, self.data_parallel
                ),
            );
        }
        if self.eval_every == Some(0) {
            return fail("eval_every", "must be positive".into());
        }
        if self.checkpoint_every == Some(0) {
            return fail("checkpoint_every", "must be positive".into());
        }
        let device = self.device.as_str();
        let known_device = matches!(device, "auto" | "cpu" | "cuda")
            || device
                .strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<usize>().is_ok());
        if !known_device {
            return fail(
                "device",
                format!("unknown device \"{device}\" (expected auto, cpu, cuda or cuda:N)"),
            );
        }
        for (index, task) in self.eval.iter().enumerate() {
            if task.task.trim().is_empty() {
                return fail(&format!("eval.{index}.task"), "must not be empty".into());
            }
        }
        Ok(())
    }
}

/// LoRA target module names of a LLaMA model.
pub const LORA_TARGETS: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Learning-rate schedules after warmup.
pub const SCHEDULES: &[&str] = &["cosine", "linear", "constant"];

/// Deserializes `value`, reporting the dotted path of the first field at fault.
fn deserialize_with_path<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
) -> Result<T, TrainConfigError> {
    let mut track = serde_path_to_error::Track::new();
    let deserializer = serde_path_to_error::Deserializer::new(value, &mut track);
    match T::deserialize(deserializer) {
        Ok(parsed) => Ok(parsed),
        Err(error) => {
            let path = track.path().to_string();
            Err(TrainConfigError {
                path: if path == "." { String::new() } else { path },
                message: error.to_string(),
            })
        }
    }
}

/// Substitutes the trial's parameters into a `train:` block. A string that is exactly
/// one placeholder takes the parameter's typed value (`null` when the parameter is
/// switched off in this trial, so the field's default applies); placeholders inside
/// longer strings are replaced by the value's text. `ladder.*` placeholders are kept for
/// the agent.
pub fn render(block: &serde_json::Value, params: &Params) -> serde_json::Value {
    use serde_json::Value;
    match block {
        Value::String(text) => {
            if let Some(name) = sole_placeholder(text) {
                if !name.starts_with("ladder.") {
                    return params.get(name).map_or(Value::Null, ParamValue::to_json);
                }
            }
            match crate::space::render_command(std::slice::from_ref(text), params) {
                Ok(mut rendered) => Value::String(rendered.remove(0)),
                Err(_) => Value::String(text.clone()),
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| render(v, params)).collect()),
        Value::Object(map) => {
            let mut rendered = serde_json::Map::new();
            for (key, value) in map {
                let value = render(value, params);
                // A switched-off parameter leaves the field to its default.
                if !value.is_null() {
                    rendered.insert(key.clone(), value);
                }
            }
            Value::Object(rendered)
        }
        other => other.clone(),
    }
}

/// `Some(name)` when `text` is exactly `{{ name }}`.
fn sole_placeholder(text: &str) -> Option<&str> {
    match crate::space::parse_template(text.trim()).ok()?.as_slice() {
        [crate::space::Segment::Placeholder(name)] => Some(name),
        _ => None,
    }
}

/// Every `{{name}}` used anywhere in the block's strings, for the sweep validator.
pub fn placeholders(block: &serde_json::Value) -> Vec<String> {
    let mut names = Vec::new();
    collect_placeholders(block, &mut names);
    names
}

fn collect_placeholders(block: &serde_json::Value, names: &mut Vec<String>) {
    match block {
        serde_json::Value::String(text) => {
            for piece in crate::space::scan_braces(text) {
                if let crate::space::Brace::Inner(inner) = piece {
                    names.push(inner.trim().to_string());
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                collect_placeholders(item, names);
            }
        }
        serde_json::Value::Object(map) => {
            for value in map.values() {
                collect_placeholders(value, names);
            }
        }
        _ => {}
    }
}

/// Keys of a mapping, for callers that want to show what a block contains.
pub fn summary(config: &TrainConfig) -> BTreeMap<&'static str, String> {
    let mut out = BTreeMap::new();
    let model = match (&config.model.path, &config.model.arch) {
        (Some(path), _) => path.clone(),
        (None, Some(arch)) => format!(
            "random d{} × {} layers × {} heads",
            arch.d_model, arch.layers, arch.heads
        ),
        (None, None) => "?".into(),
    };
    out.insert("model", model);
    out.insert(
        "data",
        config
            .data
            .task
            .clone()
            .or_else(|| config.data.path.clone())
            .unwrap_or_default(),
    );
    out.insert(
        "mode",
        match &config.lora {
            Some(lora) => format!("lora r{}", lora.rank),
            None => "full".into(),
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn minimal() -> serde_json::Value {
        json!({
            "model": {"init": "random", "arch": {"d_model": 64, "layers": 2, "heads": 4}},
            "data": {"task": "synthetic-arith"},
        })
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let config = TrainConfig::from_json(&minimal()).unwrap();
        assert_eq!(config.steps, 300);
        assert_eq!(config.optim.schedule, "cosine");
        assert_eq!(config.device, "auto");
        assert!(config.lora.is_none());
    }

    #[test]
    fn errors_name_the_field() {
        let mut bad = minimal();
        bad["optim"] = json!({"lr": "fast"});
        let error = TrainConfig::from_json(&bad).unwrap_err();
        assert_eq!(error.path, "optim.lr");
        assert!(error.message.contains("invalid type"), "{error}");

        let mut unknown = minimal();
        unknown["optim"] = json!({"lrr": 0.1});
        let error = TrainConfig::from_json(&unknown).unwrap_err();
        assert!(error.message.contains("unknown field `lrr`"), "{error}");

        let mut target = minimal();
        target["lora"] = json!({"targets": ["q_proj", "qkv"]});
        let error = TrainConfig::from_json(&target).unwrap_err();
        assert_eq!(error.path, "lora.targets.1");
        assert!(error.message.contains("\"qkv\""), "{error}");

        let mut heads = minimal();
        heads["model"]["arch"]["heads"] = json!(3);
        assert_eq!(
            TrainConfig::from_json(&heads).unwrap_err().path,
            "model.arch.heads"
        );
    }

    #[test]
    fn render_keeps_types_and_drops_switched_off_parameters() {
        let block = json!({
            "optim": {"lr": "{{lr}}", "warmup": "{{ warmup }}", "schedule": "{{sched}}"},
            "lora": {"rank": "{{lora.rank}}"},
            "data": {"path": "data/{{split}}.jsonl"},
            "save": {"merge_lora": "{{merge}}"},
            "tokenizer": "{{ladder.run_dir}}/tok.json",
        });
        let params: Params = [
            ("lr".to_string(), ParamValue::Float(3e-4)),
            ("warmup".to_string(), ParamValue::Int(20)),
            ("lora.rank".to_string(), ParamValue::Int(8)),
            ("split".to_string(), ParamValue::Str("a".into())),
            ("merge".to_string(), ParamValue::Bool(true)),
        ]
        .into_iter()
        .collect();
        let rendered = render(&block, &params);
        assert_eq!(
            rendered,
            json!({
                "optim": {"lr": 3e-4, "warmup": 20},
                "lora": {"rank": 8},
                "data": {"path": "data/a.jsonl"},
                "save": {"merge_lora": true},
                "tokenizer": "{{ladder.run_dir}}/tok.json",
            })
        );
        let mut names = placeholders(&block);
        names.sort();
        assert_eq!(
            names,
            [
                "ladder.run_dir",
                "lora.rank",
                "lr",
                "merge",
                "sched",
                "split",
                "warmup"
            ]
        );
    }

    const SWEEP: &str = "\
name: s
method: grid
parameters:
  lr: {values: [0.001, 0.01]}
  rank: {values: [2, 8]}
train:
  model: {path: models/base}
  data: {task: synthetic-arith}
  lora: {rank: \"{{rank}}\"}
  optim: {lr: \"{{lr}}\", warmup: 10}
";

    #[test]
    fn a_sweep_with_train_runs_the_trainer() {
        let spec = crate::parse_sweep("s.yaml", SWEEP).unwrap();
        assert_eq!(spec.command, crate::TRAIN_COMMAND);
        let block = spec.train.as_ref().unwrap();
        let params = crate::space::trial(&spec, 3).unwrap();
        let config = TrainConfig::from_json(&render(block, &params)).unwrap();
        assert_eq!(config.optim.lr, 0.01);
        assert_eq!(config.lora.unwrap().rank, 8);
    }

    fn sweep_errors(text: &str) -> Vec<String> {
        crate::parse_sweep("s.yaml", text)
            .unwrap_err()
            .0
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn train_errors_carry_line_and_field() {
        let typo = sweep_errors(&SWEEP.replace("warmup: 10", "warmup: soon"));
        assert_eq!(typo.len(), 1, "{typo:?}");
        assert!(typo[0].starts_with("s.yaml:10:"), "{typo:?}");
        assert!(typo[0].contains("train.optim.warmup"), "{typo:?}");

        let unknown = sweep_errors(&SWEEP.replace("{{lr}}", "{{lrr}}"));
        assert!(
            unknown.iter().any(|e| e.starts_with("s.yaml:10:")
                && e.contains("no parameter is named \"lrr\"")
                && e.contains("did you mean \"lr\"")),
            "{unknown:?}"
        );

        let key = sweep_errors(&SWEEP.replace("data:", "dataset:"));
        assert!(
            key.iter().any(|e| e.contains("unknown field `dataset`")),
            "{key:?}"
        );

        let both = sweep_errors(&format!("{SWEEP}command: [python, x.py]\n"));
        assert!(both.iter().any(|e| e.contains("not both")), "{both:?}");
    }

    #[test]
    fn trainer_sweeps_on_gpus_run_one_rank_per_gpu() {
        use crate::Launch;
        let spec =
            crate::parse_sweep("s.yaml", &format!("{SWEEP}resources: {{gpus: 2}}\n")).unwrap();
        assert_eq!(spec.resources.launch, Launch::PerGpu);
        let cpu = crate::parse_sweep("s.yaml", SWEEP).unwrap();
        assert_eq!(cpu.resources.launch, Launch::Single, "no GPUs: one process");

        let single = sweep_errors(&format!("{SWEEP}resources: {{gpus: 2, launch: single}}\n"));
        assert!(
            single
                .iter()
                .any(|e| e.starts_with("s.yaml:11:30:") && e.contains("one rank per GPU")),
            "{single:?}"
        );
        let uneven = sweep_errors(&format!("{SWEEP}  batch_size: 6\nresources: {{gpus: 4}}\n"));
        assert!(
            uneven.iter().any(|e| e.starts_with("s.yaml:11:15:")
                && e.contains("train.batch_size: 6 does not split evenly over resources.gpus: 4")),
            "{uneven:?}"
        );
        let threads = sweep_errors(&format!(
            "{SWEEP}  data_parallel: 2\nresources: {{gpus: 2}}\n"
        ));
        assert!(
            threads.iter().any(
                |e| e.contains("train.data_parallel") && e.contains("leave data_parallel at 1")
            ),
            "{threads:?}"
        );
    }

    #[test]
    fn train_file_errors_carry_line() {
        let text = "model: {init: random, arch: {d_model: 64, layers: 2, heads: 4}}\ndata: {task: synthetic-arith}\nsteps: -3\n";
        let errors = crate::parse_train_file("t.yaml", text).unwrap_err();
        let message = errors.to_string();
        assert!(message.starts_with("t.yaml:3:8: steps:"), "{message}");
        let ok = "model: {init: random, arch: {d_model: 64, layers: 2, heads: 4}}\ndata: {task: synthetic-arith}\n";
        assert!(crate::parse_train_file("t.yaml", ok).is_ok());
    }
}
