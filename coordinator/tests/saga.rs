//! Saga mode end to end, each test on SQLite and PostgreSQL: forward steps in order,
//! compensation in reverse after a refusal or the deadline, retries across a participant
//! outage and a coordinator restart, parallel groups, input rules, the lease fence, and —
//! through the SDK's barrier on a real table — duplicate and out-of-order deliveries.
//!
//! Most participants are one recording tonic server registered under several names, so that
//! a single log holds the order of every call; the business-data test uses SDK participants.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};
use settle::{
    Barrier, Branch, SagaOnly, SagaParticipant, db::Database, participant::Error as StepError,
    saga::Step,
};
use settle_proto::v1::{
    self as pb,
    coordinator_client::CoordinatorClient,
    participant_client::ParticipantClient,
    participant_server::{Participant, ParticipantServer},
};
use settle_testkit::{
    Answer, Backend, Recorder, TestDb, both, client, code, get, start_coordinator, test_config,
    wait_for_status,
};
use sqlx::{AnyConnection, Row};
use tokio::net::TcpListener;
use tonic::{Code, Request, Response, Status, transport::Channel};

/// Registers the recorder with the coordinator as `p1` … `pN`, so that one log holds the
/// order of every call.
async fn register(log: &Recorder, c: &mut CoordinatorClient<Channel>, n: u32) {
    for i in 1..=n {
        log.register(c, &format!("p{i}")).await;
    }
}

/// Step `i` on participant `p{i}`, payload `do-{i}`.
fn step(i: u32, group: u32) -> pb::SagaStep {
    pb::SagaStep {
        participant: format!("p{i}"),
        action: "act".to_owned(),
        payload: format!("do-{i}").into_bytes().into(),
        compensation_payload: Default::default(),
        group,
    }
}

fn sequential(n: u32) -> Vec<pb::SagaStep> {
    (1..=n).map(|i| step(i, 0)).collect()
}

async fn submit(
    c: &mut CoordinatorClient<Channel>,
    gid: &str,
    steps: Vec<pb::SagaStep>,
    timeout_ms: u64,
    wait_ms: u64,
) -> Result<pb::SubmitSagaResponse, Status> {
    c.submit_saga(pb::SubmitSagaRequest {
        gid: gid.to_owned(),
        steps,
        timeout_ms,
        labels: HashMap::new(),
        wait_ms,
    })
    .await
    .map(Response::into_inner)
}

fn statuses(tx: &pb::Transaction) -> Vec<pb::BranchStatus> {
    tx.branches.iter().map(pb::Branch::status).collect()
}

async fn all_steps_execute_once_in_order_and_commit(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut c = client(&coordinator.url()).await;
    let log = Recorder::start().await;
    register(&log, &mut c, 3).await;

    let submitted = submit(&mut c, "saga-ok", sequential(3), 30_000, 10_000)
        .await
        .expect("submit");
    assert_eq!(submitted.gid, "saga-ok");
    assert_eq!(submitted.status(), pb::Status::Committed);
    assert_eq!(
        log.ops_of("saga-ok"),
        [("execute", 1), ("execute", 2), ("execute", 3)]
    );
    let calls = log.calls();
    for (i, call) in (1..).zip(&calls) {
        assert_eq!(call.payload, format!("do-{i}").into_bytes());
        assert_eq!(call.op_header.as_deref(), Some("execute"));
    }

    let tx = get(&mut c, "saga-ok").await;
    assert_eq!(tx.mode(), pb::Mode::Saga);
    assert_eq!(tx.status(), pb::Status::Committed);
    assert_eq!(tx.next_attempt_at_ms, 0, "nothing left to schedule");
    assert_eq!(statuses(&tx), [pb::BranchStatus::Executed; 3]);
    let participants: Vec<&str> = tx.branches.iter().map(|b| b.participant.as_str()).collect();
    assert_eq!(participants, ["p1", "p2", "p3"]);

    // A generated gid works the same way.
    let generated = submit(&mut c, "", sequential(1), 30_000, 10_000)
        .await
        .expect("submit");
    assert_eq!(generated.gid.len(), 26);
    assert_eq!(generated.status(), pb::Status::Committed);
    coordinator.stop().await.expect("stop");
}
both!(all_steps_execute_once_in_order_and_commit);

async fn a_refused_step_compensates_the_earlier_ones_in_reverse(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut c = client(&coordinator.url()).await;
    let log = Recorder::start().await;
    register(&log, &mut c, 4).await;
    log.answer_branch("execute", 3, Answer::Refuse);

    let mut steps = sequential(4);
    steps[0].compensation_payload = b"undo-1".to_vec().into();
    let submitted = submit(&mut c, "saga-refused", steps, 30_000, 10_000)
        .await
        .expect("submit");
    assert_eq!(submitted.status(), pb::Status::Aborted);
    // The refused step gets a Compensate too: its Execute rolled back its own barrier row,
    // so it is an empty compensation, and it blocks that Execute should it arrive again.
    assert_eq!(
        log.ops_of("saga-refused"),
        [
            ("execute", 1),
            ("execute", 2),
            ("execute", 3),
            ("compensate", 3),
            ("compensate", 2),
            ("compensate", 1),
        ],
        "step 4 is never called"
    );
    let payload_of = |branch_id| {
        log.calls()
            .into_iter()
            .find(|c| c.op == "compensate" && c.branch_id == branch_id)
            .expect("compensate call")
    };
    assert_eq!(payload_of(1).payload, b"undo-1", "the compensation payload");
    assert_eq!(payload_of(2).payload, b"do-2", "the forward payload again");
    assert_eq!(payload_of(2).op_header.as_deref(), Some("compensate"));

    let tx = get(&mut c, "saga-refused").await;
    assert_eq!(tx.status(), pb::Status::Aborted);
    assert!(tx.reason.contains("refused"), "reason: {}", tx.reason);
    assert!(
        tx.reason.contains("p3"),
        "reason names the step: {}",
        tx.reason
    );
    use pb::BranchStatus::{Compensated, Pending};
    assert_eq!(
        statuses(&tx),
        [Compensated, Compensated, Compensated, Pending]
    );
    assert!(tx.branches[2].last_error.contains("refused"));
    coordinator.stop().await.expect("stop");
}
both!(a_refused_step_compensates_the_earlier_ones_in_reverse);

async fn a_participant_down_during_compensation_gets_it_when_back(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db.url);
    config.retry.attention_after_attempts = 2;
    let coordinator = start_coordinator(config).await;
    let mut c = client(&coordinator.url()).await;
    let log = Recorder::start().await;
    register(&log, &mut c, 3).await;
    log.answer_branch("execute", 3, Answer::Refuse);
    log.answer_branch("compensate", 1, Answer::Fail);

    let submitted = submit(&mut c, "saga-down", sequential(3), 30_000, 0)
        .await
        .expect("submit");
    assert!(
        matches!(
            submitted.status(),
            pb::Status::Running | pb::Status::Compensating
        ),
        "{:?}",
        submitted.status()
    );
    log.wait_until("three failed compensations of step 1", |calls| {
        calls
            .iter()
            .filter(|c| c.op == "compensate" && c.branch_id == 1)
            .count()
            >= 3
    })
    .await;
    let tx = get(&mut c, "saga-down").await;
    assert_eq!(tx.status(), pb::Status::Compensating);
    assert!(tx.next_attempt_at_ms > 0, "a retry is scheduled");
    assert!(tx.needs_attention, "compensation escalates like phase two");
    assert!(tx.branches[0].attempts >= 2, "{:?}", tx.branches[0]);
    assert!(
        tx.branches[0].last_error.contains("Unavailable"),
        "{:?}",
        tx.branches[0]
    );
    use pb::BranchStatus::{Compensated, Executed};
    assert_eq!(statuses(&tx), [Executed, Compensated, Compensated]);

    log.answer_branch("compensate", 1, Answer::Ok);
    let tx = wait_for_status(&mut c, "saga-down", pb::Status::Aborted).await;
    assert_eq!(statuses(&tx), [Compensated; 3]);
    let order = log.ops_of("saga-down");
    let first_of_1 = order
        .iter()
        .position(|&call| call == ("compensate", 1))
        .expect("compensated");
    let of_2 = order
        .iter()
        .position(|&call| call == ("compensate", 2))
        .expect("compensated");
    assert!(
        of_2 < first_of_1,
        "reverse order kept across retries: {order:?}"
    );
    assert_eq!(log.calls_of_branch("compensate", "saga-down", 2), 1);
    assert_eq!(log.calls_of_branch("compensate", "saga-down", 3), 1);
    coordinator.stop().await.expect("stop");
}
both!(a_participant_down_during_compensation_gets_it_when_back);

/// A compensation answered INTERNAL failed for good: the saga is flagged at that first
/// answer, far below the escalation threshold, and still retried until it is compensated.
async fn a_compensation_that_fails_for_good_is_flagged_at_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db.url);
    config.retry.attention_after_attempts = 1000;
    let coordinator = start_coordinator(config).await;
    let mut c = client(&coordinator.url()).await;
    let log = Recorder::start().await;
    register(&log, &mut c, 2).await;
    log.answer_branch("execute", 2, Answer::Refuse);
    log.answer_branch("compensate", 1, Answer::Break);

    submit(&mut c, "saga-broken", sequential(2), 30_000, 0)
        .await
        .expect("submit");
    log.wait_until("a failed compensation of step 1", |calls| {
        calls
            .iter()
            .any(|c| c.op == "compensate" && c.branch_id == 1)
    })
    .await;
    // Get reads the transaction row and then its steps, so wait on the row: its attempts
    // count the rescheduled rounds.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let tx = loop {
        let tx = get(&mut c, "saga-broken").await;
        if tx.attempts >= 1 {
            break tx;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never recorded: {tx:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(tx.status(), pb::Status::Compensating);
    assert!(
        tx.needs_attention,
        "flagged at the first permanent failure: {tx:?}"
    );
    assert!(
        tx.branches[0].last_error.contains("Internal"),
        "{:?}",
        tx.branches[0]
    );

    log.answer_branch("compensate", 1, Answer::Ok);
    wait_for_status(&mut c, "saga-broken", pb::Status::Aborted).await;
    coordinator.stop().await.expect("stop");
}
both!(a_compensation_that_fails_for_good_is_flagged_at_once);

/// Compensation must not give up: an ABORTED answer to a Compensate is retried like any
/// failure, never taken as a refusal that would leave the step executed.
async fn a_refused_compensation_is_retried_until_it_succeeds(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut c = client(&coordinator.url()).await;
    let log = Recorder::start().await;
    register(&log, &mut c, 2).await;
    log.answer_branch("execute", 2, Answer::Refuse);
    log.answer_branch("compensate", 1, Answer::Refuse);

    submit(&mut c, "saga-stubborn", sequential(2), 30_000, 0)
        .await
        .expect("submit");
    log.wait_until("two refused compensations of step 1", |calls| {
        calls
            .iter()
            .filter(|c| c.op == "compensate" && c.branch_id == 1)
            .count()
            >= 2
    })
    .await;
    let tx = get(&mut c, "saga-stubborn").await;
    assert_eq!(tx.status(), pb::Status::Compensating);
    assert_eq!(tx.branches[0].status(), pb::BranchStatus::Executed);
    assert!(
        tx.branches[0].last_error.contains("Aborted"),
        "{:?}",
        tx.branches[0]
    );

    log.answer_branch("compensate", 1, Answer::Ok);
    let tx = wait_for_status(&mut c, "saga-stubborn", pb::Status::Aborted).await;
    assert_eq!(statuses(&tx), [pb::BranchStatus::Compensated; 2]);
    coordinator.stop().await.expect("stop");
}
both!(a_refused_compensation_is_retried_until_it_succeeds);

async fn a_coordinator_restart_mid_saga_resumes_it(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db.url);
    config.retry.attention_after_attempts = 1;
    let coordinator = start_coordinator(config.clone()).await;
    let mut c = client(&coordinator.url()).await;
    let log = Recorder::start().await;
    register(&log, &mut c, 3).await;
    log.answer_branch("execute", 2, Answer::Fail);

    let submitted = submit(&mut c, "saga-restart", sequential(3), 60_000, 0)
        .await
        .expect("submit");
    assert_eq!(submitted.status(), pb::Status::Running);
    log.wait_until("step 2 failing twice", |calls| {
        calls
            .iter()
            .filter(|c| c.op == "execute" && c.branch_id == 2)
            .count()
            >= 2
    })
    .await;
    let tx = get(&mut c, "saga-restart").await;
    assert_eq!(tx.status(), pb::Status::Running);
    assert!(
        !tx.needs_attention,
        "forward steps are bounded by the deadline, not escalated"
    );
    coordinator.stop().await.expect("stop");

    log.answer_branch("execute", 2, Answer::Ok);
    let restarted = start_coordinator(config).await;
    let mut c = client(&restarted.url()).await;
    let tx = wait_for_status(&mut c, "saga-restart", pb::Status::Committed).await;
    assert_eq!(statuses(&tx), [pb::BranchStatus::Executed; 3]);
    assert!(tx.branches[1].attempts >= 2, "{:?}", tx.branches[1]);
    assert_eq!(
        log.calls_of_branch("execute", "saga-restart", 1),
        1,
        "done steps stay done"
    );
    assert_eq!(log.calls_of_branch("execute", "saga-restart", 3), 1);
    assert!(log.calls_of_branch("execute", "saga-restart", 2) >= 3);
    assert_eq!(
        log.ops_of("saga-restart")
            .iter()
            .filter(|(op, _)| *op == "compensate")
            .count(),
        0
    );
    restarted.stop().await.expect("stop");
}
both!(a_coordinator_restart_mid_saga_resumes_it);

async fn a_passed_deadline_compensates_what_may_have_executed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut c = client(&coordinator.url()).await;
    let log = Recorder::start().await;
    register(&log, &mut c, 3).await;
    log.answer_branch("execute", 2, Answer::Fail);

    submit(&mut c, "saga-late", sequential(3), 2_000, 0)
        .await
        .expect("submit");
    let tx = wait_for_status(&mut c, "saga-late", pb::Status::Aborted).await;
    assert_eq!(tx.reason, "deadline passed");
    // Step 2 failed but may have executed (an answer can be lost): it is compensated. Step
    // 3 was never sent and is left alone.
    let compensations: Vec<u32> = log
        .ops_of("saga-late")
        .into_iter()
        .filter(|(op, _)| *op == "compensate")
        .map(|(_, id)| id)
        .collect();
    assert_eq!(compensations, [2, 1]);
    assert_eq!(log.calls_of_branch("execute", "saga-late", 3), 0);
    use pb::BranchStatus::{Compensated, Pending};
    assert_eq!(statuses(&tx), [Compensated, Compensated, Pending]);
    coordinator.stop().await.expect("stop");
}
both!(a_passed_deadline_compensates_what_may_have_executed);

async fn a_parallel_group_runs_its_steps_concurrently(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut c = client(&coordinator.url()).await;
    let log = Recorder::start().await;
    register(&log, &mut c, 5).await;
    log.meet("execute", &[2, 3]);
    log.meet("compensate", &[2, 3]);
    log.answer_branch("execute", 5, Answer::Refuse);

    let steps = vec![step(1, 0), step(2, 9), step(3, 9), step(4, 0), step(5, 0)];
    let submitted = submit(&mut c, "saga-parallel", steps, 30_000, 10_000)
        .await
        .expect("submit");
    assert_eq!(submitted.status(), pb::Status::Aborted);
    assert!(
        log.missed().is_empty(),
        "both calls of the group were in flight together"
    );
    let order = log.ops_of("saga-parallel");
    assert_eq!(order.len(), 10, "{order:?}");
    assert_eq!(order[0], ("execute", 1));
    let middle: HashSet<_> = order[1..3].iter().copied().collect();
    assert_eq!(middle, HashSet::from([("execute", 2), ("execute", 3)]));
    assert_eq!(
        order[3..7],
        [
            ("execute", 4),
            ("execute", 5),
            ("compensate", 5),
            ("compensate", 4)
        ]
    );
    let middle: HashSet<_> = order[7..9].iter().copied().collect();
    assert_eq!(
        middle,
        HashSet::from([("compensate", 2), ("compensate", 3)])
    );
    assert_eq!(order[9], ("compensate", 1));
    coordinator.stop().await.expect("stop");
}
both!(a_parallel_group_runs_its_steps_concurrently);

async fn submit_is_idempotent_and_bad_input_gets_exact_codes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db.url);
    config.limits.max_payload = 1024;
    config.limits.max_branches = 3;
    let coordinator = start_coordinator(config).await;
    let mut c = client(&coordinator.url()).await;
    let log = Recorder::start().await;
    register(&log, &mut c, 3).await;

    // Concurrent submissions of one gid: one saga, each step executed once.
    let submissions = (0..5).map(|_| {
        let mut c = c.clone();
        async move { submit(&mut c, "saga-once", sequential(3), 30_000, 10_000).await }
    });
    for submitted in futures::future::join_all(submissions).await {
        let submitted = submitted.expect("submit");
        assert_eq!(submitted.gid, "saga-once");
        assert!(matches!(
            submitted.status(),
            pb::Status::Running | pb::Status::Committed
        ));
    }
    wait_for_status(&mut c, "saga-once", pb::Status::Committed).await;
    let again = submit(&mut c, "saga-once", sequential(1), 30_000, 0)
        .await
        .expect("submit again");
    assert_eq!(again.status(), pb::Status::Committed);
    assert_eq!(get(&mut c, "saga-once").await.branches.len(), 3);
    for i in 1..=3 {
        assert_eq!(log.calls_of_branch("execute", "saga-once", i), 1);
    }

    let tcc = c
        .begin(pb::BeginRequest {
            gid: "tcc-1".to_owned(),
            timeout_ms: 30_000,
            ..Default::default()
        })
        .await
        .expect("begin")
        .into_inner()
        .gid;
    let with = |f: fn(&mut pb::SagaStep)| {
        let mut steps = sequential(2);
        f(&mut steps[1]);
        steps
    };
    let cases: Vec<(&str, Code, Result<pb::SubmitSagaResponse, Status>)> = vec![
        (
            "no steps",
            Code::InvalidArgument,
            submit(&mut c, "", vec![], 30_000, 0).await,
        ),
        (
            "more steps than max_branches",
            Code::InvalidArgument,
            submit(&mut c, "", sequential(4), 30_000, 0).await,
        ),
        (
            "bad gid",
            Code::InvalidArgument,
            submit(&mut c, "a b", sequential(1), 30_000, 0).await,
        ),
        (
            "empty participant",
            Code::InvalidArgument,
            submit(&mut c, "", with(|s| s.participant.clear()), 30_000, 0).await,
        ),
        (
            "bad participant name",
            Code::InvalidArgument,
            submit(
                &mut c,
                "",
                with(|s| s.participant = "a/b".into()),
                30_000,
                0,
            )
            .await,
        ),
        (
            "unknown participant",
            Code::NotFound,
            submit(
                &mut c,
                "",
                with(|s| s.participant = "nobody".into()),
                30_000,
                0,
            )
            .await,
        ),
        (
            "payload over the limit",
            Code::InvalidArgument,
            submit(
                &mut c,
                "",
                with(|s| s.payload = vec![0; 1025].into()),
                30_000,
                0,
            )
            .await,
        ),
        (
            "compensation payload over the limit",
            Code::InvalidArgument,
            submit(
                &mut c,
                "",
                with(|s| s.compensation_payload = vec![0; 1025].into()),
                30_000,
                0,
            )
            .await,
        ),
        (
            "timeout zero",
            Code::InvalidArgument,
            submit(&mut c, "", sequential(1), 0, 0).await,
        ),
        (
            "timeout over 24 h",
            Code::InvalidArgument,
            submit(&mut c, "", sequential(1), 24 * 3600 * 1000 + 1, 0).await,
        ),
        (
            "wait over a minute",
            Code::InvalidArgument,
            submit(&mut c, "", sequential(1), 30_000, 60_001).await,
        ),
        (
            "gid of a TCC transaction",
            Code::FailedPrecondition,
            submit(&mut c, &tcc, sequential(1), 30_000, 0).await,
        ),
    ];
    for (what, expected, result) in cases {
        assert_eq!(code(result), expected, "{what}");
    }
    let saga_gid = || "saga-once".to_owned();
    assert_eq!(
        code(
            c.commit(pb::CommitRequest {
                gid: saga_gid(),
                wait_ms: 0
            })
            .await
        ),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(
            c.abort(pb::AbortRequest {
                gid: saga_gid(),
                ..Default::default()
            })
            .await
        ),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(
            c.register_branch(pb::RegisterBranchRequest {
                gid: saga_gid(),
                participant: "p1".into(),
                ..Default::default()
            })
            .await
        ),
        Code::FailedPrecondition
    );
    assert!(
        log.calls().iter().all(|c| c.gid == "saga-once"),
        "no refused submission reached a participant"
    );

    // The SDK reports builder misuse and the coordinator's refusals.
    let sdk = settle::Client::connect(coordinator.url())
        .await
        .expect("connect");
    let misuse = sdk
        .saga()
        .compensation(&1)
        .step("p1", "act", &1)
        .submit()
        .await
        .expect_err("compensation before any step");
    assert!(
        matches!(misuse, settle::saga::Error::Builder(_)),
        "{misuse}"
    );
    let unknown = sdk
        .saga()
        .step("nobody", "act", &1)
        .submit()
        .await
        .expect_err("unknown participant");
    assert_eq!(unknown.code(), Some(Code::NotFound));
    let empty = sdk.saga().submit().await.expect_err("no steps");
    assert_eq!(empty.code(), Some(Code::InvalidArgument));
    coordinator.stop().await.expect("stop");
}
both!(submit_is_idempotent_and_bad_input_gets_exact_codes);

/// The payload of every wallet call.
#[derive(Debug, Serialize, Deserialize)]
struct Debit {
    account: String,
    amount: i64,
}

/// A saga-only SDK participant: Execute debits, refusing an overdraft; Compensate credits.
struct Wallet;

impl SagaParticipant for Wallet {
    async fn execute(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), StepError> {
        let debit: Debit = branch.json()?;
        let done = sqlx::query(
            "UPDATE account SET balance = balance - $1 WHERE name = $2 AND balance >= $1",
        )
        .bind(debit.amount)
        .bind(&debit.account)
        .execute(conn)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StepError::refuse("insufficient funds"));
        }
        Ok(())
    }

    async fn compensate(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), StepError> {
        let debit: Debit = branch.json()?;
        sqlx::query("UPDATE account SET balance = balance + $1 WHERE name = $2")
            .bind(debit.amount)
            .bind(&debit.account)
            .execute(conn)
            .await?;
        Ok(())
    }
}

async fn open_wallet(url: &str, balance: i64) -> Barrier {
    let barrier = Barrier::new(Database::connect(url, 4).await.expect("connect"));
    barrier.migrate().await.expect("barrier");
    let pool = barrier.database().pool();
    sqlx::query("CREATE TABLE account (name TEXT PRIMARY KEY, balance BIGINT NOT NULL)")
        .execute(pool)
        .await
        .expect("create");
    sqlx::query("INSERT INTO account (name, balance) VALUES ('alice', $1)")
        .bind(balance)
        .execute(pool)
        .await
        .expect("seed");
    barrier
}

async fn balance(barrier: &Barrier) -> i64 {
    sqlx::query("SELECT balance FROM account WHERE name = 'alice'")
        .fetch_one(barrier.database().pool())
        .await
        .expect("balance")
        .try_get("balance")
        .expect("balance column")
}

/// (op, gid, branch id).
type Delivery = (&'static str, String, u32);

/// Forwards every call to a real participant and, the first time each (op, gid, branch)
/// succeeds, answers UNAVAILABLE instead: the work was done but the answer was lost, so the
/// coordinator delivers the call again.
#[derive(Clone)]
struct LosesFirstAnswers {
    inner: ParticipantClient<Channel>,
    seen: Arc<Mutex<HashMap<Delivery, usize>>>,
}

impl LosesFirstAnswers {
    async fn start(inner: &str) -> (LosesFirstAnswers, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let proxy = LosesFirstAnswers {
            inner: ParticipantClient::connect(inner.to_owned())
                .await
                .expect("connect"),
            seen: Arc::default(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ParticipantServer::new(proxy.clone()))
                .serve_with_incoming(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                ),
        );
        (proxy, url)
    }

    fn deliveries(&self, op: &'static str, gid: &str, branch_id: u32) -> usize {
        self.seen
            .lock()
            .expect("seen")
            .get(&(op, gid.to_owned(), branch_id))
            .copied()
            .unwrap_or(0)
    }

    async fn forward(
        &self,
        op: &'static str,
        request: Request<pb::BranchRequest>,
    ) -> Result<Response<pb::BranchResponse>, Status> {
        let req = request.into_inner();
        let key = (op, req.gid.clone(), req.branch_id);
        let mut inner = self.inner.clone();
        let answer = match op {
            "execute" => inner.execute(req).await,
            "compensate" => inner.compensate(req).await,
            _ => return Err(Status::unimplemented(op)),
        };
        let deliveries = {
            let mut seen = self.seen.lock().expect("seen");
            let n = seen.entry(key).or_default();
            *n += 1;
            *n
        };
        match answer {
            Ok(_) if deliveries == 1 => Err(Status::unavailable("answer lost")),
            other => other,
        }
    }
}

#[tonic::async_trait]
impl Participant for LosesFirstAnswers {
    async fn r#try(
        &self,
        request: Request<pb::BranchRequest>,
    ) -> Result<Response<pb::BranchResponse>, Status> {
        self.forward("try", request).await
    }
    async fn confirm(
        &self,
        request: Request<pb::BranchRequest>,
    ) -> Result<Response<pb::BranchResponse>, Status> {
        self.forward("confirm", request).await
    }
    async fn cancel(
        &self,
        request: Request<pb::BranchRequest>,
    ) -> Result<Response<pb::BranchResponse>, Status> {
        self.forward("cancel", request).await
    }
    async fn execute(
        &self,
        request: Request<pb::BranchRequest>,
    ) -> Result<Response<pb::BranchResponse>, Status> {
        self.forward("execute", request).await
    }
    async fn compensate(
        &self,
        request: Request<pb::BranchRequest>,
    ) -> Result<Response<pb::BranchResponse>, Status> {
        self.forward("compensate", request).await
    }
    async fn query_prepared(
        &self,
        _: Request<pb::QueryPreparedRequest>,
    ) -> Result<Response<pb::QueryPreparedResponse>, Status> {
        Err(Status::unimplemented("query_prepared"))
    }
}

fn debit(amount: i64) -> Debit {
    Debit {
        account: "alice".to_owned(),
        amount,
    }
}

fn wallet_request(gid: &str, branch_id: u32, amount: i64) -> pb::BranchRequest {
    pb::BranchRequest {
        gid: gid.to_owned(),
        branch_id,
        action: "debit".to_owned(),
        payload: serde_json::to_vec(&debit(amount)).expect("json").into(),
    }
}

async fn duplicate_and_out_of_order_deliveries_leave_business_data_correct(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut c = client(&coordinator.url()).await;
    let (db0, db1) = (TestDb::new(backend).await, TestDb::new(backend).await);
    let (wallet0, wallet1) = (
        open_wallet(&db0.url, 100).await,
        open_wallet(&db1.url, 100).await,
    );
    // w0 is reached through a proxy that loses the first answer to every call; w1
    // registers itself.
    let serving0 = settle::serve("w0", SagaOnly(Wallet), wallet0.clone())
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("serve w0");
    let (lossy, lossy_url) = LosesFirstAnswers::start(serving0.url()).await;
    c.register_participant(pb::RegisterParticipantRequest {
        name: "w0".to_owned(),
        endpoint: lossy_url,
    })
    .await
    .expect("register w0");
    let serving1 = settle::serve("w1", SagaOnly(Wallet), wallet1.clone())
        .coordinator(coordinator.url())
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("serve w1");
    let sdk = settle::Client::connect(coordinator.url())
        .await
        .expect("connect");

    // Every Execute to w0 is delivered twice; it debits once.
    let paid = sdk
        .saga()
        .gid("pay")
        .label("flow", "test")
        .step("w0", "debit", &debit(30))
        .compensation(&debit(30))
        .step("w1", "debit", &debit(20))
        .submit()
        .await
        .expect("submit");
    assert_eq!(paid.gid, "pay");
    // The first answer was lost, so the saga was still running when the first run ended.
    assert_eq!(paid.status, pb::Status::Running);
    wait_for_status(&mut c, "pay", pb::Status::Committed).await;
    assert_eq!(lossy.deliveries("execute", "pay", 1), 2);
    assert_eq!((balance(&wallet0).await, balance(&wallet1).await), (70, 80));

    // w1 refuses an overdraft in a parallel group; w0's debit in the same group is
    // compensated, and its Compensate, delivered twice, credits once.
    let refused = sdk
        .saga()
        .gid("overdraft")
        .parallel([
            Step::new("w0", "debit", &debit(10)),
            Step::new("w1", "debit", &debit(1_000)),
        ])
        .submit()
        .await
        .expect("submit");
    assert_eq!(refused.status, pb::Status::Compensating);
    wait_for_status(&mut c, "overdraft", pb::Status::Aborted).await;
    assert_eq!(lossy.deliveries("compensate", "overdraft", 1), 2);
    assert_eq!((balance(&wallet0).await, balance(&wallet1).await), (70, 80));

    // Late and repeated deliveries straight to the participants change nothing.
    let mut w0 = ParticipantClient::connect(serving0.url().to_owned())
        .await
        .expect("connect w0");
    let mut w1 = ParticipantClient::connect(serving1.url().to_owned())
        .await
        .expect("connect w1");
    w1.execute(wallet_request("pay", 2, 20))
        .await
        .expect("a duplicate Execute is answered OK");
    assert_eq!(
        w0.execute(wallet_request("overdraft", 1, 10))
            .await
            .map(drop)
            .map_err(|s| s.code()),
        Err(Code::Aborted),
        "an Execute after its Compensate is refused"
    );
    w0.compensate(wallet_request("overdraft", 1, 10))
        .await
        .expect("a duplicate Compensate is answered OK");
    w1.compensate(wallet_request("early", 1, 5))
        .await
        .expect("a Compensate before its Execute is an empty compensation");
    assert_eq!(
        w1.execute(wallet_request("early", 1, 5))
            .await
            .map(drop)
            .map_err(|s| s.code()),
        Err(Code::Aborted),
        "and blocks the late Execute"
    );
    assert_eq!((balance(&wallet0).await, balance(&wallet1).await), (70, 80));

    let tx = get(&mut c, "pay").await;
    assert_eq!(tx.labels.get("flow").map(String::as_str), Some("test"));
    serving0.stop().await.expect("stop w0");
    serving1.stop().await.expect("stop w1");
    coordinator.stop().await.expect("stop");
}
both!(duplicate_and_out_of_order_deliveries_leave_business_data_correct);

async fn a_stale_owner_writes_nothing(backend: Backend) {
    use settle_coordinator::{
        model::BranchStatus,
        store::{
            Escalation, Lease, Origin, Store,
            saga::{NewStep, Recorded, StepOutcome, Then},
        },
    };
    let db = TestDb::new(backend).await;
    let store = Store::open(&db.url, 2).await.expect("store");
    let steps: Vec<NewStep> = (1..=2)
        .map(|i| NewStep {
            participant: format!("p{i}"),
            action: "act".to_owned(),
            payload: format!("do-{i}").into_bytes().into(),
            compensation: None,
            group: 0,
        })
        .collect();
    // A lease of 0 ms expires at once, so another instance may claim the saga.
    let (tx, created) = store
        .submit_saga(
            "fenced",
            &steps,
            60_000,
            Origin::labels(&Default::default()),
            "a",
            0,
        )
        .await
        .expect("submit");
    assert!(created);
    let stale = Lease {
        gid: "fenced".to_owned(),
        owner: "a".to_owned(),
        version: tx.version,
    };
    let claimed = store.claim_due("b", 30_000, 10).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    let current = Lease {
        gid: "fenced".to_owned(),
        owner: "b".to_owned(),
        version: claimed[0].version,
    };

    assert_eq!(store.renew_saga(&stale, 30_000).await.expect("renew"), None);
    let executed = [(1, StepOutcome::Done(BranchStatus::Executed))];
    for then in [
        Then::Continue,
        Then::Compensate {
            reason: "stale".to_owned(),
        },
        Then::Retry {
            retry_in_ms: 0,
            escalation: Escalation {
                after_attempts: 10,
                after_ms: 60_000,
            },
        },
        Then::Commit,
    ] {
        assert_eq!(
            store
                .record_saga_group(&stale, &executed, &then, 30_000)
                .await
                .expect("record"),
            Recorded::LostLease,
            "{then:?}"
        );
    }
    let steps = store.saga_steps("fenced").await.expect("steps");
    assert!(
        steps
            .iter()
            .all(|s| s.branch.status == BranchStatus::Pending && s.branch.attempts == 0),
        "no branch write from the stale owner: {steps:?}"
    );

    let renewed = store
        .renew_saga(&current, 30_000)
        .await
        .expect("renew")
        .expect("the current owner holds the lease");
    assert!(!renewed.deadline_passed);
    let both = [
        (1, StepOutcome::Done(BranchStatus::Executed)),
        (2, StepOutcome::Done(BranchStatus::Executed)),
    ];
    assert_eq!(
        store
            .record_saga_group(&current, &both, &Then::Commit, 30_000)
            .await
            .expect("record"),
        Recorded::Finished(settle_coordinator::model::Status::Committed)
    );
    store.close().await;
}
both!(a_stale_owner_writes_nothing);
