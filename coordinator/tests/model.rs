//! The store against a reference model of the TCC state machine (ARCHITECTURE.md, "State
//! machines", "Leases"): random sequences of Begin, RegisterBranch, Commit, Abort, the
//! deadline passing, recovery claims, lease expiry, phase-two rounds by current and stale
//! owners, graceful release, restarts and retention, on SQLite and PostgreSQL. After every step the
//! answer and every stored transaction (status, branches, owner, version, attempts, whether
//! it is due) must be what the model says. proptest shrinks a divergence to the shortest
//! sequence and keeps it in `model.proptest-regressions`; `PROPTEST_CASES` runs more (32
//! by default).
//!
//! Time is the database's: a "short" deadline or lease is 1 ms, and the step waits until
//! the database's clock has passed it, so it has surely expired before the next step; a
//! long one (10 minutes) never expires within a case.

use std::collections::HashMap;

use proptest::{collection::vec, prelude::*};
use settle_coordinator::{
    model::{BranchStatus, Mode, Status},
    store::{
        BranchOutcome, Escalation, Lease, NewBranch, Options, Origin, Refusal, RegisterRefusal,
        RoundResult, Store,
    },
};
use settle_testkit::{Backend, TestDb};

const TXS: usize = 3;
const OWNERS: [&str; 2] = ["coordinator-a", "coordinator-b"];
const MAX_BRANCHES: i64 = 3;
const LONG_MS: i64 = 600_000;
const NEVER: Escalation = Escalation {
    after_attempts: 1_000_000,
    after_ms: 3_600_000_000,
};

#[derive(Debug, Clone)]
enum Step {
    Begin {
        tx: usize,
        branches: usize,
        short: bool,
    },
    Register {
        tx: usize,
    },
    Commit {
        tx: usize,
        owner: usize,
        short: bool,
    },
    Abort {
        tx: usize,
        owner: usize,
        short: bool,
    },
    Claim {
        owner: usize,
        short: bool,
    },
    Round {
        tx: usize,
        owner: usize,
        ok: bool,
    },
    Release {
        owner: usize,
    },
    Restart,
    /// Retention with no minimum age: every finished transaction goes, leaving its gid
    /// retired.
    Retention,
}

fn step() -> impl Strategy<Value = Step> {
    let tx = 0..TXS;
    let owner = 0..OWNERS.len();
    prop_oneof![
        3 => (tx.clone(), 0..3usize, prop::bool::weighted(0.3))
            .prop_map(|(tx, branches, short)| Step::Begin { tx, branches, short }),
        2 => tx.clone().prop_map(|tx| Step::Register { tx }),
        2 => (tx.clone(), owner.clone(), prop::bool::weighted(0.3))
            .prop_map(|(tx, owner, short)| Step::Commit { tx, owner, short }),
        2 => (tx.clone(), owner.clone(), prop::bool::weighted(0.3))
            .prop_map(|(tx, owner, short)| Step::Abort { tx, owner, short }),
        2 => (owner.clone(), prop::bool::weighted(0.3))
            .prop_map(|(owner, short)| Step::Claim { owner, short }),
        4 => (tx, owner.clone(), prop::bool::weighted(0.7))
            .prop_map(|(tx, owner, ok)| Step::Round { tx, owner, ok }),
        1 => owner.prop_map(|owner| Step::Release { owner }),
        1 => Just(Step::Restart),
        1 => Just(Step::Retention),
    ]
}

/// One transaction as the model sees it.
#[derive(Debug, Clone, PartialEq)]
struct Tx {
    status: Status,
    branches: Vec<BranchStatus>,
    /// A TRYING transaction past its deadline may only be aborted.
    deadline_passed: bool,
    owner: Option<usize>,
    version: i64,
    attempts: i64,
    /// `next_attempt_at` has passed: a claim takes it.
    due: bool,
}

impl Tx {
    fn finished(&self) -> bool {
        matches!(self.status, Status::Committed | Status::Aborted)
    }

    /// A decision or claim took the lease for `owner`.
    fn leased(&mut self, owner: usize, short: bool) {
        self.owner = Some(owner);
        self.version += 1;
        self.due = short;
    }
}

#[derive(Debug, Default)]
struct Model {
    txs: [Option<Tx>; TXS],
    /// The version each owner was handed for each transaction, stale or not.
    leases: HashMap<(usize, usize), i64>,
    /// Removed by retention: the gid may never be used again.
    retired: [bool; TXS],
}

fn gid(case: u64, tx: usize) -> String {
    format!("m{case}-{tx}")
}

fn lease_ms(short: bool) -> i64 {
    if short { 1 } else { LONG_MS }
}

struct Harness {
    url: String,
    store: Store,
    case: u64,
    model: Model,
}

impl Harness {
    async fn open(url: &str) -> Store {
        Store::open_with(
            url,
            Options {
                max_connections: 4,
                group_commit: true,
                batches: Default::default(),
            },
        )
        .await
        .expect("open store")
    }

    /// Waits until the database's clock has passed every 1 ms deadline or lease just set.
    async fn let_short_times_pass(&self) {
        let set = self.store.now().await.expect("now");
        while self.store.now().await.expect("now") <= set + 1 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    async fn run(&mut self, step: &Step) -> Result<(), String> {
        let case = self.case;
        match *step {
            Step::Begin {
                tx,
                branches,
                short,
            } => {
                let gid = gid(case, tx);
                if self.model.retired[tx] {
                    // The engine asks the store before any Begin with a caller's gid, and
                    // refuses a retired one.
                    let retired = self
                        .store
                        .is_retired(&gid)
                        .await
                        .map_err(|e| e.to_string())?;
                    check(retired, "a purged gid is not retired")?;
                    return self.compare().await;
                }
                let labels = Default::default();
                let new: Vec<NewBranch<'_>> = (0..branches)
                    .map(|_| NewBranch {
                        participant: "p",
                        action: "a",
                        payload: b"",
                    })
                    .collect();
                let timeout = lease_ms(short);
                let (found, created) = self
                    .store
                    .begin(
                        &gid,
                        Mode::Tcc,
                        Status::Trying,
                        timeout,
                        Origin::labels(&labels),
                        &new,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                match &self.model.txs[tx] {
                    Some(existing) => {
                        check(!created, "a repeated Begin created a transaction")?;
                        check(found.status == existing.status, "a repeated Begin's status")?;
                    }
                    None => {
                        check(created, "a new Begin did not create")?;
                        check(found.version == 0, "a new transaction's version")?;
                        self.model.txs[tx] = Some(Tx {
                            status: Status::Trying,
                            branches: vec![BranchStatus::Pending; branches],
                            deadline_passed: short,
                            owner: None,
                            version: found.version,
                            attempts: 0,
                            due: short,
                        });
                        if short {
                            self.let_short_times_pass().await;
                        }
                    }
                }
            }
            Step::Register { tx } => {
                let answer = self
                    .store
                    .register_branch(&gid(case, tx), "p", "a", b"", MAX_BRANCHES)
                    .await
                    .map_err(|e| e.to_string())?;
                match (&mut self.model.txs[tx], answer) {
                    (None, Err(RegisterRefusal::NotFound)) => {}
                    (Some(m), Ok(id)) => {
                        check(
                            m.status == Status::Trying
                                && !m.deadline_passed
                                && (m.branches.len() as i64) < MAX_BRANCHES,
                            "registered where the model refuses",
                        )?;
                        check(id as usize == m.branches.len() + 1, "branch id")?;
                        m.branches.push(BranchStatus::Pending);
                    }
                    (Some(m), Err(RegisterRefusal::TooManyBranches(n))) => check(
                        m.status == Status::Trying
                            && m.branches.len() as i64 >= MAX_BRANCHES
                            && n == MAX_BRANCHES,
                        "too many branches",
                    )?,
                    (Some(m), Err(RegisterRefusal::State(_))) => check(
                        m.status != Status::Trying
                            || m.deadline_passed && (m.branches.len() as i64) < MAX_BRANCHES,
                        "refused a registration the model allows",
                    )?,
                    (m, answer) => return Err(format!("register: {answer:?} for {m:?}")),
                }
            }
            Step::Commit { tx, owner, short } | Step::Abort { tx, owner, short } => {
                let commit = matches!(step, Step::Commit { .. });
                let gid = gid(case, tx);
                let ms = lease_ms(short);
                let answer = if commit {
                    self.store
                        .decide_commit(&gid, OWNERS[owner], ms, None)
                        .await
                } else {
                    self.store
                        .decide_abort(&gid, OWNERS[owner], ms, "model", None)
                        .await
                }
                .map_err(|e| e.to_string())?;
                match (&mut self.model.txs[tx], answer) {
                    (None, Err(Refusal::NotFound)) => {}
                    (Some(m), Ok(decided)) => {
                        check(
                            m.status == Status::Trying && (!commit || !m.deadline_passed),
                            "decided where the model refuses",
                        )?;
                        m.status = if commit {
                            Status::Committing
                        } else {
                            Status::Aborting
                        };
                        m.leased(owner, short);
                        check(decided.lease.version == m.version, "the decision's version")?;
                        check(
                            decided.branches.len() == m.branches.len(),
                            "the decision's branches",
                        )?;
                        self.model.leases.insert((tx, owner), m.version);
                        if short {
                            self.let_short_times_pass().await;
                        }
                    }
                    (Some(m), Err(Refusal::State(_))) => check(
                        m.status != Status::Trying || (commit && m.deadline_passed),
                        "refused a decision the model allows",
                    )?,
                    (m, answer) => return Err(format!("decide: {answer:?} for {m:?}")),
                }
            }
            Step::Claim { owner, short } => {
                let claimed = self
                    .store
                    .claim_due(OWNERS[owner], lease_ms(short), 100)
                    .await
                    .map_err(|e| e.to_string())?;
                let prefix = format!("m{case}-");
                let mut got: Vec<(usize, i64)> = claimed
                    .iter()
                    .filter_map(|t| {
                        let tx = t.gid.strip_prefix(&prefix)?.parse().ok()?;
                        Some((tx, t.version))
                    })
                    .collect();
                got.sort();
                let mut expected = Vec::new();
                for (tx, m) in self.model.txs.iter_mut().enumerate() {
                    if let Some(m) = m
                        && !m.finished()
                        && m.due
                    {
                        m.leased(owner, short);
                        self.model.leases.insert((tx, owner), m.version);
                        expected.push((tx, m.version));
                    }
                }
                check(
                    got == expected,
                    &format!("claimed {got:?}, model {expected:?}"),
                )?;
                if short && !expected.is_empty() {
                    self.let_short_times_pass().await;
                }
            }
            Step::Round { tx, owner, ok } => {
                let Some(m) = &mut self.model.txs[tx] else {
                    return Ok(());
                };
                let Some(&version) = self.model.leases.get(&(tx, owner)) else {
                    return Ok(());
                };
                let (done, final_status) = match m.status {
                    Status::Committing => (BranchStatus::Confirmed, Status::Committed),
                    Status::Aborting => (BranchStatus::Cancelled, Status::Aborted),
                    _ => return Ok(()),
                };
                let outcomes: Vec<(u32, BranchOutcome)> = m
                    .branches
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| **s == BranchStatus::Pending)
                    .map(|(i, _)| {
                        let outcome = if ok {
                            BranchOutcome::Done(done)
                        } else {
                            BranchOutcome::Failed {
                                error: "model".to_owned(),
                                retry_in_ms: 0,
                            }
                        };
                        (i as u32 + 1, outcome)
                    })
                    .collect();
                let lease = Lease {
                    gid: gid(case, tx),
                    owner: OWNERS[owner].to_owned(),
                    version,
                };
                let seen = m.branches.len() as i64;
                let result = self
                    .store
                    .record_round(&lease, &outcomes, seen, final_status, 0, NEVER)
                    .await
                    .map_err(|e| e.to_string())?;
                let current = m.owner == Some(owner) && m.version == version;
                // A round with nothing pending succeeded, whatever the calls would have done.
                let ok = ok || outcomes.is_empty();
                let expected = match (ok, current) {
                    (true, true) => {
                        m.branches.iter_mut().for_each(|b| *b = done);
                        m.status = final_status;
                        m.owner = None;
                        m.due = false;
                        RoundResult::Finished(final_status)
                    }
                    // A branch's success is a fact, kept under a lost lease.
                    (true, false) => {
                        m.branches.iter_mut().for_each(|b| *b = done);
                        RoundResult::NotFinished
                    }
                    (false, true) => {
                        m.attempts += 1;
                        m.owner = None;
                        m.due = true;
                        RoundResult::Rescheduled {
                            attempts: m.attempts,
                            needs_attention: false,
                        }
                    }
                    (false, false) => RoundResult::LostLease,
                };
                check(
                    result == expected,
                    &format!("round {result:?}, model {expected:?}"),
                )?;
            }
            Step::Release { owner } => {
                let released = self
                    .store
                    .release(OWNERS[owner])
                    .await
                    .map_err(|e| e.to_string())?;
                let mut expected = 0;
                for m in self.model.txs.iter_mut().flatten() {
                    if m.owner == Some(owner) && !m.finished() {
                        m.owner = None;
                        m.due = true;
                        expected += 1;
                    }
                }
                check(
                    released == expected,
                    &format!("released {released}, model {expected}"),
                )?;
            }
            Step::Restart => {
                self.store.close().await;
                self.store = Harness::open(&self.url).await;
            }
            Step::Retention => {
                // Age 0 purges what finished before the database's now: let a millisecond
                // pass, so that every finished row here is older.
                self.let_short_times_pass().await;
                while self
                    .store
                    .purge_finished(0, 1_000)
                    .await
                    .map_err(|e| e.to_string())?
                    == 1_000
                {}
                for (tx, m) in self.model.txs.iter_mut().enumerate() {
                    if m.as_ref().is_some_and(Tx::finished) {
                        *m = None;
                        self.model.retired[tx] = true;
                        self.model.leases.retain(|(t, _), _| *t != tx);
                    }
                }
            }
        }
        self.compare().await
    }

    /// Every stored transaction against the model.
    async fn compare(&self) -> Result<(), String> {
        let now = self.store.now().await.map_err(|e| e.to_string())?;
        for (tx, m) in self.model.txs.iter().enumerate() {
            let gid = gid(self.case, tx);
            let stored = self.store.get(&gid).await.map_err(|e| e.to_string())?;
            let Some(m) = m else {
                check(
                    stored.is_none(),
                    &format!("{gid} exists, the model has none"),
                )?;
                let retired = self
                    .store
                    .is_retired(&gid)
                    .await
                    .map_err(|e| e.to_string())?;
                check(
                    retired == self.model.retired[tx],
                    &format!(
                        "{gid} retired: stored {retired}, model {}",
                        self.model.retired[tx]
                    ),
                )?;
                continue;
            };
            let Some(stored) = stored else {
                return Err(format!("{gid} is missing"));
            };
            let branches: Vec<BranchStatus> = self
                .store
                .branches(&gid)
                .await
                .map_err(|e| e.to_string())?
                .iter()
                .map(|b| b.status)
                .collect();
            let seen = Tx {
                status: stored.status,
                branches,
                deadline_passed: stored.deadline <= now,
                owner: stored
                    .owner
                    .as_deref()
                    .and_then(|o| OWNERS.iter().position(|n| *n == o)),
                version: stored.version,
                attempts: stored.attempts,
                due: stored.next_attempt_at.is_some_and(|at| at <= now),
            };
            let mut expected = m.clone();
            // The deadline matters only while TRYING; afterwards the model stops tracking it.
            if expected.status != Status::Trying {
                expected.deadline_passed = seen.deadline_passed;
            }
            check(
                seen == expected,
                &format!("{gid}: stored {seen:?}, model {expected:?}"),
            )?;
        }
        Ok(())
    }
}

fn check(holds: bool, what: &str) -> Result<(), String> {
    if holds { Ok(()) } else { Err(what.to_owned()) }
}

fn model_test(backend: Backend) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let db = runtime.block_on(TestDb::new(backend));
    let store = runtime.block_on(Harness::open(&db.url));
    let harness = std::sync::Mutex::new(Some(store));
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(32);
    let case = std::sync::atomic::AtomicU64::new(0);
    proptest!(ProptestConfig::with_cases(cases), |(steps in vec(step(), 1..16))| {
        let store = harness.lock().expect("lock").take().expect("store");
        let mut h = Harness {
            url: db.url.clone(),
            store,
            // Each case has gids of its own; earlier cases' transactions are finished
            // below, so that claims see only this case's.
            case: case.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            model: Model::default(),
        };
        let mut failure = None;
        for (i, step) in steps.iter().enumerate() {
            if let Err(why) = runtime.block_on(h.run(step)) {
                failure = Some(format!("step {i} {step:?}: {why}"));
                break;
            }
        }
        let cleaned = runtime.block_on(finish_everything(&h));
        *harness.lock().expect("lock") = Some(h.store);
        if let Some(failure) = failure.or(cleaned.err()) {
            return Err(TestCaseError::fail(failure));
        }
    });
}

/// Drives every unfinished transaction of the case to its end, so that the next case's
/// claims find none of them.
async fn finish_everything(h: &Harness) -> Result<(), String> {
    for tx in 0..TXS {
        let gid = gid(h.case, tx);
        let Ok(Some(found)) = h.store.get(&gid).await else {
            continue;
        };
        if matches!(found.status, Status::Committed | Status::Aborted) {
            continue;
        }
        if found.status == Status::Trying {
            let _ = h
                .store
                .decide_abort(&gid, "cleanup", LONG_MS, "cleanup", None)
                .await;
        } else if found.owner.is_none() {
            let _ = h.store.claim_due("cleanup", LONG_MS, 100).await;
        }
        let Ok(Some(found)) = h.store.get(&gid).await else {
            continue;
        };
        // Take the lease from whoever has it: the fence is owner and version.
        let lease = Lease {
            gid: gid.clone(),
            owner: found.owner.clone().unwrap_or_default(),
            version: found.version,
        };
        let final_status = match found.status {
            Status::Committing => Status::Committed,
            _ => Status::Aborted,
        };
        let done = match final_status {
            Status::Committed => BranchStatus::Confirmed,
            _ => BranchStatus::Cancelled,
        };
        let outcomes: Vec<(u32, BranchOutcome)> = (1..=found.branch_count as u32)
            .map(|id| (id, BranchOutcome::Done(done)))
            .collect();
        let result = h
            .store
            .record_round(
                &lease,
                &outcomes,
                found.branch_count,
                final_status,
                0,
                NEVER,
            )
            .await;
        if !matches!(result, Ok(RoundResult::Finished(_))) {
            return Err(format!("cleanup of {gid} ({found:?}): {result:?}"));
        }
    }
    Ok(())
}

#[test]
fn the_store_follows_the_model_on_sqlite() {
    model_test(Backend::Sqlite);
}

#[test]
fn the_store_follows_the_model_on_postgres() {
    model_test(Backend::Postgres);
}
