//! What the shop examples share: an embedded coordinator and the four shop services, on
//! SQLite files in a temporary directory or on fresh PostgreSQL databases, and the
//! end-of-run checks.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use settle::Client;
use settle_coordinator::{Config, Coordinator, Running};
use settle_participants::{
    Shop,
    invariants::{self, Opening},
    shop::InventoryOptions,
};

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A coordinator and the shop, in this process.
pub struct Embedded {
    pub coordinator: Running,
    pub shop: Shop,
    pub client: Client,
    _dir: tempfile::TempDir,
}

impl Embedded {
    /// Starts everything; `postgres` is an admin URL on which fresh databases named
    /// `{prefix}_*` are created, otherwise SQLite files in a temporary directory are used.
    /// The inventory runs as `inventory` says.
    pub async fn start(
        postgres: Option<&str>,
        prefix: &str,
        inventory: InventoryOptions,
    ) -> Result<Embedded> {
        let dir = tempfile::tempdir()?;
        let (coordinator_db, shop_db) = match postgres {
            Some(admin) => {
                for service in settle_participants::shop::SERVICES {
                    settle_testkit::fresh_database(admin, &format!("{prefix}_{service}")).await?;
                }
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
                (
                    settle_testkit::fresh_database(admin, &format!("{prefix}_coordinator")).await?,
                    format!("{base}/{prefix}_{{service}}"),
                )
            }
            None => (
                format!("sqlite://{}", dir.path().join("coordinator.db").display()),
                format!("sqlite://{}/{{service}}.db", dir.path().display()),
            ),
        };
        let coordinator = Coordinator::open(Config {
            database: coordinator_db,
            max_connections: 32,
            ..Config::default()
        })
        .await?
        .spawn("127.0.0.1:0".parse()?)
        .await?;
        let shop = Shop::start_full(
            &shop_db,
            &coordinator.url(),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            settle_participants::shop::Options::default(),
            inventory,
        )
        .await?;
        let client = Client::connect(coordinator.url()).await?;
        Ok(Embedded {
            coordinator,
            shop,
            client,
            _dir: dir,
        })
    }

    /// Waits until every gid is COMMITTED (phase two may still be finishing), checks the
    /// shop's invariants, prints the verdict, stops everything, and returns whether all held.
    pub async fn finish(self, committed: &[String], opening: Opening) -> Result<bool> {
        let mut violations = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        for gid in committed {
            loop {
                let tx = self.client.get(gid).await?;
                if tx.status() == settle::client::Status::Committed {
                    break;
                }
                if Instant::now() > deadline {
                    violations.push(format!("{gid} is {:?}, not COMMITTED", tx.status()));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        violations.extend(invariants::check(&self.shop, opening).await?);
        self.shop.stop().await?;
        self.coordinator.stop().await?;
        if violations.is_empty() {
            println!("invariants   all hold");
        }
        for v in &violations {
            println!("VIOLATION    {v}");
        }
        Ok(violations.is_empty())
    }
}
