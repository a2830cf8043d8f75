//! The movement logs of the payment and points services (`pay_log`, `points_log`): one row
//! per (out_trade_no, type), and the reservation a Try takes on it.
//!
//! A Try writes its row as `held`, under its gid, before it freezes or stages anything: the
//! row's key decides at Try whether the out_trade_no is still free, so a second transaction
//! with the same out_trade_no is refused before it holds a cent. Confirm turns the row
//! `done` and Cancel deletes it, each only if this transaction's held row is there, so
//! what they move is what the Try reserved, once. Only `done` rows count as moved money or
//! points. What the balances do around these rows is the services' business.

use settle::participant::Error;
use sqlx::{AnyConnection, Row};

use crate::service;

/// One of the two logs.
#[derive(Debug)]
pub(crate) struct Ledger {
    claim: String,
    owner: String,
    confirm: String,
    release: String,
    done: String,
}

/// Whose movement a row records, and how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Movement {
    /// The account.
    pub user_id: i64,
    /// The amount (money or points).
    pub amount: i64,
}

impl Ledger {
    /// The log `table`, whose amount column is `amount`.
    pub(crate) fn new(table: &str, amount: &str) -> Ledger {
        Ledger {
            claim: format!(
                "INSERT INTO {table} (out_trade_no, type, user_id, {amount}, gid, state, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (out_trade_no, type) DO NOTHING"
            ),
            owner: format!("SELECT gid FROM {table} WHERE out_trade_no = $1 AND type = $2"),
            confirm: format!(
                "UPDATE {table} SET state = 'done' \
                 WHERE out_trade_no = $1 AND type = $2 AND gid = $3 AND state = 'held' \
                 RETURNING user_id, {amount} AS amount"
            ),
            release: format!(
                "DELETE FROM {table} \
                 WHERE out_trade_no = $1 AND type = $2 AND gid = $3 AND state = $4 \
                 RETURNING user_id, {amount} AS amount"
            ),
            done: format!(
                "SELECT user_id, {amount} AS amount FROM {table} \
                 WHERE out_trade_no = $1 AND type = $2 AND state = 'done'"
            ),
        }
    }

    /// Writes the row of a `kind` movement for `out_trade_no` under `gid`, `held` (a Try)
    /// or already `done` (a saga step that moves at once). Refused when the row exists,
    /// whoever wrote it.
    pub(crate) async fn claim(
        &self,
        conn: &mut AnyConnection,
        kind: &str,
        out_trade_no: &str,
        movement: Movement,
        gid: &str,
        state: State,
    ) -> Result<(), Error> {
        let claimed = sqlx::query(sqlx::AssertSqlSafe(self.claim.as_str()))
            .bind(out_trade_no)
            .bind(kind)
            .bind(movement.user_id)
            .bind(movement.amount)
            .bind(gid)
            .bind(state.as_str())
            .bind(service::now_ms())
            .execute(&mut *conn)
            .await?;
        if claimed.rows_affected() == 1 {
            return Ok(());
        }
        let owner: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(self.owner.as_str()))
            .bind(out_trade_no)
            .bind(kind)
            .fetch_optional(conn)
            .await?;
        let by = match owner.as_deref() {
            Some("") | None => String::new(),
            Some(owner) => format!(" by transaction {owner}"),
        };
        Err(Error::refuse(match kind {
            "refund" => format!("out_trade_no {out_trade_no} is already refunded{by}"),
            _ => format!("out_trade_no {out_trade_no} already used{by}"),
        }))
    }

    /// Turns `gid`'s held row `done`; returns what it moves, or `None` when this
    /// transaction holds no such row.
    pub(crate) async fn confirm(
        &self,
        conn: &mut AnyConnection,
        kind: &str,
        out_trade_no: &str,
        gid: &str,
    ) -> Result<Option<Movement>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(self.confirm.as_str()))
            .bind(out_trade_no)
            .bind(kind)
            .bind(gid)
            .fetch_optional(conn)
            .await?;
        Ok(row.as_ref().map(movement).transpose()?)
    }

    /// Deletes `gid`'s row in `state`; returns what it held, or `None` when there is none.
    pub(crate) async fn release(
        &self,
        conn: &mut AnyConnection,
        kind: &str,
        out_trade_no: &str,
        gid: &str,
        state: State,
    ) -> Result<Option<Movement>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(self.release.as_str()))
            .bind(out_trade_no)
            .bind(kind)
            .bind(gid)
            .bind(state.as_str())
            .fetch_optional(conn)
            .await?;
        Ok(row.as_ref().map(movement).transpose()?)
    }

    /// The `done` movement of `kind` for `out_trade_no`, if there is one.
    pub(crate) async fn done(
        &self,
        conn: &mut AnyConnection,
        kind: &str,
        out_trade_no: &str,
    ) -> Result<Option<Movement>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(self.done.as_str()))
            .bind(out_trade_no)
            .bind(kind)
            .fetch_optional(conn)
            .await?;
        Ok(row.as_ref().map(movement).transpose()?)
    }
}

/// Whether a row is a reservation or a movement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Written by a Try, not yet confirmed.
    Held,
    /// Moved.
    Done,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Held => "held",
            State::Done => "done",
        }
    }
}

fn movement(row: &sqlx::any::AnyRow) -> Result<Movement, sqlx::Error> {
    Ok(Movement {
        user_id: row.try_get("user_id")?,
        amount: row.try_get("amount")?,
    })
}
