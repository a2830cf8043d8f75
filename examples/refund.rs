//! Refunds: buyers purchase, then half of them ask for their money back, in both forms the
//! shop offers: half of the refunds as one TCC transaction across order, payment and
//! inventory, the other half as a saga (order refunded, then money back and restock in
//! parallel, compensated in reverse if a step refuses). Every refund is also replayed once
//! (a double click, a retried request), and the replay is refused without a second effect.
//! Then the shop's invariants are checked: stock, money and points back exactly once.
//!
//! ```sh
//! cargo run --release --example refund -- --buyers 500
//! ```

mod support;

use std::collections::BTreeMap;

use clap::Parser;
use futures::StreamExt;
use settle_participants::{
    flows::{self, Outcome, Purchase},
    invariants::Opening,
};
use support::Embedded;

/// Runs purchases and refunds and checks the shop's invariants afterwards.
#[derive(Debug, Parser)]
struct Args {
    /// Buyers, each buying one unit.
    #[arg(long, default_value_t = 500)]
    buyers: i64,
    /// Flows in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Run on PostgreSQL: the admin URL on which fresh databases are created.
    #[arg(long)]
    postgres: Option<String>,
}

const SKU: &str = "BOOTS-42";
const PRICE: i64 = 250;

#[tokio::main]
async fn main() -> support::Result<()> {
    let args = Args::parse();
    let embedded = Embedded::start(
        args.postgres.as_deref(),
        "settle_refund",
        Default::default(),
    )
    .await?;
    let shop = &embedded.shop;
    let users: Vec<i64> = (1..=args.buyers).collect();
    shop.inventory.restock(SKU, args.buyers).await?;
    shop.payment.open_accounts(&users, 1_000).await?;
    shop.points.open_accounts(&users, 0).await?;
    let opening = Opening {
        money: args.buyers * 1_000,
        points: 0,
    };

    let mut committed = Vec::new();
    let purchases: Vec<_> = futures::stream::iter(users.clone())
        .map(|user_id| {
            let client = embedded.client.clone();
            let purchase = Purchase {
                user_id,
                campaign: "spring".to_owned(),
                sku: SKU.to_owned(),
                qty: 1,
                price: PRICE,
                reward: 5,
            };
            async move { flows::purchase(&client, &purchase).await }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    for outcome in purchases {
        if let Outcome::Done(gid) = outcome? {
            committed.push(gid);
        }
    }
    println!("purchased    {}", committed.len());

    let orders = shop.orders.all().await?;
    let to_refund: Vec<_> = orders
        .iter()
        .filter(|o| o.user_id % 2 == 0)
        .cloned()
        .collect();
    // Each refund is sent twice, concurrently: exactly one of each pair may take effect.
    // Orders of users divisible by four are refunded by saga, the others by TCC.
    let refunds: Vec<_> =
        futures::stream::iter(to_refund.iter().flat_map(|o| [o.clone(), o.clone()]))
            .map(|order| {
                let client = embedded.client.clone();
                async move {
                    if order.user_id % 4 == 0 {
                        flows::refund_saga(&client, &order)
                            .await
                            .map(|o| ("saga", o))
                            .map_err(|e| e.to_string())
                    } else {
                        flows::refund(&client, &order)
                            .await
                            .map(|o| ("tcc", o))
                            .map_err(|e| e.to_string())
                    }
                }
            })
            .buffer_unordered(args.concurrency)
            .collect()
            .await;
    let mut refunded: BTreeMap<&str, usize> = BTreeMap::new();
    let mut replays_refused: BTreeMap<&str, usize> = BTreeMap::new();
    for outcome in refunds {
        match outcome? {
            (form, Outcome::Done(gid)) => {
                *refunded.entry(form).or_default() += 1;
                committed.push(gid);
            }
            (form, Outcome::Refused { .. }) => *replays_refused.entry(form).or_default() += 1,
        }
    }
    for (form, n) in &refunded {
        let replays = replays_refused.get(form).copied().unwrap_or(0);
        println!("refunded     {n:>6}  by {form} ({replays} replays refused)");
    }
    let refunded: usize = refunded.values().sum();
    let stock = shop.inventory.stock(SKU).await?.ok_or("sku vanished")?;
    let money = shop.payment.totals().await?;
    println!(
        "stock        sold {}  available {}   money paid {}  refunded {}",
        stock.sold, stock.available, money.paid, money.refunded
    );
    let exactly_once = refunded == to_refund.len();
    if !exactly_once {
        println!(
            "VIOLATION    {refunded} refunds took effect for {} orders",
            to_refund.len()
        );
    }
    if !embedded.finish(&committed, opening).await? || !exactly_once {
        std::process::exit(1);
    }
    Ok(())
}
