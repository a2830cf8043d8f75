//! The TCC writes done for many requests at once by [`Group`](super::Group)s: Begin with
//! its first branches, registering branches, the commit or abort decision (which also reads
//! the decided transactions' branches for the round that follows), and the record of a
//! round in which every branch succeeded. They are the statements of `store/tcc.rs` over a
//! batch's rows instead of one request's parameters, under the same rules.
//!
//! Each batch is sent as JSON array parameters (`{json …}` in the templates), so a batch of
//! any size is the same few statements: on PostgreSQL one statement where a WITH clause can
//! write, on SQLite one transaction. A gid that appears twice in one batch of Begins or
//! decisions is written once, for its first request; the later ones answer as if they had
//! come second (Begin finds the transaction existing, a decision finds it decided), which
//! is what they would have seen one after the other. What a refusal means is the store
//! API's business; this module only carries out the batches.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use sqlx::{AnyPool, Row, any::AnyRow};

use super::Batch;
use crate::{
    model::{Branch, GlobalTx},
    store::{
        Decided, Dialect, Error, Lease, Result,
        rows::{self, Gid, hex, to_json},
        sql::{
            branch_columns, decide_from, finish_branches_from, finish_from, insert_branches_from,
            insert_tx_from, statements, take_slots_from,
        },
        tcc::{Decision, Finished, NewTx, Registration},
    },
};

/// A batch's Begins, as `insert_tx_from!` reads them.
macro_rules! begins {
    () => {
        "{json $1: id TEXT, mode TEXT, status TEXT, timeout_ms BIGINT, labels TEXT, \
             branch_count BIGINT, traceparent TEXT, began_by TEXT}"
    };
}

/// A batch's branches to insert, as `insert_branches_from!` reads them.
macro_rules! new_branches {
    () => {
        "{json $2: id TEXT, branch_id BIGINT, participant TEXT, action TEXT, payload BYTEA}"
    };
}

/// A batch's decisions, as `decide_from!` reads them.
macro_rules! decisions {
    () => {
        "{json $1: id TEXT, to_status TEXT, lease_owner TEXT, lease_ms BIGINT, \
             abort_reason TEXT, decided_by TEXT}"
    };
}

/// A batch's finished rounds, as `finish_from!` reads them.
macro_rules! rounds {
    () => {
        "{json $1: id TEXT, lease_owner TEXT, lease_version BIGINT, final_status TEXT, \
             seen BIGINT}"
    };
}

statements! {
    begin = insert_tx_from!(begins!());
    // The branches ($2: every branch of the batch) of the transactions just created ($1).
    insert_branches = insert_branches_from!(new_branches!(), " WHERE v.id {in_ids $1}");
    begin_with_branches = concat!(
        "WITH t AS (", insert_tx_from!(begins!()), "), \
         b AS (", insert_branches_from!(new_branches!(), " JOIN t ON t.gid = v.id"), ") \
         SELECT * FROM t"
    );
    take_slots = take_slots_from!(
        "{json $1: id TEXT, n BIGINT, max_branches BIGINT}",
        "{in_ids $1}"
    );
    decide = decide_from!(decisions!(), "{in_ids $1}");
    decide_with_branches = concat!(
        "WITH d AS (", decide_from!(decisions!(), "{in_ids $1}"), ") \
         SELECT d.gid AS decided_gid, d.version AS decided_version, \
             d.branch_count AS decided_branch_count, d.created_at AS decided_created_at, \
             d.traceparent AS decided_traceparent, b.gid, b.branch_id, \
             b.participant, b.action, b.payload, b.status, b.attempts, b.last_error, \
             b.next_attempt_at \
         FROM d LEFT JOIN branch b ON b.gid = d.gid AND b.gid {in_ids $1} \
         ORDER BY b.gid, b.branch_id"
    );
    branches = concat!(
        "SELECT ", branch_columns!(), " FROM branch WHERE gid {in_ids $1} \
         ORDER BY gid, branch_id"
    );
    finish_branches = finish_branches_from!(
        "{json $2: id TEXT, branch_id BIGINT, done TEXT}",
        "{in_ids $1}"
    );
    finish = finish_from!(rounds!(), "{in_ids $1}");
    finish_all = concat!(
        "WITH b AS (",
        finish_branches_from!("{json $2: id TEXT, branch_id BIGINT, done TEXT}", "{in_ids $1}"),
        ") ",
        finish_from!(rounds!(), "{in_ids $1}")
    );
}

/// Renders every batch statement now.
pub(super) fn render(dialect: Dialect) {
    Sql::for_dialect(dialect);
}

/// Where a kind of batch writes.
#[derive(Debug)]
pub(super) struct Target {
    pool: AnyPool,
    dialect: Dialect,
}

/// Inserts transactions with their branches; answers the stored row for each transaction
/// this batch created, `None` for a gid that already existed.
#[derive(Debug)]
pub(super) struct Begins(Target);

impl Begins {
    pub(super) fn new(pool: AnyPool, dialect: Dialect) -> Begins {
        Begins(Target { pool, dialect })
    }
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
            traceparent: Option<&'a str>,
            began_by: Option<&'a str>,
        }
        let sql = Sql::for_dialect(self.0.dialect);
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
                traceparent: item.traceparent.as_deref(),
                began_by: item.began_by.as_deref(),
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
        let rows = if self.0.dialect.writable_cte() {
            sqlx::query(sql.begin_with_branches)
                .bind(txs)
                .bind(branches)
                .fetch_all(&self.0.pool)
                .await?
        } else {
            let mut tx = self.0.pool.begin_with(self.0.dialect.begin_write()).await?;
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
            let begun = rows::tx(row)?;
            created.insert(begun.gid.clone(), begun);
        }
        Ok(items.iter().map(|item| created.remove(&item.gid)).collect())
    }
}

/// Adds branches, numbering each transaction's after the ones it has, in the order the
/// requests came; answers each branch's id. All of one transaction's registrations in a
/// batch are taken together or not at all: `None` means not taken here (not TRYING, past
/// its deadline, unknown, or the lot would pass the limit), and the store retries that
/// registration alone to learn which, and whether it fits by itself.
#[derive(Debug)]
pub(super) struct Registrations(Target);

impl Registrations {
    pub(super) fn new(pool: AnyPool, dialect: Dialect) -> Registrations {
        Registrations(Target { pool, dialect })
    }
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
        let sql = Sql::for_dialect(self.0.dialect);
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
        let mut tx = self.0.pool.begin_with(self.0.dialect.begin_write()).await?;
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

/// Makes decisions; answers the lease and branches of each one taken, `None` for a
/// transaction that was not TRYING (or past its deadline, for a commit) or does not exist.
#[derive(Debug)]
pub(super) struct Decisions(Target);

impl Decisions {
    pub(super) fn new(pool: AnyPool, dialect: Dialect) -> Decisions {
        Decisions(Target { pool, dialect })
    }
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
            decided_by: Option<&'a str>,
        }
        let sql = Sql::for_dialect(self.0.dialect);
        let rows: Vec<DecisionRow> = first_of_each_gid(items, |item| &item.gid)
            .into_iter()
            .map(|item| DecisionRow {
                id: &item.gid,
                to_status: item.to.as_str(),
                lease_owner: &item.owner,
                lease_ms: item.lease_ms,
                abort_reason: item.reason.as_deref(),
                decided_by: item.by.as_deref(),
            })
            .collect();
        let rows = to_json(&rows)?;
        // gid → (version, branch_count, created_at, traceparent) of each decision taken.
        let mut decided: HashMap<String, (i64, i64, i64, Option<String>)> = HashMap::new();
        let mut branches: HashMap<String, Vec<Branch>> = HashMap::new();
        if self.0.dialect.writable_cte() {
            let found = sqlx::query(sql.decide_with_branches)
                .bind(rows)
                .fetch_all(&self.0.pool)
                .await?;
            for row in &found {
                decided.insert(
                    row.try_get("decided_gid")?,
                    (
                        row.try_get("decided_version")?,
                        row.try_get("decided_branch_count")?,
                        row.try_get("decided_created_at")?,
                        row.try_get("decided_traceparent")?,
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
                .filter(|(gid, (_, count, _, _))| {
                    branches.get(*gid).map_or(0, Vec::len) < usize::try_from(*count).unwrap_or(0)
                })
                .map(|(gid, _)| Gid { id: gid.as_str() })
                .collect();
            if !short.is_empty() {
                let again = sqlx::query(sql.branches)
                    .bind(to_json(&short)?)
                    .fetch_all(&self.0.pool)
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
            let mut tx = self.0.pool.begin_with(self.0.dialect.begin_write()).await?;
            let found = sqlx::query(sql.decide)
                .bind(rows)
                .fetch_all(&mut *tx)
                .await?;
            for row in &found {
                decided.insert(
                    row.try_get("gid")?,
                    (
                        row.try_get("version")?,
                        row.try_get("branch_count")?,
                        row.try_get("created_at")?,
                        row.try_get("traceparent")?,
                    ),
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
                decided
                    .remove(&item.gid)
                    .map(|(version, _, created_at_ms, traceparent)| Decided {
                        lease: Lease {
                            gid: item.gid.clone(),
                            owner: item.owner.clone(),
                            version,
                        },
                        created_at_ms,
                        traceparent,
                        branches: branches.remove(&item.gid).unwrap_or_default(),
                    })
            })
            .collect())
    }
}

/// Records finished rounds (without waiting for durability: see `Store::record_round`):
/// the called branches' new status whatever happened to the lease, since they are facts,
/// and the final status of each transaction whose lease still holds and whose round saw
/// all of its branches. Answers whether it finished.
#[derive(Debug)]
pub(super) struct Rounds(Target);

impl Rounds {
    pub(super) fn new(pool: AnyPool, dialect: Dialect) -> Rounds {
        Rounds(Target { pool, dialect })
    }
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
        let sql = Sql::for_dialect(self.0.dialect);
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
        let finished = if self.0.dialect.writable_cte() {
            sqlx::query(sql.finish_all)
                .bind(rounds)
                .bind(done)
                .fetch_all(&self.0.pool)
                .await?
        } else {
            let mut tx = self.0.pool.begin_with(self.0.dialect.begin_write()).await?;
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
    let branch = rows::branch(row)?;
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

/// The items whose gid did not occur earlier in the batch.
fn first_of_each_gid<'a, T>(items: &'a [T], gid: impl Fn(&'a T) -> &'a str) -> Vec<&'a T> {
    let mut seen = HashSet::with_capacity(items.len());
    items.iter().filter(|item| seen.insert(gid(item))).collect()
}
