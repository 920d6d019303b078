//! Conversions between the `ladder.v1` messages of the client services and domain types,
//! and the checks of what a request asks for (ids, page sizes, cursors, queries): the
//! gRPC adapters in `service` only call these and the scheduler or the reads. The agent
//! protocol's conversion is `ladder_protocol::wire`.

use ladder_metrics::summary::MetricSummary;
use ladder_proto::v1 as pb;
use ladder_spec::{Goal, ParamValue};
use ladder_types::{RunStatus, SweepStatus};

use crate::error::CoordinatorError;
use crate::model::{now_ms, AttemptRecord, RunRecord, StoredLogLine, StoredPoint};
use crate::reads::{
    Leaderboard, LeaderboardQuery, Per, PointsPage, RunCard, RunQuery, SweepView,
    DEFAULT_LEADERBOARD_ROWS, MAX_LEADERBOARD_ROWS,
};
use crate::scheduler::AgentView;
use ladder_query::{self as query, parse_where};

pub fn run_status_to_pb(status: RunStatus) -> pb::RunStatus {
    match status {
        RunStatus::Queued => pb::RunStatus::Queued,
        RunStatus::Running => pb::RunStatus::Running,
        RunStatus::Completed => pb::RunStatus::Completed,
        RunStatus::Failed => pb::RunStatus::Failed,
        RunStatus::Stopped => pb::RunStatus::Stopped,
        RunStatus::Cancelled => pb::RunStatus::Cancelled,
    }
}

impl TryFrom<pb::RunStatus> for crate::RunStatusFilter {
    type Error = CoordinatorError;
    fn try_from(status: pb::RunStatus) -> Result<Self, Self::Error> {
        let status = match status {
            pb::RunStatus::Queued => RunStatus::Queued,
            pb::RunStatus::Running => RunStatus::Running,
            pb::RunStatus::Completed => RunStatus::Completed,
            pb::RunStatus::Failed => RunStatus::Failed,
            pb::RunStatus::Stopped => RunStatus::Stopped,
            pb::RunStatus::Cancelled => RunStatus::Cancelled,
            pb::RunStatus::Unspecified => {
                return Err(CoordinatorError::InvalidArgument(
                    "run status filter RUN_STATUS_UNSPECIFIED is not a status".into(),
                ))
            }
        };
        Ok(crate::RunStatusFilter(status))
    }
}

pub fn sweep_status_to_pb(status: SweepStatus) -> pb::SweepStatus {
    match status {
        SweepStatus::Running => pb::SweepStatus::Running,
        SweepStatus::Paused => pb::SweepStatus::Paused,
        SweepStatus::Completed => pb::SweepStatus::Completed,
        SweepStatus::Cancelled => pb::SweepStatus::Cancelled,
    }
}

pub fn param_to_pb(value: &ParamValue) -> pb::ParamValue {
    let kind = match value {
        ParamValue::Bool(b) => pb::param_value::Kind::BoolValue(*b),
        ParamValue::Int(i) => pb::param_value::Kind::IntValue(*i),
        ParamValue::Float(f) => pb::param_value::Kind::FloatValue(*f),
        ParamValue::Str(s) => pb::param_value::Kind::StringValue(s.clone()),
    };
    pb::ParamValue { kind: Some(kind) }
}

/// A sweep with its run counts; `with_yaml`: with its sweep file (listed sweeps carry
/// none).
pub fn sweep_to_pb(view: &SweepView, with_yaml: bool) -> pb::Sweep {
    let record = &view.record;
    let counts = &view.counts;
    let spec = &record.spec;
    pb::Sweep {
        id: record.id.clone(),
        name: spec.name.clone(),
        project: spec.project.clone(),
        method: spec.method.as_str().to_string(),
        status: sweep_status_to_pb(record.status) as i32,
        metric_name: spec
            .metric
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default(),
        metric_goal: spec
            .metric
            .as_ref()
            .map(|m| match m.goal {
                Goal::Minimize => "minimize".to_string(),
                Goal::Maximize => "maximize".to_string(),
            })
            .unwrap_or_default(),
        parallel: spec.parallel,
        planned_runs: record.planned_runs,
        created_runs: record.created_runs,
        counts: Some(pb::RunCounts {
            queued: counts.queued,
            running: counts.running,
            completed: counts.completed,
            failed: counts.failed,
            stopped: counts.stopped,
            cancelled: counts.cancelled,
        }),
        created_ms: record.created_ms,
        ended_ms: record.ended_ms.unwrap_or(0),
        spec_yaml: if with_yaml {
            record.yaml.clone()
        } else {
            String::new()
        },
        file_name: record.file_name.clone(),
        owner: record.owner.clone(),
    }
}

/// A page of an attempt's metric points.
pub fn points_page_to_pb(page: PointsPage) -> pb::ListMetricPointsResponse {
    pb::ListMetricPointsResponse {
        attempt: page.attempt,
        points: page.points.iter().map(point_to_pb).collect(),
        next_cursor: page.next_cursor.unwrap_or_default(),
    }
}

/// A run's card as `GetRun` answers it.
pub fn run_card_to_pb(card: RunCard) -> pb::GetRunResponse {
    pb::GetRunResponse {
        run: Some(run_to_pb(&card.run)),
        metrics: card
            .series
            .iter()
            .map(|series| pb::AttemptMetrics {
                attempt: series.attempt,
                points: series.points.iter().map(point_to_pb).collect(),
                total_points: series.total_points,
                downsampled: series.downsampled,
            })
            .collect(),
        log_tail: card.log_tail.iter().map(log_to_pb).collect(),
        log_lines: card.log_lines,
        sweep_name: card.sweep_name,
        owner: card.owner,
        git_commit: card.git_commit,
        git_dirty: card.git_dirty,
        sweep_metric: card.sweep_metric,
        sweep_goal: card.sweep_goal,
        best_value: card.best_value,
        min_metrics: card.min_metrics,
        max_metrics: card.max_metrics,
        artifacts: card
            .run
            .artifacts
            .iter()
            .map(crate::artifact_service::artifact_to_pb)
            .collect(),
    }
}

fn attempt_to_pb(attempt: &AttemptRecord) -> pb::Attempt {
    pb::Attempt {
        number: attempt.number,
        epoch: attempt.epoch,
        agent: attempt.agent.clone(),
        outcome: attempt.outcome.as_str().to_string(),
        exit_code: attempt.exit_code,
        signal: attempt.signal,
        reason: attempt.reason.clone(),
        started_ms: attempt.started_ms,
        ended_ms: attempt.ended_ms.unwrap_or(0),
        gpus: attempt.gpus.clone(),
        log_bytes: attempt.log_bytes,
        metric_points: attempt.metric_points,
        log_capped: attempt.log_capped,
        points_capped: attempt.points_capped,
    }
}

pub fn run_to_pb(run: &RunRecord) -> pb::Run {
    let last = run.current_attempt();
    pb::Run {
        id: run.id.clone(),
        sweep_id: run.sweep_id.clone(),
        index: run.index,
        params: run
            .params
            .iter()
            .map(|(k, v)| (k.clone(), param_to_pb(v)))
            .collect(),
        status: run_status_to_pb(run.status) as i32,
        agent: run.agent().unwrap_or_default().to_string(),
        attempts: run.attempts.iter().map(attempt_to_pb).collect(),
        last_metrics: run
            .last_metrics
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        last_step: run.last_step,
        argv: run.argv.clone(),
        created_ms: run.created_ms,
        ended_ms: run.ended_ms.unwrap_or(0),
        exit_code: last.and_then(|a| a.exit_code),
        signal: last.and_then(|a| a.signal),
        project: run.project.clone(),
        tags: run.tags.iter().cloned().collect(),
        notes: run
            .notes
            .iter()
            .enumerate()
            .map(|(position, n)| pb::RunNote {
                time_ms: n.time_ms,
                text: n.text.clone(),
                author: n.author.clone(),
                // Notes stored before ids get their position (see RunRecord::number_notes).
                id: if run.next_note_id == 0 {
                    position as u64 + 1
                } else {
                    n.id
                },
            })
            .collect(),
        summaries: run
            .summaries
            .iter()
            .map(|(name, summary)| (name.clone(), summary_to_pb(summary)))
            .collect(),
        info: run
            .info
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect(),
    }
}

pub fn summary_to_pb(summary: &MetricSummary) -> pb::MetricSummary {
    pb::MetricSummary {
        last: summary.last,
        last_step: summary.last_step,
        min: summary.min,
        min_step: summary.min_step,
        max: summary.max,
        max_step: summary.max_step,
        summary: summary.reduction.as_str().to_string(),
        value: summary.value(),
    }
}

pub use ladder_limits::{MAX_NOTE_BYTES, MAX_TAG_BYTES};

impl TryFrom<pb::UpdateRunRequest> for crate::model::RunUpdate {
    type Error = CoordinatorError;
    fn try_from(request: pb::UpdateRunRequest) -> Result<Self, Self::Error> {
        let invalid = |m: String| CoordinatorError::InvalidArgument(m);
        if request.run_id.is_empty() || request.run_id.len() > 128 {
            return Err(invalid("run_id must be a non-empty id".into()));
        }
        check_count(
            "add_tags",
            request.add_tags.len(),
            ladder_limits::MAX_TAGS_PER_RUN,
        )?;
        check_count(
            "remove_tags",
            request.remove_tags.len(),
            ladder_limits::MAX_TAGS_PER_RUN,
        )?;
        check_count(
            "delete_notes",
            request.delete_notes.len(),
            ladder_limits::MAX_NOTES_PER_RUN,
        )?;
        if request.note.len() > MAX_NOTE_BYTES {
            return Err(invalid(format!(
                "a note is at most {MAX_NOTE_BYTES} bytes; this one is {}",
                request.note.len()
            )));
        }
        for tag in request.add_tags.iter().chain(&request.remove_tags) {
            let valid = !tag.is_empty()
                && tag.len() <= MAX_TAG_BYTES
                && !tag
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == ',');
            if !valid {
                return Err(invalid(format!(
                    "invalid tag {tag:?}: tags are 1 to {MAX_TAG_BYTES} bytes without spaces or commas"
                )));
            }
        }
        if request.note.is_empty()
            && request.add_tags.is_empty()
            && request.remove_tags.is_empty()
            && request.delete_notes.is_empty()
        {
            return Err(invalid(
                "nothing to update: give a note, tags or notes to delete".into(),
            ));
        }
        Ok(crate::model::RunUpdate {
            run_id: request.run_id,
            note: request.note,
            add_tags: request.add_tags,
            remove_tags: request.remove_tags,
            delete_notes: request.delete_notes,
            // Who asks is filled in by the service from the caller's credentials.
            author: String::new(),
            admin: true,
        })
    }
}

pub fn point_to_pb(point: &StoredPoint) -> pb::MetricPoint {
    ladder_protocol::wire::point_to_pb(point.clone())
}

pub fn log_to_pb(line: &StoredLogLine) -> pb::LogLine {
    ladder_protocol::wire::log_to_pb(line.clone())
}

pub fn agent_to_pb(view: &AgentView) -> pb::Agent {
    let record = &view.record;
    pb::Agent {
        name: record.name.clone(),
        labels: record
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        slots: record.slots,
        free_slots: view.free_slots,
        gpus: record
            .gpus
            .iter()
            .map(ladder_protocol::wire::gpu_to_pb)
            .collect(),
        connected: view.connected,
        last_seen_ms: record.last_seen_ms,
        runs: view.runs.clone(),
        gpu_runs: view
            .gpu_holders
            .iter()
            .map(|(gpu, run_id)| (*gpu, run_id.clone()))
            .collect(),
        hostname: record.hostname.clone(),
        version: record.version.clone(),
        quarantined: record.quarantined,
        quarantine_reason: record.quarantine_reason.clone().unwrap_or_default(),
        draining: view.draining,
    }
}

/// Longest agent name accepted.
pub const MAX_NAME_LEN: usize = ladder_limits::MAX_AGENT_NAME_BYTES;

/// Refuses a text field of a request longer than `max` bytes, naming the field.
pub fn check_len(field: &str, text: &str, max: usize) -> Result<(), CoordinatorError> {
    Ok(ladder_protocol::wire::check_len(field, text, max)?)
}

/// Refuses a count of a request above `max`, naming the field.
pub fn check_count(field: &str, count: usize, max: usize) -> Result<(), CoordinatorError> {
    Ok(ladder_protocol::wire::check_count(field, count, max)?)
}

// ----- request checks -----

/// The owner a client declared (`SubmitSweepRequest.owner`), used without `--auth`.
pub fn declared_owner(owner: &str) -> Result<String, CoordinatorError> {
    let owner = owner.trim();
    if owner.len() > 128 || owner.chars().any(|c| c.is_control()) {
        return Err(CoordinatorError::InvalidArgument(
            "owner must be at most 128 printable characters".into(),
        ));
    }
    Ok(owner.to_string())
}

/// The page size a list request asks for: `default` for 0; above `max` is refused.
pub fn page_size(requested: u32, default: usize, max: usize) -> Result<usize, CoordinatorError> {
    match requested as usize {
        0 => Ok(default),
        n if n > max => Err(CoordinatorError::InvalidArgument(format!(
            "page_size {n} is above the limit of {max}"
        ))),
        n => Ok(n),
    }
}

pub fn check_cursor(cursor: &str) -> Result<(), CoordinatorError> {
    if cursor.len() > ladder_limits::MAX_CURSOR_BYTES {
        return Err(CoordinatorError::InvalidArgument(format!(
            "cursor is {} bytes; the limit is {}",
            cursor.len(),
            ladder_limits::MAX_CURSOR_BYTES
        )));
    }
    Ok(())
}

pub fn require_id(id: &str, what: &str) -> Result<(), CoordinatorError> {
    if id.is_empty() || id.len() > 128 {
        return Err(CoordinatorError::InvalidArgument(format!(
            "{what} must be a non-empty id"
        )));
    }
    Ok(())
}

// ----- run queries and the leaderboard -----

impl RunQuery {
    /// Parses the query parts of a request; errors are positioned (`--where:1:12: ...`).
    pub fn parse(request: &pb::ListRunsRequest) -> Result<RunQuery, CoordinatorError> {
        let invalid = |e: query::QueryError| CoordinatorError::InvalidArgument(e.to_string());
        let mut statuses = Vec::new();
        for raw in &request.statuses {
            let status = pb::RunStatus::try_from(*raw).map_err(|_| {
                CoordinatorError::InvalidArgument(format!("unknown run status {raw}"))
            })?;
            statuses.push(crate::RunStatusFilter::try_from(status)?.0);
        }
        let filter = if request.r#where.trim().is_empty() {
            None
        } else {
            Some(parse_where("--where", &request.r#where, now_ms()).map_err(invalid)?)
        };
        let sort = query::parse_sort_keys(&request.sort).map_err(invalid)?;
        let after = if request.cursor.is_empty() {
            None
        } else {
            let cursor = query::parse_cursor(&request.cursor).map_err(invalid)?;
            if cursor.sort != request.sort {
                return Err(CoordinatorError::InvalidArgument(format!(
                    "--cursor: this cursor belongs to a listing sorted by [{}], not [{}]",
                    cursor.sort.join(", "),
                    request.sort.join(", ")
                )));
            }
            Some(cursor.last)
        };
        Ok(RunQuery {
            sweep_id: request.sweep_id.clone(),
            project: request.project.clone(),
            statuses,
            filter,
            sort,
            sort_text: request.sort.clone(),
            after,
            limit: request.limit as usize,
        })
    }
}

impl TryFrom<pb::LeaderboardRequest> for LeaderboardQuery {
    type Error = CoordinatorError;
    fn try_from(request: pb::LeaderboardRequest) -> Result<Self, Self::Error> {
        let invalid = |m: String| CoordinatorError::InvalidArgument(m);
        let goal = match request.goal.as_str() {
            "" => None,
            "maximize" | "max" => Some(Goal::Maximize),
            "minimize" | "min" => Some(Goal::Minimize),
            other => {
                return Err(invalid(format!(
                    "--goal: unknown goal {other:?} (expected maximize or minimize)"
                )))
            }
        };
        let tasks_average = match request.tasks.as_str() {
            "" => false,
            "avg" => true,
            other => {
                return Err(invalid(format!(
                    "--tasks: unknown mode {other:?} (expected avg)"
                )))
            }
        };
        let per = match request.per.as_str() {
            "" | "run" => Per::Run,
            "sweep" => Per::Sweep,
            "model" => Per::Model,
            other => {
                return Err(invalid(format!(
                    "--per: unknown grouping {other:?} (expected run, sweep or model)"
                )))
            }
        };
        let mut statuses = Vec::new();
        for raw in &request.statuses {
            let status = pb::RunStatus::try_from(*raw)
                .map_err(|_| invalid(format!("unknown run status {raw}")))?;
            statuses.push(crate::RunStatusFilter::try_from(status)?.0);
        }
        if statuses.is_empty() {
            statuses = vec![RunStatus::Completed, RunStatus::Stopped];
        }
        let limit = match request.limit as usize {
            0 => DEFAULT_LEADERBOARD_ROWS,
            n => n.min(MAX_LEADERBOARD_ROWS),
        };
        Ok(LeaderboardQuery {
            project: (!request.project.is_empty()).then_some(request.project),
            metric: request.metric,
            goal,
            tasks_average,
            per,
            limit,
            statuses,
        })
    }
}

/// Leaderboard rows as protocol messages.
pub fn leaderboard_to_pb(board: Leaderboard) -> pb::LeaderboardResponse {
    let mut tasks: Vec<String> = board
        .rows
        .iter()
        .flat_map(|row| row.tasks.keys().cloned())
        .collect();
    tasks.sort();
    tasks.dedup();
    pb::LeaderboardResponse {
        metric: board.metric,
        goal: board.goal.as_str().to_string(),
        tasks,
        rows: board
            .rows
            .into_iter()
            .enumerate()
            .map(|(i, row)| pb::LeaderboardRow {
                rank: i as u32 + 1,
                run: Some(run_to_pb(&row.run)),
                sweep_name: row.sweep_name,
                value: row.value,
                tasks: row.tasks.into_iter().collect(),
            })
            .collect(),
    }
}

/// Property-based fuzzing of what the coordinator decodes from the network: arbitrary
/// bytes, structured messages with hostile values, and byte-mutations of valid encodings
/// go through `prost::Message::decode` and then the conversions above. A conversion must
/// never panic, and either fails with a message or yields a valid domain value.
#[cfg(test)]
mod tests;
