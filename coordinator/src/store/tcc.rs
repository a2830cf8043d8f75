//! The TCC writes, one request at a time: Begin with its first branches, registering a
//! branch, the commit or abort decision (with the decided transaction's branches), and the
//! record of a phase-two round. Each is one database transaction applying the rules of
//! `store/sql.rs`.
//!
//! These are what the store does when group commit is off, and what it falls back to when
//! a batch cannot say why a request was not taken; `store/batch/` carries out the same
//! writes for many requests at once with the same rules. The requests themselves
//! ([`NewTx`], [`Registration`], [`Decision`], [`Finished`]) are shared by both paths.
//! What a refusal means is decided by the store's API in `store/mod.rs`.

use sqlx::Row;

use super::{
    BranchOutcome, Decided, Escalation, Lease, Result, RoundResult, Store, rows,
    sql::{
        decide_from, escalates, finish_branches_from, finish_from, held, insert_branches_from,
        insert_tx_from, statements, take_slots_from, unless_paused,
    },
};
use crate::model::{Branch, BranchStatus, GlobalTx, Mode, Status};

statements! {
    begin = insert_tx_from!(
        "(SELECT $1 AS id, $2 AS mode, $3 AS status, $4 AS timeout_ms, $5 AS labels, \
             $6 AS branch_count, $7 AS traceparent, $8 AS began_by)"
    );
    insert_branch = insert_branches_from!(
        "(SELECT $1 AS id, $2 AS branch_id, $3 AS participant, $4 AS action, $5 AS payload)",
        ""
    );
    take_slot = take_slots_from!("(SELECT $1 AS id, 1 AS n, $2 AS max_branches)", "= $1");
    decide = decide_from!(
        "(SELECT $1 AS id, $2 AS to_status, $3 AS lease_owner, $4 AS lease_ms, \
             $5 AS abort_reason, $6 AS decided_by)",
        "= $1"
    );
    finish_branch = finish_branches_from!("(SELECT $1 AS id, $2 AS branch_id, $3 AS done)", "= $1");
    finish = finish_from!(
        "(SELECT $1 AS id, $2 AS lease_owner, $3 AS lease_version, $4 AS final_status, \
             $5 AS seen)",
        "= $1"
    );
    branch_failed = "UPDATE branch SET attempts = attempts + 1, last_error = $3, \
                         next_attempt_at = {now} + $4, updated_at = {now} \
                     WHERE branch.gid = $1 AND branch.branch_id = $2 \
                         AND branch.status = 'PENDING'";
    reschedule = concat!(
        "UPDATE global_tx SET attempts = attempts + 1, owner = NULL, lease_until = NULL, \
             next_attempt_at = ", unless_paused!("{now} + $4"), ", updated_at = {now}, \
             needs_attention = CASE WHEN ", escalates!("$5", "$6"),
        " THEN 1 ELSE needs_attention END \
         WHERE global_tx.gid = $1 AND ", held!("$2", "$3"), " \
         RETURNING attempts, needs_attention"
    );
}

/// Begin of one transaction with its first branches.
#[derive(Debug)]
pub(super) struct NewTx {
    pub gid: String,
    pub mode: Mode,
    pub status: Status,
    pub timeout_ms: i64,
    /// Serialised JSON object.
    pub labels: String,
    /// The trace context it began in, when tracing.
    pub traceparent: Option<String>,
    /// The authenticated caller that began it.
    pub began_by: Option<String>,
    /// (participant, action, payload), numbered 1, 2, … in this order.
    pub branches: Vec<(String, String, Vec<u8>)>,
}

/// A branch to add to a TRYING transaction.
#[derive(Debug)]
pub(super) struct Registration {
    pub gid: String,
    pub participant: String,
    pub action: String,
    pub payload: Vec<u8>,
    pub max_branches: i64,
}

/// A decision on one TRYING transaction: to COMMITTING (before its deadline) or ABORTING,
/// owned by `owner` for `lease_ms`.
#[derive(Debug)]
pub(super) struct Decision {
    pub gid: String,
    /// COMMITTING or ABORTING.
    pub to: Status,
    pub owner: String,
    pub lease_ms: i64,
    /// Kept for an abort.
    pub reason: Option<String>,
    /// Who decided (see `GlobalTx::decided_by`).
    pub by: Option<String>,
}

/// A round in which every branch it called succeeded.
#[derive(Debug)]
pub(super) struct Finished {
    pub lease: Lease,
    /// The branches called and their new status (CONFIRMED or CANCELLED).
    pub done: Vec<(u32, BranchStatus)>,
    /// How many branches the round read, pending or not.
    pub seen: i64,
    /// COMMITTED or ABORTED.
    pub status: Status,
}

impl Store {
    fn tcc_sql(&self) -> &'static Sql {
        Sql::for_dialect(self.dialect)
    }

    /// Inserts the transaction with its branches; `None` when the gid already exists.
    pub(super) async fn begin_one(&self, item: &NewTx) -> Result<Option<GlobalTx>> {
        let sql = self.tcc_sql();
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(sql.begin)
            .bind(item.gid.as_str())
            .bind(item.mode.as_str())
            .bind(item.status.as_str())
            .bind(item.timeout_ms)
            .bind(item.labels.as_str())
            .bind(item.branches.len() as i64)
            .bind(item.traceparent.as_deref())
            .bind(item.began_by.as_deref())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        for ((participant, action, payload), branch_id) in item.branches.iter().zip(1i64..) {
            sqlx::query(sql.insert_branch)
                .bind(item.gid.as_str())
                .bind(branch_id)
                .bind(participant.as_str())
                .bind(action.as_str())
                .bind(payload.as_slice())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Some(rows::tx(&row)?))
    }

    /// Adds the branch if the transaction is open and has room, all checked in the
    /// statement that takes the branch id; `None` when it is not.
    pub(super) async fn register_one(&self, item: &Registration) -> Result<Option<u32>> {
        let sql = self.tcc_sql();
        let mut tx = self.write_tx().await?;
        let slot = sqlx::query(sql.take_slot)
            .bind(item.gid.as_str())
            .bind(item.max_branches)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(slot) = slot else {
            tx.rollback().await?;
            return Ok(None);
        };
        let branch_id: i64 = slot.try_get("branch_count")?;
        sqlx::query(sql.insert_branch)
            .bind(item.gid.as_str())
            .bind(branch_id)
            .bind(item.participant.as_str())
            .bind(item.action.as_str())
            .bind(item.payload.as_slice())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(rows::branch_id_of(branch_id)?))
    }

    /// Makes the decision and reads the branches it decided, in one database transaction;
    /// `None` when the transaction is not decidable (or does not exist).
    pub(super) async fn decide_one(&self, item: &Decision) -> Result<Option<Decided>> {
        let sql = self.tcc_sql();
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(sql.decide)
            .bind(item.gid.as_str())
            .bind(item.to.as_str())
            .bind(item.owner.as_str())
            .bind(item.lease_ms)
            .bind(item.reason.as_deref())
            .bind(item.by.as_deref())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let version: i64 = row.try_get("version")?;
        let created_at_ms: i64 = row.try_get("created_at")?;
        let traceparent: Option<String> = row.try_get("traceparent")?;
        let branches = sqlx::query(super::Sql::for_dialect(self.dialect).branches)
            .bind(item.gid.as_str())
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(rows::branch)
            .collect::<Result<Vec<Branch>>>()?;
        tx.commit().await?;
        Ok(Some(Decided {
            lease: Lease {
                gid: item.gid.clone(),
                owner: item.owner.clone(),
                version,
            },
            created_at_ms,
            traceparent,
            branches,
        }))
    }

    /// Records a round in which every branch succeeded (without waiting for durability, see
    /// [`Store::record_round`]); answers whether the transaction finished.
    pub(super) async fn finish_one(&self, item: &Finished) -> Result<bool> {
        let sql = self.tcc_sql();
        let mut tx = self.relaxed.begin_with(self.dialect.begin_write()).await?;
        for (branch_id, status) in &item.done {
            sqlx::query(sql.finish_branch)
                .bind(item.lease.gid.as_str())
                .bind(i64::from(*branch_id))
                .bind(status.as_str())
                .execute(&mut *tx)
                .await?;
        }
        let finished = sqlx::query(sql.finish)
            .bind(item.lease.gid.as_str())
            .bind(item.lease.owner.as_str())
            .bind(item.lease.version)
            .bind(item.status.as_str())
            .bind(item.seen)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        tx.commit().await?;
        Ok(finished)
    }

    /// Records a round in which some branch failed: every outcome, then the next attempt
    /// under the lease fence, with the escalation rule applied.
    pub(super) async fn reschedule_one(
        &self,
        lease: &Lease,
        outcomes: &[(u32, BranchOutcome)],
        retry_in_ms: i64,
        escalation: Escalation,
    ) -> Result<RoundResult> {
        let sql = self.tcc_sql();
        let mut tx = self.relaxed.begin_with(self.dialect.begin_write()).await?;
        for (branch_id, outcome) in outcomes {
            let query = match outcome {
                BranchOutcome::Done(status) => sqlx::query(sql.finish_branch)
                    .bind(lease.gid.as_str())
                    .bind(i64::from(*branch_id))
                    .bind(status.as_str()),
                BranchOutcome::Failed { error, retry_in_ms } => sqlx::query(sql.branch_failed)
                    .bind(lease.gid.as_str())
                    .bind(i64::from(*branch_id))
                    .bind(error.as_str())
                    .bind(*retry_in_ms),
            };
            query.execute(&mut *tx).await?;
        }
        let row = sqlx::query(sql.reschedule)
            .bind(lease.gid.as_str())
            .bind(lease.owner.as_str())
            .bind(lease.version)
            .bind(retry_in_ms)
            .bind(escalation.after_attempts)
            .bind(escalation.after_ms)
            .fetch_optional(&mut *tx)
            .await?;
        let result = match row {
            Some(row) => RoundResult::Rescheduled {
                attempts: row.try_get("attempts")?,
                needs_attention: rows::flag(&row, "needs_attention")?,
            },
            None => RoundResult::LostLease,
        };
        tx.commit().await?;
        Ok(result)
    }
}
