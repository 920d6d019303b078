//! A run's attempts: the events reported for them, their end, lost leases and requeues.

use super::*;

impl Scheduler {
    pub(super) fn run_event(
        &mut self,
        agent: &str,
        outbox: mpsc::UnboundedSender<ToAgent>,
        lease: Lease,
        seq: u64,
        event: RunEvent,
    ) -> Result<(), CoordinatorError> {
        if !self.lease_is_current(&lease, agent) {
            // A resent event of an attempt already stored is acknowledged again.
            let duplicate = match self.run_record(&lease.run_id)? {
                Some(run) => run.attempts.iter().any(|a| {
                    a.number == lease.attempt
                        && a.epoch == lease.epoch
                        && a.agent == agent
                        && a.acked_seq >= seq
                }),
                None => false,
            };
            let message = if duplicate {
                ToAgent::Ack { lease, seq }
            } else {
                warn!(run_id = %lease.run_id, attempt = lease.attempt, epoch = lease.epoch, agent, "report with a stale lease rejected");
                ToAgent::Reject {
                    lease,
                    reason: "stale lease: the run has a newer attempt or has ended".into(),
                }
            };
            self.deferred.push(Deferred::Send(outbox, message));
            return Ok(());
        }
        let run = self
            .runs
            .get_mut(&lease.run_id)
            .expect("current lease has a run");
        let acked_seq = run
            .current_attempt_mut()
            .expect("current lease has an attempt")
            .acked_seq;
        if seq <= acked_seq {
            self.deferred
                .push(Deferred::Send(outbox, ToAgent::Ack { lease, seq }));
            return Ok(());
        }
        if seq != acked_seq + 1 {
            warn!(run_id = %lease.run_id, seq, expected = acked_seq + 1, "event out of order ignored");
            return Ok(());
        }
        let mut finished = None;
        match event {
            RunEvent::Started { pid, work_dir } => {
                debug!(run_id = %lease.run_id, pid, work_dir, "run started");
                // A run that waited in the agent's queue starts now, not when placed.
                if let Some(holder) = self.agents.get_mut(agent) {
                    if holder.queued.remove(&lease.run_id) {
                        if let Some(attempt) = run.current_attempt_mut() {
                            attempt.started_ms = now_ms();
                        }
                    }
                }
            }
            RunEvent::Output {
                mut metrics,
                mut logs,
                info,
            } => {
                let dropped = run.admit_metrics(&mut metrics);
                if dropped > 0 && run.metrics_dropped == dropped {
                    warn!(run_id = %lease.run_id, limit = MAX_METRICS_PER_RUN, "run reports too many metric names; new ones dropped");
                    logs.push(StoredLogLine {
                        time_ms: now_ms(),
                        stream: "stderr".into(),
                        text: format!(
                            "[ladder] this run reported more than {MAX_METRICS_PER_RUN} distinct metric names; values of further names are dropped"
                        ),
                    });
                }
                let attempt = run.current_attempt_mut().expect("attempt");
                let notes = attempt.admit_output(
                    &mut metrics,
                    &mut logs,
                    MAX_ATTEMPT_LOG_BYTES,
                    MAX_ATTEMPT_METRIC_POINTS,
                );
                for note in notes {
                    warn!(run_id = %lease.run_id, attempt = attempt.number, "{note}");
                    logs.push(StoredLogLine {
                        time_ms: now_ms(),
                        stream: "stderr".into(),
                        text: format!("[ladder] {note}"),
                    });
                }
                // Stored before anything is counted: an event whose output could not be
                // stored is neither acknowledged nor taken as seen when it is resent.
                self.store
                    .put_output(&lease.run_id, lease.attempt, seq, &metrics, &logs)?;
                let attempt = run.current_attempt_mut().expect("attempt");
                let first_point = attempt.metric_points;
                attempt.log_lines += logs.len() as u64;
                attempt.log_bytes += logs.iter().map(|l| l.text.len() as u64).sum::<u64>();
                attempt.metric_points += metrics.len() as u64;
                let already_stopping = attempt.stop_reason.is_some();
                let verdict = match self.sweeps.get_mut(&run.sweep_id) {
                    Some(sweep) => sweep.judge(run.index, first_point, &metrics),
                    None => None,
                };
                if let (Some(reason), false) = (verdict, already_stopping) {
                    info!(run_id = %lease.run_id, %reason, "early termination");
                    let attempt = run.current_attempt_mut().expect("attempt");
                    attempt.stop_reason = Some(reason.clone());
                    self.deferred.push(Deferred::Send(
                        outbox.clone(),
                        ToAgent::Stop {
                            lease: lease.clone(),
                            reason,
                        },
                    ));
                }
                let spec = self.sweeps.get(&run.sweep_id).map(|s| &s.record.spec);
                run.apply_metrics(spec, &metrics);
                let dropped = run.apply_info(&info);
                if dropped > 0 {
                    warn!(run_id = %lease.run_id, dropped, "run info has too many names; new ones dropped");
                }
            }
            RunEvent::Finished(finish) => {
                if ladder_timeline::enabled() {
                    ladder_timeline::mark(
                        ladder_timeline::Stage::SlotFreed,
                        || agent.to_string(),
                        "",
                    );
                    self.deferred.push(Deferred::Timeline(
                        ladder_timeline::Stage::CompletionDurable,
                        ladder_timeline::attempt_key(&lease.run_id, lease.attempt),
                    ));
                }
                finished = Some(finish)
            }
        }
        run.current_attempt_mut().expect("attempt").acked_seq = seq;
        self.changed.insert(run.sweep_id.clone());
        match finished {
            Some(finish) => self.finish_attempt(&lease.run_id, finish)?,
            None => {
                self.dirty_runs.insert(lease.run_id.clone());
            }
        }
        self.deferred
            .push(Deferred::Send(outbox, ToAgent::Ack { lease, seq }));
        Ok(())
    }

    pub(super) fn finish_attempt(
        &mut self,
        run_id: &str,
        finish: Finish,
    ) -> Result<(), CoordinatorError> {
        if finish.outcome == FinishOutcome::Released {
            let reason = if finish.reason.is_empty() {
                "handed back by a draining agent"
            } else {
                &finish.reason
            };
            return self.requeue(run_id, AttemptOutcome::Released, reason);
        }
        let mut run = self.runs.remove(run_id).expect("run present");
        let cancelled = self
            .sweeps
            .get(&run.sweep_id)
            .is_none_or(|s| s.record.status == SweepStatus::Cancelled);
        let (outcome, status) = match finish.outcome {
            FinishOutcome::Completed => (AttemptOutcome::Completed, RunStatus::Completed),
            FinishOutcome::Failed => (AttemptOutcome::Failed, RunStatus::Failed),
            FinishOutcome::Stopped if cancelled => {
                (AttemptOutcome::Cancelled, RunStatus::Cancelled)
            }
            FinishOutcome::Stopped | FinishOutcome::Released => {
                (AttemptOutcome::Stopped, RunStatus::Stopped)
            }
        };
        let now = now_ms();
        run.status = status;
        run.ended_ms = Some(now);
        let attempt = run.current_attempt_mut().expect("attempt");
        attempt.outcome = outcome;
        attempt.exit_code = finish.exit_code;
        attempt.signal = finish.signal;
        attempt.reason = match (&attempt.stop_reason, finish.outcome) {
            (Some(stop_reason), FinishOutcome::Stopped) => stop_reason.clone(),
            _ => finish.reason,
        };
        attempt.ended_ms = Some(now);
        let agent_name = attempt.agent.clone();
        let duration_ms = now - attempt.started_ms;
        let reason = attempt.reason.clone();
        if status == RunStatus::Completed {
            if let Some(sweep) = self.sweeps.get_mut(&run.sweep_id) {
                sweep.ran_for(duration_ms);
            }
        }
        if let Some(agent) = self.agents.get_mut(&agent_name) {
            agent.runs.remove(run_id);
            agent.queued.remove(run_id);
            let was_quarantined = agent.record.quarantined;
            agent.track_outcome(status, duration_ms, run_id, &reason);
            if agent.record.quarantined != was_quarantined {
                self.store.put_agent(&agent.record)?;
            }
        }
        debug!(run_id, status = %status, "run ended");
        self.retire(run)
    }

    /// The current attempt of a running run is lost: requeue the run as a new attempt,
    /// or fail it once `max_restarts` is spent.
    pub(super) fn lose_attempt(
        &mut self,
        run_id: &str,
        reason: &str,
    ) -> Result<(), CoordinatorError> {
        self.requeue(run_id, AttemptOutcome::Lost, reason)
    }

    /// Ends the current attempt with `outcome` (lost, or released by a draining agent) and
    /// queues the run again. Lost attempts count against `max_restarts`; released ones do
    /// not.
    pub(super) fn requeue(
        &mut self,
        run_id: &str,
        outcome: AttemptOutcome,
        reason: &str,
    ) -> Result<(), CoordinatorError> {
        let Some(mut run) = self.runs.remove(run_id) else {
            return Ok(());
        };
        let now = now_ms();
        let (max_restarts, cancelled) = match self.sweeps.get(&run.sweep_id) {
            Some(sweep) => (
                sweep.record.spec.max_restarts,
                sweep.record.status == SweepStatus::Cancelled,
            ),
            None => (0, true),
        };
        if let Some(attempt) = run.current_attempt_mut() {
            attempt.outcome = outcome;
            attempt.reason = reason.to_string();
            attempt.ended_ms = Some(now);
            if let Some(agent) = self.agents.get_mut(&attempt.agent) {
                agent.runs.remove(run_id);
                agent.queued.remove(run_id);
            }
        }
        warn!(
            run_id,
            attempt = run.attempts.len(),
            outcome = outcome.as_str(),
            reason,
            "attempt ended without a result"
        );
        let restarts_done = run
            .attempts
            .iter()
            .filter(|a| a.outcome == AttemptOutcome::Lost)
            .count() as u32;
        if cancelled {
            run.status = RunStatus::Cancelled;
            run.ended_ms = Some(now);
            return self.retire(run);
        }
        if outcome == AttemptOutcome::Lost && restarts_done > max_restarts {
            run.status = RunStatus::Failed;
            run.ended_ms = Some(now);
            if let Some(attempt) = run.current_attempt_mut() {
                attempt.reason = format!("{reason}; max_restarts ({max_restarts}) reached");
            }
            return self.retire(run);
        }
        run.status = RunStatus::Queued;
        self.dirty_runs.insert(run_id.to_string());
        self.changed.insert(run.sweep_id.clone());
        self.queue.push_front(run_id.to_string());
        self.runs.insert(run_id.to_string(), run);
        Ok(())
    }

    /// Agents silent past the lease timeout lose their runs and their session.
    pub(super) fn check_leases(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .agents
            .values()
            .filter(|agent| now.duration_since(agent.last_seen) > self.config.lease_timeout)
            .filter(|agent| agent.session.is_some() || !agent.runs.is_empty())
            .map(|agent| agent.record.name.clone())
            .collect();
        for name in expired {
            let agent = self.agents.get_mut(&name).expect("agent");
            if let Some(session) = agent.session.take() {
                self.sessions.remove(&session.id);
            }
            let run_ids: Vec<String> = agent.runs.keys().cloned().collect();
            warn!(agent = %name, runs = run_ids.len(), "agent lease expired");
            let reason = format!(
                "agent {name} silent for more than the lease timeout ({:.1}s)",
                self.config.lease_timeout.as_secs_f64()
            );
            for run_id in run_ids {
                let result = self.lose_attempt(&run_id, &reason);
                self.check(&result);
                if let Err(error) = result {
                    error!(%error, run_id, "failed to requeue run");
                }
            }
        }
    }
}
