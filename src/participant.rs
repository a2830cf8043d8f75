//! The participant side: the [`Participant`] trait a service implements, the [`Branch`]
//! each call receives, and the [`Error`] a call may end with.
//!
//! Every method runs inside a local database transaction that already holds the barrier
//! row (see [`crate::barrier`]): write business data through the connection you are given
//! and return `Ok(())` to commit both, or an error to roll both back. Serving the trait
//! over gRPC is [`crate::server`]'s job.

use std::future::Future;

use bytes::Bytes;
use serde::de::DeserializeOwned;
pub use settle_proto::Op;
use sqlx::AnyConnection;

/// One call for one branch of a global transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    /// Global transaction id.
    pub gid: String,
    /// Branch id within the transaction.
    pub branch_id: u32,
    /// The action the initiator named at registration.
    pub action: String,
    /// The payload the initiator sent.
    pub payload: Bytes,
    /// This delivery's number, unique within the process: the same in
    /// [`Participant::screen_try`], the op and [`Participant::after`], so state a screen
    /// keeps for its own call (units it took elsewhere) is found again by that call alone,
    /// not by a repeated delivery of the same branch.
    pub delivery: u64,
}

impl Branch {
    /// Decodes a JSON payload (what [`crate::Transaction::try_branch`] sends).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| Error::BadPayload(format!("payload is not the expected JSON: {e}")))
    }
}

/// How a participant call ended, when it did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A business refusal (out of stock, insufficient funds): answered `ABORTED`. For Try it
    /// aborts the global transaction; for a saga Execute it starts compensation.
    #[error("refused: {0}")]
    Refused(String),
    /// The payload could not be understood: answered `INVALID_ARGUMENT`.
    #[error("bad payload: {0}")]
    BadPayload(String),
    /// A failure that may pass (a service this one needs is down, stock that may come
    /// back): answered `UNAVAILABLE`, and the coordinator retries.
    #[error("{0}")]
    Failed(String),
    /// A failure that will not pass by itself (a bug, data that breaks an invariant):
    /// answered `INTERNAL`. The coordinator still retries phase two, since the decision
    /// stands, but flags the transaction as needing attention at the first such answer.
    #[error("{0}")]
    Permanent(String),
    /// The database failed: answered `UNAVAILABLE` when it may pass (a lost connection, a
    /// lock, a serialization failure) and `INTERNAL` when it will not (a constraint, an
    /// overflow); see [`crate::db::is_transient`].
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// This participant does not implement the operation.
    #[error("{0} is not supported by this participant")]
    Unsupported(&'static str),
}

impl Error {
    /// A business refusal with a reason.
    pub fn refuse(reason: impl Into<String>) -> Error {
        Error::Refused(reason.into())
    }
}

/// What became of a call, as [`Participant::after`] learns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The business code ran and its local transaction committed.
    Applied,
    /// Nothing was kept: the call was refused, failed, or shed before its transaction, or
    /// its transaction rolled back.
    RolledBack,
    /// The barrier answered a repeated delivery; nothing ran.
    Duplicate,
    /// The barrier answered a Cancel or Compensate whose forward op never ran here.
    EmptyRollback,
    /// The barrier refused a Try or Execute that came after its rollback.
    Hanging,
    /// The commit's fate is not known (the connection broke while committing): the call
    /// may or may not have taken effect.
    Unknown,
}

/// A service that takes part in Settle transactions.
///
/// Each method receives the branch and an open connection inside a local transaction that
/// holds the barrier row; duplicates, empty rollbacks and hanging Trys never reach these
/// methods. Return [`Error::Refused`] from `try` (or `execute`) to refuse.
pub trait Participant: Send + Sync + 'static {
    /// A cheap check made before a Try touches the database (no barrier row, no local
    /// transaction): return [`Error::Refused`] to refuse at once, as a sold-out flag does.
    /// Accepts everything unless implemented. It runs before the barrier, so it also
    /// answers a repeated delivery of a Try that already succeeded; refuse only what the
    /// initiator would rather abort than retry (the SDK's client never repeats a Try).
    /// Once it accepts, [`Participant::after`] is told how the Try ended.
    fn screen_try(&self, branch: &Branch) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = branch;
        async { Ok(()) }
    }

    /// Told how each call ended, after its local transaction committed or rolled back (a
    /// Try only once [`Participant::screen_try`] accepted it): for state outside the
    /// local database that must follow the call, such as a Redis copy of the stock. A call
    /// whose caller gave up mid-way (its deadline passed) is told [`Outcome::Unknown`] from
    /// a task of its own. Does nothing unless implemented; it cannot change the answer.
    fn after(&self, op: Op, branch: &Branch, outcome: Outcome) -> impl Future<Output = ()> + Send {
        let _ = (op, branch, outcome);
        async {}
    }

    /// Adds the participant's own metrics to those served at
    /// [`crate::server::Serve::metrics_listen`]; called once, when metrics are on.
    fn metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let _ = registry;
    }

    /// Reserves the branch's resources.
    fn r#try(
        &self,
        branch: &Branch,
        conn: &mut AnyConnection,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Makes a successful Try final. Must not refuse: phase two is retried until it
    /// succeeds, so a Try must have checked and reserved everything this needs.
    fn confirm(
        &self,
        branch: &Branch,
        conn: &mut AnyConnection,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Releases what a successful Try reserved. Only called when that Try ran here.
    fn cancel(
        &self,
        branch: &Branch,
        conn: &mut AnyConnection,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Saga forward step. Not supported unless implemented.
    fn execute(
        &self,
        branch: &Branch,
        conn: &mut AnyConnection,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = (branch, conn);
        async { Err(Error::Unsupported("execute")) }
    }

    /// Saga compensation of a step that executed here. Not supported unless implemented.
    fn compensate(
        &self,
        branch: &Branch,
        conn: &mut AnyConnection,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = (branch, conn);
        async { Err(Error::Unsupported("compensate")) }
    }
}

/// A shared participant is a participant, so a service can keep an `Arc` to read its own
/// state while [`crate::serve`] owns another.
impl<P: Participant> Participant for std::sync::Arc<P> {
    fn screen_try(&self, branch: &Branch) -> impl Future<Output = Result<(), Error>> + Send {
        (**self).screen_try(branch)
    }

    fn after(&self, op: Op, branch: &Branch, outcome: Outcome) -> impl Future<Output = ()> + Send {
        (**self).after(op, branch, outcome)
    }

    fn metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        (**self).metrics(registry)
    }

    fn r#try(
        &self,
        branch: &Branch,
        conn: &mut AnyConnection,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        (**self).r#try(branch, conn)
    }

    fn confirm(
        &self,
        branch: &Branch,
        conn: &mut AnyConnection,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        (**self).confirm(branch, conn)
    }

    fn cancel(
        &self,
        branch: &Branch,
        conn: &mut AnyConnection,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        (**self).cancel(branch, conn)
    }

    fn execute(
        &self,
        branch: &Branch,
        conn: &mut AnyConnection,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        (**self).execute(branch, conn)
    }

    fn compensate(
        &self,
        branch: &Branch,
        conn: &mut AnyConnection,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        (**self).compensate(branch, conn)
    }
}
