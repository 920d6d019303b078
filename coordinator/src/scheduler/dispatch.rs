//! Placement: creating the next trials as runs and starting them on free slots.

use super::*;

/// What a placement pass fills.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Agents' free slots (and GPUs): runs start at once.
    FreeSlots,
    /// The queues of agents whose slots are busy, for sweeps of short runs (see
    /// [`SweepState::queues_on_agents`]): each starts the moment a run ends there
    /// instead of a dispatch round trip later. At most twice `parallel` runs of a sweep
    /// wait so, beyond the `parallel` that run: a queue shorter than the runs an agent
    /// ends during one dispatch round trip runs dry.
    AgentQueues,
}

/// New `method: gp` trials created in one placement pass, over every sweep (see
/// `place_runs`); documented in `docs/reference/limits.md`.
pub(super) const MAX_GP_PROPOSALS_PER_PASS: u64 = 4;

impl Scheduler {
    // ----- placement -----

    pub(super) fn schedule(&mut self) {
        let result = self.try_schedule();
        self.check(&result);
        if let Err(error) = result {
            error!(%error, "scheduling failed");
        }
    }

    pub(super) fn try_schedule(&mut self) -> Result<(), CoordinatorError> {
        self.place_runs(Pass::FreeSlots)?;
        self.place_runs(Pass::AgentQueues)
    }

    /// One placement pass (see [`Pass`]): queued runs first, then new trials of the
    /// running sweeps, oldest sweep first, placed by [`placement::place`] on what the
    /// pass fills.
    fn place_runs(&mut self, pass: Pass) -> Result<(), CoordinatorError> {
        let capacities: Vec<Capacity> = self
            .agents
            .values()
            .filter(|agent| agent.session.is_some() && !agent.draining && !agent.record.quarantined)
            .map(|agent| match pass {
                Pass::FreeSlots => Capacity {
                    agent: agent.record.name.clone(),
                    free_slots: agent.free_slots(),
                    free_gpus: agent.free_gpus(),
                    labels: agent.record.labels.clone(),
                },
                Pass::AgentQueues => Capacity {
                    agent: agent.record.name.clone(),
                    free_slots: agent.queue_room(),
                    free_gpus: Vec::new(),
                    labels: agent.record.labels.clone(),
                },
            })
            .filter(|capacity| capacity.free_slots > 0)
            .collect();
        let total_free: u64 = capacities.iter().map(|c| u64::from(c.free_slots)).sum();
        if total_free == 0 {
            return Ok(());
        }
        let eligible = |sweep: &SweepState| {
            sweep.record.status == SweepStatus::Running
                && (pass == Pass::FreeSlots || sweep.queues_on_agents())
        };

        enum Entry {
            Queued(String),
            NewTrial(String),
        }
        let mut entries = Vec::new();
        let mut demands = Vec::new();
        for run_id in &self.queue {
            let run = &self.runs[run_id];
            let Some(sweep) = self.sweeps.get(&run.sweep_id) else {
                continue;
            };
            if !eligible(sweep) {
                continue;
            }
            entries.push(Entry::Queued(run_id.clone()));
            demands.push(demand_of(&sweep.record.spec));
        }
        let mut sweeps: Vec<&SweepState> = self.sweeps.values().filter(|s| eligible(s)).collect();
        sweeps.sort_by(|a, b| {
            (a.record.created_ms, &a.record.id).cmp(&(b.record.created_ms, &b.record.id))
        });
        // Runs waiting in agents' queues count against a sweep's `parallel` only once
        // they start.
        let mut waiting: HashMap<&str, u64> = HashMap::new();
        if pass == Pass::FreeSlots {
            for agent in self.agents.values() {
                for run_id in &agent.queued {
                    if let Some(run) = self.runs.get(run_id) {
                        *waiting.entry(run.sweep_id.as_str()).or_default() += 1;
                    }
                }
            }
        }
        // New trials offered in this pass, over every sweep: at most one per free place,
        // so the work here follows the free places, whatever the sweeps' `parallel`.
        let mut budget = total_free;
        // Gaussian-process proposals take up to about a third of a second each (at the
        // bound on what `method: gp` models) and run on this thread: a few per pass keep
        // leases and heartbeats served, and the rest wait for the next pass.
        let mut gp_budget = MAX_GP_PROPOSALS_PER_PASS;
        for sweep in sweeps {
            if budget == 0 {
                break;
            }
            let parallel = u64::from(sweep.record.spec.parallel);
            let room = match pass {
                Pass::FreeSlots => {
                    let waiting = waiting.get(sweep.record.id.as_str()).copied();
                    let running = sweep.active.saturating_sub(waiting.unwrap_or(0));
                    parallel.saturating_sub(running)
                }
                Pass::AgentQueues => (3 * parallel).saturating_sub(sweep.active),
            };
            let remaining = sweep
                .record
                .planned_runs
                .saturating_sub(sweep.record.created_runs);
            let mut count = room.min(remaining).min(budget);
            if sweep.record.spec.method == ladder_spec::Method::Gp {
                count = count.min(gp_budget);
                gp_budget -= count;
            }
            budget -= count;
            for _ in 0..count {
                entries.push(Entry::NewTrial(sweep.record.id.clone()));
                demands.push(demand_of(&sweep.record.spec));
            }
        }
        if entries.is_empty() {
            return Ok(());
        }
        for placed in placement::place(&capacities, &demands) {
            let run_id = match &entries[placed.demand] {
                Entry::Queued(run_id) => {
                    self.queue.retain(|id| id != run_id);
                    run_id.clone()
                }
                Entry::NewTrial(sweep_id) => match self.create_run(sweep_id)? {
                    Some(run_id) => run_id,
                    None => continue,
                },
            };
            if pass == Pass::AgentQueues {
                self.agents
                    .get_mut(&placed.agent)
                    .expect("agent present")
                    .queued
                    .insert(run_id.clone());
            }
            self.start_attempt(&run_id, &placed.agent, placed.gpus)?;
        }
        Ok(())
    }

    /// Creates the sweep's next trial as a queued run. `None` when the sweep has no more.
    pub(super) fn create_run(
        &mut self,
        sweep_id: &str,
    ) -> Result<Option<String>, CoordinatorError> {
        let state = self.sweeps.get_mut(sweep_id).expect("sweep present");
        let index = state.record.created_runs;
        let Some(params) = ladder_search::propose_with_warm_start(
            &state.record.spec,
            index,
            &state.observations,
            &state.warm,
        ) else {
            state.record.planned_runs = index;
            return Ok(None);
        };
        let now = now_ms();
        let mut run = RunRecord {
            id: format!("{sweep_id}-{index:06}"),
            sweep_id: sweep_id.to_string(),
            project: state.record.spec.project.clone(),
            index,
            params,
            argv: Vec::new(),
            status: RunStatus::Queued,
            attempts: Vec::new(),
            last_metrics: BTreeMap::new(),
            last_step: None,
            created_ms: now,
            ended_ms: None,
            tags: Default::default(),
            notes: Vec::new(),
            summaries: BTreeMap::new(),
            info: BTreeMap::new(),
            metrics_dropped: 0,
            next_note_id: 0,
            artifacts: Vec::new(),
        };
        state.record.created_runs += 1;
        self.dirty_sweeps.insert(sweep_id.to_string());
        self.changed.insert(sweep_id.to_string());
        match space::render_command(&state.record.spec.command, &run.params) {
            Ok(mut argv) => {
                if let Some(train) = &state.record.spec.train {
                    // The built-in trainer reads its configuration, parameters
                    // substituted with their types, from argv.
                    let config = ladder_spec::train_config::render(train, &run.params);
                    argv.push("--config-json".to_string());
                    argv.push(config.to_string());
                }
                run.argv = argv;
            }
            Err(error) => {
                // Validation makes this unreachable; keep the sweep going regardless.
                warn!(run_id = %run.id, %error, "cannot render command");
                run.status = RunStatus::Failed;
                run.ended_ms = Some(now);
                state.active += 1;
                self.retire(run)?;
                return Ok(None);
            }
        }
        state.active += 1;
        state.observe(&run);
        let run_id = run.id.clone();
        self.dirty_runs.insert(run_id.clone());
        self.runs.insert(run_id.clone(), run);
        Ok(Some(run_id))
    }

    pub(super) fn start_attempt(
        &mut self,
        run_id: &str,
        agent_name: &str,
        gpus: Vec<u32>,
    ) -> Result<(), CoordinatorError> {
        let epoch = self.store.next_epoch()?;
        let run = self.runs.get_mut(run_id).expect("run present");
        let number = run.attempts.len() as u32 + 1;
        run.attempts.push(AttemptRecord::running(
            number,
            epoch,
            agent_name.to_string(),
            gpus.clone(),
            now_ms(),
        ));
        run.status = RunStatus::Running;
        self.dirty_runs.insert(run_id.to_string());
        self.changed.insert(run.sweep_id.clone());
        let sweep = &self.sweeps[&run.sweep_id];
        let params_json = space::params_json(&run.params).to_string();
        let assignment = Assignment {
            lease: Lease {
                run_id: run_id.to_string(),
                attempt: number,
                epoch,
            },
            sweep_id: run.sweep_id.clone(),
            argv: run.argv.clone(),
            params_json,
            gpus: gpus.clone(),
            env: BTreeMap::from([(
                "LADDER_PROJECT".to_string(),
                sweep.record.spec.project.clone(),
            )]),
            launch: sweep.record.spec.resources.launch,
            artifacts: sweep.record.spec.artifacts.clone(),
        };
        let agent = self.agents.get_mut(agent_name).expect("agent present");
        agent.runs.insert(run_id.to_string(), gpus);
        debug!(run_id, attempt = number, agent = agent_name, "run placed");
        if let Some(session) = &agent.session {
            self.deferred.push(Deferred::Send(
                session.outbox.clone(),
                ToAgent::Assign(assignment),
            ));
        }
        Ok(())
    }
}
