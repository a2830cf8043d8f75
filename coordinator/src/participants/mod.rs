//! Every call the coordinator makes to a participant: Confirm and Cancel for TCC, Execute
//! and Compensate for sagas and messages' steps (Try is the initiator's), and QueryPrepared
//! for messages past their deadline ([`Participants::query_prepared`]). [`Participants::call`] resolves the
//! branch's participant in the [`directory`], builds the request with the protocol's
//! metadata (gid, branch id and op, from `settle_proto::metadata`), waits for one of the
//! participant's places (`--participant-concurrency`, so a slow or hung participant holds
//! at most that many calls, connections' streams and buffers), bounds the wait and the call
//! together by the call timeout, and classifies the answer as [`Answer::Ok`], [`Answer::Refused`],
//! [`Answer::Broken`] or [`Answer::Failed`].
//!
//! This is the one place a participant call is made, so whatever every call needs (TLS,
//! trace propagation, per-participant limits, metrics) is one change here. What an answer
//! means for the transaction (a refused Execute starts compensation, a failure is retried)
//! is for `crate::tcc` and `crate::saga` to decide.

pub mod directory;

use std::time::{Duration, Instant};

use bytes::Bytes;
pub use settle_proto::Op;
use settle_proto::{metadata, v1 as pb};
use settle_security::ClientTls;
use settle_telemetry::trace;
use tonic::{Code, metadata::MetadataValue};
use tracing::{Instrument, Span, info_span};

use crate::{
    metrics::{CallResult, Metrics, QueryResult},
    model::Branch,
    store::{self, Store},
};
use directory::{Directory, Resolved};

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The participant did it.
    Ok,
    /// The participant said no for good (`ABORTED`, to an op that [may refuse](Op::may_refuse)),
    /// with its reason.
    Refused(String),
    /// The participant says it failed for good (`INTERNAL`: a constraint, an overflow, a
    /// bug; or a payload or op it cannot handle). Still retried, since the decision stands,
    /// but an operator is needed: the transaction is flagged at once.
    Broken(String),
    /// Anything else: an error status, a timeout, an unknown participant. Worth retrying.
    Failed(String),
}

/// The participants the coordinator calls, and how.
#[derive(Debug)]
pub struct Participants {
    directory: Directory,
    call_timeout: Duration,
}

impl Participants {
    /// Participants known to `store`, each call bounded by `call_timeout` (which also
    /// bounds connecting and waiting for a place), at most `concurrency` calls in flight
    /// to each, `https://` endpoints reached with `tls`, each call recorded in `metrics`.
    pub fn new(
        store: Store,
        call_timeout: Duration,
        concurrency: Option<usize>,
        tls: Option<ClientTls>,
        metrics: Metrics,
    ) -> Participants {
        Participants {
            directory: Directory::new(store, call_timeout, concurrency, tls, metrics),
            call_timeout,
        }
    }

    /// Whether `https://` endpoints can be called (a CA to verify them is configured).
    pub fn calls_tls(&self) -> bool {
        self.directory.calls_tls()
    }

    /// Records `name` at `endpoint` (already validated), registered by `by`, durably.
    pub async fn register(
        &self,
        name: &str,
        endpoint: &str,
        by: Option<&str>,
    ) -> Result<(), store::Error> {
        self.directory
            .register(name, endpoint, by)
            .await
            .map(|_| ())
    }

    /// The endpoint of `name`, if it is registered.
    pub async fn endpoint(&self, name: &str) -> Result<Option<String>, store::Error> {
        Ok(self.directory.resolve(name).await?.map(|r| r.endpoint))
    }

    /// Calls `op` on `branch`'s participant with `payload`. Every call that reaches a
    /// known participant is counted in `settle_branch_calls_total` and timed; every failed
    /// one is also a retry (`settle_phase_two_retries_total`), since none is given up.
    pub async fn call(&self, op: Op, branch: &Branch, payload: Bytes) -> Answer {
        let op_name = op.as_str();
        let (client, meters, slots) = match self.directory.resolve(&branch.participant).await {
            Ok(Some(Resolved {
                client,
                meters,
                slots,
                ..
            })) => (client, meters, slots),
            Ok(None) => {
                return Answer::Failed(format!(
                    "{op_name} failed: participant {:?} is not registered",
                    branch.participant
                ));
            }
            Err(e) => return Answer::Failed(format!("{op_name} failed: directory lookup: {e}")),
        };
        let mut request = tonic::Request::new(pb::BranchRequest {
            gid: branch.gid.clone(),
            branch_id: branch.branch_id,
            action: branch.action.clone(),
            payload,
        });
        request.set_timeout(self.call_timeout);
        let headers = request.metadata_mut();
        if let Ok(gid) = MetadataValue::try_from(branch.gid.as_str()) {
            headers.insert(metadata::GID, gid);
        }
        headers.insert(metadata::BRANCH_ID, MetadataValue::from(branch.branch_id));
        headers.insert(metadata::OP, MetadataValue::from_static(op_name));
        // A child of the span this call is made in (phase two's, which continues the
        // transaction's stored trace), handed on so that the participant continues it.
        let span = if trace::on() {
            let span = info_span!(
                "call",
                otel.name = op_name,
                otel.kind = "client",
                participant = %branch.participant,
                branch_id = branch.branch_id,
            );
            trace::inject(&span, request.metadata_mut().as_mut());
            span
        } else {
            Span::none()
        };
        let mut client = client;
        let answer = async {
            // Waiting for a place counts against the call's timeout: a call stuck behind a
            // hung participant's calls fails like them, and is retried like them.
            let _slot = match &slots {
                Some(slots) => Some(slots.acquire().await),
                None => None,
            };
            let _in_flight = meters.sending();
            match op {
                Op::Try => client.r#try(request).await,
                Op::Confirm => client.confirm(request).await,
                Op::Cancel => client.cancel(request).await,
                Op::Execute => client.execute(request).await,
                Op::Compensate => client.compensate(request).await,
            }
        };
        let started = Instant::now();
        let answered = tokio::time::timeout(self.call_timeout, answer)
            .instrument(span)
            .await;
        let (answer, result) = match answered {
            Ok(Ok(_)) => (Answer::Ok, CallResult::Ok),
            Ok(Err(status)) if status.code() == Code::Aborted && op.may_refuse() => (
                Answer::Refused(status.message().to_owned()),
                CallResult::Refused,
            ),
            Ok(Err(status)) if permanent(status.code()) => (
                Answer::Broken(format!(
                    "{op_name} failed for good: {:?}: {}",
                    status.code(),
                    status.message()
                )),
                CallResult::Error,
            ),
            // A deadline tonic enforced (the request's grpc-timeout) is a timeout too.
            Ok(Err(status)) if status.code() == Code::DeadlineExceeded => (
                Answer::Failed(format!(
                    "{op_name} failed: {:?}: {}",
                    status.code(),
                    status.message()
                )),
                CallResult::Timeout,
            ),
            Ok(Err(status)) => (
                Answer::Failed(format!(
                    "{op_name} failed: {:?}: {}",
                    status.code(),
                    status.message()
                )),
                CallResult::Error,
            ),
            Err(_) => (
                Answer::Failed(format!(
                    "{op_name} failed: {:?}: timed out after {:?}",
                    Code::Unavailable,
                    self.call_timeout
                )),
                CallResult::Timeout,
            ),
        };
        meters.call(op, result, started.elapsed());
        if matches!(answer, Answer::Failed(_) | Answer::Broken(_)) && op != Op::Try {
            meters.retry();
        }
        answer
    }
}

/// What a message's service said about its local transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// It committed.
    Committed,
    /// It did not, and now never will.
    RolledBack,
    /// No usable answer (an error, a timeout, or an answer this version does not know).
    Unknown(String),
}

impl Participants {
    /// Asks the service at `endpoint` whether the local transaction of message `gid`
    /// committed (`settle.v1.Participant/QueryPrepared`), within the call timeout.
    pub async fn query_prepared(&self, endpoint: &str, gid: &str) -> Local {
        let mut client = self.directory.at(endpoint);
        let mut request = tonic::Request::new(pb::QueryPreparedRequest {
            gid: gid.to_owned(),
        });
        request.set_timeout(self.call_timeout);
        if let Ok(value) = MetadataValue::try_from(gid) {
            request.metadata_mut().insert(metadata::GID, value);
        }
        let answered =
            tokio::time::timeout(self.call_timeout, client.query_prepared(request)).await;
        let local = match answered {
            Ok(Ok(response)) => match response.into_inner().status() {
                pb::LocalStatus::Committed => Local::Committed,
                pb::LocalStatus::RolledBack => Local::RolledBack,
                pb::LocalStatus::Unspecified => {
                    Local::Unknown("QueryPrepared answered no status".to_owned())
                }
            },
            Ok(Err(status)) => Local::Unknown(format!(
                "QueryPrepared at {endpoint} failed: {:?}: {}",
                status.code(),
                status.message()
            )),
            Err(_) => Local::Unknown(format!(
                "QueryPrepared at {endpoint} timed out after {:?}",
                self.call_timeout
            )),
        };
        self.directory.metrics().queried(match local {
            Local::Committed => QueryResult::Committed,
            Local::RolledBack => QueryResult::RolledBack,
            Local::Unknown(_) => QueryResult::Error,
        });
        local
    }
}

/// Codes that say retrying alone will not help: the participant failed for good
/// (`INTERNAL`, `DATA_LOSS`), or cannot handle this call at all (`INVALID_ARGUMENT`,
/// `UNIMPLEMENTED`).
fn permanent(code: Code) -> bool {
    matches!(
        code,
        Code::Internal | Code::DataLoss | Code::InvalidArgument | Code::Unimplemented
    )
}
