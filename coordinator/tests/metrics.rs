//! `/metrics` scraped over real HTTP after known work, on SQLite and PostgreSQL: every
//! counter moves by exactly what the work did (README, "Observing Settle"), and the gauges
//! read from the database show what is left unfinished.

use std::{collections::HashMap, time::Duration};

use settle_proto::v1::{self as pb, coordinator_client::CoordinatorClient};
use settle_testkit::{
    Answer, Backend, Recorder, TestDb, both, client, scrape, start_coordinator, test_config, value,
    wait_for_status,
};
use tonic::transport::Channel;

async fn begin(c: &mut CoordinatorClient<Channel>, participant: &str) -> String {
    let gid = c
        .begin(pb::BeginRequest {
            timeout_ms: 30_000,
            ..Default::default()
        })
        .await
        .expect("begin")
        .into_inner()
        .gid;
    c.register_branch(pb::RegisterBranchRequest {
        gid: gid.clone(),
        participant: participant.to_owned(),
        action: "a".to_owned(),
        payload: Default::default(),
    })
    .await
    .expect("register");
    gid
}

async fn commit(c: &mut CoordinatorClient<Channel>, gid: &str) -> pb::Status {
    c.commit(pb::CommitRequest {
        gid: gid.to_owned(),
        wait_ms: 5_000,
    })
    .await
    .expect("commit")
    .into_inner()
    .status()
}

async fn known_work_moves_every_counter_by_exactly_that(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db.url);
    config.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    config.gauges_every = Duration::from_millis(20);
    let coordinator = start_coordinator(config).await;
    let addr = coordinator.metrics_addr().expect("metrics listener");
    let mut c = client(&coordinator.url()).await;
    let ok = Recorder::start().await;
    ok.register(&mut c, "ok").await;
    let flaky = Recorder::start().await;
    flaky.register(&mut c, "flaky").await;
    let saga = Recorder::start().await;
    saga.register(&mut c, "p1").await;
    saga.register(&mut c, "p2").await;
    saga.answer_branch("execute", 2, Answer::Refuse);
    let before = scrape(addr).await;

    for _ in 0..5 {
        let gid = begin(&mut c, "ok").await;
        assert_eq!(commit(&mut c, &gid).await, pb::Status::Committed);
    }
    for _ in 0..3 {
        let gid = begin(&mut c, "ok").await;
        c.abort(pb::AbortRequest {
            gid: gid.clone(),
            reason: "test".to_owned(),
            wait_ms: 5_000,
        })
        .await
        .expect("abort");
        wait_for_status(&mut c, &gid, pb::Status::Aborted).await;
    }
    // Two sagas whose second step is refused: compensated and aborted.
    for n in 0..2 {
        let steps = (1..=2)
            .map(|i| pb::SagaStep {
                participant: format!("p{i}"),
                action: "a".to_owned(),
                ..Default::default()
            })
            .collect();
        let gid = format!("saga-{n}");
        c.submit_saga(pb::SubmitSagaRequest {
            gid: gid.clone(),
            steps,
            timeout_ms: 30_000,
            labels: HashMap::new(),
            wait_ms: 5_000,
        })
        .await
        .expect("submit");
        wait_for_status(&mut c, &gid, pb::Status::Aborted).await;
    }
    // A participant that fails its Confirm twice, then confirms.
    flaky.answer("confirm", Answer::Fail);
    let gid = begin(&mut c, "flaky").await;
    c.commit(pb::CommitRequest {
        gid: gid.clone(),
        wait_ms: 0,
    })
    .await
    .expect("commit");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while settle_testkit::get(&mut c, &gid).await.branches[0].attempts < 2 {
        assert!(tokio::time::Instant::now() < deadline, "never failed twice");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    flaky.answer("confirm", Answer::Ok);
    wait_for_status(&mut c, &gid, pb::Status::Committed).await;
    // Every Confirm but the last failed: at least the two recorded above.
    let failed = flaky.calls_of("confirm", &gid) as f64 - 1.0;
    assert!(failed >= 2.0);
    // Malformed input, answered at the edge.
    let invalid = c
        .begin(pb::BeginRequest {
            timeout_ms: 0,
            ..Default::default()
        })
        .await;
    assert_eq!(
        invalid.expect_err("refused").code(),
        tonic::Code::InvalidArgument
    );
    // One transaction left open, for the gauges.
    let open = c
        .begin(pb::BeginRequest {
            timeout_ms: 60_000,
            ..Default::default()
        })
        .await
        .expect("begin");
    assert!(!open.into_inner().gid.is_empty());

    // The gauges are read every 20 ms; wait for a reading that includes the open one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let after = loop {
        let samples = scrape(addr).await;
        if value(
            &samples,
            r#"settle_transactions_unfinished{status="TRYING"}"#,
        ) == 1.0
        {
            break samples;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gauge never showed the open one"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let delta = |key: &str| value(&after, key) - value(&before, key);

    for (key, expected) in [
        (r#"settle_transactions_begun_total{mode="tcc"}"#, 10.0),
        (r#"settle_transactions_begun_total{mode="saga"}"#, 2.0),
        (
            r#"settle_transactions_finished_total{mode="tcc",outcome="committed"}"#,
            6.0,
        ),
        (
            r#"settle_transactions_finished_total{mode="tcc",outcome="aborted"}"#,
            3.0,
        ),
        (
            r#"settle_transactions_finished_total{mode="saga",outcome="aborted"}"#,
            2.0,
        ),
        (
            r#"settle_transactions_finished_total{mode="saga",outcome="committed"}"#,
            0.0,
        ),
        (
            r#"settle_transaction_duration_seconds_count{mode="tcc",outcome="committed"}"#,
            6.0,
        ),
        (
            r#"settle_branch_calls_total{participant="ok",op="confirm",result="ok"}"#,
            5.0,
        ),
        (
            r#"settle_branch_calls_total{participant="ok",op="cancel",result="ok"}"#,
            3.0,
        ),
        (
            r#"settle_branch_calls_total{participant="flaky",op="confirm",result="error"}"#,
            failed,
        ),
        (
            r#"settle_branch_calls_total{participant="flaky",op="confirm",result="ok"}"#,
            1.0,
        ),
        (
            r#"settle_branch_calls_total{participant="p1",op="execute",result="ok"}"#,
            2.0,
        ),
        (
            r#"settle_branch_calls_total{participant="p2",op="execute",result="refused"}"#,
            2.0,
        ),
        (
            r#"settle_branch_calls_total{participant="p1",op="compensate",result="ok"}"#,
            2.0,
        ),
        (
            r#"settle_branch_call_duration_seconds_count{participant="ok",op="confirm"}"#,
            5.0,
        ),
        (
            r#"settle_phase_two_retries_total{participant="flaky"}"#,
            failed,
        ),
        (r#"settle_phase_two_retries_total{participant="ok"}"#, 0.0),
        (
            r#"grpc_server_handled_total{grpc_service="settle.v1.Coordinator",grpc_method="Begin",grpc_code="OK"}"#,
            10.0,
        ),
        (
            r#"grpc_server_handled_total{grpc_service="settle.v1.Coordinator",grpc_method="Begin",grpc_code="InvalidArgument"}"#,
            1.0,
        ),
        (
            r#"grpc_server_handled_total{grpc_service="settle.v1.Coordinator",grpc_method="Commit",grpc_code="OK"}"#,
            6.0,
        ),
        (
            r#"grpc_server_handled_total{grpc_service="settle.v1.Coordinator",grpc_method="Abort",grpc_code="OK"}"#,
            3.0,
        ),
        (
            r#"grpc_server_handled_total{grpc_service="settle.v1.Coordinator",grpc_method="SubmitSaga",grpc_code="OK"}"#,
            2.0,
        ),
        (
            r#"grpc_server_handling_seconds_count{grpc_service="settle.v1.Coordinator",grpc_method="RegisterBranch"}"#,
            9.0,
        ),
    ] {
        assert_eq!(delta(key), expected, "{key}");
    }
    // Every Begin went through group commit, one batch or many.
    assert_eq!(delta(r#"settle_commit_batch_size_sum{kind="begin"}"#), 10.0);
    assert!(delta(r#"settle_commit_batch_size_count{kind="begin"}"#) >= 1.0);
    assert_eq!(value(&after, "settle_transactions_needs_attention"), 0.0);
    assert_eq!(
        value(
            &after,
            r#"settle_transactions_unfinished{status="COMMITTING"}"#
        ),
        0.0
    );
    assert!(value(&after, "settle_oldest_unfinished_seconds") >= 0.0);
    assert_eq!(value(&after, r#"settle_build_info{version="0.1.0"}"#), 1.0);
    assert!(value(&after, "process_resident_memory_bytes") > 0.0);
    coordinator.stop().await.expect("stop");
}
both!(known_work_moves_every_counter_by_exactly_that);
