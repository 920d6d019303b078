//! The secret this agent's name is bound to.
//!
//! The first time an agent registers a name, the coordinator issues a secret for it and
//! keeps only its hash; from then on it accepts the name only from a registration that
//! presents the secret. The agent keeps it in `WORK_DIR/secrets/NAME` (a file of mode
//! 0600, created with that mode, in a directory of mode 0700) and presents it on every
//! registration: a restarted agent with the same work directory keeps its name, while
//! another process holding the fleet's agent token cannot take it. An agent whose work
//! directory was lost is refused until an admin runs `ladder agents forget NAME`.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::AgentError;

/// Length of a secret as the coordinator issues it (32 bytes as lowercase hex).
use ladder_protocol::{AgentSecret, SECRET_HEX_LEN};

/// The secret of one agent name, and the file that keeps it.
pub struct Identity {
    path: PathBuf,
    secret: Option<AgentSecret>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("path", &self.path)
            .field("enrolled", &self.secret.is_some())
            .finish()
    }
}

/// Where the secret of agent `name` is kept under `work_dir`.
pub fn secret_file(work_dir: &Path, name: &str) -> PathBuf {
    work_dir.join("secrets").join(file_name(name))
}

/// `name` itself when it is a plain file name; otherwise its safe characters followed
/// by a hash of the whole name, so that distinct names never share a file.
fn file_name(name: &str) -> String {
    let plain = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain {
        return name.to_string();
    }
    // FNV-1a: only tells the operator's own names apart.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let safe: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(64)
        .collect();
    format!("{safe}-{hash:016x}")
}

impl Identity {
    /// Reads the secret of agent `name` kept under `work_dir`, if it has one.
    ///
    /// A secret file readable by others is tightened to 0600 (with a warning: the secret
    /// may have been read); one that does not hold a secret is an error naming the file.
    pub fn load(work_dir: &Path, name: &str) -> Result<Identity, AgentError> {
        let path = secret_file(work_dir, name);
        let problem = |message: String| AgentError::Identity {
            path: path.clone(),
            message,
        };
        let metadata = match std::fs::metadata(&path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Identity { path, secret: None });
            }
            Err(error) => return Err(problem(format!("cannot read the agent secret: {error}"))),
        };
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warn!(path = %path.display(), mode = format!("{mode:o}"), "the agent secret file was readable by others; restricting it to its owner (mode 600)");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|error| problem(format!("cannot restrict the agent secret: {error}")))?;
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|error| problem(format!("cannot read the agent secret: {error}")))?;
        let secret = text.trim();
        if !AgentSecret::is_well_formed(secret) {
            return Err(problem(format!(
                "the file does not hold an agent secret ({SECRET_HEX_LEN} lowercase hex \
                 digits); remove it, and have an admin run `ladder agents forget {name}` \
                 so that the name can enroll again"
            )));
        }
        Ok(Identity {
            path,
            secret: Some(AgentSecret::issued(secret.to_string())),
        })
    }

    /// The secret to present when registering; none before the name enrolled.
    pub fn secret(&self) -> Option<&AgentSecret> {
        self.secret.as_ref()
    }

    /// Where the secret is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the secret the coordinator issued when this registration enrolled the name:
    /// written to a new file of mode 0600, flushed to disk, then renamed over the old one,
    /// so the file is never readable by others nor half written.
    pub fn adopt(&mut self, issued: &AgentSecret) -> Result<(), AgentError> {
        let problem = |message: String| AgentError::Identity {
            path: self.path.clone(),
            message,
        };
        let dir = self
            .path
            .parent()
            .expect("the secret file is in a directory");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|error| {
                problem(format!(
                    "cannot create the directory {}: {error}",
                    dir.display()
                ))
            })?;
        let file_name = self
            .path
            .file_name()
            .expect("a file name")
            .to_string_lossy();
        let temporary = dir.join(format!(".{file_name}.new"));
        // A leftover of an interrupted write may have any mode: start from a new file.
        match std::fs::remove_file(&temporary) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(problem(format!("cannot replace the agent secret: {error}"))),
        }
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temporary)?;
            file.write_all(format!("{}\n", issued.expose()).as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temporary, &self.path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|error| problem(format!("cannot keep the agent secret: {error}")))?;
        info!(path = %self.path.display(), "agent name enrolled; its secret is kept in the work directory");
        self.secret = Some(issued.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn kept(identity: &Identity) -> Option<&str> {
        identity.secret().map(AgentSecret::expose)
    }

    #[test]
    fn a_secret_is_kept_with_mode_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut identity = Identity::load(dir.path(), "gpu-01").unwrap();
        assert_eq!(kept(&identity), None);
        identity.adopt(&AgentSecret::issued(SECRET.into())).unwrap();
        let path = dir.path().join("secrets").join("gpu-01");
        assert_eq!(identity.path(), path);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert_eq!(
            kept(&Identity::load(dir.path(), "gpu-01").unwrap()),
            Some(SECRET)
        );
        assert_eq!(kept(&Identity::load(dir.path(), "gpu-02").unwrap()), None);
        assert!(!format!("{identity:?}").contains(SECRET));
        // A new secret (after `agents forget`) replaces the old one.
        let other = SECRET.replace('0', "f");
        identity.adopt(&AgentSecret::issued(other.clone())).unwrap();
        assert_eq!(
            kept(&Identity::load(dir.path(), "gpu-01").unwrap()),
            Some(other.as_str())
        );
    }

    #[test]
    fn a_secret_file_open_to_others_is_restricted_and_a_corrupt_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = secret_file(dir.path(), "a");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("{SECRET}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            kept(&Identity::load(dir.path(), "a").unwrap()),
            Some(SECRET)
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        std::fs::write(&path, "not a secret\n").unwrap();
        let message = Identity::load(dir.path(), "a").unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("ladder agents forget a"), "{message}");
    }

    #[test]
    fn names_map_to_distinct_plain_file_names() {
        assert_eq!(file_name("gpu-01.lab"), "gpu-01.lab");
        let odd = file_name("../etc/passwd");
        assert!(!odd.contains('/') && !odd.starts_with('.'), "{odd}");
        assert_ne!(file_name("a/b"), file_name("a\\b"));
        let long = file_name(&"x".repeat(256));
        assert!(long.len() < 100, "{long}");
    }
}
