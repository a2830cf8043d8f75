//! The message part of the durable log: storing a PREPARED message with its steps in one
//! database transaction, submitting it (PREPARED → RUNNING, leased to the submitter),
//! aborting it, and recording what the service's answer to QueryPrepared decided, fenced
//! by the lease the recovery loop took to ask.
//!
//! A submitted message's steps are recorded by `store::saga`, whose group writes serve
//! both; which step runs next and what an answer means is `crate::message`'s business.

use sqlx::Row;

use super::{
    Error, Escalation, Lease, Origin, Result, Store, rows,
    saga::NewStep,
    sql::{escalates, finish, held, statements, take_lease, tx_columns, unless_paused},
};
use crate::model::GlobalTx;

statements! {
    insert_prepared = concat!(
        "INSERT INTO global_tx (gid, mode, status, deadline, next_attempt_at, version, \
             branch_count, labels, traceparent, began_by, query_endpoint, created_at, \
             updated_at) \
         VALUES ($1, 'MESSAGE', 'PREPARED', {now} + $2, {now} + $2, 1, $3, $4, $5, $6, $7, \
             {now}, {now}) \
         ON CONFLICT (gid) DO NOTHING \
         RETURNING ", tx_columns!()
    );
    insert_submitted = concat!(
        "INSERT INTO global_tx (gid, mode, status, deadline, next_attempt_at, owner, \
             lease_until, version, branch_count, labels, traceparent, began_by, decided_at, \
             decided_by, created_at, updated_at) \
         VALUES ($1, 'MESSAGE', 'RUNNING', {now} + $2, {now} + $3, $4, {now} + $3, 1, $5, \
             $6, $7, $8, {now}, $8, {now}, {now}) \
         ON CONFLICT (gid) DO NOTHING \
         RETURNING ", tx_columns!()
    );
    submit = concat!(
        "UPDATE global_tx SET status = 'RUNNING', ", take_lease!("$2", "$3"), ", \
             attempts = 0, reason = '', decided_at = {now}, decided_by = $4, \
             updated_at = {now} \
         WHERE global_tx.gid = $1 AND global_tx.mode = 'MESSAGE' \
             AND global_tx.status = 'PREPARED' \
         RETURNING ", tx_columns!()
    );
    abort = concat!(
        "UPDATE global_tx SET ", finish!("'ABORTED'"), ", reason = $2, decided_at = {now}, \
             decided_by = $3 \
         WHERE global_tx.gid = $1 AND global_tx.mode = 'MESSAGE' \
             AND global_tx.status = 'PREPARED'"
    );
    query_endpoint = "SELECT query_endpoint FROM global_tx WHERE gid = $1";
    committed = concat!(
        "UPDATE global_tx SET status = 'RUNNING', attempts = 0, reason = '', \
             decided_at = {now}, decided_by = $4, lease_until = {now} + $5, \
             next_attempt_at = ", unless_paused!("{now} + $5"), ", updated_at = {now} \
         WHERE global_tx.gid = $1 AND ", held!("$2", "$3"), " \
             AND global_tx.status = 'PREPARED'"
    );
    rolled_back = concat!(
        "UPDATE global_tx SET ", finish!("'ABORTED'"), ", reason = $4, decided_at = {now}, \
             decided_by = $5 \
         WHERE global_tx.gid = $1 AND ", held!("$2", "$3"), " \
             AND global_tx.status = 'PREPARED'"
    );
    unanswered = concat!(
        "UPDATE global_tx SET attempts = attempts + 1, owner = NULL, lease_until = NULL, \
             reason = $5, next_attempt_at = ", unless_paused!("{now} + $4"), ", \
             needs_attention = CASE WHEN ", escalates!("$6", "$7"), " \
                 THEN 1 ELSE needs_attention END, \
             updated_at = {now} \
         WHERE global_tx.gid = $1 AND ", held!("$2", "$3"), " \
             AND global_tx.status = 'PREPARED' \
         RETURNING attempts, needs_attention"
    );
}

/// What the service said about a PREPARED message's local transaction, to be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answered {
    /// It committed: the message is submitted, still leased to the asker.
    Committed,
    /// It rolled back, and never will commit: the message is aborted.
    RolledBack,
    /// No answer; ask again after `retry_in_ms`.
    Unanswered {
        /// Kept as the message's reason, for operators.
        error: String,
        /// Delay before the next question.
        retry_in_ms: i64,
        /// When the message is flagged `needs_attention`.
        escalation: Escalation,
    },
}

/// What recording an answer achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerRecorded {
    /// Written; for an unanswered question, the attempts so far and the escalation flag.
    Written {
        /// Unanswered questions so far (0 for an answer).
        attempts: i64,
        /// The escalation flag.
        needs_attention: bool,
    },
    /// The lease was lost (a Submit or an Abort came meanwhile, or another instance
    /// asked): nothing was written.
    LostLease,
}

impl Store {
    fn message_sql(&self) -> &'static Sql {
        Sql::for_dialect(self.dialect)
    }

    /// Stores a PREPARED message and its steps in one database transaction, due at its
    /// deadline (when the service is asked); or returns the transaction that already has
    /// this gid. The boolean is true when this call created it.
    pub async fn prepare_message(
        &self,
        gid: &str,
        steps: &[NewStep],
        timeout_ms: i64,
        query_endpoint: &str,
        origin: Origin<'_>,
    ) -> Result<(GlobalTx, bool)> {
        let labels = serde_json::to_string(origin.labels)
            .map_err(|e| Error::Corrupt(format!("labels not serialisable: {e}")))?;
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(self.message_sql().insert_prepared)
            .bind(gid)
            .bind(timeout_ms)
            .bind(step_count(gid, steps)?)
            .bind(labels)
            .bind(origin.traceparent)
            .bind(origin.began_by)
            .bind(query_endpoint)
            .fetch_optional(&mut *tx)
            .await?;
        self.with_steps(tx, gid, steps, row).await
    }

    /// Stores a message and its steps already submitted (RUNNING, leased to `owner` for
    /// `lease_ms`), for a service whose local transaction the coordinator cannot ask
    /// about; or returns the transaction that already has this gid.
    pub async fn submit_message_unprepared(
        &self,
        gid: &str,
        steps: &[NewStep],
        timeout_ms: i64,
        origin: Origin<'_>,
        owner: &str,
        lease_ms: i64,
    ) -> Result<(GlobalTx, bool)> {
        let labels = serde_json::to_string(origin.labels)
            .map_err(|e| Error::Corrupt(format!("labels not serialisable: {e}")))?;
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(self.message_sql().insert_submitted)
            .bind(gid)
            .bind(timeout_ms)
            .bind(lease_ms)
            .bind(owner)
            .bind(step_count(gid, steps)?)
            .bind(labels)
            .bind(origin.traceparent)
            .bind(origin.began_by)
            .fetch_optional(&mut *tx)
            .await?;
        self.with_steps(tx, gid, steps, row).await
    }

    async fn with_steps(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Any>,
        gid: &str,
        steps: &[NewStep],
        row: Option<sqlx::any::AnyRow>,
    ) -> Result<(GlobalTx, bool)> {
        let Some(row) = row else {
            tx.rollback().await?;
            return match self.get(gid).await? {
                Some(existing) => Ok((existing, false)),
                None => Err(Error::Corrupt(format!("{gid} vanished while storing it"))),
            };
        };
        let created = rows::tx(&row)?;
        self.insert_steps(&mut tx, gid, steps).await?;
        tx.commit().await?;
        Ok((created, true))
    }

    /// PREPARED → RUNNING, leased to `owner` for `lease_ms` (whoever held the lease to ask
    /// the service is fenced out). `None` when the message is not PREPARED (or not a
    /// message).
    pub async fn submit_message(
        &self,
        gid: &str,
        owner: &str,
        lease_ms: i64,
        by: Option<&str>,
    ) -> Result<Option<GlobalTx>> {
        let row = sqlx::query(self.message_sql().submit)
            .bind(gid)
            .bind(owner)
            .bind(lease_ms)
            .bind(by)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::tx).transpose()
    }

    /// PREPARED → ABORTED. False when the message is not PREPARED (or not a message).
    pub async fn abort_message(&self, gid: &str, reason: &str, by: Option<&str>) -> Result<bool> {
        let done = sqlx::query(self.message_sql().abort)
            .bind(gid)
            .bind(reason)
            .bind(by)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Where the service of a prepared message answers QueryPrepared; `None` when the
    /// message was submitted without Prepare (or the gid is unknown).
    pub async fn query_endpoint(&self, gid: &str) -> Result<Option<String>> {
        let row = sqlx::query(self.message_sql().query_endpoint)
            .bind(gid)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => row.try_get::<Option<String>, _>("query_endpoint")?,
            None => None,
        })
    }

    /// Records the service's answer about a PREPARED message under the lease taken to
    /// ask: `Committed` submits it and renews the lease for `lease_ms`, `RolledBack`
    /// aborts it, `Unanswered` releases it to be asked again. `by` is recorded as who
    /// decided.
    pub async fn record_answer(
        &self,
        lease: &Lease,
        answer: &Answered,
        by: &str,
        lease_ms: i64,
    ) -> Result<AnswerRecorded> {
        let sql = self.message_sql();
        let written = AnswerRecorded::Written {
            attempts: 0,
            needs_attention: false,
        };
        let fenced = |statement| {
            sqlx::query(statement)
                .bind(&lease.gid)
                .bind(&lease.owner)
                .bind(lease.version)
        };
        let recorded = match answer {
            Answered::Committed => {
                let done = fenced(sql.committed)
                    .bind(by)
                    .bind(lease_ms)
                    .execute(&self.pool)
                    .await?;
                (done.rows_affected() == 1).then_some(written)
            }
            Answered::RolledBack => {
                let done = fenced(sql.rolled_back)
                    .bind("the local transaction did not commit")
                    .bind(by)
                    .execute(&self.pool)
                    .await?;
                (done.rows_affected() == 1).then_some(written)
            }
            Answered::Unanswered {
                error,
                retry_in_ms,
                escalation,
            } => fenced(sql.unanswered)
                .bind(*retry_in_ms)
                .bind(error.as_str())
                .bind(escalation.after_attempts)
                .bind(escalation.after_ms)
                .fetch_optional(&self.pool)
                .await?
                .map(|row| -> Result<AnswerRecorded> {
                    Ok(AnswerRecorded::Written {
                        attempts: row.try_get("attempts")?,
                        needs_attention: rows::flag(&row, "needs_attention")?,
                    })
                })
                .transpose()?,
        };
        Ok(recorded.unwrap_or(AnswerRecorded::LostLease))
    }
}

fn step_count(gid: &str, steps: &[NewStep]) -> Result<i64> {
    i64::try_from(steps.len()).map_err(|_| Error::Corrupt(format!("{gid}: {} steps", steps.len())))
}
