//! The barrier (ARCHITECTURE.md, "The barrier"): an idempotency table in the participant's
//! own database that makes duplicate deliveries, a Cancel that arrives before its Try
//! (empty rollback) and a Try that arrives after its Cancel (hanging) harmless.
//!
//! [`Barrier::enter`] opens a local write transaction and inserts the `(gid, branch, op)`
//! row in it. When the call should run, it hands back a [`Guarded`] transaction for the
//! business writes; committing it commits the barrier row with them, and dropping it
//! rolls both back, so a refused or failed Try leaves no row. Concurrent Try and Cancel on
//! one branch serialise on the row's primary key, so the outcome is always one of the two
//! legal orders.
//!
//! Transactional messages use the same table: a message's local transaction writes its
//! row through [`enter_local`], and [`Barrier::local_status`] answers the coordinator's
//! `QueryPrepared` from it, first making sure that a local transaction not committed by
//! then never will.
//!
//! The guarantee holds for effects inside that local transaction only. A Try with effects
//! outside it (a message sent, another service called) must compensate those itself: when
//! such a Try fails after the outside effect, the barrier row is rolled back too, and the
//! later Cancel is treated as an empty rollback.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Any, AnyConnection, Row};

use crate::db::Database;

/// Errors from the barrier's own statements.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The participant's database failed.
    #[error("barrier database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Creating the barrier table failed.
    #[error("barrier migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub use settle_proto::Op;

/// What the barrier decided for one call.
#[derive(Debug)]
pub enum Entry {
    /// First delivery: run the business logic in this transaction, then commit it.
    Proceed(Guarded),
    /// This op already ran for this branch: answer OK without business effect.
    Duplicate,
    /// A Cancel (or Compensate) whose Try (or Execute) never ran here: answer OK without
    /// business effect. The recorded row now blocks a late Try.
    EmptyRollback,
    /// A Try (or Execute) arriving after its Cancel (or Compensate): refuse it, no effect.
    Hanging,
}

/// What the barrier rules say about one call, decided by [`admit`] inside a transaction
/// the caller holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// First delivery: the barrier row is written; run the business logic in the same
    /// transaction and commit both.
    Proceed,
    /// Already ran for this branch: nothing was written; answer OK.
    Duplicate,
    /// A rollback whose forward op never ran here: rows were written that block a late
    /// forward op; commit them and answer OK.
    EmptyRollback,
    /// A forward op after its rollback: nothing was written; refuse it.
    Hanging,
}

/// Applies the barrier rules for `op` on `(gid, branch_id)` inside the caller's write
/// transaction, which the caller commits (or rolls back, taking the barrier rows with it).
/// [`Barrier::enter`] is this with a transaction of its own; a server that commits many
/// calls together runs this for each of them in one transaction.
pub async fn admit(
    conn: &mut AnyConnection,
    op: Op,
    gid: &str,
    branch_id: u32,
) -> Result<Admission, Error> {
    let branch_id = i64::from(branch_id);
    if let Some(forward) = op.undoes() {
        // Record the forward op first: if that insert succeeds, it never ran here.
        if insert(conn, gid, branch_id, forward.as_str()).await? {
            insert(conn, gid, branch_id, op.as_str()).await?;
            return Ok(Admission::EmptyRollback);
        }
    }
    if insert(conn, gid, branch_id, op.as_str()).await? {
        return Ok(Admission::Proceed);
    }
    let blocked = match op.undone_by() {
        Some(rollback) => exists(conn, gid, branch_id, rollback.as_str()).await?,
        None => false,
    };
    Ok(if blocked {
        Admission::Hanging
    } else {
        Admission::Duplicate
    })
}

/// An open local transaction that holds the barrier row.
#[derive(Debug)]
pub struct Guarded {
    tx: sqlx::Transaction<'static, Any>,
}

impl Guarded {
    /// The connection to run business statements on.
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// Commits the business writes together with the barrier row.
    pub async fn commit(self) -> Result<(), Error> {
        Ok(self.tx.commit().await?)
    }

    /// Rolls everything back, barrier row included.
    pub async fn rollback(self) -> Result<(), Error> {
        Ok(self.tx.rollback().await?)
    }
}

const INSERT: &str = "INSERT INTO settle_barrier (gid, branch_id, op, created_at) \
                      VALUES ($1, $2, $3, $4) ON CONFLICT (gid, branch_id, op) DO NOTHING";
const EXISTS: &str = "SELECT COUNT(*) AS n FROM settle_barrier \
                      WHERE gid = $1 AND branch_id = $2 AND op = $3";
// Only branches whose phase two (or compensation) ran here are removed: while a branch has
// just its `try` (or `execute`) row, a Cancel (or Compensate) may still come, however late,
// and must find it.
// A message's rows go only once it rolled back: a committed local transaction's row may
// still be asked about, however late, and must be found.
const DELETE_OLD: &str = "DELETE FROM settle_barrier WHERE (gid, branch_id) IN \
                          (SELECT gid, branch_id FROM settle_barrier \
                           WHERE op IN ('confirm', 'cancel', 'compensate', 'message_rollback') \
                               AND created_at < $1 \
                           LIMIT $2)";

/// The branch id of a message's own rows: steps are 1, 2, …
const MESSAGE_BRANCH: i64 = 0;
/// The row a message's local transaction writes: committed, it is the proof that the
/// message is to be delivered.
const LOCAL: &str = "message";
/// Written beside [`LOCAL`] when the local transaction had not committed by the time it was
/// asked about (or it failed): from then on its [`LOCAL`] insert conflicts, so it never
/// commits.
const ROLLED_BACK: &str = "message_rollback";

/// What the barrier says when a message's local transaction starts ([`enter_local`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalEntry {
    /// The row is written in the caller's transaction: run the business writes, commit.
    Proceed,
    /// This local transaction already committed (the message is being repeated): do not
    /// run it again.
    Committed,
    /// The message was rolled back (its service answered so, or an earlier attempt
    /// failed): the local transaction must not commit.
    RolledBack,
}

/// Where a message's local transaction stands, as `QueryPrepared` answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalStatus {
    /// It committed.
    Committed,
    /// It did not, and can no longer.
    RolledBack,
}

/// Whether the barrier row of message `gid` is still there in the caller's transaction
/// that [`enter_local`] entered: an error when the database aborted that transaction.
pub async fn entered_local(conn: &mut AnyConnection, gid: &str) -> Result<bool, Error> {
    exists(conn, gid, MESSAGE_BRANCH, LOCAL).await
}

/// Writes the barrier row of message `gid` inside the caller's write transaction, which
/// then holds the business writes of the message's local transaction: they commit
/// together, or not at all. A concurrent [`Barrier::local_status`] waits for this
/// transaction on the row's key.
pub async fn enter_local(conn: &mut AnyConnection, gid: &str) -> Result<LocalEntry, Error> {
    if insert(conn, gid, MESSAGE_BRANCH, LOCAL).await? {
        return Ok(LocalEntry::Proceed);
    }
    Ok(if exists(conn, gid, MESSAGE_BRANCH, ROLLED_BACK).await? {
        LocalEntry::RolledBack
    } else {
        LocalEntry::Committed
    })
}

/// The barrier table of one participant database.
#[derive(Debug, Clone)]
pub struct Barrier {
    db: Database,
}

impl Barrier {
    /// A barrier in `db`. Call [`Barrier::migrate`] once at start-up.
    pub fn new(db: Database) -> Barrier {
        Barrier { db }
    }

    /// Creates the `settle_barrier` table if needed. It keeps its own migration history
    /// (`_settle_barrier_migrations`), so it lives beside the participant's own migrations.
    pub async fn migrate(&self) -> Result<(), Error> {
        let mut migrator = match self.db.dialect() {
            crate::db::Dialect::Sqlite => sqlx::migrate!("migrations/participants/barrier/sqlite"),
            crate::db::Dialect::Postgres => {
                sqlx::migrate!("migrations/participants/barrier/postgres")
            }
        };
        migrator.dangerous_set_table_name("_settle_barrier_migrations");
        migrator.run(self.db.pool()).await?;
        Ok(())
    }

    /// The database the barrier lives in.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Opens a local write transaction and applies the barrier rules for `op` on
    /// `(gid, branch_id)`.
    pub async fn enter(&self, op: Op, gid: &str, branch_id: u32) -> Result<Entry, Error> {
        let mut tx = self.db.begin_write().await?;
        Ok(match admit(&mut tx, op, gid, branch_id).await? {
            Admission::Proceed => Entry::Proceed(Guarded { tx }),
            Admission::EmptyRollback => {
                tx.commit().await?;
                Entry::EmptyRollback
            }
            Admission::Duplicate => {
                tx.rollback().await?;
                Entry::Duplicate
            }
            Admission::Hanging => {
                tx.rollback().await?;
                Entry::Hanging
            }
        })
    }

    /// Whether the local transaction of message `gid` committed. When it did not, the rows
    /// that keep it from ever committing are written first, in one transaction: the
    /// answer cannot be overtaken by a late commit. A local transaction still open waits
    /// this out on the row's key, or this waits for it.
    pub async fn local_status(&self, gid: &str) -> Result<LocalStatus, Error> {
        let mut tx = self.db.begin_write().await?;
        if insert(&mut tx, gid, MESSAGE_BRANCH, LOCAL).await? {
            insert(&mut tx, gid, MESSAGE_BRANCH, ROLLED_BACK).await?;
            tx.commit().await?;
            return Ok(LocalStatus::RolledBack);
        }
        let rolled_back = exists(&mut tx, gid, MESSAGE_BRANCH, ROLLED_BACK).await?;
        tx.rollback().await?;
        Ok(if rolled_back {
            LocalStatus::RolledBack
        } else {
            LocalStatus::Committed
        })
    }

    /// Deletes the rows of up to `batch` finished branches — those whose Confirm, Cancel or
    /// Compensate ran here more than `age` ago; returns how many rows went. Call it until it
    /// deletes nothing. A branch with only its Try (or Execute) row is never deleted, since
    /// its phase two may still come. Keep `age` well above the longest transaction timeout:
    /// a Try delivered after its Cancel's rows are gone is no longer recognised as hanging.
    /// The rows of a saga step that executed and was never compensated stay; they are the
    /// only record that a late Compensate must undo it. So does the row of a message whose
    /// local transaction committed; a rolled-back message's rows go.
    pub async fn delete_older_than(
        &self,
        age: std::time::Duration,
        batch: u32,
    ) -> Result<u64, Error> {
        let cutoff = now_ms() - age.as_millis() as i64;
        let done = sqlx::query(DELETE_OLD)
            .bind(cutoff)
            .bind(i64::from(batch))
            .execute(self.db.pool())
            .await?;
        Ok(done.rows_affected())
    }
}

async fn insert(
    conn: &mut AnyConnection,
    gid: &str,
    branch_id: i64,
    op: &str,
) -> Result<bool, Error> {
    let done = sqlx::query(INSERT)
        .bind(gid)
        .bind(branch_id)
        .bind(op)
        .bind(now_ms())
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

async fn exists(
    conn: &mut AnyConnection,
    gid: &str,
    branch_id: i64,
    op: &str,
) -> Result<bool, Error> {
    let row = sqlx::query(EXISTS)
        .bind(gid)
        .bind(branch_id)
        .bind(op)
        .fetch_one(conn)
        .await?;
    Ok(row.try_get::<i64, _>("n")? > 0)
}

/// Barrier rows only need a clock for retention, so the participant's own is enough.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
