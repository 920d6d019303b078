"""Independent scoring of multiple-choice items the way lm-evaluation-harness 0.4.13 does.

Follows ``TemplateLM.loglikelihood`` / ``_encode_pair`` and ``HFLM._loglikelihood_tokens``
with the Hugging Face tokenizer's own special tokens (``add_special_tokens`` left to the
tokenizer, so a LLaMA-style tokenizer puts BOS before each prompt), then the
``multiple_choice`` metrics: acc, acc_norm (log-likelihood over the choice's length in
characters) and TruthfulQA's mc2. Logits come from ``llama_reference.forward`` (NumPy, no
torch). ladder's end-to-end tests compare ``ladder eval`` against this script.

Usage:
  python3 lm_eval_reference.py make MODEL_DIR [FAMILY]
      writes a tiny random model (config.json in the transformers 5 layout,
      model.safetensors) with a BOS-adding word-level tokenizer (tokenizer.json,
      tokenizer_config.json) into MODEL_DIR; FAMILY is llama (the default), mistral
      (sliding window 3, yarn RoPE), qwen2 (q/k/v biases, tied embeddings, linear RoPE) or
      qwen3 (q/k norms, head_dim 16, attention biases, llama3 RoPE)
  python3 lm_eval_reference.py score MODEL_DIR TASK.jsonl
      prints, as JSON, each item's per-choice log-likelihoods and greedy flags and the
      task's acc, acc_norm and mc2 (items: {"context", "choices", "answer"} or
      {"context", "mc2_targets": {"choices", "labels"}}, labels true first)
"""

import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file, load_file
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_reference import forward  # noqa: E402

WORDS = (
    "the a cat dog sat ran on under mat log red blue big small and or "
    "yes no one two three sky sea is was what who where why Question Answer : ? ."
).split()


# What each family's tiny model adds to the LLaMA one: config keys, and whether it has q/k/v
# biases (qwen2), attention biases on all four projections and per-head q/k norms (qwen3).
FAMILIES = {
    "llama": {},
    "mistral": {
        "architectures": ["MistralForCausalLM"], "model_type": "mistral", "sliding_window": 3,
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                            "original_max_position_embeddings": 16},
    },
    "qwen2": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "tie_word_embeddings": True,
        "use_sliding_window": False, "sliding_window": None,
        "rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
    },
    "qwen3": {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "head_dim": 16,
        "attention_bias": True,
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                            "low_freq_factor": 1.0, "high_freq_factor": 8.0,
                            "original_max_position_embeddings": 256},
    },
}


def make(directory, family="llama"):
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    special = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for t, i in [("<unk>", 0), ("<s>", 1), ("</s>", 2)]
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": special,
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
        "eos_token": "</s>", "unk_token": "<unk>",
    }))
    hidden, layers, heads, kv_heads, ff, vocab_size = 32, 2, 4, 2, 64, len(vocab)
    head_dim = FAMILIES[family].get("head_dim", hidden // heads)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "dtype": "float32",
        "vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": ff,
        "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "head_dim": head_dim, "hidden_act": "silu",
        "rms_norm_eps": 1e-5, "max_position_embeddings": 64, "tie_word_embeddings": False,
        "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None, "use_cache": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
        "transformers_version": "5.0.0",
    }
    config.update(FAMILIES[family])
    if family in ("mistral", "qwen2"):
        # Their config classes have neither key.
        del config["attention_bias"], config["mlp_bias"]
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    rng = np.random.default_rng(7)

    def normal(*shape, std=0.3):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    weights = {
        "model.embed_tokens.weight": normal(vocab_size, hidden, std=1.0),
        "model.norm.weight": (1 + normal(hidden, std=0.2)),
        "lm_head.weight": normal(vocab_size, hidden, std=0.5),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        weights[p + "input_layernorm.weight"] = 1 + normal(hidden, std=0.2)
        weights[p + "post_attention_layernorm.weight"] = 1 + normal(hidden, std=0.2)
        weights[p + "self_attn.q_proj.weight"] = normal(heads * head_dim, hidden)
        weights[p + "self_attn.k_proj.weight"] = normal(kv_heads * head_dim, hidden)
        weights[p + "self_attn.v_proj.weight"] = normal(kv_heads * head_dim, hidden)
        weights[p + "self_attn.o_proj.weight"] = normal(hidden, heads * head_dim)
        weights[p + "mlp.gate_proj.weight"] = normal(ff, hidden)
        weights[p + "mlp.up_proj.weight"] = normal(ff, hidden)
        weights[p + "mlp.down_proj.weight"] = normal(hidden, ff)
    # Family extras are drawn after the LLaMA weights, so the LLaMA model stays as it was.
    for i in range(layers):
        p = f"model.layers.{i}."
        if family in ("qwen2", "qwen3"):
            weights[p + "self_attn.q_proj.bias"] = normal(heads * head_dim, std=0.2)
            weights[p + "self_attn.k_proj.bias"] = normal(kv_heads * head_dim, std=0.2)
            weights[p + "self_attn.v_proj.bias"] = normal(kv_heads * head_dim, std=0.2)
        if family == "qwen3":
            weights[p + "self_attn.o_proj.bias"] = normal(hidden, std=0.2)
            weights[p + "self_attn.q_norm.weight"] = 1 + normal(head_dim, std=0.2)
            weights[p + "self_attn.k_norm.weight"] = 1 + normal(head_dim, std=0.2)
    if config["tie_word_embeddings"]:
        del weights["lm_head.weight"]
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})


class Scorer:
    """lm-eval's HFLM reduced to what loglikelihood needs, for a causal model."""

    def __init__(self, directory):
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
        self.bos_id = self.tokenizer.token_to_id(tokenizer_config["bos_token"]) \
            if tokenizer_config.get("bos_token") else None
        self.eos_id = self.tokenizer.token_to_id(tokenizer_config["eos_token"])
        self.config = json.loads((directory / "config.json").read_text())
        self.weights = {
            name: tensor.astype(np.float32)
            for name, tensor in load_file(str(directory / "model.safetensors")).items()
        }
        self.max_length = self.config["max_position_embeddings"]

    @property
    def prefix_token_id(self):
        return self.bos_id if self.bos_id is not None else self.eos_id

    def tok_encode(self, string, add_special_tokens=None):
        # add_special_tokens=None leaves it to the tokenizer, whose default is to add them.
        add = True if add_special_tokens is None else add_special_tokens
        return self.tokenizer.encode(string, add_special_tokens=add).ids

    def encode_pair(self, context, continuation):
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole_enc = self.tok_encode(context + continuation)
        context_enc = self.tok_encode(context)
        return context_enc, whole_enc[len(context_enc):]

    def request_tokens(self, context, continuation):
        if context == "":
            continuation_enc = self.tok_encode(continuation, add_special_tokens=False)
            if self.prefix_token_id != continuation_enc[0]:
                return [self.prefix_token_id], continuation_enc
            return continuation_enc[:1], continuation_enc[1:]
        return self.encode_pair(context, continuation)

    def loglikelihood(self, context, continuation):
        context_enc, continuation_enc = self.request_tokens(context, continuation)
        inp = (context_enc + continuation_enc)[-(self.max_length + 1):][:-1]
        logits = forward(self.config, self.weights, np.array([inp], dtype=np.int64))[0]
        logits = logits.astype(np.float64)
        log_probs = logits - np.max(logits, axis=-1, keepdims=True)
        log_probs = log_probs - np.log(np.sum(np.exp(log_probs), axis=-1, keepdims=True))
        rows = log_probs[len(inp) - len(continuation_enc):]
        greedy = bool(np.all(np.argmax(rows, axis=-1) == np.array(continuation_enc)))
        ll = float(sum(rows[i, t] for i, t in enumerate(continuation_enc)))
        return ll, greedy


def score(directory, task_path):
    scorer = Scorer(directory)
    items = []
    accs, acc_norms, mc2s = [], [], []
    for line in task_path.read_text().splitlines():
        if not line.strip():
            continue
        doc = json.loads(line)
        if "mc2_targets" in doc:
            choices = doc["mc2_targets"]["choices"]
            labels = doc["mc2_targets"]["labels"]
        else:
            choices = doc["choices"]
            labels = None
        results = [scorer.loglikelihood(doc["context"], " " + choice) for choice in choices]
        lls = np.array([ll for ll, _ in results])
        item = {"loglikelihoods": lls.tolist(), "is_greedy": [g for _, g in results]}
        if labels is None:
            gold = doc["answer"]
            completion_len = np.array([float(len(choice)) for choice in choices])
            accs.append(1.0 if np.argmax(lls) == gold else 0.0)
            acc_norms.append(1.0 if np.argmax(lls / completion_len) == gold else 0.0)
        else:
            # lm-eval's truthfulqa process_results_mc2.
            split_idx = list(labels).index(0)
            p_true = np.exp(lls[:split_idx])
            p_false = np.exp(lls[split_idx:])
            p_true = p_true / (sum(p_true) + sum(p_false))
            mc2s.append(float(sum(p_true)))
        items.append(item)
    summary = {"items": items}
    if accs:
        summary["acc"] = float(np.mean(accs))
        summary["acc_norm"] = float(np.mean(acc_norms))
    if mc2s:
        summary["mc2"] = float(np.mean(mc2s))
    json.dump(summary, sys.stdout)
    sys.stdout.write("\n")


def main():
    if len(sys.argv) in (3, 4) and sys.argv[1] == "make":
        make(Path(sys.argv[2]), *sys.argv[3:])
    elif len(sys.argv) == 4 and sys.argv[1] == "score":
        score(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
