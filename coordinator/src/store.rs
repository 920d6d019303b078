//! The coordinator's durable state, behind the small [`Store`] trait.
//!
//! This file holds the trait and the sled implementation of it; beside it, `open`
//! (opening and upgrading a store), `index` (the index entries and their walks), `keys`
//! (the order-preserving key bytes), `codec` (records, point chunks, event keys) and
//! `check` (`ladder store check`).
//!
//! [`SledStore`] is the real implementation. Trees:
//!
//! - `sweeps`: sweep id -> [`SweepRecord`] (JSON)
//! - `runs`: run id -> [`RunRecord`] (JSON, zstd-compressed against a fixed dictionary:
//!   see `codec::encode_compressed`; records of earlier versions are plain JSON); run
//!   ids start with their sweep id, so the runs of a sweep are one prefix scan
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
//!   `keys::push_value_key`: booleans, then numbers by value, then strings
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
use ladder_query::{Position, Value};
use ladder_spec::{ParamValue, SweepSpec};

mod check;
mod codec;
mod index;
mod keys;
mod open;

pub use check::StoreCheck;
pub use codec::POINT_CHUNK_BYTES;
use codec::*;
pub use index::param_query_value;
use index::*;
use open::*;

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
        // Key by key, in an order that keeps every record findable through the indexes
        // after any crash (sled recovers a prefix of its log): the new keys go in before
        // the record, the old ones come out after it, so an index may hold a stale key
        // (readers check keys against the record) but never lacks one. No sled batch:
        // each batch seals and writes sled's log buffer on its own, several writes and
        // `sync_file_range`s per run instead of one write per group commit.
        let old = self.get_run(&run.id)?;
        let (old_project_keys, old_all_keys) = match &old {
            Some(old) => index_keys(old),
            None => (Vec::new(), Vec::new()),
        };
        let (project_keys, all_keys) = index_keys(run);
        // A run's parameters and position never change: only a new run (or a record
        // rewritten with other ones) touches the parameter index.
        let same_params = old.as_ref().is_some_and(|old| {
            old.params == run.params
                && old.project == run.project
                && old.sweep_id == run.sweep_id
                && old.index == run.index
        });
        let (old_param_keys, param_keys) = if same_params {
            (Vec::new(), Vec::new())
        } else {
            let mut created = CreatedCache::new();
            let old_param_keys = match &old {
                Some(old) => param_keys(old, self.sweep_created_ms(&old.sweep_id, &mut created)?),
                None => Vec::new(),
            };
            let sweep_created_ms = self.sweep_created_ms(&run.sweep_id, &mut created)?;
            (old_param_keys, param_keys(run, sweep_created_ms))
        };
        let indexes = [
            (&self.idx_metric, &old_project_keys, &project_keys),
            (&self.idx_metric_all, &old_all_keys, &all_keys),
            (&self.idx_param, &old_param_keys, &param_keys),
        ];
        for (tree, old, new) in indexes {
            add_index_keys(tree, old, new)?;
        }
        self.runs
            .insert(run.id.as_bytes(), encode_compressed(run)?)
            .map_err(sled_err)?;
        for (tree, old, new) in indexes {
            remove_index_keys(tree, old, new)?;
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
        // Record by record, not in sled batches (each seals and writes sled's log buffer
        // on its own): an event is acknowledged only after the group commit, and one
        // cut short by a crash is sent again with the same keys.
        for (first, chunk) in encode_point_chunks(metrics)? {
            self.metrics
                .insert(event_key(run_id, attempt, seq, first), chunk)
                .map_err(sled_err)?;
        }
        for (i, line) in logs.iter().enumerate() {
            self.logs
                .insert(event_key(run_id, attempt, seq, i as u32), encode(line)?)
                .map_err(sled_err)?;
        }
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
                Ok((keys::f64_from_key(bytes), run_id))
            }
        };
        let mut end = prefix.clone();
        *end.last_mut().expect("prefix ends in 0") = 1;
        let walk: IndexWalk<'a> = match (descending, from) {
            (false, None) => Box::new(tree.range(prefix..end).map(parse)),
            (false, Some(value)) => {
                let mut start = prefix;
                start.extend_from_slice(&keys::f64_key(value));
                Box::new(tree.range(start..end).map(parse))
            }
            (true, None) => Box::new(tree.range(prefix..end).rev().map(parse)),
            (true, Some(value)) => {
                let mut upper = prefix.clone();
                upper.extend_from_slice(&keys::f64_key(value));
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
                keys::push_value_key(&mut start, value);
                keys::push_position_key(&mut start, position);
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
                keys::push_value_key(&mut group, value);
                let mut start = group.clone();
                keys::push_position_key(&mut start, position);
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
mod tests;
