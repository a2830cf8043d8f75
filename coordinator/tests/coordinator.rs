//! End-to-end tests of the TCC coordinator over real gRPC, each on SQLite and PostgreSQL.
//! The participants are small recording tonic servers; the initiator is a raw client.

use std::collections::HashMap;

use settle_proto::{
    metadata,
    v1::{
        self as pb, coordinator_client::CoordinatorClient, participant_client::ParticipantClient,
    },
};
use settle_testkit::{
    Answer, Backend, Recorder, TestDb, both, client, code, get, start_coordinator, test_config,
    wait_for_status,
};
use tonic::{Code, transport::Channel};

/// Three recording participants named `p0`, `p1`, `p2`, registered with the coordinator.
async fn participants(client: &mut CoordinatorClient<Channel>) -> Vec<Recorder> {
    let mut recorders = Vec::new();
    for i in 0..3 {
        let recorder = Recorder::start().await;
        recorder.register(client, &format!("p{i}")).await;
        recorders.push(recorder);
    }
    recorders
}

async fn begin(client: &mut CoordinatorClient<Channel>, timeout_ms: u64) -> String {
    client
        .begin(pb::BeginRequest {
            timeout_ms,
            ..Default::default()
        })
        .await
        .expect("begin")
        .into_inner()
        .gid
}

/// Registers one branch per participant and calls its Try at the returned endpoint, as an
/// initiator does. Returns whether every Try succeeded.
async fn try_all(client: &mut CoordinatorClient<Channel>, gid: &str, n: usize) -> bool {
    let mut all_ok = true;
    for i in 0..n {
        let registered = client
            .register_branch(pb::RegisterBranchRequest {
                gid: gid.to_owned(),
                participant: format!("p{i}"),
                action: "reserve".to_owned(),
                payload: format!("item-{i}").into_bytes().into(),
            })
            .await
            .expect("register branch")
            .into_inner();
        assert_eq!(registered.branch_id, i as u32 + 1);
        let mut participant = ParticipantClient::connect(registered.endpoint)
            .await
            .expect("connect participant");
        let tried = participant
            .r#try(pb::BranchRequest {
                gid: gid.to_owned(),
                branch_id: registered.branch_id,
                action: "reserve".to_owned(),
                payload: Default::default(),
            })
            .await;
        all_ok &= tried.is_ok();
    }
    all_ok
}

async fn commit(
    client: &mut CoordinatorClient<Channel>,
    gid: &str,
) -> Result<pb::Status, tonic::Status> {
    client
        .commit(pb::CommitRequest {
            gid: gid.to_owned(),
            wait_ms: 10_000,
        })
        .await
        .map(|r| r.into_inner().status())
}

async fn abort(
    client: &mut CoordinatorClient<Channel>,
    gid: &str,
) -> Result<pb::Status, tonic::Status> {
    client
        .abort(pb::AbortRequest {
            gid: gid.to_owned(),
            reason: "test".to_owned(),
            wait_ms: 10_000,
        })
        .await
        .map(|r| r.into_inner().status())
}

async fn commit_confirms_every_branch_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut client = client(&coordinator.url()).await;
    let recorders = participants(&mut client).await;

    let gid = begin(&mut client, 30_000).await;
    assert!(try_all(&mut client, &gid, 3).await);
    assert_eq!(
        commit(&mut client, &gid).await.expect("commit"),
        pb::Status::Committed
    );

    let tx = get(&mut client, &gid).await;
    assert_eq!(tx.status(), pb::Status::Committed);
    assert_eq!(tx.branches.len(), 3);
    for (i, recorder) in recorders.iter().enumerate() {
        assert_eq!(recorder.calls_of("confirm", &gid), 1, "p{i} confirmed once");
        assert_eq!(recorder.calls_of("cancel", &gid), 0, "p{i} never cancelled");
        assert_eq!(tx.branches[i].status(), pb::BranchStatus::Confirmed);
        assert_eq!(tx.branches[i].participant, format!("p{i}"));
        let confirm = recorder
            .calls()
            .into_iter()
            .find(|c| c.op == "confirm")
            .expect("confirm");
        assert_eq!(
            confirm.op_header.as_deref(),
            Some("confirm"),
            "{} metadata",
            metadata::OP
        );
    }
    coordinator.stop().await.expect("stop");
}
both!(commit_confirms_every_branch_once);

async fn abort_cancels_every_branch_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut client = client(&coordinator.url()).await;
    let recorders = participants(&mut client).await;

    let gid = begin(&mut client, 30_000).await;
    assert!(try_all(&mut client, &gid, 3).await);
    assert_eq!(
        abort(&mut client, &gid).await.expect("abort"),
        pb::Status::Aborted
    );

    let tx = get(&mut client, &gid).await;
    assert_eq!(tx.status(), pb::Status::Aborted);
    assert_eq!(tx.reason, "test");
    for recorder in &recorders {
        assert_eq!(recorder.calls_of("cancel", &gid), 1);
        assert_eq!(recorder.calls_of("confirm", &gid), 0);
    }
    assert!(
        tx.branches
            .iter()
            .all(|b| b.status() == pb::BranchStatus::Cancelled)
    );
    coordinator.stop().await.expect("stop");
}
both!(abort_cancels_every_branch_once);

async fn try_refusal_leads_to_abort(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut client = client(&coordinator.url()).await;
    let recorders = participants(&mut client).await;
    recorders[1].answer("try", Answer::Refuse);

    let gid = begin(&mut client, 30_000).await;
    assert!(!try_all(&mut client, &gid, 3).await, "p1 refuses its Try");
    assert_eq!(
        abort(&mut client, &gid).await.expect("abort"),
        pb::Status::Aborted
    );
    for recorder in &recorders {
        assert_eq!(
            recorder.calls_of("cancel", &gid),
            1,
            "every branch, refused or not, is cancelled"
        );
        assert_eq!(recorder.calls_of("confirm", &gid), 0);
    }
    coordinator.stop().await.expect("stop");
}
both!(try_refusal_leads_to_abort);

async fn register_after_resolution_is_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut client = client(&coordinator.url()).await;
    let _recorders = participants(&mut client).await;
    let register = |gid: String| pb::RegisterBranchRequest {
        gid,
        participant: "p0".to_owned(),
        action: "late".to_owned(),
        payload: Default::default(),
    };

    let committed = begin(&mut client, 30_000).await;
    assert!(try_all(&mut client, &committed, 1).await);
    commit(&mut client, &committed).await.expect("commit");
    assert_eq!(
        code(client.register_branch(register(committed.clone())).await),
        Code::FailedPrecondition
    );

    let aborted = begin(&mut client, 30_000).await;
    abort(&mut client, &aborted).await.expect("abort");
    assert_eq!(
        code(client.register_branch(register(aborted.clone())).await),
        Code::FailedPrecondition
    );

    // A deadline in the past: registration is refused by the same compare-and-set, whether
    // or not the recovery loop has aborted the transaction yet.
    let expired = begin(&mut client, 1).await;
    let now_past = get(&mut client, &expired).await.deadline_ms;
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        <= now_past + 5
    {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        code(client.register_branch(register(expired.clone())).await),
        Code::FailedPrecondition
    );
    for gid in [&committed, &aborted, &expired] {
        let tx = get(&mut client, gid).await;
        assert!(
            tx.branches.iter().all(|b| b.action != "late"),
            "no late branch was stored"
        );
    }
    coordinator.stop().await.expect("stop");
}
both!(register_after_resolution_is_refused);

async fn commit_and_abort_are_idempotent(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut client = client(&coordinator.url()).await;
    let recorders = participants(&mut client).await;

    let committed = begin(&mut client, 30_000).await;
    assert!(try_all(&mut client, &committed, 2).await);
    for _ in 0..3 {
        assert_eq!(
            commit(&mut client, &committed).await.expect("commit"),
            pb::Status::Committed
        );
    }
    assert_eq!(
        code(abort(&mut client, &committed).await),
        Code::FailedPrecondition
    );

    let aborted = begin(&mut client, 30_000).await;
    assert!(try_all(&mut client, &aborted, 2).await);
    for _ in 0..3 {
        assert_eq!(
            abort(&mut client, &aborted).await.expect("abort"),
            pb::Status::Aborted
        );
    }
    assert_eq!(
        code(commit(&mut client, &aborted).await),
        Code::FailedPrecondition
    );

    for recorder in &recorders[..2] {
        assert_eq!(recorder.calls_of("confirm", &committed), 1);
        assert_eq!(recorder.calls_of("cancel", &committed), 0);
        assert_eq!(recorder.calls_of("cancel", &aborted), 1);
        assert_eq!(recorder.calls_of("confirm", &aborted), 0);
    }
    // A repeated Begin with a client-chosen gid returns the same transaction.
    let request = pb::BeginRequest {
        gid: "order-42".to_owned(),
        timeout_ms: 30_000,
        ..Default::default()
    };
    let first = client
        .begin(request.clone())
        .await
        .expect("begin")
        .into_inner();
    let again = client
        .begin(request)
        .await
        .expect("begin again")
        .into_inner();
    assert!(first.created && !again.created);
    assert_eq!(
        (first.gid, first.deadline_ms),
        (again.gid, again.deadline_ms)
    );
    coordinator.stop().await.expect("stop");
}
both!(commit_and_abort_are_idempotent);

async fn commit_racing_abort_has_one_winner(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut client = client(&coordinator.url()).await;
    let recorders = participants(&mut client).await;

    let mut gids = Vec::new();
    for _ in 0..20 {
        let gid = begin(&mut client, 30_000).await;
        assert!(try_all(&mut client, &gid, 2).await);
        gids.push(gid);
    }
    let mut tasks = Vec::new();
    for gid in &gids {
        for i in 0..8 {
            let mut client = client.clone();
            let gid = gid.clone();
            tasks.push(tokio::spawn(async move {
                let won = if i % 2 == 0 {
                    commit(&mut client, &gid).await.ok().map(|_| "commit")
                } else {
                    abort(&mut client, &gid).await.ok().map(|_| "abort")
                };
                (gid, won)
            }));
        }
    }
    let mut outcomes: HashMap<String, Vec<&str>> = HashMap::new();
    for task in tasks {
        let (gid, won) = task.await.expect("task");
        outcomes.entry(gid).or_default().extend(won);
    }
    for gid in &gids {
        let winners = &outcomes[gid];
        assert!(!winners.is_empty(), "{gid}: some call succeeded");
        assert!(
            winners.iter().all(|w| *w == winners[0]),
            "{gid}: one decision only, got {winners:?}"
        );
        let (expected_status, expected_op, other_op) = match winners[0] {
            "commit" => (pb::Status::Committed, "confirm", "cancel"),
            _ => (pb::Status::Aborted, "cancel", "confirm"),
        };
        let tx = wait_for_status(&mut client, gid, expected_status).await;
        assert_eq!(tx.status(), expected_status);
        for recorder in &recorders[..2] {
            assert_eq!(
                recorder.calls_of(expected_op, gid),
                1,
                "{gid}: {expected_op} once"
            );
            assert_eq!(
                recorder.calls_of(other_op, gid),
                0,
                "{gid}: never {other_op}"
            );
        }
    }
    coordinator.stop().await.expect("stop");
}
both!(commit_racing_abort_has_one_winner);

async fn restart_keeps_every_transaction(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut c = client(&coordinator.url()).await;
    let recorders = participants(&mut c).await;

    let committed = begin(&mut c, 30_000).await;
    assert!(try_all(&mut c, &committed, 2).await);
    commit(&mut c, &committed).await.expect("commit");
    let aborted = begin(&mut c, 30_000).await;
    assert!(try_all(&mut c, &aborted, 3).await);
    abort(&mut c, &aborted).await.expect("abort");
    let trying = begin(&mut c, 60_000).await;
    assert!(try_all(&mut c, &trying, 3).await);
    let before: Vec<pb::Transaction> = {
        let mut v = Vec::new();
        for gid in [&committed, &aborted, &trying] {
            v.push(get(&mut c, gid).await);
        }
        v
    };
    coordinator.stop().await.expect("stop");

    let restarted = start_coordinator(test_config(&db.url)).await;
    let mut c = client(&restarted.url()).await;
    for tx in &before {
        let after = get(&mut c, &tx.gid).await;
        assert_eq!(after.status(), tx.status());
        assert_eq!(after.deadline_ms, tx.deadline_ms);
        assert_eq!(after.branches.len(), tx.branches.len());
        for (a, b) in after.branches.iter().zip(&tx.branches) {
            assert_eq!(
                (a.branch_id, &a.participant, a.status),
                (b.branch_id, &b.participant, b.status)
            );
        }
    }
    // The TRYING transaction is still live and commits on the new instance.
    assert_eq!(
        commit(&mut c, &trying).await.expect("commit"),
        pb::Status::Committed
    );
    for recorder in &recorders {
        assert_eq!(recorder.calls_of("confirm", &trying), 1);
    }
    restarted.stop().await.expect("stop");
}
both!(restart_keeps_every_transaction);

async fn deadline_aborts_and_cancels_every_branch(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut client = client(&coordinator.url()).await;
    let recorders = participants(&mut client).await;

    let gid = begin(&mut client, 500).await;
    assert!(try_all(&mut client, &gid, 3).await);
    // The initiator vanishes; the recovery loop aborts at the deadline.
    let tx = wait_for_status(&mut client, &gid, pb::Status::Aborted).await;
    assert_eq!(tx.reason, "deadline passed");
    for recorder in &recorders {
        assert_eq!(recorder.calls_of("cancel", &gid), 1);
        assert_eq!(recorder.calls_of("confirm", &gid), 0);
    }
    assert_eq!(
        code(commit(&mut client, &gid).await),
        Code::FailedPrecondition
    );
    coordinator.stop().await.expect("stop");
}
both!(deadline_aborts_and_cancels_every_branch);

async fn bad_input_gets_exact_codes_and_the_server_keeps_serving(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db.url);
    config.limits.max_payload = 1024;
    config.limits.max_branches = 2;
    let coordinator = start_coordinator(config).await;
    let mut c = client(&coordinator.url()).await;
    let _recorders = participants(&mut c).await;
    let live = begin(&mut c, 30_000).await;
    let committed = begin(&mut c, 30_000).await;
    commit(&mut c, &committed).await.expect("commit");

    let begin_with = |gid: &str, timeout_ms: u64| pb::BeginRequest {
        gid: gid.to_owned(),
        timeout_ms,
        ..Default::default()
    };
    let register = |gid: &str, participant: &str, payload: usize| pb::RegisterBranchRequest {
        gid: gid.to_owned(),
        participant: participant.to_owned(),
        action: "a".to_owned(),
        payload: vec![0u8; payload].into(),
    };
    let long_gid = "g".repeat(129);
    let cases: Vec<(&str, Code, Result<(), tonic::Status>)> = vec![
        (
            "gid too long",
            Code::InvalidArgument,
            c.begin(begin_with(&long_gid, 1000)).await.map(drop),
        ),
        (
            "gid with space",
            Code::InvalidArgument,
            c.begin(begin_with("a b", 1000)).await.map(drop),
        ),
        (
            "gid with slash",
            Code::InvalidArgument,
            c.begin(begin_with("a/b", 1000)).await.map(drop),
        ),
        (
            "timeout zero",
            Code::InvalidArgument,
            c.begin(begin_with("", 0)).await.map(drop),
        ),
        (
            "timeout over 24h",
            Code::InvalidArgument,
            c.begin(begin_with("", 24 * 3600 * 1000 + 1))
                .await
                .map(drop),
        ),
        (
            "saga mode on Begin",
            Code::InvalidArgument,
            c.begin(pb::BeginRequest {
                mode: pb::Mode::Saga as i32,
                timeout_ms: 1000,
                ..Default::default()
            })
            .await
            .map(drop),
        ),
        (
            "empty participant",
            Code::InvalidArgument,
            c.register_branch(register(&live, "", 1)).await.map(drop),
        ),
        (
            "payload over limit",
            Code::InvalidArgument,
            c.register_branch(register(&live, "p0", 1025))
                .await
                .map(drop),
        ),
        (
            "bad gid on register",
            Code::InvalidArgument,
            c.register_branch(register("x y", "p0", 1)).await.map(drop),
        ),
        (
            "unknown participant",
            Code::NotFound,
            c.register_branch(register(&live, "nobody", 1))
                .await
                .map(drop),
        ),
        (
            "unknown gid on register",
            Code::NotFound,
            c.register_branch(register("missing", "p0", 1))
                .await
                .map(drop),
        ),
        (
            "unknown gid on commit",
            Code::NotFound,
            c.commit(pb::CommitRequest {
                gid: "missing".into(),
                wait_ms: 0,
            })
            .await
            .map(drop),
        ),
        (
            "unknown gid on abort",
            Code::NotFound,
            c.abort(pb::AbortRequest {
                gid: "missing".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        ),
        (
            "unknown gid on get",
            Code::NotFound,
            c.get(pb::GetRequest {
                gid: "missing".into(),
            })
            .await
            .map(drop),
        ),
        (
            "empty gid on commit",
            Code::InvalidArgument,
            c.commit(pb::CommitRequest {
                gid: String::new(),
                wait_ms: 0,
            })
            .await
            .map(drop),
        ),
        (
            "wait over a minute",
            Code::InvalidArgument,
            c.commit(pb::CommitRequest {
                gid: live.clone(),
                wait_ms: 60_001,
            })
            .await
            .map(drop),
        ),
        (
            "register after commit",
            Code::FailedPrecondition,
            c.register_branch(register(&committed, "p0", 1))
                .await
                .map(drop),
        ),
        (
            "participant without endpoint",
            Code::InvalidArgument,
            c.register_participant(pb::RegisterParticipantRequest {
                name: "x".into(),
                endpoint: "nowhere".into(),
            })
            .await
            .map(drop),
        ),
        (
            "participant with bad name",
            Code::InvalidArgument,
            c.register_participant(pb::RegisterParticipantRequest {
                name: "a b".into(),
                endpoint: "http://127.0.0.1:1".into(),
            })
            .await
            .map(drop),
        ),
    ];
    for (what, expected, result) in cases {
        assert_eq!(code(result), expected, "{what}");
    }
    // Branch limit: two allowed, the third refused.
    c.register_branch(register(&live, "p0", 1))
        .await
        .expect("first branch");
    c.register_branch(register(&live, "p1", 1))
        .await
        .expect("second branch");
    assert_eq!(
        code(c.register_branch(register(&live, "p2", 1)).await),
        Code::FailedPrecondition
    );

    // Nothing was lost and the server still serves.
    assert_eq!(get(&mut c, &live).await.branches.len(), 2);
    assert_eq!(
        get(&mut c, &committed).await.status(),
        pb::Status::Committed
    );
    let fresh = begin(&mut c, 30_000).await;
    assert_eq!(
        commit(&mut c, &fresh).await.expect("commit"),
        pb::Status::Committed
    );
    coordinator.stop().await.expect("stop");
}
both!(bad_input_gets_exact_codes_and_the_server_keeps_serving);

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let db = TestDb::new(Backend::Sqlite).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;

    let channel = Channel::from_shared(coordinator.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "settle.v1.Coordinator".to_owned(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(
        serving.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = stream
        .message()
        .await
        .expect("message")
        .expect("a response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "settle.v1.Coordinator",
        "settle.v1.Participant",
        "settle.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} listed in {names:?}"
        );
    }
    coordinator.stop().await.expect("stop");
}

async fn begin_registers_its_branches_in_one_write(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut c = client(&coordinator.url()).await;
    let recorders = participants(&mut c).await;
    let spec = |i: usize| pb::BranchSpec {
        participant: format!("p{i}"),
        action: "reserve".to_owned(),
        payload: format!("item-{i}").into_bytes().into(),
    };
    let request = pb::BeginRequest {
        gid: "with-branches".to_owned(),
        timeout_ms: 30_000,
        branches: (0..3).map(spec).collect(),
        ..Default::default()
    };
    let begun = c.begin(request.clone()).await.expect("begin").into_inner();
    let ids: Vec<u32> = begun.branches.iter().map(|b| b.branch_id).collect();
    assert_eq!(ids, [1, 2, 3]);
    for (branch, recorder) in begun.branches.iter().zip(&recorders) {
        assert_eq!(branch.endpoint, recorder.url);
    }
    // Repeated: the same transaction and branches, nothing added.
    let again = c.begin(request).await.expect("begin again").into_inner();
    assert!(!again.created);
    assert_eq!(again.branches, begun.branches);
    // More can still be registered one by one.
    let fourth = c
        .register_branch(pb::RegisterBranchRequest {
            gid: begun.gid.clone(),
            participant: "p0".to_owned(),
            action: "extra".to_owned(),
            payload: Default::default(),
        })
        .await
        .expect("register")
        .into_inner();
    assert_eq!(fourth.branch_id, 4);
    assert_eq!(
        commit(&mut c, &begun.gid).await.expect("commit"),
        pb::Status::Committed
    );
    assert_eq!(recorders[0].calls_of("confirm", &begun.gid), 2);
    assert_eq!(recorders[1].calls_of("confirm", &begun.gid), 1);
    assert_eq!(
        get(&mut c, &begun.gid).await.branches[2].payload.as_ref(),
        b"item-2"
    );

    // A bad branch refuses the whole Begin and creates nothing.
    let mut bad = pb::BeginRequest {
        gid: "bad-branches".to_owned(),
        timeout_ms: 30_000,
        branches: vec![
            spec(0),
            pb::BranchSpec {
                participant: "nobody".into(),
                ..spec(1)
            },
        ],
        ..Default::default()
    };
    assert_eq!(code(c.begin(bad.clone()).await), Code::NotFound);
    bad.branches[1].participant = String::new();
    assert_eq!(code(c.begin(bad.clone()).await), Code::InvalidArgument);
    bad.branches = (0..65).map(|i| spec(i % 3)).collect();
    assert_eq!(code(c.begin(bad).await), Code::InvalidArgument);
    assert_eq!(
        code(
            c.get(pb::GetRequest {
                gid: "bad-branches".into()
            })
            .await
        ),
        Code::NotFound
    );
    coordinator.stop().await.expect("stop");
}
both!(begin_registers_its_branches_in_one_write);
