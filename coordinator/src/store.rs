//! The coordinator's durable state, behind the small [`Store`] trait.
//!
//! [`SledStore`] is the real implementation. Trees:
//!
//! - `sweeps`: sweep id -> [`SweepRecord`] (JSON)
//! - `runs`: run id -> [`RunRecord`] (JSON); run ids start with their sweep id, so the
//!   runs of a sweep are one prefix scan
//! - `metrics` / `logs`: `run id / attempt / seq / index` -> point or line (JSON). The
//!   key is a pure function of the event that carried it, so storing a resent event
//!   again rewrites the same keys instead of duplicating them.
//! - `agents`: agent name -> [`AgentRecord`]
//! - `meta`: counters (the lease epoch), index versions
//! - `idx_metric`: `project \0 metric \0 f64_key(value) run id` -> empty: every run's
//!   last value of every metric, plus the tasks average (see
//!   [`ladder_shared::query::tasks_average`]) under [`TASKS_AVG_METRIC`], ordered by value
//!   within a (project, metric). Maintained by [`Store::put_run`] from the run's previous
//!   record; rebuilt from `runs` when a store without it is opened. The leaderboard and
//!   `runs ls --project P --sort [-]metrics.M` walk it (see [`Store::metric_index`]);
//!   everything else scans `runs`.
//!
//! Writes are buffered by sled until [`Store::commit`], which makes everything written
//! before it durable: `flush` (survives `kill -9`) then `fsync` of the data file
//! (survives power loss). The scheduler calls it once per batch of events, before it
//! acknowledges any of them: a group commit.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::CoordinatorError;
use crate::model::{AgentRecord, RunRecord, StoredLogLine, StoredPoint, SweepRecord};

pub type Result<T> = std::result::Result<T, CoordinatorError>;

/// Durable state of the coordinator. Implementations are used from the scheduler thread
/// (the only writer) and from query handlers (readers) at the same time.
pub trait Store: Send + Sync + 'static {
    fn put_sweep(&self, sweep: &SweepRecord) -> Result<()>;
    fn get_sweep(&self, id: &str) -> Result<Option<SweepRecord>>;
    /// Every sweep, oldest first.
    fn list_sweeps(&self) -> Result<Vec<SweepRecord>>;

    fn put_run(&self, run: &RunRecord) -> Result<()>;
    fn get_run(&self, id: &str) -> Result<Option<RunRecord>>;
    /// Runs of one sweep (or all), in trial order within a sweep.
    fn list_runs(&self, sweep_id: Option<&str>) -> Result<Vec<RunRecord>>;
    /// Visits the runs of one sweep (or all) one at a time, in key order, without holding
    /// them all in memory.
    fn for_each_run(
        &self,
        sweep_id: Option<&str>,
        visit: &mut dyn FnMut(RunRecord) -> Result<()>,
    ) -> Result<()>;

    /// Stores the output carried by event `seq` of an attempt. Idempotent per `(run,
    /// attempt, seq)`.
    fn put_output(
        &self,
        run_id: &str,
        attempt: u32,
        seq: u64,
        metrics: &[StoredPoint],
        logs: &[StoredLogLine],
    ) -> Result<()>;
    /// Every metric point of an attempt, in the order reported.
    fn metrics(&self, run_id: &str, attempt: u32) -> Result<Vec<StoredPoint>>;
    /// The last `n` log lines of an attempt.
    fn log_tail(&self, run_id: &str, attempt: u32, n: usize) -> Result<Vec<StoredLogLine>>;

    fn put_agent(&self, agent: &AgentRecord) -> Result<()>;
    fn list_agents(&self) -> Result<Vec<AgentRecord>>;

    /// A new lease epoch, never handed out before (persisted with the next commit; the
    /// scheduler commits before any lease leaves the coordinator).
    fn next_epoch(&self) -> Result<u64>;

    /// Makes every write so far durable.
    fn commit(&self) -> Result<()>;

    /// `(value, run id)` of the runs of `project` that have `metric`, by value ascending
    /// (descending when asked; ties by run id), starting at `from` (inclusive); `None`
    /// when this store keeps no metric index (callers scan instead). Entries may be stale
    /// by at most a crash: callers check them against the run record.
    fn metric_index<'a>(
        &'a self,
        _project: &str,
        _metric: &str,
        _descending: bool,
        _from: Option<f64>,
    ) -> Option<IndexWalk<'a>> {
        None
    }
}

/// An iterator over metric index entries: `(value, run id)`.
pub type IndexWalk<'a> = Box<dyn Iterator<Item = Result<(f64, String)>> + Send + 'a>;

/// The index name of the leaderboard's tasks average (not a reportable metric name).
pub const TASKS_AVG_METRIC: &str = "\u{1}tasks:avg";

/// The `(metric, value)` index entries of a run.
fn index_entries(run: &RunRecord) -> Vec<(String, f64)> {
    let mut entries: Vec<(String, f64)> = run
        .last_metrics
        .iter()
        .filter(|(name, value)| !name.contains('\0') && value.is_finite())
        .map(|(name, value)| (name.clone(), *value))
        .collect();
    if let Some(average) = ladder_shared::query::tasks_average(&run.last_metrics) {
        entries.push((TASKS_AVG_METRIC.to_string(), average));
    }
    entries
}

fn index_prefix(project: &str, metric: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(project.len() + metric.len() + 2);
    key.extend_from_slice(project.as_bytes());
    key.push(0);
    key.extend_from_slice(metric.as_bytes());
    key.push(0);
    key
}

fn index_key(project: &str, metric: &str, value: f64, run_id: &str) -> Vec<u8> {
    let mut key = index_prefix(project, metric);
    key.extend_from_slice(&ladder_shared::query::f64_key(value));
    key.extend_from_slice(run_id.as_bytes());
    key
}

/// The sled-backed [`Store`].
pub struct SledStore {
    db: sled::Db,
    sweeps: sled::Tree,
    runs: sled::Tree,
    metrics: sled::Tree,
    logs: sled::Tree,
    agents: sled::Tree,
    meta: sled::Tree,
    idx_metric: sled::Tree,
    /// sled's data file, fsynced after each flush.
    data_file: Mutex<Option<File>>,
    path: PathBuf,
}

const EPOCH_KEY: &[u8] = b"epoch";
/// Present once `idx_metric` covers every run.
const METRIC_INDEX_KEY: &[u8] = b"idx_metric_v1";

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| CoordinatorError::Io {
            context: format!("failed to create data directory {}", dir.display()),
            source,
        })?;
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| {
                CoordinatorError::Store(format!("cannot open store in {}: {e}", dir.display()))
            })?;
        let open_tree = |name: &str| {
            db.open_tree(name)
                .map_err(|e| CoordinatorError::Store(format!("cannot open tree {name}: {e}")))
        };
        let data_file = File::open(dir.join("db")).ok();
        let store = SledStore {
            sweeps: open_tree("sweeps")?,
            runs: open_tree("runs")?,
            metrics: open_tree("metrics")?,
            logs: open_tree("logs")?,
            agents: open_tree("agents")?,
            meta: open_tree("meta")?,
            idx_metric: open_tree("idx_metric")?,
            db,
            data_file: Mutex::new(data_file),
            path: dir.to_path_buf(),
        };
        if store
            .meta
            .get(METRIC_INDEX_KEY)
            .map_err(sled_err)?
            .is_none()
        {
            store.rebuild_metric_index()?;
        }
        Ok(store)
    }

    /// Recreates `idx_metric` from every run record (stores written before the index).
    fn rebuild_metric_index(&self) -> Result<()> {
        self.idx_metric.clear().map_err(sled_err)?;
        let mut batch = sled::Batch::default();
        for entry in self.runs.iter() {
            let (key, value) = entry.map_err(sled_err)?;
            let run: RunRecord = decode("runs", &key, &value)?;
            for (metric, value) in index_entries(&run) {
                batch.insert(index_key(&run.project, &metric, value, &run.id), &[]);
            }
        }
        self.idx_metric.apply_batch(batch).map_err(sled_err)?;
        self.meta
            .insert(METRIC_INDEX_KEY, &[1u8])
            .map_err(sled_err)?;
        Ok(())
    }

    /// Stores many new runs at once (benchmarks and imports): one batch per tree, index
    /// included. The runs must not exist yet.
    pub fn put_new_runs(&self, runs: &[RunRecord]) -> Result<()> {
        let mut records = sled::Batch::default();
        let mut index = sled::Batch::default();
        for run in runs {
            records.insert(run.id.as_bytes(), encode(run)?);
            for (metric, value) in index_entries(run) {
                index.insert(index_key(&run.project, &metric, value, &run.id), &[]);
            }
        }
        self.runs.apply_batch(records).map_err(sled_err)?;
        self.idx_metric.apply_batch(index).map_err(sled_err)?;
        Ok(())
    }

    /// Bytes the store takes on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        self.db.size_on_disk().map_err(sled_err)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value)
        .map_err(|e| CoordinatorError::Store(format!("cannot encode record: {e}")))
}

fn decode<T: DeserializeOwned>(tree: &str, key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        CoordinatorError::Store(format!(
            "corrupt record {:?} in tree {tree}: {e}",
            String::from_utf8_lossy(key)
        ))
    })
}

fn sled_err(e: sled::Error) -> CoordinatorError {
    CoordinatorError::Store(e.to_string())
}

/// `run_id/` + attempt + seq + index, big-endian so keys sort in report order.
fn event_key(run_id: &str, attempt: u32, seq: u64, index: u32) -> Vec<u8> {
    let mut key = attempt_prefix(run_id, attempt);
    key.extend_from_slice(&seq.to_be_bytes());
    key.extend_from_slice(&index.to_be_bytes());
    key
}

fn attempt_prefix(run_id: &str, attempt: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(run_id.len() + 1 + 16);
    key.extend_from_slice(run_id.as_bytes());
    key.push(b'/');
    key.extend_from_slice(&attempt.to_be_bytes());
    key
}

fn scan_all<T: DeserializeOwned>(tree: &sled::Tree, name: &str, prefix: &[u8]) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for entry in tree.scan_prefix(prefix) {
        let (key, value) = entry.map_err(sled_err)?;
        out.push(decode(name, &key, &value)?);
    }
    Ok(out)
}

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
fn parse_event_key(key: &[u8]) -> Option<(String, u32, u64, u32)> {
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
    /// metric steps never decrease within an attempt; no run completed twice. Reads only.
    pub fn check(&self) -> Result<StoreCheck> {
        use std::collections::HashMap;
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
        let mut last_step: HashMap<(String, u32), i64> = HashMap::new();
        for entry in self.metrics.iter() {
            let (key, value) = entry.map_err(sled_err)?;
            report.metric_points += 1;
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
            match decode::<StoredPoint>("metrics", &key, &value) {
                Ok(point) => {
                    if let Some(step) = point.step {
                        let previous = last_step.insert((run_id.clone(), attempt), step);
                        if previous.is_some_and(|p| step < p) {
                            report.problems.push(format!(
                                "run {run_id} attempt {attempt}: step {step} after step {}",
                                previous.unwrap_or_default()
                            ));
                        }
                    }
                }
                Err(error) => report.problems.push(error.to_string()),
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

impl Store for SledStore {
    fn put_sweep(&self, sweep: &SweepRecord) -> Result<()> {
        self.sweeps
            .insert(sweep.id.as_bytes(), encode(sweep)?)
            .map_err(sled_err)?;
        Ok(())
    }

    fn get_sweep(&self, id: &str) -> Result<Option<SweepRecord>> {
        match self.sweeps.get(id.as_bytes()).map_err(sled_err)? {
            Some(bytes) => Ok(Some(decode("sweeps", id.as_bytes(), &bytes)?)),
            None => Ok(None),
        }
    }

    fn list_sweeps(&self) -> Result<Vec<SweepRecord>> {
        let mut sweeps: Vec<SweepRecord> = scan_all(&self.sweeps, "sweeps", b"")?;
        sweeps.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        Ok(sweeps)
    }

    fn put_run(&self, run: &RunRecord) -> Result<()> {
        let previous = self
            .runs
            .insert(run.id.as_bytes(), encode(run)?)
            .map_err(sled_err)?;
        let old_entries = match previous {
            Some(bytes) => {
                let old: RunRecord = decode("runs", run.id.as_bytes(), &bytes)?;
                index_entries(&old)
                    .into_iter()
                    .map(|(metric, value)| index_key(&old.project, &metric, value, &old.id))
                    .collect()
            }
            None => Vec::new(),
        };
        let new_entries: Vec<Vec<u8>> = index_entries(run)
            .into_iter()
            .map(|(metric, value)| index_key(&run.project, &metric, value, &run.id))
            .collect();
        let mut batch = sled::Batch::default();
        for key in &old_entries {
            if !new_entries.contains(key) {
                batch.remove(key.as_slice());
            }
        }
        for key in new_entries {
            if !old_entries.contains(&key) {
                batch.insert(key, &[]);
            }
        }
        self.idx_metric.apply_batch(batch).map_err(sled_err)?;
        Ok(())
    }

    fn get_run(&self, id: &str) -> Result<Option<RunRecord>> {
        match self.runs.get(id.as_bytes()).map_err(sled_err)? {
            Some(bytes) => Ok(Some(decode("runs", id.as_bytes(), &bytes)?)),
            None => Ok(None),
        }
    }

    fn for_each_run(
        &self,
        sweep_id: Option<&str>,
        visit: &mut dyn FnMut(RunRecord) -> Result<()>,
    ) -> Result<()> {
        let prefix = match sweep_id {
            Some(id) => format!("{id}-"),
            None => String::new(),
        };
        for entry in self.runs.scan_prefix(prefix.as_bytes()) {
            let (key, value) = entry.map_err(sled_err)?;
            visit(decode("runs", &key, &value)?)?;
        }
        Ok(())
    }

    fn list_runs(&self, sweep_id: Option<&str>) -> Result<Vec<RunRecord>> {
        let prefix = match sweep_id {
            Some(id) => format!("{id}-"),
            None => String::new(),
        };
        let mut runs: Vec<RunRecord> = scan_all(&self.runs, "runs", prefix.as_bytes())?;
        runs.sort_by(|a, b| a.sweep_id.cmp(&b.sweep_id).then(a.index.cmp(&b.index)));
        Ok(runs)
    }

    fn put_output(
        &self,
        run_id: &str,
        attempt: u32,
        seq: u64,
        metrics: &[StoredPoint],
        logs: &[StoredLogLine],
    ) -> Result<()> {
        let mut metric_batch = sled::Batch::default();
        for (i, point) in metrics.iter().enumerate() {
            metric_batch.insert(event_key(run_id, attempt, seq, i as u32), encode(point)?);
        }
        let mut log_batch = sled::Batch::default();
        for (i, line) in logs.iter().enumerate() {
            log_batch.insert(event_key(run_id, attempt, seq, i as u32), encode(line)?);
        }
        self.metrics.apply_batch(metric_batch).map_err(sled_err)?;
        self.logs.apply_batch(log_batch).map_err(sled_err)?;
        Ok(())
    }

    fn metrics(&self, run_id: &str, attempt: u32) -> Result<Vec<StoredPoint>> {
        scan_all(&self.metrics, "metrics", &attempt_prefix(run_id, attempt))
    }

    fn log_tail(&self, run_id: &str, attempt: u32, n: usize) -> Result<Vec<StoredLogLine>> {
        let mut lines = Vec::with_capacity(n);
        for entry in self
            .logs
            .scan_prefix(attempt_prefix(run_id, attempt))
            .rev()
            .take(n)
        {
            let (key, value) = entry.map_err(sled_err)?;
            lines.push(decode("logs", &key, &value)?);
        }
        lines.reverse();
        Ok(lines)
    }

    fn put_agent(&self, agent: &AgentRecord) -> Result<()> {
        self.agents
            .insert(agent.name.as_bytes(), encode(agent)?)
            .map_err(sled_err)?;
        Ok(())
    }

    fn list_agents(&self) -> Result<Vec<AgentRecord>> {
        scan_all(&self.agents, "agents", b"")
    }

    fn next_epoch(&self) -> Result<u64> {
        let previous = match self.meta.get(EPOCH_KEY).map_err(sled_err)? {
            Some(bytes) => {
                let raw: [u8; 8] = bytes.as_ref().try_into().map_err(|_| {
                    CoordinatorError::Store("corrupt epoch counter in tree meta".into())
                })?;
                u64::from_be_bytes(raw)
            }
            None => 0,
        };
        let next = previous + 1;
        self.meta
            .insert(EPOCH_KEY, &next.to_be_bytes())
            .map_err(sled_err)?;
        Ok(next)
    }

    fn metric_index<'a>(
        &'a self,
        project: &str,
        metric: &str,
        descending: bool,
        from: Option<f64>,
    ) -> Option<IndexWalk<'a>> {
        let prefix = index_prefix(project, metric);
        let parse = {
            let length = prefix.len();
            move |entry: sled::Result<(sled::IVec, sled::IVec)>| -> Result<(f64, String)> {
                let (key, _) = entry.map_err(sled_err)?;
                let bytes: [u8; 8] = key
                    .get(length..length + 8)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| CoordinatorError::Store("malformed idx_metric key".into()))?;
                let run_id = String::from_utf8_lossy(&key[length + 8..]).into_owned();
                Ok((ladder_shared::query::f64_from_key(bytes), run_id))
            }
        };
        let mut end = prefix.clone();
        *end.last_mut().expect("prefix ends in 0") = 1;
        let walk: IndexWalk<'a> = match (descending, from) {
            (false, None) => Box::new(self.idx_metric.range(prefix..end).map(parse)),
            (false, Some(value)) => {
                let mut start = prefix;
                start.extend_from_slice(&ladder_shared::query::f64_key(value));
                Box::new(self.idx_metric.range(start..end).map(parse))
            }
            (true, None) => Box::new(self.idx_metric.range(prefix..end).rev().map(parse)),
            (true, Some(value)) => {
                let mut upper = prefix.clone();
                upper.extend_from_slice(&ladder_shared::query::f64_key(value));
                upper.push(0xff);
                Box::new(self.idx_metric.range(prefix..upper).rev().map(parse))
            }
        };
        Some(walk)
    }

    fn commit(&self) -> Result<()> {
        self.db.flush().map_err(sled_err)?;
        let mut data_file = self.data_file.lock().unwrap_or_else(|e| e.into_inner());
        if data_file.is_none() {
            *data_file = File::open(self.path.join("db")).ok();
        }
        if let Some(file) = data_file.as_ref() {
            file.sync_data().map_err(|source| CoordinatorError::Io {
                context: "failed to fsync the store".into(),
                source,
            })?;
        }
        Ok(())
    }
}
