//! The scheduler: one thread that owns all mutable coordinator state and is the only
//! writer of the store.
//!
//! gRPC handlers send [`Event`]s over a channel. The loop takes every event waiting,
//! applies them (store writes are buffered), checks leases, places queued runs (asking
//! search methods for new trials only when a slot is free), then commits the store once
//! and only then releases what it decided: replies to clients, acknowledgements and
//! assignments to agents. So everything acknowledged is durable, and the cost of a
//! durable commit is shared by every event of the batch (group commit).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ladder_early_stop::{Decision, EarlyStopper};
use ladder_limits::{MAX_ATTEMPT_LOG_BYTES, MAX_ATTEMPT_METRIC_POINTS};
use ladder_search::Observation;
use ladder_spec::space;
use ladder_spec::SweepSpec;
use ladder_types::{RunStatus, SweepStatus};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::error::CoordinatorError;
use crate::identity::{self, Admission, AgentSecret};
use crate::model::{
    now_ms, AgentRecord, AttemptOutcome, AttemptRecord, GitState, RunRecord, RunUpdate,
    StoredLogLine, StoredPoint, SweepRecord, MAX_METRICS_PER_RUN,
};
use crate::placement::{self, Capacity, Demand};
use crate::protocol::{
    Assignment, Finish, FinishOutcome, FromAgent, Lease, Registration, RunEvent, ToAgent,
};
use crate::store::Store;

/// Timing of the agent protocol.
#[derive(Debug, Clone, Copy)]
pub struct LeaseConfig {
    /// An agent silent for longer loses its runs: they go back to the queue.
    pub lease_timeout: Duration,
    /// How often agents are asked to heartbeat.
    pub heartbeat_interval: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            lease_timeout: Duration::from_secs(15),
            heartbeat_interval: Duration::from_secs(3),
        }
    }
}

pub type Reply<T> = oneshot::Sender<Result<T, CoordinatorError>>;

/// What a sweep action asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepAction {
    Pause,
    Resume,
    Cancel,
}

/// An agent as shown by `agents ls`.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub record: AgentRecord,
    pub connected: bool,
    pub draining: bool,
    pub runs: Vec<String>,
    /// Which run holds each of the agent's GPUs (by GPU index); free GPUs are absent.
    pub gpu_holders: BTreeMap<u32, String>,
    pub free_slots: u32,
}

/// Everything the scheduler reacts to.
pub enum Event {
    Submit {
        spec: Box<SweepSpec>,
        file_name: String,
        yaml: String,
        /// Who owns the sweep (its submitter).
        owner: String,
        /// The git state of the directory it was submitted from.
        git: GitState,
        reply: Reply<SweepRecord>,
    },
    SweepAction {
        sweep_id: String,
        action: SweepAction,
        reply: Reply<SweepRecord>,
    },
    /// One page of agents by name: up to `limit` named after `after`, and whether
    /// more follow.
    ListAgents {
        after: String,
        limit: usize,
        reply: Reply<(Vec<AgentView>, bool)>,
    },
    /// Lift an agent's quarantine.
    EnableAgent {
        name: String,
        reply: Reply<AgentView>,
    },
    /// Drop the secret an agent's name is bound to, so that the name can enroll again;
    /// refused while the agent is connected unless `force` (which ends its session).
    ForgetAgent {
        name: String,
        force: bool,
        reply: Reply<AgentView>,
    },
    /// An agent opened a session. `reply` answers once the registration is durable
    /// (`Registered` is then already in `outbox`), or with the refusal when the name is
    /// bound to a secret the registration did not present; a refused session leaves
    /// everything as it was.
    AgentConnected {
        session: u64,
        registration: Registration,
        outbox: mpsc::UnboundedSender<ToAgent>,
        reply: Reply<()>,
    },
    AgentMessage {
        session: u64,
        message: FromAgent,
    },
    AgentDisconnected {
        session: u64,
    },
    /// Add a note and add or remove tags of a run (`ladder runs note|tag`).
    UpdateRun {
        update: RunUpdate,
        reply: Reply<RunRecord>,
    },
    /// Close every agent session (the server is stopping).
    CloseSessions,
    /// Commit and stop the loop.
    Shutdown,
}

/// Something decided in this batch, released only after the commit.
enum Deferred {
    Sweep(
        Reply<SweepRecord>,
        Box<Result<SweepRecord, CoordinatorError>>,
    ),
    Agents(Reply<(Vec<AgentView>, bool)>, (Vec<AgentView>, bool)),
    Agent(Reply<AgentView>, Box<Result<AgentView, CoordinatorError>>),
    Run(Reply<RunRecord>, Box<Result<RunRecord, CoordinatorError>>),
    Registration(Reply<()>, Box<Result<(), CoordinatorError>>),
    Send(mpsc::UnboundedSender<ToAgent>, ToAgent),
    /// A run reached a stage once this batch is durable (`ladder bench dispatch`).
    Timeline(ladder_timeline::Stage, String),
}

struct Session {
    id: u64,
    outbox: mpsc::UnboundedSender<ToAgent>,
}

struct AgentState {
    record: AgentRecord,
    session: Option<Session>,
    last_seen: Instant,
    /// Runs whose current attempt this agent holds, with the GPUs each uses.
    runs: HashMap<String, Vec<u32>>,
    /// The agent is shutting down gracefully: nothing new is placed on it.
    draining: bool,
    /// The draining agent will not come back under its name: its record is dropped when
    /// its session ends with no run left on it.
    forget_on_exit: bool,
    /// End times (ms) of the consecutive fast failures of runs on this agent.
    fast_failures: Vec<i64>,
}

/// Runs failing within this long of their start count as fast failures.
const FAST_FAILURE_MS: i64 = 60_000;
/// This many fast failures in a row, within `FAST_FAILURE_MS`, quarantine an agent.
const QUARANTINE_AFTER: usize = 3;

impl AgentState {
    /// An agent known only by name (it has not registered yet), seen `now`.
    fn unknown(name: &str, now: Instant) -> Self {
        AgentState {
            record: AgentRecord {
                name: name.to_string(),
                labels: BTreeMap::new(),
                slots: 0,
                gpus: Vec::new(),
                hostname: String::new(),
                version: String::new(),
                last_seen_ms: 0,
                quarantined: false,
                quarantine_reason: None,
                secret_sha256: None,
            },
            session: None,
            last_seen: now,
            runs: HashMap::new(),
            draining: false,
            forget_on_exit: false,
            fast_failures: Vec::new(),
        }
    }

    /// Counts consecutive fast failures; quarantines the agent at the third within a
    /// minute. A run that completes resets the count.
    fn track_outcome(&mut self, status: RunStatus, duration_ms: i64, run_id: &str, reason: &str) {
        match status {
            RunStatus::Completed => self.fast_failures.clear(),
            RunStatus::Failed if duration_ms < FAST_FAILURE_MS => {
                let now = now_ms();
                self.fast_failures.push(now);
                self.fast_failures.retain(|t| now - t <= FAST_FAILURE_MS);
                if self.fast_failures.len() >= QUARANTINE_AFTER && !self.record.quarantined {
                    self.record.quarantined = true;
                    let reason = format!(
                        "{} runs failed in a row within {}s of starting (last: {run_id}, {reason})",
                        self.fast_failures.len(),
                        FAST_FAILURE_MS / 1000
                    );
                    warn!(agent = %self.record.name, %reason, "agent quarantined");
                    self.record.quarantine_reason = Some(reason);
                }
            }
            RunStatus::Failed => self.fast_failures.clear(),
            _ => {}
        }
    }

    fn free_slots(&self) -> u32 {
        self.record.slots.saturating_sub(self.runs.len() as u32)
    }

    fn free_gpus(&self) -> Vec<u32> {
        let used: HashSet<u32> = self.runs.values().flatten().copied().collect();
        self.record
            .gpus
            .iter()
            .map(|gpu| gpu.index)
            .filter(|index| !used.contains(index))
            .collect()
    }
}

struct SweepState {
    record: SweepRecord,
    /// Runs of the sweep that are queued or running.
    active: u64,
    /// Every trial created so far, by trial index, as the search method sees it.
    observations: Vec<Observation>,
    /// The early-termination rule's state, when the sweep has one.
    stopper: Option<EarlyStopper>,
}

impl SweepState {
    fn new(record: SweepRecord) -> Self {
        let stopper = record.spec.early_terminate.clone().map(EarlyStopper::new);
        SweepState {
            record,
            active: 0,
            observations: Vec::new(),
            stopper,
        }
    }

    /// The value a finished run contributes to the search: its summary of the sweep
    /// metric (the last value unless `metric: {summary: ..}` chose another), when it
    /// completed or was stopped early.
    fn objective(&self, run: &RunRecord) -> Option<f64> {
        let metric = self.record.spec.metric.as_ref()?;
        match run.status {
            RunStatus::Completed | RunStatus::Stopped => run.metric_value(&metric.name),
            _ => None,
        }
    }

    /// Records a run's trial in `observations` (creating the slot if needed).
    fn observe(&mut self, run: &RunRecord) {
        let index = run.index as usize;
        if self.observations.len() <= index {
            self.observations.resize(
                index + 1,
                Observation {
                    params: Default::default(),
                    value: None,
                    pending: false,
                },
            );
        }
        self.observations[index] = Observation {
            params: run.params.clone(),
            value: self.objective(run),
            pending: !run.status.is_terminal(),
        };
    }

    /// Feeds metric points of a run to the early-termination rule; the first stop
    /// decision, if any.
    fn judge(
        &mut self,
        run_index: u64,
        first_point: u64,
        points: &[StoredPoint],
    ) -> Option<String> {
        let stopper = self.stopper.as_mut()?;
        let metric = self.record.spec.early_terminate.as_ref()?.metric.clone();
        let mut verdict = None;
        for (offset, point) in points.iter().enumerate() {
            let Some(value) = point.values.get(&metric) else {
                continue;
            };
            // Points without a step count as steps 1, 2, 3... of the attempt.
            let step = point
                .step
                .unwrap_or((first_point + offset as u64 + 1) as i64);
            if let Decision::Stop { reason, .. } = stopper.report(run_index, step, *value) {
                verdict.get_or_insert(reason);
            }
        }
        verdict
    }
}

/// The state machine. Construct with [`Scheduler::recover`], drive with [`Scheduler::run`].
pub struct Scheduler {
    store: Arc<dyn Store>,
    config: LeaseConfig,
    /// Sweeps that have not ended.
    sweeps: HashMap<String, SweepState>,
    /// Runs that are queued or running.
    runs: HashMap<String, RunRecord>,
    /// Queued runs, oldest first.
    queue: VecDeque<String>,
    agents: HashMap<String, AgentState>,
    sessions: HashMap<u64, String>,
    deferred: Vec<Deferred>,
    changed: HashSet<String>,
    changes: broadcast::Sender<String>,
    stopping: bool,
    /// Set when a store write or commit failed: the in-memory view may then be ahead of
    /// the store, so nothing more is acknowledged and the scheduler stops; the
    /// coordinator exits and its next start rebuilds the view from what is stored.
    failure: Option<String>,
    /// Active runs changed in this batch, written once each at the batch's commit.
    dirty_runs: HashSet<String>,
    /// Runs that ended in this batch (no longer in `runs`), written at the commit.
    retired: HashMap<String, RunRecord>,
    /// Active sweeps changed in this batch, written once each at the commit.
    dirty_sweeps: HashSet<String>,
    /// Sweeps that ended in this batch (no longer in `sweeps`), written at the commit.
    ended_sweeps: HashMap<String, SweepRecord>,
}

impl Scheduler {
    /// Rebuilds the in-memory view from the store: unfinished sweeps, queued and running
    /// runs, known agents. Agents are all disconnected; those holding runs get one lease
    /// timeout from now to come back and re-adopt them.
    pub fn recover(
        store: Arc<dyn Store>,
        config: LeaseConfig,
        changes: broadcast::Sender<String>,
    ) -> Result<Self, CoordinatorError> {
        let now = Instant::now();
        let mut scheduler = Scheduler {
            store,
            config,
            sweeps: HashMap::new(),
            runs: HashMap::new(),
            queue: VecDeque::new(),
            agents: HashMap::new(),
            sessions: HashMap::new(),
            deferred: Vec::new(),
            changed: HashSet::new(),
            changes,
            stopping: false,
            failure: None,
            dirty_runs: HashSet::new(),
            retired: HashMap::new(),
            dirty_sweeps: HashSet::new(),
            ended_sweeps: HashMap::new(),
        };
        for record in scheduler.store.list_agents()? {
            scheduler.agents.insert(
                record.name.clone(),
                AgentState {
                    record,
                    session: None,
                    last_seen: now,
                    runs: HashMap::new(),
                    draining: false,
                    forget_on_exit: false,
                    fast_failures: Vec::new(),
                },
            );
        }
        let mut queued: Vec<(i64, String)> = Vec::new();
        for sweep in scheduler.store.list_sweeps()? {
            if sweep.status.is_terminal() {
                continue;
            }
            let mut state = SweepState::new(sweep.clone());
            for run in scheduler.store.list_runs(Some(&sweep.id))? {
                state.observe(&run);
                if state.stopper.is_some() {
                    for attempt in &run.attempts {
                        let points = scheduler.store.metrics(&run.id, attempt.number)?;
                        state.judge(run.index, 0, &points);
                    }
                    if run.status.is_terminal() {
                        if let Some(stopper) = state.stopper.as_mut() {
                            stopper.finished(run.index);
                        }
                    }
                }
                if run.status.is_terminal() {
                    continue;
                }
                state.active += 1;
                if run.status == RunStatus::Queued {
                    queued.push((run.created_ms, run.id.clone()));
                } else if let Some(attempt) = run.current_attempt() {
                    let agent = scheduler
                        .agents
                        .entry(attempt.agent.clone())
                        .or_insert_with(|| AgentState::unknown(&attempt.agent, now));
                    agent.runs.insert(run.id.clone(), attempt.gpus.clone());
                }
                scheduler.runs.insert(run.id.clone(), run);
            }
            info!(sweep_id = %sweep.id, active = state.active, "recovered sweep");
            scheduler.sweeps.insert(sweep.id.clone(), state);
        }
        queued.sort();
        scheduler.queue = queued.into_iter().map(|(_, id)| id).collect();
        let sweep_ids: Vec<String> = scheduler.sweeps.keys().cloned().collect();
        for sweep_id in sweep_ids {
            scheduler.maybe_finish_sweep(&sweep_id)?;
        }
        scheduler.store.commit()?;
        Ok(scheduler)
    }

    /// Runs the loop until [`Event::Shutdown`] or until every sender is gone.
    /// Applies events until shutdown; returns why it stopped early when the store failed.
    pub fn run(mut self, events: Receiver<Event>) -> Option<String> {
        let tick = (self.config.heartbeat_interval / 2)
            .clamp(Duration::from_millis(20), Duration::from_millis(500));
        loop {
            match events.recv_timeout(tick) {
                Ok(event) => {
                    self.handle(event);
                    // Take whatever else is waiting into the same commit.
                    for _ in 0..4096 {
                        match events.try_recv() {
                            Ok(event) => self.handle(event),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.stopping = true,
            }
            self.step(Instant::now());
            if self.stopping {
                info!("scheduler stopped");
                return self.failure;
            }
        }
    }

    /// After a batch of events: expire leases as of `now`, place runs, commit, release.
    fn step(&mut self, now: Instant) {
        if self.failure.is_none() {
            self.check_leases(now);
        }
        if !self.stopping {
            self.schedule();
        }
        self.commit_and_release();
    }

    /// The latest record of a run: the scheduler's own while the run is active or ended
    /// in this batch (and so not written yet), else the store's.
    fn run_record(&self, run_id: &str) -> Result<Option<RunRecord>, CoordinatorError> {
        if let Some(run) = self.runs.get(run_id) {
            return Ok(Some(run.clone()));
        }
        if let Some(run) = self.retired.get(run_id) {
            return Ok(Some(run.clone()));
        }
        self.store.get_run(run_id)
    }

    /// The latest record of a sweep, as [`Scheduler::run_record`] for runs.
    fn sweep_record(&self, sweep_id: &str) -> Result<Option<SweepRecord>, CoordinatorError> {
        if let Some(sweep) = self.sweeps.get(sweep_id) {
            return Ok(Some(sweep.record.clone()));
        }
        if let Some(sweep) = self.ended_sweeps.get(sweep_id) {
            return Ok(Some(sweep.clone()));
        }
        self.store.get_sweep(sweep_id)
    }

    /// Writes every run and sweep changed in this batch, each once, before the commit:
    /// a run created, placed and started in one batch costs one record write, and a
    /// sweep's record is written once per batch however many of its runs changed.
    fn write_changes(&mut self) -> Result<(), CoordinatorError> {
        let mut runs: Vec<String> = self.dirty_runs.drain().collect();
        runs.sort();
        for run_id in runs {
            if let Some(run) = self.runs.get(&run_id) {
                self.store.put_run(run)?;
            }
        }
        let mut retired: Vec<RunRecord> = self.retired.drain().map(|(_, run)| run).collect();
        retired.sort_by(|a, b| a.id.cmp(&b.id));
        for run in &retired {
            self.store.put_run(run)?;
        }
        let mut sweeps: Vec<String> = self.dirty_sweeps.drain().collect();
        sweeps.sort();
        for sweep_id in sweeps {
            if let Some(sweep) = self.sweeps.get(&sweep_id) {
                self.store.put_sweep(&sweep.record)?;
            }
        }
        let mut ended: Vec<SweepRecord> = self.ended_sweeps.drain().map(|(_, s)| s).collect();
        ended.sort_by(|a, b| a.id.cmp(&b.id));
        for sweep in &ended {
            self.store.put_sweep(sweep)?;
        }
        Ok(())
    }

    /// Stops the scheduler after a store error (see [`Scheduler::failure`]).
    fn fail(&mut self, error: &CoordinatorError) {
        if self.failure.is_none() {
            error!(%error, "store write failed; nothing more is acknowledged and the coordinator stops so that it restarts from what is stored");
            self.failure = Some(error.to_string());
        }
        self.stopping = true;
    }

    /// Stops the scheduler when `result` is a store error.
    fn check<T>(&mut self, result: &Result<T, CoordinatorError>) {
        if let Err(error) = result {
            if error.is_store() {
                self.fail(error);
            }
        }
    }

    fn handle(&mut self, event: Event) {
        if self.failure.is_some() {
            // Replies go out as errors with the next (refused) commit; agent reports are
            // left unacknowledged, to be resent to the restarted coordinator.
            match event {
                Event::Submit { reply, .. } | Event::SweepAction { reply, .. } => {
                    self.deferred.push(Deferred::Sweep(
                        reply,
                        Box::new(Err(CoordinatorError::ShuttingDown)),
                    ));
                }
                Event::EnableAgent { reply, .. } => {
                    self.deferred.push(Deferred::Agent(
                        reply,
                        Box::new(Err(CoordinatorError::ShuttingDown)),
                    ));
                }
                Event::UpdateRun { reply, .. } => {
                    self.deferred.push(Deferred::Run(
                        reply,
                        Box::new(Err(CoordinatorError::ShuttingDown)),
                    ));
                }
                _ => {}
            }
            return;
        }
        match event {
            Event::Submit {
                spec,
                file_name,
                yaml,
                owner,
                git,
                reply,
            } => {
                let result = self.submit(*spec, file_name, yaml, owner, git);
                self.check(&result);
                self.deferred.push(Deferred::Sweep(reply, Box::new(result)));
            }
            Event::SweepAction {
                sweep_id,
                action,
                reply,
            } => {
                let result = self.sweep_action(&sweep_id, action);
                self.check(&result);
                self.deferred.push(Deferred::Sweep(reply, Box::new(result)));
            }
            Event::EnableAgent { name, reply } => {
                let result = self.enable_agent(&name);
                self.check(&result);
                self.deferred.push(Deferred::Agent(reply, Box::new(result)));
            }
            Event::ListAgents {
                after,
                limit,
                reply,
            } => {
                let page = self.agent_page(&after, limit);
                self.deferred.push(Deferred::Agents(reply, page));
            }
            Event::ForgetAgent { name, force, reply } => {
                let result = self.forget_agent(&name, force);
                self.check(&result);
                self.deferred.push(Deferred::Agent(reply, Box::new(result)));
            }
            Event::AgentConnected {
                session,
                registration,
                outbox,
                reply,
            } => {
                let result = self.agent_connected(session, registration, outbox);
                self.check(&result);
                match &result {
                    Err(CoordinatorError::AgentNameRefused(_)) | Ok(()) => {}
                    Err(error) => error!(%error, "failed to register agent"),
                }
                self.deferred
                    .push(Deferred::Registration(reply, Box::new(result)));
            }
            Event::AgentMessage { session, message } => {
                let result = self.agent_message(session, message);
                self.check(&result);
                if let Err(error) = result {
                    error!(%error, "failed to apply agent message");
                }
            }
            Event::AgentDisconnected { session } => self.agent_disconnected(session),
            Event::UpdateRun { update, reply } => {
                let result = self.update_run(update);
                self.check(&result);
                self.deferred.push(Deferred::Run(reply, Box::new(result)));
            }
            Event::CloseSessions => {
                for agent in self.agents.values_mut() {
                    agent.session = None;
                }
                self.sessions.clear();
            }
            Event::Shutdown => self.stopping = true,
        }
    }

    // ----- notes and tags -----

    /// Applies a user's note and tags to a run, in the scheduler's copy when the run is
    /// active (so the next agent report does not overwrite it), else in the store's.
    fn update_run(&mut self, update: RunUpdate) -> Result<RunRecord, CoordinatorError> {
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

    fn submit(
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
        let record = SweepRecord {
            id: id.clone(),
            spec,
            file_name,
            yaml,
            status: SweepStatus::Running,
            created_ms: now_ms(),
            ended_ms: None,
            planned_runs,
            created_runs: 0,
            owner,
            git_commit: git.commit,
            git_dirty: git.dirty,
        };
        self.dirty_sweeps.insert(id.clone());
        info!(sweep_id = %id, name = %record.spec.name, planned_runs, "sweep submitted");
        self.sweeps
            .insert(id.clone(), SweepState::new(record.clone()));
        self.changed.insert(id.clone());
        self.maybe_finish_sweep(&id)?;
        Ok(record)
    }

    fn sweep_action(
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
        Ok(record)
    }

    fn cancel_runs(&mut self, sweep_id: &str) -> Result<(), CoordinatorError> {
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
    fn maybe_finish_sweep(&mut self, sweep_id: &str) -> Result<(), CoordinatorError> {
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
    fn retire(&mut self, run: RunRecord) -> Result<(), CoordinatorError> {
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

    // ----- placement -----

    fn schedule(&mut self) {
        let result = self.try_schedule();
        self.check(&result);
        if let Err(error) = result {
            error!(%error, "scheduling failed");
        }
    }

    fn try_schedule(&mut self) -> Result<(), CoordinatorError> {
        let capacities: Vec<Capacity> = self
            .agents
            .values()
            .filter(|agent| agent.session.is_some() && !agent.draining && !agent.record.quarantined)
            .map(|agent| Capacity {
                agent: agent.record.name.clone(),
                free_slots: agent.free_slots(),
                free_gpus: agent.free_gpus(),
                labels: agent.record.labels.clone(),
            })
            .filter(|capacity| capacity.free_slots > 0)
            .collect();
        let total_free: u64 = capacities.iter().map(|c| u64::from(c.free_slots)).sum();
        if total_free == 0 {
            return Ok(());
        }

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
            if sweep.record.status != SweepStatus::Running {
                continue;
            }
            entries.push(Entry::Queued(run_id.clone()));
            demands.push(demand_of(&sweep.record.spec));
        }
        let mut sweeps: Vec<&SweepState> = self
            .sweeps
            .values()
            .filter(|s| s.record.status == SweepStatus::Running)
            .collect();
        sweeps.sort_by(|a, b| {
            (a.record.created_ms, &a.record.id).cmp(&(b.record.created_ms, &b.record.id))
        });
        // New trials offered in this step, over every sweep: at most one per free slot,
        // so the work here follows the free slots, whatever the sweeps' `parallel`.
        let mut budget = total_free;
        for sweep in sweeps {
            if budget == 0 {
                break;
            }
            let room = u64::from(sweep.record.spec.parallel).saturating_sub(sweep.active);
            let remaining = sweep
                .record
                .planned_runs
                .saturating_sub(sweep.record.created_runs);
            let count = room.min(remaining).min(budget);
            budget -= count;
            for _ in 0..count {
                entries.push(Entry::NewTrial(sweep.record.id.clone()));
                demands.push(demand_of(&sweep.record.spec));
            }
        }
        if entries.is_empty() {
            return Ok(());
        }
        let placements = placement::place(&capacities, &demands);
        for placed in placements {
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
            self.start_attempt(&run_id, &placed.agent, placed.gpus)?;
        }
        Ok(())
    }

    /// Creates the sweep's next trial as a queued run. `None` when the sweep has no more.
    fn create_run(&mut self, sweep_id: &str) -> Result<Option<String>, CoordinatorError> {
        let state = self.sweeps.get_mut(sweep_id).expect("sweep present");
        let index = state.record.created_runs;
        let Some(params) = ladder_search::propose(&state.record.spec, index, &state.observations)
        else {
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

    fn start_attempt(
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

    // ----- agents -----

    #[cfg(test)]
    fn agent_views(&self) -> Vec<AgentView> {
        let mut views: Vec<AgentView> = self
            .agents
            .values()
            .map(|agent| self.agent_view(agent))
            .collect();
        views.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        views
    }

    fn agent_page(&self, after: &str, limit: usize) -> (Vec<AgentView>, bool) {
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

    fn agent_view(&self, agent: &AgentState) -> AgentView {
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

    fn enable_agent(&mut self, name: &str) -> Result<AgentView, CoordinatorError> {
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
    fn forget_agent(&mut self, name: &str, force: bool) -> Result<AgentView, CoordinatorError> {
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

    fn agent_connected(
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

    fn lease_is_current(&self, lease: &Lease, agent: &str) -> bool {
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
    fn is_finished_attempt(&self, lease: &Lease) -> bool {
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

    fn agent_disconnected(&mut self, session: u64) {
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

    fn agent_message(&mut self, session: u64, message: FromAgent) -> Result<(), CoordinatorError> {
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
            FromAgent::RunEvent { lease, seq, event } => {
                self.run_event(&name, outbox, lease, seq, event)
            }
        }
    }

    fn run_event(
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

    fn finish_attempt(&mut self, run_id: &str, finish: Finish) -> Result<(), CoordinatorError> {
        if finish.outcome == FinishOutcome::Released {
            return self.requeue(
                run_id,
                AttemptOutcome::Released,
                "handed back by a draining agent",
            );
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
        if let Some(agent) = self.agents.get_mut(&agent_name) {
            agent.runs.remove(run_id);
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
    fn lose_attempt(&mut self, run_id: &str, reason: &str) -> Result<(), CoordinatorError> {
        self.requeue(run_id, AttemptOutcome::Lost, reason)
    }

    /// Ends the current attempt with `outcome` (lost, or released by a draining agent) and
    /// queues the run again. Lost attempts count against `max_restarts`; released ones do
    /// not.
    fn requeue(
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
    fn check_leases(&mut self, now: Instant) {
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

    fn commit_and_release(&mut self) {
        if self.deferred.is_empty()
            && self.changed.is_empty()
            && self.dirty_runs.is_empty()
            && self.retired.is_empty()
            && self.dirty_sweeps.is_empty()
            && self.ended_sweeps.is_empty()
        {
            return;
        }
        let written = match &self.failure {
            Some(failure) => Err(CoordinatorError::Store(failure.clone())),
            None => self.write_changes(),
        };
        let committed = written.and_then(|()| self.store.commit());
        if let Err(error) = &committed {
            error!(%error, "store commit failed; nothing of this batch is acknowledged");
            self.fail(error);
        }
        for deferred in self.deferred.drain(..) {
            match deferred {
                Deferred::Sweep(reply, result) => {
                    let result = match &committed {
                        // The record as committed: runs this batch created included.
                        Ok(()) => result.map(|record| match self.sweeps.get(&record.id) {
                            Some(state) => state.record.clone(),
                            None => record,
                        }),
                        Err(error) => Err(CoordinatorError::Store(error.to_string())),
                    };
                    let _ = reply.send(result);
                }
                Deferred::Agents(reply, views) => {
                    let _ = reply.send(Ok(views));
                }
                Deferred::Run(reply, result) => {
                    let result = match &committed {
                        Ok(()) => *result,
                        Err(error) => Err(CoordinatorError::Store(error.to_string())),
                    };
                    let _ = reply.send(result);
                }
                Deferred::Agent(reply, result) => {
                    let result = match &committed {
                        Ok(()) => *result,
                        Err(error) => Err(CoordinatorError::Store(error.to_string())),
                    };
                    let _ = reply.send(result);
                }
                Deferred::Registration(reply, result) => {
                    let result = match &committed {
                        Ok(()) => *result,
                        Err(error) => Err(CoordinatorError::Store(error.to_string())),
                    };
                    let _ = reply.send(result);
                }
                Deferred::Send(outbox, message) => {
                    if committed.is_ok() {
                        if let ToAgent::Assign(assignment) = &message {
                            let lease = &assignment.lease;
                            ladder_timeline::mark(
                                ladder_timeline::Stage::LeaseSent,
                                || ladder_timeline::attempt_key(&lease.run_id, lease.attempt),
                                "",
                            );
                        }
                        let _ = outbox.send(message);
                    }
                }
                Deferred::Timeline(stage, key) => {
                    if committed.is_ok() {
                        ladder_timeline::mark(stage, || key, "");
                    }
                }
            }
        }
        for sweep_id in self.changed.drain() {
            let _ = self.changes.send(sweep_id);
        }
    }
}

fn demand_of(spec: &SweepSpec) -> Demand {
    Demand {
        gpus: spec.resources.gpus,
        labels: spec
            .resources
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// A short random id: 8 characters of lowercase letters and digits.
fn new_sweep_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..8)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests;
