//! The coordinator's durable log: global transactions, branches, participants and the
//! audit trail, in SQLite (embedded default) or PostgreSQL (production).
//!
//! `Store` is what the engine, sagas, the admin and recovery see: the domain types of a
//! write's request and answer, and one method per thing the log does (Begin, register a
//! branch, decide, record a round, claim due work, and so on). Each transition is a
//! compare-and-set whose rule is written once, in [`sql`], and applied in the database by
//! one statement, so that two coordinators sharing the log cannot both win it. Time is
//! always the database's own (`{now}` in the templates), never the caller's.
//!
//! The layout: [`tcc`] writes TCC requests one at a time; [`batch`] writes them in groups,
//! the optional optimisation that is on by default ([`Options::group_commit`]); `saga`,
//! `message`, `admin` and `retention` hold the other writes; [`dialect`] the SQL differences, [`pool`]
//! the connections, [`rows`] the conversions.
//!
//! The store does not decide what to do next or call participants; that is the engine's job.

mod admin;
mod batch;
mod dialect;
pub mod message;
mod pool;
mod retention;
mod rows;
pub mod saga;
mod sql;
mod tcc;

use std::collections::BTreeMap;

use sqlx::{Any, AnyPool, Row};

use batch::Batches;
use pool::Sessions;
use sql::{branch_columns, statements, take_lease, tx_columns, unfinished, unless_paused};
use tcc::{Decision, Finished, NewTx, Registration};

use crate::metrics::BatchMeters;

pub use admin::{AuditEntry, AuditRecord, Counts, Cursor, ListFilter, Unfinished};
pub use dialect::{Dialect, redact};

use crate::model::{Branch, BranchStatus, GlobalTx, Mode, Status};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database URL is neither `sqlite:` nor `postgres:`.
    #[error("unsupported database URL {0:?}: expected sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    /// The database failed or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row holds a value this version does not understand.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The store was shut down while the request waited for its batch.
    #[error("the store is shut down")]
    Closed,
    /// The queue of Begins waiting for group commit is full: the database is not keeping
    /// up. Nothing was written; the Begin may be repeated later.
    #[error("{0} Begins are already waiting for the database")]
    Busy(usize),
    /// The batch this request was written with failed without the database saying why
    /// (a lost connection, a timeout); it may or may not have been committed.
    #[error("a batch of {size} writes failed: {error}")]
    Batch {
        /// Requests in the batch.
        size: usize,
        /// The error the batch met.
        error: String,
    },
}

type Result<T, E = Error> = std::result::Result<T, E>;

statements! {
    get = concat!("SELECT ", tx_columns!(), " FROM global_tx WHERE gid = $1");
    branches = concat!(
        "SELECT ", branch_columns!(), " FROM branch WHERE gid = $1 ORDER BY branch_id"
    );
    claim_due = concat!(
        "UPDATE global_tx SET ", take_lease!("$1", "$2"), ", updated_at = {now} \
         WHERE gid IN (SELECT gid FROM global_tx \
                       WHERE ", unfinished!(), " AND global_tx.next_attempt_at <= {now} \
                       ORDER BY next_attempt_at LIMIT $3 {skip_locked}) \
             AND ", unfinished!(), " AND global_tx.next_attempt_at <= {now} \
         RETURNING ", tx_columns!()
    );
    release = concat!(
        "UPDATE global_tx SET owner = NULL, lease_until = NULL, updated_at = {now}, \
             next_attempt_at = ", unless_paused!("{now}"), " \
         WHERE global_tx.owner = $1 AND ", unfinished!()
    );
    upsert_participant = "INSERT INTO participant (name, endpoint, registered_by, updated_at) \
                          VALUES ($1, $2, $3, {now}) \
                          ON CONFLICT (name) DO UPDATE \
                          SET endpoint = excluded.endpoint, \
                              registered_by = excluded.registered_by, \
                              updated_at = excluded.updated_at";
    participant = "SELECT endpoint FROM participant WHERE name = $1";
    now = "SELECT {now}";
}

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct Options {
    /// PostgreSQL's general pool size; round records get half as many more and the durable
    /// batches three. SQLite always uses one connection.
    pub max_connections: u32,
    /// Whether concurrent TCC writes share a commit ([`batch`]); off, each is its own
    /// database transaction ([`tcc`]). The rules and the answers are the same.
    pub group_commit: bool,
    /// Where group commit records the size and duration of each batch.
    pub batches: BatchMeters,
}

/// A branch registered together with its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewBranch<'a> {
    /// Participant name.
    pub participant: &'a str,
    /// Business action.
    pub action: &'a str,
    /// Opaque payload.
    pub payload: &'a [u8],
}

/// What a new transaction is tagged with by whoever began it: its labels, the trace
/// context it began in (when the coordinator traces), which phase two continues, and the
/// authenticated caller.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// Free-form labels, visible to operators.
    pub labels: &'a BTreeMap<String, String>,
    /// A W3C `traceparent` value.
    pub traceparent: Option<&'a str>,
    /// The authenticated caller's name.
    pub began_by: Option<&'a str>,
}

impl<'a> Origin<'a> {
    /// Labels and no trace context.
    pub fn labels(labels: &'a BTreeMap<String, String>) -> Origin<'a> {
        Origin {
            labels,
            traceparent: None,
            began_by: None,
        }
    }
}

/// A decision taken: the lease to drive phase two with, and the transaction's branches as
/// they were when it was decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    /// The lease the decision produced.
    pub lease: Lease,
    /// When the transaction began (epoch ms, the database's clock).
    pub created_at_ms: i64,
    /// The trace context it began in, when the coordinator traces.
    pub traceparent: Option<String>,
    /// Every branch, in registration order.
    pub branches: Vec<Branch>,
}

/// What a compare-and-set decision found when it did not win.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// No such gid.
    NotFound,
    /// The transaction is in a state that does not allow the change.
    State(Box<GlobalTx>),
}

/// Why a branch could not be registered.
#[derive(Debug, Clone, PartialEq)]
pub enum RegisterRefusal {
    /// No such gid.
    NotFound,
    /// Not TRYING, or past its deadline.
    State(Box<GlobalTx>),
    /// The transaction already has the maximum number of branches.
    TooManyBranches(i64),
}

/// The right to drive one transaction's phase two: held by `owner` while the stored
/// version still equals `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Global transaction id.
    pub gid: String,
    /// The owning coordinator instance.
    pub owner: String,
    /// The version the claim or decision produced.
    pub version: i64,
}

/// One phase-two call's result, to be recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum BranchOutcome {
    /// The call succeeded; the branch moves to this status.
    Done(BranchStatus),
    /// The call failed transiently; it is retried after `retry_in_ms`.
    Failed {
        /// Kept for operators.
        error: String,
        /// Delay before the next attempt.
        retry_in_ms: i64,
    },
}

/// What recording a phase-two round achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundResult {
    /// Every branch is done; the transaction reached this final status.
    Finished(Status),
    /// Some branch is still pending; the transaction was released for a later attempt.
    Rescheduled {
        /// Rounds so far.
        attempts: i64,
        /// The escalation flag after this round.
        needs_attention: bool,
    },
    /// Another instance owns the transaction now; nothing global was written.
    LostLease,
    /// Every call succeeded but the transaction did not finish: the lease was lost, or
    /// the round did not see all of its branches. The owner of the next claim (after the
    /// lease) reads the branches again.
    NotFinished,
}

/// Escalation thresholds applied when a round is rescheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Escalation {
    /// Flag after this many unfinished rounds.
    pub after_attempts: i64,
    /// Flag once this long has passed since the decision.
    pub after_ms: i64,
}

impl Escalation {
    /// Flag now: a participant answered that it failed for good.
    pub const AT_ONCE: Escalation = Escalation {
        after_attempts: 0,
        after_ms: 0,
    };
}

/// The coordinator's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    /// For writes that need not wait for durability (PostgreSQL: a pool with
    /// `synchronous_commit = off`; SQLite: the same pool).
    relaxed: AnyPool,
    /// The durable batches' connections (PostgreSQL: a third pool, one connection for each
    /// kind of batch; SQLite: the same pool).
    durable_batches: AnyPool,
    dialect: Dialect,
    sql: &'static Sql,
    /// `None` when group commit is off.
    batches: Option<Batches>,
}

/// One connection for each kind of durable batch: each kind runs one batch at a time.
const BATCH_CONNECTIONS: u32 = 3;

impl Store {
    /// [`Store::open_with`] group commit on.
    pub async fn open(url: &str, max_connections: u32) -> Result<Store> {
        let options = Options {
            max_connections,
            group_commit: true,
            batches: BatchMeters::default(),
        };
        Store::open_with(url, options).await
    }

    /// Connects (creating a SQLite file if missing), applies pending migrations and, with
    /// group commit, starts its tasks on the current runtime.
    ///
    /// PostgreSQL gets a pool of `max_connections` for general queries, half as many for
    /// round records and [`BATCH_CONNECTIONS`] for the durable batches (their sessions are
    /// set up differently, see `store/pool.rs`). SQLite gets one connection whatever
    /// `max_connections` says: it admits one writer at a time, and more connections only
    /// wait on its lock (sleeping in `busy_timeout`) where a queue would hand over at once.
    pub async fn open_with(url: &str, options: Options) -> Result<Store> {
        let dialect = Dialect::from_url(url)?;
        let max_connections = match dialect {
            Dialect::Sqlite => 1,
            Dialect::Postgres => options.max_connections.max(2),
        };
        let pool = pool::connect(dialect, url, max_connections, Sessions::General).await?;
        match dialect {
            Dialect::Sqlite => {
                sqlx::migrate!("../migrations/coordinator/sqlite")
                    .run(&pool)
                    .await?
            }
            Dialect::Postgres => {
                sqlx::migrate!("../migrations/coordinator/postgres")
                    .run(&pool)
                    .await?
            }
        }
        let (durable_batches, relaxed) = match dialect {
            Dialect::Sqlite => (pool.clone(), pool.clone()),
            Dialect::Postgres => {
                let durable = Sessions::Batches { durable: true };
                let relaxed = Sessions::Batches { durable: false };
                (
                    pool::connect(dialect, url, BATCH_CONNECTIONS, durable).await?,
                    pool::connect(dialect, url, (max_connections / 2).max(2), relaxed).await?,
                )
            }
        };
        let batches = options
            .group_commit
            .then(|| Batches::start(&durable_batches, &relaxed, dialect, options.batches));
        Ok(Store {
            pool,
            relaxed,
            durable_batches,
            dialect,
            sql: Sql::for_dialect(dialect),
            batches,
        })
    }

    /// Which database this is.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.relaxed.close().await;
        self.durable_batches.close().await;
        self.pool.close().await;
    }

    /// The store's clock, in epoch milliseconds.
    pub async fn now(&self) -> Result<i64> {
        Ok(sqlx::query_scalar(self.sql.now)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, Any>> {
        Ok(self.pool.begin_with(self.dialect.begin_write()).await?)
    }

    /// Inserts a TRYING transaction together with its first branches (ids 1, 2, …), in
    /// one database transaction, or returns the existing one with the same gid (and adds
    /// nothing). The boolean is true when this call created it. Concurrent Begins share
    /// one commit (see [`batch`]).
    pub async fn begin(
        &self,
        gid: &str,
        mode: Mode,
        status: Status,
        timeout_ms: i64,
        origin: Origin<'_>,
        branches: &[NewBranch<'_>],
    ) -> Result<(GlobalTx, bool)> {
        let labels = serde_json::to_string(origin.labels)
            .map_err(|e| Error::Corrupt(format!("labels not serialisable: {e}")))?;
        let item = NewTx {
            gid: gid.to_owned(),
            mode,
            status,
            timeout_ms,
            labels,
            traceparent: origin.traceparent.map(str::to_owned),
            began_by: origin.began_by.map(str::to_owned),
            branches: branches
                .iter()
                .map(|b| {
                    (
                        b.participant.to_owned(),
                        b.action.to_owned(),
                        b.payload.to_vec(),
                    )
                })
                .collect(),
        };
        let created = match &self.batches {
            Some(batches) => batches.begin(item).await?,
            None => self.begin_one(&item).await?,
        };
        match created {
            Some(tx) => Ok((tx, true)),
            None => match self.get(gid).await? {
                Some(tx) => Ok((tx, false)),
                // Inserted by someone else and gone already: only retention could do that.
                None => Err(Error::Corrupt(format!("{gid} vanished during Begin"))),
            },
        }
    }

    /// Reads one transaction.
    pub async fn get(&self, gid: &str) -> Result<Option<GlobalTx>> {
        let row = sqlx::query(self.sql.get)
            .bind(gid)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::tx).transpose()
    }

    /// Reads a transaction's branches in registration order.
    pub async fn branches(&self, gid: &str) -> Result<Vec<Branch>> {
        let found = sqlx::query(self.sql.branches)
            .bind(gid)
            .fetch_all(&self.pool)
            .await?;
        found.iter().map(rows::branch).collect()
    }

    /// Adds a branch if the transaction is TRYING, before its deadline and below
    /// `max_branches`, all checked in the same statement that takes the branch id.
    /// Concurrent registrations share one commit (see [`batch`]).
    pub async fn register_branch(
        &self,
        gid: &str,
        participant: &str,
        action: &str,
        payload: &[u8],
        max_branches: i64,
    ) -> Result<Result<u32, RegisterRefusal>> {
        let item = || Registration {
            gid: gid.to_owned(),
            participant: participant.to_owned(),
            action: action.to_owned(),
            payload: payload.to_vec(),
            max_branches,
        };
        if let Some(batches) = &self.batches
            && let Some(branch_id) = batches.register(item()).await?
        {
            return Ok(Ok(branch_id));
        }
        // Not taken with the rest of its batch: alone, it may still fit, or the refusal
        // says why not.
        if let Some(branch_id) = self.register_one(&item()).await? {
            return Ok(Ok(branch_id));
        }
        Ok(Err(match self.get(gid).await? {
            None => RegisterRefusal::NotFound,
            Some(found) if found.status == Status::Trying && found.branch_count >= max_branches => {
                RegisterRefusal::TooManyBranches(found.branch_count)
            }
            Some(found) => RegisterRefusal::State(Box::new(found)),
        }))
    }

    /// Decides commit: TRYING and before the deadline → COMMITTING, owned by `owner` for
    /// `lease_ms`, recording `by` as who decided. The deadline check is part of the
    /// compare-and-set. Concurrent decisions share one commit (see [`batch`]).
    pub async fn decide_commit(
        &self,
        gid: &str,
        owner: &str,
        lease_ms: i64,
        by: Option<&str>,
    ) -> Result<Result<Decided, Refusal>> {
        self.decide(gid, Status::Committing, owner, lease_ms, None, by)
            .await
    }

    /// Decides abort: TRYING → ABORTING (whatever the deadline), owned by `owner`,
    /// recording `by` as who decided.
    pub async fn decide_abort(
        &self,
        gid: &str,
        owner: &str,
        lease_ms: i64,
        reason: &str,
        by: Option<&str>,
    ) -> Result<Result<Decided, Refusal>> {
        self.decide(gid, Status::Aborting, owner, lease_ms, Some(reason), by)
            .await
    }

    async fn decide(
        &self,
        gid: &str,
        to: Status,
        owner: &str,
        lease_ms: i64,
        reason: Option<&str>,
        by: Option<&str>,
    ) -> Result<Result<Decided, Refusal>> {
        // An abort refused while the transaction is still TRYING shared its batch with an
        // earlier request for the same gid that did not decide (a Commit past the
        // deadline): alone, it decides.
        for attempt in 0..2 {
            let item = Decision {
                gid: gid.to_owned(),
                to,
                owner: owner.to_owned(),
                lease_ms,
                reason: reason.map(str::to_owned),
                by: by.map(str::to_owned),
            };
            let decided = match &self.batches {
                Some(batches) => batches.decide(item).await?,
                None => self.decide_one(&item).await?,
            };
            if let Some(decided) = decided {
                return Ok(Ok(decided));
            }
            match self.get(gid).await? {
                None => return Ok(Err(Refusal::NotFound)),
                Some(found)
                    if attempt == 0 && to == Status::Aborting && found.status == Status::Trying => {
                }
                Some(found) => return Ok(Err(Refusal::State(Box::new(found)))),
            }
        }
        Err(Error::Corrupt(format!(
            "{gid} stays TRYING but refuses to abort"
        )))
    }

    /// Records one phase-two round in a single database transaction: each branch's outcome,
    /// then either the final status (when no branch is left pending) or the next attempt.
    /// The global write is fenced by the lease; branch successes are facts and are kept
    /// even when the lease was lost. `seen` is how many branches the round read: the
    /// transaction finishes only if that is all it has, so a branch the round never called
    /// keeps it unfinished. A round in which every branch succeeded — the usual one —
    /// shares its commit with other transactions' (see [`batch`]).
    ///
    /// This write does not wait for durability. The decision it follows is durable, and so
    /// is every participant's answer, in the participant's own database; if a crash loses
    /// the record, the transaction is still COMMITTING or ABORTING with an expired lease,
    /// and the next owner sends the round again, which the participants' barriers answer
    /// as duplicates. Waiting for the flush here would only add latency.
    pub async fn record_round(
        &self,
        lease: &Lease,
        outcomes: &[(u32, BranchOutcome)],
        seen: i64,
        final_status: Status,
        retry_in_ms: i64,
        escalation: Escalation,
    ) -> Result<RoundResult> {
        let done: Option<Vec<(u32, BranchStatus)>> = outcomes
            .iter()
            .map(|(branch_id, outcome)| match outcome {
                BranchOutcome::Done(status) => Some((*branch_id, *status)),
                BranchOutcome::Failed { .. } => None,
            })
            .collect();
        let Some(done) = done else {
            return self
                .reschedule_one(lease, outcomes, retry_in_ms, escalation)
                .await;
        };
        let item = Finished {
            lease: lease.clone(),
            done,
            seen,
            status: final_status,
        };
        let finished = match &self.batches {
            Some(batches) => batches.finish(item).await?,
            None => self.finish_one(&item).await?,
        };
        Ok(if finished {
            RoundResult::Finished(final_status)
        } else {
            RoundResult::NotFinished
        })
    }

    /// Claims up to `limit` due transactions for `owner`: unfinished, with
    /// `next_attempt_at` passed (a TRYING transaction's is its deadline; an owned one's is
    /// its lease expiry). Each claim bumps the version, fencing out the previous owner.
    ///
    /// A row this version cannot read (an unknown status written by a newer version, say)
    /// is logged and skipped, so it cannot hold up the rest of the batch.
    pub async fn claim_due(&self, owner: &str, lease_ms: i64, limit: i64) -> Result<Vec<GlobalTx>> {
        let claimed = sqlx::query(self.sql.claim_due)
            .bind(owner)
            .bind(lease_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(claimed
            .iter()
            .filter_map(|row| match rows::tx(row) {
                Ok(tx) => Some(tx),
                Err(error) => {
                    let gid: String = row.try_get("gid").unwrap_or_default();
                    tracing::error!(%gid, %error, "claimed a transaction this version cannot read; skipped");
                    None
                }
            })
            .collect())
    }

    /// Gives back every lease `owner` holds, making its transactions due now; used on
    /// graceful shutdown so another instance (or the next start) resumes at once.
    pub async fn release(&self, owner: &str) -> Result<u64> {
        let done = sqlx::query(self.sql.release)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Records or updates a participant's endpoint, registered by the authenticated caller
    /// `by`.
    pub async fn upsert_participant(
        &self,
        name: &str,
        endpoint: &str,
        by: Option<&str>,
    ) -> Result<()> {
        sqlx::query(self.sql.upsert_participant)
            .bind(name)
            .bind(endpoint)
            .bind(by)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A participant's endpoint, if known.
    pub async fn participant(&self, name: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(self.sql.participant)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?)
    }
}
