//! The saga part of the durable log: persisting a whole saga in one database transaction,
//! reading its steps with their groups and compensation payloads, and recording each group
//! of Execute or Compensate calls under the owner/version fence — renewing the lease,
//! switching RUNNING to COMPENSATING, rescheduling with the retry policy's delay, or
//! finishing.
//!
//! Which step runs next, and what an answer means, is decided by `crate::saga`; this module
//! only applies those decisions atomically. Every write after a claim is fenced: a write
//! whose owner or version no longer matches changes nothing, branch rows included.

use super::Origin;

use bytes::Bytes;
use sqlx::{Any, Row, any::AnyRow};

use super::{
    Error, Escalation, Lease, Result, Store, rows,
    sql::{escalates, finish, held, statements, tx_columns, unless_paused},
};
use crate::model::{Branch, BranchStatus, GlobalTx, Mode, Status};

/// Whether the deadline has passed, as a column.
macro_rules! deadline_passed {
    () => {
        "CAST(CASE WHEN global_tx.deadline <= {now} THEN 1 ELSE 0 END AS BIGINT) \
         AS deadline_passed"
    };
}

statements! {
    insert = concat!(
        "INSERT INTO global_tx (gid, mode, status, deadline, next_attempt_at, owner, \
             lease_until, version, branch_count, labels, traceparent, began_by, created_at, \
             updated_at) \
         VALUES ($1, $2, 'RUNNING', {now} + $3, {now} + $4, $5, {now} + $4, 1, $6, $7, $8, \
             $9, {now}, {now}) \
         ON CONFLICT (gid) DO NOTHING \
         RETURNING ", tx_columns!()
    );
    insert_step = "INSERT INTO branch (gid, branch_id, participant, action, payload, \
                       compensation_payload, step_group, status, created_at, updated_at) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, 'PENDING', {now}, {now})";
    steps = "SELECT gid, branch_id, participant, action, payload, status, attempts, \
                 last_error, next_attempt_at, compensation_payload, step_group \
             FROM branch WHERE gid = $1 ORDER BY branch_id";
    renew = concat!(
        "UPDATE global_tx SET lease_until = {now} + $4, updated_at = {now}, \
             next_attempt_at = ", unless_paused!("{now} + $4"), " \
         WHERE global_tx.gid = $1 AND ", held!("$2", "$3"), " \
             AND global_tx.status IN ('RUNNING', 'COMPENSATING') \
         RETURNING status, ", deadline_passed!()
    );
    compensate = concat!(
        "UPDATE global_tx SET status = 'COMPENSATING', reason = $4, attempts = 0, \
             decided_at = {now}, lease_until = {now} + $5, \
             next_attempt_at = ", unless_paused!("{now} + $5"), ", updated_at = {now} \
         WHERE global_tx.gid = $1 AND ", held!("$2", "$3"), " \
             AND global_tx.status = 'RUNNING' \
         RETURNING status, ", deadline_passed!()
    );
    finish = concat!(
        "UPDATE global_tx SET ", finish!("$4"), " \
         WHERE global_tx.gid = $1 AND ", held!("$2", "$3"), " AND global_tx.status = $5 \
             AND NOT EXISTS (SELECT 1 FROM branch \
                             WHERE branch.gid = $1 AND branch.status = $6)"
    );
    reschedule = concat!(
        "UPDATE global_tx SET attempts = attempts + 1, owner = NULL, lease_until = NULL, \
             next_attempt_at = CASE \
                 WHEN global_tx.paused = 1 THEN NULL \
                 WHEN global_tx.status = 'RUNNING' AND global_tx.mode = 'SAGA' \
                     AND global_tx.deadline < {now} + $4 THEN global_tx.deadline \
                 ELSE {now} + $4 END, \
             updated_at = {now}, \
             needs_attention = CASE \
                 WHEN (global_tx.status = 'COMPENSATING' OR global_tx.mode = 'MESSAGE') \
                     AND ", escalates!("$5", "$6"), " \
                 THEN 1 ELSE needs_attention END \
         WHERE global_tx.gid = $1 AND ", held!("$2", "$3"), " \
             AND global_tx.status IN ('RUNNING', 'COMPENSATING') \
         RETURNING status, attempts, needs_attention"
    );
    step_done = "UPDATE branch SET status = $3, next_attempt_at = NULL, updated_at = {now} \
                 WHERE gid = $1 AND branch_id = $2 AND status IN ('PENDING', 'EXECUTED')";
    step_failed = "UPDATE branch SET attempts = attempts + 1, last_error = $3, \
                       next_attempt_at = {now} + $4, updated_at = {now} \
                   WHERE gid = $1 AND branch_id = $2 AND status IN ('PENDING', 'EXECUTED')";
}

/// One step of a saga as submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStep {
    /// Participant name.
    pub participant: String,
    /// Business action, passed through to the participant.
    pub action: String,
    /// Sent with Execute.
    pub payload: Bytes,
    /// Sent with Compensate; `None` sends `payload` again.
    pub compensation: Option<Bytes>,
    /// Consecutive steps with the same non-zero group run in parallel.
    pub group: u32,
}

/// One stored saga step: its branch row and what only sagas use.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The branch row; `branch_id` is the step's 1-based position.
    pub branch: Branch,
    /// Sent with Compensate; `None` sends the forward payload again.
    pub compensation: Option<Bytes>,
    /// The group given at submission.
    pub group: u32,
}

/// How one Execute or Compensate call ended, to be recorded on its step.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// The call succeeded; the step moves to this status (EXECUTED or COMPENSATED).
    Done(BranchStatus),
    /// The participant refused its Execute: counted as an attempt, never retried.
    Refused(String),
    /// The call failed transiently; the step is retried after `retry_in_ms`.
    Failed {
        /// Kept for operators.
        error: String,
        /// Delay before the next attempt.
        retry_in_ms: i64,
    },
}

/// What to do with the saga once a group's outcomes are recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum Then {
    /// Keep the lease and go on with the next group.
    Continue,
    /// RUNNING → COMPENSATING, keeping the lease.
    Compensate {
        /// Why, kept as the transaction's reason.
        reason: String,
    },
    /// Release the lease; the recovery loop claims the saga again after `retry_in_ms`
    /// (a RUNNING saga no later than its deadline; a message has no such bound).
    Retry {
        /// Delay before the next attempt.
        retry_in_ms: i64,
        /// When a COMPENSATING saga, or a message delivering its steps, is flagged
        /// `needs_attention`.
        escalation: Escalation,
    },
    /// RUNNING → COMMITTED: every step executed. Refused while a step is pending.
    Commit,
    /// COMPENSATING → ABORTED: every step that may have executed is compensated. Refused
    /// while a step is still EXECUTED.
    Abort,
}

/// What recording a group achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The lease is still held and was renewed.
    Holding(Renewed),
    /// Released for a later attempt.
    Rescheduled {
        /// The saga's status.
        status: Status,
        /// Unfinished rounds so far.
        attempts: i64,
        /// The escalation flag after this round.
        needs_attention: bool,
    },
    /// The saga reached this final status.
    Finished(Status),
    /// Another instance owns the saga now (or it changed under the lease); nothing was
    /// written.
    LostLease,
}

/// What renewing the lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewed {
    /// RUNNING or COMPENSATING.
    pub status: Status,
    /// The deadline has passed by the store's clock.
    pub deadline_passed: bool,
}

impl Store {
    fn saga_sql(&self) -> &'static Sql {
        Sql::for_dialect(self.dialect)
    }

    /// Persists a RUNNING saga and its steps in one database transaction, owned by `owner`
    /// for `lease_ms` so that it can be driven at once; or returns the transaction that
    /// already has this gid. The boolean is true when this call created it.
    pub async fn submit_saga(
        &self,
        gid: &str,
        steps: &[NewStep],
        timeout_ms: i64,
        origin: Origin<'_>,
        owner: &str,
        lease_ms: i64,
    ) -> Result<(GlobalTx, bool)> {
        let sql = self.saga_sql();
        let labels = serde_json::to_string(origin.labels)
            .map_err(|e| Error::Corrupt(format!("labels not serialisable: {e}")))?;
        let count = i64::try_from(steps.len())
            .map_err(|_| Error::Corrupt(format!("{gid}: {} steps", steps.len())))?;
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(sql.insert)
            .bind(gid)
            .bind(Mode::Saga.as_str())
            .bind(timeout_ms)
            .bind(lease_ms)
            .bind(owner)
            .bind(count)
            .bind(labels)
            .bind(origin.traceparent)
            .bind(origin.began_by)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return match self.get(gid).await? {
                Some(existing) => Ok((existing, false)),
                None => Err(Error::Corrupt(format!("{gid} vanished during SubmitSaga"))),
            };
        };
        let created = rows::tx(&row)?;
        self.insert_steps(&mut tx, gid, steps).await?;
        tx.commit().await?;
        Ok((created, true))
    }

    /// Inserts the PENDING steps (ids 1, 2, …) of a saga or a message whose transaction
    /// row `tx` just inserted.
    pub(super) async fn insert_steps(
        &self,
        tx: &mut sqlx::Transaction<'static, Any>,
        gid: &str,
        steps: &[NewStep],
    ) -> Result<()> {
        for (branch_id, step) in (1i64..).zip(steps) {
            sqlx::query(self.saga_sql().insert_step)
                .bind(gid)
                .bind(branch_id)
                .bind(step.participant.as_str())
                .bind(step.action.as_str())
                .bind(step.payload.as_ref())
                .bind(step.compensation.as_deref())
                .bind(i64::from(step.group))
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Reads a saga's steps in order.
    pub async fn saga_steps(&self, gid: &str) -> Result<Vec<Step>> {
        let rows = sqlx::query(self.saga_sql().steps)
            .bind(gid)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(step_from_row).collect()
    }

    /// Extends the lease by `lease_ms` if it is still held and the saga unfinished, and
    /// reports its status and whether its deadline passed; `None` when the lease is lost.
    pub async fn renew_saga(&self, lease: &Lease, lease_ms: i64) -> Result<Option<Renewed>> {
        let row = sqlx::query(self.saga_sql().renew)
            .bind(&lease.gid)
            .bind(&lease.owner)
            .bind(lease.version)
            .bind(lease_ms)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(renewed_of).transpose()
    }

    /// Records one group's outcomes and applies `then`, in one database transaction fenced
    /// by the lease: when the lease is lost, nothing is written, branch rows included.
    /// `Then::Continue` and `Then::Compensate` renew the lease for `lease_ms`.
    pub async fn record_saga_group(
        &self,
        lease: &Lease,
        outcomes: &[(u32, StepOutcome)],
        then: &Then,
        lease_ms: i64,
    ) -> Result<Recorded> {
        let sql = self.saga_sql();
        let mut tx = self.write_tx().await?;
        for (branch_id, outcome) in outcomes {
            let statement = match outcome {
                StepOutcome::Done(_) => sql.step_done,
                StepOutcome::Refused(_) | StepOutcome::Failed { .. } => sql.step_failed,
            };
            let query = sqlx::query(statement)
                .bind(&lease.gid)
                .bind(i64::from(*branch_id));
            let query = match outcome {
                StepOutcome::Done(status) => query.bind(status.as_str()),
                // A refusal is final: no retry time.
                StepOutcome::Refused(reason) => {
                    query.bind(format!("refused: {reason}")).bind(None::<i64>)
                }
                StepOutcome::Failed { error, retry_in_ms } => {
                    query.bind(error.as_str()).bind(Some(*retry_in_ms))
                }
            };
            query.execute(&mut *tx).await?;
        }
        let recorded = match then {
            Then::Continue => sqlx::query(sql.renew)
                .bind(&lease.gid)
                .bind(&lease.owner)
                .bind(lease.version)
                .bind(lease_ms)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| renewed_of(&row).map(Recorded::Holding))
                .transpose()?,
            Then::Compensate { reason } => sqlx::query(sql.compensate)
                .bind(&lease.gid)
                .bind(&lease.owner)
                .bind(lease.version)
                .bind(reason.as_str())
                .bind(lease_ms)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| renewed_of(&row).map(Recorded::Holding))
                .transpose()?,
            Then::Retry {
                retry_in_ms,
                escalation,
            } => sqlx::query(sql.reschedule)
                .bind(&lease.gid)
                .bind(&lease.owner)
                .bind(lease.version)
                .bind(*retry_in_ms)
                .bind(escalation.after_attempts)
                .bind(escalation.after_ms)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| -> Result<Recorded> {
                    Ok(Recorded::Rescheduled {
                        status: rows::status(&row)?,
                        attempts: row.try_get("attempts")?,
                        needs_attention: rows::flag(&row, "needs_attention")?,
                    })
                })
                .transpose()?,
            Then::Commit => {
                let (from, to, unfinished) =
                    (Status::Running, Status::Committed, BranchStatus::Pending);
                finish(&mut tx, sql, lease, from, to, unfinished).await?
            }
            Then::Abort => {
                let (from, to, unfinished) = (
                    Status::Compensating,
                    Status::Aborted,
                    BranchStatus::Executed,
                );
                finish(&mut tx, sql, lease, from, to, unfinished).await?
            }
        };
        match recorded {
            Some(recorded) => {
                tx.commit().await?;
                Ok(recorded)
            }
            None => {
                tx.rollback().await?;
                Ok(Recorded::LostLease)
            }
        }
    }
}

/// The fenced final write. Its NOT EXISTS clause is the last guard against finishing too
/// early: no step may be left `unfinished` (pending on commit, executed on abort).
async fn finish(
    tx: &mut sqlx::Transaction<'static, Any>,
    sql: &Sql,
    lease: &Lease,
    from: Status,
    to: Status,
    unfinished: BranchStatus,
) -> Result<Option<Recorded>> {
    let done = sqlx::query(sql.finish)
        .bind(&lease.gid)
        .bind(&lease.owner)
        .bind(lease.version)
        .bind(to.as_str())
        .bind(from.as_str())
        .bind(unfinished.as_str())
        .execute(&mut **tx)
        .await?;
    Ok((done.rows_affected() == 1).then_some(Recorded::Finished(to)))
}

fn renewed_of(row: &AnyRow) -> Result<Renewed> {
    Ok(Renewed {
        status: rows::status(row)?,
        deadline_passed: rows::flag(row, "deadline_passed")?,
    })
}

fn step_from_row(row: &AnyRow) -> Result<Step> {
    let group: i64 = row.try_get("step_group")?;
    let compensation: Option<Vec<u8>> = row.try_get("compensation_payload")?;
    Ok(Step {
        branch: rows::branch(row)?,
        compensation: compensation.map(Bytes::from),
        group: u32::try_from(group).map_err(|_| rows::corrupt("step group", &group.to_string()))?,
    })
}
