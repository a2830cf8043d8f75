//! The payment service: money accounts with a spendable balance and a frozen amount.
//!
//! `pay`: Try freezes the amount (refused when the balance is short — never negative),
//! Confirm debits it and writes the payment log, Cancel unfreezes it. `refund`: Try checks
//! that the payment exists and is not refunded, Confirm credits it back with a refund log.
//! The log's key (out_trade_no, type) makes a replayed payment or refund count once. As a
//! saga step, `refund` credits at once, and its compensation takes the credit back.
//!
//! Orders, stock and points belong to the other services.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use settle::{Barrier, Branch, Participant, participant::Error};
use sqlx::{AnyConnection, Row};

use crate::service;

/// The payload of `pay`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Charge {
    /// Payer.
    pub user_id: i64,
    /// Amount in the smallest unit.
    pub amount: i64,
    /// The order this pays for.
    pub out_trade_no: String,
}

/// The payload of `refund`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refund {
    /// The order whose payment is returned.
    pub out_trade_no: String,
}

/// One account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    /// Spendable.
    pub balance: i64,
    /// Held by pending payments.
    pub frozen: i64,
}

/// Sums over every account and log row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Σ balance.
    pub balance: i64,
    /// Σ frozen.
    pub frozen: i64,
    /// Σ payments.
    pub paid: i64,
    /// Σ refunds.
    pub refunded: i64,
}

/// A payment log row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The order.
    pub out_trade_no: String,
    /// "pay" or "refund".
    pub kind: String,
    /// Payer.
    pub user_id: i64,
    /// Amount.
    pub amount: i64,
}

/// The payment participant.
#[derive(Debug)]
pub struct Payment {
    barrier: Barrier,
}

impl Payment {
    /// Opens (and migrates) the payment database at `url`.
    pub async fn open(url: &str) -> Result<Arc<Payment>, service::Error> {
        let barrier = service::open(
            url,
            "payment",
            sqlx::migrate!("../migrations/participants/payment/sqlite"),
            sqlx::migrate!("../migrations/participants/payment/postgres"),
        )
        .await?;
        Ok(Arc::new(Payment { barrier }))
    }

    /// The barrier (and database) to serve with.
    pub fn barrier(&self) -> Barrier {
        self.barrier.clone()
    }

    /// Opens accounts for `users`, each with `balance`.
    pub async fn open_accounts(&self, users: &[i64], balance: i64) -> Result<(), service::Error> {
        let rows: Vec<Vec<i64>> = users.iter().map(|u| vec![*u, balance]).collect();
        service::insert_many(
            &self.barrier,
            "INSERT INTO account (user_id, balance)",
            2,
            &rows,
        )
        .await
    }

    /// One account.
    pub async fn account(&self, user_id: i64) -> Result<Option<Account>, sqlx::Error> {
        let row = sqlx::query("SELECT balance, frozen FROM account WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(self.barrier.database().pool())
            .await?;
        row.map(|row| {
            Ok(Account {
                balance: row.try_get("balance")?,
                frozen: row.try_get("frozen")?,
            })
        })
        .transpose()
    }

    /// Sums over accounts and logs.
    pub async fn totals(&self) -> Result<Totals, sqlx::Error> {
        let pool = self.barrier.database().pool();
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(balance), 0) AS BIGINT) AS balance, \
                    CAST(COALESCE(SUM(frozen), 0) AS BIGINT) AS frozen FROM account",
        )
        .fetch_one(pool)
        .await?;
        let logs = sqlx::query(
            "SELECT CAST(COALESCE(SUM(CASE WHEN type = 'pay' THEN amount ELSE 0 END), 0) AS BIGINT) AS paid, \
                    CAST(COALESCE(SUM(CASE WHEN type = 'refund' THEN amount ELSE 0 END), 0) AS BIGINT) AS refunded \
             FROM pay_log",
        )
        .fetch_one(pool)
        .await?;
        Ok(Totals {
            balance: row.try_get("balance")?,
            frozen: row.try_get("frozen")?,
            paid: logs.try_get("paid")?,
            refunded: logs.try_get("refunded")?,
        })
    }

    /// Every log row.
    pub async fn log(&self) -> Result<Vec<LogEntry>, sqlx::Error> {
        let rows = sqlx::query("SELECT out_trade_no, type, user_id, amount FROM pay_log")
            .fetch_all(self.barrier.database().pool())
            .await?;
        rows.iter()
            .map(|row| {
                Ok(LogEntry {
                    out_trade_no: row.try_get("out_trade_no")?,
                    kind: row.try_get("type")?,
                    user_id: row.try_get("user_id")?,
                    amount: row.try_get("amount")?,
                })
            })
            .collect()
    }
}

fn charge(branch: &Branch) -> Result<Charge, Error> {
    let charge: Charge = branch.json()?;
    if charge.amount <= 0 {
        return Err(Error::BadPayload(format!(
            "amount must be positive, got {}",
            charge.amount
        )));
    }
    Ok(charge)
}

fn unknown(action: &str) -> Error {
    Error::BadPayload(format!("payment has no action {action:?}"))
}

/// Writes the refund log row and credits the payment back; only the call that wrote the
/// row credits, so a replay counts once.
async fn credit_refund(conn: &mut AnyConnection, out_trade_no: &str) -> Result<(), Error> {
    let credited = sqlx::query(
        "INSERT INTO pay_log (out_trade_no, type, user_id, amount, created_at) \
         SELECT out_trade_no, 'refund', user_id, amount, $2 FROM pay_log \
         WHERE out_trade_no = $1 AND type = 'pay' \
         ON CONFLICT (out_trade_no, type) DO NOTHING",
    )
    .bind(out_trade_no)
    .bind(service::now_ms())
    .execute(&mut *conn)
    .await?;
    if credited.rows_affected() == 1 {
        sqlx::query(
            "UPDATE account SET balance = balance + \
             (SELECT amount FROM pay_log WHERE out_trade_no = $1 AND type = 'refund') \
             WHERE user_id = (SELECT user_id FROM pay_log WHERE out_trade_no = $1 AND type = 'refund')",
        )
        .bind(out_trade_no)
        .execute(conn)
        .await?;
    }
    Ok(())
}

impl Participant for Payment {
    async fn r#try(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        match branch.action.as_str() {
            "pay" => {
                let charge = charge(branch)?;
                let frozen = sqlx::query(
                    "UPDATE account SET balance = balance - $1, frozen = frozen + $1 \
                     WHERE user_id = $2 AND balance >= $1",
                )
                .bind(charge.amount)
                .bind(charge.user_id)
                .execute(conn)
                .await?;
                if frozen.rows_affected() == 0 {
                    return Err(Error::refuse("insufficient funds"));
                }
                Ok(())
            }
            "refund" => {
                let refund: Refund = branch.json()?;
                let logged: Vec<String> =
                    sqlx::query_scalar("SELECT type FROM pay_log WHERE out_trade_no = $1")
                        .bind(&refund.out_trade_no)
                        .fetch_all(conn)
                        .await?;
                if !logged.iter().any(|t| t == "pay") {
                    return Err(Error::refuse(format!(
                        "nothing paid for {}",
                        refund.out_trade_no
                    )));
                }
                if logged.iter().any(|t| t == "refund") {
                    return Err(Error::refuse(format!(
                        "{} is already refunded",
                        refund.out_trade_no
                    )));
                }
                Ok(())
            }
            other => Err(unknown(other)),
        }
    }

    async fn confirm(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        match branch.action.as_str() {
            "pay" => {
                let charge = charge(branch)?;
                sqlx::query("UPDATE account SET frozen = frozen - $1 WHERE user_id = $2")
                    .bind(charge.amount)
                    .bind(charge.user_id)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query(
                    "INSERT INTO pay_log (out_trade_no, type, user_id, amount, created_at) \
                     VALUES ($1, 'pay', $2, $3, $4)",
                )
                .bind(&charge.out_trade_no)
                .bind(charge.user_id)
                .bind(charge.amount)
                .bind(service::now_ms())
                .execute(conn)
                .await?;
                Ok(())
            }
            "refund" => credit_refund(conn, &branch.json::<Refund>()?.out_trade_no).await,
            other => Err(unknown(other)),
        }
    }

    async fn cancel(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        match branch.action.as_str() {
            "pay" => {
                let charge = charge(branch)?;
                sqlx::query("UPDATE account SET balance = balance + $1, frozen = frozen - $1 WHERE user_id = $2")
                    .bind(charge.amount)
                    .bind(charge.user_id)
                    .execute(conn)
                    .await?;
                Ok(())
            }
            // A refund's Try changed nothing.
            "refund" => Ok(()),
            other => Err(unknown(other)),
        }
    }

    async fn execute(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        match branch.action.as_str() {
            "refund" => {
                let refund: Refund = branch.json()?;
                let paid: Option<i64> = sqlx::query_scalar(
                    "SELECT amount FROM pay_log WHERE out_trade_no = $1 AND type = 'pay'",
                )
                .bind(&refund.out_trade_no)
                .fetch_optional(&mut *conn)
                .await?;
                if paid.is_none() {
                    return Err(Error::refuse(format!(
                        "nothing paid for {}",
                        refund.out_trade_no
                    )));
                }
                credit_refund(conn, &refund.out_trade_no).await
            }
            other => Err(unknown(other)),
        }
    }

    async fn compensate(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        match branch.action.as_str() {
            "refund" => {
                let refund: Refund = branch.json()?;
                // Take the credit back, then forget the refund; if the money was spent
                // meanwhile the balance check fails and this is retried (and escalated).
                sqlx::query(
                    "UPDATE account SET balance = balance - \
                     (SELECT amount FROM pay_log WHERE out_trade_no = $1 AND type = 'refund') \
                     WHERE user_id = (SELECT user_id FROM pay_log WHERE out_trade_no = $1 AND type = 'refund')",
                )
                .bind(&refund.out_trade_no)
                .execute(&mut *conn)
                .await?;
                sqlx::query("DELETE FROM pay_log WHERE out_trade_no = $1 AND type = 'refund'")
                    .bind(&refund.out_trade_no)
                    .execute(conn)
                    .await?;
                Ok(())
            }
            other => Err(unknown(other)),
        }
    }
}
