//! The LLaMA-architecture decoder ladder trains: a [`Model`] built from a [`LlamaConfig`],
//! either fresh ([`Model::random`]) or from a Hugging Face checkpoint directory
//! ([`Model::load`]), optionally carrying LoRA adapters ([`Model::add_lora`]). The config's
//! [`ModelFamily`] (LLaMA, Mistral, Qwen2, Qwen3) decides the few places the families
//! differ: projection biases, per-head q/k norms, a sliding attention window.
//!
//! - `config` holds [`LlamaConfig`] (`config.json`) and [`LoraConfig`] (PEFT's
//!   `adapter_config.json`).
//! - `rope` holds the RoPE scaling types ([`RopeScaling`]) and their inverse frequencies.
//! - `decoder` holds the blocks (RMSNorm, rotary embeddings, grouped-query attention, SwiGLU),
//!   written only with differentiable candle ops so every weight receives its gradient.
//! - `checkpoint` reads and writes checkpoints with transformers' and PEFT's exact tensor
//!   names, so a directory written by ladder loads in `LlamaForCausalLM` and vice versa.
//!
//! Data flow: token ids `(batch, seq)` -> embedding -> decoder layers -> final norm ->
//! output head -> logits `(batch, seq, vocab)` for every position. The optimizer sees the
//! [`Var`]s of [`Model::trainable`]: every weight in full fine-tuning, only the adapters with
//! LoRA, where base weights are frozen tensors outside any optimizer's reach. A model loaded
//! for scoring ([`Model::load`]) keeps its frozen weights in the checkpoint's dtype (bf16,
//! f16) and computes in f32.

mod checkpoint;
mod config;
mod decoder;
mod rope;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use checkpoint::write_random_checkpoint;
pub use config::{
    AttentionType, LlamaConfig, LongRopeScaling, LoraConfig, ModelFamily, RopeScaling, YarnScaling,
    LORA_TARGETS,
};
use decoder::{Adapter, DecoderLayer, ForwardContext, Param, Projection};

use crate::{Result, TrainerError};

/// Standard deviation of fresh weights, transformers' `initializer_range` default.
const INIT_STD: f64 = 0.02;

/// A LLaMA decoder with its weights, in full-training, LoRA or scoring mode.
///
/// Invariants: in full training every weight is a trainable [`Var`]; with LoRA every base
/// weight is frozen and only the adapters are `Var`s; loaded for scoring ([`Model::load`])
/// every base weight is frozen. Trainable weights and adapters are in the model's compute
/// dtype ([`Model::dtype`], f32 unless converted with [`Model::to_dtype`]); frozen base
/// weights may be stored narrower (a bf16 checkpoint's bf16) and are widened to the compute
/// dtype where the forward pass uses them.
#[derive(Clone)]
pub struct Model {
    config: LlamaConfig,
    lora: Option<LoraConfig>,
    device: Device,
    /// The dtype the forward pass computes in (and of the logits and the adapters).
    dtype: DType,
    embed_tokens: Param,
    layers: Vec<DecoderLayer>,
    norm: Param,
    /// `None` when `tie_word_embeddings`: the embedding doubles as the output head.
    lm_head: Option<Param>,
    /// The checkpoint directory the base weights were loaded from (absolute), named as
    /// `base_model_name_or_path` when an adapter is saved; `None` for a random model.
    source: Option<std::path::PathBuf>,
}

impl Model {
    /// A fresh model: projections and embeddings drawn from normal(0, 0.02), norm weights 1,
    /// biases 0 (transformers' init), all from a `ChaCha8Rng` seeded with `seed`, so the same
    /// seed gives bit-identical weights.
    pub fn random(config: LlamaConfig, seed: u64, device: &Device) -> Result<Model> {
        config.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut weight = |name: &str| -> Result<Tensor> {
            let shape = expected_shape(&config, name);
            let count = shape.iter().product();
            let values = normal_values(&mut rng, count, INIT_STD);
            Ok(Tensor::from_vec(values, shape, device)?)
        };
        let ones = |name: &str| -> Result<Tensor> {
            Ok(Tensor::ones(
                expected_shape(&config, name),
                DType::F32,
                device,
            )?)
        };
        let mut tensors = HashMap::new();
        for name in weight_names(&config) {
            let tensor = if name.ends_with("norm.weight") {
                ones(&name)?
            } else if name.ends_with(".bias") {
                Tensor::zeros(expected_shape(&config, &name), DType::F32, device)?
            } else {
                weight(&name)?
            };
            tensors.insert(name, tensor);
        }
        Model::from_tensors(config, tensors, device, WeightMode::Trainable)
    }

    /// Builds a model from tensors keyed by HF name, every weight a fresh `Var` or frozen as
    /// `mode` says; shapes must already have been checked. It computes in f32.
    fn from_tensors(
        config: LlamaConfig,
        mut tensors: HashMap<String, Tensor>,
        device: &Device,
        mode: WeightMode,
    ) -> Result<Model> {
        let mut take_weight = |name: &str| take(&mut tensors, name, mode);
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        let (qkv_bias, o_bias, mlp_bias) = (config.qkv_bias(), config.o_bias(), config.mlp_bias);
        for i in 0..config.num_hidden_layers {
            let mut projection = |suffix: &str, biased: bool| -> Result<Projection> {
                let prefix = format!("model.layers.{i}.{suffix}");
                let bias = if biased {
                    Some(take_weight(&format!("{prefix}.bias"))?)
                } else {
                    None
                };
                Ok(Projection {
                    weight: take_weight(&format!("{prefix}.weight"))?,
                    bias,
                    adapter: None,
                })
            };
            let q_proj = projection("self_attn.q_proj", qkv_bias)?;
            let k_proj = projection("self_attn.k_proj", qkv_bias)?;
            let v_proj = projection("self_attn.v_proj", qkv_bias)?;
            let o_proj = projection("self_attn.o_proj", o_bias)?;
            let gate_proj = projection("mlp.gate_proj", mlp_bias)?;
            let up_proj = projection("mlp.up_proj", mlp_bias)?;
            let down_proj = projection("mlp.down_proj", mlp_bias)?;
            let (q_norm, k_norm) = if config.qk_norm() {
                (
                    Some(take_weight(&format!(
                        "model.layers.{i}.self_attn.q_norm.weight"
                    ))?),
                    Some(take_weight(&format!(
                        "model.layers.{i}.self_attn.k_norm.weight"
                    ))?),
                )
            } else {
                (None, None)
            };
            layers.push(DecoderLayer {
                q_proj,
                k_proj,
                v_proj,
                o_proj,
                gate_proj,
                up_proj,
                down_proj,
                input_layernorm: take_weight(&format!("model.layers.{i}.input_layernorm.weight"))?,
                post_attention_layernorm: take_weight(&format!(
                    "model.layers.{i}.post_attention_layernorm.weight"
                ))?,
                q_norm,
                k_norm,
            });
        }
        let embed_tokens = take_weight("model.embed_tokens.weight")?;
        let norm = take_weight("model.norm.weight")?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(take_weight("lm_head.weight")?)
        };
        Ok(Model {
            config,
            lora: None,
            device: device.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            source: None,
            dtype: DType::F32,
        })
    }

    /// Adds fresh LoRA adapters to the target projections of every layer and freezes every
    /// base weight. `A` is drawn kaiming-uniform (bound `1/sqrt(in)`, PEFT's init) from a
    /// `ChaCha8Rng` seeded with `seed`; `B` is zero, so the model's output is unchanged until
    /// `B` trains.
    pub fn add_lora(&mut self, lora: &LoraConfig, seed: u64) -> Result<()> {
        lora.validate()?;
        if self.lora.is_some() {
            return Err(TrainerError::config(
                "lora",
                "the model already carries LoRA adapters; save it merged and reload to add new ones",
            ));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let dtype = self.dtype();
        for layer in &mut self.layers {
            for (module, projection) in layer.projections_mut() {
                if !lora.targets_module(module) {
                    continue;
                }
                let (out_dim, in_dim) = projection.weight.tensor().dims2()?;
                let bound = 1.0 / (in_dim as f64).sqrt();
                let a_values: Vec<f32> = (0..lora.rank * in_dim)
                    .map(|_| rng.random_range(-bound..bound) as f32)
                    .collect();
                let a = Tensor::from_vec(a_values, (lora.rank, in_dim), &self.device)?
                    .to_dtype(dtype)?;
                let b = Tensor::zeros((out_dim, lora.rank), dtype, &self.device)?;
                projection.adapter = Some(Adapter {
                    a: Var::from_tensor(&a)?,
                    b: Var::from_tensor(&b)?,
                    scale: lora.scale(),
                });
            }
        }
        self.freeze_base();
        self.lora = Some(lora.clone());
        Ok(())
    }

    /// Turns every base weight into a frozen view of its current value.
    fn freeze_base(&mut self) {
        self.embed_tokens = self.embed_tokens.freeze();
        self.norm = self.norm.freeze();
        self.lm_head = self.lm_head.as_ref().map(Param::freeze);
        for layer in &mut self.layers {
            for param in layer.base_params_mut() {
                *param = param.freeze();
            }
        }
    }

    /// Logits for every position: `ids` `(batch, seq)` of u32 token ids -> `(batch, seq,
    /// vocab)` in the model's compute dtype ([`Model::dtype`]), with causal attention over
    /// positions `0..seq`. Weights stored narrower are widened one at a time where they are
    /// used and dropped right after, so at most one widened weight exists at a time.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (batch, seq) = ids.dims2()?;
        if seq == 0 || batch == 0 {
            return Err(TrainerError::invalid(
                "model input",
                format!("empty batch of token ids, shape ({batch}, {seq})"),
            ));
        }
        let ctx = ForwardContext::new(&self.config, batch, seq, self.dtype, &self.device)?;
        let flat_ids = ids.flatten_all()?;
        // Rows are picked before widening: only the batch's embeddings are converted.
        let mut hidden = self
            .embed_tokens
            .tensor()
            .index_select(&flat_ids, 0)?
            .to_dtype(self.dtype)?;
        for (layer, mask) in self.layers.iter().zip(&ctx.masks) {
            hidden = layer.forward(&hidden, &ctx, mask)?;
        }
        let norm = self.norm.value_as(self.dtype)?;
        let normed = decoder::rms_norm(&hidden, &norm, self.config.rms_norm_eps)?;
        let head = self
            .lm_head
            .as_ref()
            .unwrap_or(&self.embed_tokens)
            .value_as(self.dtype)?;
        let logits = normed.matmul(&head.t()?)?;
        Ok(logits.reshape((batch, seq, self.config.vocab_size))?)
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The adapters' settings, when the model carries LoRA adapters.
    pub fn lora(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype the forward pass computes in: that of the logits, of the adapters and of
    /// every trainable weight. Frozen base weights may be stored narrower (see
    /// [`Model::load`]); [`Model::named_tensors`] shows them as stored.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The tensors the optimizer updates, sorted by name: every weight (HF names) in full
    /// fine-tuning, only the adapters' `lora_A` / `lora_B` (PEFT names) with LoRA. The `Var`s
    /// share storage with the model, so `Var::set` updates the model in place.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        let mut vars: Vec<(String, Var)> = self
            .params()
            .into_iter()
            .filter_map(|(name, param)| param.var().map(|var| (name, var.clone())))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// Every tensor by name, sorted: base weights under HF names and adapters under PEFT
    /// names (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut tensors: Vec<(String, Tensor)> = self
            .params()
            .into_iter()
            .map(|(name, param)| (name, param.tensor().clone()))
            .collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        tensors
    }

    /// A copy of the model with every weight (and so the computation and the logits) in
    /// `dtype`, f32 or f64; f64 serves gradient checks. Trainable weights stay trainable;
    /// frozen weights stored narrower are widened.
    pub fn to_dtype(&self, dtype: DType) -> Result<Model> {
        if !matches!(dtype, DType::F32 | DType::F64) {
            return Err(TrainerError::config(
                "dtype",
                format!("{dtype:?} is not supported (expected f32 or f64)"),
            ));
        }
        let convert = |param: &Param| -> Result<Param> {
            let tensor = param.tensor().to_dtype(dtype)?;
            Ok(match param {
                Param::Trainable(_) => Param::Trainable(Var::from_tensor(&tensor)?),
                Param::Frozen(_) => Param::Frozen(tensor.detach()),
            })
        };
        let mut model = self.clone();
        model.dtype = dtype;
        model.embed_tokens = convert(&self.embed_tokens)?;
        model.norm = convert(&self.norm)?;
        model.lm_head = self.lm_head.as_ref().map(convert).transpose()?;
        for layer in &mut model.layers {
            for param in layer.base_params_mut() {
                *param = convert(param)?;
            }
            for (_, projection) in layer.projections_mut() {
                if let Some(adapter) = &mut projection.adapter {
                    adapter.a = Var::from_tensor(&adapter.a.as_tensor().to_dtype(dtype)?)?;
                    adapter.b = Var::from_tensor(&adapter.b.as_tensor().to_dtype(dtype)?)?;
                }
            }
        }
        Ok(model)
    }

    /// Every weight with its checkpoint name, adapters as `lora_A` / `lora_B` params.
    fn params(&self) -> Vec<(String, Param)> {
        let mut params = vec![
            (
                "model.embed_tokens.weight".to_string(),
                self.embed_tokens.clone(),
            ),
            ("model.norm.weight".to_string(), self.norm.clone()),
        ];
        if let Some(head) = &self.lm_head {
            params.push(("lm_head.weight".to_string(), head.clone()));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, param) in layer.base_params() {
                params.push((format!("model.layers.{i}.{name}"), param.clone()));
            }
            for (path, _, projection) in layer.projections() {
                if let Some(adapter) = &projection.adapter {
                    let (a_name, b_name) = adapter_names(i, path);
                    params.push((a_name, Param::Trainable(adapter.a.clone())));
                    params.push((b_name, Param::Trainable(adapter.b.clone())));
                }
            }
        }
        params
    }
}

/// Whether the weights a model is built from become trainable variables or frozen tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WeightMode {
    /// Every weight a fresh [`Var`] (full fine-tuning).
    Trainable,
    /// Every weight a frozen tensor, kept in its dtype (scoring).
    Frozen,
}

/// Removes tensor `name` from `tensors` as a fresh trainable `Var` or a frozen tensor.
fn take(tensors: &mut HashMap<String, Tensor>, name: &str, mode: WeightMode) -> Result<Param> {
    let tensor = tensors
        .remove(name)
        .ok_or_else(|| TrainerError::invalid("model", format!("missing tensor {name}")))?;
    Ok(match mode {
        WeightMode::Trainable => Param::Trainable(Var::from_tensor(&tensor)?),
        WeightMode::Frozen => Param::Frozen(tensor),
    })
}

/// PEFT's names for the `lora_A` and `lora_B` weights of projection `path`
/// (`self_attn.q_proj`) in layer `layer`.
fn adapter_names(layer: usize, path: &str) -> (String, String) {
    let prefix = format!("base_model.model.model.layers.{layer}.{path}");
    (
        format!("{prefix}.lora_A.weight"),
        format!("{prefix}.lora_B.weight"),
    )
}

/// The HF names of every base weight the config calls for, in a fixed order (the order
/// [`Model::random`] draws them in).
fn weight_names(config: &LlamaConfig) -> Vec<String> {
    let mut names = vec!["model.embed_tokens.weight".to_string()];
    let (qkv_bias, o_bias, mlp_bias) = (config.qkv_bias(), config.o_bias(), config.mlp_bias);
    for i in 0..config.num_hidden_layers {
        let projections = [
            ("self_attn.q_proj", qkv_bias),
            ("self_attn.k_proj", qkv_bias),
            ("self_attn.v_proj", qkv_bias),
            ("self_attn.o_proj", o_bias),
            ("mlp.gate_proj", mlp_bias),
            ("mlp.up_proj", mlp_bias),
            ("mlp.down_proj", mlp_bias),
        ];
        for (path, biased) in projections {
            names.push(format!("model.layers.{i}.{path}.weight"));
            if biased {
                names.push(format!("model.layers.{i}.{path}.bias"));
            }
        }
        if config.qk_norm() {
            names.push(format!("model.layers.{i}.self_attn.q_norm.weight"));
            names.push(format!("model.layers.{i}.self_attn.k_norm.weight"));
        }
        for path in ["input_layernorm", "post_attention_layernorm"] {
            names.push(format!("model.layers.{i}.{path}.weight"));
        }
    }
    names.push("model.norm.weight".to_string());
    if !config.tie_word_embeddings {
        names.push("lm_head.weight".to_string());
    }
    names
}

/// The shape the config requires of base weight `name` (an HF name from [`weight_names`]).
fn expected_shape(config: &LlamaConfig, name: &str) -> Vec<usize> {
    let d = config.hidden_size;
    let q_width = config.num_attention_heads * config.head_dim();
    let kv_width = config.num_key_value_heads * config.head_dim();
    let inter = config.intermediate_size;
    let mut parts = name.rsplit('.');
    let kind = parts.next().unwrap_or_default();
    let module = parts.next().unwrap_or_default();
    let (out_dim, in_dim) = match module {
        "embed_tokens" | "lm_head" => (config.vocab_size, d),
        "q_proj" => (q_width, d),
        "k_proj" | "v_proj" => (kv_width, d),
        "o_proj" => (d, q_width),
        "gate_proj" | "up_proj" => (inter, d),
        "down_proj" => (d, inter),
        "q_norm" | "k_norm" => return vec![config.head_dim()],
        _ => return vec![d],
    };
    if kind == "bias" {
        vec![out_dim]
    } else {
        vec![out_dim, in_dim]
    }
}

/// `count` values from normal(0, std) by the Box-Muller transform.
fn normal_values(rng: &mut ChaCha8Rng, count: usize, std: f64) -> Vec<f32> {
    let mut values = Vec::with_capacity(count + 1);
    while values.len() < count {
        // 1 - u lies in (0, 1], so its logarithm is finite.
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let radius = (-2.0 * u1.ln()).sqrt() * std;
        let angle = 2.0 * std::f64::consts::PI * u2;
        values.push((radius * angle.cos()) as f32);
        values.push((radius * angle.sin()) as f32);
    }
    values.truncate(count);
    values
}
