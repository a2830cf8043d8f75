//! A flash sale, end to end: an embedded coordinator and the four shop participants, one SKU
//! with little stock and a crowd of buyers, all at high concurrency. Prints what happened —
//! sold, refused by reason, throughput, latency — then checks every invariant of the shop
//! and exits non-zero if one fails.
//!
//! ```sh
//! cargo run --release --example flash_sale                      # SQLite in a temp directory
//! cargo run --release --example flash_sale -- --buyers 5000 --units 100
//! cargo run --release --example flash_sale -- --postgres postgres://postgres@127.0.0.1:5432/postgres
//! cargo run --release --example flash_sale -- --redis redis://127.0.0.1:6379 --inventory-replicas 2
//! ```
//!
//! With `--redis` the SKU is hot: its stock is taken in Redis before the database. Each
//! refusal's reason says where it came from: `(redis)`, `(flag)` (the in-process sold-out
//! flag) or `(database)`.

mod support;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use clap::Parser;
use futures::StreamExt;
use settle_participants::{
    flows::{self, Outcome, Purchase},
    hot::{self, Policy},
    invariants::Opening,
    shop::{self, InventoryOptions},
};
use support::Embedded;

/// Runs a flash sale and checks the shop's invariants afterwards.
#[derive(Debug, Parser)]
struct Args {
    /// Units of the SKU on sale.
    #[arg(long, default_value_t = 1_000)]
    units: i64,
    /// Buyers, each trying to buy one unit.
    #[arg(long, default_value_t = 20_000)]
    buyers: i64,
    /// Purchases in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Price of one unit.
    #[arg(long, default_value_t = 100)]
    price: i64,
    /// Money each buyer starts with; every tenth buyer starts with one unit less than the
    /// price, to exercise refusals by the payment service.
    #[arg(long, default_value_t = 1_000)]
    funds: i64,
    /// Points each buyer starts with.
    #[arg(long, default_value_t = 50)]
    points: i64,
    /// Points rewarded per purchase.
    #[arg(long, default_value_t = 10)]
    reward: i64,
    /// Every Nth buyer clicks twice (a second purchase in the same campaign is refused).
    #[arg(long, default_value_t = 50)]
    double_click_every: i64,
    /// Run on PostgreSQL: the admin URL on which fresh databases settle_flash_* are created.
    #[arg(long)]
    postgres: Option<String>,
    /// Mark the SKU hot, its stock in this Redis (`redis://127.0.0.1:6379`).
    #[arg(long)]
    redis: Option<String>,
    /// Inventory replicas on the one inventory database; buyers are spread over them.
    #[arg(long, default_value_t = 1)]
    inventory_replicas: usize,
}

const SKU: &str = "FLASH-1";

#[tokio::main]
async fn main() -> support::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let args = Args::parse();
    let inventory = InventoryOptions {
        replicas: args.inventory_replicas.max(1),
        redis: args.redis.as_ref().map(|url| hot::Config {
            url: url.clone(),
            prefix: format!("settle-flash-{}", std::process::id()),
            policy: Policy::Fallback,
        }),
        reconcile_every: None,
    };
    let embedded = Embedded::start(args.postgres.as_deref(), "settle_flash", inventory).await?;
    let shop = &embedded.shop;
    let replicas: Vec<String> = (0..shop.inventories.len())
        .map(shop::inventory_replica)
        .collect();

    shop.inventory.restock(SKU, args.units).await?;
    if args.redis.is_some() {
        shop.inventory.mark_hot(SKU).await?;
    }
    let rich: Vec<i64> = (1..=args.buyers).filter(|u| u % 10 != 0).collect();
    let poor: Vec<i64> = (1..=args.buyers).filter(|u| u % 10 == 0).collect();
    shop.payment.open_accounts(&rich, args.funds).await?;
    shop.payment.open_accounts(&poor, args.price - 1).await?;
    let users: Vec<i64> = (1..=args.buyers).collect();
    shop.points.open_accounts(&users, args.points).await?;
    let opening = Opening {
        money: rich.len() as i64 * args.funds + poor.len() as i64 * (args.price - 1),
        points: args.buyers * args.points,
    };

    println!(
        "flash sale: {} units of {SKU}, {} buyers, concurrency {}, {}, {} inventory replica(s), {}",
        args.units,
        args.buyers,
        args.concurrency,
        if args.postgres.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        replicas.len(),
        if args.redis.is_some() {
            "hot SKU in Redis"
        } else {
            "database path"
        }
    );
    let statements_before = sku_statements(shop).await;
    let client = embedded.client.clone();
    let attempts: Vec<i64> = (1..=args.buyers)
        .flat_map(|u| {
            let clicks = if args.double_click_every > 0 && u % args.double_click_every == 0 {
                2
            } else {
                1
            };
            std::iter::repeat_n(u, clicks)
        })
        .collect();
    let started = Instant::now();
    let results: Vec<(Duration, Duration, Result<Outcome, settle::client::Error>)> =
        futures::stream::iter(attempts)
            .map(|user_id| {
                let client = client.clone();
                let replica = replicas[user_id as usize % replicas.len()].clone();
                let purchase = Purchase {
                    user_id,
                    campaign: "black-friday".to_owned(),
                    sku: SKU.to_owned(),
                    qty: 1,
                    price: args.price,
                    reward: args.reward,
                };
                async move {
                    let t = Instant::now();
                    let outcome = flows::purchase_via(&client, &purchase, &replica).await;
                    (t.elapsed(), started.elapsed(), outcome)
                }
            })
            .buffer_unordered(args.concurrency)
            .collect()
            .await;
    let elapsed = started.elapsed();
    let statements = match (statements_before, sku_statements(shop).await) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };

    let mut sold = 0;
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut gids = Vec::new();
    let mut latencies: Vec<Duration> = Vec::with_capacity(results.len());
    let mut last_sale = Duration::ZERO;
    for (latency, at, outcome) in &results {
        latencies.push(*latency);
        match outcome {
            Ok(Outcome::Done(gid)) => {
                sold += 1;
                last_sale = last_sale.max(*at);
                gids.push(gid.clone());
            }
            Ok(Outcome::Refused {
                participant,
                reason,
            }) => {
                // Replicas (inventory-2, …) are counted as their service.
                let service = participant.split('-').next().unwrap_or(participant);
                *refused.entry(format!("{service}: {reason}")).or_default() += 1;
            }
            Err(error) => *errors.entry(error.to_string()).or_default() += 1,
        }
    }
    latencies.sort();
    let pct = |p| percentile(&latencies, p);
    println!("\nattempts     {}", results.len());
    println!("sold         {sold}");
    for (reason, n) in &refused {
        println!("refused      {n:>6}  {reason}");
    }
    for (error, n) in &errors {
        println!("error        {n:>6}  {error}");
    }
    // Most attempts are refused once the stock is gone: attempts/s is the load carried,
    // purchases/s the sales made.
    let secs = elapsed.as_secs_f64();
    println!(
        "throughput   {:.0} attempts/s, {:.0} purchases/s ({secs:.2} s)",
        results.len() as f64 / secs,
        sold as f64 / secs
    );
    println!(
        "latency      p50 {:?}  p99 {:?}  max {:?}",
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    if sold >= args.units {
        println!("sold out     after {:.2} s", last_sale.as_secs_f64());
    }
    let at_database: usize = refused
        .iter()
        .filter(|(reason, _)| reason.contains("(database)"))
        .map(|(_, n)| n)
        .sum();
    let stock_refusals: usize = refused
        .iter()
        .filter(|(reason, _)| reason.starts_with("inventory:"))
        .map(|(_, n)| n)
        .sum();
    println!(
        "inventory    {stock_refusals} refusals, {at_database} of them after reaching the database"
    );
    if let Some(statements) = statements {
        println!(
            "statements   {statements} on the sku table during the sale ({:.3} per attempt)",
            statements as f64 / results.len() as f64
        );
    }

    let stock = shop.inventory.stock(SKU).await?.ok_or("sku vanished")?;
    println!(
        "stock        initial {}  sold {}  available {}  reserved {}",
        stock.initial, stock.sold, stock.available, stock.reserved
    );
    let oversold = sold > args.units;
    if oversold {
        println!("VIOLATION    oversold: {sold} > {}", args.units);
    }
    if !embedded.finish(&gids, opening).await? || oversold {
        std::process::exit(1);
    }
    Ok(())
}

/// Statements that read or wrote the `sku` table so far (PostgreSQL's statistics, which
/// each backend reports within a second of going idle); `None` on SQLite.
async fn sku_statements(shop: &settle_participants::Shop) -> Option<i64> {
    let database = shop.inventory.barrier().database().clone();
    if database.dialect() != settle::db::Dialect::Postgres {
        return None;
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    sqlx::query_scalar::<_, i64>(
        "SELECT (COALESCE(seq_scan, 0) + COALESCE(idx_scan, 0))::BIGINT \
         FROM pg_stat_user_tables WHERE relname = 'sku'",
    )
    .fetch_one(database.pool())
    .await
    .ok()
}

/// The p-th percentile of sorted latencies.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}
