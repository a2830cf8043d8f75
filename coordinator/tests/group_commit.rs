//! Group commit on SQLite and PostgreSQL: many concurrent Begins, registrations, decisions
//! and round records — including several for the same gid at the same moment, which land in one
//! batch — give exactly the answers they would give one after the other.

use std::collections::BTreeMap;

use futures::future::join_all;
use settle_coordinator::{
    model::{BranchStatus, Mode, Status},
    store::{
        BranchOutcome, Escalation, NewBranch, Origin, Refusal, RegisterRefusal, RoundResult, Store,
    },
};
use settle_testkit::{Backend, TestDb, both};

const GIDS: usize = 40;
const COPIES: usize = 5;

fn branches(gid: &str) -> Vec<NewBranch<'_>> {
    ["a", "b", "c"]
        .into_iter()
        .map(|participant| NewBranch {
            participant,
            action: "reserve",
            payload: gid.as_bytes(),
        })
        .collect()
}

async fn concurrent_writes_for_one_gid_answer_as_if_one_after_the_other(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = Store::open(&db.url, 8).await.expect("store");
    let gids: Vec<String> = (0..GIDS).map(|i| format!("group-{i}")).collect();
    let labels = BTreeMap::new();

    // Every gid begun COPIES times at once: one Begin creates it, the others find it.
    let begins = gids.iter().flat_map(|gid| {
        let (store, labels) = (&store, &labels);
        (0..COPIES).map(move |_| async move {
            let (tx, created) = store
                .begin(
                    gid,
                    Mode::Tcc,
                    Status::Trying,
                    60_000,
                    Origin::labels(labels),
                    &branches(gid),
                )
                .await
                .expect("begin");
            assert_eq!(&tx.gid, gid);
            assert_eq!(tx.branch_count, 3);
            (gid.clone(), created)
        })
    });
    let begun = join_all(begins).await;
    for gid in &gids {
        let created = begun.iter().filter(|(g, c)| g == gid && *c).count();
        assert_eq!(created, 1, "{gid} created by exactly one Begin");
        let stored = store.branches(gid).await.expect("branches");
        let participants: Vec<_> = stored.iter().map(|b| b.participant.as_str()).collect();
        assert_eq!(participants, ["a", "b", "c"], "{gid} has its branches once");
        assert!(stored.iter().all(|b| b.payload.as_ref() == gid.as_bytes()));
    }

    // Registrations at once: on every gid two that fit (ids 4 and 5, in one batch), and on
    // the first gid ten more than the limit allows; those do not fit together, so each
    // is tried alone, and exactly as many as fit get in.
    let registrations = gids.iter().flat_map(|gid| {
        let store = &store;
        (0..2).map(move |_| async move {
            store
                .register_branch(gid, "d", "extra", b"", 64)
                .await
                .expect("register")
                .expect("registered")
        })
    });
    let registered = join_all(registrations).await;
    for (gid, ids) in gids.iter().zip(registered.chunks(2)) {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        assert_eq!(ids, [4, 5], "{gid}");
    }
    let crowded =
        join_all((0..10).map(|_| store.register_branch(&gids[0], "e", "x", b"", 10))).await;
    let mut fitted: Vec<u32> = crowded
        .iter()
        .filter_map(|r| r.as_ref().expect("register").as_ref().ok().copied())
        .collect();
    fitted.sort_unstable();
    assert_eq!(fitted, [6, 7, 8, 9, 10]);
    assert!(crowded.iter().all(|r| matches!(
        r.as_ref().expect("register"),
        Ok(_) | Err(RegisterRefusal::TooManyBranches(_))
    )));
    let first_branches = 10;

    // Registrations for a gid that does not exist, in one batch: refused, and nothing stored
    // under it. On PostgreSQL no foreign key checks this (migration 0005); the slot taken
    // on the transaction's row does.
    let orphans =
        join_all((0..3).map(|_| store.register_branch("group-none", "d", "x", b"", 64))).await;
    assert!(orphans.iter().all(|r| matches!(
        r.as_ref().expect("register"),
        Err(RegisterRefusal::NotFound)
    )));
    assert!(
        store
            .branches("group-none")
            .await
            .expect("branches")
            .is_empty()
    );

    // Every gid decided COPIES times at once, commits racing aborts: one decision wins,
    // and it reads the branches; the others see the winner's state.
    let decisions = gids.iter().flat_map(|gid| {
        let store = &store;
        (0..COPIES).map(move |copy| async move {
            let decided = if copy % 2 == 0 {
                store.decide_commit(gid, "me", 30_000, None).await
            } else {
                store.decide_abort(gid, "me", 30_000, "racing", None).await
            };
            (gid.clone(), decided.expect("decide"))
        })
    });
    let decided = join_all(decisions).await;
    let mut leases = Vec::new();
    for gid in &gids {
        let mine: Vec<_> = decided.iter().filter(|(g, _)| g == gid).collect();
        let winners: Vec<_> = mine.iter().filter_map(|(_, d)| d.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "{gid} decided once");
        let winner = winners[0];
        let expected = if gid == &gids[0] { first_branches } else { 5 };
        assert_eq!(
            winner.branches.len(),
            expected,
            "{gid}: the decision read the branches"
        );
        let status = store.get(gid).await.expect("get").expect("exists").status;
        assert!(matches!(status, Status::Committing | Status::Aborting));
        for (_, refused) in mine.iter().filter(|(_, d)| d.is_err()) {
            match refused {
                Err(Refusal::State(tx)) => assert_eq!(tx.status, status),
                other => panic!("{gid}: unexpected {other:?}"),
            }
        }
        leases.push((winner.lease.clone(), status));
    }
    let unknown = store.decide_commit("group-none", "me", 30_000, None).await;
    assert!(matches!(unknown.expect("decide"), Err(Refusal::NotFound)));

    // A round that did not see every branch leaves the one it did not call PENDING and
    // the transaction unfinished.
    let escalation = Escalation {
        after_attempts: 10,
        after_ms: 60_000,
    };
    {
        let (lease, status) = &leases[0];
        let (done, final_status) = match status {
            Status::Committing => (BranchStatus::Confirmed, Status::Committed),
            _ => (BranchStatus::Cancelled, Status::Aborted),
        };
        let partial: Vec<_> = (1..first_branches as u32)
            .map(|id| (id, BranchOutcome::Done(done)))
            .collect();
        let seen = partial.len() as i64;
        let recorded = store
            .record_round(lease, &partial, seen, final_status, 100, escalation)
            .await
            .expect("record");
        assert_eq!(recorded, RoundResult::NotFinished);
        assert_eq!(
            store
                .get(&lease.gid)
                .await
                .expect("get")
                .expect("exists")
                .status,
            *status
        );
        let stored = store.branches(&lease.gid).await.expect("branches");
        let pending: Vec<u32> = stored
            .iter()
            .filter(|b| b.status == BranchStatus::Pending)
            .map(|b| b.branch_id)
            .collect();
        assert_eq!(pending, [first_branches as u32]);
    }

    // Every round recorded at once: all finish; a stale lease finishes nothing.
    let rounds = leases.iter().map(|(lease, status)| {
        let store = &store;
        async move {
            let (done, final_status) = match status {
                Status::Committing => (BranchStatus::Confirmed, Status::Committed),
                _ => (BranchStatus::Cancelled, Status::Aborted),
            };
            let count = store.branches(&lease.gid).await.expect("branches").len() as u32;
            let outcomes: Vec<_> = (1..=count)
                .map(|id| (id, BranchOutcome::Done(done)))
                .collect();
            let seen = i64::from(count);
            let mut stale = lease.clone();
            stale.version -= 1;
            let (recorded, lost) = tokio::join!(
                store.record_round(lease, &outcomes, seen, final_status, 100, escalation),
                store.record_round(&stale, &outcomes, seen, final_status, 100, escalation),
            );
            assert_eq!(
                recorded.expect("record"),
                RoundResult::Finished(final_status)
            );
            assert_eq!(lost.expect("record"), RoundResult::NotFinished);
            (lease.gid.clone(), final_status, done)
        }
    });
    for (gid, final_status, done) in join_all(rounds).await {
        let tx = store.get(&gid).await.expect("get").expect("exists");
        assert_eq!(tx.status, final_status);
        assert_eq!(tx.owner, None);
        let stored = store.branches(&gid).await.expect("branches");
        assert!(stored.iter().all(|b| b.status == done), "{gid}: {stored:?}");
    }
    store.close().await;
}
both!(concurrent_writes_for_one_gid_answer_as_if_one_after_the_other);

/// PostgreSQL: a decision that waits for a registration holding the transaction's row
/// still returns every branch, the registered one included, although its statement
/// started before that registration committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_decision_waiting_on_a_registration_sees_its_branch() {
    use sqlx::Connection;

    let db = TestDb::new(Backend::Postgres).await;
    let store = Store::open(&db.url, 4).await.expect("store");
    store
        .begin(
            "racing",
            Mode::Tcc,
            Status::Trying,
            60_000,
            Origin::labels(&BTreeMap::new()),
            &branches("racing")[..1],
        )
        .await
        .expect("begin");
    // A registration in progress: the slot taken and the branch written, not committed.
    let mut registering = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut registering)
        .await
        .expect("begin");
    sqlx::query("UPDATE global_tx SET branch_count = 2 WHERE gid = 'racing'")
        .execute(&mut registering)
        .await
        .expect("slot");
    sqlx::query(
        "INSERT INTO branch (gid, branch_id, participant, action, payload, status, created_at, \
         updated_at) VALUES ('racing', 2, 'b', 'reserve', '', 'PENDING', 0, 0)",
    )
    .execute(&mut registering)
    .await
    .expect("branch");

    let deciding = tokio::spawn({
        let store = store.clone();
        async move { store.decide_commit("racing", "me", 30_000, None).await }
    });
    // Until the decision waits on the registration's row lock.
    let mut watcher = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut watcher)
        .await
        .expect("activity");
        if waiting > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    sqlx::query("COMMIT")
        .execute(&mut registering)
        .await
        .expect("commit");

    let decided = deciding
        .await
        .expect("task")
        .expect("decide")
        .expect("decided");
    let ids: Vec<u32> = decided.branches.iter().map(|b| b.branch_id).collect();
    assert_eq!(
        ids,
        [1, 2],
        "the decision's branches include the one registered meanwhile"
    );
    store.close().await;
}
