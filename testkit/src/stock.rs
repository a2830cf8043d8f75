//! The stock participant, a complete Settle participant in about fifty lines: Try reserves
//! units when enough are available (one conditional UPDATE), Confirm sells them, Cancel puts
//! them back. The SDK's barrier makes duplicates and out-of-order calls harmless.
//!
//! It lives here, not in the example, so that the SDK's tests drive the very participant a
//! reader runs with `cargo run --example stock`. Serving it is left to them: the example
//! serves it on its own, each test against a coordinator of its own.

use serde::{Deserialize, Serialize};
use settle::{Barrier, Branch, Participant, db::Database, participant::Error};
use sqlx::AnyConnection;

/// The payload of every call: which item, how many.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reserve {
    pub item: String,
    pub qty: i64,
}

#[derive(Debug)]
pub struct Stock;

async fn apply(branch: &Branch, conn: &mut AnyConnection, sql: &'static str) -> Result<u64, Error> {
    let r: Reserve = branch.json()?;
    let done = sqlx::query(sql)
        .bind(r.qty)
        .bind(&r.item)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

impl Participant for Stock {
    async fn r#try(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let sql = "UPDATE stock SET available = available - $1, reserved = reserved + $1 \
                   WHERE item = $2 AND available >= $1 AND $1 > 0";
        match apply(branch, conn, sql).await? {
            0 => Err(Error::refuse("not enough stock")),
            _ => Ok(()),
        }
    }

    async fn confirm(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let sql = "UPDATE stock SET reserved = reserved - $1, sold = sold + $1 WHERE item = $2";
        apply(branch, conn, sql).await.map(drop)
    }

    async fn cancel(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let sql = "UPDATE stock SET reserved = reserved - $1, available = available + $1 \
                   WHERE item = $2";
        apply(branch, conn, sql).await.map(drop)
    }
}

/// Opens the database, creating the barrier and the stock table, and adds `seeds`.
pub async fn open(url: &str, seeds: &[(&str, i64)]) -> Result<Barrier, Box<dyn std::error::Error>> {
    let barrier = Barrier::new(Database::connect(url, 8).await?);
    barrier.migrate().await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS stock (item TEXT PRIMARY KEY, available BIGINT NOT NULL, \
         reserved BIGINT NOT NULL DEFAULT 0, sold BIGINT NOT NULL DEFAULT 0)",
    )
    .execute(barrier.database().pool())
    .await?;
    for (item, qty) in seeds {
        sqlx::query("INSERT INTO stock (item, available) VALUES ($1, $2)")
            .bind(*item)
            .bind(*qty)
            .execute(barrier.database().pool())
            .await?;
    }
    Ok(barrier)
}
