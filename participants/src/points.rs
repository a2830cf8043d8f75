//! The points service: usable points, points frozen by a pending points payment, and points
//! pending from a reward that has not committed yet.
//!
//! `pay` (points-pay): Try freezes, Confirm deducts and logs, Cancel unfreezes. `reward`
//! (granted on purchase): Try stages the grant as pending, Confirm makes it usable and logs
//! it, Cancel drops it. `refund`: Try checks the points payment exists and is not refunded,
//! Confirm gives the points back and logs it. `points_log` has UNIQUE(out_trade_no, type),
//! so a replayed pay, refund or reward can never count twice. As a saga step, `refund`
//! gives the points back at once, and its compensation takes them again.
//!
//! Orders, stock and money belong to the other services.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use settle::{Barrier, Branch, Participant, participant::Error};
use sqlx::{AnyConnection, Row};

use crate::service;

/// The payload of `pay`, `reward` and `refund`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PointsMove {
    /// Whose points.
    pub user_id: i64,
    /// How many (for `refund`, the amount of the payment being refunded).
    pub points: i64,
    /// The order this belongs to.
    pub out_trade_no: String,
}

/// One points account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointsAccount {
    /// Spendable.
    pub usable: i64,
    /// Held by a pending points payment.
    pub frozen: i64,
    /// Granted by a pending purchase.
    pub pending: i64,
}

/// Sums over every account and log row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Σ usable.
    pub usable: i64,
    /// Σ frozen.
    pub frozen: i64,
    /// Σ pending.
    pub pending: i64,
    /// Σ points paid.
    pub paid: i64,
    /// Σ points refunded.
    pub refunded: i64,
    /// Σ points rewarded.
    pub rewarded: i64,
}

/// A points log row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The order.
    pub out_trade_no: String,
    /// "pay", "refund" or "reward".
    pub kind: String,
    /// Whose points.
    pub user_id: i64,
    /// How many.
    pub points: i64,
}

/// The points participant.
#[derive(Debug)]
pub struct Points {
    barrier: Barrier,
}

impl Points {
    /// Opens (and migrates) the points database at `url`.
    pub async fn open(url: &str) -> Result<Arc<Points>, service::Error> {
        let barrier = service::open(
            url,
            "points",
            sqlx::migrate!("../migrations/participants/points/sqlite"),
            sqlx::migrate!("../migrations/participants/points/postgres"),
        )
        .await?;
        Ok(Arc::new(Points { barrier }))
    }

    /// The barrier (and database) to serve with.
    pub fn barrier(&self) -> Barrier {
        self.barrier.clone()
    }

    /// Opens points accounts for `users`, each with `usable` points.
    pub async fn open_accounts(&self, users: &[i64], usable: i64) -> Result<(), service::Error> {
        let rows: Vec<Vec<i64>> = users.iter().map(|u| vec![*u, usable]).collect();
        service::insert_many(
            &self.barrier,
            "INSERT INTO points_account (user_id, usable)",
            2,
            &rows,
        )
        .await
    }

    /// One account.
    pub async fn account(&self, user_id: i64) -> Result<Option<PointsAccount>, sqlx::Error> {
        let row =
            sqlx::query("SELECT usable, frozen, pending FROM points_account WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(self.barrier.database().pool())
                .await?;
        row.map(|row| {
            Ok(PointsAccount {
                usable: row.try_get("usable")?,
                frozen: row.try_get("frozen")?,
                pending: row.try_get("pending")?,
            })
        })
        .transpose()
    }

    /// Sums over accounts and logs.
    pub async fn totals(&self) -> Result<Totals, sqlx::Error> {
        let pool = self.barrier.database().pool();
        let accounts = sqlx::query(
            "SELECT CAST(COALESCE(SUM(usable), 0) AS BIGINT) AS usable, \
                    CAST(COALESCE(SUM(frozen), 0) AS BIGINT) AS frozen, \
                    CAST(COALESCE(SUM(pending), 0) AS BIGINT) AS pending FROM points_account",
        )
        .fetch_one(pool)
        .await?;
        let logs = sqlx::query(
            "SELECT CAST(COALESCE(SUM(CASE WHEN type = 'pay' THEN points ELSE 0 END), 0) AS BIGINT) AS paid, \
                    CAST(COALESCE(SUM(CASE WHEN type = 'refund' THEN points ELSE 0 END), 0) AS BIGINT) AS refunded, \
                    CAST(COALESCE(SUM(CASE WHEN type = 'reward' THEN points ELSE 0 END), 0) AS BIGINT) AS rewarded \
             FROM points_log",
        )
        .fetch_one(pool)
        .await?;
        Ok(Totals {
            usable: accounts.try_get("usable")?,
            frozen: accounts.try_get("frozen")?,
            pending: accounts.try_get("pending")?,
            paid: logs.try_get("paid")?,
            refunded: logs.try_get("refunded")?,
            rewarded: logs.try_get("rewarded")?,
        })
    }

    /// Every log row.
    pub async fn log(&self) -> Result<Vec<LogEntry>, sqlx::Error> {
        let rows = sqlx::query("SELECT out_trade_no, type, user_id, points FROM points_log")
            .fetch_all(self.barrier.database().pool())
            .await?;
        rows.iter()
            .map(|row| {
                Ok(LogEntry {
                    out_trade_no: row.try_get("out_trade_no")?,
                    kind: row.try_get("type")?,
                    user_id: row.try_get("user_id")?,
                    points: row.try_get("points")?,
                })
            })
            .collect()
    }
}

fn points_move(branch: &Branch) -> Result<PointsMove, Error> {
    let m: PointsMove = branch.json()?;
    if m.points <= 0 {
        return Err(Error::BadPayload(format!(
            "points must be positive, got {}",
            m.points
        )));
    }
    Ok(m)
}

async fn update(conn: &mut AnyConnection, sql: &'static str, m: &PointsMove) -> Result<u64, Error> {
    let done = sqlx::query(sql)
        .bind(m.points)
        .bind(m.user_id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// Writes the log row; returns false when it already existed (a replay).
async fn log(conn: &mut AnyConnection, kind: &str, m: &PointsMove) -> Result<bool, Error> {
    let done = sqlx::query(
        "INSERT INTO points_log (out_trade_no, type, user_id, points, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (out_trade_no, type) DO NOTHING",
    )
    .bind(&m.out_trade_no)
    .bind(kind)
    .bind(m.user_id)
    .bind(m.points)
    .bind(service::now_ms())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

fn unknown(action: &str) -> Error {
    Error::BadPayload(format!("points has no action {action:?}"))
}

impl Participant for Points {
    async fn r#try(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let m = points_move(branch)?;
        match branch.action.as_str() {
            "pay" => {
                let sql = "UPDATE points_account SET usable = usable - $1, frozen = frozen + $1 \
                           WHERE user_id = $2 AND usable >= $1";
                match update(conn, sql, &m).await? {
                    0 => Err(Error::refuse("insufficient points")),
                    _ => Ok(()),
                }
            }
            "reward" => {
                let sql = "UPDATE points_account SET pending = pending + $1 WHERE user_id = $2";
                match update(conn, sql, &m).await? {
                    0 => Err(Error::refuse(format!(
                        "no points account for user {}",
                        m.user_id
                    ))),
                    _ => Ok(()),
                }
            }
            "refund" => {
                let logged: Vec<String> = sqlx::query_scalar(
                    "SELECT type FROM points_log WHERE out_trade_no = $1 AND user_id = $2 \
                     AND (type = 'refund' OR (type = 'pay' AND points = $3))",
                )
                .bind(&m.out_trade_no)
                .bind(m.user_id)
                .bind(m.points)
                .fetch_all(conn)
                .await?;
                if !logged.iter().any(|t| t == "pay") {
                    return Err(Error::refuse(format!(
                        "no points payment of {} for {}",
                        m.points, m.out_trade_no
                    )));
                }
                if logged.iter().any(|t| t == "refund") {
                    return Err(Error::refuse(format!(
                        "{} is already refunded",
                        m.out_trade_no
                    )));
                }
                Ok(())
            }
            other => Err(unknown(other)),
        }
    }

    async fn confirm(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let m = points_move(branch)?;
        match branch.action.as_str() {
            // The log row comes first and gates the balance change, so a replay can never
            // move points without a row to show for it.
            "pay" => {
                if log(conn, "pay", &m).await? {
                    let sql = "UPDATE points_account SET frozen = frozen - $1 WHERE user_id = $2";
                    update(conn, sql, &m).await?;
                }
                Ok(())
            }
            "reward" => {
                if log(conn, "reward", &m).await? {
                    let sql = "UPDATE points_account SET pending = pending - $1, \
                               usable = usable + $1 WHERE user_id = $2";
                    update(conn, sql, &m).await?;
                }
                Ok(())
            }
            "refund" => {
                if log(conn, "refund", &m).await? {
                    update(
                        conn,
                        "UPDATE points_account SET usable = usable + $1 WHERE user_id = $2",
                        &m,
                    )
                    .await?;
                }
                Ok(())
            }
            other => Err(unknown(other)),
        }
    }

    async fn cancel(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let m = points_move(branch)?;
        let sql = match branch.action.as_str() {
            "pay" => {
                "UPDATE points_account SET usable = usable + $1, frozen = frozen - $1 WHERE user_id = $2"
            }
            "reward" => "UPDATE points_account SET pending = pending - $1 WHERE user_id = $2",
            // A refund's Try changed nothing.
            "refund" => return Ok(()),
            other => return Err(unknown(other)),
        };
        update(conn, sql, &m).await.map(drop)
    }

    async fn execute(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let m = points_move(branch)?;
        match branch.action.as_str() {
            "refund" => {
                let paid: Option<i64> = sqlx::query_scalar(
                    "SELECT points FROM points_log WHERE out_trade_no = $1 AND user_id = $2 \
                     AND type = 'pay' AND points = $3",
                )
                .bind(&m.out_trade_no)
                .bind(m.user_id)
                .bind(m.points)
                .fetch_optional(&mut *conn)
                .await?;
                if paid.is_none() {
                    return Err(Error::refuse(format!(
                        "no points payment of {} for {}",
                        m.points, m.out_trade_no
                    )));
                }
                if log(conn, "refund", &m).await? {
                    update(
                        conn,
                        "UPDATE points_account SET usable = usable + $1 WHERE user_id = $2",
                        &m,
                    )
                    .await?;
                }
                Ok(())
            }
            other => Err(unknown(other)),
        }
    }

    async fn compensate(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let m = points_move(branch)?;
        match branch.action.as_str() {
            "refund" => {
                let forgotten = sqlx::query(
                    "DELETE FROM points_log WHERE out_trade_no = $1 AND type = 'refund'",
                )
                .bind(&m.out_trade_no)
                .execute(&mut *conn)
                .await?;
                if forgotten.rows_affected() == 1 {
                    update(
                        conn,
                        "UPDATE points_account SET usable = usable - $1 WHERE user_id = $2",
                        &m,
                    )
                    .await?;
                }
                Ok(())
            }
            other => Err(unknown(other)),
        }
    }
}
