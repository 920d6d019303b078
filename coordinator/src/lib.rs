//! The ladder coordinator: stores sweeps and runs, hands runs to agents, and answers
//! queries, over gRPC.
//!
//! - [`service`]: thin tonic adapters for `SweepService`, `RunService`, `AgentService`.
//! - [`scheduler`]: one thread owning all mutable state; applies events (submissions,
//!   agent reports, lease expiry), places runs with [`placement`], group-commits the
//!   [`store`] and only then acknowledges.
//! - [`store`]: the durable truth behind the [`store::Store`] trait (sled).
//! - [`reads`]: every read-only query over the store (sweeps, run cards, metric points,
//!   run queries and the leaderboard); [`watch`]: the server streams (watch a sweep or
//!   a run, export), each waiting for changes in one helper.
//! - [`convert`]: the mapping between the client services' messages and domain types,
//!   and the checks of what a request asks for; the agent protocol's is
//!   [`protocol`] (`ladder_protocol::wire`).
//! - [`artifacts`]: the content-addressed artifact store (`--artifacts`, by default the
//!   data directory's `artifacts/`) behind a backend trait; [`artifact_service`]: the
//!   `ArtifactService` adapter (uploads from agents under their leases, listings and
//!   downloads for readers).
//! - [`auth`]: who may call what (`--auth FILE`), checked first by every service method;
//!   [`identity`]: an agent's name is bound to the secret issued when it enrolled;
//!   [`local_token`]: the admin token of a coordinator started without `--auth`, in
//!   private files its user's clients find from the URL alone;
//!   [`tls`]: the certificate and key served with `--tls-cert/--tls-key`.
//! - [`web`]: the web pages and their JSON API (`/api/v1`), served on the same listener
//!   over HTTP/1.1 beside gRPC, with the same TLS and tokens.
//!
//! Data flow: a submitted sweep is validated, stored, and its trials are created lazily
//! as agent slots free up; agents connect over a bidirectional stream, receive
//! assignments with leases, and report events that are stored before they are
//! acknowledged. On start the scheduler rebuilds its view from the store.

pub mod artifact_service;
pub mod artifacts;
pub mod auth;
pub mod convert;
pub mod downsample;
pub mod error;
pub mod identity;
pub mod listener;
pub mod local_token;
pub mod model;
pub mod placement;
pub mod protocol;
pub mod reads;
pub mod scheduler;
pub mod service;
pub mod store;
pub mod tls;
pub mod watch;
pub mod web;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use ladder_limits::MAX_MESSAGE_BYTES;
use ladder_proto::v1 as pb;
use ladder_types::RunStatus;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tracing::info;

pub use error::CoordinatorError;
pub use scheduler::LeaseConfig;

use crate::artifact_service::ArtifactServiceImpl;
use crate::reads::Queries;
use crate::scheduler::{Event, Scheduler};
use crate::service::{AgentServiceImpl, RunServiceImpl, ServiceHandle, SweepServiceImpl};
use crate::store::{SledStore, Store};

/// How many connections to keep open at once: [`ladder_limits::MAX_CONNECTIONS`],
/// or fewer when the file descriptor limit is lower. Raises the soft descriptor limit to
/// the hard one first, and keeps 256 descriptors for the store, logs and runs.
fn connection_budget() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct they are given.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 256;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        limit.rlim_cur
    };
    let available = usize::try_from(soft)
        .unwrap_or(usize::MAX)
        .saturating_sub(256);
    available.clamp(16, ladder_limits::MAX_CONNECTIONS)
}

async fn set_services_not_serving(reporter: &tonic_health::server::HealthReporter) {
    reporter
        .set_not_serving::<pb::sweep_service_server::SweepServiceServer<SweepServiceImpl>>()
        .await;
    reporter
        .set_not_serving::<pb::run_service_server::RunServiceServer<RunServiceImpl>>()
        .await;
    reporter
        .set_not_serving::<pb::agent_service_server::AgentServiceServer<AgentServiceImpl>>()
        .await;
    reporter
        .set_not_serving::<pb::artifact_service_server::ArtifactServiceServer<ArtifactServiceImpl>>(
        )
        .await;
}

/// A run status used as a query filter.
pub struct RunStatusFilter(pub RunStatus);

/// Where the coordinator keeps its data and how it times agents.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub data_dir: PathBuf,
    pub lease: LeaseConfig,
    /// Who may call what: an auth file's rules, or [`auth::Authorizer::local`]'s one
    /// admin token; `None` serves every request (`--no-auth`, loopback only).
    pub auth: Option<auth::Authorizer>,
    /// Serve TLS with this certificate; `None` serves plain HTTP/2.
    pub tls: Option<tls::TlsIdentity>,
    /// Where run artifacts are kept (`--artifacts`); `None`: `artifacts/` in `data_dir`.
    pub artifacts: Option<artifacts::ArtifactLocation>,
}

/// A coordinator with its store open and its scheduler running, ready to serve.
pub struct Coordinator {
    shared: Arc<ServiceHandle>,
    artifacts: artifacts::ArtifactStore,
    tls: Option<tls::TlsIdentity>,
    scheduler: Option<std::thread::JoinHandle<Option<String>>>,
    /// Completes when the scheduler thread ends, with why when the store failed.
    scheduler_stopped: Option<tokio::sync::oneshot::Receiver<Option<String>>>,
}

impl Coordinator {
    /// Opens the store, rebuilds state from it and starts the scheduler thread.
    pub fn open(config: CoordinatorConfig) -> Result<Self, CoordinatorError> {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&config.data_dir)?);
        let artifact_location = config
            .artifacts
            .clone()
            .unwrap_or_else(|| artifacts::ArtifactLocation::in_data_dir(&config.data_dir));
        let artifacts = artifacts::ArtifactStore::open(&artifact_location)?;
        info!(location = ?artifact_location, "artifact store open");
        let (changes, _) = broadcast::channel(1024);
        let scheduler = Scheduler::recover(store.clone(), config.lease, changes.clone())?;
        let (events, receiver) = std::sync::mpsc::channel();
        let (stopped, scheduler_stopped) = tokio::sync::oneshot::channel();
        let handle = std::thread::Builder::new()
            .name("ladder-scheduler".into())
            .spawn(move || {
                let failure = scheduler.run(receiver);
                let _ = stopped.send(failure.clone());
                failure
            })
            .map_err(|source| CoordinatorError::Io {
                context: "failed to start the scheduler thread".into(),
                source,
            })?;
        Ok(Coordinator {
            shared: Arc::new(ServiceHandle {
                events,
                queries: Queries::new(store),
                changes,
                next_session: AtomicU64::new(1),
                watches: Default::default(),
                feeds: Default::default(),
                card_reads: tokio::sync::Semaphore::new(ladder_limits::MAX_CONCURRENT_CARD_READS),
                auth: config.auth.map(Arc::new),
            }),
            artifacts,
            tls: config.tls,
            scheduler: Some(handle),
            scheduler_stopped: Some(scheduler_stopped),
        })
    }

    /// Serves gRPC on `listener` until `shutdown` completes, then closes agent sessions,
    /// commits and stops the scheduler.
    ///
    /// When a store write fails, the scheduler stops acknowledging anything, health turns
    /// NOT_SERVING, the server stops and this returns the store's error: the in-memory
    /// view may be ahead of the store, so the process should exit and be restarted by its
    /// supervisor, which rebuilds the view from what is stored (with sled's errors, such
    /// as a full disk, sticky until the store is reopened, this is also how the
    /// coordinator recovers once space is freed).
    pub async fn serve(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), CoordinatorError> {
        let events = self.shared.events.clone();
        let scheduler_stopped = self.scheduler_stopped.take();
        let (health_reporter, health) = tonic_health::server::health_reporter();
        let reporter = health_reporter.clone();
        let shutdown = async move {
            let store_failed = async move {
                match scheduler_stopped {
                    Some(stopped) => match stopped.await {
                        Ok(Some(failure)) => failure,
                        _ => std::future::pending().await,
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown => info!("shutting down"),
                failure = store_failed => {
                    tracing::error!(%failure, "the store failed; stopping");
                    reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                    set_services_not_serving(&reporter).await;
                }
            }
            // Agent sessions are long-lived streams: end them so the server can stop.
            let _ = events.send(Event::CloseSessions);
        };
        // Both reflection versions: grpcurl speaks v1, Python's grpcio-reflection v1alpha.
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ladder_proto::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ladder_proto::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        health_reporter
            .set_serving::<pb::sweep_service_server::SweepServiceServer<SweepServiceImpl>>()
            .await;
        health_reporter
            .set_serving::<pb::run_service_server::RunServiceServer<RunServiceImpl>>()
            .await;
        health_reporter
            .set_serving::<pb::agent_service_server::AgentServiceServer<AgentServiceImpl>>()
            .await;
        health_reporter
            .set_serving::<pb::artifact_service_server::ArtifactServiceServer<ArtifactServiceImpl>>(
            )
            .await;
        let mut builder = tonic::transport::Server::builder();
        if let Some(identity) = &self.tls {
            builder = builder.tls_config(identity.server_config()).map_err(|e| {
                CoordinatorError::InvalidArgument(format!("cannot configure TLS: {e}"))
            })?;
        }
        // Health and reflection stay open without a token: they reveal only the schema
        // and whether the services are up.
        let max_connections = connection_budget();
        info!(max_connections, "accepting connections");
        // gRPC services are routed by name; every other request (HTTP/1.1 or HTTP/2) goes
        // to the web pages and their JSON API.
        let routes =
            tonic::service::Routes::from(web::router(self.shared.clone(), self.tls.is_some()))
                .add_service(health)
                .add_service(reflection)
                .add_service(reflection_alpha)
                .add_service(
                    pb::sweep_service_server::SweepServiceServer::new(SweepServiceImpl(
                        self.shared.clone(),
                    ))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
                )
                .add_service(
                    pb::run_service_server::RunServiceServer::new(RunServiceImpl(
                        self.shared.clone(),
                    ))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
                )
                .add_service(
                    pb::agent_service_server::AgentServiceServer::new(AgentServiceImpl(
                        self.shared.clone(),
                    ))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
                )
                .add_service(
                    pb::artifact_service_server::ArtifactServiceServer::new(ArtifactServiceImpl {
                        shared: self.shared.clone(),
                        store: self.artifacts.clone(),
                    })
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
                );
        let server = builder
            .accept_http1(true)
            .http2_keepalive_interval(Some(ladder_limits::KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(ladder_limits::KEEPALIVE_TIMEOUT))
            .tcp_keepalive(Some(Duration::from_secs(60)))
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                listener::guarded(listener, max_connections, ladder_limits::HANDSHAKE_TIMEOUT),
                shutdown,
            );
        let result = server.await.map_err(CoordinatorError::from);
        let _ = self.shared.events.send(Event::Shutdown);
        let mut failure = None;
        if let Some(handle) = self.scheduler.take() {
            if let Ok(Ok(Some(stopped))) = tokio::task::spawn_blocking(move || handle.join()).await
            {
                failure = Some(stopped);
            }
        }
        if let Some(failure) = failure {
            let failure = failure.strip_prefix("store error: ").unwrap_or(&failure);
            return Err(CoordinatorError::Store(format!(
                "{failure}; the coordinator stopped without acknowledging anything unstored. \
                 Fix the cause (a full disk: free space) and start it again: it resumes from what is stored"
            )));
        }
        result
    }
}
