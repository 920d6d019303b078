//! The gRPC protocol of ladder: package `ladder.v1`, one `.proto` file per service under
//! `proto/ladder/v1/`.
//!
//! - `SweepService` (sweeps.proto): submit, list, show, watch, pause/resume and cancel sweeps.
//! - `RunService` (runs.proto): list and show runs with their attempts, metrics and logs.
//! - `AgentService` (agents.proto): the long-lived bidirectional stream agents open to the
//!   coordinator, and the agent listing.
//!
//! Code is generated at build time by `protox` (a pure-Rust protobuf compiler) and
//! `tonic-prost-build`, so building needs no system `protoc`.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("ladder.v1");
}

/// Encoded `FileDescriptorSet` of every ladder proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ladder_descriptor.bin"));
