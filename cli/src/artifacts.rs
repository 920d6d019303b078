//! `ladder artifacts ls|get`: the files runs uploaded to the coordinator's artifact
//! store. `get` streams each file into a temporary file beside its destination, checks
//! its size and SHA-256, and only then renames it into place, so an interrupted or
//! corrupted download never leaves a file under the artifact's name.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use ladder_proto::v1 as pb;
use ladder_proto::v1::artifact_service_client::ArtifactServiceClient;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::client::status_error;
use crate::connect::channel;
use crate::output::{self, print_table};
use crate::ClientArgs;

#[derive(Subcommand)]
pub enum ArtifactsCommand {
    /// List a run's artifacts: name, size, SHA-256 and the attempt that uploaded each.
    Ls {
        run: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Download a run's artifacts (all, or NAME: a file, or a directory ending in `/`)
    /// into DIR, keeping their paths, each checked against its SHA-256.
    Get {
        run: String,
        name: Option<String>,
        /// Directory to write into (created if needed).
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
}

impl ArtifactsCommand {
    pub fn client(&self) -> &ClientArgs {
        match self {
            ArtifactsCommand::Ls { client, .. } | ArtifactsCommand::Get { client, .. } => client,
        }
    }
}

pub async fn run(command: ArtifactsCommand) -> anyhow::Result<()> {
    match command {
        ArtifactsCommand::Ls { run, client } => ls(&client, &run).await,
        ArtifactsCommand::Get {
            run,
            name,
            out,
            client,
        } => get(&client, &run, name.as_deref(), &out).await,
    }
}

type Client = ArtifactServiceClient<crate::connect::CoordinatorChannel>;

async fn client(args: &ClientArgs) -> anyhow::Result<Client> {
    Ok(
        ArtifactServiceClient::new(channel(&args.coordinator).await?)
            .max_decoding_message_size(ladder_limits::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(ladder_limits::MAX_MESSAGE_BYTES),
    )
}

/// Every artifact of `run_id`, page after page.
async fn list_all(client: &mut Client, run_id: &str) -> anyhow::Result<Vec<pb::Artifact>> {
    let mut artifacts = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = client
            .list_artifacts(pb::ListArtifactsRequest {
                run_id: run_id.to_string(),
                page_size: ladder_limits::MAX_PAGE_SIZE as u32,
                cursor,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        artifacts.extend(page.artifacts);
        if page.next_cursor.is_empty() {
            return Ok(artifacts);
        }
        cursor = page.next_cursor;
    }
}

/// An artifact as `--json` prints it (also in `ladder runs show --json`).
pub fn artifact_json(artifact: &pb::Artifact) -> serde_json::Value {
    json!({
        "name": artifact.name,
        "size": artifact.size,
        "sha256": artifact.sha256,
        "attempt": artifact.attempt,
        "created_ms": artifact.created_ms,
    })
}

/// Rows of the artifacts table: name, size, short hash, attempt.
pub fn artifact_rows(artifacts: &[pb::Artifact]) -> Vec<Vec<String>> {
    artifacts
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                size_text(a.size),
                a.sha256.chars().take(12).collect(),
                a.attempt.to_string(),
            ]
        })
        .collect()
}

pub const ARTIFACT_HEADERS: [&str; 4] = ["ARTIFACT", "SIZE", "SHA256", "ATTEMPT"];

fn size_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

async fn ls(args: &ClientArgs, run_id: &str) -> anyhow::Result<()> {
    let mut client = client(args).await?;
    let artifacts = list_all(&mut client, run_id).await?;
    if args.json {
        output::print_json(&json!(artifacts
            .iter()
            .map(artifact_json)
            .collect::<Vec<_>>()));
        return Ok(());
    }
    if artifacts.is_empty() {
        println!("run {run_id} has no artifacts");
        return Ok(());
    }
    print_table(&ARTIFACT_HEADERS, &artifact_rows(&artifacts));
    Ok(())
}

async fn get(
    args: &ClientArgs,
    run_id: &str,
    name: Option<&str>,
    out: &Path,
) -> anyhow::Result<()> {
    let mut client = client(args).await?;
    let all = list_all(&mut client, run_id).await?;
    let chosen: Vec<pb::Artifact> = match name {
        None => all,
        Some(name) => {
            let prefix = format!("{}/", name.trim_end_matches('/'));
            all.into_iter()
                .filter(|a| a.name == name || a.name.starts_with(&prefix))
                .collect()
        }
    };
    if chosen.is_empty() {
        match name {
            Some(name) => bail!(
                "run {run_id} has no artifact {name:?} (ladder artifacts ls {run_id} lists them)"
            ),
            None => bail!("run {run_id} has no artifacts"),
        }
    }
    let mut written = Vec::new();
    for artifact in &chosen {
        // Names were checked by the coordinator; checked again before touching the disk.
        ladder_metrics::line::check_artifact_path(&artifact.name)
            .map_err(|problem| anyhow::anyhow!("the coordinator sent an unsafe name: {problem}"))?;
        let destination = out.join(&artifact.name);
        download(&mut client, run_id, artifact, &destination).await?;
        written.push(json!({
            "name": artifact.name,
            "path": destination.display().to_string(),
            "size": artifact.size,
            "sha256": artifact.sha256,
        }));
        if !args.json {
            println!("{}  {}", destination.display(), size_text(artifact.size));
        }
    }
    if args.json {
        output::print_json(&json!(written));
    }
    Ok(())
}

/// Downloads `artifact` to `destination` through a temporary file in the same directory,
/// renamed only once its size and hash match.
async fn download(
    client: &mut Client,
    run_id: &str,
    artifact: &pb::Artifact,
    destination: &Path,
) -> anyhow::Result<()> {
    let directory = destination.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(directory)
        .await
        .with_context(|| format!("failed to create {}", directory.display()))?;
    let file_name = destination
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = directory.join(format!(".{file_name}.{:08x}.part", rand::random::<u32>()));
    let result = download_to(client, run_id, artifact, &temp).await;
    match result {
        Ok(()) => tokio::fs::rename(&temp, destination)
            .await
            .with_context(|| format!("failed to move the download to {}", destination.display())),
        Err(error) => {
            let _ = tokio::fs::remove_file(&temp).await;
            Err(error)
        }
    }
}

async fn download_to(
    client: &mut Client,
    run_id: &str,
    artifact: &pb::Artifact,
    temp: &Path,
) -> anyhow::Result<()> {
    let mut stream = client
        .download_artifact(pb::DownloadArtifactRequest {
            run_id: run_id.to_string(),
            name: artifact.name.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut file = tokio::io::BufWriter::new(
        tokio::fs::File::create(temp)
            .await
            .with_context(|| format!("failed to create {}", temp.display()))?,
    );
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let mut expected: Option<pb::Artifact> = None;
    while let Some(message) = stream.message().await.map_err(status_error)? {
        match message.kind {
            Some(pb::download_artifact_response::Kind::Artifact(header)) => expected = Some(header),
            Some(pb::download_artifact_response::Kind::Chunk(chunk)) => {
                received += chunk.len() as u64;
                hasher.update(&chunk);
                file.write_all(&chunk)
                    .await
                    .with_context(|| format!("failed to write {}", temp.display()))?;
            }
            None => {}
        }
    }
    file.flush().await?;
    file.into_inner().sync_all().await?;
    let expected = expected.unwrap_or_else(|| artifact.clone());
    if received != expected.size {
        bail!(
            "{}: the download ended after {received} of {} bytes; nothing was written",
            artifact.name,
            expected.size
        );
    }
    let actual: String = hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    if actual != expected.sha256 || actual != artifact.sha256 {
        bail!(
            "{}: the downloaded content has SHA-256 {actual}, not the recorded {}; nothing was written",
            artifact.name,
            artifact.sha256
        );
    }
    Ok(())
}
