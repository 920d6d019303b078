//! Generates the `ladder.v1` gRPC code with protox, so that no system `protoc` is needed.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "ladder/v1/common.proto",
    "ladder/v1/sweeps.proto",
    "ladder/v1/runs.proto",
    "ladder/v1/agents.proto",
    "ladder/v1/artifacts.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let file_descriptors = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Kept for gRPC server reflection.
    std::fs::write(
        out_dir.join("ladder_descriptor.bin"),
        file_descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Written by hand in src/watch.rs (shared pre-encoded points), same wire format.
        .extern_path(
            ".ladder.v1.WatchRunResponse",
            "crate::watch::WatchRunResponse",
        )
        .compile_fds(file_descriptors)?;
    Ok(())
}
