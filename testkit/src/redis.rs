//! Redis for tests: the machine's shared server (127.0.0.1:6379, or `SETTLE_TEST_REDIS`)
//! with a key prefix of the test's own, or a private `redis-server` child on a free port
//! that a test may flush, stop and start again on the same port.
//!
//! Both are real Redis; a missing server fails the test, never skips it.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// The shared Redis's URL.
pub fn shared_url() -> String {
    std::env::var("SETTLE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("settle-test-{:016x}", rand::random::<u64>())
}

/// A `redis-server` of the test's own, keeping nothing on disk.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers.
    pub async fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = RedisServer { port, child: None };
        server.resume().await;
        server
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL): whatever it held is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again, empty, on the same port, and waits until it answers.
    pub async fn resume(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Redis 7) must be installed");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.command(&["PING"]).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server on port {} did not answer within 10 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Empties it, as a restart without persistence or an operator's FLUSHALL would.
    pub async fn flush(&self) {
        self.command(&["FLUSHALL"]).await.expect("FLUSHALL");
    }

    async fn command(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        command(&self.url(), args).await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs one command on the Redis at `url`, on a connection of its own.
pub async fn command(url: &str, args: &[&str]) -> redis::RedisResult<redis::Value> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut conn).await
}
