"""Independent numpy forward pass of a LLaMA-family checkpoint (llama, mistral, qwen2, qwen3).

Follows transformers' ``LlamaForCausalLM`` (``modeling_llama.py``) step by step: RMSNorm in
float32, rotate_half rotary embeddings, grouped-query attention through ``repeat_kv``, causal
softmax and the SwiGLU MLP; with the family differences of ``modeling_mistral.py`` (sliding
window mask), ``modeling_qwen2.py`` (q/k/v biases, sliding-window layers) and ``modeling_qwen3.py`` (per-head q/k
RMSNorm before RoPE), and the RoPE types of ``modeling_rope_utils.py`` (default, linear,
dynamic, llama3, yarn, longrope) read from either config layout (transformers 4's ``rope_scaling``,
transformers 5's ``rope_parameters``). ladder's trainer tests compare their logits against
this script.

Usage: python3 llama_reference.py CHECKPOINT_DIR IDS_JSON
  IDS_JSON is a JSON list of token ids (one sequence) or a list of such lists (a batch),
  given inline or as the path of a file holding it.
  Prints the logits, shape (batch, seq, vocab), as JSON.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def rms_norm(x, weight, eps):
    x = x.astype(np.float32)
    variance = np.mean(x * x, axis=-1, keepdims=True)
    return weight * (x / np.sqrt(variance + eps))


def default_inv_freq(base, dim):
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    return np.float32(1.0) / (np.float32(base) ** exponents)


def rope_settings(config):
    """(theta, rope parameters dict) from either layout; the dict has a rope_type."""
    block = config.get("rope_scaling") or config.get("rope_parameters") or {}
    block = dict(block)
    block.setdefault("rope_type", block.get("type", "default"))
    theta = block.get("rope_theta", config.get("rope_theta", 10000.0))
    return theta, block


def inv_freq_and_attention(config, theta, rope, head_dim, seq):
    """modeling_rope_utils.py's ROPE_INIT_FUNCTIONS, in float32 as torch computes them."""
    kind = rope["rope_type"]
    dim = head_dim
    default_max_pos = {"llama": 2048, "mistral": 4096 * 32}.get(config.get("model_type"), 32768)
    max_pos = config.get("max_position_embeddings") or default_max_pos
    if kind == "default":
        return default_inv_freq(theta, dim), 1.0
    if kind == "linear":
        return default_inv_freq(theta, dim) / np.float32(rope["factor"]), 1.0
    if kind == "dynamic":
        # dynamic_rope_update: recomputed for the pass length once it exceeds max_pos.
        factor = rope["factor"]
        length = max(seq, max_pos)
        base = theta * ((factor * length / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        return default_inv_freq(base, dim), 1.0
    if kind == "llama3":
        inv_freq = default_inv_freq(theta, dim)
        factor = rope["factor"]
        low_freq_factor = rope["low_freq_factor"]
        high_freq_factor = rope["high_freq_factor"]
        old_context_len = rope.get("original_max_position_embeddings") or max_pos
        low_freq_wavelen = np.float32(old_context_len / low_freq_factor)
        high_freq_wavelen = np.float32(old_context_len / high_freq_factor)
        wavelen = np.float32(2 * math.pi) / inv_freq
        inv_freq_llama = np.where(wavelen > low_freq_wavelen, inv_freq / np.float32(factor), inv_freq)
        smooth_factor = (np.float32(old_context_len) / wavelen - np.float32(low_freq_factor)) / np.float32(
            high_freq_factor - low_freq_factor
        )
        smoothed = (np.float32(1) - smooth_factor) * inv_freq_llama / np.float32(factor) + smooth_factor * inv_freq_llama
        is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
        return np.where(is_medium, smoothed, inv_freq_llama).astype(np.float32), 1.0
    if kind == "yarn":
        original = rope.get("original_max_position_embeddings") or max_pos
        factor = rope.get("factor")
        if factor is None:
            factor = max_pos / original

        def get_mscale(scale, mscale=1):
            return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

        attention = rope.get("attention_factor")
        if attention is None:
            mscale, mscale_all_dim = rope.get("mscale"), rope.get("mscale_all_dim")
            if mscale and mscale_all_dim:
                attention = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
            else:
                attention = get_mscale(factor)
        beta_fast = rope.get("beta_fast") or 32
        beta_slow = rope.get("beta_slow") or 1

        def correction_dim(rotations):
            return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(theta))

        low, high = correction_dim(beta_fast), correction_dim(beta_slow)
        if rope.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        pos_freqs = np.float32(theta) ** (np.arange(0, dim, 2).astype(np.float32) / np.float32(dim))
        extrapolation = np.float32(1.0) / pos_freqs
        interpolation = np.float32(1.0) / (np.float32(factor) * pos_freqs)
        ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low), 0, 1)
        extrapolation_factor = np.float32(1) - ramp
        inv_freq = interpolation * (np.float32(1) - extrapolation_factor) + extrapolation * extrapolation_factor
        return inv_freq.astype(np.float32), attention
    if kind == "longrope":
        # _compute_longrope_parameters with longrope_frequency_update: the long factors for a
        # pass longer than original_max_position_embeddings, else the short ones.
        original = rope.get("original_max_position_embeddings") or max_pos
        factor = rope.get("factor")
        if factor is None:
            factor = max_pos / original
        attention = rope.get("attention_factor")
        if attention is None:
            attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        ext = np.array(rope["long_factor"] if seq > original else rope["short_factor"], dtype=np.float32)
        exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
        return (np.float32(1.0) / (ext * np.float32(theta) ** exponents)).astype(np.float32), attention
    raise ValueError(f"rope_type {kind!r} is not implemented here")


def rotary_tables(config, theta, rope, head_dim, seq):
    inv_freq, attention = inv_freq_and_attention(config, theta, rope, head_dim, seq)
    positions = np.arange(seq, dtype=np.float32)
    freqs = positions[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos = (np.cos(emb) * np.float32(attention)).astype(np.float32)
    sin = (np.sin(emb) * np.float32(attention)).astype(np.float32)
    return cos, sin


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def repeat_kv(x, n_rep):
    # (batch, kv_heads, seq, head_dim) -> (batch, kv_heads * n_rep, seq, head_dim)
    return np.repeat(x, n_rep, axis=1)


def softmax(x):
    x = x - np.max(x, axis=-1, keepdims=True)
    e = np.exp(x)
    return e / np.sum(e, axis=-1, keepdims=True)


def silu(x):
    return x / (np.float32(1.0) + np.exp(-x))


def forward(config, weights, ids):
    batch, seq = ids.shape
    family = config.get("model_type", "llama")
    if family not in ("llama", "mistral", "qwen2", "qwen3"):
        raise ValueError(f"model_type {family!r} is not implemented here")
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    default_head_dim = 128 if family == "qwen3" else hidden // heads
    head_dim = config.get("head_dim") or default_head_dim
    eps = np.float32(config.get("rms_norm_eps", 1e-6))
    theta, rope = rope_settings(config)
    tied = config.get("tie_word_embeddings", False)
    # Which projections carry biases, per family (Qwen2's q/k/v biases are unconditional).
    attention_bias = config.get("attention_bias", False) and family in ("llama", "qwen3")
    qkv_bias = family == "qwen2" or attention_bias
    o_bias = attention_bias
    mlp_bias = family == "llama" and config.get("mlp_bias", False)
    # Mistral windows every layer (4096 when the key is absent); Qwen only with
    # use_sliding_window, the layers layer_types marks (by default from max_window_layers on).
    layers = config["num_hidden_layers"]
    window = None
    sliding = [True] * layers
    if family == "mistral":
        window = config.get("sliding_window", 4096)
    elif family in ("qwen2", "qwen3") and config.get("use_sliding_window", False):
        window = config.get("sliding_window", 4096)
        first = config.get("max_window_layers", 28)
        types = config.get("layer_types") or [
            "sliding_attention" if i >= first else "full_attention" for i in range(layers)
        ]
        sliding = [t == "sliding_attention" for t in types]

    def linear(x, name, biased):
        y = x @ weights[name + ".weight"].T
        return y + weights[name + ".bias"] if biased else y

    cos, sin = rotary_tables(config, theta, rope, head_dim, seq)
    full_mask = np.triu(np.full((seq, seq), -np.inf, dtype=np.float32), k=1)
    window_mask = full_mask
    if window is not None:
        # masking_utils.sliding_window_overlay: key allowed when kv_idx > q_idx - window.
        q_idx, kv_idx = np.arange(seq)[:, None], np.arange(seq)[None, :]
        window_mask = np.where(kv_idx > q_idx - window, full_mask, np.float32(-np.inf))
        window_mask = window_mask.astype(np.float32)

    x = weights["model.embed_tokens.weight"][ids]
    for i in range(layers):
        p = f"model.layers.{i}."
        mask = window_mask if sliding[i] else full_mask
        h = rms_norm(x, weights[p + "input_layernorm.weight"], eps)
        q = linear(h, p + "self_attn.q_proj", qkv_bias)
        k = linear(h, p + "self_attn.k_proj", qkv_bias)
        v = linear(h, p + "self_attn.v_proj", qkv_bias)
        q = q.reshape(batch, seq, heads, head_dim)
        k = k.reshape(batch, seq, kv_heads, head_dim)
        if family == "qwen3":
            q = rms_norm(q, weights[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, weights[p + "self_attn.k_norm.weight"], eps)
        q = q.transpose(0, 2, 1, 3)
        k = k.transpose(0, 2, 1, 3)
        v = v.reshape(batch, seq, kv_heads, head_dim).transpose(0, 2, 1, 3)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = repeat_kv(k, heads // kv_heads)
        v = repeat_kv(v, heads // kv_heads)
        scores = (q @ k.transpose(0, 1, 3, 2)) * np.float32(head_dim ** -0.5) + mask
        probs = softmax(scores.astype(np.float32))
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, heads * head_dim)
        x = x + linear(context, p + "self_attn.o_proj", o_bias)
        h = rms_norm(x, weights[p + "post_attention_layernorm.weight"], eps)
        gate = linear(h, p + "mlp.gate_proj", mlp_bias)
        up = linear(h, p + "mlp.up_proj", mlp_bias)
        x = x + linear(silu(gate) * up, p + "mlp.down_proj", mlp_bias)
    x = rms_norm(x, weights["model.norm.weight"], eps)
    head = weights["model.embed_tokens.weight"] if tied else weights["lm_head.weight"]
    return x @ head.T


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    directory = Path(sys.argv[1])
    config = json.loads((directory / "config.json").read_text())
    weights = {
        name: tensor.astype(np.float32)
        for name, tensor in load_file(str(directory / "model.safetensors")).items()
    }
    ids_arg = sys.argv[2]
    ids_text = Path(ids_arg).read_text() if Path(ids_arg).is_file() else ids_arg
    ids = np.array(json.loads(ids_text), dtype=np.int64)
    if ids.ndim == 1:
        ids = ids[None, :]
    logits = forward(config, weights, ids)
    json.dump(logits.astype(np.float64).tolist(), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
