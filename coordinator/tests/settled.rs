//! The `settled` binary as a newcomer runs it: no flags but a port, in an empty directory,
//! on the default SQLite database; it serves, with its metrics on the port it prints, and
//! it stops cleanly on SIGTERM — on the default runtime and on one thread (`--threads 1`).
//! And it will not expose the Admin API beyond loopback without a token, nor will an
//! embedded coordinator; `--insecure` does, with a warning. With certificates from
//! `deploy/tls/make-certs.sh` it serves over mutual TLS and knows its callers, and SIGHUP
//! loads a rotated certificate and tokens file without a restart.

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

    stop(child).await;
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

/// Starts `settled` with `flags` in `dir` (its default database is created there);
/// returns it and its first line of stdout, with the rest of its output (logs) collected
/// until it exits.
fn start_settled(
    dir: &std::path::Path,
    flags: &[&str],
) -> (
    std::process::Child,
    String,
    std::thread::JoinHandle<Vec<String>>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_settled"))
        .args(["--metrics-listen", "off"])
        .args(flags)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start settled");
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    reader.read_line(&mut first).expect("read");
    let rest = std::thread::spawn(move || reader.lines().map_while(Result::ok).collect());
    (child, first, rest)
}

/// SIGTERM, then waits for the exit off the runtime: a graceful stop waits for the test's
/// own connections to close, which needs the runtime running.
async fn stop(mut child: std::process::Child) {
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
async fn settled_with_insecure_listens_beyond_loopback_and_warns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (child, first, rest) = start_settled(
        dir.path(),
        &[
            "--listen",
            "0.0.0.0:0",
            "--insecure",
            "--admin-token",
            "s3cret-token",
        ],
    );
    let port = first
        .trim()
        .strip_prefix("settled listening on 0.0.0.0:")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    // Serving (and so past installing its signal handlers) once a call is answered.
    let mut client = CoordinatorClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect");
    let unknown = client
        .get(pb::GetRequest {
            gid: "none".to_owned(),
        })
        .await
        .expect_err("no such transaction");
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    stop(child).await;
    let logs = rest.join().expect("logs");
    assert!(
        logs.iter()
            .any(|l| l.contains("WARN") && l.contains("without TLS and authentication")),
        "the risk is logged at start: {logs:#?}"
    );
}

#[tokio::test]
async fn settled_serves_mutual_tls_with_the_deploy_scripts_certificates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/tls/make-certs.sh");
    let made = Command::new(script)
        .arg(dir.path())
        .args(["coordinator", "checkout"])
        .output()
        .expect("run make-certs.sh (needs openssl)");
    assert!(made.status.success(), "{made:?}");
    let file = |name: &str| dir.path().join(name).display().to_string();
    let (cert, key, ca, tokens) = (
        file("coordinator.pem"),
        file("coordinator-key.pem"),
        file("ca.pem"),
        file("tokens"),
    );
    std::fs::write(&tokens, format!("{OLD_TOKEN} ops\n")).expect("tokens");
    let (mut child, first, _rest) = start_settled(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
            "--tokens",
            &tokens,
        ],
    );
    let addr = first
        .trim()
        .strip_prefix("settled listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    let url = format!("https://{addr}");
    let tls = |cert: Option<&str>| {
        settle_security::ClientTls::load(settle_security::tls::ClientTlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: cert.map(|name| dir.path().join(format!("{name}.pem"))),
            key: cert.map(|name| dir.path().join(format!("{name}-key.pem"))),
        })
        .expect("client TLS from the script's files")
    };
    // A client presenting `cert` (or no certificate) and `token` (or none).
    let connect = |cert: Option<&str>, token: Option<&str>| {
        settle::Client::connect_with(
            url.clone(),
            settle::Credentials {
                tls: Some(tls(cert)),
                token: token.map(Into::into),
            },
        )
    };
    let checkout = connect(Some("checkout"), None).await.expect("connect");
    let tx = checkout
        .begin(std::time::Duration::from_secs(10))
        .await
        .expect("a certified caller begins");
    let gid = tx.gid().to_owned();
    tx.commit().await.expect("commit");
    let read = checkout.get(&gid).await.expect("get");
    assert_eq!(read.status(), pb::Status::Committed);
    assert_eq!(read.began_by, "checkout");

    let anonymous = connect(None, None)
        .await
        .expect("TLS without a certificate connects");
    let refused = anonymous
        .begin(std::time::Duration::from_secs(10))
        .await
        .expect_err("no credentials");
    assert_eq!(
        refused.code(),
        Some(tonic::Code::Unauthenticated),
        "{refused}"
    );
    let ops = connect(None, Some(OLD_TOKEN)).await.expect("connect");
    ops.begin(std::time::Duration::from_secs(10))
        .await
        .expect("a token from the tokens file begins");

    // Rotation: the script issues a new certificate, the tokens file changes, and SIGHUP
    // loads both at once; a new connection sees the new certificate, the new token works
    // and the old one no longer does.
    let made = Command::new(script)
        .arg(dir.path())
        .arg("coordinator")
        .output()
        .expect("run make-certs.sh again");
    assert!(made.status.success(), "{made:?}");
    std::fs::write(dir.path().join("tokens"), format!("{NEW_TOKEN} ops\n")).expect("tokens");
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    let new_leaf = std::fs::read_to_string(dir.path().join("coordinator.pem")).expect("pem");
    let addr: std::net::SocketAddr = addr.parse().expect("addr");
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while !same_certificate(
            &settle_testkit::pki::served_leaf(&dir.path().join("ca.pem"), addr).await,
            &new_leaf,
        ) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a new connection gets the new certificate");
    connect(None, Some(NEW_TOKEN))
        .await
        .expect("connect")
        .begin(std::time::Duration::from_secs(10))
        .await
        .expect("the new token begins");
    let stale = connect(None, Some(OLD_TOKEN))
        .await
        .expect("connect")
        .begin(std::time::Duration::from_secs(10))
        .await
        .expect_err("the old token is gone");
    assert_eq!(stale.code(), Some(tonic::Code::Unauthenticated), "{stale}");
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "SIGHUP reloads; it does not end settled"
    );
    stop(child).await;
}

const OLD_TOKEN: &str = "ops-token-0123456789abcdef";
const NEW_TOKEN: &str = "ops-token-fedcba9876543210";

/// Whether the DER certificate `der` is the one in the PEM text `pem`.
fn same_certificate(der: &[u8], pem: &str) -> bool {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(pem.as_bytes()).is_ok_and(|cert| cert.as_ref() == der)
}
