"""Independent numpy forward pass of a LLaMA checkpoint written by ladder.

Follows transformers' ``LlamaForCausalLM`` (``modeling_llama.py``) step by step: RMSNorm in
float32, rotate_half rotary embeddings, grouped-query attention through ``repeat_kv``, causal
softmax and the SwiGLU MLP. ladder's trainer tests compare their logits against this script.

Usage: python3 llama_reference.py CHECKPOINT_DIR IDS_JSON
  IDS_JSON is a JSON list of token ids (one sequence) or a list of such lists (a batch),
  given inline or as the path of a file holding it.
  Prints the logits, shape (batch, seq, vocab), as JSON.
"""

import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def rms_norm(x, weight, eps):
    x = x.astype(np.float32)
    variance = np.mean(x * x, axis=-1, keepdims=True)
    return weight * (x / np.sqrt(variance + eps))


def rotary_tables(seq, head_dim, theta):
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = np.float32(1.0) / (np.float32(theta) ** exponents)
    positions = np.arange(seq, dtype=np.float32)
    freqs = positions[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


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
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    eps = np.float32(config.get("rms_norm_eps", 1e-6))
    # transformers 5 writes RoPE settings under rope_parameters, version 4 at top level.
    rope = config.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope_type {rope['rope_type']!r} is not implemented here")
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    tied = config.get("tie_word_embeddings", False)

    cos, sin = rotary_tables(seq, head_dim, theta)
    mask = np.triu(np.full((seq, seq), -np.inf, dtype=np.float32), k=1)

    x = weights["model.embed_tokens.weight"][ids]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, weights[p + "input_layernorm.weight"], eps)
        q = h @ weights[p + "self_attn.q_proj.weight"].T
        k = h @ weights[p + "self_attn.k_proj.weight"].T
        v = h @ weights[p + "self_attn.v_proj.weight"].T
        q = q.reshape(batch, seq, heads, head_dim).transpose(0, 2, 1, 3)
        k = k.reshape(batch, seq, kv_heads, head_dim).transpose(0, 2, 1, 3)
        v = v.reshape(batch, seq, kv_heads, head_dim).transpose(0, 2, 1, 3)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = repeat_kv(k, heads // kv_heads)
        v = repeat_kv(v, heads // kv_heads)
        scores = (q @ k.transpose(0, 1, 3, 2)) * np.float32(head_dim ** -0.5) + mask
        probs = softmax(scores.astype(np.float32))
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, heads * head_dim)
        x = x + context @ weights[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, weights[p + "post_attention_layernorm.weight"], eps)
        gate = h @ weights[p + "mlp.gate_proj.weight"].T
        up = h @ weights[p + "mlp.up_proj.weight"].T
        x = x + (silu(gate) * up) @ weights[p + "mlp.down_proj.weight"].T
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
