//! The inventory service: stock per SKU, reserved by Try and sold by Confirm.
//!
//! `reserve` (purchase) moves units from available to reserved with one conditional UPDATE —
//! never read-then-write — so concurrent buyers can never oversell. Once a SKU is sold out,
//! a Try for it is refused from an in-memory flag before the database is touched; the flag
//! clears when stock comes back (a cancelled reservation, a refund's restock, a restock).
//! `restock` (refund) moves sold units back through reserved to available; as a saga step
//! it moves them straight back, and its compensation sells them again.
//!
//! Orders, money and points belong to the other services.

use std::{
    collections::HashSet,
    sync::{Arc, RwLock},
};

use serde::{Deserialize, Serialize};
use settle::{Barrier, Branch, Participant, participant::Error};
use sqlx::{AnyConnection, Row};

use crate::service;

/// The payload of `reserve` and `restock`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Units {
    /// Which SKU.
    pub sku: String,
    /// How many units.
    pub qty: i64,
}

/// Counts of one SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stock {
    /// Every unit ever added.
    pub initial: i64,
    /// Free to reserve.
    pub available: i64,
    /// Held by pending purchases or refunds.
    pub reserved: i64,
    /// Sold.
    pub sold: i64,
}

/// The inventory participant.
#[derive(Debug)]
pub struct Inventory {
    barrier: Barrier,
    sold_out: RwLock<HashSet<String>>,
}

impl Inventory {
    /// Opens (and migrates) the inventory database at `url`.
    pub async fn open(url: &str) -> Result<Arc<Inventory>, service::Error> {
        let barrier = service::open(
            url,
            "inventory",
            sqlx::migrate!("../migrations/participants/inventory/sqlite"),
            sqlx::migrate!("../migrations/participants/inventory/postgres"),
        )
        .await?;
        Ok(Arc::new(Inventory {
            barrier,
            sold_out: RwLock::new(HashSet::new()),
        }))
    }

    /// The barrier (and database) to serve with.
    pub fn barrier(&self) -> Barrier {
        self.barrier.clone()
    }

    /// Adds `qty` units of `sku`, creating it if needed.
    pub async fn restock(&self, sku: &str, qty: i64) -> Result<(), service::Error> {
        sqlx::query(
            "INSERT INTO sku (sku, initial, available) VALUES ($1, $2, $2) \
             ON CONFLICT (sku) DO UPDATE SET initial = sku.initial + excluded.initial, \
             available = sku.available + excluded.available",
        )
        .bind(sku)
        .bind(qty)
        .execute(self.barrier.database().pool())
        .await?;
        self.set_sold_out(sku, false);
        Ok(())
    }

    /// The counts of `sku`, if it exists.
    pub async fn stock(&self, sku: &str) -> Result<Option<Stock>, sqlx::Error> {
        let row = sqlx::query("SELECT initial, available, reserved, sold FROM sku WHERE sku = $1")
            .bind(sku)
            .fetch_optional(self.barrier.database().pool())
            .await?;
        row.map(|row| stock_from_row(&row)).transpose()
    }

    /// Every SKU with its counts.
    pub async fn all_stock(&self) -> Result<Vec<(String, Stock)>, sqlx::Error> {
        let rows =
            sqlx::query("SELECT sku, initial, available, reserved, sold FROM sku ORDER BY sku")
                .fetch_all(self.barrier.database().pool())
                .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("sku")?, stock_from_row(row)?)))
            .collect()
    }

    /// Whether Try currently refuses `sku` without looking at the database.
    pub fn is_sold_out(&self, sku: &str) -> bool {
        self.sold_out
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(sku)
    }

    fn set_sold_out(&self, sku: &str, sold_out: bool) {
        let mut flags = self.sold_out.write().unwrap_or_else(|e| e.into_inner());
        if sold_out {
            flags.insert(sku.to_owned());
        } else {
            flags.remove(sku);
        }
    }

    async fn reserve(&self, units: &Units, conn: &mut AnyConnection) -> Result<(), Error> {
        let left: Option<i64> = sqlx::query_scalar(
            "UPDATE sku SET available = available - $1, reserved = reserved + $1 \
             WHERE sku = $2 AND available >= $1 RETURNING available",
        )
        .bind(units.qty)
        .bind(&units.sku)
        .fetch_optional(&mut *conn)
        .await?;
        match left {
            // This reservation took the last unit: its UPDATE saw every committed (and
            // waited for every pending) change to the row, so the flag is right until
            // stock comes back, which clears it.
            Some(0) => {
                self.set_sold_out(&units.sku, true);
                Ok(())
            }
            Some(_) => Ok(()),
            None => {
                let available: Option<i64> =
                    sqlx::query_scalar("SELECT available FROM sku WHERE sku = $1")
                        .bind(&units.sku)
                        .fetch_optional(&mut *conn)
                        .await?;
                // Not flagged from this read: it may predate a Cancel that is about to
                // commit, and a flag set now would outlive the stock that Cancel returns.
                match available {
                    None => Err(Error::refuse(format!("unknown sku {}", units.sku))),
                    Some(0) => Err(Error::refuse("sold out")),
                    Some(n) => Err(Error::refuse(format!("only {n} left"))),
                }
            }
        }
    }
}

fn stock_from_row(row: &sqlx::any::AnyRow) -> Result<Stock, sqlx::Error> {
    Ok(Stock {
        initial: row.try_get("initial")?,
        available: row.try_get("available")?,
        reserved: row.try_get("reserved")?,
        sold: row.try_get("sold")?,
    })
}

fn units(branch: &Branch) -> Result<Units, Error> {
    let units: Units = branch.json()?;
    if units.qty <= 0 {
        return Err(Error::BadPayload(format!(
            "qty must be positive, got {}",
            units.qty
        )));
    }
    Ok(units)
}

async fn exec(conn: &mut AnyConnection, sql: &'static str, units: &Units) -> Result<u64, Error> {
    let done = sqlx::query(sql)
        .bind(units.qty)
        .bind(&units.sku)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

fn unknown(action: &str) -> Error {
    Error::BadPayload(format!("inventory has no action {action:?}"))
}

impl Participant for Inventory {
    fn screen_try(&self, branch: &Branch) -> Result<(), Error> {
        if branch.action == "reserve" && self.is_sold_out(&units(branch)?.sku) {
            return Err(Error::refuse("sold out"));
        }
        Ok(())
    }

    async fn r#try(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let units = units(branch)?;
        match branch.action.as_str() {
            "reserve" => self.reserve(&units, conn).await,
            "restock" => {
                let sql = "UPDATE sku SET sold = sold - $1, reserved = reserved + $1 \
                           WHERE sku = $2 AND sold >= $1";
                match exec(conn, sql, &units).await? {
                    0 => Err(Error::refuse(format!(
                        "fewer than {} units of {} sold",
                        units.qty, units.sku
                    ))),
                    _ => Ok(()),
                }
            }
            other => Err(unknown(other)),
        }
    }

    async fn confirm(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let units = units(branch)?;
        let sql = match branch.action.as_str() {
            "reserve" => "UPDATE sku SET reserved = reserved - $1, sold = sold + $1 WHERE sku = $2",
            "restock" => {
                "UPDATE sku SET reserved = reserved - $1, available = available + $1 WHERE sku = $2"
            }
            other => return Err(unknown(other)),
        };
        exec(conn, sql, &units).await?;
        if branch.action == "restock" {
            self.set_sold_out(&units.sku, false);
        }
        Ok(())
    }

    async fn cancel(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let units = units(branch)?;
        let sql = match branch.action.as_str() {
            "reserve" => {
                "UPDATE sku SET reserved = reserved - $1, available = available + $1 WHERE sku = $2"
            }
            "restock" => "UPDATE sku SET reserved = reserved - $1, sold = sold + $1 WHERE sku = $2",
            other => return Err(unknown(other)),
        };
        exec(conn, sql, &units).await?;
        if branch.action == "reserve" {
            self.set_sold_out(&units.sku, false);
        }
        Ok(())
    }

    async fn execute(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let units = units(branch)?;
        match branch.action.as_str() {
            "restock" => {
                let sql = "UPDATE sku SET sold = sold - $1, available = available + $1 \
                           WHERE sku = $2 AND sold >= $1";
                match exec(conn, sql, &units).await? {
                    0 => Err(Error::refuse(format!(
                        "fewer than {} units of {} sold",
                        units.qty, units.sku
                    ))),
                    _ => {
                        self.set_sold_out(&units.sku, false);
                        Ok(())
                    }
                }
            }
            other => Err(unknown(other)),
        }
    }

    async fn compensate(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let units = units(branch)?;
        match branch.action.as_str() {
            "restock" => {
                // The restocked units may have been bought again meanwhile; then this fails
                // and is retried (and escalated) until stock allows it or an operator steps in.
                let sql = "UPDATE sku SET available = available - $1, sold = sold + $1 \
                           WHERE sku = $2 AND available >= $1";
                match exec(conn, sql, &units).await? {
                    0 => Err(Error::Failed(format!(
                        "{} units of {} are no longer available",
                        units.qty, units.sku
                    ))),
                    _ => Ok(()),
                }
            }
            other => Err(unknown(other)),
        }
    }
}
