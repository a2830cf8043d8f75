//! `due_scan`: a benchmark (not a test) of what the recovery loop's due-work scan costs when
//! the coordinator's log holds many finished transactions (issue 5). For each database it
//! opens the coordinator store (which applies the migrations), times
//! `Store::claim_due` on a table with no finished rows, bulk-inserts finished
//! (COMMITTED/ABORTED, `next_attempt_at` NULL) transactions with one SQL statement, and
//! times the scan again; then prints the query plan, which should use the partial index
//! `global_tx_due`, and, for contrast, the time of the same search with the index not used.
//! A handful of unfinished transactions whose next attempt is an hour
//! away sit in the index throughout, so every timed scan walks the index and claims
//! nothing: the scans change no rows and can be repeated.
//!
//! ```sh
//! cargo run --release --example due_scan                       # SQLite and PostgreSQL
//! cargo run --release --example due_scan -- --databases sqlite --rows 100000
//! cargo run --release --example due_scan -- --postgres-admin postgres://postgres@127.0.0.1:5432/postgres
//! ```

use std::{
    error::Error,
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};
use settle_coordinator::store::{Dialect, Store};
use sqlx::{AnyConnection, Connection, Executor, Row};

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// Times the coordinator's due-work scan on an empty log and on one with many finished
/// transactions.
#[derive(Debug, Parser)]
struct Args {
    /// Databases to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Db::Sqlite, Db::Postgres])]
    databases: Vec<Db>,
    /// PostgreSQL URL to connect to for CREATE DATABASE; a fresh database
    /// `settle_due_scan_<pid>` is created on its server and dropped at the end.
    #[arg(
        long,
        env = "SETTLE_TEST_POSTGRES",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_admin: String,
    /// Finished transactions to insert.
    #[arg(long, default_value_t = 1_000_000)]
    rows: i64,
    /// Unfinished transactions, not yet due, present in both measurements.
    #[arg(long, default_value_t = 100)]
    pending: i64,
    /// Timed scans per measurement.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// `limit` of each claim, as the recovery loop's batch.
    #[arg(long, default_value_t = 100)]
    batch: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Db {
    Sqlite,
    Postgres,
}

/// The statement `Store::claim_due` runs, for EXPLAIN (mirrors `claim_due` in
/// coordinator/src/store/mod.rs at the time of writing; `{now}` is a bound constant here).
const CLAIM_DUE: &str = "UPDATE global_tx SET owner = 'explain', version = version + 1, \
     lease_until = $1 + 30000, next_attempt_at = $1 + 30000, updated_at = $1 \
     WHERE gid IN (SELECT gid FROM global_tx \
                   WHERE status NOT IN ('COMMITTED', 'ABORTED') AND next_attempt_at <= $1 \
                   ORDER BY next_attempt_at LIMIT 100 {skip_locked}) \
         AND status NOT IN ('COMMITTED', 'ABORTED') AND next_attempt_at <= $1";

fn main() -> Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pg_name = format!("settle_due_scan_{}", std::process::id());
    let measured = measure(&args, dir.path(), &pg_name).await;
    if args.databases.contains(&Db::Postgres) {
        let mut conn = sqlx::PgConnection::connect(&args.postgres_admin).await?;
        conn.execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {pg_name} WITH (FORCE)"
        )))
        .await?;
        conn.close().await?;
    }
    measured
}

/// Measures every database in `args` and prints the tables.
async fn measure(args: &Args, dir: &std::path::Path, pg_name: &str) -> Result<()> {
    let mut results = Vec::new();
    let mut plans = Vec::new();
    let mut contrasts = Vec::new();
    for db in &args.databases {
        let url = match db {
            Db::Sqlite => format!("sqlite://{}", dir.join("due_scan.db").display()),
            Db::Postgres => settle_testkit::fresh_database(&args.postgres_admin, pg_name).await?,
        };
        eprintln!("{db:?}: opening the store");
        let store = Store::open(&url, 4).await?;
        let mut conn = AnyConnection::connect(&url).await?;
        let now = store.now().await?;

        insert_pending(&mut conn, args.pending, now).await?;
        analyze(&mut conn).await?;
        results.push(Measured {
            db: *db,
            finished: 0,
            pending: args.pending,
            insert: None,
            scans: time_scans(&store, args).await?,
        });

        eprintln!("{db:?}: inserting {} finished transactions", args.rows);
        let started = Instant::now();
        insert_finished(&mut conn, store.dialect(), args.rows, now).await?;
        analyze(&mut conn).await?;
        let insert = started.elapsed();
        results.push(Measured {
            db: *db,
            finished: args.rows,
            pending: args.pending,
            insert: Some(insert),
            scans: time_scans(&store, args).await?,
        });
        plans.push((*db, explain(&mut conn, store.dialect(), now).await?));
        contrasts.push((
            *db,
            time_without_index(&mut conn, store.dialect(), now, args).await?,
        ));
        conn.close().await?;
        store.close().await;
    }

    println!(
        "\n{:<9} {:>10} {:>8} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "database", "finished", "pending", "runs", "median ms", "p99 ms", "max ms", "insert s"
    );
    for m in &results {
        let mut s = m.scans.clone();
        s.sort();
        println!(
            "{:<9} {:>10} {:>8} {:>6} {:>10.3} {:>10.3} {:>10.3} {:>10}",
            format!("{:?}", m.db).to_lowercase(),
            m.finished,
            m.pending,
            s.len(),
            ms(percentile(&s, 0.50)),
            ms(percentile(&s, 0.99)),
            ms(percentile(&s, 1.0)),
            m.insert
                .map_or_else(|| "-".to_owned(), |d| format!("{:.1}", d.as_secs_f64())),
        );
    }
    println!(
        "\nfor contrast, the claim's inner SELECT with the index not used, {} finished rows:",
        args.rows
    );
    for (db, scans) in contrasts {
        let mut s = scans;
        s.sort();
        println!(
            "{:<9} {:>10} {:>8} {:>6} {:>10.3} {:>10.3} {:>10.3}",
            format!("{db:?}").to_lowercase(),
            args.rows,
            args.pending,
            s.len(),
            ms(percentile(&s, 0.50)),
            ms(percentile(&s, 0.99)),
            ms(percentile(&s, 1.0)),
        );
    }
    for (db, plan) in plans {
        println!(
            "\nplan of the claim on {db:?} with {} finished rows:",
            args.rows
        );
        for line in plan {
            println!("  {line}");
        }
    }
    Ok(())
}

/// One series of timed scans.
struct Measured {
    db: Db,
    finished: i64,
    pending: i64,
    insert: Option<Duration>,
    scans: Vec<Duration>,
}

/// Times `runs` claims (after a few untimed ones); each must claim nothing.
async fn time_scans(store: &Store, args: &Args) -> Result<Vec<Duration>> {
    for _ in 0..5 {
        store.claim_due("due-scan", 30_000, args.batch).await?;
    }
    let mut scans = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let started = Instant::now();
        let claimed = store.claim_due("due-scan", 30_000, args.batch).await?;
        scans.push(started.elapsed());
        if !claimed.is_empty() {
            return Err(format!("the scan claimed {} transactions", claimed.len()).into());
        }
    }
    Ok(scans)
}

/// Unfinished transactions that are due only in an hour: in the partial index, never claimed.
async fn insert_pending(conn: &mut AnyConnection, n: i64, now: i64) -> Result<()> {
    for i in 0..n {
        sqlx::query(
            "INSERT INTO global_tx (gid, mode, status, deadline, next_attempt_at, \
                 created_at, updated_at) \
             VALUES ($1, 'TCC', 'TRYING', $2, $2, $3, $3)",
        )
        .bind(format!("pending-{i}"))
        .bind(now + 3_600_000)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// `n` finished transactions in one statement: nine in ten COMMITTED, one ABORTED.
async fn insert_finished(
    conn: &mut AnyConnection,
    dialect: Dialect,
    n: i64,
    now: i64,
) -> Result<()> {
    const COLUMNS: &str = "INSERT INTO global_tx (gid, mode, status, deadline, next_attempt_at, \
         attempts, version, branch_count, labels, decided_at, created_at, updated_at)";
    const VALUES: &str = "'done-' || x, 'TCC', \
         CASE WHEN x % 10 = 0 THEN 'ABORTED' ELSE 'COMMITTED' END, \
         $1 - 60000 + 30000, NULL, 0, 2, 4, '{}', $1 - 60000 + 10, $1 - 60000, $1 - 60000 + 20";
    let sql = match dialect {
        Dialect::Postgres => {
            format!("{COLUMNS} SELECT {VALUES} FROM generate_series(1, $2::BIGINT) AS g(x)")
        }
        Dialect::Sqlite => format!(
            "{COLUMNS} WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $2) \
             SELECT {VALUES} FROM c"
        ),
    };
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(now)
        .bind(n)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Times the claim's inner SELECT with the partial index out of the picture (SQLite:
/// `NOT INDEXED`; PostgreSQL: index scans disabled for the session), to show what the index
/// saves. A tenth of `runs`: each is a full scan.
async fn time_without_index(
    conn: &mut AnyConnection,
    dialect: Dialect,
    now: i64,
    args: &Args,
) -> Result<Vec<Duration>> {
    let table = match dialect {
        Dialect::Postgres => {
            conn.execute("SET enable_indexscan = off; SET enable_bitmapscan = off; SET enable_indexonlyscan = off")
                .await?;
            "global_tx"
        }
        Dialect::Sqlite => "global_tx NOT INDEXED",
    };
    let sql = format!(
        "SELECT gid FROM {table} WHERE status NOT IN ('COMMITTED', 'ABORTED') \
         AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2"
    );
    let mut scans = Vec::new();
    for _ in 0..(args.runs / 10).max(3) {
        let started = Instant::now();
        let found = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(now)
            .bind(args.batch)
            .fetch_all(&mut *conn)
            .await?;
        scans.push(started.elapsed());
        if !found.is_empty() {
            return Err(format!("{} transactions were due", found.len()).into());
        }
    }
    if dialect == Dialect::Postgres {
        conn.execute("RESET enable_indexscan; RESET enable_bitmapscan; RESET enable_indexonlyscan")
            .await?;
    }
    Ok(scans)
}

/// Fresh planner statistics, as autovacuum (PostgreSQL) would eventually gather.
async fn analyze(conn: &mut AnyConnection) -> Result<()> {
    conn.execute("ANALYZE global_tx").await?;
    Ok(())
}

/// The plan of the claim statement (PostgreSQL: executed, with buffers; it claims nothing).
async fn explain(conn: &mut AnyConnection, dialect: Dialect, now: i64) -> Result<Vec<String>> {
    let (prefix, skip_locked) = match dialect {
        Dialect::Postgres => (
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) ",
            "FOR UPDATE SKIP LOCKED",
        ),
        Dialect::Sqlite => ("EXPLAIN QUERY PLAN ", ""),
    };
    let sql = format!(
        "{prefix}{}",
        CLAIM_DUE
            .replace("{skip_locked}", skip_locked)
            .replace("$1", &now.to_string())
    );
    let rows = conn.fetch_all(sqlx::AssertSqlSafe(sql)).await?;
    let mut lines = Vec::new();
    for row in rows {
        lines.push(match dialect {
            Dialect::Postgres => row.try_get::<String, _>(0)?,
            // id, parent, notused, detail
            Dialect::Sqlite => format!(
                "{} {}",
                row.try_get::<i64, _>(0)?,
                row.try_get::<String, _>(3)?
            ),
        });
    }
    Ok(lines)
}

/// Nearest-rank percentile of sorted durations.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
