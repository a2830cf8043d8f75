//! Between Rust values and rows: reading `global_tx` and `branch` rows into the domain types
//! (a value this version does not understand is [`Error::Corrupt`], never a guess), and
//! writing a set of rows as the one JSON array parameter a batch statement takes
//! (`{json $N: …}` and `{in_ids $N}` in the templates).
//!
//! Which columns a statement reads is the statement's business (`store/sql.rs` has the
//! lists); this module only converts.

use serde::Serialize;
use sqlx::{Row, any::AnyRow};

use super::{Error, Result};
use crate::model::{Branch, BranchStatus, GlobalTx, Mode, Status};

pub(super) fn corrupt(what: &str, value: &str) -> Error {
    Error::Corrupt(format!("unknown {what} {value:?}"))
}

/// A `global_tx` row, read with `tx_columns!()`.
pub(super) fn tx(row: &AnyRow) -> Result<GlobalTx> {
    let mode: String = row.try_get("mode")?;
    let labels: String = row.try_get("labels")?;
    Ok(GlobalTx {
        gid: row.try_get("gid")?,
        mode: Mode::parse(&mode).ok_or_else(|| corrupt("mode", &mode))?,
        status: status(row)?,
        deadline: row.try_get("deadline")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        attempts: row.try_get("attempts")?,
        owner: row.try_get("owner")?,
        version: row.try_get("version")?,
        branch_count: row.try_get("branch_count")?,
        labels: serde_json::from_str(&labels).map_err(|_| corrupt("labels", &labels))?,
        reason: row.try_get("reason")?,
        needs_attention: flag(row, "needs_attention")?,
        paused: flag(row, "paused")?,
        decided_at: row.try_get("decided_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        traceparent: row.try_get("traceparent")?,
        began_by: row.try_get("began_by")?,
        decided_by: row.try_get("decided_by")?,
    })
}

/// A `branch` row, read with `branch_columns!()`.
pub(super) fn branch(row: &AnyRow) -> Result<Branch> {
    let status: String = row.try_get("status")?;
    let branch_id: i64 = row.try_get("branch_id")?;
    let payload: Vec<u8> = row.try_get("payload")?;
    Ok(Branch {
        gid: row.try_get("gid")?,
        branch_id: branch_id_of(branch_id)?,
        participant: row.try_get("participant")?,
        action: row.try_get("action")?,
        payload: payload.into(),
        status: BranchStatus::parse(&status).ok_or_else(|| corrupt("branch status", &status))?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
    })
}

/// The `status` column of a `global_tx` row.
pub(super) fn status(row: &AnyRow) -> Result<Status> {
    let status: String = row.try_get("status")?;
    Status::parse(&status).ok_or_else(|| corrupt("status", &status))
}

/// An integer column holding 0 or 1 (neither database's boolean is portable).
pub(super) fn flag(row: &AnyRow, column: &str) -> Result<bool> {
    Ok(row.try_get::<i64, _>(column)? != 0)
}

/// A stored branch id, which the wire carries as `u32`.
pub(super) fn branch_id_of(id: i64) -> Result<u32> {
    u32::try_from(id).map_err(|_| corrupt("branch id", &id.to_string()))
}

/// A JSON row naming one transaction.
#[derive(Serialize)]
pub(super) struct Gid<S> {
    pub id: S,
}

/// The JSON array parameter of a batch statement.
pub(super) fn to_json<T: Serialize>(rows: &T) -> Result<String> {
    serde_json::to_string(rows).map_err(|e| Error::Corrupt(format!("batch not serialisable: {e}")))
}

/// Bytes as a JSON row carries them (`BYTEA` columns of `{json …}`).
pub(super) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}
