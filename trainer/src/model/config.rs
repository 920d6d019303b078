//! The two configurations a model is built from: [`LlamaConfig`], the architecture, read from
//! and written to a Hugging Face `config.json`; and [`LoraConfig`], the low-rank adapters, read
//! from and written to PEFT's `adapter_config.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::rope::{read_rope_block, RopeBlock};
pub use super::rope::{LongRopeScaling, RopeScaling, YarnScaling};
use crate::{Result, TrainerError};

/// The projections a LoRA adapter may wrap, in the order they appear in a decoder layer
/// (the list the sweep's `train:` block is checked against).
pub use ladder_spec::train_config::LORA_TARGETS;

/// The decoder families ladder implements, by their `config.json` `model_type`. All share
/// LLaMA's pre-norm block (RMSNorm, rotary attention with grouped-query heads, SwiGLU MLP)
/// and differ in a few places:
///
/// - `llama`: optional biases on all four attention projections (`attention_bias`) and on
///   the MLP (`mlp_bias`).
/// - `mistral`: attention limited to the last `sliding_window` positions (4096 when the key
///   is absent, none when it is null).
/// - `qwen2` (Qwen2, Qwen2.5): biases on the q, k and v projections, always.
/// - `qwen3`: an RMSNorm over each head of q and of k before RoPE (`q_norm`, `k_norm`),
///   `head_dim` 128 unless given, optional biases on all four attention projections.
///
/// Qwen2 and Qwen3 may limit some layers to a sliding window: with `use_sliding_window`,
/// the layers `layer_types` marks `"sliding_attention"` (by default those from
/// `max_window_layers` on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ModelFamily {
    #[default]
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl ModelFamily {
    const ALL: [ModelFamily; 4] = [
        ModelFamily::Llama,
        ModelFamily::Mistral,
        ModelFamily::Qwen2,
        ModelFamily::Qwen3,
    ];

    /// The `model_type` of `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            ModelFamily::Llama => "llama",
            ModelFamily::Mistral => "mistral",
            ModelFamily::Qwen2 => "qwen2",
            ModelFamily::Qwen3 => "qwen3",
        }
    }

    /// The transformers class that loads a saved directory (`architectures[0]`).
    pub fn architecture(self) -> &'static str {
        match self {
            ModelFamily::Llama => "LlamaForCausalLM",
            ModelFamily::Mistral => "MistralForCausalLM",
            ModelFamily::Qwen2 => "Qwen2ForCausalLM",
            ModelFamily::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    fn from_model_type(model_type: &str) -> Result<ModelFamily> {
        ModelFamily::ALL
            .into_iter()
            .find(|family| family.model_type() == model_type)
            .ok_or_else(|| {
                let known: Vec<String> = ModelFamily::ALL
                    .iter()
                    .map(|f| format!("{:?}", f.model_type()))
                    .collect();
                config_error(
                    "model_type",
                    format!(
                        "{model_type:?} is not supported (expected one of: {})",
                        known.join(", ")
                    ),
                )
            })
    }

    /// transformers' default `max_position_embeddings` for the family's config class.
    fn default_max_position_embeddings(self) -> usize {
        match self {
            ModelFamily::Llama => 2048,
            ModelFamily::Mistral => 4096 * 32,
            ModelFamily::Qwen2 | ModelFamily::Qwen3 => 32768,
        }
    }
}

/// The architecture of a decoder of one of the [`ModelFamily`]s, field for field the
/// Hugging Face `config.json` of a `LlamaForCausalLM`, `MistralForCausalLM`,
/// `Qwen2ForCausalLM` or `Qwen3ForCausalLM`.
///
/// [`LlamaConfig::from_file`] reads both layouts transformers writes: version 4's
/// top-level `rope_theta` / `rope_scaling` and version 5's `rope_parameters` block. It
/// refuses, naming the key, every key that would change the computation in a way ladder
/// does not implement (an unknown RoPE type or RoPE parameter, an unknown attention
/// layer type, quantization, an unknown key) and ignores only keys known not to matter
/// (`transformers_version`, `use_cache`, `initializer_range`, ...).
///
/// Reading resolves the defaults transformers applies (`num_key_value_heads` =
/// `num_attention_heads`, `rms_norm_eps` 1e-6, `rope_theta` 10000, Mistral's window 4096,
/// Qwen3's `head_dim` 128, Qwen's window layers from `max_window_layers`, ...); writing adds `model_type`, `architectures` and
/// `torch_dtype: "float32"` so that `transformers` loads the directory as is, and writes
/// RoPE scaling in the version 4 layout (`rope_scaling`), which both versions read. A
/// config is only usable once [`LlamaConfig::validate`] accepts it;
/// [`LlamaConfig::from_file`] and every model constructor call it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ConfigFile", into = "ConfigFile")]
pub struct LlamaConfig {
    /// Which decoder family the weights belong to (`model_type`).
    pub model_type: ModelFamily,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Key/value heads of grouped-query attention; each serves
    /// `num_attention_heads / num_key_value_heads` consecutive query heads.
    pub num_key_value_heads: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    /// When true there is no `lm_head.weight`: the token embedding is the output head.
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// Width of one attention head; when absent `hidden_size / num_attention_heads`, or
    /// 128 for `qwen3` (transformers' `Qwen3Config` default).
    pub head_dim: Option<usize>,
    /// The MLP activation; only `"silu"` (SwiGLU) is supported.
    pub hidden_act: String,
    /// Biases on the q, k, v and o projections (`llama` and `qwen3` only; `qwen2` has q/k/v
    /// biases regardless).
    pub attention_bias: bool,
    /// Biases on the gate, up and down projections (`llama` only).
    pub mlp_bias: bool,
    /// The RoPE scaling; `None` is plain RoPE.
    pub rope_scaling: Option<RopeScaling>,
    /// In a windowed layer each query attends to itself and the `sliding_window - 1`
    /// positions before it; `None` attends to every earlier position. Only `mistral` (every
    /// layer) and `qwen2` / `qwen3` (the layers of [`LlamaConfig::layer_types`]) have one.
    pub sliding_window: Option<usize>,
    /// Which layers use the sliding window (transformers' `layer_types`), one entry per
    /// layer; `None` means every layer when there is a window. Only Qwen sets it.
    pub layer_types: Option<Vec<AttentionType>>,
}

/// The attention of one decoder layer, as transformers' `layer_types` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionType {
    /// `"full_attention"`: every earlier position.
    Full,
    /// `"sliding_attention"`: the last `sliding_window` positions.
    Sliding,
}

impl AttentionType {
    fn name(self) -> &'static str {
        match self {
            AttentionType::Full => "full_attention",
            AttentionType::Sliding => "sliding_attention",
        }
    }
}

impl Default for LlamaConfig {
    /// transformers' `LlamaConfig()` defaults (LLaMA-7B sized).
    fn default() -> Self {
        LlamaConfig {
            model_type: ModelFamily::Llama,
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 32,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            max_position_embeddings: 2048,
            tie_word_embeddings: false,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            head_dim: None,
            hidden_act: "silu".to_string(),
            attention_bias: false,
            mlp_bias: false,
            rope_scaling: None,
            sliding_window: None,
            layer_types: None,
        }
    }
}

impl LlamaConfig {
    /// Reads and validates a `config.json` in the transformers 4 or 5 layout; see the
    /// type's documentation for the keys it refuses.
    pub fn from_file(path: &Path) -> Result<LlamaConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))?;
        let mut value: Value = serde_json::from_str(&text).map_err(|e| {
            TrainerError::invalid(
                format!("{}:{}:{}", path.display(), e.line(), e.column()),
                e.to_string(),
            )
        })?;
        let Some(fields) = value.as_object_mut() else {
            return Err(TrainerError::invalid(
                path.display(),
                "expected a JSON object",
            ));
        };
        check_file_keys(fields)?;
        let file: ConfigFile = serde_json::from_value(value)
            .map_err(|e| TrainerError::invalid(path.display(), e.to_string()))?;
        let config = LlamaConfig::try_from(file)?;
        config.validate()?;
        Ok(config)
    }

    /// Writes `config.json` content (pretty JSON, transformers-loadable).
    pub fn to_json(&self) -> String {
        // Serializing plain data cannot fail.
        serde_json::to_string_pretty(self).expect("config serializes")
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        match (self.head_dim, self.model_type) {
            (Some(width), _) => width,
            (None, ModelFamily::Qwen3) => 128,
            (None, _) => self.hidden_size / self.num_attention_heads.max(1),
        }
    }

    /// Whether the q, k and v projections carry biases.
    pub fn qkv_bias(&self) -> bool {
        match self.model_type {
            ModelFamily::Qwen2 => true,
            ModelFamily::Llama | ModelFamily::Qwen3 => self.attention_bias,
            ModelFamily::Mistral => false,
        }
    }

    /// Whether the o projection carries a bias.
    pub fn o_bias(&self) -> bool {
        matches!(self.model_type, ModelFamily::Llama | ModelFamily::Qwen3) && self.attention_bias
    }

    /// The attention window of layer `layer` (0-based), `None` for full attention.
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        match &self.layer_types {
            Some(types) if types.get(layer) != Some(&AttentionType::Sliding) => None,
            _ => self.sliding_window,
        }
    }

    /// Whether q and k are RMS-normalised per head before RoPE (`q_norm`, `k_norm`).
    pub fn qk_norm(&self) -> bool {
        self.model_type == ModelFamily::Qwen3
    }

    /// Checks that the sizes are consistent and that the config asks for nothing ladder does
    /// not implement. Errors name the `config.json` field at fault.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(config_error(field, "must be greater than 0"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(config_error(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads ({})",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        match self.head_dim {
            Some(0) => return Err(config_error("head_dim", "must be greater than 0")),
            None if self.model_type != ModelFamily::Qwen3
                && !self.hidden_size.is_multiple_of(self.num_attention_heads) =>
            {
                return Err(config_error(
                    "num_attention_heads",
                    format!(
                        "{} does not divide hidden_size ({}); set head_dim explicitly or change the head count",
                        self.num_attention_heads, self.hidden_size
                    ),
                ));
            }
            _ => {}
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(config_error(
                "head_dim",
                format!(
                    "{} is odd; rotary embeddings need an even head width",
                    self.head_dim()
                ),
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(config_error("rms_norm_eps", "must be a finite number >= 0"));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(config_error("rope_theta", "must be a finite number > 0"));
        }
        if self.hidden_act != "silu" {
            return Err(config_error(
                "hidden_act",
                format!(
                    "\"{}\" is not supported (expected \"silu\")",
                    self.hidden_act
                ),
            ));
        }
        let family = self.model_type.model_type();
        if self.attention_bias
            && !matches!(self.model_type, ModelFamily::Llama | ModelFamily::Qwen3)
        {
            return Err(config_error(
                "attention_bias",
                format!("model_type {family:?} has no attention_bias setting (expected false)"),
            ));
        }
        if self.mlp_bias && self.model_type != ModelFamily::Llama {
            return Err(config_error(
                "mlp_bias",
                format!("model_type {family:?} has no MLP biases (expected false)"),
            ));
        }
        if let Some(scaling) = &self.rope_scaling {
            scaling.validate("rope_scaling")?;
            if let RopeScaling::LongRope(long) = scaling {
                let half = self.head_dim() / 2;
                for (key, factors) in [
                    ("short_factor", &long.short_factor),
                    ("long_factor", &long.long_factor),
                ] {
                    if factors.len() != half {
                        return Err(config_error(
                            &format!("rope_scaling.{key}"),
                            format!(
                                "has {} factors, expected head_dim / 2 = {half}",
                                factors.len()
                            ),
                        ));
                    }
                }
            }
            if matches!(scaling, RopeScaling::Dynamic { .. }) && self.head_dim() <= 2 {
                return Err(config_error(
                    "rope_scaling.rope_type",
                    "dynamic RoPE needs head_dim > 2 (its exponent is head_dim / (head_dim - 2))",
                ));
            }
        }
        let qwen = matches!(self.model_type, ModelFamily::Qwen2 | ModelFamily::Qwen3);
        match self.sliding_window {
            Some(0) => return Err(config_error("sliding_window", "must be greater than 0")),
            Some(window) if !qwen && self.model_type != ModelFamily::Mistral => {
                return Err(config_error(
                    "sliding_window",
                    format!(
                        "{window}: sliding-window attention is implemented for model_type \"mistral\", \"qwen2\" and \"qwen3\" only (expected null)"
                    ),
                ));
            }
            _ => {}
        }
        if let Some(types) = &self.layer_types {
            if !qwen {
                return Err(config_error(
                    "layer_types",
                    format!("model_type {family:?} has no per-layer attention types"),
                ));
            }
            if types.len() != self.num_hidden_layers {
                return Err(config_error(
                    "layer_types",
                    format!(
                        "{} entries for {} layers (num_hidden_layers)",
                        types.len(),
                        self.num_hidden_layers
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Number of scalar weights, counting `lm_head` only when it is not tied.
    pub fn parameter_count(&self) -> usize {
        let d = self.hidden_size;
        let inter = self.intermediate_size;
        let q_width = self.num_attention_heads * self.head_dim();
        let kv_width = self.num_key_value_heads * self.head_dim();
        let mut attention = d * q_width + 2 * d * kv_width + q_width * d;
        if self.qkv_bias() {
            attention += q_width + 2 * kv_width;
        }
        if self.o_bias() {
            attention += d;
        }
        if self.qk_norm() {
            attention += 2 * self.head_dim();
        }
        let mut mlp = 3 * d * inter;
        if self.mlp_bias {
            mlp += 2 * inter + d;
        }
        let norms = 2 * d;
        let per_layer = attention + mlp + norms;
        let embedding = self.vocab_size * d;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        embedding + self.num_hidden_layers * per_layer + d + head
    }
}

fn config_error(field: &str, message: impl Into<String>) -> TrainerError {
    TrainerError::config(format!("config.json: {field}"), message)
}

/// The `config.json` keys [`ConfigFile`] reads.
const READ_KEYS: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "rms_norm_eps",
    "rope_theta",
    "max_position_embeddings",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "head_dim",
    "hidden_act",
    "attention_bias",
    "mlp_bias",
    "rope_scaling",
    "rope_parameters",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "layer_types",
    "model_type",
    "architectures",
    "torch_dtype",
];

/// `config.json` keys that transformers writes for a model of one of the families and that
/// do not change its forward pass (bookkeeping, generation defaults, token ids used
/// elsewhere).
const INERT_KEYS: &[&str] = &[
    "_name_or_path",
    "transformers_version",
    "dtype",
    "pad_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    "use_cache",
    "initializer_range",
    "pretraining_tp",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "tokenizer_class",
    "id2label",
    "label2id",
    "problem_type",
    "finetuning_task",
    "task_specific_params",
    "torchscript",
    "use_bfloat16",
    "tf_legacy_loss",
    "is_decoder",
    "is_encoder_decoder",
    "add_cross_attention",
    "tie_encoder_decoder",
    "chunk_size_feed_forward",
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "num_return_sequences",
    "output_scores",
    "return_dict_in_generate",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "bad_words_ids",
    "diversity_penalty",
];

/// Checks every top-level key of a `config.json`: known, inert, or with a value ladder
/// implements. Family-dependent keys (`model_type`, RoPE blocks, sliding windows) are
/// checked when the [`ConfigFile`] becomes a [`LlamaConfig`]. Errors name the key at fault.
fn check_file_keys(fields: &serde_json::Map<String, Value>) -> Result<()> {
    for (key, value) in fields {
        let inert = INERT_KEYS.contains(&key.as_str());
        match key.as_str() {
            "attention_dropout" if value.as_f64() != Some(0.0) => {
                return Err(config_error(
                    key,
                    format!(
                        "{value} is not supported (ladder's attention has no dropout; expected 0)"
                    ),
                ));
            }
            "attention_dropout" => {}
            _ if READ_KEYS.contains(&key.as_str()) || inert => {}
            _ => {
                return Err(config_error(
                    key,
                    "unknown key; ladder cannot tell whether it changes the model's computation, \
                     so it refuses the config rather than ignore it",
                ));
            }
        }
    }
    Ok(())
}

/// `config.json` as written on disk: optional keys carry transformers' defaults (some of
/// them per family, resolved on conversion), and the keys transformers needs to pick the
/// model class are added on write.
#[derive(Clone, Serialize, Deserialize)]
struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    rms_norm_eps: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default, deserialize_with = "token_id")]
    bos_token_id: Option<u32>,
    /// Some checkpoints (LLaMA 3) list several end-of-sequence ids; ladder keeps the first.
    #[serde(default, deserialize_with = "token_id")]
    eos_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    head_dim: Option<usize>,
    #[serde(default = "default_hidden_act")]
    hidden_act: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attention_bias: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mlp_bias: Option<bool>,
    /// transformers 4's RoPE block (written by ladder; null for plain RoPE).
    #[serde(default)]
    rope_scaling: Option<Value>,
    /// transformers 5's RoPE block (read only).
    #[serde(default, skip_serializing)]
    rope_parameters: Option<Value>,
    /// Absent and null differ for Mistral (default 4096 against no window), hence the
    /// raw value: `None` when absent, `Some(Value::Null)` when null.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    sliding_window: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    use_sliding_window: Option<bool>,
    /// Qwen: the first layer of the default sliding-window layers (28 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_window_layers: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layer_types: Option<Vec<String>>,
    #[serde(default = "default_architectures")]
    architectures: Vec<String>,
    #[serde(default = "default_torch_dtype")]
    torch_dtype: String,
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_hidden_act() -> String {
    "silu".to_string()
}
fn default_architectures() -> Vec<String> {
    vec![ModelFamily::Llama.architecture().to_string()]
}
fn default_torch_dtype() -> String {
    "float32".to_string()
}

/// Accepts a token id written as a number, a list of numbers (first kept) or null.
fn token_id<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TokenId {
        One(u32),
        Many(Vec<u32>),
    }
    let value: Option<TokenId> = Option::deserialize(deserializer)?;
    Ok(match value {
        None => None,
        Some(TokenId::One(id)) => Some(id),
        Some(TokenId::Many(ids)) => ids.first().copied(),
    })
}

/// Keeps a present key's value as is, null included (absent keys take `None` by default).
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// One of the RoPE blocks, read when present and not null.
fn rope_block(value: Option<&Value>, field: &str) -> Result<Option<RopeBlock>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(block)) => read_rope_block(block, field).map(Some),
        Some(other) => Err(config_error(
            field,
            format!("expected an object, found {other}"),
        )),
    }
}

impl TryFrom<ConfigFile> for LlamaConfig {
    type Error = TrainerError;

    /// Resolves the family's defaults and the RoPE settings of either layout. The RoPE
    /// blocks and `rope_theta` may each be given in several places only if they agree.
    fn try_from(file: ConfigFile) -> Result<Self> {
        let model_type =
            ModelFamily::from_model_type(file.model_type.as_deref().unwrap_or("llama"))?;
        let max_position_embeddings = file
            .max_position_embeddings
            .unwrap_or(model_type.default_max_position_embeddings());

        let v4 = rope_block(file.rope_scaling.as_ref(), "rope_scaling")?;
        let v5 = rope_block(file.rope_parameters.as_ref(), "rope_parameters")?;
        let block = match (v4, v5) {
            (Some(v4), Some(v5)) if v4.scaling != v5.scaling => {
                return Err(config_error(
                    "rope_scaling",
                    "disagrees with rope_parameters; give the RoPE settings once",
                ));
            }
            (Some(v4), Some(v5)) => Some(RopeBlock {
                theta: v5.theta.or(v4.theta),
                scaling: v4.scaling,
            }),
            (v4, v5) => v4.or(v5),
        };
        let (block_theta, rope_scaling) = match block {
            Some(RopeBlock { theta, scaling }) => (theta, scaling),
            None => (None, None),
        };
        let rope_theta = match (file.rope_theta, block_theta) {
            (Some(top), Some(inner)) if top != inner => {
                return Err(config_error(
                    "rope_theta",
                    format!("{top} disagrees with the RoPE block's rope_theta {inner}"),
                ));
            }
            (top, inner) => top.or(inner).unwrap_or(10000.0),
        };

        let family = model_type.model_type();
        let qwen = matches!(model_type, ModelFamily::Qwen2 | ModelFamily::Qwen3);
        if file.use_sliding_window == Some(true) && !qwen {
            return Err(config_error(
                "use_sliding_window",
                format!("model_type {family:?} has no sliding-window layers (expected false)"),
            ));
        }
        let mut layer_types = Vec::new();
        for (index, name) in file.layer_types.iter().flatten().enumerate() {
            layer_types.push(match name.as_str() {
                "full_attention" => AttentionType::Full,
                "sliding_attention" => AttentionType::Sliding,
                other => {
                    return Err(config_error(
                        &format!("layer_types[{index}]"),
                        format!(
                            "{other:?} is not supported (expected \"full_attention\" or \"sliding_attention\")"
                        ),
                    ));
                }
            });
        }
        let window = match &file.sliding_window {
            None => None,
            Some(Value::Null) => Some(None),
            Some(value) => match value.as_u64() {
                Some(w) => Some(Some(w as usize)),
                None => {
                    return Err(config_error(
                        "sliding_window",
                        format!("expected a whole number or null, found {value}"),
                    ));
                }
            },
        };
        let sliding_window = match model_type {
            // MistralConfig's default window.
            ModelFamily::Mistral => window.unwrap_or(Some(4096)),
            // Qwen configs drop the window unless use_sliding_window (default 4096).
            ModelFamily::Qwen2 | ModelFamily::Qwen3 if file.use_sliding_window == Some(true) => {
                match window.unwrap_or(Some(4096)) {
                    Some(window) => Some(window),
                    None => {
                        return Err(config_error(
                            "sliding_window",
                            "null, but use_sliding_window is true (expected a window length)",
                        ));
                    }
                }
            }
            ModelFamily::Qwen2 | ModelFamily::Qwen3 => None,
            // A window no shorter than the longest sequence is no window.
            ModelFamily::Llama => window.flatten().filter(|w| *w < max_position_embeddings),
        };
        // Layer types matter only where there is a window: Qwen's, by default from
        // max_window_layers on. Elsewhere every layer must be a full-attention one.
        let layer_types = match (qwen, sliding_window) {
            (true, Some(_)) if layer_types.is_empty() => {
                let first_sliding = file.max_window_layers.unwrap_or(28);
                let types = (0..file.num_hidden_layers)
                    .map(|layer| {
                        if layer >= first_sliding {
                            AttentionType::Sliding
                        } else {
                            AttentionType::Full
                        }
                    })
                    .collect();
                Some(types)
            }
            (true, Some(_)) => Some(layer_types),
            _ if layer_types.contains(&AttentionType::Sliding) => {
                return Err(config_error(
                    "layer_types",
                    format!(
                        "\"sliding_attention\" layers without a window are not supported for model_type {family:?}"
                    ),
                ));
            }
            _ => None,
        };

        Ok(LlamaConfig {
            model_type,
            vocab_size: file.vocab_size,
            hidden_size: file.hidden_size,
            intermediate_size: file.intermediate_size,
            num_hidden_layers: file.num_hidden_layers,
            num_attention_heads: file.num_attention_heads,
            num_key_value_heads: file.num_key_value_heads.unwrap_or(file.num_attention_heads),
            rms_norm_eps: file.rms_norm_eps,
            rope_theta,
            max_position_embeddings,
            tie_word_embeddings: file.tie_word_embeddings,
            bos_token_id: file.bos_token_id,
            eos_token_id: file.eos_token_id,
            head_dim: file.head_dim,
            hidden_act: file.hidden_act,
            attention_bias: file.attention_bias.unwrap_or(false),
            mlp_bias: file.mlp_bias.unwrap_or(false),
            rope_scaling,
            sliding_window,
            layer_types,
        })
    }
}

impl From<LlamaConfig> for ConfigFile {
    /// Writes only the keys the family's transformers config class has, so that the
    /// directory reads back identically in ladder and in transformers.
    fn from(config: LlamaConfig) -> Self {
        let family = config.model_type;
        let has_attention_bias = matches!(family, ModelFamily::Llama | ModelFamily::Qwen3);
        let qwen = matches!(family, ModelFamily::Qwen2 | ModelFamily::Qwen3);
        let layer_types = config.layer_types.clone().filter(|_| qwen);
        ConfigFile {
            model_type: Some(family.model_type().to_string()),
            vocab_size: config.vocab_size,
            hidden_size: config.hidden_size,
            intermediate_size: config.intermediate_size,
            num_hidden_layers: config.num_hidden_layers,
            num_attention_heads: config.num_attention_heads,
            num_key_value_heads: Some(config.num_key_value_heads),
            rms_norm_eps: config.rms_norm_eps,
            rope_theta: Some(config.rope_theta),
            max_position_embeddings: Some(config.max_position_embeddings),
            tie_word_embeddings: config.tie_word_embeddings,
            bos_token_id: config.bos_token_id,
            eos_token_id: config.eos_token_id,
            head_dim: config.head_dim,
            hidden_act: config.hidden_act,
            attention_bias: has_attention_bias.then_some(config.attention_bias),
            mlp_bias: (family == ModelFamily::Llama).then_some(config.mlp_bias),
            rope_scaling: config.rope_scaling.as_ref().map(RopeScaling::to_json),
            rope_parameters: None,
            sliding_window: match family {
                ModelFamily::Mistral => {
                    Some(config.sliding_window.map_or(Value::Null, Value::from))
                }
                _ => config.sliding_window.map(Value::from),
            },
            use_sliding_window: qwen.then_some(config.sliding_window.is_some()),
            // Older transformers read max_window_layers, newer ones layer_types: both are
            // written, the first as the first sliding layer.
            max_window_layers: layer_types.as_ref().map(|types| {
                types
                    .iter()
                    .position(|t| *t == AttentionType::Sliding)
                    .unwrap_or(types.len())
            }),
            layer_types: layer_types
                .map(|types| types.iter().map(|t| t.name().to_string()).collect()),
            architectures: vec![family.architecture().to_string()],
            torch_dtype: default_torch_dtype(),
        }
    }
}

/// Low-rank adapters: each target projection `W` becomes `W + (alpha / rank) * B A` with
/// `A: (rank, in)` and `B: (out, rank)`, and only `A` and `B` train.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    /// Projection names among [`LORA_TARGETS`].
    pub targets: Vec<String>,
}

impl LoraConfig {
    /// The factor applied to the adapter path, `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Checks rank, alpha and target names; errors name the `lora.*` field.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(TrainerError::config("lora.rank", "must be greater than 0"));
        }
        if !self.alpha.is_finite() {
            return Err(TrainerError::config(
                "lora.alpha",
                "must be a finite number",
            ));
        }
        if self.targets.is_empty() {
            return Err(TrainerError::config(
                "lora.targets",
                format!("must name at least one of: {}", LORA_TARGETS.join(", ")),
            ));
        }
        for target in &self.targets {
            if !LORA_TARGETS.contains(&target.as_str()) {
                return Err(TrainerError::config(
                    "lora.targets",
                    format!(
                        "unknown module \"{target}\" (expected one of: {})",
                        LORA_TARGETS.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether projection `module` (e.g. `q_proj`) carries an adapter.
    pub fn targets_module(&self, module: &str) -> bool {
        self.targets.iter().any(|t| t == module)
    }
}

/// PEFT's `adapter_config.json`, reduced to what ladder reads and writes. Options that change
/// the adapter's math (rsLoRA, DoRA, per-module ranks, ...) are rejected on read.
#[derive(Serialize, Deserialize)]
pub(super) struct AdapterConfigFile {
    peft_type: String,
    /// Where PEFT loads the base model from; ladder does not read it.
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    #[serde(default)]
    task_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    target_modules: serde_json::Value,
    #[serde(default)]
    lora_dropout: f64,
    #[serde(default = "default_bias")]
    bias: String,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    modules_to_save: Option<serde_json::Value>,
    #[serde(default)]
    layers_to_transform: Option<serde_json::Value>,
    #[serde(default)]
    rank_pattern: Option<serde_json::Value>,
    #[serde(default)]
    alpha_pattern: Option<serde_json::Value>,
    #[serde(default)]
    inference_mode: bool,
}

fn default_bias() -> String {
    "none".to_string()
}

impl AdapterConfigFile {
    pub(super) fn from_lora(lora: &LoraConfig, base_model: &str) -> Self {
        AdapterConfigFile {
            peft_type: "LORA".to_string(),
            base_model_name_or_path: Some(base_model.to_string()),
            task_type: Some("CAUSAL_LM".to_string()),
            r: lora.rank,
            lora_alpha: lora.alpha,
            target_modules: serde_json::json!(lora.targets),
            lora_dropout: 0.0,
            bias: default_bias(),
            fan_in_fan_out: false,
            use_rslora: false,
            use_dora: false,
            modules_to_save: None,
            layers_to_transform: None,
            rank_pattern: Some(serde_json::json!({})),
            alpha_pattern: Some(serde_json::json!({})),
            inference_mode: false,
        }
    }

    /// Reads `adapter_config.json` and converts it, rejecting what ladder cannot apply.
    pub(super) fn read(path: &Path) -> Result<LoraConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))?;
        let file: AdapterConfigFile = serde_json::from_str(&text).map_err(|e| {
            TrainerError::invalid(
                format!("{}:{}:{}", path.display(), e.line(), e.column()),
                e.to_string(),
            )
        })?;
        let unsupported =
            |what: &str| TrainerError::invalid(path.display(), format!("{what} is not supported"));
        let is_set = |value: &Option<serde_json::Value>| match value {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Object(map)) => !map.is_empty(),
            Some(serde_json::Value::Array(list)) => !list.is_empty(),
            Some(_) => true,
        };
        if file.peft_type != "LORA" {
            return Err(unsupported(&format!("peft_type \"{}\"", file.peft_type)));
        }
        if file.bias != "none" {
            return Err(unsupported(&format!("bias \"{}\"", file.bias)));
        }
        if file.fan_in_fan_out {
            return Err(unsupported("fan_in_fan_out"));
        }
        if file.use_rslora {
            return Err(unsupported("use_rslora"));
        }
        if file.use_dora {
            return Err(unsupported("use_dora"));
        }
        if is_set(&file.modules_to_save) {
            return Err(unsupported("modules_to_save"));
        }
        if is_set(&file.layers_to_transform) {
            return Err(unsupported("layers_to_transform"));
        }
        if is_set(&file.rank_pattern) || is_set(&file.alpha_pattern) {
            return Err(unsupported("rank_pattern / alpha_pattern"));
        }
        let targets: Vec<String> = serde_json::from_value(file.target_modules).map_err(|_| {
            TrainerError::invalid(
                path.display(),
                "target_modules must be a list of module names (regular expressions are not supported)",
            )
        })?;
        let lora = LoraConfig {
            rank: file.r,
            alpha: file.lora_alpha,
            targets,
        };
        lora.validate()
            .map_err(|e| TrainerError::invalid(path.display(), e.to_string()))?;
        Ok(lora)
    }
}
