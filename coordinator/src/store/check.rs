//! `ladder store check`: the store's invariants, verified by reading everything.

use super::*;

/// What [`SledStore::check`] found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreCheck {
    pub sweeps: u64,
    pub runs: u64,
    pub metric_points: u64,
    pub log_lines: u64,
    /// Every broken invariant, in words; empty when the store is consistent.
    pub problems: Vec<String>,
}

impl StoreCheck {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Splits an event key into `(run id, attempt, seq, index)`.
pub(super) fn parse_event_key(key: &[u8]) -> Option<(String, u32, u64, u32)> {
    if key.len() < 1 + 4 + 8 + 4 {
        return None;
    }
    let (head, tail) = key.split_at(key.len() - 16);
    let run_id = std::str::from_utf8(head.strip_suffix(b"/")?)
        .ok()?
        .to_string();
    let attempt = u32::from_be_bytes(tail[0..4].try_into().ok()?);
    let seq = u64::from_be_bytes(tail[4..12].try_into().ok()?);
    let index = u32::from_be_bytes(tail[12..16].try_into().ok()?);
    Some((run_id, attempt, seq, index))
}

impl SledStore {
    /// Verifies the store's invariants: every record decodes; every run's sweep exists
    /// and each sweep's `created_runs` matches its runs; every metric point and log line
    /// belongs to an existing attempt of an existing run and to an event it acknowledged;
    /// every metric point decodes; no run completed twice. Reads only.
    ///
    /// A step lower than an earlier one is not a problem: ingest keeps every point as
    /// reported (as TensorBoard does; a script that resumes from a checkpoint re-reports
    /// steps), so the checker accepts what ingest accepts.
    pub fn check(&self) -> Result<StoreCheck> {
        let mut report = StoreCheck::default();
        let mut sweeps: HashMap<String, SweepRecord> = HashMap::new();
        for entry in self.sweeps.iter() {
            let (key, value) = entry.map_err(sled_err)?;
            match decode::<SweepRecord>("sweeps", &key, &value) {
                Ok(sweep) => {
                    sweeps.insert(sweep.id.clone(), sweep);
                }
                Err(error) => report.problems.push(error.to_string()),
            }
        }
        report.sweeps = sweeps.len() as u64;
        let mut runs: HashMap<String, RunRecord> = HashMap::new();
        let mut runs_per_sweep: HashMap<String, u64> = HashMap::new();
        for entry in self.runs.iter() {
            let (key, value) = entry.map_err(sled_err)?;
            let run: RunRecord = match decode("runs", &key, &value) {
                Ok(run) => run,
                Err(error) => {
                    report.problems.push(error.to_string());
                    continue;
                }
            };
            if !sweeps.contains_key(&run.sweep_id) {
                report.problems.push(format!(
                    "run {} belongs to missing sweep {}",
                    run.id, run.sweep_id
                ));
            }
            *runs_per_sweep.entry(run.sweep_id.clone()).or_default() += 1;
            let completed = run
                .attempts
                .iter()
                .filter(|a| a.outcome == crate::model::AttemptOutcome::Completed)
                .count();
            if completed > 1 {
                report
                    .problems
                    .push(format!("run {} has {completed} completed attempts", run.id));
            }
            for (position, attempt) in run.attempts.iter().enumerate() {
                if attempt.number as usize != position + 1 {
                    report.problems.push(format!(
                        "run {} attempt #{} is numbered {}",
                        run.id,
                        position + 1,
                        attempt.number
                    ));
                }
            }
            runs.insert(run.id.clone(), run);
        }
        report.runs = runs.len() as u64;
        for (id, sweep) in &sweeps {
            let count = runs_per_sweep.get(id).copied().unwrap_or(0);
            if count != sweep.created_runs {
                report.problems.push(format!(
                    "sweep {id} says it created {} runs but the store has {count}",
                    sweep.created_runs
                ));
            }
        }
        let attempt_of = |run_id: &str, attempt: u32| {
            runs.get(run_id)
                .and_then(|run| run.attempts.iter().find(|a| a.number == attempt))
        };
        for entry in self.metrics.iter() {
            let (key, value) = entry.map_err(sled_err)?;
            let points = match decode_point_chunk(&key, &value) {
                Ok(points) => points.len() as u64,
                Err(error) => {
                    report.problems.push(error.to_string());
                    1
                }
            };
            report.metric_points += points;
            let Some((run_id, attempt, seq, _)) = parse_event_key(&key) else {
                report.problems.push(format!(
                    "malformed metric key {:?}",
                    String::from_utf8_lossy(&key)
                ));
                continue;
            };
            let Some(record) = attempt_of(&run_id, attempt) else {
                report.problems.push(format!(
                    "metric point of missing run {run_id} attempt {attempt}"
                ));
                continue;
            };
            if seq > record.acked_seq {
                report.problems.push(format!("metric point of run {run_id} attempt {attempt} from event {seq} beyond the stored {}", record.acked_seq));
            }
        }
        for entry in self.logs.iter() {
            let (key, _) = entry.map_err(sled_err)?;
            report.log_lines += 1;
            match parse_event_key(&key) {
                Some((run_id, attempt, _, _)) if attempt_of(&run_id, attempt).is_none() => {
                    report.problems.push(format!(
                        "log line of missing run {run_id} attempt {attempt}"
                    ));
                }
                Some(_) => {}
                None => report.problems.push(format!(
                    "malformed log key {:?}",
                    String::from_utf8_lossy(&key)
                )),
            }
        }
        Ok(report)
    }
}
