//! A participant that does nothing but record: a real tonic Participant server on
//! 127.0.0.1:0 that logs every call in arrival order and answers as the test configured —
//! OK, a refusal or a transient failure, per operation or per (operation, branch). It can
//! also hold the calls of an operation on some branches until all of them are in flight at
//! once, which only happens when the coordinator sends them concurrently; or hang calls
//! until released, counting how many are open at once (a hung participant).
//!
//! One recorder may be registered under several names, so that a single log holds the order
//! of calls across participants. A participant with business data is an SDK participant,
//! such as [`crate::stock`].

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use settle_proto::{
    metadata,
    v1::{
        self as pb,
        coordinator_client::CoordinatorClient,
        participant_server::{Participant, ParticipantServer},
    },
};
use tokio::{net::TcpListener, sync::watch};
use tonic::{Request, Response, Status, transport::Channel};

/// How long the calls of a rendezvous wait for each other: shorter than the test
/// coordinator's call timeout, so that a miss is reported by the recorder, not hidden in a
/// retry.
const RENDEZVOUS_WAIT: Duration = Duration::from_millis(1500);

/// One call the recorder received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `try`, `confirm`, `cancel`, `execute`, `compensate` or `query_prepared`: the method
    /// that was called.
    pub op: &'static str,
    pub gid: String,
    pub branch_id: u32,
    pub payload: Vec<u8>,
    /// The [`metadata::OP`] the call carried, if any.
    pub op_header: Option<String>,
}

/// How the recorder answers a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok,
    /// A business refusal (ABORTED).
    Refuse,
    /// A transient failure (UNAVAILABLE).
    Fail,
    /// A permanent failure (INTERNAL).
    Break,
    /// No answer until [`Recorder::release`], then OK (unless the caller gave up first).
    Hang,
}

/// A handle on a running recording participant; clones share its log and answers.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub url: String,
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    calls: watch::Sender<Vec<Call>>,
    /// Keyed by (op, branch id); a `None` branch id answers for every branch without a
    /// rule of its own.
    answers: Mutex<HashMap<(&'static str, Option<u32>), Answer>>,
    rendezvous: Mutex<HashMap<&'static str, HashSet<u32>>>,
    arrived: watch::Sender<HashMap<&'static str, usize>>,
    missed: Mutex<Vec<(&'static str, u32)>>,
    /// Calls being handled now, and the most there have been at once.
    open: watch::Sender<(usize, usize)>,
    released: watch::Sender<bool>,
}

/// A call being handled, counted in [`State::open`] until dropped (answered, or given up
/// by its caller).
struct Open<'a>(&'a watch::Sender<(usize, usize)>);

impl<'a> Open<'a> {
    fn new(open: &'a watch::Sender<(usize, usize)>) -> Open<'a> {
        open.send_modify(|(now, most)| {
            *now += 1;
            *most = (*most).max(*now);
        });
        Open(open)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|(now, _)| *now -= 1);
    }
}

impl Recorder {
    /// Starts the server; it answers OK to everything until told otherwise.
    pub async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(State {
            calls: watch::channel(Vec::new()).0,
            answers: Mutex::default(),
            rendezvous: Mutex::default(),
            arrived: watch::channel(HashMap::new()).0,
            missed: Mutex::default(),
            open: watch::channel((0, 0)).0,
            released: watch::channel(false).0,
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ParticipantServer::new(Server(state.clone())))
                .serve_with_incoming(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                ),
        );
        Recorder { url, state }
    }

    /// Registers the recorder with the coordinator as participant `name`.
    pub async fn register(&self, client: &mut CoordinatorClient<Channel>, name: &str) {
        client
            .register_participant(pb::RegisterParticipantRequest {
                name: name.to_owned(),
                endpoint: self.url.clone(),
            })
            .await
            .expect("register participant");
    }

    /// Makes `op` answer `answer` from now on, on every branch without a rule of its own.
    pub fn answer(&self, op: &'static str, answer: Answer) {
        self.answers().insert((op, None), answer);
    }

    /// Makes `op` on `branch_id` answer `answer` from now on.
    pub fn answer_branch(&self, op: &'static str, branch_id: u32, answer: Answer) {
        self.answers().insert((op, Some(branch_id)), answer);
    }

    /// Makes calls of `op` on `branch_ids` wait until all of them have arrived; a call that
    /// waits in vain is answered UNAVAILABLE and listed by [`Recorder::missed`].
    pub fn meet(&self, op: &'static str, branch_ids: &[u32]) {
        self.state
            .rendezvous
            .lock()
            .expect("rendezvous")
            .insert(op, branch_ids.iter().copied().collect());
    }

    /// Answers every call held by [`Answer::Hang`], and every later one, at once.
    pub fn release(&self) {
        self.state.released.send_replace(true);
    }

    /// The most calls that were being handled at the same time so far.
    pub fn most_open(&self) -> usize {
        self.state.open.borrow().1
    }

    /// Waits until exactly `n` calls are being handled, failing the test after 20 s.
    pub async fn wait_open(&self, n: usize) {
        let mut rx = self.state.open.subscribe();
        tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|(now, _)| *now == n))
            .await
            .unwrap_or_else(|_| panic!("never {n} calls open; {:?}", *self.state.open.borrow()))
            .expect("recorder alive");
    }

    /// (op, branch id) of every call that missed its rendezvous.
    pub fn missed(&self) -> Vec<(&'static str, u32)> {
        self.state.missed.lock().expect("missed").clone()
    }

    /// Every call so far, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        self.state.calls.borrow().clone()
    }

    /// Calls of `op` for `gid`.
    pub fn calls_of(&self, op: &str, gid: &str) -> usize {
        self.state
            .calls
            .borrow()
            .iter()
            .filter(|c| c.op == op && c.gid == gid)
            .count()
    }

    /// Calls of `op` for branch `branch_id` of `gid`.
    pub fn calls_of_branch(&self, op: &str, gid: &str, branch_id: u32) -> usize {
        self.state
            .calls
            .borrow()
            .iter()
            .filter(|c| c.op == op && c.gid == gid && c.branch_id == branch_id)
            .count()
    }

    /// (op, branch id) of every call for `gid`, in arrival order.
    pub fn ops_of(&self, gid: &str) -> Vec<(&'static str, u32)> {
        self.state
            .calls
            .borrow()
            .iter()
            .filter(|c| c.gid == gid)
            .map(|c| (c.op, c.branch_id))
            .collect()
    }

    /// Waits until the recorded calls satisfy `pred`, failing the test after 20 s.
    pub async fn wait_until(&self, what: &str, mut pred: impl FnMut(&[Call]) -> bool) {
        let mut rx = self.state.calls.subscribe();
        tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|calls| pred(calls)))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}; calls: {:?}", self.calls()))
            .expect("recorder alive");
    }

    fn answers(&self) -> std::sync::MutexGuard<'_, HashMap<(&'static str, Option<u32>), Answer>> {
        self.state.answers.lock().expect("answers")
    }
}

/// The tonic service behind a [`Recorder`].
struct Server(Arc<State>);

impl Server {
    async fn handle(
        &self,
        op: &'static str,
        request: Request<pb::BranchRequest>,
    ) -> Result<Response<pb::BranchResponse>, Status> {
        let state = &self.0;
        let op_header = request
            .metadata()
            .get(metadata::OP)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let req = request.into_inner();
        let _open = Open::new(&state.open);
        state.calls.send_modify(|calls| {
            calls.push(Call {
                op,
                gid: req.gid.clone(),
                branch_id: req.branch_id,
                payload: req.payload.to_vec(),
                op_header,
            })
        });
        let meeting = state
            .rendezvous
            .lock()
            .expect("rendezvous")
            .get(op)
            .filter(|ids| ids.contains(&req.branch_id))
            .map(HashSet::len);
        if let Some(expected) = meeting {
            state
                .arrived
                .send_modify(|n| *n.entry(op).or_default() += 1);
            let mut rx = state.arrived.subscribe();
            let met = tokio::time::timeout(
                RENDEZVOUS_WAIT,
                rx.wait_for(|n| n.get(op).copied().unwrap_or(0) >= expected),
            )
            .await
            .is_ok();
            if !met {
                state
                    .missed
                    .lock()
                    .expect("missed")
                    .push((op, req.branch_id));
                return Err(Status::unavailable("rendezvous missed"));
            }
        }
        let answer = {
            let answers = state.answers.lock().expect("answers");
            answers
                .get(&(op, Some(req.branch_id)))
                .or_else(|| answers.get(&(op, None)))
                .copied()
        };
        if answer == Some(Answer::Hang) {
            let _ = state
                .released
                .subscribe()
                .wait_for(|released| *released)
                .await;
        }
        match answer {
            None | Some(Answer::Ok | Answer::Hang) => Ok(Response::new(pb::BranchResponse {})),
            Some(Answer::Refuse) => Err(Status::aborted("refused")),
            Some(Answer::Fail) => Err(Status::unavailable("temporarily failing")),
            Some(Answer::Break) => Err(Status::internal("broken for good")),
        }
    }
}

#[tonic::async_trait]
impl Participant for Server {
    async fn r#try(
        &self,
        request: Request<pb::BranchRequest>,
    ) -> Result<Response<pb::BranchResponse>, Status> {
        self.handle("try", request).await
    }
    async fn confirm(
        &self,
        request: Request<pb::BranchRequest>,
    ) -> Result<Response<pb::BranchResponse>, Status> {
        self.handle("confirm", request).await
    }
    async fn cancel(
        &self,
        request: Request<pb::BranchRequest>,
    ) -> Result<Response<pb::BranchResponse>, Status> {
        self.handle("cancel", request).await
    }
    async fn execute(
        &self,
        request: Request<pb::BranchRequest>,
    ) -> Result<Response<pb::BranchResponse>, Status> {
        self.handle("execute", request).await
    }
    async fn compensate(
        &self,
        request: Request<pb::BranchRequest>,
    ) -> Result<Response<pb::BranchResponse>, Status> {
        self.handle("compensate", request).await
    }
    /// Recorded as `query_prepared` on branch 0; [`Answer::Ok`] answers COMMITTED,
    /// [`Answer::Refuse`] ROLLED_BACK.
    async fn query_prepared(
        &self,
        request: Request<pb::QueryPreparedRequest>,
    ) -> Result<Response<pb::QueryPreparedResponse>, Status> {
        let (metadata, extensions, req) = request.into_parts();
        let request = Request::from_parts(
            metadata,
            extensions,
            pb::BranchRequest {
                gid: req.gid,
                ..Default::default()
            },
        );
        let status = match self.handle("query_prepared", request).await {
            Ok(_) => pb::LocalStatus::Committed,
            Err(status) if status.code() == tonic::Code::Aborted => pb::LocalStatus::RolledBack,
            Err(status) => return Err(status),
        };
        Ok(Response::new(pb::QueryPreparedResponse {
            status: status as i32,
        }))
    }
}
