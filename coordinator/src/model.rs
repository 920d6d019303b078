//! Records the coordinator keeps in its store: sweeps, runs with their attempts, agents,
//! and the metric points and log lines of each attempt.

use std::collections::BTreeMap;

use ladder_metrics::summary::{MetricSummary, Reduction};
use ladder_spec::space::Params;
use ladder_spec::SweepSpec;
use ladder_types::{Gpu, RunStatus, SweepStatus};
use serde::{Deserialize, Serialize};

use crate::error::CoordinatorError;

pub use ladder_types::now_ms;

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
    /// Bytes of log text stored, against [`ladder_limits::MAX_ATTEMPT_LOG_BYTES`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub log_bytes: u64,
    /// Lines or points were dropped: the attempt reached its budget of either.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub log_capped: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub points_capped: bool,
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
    /// Metric values dropped because they named a metric beyond the run's
    /// [`MAX_METRICS_PER_RUN`] distinct names.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub metrics_dropped: u64,
    /// The id the next note gets (ids start at 1 and are never reused).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub next_note_id: u64,
    /// Files its attempts uploaded to the artifact store, sorted by name (a later upload
    /// of a name replaces the earlier one); at most [`ladder_limits::MAX_ARTIFACTS_PER_RUN`]
    /// and [`ladder_limits::MAX_RUN_ARTIFACT_BYTES`] together. Recorded only once the
    /// object is stored whole. Empty in records stored before artifacts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<crate::artifacts::ArtifactRecord>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Most distinct `@ladder.info` names one run keeps: the record is rewritten on every
/// report, so a program that invents a new name per step must not grow it without bound.
/// Names it already has are still updated past the limit.
pub const MAX_RUN_INFO_ENTRIES: usize = 256;

pub use ladder_limits::MAX_METRICS_PER_RUN;

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
    /// Ids of notes to delete.
    pub delete_notes: Vec<u64>,
    /// Who asks (the token's name; empty without access control).
    pub author: String,
    /// Whether the author is an admin (or there is no access control): may delete any
    /// note.
    pub admin: bool,
}

impl RunUpdate {
    /// Applies the update to `run`, or changes nothing and says why: a note to delete
    /// that does not exist or was written by someone else (unless admin), or a run that
    /// would exceed [`MAX_NOTES_PER_RUN`] notes or [`MAX_TAGS_PER_RUN`] tags.
    pub fn apply(&self, run: &mut RunRecord, now_ms: i64) -> Result<(), CoordinatorError> {
        run.number_notes();
        for id in &self.delete_notes {
            let Some(note) = run.notes.iter().find(|n| n.id == *id) else {
                return Err(CoordinatorError::NotFound {
                    kind: "note",
                    id: format!("{}/{id}", run.id),
                });
            };
            if !self.admin && note.author != self.author {
                return Err(CoordinatorError::PermissionDenied(format!(
                    "note {id} of run {} was written by {:?}; only its author or an admin may delete it",
                    run.id, note.author
                )));
            }
        }
        let notes_after = run.notes.len() - self.delete_notes.len().min(run.notes.len())
            + usize::from(!self.note.is_empty());
        if !self.note.is_empty() && notes_after > MAX_NOTES_PER_RUN {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "run {} has {} notes, the limit is {MAX_NOTES_PER_RUN}: delete some first",
                run.id,
                run.notes.len()
            )));
        }
        let mut tags = run.tags.clone();
        for tag in &self.add_tags {
            tags.insert(tag.clone());
        }
        for tag in &self.remove_tags {
            tags.remove(tag);
        }
        if tags.len() > MAX_TAGS_PER_RUN && tags.len() > run.tags.len() {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "run {} would have {} tags; the limit is {MAX_TAGS_PER_RUN}",
                run.id,
                tags.len()
            )));
        }
        run.notes
            .retain(|note| !self.delete_notes.contains(&note.id));
        if !self.note.is_empty() {
            let id = run.next_note_id.max(1);
            run.next_note_id = id + 1;
            run.notes.push(RunNote {
                time_ms: now_ms,
                text: self.note.clone(),
                author: self.author.clone(),
                id,
            });
        }
        run.tags = tags;
        Ok(())
    }
}

pub use ladder_limits::{MAX_NOTES_PER_RUN, MAX_TAGS_PER_RUN};

/// A note a user added to a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunNote {
    pub time_ms: i64,
    pub text: String,
    /// Who wrote it; empty for notes written without access control.
    #[serde(default)]
    pub author: String,
    /// Unique within the run; 0 for notes stored before ids (they are given ids on
    /// read, see [`RunRecord::number_notes`]).
    #[serde(default)]
    pub id: u64,
}

impl AttemptRecord {
    /// A new attempt, running from `started_ms`, with nothing reported yet.
    pub fn running(
        number: u32,
        epoch: u64,
        agent: String,
        gpus: Vec<u32>,
        started_ms: i64,
    ) -> AttemptRecord {
        AttemptRecord {
            number,
            epoch,
            agent,
            gpus,
            outcome: AttemptOutcome::Running,
            exit_code: None,
            signal: None,
            reason: String::new(),
            started_ms,
            ended_ms: None,
            acked_seq: 0,
            log_lines: 0,
            metric_points: 0,
            log_bytes: 0,
            log_capped: false,
            points_capped: false,
            stop_reason: None,
        }
    }

    /// Keeps one batch of output within the attempt's budgets (`log_budget` bytes of log
    /// text, `point_budget` metric points, counted over what is already stored):
    /// lines and points past them are removed and the attempt is marked capped. Returns
    /// a note for each budget this batch reached, to be logged with the run.
    pub fn admit_output(
        &mut self,
        metrics: &mut Vec<StoredPoint>,
        logs: &mut Vec<StoredLogLine>,
        log_budget: u64,
        point_budget: u64,
    ) -> Vec<String> {
        let mut notes = Vec::new();
        let room = point_budget.saturating_sub(self.metric_points);
        if metrics.len() as u64 > room {
            metrics.truncate(room as usize);
            if !self.points_capped {
                self.points_capped = true;
                notes.push(format!(
                    "this attempt reached its budget of {point_budget} metric points; later points are dropped"
                ));
            }
        }
        let mut used = self.log_bytes;
        let kept = logs
            .iter()
            .take_while(|line| {
                used += line.text.len() as u64;
                used <= log_budget
            })
            .count();
        if kept < logs.len() {
            logs.truncate(kept);
            if !self.log_capped {
                self.log_capped = true;
                notes.push(format!(
                    "this attempt reached its budget of {log_budget} bytes of log; later lines are dropped (the agent's log file keeps them)"
                ));
            }
        }
        notes
    }
}

impl RunRecord {
    /// Gives ids to notes stored before notes had them: their position, from 1, which is
    /// also the id [`crate::convert`] shows for them until then.
    pub fn number_notes(&mut self) {
        if self.next_note_id == 0 {
            for (position, note) in self.notes.iter_mut().enumerate() {
                note.id = position as u64 + 1;
            }
            self.next_note_id = self.notes.len() as u64 + 1;
        }
    }

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

    /// Keeps the run within [`MAX_METRICS_PER_RUN`] distinct metric names: values in
    /// `points` that name a metric the run does not have yet, once it has that many, are
    /// removed (points left with no value are removed too). Returns how many values were
    /// removed; [`RunRecord::metrics_dropped`] counts them over the run's life. Linear in
    /// the number of values.
    pub fn admit_metrics(&mut self, points: &mut Vec<StoredPoint>) -> u64 {
        let mut known: std::collections::BTreeSet<String> =
            self.last_metrics.keys().cloned().collect();
        let mut dropped = 0u64;
        for point in points.iter_mut() {
            point.values.retain(|name, _| {
                if known.contains(name) {
                    return true;
                }
                if known.len() < MAX_METRICS_PER_RUN {
                    known.insert(name.clone());
                    return true;
                }
                dropped += 1;
                false
            });
        }
        if dropped > 0 {
            points.retain(|point| !point.values.is_empty() || point.step.is_some());
        }
        self.metrics_dropped += dropped;
        dropped
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

/// A log line as stored is the line as the agent reported it.
pub use ladder_types::LogLine as StoredLogLine;
/// A metric point as stored is the point as the agent reported it.
pub use ladder_types::MetricPoint as StoredPoint;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_merges_later_over_earlier_up_to_the_name_limit() {
        let yaml = "name: s\nmethod: grid\nparameters:\n  x: {value: 1}\ncommand: [\"true\"]\n";
        let spec = ladder_spec::parse_sweep("s.yaml", yaml).unwrap();
        let mut run = RunRecord {
            project: spec.project.clone(),
            status: RunStatus::Running,
            ..empty_run()
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
            metrics_dropped: 0,
            next_note_id: 0,
            artifacts: Vec::new(),
            ..run.clone()
        })
        .unwrap();
        assert!(json.get("info").is_none());
        let mut old = json.clone();
        old.as_object_mut().unwrap().remove("info");
        let loaded: RunRecord = serde_json::from_value(old).unwrap();
        assert!(loaded.info.is_empty());
    }

    fn empty_run() -> RunRecord {
        RunRecord {
            id: "s-000000".into(),
            sweep_id: "s".into(),
            project: String::new(),
            index: 0,
            params: Default::default(),
            argv: Vec::new(),
            status: RunStatus::Completed,
            attempts: Vec::new(),
            last_metrics: BTreeMap::new(),
            last_step: None,
            created_ms: 0,
            ended_ms: None,
            tags: Default::default(),
            notes: Vec::new(),
            summaries: BTreeMap::new(),
            info: BTreeMap::new(),
            metrics_dropped: 0,
            next_note_id: 0,
            artifacts: Vec::new(),
        }
    }

    #[test]
    fn output_past_an_attempt_s_budgets_is_dropped_and_marked_once() {
        let mut attempt = AttemptRecord::running(1, 1, "a".into(), Vec::new(), 0);
        let line = |text: &str| StoredLogLine {
            time_ms: 0,
            stream: "stdout".into(),
            text: text.into(),
        };
        let point = |step: i64| StoredPoint {
            step: Some(step),
            values: BTreeMap::from([("loss".to_string(), 1.0)]),
            time_ms: 0,
        };
        // Within both budgets nothing changes; the caller counts what was stored.
        let mut logs = vec![line("0123456789"), line("abcde")];
        let mut points = vec![point(1), point(2)];
        assert!(attempt
            .admit_output(&mut points, &mut logs, 20, 3)
            .is_empty());
        assert_eq!((logs.len(), points.len()), (2, 2));
        attempt.log_bytes += 15;
        attempt.metric_points += 2;
        // The batch that crosses them keeps what fits, drops the rest and says so.
        let mut logs = vec![line("12345"), line("x")];
        let mut points = vec![point(3), point(4), point(5)];
        let notes = attempt.admit_output(&mut points, &mut logs, 20, 3);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("3 metric points"), "{notes:?}");
        assert!(notes[1].contains("20 bytes of log"), "{notes:?}");
        assert_eq!(logs, vec![line("12345")]);
        assert_eq!(points, vec![point(3)]);
        assert!(attempt.log_capped && attempt.points_capped);
        attempt.log_bytes += 5;
        attempt.metric_points += 1;
        // Later batches are dropped whole, without a second note.
        let mut logs = vec![line("y")];
        let mut points = vec![point(6)];
        assert!(attempt
            .admit_output(&mut points, &mut logs, 20, 3)
            .is_empty());
        assert!(logs.is_empty() && points.is_empty());
    }

    fn note(text: &str, author: &str, admin: bool) -> RunUpdate {
        RunUpdate {
            run_id: "s-000000".into(),
            note: text.into(),
            author: author.into(),
            admin,
            ..RunUpdate::default()
        }
    }

    #[test]
    fn notes_and_tags_are_bounded_and_notes_deleted_only_by_their_author_or_an_admin() {
        let mut run = empty_run();
        for i in 0..MAX_NOTES_PER_RUN {
            note(&format!("n{i}"), "alice", false)
                .apply(&mut run, 1)
                .unwrap();
        }
        let refused = note("one more", "alice", false)
            .apply(&mut run, 2)
            .unwrap_err();
        assert!(
            refused.to_string().contains("the limit is 100"),
            "{refused}"
        );
        assert_eq!(run.notes.len(), MAX_NOTES_PER_RUN);

        let first = run.notes[0].id;
        let run_id = run.id.clone();
        let delete = |author: &str, admin: bool| RunUpdate {
            run_id: run_id.clone(),
            delete_notes: vec![first],
            author: author.into(),
            admin,
            ..RunUpdate::default()
        };
        let refused = delete("bob", false).apply(&mut run, 3).unwrap_err();
        assert!(
            refused.to_string().contains("only its author or an admin"),
            "{refused}"
        );
        assert_eq!(run.notes.len(), MAX_NOTES_PER_RUN, "nothing changed");
        delete("root", true).apply(&mut run, 3).unwrap();
        assert_eq!(run.notes.len(), MAX_NOTES_PER_RUN - 1);
        assert!(run.notes.iter().all(|n| n.id != first));
        note("after", "alice", false).apply(&mut run, 4).unwrap();
        let ids: std::collections::BTreeSet<u64> = run.notes.iter().map(|n| n.id).collect();
        assert_eq!(ids.len(), run.notes.len(), "ids are never reused");

        let tags = RunUpdate {
            run_id: run.id.clone(),
            add_tags: (0..=MAX_TAGS_PER_RUN).map(|i| format!("t{i}")).collect(),
            ..RunUpdate::default()
        };
        assert!(tags.apply(&mut run, 5).is_err());
        assert!(run.tags.is_empty());
    }

    #[test]
    fn notes_stored_before_ids_get_their_positions() {
        let mut run = empty_run();
        let old = |text: &str| RunNote {
            time_ms: 0,
            text: text.into(),
            author: String::new(),
            id: 0,
        };
        run.notes = vec![old("a"), old("b")];
        assert_eq!(
            crate::convert::run_to_pb(&run)
                .notes
                .iter()
                .map(|n| n.id)
                .collect::<Vec<_>>(),
            vec![1, 2]
        );
        let delete_second = RunUpdate {
            run_id: run.id.clone(),
            delete_notes: vec![2],
            admin: true,
            ..RunUpdate::default()
        };
        delete_second.apply(&mut run, 1).unwrap();
        assert_eq!(run.notes.len(), 1);
        assert_eq!(run.notes[0].text, "a");
        note("c", "", true).apply(&mut run, 2).unwrap();
        assert_eq!(run.notes[1].id, 3);
    }
}
