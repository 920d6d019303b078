//! Domain types shared by the coordinator, the agent and the CLI.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Lifecycle of a run.
///
/// `Queued -> Running -> {Completed, Failed, Stopped, Cancelled}`; a `Running` run whose
/// agent is lost goes back to `Queued` as a new attempt (or to `Failed` once
/// `max_restarts` is spent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Completed,
    Failed,
    /// Ended on purpose before completion (early termination).
    Stopped,
    Cancelled,
}

impl RunStatus {
    pub const ALL: [RunStatus; 6] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Stopped,
        RunStatus::Cancelled,
    ];

    /// Whether no further state change can happen.
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Stopped => "stopped",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        for status in RunStatus::ALL {
            if status.as_str() == s {
                return Ok(status);
            }
        }
        Err(format!(
            "unknown run status \"{s}\" (expected one of: queued, running, completed, failed, stopped, cancelled)"
        ))
    }
}

/// Lifecycle of a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepStatus {
    Running,
    Paused,
    Completed,
    Cancelled,
}

impl SweepStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, SweepStatus::Completed | SweepStatus::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SweepStatus::Running => "running",
            SweepStatus::Paused => "paused",
            SweepStatus::Completed => "completed",
            SweepStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for SweepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SweepStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "running" => Ok(SweepStatus::Running),
            "paused" => Ok(SweepStatus::Paused),
            "completed" => Ok(SweepStatus::Completed),
            "cancelled" => Ok(SweepStatus::Cancelled),
            other => Err(format!(
                "unknown sweep status \"{other}\" (expected one of: running, paused, completed, cancelled)"
            )),
        }
    }
}

/// One GPU of an agent's node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_mib: u64,
}

/// One metric point of a run: what the program printed on an `@ladder` line (non-finite
/// values already dropped), and when the agent read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    /// The `step` the program reported, when it reported one.
    pub step: Option<i64>,
    pub values: std::collections::BTreeMap<String, f64>,
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
}

/// One line of a run's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Milliseconds since the Unix epoch when the agent read it.
    pub time_ms: i64,
    /// `stdout`, `stderr`, or `ladder` for ladder's own notes.
    pub stream: String,
    pub text: String,
}

/// Milliseconds since the Unix epoch, now: the unit of every time ladder stores and
/// sends.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
