//! The read path: every read-only query over the store, called from the gRPC adapters
//! on blocking threads; reads never go through the scheduler, so they do not slow
//! dispatch down. This file holds [`Queries`] and the reads of one sweep, one run (its
//! card) and its metric points; `runs` the run queries (`runs ls`, export) and the
//! leaderboard, by the store's indexes where one serves.

use std::collections::HashMap;
use std::sync::Arc;

use ladder_types::RunStatus;

use crate::downsample;
use crate::error::CoordinatorError;
use crate::model::{RunRecord, StoredLogLine, StoredPoint, SweepRecord};
use crate::store::{PointKey, Store};

/// How many of a sweep's runs are in each status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCounts {
    pub queued: u64,
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    pub stopped: u64,
    pub cancelled: u64,
}

impl RunCounts {
    /// Counts `runs` by status.
    pub fn of(runs: &[RunRecord]) -> RunCounts {
        let mut counts = RunCounts::default();
        for run in runs {
            match run.status {
                RunStatus::Queued => counts.queued += 1,
                RunStatus::Running => counts.running += 1,
                RunStatus::Completed => counts.completed += 1,
                RunStatus::Failed => counts.failed += 1,
                RunStatus::Stopped => counts.stopped += 1,
                RunStatus::Cancelled => counts.cancelled += 1,
            }
        }
        counts
    }
}

/// A sweep as it is read: its record and its runs counted by status.
#[derive(Debug, Clone)]
pub struct SweepView {
    pub record: SweepRecord,
    pub counts: RunCounts,
}

impl RunCard {
    /// The card of `run` with nothing else filled in.
    pub fn new(run: RunRecord) -> RunCard {
        RunCard {
            run,
            series: Vec::new(),
            log_tail: Vec::new(),
            log_lines: 0,
            sweep_name: String::new(),
            owner: String::new(),
            git_commit: String::new(),
            git_dirty: false,
            sweep_metric: String::new(),
            sweep_goal: String::new(),
            best_value: None,
            min_metrics: HashMap::new(),
            max_metrics: HashMap::new(),
        }
    }
}

impl SweepView {
    /// Whether the sweep has ended (completed or cancelled).
    pub fn ended(&self) -> bool {
        self.record.status.is_terminal()
    }
}

/// One page of an attempt's metric points.
#[derive(Debug, Clone)]
pub struct PointsPage {
    pub attempt: u32,
    pub points: Vec<StoredPoint>,
    /// Cursor of the next page; `None` after the last one.
    pub next_cursor: Option<String>,
}

/// The card's view of one attempt's metric series.
#[derive(Debug, Clone)]
pub struct AttemptSeries {
    pub attempt: u32,
    pub points: Vec<StoredPoint>,
    /// Points stored for the attempt.
    pub total_points: u64,
    /// Whether a series was cut (the card is not every point).
    pub downsampled: bool,
}

/// What the run card shows: the run, its series and log tail, and what its sweep
/// says about it.
#[derive(Debug, Clone)]
pub struct RunCard {
    pub run: RunRecord,
    pub series: Vec<AttemptSeries>,
    pub log_tail: Vec<StoredLogLine>,
    /// Log lines stored for the current attempt.
    pub log_lines: u64,
    pub sweep_name: String,
    pub owner: String,
    pub git_commit: String,
    pub git_dirty: bool,
    /// The sweep's objective and goal (empty without one).
    pub sweep_metric: String,
    pub sweep_goal: String,
    /// The best value of the objective the run reached.
    pub best_value: Option<f64>,
    /// Least and greatest value of every metric.
    pub min_metrics: HashMap<String, f64>,
    pub max_metrics: HashMap<String, f64>,
}

/// What [`Queries::card_series`] returns.
pub(crate) struct CardSeries {
    pub points: Vec<crate::model::StoredPoint>,
    /// Whether a series was cut (the card is not every point).
    pub downsampled: bool,
    /// Points stored for the attempt when it was read.
    pub total: u64,
    /// Key of the last of them.
    pub last: Option<PointKey>,
}

/// Reads a `ListSweeps` cursor (`CREATED_MS.ID` of the last sweep of a page).
fn parse_sweep_cursor(cursor: &str) -> Result<(i64, String), CoordinatorError> {
    cursor
        .split_once('.')
        .and_then(|(created, id)| Some((created.parse().ok()?, id.to_string())))
        .ok_or_else(|| {
            CoordinatorError::InvalidArgument(format!(
                "cursor {cursor:?} is not a cursor of ListSweeps"
            ))
        })
}

/// Default number of log lines `GetRun` returns.
pub const DEFAULT_LOG_TAIL: usize = 50;
/// Most log lines one `GetRun` returns.
pub const MAX_LOG_TAIL: usize = 10_000;

#[derive(Clone)]
pub struct Queries {
    pub(crate) store: Arc<dyn Store>,
}

impl Queries {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Queries { store }
    }

    fn sweep_record(&self, sweep_id: &str) -> Result<SweepRecord, CoordinatorError> {
        self.store
            .get_sweep(sweep_id)?
            .ok_or_else(|| CoordinatorError::NotFound {
                kind: "sweep",
                id: sweep_id.to_string(),
            })
    }

    /// Who owns the sweep `sweep_id` (empty: no owner recorded).
    pub fn sweep_owner(&self, sweep_id: &str) -> Result<String, CoordinatorError> {
        Ok(self.sweep_record(sweep_id)?.owner)
    }

    /// The card's view of one attempt's metric series (see [`downsample`]), read twice
    /// from the store page by page rather than held whole, the second pass stopping at
    /// the last point the first one saw.
    pub(crate) fn card_series(
        &self,
        run_id: &str,
        attempt: u32,
    ) -> Result<CardSeries, CoordinatorError> {
        let mut lengths = downsample::Lengths::default();
        let mut total = 0u64;
        let mut last = None;
        self.each_point(run_id, attempt, None, |key, point| {
            lengths.count(point);
            total += 1;
            last = Some(key);
        })?;
        let mut sampler = downsample::Sampler::new(&lengths);
        if let Some(last) = last {
            self.each_point(run_id, attempt, Some(last), |_, point| sampler.feed(point))?;
        }
        let (points, downsampled) = sampler.finish();
        Ok(CardSeries {
            points,
            downsampled,
            total,
            last,
        })
    }

    /// Calls `visit` on every point of the attempt in report order, up to `upto`
    /// (included) when given, reading the store a page at a time.
    pub(crate) fn each_point(
        &self,
        run_id: &str,
        attempt: u32,
        upto: Option<PointKey>,
        mut visit: impl FnMut(PointKey, &crate::model::StoredPoint),
    ) -> Result<(), CoordinatorError> {
        const PAGE: usize = 10_000;
        let mut after = None;
        loop {
            let page = self
                .store
                .metrics_after(run_id, attempt, after, PAGE, usize::MAX)?;
            for (key, point) in &page {
                if upto.is_some_and(|upto| *key > upto) {
                    return Ok(());
                }
                visit(*key, point);
            }
            match page.last() {
                Some((key, _)) if page.len() == PAGE => after = Some(*key),
                _ => return Ok(()),
            }
        }
    }

    /// The stored record of a run (`NOT_FOUND` when there is no such run).
    pub fn run_record(&self, run_id: &str) -> Result<RunRecord, CoordinatorError> {
        self.store
            .get_run(run_id)?
            .ok_or_else(|| CoordinatorError::NotFound {
                kind: "run",
                id: run_id.to_string(),
            })
    }

    /// Who owns the run `run_id`: the owner of its sweep.
    pub fn run_owner(&self, run_id: &str) -> Result<String, CoordinatorError> {
        let run = self.run_record(run_id)?;
        self.sweep_owner(&run.sweep_id)
    }

    /// The sweep `sweep_id` with its run counts.
    pub fn sweep(&self, sweep_id: &str) -> Result<SweepView, CoordinatorError> {
        let record = self.sweep_record(sweep_id)?;
        self.sweep_with_counts(record)
    }

    /// `record` with its run counts.
    pub fn sweep_with_counts(&self, record: SweepRecord) -> Result<SweepView, CoordinatorError> {
        let runs = self.store.list_runs(Some(&record.id))?;
        Ok(SweepView {
            counts: RunCounts::of(&runs),
            record,
        })
    }

    /// One page of sweeps (of `project`, or of all when empty), oldest first, starting
    /// after `cursor` (a `next_cursor` of an earlier page; empty: from the first).
    /// Returns the page and the cursor of the next one.
    pub fn sweeps_page(
        &self,
        project: &str,
        cursor: &str,
        page_size: usize,
    ) -> Result<(Vec<SweepView>, Option<String>), CoordinatorError> {
        let after = if cursor.is_empty() {
            None
        } else {
            Some(parse_sweep_cursor(cursor)?)
        };
        let mut sweeps = Vec::new();
        let mut next_cursor = None;
        for record in self.store.list_sweeps()? {
            if !project.is_empty() && record.spec.project != project {
                continue;
            }
            if let Some((created_ms, id)) = &after {
                if (record.created_ms, record.id.as_str()) <= (*created_ms, id.as_str()) {
                    continue;
                }
            }
            if sweeps.len() == page_size {
                next_cursor = sweeps.last().map(|last: &SweepView| {
                    format!("{}.{}", last.record.created_ms, last.record.id)
                });
                break;
            }
            sweeps.push(self.sweep_with_counts(record)?);
        }
        Ok((sweeps, next_cursor))
    }

    /// One page of an attempt's metric points (the latest attempt when `attempt` is 0).
    pub fn metric_points(
        &self,
        run_id: &str,
        attempt: u32,
        cursor: &str,
        page_size: usize,
    ) -> Result<PointsPage, CoordinatorError> {
        let run = self.run_record(run_id)?;
        let attempt = if attempt == 0 {
            run.current_attempt().map_or(1, |a| a.number)
        } else if run.attempts.iter().any(|a| a.number == attempt) {
            attempt
        } else {
            return Err(CoordinatorError::NotFound {
                kind: "attempt",
                id: format!("{run_id}/{attempt}"),
            });
        };
        let after = if cursor.is_empty() {
            None
        } else {
            Some(PointKey::from_cursor(cursor).ok_or_else(|| {
                CoordinatorError::InvalidArgument(format!(
                    "cursor {cursor:?} is not a cursor of ListMetricPoints"
                ))
            })?)
        };
        let mut points = self.store.metrics_after(
            run_id,
            attempt,
            after,
            page_size + 1,
            ladder_limits::MAX_PAGE_BYTES,
        )?;
        let more = points.len() > page_size
            || (!points.is_empty()
                && !self
                    .store
                    .metrics_after(run_id, attempt, points.last().map(|p| p.0), 1, usize::MAX)?
                    .is_empty());
        points.truncate(page_size);
        let next_cursor = if more {
            points.last().map(|(key, _)| key.to_cursor())
        } else {
            None
        };
        Ok(PointsPage {
            attempt,
            points: points.into_iter().map(|(_, point)| point).collect(),
            next_cursor,
        })
    }

    /// The card of the run `run_id`, with the last `log_tail` lines of its log (0: the
    /// default number).
    pub fn run(&self, run_id: &str, log_tail: usize) -> Result<RunCard, CoordinatorError> {
        let run = self.run_record(run_id)?;
        let mut series = Vec::new();
        for attempt in &run.attempts {
            let card = self.card_series(&run.id, attempt.number)?;
            series.push(AttemptSeries {
                attempt: attempt.number,
                points: card.points,
                total_points: card.total,
                downsampled: card.downsampled,
            });
        }
        let tail = if log_tail == 0 {
            DEFAULT_LOG_TAIL
        } else {
            log_tail.min(MAX_LOG_TAIL)
        };
        let (log_tail, log_lines) = match run.current_attempt() {
            Some(attempt) => (
                self.store.log_tail(&run.id, attempt.number, tail)?,
                attempt.log_lines,
            ),
            None => (Vec::new(), 0),
        };
        let mut card = RunCard::new(run);
        card.series = series;
        card.log_tail = log_tail;
        card.log_lines = log_lines;
        self.fill_card(&mut card)?;
        Ok(card)
    }
}

pub mod runs;

pub use runs::{
    Leaderboard, LeaderboardQuery, LeaderboardRow, Per, RunPage, RunQuery,
    DEFAULT_LEADERBOARD_ROWS, MAX_LEADERBOARD_ROWS,
};
