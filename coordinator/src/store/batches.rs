//! The writes every TCC transaction makes, done for many transactions at once by
//! [`Group`](super::group::Group)s: Begin with its first branches, registering a branch,
//! the commit or abort decision (which also reads the decided transactions' branches for
//! the round that follows), and the record of a round in which every branch succeeded.
//!
//! Each batch is sent as JSON array parameters (`{json …}` in the templates), so a batch of
//! any size is the same few statements. A gid that appears twice in one batch of Begins or
//! decisions is written once, for its first request; the later ones answer as if they had
//! come second (Begin finds the transaction existing, a decision finds it decided), which is
//! what they would have seen one after the other. The store's single-transaction methods keep the
//! rules for what a refusal means; this module only carries out the batches.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use sqlx::{AnyPool, Row, any::AnyRow};

use super::{Decided, Dialect, Error, Lease, Result, branch_from_row, group::Batch, tx_from_row};
use crate::model::{Branch, BranchStatus, GlobalTx, Mode, Status};

// Fragments used alone (SQLite) and combined into one statement (PostgreSQL).
macro_rules! begin_sql {
    () => {
        "INSERT INTO global_tx (gid, mode, status, deadline, next_attempt_at, labels, \
             branch_count, created_at, updated_at) \
         SELECT v.id, v.mode, v.status, {now} + v.timeout_ms, {now} + v.timeout_ms, v.labels, \
             v.branch_count, {now}, {now} \
         FROM {json $1: id TEXT, mode TEXT, status TEXT, timeout_ms BIGINT, labels TEXT, \
             branch_count BIGINT} AS v \
         WHERE true \
         ON CONFLICT (gid) DO NOTHING \
         RETURNING gid, mode, status, deadline, next_attempt_at, attempts, owner, version, \
             branch_count, labels, reason, needs_attention, paused, decided_at, created_at, \
             updated_at"
    };
}

macro_rules! branches_of {
    ($rows:literal) => {
        concat!(
            "INSERT INTO branch (gid, branch_id, participant, action, payload, status, \
                 created_at, updated_at) \
             SELECT v.id, v.branch_id, v.participant, v.action, v.payload, 'PENDING', \
                 {now}, {now} \
             FROM {json $2: id TEXT, branch_id BIGINT, participant TEXT, action TEXT, \
                 payload BYTEA} AS v",
            $rows
        )
    };
}

// `status = (SELECT 'TRYING')` rather than `= 'TRYING'` in the two statements that find
// TRYING transactions by the batch's gids: from the constant, PostgreSQL can prove that the
// partial index `global_tx_due` (unfinished transactions only) applies, and when its
// statistics say few transactions are unfinished it reads that whole index instead of
// looking the gids up — a read that grows with the backlog of unfinished transactions (a
// decision for one gid: 4.4 ms with 40,000 unfinished, against 0.4 ms through the primary
// key). A subquery's value proves nothing, so the gids go through the primary key.
macro_rules! decide_sql {
    () => {
        "UPDATE global_tx SET status = v.to_status, owner = v.lease_owner, \
             version = version + 1, lease_until = {now} + v.lease_ms, \
             next_attempt_at = {now} + v.lease_ms, decided_at = {now}, \
             reason = COALESCE(v.abort_reason, reason), updated_at = {now} \
         FROM {json $1: id TEXT, to_status TEXT, lease_owner TEXT, lease_ms BIGINT, \
             abort_reason TEXT} AS v \
         WHERE global_tx.gid = v.id AND global_tx.gid {in_ids $1} \
             AND global_tx.status = (SELECT 'TRYING') \
             AND (v.to_status = 'ABORTING' OR global_tx.deadline > {now}) \
         RETURNING gid, version, branch_count"
    };
}

macro_rules! finish_branches_sql {
    () => {
        "UPDATE branch SET status = v.done, updated_at = {now}, next_attempt_at = NULL \
         FROM {json $2: id TEXT, branch_id BIGINT, done TEXT} AS v \
         WHERE branch.gid = v.id AND branch.branch_id = v.branch_id AND branch.gid {in_ids $1} \
             AND branch.status = 'PENDING'"
    };
}

// A transaction finishes only if its round saw every branch it has (`seen`): a branch the
// round did not call stays PENDING, and the transaction with it, for the next owner.
macro_rules! finish_sql {
    () => {
        "UPDATE global_tx SET status = v.final_status, owner = NULL, lease_until = NULL, \
             next_attempt_at = NULL, updated_at = {now} \
         FROM {json $1: id TEXT, lease_owner TEXT, lease_version BIGINT, final_status TEXT, \
             seen BIGINT} AS v \
         WHERE global_tx.gid = v.id AND global_tx.gid {in_ids $1} \
             AND global_tx.owner = v.lease_owner AND global_tx.version = v.lease_version \
             AND global_tx.branch_count = v.seen \
         RETURNING gid, version"
    };
}

statements! {
    begin = begin_sql!();
    // The branches ($2: every branch of the batch) of the transactions just created ($1).
    insert_branches = branches_of!(" WHERE v.id {in_ids $1}");
    begin_with_branches = concat!(
        "WITH t AS (", begin_sql!(), "), b AS (", branches_of!(" JOIN t ON t.gid = v.id"), ") \
         SELECT * FROM t"
    );
    take_slots = "UPDATE global_tx SET branch_count = branch_count + v.n, updated_at = {now} \
                  FROM {json $1: id TEXT, n BIGINT, max_branches BIGINT} AS v \
                  WHERE global_tx.gid = v.id AND global_tx.gid {in_ids $1} \
                      AND global_tx.status = (SELECT 'TRYING') \
                      AND global_tx.deadline > {now} \
                      AND global_tx.branch_count + v.n <= v.max_branches \
                  RETURNING gid, branch_count";
    decide = decide_sql!();
    decide_with_branches = concat!(
        "WITH d AS (", decide_sql!(), ") \
         SELECT d.gid AS decided_gid, d.version AS decided_version, \
             d.branch_count AS decided_branch_count, b.gid, b.branch_id, \
             b.participant, b.action, b.payload, b.status, b.attempts, b.last_error, \
             b.next_attempt_at \
         FROM d LEFT JOIN branch b ON b.gid = d.gid AND b.gid {in_ids $1} \
         ORDER BY b.gid, b.branch_id"
    );
    branches = "SELECT gid, branch_id, participant, action, payload, status, attempts, \
                    last_error, next_attempt_at \
                FROM branch WHERE gid {in_ids $1} \
                ORDER BY gid, branch_id";
    finish_branches = finish_branches_sql!();
    finish = finish_sql!();
    finish_all = concat!("WITH b AS (", finish_branches_sql!(), ") ", finish_sql!());
}

/// Renders every batch statement now, so that a template mistake stops the start-up
/// instead of a batch.
pub(super) fn render(dialect: Dialect) {
    Sql::for_dialect(dialect);
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
    /// (participant, action, payload), numbered 1, 2, … in this order.
    pub branches: Vec<(String, String, Vec<u8>)>,
}

/// Inserts transactions with their branches; answers the stored row for each transaction
/// this batch created, `None` for a gid that already existed.
#[derive(Debug)]
pub(super) struct Begins {
    pub pool: AnyPool,
    pub dialect: Dialect,
}

impl Batch for Begins {
    type Item = NewTx;
    type Output = Option<GlobalTx>;

    async fn run(&self, items: &[NewTx]) -> Result<Vec<Option<GlobalTx>>> {
        #[derive(Serialize)]
        struct TxRow<'a> {
            id: &'a str,
            mode: &'a str,
            status: &'a str,
            timeout_ms: i64,
            labels: &'a str,
            branch_count: usize,
        }
        let sql = Sql::for_dialect(self.dialect);
        let firsts = first_of_each_gid(items, |item| &item.gid);
        let txs: Vec<TxRow> = firsts
            .iter()
            .map(|item| TxRow {
                id: &item.gid,
                mode: item.mode.as_str(),
                status: item.status.as_str(),
                timeout_ms: item.timeout_ms,
                labels: &item.labels,
                branch_count: item.branches.len(),
            })
            .collect();
        let branches: Vec<BranchRow> = firsts
            .iter()
            .flat_map(|item| {
                item.branches
                    .iter()
                    .zip(1..)
                    .map(|(branch, branch_id)| BranchRow {
                        id: &item.gid,
                        branch_id,
                        participant: &branch.0,
                        action: &branch.1,
                        payload: hex(&branch.2),
                    })
            })
            .collect();
        let (txs, branches) = (to_json(&txs)?, to_json(&branches)?);
        let rows = if self.dialect.writable_cte() {
            sqlx::query(sql.begin_with_branches)
                .bind(txs)
                .bind(branches)
                .fetch_all(&self.pool)
                .await?
        } else {
            let mut tx = self.pool.begin_with(self.dialect.begin_write()).await?;
            let rows = sqlx::query(sql.begin).bind(txs).fetch_all(&mut *tx).await?;
            if !rows.is_empty() {
                let created: Vec<Gid<String>> = rows
                    .iter()
                    .map(|row| row.try_get("gid").map(|id| Gid { id }))
                    .collect::<Result<_, _>>()?;
                sqlx::query(sql.insert_branches)
                    .bind(to_json(&created)?)
                    .bind(branches)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            rows
        };
        let mut created = HashMap::with_capacity(rows.len());
        for row in &rows {
            let begun = tx_from_row(row)?;
            created.insert(begun.gid.clone(), begun);
        }
        Ok(items.iter().map(|item| created.remove(&item.gid)).collect())
    }
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

/// Adds branches, numbering each transaction's after the ones it has, in the order the
/// requests came; answers each branch's id. All of one transaction's registrations in a
/// batch are taken together or not at all: `None` means not taken here (not TRYING, past
/// its deadline, unknown, or the lot would pass the limit), and the store retries that
/// registration alone to learn which, and whether it fits by itself.
#[derive(Debug)]
pub(super) struct Registrations {
    pub pool: AnyPool,
    pub dialect: Dialect,
}

impl Batch for Registrations {
    type Item = Registration;
    type Output = Option<u32>;

    async fn run(&self, items: &[Registration]) -> Result<Vec<Option<u32>>> {
        #[derive(Serialize)]
        struct SlotRow<'a> {
            id: &'a str,
            n: i64,
            max_branches: i64,
        }
        let sql = Sql::for_dialect(self.dialect);
        let mut wanted: Vec<SlotRow> = Vec::new();
        for item in items {
            match wanted.iter_mut().find(|row| row.id == item.gid) {
                Some(row) => row.n += 1,
                None => wanted.push(SlotRow {
                    id: &item.gid,
                    n: 1,
                    max_branches: item.max_branches,
                }),
            }
        }
        let mut tx = self.pool.begin_with(self.dialect.begin_write()).await?;
        let taken = sqlx::query(sql.take_slots)
            .bind(to_json(&wanted)?)
            .fetch_all(&mut *tx)
            .await?;
        // The next free id of each transaction that took its slots.
        let mut next: HashMap<String, i64> = HashMap::with_capacity(taken.len());
        for row in &taken {
            let gid: String = row.try_get("gid")?;
            let count: i64 = row.try_get("branch_count")?;
            let n = wanted.iter().find(|w| w.id == gid).map_or(0, |w| w.n);
            next.insert(gid, count - n + 1);
        }
        let mut ids = Vec::with_capacity(items.len());
        let mut rows = Vec::with_capacity(items.len());
        for item in items {
            let id = next.get_mut(&item.gid).map(|next| {
                *next += 1;
                *next - 1
            });
            if let Some(branch_id) = id {
                rows.push(BranchRow {
                    id: &item.gid,
                    branch_id,
                    participant: &item.participant,
                    action: &item.action,
                    payload: hex(&item.payload),
                });
            }
            ids.push(id);
        }
        if !rows.is_empty() {
            let gids: Vec<Gid<&str>> = next.keys().map(|id| Gid { id: id.as_str() }).collect();
            sqlx::query(sql.insert_branches)
                .bind(to_json(&gids)?)
                .bind(to_json(&rows)?)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        ids.into_iter()
            .map(|id| {
                id.map(|id| {
                    u32::try_from(id)
                        .map_err(|_| Error::Corrupt(format!("branch id {id} out of range")))
                })
                .transpose()
            })
            .collect()
    }
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
}

/// Makes decisions; answers the lease and branches of each one taken, `None` for a
/// transaction that was not TRYING (or past its deadline, for a commit) or does not exist.
#[derive(Debug)]
pub(super) struct Decisions {
    pub pool: AnyPool,
    pub dialect: Dialect,
}

impl Batch for Decisions {
    type Item = Decision;
    type Output = Option<Decided>;

    async fn run(&self, items: &[Decision]) -> Result<Vec<Option<Decided>>> {
        #[derive(Serialize)]
        struct DecisionRow<'a> {
            id: &'a str,
            to_status: &'a str,
            lease_owner: &'a str,
            lease_ms: i64,
            abort_reason: Option<&'a str>,
        }
        let sql = Sql::for_dialect(self.dialect);
        let rows: Vec<DecisionRow> = first_of_each_gid(items, |item| &item.gid)
            .into_iter()
            .map(|item| DecisionRow {
                id: &item.gid,
                to_status: item.to.as_str(),
                lease_owner: &item.owner,
                lease_ms: item.lease_ms,
                abort_reason: item.reason.as_deref(),
            })
            .collect();
        let rows = to_json(&rows)?;
        // gid → (version, branch_count) of each decision taken.
        let mut decided: HashMap<String, (i64, i64)> = HashMap::new();
        let mut branches: HashMap<String, Vec<Branch>> = HashMap::new();
        if self.dialect.writable_cte() {
            let found = sqlx::query(sql.decide_with_branches)
                .bind(rows)
                .fetch_all(&self.pool)
                .await?;
            for row in &found {
                decided.insert(
                    row.try_get("decided_gid")?,
                    (
                        row.try_get("decided_version")?,
                        row.try_get("decided_branch_count")?,
                    ),
                );
                // A transaction without branches comes as one row of NULLs.
                if row.try_get::<Option<i64>, _>("branch_id")?.is_some() {
                    add_branch(&mut branches, row)?;
                }
            }
            // The join reads the snapshot the statement started with, while the decision
            // itself may have waited for a registration to commit: then the count is
            // newer than the rows, and a fresh read has them all.
            let short: Vec<Gid<&str>> = decided
                .iter()
                .filter(|(gid, (_, count))| {
                    branches.get(*gid).map_or(0, Vec::len) < usize::try_from(*count).unwrap_or(0)
                })
                .map(|(gid, _)| Gid { id: gid.as_str() })
                .collect();
            if !short.is_empty() {
                let again = sqlx::query(sql.branches)
                    .bind(to_json(&short)?)
                    .fetch_all(&self.pool)
                    .await?;
                for gid in &short {
                    branches.remove(gid.id);
                }
                for row in &again {
                    add_branch(&mut branches, row)?;
                }
            }
        } else {
            // One transaction, so that a failed read cannot leave decisions taken that no
            // caller knows it took.
            let mut tx = self.pool.begin_with(self.dialect.begin_write()).await?;
            let found = sqlx::query(sql.decide)
                .bind(rows)
                .fetch_all(&mut *tx)
                .await?;
            for row in &found {
                decided.insert(
                    row.try_get("gid")?,
                    (row.try_get("version")?, row.try_get("branch_count")?),
                );
            }
            if !decided.is_empty() {
                let gids: Vec<Gid<&str>> =
                    decided.keys().map(|id| Gid { id: id.as_str() }).collect();
                let rows = sqlx::query(sql.branches)
                    .bind(to_json(&gids)?)
                    .fetch_all(&mut *tx)
                    .await?;
                for row in &rows {
                    add_branch(&mut branches, row)?;
                }
            }
            tx.commit().await?;
        }
        Ok(items
            .iter()
            .map(|item| {
                decided.remove(&item.gid).map(|(version, _)| Decided {
                    lease: Lease {
                        gid: item.gid.clone(),
                        owner: item.owner.clone(),
                        version,
                    },
                    branches: branches.remove(&item.gid).unwrap_or_default(),
                })
            })
            .collect())
    }
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

/// Records finished rounds (without waiting for durability: see `Store::record_round`):
/// the called branches' new status whatever happened to the lease, since they are facts,
/// and the final status of each transaction whose lease still holds and whose round saw
/// all of its branches. Answers whether it finished.
#[derive(Debug)]
pub(super) struct Rounds {
    pub pool: AnyPool,
    pub dialect: Dialect,
}

impl Batch for Rounds {
    type Item = Finished;
    type Output = bool;

    async fn run(&self, items: &[Finished]) -> Result<Vec<bool>> {
        #[derive(Serialize)]
        struct RoundRow<'a> {
            id: &'a str,
            lease_owner: &'a str,
            lease_version: i64,
            final_status: &'a str,
            seen: i64,
        }
        #[derive(Serialize)]
        struct DoneRow<'a> {
            id: &'a str,
            branch_id: u32,
            done: &'a str,
        }
        let sql = Sql::for_dialect(self.dialect);
        // No gid is skipped here: two rounds of one transaction carry different leases
        // (a late one of a previous owner, say), and the fence lets at most one finish.
        let rounds: Vec<RoundRow> = items
            .iter()
            .map(|item| RoundRow {
                id: &item.lease.gid,
                lease_owner: &item.lease.owner,
                lease_version: item.lease.version,
                final_status: item.status.as_str(),
                seen: item.seen,
            })
            .collect();
        let done: Vec<DoneRow> = items
            .iter()
            .flat_map(|item| {
                item.done.iter().map(|(branch_id, status)| DoneRow {
                    id: &item.lease.gid,
                    branch_id: *branch_id,
                    done: status.as_str(),
                })
            })
            .collect();
        let (rounds, done) = (to_json(&rounds)?, to_json(&done)?);
        let finished = if self.dialect.writable_cte() {
            sqlx::query(sql.finish_all)
                .bind(rounds)
                .bind(done)
                .fetch_all(&self.pool)
                .await?
        } else {
            let mut tx = self.pool.begin_with(self.dialect.begin_write()).await?;
            sqlx::query(sql.finish_branches)
                .bind(rounds.clone())
                .bind(done)
                .execute(&mut *tx)
                .await?;
            let finished = sqlx::query(sql.finish)
                .bind(rounds)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            finished
        };
        let mut finished: HashSet<(String, i64)> = finished
            .iter()
            .map(|row| Ok((row.try_get("gid")?, row.try_get("version")?)))
            .collect::<Result<_>>()?;
        Ok(items
            .iter()
            .map(|item| finished.remove(&(item.lease.gid.clone(), item.lease.version)))
            .collect())
    }
}

/// Adds the branch in `row` to its transaction's list.
fn add_branch(branches: &mut HashMap<String, Vec<Branch>>, row: &AnyRow) -> Result<()> {
    let branch = branch_from_row(row)?;
    branches.entry(branch.gid.clone()).or_default().push(branch);
    Ok(())
}

/// A JSON row of a branch to insert (`insert_branches`, `begin_with_branches`).
#[derive(Serialize)]
struct BranchRow<'a> {
    id: &'a str,
    branch_id: i64,
    participant: &'a str,
    action: &'a str,
    /// Hex.
    payload: String,
}

/// A JSON row naming one transaction.
#[derive(Serialize)]
pub(super) struct Gid<S> {
    pub id: S,
}

/// The items whose gid did not occur earlier in the batch.
fn first_of_each_gid<'a, T>(items: &'a [T], gid: impl Fn(&'a T) -> &'a str) -> Vec<&'a T> {
    let mut seen = HashSet::with_capacity(items.len());
    items.iter().filter(|item| seen.insert(gid(item))).collect()
}

pub(super) fn to_json<T: Serialize>(rows: &T) -> Result<String> {
    serde_json::to_string(rows).map_err(|e| Error::Corrupt(format!("batch not serialisable: {e}")))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}
