//! Test support shared by the end-to-end tests: a fresh database per test (a SQLite file in
//! a temporary directory, or a new PostgreSQL database), an in-process coordinator on
//! 127.0.0.1:0, and participants that record every call they receive.

#![allow(dead_code)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use settle_coordinator::{Config, Coordinator, Running, recovery::RecoveryConfig};
use settle_proto::v1::{
    self as pb,
    coordinator_client::CoordinatorClient,
    participant_server::{Participant, ParticipantServer},
};
use sqlx::{Connection, Executor};
use tokio::{net::TcpListener, sync::watch};
use tonic::{Code, Request, Response, Status, transport::Channel};

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs an async test body once per backend: `both!(name);` turns `async fn name(Backend)`
/// into `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name($crate::common::Backend::Postgres).await
            }
        }
    };
}

/// The server that PostgreSQL tests create their databases on. Tests fail, never skip,
/// when it is unreachable.
pub fn postgres_admin_url() -> String {
    std::env::var("SETTLE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database that exists for one test and is removed after it.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("settle.db").display());
                TestDb {
                    url,
                    _dir: Some(dir),
                    pg_name: None,
                }
            }
            Backend::Postgres => {
                let name = format!("settle_test_{:016x}", rand::random::<u64>());
                let admin = postgres_admin_url();
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("PostgreSQL is required at {admin} (set SETTLE_TEST_POSTGRES): {e}")
                    });
                conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .await
                    .expect("create test database");
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                TestDb {
                    url: format!("{base}/{name}"),
                    _dir: None,
                    pg_name: Some(name),
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        let admin = postgres_admin_url();
        // Drop runs inside the test's runtime; a separate thread with its own runtime can
        // block on the cleanup.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = conn
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                }
            });
        })
        .join();
    }
}

/// Coordinator settings for tests: fast recovery passes and short retry delays.
pub fn test_config(url: &str) -> Config {
    Config {
        database: url.to_owned(),
        max_connections: 8,
        call_timeout: Duration::from_secs(2),
        recovery: RecoveryConfig {
            interval: Duration::from_millis(50),
            ..RecoveryConfig::default()
        },
        retry: settle_coordinator::retry::RetryPolicy {
            initial: Duration::from_millis(50),
            cap: Duration::from_millis(200),
            ..Default::default()
        },
        ..Config::default()
    }
}

/// Starts an in-process coordinator with `config` on 127.0.0.1:0.
pub async fn start_coordinator(config: Config) -> Running {
    Coordinator::open(config)
        .await
        .expect("open coordinator")
        .spawn("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("spawn coordinator")
}

pub async fn client(url: &str) -> CoordinatorClient<Channel> {
    CoordinatorClient::connect(url.to_owned())
        .await
        .expect("connect to coordinator")
}

/// One call a recording participant received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub op: &'static str,
    pub gid: String,
    pub branch_id: u32,
    /// The `settle-op` metadata the call carried, if any.
    pub op_header: Option<String>,
}

/// How a recording participant answers one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok,
    /// A business refusal (ABORTED).
    Refuse,
    /// A transient failure (UNAVAILABLE).
    Fail,
}

/// A real tonic Participant server on 127.0.0.1:0 that records every call and answers as
/// configured per operation.
#[derive(Clone)]
pub struct Recorder {
    pub url: String,
    calls: Arc<watch::Sender<Vec<Call>>>,
    answers: Arc<Mutex<HashMap<&'static str, Answer>>>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let recorder = Recorder {
            url,
            calls: Arc::new(watch::channel(Vec::new()).0),
            answers: Arc::new(Mutex::new(HashMap::new())),
        };
        let service = ParticipantServer::new(recorder.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                ),
        );
        recorder
    }

    /// Makes `op` answer `answer` from now on.
    pub fn answer(&self, op: &'static str, answer: Answer) {
        self.answers.lock().expect("answers").insert(op, answer);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// Calls of `op` for `gid`.
    pub fn calls_of(&self, op: &str, gid: &str) -> usize {
        self.calls
            .borrow()
            .iter()
            .filter(|c| c.op == op && c.gid == gid)
            .count()
    }

    /// Waits until the recorded calls satisfy `pred`, failing the test after 20 s.
    pub async fn wait_until(&self, what: &str, pred: impl FnMut(&Vec<Call>) -> bool) {
        let mut rx = self.calls.subscribe();
        tokio::time::timeout(Duration::from_secs(20), rx.wait_for(pred))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}; calls: {:?}", self.calls()))
            .expect("recorder alive");
    }

    fn record(&self, op: &'static str, request: &Request<pb::BranchRequest>) -> Result<(), Status> {
        let op_header = request
            .metadata()
            .get("settle-op")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let req = request.get_ref();
        self.calls.send_modify(|calls| {
            calls.push(Call {
                op,
                gid: req.gid.clone(),
                branch_id: req.branch_id,
                op_header,
            })
        });
        match self.answers.lock().expect("answers").get(op).copied() {
            None | Some(Answer::Ok) => Ok(()),
            Some(Answer::Refuse) => Err(Status::aborted("refused")),
            Some(Answer::Fail) => Err(Status::unavailable("temporarily failing")),
        }
    }
}

#[tonic::async_trait]
impl Participant for Recorder {
    async fn r#try(
        &self,
        request: Request<pb::BranchRequest>,
    ) -> Result<Response<pb::BranchResponse>, Status> {
        self.record("try", &request)?;
        Ok(Response::new(pb::BranchResponse {}))
    }
    async fn confirm(
        &self,
        request: Request<pb::BranchRequest>,
    ) -> Result<Response<pb::BranchResponse>, Status> {
        self.record("confirm", &request)?;
        Ok(Response::new(pb::BranchResponse {}))
    }
    async fn cancel(
        &self,
        request: Request<pb::BranchRequest>,
    ) -> Result<Response<pb::BranchResponse>, Status> {
        self.record("cancel", &request)?;
        Ok(Response::new(pb::BranchResponse {}))
    }
    async fn execute(
        &self,
        request: Request<pb::BranchRequest>,
    ) -> Result<Response<pb::BranchResponse>, Status> {
        self.record("execute", &request)?;
        Ok(Response::new(pb::BranchResponse {}))
    }
    async fn compensate(
        &self,
        request: Request<pb::BranchRequest>,
    ) -> Result<Response<pb::BranchResponse>, Status> {
        self.record("compensate", &request)?;
        Ok(Response::new(pb::BranchResponse {}))
    }
}

/// Waits until `gid` reaches `status` (read with Get), failing the test after 20 s.
pub async fn wait_for_status(
    client: &mut CoordinatorClient<Channel>,
    gid: &str,
    status: pb::Status,
) -> pb::Transaction {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let tx = get(client, gid).await;
        if tx.status() == status {
            return tx;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{gid} never reached {status:?}; it is {:?}",
            tx.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn get(client: &mut CoordinatorClient<Channel>, gid: &str) -> pb::Transaction {
    client
        .get(pb::GetRequest {
            gid: gid.to_owned(),
        })
        .await
        .expect("get")
        .into_inner()
}

pub fn code<T: std::fmt::Debug>(result: Result<T, Status>) -> Code {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(status) => status.code(),
    }
}
