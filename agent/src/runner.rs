//! Executes one attempt of a run as a subprocess and turns what it does into
//! [`RunnerEvent`]s: started, output (metric points from `@ladder {...}` lines, the run's
//! info from `@ladder.info {...}` lines, and log lines), finished.
//!
//! The command is an argv list executed directly (never through a shell), in its own
//! process group so that stopping a run also stops whatever it spawned.
//!
//! A run may have several ranks (`resources.launch: per_gpu`): one process per rank,
//! each in its own group, their log lines prefixed `[rank i] `. Rank 0's `@ladder` lines
//! are the run's metrics. The run fails as soon as one rank fails; the other ranks then
//! get SIGTERM, and SIGKILL after the stop grace.
//!
//! Rank 0's `@ladder.info` lines are the run's info (see
//! [`ladder_metrics::line`]): merged in the order printed, a later line overriding
//! the keys it repeats, and sent with the next output batch.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use ladder_metrics::line::{parse_artifact_line, parse_info_line, parse_metric_line_detailed};
use ladder_protocol::wire::{log_line_encoded_len, point_encoded_len};
use ladder_protocol::{Finish, FinishOutcome, LogLine, MetricPoint, RunEvent};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Output is sent at least this often while a run prints.
const OUTPUT_FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// ... or as soon as this many entries are waiting (or
/// [`ladder_limits::MAX_OUTPUT_BATCH_BYTES`] of them).
const OUTPUT_FLUSH_LINES: usize = 512;
/// How long the end of a run killed by a termination signal that ladder did not send
/// waits for a drain of the agent before the run is reported: a supervisor stopping the
/// node (Slurm's `scancel`, systemd) sends SIGTERM to the runs and to the agent at the
/// same moment, and such a run is handed back, not failed.
const EXTERNAL_TERMINATION_SETTLE: Duration = Duration::from_secs(1);
/// Marker ending a log line that was cut.
pub const TRUNCATION_MARKER: &str = " [line truncated by ladder]";

/// What the agent asks of a running attempt.
#[derive(Debug, Clone, Copy)]
pub enum Control {
    /// SIGTERM, then SIGKILL after the grace period; ends as `stopped`.
    Stop,
    /// SIGKILL now (the attempt's lease is gone).
    Kill,
    /// The agent is draining: SIGTERM (so the run can checkpoint), SIGKILL after the
    /// grace period; ends as `released`, to be requeued elsewhere.
    Release,
}

/// Everything needed to execute one attempt.
#[derive(Debug, Clone)]
pub struct Execution {
    /// The agent's name (for `ladder bench dispatch`'s timeline).
    pub agent: String,
    pub run_id: String,
    pub attempt: u32,
    pub argv: Vec<String>,
    /// Variables every process of the attempt gets.
    pub env: BTreeMap<String, String>,
    /// One process per entry, rank 0 first, with these variables on top of `env` (see
    /// [`crate::launch::rank_environments`]). Empty means one process.
    pub ranks: Vec<BTreeMap<String, String>>,
    pub run_dir: PathBuf,
    pub stop_grace: Duration,
    /// Output reported and not yet acknowledged, shared with the agent.
    pub backlog: std::sync::Arc<Backlog>,
    /// Time between SIGTERM and SIGKILL when the agent drains (at most `stop_grace`, less
    /// when the agent's supervisor kills it sooner).
    pub release_grace: Duration,
    /// The attempt's log file is rotated past this size: `attempt-N.log` becomes
    /// `attempt-N.log.1` (replacing an older one), so it never takes more than twice this.
    pub log_file_max_bytes: u64,
    /// Tracks every process of the attempt (None: its process groups only).
    pub containment: Option<std::sync::Arc<crate::contain::Containment>>,
    /// Where and what to upload when the command ends (None: no artifact upload, e.g.
    /// the agent has no secret yet).
    pub artifacts: Option<crate::artifacts::AttemptArtifacts>,
}

/// What an attempt reports to its agent: the protocol's event, and for output the
/// encoded size of its entries (at most [`ladder_limits::MAX_OUTPUT_BATCH_BYTES`]).
#[derive(Debug)]
pub struct RunnerEvent {
    pub run_id: String,
    pub attempt: u32,
    pub event: RunEvent,
    pub bytes: usize,
}

use ladder_types::now_ms;

/// A piece of a run's output cut at newlines.
#[derive(Debug)]
struct SplitLine {
    /// The line, with its newline if it had one and was not cut.
    bytes: Vec<u8>,
    /// The line was longer than the limit: `bytes` holds its first bytes, and the rest
    /// (to the next newline) was skipped.
    truncated: bool,
}

/// Cuts a byte stream into lines while holding at most `max_line_bytes` of an unfinished
/// line: a longer line is emitted cut as soon as it reaches the limit, and what follows it
/// up to the next newline is skipped without being kept.
struct LineSplitter {
    max_line_bytes: usize,
    current: Vec<u8>,
    /// Within the rest of a line already emitted cut.
    skipping: bool,
}

impl LineSplitter {
    fn new(max_line_bytes: usize) -> LineSplitter {
        LineSplitter {
            max_line_bytes,
            current: Vec::new(),
            skipping: false,
        }
    }

    /// Bytes of an unfinished line held.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.current.len()
    }

    /// Takes the next bytes of the stream; appends the lines they complete to `lines`.
    fn push(&mut self, mut data: &[u8], lines: &mut Vec<SplitLine>) {
        while !data.is_empty() {
            let newline = data.iter().position(|b| *b == b'\n');
            let end = newline.map_or(data.len(), |i| i + 1);
            let (piece, rest) = data.split_at(end);
            data = rest;
            if self.skipping {
                if newline.is_some() {
                    self.skipping = false;
                }
                continue;
            }
            let room = self.max_line_bytes - self.current.len();
            // The newline itself does not count against the limit.
            let content = piece.len() - usize::from(newline.is_some());
            if content <= room {
                self.current.extend_from_slice(piece);
                if newline.is_some() {
                    lines.push(SplitLine {
                        bytes: std::mem::take(&mut self.current),
                        truncated: false,
                    });
                }
                continue;
            }
            self.current.extend_from_slice(&piece[..room]);
            lines.push(SplitLine {
                bytes: std::mem::take(&mut self.current),
                truncated: true,
            });
            self.skipping = newline.is_none();
        }
    }

    /// The unfinished last line at the end of the stream, if any.
    fn finish(&mut self) -> Option<SplitLine> {
        if self.current.is_empty() {
            return None;
        }
        Some(SplitLine {
            bytes: std::mem::take(&mut self.current),
            truncated: false,
        })
    }
}

/// Bytes read from a run's pipe at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A line of a run's output and the stream it came on.
struct Line {
    stderr: bool,
    split: SplitLine,
}

/// A line and the rank whose process printed it.
type RankLine = (usize, Line);

/// Reads one pipe of a rank in chunks and sends its lines, never holding more than
/// [`ladder_limits::MAX_LINE_BYTES`] of an unfinished line (see [`LineSplitter`]).
async fn read_lines(
    mut reader: impl AsyncRead + Unpin,
    rank: usize,
    stderr: bool,
    lines: mpsc::Sender<RankLine>,
) {
    let mut splitter = LineSplitter::new(ladder_limits::MAX_LINE_BYTES);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut complete = Vec::new();
    loop {
        let read = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        splitter.push(&chunk[..read], &mut complete);
        for split in complete.drain(..) {
            if lines.send((rank, Line { stderr, split })).await.is_err() {
                return;
            }
        }
    }
    if let Some(split) = splitter.finish() {
        let _ = lines.send((rank, Line { stderr, split })).await;
    }
}

/// Bytes of an attempt's output reported to the agent and not yet acknowledged by the
/// coordinator. The runner adds what it sends; the agent releases what is acknowledged.
/// Past [`ladder_limits::MAX_UNACKED_BYTES_PER_ATTEMPT`] the runner stops reading the run's
/// output (the run blocks on its pipe) until acknowledgements arrive.
#[derive(Debug, Default)]
pub struct Backlog {
    bytes: std::sync::atomic::AtomicUsize,
    released: tokio::sync::Notify,
}

impl Backlog {
    fn add(&self, bytes: usize) {
        self.bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::SeqCst);
    }

    /// Releases `bytes` acknowledged by the coordinator.
    pub fn release(&self, bytes: usize) {
        let _ = self.bytes.fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |held| Some(held.saturating_sub(bytes)),
        );
        self.released.notify_one();
    }

    fn full(&self) -> bool {
        self.bytes.load(std::sync::atomic::Ordering::SeqCst)
            >= ladder_limits::MAX_UNACKED_BYTES_PER_ATTEMPT
    }
}

/// Sends an attempt's events to the agent.
#[derive(Clone)]
struct Emitter {
    events: mpsc::UnboundedSender<RunnerEvent>,
    backlog: std::sync::Arc<Backlog>,
    run_id: String,
    attempt: u32,
}

impl Emitter {
    fn emit(&self, event: RunEvent, bytes: usize) {
        let _ = self.events.send(RunnerEvent {
            run_id: self.run_id.clone(),
            attempt: self.attempt,
            event,
            bytes,
        });
    }
}

/// Bytes an entry of `len` encoded bytes takes in a repeated field or a map of a
/// message: its tag, its length and itself.
fn framed_len(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// Cuts `text` so that a log line holding it is at most `max_bytes` long encoded, ending
/// it in [`TRUNCATION_MARKER`]; returns whether it was cut.
fn fit_log_line(line: &mut LogLine, max_bytes: usize) -> bool {
    let size = framed_len(log_line_encoded_len(line));
    if size <= max_bytes {
        return false;
    }
    let excess = size - max_bytes + TRUNCATION_MARKER.len() + 16;
    let mut keep = line.text.len().saturating_sub(excess);
    while !line.text.is_char_boundary(keep) {
        keep -= 1;
    }
    line.text.truncate(keep);
    line.text.push_str(TRUNCATION_MARKER);
    debug_assert!(framed_len(log_line_encoded_len(line)) <= max_bytes);
    true
}

/// Output read from the process and not yet sent: one batch, at most
/// [`ladder_limits::MAX_OUTPUT_BATCH_BYTES`] encoded, sent when full.
struct OutputBuffer {
    emitter: Emitter,
    /// Paths the run reported with `@ladder.artifact` lines, each once, at most
    /// [`ladder_limits::MAX_ARTIFACTS_PER_RUN`].
    artifacts: Vec<String>,
    metrics: Vec<MetricPoint>,
    logs: Vec<LogLine>,
    info: BTreeMap<String, String>,
    /// Encoded size of `metrics`, `logs` and `info`.
    pending_bytes: usize,
    /// Largest batch sent (the limit, lowered by tests).
    max_batch_bytes: usize,
    /// Reasons for skipped entries already noted in the log.
    noted_skips: std::collections::HashSet<String>,
    /// Log lines forwarded to the coordinator, and their bytes of text.
    forwarded: u64,
    forwarded_bytes: u64,
    cap_reported: bool,
    log_file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    log_path: PathBuf,
    /// Bytes in the current log file, its size limit, and how often it was rotated.
    log_bytes: u64,
    log_file_max_bytes: u64,
    rotations: u64,
    /// Prefix lines with `[rank i] ` (the run has several ranks).
    prefix_ranks: bool,
}

impl OutputBuffer {
    fn new(
        emitter: Emitter,
        log_file: Option<tokio::io::BufWriter<tokio::fs::File>>,
        log_path: PathBuf,
        log_file_max_bytes: u64,
        prefix_ranks: bool,
    ) -> OutputBuffer {
        OutputBuffer {
            emitter,
            metrics: Vec::new(),
            logs: Vec::new(),
            artifacts: Vec::new(),
            info: BTreeMap::new(),
            pending_bytes: 0,
            max_batch_bytes: ladder_limits::MAX_OUTPUT_BATCH_BYTES,
            noted_skips: Default::default(),
            forwarded: 0,
            forwarded_bytes: 0,
            cap_reported: false,
            log_file,
            log_path,
            log_bytes: 0,
            log_file_max_bytes: log_file_max_bytes.max(1),
            rotations: 0,
            prefix_ranks,
        }
    }

    fn pending(&self) -> usize {
        self.metrics.len() + self.logs.len() + self.info.len()
    }

    /// Sends what is waiting, if anything.
    fn flush(&mut self) {
        if self.pending() == 0 {
            return;
        }
        let bytes = std::mem::take(&mut self.pending_bytes);
        self.emitter.backlog.add(bytes);
        self.emitter.emit(
            RunEvent::Output {
                metrics: std::mem::take(&mut self.metrics),
                logs: std::mem::take(&mut self.logs),
                info: std::mem::take(&mut self.info),
            },
            bytes,
        );
    }

    /// Makes room for an entry of `size` encoded bytes, sending the batch if it would
    /// not fit.
    fn reserve(&mut self, size: usize) {
        if self.pending_bytes + size > self.max_batch_bytes || self.pending() >= OUTPUT_FLUSH_LINES
        {
            self.flush();
        }
        self.pending_bytes += size;
    }

    /// Adds a log line to the batch; one too large for any batch is cut with a marker.
    fn push_log(&mut self, mut line: LogLine) {
        fit_log_line(&mut line, self.max_batch_bytes);
        self.reserve(framed_len(log_line_encoded_len(&line)));
        self.logs.push(line);
    }

    /// Adds a note of ladder's own to the run's log.
    fn note(&mut self, text: String) {
        self.push_log(LogLine {
            time_ms: now_ms(),
            stream: "ladder".into(),
            text,
        });
    }

    /// Adds a metric point to the batch; one too large for any batch is dropped with a
    /// note in the log.
    fn push_metric(&mut self, point: MetricPoint) {
        let size = framed_len(point_encoded_len(&point));
        if size > self.max_batch_bytes {
            let step = point.step.map_or("-".to_string(), |s| s.to_string());
            self.note(format!(
                "metric point at step {step} dropped: {size} bytes encoded, more than one batch of {} bytes",
                self.max_batch_bytes
            ));
            return;
        }
        self.reserve(size);
        self.metrics.push(point);
    }

    /// Adds `@ladder.info` entries to the batch (later values replace earlier ones).
    fn push_info(&mut self, values: impl IntoIterator<Item = (String, String)>) {
        for (name, value) in values {
            // A map entry: the key and the value each framed, the entry framed again.
            let size = framed_len(framed_len(name.len()) + framed_len(value.len()));
            self.reserve(size);
            self.info.insert(name, value);
        }
    }

    /// Notes in the run's log the entries a valid `@ladder` / `@ladder.info` line had to
    /// skip, each reason once per attempt (a program that prints a string next to its
    /// metrics at every step gets one note, not one per step).
    fn note_skipped(&mut self, kind: &str, skipped: &[String], time_ms: i64) {
        let fresh: Vec<&str> = skipped
            .iter()
            .filter(|reason| self.noted_skips.insert((*reason).clone()))
            .map(String::as_str)
            .collect();
        if fresh.is_empty() {
            return;
        }
        let text = format!("skipped in {kind} line (noted once): {}", fresh.join("; "));
        self.push_log(LogLine {
            time_ms,
            stream: "ladder".into(),
            text,
        });
    }

    /// Moves the full log file to `.1` and starts a new one, noting it in the run's log.
    async fn rotate_log_file(&mut self) {
        if let Some(mut file) = self.log_file.take() {
            let _ = file.flush().await;
        }
        let mut rotated = self.log_path.clone().into_os_string();
        rotated.push(".1");
        let rotated = PathBuf::from(rotated);
        let reopened = match tokio::fs::rename(&self.log_path, &rotated).await {
            Ok(()) => tokio::fs::File::create(&self.log_path).await,
            Err(error) => Err(error),
        };
        self.rotations += 1;
        self.log_bytes = 0;
        let text = match reopened {
            Ok(file) => {
                self.log_file = Some(tokio::io::BufWriter::new(file));
                format!(
                    "log file reached {} bytes and was rotated (rotation {}): the previous part is {}; older parts are deleted",
                    self.log_file_max_bytes,
                    self.rotations,
                    rotated.display()
                )
            }
            Err(error) => format!(
                "cannot rotate the log file {}: {error}; the rest of this attempt's log is only on the coordinator",
                self.log_path.display()
            ),
        };
        self.note(text);
    }

    /// Writes the line to the attempt's log file, then keeps it as a metric point
    /// (`@ladder {...}` on rank 0's stdout), as info (`@ladder.info {...}` there) or as a
    /// log line. A malformed metric or info line is kept as a log line after a warning.
    async fn absorb(&mut self, (rank, line): RankLine) {
        let stream = if line.stderr { "stderr" } else { "stdout" };
        let mut bytes = line.split.bytes;
        if line.split.truncated {
            bytes.extend_from_slice(TRUNCATION_MARKER.as_bytes());
            bytes.push(b'\n');
        }
        let prefix = if self.prefix_ranks {
            format!("[rank {rank}] ")
        } else {
            String::new()
        };
        if !prefix.is_empty() {
            let mut prefixed = prefix.clone().into_bytes();
            prefixed.extend_from_slice(&bytes);
            bytes = prefixed;
        }
        if self.log_file.is_some()
            && self.log_bytes > 0
            && self.log_bytes + bytes.len() as u64 > self.log_file_max_bytes
        {
            self.rotate_log_file().await;
        }
        self.log_bytes += bytes.len() as u64;
        if let Some(file) = self.log_file.as_mut() {
            if let Err(error) = file.write_all(&bytes).await {
                // A full disk must not cut the log file short without a word: say so once
                // in the log the coordinator keeps, and stop writing the file.
                warn!(path = %self.log_path.display(), %error, "cannot write the run's log file");
                self.log_file = None;
                self.note(format!(
                    "cannot write the log file {}: {error}; the rest of this attempt's log is only on the coordinator",
                    self.log_path.display()
                ));
            }
        }
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let time_ms = now_ms();
        // A malformed `@ladder` line is kept as a log line, followed by ladder's note
        // saying why it was not taken, so the log reads in order.
        let mut rejected = None;
        if stream == "stdout" && rank == 0 {
            let unprefixed = text.strip_prefix(prefix.as_str()).unwrap_or(&text);
            match parse_artifact_line(unprefixed) {
                Some(Ok(path)) => {
                    if self.artifacts.len() < ladder_limits::MAX_ARTIFACTS_PER_RUN
                        && !self.artifacts.contains(&path)
                    {
                        self.artifacts.push(path);
                    }
                    return;
                }
                Some(Err(error)) => rejected = Some(format!("ignored artifact line: {error}")),
                None => {}
            }
            match parse_info_line(unprefixed) {
                Some(Ok(parsed)) => {
                    self.note_skipped("info", &parsed.skipped, time_ms);
                    self.push_info(parsed.values);
                    return;
                }
                Some(Err(error)) => rejected = Some(format!("ignored info line: {error}")),
                None => {}
            }
            match parse_metric_line_detailed(unprefixed) {
                Some(Ok(parsed)) => {
                    self.note_skipped("metric", &parsed.skipped, time_ms);
                    let point = parsed.point;
                    self.push_metric(MetricPoint {
                        step: point.step,
                        values: point.values,
                        time_ms,
                    });
                    return;
                }
                Some(Err(error)) => rejected = Some(format!("ignored metric line: {error}")),
                None => {}
            }
        }
        if self.forwarded < ladder_limits::MAX_ATTEMPT_LOG_LINES
            && self.forwarded_bytes + text.len() as u64 <= ladder_limits::MAX_ATTEMPT_LOG_BYTES
        {
            self.forwarded += 1;
            self.forwarded_bytes += text.len() as u64;
            self.push_log(LogLine {
                time_ms,
                stream: stream.into(),
                text,
            });
        } else if !self.cap_reported {
            self.cap_reported = true;
            self.note(format!(
                "log cap of {} lines or {} bytes reached; the rest is only in {}",
                ladder_limits::MAX_ATTEMPT_LOG_LINES,
                ladder_limits::MAX_ATTEMPT_LOG_BYTES,
                self.log_path.display()
            ));
        }
        if let Some(text) = rejected {
            self.push_log(LogLine {
                time_ms,
                stream: "ladder".into(),
                text,
            });
        }
    }
}

fn describe_signal(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGINT => "SIGINT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGHUP => "SIGHUP",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

fn signal_group(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals the process group we created.
    unsafe {
        libc::kill(-(pid as i32), signal);
    }
}

/// Executes the attempt to its end, reporting on `events`, obeying `control`.
pub async fn execute(
    execution: Execution,
    events: mpsc::UnboundedSender<RunnerEvent>,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let emit = |event: RunEvent| {
        let _ = events.send(RunnerEvent {
            run_id: execution.run_id.clone(),
            attempt: execution.attempt,
            event,
            bytes: 0,
        });
    };
    let finish_failed = |reason: String| {
        RunEvent::Finished(Finish {
            outcome: FinishOutcome::Failed,
            exit_code: None,
            signal: None,
            reason,
        })
    };
    let log_path = execution
        .run_dir
        .join(format!("attempt-{}.log", execution.attempt));
    // The run directory and its log file in one trip to the blocking pool: a queued run
    // starts the moment a slot frees, and each trip is a thread hand-off.
    let prepared = {
        let (run_dir, log_path) = (execution.run_dir.clone(), log_path.clone());
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&run_dir)?;
            Ok::<_, std::io::Error>(std::fs::File::create(&log_path))
        })
        .await
    };
    let log_file = match prepared {
        Ok(Ok(Ok(file))) => Some(tokio::io::BufWriter::new(tokio::fs::File::from_std(file))),
        Ok(Ok(Err(error))) => {
            warn!(path = %log_path.display(), %error, "cannot write the run's log file");
            None
        }
        Ok(Err(error)) => {
            emit(finish_failed(format!(
                "cannot create run directory {}: {error}",
                execution.run_dir.display()
            )));
            return;
        }
        Err(error) => {
            emit(finish_failed(format!(
                "cannot create run directory {}: {error}",
                execution.run_dir.display()
            )));
            return;
        }
    };
    let Some(program) = execution.argv.first() else {
        emit(finish_failed("empty command".into()));
        return;
    };
    let rank_envs = if execution.ranks.is_empty() {
        vec![BTreeMap::new()]
    } else {
        execution.ranks.clone()
    };
    let rank_count = rank_envs.len();
    let scope = match execution
        .containment
        .as_ref()
        .map(|c| c.attempt(&execution.run_id, execution.attempt))
        .transpose()
    {
        Ok(scope) => scope,
        Err(error) => {
            emit(finish_failed(format!(
                "cannot set up the run's process tracking: {error}"
            )));
            return;
        }
    };
    let procs_fd = scope.as_ref().and_then(crate::contain::Scope::procs_fd);
    // At most this many lines wait between the pipes and the buffer (4 MiB at most).
    let (line_tx, mut line_rx) = mpsc::channel::<RankLine>(64);
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<(usize, std::io::Result<ExitStatus>)>();
    // Process (and process group) id of each rank.
    let mut pids: Vec<u32> = Vec::with_capacity(rank_count);
    for (rank, rank_env) in rank_envs.iter().enumerate() {
        let mut child = match spawn(&execution, rank_env, procs_fd) {
            Ok(child) => child,
            Err(error) => {
                for &pid in &pids {
                    signal_group(pid, libc::SIGKILL);
                }
                let which = if rank_count > 1 {
                    format!(" (rank {rank})")
                } else {
                    String::new()
                };
                emit(finish_failed(format!(
                    "cannot start {program:?}{which}: {error}"
                )));
                return;
            }
        };
        let child_pid = child.id();
        pids.push(child_pid);
        if rank == 0 {
            ladder_timeline::mark(
                ladder_timeline::Stage::Started,
                || ladder_timeline::attempt_key(&execution.run_id, execution.attempt),
                &execution.agent,
            );
        }
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(read_lines(stdout, rank, false, line_tx.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(read_lines(stderr, rank, true, line_tx.clone()));
        }
        let exit_tx = exit_tx.clone();
        let timeline_key = ladder_timeline::attempt_key(&execution.run_id, execution.attempt);
        let agent = execution.agent.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            if rank == 0 {
                ladder_timeline::mark(ladder_timeline::Stage::Exited, || timeline_key, &agent);
            }
            crate::contain::rank_reaped(child_pid);
            let _ = exit_tx.send((rank, status));
        });
    }
    drop(line_tx);
    drop(exit_tx);
    let pid = pids[0];
    emit(RunEvent::Started {
        pid,
        work_dir: execution.run_dir.display().to_string(),
    });
    debug!(run_id = %execution.run_id, pid, ranks = rank_count, "process started");

    let backlog = execution.backlog.clone();
    let emitter = Emitter {
        backlog: backlog.clone(),
        events: events.clone(),
        run_id: execution.run_id.clone(),
        attempt: execution.attempt,
    };
    let mut output = OutputBuffer::new(
        emitter,
        log_file,
        log_path,
        execution.log_file_max_bytes,
        rank_count > 1,
    );
    let signal_running = |exits: &[Option<std::io::Result<ExitStatus>>], signal: i32| {
        for (rank, &pid) in pids.iter().enumerate() {
            if exits[rank].is_none() {
                signal_group(pid, signal);
            }
        }
    };
    let mut flush_timer = tokio::time::interval(OUTPUT_FLUSH_INTERVAL);
    let mut stop_requested = false;
    let mut release_requested = false;
    let mut kill_deadline: Option<tokio::time::Instant> = None;
    let mut exits: Vec<Option<std::io::Result<ExitStatus>>> =
        (0..rank_count).map(|_| None).collect();
    let mut running = rank_count;
    // The first rank that failed on its own (not stopped by us), which fails the run.
    let mut first_failure: Option<usize> = None;
    let mut lines_open = true;
    let mut control_open = true;

    loop {
        if running == 0 && !lines_open {
            break;
        }
        tokio::select! {
            // Backpressure: no reading while too much output waits for acknowledgement.
            _ = backlog.released.notified(), if lines_open && backlog.full() => {}
            line = line_rx.recv(), if lines_open && !backlog.full() => {
                let Some(line) = line else { lines_open = false; continue };
                output.absorb(line).await;
            }
            exit = exit_rx.recv(), if running > 0 => {
                let Some((rank, status)) = exit else {
                    // Every waiter is gone without reporting: nothing more will come.
                    running = 0;
                    continue;
                };
                let failed = !matches!(&status, Ok(status) if status.success());
                exits[rank] = Some(status);
                running -= 1;
                if failed && first_failure.is_none() && !stop_requested && !release_requested {
                    first_failure = Some(rank);
                    if running > 0 {
                        debug!(run_id = %execution.run_id, rank, "rank failed; stopping the other ranks");
                        signal_running(&exits, libc::SIGTERM);
                        kill_deadline = Some(tokio::time::Instant::now() + execution.stop_grace);
                    }
                }
                if running > 0 {
                    continue;
                }
                kill_deadline = None;
                // Give the pipes a moment to drain; a grandchild may hold them open.
                let drain = tokio::time::sleep(Duration::from_secs(2));
                tokio::pin!(drain);
                while lines_open {
                    tokio::select! {
                        line = line_rx.recv() => match line {
                            Some(line) => output.absorb(line).await,
                            None => lines_open = false,
                        },
                        _ = &mut drain => lines_open = false,
                    }
                }
            }
            request = control.recv(), if control_open => match request {
                Some(Control::Stop) => {
                    if !stop_requested {
                        stop_requested = true;
                        signal_running(&exits, libc::SIGTERM);
                        kill_deadline = Some(tokio::time::Instant::now() + execution.stop_grace);
                    }
                }
                Some(Control::Kill) => {
                    stop_requested = true;
                    signal_running(&exits, libc::SIGKILL);
                }
                Some(Control::Release) => {
                    if !release_requested {
                        release_requested = true;
                        signal_running(&exits, libc::SIGTERM);
                        kill_deadline = Some(tokio::time::Instant::now() + execution.release_grace);
                    }
                }
                None => control_open = false,
            },
            _ = async { tokio::time::sleep_until(kill_deadline.expect("guarded")).await }, if kill_deadline.is_some() => {
                signal_running(&exits, libc::SIGKILL);
                kill_deadline = None;
            }
            _ = flush_timer.tick() => {
                output.flush();
            }
        }
    }
    // Whatever the processes left behind in their groups goes with them.
    for &pid in &pids {
        signal_group(pid, libc::SIGKILL);
    }
    // And so does every process that left the groups (setsid, daemons), before the
    // slot is free again.
    if let Some(scope) = &scope {
        let left = scope.kill_all(&pids).await;
        if left > 0 {
            output.note(format!(
                "killed {left} process(es) the run left behind when it ended"
            ));
        }
    }
    if let Some(file) = output.log_file.as_mut() {
        if let Err(error) = file.flush().await {
            let text = format!(
                "cannot write the log file {}: {error}; the end of this attempt's log is only on the coordinator",
                output.log_path.display()
            );
            output.note(text);
        }
    }
    output.flush();
    // A run that died of SIGTERM, SIGINT or SIGHUP from someone else may have died with
    // its agent's drain: wait briefly for the agent's word, then take every request that
    // came in with the run's end into account.
    let externally_terminated = first_failure.is_some_and(|rank| {
        matches!(&exits[rank], Some(Ok(status))
            if matches!(status.signal(), Some(libc::SIGTERM | libc::SIGINT | libc::SIGHUP)))
    });
    if externally_terminated && !stop_requested && !release_requested && control_open {
        if let Ok(Some(request)) =
            tokio::time::timeout(EXTERNAL_TERMINATION_SETTLE, control.recv()).await
        {
            apply_late_request(request, &mut stop_requested, &mut release_requested);
        }
    }
    while let Ok(request) = control.try_recv() {
        apply_late_request(request, &mut stop_requested, &mut release_requested);
    }
    let finished = outcome(
        &exits,
        first_failure,
        stop_requested,
        release_requested,
        rank_count > 1,
    );
    // Artifacts go up before the end is reported, so that a completed run has its files
    // recorded; a run handed back to be requeued uploads nothing.
    if let Some(artifacts) = &execution.artifacts {
        if finished.outcome != FinishOutcome::Released {
            let notes =
                crate::artifacts::upload_attempt(artifacts, &execution.run_dir, &output.artifacts)
                    .await;
            for note in notes {
                output.note(note);
            }
            output.flush();
        }
    }
    emit(RunEvent::Finished(finished));
}

/// Notes a request that arrived after every rank had ended: it decides the outcome.
fn apply_late_request(request: Control, stop_requested: &mut bool, release_requested: &mut bool) {
    match request {
        Control::Stop | Control::Kill => *stop_requested = true,
        Control::Release => *release_requested = true,
    }
}

/// Starts the process of one rank: its own process group, dying with the agent, inside
/// the attempt's cgroup when there is one (see [`crate::spawn`]).
fn spawn(
    execution: &Execution,
    rank_env: &BTreeMap<String, String>,
    cgroup_procs: Option<std::os::fd::RawFd>,
) -> std::io::Result<crate::spawn::RankProcess> {
    let request = crate::spawn::SpawnRequest {
        argv: &execution.argv,
        env: &[&execution.env, rank_env],
        cwd: &execution.run_dir,
        cgroup_procs,
    };
    crate::contain::spawn_rank(|| {
        let process = crate::spawn::spawn(&request)?;
        let pid = process.id();
        Ok((process, Some(pid)))
    })
}

/// How an exit status reads in a finished run's reason: "exit code 1".
fn describe_exit(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit code {code}")
    } else if let Some(signal) = status.signal() {
        format!("killed by signal {signal} ({})", describe_signal(signal))
    } else {
        "ended without an exit status".to_string()
    }
}

/// The attempt's end, from every rank's exit. `first_failure` is the rank whose own
/// failure ended the run (the others were then stopped), if any.
fn outcome(
    exits: &[Option<std::io::Result<ExitStatus>>],
    first_failure: Option<usize>,
    stop_requested: bool,
    release_requested: bool,
    several_ranks: bool,
) -> Finish {
    // The rank whose status the run reports: the failed one, else rank 0.
    let reported = first_failure.unwrap_or(0);
    let status = match &exits[reported] {
        Some(Ok(status)) => *status,
        Some(Err(error)) => {
            return Finish {
                outcome: FinishOutcome::Failed,
                exit_code: None,
                signal: None,
                reason: format!("cannot wait for the process: {error}"),
            }
        }
        None => {
            return Finish {
                outcome: FinishOutcome::Failed,
                exit_code: None,
                signal: None,
                reason: "ended without an exit status".to_string(),
            }
        }
    };
    let exit_code = status.code();
    let signal = status.signal();
    let (outcome, reason) = if release_requested && !stop_requested {
        (
            FinishOutcome::Released,
            "released: the agent is draining".to_string(),
        )
    } else if stop_requested {
        (FinishOutcome::Stopped, "stopped on request".to_string())
    } else if let Some(rank) = first_failure {
        let reason = if several_ranks {
            format!(
                "rank {rank} failed: {}; the other ranks were stopped",
                describe_exit(&status)
            )
        } else {
            describe_exit(&status)
        };
        (FinishOutcome::Failed, reason)
    } else {
        (FinishOutcome::Completed, "exit code 0".to_string())
    };
    Finish {
        outcome,
        exit_code,
        signal,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ladder_proto::v1 as pb;
    use proptest::prelude::*;
    use prost::Message;

    /// An output buffer without a log file whose batches go to the returned receiver.
    fn buffer(max_batch_bytes: usize) -> (OutputBuffer, mpsc::UnboundedReceiver<RunnerEvent>) {
        let (events, received) = mpsc::unbounded_channel();
        let emitter = Emitter {
            backlog: Default::default(),
            events,
            run_id: "r".into(),
            attempt: 1,
        };
        let mut output = OutputBuffer::new(
            emitter,
            None,
            PathBuf::from("attempt-1.log"),
            1 << 20,
            false,
        );
        output.max_batch_bytes = max_batch_bytes;
        (output, received)
    }

    #[tokio::test]
    async fn a_full_backlog_stops_reading_until_acknowledgements_release_it() {
        let backlog = Backlog::default();
        backlog.add(ladder_limits::MAX_UNACKED_BYTES_PER_ATTEMPT);
        assert!(backlog.full());
        backlog.release(1);
        assert!(!backlog.full());
        // The release left a wake-up for the reader that was waiting.
        tokio::time::timeout(Duration::from_secs(10), backlog.released.notified())
            .await
            .expect("woken");
        backlog.release(usize::MAX);
        assert_eq!(backlog.bytes.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn a_line_of_many_megabytes_without_newline_is_cut_holding_at_most_the_limit() {
        let max = ladder_limits::MAX_LINE_BYTES;
        let mut splitter = LineSplitter::new(max);
        let chunk = vec![b'x'; READ_CHUNK_BYTES];
        let mut lines = Vec::new();
        for _ in 0..(64 << 20) / READ_CHUNK_BYTES {
            splitter.push(&chunk, &mut lines);
            assert!(splitter.held() <= max, "{} bytes held", splitter.held());
            assert!(
                splitter.current.capacity() <= 2 * max,
                "{} bytes kept",
                splitter.current.capacity()
            );
        }
        splitter.push(b"end of the long line\nnext\n", &mut lines);
        assert!(splitter.finish().is_none());
        assert_eq!(lines.len(), 2);
        assert!(lines[0].truncated);
        assert_eq!(lines[0].bytes.len(), max);
        assert!(lines[0].bytes.iter().all(|b| *b == b'x'));
        assert!(!lines[1].truncated);
        assert_eq!(lines[1].bytes, b"next\n");
    }

    #[tokio::test]
    async fn the_reader_sends_a_huge_line_cut_and_the_lines_after_it_whole() {
        let mut input = vec![b'y'; 20 << 20];
        input.extend_from_slice(b"\nsecond\nlast without newline");
        let (sender, mut received) = mpsc::channel(4);
        let reader = tokio::spawn(read_lines(std::io::Cursor::new(input), 0, false, sender));
        let mut lines = Vec::new();
        while let Some((_, line)) = received.recv().await {
            lines.push(line.split);
        }
        reader.await.expect("reader");
        assert_eq!(lines.len(), 3);
        assert!(lines[0].truncated);
        assert_eq!(lines[0].bytes.len(), ladder_limits::MAX_LINE_BYTES);
        assert_eq!(lines[1].bytes, b"second\n");
        assert_eq!(lines[2].bytes, b"last without newline");
        assert!(!lines[2].truncated);
    }

    proptest! {
        /// Whatever the chunking, the splitter gives the lines of the input, each cut to
        /// the limit, and never holds more than the limit.
        #[test]
        fn lines_do_not_depend_on_how_the_output_is_chunked(
            input in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'a'), Just(b'b')], 0..400),
            chunk in 1usize..50,
            max in 1usize..20,
        ) {
            let mut splitter = LineSplitter::new(max);
            let mut lines = Vec::new();
            for piece in input.chunks(chunk) {
                splitter.push(piece, &mut lines);
                prop_assert!(splitter.held() <= max);
            }
            lines.extend(splitter.finish());
            let mut expected = Vec::new();
            for (i, line) in input.split(|b| *b == b'\n').enumerate() {
                let last = i == input.split(|b| *b == b'\n').count() - 1;
                if last && line.is_empty() {
                    break;
                }
                let truncated = line.len() > max;
                let mut bytes = line[..line.len().min(max)].to_vec();
                if !truncated && !last {
                    bytes.push(b'\n');
                }
                expected.push((bytes, truncated));
            }
            let got: Vec<(Vec<u8>, bool)> = lines.into_iter().map(|l| (l.bytes, l.truncated)).collect();
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn a_cut_log_line_fits_and_keeps_a_prefix(text in "\\PC{0,3000}", max in 64usize..2048) {
            let mut line = LogLine { time_ms: 1, stream: "stdout".into(), text: text.clone() };
            let cut = fit_log_line(&mut line, max);
            prop_assert!(framed_len(ladder_protocol::wire::log_to_pb(line.clone()).encoded_len()) <= max);
            if cut {
                let kept = line.text.strip_suffix(TRUNCATION_MARKER).expect("marker");
                prop_assert!(text.starts_with(kept));
            } else {
                prop_assert_eq!(line.text, text);
            }
        }

        #[test]
        fn batches_stay_within_their_byte_limit(
            entries in proptest::collection::vec((0u8..3, 0usize..5000), 1..200),
            max in 256usize..8192,
        ) {
            let (mut output, mut received) = buffer(max);
            for (kind, size) in entries {
                match kind {
                    0 => output.push_log(LogLine { time_ms: 1, stream: "stdout".into(), text: "l".repeat(size) }),
                    1 => output.push_metric(MetricPoint {
                        step: Some(1),
                        values: (0..size / 50).map(|i| (format!("m{i}"), 1.0)).collect(),
                        time_ms: 1,
                    }),
                    // Info entries are far below any batch (names of 256 bytes, values of 4 KiB).
                    _ => output.push_info([(format!("k{size}"), "v".repeat(size % 100))]),
                }
            }
            output.flush();
            while let Ok(event) = received.try_recv() {
                let bytes = event.bytes;
                let RunEvent::Output { metrics, logs, info } = event.event else {
                    panic!("not output");
                };
                let encoded = pb::RunOutput {
                    metrics: metrics.into_iter().map(ladder_protocol::wire::point_to_pb).collect(),
                    logs: logs.into_iter().map(ladder_protocol::wire::log_to_pb).collect(),
                    info: info.into_iter().collect(),
                }
                .encoded_len();
                prop_assert!(encoded <= max, "{} > {}", encoded, max);
                prop_assert!(bytes >= encoded, "{} < {}", bytes, encoded);
            }
        }
    }
}
