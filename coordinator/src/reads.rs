//! The read path: every read-only query over the store, called from the gRPC adapters
//! on blocking threads; reads never go through the scheduler, so they do not slow
//! dispatch down. This file holds [`Queries`] and the reads of one sweep, one run (its
//! card) and its metric points; `runs` the run queries (`runs ls`, export) and the
//! leaderboard, by the store's indexes where one serves.

use std::sync::Arc;

use ladder_proto::v1 as pb;

use crate::convert;
use crate::downsample;
use crate::error::CoordinatorError;
use crate::model::{RunRecord, SweepRecord};
use crate::store::{PointKey, Store};

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

    pub fn sweep(&self, sweep_id: &str) -> Result<pb::Sweep, CoordinatorError> {
        let record = self.sweep_record(sweep_id)?;
        self.sweep_with_counts(&record)
    }

    pub fn sweep_with_counts(&self, record: &SweepRecord) -> Result<pb::Sweep, CoordinatorError> {
        let runs = self.store.list_runs(Some(&record.id))?;
        Ok(convert::sweep_to_pb(record, convert::count_runs(&runs)))
    }

    /// One page of sweeps (of `project`, or of all when empty), oldest first, starting
    /// after `cursor` (a `next_cursor` of an earlier page; empty: from the first).
    /// Listed sweeps carry no YAML. Returns the page and the cursor of the next one.
    pub fn sweeps_page(
        &self,
        project: &str,
        cursor: &str,
        page_size: usize,
    ) -> Result<(Vec<pb::Sweep>, Option<String>), CoordinatorError> {
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
                next_cursor = sweeps
                    .last()
                    .map(|last: &pb::Sweep| format!("{}.{}", last.created_ms, last.id));
                break;
            }
            let mut sweep = self.sweep_with_counts(&record)?;
            sweep.spec_yaml.clear();
            sweeps.push(sweep);
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
    ) -> Result<pb::ListMetricPointsResponse, CoordinatorError> {
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
            points
                .last()
                .map(|(key, _)| key.to_cursor())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListMetricPointsResponse {
            attempt,
            points: points
                .iter()
                .map(|(_, point)| convert::point_to_pb(point))
                .collect(),
            next_cursor,
        })
    }

    pub fn run(
        &self,
        run_id: &str,
        log_tail: usize,
    ) -> Result<pb::GetRunResponse, CoordinatorError> {
        let run = self.run_record(run_id)?;
        let mut metrics = Vec::new();
        for attempt in &run.attempts {
            let card = self.card_series(&run.id, attempt.number)?;
            let (points, downsampled, total_points) = (card.points, card.downsampled, card.total);
            metrics.push(pb::AttemptMetrics {
                attempt: attempt.number,
                points: points.iter().map(convert::point_to_pb).collect(),
                total_points,
                downsampled,
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
        let mut response = pb::GetRunResponse {
            run: Some(convert::run_to_pb(&run)),
            metrics,
            log_tail: log_tail.iter().map(convert::log_to_pb).collect(),
            log_lines,
            ..Default::default()
        };
        self.fill_card(&run, &mut response)?;
        Ok(response)
    }
}

pub mod runs;

pub use runs::{
    Leaderboard, LeaderboardQuery, LeaderboardRow, Per, RunPage, RunQuery,
    DEFAULT_LEADERBOARD_ROWS, MAX_LEADERBOARD_ROWS,
};
