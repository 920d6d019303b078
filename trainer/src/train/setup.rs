//! Building what a run trains: the device, the model (base or fresh, with LoRA),
//! the tokenizer and the data.

use super::*;

/// Picks the device named by the config: `auto` is the first visible GPU when ladder was
/// built with `cuda` and one is there, else the CPU.
pub fn device_for(name: &str, local_rank: usize) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                Ok(Device::new_cuda(local_rank)?)
            } else {
                Ok(Device::Cpu)
            }
        }
        "cuda" => Ok(Device::new_cuda(local_rank)?),
        other => {
            let ordinal = other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| {
                    TrainerError::config("device", format!("unknown device \"{other}\""))
                })?;
            Ok(Device::new_cuda(ordinal)?)
        }
    }
}

/// Everything a run needs, built from its config.
pub struct Setup {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub train: PackedData,
    pub held_out: Option<PackedData>,
    pub tasks: Vec<(Task, usize)>,
}

/// Builds the model (fresh or loaded, with adapters when LoRA is configured), the
/// tokenizer, the packed data and the evaluation tasks. Relative paths are resolved
/// against `base_dir`.
pub fn setup(config: &TrainConfig, base_dir: &Path, device: &Device) -> Result<Setup> {
    let resolve = |path: &str| -> PathBuf { base_dir.join(path) };
    let model_dir = config.model.path.as_deref().map(resolve);
    let tokenizer = match (&config.tokenizer, &model_dir) {
        (Some(path), _) => {
            Tokenizer::for_model_dir(resolve(path).parent().unwrap_or_else(|| Path::new(".")))?
        }
        (None, Some(dir)) => Tokenizer::for_model_dir(dir)?,
        (None, None) => Tokenizer::byte(),
    };
    let mut model = match (config.model.init.as_str(), &model_dir, &config.model.arch) {
        ("random", _, Some(arch)) => {
            let llama = llama_config(arch, &tokenizer, config.seq_len)?;
            Model::random(llama, config.seed, device)?
        }
        (_, Some(dir), _) => Model::load_trainable(dir, device)?,
        _ => {
            return Err(TrainerError::config(
                "model",
                "needs init: random with an arch, or a path",
            ))
        }
    };
    let vocab = model.config().vocab_size;
    if tokenizer.vocab_size() > vocab {
        return Err(TrainerError::config(
            "model",
            format!(
                "the tokenizer has {} tokens but the model's vocabulary only {vocab}",
                tokenizer.vocab_size()
            ),
        ));
    }
    if config.seq_len > model.config().max_position_embeddings {
        return Err(TrainerError::config(
            "seq_len",
            format!(
                "{} is longer than the model's max_position_embeddings {}",
                config.seq_len,
                model.config().max_position_embeddings
            ),
        ));
    }
    if let Some(lora) = &config.lora {
        let lora = LoraConfig {
            rank: lora.rank,
            alpha: lora.alpha.unwrap_or(2.0 * lora.rank as f64),
            targets: lora.targets.clone(),
        };
        model.add_lora(&lora, config.seed ^ 0x4c6f_5241)?;
    }
    let (train_examples, held_out_examples) = load_examples(&config.data, config.seed, base_dir)?;
    let train = PackedData::pack(&train_examples, &tokenizer, config.seq_len)?;
    if train.is_empty() {
        return Err(TrainerError::config("data", "no training sequences"));
    }
    let held_out = if held_out_examples.is_empty() {
        None
    } else {
        let packed = PackedData::pack(&held_out_examples, &tokenizer, config.seq_len)?;
        Some(packed.truncated(config.data.validation_sequences))
    };
    let mut loaded_tasks = Vec::new();
    for (index, task) in config.eval.iter().enumerate() {
        let local = resolve(&task.task);
        let spec = if local.exists() {
            local.display().to_string()
        } else {
            task.task.clone()
        };
        let loaded = tasks::load_task(&spec, task.limit).map_err(|error| {
            TrainerError::config(format!("eval.{index}.task"), error.to_string())
        })?;
        loaded_tasks.push((loaded, task.shots));
    }
    Ok(Setup {
        model,
        tokenizer,
        train,
        held_out,
        tasks: loaded_tasks,
    })
}

/// The Hugging Face config of a fresh model of shape `arch`.
pub(super) fn llama_config(
    arch: &ladder_spec::train_config::ArchConfig,
    tokenizer: &Tokenizer,
    seq_len: usize,
) -> Result<LlamaConfig> {
    let d_ff = arch
        .d_ff
        .unwrap_or_else(|| (arch.d_model * 8 / 3).div_ceil(32) * 32);
    let value = serde_json::json!({
        "vocab_size": arch.vocab.unwrap_or(tokenizer.vocab_size()),
        "hidden_size": arch.d_model,
        "intermediate_size": d_ff,
        "num_hidden_layers": arch.layers,
        "num_attention_heads": arch.heads,
        "num_key_value_heads": arch.kv_heads.unwrap_or(arch.heads),
        "rms_norm_eps": 1e-5,
        "rope_theta": arch.rope_theta,
        "max_position_embeddings": arch.max_seq.unwrap_or(seq_len.max(512)),
        "tie_word_embeddings": arch.tie_embeddings,
        "bos_token_id": tokenizer.bos_id(),
        "eos_token_id": tokenizer.eos_id(),
    });
    let config: LlamaConfig = serde_json::from_value(value)
        .map_err(|e| TrainerError::config("model.arch", e.to_string()))?;
    config.validate()?;
    Ok(config)
}
