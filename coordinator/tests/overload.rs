//! Overload protection (README, "Limits under load"), on SQLite and PostgreSQL, with limits
//! small enough to reach: a start over `--max-in-flight` or over `--begin-rate` is refused
//! `RESOURCE_EXHAUSTED` with a `RetryInfo`, the coordinator keeps serving, and what it
//! admitted finishes; a participant that hangs holds no more calls than
//! `--participant-concurrency`, and every held transaction commits once it answers.

use std::time::Duration;

use settle_coordinator::{Config, Running, admission::AdmissionConfig};
use settle_proto::v1::{self as pb, coordinator_client::CoordinatorClient};
use settle_testkit::{
    Answer, Backend, Recorder, TestDb, both, client, scrape, start_coordinator, test_config, value,
    wait_for_status,
};
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

/// A coordinator on `config`, a client of it, and the recording participant `p`.
async fn serving_p(config: Config) -> (Running, CoordinatorClient<Channel>, Recorder) {
    let coordinator = start_coordinator(config).await;
    let mut c = client(&coordinator.url()).await;
    let p = Recorder::start().await;
    p.register(&mut c, "p").await;
    (coordinator, c, p)
}

async fn begin(c: &mut CoordinatorClient<Channel>) -> Result<String, Status> {
    Ok(c.begin(pb::BeginRequest {
        timeout_ms: 30_000,
        branches: vec![pb::BranchSpec {
            participant: "p".to_owned(),
            action: "a".to_owned(),
            payload: Default::default(),
        }],
        ..Default::default()
    })
    .await?
    .into_inner()
    .gid)
}

async fn commit(c: &mut CoordinatorClient<Channel>, gid: &str, wait_ms: u64) -> pb::Status {
    c.commit(pb::CommitRequest {
        gid: gid.to_owned(),
        wait_ms,
    })
    .await
    .expect("commit is never refused for load")
    .into_inner()
    .status()
}

/// The `RetryInfo` delay of a refusal for load.
fn retry_after(status: &Status) -> Duration {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .unwrap_or_else(|| panic!("no RetryInfo delay in {status:?}"))
}

async fn a_start_over_the_in_flight_limit_is_refused_and_admitted_work_finishes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db.url);
    config.admission = AdmissionConfig {
        max_in_flight: Some(2),
        ..AdmissionConfig::default()
    };
    config.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let (coordinator, mut c, p) = serving_p(config).await;
    let metrics = coordinator.metrics_addr().expect("metrics");

    let first = begin(&mut c).await.expect("first admitted");
    let second = begin(&mut c).await.expect("second admitted");
    let refused = begin(&mut c).await.expect_err("a third is over the limit");
    assert!(retry_after(&refused) > Duration::ZERO);
    assert!(
        refused.message().contains("in flight"),
        "{}",
        refused.message()
    );
    let saga = c
        .submit_saga(pb::SubmitSagaRequest {
            steps: vec![pb::SagaStep {
                participant: "p".to_owned(),
                action: "a".to_owned(),
                ..Default::default()
            }],
            timeout_ms: 30_000,
            ..Default::default()
        })
        .await
        .expect_err("a saga is a start too");
    retry_after(&saga);

    // Still serving, and what it admitted goes on to the end.
    let mut got = c
        .get(pb::GetRequest { gid: first.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.status(), pb::Status::Trying);
    assert_eq!(commit(&mut c, &first, 5_000).await, pb::Status::Committed);
    let aborted = c
        .abort(pb::AbortRequest {
            gid: second.clone(),
            reason: "test".to_owned(),
            wait_ms: 5_000,
        })
        .await
        .expect("abort is never refused for load")
        .into_inner()
        .status();
    assert_eq!(aborted, pb::Status::Aborted);

    // Their places are free again.
    let third = begin(&mut c)
        .await
        .expect("admitted once the others finished");
    assert_eq!(commit(&mut c, &third, 5_000).await, pb::Status::Committed);
    got = c
        .get(pb::GetRequest { gid: second })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.status(), pb::Status::Aborted);
    assert_eq!(p.calls_of("confirm", &first), 1);

    let samples = scrape(metrics).await;
    let refusals = r#"settle_admission_refused_total{limit="in_flight"}"#;
    assert_eq!(value(&samples, refusals), 2.0, "the Begin and the saga");
    let code = r#"grpc_server_handled_total{grpc_service="settle.v1.Coordinator",grpc_method="Begin",grpc_code="ResourceExhausted"}"#;
    assert_eq!(value(&samples, code), 1.0);
    // Both refusals timed (their times are for BENCHMARKS.md, not for a test).
    let timed = "settle_admission_refusal_seconds_count";
    assert_eq!(value(&samples, timed), 2.0);
    coordinator.stop().await.expect("stop");
}
both!(a_start_over_the_in_flight_limit_is_refused_and_admitted_work_finishes);

async fn the_begin_rate_refuses_past_the_burst_and_says_when_to_retry(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db.url);
    // One start every ten seconds, two at once: the third start in a row is refused and
    // told to come back in about ten seconds.
    config.admission = AdmissionConfig {
        max_in_flight: None,
        begin_rate: Some(0.1),
        begin_burst: 2,
    };
    let (coordinator, mut c, _p) = serving_p(config).await;

    let gids = [
        begin(&mut c).await.expect("burst 1"),
        begin(&mut c).await.expect("burst 2"),
    ];
    let refused = begin(&mut c).await.expect_err("over the burst");
    let after = retry_after(&refused);
    assert!(
        after > Duration::from_secs(5) && after <= Duration::from_secs(10),
        "{after:?}"
    );
    for gid in &gids {
        assert_eq!(commit(&mut c, gid, 5_000).await, pb::Status::Committed);
    }
    coordinator.stop().await.expect("stop");
}
both!(the_begin_rate_refuses_past_the_burst_and_says_when_to_retry);

async fn a_hung_participant_holds_no_more_calls_than_its_limit(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db.url);
    config.participant_concurrency = Some(2);
    // Long enough that no held call times out before the test releases them: a timed-out
    // call's place is taken by the next one, which could reach the participant before it
    // has seen the first one go.
    config.call_timeout = Duration::from_secs(10);
    config.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let (coordinator, mut c, p) = serving_p(config).await;
    let metrics = coordinator.metrics_addr().expect("metrics");
    p.answer("confirm", Answer::Hang);

    let mut gids = Vec::new();
    for _ in 0..6 {
        let gid = begin(&mut c).await.expect("begin");
        assert_eq!(commit(&mut c, &gid, 50).await, pb::Status::Committing);
        gids.push(gid);
    }
    // Six Confirms are due; two are at the participant, the rest wait their turn.
    p.wait_open(2).await;
    let in_flight = r#"settle_branch_calls_in_flight{participant="p"}"#;
    assert_eq!(value(&scrape(metrics).await, in_flight), 2.0);

    p.release();
    for gid in &gids {
        wait_for_status(&mut c, gid, pb::Status::Committed).await;
    }
    assert_eq!(p.most_open(), 2, "never more than the limit at once");
    assert_eq!(value(&scrape(metrics).await, in_flight), 0.0);
    coordinator.stop().await.expect("stop");
}
both!(a_hung_participant_holds_no_more_calls_than_its_limit);
