//! Tests of the model: gradients reach every trainable weight and match finite differences,
//! checkpoints round-trip (single file, shards, bf16 and f16 kept in their dtype for
//! scoring, LoRA merged and unmerged), broken files are named with the tensor at fault, attention is
//! causal, and logits agree with an independent numpy implementation of transformers' LLaMA.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

fn small_config(tied: bool) -> LlamaConfig {
    LlamaConfig {
        vocab_size: 50,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        rms_norm_eps: 1e-5,
        max_position_embeddings: 64,
        tie_word_embeddings: tied,
        ..LlamaConfig::default()
    }
}

/// A small config of `family` exercising what sets it apart: Mistral's window (shorter than
/// the test sequences), Qwen2's q/k/v biases (with tied embeddings and a windowed second
/// layer), Qwen3's q/k norms with
/// a `head_dim` that is not `hidden_size / heads` and attention biases, and LLaMA's
/// optional attention and MLP biases.
fn family_config(family: ModelFamily) -> LlamaConfig {
    let base = LlamaConfig {
        model_type: family,
        ..small_config(false)
    };
    match family {
        ModelFamily::Llama => LlamaConfig {
            attention_bias: true,
            mlp_bias: true,
            ..base
        },
        ModelFamily::Mistral => LlamaConfig {
            sliding_window: Some(3),
            ..base
        },
        ModelFamily::Qwen2 => LlamaConfig {
            tie_word_embeddings: true,
            sliding_window: Some(3),
            layer_types: Some(vec![AttentionType::Full, AttentionType::Sliding]),
            ..base
        },
        ModelFamily::Qwen3 => LlamaConfig {
            head_dim: Some(16),
            attention_bias: true,
            ..base
        },
    }
}

const FAMILIES: [ModelFamily; 4] = [
    ModelFamily::Llama,
    ModelFamily::Mistral,
    ModelFamily::Qwen2,
    ModelFamily::Qwen3,
];

fn all_targets() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: LORA_TARGETS.iter().map(|t| t.to_string()).collect(),
    }
}

/// `(batch, seq)` u32 ids drawn from a seeded generator.
fn token_ids(batch: usize, seq: usize, vocab: usize, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let ids: Vec<u32> = (0..batch * seq)
        .map(|_| rng.random_range(0..vocab as u32))
        .collect();
    Tensor::from_vec(ids, (batch, seq), &Device::Cpu).unwrap()
}

/// Mean next-token cross-entropy of `ids` under `model` (targets are the ids shifted left).
fn next_token_loss(model: &Model, ids: &Tensor) -> Tensor {
    let (batch, seq) = ids.dims2().unwrap();
    let logits = model.forward(ids).unwrap();
    let vocab = model.config().vocab_size;
    let predictions = logits
        .narrow(1, 0, seq - 1)
        .unwrap()
        .reshape((batch * (seq - 1), vocab))
        .unwrap();
    let targets = ids.narrow(1, 1, seq - 1).unwrap().flatten_all().unwrap();
    candle_nn::loss::cross_entropy(&predictions, &targets).unwrap()
}

/// Sets every `lora_B` to small random values; with B = 0 (PEFT's init) the gradient of A is
/// zero by construction, which would hide a broken A path.
fn randomize_lora_b(model: &Model, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (name, var) in model.trainable() {
        if !name.contains("lora_B") {
            continue;
        }
        let count = var.elem_count();
        let values: Vec<f64> = (0..count).map(|_| rng.random_range(-0.1..0.1)).collect();
        let tensor = Tensor::from_vec(values, var.shape().clone(), &Device::Cpu)
            .unwrap()
            .to_dtype(var.dtype())
            .unwrap();
        var.set(&tensor).unwrap();
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn tensor_values(tensor: &Tensor) -> Vec<f32> {
    tensor
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn read_safetensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn write_safetensors(path: &Path, tensors: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(tensors, path).unwrap();
}

// ---------------------------------------------------------------- configuration

#[test]
fn config_reads_hf_json_with_defaults_and_writes_it_back_loadable() {
    let json = r#"{"vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 8, "eos_token_id": [7, 9],
        "torch_dtype": "bfloat16", "some_unknown_key": {"x": 1}}"#;
    let config: LlamaConfig = serde_json::from_str(json).unwrap();
    assert_eq!(config.num_key_value_heads, 8);
    assert_eq!(config.rms_norm_eps, 1e-6);
    assert_eq!(config.rope_theta, 10000.0);
    assert_eq!(config.max_position_embeddings, 2048);
    assert!(!config.tie_word_embeddings);
    assert_eq!(config.eos_token_id, Some(7));
    assert_eq!(config.head_dim(), 8);
    config.validate().unwrap();

    let written: serde_json::Value = serde_json::from_str(&config.to_json()).unwrap();
    assert_eq!(written["model_type"], "llama");
    assert_eq!(written["architectures"][0], "LlamaForCausalLM");
    assert_eq!(written["torch_dtype"], "float32");
    let reread: LlamaConfig = serde_json::from_str(&config.to_json()).unwrap();
    assert_eq!(reread, config);
}

#[test]
fn config_validation_names_the_field() {
    let cases: Vec<(LlamaConfig, &str)> = vec![
        (
            LlamaConfig {
                num_key_value_heads: 3,
                ..small_config(false)
            },
            "config.json: num_key_value_heads",
        ),
        (
            LlamaConfig {
                num_attention_heads: 5,
                num_key_value_heads: 5,
                ..small_config(false)
            },
            "config.json: num_attention_heads",
        ),
        (
            LlamaConfig {
                vocab_size: 0,
                ..small_config(false)
            },
            "config.json: vocab_size",
        ),
        (
            LlamaConfig {
                attention_bias: true,
                ..family_config(ModelFamily::Mistral)
            },
            "config.json: attention_bias",
        ),
        (
            LlamaConfig {
                mlp_bias: true,
                ..family_config(ModelFamily::Qwen3)
            },
            "config.json: mlp_bias",
        ),
        (
            LlamaConfig {
                rope_scaling: Some(RopeScaling::Linear { factor: 0.0 }),
                ..small_config(false)
            },
            "config.json: rope_scaling.factor",
        ),
        (
            LlamaConfig {
                rope_scaling: Some(RopeScaling::Llama3 {
                    factor: 8.0,
                    low_freq_factor: 2.0,
                    high_freq_factor: 2.0,
                    original_max_position_embeddings: None,
                }),
                ..small_config(false)
            },
            "config.json: rope_scaling.high_freq_factor",
        ),
        (
            LlamaConfig {
                sliding_window: Some(8),
                ..small_config(false)
            },
            "config.json: sliding_window",
        ),
        (
            LlamaConfig {
                hidden_act: "gelu".to_string(),
                ..small_config(false)
            },
            "config.json: hidden_act",
        ),
    ];
    for (config, field) in cases {
        let error = config.validate().unwrap_err();
        assert!(
            matches!(&error, TrainerError::Config { field: f, .. } if f == field),
            "expected an error on {field}, got {error}"
        );
    }
}

/// Writes `json` as a `config.json` and reads it back through `LlamaConfig::from_file`.
fn read_config_file(json: &serde_json::Value) -> crate::Result<LlamaConfig> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(json).unwrap()).unwrap();
    LlamaConfig::from_file(&path)
}

/// A LLaMA `config.json` as transformers 5 writes it: RoPE settings under
/// `rope_parameters`, `dtype` instead of `torch_dtype`.
fn transformers5_config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "dtype": "float32",
        "eos_token_id": 2,
        "head_dim": 8,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
        "mlp_bias": false,
        "model_type": "llama",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "pad_token_id": null,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
        "tie_word_embeddings": false,
        "transformers_version": "5.0.0",
        "use_cache": true,
        "vocab_size": 50
    })
}

#[test]
fn transformers5_rope_parameters_are_read() {
    let config = read_config_file(&transformers5_config()).unwrap();
    assert_eq!(config.rope_theta, 500000.0);
    assert_eq!(config.rms_norm_eps, 1e-5);
    // The transformers 4 layout of the same model reads the same.
    let mut v4 = transformers5_config();
    let object = v4.as_object_mut().unwrap();
    object.remove("rope_parameters");
    object.insert("rope_theta".into(), serde_json::json!(500000.0));
    object.insert("rope_scaling".into(), serde_json::Value::Null);
    object.insert("torch_dtype".into(), serde_json::json!("float32"));
    assert_eq!(read_config_file(&v4).unwrap(), config);
    // What ladder writes reads back.
    let written: serde_json::Value = serde_json::from_str(&config.to_json()).unwrap();
    assert_eq!(read_config_file(&written).unwrap(), config);
}

/// A RoPE block of each scaling type as a `config.json` gives it (the dynamic one with the
/// older `type` key), with what ladder reads from it.
fn rope_blocks() -> Vec<(serde_json::Value, RopeScaling)> {
    vec![
        (
            serde_json::json!({"rope_type": "linear", "factor": 2.0}),
            RopeScaling::Linear { factor: 2.0 },
        ),
        (
            serde_json::json!({"type": "dynamic", "factor": 3.0}),
            RopeScaling::Dynamic { factor: 3.0 },
        ),
        (
            serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: Some(8192),
            },
        ),
        (
            serde_json::json!({"rope_type": "yarn", "factor": 4.0,
                "original_max_position_embeddings": 32, "beta_fast": 16, "mscale": 2.0,
                "mscale_all_dim": 1.0, "truncate": false}),
            RopeScaling::Yarn(YarnScaling {
                factor: Some(4.0),
                original_max_position_embeddings: Some(32),
                beta_fast: Some(16.0),
                mscale: Some(2.0),
                mscale_all_dim: Some(1.0),
                truncate: Some(false),
                ..YarnScaling::default()
            }),
        ),
    ]
}

#[test]
fn rope_scaling_types_read_alike_from_both_layouts_and_round_trip() {
    for (block, expected) in rope_blocks() {
        let mut v5 = transformers5_config();
        let mut parameters = block.clone();
        parameters["rope_theta"] = serde_json::json!(500000.0);
        v5["rope_parameters"] = parameters;
        let config = read_config_file(&v5).unwrap();
        assert_eq!(config.rope_scaling.as_ref(), Some(&expected));
        assert_eq!(config.rope_theta, 500000.0);

        let mut v4 = transformers5_config();
        let object = v4.as_object_mut().unwrap();
        object.remove("rope_parameters");
        object.insert("rope_theta".into(), serde_json::json!(500000.0));
        object.insert("rope_scaling".into(), block);
        assert_eq!(read_config_file(&v4).unwrap(), config, "{expected:?}");

        let written: serde_json::Value = serde_json::from_str(&config.to_json()).unwrap();
        assert_eq!(written["rope_scaling"]["rope_type"], expected.rope_type());
        assert_eq!(read_config_file(&written).unwrap(), config, "{expected:?}");
    }
}

#[test]
fn family_configs_resolve_their_defaults_and_write_their_fields() {
    let read = |edit: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let mut json = transformers5_config();
        edit(json.as_object_mut().unwrap());
        read_config_file(&json).unwrap()
    };
    // Mistral: the window is 4096 when absent, none when null.
    let mistral = |c: &mut serde_json::Map<String, serde_json::Value>| {
        c.insert("model_type".into(), serde_json::json!("mistral"));
    };
    assert_eq!(read(&mistral).sliding_window, Some(4096));
    let windowed = read(&|c| {
        mistral(c);
        c.insert("sliding_window".into(), serde_json::json!(16));
    });
    assert_eq!(windowed.model_type, ModelFamily::Mistral);
    assert_eq!(windowed.sliding_window, Some(16));
    let unwindowed = read(&|c| {
        mistral(c);
        c.insert("sliding_window".into(), serde_json::Value::Null);
    });
    assert_eq!(unwindowed.sliding_window, None);
    // Qwen2.5 ships use_sliding_window false with a window transformers then ignores.
    let qwen2 = read(&|c| {
        c.insert("model_type".into(), serde_json::json!("qwen2"));
        c.insert("use_sliding_window".into(), serde_json::json!(false));
        c.insert("sliding_window".into(), serde_json::json!(16));
        c.insert("max_window_layers".into(), serde_json::json!(1));
        c.remove("attention_bias");
        c.remove("mlp_bias");
    });
    assert_eq!(qwen2.sliding_window, None);
    assert!(qwen2.qkv_bias() && !qwen2.o_bias());
    // With use_sliding_window the layers from max_window_layers on are windowed (unless
    // layer_types says otherwise).
    let qwen2_windowed = |c: &mut serde_json::Map<String, serde_json::Value>| {
        c.insert("model_type".into(), serde_json::json!("qwen2"));
        c.insert("use_sliding_window".into(), serde_json::json!(true));
        c.insert("sliding_window".into(), serde_json::json!(16));
        c.insert("max_window_layers".into(), serde_json::json!(1));
        c.remove("attention_bias");
        c.remove("mlp_bias");
    };
    let windowed = read(&qwen2_windowed);
    assert_eq!(
        (windowed.layer_window(0), windowed.layer_window(1)),
        (None, Some(16))
    );
    let by_type = read(&|c| {
        qwen2_windowed(c);
        c.insert(
            "layer_types".into(),
            serde_json::json!(["sliding_attention", "full_attention"]),
        );
    });
    assert_eq!(
        (by_type.layer_window(0), by_type.layer_window(1)),
        (Some(16), None)
    );
    // Qwen3's head width defaults to 128, not hidden_size / heads.
    let qwen3 = read(&|c| {
        c.insert("model_type".into(), serde_json::json!("qwen3"));
        c.remove("head_dim");
    });
    assert_eq!(qwen3.head_dim(), 128);
    assert!(qwen3.qk_norm());

    for family in FAMILIES {
        let config = family_config(family);
        config.validate().unwrap();
        let written: serde_json::Value = serde_json::from_str(&config.to_json()).unwrap();
        assert_eq!(written["model_type"], family.model_type());
        assert_eq!(written["architectures"][0], family.architecture());
        assert_eq!(
            written.get("sliding_window").is_some(),
            matches!(family, ModelFamily::Mistral | ModelFamily::Qwen2)
        );
        if family == ModelFamily::Qwen2 {
            assert_eq!(written["use_sliding_window"], true);
            assert_eq!(written["max_window_layers"], 1);
            assert_eq!(
                written["layer_types"],
                serde_json::json!(["full_attention", "sliding_attention"])
            );
        }
        assert_eq!(
            written.get("attention_bias").is_some(),
            matches!(family, ModelFamily::Llama | ModelFamily::Qwen3)
        );
        assert_eq!(read_config_file(&written).unwrap(), config, "{family:?}");
    }
}

/// `config.json`s as published for one model of each family (sizes as released) read with
/// the settings that matter.
#[test]
fn published_configs_of_each_family_are_read() {
    let llama_3_2 = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
        "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu",
        "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
        "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
        "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256
    });
    let config = read_config_file(&llama_3_2).unwrap();
    assert_eq!(
        config.rope_scaling,
        Some(RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: Some(8192),
        })
    );

    let mistral_7b = serde_json::json!({
        "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
        "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
        "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
        "tie_word_embeddings": false, "torch_dtype": "bfloat16",
        "transformers_version": "4.34.0.dev0", "use_cache": true, "vocab_size": 32000
    });
    let config = read_config_file(&mistral_7b).unwrap();
    assert_eq!(
        (config.model_type, config.sliding_window),
        (ModelFamily::Mistral, Some(4096))
    );

    let qwen2_5 = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu",
        "hidden_size": 896, "initializer_range": 0.02, "intermediate_size": 4864,
        "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2",
        "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
        "tie_word_embeddings": true, "torch_dtype": "bfloat16",
        "transformers_version": "4.40.1", "use_cache": true, "use_sliding_window": false,
        "vocab_size": 151936
    });
    let config = read_config_file(&qwen2_5).unwrap();
    assert_eq!(config.sliding_window, None);
    assert_eq!(config.head_dim(), 64);
    assert!(config.qkv_bias() && config.tie_word_embeddings);

    let qwen3 = serde_json::json!({
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
        "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
        "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
        "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000,
        "sliding_window": null, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0", "use_cache": true, "use_sliding_window": false,
        "vocab_size": 151936
    });
    let config = read_config_file(&qwen3).unwrap();
    assert_eq!((config.head_dim(), config.rope_theta), (128, 1e6));
    assert!(config.qk_norm() && !config.qkv_bias());
}

#[test]
fn config_keys_that_change_the_computation_are_refused_by_name() {
    let with = |edit: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let mut json = transformers5_config();
        edit(json.as_object_mut().unwrap());
        json
    };
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            with(&|c| {
                c.insert(
                    "rope_parameters".into(),
                    serde_json::json!({"rope_theta": 500000.0, "rope_type": "mrope",
                        "mrope_section": [1, 1]}),
                );
            }),
            "rope_parameters.rope_type",
        ),
        (
            with(&|c| {
                c.insert(
                    "rope_parameters".into(),
                    serde_json::json!({"rope_theta": 500000.0, "rope_type": "longrope",
                        "short_factor": [1.0], "long_factor": [1.0]}),
                );
            }),
            "rope_scaling.short_factor",
        ),
        (
            with(&|c| {
                c.insert(
                    "rope_parameters".into(),
                    serde_json::json!({"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0,
                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192, "beta_fast": 32}),
                );
            }),
            "rope_parameters.beta_fast",
        ),
        (
            with(&|c| {
                c.insert(
                    "rope_parameters".into(),
                    serde_json::json!({"rope_theta": 500000.0, "rope_type": "yarn"}),
                );
            }),
            "rope_parameters.factor",
        ),
        (
            with(&|c| {
                c.insert(
                    "rope_parameters".into(),
                    serde_json::json!({"rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
                );
            }),
            "rope_parameters.partial_rotary_factor",
        ),
        (
            with(&|c| {
                c.remove("rope_parameters");
                c.insert(
                    "rope_scaling".into(),
                    serde_json::json!({"type": "su", "factor": 4.0}),
                );
            }),
            "rope_scaling.type",
        ),
        (
            with(&|c| {
                c.insert(
                    "rope_scaling".into(),
                    serde_json::json!({"rope_type": "linear", "factor": 4.0}),
                );
            }),
            "rope_scaling",
        ),
        (
            with(&|c| {
                c.insert("rope_theta".into(), serde_json::json!(10000.0));
            }),
            "rope_theta",
        ),
        (
            with(&|c| {
                c.insert("quantization_config".into(), serde_json::json!({"bits": 4}));
            }),
            "quantization_config",
        ),
        (
            with(&|c| {
                c.insert("attention_dropout".into(), serde_json::json!(0.1));
            }),
            "attention_dropout",
        ),
        (
            with(&|c| {
                c.insert("model_type".into(), serde_json::json!("gemma"));
            }),
            "model_type",
        ),
        (
            with(&|c| {
                c.insert("use_sliding_window".into(), serde_json::json!(true));
                c.insert("sliding_window".into(), serde_json::json!(16));
            }),
            "use_sliding_window",
        ),
        (
            with(&|c| {
                c.insert("model_type".into(), serde_json::json!("qwen2"));
                c.insert("use_sliding_window".into(), serde_json::json!(true));
                c.insert("sliding_window".into(), serde_json::Value::Null);
            }),
            "sliding_window",
        ),
        (
            with(&|c| {
                c.insert("model_type".into(), serde_json::json!("qwen3"));
                c.insert("use_sliding_window".into(), serde_json::json!(true));
                c.insert(
                    "layer_types".into(),
                    serde_json::json!(["full_attention", "chunked_attention"]),
                );
            }),
            "layer_types[1]",
        ),
        (
            with(&|c| {
                c.insert("model_type".into(), serde_json::json!("qwen3"));
                c.insert("use_sliding_window".into(), serde_json::json!(true));
                c.insert("layer_types".into(), serde_json::json!(["full_attention"]));
            }),
            "layer_types",
        ),
        (
            with(&|c| {
                c.insert(
                    "layer_types".into(),
                    serde_json::json!(["full_attention", "sliding_attention"]),
                );
            }),
            "layer_types",
        ),
        (
            with(&|c| {
                c.insert("model_type".into(), serde_json::json!("mistral"));
                c.insert("sliding_window".into(), serde_json::json!("16"));
            }),
            "sliding_window",
        ),
        (
            with(&|c| {
                c.insert("sliding_window".into(), serde_json::json!(16));
            }),
            "sliding_window",
        ),
    ];
    for (json, field) in cases {
        let error = read_config_file(&json).unwrap_err().to_string();
        assert!(
            error.contains(&format!("config.json: {field}:")),
            "expected an error on {field}, got {error}"
        );
    }
}

#[test]
fn parameter_count_matches_the_tensors() {
    let configs = [small_config(false), small_config(true)]
        .into_iter()
        .chain(FAMILIES.map(family_config));
    for config in configs {
        let model = Model::random(config, 0, &Device::Cpu).unwrap();
        let counted: usize = model
            .named_tensors()
            .iter()
            .map(|(_, t)| t.elem_count())
            .sum();
        assert_eq!(model.config().parameter_count(), counted);
    }
}

#[test]
fn lora_rejects_unknown_targets() {
    let mut model = Model::random(small_config(false), 0, &Device::Cpu).unwrap();
    let lora = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: vec!["q_proj".to_string(), "qkv_proj".to_string()],
    };
    let error = model.add_lora(&lora, 0).unwrap_err().to_string();
    assert!(
        error.contains("lora.targets") && error.contains("qkv_proj"),
        "{error}"
    );
}

// ---------------------------------------------------------------- initialisation

#[test]
fn same_seed_gives_bit_identical_weights() {
    let a = Model::random(small_config(false), 7, &Device::Cpu).unwrap();
    let b = Model::random(small_config(false), 7, &Device::Cpu).unwrap();
    let c = Model::random(small_config(false), 8, &Device::Cpu).unwrap();
    for ((name, ta), ((_, tb), (_, tc))) in a
        .named_tensors()
        .iter()
        .zip(b.named_tensors().iter().zip(c.named_tensors().iter()))
    {
        assert_eq!(tensor_values(ta), tensor_values(tb), "{name}");
        if !name.contains("norm") {
            assert_ne!(tensor_values(ta), tensor_values(tc), "{name}");
        }
    }
    let embedding = a
        .named_tensors()
        .into_iter()
        .find(|(name, _)| name == "model.embed_tokens.weight")
        .map(|(_, t)| tensor_values(&t))
        .unwrap();
    let std = (embedding.iter().map(|v| v * v).sum::<f32>() / embedding.len() as f32).sqrt();
    assert!((std - 0.02).abs() < 0.003, "std {std}");
}

#[test]
fn add_lora_leaves_logits_unchanged_and_freezes_the_base() {
    let mut model = Model::random(small_config(false), 1, &Device::Cpu).unwrap();
    let ids = token_ids(2, 6, 50, 1);
    let before = model.forward(&ids).unwrap();
    model.add_lora(&all_targets(), 3).unwrap();
    let after = model.forward(&ids).unwrap();
    assert_eq!(tensor_values(&before), tensor_values(&after));
    let trainable = model.trainable();
    assert_eq!(trainable.len(), 2 * 7 * 2);
    assert!(trainable
        .iter()
        .all(|(name, _)| name.starts_with("base_model.model.") && name.contains(".lora_")));
}

// ---------------------------------------------------------------- gradients

#[test]
fn every_trainable_weight_receives_a_gradient() {
    for tied in [false, true] {
        let model = Model::random(small_config(tied), 2, &Device::Cpu).unwrap();
        let ids = token_ids(2, 8, 50, 2);
        let grads = next_token_loss(&model, &ids).backward().unwrap();
        let trainable = model.trainable();
        assert_eq!(trainable.len(), model.named_tensors().len());
        let expected = 9 * 2 + 2 + usize::from(!tied);
        assert_eq!(trainable.len(), expected);
        for (name, var) in trainable {
            let grad = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name} (tied: {tied})"));
            assert!(
                tensor_values(grad).iter().any(|g| *g != 0.0),
                "all-zero gradient for {name} (tied: {tied})"
            );
        }
    }
    // Each family's own weights (biases, q/k norms) are trainable and reached too.
    for family in FAMILIES {
        let config = family_config(family);
        let model = Model::random(config.clone(), 2, &Device::Cpu).unwrap();
        let ids = token_ids(2, 8, 50, 2);
        let grads = next_token_loss(&model, &ids).backward().unwrap();
        let trainable = model.trainable();
        assert_eq!(trainable.len(), weight_names(&config).len(), "{family:?}");
        let count = |part: &str| trainable.iter().filter(|(n, _)| n.contains(part)).count();
        let expected_biases = match family {
            ModelFamily::Llama => 7 * 2,
            ModelFamily::Mistral => 0,
            ModelFamily::Qwen2 => 3 * 2,
            ModelFamily::Qwen3 => 4 * 2,
        };
        assert_eq!(count(".bias"), expected_biases, "{family:?}");
        let expected_norms = if family == ModelFamily::Qwen3 {
            2 * 2
        } else {
            0
        };
        assert_eq!(count(".q_norm.") + count(".k_norm."), expected_norms);
        for (name, var) in trainable {
            let grad = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name} ({family:?})"));
            assert!(
                tensor_values(grad).iter().any(|g| *g != 0.0),
                "all-zero gradient for {name} ({family:?})"
            );
        }
    }
}

#[test]
fn lora_gradients_reach_every_adapter_and_no_base_weight() {
    let configs = std::iter::once(small_config(false)).chain(FAMILIES.map(family_config));
    for config in configs {
        lora_gradients_reach_every_adapter(config);
    }
}

fn lora_gradients_reach_every_adapter(config: LlamaConfig) {
    let mut model = Model::random(config, 4, &Device::Cpu).unwrap();
    model.add_lora(&all_targets(), 5).unwrap();
    randomize_lora_b(&model, 6);
    let ids = token_ids(2, 8, 50, 4);
    let grads = next_token_loss(&model, &ids).backward().unwrap();
    let trainable = model.trainable();
    assert_eq!(trainable.len(), 2 * 7 * 2);
    for (name, var) in &trainable {
        assert!(
            name.contains(".lora_A.") || name.contains(".lora_B."),
            "{name}"
        );
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(
            tensor_values(grad).iter().any(|g| *g != 0.0),
            "zero gradient for {name}"
        );
    }
    for (name, tensor) in model.named_tensors() {
        if name.contains(".lora_") {
            continue;
        }
        assert!(!tensor.is_variable(), "base weight {name} is a variable");
        assert!(
            grads.get(&tensor).is_none(),
            "base weight {name} got a gradient"
        );
    }
}

/// Central finite differences of the loss in f64 (step 1e-5) against backprop, for one
/// element in each kind of weight. Tolerance: |fd - grad| <= 1e-7 + 1e-5 |grad|.
#[test]
fn gradients_match_finite_differences() {
    let ids = token_ids(2, 7, 50, 9);
    let full = Model::random(small_config(false), 10, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let full_checks = [
        ("model.layers.0.self_attn.q_proj.weight", 37),
        ("model.layers.1.self_attn.k_proj.weight", 5),
        ("model.layers.1.self_attn.v_proj.weight", 300),
        ("model.layers.0.self_attn.o_proj.weight", 11),
        ("model.layers.1.mlp.down_proj.weight", 123),
        ("model.layers.0.mlp.gate_proj.weight", 77),
        ("model.layers.0.input_layernorm.weight", 3),
        ("model.layers.1.post_attention_layernorm.weight", 30),
        ("model.norm.weight", 17),
        ("lm_head.weight", 64),
    ];
    check_finite_differences(&full, &ids, &full_checks);

    // The embedding row of a token that occurs in the input.
    let first_token = tensor_values(&ids)[0] as usize;
    let embedding_element = first_token * 32 + 5;
    check_finite_differences(
        &full,
        &ids,
        &[("model.embed_tokens.weight", embedding_element)],
    );

    let mut lora = Model::random(small_config(true), 11, &Device::Cpu).unwrap();
    lora.add_lora(&all_targets(), 12).unwrap();
    let lora = lora.to_dtype(DType::F64).unwrap();
    randomize_lora_b(&lora, 13);
    check_finite_differences(
        &lora,
        &ids,
        &[
            (
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                9,
            ),
            (
                "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight",
                6,
            ),
            (
                "base_model.model.model.layers.1.mlp.up_proj.lora_A.weight",
                40,
            ),
            (
                "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight",
                21,
            ),
        ],
    );
}

/// The same check on each family's own weights: biases, Qwen3's q/k norms, and a
/// projection under Mistral's sliding window.
#[test]
fn family_gradients_match_finite_differences() {
    let ids = token_ids(2, 7, 50, 31);
    let checks: [(ModelFamily, &[(&str, usize)]); 4] = [
        (
            ModelFamily::Llama,
            &[
                ("model.layers.0.self_attn.q_proj.bias", 7),
                ("model.layers.1.self_attn.o_proj.bias", 2),
                ("model.layers.0.mlp.gate_proj.bias", 11),
                ("model.layers.1.mlp.down_proj.bias", 3),
            ],
        ),
        (
            ModelFamily::Mistral,
            &[
                ("model.layers.0.self_attn.q_proj.weight", 37),
                ("model.layers.1.self_attn.k_proj.weight", 5),
            ],
        ),
        (
            ModelFamily::Qwen2,
            &[
                ("model.layers.1.self_attn.k_proj.bias", 4),
                ("model.layers.0.self_attn.v_proj.bias", 9),
            ],
        ),
        (
            ModelFamily::Qwen3,
            &[
                ("model.layers.0.self_attn.q_norm.weight", 5),
                ("model.layers.1.self_attn.k_norm.weight", 3),
                ("model.layers.0.self_attn.q_proj.bias", 20),
                ("model.layers.1.self_attn.o_proj.weight", 40),
            ],
        ),
    ];
    for (family, family_checks) in checks {
        let model = Model::random(family_config(family), 32, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        check_finite_differences(&model, &ids, family_checks);
    }
}

fn check_finite_differences(model: &Model, ids: &Tensor, checks: &[(&str, usize)]) {
    let step = 1e-5;
    let trainable: HashMap<String, Var> = model.trainable().into_iter().collect();
    let loss_value = |m: &Model| next_token_loss(m, ids).to_scalar::<f64>().unwrap();
    let grads = next_token_loss(model, ids).backward().unwrap();
    for &(name, element) in checks {
        let var = trainable
            .get(name)
            .unwrap_or_else(|| panic!("{name} not trainable"));
        let original: Vec<f64> = var.flatten_all().unwrap().to_vec1().unwrap();
        let set_element = |value: f64| {
            let mut values = original.clone();
            values[element] = value;
            let tensor = Tensor::from_vec(values, var.shape().clone(), &Device::Cpu).unwrap();
            var.set(&tensor).unwrap();
        };
        set_element(original[element] + step);
        let plus = loss_value(model);
        set_element(original[element] - step);
        let minus = loss_value(model);
        set_element(original[element]);
        let numeric = (plus - minus) / (2.0 * step);
        let analytic: f64 = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()[element];
        assert!(
            analytic != 0.0,
            "{name}[{element}]: zero gradient makes the check vacuous"
        );
        assert!(
            (numeric - analytic).abs() <= 1e-7 + 1e-5 * analytic.abs(),
            "{name}[{element}]: finite difference {numeric:e} vs backprop {analytic:e}"
        );
    }
}

// ---------------------------------------------------------------- behaviour

#[test]
fn logits_at_a_position_ignore_later_tokens() {
    let model = Model::random(small_config(false), 14, &Device::Cpu).unwrap();
    let ids = token_ids(1, 10, 50, 14);
    let mut changed: Vec<u32> = ids.flatten_all().unwrap().to_vec1().unwrap();
    let cut = 6;
    for id in &mut changed[cut..] {
        *id = (*id + 17) % 50;
    }
    let changed = Tensor::from_vec(changed, (1, 10), &Device::Cpu).unwrap();
    let logits = model.forward(&ids).unwrap();
    let logits_changed = model.forward(&changed).unwrap();
    let prefix = |t: &Tensor| t.narrow(1, 0, cut).unwrap();
    assert_eq!(
        tensor_values(&prefix(&logits)),
        tensor_values(&prefix(&logits_changed))
    );
    let suffix = |t: &Tensor| t.narrow(1, cut, 10 - cut).unwrap();
    assert!(max_abs_diff(&suffix(&logits), &suffix(&logits_changed)) > 0.0);
}

/// With a window of 3 and 2 layers a position sees at most 4 positions back, so changing the
/// first token leaves the logits from position 5 on bit-identical.
#[test]
fn sliding_window_hides_positions_older_than_the_window() {
    let windowed = Model::random(family_config(ModelFamily::Mistral), 14, &Device::Cpu).unwrap();
    let ids = token_ids(1, 10, 50, 14);
    let mut changed: Vec<u32> = ids.flatten_all().unwrap().to_vec1().unwrap();
    changed[0] = (changed[0] + 17) % 50;
    let changed = Tensor::from_vec(changed, (1, 10), &Device::Cpu).unwrap();
    let logits = windowed.forward(&ids).unwrap();
    let logits_changed = windowed.forward(&changed).unwrap();
    let from = |t: &Tensor, start: usize| t.narrow(1, start, 10 - start).unwrap();
    assert_eq!(
        tensor_values(&from(&logits, 5)),
        tensor_values(&from(&logits_changed, 5))
    );
    assert!(max_abs_diff(&from(&logits, 4), &from(&logits_changed, 4)) > 0.0);
}

/// Runs `clients/python/llama_reference.py` on the checkpoint in `dir` for the token ids
/// `ids` `(batch, seq)`; its logits as an f32 tensor.
fn numpy_reference_logits(dir: &Path, ids: &Tensor, vocab: usize) -> Tensor {
    let rows: Vec<Vec<u32>> = ids.to_vec2().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python/llama_reference.py");
    let output = std::process::Command::new("python3")
        .arg(&script)
        .arg(dir)
        .arg(serde_json::to_string(&rows).unwrap())
        .output()
        .expect("python3 runs (install clients/python/requirements.txt)");
    assert!(
        output.status.success(),
        "reference failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reference: Vec<Vec<Vec<f64>>> = serde_json::from_slice(&output.stdout).unwrap();
    let flat: Vec<f64> = reference.into_iter().flatten().flatten().collect();
    let (batch, seq) = ids.dims2().unwrap();
    Tensor::from_vec(flat, (batch, seq, vocab), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

/// Hand-written `config.json`s, one per family and RoPE scaling type, in both layouts:
/// each names what it exercises.
fn family_checkpoint_configs() -> Vec<(&'static str, serde_json::Value)> {
    let with = |extra: serde_json::Value| {
        let mut config = serde_json::json!({
            "vocab_size": 50, "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5, "max_position_embeddings": 64, "hidden_act": "silu",
            "tie_word_embeddings": false,
        });
        for (key, value) in extra.as_object().unwrap() {
            config[key] = value.clone();
        }
        config
    };
    vec![
        (
            "llama, linear scaling, transformers 5 layout",
            with(serde_json::json!({"model_type": "llama",
                "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}})),
        ),
        (
            "llama, dynamic scaling on a pass longer than max_position_embeddings, transformers 4 layout",
            with(serde_json::json!({"model_type": "llama", "max_position_embeddings": 8,
                "rope_theta": 100.0, "rope_scaling": {"type": "dynamic", "factor": 3.0}})),
        ),
        (
            "llama 3 scaling with low, medium and high frequencies, transformers 5 layout",
            with(serde_json::json!({"model_type": "llama",
                "rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                    "low_freq_factor": 1.0, "high_freq_factor": 8.0,
                    "original_max_position_embeddings": 256}})),
        ),
        (
            "llama, yarn scaling, attention and MLP biases, transformers 4 layout",
            with(serde_json::json!({"model_type": "llama", "attention_bias": true, "mlp_bias": true,
                "rope_theta": 10000.0, "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                    "original_max_position_embeddings": 16}})),
        ),
        (
            "llama, yarn with mscale ratio, beta_fast 8, untruncated, transformers 5 layout",
            with(serde_json::json!({"model_type": "llama",
                "rope_parameters": {"rope_type": "yarn", "rope_theta": 1000.0, "factor": 4.0,
                    "original_max_position_embeddings": 16, "mscale": 2.0, "mscale_all_dim": 1.0,
                    "beta_fast": 8, "truncate": false}})),
        ),
        (
            "llama, longrope on a pass longer than the original length (long factors), transformers 4 layout",
            with(serde_json::json!({"model_type": "llama", "rope_theta": 10000.0,
                "rope_scaling": {"type": "longrope", "original_max_position_embeddings": 8,
                    "short_factor": [1.0, 1.5, 2.0, 4.0], "long_factor": [1.0, 3.0, 9.0, 27.0]}})),
        ),
        (
            "llama, longrope within the original length (short factors), given factor, transformers 5 layout",
            with(serde_json::json!({"model_type": "llama",
                "rope_parameters": {"rope_type": "longrope", "rope_theta": 1000.0, "factor": 4.0,
                    "original_max_position_embeddings": 16,
                    "short_factor": [1.0, 1.5, 2.0, 4.0], "long_factor": [1.0, 3.0, 9.0, 27.0]}})),
        ),
        (
            "mistral, sliding window 5, transformers 4 layout",
            with(serde_json::json!({"model_type": "mistral", "sliding_window": 5,
                "rope_theta": 1000.0})),
        ),
        (
            "qwen2, q/k/v biases, tied embeddings, transformers 5 layout",
            with(serde_json::json!({"model_type": "qwen2", "tie_word_embeddings": true,
                "use_sliding_window": false, "sliding_window": 4, "max_window_layers": 2,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}})),
        ),
        (
            "qwen2, sliding window 4 from max_window_layers 1 on, transformers 4 layout",
            with(serde_json::json!({"model_type": "qwen2", "use_sliding_window": true,
                "sliding_window": 4, "max_window_layers": 1, "rope_theta": 10000.0})),
        ),
        (
            "qwen3, sliding window 3 on the first layer by layer_types, transformers 5 layout",
            with(serde_json::json!({"model_type": "qwen3", "head_dim": 8,
                "use_sliding_window": true, "sliding_window": 3, "max_window_layers": 2,
                "layer_types": ["sliding_attention", "full_attention"],
                "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}})),
        ),
        (
            "qwen3, q/k norms, head_dim 16, transformers 4 layout",
            with(serde_json::json!({"model_type": "qwen3", "head_dim": 16,
                "attention_bias": false, "rope_theta": 1000000.0, "rope_scaling": null})),
        ),
        (
            "qwen3, attention biases, llama3 scaling, transformers 5 layout",
            with(serde_json::json!({"model_type": "qwen3", "head_dim": 8, "attention_bias": true,
                "rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0,
                    "low_freq_factor": 1.0, "high_freq_factor": 8.0,
                    "original_max_position_embeddings": 256}})),
        ),
    ]
}

/// Writes `config` as `dir/config.json` and random values for every tensor it calls for as
/// `dir/model.safetensors`: weights in ±0.15, norm weights in [0.5, 1.5), biases in ±0.2.
fn write_random_checkpoint(dir: &Path, config: &serde_json::Value, seed: u64) {
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(config).unwrap()).unwrap();
    let parsed = LlamaConfig::from_file(&path).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tensors = HashMap::new();
    for name in weight_names(&parsed) {
        let shape = expected_shape(&parsed, &name);
        let (low, high) = if name.ends_with("norm.weight") {
            (0.5, 1.5)
        } else if name.ends_with(".bias") {
            (-0.2, 0.2)
        } else {
            (-0.15, 0.15)
        };
        let values: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| rng.random_range(low..high))
            .collect();
        let tensor = Tensor::from_vec(values, shape, &Device::Cpu).unwrap();
        tensors.insert(name, tensor);
    }
    write_safetensors(&dir.join("model.safetensors"), &tensors);
}

/// Every case is checked and the failures reported together, so one run shows which
/// families or scalings disagree.
#[test]
fn each_family_and_rope_scaling_matches_the_numpy_reference() {
    let mut failures = Vec::new();
    for (index, (label, config)) in family_checkpoint_configs().into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        write_random_checkpoint(dir.path(), &config, 40 + index as u64);
        let model = Model::load(dir.path(), &Device::Cpu).unwrap();
        // Longer than the dynamic case's max_position_embeddings and Mistral's window.
        let ids = token_ids(2, 12, 50, 50 + index as u64);
        let logits = model.forward(&ids).unwrap();
        // Logits far from zero, so that agreement within 1e-4 is not vacuous.
        let spread = max_abs_diff(&logits, &logits.zeros_like().unwrap());
        assert!(
            spread > 0.05,
            "{label}: logits too small to compare ({spread})"
        );
        let diff = max_abs_diff(&logits, &numpy_reference_logits(dir.path(), &ids, 50));
        if diff >= 1e-4 {
            failures.push(format!("{label}: max abs diff {diff}"));
        }

        // What ladder saves keeps the family and the scaling: it reloads identically and
        // the reference reads it the same.
        let saved = tempfile::tempdir().unwrap();
        model.save(saved.path(), false).unwrap();
        let reloaded = Model::load(saved.path(), &Device::Cpu).unwrap();
        assert_eq!(reloaded.config(), model.config(), "{label}");
        assert_eq!(
            tensor_values(&reloaded.forward(&ids).unwrap()),
            tensor_values(&logits),
            "{label}"
        );
        let diff = max_abs_diff(&logits, &numpy_reference_logits(saved.path(), &ids, 50));
        if diff >= 1e-4 {
            failures.push(format!("{label} (saved by ladder): max abs diff {diff}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn logits_match_the_numpy_reference_implementation() {
    for tied in [false, true] {
        let mut config = small_config(tied);
        config.rope_theta = 500.0;
        let model = Model::random(config, 15, &Device::Cpu).unwrap();
        // Norm weights of 1 would hide a misplaced norm weight.
        let mut rng = ChaCha8Rng::seed_from_u64(16);
        for (name, var) in model.trainable() {
            if !name.contains("norm") {
                continue;
            }
            let values: Vec<f32> = (0..var.elem_count())
                .map(|_| rng.random_range(0.5..1.5))
                .collect();
            let tensor = Tensor::from_vec(values, var.shape().clone(), &Device::Cpu).unwrap();
            var.set(&tensor).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path(), false).unwrap();
        let ids = token_ids(2, 9, 50, 18);
        let rows: Vec<Vec<u32>> = ids.to_vec2().unwrap();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python/llama_reference.py");
        let output = std::process::Command::new("python3")
            .arg(&script)
            .arg(dir.path())
            .arg(serde_json::to_string(&rows).unwrap())
            .output()
            .expect("python3 runs (install clients/python/requirements.txt)");
        assert!(
            output.status.success(),
            "reference failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let reference: Vec<Vec<Vec<f64>>> = serde_json::from_slice(&output.stdout).unwrap();
        let flat: Vec<f64> = reference.into_iter().flatten().flatten().collect();
        let expected = Tensor::from_vec(flat, (2, 9, 50), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let logits = model.forward(&ids).unwrap();
        let diff = max_abs_diff(&logits, &expected);
        assert!(diff < 1e-4, "max abs diff {diff} (tied: {tied})");
    }
}

// ---------------------------------------------------------------- checkpoints

#[test]
fn save_then_load_gives_bit_identical_logits() {
    for tied in [false, true] {
        let model = Model::random(small_config(tied), 19, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path(), false).unwrap();
        let loaded = Model::load(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(loaded.config(), model.config());
        assert!(loaded.lora().is_none());
        let ids = token_ids(2, 5, 50, 19);
        assert_eq!(
            tensor_values(&model.forward(&ids).unwrap()),
            tensor_values(&loaded.forward(&ids).unwrap())
        );
        let names: Vec<String> = read_safetensors(&dir.path().join("model.safetensors"))
            .into_keys()
            .collect();
        assert_eq!(names.contains(&"lm_head.weight".to_string()), !tied);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

#[test]
fn tied_checkpoint_with_a_stored_head_uses_the_embedding() {
    let model = Model::random(small_config(true), 20, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path(), false).unwrap();
    let path = dir.path().join("model.safetensors");
    let mut tensors = read_safetensors(&path);
    tensors.insert(
        "lm_head.weight".to_string(),
        Tensor::zeros((50, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    write_safetensors(&path, &tensors);
    let loaded = Model::load(dir.path(), &Device::Cpu).unwrap();
    let ids = token_ids(1, 4, 50, 20);
    assert_eq!(
        tensor_values(&model.forward(&ids).unwrap()),
        tensor_values(&loaded.forward(&ids).unwrap())
    );
}

#[test]
fn sharded_checkpoint_loads() {
    let model = Model::random(small_config(false), 21, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path(), false).unwrap();
    let single = dir.path().join("model.safetensors");
    let tensors = read_safetensors(&single);
    std::fs::remove_file(&single).unwrap();
    let mut shards = [HashMap::new(), HashMap::new()];
    let mut weight_map = serde_json::Map::new();
    for (name, tensor) in tensors {
        let shard = usize::from(name.contains("layers.1") || name.starts_with("lm_head"));
        let file = format!("model-0000{}-of-00002.safetensors", shard + 1);
        weight_map.insert(name.clone(), serde_json::json!(file));
        shards[shard].insert(name, tensor);
    }
    for (shard, tensors) in shards.iter().enumerate() {
        write_safetensors(
            &dir.path()
                .join(format!("model-0000{}-of-00002.safetensors", shard + 1)),
            tensors,
        );
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let loaded = Model::load(dir.path(), &Device::Cpu).unwrap();
    let ids = token_ids(2, 5, 50, 21);
    assert_eq!(
        tensor_values(&model.forward(&ids).unwrap()),
        tensor_values(&loaded.forward(&ids).unwrap())
    );

    // A tensor missing from the index is reported against the index file.
    let mut partial = index.clone();
    partial["weight_map"]
        .as_object_mut()
        .unwrap()
        .remove("model.norm.weight");
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        partial.to_string(),
    )
    .unwrap();
    let error = Model::load(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("model.safetensors.index.json") && error.contains("model.norm.weight"),
        "{error}"
    );
}

/// Rewrites the checkpoint in `dir` with every tensor in `dtype`; returns the stored values
/// widened to f32, by name.
fn store_checkpoint_as(dir: &Path, dtype: DType) -> HashMap<String, Vec<f32>> {
    let path = dir.join("model.safetensors");
    let narrowed: HashMap<String, Tensor> = read_safetensors(&path)
        .into_iter()
        .map(|(name, t)| (name, t.to_dtype(dtype).unwrap()))
        .collect();
    write_safetensors(&path, &narrowed);
    narrowed
        .into_iter()
        .map(|(name, t)| (name, tensor_values(&t.to_dtype(DType::F32).unwrap())))
        .collect()
}

#[test]
fn bf16_and_f16_checkpoints_load_for_scoring_in_their_dtype() {
    for dtype in [DType::BF16, DType::F16] {
        let model = Model::random(small_config(false), 22, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path(), false).unwrap();
        let stored = store_checkpoint_as(dir.path(), dtype);

        // Scoring keeps every weight as stored (a regression to widening every weight at
        // load time doubles the memory of a bf16 model and fails here) and computes in f32.
        let scoring = Model::load(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(scoring.dtype(), DType::F32, "{dtype:?}");
        assert!(scoring.trainable().is_empty(), "{dtype:?}");
        for (name, tensor) in scoring.named_tensors() {
            assert_eq!(tensor.dtype(), dtype, "{name}");
        }
        // Training widens every weight to an f32 variable, exactly.
        let training = Model::load_trainable(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(training.trainable().len(), stored.len());
        for (name, tensor) in training.named_tensors() {
            assert_eq!(tensor.dtype(), DType::F32, "{name}");
            assert_eq!(tensor_values(&tensor), stored[&name], "{name}");
        }

        // Widening bf16/f16 to f32 is exact and the f32 computation is the same, so the
        // logits and every score agree bit for bit with the eagerly widened model.
        let ids = token_ids(2, 7, 50, 22);
        let logits = scoring.forward(&ids).unwrap();
        assert_eq!(logits.dtype(), DType::F32);
        assert_eq!(
            tensor_values(&logits),
            tensor_values(&training.forward(&ids).unwrap()),
            "{dtype:?}"
        );
        // Against the f32 original only the rounding of the weights separates them.
        let diff = max_abs_diff(&model.forward(&ids).unwrap(), &logits);
        assert!(diff < 0.05, "{dtype:?} rounding moved logits by {diff}");
    }
}

#[test]
fn a_bf16_model_scores_items_exactly_as_its_f32_widening() {
    use crate::eval::{loglikelihoods, SpecialTokens};
    use crate::tokenizer::Tokenizer;
    let config = LlamaConfig {
        vocab_size: Tokenizer::byte().vocab_size(),
        ..small_config(true)
    };
    let dir = tempfile::tempdir().unwrap();
    Model::random(config, 29, &Device::Cpu)
        .unwrap()
        .save(dir.path(), false)
        .unwrap();
    store_checkpoint_as(dir.path(), DType::BF16);
    let scoring = Model::load(dir.path(), &Device::Cpu).unwrap();
    let widened = Model::load_trainable(dir.path(), &Device::Cpu).unwrap();
    let requests: Vec<(String, String)> = [
        ("The capital of France is", " Paris"),
        ("The capital of France is", " Rome"),
        ("2 + 2 =", " 4"),
        ("2 + 2 =", " five"),
    ]
    .iter()
    .map(|(c, x)| (c.to_string(), x.to_string()))
    .collect();
    let tokenizer = Tokenizer::byte();
    let score = |model: &Model| loglikelihoods(model, &tokenizer, SpecialTokens::None, &requests);
    assert_eq!(score(&scoring).unwrap(), score(&widened).unwrap());
}

#[test]
fn a_sharded_bf16_checkpoint_loads_in_its_dtype() {
    let model = Model::random(small_config(false), 30, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path(), false).unwrap();
    let single = dir.path().join("model.safetensors");
    let mut shards = [HashMap::new(), HashMap::new()];
    let mut weight_map = serde_json::Map::new();
    for (name, tensor) in read_safetensors(&single) {
        let shard = usize::from(name.contains("layers.1") || name.starts_with("lm_head"));
        let file = format!("model-0000{}-of-00002.safetensors", shard + 1);
        weight_map.insert(name.clone(), serde_json::json!(file));
        shards[shard].insert(name, tensor.to_dtype(DType::BF16).unwrap());
    }
    std::fs::remove_file(&single).unwrap();
    for (shard, tensors) in shards.iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", shard + 1);
        write_safetensors(&dir.path().join(file), tensors);
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let scoring = Model::load(dir.path(), &Device::Cpu).unwrap();
    for (name, tensor) in scoring.named_tensors() {
        assert_eq!(tensor.dtype(), DType::BF16, "{name}");
    }
    let widened = Model::load_trainable(dir.path(), &Device::Cpu).unwrap();
    let ids = token_ids(2, 5, 50, 30);
    assert_eq!(
        tensor_values(&scoring.forward(&ids).unwrap()),
        tensor_values(&widened.forward(&ids).unwrap())
    );
}

/// The header of a safetensors file: its JSON and the offset of the data section.
fn safetensors_header(bytes: &[u8]) -> (serde_json::Map<String, serde_json::Value>, usize) {
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    (header, 8 + header_len)
}

#[test]
fn a_truncated_or_corrupt_file_is_reported_with_the_file_and_the_tensor() {
    let model = Model::random(small_config(false), 31, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path(), false).unwrap();
    store_checkpoint_as(dir.path(), DType::BF16);
    let path = dir.path().join("model.safetensors");
    let original = std::fs::read(&path).unwrap();
    let (header, data_start) = safetensors_header(&original);
    let offsets = |name: &str| -> (usize, usize) {
        let entry = &header[name]["data_offsets"];
        (
            entry[0].as_u64().unwrap() as usize,
            entry[1].as_u64().unwrap() as usize,
        )
    };

    // Cut inside the data of the tensor that is stored last: it is the one named.
    let last = header
        .keys()
        .filter(|name| *name != "__metadata__")
        .max_by_key(|name| offsets(name).1)
        .unwrap()
        .clone();
    let (start, end) = offsets(&last);
    std::fs::write(&path, &original[..data_start + (start + end) / 2]).unwrap();
    for load in [Model::load, Model::load_trainable] {
        let error = load(dir.path(), &Device::Cpu).err().unwrap().to_string();
        assert!(
            error.contains(&path.display().to_string())
                && error.contains("truncated")
                && error.contains(&last),
            "{error}"
        );
    }

    // A header whose shape disagrees with the tensor's byte span.
    let victim = "model.layers.0.self_attn.k_proj.weight";
    let mut corrupt = header.clone();
    corrupt[victim]["shape"] = serde_json::json!([16, 31]);
    let text = serde_json::to_string(&corrupt).unwrap();
    let padding = (data_start - 8)
        .checked_sub(text.len())
        .expect("the edited header is no longer than the original");
    let mut bytes = original[..8].to_vec();
    bytes.extend_from_slice(text.as_bytes());
    bytes.extend(std::iter::repeat_n(b' ', padding));
    bytes.extend_from_slice(&original[data_start..]);
    std::fs::write(&path, &bytes).unwrap();
    let error = Model::load(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains(&path.display().to_string()) && error.contains(victim),
        "{error}"
    );

    // A file that is not safetensors at all names the file.
    std::fs::write(&path, b"not a safetensors file").unwrap();
    let error = Model::load(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains(&path.display().to_string()) && error.contains("safetensors"),
        "{error}"
    );
}

#[test]
fn missing_or_misshapen_tensor_is_named_in_the_error() {
    let model = Model::random(small_config(false), 23, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path(), false).unwrap();
    let path = dir.path().join("model.safetensors");
    let original = read_safetensors(&path);

    let mut missing = original.clone();
    missing.remove("model.layers.1.mlp.up_proj.weight");
    write_safetensors(&path, &missing);
    let error = Model::load(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("model.layers.1.mlp.up_proj.weight")
            && error.contains("missing")
            && error.contains("model.safetensors"),
        "{error}"
    );

    let mut misshapen = original;
    misshapen.insert(
        "model.layers.0.self_attn.k_proj.weight".to_string(),
        Tensor::zeros((32, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    write_safetensors(&path, &misshapen);
    let error = Model::load(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("model.layers.0.self_attn.k_proj.weight")
            && error.contains("[32, 32]")
            && error.contains("[16, 32]"),
        "{error}"
    );
}

#[test]
fn lora_checkpoints_round_trip_unmerged_and_merged() {
    let mut model = Model::random(small_config(false), 24, &Device::Cpu).unwrap();
    let lora = LoraConfig {
        rank: 4,
        alpha: 16.0,
        targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
    };
    model.add_lora(&lora, 25).unwrap();
    randomize_lora_b(&model, 26);
    let ids = token_ids(2, 6, 50, 24);
    let logits = model.forward(&ids).unwrap();

    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path(), false).unwrap();
    let adapter_config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(adapter_config["peft_type"], "LORA");
    assert_eq!(adapter_config["task_type"], "CAUSAL_LM");
    assert_eq!(adapter_config["r"], 4);
    assert_eq!(adapter_config["lora_alpha"], 16.0);
    assert_eq!(adapter_config["bias"], "none");
    // A model not loaded from a directory has its base weights in the saved directory.
    assert_eq!(
        adapter_config["base_model_name_or_path"],
        dir.path().canonicalize().unwrap().display().to_string()
    );
    let adapter = read_safetensors(&dir.path().join("adapter_model.safetensors"));
    assert_eq!(adapter.len(), 2 * 3 * 2);
    let a = &adapter["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"];
    assert_eq!(a.dims(), &[4, 32]);
    let b = &adapter["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"];
    assert_eq!(b.dims(), &[32, 4]);

    let unmerged = Model::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(unmerged.lora(), Some(&lora));
    assert_eq!(unmerged.trainable().len(), 12);
    assert_eq!(
        tensor_values(&logits),
        tensor_values(&unmerged.forward(&ids).unwrap())
    );

    // An adapter on a loaded base names the directory the base came from, as PEFT does.
    let base_dir = tempfile::tempdir().unwrap();
    Model::random(small_config(false), 24, &Device::Cpu)
        .unwrap()
        .save(base_dir.path(), false)
        .unwrap();
    let mut tuned = Model::load(base_dir.path(), &Device::Cpu).unwrap();
    tuned.add_lora(&lora, 25).unwrap();
    let tuned_dir = tempfile::tempdir().unwrap();
    tuned.save(tuned_dir.path(), false).unwrap();
    let tuned_config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tuned_dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        tuned_config["base_model_name_or_path"],
        base_dir
            .path()
            .canonicalize()
            .unwrap()
            .display()
            .to_string()
    );

    // Merging into the same directory removes the adapter files written above.
    model.save(dir.path(), true).unwrap();
    assert!(!dir.path().join("adapter_config.json").exists());
    assert!(!dir.path().join("adapter_model.safetensors").exists());
    let merged = Model::load(dir.path(), &Device::Cpu).unwrap();
    assert!(merged.lora().is_none());
    let diff = max_abs_diff(&logits, &merged.forward(&ids).unwrap());
    assert!(diff < 1e-4, "merged logits differ by {diff}");
}

#[test]
fn frozen_weights_stay_bit_identical_through_an_update() {
    let mut model = Model::random(small_config(false), 27, &Device::Cpu).unwrap();
    model.add_lora(&all_targets(), 28).unwrap();
    // Copies of the values: the tensors share storage with the Vars that the update writes.
    let values = |m: &Model| -> Vec<(String, Vec<f32>)> {
        m.named_tensors()
            .iter()
            .map(|(name, t)| (name.clone(), tensor_values(t)))
            .collect()
    };
    let before = values(&model);
    let ids = token_ids(2, 6, 50, 27);
    let grads = next_token_loss(&model, &ids).backward().unwrap();
    for (_, var) in model.trainable() {
        let grad = grads.get(var.as_tensor()).unwrap();
        let updated = (var.as_tensor() - grad.affine(0.1, 0.0).unwrap()).unwrap();
        var.set(&updated).unwrap();
    }
    let after = values(&model);
    for ((name, old), (_, new)) in before.iter().zip(after.iter()) {
        if name.contains(".lora_") {
            continue;
        }
        assert_eq!(old, new, "{name}");
    }
    let changed = before
        .iter()
        .zip(after.iter())
        .filter(|((name, old), (_, new))| name.contains(".lora_B.") && old != new)
        .count();
    assert_eq!(changed, 14);
}

#[test]
fn a_random_checkpoint_is_written_in_its_dtype_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(false);
    let size = super::write_random_checkpoint(dir.path(), &config, DType::BF16, 32).unwrap();
    assert_eq!(
        size,
        std::fs::metadata(dir.path().join("model.safetensors"))
            .unwrap()
            .len()
    );
    // Two bytes a parameter plus the header.
    let parameters = config.parameter_count() as u64;
    assert!(
        size >= 2 * parameters && size < 2 * parameters + 16_384,
        "{size}"
    );
    let model = Model::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(model.config(), &config);
    for (name, tensor) in model.named_tensors() {
        assert_eq!(tensor.dtype(), DType::BF16, "{name}");
        let values = tensor_values(&tensor.to_dtype(DType::F32).unwrap());
        if name.ends_with("norm.weight") {
            assert!(values.iter().all(|&v| v == 1.0), "{name}");
        } else {
            let spread = values.iter().map(|v| v * v).sum::<f32>() / values.len() as f32;
            assert!(
                (spread.sqrt() - 0.02).abs() < 0.005,
                "{name}: std {}",
                spread.sqrt()
            );
        }
    }
    // The same seed writes the same file.
    let again = tempfile::tempdir().unwrap();
    super::write_random_checkpoint(again.path(), &config, DType::BF16, 32).unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("model.safetensors")).unwrap(),
        std::fs::read(again.path().join("model.safetensors")).unwrap()
    );
}
