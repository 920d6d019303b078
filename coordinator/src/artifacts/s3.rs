//! Objects in an S3 bucket (or any store speaking the S3 protocol), through the
//! `object_store` crate: `s3://BUCKET/PREFIX` keeps object `<sha256>` at
//! `PREFIX/objects/ab/<sha256>`.
//!
//! An upload is an S3 multipart upload, completed by [`PendingObject::commit`] (after
//! the store verified size and hash) and aborted when dropped uncommitted, so a broken
//! upload never appears under its name. Credentials, region and endpoint come from the
//! coordinator's environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL` for S3-compatible stores,
//! `AWS_ALLOW_HTTP=true` for one served over plain HTTP), as the AWS tools read them;
//! they are never written to ladder's store, and agents never see them.

use std::io;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, WriteMultipart};
use tracing::warn;

use super::{Digest, ObjectBackend, ObjectReader, PendingObject};
use crate::error::CoordinatorError;

/// Size of the parts of a multipart upload (S3 needs at least 5 MiB but for the last).
const PART_BYTES: usize = 8 << 20;
/// Parts of one upload in flight at once: bounds an upload's memory to about
/// `PART_BYTES` times this.
const PARTS_IN_FLIGHT: usize = 4;

/// A bucket and a key prefix, parsed from `s3://BUCKET/PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

impl S3Location {
    /// `url` without its `s3://`.
    pub(super) fn parse(url: &str, rest: &str) -> Result<S3Location, CoordinatorError> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            return Err(CoordinatorError::InvalidArgument(format!(
                "--artifacts {url:?}: {bucket:?} is not an S3 bucket name (3 to 63 lowercase letters, digits, '-' and '.'); expected s3://BUCKET/PREFIX"
            )));
        }
        if rest.contains('?') || rest.contains('#') || rest.contains('@') {
            return Err(CoordinatorError::InvalidArgument(format!(
                "--artifacts {url:?}: an S3 location is s3://BUCKET/PREFIX; credentials and options come from the AWS_* environment variables"
            )));
        }
        let prefix = prefix.trim_matches('/');
        if prefix
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
            && !prefix.is_empty()
        {
            return Err(CoordinatorError::InvalidArgument(format!(
                "--artifacts {url:?}: the prefix {prefix:?} has an empty, '.' or '..' part"
            )));
        }
        Ok(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

pub struct S3Backend {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl S3Backend {
    /// The backend of `location`, configured from the environment. Nothing is sent to
    /// the store until the first request.
    pub fn open(location: &S3Location) -> Result<S3Backend, CoordinatorError> {
        let mut builder = AmazonS3Builder::from_env();
        if std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
            builder = builder.with_allow_http(true);
        }
        S3Backend::with_builder(location, builder)
    }

    /// The backend of `location` with the settings of `builder` (its bucket replaced).
    pub fn with_builder(
        location: &S3Location,
        builder: AmazonS3Builder,
    ) -> Result<S3Backend, CoordinatorError> {
        let store = builder
            .with_bucket_name(&location.bucket)
            .build()
            .map_err(|error| {
                CoordinatorError::InvalidArgument(format!(
                    "--artifacts s3://{}/{}: {error}",
                    location.bucket, location.prefix
                ))
            })?;
        Ok(S3Backend {
            store: Arc::new(store),
            prefix: location.prefix.clone(),
        })
    }

    fn object_path(&self, digest: &Digest) -> ObjectPath {
        let name = format!("objects/{}/{}", &digest.as_str()[..2], digest.as_str());
        if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }
}

fn store_error(error: object_store::Error) -> io::Error {
    match error {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, error),
        error => io::Error::other(error),
    }
}

#[tonic::async_trait]
impl ObjectBackend for S3Backend {
    async fn size(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match self.store.head(&self.object_path(digest)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(store_error(error)),
        }
    }

    async fn create(&self, digest: &Digest) -> io::Result<Box<dyn PendingObject>> {
        let upload = self
            .store
            .put_multipart(&self.object_path(digest))
            .await
            .map_err(store_error)?;
        Ok(Box::new(PendingUpload {
            writer: Some(WriteMultipart::new_with_chunk_size(upload, PART_BYTES)),
        }))
    }

    async fn open(&self, digest: &Digest) -> io::Result<ObjectReader> {
        let result = self
            .store
            .get(&self.object_path(digest))
            .await
            .map_err(store_error)?;
        let stream = result.into_stream().map_err(store_error);
        Ok(Box::pin(tokio_util::io::StreamReader::new(stream)))
    }
}

/// A multipart upload in progress; aborted if dropped before [`PendingObject::commit`].
struct PendingUpload {
    writer: Option<WriteMultipart>,
}

#[tonic::async_trait]
impl PendingObject for PendingUpload {
    async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        let writer = self.writer.as_mut().expect("open until commit");
        writer
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(store_error)?;
        writer.write(chunk);
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> io::Result<()> {
        let writer = self.writer.take().expect("open until commit");
        writer.finish().await.map_err(store_error)?;
        Ok(())
    }
}

impl Drop for PendingUpload {
    fn drop(&mut self) {
        let Some(writer) = self.writer.take() else {
            return;
        };
        // Parts already sent stay billed until the upload is aborted.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(error) = writer.abort().await {
                        warn!(%error, "cannot abort an S3 multipart upload");
                    }
                });
            }
            Err(_) => warn!("an S3 multipart upload was dropped outside a runtime; not aborted"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;
    use std::process::{Child, Command, Stdio};

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::artifacts::tests::sha256_hex;
    use crate::artifacts::{ArtifactLocation, ArtifactStore};

    /// moto's S3 server (`tests/s3_server.py`, installed by `tests/setup.sh`), stopped
    /// when dropped.
    struct S3Server {
        child: Child,
        endpoint: String,
    }

    impl S3Server {
        fn start(bucket: &str) -> S3Server {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/s3_server.py");
            let mut child = Command::new("python3")
                .arg(script)
                .arg(bucket)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("python3 runs tests/s3_server.py (moto, from tests/setup.sh)");
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.take().expect("stdout"))
                .read_line(&mut line)
                .expect("reads the endpoint");
            let endpoint = line.trim().to_string();
            assert!(
                endpoint.starts_with("http://127.0.0.1:"),
                "tests/s3_server.py did not start (is moto installed? tests/setup.sh installs it): {line:?}"
            );
            S3Server { child, endpoint }
        }

        fn backend(&self, location: &S3Location) -> S3Backend {
            let builder = AmazonS3Builder::new()
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .with_region("us-east-1")
                .with_access_key_id("test")
                .with_secret_access_key("test");
            S3Backend::with_builder(location, builder).unwrap()
        }
    }

    impl Drop for S3Server {
        fn drop(&mut self) {
            drop(self.child.stdin.take());
            let _ = self.child.wait();
        }
    }

    async fn listed(backend: &S3Backend) -> Vec<String> {
        backend
            .store
            .list(None)
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .unwrap()
    }

    #[test]
    fn s3_locations_name_a_bucket_and_a_prefix() {
        let parse = |url: &str| ArtifactLocation::parse(url);
        assert_eq!(
            parse("s3://team-models/ladder/prod/").unwrap(),
            ArtifactLocation::S3(S3Location {
                bucket: "team-models".into(),
                prefix: "ladder/prod".into()
            })
        );
        assert_eq!(
            parse("s3://team-models").unwrap(),
            ArtifactLocation::S3(S3Location {
                bucket: "team-models".into(),
                prefix: String::new()
            })
        );
        for (bad, says) in [
            ("s3://", "not an S3 bucket name"),
            ("s3://Team/x", "not an S3 bucket name"),
            ("s3://key:secret@bucket/x", "not an S3 bucket name"),
            ("s3://bucket/x?region=eu", "AWS_* environment"),
            ("s3://bucket/a//b", "empty, '.' or '..' part"),
            ("s3://bucket/a/../b", "empty, '.' or '..' part"),
        ] {
            let error = parse(bad).unwrap_err().to_string();
            assert!(
                error.contains(says) && error.contains(bad),
                "{bad}: {error}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn objects_go_to_s3_in_parts_and_read_back_under_their_hash() {
        let server = S3Server::start("ladder-test");
        let location = S3Location {
            bucket: "ladder-test".into(),
            prefix: "team/ladder".into(),
        };
        let store = ArtifactStore::new(Arc::new(server.backend(&location)));
        // Three parts of 8 MiB and a short last one.
        let content: Vec<u8> = (0..(25 << 20) as u32).map(|i| (i % 251) as u8).collect();
        let digest = sha256_hex(&content);
        assert!(!store.contains(&digest, content.len() as u64).await.unwrap());
        let chunks: Vec<Result<Vec<u8>, CoordinatorError>> =
            content.chunks(1 << 20).map(|c| Ok(c.to_vec())).collect();
        store
            .receive(&digest, content.len() as u64, futures::stream::iter(chunks))
            .await
            .unwrap();
        assert!(store.contains(&digest, content.len() as u64).await.unwrap());
        assert!(!store.contains(&digest, 1).await.unwrap());
        let mut read_back = Vec::new();
        store
            .read(&digest)
            .await
            .unwrap()
            .read_to_end(&mut read_back)
            .await
            .unwrap();
        assert!(read_back == content, "read back {} bytes", read_back.len());
        let backend = server.backend(&location);
        assert_eq!(
            listed(&backend).await,
            [format!(
                "team/ladder/objects/{}/{}",
                &digest.as_str()[..2],
                digest
            )]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upload_cut_short_or_with_another_hash_leaves_no_object() {
        let server = S3Server::start("ladder-broken");
        let location = S3Location {
            bucket: "ladder-broken".into(),
            prefix: String::new(),
        };
        let store = ArtifactStore::new(Arc::new(server.backend(&location)));
        let content = vec![3u8; 12 << 20];
        let digest = sha256_hex(&content);
        // Cut off after 10 MiB: one part already sent.
        let cut: Vec<Result<Vec<u8>, CoordinatorError>> = content[..10 << 20]
            .chunks(1 << 20)
            .map(|c| Ok(c.to_vec()))
            .collect();
        let error = store
            .receive(&digest, content.len() as u64, futures::stream::iter(cut))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("ended after"), "{error}");
        // The declared size, other bytes.
        let mut forged = content.clone();
        forged[5] ^= 1;
        let chunks: Vec<Result<Vec<u8>, CoordinatorError>> =
            forged.chunks(1 << 20).map(|c| Ok(c.to_vec())).collect();
        let error = store
            .receive(&digest, content.len() as u64, futures::stream::iter(chunks))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("not the"), "{error}");
        assert!(!store.contains(&digest, content.len() as u64).await.unwrap());
        assert_eq!(
            listed(&server.backend(&location)).await,
            Vec::<String>::new()
        );
    }
}
