//! The trainer's configuration: [`TrainConfig`] is shared with the coordinator, which
//! validates a sweep's `train:` block at submit time; this module reads the standalone
//! `ladder train CONFIG.yaml` form.

use std::path::Path;

pub use ladder_spec::train_config::{
    ArchConfig, DataConfig, EvalTaskConfig, LoraSection, ModelConfig, OptimConfig, SaveConfig,
    TrainConfig,
};

use crate::{Result, TrainerError};

/// Reads and validates a YAML train config; errors carry `file:line:column`.
pub fn read_file(path: &Path) -> Result<TrainConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))?;
    ladder_spec::parse_train_file(&path.display().to_string(), &text)
        .map_err(|errors| TrainerError::File(errors.to_string()))
}

/// Reads the rendered JSON a sweep run receives in argv.
pub fn from_json_text(text: &str) -> Result<TrainConfig> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| TrainerError::config("--config-json", e.to_string()))?;
    TrainConfig::from_json(&value).map_err(|e| {
        let field = if e.path.is_empty() {
            "train".to_string()
        } else {
            format!("train.{}", e.path)
        };
        TrainerError::config(field, e.message)
    })
}
