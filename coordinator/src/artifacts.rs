//! The artifact store: the files runs produce (models, adapters, results), kept by
//! content and recorded on their runs.
//!
//! - [`ObjectBackend`]: where object bytes live, behind a small async trait:
//!   [`FileBackend`], a directory (the coordinator's `<data>/artifacts`, or a shared
//!   filesystem with `--artifacts file:///mnt/team`), or [`S3Backend`], a bucket
//!   (`--artifacts s3://BUCKET/PREFIX`, through the `object_store` crate: a multipart
//!   upload completed only once verified).
//! - [`ArtifactStore`]: names objects by their SHA-256 ([`Digest`]) and receives an
//!   upload as a stream of chunks, hashing as it writes; the object becomes visible
//!   under its name only when every declared byte arrived and the hash matched. Anything
//!   else (a stream that breaks or ends early, more bytes than declared, another hash)
//!   aborts the pending object and leaves nothing behind.
//! - [`ArtifactRecord`]: what a run records of each file (name, size, hash, attempt).
//!   The scheduler records it (`Event::RecordArtifact`) only after the store committed
//!   the object, and only for the run's current attempt.
//!
//! Data flow: an agent's `UploadArtifact` stream reaches `service`, which asks the
//! scheduler whether the lease and the run's limits allow the file, receives it here,
//! then asks the scheduler to record it; `DownloadArtifact` reads the object back in
//! chunks of [`ladder_limits::ARTIFACT_CHUNK_BYTES`].

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tracing::{debug, warn};

use crate::error::CoordinatorError;

mod s3;
pub use s3::{S3Backend, S3Location};

/// A file recorded on a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    /// Path relative to the run directory, `/`-separated (checked with
    /// [`ladder_metrics::line::check_artifact_path`], never ending in `/`).
    pub name: String,
    pub size: u64,
    /// The content's SHA-256, 64 lowercase hex digits.
    pub sha256: String,
    /// The attempt that uploaded it.
    pub attempt: u32,
    pub created_ms: i64,
}

/// A SHA-256 as 64 lowercase hex digits: the name of an object in the store.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Digest(String);

impl Digest {
    /// `text` when it is 64 lowercase hex digits.
    pub fn parse(text: &str) -> Result<Digest, CoordinatorError> {
        if text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Ok(Digest(text.to_string()));
        }
        Err(CoordinatorError::InvalidArgument(format!(
            "sha256 must be 64 lowercase hex digits, not {:?}",
            text.chars().take(80).collect::<String>()
        )))
    }

    /// The digest of a finished hash.
    fn of(hasher: Sha256) -> Digest {
        use fmt::Write;
        let mut text = String::with_capacity(64);
        for byte in hasher.finalize() {
            let _ = write!(text, "{byte:02x}");
        }
        Digest(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where artifacts are kept, from `ladder coordinator --artifacts URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactLocation {
    /// A directory: the data directory's `artifacts/` by default, or `file:///PATH`.
    Directory(PathBuf),
    /// `s3://BUCKET/PREFIX`: an S3 bucket, or any store speaking S3
    /// (`AWS_ENDPOINT_URL`), configured from the AWS environment variables.
    S3(S3Location),
}

impl ArtifactLocation {
    /// The default: `artifacts/` in the coordinator's data directory.
    pub fn in_data_dir(data_dir: &Path) -> ArtifactLocation {
        ArtifactLocation::Directory(data_dir.join("artifacts"))
    }

    /// Parses `--artifacts`: `file:///absolute/path` or `s3://BUCKET/PREFIX`.
    pub fn parse(url: &str) -> Result<ArtifactLocation, CoordinatorError> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(CoordinatorError::InvalidArgument(format!(
                    "--artifacts {url:?}: a file URL names an absolute path, like file:///mnt/team/ladder"
                )));
            }
            return Ok(ArtifactLocation::Directory(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            return Ok(ArtifactLocation::S3(S3Location::parse(url, rest)?));
        }
        Err(CoordinatorError::InvalidArgument(format!(
            "--artifacts {url:?}: expected file:///PATH (a directory, e.g. on a shared filesystem) or s3://BUCKET/PREFIX"
        )))
    }
}

/// A stored object's bytes, read in order.
pub type ObjectReader = Pin<Box<dyn AsyncRead + Send>>;

/// Where object bytes live. Objects are immutable and named by their [`Digest`]; a
/// backend never exposes an object under its name before [`PendingObject::commit`].
#[tonic::async_trait]
pub trait ObjectBackend: Send + Sync + 'static {
    /// The size of the stored object `digest`; `None` when it is not stored.
    async fn size(&self, digest: &Digest) -> io::Result<Option<u64>>;
    /// Starts writing object `digest`; nothing is visible under that name until commit.
    async fn create(&self, digest: &Digest) -> io::Result<Box<dyn PendingObject>>;
    /// Reads the stored object `digest`.
    async fn open(&self, digest: &Digest) -> io::Result<ObjectReader>;
}

/// An object being written. Dropped without [`PendingObject::commit`], it leaves
/// nothing behind (an aborted S3 multipart upload, a removed temporary file).
#[tonic::async_trait]
pub trait PendingObject: Send {
    async fn write(&mut self, chunk: &[u8]) -> io::Result<()>;
    /// Makes the object visible under its name, atomically.
    async fn commit(self: Box<Self>) -> io::Result<()>;
}

/// Objects as files of a directory: `objects/ab/<sha256>`, written as
/// `tmp/<random>.part` and renamed into place (atomic on one filesystem, NFS included).
#[derive(Debug)]
pub struct FileBackend {
    root: PathBuf,
}

impl FileBackend {
    /// Creates the directory layout under `root` and removes temporary files an earlier
    /// process left (uploads it was receiving when it stopped).
    pub fn open(root: &Path) -> Result<FileBackend, CoordinatorError> {
        let io_error = |context: String| {
            move |source| CoordinatorError::Io {
                context: context.clone(),
                source,
            }
        };
        let temp = root.join("tmp");
        std::fs::create_dir_all(root.join("objects")).map_err(io_error(format!(
            "failed to create the artifact directory {}",
            root.display()
        )))?;
        std::fs::create_dir_all(&temp)
            .map_err(io_error(format!("failed to create {}", temp.display())))?;
        let entries = std::fs::read_dir(&temp)
            .map_err(io_error(format!("failed to read {}", temp.display())))?;
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(FileBackend {
            root: root.to_path_buf(),
        })
    }

    fn object_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("objects")
            .join(&digest.as_str()[..2])
            .join(digest.as_str())
    }
}

#[tonic::async_trait]
impl ObjectBackend for FileBackend {
    async fn size(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match tokio::fs::metadata(self.object_path(digest)).await {
            Ok(metadata) => Ok(Some(metadata.len())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn create(&self, digest: &Digest) -> io::Result<Box<dyn PendingObject>> {
        let temp =
            self.root
                .join("tmp")
                .join(format!("{}-{:016x}.part", digest, rand::random::<u64>()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .await?;
        Ok(Box::new(PendingFile {
            file: Some(tokio::io::BufWriter::with_capacity(1 << 20, file)),
            temp,
            target: self.object_path(digest),
            committed: false,
        }))
    }

    async fn open(&self, digest: &Digest) -> io::Result<ObjectReader> {
        let file = tokio::fs::File::open(self.object_path(digest)).await?;
        Ok(Box::pin(file))
    }
}

struct PendingFile {
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

#[tonic::async_trait]
impl PendingObject for PendingFile {
    async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.file
            .as_mut()
            .expect("open until commit")
            .write_all(chunk)
            .await
    }

    async fn commit(mut self: Box<Self>) -> io::Result<()> {
        let mut file = self.file.take().expect("open until commit");
        file.flush().await?;
        let file = file.into_inner();
        file.sync_all().await?;
        drop(file);
        if let Some(parent) = self.target.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::rename(&self.temp, &self.target).await?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(error) = std::fs::remove_file(&self.temp) {
                if error.kind() != io::ErrorKind::NotFound {
                    warn!(path = %self.temp.display(), %error, "cannot remove an aborted upload");
                }
            }
        }
    }
}

/// The content-addressed store over a backend. Cheap to clone.
#[derive(Clone)]
pub struct ArtifactStore {
    backend: Arc<dyn ObjectBackend>,
}

impl ArtifactStore {
    pub fn new(backend: Arc<dyn ObjectBackend>) -> ArtifactStore {
        ArtifactStore { backend }
    }

    /// The store at `location`.
    pub fn open(location: &ArtifactLocation) -> Result<ArtifactStore, CoordinatorError> {
        match location {
            ArtifactLocation::Directory(root) => {
                Ok(ArtifactStore::new(Arc::new(FileBackend::open(root)?)))
            }
            ArtifactLocation::S3(location) => {
                Ok(ArtifactStore::new(Arc::new(S3Backend::open(location)?)))
            }
        }
    }

    /// Whether object `digest` is stored with `size` bytes.
    pub async fn contains(&self, digest: &Digest, size: u64) -> Result<bool, CoordinatorError> {
        let stored = self
            .backend
            .size(digest)
            .await
            .map_err(|source| CoordinatorError::Io {
                context: format!("failed to look up artifact object {digest}"),
                source,
            })?;
        Ok(stored == Some(size))
    }

    /// Receives object `digest` of `size` bytes from `chunks` and stores it. Returns
    /// only once it is committed under its name; on any error the pending object is
    /// dropped, leaving nothing: the stream failing or ending before `size` bytes, more
    /// than `size` bytes, or content whose SHA-256 is not `digest`.
    pub async fn receive<S>(
        &self,
        digest: &Digest,
        size: u64,
        mut chunks: S,
    ) -> Result<(), CoordinatorError>
    where
        S: Stream<Item = Result<Vec<u8>, CoordinatorError>> + Send + Unpin,
    {
        let io_error = |context: &str| {
            let context = format!("{context} artifact object {digest}");
            move |source| CoordinatorError::Io { context, source }
        };
        let mut pending = self
            .backend
            .create(digest)
            .await
            .map_err(io_error("failed to create"))?;
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            received += chunk.len() as u64;
            if received > size {
                return Err(CoordinatorError::InvalidArgument(format!(
                    "the upload sent more than the {size} bytes it declared"
                )));
            }
            // Hashing a chunk is CPU work: off the runtime's workers.
            let (hashed, chunk) = tokio::task::spawn_blocking(move || {
                hasher.update(&chunk);
                (hasher, chunk)
            })
            .await?;
            hasher = hashed;
            pending
                .write(&chunk)
                .await
                .map_err(io_error("failed to write"))?;
        }
        if received != size {
            return Err(CoordinatorError::InvalidArgument(format!(
                "the upload ended after {received} of the {size} bytes it declared"
            )));
        }
        let actual = Digest::of(hasher);
        if actual != *digest {
            return Err(CoordinatorError::InvalidArgument(format!(
                "the upload's content has SHA-256 {actual}, not the {digest} it declared"
            )));
        }
        pending
            .commit()
            .await
            .map_err(io_error("failed to commit"))?;
        debug!(%digest, size, "artifact object stored");
        Ok(())
    }

    /// Reads object `digest`.
    pub async fn read(&self, digest: &Digest) -> Result<ObjectReader, CoordinatorError> {
        self.backend
            .open(digest)
            .await
            .map_err(|source| CoordinatorError::Io {
                context: format!("failed to open artifact object {digest}"),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// The digest of `bytes` (also used by the S3 backend's tests).
    pub(super) fn sha256_hex(bytes: &[u8]) -> Digest {
        let mut hasher = Sha256::new();
        hasher.update(bytes);
        Digest::of(hasher)
    }

    fn chunks_of(
        bytes: &[u8],
        size: usize,
    ) -> impl Stream<Item = Result<Vec<u8>, CoordinatorError>> + Send + Unpin {
        let chunks: Vec<_> = bytes.chunks(size).map(|c| Ok(c.to_vec())).collect();
        futures::stream::iter(chunks)
    }

    /// Every file under `dir`, relative.
    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(current) = stack.pop() {
            for entry in std::fs::read_dir(&current).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    found.push(path.strip_prefix(dir).unwrap().to_path_buf());
                }
            }
        }
        found.sort();
        found
    }

    fn store(dir: &Path) -> ArtifactStore {
        ArtifactStore::open(&ArtifactLocation::in_data_dir(dir)).unwrap()
    }

    #[test]
    fn digests_are_64_lowercase_hex_digits_of_sha256() {
        assert_eq!(
            sha256_hex(b"abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(Digest::parse(sha256_hex(b"").as_str()).is_ok());
        for bad in ["", "ab", &"A".repeat(64), &"g".repeat(64), &"a".repeat(65)] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn locations_are_file_or_s3_urls_or_the_data_directory() {
        assert_eq!(
            ArtifactLocation::parse("file:///mnt/team/ladder").unwrap(),
            ArtifactLocation::Directory("/mnt/team/ladder".into())
        );
        assert_eq!(
            ArtifactLocation::in_data_dir(Path::new("/data")),
            ArtifactLocation::Directory("/data/artifacts".into())
        );
        let relative = ArtifactLocation::parse("file://team")
            .unwrap_err()
            .to_string();
        assert!(relative.contains("absolute path"), "{relative}");
        assert!(matches!(
            ArtifactLocation::parse("s3://bucket/prefix"),
            Ok(ArtifactLocation::S3(_))
        ));
        let other = ArtifactLocation::parse("/mnt/team")
            .unwrap_err()
            .to_string();
        assert!(other.contains("file:///PATH"), "{other}");
    }

    #[tokio::test]
    async fn a_complete_upload_is_stored_under_its_hash_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let digest = sha256_hex(&content);
        assert!(!store.contains(&digest, content.len() as u64).await.unwrap());
        store
            .receive(&digest, content.len() as u64, chunks_of(&content, 1 << 20))
            .await
            .unwrap();
        assert!(store.contains(&digest, content.len() as u64).await.unwrap());
        let root = dir.path().join("artifacts");
        assert_eq!(
            files(&root),
            [PathBuf::from(format!(
                "objects/{}/{}",
                &digest.as_str()[..2],
                digest
            ))]
        );
        let mut read_back = Vec::new();
        store
            .read(&digest)
            .await
            .unwrap()
            .read_to_end(&mut read_back)
            .await
            .unwrap();
        assert!(read_back == content);
        // The same content again is stored once.
        store
            .receive(&digest, content.len() as u64, chunks_of(&content, 7777))
            .await
            .unwrap();
        assert_eq!(files(&root).len(), 1);
    }

    #[tokio::test]
    async fn an_empty_file_is_an_object_too() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let digest = sha256_hex(b"");
        store
            .receive(&digest, 0, futures::stream::iter(Vec::new()))
            .await
            .unwrap();
        assert!(store.contains(&digest, 0).await.unwrap());
    }

    #[tokio::test]
    async fn a_truncated_upload_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let content = vec![7u8; 100_000];
        let digest = sha256_hex(&content);
        let error = store
            .receive(&digest, 100_000, chunks_of(&content[..60_000], 8192))
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("ended after 60000 of the 100000"),
            "{error}"
        );
        assert!(files(&dir.path().join("artifacts")).is_empty());
        assert!(!store.contains(&digest, 100_000).await.unwrap());
    }

    #[tokio::test]
    async fn a_broken_stream_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let content = vec![1u8; 50_000];
        let digest = sha256_hex(&content);
        let chunks = futures::stream::iter(vec![
            Ok(content[..20_000].to_vec()),
            Err(CoordinatorError::InvalidArgument(
                "the client went away".into(),
            )),
        ]);
        let error = store.receive(&digest, 50_000, chunks).await.unwrap_err();
        assert!(error.to_string().contains("went away"), "{error}");
        assert!(files(&dir.path().join("artifacts")).is_empty());
    }

    #[tokio::test]
    async fn wrong_content_or_extra_bytes_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let content = b"the real content".to_vec();
        let digest = sha256_hex(&content);
        let mut forged = content.clone();
        forged[0] ^= 1;
        let error = store
            .receive(&digest, content.len() as u64, chunks_of(&forged, 4))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("not the"), "{error}");
        let error = store
            .receive(&digest, 4, chunks_of(&content, 4))
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("more than the 4 bytes"),
            "{error}"
        );
        assert!(files(&dir.path().join("artifacts")).is_empty());
    }

    #[tokio::test]
    async fn an_upload_dropped_mid_way_leaves_nothing_and_a_restart_clears_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let content = vec![3u8; 10_000];
        let digest = sha256_hex(&content);
        // The receiving task is cancelled (its request dropped) once the first chunk
        // was taken and the stream waits for more.
        let (reached, waiting) = tokio::sync::oneshot::channel::<()>();
        let first = futures::stream::iter(vec![Ok(content[..5_000].to_vec())]);
        let stalled = futures::stream::once(async move {
            let _ = reached.send(());
            std::future::pending::<Result<Vec<u8>, CoordinatorError>>().await
        });
        let receiving = tokio::spawn({
            let store = store.clone();
            let digest = digest.clone();
            async move {
                store
                    .receive(&digest, 10_000, Box::pin(first.chain(stalled)))
                    .await
            }
        });
        waiting.await.unwrap();
        receiving.abort();
        assert!(receiving.await.unwrap_err().is_cancelled());
        assert!(files(&dir.path().join("artifacts")).is_empty());
        // A temporary file a killed process left is removed when the store opens.
        std::fs::write(dir.path().join("artifacts/tmp/x.part"), b"partial").unwrap();
        let _reopened = super::tests::store(dir.path());
        assert!(files(&dir.path().join("artifacts")).is_empty());
    }
}
