//! The coordinator's error type and its one mapping to gRPC statuses.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CoordinatorError {
    #[error("{0}")]
    InvalidSweep(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// An agent registered with a name that is bound to another secret (see
    /// [`crate::identity`]).
    #[error("{0}")]
    AgentNameRefused(String),
    /// A store failure without an underlying error value (a broken invariant, an earlier
    /// failure replayed to later requests).
    #[error("store error: {0}")]
    Store(String),
    #[error("store error: {0}")]
    Sled(#[from] sled::Error),
    #[error("store error: corrupt record {key:?} in tree {tree}: {source}")]
    CorruptRecord {
        tree: String,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("store error: cannot encode record: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("a query task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the coordinator is shutting down")]
    ShuttingDown,
}

impl CoordinatorError {
    /// Whether the store failed: the scheduler then stops acknowledging anything.
    pub fn is_store(&self) -> bool {
        matches!(
            self,
            CoordinatorError::Store(_)
                | CoordinatorError::Sled(_)
                | CoordinatorError::CorruptRecord { .. }
                | CoordinatorError::Encode(_)
        )
    }
}

/// What an agent sent that the protocol does not allow is an invalid argument.
impl From<ladder_protocol::ProtocolError> for CoordinatorError {
    fn from(error: ladder_protocol::ProtocolError) -> Self {
        CoordinatorError::InvalidArgument(error.0)
    }
}

impl From<CoordinatorError> for tonic::Status {
    fn from(error: CoordinatorError) -> Self {
        let message = error.to_string();
        match error {
            CoordinatorError::InvalidSweep(_) | CoordinatorError::InvalidArgument(_) => {
                tonic::Status::invalid_argument(message)
            }
            CoordinatorError::NotFound { .. } => tonic::Status::not_found(message),
            CoordinatorError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            CoordinatorError::PermissionDenied(_) => tonic::Status::permission_denied(message),
            CoordinatorError::AgentNameRefused(_) => {
                // Marked, so that the agent stops instead of retrying a final refusal.
                let mut metadata = tonic::metadata::MetadataMap::new();
                metadata.insert(
                    ladder_proto::AGENT_NAME_REFUSED_METADATA,
                    tonic::metadata::MetadataValue::from_static("1"),
                );
                tonic::Status::with_metadata(tonic::Code::PermissionDenied, message, metadata)
            }
            CoordinatorError::ShuttingDown => tonic::Status::unavailable(message),
            CoordinatorError::Store(_)
            | CoordinatorError::Sled(_)
            | CoordinatorError::CorruptRecord { .. }
            | CoordinatorError::Encode(_)
            | CoordinatorError::Transport(_)
            | CoordinatorError::Reflection(_)
            | CoordinatorError::Task(_)
            | CoordinatorError::Io { .. } => tonic::Status::internal(message),
        }
    }
}
