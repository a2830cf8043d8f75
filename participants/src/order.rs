//! The order service: one order per purchase, PENDING → PAID (→ REFUNDING → REFUNDED) or
//! CANCELLED.
//!
//! The order id is the gid of the transaction that created it. As a saga step, `refund`
//! executes PAID → REFUNDED at once and compensates REFUNDED → PAID. A unique index allows at
//! most one live order (PENDING, PAID or REFUNDING) per user and campaign, so a second
//! purchase by the same user is refused by the database itself, whatever the concurrency.
//!
//! Stock, money and points belong to the other services.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use settle::{Barrier, Branch, Participant, participant::Error};
use sqlx::{AnyConnection, Row};

use crate::service;

/// How an order is paid; purchases paid with money also take stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayWith {
    /// Money, through the payment service.
    Money,
    /// Points, through the points service.
    Points,
}

impl PayWith {
    fn as_str(self) -> &'static str {
        match self {
            PayWith::Money => "money",
            PayWith::Points => "points",
        }
    }
}

/// The payload of `create`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewOrder {
    /// Buyer.
    pub user_id: i64,
    /// The sale this order belongs to.
    pub campaign: String,
    /// What was bought.
    pub sku: String,
    /// How many.
    pub qty: i64,
    /// Price, in money or points.
    pub amount: i64,
    /// How it is paid.
    pub pay_with: PayWith,
}

/// The payload of `refund`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefundOrder {
    /// The order to refund.
    pub order_id: String,
}

/// A stored order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// The gid of the purchase that created it.
    pub order_id: String,
    /// Buyer.
    pub user_id: i64,
    /// Campaign.
    pub campaign: String,
    /// SKU.
    pub sku: String,
    /// Quantity.
    pub qty: i64,
    /// Price.
    pub amount: i64,
    /// "money" or "points".
    pub pay_with: String,
    /// PENDING, PAID, REFUNDING, REFUNDED or CANCELLED.
    pub status: String,
}

/// The order participant.
#[derive(Debug)]
pub struct Orders {
    barrier: Barrier,
}

const COLUMNS: &str = "order_id, user_id, campaign, sku, qty, amount, pay_with, status";

impl Orders {
    /// Opens (and migrates) the order database at `url`.
    pub async fn open(url: &str) -> Result<Arc<Orders>, service::Error> {
        let barrier = service::open(
            url,
            "order",
            sqlx::migrate!("../migrations/participants/order/sqlite"),
            sqlx::migrate!("../migrations/participants/order/postgres"),
        )
        .await?;
        Ok(Arc::new(Orders { barrier }))
    }

    /// The barrier (and database) to serve with.
    pub fn barrier(&self) -> Barrier {
        self.barrier.clone()
    }

    /// One order.
    pub async fn order(&self, order_id: &str) -> Result<Option<Order>, sqlx::Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM orders WHERE order_id = $1"
        )))
        .bind(order_id)
        .fetch_optional(self.barrier.database().pool())
        .await?;
        row.map(|row| order_from_row(&row)).transpose()
    }

    /// Every order.
    pub async fn all(&self) -> Result<Vec<Order>, sqlx::Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM orders ORDER BY order_id"
        )))
        .fetch_all(self.barrier.database().pool())
        .await?;
        rows.iter().map(order_from_row).collect()
    }
}

fn order_from_row(row: &sqlx::any::AnyRow) -> Result<Order, sqlx::Error> {
    Ok(Order {
        order_id: row.try_get("order_id")?,
        user_id: row.try_get("user_id")?,
        campaign: row.try_get("campaign")?,
        sku: row.try_get("sku")?,
        qty: row.try_get("qty")?,
        amount: row.try_get("amount")?,
        pay_with: row.try_get("pay_with")?,
        status: row.try_get("status")?,
    })
}

/// Moves an order from one status to another; returns whether it was in `from`.
async fn transition(
    conn: &mut AnyConnection,
    order_id: &str,
    from: &str,
    to: &str,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "UPDATE orders SET status = $1, updated_at = $2 WHERE order_id = $3 AND status = $4",
    )
    .bind(to)
    .bind(service::now_ms())
    .bind(order_id)
    .bind(from)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

fn unknown(action: &str) -> Error {
    Error::BadPayload(format!("order has no action {action:?}"))
}

/// Inserts the PENDING order `branch.gid`; refused when the buyer already has a live order
/// in the campaign.
async fn insert_pending(branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
    let order: NewOrder = branch.json()?;
    service::positive("qty", order.qty)?;
    service::bounded("amount", order.amount, 0).map_err(Error::BadPayload)?;
    service::name("campaign", &order.campaign)?;
    service::name("sku", &order.sku)?;
    let now = service::now_ms();
    let created = sqlx::query(
        "INSERT INTO orders (order_id, user_id, campaign, sku, qty, amount, pay_with, \
             status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'PENDING', $8, $8) ON CONFLICT DO NOTHING",
    )
    .bind(&branch.gid)
    .bind(order.user_id)
    .bind(&order.campaign)
    .bind(&order.sku)
    .bind(order.qty)
    .bind(order.amount)
    .bind(order.pay_with.as_str())
    .bind(now)
    .execute(conn)
    .await?;
    if created.rows_affected() == 0 {
        return Err(Error::refuse("already bought in this campaign"));
    }
    Ok(())
}

impl Participant for Orders {
    async fn r#try(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        match branch.action.as_str() {
            "create" => insert_pending(branch, conn).await,
            "refund" => {
                let refund: RefundOrder = branch.json()?;
                if !transition(conn, &refund.order_id, "PAID", "REFUNDING").await? {
                    return Err(Error::refuse(format!(
                        "order {} is not paid",
                        refund.order_id
                    )));
                }
                Ok(())
            }
            other => Err(unknown(other)),
        }
    }

    async fn confirm(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        match branch.action.as_str() {
            "create" => transition(conn, &branch.gid, "PENDING", "PAID")
                .await
                .map(drop),
            "refund" => {
                let refund: RefundOrder = branch.json()?;
                transition(conn, &refund.order_id, "REFUNDING", "REFUNDED")
                    .await
                    .map(drop)
            }
            other => Err(unknown(other)),
        }
    }

    async fn cancel(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        match branch.action.as_str() {
            "create" => transition(conn, &branch.gid, "PENDING", "CANCELLED")
                .await
                .map(drop),
            "refund" => {
                let refund: RefundOrder = branch.json()?;
                transition(conn, &refund.order_id, "REFUNDING", "PAID")
                    .await
                    .map(drop)
            }
            other => Err(unknown(other)),
        }
    }

    async fn execute(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        match branch.action.as_str() {
            // A message's steps (`crate::flows::purchase_message`): the order is created
            // PENDING, and marked PAID once the money moved.
            "create" => insert_pending(branch, conn).await,
            "paid" => {
                if !transition(conn, &branch.gid, "PENDING", "PAID").await? {
                    return Err(Error::refuse(format!(
                        "order {} is not pending",
                        branch.gid
                    )));
                }
                Ok(())
            }
            "refund" => {
                let refund: RefundOrder = branch.json()?;
                if !transition(conn, &refund.order_id, "PAID", "REFUNDED").await? {
                    return Err(Error::refuse(format!(
                        "order {} is not paid",
                        refund.order_id
                    )));
                }
                Ok(())
            }
            other => Err(unknown(other)),
        }
    }

    async fn compensate(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        match branch.action.as_str() {
            "refund" => {
                let refund: RefundOrder = branch.json()?;
                transition(conn, &refund.order_id, "REFUNDED", "PAID")
                    .await
                    .map(drop)
            }
            other => Err(unknown(other)),
        }
    }
}
