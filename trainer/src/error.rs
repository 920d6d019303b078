//! The trainer's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while building, training, saving or scoring a model.
/// Messages name the file, line or field at fault and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// A tensor operation failed (shape mismatch, device error, ...).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file was read but its content is wrong: `path` (with `:line` where known) and
    /// what is wrong with it.
    #[error("{location}: {message}")]
    Invalid { location: String, message: String },
    /// A configuration value is wrong; `field` is its dotted path (`optim.lr`).
    #[error("{field}: {message}")]
    Config { field: String, message: String },
    /// A configuration file with problems, each already carrying `file:line:column`.
    #[error("{0}")]
    File(String),
    /// A tokenizer failed to load or encode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The ranks of a data-parallel run could not meet or exchange (a peer died, the
    /// rendezvous timed out, NCCL failed).
    #[error("data parallel: {0}")]
    Collective(String),
}

impl TrainerError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainerError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn invalid(location: impl std::fmt::Display, message: impl Into<String>) -> Self {
        TrainerError::Invalid {
            location: location.to_string(),
            message: message.into(),
        }
    }

    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        TrainerError::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = TrainerError> = std::result::Result<T, E>;
