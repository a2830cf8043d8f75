//! The shop as a whole: the four services opened on their own databases and served over
//! gRPC, registered with a coordinator under their well-known names.
//!
//! Each service owns its database; the URL template's `{service}` is replaced by the
//! service name (`sqlite:///tmp/shop/{service}.db`, `postgres://…/shop_{service}`). The
//! inventory may run as several replicas on its one database, each registered under a
//! name of its own ([`inventory_replica`]); with a Redis they share hot SKUs' stock.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use settle::{Barrier, Credentials, Participant, security::ServerTls, server::Serving};

use crate::{
    hot,
    inventory::{self, Inventory},
    order::Orders,
    payment::Payment,
    points::Points,
    service,
};

/// Name under which the inventory service registers.
pub const INVENTORY: &str = "inventory";
/// Name under which the order service registers.
pub const ORDER: &str = "order";
/// Name under which the payment service registers.
pub const PAYMENT: &str = "payment";
/// Name under which the points service registers.
pub const POINTS: &str = "points";
/// Every service, in start order.
pub const SERVICES: [&str; 4] = [INVENTORY, ORDER, PAYMENT, POINTS];

/// The name the `i`th inventory replica registers under (from 0): [`INVENTORY`], then
/// `inventory-2`, `inventory-3`…
pub fn inventory_replica(i: usize) -> String {
    match i {
        0 => INVENTORY.to_owned(),
        i => format!("{INVENTORY}-{}", i + 1),
    }
}

/// How the shop's inventory runs: how many replicas, and whether with a Redis.
#[derive(Debug, Clone, Default)]
pub struct InventoryOptions {
    /// Replicas on the one inventory database (0 counts as 1).
    pub replicas: usize,
    /// Where hot SKUs keep their stock ([`inventory::Options::redis`]).
    pub redis: Option<hot::Config>,
    /// How often each replica reads campaigns and hot marks again and, with a Redis,
    /// reconciles it with the database (default 1 s).
    pub reconcile_every: Option<Duration>,
}

/// The database URL of `service` under `template`.
pub fn database_url(template: &str, service: &str) -> String {
    template.replace("{service}", service)
}

/// How a shop service is served, beyond its address.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where its `/metrics` is served, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Most calls it runs at once; Trys over it are refused (`settle::server::Serve::max_concurrent`).
    pub max_concurrent: Option<usize>,
    /// TLS to serve with (`settle::server::Serve::tls`).
    pub tls: Option<ServerTls>,
    /// The coordinator's certificate name, the only caller of phase two when `tls`
    /// verifies clients.
    pub coordinator_identity: Option<String>,
    /// How to reach the coordinator to register.
    pub credentials: Credentials,
    /// Listen beyond loopback unprotected anyway.
    pub insecure: bool,
    /// The endpoint to register instead of the listening address
    /// (`settle::server::Serve::advertise`).
    pub advertise: Option<String>,
    /// The only callers whose Try is accepted (`settle::server::Serve::try_from`; default:
    /// any caller with a verified certificate).
    pub try_from: Option<Vec<String>>,
}

/// Serves one participant, registering it with the coordinator, as `options` say. Calls
/// are committed in groups of up to 64 (see `settle::server::Serve::group_commit`): under
/// load the services' database commits are what limits a purchase.
pub async fn serve<P: Participant>(
    name: &str,
    participant: P,
    barrier: Barrier,
    coordinator: &str,
    addr: SocketAddr,
    options: Options,
) -> Result<Serving, service::Error> {
    let mut serve = settle::serve(name, participant, barrier)
        .coordinator(coordinator)
        .group_commit(64);
    if let Some(metrics) = options.metrics {
        serve = serve.metrics_listen(metrics);
    }
    if let Some(n) = options.max_concurrent {
        serve = serve.max_concurrent(n);
    }
    if let Some(tls) = options.tls {
        serve = serve.tls(tls);
    }
    if let Some(identity) = options.coordinator_identity {
        serve = serve.coordinator_identity(identity);
    }
    if let Some(url) = options.advertise {
        serve = serve.advertise(url);
    }
    if let Some(callers) = options.try_from {
        serve = serve.try_from(callers);
    }
    Ok(serve
        .coordinator_credentials(options.credentials)
        .insecure(options.insecure)
        .bind(addr)
        .await?)
}

/// The four services, running.
#[derive(Debug)]
pub struct Shop {
    /// Stock (the first replica).
    pub inventory: Arc<Inventory>,
    /// Every inventory replica, the first one included, in the order of
    /// [`inventory_replica`].
    pub inventories: Vec<Arc<Inventory>>,
    /// Orders.
    pub orders: Arc<Orders>,
    /// Money.
    pub payment: Arc<Payment>,
    /// Points.
    pub points: Arc<Points>,
    servers: Vec<(String, Serving)>,
}

impl Shop {
    /// Opens every service's database from `database` (a template with `{service}`) and
    /// serves each on `host` with a port of its own, registered with `coordinator`.
    pub async fn start(
        database: &str,
        coordinator: &str,
        host: std::net::IpAddr,
    ) -> Result<Shop, service::Error> {
        Shop::start_with(database, coordinator, host, Options::default()).await
    }

    /// [`Shop::start`], each service served as `options` say.
    pub async fn start_with(
        database: &str,
        coordinator: &str,
        host: std::net::IpAddr,
        options: Options,
    ) -> Result<Shop, service::Error> {
        let inventory = InventoryOptions::default();
        Shop::start_full(database, coordinator, host, options, inventory).await
    }

    /// [`Shop::start_with`], the inventory run as `inventory` says.
    pub async fn start_full(
        database: &str,
        coordinator: &str,
        host: std::net::IpAddr,
        options: Options,
        inventory: InventoryOptions,
    ) -> Result<Shop, service::Error> {
        let addr = SocketAddr::new(host, 0);
        let opened = inventory::Options {
            redis: inventory.redis.clone(),
        };
        let mut inventories = Vec::new();
        let mut servers = Vec::new();
        for i in 0..inventory.replicas.max(1) {
            let replica =
                Inventory::open_with(&database_url(database, INVENTORY), opened.clone()).await?;
            // Also without a Redis: the loop reads campaigns and hot marks again.
            replica.reconcile_every(inventory.reconcile_every.unwrap_or(Duration::from_secs(1)));
            let name = inventory_replica(i);
            let serving = serve(
                &name,
                replica.clone(),
                replica.barrier(),
                coordinator,
                addr,
                options.clone(),
            )
            .await?;
            servers.push((name, serving));
            inventories.push(replica);
        }
        let orders = Orders::open(&database_url(database, ORDER)).await?;
        let payment = Payment::open(&database_url(database, PAYMENT)).await?;
        let points = Points::open(&database_url(database, POINTS)).await?;
        let others = vec![
            serve(
                ORDER,
                orders.clone(),
                orders.barrier(),
                coordinator,
                addr,
                options.clone(),
            )
            .await?,
            serve(
                PAYMENT,
                payment.clone(),
                payment.barrier(),
                coordinator,
                addr,
                options.clone(),
            )
            .await?,
            serve(
                POINTS,
                points.clone(),
                points.barrier(),
                coordinator,
                addr,
                options.clone(),
            )
            .await?,
        ];
        servers.extend(
            [ORDER, PAYMENT, POINTS]
                .map(str::to_owned)
                .into_iter()
                .zip(others),
        );
        Ok(Shop {
            inventory: inventories[0].clone(),
            inventories,
            orders,
            payment,
            points,
            servers,
        })
    }

    /// Each service's (and inventory replica's) name and endpoint.
    pub fn endpoints(&self) -> Vec<(&str, String)> {
        self.servers
            .iter()
            .map(|(name, serving)| (name.as_str(), serving.url().to_owned()))
            .collect()
    }

    /// Where the service (or inventory replica) `name` serves `/metrics`, when
    /// [`Options::metrics`] asked for it.
    pub fn metrics_addr(&self, name: &str) -> Option<SocketAddr> {
        self.servers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, serving)| serving.metrics_addr())
    }

    /// Stops every server gracefully.
    pub async fn stop(self) -> Result<(), service::Error> {
        for (_, server) in self.servers {
            server.stop().await?;
        }
        Ok(())
    }
}
