//! Tests of `coordinator/src/scheduler.rs`.

//! The scheduler driven by virtual agents: events in, messages out, no network.

use super::*;
use crate::store::SledStore;
use ladder_spec::parse_sweep;

struct VirtualAgent {
    session: u64,
    inbox: mpsc::UnboundedReceiver<ToAgent>,
    /// Messages read at registration and not yet drained.
    pending: Vec<ToAgent>,
}

impl VirtualAgent {
    fn drain(&mut self) -> Vec<ToAgent> {
        let mut messages = std::mem::take(&mut self.pending);
        while let Ok(message) = self.inbox.try_recv() {
            messages.push(message);
        }
        messages
    }

    /// The secret the coordinator issued at registration, if it enrolled the name.
    fn issued_secret(&self) -> Option<AgentSecret> {
        self.pending.iter().find_map(|m| match m {
            ToAgent::Registered { agent_secret, .. } => agent_secret.clone(),
            _ => None,
        })
    }

    /// Whether the coordinator has closed this session's outbox.
    fn closed(&mut self) -> bool {
        matches!(
            self.inbox.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        )
    }

    fn assignments(&mut self) -> Vec<Assignment> {
        self.drain()
            .into_iter()
            .filter_map(|m| match m {
                ToAgent::Assign(a) => Some(a),
                _ => None,
            })
            .collect()
    }
}

fn scheduler(dir: &std::path::Path, lease_timeout: Duration) -> Scheduler {
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir).unwrap());
    let (changes, _) = broadcast::channel(64);
    let config = LeaseConfig {
        lease_timeout,
        heartbeat_interval: Duration::from_millis(100),
    };
    Scheduler::recover(store, config, changes).unwrap()
}

thread_local! {
    /// The secret each agent name enrolled with, as a real agent keeps it in its work
    /// directory: [`connect`] presents it, as a restarted agent does.
    static SECRETS: std::cell::RefCell<HashMap<String, AgentSecret>> =
        std::cell::RefCell::new(HashMap::new());
}

/// Registers `name` with the secret it enrolled with (if any); panics if refused.
fn connect(
    s: &mut Scheduler,
    session: u64,
    name: &str,
    slots: u32,
    held: Vec<Lease>,
) -> VirtualAgent {
    let secret = SECRETS.with(|secrets| secrets.borrow().get(name).cloned());
    let (result, agent) = register(s, session, name, slots, held, secret);
    result.unwrap_or_else(|error| panic!("{name} refused: {error}"));
    agent
}

/// Registers `name` presenting `secret`; the scheduler's answer and the session.
fn register(
    s: &mut Scheduler,
    session: u64,
    name: &str,
    slots: u32,
    held: Vec<Lease>,
    secret: Option<AgentSecret>,
) -> (Result<(), CoordinatorError>, VirtualAgent) {
    register_queueing(s, session, name, slots, 0, held, secret)
}

/// Registers `name`, which keeps up to `queue_depth` runs waiting beyond its slots.
fn register_queueing(
    s: &mut Scheduler,
    session: u64,
    name: &str,
    slots: u32,
    queue_depth: u32,
    held: Vec<Lease>,
    secret: Option<AgentSecret>,
) -> (Result<(), CoordinatorError>, VirtualAgent) {
    let (outbox, inbox) = mpsc::unbounded_channel();
    let registration = Registration {
        queue_depth,
        name: name.into(),
        labels: BTreeMap::new(),
        slots,
        gpus: vec![],
        held,
        hostname: "test".into(),
        version: "0".into(),
        secret,
    };
    let (reply, mut answer) = oneshot::channel();
    s.handle(Event::AgentConnected {
        session,
        registration,
        outbox,
        reply,
    });
    s.step(Instant::now());
    let result = answer.try_recv().expect("answered after the commit");
    let mut agent = VirtualAgent {
        session,
        inbox,
        pending: Vec::new(),
    };
    agent.pending = agent.drain();
    if let Some(secret) = agent.issued_secret() {
        SECRETS.with(|secrets| secrets.borrow_mut().insert(name.to_string(), secret));
    }
    (result, agent)
}

fn forget(s: &mut Scheduler, name: &str, force: bool) -> Result<AgentView, CoordinatorError> {
    let (reply, mut answer) = oneshot::channel();
    s.handle(Event::ForgetAgent {
        name: name.into(),
        force,
        reply,
    });
    s.step(Instant::now());
    answer.try_recv().expect("answered after the commit")
}

fn view(s: &Scheduler, name: &str) -> AgentView {
    s.agent_views()
        .into_iter()
        .find(|v| v.record.name == name)
        .unwrap_or_else(|| panic!("agent {name} unknown"))
}

fn submit(s: &mut Scheduler, yaml: &str) -> String {
    let spec = parse_sweep("t.yaml", yaml).unwrap();
    let (reply, mut answer) = oneshot::channel();
    s.handle(Event::Submit {
        spec: Box::new(spec),
        file_name: "t.yaml".into(),
        yaml: yaml.into(),
        owner: String::new(),
        git: GitState::default(),
        reply,
    });
    s.step(Instant::now());
    answer.try_recv().unwrap().unwrap().id
}

fn report(s: &mut Scheduler, agent: &VirtualAgent, lease: &Lease, seq: u64, event: RunEvent) {
    s.handle(Event::AgentMessage {
        session: agent.session,
        message: FromAgent::RunEvent(RunEventMessage {
            lease: lease.clone(),
            seq,
            event,
        }),
    });
    s.step(Instant::now());
}

fn finish(outcome: FinishOutcome, code: i32) -> RunEvent {
    RunEvent::Finished(Finish {
        outcome,
        exit_code: Some(code),
        signal: None,
        reason: String::new(),
    })
}

fn output(loss: f64) -> RunEvent {
    RunEvent::Output {
        metrics: vec![StoredPoint {
            step: Some(1),
            values: BTreeMap::from([("loss".into(), loss)]),
            time_ms: 0,
        }],
        logs: vec![],
        info: BTreeMap::new(),
    }
}

const GRID3: &str = "name: t\nmethod: grid\nparallel: 2\nparameters:\n  x: {values: [1, 2, 3]}\ncommand: [echo, \"{{x}}\"]\n";

#[test]
fn a_sweep_no_known_agent_could_ever_run_is_refused_at_submit() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scheduler(dir.path(), Duration::from_secs(60));
    let gpu_sweep = format!("{GRID3}resources: {{gpus: 2}}\n");
    // No agent known yet: queued, since one may join later.
    submit(&mut s, &gpu_sweep);
    let _agent = connect(&mut s, 1, "cpu-box", 2, vec![]);
    let spec = parse_sweep("t.yaml", &gpu_sweep).unwrap();
    let (reply, mut answer) = oneshot::channel();
    s.handle(Event::Submit {
        spec: Box::new(spec),
        file_name: "t.yaml".into(),
        yaml: gpu_sweep.clone(),
        owner: String::new(),
        git: GitState::default(),
        reply,
    });
    s.step(Instant::now());
    let error = answer.try_recv().unwrap().unwrap_err();
    assert!(
        matches!(error, CoordinatorError::FailedPrecondition(_)),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("needs 2 GPUs") && message.contains("cpu-box, has 0"),
        "{message}"
    );
    // CPU sweeps are still accepted.
    submit(&mut s, GRID3);
}

/// The value a finished run gives the search: its last value of the objective unless
/// the sweep chose a summary.
#[test]
fn the_search_learns_the_objective_s_chosen_summary() {
    for (summary, expected) in [("", 0.9), (", summary: best", 0.1), (", summary: max", 0.9)] {
        let dir = tempfile::tempdir().unwrap();
        let mut s = scheduler(dir.path(), Duration::from_secs(60));
        let mut agent = connect(&mut s, 1, "a", 1, vec![]);
        let yaml = format!(
                "name: t\nmethod: grid\nmetric: {{name: loss, goal: minimize{summary}}}\nparameters:\n  x: {{values: [1, 2]}}\ncommand: [echo]\n"
            );
        let sweep_id = submit(&mut s, &yaml);
        let lease = agent.assignments().remove(0).lease;
        for (seq, loss) in [0.5, 0.1, 0.9].into_iter().enumerate() {
            report(&mut s, &agent, &lease, seq as u64 + 1, output(loss));
        }
        report(
            &mut s,
            &agent,
            &lease,
            4,
            finish(FinishOutcome::Completed, 0),
        );
        let observed = s.sweeps[&sweep_id].observations[0].value;
        assert_eq!(observed, Some(expected), "summary {summary:?}");
        let run = s.store.get_run(&lease.run_id).unwrap().unwrap();
        let loss = run.summaries["loss"];
        assert_eq!((loss.last, loss.min, loss.max), (0.9, 0.1, 0.9));
        assert_eq!(run.last_metrics["loss"], 0.9);
    }
}

#[test]
fn trials_are_created_as_slots_free_and_the_sweep_completes() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scheduler(dir.path(), Duration::from_secs(60));
    let mut agent = connect(&mut s, 1, "a", 4, vec![]);
    let sweep_id = submit(&mut s, GRID3);
    let first = agent.assignments();
    assert_eq!(first.len(), 2, "parallel: 2 caps the runs in flight");
    assert_eq!(first[0].argv, vec!["echo", "1"]);
    for a in &first {
        report(
            &mut s,
            &agent,
            &a.lease,
            1,
            finish(FinishOutcome::Completed, 0),
        );
    }
    let second = agent.assignments();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].argv, vec!["echo", "3"]);
    report(
        &mut s,
        &agent,
        &second[0].lease,
        1,
        finish(FinishOutcome::Failed, 3),
    );
    let sweep = s.store.get_sweep(&sweep_id).unwrap().unwrap();
    assert_eq!(sweep.status, SweepStatus::Completed);
    let runs = s.store.list_runs(Some(&sweep_id)).unwrap();
    let statuses: Vec<RunStatus> = runs.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        vec![
            RunStatus::Completed,
            RunStatus::Completed,
            RunStatus::Failed
        ]
    );
    assert_eq!(runs[2].attempts[0].exit_code, Some(3));
}

#[test]
fn a_silent_agent_loses_its_runs_and_its_late_reports_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scheduler(dir.path(), Duration::from_secs(5));
    let mut a = connect(&mut s, 1, "a", 1, vec![]);
    submit(
        &mut s,
        "name: t\nmethod: grid\nparameters:\n  x: {value: 1}\ncommand: [\"true\"]\n",
    );
    let assigned = a.assignments();
    assert_eq!(assigned.len(), 1);
    let old_lease = assigned[0].lease.clone();
    // b stays alive; a goes silent past the lease timeout.
    let mut b = connect(&mut s, 2, "b", 1, vec![]);
    s.agents.get_mut("b").unwrap().last_seen = Instant::now() + Duration::from_secs(10);
    s.step(Instant::now() + Duration::from_secs(6));
    let moved = b.assignments();
    assert_eq!(
        moved.len(),
        1,
        "the run is requeued and placed on the live agent"
    );
    assert_eq!(moved[0].lease.attempt, 2);
    assert!(moved[0].lease.epoch > old_lease.epoch);
    let run = s.store.get_run(&old_lease.run_id).unwrap().unwrap();
    assert_eq!(run.attempts[0].outcome, AttemptOutcome::Lost);
    assert!(
        run.attempts[0].reason.contains("lease timeout"),
        "{}",
        run.attempts[0].reason
    );

    // a comes back and reports with its old lease: rejected, nothing stored.
    let mut a = connect(&mut s, 3, "a", 1, vec![old_lease.clone()]);
    let rejected = a
        .drain()
        .into_iter()
        .any(|m| matches!(m, ToAgent::Reject { lease, .. } if lease == old_lease));
    assert!(rejected, "re-registering with a stale lease is rejected");
    report(
        &mut s,
        &a,
        &old_lease,
        1,
        finish(FinishOutcome::Completed, 0),
    );
    assert!(a
        .drain()
        .iter()
        .any(|m| matches!(m, ToAgent::Reject { .. })));
    let run = s.store.get_run(&old_lease.run_id).unwrap().unwrap();
    assert_eq!(
        run.status,
        RunStatus::Running,
        "the stale completion did not land"
    );
    assert_eq!(run.attempts.len(), 2);
}

/// A store that counts what the scheduler writes, and whose next output write can
/// be made to fail once, as a transient I/O error would.
struct FlakyStore {
    inner: SledStore,
    fail_next_output: std::sync::atomic::AtomicBool,
    commits: std::sync::atomic::AtomicU64,
    run_writes: std::sync::atomic::AtomicU64,
    sweep_writes: std::sync::atomic::AtomicU64,
    record_bytes: std::sync::atomic::AtomicU64,
}

impl FlakyStore {
    fn open(dir: &std::path::Path) -> FlakyStore {
        FlakyStore {
            inner: SledStore::open(dir).unwrap(),
            fail_next_output: Default::default(),
            commits: Default::default(),
            run_writes: Default::default(),
            sweep_writes: Default::default(),
            record_bytes: Default::default(),
        }
    }

    fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
        counter.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn add(counter: &std::sync::atomic::AtomicU64, n: u64) {
        counter.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Store for FlakyStore {
    fn put_sweep(&self, sweep: &SweepRecord) -> crate::store::Result<()> {
        Self::add(&self.sweep_writes, 1);
        Self::add(
            &self.record_bytes,
            serde_json::to_vec(sweep).unwrap().len() as u64,
        );
        self.inner.put_sweep(sweep)
    }
    fn get_sweep(&self, id: &str) -> crate::store::Result<Option<SweepRecord>> {
        self.inner.get_sweep(id)
    }
    fn list_sweeps(&self) -> crate::store::Result<Vec<SweepRecord>> {
        self.inner.list_sweeps()
    }
    fn put_run(&self, run: &RunRecord) -> crate::store::Result<()> {
        Self::add(&self.run_writes, 1);
        Self::add(
            &self.record_bytes,
            serde_json::to_vec(run).unwrap().len() as u64,
        );
        self.inner.put_run(run)
    }
    fn get_run(&self, id: &str) -> crate::store::Result<Option<RunRecord>> {
        self.inner.get_run(id)
    }
    fn list_runs(&self, sweep_id: Option<&str>) -> crate::store::Result<Vec<RunRecord>> {
        self.inner.list_runs(sweep_id)
    }
    fn for_each_run(
        &self,
        sweep_id: Option<&str>,
        visit: &mut dyn FnMut(RunRecord) -> crate::store::Result<()>,
    ) -> crate::store::Result<()> {
        self.inner.for_each_run(sweep_id, visit)
    }
    fn put_output(
        &self,
        run_id: &str,
        attempt: u32,
        seq: u64,
        metrics: &[StoredPoint],
        logs: &[StoredLogLine],
    ) -> crate::store::Result<()> {
        if self
            .fail_next_output
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(CoordinatorError::Store("injected write error".into()));
        }
        self.inner.put_output(run_id, attempt, seq, metrics, logs)
    }
    fn metrics(&self, run_id: &str, attempt: u32) -> crate::store::Result<Vec<StoredPoint>> {
        self.inner.metrics(run_id, attempt)
    }
    fn metrics_after(
        &self,
        run_id: &str,
        attempt: u32,
        after: Option<crate::store::PointKey>,
        limit: usize,
        max_bytes: usize,
    ) -> crate::store::Result<Vec<(crate::store::PointKey, StoredPoint)>> {
        self.inner
            .metrics_after(run_id, attempt, after, limit, max_bytes)
    }
    fn log_tail(
        &self,
        run_id: &str,
        attempt: u32,
        n: usize,
    ) -> crate::store::Result<Vec<StoredLogLine>> {
        self.inner.log_tail(run_id, attempt, n)
    }
    fn put_agent(&self, agent: &AgentRecord) -> crate::store::Result<()> {
        self.inner.put_agent(agent)
    }
    fn list_agents(&self) -> crate::store::Result<Vec<AgentRecord>> {
        self.inner.list_agents()
    }
    fn delete_agent(&self, name: &str) -> crate::store::Result<()> {
        self.inner.delete_agent(name)
    }
    fn next_epoch(&self) -> crate::store::Result<u64> {
        self.inner.next_epoch()
    }
    fn commit(&self) -> crate::store::Result<()> {
        Self::add(&self.commits, 1);
        self.inner.commit()
    }
}

fn acks(agent: &mut VirtualAgent) -> Vec<u64> {
    agent
        .drain()
        .into_iter()
        .filter_map(|m| match m {
            ToAgent::Ack { seq, .. } => Some(seq),
            _ => None,
        })
        .collect()
}

#[test]
fn an_event_whose_output_failed_to_store_is_never_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FlakyStore::open(dir.path()));
    let config = LeaseConfig {
        lease_timeout: Duration::from_secs(60),
        heartbeat_interval: Duration::from_millis(100),
    };
    let (changes, _) = broadcast::channel(64);
    let mut s =
        Scheduler::recover(store.clone() as Arc<dyn Store>, config, changes.clone()).unwrap();
    let mut a = connect(&mut s, 1, "a", 1, vec![]);
    submit(
        &mut s,
        "name: t\nmethod: grid\nparameters:\n  x: {value: 1}\ncommand: [\"true\"]\n",
    );
    let lease = a.assignments()[0].lease.clone();
    store
        .fail_next_output
        .store(true, std::sync::atomic::Ordering::SeqCst);
    report(&mut s, &a, &lease, 1, output(0.5));
    // The agent resends what was not acknowledged, then goes on.
    report(&mut s, &a, &lease, 1, output(0.5));
    report(&mut s, &a, &lease, 2, output(0.25));
    let acked = acks(&mut a);
    let stored = store.metrics(&lease.run_id, 1).unwrap().len() as u64;
    for seq in &acked {
        assert!(
            *seq <= stored,
            "event {seq} acknowledged but only {stored} events of output are stored"
        );
    }
    assert!(
        s.failure.is_some(),
        "the scheduler stops after a store error"
    );

    // A restarted coordinator takes the resent events and stores each of them.
    let mut s = Scheduler::recover(store.clone() as Arc<dyn Store>, config, changes).unwrap();
    let mut a = connect(&mut s, 2, "a", 1, vec![lease.clone()]);
    a.drain();
    report(&mut s, &a, &lease, 1, output(0.5));
    report(&mut s, &a, &lease, 2, output(0.25));
    assert_eq!(acks(&mut a), vec![1, 2]);
    assert_eq!(store.metrics(&lease.run_id, 1).unwrap().len(), 2);
}

#[test]
fn the_submit_reply_counts_the_runs_its_commit_created() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scheduler(dir.path(), Duration::from_secs(60));
    let _agent = connect(&mut s, 1, "a", 2, vec![]);
    let yaml = "name: t\nmethod: grid\nparallel: 2\nparameters:\n  x: {values: [1, 2, 3]}\ncommand: [\"true\"]\n";
    let spec = parse_sweep("t.yaml", yaml).unwrap();
    let (reply, mut answer) = oneshot::channel();
    s.handle(Event::Submit {
        spec: Box::new(spec),
        file_name: "t.yaml".into(),
        yaml: yaml.into(),
        owner: String::new(),
        git: GitState::default(),
        reply,
    });
    s.step(Instant::now());
    let record = answer.try_recv().unwrap().unwrap();
    let stored = s.sweep_record(&record.id).unwrap().unwrap();
    assert_eq!(stored.created_runs, 2, "two slots, two runs placed");
    assert_eq!(record.created_runs, stored.created_runs);
}

/// Every run of a sweep through the real scheduler, as agents under load report: the
/// events of a round arrive together and are applied as one batch (one commit).
#[test]
fn the_store_is_written_once_per_batch_not_once_per_event() {
    const RUNS: u64 = 400;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FlakyStore::open(dir.path()));
    let config = LeaseConfig {
        lease_timeout: Duration::from_secs(60),
        heartbeat_interval: Duration::from_millis(100),
    };
    let (changes, _) = broadcast::channel(64);
    let mut s = Scheduler::recover(store.clone() as Arc<dyn Store>, config, changes).unwrap();
    let mut agents: Vec<VirtualAgent> = (0..4)
        .map(|i| connect(&mut s, i + 1, &format!("a{i}"), 4, vec![]))
        .collect();
    let yaml = format!(
            "# {}\nname: t\nmethod: grid\nparallel: 16\nparameters:\n  x: {{distribution: int_uniform, min: 1, max: {RUNS}}}\ncommand: [\"true\", \"{{{{x}}}}\"]\n",
            "c".repeat(1000)
        );
    submit(&mut s, &yaml);
    let before = (
        FlakyStore::count(&store.commits),
        FlakyStore::count(&store.run_writes),
        FlakyStore::count(&store.sweep_writes),
        FlakyStore::count(&store.record_bytes),
    );
    let mut finished = 0;
    let mut rounds = 0;
    while finished < RUNS {
        rounds += 1;
        assert!(rounds < 1_000, "the sweep does not progress");
        let mut events = Vec::new();
        for agent in agents.iter_mut() {
            for assignment in agent.assignments() {
                events.push((agent.session, assignment.lease));
            }
        }
        // Started, one metric point and the finish of every run placed, one batch.
        for (session, lease) in &events {
            for (seq, event) in [
                (
                    1,
                    RunEvent::Started {
                        pid: 1,
                        work_dir: String::new(),
                    },
                ),
                (2, output(0.5)),
                (3, finish(FinishOutcome::Completed, 0)),
            ] {
                s.handle(Event::AgentMessage {
                    session: *session,
                    message: FromAgent::RunEvent(RunEventMessage {
                        lease: lease.clone(),
                        seq,
                        event,
                    }),
                });
            }
        }
        s.step(Instant::now());
        finished += events.len() as u64;
    }
    let commits = FlakyStore::count(&store.commits) - before.0;
    let run_writes = FlakyStore::count(&store.run_writes) - before.1;
    let sweep_writes = FlakyStore::count(&store.sweep_writes) - before.2;
    let bytes = FlakyStore::count(&store.record_bytes) - before.3;
    eprintln!(
            "{RUNS} runs in {rounds} rounds: {commits} commits, {run_writes} run writes, {sweep_writes} sweep writes, {} record bytes per run",
            bytes / RUNS
        );
    assert!(
        commits <= rounds + 1,
        "{commits} commits for {rounds} batches"
    );
    assert!(
        sweep_writes <= commits,
        "{sweep_writes} sweep writes for {commits} commits"
    );
    assert!(
        run_writes <= 2 * RUNS,
        "{run_writes} run writes for {RUNS} runs"
    );
    assert!(
        bytes / RUNS <= 2_048,
        "{} record bytes written per run",
        bytes / RUNS
    );
}

#[test]
fn metric_names_beyond_the_run_limit_are_dropped_and_noted() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scheduler(dir.path(), Duration::from_secs(60));
    let mut a = connect(&mut s, 1, "a", 1, vec![]);
    submit(
        &mut s,
        "name: t\nmethod: grid\nparameters:\n  x: {value: 1}\ncommand: [\"true\"]\n",
    );
    let lease = a.assignments()[0].lease.clone();
    let many = |from: usize, to: usize| RunEvent::Output {
        metrics: vec![StoredPoint {
            step: Some(1),
            values: (from..to).map(|i| (format!("m{i}"), 1.0)).collect(),
            time_ms: 0,
        }],
        logs: vec![],
        info: BTreeMap::new(),
    };
    report(&mut s, &a, &lease, 1, many(0, MAX_METRICS_PER_RUN - 1));
    report(
        &mut s,
        &a,
        &lease,
        2,
        many(MAX_METRICS_PER_RUN - 1, MAX_METRICS_PER_RUN + 50),
    );
    // Known names still update past the limit.
    report(&mut s, &a, &lease, 3, many(0, 10));
    assert_eq!(acks(&mut a), vec![1, 2, 3]);
    let run = s.store.get_run(&lease.run_id).unwrap().unwrap();
    assert_eq!(run.last_metrics.len(), MAX_METRICS_PER_RUN);
    assert_eq!(run.summaries.len(), MAX_METRICS_PER_RUN);
    assert_eq!(run.metrics_dropped, 50);
    let log = s.store.log_tail(&lease.run_id, 1, 10).unwrap();
    assert!(
        log.iter().any(|l| l.text.contains("distinct metric names")),
        "the drop is noted in the run's log: {log:?}"
    );
}

#[test]
fn a_restarted_coordinator_re_adopts_running_runs_and_stores_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let lease = {
        let mut s = scheduler(dir.path(), Duration::from_secs(60));
        let mut a = connect(&mut s, 1, "a", 1, vec![]);
        submit(
            &mut s,
            "name: t\nmethod: grid\nparameters:\n  x: {value: 1}\ncommand: [\"true\"]\n",
        );
        let lease = a.assignments()[0].lease.clone();
        report(&mut s, &a, &lease, 1, output(0.5));
        lease
    };
    // The scheduler is gone without any shutdown, as after kill -9.
    let mut s = scheduler(dir.path(), Duration::from_secs(60));
    let mut a = connect(&mut s, 1, "a", 1, vec![lease.clone()]);
    assert!(a
        .drain()
        .iter()
        .all(|m| !matches!(m, ToAgent::Reject { .. } | ToAgent::Assign(_))));
    // The agent resends event 1 (its ack was lost) and goes on.
    report(&mut s, &a, &lease, 1, output(0.5));
    report(&mut s, &a, &lease, 2, output(0.25));
    report(&mut s, &a, &lease, 3, finish(FinishOutcome::Completed, 0));
    let acks: Vec<u64> = a
        .drain()
        .into_iter()
        .filter_map(|m| match m {
            ToAgent::Ack { seq, .. } => Some(seq),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![1, 2, 3]);
    let run = s.store.get_run(&lease.run_id).unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.attempts.len(), 1, "re-adopted, not restarted");
    assert_eq!(run.last_metrics["loss"], 0.25);
    assert_eq!(
        s.store.metrics(&lease.run_id, 1).unwrap().len(),
        2,
        "the resent event was not stored twice"
    );
}

/// An output event that carries only `@ladder.info` entries.
fn info_output(entries: &[(&str, &str)]) -> RunEvent {
    RunEvent::Output {
        metrics: vec![],
        logs: vec![],
        info: entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[test]
fn run_info_merges_over_attempts_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let run_id = {
        let mut s = scheduler(dir.path(), Duration::from_secs(5));
        let mut a = connect(&mut s, 1, "a", 1, vec![]);
        submit(
            &mut s,
            "name: t\nmethod: grid\nparameters:\n  x: {value: 1}\ncommand: [\"true\"]\n",
        );
        let first = a.assignments()[0].lease.clone();
        report(
            &mut s,
            &a,
            &first,
            1,
            info_output(&[("base_model", "m1"), ("data.train", "d")]),
        );
        // a goes silent; the run's second attempt runs on b and reports again.
        let mut b = connect(&mut s, 2, "b", 1, vec![]);
        s.agents.get_mut("b").unwrap().last_seen = Instant::now() + Duration::from_secs(10);
        s.step(Instant::now() + Duration::from_secs(6));
        let second = b.assignments()[0].lease.clone();
        assert_eq!(second.attempt, 2);
        report(&mut s, &b, &second, 1, info_output(&[("base_model", "m2")]));
        report(&mut s, &b, &second, 2, output(0.5));
        first.run_id
    };
    // Reopened without a shutdown, as after kill -9.
    let s = scheduler(dir.path(), Duration::from_secs(5));
    let run = s.store.get_run(&run_id).unwrap().unwrap();
    assert_eq!(run.attempts.len(), 2);
    let want: BTreeMap<String, String> = [("base_model", "m2"), ("data.train", "d")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(run.info, want);
    assert_eq!(s.runs[&run_id].info, want);
    assert_eq!(crate::convert::run_to_pb(&run).info.len(), 2);
}

#[test]
fn three_fast_failures_in_a_row_quarantine_an_agent_until_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scheduler(dir.path(), Duration::from_secs(60));
    let mut bad = connect(&mut s, 1, "bad", 1, vec![]);
    submit(&mut s, "name: t\nmethod: grid\nparameters:\n  x: {distribution: int_uniform, min: 1, max: 5}\ncommand: [\"false\"]\n");
    for _ in 0..3 {
        let assigned = bad.assignments();
        assert_eq!(assigned.len(), 1);
        report(
            &mut s,
            &bad,
            &assigned[0].lease,
            1,
            finish(FinishOutcome::Failed, 1),
        );
    }
    assert!(
        bad.assignments().is_empty(),
        "nothing is placed on a quarantined agent"
    );
    let view = s
        .agent_views()
        .into_iter()
        .find(|v| v.record.name == "bad")
        .unwrap();
    assert!(view.record.quarantined);
    assert!(
        view.record
            .quarantine_reason
            .as_deref()
            .unwrap()
            .contains("3 runs failed"),
        "{:?}",
        view.record.quarantine_reason
    );
    // The quarantine is durable.
    assert!(s
        .store
        .list_agents()
        .unwrap()
        .iter()
        .any(|a| a.name == "bad" && a.quarantined));

    let (reply, mut answer) = oneshot::channel();
    s.handle(Event::EnableAgent {
        name: "bad".into(),
        reply,
    });
    s.step(Instant::now());
    assert!(!answer.try_recv().unwrap().unwrap().record.quarantined);
    assert_eq!(bad.assignments().len(), 1, "placement resumes once enabled");
}

#[test]
fn released_runs_are_requeued_without_spending_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scheduler(dir.path(), Duration::from_secs(60));
    let mut a = connect(&mut s, 1, "a", 1, vec![]);
    submit(&mut s, "name: t\nmethod: grid\nmax_restarts: 0\nparameters:\n  x: {value: 1}\ncommand: [\"true\"]\n");
    let lease = a.assignments()[0].lease.clone();
    s.handle(Event::AgentMessage {
        session: a.session,
        message: FromAgent::Drain { forget: false },
    });
    let release = RunEvent::Finished(Finish {
        outcome: FinishOutcome::Released,
        exit_code: None,
        signal: Some(15),
        reason: "released".into(),
    });
    report(&mut s, &a, &lease, 1, release);
    assert!(
        a.assignments().is_empty(),
        "nothing is placed on a draining agent"
    );
    let mut b = connect(&mut s, 2, "b", 1, vec![]);
    let moved = b.assignments();
    assert_eq!(
        moved.len(),
        1,
        "the released run moves even with max_restarts: 0"
    );
    assert_eq!(moved[0].lease.attempt, 2);
    let run = s.store.get_run(&lease.run_id).unwrap().unwrap();
    assert_eq!(run.attempts[0].outcome, AttemptOutcome::Released);
    assert_eq!(run.status, RunStatus::Running);
}

/// An agent that drains with `forget` is dropped (record and store) once its session
/// ends with its runs handed back; one that ends its session with a run still on it,
/// or drains without `forget`, stays listed.
#[test]
fn an_agent_draining_to_be_forgotten_is_dropped_once_its_runs_are_handed_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scheduler(dir.path(), Duration::from_secs(60));
    let mut job = connect(&mut s, 1, "slurm-1-n1", 1, vec![]);
    let mut stuck = connect(&mut s, 2, "slurm-2-n1", 1, vec![]);
    submit(&mut s, "name: t\nmethod: grid\nparallel: 2\nparameters:\n  x: {values: [1, 2]}\ncommand: [\"true\"]\n");
    let job_lease = job.assignments()[0].lease.clone();
    assert_eq!(stuck.assignments().len(), 1);
    let _kept = connect(&mut s, 3, "gpu-01", 1, vec![]);
    for (session, forget) in [(1, true), (2, true), (3, false)] {
        s.handle(Event::AgentMessage {
            session,
            message: FromAgent::Drain { forget },
        });
    }
    let release = RunEvent::Finished(Finish {
        outcome: FinishOutcome::Released,
        exit_code: None,
        signal: Some(15),
        reason: "released".into(),
    });
    report(&mut s, &job, &job_lease, 1, release);
    for session in 1..=3 {
        s.handle(Event::AgentDisconnected { session });
    }
    s.step(Instant::now());
    let stored: Vec<String> = s
        .store
        .list_agents()
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(stored, ["gpu-01", "slurm-2-n1"]);
    assert!(!s.agents.contains_key("slurm-1-n1"));
    assert!(s.agents.contains_key("slurm-2-n1"), "a run is still on it");
}

const ONE_RUN: &str =
        "name: t\nmethod: grid\nmetric: {name: loss, goal: minimize}\nparameters:\n  x: {value: 1}\ncommand: [\"true\"]\n";

/// A second session claiming a live agent's name with the fleet's credentials but
/// without the name's secret is refused, and changes nothing: the live session keeps
/// its run, the impostor can report nothing, and the run completes credited to the
/// real agent with its own result.
#[test]
fn a_session_without_the_name_s_secret_is_refused_and_the_live_agent_keeps_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scheduler(dir.path(), Duration::from_secs(60));
    let mut real = connect(&mut s, 1, "gpu-01", 1, vec![]);
    let secret = SECRETS.with(|secrets| secrets.borrow().get("gpu-01").cloned());
    assert!(secret.is_some(), "the first registration enrolled the name");
    let sweep_id = submit(&mut s, ONE_RUN);
    let lease = real.assignments().remove(0).lease;

    for (session, presented) in [(2, None), (3, Some(AgentSecret::generate()))] {
        let (result, mut impostor) = register(&mut s, session, "gpu-01", 4, vec![], presented);
        let error = result.expect_err("the impostor is refused");
        assert!(
            matches!(error, CoordinatorError::AgentNameRefused(_)),
            "{error:?}"
        );
        assert!(
            error.to_string().contains("ladder agents forget gpu-01"),
            "{error}"
        );
        assert!(impostor.drain().is_empty(), "the impostor hears nothing");
        // It cannot report for the real agent's lease either.
        report(&mut s, &impostor, &lease, 1, output(-1000.0));
        report(
            &mut s,
            &impostor,
            &lease,
            2,
            finish(FinishOutcome::Completed, 0),
        );
        assert!(impostor.drain().is_empty());
    }
    let live = view(&s, "gpu-01");
    assert!(live.connected);
    assert_eq!(
        live.record.slots, 1,
        "the impostor's registration was not applied"
    );
    assert_eq!(live.runs, vec![lease.run_id.clone()]);
    let run = s.store.get_run(&lease.run_id).unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.attempts.len(), 1);
    assert_eq!(run.attempts[0].outcome, AttemptOutcome::Running);
    assert!(run.last_metrics.is_empty(), "no impostor metric landed");

    // The real agent's session is untouched: its reports land and are acknowledged.
    report(&mut s, &real, &lease, 1, output(0.25));
    report(
        &mut s,
        &real,
        &lease,
        2,
        finish(FinishOutcome::Completed, 0),
    );
    let acks: Vec<u64> = real
        .drain()
        .into_iter()
        .filter_map(|m| match m {
            ToAgent::Ack { seq, .. } => Some(seq),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![1, 2]);
    let run = s.store.get_run(&lease.run_id).unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.attempts.len(), 1);
    assert_eq!(run.attempts[0].agent, "gpu-01");
    assert_eq!(run.last_metrics["loss"], 0.25);
    let sweep = s.store.get_sweep(&sweep_id).unwrap().unwrap();
    assert_eq!(sweep.status, SweepStatus::Completed);
}

/// Taking a quarantined agent's name does not lift its quarantine, and a refused
/// impostor is given nothing to run.
#[test]
fn a_quarantined_name_cannot_be_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scheduler(dir.path(), Duration::from_secs(60));
    let mut bad = connect(&mut s, 1, "bad", 1, vec![]);
    submit(&mut s, "name: t\nmethod: grid\nparameters:\n  x: {distribution: int_uniform, min: 1, max: 5}\ncommand: [\"false\"]\n");
    for _ in 0..3 {
        let assigned = bad.assignments();
        report(
            &mut s,
            &bad,
            &assigned[0].lease,
            1,
            finish(FinishOutcome::Failed, 1),
        );
    }
    assert!(view(&s, "bad").record.quarantined);
    drop(bad);
    s.handle(Event::AgentDisconnected { session: 1 });
    let (result, mut impostor) = register(&mut s, 2, "bad", 8, vec![], None);
    assert!(matches!(result, Err(CoordinatorError::AgentNameRefused(_))));
    assert!(impostor.drain().is_empty());
    let after = view(&s, "bad");
    assert!(after.record.quarantined && !after.connected);
    assert!(s
        .store
        .list_agents()
        .unwrap()
        .iter()
        .any(|a| a.name == "bad" && a.quarantined));
}

/// The right secret may open a new session while one is live (a reconnect); the
/// binding survives a coordinator restart; forgetting is refused while the agent is
/// connected, and afterwards the name enrolls again with a new secret.
#[test]
fn the_name_s_secret_reconnects_and_forgetting_lets_the_name_enroll_again() {
    let dir = tempfile::tempdir().unwrap();
    let first_secret = {
        let mut s = scheduler(dir.path(), Duration::from_secs(60));
        let mut first = connect(&mut s, 1, "gpu-01", 1, vec![]);
        let secret = first.issued_secret().expect("enrolled");
        // A reconnect with the secret replaces the live session.
        let mut second = connect(&mut s, 2, "gpu-01", 1, vec![]);
        assert!(
            second.issued_secret().is_none(),
            "proven, not enrolled again"
        );
        assert!(first.closed(), "the older session is closed");
        assert!(second
            .drain()
            .iter()
            .any(|m| matches!(m, ToAgent::Registered { .. })));
        secret
    };
    // Reopened as after kill -9: the store kept only the hash.
    let mut s = scheduler(dir.path(), Duration::from_secs(60));
    let stored = s.store.list_agents().unwrap();
    assert_eq!(stored[0].secret_sha256, Some(first_secret.hash()));
    let listed = crate::convert::agent_to_pb(&view(&s, "gpu-01"));
    assert!(!format!("{listed:?}").contains(first_secret.expose()));
    let (result, _) = register(&mut s, 3, "gpu-01", 1, vec![], None);
    assert!(matches!(result, Err(CoordinatorError::AgentNameRefused(_))));
    let _agent = connect(&mut s, 4, "gpu-01", 1, vec![]);

    let error = forget(&mut s, "gpu-01", false).unwrap_err();
    assert!(
        matches!(error, CoordinatorError::FailedPrecondition(_)),
        "{error:?}"
    );
    assert!(error.to_string().contains("--force"), "{error}");
    assert!(
        view(&s, "gpu-01").connected,
        "a refused forget changes nothing"
    );
    s.handle(Event::AgentDisconnected { session: 4 });
    let forgotten = forget(&mut s, "gpu-01", false).unwrap();
    assert!(forgotten.record.secret_sha256.is_none());
    assert!(s.store.list_agents().unwrap()[0].secret_sha256.is_none());
    assert!(matches!(
        forget(&mut s, "nobody", false),
        Err(CoordinatorError::NotFound { .. })
    ));

    // A new agent (no secret) enrolls the name and gets a new secret; the old one
    // no longer proves it.
    let (result, fresh) = register(&mut s, 5, "gpu-01", 1, vec![], None);
    result.unwrap();
    let new_secret = fresh.issued_secret().expect("enrolled again");
    assert_ne!(new_secret, first_secret);
    s.handle(Event::AgentDisconnected { session: 5 });
    let (result, _) = register(&mut s, 6, "gpu-01", 1, vec![], Some(first_secret));
    assert!(matches!(result, Err(CoordinatorError::AgentNameRefused(_))));
    let (result, _) = register(&mut s, 7, "gpu-01", 1, vec![], Some(new_secret));
    result.unwrap();
}

/// `forget --force` of a connected agent ends its session and keeps its runs, which
/// the agent re-adopts when it reconnects and enrolls again.
#[test]
fn forcing_forget_ends_the_session_and_the_agent_re_enrolls_with_its_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scheduler(dir.path(), Duration::from_secs(60));
    let mut agent = connect(&mut s, 1, "gpu-01", 1, vec![]);
    submit(&mut s, ONE_RUN);
    let lease = agent.assignments().remove(0).lease;
    let forgotten = forget(&mut s, "gpu-01", true).unwrap();
    assert!(!forgotten.connected);
    assert_eq!(forgotten.runs, vec![lease.run_id.clone()]);
    assert!(agent.closed(), "the session is ended");
    // The same agent reconnects with the secret it had: the name enrolls again.
    let mut back = connect(&mut s, 2, "gpu-01", 1, vec![lease.clone()]);
    assert!(back.issued_secret().is_some());
    assert!(back
        .drain()
        .iter()
        .all(|m| !matches!(m, ToAgent::Reject { .. })));
    report(
        &mut s,
        &back,
        &lease,
        1,
        finish(FinishOutcome::Completed, 0),
    );
    let run = s.store.get_run(&lease.run_id).unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.attempts.len(), 1, "re-adopted, not restarted");
}

/// Runs an attempt of `assignment` to completion on `agent`: started, then completed.
fn complete(s: &mut Scheduler, agent: &VirtualAgent, assignment: &Assignment) {
    let started = RunEvent::Started {
        pid: 1,
        work_dir: String::new(),
    };
    report(s, agent, &assignment.lease, 1, started);
    report(
        s,
        agent,
        &assignment.lease,
        2,
        finish(FinishOutcome::Completed, 0),
    );
}

/// A sweep of short runs gets runs waiting in the queue of an agent that keeps one, once
/// a few completed runs showed they are short: never more than `parallel` waiting
/// beyond the `parallel` that run, and a waiting run's attempt starts when the agent
/// reports it started. Pausing the sweep asks the agent to give the waiting ones back.
#[test]
fn short_runs_wait_in_agent_queues_and_a_pause_revokes_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scheduler(dir.path(), Duration::from_secs(60));
    let (result, mut agent) = register_queueing(&mut s, 1, "a", 2, 2, vec![], None);
    result.unwrap();
    let values: Vec<String> = (0..40).map(|i| i.to_string()).collect();
    let yaml = format!(
        "name: q\nmethod: grid\nparallel: 2\nparameters:\n  i: {{values: [{}]}}\ncommand: [\"true\"]\n",
        values.join(", ")
    );
    let sweep_id = submit(&mut s, &yaml);
    // Until four runs completed, nothing is known about their length: slots only.
    for _ in 0..2 {
        let placed = agent.assignments();
        assert_eq!(placed.len(), 2, "{placed:?}");
        for assignment in &placed {
            complete(&mut s, &agent, assignment);
        }
    }
    // Now two fill the slots and two wait in the queue.
    let placed = agent.assignments();
    assert_eq!(placed.len(), 4, "{placed:?}");
    assert_eq!(s.agents["a"].queued.len(), 2);
    let running: Vec<&Assignment> = placed
        .iter()
        .filter(|a| !s.agents["a"].queued.contains(&a.lease.run_id))
        .collect();
    assert_eq!(running.len(), 2);
    // One run ends; the agent starts a waiting one in its slot, and one more is queued
    // (two waiting again), none beyond the agent's slots and queue.
    complete(&mut s, &agent, running[0]);
    let next = placed
        .iter()
        .find(|a| s.agents["a"].queued.contains(&a.lease.run_id))
        .expect("a waiting run");
    // Placed long ago, as far as the record says: the start time is the report's.
    s.runs.get_mut(&next.lease.run_id).unwrap().attempts[0].started_ms = 0;
    report(
        &mut s,
        &agent,
        &next.lease,
        1,
        RunEvent::Started {
            pid: 2,
            work_dir: String::new(),
        },
    );
    assert!(s.runs[&next.lease.run_id].attempts[0].started_ms > 0);
    let more = agent.assignments();
    assert_eq!(more.len(), 1, "{more:?}");
    assert_eq!(s.agents["a"].runs.len(), 4);
    assert_eq!(s.agents["a"].queued.len(), 2);
    assert!(s.agents["a"].queued.contains(&more[0].lease.run_id));

    // A pause gives back exactly the runs still waiting.
    let (reply, mut answer) = oneshot::channel();
    s.handle(Event::SweepAction {
        sweep_id: sweep_id.clone(),
        action: SweepAction::Pause,
        reply,
    });
    s.step(Instant::now());
    answer.try_recv().unwrap().unwrap();
    let mut revoked: Vec<String> = agent
        .drain()
        .into_iter()
        .filter_map(|m| match m {
            ToAgent::Revoke { lease, .. } => Some(lease.run_id),
            _ => None,
        })
        .collect();
    revoked.sort();
    let mut expected: Vec<String> = s.agents["a"].queued.iter().cloned().collect();
    expected.sort();
    assert_eq!(revoked, expected);
    // The agent hands one back: it is queued again as a new attempt, not ended.
    let lease = s.runs[&revoked[0]].current_attempt().map(|a| Lease {
        run_id: revoked[0].clone(),
        attempt: a.number,
        epoch: a.epoch,
    });
    let lease = lease.expect("attempt");
    report(
        &mut s,
        &agent,
        &lease,
        1,
        RunEvent::Finished(Finish {
            outcome: FinishOutcome::Released,
            exit_code: None,
            signal: None,
            reason: "given back before it started: sweep paused".into(),
        }),
    );
    let run = &s.runs[&revoked[0]];
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(run.attempts[0].outcome, AttemptOutcome::Released);
    assert!(!s.agents["a"].queued.contains(&revoked[0]));
}

/// Runs of a `bayes` sweep, or of an agent without a queue, go only into free slots:
/// proposals wait for results, and such an agent would start them at once.
#[test]
fn only_sweeps_of_short_runs_that_need_no_results_queue_on_agents() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scheduler(dir.path(), Duration::from_secs(60));
    let (result, mut queueing) = register_queueing(&mut s, 1, "q", 1, 4, vec![], None);
    result.unwrap();
    let yaml = "name: b\nmethod: bayes\nmax_runs: 20\nparallel: 1\nmetric: {name: loss, goal: minimize}\nparameters:\n  x: {distribution: uniform, min: 0, max: 1}\ncommand: [\"true\"]\n";
    submit(&mut s, yaml);
    for _ in 0..8 {
        let placed = queueing.assignments();
        assert_eq!(placed.len(), 1, "{placed:?}");
        complete(&mut s, &queueing, &placed[0]);
    }
    assert!(s.agents["q"].queued.is_empty());

    let dir = tempfile::tempdir().unwrap();
    let mut s = scheduler(dir.path(), Duration::from_secs(60));
    let mut plain = connect(&mut s, 1, "p", 1, vec![]);
    submit(
        &mut s,
        &GRID3.replace("[1, 2, 3]", "[1, 2, 3, 4, 5, 6, 7, 8, 9]"),
    );
    for _ in 0..8 {
        let placed = plain.assignments();
        assert_eq!(placed.len(), 1, "{placed:?}");
        complete(&mut s, &plain, &placed[0]);
    }
}

/// A bayes sweep over `x, y` in `[0, 10]` whose runs report `loss`.
fn warm_start_sweep(name: &str, max_runs: u64, parallel: u32, extra: &str) -> String {
    format!(
        "name: {name}\nmethod: bayes\nmax_runs: {max_runs}\nparallel: {parallel}\nseed: 3\nmetric: {{name: loss, goal: minimize}}\n{extra}parameters:\n  x: {{distribution: uniform, min: 0, max: 10}}\n  y: {{distribution: uniform, min: 0, max: 10}}\ncommand: [t, \"{{{{x}}}}\", \"{{{{y}}}}\"]\n"
    )
}

/// Distance of an assignment's `(x, y)` to `(7, 2)`, where the test objective is lowest.
fn distance_to_best(assignment: &Assignment) -> f64 {
    let x: f64 = assignment.argv[1].parse().unwrap();
    let y: f64 = assignment.argv[2].parse().unwrap();
    ((x - 7.0).powi(2) + (y - 2.0).powi(2)).sqrt()
}

/// `warm_start: {sweep: ID}`: the new sweep's first proposals come from a model of the
/// earlier sweep's finished runs, so they gather near its best region, and the earlier
/// runs do not count towards the new sweep's `max_runs`.
#[test]
fn a_warm_started_sweep_proposes_near_the_earlier_sweep_s_best_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scheduler(dir.path(), Duration::from_secs(60));
    let mut agent = connect(&mut s, 1, "a", 8, vec![]);
    let earlier = submit(&mut s, &warm_start_sweep("earlier", 40, 4, ""));
    let mut finished = 0;
    while finished < 40 {
        let assignments = agent.assignments();
        assert!(!assignments.is_empty(), "the earlier sweep stalled");
        for assignment in assignments {
            let loss = distance_to_best(&assignment).powi(2);
            report(&mut s, &agent, &assignment.lease, 1, output(loss));
            report(
                &mut s,
                &agent,
                &assignment.lease,
                2,
                finish(FinishOutcome::Completed, 0),
            );
            finished += 1;
        }
    }
    let status = s.store.get_sweep(&earlier).unwrap().unwrap().status;
    assert_eq!(status, SweepStatus::Completed);

    // The same sweeps cold and warm (three seeds), each with its first 8 trials in flight.
    let first_trials = |s: &mut Scheduler, agent: &mut VirtualAgent, seed: u64, extra: &str| {
        let yaml =
            warm_start_sweep("later", 8, 8, extra).replace("seed: 3", &format!("seed: {seed}"));
        let sweep_id = submit(s, &yaml);
        let first = agent.assignments();
        assert_eq!(first.len(), 8);
        for assignment in &first {
            report(
                s,
                agent,
                &assignment.lease,
                1,
                finish(FinishOutcome::Completed, 0),
            );
        }
        assert!(agent.assignments().is_empty(), "max_runs: 8 ends the sweep");
        let record = s.store.get_sweep(&sweep_id).unwrap().unwrap();
        assert_eq!(record.created_runs, 8, "earlier runs are not counted");
        first.iter().map(distance_to_best).collect::<Vec<f64>>()
    };
    let (mut warm, mut cold) = (Vec::new(), Vec::new());
    for seed in [5, 6, 7] {
        cold.extend(first_trials(&mut s, &mut agent, seed, ""));
        let extra = format!("warm_start: {{sweep: {earlier}}}\n");
        warm.extend(first_trials(&mut s, &mut agent, seed, &extra));
    }
    // Within 2 of (7, 2) lies about a tenth of the box: cold, the first trials are
    // start-up draws over all of it; warm, they come from a model of the earlier runs.
    // TPE keeps exploring where the earlier sweep had few runs, so not all of them are
    // near its best, but several times as many as cold ones are (9 of 24 against 2).
    let near = |distances: &[f64]| distances.iter().filter(|&&d| d < 2.0).count();
    assert!(
        near(&warm) >= 8 && near(&warm) >= 3 * near(&cold),
        "warm {warm:?}, cold {cold:?}"
    );
}

/// A warm start from a sweep that does not exist, or that optimised another objective,
/// is refused at submit with what to fix.
#[test]
fn a_warm_start_needs_an_existing_sweep_with_the_same_objective() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scheduler(dir.path(), Duration::from_secs(60));
    let earlier = submit(&mut s, &warm_start_sweep("earlier", 4, 1, ""));
    let refusal = |s: &mut Scheduler, yaml: String| {
        let spec = parse_sweep("t.yaml", &yaml).unwrap();
        let (reply, mut answer) = oneshot::channel();
        s.handle(Event::Submit {
            spec: Box::new(spec),
            file_name: "t.yaml".into(),
            yaml,
            owner: String::new(),
            git: GitState::default(),
            reply,
        });
        s.step(Instant::now());
        answer.try_recv().unwrap().unwrap_err()
    };
    let error = refusal(
        &mut s,
        warm_start_sweep("later", 4, 1, "warm_start: {sweep: nosuch99}\n"),
    );
    assert!(
        matches!(error, CoordinatorError::FailedPrecondition(_)),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("sweep \"nosuch99\" does not exist"),
        "{error}"
    );
    let other_metric = warm_start_sweep(
        "later",
        4,
        1,
        &format!("warm_start: {{sweep: {earlier}}}\n"),
    )
    .replace(
        "{name: loss, goal: minimize}",
        "{name: accuracy, goal: maximize}",
    );
    let message = refusal(&mut s, other_metric).to_string();
    assert!(
        message.contains(
            "optimises loss (minimize, summary last), this sweep accuracy (maximize, summary last)"
        ),
        "{message}"
    );
    // Same objective: accepted, even before the earlier sweep has results.
    submit(
        &mut s,
        &warm_start_sweep(
            "later",
            4,
            1,
            &format!("warm_start: {{sweep: {earlier}}}\n"),
        ),
    );
}

/// A Gaussian-process proposal can take a third of a second and runs on the scheduler's
/// thread: one pass creates at most `MAX_GP_PROPOSALS_PER_PASS` of them, so twenty
/// free slots of `gp` sweeps cannot hold leases and heartbeats up for seconds; the next
/// passes fill the rest.
#[test]
fn gaussian_process_proposals_are_spread_over_passes() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scheduler(dir.path(), Duration::from_secs(60));
    let mut agent = connect(&mut s, 1, "a", 20, vec![]);
    let gp = |name: &str| {
        format!(
            "name: {name}\nmethod: gp\nmax_runs: 10\nparallel: 10\nseed: 3\nmetric: {{name: loss, goal: minimize}}\nparameters:\n  x: {{distribution: uniform, min: 0, max: 10}}\ncommand: [t, \"{{{{x}}}}\"]\n"
        )
    };
    submit(&mut s, &gp("one"));
    submit(&mut s, &gp("two"));
    let mut started = agent.assignments().len() as u64;
    assert_eq!(started, 2 * super::dispatch::MAX_GP_PROPOSALS_PER_PASS);
    let mut passes = 1;
    while started < 20 {
        s.step(Instant::now());
        let new = agent.assignments().len() as u64;
        assert!(
            new <= super::dispatch::MAX_GP_PROPOSALS_PER_PASS,
            "{new} in one pass"
        );
        assert!(new > 0, "the sweeps stalled at {started} runs");
        started += new;
        passes += 1;
    }
    assert_eq!(started, 20);
    assert_eq!(passes, 4, "passes");
    // Random sweeps are not limited: ten trials in one pass.
    let mut other = connect(&mut s, 2, "b", 10, vec![]);
    submit(
        &mut s,
        "name: r\nmethod: random\nmax_runs: 10\nparallel: 10\nparameters:\n  x: {distribution: uniform, min: 0, max: 10}\ncommand: [t, \"{{x}}\"]\n",
    );
    assert_eq!(other.assignments().len(), 10);
}
