//! A run's artifacts: which uploads an attempt may make, and recording the files the
//! artifact store committed.

use super::*;

/// A file an agent uploads for an attempt it holds, as its `UploadArtifactStart` says.
#[derive(Debug, Clone)]
pub struct ArtifactUpload {
    pub lease: Lease,
    /// The agent's name, proven by `secret` (the one issued when the name enrolled).
    pub agent: String,
    pub secret: AgentSecret,
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

impl Scheduler {
    /// Checks that `upload` may be stored for its run and, unless `check_only`, records
    /// it on the run (replacing an earlier file of the same name), to be written with
    /// this batch's commit.
    pub(super) fn record_artifact(
        &mut self,
        upload: ArtifactUpload,
        check_only: bool,
    ) -> Result<ArtifactRecord, CoordinatorError> {
        let proven = self
            .agents
            .get(&upload.agent)
            .and_then(|agent| agent.record.secret_sha256.as_ref())
            .is_some_and(|hash| hash.verifies(&upload.secret));
        if !proven {
            return Err(CoordinatorError::PermissionDenied(format!(
                "agent {:?} did not prove its name (its secret is not the one it enrolled with)",
                upload.agent
            )));
        }
        if !self.lease_is_current(&upload.lease, &upload.agent) {
            warn!(run_id = %upload.lease.run_id, attempt = upload.lease.attempt, agent = %upload.agent, "artifact upload with a stale lease refused");
            return Err(CoordinatorError::FailedPrecondition(format!(
                "stale lease: attempt {} of run {} is not running on agent {} (the run has a newer attempt or has ended)",
                upload.lease.attempt, upload.lease.run_id, upload.agent
            )));
        }
        let run = self
            .runs
            .get_mut(&upload.lease.run_id)
            .expect("a current lease has a run");
        let record = ArtifactRecord {
            name: upload.name,
            size: upload.size,
            sha256: upload.sha256,
            attempt: upload.lease.attempt,
            created_ms: now_ms(),
        };
        let position = run
            .artifacts
            .binary_search_by(|stored| stored.name.as_str().cmp(&record.name));
        let replaced = position.ok().map_or(0, |index| run.artifacts[index].size);
        let files = run.artifacts.len() + usize::from(position.is_err());
        if files > ladder_limits::MAX_ARTIFACTS_PER_RUN {
            return Err(CoordinatorError::InvalidArgument(format!(
                "run {} has {} artifacts already (the limit); {} is not stored",
                run.id,
                ladder_limits::MAX_ARTIFACTS_PER_RUN,
                record.name
            )));
        }
        let stored: u64 = run.artifacts.iter().map(|a| a.size).sum();
        let total = stored - replaced + record.size;
        if total > ladder_limits::MAX_RUN_ARTIFACT_BYTES {
            return Err(CoordinatorError::InvalidArgument(format!(
                "{} ({} bytes) would bring run {}'s artifacts to {total} bytes; the limit is {}",
                record.name,
                record.size,
                run.id,
                ladder_limits::MAX_RUN_ARTIFACT_BYTES
            )));
        }
        if check_only {
            return Ok(record);
        }
        match position {
            Ok(index) => run.artifacts[index] = record.clone(),
            Err(index) => run.artifacts.insert(index, record.clone()),
        }
        debug!(run_id = %run.id, name = %record.name, size = record.size, "artifact recorded");
        self.changed.insert(run.sweep_id.clone());
        self.dirty_runs.insert(run.id.clone());
        Ok(record)
    }
}
