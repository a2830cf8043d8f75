//! The invariants of ARCHITECTURE.md ("Invariants"), checked across the four services'
//! databases once the shop is quiet (no transaction in flight): no oversell and sold +
//! available + reserved = initial stock; nothing left reserved, pending, incoming or
//! frozen; every paid order has exactly one debit, its stock and its reward; no money or
//! points movement without its order; money and points conserved. The per-service ledgers
//! ([`stock_ledger`], [`money_ledger`], [`points_ledger`]) hold at any moment.
//!
//! Whether every global transaction ended final is the coordinator's to answer; callers
//! check that with `Get`.

use std::collections::HashMap;

use crate::{
    inventory::{Inventory, Stock},
    order::Orders,
    payment::{self, Payment},
    points::{self, Points},
    shop::Shop,
};

/// What the shop started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opening {
    /// Σ money over all accounts at the start.
    pub money: i64,
    /// Σ points over all accounts at the start.
    pub points: i64,
}

/// Checks every invariant of a running shop; returns the violations, empty when all hold.
pub async fn check(shop: &Shop, opening: Opening) -> Result<Vec<String>, sqlx::Error> {
    check_services(
        &shop.inventory,
        &shop.orders,
        &shop.payment,
        &shop.points,
        opening,
    )
    .await
}

/// Like [`check`], for services started one by one.
pub async fn check_services(
    inventory: &Inventory,
    orders: &Orders,
    payment: &Payment,
    points: &Points,
    opening: Opening,
) -> Result<Vec<String>, sqlx::Error> {
    let stock = inventory.all_stock().await?;
    let mut violations = stock_ledger(&stock);
    let mut fail = |msg: String| violations.push(msg);

    let orders = orders.all().await?;
    let pay_log = payment.log().await?;
    let points_log = points.log().await?;
    let money = payment.totals().await?;
    let points = points.totals().await?;

    let mut sold_by_sku: HashMap<&str, i64> = HashMap::new();
    let mut pay_rows: HashMap<(&str, &str), usize> = HashMap::new();
    for row in &pay_log {
        *pay_rows.entry((&row.out_trade_no, &row.kind)).or_default() += 1;
    }
    let mut points_rows: HashMap<(&str, &str), usize> = HashMap::new();
    for row in &points_log {
        *points_rows
            .entry((&row.out_trade_no, &row.kind))
            .or_default() += 1;
    }
    let by_id: HashMap<&str, &crate::order::Order> =
        orders.iter().map(|o| (o.order_id.as_str(), o)).collect();

    for order in &orders {
        let id = order.order_id.as_str();
        let count = |rows: &HashMap<(&str, &str), usize>, kind: &str| {
            rows.get(&(id, kind)).copied().unwrap_or(0)
        };
        let (paid_expected, refund_expected) = match order.status.as_str() {
            "PAID" => (1, 0),
            "REFUNDED" => (1, 1),
            "CANCELLED" => (0, 0),
            other => {
                fail(format!("order {id} is still {other}"));
                continue;
            }
        };
        let (log, other_log) = if order.pay_with == "money" {
            (&pay_rows, &points_rows)
        } else {
            (&points_rows, &pay_rows)
        };
        if count(log, "pay") != paid_expected || count(log, "refund") != refund_expected {
            fail(format!(
                "order {id} ({}, {}) has {} payments and {} refunds",
                order.status,
                order.pay_with,
                count(log, "pay"),
                count(log, "refund")
            ));
        }
        if count(other_log, "pay") + count(other_log, "refund") != 0 {
            fail(format!(
                "order {id} paid with {} has movements in the other ledger",
                order.pay_with
            ));
        }
        if order.pay_with == "money" {
            if count(&points_rows, "reward") != paid_expected {
                fail(format!(
                    "order {id} ({}) has {} rewards",
                    order.status,
                    count(&points_rows, "reward")
                ));
            }
            if order.status == "PAID" {
                *sold_by_sku.entry(&order.sku).or_default() += order.qty;
            }
        }
    }
    for row in &pay_log {
        if !by_id.contains_key(row.out_trade_no.as_str()) {
            fail(format!(
                "money {} for {} without an order",
                row.kind, row.out_trade_no
            ));
        }
    }
    for row in &points_log {
        if !by_id.contains_key(row.out_trade_no.as_str()) {
            fail(format!(
                "points {} for {} without an order",
                row.kind, row.out_trade_no
            ));
        }
    }

    for (sku, stock) in stock {
        if stock.reserved != 0 {
            fail(format!("{sku}: {} units still reserved", stock.reserved));
        }
        let sold = sold_by_sku.get(sku.as_str()).copied().unwrap_or(0);
        if stock.sold != sold {
            fail(format!(
                "{sku}: {} sold but paid orders hold {sold}",
                stock.sold
            ));
        }
    }

    if money.frozen != 0 || money.incoming != 0 {
        fail(format!(
            "money still frozen ({}) or incoming ({})",
            money.frozen, money.incoming
        ));
    }
    if points.frozen != 0 || points.pending != 0 {
        fail(format!(
            "points still frozen ({}) or pending ({})",
            points.frozen, points.pending
        ));
    }
    violations.extend(money_ledger(&money, opening.money));
    violations.extend(points_ledger(&points, opening.points));
    Ok(violations)
}

/// What holds in the inventory at any moment, reservations in flight or not: every unit is
/// available, reserved or sold.
pub fn stock_ledger(stock: &[(String, Stock)]) -> Vec<String> {
    stock
        .iter()
        .filter(|(_, s)| s.available + s.reserved + s.sold != s.initial)
        .map(|(sku, s)| {
            format!(
                "{sku}: available {} + reserved {} + sold {} != initial {}",
                s.available, s.reserved, s.sold, s.initial
            )
        })
        .collect()
}

/// What holds in the payment service at any moment: frozen money is what payments tried
/// hold, incoming money what refunds tried will credit, and balances plus frozen money
/// equal the opening money less what was paid plus what was refunded.
pub fn money_ledger(money: &payment::Totals, opening: i64) -> Vec<String> {
    let mut violations = Vec::new();
    if money.frozen != money.paying {
        violations.push(format!(
            "money frozen {} != payments held {}",
            money.frozen, money.paying
        ));
    }
    if money.incoming != money.refunding {
        violations.push(format!(
            "money incoming {} != refunds held {}",
            money.incoming, money.refunding
        ));
    }
    if money.balance + money.frozen + money.paid - money.refunded != opening {
        violations.push(format!(
            "money not conserved: balances {} + frozen {} + paid {} - refunded {} != {opening}",
            money.balance, money.frozen, money.paid, money.refunded
        ));
    }
    violations
}

/// What holds in the points service at any moment: frozen points are what points payments
/// tried hold, pending points what rewards and refunds tried will grant, and usable plus
/// frozen points equal the opening points plus rewards and refunds less payments.
pub fn points_ledger(points: &points::Totals, opening: i64) -> Vec<String> {
    let mut violations = Vec::new();
    if points.frozen != points.paying {
        violations.push(format!(
            "points frozen {} != points payments held {}",
            points.frozen, points.paying
        ));
    }
    if points.pending != points.granting {
        violations.push(format!(
            "points pending {} != grants held {}",
            points.pending, points.granting
        ));
    }
    if points.usable + points.frozen != opening + points.rewarded - points.paid + points.refunded {
        violations.push(format!(
            "points not conserved: usable {} + frozen {} != opening {opening} + rewarded {} - paid {} + refunded {}",
            points.usable, points.frozen, points.rewarded, points.paid, points.refunded
        ));
    }
    violations
}
