//! The decoder's building blocks, written only with differentiable candle ops (candle's fused
//! `rms_norm`, `softmax_last_dim` and `rope` kernels have no backward pass and would silently
//! drop gradients). Each block follows transformers' `modeling_llama.py` (and the Mistral,
//! Qwen2 and Qwen3 variants: projection biases, per-head q/k norms, a sliding attention
//! window) operation for operation, so logits match transformers to float rounding.
//!
//! Activations flow as 2-D `(batch * seq, width)` tensors between blocks; attention alone
//! reshapes to `(batch, heads, seq, head_dim)`.

use candle_core::{DType, Device, Tensor, Var, D};

use super::config::LlamaConfig;
use super::rope::{inverse_frequencies, RopeSettings};
use crate::Result;

/// One weight tensor: a [`Var`] the optimizer updates, or a frozen tensor that no optimizer
/// sees and from which backward never propagates further (it is a leaf without a variable).
#[derive(Clone)]
pub(super) enum Param {
    Trainable(Var),
    Frozen(Tensor),
}

impl Param {
    pub(super) fn tensor(&self) -> &Tensor {
        match self {
            Param::Trainable(var) => var.as_tensor(),
            Param::Frozen(tensor) => tensor,
        }
    }

    /// The weight in `dtype`: the tensor itself when it already is (so gradients reach a
    /// trainable weight), else a widened (or narrowed) copy. bf16 and f16 widen to f32
    /// exactly.
    pub(super) fn value_as(&self, dtype: DType) -> Result<Tensor> {
        Ok(self.tensor().to_dtype(dtype)?)
    }

    /// A frozen view of the same storage (no copy).
    pub(super) fn freeze(&self) -> Param {
        Param::Frozen(self.tensor().detach())
    }

    pub(super) fn var(&self) -> Option<&Var> {
        match self {
            Param::Trainable(var) => Some(var),
            Param::Frozen(_) => None,
        }
    }
}

/// A LoRA adapter on one projection: adds `scale * (x A^T) B^T` to the projection's output.
#[derive(Clone)]
pub(super) struct Adapter {
    /// `(rank, in)`.
    pub(super) a: Var,
    /// `(out, rank)`.
    pub(super) b: Var,
    pub(super) scale: f64,
}

/// A linear map `y = x W^T + b` (W is `(out, in)`, the PyTorch layout; the bias is
/// optional), optionally with a LoRA adapter on top (PEFT leaves the bias to the base
/// layer).
#[derive(Clone)]
pub(super) struct Projection {
    pub(super) weight: Param,
    /// `(out,)`.
    pub(super) bias: Option<Param>,
    pub(super) adapter: Option<Adapter>,
}

impl Projection {
    /// `x`: `(n, in)` -> `(n, out)`, computed in `x`'s dtype (the weight is widened to it
    /// when stored narrower).
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let mut base = x.matmul(&self.weight.value_as(dtype)?.t()?)?;
        if let Some(bias) = &self.bias {
            base = base.broadcast_add(&bias.value_as(dtype)?)?;
        }
        let Some(adapter) = &self.adapter else {
            return Ok(base);
        };
        let down = x
            .matmul(&adapter.a.as_tensor().t()?)?
            .affine(adapter.scale, 0.0)?;
        let up = down.matmul(&adapter.b.as_tensor().t()?)?;
        Ok((base + up)?)
    }

    /// `W + scale * B A`, the weight with the adapter folded in.
    pub(super) fn merged_weight(&self) -> Result<Tensor> {
        let Some(adapter) = &self.adapter else {
            return Ok(self.weight.tensor().clone());
        };
        let weight = self.weight.value_as(adapter.a.dtype())?;
        let delta = adapter
            .b
            .as_tensor()
            .matmul(adapter.a.as_tensor())?
            .affine(adapter.scale, 0.0)?;
        Ok((weight + delta)?)
    }
}

/// One pre-norm decoder block: attention then SwiGLU MLP, each with a residual connection.
#[derive(Clone)]
pub(super) struct DecoderLayer {
    pub(super) q_proj: Projection,
    pub(super) k_proj: Projection,
    pub(super) v_proj: Projection,
    pub(super) o_proj: Projection,
    pub(super) gate_proj: Projection,
    pub(super) up_proj: Projection,
    pub(super) down_proj: Projection,
    pub(super) input_layernorm: Param,
    pub(super) post_attention_layernorm: Param,
    /// Qwen3's RMSNorm over each query head, `(head_dim,)`.
    pub(super) q_norm: Option<Param>,
    /// Qwen3's RMSNorm over each key head, `(head_dim,)`.
    pub(super) k_norm: Option<Param>,
}

impl DecoderLayer {
    /// The projections with their HF names relative to the layer (`self_attn.q_proj`, ...)
    /// and module names (`q_proj`, ...), in a fixed order.
    pub(super) fn projections(&self) -> [(&'static str, &'static str, &Projection); 7] {
        [
            ("self_attn.q_proj", "q_proj", &self.q_proj),
            ("self_attn.k_proj", "k_proj", &self.k_proj),
            ("self_attn.v_proj", "v_proj", &self.v_proj),
            ("self_attn.o_proj", "o_proj", &self.o_proj),
            ("mlp.gate_proj", "gate_proj", &self.gate_proj),
            ("mlp.up_proj", "up_proj", &self.up_proj),
            ("mlp.down_proj", "down_proj", &self.down_proj),
        ]
    }

    /// Every base weight with its HF name relative to the layer (`self_attn.q_proj.bias`),
    /// in the order [`super::weight_names`] lists them; adapters are not included.
    pub(super) fn base_params(&self) -> Vec<(String, &Param)> {
        let mut params = Vec::with_capacity(18);
        for (path, _, projection) in self.projections() {
            params.push((format!("{path}.weight"), &projection.weight));
            if let Some(bias) = &projection.bias {
                params.push((format!("{path}.bias"), bias));
            }
        }
        if let Some(norm) = &self.q_norm {
            params.push(("self_attn.q_norm.weight".to_string(), norm));
        }
        if let Some(norm) = &self.k_norm {
            params.push(("self_attn.k_norm.weight".to_string(), norm));
        }
        params.push(("input_layernorm.weight".to_string(), &self.input_layernorm));
        params.push((
            "post_attention_layernorm.weight".to_string(),
            &self.post_attention_layernorm,
        ));
        params
    }

    /// The base weights of [`DecoderLayer::base_params`], mutably and in the same order.
    pub(super) fn base_params_mut(&mut self) -> Vec<&mut Param> {
        let mut params = Vec::with_capacity(18);
        let projections = [
            &mut self.q_proj,
            &mut self.k_proj,
            &mut self.v_proj,
            &mut self.o_proj,
            &mut self.gate_proj,
            &mut self.up_proj,
            &mut self.down_proj,
        ];
        for projection in projections {
            params.push(&mut projection.weight);
            if let Some(bias) = &mut projection.bias {
                params.push(bias);
            }
        }
        params.extend(self.q_norm.as_mut());
        params.extend(self.k_norm.as_mut());
        params.push(&mut self.input_layernorm);
        params.push(&mut self.post_attention_layernorm);
        params
    }

    pub(super) fn projections_mut(&mut self) -> [(&'static str, &mut Projection); 7] {
        [
            ("q_proj", &mut self.q_proj),
            ("k_proj", &mut self.k_proj),
            ("v_proj", &mut self.v_proj),
            ("o_proj", &mut self.o_proj),
            ("gate_proj", &mut self.gate_proj),
            ("up_proj", &mut self.up_proj),
            ("down_proj", &mut self.down_proj),
        ]
    }

    /// `hidden`: `(batch * seq, hidden_size)` -> same shape; `mask` is this layer's
    /// attention mask from [`ForwardContext::masks`].
    pub(super) fn forward(
        &self,
        hidden: &Tensor,
        ctx: &ForwardContext,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let dtype = hidden.dtype();
        let input_norm = self.input_layernorm.value_as(dtype)?;
        let normed = rms_norm(hidden, &input_norm, ctx.eps)?;
        let attended = self.attention(&normed, ctx, mask)?;
        let hidden = (hidden + attended)?;
        let post_norm = self.post_attention_layernorm.value_as(dtype)?;
        let normed = rms_norm(&hidden, &post_norm, ctx.eps)?;
        let gate = self.gate_proj.forward(&normed)?.silu()?;
        let up = self.up_proj.forward(&normed)?;
        let mlp = self.down_proj.forward(&(gate * up)?)?;
        Ok((hidden + mlp)?)
    }

    /// Causal grouped-query self-attention. Query head `h` reads key/value head
    /// `h / n_rep` (transformers' `repeat_kv`); instead of materialising the repeated keys,
    /// the `n_rep` query heads of a group are stacked along the sequence axis and multiplied
    /// with their shared key/value head in one batched matmul.
    fn attention(&self, x: &Tensor, ctx: &ForwardContext, mask: &Tensor) -> Result<Tensor> {
        let (batch, seq, heads, kv_heads, head_dim) =
            (ctx.batch, ctx.seq, ctx.heads, ctx.kv_heads, ctx.head_dim);
        let n_rep = heads / kv_heads;
        let split = |t: Tensor, n_heads: usize, norm: Option<&Param>| -> Result<Tensor> {
            // (b*s, n*d) -> (b, n, s, d); the transpose stays a strided view. A per-head
            // norm (Qwen3) applies before the transpose, as in transformers.
            let mut heads = t.reshape((batch, seq, n_heads, head_dim))?;
            if let Some(norm) = norm {
                heads = rms_norm(&heads, &norm.value_as(heads.dtype())?, ctx.eps)?;
            }
            Ok(heads.transpose(1, 2)?)
        };
        let q = split(self.q_proj.forward(x)?, heads, self.q_norm.as_ref())?;
        let k = split(self.k_proj.forward(x)?, kv_heads, self.k_norm.as_ref())?;
        let v = split(self.v_proj.forward(x)?, kv_heads, None)?.contiguous()?;
        // Scaling q before the product is cheaper than scaling the (s, s) scores.
        let q = ctx
            .rope
            .apply(&q)?
            .affine(1.0 / (head_dim as f64).sqrt(), 0.0)?;
        let k = ctx.rope.apply(&k)?;
        let q_grouped = q.reshape((batch, kv_heads, n_rep * seq, head_dim))?;
        let scores = q_grouped
            .matmul(&k.t()?)?
            .reshape((batch, heads, seq, seq))?
            .broadcast_add(mask)?;
        let probs = softmax_last_dim(&scores)?.reshape((batch, kv_heads, n_rep * seq, seq))?;
        let context = probs.matmul(&v)?.reshape((batch, heads, seq, head_dim))?;
        let context = context
            .transpose(1, 2)?
            .reshape((batch * seq, heads * head_dim))?;
        self.o_proj.forward(&context)
    }
}

/// What every layer of one forward pass shares: shapes, the rotary tables and the attention
/// masks (built once per call).
pub(super) struct ForwardContext {
    pub(super) batch: usize,
    pub(super) seq: usize,
    pub(super) heads: usize,
    pub(super) kv_heads: usize,
    pub(super) head_dim: usize,
    pub(super) eps: f64,
    pub(super) rope: RotaryTables,
    /// One `(seq, seq)` mask per layer: 0 where the query may attend to the key (key
    /// position <= query position, and within the layer's sliding window when it has
    /// one), -inf elsewhere. Layers with the same window share one tensor.
    pub(super) masks: Vec<Tensor>,
}

impl ForwardContext {
    pub(super) fn new(
        config: &LlamaConfig,
        batch: usize,
        seq: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let full = causal_mask(seq, None, dtype, device)?;
        let windowed = match config.sliding_window {
            Some(window) => Some(causal_mask(seq, Some(window), dtype, device)?),
            None => None,
        };
        let masks = (0..config.num_hidden_layers)
            .map(|layer| match (config.layer_window(layer), &windowed) {
                (Some(_), Some(windowed)) => windowed.clone(),
                _ => full.clone(),
            })
            .collect();
        Ok(ForwardContext {
            batch,
            seq,
            heads: config.num_attention_heads,
            kv_heads: config.num_key_value_heads,
            head_dim: config.head_dim(),
            eps: config.rms_norm_eps,
            rope: RotaryTables::new(seq, config, dtype, device)?,
            masks,
        })
    }
}

/// `x * rsqrt(mean(x^2) + eps) * weight` over the last axis.
pub(super) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let mean_square = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv_rms = (mean_square + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv_rms)?.broadcast_mul(weight)?)
}

/// Softmax over the last axis. The row maximum is subtracted for stability and detached:
/// softmax does not depend on it, so its gradient is zero in exact arithmetic and need not be
/// propagated.
fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let exp = x.broadcast_sub(&max)?.exp()?;
    let sum = exp.sum_keepdim(D::Minus1)?;
    Ok(exp.broadcast_div(&sum)?)
}

/// The causal mask, limited to the last `window` positions (the query's own included) when
/// there is a window: transformers' `kv_idx > q_idx - sliding_window`.
fn causal_mask(seq: usize, window: Option<usize>, dtype: DType, device: &Device) -> Result<Tensor> {
    let mut values = vec![0f32; seq * seq];
    for query in 0..seq {
        for key in 0..seq {
            let future = key > query;
            let outside_window = window.is_some_and(|w| key + w <= query);
            if future || outside_window {
                values[query * seq + key] = f32::NEG_INFINITY;
            }
        }
    }
    Ok(Tensor::from_vec(values, (seq, seq), device)?.to_dtype(dtype)?)
}

/// cos/sin tables of rotary position embeddings for positions `0..seq`, each `(seq, head_dim/2)`
/// (transformers' tables are these concatenated with themselves).
pub(super) struct RotaryTables {
    cos: Tensor,
    sin: Tensor,
}

impl RotaryTables {
    /// Computed in f32 like transformers: the config's inverse frequencies (plain or scaled,
    /// see [`inverse_frequencies`]), `angle = position * inv_freq`, and cos and sin each
    /// multiplied by the scaling's attention factor (YaRN's; 1 otherwise).
    pub(super) fn new(
        seq: usize,
        config: &LlamaConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let settings = RopeSettings {
            theta: config.rope_theta,
            head_dim: config.head_dim(),
            max_position_embeddings: config.max_position_embeddings,
            scaling: config.rope_scaling.as_ref(),
        };
        let (inv_freq, attention_factor) = inverse_frequencies(settings, seq);
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for position in 0..seq {
            for freq in &inv_freq {
                let angle = position as f32 * freq;
                cos.push(angle.cos() * attention_factor);
                sin.push(angle.sin() * attention_factor);
            }
        }
        Ok(RotaryTables {
            cos: Tensor::from_vec(cos, (seq, half), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (seq, half), device)?.to_dtype(dtype)?,
        })
    }

    /// `x`: `(batch, heads, seq, head_dim)` -> `x * cos + rotate_half(x) * sin`, computed per
    /// half as `[x1 cos - x2 sin, x2 cos + x1 sin]` (identical products and rounding), and
    /// returned contiguous.
    pub(super) fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let half = x.dim(D::Minus1)? / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let first = (x1.broadcast_mul(&self.cos)? - x2.broadcast_mul(&self.sin)?)?;
        let second = (x2.broadcast_mul(&self.cos)? + x1.broadcast_mul(&self.sin)?)?;
        Ok(Tensor::cat(&[first, second], D::Minus1)?)
    }
}
