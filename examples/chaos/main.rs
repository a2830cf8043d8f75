//! The chaos run: the shop under load on two `settled` sharing one PostgreSQL database,
//! with a fault schedule drawn from `--seed` (kills, pauses longer than the lease,
//! terminated database connections, and drops, delays, resets and black holes on the
//! links), then a drain and the checks of every invariant. On a violation it prints the
//! seed and the schedule that replays it, and exits with 1.
//!
//! ```text
//! cargo build --workspace --examples
//! cargo run --example chaos -- --seed 7 --faults 1000 --duration 10m
//! ```
//!
//! It needs PostgreSQL and Redis (`--postgres`, `--redis`), and `settled` and
//! `settle-participants` built beside it. It drops and creates the databases `chaos_*`:
//! one run at a time per PostgreSQL.
//!
//! The seed fixes the faults and their offsets, not the interleaving of the load with
//! them: a replay hits the same faults at the same moments, and reproduces a violation
//! the way a flaky system test does, by being run again, usually within a few runs.

mod check;
mod cluster;
mod load;
mod proxy;
mod schedule;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Parser;
use settle::Client;
use settle_participants::{
    invariants::Opening, inventory::Inventory, order::Orders, payment::Payment, points::Points,
    shop,
};
use sqlx::postgres::PgPoolOptions;

use crate::{
    check::ShopDbs,
    cluster::{Cluster, Databases, SERVICES, Settings},
    load::{COLD_SKU, HOT_SKU, Load, MESSAGE_SKU, USERS},
    schedule::Schedule,
};

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Money and points each buyer opens with.
const MONEY: i64 = 1_000_000;
const POINTS: i64 = 100_000;

/// Chaos run of Settle and the shop.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// Seed of the fault schedule (default: from the clock, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// How many faults.
    #[arg(long, default_value_t = 30)]
    faults: usize,
    /// How long the load runs, faults spread over it: `90s`, `10m`, `500ms`.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Concurrent initiators (half on each coordinator).
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Longest wait, after the load, for every transaction to become final.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    drain: Duration,
    /// The coordinators' lease; pauses outlast it.
    #[arg(long, default_value_t = 2_000)]
    lease_ms: u64,
    /// PostgreSQL admin URL; fresh databases chaos_* are created on it.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres: String,
    /// Redis for the inventory's hot SKU.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
}

fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("not a duration: {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("not a duration: {s:?} (use ms, s or m)")),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let lease = Duration::from_millis(args.lease_ms);
    let schedule = Schedule::draw(seed, args.faults, args.duration, lease);
    println!(
        "chaos: seed {seed}, {} faults over {:?}, {} workers, lease {:?}",
        args.faults, args.duration, args.workers, lease
    );

    let mut dbs = Vec::new();
    for service in SERVICES {
        dbs.push(
            settle_testkit::fresh_database(&args.postgres, &format!("chaos_{service}")).await?,
        );
    }
    let databases = Databases {
        coordinator: settle_testkit::fresh_database(&args.postgres, "chaos_coordinator").await?,
        shop: format!(
            "{}/chaos_{{service}}",
            args.postgres
                .rsplit_once('/')
                .map_or(args.postgres.as_str(), |(b, _)| b)
        ),
    };
    let url = |service| shop::database_url(&databases.shop, service);
    let shop = ShopDbs {
        inventory: Inventory::open(&url(shop::INVENTORY)).await?,
        orders: Orders::open(&url(shop::ORDER)).await?,
        payment: Payment::open(&url(shop::PAYMENT)).await?,
        points: Points::open(&url(shop::POINTS)).await?,
        barriers: {
            let mut pools = Vec::new();
            for (service, db) in SERVICES.iter().zip(&dbs) {
                pools.push((
                    *service,
                    PgPoolOptions::new().max_connections(2).connect(db).await?,
                ));
            }
            pools
        },
    };
    shop.inventory.restock(HOT_SKU, 3_000).await?;
    shop.inventory.restock(COLD_SKU, 5_000).await?;
    shop.inventory.restock(MESSAGE_SKU, 1_000_000).await?;
    let users: Vec<i64> = (1..=USERS).collect();
    shop.payment.open_accounts(&users, MONEY).await?;
    shop.points.open_accounts(&users, POINTS).await?;
    let opening = Opening {
        money: USERS * MONEY,
        points: USERS * POINTS,
    };

    let logs = tempfile::Builder::new().prefix("settle-chaos-").tempdir()?;
    let settings = Settings {
        lease_ms: args.lease_ms,
        hot_sku: HOT_SKU.to_owned(),
        redis: args.redis.clone(),
        redis_prefix: format!("settle-chaos-{}-{seed}", std::process::id()),
    };
    let cluster = Arc::new(Cluster::start(&databases, &settings, logs.path()).await?);
    let coordinator_db = PgPoolOptions::new()
        .max_connections(4)
        .connect(&databases.coordinator)
        .await?;
    let mut clients = Vec::new();
    for i in 0..cluster::COORDINATORS.len() {
        clients.push(
            Client::connect(cluster.coordinator_url(i))
                .await?
                .with_try_timeout(Duration::from_secs(3)),
        );
    }

    let start = Instant::now();
    let load = Load::new(clients, shop.inventory.clone(), shop.orders.clone(), start);
    let workers = load.spawn(args.workers, seed);
    let injecting = tokio::spawn({
        let (schedule, cluster, db) = (schedule.clone(), cluster.clone(), coordinator_db.clone());
        async move { schedule.inject(cluster, db, start).await }
    });
    tokio::time::sleep_until((start + args.duration).into()).await;
    let injected = injecting.await?;
    load.stop();
    for worker in workers {
        worker.await?;
    }
    let loaded = start.elapsed();

    let drain_started = Instant::now();
    let mut left = check::unfinished(&coordinator_db).await?;
    while left > 0 && drain_started.elapsed() < args.drain {
        tokio::time::sleep(Duration::from_millis(250)).await;
        left = check::unfinished(&coordinator_db).await?;
    }
    let drained = drain_started.elapsed();

    let mut violations = injected.failures.clone();
    for process in cluster.coordinators.iter().chain(&cluster.participants) {
        violations.extend(process.lock().await.exited());
    }
    violations.extend(check::violations(&coordinator_db, &shop, opening).await?);

    report(
        &injected,
        &load,
        loaded,
        drained,
        left,
        &check::outcomes(&coordinator_db).await?,
    );
    drop(cluster);
    if violations.is_empty() {
        println!("invariants   all hold");
        return Ok(());
    }
    for v in &violations {
        println!("VIOLATION    {v}");
    }
    println!("\nseed {seed}; replay with:");
    let release = std::env::current_exe()
        .is_ok_and(|exe| exe.components().any(|c| c.as_os_str() == "release"));
    println!(
        "  cargo run{} --example chaos -- --seed {seed} --faults {} --duration {}ms --workers {} --lease-ms {}",
        if release { " --release" } else { "" },
        args.faults,
        args.duration.as_millis(),
        args.workers,
        args.lease_ms
    );
    println!("schedule:");
    for fault in &schedule.faults {
        println!("  {fault}");
    }
    println!("logs kept in {}", logs.keep().display());
    std::process::exit(1);
}

fn report(
    injected: &schedule::Injected,
    load: &Load,
    loaded: Duration,
    drained: Duration,
    left: i64,
    outcomes: &BTreeMap<(String, String), i64>,
) {
    let total: usize = injected.by_kind.values().sum();
    println!("\nfaults       {total} in {:.0} s", loaded.as_secs_f64());
    for (kind, n) in &injected.by_kind {
        println!("  {kind:<22} {n}");
    }
    println!("  (backends terminated: {})", injected.terminated);
    for (kind, took) in &injected.restarts {
        println!(
            "restart      {kind}: listening again after median {} ms, max {} ms",
            median(took).as_millis(),
            took.iter().max().copied().unwrap_or_default().as_millis()
        );
    }
    // Recovery: from a fault's end to the next flow that completed.
    let completions = load.completions();
    let mut recovery: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for (kind, ended) in &injected.ended_ms {
        let i = completions.partition_point(|c| c < ended);
        if let Some(next) = completions.get(i) {
            recovery
                .entry(kind)
                .or_default()
                .push(Duration::from_millis(next - ended));
        }
    }
    println!("recovery     from a fault's end to the next completed flow:");
    for (kind, took) in &recovery {
        println!(
            "  {kind:<22} median {} ms, max {} ms",
            median(took).as_millis(),
            took.iter().max().copied().unwrap_or_default().as_millis()
        );
    }
    println!("flows        done / refused / failed / gave up (initiator's view)");
    for (kind, t) in load.tallies() {
        println!(
            "  {kind:<27} {} / {} / {} / {}",
            t.done, t.refused, t.failed, t.gave_up
        );
    }
    println!("transactions (coordinator's log)");
    for ((mode, status), n) in outcomes {
        println!("  {mode:<8} {status:<12} {n}");
    }
    println!(
        "drain        {:.1} s, {left} unfinished at its end",
        drained.as_secs_f64()
    );
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}
