//! The payment service: money accounts with a spendable balance, the money frozen by
//! payments tried, and the money incoming from refunds tried.
//!
//! `pay`: Try claims the out_trade_no in the payment log and freezes the amount (refused
//! when the account is missing or its balance short — never negative), Confirm debits it,
//! Cancel unfreezes it. `refund`: Try checks that the payment was made, claims its refund
//! and reserves room for the credit under [`LIMIT`](crate::service::LIMIT); Confirm
//! credits it. The log's key (out_trade_no, type) is taken at Try (see `ledger`), so a
//! replayed payment or refund under another gid is refused before anything is frozen, and
//! counts once. As a saga step, `refund` credits at once, and its compensation takes the
//! credit back.
//!
//! Orders, stock and points belong to the other services.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use settle::{Barrier, Branch, Participant, participant::Error};
use sqlx::{AnyConnection, Row};

use crate::{
    ledger::{Ledger, Movement, State},
    service::{self, LIMIT},
};

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
    /// Due from pending refunds.
    pub incoming: i64,
}

/// Sums over every account and log row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Σ balance.
    pub balance: i64,
    /// Σ frozen.
    pub frozen: i64,
    /// Σ incoming.
    pub incoming: i64,
    /// Σ payments made.
    pub paid: i64,
    /// Σ refunds made.
    pub refunded: i64,
    /// Σ payments tried, not yet confirmed or cancelled.
    pub paying: i64,
    /// Σ refunds tried, not yet confirmed or cancelled.
    pub refunding: i64,
}

/// A payment log row of money moved (Trys not yet confirmed are not in it).
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
    ledger: Ledger,
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
        Ok(Arc::new(Payment {
            barrier,
            ledger: Ledger::new("pay_log", "amount"),
        }))
    }

    /// The barrier (and database) to serve with.
    pub fn barrier(&self) -> Barrier {
        self.barrier.clone()
    }

    /// Opens accounts for `users`, each with `balance` (at most [`LIMIT`]).
    pub async fn open_accounts(&self, users: &[i64], balance: i64) -> Result<(), service::Error> {
        service::bounded("balance", balance, 0).map_err(service::Error::Invalid)?;
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
        let row = sqlx::query("SELECT balance, frozen, incoming FROM account WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(self.barrier.database().pool())
            .await?;
        row.map(|row| {
            Ok(Account {
                balance: row.try_get("balance")?,
                frozen: row.try_get("frozen")?,
                incoming: row.try_get("incoming")?,
            })
        })
        .transpose()
    }

    /// Sums over accounts and logs.
    pub async fn totals(&self) -> Result<Totals, sqlx::Error> {
        let pool = self.barrier.database().pool();
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(balance), 0) AS BIGINT) AS balance, \
                    CAST(COALESCE(SUM(frozen), 0) AS BIGINT) AS frozen, \
                    CAST(COALESCE(SUM(incoming), 0) AS BIGINT) AS incoming FROM account",
        )
        .fetch_one(pool)
        .await?;
        let logs = sqlx::query(
            "SELECT CAST(COALESCE(SUM(CASE WHEN type = 'pay' AND state = 'done' THEN amount ELSE 0 END), 0) AS BIGINT) AS paid, \
                    CAST(COALESCE(SUM(CASE WHEN type = 'refund' AND state = 'done' THEN amount ELSE 0 END), 0) AS BIGINT) AS refunded, \
                    CAST(COALESCE(SUM(CASE WHEN type = 'pay' AND state = 'held' THEN amount ELSE 0 END), 0) AS BIGINT) AS paying, \
                    CAST(COALESCE(SUM(CASE WHEN type = 'refund' AND state = 'held' THEN amount ELSE 0 END), 0) AS BIGINT) AS refunding \
             FROM pay_log",
        )
        .fetch_one(pool)
        .await?;
        Ok(Totals {
            balance: row.try_get("balance")?,
            frozen: row.try_get("frozen")?,
            incoming: row.try_get("incoming")?,
            paid: logs.try_get("paid")?,
            refunded: logs.try_get("refunded")?,
            paying: logs.try_get("paying")?,
            refunding: logs.try_get("refunding")?,
        })
    }

    /// Every log row.
    pub async fn log(&self) -> Result<Vec<LogEntry>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT out_trade_no, type, user_id, amount FROM pay_log WHERE state = 'done'",
        )
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
    service::positive("amount", charge.amount)?;
    service::name("out_trade_no", &charge.out_trade_no)?;
    Ok(charge)
}

fn refund(branch: &Branch) -> Result<Refund, Error> {
    let refund: Refund = branch.json()?;
    service::name("out_trade_no", &refund.out_trade_no)?;
    Ok(refund)
}

fn unknown(action: &str) -> Error {
    Error::BadPayload(format!("payment has no action {action:?}"))
}

/// What a Confirm finds when its Try left no held row: the Try never ran here, so
/// there is nothing it could make final. Not a state a retry can fix.
fn nothing_held(kind: &str, out_trade_no: &str) -> Error {
    Error::Permanent(format!(
        "no {kind} of out_trade_no {out_trade_no} is held for this transaction"
    ))
}

/// Runs a conditional account update; true when it changed the row.
async fn update(
    conn: &mut AnyConnection,
    sql: &'static str,
    amount: i64,
    user_id: i64,
) -> Result<bool, Error> {
    let done = sqlx::query(sql)
        .bind(amount)
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Why an account update that needed the account refused: it is missing, or `reason`.
async fn refusal(conn: &mut AnyConnection, user_id: i64, reason: String) -> Result<(), Error> {
    let exists: Option<i64> = sqlx::query_scalar("SELECT user_id FROM account WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(conn)
        .await?;
    Err(Error::refuse(match exists {
        None => format!("no account for user {user_id}"),
        Some(_) => reason,
    }))
}

/// A refund tried: its money is incoming, if the account's total stays within [`LIMIT`].
const CREDIT_INCOMING: &str = "UPDATE account SET incoming = incoming + $1 \
                               WHERE user_id = $2 AND balance + frozen + incoming <= $3 - $1";
/// A refund made at once (a saga step): its money is spendable, within the same bound.
const CREDIT_BALANCE: &str = "UPDATE account SET balance = balance + $1 \
                              WHERE user_id = $2 AND balance + frozen + incoming <= $3 - $1";

/// Takes room under the limit for a credit of `paid` (into `incoming` at a Try, straight
/// into the balance for a saga step), refusing when the account would go over it.
async fn make_room(
    conn: &mut AnyConnection,
    sql: &'static str,
    paid: Movement,
) -> Result<(), Error> {
    let done = sqlx::query(sql)
        .bind(paid.amount)
        .bind(paid.user_id)
        .bind(LIMIT)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 1 {
        return Ok(());
    }
    let reason = format!(
        "a refund of {} would take the account of user {} over {LIMIT}",
        paid.amount, paid.user_id
    );
    refusal(conn, paid.user_id, reason).await
}

impl Payment {
    /// The payment a refund of `out_trade_no` returns, refused when there is none.
    async fn paid(&self, conn: &mut AnyConnection, out_trade_no: &str) -> Result<Movement, Error> {
        self.ledger
            .done(conn, "pay", out_trade_no)
            .await?
            .ok_or_else(|| Error::refuse(format!("nothing paid for out_trade_no {out_trade_no}")))
    }
}

impl Participant for Payment {
    async fn r#try(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        match branch.action.as_str() {
            "pay" => {
                let charge = charge(branch)?;
                let movement = Movement {
                    user_id: charge.user_id,
                    amount: charge.amount,
                };
                let (otn, gid) = (&charge.out_trade_no, &branch.gid);
                self.ledger
                    .claim(conn, "pay", otn, movement, gid, State::Held)
                    .await?;
                let sql = "UPDATE account SET balance = balance - $1, frozen = frozen + $1 \
                           WHERE user_id = $2 AND balance >= $1";
                if !update(conn, sql, charge.amount, charge.user_id).await? {
                    let user = charge.user_id;
                    return refusal(conn, user, "insufficient funds".to_owned()).await;
                }
                Ok(())
            }
            "refund" => {
                let otn = refund(branch)?.out_trade_no;
                let paid = self.paid(conn, &otn).await?;
                self.ledger
                    .claim(conn, "refund", &otn, paid, &branch.gid, State::Held)
                    .await?;
                make_room(conn, CREDIT_INCOMING, paid).await
            }
            other => Err(unknown(other)),
        }
    }

    async fn confirm(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let (kind, otn, sql) = match branch.action.as_str() {
            "pay" => (
                "pay",
                charge(branch)?.out_trade_no,
                "UPDATE account SET frozen = frozen - $1 WHERE user_id = $2",
            ),
            "refund" => (
                "refund",
                refund(branch)?.out_trade_no,
                "UPDATE account SET incoming = incoming - $1, balance = balance + $1 \
                 WHERE user_id = $2",
            ),
            other => return Err(unknown(other)),
        };
        let Some(held) = self.ledger.confirm(conn, kind, &otn, &branch.gid).await? else {
            return Err(nothing_held(kind, &otn));
        };
        update(conn, sql, held.amount, held.user_id).await.map(drop)
    }

    async fn cancel(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let (kind, otn, sql) = match branch.action.as_str() {
            "pay" => (
                "pay",
                charge(branch)?.out_trade_no,
                "UPDATE account SET balance = balance + $1, frozen = frozen - $1 \
                 WHERE user_id = $2",
            ),
            "refund" => (
                "refund",
                refund(branch)?.out_trade_no,
                "UPDATE account SET incoming = incoming - $1 WHERE user_id = $2",
            ),
            other => return Err(unknown(other)),
        };
        // No held row: the Try was refused (and rolled back) after the barrier let it in.
        let released = self
            .ledger
            .release(conn, kind, &otn, &branch.gid, State::Held);
        match released.await? {
            Some(held) => update(conn, sql, held.amount, held.user_id).await.map(drop),
            None => Ok(()),
        }
    }

    async fn execute(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        match branch.action.as_str() {
            // A message's step (`crate::flows::purchase_message`): the debit at once. A
            // message cannot be refused, so a buyer short of money holds it for an operator.
            "pay" => {
                let charge = charge(branch)?;
                let movement = Movement {
                    user_id: charge.user_id,
                    amount: charge.amount,
                };
                let (otn, gid) = (&charge.out_trade_no, &branch.gid);
                self.ledger
                    .claim(conn, "pay", otn, movement, gid, State::Done)
                    .await?;
                let sql = "UPDATE account SET balance = balance - $1 \
                           WHERE user_id = $2 AND balance >= $1";
                if !update(conn, sql, charge.amount, charge.user_id).await? {
                    let user = charge.user_id;
                    return refusal(conn, user, "insufficient funds".to_owned()).await;
                }
                Ok(())
            }
            "refund" => {
                let otn = refund(branch)?.out_trade_no;
                let paid = self.paid(conn, &otn).await?;
                self.ledger
                    .claim(conn, "refund", &otn, paid, &branch.gid, State::Done)
                    .await?;
                make_room(conn, CREDIT_BALANCE, paid).await
            }
            other => Err(unknown(other)),
        }
    }

    async fn compensate(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        match branch.action.as_str() {
            "refund" => {
                let otn = refund(branch)?.out_trade_no;
                let released = self
                    .ledger
                    .release(conn, "refund", &otn, &branch.gid, State::Done);
                let Some(credited) = released.await? else {
                    return Ok(());
                };
                // Take the credit back; if the money was spent meanwhile this is retried
                // (and escalated) until it is there again or an operator steps in.
                let sql = "UPDATE account SET balance = balance - $1 \
                           WHERE user_id = $2 AND balance >= $1";
                if !update(conn, sql, credited.amount, credited.user_id).await? {
                    return Err(Error::Failed(format!(
                        "user {} no longer has the {} refunded",
                        credited.user_id, credited.amount
                    )));
                }
                Ok(())
            }
            other => Err(unknown(other)),
        }
    }
}
