//! The admin token of a coordinator started without `--auth`, and how the same user's
//! clients find it, the way Jupyter's runtime files work.
//!
//! A coordinator started without `--auth` (and without `--no-auth`) still requires a
//! bearer token on every RPC: one random admin token ([`crate::auth::Authorizer::local`]).
//! It lives in two files that only the user who started the coordinator can read, both
//! created with mode 0600 (never briefly readable by others: written under a temporary
//! name created with that mode, then renamed):
//!
//! - `DATA_DIR/admin-token` ([`DATA_DIR_TOKEN_FILE`]): the token alone, on one line. It is
//!   made on the first start and reused by later starts on the same data directory, so
//!   agents and scripts holding it keep working across coordinator restarts. A file that
//!   others can read or write is not trusted: a new token replaces it.
//! - `RUNTIME_DIR/coordinator-HOST-PORT.json` ([`RuntimeFile`]), keyed by the address the
//!   coordinator listens on: `{url, token, pid, listen, data_dir}`. `RUNTIME_DIR` is
//!   `$XDG_RUNTIME_DIR/ladder`, else `$HOME/.local/share/ladder/runtime` (mode 0700). It
//!   is removed at clean shutdown; a file whose `pid` is no longer running is ignored.
//!
//! [`find`] is the client side: from a coordinator URL alone it names the runtime files
//! that may belong to it ([`lookup_keys`]) and returns the first live one's token. The
//! CLI (every client verb, `ladder agent`, `ladder run`) calls it when neither `--token`
//! nor `LADDER_TOKEN` is given; `clients/python/reflect.py` reads the same files.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::auth::new_token;
use crate::CoordinatorError;

/// The name of the token file in the coordinator's data directory.
pub const DATA_DIR_TOKEN_FILE: &str = "admin-token";

/// The user's runtime directory for ladder, from the values of `XDG_RUNTIME_DIR` and
/// `HOME`: `$XDG_RUNTIME_DIR/ladder` when that is an absolute path, else
/// `$HOME/.local/share/ladder/runtime`; `None` when neither is usable.
pub fn runtime_dir_from(xdg_runtime_dir: Option<&OsStr>, home: Option<&OsStr>) -> Option<PathBuf> {
    let absolute = |value: Option<&OsStr>| {
        value
            .map(Path::new)
            .filter(|path| path.is_absolute())
            .map(Path::to_path_buf)
    };
    if let Some(runtime) = absolute(xdg_runtime_dir) {
        return Some(runtime.join("ladder"));
    }
    absolute(home).map(|home| home.join(".local/share/ladder/runtime"))
}

/// This process's runtime directory (see [`runtime_dir_from`]).
pub fn runtime_dir() -> Option<PathBuf> {
    runtime_dir_from(
        std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
        std::env::var_os("HOME").as_deref(),
    )
}

/// The key of a listen address in runtime file names: `127.0.0.1-7070`, `::1-7070`.
fn address_key(ip: IpAddr, port: u16) -> String {
    format!("{ip}-{port}")
}

/// The runtime file name of a coordinator listening on `addr`:
/// `coordinator-127.0.0.1-7070.json`.
pub fn runtime_file_name(addr: SocketAddr) -> String {
    format!("coordinator-{}.json", address_key(addr.ip(), addr.port()))
}

/// The listen-address keys (see [`runtime_file_name`]) under which a coordinator that a
/// client reaches at `host:port` may have written its runtime file, most specific first.
///
/// A loopback host (`localhost`, `127.0.0.1`, `::1`) may reach a coordinator listening on
/// either loopback address or on every address (`0.0.0.0`, `::`). Any other IP is looked
/// up only as itself: the runtime file then exists only if this machine's coordinator
/// listens on exactly that address. A host name that is not `localhost` has no key: it
/// may name another machine, which must not be sent this machine's token.
pub fn lookup_keys(host: &str, port: u16) -> Vec<String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let v4_any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let v6_any = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    let ips: Vec<IpAddr> = if host.eq_ignore_ascii_case("localhost") {
        vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            v4_any,
            v6_any,
        ]
    } else {
        match host.parse::<IpAddr>() {
            Ok(ip) if ip.is_loopback() => vec![ip, v4_any, v6_any],
            Ok(ip) => vec![ip],
            Err(_) => Vec::new(),
        }
    };
    ips.into_iter().map(|ip| address_key(ip, port)).collect()
}

/// What a runtime file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// A URL that reaches the coordinator from this machine.
    pub url: String,
    /// The admin token.
    pub token: String,
    /// The coordinator's process id; a file whose process is gone is stale.
    pub pid: u32,
    /// The address it listens on.
    pub listen: String,
    /// Its data directory.
    pub data_dir: String,
}

/// Creates `dir` (and its parents) with mode 0700 and makes sure `dir` itself belongs to
/// this user and is closed to others.
fn private_dir(dir: &Path) -> Result<(), CoordinatorError> {
    let io = |context: String| move |source| CoordinatorError::Io { context, source };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(format!("cannot create {}", dir.display())))?;
    let metadata = fs::metadata(dir).map_err(io(format!("cannot read {}", dir.display())))?;
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if metadata.uid() != uid {
        return Err(CoordinatorError::InvalidArgument(format!(
            "{} belongs to another user (uid {}); refusing to keep a token in it",
            dir.display(),
            metadata.uid()
        )));
    }
    if metadata.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(format!(
            "cannot make {} private (chmod 0700)",
            dir.display()
        )))?;
    }
    Ok(())
}

/// Writes `contents` to `path` as a file of mode 0600 that is never readable by others:
/// it is created under a temporary name with that mode (whatever the umask adds, it can
/// only remove bits), synced, then renamed over `path`.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), CoordinatorError> {
    let io = |context: String| move |source| CoordinatorError::Io { context, source };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&temporary);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(io(format!("cannot create {}", temporary.display())))?;
    let written = file
        .write_all(contents)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&temporary, path));
    if let Err(source) = written {
        let _ = fs::remove_file(&temporary);
        return Err(CoordinatorError::Io {
            context: format!("cannot write {}", path.display()),
            source,
        });
    }
    Ok(())
}

/// Whether a token read from a file has the form [`new_token`] makes.
fn well_formed(token: &str) -> bool {
    token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The admin token of the coordinator whose data directory is `data_dir`: the one in
/// `DATA_DIR/admin-token` when that file is private to this user and well formed, else a
/// new one, written there (mode 0600). Creates `data_dir` if needed.
pub fn load_or_create(data_dir: &Path) -> Result<String, CoordinatorError> {
    fs::create_dir_all(data_dir).map_err(|source| CoordinatorError::Io {
        context: format!("cannot create the data directory {}", data_dir.display()),
        source,
    })?;
    let path = data_dir.join(DATA_DIR_TOKEN_FILE);
    if let Ok(metadata) = fs::symlink_metadata(&path) {
        let private = metadata.is_file() && metadata.permissions().mode() & 0o077 == 0;
        let existing = fs::read_to_string(&path).unwrap_or_default();
        let existing = existing.trim();
        if private && well_formed(existing) {
            return Ok(existing.to_string());
        }
        warn!(
            file = %path.display(),
            "the admin token file is readable by others or malformed; replacing it with a new token"
        );
    }
    let token = new_token();
    write_private_file(&path, format!("{token}\n").as_bytes())?;
    Ok(token)
}

/// A runtime file this process wrote; removed when dropped (at clean shutdown), unless
/// another coordinator has replaced it since.
#[derive(Debug)]
pub struct RuntimeFile {
    path: PathBuf,
    token: String,
}

impl RuntimeFile {
    /// Writes the runtime file of a coordinator listening on `listen` (reachable at `url`)
    /// into the user's runtime directory.
    pub fn write(
        listen: SocketAddr,
        url: &str,
        token: &str,
        data_dir: &Path,
    ) -> Result<RuntimeFile, CoordinatorError> {
        let Some(dir) = runtime_dir() else {
            return Err(CoordinatorError::InvalidArgument(
                "neither XDG_RUNTIME_DIR nor HOME is set, so there is no runtime directory".into(),
            ));
        };
        RuntimeFile::write_in(&dir, listen, url, token, data_dir)
    }

    /// [`RuntimeFile::write`] into `dir`.
    pub fn write_in(
        dir: &Path,
        listen: SocketAddr,
        url: &str,
        token: &str,
        data_dir: &Path,
    ) -> Result<RuntimeFile, CoordinatorError> {
        private_dir(dir)?;
        let info = RuntimeInfo {
            url: url.to_string(),
            token: token.to_string(),
            pid: std::process::id(),
            listen: listen.to_string(),
            data_dir: std::path::absolute(data_dir)
                .unwrap_or_else(|_| data_dir.to_path_buf())
                .display()
                .to_string(),
        };
        let path = dir.join(runtime_file_name(listen));
        let text = serde_json::to_string_pretty(&info).expect("runtime info serializes");
        write_private_file(&path, text.as_bytes())?;
        debug!(file = %path.display(), "runtime file written");
        Ok(RuntimeFile {
            path,
            token: token.to_string(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RuntimeFile {
    fn drop(&mut self) {
        let ours = read_runtime_file(&self.path)
            .is_some_and(|info| info.pid == std::process::id() && info.token == self.token);
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Removes the runtime file of `listen`, if any: a coordinator that serves this address
/// with `--auth` or `--no-auth` replaces whatever a previous, killed one left there.
pub fn remove_stale(listen: SocketAddr) {
    if let Some(dir) = runtime_dir() {
        let _ = fs::remove_file(dir.join(runtime_file_name(listen)));
    }
}

fn read_runtime_file(path: &Path) -> Option<RuntimeInfo> {
    let text = fs::read_to_string(path).ok()?;
    match serde_json::from_str(&text) {
        Ok(info) => Some(info),
        Err(error) => {
            debug!(file = %path.display(), %error, "ignoring a malformed runtime file");
            None
        }
    }
}

/// Whether process `pid` is running, as far as `/proc` tells; without `/proc`, assumed so.
fn process_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return true;
    }
    proc.join(pid.to_string()).exists()
}

/// A token found for a coordinator URL, and the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundToken {
    pub token: String,
    pub file: PathBuf,
}

/// The admin token of a coordinator of this user reachable at `url`, from its runtime
/// file in this user's runtime directory; `None` when there is none (a remote or
/// `--auth` coordinator, or one started by another user).
pub fn find(url: &str) -> Option<FoundToken> {
    find_in(&runtime_dir()?, url)
}

/// [`find`] in runtime directory `dir`.
pub fn find_in(dir: &Path, url: &str) -> Option<FoundToken> {
    let uri: tonic::codegen::http::Uri = url.parse().ok()?;
    let host = uri.host()?;
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    for key in lookup_keys(host, port) {
        let path = dir.join(format!("coordinator-{key}.json"));
        let Some(info) = read_runtime_file(&path) else {
            continue;
        };
        if !process_alive(info.pid) {
            debug!(file = %path.display(), pid = info.pid, "ignoring the runtime file of a stopped coordinator");
            continue;
        }
        if info.token.is_empty() {
            continue;
        }
        return Some(FoundToken {
            token: info.token,
            file: path,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn the_runtime_dir_is_xdg_runtime_dir_else_under_home() {
        assert_eq!(
            runtime_dir_from(
                Some(OsStr::new("/run/user/1000")),
                Some(OsStr::new("/home/a"))
            ),
            Some(PathBuf::from("/run/user/1000/ladder"))
        );
        assert_eq!(
            runtime_dir_from(None, Some(OsStr::new("/home/a"))),
            Some(PathBuf::from("/home/a/.local/share/ladder/runtime"))
        );
        // XDG says relative paths are invalid and must be ignored.
        assert_eq!(
            runtime_dir_from(Some(OsStr::new("relative")), Some(OsStr::new("/home/a"))),
            Some(PathBuf::from("/home/a/.local/share/ladder/runtime"))
        );
        assert_eq!(runtime_dir_from(Some(OsStr::new("")), None), None);
    }

    #[test]
    fn loopback_urls_look_up_loopback_and_wildcard_listeners() {
        assert_eq!(
            lookup_keys("127.0.0.1", 7070),
            ["127.0.0.1-7070", "0.0.0.0-7070", "::-7070"]
        );
        assert_eq!(
            lookup_keys("localhost", 1),
            ["127.0.0.1-1", "::1-1", "0.0.0.0-1", "::-1"]
        );
        assert_eq!(lookup_keys("[::1]", 9), ["::1-9", "0.0.0.0-9", "::-9"]);
        assert_eq!(lookup_keys("10.0.0.5", 7070), ["10.0.0.5-7070"]);
        assert!(lookup_keys("coord.example.com", 7070).is_empty());
        assert_eq!(
            runtime_file_name("127.0.0.1:7070".parse().unwrap()),
            "coordinator-127.0.0.1-7070.json"
        );
    }

    proptest! {
        /// Only a loopback URL may pick up a wildcard listener's token; any other address
        /// looks up exactly itself, and a host name other than localhost nothing.
        #[test]
        fn only_loopback_hosts_reach_wildcard_files(
            octets in any::<[u8; 4]>(),
            port in any::<u16>(),
            name in "[a-z][a-z0-9.-]{0,20}",
        ) {
            let ip = IpAddr::from(octets);
            let keys = lookup_keys(&ip.to_string(), port);
            prop_assert_eq!(&keys[0], &address_key(ip, port));
            if !ip.is_loopback() {
                prop_assert_eq!(keys.len(), 1);
            }
            for key in &keys {
                let suffix = format!("-{port}");
                prop_assert!(key.ends_with(&suffix));
            }
            if name != "localhost" && name.parse::<IpAddr>().is_err() {
                prop_assert!(lookup_keys(&name, port).is_empty());
            }
        }
    }

    #[test]
    fn the_data_dir_token_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let token = load_or_create(&data).unwrap();
        assert!(well_formed(&token), "{token}");
        let file = data.join(DATA_DIR_TOKEN_FILE);
        assert_eq!(mode(&file), 0o600);
        assert_eq!(fs::read_to_string(&file).unwrap().trim(), token);
        assert_eq!(load_or_create(&data).unwrap(), token);
        // A token others could read is not trusted: it is replaced.
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let replaced = load_or_create(&data).unwrap();
        assert_ne!(replaced, token);
        assert_eq!(mode(&file), 0o600);
        // So is a malformed one.
        write_private_file(&file, b"short\n").unwrap();
        assert!(well_formed(&load_or_create(&data).unwrap()));
    }

    #[test]
    fn private_files_are_never_created_readable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_private_file(&path, b"new").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "the temporary file is gone");
    }

    #[test]
    fn runtime_files_are_private_found_by_url_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().join("run/ladder");
        let listen: SocketAddr = "127.0.0.1:45678".parse().unwrap();
        let file = RuntimeFile::write_in(
            &runtime,
            listen,
            "http://127.0.0.1:45678",
            "t0ken",
            Path::new("/data"),
        )
        .unwrap();
        assert_eq!(mode(&runtime), 0o700);
        assert_eq!(mode(file.path()), 0o600);
        let info = read_runtime_file(file.path()).unwrap();
        assert_eq!(info.url, "http://127.0.0.1:45678");
        assert_eq!(info.pid, std::process::id());
        let found = find_in(&runtime, "http://localhost:45678").unwrap();
        assert_eq!(found.token, "t0ken");
        assert_eq!(found.file, file.path());
        assert_eq!(find_in(&runtime, "http://127.0.0.1:45679"), None);
        assert_eq!(find_in(&runtime, "http://coord.example.com:45678"), None);
        let path = file.path().to_path_buf();
        drop(file);
        assert!(!path.exists());
        assert_eq!(find_in(&runtime, "http://127.0.0.1:45678"), None);
    }

    #[test]
    fn a_wildcard_listener_is_found_from_loopback_and_a_dead_pid_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = "0.0.0.0:45680".parse().unwrap();
        let file = RuntimeFile::write_in(
            dir.path(),
            listen,
            "http://127.0.0.1:45680",
            "t",
            Path::new("/d"),
        )
        .unwrap();
        assert_eq!(
            find_in(dir.path(), "http://127.0.0.1:45680").map(|f| f.token),
            Some("t".to_string())
        );
        // The same file, claiming a process that is not running.
        let mut info = read_runtime_file(file.path()).unwrap();
        info.pid = u32::MAX;
        write_private_file(
            file.path(),
            serde_json::to_string(&info).unwrap().as_bytes(),
        )
        .unwrap();
        assert_eq!(find_in(dir.path(), "http://127.0.0.1:45680"), None);
        // Not ours any more (another pid wrote it): dropping leaves it in place.
        let path = file.path().to_path_buf();
        drop(file);
        assert!(path.exists());
    }

    #[test]
    fn a_runtime_dir_open_to_others_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().join("ladder");
        fs::create_dir(&runtime).unwrap();
        fs::set_permissions(&runtime, fs::Permissions::from_mode(0o755)).unwrap();
        RuntimeFile::write_in(
            &runtime,
            "127.0.0.1:1".parse().unwrap(),
            "u",
            "t",
            Path::new("/d"),
        )
        .unwrap();
        assert_eq!(mode(&runtime), 0o700);
    }
}
