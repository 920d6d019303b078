//! Read-only queries over the store. Called from gRPC handlers on blocking threads; they
//! never go through the scheduler, so reads do not slow dispatch down.

use std::sync::Arc;

use ladder_proto::v1 as pb;

use crate::convert;
use crate::error::CoordinatorError;
use crate::model::SweepRecord;
use crate::store::Store;

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

    pub fn sweep(&self, sweep_id: &str) -> Result<pb::Sweep, CoordinatorError> {
        let record = self.sweep_record(sweep_id)?;
        self.sweep_with_counts(&record)
    }

    pub fn sweep_with_counts(&self, record: &SweepRecord) -> Result<pb::Sweep, CoordinatorError> {
        let runs = self.store.list_runs(Some(&record.id))?;
        Ok(convert::sweep_to_pb(record, convert::count_runs(&runs)))
    }

    pub fn sweeps(&self, project: &str) -> Result<Vec<pb::Sweep>, CoordinatorError> {
        let mut sweeps = Vec::new();
        for record in self.store.list_sweeps()? {
            if !project.is_empty() && record.spec.project != project {
                continue;
            }
            sweeps.push(self.sweep_with_counts(&record)?);
        }
        Ok(sweeps)
    }

    pub fn run(
        &self,
        run_id: &str,
        log_tail: usize,
    ) -> Result<pb::GetRunResponse, CoordinatorError> {
        let run = self
            .store
            .get_run(run_id)?
            .ok_or_else(|| CoordinatorError::NotFound {
                kind: "run",
                id: run_id.to_string(),
            })?;
        let mut metrics = Vec::new();
        for attempt in &run.attempts {
            let points = self.store.metrics(&run.id, attempt.number)?;
            metrics.push(pb::AttemptMetrics {
                attempt: attempt.number,
                points: points.iter().map(convert::point_to_pb).collect(),
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
