//! The initiator side: [`Client`] talks to the coordinator and to participants' Try;
//! [`Transaction`] is one global transaction in progress.
//!
//! `try_branch` registers a branch with the coordinator, then calls the participant's Try
//! directly at the endpoint the coordinator returned. A business refusal comes back as
//! [`Error::Refused`]; the usual answer to any error is `abort`, one call. A `Transaction`
//! dropped before `commit` or `abort` is aborted in the background.
//!
//! A Begin (or a saga's Submit) that the coordinator refuses for load (`RESOURCE_EXHAUSTED`)
//! is retried after the delay its `RetryInfo` gives, with jitter, a bounded number of times
//! ([`Client::with_start_tries`]); then it fails with [`Error::Overloaded`]. Nothing else is
//! retried here: only a start can be refused for load.
//!
//! Channels (to the coordinator and to each participant endpoint) are created once and
//! shared by every clone of a `Client`. With [`Credentials`], `https://` endpoints are
//! reached over TLS, presenting the client's certificate if it has one, and every request
//! to the coordinator carries the bearer token if one is given.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use serde::Serialize;
use settle_proto::v1::{
    self as pb, coordinator_client::CoordinatorClient, participant_client::ParticipantClient,
};
use settle_security::{ClientTls, Secret, connect::Target};
use tonic::{Code, metadata::MetadataValue, transport::Channel};
use tonic_types::StatusExt;
use tracing::{debug, warn};

use crate::{barrier::Op, context};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The participant refused its Try (a business refusal: out of stock, no funds…).
    #[error("{participant} refused: {reason}")]
    Refused {
        /// The refusing participant.
        participant: String,
        /// Its reason.
        reason: String,
    },
    /// The coordinator answered with an error status.
    #[error("coordinator: {0}")]
    Coordinator(tonic::Status),
    /// The coordinator refused to start the transaction for load, every one of `tries`
    /// times; nothing was started. Worth trying again later, or telling the user to.
    #[error("coordinator overloaded ({tries} tries): {}", status.message())]
    Overloaded {
        /// The last refusal (`RESOURCE_EXHAUSTED`, usually with a `RetryInfo`).
        status: tonic::Status,
        /// How many times it was tried.
        tries: u32,
    },
    /// A participant's Try failed for a reason other than a refusal.
    #[error("{participant}: {status}")]
    Participant {
        /// The participant.
        participant: String,
        /// Its answer.
        status: tonic::Status,
    },
    /// A URL could not be used.
    #[error("invalid URL {0:?}")]
    InvalidUrl(String),
    /// Connecting failed.
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// A typed payload could not be serialised.
    #[error("payload: {0}")]
    Payload(#[from] serde_json::Error),
}

impl Error {
    /// True for a business refusal.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Refused { .. })
    }

    /// The gRPC code behind the error, if there is one.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Coordinator(status)
            | Error::Participant { status, .. }
            | Error::Overloaded { status, .. } => Some(status.code()),
            Error::Refused { .. } => Some(Code::Aborted),
            _ => None,
        }
    }
}

/// Status of a global transaction, as the coordinator reports it.
pub use pb::Status;

/// Options for [`Client::begin_with`].
#[derive(Debug, Clone, Default)]
pub struct BeginOptions {
    /// A client-chosen gid (makes Begin idempotent); empty: generated.
    pub gid: String,
    /// Time until the coordinator aborts the transaction if it is not committed.
    pub timeout: Duration,
    /// Free-form labels, visible to operators.
    pub labels: HashMap<String, String>,
    /// Branches registered by Begin itself, in one write; call
    /// [`Transaction::try_all`] to send their Trys.
    pub branches: Vec<BranchSpec>,
}

/// A branch to register with Begin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchSpec {
    /// Participant name.
    pub participant: String,
    /// Business action.
    pub action: String,
    /// Payload, sent with Try and with the phase-two call.
    pub payload: Bytes,
}

impl BranchSpec {
    /// A branch with a JSON payload.
    pub fn json<T: Serialize + ?Sized>(
        participant: &str,
        action: &str,
        payload: &T,
    ) -> Result<BranchSpec, Error> {
        Ok(BranchSpec::raw(
            participant,
            action,
            serde_json::to_vec(payload)?.into(),
        ))
    }

    /// A branch with a raw payload.
    pub fn raw(participant: &str, action: &str, payload: Bytes) -> BranchSpec {
        BranchSpec {
            participant: participant.to_owned(),
            action: action.to_owned(),
            payload,
        }
    }
}

/// How a client proves who it is and checks who it talks to.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// TLS for `https://` endpoints (the coordinator's and participants'): the CA they are
    /// verified against, and the client's own certificate, which names it.
    pub tls: Option<ClientTls>,
    /// A bearer token from the coordinator's tokens file, sent on every coordinator call.
    pub token: Option<Secret>,
}

impl Credentials {
    /// Adds the token, if any, to `request`.
    pub fn authorize<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(token) = &self.token
            && let Ok(value) = MetadataValue::try_from(format!("Bearer {}", token.expose()))
        {
            request
                .metadata_mut()
                .insert(settle_proto::metadata::AUTHORIZATION, value);
        }
    }
}

/// A connection to a coordinator. Cheap to clone; clones share channels.
#[derive(Debug, Clone)]
pub struct Client {
    coordinator: CoordinatorClient<Channel>,
    credentials: Credentials,
    participants: Arc<Mutex<HashMap<String, ParticipantClient<Channel>>>>,
    try_timeout: Duration,
    commit_wait: Duration,
    start_tries: u32,
}

/// The wait before retrying a start refused without a `RetryInfo`.
const OVERLOAD_DELAY: Duration = Duration::from_millis(50);
/// The longest wait between two tries, whatever `RetryInfo` says.
const OVERLOAD_MAX_DELAY: Duration = Duration::from_secs(5);

impl Client {
    /// Connects to the coordinator at `url` (`http://HOST:PORT`).
    pub async fn connect(url: impl Into<String>) -> Result<Client, Error> {
        Client::connect_with(url, Credentials::default()).await
    }

    /// Connects to the coordinator at `url` (`http://` or, with TLS in `credentials`,
    /// `https://`), using `credentials` for it and for participants.
    pub async fn connect_with(
        url: impl Into<String>,
        credentials: Credentials,
    ) -> Result<Client, Error> {
        let url = url.into();
        let channel = Target::new(&url, credentials.tls.as_ref())
            .map_err(|e| Error::InvalidUrl(e.to_string()))?
            .connect()
            .await?;
        Ok(Client {
            coordinator: CoordinatorClient::new(channel),
            credentials,
            participants: Arc::new(Mutex::new(HashMap::new())),
            try_timeout: Duration::from_secs(10),
            commit_wait: Duration::from_secs(10),
            start_tries: 5,
        })
    }

    /// How many times a Begin or Submit refused for load is tried in all before it fails
    /// with [`Error::Overloaded`] (default 5; 1 never retries).
    pub fn with_start_tries(mut self, tries: u32) -> Client {
        self.start_tries = tries.max(1);
        self
    }

    /// Makes a start (`call`, which sends one request), retrying it while the coordinator
    /// refuses it for load: after the delay of its `RetryInfo` (capped at 5 s) plus up to
    /// half as much again at random, so refused callers do not come back in step.
    pub(crate) async fn start<T, F, Fut>(&self, mut call: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            let status = match call().await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if status.code() == Code::ResourceExhausted => status,
                Err(status) => return Err(Error::Coordinator(status)),
            };
            if tries >= self.start_tries {
                return Err(Error::Overloaded { status, tries });
            }
            let asked = status
                .get_details_retry_info()
                .and_then(|info| info.retry_delay)
                .unwrap_or(OVERLOAD_DELAY)
                .min(OVERLOAD_MAX_DELAY);
            let delay = asked.mul_f64(rand::random_range(1.0..1.5));
            debug!(?delay, tries, "coordinator overloaded; retrying the start");
            tokio::time::sleep(delay).await;
        }
    }

    /// Timeout of each Try call (default 10 s).
    pub fn with_try_timeout(mut self, timeout: Duration) -> Client {
        self.try_timeout = timeout;
        self
    }

    /// How long `commit` and `abort` wait for phase two to finish before answering with
    /// the status reached (default 10 s; phase two continues in the background anyway).
    pub fn with_commit_wait(mut self, wait: Duration) -> Client {
        self.commit_wait = wait;
        self
    }

    /// The raw coordinator client, for calls the SDK does not wrap; dress their requests
    /// with [`Client::request`] so that they carry the token and the trace.
    pub fn coordinator(&self) -> CoordinatorClient<Channel> {
        self.coordinator.clone()
    }

    /// A request to the coordinator carrying `message`, the current trace and the token.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = context::traced(message);
        self.credentials.authorize(&mut request);
        request
    }

    /// Begins a transaction that aborts unless committed within `timeout`.
    pub async fn begin(&self, timeout: Duration) -> Result<Transaction, Error> {
        self.begin_with(BeginOptions {
            timeout,
            ..BeginOptions::default()
        })
        .await
    }

    /// Begins a transaction with a chosen gid, labels, or branches registered at once.
    pub async fn begin_with(&self, options: BeginOptions) -> Result<Transaction, Error> {
        let request = pb::BeginRequest {
            gid: options.gid,
            mode: pb::Mode::Tcc as i32,
            timeout_ms: options.timeout.as_millis() as u64,
            labels: options.labels,
            branches: options
                .branches
                .iter()
                .map(|b| pb::BranchSpec {
                    participant: b.participant.clone(),
                    action: b.action.clone(),
                    payload: b.payload.clone(),
                })
                .collect(),
        };
        let begun = self
            .start(|| {
                let mut coordinator = self.coordinator.clone();
                let request = self.request(request.clone());
                async move { coordinator.begin(request).await }
            })
            .await?;
        let untried = options
            .branches
            .into_iter()
            .zip(begun.branches)
            .map(|(spec, registered)| (spec, registered.branch_id, registered.endpoint))
            .collect();
        Ok(Transaction {
            client: self.clone(),
            gid: begun.gid,
            untried,
            finished: false,
        })
    }

    /// Reads a transaction.
    pub async fn get(&self, gid: &str) -> Result<pb::Transaction, Error> {
        Ok(self
            .coordinator
            .clone()
            .get(self.request(pb::GetRequest {
                gid: gid.to_owned(),
            }))
            .await
            .map_err(Error::Coordinator)?
            .into_inner())
    }

    fn participant(&self, endpoint: &str) -> Result<ParticipantClient<Channel>, Error> {
        let mut participants = self.participants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = participants.get(endpoint) {
            return Ok(client.clone());
        }
        let channel = Target::new(endpoint, self.credentials.tls.as_ref())
            .map_err(|e| Error::InvalidUrl(e.to_string()))?
            .connect_lazy();
        let client = ParticipantClient::new(channel);
        participants.insert(endpoint.to_owned(), client.clone());
        Ok(client)
    }
}

/// One global transaction, from Begin to Commit or Abort.
#[derive(Debug)]
pub struct Transaction {
    client: Client,
    gid: String,
    /// Branches registered by Begin whose Try has not been sent: (spec, id, endpoint).
    untried: Vec<(BranchSpec, u32, String)>,
    finished: bool,
}

impl Transaction {
    /// The global transaction id.
    pub fn gid(&self) -> &str {
        &self.gid
    }

    /// Registers a branch on `participant` with a JSON payload and calls its Try. Returns the
    /// branch id.
    pub async fn try_branch<T: Serialize + ?Sized>(
        &self,
        participant: &str,
        action: &str,
        payload: &T,
    ) -> Result<u32, Error> {
        let payload = serde_json::to_vec(payload)?;
        self.try_branch_raw(participant, action, payload.into())
            .await
    }

    /// Like [`Transaction::try_branch`], with the payload as raw bytes.
    pub async fn try_branch_raw(
        &self,
        participant: &str,
        action: &str,
        payload: Bytes,
    ) -> Result<u32, Error> {
        let registered = self
            .client
            .coordinator
            .clone()
            .register_branch(self.client.request(pb::RegisterBranchRequest {
                gid: self.gid.clone(),
                participant: participant.to_owned(),
                action: action.to_owned(),
                payload: payload.clone(),
            }))
            .await
            .map_err(Error::Coordinator)?
            .into_inner();
        self.call_try(
            participant,
            action,
            payload,
            registered.branch_id,
            &registered.endpoint,
        )
        .await?;
        Ok(registered.branch_id)
    }

    /// Sends Try to every branch registered by Begin ([`BeginOptions::branches`]),
    /// concurrently. The first refusal (or other failure) is returned; abort then.
    pub async fn try_all(&mut self) -> Result<(), Error> {
        let untried = std::mem::take(&mut self.untried);
        let calls = untried.iter().map(|(spec, branch_id, endpoint)| {
            self.call_try(
                &spec.participant,
                &spec.action,
                spec.payload.clone(),
                *branch_id,
                endpoint,
            )
        });
        let results = futures::future::join_all(calls).await;
        // A refusal says more than a transport error, so it is reported first.
        let mut first_error = None;
        for result in results {
            match result {
                Err(e) if e.is_refusal() => return Err(e),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
                Ok(()) => {}
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn call_try(
        &self,
        participant: &str,
        action: &str,
        payload: Bytes,
        branch_id: u32,
        endpoint: &str,
    ) -> Result<(), Error> {
        let mut request = context::traced(pb::BranchRequest {
            gid: self.gid.clone(),
            branch_id,
            action: action.to_owned(),
            payload,
        });
        request.set_timeout(self.client.try_timeout);
        let metadata = request.metadata_mut();
        if let Ok(gid) = MetadataValue::try_from(self.gid.as_str()) {
            metadata.insert(context::GID, gid);
        }
        metadata.insert(context::BRANCH_ID, MetadataValue::from(branch_id));
        metadata.insert(context::OP, MetadataValue::from_static(Op::Try.as_str()));
        let mut participant_client = self.client.participant(endpoint)?;
        match participant_client.r#try(request).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::Aborted => Err(Error::Refused {
                participant: participant.to_owned(),
                reason: status.message().to_owned(),
            }),
            Err(status) => Err(Error::Participant {
                participant: participant.to_owned(),
                status,
            }),
        }
    }

    /// Commits: returns COMMITTED once every branch confirmed, or COMMITTING if phase two
    /// is still retrying when the wait ends (it finishes in the background).
    pub async fn commit(mut self) -> Result<Status, Error> {
        self.finished = true;
        let response = self
            .client
            .coordinator
            .clone()
            .commit(self.client.request(pb::CommitRequest {
                gid: self.gid.clone(),
                wait_ms: self.client.commit_wait.as_millis() as u64,
            }))
            .await
            .map_err(Error::Coordinator)?;
        Ok(response.into_inner().status())
    }

    /// Aborts: returns ABORTED once every branch cancelled, or ABORTING while Cancel is
    /// still retrying.
    pub async fn abort(mut self, reason: &str) -> Result<Status, Error> {
        self.finished = true;
        abort(&self.client, &self.gid, reason, self.client.commit_wait).await
    }
}

async fn abort(client: &Client, gid: &str, reason: &str, wait: Duration) -> Result<Status, Error> {
    let response = client
        .coordinator
        .clone()
        .abort(client.request(pb::AbortRequest {
            gid: gid.to_owned(),
            reason: reason.to_owned(),
            wait_ms: wait.as_millis() as u64,
        }))
        .await
        .map_err(Error::Coordinator)?;
    Ok(response.into_inner().status())
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Without a runtime there is nobody to send it; the deadline aborts it instead.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let gid = std::mem::take(&mut self.gid);
        runtime.spawn(async move {
            if let Err(error) = abort(&client, &gid, "dropped before commit", Duration::ZERO).await
            {
                warn!(%gid, %error, "background abort of a dropped transaction failed");
            }
        });
    }
}
