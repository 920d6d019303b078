//! Resumable checkpoints: writing them (synced, the newest two kept) and resuming from
//! the newest one that matches the run's config.

use super::*;

/// Checkpoint metadata (`state.json`).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct CheckpointState {
    pub(super) step: u64,
    /// The trajectory-relevant part of the config; a checkpoint from another config is
    /// refused rather than silently mixed in.
    pub(super) fingerprint: serde_json::Value,
}

pub(super) fn fingerprint(config: &TrainConfig) -> serde_json::Value {
    serde_json::json!({
        "model": config.model,
        "data": config.data,
        "tokenizer": config.tokenizer,
        "lora": config.lora,
        "optim": config.optim,
        "steps": config.steps,
        "batch_size": config.batch_size,
        "grad_accum": config.grad_accum,
        "seq_len": config.seq_len,
        "seed": config.seed,
        "data_parallel": config.data_parallel,
    })
}

pub(super) const LATEST: &str = "latest";

pub(super) const KEEP_CHECKPOINTS: usize = 2;

pub(super) fn save_checkpoint(
    dir: &Path,
    config: &TrainConfig,
    optimizer: &AdamW,
    step: u64,
) -> Result<()> {
    let name = format!("step-{step:08}");
    let staging = dir.join(format!("{name}.partial"));
    let final_dir = dir.join(&name);
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| TrainerError::io(&staging, e))?;
    let weights: HashMap<String, Tensor> = optimizer
        .vars()
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
        .collect();
    let (moments, steps) = optimizer.state();
    debug_assert_eq!(steps, step);
    candle_core::safetensors::save(&weights, staging.join("trainable.safetensors"))?;
    candle_core::safetensors::save(&moments, staging.join("optimizer.safetensors"))?;
    let state = CheckpointState {
        step,
        fingerprint: fingerprint(config),
    };
    write_synced(
        &staging.join("state.json"),
        serde_json::to_vec_pretty(&state)
            .expect("serializable")
            .as_slice(),
    )?;
    for file in ["trainable.safetensors", "optimizer.safetensors"] {
        let path = staging.join(file);
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| TrainerError::io(&path, e))?;
    }
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&staging, &final_dir).map_err(|e| TrainerError::io(&final_dir, e))?;
    let pointer = dir.join(format!("{LATEST}.partial"));
    write_synced(&pointer, name.as_bytes())?;
    std::fs::rename(&pointer, dir.join(LATEST)).map_err(|e| TrainerError::io(dir, e))?;
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
    // Keep the newest few.
    let mut existing: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| TrainerError::io(dir, e))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("step-") && !n.ends_with(".partial"))
        .collect();
    existing.sort();
    while existing.len() > KEEP_CHECKPOINTS {
        let old = existing.remove(0);
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

pub(super) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(|e| TrainerError::io(path, e))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| TrainerError::io(path, e))
}

/// Loads the newest checkpoint into the trainable variables and the optimizer; returns
/// its step, or `None` when there is none.
pub(super) fn resume(
    dir: &Path,
    config: &TrainConfig,
    optimizer: &mut AdamW,
    device: &Device,
) -> Result<Option<u64>> {
    let pointer = dir.join(LATEST);
    let name = match std::fs::read_to_string(&pointer) {
        Ok(name) => name.trim().to_string(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(TrainerError::io(pointer, error)),
    };
    let checkpoint = dir.join(&name);
    let state_path = checkpoint.join("state.json");
    let state_text =
        std::fs::read_to_string(&state_path).map_err(|e| TrainerError::io(&state_path, e))?;
    let state: CheckpointState = serde_json::from_str(&state_text)
        .map_err(|e| TrainerError::invalid(state_path.display(), e.to_string()))?;
    if state.fingerprint != fingerprint(config) {
        return Err(TrainerError::invalid(
            checkpoint.display(),
            "this checkpoint was written by a run with a different configuration; \
             remove the checkpoints directory or train into another output directory",
        ));
    }
    let weights = candle_core::safetensors::load(checkpoint.join("trainable.safetensors"), device)?;
    for (name, var) in optimizer.vars() {
        let tensor = weights.get(name).ok_or_else(|| {
            TrainerError::invalid(
                checkpoint.join("trainable.safetensors").display(),
                format!("missing {name}"),
            )
        })?;
        var.set(&tensor.to_dtype(var.dtype())?)?;
    }
    let moments = candle_core::safetensors::load(checkpoint.join("optimizer.safetensors"), device)?;
    optimizer.restore(&moments, state.step)?;
    Ok(Some(state.step))
}
