//! The store's two ways of writing — one request per database transaction, and group
//! commit — give the same answers and leave the same log. One script of every TCC write
//! (Begin, registering a branch, deciding commit and abort, recording a round), with each
//! refusal the rules allow, runs once on a store with group commit off and once on one with
//! it on, each on a fresh database; the transcripts of answers and of the final rows must
//! be equal, on SQLite and on PostgreSQL. Concurrent steps make the batched store write
//! real batches.

use std::collections::BTreeMap;

use futures::future::join_all;
use settle_coordinator::{
    model::{Branch, BranchStatus, GlobalTx, Mode, Status},
    store::{
        BranchOutcome, Decided, Escalation, Lease, NewBranch, Options, Origin, Refusal,
        RegisterRefusal, Store,
    },
};
use settle_testkit::{Backend, TestDb, both};

const OWNER: &str = "conformance";
const LEASE_MS: i64 = 60_000;
const ESCALATION: Escalation = Escalation {
    after_attempts: 2,
    after_ms: 3_600_000,
};

/// A transaction without its clocks, which differ from run to run.
fn tx(tx: &GlobalTx) -> String {
    format!(
        "{} {:?} {} attempts={} owner={:?} version={} branches={} labels={:?} reason={:?} \
         attention={} paused={} decided={} due={}",
        tx.gid,
        tx.mode,
        tx.status,
        tx.attempts,
        tx.owner,
        tx.version,
        tx.branch_count,
        tx.labels,
        tx.reason,
        tx.needs_attention,
        tx.paused,
        tx.decided_at.is_some(),
        tx.next_attempt_at.is_some(),
    )
}

fn branch(b: &Branch) -> String {
    format!(
        "{}#{} {} {} {:?} {:?} attempts={} error={:?} due={}",
        b.gid,
        b.branch_id,
        b.participant,
        b.action,
        b.payload,
        b.status,
        b.attempts,
        b.last_error,
        b.next_attempt_at.is_some()
    )
}

fn decided(answer: &Result<Decided, Refusal>) -> String {
    match answer {
        Ok(d) => format!(
            "decided {} v{} [{}]",
            d.lease.gid,
            d.lease.version,
            d.branches.iter().map(branch).collect::<Vec<_>>().join("; ")
        ),
        Err(Refusal::NotFound) => "refused: not found".to_owned(),
        Err(Refusal::State(found)) => format!("refused: {}", tx(found)),
    }
}

fn registered(answer: &Result<u32, RegisterRefusal>) -> String {
    match answer {
        Ok(id) => format!("branch {id}"),
        Err(RegisterRefusal::NotFound) => "refused: not found".to_owned(),
        Err(RegisterRefusal::TooManyBranches(n)) => format!("refused: {n} branches"),
        Err(RegisterRefusal::State(found)) => format!("refused: {}", tx(found)),
    }
}

fn lease(gid: &str, version: i64) -> Lease {
    Lease {
        gid: gid.to_owned(),
        owner: OWNER.to_owned(),
        version,
    }
}

fn two_branches(gid: &str) -> [NewBranch<'_>; 2] {
    [
        NewBranch {
            participant: "stock",
            action: "reserve",
            payload: gid.as_bytes(),
        },
        NewBranch {
            participant: "pay",
            action: "debit",
            payload: b"\x00\xff",
        },
    ]
}

/// Runs the script on a fresh store and returns what it saw.
async fn transcript(url: &str, group_commit: bool) -> Vec<String> {
    let store = Store::open_with(
        url,
        Options {
            max_connections: 4,
            group_commit,
            batches: Default::default(),
        },
    )
    .await
    .expect("open store");
    let labels = BTreeMap::from([("campaign".to_owned(), "flash".to_owned())]);
    let mut log = Vec::new();
    let begin = |gid: &'static str, timeout_ms: i64, with_branches: bool| {
        let (store, labels) = (&store, &labels);
        async move {
            let branches = if with_branches {
                two_branches(gid).to_vec()
            } else {
                Vec::new()
            };
            let (found, created) = store
                .begin(
                    gid,
                    Mode::Tcc,
                    Status::Trying,
                    timeout_ms,
                    Origin::labels(labels),
                    &branches,
                )
                .await
                .expect("begin");
            format!("begin {gid}: created={created} {}", tx(&found))
        }
    };

    // Begin: new with and without branches, and again (finds it, adds nothing).
    log.push(begin("c-1", 60_000, true).await);
    log.push(begin("c-2", 60_000, false).await);
    log.push(begin("c-1", 60_000, false).await);
    // Many at once: a batch of Begins on the batched store.
    let many = ["m-0", "m-1", "m-2", "m-3", "m-4", "m-5", "m-6", "m-7"];
    log.extend(join_all(many.iter().map(|gid| begin(gid, 60_000, true))).await);

    // Registration: taken, up to the limit, then refused as full, unknown or decided.
    for _ in 0..3 {
        let answer = store
            .register_branch("c-2", "stock", "reserve", b"r", 2)
            .await
            .expect("register");
        log.push(format!("register c-2: {}", registered(&answer)));
    }
    let answer = store
        .register_branch("nobody", "stock", "reserve", b"", 8)
        .await
        .expect("register");
    log.push(format!("register nobody: {}", registered(&answer)));
    let registrations = many
        .iter()
        .map(|gid| store.register_branch(gid, "points", "add", b"p", 8));
    for (gid, answer) in many.iter().zip(join_all(registrations).await) {
        let answer = answer.expect("register");
        log.push(format!("register {gid}: {}", registered(&answer)));
    }

    // Decisions: commit, commit again, abort after commit, abort, unknown.
    let answer = store
        .decide_commit("c-1", OWNER, LEASE_MS, None)
        .await
        .expect("commit");
    log.push(format!("commit c-1: {}", decided(&answer)));
    let answer = store
        .decide_commit("c-1", OWNER, LEASE_MS, None)
        .await
        .expect("commit");
    log.push(format!("commit c-1 again: {}", decided(&answer)));
    let answer = store
        .decide_abort("c-1", OWNER, LEASE_MS, "too late", None)
        .await
        .expect("abort");
    log.push(format!("abort c-1: {}", decided(&answer)));
    let answer = store
        .decide_abort("c-2", OWNER, LEASE_MS, "buyer left", None)
        .await
        .expect("abort");
    log.push(format!("abort c-2: {}", decided(&answer)));
    let answer = store
        .decide_commit("nobody", OWNER, LEASE_MS, None)
        .await
        .expect("commit");
    log.push(format!("commit nobody: {}", decided(&answer)));
    let answer = store
        .register_branch("c-2", "stock", "reserve", b"", 8)
        .await
        .expect("register");
    log.push(format!("register c-2 after abort: {}", registered(&answer)));
    let store = &store;
    let decisions = many.iter().map(|gid| async move {
        let answer = if gid.ends_with(['0', '2', '4', '6']) {
            store.decide_commit(gid, OWNER, LEASE_MS, None).await
        } else {
            store
                .decide_abort(gid, OWNER, LEASE_MS, "half abort", None)
                .await
        };
        format!("decide {gid}: {}", decided(&answer.expect("decide")))
    });
    log.extend(join_all(decisions).await);

    // Past the deadline: no commit and no registration, but an abort.
    log.push(begin("late-1", 1, true).await);
    log.push(begin("late-2", 1, false).await);
    let deadline = store
        .get("late-2")
        .await
        .expect("get")
        .expect("late-2")
        .deadline;
    while store.now().await.expect("now") <= deadline {
        tokio::task::yield_now().await;
    }
    let answer = store
        .decide_commit("late-1", OWNER, LEASE_MS, None)
        .await
        .expect("commit");
    log.push(format!("commit late-1: {}", decided(&answer)));
    let answer = store
        .register_branch("late-2", "stock", "reserve", b"", 8)
        .await
        .expect("register");
    log.push(format!("register late-2: {}", registered(&answer)));
    let answer = store
        .decide_abort("late-1", OWNER, LEASE_MS, "deadline passed", None)
        .await
        .expect("abort");
    log.push(format!("abort late-1: {}", decided(&answer)));

    // Rounds. c-1 (v1, 2 branches): one fails and the round reschedules, giving the lease
    // back; the same owner's next rounds write no global state.
    let round = |gid: &'static str, version: i64, outcomes: Vec<(u32, BranchOutcome)>, seen| async move {
        let result = store
            .record_round(
                &lease(gid, version),
                &outcomes,
                seen,
                Status::Committed,
                1_000,
                ESCALATION,
            )
            .await
            .expect("record round");
        format!("round {gid} v{version}: {result:?}")
    };
    let failed = |n: u32| BranchOutcome::Failed {
        error: format!("attempt {n} failed"),
        retry_in_ms: 500,
    };
    let confirmed = BranchOutcome::Done(BranchStatus::Confirmed);
    log.push(round("c-1", 1, vec![(1, confirmed.clone()), (2, failed(1))], 2).await);
    log.push(round("c-1", 1, vec![(2, failed(2))], 2).await);
    // Its branch success is kept (a fact), but without the lease it does not finish.
    log.push(round("c-1", 1, vec![(2, confirmed.clone())], 2).await);
    // A round that did not see every branch does not finish either.
    let m0 = store.get("m-0").await.expect("get").expect("m-0");
    log.push(round("m-0", m0.version, vec![(1, confirmed.clone())], 1).await);
    // Finished rounds, many at once: a batch of round records on the batched store.
    let mut finishing = Vec::new();
    for gid in ["m-2", "m-4", "m-6"] {
        let found = store.get(gid).await.expect("get").expect(gid);
        let done = (1..=3).map(|id| (id, confirmed.clone())).collect();
        finishing.push(round(gid, found.version, done, 3));
    }
    log.extend(join_all(finishing).await);

    // What the log holds at the end.
    for gid in ["c-1", "c-2", "late-1", "late-2", "nobody"]
        .iter()
        .chain(&many)
    {
        match store.get(gid).await.expect("get") {
            Some(found) => log.push(format!("final {}", tx(&found))),
            None => log.push(format!("final {gid}: none")),
        }
        for b in store.branches(gid).await.expect("branches") {
            log.push(format!("final {}", branch(&b)));
        }
    }
    store.close().await;
    log
}

async fn single_and_batched_writes_leave_the_same_log(backend: Backend) {
    let (alone, grouped) = (TestDb::new(backend).await, TestDb::new(backend).await);
    let single = transcript(&alone.url, false).await;
    let batched = transcript(&grouped.url, true).await;
    for (n, (one, many)) in single.iter().zip(&batched).enumerate() {
        assert_eq!(one, many, "step {n}: single-request vs group commit");
    }
    assert_eq!(single.len(), batched.len());
    // The script did reach every kind of answer it means to compare.
    let text = single.join("\n");
    for expected in [
        "created=false",
        "refused: 2 branches",
        "refused: not found",
        "ABORTING",
        "Rescheduled",
        "NotFinished",
        "Finished(Committed)",
        "LostLease",
    ] {
        assert!(
            text.contains(expected),
            "the script never saw {expected:?}:\n{text}"
        );
    }
}
both!(single_and_batched_writes_leave_the_same_log);
