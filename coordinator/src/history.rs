//! The team's shared history: run queries (`--where`, `--sort`, cursor pages), the
//! leaderboard, run cards, notes and tags, export and watch.
//!
//! Reads go straight to the store on blocking threads, like [`Queries`]; the only write
//! (notes and tags) goes through the scheduler ([`crate::scheduler::Event::UpdateRun`]).
//!
//! A metric's value in every query, sort, index and leaderboard is the run's summary of
//! it ([`RunRecord::metric_value`]): the last reported value unless the sweep chose
//! another (`metric: {.., summary: best}`, `summaries: {train/loss: min}`).
//!
//! What is indexed: that value of every metric of every run, and each run's tasks
//! average, per project (`idx_metric`) and across projects (`idx_metric_all`), and every
//! parameter of every run per project, in listing order (`idx_param`; see
//! [`crate::store`]). The leaderboard walks a metric index in goal order and stops after
//! `limit` rows. `ListRuns` with a project, a limit and a first sort key `metrics.NAME`
//! or `params.NAME` walks the project's index for that key, applying the filters to each
//! run it meets, and stops after one page: once it has the page plus one row, or, when
//! the index order is not the whole listing order (a metric, whose ties are in run id
//! order, or further sort keys), once the value changes after that. Runs without the
//! value, which sort last, are found by a scan once the index is exhausted. Every other
//! query (other first keys, no project, `--sweep`, no limit, filters only) scans the runs
//! of the sweep or of the whole store and sorts in memory, holding about two pages.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ladder_proto::v1 as pb;
use ladder_query::{
    self as query, compare_rows, parse_where, row_key, Cursor, Expr, Field, Position, RowKey,
    RunFacts, SortKey, Value,
};
use ladder_spec::Goal;
use ladder_types::RunStatus;
use tokio::sync::{broadcast, mpsc};

use crate::convert;
use crate::error::CoordinatorError;
use crate::model::{now_ms, RunRecord, SweepRecord};
use crate::queries::Queries;
use crate::service::Shared;
use crate::store::{param_query_value, IndexWalk, PointKey, TASKS_AVG_METRIC};

/// Most rows one leaderboard returns.
pub const MAX_LEADERBOARD_ROWS: usize = 1000;
/// Rows a leaderboard returns when not told.
pub const DEFAULT_LEADERBOARD_ROWS: usize = 20;
/// Runs per internal page of `ExportRuns`.
const EXPORT_PAGE: usize = 500;
/// Most log lines one `WatchRun` message carries when catching up.
const WATCH_BACKLOG_LINES: usize = 10_000;
/// Most points and bytes of points in one `WatchRun` message after the first: every
/// watcher holds a few such messages, so they stay small.
const WATCH_POINTS_PER_MESSAGE: usize = ladder_limits::MAX_WATCH_MESSAGE_POINTS;
const WATCH_BYTES_PER_MESSAGE: usize = ladder_limits::MAX_WATCH_MESSAGE_BYTES;

/// A run as the query language sees it: its record and its sweep's.
struct Facts<'a> {
    run: &'a RunRecord,
    sweep: Option<&'a SweepRecord>,
}

impl RunFacts for Facts<'_> {
    fn param(&self, name: &str) -> Option<Value> {
        self.run.params.get(name).map(param_query_value)
    }
    fn metric(&self, name: &str) -> Option<f64> {
        self.run.metric_value(name)
    }
    fn status(&self) -> &str {
        self.run.status.as_str()
    }
    fn sweep(&self) -> &str {
        &self.run.sweep_id
    }
    fn project(&self) -> &str {
        &self.run.project
    }
    fn owner(&self) -> &str {
        self.sweep.map(|s| s.owner.as_str()).unwrap_or("")
    }
    fn has_tag(&self, tag: &str) -> bool {
        self.run.tags.contains(tag)
    }
    fn agent(&self) -> &str {
        self.run.agent().unwrap_or("")
    }
    fn created_ms(&self) -> i64 {
        self.run.created_ms
    }
}

/// A parsed `ListRunsRequest`.
pub struct RunQuery {
    pub sweep_id: String,
    pub project: String,
    pub statuses: Vec<RunStatus>,
    pub filter: Option<Expr>,
    pub sort: Vec<SortKey>,
    /// The sort keys as written, kept in cursors.
    pub sort_text: Vec<String>,
    pub after: Option<RowKey>,
    /// 0: no limit.
    pub limit: usize,
}

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

    fn admits(&self, run: &RunRecord, sweep: Option<&SweepRecord>) -> bool {
        if !self.project.is_empty() && run.project != self.project {
            return false;
        }
        if !self.sweep_id.is_empty() && run.sweep_id != self.sweep_id {
            return false;
        }
        if !self.statuses.is_empty() && !self.statuses.contains(&run.status) {
            return false;
        }
        match &self.filter {
            Some(filter) => filter.matches(&Facts { run, sweep }),
            None => true,
        }
    }

    /// The project the query is confined to, if any (`--project` or `project = X`).
    fn project(&self) -> Option<&str> {
        if !self.project.is_empty() {
            return Some(&self.project);
        }
        self.filter.as_ref().and_then(|f| f.required_project())
    }
}

/// The rows of one page, in order, and whether more follow.
type SortedPage = (Vec<(RowKey, RunRecord)>, bool);

/// One page of a query: runs in order and the cursor of the next page, if any.
pub struct RunPage {
    pub runs: Vec<RunRecord>,
    pub next_cursor: Option<String>,
}

/// One row of a leaderboard.
pub struct LeaderboardRow {
    pub run: RunRecord,
    pub sweep_name: String,
    pub value: f64,
    pub tasks: std::collections::BTreeMap<String, f64>,
}

/// A leaderboard request in domain terms.
pub struct LeaderboardQuery {
    /// The project ranked; `None`: every project.
    pub project: Option<String>,
    pub metric: String,
    pub goal: Option<Goal>,
    pub tasks_average: bool,
    pub per: Per,
    pub limit: usize,
    pub statuses: Vec<RunStatus>,
}

/// What one leaderboard row stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    Run,
    Sweep,
    Model,
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

/// The resolved objective of a leaderboard and its rows, best first.
pub struct Leaderboard {
    pub metric: String,
    pub goal: Goal,
    pub rows: Vec<LeaderboardRow>,
}

fn position(run: &RunRecord, sweeps: &HashMap<String, SweepRecord>) -> Position {
    Position {
        sweep_created_ms: sweeps
            .get(&run.sweep_id)
            .map(|s| s.created_ms)
            .unwrap_or(i64::MAX),
        sweep_id: run.sweep_id.clone(),
        index: run.index,
    }
}

impl Queries {
    fn sweep_map(&self) -> Result<HashMap<String, SweepRecord>, CoordinatorError> {
        Ok(self
            .store
            .list_sweeps()?
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect())
    }

    /// Runs of `project` (of every project when `None`) with `metric` by value (index
    /// walk, or a scan when the store keeps no index); callers check each entry against
    /// its record with [`Queries::indexed_run`].
    fn metric_walk<'a>(
        &'a self,
        project: Option<&str>,
        metric: &str,
        descending: bool,
        from: Option<f64>,
    ) -> Result<IndexWalk<'a>, CoordinatorError> {
        if let Some(walk) = self.store.metric_index(project, metric, descending, from) {
            return Ok(walk);
        }
        let mut entries: Vec<(f64, String)> = Vec::new();
        for run in self.store.list_runs(None)? {
            if project.is_some_and(|p| run.project != p) {
                continue;
            }
            if let Some(value) = index_value(&run, metric) {
                entries.push((value, run.id));
            }
        }
        entries.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        if descending {
            entries.reverse();
        }
        if let Some(from) = from {
            entries.retain(|(v, _)| {
                let ordering = v.total_cmp(&from);
                if descending {
                    ordering != Ordering::Greater
                } else {
                    ordering != Ordering::Less
                }
            });
        }
        Ok(Box::new(entries.into_iter().map(Ok)))
    }

    /// The run an index entry points at, when the entry is current.
    fn indexed_run(
        &self,
        metric: &str,
        value: f64,
        run_id: &str,
    ) -> Result<Option<RunRecord>, CoordinatorError> {
        let Some(run) = self.store.get_run(run_id)? else {
            return Ok(None);
        };
        let current = index_value(&run, metric).is_some_and(|v| v.to_bits() == value.to_bits());
        Ok(current.then_some(run))
    }

    /// One page of runs selected by `query`, in its order.
    pub fn query_runs(&self, query: &RunQuery) -> Result<RunPage, CoordinatorError> {
        let sweeps = self.sweep_map()?;
        if !query.sweep_id.is_empty() && !sweeps.contains_key(&query.sweep_id) {
            return Err(CoordinatorError::NotFound {
                kind: "sweep",
                id: query.sweep_id.clone(),
            });
        }
        let indexed = match (query.project(), query.sort.first()) {
            (Some(project), Some(primary)) if query.limit > 0 && query.sweep_id.is_empty() => {
                self.indexed_page(query, &sweeps, project, primary)?
            }
            _ => None,
        };
        let (page, more) = match indexed {
            Some(page) => page,
            None => {
                // Streamed: memory holds about two pages, not every run.
                let mut collector =
                    query::PageCollector::new(&query.sort, query.after.clone(), query.limit);
                self.scan(query, &sweeps, None, &mut |key, run| {
                    collector.offer(key, run)
                })?;
                collector.finish()
            }
        };
        let next_cursor = match (more, page.last()) {
            (true, Some((last, _))) => Some(
                Cursor {
                    sort: query.sort_text.clone(),
                    last: last.clone(),
                }
                .encode(),
            ),
            _ => None,
        };
        Ok(RunPage {
            runs: page.into_iter().map(|(_, run)| run).collect(),
            next_cursor,
        })
    }

    /// Every run the query admits (optionally only those without a value for `missing`),
    /// offered to `collect` one at a time as the store is scanned.
    fn scan(
        &self,
        query: &RunQuery,
        sweeps: &HashMap<String, SweepRecord>,
        missing: Option<&Field>,
        collect: &mut dyn FnMut(RowKey, RunRecord),
    ) -> Result<(), CoordinatorError> {
        let prefix = (!query.sweep_id.is_empty()).then_some(query.sweep_id.as_str());
        self.store.for_each_run(prefix, &mut |run| {
            let sweep = sweeps.get(&run.sweep_id);
            if missing.is_some_and(|field| Facts { run: &run, sweep }.value(field).is_some()) {
                return Ok(());
            }
            if !query.admits(&run, sweep) {
                return Ok(());
            }
            let key = row_key(
                &Facts { run: &run, sweep },
                &query.sort,
                position(&run, sweeps),
            );
            collect(key, run);
            Ok(())
        })
    }

    /// One page of a query whose first sort key is a metric or a parameter, and whether
    /// more follow, from that key's index of `project`: runs are taken in index order
    /// until the page plus one is full (and, unless the index order is the listing's
    /// whole order, until the first key's value changes after that, since the rest of a
    /// tie may sort earlier), then the runs without the value are scanned for when the
    /// index runs out. Memory holds about two pages, however long a tie. `None` when
    /// there is no index for the key (the caller scans).
    fn indexed_page(
        &self,
        query: &RunQuery,
        sweeps: &HashMap<String, SweepRecord>,
        project: &str,
        primary: &SortKey,
    ) -> Result<Option<SortedPage>, CoordinatorError> {
        // The cursor's first sort value; `Some(None)`: the cursor is past every run that
        // has one, among the runs without it.
        let after_value: Option<Option<Value>> = query
            .after
            .as_ref()
            .map(|after| after.values.first().cloned().flatten());
        let in_missing_region = matches!(after_value, Some(None));
        let mut collector =
            query::PageCollector::new(&query.sort, query.after.clone(), query.limit);
        // Runs taken from the index after the cursor.
        let mut taken = 0usize;
        if !in_missing_region {
            // Entries `(value, run id)` in listing order of the first key, and whether
            // that order is the whole listing order (ties included).
            type Walk<'w> =
                Box<dyn Iterator<Item = Result<(Value, String), CoordinatorError>> + 'w>;
            let (walk, exact): (Walk<'_>, bool) = match &primary.field {
                Field::Metric(metric) => {
                    let from = match &after_value {
                        Some(Some(Value::Number(value))) => Some(*value),
                        _ => None,
                    };
                    let walk = self
                        .metric_walk(Some(project), metric, primary.descending, from)?
                        .map(|entry| entry.map(|(value, id)| (Value::Number(value), id)));
                    (Box::new(walk), false)
                }
                Field::Param(param) => {
                    let exact = query.sort.len() == 1;
                    // With more sort keys, the cursor's tie group is walked from its
                    // start: a run before the cursor's position may follow it there.
                    let group_start = Position {
                        sweep_created_ms: i64::MIN,
                        sweep_id: String::new(),
                        index: 0,
                    };
                    let from = match (&after_value, &query.after) {
                        (Some(Some(value)), Some(after)) if exact => Some((value, &after.position)),
                        (Some(Some(value)), Some(_)) => Some((value, &group_start)),
                        _ => None,
                    };
                    let Some(walk) =
                        self.store
                            .param_index(project, param, primary.descending, from)
                    else {
                        return Ok(None);
                    };
                    let walk = walk.map(|entry| entry.map(|e| (e.value, e.run_id)));
                    (Box::new(walk), exact)
                }
                _ => return Ok(None),
            };
            let mut last_value: Option<Value> = None;
            for entry in walk {
                let (value, run_id) = entry?;
                if taken > query.limit
                    && (exact
                        || last_value
                            .as_ref()
                            .is_some_and(|last| last.total_cmp(&value) != Ordering::Equal))
                {
                    break;
                }
                let Some(run) = self.indexed_field_run(&primary.field, &value, &run_id)? else {
                    continue;
                };
                let sweep = sweeps.get(&run.sweep_id);
                if !query.admits(&run, sweep) {
                    continue;
                }
                let key = row_key(
                    &Facts { run: &run, sweep },
                    &query.sort,
                    position(&run, sweeps),
                );
                if let Some(after) = &query.after {
                    if compare_rows(&query.sort, &key, after) != Ordering::Greater {
                        continue;
                    }
                }
                last_value = Some(value);
                taken += 1;
                collector.offer(key, run);
            }
        }
        if taken <= query.limit {
            self.scan(query, sweeps, Some(&primary.field), &mut |key, run| {
                collector.offer(key, run)
            })?;
        }
        Ok(Some(collector.finish()))
    }

    /// The run a metric or parameter index entry points at, when the entry is current.
    fn indexed_field_run(
        &self,
        field: &Field,
        value: &Value,
        run_id: &str,
    ) -> Result<Option<RunRecord>, CoordinatorError> {
        match (field, value) {
            (Field::Metric(metric), Value::Number(number)) => {
                self.indexed_run(metric, *number, run_id)
            }
            (Field::Param(param), _) => {
                let Some(run) = self.store.get_run(run_id)? else {
                    return Ok(None);
                };
                let current = run.params.get(param).is_some_and(|current| {
                    param_query_value(current).total_cmp(value) == Ordering::Equal
                });
                Ok(current.then_some(run))
            }
            _ => Ok(None),
        }
    }

    /// Ranks the runs of a project, or of every project (see [`LeaderboardQuery`]).
    pub fn leaderboard(&self, query: &LeaderboardQuery) -> Result<Leaderboard, CoordinatorError> {
        let sweeps = self.sweep_map()?;
        let project = query.project.as_deref();
        let mut project_sweeps: Vec<&SweepRecord> = sweeps
            .values()
            .filter(|s| project.is_none_or(|p| s.spec.project == p))
            .collect();
        project_sweeps.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.id.cmp(&a.id)));
        let (metric, goal) = if query.tasks_average {
            (TASKS_AVG_METRIC.to_string(), Goal::Maximize)
        } else if !query.metric.is_empty() {
            let from_sweeps = project_sweeps
                .iter()
                .filter_map(|s| s.spec.metric.as_ref())
                .find(|m| m.name == query.metric)
                .map(|m| m.goal);
            (
                query.metric.clone(),
                query.goal.or(from_sweeps).unwrap_or(Goal::Maximize),
            )
        } else {
            let Some(objective) = project_sweeps.iter().find_map(|s| s.spec.metric.as_ref()) else {
                let missing = match project {
                    Some(project) => format!("project {project:?} has no sweep with a metric"),
                    None => "no sweep has a metric".to_string(),
                };
                return Err(CoordinatorError::InvalidArgument(format!(
                    "{missing}; pass --metric NAME or --tasks avg"
                )));
            };
            (objective.name.clone(), query.goal.unwrap_or(objective.goal))
        };
        let descending = goal == Goal::Maximize;
        let mut rows: Vec<LeaderboardRow> = Vec::new();
        let mut groups: HashSet<String> = HashSet::new();
        let mut last_value: Option<f64> = None;
        for entry in self.metric_walk(project, &metric, descending, None)? {
            let (value, run_id) = entry?;
            if rows.len() >= query.limit
                && last_value.is_some_and(|l| l.to_bits() != value.to_bits())
            {
                break;
            }
            let Some(run) = self.indexed_run(&metric, value, &run_id)? else {
                continue;
            };
            if !query.statuses.contains(&run.status) {
                continue;
            }
            let group = match query.per {
                Per::Run => None,
                Per::Sweep => Some(run.sweep_id.clone()),
                Per::Model => match run.params.get("model") {
                    Some(model) => Some(model.to_string()),
                    None => continue,
                },
            };
            if let Some(group) = group {
                if !groups.insert(group) {
                    continue;
                }
            }
            last_value = Some(value);
            let tasks = if query.tasks_average {
                query::task_scores(&run.metric_values())
            } else {
                Default::default()
            };
            let sweep_name = sweeps
                .get(&run.sweep_id)
                .map(|s| s.spec.name.clone())
                .unwrap_or_default();
            rows.push(LeaderboardRow {
                run,
                sweep_name,
                value,
                tasks,
            });
        }
        // Ties: earlier runs first.
        rows.sort_by(|a, b| {
            let by_value = a.value.total_cmp(&b.value);
            let by_value = if descending {
                by_value.reverse()
            } else {
                by_value
            };
            by_value
                .then(a.run.created_ms.cmp(&b.run.created_ms))
                .then(a.run.id.cmp(&b.run.id))
        });
        rows.truncate(query.limit);
        let metric = if query.tasks_average {
            "tasks:avg".to_string()
        } else {
            metric
        };
        Ok(Leaderboard { metric, goal, rows })
    }

    /// Adds the card fields to a `GetRun` answer: the sweep's name, owner, objective and
    /// git state, the best value of the objective and min/max of every metric (from the
    /// run's stored summaries; from the points in `response` for metrics without one).
    pub fn fill_card(
        &self,
        run: &RunRecord,
        response: &mut pb::GetRunResponse,
    ) -> Result<(), CoordinatorError> {
        let sweep = self.store.get_sweep(&run.sweep_id)?;
        let mut minimum: HashMap<String, f64> = HashMap::new();
        let mut maximum: HashMap<String, f64> = HashMap::new();
        for (name, summary) in &run.summaries {
            minimum.insert(name.clone(), summary.min);
            maximum.insert(name.clone(), summary.max);
        }
        for attempt in &response.metrics {
            for point in &attempt.points {
                for (name, value) in &point.values {
                    if run.summaries.contains_key(name) {
                        continue;
                    }
                    let low = minimum.entry(name.clone()).or_insert(*value);
                    *low = low.min(*value);
                    let high = maximum.entry(name.clone()).or_insert(*value);
                    *high = high.max(*value);
                }
            }
        }
        if let Some(sweep) = sweep {
            response.sweep_name = sweep.spec.name.clone();
            response.owner = sweep.owner.clone();
            response.git_commit = sweep.git_commit.clone();
            response.git_dirty = sweep.git_dirty;
            if let Some(metric) = &sweep.spec.metric {
                response.sweep_metric = metric.name.clone();
                response.sweep_goal = metric.goal.as_str().to_string();
                response.best_value = match metric.goal {
                    Goal::Maximize => maximum.get(&metric.name).copied(),
                    Goal::Minimize => minimum.get(&metric.name).copied(),
                };
            }
        }
        response.min_metrics = minimum;
        response.max_metrics = maximum;
        Ok(())
    }

    /// Marks everything stored of the run's current attempt as seen (a watch of only
    /// what is new), reading the points' keys page by page.
    fn watch_skip(&self, run_id: &str, seen: &mut WatchState) -> Result<(), CoordinatorError> {
        let run = self.run_record(run_id)?;
        let Some(attempt) = run.current_attempt() else {
            return Ok(());
        };
        seen.attempt = attempt.number;
        self.each_point(&run.id, attempt.number, None, |key, _| {
            seen.after = Some(key);
            seen.points += 1;
        })?;
        seen.lines = attempt.log_lines;
        Ok(())
    }

    /// What a watcher has not seen yet of a run: the current attempt's points and log
    /// lines past `seen`, and the run's status.
    fn run_delta(
        &self,
        run_id: &str,
        seen: &mut WatchState,
        card: bool,
    ) -> Result<(RunStatus, Option<pb::WatchRunResponse>), CoordinatorError> {
        let run = self.run_record(run_id)?;
        let Some(attempt) = run.current_attempt() else {
            return Ok((run.status, None));
        };
        if attempt.number != seen.attempt {
            *seen = WatchState {
                attempt: attempt.number,
                status: seen.status,
                ..WatchState::default()
            };
        }
        let mut downsampled = false;
        seen.behind = false;
        let points = if attempt.metric_points > seen.points {
            if seen.after.is_none() && card {
                // What was stored before the watch: the card's bounded view of it.
                let card = self.card_series(&run.id, attempt.number)?;
                seen.points = card.total;
                seen.after = card.last;
                downsampled = card.downsampled;
                card.points.iter().map(convert::point_to_pb).collect()
            } else {
                // Only what arrived since, read from where the last message ended.
                let fresh = self.store.metrics_after(
                    &run.id,
                    attempt.number,
                    seen.after,
                    WATCH_POINTS_PER_MESSAGE,
                    WATCH_BYTES_PER_MESSAGE,
                )?;
                seen.points += fresh.len() as u64;
                if let Some((key, _)) = fresh.last() {
                    seen.after = Some(*key);
                }
                seen.behind = attempt.metric_points > seen.points && !fresh.is_empty();
                fresh
                    .iter()
                    .map(|(_, point)| convert::point_to_pb(point))
                    .collect()
            }
        } else {
            Vec::new()
        };
        let lines = if attempt.log_lines > seen.lines {
            let wanted = ((attempt.log_lines - seen.lines) as usize).min(WATCH_BACKLOG_LINES);
            let tail = self.store.log_tail(&run.id, attempt.number, wanted)?;
            seen.lines = attempt.log_lines;
            tail.iter().map(convert::log_to_pb).collect()
        } else {
            Vec::new()
        };
        let changed = !points.is_empty() || !lines.is_empty() || seen.status != Some(run.status);
        seen.status = Some(run.status);
        let message = changed.then(|| pb::WatchRunResponse {
            attempt: attempt.number,
            points,
            lines,
            status: convert::run_status_to_pb(run.status) as i32,
            downsampled,
            encoded_points: Default::default(),
        });
        Ok((run.status, message))
    }
}

/// The metric value (or tasks average) a run has under an index name.
fn index_value(run: &RunRecord, metric: &str) -> Option<f64> {
    if metric == TASKS_AVG_METRIC {
        query::tasks_average(&run.metric_values())
    } else {
        run.metric_value(metric)
    }
}

/// What a `WatchRun` stream has already sent.
#[derive(Default)]
struct WatchState {
    attempt: u32,
    points: u64,
    /// The last point sent (or skipped): the next message starts after it.
    after: Option<PointKey>,
    /// More points were already stored than the last message carried.
    behind: bool,
    lines: u64,
    status: Option<RunStatus>,
}

impl std::fmt::Debug for WatchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "attempt {} points {} lines {}",
            self.attempt, self.points, self.lines
        )
    }
}

type Sender<T> = mpsc::Sender<Result<T, tonic::Status>>;

/// What one run's feed publishes after a change: the points and log lines of the
/// current attempt that were stored since its previous delta, and the run's status.
/// Read once per change for every watcher of the run.
#[derive(Debug)]
pub(crate) struct FeedDelta {
    attempt: u32,
    /// The key of the last point before this delta's first (None: the attempt's start)
    /// and of its last point; the points in between, in order.
    from: Option<PointKey>,
    to: Option<PointKey>,
    /// The points, encoded once for every watcher's message ([`pb::encode_points`]).
    points: prost::bytes::Bytes,
    point_count: u64,
    /// The attempt's log line count after this delta; `lines` are its last lines.
    lines_to: u64,
    lines: Vec<pb::LogLine>,
    status: RunStatus,
}

/// The feeds of watched runs: one reader per run, however many watch it.
pub(crate) type Feeds = std::sync::Mutex<HashMap<String, broadcast::Sender<Arc<FeedDelta>>>>;

/// Deltas a feed keeps for slow watchers; one that falls further behind reads what it
/// missed from the store itself.
const FEED_CAPACITY: usize = 64;

/// A receiver of `run_id`'s feed, starting the feed's reader if the run has none.
fn subscribe(
    shared: &Arc<Shared>,
    run_id: &str,
    sweep_id: &str,
) -> broadcast::Receiver<Arc<FeedDelta>> {
    let mut feeds = shared.feeds.lock().expect("feeds");
    if let Some(sender) = feeds.get(run_id) {
        return sender.subscribe();
    }
    let (sender, receiver) = broadcast::channel(FEED_CAPACITY);
    feeds.insert(run_id.to_string(), sender.clone());
    drop(feeds);
    tokio::spawn(run_feed(
        shared.clone(),
        run_id.to_string(),
        sweep_id.to_string(),
        sender,
    ));
    receiver
}

/// A watch state that has seen everything stored of the run's current attempt.
async fn everything_seen(shared: &Shared, run_id: &str) -> Result<WatchState, CoordinatorError> {
    let id = run_id.to_string();
    shared
        .read(move |q| {
            let mut state = WatchState::default();
            q.watch_skip(&id, &mut state)?;
            Ok(state)
        })
        .await
}

/// Ends `run_id`'s feed if no watcher listens to `sender` (checked under the lock a new
/// watcher subscribes under). True when it ended.
fn unwatched(shared: &Shared, run_id: &str, sender: &broadcast::Sender<Arc<FeedDelta>>) -> bool {
    let mut feeds = shared.feeds.lock().expect("feeds");
    if sender.receiver_count() > 0 {
        return false;
    }
    feeds.remove(run_id);
    true
}

/// Waits for a change of `sweep_id` (a lagging receiver counts as one). False when the
/// coordinator stops.
pub(crate) async fn next_change(changes: &mut broadcast::Receiver<String>, sweep_id: &str) -> bool {
    loop {
        match changes.recv().await {
            Ok(changed) if changed == sweep_id => return true,
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(_)) => return true,
            Err(broadcast::error::RecvError::Closed) => return false,
        }
    }
}

/// Waits for a change of `sweep_id` (or 2 s). False when the coordinator stops.
async fn sweep_changed(changes: &mut broadcast::Receiver<String>, sweep_id: &str) -> bool {
    !matches!(
        tokio::time::timeout(Duration::from_secs(2), next_change(changes, sweep_id)).await,
        Ok(false)
    )
}

/// The reader of one run's feed: after every change of the run's sweep it reads what
/// the run stored since its previous delta and publishes it, until the run ends or no
/// one watches it any more.
async fn run_feed(
    shared: Arc<Shared>,
    run_id: String,
    sweep_id: String,
    sender: broadcast::Sender<Arc<FeedDelta>>,
) {
    let mut changes = shared.changes.subscribe();
    // The feed starts at what is stored now: watchers read what came before themselves.
    let mut seen = everything_seen(&shared, &run_id).await.unwrap_or_default();
    loop {
        if !seen.behind && !sweep_changed(&mut changes, &sweep_id).await {
            break;
        }
        let id = run_id.clone();
        let mut state = std::mem::take(&mut seen);
        let before = (state.attempt, state.after);
        let result = shared
            .read(move |q| {
                let delta = q.run_delta(&id, &mut state, false)?;
                Ok((delta, state))
            })
            .await;
        let Ok(((status, message), state)) = result else {
            break;
        };
        seen = state;
        let listened = match message {
            Some(message) => {
                let from = if before.0 == message.attempt {
                    before.1
                } else {
                    None
                };
                let delta = FeedDelta {
                    attempt: message.attempt,
                    from,
                    to: seen.after,
                    points: pb::encode_points(&message.points),
                    point_count: message.points.len() as u64,
                    lines_to: seen.lines,
                    lines: message.lines,
                    status,
                };
                sender.send(Arc::new(delta)).is_ok()
            }
            None => sender.receiver_count() > 0,
        };
        // No one listens: stop, unless someone subscribed meanwhile.
        if !listened && !seen.behind && unwatched(&shared, &run_id, &sender) {
            return;
        }
        if status.is_terminal() {
            break;
        }
    }
    let mut feeds = shared.feeds.lock().expect("feeds");
    if feeds.get(&run_id).is_some_and(|s| s.same_channel(&sender)) {
        feeds.remove(&run_id);
    }
}

/// Feeds a `WatchRun` stream: the run's card view now, then the deltas of the run's
/// feed (shared by every watcher of the run), reading from the store itself only what
/// it missed (it joined between two deltas, or fell behind), until the run ends.
pub(crate) fn spawn_watch(
    shared: Arc<Shared>,
    run_id: String,
    only_new: bool,
    tx: Sender<pb::WatchRunResponse>,
    slot: crate::service::WatchSlot,
) {
    tokio::spawn(async move {
        let _slot = slot;
        let sweep_id = {
            let id = run_id.clone();
            match shared.read(move |q| q.run_sweep(&id)).await {
                Ok(sweep_id) => sweep_id,
                Err(error) => {
                    let _ = tx.send(Err(error.into())).await;
                    return;
                }
            }
        };
        // Subscribed before the first read: no delta published after it is missed.
        let mut feed = subscribe(&shared, &run_id, &sweep_id);
        let mut seen = WatchState::default();
        if only_new {
            if let Ok(state) = everything_seen(&shared, &run_id).await {
                seen = state;
                seen.status = None;
            }
        }
        // Read from the store until caught up, then follow the feed.
        let mut own_read = true;
        let mut feeds_closed = 0u32;
        loop {
            if own_read {
                // Watchers' own reads (the first builds the attempt's card from the whole
                // series) take turns, so that however many watch, other requests' reads
                // are not queued behind theirs.
                let _permit = shared.card_reads.acquire().await.expect("never closed");
                let id = run_id.clone();
                let mut state = std::mem::take(&mut seen);
                let result = shared
                    .read(move |q| {
                        let delta = q.run_delta(&id, &mut state, true)?;
                        Ok((delta, state))
                    })
                    .await;
                let ((status, message), state) = match result {
                    Ok(answer) => answer,
                    Err(error) => {
                        let _ = tx.send(Err(error.into())).await;
                        return;
                    }
                };
                seen = state;
                if let Some(message) = message {
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                if status.is_terminal() {
                    return;
                }
                own_read = seen.behind;
                continue;
            }
            // The client going away ends the watch (and frees its slot) even while
            // the run is quiet.
            let received = tokio::select! {
                _ = tx.closed() => return,
                received = feed.recv() => received,
            };
            let delta = match received {
                Ok(delta) => delta,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    own_read = true;
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    // The feed ended: the run ended (the read says so and the watch
                    // ends), or its reader failed. A new feed follows a run that goes
                    // on, once; a second feed that ends without a delta ends the watch.
                    if tx.is_closed() || feeds_closed > 0 {
                        let _ = tx
                            .send(Err(tonic::Status::unavailable(
                                "the run's changes cannot be read; watch it again",
                            )))
                            .await;
                        return;
                    }
                    feeds_closed += 1;
                    feed = subscribe(&shared, &run_id, &sweep_id);
                    own_read = true;
                    continue;
                }
            };
            feeds_closed = 0;
            match apply_delta(&mut seen, &delta) {
                Some(message) => {
                    if let Some(message) = message {
                        if tx.send(Ok(message)).await.is_err() {
                            return;
                        }
                    }
                    if delta.status.is_terminal() {
                        return;
                    }
                }
                // A gap between what this watcher saw and the delta: read it.
                None => own_read = true,
            }
            if tx.is_closed() {
                return;
            }
        }
    });
}

/// The message a watcher whose state is `seen` sends for `delta`: `Some(None)` when it
/// brings nothing new, `None` when the watcher lacks points between its last one and
/// the delta's first, or the delta is of another attempt (it must read from the store).
fn apply_delta(seen: &mut WatchState, delta: &FeedDelta) -> Option<Option<pb::WatchRunResponse>> {
    if delta.attempt != seen.attempt {
        return None;
    }
    let points = if seen.after == delta.from {
        seen.after = delta.to;
        seen.points += delta.point_count;
        delta.points.clone()
    } else if delta.point_count == 0 || seen.after >= delta.to {
        // Already read by the watcher itself.
        prost::bytes::Bytes::new()
    } else {
        return None;
    };
    let lines: Vec<pb::LogLine> = if delta.lines_to > seen.lines {
        let new = (delta.lines_to - seen.lines) as usize;
        let skip = delta.lines.len().saturating_sub(new);
        delta.lines[skip..].to_vec()
    } else {
        Vec::new()
    };
    seen.lines = seen.lines.max(delta.lines_to);
    let changed = !points.is_empty() || !lines.is_empty() || seen.status != Some(delta.status);
    seen.status = Some(delta.status);
    Some(changed.then(|| pb::WatchRunResponse {
        attempt: delta.attempt,
        points: Vec::new(),
        encoded_points: points,
        lines,
        status: convert::run_status_to_pb(delta.status) as i32,
        downsampled: false,
    }))
}

/// Feeds an `ExportRuns` stream page by page.
pub(crate) fn spawn_export(shared: Arc<Shared>, mut query: RunQuery, tx: Sender<pb::Run>) {
    tokio::spawn(async move {
        let mut remaining = query.limit;
        loop {
            let page_size = if remaining == 0 {
                EXPORT_PAGE
            } else {
                remaining.min(EXPORT_PAGE)
            };
            query.limit = page_size;
            let moved = query;
            let result = shared
                .read(move |q| {
                    let page = q.query_runs(&moved);
                    Ok((page, moved))
                })
                .await;
            let (page, returned) = match result {
                Ok(answer) => answer,
                Err(error) => {
                    let _ = tx.send(Err(error.into())).await;
                    return;
                }
            };
            query = returned;
            let page = match page {
                Ok(page) => page,
                Err(error) => {
                    let _ = tx.send(Err(error.into())).await;
                    return;
                }
            };
            let count = page.runs.len();
            for run in &page.runs {
                if tx.send(Ok(convert::run_to_pb(run))).await.is_err() {
                    return;
                }
            }
            if remaining > 0 {
                remaining -= count.min(remaining);
                if remaining == 0 {
                    return;
                }
            }
            let Some(cursor) = page.next_cursor else {
                return;
            };
            query.after = Cursor::decode(&cursor).ok().map(|c| c.last);
        }
    });
}

impl Queries {
    /// The sweep id of a run (`NOT_FOUND` when there is no such run).
    pub fn run_sweep(&self, run_id: &str) -> Result<String, CoordinatorError> {
        Ok(self.run_record(run_id)?.sweep_id)
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
                run: Some(convert::run_to_pb(&row.run)),
                sweep_name: row.sweep_name,
                value: row.value,
                tasks: row.tasks.into_iter().collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
