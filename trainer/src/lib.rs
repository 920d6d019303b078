//! ladder's built-in trainer: candle fine-tuning (full and LoRA) of LLaMA-architecture
//! models and lm-evaluation-harness-style multiple-choice scoring.

pub mod collective;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod model;
pub mod optim;
pub mod synthetic;
pub mod tasks;
pub mod tokenizer;
pub mod train;

pub use error::{Result, TrainerError};
