//! The barrier, through a real participant server (the test kit's `stock` participant) on
//! SQLite and PostgreSQL, each with a transaction per call and with group commit
//! (`Serve::group_commit`): duplicates, empty rollback, hanging Try, refused and failed
//! Trys (alone and among others committed together), the Try/Cancel race, retention, and
//! the participant's metrics, scraped after known calls; shedding under
//! `Serve::max_concurrent`; what `Participant::after` is told of each call; and messages'
//! local transactions as `QueryPrepared` answers for them.

use std::time::Duration;

use settle::{
    Barrier,
    barrier::{self, LocalEntry},
    participant::Outcome,
    proto::v1 as pb,
};
use settle_proto::v1::participant_client::ParticipantClient;
use settle_testkit::{Backend, TestDb, scrape, stock, value, wait_for_value};
use sqlx::Row;
use tonic::{Code, transport::Channel};

const INITIAL: i64 = 1_000;

struct Fixture {
    db: TestDb,
    barrier: Barrier,
    client: ParticipantClient<Channel>,
    serving: settle::server::Serving,
}

/// Each test runs on both databases, with a transaction per call and with group commit.
macro_rules! each_mode {
    ($name:ident) => {
        mod $name {
            use settle_testkit::Backend;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name(Backend::Sqlite, false).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name(Backend::Postgres, false).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite_group_commit() {
                super::$name(Backend::Sqlite, true).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres_group_commit() {
                super::$name(Backend::Postgres, true).await
            }
        }
    };
}

async fn fixture(backend: Backend, group_commit: bool) -> Fixture {
    fixture_with(backend, group_commit, None).await
}

/// A fixture whose participant runs at most `max_concurrent` calls at once, if given.
async fn fixture_with(
    backend: Backend,
    group_commit: bool,
    max_concurrent: Option<usize>,
) -> Fixture {
    serving(backend, group_commit, max_concurrent, stock::Stock).await
}

/// A fixture serving `participant` on the stock database.
async fn serving(
    backend: Backend,
    group_commit: bool,
    max_concurrent: Option<usize>,
    participant: impl settle::Participant,
) -> Fixture {
    let db = TestDb::new(backend).await;
    let barrier = stock::open(&db.url, &[("apple", INITIAL)])
        .await
        .expect("open stock");
    let mut serve = settle::serve("stock", participant, barrier.clone())
        .metrics_listen("127.0.0.1:0".parse().expect("addr"));
    if group_commit {
        serve = serve.group_commit(16);
    }
    if let Some(n) = max_concurrent {
        serve = serve.max_concurrent(n);
    }
    let serving = serve
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("serve");
    let client = ParticipantClient::connect(serving.url().to_owned())
        .await
        .expect("connect");
    Fixture {
        db,
        barrier,
        client,
        serving,
    }
}

fn request(gid: &str, branch_id: u32, qty: i64) -> pb::BranchRequest {
    pb::BranchRequest {
        gid: gid.to_owned(),
        branch_id,
        action: "reserve".to_owned(),
        payload: serde_json::to_vec(&stock::Reserve {
            item: "apple".to_owned(),
            qty,
        })
        .expect("json")
        .into(),
    }
}

impl Fixture {
    /// Holds the stock row in another writer's transaction until that is rolled back, so
    /// that a Try waits on it.
    async fn lock_stock_row(&self) -> sqlx::Transaction<'static, sqlx::Any> {
        let other = settle::db::Database::connect(&self.db.url, 1)
            .await
            .expect("connect");
        let mut blocker = other.begin_write().await.expect("begin");
        sqlx::query("UPDATE stock SET available = available WHERE item = 'apple'")
            .execute(&mut *blocker)
            .await
            .expect("lock the row");
        blocker
    }

    /// (available, reserved, sold)
    async fn stock(&self) -> (i64, i64, i64) {
        let row = sqlx::query("SELECT available, reserved, sold FROM stock WHERE item = 'apple'")
            .fetch_one(self.barrier.database().pool())
            .await
            .expect("stock row");
        (
            row.try_get("available").expect("available"),
            row.try_get("reserved").expect("reserved"),
            row.try_get("sold").expect("sold"),
        )
    }

    async fn barrier_rows(&self, gid: &str) -> Vec<String> {
        let rows = sqlx::query("SELECT op FROM settle_barrier WHERE gid = $1 ORDER BY op")
            .bind(gid)
            .fetch_all(self.barrier.database().pool())
            .await
            .expect("barrier rows");
        rows.iter().map(|r| r.try_get("op").expect("op")).collect()
    }

    async fn call(&self, op: &str, req: pb::BranchRequest) -> Result<(), Code> {
        let mut client = self.client.clone();
        let result = match op {
            "try" => client.r#try(req).await,
            "confirm" => client.confirm(req).await,
            "cancel" => client.cancel(req).await,
            other => panic!("unknown op {other}"),
        };
        result.map(drop).map_err(|s| s.code())
    }
}

async fn duplicates_have_no_effect(backend: Backend, group_commit: bool) {
    let f = fixture(backend, group_commit).await;
    for _ in 0..3 {
        assert_eq!(f.call("try", request("dup-1", 1, 5)).await, Ok(()));
    }
    assert_eq!(f.stock().await, (INITIAL - 5, 5, 0), "reserved once");
    for _ in 0..3 {
        assert_eq!(f.call("confirm", request("dup-1", 1, 5)).await, Ok(()));
    }
    assert_eq!(f.stock().await, (INITIAL - 5, 0, 5), "sold once");

    for _ in 0..2 {
        assert_eq!(f.call("try", request("dup-2", 1, 7)).await, Ok(()));
    }
    for _ in 0..3 {
        assert_eq!(f.call("cancel", request("dup-2", 1, 7)).await, Ok(()));
    }
    assert_eq!(f.stock().await, (INITIAL - 5, 0, 5), "released once");
    f.serving.stop().await.expect("stop");
}
each_mode!(duplicates_have_no_effect);

async fn cancel_before_try_is_an_empty_rollback_and_blocks_the_late_try(
    backend: Backend,
    group_commit: bool,
) {
    let f = fixture(backend, group_commit).await;
    assert_eq!(f.call("cancel", request("early", 1, 3)).await, Ok(()));
    assert_eq!(
        f.stock().await,
        (INITIAL, 0, 0),
        "nothing to release, nothing released"
    );
    assert_eq!(
        f.call("try", request("early", 1, 3)).await,
        Err(Code::Aborted),
        "hanging Try refused"
    );
    assert_eq!(
        f.stock().await,
        (INITIAL, 0, 0),
        "the late Try reserved nothing"
    );
    assert_eq!(f.barrier_rows("early").await, ["cancel", "try"]);
    // A repeated Cancel is still harmless.
    assert_eq!(f.call("cancel", request("early", 1, 3)).await, Ok(()));
    assert_eq!(f.stock().await, (INITIAL, 0, 0));
    f.serving.stop().await.expect("stop");
}
each_mode!(cancel_before_try_is_an_empty_rollback_and_blocks_the_late_try);

async fn refused_or_failed_try_leaves_no_row(backend: Backend, group_commit: bool) {
    let f = fixture(backend, group_commit).await;
    assert_eq!(
        f.call("try", request("refused", 1, INITIAL + 1)).await,
        Err(Code::Aborted)
    );
    assert!(f.barrier_rows("refused").await.is_empty());

    let mut garbage = request("failed", 1, 1);
    garbage.payload = b"not json".to_vec().into();
    assert_eq!(f.call("try", garbage).await, Err(Code::InvalidArgument));
    assert!(f.barrier_rows("failed").await.is_empty());

    // The Cancel that follows a refused Try is an empty rollback: nothing is released.
    assert_eq!(
        f.call("cancel", request("refused", 1, INITIAL + 1)).await,
        Ok(())
    );
    assert_eq!(f.stock().await, (INITIAL, 0, 0));
    // A Try retried after a failure (with a good payload) still runs.
    assert_eq!(f.call("try", request("failed", 1, 1)).await, Ok(()));
    assert_eq!(f.stock().await, (INITIAL - 1, 1, 0));
    f.serving.stop().await.expect("stop");
}
each_mode!(refused_or_failed_try_leaves_no_row);

async fn racing_try_and_cancel_end_in_a_legal_order(backend: Backend, group_commit: bool) {
    let f = fixture(backend, group_commit).await;
    let mut tries_ok = 0;
    let rounds = 60;
    for round in 0..rounds {
        let gid = format!("race-{round}");
        let (tried, cancelled) = tokio::join!(
            f.call("try", request(&gid, 1, 2)),
            f.call("cancel", request(&gid, 1, 2)),
        );
        assert_eq!(cancelled, Ok(()), "{gid}: Cancel always succeeds");
        match tried {
            Ok(()) => tries_ok += 1,
            Err(code) => assert_eq!(
                code,
                Code::Aborted,
                "{gid}: a Try after its Cancel is refused"
            ),
        }
        // Either order leaves the stock where it started: Try then Cancel releases what Try
        // reserved; Cancel then Try has no effect at all.
        assert_eq!(
            f.stock().await,
            (INITIAL, 0, 0),
            "{gid}: both effects or neither"
        );
        assert_eq!(f.barrier_rows(&gid).await, ["cancel", "try"]);
    }
    // Many concurrent rounds at once, too.
    let calls = (0..40).map(|i| {
        let f = &f;
        async move {
            let gid = format!("burst-{i}");
            tokio::join!(
                f.call("cancel", request(&gid, 1, 1)),
                f.call("try", request(&gid, 1, 1))
            )
        }
    });
    for (cancelled, tried) in futures::future::join_all(calls).await {
        assert_eq!(cancelled, Ok(()));
        assert!(matches!(tried, Ok(()) | Err(Code::Aborted)), "{tried:?}");
    }
    assert_eq!(f.stock().await, (INITIAL, 0, 0));
    println!("{tries_ok} of {rounds} Trys won their race");
    f.serving.stop().await.expect("stop");
}
each_mode!(racing_try_and_cancel_end_in_a_legal_order);

async fn finished_branches_are_removed_in_batches(backend: Backend, group_commit: bool) {
    let f = fixture(backend, group_commit).await;
    for i in 0..25 {
        let gid = format!("old-{i}");
        assert_eq!(f.call("try", request(&gid, 1, 1)).await, Ok(()));
        assert_eq!(f.call("confirm", request(&gid, 1, 1)).await, Ok(()));
    }
    // In flight: tried, phase two still to come. Its row must outlive any retention.
    assert_eq!(f.call("try", request("in-flight", 1, 1)).await, Ok(()));
    assert_eq!(
        f.barrier
            .delete_older_than(Duration::from_secs(3600), 10)
            .await
            .expect("delete"),
        0,
        "young rows stay"
    );
    // Let the clock move past the rows' creation millisecond.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut batches = Vec::new();
    loop {
        let deleted = f
            .barrier
            .delete_older_than(Duration::ZERO, 10)
            .await
            .expect("delete");
        if deleted == 0 {
            break;
        }
        batches.push(deleted);
    }
    assert_eq!(
        batches,
        [20, 20, 10],
        "ten branches (try and confirm rows) a batch"
    );
    assert_eq!(f.barrier_rows("in-flight").await, ["try"]);
    // Its Cancel still finds the Try and releases the unit.
    assert_eq!(f.call("cancel", request("in-flight", 1, 1)).await, Ok(()));
    assert_eq!(f.stock().await, (INITIAL - 25, 0, 25));
    f.serving.stop().await.expect("stop");
}
each_mode!(finished_branches_are_removed_in_batches);

async fn a_refused_try_fails_and_the_others_count_once(backend: Backend, group_commit: bool) {
    let f = fixture(backend, group_commit).await;
    // 30 Trys of 40 at once on 1,000: 25 fit. With group commit the refusals land in groups
    // with successes: each is answered, its group rolled back and the others run again.
    let tries = (0..30).map(|i| {
        let f = &f;
        async move {
            (
                i,
                f.call("try", request(&format!("crowd-{i}"), 1, 40)).await,
            )
        }
    });
    let answers = futures::future::join_all(tries).await;
    let won: Vec<u32> = answers
        .iter()
        .filter(|(_, answer)| answer.is_ok())
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(won.len(), 25, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(_, answer)| matches!(answer, Ok(()) | Err(Code::Aborted))),
        "{answers:?}"
    );
    assert_eq!(f.stock().await, (0, 1_000, 0), "each success reserved once");
    for (i, answer) in &answers {
        let rows = f.barrier_rows(&format!("crowd-{i}")).await;
        match answer {
            Ok(()) => assert_eq!(rows, ["try"], "crowd-{i}"),
            Err(_) => assert!(rows.is_empty(), "crowd-{i} refused but left {rows:?}"),
        }
    }
    // Their Confirms at once, each twice: sold once each.
    let confirms = won.iter().flat_map(|i| {
        let f = &f;
        (0..2).map(move |_| f.call("confirm", request(&format!("crowd-{i}"), 1, 40)))
    });
    let confirmed = futures::future::join_all(confirms).await;
    assert!(confirmed.iter().all(Result::is_ok), "{confirmed:?}");
    assert_eq!(f.stock().await, (0, 0, 1_000));
    f.serving.stop().await.expect("stop");
}
each_mode!(a_refused_try_fails_and_the_others_count_once);

async fn known_calls_move_the_participant_metrics_by_exactly_that(
    backend: Backend,
    group_commit: bool,
) {
    let f = fixture(backend, group_commit).await;
    assert_eq!(f.call("try", request("m-1", 1, 5)).await, Ok(()));
    assert_eq!(f.call("try", request("m-1", 1, 5)).await, Ok(()));
    assert_eq!(f.call("confirm", request("m-1", 1, 5)).await, Ok(()));
    assert_eq!(f.call("confirm", request("m-1", 1, 5)).await, Ok(()));
    let short = request("m-2", 1, INITIAL * 10);
    assert_eq!(f.call("try", short).await, Err(Code::Aborted));
    assert_eq!(f.call("cancel", request("m-3", 1, 1)).await, Ok(()));
    assert_eq!(
        f.call("try", request("m-3", 1, 1)).await,
        Err(Code::Aborted)
    );
    let mut malformed = request("m-4", 1, 1);
    malformed.payload = b"not json".to_vec().into();
    assert_eq!(f.call("try", malformed).await, Err(Code::InvalidArgument));

    let samples = scrape(f.serving.metrics_addr().expect("metrics on")).await;
    let calls = |op: &str, result: &str| {
        let key = format!(r#"settle_participant_calls_total{{op="{op}",result="{result}"}}"#);
        assert!(samples.contains_key(&key), "{key} is exported");
        value(&samples, &key)
    };
    assert_eq!(calls("try", "ok"), 2.0, "the Try and its duplicate");
    assert_eq!(calls("try", "refused"), 2.0, "sold out and hanging");
    assert_eq!(calls("try", "error"), 1.0, "the malformed payload");
    assert_eq!(calls("try", "timeout"), 0.0);
    assert_eq!(calls("confirm", "ok"), 2.0);
    assert_eq!(calls("cancel", "ok"), 1.0, "the empty rollback");
    assert_eq!(calls("cancel", "error"), 0.0);
    let skipped = |reason: &str| {
        value(
            &samples,
            &format!(r#"settle_barrier_skipped_total{{reason="{reason}"}}"#),
        )
    };
    assert_eq!(skipped("duplicate"), 2.0, "the second Try and Confirm");
    assert_eq!(skipped("empty_rollback"), 1.0);
    assert_eq!(skipped("hanging_try"), 1.0);
    let timed = |op: &str| {
        value(
            &samples,
            &format!(r#"settle_participant_call_duration_seconds_count{{op="{op}"}}"#),
        )
    };
    assert_eq!(
        (timed("try"), timed("confirm"), timed("cancel")),
        (5.0, 2.0, 1.0)
    );
    let grouped = value(&samples, "settle_participant_group_commit_size_sum");
    assert_eq!(
        grouped,
        if group_commit { 8.0 } else { 0.0 },
        "with group commit, every call is in one group"
    );
    assert_eq!(
        samples.contains_key("settle_participant_group_commit_size_count"),
        group_commit
    );
    f.serving.stop().await.expect("stop");
}
each_mode!(known_calls_move_the_participant_metrics_by_exactly_that);

async fn a_call_its_caller_gave_up_on_counts_as_a_timeout(backend: Backend, group_commit: bool) {
    let f = fixture(backend, group_commit).await;
    // Another writer holds the stock row, so the Try waits past its deadline.
    let blocker = f.lock_stock_row().await;
    let mut late = tonic::Request::new(request("t-1", 1, 1));
    late.set_timeout(Duration::from_millis(200));
    let answer = f.client.clone().r#try(late).await;
    assert!(answer.is_err(), "{answer:?}");

    let metrics = f.serving.metrics_addr().expect("metrics on");
    let key = r#"settle_participant_calls_total{op="try",result="timeout"}"#;
    wait_for_value(metrics, key, 1.0).await;
    let samples = scrape(metrics).await;
    assert_eq!(value(&samples, key), 1.0);
    let answered = r#"settle_participant_calls_total{op="try",result="ok"}"#;
    assert_eq!(value(&samples, answered), 0.0, "counted once, as a timeout");
    blocker.rollback().await.expect("release");
    f.serving.stop().await.expect("stop");
}
each_mode!(a_call_its_caller_gave_up_on_counts_as_a_timeout);

async fn a_try_over_the_limit_is_refused_and_a_cancel_waits_for_a_place(
    backend: Backend,
    group_commit: bool,
) {
    let f = fixture_with(backend, group_commit, Some(1)).await;
    // Another writer holds the stock row: the Try that gets the only place waits on it.
    let blocker = f.lock_stock_row().await;

    let (mut a, mut b) = (f.client.clone(), f.client.clone());
    let mut first = tokio::spawn(async move { a.r#try(request("t-a", 1, 1)).await });
    let mut second = tokio::spawn(async move { b.r#try(request("t-b", 1, 1)).await });
    // Whichever came second finds the place taken and is refused at once; the other waits.
    let (shed, held, shed_gid) = tokio::select! {
        shed = &mut first => (shed, second, "t-a"),
        shed = &mut second => (shed, first, "t-b"),
    };
    let shed = shed.expect("task").expect_err("shed");
    assert_eq!(
        shed.code(),
        Code::Aborted,
        "a shed Try is a refusal: {shed:?}"
    );
    assert!(shed.message().contains("overloaded"), "{}", shed.message());

    // Its initiator aborts: the Cancel is not shed, it waits for the place (here, past its
    // deadline, since the place is held until the row is released).
    let mut cancel = tonic::Request::new(request(shed_gid, 1, 1));
    cancel.set_timeout(Duration::from_millis(300));
    let waited = f.client.clone().cancel(cancel).await.expect_err("no place");
    assert!(
        matches!(waited.code(), Code::DeadlineExceeded | Code::Cancelled),
        "it waited past its deadline, it was not shed: {waited:?}"
    );

    blocker.rollback().await.expect("release the row");
    held.await.expect("task").expect("the held Try succeeds");
    f.client
        .clone()
        .cancel(request(shed_gid, 1, 1))
        .await
        .expect("the Cancel gets its place");
    assert_eq!(
        f.stock().await,
        (INITIAL - 1, 1, 0),
        "only the held Try reserved"
    );
    f.serving.stop().await.expect("stop");
}
each_mode!(a_try_over_the_limit_is_refused_and_a_cancel_waits_for_a_place);

/// The stock participant, telling a channel each outcome `Participant::after` learns.
struct Told(tokio::sync::mpsc::UnboundedSender<(settle::participant::Op, Outcome)>);

impl settle::Participant for Told {
    async fn r#try(
        &self,
        branch: &settle::Branch,
        conn: &mut sqlx::AnyConnection,
    ) -> Result<(), settle::participant::Error> {
        settle::Participant::r#try(&stock::Stock, branch, conn).await
    }

    async fn confirm(
        &self,
        branch: &settle::Branch,
        conn: &mut sqlx::AnyConnection,
    ) -> Result<(), settle::participant::Error> {
        settle::Participant::confirm(&stock::Stock, branch, conn).await
    }

    async fn cancel(
        &self,
        branch: &settle::Branch,
        conn: &mut sqlx::AnyConnection,
    ) -> Result<(), settle::participant::Error> {
        settle::Participant::cancel(&stock::Stock, branch, conn).await
    }

    async fn after(&self, op: settle::participant::Op, _: &settle::Branch, outcome: Outcome) {
        let _ = self.0.send((op, outcome));
    }
}

async fn after_is_told_every_outcome_and_unknown_for_a_call_given_up_on(
    backend: Backend,
    group_commit: bool,
) {
    use settle::participant::Op;
    let (tell, mut told) = tokio::sync::mpsc::unbounded_channel();
    let f = serving(backend, group_commit, None, Told(tell)).await;
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), told.recv())
            .await
            .expect("after is told within 10 s")
            .expect("channel open")
    };

    f.call("try", request("a-1", 1, 1)).await.expect("try");
    assert_eq!(next().await, (Op::Try, Outcome::Applied));
    f.call("try", request("a-1", 1, 1)).await.expect("again");
    assert_eq!(next().await, (Op::Try, Outcome::Duplicate));
    f.call("cancel", request("a-2", 1, 1))
        .await
        .expect("cancel");
    assert_eq!(next().await, (Op::Cancel, Outcome::EmptyRollback));
    assert_eq!(
        f.call("try", request("a-2", 1, 1)).await,
        Err(Code::Aborted)
    );
    assert_eq!(next().await, (Op::Try, Outcome::Hanging));
    assert_eq!(
        f.call("try", request("a-3", 1, INITIAL + 1)).await,
        Err(Code::Aborted)
    );
    assert_eq!(next().await, (Op::Try, Outcome::RolledBack));

    // Another writer holds the row: the caller gives up, the handler is dropped, and
    // `after` is still told, that nobody knows what became of the call.
    let blocker = f.lock_stock_row().await;
    let mut late = tonic::Request::new(request("a-4", 1, 1));
    late.set_timeout(Duration::from_millis(200));
    assert!(f.client.clone().r#try(late).await.is_err());
    assert_eq!(next().await, (Op::Try, Outcome::Unknown));
    blocker.rollback().await.expect("release");
    f.serving.stop().await.expect("stop");
}
each_mode!(after_is_told_every_outcome_and_unknown_for_a_call_given_up_on);

/// Asks the served participant about message `gid`, as the coordinator does.
async fn query_prepared(f: &Fixture, gid: &str) -> pb::LocalStatus {
    f.client
        .clone()
        .query_prepared(pb::QueryPreparedRequest {
            gid: gid.to_owned(),
        })
        .await
        .expect("query_prepared")
        .into_inner()
        .status()
}

async fn query_prepared_answers_from_the_barrier_and_blocks_a_late_commit(
    backend: Backend,
    group_commit: bool,
) {
    let f = fixture(backend, group_commit).await;
    let db = f.barrier.database();
    // Committed: the answer is committed, however often it is asked.
    let mut tx = db.begin_write().await.expect("begin");
    assert_eq!(
        barrier::enter_local(&mut tx, "msg-committed")
            .await
            .expect("enter"),
        LocalEntry::Proceed
    );
    tx.commit().await.expect("commit");
    for _ in 0..2 {
        assert_eq!(
            query_prepared(&f, "msg-committed").await,
            pb::LocalStatus::Committed
        );
    }
    let mut again = db.begin_write().await.expect("begin");
    assert_eq!(
        barrier::enter_local(&mut again, "msg-committed")
            .await
            .expect("enter"),
        LocalEntry::Committed,
        "a repeated local transaction does not run twice"
    );
    again.rollback().await.expect("rollback");

    // Asked while the local transaction is still open: the answer waits for its end. On
    // PostgreSQL the question is seen waiting on the row's key; SQLite has one writer, so
    // there the question may as well start after the commit, which it must then see.
    let mut open = db.begin_write().await.expect("begin");
    assert_eq!(
        barrier::enter_local(&mut open, "msg-open")
            .await
            .expect("enter"),
        LocalEntry::Proceed
    );
    let asked = tokio::spawn({
        let client = f.client.clone();
        async move {
            client
                .clone()
                .query_prepared(pb::QueryPreparedRequest {
                    gid: "msg-open".to_owned(),
                })
                .await
                .map(|r| r.into_inner().status())
        }
    });
    if backend == Backend::Postgres {
        // The question is waiting on the local transaction's row lock.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND datname = current_database()",
            )
            .fetch_one(db.pool())
            .await
            .expect("pg_stat_activity");
            if waiting > 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the question never waited"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    open.commit().await.expect("commit");
    assert_eq!(
        asked.await.expect("join").expect("query_prepared"),
        pb::LocalStatus::Committed
    );

    // Never committed: the answer is rolled back, and from then on the local transaction
    // cannot commit.
    assert_eq!(
        query_prepared(&f, "msg-lost").await,
        pb::LocalStatus::RolledBack
    );
    let mut late = db.begin_write().await.expect("begin");
    assert_eq!(
        barrier::enter_local(&mut late, "msg-lost")
            .await
            .expect("enter"),
        LocalEntry::RolledBack
    );
    late.rollback().await.expect("rollback");
    assert_eq!(
        query_prepared(&f, "msg-lost").await,
        pb::LocalStatus::RolledBack
    );
    assert_eq!(
        f.barrier_rows("msg-lost").await,
        ["message", "message_rollback"]
    );

    // Retention removes a rolled-back message's rows, never a committed one's.
    tokio::time::sleep(Duration::from_millis(5)).await;
    while f
        .barrier
        .delete_older_than(Duration::ZERO, 10)
        .await
        .expect("delete")
        > 0
    {}
    assert!(f.barrier_rows("msg-lost").await.is_empty());
    assert_eq!(f.barrier_rows("msg-committed").await, ["message"]);
    f.serving.stop().await.expect("stop");
}
each_mode!(query_prepared_answers_from_the_barrier_and_blocks_a_late_commit);
