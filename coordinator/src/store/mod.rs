//! The coordinator's durable log: global transactions, branches, participants and the
//! audit trail, in SQLite (embedded default) or PostgreSQL (production).
//!
//! `Store` owns every SQL statement the coordinator issues and every compare-and-set that
//! makes a transition safe: Begin, branch registration, the commit/abort decision, recording
//! the outcome of a phase-two round under the owner/version fence, and claiming due work.
//! Statements are written once; the few dialect differences live in [`dialect`]. Time is
//! always the database's own (`{now}` in the templates), never the caller's.
//!
//! The store does not decide what to do next or call participants; that is the engine's job.

mod dialect;

use std::collections::BTreeMap;

use sqlx::{Any, AnyPool, Row, any::AnyRow};

use batches::{Begins, Decision, Decisions, Finished, NewTx, Registration, Registrations, Rounds};
use group::Group;

use dialect::Sessions;
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

macro_rules! statements {
    ($($name:ident = $sql:expr;)*) => {
        /// Every statement, rendered for one dialect.
        struct Sql { $($name: &'static str,)* }

        impl Sql {
            fn for_dialect(dialect: Dialect) -> &'static Sql {
                static SQLITE: std::sync::OnceLock<Sql> = std::sync::OnceLock::new();
                static POSTGRES: std::sync::OnceLock<Sql> = std::sync::OnceLock::new();
                let cell = match dialect {
                    Dialect::Sqlite => &SQLITE,
                    Dialect::Postgres => &POSTGRES,
                };
                cell.get_or_init(|| Sql { $($name: dialect.render($sql),)* })
            }
        }
    };
}

statements! {
    get = "SELECT gid, mode, status, deadline, next_attempt_at, attempts, owner, version, \
               branch_count, labels, reason, needs_attention, paused, decided_at, \
               created_at, updated_at \
           FROM global_tx WHERE gid = $1";
    branches = "SELECT gid, branch_id, participant, action, payload, status, attempts, \
                    last_error, next_attempt_at \
                FROM branch WHERE gid = $1 ORDER BY branch_id";
    take_branch_slot = "UPDATE global_tx SET branch_count = branch_count + 1, updated_at = {now} \
                        WHERE gid = $1 AND status = 'TRYING' AND deadline > {now} \
                            AND branch_count < $2 \
                        RETURNING branch_count";
    insert_branch = "INSERT INTO branch (gid, branch_id, participant, action, payload, status, \
                         created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, 'PENDING', {now}, {now})";
    branch_done = "UPDATE branch SET status = $3, updated_at = {now}, next_attempt_at = NULL \
                   WHERE gid = $1 AND branch_id = $2 AND status = 'PENDING'";
    branch_failed = "UPDATE branch SET attempts = attempts + 1, last_error = $3, \
                         next_attempt_at = {now} + $4, updated_at = {now} \
                     WHERE gid = $1 AND branch_id = $2 AND status = 'PENDING'";
    reschedule = "UPDATE global_tx SET attempts = attempts + 1, owner = NULL, lease_until = NULL, \
                      next_attempt_at = CASE WHEN paused = 1 THEN NULL ELSE {now} + $4 END, \
                      updated_at = {now}, \
                      needs_attention = CASE \
                          WHEN attempts + 1 >= $5 OR {now} - COALESCE(decided_at, created_at) >= $6 \
                          THEN 1 ELSE needs_attention END \
                  WHERE gid = $1 AND owner = $2 AND version = $3 \
                  RETURNING attempts, needs_attention";
    claim_due = "UPDATE global_tx SET owner = $1, version = version + 1, \
                     lease_until = {now} + $2, next_attempt_at = {now} + $2, updated_at = {now} \
                 WHERE gid IN (SELECT gid FROM global_tx \
                               WHERE status NOT IN ('COMMITTED', 'ABORTED') \
                                   AND next_attempt_at <= {now} \
                               ORDER BY next_attempt_at LIMIT $3 {skip_locked}) \
                     AND status NOT IN ('COMMITTED', 'ABORTED') AND next_attempt_at <= {now} \
                 RETURNING gid, mode, status, deadline, next_attempt_at, attempts, owner, \
                     version, branch_count, labels, reason, needs_attention, paused, \
                     decided_at, created_at, updated_at";
    release = "UPDATE global_tx SET owner = NULL, lease_until = NULL, updated_at = {now}, \
                   next_attempt_at = CASE WHEN paused = 1 THEN NULL ELSE {now} END \
               WHERE owner = $1 AND status NOT IN ('COMMITTED', 'ABORTED')";
    upsert_participant = "INSERT INTO participant (name, endpoint, updated_at) \
                          VALUES ($1, $2, {now}) \
                          ON CONFLICT (name) DO UPDATE \
                          SET endpoint = excluded.endpoint, updated_at = excluded.updated_at";
    participant = "SELECT endpoint FROM participant WHERE name = $1";
    now = "SELECT {now}";
}

// Declared after `statements!` so that the saga statements can use it.
pub mod saga;

// Declared after `statements!` so that the admin statements can use it.
mod admin;

// Declared after `statements!` so that the retention statements can use it.
mod retention;

// Declared after `statements!` so that the batched statements can use it.
mod batches;

mod group;

pub use admin::{AuditEntry, AuditRecord, Counts, Cursor, ListFilter};

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

/// A decision taken: the lease to drive phase two with, and the transaction's branches as
/// they were when it was decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    /// The lease the decision produced.
    pub lease: Lease,
    /// Every branch, in registration order.
    pub branches: Vec<Branch>,
}

/// What a compare-and-set decision found when it did not win.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// No such gid.
    NotFound,
    /// The transaction is in a state that does not allow the change.
    State(GlobalTx),
}

/// Why a branch could not be registered.
#[derive(Debug, Clone, PartialEq)]
pub enum RegisterRefusal {
    /// No such gid.
    NotFound,
    /// Not TRYING, or past its deadline.
    State(GlobalTx),
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

/// The coordinator's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    /// For writes that need not wait for durability (PostgreSQL: a pool with
    /// `synchronous_commit = off`; SQLite: the same pool).
    relaxed: AnyPool,
    /// The durable batches' connections (PostgreSQL: a third pool, one connection for each
    /// kind of batch; SQLite: the same pool).
    batches: AnyPool,
    dialect: Dialect,
    sql: &'static Sql,
    begins: Group<Begins>,
    registrations: Group<Registrations>,
    decisions: Group<Decisions>,
    rounds: Group<Rounds>,
}

/// One connection for each kind of durable batch: each kind runs one batch at a time.
const BATCH_CONNECTIONS: u32 = 3;

/// The most requests one batch carries.
const MAX_BATCH: usize = 128;

impl std::fmt::Debug for Sql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sql")
    }
}

impl Store {
    /// Connects (creating a SQLite file if missing), applies pending migrations and starts
    /// the group-commit tasks on the current runtime.
    ///
    /// PostgreSQL gets a pool of `max_connections` for general queries, half as many for
    /// round records and [`BATCH_CONNECTIONS`] for the durable batches (their sessions are
    /// set up differently, see [`Dialect::connect`]). SQLite gets one connection whatever
    /// `max_connections` says: it admits one writer at a time, and more connections only
    /// wait on its lock (sleeping in `busy_timeout`) where a queue would hand over at once.
    pub async fn open(url: &str, max_connections: u32) -> Result<Store> {
        let dialect = Dialect::from_url(url)?;
        let max_connections = match dialect {
            Dialect::Sqlite => 1,
            Dialect::Postgres => max_connections.max(2),
        };
        batches::render(dialect);
        let pool = dialect
            .connect(url, max_connections, Sessions::General)
            .await?;
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
        let (batches, relaxed) = match dialect {
            Dialect::Sqlite => (pool.clone(), pool.clone()),
            Dialect::Postgres => (
                dialect
                    .connect(url, BATCH_CONNECTIONS, Sessions::Batches { durable: true })
                    .await?,
                dialect
                    .connect(
                        url,
                        (max_connections / 2).max(2),
                        Sessions::Batches { durable: false },
                    )
                    .await?,
            ),
        };
        Ok(Store {
            begins: Group::start(
                Begins {
                    pool: batches.clone(),
                    dialect,
                },
                MAX_BATCH,
            ),
            registrations: Group::start(
                Registrations {
                    pool: batches.clone(),
                    dialect,
                },
                MAX_BATCH,
            ),
            decisions: Group::start(
                Decisions {
                    pool: batches.clone(),
                    dialect,
                },
                MAX_BATCH,
            ),
            rounds: Group::start(
                Rounds {
                    pool: relaxed.clone(),
                    dialect,
                },
                MAX_BATCH,
            ),
            pool,
            batches,
            relaxed,
            dialect,
            sql: Sql::for_dialect(dialect),
        })
    }

    /// Which database this is.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.relaxed.close().await;
        self.batches.close().await;
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
    /// one commit (see [`group`]).
    pub async fn begin(
        &self,
        gid: &str,
        mode: Mode,
        status: Status,
        timeout_ms: i64,
        labels: &BTreeMap<String, String>,
        branches: &[NewBranch<'_>],
    ) -> Result<(GlobalTx, bool)> {
        let labels = serde_json::to_string(labels)
            .map_err(|e| Error::Corrupt(format!("labels not serialisable: {e}")))?;
        let created = self
            .begins
            .submit(NewTx {
                gid: gid.to_owned(),
                mode,
                status,
                timeout_ms,
                labels,
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
            })
            .await?;
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
        row.as_ref().map(tx_from_row).transpose()
    }

    /// Reads a transaction's branches in registration order.
    pub async fn branches(&self, gid: &str) -> Result<Vec<Branch>> {
        let rows = sqlx::query(self.sql.branches)
            .bind(gid)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(branch_from_row).collect()
    }

    /// Adds a branch if the transaction is TRYING, before its deadline and below
    /// `max_branches`, all checked in the same statement that takes the branch id.
    /// Concurrent registrations share one commit (see [`group`]).
    pub async fn register_branch(
        &self,
        gid: &str,
        participant: &str,
        action: &str,
        payload: &[u8],
        max_branches: i64,
    ) -> Result<Result<u32, RegisterRefusal>> {
        let taken = self
            .registrations
            .submit(Registration {
                gid: gid.to_owned(),
                participant: participant.to_owned(),
                action: action.to_owned(),
                payload: payload.to_vec(),
                max_branches,
            })
            .await?;
        if let Some(branch_id) = taken {
            return Ok(Ok(branch_id));
        }
        // Not taken with the rest of its batch: alone, it may still fit, or the refusal
        // says why not.
        let mut tx = self.write_tx().await?;
        let slot: Option<i64> = sqlx::query_scalar(self.sql.take_branch_slot)
            .bind(gid)
            .bind(max_branches)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(branch_id) = slot else {
            tx.rollback().await?;
            return Ok(Err(match self.get(gid).await? {
                None => RegisterRefusal::NotFound,
                Some(found)
                    if found.status == Status::Trying && found.branch_count >= max_branches =>
                {
                    RegisterRefusal::TooManyBranches(found.branch_count)
                }
                Some(found) => RegisterRefusal::State(found),
            }));
        };
        sqlx::query(self.sql.insert_branch)
            .bind(gid)
            .bind(branch_id)
            .bind(participant)
            .bind(action)
            .bind(payload)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let branch_id = u32::try_from(branch_id)
            .map_err(|_| Error::Corrupt(format!("{gid}: branch id {branch_id} out of range")))?;
        Ok(Ok(branch_id))
    }

    /// Decides commit: TRYING and before the deadline → COMMITTING, owned by `owner` for
    /// `lease_ms`. The deadline check is part of the compare-and-set. Concurrent decisions
    /// share one commit (see [`group`]).
    pub async fn decide_commit(
        &self,
        gid: &str,
        owner: &str,
        lease_ms: i64,
    ) -> Result<Result<Decided, Refusal>> {
        self.decide(gid, Status::Committing, owner, lease_ms, None)
            .await
    }

    /// Decides abort: TRYING → ABORTING (whatever the deadline), owned by `owner`.
    pub async fn decide_abort(
        &self,
        gid: &str,
        owner: &str,
        lease_ms: i64,
        reason: &str,
    ) -> Result<Result<Decided, Refusal>> {
        self.decide(gid, Status::Aborting, owner, lease_ms, Some(reason))
            .await
    }

    async fn decide(
        &self,
        gid: &str,
        to: Status,
        owner: &str,
        lease_ms: i64,
        reason: Option<&str>,
    ) -> Result<Result<Decided, Refusal>> {
        // An abort refused while the transaction is still TRYING shared its batch with an
        // earlier request for the same gid that did not decide (a Commit past the
        // deadline): alone, it decides.
        for attempt in 0..2 {
            let decided = self
                .decisions
                .submit(Decision {
                    gid: gid.to_owned(),
                    to,
                    owner: owner.to_owned(),
                    lease_ms,
                    reason: reason.map(str::to_owned),
                })
                .await?;
            if let Some(decided) = decided {
                return Ok(Ok(decided));
            }
            match self.get(gid).await? {
                None => return Ok(Err(Refusal::NotFound)),
                Some(found)
                    if attempt == 0 && to == Status::Aborting && found.status == Status::Trying => {
                }
                Some(found) => return Ok(Err(Refusal::State(found))),
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
    /// shares its commit with other transactions' (see [`group`]).
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
        if let Some(done) = done {
            let finished = self
                .rounds
                .submit(Finished {
                    lease: lease.clone(),
                    done,
                    seen,
                    status: final_status,
                })
                .await?;
            return Ok(if finished {
                RoundResult::Finished(final_status)
            } else {
                RoundResult::NotFinished
            });
        }
        let mut tx = self.relaxed.begin_with(self.dialect.begin_write()).await?;
        for (branch_id, outcome) in outcomes {
            match outcome {
                BranchOutcome::Done(status) => {
                    sqlx::query(self.sql.branch_done)
                        .bind(&lease.gid)
                        .bind(i64::from(*branch_id))
                        .bind(status.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
                BranchOutcome::Failed { error, retry_in_ms } => {
                    sqlx::query(self.sql.branch_failed)
                        .bind(&lease.gid)
                        .bind(i64::from(*branch_id))
                        .bind(error.as_str())
                        .bind(*retry_in_ms)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        let row = sqlx::query(self.sql.reschedule)
            .bind(&lease.gid)
            .bind(&lease.owner)
            .bind(lease.version)
            .bind(retry_in_ms)
            .bind(escalation.after_attempts)
            .bind(escalation.after_ms)
            .fetch_optional(&mut *tx)
            .await?;
        let result = match row {
            Some(row) => RoundResult::Rescheduled {
                attempts: row.try_get("attempts")?,
                needs_attention: row.try_get::<i64, _>("needs_attention")? != 0,
            },
            None => RoundResult::LostLease,
        };
        tx.commit().await?;
        Ok(result)
    }

    /// Claims up to `limit` due transactions for `owner`: unfinished, with
    /// `next_attempt_at` passed (a TRYING transaction's is its deadline; an owned one's is
    /// its lease expiry). Each claim bumps the version, fencing out the previous owner.
    ///
    /// A row this version cannot read (an unknown status written by a newer version, say)
    /// is logged and skipped, so it cannot hold up the rest of the batch.
    pub async fn claim_due(&self, owner: &str, lease_ms: i64, limit: i64) -> Result<Vec<GlobalTx>> {
        let rows = sqlx::query(self.sql.claim_due)
            .bind(owner)
            .bind(lease_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .filter_map(|row| match tx_from_row(row) {
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

    /// Records or updates a participant's endpoint.
    pub async fn upsert_participant(&self, name: &str, endpoint: &str) -> Result<()> {
        sqlx::query(self.sql.upsert_participant)
            .bind(name)
            .bind(endpoint)
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

fn corrupt(what: &str, value: &str) -> Error {
    Error::Corrupt(format!("unknown {what} {value:?}"))
}

fn tx_from_row(row: &AnyRow) -> Result<GlobalTx> {
    let mode: String = row.try_get("mode")?;
    let status: String = row.try_get("status")?;
    let labels: String = row.try_get("labels")?;
    Ok(GlobalTx {
        gid: row.try_get("gid")?,
        mode: Mode::parse(&mode).ok_or_else(|| corrupt("mode", &mode))?,
        status: Status::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        deadline: row.try_get("deadline")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        attempts: row.try_get("attempts")?,
        owner: row.try_get("owner")?,
        version: row.try_get("version")?,
        branch_count: row.try_get("branch_count")?,
        labels: serde_json::from_str(&labels).map_err(|_| corrupt("labels", &labels))?,
        reason: row.try_get("reason")?,
        needs_attention: row.try_get::<i64, _>("needs_attention")? != 0,
        paused: row.try_get::<i64, _>("paused")? != 0,
        decided_at: row.try_get("decided_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn branch_from_row(row: &AnyRow) -> Result<Branch> {
    let status: String = row.try_get("status")?;
    let branch_id: i64 = row.try_get("branch_id")?;
    let payload: Vec<u8> = row.try_get("payload")?;
    Ok(Branch {
        gid: row.try_get("gid")?,
        branch_id: u32::try_from(branch_id)
            .map_err(|_| corrupt("branch id", &branch_id.to_string()))?,
        participant: row.try_get("participant")?,
        action: row.try_get("action")?,
        payload: payload.into(),
        status: BranchStatus::parse(&status).ok_or_else(|| corrupt("branch status", &status))?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
    })
}
