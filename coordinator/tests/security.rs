//! TLS and caller authentication on the Coordinator API, with certificates made at test
//! time: certified and token-holding callers are known and recorded as who began and
//! decided; a caller without a certificate, with another CA's certificate or with a wrong
//! token is refused with the right code and nothing is written; a registration under
//! another caller's name is refused and the old endpoint stays.

use std::time::Duration;

use settle::{Client, Credentials, security::Secret};
use settle_coordinator::{Running, Security};
use settle_proto::v1::{self as pb, coordinator_client::CoordinatorClient};
use settle_security::{ClientTls, Tokens, connect::Target, tls::ClientTlsFiles};
use settle_testkit::{Backend, Pki, TestDb, both, start_coordinator, test_config, wait_for_status};
use sqlx::Row;
use tonic::Code;

const CHECKOUT_TOKEN: &str = "checkout-token-0123456789abcdef";

/// A coordinator over TLS that knows callers by certificate and by the tokens file.
async fn coordinator(backend: Backend, pki: &Pki) -> (TestDb, Running) {
    let db = TestDb::new(backend).await;
    let tokens = pki.dir().join("tokens");
    std::fs::write(&tokens, format!("{CHECKOUT_TOKEN} checkout\n")).expect("tokens file");
    let mut config = test_config(&db.url);
    config.security = Security {
        tls: Some(pki.server("coordinator")),
        tokens: Some(Tokens::load(&tokens).expect("tokens")),
        ..Security::default()
    };
    let running = start_coordinator(config).await;
    assert!(running.url().starts_with("https://"), "{}", running.url());
    (db, running)
}

/// Rows in the coordinator's tables that callers write: transactions, participants.
async fn written(db: &TestDb) -> (i64, i64) {
    let pool = settle::db::Database::connect(&db.url, 1)
        .await
        .expect("database")
        .pool()
        .clone();
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM global_tx) AS txs, \
             (SELECT COUNT(*) FROM participant) AS participants",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    (
        row.try_get("txs").expect("txs"),
        row.try_get("participants").expect("participants"),
    )
}

fn begin() -> pb::BeginRequest {
    pb::BeginRequest {
        timeout_ms: 30_000,
        ..Default::default()
    }
}

/// The code a Begin over `tls` (and `token`, if any) is answered with, or the connection's
/// failure.
async fn begin_code(url: &str, tls: &ClientTls, token: Option<&str>) -> Result<Code, String> {
    let channel = Target::new(url, Some(tls))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut request = tonic::Request::new(begin());
    if let Some(token) = token {
        Credentials {
            tls: None,
            token: Some(Secret::from(token)),
        }
        .authorize(&mut request);
    }
    Ok(match CoordinatorClient::new(channel).begin(request).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    })
}

/// Begins a transaction as `client`'s caller, leaving it to the test to end.
async fn begin_as(client: &Client, timeout_ms: u64) -> String {
    client
        .coordinator()
        .begin(client.request(pb::BeginRequest {
            timeout_ms,
            ..Default::default()
        }))
        .await
        .expect("begin")
        .into_inner()
        .gid
}

async fn strangers_are_refused_and_nothing_is_written(backend: Backend) {
    let pki = Pki::new("settle test CA");
    let (db, running) = coordinator(backend, &pki).await;
    let url = running.url();

    // TLS without a client certificate or token: the connection is made, the call refused.
    let anonymous = pki.client(None);
    assert_eq!(
        begin_code(&url, &anonymous, None).await,
        Ok(Code::Unauthenticated)
    );
    // A token that is not in the tokens file, with or without a certificate.
    let wrong = "checkout-token-0123456789abcdeX";
    assert_eq!(
        begin_code(&url, &anonymous, Some(wrong)).await,
        Ok(Code::Unauthenticated)
    );
    let certified = pki.client(Some("order"));
    assert_eq!(
        begin_code(&url, &certified, Some(wrong)).await,
        Ok(Code::Unauthenticated),
        "a wrong token is refused even over a certified connection"
    );
    // A certificate from another CA fails the handshake: nothing reaches the service. The
    // stranger trusts our server's CA, but its own certificate is another CA's.
    let other = Pki::new("another CA");
    let foreign = other.issue("order");
    let stranger = ClientTls::load(ClientTlsFiles {
        ca: pki.ca(),
        cert: Some(foreign.cert),
        key: Some(foreign.key),
    })
    .expect("client TLS");
    // TLS 1.3 clients learn of the refusal on their first read, as a failed call: not an
    // answer from the service, which would be UNAUTHENTICATED had the certificate been
    // ignored.
    let refused = begin_code(&url, &stranger, None).await;
    assert!(
        !matches!(refused, Ok(Code::Ok | Code::Unauthenticated)),
        "a foreign certificate is refused at the handshake: {refused:?}"
    );
    // A registration by a caller under another's name.
    let order = Client::connect_with(
        url.clone(),
        Credentials {
            tls: Some(certified.clone()),
            token: None,
        },
    )
    .await
    .expect("connect");
    let hijack = order
        .coordinator()
        .register_participant(order.request(pb::RegisterParticipantRequest {
            name: "payment".to_owned(),
            endpoint: "http://127.0.0.1:1".to_owned(),
        }))
        .await
        .expect_err("not order's name");
    assert_eq!(hijack.code(), Code::PermissionDenied, "{hijack:?}");

    assert_eq!(written(&db).await, (0, 0), "no refused call wrote anything");

    // The right token, and the right certificate, are let in.
    assert_eq!(
        begin_code(&url, &anonymous, Some(CHECKOUT_TOKEN)).await,
        Ok(Code::Ok)
    );
    assert_eq!(begin_code(&url, &certified, None).await, Ok(Code::Ok));
    assert_eq!(written(&db).await, (2, 0));
    running.stop().await.expect("stop");
}
both!(strangers_are_refused_and_nothing_is_written);

async fn a_registration_under_another_name_keeps_the_old_endpoint(backend: Backend) {
    let pki = Pki::new("settle test CA");
    let (_db, running) = coordinator(backend, &pki).await;
    let connect = async |name: &str| {
        Client::connect_with(
            running.url(),
            Credentials {
                tls: Some(pki.client(Some(name))),
                token: None,
            },
        )
        .await
        .expect("connect")
    };
    let register = async |client: &Client, endpoint: &str| {
        client
            .coordinator()
            .register_participant(client.request(pb::RegisterParticipantRequest {
                name: "payment".to_owned(),
                endpoint: endpoint.to_owned(),
            }))
            .await
    };
    let payment = connect("payment").await;
    let mallory = connect("mallory").await;
    register(&payment, "http://127.0.0.1:7001")
        .await
        .expect("payment registers itself");
    let hijack = register(&mallory, "http://127.0.0.1:6666")
        .await
        .expect_err("mallory may not register payment");
    assert_eq!(hijack.code(), Code::PermissionDenied, "{hijack:?}");

    // A Begin with a payment branch is answered with the endpoint payment registered.
    let begun = payment
        .coordinator()
        .begin(payment.request(pb::BeginRequest {
            timeout_ms: 30_000,
            branches: vec![pb::BranchSpec {
                participant: "payment".to_owned(),
                action: "pay".to_owned(),
                ..Default::default()
            }],
            ..Default::default()
        }))
        .await
        .expect("begin")
        .into_inner();
    assert_eq!(begun.branches[0].endpoint, "http://127.0.0.1:7001");
    running.stop().await.expect("stop");
}
both!(a_registration_under_another_name_keeps_the_old_endpoint);

async fn the_transaction_records_who_began_and_decided_it(backend: Backend) {
    let pki = Pki::new("settle test CA");
    let (_db, running) = coordinator(backend, &pki).await;
    let order = Client::connect_with(
        running.url(),
        Credentials {
            tls: Some(pki.client(Some("order"))),
            token: None,
        },
    )
    .await
    .expect("connect");
    let checkout = Client::connect_with(
        running.url(),
        Credentials {
            tls: Some(pki.client(None)),
            token: Some(Secret::from(CHECKOUT_TOKEN)),
        },
    )
    .await
    .expect("connect");

    // Begun by one caller, committed by another.
    let gid = begin_as(&order, 30_000).await;
    checkout
        .coordinator()
        .commit(checkout.request(pb::CommitRequest {
            gid: gid.clone(),
            wait_ms: 5_000,
        }))
        .await
        .expect("commit");
    let read = checkout.get(&gid).await.expect("get");
    assert_eq!(read.status(), pb::Status::Committed);
    assert_eq!(
        (read.began_by.as_str(), read.decided_by.as_str()),
        ("order", "checkout")
    );

    // Aborted by its caller.
    let tx = checkout
        .begin(Duration::from_secs(30))
        .await
        .expect("begin");
    let gid = tx.gid().to_owned();
    tx.abort("changed my mind").await.expect("abort");
    let read = checkout.get(&gid).await.expect("get");
    assert_eq!(
        (read.began_by.as_str(), read.decided_by.as_str()),
        ("checkout", "checkout")
    );

    // Aborted by the coordinator at its deadline.
    let gid = begin_as(&checkout, 200).await;
    let mut watcher = order.coordinator();
    let read = wait_for_status(&mut watcher, &gid, pb::Status::Aborted).await;
    assert_eq!(
        (read.began_by.as_str(), read.decided_by.as_str()),
        ("checkout", "(deadline)")
    );
    running.stop().await.expect("stop");
}
both!(the_transaction_records_who_began_and_decided_it);
