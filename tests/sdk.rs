//! The SDK end to end: three `stock` participants served with `settle::serve`, an
//! in-process coordinator, and an initiator using `settle::Client`.

use std::time::Duration;

use settle::{Barrier, Client, client::Status, proto::v1 as pb};
use settle_testkit::{Backend, TestDb, both, start_coordinator, stock, test_config};
use sqlx::Row;

struct Shop {
    _dbs: Vec<TestDb>,
    barriers: Vec<Barrier>,
    servers: Vec<settle::server::Serving>,
}

/// Participants `s0`, `s1`, `s2`, each with 10 apples in its own database.
async fn shop(backend: Backend, coordinator: &str) -> Shop {
    let mut shop = Shop {
        _dbs: Vec::new(),
        barriers: Vec::new(),
        servers: Vec::new(),
    };
    for i in 0..3 {
        let db = TestDb::new(backend).await;
        let barrier = stock::open(&db.url, &[("apple", 10)]).await.expect("open");
        let serving = settle::serve(format!("s{i}"), stock::Stock, barrier.clone())
            .coordinator(coordinator)
            .bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("serve");
        shop._dbs.push(db);
        shop.barriers.push(barrier);
        shop.servers.push(serving);
    }
    shop
}

impl Shop {
    /// (available, reserved, sold) per participant.
    async fn stock(&self) -> Vec<(i64, i64, i64)> {
        let mut out = Vec::new();
        for barrier in &self.barriers {
            let row =
                sqlx::query("SELECT available, reserved, sold FROM stock WHERE item = 'apple'")
                    .fetch_one(barrier.database().pool())
                    .await
                    .expect("stock");
            out.push((
                row.try_get("available").expect("a"),
                row.try_get("reserved").expect("r"),
                row.try_get("sold").expect("s"),
            ));
        }
        out
    }

    async fn stop(self) {
        for server in self.servers {
            server.stop().await.expect("stop participant");
        }
    }
}

fn apples(qty: i64) -> stock::Reserve {
    stock::Reserve {
        item: "apple".to_owned(),
        qty,
    }
}

async fn three_participants_commit_or_abort_on_refusal(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let shop = shop(backend, &coordinator.url()).await;
    let client = Client::connect(coordinator.url()).await.expect("connect");

    let tx = client.begin(Duration::from_secs(30)).await.expect("begin");
    for i in 0..3 {
        tx.try_branch(&format!("s{i}"), "reserve", &apples(2))
            .await
            .expect("try");
    }
    let gid = tx.gid().to_owned();
    assert_eq!(tx.commit().await.expect("commit"), Status::Committed);
    assert_eq!(shop.stock().await, vec![(8, 0, 2); 3]);
    let read = client.get(&gid).await.expect("get");
    assert_eq!(read.status(), pb::Status::Committed);

    // s1 has only 8 left: asking for 9 is refused, and the caller aborts in one call.
    let tx = client.begin(Duration::from_secs(30)).await.expect("begin");
    tx.try_branch("s0", "reserve", &apples(1))
        .await
        .expect("s0 tries");
    let refused = tx
        .try_branch("s1", "reserve", &apples(9))
        .await
        .expect_err("s1 refuses");
    assert!(refused.is_refusal(), "{refused}");
    assert!(
        matches!(&refused, settle::client::Error::Refused { participant, .. } if participant == "s1")
    );
    assert_eq!(
        tx.abort(&refused.to_string()).await.expect("abort"),
        Status::Aborted
    );
    assert_eq!(
        shop.stock().await,
        vec![(8, 0, 2); 3],
        "s0's reservation was released"
    );

    shop.stop().await;
    coordinator.stop().await.expect("stop");
}
both!(three_participants_commit_or_abort_on_refusal);

async fn a_dropped_transaction_is_aborted(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let shop = shop(backend, &coordinator.url()).await;
    let client = Client::connect(coordinator.url()).await.expect("connect");

    let gid = {
        let tx = client
            .begin(Duration::from_secs(3600))
            .await
            .expect("begin");
        tx.try_branch("s2", "reserve", &apples(4))
            .await
            .expect("try");
        assert_eq!(shop.stock().await[2], (6, 4, 0));
        tx.gid().to_owned()
    };
    let mut coordinator_client = settle_testkit::client(&coordinator.url()).await;
    let aborted =
        settle_testkit::wait_for_status(&mut coordinator_client, &gid, pb::Status::Aborted).await;
    assert_eq!(aborted.reason, "dropped before commit");
    assert_eq!(
        shop.stock().await[2],
        (10, 0, 0),
        "released long before the one-hour deadline"
    );
    shop.stop().await;
    coordinator.stop().await.expect("stop");
}
both!(a_dropped_transaction_is_aborted);

#[tokio::test]
async fn a_coordinator_that_forgets_a_participant_learns_it_again() {
    let db = TestDb::new(Backend::Sqlite).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let stock_db = TestDb::new(Backend::Sqlite).await;
    let barrier = stock::open(&stock_db.url, &[("apple", 1)])
        .await
        .expect("open");
    let serving = settle::serve("forgotten", stock::Stock, barrier)
        .coordinator(coordinator.url())
        .reregister_every(Duration::from_millis(50))
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("serve");

    let store = coordinator_store(&db.url).await;
    assert_eq!(
        store.participant("forgotten").await.expect("read"),
        Some(serving.url().to_owned())
    );
    sqlx::query("DELETE FROM participant")
        .execute(&store_pool(&db.url).await)
        .await
        .expect("forget");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store
        .participant("forgotten")
        .await
        .expect("read")
        .is_none()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never registered again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    serving.stop().await.expect("stop");
    coordinator.stop().await.expect("stop");
}

async fn coordinator_store(url: &str) -> settle_coordinator::store::Store {
    settle_coordinator::store::Store::open(url, 2)
        .await
        .expect("store")
}

async fn store_pool(url: &str) -> sqlx::AnyPool {
    settle::db::Database::connect(url, 1)
        .await
        .expect("pool")
        .pool()
        .clone()
}

async fn branches_registered_with_begin_are_tried_together(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let shop = shop(backend, &coordinator.url()).await;
    let client = Client::connect(coordinator.url()).await.expect("connect");
    let options = |qty: [i64; 3]| settle::client::BeginOptions {
        timeout: Duration::from_secs(30),
        branches: (0..3)
            .map(|i| {
                settle::client::BranchSpec::json(&format!("s{i}"), "reserve", &apples(qty[i]))
                    .expect("json")
            })
            .collect(),
        ..Default::default()
    };

    let mut tx = client.begin_with(options([1, 2, 3])).await.expect("begin");
    tx.try_all().await.expect("every Try");
    assert_eq!(tx.commit().await.expect("commit"), Status::Committed);
    assert_eq!(shop.stock().await, vec![(9, 0, 1), (8, 0, 2), (7, 0, 3)]);

    let mut tx = client.begin_with(options([1, 20, 1])).await.expect("begin");
    let refused = tx.try_all().await.expect_err("s1 has no 20 apples");
    assert!(refused.is_refusal(), "{refused}");
    assert_eq!(tx.abort("refused").await.expect("abort"), Status::Aborted);
    assert_eq!(
        shop.stock().await,
        vec![(9, 0, 1), (8, 0, 2), (7, 0, 3)],
        "nothing held"
    );
    shop.stop().await;
    coordinator.stop().await.expect("stop");
}
both!(branches_registered_with_begin_are_tried_together);

/// A participant whose Confirm breaks a CHECK constraint of its own table until it is
/// fixed: a permanent failure, however often it is retried.
struct Checked {
    fixed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl settle::Participant for Checked {
    async fn r#try(
        &self,
        _: &settle::Branch,
        _: &mut sqlx::AnyConnection,
    ) -> Result<(), settle::participant::Error> {
        Ok(())
    }

    async fn confirm(
        &self,
        _: &settle::Branch,
        conn: &mut sqlx::AnyConnection,
    ) -> Result<(), settle::participant::Error> {
        let fixed = self.fixed.load(std::sync::atomic::Ordering::SeqCst);
        sqlx::query("INSERT INTO checked (n) VALUES ($1)")
            .bind(if fixed { 1i64 } else { -1 })
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn cancel(
        &self,
        _: &settle::Branch,
        _: &mut sqlx::AnyConnection,
    ) -> Result<(), settle::participant::Error> {
        Ok(())
    }
}

/// A database error that no retry can fix (a constraint violated) is answered INTERNAL
/// with its cause, and the coordinator flags the transaction after that first attempt,
/// long before its escalation threshold, while it keeps retrying: the decision stands.
async fn a_confirm_that_breaks_a_constraint_is_internal_and_flagged_at_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db.url);
    config.retry.attention_after_attempts = 1000;
    config.retry.initial = Duration::from_millis(10);
    config.retry.cap = Duration::from_millis(40);
    config.recovery.interval = Duration::from_millis(5);
    let coordinator = start_coordinator(config).await;
    let participant_db = TestDb::new(backend).await;
    let database = settle::db::Database::connect(&participant_db.url, 4)
        .await
        .expect("connect");
    sqlx::query("CREATE TABLE checked (n BIGINT NOT NULL CHECK (n > 0))")
        .execute(database.pool())
        .await
        .expect("table");
    let barrier = Barrier::new(database);
    barrier.migrate().await.expect("barrier");
    let fixed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checked = Checked {
        fixed: fixed.clone(),
    };
    let serving = settle::serve("checked", checked, barrier.clone())
        .coordinator(coordinator.url())
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("serve");
    let client = Client::connect(coordinator.url()).await.expect("connect");

    let tx = client.begin(Duration::from_secs(30)).await.expect("begin");
    tx.try_branch("checked", "a", &()).await.expect("try");
    let gid = tx.gid().to_owned();
    assert_eq!(tx.commit().await.expect("commit"), Status::Committing);

    let mut c = settle_testkit::client(&coordinator.url()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let flagged = loop {
        let tx = settle_testkit::get(&mut c, &gid).await;
        if tx.attempts >= 1 {
            break tx;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never retried: {tx:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(flagged.status(), pb::Status::Committing);
    assert!(flagged.needs_attention, "flagged at once: {flagged:?}");
    let error = &flagged.branches[0].last_error;
    assert!(
        error.contains("Internal") && error.to_lowercase().contains("check"),
        "the code and the cause: {error}"
    );

    fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    settle_testkit::wait_for_status(&mut c, &gid, pb::Status::Committed).await;
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM checked")
        .fetch_one(barrier.database().pool())
        .await
        .expect("count");
    assert_eq!(rows, 1, "confirmed once, when it could be");
    serving.stop().await.expect("stop");
    coordinator.stop().await.expect("stop");
}
both!(a_confirm_that_breaks_a_constraint_is_internal_and_flagged_at_once);

async fn a_start_refused_for_load_is_retried_then_fails_as_overloaded(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db.url);
    config.admission.max_in_flight = Some(1);
    config.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let coordinator = start_coordinator(config).await;
    let metrics = coordinator.metrics_addr().expect("metrics");
    let client = Client::connect(coordinator.url()).await.expect("connect");
    let holder = client
        .begin(Duration::from_secs(30))
        .await
        .expect("the only place");

    let error = client
        .clone()
        .with_start_tries(3)
        .begin(Duration::from_secs(30))
        .await
        .expect_err("no place all along");
    match &error {
        settle::client::Error::Overloaded { status, tries } => {
            assert_eq!(*tries, 3);
            assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        }
        other => panic!("expected Overloaded, got {other:?}"),
    }
    let refusals = r#"settle_admission_refused_total{limit="in_flight"}"#;
    assert_eq!(
        settle_testkit::value(&settle_testkit::scrape(metrics).await, refusals),
        3.0,
        "tried three times"
    );

    // A start that keeps trying gets in once the place is given back.
    let patient = client.clone().with_start_tries(100);
    let waiting = tokio::spawn(async move { patient.begin(Duration::from_secs(30)).await });
    settle_testkit::wait_for_value(metrics, refusals, 4.0).await;
    assert_eq!(
        holder.abort("make room").await.expect("abort"),
        Status::Aborted
    );
    let admitted = waiting
        .await
        .expect("task")
        .expect("admitted after retrying");
    assert_eq!(admitted.commit().await.expect("commit"), Status::Committed);
    coordinator.stop().await.expect("stop");
}
both!(a_start_refused_for_load_is_retried_then_fails_as_overloaded);
