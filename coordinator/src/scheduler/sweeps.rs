//! Sweeps: submission, pause / resume / cancel, a sweep's end; a run's notes and tags.

use super::*;

impl Scheduler {
    // ----- notes and tags -----

    /// Applies a user's note and tags to a run, in the scheduler's copy when the run is
    /// active (so the next agent report does not overwrite it), else in the store's.
    pub(super) fn update_run(&mut self, update: RunUpdate) -> Result<RunRecord, CoordinatorError> {
        let record = match self.runs.get_mut(&update.run_id) {
            Some(run) => {
                update.apply(run, now_ms())?;
                run.clone()
            }
            None => {
                let mut run =
                    self.run_record(&update.run_id)?
                        .ok_or_else(|| CoordinatorError::NotFound {
                            kind: "run",
                            id: update.run_id.clone(),
                        })?;
                update.apply(&mut run, now_ms())?;
                run
            }
        };
        if self.runs.contains_key(&record.id) {
            self.dirty_runs.insert(record.id.clone());
        } else {
            self.retired.insert(record.id.clone(), record.clone());
        }
        self.changed.insert(record.sweep_id.clone());
        Ok(record)
    }

    // ----- sweeps -----

    pub(super) fn submit(
        &mut self,
        spec: SweepSpec,
        file_name: String,
        yaml: String,
        owner: String,
        git: GitState,
    ) -> Result<SweepRecord, CoordinatorError> {
        // Refuse what no known agent could ever run rather than queue it forever. With no
        // agent known yet nothing is refused: the cluster may still be starting.
        let whole: Vec<Capacity> = self
            .agents
            .values()
            .map(|agent| Capacity {
                agent: agent.record.name.clone(),
                free_slots: agent.record.slots,
                free_gpus: agent.record.gpus.iter().map(|gpu| gpu.index).collect(),
                labels: agent.record.labels.clone(),
            })
            .collect();
        if let Some(reason) = placement::never_fits(&whole, &demand_of(&spec)) {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "sweep {:?}: {reason}",
                spec.name
            )));
        }
        let mut id = new_sweep_id();
        while self.sweep_record(&id)?.is_some() {
            id = new_sweep_id();
        }
        let planned_runs = space::trial_count(&spec);
        let created_ms = now_ms();
        let warm = match spec.warm_start {
            Some(_) => self.warm_start(&spec, created_ms)?,
            None => Vec::new(),
        };
        let record = SweepRecord {
            id: id.clone(),
            spec,
            file_name,
            yaml,
            status: SweepStatus::Running,
            created_ms,
            ended_ms: None,
            planned_runs,
            created_runs: 0,
            owner,
            git_commit: git.commit,
            git_dirty: git.dirty,
        };
        self.dirty_sweeps.insert(id.clone());
        info!(sweep_id = %id, name = %record.spec.name, planned_runs, "sweep submitted");
        let mut state = SweepState::new(record.clone());
        state.warm = warm;
        self.sweeps.insert(id.clone(), state);
        self.changed.insert(id.clone());
        self.maybe_finish_sweep(&id)?;
        Ok(record)
    }

    /// The trials that `warm_start: {sweep: ID}` seeds `spec`'s search with: the earlier
    /// sweep's runs that completed or were stopped, ended by `before_ms`, with a value of
    /// the objective, by trial index. Refused unless the earlier sweep exists and has the
    /// same objective (metric name, goal and summary).
    pub(super) fn warm_start(
        &self,
        spec: &SweepSpec,
        before_ms: i64,
    ) -> Result<Vec<Observation>, CoordinatorError> {
        let Some(warm_start) = &spec.warm_start else {
            return Ok(Vec::new());
        };
        let refuse = |reason: String| {
            CoordinatorError::FailedPrecondition(format!(
                "warm_start: sweep {:?} {reason}",
                warm_start.sweep
            ))
        };
        let earlier = self
            .sweep_record(&warm_start.sweep)?
            .ok_or_else(|| refuse("does not exist (`ladder sweep ls` lists the sweeps)".into()))?;
        let describe = |metric: Option<&ladder_spec::MetricSpec>| match metric {
            None => "no metric".to_string(),
            Some(metric) => format!(
                "{} ({}, summary {})",
                metric.name,
                metric.goal,
                metric.summary.map_or("last", |summary| summary.as_str())
            ),
        };
        let metric = match (&spec.metric, &earlier.spec.metric) {
            (Some(metric), Some(earlier_metric)) if metric == earlier_metric => metric,
            (metric, earlier_metric) => {
                return Err(refuse(format!(
                    "optimises {}, this sweep {}; warm start needs the same objective",
                    describe(earlier_metric.as_ref()),
                    describe(metric.as_ref())
                )))
            }
        };
        let mut runs = self.store.list_runs(Some(&earlier.id))?;
        for run in &mut runs {
            if let Some(newer) = self.retired.get(&run.id) {
                *run = newer.clone();
            }
        }
        runs.sort_by_key(|run| run.index);
        Ok(runs
            .into_iter()
            .filter(|run| matches!(run.status, RunStatus::Completed | RunStatus::Stopped))
            .filter(|run| run.ended_ms.is_some_and(|ended| ended <= before_ms))
            .filter_map(|run| {
                let value = run.metric_value(&metric.name).filter(|v| v.is_finite())?;
                Some(Observation {
                    params: run.params,
                    value: Some(value),
                    pending: false,
                })
            })
            .collect())
    }

    pub(super) fn sweep_action(
        &mut self,
        sweep_id: &str,
        action: SweepAction,
    ) -> Result<SweepRecord, CoordinatorError> {
        let Some(state) = self.sweeps.get_mut(sweep_id) else {
            return match self.sweep_record(sweep_id)? {
                Some(record) => Err(CoordinatorError::FailedPrecondition(format!(
                    "sweep {sweep_id} has already ended ({})",
                    record.status
                ))),
                None => Err(CoordinatorError::NotFound {
                    kind: "sweep",
                    id: sweep_id.to_string(),
                }),
            };
        };
        match action {
            SweepAction::Pause => state.record.status = SweepStatus::Paused,
            SweepAction::Resume => state.record.status = SweepStatus::Running,
            SweepAction::Cancel => {
                state.record.status = SweepStatus::Cancelled;
                state.record.ended_ms = Some(now_ms());
            }
        }
        let record = state.record.clone();
        self.dirty_sweeps.insert(sweep_id.to_string());
        self.changed.insert(sweep_id.to_string());
        if action == SweepAction::Cancel {
            info!(sweep_id, "sweep cancelled");
            self.cancel_runs(sweep_id)?;
        }
        if action == SweepAction::Pause {
            self.revoke_queued(sweep_id);
        }
        Ok(record)
    }

    /// Asks agents to give back the runs of a paused sweep that wait in their queues;
    /// those that started meanwhile run on, like the sweep's other running runs.
    fn revoke_queued(&mut self, sweep_id: &str) {
        for agent in self.agents.values() {
            let Some(session) = &agent.session else {
                continue;
            };
            for run_id in &agent.queued {
                let Some(run) = self.runs.get(run_id) else {
                    continue;
                };
                let Some(attempt) = run.current_attempt() else {
                    continue;
                };
                if run.sweep_id != sweep_id {
                    continue;
                }
                self.deferred.push(Deferred::Send(
                    session.outbox.clone(),
                    ToAgent::Revoke {
                        lease: Lease {
                            run_id: run_id.clone(),
                            attempt: attempt.number,
                            epoch: attempt.epoch,
                        },
                        reason: format!("sweep {sweep_id} paused"),
                    },
                ));
            }
        }
    }

    pub(super) fn cancel_runs(&mut self, sweep_id: &str) -> Result<(), CoordinatorError> {
        let run_ids: Vec<String> = self
            .runs
            .values()
            .filter(|run| run.sweep_id == sweep_id)
            .map(|run| run.id.clone())
            .collect();
        for run_id in run_ids {
            let run = &self.runs[&run_id];
            if run.status == RunStatus::Queued {
                let mut run = self.runs.remove(&run_id).expect("run present");
                self.queue.retain(|id| id != &run_id);
                run.status = RunStatus::Cancelled;
                run.ended_ms = Some(now_ms());
                self.retire(run)?;
                continue;
            }
            // Running: ask its agent to stop it; it ends as cancelled when the agent
            // reports, or when the agent's lease expires.
            let Some(attempt) = run.current_attempt() else {
                continue;
            };
            let lease = Lease {
                run_id: run_id.clone(),
                attempt: attempt.number,
                epoch: attempt.epoch,
            };
            if let Some(outbox) = self
                .agents
                .get(&attempt.agent)
                .and_then(|a| a.session.as_ref())
                .map(|s| s.outbox.clone())
            {
                self.deferred.push(Deferred::Send(
                    outbox,
                    ToAgent::Stop {
                        lease,
                        reason: "sweep cancelled".into(),
                    },
                ));
            }
        }
        Ok(())
    }

    /// Ends the sweep when it has created all its runs and none is active.
    pub(super) fn maybe_finish_sweep(&mut self, sweep_id: &str) -> Result<(), CoordinatorError> {
        let Some(state) = self.sweeps.get_mut(sweep_id) else {
            return Ok(());
        };
        if state.active > 0 {
            return Ok(());
        }
        let exhausted = state.record.created_runs >= state.record.planned_runs;
        if state.record.status == SweepStatus::Cancelled || exhausted {
            if state.record.status != SweepStatus::Cancelled {
                state.record.status = SweepStatus::Completed;
            }
            if state.record.ended_ms.is_none() {
                state.record.ended_ms = Some(now_ms());
            }
            let record = state.record.clone();
            self.sweeps.remove(sweep_id);
            self.dirty_sweeps.remove(sweep_id);
            info!(sweep_id, status = %record.status, "sweep ended");
            self.ended_sweeps.insert(sweep_id.to_string(), record);
            self.changed.insert(sweep_id.to_string());
        }
        Ok(())
    }

    /// Stores a run that reached a terminal state and forgets it.
    pub(super) fn retire(&mut self, run: RunRecord) -> Result<(), CoordinatorError> {
        debug_assert!(run.status.is_terminal());
        self.dirty_runs.remove(&run.id);
        self.changed.insert(run.sweep_id.clone());
        if let Some(sweep) = self.sweeps.get_mut(&run.sweep_id) {
            sweep.active = sweep.active.saturating_sub(1);
            sweep.observe(&run);
            if let Some(stopper) = sweep.stopper.as_mut() {
                stopper.finished(run.index);
            }
        }
        let sweep_id = run.sweep_id.clone();
        self.retired.insert(run.id.clone(), run);
        self.maybe_finish_sweep(&sweep_id)
    }
}
