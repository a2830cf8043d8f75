//! Settle's coordinator: it keeps the global transaction log, decides commit or abort, and
//! drives Confirm or Cancel on every branch until each has succeeded, across crashes of any
//! process including its own.
//!
//! The pieces, from the wire down:
//! - [`grpc`]: the `settle.v1` services, the mapping of errors to status codes, the Admin
//!   token check;
//! - [`access`]: TLS, who callers are, who may register which participant, where the
//!   coordinator may listen;
//! - [`engine`]: both modes on one shared [`context`], and who resumes what;
//! - [`tcc`]: TCC mode — validation, decisions, rounds of phase two;
//! - [`saga`]: saga mode — forward steps in order, compensation in reverse;
//! - [`admin`]: what operators may do to transactions, audited;
//! - [`admission`]: whether a new transaction may start now (limits on load);
//! - [`recovery`]: the loop that claims due work (deadlines, retries, expired leases);
//! - [`participants`]: every call to a participant, and the directory of their endpoints;
//! - [`metrics`]: what the coordinator exports to Prometheus;
//! - [`store`]: the durable log in SQLite or PostgreSQL;
//! - [`error`]: why a request was refused;
//! - [`retry`], [`validate`], [`id`], [`model`]: policy, input rules and limits, gids,
//!   vocabulary.
//!
//! [`Coordinator`] ties them together; the `settled` binary is a thin shell around it.

#![warn(missing_docs)]

pub mod access;
pub mod admin;
pub mod admission;
pub mod context;
pub mod engine;
pub mod error;
pub mod grpc;
pub mod id;
pub mod message;
pub mod metrics;
pub mod model;
pub mod participants;
pub mod recovery;
pub mod retry;
pub mod saga;
pub mod store;
pub mod tcc;
pub mod validate;

use std::{future::Future, net::SocketAddr, time::Duration};

use settle_proto::v1::{admin_server::AdminServer, coordinator_server::CoordinatorServer};
use settle_security::Secret;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::{info, warn};

pub use access::Security;

use crate::{
    admin::Admin,
    admission::{Admission, AdmissionConfig},
    context::{Context, Settings},
    engine::Engine,
    metrics::Metrics,
    recovery::{RecoveryConfig, RecoveryLoop},
    retry::RetryPolicy,
    store::Store,
};

pub use validate::Limits;

/// Everything a coordinator needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// `sqlite://PATH` (created if missing) or `postgres://…`.
    pub database: String,
    /// PostgreSQL pool size; round records get half as many more and group commit three
    /// (SQLite always uses one connection).
    pub max_connections: u32,
    /// Participants known from start-up: (name, endpoint).
    pub participants: Vec<(String, String)>,
    /// Input limits.
    pub limits: Limits,
    /// Phase-two retry policy.
    pub retry: RetryPolicy,
    /// Timeout of one Confirm/Cancel call.
    pub call_timeout: Duration,
    /// How long a decision or claim owns a transaction; at least twice `call_timeout`.
    pub lease: Duration,
    /// Recovery loop settings.
    pub recovery: RecoveryConfig,
    /// TLS, callers' credentials, registration grants and the Admin token. Without TLS and
    /// authentication the coordinator serves on loopback only (unless `insecure`).
    pub security: Security,
    /// Where `/metrics` is served (port 0 picks one); `None` serves none.
    pub metrics_listen: Option<SocketAddr>,
    /// How often the gauges of unfinished work are read from the database.
    pub gauges_every: Duration,
    /// Limits on new transactions.
    pub admission: AdmissionConfig,
    /// Most calls in flight to one participant at once; `None` is no limit.
    pub participant_concurrency: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database: "sqlite://settle.db".to_owned(),
            max_connections: 16,
            participants: Vec::new(),
            limits: Limits::default(),
            retry: RetryPolicy::default(),
            call_timeout: Duration::from_secs(5),
            lease: Duration::from_secs(30),
            recovery: RecoveryConfig::default(),
            security: Security::default(),
            metrics_listen: None,
            gauges_every: Duration::from_secs(5),
            admission: AdmissionConfig::default(),
            participant_concurrency: Some(64),
        }
    }
}

/// Why a coordinator could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Start-up configuration was refused.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Binding or reading the listener failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A coordinator with its store open, ready to serve.
#[derive(Debug)]
pub struct Coordinator {
    engine: Engine,
    recovery: RecoveryConfig,
    security: Security,
    metrics: Metrics,
    metrics_listener: Option<TcpListener>,
    gauges_every: Duration,
}

impl Coordinator {
    /// Opens the store (applying migrations) and records the configured participants.
    pub async fn open(config: Config) -> Result<Coordinator, Error> {
        if config.lease < config.call_timeout * 2 {
            return Err(Error::Config(format!(
                "the lease ({:?}) must be at least twice the call timeout ({:?})",
                config.lease, config.call_timeout
            )));
        }
        if let Some(token) = &config.security.admin_token {
            check_admin_token(token.expose())?;
        }
        if config.participant_concurrency == Some(0) {
            return Err(Error::Config(
                "--participant-concurrency must be at least 1".to_owned(),
            ));
        }
        let admission = Admission::new(config.admission).map_err(Error::Config)?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let metrics = Metrics::new();
        let store = Store::open_with(
            &config.database,
            store::Options {
                max_connections: config.max_connections,
                group_commit: true,
                batches: metrics.batches(),
            },
        )
        .await?;
        let engine = Engine::new(Context::new(
            store,
            Settings {
                limits: config.limits,
                retry: config.retry,
                call_timeout: config.call_timeout,
                lease: config.lease,
                participant_concurrency: config.participant_concurrency,
                participant_tls: config.security.participant_tls.clone(),
            },
            admission,
            metrics.clone(),
            instance_id(),
        ));
        for (name, endpoint) in &config.participants {
            engine
                .register_participant(name, endpoint, None)
                .await
                .map_err(|e| Error::Config(format!("participant {name}={endpoint}: {e}")))?;
        }
        Ok(Coordinator {
            engine,
            recovery: config.recovery,
            security: config.security,
            metrics,
            metrics_listener,
            gauges_every: config.gauges_every,
        })
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The engine, for in-process use.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Serves gRPC (Coordinator, Admin, health, reflection) on `listener` and runs the
    /// recovery loop until `shutdown` completes; then stops claiming work and releases this
    /// instance's leases so that the next start (or another instance) resumes at once.
    /// Refuses to serve beyond loopback unprotected ([`Security::check_exposure`]).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let addr = listener.local_addr()?;
        self.security
            .check_exposure(addr)
            .map_err(Error::Config)?
            .warn("settled", addr);
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<CoordinatorServer<grpc::CoordinatorService>>()
            .await;
        health
            .set_serving::<AdminServer<grpc::AdminService>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(settle_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| Error::Config(format!("reflection: {e}")))?;

        let (stop_recovery, stopped) = watch::channel(false);
        let gauges = tokio::spawn(metrics::watch_store(
            self.metrics.clone(),
            self.engine.store().clone(),
            self.engine.context().admission().clone(),
            self.gauges_every,
            stopped.clone(),
        ));
        let exporter = self.metrics_listener.map(|listener| {
            let mut stopped = stopped.clone();
            tokio::spawn(settle_telemetry::serve(
                listener,
                self.metrics.registry(),
                async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                },
            ))
        });
        let recovery =
            tokio::spawn(RecoveryLoop::new(self.engine.clone(), self.recovery).run(stopped));

        let served = tonic::transport::Server::builder()
            .layer(grpc::MetricsLayer::new(self.metrics.clone()))
            .layer(grpc::trace_layer())
            .add_service(health_service)
            .add_service(reflection)
            .add_service(CoordinatorServer::with_interceptor(
                grpc::CoordinatorService::new(self.engine.clone(), self.security.clone()),
                self.security.authenticator(),
            ))
            .add_service(AdminServer::with_interceptor(
                grpc::AdminService::new(Admin::new(self.engine.clone())),
                grpc::AdminAuth::new(self.security.admin_token.as_ref().map(Secret::expose)),
            ))
            .serve_with_incoming_shutdown(
                settle_security::listen::incoming(listener, self.security.tls.clone()),
                shutdown,
            )
            .await;

        let _ = stop_recovery.send(true);
        if let Err(error) = recovery.await {
            warn!(%error, "recovery loop ended abnormally");
        }
        let _ = gauges.await;
        if let Some(exporter) = exporter {
            match exporter.await {
                Ok(Err(error)) => warn!(%error, "the metrics listener failed"),
                Err(error) => warn!(%error, "the metrics listener ended abnormally"),
                Ok(Ok(())) => {}
            }
        }
        match self.engine.release_leases().await {
            Ok(released) => info!(released, "leases released"),
            Err(error) => warn!(%error, "releasing leases failed; they expire on their own"),
        }
        self.engine.store().close().await;
        Ok(served?)
    }

    /// Binds `addr` (port 0 picks a free port) and serves in a background task. For tests,
    /// examples and embedding.
    pub async fn spawn(self, addr: SocketAddr) -> Result<Running, Error> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        // Checked here too, so that the caller hears of a refusal; serve warns.
        let _ = self.security.check_exposure(addr).map_err(Error::Config)?;
        let scheme = if self.security.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let metrics_addr = self.metrics_addr();
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(self.serve(listener, async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
        Ok(Running {
            addr,
            scheme,
            metrics_addr,
            stop,
            task,
        })
    }
}

/// A coordinator serving in a background task.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    scheme: &'static str,
    metrics_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), Error>>,
}

impl Running {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// `http://ADDR`, or `https://ADDR` with TLS, for clients.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Shuts down gracefully and waits until it has.
    pub async fn stop(self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        self.task
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?
    }
}

/// The token travels in an HTTP header, so it must be visible ASCII.
fn check_admin_token(token: &str) -> Result<(), Error> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Config(
            "the admin token must be non-empty visible ASCII (no spaces)".to_owned(),
        ));
    }
    Ok(())
}

/// An id for this process in leases: host, pid and a random suffix, so that a restarted
/// process never mistakes its predecessor's leases for its own.
fn instance_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "settled".to_owned());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}
