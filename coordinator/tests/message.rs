//! Transactional messages (ARCHITECTURE.md, "State machines") end to end, on SQLite and
//! PostgreSQL: a service whose local transaction takes an apple from its stock, and steps
//! that credit an account on another participant, one row per delivery that took effect.
//! The happy path; a service that dies after its local commit and before Submit (the
//! coordinator's question submits); one that dies before its commit (the question aborts,
//! and a late commit is refused by the barrier); a step failing several times, or refusing,
//! before it succeeds; `settled` SIGKILLed during delivery; bad input, with exact codes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::future::join_all;
use serde::{Deserialize, Serialize};
use settle::{
    Barrier, Branch, Client, Participant,
    barrier::{self, LocalEntry, Op},
    db::Database,
    message,
    participant::{Error, Outcome},
    server::Serving,
};
use settle_proto::v1::{
    self as pb, admin_client::AdminClient, coordinator_client::CoordinatorClient,
};
use settle_testkit::{
    Backend, Settled, TestDb, both, client, code, get, scrape, start_coordinator, stock,
    test_config, value, wait_for_status,
};
use sqlx::AnyConnection;
use tokio::sync::watch;
use tonic::{Code, transport::Channel};

/// One credit: which account, how much.
#[derive(Debug, Serialize, Deserialize)]
struct Credit {
    account: String,
    amount: i64,
}

/// A participant whose Execute inserts a row into `credit`: fails for its first
/// `fail_first` deliveries, and refuses while `refusing`. While `holding`, the answer to an
/// Execute that took effect waits (after its local commit) until `release`: the effect is
/// there, and the coordinator has not heard of it.
#[derive(Debug)]
struct Ledger {
    fail_first: AtomicUsize,
    refusing: AtomicBool,
    deliveries: AtomicUsize,
    duplicates: AtomicUsize,
    holding: AtomicBool,
    held: AtomicUsize,
    release: watch::Sender<bool>,
}

impl Default for Ledger {
    fn default() -> Ledger {
        Ledger {
            fail_first: AtomicUsize::new(0),
            refusing: AtomicBool::new(false),
            deliveries: AtomicUsize::new(0),
            duplicates: AtomicUsize::new(0),
            holding: AtomicBool::new(false),
            held: AtomicUsize::new(0),
            release: watch::channel(false).0,
        }
    }
}

/// The served side of a [`Ledger`] the test keeps a handle on.
struct Shared(Arc<Ledger>);

impl Participant for Shared {
    async fn r#try(&self, _: &Branch, _: &mut AnyConnection) -> Result<(), Error> {
        Err(Error::Unsupported("try"))
    }

    async fn confirm(&self, _: &Branch, _: &mut AnyConnection) -> Result<(), Error> {
        Err(Error::Unsupported("confirm"))
    }

    async fn cancel(&self, _: &Branch, _: &mut AnyConnection) -> Result<(), Error> {
        Err(Error::Unsupported("cancel"))
    }

    async fn after(&self, op: Op, _: &Branch, outcome: Outcome) {
        let ledger = &self.0;
        if op != Op::Execute {
            return;
        }
        if !ledger.holding.load(Ordering::SeqCst) {
            if outcome == Outcome::Duplicate {
                ledger.duplicates.fetch_add(1, Ordering::SeqCst);
            }
            return;
        }
        // Every answer waits while holding, a repeat's too, so that nothing the coordinator
        // sends is answered before it dies.
        {
            if outcome == Outcome::Applied {
                ledger.held.fetch_add(1, Ordering::SeqCst);
            }
            let _ = ledger
                .release
                .subscribe()
                .wait_for(|released| *released)
                .await;
        }
    }

    async fn execute(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let ledger = &self.0;
        let delivery = ledger.deliveries.fetch_add(1, Ordering::SeqCst);
        if delivery < ledger.fail_first.load(Ordering::SeqCst) {
            return Err(Error::Failed(format!("delivery {delivery} fails")));
        }
        if ledger.refusing.load(Ordering::SeqCst) {
            return Err(Error::refuse("account frozen"));
        }
        let credit: Credit = branch.json()?;
        sqlx::query("INSERT INTO credit (gid, step, account, amount) VALUES ($1, $2, $3, $4)")
            .bind(&branch.gid)
            .bind(i64::from(branch.branch_id))
            .bind(&credit.account)
            .bind(credit.amount)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn compensate(&self, _: &Branch, _: &mut AnyConnection) -> Result<(), Error> {
        Err(Error::Permanent("messages are never compensated".into()))
    }
}

struct World {
    _dbs: Vec<TestDb>,
    raw: CoordinatorClient<Channel>,
    admin: AdminClient<Channel>,
    client: Client,
    /// The service running local transactions, its database and its participant server
    /// (which answers QueryPrepared).
    service: Barrier,
    service_url: String,
    /// The participant the steps credit.
    ledger: Arc<Ledger>,
    ledger_db: Barrier,
    servers: Vec<Serving>,
}

async fn world(backend: Backend, coordinator: &str) -> World {
    let service_db = TestDb::new(backend).await;
    let service = stock::open(&service_db.url, &[("apple", 100)])
        .await
        .expect("open service");
    let service_server = settle::serve("shop", stock::Stock, service.clone())
        .coordinator(coordinator)
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("serve shop");
    let ledger_db = TestDb::new(backend).await;
    let ledger_barrier = Barrier::new(Database::connect(&ledger_db.url, 8).await.expect("db"));
    ledger_barrier.migrate().await.expect("migrate");
    sqlx::query(
        "CREATE TABLE credit (gid TEXT NOT NULL, step BIGINT NOT NULL, account TEXT NOT NULL, \
         amount BIGINT NOT NULL)",
    )
    .execute(ledger_barrier.database().pool())
    .await
    .expect("credit table");
    let ledger = Arc::new(Ledger::default());
    let ledger_server = settle::serve("ledger", Shared(ledger.clone()), ledger_barrier.clone())
        .coordinator(coordinator)
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("serve ledger");
    World {
        _dbs: vec![service_db, ledger_db],
        raw: client(coordinator).await,
        admin: AdminClient::connect(coordinator.to_owned())
            .await
            .expect("admin"),
        client: Client::connect(coordinator.to_owned())
            .await
            .expect("connect"),
        service_url: service_server.url().to_owned(),
        service,
        ledger,
        ledger_db: ledger_barrier,
        servers: vec![service_server, ledger_server],
    }
}

impl World {
    /// A message crediting `alice` 10 and `bob` 5 (in parallel), then `carol` 1.
    fn message(&self, gid: &str) -> message::Message {
        self.client
            .message(gid)
            .query_endpoint(&self.service_url)
            // Long: the coordinator must not ask before the local transaction ran.
            .timeout(Duration::from_secs(60))
            .parallel([
                message::Step::new("ledger", "credit", &credit("alice", 10)),
                message::Step::new("ledger", "credit", &credit("bob", 5)),
            ])
            .step("ledger", "credit", &credit("carol", 1))
    }

    /// The same steps as the wire carries them, for raw Prepare calls.
    fn steps() -> Vec<pb::MessageStep> {
        [("alice", 10, 1), ("bob", 5, 1), ("carol", 1, 0)]
            .into_iter()
            .map(|(account, amount, group)| pb::MessageStep {
                participant: "ledger".to_owned(),
                action: "credit".to_owned(),
                payload: serde_json::to_vec(&credit(account, amount))
                    .expect("json")
                    .into(),
                group,
            })
            .collect()
    }

    async fn prepare(&mut self, gid: &str, timeout_ms: u64) -> pb::PrepareResponse {
        self.raw
            .prepare(pb::PrepareRequest {
                gid: gid.to_owned(),
                steps: World::steps(),
                timeout_ms,
                query_endpoint: self.service_url.clone(),
                ..Default::default()
            })
            .await
            .expect("prepare")
            .into_inner()
    }

    /// Apples the local transactions took.
    async fn sold(&self) -> i64 {
        sqlx::query_scalar("SELECT sold FROM stock WHERE item = 'apple'")
            .fetch_one(self.service.database().pool())
            .await
            .expect("sold")
    }

    /// Credit rows written for `gid`, in step order.
    async fn credits(&self, gid: &str) -> Vec<(i64, String, i64)> {
        sqlx::query_as("SELECT step, account, amount FROM credit WHERE gid = $1 ORDER BY step")
            .bind(gid)
            .fetch_all(self.ledger_db.database().pool())
            .await
            .expect("credits")
    }

    async fn stop(self) {
        for server in self.servers {
            server.stop().await.expect("stop participant");
        }
    }
}

fn credit(account: &str, amount: i64) -> Credit {
    Credit {
        account: account.to_owned(),
        amount,
    }
}

fn expected() -> Vec<(i64, String, i64)> {
    vec![
        (1, "alice".to_owned(), 10),
        (2, "bob".to_owned(), 5),
        (3, "carol".to_owned(), 1),
    ]
}

/// The local transaction: one apple sold, if there is one.
async fn take_apple(conn: &mut AnyConnection) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE stock SET available = available - 1, sold = sold + 1 \
         WHERE item = 'apple' AND available >= 1",
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

async fn a_committed_local_transaction_delivers_every_step_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut w = world(backend, &coordinator.url()).await;

    let sent = w
        .message("buy-1")
        .run_local(w.service.database(), |conn| Box::pin(take_apple(conn)))
        .await
        .expect("run_local");
    assert_eq!(sent.gid, "buy-1");
    assert_eq!(sent.local, Some(1), "the local transaction ran once");
    assert_eq!(sent.status, pb::Status::Committed);
    assert_eq!(w.sold().await, 1);
    assert_eq!(w.credits("buy-1").await, expected());

    let tx = get(&mut w.raw, "buy-1").await;
    assert_eq!(tx.mode(), pb::Mode::Message);
    assert!(
        tx.branches
            .iter()
            .all(|b| b.status() == pb::BranchStatus::Executed),
        "{:?}",
        tx.branches
    );

    // The same message again: nothing runs twice.
    let again = w
        .message("buy-1")
        .run_local(w.service.database(), |conn| Box::pin(take_apple(conn)))
        .await
        .expect("repeated run_local");
    assert_eq!(again.local, None, "the local transaction did not run again");
    assert_eq!(again.status, pb::Status::Committed);
    assert_eq!(w.sold().await, 1);
    assert_eq!(w.credits("buy-1").await.len(), 3);

    // The query endpoint may be the service's registered name instead of its URL.
    let named = w
        .message("buy-3")
        .query_endpoint("shop")
        .run_local(w.service.database(), |conn| Box::pin(take_apple(conn)))
        .await
        .expect("run_local by name");
    assert_eq!(named.status, pb::Status::Committed);
    assert_eq!(w.credits("buy-3").await, expected());

    // A local transaction that fails rolls back and aborts the message at once.
    let failed = w
        .message("buy-2")
        .run_local(w.service.database(), |_conn| {
            Box::pin(async { Err::<(), _>("no apple for you") })
        })
        .await
        .expect_err("the local transaction failed");
    assert!(
        matches!(failed, message::Error::Local("no apple for you")),
        "{failed}"
    );
    let tx = get(&mut w.raw, "buy-2").await;
    assert_eq!(tx.status(), pb::Status::Aborted);
    assert!(w.credits("buy-2").await.is_empty());
    assert_eq!(w.sold().await, 2);

    // A statement fails and the closure swallows its error. PostgreSQL has aborted the
    // transaction (its COMMIT would roll back without a word): nothing is delivered. SQLite
    // undid only that statement: the rest commits and is delivered.
    let swallowed = w
        .message("buy-4")
        .run_local(w.service.database(), |conn| {
            Box::pin(async move {
                take_apple(&mut *conn).await?;
                let _ = sqlx::query("INSERT INTO no_such_table VALUES (1)")
                    .execute(&mut *conn)
                    .await;
                Ok::<_, sqlx::Error>(())
            })
        })
        .await;
    match backend {
        Backend::Postgres => {
            assert!(
                matches!(swallowed, Err(message::Error::Aborted(_))),
                "{swallowed:?}"
            );
            assert_eq!(get(&mut w.raw, "buy-4").await.status(), pb::Status::Aborted);
            assert!(w.credits("buy-4").await.is_empty());
            assert_eq!(w.sold().await, 2);
        }
        Backend::Sqlite => {
            assert_eq!(
                swallowed.expect("sqlite commits").status,
                pb::Status::Committed
            );
            assert_eq!(w.credits("buy-4").await, expected());
            assert_eq!(w.sold().await, 3);
        }
    }

    w.stop().await;
    coordinator.stop().await.expect("stop");
}
both!(a_committed_local_transaction_delivers_every_step_once);

async fn a_service_dead_after_its_commit_is_asked_and_the_message_submitted(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db.url);
    config.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let coordinator = start_coordinator(config).await;
    let metrics = coordinator.metrics_addr().expect("metrics listener");
    let mut w = world(backend, &coordinator.url()).await;

    // A long deadline: the question comes when an operator asks for it, after the commit.
    let prepared = w.prepare("crash-after-commit", 60_000).await;
    assert_eq!(prepared.status(), pb::Status::Prepared);
    assert!(prepared.created);
    // The service's local transaction commits; then the service dies: no Submit.
    let mut tx = w.service.database().begin_write().await.expect("begin");
    assert_eq!(
        barrier::enter_local(&mut tx, "crash-after-commit")
            .await
            .expect("barrier"),
        LocalEntry::Proceed
    );
    assert_eq!(take_apple(&mut tx).await.expect("take"), 1);
    tx.commit().await.expect("commit");
    assert_eq!(
        get(&mut w.raw, "crash-after-commit").await.status(),
        pb::Status::Prepared
    );
    w.admin
        .retry(pb::RetryRequest {
            gid: "crash-after-commit".to_owned(),
            note: "ask the service now".to_owned(),
            wait_ms: 10_000,
        })
        .await
        .expect("retry");

    let done = wait_for_status(&mut w.raw, "crash-after-commit", pb::Status::Committed).await;
    assert_eq!(done.decided_by, "(query)");
    assert_eq!(w.credits("crash-after-commit").await, expected());
    assert_eq!(w.sold().await, 1);
    // A late Submit from the service, back up, changes nothing.
    let late = w
        .raw
        .submit(pb::SubmitRequest {
            gid: "crash-after-commit".to_owned(),
            ..Default::default()
        })
        .await
        .expect("late submit")
        .into_inner();
    assert_eq!(late.status(), pb::Status::Committed);
    assert_eq!(w.credits("crash-after-commit").await.len(), 3);
    let samples = scrape(metrics).await;
    for (key, at_least) in [
        ("settle_transactions_begun_total{mode=\"message\"}", 1.0),
        ("settle_message_queries_total{result=\"committed\"}", 1.0),
        (
            "settle_transactions_finished_total{mode=\"message\",outcome=\"committed\"}",
            1.0,
        ),
    ] {
        assert!(value(&samples, key) >= at_least, "{key}");
    }
    assert_eq!(
        value(&samples, "settle_message_queries_total{result=\"error\"}"),
        0.0
    );

    w.stop().await;
    coordinator.stop().await.expect("stop");
}
both!(a_service_dead_after_its_commit_is_asked_and_the_message_submitted);

async fn a_service_dead_before_its_commit_is_asked_and_a_late_commit_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut w = world(backend, &coordinator.url()).await;

    // The service dies before its local transaction commits; the coordinator asks at the
    // deadline.
    w.prepare("crash-before-commit", 300).await;
    let aborted = wait_for_status(&mut w.raw, "crash-before-commit", pb::Status::Aborted).await;
    assert_eq!(aborted.decided_by, "(query)");
    assert_eq!(aborted.reason, "the local transaction did not commit");
    // The service's local transaction, running late, finds the message rolled back.
    let mut tx = w.service.database().begin_write().await.expect("begin");
    assert_eq!(
        barrier::enter_local(&mut tx, "crash-before-commit")
            .await
            .expect("barrier"),
        LocalEntry::RolledBack
    );
    tx.rollback().await.expect("rollback");
    let late = w
        .message("crash-before-commit")
        .run_local(w.service.database(), |conn| Box::pin(take_apple(conn)))
        .await
        .expect_err("rolled back");
    assert!(matches!(late, message::Error::RolledBack(_)), "{late}");
    let submit = w
        .raw
        .submit(pb::SubmitRequest {
            gid: "crash-before-commit".to_owned(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(submit), Code::FailedPrecondition);
    assert_eq!(w.sold().await, 0, "the local transaction never took effect");
    assert!(w.credits("crash-before-commit").await.is_empty());

    w.stop().await;
    coordinator.stop().await.expect("stop");
}
both!(a_service_dead_before_its_commit_is_asked_and_a_late_commit_refused);

async fn a_failing_or_refusing_step_is_retried_until_it_succeeds(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut w = world(backend, &coordinator.url()).await;

    w.ledger.fail_first.store(4, Ordering::SeqCst);
    let sent = w
        .message("flaky")
        .wait(Duration::ZERO)
        .run_local(w.service.database(), |conn| Box::pin(take_apple(conn)))
        .await
        .expect("run_local");
    assert_eq!(sent.local, Some(1));
    let done = wait_for_status(&mut w.raw, "flaky", pb::Status::Committed).await;
    assert!(
        done.branches.iter().map(|b| b.attempts).sum::<u32>() >= 4,
        "four failed deliveries recorded: {:?}",
        done.branches
    );
    assert!(!done.needs_attention, "transient failures are not flagged");
    assert_eq!(w.credits("flaky").await, expected());

    // A refusal cannot stop a message: it is retried, and flags it at once.
    w.ledger.refusing.store(true, Ordering::SeqCst);
    w.message("refused")
        .wait(Duration::ZERO)
        .run_local(w.service.database(), |conn| Box::pin(take_apple(conn)))
        .await
        .expect("run_local");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let tx = get(&mut w.raw, "refused").await;
        if tx.needs_attention {
            assert_eq!(tx.status(), pb::Status::Running);
            assert!(
                tx.branches[0].last_error.contains("account frozen"),
                "{:?}",
                tx.branches
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never flagged: {tx:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.ledger.refusing.store(false, Ordering::SeqCst);
    wait_for_status(&mut w.raw, "refused", pb::Status::Committed).await;
    assert_eq!(w.credits("refused").await, expected());
    assert_eq!(w.sold().await, 2);

    w.stop().await;
    coordinator.stop().await.expect("stop");
}
both!(a_failing_or_refusing_step_is_retried_until_it_succeeds);

async fn settled_killed_during_delivery_delivers_every_step_exactly_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let settled = Settled::start(env!("CARGO_BIN_EXE_settled"), &db.url);
    let w = world(backend, &settled.url).await;
    // The first group's Executes take effect, and their answers wait: the coordinator
    // dies knowing nothing of them.
    w.ledger.holding.store(true, Ordering::SeqCst);

    let sends = (0..20).map(|i| {
        let message = w.message(&format!("kill-{i}")).wait(Duration::ZERO);
        let db = w.service.database().clone();
        async move {
            message
                .run_local(&db, |conn| Box::pin(take_apple(conn)))
                .await
                .expect("run_local")
        }
    });
    let sent = join_all(sends).await;
    assert!(sent.iter().all(|s| s.local == Some(1)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while w.ledger.held.load(Ordering::SeqCst) < 40 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first groups never took effect"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    settled.kill();
    let log = Database::connect(&db.url, 1)
        .await
        .expect("coordinator database");
    let committed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM global_tx WHERE gid LIKE 'kill-%' AND status = 'COMMITTED'",
    )
    .fetch_one(log.pool())
    .await
    .expect("count");
    assert_eq!(committed, 0, "killed before any message was delivered");
    w.ledger.holding.store(false, Ordering::SeqCst);
    w.ledger.release.send_replace(true);

    let restarted = Settled::start(env!("CARGO_BIN_EXE_settled"), &db.url);
    let mut c = client(&restarted.url).await;
    for i in 0..20 {
        wait_for_status(&mut c, &format!("kill-{i}"), pb::Status::Committed).await;
    }
    for i in 0..20 {
        assert_eq!(
            w.credits(&format!("kill-{i}")).await,
            expected(),
            "kill-{i}"
        );
    }
    assert!(
        w.ledger.duplicates.load(Ordering::SeqCst) >= 40,
        "after the restart the unanswered Executes were delivered again, as duplicates"
    );
    assert_eq!(w.sold().await, 20);
    let executes: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM settle_barrier WHERE op = 'execute'")
            .fetch_one(w.ledger_db.database().pool())
            .await
            .expect("count");
    assert_eq!(executes, 60);
    w.stop().await;
}
both!(settled_killed_during_delivery_delivers_every_step_exactly_once);

async fn bad_input_gets_exact_codes_and_changes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut w = world(backend, &coordinator.url()).await;
    let good = pb::PrepareRequest {
        gid: "m-1".to_owned(),
        steps: World::steps(),
        timeout_ms: 60_000,
        query_endpoint: w.service_url.clone(),
        ..Default::default()
    };
    let prepare = |change: fn(&mut pb::PrepareRequest)| {
        let mut request = good.clone();
        change(&mut request);
        request
    };
    let cases: Vec<(&str, pb::PrepareRequest, Code)> = vec![
        (
            "no query endpoint",
            prepare(|r| r.query_endpoint.clear()),
            Code::InvalidArgument,
        ),
        (
            "bad query endpoint",
            prepare(|r| r.query_endpoint = "ftp://x".into()),
            Code::InvalidArgument,
        ),
        (
            "bad gid",
            prepare(|r| r.gid = "semi;colon".into()),
            Code::InvalidArgument,
        ),
        (
            "no steps",
            prepare(|r| r.steps.clear()),
            Code::InvalidArgument,
        ),
        (
            "zero timeout",
            prepare(|r| r.timeout_ms = 0),
            Code::InvalidArgument,
        ),
        (
            "payload too big",
            prepare(|r| r.steps[0].payload = vec![b'x'; 65 * 1024].into()),
            Code::InvalidArgument,
        ),
        (
            "unknown participant",
            prepare(|r| r.steps[1].participant = "nobody".into()),
            Code::NotFound,
        ),
        (
            "query endpoint naming no registered participant",
            prepare(|r| r.query_endpoint = "nobody".into()),
            Code::NotFound,
        ),
        (
            "query endpoint neither a URL nor a name",
            prepare(|r| r.query_endpoint = "no such name".into()),
            Code::InvalidArgument,
        ),
        (
            "timeout over 24 h",
            prepare(|r| r.timeout_ms = 24 * 3_600_000 + 1),
            Code::InvalidArgument,
        ),
        (
            "too many labels",
            prepare(|r| r.labels = (0..17).map(|i| (format!("k{i}"), "v".to_owned())).collect()),
            Code::InvalidArgument,
        ),
        (
            "more steps than the limit",
            prepare(|r| {
                let step = r.steps[0].clone();
                r.steps = vec![step; 65];
            }),
            Code::InvalidArgument,
        ),
    ];
    for (what, request, expected) in cases {
        let answer = w.raw.prepare(request).await;
        assert_eq!(code(answer), expected, "{what}");
    }
    let missing = w.raw.get(pb::GetRequest { gid: "m-1".into() }).await;
    assert_eq!(code(missing), Code::NotFound, "nothing was stored");

    let first = w
        .raw
        .prepare(good.clone())
        .await
        .expect("prepare")
        .into_inner();
    assert!(first.created);
    let again = w
        .raw
        .prepare(good.clone())
        .await
        .expect("again")
        .into_inner();
    assert!(!again.created, "a repeated Prepare returns the message");
    let mut other = good.clone();
    other.steps.pop();
    assert_eq!(code(w.raw.prepare(other).await), Code::FailedPrecondition);

    let commit = w
        .raw
        .commit(pb::CommitRequest {
            gid: "m-1".into(),
            wait_ms: 0,
        })
        .await;
    assert_eq!(
        code(commit),
        Code::FailedPrecondition,
        "a message is not committed"
    );
    let begin = w
        .raw
        .begin(pb::BeginRequest {
            mode: pb::Mode::Message as i32,
            timeout_ms: 1000,
            ..Default::default()
        })
        .await;
    assert_eq!(code(begin), Code::InvalidArgument);
    let submit = |gid: &str| pb::SubmitRequest {
        gid: gid.to_owned(),
        ..Default::default()
    };
    assert_eq!(code(w.raw.submit(submit("nope")).await), Code::NotFound);
    assert_eq!(code(w.raw.submit(submit("")).await), Code::InvalidArgument);
    let too_long = pb::SubmitRequest {
        wait_ms: 60_001,
        ..submit("m-1")
    };
    assert_eq!(code(w.raw.submit(too_long).await), Code::InvalidArgument);
    let timeout_without_steps = pb::SubmitRequest {
        timeout_ms: 1_000,
        ..submit("m-1")
    };
    assert_eq!(
        code(w.raw.submit(timeout_without_steps).await),
        Code::InvalidArgument
    );
    w.raw
        .begin(pb::BeginRequest {
            gid: "a-tcc".into(),
            timeout_ms: 60_000,
            ..Default::default()
        })
        .await
        .expect("begin");
    assert_eq!(
        code(w.raw.submit(submit("a-tcc")).await),
        Code::FailedPrecondition
    );
    let with_steps = pb::SubmitRequest {
        gid: "m-1".into(),
        steps: World::steps(),
        timeout_ms: 1000,
        ..Default::default()
    };
    assert_eq!(
        code(w.raw.submit(with_steps).await),
        Code::FailedPrecondition,
        "a prepared message is submitted without steps"
    );

    // Abort of a prepared message (its service knows it rolled back), then Submit.
    let abort = |gid: &str| pb::AbortRequest {
        gid: gid.to_owned(),
        reason: "changed my mind".into(),
        wait_ms: 0,
    };
    assert_eq!(code(w.raw.abort(abort("nope")).await), Code::NotFound);
    let aborted = w.raw.abort(abort("m-1")).await.expect("abort").into_inner();
    assert_eq!(aborted.status(), pb::Status::Aborted);
    assert_eq!(
        code(w.raw.submit(submit("m-1")).await),
        Code::FailedPrecondition
    );

    // A message submitted without Prepare: steps only.
    let direct = w
        .client
        .message("direct")
        .step("ledger", "credit", &credit("dave", 3))
        .submit()
        .await
        .expect("submit");
    assert_eq!(direct.status, pb::Status::Committed);
    assert_eq!(w.credits("direct").await, vec![(1, "dave".to_owned(), 3)]);
    assert_eq!(
        code(w.raw.abort(abort("direct")).await),
        Code::FailedPrecondition,
        "a submitted message is not aborted"
    );
    let no_steps = w.client.message("x").submit().await.expect_err("no steps");
    assert!(matches!(no_steps, message::Error::Builder(_)), "{no_steps}");
    let no_endpoint = w
        .client
        .message("y")
        .step("ledger", "credit", &credit("erin", 1))
        .run_local(w.service.database(), |conn| Box::pin(take_apple(conn)))
        .await
        .expect_err("no query endpoint");
    assert!(
        matches!(no_endpoint, message::Error::Builder(_)),
        "{no_endpoint}"
    );
    assert_eq!(w.sold().await, 0);

    // The coordinator still serves.
    w.message("after")
        .run_local(w.service.database(), |conn| Box::pin(take_apple(conn)))
        .await
        .expect("serving");
    assert_eq!(w.credits("after").await, expected());

    w.stop().await;
    coordinator.stop().await.expect("stop");
}
both!(bad_input_gets_exact_codes_and_changes_nothing);
