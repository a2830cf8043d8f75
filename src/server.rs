//! Serving a [`Participant`] as the `settle.v1.Participant` gRPC service.
//!
//! [`serve`] wraps each call in the barrier (duplicates, empty rollbacks and hanging Trys
//! are answered here), maps participant errors to the status codes of the protocol
//! (ARCHITECTURE.md), adds the context-propagation layer, and registers the service's name
//! and endpoint with the coordinator at start-up and again periodically, so a coordinator
//! that lost its participant table (a fresh database, a new instance) learns it again.
//!
//! With [`Serve::tls`] it serves over TLS; when the TLS verifies client certificates, a
//! call is accepted only from a known caller: Confirm, Cancel, Execute and Compensate from
//! the coordinator's identity ([`Serve::coordinator_identity`]) alone, Try from any caller
//! with a certificate (or those of [`Serve::try_from`]). A call without a certificate is
//! `UNAUTHENTICATED`, one from another caller `PERMISSION_DENIED`, before the barrier sees
//! it. Without authentication it listens on loopback only, unless [`Serve::insecure`].
//!
//! Under load it sheds Trys, never phase two: with [`Serve::max_concurrent`], a Try that
//! finds every place taken (or the group-commit queue full) is refused at once, so its
//! initiator aborts instead of waiting ("degrade, don't collapse"), while a Confirm, Cancel,
//! Execute or Compensate waits for a place; the coordinator bounds how many of those it
//! sends at once. The group-commit queue is bounded in any case.

use std::{future::Future, net::SocketAddr, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use futures::FutureExt;

use backon::{ExponentialBuilder, Retryable};
use settle_proto::v1::{
    self as pb, coordinator_client::CoordinatorClient, participant_server::ParticipantServer,
};
use sqlx::AnyConnection;
use tokio::{
    net::TcpListener,
    sync::{Semaphore, mpsc, oneshot, watch},
    task::JoinHandle,
};
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use settle_security::{Peer, ServerTls, connect::Target};

use crate::{
    barrier::{self, Admission, Barrier, Entry, Op},
    client::Credentials,
    context, db,
    metrics::{Meters, Skipped},
    participant::{self, Branch, Outcome, Participant},
};

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding the address failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The coordinator could not be reached or refused the registration.
    #[error("registering with the coordinator failed: {0}")]
    Register(String),
    /// The settings cannot be served as given (an unprotected address, TLS that verifies
    /// clients without the coordinator's identity).
    #[error("{0}")]
    Config(String),
    /// The gRPC server failed.
    #[error("participant server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Builds a participant server; see [`serve`].
#[derive(Debug)]
pub struct Serve<P> {
    name: String,
    participant: P,
    barrier: Barrier,
    coordinator: Option<String>,
    advertise: Option<String>,
    reregister_every: Duration,
    group_commit: Option<usize>,
    max_concurrent: Option<usize>,
    metrics_listen: Option<SocketAddr>,
    tls: Option<ServerTls>,
    coordinator_identity: Option<String>,
    try_from: Option<Vec<String>>,
    credentials: Credentials,
    insecure: bool,
}

/// How many calls the group-commit queue holds, in groups of the largest size.
const QUEUED_GROUPS: usize = 8;

/// Serves `participant` under `name`, with `barrier` in its own database.
///
/// ```no_run
/// # async fn run(participant: impl settle::Participant, barrier: settle::Barrier) -> Result<(), Box<dyn std::error::Error>> {
/// let serving = settle::serve("inventory", participant, barrier)
///     .coordinator("http://127.0.0.1:50051")
///     .bind("127.0.0.1:7001".parse()?)
///     .await?;
/// println!("serving at {}", serving.url());
/// # Ok(()) }
/// ```
pub fn serve<P: Participant>(
    name: impl Into<String>,
    participant: P,
    barrier: Barrier,
) -> Serve<P> {
    Serve {
        name: name.into(),
        participant,
        barrier,
        coordinator: None,
        advertise: None,
        reregister_every: Duration::from_secs(30),
        group_commit: None,
        max_concurrent: None,
        metrics_listen: None,
        tls: None,
        coordinator_identity: None,
        try_from: None,
        credentials: Credentials::default(),
        insecure: false,
    }
}

impl<P: Participant> Serve<P> {
    /// Registers with the coordinator at `url` (otherwise the coordinator must be told the
    /// endpoint by configuration).
    pub fn coordinator(mut self, url: impl Into<String>) -> Self {
        self.coordinator = Some(url.into());
        self
    }

    /// How to reach the coordinator it registers with: TLS for an `https://` URL (whose
    /// certificate, with TLS that verifies clients, names this participant) and a bearer
    /// token, when the coordinator wants one.
    pub fn coordinator_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// Serves over TLS. When `tls` verifies client certificates, callers are known by
    /// them, and [`Serve::coordinator_identity`] must be given.
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The name in the coordinator's certificate: the only caller whose Confirm, Cancel,
    /// Execute and Compensate are accepted (and, by default, one of the callers whose Try
    /// is).
    pub fn coordinator_identity(mut self, name: impl Into<String>) -> Self {
        self.coordinator_identity = Some(name.into());
        self
    }

    /// Accepts Try only from these callers (default: any caller with a verified
    /// certificate, since initiators send Try).
    pub fn try_from(mut self, callers: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.try_from = Some(callers.into_iter().map(Into::into).collect());
        self
    }

    /// Listens beyond loopback even without TLS that authenticates callers (a warning is
    /// logged): anyone who can reach it could Confirm or Cancel.
    pub fn insecure(mut self, insecure: bool) -> Self {
        self.insecure = insecure;
        self
    }

    /// The endpoint to register, when it differs from `http://LISTEN_ADDR` (behind a proxy,
    /// or listening on 0.0.0.0).
    pub fn advertise(mut self, url: impl Into<String>) -> Self {
        self.advertise = Some(url.into());
        self
    }

    /// How often the registration is repeated (default 30 s).
    pub fn reregister_every(mut self, every: Duration) -> Self {
        self.reregister_every = every;
        self
    }

    /// Commits calls in groups of up to `max_batch`: the calls that arrive while one group
    /// commits run next, one after another on one connection, in one local transaction
    /// with one commit, instead of a transaction and a commit each. Worth it when the
    /// database's commits are the limit (they are for the shop's services under load); the
    /// default is a transaction per call.
    ///
    /// The barrier's guarantees are the same. What changes for the participant: its calls
    /// no longer run concurrently (so none may wait on anything slow); a call that fails
    /// is answered with its error, the group is rolled back and the other calls run again
    /// together, so a call's effects outside its transaction (in memory, say) may happen
    /// more than once. Its database effects count once. A call that fails sees the effects
    /// of the calls before it in its group, as if they had come first.
    pub fn group_commit(mut self, max_batch: usize) -> Self {
        self.group_commit = Some(max_batch.max(1));
        self
    }

    /// Runs at most `n` calls at once (default: no limit). A Try over the limit is refused
    /// at once (`ABORTED`, a business refusal: its initiator aborts), so a surge costs the
    /// buyers it cannot serve a fast "no" instead of everyone a slow one. A Confirm, Cancel,
    /// Execute or Compensate over the limit waits for a place: they are never shed, and
    /// they go before Trys that arrive after them.
    pub fn max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = Some(n.max(1));
        self
    }

    /// Serves the participant's metrics (`settle::metrics`) and the process's in Prometheus'
    /// text format at `http://ADDR/metrics` (port 0 picks one; see
    /// [`Serving::metrics_addr`]). Off by default, and then nothing is recorded.
    pub fn metrics_listen(mut self, addr: SocketAddr) -> Self {
        self.metrics_listen = Some(addr);
        self
    }

    /// Binds `addr` (port 0 picks one), registers with the coordinator, and serves in a
    /// background task.
    pub async fn bind(self, addr: SocketAddr) -> Result<Serving, Error> {
        let listener = TcpListener::bind(addr).await?;
        let (stop, mut stopped) = watch::channel(false);
        let started = self
            .start(listener, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await?;
        Ok(Serving {
            addr: started.addr,
            url: started.url,
            metrics_addr: started.metrics_addr,
            stop,
            task: tokio::spawn(started.run),
        })
    }

    /// Registers with the coordinator and serves on `listener` until `shutdown` completes.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        self.start(listener, shutdown).await?.run.await
    }

    async fn start(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Started<impl Future<Output = Result<(), Error>> + Send>, Error> {
        let addr = listener.local_addr()?;
        let verifies = self.tls.as_ref().is_some_and(ServerTls::verifies_clients);
        settle_security::exposure::check(
            addr,
            verifies,
            self.insecure,
            "serve with TLS that verifies client certificates (Serve::tls, \
             Serve::coordinator_identity)",
        )
        .map_err(Error::Config)?
        .warn(&self.name, addr);
        let callers = match (verifies, self.coordinator_identity.clone()) {
            (false, _) => None,
            (true, Some(coordinator)) => Some(Callers {
                coordinator,
                try_from: self.try_from.clone(),
            }),
            (true, None) => {
                return Err(Error::Config(
                    "TLS that verifies clients needs the coordinator's identity \
                     (Serve::coordinator_identity, --coordinator-identity)"
                        .to_owned(),
                ));
            }
        };
        // Bound before registering: a taken metrics port fails start-up, not a scrape.
        let (meters, exporter) = match self.metrics_listen {
            Some(metrics_addr) => {
                let mut registry = settle_telemetry::registry(env!("CARGO_PKG_VERSION"));
                let meters = Meters::register(&mut registry, self.group_commit.is_some());
                self.participant.metrics(&mut registry);
                let metrics_listener = TcpListener::bind(metrics_addr).await?;
                let metrics_addr = metrics_listener.local_addr()?;
                info!(name = %self.name, %metrics_addr, "participant metrics on /metrics");
                let task = tokio::spawn(settle_telemetry::serve(
                    metrics_listener,
                    Arc::new(registry),
                    std::future::pending(),
                ));
                (Some(Arc::new(meters)), Some((metrics_addr, task)))
            }
            None => (None, None),
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let url = self
            .advertise
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{addr}"));
        let registration = match &self.coordinator {
            Some(coordinator) => {
                let registrar = Registrar {
                    coordinator: coordinator.clone(),
                    credentials: self.credentials.clone(),
                    name: self.name.clone(),
                    endpoint: url.clone(),
                };
                registrar.register_with_retries().await?;
                Some(tokio::spawn(
                    registrar.keep_registered(self.reregister_every),
                ))
            }
            None => None,
        };
        let participant = Arc::new(self.participant);
        let calls = self.group_commit.map(|max_batch| {
            let (calls, queue) = mpsc::channel(QUEUED_GROUPS * max_batch);
            tokio::spawn(commit_in_groups(
                participant.clone(),
                self.barrier.clone(),
                meters.clone(),
                queue,
                max_batch,
            ));
            calls
        });
        let service = ParticipantService {
            participant,
            barrier: self.barrier,
            calls,
            slots: self
                .max_concurrent
                .map(|n| (Arc::new(Semaphore::new(n)), n)),
            meters,
            callers,
        };
        let metrics_addr = exporter.as_ref().map(|(addr, _)| *addr);
        let run = async move {
            let served = tonic::transport::Server::builder()
                .layer(context::layer())
                .add_service(ParticipantServer::new(service))
                .serve_with_incoming_shutdown(
                    settle_security::listen::incoming(listener, self.tls),
                    shutdown,
                )
                .await;
            if let Some(registration) = registration {
                registration.abort();
            }
            if let Some((_, exporter)) = exporter {
                exporter.abort();
            }
            Ok(served?)
        };
        Ok(Started {
            addr,
            url,
            metrics_addr,
            run,
        })
    }
}

/// A server ready to run: where it listens, and the future that serves.
struct Started<F> {
    addr: SocketAddr,
    url: String,
    metrics_addr: Option<SocketAddr>,
    run: F,
}

/// A participant server running in a background task.
#[derive(Debug)]
pub struct Serving {
    addr: SocketAddr,
    url: String,
    metrics_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), Error>>,
}

impl Serving {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint registered with the coordinator.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where `/metrics` is served, when [`Serve::metrics_listen`] asked for it.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Stops serving gracefully and waits until it has.
    pub async fn stop(self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        self.task
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?
    }
}

struct Registrar {
    coordinator: String,
    credentials: Credentials,
    name: String,
    endpoint: String,
}

impl Registrar {
    async fn register(&self) -> Result<(), Error> {
        let channel = Target::new(&self.coordinator, self.credentials.tls.as_ref())
            .map_err(|e| Error::Register(e.to_string()))?
            .connect()
            .await
            .map_err(|e| Error::Register(format!("cannot reach {}: {e}", self.coordinator)))?;
        let mut request = Request::new(pb::RegisterParticipantRequest {
            name: self.name.clone(),
            endpoint: self.endpoint.clone(),
        });
        self.credentials.authorize(&mut request);
        CoordinatorClient::new(channel)
            .register_participant(request)
            .await
            .map_err(|s| Error::Register(format!("{:?}: {}", s.code(), s.message())))?;
        Ok(())
    }

    /// At start-up the coordinator may still be starting: retry for about half a minute.
    async fn register_with_retries(&self) -> Result<(), Error> {
        (|| self.register())
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(5))
                    .with_max_times(10)
                    .with_jitter(),
            )
            .notify(|error, after| warn!(%error, ?after, "registration failed; retrying"))
            .await
    }

    async fn keep_registered(self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            match self.register().await {
                Ok(()) => debug!(name = %self.name, "registration renewed"),
                Err(error) => warn!(%error, "renewing registration failed"),
            }
        }
    }
}

/// Numbers every delivery this process receives ([`Branch::delivery`]).
static DELIVERIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct ParticipantService<P> {
    participant: Arc<P>,
    barrier: Barrier,
    /// The queue of the group-commit task, when enabled.
    calls: Option<mpsc::Sender<Call>>,
    /// The places for calls ([`Serve::max_concurrent`]) and their number, when limited.
    slots: Option<(Arc<Semaphore>, usize)>,
    /// Where calls are counted, when metrics are on.
    meters: Option<Arc<Meters>>,
    /// Who may call, when callers are known by their certificates.
    callers: Option<Callers>,
}

/// Whose calls a participant accepts.
struct Callers {
    coordinator: String,
    try_from: Option<Vec<String>>,
}

impl Callers {
    /// Refuses a call whose connection has no verified certificate, a phase-two call from
    /// anyone but the coordinator, and a Try from a caller not listed.
    fn check(&self, op: Op, peer: Option<&Peer>) -> Result<(), Status> {
        let caller = Callers::identity(peer)?;
        let allowed = match op {
            Op::Try => self
                .try_from
                .as_ref()
                .is_none_or(|callers| callers.iter().any(|c| c == caller)),
            _ => caller == self.coordinator,
        };
        if allowed {
            Ok(())
        } else if op == Op::Try {
            Err(Status::permission_denied(format!(
                "Try is not accepted from {caller}"
            )))
        } else {
            Err(self.not_coordinator(op.as_str(), caller))
        }
    }

    /// Refuses a QueryPrepared from anyone but the coordinator: its answer can roll a
    /// message back.
    fn check_query(&self, peer: Option<&Peer>) -> Result<(), Status> {
        let caller = Callers::identity(peer)?;
        if caller == self.coordinator {
            Ok(())
        } else {
            Err(self.not_coordinator("QueryPrepared", caller))
        }
    }

    fn identity(peer: Option<&Peer>) -> Result<&str, Status> {
        peer.and_then(|peer| peer.identity.as_deref())
            .ok_or_else(|| {
                Status::unauthenticated("a client certificate from the trusted CA is required")
            })
    }

    fn not_coordinator(&self, what: &str, caller: &str) -> Status {
        Status::permission_denied(format!(
            "{what} is accepted only from the coordinator ({}), not from {caller}",
            self.coordinator
        ))
    }
}

/// A call's answer and what became of it.
type Answered = (Result<(), Status>, Outcome);

/// A call waiting for its group.
struct Call {
    op: Op,
    branch: Branch,
    answer: oneshot::Sender<Answered>,
}

impl<P: Participant> ParticipantService<P> {
    async fn handle(
        &self,
        op: Op,
        request: Request<pb::BranchRequest>,
    ) -> Result<Response<pb::BranchResponse>, Status> {
        let timing = self.meters.as_deref().map(|meters| meters.call(op));
        let answer = self.answer(op, request).await;
        if let Some(timing) = timing {
            timing.answered(&answer);
        }
        answer.map(|()| Response::new(pb::BranchResponse {}))
    }

    async fn answer(&self, op: Op, request: Request<pb::BranchRequest>) -> Result<(), Status> {
        if let Some(callers) = &self.callers {
            callers.check(op, request.extensions().get::<Peer>())?;
        }
        let req = request.into_inner();
        let branch = Branch {
            gid: req.gid,
            branch_id: req.branch_id,
            action: req.action,
            payload: req.payload,
            delivery: DELIVERIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        let mut pending = PendingAfter {
            participant: &self.participant,
            op,
            branch: &branch,
            owed: true,
        };
        if op == Op::Try
            && let Err(error) = self.participant.screen_try(&branch).await
        {
            pending.owed = false;
            return Err(participant_status(error));
        }
        let (answer, outcome) = self.admitted(op, &branch).await;
        pending.owed = false;
        self.participant.after(op, &branch, outcome).await;
        answer
    }

    /// Runs a call past the screen: takes a place, then runs it alone or in a group.
    async fn admitted(&self, op: Op, branch: &Branch) -> Answered {
        let _slot = match &self.slots {
            None => None,
            Some((slots, n)) if op == Op::Try => Some(match slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => return not_run(shed(format!("all {n} places for calls are taken"))),
            }),
            Some((slots, _)) => match slots.clone().acquire_owned().await {
                Ok(slot) => Some(slot),
                Err(_) => return not_run(Status::unavailable("the participant is shutting down")),
            },
        };
        match &self.calls {
            Some(calls) => {
                let (answer, answered) = oneshot::channel();
                let branch = branch.clone();
                let call = Call { op, branch, answer };
                let queued = if op == Op::Try {
                    calls.try_send(call).map_err(|error| match error {
                        mpsc::error::TrySendError::Full(_) => {
                            shed("the group-commit queue is full".to_owned())
                        }
                        mpsc::error::TrySendError::Closed(_) => {
                            Status::unavailable("the participant is shutting down")
                        }
                    })
                } else {
                    calls
                        .send(call)
                        .await
                        .map_err(|_| Status::unavailable("the participant is shutting down"))
                };
                if let Err(status) = queued {
                    return not_run(status);
                }
                // A dropped answer means the group task panicked or stopped mid-group.
                answered.await.unwrap_or_else(|_| {
                    let stopped = "the participant stopped before answering this call";
                    (Err(Status::unavailable(stopped)), Outcome::Unknown)
                })
            }
            None => {
                let meters = self.meters.as_deref();
                alone(&*self.participant, &self.barrier, meters, op, branch, false).await
            }
        }
    }
}

/// A call whose [`Participant::after`] is still owed. When the caller gives up (its
/// deadline passes) the handler is dropped mid-call; then `after` is told `Unknown` from a
/// task of its own, since the call may or may not have committed.
struct PendingAfter<'a, P: Participant> {
    participant: &'a Arc<P>,
    op: Op,
    branch: &'a Branch,
    owed: bool,
}

impl<P: Participant> Drop for PendingAfter<'_, P> {
    fn drop(&mut self) {
        if !self.owed {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (participant, op, branch) =
                (self.participant.clone(), self.op, self.branch.clone());
            runtime.spawn(async move { participant.after(op, &branch, Outcome::Unknown).await });
        }
    }
}

/// The answer of a call that never reached its transaction.
fn not_run(status: Status) -> Answered {
    (Err(status), Outcome::RolledBack)
}

/// The refusal of a Try shed for load: `ABORTED`, so that its initiator aborts at once.
fn shed(why: String) -> Status {
    Status::aborted(format!("overloaded, try again later: {why}"))
}

/// One call in a transaction of its own. `again` says it ran before in a group whose
/// commit failed, and so may have been kept: if the barrier cannot be asked now, what
/// became of it is not known.
async fn alone<P: Participant>(
    participant: &P,
    barrier: &Barrier,
    meters: Option<&Meters>,
    op: Op,
    branch: &Branch,
    again: bool,
) -> Answered {
    let entry = match barrier.enter(op, &branch.gid, branch.branch_id).await {
        Ok(entry) => entry,
        Err(error) if again => return (Err(barrier_status(error)), Outcome::Unknown),
        Err(error) => return not_run(barrier_status(error)),
    };
    let mut guarded = match entry {
        Entry::Proceed(guarded) => guarded,
        Entry::Duplicate => return skip(meters, Skipped::Duplicate, Ok(())),
        Entry::EmptyRollback => return skip(meters, Skipped::EmptyRollback, Ok(())),
        Entry::Hanging => return skip(meters, Skipped::HangingTry, Err(hanging(op))),
    };
    match run(participant, op, branch, guarded.conn()).await {
        Ok(()) => match guarded.commit().await {
            Ok(()) => (Ok(()), Outcome::Applied),
            Err(error) => (Err(barrier_status(error)), Outcome::Unknown),
        },
        Err(error) => {
            // Dropping would roll back too; doing it explicitly returns the connection
            // to the pool in a known state.
            let _ = guarded.rollback().await;
            not_run(participant_status(error))
        }
    }
}

/// The group-commit task (see [`Serve::group_commit`]): takes whatever calls have queued
/// and runs them together.
async fn commit_in_groups<P: Participant>(
    participant: Arc<P>,
    barrier: Barrier,
    meters: Option<Arc<Meters>>,
    mut queue: mpsc::Receiver<Call>,
    max_batch: usize,
) {
    while let Some(first) = queue.recv().await {
        let mut calls = vec![first];
        while calls.len() < max_batch {
            match queue.try_recv() {
                Ok(call) => calls.push(call),
                Err(_) => break,
            }
        }
        if let Some(meters) = &meters {
            meters.group(calls.len());
        }
        // A panic in the participant fails this group's calls (their answers are dropped,
        // and nothing of the group was committed), not every later one.
        let meters = meters.as_deref();
        let settled = AssertUnwindSafe(settle_group(&*participant, &barrier, meters, calls))
            .catch_unwind()
            .await;
        if settled.is_err() {
            warn!("a participant call panicked; its group was rolled back");
        }
    }
}

/// Runs a group's calls together until they commit. A call that fails is answered with
/// its error (the group is rolled back, so its effects are gone) and the others run
/// together again; if the database itself fails, each call runs alone.
async fn settle_group<P: Participant>(
    participant: &P,
    barrier: &Barrier,
    meters: Option<&Meters>,
    mut calls: Vec<Call>,
) {
    loop {
        match together(participant, barrier, &calls).await {
            Together::Committed(answers) => {
                for (call, (answer, skipped)) in calls.into_iter().zip(answers) {
                    if let (Some(meters), Some(skipped)) = (meters, skipped) {
                        meters.skipped(skipped);
                    }
                    let _ = call.answer.send((answer, outcome_of(skipped)));
                }
                return;
            }
            Together::CallFailed(index, status) => {
                let failed = calls.remove(index);
                let _ = failed.answer.send(not_run(status));
                if calls.is_empty() {
                    return;
                }
            }
            Together::Broken => {
                debug!(
                    calls = calls.len(),
                    "a group's transaction failed; running its calls alone"
                );
                for call in calls {
                    let (op, branch) = (call.op, &call.branch);
                    let answer = alone(participant, barrier, meters, op, branch, true).await;
                    let _ = call.answer.send(answer);
                }
                return;
            }
        }
    }
}

/// How running a group in one transaction ended.
enum Together {
    /// Committed: one answer per call, and whether the barrier skipped it (counted only
    /// once committed, since a group run again would count it twice).
    Committed(Vec<(Result<(), Status>, Option<Skipped>)>),
    /// The call at this index failed with this answer; the transaction was rolled back.
    CallFailed(usize, Status),
    /// The database failed (beginning, the barrier or the commit): nothing is known to be
    /// kept, and the barrier makes running a call again safe.
    Broken,
}

/// Runs `calls` one after another in one local transaction and commits it.
async fn together<P: Participant>(participant: &P, barrier: &Barrier, calls: &[Call]) -> Together {
    let Ok(mut tx) = barrier.database().begin_write().await else {
        return Together::Broken;
    };
    let mut answers = Vec::with_capacity(calls.len());
    for (index, call) in calls.iter().enumerate() {
        let (gid, branch_id) = (&call.branch.gid, call.branch.branch_id);
        let Ok(admission) = barrier::admit(&mut tx, call.op, gid, branch_id).await else {
            return Together::Broken;
        };
        let answer = match admission {
            Admission::Proceed => match run(participant, call.op, &call.branch, &mut tx).await {
                Ok(()) => (Ok(()), None),
                Err(error) => {
                    let _ = tx.rollback().await;
                    return Together::CallFailed(index, participant_status(error));
                }
            },
            Admission::Duplicate => (Ok(()), Some(Skipped::Duplicate)),
            Admission::EmptyRollback => (Ok(()), Some(Skipped::EmptyRollback)),
            Admission::Hanging => (Err(hanging(call.op)), Some(Skipped::HangingTry)),
        };
        answers.push(answer);
    }
    match tx.commit().await {
        Ok(()) => Together::Committed(answers),
        Err(_) => Together::Broken,
    }
}

async fn run<P: Participant>(
    participant: &P,
    op: Op,
    branch: &Branch,
    conn: &mut AnyConnection,
) -> Result<(), participant::Error> {
    match op {
        Op::Try => participant.r#try(branch, conn).await,
        Op::Confirm => participant.confirm(branch, conn).await,
        Op::Cancel => participant.cancel(branch, conn).await,
        Op::Execute => participant.execute(branch, conn).await,
        Op::Compensate => participant.compensate(branch, conn).await,
    }
}

/// Counts a call the barrier answered, and answers it.
fn skip(meters: Option<&Meters>, why: Skipped, answer: Result<(), Status>) -> Answered {
    if let Some(meters) = meters {
        meters.skipped(why);
    }
    (answer, outcome_of(Some(why)))
}

/// What became of a committed call, from what the barrier did with it.
fn outcome_of(skipped: Option<Skipped>) -> Outcome {
    match skipped {
        None => Outcome::Applied,
        Some(Skipped::Duplicate) => Outcome::Duplicate,
        Some(Skipped::EmptyRollback) => Outcome::EmptyRollback,
        Some(Skipped::HangingTry) => Outcome::Hanging,
    }
}

fn hanging(op: Op) -> Status {
    Status::aborted(format!(
        "{} arrived after the branch was rolled back",
        op.as_str()
    ))
}

fn barrier_status(error: barrier::Error) -> Status {
    warn!(%error, "barrier failed");
    match &error {
        barrier::Error::Database(e) if !db::is_transient(e) => Status::internal(error.to_string()),
        _ => Status::unavailable(error.to_string()),
    }
}

fn participant_status(error: participant::Error) -> Status {
    match error {
        participant::Error::Refused(reason) => Status::aborted(reason),
        participant::Error::BadPayload(reason) => Status::invalid_argument(reason),
        participant::Error::Unsupported(op) => {
            Status::unimplemented(format!("{op} is not supported"))
        }
        participant::Error::Database(error) if !db::is_transient(&error) => {
            let error = participant::Error::Database(error);
            warn!(%error, "participant call failed for good");
            Status::internal(error.to_string())
        }
        error @ participant::Error::Permanent(_) => {
            warn!(%error, "participant call failed for good");
            Status::internal(error.to_string())
        }
        error @ (participant::Error::Failed(_) | participant::Error::Database(_)) => {
            warn!(%error, "participant call failed");
            Status::unavailable(error.to_string())
        }
    }
}

#[tonic::async_trait]
impl<P: Participant> pb::participant_server::Participant for ParticipantService<P> {
    async fn r#try(
        &self,
        request: Request<pb::BranchRequest>,
    ) -> Result<Response<pb::BranchResponse>, Status> {
        self.handle(Op::Try, request).await
    }

    async fn confirm(
        &self,
        request: Request<pb::BranchRequest>,
    ) -> Result<Response<pb::BranchResponse>, Status> {
        self.handle(Op::Confirm, request).await
    }

    async fn cancel(
        &self,
        request: Request<pb::BranchRequest>,
    ) -> Result<Response<pb::BranchResponse>, Status> {
        self.handle(Op::Cancel, request).await
    }

    async fn execute(
        &self,
        request: Request<pb::BranchRequest>,
    ) -> Result<Response<pb::BranchResponse>, Status> {
        self.handle(Op::Execute, request).await
    }

    async fn compensate(
        &self,
        request: Request<pb::BranchRequest>,
    ) -> Result<Response<pb::BranchResponse>, Status> {
        self.handle(Op::Compensate, request).await
    }

    /// Answered from the barrier table alone, for any participant: a service that runs
    /// messages' local transactions in this participant's database needs nothing more.
    async fn query_prepared(
        &self,
        request: Request<pb::QueryPreparedRequest>,
    ) -> Result<Response<pb::QueryPreparedResponse>, Status> {
        if let Some(callers) = &self.callers {
            callers.check_query(request.extensions().get::<Peer>())?;
        }
        let gid = request.into_inner().gid;
        let allowed = |c: char| c.is_ascii_alphanumeric() || "._:-".contains(c);
        if gid.is_empty() || gid.len() > 128 || !gid.chars().all(allowed) {
            return Err(Status::invalid_argument(format!(
                "gid {gid:?} is not 1 to 128 of [A-Za-z0-9._:-]"
            )));
        }
        let status = match self
            .barrier
            .local_status(&gid)
            .await
            .map_err(barrier_status)?
        {
            barrier::LocalStatus::Committed => pb::LocalStatus::Committed,
            barrier::LocalStatus::RolledBack => {
                info!(%gid, "message queried before its local transaction committed: rolled back");
                pb::LocalStatus::RolledBack
            }
        };
        Ok(Response::new(pb::QueryPreparedResponse {
            status: status as i32,
        }))
    }
}
