//! A small harness for end-to-end tests of ladder: it starts REAL `ladder` processes
//! (coordinator, agents, client verbs) on loopback and observes them the way a user
//! would, through the CLI's documented `--json` output.
//!
//! - [`ladder_bin`] finds the binary next to the test executable (`target/debug/ladder`),
//!   or takes it from `LADDER_BIN`.
//! - [`Coordinator`] and [`Agent`] are child processes killed (SIGKILL) and reaped on drop;
//!   their stderr goes to a log file in the test's temporary directory, and when a test
//!   panics the tail of every log is printed, so a failure comes with the system's side
//!   of the story.
//! - [`Cluster`] starts the setup most tests share: a coordinator with its store in
//!   `DIR/data` and agents working in `DIR/NAME`, and waits until they are connected;
//!   a test starts processes by hand only where it needs what the builder cannot say
//!   (an agent that joins later, over TLS or from Slurm, agents with different code
//!   directories, a descriptor limit), or where the agent is what the test is about.
//! - [`Coordinator::run_sweep`] writes a sweep file, submits it and watches the sweep to
//!   its end.
//! - [`ladder`] / [`ladder_json`] run one client verb with a timeout.
//! - [`wait_until`] polls a condition; polling is how the *test* observes, it is not part
//!   of the system under test.
//!
//! - Every process started through [`ladder_command`] shares one runtime directory,
//!   [`runtime_dir`] (its `XDG_RUNTIME_DIR`), as one user's processes do: a coordinator
//!   started without `--auth` leaves its admin token there, keyed by its address, and the
//!   client verbs and agents find it from the coordinator URL, so tests talk to such a
//!   coordinator the way its user would, token included.
//!
//! Every test should use its own [`tempfile::TempDir`] and listen on port 0, so tests
//! run in parallel without sharing anything.

/// How long a test follows a sweep or run before it gives up: long enough for the
/// slowest sweep of the suite on a loaded 2-core machine.
pub const WATCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(240);

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use serde_json::Value;

pub mod browser;

/// How long a plain client verb may take before the harness gives up on it.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a coordinator may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How many lines of each log a failing test prints.
const LOG_TAIL_LINES: usize = 60;

/// The `ladder` binary: `$LADDER_BIN`, or `ladder` in the cargo target directory that
/// holds the test executable (`target/<profile>/deps/<test>` → `target/<profile>/ladder`).
pub fn ladder_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("LADDER_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "LADDER_BIN={} does not name a file",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut candidates = Vec::new();
    for dir in exe.ancestors().skip(1).take(3) {
        candidates.push(dir.join("ladder"));
    }
    for candidate in &candidates {
        if candidate.is_file() {
            static STALE_CHECK: std::sync::Once = std::sync::Once::new();
            STALE_CHECK.call_once(|| warn_if_stale(candidate));
            return candidate.clone();
        }
    }
    panic!(
        "the ladder binary is missing (looked at {}); build it with `cargo build -p ladder-cli`, \
         or point LADDER_BIN at it",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// `cargo nextest run -p ladder-e2e` does not rebuild the binary; say so when a source
/// file of the crates it is built from is newer than it.
fn warn_if_stale(binary: &Path) {
    fn newest(dir: &Path, newest_seen: &mut Option<(std::time::SystemTime, PathBuf)>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                newest(&path, newest_seen);
                continue;
            }
            let relevant = path
                .extension()
                .is_some_and(|e| e == "rs" || e == "proto" || e == "toml");
            let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
                continue;
            };
            if relevant && newest_seen.as_ref().is_none_or(|(t, _)| modified > *t) {
                *newest_seen = Some((modified, path));
            }
        }
    }
    let Ok(built) = fs::metadata(binary).and_then(|m| m.modified()) else {
        return;
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut newest_seen = None;
    for krate in ["cli", "agent", "coordinator", "shared", "proto"] {
        newest(&workspace.join(krate), &mut newest_seen);
    }
    if let Some((modified, path)) = newest_seen {
        if modified > built {
            eprintln!(
                "warning: {} is older than {}; rebuild it with `cargo build -p ladder-cli`",
                binary.display(),
                path.display()
            );
        }
    }
}

/// A test's own temporary directory. Removed on drop, unless the test panicked or
/// `LADDER_E2E_KEEP` is set: then it is kept (logs, data, run directories) and its path
/// printed. Create it first in a test, so it is dropped after the processes using it.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    pub fn new() -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix("ladder-e2e-")
            .tempdir()
            .expect("create a temporary directory");
        let path = dir.path().to_path_buf();
        TestDir {
            dir: Some(dir),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for TestDir {
    fn default() -> Self {
        TestDir::new()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let keep = std::thread::panicking() || std::env::var_os("LADDER_E2E_KEEP").is_some();
        if let Some(dir) = self.dir.take() {
            if keep {
                let path = dir.keep();
                eprintln!("test directory kept: {}", path.display());
            }
        }
    }
}

/// The runtime directory (`XDG_RUNTIME_DIR`) of every process [`ladder_command`]
/// starts: `ladder-e2e-runtime-UID` in the system's temporary directory, mode 0700,
/// shared by the tests of this user (runtime files are keyed by port, unique while
/// bound) and never the user's real one.
pub fn runtime_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        let dir = std::env::temp_dir().join(format!("ladder-e2e-runtime-{uid}"));
        use std::os::unix::fs::DirBuilderExt;
        let _ = fs::DirBuilder::new().mode(0o700).create(&dir);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|e| panic!("cannot make {} private: {e}", dir.display()));
        dir
    })
    .clone()
}

/// The runtime file a coordinator without `--auth` listening on `addr` writes (in
/// `$XDG_RUNTIME_DIR/ladder`).
pub fn runtime_file(addr: SocketAddr) -> PathBuf {
    runtime_dir()
        .join("ladder")
        .join(format!("coordinator-{}-{}.json", addr.ip(), addr.port()))
}

/// A `Command` for the ladder binary with a clean client environment.
pub fn ladder_command() -> Command {
    let mut command = Command::new(ladder_bin());
    // Plain-text logs (tracing colours them otherwise), no ambient coordinator, token or
    // CA, and the harness's runtime directory.
    command
        .env("NO_COLOR", "1")
        .env("XDG_RUNTIME_DIR", runtime_dir())
        .env_remove("LADDER_COORDINATOR")
        .env_remove("LADDER_TOKEN")
        .env_remove("LADDER_CA");
    command
}

/// Polls `condition` every `poll` until it returns `Some`, and returns that value.
/// Panics after `timeout` with `what` in the message.
pub fn wait_until<T>(
    timeout: Duration,
    poll: Duration,
    what: &str,
    mut condition: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(poll);
    }
}

/// Runs `ladder ARGS` and returns its output; kills it and panics after `timeout`.
pub fn ladder_with_timeout(args: &[&str], timeout: Duration) -> Output {
    ladder_in(None, args, timeout)
}

/// [`ladder_with_timeout`] in working directory `dir` (the test's own when `None`).
pub fn ladder_in(dir: Option<&Path>, args: &[&str], timeout: Duration) -> Output {
    let mut command = ladder_command();
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let mut child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start ladder {args:?}: {e}"));
    // Read both pipes on threads so a chatty child cannot block on a full pipe.
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read_all(Box::new(stdout));
    let stderr = read_all(Box::new(stderr));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let stdout = stdout.join().unwrap_or_default();
                let stderr = stderr.join().unwrap_or_default();
                panic!(
                    "ladder {args:?} did not finish within {timeout:?}\n--- stdout\n{}\n--- stderr\n{}",
                    String::from_utf8_lossy(&stdout),
                    String::from_utf8_lossy(&stderr)
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("cannot wait for ladder {args:?}: {e}"),
        }
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Runs `ladder ARGS` (with [`CLIENT_TIMEOUT`]) and returns its output, whatever the exit code.
pub fn ladder(args: &[&str]) -> Output {
    ladder_with_timeout(args, CLIENT_TIMEOUT)
}

/// Describes an output for panic messages.
/// `ladder train CONFIG --out OUT --json`, asserted to succeed within `timeout`; its JSON
/// result.
pub fn train_json(config: &Path, out: &Path, timeout: Duration) -> Value {
    let args = [
        "train",
        config.to_str().expect("utf-8 path"),
        "--out",
        out.to_str().expect("utf-8 path"),
        "--json",
    ];
    let output = ladder_in(None, &args, timeout);
    assert!(output.status.success(), "{}", describe(&args, &output));
    serde_json::from_slice(&output.stdout).expect("json")
}

pub fn describe(args: &[&str], output: &Output) -> String {
    format!(
        "ladder {args:?} exited with {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Parses the stdout of a successful `ladder ... --json`; panics with both streams otherwise.
pub fn parse_json_output(args: &[&str], output: &Output) -> Value {
    assert!(output.status.success(), "{}", describe(args, output));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", describe(args, output)))
}

/// Runs `ladder ARGS --json` and parses its stdout; panics with stdout and stderr if it
/// fails or prints something else than one JSON document.
pub fn ladder_json(args: &[&str]) -> Value {
    let mut args = args.to_vec();
    if !args.contains(&"--json") {
        args.push("--json");
    }
    let output = ladder(&args);
    parse_json_output(&args, &output)
}

/// Writes an executable file (a script) and returns its path.
pub fn write_script(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Writes a file and returns its path.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

fn send_signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

fn signal_group(pgid: u32, signal: i32) {
    // SAFETY: as above; a negative pid names a process group.
    unsafe {
        libc::kill(-(pgid as i32), signal);
    }
}

/// The direct children of `pid`, from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return children;
    };
    for entry in entries.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may contain spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok());
        if ppid == Some(pid) {
            children.push(child);
        }
    }
    children
}

/// Prints the last lines of a log file to stderr (shown by the test runner on failure).
fn print_log_tail(label: &str, path: &Path) {
    let Ok(text) = fs::read_to_string(path) else {
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    eprintln!(
        "----- {label}: last {} lines of {}",
        lines.len() - start,
        path.display()
    );
    for line in &lines[start..] {
        eprintln!("{line}");
    }
}

/// A child process whose stderr goes to a log file; SIGKILLed and reaped on drop.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn kill9(&mut self) -> Option<ExitStatus> {
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

fn log_file(path: &Path) -> File {
    File::create(path).unwrap_or_else(|e| panic!("create log {}: {e}", path.display()))
}

/// A `ladder coordinator` process.
pub struct Coordinator {
    proc: Option<Proc>,
    data_dir: PathBuf,
    extra_args: Vec<String>,
    addr: SocketAddr,
    /// Every log file this coordinator wrote, one per start.
    logs: Vec<PathBuf>,
    /// Soft and hard RLIMIT_NOFILE the process starts with, when set.
    nofile: Option<u64>,
}

impl Coordinator {
    /// Starts `ladder coordinator --listen 127.0.0.1:0 --data DATA_DIR EXTRA_ARGS` and
    /// waits for its listening line. Its stderr goes to `DATA_DIR.coordinator-N.log`
    /// (next to the data directory, so inside the test's temporary directory).
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Coordinator {
        Coordinator::start_with_nofile(data_dir, extra_args, None)
    }

    /// Like [`Coordinator::start`], the process limited to `nofile` open descriptors.
    pub fn start_with_nofile(
        data_dir: &Path,
        extra_args: &[&str],
        nofile: Option<u64>,
    ) -> Coordinator {
        let mut coordinator = Coordinator {
            proc: None,
            data_dir: data_dir.to_path_buf(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            addr: "127.0.0.1:0".parse().expect("address"),
            logs: Vec::new(),
            nofile,
        };
        let (proc, addr) = coordinator
            .spawn("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("{e}"));
        coordinator.proc = Some(proc);
        coordinator.addr = addr;
        coordinator
    }

    fn spawn(&mut self, listen: &str) -> Result<(Proc, SocketAddr), String> {
        let log = PathBuf::from(format!(
            "{}.coordinator-{}.log",
            self.data_dir.display(),
            self.logs.len() + 1
        ));
        self.logs.push(log.clone());
        let mut command = ladder_command();
        if let Some(nofile) = self.nofile {
            // SAFETY: setrlimit(2) is async-signal-safe and changes only the child.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: nofile,
                        rlim_max: nofile,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .arg("coordinator")
            .args(["--listen", listen, "--data"])
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(&log))
            .spawn()
            .map_err(|e| format!("cannot start the coordinator: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Forward the first line, then keep draining until the process exits.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut proc = Proc { child, log };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("ladder coordinator listening on ") {
                        let addr = addr.trim().parse().map_err(|e| {
                            format!("bad address in the listening line {line:?}: {e}")
                        })?;
                        return Ok((proc, addr));
                    }
                }
                Err(error) => {
                    let status = proc.kill9();
                    let stderr = fs::read_to_string(&proc.log).unwrap_or_default();
                    return Err(format!(
                        "the coordinator (listen {listen}) did not print its listening line \
                         ({error:?}; exit status {status:?}); stderr:\n{stderr}"
                    ));
                }
            }
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.child.id())
    }

    /// Asks the coordinator to shut down cleanly (SIGTERM) and waits up to `timeout` for
    /// it to exit; returns its exit status (`None`: not running, or still running).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let proc = self.proc.as_mut()?;
        send_signal(proc.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            match proc.child.try_wait() {
                Ok(Some(status)) => {
                    self.proc = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() >= deadline => return None,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("cannot wait for the coordinator: {e}"),
            }
        }
    }

    /// SIGKILLs the coordinator and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill9();
        }
    }

    /// Starts the coordinator again on the same data directory and the SAME address
    /// (so agents started with the old URL find it), retrying for a while if the port is
    /// not free yet. Kills the running one first, if any.
    pub fn restart(&mut self) {
        self.kill9();
        let listen = self.addr.to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.spawn(&listen) {
                Ok((proc, addr)) => {
                    assert_eq!(addr, self.addr, "restarted on another address");
                    self.proc = Some(proc);
                    return;
                }
                Err(error) if Instant::now() < deadline => {
                    eprintln!("coordinator restart failed, retrying: {error}");
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(error) => panic!("cannot restart the coordinator on {listen}: {error}"),
            }
        }
    }

    /// `ladder ARGS --coordinator URL` (any exit code).
    pub fn ladder(&self, args: &[&str]) -> Output {
        let url = self.url();
        let mut args = args.to_vec();
        args.extend(["--coordinator", &url]);
        ladder(&args)
    }

    /// `ladder ARGS --coordinator URL --json`, parsed; panics on failure.
    pub fn json(&self, args: &[&str]) -> Value {
        let url = self.url();
        let mut args = args.to_vec();
        args.extend(["--coordinator", &url]);
        ladder_json(&args)
    }

    /// Submits a sweep file and returns its id.
    pub fn submit(&self, file: &Path) -> String {
        let file = file.to_str().expect("utf-8 path");
        let sweep = self.json(&["sweep", "submit", file]);
        sweep["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no sweep id in {sweep}"))
            .to_string()
    }

    /// `sweep watch ID --json`: blocks until the sweep ends; returns the final sweep.
    pub fn watch(&self, sweep_id: &str, timeout: Duration) -> Value {
        let url = self.url();
        let args = ["sweep", "watch", sweep_id, "--json", "--coordinator", &url];
        let output = ladder_with_timeout(&args, timeout);
        parse_json_output(&args, &output)
    }

    /// Writes `yaml` to `DIR/FILE_NAME`, submits it and watches the sweep to its end
    /// (within [`WATCH_TIMEOUT`]): the sweep's id and its final state, as `sweep watch
    /// --json` prints it. Whether the sweep completed is the caller's to assert.
    pub fn run_sweep(&self, dir: &Path, file_name: &str, yaml: &str) -> (String, Value) {
        let file = write_file(dir, file_name, yaml);
        let sweep_id = self.submit(&file);
        let sweep = self.watch(&sweep_id, WATCH_TIMEOUT);
        (sweep_id, sweep)
    }

    /// The runs of a sweep (`runs ls --sweep ID --json`), in the order listed.
    pub fn runs(&self, sweep_id: &str) -> Vec<Value> {
        let listed = self.json(&["runs", "ls", "--sweep", sweep_id]);
        listed["runs"]
            .as_array()
            .unwrap_or_else(|| panic!("no runs array in {listed}"))
            .clone()
    }

    /// `runs show RUN --json`.
    pub fn run_detail(&self, run_id: &str) -> Value {
        self.json(&["runs", "show", run_id, "--log-lines", "200"])
    }

    /// Names of the agents `agents ls` reports as connected.
    pub fn connected_agents(&self) -> BTreeSet<String> {
        self.connected_agents_as(None)
    }

    /// [`Coordinator::connected_agents`], asked with `--token TOKEN` when given (a
    /// coordinator started with `--auth`).
    fn connected_agents_as(&self, token: Option<&str>) -> BTreeSet<String> {
        let mut args = vec!["agents", "ls"];
        if let Some(token) = token {
            args.extend(["--token", token]);
        }
        let agents = self.json(&args);
        agents["agents"]
            .as_array()
            .unwrap_or_else(|| panic!("no agents array in {agents}"))
            .iter()
            .filter(|a| a["connected"] == Value::Bool(true))
            .filter_map(|a| a["name"].as_str().map(String::from))
            .collect()
    }

    /// Waits up to `timeout` for the coordinator to exit on its own; its exit status,
    /// or `None` while it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let proc = self.proc.as_mut()?;
            match proc.child.try_wait() {
                Ok(Some(status)) => {
                    self.proc = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() >= deadline => return None,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("cannot wait for the coordinator: {e}"),
            }
        }
    }

    /// What the latest start of the coordinator wrote to stderr so far.
    pub fn log_text(&self) -> String {
        self.logs
            .last()
            .map(|log| fs::read_to_string(log).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Waits until every named agent is connected.
    pub fn wait_for_agents(&self, names: &[&str], timeout: Duration) {
        self.wait_for_agents_as(names, None, timeout)
    }

    /// [`Coordinator::wait_for_agents`], listing the agents with `--token TOKEN` when given.
    fn wait_for_agents_as(&self, names: &[&str], token: Option<&str>, timeout: Duration) {
        wait_until(
            timeout,
            Duration::from_millis(200),
            &format!("agents {names:?} to connect"),
            || {
                let connected = self.connected_agents_as(token);
                names.iter().all(|n| connected.contains(*n)).then_some(())
            },
        )
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            for (i, log) in self.logs.iter().enumerate() {
                print_log_tail(&format!("coordinator start {}", i + 1), log);
            }
        }
    }
}

/// A `ladder agent` process.
pub struct Agent {
    proc: Option<Proc>,
    name: String,
    log: PathBuf,
}

impl Agent {
    /// Starts `ladder agent --coordinator URL --name NAME --slots SLOTS --work-dir WORK_DIR
    /// --code-dir CODE_DIR`. Its stderr goes to `WORK_DIR.agent.log`. Does not wait for
    /// it to connect (see [`Coordinator::wait_for_agents`]).
    pub fn start(url: &str, name: &str, slots: u32, work_dir: &Path, code_dir: &Path) -> Agent {
        Agent::start_with(url, name, slots, work_dir, code_dir, &[])
    }

    /// Like [`Agent::start`], with extra arguments (e.g. `--stop-grace 5`).
    pub fn start_with(
        url: &str,
        name: &str,
        slots: u32,
        work_dir: &Path,
        code_dir: &Path,
        extra_args: &[&str],
    ) -> Agent {
        let log = PathBuf::from(format!("{}.agent.log", work_dir.display()));
        let child = ladder_command()
            .arg("agent")
            .args(["--coordinator", url, "--name", name])
            .args(["--slots", &slots.to_string()])
            .arg("--work-dir")
            .arg(work_dir)
            .arg("--code-dir")
            .arg(code_dir)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start agent {name}: {e}"));
        Agent {
            proc: Some(Proc {
                child,
                log: log.clone(),
            }),
            name: name.to_string(),
            log,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The agent's log file (its stderr).
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`, `SIGCONT`, `SIGTERM`) to the agent process
    /// alone, not to the runs it started.
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            send_signal(pid, signal);
        }
    }

    /// The process ids of the runs the agent started (its direct children).
    pub fn run_pids(&self) -> Vec<u32> {
        self.pid().map(children_of).unwrap_or_default()
    }

    /// Waits up to `timeout` for the agent process to exit by itself; returns its exit
    /// status, or `None` if it is still running (it is left running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let proc = self.proc.as_mut()?;
            match proc.child.try_wait() {
                Ok(Some(status)) => {
                    self.proc = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() >= deadline => return None,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("cannot wait for agent {}: {e}", self.name),
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.child.id())
    }

    /// SIGKILLs the agent alone; the runs it started (each in its own process group)
    /// survive as orphans, as they would if only the daemon crashed.
    pub fn kill9(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill9();
        }
    }

    /// SIGKILLs the agent, then the process groups of the runs it had started, as if
    /// the whole machine went away. The agent dies first, so it cannot report the runs'
    /// deaths.
    pub fn kill9_with_runs(&mut self) {
        let Some(mut proc) = self.proc.take() else {
            return;
        };
        let runs = children_of(proc.child.id());
        proc.kill9();
        for run in runs {
            signal_group(run, libc::SIGKILL);
            send_signal(run, libc::SIGKILL);
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9_with_runs();
        if std::thread::panicking() {
            print_log_tail(&format!("agent {}", self.name), &self.log);
        }
    }
}

/// A JSON value as `f64`, panicking with context otherwise.
pub fn as_f64(value: &Value, what: &str) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {value}"))
}

/// A JSON value as `&str`, panicking with context otherwise.
pub fn as_str<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value}"))
}

/// `RUN_ID -> how many lines` of a completions file, in which each run appends
/// `RUN_ID ATTEMPT` right before it exits 0. A missing file counts as empty.
pub fn completion_counts(path: &Path) -> std::collections::BTreeMap<String, usize> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut counts = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(run_id) = line.split_whitespace().next() {
            *counts.entry(run_id.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// A coordinator and its agents on loopback, started by [`Cluster::builder`]: the store
/// is in `DIR/data`, each agent works in `DIR/NAME` (or [`ClusterBuilder::agent_in`]'s
/// directory) with `DIR` (or [`ClusterBuilder::code_dir`]) as its code directory, and
/// [`ClusterBuilder::start`] returns once every agent is connected.
///
/// A test that needs the coordinator alone takes it out: `builder.start().coordinator`.
pub struct Cluster {
    /// Declared first, so dropped (killed) before the coordinator.
    pub agents: Vec<Agent>,
    pub coordinator: Coordinator,
}

/// What [`Cluster::builder`] starts.
pub struct ClusterBuilder {
    dir: PathBuf,
    code_dir: PathBuf,
    coordinator_args: Vec<String>,
    admin_token: Option<String>,
    agents: Vec<AgentSpec>,
}

/// One agent a [`ClusterBuilder`] starts.
struct AgentSpec {
    name: String,
    slots: u32,
    /// `DIR/NAME` unless set.
    work_dir: Option<PathBuf>,
    args: Vec<String>,
}

impl Cluster {
    pub fn builder(dir: &Path) -> ClusterBuilder {
        ClusterBuilder {
            dir: dir.to_path_buf(),
            code_dir: dir.to_path_buf(),
            coordinator_args: Vec::new(),
            admin_token: None,
            agents: Vec::new(),
        }
    }

    pub fn url(&self) -> String {
        self.coordinator.url()
    }

    /// The agent named `name` (see [`Cluster::take_agent`] to drive one).
    pub fn agent(&self, name: &str) -> &Agent {
        self.agents
            .iter()
            .find(|agent| agent.name() == name)
            .unwrap_or_else(|| panic!("the cluster has no agent {name}"))
    }

    /// Takes the agent named `name` out of the cluster, for a test that drives it
    /// (signals, kills, waits for its exit) while it talks to the coordinator. Bind it
    /// after the cluster, so that it is still dropped before the coordinator.
    pub fn take_agent(&mut self, name: &str) -> Agent {
        let index = self
            .agents
            .iter()
            .position(|agent| agent.name() == name)
            .unwrap_or_else(|| panic!("the cluster has no agent {name}"));
        self.agents.remove(index)
    }
}

impl ClusterBuilder {
    /// Arguments of `ladder coordinator` (e.g. `--lease-timeout 10`).
    pub fn coordinator_args(mut self, args: &[&str]) -> Self {
        self.coordinator_args
            .extend(args.iter().map(|arg| arg.to_string()));
        self
    }

    /// The lease timeout and heartbeat interval, in seconds, most tests shorten.
    pub fn leases(self, lease_timeout_s: &str, heartbeat_interval_s: &str) -> Self {
        self.coordinator_args(&[
            "--lease-timeout",
            lease_timeout_s,
            "--heartbeat-interval",
            heartbeat_interval_s,
        ])
    }

    /// For a coordinator started with `--auth FILE` (see
    /// [`ClusterBuilder::coordinator_args`]): the admin token with which [`Self::start`]
    /// lists the agents it waits for. The agents need a token of their own, passed as
    /// `--token` to [`ClusterBuilder::agent_with`].
    pub fn admin_token(mut self, token: &str) -> Self {
        self.admin_token = Some(token.to_string());
        self
    }

    /// Where the agents find the sweeps' code (`DIR` unless set).
    pub fn code_dir(mut self, code_dir: &Path) -> Self {
        self.code_dir = code_dir.to_path_buf();
        self
    }

    /// An agent `name` with `slots` slots, working in `DIR/NAME`.
    pub fn agent(self, name: &str, slots: u32) -> Self {
        self.agent_with(name, slots, &[])
    }

    /// Like [`ClusterBuilder::agent`], with extra arguments of `ladder agent`.
    pub fn agent_with(mut self, name: &str, slots: u32, args: &[&str]) -> Self {
        self.agents.push(AgentSpec {
            name: name.to_string(),
            slots,
            work_dir: None,
            args: args.iter().map(|arg| arg.to_string()).collect(),
        });
        self
    }

    /// Like [`ClusterBuilder::agent`], working in `work_dir` instead of `DIR/NAME`.
    pub fn agent_in(mut self, name: &str, slots: u32, work_dir: &Path) -> Self {
        self.agents.push(AgentSpec {
            name: name.to_string(),
            slots,
            work_dir: Some(work_dir.to_path_buf()),
            args: Vec::new(),
        });
        self
    }

    /// Starts the coordinator and the agents; returns once every agent is connected.
    pub fn start(self) -> Cluster {
        let args: Vec<&str> = self.coordinator_args.iter().map(String::as_str).collect();
        let coordinator = Coordinator::start(&self.dir.join("data"), &args);
        let url = coordinator.url();
        let agents: Vec<Agent> = self
            .agents
            .iter()
            .map(|spec| {
                let work_dir = spec
                    .work_dir
                    .clone()
                    .unwrap_or_else(|| self.dir.join(&spec.name));
                let extra: Vec<&str> = spec.args.iter().map(String::as_str).collect();
                Agent::start_with(
                    &url,
                    &spec.name,
                    spec.slots,
                    &work_dir,
                    &self.code_dir,
                    &extra,
                )
            })
            .collect();
        let names: Vec<&str> = agents.iter().map(Agent::name).collect();
        coordinator.wait_for_agents_as(
            &names,
            self.admin_token.as_deref(),
            Duration::from_secs(60),
        );
        Cluster {
            agents,
            coordinator,
        }
    }
}
