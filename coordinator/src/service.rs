//! The gRPC adapters: each method converts its request, calls the scheduler (writes) or
//! [`Queries`] (reads), and maps errors through `From<CoordinatorError> for Status`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use ladder_proto::v1 as pb;
use ladder_shared::spec;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use crate::convert;
use crate::error::CoordinatorError;
use crate::protocol::{FromAgent, Registration, ToAgent};
use crate::queries::Queries;
use crate::scheduler::{Event, SweepAction};
use crate::RunStatusFilter;

/// Largest sweep file accepted.
pub const MAX_SWEEP_FILE_BYTES: usize = 1 << 20;

/// State shared by every service.
pub struct Shared {
    pub events: std_mpsc::Sender<Event>,
    pub queries: Queries,
    pub changes: broadcast::Sender<String>,
    pub next_session: AtomicU64,
}

impl Shared {
    fn send(&self, event: Event) -> Result<(), CoordinatorError> {
        self.events
            .send(event)
            .map_err(|_| CoordinatorError::ShuttingDown)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, CoordinatorError>>) -> Event,
    ) -> Result<T, CoordinatorError> {
        let (reply, answer) = oneshot::channel();
        self.send(make(reply))?;
        answer.await.map_err(|_| CoordinatorError::ShuttingDown)?
    }

    /// Runs a store read on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Queries) -> Result<T, CoordinatorError> + Send + 'static,
    ) -> Result<T, CoordinatorError> {
        let queries = self.queries.clone();
        tokio::task::spawn_blocking(move || query(&queries))
            .await
            .map_err(|e| CoordinatorError::Store(format!("query task failed: {e}")))?
    }
}

#[derive(Clone)]
pub struct SweepServiceImpl(pub Arc<Shared>);
#[derive(Clone)]
pub struct RunServiceImpl(pub Arc<Shared>);
#[derive(Clone)]
pub struct AgentServiceImpl(pub Arc<Shared>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn require_id(id: &str, what: &str) -> Result<(), CoordinatorError> {
    if id.is_empty() || id.len() > 128 {
        return Err(CoordinatorError::InvalidArgument(format!(
            "{what} must be a non-empty id"
        )));
    }
    Ok(())
}

impl SweepServiceImpl {
    async fn action(&self, sweep_id: String, action: SweepAction) -> Result<pb::Sweep, Status> {
        require_id(&sweep_id, "sweep_id")?;
        let record = self
            .0
            .ask(|reply| Event::SweepAction {
                sweep_id,
                action,
                reply,
            })
            .await?;
        Ok(self.0.read(move |q| q.sweep_with_counts(&record)).await?)
    }
}

#[tonic::async_trait]
impl pb::sweep_service_server::SweepService for SweepServiceImpl {
    async fn submit_sweep(
        &self,
        request: Request<pb::SubmitSweepRequest>,
    ) -> Result<Response<pb::SubmitSweepResponse>, Status> {
        let request = request.into_inner();
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
        let spec = spec::parse_sweep(&file_name, &request.yaml)
            .map_err(|errors| CoordinatorError::InvalidSweep(errors.to_string()))?;
        let yaml = request.yaml;
        let record = self
            .0
            .ask(|reply| Event::Submit {
                spec: Box::new(spec),
                file_name,
                yaml,
                reply,
            })
            .await?;
        let sweep = self.0.read(move |q| q.sweep_with_counts(&record)).await?;
        Ok(Response::new(pb::SubmitSweepResponse {
            sweep: Some(sweep),
        }))
    }

    async fn list_sweeps(
        &self,
        request: Request<pb::ListSweepsRequest>,
    ) -> Result<Response<pb::ListSweepsResponse>, Status> {
        let project = request.into_inner().project;
        let sweeps = self.0.read(move |q| q.sweeps(&project)).await?;
        Ok(Response::new(pb::ListSweepsResponse { sweeps }))
    }

    async fn get_sweep(
        &self,
        request: Request<pb::GetSweepRequest>,
    ) -> Result<Response<pb::GetSweepResponse>, Status> {
        let sweep_id = request.into_inner().sweep_id;
        require_id(&sweep_id, "sweep_id")?;
        let sweep = self.0.read(move |q| q.sweep(&sweep_id)).await?;
        Ok(Response::new(pb::GetSweepResponse { sweep: Some(sweep) }))
    }

    type WatchSweepStream = BoxStream<pb::WatchSweepResponse>;

    async fn watch_sweep(
        &self,
        request: Request<pb::WatchSweepRequest>,
    ) -> Result<Response<Self::WatchSweepStream>, Status> {
        let sweep_id = request.into_inner().sweep_id;
        require_id(&sweep_id, "sweep_id")?;
        let mut changes = self.0.changes.subscribe();
        let id = sweep_id.clone();
        let first = self.0.read(move |q| q.sweep(&id)).await?;
        let (tx, rx) = mpsc::channel(4);
        let shared = self.0.clone();
        tokio::spawn(async move {
            let mut snapshot = first;
            loop {
                let ended = snapshot.status == pb::SweepStatus::Completed as i32
                    || snapshot.status == pb::SweepStatus::Cancelled as i32;
                if tx
                    .send(Ok(pb::WatchSweepResponse {
                        sweep: Some(snapshot),
                    }))
                    .await
                    .is_err()
                    || ended
                {
                    return;
                }
                // Wait for a change of this sweep, then let a burst of changes settle.
                loop {
                    match changes.recv().await {
                        Ok(changed) if changed == sweep_id => break,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                let id = sweep_id.clone();
                snapshot = match shared.read(move |q| q.sweep(&id)).await {
                    Ok(snapshot) => snapshot,
                    Err(error) => {
                        let _ = tx.send(Err(error.into())).await;
                        return;
                    }
                };
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn pause_sweep(
        &self,
        request: Request<pb::PauseSweepRequest>,
    ) -> Result<Response<pb::PauseSweepResponse>, Status> {
        let sweep = self
            .action(request.into_inner().sweep_id, SweepAction::Pause)
            .await?;
        Ok(Response::new(pb::PauseSweepResponse { sweep: Some(sweep) }))
    }

    async fn resume_sweep(
        &self,
        request: Request<pb::ResumeSweepRequest>,
    ) -> Result<Response<pb::ResumeSweepResponse>, Status> {
        let sweep = self
            .action(request.into_inner().sweep_id, SweepAction::Resume)
            .await?;
        Ok(Response::new(pb::ResumeSweepResponse {
            sweep: Some(sweep),
        }))
    }

    async fn cancel_sweep(
        &self,
        request: Request<pb::CancelSweepRequest>,
    ) -> Result<Response<pb::CancelSweepResponse>, Status> {
        let sweep = self
            .action(request.into_inner().sweep_id, SweepAction::Cancel)
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
        let request = request.into_inner();
        let mut statuses = Vec::new();
        for raw in request.statuses {
            let status = pb::RunStatus::try_from(raw).map_err(|_| {
                CoordinatorError::InvalidArgument(format!("unknown run status {raw}"))
            })?;
            statuses.push(RunStatusFilter::try_from(status)?.0);
        }
        let sweep_id = request.sweep_id;
        let limit = request.limit as usize;
        let runs = self
            .0
            .read(move |q| q.runs(&sweep_id, &statuses, limit))
            .await?;
        Ok(Response::new(pb::ListRunsResponse { runs }))
    }

    async fn get_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::GetRunResponse>, Status> {
        let request = request.into_inner();
        require_id(&request.run_id, "run_id")?;
        let run_id = request.run_id;
        let tail = request.log_tail as usize;
        let response = self.0.read(move |q| q.run(&run_id, tail)).await?;
        Ok(Response::new(response))
    }
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentServiceImpl {
    type SessionStream = BoxStream<pb::CoordinatorMessage>;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
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
        let registration = Registration::try_from(register)?;
        let session = self.0.next_session.fetch_add(1, Ordering::Relaxed);
        let (outbox, outgoing) = mpsc::unbounded_channel::<ToAgent>();
        self.0.send(Event::AgentConnected {
            session,
            registration,
            outbox,
        })?;
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
        let name = request.into_inner().name;
        require_id(&name, "name")?;
        let view = self
            .0
            .ask(|reply| Event::EnableAgent { name, reply })
            .await?;
        Ok(Response::new(pb::EnableAgentResponse {
            agent: Some(convert::agent_to_pb(&view)),
        }))
    }

    async fn list_agents(
        &self,
        _request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let views = self.0.ask(|reply| Event::ListAgents { reply }).await?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: views.iter().map(convert::agent_to_pb).collect(),
        }))
    }
}
