//! The gRPC protocol of ladder: package `ladder.v1`, one `.proto` file per service under
//! `proto/ladder/v1/`.
//!
//! - `SweepService` (sweeps.proto): submit, list, show, watch, pause/resume and cancel sweeps.
//! - `RunService` (runs.proto): list and show runs with their attempts, metrics and logs.
//! - `AgentService` (agents.proto): the long-lived bidirectional stream agents open to the
//!   coordinator, the agent listing, and lifting an agent's quarantine or forgetting the
//!   secret its name is bound to.
//! - `ArtifactService` (artifacts.proto): agents upload the files runs produce, under
//!   their attempt's lease; readers list and download them.
//!
//! Code is generated at build time by `protox` (a pure-Rust protobuf compiler) and
//! `tonic-prost-build`, so building needs no system `protoc`.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("ladder.v1");
    pub use crate::watch::{encode_points, WatchRunResponse};
}

mod watch;

/// Metadata key set (to `"1"`) on the status that refuses an agent session because the
/// name it registers is enrolled with another secret. The refusal is final until an admin
/// runs `ladder agents forget NAME`, so an agent that sees it stops instead of retrying,
/// unlike a refused token, which the operator may fix on the coordinator's side.
pub const AGENT_NAME_REFUSED_METADATA: &str = "ladder-agent-name-refused";

/// Encoded `FileDescriptorSet` of every ladder proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ladder_descriptor.bin"));
