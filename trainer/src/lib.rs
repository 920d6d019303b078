//! ladder's built-in trainer: candle fine-tuning (full and LoRA) of LLaMA-family models
//! (LLaMA, Mistral, Qwen2, Qwen3) and lm-evaluation-harness-style multiple-choice scoring, run by
//! `ladder train` (standalone, or as a sweep's run) and `ladder eval`.
//!
//! How data moves through it:
//! - [`config`]: the run's [`config::TrainConfig`] (shared with the coordinator, which
//!   validates a sweep's `train:` block at submit time).
//! - [`tokenizer`] (Hugging Face `tokenizer.json` or byte-level) and [`model`] (the
//!   decoder, LoRA adapters, Hugging Face / PEFT checkpoints) are built by
//!   [`train::setup`].
//! - [`data`] reads JSONL or [`synthetic`] examples, tokenizes and packs them into
//!   fixed-length rows with a loss mask, and serves rows in an order that is a pure
//!   function of `(seed, step)`.
//! - [`train`] runs the loop: forward, masked cross-entropy, backward, gradient
//!   accumulation, the [`train::Collective`] all-reduce across data-parallel ranks
//!   ([`collective`] has the CPU one), clipping and [`optim`]'s AdamW step; it reports
//!   metrics through a [`train::Reporter`], evaluates on schedule and writes
//!   checkpoints that make a restarted run continue bit for bit.
//! - [`tasks`] loads multiple-choice tasks (JSONL, task YAML, built-in) and [`eval`]
//!   scores them: summed log-likelihood of each choice after the context, `acc`,
//!   `acc_norm`, `mc2`, few-shot contexts.
//! - [`launch`] turns a run started as one process per GPU into data-parallel ranks
//!   (NCCL on GPUs, TCP on CPUs); [`provenance`] hashes what a run was made from.

pub mod collective;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod launch;
pub mod model;
pub mod optim;
pub mod provenance;
pub mod synthetic;
pub mod tasks;
pub mod tokenizer;
pub mod train;

pub use error::{Result, TrainerError};
