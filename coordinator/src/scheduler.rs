//! The scheduler: one thread that owns all mutable coordinator state and is the only
//! writer of the store.
//!
//! gRPC handlers send [`Event`]s over a channel. The loop takes every event waiting,
//! applies them (store writes are buffered), checks leases, places queued runs (asking
//! search methods for new trials only when a slot is free), then commits the store once
//! and only then releases what it decided: replies to clients, acknowledgements and
//! assignments to agents. So everything acknowledged is durable, and the cost of a
//! durable commit is shared by every event of the batch (group commit).
//!
//! This file holds the state, the event loop and the commit; the handlers are beside it:
//! `sweeps` (submission, actions, a sweep's end, notes and tags), `dispatch` (new trials
//! and placement), `agents` (sessions, views, quarantine, agent messages) and `runs`
//! (attempt events, ends, lost leases, requeues).

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

use crate::artifacts::ArtifactRecord;
use crate::error::CoordinatorError;
use crate::identity::{self, Admission, AgentSecret, SecretExt};
use crate::model::{
    now_ms, AgentRecord, AttemptOutcome, AttemptRecord, GitState, RunRecord, RunUpdate,
    StoredLogLine, StoredPoint, SweepRecord, MAX_METRICS_PER_RUN,
};
use crate::placement::{self, Capacity, Demand};
use crate::protocol::{
    Assignment, Finish, FinishOutcome, FromAgent, Lease, Registration, RunEvent, RunEventMessage,
    ToAgent,
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

pub use artifacts::ArtifactUpload;

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
    /// An agent asks to store a file of its attempt (`check_only`: before sending its
    /// bytes) or to record it (after the artifact store committed it). Answered with the
    /// record once durable, or refused: the lease is not the run's current attempt held
    /// by `upload.agent`, the agent did not prove its name, or the run's artifact limits.
    RecordArtifact {
        upload: ArtifactUpload,
        check_only: bool,
        reply: Reply<ArtifactRecord>,
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
    Artifact(
        Reply<ArtifactRecord>,
        Box<Result<ArtifactRecord, CoordinatorError>>,
    ),
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
    /// Assignments without GPUs the agent keeps waiting beyond its slots (from its
    /// registration; 0 for an agent that takes runs only into free slots).
    queue_depth: u32,
    /// Runs placed on the agent beyond its free slots, not reported started yet: they
    /// wait in its queue (or their start is on its way).
    queued: HashSet<String>,
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
            queue_depth: 0,
            queued: HashSet::new(),
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

    /// Room in the agent's queue: runs it holds beyond its slots, up to its depth.
    fn queue_room(&self) -> u32 {
        (self.record.slots + self.queue_depth).saturating_sub(self.runs.len() as u32)
            - self.free_slots()
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
    /// The finished trials of the sweep named by `warm_start:` (those ended before this
    /// sweep was submitted), by trial index; empty without `warm_start:`.
    warm: Vec<Observation>,
    /// The early-termination rule's state, when the sweep has one.
    stopper: Option<EarlyStopper>,
    /// How long the sweep's latest completed attempts ran (ms), newest last, at most
    /// [`RECENT_DURATIONS`].
    recent_durations: VecDeque<i64>,
}

/// Completed attempts whose durations decide whether a sweep's runs are short.
const RECENT_DURATIONS: usize = 16;
/// A sweep whose recent attempts ran this long or less (median) gets runs queued on
/// agents ahead of their slots: the dispatch round trip would be a noticeable part of
/// such a run, and a queued run waits at most about this long behind another.
const SHORT_RUN_MS: i64 = 5_000;

impl SweepState {
    fn new(record: SweepRecord) -> Self {
        let stopper = record.spec.early_terminate.clone().map(EarlyStopper::new);
        SweepState {
            record,
            active: 0,
            observations: Vec::new(),
            warm: Vec::new(),
            stopper,
            recent_durations: VecDeque::new(),
        }
    }

    /// Notes how long a completed attempt ran.
    fn ran_for(&mut self, duration_ms: i64) {
        if self.recent_durations.len() == RECENT_DURATIONS {
            self.recent_durations.pop_front();
        }
        self.recent_durations.push_back(duration_ms.max(0));
    }

    /// Whether the sweep's runs may wait in agents' queues: its trials do not depend on
    /// results (grid, random), need no GPU, and its recent runs were short.
    fn queues_on_agents(&self) -> bool {
        let spec = &self.record.spec;
        if spec.method.learns() || spec.resources.gpus > 0 || self.recent_durations.len() < 4 {
            return false;
        }
        let mut sorted: Vec<i64> = self.recent_durations.iter().copied().collect();
        sorted.sort_unstable();
        sorted[sorted.len() / 2] <= SHORT_RUN_MS
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
                    queue_depth: 0,
                    queued: HashSet::new(),
                },
            );
        }
        let mut queued: Vec<(i64, String)> = Vec::new();
        for sweep in scheduler.store.list_sweeps()? {
            if sweep.status.is_terminal() {
                continue;
            }
            let mut state = SweepState::new(sweep.clone());
            if sweep.spec.warm_start.is_some() {
                state.warm = scheduler
                    .warm_start(&sweep.spec, sweep.created_ms)
                    .unwrap_or_else(|error| {
                        warn!(sweep_id = %sweep.id, %error, "warm start unavailable; the sweep continues without it");
                        Vec::new()
                    });
            }
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
                Event::RecordArtifact { reply, .. } => {
                    self.deferred.push(Deferred::Artifact(
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
            Event::RecordArtifact {
                upload,
                check_only,
                reply,
            } => {
                let result = self.record_artifact(upload, check_only);
                self.check(&result);
                self.deferred
                    .push(Deferred::Artifact(reply, Box::new(result)));
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
                Deferred::Artifact(reply, result) => {
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

mod agents;
mod artifacts;
mod dispatch;
mod runs;
mod sweeps;

#[cfg(test)]
mod tests;
