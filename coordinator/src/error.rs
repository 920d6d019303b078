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
    #[error("store error: {0}")]
    Store(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the coordinator is shutting down")]
    ShuttingDown,
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
            CoordinatorError::Store(_) | CoordinatorError::Io { .. } => {
                tonic::Status::internal(message)
            }
        }
    }
}
