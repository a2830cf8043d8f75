//! The `settled` binary as a newcomer runs it: no flags but a port, in an empty directory,
//! on the default SQLite database; it serves, and it stops cleanly on SIGTERM — on the
//! default runtime and on one thread (`--threads 1`).

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use settle_proto::v1::{self as pb, coordinator_client::CoordinatorClient};

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
        .args(["--listen", "127.0.0.1:0"])
        .args(flags)
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start settled");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read");
        line
    })
    .await
    .expect("reader");
    let addr = line
        .trim()
        .strip_prefix("settled listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();

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
