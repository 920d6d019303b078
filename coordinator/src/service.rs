//! The gRPC adapters: each method converts its request, calls the scheduler (writes) or
//! [`Queries`] (reads), and maps errors through `From<CoordinatorError> for Status`.
//! Each method first asks `ServiceHandle::authorize` (see [`crate::auth`]) whether the caller
//! may do what it asks.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use futures::Stream;
use ladder_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tokio_stream::StreamExt;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::auth::{Action, AuthError, Authorizer, Principal};
use crate::convert;
use crate::error::CoordinatorError;
use crate::model::{GitState, RunUpdate};
use crate::protocol::{FromAgent, Registration, ToAgent};
use crate::reads::{LeaderboardQuery, Queries, RunQuery};
use crate::scheduler::{Event, SweepAction};
use crate::watch;

pub use ladder_limits::MAX_SWEEP_FILE_BYTES;

/// What every service (and every stream it spawns) holds of the coordinator: the
/// scheduler's event channel (writes), the reads, the feed of changed sweeps, access
/// control and the bookkeeping of open watches. One per coordinator, behind an `Arc`.
pub struct ServiceHandle {
    pub events: std_mpsc::Sender<Event>,
    pub queries: Queries,
    pub changes: broadcast::Sender<String>,
    pub next_session: AtomicU64,
    /// Access control; `None` when the coordinator runs with `--no-auth`.
    pub auth: Option<Arc<Authorizer>>,
    /// Open watch streams per principal name ("" without access control).
    pub watches: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// One reader per watched run, whose deltas every watcher of the run receives.
    pub(crate) feeds: crate::watch::Feeds,
    /// Reads of a whole metric series at once (a run card: `GetRun`, the first
    /// `WatchRun` message), at most [`ladder_limits::MAX_CONCURRENT_CARD_READS`] at a time: each
    /// holds the attempt's points in memory while it downsamples them.
    pub(crate) card_reads: tokio::sync::Semaphore,
}

/// One open watch stream, counted against its principal's
/// [`ladder_limits::MAX_WATCHES_PER_PRINCIPAL`] until dropped.
pub(crate) struct WatchSlot {
    shared: Arc<ServiceHandle>,
    key: String,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut watches = self.shared.watches.lock().expect("watch counts");
        if let Some(count) = watches.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                watches.remove(&self.key);
            }
        }
    }
}

/// Takes a watch slot for `principal`, or refuses when it holds the most already.
pub(crate) fn watch_slot(
    shared: &Arc<ServiceHandle>,
    principal: Option<&Principal>,
) -> Result<WatchSlot, Status> {
    let key = principal.map(|p| p.name().to_string()).unwrap_or_default();
    let mut watches = shared.watches.lock().expect("watch counts");
    let count = watches.entry(key.clone()).or_insert(0);
    if *count >= ladder_limits::MAX_WATCHES_PER_PRINCIPAL {
        return Err(Status::resource_exhausted(format!(
            "{} watch streams are open for this token already (the limit); close some first",
            ladder_limits::MAX_WATCHES_PER_PRINCIPAL
        )));
    }
    *count += 1;
    Ok(WatchSlot {
        shared: shared.clone(),
        key,
    })
}

impl ServiceHandle {
    /// Checks that the request's token may do `action`, and returns who sent it; `None`
    /// (and no check) when the coordinator runs with `--no-auth`.
    pub(crate) fn authorize(
        &self,
        metadata: &MetadataMap,
        action: Action<'_>,
    ) -> Result<Option<Principal>, AuthError> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        let principal = auth.authenticate(metadata).inspect_err(|error| {
            info!(%error, "request refused");
        })?;
        auth.authorize(&principal, action).inspect_err(|error| {
            info!(%error, "request refused");
        })?;
        Ok(Some(principal))
    }

    /// Checks that the request's token may pause, resume or cancel `sweep_id`, which
    /// depends on who owns it. The caller is authenticated before the sweep is read, so
    /// an unknown caller learns nothing about which sweeps exist.
    async fn authorize_control(
        &self,
        metadata: &MetadataMap,
        sweep_id: &str,
    ) -> Result<(), Status> {
        let Some(auth) = &self.auth else {
            return Ok(());
        };
        let principal = auth.authenticate(metadata)?;
        let id = sweep_id.to_string();
        let owner = self.read(move |q| q.sweep_owner(&id)).await?;
        auth.authorize(&principal, Action::ControlSweep { owner: &owner })?;
        Ok(())
    }

    pub(crate) fn send(&self, event: Event) -> Result<(), CoordinatorError> {
        self.events
            .send(event)
            .map_err(|_| CoordinatorError::ShuttingDown)
    }

    pub(crate) async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, CoordinatorError>>) -> Event,
    ) -> Result<T, CoordinatorError> {
        let (reply, answer) = oneshot::channel();
        self.send(make(reply))?;
        answer.await.map_err(|_| CoordinatorError::ShuttingDown)?
    }

    /// Runs a store read on a blocking thread.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Queries) -> Result<T, CoordinatorError> + Send + 'static,
    ) -> Result<T, CoordinatorError> {
        let queries = self.queries.clone();
        tokio::task::spawn_blocking(move || query(&queries)).await?
    }
}

#[derive(Clone)]
pub struct SweepServiceImpl(pub Arc<ServiceHandle>);
#[derive(Clone)]
pub struct RunServiceImpl(pub Arc<ServiceHandle>);
#[derive(Clone)]
pub struct AgentServiceImpl(pub Arc<ServiceHandle>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl SweepServiceImpl {
    async fn action(
        &self,
        metadata: &MetadataMap,
        sweep_id: String,
        action: SweepAction,
    ) -> Result<pb::Sweep, Status> {
        convert::require_id(&sweep_id, "sweep_id")?;
        self.0.authorize_control(metadata, &sweep_id).await?;
        let record = self
            .0
            .ask(|reply| Event::SweepAction {
                sweep_id,
                action,
                reply,
            })
            .await?;
        let view = self.0.read(move |q| q.sweep_with_counts(record)).await?;
        Ok(convert::sweep_to_pb(&view, true))
    }
}

#[tonic::async_trait]
impl pb::sweep_service_server::SweepService for SweepServiceImpl {
    async fn submit_sweep(
        &self,
        request: Request<pb::SubmitSweepRequest>,
    ) -> Result<Response<pb::SubmitSweepResponse>, Status> {
        let principal = self.0.authorize(request.metadata(), Action::Submit)?;
        let request = request.into_inner();
        // With --auth the token says who submits; without, the client's word is taken,
        // also from the holder of a local coordinator's admin token (its owner, who
        // may label sweeps as anyone's), defaulting to that token's name.
        let local_token = self.0.auth.as_ref().is_some_and(|auth| auth.is_local());
        let owner = match principal {
            Some(principal) if local_token => {
                let declared = convert::declared_owner(&request.owner)?;
                if declared.is_empty() {
                    principal.name().to_string()
                } else {
                    declared
                }
            }
            Some(principal) => principal.name().to_string(),
            None => convert::declared_owner(&request.owner)?,
        };
        if request.yaml.len() > MAX_SWEEP_FILE_BYTES {
            return Err(CoordinatorError::InvalidSweep(format!(
                "{}: sweep file is {} bytes; the limit is {MAX_SWEEP_FILE_BYTES}",
                request.file_name,
                request.yaml.len()
            ))
            .into());
        }
        let file_name = if request.file_name.is_empty() {
            "sweep.yaml".to_string()
        } else {
            request.file_name
        };
        let spec = ladder_spec::parse_sweep(&file_name, &request.yaml)
            .map_err(|errors| CoordinatorError::InvalidSweep(errors.to_string()))?;
        let yaml = request.yaml;
        let git = GitState {
            commit: request.git_commit.chars().take(128).collect(),
            dirty: request.git_dirty,
        };
        let record = self
            .0
            .ask(|reply| Event::Submit {
                spec: Box::new(spec),
                file_name,
                yaml,
                owner,
                git,
                reply,
            })
            .await?;
        let view = self.0.read(move |q| q.sweep_with_counts(record)).await?;
        Ok(Response::new(pb::SubmitSweepResponse {
            sweep: Some(convert::sweep_to_pb(&view, true)),
        }))
    }

    async fn list_sweeps(
        &self,
        request: Request<pb::ListSweepsRequest>,
    ) -> Result<Response<pb::ListSweepsResponse>, Status> {
        self.0.authorize(request.metadata(), Action::Read)?;
        let request = request.into_inner();
        let size = convert::page_size(
            request.page_size,
            ladder_limits::DEFAULT_PAGE_SIZE,
            ladder_limits::MAX_PAGE_SIZE,
        )?;
        convert::check_cursor(&request.cursor)?;
        convert::check_len("project", &request.project, ladder_limits::MAX_ID_BYTES)?;
        let (sweeps, next_cursor) = self
            .0
            .read(move |q| q.sweeps_page(&request.project, &request.cursor, size))
            .await?;
        Ok(Response::new(pb::ListSweepsResponse {
            sweeps: sweeps
                .iter()
                .map(|view| convert::sweep_to_pb(view, false))
                .collect(),
            next_cursor: next_cursor.unwrap_or_default(),
        }))
    }

    async fn get_sweep(
        &self,
        request: Request<pb::GetSweepRequest>,
    ) -> Result<Response<pb::GetSweepResponse>, Status> {
        self.0.authorize(request.metadata(), Action::Read)?;
        let sweep_id = request.into_inner().sweep_id;
        convert::require_id(&sweep_id, "sweep_id")?;
        let view = self.0.read(move |q| q.sweep(&sweep_id)).await?;
        Ok(Response::new(pb::GetSweepResponse {
            sweep: Some(convert::sweep_to_pb(&view, true)),
        }))
    }

    type WatchSweepStream = BoxStream<pb::WatchSweepResponse>;

    async fn watch_sweep(
        &self,
        request: Request<pb::WatchSweepRequest>,
    ) -> Result<Response<Self::WatchSweepStream>, Status> {
        let principal = self.0.authorize(request.metadata(), Action::Read)?;
        let sweep_id = request.into_inner().sweep_id;
        convert::require_id(&sweep_id, "sweep_id")?;
        let slot = watch_slot(&self.0, principal.as_ref())?;
        let changes = self.0.changes.subscribe();
        let id = sweep_id.clone();
        let first = self.0.read(move |q| q.sweep(&id)).await?;
        let (tx, rx) = mpsc::channel(4);
        watch::spawn_sweep_watch(self.0.clone(), sweep_id, first, changes, tx, slot);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn pause_sweep(
        &self,
        request: Request<pb::PauseSweepRequest>,
    ) -> Result<Response<pb::PauseSweepResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let sweep = self
            .action(&metadata, request.sweep_id, SweepAction::Pause)
            .await?;
        Ok(Response::new(pb::PauseSweepResponse { sweep: Some(sweep) }))
    }

    async fn resume_sweep(
        &self,
        request: Request<pb::ResumeSweepRequest>,
    ) -> Result<Response<pb::ResumeSweepResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let sweep = self
            .action(&metadata, request.sweep_id, SweepAction::Resume)
            .await?;
        Ok(Response::new(pb::ResumeSweepResponse {
            sweep: Some(sweep),
        }))
    }

    async fn cancel_sweep(
        &self,
        request: Request<pb::CancelSweepRequest>,
    ) -> Result<Response<pb::CancelSweepResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let sweep = self
            .action(&metadata, request.sweep_id, SweepAction::Cancel)
            .await?;
        Ok(Response::new(pb::CancelSweepResponse {
            sweep: Some(sweep),
        }))
    }
}

#[tonic::async_trait]
impl pb::run_service_server::RunService for RunServiceImpl {
    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        self.0.authorize(request.metadata(), Action::Read)?;
        let query = RunQuery::parse(request.get_ref())?;
        let page = self.0.read(move |q| q.query_runs(&query)).await?;
        Ok(Response::new(pb::ListRunsResponse {
            runs: page.runs.iter().map(convert::run_to_pb).collect(),
            next_cursor: page.next_cursor.unwrap_or_default(),
        }))
    }

    async fn get_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::GetRunResponse>, Status> {
        self.0.authorize(request.metadata(), Action::Read)?;
        let request = request.into_inner();
        convert::require_id(&request.run_id, "run_id")?;
        let run_id = request.run_id;
        let tail = request.log_tail as usize;
        let _permit = self.0.card_reads.acquire().await.expect("never closed");
        let card = self.0.read(move |q| q.run(&run_id, tail)).await?;
        Ok(Response::new(convert::run_card_to_pb(card)))
    }

    async fn leaderboard(
        &self,
        request: Request<pb::LeaderboardRequest>,
    ) -> Result<Response<pb::LeaderboardResponse>, Status> {
        self.0.authorize(request.metadata(), Action::Read)?;
        let query = LeaderboardQuery::try_from(request.into_inner())?;
        let board = self.0.read(move |q| q.leaderboard(&query)).await?;
        Ok(Response::new(convert::leaderboard_to_pb(board)))
    }

    async fn update_run(
        &self,
        request: Request<pb::UpdateRunRequest>,
    ) -> Result<Response<pb::UpdateRunResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let mut update = RunUpdate::try_from(request)?;
        // Annotating a run is for the owner of its sweep or an admin; the caller is
        // authenticated before the run is read, so an unknown caller learns nothing.
        if let Some(auth) = &self.0.auth {
            let principal = auth.authenticate(&metadata)?;
            let run_id = update.run_id.clone();
            let owner = self.0.read(move |q| q.run_owner(&run_id)).await?;
            auth.authorize(&principal, Action::UpdateRun { owner: &owner })?;
            update.author = principal.name().to_string();
            update.admin = principal.is_admin();
        }
        let record = self
            .0
            .ask(|reply| Event::UpdateRun { update, reply })
            .await?;
        Ok(Response::new(pb::UpdateRunResponse {
            run: Some(convert::run_to_pb(&record)),
        }))
    }

    type WatchRunStream = BoxStream<pb::WatchRunResponse>;

    async fn watch_run(
        &self,
        request: Request<pb::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let principal = self.0.authorize(request.metadata(), Action::Read)?;
        let request = request.into_inner();
        convert::require_id(&request.run_id, "run_id")?;
        let slot = watch_slot(&self.0, principal.as_ref())?;
        let (tx, rx) = mpsc::channel(ladder_limits::WATCH_STREAM_MESSAGES);
        watch::spawn_watch(self.0.clone(), request.run_id, request.only_new, tx, slot);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_metric_points(
        &self,
        request: Request<pb::ListMetricPointsRequest>,
    ) -> Result<Response<pb::ListMetricPointsResponse>, Status> {
        self.0.authorize(request.metadata(), Action::Read)?;
        let request = request.into_inner();
        convert::require_id(&request.run_id, "run_id")?;
        convert::check_cursor(&request.cursor)?;
        let size = convert::page_size(
            request.page_size,
            ladder_limits::MAX_POINTS_PAGE_SIZE,
            ladder_limits::MAX_POINTS_PAGE_SIZE,
        )?;
        let page = self
            .0
            .read(move |q| q.metric_points(&request.run_id, request.attempt, &request.cursor, size))
            .await?;
        Ok(Response::new(convert::points_page_to_pb(page)))
    }

    type ExportRunsStream = BoxStream<pb::Run>;

    async fn export_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<Self::ExportRunsStream>, Status> {
        self.0.authorize(request.metadata(), Action::Read)?;
        let query = RunQuery::parse(request.get_ref())?;
        let (tx, rx) = mpsc::channel(256);
        watch::spawn_export(self.0.clone(), query, tx);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentServiceImpl {
    type SessionStream = BoxStream<pb::CoordinatorMessage>;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        self.0.authorize(request.metadata(), Action::AgentSession)?;
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the session closed before register"))?;
        let Some(pb::agent_message::Kind::Register(register)) = first.kind else {
            return Err(Status::invalid_argument(
                "the first message of a session must be register",
            ));
        };
        let registration = Registration::try_from(register).map_err(CoordinatorError::from)?;
        let session = self.0.next_session.fetch_add(1, Ordering::Relaxed);
        let (outbox, outgoing) = mpsc::unbounded_channel::<ToAgent>();
        // Answered once the registration is durable, or refused when the name is bound to
        // a secret this session did not present (see `identity`).
        self.0
            .ask(|reply| Event::AgentConnected {
                session,
                registration,
                outbox,
                reply,
            })
            .await?;
        let shared = self.0.clone();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(message)) => match FromAgent::try_from(message) {
                        Ok(message) => {
                            if shared
                                .send(Event::AgentMessage { session, message })
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(error) => warn!(session, %error, "invalid agent message ignored"),
                    },
                    Ok(None) => break,
                    Err(status) => {
                        debug!(session, %status, "agent stream ended");
                        break;
                    }
                }
            }
            let _ = shared.send(Event::AgentDisconnected { session });
        });
        let stream =
            UnboundedReceiverStream::new(outgoing).map(|m| Ok(pb::CoordinatorMessage::from(m)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn enable_agent(
        &self,
        request: Request<pb::EnableAgentRequest>,
    ) -> Result<Response<pb::EnableAgentResponse>, Status> {
        self.0.authorize(request.metadata(), Action::EnableAgent)?;
        let name = request.into_inner().name;
        convert::require_id(&name, "name")?;
        let view = self
            .0
            .ask(|reply| Event::EnableAgent { name, reply })
            .await?;
        Ok(Response::new(pb::EnableAgentResponse {
            agent: Some(convert::agent_to_pb(&view)),
        }))
    }

    async fn forget_agent(
        &self,
        request: Request<pb::ForgetAgentRequest>,
    ) -> Result<Response<pb::ForgetAgentResponse>, Status> {
        self.0.authorize(request.metadata(), Action::ForgetAgent)?;
        let pb::ForgetAgentRequest { name, force } = request.into_inner();
        convert::require_id(&name, "name")?;
        let view = self
            .0
            .ask(|reply| Event::ForgetAgent { name, force, reply })
            .await?;
        Ok(Response::new(pb::ForgetAgentResponse {
            agent: Some(convert::agent_to_pb(&view)),
        }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.0.authorize(request.metadata(), Action::Read)?;
        let request = request.into_inner();
        let limit = convert::page_size(
            request.page_size,
            ladder_limits::DEFAULT_PAGE_SIZE,
            ladder_limits::MAX_PAGE_SIZE,
        )?;
        convert::check_cursor(&request.cursor)?;
        let after = request.cursor;
        let (views, more) = self
            .0
            .ask(|reply| Event::ListAgents {
                after,
                limit,
                reply,
            })
            .await?;
        let next_cursor = match (more, views.last()) {
            (true, Some(last)) => last.record.name.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListAgentsResponse {
            agents: views.iter().map(convert::agent_to_pb).collect(),
            next_cursor,
        }))
    }
}
