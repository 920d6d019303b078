//! Records the coordinator keeps in its store: sweeps, runs with their attempts, agents,
//! and the metric points and log lines of each attempt.

use std::collections::BTreeMap;

use ladder_shared::search::Params;
use ladder_shared::spec::SweepSpec;
use ladder_shared::summary::{MetricSummary, Reduction};
use ladder_shared::types::{Gpu, RunStatus, SweepStatus};
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A submitted sweep. `spec` never changes after submission.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepRecord {
    pub id: String,
    pub spec: SweepSpec,
    pub file_name: String,
    /// The sweep file exactly as submitted.
    pub yaml: String,
    pub status: SweepStatus,
    pub created_ms: i64,
    pub ended_ms: Option<i64>,
    /// How many runs the sweep creates in all.
    pub planned_runs: u64,
    /// How many runs it has created so far; the next trial index.
    pub created_runs: u64,
    /// The user who submitted it (see `auth`); empty for sweeps stored before owners.
    #[serde(default)]
    pub owner: String,
    /// `git rev-parse HEAD` of the directory the sweep file was submitted from; empty
    /// outside a git repository.
    #[serde(default)]
    pub git_commit: String,
    /// Whether that working tree had uncommitted changes.
    #[serde(default)]
    pub git_dirty: bool,
}

/// How one attempt of a run ended (or that it has not yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Running,
    Completed,
    Failed,
    Stopped,
    Cancelled,
    /// The agent went silent past the lease timeout, or no longer held the run.
    Lost,
    /// A draining agent handed the run back; it does not count as a restart.
    Released,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Running => "running",
            AttemptOutcome::Completed => "completed",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Stopped => "stopped",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::Lost => "lost",
            AttemptOutcome::Released => "released",
        }
    }
}

/// One execution of a run on one agent, identified by its lease `(run, number, epoch)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// 1-based.
    pub number: u32,
    /// Fencing token, unique across the store's history.
    pub epoch: u64,
    pub agent: String,
    pub gpus: Vec<u32>,
    pub outcome: AttemptOutcome,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: String,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    /// Highest event sequence number stored for this attempt.
    pub acked_seq: u64,
    pub log_lines: u64,
    pub metric_points: u64,
    /// Why the coordinator asked the agent to stop this attempt (early termination),
    /// once it did.
    #[serde(default)]
    pub stop_reason: Option<String>,
}

/// A trial of a sweep. `params` and `argv` never change once created; restarts add
/// attempts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub sweep_id: String,
    pub project: String,
    /// 0-based trial index within the sweep.
    pub index: u64,
    pub params: Params,
    pub argv: Vec<String>,
    pub status: RunStatus,
    pub attempts: Vec<AttemptRecord>,
    /// Last reported value of every metric.
    pub last_metrics: BTreeMap<String, f64>,
    pub last_step: Option<i64>,
    pub created_ms: i64,
    pub ended_ms: Option<i64>,
    /// Labels set by users (`ladder runs tag`), sorted.
    #[serde(default)]
    pub tags: std::collections::BTreeSet<String>,
    /// Free-text notes (`ladder runs note`), oldest first.
    #[serde(default)]
    pub notes: Vec<RunNote>,
    /// Last, min and max (with steps) of every metric over every point of every attempt,
    /// each with the reduction its sweep chose (see [`RunRecord::metric_value`]). Empty
    /// in records stored before summaries: those runs are summarised by `last_metrics`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub summaries: BTreeMap<String, MetricSummary>,
    /// What the run reported about itself with `@ladder.info` lines (provenance: base
    /// model and data paths and hashes), merged over every attempt in report order, a
    /// later line overriding the keys it repeats; at most [`MAX_RUN_INFO_ENTRIES`]
    /// names. Empty in records stored before info, which load unchanged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub info: BTreeMap<String, String>,
}

/// Most distinct `@ladder.info` names one run keeps: the record is rewritten on every
/// report, so a program that invents a new name per step must not grow it without bound.
/// Names it already has are still updated past the limit.
pub const MAX_RUN_INFO_ENTRIES: usize = 256;

/// The git state of the directory a sweep file was submitted from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitState {
    /// `git rev-parse HEAD`; empty outside a repository.
    pub commit: String,
    /// `git status --porcelain` listed changes.
    pub dirty: bool,
}

/// A user's change to a run's notes and tags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunUpdate {
    pub run_id: String,
    /// Appended to the notes when not empty.
    pub note: String,
    pub add_tags: Vec<String>,
    /// Applied after `add_tags`, so a tag in both ends up removed.
    pub remove_tags: Vec<String>,
}

impl RunUpdate {
    pub fn apply(&self, run: &mut RunRecord, now_ms: i64) {
        if !self.note.is_empty() {
            run.notes.push(RunNote {
                time_ms: now_ms,
                text: self.note.clone(),
            });
        }
        for tag in &self.add_tags {
            run.tags.insert(tag.clone());
        }
        for tag in &self.remove_tags {
            run.tags.remove(tag);
        }
    }
}

/// A note a user added to a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunNote {
    pub time_ms: i64,
    pub text: String,
}

impl RunRecord {
    pub fn current_attempt(&self) -> Option<&AttemptRecord> {
        self.attempts.last()
    }

    pub fn current_attempt_mut(&mut self) -> Option<&mut AttemptRecord> {
        self.attempts.last_mut()
    }

    /// The agent of the latest attempt.
    pub fn agent(&self) -> Option<&str> {
        self.attempts.last().map(|a| a.agent.as_str())
    }

    /// The value that stands for this run's `metric` in queries, sorting, indexes and the
    /// leaderboard: its summary as the sweep chose it (last unless `summary:` /
    /// `summaries:` says otherwise).
    pub fn metric_value(&self, metric: &str) -> Option<f64> {
        match self.summaries.get(metric) {
            Some(summary) => Some(summary.value()),
            None => self.last_metrics.get(metric).copied(),
        }
    }

    /// [`RunRecord::metric_value`] of every metric the run reported.
    pub fn metric_values(&self) -> BTreeMap<String, f64> {
        let mut values = self.last_metrics.clone();
        for (name, summary) in &self.summaries {
            values.insert(name.clone(), summary.value());
        }
        values
    }

    /// Takes in metric points in report order: last values, last step and summaries.
    /// `spec` is the run's sweep, whose choices fix each new summary's reduction (the
    /// last value when it is unknown).
    ///
    /// A record stored before summaries first gets one per metric seeded from its last
    /// value; [`crate::store::SledStore::open`] upgrades such records from their points.
    pub fn apply_metrics(&mut self, spec: Option<&SweepSpec>, points: &[StoredPoint]) {
        let reduction_of = |name: &str| spec.map_or(Reduction::Last, |s| s.reduction_of(name));
        if self.summaries.is_empty() {
            for (name, value) in &self.last_metrics {
                let summary = MetricSummary::first(*value, self.last_step, reduction_of(name));
                self.summaries.insert(name.clone(), summary);
            }
        }
        for point in points {
            if point.step.is_some() {
                self.last_step = point.step;
            }
            for (name, value) in &point.values {
                self.last_metrics.insert(name.clone(), *value);
            }
        }
        observe_points(&mut self.summaries, spec, points);
    }

    /// Merges `info` (one batch of `@ladder.info` entries, later lines already merged
    /// over earlier ones) over the run's info. Returns how many new names were dropped
    /// because the run already has [`MAX_RUN_INFO_ENTRIES`].
    pub fn apply_info(&mut self, info: &BTreeMap<String, String>) -> usize {
        let mut dropped = 0;
        for (name, value) in info {
            if let Some(current) = self.info.get_mut(name) {
                current.clone_from(value);
            } else if self.info.len() < MAX_RUN_INFO_ENTRIES {
                self.info.insert(name.clone(), value.clone());
            } else {
                dropped += 1;
            }
        }
        dropped
    }

    /// The summaries of a run whose points, in report order, are `points`.
    pub fn summaries_of(
        spec: Option<&SweepSpec>,
        points: &[StoredPoint],
    ) -> BTreeMap<String, MetricSummary> {
        let mut summaries = BTreeMap::new();
        observe_points(&mut summaries, spec, points);
        summaries
    }
}

/// Adds `points` (in report order) to `summaries`; a metric seen for the first time takes
/// the reduction `spec` chose for it (the last value when `spec` is unknown).
fn observe_points(
    summaries: &mut BTreeMap<String, MetricSummary>,
    spec: Option<&SweepSpec>,
    points: &[StoredPoint],
) {
    for point in points {
        for (name, value) in &point.values {
            match summaries.get_mut(name) {
                Some(summary) => summary.observe(*value, point.step),
                None => {
                    let reduction = spec.map_or(Reduction::Last, |s| s.reduction_of(name));
                    let summary = MetricSummary::first(*value, point.step, reduction);
                    summaries.insert(name.clone(), summary);
                }
            }
        }
    }
}

/// What the coordinator remembers of an agent across restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentRecord {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub slots: u32,
    pub gpus: Vec<Gpu>,
    pub hostname: String,
    pub version: String,
    pub last_seen_ms: i64,
    /// Runs are not placed on a quarantined agent until an operator enables it.
    #[serde(default)]
    pub quarantined: bool,
    #[serde(default)]
    pub quarantine_reason: Option<String>,
    /// The SHA-256 of the secret this name is bound to (see [`crate::identity`]); `None`
    /// until the name enrolls, after `ladder agents forget`, and in records stored
    /// before names were bound (such a name enrolls on its next registration). Never
    /// listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_sha256: Option<crate::identity::SecretHash>,
}

/// A metric point as stored: what the program printed, and when the agent read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPoint {
    pub step: Option<i64>,
    pub values: BTreeMap<String, f64>,
    pub time_ms: i64,
}

/// A log line as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLogLine {
    pub time_ms: i64,
    pub stream: String,
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_merges_later_over_earlier_up_to_the_name_limit() {
        let yaml = "name: s\nmethod: grid\nparameters:\n  x: {value: 1}\ncommand: [\"true\"]\n";
        let spec = ladder_shared::spec::parse_sweep("s.yaml", yaml).unwrap();
        let mut run = RunRecord {
            id: "s-000000".into(),
            sweep_id: "s".into(),
            project: spec.project.clone(),
            index: 0,
            params: Default::default(),
            argv: Vec::new(),
            status: RunStatus::Running,
            attempts: Vec::new(),
            last_metrics: BTreeMap::new(),
            last_step: None,
            created_ms: 0,
            ended_ms: None,
            tags: Default::default(),
            notes: Vec::new(),
            summaries: BTreeMap::new(),
            info: BTreeMap::new(),
        };
        let batch = |entries: &[(&str, &str)]| -> BTreeMap<String, String> {
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(run.apply_info(&batch(&[("a", "1"), ("b", "2")])), 0);
        assert_eq!(run.apply_info(&batch(&[("a", "3")])), 0);
        assert_eq!(run.info, batch(&[("a", "3"), ("b", "2")]));
        // Past the limit, known names still change and new ones are dropped.
        let many: BTreeMap<String, String> = (0..MAX_RUN_INFO_ENTRIES)
            .map(|i| (format!("k{i:04}"), "v".to_string()))
            .collect();
        assert_eq!(run.apply_info(&many), 2);
        assert_eq!(run.info.len(), MAX_RUN_INFO_ENTRIES);
        assert_eq!(run.apply_info(&batch(&[("a", "4"), ("new", "x")])), 1);
        assert_eq!(run.info["a"], "4");
        assert!(!run.info.contains_key("new"));
        // Records stored before info load with none, and an empty one is not written.
        let json = serde_json::to_value(RunRecord {
            info: BTreeMap::new(),
            ..run.clone()
        })
        .unwrap();
        assert!(json.get("info").is_none());
        let mut old = json.clone();
        old.as_object_mut().unwrap().remove("info");
        let loaded: RunRecord = serde_json::from_value(old).unwrap();
        assert!(loaded.info.is_empty());
    }
}
