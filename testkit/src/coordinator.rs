//! An in-process coordinator on 127.0.0.1:0 with settings that keep tests fast, and the
//! Coordinator-service calls that tests make of it: connect, Get, wait for a status, and the
//! code of a call expected to fail.
//!
//! [`Settled`] runs the binary instead, for tests that kill it.
//!
//! Tests that look behind the API (the engine, the store) open those themselves.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use settle_coordinator::{
    Config, Coordinator, Running, recovery::RecoveryConfig, retry::RetryPolicy,
};
use settle_proto::v1::{self as pb, coordinator_client::CoordinatorClient};
use tonic::{Code, Status, transport::Channel};

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
        retry: RetryPolicy {
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

/// The code of a call that must fail; a success fails the test.
pub fn code<T: std::fmt::Debug>(result: Result<T, Status>) -> Code {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(status) => status.code(),
    }
}

/// `settled` as a child process; killed on drop.
#[derive(Debug)]
pub struct Settled {
    child: Child,
    pub url: String,
}

impl Settled {
    /// Starts the `settled` binary at `binary` (a test's `env!("CARGO_BIN_EXE_settled")`)
    /// on `database`, with short timeouts, leases and retry delays, and waits until it
    /// listens.
    pub fn start(binary: &str, database: &str) -> Settled {
        let mut child = Command::new(binary)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--database",
                database,
                "--call-timeout-ms",
                "500",
                "--lease-ms",
                "1000",
                "--retry-initial-ms",
                "20",
                "--retry-cap-ms",
                "200",
                "--recovery-interval-ms",
                "20",
                // Several run at once: each its own metrics port.
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start settled");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        let addr = line
            .trim()
            .strip_prefix("settled listening on ")
            .unwrap_or_else(|| panic!("unexpected {line:?}"));
        Settled {
            url: format!("http://{addr}"),
            child,
        }
    }

    /// SIGKILL, and waits for the process to end.
    pub fn kill(mut self) {
        // SIGKILL: no graceful shutdown, no lease release.
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }
}

impl Drop for Settled {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
