//! TLS and caller authentication on the Coordinator API, with certificates made at test time.

use settle::{Client, Credentials};
use settle_coordinator::Security;
use settle_proto::v1::{self as pb, coordinator_client::CoordinatorClient};
use settle_security::connect::Target;
use settle_testkit::{Backend, Pki, TestDb, start_coordinator, test_config};
use tonic::Code;

#[tokio::test]
async fn mutual_tls_knows_callers_and_refuses_the_unknown() {
    let db = TestDb::new(Backend::Sqlite).await;
    let pki = Pki::new("settle test CA");
    let mut config = test_config(&db.url);
    config.security = Security {
        tls: Some(pki.server("coordinator")),
        ..Security::default()
    };
    let running = start_coordinator(config).await;
    assert!(running.url().starts_with("https://"), "{}", running.url());

    let order = Client::connect_with(
        running.url(),
        Credentials {
            tls: Some(pki.client(Some("order"))),
            token: None,
        },
    )
    .await
    .expect("a client with a certificate connects");
    let tx = order
        .begin(std::time::Duration::from_secs(30))
        .await
        .expect("an authenticated caller begins");
    let gid = tx.gid().to_owned();
    assert_eq!(
        order.get(&gid).await.expect("get").status(),
        pb::Status::Trying
    );
    tx.abort("test").await.expect("abort");

    // TLS without a client certificate: the connection is made, every call refused.
    let channel = Target::new(&running.url(), Some(&pki.client(None)))
        .expect("target")
        .connect()
        .await
        .expect("TLS without a certificate connects");
    let refused = CoordinatorClient::new(channel)
        .begin(pb::BeginRequest {
            timeout_ms: 30_000,
            ..Default::default()
        })
        .await
        .expect_err("no credentials");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // A registration under another caller's name is refused.
    let mut coordinator = order.coordinator();
    let hijack = coordinator
        .register_participant(order.request(pb::RegisterParticipantRequest {
            name: "payment".to_owned(),
            endpoint: "http://127.0.0.1:1".to_owned(),
        }))
        .await
        .expect_err("not order's name");
    assert_eq!(hijack.code(), Code::PermissionDenied, "{hijack:?}");

    // A certificate from another CA fails the handshake: nothing reaches the service.
    // The stranger trusts our server's CA, but its own certificate is another CA's.
    let other = Pki::new("another CA");
    let foreign = other.issue("order");
    let stranger = settle_security::ClientTls::load(settle_security::tls::ClientTlsFiles {
        ca: pki.ca(),
        cert: Some(foreign.cert),
        key: Some(foreign.key),
    })
    .expect("client TLS");
    let result = async {
        let channel = Target::new(&running.url(), Some(&stranger))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        CoordinatorClient::new(channel)
            .begin(pb::BeginRequest {
                timeout_ms: 30_000,
                ..Default::default()
            })
            .await
            .map_err(|s| s.code().to_string())
    }
    .await;
    assert!(result.is_err(), "a foreign certificate is refused");
    running.stop().await.expect("stop");
}
