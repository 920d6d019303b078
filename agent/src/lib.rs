//! The ladder agent: the daemon on a GPU box.
//!
//! - [`Agent::run`] keeps one long-lived bidirectional gRPC session with the coordinator
//!   (connecting OUT, so nodes behind NAT work), reconnecting with exponential backoff
//!   and jitter when it drops.
//! - [`runner`] executes each assigned attempt as subprocesses (one, or one per GPU
//!   rank as [`launch`] decides) and reports what they do.
//! - [`gpus`] discovers the node's GPUs (`--gpus auto|none|0,1|fake:N`).
//! - [`contain`] keeps every process a run starts (setsid and daemons included) inside
//!   the run, in a cgroup or as a child subreaper, and kills them all when it ends.
//! - [`artifacts`] uploads the files a run declares or reports to the coordinator's
//!   artifact store when its command ends, before its end is reported.
//! - [`identity`] keeps the secret the agent's name is bound to, issued by the
//!   coordinator when the name enrolled and presented on every registration.
//!
//! Every event of an attempt gets a sequence number and stays buffered until the
//! coordinator acknowledges it (it acknowledges only what it has durably stored). After
//! a reconnect the agent registers the attempts it still holds, so a restarted
//! coordinator re-adopts them, and resends everything unacknowledged. An attempt whose
//! lease the coordinator rejects is killed and forgotten.

pub mod artifacts;
pub mod contain;
pub mod gpus;
pub mod identity;
pub mod launch;
pub mod runner;
pub mod spawn;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ladder_proto::v1 as pb;
use ladder_proto::v1::agent_service_client::AgentServiceClient;
use ladder_protocol::{
    wire, Assignment, Finish, FinishOutcome, FromAgent, Lease, LogLine, Registration, RunEvent,
    RunEventMessage, ToAgent,
};
use ladder_types::Gpu;
use rand::Rng;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tracing::{debug, info, warn};

use crate::runner::{Control, Execution, RunnerEvent};

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("invalid coordinator address {url:?}: {message}")]
    InvalidCoordinator { url: String, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The secret file of the agent's name cannot be read or written.
    #[error("{}: {message}", path.display())]
    Identity { path: PathBuf, message: String },
    /// The coordinator refused the agent's name: it is bound to a secret this agent does
    /// not have. Final until an admin forgets the name.
    #[error("the coordinator refused the agent name {name:?}: {message}")]
    NameRefused { name: String, message: String },
}

/// How an agent identifies itself and what it offers.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `http://host:port` of the coordinator.
    pub coordinator: String,
    pub name: String,
    pub slots: u32,
    /// Assignments without GPUs kept waiting beyond `slots`, each started the moment a
    /// run ends (the coordinator queues runs here only for sweeps of short runs); `None`:
    /// twice `slots` (a queue shorter than the runs the agent ends during one dispatch
    /// round trip runs dry on short runs).
    pub queue_depth: Option<u32>,
    pub labels: BTreeMap<String, String>,
    pub gpus: Vec<Gpu>,
    /// Runs execute in `work_dir/runs/<run id>/`.
    pub work_dir: PathBuf,
    /// Where the sweep's code lives on this node: `{{ladder.code_dir}}` in commands.
    pub code_dir: PathBuf,
    /// Time between SIGTERM and SIGKILL when a run is stopped.
    pub stop_grace: Duration,
    /// Time the agent's supervisor waits between its SIGTERM and SIGKILL of the agent
    /// (Slurm's KillWait, systemd's TimeoutStopSec), if known: a drain then SIGKILLs runs
    /// [`DRAIN_REPORT_MARGIN`] before it ends, so that they are reported in time.
    pub kill_wait: Option<Duration>,
    /// Size past which a run's local log file is rotated (one older part is kept).
    pub log_file_max_bytes: u64,
    /// Longest wait between two connection attempts.
    pub max_backoff: Duration,
    /// Bearer token sent with the session (an agent token of the coordinator's `--auth`
    /// file).
    pub token: Option<String>,
    /// PEM of the CA that signed the coordinator's certificate; TLS is used when this is
    /// set or the URL is `https://` (then with the system's roots).
    pub ca_pem: Option<Vec<u8>>,
    /// Tracks every process of each run (see [`contain`]); None: process groups only.
    pub containment: Option<Arc<contain::Containment>>,
    /// This name is used once (a Slurm job's agent): a drain asks the coordinator to drop
    /// the agent's record once its runs are handed back and the session ends.
    pub forget_on_exit: bool,
}

/// Time a drain keeps after its runs are SIGKILLed to report them and get the
/// acknowledgements.
pub const DRAIN_REPORT_MARGIN: Duration = Duration::from_secs(5);

impl AgentConfig {
    /// Time between SIGTERM and SIGKILL of the runs of a draining agent: the stop grace,
    /// cut to fit inside the supervisor's kill wait.
    pub fn release_grace(&self) -> Duration {
        match self.kill_wait {
            Some(kill_wait) => self
                .stop_grace
                .min(kill_wait.saturating_sub(DRAIN_REPORT_MARGIN)),
            None => self.stop_grace,
        }
    }

    pub fn new(coordinator: impl Into<String>, name: impl Into<String>, work_dir: PathBuf) -> Self {
        AgentConfig {
            coordinator: coordinator.into(),
            name: name.into(),
            slots: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            queue_depth: None,
            labels: BTreeMap::new(),
            gpus: Vec::new(),
            work_dir,
            code_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            stop_grace: Duration::from_secs(10),
            kill_wait: None,
            log_file_max_bytes: 64 << 20,
            max_backoff: Duration::from_secs(10),
            token: None,
            ca_pem: None,
            containment: None,
            forget_on_exit: false,
        }
    }
}

/// Sessions that may end while the same event is the oldest unacknowledged one of an
/// attempt. Past this many, an output event is taken for one the coordinator refuses: it
/// is replaced by a note saying so, so that one undeliverable message cannot hold an
/// attempt (and the agent's session) in a loop of reconnects and resends.
const MAX_SESSIONS_PER_EVENT: u32 = 5;

/// An attempt this agent holds: running, or finished with events not yet acknowledged.
struct HeldAttempt {
    lease: Lease,
    next_seq: u64,
    /// Sent or not, every event not yet acknowledged, in order.
    unacked: VecDeque<RunEventMessage>,
    /// Sessions that ended while the front of `unacked` was in it, unacknowledged.
    front_sessions: u32,
    /// Output bytes of each event in `unacked`, in the same order.
    unacked_bytes: VecDeque<usize>,
    /// Output bytes not yet acknowledged, shared with the runner (backpressure).
    backlog: Arc<runner::Backlog>,
    finished: bool,
    control: mpsc::UnboundedSender<Control>,
}

impl HeldAttempt {
    /// Replaces the oldest unacknowledged event, an output batch that the coordinator
    /// would not take in [`MAX_SESSIONS_PER_EVENT`] sessions, by a note in the run's log.
    fn give_up_front(&mut self, run_id: &str) {
        let Some(front) = self.unacked.front_mut() else {
            return;
        };
        let RunEvent::Output { metrics, logs, .. } = &front.event else {
            return;
        };
        let bytes = prost::Message::encoded_len(&pb::RunEvent::from(front.clone()));
        warn!(
            run_id,
            seq = front.seq,
            bytes,
            sessions = self.front_sessions,
            "the coordinator did not accept an output batch; replacing it by a note"
        );
        let text = format!(
            "ladder dropped {} log lines and {} metric points ({bytes} bytes): the coordinator did not accept them in {} sessions",
            logs.len(),
            metrics.len(),
            self.front_sessions
        );
        let time_ms = logs.first().map(|l| l.time_ms).unwrap_or_default();
        front.event = RunEvent::Output {
            metrics: Vec::new(),
            logs: vec![LogLine {
                time_ms,
                stream: "ladder".into(),
                text,
            }],
            info: Default::default(),
        };
        self.front_sessions = 0;
    }
}

/// One open session with the coordinator.
struct Connection {
    outgoing: mpsc::UnboundedSender<pb::AgentMessage>,
    incoming: tonic::Streaming<pb::CoordinatorMessage>,
}

impl Connection {
    fn send(&self, message: FromAgent) {
        let _ = self.outgoing.send(message.into());
    }
}

pub struct Agent {
    config: AgentConfig,
    held: HashMap<String, HeldAttempt>,
    runner_tx: mpsc::UnboundedSender<RunnerEvent>,
    runner_rx: mpsc::UnboundedReceiver<RunnerEvent>,
    heartbeat_interval: Duration,
    /// Shutting down gracefully: runs are being handed back.
    draining: bool,
    /// Assignments waiting for a slot, oldest first: each starts the moment one of the
    /// agent's runs ends (at most [`AgentConfig::queue_depth`] of them).
    waiting: VecDeque<Assignment>,
    /// How attempts reach the artifact service; set once a session proved the agent's
    /// name (so its secret is known).
    uploader: Option<Arc<artifacts::Uploader>>,
}

impl Agent {
    pub fn new(config: AgentConfig) -> Self {
        let (runner_tx, runner_rx) = mpsc::unbounded_channel();
        Agent {
            config,
            held: HashMap::new(),
            runner_tx,
            runner_rx,
            heartbeat_interval: Duration::from_secs(3),
            draining: false,
            waiting: VecDeque::new(),
            uploader: None,
        }
    }

    /// Serves the coordinator until `shutdown` completes; then stops every run it holds.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        let endpoint = tonic::transport::Endpoint::from_shared(self.config.coordinator.clone())
            .map_err(|e| AgentError::InvalidCoordinator {
                url: self.config.coordinator.clone(),
                message: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20));
        let endpoint = self.with_tls(endpoint)?;
        let authorization = self.authorization()?;
        std::fs::create_dir_all(&self.config.work_dir).map_err(|source| AgentError::Io {
            context: format!(
                "cannot create work directory {}",
                self.config.work_dir.display()
            ),
            source,
        })?;
        if let Some(kill_wait) = self.config.kill_wait {
            if self.config.stop_grace + DRAIN_REPORT_MARGIN > kill_wait {
                warn!(
                    stop_grace_s = self.config.stop_grace.as_secs_f64(),
                    kill_wait_s = kill_wait.as_secs_f64(),
                    release_grace_s = self.config.release_grace().as_secs_f64(),
                    "the stop grace does not fit in the supervisor's kill wait; a drain gives runs release_grace_s before SIGKILL"
                );
            }
        }
        let mut identity = identity::Identity::load(&self.config.work_dir, &self.config.name)?;
        tokio::pin!(shutdown);
        let mut shutdown_requested = false;
        // Set when the agent must stop: its runs are killed and the error returned.
        let mut fatal: Option<AgentError> = None;
        // Set once draining: when to give up waiting for runs and acknowledgements.
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        let mut connection: Option<Connection> = None;
        let mut backoff = Duration::from_millis(200);
        let mut next_connect = tokio::time::Instant::now();
        let mut heartbeat = tokio::time::interval(self.heartbeat_interval);
        loop {
            if let (Some(deadline), true) = (
                drain_deadline,
                self.held.is_empty() && self.waiting.is_empty(),
            ) {
                info!("drained; exiting");
                if let Some(Connection {
                    outgoing,
                    mut incoming,
                }) = connection.take()
                {
                    // Close this side of the session and wait for the coordinator to
                    // close its own, so that the drain reaches it even when no run was
                    // there to hand back.
                    drop(outgoing);
                    let _ = tokio::time::timeout_at(deadline, async {
                        while let Ok(Some(_)) = incoming.message().await {}
                    })
                    .await;
                }
                break;
            }
            if connection.is_none() && tokio::time::Instant::now() >= next_connect {
                match self
                    .connect(&endpoint, authorization.as_ref(), &mut identity)
                    .await
                {
                    Err(error) => {
                        fatal = Some(error);
                        break;
                    }
                    Ok(Ok(opened)) => {
                        info!(coordinator = %self.config.coordinator, "connected");
                        self.uploader = identity.secret().map(|secret| {
                            Arc::new(artifacts::Uploader {
                                endpoint: endpoint.clone(),
                                authorization: authorization.clone(),
                                agent: self.config.name.clone(),
                                secret: secret.clone(),
                            })
                        });
                        heartbeat = tokio::time::interval(self.heartbeat_interval);
                        connection = Some(opened);
                        backoff = Duration::from_millis(200);
                    }
                    Ok(Err(error)) => {
                        if matches!(
                            error.code(),
                            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                        ) {
                            warn!(reason = error.message(), "the coordinator refused this agent's token (set --token or LADDER_TOKEN to an agent token)");
                        }
                        // Exponential backoff with full jitter, so that a fleet of agents
                        // does not reconnect in lockstep after a coordinator restart.
                        let wait = rand::rng().random_range(backoff / 2..=backoff);
                        debug!(%error, wait_ms = wait.as_millis() as u64, "cannot connect to the coordinator");
                        next_connect = tokio::time::Instant::now() + wait;
                        backoff = (backoff * 2).min(self.config.max_backoff);
                    }
                }
            }
            tokio::select! {
                _ = &mut shutdown, if !shutdown_requested => {
                    shutdown_requested = true;
                    // Graceful drain: no new work, runs get SIGTERM to checkpoint and are
                    // handed back, then exit once the coordinator has acknowledged it all.
                    let mut grace = self.config.release_grace() + DRAIN_REPORT_MARGIN;
                    if let Some(kill_wait) = self.config.kill_wait {
                        grace = grace.min(kill_wait);
                    }
                    drain_deadline = Some(tokio::time::Instant::now() + grace);
                    self.draining = true;
                    info!(runs = self.held.len(), "draining: handing runs back before exit");
                    if let Some(connection) = &connection {
                        connection.send(FromAgent::Drain { forget: self.config.forget_on_exit });
                    }
                    for held in self.held.values().filter(|h| !h.finished) {
                        let _ = held.control.send(Control::Release);
                    }
                    for waiting in std::mem::take(&mut self.waiting) {
                        self.end_unstarted(
                            waiting.lease,
                            FinishOutcome::Released,
                            "released: the agent is draining".into(),
                            connection.as_ref(),
                        );
                    }
                }
                _ = async { tokio::time::sleep_until(drain_deadline.expect("guarded")).await }, if drain_deadline.is_some() => {
                    warn!(runs = self.held.len(), "drain deadline passed; exiting with runs not handed back");
                    break;
                }
                event = self.runner_rx.recv() => {
                    let event = event.expect("the agent holds a sender");
                    self.on_runner_event(event, connection.as_ref());
                }
                message = async { connection.as_mut().expect("guarded").incoming.message().await }, if connection.is_some() => {
                    match message {
                        Ok(Some(message)) => {
                            let keep = self.on_coordinator_message(message, connection.as_ref().expect("connected"));
                            if let Some(new_interval) = keep {
                                heartbeat = tokio::time::interval(new_interval);
                            }
                        }
                        Ok(None) | Err(_) => {
                            warn!("session with the coordinator ended; reconnecting");
                            connection = None;
                            for held in self.held.values_mut() {
                                if !held.unacked.is_empty() {
                                    held.front_sessions += 1;
                                }
                            }
                            next_connect = tokio::time::Instant::now() + rand::rng().random_range(Duration::ZERO..=backoff);
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    if let Some(connection) = &connection {
                        connection.send(FromAgent::Heartbeat);
                    }
                }
                _ = tokio::time::sleep_until(next_connect), if connection.is_none() => {}
            }
        }
        for held in self.held.values() {
            let _ = held.control.send(Control::Kill);
        }
        match fatal {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Adds TLS to `endpoint` when a CA is configured or the URL is `https://`.
    fn with_tls(
        &self,
        endpoint: tonic::transport::Endpoint,
    ) -> Result<tonic::transport::Endpoint, AgentError> {
        use tonic::transport::{Certificate, ClientTlsConfig};
        let https = endpoint.uri().scheme_str() == Some("https");
        let invalid = |message: String| AgentError::InvalidCoordinator {
            url: self.config.coordinator.clone(),
            message,
        };
        let tls = match &self.config.ca_pem {
            Some(_) if !https => {
                return Err(invalid(
                    "a CA is set, so the URL must be https://HOST:PORT".into(),
                ))
            }
            Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
            None if https => ClientTlsConfig::new().with_native_roots(),
            None => return Ok(endpoint),
        };
        endpoint
            .tls_config(tls)
            .map_err(|e| invalid(format!("cannot configure TLS: {e}")))
    }

    /// The `authorization` metadata value for the configured token.
    fn authorization(&self) -> Result<Option<MetadataValue<Ascii>>, AgentError> {
        let Some(token) = &self.config.token else {
            return Ok(None);
        };
        MetadataValue::try_from(format!("Bearer {}", token.trim()))
            .map(Some)
            .map_err(|_| AgentError::InvalidCoordinator {
                url: self.config.coordinator.clone(),
                message: "the token must be printable ASCII".into(),
            })
    }

    /// Opens a session and registers, presenting the name's secret; keeps the secret the
    /// coordinator issues when the registration enrolled the name. The outer error is
    /// final (the name is refused, or its secret cannot be kept); the inner one is worth
    /// retrying.
    async fn connect(
        &mut self,
        endpoint: &tonic::transport::Endpoint,
        authorization: Option<&MetadataValue<Ascii>>,
        identity: &mut identity::Identity,
    ) -> Result<Result<Connection, tonic::Status>, AgentError> {
        let channel = match endpoint.connect().await {
            Ok(channel) => channel,
            Err(error) => return Ok(Err(tonic::Status::unavailable(error.to_string()))),
        };
        let mut client = AgentServiceClient::new(channel)
            .max_decoding_message_size(ladder_limits::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(ladder_limits::MAX_MESSAGE_BYTES);
        let (outgoing, outgoing_rx) = mpsc::unbounded_channel();
        let registration = Registration {
            name: self.config.name.clone(),
            labels: self.config.labels.clone(),
            slots: self.config.slots,
            queue_depth: self
                .config
                .queue_depth
                .unwrap_or((2 * self.config.slots).min(ladder_limits::MAX_AGENT_SLOTS)),
            gpus: self.config.gpus.clone(),
            held: self
                .held
                .values()
                .map(|h| h.lease.clone())
                .chain(self.waiting.iter().map(|w| w.lease.clone()))
                .collect(),
            hostname: hostname(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            secret: identity.secret().cloned(),
        };
        let _ = outgoing.send(wire::register_message(registration));
        let mut request = tonic::Request::new(UnboundedReceiverStream::new(outgoing_rx));
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        let opened = tokio::time::timeout(Duration::from_secs(10), async {
            let mut incoming = client.session(request).await?.into_inner();
            // The coordinator answers only once the registration is durable, with
            // `Registered` first.
            let first = incoming.message().await?;
            Ok::<_, tonic::Status>((incoming, first))
        })
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(
                "session did not open in 10s",
            ))
        });
        let (incoming, first) = match opened {
            Ok((incoming, Some(first))) => (incoming, first),
            Ok((_, None)) => {
                return Ok(Err(tonic::Status::unavailable(
                    "the coordinator closed the session before registering it",
                )))
            }
            Err(status) if name_refused(&status) => {
                return Err(AgentError::NameRefused {
                    name: self.config.name.clone(),
                    message: status.message().to_string(),
                })
            }
            Err(status) => return Ok(Err(status)),
        };
        let first = match ToAgent::try_from(first) {
            Ok(first @ ToAgent::Registered { .. }) => first,
            Ok(other) => {
                return Ok(Err(tonic::Status::internal(format!(
                    "the coordinator opened the session with {other:?} instead of registering it"
                ))))
            }
            Err(error) => {
                return Ok(Err(tonic::Status::internal(format!(
                    "the coordinator's registration is invalid: {error}"
                ))))
            }
        };
        if let ToAgent::Registered {
            agent_secret: Some(secret),
            ..
        } = &first
        {
            identity.adopt(secret)?;
        }
        let connection = Connection { outgoing, incoming };
        // Sets the heartbeat interval and resends what the previous session left.
        let _ = self.handle_message(first, &connection);
        Ok(Ok(connection))
    }

    fn send_event(connection: Option<&Connection>, event: &RunEventMessage) {
        if let Some(connection) = connection {
            connection.send(FromAgent::RunEvent(event.clone()));
        }
    }

    fn on_runner_event(&mut self, event: RunnerEvent, connection: Option<&Connection>) {
        let Some(held) = self.held.get_mut(&event.run_id) else {
            return;
        };
        if held.lease.attempt != event.attempt {
            return;
        }
        let output_bytes = event.bytes;
        let kind = event.event;
        if let RunEvent::Finished(finished) = &kind {
            held.finished = true;
            info!(run_id = %event.run_id, reason = %finished.reason, "run finished");
        }
        let freed_a_slot = matches!(kind, RunEvent::Finished(_));
        let run_event = RunEventMessage {
            lease: held.lease.clone(),
            seq: held.next_seq,
            event: kind,
        };
        held.next_seq += 1;
        Self::send_event(connection, &run_event);
        held.unacked.push_back(run_event);
        held.unacked_bytes.push_back(output_bytes);
        if freed_a_slot {
            self.start_waiting();
        }
    }

    /// Runs of this agent that occupy a slot: started and not ended.
    fn running(&self) -> usize {
        self.held.values().filter(|held| !held.finished).count()
    }

    /// Starts waiting assignments while slots are free, oldest first.
    fn start_waiting(&mut self) {
        while self.running() < self.config.slots as usize {
            let Some(next) = self.waiting.pop_front() else {
                return;
            };
            self.start(next);
        }
    }

    /// Takes an assignment in: started at once when a slot is free (or when it has GPUs,
    /// which the coordinator gives only when they are free), else queued.
    fn accept(&mut self, assignment: Assignment) {
        let lease = &assignment.lease;
        ladder_timeline::mark(
            ladder_timeline::Stage::LeaseReceived,
            || ladder_timeline::attempt_key(&lease.run_id, lease.attempt),
            "",
        );
        if self.waiting.iter().any(|w| &w.lease == lease) {
            return;
        }
        if assignment.gpus.is_empty() && self.running() >= self.config.slots as usize {
            info!(run_id = %lease.run_id, waiting = self.waiting.len() + 1, "run queued until a slot frees");
            // A newer attempt of a run waiting here replaces the older one.
            self.waiting.retain(|w| w.lease.run_id != lease.run_id);
            self.waiting.push_back(assignment);
            return;
        }
        self.start(assignment);
    }

    /// Ends an attempt that never started (refused, stopped or revoked while queued,
    /// released by a drain): the attempt is held until the coordinator acknowledges its
    /// one event, which says why.
    fn end_unstarted(
        &mut self,
        lease: Lease,
        outcome: FinishOutcome,
        reason: String,
        connection: Option<&Connection>,
    ) {
        if self.held.contains_key(&lease.run_id) {
            warn!(run_id = %lease.run_id, "an attempt of this run is held already; ignored");
            return;
        }
        let (control, _) = mpsc::unbounded_channel();
        let event = RunEventMessage {
            lease: lease.clone(),
            seq: 1,
            event: RunEvent::Finished(Finish {
                outcome,
                exit_code: None,
                signal: None,
                reason,
            }),
        };
        Self::send_event(connection, &event);
        self.held.insert(
            lease.run_id.clone(),
            HeldAttempt {
                lease,
                next_seq: 2,
                unacked: VecDeque::from([event]),
                front_sessions: 0,
                unacked_bytes: VecDeque::from([0]),
                backlog: Arc::new(runner::Backlog::default()),
                finished: true,
                control,
            },
        );
    }

    /// Removes `lease` from the queue; whether it was there.
    fn unqueue(&mut self, lease: &Lease) -> bool {
        let before = self.waiting.len();
        self.waiting.retain(|w| &w.lease != lease);
        self.waiting.len() != before
    }

    /// Handles one message; returns a new heartbeat interval when the coordinator set one.
    fn on_coordinator_message(
        &mut self,
        message: pb::CoordinatorMessage,
        connection: &Connection,
    ) -> Option<Duration> {
        let assignment = wire::assignment_lease(&message);
        match ToAgent::try_from(message) {
            Ok(message) => self.handle_message(message, connection),
            Err(error) => {
                match assignment {
                    Some(lease) => self.refuse_assignment(lease, &error, connection),
                    None => warn!(%error, "invalid message from the coordinator ignored"),
                }
                None
            }
        }
    }

    /// Handles one message; returns a new heartbeat interval when the coordinator set one.
    fn handle_message(&mut self, message: ToAgent, connection: &Connection) -> Option<Duration> {
        match message {
            ToAgent::Registered {
                heartbeat_interval, ..
            } => {
                // Resend what the previous session left unacknowledged.
                for (run_id, held) in self.held.iter_mut() {
                    if held.front_sessions >= MAX_SESSIONS_PER_EVENT {
                        held.give_up_front(run_id);
                    }
                    for event in &held.unacked {
                        Self::send_event(Some(connection), event);
                    }
                }
                if self.draining {
                    connection.send(FromAgent::Drain {
                        forget: self.config.forget_on_exit,
                    });
                }
                let interval = heartbeat_interval.max(Duration::from_millis(10));
                self.heartbeat_interval = interval;
                return Some(interval);
            }
            ToAgent::Assign(assignment) => self.accept(assignment),
            ToAgent::Stop { lease, reason } => {
                if self.unqueue(&lease) {
                    info!(run_id = %lease.run_id, %reason, "stopping run before it started");
                    self.end_unstarted(
                        lease,
                        FinishOutcome::Stopped,
                        format!("stopped before it started: {reason}"),
                        Some(connection),
                    );
                    return None;
                }
                if let Some(held) = self.held.get(&lease.run_id) {
                    if held.lease == lease {
                        info!(run_id = %lease.run_id, %reason, "stopping run");
                        let _ = held.control.send(Control::Stop);
                    }
                }
            }
            ToAgent::Ack { lease, seq } => {
                if let Some(held) = self.held.get_mut(&lease.run_id) {
                    if held.lease == lease {
                        while held.unacked.front().is_some_and(|e| e.seq <= seq) {
                            held.unacked.pop_front();
                            held.front_sessions = 0;
                            let bytes = held.unacked_bytes.pop_front().unwrap_or(0);
                            held.backlog.release(bytes);
                        }
                        if held.finished && held.unacked.is_empty() {
                            self.held.remove(&lease.run_id);
                        }
                    }
                }
            }
            ToAgent::Revoke { lease, reason } => {
                // One that started already runs on (the revoke crossed its start).
                if self.unqueue(&lease) {
                    info!(run_id = %lease.run_id, %reason, "queued run given back");
                    self.end_unstarted(
                        lease,
                        FinishOutcome::Released,
                        format!("given back before it started: {reason}"),
                        Some(connection),
                    );
                }
            }
            ToAgent::Reject { lease, reason } => {
                if self.unqueue(&lease) {
                    return None;
                }
                if let Some(held) = self.held.get(&lease.run_id) {
                    if held.lease == lease {
                        warn!(run_id = %lease.run_id, attempt = lease.attempt, %reason, "lease rejected; killing the attempt");
                        let _ = held.control.send(Control::Kill);
                        self.held.remove(&lease.run_id);
                    }
                }
            }
        }
        None
    }

    /// Reports an assignment this agent cannot take in (a field it does not know, sent
    /// by a newer coordinator) as a failed attempt, so that the run is not left waiting
    /// on an agent that will never start it.
    fn refuse_assignment(
        &mut self,
        lease: Lease,
        error: &ladder_protocol::ProtocolError,
        connection: &Connection,
    ) {
        warn!(run_id = %lease.run_id, attempt = lease.attempt, %error, "cannot take the assignment in; reporting the attempt failed");
        self.end_unstarted(
            lease,
            FinishOutcome::Failed,
            format!("the agent cannot take this assignment in: {error}"),
            Some(connection),
        );
    }

    fn start(&mut self, assign: Assignment) {
        let lease = assign.lease;
        if let Some(previous) = self.held.get(&lease.run_id) {
            if previous.lease == lease {
                return;
            }
            // A newer attempt of a run we still hold: the old one is stale.
            let _ = previous.control.send(Control::Kill);
        }
        let run_dir = self
            .config
            .work_dir
            .join("runs")
            .join(sanitize(&lease.run_id));
        let mut env = assign.env;
        env.insert("LADDER_RUN_ID".into(), lease.run_id.clone());
        env.insert("LADDER_SWEEP_ID".into(), assign.sweep_id.clone());
        env.insert("LADDER_ATTEMPT".into(), lease.attempt.to_string());
        env.insert("LADDER_PARAMS".into(), assign.params_json.clone());
        env.insert("LADDER_RUN_DIR".into(), run_dir.display().to_string());
        if !self.config.gpus.is_empty() {
            let visible: Vec<String> = assign.gpus.iter().map(|g| g.to_string()).collect();
            env.insert("CUDA_VISIBLE_DEVICES".into(), visible.join(","));
        }
        // Runs sharing this machine's cores share them evenly instead of each starting a
        // thread per core (the built-in trainer, PyTorch and NumPy all honour these).
        let cores = machine_cores();
        let threads = (cores / self.config.slots.max(1) as usize)
            .max(1)
            .to_string();
        for variable in ["OMP_NUM_THREADS", "RAYON_NUM_THREADS"] {
            if std::env::var_os(variable).is_none() && !env.contains_key(variable) {
                env.insert(variable.into(), threads.clone());
            }
        }
        let placeholders = BTreeMap::from([
            (
                "ladder.code_dir",
                self.config.code_dir.display().to_string(),
            ),
            ("ladder.run_dir", run_dir.display().to_string()),
            ("ladder.run_id", lease.run_id.clone()),
            // Runs of the built-in trainer are this same binary's `train` verb.
            ("ladder.exe", own_exe().to_string()),
        ]);
        let argv = ladder_spec::space::render_agent_placeholders(&assign.argv, &placeholders);
        env.insert(
            "LADDER_CODE_DIR".into(),
            self.config.code_dir.display().to_string(),
        );
        let launch = assign.launch;
        let master_port = if assign.gpus.is_empty() {
            0
        } else {
            launch::free_port()
        };
        let ranks = launch::rank_environments(&assign.gpus, launch, master_port);
        let (control, control_rx) = mpsc::unbounded_channel();
        let backlog = Arc::new(runner::Backlog::default());
        let execution = Execution {
            agent: self.config.name.clone(),
            backlog: backlog.clone(),
            run_id: lease.run_id.clone(),
            attempt: lease.attempt,
            argv,
            env: env.into_iter().collect(),
            ranks,
            run_dir,
            stop_grace: self.config.stop_grace,
            release_grace: self.config.release_grace(),
            log_file_max_bytes: self.config.log_file_max_bytes,
            containment: self.config.containment.clone(),
            artifacts: self
                .uploader
                .clone()
                .map(|uploader| artifacts::AttemptArtifacts {
                    uploader,
                    lease: lease.clone(),
                    declared: assign.artifacts.clone(),
                }),
        };
        info!(run_id = %lease.run_id, attempt = lease.attempt, "run assigned");
        let lease_run_id = lease.run_id.clone();
        self.held.insert(
            lease.run_id.clone(),
            HeldAttempt {
                lease,
                next_seq: 1,
                unacked: VecDeque::new(),
                front_sessions: 0,
                unacked_bytes: VecDeque::new(),
                backlog: backlog.clone(),
                finished: false,
                control,
            },
        );
        if self.draining {
            let _ = self.held[&lease_run_id].control.send(Control::Release);
        }
        tokio::spawn(runner::execute(
            execution,
            self.runner_tx.clone(),
            control_rx,
        ));
    }
}

/// Whether `status` refuses this agent's name itself (see [`identity`]), rather than its
/// token or the connection.
fn name_refused(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::PermissionDenied
        && status
            .metadata()
            .contains_key(ladder_proto::AGENT_NAME_REFUSED_METADATA)
}

/// A run id as a directory name.
/// The cores this agent may use (its cgroup's CPU quota counted), read once: the
/// answer takes several file reads, and runs are started by the hundred per second.
fn machine_cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// This binary's path, for `{{ladder.exe}}` (runs of the built-in trainer), read once.
fn own_exe() -> &'static str {
    static EXE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        std::env::current_exe()
            .map(|exe| exe.display().to_string())
            .unwrap_or_else(|_| "ladder".to_string())
    })
}

fn sanitize(run_id: &str) -> String {
    run_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_drain_fits_inside_the_kill_wait(stop_grace in 0u64..200, kill_wait in proptest::option::of(5u64..200)) {
            let mut config = AgentConfig::new("http://127.0.0.1:1", "a", PathBuf::from("w"));
            config.stop_grace = Duration::from_secs(stop_grace);
            config.kill_wait = kill_wait.map(Duration::from_secs);
            let grace = config.release_grace();
            prop_assert!(grace <= config.stop_grace);
            match config.kill_wait {
                Some(kill_wait) => prop_assert!(grace + DRAIN_REPORT_MARGIN <= kill_wait),
                None => prop_assert_eq!(grace, config.stop_grace),
            }
        }
    }
}
