//! The flash sale with the order created asynchronously, as a transactional message: the
//! inventory sells a unit in its own local transaction, which alone decides who gets one;
//! creating the order, taking the money, granting the reward and marking the order paid
//! follow as the message's steps, delivered at least once if and only if that sale
//! committed. More buyers than units, every fourth buyer clicking twice; then the shop's
//! invariants are checked, as for the TCC form (`flash_sale`).
//!
//! ```sh
//! cargo run --release --example async_order -- --stock 500 --buyers 2000
//! ```

mod support;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use clap::Parser;
use futures::StreamExt;
use settle_participants::{
    campaign::Campaign,
    flows::{self, Outcome, Purchase},
    invariants::Opening,
    shop,
};
use support::Embedded;

/// Runs a flash sale in the message form and checks the shop's invariants afterwards.
#[derive(Debug, Parser)]
struct Args {
    /// Units on sale.
    #[arg(long, default_value_t = 500)]
    stock: i64,
    /// Buyers, each funded for one purchase.
    #[arg(long, default_value_t = 2_000)]
    buyers: i64,
    /// Purchases in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long a purchase waits for its order to be paid before answering; 0 answers as
    /// soon as the sale committed and the message is submitted.
    #[arg(long, default_value_t = 10_000)]
    wait_ms: u64,
    /// Run on PostgreSQL: the admin URL on which fresh databases are created.
    #[arg(long)]
    postgres: Option<String>,
}

const SKU: &str = "PHONE-1";
const PRICE: i64 = 100;
const REWARD: i64 = 10;

#[tokio::main]
async fn main() -> support::Result<()> {
    let args = Args::parse();
    let embedded = Embedded::start(
        args.postgres.as_deref(),
        "settle_async_order",
        Default::default(),
    )
    .await?;
    let shop = &embedded.shop;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    // One unit per buyer, checked in the sale's own transaction: a message's steps cannot
    // be refused, so the order service's one-order-per-buyer rule must never be what
    // stops a second click.
    shop.inventory
        .define_campaign(&Campaign {
            campaign: "launch".to_owned(),
            starts_at: now - 1_000,
            ends_at: now + 3_600_000,
            per_user: 1,
        })
        .await?;
    shop.inventory.restock(SKU, args.stock).await?;
    let buyers: Vec<i64> = (1..=args.buyers).collect();
    shop.payment.open_accounts(&buyers, PRICE).await?;
    shop.points.open_accounts(&buyers, 0).await?;
    let opening = Opening {
        money: args.buyers * PRICE,
        points: 0,
    };
    // The inventory's registered name: the coordinator looks its endpoint up when it asks.
    let query_endpoint = shop::INVENTORY.to_owned();

    let mut attempts: Vec<i64> = buyers.clone();
    attempts.extend(buyers.iter().filter(|u| *u % 4 == 0));
    let wait = Duration::from_millis(args.wait_ms);
    let started = Instant::now();
    let outcomes: Vec<_> = futures::stream::iter(attempts.iter().copied())
        .map(|user_id| {
            let (client, inventory, endpoint) = (
                embedded.client.clone(),
                shop.inventory.clone(),
                query_endpoint.clone(),
            );
            let purchase = Purchase {
                user_id,
                campaign: "launch".to_owned(),
                sku: SKU.to_owned(),
                qty: 1,
                price: PRICE,
                reward: REWARD,
            };
            async move {
                let began = Instant::now();
                let outcome =
                    flows::purchase_message(&client, &inventory, &endpoint, &purchase, wait).await;
                (outcome, began.elapsed())
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();

    let mut sold = Vec::new();
    let mut latencies = Vec::new();
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    for (outcome, took) in outcomes {
        match outcome? {
            Outcome::Done(gid) => {
                sold.push(gid);
                latencies.push(took);
            }
            Outcome::Refused {
                participant,
                reason,
            } => {
                // Per-buyer details make every line distinct; keep the kind of refusal.
                let kind = if reason.contains("at most") {
                    "over the per-buyer limit"
                } else {
                    reason.as_str()
                };
                *refused.entry(format!("{participant}: {kind}")).or_default() += 1
            }
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!("attempts     {}", attempts.len());
    println!("sold         {} of {}", sold.len(), args.stock);
    for (reason, n) in &refused {
        println!("refused      {n:>6}  {reason}");
    }
    println!(
        "throughput   {:.0} attempts/s, {:.0} purchases/s",
        attempts.len() as f64 / elapsed.as_secs_f64(),
        sold.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency      p50 {:.1} ms  p99 {:.1} ms  (to the answer; {})",
        pct(0.5),
        pct(0.99),
        if args.wait_ms == 0 {
            "the order follows"
        } else {
            "the order created and paid"
        }
    );
    if !embedded.finish(&sold, opening).await? {
        std::process::exit(1);
    }
    Ok(())
}
