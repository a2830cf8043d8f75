//! The hot path on real Redis and both databases: two inventory replicas selling one hot
//! SKU to more buyers than units, with cancellations, sell every unit and never more;
//! duplicate and out-of-order calls through the Lua scripts behave like the barrier; a
//! flushed Redis is reloaded and a stopped one is survived under either failure policy;
//! reconciliation ends with zero drift and Redis's stock equal to the database's. Campaign
//! windows and per-user limits refuse with their reasons.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use futures::StreamExt;
use settle::Client;
use settle_coordinator::Running;
use settle_participants::{
    Shop,
    campaign::Campaign,
    flows::{self, Outcome, Purchase},
    hot::{self, Policy},
    invariants::{self, Opening},
    inventory::{Inventory, Units},
    shop::{self, InventoryOptions},
};
use settle_proto::v1::{BranchRequest, participant_client::ParticipantClient};
use settle_testkit::{
    Backend, TestDb, both,
    redis::{RedisServer, shared_url, unique_prefix},
    scrape, start_coordinator, test_config, value,
};
use tonic::Code;

const SKU: &str = "HOT-1";
const PRICE: i64 = 100;
const FUNDS: i64 = 1_000;

/// A coordinator and the shop with its inventory replicas on one Redis.
struct HotShop {
    _dbs: (TestDb, TestDb),
    _coordinator: Running,
    shop: Shop,
    client: Client,
    opening: Opening,
}

impl HotShop {
    /// Starts everything with `units` of the hot SKU and accounts for `users` (every user
    /// with `poor(user)` gets less than the price, so their purchases are cancelled).
    async fn start(
        backend: Backend,
        redis: &str,
        policy: Policy,
        replicas: usize,
        units: i64,
        users: &[i64],
        poor: impl Fn(i64) -> bool,
    ) -> HotShop {
        let coordinator_db = TestDb::new(backend).await;
        let coordinator = start_coordinator(test_config(&coordinator_db.url)).await;
        let shop_db = TestDb::per_service(backend, &shop::SERVICES).await;
        let inventory = InventoryOptions {
            replicas,
            redis: Some(hot::Config {
                url: redis.to_owned(),
                prefix: unique_prefix(),
                policy,
            }),
            // On a Redis of its own the test stops or flushes Redis and needs the loop to
            // notice; on the shared one nothing reconciles behind the test's back, so the
            // drift the test's own reconcile finds is what the hot path left.
            reconcile_every: Some(if redis == shared_url() {
                Duration::from_secs(3600)
            } else {
                Duration::from_millis(50)
            }),
        };
        let shop = Shop::start_full(
            &shop_db.url,
            &coordinator.url(),
            IpAddr::from([127, 0, 0, 1]),
            shop::Options {
                metrics: Some("127.0.0.1:0".parse().expect("addr")),
                ..shop::Options::default()
            },
            inventory,
        )
        .await
        .expect("shop");
        shop.inventory.restock(SKU, units).await.expect("restock");
        shop.inventory.mark_hot(SKU).await.expect("mark hot");
        // The other replicas learn the mark at their next reconcile; until then they would
        // sell it through the database, unseen by Redis.
        for replica in &shop.inventories {
            replica.reconcile().await.expect("reconcile");
            assert!(replica.is_hot(SKU));
        }
        let (poor, rich): (Vec<i64>, Vec<i64>) = users.iter().partition(|u| poor(**u));
        shop.payment
            .open_accounts(&rich, FUNDS)
            .await
            .expect("accounts");
        shop.payment
            .open_accounts(&poor, PRICE - 1)
            .await
            .expect("accounts");
        shop.points.open_accounts(users, 0).await.expect("points");
        let opening = Opening {
            money: rich.len() as i64 * FUNDS + poor.len() as i64 * (PRICE - 1),
            points: 0,
        };
        let client = Client::connect(coordinator.url()).await.expect("connect");
        HotShop {
            _dbs: (coordinator_db, shop_db),
            _coordinator: coordinator,
            shop,
            client,
            opening,
        }
    }

    /// Buys one unit for each of `users` at once, through replica `user % replicas`;
    /// returns the purchases made and the refusals by reason.
    async fn buy(&self, users: impl IntoIterator<Item = i64>) -> Sale {
        let replicas = self.shop.inventories.len();
        let outcomes: Vec<Outcome> = futures::stream::iter(users)
            .map(|user_id| {
                let client = self.client.clone();
                async move {
                    let replica = shop::inventory_replica(user_id as usize % replicas);
                    flows::purchase_via(&client, &purchase(user_id), &replica).await
                }
            })
            .buffer_unordered(24)
            .map(|outcome| outcome.expect("no purchase fails outright"))
            .collect()
            .await;
        let mut sale = Sale::default();
        for outcome in outcomes {
            match outcome {
                Outcome::Done(_) => sale.sold += 1,
                Outcome::Refused {
                    participant,
                    reason,
                } => {
                    let participant = participant.split('-').next().unwrap_or("").to_owned();
                    *sale
                        .refused
                        .entry(format!("{participant}: {reason}"))
                        .or_default() += 1;
                }
            }
        }
        sale
    }

    /// Waits until at least `n` units are reserved or sold.
    async fn wait_for_taken(&self, n: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let stock = self.stock().await;
            if stock.reserved + stock.sold >= n {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "only {stock:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until every transaction's phase two has run and every invariant holds.
    async fn quiet(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let violations = invariants::check(&self.shop, self.opening)
                .await
                .expect("check");
            if violations.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the shop did not settle: {violations:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Reconciles through every replica: each finds Redis equal to the database.
    async fn assert_reconciled(&self) {
        let stock = self.stock().await;
        for replica in &self.shop.inventories {
            let done = replica.reconcile().await.expect("reconcile");
            assert_eq!(done.len(), 1, "{done:?}");
            assert_eq!(done[0].1.drift, Some(0), "drift at the end: {done:?}");
            assert_eq!(done[0].1.stock, stock.available, "{done:?}");
        }
        assert_eq!(
            self.redis_stock(&self.shop.inventory).await,
            stock.available
        );
    }

    async fn stock(&self) -> settle_participants::inventory::Stock {
        self.shop
            .inventory
            .stock(SKU)
            .await
            .expect("stock")
            .expect("sku")
    }

    async fn redis_stock(&self, inventory: &Inventory) -> i64 {
        inventory
            .hot()
            .expect("hot path")
            .stock(SKU)
            .await
            .expect("redis")
            .expect("stock key")
    }

    /// Buys with fresh buyers, a few at a time, until the SKU is sold out; returns the
    /// purchases made.
    async fn sell_out(&mut self, mut next_user: i64) -> i64 {
        let mut sold = 0;
        for round in 0.. {
            if self.stock().await.available == 0 {
                break;
            }
            assert!(round < 50, "still not sold out after 200 more buyers");
            let users: Vec<i64> = (next_user..next_user + 4).collect();
            self.shop
                .payment
                .open_accounts(&users, FUNDS)
                .await
                .expect("accounts");
            self.shop
                .points
                .open_accounts(&users, 0)
                .await
                .expect("points");
            next_user += 4;
            // The late buyers' money is part of what must be conserved.
            self.opening.money += 4 * FUNDS;
            sold += self.buy(users).await.sold;
            self.quiet().await;
        }
        sold
    }
}

#[derive(Debug, Default)]
struct Sale {
    sold: i64,
    refused: BTreeMap<String, i64>,
}

impl Sale {
    fn refused_with(&self, words: &str) -> i64 {
        self.refused
            .iter()
            .filter(|(reason, _)| reason.contains(words))
            .map(|(_, n)| n)
            .sum()
    }
}

fn purchase(user_id: i64) -> Purchase {
    Purchase {
        user_id,
        campaign: "hot-sale".to_owned(),
        sku: SKU.to_owned(),
        qty: 1,
        price: PRICE,
        reward: 10,
    }
}

both!(two_replicas_sell_every_unit_of_a_hot_sku_and_never_more);
async fn two_replicas_sell_every_unit_of_a_hot_sku_and_never_more(backend: Backend) {
    let users: Vec<i64> = (1..=90).collect();
    let poor = |u: i64| u % 3 == 0;
    let mut shop = HotShop::start(
        backend,
        &shared_url(),
        Policy::Fallback,
        2,
        30,
        &users,
        poor,
    )
    .await;

    let sale = shop.buy(users.clone()).await;
    shop.quiet().await;
    // Units that came back through a Cancel on either replica are sold through the other.
    let late = shop.sell_out(1_000).await;

    let stock = shop.stock().await;
    assert_eq!(
        sale.sold + late,
        30,
        "every unit sold: {sale:?}, late {late}"
    );
    assert_eq!((stock.available, stock.reserved, stock.sold), (0, 0, 30));
    assert!(sale.refused_with("payment") > 0, "cancellations: {sale:?}");
    assert!(sale.refused_with("sold out (redis)") > 0, "{sale:?}");
    // Redis never let a Try through that the database then found short.
    assert_eq!(sale.refused_with("(database)"), 0, "{sale:?}");
    assert_eq!(sale.refused_with("(flag)"), 0, "{sale:?}");
    shop.assert_reconciled().await;
}

/// One call to the first inventory replica.
async fn call(shop: &HotShop, op: &str, gid: &str, units: &Units) -> Result<(), tonic::Status> {
    let url = shop.shop.endpoints()[0].1.clone();
    let mut client = ParticipantClient::connect(url).await.expect("connect");
    let request = BranchRequest {
        gid: gid.to_owned(),
        branch_id: 1,
        action: "reserve".to_owned(),
        payload: serde_json::to_vec(units).expect("json").into(),
    };
    match op {
        "try" => client.r#try(request).await,
        "confirm" => client.confirm(request).await,
        _ => client.cancel(request).await,
    }
    .map(drop)
}

both!(duplicate_and_out_of_order_calls_through_redis_behave_like_the_barrier);
async fn duplicate_and_out_of_order_calls_through_redis_behave_like_the_barrier(backend: Backend) {
    let shop = HotShop::start(backend, &shared_url(), Policy::Fallback, 1, 5, &[], |_| {
        false
    })
    .await;
    let units = Units::new(SKU, 1);
    let shop = &shop;
    let expect = |redis: i64, available: i64, reserved: i64, sold: i64| async move {
        let stock = shop.stock().await;
        assert_eq!(
            (
                shop.redis_stock(&shop.shop.inventory).await,
                stock.available,
                stock.reserved,
                stock.sold
            ),
            (redis, available, reserved, sold),
            "(redis, available, reserved, sold)"
        );
    };

    // A Try twice takes one unit; Confirm twice sells it once; a Try after it takes nothing.
    call(shop, "try", "G1", &units).await.expect("try");
    call(shop, "try", "G1", &units)
        .await
        .expect("duplicate try");
    expect(4, 4, 1, 0).await;
    call(shop, "confirm", "G1", &units).await.expect("confirm");
    call(shop, "confirm", "G1", &units)
        .await
        .expect("duplicate confirm");
    call(shop, "try", "G1", &units)
        .await
        .expect("try after confirm");
    expect(4, 4, 0, 1).await;

    // Cancel before Try: an empty rollback, and the late Try is refused by Redis.
    call(shop, "cancel", "G2", &units)
        .await
        .expect("empty rollback");
    let late = call(shop, "try", "G2", &units).await.expect_err("hanging");
    assert_eq!(late.code(), Code::Aborted, "{late:?}");
    assert!(late.message().contains("rolled back (redis)"), "{late:?}");
    expect(4, 4, 0, 1).await;

    // Try, Cancel twice: the unit comes back once; a Try after it is refused.
    call(shop, "try", "G3", &units).await.expect("try");
    expect(3, 3, 1, 1).await;
    call(shop, "cancel", "G3", &units).await.expect("cancel");
    call(shop, "cancel", "G3", &units)
        .await
        .expect("duplicate cancel");
    let late = call(shop, "try", "G3", &units).await.expect_err("hanging");
    assert_eq!(late.code(), Code::Aborted, "{late:?}");
    expect(4, 4, 0, 1).await;

    // Redis forgot a Cancel (its mark expired or was lost): Redis takes the unit, the
    // barrier refuses the Try, and the unit goes back to Redis.
    call(shop, "cancel", "G4", &units)
        .await
        .expect("empty rollback");
    let prefix = shop.shop.inventory.hot().expect("hot").prefix().to_owned();
    settle_testkit::redis::command(&shared_url(), &["DEL", &format!("{prefix}:branch:G4/1")])
        .await
        .expect("DEL");
    let late = call(shop, "try", "G4", &units).await.expect_err("hanging");
    assert_eq!(late.code(), Code::Aborted, "{late:?}");
    assert!(
        late.message().contains("after the branch was rolled back"),
        "{late:?}"
    );
    expect(4, 4, 0, 1).await;

    // Sold out in Redis: refused without the database.
    for gid in ["G5", "G6", "G7", "G8"] {
        call(shop, "try", gid, &units).await.expect("try");
    }
    let short = call(shop, "try", "G9", &units).await.expect_err("sold out");
    assert!(short.message().contains("sold out (redis)"), "{short:?}");
    expect(0, 0, 4, 1).await;
    shop.assert_reconciled().await;
}

both!(a_redis_flushed_mid_sale_is_reloaded_and_nothing_is_oversold);
async fn a_redis_flushed_mid_sale_is_reloaded_and_nothing_is_oversold(backend: Backend) {
    let redis = RedisServer::start().await;
    let users: Vec<i64> = (1..=80).collect();
    let mut shop = HotShop::start(
        backend,
        &redis.url(),
        Policy::Fallback,
        2,
        40,
        &users,
        |u| u % 4 == 0,
    )
    .await;

    // Flushed while Trys are in flight: those that took units before it and commit after
    // it may let Redis run high until a reconcile; the database refuses the excess.
    let (sale, ()) = tokio::join!(shop.buy(1..=80), async {
        shop.wait_for_taken(10).await;
        redis.flush().await;
    });
    shop.quiet().await;
    let late = shop.sell_out(1_000).await;

    let stock = shop.stock().await;
    assert_eq!(sale.sold + late, 40, "{sale:?} {late}");
    assert_eq!((stock.available, stock.reserved, stock.sold), (0, 0, 40));
    // The sell-out came after the flush: the SKU was reloaded and Redis refused again.
    assert!(
        sale.refused_with("sold out (redis)") > 0,
        "reloaded: {sale:?}"
    );
    shop.assert_reconciled().await;
    let metrics = shop.shop.metrics_addr(shop::INVENTORY).expect("metrics");
    let samples = scrape(metrics).await;
    let drift = format!("settle_inventory_redis_drift_units{{sku=\"{SKU}\"}}");
    assert!(samples.contains_key(&drift), "{samples:?}");
    assert_eq!(value(&samples, &drift), 0.0);
}

both!(a_stopped_redis_falls_back_to_the_database_and_the_hot_path_resumes);
async fn a_stopped_redis_falls_back_to_the_database_and_the_hot_path_resumes(backend: Backend) {
    let mut redis = RedisServer::start().await;
    let users: Vec<i64> = (1..=60).collect();
    let mut shop = HotShop::start(
        backend,
        &redis.url(),
        Policy::Fallback,
        2,
        30,
        &users,
        |u| u % 5 == 0,
    )
    .await;

    let before = shop.buy(1..=10).await;
    // Stopped while Trys are in flight, then a round with Redis down throughout.
    let (stopping, ()) = tokio::join!(shop.buy(11..=20), async {
        shop.wait_for_taken(before.sold + 3).await;
        redis.stop();
    });
    let during = shop.buy(21..=30).await;
    assert!(
        during.sold > 0,
        "the database path sells while Redis is down: {during:?}"
    );
    assert_eq!(during.refused_with("(redis)"), 0, "{during:?}");
    shop.quiet().await;
    redis.resume().await;
    wait_until_up(&shop.shop).await;
    assert_eq!(
        shop.redis_stock(&shop.shop.inventory).await,
        shop.stock().await.available,
        "reloaded from the database"
    );
    let after = shop.buy(31..=60).await;
    shop.quiet().await;
    let late = shop.sell_out(1_000).await;

    let stock = shop.stock().await;
    assert_eq!(
        before.sold + stopping.sold + during.sold + after.sold + late,
        30
    );
    assert_eq!((stock.available, stock.reserved, stock.sold), (0, 0, 30));
    assert!(
        after.refused_with("sold out (redis)") > 0,
        "hot path again: {after:?}"
    );
    shop.assert_reconciled().await;
}

both!(a_stopped_redis_refuses_hot_trys_under_the_refuse_policy);
async fn a_stopped_redis_refuses_hot_trys_under_the_refuse_policy(backend: Backend) {
    let mut redis = RedisServer::start().await;
    let users: Vec<i64> = (1..=50).collect();
    let shop = HotShop::start(backend, &redis.url(), Policy::Refuse, 2, 20, &users, |_| {
        false
    })
    .await;

    let before = shop.buy(1..=5).await;
    assert_eq!(before.sold, 5);
    shop.quiet().await;
    let metrics = shop.shop.metrics_addr(shop::INVENTORY).expect("metrics");
    let up = |samples: &std::collections::HashMap<String, f64>| {
        value(samples, "settle_inventory_redis_up")
    };
    assert_eq!(up(&scrape(metrics).await), 1.0);
    // Stopped while Trys are in flight, then a round with Redis down throughout.
    let (stopping, ()) = tokio::join!(shop.buy(6..=15), async {
        shop.wait_for_taken(7).await;
        redis.stop();
    });
    let during = shop.buy(16..=25).await;
    assert_eq!(up(&scrape(metrics).await), 0.0, "Redis is down");
    assert_eq!(during.sold, 0, "{during:?}");
    assert_eq!(
        during.refused_with("temporarily unavailable"),
        10,
        "{during:?}"
    );
    shop.quiet().await;
    assert_eq!(
        shop.stock().await.available,
        20 - before.sold - stopping.sold,
        "nothing taken while refusing"
    );

    redis.resume().await;
    wait_until_up(&shop.shop).await;
    assert_eq!(up(&scrape(metrics).await), 1.0, "Redis is back");
    let after = shop.buy(26..=50).await;
    shop.quiet().await;
    let stock = shop.stock().await;
    assert_eq!(before.sold + stopping.sold + after.sold, 20, "{after:?}");
    assert_eq!((stock.available, stock.reserved, stock.sold), (0, 0, 20));
    shop.assert_reconciled().await;
}

/// Waits until every replica uses Redis again.
async fn wait_until_up(shop: &Shop) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !shop
        .inventories
        .iter()
        .all(|i| i.hot().is_some_and(|hot| hot.is_up()))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hot path did not resume"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

both!(a_campaign_refuses_outside_its_window_and_over_the_per_user_limit);
async fn a_campaign_refuses_outside_its_window_and_over_the_per_user_limit(backend: Backend) {
    let shop = HotShop::start(
        backend,
        &shared_url(),
        Policy::Fallback,
        1,
        10,
        &[1, 2, 3],
        |u| u == 3,
    )
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let buy = |user_id: i64, campaign: &str, qty: i64| {
        let p = Purchase {
            campaign: campaign.to_owned(),
            qty,
            ..purchase(user_id)
        };
        let client = shop.client.clone();
        async move { flows::purchase(&client, &p).await.expect("purchase") }
    };
    let refused = |outcome: Outcome, words: &str| match outcome {
        Outcome::Refused { reason, .. } => assert!(reason.contains(words), "{reason:?}"),
        done => panic!("{done:?}: expected a refusal saying {words:?}"),
    };
    let inventory = &shop.shop.inventory;
    let define = |campaign: &str, starts_at: i64, ends_at: i64| Campaign {
        campaign: campaign.to_owned(),
        starts_at,
        ends_at,
        per_user: 2,
    };
    inventory
        .define_campaign(&define("later", now + 3_600_000, now + 7_200_000))
        .await
        .expect("define");
    inventory
        .define_campaign(&define("over", now - 7_200_000, now - 3_600_000))
        .await
        .expect("define");
    inventory
        .define_campaign(&define("now", now - 1_000, now + 3_600_000))
        .await
        .expect("define");
    let bad = inventory
        .define_campaign(&define("backwards", now, now - 1))
        .await
        .expect_err("a window that ends before it starts");
    assert!(
        bad.to_string().contains("must start before it ends"),
        "{bad}"
    );

    refused(buy(1, "later", 1).await, "has not started");
    refused(buy(1, "over", 1).await, "has ended");
    refused(buy(1, "now", 3).await, "at most 2");
    // A purchase that is cancelled (too little money) gives its units back to the limit.
    refused(buy(3, "now", 2).await, "insufficient funds");
    shop.quiet().await;
    assert!(
        matches!(buy(3, "now", 2).await, Outcome::Refused { reason, .. } if reason.contains("insufficient"))
    );
    assert!(matches!(buy(1, "now", 2).await, Outcome::Done(_)));
    shop.quiet().await;
    // The order service's one live order per user and campaign is not what refuses here:
    // the inventory does, before any stock is taken.
    refused(buy(1, "now", 1).await, "at most 2");
    let stock = shop.stock().await;
    assert_eq!((stock.available, stock.sold), (8, 2));
    shop.assert_reconciled().await;
}

both!(counts_up_to_the_shops_limit_stay_exact_in_redis);
async fn counts_up_to_the_shops_limit_stay_exact_in_redis(backend: Backend) {
    let shop = HotShop::start(backend, &shared_url(), Policy::Fallback, 1, 1, &[], |_| {
        false
    })
    .await;
    let inventory = &shop.shop.inventory;
    inventory
        .restock(SKU, settle_participants::service::LIMIT - 1)
        .await
        .expect("restock to the limit");
    let limit = settle_participants::service::LIMIT;
    assert_eq!(shop.redis_stock(inventory).await, limit);

    let most = Units::new(SKU, limit - 1);
    call(&shop, "try", "BIG", &most).await.expect("try");
    assert_eq!(shop.redis_stock(inventory).await, 1);
    call(&shop, "cancel", "BIG", &most).await.expect("cancel");
    assert_eq!(shop.redis_stock(inventory).await, limit);
    let stock = shop.stock().await;
    assert_eq!((stock.available, stock.reserved), (limit, 0));
    shop.assert_reconciled().await;
}

/// A reconcile reads Redis's holds, then the database, then sets the stock. A Try that
/// commits after the database read and is confirmed before the stock is set leaves no hold
/// and is not in the database's figure: the stock must not be raised by its units.
#[test]
fn a_confirm_between_the_database_read_and_the_repair_does_not_raise_the_stock() {
    settle_testkit::run(async {
        let hot = hot::HotStock::connect(&hot::Config {
            url: shared_url(),
            prefix: unique_prefix(),
            policy: Policy::Fallback,
        })
        .expect("connect");
        hot.reconcile(SKU, &hot.holds(SKU).await.expect("holds"), 10, &[], &[])
            .await
            .expect("load");

        let holds = hot.holds(SKU).await.expect("holds");
        // The database is read here: 10 available, the Try below not committed yet.
        assert_eq!(
            hot.take(SKU, "T/1", 1).await.expect("take"),
            hot::Take::Taken
        );
        hot.confirm(SKU, "T/1").await.expect("confirm");
        let done = hot
            .reconcile(SKU, &holds, 10, &[], &[])
            .await
            .expect("reconcile");
        assert_eq!(done.stock, 9, "{done:?}");

        // With nothing confirmed in between, the database's figure is taken as it is.
        let holds = hot.holds(SKU).await.expect("holds");
        let done = hot
            .reconcile(SKU, &holds, 9, &[], &[])
            .await
            .expect("reconcile");
        assert_eq!((done.stock, done.drift), (9, Some(0)));
    });
}

both!(settle_participants_reconcile_repairs_redis_and_prints_the_drift);
async fn settle_participants_reconcile_repairs_redis_and_prints_the_drift(backend: Backend) {
    let db = TestDb::per_service(backend, &shop::SERVICES).await;
    let config = hot::Config {
        url: shared_url(),
        prefix: unique_prefix(),
        policy: Policy::Fallback,
    };
    let url = shop::database_url(&db.url, shop::INVENTORY);
    let inventory = Inventory::open_with(
        &url,
        settle_participants::inventory::Options {
            redis: Some(config.clone()),
        },
    )
    .await
    .expect("inventory");
    inventory.restock(SKU, 7).await.expect("restock");
    inventory.mark_hot(SKU).await.expect("mark hot");
    // Redis made high by hand, as a stale snapshot restored would.
    let key = format!("{}:stock:{SKU}", config.prefix);
    settle_testkit::redis::command(&config.url, &["SET", &key, "100"])
        .await
        .expect("SET");

    let reconcile = |redis: Option<String>| {
        let (database, prefix) = (db.url.clone(), config.prefix.clone());
        tokio::task::spawn_blocking(move || {
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_settle-participants"));
            command.args(["--database", &database, "--redis-prefix", &prefix]);
            // Only the flags given here count, not the environment's.
            for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("SETTLE_")) {
                command.env_remove(name);
            }
            if let Some(redis) = redis {
                command.args(["--redis", &redis]);
            }
            command
                .arg("reconcile")
                .output()
                .expect("run settle-participants")
        })
    };
    let output = reconcile(Some(config.url.clone())).await.expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains(&format!("{SKU}  redis stock 7  drift +93")),
        "{stdout}"
    );
    assert_eq!(
        inventory
            .hot()
            .expect("hot")
            .stock(SKU)
            .await
            .expect("redis"),
        Some(7)
    );

    let refused = reconcile(None).await.expect("join");
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("reconcile needs --redis"),
        "{refused:?}"
    );
}

both!(a_repeated_try_that_fails_gives_back_nothing_of_what_the_first_took);
async fn a_repeated_try_that_fails_gives_back_nothing_of_what_the_first_took(backend: Backend) {
    use settle::{
        Branch, Participant,
        participant::{Op, Outcome},
    };
    let shop = HotShop::start(backend, &shared_url(), Policy::Fallback, 1, 5, &[], |_| {
        false
    })
    .await;
    let inventory = &shop.shop.inventory;
    let delivery = |delivery: u64| Branch {
        gid: "R1".to_owned(),
        branch_id: 1,
        action: "reserve".to_owned(),
        payload: serde_json::to_vec(&Units::new(SKU, 1))
            .expect("json")
            .into(),
        delivery,
    };
    let (first, again) = (delivery(u64::MAX - 1), delivery(u64::MAX - 2));

    inventory
        .screen_try(&first)
        .await
        .expect("first screen takes");
    inventory
        .screen_try(&again)
        .await
        .expect("the repeat takes nothing");
    assert_eq!(shop.redis_stock(inventory).await, 4);
    // The repeat is shed (or its transaction fails): the first delivery's unit stays taken.
    inventory.after(Op::Try, &again, Outcome::RolledBack).await;
    assert_eq!(shop.redis_stock(inventory).await, 4);
    // The first delivery's own failure gives it back.
    inventory.after(Op::Try, &first, Outcome::RolledBack).await;
    assert_eq!(shop.redis_stock(inventory).await, 5);
}
