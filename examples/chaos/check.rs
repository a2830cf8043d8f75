//! The verdict after the drain, from the databases alone: the coordinator's log, each
//! participant's barrier table and the shop's own tables. Every rule here is one a user
//! would check by hand after an outage; a broken one is a violation, named with the gid.

use std::collections::{BTreeMap, HashMap, HashSet};

use settle_participants::{
    invariants::{self, Opening},
    inventory::Inventory,
    order::Orders,
    payment::Payment,
    points::Points,
};
use sqlx::{PgPool, Row};

use crate::Result;

/// Global transactions not yet COMMITTED or ABORTED.
pub async fn unfinished(coordinator: &PgPool) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM global_tx WHERE status NOT IN ('COMMITTED', 'ABORTED')",
    )
    .fetch_one(coordinator)
    .await?)
}

/// Transactions by mode and status.
pub async fn outcomes(coordinator: &PgPool) -> Result<BTreeMap<(String, String), i64>> {
    let rows =
        sqlx::query("SELECT mode, status, COUNT(*) AS n FROM global_tx GROUP BY mode, status")
            .fetch_all(coordinator)
            .await?;
    let mut out = BTreeMap::new();
    for row in rows {
        out.insert(
            (row.try_get("mode")?, row.try_get("status")?),
            row.try_get("n")?,
        );
    }
    Ok(out)
}

/// The shop's services, opened on their databases by the harness.
#[derive(Debug)]
pub struct ShopDbs {
    pub inventory: std::sync::Arc<Inventory>,
    pub orders: std::sync::Arc<Orders>,
    pub payment: std::sync::Arc<Payment>,
    pub points: std::sync::Arc<Points>,
    /// Each service's database, for its barrier table: (service name, pool).
    pub barriers: Vec<(&'static str, PgPool)>,
}

/// Every rule, once the drain is over; the violations, empty when all hold.
pub async fn violations(
    coordinator: &PgPool,
    shop: &ShopDbs,
    opening: Opening,
) -> Result<Vec<String>> {
    let mut found = Vec::new();

    let rows = sqlx::query("SELECT gid, mode, status, reason FROM global_tx WHERE status NOT IN ('COMMITTED', 'ABORTED') OR needs_attention <> 0")
        .fetch_all(coordinator)
        .await?;
    for row in rows {
        let (gid, mode, status, reason): (String, String, String, String) = (
            row.try_get("gid")?,
            row.try_get("mode")?,
            row.try_get("status")?,
            row.try_get("reason")?,
        );
        if status == "COMMITTED" || status == "ABORTED" {
            found.push(format!("{mode} {gid} needs attention: {reason}"));
        } else {
            found.push(format!("{mode} {gid} is still {status} after the drain"));
        }
    }

    // (service, gid, branch) → the barrier's ops.
    let mut barrier: HashMap<(String, String, i64), HashSet<String>> = HashMap::new();
    for (service, pool) in &shop.barriers {
        for row in sqlx::query("SELECT gid, branch_id, op FROM settle_barrier")
            .fetch_all(pool)
            .await?
        {
            barrier
                .entry((
                    (*service).to_owned(),
                    row.try_get("gid")?,
                    row.try_get("branch_id")?,
                ))
                .or_default()
                .insert(row.try_get("op")?);
        }
    }
    for ((service, gid, branch), ops) in &barrier {
        if ops.contains("confirm") && ops.contains("cancel") {
            found.push(format!(
                "{gid} branch {branch} at {service} was both confirmed and cancelled"
            ));
        }
    }

    let branches = sqlx::query(
        "SELECT g.gid, g.mode, g.status, b.branch_id, b.participant, b.status AS branch_status \
         FROM branch b JOIN global_tx g ON g.gid = b.gid",
    )
    .fetch_all(coordinator)
    .await?;
    let mut status_of: HashMap<String, String> = HashMap::new();
    let none = HashSet::new();
    for row in branches {
        let gid: String = row.try_get("gid")?;
        let mode: String = row.try_get("mode")?;
        let status: String = row.try_get("status")?;
        let branch: i64 = row.try_get("branch_id")?;
        let participant: String = row.try_get("participant")?;
        let branch_status: String = row.try_get("branch_status")?;
        let ops = barrier
            .get(&(participant.clone(), gid.clone(), branch))
            .unwrap_or(&none);
        let has = |op: &str| ops.contains(op);
        let wrong = match (mode.as_str(), status.as_str()) {
            ("TCC", "COMMITTED") => {
                (branch_status != "CONFIRMED" || !has("confirm") || has("cancel"))
                    .then_some("committed, but its branch was not confirmed exactly")
            }
            ("TCC", "ABORTED") => has("confirm").then_some("aborted, but its branch was confirmed"),
            ("SAGA", "COMMITTED") | ("MESSAGE", "COMMITTED") => {
                (branch_status != "EXECUTED" || !has("execute") || has("compensate"))
                    .then_some("committed, but its step was not executed exactly")
            }
            ("SAGA", "ABORTED") => (has("execute") && !has("compensate"))
                .then_some("aborted, but an executed step was not compensated"),
            ("MESSAGE", "ABORTED") => has("execute").then_some("aborted, but a step was executed"),
            _ => None,
        };
        if let Some(wrong) = wrong {
            found.push(format!(
                "{mode} {gid} {wrong}: branch {branch} at {participant} is {branch_status}, barrier rows {ops:?}"
            ));
        }
        status_of.insert(gid, status);
    }

    for order in shop.orders.all().await? {
        let tx = status_of.get(&order.order_id).map(String::as_str);
        let agrees = match order.status.as_str() {
            "PAID" | "REFUNDED" => tx == Some("COMMITTED"),
            "CANCELLED" => tx == Some("ABORTED"),
            _ => true,
        };
        if !agrees {
            found.push(format!(
                "order {} is {} but its transaction is {}",
                order.order_id,
                order.status,
                tx.unwrap_or("missing")
            ));
        }
    }

    found.extend(
        invariants::check_services(
            &shop.inventory,
            &shop.orders,
            &shop.payment,
            &shop.points,
            opening,
        )
        .await?,
    );
    Ok(found)
}
