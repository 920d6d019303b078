//! Opening a store: waiting for this process's own dropped handle, and upgrading
//! stores written by older versions (summaries, indexes).

use super::*;

/// How long [`SledStore::open`] waits for a handle this process dropped to let go of
/// the store's lock.
pub(super) const OWN_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Opens sled's database in `dir`. sled holds an exclusive `flock` on its `db` file
/// until the last of its own threads lets go of a dropped handle, a little after the
/// handle itself is gone: while the lock's holder is this process (or the lock is gone
/// by the time `/proc/locks` is read), the open is retried
/// (for at most [`OWN_LOCK_WAIT`]); held by another process, it fails at once, naming it.
pub(super) fn open_when_released(config: &sled::Config, dir: &Path) -> Result<sled::Db> {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        let error = match config.open() {
            Ok(db) => return Ok(db),
            Err(error) => error,
        };
        let is_lock_error = matches!(
            &error,
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock")
        );
        let lock_holder = if is_lock_error {
            lock_holder(&dir.join("db"))
        } else {
            None
        };
        let own = std::process::id();
        let message = match lock_holder {
            Some(pid) if pid != own => format!(
                "cannot open store in {}: it is in use by process {pid} (another coordinator?)",
                dir.display()
            ),
            // This process's own dropped handle, or a lock released since the open
            // failed (gone from /proc/locks): try again, for a while.
            _ if is_lock_error && started.elapsed() < OWN_LOCK_WAIT => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
                continue;
            }
            _ => format!("cannot open store in {}: {error}", dir.display()),
        };
        return Err(CoordinatorError::Store(message));
    }
}

/// The process holding the `flock` on `file`, from `/proc/locks` (Linux).
pub(super) fn lock_holder(file: &Path) -> Option<u32> {
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

pub(super) const EPOCH_KEY: &[u8] = b"epoch";
/// Present once `idx_metric` and `idx_metric_all` cover every run by its summary values
/// and every run record has its summaries (v1: last values, one project at a time).
pub(super) const METRIC_INDEX_KEY: &[u8] = b"idx_metric_v2";
/// Present once `idx_param` covers every run.
pub(super) const PARAM_INDEX_KEY: &[u8] = b"idx_param_v1";

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
    pub(super) fn sweep_created_ms(&self, sweep_id: &str, cache: &mut CreatedCache) -> Result<i64> {
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
    pub(super) fn rebuild_param_index(&self) -> Result<()> {
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
    pub(super) fn upgrade_summaries(&self) -> Result<()> {
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
            upgraded.insert(key, encode_compressed(&run)?);
        }
        self.runs.apply_batch(upgraded).map_err(sled_err)
    }

    /// Recreates `idx_metric` and `idx_metric_all` from every run record (stores written
    /// before the indexes or before summaries).
    pub(super) fn rebuild_metric_index(&self) -> Result<()> {
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
                records.insert(run.id.as_bytes(), encode_compressed(run)?);
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
