//! Recovery (ARCHITECTURE.md, "Recovery") on SQLite and PostgreSQL: a participant that
//! comes back receives its Confirm; a vanished initiator's transaction is aborted at its
//! deadline with Cancel to every registered branch; backoff is bounded and escalates;
//! finished transactions are removed after their retention; the `settled` binary killed
//! with SIGKILL mid phase two finishes everything after a restart; two `settled` processes
//! on one PostgreSQL database share a backlog without calling any branch twice.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use settle::{Branch, Participant, participant::Error};
use settle_coordinator::{
    retry::RetryPolicy,
    store::{NewBranch, Origin},
};
use settle_proto::v1::{self as pb, coordinator_client::CoordinatorClient};
use settle_testkit::{
    Answer, Backend, Recorder, Settled, TestDb, both, client, get, start_coordinator, stock,
    test_config, wait_for_status,
};
use sqlx::{AnyConnection, Row};
use tonic::transport::Channel;

async fn recorder(client: &mut CoordinatorClient<Channel>, name: &str) -> Recorder {
    let recorder = Recorder::start().await;
    recorder.register(client, name).await;
    recorder
}

async fn begin_with_branches(
    client: &mut CoordinatorClient<Channel>,
    timeout_ms: u64,
    participants: &[&str],
) -> String {
    let gid = client
        .begin(pb::BeginRequest {
            timeout_ms,
            ..Default::default()
        })
        .await
        .expect("begin")
        .into_inner()
        .gid;
    for participant in participants {
        client
            .register_branch(pb::RegisterBranchRequest {
                gid: gid.clone(),
                participant: (*participant).to_owned(),
                action: "a".to_owned(),
                payload: Default::default(),
            })
            .await
            .expect("register");
    }
    gid
}

async fn commit(client: &mut CoordinatorClient<Channel>, gid: &str, wait_ms: u64) -> pb::Status {
    client
        .commit(pb::CommitRequest {
            gid: gid.to_owned(),
            wait_ms,
        })
        .await
        .expect("commit")
        .into_inner()
        .status()
}

/// Polls Get until `pred` holds, failing after 20 s.
async fn wait_until(
    client: &mut CoordinatorClient<Channel>,
    gid: &str,
    what: &str,
    mut pred: impl FnMut(&pb::Transaction) -> bool,
) -> pb::Transaction {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let tx = get(client, gid).await;
        if pred(&tx) {
            return tx;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{gid}: never {what}; it is {tx:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn participant_back_from_an_outage_gets_its_confirm(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut c = client(&coordinator.url()).await;
    let healthy = recorder(&mut c, "healthy").await;
    let flaky = recorder(&mut c, "flaky").await;
    flaky.answer("confirm", Answer::Fail);

    let gid = begin_with_branches(&mut c, 30_000, &["healthy", "flaky"]).await;
    assert_eq!(commit(&mut c, &gid, 200).await, pb::Status::Committing);
    let stuck = wait_until(&mut c, &gid, "retried twice", |tx| {
        tx.branches[1].attempts >= 2
    })
    .await;
    assert!(
        stuck.branches[1].last_error.contains("Unavailable"),
        "{:?}",
        stuck.branches[1]
    );
    assert_eq!(stuck.branches[0].status(), pb::BranchStatus::Confirmed);

    flaky.answer("confirm", Answer::Ok);
    wait_for_status(&mut c, &gid, pb::Status::Committed).await;
    assert_eq!(
        healthy.calls_of("confirm", &gid),
        1,
        "a confirmed branch is not called again"
    );
    assert!(flaky.calls_of("confirm", &gid) >= 3);
    coordinator.stop().await.expect("stop");
}
both!(participant_back_from_an_outage_gets_its_confirm);

/// Phase two cannot be refused: a Try that succeeded made its Confirm certain, so an ABORTED
/// answer to a Confirm (a participant's bug, or a refusal it should have made at Try) is a
/// failure like any other, retried until the participant confirms.
async fn a_refused_confirm_is_retried_not_taken_for_an_answer(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut c = client(&coordinator.url()).await;
    let stubborn = recorder(&mut c, "stubborn").await;
    stubborn.answer("confirm", Answer::Refuse);

    let gid = begin_with_branches(&mut c, 30_000, &["stubborn"]).await;
    assert_eq!(commit(&mut c, &gid, 200).await, pb::Status::Committing);
    let stuck = wait_until(&mut c, &gid, "retried twice", |tx| {
        tx.branches[0].attempts >= 2
    })
    .await;
    assert_eq!(stuck.status(), pb::Status::Committing);
    assert_eq!(stuck.branches[0].status(), pb::BranchStatus::Pending);
    assert!(
        stuck.branches[0].last_error.contains("Aborted"),
        "{:?}",
        stuck.branches[0]
    );

    stubborn.answer("confirm", Answer::Ok);
    wait_for_status(&mut c, &gid, pb::Status::Committed).await;
    assert_eq!(
        stubborn.calls_of("cancel", &gid),
        0,
        "a commit is never undone"
    );
    coordinator.stop().await.expect("stop");
}
both!(a_refused_confirm_is_retried_not_taken_for_an_answer);

async fn vanished_initiator_is_aborted_and_every_branch_cancelled(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut c = client(&coordinator.url()).await;
    let tried = recorder(&mut c, "tried").await;
    let never_tried = recorder(&mut c, "never-tried").await;

    // Both branches registered; only the first Try was sent before the initiator vanished.
    let gid = begin_with_branches(&mut c, 300, &["tried", "never-tried"]).await;
    let aborted = wait_for_status(&mut c, &gid, pb::Status::Aborted).await;
    assert_eq!(aborted.reason, "deadline passed");
    assert_eq!(tried.calls_of("cancel", &gid), 1);
    assert_eq!(
        never_tried.calls_of("cancel", &gid),
        1,
        "Cancel reaches a branch whose Try never arrived"
    );
    assert_eq!(
        tried.calls_of("confirm", &gid) + never_tried.calls_of("confirm", &gid),
        0
    );
    coordinator.stop().await.expect("stop");
}
both!(vanished_initiator_is_aborted_and_every_branch_cancelled);

async fn backoff_is_bounded_and_escalates_without_giving_up(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db.url);
    let policy = RetryPolicy {
        initial: Duration::from_millis(10),
        multiplier: 2.0,
        cap: Duration::from_millis(40),
        attention_after_attempts: 4,
        attention_after: Duration::from_secs(3600),
    };
    config.retry = policy;
    config.recovery.interval = Duration::from_millis(5);
    let coordinator = start_coordinator(config).await;
    let mut c = client(&coordinator.url()).await;
    let down = recorder(&mut c, "down").await;
    down.answer("confirm", Answer::Fail);

    let gid = begin_with_branches(&mut c, 30_000, &["down"]).await;
    commit(&mut c, &gid, 0).await;
    let mut seen = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 8 {
        let tx = get(&mut c, &gid).await;
        if tx.attempts > 0 && tx.next_attempt_at_ms > 0 && rescheduled(&tx) {
            seen.insert(
                tx.attempts,
                (tx.next_attempt_at_ms - tx.updated_at_ms, tx.needs_attention),
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only saw attempts {:?}",
            seen.keys()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for (attempts, (delay_ms, flagged)) in &seen {
        // The delay stored after round `attempts` was drawn below the ceiling of the rounds
        // before it: 10, 20, 40, then capped at 40 ms.
        let ceiling = policy.ceiling(*attempts - 1).as_millis() as i64;
        assert!(
            (0..=ceiling).contains(delay_ms),
            "attempt {attempts}: delay {delay_ms} ms over {ceiling} ms"
        );
        assert_eq!(
            *flagged,
            *attempts >= 4,
            "attempt {attempts}: needs_attention"
        );
    }
    assert!(policy.ceiling(0) < policy.ceiling(2), "the bound grows");
    assert_eq!(policy.ceiling(10), policy.cap, "and is capped");
    let tx = get(&mut c, &gid).await;
    assert_eq!(
        tx.status(),
        pb::Status::Committing,
        "escalated, still retrying"
    );
    assert!(!tx.branches[0].last_error.is_empty());

    down.answer("confirm", Answer::Ok);
    let done = wait_for_status(&mut c, &gid, pb::Status::Committed).await;
    assert!(
        done.needs_attention,
        "the flag stays for the operator to see"
    );
    coordinator.stop().await.expect("stop");
}
both!(backoff_is_bounded_and_escalates_without_giving_up);

/// A participant that answers a Confirm with INTERNAL failed for good (a constraint, an
/// overflow, a bug): the transaction is flagged after that first answer, long before the
/// escalation threshold, and still retried, so it commits once the participant is fixed.
async fn a_permanent_failure_flags_the_transaction_at_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db.url);
    config.retry = RetryPolicy {
        initial: Duration::from_millis(10),
        multiplier: 2.0,
        cap: Duration::from_millis(40),
        attention_after_attempts: 1000,
        attention_after: Duration::from_secs(3600),
    };
    config.recovery.interval = Duration::from_millis(5);
    let coordinator = start_coordinator(config).await;
    let mut c = client(&coordinator.url()).await;
    let transient = recorder(&mut c, "transient").await;
    transient.answer("confirm", Answer::Fail);
    let transient_gid = begin_with_branches(&mut c, 30_000, &["transient"]).await;
    assert_eq!(
        commit(&mut c, &transient_gid, 1_000).await,
        pb::Status::Committing
    );
    let broken = recorder(&mut c, "broken").await;
    broken.answer("confirm", Answer::Break);
    let gid = begin_with_branches(&mut c, 30_000, &["broken"]).await;
    assert_eq!(commit(&mut c, &gid, 1_000).await, pb::Status::Committing);

    let flagged = wait_until(&mut c, &gid, "failed once", |tx| tx.attempts >= 1).await;
    assert!(
        flagged.needs_attention,
        "flagged at the first permanent failure: {flagged:?}"
    );
    assert!(
        flagged.branches[0].last_error.contains("Internal"),
        "{:?}",
        flagged.branches[0]
    );
    let retried = wait_until(&mut c, &transient_gid, "retried", |tx| tx.attempts >= 3).await;
    assert!(
        !retried.needs_attention,
        "a transient failure waits for the threshold"
    );

    broken.answer("confirm", Answer::Ok);
    transient.answer("confirm", Answer::Ok);
    wait_for_status(&mut c, &gid, pb::Status::Committed).await;
    wait_for_status(&mut c, &transient_gid, pb::Status::Committed).await;
    coordinator.stop().await.expect("stop");
}
both!(a_permanent_failure_flags_the_transaction_at_once);

/// True when the transaction waits for a retry, not for a lease to expire: the test's lease
/// is 30 s, its retry delays are at most 40 ms.
fn rescheduled(tx: &pb::Transaction) -> bool {
    tx.next_attempt_at_ms - tx.updated_at_ms < 1_000
}

async fn finished_transactions_are_deleted_after_retention(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut c = client(&coordinator.url()).await;
    let _p = recorder(&mut c, "p").await;
    let mut finished = Vec::new();
    for _ in 0..24 {
        let gid = begin_with_branches(&mut c, 30_000, &["p"]).await;
        assert_eq!(commit(&mut c, &gid, 5_000).await, pb::Status::Committed);
        finished.push(gid);
    }
    let chosen = pb::BeginRequest {
        gid: "order-7".to_owned(),
        timeout_ms: 30_000,
        ..Default::default()
    };
    c.begin(chosen.clone()).await.expect("begin order-7");
    assert_eq!(
        commit(&mut c, "order-7", 5_000).await,
        pb::Status::Committed
    );
    finished.push("order-7".to_owned());
    let live = begin_with_branches(&mut c, 60_000, &["p"]).await;
    let store = settle_coordinator::store::Store::open(&db.url, 2)
        .await
        .expect("store");
    assert_eq!(
        store.purge_finished(3_600_000, 10).await.expect("purge"),
        0,
        "young rows stay"
    );
    // Let the database clock move past the last commit's millisecond.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut batches = Vec::new();
    loop {
        let n = store.purge_finished(0, 10).await.expect("purge");
        batches.push(n);
        if n < 10 {
            break;
        }
    }
    assert_eq!(batches, [10, 10, 5]);
    for gid in &finished {
        assert!(store.get(gid).await.expect("get").is_none());
        assert!(
            store.branches(gid).await.expect("branches").is_empty(),
            "branches go with it"
        );
    }
    assert_eq!(
        store.get(&live).await.expect("get").map(|t| t.branch_count),
        Some(1),
        "unfinished kept"
    );
    // A client-chosen gid is never used again: participants still know it.
    let reused = c.begin(chosen).await.expect_err("order-7 was retired");
    assert_eq!(reused.code(), tonic::Code::FailedPrecondition, "{reused}");
    coordinator.stop().await.expect("stop");
}
both!(finished_transactions_are_deleted_after_retention);

/// A stock participant whose Confirm fails while the gate is closed.
struct Gated {
    open: Arc<AtomicBool>,
}

impl Participant for Gated {
    async fn r#try(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        stock::Stock.r#try(branch, conn).await
    }
    async fn confirm(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        if !self.open.load(Ordering::SeqCst) {
            return Err(Error::Failed("gate closed".into()));
        }
        stock::Stock.confirm(branch, conn).await
    }
    async fn cancel(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        stock::Stock.cancel(branch, conn).await
    }
}

fn start_settled(database: &str) -> Settled {
    Settled::start(env!("CARGO_BIN_EXE_settled"), database)
}

async fn settled_killed_in_phase_two_finishes_everything_after_restart(backend: Backend) {
    let db = TestDb::new(backend).await;
    let settled = start_settled(&db.url);
    let open = Arc::new(AtomicBool::new(false));
    let mut dbs = Vec::new();
    let mut participants = Vec::new();
    for name in ["left", "right"] {
        let participant_db = TestDb::new(backend).await;
        let barrier = stock::open(&participant_db.url, &[("apple", 1_000)])
            .await
            .expect("open");
        let serving = settle::serve(name, Gated { open: open.clone() }, barrier.clone())
            .coordinator(settled.url.clone())
            .bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("serve");
        dbs.push(participant_db);
        participants.push((barrier, serving));
    }

    let client = settle::Client::connect(settled.url.clone())
        .await
        .expect("connect")
        .with_commit_wait(Duration::ZERO);
    let reserve = stock::Reserve {
        item: "apple".into(),
        qty: 1,
    };
    let mut gids = Vec::new();
    let commits = (0..200).map(|_| {
        let client = client.clone();
        let reserve = &reserve;
        async move {
            let tx = client.begin(Duration::from_secs(60)).await.expect("begin");
            tx.try_branch("left", "reserve", reserve)
                .await
                .expect("try left");
            tx.try_branch("right", "reserve", reserve)
                .await
                .expect("try right");
            let gid = tx.gid().to_owned();
            assert_eq!(
                tx.commit().await.expect("commit"),
                settle::client::Status::Committing
            );
            gid
        }
    });
    gids.extend(futures::future::join_all(commits).await);
    settled.kill();

    open.store(true, Ordering::SeqCst);
    let restarted = start_settled(&db.url);
    let mut c = settle_testkit::client(&restarted.url).await;
    for gid in &gids {
        wait_for_status(&mut c, gid, pb::Status::Committed).await;
    }
    for (barrier, _) in &participants {
        let row = sqlx::query("SELECT available, reserved, sold FROM stock WHERE item = 'apple'")
            .fetch_one(barrier.database().pool())
            .await
            .expect("stock");
        let counts: (i64, i64, i64) = (row.get("available"), row.get("reserved"), row.get("sold"));
        assert_eq!(
            counts,
            (800, 0, 200),
            "every Confirm took effect exactly once"
        );
        let confirms: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM settle_barrier WHERE op = 'confirm'")
                .fetch_one(barrier.database().pool())
                .await
                .expect("count");
        assert_eq!(confirms, 200);
    }
    for (_, serving) in participants {
        serving.stop().await.expect("stop");
    }
}
both!(settled_killed_in_phase_two_finishes_everything_after_restart);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_settled_share_a_postgres_backlog_without_calling_a_branch_twice() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = settle_coordinator::store::Store::open(&db.url, 8)
        .await
        .expect("store");
    let a = Recorder::start().await;
    let b = Recorder::start().await;
    store
        .upsert_participant("a", &a.url, None)
        .await
        .expect("a");
    store
        .upsert_participant("b", &b.url, None)
        .await
        .expect("b");

    // 2,000 transactions decided by an instance that died at once: all due now.
    const N: usize = 2_000;
    for chunk in 0..N / 50 {
        let batch = (0..50).map(|i| {
            let store = store.clone();
            async move {
                let gid = format!("backlog-{chunk}-{i}");
                store
                    .begin(
                        &gid,
                        settle_coordinator::model::Mode::Tcc,
                        settle_coordinator::model::Status::Trying,
                        600_000,
                        Origin::labels(&Default::default()),
                        &["a", "b"].map(|participant| NewBranch {
                            participant,
                            action: "x",
                            payload: b"",
                        }),
                    )
                    .await
                    .expect("begin");
                store
                    .decide_commit(&gid, "ghost", 0, None)
                    .await
                    .expect("decide")
                    .expect("decided");
            }
        });
        futures::future::join_all(batch).await;
    }

    let first = start_settled(&db.url);
    let second = start_settled(&db.url);
    let pool = settle::db::Database::connect(&db.url, 1)
        .await
        .expect("pool");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let left: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM global_tx WHERE status <> 'COMMITTED'")
                .fetch_one(pool.pool())
                .await
                .expect("count");
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} transactions still unfinished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for recorder in [&a, &b] {
        let calls = recorder.calls();
        let mut per_branch: HashMap<(String, u32), usize> = HashMap::new();
        for call in calls.iter().filter(|c| c.op == "confirm") {
            *per_branch
                .entry((call.gid.clone(), call.branch_id))
                .or_default() += 1;
        }
        assert_eq!(per_branch.len(), N, "every branch confirmed");
        let twice: Vec<_> = per_branch.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "branches called more than once: {twice:?}"
        );
    }
    drop((first, second));
}
