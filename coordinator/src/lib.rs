//! The ladder coordinator: stores sweeps and runs, hands runs to agents, and answers
//! queries, over gRPC.
//!
//! - [`service`]: thin tonic adapters for `SweepService`, `RunService`, `AgentService`.
//! - [`scheduler`]: one thread owning all mutable state; applies events (submissions,
//!   agent reports, lease expiry), places runs with [`placement`], group-commits the
//!   [`store`] and only then acknowledges.
//! - [`store`]: the durable truth behind the [`store::Store`] trait (sled).
//! - [`queries`]: read-only views over the store for listing and showing;
//!   [`history`]: run queries, the leaderboard, cards, export and watch.
//! - [`convert`]: the only mapping between `ladder.v1` messages and domain types.
//! - [`auth`]: who may call what (`--auth FILE`), checked first by every service method;
//!   [`local_token`]: the admin token of a coordinator started without `--auth`, in
//!   private files its user's clients find from the URL alone;
//!   [`tls`]: the certificate and key served with `--tls-cert/--tls-key`.
//!
//! Data flow: a submitted sweep is validated, stored, and its trials are created lazily
//! as agent slots free up; agents connect over a bidirectional stream, receive
//! assignments with leases, and report events that are stored before they are
//! acknowledged. On start the scheduler rebuilds its view from the store.

pub mod auth;
pub mod convert;
pub mod error;
pub mod history;
pub mod local_token;
pub mod model;
pub mod placement;
pub mod protocol;
pub mod queries;
pub mod scheduler;
pub mod service;
pub mod store;
pub mod tls;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use ladder_proto::v1 as pb;
use ladder_shared::types::RunStatus;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::info;

pub use error::CoordinatorError;
pub use scheduler::LeaseConfig;

use crate::queries::Queries;
use crate::scheduler::{Event, Scheduler};
use crate::service::{AgentServiceImpl, RunServiceImpl, Shared, SweepServiceImpl};
use crate::store::{SledStore, Store};

/// Accepted connections with Nagle's algorithm off: a small gRPC answer otherwise waits
/// for the client's delayed ACK (about 40 ms on Linux) before it leaves.
fn incoming_without_delay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted {
            let _ = stream.set_nodelay(true);
        }
        accepted
    })
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
}

/// A coordinator with its store open and its scheduler running, ready to serve.
pub struct Coordinator {
    shared: Arc<Shared>,
    tls: Option<tls::TlsIdentity>,
    scheduler: Option<std::thread::JoinHandle<()>>,
}

impl Coordinator {
    /// Opens the store, rebuilds state from it and starts the scheduler thread.
    pub fn open(config: CoordinatorConfig) -> Result<Self, CoordinatorError> {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&config.data_dir)?);
        let (changes, _) = broadcast::channel(1024);
        let scheduler = Scheduler::recover(store.clone(), config.lease, changes.clone())?;
        let (events, receiver) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("ladder-scheduler".into())
            .spawn(move || scheduler.run(receiver))
            .map_err(|source| CoordinatorError::Io {
                context: "failed to start the scheduler thread".into(),
                source,
            })?;
        Ok(Coordinator {
            shared: Arc::new(Shared {
                events,
                queries: Queries::new(store),
                changes,
                next_session: AtomicU64::new(1),
                auth: config.auth.map(Arc::new),
            }),
            tls: config.tls,
            scheduler: Some(handle),
        })
    }

    /// Serves gRPC on `listener` until `shutdown` completes, then closes agent sessions,
    /// commits and stops the scheduler.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), CoordinatorError> {
        let events = self.shared.events.clone();
        let shutdown = async move {
            shutdown.await;
            info!("shutting down");
            // Agent sessions are long-lived streams: end them so the server can stop.
            let _ = events.send(Event::CloseSessions);
        };
        // Both reflection versions: grpcurl speaks v1, Python's grpcio-reflection v1alpha.
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ladder_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| {
                CoordinatorError::Store(format!("cannot build the reflection service: {e}"))
            })?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ladder_proto::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| {
                CoordinatorError::Store(format!("cannot build the reflection service: {e}"))
            })?;
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<pb::sweep_service_server::SweepServiceServer<SweepServiceImpl>>()
            .await;
        health_reporter
            .set_serving::<pb::run_service_server::RunServiceServer<RunServiceImpl>>()
            .await;
        health_reporter
            .set_serving::<pb::agent_service_server::AgentServiceServer<AgentServiceImpl>>()
            .await;
        let mut builder = tonic::transport::Server::builder();
        if let Some(identity) = &self.tls {
            builder = builder.tls_config(identity.server_config()).map_err(|e| {
                CoordinatorError::InvalidArgument(format!("cannot configure TLS: {e}"))
            })?;
        }
        // Health and reflection stay open without a token: they reveal only the schema
        // and whether the services are up.
        let server = builder
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .add_service(health)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(pb::sweep_service_server::SweepServiceServer::new(
                SweepServiceImpl(self.shared.clone()),
            ))
            .add_service(pb::run_service_server::RunServiceServer::new(
                RunServiceImpl(self.shared.clone()),
            ))
            .add_service(pb::agent_service_server::AgentServiceServer::new(
                AgentServiceImpl(self.shared.clone()),
            ))
            .serve_with_incoming_shutdown(incoming_without_delay(listener), shutdown);
        let result = server
            .await
            .map_err(|e| CoordinatorError::Store(format!("server failed: {e}")));
        let _ = self.shared.events.send(Event::Shutdown);
        if let Some(handle) = self.scheduler.take() {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        result
    }
}
