//! `settled`: the Settle coordinator server.

use std::{io::Write, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use settle_coordinator::{
    Config, Coordinator, Limits, Security,
    access::Grant,
    admission::{AdmissionConfig, DEFAULT_MAX_IN_FLIGHT},
    recovery::RecoveryConfig,
    retry::RetryPolicy,
    store::redact,
};
use settle_security::{Secret, Tokens, tls::TlsFlags};
use settle_telemetry::subscriber;
use tokio::net::TcpListener;
use tracing::info;

// Under load, glibc's allocator took a visible share of the process's CPU, and the noop
// benchmark ran faster with mimalloc (BENCHMARKS.md has the figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Settle coordinator: TCC and saga distributed transactions over gRPC.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "SETTLE_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// sqlite://PATH (created if missing) or postgres://USER@HOST/DB.
    #[arg(long, env = "SETTLE_DATABASE", default_value = "sqlite://settle.db")]
    database: String,
    /// PostgreSQL connection pool size; round records get half as many more and group commit
    /// three (SQLite always uses one connection).
    #[arg(long, env = "SETTLE_MAX_CONNECTIONS", default_value_t = 16)]
    max_connections: u32,
    /// A participant known at start-up, as NAME=URL (repeatable; comma-separated in the env var).
    #[arg(long = "participant", env = "SETTLE_PARTICIPANTS", value_delimiter = ',', value_parser = parse_participant)]
    participants: Vec<(String, String)>,
    /// Largest branch payload in bytes.
    #[arg(long, env = "SETTLE_MAX_PAYLOAD", default_value_t = 64 * 1024)]
    max_payload: usize,
    /// Most branches per transaction.
    #[arg(long, env = "SETTLE_MAX_BRANCHES", default_value_t = 64)]
    max_branches: u32,
    /// Timeout of one Confirm/Cancel call, in milliseconds.
    #[arg(long, env = "SETTLE_CALL_TIMEOUT_MS", default_value_t = 5_000)]
    call_timeout_ms: u64,
    /// First retry delay bound, in milliseconds.
    #[arg(long, env = "SETTLE_RETRY_INITIAL_MS", default_value_t = 500)]
    retry_initial_ms: u64,
    /// Growth of the retry delay bound per attempt.
    #[arg(long, env = "SETTLE_RETRY_MULTIPLIER", default_value_t = 2.0)]
    retry_multiplier: f64,
    /// Largest retry delay, in milliseconds.
    #[arg(long, env = "SETTLE_RETRY_CAP_MS", default_value_t = 60_000)]
    retry_cap_ms: u64,
    /// Flag needs_attention after this many failed rounds.
    #[arg(long, env = "SETTLE_ATTENTION_AFTER_ATTEMPTS", default_value_t = 10)]
    attention_after_attempts: u32,
    /// Flag needs_attention this long after the decision, in seconds.
    #[arg(long, env = "SETTLE_ATTENTION_AFTER_SECS", default_value_t = 600)]
    attention_after_secs: u64,
    /// How long a decision or claim owns a transaction, in milliseconds: at least twice the
    /// call timeout; also how long a crashed instance's work waits before it is resumed.
    #[arg(long, env = "SETTLE_LEASE_MS", default_value_t = 30_000)]
    lease_ms: u64,
    /// Delete finished transactions this many hours after they finished (0: keep forever).
    #[arg(long, env = "SETTLE_RETENTION_HOURS", default_value_t = 168)]
    retention_hours: u64,
    /// Pause between recovery passes, in milliseconds.
    #[arg(long, env = "SETTLE_RECOVERY_INTERVAL_MS", default_value_t = 1_000)]
    recovery_interval_ms: u64,
    /// Most transactions begun on this instance and not yet final; a Begin, SubmitSaga,
    /// Prepare or unprepared Submit over it is answered RESOURCE_EXHAUSTED with RetryInfo
    /// (0: no limit).
    #[arg(long, env = "SETTLE_MAX_IN_FLIGHT", default_value_t = DEFAULT_MAX_IN_FLIGHT)]
    max_in_flight: u64,
    /// Starts (Begins, SubmitSagas, Prepares, unprepared Submits) per second, on average, as
    /// a token bucket (fractions allowed; 0: no limit). Over it: RESOURCE_EXHAUSTED with
    /// RetryInfo.
    #[arg(long, env = "SETTLE_BEGIN_RATE", default_value_t = 0.0)]
    begin_rate: f64,
    /// Begins allowed at once above --begin-rate after a quiet spell (the bucket's size).
    #[arg(long, env = "SETTLE_BEGIN_BURST", default_value_t = 100)]
    begin_burst: u32,
    /// Most Confirm/Cancel/Execute/Compensate calls in flight to one participant; the rest
    /// wait, within the call timeout (0: no limit).
    #[arg(long, env = "SETTLE_PARTICIPANT_CONCURRENCY", default_value_t = 64)]
    participant_concurrency: usize,
    /// Bearer token required on every Admin call (settlectl --token). Required when
    /// listening on a non-loopback address; empty means none.
    #[arg(long, env = "SETTLE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// This server's certificate chain (PEM): serve gRPC over TLS. Reloaded when the file
    /// changes or on SIGHUP. Also the certificate presented to participants over https.
    #[arg(long, env = "SETTLE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "SETTLE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that callers' client certificates are verified against; a
    /// verified certificate's DNS name is the caller's name. Needs --tls-cert.
    #[arg(long, env = "SETTLE_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// CA certificates (PEM) that participants at https:// endpoints are verified against.
    /// Needs --tls-cert, the certificate the coordinator presents to them.
    #[arg(long, env = "SETTLE_TLS_CA", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// Callers' bearer tokens: a file of `TOKEN NAME` lines. With it (or --tls-client-ca)
    /// every Coordinator call needs credentials. Reloaded when it changes or on SIGHUP.
    #[arg(long, env = "SETTLE_TOKENS")]
    tokens: Option<PathBuf>,
    /// Let CALLER register participant NAME besides its own name (NAME may be `*`);
    /// repeatable, comma-separated in the env var.
    #[arg(
        long = "allow-register",
        env = "SETTLE_ALLOW_REGISTER",
        value_delimiter = ','
    )]
    allow_register: Vec<Grant>,
    /// Listen on a non-loopback address without TLS and authentication (logged as a
    /// warning): anyone who can reach it can read payloads and begin or decide transactions.
    #[arg(long, env = "SETTLE_INSECURE")]
    insecure: bool,
    /// Address of the Prometheus `/metrics` listener (HTTP), or `off`.
    #[arg(long, env = "SETTLE_METRICS_LISTEN", default_value = "127.0.0.1:9464", value_parser = settle_telemetry::parse_listen)]
    metrics_listen: MaybeAddr,
    /// Export traces over OTLP/gRPC to this endpoint (`http://collector:4317`); unset: no
    /// tracing, at no cost.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "SETTLE_LOG_JSON")]
    log_json: bool,
    /// Threads running the coordinator (0: one per CPU). With 1, every task runs on one
    /// thread (tokio's current-thread scheduler): no wake-ups cross threads, and replies that
    /// become ready together leave in one network write, which on a machine shared with its
    /// database costs less CPU per transaction (BENCHMARKS.md).
    #[arg(long, env = "SETTLE_THREADS", default_value_t = 0)]
    threads: usize,
}

/// An address or none; spelled so that clap takes it as one value with a default, not as an
/// optional flag.
type MaybeAddr = Option<SocketAddr>;

fn parse_participant(s: &str) -> Result<(String, String), String> {
    let (name, url) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=URL, got {s:?}"))?;
    Ok((name.trim().to_owned(), url.trim().to_owned()))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut builder = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if args.threads > 1 {
        builder.worker_threads(args.threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("settled: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Display, not Debug: start-up errors are read by whoever launched settled.
            eprintln!("settled: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let telemetry = subscriber::install(subscriber::Options {
        service: "settled",
        json: args.log_json,
        otlp_endpoint: args.otlp_endpoint.as_deref().filter(|e| !e.is_empty()),
    })?;

    let security = security(&args)?;
    // Before touching the database: an exposed, unprotected server is a configuration
    // mistake to report at once.
    // `serve` warns of an insecure exposure, after the first line ("settled listening on").
    let _ = security.check_exposure(args.listen)?;
    #[cfg(unix)]
    reload_on_hangup(security.clone())?;
    let config = Config {
        database: args.database.clone(),
        max_connections: args.max_connections,
        participants: args.participants,
        limits: Limits {
            max_payload: args.max_payload,
            max_branches: args.max_branches,
        },
        retry: RetryPolicy {
            initial: Duration::from_millis(args.retry_initial_ms),
            multiplier: args.retry_multiplier,
            cap: Duration::from_millis(args.retry_cap_ms),
            attention_after_attempts: args.attention_after_attempts,
            attention_after: Duration::from_secs(args.attention_after_secs),
        },
        call_timeout: Duration::from_millis(args.call_timeout_ms),
        lease: Duration::from_millis(args.lease_ms),
        recovery: RecoveryConfig {
            interval: Duration::from_millis(args.recovery_interval_ms),
            retention: (args.retention_hours > 0)
                .then(|| Duration::from_secs(args.retention_hours * 3600)),
            ..RecoveryConfig::default()
        },
        security,
        metrics_listen: args.metrics_listen,
        admission: AdmissionConfig {
            max_in_flight: (args.max_in_flight > 0).then_some(args.max_in_flight),
            begin_rate: (args.begin_rate != 0.0).then_some(args.begin_rate),
            begin_burst: args.begin_burst,
        },
        participant_concurrency: (args.participant_concurrency > 0)
            .then_some(args.participant_concurrency),
        ..Config::default()
    };
    let coordinator = Coordinator::open(config).await?;
    let listener = TcpListener::bind(args.listen).await?;
    // Tests and scripts read these lines to find ports chosen with :0; the gRPC address
    // comes first so that a reader of one line finds it. A reader that stops reading
    // closes the pipe, which must not stop the coordinator: write errors are ignored.
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "settled listening on {}", listener.local_addr()?);
    if let Some(addr) = coordinator.metrics_addr() {
        let _ = writeln!(stdout, "settled metrics on http://{addr}/metrics");
    }
    info!(addr = %listener.local_addr()?, database = %redact(&args.database), "settled started");
    coordinator.serve(listener, shutdown_signal()).await?;
    info!("settled stopped");
    telemetry.shutdown();
    Ok(())
}

fn security(args: &Args) -> Result<Security, Box<dyn std::error::Error>> {
    let (tls, participant_tls) = TlsFlags {
        cert: args.tls_cert.clone(),
        key: args.tls_key.clone(),
        client_ca: args.tls_client_ca.clone(),
        ca: args.tls_ca.clone(),
    }
    .load()?;
    Ok(Security {
        tls,
        tokens: args.tokens.as_ref().map(Tokens::load).transpose()?,
        participant_tls,
        admin_token: args
            .admin_token
            .clone()
            .filter(|token| !token.is_empty())
            .map(Secret::from),
        grants: args.allow_register.clone(),
        insecure: args.insecure,
    })
}

/// SIGHUP loads every certificate, key and the tokens file again (they are also reloaded
/// when they change), instead of ending the process.
#[cfg(unix)]
fn reload_on_hangup(security: Security) -> std::io::Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            info!("SIGHUP: reloading certificates and tokens");
            security.reload();
        }
    });
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    info!("shutdown signal received");
}
