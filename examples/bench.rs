//! `bench`: a load generator for Settle. It runs global transactions from many concurrent
//! workers for a fixed time (or count) after a warm-up, and reports throughput, latency from
//! Begin to the final status (p50/p90/p99/max), errors by kind and — when `settled` runs as
//! a separate process — the coordinator's CPU time and peak resident memory, as a table and
//! as one JSON line (the last line of stdout).
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
//! The coordinator runs in this process by default; `--external` starts the `settled` binary
//! found next to this executable (`target/release/settled` for a release build; it is built
//! with `cargo build --release -p settle-coordinator --bin settled` when missing).
//!
//! ```sh
//! cargo build --release -p settle --examples -p settle-coordinator --bin settled
//! target/release/examples/bench                                   # noop, SQLite in a temp dir
//! target/release/examples/bench --postgres-admin postgres://postgres@127.0.0.1:5432/postgres
//! target/release/examples/bench --mode shop --postgres-admin postgres://postgres@127.0.0.1:5432/postgres
//! target/release/examples/bench --external --concurrency 256
//! ```

#[path = "support/postgres.rs"]
mod postgres;

use std::{
    collections::BTreeMap,
    error::Error,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::{ArgAction, Parser, ValueEnum};
use settle::{
    Client,
    client::{BeginOptions, BranchSpec, Status},
};
use settle_coordinator::{Config, Coordinator, Running};
use settle_participants::{
    Shop,
    flows::{self, Outcome, Purchase},
    invariants::{self, Opening},
};
use settle_proto::v1::{
    self as pb,
    participant_server::{Participant, ParticipantServer},
};
use sqlx::{Connection, Executor};
use tokio::net::TcpListener;

// The same allocator as `settled`, so that the in-process coordinator measures the same.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

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
    /// Workers, each running one global transaction at a time.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
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
    /// Shop services' databases, a template with `{service}`. Default: fresh databases
    /// `{db_prefix}_{service}` with --postgres-admin, else SQLite files in the temp dir.
    #[arg(long)]
    shop_store: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Participants that answer at once: the coordinator alone.
    Noop,
    /// The flash-sale purchase on the four shop services.
    Shop,
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
    let dir = tempfile::tempdir()?;
    let store = match (&args.store, &args.postgres_admin) {
        (Some(url), _) => url.clone(),
        (None, Some(admin)) => {
            let name = format!("{prefix}_coordinator");
            fresh.push(name.clone());
            postgres::fresh_database(admin, &name).await?
        }
        (None, None) => format!("sqlite://{}", dir.path().join("coordinator.db").display()),
    };
    let store_kind = if store.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    };

    // The coordinator: in this process, or `settled` as a child.
    let (coordinator, url) = if args.external {
        let settled = Settled::start(args, &store)?;
        let url = settled.url.clone();
        (CoordinatorHandle::External(settled), url)
    } else {
        let mut config = Config {
            database: store.clone(),
            ..Config::default()
        };
        if let Some(n) = args.max_connections {
            config.max_connections = n;
        }
        let running = Coordinator::open(config)
            .await?
            .spawn("127.0.0.1:0".parse()?)
            .await?;
        let url = running.url();
        (CoordinatorHandle::InProcess(running), url)
    };
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        clients.push(Client::connect(url.clone()).await?);
    }
    let client = clients[0].clone();

    // The participants. `servers` and `shop` keep them running until the end.
    let mut servers = Vec::new();
    let mut shop = None;
    let workload = match args.mode {
        Mode::Noop => {
            let mut names = Vec::new();
            for i in 0..args.branches {
                let name = format!("p{i}");
                let (endpoint, server) = noop_participant().await?;
                client
                    .coordinator()
                    .register_participant(pb::RegisterParticipantRequest {
                        name: name.clone(),
                        endpoint,
                    })
                    .await?;
                servers.push(server);
                names.push(name);
            }
            Workload::Noop {
                names: Arc::new(names),
                batched: args.batched,
                serial: args.serial,
                timeout: Duration::from_millis(args.timeout_ms),
            }
        }
        Mode::Shop => {
            let template = match (&args.shop_store, &args.postgres_admin) {
                (Some(t), _) => t.clone(),
                (None, Some(admin)) => {
                    for service in settle_participants::shop::SERVICES {
                        let name = format!("{prefix}_{service}");
                        fresh.push(name.clone());
                        postgres::fresh_database(admin, &name).await?;
                    }
                    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                    format!("{base}/{prefix}_{{service}}")
                }
                (None, None) => format!("sqlite://{}/{{service}}.db", dir.path().display()),
            };
            let started =
                Shop::start(&template, &url, std::net::Ipv4Addr::LOCALHOST.into()).await?;
            let skus = args.skus.max(1);
            for s in 0..skus {
                started
                    .inventory
                    .restock(&sku(s), args.buyers / skus + 1)
                    .await?;
            }
            let users: Vec<i64> = (1..=args.buyers).collect();
            started.payment.open_accounts(&users, PRICE).await?;
            started.points.open_accounts(&users, 0).await?;
            shop = Some(started);
            Workload::Shop {
                next_buyer: Arc::new(AtomicI64::new(1)),
                buyers: args.buyers,
                skus,
            }
        }
    };

    let report = measure(args, &clients, Arc::new(workload), &coordinator).await;
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

/// The shop's invariants (`settle_participants::invariants`) once the last purchases'
/// phase two is done: checked until they hold, for at most 30 s.
async fn shop_invariants(shop: &Shop, buyers: i64) -> Result<Vec<String>> {
    let opening = Opening {
        money: buyers * PRICE,
        points: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let violations = invariants::check(shop, opening).await?;
        if violations.is_empty() || Instant::now() > deadline {
            return Ok(violations);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const PRICE: i64 = 100;
const REWARD: i64 = 10;

fn sku(n: i64) -> String {
    format!("BENCH-{n}")
}

/// What one global transaction is.
enum Workload {
    Noop {
        names: Arc<Vec<String>>,
        batched: bool,
        serial: bool,
        timeout: Duration,
    },
    Shop {
        next_buyer: Arc<AtomicI64>,
        buyers: i64,
        skus: i64,
    },
}

impl Workload {
    /// Runs one global transaction; `Err` is the error kind.
    async fn run_one(&self, client: &Client) -> std::result::Result<(), String> {
        match self {
            Workload::Noop {
                names,
                batched: true,
                timeout,
                ..
            } => batched_noop_transaction(client, names, *timeout).await,
            Workload::Noop {
                names,
                batched: false,
                serial,
                timeout,
            } => noop_transaction(client, names, *serial, *timeout).await,
            Workload::Shop {
                next_buyer,
                buyers,
                skus,
                ..
            } => {
                let user_id = next_buyer.fetch_add(1, Ordering::Relaxed);
                if user_id > *buyers {
                    return Err("buyers exhausted (raise --buyers)".to_owned());
                }
                let purchase = Purchase {
                    user_id,
                    campaign: "bench".to_owned(),
                    sku: sku(user_id % skus),
                    qty: 1,
                    price: PRICE,
                    reward: REWARD,
                };
                match flows::purchase(client, &purchase).await {
                    Ok(Outcome::Done(_)) => Ok(()),
                    Ok(Outcome::Refused { participant, .. }) => {
                        Err(format!("refused by {participant}"))
                    }
                    Err(error) => Err(error_kind(&error)),
                }
            }
        }
    }
}

/// Begin registering every branch, Try on all of them concurrently, Commit waiting for the
/// final status.
async fn batched_noop_transaction(
    client: &Client,
    names: &[String],
    timeout: Duration,
) -> std::result::Result<(), String> {
    let mut tx = client
        .begin_with(BeginOptions {
            timeout,
            branches: names
                .iter()
                .map(|name| BranchSpec::raw(name, "noop", Bytes::new()))
                .collect(),
            ..BeginOptions::default()
        })
        .await
        .map_err(|e| error_kind(&e))?;
    if let Err(error) = tx.try_all().await {
        let kind = error_kind(&error);
        let _ = tx.abort(&error.to_string()).await;
        return Err(kind);
    }
    commit(tx).await
}

/// Commits, expecting the final status within the client's commit wait.
async fn commit(tx: settle::Transaction) -> std::result::Result<(), String> {
    match tx.commit().await {
        Ok(Status::Committed) => Ok(()),
        Ok(other) => Err(format!("commit answered {}", other.as_str_name())),
        Err(error) => Err(error_kind(&error)),
    }
}

/// Begin, RegisterBranch + Try on every participant, Commit waiting for the final status.
async fn noop_transaction(
    client: &Client,
    names: &[String],
    serial: bool,
    timeout: Duration,
) -> std::result::Result<(), String> {
    let tx = client.begin(timeout).await.map_err(|e| error_kind(&e))?;
    let tried = if serial {
        let mut tried = Ok(());
        for name in names {
            if let Err(error) = tx.try_branch_raw(name, "noop", Bytes::new()).await {
                tried = Err(error);
                break;
            }
        }
        tried
    } else {
        futures::future::join_all(
            names
                .iter()
                .map(|name| tx.try_branch_raw(name, "noop", Bytes::new())),
        )
        .await
        .into_iter()
        .find_map(|r| r.err())
        .map_or(Ok(()), Err)
    };
    if let Err(error) = tried {
        let kind = error_kind(&error);
        let _ = tx.abort(&error.to_string()).await;
        return Err(kind);
    }
    commit(tx).await
}

/// The kind of an SDK error: who answered, and the gRPC code.
fn error_kind(error: &settle::client::Error) -> String {
    use settle::client::Error as E;
    match error {
        E::Refused { participant, .. } => format!("refused by {participant}"),
        E::Coordinator(status) => format!("coordinator {:?}", status.code()),
        E::Participant { status, .. } => format!("participant {:?}", status.code()),
        E::Connect(_) => "connect".to_owned(),
        E::InvalidUrl(_) => "invalid URL".to_owned(),
        E::Payload(_) => "payload".to_owned(),
    }
}

/// A participant that answers every call OK at once.
#[derive(Debug, Clone, Copy)]
struct Noop;

#[tonic::async_trait]
impl Participant for Noop {
    async fn r#try(
        &self,
        _: tonic::Request<pb::BranchRequest>,
    ) -> std::result::Result<tonic::Response<pb::BranchResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::BranchResponse {}))
    }
    async fn confirm(
        &self,
        _: tonic::Request<pb::BranchRequest>,
    ) -> std::result::Result<tonic::Response<pb::BranchResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::BranchResponse {}))
    }
    async fn cancel(
        &self,
        _: tonic::Request<pb::BranchRequest>,
    ) -> std::result::Result<tonic::Response<pb::BranchResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::BranchResponse {}))
    }
    async fn execute(
        &self,
        _: tonic::Request<pb::BranchRequest>,
    ) -> std::result::Result<tonic::Response<pb::BranchResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::BranchResponse {}))
    }
    async fn compensate(
        &self,
        _: tonic::Request<pb::BranchRequest>,
    ) -> std::result::Result<tonic::Response<pb::BranchResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::BranchResponse {}))
    }
}

/// Serves a [`Noop`] participant on a free local port; returns its URL. Accepted connections
/// get TCP_NODELAY (tonic applies its own setting only to listeners it binds), or small
/// replies could wait out a delayed ACK.
async fn noop_participant() -> Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(ParticipantServer::new(Noop))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            )
            .await;
        if let Err(error) = served {
            eprintln!("noop participant {addr} failed: {error}");
        }
    });
    Ok((format!("http://{addr}"), server))
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

/// The coordinator under test.
enum CoordinatorHandle {
    InProcess(Running),
    External(Settled),
}

impl CoordinatorHandle {
    /// CPU seconds used so far by the process that runs the coordinator.
    fn cpu_seconds(&self) -> Option<f64> {
        match self {
            CoordinatorHandle::InProcess(_) => None,
            CoordinatorHandle::External(settled) => {
                proc_cpu_seconds(&format!("/proc/{}/stat", settled.child.id()))
            }
        }
    }

    fn resources(&self) -> Option<Memory> {
        match self {
            CoordinatorHandle::InProcess(_) => None,
            CoordinatorHandle::External(settled) => {
                proc_memory(&format!("/proc/{}/status", settled.child.id()))
            }
        }
    }

    async fn stop(self) -> Result<()> {
        match self {
            CoordinatorHandle::InProcess(running) => Ok(running.stop().await?),
            CoordinatorHandle::External(mut settled) => {
                settled.stop();
                Ok(())
            }
        }
    }
}

/// `settled` as a child process, killed on drop.
struct Settled {
    child: Child,
    url: String,
}

impl Settled {
    fn start(args: &Args, store: &str) -> Result<Settled> {
        let binary = match &args.settled {
            Some(path) => path.clone(),
            None => find_settled()?,
        };
        let mut command = Command::new(&binary);
        command
            .args(["--listen", "127.0.0.1:0", "--database", store])
            .env("RUST_LOG", &args.settled_log)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(n) = args.max_connections {
            command.args(["--max-connections", &n.to_string()]);
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let stdout = child.stdout.take().ok_or("settled has no stdout")?;
        let mut settled = Settled {
            child,
            url: String::new(),
        };
        let mut lines = BufReader::new(stdout);
        let mut first = String::new();
        lines.read_line(&mut first)?;
        let addr = first
            .trim()
            .strip_prefix("settled listening on ")
            .ok_or_else(|| format!("settled did not start; it said {first:?}"))?;
        settled.url = format!("http://{}", addr.parse::<SocketAddr>()?);
        // Keep draining its stdout (logs) so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut line = String::new();
            while matches!(lines.read_line(&mut line), Ok(n) if n > 0) {
                eprint!("settled: {line}");
                line.clear();
            }
        });
        Ok(settled)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Settled {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `settled` next to this executable (`target/<profile>/examples/bench` →
/// `target/<profile>/settled`), built with cargo when missing.
fn find_settled() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let examples = exe.parent().ok_or("no executable directory")?;
    let profile_dir = if examples.file_name().is_some_and(|n| n == "examples") {
        examples.parent().ok_or("no profile directory")?
    } else {
        examples
    };
    let settled = profile_dir.join("settled");
    if settled.exists() {
        return Ok(settled);
    }
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    eprintln!("{} is missing; building it with cargo", settled.display());
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cargo.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "-p",
        "settle-coordinator",
        "--bin",
        "settled",
    ]);
    if release {
        cargo.arg("--release");
    }
    if !cargo.status()?.success() || !settled.exists() {
        return Err(format!("could not build {}", settled.display()).into());
    }
    Ok(settled)
}

/// utime + stime of a process from `/proc/PID/stat`, in seconds.
fn proc_cpu_seconds(stat: &str) -> Option<f64> {
    let text = std::fs::read_to_string(stat).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let fields: Vec<&str> = text
        .get(text.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    // Fields 14 and 15 of the file; index 0 here is field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// The kernel's clock tick (USER_HZ): `getconf CLK_TCK`, 100 on Linux.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Resident memory of a process, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy)]
struct Memory {
    peak_rss_kb: u64,
    rss_kb: u64,
}

fn proc_memory(status: &str) -> Option<Memory> {
    let text = std::fs::read_to_string(status).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some(Memory {
        peak_rss_kb: field("VmHWM:")?,
        rss_kb: field("VmRSS:")?,
    })
}

/// When to measure: from `measure_from` until `end` (duration) or until `count`
/// transactions have been started after `measure_from`.
struct Plan {
    measure_from: Instant,
    end: Option<Instant>,
    count: Option<u64>,
    tickets: AtomicU64,
}

/// What one worker saw.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
    last_done: Option<Instant>,
    warmup: u64,
}

async fn worker(client: Client, workload: Arc<Workload>, plan: Arc<Plan>) -> Tally {
    let mut tally = Tally::default();
    loop {
        let started = Instant::now();
        if plan.end.is_some_and(|end| started >= end) {
            break;
        }
        let ticketed = started >= plan.measure_from && plan.count.is_some();
        if ticketed
            && plan
                .count
                .is_some_and(|count| plan.tickets.fetch_add(1, Ordering::Relaxed) >= count)
        {
            break;
        }
        let result = workload.run_one(&client).await;
        let done = Instant::now();
        let measured = match plan.end {
            // Duration: every transaction that completed inside the window.
            Some(end) => done >= plan.measure_from && done <= end,
            // Count: every transaction that drew a ticket.
            None => ticketed,
        };
        if !measured {
            tally.warmup += 1;
            continue;
        }
        tally.last_done = Some(tally.last_done.map_or(done, |t| t.max(done)));
        match result {
            Ok(()) => tally
                .latencies_us
                .push(done.duration_since(started).as_micros() as u64),
            Err(kind) => *tally.errors.entry(kind).or_default() += 1,
        }
    }
    tally
}

async fn measure(
    args: &Args,
    clients: &[Client],
    workload: Arc<Workload>,
    coordinator: &CoordinatorHandle,
) -> Result<Report> {
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup.max(0.0));
    let end = match args.count {
        Some(_) => None,
        None => Some(measure_from + Duration::from_secs_f64(args.duration.max(0.001))),
    };
    let plan = Arc::new(Plan {
        measure_from,
        end,
        count: args.count,
        tickets: AtomicU64::new(0),
    });
    let workers: Vec<_> = (0..args.concurrency)
        .map(|i| {
            let client = clients[i % clients.len()].clone();
            tokio::spawn(worker(client, workload.clone(), plan.clone()))
        })
        .collect();

    // CPU at the start of the measured window, for the coordinator and for this process.
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_from = coordinator.cpu_seconds();
    let own_from = proc_cpu_seconds("/proc/self/stat");
    let cpu_to = match end {
        Some(end) => {
            tokio::time::sleep_until(end.into()).await;
            Some((
                coordinator.cpu_seconds(),
                proc_cpu_seconds("/proc/self/stat"),
            ))
        }
        None => None,
    };

    let mut tally = Tally::default();
    for w in workers {
        let t = w.await?;
        tally.latencies_us.extend(t.latencies_us);
        for (kind, n) in t.errors {
            *tally.errors.entry(kind).or_default() += n;
        }
        tally.last_done = match (tally.last_done, t.last_done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        tally.warmup += t.warmup;
    }
    let (cpu_to, own_to) = match cpu_to {
        Some(sampled) => sampled,
        None => (
            coordinator.cpu_seconds(),
            proc_cpu_seconds("/proc/self/stat"),
        ),
    };
    let window_end = end.unwrap_or_else(|| tally.last_done.unwrap_or_else(Instant::now));
    let window = window_end.saturating_duration_since(measure_from);

    let mut latencies = tally.latencies_us;
    latencies.sort_unstable();
    let ok = latencies.len() as u64;
    let secs = window.as_secs_f64().max(1e-9);
    let pct = |p: f64| percentile_ms(&latencies, p);
    Ok(Report {
        committed: ok,
        errors: tally.errors,
        unmeasured: tally.warmup,
        window,
        tps: ok as f64 / secs,
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
        cpu_s: cpu_from.zip(cpu_to).map(|(a, b)| b - a),
        bench_cpu_s: own_from.zip(own_to).map(|(a, b)| b - a),
        peak_rss_mb: None,
        rss_mb: None,
        invariants: None,
    })
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((sorted_us.len() as f64 * p).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1] as f64 / 1000.0
}

/// The results of a run.
struct Report {
    committed: u64,
    errors: BTreeMap<String, u64>,
    unmeasured: u64,
    window: Duration,
    tps: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// The external coordinator's CPU time during the measured window.
    cpu_s: Option<f64>,
    /// This process's CPU time during the measured window (client side, participants and,
    /// when in-process, the coordinator).
    bench_cpu_s: Option<f64>,
    peak_rss_mb: Option<f64>,
    rss_mb: Option<f64>,
    /// Shop mode: the invariants' violations after the run (empty: all hold).
    invariants: Option<Vec<String>>,
}

impl Report {
    fn print(&self, args: &Args, store: &str) {
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        let opt = |x: Option<f64>| x.map(round);
        let workload = match args.mode {
            Mode::Noop => format!(
                "noop, {} branches {}",
                args.branches,
                if args.batched {
                    "registered with Begin (batched), Trys concurrent"
                } else if args.serial {
                    "registered one after another (RegisterBranch + Try each)"
                } else {
                    "registered concurrently (RegisterBranch + Try each)"
                }
            ),
            Mode::Shop => format!(
                "shop purchase (inventory, order, payment, points), {} SKU(s)",
                args.skus
            ),
        };
        let secs = self.window.as_secs_f64();
        println!("workload     {workload}");
        println!(
            "coordinator  {store}, {}",
            if args.external {
                "separate settled process"
            } else {
                "in this process"
            }
        );
        println!(
            "concurrency  {} workers over {} client connection(s)",
            args.concurrency, args.connections
        );
        println!(
            "measured     {secs:.2} s: {} committed, {} errors (after {} s warm-up; {} transactions outside the window)",
            self.committed,
            self.errors.values().sum::<u64>(),
            args.warmup,
            self.unmeasured
        );
        println!("throughput   {:.1} global transactions/s", self.tps);
        println!(
            "latency      p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (Begin to final)",
            self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms
        );
        for (kind, n) in &self.errors {
            println!("error        {n:>8}  {kind}");
        }
        if let Some(cpu) = self.cpu_s {
            let per_tx = if self.committed > 0 {
                cpu * 1000.0 / self.committed as f64
            } else {
                0.0
            };
            println!(
                "settled cpu  {cpu:.2} s in the window ({:.2} cores, {per_tx:.3} ms per transaction)",
                cpu / secs.max(1e-9)
            );
        }
        if let (Some(peak), Some(rss)) = (self.peak_rss_mb, self.rss_mb) {
            println!("settled rss  peak {peak:.1} MB, at the end {rss:.1} MB");
        }
        if let Some(cpu) = self.bench_cpu_s {
            println!(
                "bench cpu    {cpu:.2} s in the window ({:.2} cores)",
                cpu / secs.max(1e-9)
            );
        }
        match &self.invariants {
            Some(violations) if violations.is_empty() => println!("invariants   all hold"),
            Some(violations) => {
                for violation in violations {
                    println!("VIOLATION    {violation}");
                }
            }
            None => {}
        }
        let json = serde_json::json!({
            "mode": args.mode.as_str(),
            "store": store,
            "external": args.external,
            "branches": if args.mode == Mode::Noop { args.branches } else { settle_participants::shop::SERVICES.len() },
            // The shop's purchase flow decides for itself (settle_participants::flows).
            "batched": (args.mode == Mode::Noop).then_some(args.batched),
            "serial": (args.mode == Mode::Noop).then_some(!args.batched && args.serial),
            "concurrency": args.concurrency,
            "connections": args.connections,
            "duration_s": round(secs),
            "committed": self.committed,
            "tps": round(self.tps),
            "p50_ms": round(self.p50_ms),
            "p90_ms": round(self.p90_ms),
            "p99_ms": round(self.p99_ms),
            "max_ms": round(self.max_ms),
            "errors": self.errors,
            "cpu_s": opt(self.cpu_s),
            "peak_rss_mb": opt(self.peak_rss_mb),
            "bench_cpu_s": opt(self.bench_cpu_s),
            "invariants_hold": self.invariants.as_ref().map(Vec::is_empty),
        });
        println!("{json}");
    }
}
