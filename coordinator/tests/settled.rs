//! The `settled` binary as a newcomer runs it: no flags but a port, in an empty directory,
//! on the default SQLite database; it serves, with its metrics on the port it prints, and
//! it stops cleanly on SIGTERM — on the default runtime and on one thread (`--threads 1`).
//! And it will not expose the Admin API beyond loopback without a token, nor will an
//! embedded coordinator.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use settle_coordinator::Coordinator;
use settle_proto::v1::{self as pb, coordinator_client::CoordinatorClient};
use settle_testkit::{Backend, TestDb, scrape, settled_metrics_addr, test_config, value};

#[tokio::test]
async fn settled_starts_on_sqlite_with_no_setup_and_stops_on_sigterm() {
    serves_and_stops(&[]).await;
}

#[tokio::test]
async fn settled_on_one_thread_serves_and_stops_on_sigterm() {
    serves_and_stops(&["--threads", "1"]).await;
}

async fn serves_and_stops(flags: &[&str]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_settled"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(flags)
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start settled");
    let stdout = child.stdout.take().expect("stdout");
    let (line, metrics_line) = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(stdout);
        let (mut line, mut metrics_line) = (String::new(), String::new());
        reader.read_line(&mut line).expect("read");
        reader.read_line(&mut metrics_line).expect("read");
        (line, metrics_line)
    })
    .await
    .expect("reader");
    let addr = line
        .trim()
        .strip_prefix("settled listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let metrics_addr = settled_metrics_addr(&metrics_line)
        .unwrap_or_else(|| panic!("unexpected second line {metrics_line:?}"));

    let mut client = CoordinatorClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let begun = client
        .begin(pb::BeginRequest {
            timeout_ms: 10_000,
            ..Default::default()
        })
        .await
        .expect("begin")
        .into_inner();
    assert_eq!(begun.gid.len(), 26);
    let committed = client
        .commit(pb::CommitRequest {
            gid: begun.gid.clone(),
            wait_ms: 1_000,
        })
        .await
        .expect("commit")
        .into_inner();
    assert_eq!(committed.status(), pb::Status::Committed);
    let samples = scrape(metrics_addr).await;
    assert_eq!(
        value(&samples, r#"settle_transactions_begun_total{mode="tcc"}"#),
        1.0,
        "the metrics listener serves this settled's counters"
    );
    assert!(
        dir.path().join("settle.db").exists(),
        "default database created in the working directory"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("waiter")
        .expect("wait");
    assert!(
        status.success(),
        "settled exits 0 on SIGTERM, got {status:?}"
    );
}

#[tokio::test]
async fn settled_refuses_a_non_loopback_address_without_tls_and_authentication() {
    let dir = tempfile::tempdir().expect("temp dir");
    let refused = Command::new(env!("CARGO_BIN_EXE_settled"))
        .args(["--listen", "0.0.0.0:0"])
        .current_dir(dir.path())
        .env_remove("SETTLE_ADMIN_TOKEN")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run settled");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(
            "settled: refusing to listen on 0.0.0.0:0 without TLS and authentication of callers"
        ),
        "{stderr}"
    );
    assert!(
        !dir.path().join("settle.db").exists(),
        "refused before touching the database"
    );

    let db = TestDb::new(Backend::Sqlite).await;
    let config = || test_config(&db.url);
    let exposed = Coordinator::open(config())
        .await
        .expect("open")
        .spawn("0.0.0.0:0".parse().expect("addr"))
        .await;
    assert!(exposed.is_err(), "embedded coordinators refuse too");

    let mut token_only = config();
    token_only.security.admin_token = Some("s3cret".into());
    let refused = Coordinator::open(token_only)
        .await
        .expect("open")
        .spawn("0.0.0.0:0".parse().expect("addr"))
        .await;
    assert!(
        refused.is_err(),
        "an admin token alone does not protect the Coordinator API"
    );

    let mut insecure = config();
    insecure.security.admin_token = Some("s3cret".into());
    insecure.security.insecure = true;
    let running = Coordinator::open(insecure)
        .await
        .expect("open")
        .spawn("0.0.0.0:0".parse().expect("addr"))
        .await
        .expect("--insecure accepts a non-loopback address");
    running.stop().await.expect("stop");
}
