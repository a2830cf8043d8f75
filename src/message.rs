//! Transactional messages, the initiator's side: a service commits its own local
//! transaction and has follow-up steps delivered at least once if and only if it committed,
//! with no message queue and no outbox of its own.
//!
//! ```no_run
//! # async fn buy(client: &settle::Client, db: &settle::db::Database) -> Result<(), Box<dyn std::error::Error>> {
//! use serde_json::json;
//!
//! let sent = client
//!     .message("order-42")
//!     .query_endpoint("http://inventory.internal:50061")
//!     .step("order", "create", &json!({"order": 42}))
//!     .step("points", "reward", &json!({"user": 7, "points": 10}))
//!     .run_local(db, |conn| {
//!         Box::pin(async move {
//!             sqlx::query("UPDATE sku SET available = available - 1 WHERE sku = 'A1' AND available >= 1")
//!                 .execute(&mut *conn)
//!                 .await
//!         })
//!     })
//!     .await?;
//! println!("{} is {:?}", sent.gid, sent.status);
//! # Ok(()) }
//! ```
//!
//! [`Message::run_local`] prepares the message (the coordinator stores it with its steps),
//! runs the local transaction with the message's barrier row in it, and submits. If the
//! service dies between its commit and Submit, the coordinator asks it once the message's
//! timeout has passed (`QueryPrepared`), and [`crate::serve`] answers from the barrier
//! table: so the service that runs local transactions must also serve a participant on the
//! same database, at the query endpoint. A local transaction that fails is rolled back and
//! the message aborted; one whose commit's fate is unknown is left to that question.
//!
//! Steps are Execute calls, delivered in order (a [`Message::parallel`] group together)
//! until each succeeds, through the participants' barriers. A step must not refuse: its
//! local transaction has committed and nothing compensates it; a refusal is retried and
//! flags the message for an operator. [`Message::submit`] sends the steps without a local
//! transaction, for a service whose database the SDK does not see (at least once, and
//! nothing ties them to a commit).

use std::{collections::HashMap, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use serde::Serialize;
use settle_proto::v1 as pb;
use sqlx::AnyConnection;
use tonic::Code;
use tracing::warn;

/// What a message's local transaction returns: a boxed future borrowing its connection.
pub use futures::future::BoxFuture;

use crate::{
    Client,
    barrier::{self, Barrier, LocalEntry, LocalStatus},
    client::Status,
    db::Database,
};

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum Error<E = std::convert::Infallible> {
    /// A step's payload could not be serialised.
    #[error("step {step}: payload: {source}")]
    Payload {
        /// 1-based position of the step.
        step: usize,
        /// What serde_json said.
        source: serde_json::Error,
    },
    /// The builder was used in a way that has no meaning.
    #[error("{0}")]
    Builder(&'static str),
    /// The coordinator refused the message (INVALID_ARGUMENT for malformed steps,
    /// NOT_FOUND for an unknown participant, …), or its gid belongs to a message submitted
    /// without this database's local transaction; nothing ran locally.
    #[error("coordinator: {0}")]
    Coordinator(tonic::Status),
    /// The coordinator refused to start the message for load, every one of `tries` times;
    /// nothing ran locally.
    #[error("coordinator overloaded ({tries} tries): {}", status.message())]
    Overloaded {
        /// The last refusal.
        status: tonic::Status,
        /// How many times it was tried.
        tries: u32,
    },
    /// The local transaction returned this error: it was rolled back, and the message is
    /// aborted (at once, or by the coordinator's question if the Abort did not get
    /// through). The gid is spent: a later run with it gets [`Error::RolledBack`].
    #[error("local transaction failed: {0}")]
    Local(E),
    /// The local transaction returned success, but its database had aborted it (a failed
    /// statement whose error was swallowed): rolled back, and the message aborted as for
    /// [`Error::Local`].
    #[error("message {0}: the database aborted its local transaction")]
    Aborted(String),
    /// The message was rolled back before its local transaction could commit (the
    /// coordinator asked first, or an earlier attempt failed); nothing ran.
    #[error("message {0} was rolled back; its local transaction will not run")]
    RolledBack(String),
    /// The local database failed before the local transaction ran: nothing ran, and the
    /// message stays PREPARED until the coordinator's question finds it rolled back (or a
    /// repeat with the same gid runs it).
    #[error("local database: {0}")]
    Database(#[from] sqlx::Error),
    /// The barrier's own statements failed before the commit.
    #[error(transparent)]
    Barrier(#[from] barrier::Error),
    /// The local transaction committed, and the coordinator refused its Submit for good
    /// (the message was aborted, or its gid is unknown there): the steps will not be
    /// delivered. Only a gid shared with something else, or an operator's abort, gets here.
    #[error("message {gid}: the local transaction committed, but Submit was refused: {status}")]
    SubmitRefused {
        /// The message.
        gid: String,
        /// The coordinator's answer.
        status: tonic::Status,
    },
    /// The commit itself failed, so whether it happened is not known here. Nothing needs
    /// doing: the coordinator asks the service at the message's deadline, and delivers
    /// the steps if and only if it committed.
    #[error(
        "commit of message {gid}'s local transaction: outcome unknown ({source}); the coordinator will ask"
    )]
    CommitUnknown {
        /// The message.
        gid: String,
        /// What the commit said.
        source: sqlx::Error,
    },
}

impl<E> Error<E> {
    /// The gRPC code behind the error, if there is one.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Coordinator(status)
            | Error::Overloaded { status, .. }
            | Error::SubmitRefused { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}

impl<E> From<crate::client::Error> for Error<E> {
    fn from(error: crate::client::Error) -> Error<E> {
        match error {
            crate::client::Error::Overloaded { status, tries } => {
                Error::Overloaded { status, tries }
            }
            crate::client::Error::Coordinator(status) => Error::Coordinator(status),
            other => Error::Coordinator(tonic::Status::unknown(other.to_string())),
        }
    }
}

/// One step of a message: a participant, an action and the Execute payload.
#[derive(Debug)]
pub struct Step {
    participant: String,
    action: String,
    payload: Result<Bytes, serde_json::Error>,
}

impl Step {
    /// A step with a JSON payload.
    pub fn new<T: Serialize + ?Sized>(
        participant: impl Into<String>,
        action: impl Into<String>,
        payload: &T,
    ) -> Step {
        Step {
            participant: participant.into(),
            action: action.into(),
            payload: serde_json::to_vec(payload).map(Bytes::from),
        }
    }

    /// A step with a raw payload.
    pub fn raw(
        participant: impl Into<String>,
        action: impl Into<String>,
        payload: impl Into<Bytes>,
    ) -> Step {
        Step {
            participant: participant.into(),
            action: action.into(),
            payload: Ok(payload.into()),
        }
    }
}

/// A message being built; see [`Client::message`]. Nothing is sent before
/// [`Message::run_local`] or [`Message::submit`].
#[derive(Debug)]
pub struct Message {
    client: Client,
    gid: String,
    query_endpoint: String,
    timeout: Duration,
    labels: HashMap<String, String>,
    wait: Duration,
    /// Each step with its group: 0 alone, otherwise shared by one `parallel` call.
    steps: Vec<(Step, u32)>,
    groups: u32,
}

/// What became of a sent message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent<T> {
    /// The message's gid.
    pub gid: String,
    /// COMMITTED when every step was delivered within the wait; RUNNING while delivery
    /// goes on; PREPARED when the local transaction committed but Submit's answer did not
    /// come back (the coordinator will ask, and deliver, if it did not take it).
    pub status: Status,
    /// What the local transaction returned; `None` when it had already committed in an
    /// earlier run of the same message (so it did not run again), and for
    /// [`Message::submit`].
    pub local: Option<T>,
}

/// A fresh gid for a message: 12 hex digits of epoch milliseconds, then 16 random ones,
/// so gids sort by time and never repeat.
pub fn new_gid() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    format!("{ms:012x}{:016x}", rand::random::<u64>())
}

impl Client {
    /// Starts building a transactional message with gid `gid`, which the local transaction
    /// records: repeating a message with the same gid never runs its local transaction
    /// twice. Empty: [`run_local`](Message::run_local) takes a [`new_gid`], and
    /// [`submit`](Message::submit) lets the coordinator choose.
    pub fn message(&self, gid: impl Into<String>) -> Message {
        Message {
            client: self.clone(),
            gid: gid.into(),
            query_endpoint: String::new(),
            timeout: Duration::from_secs(30),
            labels: HashMap::new(),
            wait: Duration::from_secs(10),
            steps: Vec::new(),
            groups: 0,
        }
    }
}

impl Message {
    /// Where this service's participant server answers `QueryPrepared` (its
    /// `settle.v1.Participant` endpoint, serving the database of the local transaction): a
    /// URL, or the name it registers under, which the coordinator looks up when it asks.
    /// Required by [`Message::run_local`].
    pub fn query_endpoint(mut self, url: impl Into<String>) -> Message {
        self.query_endpoint = url.into();
        self
    }

    /// How long the coordinator waits for Submit before asking the service (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Message {
        self.timeout = timeout;
        self
    }

    /// Adds a free-form label, visible to operators.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Message {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// How long Submit waits for the steps to be delivered before answering with the status
    /// reached (default 10 s; delivery continues anyway).
    pub fn wait(mut self, wait: Duration) -> Message {
        self.wait = wait;
        self
    }

    /// Adds a step with a JSON payload, delivered after the steps before it.
    pub fn step<T: Serialize + ?Sized>(
        self,
        participant: impl Into<String>,
        action: impl Into<String>,
        payload: &T,
    ) -> Message {
        self.then(Step::new(participant, action, payload))
    }

    /// Adds a step with a raw payload, delivered after the steps before it.
    pub fn step_raw(
        self,
        participant: impl Into<String>,
        action: impl Into<String>,
        payload: impl Into<Bytes>,
    ) -> Message {
        self.then(Step::raw(participant, action, payload))
    }

    /// Adds a prepared step, delivered after the steps before it.
    pub fn then(mut self, step: Step) -> Message {
        self.steps.push((step, 0));
        self
    }

    /// Adds steps delivered concurrently with each other, after the steps before them and
    /// before the steps after them.
    pub fn parallel(mut self, steps: impl IntoIterator<Item = Step>) -> Message {
        self.groups += 1;
        let group = self.groups;
        self.steps
            .extend(steps.into_iter().map(|step| (step, group)));
        self
    }

    fn wire_steps<E>(&mut self) -> Result<Vec<pb::MessageStep>, Error<E>> {
        let mut steps = Vec::with_capacity(self.steps.len());
        for (n, (step, group)) in (1..).zip(self.steps.drain(..)) {
            steps.push(pb::MessageStep {
                participant: step.participant,
                action: step.action,
                payload: step
                    .payload
                    .map_err(|source| Error::Payload { step: n, source })?,
                group,
            });
        }
        Ok(steps)
    }

    /// Prepares the message, runs `local` in a write transaction on `db` together with
    /// the message's barrier row, commits, and submits. `local` runs at most once per gid,
    /// whatever is repeated or crashes.
    pub async fn run_local<T, E, F>(mut self, db: &Database, local: F) -> Result<Sent<T>, Error<E>>
    where
        F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T, E>>,
    {
        if self.gid.is_empty() {
            self.gid = new_gid();
        }
        if self.query_endpoint.is_empty() {
            return Err(Error::Builder(
                "run_local needs the query endpoint of this service's participant server",
            ));
        }
        if self.wait > MAX_WAIT {
            return Err(Error::Builder("a message's wait is at most 60 s"));
        }
        let request = pb::PrepareRequest {
            gid: self.gid.clone(),
            steps: self.wire_steps()?,
            timeout_ms: self.timeout.as_millis() as u64,
            labels: std::mem::take(&mut self.labels),
            query_endpoint: self.query_endpoint.clone(),
        };
        let client = &self.client;
        let prepared = client
            .start(|| {
                let mut coordinator = client.coordinator();
                let request = client.request(request.clone());
                async move { coordinator.prepare(request).await }
            })
            .await?;
        let (gid, found) = (prepared.gid.clone(), prepared.status());
        if found == Status::Aborted {
            return Err(Error::RolledBack(gid));
        }
        let mut tx = db.begin_write().await?;
        let value = match barrier::enter_local(&mut tx, &gid).await? {
            // Submitted already, and not by this database's local transaction: a gid
            // used by `submit` or by another service. Running now would tie nothing.
            LocalEntry::Proceed if found != Status::Prepared => {
                rollback(tx, &gid).await;
                return Err(Error::Coordinator(tonic::Status::failed_precondition(
                    format!(
                        "message {gid} is {}, and its local transaction is not in this database",
                        found.as_str_name()
                    ),
                )));
            }
            LocalEntry::Proceed => match local(&mut tx).await {
                Ok(value) => {
                    // A statement that failed inside the closure, its error swallowed, has
                    // aborted a PostgreSQL transaction, whose COMMIT then rolls back without
                    // an error: the barrier row must still be there before committing.
                    match barrier::entered_local(&mut tx, &gid).await {
                        Ok(true) => {}
                        Ok(false) | Err(_) => {
                            rollback(tx, &gid).await;
                            self.abandon(db, &gid).await;
                            return Err(Error::Aborted(gid));
                        }
                    }
                    if let Err(source) = tx.commit().await {
                        return Err(Error::CommitUnknown { gid, source });
                    }
                    Some(value)
                }
                Err(error) => {
                    rollback(tx, &gid).await;
                    self.abandon(db, &gid).await;
                    return Err(Error::Local(error));
                }
            },
            LocalEntry::Committed => {
                rollback(tx, &gid).await;
                None
            }
            LocalEntry::RolledBack => {
                rollback(tx, &gid).await;
                return Err(Error::RolledBack(gid));
            }
        };
        let status = self.submit_prepared(&gid).await?;
        Ok(Sent {
            gid,
            status,
            local: value,
        })
    }

    /// Submits a message whose local transaction committed, trying a few times while the
    /// coordinator cannot be reached; after that it is left to the coordinator's question
    /// (PREPARED). Only a definite refusal is an error: a message aborted or unknown
    /// although its local transaction committed means its gid was shared or aborted by
    /// hand.
    async fn submit_prepared<E>(&self, gid: &str) -> Result<Status, Error<E>> {
        let submit = || async {
            let mut coordinator = self.client.coordinator();
            let request = self.client.request(pb::SubmitRequest {
                gid: gid.to_owned(),
                wait_ms: self.wait.as_millis() as u64,
                ..Default::default()
            });
            coordinator.submit(request).await
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(3)
            .with_jitter();
        let submitted = submit
            .retry(backoff)
            .when(|status: &tonic::Status| !refused(status.code()))
            .await;
        match submitted {
            Ok(response) => Ok(response.into_inner().status()),
            Err(status) if refused(status.code()) => Err(Error::SubmitRefused {
                gid: gid.to_owned(),
                status,
            }),
            Err(status) => {
                warn!(%gid, %status, "Submit failed after the local commit; the coordinator will ask and deliver");
                Ok(Status::Prepared)
            }
        }
    }

    /// After a failed local transaction: makes sure it can never commit (a late repeat
    /// included), then aborts the message, so nothing waits for the deadline. Failing that,
    /// the coordinator's question finds the same answer.
    async fn abandon(&self, db: &Database, gid: &str) {
        match Barrier::new(db.clone()).local_status(gid).await {
            Ok(LocalStatus::RolledBack) => {
                let mut coordinator = self.client.coordinator();
                let request = self.client.request(pb::AbortRequest {
                    gid: gid.to_owned(),
                    reason: "the local transaction failed".to_owned(),
                    wait_ms: 0,
                });
                if let Err(status) = coordinator.abort(request).await {
                    warn!(%gid, %status, "Abort failed after the local rollback; the coordinator will ask");
                }
            }
            // Another run of the same message committed meanwhile: that one submits.
            Ok(LocalStatus::Committed) => {}
            Err(error) => {
                warn!(%gid, %error, "marking the message rolled back failed; the coordinator will ask")
            }
        }
    }

    /// Sends the steps without a local transaction: stored and delivered at least once.
    /// With an empty gid the coordinator generates one.
    pub async fn submit(mut self) -> Result<Sent<()>, Error> {
        if self.steps.is_empty() {
            return Err(Error::Builder(
                "a message submitted without Prepare needs steps",
            ));
        }
        let request = pb::SubmitRequest {
            gid: self.gid.clone(),
            wait_ms: self.wait.as_millis() as u64,
            steps: self.wire_steps()?,
            timeout_ms: self.timeout.as_millis() as u64,
            labels: std::mem::take(&mut self.labels),
        };
        let client = &self.client;
        let submitted = client
            .start(|| {
                let mut coordinator = client.coordinator();
                let request = client.request(request.clone());
                async move { coordinator.submit(request).await }
            })
            .await?;
        Ok(Sent {
            status: submitted.status(),
            gid: submitted.gid,
            local: None,
        })
    }
}

/// Whether a Submit's answer is a refusal that no repeat changes (rather than a lost
/// connection, a restart or a timeout).
fn refused(code: Code) -> bool {
    matches!(
        code,
        Code::FailedPrecondition
            | Code::NotFound
            | Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
    )
}

/// The longest wait the coordinator accepts.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Rolls back a local transaction that wrote nothing to keep; a failure only means the
/// database closes it, with the same effect.
async fn rollback(tx: sqlx::Transaction<'static, sqlx::Any>, gid: &str) {
    if let Err(error) = tx.rollback().await {
        warn!(%gid, %error, "rolling back the local transaction failed; the database drops it");
    }
}
