//! Sagas, on both sides. The initiator builds a [`Saga`] with [`Client::saga`] and submits
//! it in one call; the coordinator persists it whole, calls Execute on each step in order,
//! and, when a step refuses or the deadline passes, Compensate on the steps that executed,
//! in reverse order. A participant implements `execute` and `compensate` of
//! [`Participant`], or only those two through [`SagaParticipant`] and [`SagaOnly`].
//!
//! ```no_run
//! # async fn refund(client: &settle::Client) -> Result<(), settle::saga::Error> {
//! use serde_json::json;
//! use settle::saga::Step;
//!
//! let done = client
//!     .saga()
//!     .gid("refund-order-42")
//!     .step("order", "refund", &json!({"order": 42}))
//!     .compensation(&json!({"order": 42, "undo": true}))
//!     .parallel([
//!         Step::new("payment", "refund", &json!({"order": 42, "amount": 999})),
//!         Step::new("points", "revoke", &json!({"user": 7, "points": 99})),
//!     ])
//!     .step("inventory", "restock", &json!({"sku": "A1", "qty": 1}))
//!     .submit()
//!     .await?;
//! println!("{} is {:?}", done.gid, done.status);
//! # Ok(()) }
//! ```
//!
//! Payloads are JSON by default ([`crate::Branch::json`] reads them); `*_raw` methods take
//! bytes as they are. A payload that cannot be serialised is reported by `submit`, naming
//! its step, so a builder chain needs no `?` until the end.
//!
//! On the participant side the barrier covers sagas as it covers TCC: a duplicate Execute
//! or Compensate has no effect, a Compensate whose Execute never ran here is an empty
//! compensation, and an Execute arriving after its Compensate is refused. This module does
//! not serve participants; [`crate::serve`] does.

use std::{collections::HashMap, future::Future, time::Duration};

use bytes::Bytes;
use serde::Serialize;
use settle_proto::v1 as pb;
use sqlx::AnyConnection;
use tonic::Code;

use crate::{
    Client,
    client::Status,
    participant::{self, Branch, Participant},
};

/// Why a saga could not be submitted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A step's payload (or compensation payload) could not be serialised.
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
    /// The coordinator answered with an error status (INVALID_ARGUMENT for malformed
    /// steps, NOT_FOUND for an unknown participant, …).
    #[error("coordinator: {0}")]
    Coordinator(tonic::Status),
    /// The coordinator refused to start the saga for load, every one of `tries` times
    /// (see [`Client::with_start_tries`]); nothing was started.
    #[error("coordinator overloaded ({tries} tries): {}", status.message())]
    Overloaded {
        /// The last refusal.
        status: tonic::Status,
        /// How many times it was tried.
        tries: u32,
    },
}

impl Error {
    /// The gRPC code behind the error, if there is one.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Coordinator(status) | Error::Overloaded { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}

impl From<crate::client::Error> for Error {
    /// A start's failure ([`Client::with_start_tries`]) as a saga error.
    fn from(error: crate::client::Error) -> Error {
        match error {
            crate::client::Error::Overloaded { status, tries } => {
                Error::Overloaded { status, tries }
            }
            crate::client::Error::Coordinator(status) => Error::Coordinator(status),
            other => Error::Coordinator(tonic::Status::unknown(other.to_string())),
        }
    }
}

/// One saga step: a participant, an action, the Execute payload, and optionally a
/// different payload for Compensate (otherwise the Execute payload is sent again).
#[derive(Debug)]
pub struct Step {
    participant: String,
    action: String,
    payload: Result<Bytes, serde_json::Error>,
    compensation: Option<Result<Bytes, serde_json::Error>>,
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
            compensation: None,
        }
    }

    /// A step with the payload as raw bytes.
    pub fn raw(
        participant: impl Into<String>,
        action: impl Into<String>,
        payload: impl Into<Bytes>,
    ) -> Step {
        Step {
            participant: participant.into(),
            action: action.into(),
            payload: Ok(payload.into()),
            compensation: None,
        }
    }

    /// Sends this JSON payload with Compensate instead of the Execute payload.
    pub fn compensation<T: Serialize + ?Sized>(mut self, payload: &T) -> Step {
        self.compensation = Some(serde_json::to_vec(payload).map(Bytes::from));
        self
    }

    /// Sends these bytes with Compensate instead of the Execute payload. Empty bytes mean
    /// the Execute payload, as on the wire.
    pub fn compensation_raw(mut self, payload: impl Into<Bytes>) -> Step {
        self.compensation = Some(Ok(payload.into()));
        self
    }
}

/// A saga being built; see [`Client::saga`]. Nothing is sent before [`Saga::submit`].
#[derive(Debug)]
pub struct Saga {
    client: Client,
    gid: String,
    timeout: Duration,
    labels: HashMap<String, String>,
    wait: Duration,
    /// Each step with its group: 0 alone, otherwise shared by one `parallel` call.
    steps: Vec<(Step, u32)>,
    groups: u32,
    misuse: Option<&'static str>,
}

/// What the coordinator answered to a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The saga's gid (generated unless one was chosen).
    pub gid: String,
    /// COMMITTED or ABORTED when the saga finished within the wait; RUNNING or
    /// COMPENSATING when it goes on in the background, because the wait ended or a call
    /// failed and is retried later ([`Client::get`] follows it).
    pub status: Status,
}

impl Client {
    /// Starts building a saga: add steps in order, then [`Saga::submit`].
    pub fn saga(&self) -> Saga {
        Saga {
            client: self.clone(),
            gid: String::new(),
            timeout: Duration::from_secs(60),
            labels: HashMap::new(),
            wait: Duration::from_secs(10),
            steps: Vec::new(),
            groups: 0,
            misuse: None,
        }
    }
}

impl Saga {
    /// A client-chosen gid: submitting the same gid again returns the existing saga instead
    /// of running a second one. Without it the coordinator generates one.
    pub fn gid(mut self, gid: impl Into<String>) -> Saga {
        self.gid = gid.into();
        self
    }

    /// Steps not executed within this time are not executed at all: the saga compensates
    /// instead (default 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Saga {
        self.timeout = timeout;
        self
    }

    /// Adds a free-form label, visible to operators.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Saga {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// How long `submit` waits for the saga to finish before answering with the status
    /// reached (default 10 s; the saga continues in the background anyway). A transient
    /// failure ends the wait early: the retry comes later.
    pub fn wait(mut self, wait: Duration) -> Saga {
        self.wait = wait;
        self
    }

    /// Adds a step with a JSON payload, run after the steps before it.
    pub fn step<T: Serialize + ?Sized>(
        self,
        participant: impl Into<String>,
        action: impl Into<String>,
        payload: &T,
    ) -> Saga {
        self.then(Step::new(participant, action, payload))
    }

    /// Adds a step with a raw payload, run after the steps before it.
    pub fn step_raw(
        self,
        participant: impl Into<String>,
        action: impl Into<String>,
        payload: impl Into<Bytes>,
    ) -> Saga {
        self.then(Step::raw(participant, action, payload))
    }

    /// Adds a prepared step, run after the steps before it.
    pub fn then(mut self, step: Step) -> Saga {
        self.steps.push((step, 0));
        self
    }

    /// Adds steps that run concurrently with each other, after the steps before them and
    /// before the steps after them. Their compensations run concurrently too.
    pub fn parallel(mut self, steps: impl IntoIterator<Item = Step>) -> Saga {
        self.groups += 1;
        let group = self.groups;
        self.steps
            .extend(steps.into_iter().map(|step| (step, group)));
        self
    }

    /// Sends this JSON payload with Compensate of the step added last, instead of its
    /// Execute payload.
    pub fn compensation<T: Serialize + ?Sized>(self, payload: &T) -> Saga {
        self.compensate_last(|step| step.compensation(payload))
    }

    /// Sends these bytes with Compensate of the step added last, instead of its Execute
    /// payload.
    pub fn compensation_raw(self, payload: impl Into<Bytes>) -> Saga {
        self.compensate_last(|step| step.compensation_raw(payload))
    }

    fn compensate_last(mut self, with: impl FnOnce(Step) -> Step) -> Saga {
        match self.steps.pop() {
            Some((step, group)) => self.steps.push((with(step), group)),
            None => {
                self.misuse
                    .get_or_insert("a compensation was given before any step");
            }
        }
        self
    }

    /// Submits the saga. The coordinator stores it whole before answering, then runs it;
    /// the answer is the status reached within the wait.
    pub async fn submit(self) -> Result<Submitted, Error> {
        if let Some(misuse) = self.misuse {
            return Err(Error::Builder(misuse));
        }
        let mut steps = Vec::with_capacity(self.steps.len());
        for (n, (step, group)) in (1..).zip(self.steps) {
            let payload = |bytes| Error::Payload {
                step: n,
                source: bytes,
            };
            steps.push(pb::SagaStep {
                participant: step.participant,
                action: step.action,
                payload: step.payload.map_err(payload)?,
                compensation_payload: step
                    .compensation
                    .transpose()
                    .map_err(payload)?
                    .unwrap_or_default(),
                group,
            });
        }
        let request = pb::SubmitSagaRequest {
            gid: self.gid,
            steps,
            timeout_ms: self.timeout.as_millis() as u64,
            labels: self.labels,
            wait_ms: self.wait.as_millis() as u64,
        };
        let submitted = self
            .client
            .start(|| {
                let mut coordinator = self.client.coordinator();
                let request = self.client.request(request.clone());
                async move { coordinator.submit_saga(request).await }
            })
            .await?;
        Ok(Submitted {
            status: submitted.status(),
            gid: submitted.gid,
        })
    }
}

/// A service that takes part in sagas only. Serve it wrapped in [`SagaOnly`]; Try, Confirm
/// and Cancel are then answered UNIMPLEMENTED.
///
/// Both methods run inside a local transaction holding the barrier row, as every
/// [`Participant`] method does. `execute` may refuse ([`participant::Error::Refused`]),
/// which makes the coordinator compensate the steps before it; `compensate` must not, since
/// compensation is retried until it succeeds. Compensate receives the step's compensation
/// payload when the initiator gave one, otherwise the Execute payload again.
pub trait SagaParticipant: Send + Sync + 'static {
    /// Performs the step.
    fn execute(
        &self,
        branch: &Branch,
        conn: &mut AnyConnection,
    ) -> impl Future<Output = Result<(), participant::Error>> + Send;

    /// Undoes a step that executed here.
    fn compensate(
        &self,
        branch: &Branch,
        conn: &mut AnyConnection,
    ) -> impl Future<Output = Result<(), participant::Error>> + Send;
}

/// A [`SagaParticipant`] as a [`Participant`], for [`crate::serve`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SagaOnly<P>(pub P);

impl<P: SagaParticipant> Participant for SagaOnly<P> {
    async fn r#try(&self, _: &Branch, _: &mut AnyConnection) -> Result<(), participant::Error> {
        Err(participant::Error::Unsupported("try"))
    }

    async fn confirm(&self, _: &Branch, _: &mut AnyConnection) -> Result<(), participant::Error> {
        Err(participant::Error::Unsupported("confirm"))
    }

    async fn cancel(&self, _: &Branch, _: &mut AnyConnection) -> Result<(), participant::Error> {
        Err(participant::Error::Unsupported("cancel"))
    }

    fn execute(
        &self,
        branch: &Branch,
        conn: &mut AnyConnection,
    ) -> impl Future<Output = Result<(), participant::Error>> + Send {
        self.0.execute(branch, conn)
    }

    fn compensate(
        &self,
        branch: &Branch,
        conn: &mut AnyConnection,
    ) -> impl Future<Output = Result<(), participant::Error>> + Send {
        self.0.compensate(branch, conn)
    }
}
