//! Points-pay: orders paid with points (TCC across the order and points services). Buyers
//! with a random points balance order a voucher priced in points; those short of points are
//! refused and keep every point. Then the shop's invariants are checked.
//!
//! ```sh
//! cargo run --release --example points_pay -- --buyers 2000
//! ```

mod support;

use std::{collections::BTreeMap, time::Instant};

use clap::Parser;
use futures::StreamExt;
use settle_participants::{
    flows::{self, Outcome, PointsPay},
    invariants::Opening,
};
use support::Embedded;

/// Runs points-paid orders and checks the shop's invariants afterwards.
#[derive(Debug, Parser)]
struct Args {
    /// Buyers, each ordering once.
    #[arg(long, default_value_t = 2_000)]
    buyers: i64,
    /// Orders in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Price of the voucher in points; every fourth buyer has one point less.
    #[arg(long, default_value_t = 300)]
    price: i64,
    /// Run on PostgreSQL: the admin URL on which fresh databases are created.
    #[arg(long)]
    postgres: Option<String>,
}

#[tokio::main]
async fn main() -> support::Result<()> {
    let args = Args::parse();
    let embedded = Embedded::start(
        args.postgres.as_deref(),
        "settle_points_pay",
        Default::default(),
    )
    .await?;
    let (short, enough): (Vec<i64>, Vec<i64>) = (1..=args.buyers).partition(|u| u % 4 == 0);
    embedded
        .shop
        .points
        .open_accounts(&enough, args.price)
        .await?;
    embedded
        .shop
        .points
        .open_accounts(&short, args.price - 1)
        .await?;
    let opening = Opening {
        money: 0,
        points: enough.len() as i64 * args.price + short.len() as i64 * (args.price - 1),
    };

    let started = Instant::now();
    let outcomes: Vec<_> = futures::stream::iter(1..=args.buyers)
        .map(|user_id| {
            let client = embedded.client.clone();
            let order = PointsPay {
                user_id,
                campaign: "points-week".to_owned(),
                sku: "VOUCHER-50".to_owned(),
                qty: 1,
                points: args.price,
            };
            async move { flows::points_pay(&client, &order).await }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();

    let mut paid = Vec::new();
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    for outcome in outcomes {
        match outcome? {
            Outcome::Done(gid) => paid.push(gid),
            Outcome::Refused {
                participant,
                reason,
            } => {
                *refused
                    .entry(format!("{participant}: {reason}"))
                    .or_default() += 1
            }
        }
    }
    println!("orders       {}", args.buyers);
    println!("paid         {}", paid.len());
    for (reason, n) in &refused {
        println!("refused      {n:>6}  {reason}");
    }
    println!(
        "throughput   {:.0} orders/s",
        args.buyers as f64 / elapsed.as_secs_f64()
    );
    let points = embedded.shop.points.totals().await?;
    println!("points       spent {}  left {}", points.paid, points.usable);
    if !embedded.finish(&paid, opening).await? {
        std::process::exit(1);
    }
    Ok(())
}
