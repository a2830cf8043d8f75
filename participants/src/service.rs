//! What every shop service shares: opening its own database with the barrier and its own
//! migrations, the bounds every amount and quantity must keep, the wall clock for row
//! timestamps, and the setup error type.
//!
//! Business rules live in the service modules, not here.

use std::time::{SystemTime, UNIX_EPOCH};

use settle::{
    Barrier, barrier,
    db::{Database, Dialect},
    participant,
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
    /// Redis (the hot path's copy of hot SKUs' stock) failed.
    #[error(transparent)]
    Redis(#[from] crate::hot::Error),
    /// An amount or quantity out of bounds.
    #[error("{0}")]
    Invalid(String),
}

/// The largest amount, quantity, stock level or balance the shop accepts: 10^15. Sums of
/// a few such values (an account's balance, frozen and incoming money) cannot overflow an
/// `i64`, and every value is exact in a JSON client's double. The schemas check it too.
pub const LIMIT: i64 = 1_000_000_000_000_000;

/// The longest out_trade_no, campaign or SKU name, in bytes.
pub const MAX_NAME: usize = 128;

/// `value` when it lies in `1..=LIMIT`; otherwise an `INVALID_ARGUMENT` answer naming
/// `what`.
pub(crate) fn positive(what: &str, value: i64) -> Result<i64, participant::Error> {
    bounded(what, value, 1).map_err(participant::Error::BadPayload)
}

/// `value` when it lies in `min..=LIMIT`, else why not.
pub(crate) fn bounded(what: &str, value: i64, min: i64) -> Result<i64, String> {
    if (min..=LIMIT).contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "{what} must be between {min} and {LIMIT}, got {value}"
        ))
    }
}

/// `value` when it is a usable name (out_trade_no, campaign, SKU): not empty, at most
/// [`MAX_NAME`] bytes.
pub(crate) fn name<'a>(what: &str, value: &'a str) -> Result<&'a str, participant::Error> {
    if value.is_empty() || value.len() > MAX_NAME {
        return Err(participant::Error::BadPayload(format!(
            "{what} must be 1 to {MAX_NAME} bytes, got {}",
            value.len()
        )));
    }
    Ok(value)
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
