//! The points service: usable points, points frozen by a pending points payment, and points
//! pending from a reward that has not committed yet.
//!
//! `pay` (points-pay): Try freezes, Confirm deducts, Cancel unfreezes. `reward` (granted on
//! purchase): Try stages the grant as pending, Confirm makes it usable, Cancel drops it.
//! `refund`: Try checks the points payment was made and stages the points as pending,
//! Confirm makes them usable. Every Try first claims its (out_trade_no, type) row in
//! `points_log` (see `ledger`), so a replayed pay, refund or reward under another gid is
//! refused before anything is frozen or staged, and counts once; and a staged grant takes
//! its room under [`LIMIT`](crate::service::LIMIT) at Try (usable + frozen + pending stay
//! within it), so its Confirm cannot overflow. As a saga step, `refund` gives the points
//! back at once, and its compensation takes them again.
//!
//! Orders, stock and money belong to the other services.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use settle::{Barrier, Branch, Participant, participant::Error};
use sqlx::{AnyConnection, Row};

use crate::{
    ledger::{Ledger, Movement, State},
    service::{self, LIMIT},
};

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
    /// Granted by a pending purchase or refund.
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
    /// Σ points payments tried, not yet confirmed or cancelled.
    pub paying: i64,
    /// Σ rewards and refunds tried, not yet confirmed or cancelled.
    pub granting: i64,
}

/// A points log row of points moved (Trys not yet confirmed are not in it).
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
    ledger: Ledger,
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
        Ok(Arc::new(Points {
            barrier,
            ledger: Ledger::new("points_log", "points"),
        }))
    }

    /// The barrier (and database) to serve with.
    pub fn barrier(&self) -> Barrier {
        self.barrier.clone()
    }

    /// Opens points accounts for `users`, each with `usable` points (at most [`LIMIT`]).
    pub async fn open_accounts(&self, users: &[i64], usable: i64) -> Result<(), service::Error> {
        service::bounded("points", usable, 0).map_err(service::Error::Invalid)?;
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
            "SELECT CAST(COALESCE(SUM(CASE WHEN type = 'pay' AND state = 'done' THEN points ELSE 0 END), 0) AS BIGINT) AS paid, \
                    CAST(COALESCE(SUM(CASE WHEN type = 'refund' AND state = 'done' THEN points ELSE 0 END), 0) AS BIGINT) AS refunded, \
                    CAST(COALESCE(SUM(CASE WHEN type = 'reward' AND state = 'done' THEN points ELSE 0 END), 0) AS BIGINT) AS rewarded, \
                    CAST(COALESCE(SUM(CASE WHEN type = 'pay' AND state = 'held' THEN points ELSE 0 END), 0) AS BIGINT) AS paying, \
                    CAST(COALESCE(SUM(CASE WHEN type <> 'pay' AND state = 'held' THEN points ELSE 0 END), 0) AS BIGINT) AS granting \
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
            paying: logs.try_get("paying")?,
            granting: logs.try_get("granting")?,
        })
    }

    /// Every log row.
    pub async fn log(&self) -> Result<Vec<LogEntry>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT out_trade_no, type, user_id, points FROM points_log WHERE state = 'done'",
        )
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
    service::positive("points", m.points)?;
    service::name("out_trade_no", &m.out_trade_no)?;
    Ok(m)
}

fn movement(m: &PointsMove) -> Movement {
    Movement {
        user_id: m.user_id,
        amount: m.points,
    }
}

/// Runs a conditional account update with the points (`$1`) and the user (`$2`); true
/// when it changed the row.
async fn update(
    conn: &mut AnyConnection,
    sql: &'static str,
    moved: Movement,
) -> Result<bool, Error> {
    let done = sqlx::query(sql)
        .bind(moved.amount)
        .bind(moved.user_id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Why an account update that needed the account refused: it is missing, or `reason`.
async fn refusal(conn: &mut AnyConnection, user_id: i64, reason: String) -> Result<(), Error> {
    let exists: Option<i64> =
        sqlx::query_scalar("SELECT user_id FROM points_account WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(conn)
            .await?;
    Err(Error::refuse(match exists {
        None => format!("no points account for user {user_id}"),
        Some(_) => reason,
    }))
}

/// A grant tried (reward or refund): staged as pending, if the account's total stays
/// within [`LIMIT`].
const STAGE: &str = "UPDATE points_account SET pending = pending + $1 \
                     WHERE user_id = $2 AND usable + frozen + pending <= $3 - $1";
/// A grant confirmed: pending becomes usable.
const GRANT: &str = "UPDATE points_account SET pending = pending - $1, usable = usable + $1 \
                     WHERE user_id = $2";
/// A grant made at once (a saga step): usable, within the same bound.
const GRANT_AT_ONCE: &str = "UPDATE points_account SET usable = usable + $1 \
                             WHERE user_id = $2 AND usable + frozen + pending <= $3 - $1";

/// Stages (or, for a saga step, grants) `moved` within the limit, refusing when the account
/// is missing or would go over it.
async fn grant_room(
    conn: &mut AnyConnection,
    sql: &'static str,
    moved: Movement,
) -> Result<(), Error> {
    let done = sqlx::query(sql)
        .bind(moved.amount)
        .bind(moved.user_id)
        .bind(LIMIT)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 1 {
        return Ok(());
    }
    let reason = format!(
        "{} points would take the account of user {} over {LIMIT}",
        moved.amount, moved.user_id
    );
    refusal(conn, moved.user_id, reason).await
}

/// What a Confirm finds when its Try left no held row: the Try never ran here, so there is
/// nothing it could make final. Not a state a retry can fix.
fn nothing_held(kind: &str, out_trade_no: &str) -> Error {
    Error::Permanent(format!(
        "no {kind} of out_trade_no {out_trade_no} is held for this transaction"
    ))
}

fn unknown(action: &str) -> Error {
    Error::BadPayload(format!("points has no action {action:?}"))
}

impl Points {
    /// Refuses a refund of `m` unless that very points payment was made.
    async fn paid(&self, conn: &mut AnyConnection, m: &PointsMove) -> Result<(), Error> {
        match self.ledger.done(conn, "pay", &m.out_trade_no).await? {
            Some(paid) if paid == movement(m) => Ok(()),
            _ => Err(Error::refuse(format!(
                "no points payment of {} by user {} for out_trade_no {}",
                m.points, m.user_id, m.out_trade_no
            ))),
        }
    }
}

impl Participant for Points {
    async fn r#try(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let m = points_move(branch)?;
        let (otn, gid, moved) = (&m.out_trade_no, &branch.gid, movement(&m));
        match branch.action.as_str() {
            "pay" => {
                self.ledger
                    .claim(conn, "pay", otn, moved, gid, State::Held)
                    .await?;
                let sql = "UPDATE points_account SET usable = usable - $1, frozen = frozen + $1 \
                           WHERE user_id = $2 AND usable >= $1";
                if !update(conn, sql, moved).await? {
                    return refusal(conn, m.user_id, "insufficient points".to_owned()).await;
                }
                Ok(())
            }
            "reward" => {
                self.ledger
                    .claim(conn, "reward", otn, moved, gid, State::Held)
                    .await?;
                grant_room(conn, STAGE, moved).await
            }
            "refund" => {
                self.paid(conn, &m).await?;
                self.ledger
                    .claim(conn, "refund", otn, moved, gid, State::Held)
                    .await?;
                grant_room(conn, STAGE, moved).await
            }
            other => Err(unknown(other)),
        }
    }

    async fn confirm(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let m = points_move(branch)?;
        let (kind, sql) = match branch.action.as_str() {
            "pay" => (
                "pay",
                "UPDATE points_account SET frozen = frozen - $1 WHERE user_id = $2",
            ),
            "reward" => ("reward", GRANT),
            "refund" => ("refund", GRANT),
            other => return Err(unknown(other)),
        };
        let confirmed = self
            .ledger
            .confirm(conn, kind, &m.out_trade_no, &branch.gid);
        let Some(held) = confirmed.await? else {
            return Err(nothing_held(kind, &m.out_trade_no));
        };
        update(conn, sql, held).await.map(drop)
    }

    async fn cancel(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let m = points_move(branch)?;
        let (kind, sql) = match branch.action.as_str() {
            "pay" => (
                "pay",
                "UPDATE points_account SET usable = usable + $1, frozen = frozen - $1 \
                 WHERE user_id = $2",
            ),
            "reward" => (
                "reward",
                "UPDATE points_account SET pending = pending - $1 WHERE user_id = $2",
            ),
            "refund" => (
                "refund",
                "UPDATE points_account SET pending = pending - $1 WHERE user_id = $2",
            ),
            other => return Err(unknown(other)),
        };
        // No held row: the Try was refused (and rolled back) after the barrier let it in.
        let released = self
            .ledger
            .release(conn, kind, &m.out_trade_no, &branch.gid, State::Held);
        match released.await? {
            Some(held) => update(conn, sql, held).await.map(drop),
            None => Ok(()),
        }
    }

    async fn execute(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let m = points_move(branch)?;
        match branch.action.as_str() {
            // A message's step (`crate::flows::purchase_message`): the points at once.
            "reward" => {
                let (otn, gid, moved) = (&m.out_trade_no, &branch.gid, movement(&m));
                self.ledger
                    .claim(conn, "reward", otn, moved, gid, State::Done)
                    .await?;
                grant_room(conn, GRANT_AT_ONCE, moved).await
            }
            "refund" => {
                self.paid(conn, &m).await?;
                let (otn, gid, moved) = (&m.out_trade_no, &branch.gid, movement(&m));
                self.ledger
                    .claim(conn, "refund", otn, moved, gid, State::Done)
                    .await?;
                grant_room(conn, GRANT_AT_ONCE, moved).await
            }
            other => Err(unknown(other)),
        }
    }

    async fn compensate(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let m = points_move(branch)?;
        match branch.action.as_str() {
            "refund" => {
                let released =
                    self.ledger
                        .release(conn, "refund", &m.out_trade_no, &branch.gid, State::Done);
                let Some(granted) = released.await? else {
                    return Ok(());
                };
                // Take the points back; if they were spent meanwhile this is retried (and
                // escalated) until they are there again or an operator steps in.
                let sql = "UPDATE points_account SET usable = usable - $1 \
                           WHERE user_id = $2 AND usable >= $1";
                if !update(conn, sql, granted).await? {
                    return Err(Error::Failed(format!(
                        "user {} no longer has the {} points refunded",
                        granted.user_id, granted.amount
                    )));
                }
                Ok(())
            }
            other => Err(unknown(other)),
        }
    }
}
