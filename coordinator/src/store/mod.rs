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

use std::{collections::BTreeMap, sync::OnceLock};

use sqlx::{Any, AnyPool, Row, any::AnyRow};

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
}

type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! statements {
    ($($name:ident = $sql:expr;)*) => {
        /// Every statement, rendered for one dialect.
        struct Sql { $($name: &'static str,)* }

        impl Sql {
            fn for_dialect(dialect: Dialect) -> &'static Sql {
                static SQLITE: OnceLock<Sql> = OnceLock::new();
                static POSTGRES: OnceLock<Sql> = OnceLock::new();
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
    begin = "INSERT INTO global_tx (gid, mode, status, deadline, next_attempt_at, labels, \
                 branch_count, created_at, updated_at) \
             VALUES ($1, $2, $3, {now} + $4, {now} + $4, $5, $6, {now}, {now}) \
             ON CONFLICT (gid) DO NOTHING \
             RETURNING gid, mode, status, deadline, next_attempt_at, attempts, owner, version, \
                 branch_count, labels, reason, needs_attention, paused, decided_at, \
                 created_at, updated_at";
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
    decide_commit = "UPDATE global_tx SET status = 'COMMITTING', owner = $2, version = version + 1, \
                         lease_until = {now} + $3, next_attempt_at = {now} + $3, \
                         decided_at = {now}, updated_at = {now} \
                     WHERE gid = $1 AND status = 'TRYING' AND deadline > {now} \
                     RETURNING version";
    decide_abort = "UPDATE global_tx SET status = 'ABORTING', owner = $2, version = version + 1, \
                        lease_until = {now} + $3, next_attempt_at = {now} + $3, \
                        decided_at = {now}, reason = $4, updated_at = {now} \
                    WHERE gid = $1 AND status = 'TRYING' \
                    RETURNING version";
    branch_done = "UPDATE branch SET status = $3, updated_at = {now}, next_attempt_at = NULL \
                   WHERE gid = $1 AND branch_id = $2 AND status = 'PENDING'";
    all_branches_done = "UPDATE branch SET status = $2, updated_at = {now}, next_attempt_at = NULL \
                         WHERE gid = $1 AND status = 'PENDING'";
    branch_failed = "UPDATE branch SET attempts = attempts + 1, last_error = $3, \
                         next_attempt_at = {now} + $4, updated_at = {now} \
                     WHERE gid = $1 AND branch_id = $2 AND status = 'PENDING'";
    finish = "UPDATE global_tx SET status = $4, owner = NULL, lease_until = NULL, \
                  next_attempt_at = NULL, updated_at = {now} \
              WHERE gid = $1 AND owner = $2 AND version = $3 \
                  AND NOT EXISTS (SELECT 1 FROM branch \
                                  WHERE branch.gid = $1 AND branch.status = 'PENDING')";
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
    /// For writes that need not wait for durability (PostgreSQL: a second pool with
    /// `synchronous_commit = off`; SQLite: the same pool).
    relaxed: AnyPool,
    dialect: Dialect,
    sql: &'static Sql,
}

impl std::fmt::Debug for Sql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sql")
    }
}

impl Store {
    /// Connects (creating a SQLite file if missing) and applies pending migrations.
    pub async fn open(url: &str, max_connections: u32) -> Result<Store> {
        let dialect = Dialect::from_url(url)?;
        let pool = dialect.connect(url, max_connections, false).await?;
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
        let relaxed = match dialect {
            Dialect::Sqlite => pool.clone(),
            Dialect::Postgres => {
                dialect
                    .connect(url, (max_connections / 2).max(2), true)
                    .await?
            }
        };
        Ok(Store {
            pool,
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
    /// nothing). The boolean is true when this call created it.
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
        let with_tx = |sql: &'static str| {
            sqlx::query(sql)
                .bind(gid)
                .bind(mode.as_str())
                .bind(status.as_str())
                .bind(timeout_ms)
                .bind(labels.clone())
                .bind(branches.len() as i64)
        };
        let with_branches = |mut query: sqlx::query::Query<'static, Any, _>| {
            for branch in branches {
                query = query
                    .bind(branch.participant)
                    .bind(branch.action)
                    .bind(branch.payload);
            }
            query
        };
        let row = if branches.is_empty() {
            with_tx(self.sql.begin).fetch_optional(&self.pool).await?
        } else if let Some(sql) = self.dialect.begin_with_branches(branches.len()) {
            with_branches(with_tx(sql))
                .fetch_optional(&self.pool)
                .await?
        } else {
            let mut tx = self.write_tx().await?;
            let row = with_tx(self.sql.begin).fetch_optional(&mut *tx).await?;
            if row.is_some() {
                let insert = sqlx::query(self.dialect.insert_branches(branches.len())).bind(gid);
                with_branches(insert).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            row
        };
        match row {
            Some(row) => Ok((tx_from_row(&row)?, true)),
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
    pub async fn register_branch(
        &self,
        gid: &str,
        participant: &str,
        action: &str,
        payload: &[u8],
        max_branches: i64,
    ) -> Result<Result<u32, RegisterRefusal>> {
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
    /// `lease_ms`. The deadline check is part of the compare-and-set.
    pub async fn decide_commit(
        &self,
        gid: &str,
        owner: &str,
        lease_ms: i64,
    ) -> Result<Result<Lease, Refusal>> {
        let version: Option<i64> = sqlx::query_scalar(self.sql.decide_commit)
            .bind(gid)
            .bind(owner)
            .bind(lease_ms)
            .fetch_optional(&self.pool)
            .await?;
        self.lease_or_refusal(gid, owner, version).await
    }

    /// Decides abort: TRYING → ABORTING (whatever the deadline), owned by `owner`.
    pub async fn decide_abort(
        &self,
        gid: &str,
        owner: &str,
        lease_ms: i64,
        reason: &str,
    ) -> Result<Result<Lease, Refusal>> {
        let version: Option<i64> = sqlx::query_scalar(self.sql.decide_abort)
            .bind(gid)
            .bind(owner)
            .bind(lease_ms)
            .bind(reason)
            .fetch_optional(&self.pool)
            .await?;
        self.lease_or_refusal(gid, owner, version).await
    }

    async fn lease_or_refusal(
        &self,
        gid: &str,
        owner: &str,
        version: Option<i64>,
    ) -> Result<Result<Lease, Refusal>> {
        Ok(match version {
            Some(version) => Ok(Lease {
                gid: gid.to_owned(),
                owner: owner.to_owned(),
                version,
            }),
            None => Err(match self.get(gid).await? {
                None => Refusal::NotFound,
                Some(found) => Refusal::State(found),
            }),
        })
    }

    /// Records one phase-two round in a single database transaction: each branch's outcome,
    /// then either the final status (when no branch is left pending) or the next attempt.
    /// The global write is fenced by the lease; branch successes are facts and are kept
    /// even when the lease was lost.
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
        final_status: Status,
        retry_in_ms: i64,
        escalation: Escalation,
    ) -> Result<RoundResult> {
        let all_done = outcomes
            .iter()
            .all(|(_, outcome)| matches!(outcome, BranchOutcome::Done(_)));
        if all_done
            && !outcomes.is_empty()
            && let Some(sql) = self.dialect.finish_all()
        {
            let finished = sqlx::query(sql)
                .bind(&lease.gid)
                .bind(&lease.owner)
                .bind(lease.version)
                .bind(done_status(outcomes).as_str())
                .bind(final_status.as_str())
                .execute(&self.relaxed)
                .await?;
            return Ok(if finished.rows_affected() == 1 {
                RoundResult::Finished(final_status)
            } else {
                RoundResult::LostLease
            });
        }
        let mut tx = self.relaxed.begin_with(self.dialect.begin_write()).await?;
        if all_done && !outcomes.is_empty() {
            // The usual round: every pending branch succeeded, so one statement records it.
            sqlx::query(self.sql.all_branches_done)
                .bind(&lease.gid)
                .bind(done_status(outcomes).as_str())
                .execute(&mut *tx)
                .await?;
        } else {
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
        }
        let result = if all_done {
            let finished = sqlx::query(self.sql.finish)
                .bind(&lease.gid)
                .bind(&lease.owner)
                .bind(lease.version)
                .bind(final_status.as_str())
                .execute(&mut *tx)
                .await?;
            if finished.rows_affected() == 1 {
                RoundResult::Finished(final_status)
            } else {
                RoundResult::LostLease
            }
        } else {
            let row = sqlx::query(self.sql.reschedule)
                .bind(&lease.gid)
                .bind(&lease.owner)
                .bind(lease.version)
                .bind(retry_in_ms)
                .bind(escalation.after_attempts)
                .bind(escalation.after_ms)
                .fetch_optional(&mut *tx)
                .await?;
            match row {
                Some(row) => RoundResult::Rescheduled {
                    attempts: row.try_get("attempts")?,
                    needs_attention: row.try_get::<i64, _>("needs_attention")? != 0,
                },
                None => RoundResult::LostLease,
            }
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

/// The status a round's successes move their branches to (one per round: CONFIRMED or
/// CANCELLED).
fn done_status(outcomes: &[(u32, BranchOutcome)]) -> BranchStatus {
    outcomes
        .iter()
        .find_map(|(_, outcome)| match outcome {
            BranchOutcome::Done(status) => Some(*status),
            BranchOutcome::Failed { .. } => None,
        })
        .unwrap_or(BranchStatus::Pending)
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
