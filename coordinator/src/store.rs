//! The coordinator's durable state, behind the small [`Store`] trait.
//!
//! [`SledStore`] is the real implementation. Trees:
//!
//! - `sweeps`: sweep id -> [`SweepRecord`] (JSON)
//! - `runs`: run id -> [`RunRecord`] (JSON); run ids start with their sweep id, so the
//!   runs of a sweep are one prefix scan
//! - `metrics`: `run id / attempt / seq / index` -> a chunk of the points of one output
//!   event, starting at the point at `index` within that event (a JSON array of at most
//!   [`POINT_CHUNK_BYTES`], so that sled's pages stay inline in its log; stores written
//!   before chunking hold one point per record, as a JSON object, and are read as
//!   chunks of one).
//! - `logs`: `run id / attempt / seq / index` -> one log line (JSON).
//!
//!   Both keys are a pure function of the event that carried the record, so storing a
//!   resent event again rewrites the same keys instead of duplicating them.
//! - `agents`: agent name -> [`AgentRecord`]
//! - `meta`: counters (the lease epoch), index versions
//! - `idx_metric`: `project \0 metric \0 f64_key(value) run id` -> empty: every run's
//!   value of every metric (its summary as the sweep chose it, see
//!   [`RunRecord::metric_value`]: the last value unless `summary:` says otherwise), plus
//!   the tasks average (see [`ladder_query::tasks_average`]) under
//!   [`TASKS_AVG_METRIC`], ordered by value within a (project, metric).
//! - `idx_metric_all`: `metric \0 f64_key(value) run id` -> empty: the same entries
//!   across every project, for the project-less leaderboard.
//! - `idx_param`: `project \0 param \0 value_key(value) position_key(position) run id`
//!   -> empty: every run's value of every parameter (see
//!   [`ladder_query::value_key`]: booleans, then numbers by value, then strings
//!   byte-wise), then its position (sweep creation time, sweep id, trial index), so that
//!   within a (project, parameter) the keys are in exactly the order of `runs ls --sort
//!   params.NAME`, ties included.
//!
//! The indexes are maintained by [`Store::put_run`] from the run's previous record and
//! rebuilt from `runs` when a store without them (or with an older version) is opened;
//! the metric index upgrade also gives run records stored before summaries their
//! [`RunRecord::summaries`], computed from their stored points. The leaderboard and
//! `runs ls --project P --sort [-]metrics.M` walk the metric indexes (see
//! [`Store::metric_index`]), `runs ls --project P --sort [-]params.NAME` the parameter
//! index (see [`Store::param_index`]); everything else scans `runs`.
//!
//! Writes are buffered by sled until [`Store::commit`], which makes everything written
//! before it durable: `flush` (survives `kill -9`) then `fsync` of the data file
//! (survives power loss). The scheduler calls it once per batch of events, before it
//! acknowledges any of them: a group commit.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::CoordinatorError;
use crate::model::{AgentRecord, RunRecord, StoredLogLine, StoredPoint, SweepRecord};
use ladder_metrics::summary::{MetricSummary, Reduction};
use ladder_query::{self as query, Position, Value};
use ladder_spec::{ParamValue, SweepSpec};

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
    /// The metric points of an attempt that follow the point at `after` (a
    /// [`PointKey`] returned earlier; from the first point when `None`), in the order
    /// reported, until `limit` points or `max_bytes` of encoded points (at least one
    /// point when any follows). Each comes with its key, to continue after it.
    fn metrics_after(
        &self,
        run_id: &str,
        attempt: u32,
        after: Option<PointKey>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(PointKey, StoredPoint)>>;
    /// The last `n` log lines of an attempt.
    fn log_tail(&self, run_id: &str, attempt: u32, n: usize) -> Result<Vec<StoredLogLine>>;

    fn put_agent(&self, agent: &AgentRecord) -> Result<()>;
    fn list_agents(&self) -> Result<Vec<AgentRecord>>;
    /// Drops an agent's record (its runs' history keeps naming it).
    fn delete_agent(&self, name: &str) -> Result<()>;

    /// A new lease epoch, never handed out before (persisted with the next commit; the
    /// scheduler commits before any lease leaves the coordinator).
    fn next_epoch(&self) -> Result<u64>;

    /// Makes every write so far durable.
    fn commit(&self) -> Result<()>;

    /// `(value, run id)` of the runs of `project` (of every project when `None`) that
    /// have `metric`, by value ascending (descending when asked; ties by run id), starting
    /// at `from` (inclusive); `None` when this store keeps no metric index (callers scan
    /// instead). The value is [`RunRecord::metric_value`]. Entries may be stale by at most
    /// a crash: callers check them against the run record.
    fn metric_index<'a>(
        &'a self,
        _project: Option<&str>,
        _metric: &str,
        _descending: bool,
        _from: Option<f64>,
    ) -> Option<IndexWalk<'a>> {
        None
    }

    /// The runs of `project` that have parameter `param`, in the order `runs ls --sort
    /// [-]params.NAME` lists them: by value (see [`ladder_query::Value::total_cmp`];
    /// reversed when `descending`), ties by position ascending in both directions;
    /// starting at the entry `from` = (value, position) (inclusive) when given. `None`
    /// when this store keeps no parameter index, or none for `param` (a name holding a
    /// NUL is never indexed): callers scan instead. A run's
    /// parameters never change, so entries are current unless a crash cut a write short:
    /// callers still check them against the run record.
    fn param_index<'a>(
        &'a self,
        _project: &str,
        _param: &str,
        _descending: bool,
        _from: Option<(&Value, &Position)>,
    ) -> Option<ParamWalk<'a>> {
        None
    }
}

/// Where a metric point sits within its attempt: the event that carried it and its
/// position in that event. Ordered as the points were reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PointKey {
    pub seq: u64,
    pub index: u32,
}

impl PointKey {
    /// The key as a cursor string (`SEQ.INDEX`).
    pub fn to_cursor(self) -> String {
        format!("{}.{}", self.seq, self.index)
    }

    /// Reads a cursor made by [`PointKey::to_cursor`].
    pub fn from_cursor(cursor: &str) -> Option<PointKey> {
        let (seq, index) = cursor.split_once('.')?;
        Some(PointKey {
            seq: seq.parse().ok()?,
            index: index.parse().ok()?,
        })
    }
}

/// An iterator over metric index entries: `(value, run id)`.
pub type IndexWalk<'a> = Box<dyn Iterator<Item = Result<(f64, String)>> + Send + 'a>;

/// One entry of the parameter index: a run's value of the parameter and its position.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamEntry {
    pub value: Value,
    pub position: Position,
    pub run_id: String,
}

/// An iterator over parameter index entries, in listing order.
pub type ParamWalk<'a> = Box<dyn Iterator<Item = Result<ParamEntry>> + Send + 'a>;

/// The index name of the leaderboard's tasks average (not a reportable metric name).
pub const TASKS_AVG_METRIC: &str = "\u{1}tasks:avg";

/// The `(metric, value)` index entries of a run: its summary values, and the tasks
/// average of those.
fn index_entries(run: &RunRecord) -> Vec<(String, f64)> {
    let values = run.metric_values();
    let mut entries: Vec<(String, f64)> = values
        .iter()
        .filter(|(name, value)| !name.contains('\0') && value.is_finite())
        .map(|(name, value)| (name.clone(), *value))
        .collect();
    if let Some(average) = ladder_query::tasks_average(&values) {
        entries.push((TASKS_AVG_METRIC.to_string(), average));
    }
    entries
}

/// `project \0 metric \0` (in `idx_metric`), or `metric \0` (in `idx_metric_all`).
fn index_prefix(project: Option<&str>, metric: &str) -> Vec<u8> {
    let project_len = project.map_or(0, |p| p.len() + 1);
    let mut key = Vec::with_capacity(project_len + metric.len() + 1);
    if let Some(project) = project {
        key.extend_from_slice(project.as_bytes());
        key.push(0);
    }
    key.extend_from_slice(metric.as_bytes());
    key.push(0);
    key
}

fn index_key(project: Option<&str>, metric: &str, value: f64, run_id: &str) -> Vec<u8> {
    let mut key = index_prefix(project, metric);
    key.extend_from_slice(&ladder_query::f64_key(value));
    key.extend_from_slice(run_id.as_bytes());
    key
}

/// The keys of a run in `idx_metric` and in `idx_metric_all`.
fn index_keys(run: &RunRecord) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let entries = index_entries(run);
    let per_project = entries
        .iter()
        .map(|(metric, value)| index_key(Some(&run.project), metric, *value, &run.id))
        .collect();
    let across = entries
        .iter()
        .map(|(metric, value)| index_key(None, metric, *value, &run.id))
        .collect();
    (per_project, across)
}

/// The value a query sees for a parameter (see `history::Facts`): integers and floats
/// are numbers.
pub fn param_query_value(value: &ParamValue) -> Value {
    match value {
        ParamValue::Bool(flag) => Value::Bool(*flag),
        ParamValue::Int(int) => Value::Number(*int as f64),
        ParamValue::Float(float) => Value::Number(*float),
        ParamValue::Str(text) => Value::Text(text.clone()),
    }
}

/// Sweep creation times by sweep id, read once per sweep: the first field of a run's
/// position. A run whose sweep is missing sorts last, as in queries.
type CreatedCache = HashMap<String, i64>;

/// The keys of a run in `idx_param`: one per parameter whose name can be a key.
fn param_keys(run: &RunRecord, sweep_created_ms: i64) -> Vec<Vec<u8>> {
    let position = Position {
        sweep_created_ms,
        sweep_id: run.sweep_id.clone(),
        index: run.index,
    };
    let mut keys = Vec::with_capacity(run.params.len());
    for (name, value) in &run.params {
        if !param_indexable(name) {
            continue;
        }
        let mut key = index_prefix(Some(&run.project), name);
        query::push_value_key(&mut key, &param_query_value(value));
        query::push_position_key(&mut key, &position);
        key.extend_from_slice(run.id.as_bytes());
        keys.push(key);
    }
    keys
}

/// Whether a parameter can be walked in `idx_param` (names with NUL are not indexed).
fn param_indexable(name: &str) -> bool {
    !name.contains('\0')
}

/// The smallest key greater than every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only reached for an all-0xFF prefix, which no index key has.
    vec![0xff; prefix.len() + 1]
}

/// Splits an `idx_param` key after its `prefix` into its entry and the length of its
/// value part.
fn parse_param_key(key: &[u8], prefix_len: usize) -> Result<(ParamEntry, usize)> {
    let malformed = || CoordinatorError::Store("malformed idx_param key".into());
    let rest = key.get(prefix_len..).ok_or_else(malformed)?;
    let (value, value_len) = query::value_from_key(rest).ok_or_else(malformed)?;
    let (position, position_len) =
        query::position_from_key(&rest[value_len..]).ok_or_else(malformed)?;
    let run_id = String::from_utf8_lossy(&rest[value_len + position_len..]).into_owned();
    Ok((
        ParamEntry {
            value,
            position,
            run_id,
        },
        value_len,
    ))
}

/// Walks one (project, parameter) of `idx_param` from the largest value down: value
/// groups in descending order, each group forward (positions ascending), as `runs ls`
/// orders a descending sort.
struct DescendingParamWalk<'a> {
    tree: &'a sled::Tree,
    prefix: Vec<u8>,
    /// Groups below this key are still to come.
    upper: Vec<u8>,
    /// The group being walked.
    group: Option<sled::Iter>,
    failed: bool,
}

impl Iterator for DescendingParamWalk<'_> {
    type Item = Result<ParamEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(group) = self.group.as_mut() {
                match group.next() {
                    Some(Ok((key, _))) => {
                        return Some(parse_param_key(&key, self.prefix.len()).map(|(e, _)| e))
                    }
                    Some(Err(error)) => {
                        self.failed = true;
                        return Some(Err(sled_err(error)));
                    }
                    None => self.group = None,
                }
            }
            // The next group down: the value of the largest key below `upper`.
            let last = match self
                .tree
                .range(self.prefix.as_slice()..self.upper.as_slice())
                .next_back()?
            {
                Ok((key, _)) => key,
                Err(error) => {
                    self.failed = true;
                    return Some(Err(sled_err(error)));
                }
            };
            let value_len = match parse_param_key(&last, self.prefix.len()) {
                Ok((_, value_len)) => value_len,
                Err(error) => {
                    self.failed = true;
                    return Some(Err(error));
                }
            };
            let group = last[..self.prefix.len() + value_len].to_vec();
            self.group = Some(self.tree.range(group.clone()..prefix_end(&group)));
            self.upper = group;
        }
    }
}

/// Inserts index keys in key order, in sled batches of at most [`INDEX_BATCH_KEYS`].
/// sled keeps every node version a batch replaces until the batch ends and frees them
/// lazily after, so large batches of scattered keys take memory out of all proportion:
/// filling 100,000 runs (3 million index keys) peaked at 5.6 GB of RSS with batches of
/// 5,000 keys and at 0.8 GB with batches of 1,000.
fn insert_keys(tree: &sled::Tree, mut keys: Vec<Vec<u8>>) -> Result<()> {
    keys.sort_unstable();
    for chunk in keys.chunks(INDEX_BATCH_KEYS) {
        let mut batch = sled::Batch::default();
        for key in chunk {
            batch.insert(key.as_slice(), &[]);
        }
        tree.apply_batch(batch).map_err(sled_err)?;
    }
    Ok(())
}

/// Most keys [`insert_keys`] writes in one sled batch.
const INDEX_BATCH_KEYS: usize = 1_000;

/// Replaces `old` keys by `new` ones in an index tree, touching only the difference.
/// Linear in the number of keys (a run may carry up to
/// [`ladder_limits::MAX_METRICS_PER_RUN`] metrics, each with index keys).
fn update_index(tree: &sled::Tree, old: &[Vec<u8>], new: Vec<Vec<u8>>) -> Result<()> {
    let old_keys: HashSet<&[u8]> = old.iter().map(Vec::as_slice).collect();
    let new_keys: HashSet<&[u8]> = new.iter().map(Vec::as_slice).collect();
    let mut batch = sled::Batch::default();
    let mut changed = false;
    for key in old {
        if !new_keys.contains(key.as_slice()) {
            batch.remove(key.as_slice());
            changed = true;
        }
    }
    for key in &new {
        if !old_keys.contains(key.as_slice()) {
            batch.insert(key.as_slice(), &[]);
            changed = true;
        }
    }
    if !changed {
        return Ok(());
    }
    tree.apply_batch(batch).map_err(sled_err)
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
    idx_metric_all: sled::Tree,
    idx_param: sled::Tree,
    /// sled's data file, fsynced after each flush.
    data_file: Mutex<Option<File>>,
    /// The highest blob file (named by its log sequence number) fsynced so far.
    blobs_synced: Mutex<u64>,
    path: PathBuf,
}

/// How long [`SledStore::open`] waits for a handle this process dropped to let go of
/// the store's lock.
const OWN_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Opens sled's database in `dir`. sled holds an exclusive `flock` on its `db` file
/// until the last of its own threads lets go of a dropped handle, a little after the
/// handle itself is gone: while the lock's holder is this process, the open is retried
/// (for at most [`OWN_LOCK_WAIT`]); held by another process, it fails at once, naming it.
fn open_when_released(config: &sled::Config, dir: &Path) -> Result<sled::Db> {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        let error = match config.open() {
            Ok(db) => return Ok(db),
            Err(error) => error,
        };
        let lock_holder = match &error {
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                lock_holder(&dir.join("db"))
            }
            _ => None,
        };
        let message = match lock_holder {
            Some(pid) if pid == std::process::id() && started.elapsed() < OWN_LOCK_WAIT => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
                continue;
            }
            Some(pid) if pid != std::process::id() => format!(
                "cannot open store in {}: it is in use by process {pid} (another coordinator?)",
                dir.display()
            ),
            _ => format!("cannot open store in {}: {error}", dir.display()),
        };
        return Err(CoordinatorError::Store(message));
    }
}

/// The process holding the `flock` on `file`, from `/proc/locks` (Linux).
fn lock_holder(file: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(file).ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    // `1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF`; waiters have a `->` field.
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&"FLOCK") {
            return None;
        }
        let lock_inode = fields.get(5)?.rsplit(':').next()?.parse::<u64>().ok()?;
        if lock_inode != inode {
            return None;
        }
        fields.get(4)?.parse().ok()
    })
}

const EPOCH_KEY: &[u8] = b"epoch";
/// Present once `idx_metric` and `idx_metric_all` cover every run by its summary values
/// and every run record has its summaries (v1: last values, one project at a time).
const METRIC_INDEX_KEY: &[u8] = b"idx_metric_v2";
/// Present once `idx_param` covers every run.
const PARAM_INDEX_KEY: &[u8] = b"idx_param_v1";

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| CoordinatorError::Io {
            context: format!("failed to create data directory {}", dir.display()),
            source,
        })?;
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(ladder_limits::STORE_CACHE_BYTES)
            .flush_every_ms(Some(500));
        let db = open_when_released(&config, dir)?;
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
            idx_metric_all: open_tree("idx_metric_all")?,
            idx_param: open_tree("idx_param")?,
            db,
            data_file: Mutex::new(data_file),
            blobs_synced: Mutex::new(0),
            path: dir.to_path_buf(),
        };
        if store
            .meta
            .get(METRIC_INDEX_KEY)
            .map_err(sled_err)?
            .is_none()
        {
            store.upgrade_summaries()?;
            store.rebuild_metric_index()?;
            store.commit()?;
        }
        if store.meta.get(PARAM_INDEX_KEY).map_err(sled_err)?.is_none() {
            store.rebuild_param_index()?;
            store.commit()?;
        }
        Ok(store)
    }

    /// When the run's sweep was created (`i64::MAX` when the sweep is missing, which
    /// queries sort last too), from `cache` or the sweep record.
    fn sweep_created_ms(&self, sweep_id: &str, cache: &mut CreatedCache) -> Result<i64> {
        if let Some(created) = cache.get(sweep_id) {
            return Ok(*created);
        }
        /// The one field of a sweep record the index needs.
        #[derive(serde::Deserialize)]
        struct Created {
            created_ms: i64,
        }
        let created = match self.sweeps.get(sweep_id.as_bytes()).map_err(sled_err)? {
            Some(bytes) => decode::<Created>("sweeps", sweep_id.as_bytes(), &bytes)?.created_ms,
            None => i64::MAX,
        };
        cache.insert(sweep_id.to_string(), created);
        Ok(created)
    }

    /// Recreates `idx_param` from every run record (stores written before it).
    fn rebuild_param_index(&self) -> Result<()> {
        self.idx_param.clear().map_err(sled_err)?;
        let mut created = CreatedCache::new();
        let mut keys = Vec::new();
        for entry in self.runs.iter() {
            let (key, value) = entry.map_err(sled_err)?;
            let run: RunRecord = decode("runs", &key, &value)?;
            let sweep_created_ms = self.sweep_created_ms(&run.sweep_id, &mut created)?;
            keys.extend(param_keys(&run, sweep_created_ms));
            // A million runs' keys are not held at once.
            if keys.len() >= 100_000 {
                insert_keys(&self.idx_param, std::mem::take(&mut keys))?;
            }
        }
        insert_keys(&self.idx_param, keys)?;
        self.meta
            .insert(PARAM_INDEX_KEY, &[1u8])
            .map_err(sled_err)?;
        Ok(())
    }

    /// Gives run records stored before summaries theirs, from their stored points (or
    /// their last values where no point is stored). Only adds to the records.
    fn upgrade_summaries(&self) -> Result<()> {
        let mut specs: HashMap<String, Option<SweepSpec>> = HashMap::new();
        let mut upgraded = sled::Batch::default();
        for entry in self.runs.iter() {
            let (key, value) = entry.map_err(sled_err)?;
            let mut run: RunRecord = decode("runs", &key, &value)?;
            if !run.summaries.is_empty() || run.last_metrics.is_empty() {
                continue;
            }
            if !specs.contains_key(&run.sweep_id) {
                let spec = self.get_sweep(&run.sweep_id)?.map(|sweep| sweep.spec);
                specs.insert(run.sweep_id.clone(), spec);
            }
            let spec = specs.get(&run.sweep_id).and_then(Option::as_ref);
            let mut points = Vec::new();
            for attempt in &run.attempts {
                points.extend(self.metrics(&run.id, attempt.number)?);
            }
            run.summaries = RunRecord::summaries_of(spec, &points);
            for (name, value) in &run.last_metrics {
                if !run.summaries.contains_key(name) {
                    let reduction = spec.map_or(Reduction::Last, |s| s.reduction_of(name));
                    let summary = MetricSummary::first(*value, run.last_step, reduction);
                    run.summaries.insert(name.clone(), summary);
                }
            }
            upgraded.insert(key, encode(&run)?);
        }
        self.runs.apply_batch(upgraded).map_err(sled_err)
    }

    /// Recreates `idx_metric` and `idx_metric_all` from every run record (stores written
    /// before the indexes or before summaries).
    fn rebuild_metric_index(&self) -> Result<()> {
        self.idx_metric.clear().map_err(sled_err)?;
        self.idx_metric_all.clear().map_err(sled_err)?;
        let mut per_project = Vec::new();
        let mut across = Vec::new();
        for entry in self.runs.iter() {
            let (key, value) = entry.map_err(sled_err)?;
            let run: RunRecord = decode("runs", &key, &value)?;
            let (project_keys, all_keys) = index_keys(&run);
            per_project.extend(project_keys);
            across.extend(all_keys);
            // A million runs' keys are not held at once.
            if per_project.len() >= 100_000 {
                insert_keys(&self.idx_metric, std::mem::take(&mut per_project))?;
                insert_keys(&self.idx_metric_all, std::mem::take(&mut across))?;
            }
        }
        insert_keys(&self.idx_metric, per_project)?;
        insert_keys(&self.idx_metric_all, across)?;
        self.meta
            .insert(METRIC_INDEX_KEY, &[1u8])
            .map_err(sled_err)?;
        Ok(())
    }

    /// Stores many new runs at once (benchmarks and imports): the records in one batch,
    /// their index keys in bounded batches (see `insert_keys`). The runs must not exist
    /// yet.
    pub fn put_new_runs(&self, runs: &[RunRecord]) -> Result<()> {
        let mut per_project = Vec::new();
        let mut across = Vec::new();
        let mut by_param = Vec::new();
        let mut created = CreatedCache::new();
        for chunk in runs.chunks(INDEX_BATCH_KEYS) {
            let mut records = sled::Batch::default();
            for run in chunk {
                records.insert(run.id.as_bytes(), encode(run)?);
            }
            self.runs.apply_batch(records).map_err(sled_err)?;
        }
        for run in runs {
            let (project_keys, all_keys) = index_keys(run);
            per_project.extend(project_keys);
            across.extend(all_keys);
            let sweep_created_ms = self.sweep_created_ms(&run.sweep_id, &mut created)?;
            by_param.extend(param_keys(run, sweep_created_ms));
        }
        insert_keys(&self.idx_metric, per_project)?;
        insert_keys(&self.idx_metric_all, across)?;
        insert_keys(&self.idx_param, by_param)?;
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

/// Largest encoded chunk of metric points stored as one record (one point larger than
/// this is a chunk of its own). sled splits a leaf page at 16 entries whatever their
/// size, and writes a page larger than a quarter of its 512 KiB log segment to a
/// separate blob file; chunks of 4 KiB keep every page of `metrics` inline in the log.
pub const POINT_CHUNK_BYTES: usize = 4096;

/// The points of one event as records: `(index of the chunk's first point, JSON array)`,
/// each array at most [`POINT_CHUNK_BYTES`] unless it holds a single point.
fn encode_point_chunks(points: &[StoredPoint]) -> Result<Vec<(u32, Vec<u8>)>> {
    let mut chunks = Vec::new();
    let mut chunk: Vec<u8> = Vec::new();
    let mut first = 0u32;
    for (index, point) in points.iter().enumerate() {
        let encoded = encode(point)?;
        if !chunk.is_empty() && chunk.len() + 1 + encoded.len() + 1 > POINT_CHUNK_BYTES {
            chunk.push(b']');
            chunks.push((first, std::mem::take(&mut chunk)));
        }
        if chunk.is_empty() {
            first = index as u32;
            chunk.push(b'[');
        } else {
            chunk.push(b',');
        }
        chunk.extend_from_slice(&encoded);
    }
    if !chunk.is_empty() {
        chunk.push(b']');
        chunks.push((first, chunk));
    }
    Ok(chunks)
}

/// The points of one `metrics` record: a chunk (JSON array), or the single point (JSON
/// object) of a store written before chunking.
fn decode_point_chunk(key: &[u8], value: &[u8]) -> Result<Vec<StoredPoint>> {
    if value.first() == Some(&b'[') {
        decode("metrics", key, value)
    } else {
        Ok(vec![decode("metrics", key, value)?])
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(CoordinatorError::Encode)
}

fn decode<T: DeserializeOwned>(tree: &str, key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| CoordinatorError::CorruptRecord {
        tree: tree.to_string(),
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

fn sled_err(e: sled::Error) -> CoordinatorError {
    CoordinatorError::Sled(e)
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
        let old: Option<RunRecord> = match previous {
            Some(bytes) => Some(decode("runs", run.id.as_bytes(), &bytes)?),
            None => None,
        };
        let (old_project_keys, old_all_keys) = match &old {
            Some(old) => index_keys(old),
            None => (Vec::new(), Vec::new()),
        };
        let (project_keys, all_keys) = index_keys(run);
        update_index(&self.idx_metric, &old_project_keys, project_keys)?;
        update_index(&self.idx_metric_all, &old_all_keys, all_keys)?;
        // A run's parameters and position never change: only a new run (or a record
        // rewritten with other ones) touches the parameter index.
        let same_params = old.as_ref().is_some_and(|old| {
            old.params == run.params
                && old.project == run.project
                && old.sweep_id == run.sweep_id
                && old.index == run.index
        });
        if !same_params {
            let mut created = CreatedCache::new();
            let old_param_keys = match &old {
                Some(old) => param_keys(old, self.sweep_created_ms(&old.sweep_id, &mut created)?),
                None => Vec::new(),
            };
            let sweep_created_ms = self.sweep_created_ms(&run.sweep_id, &mut created)?;
            update_index(
                &self.idx_param,
                &old_param_keys,
                param_keys(run, sweep_created_ms),
            )?;
        }
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
        for (first, chunk) in encode_point_chunks(metrics)? {
            metric_batch.insert(event_key(run_id, attempt, seq, first), chunk);
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
        let mut points = Vec::new();
        for entry in self.metrics.scan_prefix(attempt_prefix(run_id, attempt)) {
            let (key, value) = entry.map_err(sled_err)?;
            points.extend(decode_point_chunk(&key, &value)?);
        }
        Ok(points)
    }

    fn metrics_after(
        &self,
        run_id: &str,
        attempt: u32,
        after: Option<PointKey>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(PointKey, StoredPoint)>> {
        let prefix = attempt_prefix(run_id, attempt);
        // The chunk holding the point after `after` starts at or before it within its
        // event: start at the event's first chunk and skip what is not after `after`.
        let start = match after {
            Some(key) => Bound::Included(event_key(run_id, attempt, key.seq, 0)),
            None => Bound::Included(prefix.clone()),
        };
        let mut end = attempt_prefix(run_id, attempt.saturating_add(1));
        if attempt == u32::MAX {
            end = prefix.clone();
            end.push(0xff);
        }
        let mut points = Vec::new();
        let mut bytes = 0usize;
        'chunks: for entry in self.metrics.range((start, Bound::Excluded(end))) {
            let (key, value) = entry.map_err(sled_err)?;
            let Some(suffix) = key.get(prefix.len()..) else {
                continue;
            };
            if suffix.len() != 12 {
                continue;
            }
            let seq = u64::from_be_bytes(suffix[..8].try_into().expect("8 bytes"));
            let first = u32::from_be_bytes(suffix[8..].try_into().expect("4 bytes"));
            let chunk = decode_point_chunk(&key, &value)?;
            let point_bytes = value.len() / chunk.len().max(1);
            for (offset, point) in chunk.into_iter().enumerate() {
                let point_key = PointKey {
                    seq,
                    index: first.saturating_add(offset as u32),
                };
                if after.is_some_and(|after| point_key <= after) {
                    continue;
                }
                if points.len() >= limit || (bytes >= max_bytes && !points.is_empty()) {
                    break 'chunks;
                }
                bytes += point_bytes;
                points.push((point_key, point));
            }
        }
        Ok(points)
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

    fn delete_agent(&self, name: &str) -> Result<()> {
        self.agents.remove(name.as_bytes()).map_err(sled_err)?;
        Ok(())
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
        project: Option<&str>,
        metric: &str,
        descending: bool,
        from: Option<f64>,
    ) -> Option<IndexWalk<'a>> {
        let tree = match project {
            Some(_) => &self.idx_metric,
            None => &self.idx_metric_all,
        };
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
                Ok((ladder_query::f64_from_key(bytes), run_id))
            }
        };
        let mut end = prefix.clone();
        *end.last_mut().expect("prefix ends in 0") = 1;
        let walk: IndexWalk<'a> = match (descending, from) {
            (false, None) => Box::new(tree.range(prefix..end).map(parse)),
            (false, Some(value)) => {
                let mut start = prefix;
                start.extend_from_slice(&ladder_query::f64_key(value));
                Box::new(tree.range(start..end).map(parse))
            }
            (true, None) => Box::new(tree.range(prefix..end).rev().map(parse)),
            (true, Some(value)) => {
                let mut upper = prefix.clone();
                upper.extend_from_slice(&ladder_query::f64_key(value));
                upper.push(0xff);
                Box::new(tree.range(prefix..upper).rev().map(parse))
            }
        };
        Some(walk)
    }

    fn param_index<'a>(
        &'a self,
        project: &str,
        param: &str,
        descending: bool,
        from: Option<(&Value, &Position)>,
    ) -> Option<ParamWalk<'a>> {
        if !param_indexable(param) {
            return None;
        }
        let tree = &self.idx_param;
        let prefix = index_prefix(Some(project), param);
        let prefix_len = prefix.len();
        let parse = move |entry: sled::Result<(sled::IVec, sled::IVec)>| -> Result<ParamEntry> {
            let (key, _) = entry.map_err(sled_err)?;
            parse_param_key(&key, prefix_len).map(|(entry, _)| entry)
        };
        let end = prefix_end(&prefix);
        let walk: ParamWalk<'a> = match (descending, from) {
            (false, None) => Box::new(tree.range(prefix..end).map(parse)),
            (false, Some((value, position))) => {
                let mut start = prefix;
                query::push_value_key(&mut start, value);
                query::push_position_key(&mut start, position);
                Box::new(tree.range(start..end).map(parse))
            }
            (true, None) => Box::new(DescendingParamWalk {
                tree,
                upper: end,
                prefix,
                group: None,
                failed: false,
            }),
            (true, Some((value, position))) => {
                // The rest of the cursor's own value group first, then the groups below.
                let mut group = prefix.clone();
                query::push_value_key(&mut group, value);
                let mut start = group.clone();
                query::push_position_key(&mut start, position);
                let rest_of_group = tree.range(start..prefix_end(&group));
                Box::new(DescendingParamWalk {
                    tree,
                    prefix,
                    upper: group,
                    group: Some(rest_of_group),
                    failed: false,
                })
            }
        };
        Some(walk)
    }

    fn commit(&self) -> Result<()> {
        self.db.flush().map_err(sled_err)?;
        // Blobs first: the flushed log may point at them.
        self.sync_blobs()?;
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

impl SledStore {
    /// fsyncs the blob files sled wrote since the last commit. sled writes a page larger
    /// than a quarter of a log segment (a leaf of long log lines, say) to its own file
    /// under `blobs/`, named by its log sequence number, and never syncs it; the log
    /// that points at it is synced by [`Store::commit`].
    fn sync_blobs(&self) -> Result<()> {
        let dir = self.path.join("blobs");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(CoordinatorError::Io {
                    context: format!("failed to list {}", dir.display()),
                    source,
                })
            }
        };
        let io_error = |path: &Path| {
            let context = format!("failed to fsync {}", path.display());
            move |source| CoordinatorError::Io { context, source }
        };
        let mut synced = self.blobs_synced.lock().unwrap_or_else(|e| e.into_inner());
        let mut newest = *synced;
        for entry in entries {
            let entry = entry.map_err(io_error(&dir))?;
            let Some(lsn) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if lsn <= *synced {
                continue;
            }
            let path = entry.path();
            match File::open(&path) {
                Ok(file) => file.sync_data().map_err(io_error(&path))?,
                // Collected by sled since it was listed: nothing points at it any more.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(io_error(&path)(source)),
            }
            newest = newest.max(lsn);
        }
        if newest > *synced {
            File::open(&dir)
                .and_then(|dir_file| dir_file.sync_all())
                .map_err(io_error(&dir))?;
            *synced = newest;
        }
        Ok(())
    }

    /// Records and bytes (keys, values) of each tree, as stored before sled's own
    /// overhead: where the store's size per run goes (`ladder bench history`).
    pub fn tree_usage(&self) -> Result<Vec<TreeUsage>> {
        let trees = [
            ("sweeps", &self.sweeps),
            ("runs", &self.runs),
            ("metrics", &self.metrics),
            ("logs", &self.logs),
            ("agents", &self.agents),
            ("meta", &self.meta),
            ("idx_metric", &self.idx_metric),
            ("idx_metric_all", &self.idx_metric_all),
            ("idx_param", &self.idx_param),
        ];
        let mut usage = Vec::with_capacity(trees.len());
        for (name, tree) in trees {
            let mut tree_usage = TreeUsage {
                tree: name,
                ..TreeUsage::default()
            };
            for entry in tree.iter() {
                let (key, value) = entry.map_err(sled_err)?;
                tree_usage.records += 1;
                tree_usage.key_bytes += key.len() as u64;
                tree_usage.value_bytes += value.len() as u64;
            }
            usage.push(tree_usage);
        }
        Ok(usage)
    }
}

/// See [`SledStore::tree_usage`].
#[derive(Debug, Default, Clone)]
pub struct TreeUsage {
    pub tree: &'static str,
    pub records: u64,
    pub key_bytes: u64,
    pub value_bytes: u64,
}

#[cfg(test)]
impl SledStore {
    /// Makes the store look like one written before the parameter index.
    pub(crate) fn forget_param_index(&self) {
        self.idx_param.clear().unwrap();
        self.meta.remove(PARAM_INDEX_KEY).unwrap();
        self.commit().unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AttemptOutcome;
    use ladder_types::{RunStatus, SweepStatus};

    /// A run record as stores before summaries wrote it: last values only.
    fn old_run(spec: &SweepSpec) -> RunRecord {
        RunRecord {
            id: "s-000000".into(),
            sweep_id: "s".into(),
            project: spec.project.clone(),
            index: 0,
            params: Default::default(),
            argv: Vec::new(),
            status: RunStatus::Completed,
            attempts: vec![crate::model::AttemptRecord {
                outcome: AttemptOutcome::Completed,
                exit_code: Some(0),
                ended_ms: Some(1),
                acked_seq: 1,
                metric_points: 3,
                ..crate::model::AttemptRecord::running(1, 1, "a".into(), Vec::new(), 0)
            }],
            last_metrics: [("m".to_string(), 9.0), ("n".to_string(), 7.0)]
                .into_iter()
                .collect(),
            last_step: Some(3),
            created_ms: 0,
            ended_ms: Some(1),
            tags: Default::default(),
            notes: Vec::new(),
            summaries: Default::default(),
            info: Default::default(),
            metrics_dropped: 0,
            next_note_id: 0,
        }
    }

    #[test]
    fn stores_written_before_summaries_are_upgraded_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = "name: s\nproject: p\nmethod: grid\nmetric: {name: m, goal: minimize}\nparameters:\n  x: {value: 1}\ncommand: [\"true\"]\n";
        let spec = ladder_spec::parse_sweep("s.yaml", yaml).unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store
                .put_sweep(&SweepRecord {
                    id: "s".into(),
                    spec: spec.clone(),
                    file_name: "s.yaml".into(),
                    yaml: yaml.into(),
                    status: SweepStatus::Completed,
                    created_ms: 0,
                    ended_ms: None,
                    planned_runs: 1,
                    created_runs: 1,
                    owner: String::new(),
                    git_commit: String::new(),
                    git_dirty: false,
                })
                .unwrap();
            // Written as an old coordinator did: the JSON has no `summaries`, `n` has no
            // stored points, and the store has only the version 1 index.
            let record = serde_json::to_vec(&old_run(&spec)).unwrap();
            assert!(!String::from_utf8_lossy(&record).contains("summaries"));
            store.runs.insert("s-000000", record).unwrap();
            let points: Vec<StoredPoint> = [5.0, 1.0, 9.0]
                .iter()
                .enumerate()
                .map(|(i, v)| StoredPoint {
                    step: Some(i as i64 + 1),
                    values: [("m".to_string(), *v)].into_iter().collect(),
                    time_ms: 0,
                })
                .collect();
            store.put_output("s-000000", 1, 1, &points, &[]).unwrap();
            store.idx_metric_all.clear().unwrap();
            store.meta.remove(METRIC_INDEX_KEY).unwrap();
            store.meta.insert(b"idx_metric_v1", &[1u8]).unwrap();
            store.commit().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let run = store.get_run("s-000000").unwrap().unwrap();
        let m = run.summaries["m"];
        assert_eq!((m.min, m.min_step, m.max, m.last), (1.0, Some(2), 9.0, 9.0));
        let n = run.summaries["n"];
        assert_eq!(
            (n.min, n.max, n.last, n.last_step),
            (7.0, 7.0, 7.0, Some(3))
        );
        // Nothing stored is lost.
        assert_eq!(run.last_metrics, old_run(&spec).last_metrics);
        assert_eq!(run.attempts.len(), 1);
        assert_eq!(store.metrics("s-000000", 1).unwrap().len(), 3);
        for project in [Some("p"), None] {
            let walk: Vec<(f64, String)> = store
                .metric_index(project, "m", false, None)
                .unwrap()
                .map(|e| e.unwrap())
                .collect();
            assert_eq!(walk, [(9.0, "s-000000".to_string())], "{project:?}");
        }
        assert!(store.check().unwrap().ok());
    }

    #[test]
    fn a_step_lower_than_an_earlier_one_is_kept_and_the_check_agrees() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ladder_spec::parse_sweep(
            "s.yaml",
            "name: s\nproject: p\nmethod: grid\nparameters:\n  x: {value: 1}\ncommand: [\"true\"]\n",
        )
        .unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let mut run = old_run(&spec);
        run.attempts[0].acked_seq = 2;
        let point = |step: i64, value: f64| StoredPoint {
            step: Some(step),
            values: [("m".to_string(), value)].into(),
            time_ms: 0,
        };
        store
            .put_output(&run.id, 1, 1, &[point(10, 1.0)], &[])
            .unwrap();
        store
            .put_output(&run.id, 1, 2, &[point(5, 2.0)], &[])
            .unwrap();
        store.put_run(&run).unwrap();
        store
            .put_sweep(&SweepRecord {
                id: "s".into(),
                spec: spec.clone(),
                file_name: "s.yaml".into(),
                yaml: String::new(),
                status: SweepStatus::Completed,
                created_ms: 0,
                ended_ms: None,
                planned_runs: 1,
                created_runs: 1,
                owner: String::new(),
                git_commit: String::new(),
                git_dirty: false,
            })
            .unwrap();
        let report = store.check().unwrap();
        assert!(report.ok(), "{:?}", report.problems);
        let steps: Vec<Option<i64>> = store
            .metrics(&run.id, 1)
            .unwrap()
            .iter()
            .map(|p| p.step)
            .collect();
        assert_eq!(steps, vec![Some(10), Some(5)], "kept as reported");
    }

    /// Points of `event` numbered from `from`, with a metric name long enough that a few
    /// dozen fill a chunk.
    fn points(from: i64, n: usize) -> Vec<StoredPoint> {
        (0..n as i64)
            .map(|i| StoredPoint {
                step: Some(from + i),
                values: [
                    ("train/loss".to_string(), 1.0 / (1 + from + i) as f64),
                    ("train/a_longer_metric_name_of_an_eval".to_string(), 0.5),
                ]
                .into(),
                time_ms: 1_796_469_698_743 + i,
            })
            .collect()
    }

    #[test]
    fn the_points_of_an_event_are_stored_in_chunks_that_keep_sled_pages_inline() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        // Events of 512 points (a full agent batch) and of 1, as many as a long run sends.
        let mut expected = Vec::new();
        for seq in 1..=40u64 {
            let n = if seq % 2 == 0 { 512 } else { 1 };
            let batch = points(expected.len() as i64, n);
            store.put_output("s-000000", 1, seq, &batch, &[]).unwrap();
            expected.extend(batch);
        }
        store.commit().unwrap();
        assert_eq!(store.metrics("s-000000", 1).unwrap(), expected);
        let records = store.metrics.len();
        assert!(
            records < expected.len() / 20,
            "{records} records for {} points",
            expected.len()
        );
        for entry in store.metrics.iter() {
            let (_, value) = entry.unwrap();
            assert!(value.len() <= POINT_CHUNK_BYTES, "{} bytes", value.len());
        }
        let blobs: Vec<_> = std::fs::read_dir(dir.path().join("blobs"))
            .map(|entries| entries.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(blobs.is_empty(), "pages written as blobs: {blobs:?}");
    }

    #[test]
    fn reading_points_after_a_key_resumes_inside_a_chunk_and_across_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let mut expected = Vec::new();
        for (seq, n) in [(1u64, 300usize), (2, 1), (5, 200)] {
            let batch = points(expected.len() as i64, n);
            for (index, point) in batch.iter().enumerate() {
                let key = PointKey {
                    seq,
                    index: index as u32,
                };
                expected.push((key, point.clone()));
            }
            store.put_output("s-000000", 1, seq, &batch, &[]).unwrap();
        }
        // Another attempt and another run around it, never read by mistake.
        store
            .put_output("s-000000", 2, 1, &points(0, 3), &[])
            .unwrap();
        store
            .put_output("s-00000", 1, 1, &points(0, 3), &[])
            .unwrap();
        // Every cursor, including each chunk's first and last point.
        for start in 0..expected.len() {
            let after = start.checked_sub(1).map(|i| expected[i].0);
            let got = store
                .metrics_after("s-000000", 1, after, 7, usize::MAX)
                .unwrap();
            let want: Vec<_> = expected[start..].iter().take(7).cloned().collect();
            assert_eq!(got, want, "after {after:?}");
        }
        // A byte budget still returns at least one point, and stops near the budget.
        let one = store.metrics_after("s-000000", 1, None, 1000, 1).unwrap();
        assert_eq!(one.len(), 1);
        let some = store
            .metrics_after("s-000000", 1, None, 1000, 2000)
            .unwrap();
        assert!(!some.is_empty() && some.len() < 100, "{}", some.len());
    }

    #[test]
    fn points_stored_one_per_record_before_chunking_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let old = points(0, 3);
        for (index, point) in old.iter().enumerate() {
            store
                .metrics
                .insert(
                    event_key("s-000000", 1, 1, index as u32),
                    encode(point).unwrap(),
                )
                .unwrap();
        }
        let new = points(3, 2);
        store.put_output("s-000000", 1, 2, &new, &[]).unwrap();
        let all: Vec<StoredPoint> = old.iter().chain(&new).cloned().collect();
        assert_eq!(store.metrics("s-000000", 1).unwrap(), all);
        let after = store
            .metrics_after(
                "s-000000",
                1,
                Some(PointKey { seq: 1, index: 1 }),
                10,
                usize::MAX,
            )
            .unwrap();
        let keys: Vec<PointKey> = after.iter().map(|(key, _)| *key).collect();
        assert_eq!(
            keys,
            [
                PointKey { seq: 1, index: 2 },
                PointKey { seq: 2, index: 0 },
                PointKey { seq: 2, index: 1 }
            ]
        );
    }

    #[test]
    fn a_store_reopened_at_once_after_its_handle_is_dropped_opens() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..20u64 {
            let store = SledStore::open(dir.path()).unwrap();
            store
                .put_output("s-000000", 1, round + 1, &points(0, 50), &[])
                .unwrap();
            store.commit().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.metrics("s-000000", 1).unwrap().len(), 20 * 50);
    }

    #[test]
    fn a_store_locked_by_another_process_is_refused_at_once_naming_it() {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        drop(SledStore::open(dir.path()).unwrap());
        let mut holder = std::process::Command::new("python3")
            .args([
                "-c",
                "import fcntl, sys\nf = open(sys.argv[1], 'a')\nfcntl.flock(f, fcntl.LOCK_EX)\nprint('locked', flush=True)\nsys.stdin.read()\n",
            ])
            .arg(dir.path().join("db"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        std::io::BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        // The lock of this process's own dropped handle may still be there: the open
        // waits for it, then meets the other process's.
        let started = std::time::Instant::now();
        let error = SledStore::open(dir.path())
            .err()
            .expect("refused")
            .to_string();
        drop(holder.stdin.take());
        holder.wait().unwrap();
        assert!(
            error.contains(&format!("in use by process {}", holder.id())),
            "{error}"
        );
        assert!(
            started.elapsed() < OWN_LOCK_WAIT,
            "waited for another process"
        );
    }
}
