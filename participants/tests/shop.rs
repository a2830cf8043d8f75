//! The shop's flows against real services on SQLite and PostgreSQL: concurrent runs keep
//! every invariant; refusals leave nothing held; a refund restores stock, money and points
//! exactly once even when it is replayed or its phase two has to be retried; the purchase
//! as a transactional message keeps them too.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use futures::StreamExt;
use settle::{Client, server::Serving};
use settle_participants::{
    campaign::Campaign,
    flows::{self, Outcome, PointsPay, Purchase},
    invariants::{self, Opening},
    inventory::{Inventory, Stock},
    order::Orders,
    payment::Payment,
    points::Points,
    shop,
};
use settle_testkit::{Backend, TestDb, both, start_coordinator, test_config};

const SKU: &str = "SKU-1";

/// The four services on their own test databases, each restartable on its address.
struct TestShop {
    _dbs: Vec<TestDb>,
    coordinator: String,
    inventory: Arc<Inventory>,
    orders: Arc<Orders>,
    payment: Arc<Payment>,
    points: Arc<Points>,
    servers: HashMap<&'static str, (SocketAddr, Option<Serving>)>,
}

impl TestShop {
    async fn start(backend: Backend, coordinator: &str) -> TestShop {
        let mut dbs = Vec::new();
        let url = |dbs: &mut Vec<TestDb>, db: TestDb| {
            let url = db.url.clone();
            dbs.push(db);
            url
        };
        let inventory = Inventory::open(&url(&mut dbs, TestDb::new(backend).await))
            .await
            .expect("inventory");
        let orders = Orders::open(&url(&mut dbs, TestDb::new(backend).await))
            .await
            .expect("orders");
        let payment = Payment::open(&url(&mut dbs, TestDb::new(backend).await))
            .await
            .expect("payment");
        let points = Points::open(&url(&mut dbs, TestDb::new(backend).await))
            .await
            .expect("points");
        let mut shop = TestShop {
            _dbs: dbs,
            coordinator: coordinator.to_owned(),
            inventory,
            orders,
            payment,
            points,
            servers: HashMap::new(),
        };
        for name in shop::SERVICES {
            shop.serve(name, "127.0.0.1:0".parse().expect("addr")).await;
        }
        shop
    }

    async fn serve(&mut self, name: &'static str, addr: SocketAddr) {
        let c = self.coordinator.clone();
        let serving = match name {
            shop::INVENTORY => {
                shop::serve(
                    name,
                    self.inventory.clone(),
                    self.inventory.barrier(),
                    &c,
                    addr,
                    shop::Options::default(),
                )
                .await
            }
            shop::ORDER => {
                shop::serve(
                    name,
                    self.orders.clone(),
                    self.orders.barrier(),
                    &c,
                    addr,
                    shop::Options::default(),
                )
                .await
            }
            shop::PAYMENT => {
                shop::serve(
                    name,
                    self.payment.clone(),
                    self.payment.barrier(),
                    &c,
                    addr,
                    shop::Options::default(),
                )
                .await
            }
            _ => {
                shop::serve(
                    name,
                    self.points.clone(),
                    self.points.barrier(),
                    &c,
                    addr,
                    shop::Options::default(),
                )
                .await
            }
        }
        .expect("serve");
        self.servers.insert(name, (serving.addr(), Some(serving)));
    }

    async fn stop_service(&mut self, name: &'static str) {
        let serving = self
            .servers
            .get_mut(name)
            .and_then(|(_, s)| s.take())
            .expect("running");
        serving.stop().await.expect("stop");
    }

    async fn restart_service(&mut self, name: &'static str) {
        let addr = self.servers[name].0;
        self.serve(name, addr).await;
    }

    async fn stop(mut self) {
        for (_, (_, serving)) in self.servers.drain() {
            if let Some(serving) = serving {
                serving.stop().await.expect("stop");
            }
        }
    }

    /// The sale SKU's stock.
    async fn stock(&self) -> Stock {
        self.inventory
            .stock(SKU)
            .await
            .expect("stock")
            .expect("sku")
    }

    /// A view for the invariant checker, which takes a `Shop`-like set of services.
    async fn check(&self, opening: Opening) -> Vec<String> {
        invariants::check_services(
            &self.inventory,
            &self.orders,
            &self.payment,
            &self.points,
            opening,
        )
        .await
        .expect("invariants")
    }
}

fn purchase(user_id: i64) -> Purchase {
    Purchase {
        user_id,
        campaign: "sale".to_owned(),
        sku: SKU.to_owned(),
        qty: 1,
        price: 100,
        reward: 10,
    }
}

async fn concurrent_flows_keep_every_invariant(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let shop = TestShop::start(backend, &coordinator.url()).await;
    let client = Client::connect(coordinator.url()).await.expect("connect");

    let buyers: Vec<i64> = (1..=120).collect();
    let (rich, poor): (Vec<i64>, Vec<i64>) = buyers.iter().partition(|u| *u % 7 != 0);
    // Late buyers, for units that come back after the last buyer above tried.
    let late: Vec<i64> = (1_001..=1_040).collect();
    shop.inventory.restock(SKU, 40).await.expect("restock");
    shop.payment
        .open_accounts(&rich, 500)
        .await
        .expect("accounts");
    shop.payment
        .open_accounts(&poor, 50)
        .await
        .expect("accounts");
    shop.payment
        .open_accounts(&late, 500)
        .await
        .expect("accounts");
    shop.points
        .open_accounts(&buyers, 30)
        .await
        .expect("points");
    shop.points.open_accounts(&late, 30).await.expect("points");
    let opening = Opening {
        money: (rich.len() + late.len()) as i64 * 500 + poor.len() as i64 * 50,
        points: (buyers.len() + late.len()) as i64 * 30,
    };

    // Purchases (some users twice), points-pay orders in another campaign, all at once.
    let mut work: Vec<(i64, bool)> = buyers.iter().map(|u| (*u, false)).collect();
    work.extend(buyers.iter().filter(|u| *u % 5 == 0).map(|u| (*u, false)));
    work.extend(buyers.iter().filter(|u| *u % 3 == 0).map(|u| (*u, true)));
    let outcomes: Vec<Outcome> = futures::stream::iter(work)
        .map(|(user_id, with_points)| {
            let client = client.clone();
            async move {
                if with_points {
                    let pay = PointsPay {
                        user_id,
                        campaign: "points-week".to_owned(),
                        sku: "VOUCHER".to_owned(),
                        qty: 1,
                        points: 20 + (user_id % 3) * 10,
                    };
                    flows::points_pay(&client, &pay).await
                } else {
                    flows::purchase(&client, &purchase(user_id)).await
                }
            }
        })
        .buffer_unordered(32)
        .map(|outcome| outcome.expect("no flow fails outright"))
        .collect()
        .await;

    let mut done: Vec<String> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Done(gid) => Some(gid.clone()),
            Outcome::Refused { .. } => None,
        })
        .collect();
    let stock = shop.stock().await;
    assert_eq!(stock.reserved, 0, "nothing held");
    assert_eq!(stock.sold + stock.available, 40, "none oversold, none lost");
    // A purchase refused after its reservation (too little money, a second click) gives
    // its unit back when it aborts; when that happens after the last buyer tried, the
    // unit is left, and the next buyers must get it (no stale sold-out flag).
    if stock.available > 0 {
        eprintln!(
            "{} unit(s) left after the concurrent buyers; selling them to late buyers",
            stock.available
        );
    }
    for (user_id, _) in late.iter().zip(0..stock.available) {
        match flows::purchase(&client, &purchase(*user_id)).await {
            Ok(Outcome::Done(gid)) => done.push(gid),
            other => panic!("a unit was left, yet buyer {user_id} got {other:?}"),
        }
    }
    let stock = shop.stock().await;
    assert_eq!(stock.sold, 40, "every unit sold, none oversold");

    // Refund a few paid orders concurrently, by both payment means.
    let paid: Vec<_> = shop
        .orders
        .all()
        .await
        .expect("orders")
        .into_iter()
        .filter(|o| o.status == "PAID")
        .take(12)
        .collect();
    let refunds = futures::future::join_all(paid.iter().map(|o| flows::refund(&client, o))).await;
    for refund in refunds {
        assert!(matches!(refund, Ok(Outcome::Done(_))), "{refund:?}");
    }

    for gid in &done {
        let tx = client.get(gid).await.expect("get");
        assert_eq!(
            tx.status(),
            settle::client::Status::Committed,
            "{gid} final"
        );
    }
    assert_eq!(shop.check(opening).await, Vec::<String>::new());
    shop.stop().await;
    coordinator.stop().await.expect("stop");
}
both!(concurrent_flows_keep_every_invariant);

async fn refusals_leave_nothing_held(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let shop = TestShop::start(backend, &coordinator.url()).await;
    let client = Client::connect(coordinator.url()).await.expect("connect");
    shop.inventory.restock(SKU, 5).await.expect("restock");
    shop.payment.open_accounts(&[1], 99).await.expect("account");
    shop.payment
        .open_accounts(&[2], 1_000)
        .await
        .expect("account");
    shop.points
        .open_accounts(&[1, 2], 15)
        .await
        .expect("points");
    let opening = Opening {
        money: 1_099,
        points: 30,
    };

    // Too little money: the purchase aborts and nothing stays reserved or frozen.
    let outcome = flows::purchase(&client, &purchase(1)).await.expect("flow");
    assert_eq!(
        outcome,
        Outcome::Refused {
            participant: "payment".into(),
            reason: "insufficient funds".into()
        }
    );
    let stock = shop.stock().await;
    assert_eq!((stock.available, stock.reserved, stock.sold), (5, 0, 0));
    let account = shop
        .payment
        .account(1)
        .await
        .expect("account")
        .expect("exists");
    assert_eq!((account.balance, account.frozen), (99, 0));
    let points = shop
        .points
        .account(1)
        .await
        .expect("points")
        .expect("exists");
    assert_eq!((points.usable, points.frozen, points.pending), (15, 0, 0));

    // Too few points for a points-pay order.
    let pay = PointsPay {
        user_id: 1,
        campaign: "p".into(),
        sku: "V".into(),
        qty: 1,
        points: 16,
    };
    let outcome = flows::points_pay(&client, &pay).await.expect("flow");
    assert_eq!(
        outcome,
        Outcome::Refused {
            participant: "points".into(),
            reason: "insufficient points".into()
        }
    );
    let points = shop
        .points
        .account(1)
        .await
        .expect("points")
        .expect("exists");
    assert_eq!((points.usable, points.frozen), (15, 0));

    // A second purchase by the same user in the same campaign is refused; the first stands.
    let first = flows::purchase(&client, &purchase(2)).await.expect("flow");
    assert!(matches!(first, Outcome::Done(_)), "{first:?}");
    let second = flows::purchase(&client, &purchase(2)).await.expect("flow");
    assert_eq!(
        second,
        Outcome::Refused {
            participant: "order".into(),
            reason: "already bought in this campaign".into()
        }
    );
    let account = shop
        .payment
        .account(2)
        .await
        .expect("account")
        .expect("exists");
    assert_eq!((account.balance, account.frozen), (900, 0), "charged once");
    let stock = shop.stock().await;
    assert_eq!((stock.available, stock.reserved, stock.sold), (4, 0, 1));

    let orders = shop.orders.all().await.expect("orders");
    assert!(
        orders
            .iter()
            .all(|o| o.status == "PAID" || o.status == "CANCELLED"),
        "{orders:?}"
    );
    assert_eq!(shop.check(opening).await, Vec::<String>::new());
    shop.stop().await;
    coordinator.stop().await.expect("stop");
}
both!(refusals_leave_nothing_held);

async fn refund_restores_everything_exactly_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut shop = TestShop::start(backend, &coordinator.url()).await;
    let client = Client::connect(coordinator.url()).await.expect("connect");
    shop.inventory.restock(SKU, 3).await.expect("restock");
    shop.payment
        .open_accounts(&[1], 1_000)
        .await
        .expect("account");
    shop.points.open_accounts(&[1], 100).await.expect("points");
    let opening = Opening {
        money: 1_000,
        points: 100,
    };

    let Outcome::Done(order_id) = flows::purchase(&client, &purchase(1)).await.expect("flow")
    else {
        panic!("purchase refused");
    };
    let pay = PointsPay {
        user_id: 1,
        campaign: "p".into(),
        sku: "V".into(),
        qty: 1,
        points: 40,
    };
    let Outcome::Done(points_order_id) = flows::points_pay(&client, &pay).await.expect("flow")
    else {
        panic!("points-pay refused");
    };
    let order = shop
        .orders
        .order(&order_id)
        .await
        .expect("read")
        .expect("order");
    let points_order = shop
        .orders
        .order(&points_order_id)
        .await
        .expect("read")
        .expect("order");
    assert_eq!(
        shop.points.account(1).await.expect("p").expect("a").usable,
        100 + 10 - 40
    );

    // A refund attempted while the payment service is down aborts without effect.
    shop.stop_service(shop::PAYMENT).await;
    let refund = tokio::spawn({
        let client = client.clone();
        let order = order.clone();
        async move { flows::refund(&client, &order).await }
    });
    // The refund's Try at payment cannot succeed while it is down: the flow aborts, and the
    // order is PAID again. Bring payment back and refund again.
    let first = refund.await.expect("task");
    assert!(
        first.is_err(),
        "a refund cannot be tried against a stopped service: {first:?}"
    );
    shop.restart_service(shop::PAYMENT).await;
    assert_eq!(
        shop.orders
            .order(&order_id)
            .await
            .expect("r")
            .expect("o")
            .status,
        "PAID"
    );

    let refunded = flows::refund(&client, &order).await.expect("refund");
    assert!(matches!(refunded, Outcome::Done(_)), "{refunded:?}");
    // Replayed: the order is no longer PAID, so nothing happens twice.
    let replay = flows::refund(&client, &order).await.expect("replay");
    assert!(matches!(replay, Outcome::Refused { .. }), "{replay:?}");
    let points_refund = flows::refund(&client, &points_order).await.expect("refund");
    assert!(
        matches!(points_refund, Outcome::Done(_)),
        "{points_refund:?}"
    );
    let points_replay = flows::refund(&client, &points_order).await.expect("replay");
    assert!(
        matches!(points_replay, Outcome::Refused { .. }),
        "{points_replay:?}"
    );

    let stock = shop.stock().await;
    assert_eq!(
        (stock.available, stock.reserved, stock.sold),
        (3, 0, 0),
        "restocked once"
    );
    let account = shop
        .payment
        .account(1)
        .await
        .expect("account")
        .expect("exists");
    assert_eq!(
        (account.balance, account.frozen),
        (1_000, 0),
        "money back once"
    );
    let points = shop
        .points
        .account(1)
        .await
        .expect("points")
        .expect("exists");
    assert_eq!(
        points.usable,
        100 + 10,
        "points back once; the purchase reward stays"
    );
    assert_eq!(shop.check(opening).await, Vec::<String>::new());
    shop.stop().await;
    coordinator.stop().await.expect("stop");
}
both!(refund_restores_everything_exactly_once);

async fn refund_phase_two_is_retried_until_done(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let mut shop = TestShop::start(backend, &coordinator.url()).await;
    let client = Client::connect(coordinator.url())
        .await
        .expect("connect")
        .with_commit_wait(Duration::from_millis(200));
    shop.inventory.restock(SKU, 1).await.expect("restock");
    shop.payment
        .open_accounts(&[1], 500)
        .await
        .expect("account");
    shop.points.open_accounts(&[1], 0).await.expect("points");
    let Outcome::Done(order_id) = flows::purchase(&client, &purchase(1)).await.expect("flow")
    else {
        panic!("purchase refused");
    };
    let order = shop
        .orders
        .order(&order_id)
        .await
        .expect("read")
        .expect("order");

    // Every Try succeeds; then inventory goes down before the commit, so its Confirm fails
    // and is retried by the coordinator until inventory is back.
    let tx = client.begin(flows::TIMEOUT).await.expect("begin");
    tx.try_branch(
        shop::ORDER,
        "refund",
        &settle_participants::order::RefundOrder {
            order_id: order_id.clone(),
        },
    )
    .await
    .expect("order refund try");
    tx.try_branch(
        shop::PAYMENT,
        "refund",
        &settle_participants::payment::Refund {
            out_trade_no: order_id.clone(),
        },
    )
    .await
    .expect("payment refund try");
    tx.try_branch(
        shop::INVENTORY,
        "restock",
        &settle_participants::inventory::Units::new(SKU, 1),
    )
    .await
    .expect("restock try");
    let gid = tx.gid().to_owned();
    shop.stop_service(shop::INVENTORY).await;
    let status = tx.commit().await.expect("commit");
    assert_eq!(
        status,
        settle::client::Status::Committing,
        "inventory is down"
    );
    let mut raw = settle_testkit::client(&coordinator.url()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let tx = settle_testkit::get(&mut raw, &gid).await;
        let inventory_branch = tx
            .branches
            .iter()
            .find(|b| b.participant == "inventory")
            .expect("branch");
        if inventory_branch.attempts >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "confirm never retried"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shop.restart_service(shop::INVENTORY).await;
    settle_testkit::wait_for_status(&mut raw, &gid, settle::proto::v1::Status::Committed).await;

    let stock = shop.stock().await;
    assert_eq!((stock.available, stock.reserved, stock.sold), (1, 0, 0));
    assert_eq!(
        shop.payment
            .account(1)
            .await
            .expect("a")
            .expect("a")
            .balance,
        500
    );
    assert_eq!(
        shop.orders
            .order(&order.order_id)
            .await
            .expect("r")
            .expect("o")
            .status,
        "REFUNDED"
    );
    assert_eq!(
        shop.check(Opening {
            money: 500,
            points: 0
        })
        .await,
        Vec::<String>::new()
    );
    shop.stop().await;
    coordinator.stop().await.expect("stop");
}
both!(refund_phase_two_is_retried_until_done);

async fn refund_as_a_saga_restores_everything_once_or_compensates(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let shop = TestShop::start(backend, &coordinator.url()).await;
    let client = Client::connect(coordinator.url()).await.expect("connect");
    shop.inventory.restock(SKU, 3).await.expect("restock");
    shop.payment
        .open_accounts(&[1, 2], 1_000)
        .await
        .expect("accounts");
    shop.points
        .open_accounts(&[1, 2], 100)
        .await
        .expect("points");
    let opening = Opening {
        money: 2_000,
        points: 200,
    };

    let mut orders = Vec::new();
    for user in [1, 2] {
        let Outcome::Done(id) = flows::purchase(&client, &purchase(user))
            .await
            .expect("flow")
        else {
            panic!("purchase refused");
        };
        orders.push(shop.orders.order(&id).await.expect("read").expect("order"));
    }
    let pay = PointsPay {
        user_id: 1,
        campaign: "p".into(),
        sku: "V".into(),
        qty: 1,
        points: 40,
    };
    let Outcome::Done(points_id) = flows::points_pay(&client, &pay).await.expect("flow") else {
        panic!("points-pay refused");
    };
    let points_order = shop
        .orders
        .order(&points_id)
        .await
        .expect("read")
        .expect("order");

    // Refunded by saga, then replayed: the replay stops at the order step, nothing moves.
    for order in [&orders[0], &points_order] {
        let refunded = flows::refund_saga(&client, order).await.expect("saga");
        assert!(matches!(refunded, Outcome::Done(_)), "{refunded:?}");
        let replay = flows::refund_saga(&client, order).await.expect("saga");
        assert!(
            matches!(&replay, Outcome::Refused { reason, .. } if reason.contains("not paid")),
            "{replay:?}"
        );
    }
    assert_eq!(
        shop.payment
            .account(1)
            .await
            .expect("a")
            .expect("a")
            .balance,
        1_000
    );
    assert_eq!(
        shop.points.account(1).await.expect("p").expect("p").usable,
        100 + 10
    );

    // A restock that cannot happen (more units than were sold) refuses after the order and
    // the money moved: the coordinator compensates both, in reverse order.
    let mut forged = orders[1].clone();
    forged.qty = 5;
    let refused = flows::refund_saga(&client, &forged).await.expect("saga");
    assert!(
        matches!(&refused, Outcome::Refused { reason, .. } if reason.contains("fewer than 5")),
        "{refused:?}"
    );
    assert_eq!(
        shop.orders
            .order(&forged.order_id)
            .await
            .expect("r")
            .expect("o")
            .status,
        "PAID"
    );
    let account = shop.payment.account(2).await.expect("a").expect("a");
    assert_eq!(
        (account.balance, account.frozen),
        (900, 0),
        "the credit was taken back"
    );

    let stock = shop.stock().await;
    assert_eq!((stock.available, stock.reserved, stock.sold), (2, 0, 1));
    assert_eq!(shop.check(opening).await, Vec::<String>::new());
    shop.stop().await;
    coordinator.stop().await.expect("stop");
}
both!(refund_as_a_saga_restores_everything_once_or_compensates);

async fn message_form_purchases_keep_every_invariant(backend: Backend) {
    let db = TestDb::new(backend).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let shop = TestShop::start(backend, &coordinator.url()).await;
    let client = Client::connect(coordinator.url()).await.expect("connect");
    let mut raw = settle_testkit::client(&coordinator.url()).await;
    let query_endpoint = shop::INVENTORY.to_owned();

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    shop.inventory
        .define_campaign(&Campaign {
            campaign: "sale".to_owned(),
            starts_at: now - 60_000,
            ends_at: now + 3_600_000,
            per_user: 1,
        })
        .await
        .expect("campaign");
    shop.inventory.restock(SKU, 30).await.expect("restock");
    let buyers: Vec<i64> = (1..=50).collect();
    shop.payment
        .open_accounts(&buyers, 500)
        .await
        .expect("accounts");
    shop.points
        .open_accounts(&buyers, 30)
        .await
        .expect("points");
    let opening = Opening {
        money: 50 * 500,
        points: 50 * 30,
    };

    // Every buyer once, and every fifth one clicks twice.
    let mut work = buyers.clone();
    work.extend(buyers.iter().filter(|u| *u % 5 == 0));
    let outcomes: Vec<Outcome> = futures::stream::iter(work)
        .map(|user_id| {
            let (client, inventory, endpoint) = (
                client.clone(),
                shop.inventory.clone(),
                query_endpoint.clone(),
            );
            async move {
                let wait = Duration::from_secs(10);
                flows::purchase_message(&client, &inventory, &endpoint, &purchase(user_id), wait)
                    .await
            }
        })
        .buffer_unordered(16)
        .map(|outcome| outcome.expect("no purchase fails outright"))
        .collect()
        .await;
    let done: Vec<&String> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Done(gid) => Some(gid),
            Outcome::Refused { .. } => None,
        })
        .collect();
    assert_eq!(done.len(), 30, "every unit sold, none oversold");
    for outcome in &outcomes {
        if let Outcome::Refused {
            participant,
            reason,
        } = outcome
        {
            assert_eq!(participant, shop::INVENTORY, "refused locally: {reason}");
            assert!(
                reason.contains("sold out") || reason.contains("at most 1"),
                "{reason}"
            );
        }
    }
    for gid in done {
        let tx =
            settle_testkit::wait_for_status(&mut raw, gid, settle::proto::v1::Status::Committed)
                .await;
        assert_eq!(tx.mode(), settle::proto::v1::Mode::Message);
    }
    let stock = shop.stock().await;
    assert_eq!((stock.available, stock.reserved, stock.sold), (0, 0, 30));
    assert_eq!(shop.check(opening).await, Vec::<String>::new());
    let paid = shop
        .orders
        .all()
        .await
        .expect("orders")
        .iter()
        .filter(|o| o.status == "PAID")
        .count();
    assert_eq!(paid, 30);
    shop.stop().await;
    coordinator.stop().await.expect("stop");
}
both!(message_form_purchases_keep_every_invariant);
