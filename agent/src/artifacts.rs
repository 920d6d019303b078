//! Uploading a run's artifacts to the coordinator's artifact store when its command
//! ends, before the attempt's end is reported, so that a completed run has its files
//! recorded.
//!
//! What is uploaded: the paths in the run directory that the sweep declares
//! (`artifacts:`) and those the run reported with `@ladder.artifact {"path": ...}`
//! lines; a directory uploads each file under it (symbolic links are skipped). Each file
//! is hashed first (SHA-256), then streamed in chunks of
//! [`ladder_limits::ARTIFACT_CHUNK_BYTES`] over `ArtifactService/UploadArtifact`, under
//! the attempt's lease and the agent's secret; the coordinator records it only once
//! every byte arrived and the hash matched. A file is never held whole in memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ladder_proto::v1 as pb;
use ladder_proto::v1::artifact_service_client::ArtifactServiceClient;
use ladder_protocol::{AgentSecret, Lease};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tracing::{debug, warn};

/// How the agent reaches the artifact service: the coordinator's endpoint, its token
/// and the name and secret it registered with.
#[derive(Clone)]
pub struct Uploader {
    pub endpoint: tonic::transport::Endpoint,
    pub authorization: Option<MetadataValue<Ascii>>,
    pub agent: String,
    pub secret: AgentSecret,
}

impl std::fmt::Debug for Uploader {
    /// Names the agent only: the token and the secret stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploader")
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

/// What one attempt uploads when its command ends.
#[derive(Debug, Clone)]
pub struct AttemptArtifacts {
    pub uploader: Arc<Uploader>,
    pub lease: Lease,
    /// The sweep's `artifacts:` paths.
    pub declared: Vec<String>,
}

/// A file to upload: its path on disk and its name (relative to the run directory).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ArtifactFile {
    path: PathBuf,
    name: String,
}

/// Uploads the declared and `reported` paths of the attempt from `run_dir`. Returns
/// one line per problem (a path not found, a file refused), for the run's log; a
/// problem with one file does not stop the others.
pub async fn upload_attempt(
    artifacts: &AttemptArtifacts,
    run_dir: &Path,
    reported: &[String],
) -> Vec<String> {
    let mut notes = Vec::new();
    let mut wanted: Vec<&String> = Vec::new();
    for path in artifacts.declared.iter().chain(reported) {
        if !wanted.contains(&path) {
            wanted.push(path);
        }
    }
    // Most runs keep nothing: no trip to the blocking pool for them.
    if wanted.is_empty() {
        return notes;
    }
    let run_dir_owned = run_dir.to_path_buf();
    let wanted_owned: Vec<String> = wanted.into_iter().cloned().collect();
    let collected =
        tokio::task::spawn_blocking(move || collect_files(&run_dir_owned, &wanted_owned)).await;
    let (files, problems) = match collected {
        Ok(found) => found,
        Err(error) => return vec![format!("cannot list the artifacts: {error}")],
    };
    notes.extend(problems);
    if files.is_empty() {
        return notes;
    }
    let channel = match artifacts.uploader.endpoint.connect().await {
        Ok(channel) => channel,
        Err(error) => {
            notes.push(format!(
                "cannot reach the coordinator to upload {} artifact(s): {error}",
                files.len()
            ));
            return notes;
        }
    };
    let client = ArtifactServiceClient::new(channel)
        .max_decoding_message_size(ladder_limits::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(ladder_limits::MAX_MESSAGE_BYTES);
    for file in files {
        match upload_file(client.clone(), artifacts, &file).await {
            Ok(stored) => {
                debug!(run_id = %artifacts.lease.run_id, name = %file.name, already_stored = stored.already_stored, "artifact uploaded")
            }
            Err(message) => {
                warn!(run_id = %artifacts.lease.run_id, name = %file.name, %message, "artifact not uploaded");
                notes.push(format!("artifact {} not uploaded: {message}", file.name));
            }
        }
    }
    notes
}

/// The files under the `wanted` paths of `run_dir`, in name order, each once, at most
/// [`ladder_limits::MAX_ARTIFACTS_PER_RUN`]; and what could not be taken.
fn collect_files(run_dir: &Path, wanted: &[String]) -> (Vec<ArtifactFile>, Vec<String>) {
    let mut files: Vec<ArtifactFile> = Vec::new();
    let mut problems = Vec::new();
    for path in wanted {
        if let Err(problem) = ladder_metrics::line::check_artifact_path(path) {
            problems.push(problem);
            continue;
        }
        let trimmed = path.trim_end_matches('/');
        let full = run_dir.join(trimmed);
        let metadata = match std::fs::symlink_metadata(&full) {
            Ok(metadata) => metadata,
            Err(error) => {
                problems.push(format!(
                    "artifact {path} not found in the run directory: {error}"
                ));
                continue;
            }
        };
        if metadata.is_file() {
            files.push(ArtifactFile {
                path: full,
                name: trimmed.to_string(),
            });
        } else if metadata.is_dir() {
            walk(&full, trimmed, &mut files, &mut problems);
        } else {
            problems.push(format!(
                "artifact {path} is not a file or a directory; skipped"
            ));
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    files.dedup_by(|a, b| a.name == b.name);
    if files.len() > ladder_limits::MAX_ARTIFACTS_PER_RUN {
        problems.push(format!(
            "{} artifact files; only the first {} (by name) are uploaded",
            files.len(),
            ladder_limits::MAX_ARTIFACTS_PER_RUN
        ));
        files.truncate(ladder_limits::MAX_ARTIFACTS_PER_RUN);
    }
    (files, problems)
}

/// Adds the files under directory `dir` (named `name` in the run directory), depth
/// first, without following symbolic links; stops once past the per-run file limit.
fn walk(dir: &Path, name: &str, files: &mut Vec<ArtifactFile>, problems: &mut Vec<String>) {
    let mut stack = vec![(dir.to_path_buf(), name.to_string())];
    while let Some((dir, name)) = stack.pop() {
        if files.len() > ladder_limits::MAX_ARTIFACTS_PER_RUN {
            return;
        }
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) => {
                problems.push(format!("cannot read artifact directory {name}: {error}"));
                continue;
            }
        };
        for entry in entries.flatten() {
            let Some(file_name) = entry.file_name().to_str().map(str::to_string) else {
                problems.push(format!(
                    "a file in {name} has a name that is not UTF-8; skipped"
                ));
                continue;
            };
            let child = format!("{name}/{file_name}");
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => stack.push((entry.path(), child)),
                Ok(kind) if kind.is_file() => {
                    if let Err(problem) = ladder_metrics::line::check_artifact_path(&child) {
                        problems.push(problem);
                        continue;
                    }
                    files.push(ArtifactFile {
                        path: entry.path(),
                        name: child,
                    });
                }
                Ok(_) => problems.push(format!(
                    "artifact {child} is a link or a special file; skipped"
                )),
                Err(error) => problems.push(format!("cannot read {child}: {error}")),
            }
        }
    }
}

/// The SHA-256 (hex) and size of the file at `path`, read in chunks on a blocking thread.
async fn hash_file(path: PathBuf) -> std::io::Result<(String, u64)> {
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; ladder_limits::ARTIFACT_CHUNK_BYTES];
        let mut size = 0u64;
        loop {
            let read = file.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            size += read as u64;
            hasher.update(&buffer[..read]);
        }
        Ok((hex(&hasher.finalize()), size))
    })
    .await
    .map_err(std::io::Error::other)?
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// Uploads one file: hashes it, then streams it after an `UploadArtifactStart`.
async fn upload_file(
    mut client: ArtifactServiceClient<tonic::transport::Channel>,
    artifacts: &AttemptArtifacts,
    file: &ArtifactFile,
) -> Result<pb::UploadArtifactResponse, String> {
    let (sha256, size) = hash_file(file.path.clone())
        .await
        .map_err(|error| format!("cannot read {}: {error}", file.path.display()))?;
    let uploader = &artifacts.uploader;
    let start = pb::UploadArtifactStart {
        lease: Some(pb::Lease {
            run_id: artifacts.lease.run_id.clone(),
            attempt: artifacts.lease.attempt,
            epoch: artifacts.lease.epoch,
        }),
        agent: uploader.agent.clone(),
        agent_secret: uploader.secret.expose().to_string(),
        name: file.name.clone(),
        size,
        sha256,
    };
    let (tx, rx) = mpsc::channel(2);
    tx.send(pb::UploadArtifactRequest {
        kind: Some(pb::upload_artifact_request::Kind::Start(start)),
    })
    .await
    .map_err(|_| "the upload stream closed".to_string())?;
    let path = file.path.clone();
    // Reads the file a chunk at a time while the stream takes them; stops when the
    // coordinator answered early (the content was stored already) or refused it.
    let reader = tokio::spawn(async move {
        let mut source = tokio::fs::File::open(&path).await?;
        let mut sent = 0u64;
        loop {
            let mut chunk = Vec::with_capacity(ladder_limits::ARTIFACT_CHUNK_BYTES);
            let read = (&mut source)
                .take(ladder_limits::ARTIFACT_CHUNK_BYTES as u64)
                .read_to_end(&mut chunk)
                .await?;
            if read == 0 {
                return Ok::<u64, std::io::Error>(sent);
            }
            sent += read as u64;
            let message = pb::UploadArtifactRequest {
                kind: Some(pb::upload_artifact_request::Kind::Chunk(chunk)),
            };
            if tx.send(message).await.is_err() {
                return Ok(sent);
            }
        }
    });
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(value) = &uploader.authorization {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
    }
    let answer = client.upload_artifact(request).await;
    reader.abort();
    match answer {
        Ok(response) => Ok(response.into_inner()),
        Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_and_reported_paths_collect_each_file_once_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("model/sub")).unwrap();
        std::fs::write(root.join("model/weights.bin"), b"w").unwrap();
        std::fs::write(root.join("model/sub/config.json"), b"{}").unwrap();
        std::fs::write(root.join("results.json"), b"{}").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("model/link")).unwrap();
        let wanted: Vec<String> = [
            "model/",
            "results.json",
            "model/weights.bin",
            "missing.txt",
            "../x",
        ]
        .map(String::from)
        .to_vec();
        let (files, problems) = collect_files(root, &wanted);
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            ["model/sub/config.json", "model/weights.bin", "results.json"]
        );
        assert_eq!(files[2].path, root.join("results.json"));
        let problems = problems.join("\n");
        assert!(problems.contains("missing.txt not found"), "{problems}");
        assert!(problems.contains("\"..\""), "{problems}");
        assert!(problems.contains("model/link is a link"), "{problems}");
    }

    #[tokio::test]
    async fn files_hash_to_their_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            hash_file(path).await.unwrap(),
            (
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_string(),
                3
            )
        );
    }
}
