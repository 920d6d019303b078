//! The gRPC adapter of `ArtifactService`: uploads from agents under their attempts'
//! leases, listings and downloads for readers. Each method checks access first (see
//! [`crate::auth`]), then converts, then calls the scheduler (whether an upload may be
//! stored, and its record) or the [`ArtifactStore`] (the bytes).

use std::sync::Arc;

use futures::StreamExt;
use ladder_proto::v1 as pb;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use crate::artifacts::{ArtifactRecord, ArtifactStore, Digest};
use crate::auth::Action;
use crate::convert;
use crate::error::CoordinatorError;
use crate::identity::AgentSecret;
use crate::scheduler::{ArtifactUpload, Event};
use crate::service::ServiceHandle;

#[derive(Clone)]
pub struct ArtifactServiceImpl {
    pub shared: Arc<ServiceHandle>,
    pub store: ArtifactStore,
}

/// The record as the protocol carries it.
pub fn artifact_to_pb(record: &ArtifactRecord) -> pb::Artifact {
    pb::Artifact {
        name: record.name.clone(),
        size: record.size,
        sha256: record.sha256.clone(),
        attempt: record.attempt,
        created_ms: record.created_ms,
    }
}

/// The upload an `UploadArtifactStart` asks for, checked: a lease, a proven agent name,
/// a file name inside the run directory, a size within the limit and a SHA-256.
fn upload_from_pb(start: pb::UploadArtifactStart) -> Result<ArtifactUpload, CoordinatorError> {
    let lease = ladder_protocol::wire::lease_from_pb("start", start.lease)?;
    convert::require_id(&lease.run_id, "start.lease.run_id")?;
    convert::check_len(
        "start.agent",
        &start.agent,
        ladder_limits::MAX_AGENT_NAME_BYTES,
    )?;
    let secret =
        AgentSecret::presented("start.agent_secret", start.agent_secret)?.ok_or_else(|| {
            CoordinatorError::PermissionDenied(
                "an artifact upload must carry the agent's secret".into(),
            )
        })?;
    ladder_metrics::line::check_artifact_path(&start.name)
        .map_err(|problem| CoordinatorError::InvalidArgument(format!("start.name: {problem}")))?;
    if start.name.ends_with('/') {
        return Err(CoordinatorError::InvalidArgument(format!(
            "start.name {:?} names a directory; upload each file in it",
            start.name
        )));
    }
    if start.size > ladder_limits::MAX_ARTIFACT_FILE_BYTES {
        return Err(CoordinatorError::InvalidArgument(format!(
            "{} is {} bytes; the limit per artifact file is {}",
            start.name,
            start.size,
            ladder_limits::MAX_ARTIFACT_FILE_BYTES
        )));
    }
    Digest::parse(&start.sha256)?;
    Ok(ArtifactUpload {
        lease,
        agent: start.agent,
        secret,
        name: start.name,
        size: start.size,
        sha256: start.sha256,
    })
}

impl ArtifactServiceImpl {
    async fn ask_record(
        &self,
        upload: &ArtifactUpload,
        check_only: bool,
    ) -> Result<ArtifactRecord, CoordinatorError> {
        let upload = upload.clone();
        self.shared
            .ask(|reply| Event::RecordArtifact {
                upload,
                check_only,
                reply,
            })
            .await
    }
}

#[tonic::async_trait]
impl pb::artifact_service_server::ArtifactService for ArtifactServiceImpl {
    async fn upload_artifact(
        &self,
        request: Request<Streaming<pb::UploadArtifactRequest>>,
    ) -> Result<Response<pb::UploadArtifactResponse>, Status> {
        self.shared
            .authorize(request.metadata(), Action::UploadArtifact)?;
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the upload ended before its start"))?;
        let Some(pb::upload_artifact_request::Kind::Start(start)) = first.kind else {
            return Err(Status::invalid_argument(
                "the first message of an upload must be its start",
            ));
        };
        let upload = upload_from_pb(start)?;
        let digest = Digest::parse(&upload.sha256)?;
        // Refused before a byte is read when the lease or the run's limits say no.
        self.ask_record(&upload, true).await?;
        let already_stored = self.store.contains(&digest, upload.size).await?;
        if !already_stored {
            let chunks = inbound.map(|message| match message {
                Ok(pb::UploadArtifactRequest {
                    kind: Some(pb::upload_artifact_request::Kind::Chunk(chunk)),
                }) if chunk.len() <= ladder_limits::ARTIFACT_CHUNK_BYTES => Ok(chunk),
                Ok(pb::UploadArtifactRequest {
                    kind: Some(pb::upload_artifact_request::Kind::Chunk(chunk)),
                }) => Err(CoordinatorError::InvalidArgument(format!(
                    "an upload chunk of {} bytes; the limit is {}",
                    chunk.len(),
                    ladder_limits::ARTIFACT_CHUNK_BYTES
                ))),
                Ok(_) => Err(CoordinatorError::InvalidArgument(
                    "an upload sends one start, then chunks".into(),
                )),
                Err(status) => Err(CoordinatorError::InvalidArgument(format!(
                    "the upload stream broke: {}",
                    status.message()
                ))),
            });
            if let Err(error) = self.store.receive(&digest, upload.size, chunks).await {
                info!(run_id = %upload.lease.run_id, name = %upload.name, %error, "artifact upload not stored");
                return Err(error.into());
            }
        }
        let record = self.ask_record(&upload, false).await?;
        debug!(run_id = %upload.lease.run_id, name = %record.name, already_stored, "artifact uploaded");
        Ok(Response::new(pb::UploadArtifactResponse {
            artifact: Some(artifact_to_pb(&record)),
            already_stored,
        }))
    }

    async fn list_artifacts(
        &self,
        request: Request<pb::ListArtifactsRequest>,
    ) -> Result<Response<pb::ListArtifactsResponse>, Status> {
        self.shared.authorize(request.metadata(), Action::Read)?;
        let request = request.into_inner();
        convert::require_id(&request.run_id, "run_id")?;
        convert::check_cursor(&request.cursor)?;
        let size = convert::page_size(
            request.page_size,
            ladder_limits::DEFAULT_PAGE_SIZE,
            ladder_limits::MAX_PAGE_SIZE,
        )?;
        let run_id = request.run_id;
        let run = self.shared.read(move |q| q.run_record(&run_id)).await?;
        let after: Vec<&ArtifactRecord> = run
            .artifacts
            .iter()
            .filter(|artifact| request.cursor.is_empty() || artifact.name > request.cursor)
            .collect();
        let page: Vec<pb::Artifact> = after
            .iter()
            .take(size)
            .map(|artifact| artifact_to_pb(artifact))
            .collect();
        let next_cursor = match (after.len() > size, page.last()) {
            (true, Some(last)) => last.name.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListArtifactsResponse {
            artifacts: page,
            next_cursor,
            total_artifacts: run.artifacts.len() as u64,
            total_bytes: run.artifacts.iter().map(|a| a.size).sum(),
        }))
    }

    type DownloadArtifactStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<pb::DownloadArtifactResponse, Status>> + Send>,
    >;

    async fn download_artifact(
        &self,
        request: Request<pb::DownloadArtifactRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        self.shared.authorize(request.metadata(), Action::Read)?;
        let request = request.into_inner();
        convert::require_id(&request.run_id, "run_id")?;
        convert::check_len(
            "name",
            &request.name,
            ladder_limits::MAX_ARTIFACT_NAME_BYTES,
        )?;
        let run_id = request.run_id.clone();
        let run = self.shared.read(move |q| q.run_record(&run_id)).await?;
        let Some(record) = run
            .artifacts
            .iter()
            .find(|a| a.name == request.name)
            .cloned()
        else {
            return Err(CoordinatorError::NotFound {
                kind: "artifact",
                id: format!("{}/{}", request.run_id, request.name),
            }
            .into());
        };
        let digest = Digest::parse(&record.sha256)?;
        let mut reader = self.store.read(&digest).await?;
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let header = pb::DownloadArtifactResponse {
                kind: Some(pb::download_artifact_response::Kind::Artifact(
                    artifact_to_pb(&record),
                )),
            };
            if tx.send(Ok(header)).await.is_err() {
                return;
            }
            loop {
                let mut chunk = Vec::with_capacity(ladder_limits::ARTIFACT_CHUNK_BYTES);
                let read = (&mut reader)
                    .take(ladder_limits::ARTIFACT_CHUNK_BYTES as u64)
                    .read_to_end(&mut chunk)
                    .await;
                let message = match read {
                    Ok(0) => return,
                    Ok(_) => Ok(pb::DownloadArtifactResponse {
                        kind: Some(pb::download_artifact_response::Kind::Chunk(chunk)),
                    }),
                    Err(error) => Err(Status::internal(format!(
                        "failed to read artifact object {digest}: {error}"
                    ))),
                };
                let failed = message.is_err();
                if tx.send(message).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    fn start(name: &str, size: u64, sha256: &str, secret: &str) -> pb::UploadArtifactStart {
        pb::UploadArtifactStart {
            lease: Some(pb::Lease {
                run_id: "s-000000".into(),
                attempt: 1,
                epoch: 7,
            }),
            agent: "gpu-01".into(),
            agent_secret: secret.into(),
            name: name.into(),
            size,
            sha256: sha256.into(),
        }
    }

    #[test]
    fn an_upload_start_names_a_file_in_the_run_directory_within_the_limit() {
        let secret = "ab".repeat(32);
        let sha = "cd".repeat(32);
        let upload = upload_from_pb(start("model/w.bin", 10, &sha, &secret)).unwrap();
        assert_eq!((upload.name.as_str(), upload.size), ("model/w.bin", 10));
        let refused = [
            (start("model/", 1, &sha, &secret), "names a directory"),
            (start("../x", 1, &sha, &secret), "\"..\""),
            (start("/etc/passwd", 1, &sha, &secret), "absolute"),
            (
                start(
                    "x",
                    ladder_limits::MAX_ARTIFACT_FILE_BYTES + 1,
                    &sha,
                    &secret,
                ),
                "limit per artifact file",
            ),
            (start("x", 1, "ABC", &secret), "64 lowercase hex"),
            (start("x", 1, &sha, ""), "must carry the agent's secret"),
            (start("x", 1, &sha, "nope"), "agent_secret"),
            (
                pb::UploadArtifactStart {
                    lease: None,
                    ..start("x", 1, &sha, &secret)
                },
                "no lease",
            ),
        ];
        for (start, why) in refused {
            let error = upload_from_pb(start).expect_err(why).to_string();
            assert!(error.contains(why), "{why}: {error}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4_000))]
        /// Whatever bytes arrive as an upload's first message, decoding never panics and
        /// what converts is a safe name, a size within the limit and a well-formed hash.
        #[test]
        fn arbitrary_upload_starts_convert_only_when_safe(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(request) = pb::UploadArtifactRequest::decode(bytes.as_slice()) {
                if let Some(pb::upload_artifact_request::Kind::Start(start)) = request.kind {
                    if let Ok(upload) = upload_from_pb(start) {
                        prop_assert!(ladder_metrics::line::check_artifact_path(&upload.name).is_ok());
                        prop_assert!(!upload.name.ends_with('/'));
                        prop_assert!(upload.size <= ladder_limits::MAX_ARTIFACT_FILE_BYTES);
                        prop_assert!(Digest::parse(&upload.sha256).is_ok());
                    }
                }
            }
        }
    }
}
