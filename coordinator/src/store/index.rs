//! The metric and parameter index keys (`idx_metric`, `idx_metric_all`, `idx_param`):
//! their codec, the walks over them, and their upkeep.

use super::*;

/// The `(metric, value)` index entries of a run: its summary values, and the tasks
/// average of those.
pub(super) fn index_entries(run: &RunRecord) -> Vec<(String, f64)> {
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
pub(super) fn index_prefix(project: Option<&str>, metric: &str) -> Vec<u8> {
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

pub(super) fn index_key(project: Option<&str>, metric: &str, value: f64, run_id: &str) -> Vec<u8> {
    let mut key = index_prefix(project, metric);
    key.extend_from_slice(&super::keys::f64_key(value));
    key.extend_from_slice(run_id.as_bytes());
    key
}

/// The keys of a run in `idx_metric` and in `idx_metric_all`.
pub(super) fn index_keys(run: &RunRecord) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
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

/// The value a query sees for a parameter (see `reads::runs::Facts`): integers and floats
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
pub(super) type CreatedCache = HashMap<String, i64>;

/// The keys of a run in `idx_param`: one per parameter whose name can be a key.
pub(super) fn param_keys(run: &RunRecord, sweep_created_ms: i64) -> Vec<Vec<u8>> {
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
        super::keys::push_value_key(&mut key, &param_query_value(value));
        super::keys::push_position_key(&mut key, &position);
        key.extend_from_slice(run.id.as_bytes());
        keys.push(key);
    }
    keys
}

/// Whether a parameter can be walked in `idx_param` (names with NUL are not indexed).
pub(super) fn param_indexable(name: &str) -> bool {
    !name.contains('\0')
}

/// The smallest key greater than every key that starts with `prefix`.
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
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
pub(super) fn parse_param_key(key: &[u8], prefix_len: usize) -> Result<(ParamEntry, usize)> {
    let malformed = || CoordinatorError::Store("malformed idx_param key".into());
    let rest = key.get(prefix_len..).ok_or_else(malformed)?;
    let (value, value_len) = super::keys::value_from_key(rest).ok_or_else(malformed)?;
    let (position, position_len) =
        super::keys::position_from_key(&rest[value_len..]).ok_or_else(malformed)?;
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
pub(super) struct DescendingParamWalk<'a> {
    pub(super) tree: &'a sled::Tree,
    pub(super) prefix: Vec<u8>,
    /// Groups below this key are still to come.
    pub(super) upper: Vec<u8>,
    /// The group being walked.
    pub(super) group: Option<sled::Iter>,
    pub(super) failed: bool,
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
pub(super) fn insert_keys(tree: &sled::Tree, mut keys: Vec<Vec<u8>>) -> Result<()> {
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
pub(super) const INDEX_BATCH_KEYS: usize = 1_000;

/// Inserts the keys of `new` that `old` lacks into an index tree, one by one (see
/// [`remove_index_keys`] for the other half of an update). Linear in the number of keys
/// (a run may carry up to [`ladder_limits::MAX_METRICS_PER_RUN`] metrics, each with
/// index keys).
pub(super) fn add_index_keys(tree: &sled::Tree, old: &[Vec<u8>], new: &[Vec<u8>]) -> Result<()> {
    let old_keys: HashSet<&[u8]> = old.iter().map(Vec::as_slice).collect();
    for key in new {
        if !old_keys.contains(key.as_slice()) {
            tree.insert(key.as_slice(), &[]).map_err(sled_err)?;
        }
    }
    Ok(())
}

/// Removes the keys of `old` that `new` lacks from an index tree, one by one.
pub(super) fn remove_index_keys(tree: &sled::Tree, old: &[Vec<u8>], new: &[Vec<u8>]) -> Result<()> {
    let new_keys: HashSet<&[u8]> = new.iter().map(Vec::as_slice).collect();
    for key in old {
        if !new_keys.contains(key.as_slice()) {
            tree.remove(key.as_slice()).map_err(sled_err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::model::RunRecord;
    use crate::store::{SledStore, Store};

    /// Write system calls of this process so far (every thread's, sled's I/O pool
    /// included), from `/proc/self/io`.
    fn write_calls() -> u64 {
        let io = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
        io.lines()
            .find_map(|line| line.strip_prefix("syscw: "))
            .and_then(|n| n.trim().parse().ok())
            .expect("syscw in /proc/self/io")
    }

    /// Updating runs and their index keys between two commits must not write to the
    /// disk on its own: sled writes its log buffer once per commit (or when the buffer
    /// fills), unless each update is a sled batch, which seals and writes the buffer
    /// itself (several writes and `sync_file_range`s per run: what made dispatch slow).
    #[test]
    fn run_updates_between_commits_do_not_write_the_log_each() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let runs: Vec<RunRecord> = (0..200)
            .map(|i| {
                serde_json::from_value(serde_json::json!({
                    "id": format!("s-{i:06}"), "sweep_id": "s", "project": "p", "index": i,
                    "params": {"lr": 0.1}, "argv": ["true"], "status": "running",
                    "attempts": [], "last_metrics": {"loss": i as f64}, "last_step": 1,
                    "created_ms": i, "ended_ms": null
                }))
                .unwrap()
            })
            .collect();
        store.commit().unwrap();
        let before = write_calls();
        for run in &runs {
            store.put_run(run).unwrap();
        }
        for run in &runs {
            let mut changed = run.clone();
            changed.last_metrics.insert("loss".into(), -1.0);
            changed.last_metrics.insert("acc".into(), 0.5);
            store.put_run(&changed).unwrap();
            store.put_output(&run.id, 1, 1, &[], &[]).unwrap();
        }
        let written = write_calls() - before;
        // 400 run writes with index changes: a batch per index update wrote more than a
        // thousand times. Without batches only sled's 500 ms background flush writes.
        assert!(written < 40, "{written} write calls for 400 run updates");
        // The indexes hold the new keys and not the old ones.
        let walk: Vec<_> = store
            .metric_index(Some("p"), "loss", false, None)
            .expect("a metric index")
            .map(|entry| entry.unwrap())
            .collect();
        assert_eq!(walk.len(), 200);
        assert!(walk.iter().all(|(value, _)| *value == -1.0));
        store.commit().unwrap();
    }
}
