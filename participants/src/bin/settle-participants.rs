//! `settle-participants`: runs one of the shop's services, or all four.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use settle::{
    Credentials,
    security::{ClientTls, Secret, ServerTls, tls::TlsFlags},
};
use settle_participants::{
    hot::{self, Policy},
    inventory::{self, Inventory},
    order::Orders,
    payment::Payment,
    points::Points,
    shop::{self, database_url},
};
use settle_telemetry::subscriber;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Service {
    Inventory,
    Order,
    Payment,
    Points,
    All,
}

/// The Settle reference shop: inventory, order, payment and points participants.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Which service to run.
    #[arg(long, env = "SETTLE_SERVICE", value_enum, default_value = "all")]
    service: Service,
    /// Address to listen on; with `all`, the four services take this port and the next three
    /// (port 0: each picks a free port).
    #[arg(long, env = "SETTLE_LISTEN", default_value = "127.0.0.1:7001")]
    listen: SocketAddr,
    /// Database URL; `{service}` is replaced by the service name, so each has its own.
    #[arg(
        long,
        env = "SETTLE_DATABASE",
        default_value = "sqlite://{service}.db",
        global = true
    )]
    database: String,
    /// Redis for the inventory's hot SKUs (`redis://127.0.0.1:6379`): their stock is
    /// taken there before the database; unset: every SKU takes the database path.
    #[arg(long, env = "SETTLE_REDIS", global = true)]
    redis: Option<String>,
    /// Put before every Redis key, so that shops can share a Redis.
    #[arg(
        long,
        env = "SETTLE_REDIS_PREFIX",
        default_value = "settle",
        global = true
    )]
    redis_prefix: String,
    /// What a Try on a hot SKU does while Redis is down: `fallback` (the database path) or
    /// `refuse` (refused as temporarily unavailable).
    #[arg(long, env = "SETTLE_REDIS_FAILURE", default_value = "fallback")]
    redis_failure: Policy,
    /// Mark this SKU hot (repeatable, or comma-separated); it must exist (restocked). Hot
    /// SKUs stay hot: the mark is in the inventory database.
    #[arg(
        long,
        env = "SETTLE_HOT_SKU",
        value_delimiter = ',',
        requires = "redis"
    )]
    hot_sku: Vec<String>,
    /// How often the inventory reads campaigns and hot marks again and compares Redis
    /// with the database and repairs it (and so how soon it notices Redis coming back), in
    /// milliseconds.
    #[arg(long, env = "SETTLE_RECONCILE_EVERY_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    reconcile_every_ms: u64,
    /// The coordinator to register with.
    #[arg(
        long,
        env = "SETTLE_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    coordinator: String,
    /// Address of the Prometheus `/metrics` listener (HTTP), or `off`; with `all`, the four
    /// services take this port and the next three, like `--listen`.
    #[arg(long, env = "SETTLE_METRICS_LISTEN", default_value = "127.0.0.1:9465", value_parser = settle_telemetry::parse_listen)]
    metrics_listen: MaybeAddr,
    /// Most calls each service runs at once; a Try over it is refused at once (the buyer's
    /// purchase aborts), a Confirm or Cancel waits (0: no limit).
    #[arg(long, env = "SETTLE_MAX_CONCURRENT", default_value_t = 0)]
    max_concurrent: usize,
    /// Export traces over OTLP/gRPC to this endpoint (`http://collector:4317`); unset: no
    /// tracing.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// This process's certificate chain (PEM): serve over TLS, and present it to the
    /// coordinator when registering. Reloaded when the file changes or on SIGHUP.
    #[arg(long, env = "SETTLE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "SETTLE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that callers' certificates are verified against: phase two is
    /// then accepted only from --coordinator-identity, Try from any verified caller.
    #[arg(long, env = "SETTLE_TLS_CLIENT_CA", requires_all = ["tls_cert", "coordinator_identity"])]
    tls_client_ca: Option<PathBuf>,
    /// CA certificates (PEM) that an https:// --coordinator is verified against.
    #[arg(long, env = "SETTLE_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// The DNS name in the coordinator's certificate.
    #[arg(long, env = "SETTLE_COORDINATOR_IDENTITY")]
    coordinator_identity: Option<String>,
    /// A bearer token (from settled's --tokens file) sent when registering.
    #[arg(long, env = "SETTLE_COORDINATOR_TOKEN", hide_env_values = true)]
    coordinator_token: Option<String>,
    /// Listen on a non-loopback address without TLS that verifies callers (logged as a
    /// warning): anyone who can reach it could Confirm or Cancel reservations.
    #[arg(long, env = "SETTLE_INSECURE")]
    insecure: bool,
    /// The host name (or address) the coordinator reaches this process by, registered with
    /// each service's port instead of the --listen address (needed when listening on
    /// 0.0.0.0; it must be in --tls-cert's names). Needs a --listen port other than 0.
    #[arg(long, env = "SETTLE_ADVERTISE_HOST")]
    advertise_host: Option<String>,
    /// With --tls-client-ca: accept Try only from these callers (certificate names,
    /// comma-separated), the initiators; by default any caller with a certificate from the
    /// CA may send Try.
    #[arg(
        long,
        env = "SETTLE_TRY_FROM",
        value_delimiter = ',',
        requires = "tls_client_ca"
    )]
    try_from: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compare the inventory's hot SKUs in Redis with its database once, repair Redis, print
    /// the drift of each and exit (needs --redis).
    Reconcile,
}

impl Args {
    /// The inventory's options from the flags.
    fn inventory(&self) -> inventory::Options {
        inventory::Options {
            redis: self.redis.as_ref().map(|url| hot::Config {
                url: url.clone(),
                prefix: self.redis_prefix.clone(),
                policy: self.redis_failure,
            }),
        }
    }
}

/// `settle-participants reconcile`: one reconcile, one line per hot SKU.
async fn reconcile(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.redis.is_none() {
        return Err("reconcile needs --redis".into());
    }
    let url = database_url(&args.database, shop::INVENTORY);
    let inventory = Inventory::open_with(&url, args.inventory()).await?;
    let done = inventory.reconcile().await?;
    if done.is_empty() {
        println!("no hot SKUs in {url}");
    }
    for (sku, done) in done {
        let drift = match done.drift {
            Some(drift) => format!("drift {drift:+}"),
            None => "loaded (keys were missing)".to_owned(),
        };
        println!(
            "{sku}  redis stock {}  {drift}  dropped holds {}",
            done.stock, done.dropped
        );
    }
    Ok(())
}

/// An address or none; spelled so that clap takes it as one value with a default, not as an
/// optional flag.
type MaybeAddr = Option<SocketAddr>;

/// The `i`th of consecutive ports from `first` (port 0: each picks its own).
fn nth(first: SocketAddr, i: usize) -> SocketAddr {
    match first.port() {
        0 => first,
        port => SocketAddr::new(first.ip(), port + i as u16),
    }
}

/// SIGHUP loads the certificates again (they are also reloaded when they change) instead
/// of ending the process.
#[cfg(unix)]
fn reload_on_hangup(tls: Option<ServerTls>, client: Option<ClientTls>) -> std::io::Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let results = [
                tls.as_ref().map(ServerTls::reload),
                client.as_ref().map(ClientTls::reload),
            ];
            let mut reloaded = true;
            for error in results.into_iter().flatten().filter_map(Result::err) {
                tracing::warn!(%error, "reload failed; the previous certificate stays");
                reloaded = false;
            }
            if reloaded {
                tracing::info!("SIGHUP: certificates reloaded");
            }
        }
    });
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(Command::Reconcile) = args.command {
        return reconcile(&args).await;
    }
    if args.advertise_host.is_some() && args.listen.port() == 0 {
        return Err("--advertise-host needs a --listen port other than 0".into());
    }
    let telemetry = subscriber::install(subscriber::Options {
        service: "settle-participants",
        json: false,
        otlp_endpoint: args.otlp_endpoint.as_deref().filter(|e| !e.is_empty()),
    })?;

    let wanted: Vec<&str> = match args.service {
        Service::All => shop::SERVICES.to_vec(),
        Service::Inventory => vec![shop::INVENTORY],
        Service::Order => vec![shop::ORDER],
        Service::Payment => vec![shop::PAYMENT],
        Service::Points => vec![shop::POINTS],
    };
    let (tls, client_tls) = TlsFlags {
        cert: args.tls_cert.clone(),
        key: args.tls_key.clone(),
        client_ca: args.tls_client_ca.clone(),
        ca: args.tls_ca.clone(),
    }
    .load()?;
    let credentials = Credentials {
        tls: client_tls,
        token: args
            .coordinator_token
            .clone()
            .filter(|t| !t.is_empty())
            .map(Secret::from),
    };
    #[cfg(unix)]
    reload_on_hangup(tls.clone(), credentials.tls.clone())?;
    let mut servers = Vec::new();
    for (i, name) in wanted.into_iter().enumerate() {
        let addr = nth(args.listen, i);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let options = shop::Options {
            try_from: (!args.try_from.is_empty()).then(|| args.try_from.clone()),
            advertise: args
                .advertise_host
                .as_ref()
                .map(|host| format!("{scheme}://{host}:{}", addr.port())),
            metrics: args.metrics_listen.map(|first| nth(first, i)),
            max_concurrent: (args.max_concurrent > 0).then_some(args.max_concurrent),
            tls: tls.clone(),
            coordinator_identity: args.coordinator_identity.clone(),
            credentials: credentials.clone(),
            insecure: args.insecure,
        };
        let url = database_url(&args.database, name);
        let c = &args.coordinator;
        let serving = match name {
            shop::INVENTORY => {
                let s = Inventory::open_with(&url, args.inventory()).await?;
                for sku in &args.hot_sku {
                    s.mark_hot(sku).await?;
                }
                s.reconcile_every(Duration::from_millis(args.reconcile_every_ms));
                shop::serve(name, s.clone(), s.barrier(), c, addr, options.clone()).await?
            }
            shop::ORDER => {
                let s = Orders::open(&url).await?;
                shop::serve(name, s.clone(), s.barrier(), c, addr, options.clone()).await?
            }
            shop::PAYMENT => {
                let s = Payment::open(&url).await?;
                shop::serve(name, s.clone(), s.barrier(), c, addr, options.clone()).await?
            }
            _ => {
                let s = Points::open(&url).await?;
                shop::serve(name, s.clone(), s.barrier(), c, addr, options.clone()).await?
            }
        };
        println!("{name} listening on {}", serving.url());
        if let Some(metrics) = serving.metrics_addr() {
            println!("{name} metrics on http://{metrics}/metrics");
        }
        servers.push(serving);
    }
    tokio::signal::ctrl_c().await?;
    for server in servers {
        server.stop().await?;
    }
    telemetry.shutdown();
    Ok(())
}
