//! The shop over mutual TLS on every hop, with certificates made at test time: the
//! initiator and the services are known to the coordinator by their certificates, the
//! services know the coordinator by its; purchases, points-pays and a refund saga run as
//! usual, while a caller with a valid certificate that is neither the coordinator nor the
//! initiator can neither Try, nor drive a service's phase two, nor take over a service's
//! name; and certificates rotated
//! while purchases run lose none of them.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use settle::{
    Client, Credentials,
    proto::v1::{self as pb, participant_client::ParticipantClient},
    security::connect::Target,
    server::Serving,
};
use settle_coordinator::{Running, Security};
use settle_participants::{
    flows::{self, Outcome, PointsPay, Purchase},
    invariants::{self, Opening},
    inventory::Inventory,
    order::Orders,
    payment::{Charge, Payment},
    points::Points,
    shop,
};
use settle_testkit::{Backend, Pki, Recorder, TestDb, both, start_coordinator, test_config};
use tonic::Code;

const SKU: &str = "SKU-1";
const BUYERS: i64 = 40;
/// Enough for every purchase a test makes.
const UNITS: i64 = 100_000;
const MONEY: i64 = 1_000;
const POINTS: i64 = 100;

/// A coordinator and the four services, every hop over mutual TLS from one test CA.
struct SecureShop {
    pki: Pki,
    _dbs: Vec<TestDb>,
    coordinator: Running,
    inventory: Arc<Inventory>,
    orders: Arc<Orders>,
    payment: Arc<Payment>,
    points: Arc<Points>,
    servers: Vec<(&'static str, Serving)>,
}

impl SecureShop {
    async fn start(backend: Backend) -> SecureShop {
        let pki = Pki::new("settle test CA");
        let db = TestDb::new(backend).await;
        let mut config = test_config(&db.url);
        config.security = Security {
            tls: Some(pki.server("coordinator")),
            participant_tls: Some(pki.client(Some("coordinator"))),
            ..Security::default()
        };
        let coordinator = start_coordinator(config).await;
        assert!(coordinator.url().starts_with("https://"));
        let mut dbs = vec![db];
        let mut open = async || {
            let db = TestDb::new(backend).await;
            let url = db.url.clone();
            dbs.push(db);
            url
        };
        let inventory = Inventory::open(&open().await).await.expect("inventory");
        let orders = Orders::open(&open().await).await.expect("orders");
        let payment = Payment::open(&open().await).await.expect("payment");
        let points = Points::open(&open().await).await.expect("points");
        let mut shop = SecureShop {
            pki,
            _dbs: dbs,
            coordinator,
            inventory,
            orders,
            payment,
            points,
            servers: Vec::new(),
        };
        for name in shop::SERVICES {
            let serving = shop.serve(name).await;
            assert!(serving.url().starts_with("https://"), "{}", serving.url());
            shop.servers.push((name, serving));
        }
        let buyers: Vec<i64> = (1..=BUYERS).collect();
        shop.inventory.restock(SKU, UNITS).await.expect("restock");
        shop.payment
            .open_accounts(&buyers, MONEY)
            .await
            .expect("accounts");
        shop.points
            .open_accounts(&buyers, POINTS)
            .await
            .expect("points");
        shop
    }

    /// Serves service `name` with its own certificate, accepting phase two from the
    /// coordinator only and Try from the initiator `checkout` only, and registering with
    /// the coordinator as itself.
    async fn serve(&self, name: &'static str) -> Serving {
        let options = shop::Options {
            tls: Some(self.pki.server(name)),
            coordinator_identity: Some("coordinator".to_owned()),
            try_from: Some(vec!["checkout".to_owned()]),
            credentials: self.credentials(name),
            ..shop::Options::default()
        };
        let url = self.coordinator.url();
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        match name {
            shop::INVENTORY => {
                let p = self.inventory.clone();
                shop::serve(name, p.clone(), p.barrier(), &url, addr, options).await
            }
            shop::ORDER => {
                let p = self.orders.clone();
                shop::serve(name, p.clone(), p.barrier(), &url, addr, options).await
            }
            shop::PAYMENT => {
                let p = self.payment.clone();
                shop::serve(name, p.clone(), p.barrier(), &url, addr, options).await
            }
            _ => {
                let p = self.points.clone();
                shop::serve(name, p.clone(), p.barrier(), &url, addr, options).await
            }
        }
        .expect("serve")
    }

    /// A certificate for `name` from the shop's CA.
    fn credentials(&self, name: &str) -> Credentials {
        Credentials {
            tls: Some(self.pki.client(Some(name))),
            token: None,
        }
    }

    /// A client of the coordinator known as `name`.
    async fn client(&self, name: &str) -> Client {
        Client::connect_with(self.coordinator.url(), self.credentials(name))
            .await
            .expect("connect")
    }

    fn url_of(&self, name: &str) -> String {
        let (_, serving) = self
            .servers
            .iter()
            .find(|(n, _)| *n == name)
            .expect("served");
        serving.url().to_owned()
    }

    async fn check(&self) -> Vec<String> {
        invariants::check_services(
            &self.inventory,
            &self.orders,
            &self.payment,
            &self.points,
            Opening {
                money: BUYERS * MONEY,
                points: BUYERS * POINTS,
            },
        )
        .await
        .expect("invariants")
    }

    async fn stop(self) {
        for (_, serving) in self.servers {
            serving.stop().await.expect("stop service");
        }
        self.coordinator.stop().await.expect("stop coordinator");
    }
}

/// The `n`th purchase: each in a campaign of its own (a user has one live order per
/// campaign), so that the buyers can buy as often as a test needs.
fn purchase(n: i64) -> Purchase {
    Purchase {
        user_id: n % BUYERS + 1,
        campaign: format!("sale-{n}"),
        sku: SKU.to_owned(),
        qty: 1,
        price: 1,
        reward: 1,
    }
}

async fn the_shop_runs_over_mutual_tls(backend: Backend) {
    let shop = SecureShop::start(backend).await;
    let checkout = shop.client("checkout").await;

    let Outcome::Done(bought) = flows::purchase(&checkout, &purchase(0))
        .await
        .expect("purchase")
    else {
        panic!("the purchase was refused")
    };
    let paid_with_points = PointsPay {
        user_id: 2,
        campaign: "sale".to_owned(),
        sku: SKU.to_owned(),
        qty: 1,
        points: 50,
    };
    let Outcome::Done(_) = flows::points_pay(&checkout, &paid_with_points)
        .await
        .expect("points-pay")
    else {
        panic!("the points-pay was refused")
    };
    let order = shop
        .orders
        .order(&bought)
        .await
        .expect("order")
        .expect("the purchase's order");
    let Outcome::Done(refund) = flows::refund_saga(&checkout, &order)
        .await
        .expect("refund saga")
    else {
        panic!("the refund was refused")
    };
    let saga = checkout.get(&refund).await.expect("get");
    assert_eq!(saga.mode(), pb::Mode::Saga);
    assert_eq!(saga.status(), pb::Status::Committed);
    assert_eq!(saga.began_by, "checkout");
    let tcc = checkout.get(&bought).await.expect("get");
    assert_eq!(tcc.status(), pb::Status::Committed);
    assert_eq!(
        (tcc.began_by.as_str(), tcc.decided_by.as_str()),
        ("checkout", "checkout")
    );
    let refunded = shop.orders.order(&bought).await.expect("order");
    assert_eq!(refunded.map(|o| o.status).as_deref(), Some("REFUNDED"));
    let violations = shop.check().await;
    assert!(violations.is_empty(), "{violations:#?}");
    shop.stop().await;
}
both!(the_shop_runs_over_mutual_tls);

async fn only_the_coordinator_drives_phase_two(backend: Backend) {
    let shop = SecureShop::start(backend).await;
    let checkout = shop.client("checkout").await;
    let before = shop.payment.account(3).await.expect("account");

    // A charge tried and not yet decided: someone else's Confirm would take the money.
    let tx = checkout.begin(flows::TIMEOUT).await.expect("begin");
    let gid = tx.gid().to_owned();
    let charge = Charge {
        user_id: 3,
        amount: 100,
        out_trade_no: gid.clone(),
    };
    tx.try_branch(shop::PAYMENT, "pay", &charge)
        .await
        .expect("try");
    let branch_id = checkout.get(&gid).await.expect("get").branches[0].branch_id;
    let confirm = pb::BranchRequest {
        gid: gid.clone(),
        branch_id,
        action: "pay".to_owned(),
        payload: serde_json::to_vec(&charge).expect("json").into(),
    };

    // A valid certificate, but not the coordinator's.
    let mallory = Target::new(
        &shop.url_of(shop::PAYMENT),
        Some(&shop.pki.client(Some("mallory"))),
    )
    .expect("target")
    .connect()
    .await
    .expect("connect");
    let refused = ParticipantClient::new(mallory.clone())
        .r#try(confirm.clone())
        .await
        .expect_err("mallory is not an initiator this service takes Try from");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = ParticipantClient::new(mallory.clone())
        .confirm(confirm.clone())
        .await
        .expect_err("mallory is not the coordinator");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = ParticipantClient::new(mallory)
        .cancel(confirm.clone())
        .await
        .expect_err("mallory is not the coordinator");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // No certificate at all.
    let anonymous = Target::new(&shop.url_of(shop::PAYMENT), Some(&shop.pki.client(None)))
        .expect("target")
        .connect()
        .await
        .expect("connect");
    let refused = ParticipantClient::new(anonymous)
        .confirm(confirm)
        .await
        .expect_err("no certificate");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    let log = shop.payment.log().await.expect("log");
    assert!(
        log.iter().all(|entry| entry.out_trade_no != gid),
        "nothing was debited by the refused calls: {log:?}"
    );

    // Mallory would receive every Confirm of payment if it could register the name.
    let decoy = Recorder::start().await;
    let mallory = shop.client("mallory").await;
    let hijack = mallory
        .coordinator()
        .register_participant(mallory.request(pb::RegisterParticipantRequest {
            name: shop::PAYMENT.to_owned(),
            endpoint: decoy.url.clone(),
        }))
        .await
        .expect_err("payment is not mallory's name");
    assert_eq!(hijack.code(), Code::PermissionDenied, "{hijack:?}");

    // The coordinator still calls the real payment service: the commit debits once.
    tx.commit().await.expect("commit");
    let after = shop.payment.account(3).await.expect("account");
    assert_eq!(
        after.map(|a| a.balance),
        before.map(|a| a.balance - 100),
        "the real payment service was confirmed"
    );
    assert!(decoy.calls().is_empty(), "{:?}", decoy.calls());
    shop.stop().await;
}
both!(only_the_coordinator_drives_phase_two);

/// Every certificate in the shop is replaced, twice, while purchases run, half of them
/// over connections made for them: each server presents its new certificate to new
/// connections, and no purchase fails.
async fn rotating_certificates_loses_no_purchase(backend: Backend) {
    let shop = SecureShop::start(backend).await;
    let checkout = shop.client("checkout").await;
    let coordinator_addr: SocketAddr = shop
        .coordinator
        .url()
        .trim_start_matches("https://")
        .parse()
        .expect("coordinator address");
    let servers: Vec<(&str, SocketAddr)> = std::iter::once(("coordinator", coordinator_addr))
        .chain(shop.servers.iter().map(|(name, s)| (*name, s.addr())))
        .collect();

    let (rotated, mut done) = tokio::sync::watch::channel(false);
    let buying = {
        let url = shop.coordinator.url();
        let credentials = shop.credentials("checkout");
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for n in 0.. {
                if *done.borrow_and_update() {
                    break;
                }
                let outcome = if n % 2 == 0 {
                    flows::purchase(&checkout, &purchase(n)).await
                } else {
                    let fresh = Client::connect_with(url.clone(), credentials.clone())
                        .await
                        .expect("a new connection during rotation");
                    flows::purchase(&fresh, &purchase(n)).await
                };
                outcomes.push(outcome);
            }
            outcomes
        })
    };
    for _ in 0..2 {
        for (name, addr) in &servers {
            let wanted = shop.pki.issue(name).der();
            shop.pki.issue("checkout");
            tokio::time::timeout(Duration::from_secs(20), async {
                while shop.pki.served_leaf(*addr).await != wanted {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{name} never presented its new certificate"));
        }
    }
    rotated.send_replace(true);
    let outcomes = buying.await.expect("buyers");
    assert!(outcomes.len() > 10, "purchases ran: {}", outcomes.len());
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| !matches!(o, Ok(Outcome::Done(_))))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    let stock = shop
        .inventory
        .stock(SKU)
        .await
        .expect("stock")
        .expect("sku");
    assert_eq!(stock.sold, outcomes.len() as i64, "{stock:?}");
    let violations = shop.check().await;
    assert!(violations.is_empty(), "{violations:#?}");
    shop.stop().await;
}
both!(rotating_certificates_loses_no_purchase);
