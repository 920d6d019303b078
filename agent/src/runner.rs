//! Executes one attempt of a run as a subprocess and turns what it does into
//! [`RunnerEvent`]s: started, output (metric points from `@ladder {...}` lines and log
//! lines), finished.
//!
//! The command is an argv list executed directly (never through a shell), in its own
//! process group so that stopping a run also stops whatever it spawned.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use ladder_proto::v1 as pb;
use ladder_shared::metric_line::parse_metric_line;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Longest log line kept; longer lines are cut and marked.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Most log lines of one attempt forwarded to the coordinator; the rest stay in the
/// attempt's log file in the run directory.
pub const MAX_FORWARDED_LOG_LINES: u64 = 1_000_000;
/// Output is sent at least this often while a run prints.
const OUTPUT_FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// ... or as soon as this many lines are waiting.
const OUTPUT_FLUSH_LINES: usize = 512;

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
    pub run_id: String,
    pub attempt: u32,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub run_dir: PathBuf,
    pub stop_grace: Duration,
    /// The attempt's log file is rotated past this size: `attempt-N.log` becomes
    /// `attempt-N.log.1` (replacing an older one), so it never takes more than twice this.
    pub log_file_max_bytes: u64,
}

#[derive(Debug)]
pub enum RunnerEventKind {
    Started {
        pid: u32,
        work_dir: String,
    },
    Output {
        metrics: Vec<pb::MetricPoint>,
        logs: Vec<pb::LogLine>,
    },
    Finished(pb::RunFinished),
}

#[derive(Debug)]
pub struct RunnerEvent {
    pub run_id: String,
    pub attempt: u32,
    pub kind: RunnerEventKind,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

enum Line {
    Out(Vec<u8>),
    Err(Vec<u8>),
}

async fn read_lines(reader: impl AsyncRead + Unpin, stderr: bool, lines: mpsc::Sender<Line>) {
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match reader.read_until(b'\n', &mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = std::mem::take(&mut buffer);
                let line = if stderr {
                    Line::Err(line)
                } else {
                    Line::Out(line)
                };
                if lines.send(line).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Output read from the process and not yet sent.
struct OutputBuffer {
    metrics: Vec<pb::MetricPoint>,
    logs: Vec<pb::LogLine>,
    forwarded: u64,
    cap_reported: bool,
    log_file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    log_path: PathBuf,
    /// Bytes in the current log file, its size limit, and how often it was rotated.
    log_bytes: u64,
    log_file_max_bytes: u64,
    rotations: u64,
}

impl OutputBuffer {
    fn pending(&self) -> usize {
        self.metrics.len() + self.logs.len()
    }

    fn take(&mut self) -> RunnerEventKind {
        RunnerEventKind::Output {
            metrics: std::mem::take(&mut self.metrics),
            logs: std::mem::take(&mut self.logs),
        }
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
        self.logs.push(pb::LogLine {
            time_ms: now_ms(),
            stream: "ladder".into(),
            text,
        });
    }

    /// Writes the line to the attempt's log file, then keeps it as a metric point
    /// (`@ladder {...}` on stdout) or as a log line.
    async fn absorb(&mut self, line: Line) {
        let (stream, mut bytes) = match line {
            Line::Out(bytes) => ("stdout", bytes),
            Line::Err(bytes) => ("stderr", bytes),
        };
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
                self.logs.push(pb::LogLine {
                    time_ms: now_ms(),
                    stream: "ladder".into(),
                    text: format!(
                        "cannot write the log file {}: {error}; the rest of this attempt's log is only on the coordinator",
                        self.log_path.display()
                    ),
                });
            }
        }
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        let truncated = bytes.len() > MAX_LINE_BYTES;
        bytes.truncate(MAX_LINE_BYTES);
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if truncated {
            text.push_str(" [line truncated by ladder]");
        }
        let time_ms = now_ms();
        if stream == "stdout" {
            match parse_metric_line(&text) {
                Some(Ok(point)) => {
                    self.metrics.push(pb::MetricPoint {
                        step: point.step,
                        values: point.values.into_iter().collect(),
                        time_ms,
                    });
                    return;
                }
                Some(Err(error)) => self.logs.push(pb::LogLine {
                    time_ms,
                    stream: "ladder".into(),
                    text: format!("ignored metric line: {error}"),
                }),
                None => {}
            }
        }
        if self.forwarded < MAX_FORWARDED_LOG_LINES {
            self.forwarded += 1;
            self.logs.push(pb::LogLine {
                time_ms,
                stream: stream.into(),
                text,
            });
        } else if !self.cap_reported {
            self.cap_reported = true;
            self.logs.push(pb::LogLine {
                time_ms,
                stream: "ladder".into(),
                text: format!(
                    "log cap of {MAX_FORWARDED_LOG_LINES} lines reached; the rest is only in {}",
                    self.log_path.display()
                ),
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
    let emit = |kind: RunnerEventKind| {
        let _ = events.send(RunnerEvent {
            run_id: execution.run_id.clone(),
            attempt: execution.attempt,
            kind,
        });
    };
    let finish_failed = |reason: String| {
        RunnerEventKind::Finished(pb::RunFinished {
            outcome: pb::RunOutcome::Failed as i32,
            exit_code: None,
            signal: None,
            reason,
        })
    };
    if let Err(error) = tokio::fs::create_dir_all(&execution.run_dir).await {
        emit(finish_failed(format!(
            "cannot create run directory {}: {error}",
            execution.run_dir.display()
        )));
        return;
    }
    let log_path = execution
        .run_dir
        .join(format!("attempt-{}.log", execution.attempt));
    let log_file = match tokio::fs::File::create(&log_path).await {
        Ok(file) => Some(tokio::io::BufWriter::new(file)),
        Err(error) => {
            warn!(path = %log_path.display(), %error, "cannot write the run's log file");
            None
        }
    };
    let Some(program) = execution.argv.first() else {
        emit(finish_failed("empty command".into()));
        return;
    };
    let mut command = Command::new(program);
    command
        .args(&execution.argv[1..])
        .current_dir(&execution.run_dir)
        .envs(&execution.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: prctl(2) is async-signal-safe; it only sets a flag of the child process.
    // The run dies with the agent (SIGKILL when the spawning thread's process goes away),
    // so a killed agent leaves no orphan that could finish a run a second time.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            emit(finish_failed(format!("cannot start {program:?}: {error}")));
            return;
        }
    };
    let pid = child.id().unwrap_or(0);
    emit(RunnerEventKind::Started {
        pid,
        work_dir: execution.run_dir.display().to_string(),
    });
    debug!(run_id = %execution.run_id, pid, "process started");

    let (line_tx, mut line_rx) = mpsc::channel::<Line>(1024);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(read_lines(stdout, false, line_tx.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(read_lines(stderr, true, line_tx.clone()));
    }
    drop(line_tx);

    let mut output = OutputBuffer {
        metrics: Vec::new(),
        logs: Vec::new(),
        forwarded: 0,
        cap_reported: false,
        log_file,
        log_path,
        log_bytes: 0,
        log_file_max_bytes: execution.log_file_max_bytes.max(1),
        rotations: 0,
    };
    let mut flush_timer = tokio::time::interval(OUTPUT_FLUSH_INTERVAL);
    let mut stop_requested = false;
    let mut release_requested = false;
    let mut kill_deadline: Option<tokio::time::Instant> = None;
    let mut exit_status = None;
    let mut lines_open = true;
    let mut control_open = true;

    loop {
        if exit_status.is_some() && !lines_open {
            break;
        }
        tokio::select! {
            line = line_rx.recv(), if lines_open => {
                let Some(line) = line else { lines_open = false; continue };
                output.absorb(line).await;
                if output.pending() >= OUTPUT_FLUSH_LINES {
                    emit(output.take());
                }
            }
            status = child.wait(), if exit_status.is_none() => {
                exit_status = Some(status);
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
                        signal_group(pid, libc::SIGTERM);
                        kill_deadline = Some(tokio::time::Instant::now() + execution.stop_grace);
                    }
                }
                Some(Control::Kill) => {
                    stop_requested = true;
                    signal_group(pid, libc::SIGKILL);
                }
                Some(Control::Release) => {
                    if !release_requested {
                        release_requested = true;
                        signal_group(pid, libc::SIGTERM);
                        kill_deadline = Some(tokio::time::Instant::now() + execution.stop_grace);
                    }
                }
                None => control_open = false,
            },
            _ = async { tokio::time::sleep_until(kill_deadline.expect("guarded")).await }, if kill_deadline.is_some() => {
                signal_group(pid, libc::SIGKILL);
                kill_deadline = None;
            }
            _ = flush_timer.tick() => {
                if output.pending() > 0 {
                    emit(output.take());
                }
            }
        }
    }
    // Whatever the process left behind in its group goes with it.
    signal_group(pid, libc::SIGKILL);
    if let Some(file) = output.log_file.as_mut() {
        if let Err(error) = file.flush().await {
            output.logs.push(pb::LogLine {
                time_ms: now_ms(),
                stream: "ladder".into(),
                text: format!(
                    "cannot write the log file {}: {error}; the end of this attempt's log is only on the coordinator",
                    output.log_path.display()
                ),
            });
        }
    }
    if output.pending() > 0 {
        emit(output.take());
    }
    let finished = match exit_status {
        Some(Ok(status)) => {
            let exit_code = status.code();
            let signal = status.signal();
            let (outcome, reason) = if release_requested && !stop_requested {
                (
                    pb::RunOutcome::Released,
                    "released: the agent is draining".to_string(),
                )
            } else if stop_requested {
                (pb::RunOutcome::Stopped, "stopped on request".to_string())
            } else if exit_code == Some(0) {
                (pb::RunOutcome::Completed, "exit code 0".to_string())
            } else if let Some(code) = exit_code {
                (pb::RunOutcome::Failed, format!("exit code {code}"))
            } else if let Some(signal) = signal {
                (
                    pb::RunOutcome::Failed,
                    format!("killed by signal {signal} ({})", describe_signal(signal)),
                )
            } else {
                (
                    pb::RunOutcome::Failed,
                    "ended without an exit status".to_string(),
                )
            };
            pb::RunFinished {
                outcome: outcome as i32,
                exit_code,
                signal,
                reason,
            }
        }
        Some(Err(error)) => pb::RunFinished {
            outcome: pb::RunOutcome::Failed as i32,
            exit_code: None,
            signal: None,
            reason: format!("cannot wait for the process: {error}"),
        },
        None => unreachable!("loop ends only after exit"),
    };
    emit(RunnerEventKind::Finished(finished));
}
