//! The inventory service: stock per SKU, reserved by Try and sold by Confirm.
//!
//! `reserve` (purchase) moves units from available to reserved with one conditional UPDATE —
//! never read-then-write — so concurrent buyers can never oversell. Once a SKU is sold out,
//! a Try for it is refused from an in-memory flag before the database is touched; the flag
//! clears when stock comes back through this process (a cancelled reservation, a refund's
//! restock, [`Inventory::restock`]), and lapses after [`SOLD_OUT_FOR`], so stock that came
//! back through another process on the same database, or a flag set by a refusal that
//! raced a Cancel still committing, keeps units unsellable for that long at most.
//! `restock` (refund) moves sold units back through reserved to available; as a saga step
//! it moves them straight back, and its compensation sells them again.
//!
//! Orders, money and points belong to the other services.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use settle::{Barrier, Branch, Participant, participant::Error};
use sqlx::{AnyConnection, Row};

use crate::service::{self, LIMIT};

/// How long a sold-out flag refuses Trys without the database. Stock added by another
/// process (a second replica, an operator) is sellable here after this at the latest; one
/// Try per SKU and period reaches the database to find out.
pub const SOLD_OUT_FOR: Duration = Duration::from_millis(500);

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
    sold_out: RwLock<SoldOut>,
}

/// The sold-out flags, and how many times stock came back: a refusal flags its SKU only if
/// no stock came back since it read this count before its statement.
#[derive(Debug, Default)]
struct SoldOut {
    returns: u64,
    since: HashMap<String, Instant>,
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
            sold_out: RwLock::new(SoldOut::default()),
        }))
    }

    /// The barrier (and database) to serve with.
    pub fn barrier(&self) -> Barrier {
        self.barrier.clone()
    }

    /// Adds `qty` units of `sku`, creating it if needed.
    pub async fn restock(&self, sku: &str, qty: i64) -> Result<(), service::Error> {
        service::bounded("qty", qty, 1).map_err(service::Error::Invalid)?;
        let added = sqlx::query(
            "INSERT INTO sku (sku, initial, available) VALUES ($1, $2, $2) \
             ON CONFLICT (sku) DO UPDATE SET initial = sku.initial + excluded.initial, \
             available = sku.available + excluded.available \
             WHERE sku.initial <= $3 - excluded.initial",
        )
        .bind(sku)
        .bind(qty)
        .bind(LIMIT)
        .execute(self.barrier.database().pool())
        .await?;
        if added.rows_affected() == 0 {
            return Err(service::Error::Invalid(format!(
                "{qty} more units would take {sku} over {LIMIT}"
            )));
        }
        self.stock_returned(sku);
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
            .since
            .get(sku)
            .is_some_and(|since| since.elapsed() < SOLD_OUT_FOR)
    }

    /// How many times stock came back so far.
    fn returns(&self) -> u64 {
        self.sold_out
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .returns
    }

    /// Flags `sku` sold out, unless stock came back since [`Inventory::returns`] said
    /// `returns`.
    fn flag_sold_out(&self, sku: &str, returns: u64) {
        let mut flags = self.sold_out.write().unwrap_or_else(|e| e.into_inner());
        if flags.returns == returns {
            flags.since.insert(sku.to_owned(), Instant::now());
        }
    }

    /// Stock of `sku` came back (or is about to, when the returning transaction commits).
    fn stock_returned(&self, sku: &str) {
        let mut flags = self.sold_out.write().unwrap_or_else(|e| e.into_inner());
        flags.returns += 1;
        flags.since.remove(sku);
    }

    async fn reserve(&self, units: &Units, conn: &mut AnyConnection) -> Result<(), Error> {
        let returns = self.returns();
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
                self.flag_sold_out(&units.sku, returns);
                Ok(())
            }
            Some(_) => Ok(()),
            None => {
                let available: Option<i64> =
                    sqlx::query_scalar("SELECT available FROM sku WHERE sku = $1")
                        .bind(&units.sku)
                        .fetch_optional(&mut *conn)
                        .await?;
                match available {
                    None => Err(Error::refuse(format!("unknown sku {}", units.sku))),
                    // Flagged again once a flag lapsed. This read may predate a Cancel
                    // that returned stock but has not committed yet; then the flag is
                    // wrong for SOLD_OUT_FOR at most.
                    Some(0) => {
                        self.flag_sold_out(&units.sku, returns);
                        Err(Error::refuse("sold out"))
                    }
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
    service::positive("qty", units.qty)?;
    service::name("sku", &units.sku)?;
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
            self.stock_returned(&units.sku);
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
            self.stock_returned(&units.sku);
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
                        self.stock_returned(&units.sku);
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
