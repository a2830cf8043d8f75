//! The shop as a whole: the four services opened on their own databases and served over
//! gRPC, registered with a coordinator under their well-known names.
//!
//! Each service owns its database; the URL template's `{service}` is replaced by the
//! service name (`sqlite:///tmp/shop/{service}.db`, `postgres://…/shop_{service}`).

use std::{net::SocketAddr, sync::Arc};

use settle::{Barrier, Credentials, Participant, security::ServerTls, server::Serving};

use crate::{inventory::Inventory, order::Orders, payment::Payment, points::Points, service};

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
    /// Stock.
    pub inventory: Arc<Inventory>,
    /// Orders.
    pub orders: Arc<Orders>,
    /// Money.
    pub payment: Arc<Payment>,
    /// Points.
    pub points: Arc<Points>,
    servers: Vec<Serving>,
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
        let addr = SocketAddr::new(host, 0);
        let inventory = Inventory::open(&database_url(database, INVENTORY)).await?;
        let orders = Orders::open(&database_url(database, ORDER)).await?;
        let payment = Payment::open(&database_url(database, PAYMENT)).await?;
        let points = Points::open(&database_url(database, POINTS)).await?;
        let servers = vec![
            serve(
                INVENTORY,
                inventory.clone(),
                inventory.barrier(),
                coordinator,
                addr,
                options.clone(),
            )
            .await?,
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
        Ok(Shop {
            inventory,
            orders,
            payment,
            points,
            servers,
        })
    }

    /// Each service's name and endpoint.
    pub fn endpoints(&self) -> Vec<(&'static str, String)> {
        SERVICES
            .iter()
            .zip(&self.servers)
            .map(|(name, serving)| (*name, serving.url().to_owned()))
            .collect()
    }

    /// Stops every server gracefully.
    pub async fn stop(self) -> Result<(), service::Error> {
        for server in self.servers {
            server.stop().await?;
        }
        Ok(())
    }
}
