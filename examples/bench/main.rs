//! `bench`: a load generator for Settle. It runs global transactions from many concurrent
//! workers for a fixed time (or count) after a warm-up, and reports throughput, latency from
//! Begin to the final status (p50/p90/p99/max), errors by kind and — when `settled` runs as
//! a separate process — the coordinator's CPU time and peak resident memory, as a table and
//! as one JSON line (the last line of stdout).
//!
//! With `--rate R` the load is an open loop instead: R transactions start per second,
//! whatever the answers, and the report adds the offered rate, refusals for load and their
//! latency, and whether every admitted transaction ended.
//!
//! Two workloads:
//! - `--mode noop` measures the coordinator alone: `--branches` in-process participants
//!   (`p0`, `p1`, …, tonic servers that answer every call OK at once, no database),
//!   registered with RegisterParticipant; one global transaction is Begin registering every
//!   branch in the same call (`--batched`, the default) and their Trys sent concurrently —
//!   or, with `--batched=false`, Begin and then RegisterBranch + Try for each branch
//!   (concurrently, or one after another with `--serial`) — and Commit waiting for
//!   COMMITTED.
//! - `--mode shop` runs the real flash-sale purchase (`settle_participants::flows::purchase`)
//!   against the four shop services, each on its own database, with enough stock and a
//!   distinct funded buyer per purchase.
//!
//! `--tls` runs every hop over mutual TLS, as `settled --tls-cert … --tls-client-ca …` does.
//!
//! The coordinator runs in this process by default; `--external` starts the `settled` binary
//! found next to this executable (`target/release/settled` for a release build; it is built
//! with `cargo build --release -p settle-coordinator --bin settled` when missing).
//!
//! The pieces: [`workload`] what a transaction is and the participants it needs,
//! [`process`] the coordinator in-process or as a child and its `/proc` figures,
//! [`measure`] the window, the workers and the statistics, [`report`] the printout.
//!
//! ```sh
//! cargo build --release --examples --bin settled
//! target/release/examples/bench                                   # noop, SQLite in a temp dir
//! target/release/examples/bench --postgres-admin postgres://postgres@127.0.0.1:5432/postgres
//! target/release/examples/bench --mode shop --postgres-admin postgres://postgres@127.0.0.1:5432/postgres
//! target/release/examples/bench --external --concurrency 256
//! ```

mod measure;
mod process;
mod report;
mod workload;

use std::{error::Error, path::PathBuf, sync::Arc};

use clap::{ArgAction, Parser, ValueEnum};
use settle::{Client, Credentials};
use settle_testkit::Pki;
use sqlx::{Connection, Executor};

use crate::{
    process::CoordinatorHandle,
    workload::{Prepared, shop_invariants},
};

// The same allocator as `settled`, so that the in-process coordinator measures the same.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// With --tls: the coordinator's certificate name, which participants accept phase two
/// from.
const COORDINATOR: &str = "coordinator";
/// With --tls: the name in the clients' certificates, allowed to register every
/// participant name.
const CLIENT: &str = "bench";
/// With --tls: the name in the participants' certificates.
const PARTICIPANT: &str = "participant";

/// Load generator for the Settle coordinator.
#[derive(Debug, Parser)]
struct Args {
    /// Coordinator database: sqlite://PATH or postgres://…. Default: a fresh database
    /// `{db_prefix}_coordinator` when --postgres-admin is given, else a SQLite file in a
    /// temporary directory.
    #[arg(long)]
    store: Option<String>,
    /// PostgreSQL URL of a database to connect to for CREATE DATABASE; fresh databases
    /// `{db_prefix}_*` are (re)created on its server for the coordinator (unless --store is
    /// given) and, in shop mode, for each shop service, and dropped at the end.
    #[arg(long)]
    postgres_admin: Option<String>,
    /// Prefix of the databases --postgres-admin creates. Default: `settle_bench_<pid>`, so
    /// that runs at the same time never share (or drop) each other's databases.
    #[arg(long)]
    db_prefix: Option<String>,
    /// Keep the databases --postgres-admin created instead of dropping them at the end.
    #[arg(long)]
    keep_databases: bool,
    /// What a global transaction does.
    #[arg(long, value_enum, default_value_t = Mode::Noop)]
    mode: Mode,
    /// Branches per global transaction (noop mode).
    #[arg(long, default_value_t = 4)]
    branches: usize,
    /// Register the branches with Begin itself, in one write, then send their Trys
    /// concurrently (noop). `--batched=false`: one RegisterBranch call per branch.
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true")]
    batched: bool,
    /// With --batched=false: register and Try the branches one after another instead of
    /// concurrently (noop).
    #[arg(long)]
    serial: bool,
    /// Workers, each running one global transaction at a time (closed loop; ignored with
    /// --rate).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Open loop: start this many global transactions per second whatever the answers,
    /// each in its own task, and report the offered rate, goodput, refusals by code and
    /// their latency, and whether every admitted transaction ended. Starts refused for
    /// load are not retried.
    #[arg(long)]
    rate: Option<f64>,
    /// A flag handed to the external `settled` as is (repeatable), such as
    /// `--settled-arg=--max-in-flight=256`.
    #[arg(long = "settled-arg", allow_hyphen_values = true)]
    settled_args: Vec<String>,
    /// Client connections (HTTP/2 channels) to the coordinator; workers share them round-robin.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Measured time in seconds (ignored with --count).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Measure exactly this many global transactions instead of a duration.
    #[arg(long)]
    count: Option<u64>,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Run `settled` as a separate process and report its CPU time and peak memory.
    #[arg(long)]
    external: bool,
    /// The `settled` binary for --external. Default: next to this executable.
    #[arg(long)]
    settled: Option<PathBuf>,
    /// RUST_LOG of the external `settled` (its default, info, logs every transaction).
    #[arg(long, default_value = "warn")]
    settled_log: String,
    /// Coordinator database pool size. Default: the coordinator's own default.
    #[arg(long)]
    max_connections: Option<u32>,
    /// Global transaction timeout, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// Shop mode: funded buyers created up front; each purchase uses a new one.
    #[arg(long, default_value_t = 100_000)]
    buyers: i64,
    /// Shop mode: SKUs on sale (1 = the flash sale's single hot row); buyers spread over them.
    #[arg(long, default_value_t = 1)]
    skus: i64,
    /// Shop mode: the purchase as a TCC transaction, or as a transactional message (the
    /// inventory sells in its local transaction; order, payment and reward are steps).
    #[arg(long, value_enum, default_value_t = Form::Tcc)]
    form: Form,
    /// Shop mode, message form: how long a purchase waits for its steps to be delivered
    /// (the order paid) before answering; 0 answers once the message is submitted.
    #[arg(long, default_value_t = 10_000)]
    message_wait_ms: u64,
    /// Shop services' databases, a template with `{service}`. Default: fresh databases
    /// `{db_prefix}_{service}` with --postgres-admin, else SQLite files in the temp dir.
    #[arg(long)]
    shop_store: Option<String>,
    /// Mutual TLS on every hop, with certificates from a CA made for the run: the clients
    /// and the participants are known to the coordinator by their certificates, and the
    /// coordinator to the participants by its.
    #[arg(long, conflicts_with = "rate")]
    tls: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Participants that answer at once: the coordinator alone.
    Noop,
    /// The flash-sale purchase on the four shop services.
    Shop,
}

/// How the shop's purchase is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Form {
    /// One TCC transaction (`settle_participants::flows::purchase`).
    Tcc,
    /// A transactional message (`settle_participants::flows::purchase_message`).
    Message,
}

impl Form {
    fn as_str(self) -> &'static str {
        match self {
            Form::Tcc => "tcc",
            Form::Message => "message",
        }
    }
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Noop => "noop",
            Mode::Shop => "shop",
        }
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

/// Runs the benchmark, then drops the databases it created (unless told to keep them),
/// whether it succeeded or not.
async fn run(args: Args) -> Result<()> {
    let prefix = args
        .db_prefix
        .clone()
        .unwrap_or_else(|| format!("settle_bench_{}", std::process::id()));
    let mut fresh = Vec::new();
    let result = bench(&args, &prefix, &mut fresh).await;
    if let (Some(admin), false) = (&args.postgres_admin, args.keep_databases) {
        for name in &fresh {
            if let Err(error) = drop_postgres(admin, name).await {
                eprintln!("could not drop database {name}: {error}");
            }
        }
    }
    result
}

async fn bench(args: &Args, prefix: &str, fresh: &mut Vec<String>) -> Result<()> {
    if args.concurrency == 0 || args.connections == 0 || args.branches == 0 {
        return Err("--concurrency, --connections and --branches must be at least 1".into());
    }
    if args
        .rate
        .is_some_and(|rate| !(rate.is_finite() && rate > 0.0))
    {
        return Err("--rate must be a positive number of transactions per second".into());
    }
    if !args.settled_args.is_empty() && !args.external {
        return Err("--settled-arg needs --external".into());
    }
    let dir = tempfile::tempdir()?;
    let store = match (&args.store, &args.postgres_admin) {
        (Some(url), _) => url.clone(),
        (None, Some(admin)) => {
            let name = format!("{prefix}_coordinator");
            fresh.push(name.clone());
            settle_testkit::fresh_database(admin, &name).await?
        }
        (None, None) => format!("sqlite://{}", dir.path().join("coordinator.db").display()),
    };
    let store_kind = if store.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    };

    let pki = args.tls.then(|| Pki::new("settle bench CA"));
    let (coordinator, url) = CoordinatorHandle::start(args, &store, pki.as_ref()).await?;
    let credentials = Credentials {
        tls: pki.as_ref().map(|pki| pki.client(Some(CLIENT))),
        token: None,
    };
    let mut clients = Vec::with_capacity(args.connections);
    // An open loop measures refusals: a refused start is not tried again.
    let start_tries = if args.rate.is_some() { 1 } else { 5 };
    for _ in 0..args.connections {
        clients.push(
            Client::connect_with(url.clone(), credentials.clone())
                .await?
                .with_start_tries(start_tries),
        );
    }

    // `servers` and `shop` keep the participants running until the end.
    let Prepared {
        workload,
        servers,
        shop,
    } = workload::prepare(
        args,
        &clients[0],
        &url,
        pki.as_ref(),
        dir.path(),
        prefix,
        fresh,
    )
    .await?;

    let workload = Arc::new(workload);
    let report = match args.rate {
        Some(rate) => measure::open_loop(args, &clients, &url, workload, &coordinator, rate).await,
        None => measure::measure(args, &clients, workload, &coordinator).await,
    };
    let violations = match (&shop, &report) {
        (Some(shop), Ok(_)) => Some(shop_invariants(shop, args.buyers).await),
        _ => None,
    };

    // Whatever the measurement gave, stop everything before answering.
    let resources = coordinator.resources();
    if let Some(shop) = shop {
        shop.stop().await?;
    }
    for server in servers {
        server.abort();
    }
    coordinator.stop().await?;
    let mut report = report?;
    if let Some(resources) = resources {
        report.peak_rss_mb = Some(resources.peak_rss_kb as f64 / 1024.0);
        report.rss_mb = Some(resources.rss_kb as f64 / 1024.0);
    }
    report.invariants = violations.transpose()?;
    report.print(args, store_kind);
    match &report.invariants {
        Some(violations) if !violations.is_empty() => {
            Err(format!("{} invariant violations", violations.len()).into())
        }
        _ => Ok(()),
    }
}

/// Drops `name` on the server of `admin`.
async fn drop_postgres(admin: &str, name: &str) -> Result<()> {
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    conn.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .await?;
    conn.close().await?;
    Ok(())
}
