//! The two configurations a model is built from: [`LlamaConfig`], the architecture, read from
//! and written to a Hugging Face `config.json`; and [`LoraConfig`], the low-rank adapters, read
//! from and written to PEFT's `adapter_config.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Result, TrainerError};

/// The projections a LoRA adapter may wrap, in the order they appear in a decoder layer
/// (the list the sweep's `train:` block is checked against).
pub use ladder_spec::train_config::LORA_TARGETS;

/// The architecture of a LLaMA model, field for field the Hugging Face `config.json` of a
/// `LlamaForCausalLM`.
///
/// [`LlamaConfig::from_file`] reads both layouts transformers writes: version 4's
/// top-level `rope_theta` / `rope_scaling` and version 5's `rope_parameters` block. It
/// refuses, naming the key, every key that would change the computation in a way ladder
/// does not implement (a RoPE scaling type, sliding-window attention, quantization, an
/// unknown key) and ignores only keys known not to matter (`transformers_version`,
/// `use_cache`, `initializer_range`, ...).
///
/// Reading resolves the defaults transformers applies (`num_key_value_heads` =
/// `num_attention_heads`, `rms_norm_eps` 1e-6, `rope_theta` 10000, ...); writing adds
/// `model_type: "llama"`, `architectures: ["LlamaForCausalLM"]` and `torch_dtype: "float32"`
/// so that `transformers` loads the directory as is. A config is only usable once
/// [`LlamaConfig::validate`] accepts it; [`LlamaConfig::from_file`] and every model
/// constructor call it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "ConfigFile", into = "ConfigFile")]
pub struct LlamaConfig {
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
    /// Width of one attention head; `hidden_size / num_attention_heads` when absent.
    pub head_dim: Option<usize>,
    /// The MLP activation; only `"silu"` (SwiGLU) is supported.
    pub hidden_act: String,
    /// Must be false: ladder's LLaMA has no attention biases.
    pub attention_bias: bool,
    /// Must be false: ladder's LLaMA has no MLP biases.
    pub mlp_bias: bool,
    /// Must be absent or null: only plain RoPE is supported.
    pub rope_scaling: Option<serde_json::Value>,
}

impl Default for LlamaConfig {
    /// transformers' `LlamaConfig()` defaults (LLaMA-7B sized).
    fn default() -> Self {
        LlamaConfig {
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
        }
    }
}

impl LlamaConfig {
    /// Reads and validates a `config.json` in the transformers 4 or 5 layout; see the
    /// type's documentation for the keys it refuses.
    pub fn from_file(path: &Path) -> Result<LlamaConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))?;
        let mut value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
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
        let config: LlamaConfig = serde_json::from_value(value)
            .map_err(|e| TrainerError::invalid(path.display(), e.to_string()))?;
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
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
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
            Some(_) => {}
            None if !self.hidden_size.is_multiple_of(self.num_attention_heads) => {
                return Err(config_error(
                    "num_attention_heads",
                    format!(
                        "{} does not divide hidden_size ({}); set head_dim explicitly or change the head count",
                        self.num_attention_heads, self.hidden_size
                    ),
                ));
            }
            None => {}
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
        if self.attention_bias {
            return Err(config_error(
                "attention_bias",
                "attention biases are not supported (expected false)",
            ));
        }
        if self.mlp_bias {
            return Err(config_error(
                "mlp_bias",
                "MLP biases are not supported (expected false)",
            ));
        }
        if let Some(scaling) = self.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            let kind = scaling
                .get("rope_type")
                .or_else(|| scaling.get("type"))
                .and_then(|t| t.as_str());
            if kind != Some("default") {
                return Err(config_error(
                    "rope_scaling",
                    format!(
                        "RoPE scaling {} is not supported (expected null or rope_type \"default\")",
                        kind.map_or_else(|| scaling.to_string(), |k| format!("{k:?}"))
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Number of scalar weights, counting `lm_head` only when it is not tied.
    pub fn parameter_count(&self) -> usize {
        let d = self.hidden_size;
        let q_width = self.num_attention_heads * self.head_dim();
        let kv_width = self.num_key_value_heads * self.head_dim();
        let attention = d * q_width + 2 * d * kv_width + q_width * d;
        let mlp = 3 * d * self.intermediate_size;
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
    "model_type",
    "architectures",
    "torch_dtype",
];

/// `config.json` keys that transformers writes for a LLaMA model and that do not change
/// its forward pass (bookkeeping, generation defaults, token ids used elsewhere).
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
    "max_window_layers",
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

/// Checks every top-level key of a `config.json` and rewrites transformers 5's
/// `rope_parameters` into the top-level `rope_theta` / `rope_scaling` [`ConfigFile`]
/// reads. Errors name the key at fault.
fn check_file_keys(fields: &mut serde_json::Map<String, serde_json::Value>) -> Result<()> {
    use serde_json::Value;
    for (key, value) in fields.iter() {
        let inert = INERT_KEYS.contains(&key.as_str());
        match key.as_str() {
            "model_type" if !matches!(value.as_str(), Some("llama" | "mistral")) => {
                return Err(config_error(
                    key,
                    format!("{value} is not supported (expected \"llama\" or \"mistral\")"),
                ));
            }
            "attention_dropout" if value.as_f64() != Some(0.0) => {
                return Err(config_error(
                    key,
                    format!(
                        "{value} is not supported (ladder's attention has no dropout; expected 0)"
                    ),
                ));
            }
            "attention_dropout" => {}
            "sliding_window" => {
                let window = value.as_u64();
                let max_positions = fields
                    .get("max_position_embeddings")
                    .and_then(Value::as_u64)
                    .unwrap_or(2048);
                if !value.is_null() && window.is_none_or(|w| w < max_positions) {
                    return Err(config_error(
                        key,
                        format!(
                            "{value} is not supported (ladder has no sliding-window attention; expected null)"
                        ),
                    ));
                }
            }
            "use_sliding_window" if value.as_bool() == Some(true) => {
                return Err(config_error(
                    key,
                    "sliding-window attention is not supported (expected false)",
                ));
            }
            "use_sliding_window" => {}
            "layer_types" => {
                let all_full = value.as_array().is_some_and(|types| {
                    types.iter().all(|t| t.as_str() == Some("full_attention"))
                });
                if !all_full {
                    return Err(config_error(
                        key,
                        "only \"full_attention\" layers are supported",
                    ));
                }
            }
            "rope_parameters" => {}
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
    let Some(parameters) = fields.remove("rope_parameters") else {
        return Ok(());
    };
    let Value::Object(parameters) = parameters else {
        return Err(config_error(
            "rope_parameters",
            format!("expected an object, found {parameters}"),
        ));
    };
    // The RoPE type is checked first: it is what a scaling block's other keys belong to.
    for key in ["rope_type", "type"] {
        match parameters.get(key) {
            Some(value) if value.as_str() != Some("default") => {
                return Err(config_error(
                    &format!("rope_parameters.{key}"),
                    format!("RoPE scaling {value} is not supported (expected \"default\")"),
                ));
            }
            _ => {}
        }
    }
    for (key, value) in &parameters {
        let field = format!("rope_parameters.{key}");
        match key.as_str() {
            "rope_type" | "type" => {}
            "rope_theta" => {
                if let Some(top) = fields.get("rope_theta").filter(|top| *top != value) {
                    return Err(config_error(
                        "rope_theta",
                        format!("{top} disagrees with rope_parameters.rope_theta {value}"),
                    ));
                }
                fields.insert("rope_theta".to_string(), value.clone());
            }
            _ => {
                return Err(config_error(
                    &field,
                    "is not supported (ladder implements plain RoPE with rope_theta only)",
                ));
            }
        }
    }
    Ok(())
}

/// `config.json` as written on disk: optional keys carry transformers' defaults, and the
/// keys transformers needs to pick the model class are added on write.
#[derive(Clone, Serialize, Deserialize)]
struct ConfigFile {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    rope_theta: f64,
    #[serde(default = "default_max_position_embeddings")]
    max_position_embeddings: usize,
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
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_model_type")]
    model_type: String,
    #[serde(default = "default_architectures")]
    architectures: Vec<String>,
    #[serde(default = "default_torch_dtype")]
    torch_dtype: String,
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10000.0
}
fn default_max_position_embeddings() -> usize {
    2048
}
fn default_hidden_act() -> String {
    "silu".to_string()
}
fn default_model_type() -> String {
    "llama".to_string()
}
fn default_architectures() -> Vec<String> {
    vec!["LlamaForCausalLM".to_string()]
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

impl From<ConfigFile> for LlamaConfig {
    fn from(file: ConfigFile) -> Self {
        LlamaConfig {
            vocab_size: file.vocab_size,
            hidden_size: file.hidden_size,
            intermediate_size: file.intermediate_size,
            num_hidden_layers: file.num_hidden_layers,
            num_attention_heads: file.num_attention_heads,
            num_key_value_heads: file.num_key_value_heads.unwrap_or(file.num_attention_heads),
            rms_norm_eps: file.rms_norm_eps,
            rope_theta: file.rope_theta,
            max_position_embeddings: file.max_position_embeddings,
            tie_word_embeddings: file.tie_word_embeddings,
            bos_token_id: file.bos_token_id,
            eos_token_id: file.eos_token_id,
            head_dim: file.head_dim,
            hidden_act: file.hidden_act,
            attention_bias: file.attention_bias,
            mlp_bias: file.mlp_bias,
            rope_scaling: file.rope_scaling,
        }
    }
}

impl From<LlamaConfig> for ConfigFile {
    fn from(config: LlamaConfig) -> Self {
        ConfigFile {
            vocab_size: config.vocab_size,
            hidden_size: config.hidden_size,
            intermediate_size: config.intermediate_size,
            num_hidden_layers: config.num_hidden_layers,
            num_attention_heads: config.num_attention_heads,
            num_key_value_heads: Some(config.num_key_value_heads),
            rms_norm_eps: config.rms_norm_eps,
            rope_theta: config.rope_theta,
            max_position_embeddings: config.max_position_embeddings,
            tie_word_embeddings: config.tie_word_embeddings,
            bos_token_id: config.bos_token_id,
            eos_token_id: config.eos_token_id,
            head_dim: config.head_dim,
            hidden_act: config.hidden_act,
            attention_bias: config.attention_bias,
            mlp_bias: config.mlp_bias,
            rope_scaling: config.rope_scaling,
            model_type: default_model_type(),
            architectures: default_architectures(),
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
