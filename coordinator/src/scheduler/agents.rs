//! Agents: their views, sessions, quarantine, and the messages they send.

use super::*;

impl Scheduler {
    // ----- agents -----

    #[cfg(test)]
    pub(super) fn agent_views(&self) -> Vec<AgentView> {
        let mut views: Vec<AgentView> = self
            .agents
            .values()
            .map(|agent| self.agent_view(agent))
            .collect();
        views.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        views
    }

    pub(super) fn agent_page(&self, after: &str, limit: usize) -> (Vec<AgentView>, bool) {
        let mut names: Vec<&String> = self
            .agents
            .keys()
            .filter(|name| name.as_str() > after)
            .collect();
        names.sort();
        let more = names.len() > limit;
        let views = names
            .into_iter()
            .take(limit)
            .map(|name| self.agent_view(&self.agents[name]))
            .collect();
        (views, more)
    }

    pub(super) fn agent_view(&self, agent: &AgentState) -> AgentView {
        let mut runs: Vec<String> = agent.runs.keys().cloned().collect();
        runs.sort();
        let mut gpu_holders = BTreeMap::new();
        for (run_id, gpus) in &agent.runs {
            for &gpu in gpus {
                gpu_holders.insert(gpu, run_id.clone());
            }
        }
        AgentView {
            record: agent.record.clone(),
            connected: agent.session.is_some(),
            draining: agent.draining,
            runs,
            gpu_holders,
            free_slots: agent.free_slots(),
        }
    }

    pub(super) fn enable_agent(&mut self, name: &str) -> Result<AgentView, CoordinatorError> {
        let Some(agent) = self.agents.get_mut(name) else {
            return Err(CoordinatorError::NotFound {
                kind: "agent",
                id: name.to_string(),
            });
        };
        if agent.record.quarantined {
            info!(agent = name, "quarantine lifted");
        }
        agent.record.quarantined = false;
        agent.record.quarantine_reason = None;
        agent.fast_failures.clear();
        self.store.put_agent(&agent.record)?;
        Ok(self.agent_view(&self.agents[name]))
    }

    /// Drops the secret `name` is bound to (see [`crate::identity`]); its record, runs and
    /// quarantine stay. A connected agent is only forgotten with `force`, which also ends
    /// its session: whichever agent registers with the name next enrolls it (the same
    /// agent, reconnecting, re-adopts the runs it still holds).
    pub(super) fn forget_agent(
        &mut self,
        name: &str,
        force: bool,
    ) -> Result<AgentView, CoordinatorError> {
        let Some(agent) = self.agents.get_mut(name) else {
            return Err(CoordinatorError::NotFound {
                kind: "agent",
                id: name.to_string(),
            });
        };
        if agent.session.is_some() && !force {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "agent {name} is connected; stop it before forgetting it, or use --force to \
                 end its session too (the next agent to register as {name} then enrolls \
                 the name)"
            )));
        }
        if let Some(session) = agent.session.take() {
            self.sessions.remove(&session.id);
            info!(
                agent = name,
                session = session.id,
                "session ended to forget the agent"
            );
        }
        let was_enrolled = agent.record.secret_sha256.take().is_some();
        self.store.put_agent(&agent.record)?;
        info!(
            agent = name,
            was_enrolled, "agent forgotten; its name may enroll again"
        );
        Ok(self.agent_view(&self.agents[name]))
    }

    pub(super) fn agent_connected(
        &mut self,
        session: u64,
        registration: Registration,
        outbox: mpsc::UnboundedSender<ToAgent>,
    ) -> Result<(), CoordinatorError> {
        let name = registration.name.clone();
        let now = Instant::now();
        // The name must be proven before anything of the agent it names is touched.
        let known = self.agents.get(&name);
        let stored = known.and_then(|agent| agent.record.secret_sha256.as_ref());
        let issued = match identity::admit(stored, registration.secret.as_ref()) {
            Admission::Proven => None,
            Admission::Enroll => Some(AgentSecret::generate()),
            Admission::Refused => {
                warn!(
                    agent = %name,
                    session,
                    live = known.is_some_and(|agent| agent.session.is_some()),
                    presented_secret = registration.secret.is_some(),
                    hostname = %registration.hostname,
                    "agent registration refused: the name is bound to another secret"
                );
                return Err(identity::refusal(&name, registration.secret.as_ref()));
            }
        };
        let agent = self
            .agents
            .entry(name.clone())
            .or_insert_with(|| AgentState::unknown(&name, now));
        if let Some(old) = agent.session.take() {
            info!(agent = %name, old_session = old.id, "agent reconnected; replacing its previous session");
            self.sessions.remove(&old.id);
        }
        agent.record.labels = registration.labels;
        agent.record.slots = registration.slots;
        agent.queue_depth = registration.queue_depth;
        // What waits in its queue is known again from the runs it reports started.
        agent.queued.clear();
        agent.record.gpus = registration.gpus;
        agent.record.hostname = registration.hostname;
        agent.record.version = registration.version;
        agent.record.last_seen_ms = now_ms();
        agent.last_seen = now;
        agent.draining = false;
        agent.forget_on_exit = false;
        agent.session = Some(Session {
            id: session,
            outbox: outbox.clone(),
        });
        if let Some(secret) = &issued {
            // Durable (the commit below) before the agent hears the secret.
            agent.record.secret_sha256 = Some(secret.hash());
            info!(agent = %name, session, "agent name enrolled");
        }
        self.sessions.insert(session, name.clone());
        self.store.put_agent(&agent.record)?;
        info!(agent = %name, session, slots = agent.record.slots, held = registration.held.len(), "agent registered");
        self.deferred.push(Deferred::Send(
            outbox.clone(),
            ToAgent::Registered {
                heartbeat_interval: self.config.heartbeat_interval,
                lease_timeout: self.config.lease_timeout,
                agent_secret: issued,
            },
        ));

        // Re-adopt what the agent still holds; reject what is no longer its.
        let mut held_runs = HashSet::new();
        for lease in registration.held {
            if self.lease_is_current(&lease, &name) {
                held_runs.insert(lease.run_id.clone());
                let gpus = self.runs[&lease.run_id]
                    .current_attempt()
                    .map(|a| a.gpus.clone())
                    .unwrap_or_default();
                self.agents
                    .get_mut(&name)
                    .expect("agent")
                    .runs
                    .insert(lease.run_id.clone(), gpus);
                continue;
            }
            if self.is_finished_attempt(&lease) {
                // Its remaining events will be re-acknowledged as duplicates.
                continue;
            }
            self.deferred.push(Deferred::Send(
                outbox.clone(),
                ToAgent::Reject {
                    lease,
                    reason: "the lease is no longer valid".into(),
                },
            ));
        }
        let lost: Vec<String> = self.agents[&name]
            .runs
            .keys()
            .filter(|run_id| !held_runs.contains(*run_id))
            .cloned()
            .collect();
        for run_id in lost {
            self.lose_attempt(
                &run_id,
                "the agent reconnected without this attempt (agent restarted?)",
            )?;
        }
        Ok(())
    }

    pub(super) fn lease_is_current(&self, lease: &Lease, agent: &str) -> bool {
        let Some(run) = self.runs.get(&lease.run_id) else {
            return false;
        };
        let Some(attempt) = run.current_attempt() else {
            return false;
        };
        run.status == RunStatus::Running
            && attempt.number == lease.attempt
            && attempt.epoch == lease.epoch
            && attempt.agent == agent
            && attempt.outcome == AttemptOutcome::Running
    }

    /// Whether the lease names an attempt that has ended with every event stored.
    pub(super) fn is_finished_attempt(&self, lease: &Lease) -> bool {
        match self.run_record(&lease.run_id) {
            Ok(Some(run)) => run.attempts.iter().any(|a| {
                a.number == lease.attempt
                    && a.epoch == lease.epoch
                    && a.outcome != AttemptOutcome::Running
                    && a.outcome != AttemptOutcome::Lost
            }),
            _ => false,
        }
    }

    pub(super) fn agent_disconnected(&mut self, session: u64) {
        let Some(name) = self.sessions.remove(&session) else {
            return;
        };
        let Some(agent) = self.agents.get_mut(&name) else {
            return;
        };
        if agent.session.as_ref().map(|s| s.id) != Some(session) {
            return;
        }
        agent.session = None;
        info!(agent = %name, session, "agent disconnected");
        // An agent that asked to be forgotten is dropped only once nothing of it is left
        // to track: a run still on it keeps the record until its lease expires, and a
        // quarantined agent stays (forgetting it would lift the quarantine).
        if !(agent.draining
            && agent.forget_on_exit
            && agent.runs.is_empty()
            && !agent.record.quarantined)
        {
            return;
        }
        match self.store.delete_agent(&name) {
            Ok(()) => {
                self.agents.remove(&name);
                info!(agent = %name, "agent forgotten on exit");
            }
            Err(error) => warn!(agent = %name, %error, "cannot forget the agent on exit"),
        }
    }

    pub(super) fn agent_message(
        &mut self,
        session: u64,
        message: FromAgent,
    ) -> Result<(), CoordinatorError> {
        let Some(name) = self.sessions.get(&session).cloned() else {
            debug!(session, "message from a closed session ignored");
            return Ok(());
        };
        let agent = self.agents.get_mut(&name).expect("agent of session");
        agent.last_seen = Instant::now();
        let outbox = agent.session.as_ref().expect("session").outbox.clone();
        match message {
            FromAgent::Heartbeat => Ok(()),
            FromAgent::Drain { forget } => {
                info!(agent = %name, forget, "agent draining");
                agent.draining = true;
                agent.forget_on_exit = forget;
                Ok(())
            }
            FromAgent::RunEvent(RunEventMessage { lease, seq, event }) => {
                self.run_event(&name, outbox, lease, seq, event)
            }
        }
    }
}
