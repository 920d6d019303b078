//! The team's shared history: run queries (`--where`, `--sort`, cursor pages) and the
//! leaderboard. Their streams (export, watch) are in [`crate::watch`]; requests become
//! these queries in [`crate::convert`].
//!
//! Reads go straight to the store on blocking threads, like [`Queries`]; the only write
//! to runs from a client (notes and tags) goes through the scheduler
//! ([`crate::scheduler::Event::UpdateRun`]).
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

use ladder_query::{
    self as query, compare_rows, row_key, Cursor, Expr, Field, Position, RowKey, RunFacts, SortKey,
    Value,
};
use ladder_spec::Goal;
use ladder_types::RunStatus;

use super::{Queries, RunCard};
use crate::error::CoordinatorError;
use crate::model::{RunRecord, SweepRecord};
use crate::store::{param_query_value, IndexWalk, TASKS_AVG_METRIC};

/// Most rows one leaderboard returns.
pub const MAX_LEADERBOARD_ROWS: usize = 1000;
/// Rows a leaderboard returns when not told.
pub const DEFAULT_LEADERBOARD_ROWS: usize = 20;

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
    /// run's stored summaries; from the card's points for metrics without one).
    pub fn fill_card(&self, card: &mut RunCard) -> Result<(), CoordinatorError> {
        let run = &card.run;
        let sweep = self.store.get_sweep(&run.sweep_id)?;
        let mut minimum: HashMap<String, f64> = HashMap::new();
        let mut maximum: HashMap<String, f64> = HashMap::new();
        for (name, summary) in &run.summaries {
            minimum.insert(name.clone(), summary.min);
            maximum.insert(name.clone(), summary.max);
        }
        for attempt in &card.series {
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
            card.sweep_name = sweep.spec.name.clone();
            card.owner = sweep.owner.clone();
            card.git_commit = sweep.git_commit.clone();
            card.git_dirty = sweep.git_dirty;
            if let Some(metric) = &sweep.spec.metric {
                card.sweep_metric = metric.name.clone();
                card.sweep_goal = metric.goal.as_str().to_string();
                card.best_value = match metric.goal {
                    Goal::Maximize => maximum.get(&metric.name).copied(),
                    Goal::Minimize => minimum.get(&metric.name).copied(),
                };
            }
        }
        card.min_metrics = minimum;
        card.max_metrics = maximum;
        Ok(())
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

impl Queries {
    /// The sweep id of a run (`NOT_FOUND` when there is no such run).
    pub fn run_sweep(&self, run_id: &str) -> Result<String, CoordinatorError> {
        Ok(self.run_record(run_id)?.sweep_id)
    }
}

#[cfg(test)]
mod tests;
