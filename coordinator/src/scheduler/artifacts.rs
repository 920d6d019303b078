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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GitState;
    use crate::protocol::{Finish, FinishOutcome, Registration, RunEvent, RunEventMessage};
    use crate::store::SledStore;

    const ONE_RUN: &str = "name: t\nmethod: grid\nartifacts: [model/]\ncommand: [\"true\"]\n";

    fn scheduler(dir: &std::path::Path) -> Scheduler {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir).unwrap());
        let (changes, _) = broadcast::channel(64);
        let config = LeaseConfig {
            lease_timeout: Duration::from_secs(60),
            heartbeat_interval: Duration::from_millis(100),
        };
        Scheduler::recover(store, config, changes).unwrap()
    }

    /// Registers agent `gpu-01` and submits a one-run sweep: the agent's secret, its
    /// session's inbox and the run's lease.
    fn running_run(s: &mut Scheduler) -> (AgentSecret, mpsc::UnboundedReceiver<ToAgent>, Lease) {
        let (outbox, mut inbox) = mpsc::unbounded_channel();
        let (reply, _answer) = oneshot::channel();
        s.handle(Event::AgentConnected {
            session: 1,
            registration: Registration {
                queue_depth: 0,
                name: "gpu-01".into(),
                labels: BTreeMap::new(),
                slots: 1,
                gpus: vec![],
                held: vec![],
                hostname: "test".into(),
                version: "0".into(),
                secret: None,
            },
            outbox,
            reply,
        });
        s.step(Instant::now());
        let (reply, _answer) = oneshot::channel();
        s.handle(Event::Submit {
            spec: Box::new(ladder_spec::parse_sweep("t.yaml", ONE_RUN).unwrap()),
            file_name: "t.yaml".into(),
            yaml: ONE_RUN.into(),
            owner: String::new(),
            git: GitState::default(),
            reply,
        });
        s.step(Instant::now());
        let mut secret = None;
        let mut assignment = None;
        while let Ok(message) = inbox.try_recv() {
            match message {
                ToAgent::Registered { agent_secret, .. } => secret = agent_secret,
                ToAgent::Assign(assign) => assignment = Some(assign),
                _ => {}
            }
        }
        let assignment = assignment.expect("the run is assigned");
        assert_eq!(
            assignment.artifacts,
            ["model/"],
            "the assignment carries artifacts:"
        );
        (secret.expect("enrolled"), inbox, assignment.lease)
    }

    fn upload(lease: &Lease, secret: &AgentSecret, name: &str, size: u64) -> ArtifactUpload {
        ArtifactUpload {
            lease: lease.clone(),
            agent: "gpu-01".into(),
            secret: secret.clone(),
            name: name.into(),
            size,
            sha256: "ab".repeat(32),
        }
    }

    /// Sends `Event::RecordArtifact` and returns the answer given after the commit.
    fn record(
        s: &mut Scheduler,
        upload: ArtifactUpload,
        check_only: bool,
    ) -> Result<ArtifactRecord, CoordinatorError> {
        let (reply, mut answer) = oneshot::channel();
        s.handle(Event::RecordArtifact {
            upload,
            check_only,
            reply,
        });
        s.step(Instant::now());
        answer.try_recv().expect("answered after the commit")
    }

    fn stored_names(s: &Scheduler, run_id: &str) -> Vec<(String, u64)> {
        let run = s.store.get_run(run_id).unwrap().unwrap();
        run.artifacts
            .iter()
            .map(|a| (a.name.clone(), a.size))
            .collect()
    }

    #[test]
    fn only_the_current_attempt_of_its_proven_agent_records_artifacts_within_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = scheduler(dir.path());
        let (secret, _inbox, lease) = running_run(&mut s);
        let run_id = lease.run_id.clone();

        // A check records nothing; a record is durable when answered.
        record(&mut s, upload(&lease, &secret, "model/b.bin", 10), true).unwrap();
        assert!(stored_names(&s, &run_id).is_empty());
        let recorded = record(&mut s, upload(&lease, &secret, "model/b.bin", 10), false).unwrap();
        assert_eq!((recorded.attempt, recorded.size), (lease.attempt, 10));
        record(&mut s, upload(&lease, &secret, "a.json", 5), false).unwrap();
        // The same name again replaces the file, and counts once against the limit.
        record(&mut s, upload(&lease, &secret, "model/b.bin", 20), false).unwrap();
        assert_eq!(
            stored_names(&s, &run_id),
            [("a.json".to_string(), 5), ("model/b.bin".to_string(), 20)]
        );

        let refusals = [
            (
                upload(&lease, &AgentSecret::generate(), "x", 1),
                "did not prove its name",
            ),
            (
                ArtifactUpload {
                    agent: "gpu-02".into(),
                    ..upload(&lease, &secret, "x", 1)
                },
                "did not prove its name",
            ),
            (
                upload(
                    &Lease {
                        epoch: lease.epoch + 1,
                        ..lease.clone()
                    },
                    &secret,
                    "x",
                    1,
                ),
                "stale lease",
            ),
            (
                upload(
                    &lease,
                    &secret,
                    "huge",
                    ladder_limits::MAX_RUN_ARTIFACT_BYTES - 24,
                ),
                "the limit is",
            ),
        ];
        for (refused, why) in refusals {
            let error = record(&mut s, refused, true).expect_err(why);
            assert!(error.to_string().contains(why), "{error}");
        }
        // Exactly up to the run's byte limit is allowed.
        record(
            &mut s,
            upload(
                &lease,
                &secret,
                "huge",
                ladder_limits::MAX_RUN_ARTIFACT_BYTES - 25,
            ),
            true,
        )
        .unwrap();

        // Once the attempt has ended, nothing more is recorded; what was survives a
        // restart.
        s.handle(Event::AgentMessage {
            session: 1,
            message: crate::protocol::FromAgent::RunEvent(RunEventMessage {
                lease: lease.clone(),
                seq: 1,
                event: RunEvent::Finished(Finish {
                    outcome: FinishOutcome::Completed,
                    exit_code: Some(0),
                    signal: None,
                    reason: String::new(),
                }),
            }),
        });
        s.step(Instant::now());
        let error = record(&mut s, upload(&lease, &secret, "late.bin", 1), false)
            .expect_err("the attempt ended");
        assert!(error.to_string().contains("stale lease"), "{error}");
        drop(s);
        let restarted = scheduler(dir.path());
        assert_eq!(
            stored_names(&restarted, &run_id),
            [("a.json".to_string(), 5), ("model/b.bin".to_string(), 20)]
        );
    }

    #[test]
    fn a_run_records_at_most_its_file_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = scheduler(dir.path());
        let (secret, _inbox, lease) = running_run(&mut s);
        for index in 0..ladder_limits::MAX_ARTIFACTS_PER_RUN {
            s.record_artifact(upload(&lease, &secret, &format!("f{index:04}"), 1), false)
                .unwrap();
        }
        let error = s
            .record_artifact(upload(&lease, &secret, "one-more", 1), false)
            .expect_err("past the file limit");
        assert!(error.to_string().contains("artifacts already"), "{error}");
        // Replacing a file it has is still allowed.
        s.record_artifact(upload(&lease, &secret, "f0000", 2), false)
            .unwrap();
    }
}
