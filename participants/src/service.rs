//! What every shop service shares: opening its own database with the barrier and its own
//! migrations, the wall clock for row timestamps, and the setup error type.
//!
//! Business rules live in the service modules, not here.

use std::time::{SystemTime, UNIX_EPOCH};

use settle::{
    Barrier, barrier,
    db::{Database, Dialect},
};
use sqlx::migrate::Migrator;

/// Why a service could not be opened or served.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The service's database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The barrier could not be set up.
    #[error(transparent)]
    Barrier(#[from] barrier::Error),
    /// Serving over gRPC failed.
    #[error(transparent)]
    Serve(#[from] settle::server::Error),
}

/// Connects to `url`, creates the barrier table and applies the service's migrations, which
/// keep their own history table so that services may share one database if an operator
/// wants them to.
pub(crate) async fn open(
    url: &str,
    service: &str,
    sqlite: Migrator,
    postgres: Migrator,
) -> Result<Barrier, Error> {
    let db = Database::connect(url, 16).await?;
    let mut migrator = match db.dialect() {
        Dialect::Sqlite => sqlite,
        Dialect::Postgres => postgres,
    };
    let barrier = Barrier::new(db);
    barrier.migrate().await?;
    migrator.dangerous_set_table_name(format!("_settle_{service}_migrations"));
    migrator.run(barrier.database().pool()).await?;
    Ok(barrier)
}

/// Epoch milliseconds for row timestamps (informational only).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Inserts rows in chunks, each chunk one multi-row INSERT, all in one transaction:
/// seeding 20,000 accounts row by row would take seconds.
pub(crate) async fn insert_many(
    barrier: &Barrier,
    head: &str,
    columns: usize,
    rows: &[Vec<i64>],
) -> Result<(), Error> {
    let mut tx = barrier.database().begin_write().await?;
    for chunk in rows.chunks(500) {
        let mut sql = String::from(head);
        let mut n = 0;
        for (i, _) in chunk.iter().enumerate() {
            sql.push_str(if i == 0 { " VALUES " } else { ", " });
            sql.push('(');
            for c in 0..columns {
                n += 1;
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${n}"));
            }
            sql.push(')');
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for row in chunk {
            for value in row {
                query = query.bind(*value);
            }
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}
