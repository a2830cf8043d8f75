//! The load: workers running the shop's flows (purchases on the Redis hot path and on the
//! database, purchases as transactional messages, points-pays, refunds as TCC and as
//! sagas, and refund sagas refused at their second step so that the first is compensated)
//! against both coordinators, through their links, until told to stop. It counts
//! outcomes; whether the outcomes were right is the checks' to say, from the databases.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use settle::{Client, client::Status};
use settle_participants::{
    flows::{self, Outcome, PointsPay, Purchase},
    inventory::Inventory,
    order::{Order, Orders, RefundOrder},
    payment::Refund,
    shop,
};

/// The SKUs: one hot (its stock in Redis), one on the database path, one sold by messages.
pub const HOT_SKU: &str = "CHAOS-HOT";
pub const COLD_SKU: &str = "CHAOS-COLD";
pub const MESSAGE_SKU: &str = "CHAOS-MSG";

/// Buyers are 1..=USERS, each with money and points enough never to be short in a message.
pub const USERS: i64 = 400;

/// The longest one flow may take before the worker gives up on it (the coordinator does
/// not: an unfinished transaction is aborted at its deadline or finished by recovery).
const FLOW_LIMIT: Duration = Duration::from_secs(60);

/// Outcomes of one flow kind.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub done: u64,
    pub refused: u64,
    pub failed: u64,
    pub gave_up: u64,
}

/// The running load.
#[derive(Debug)]
pub struct Load {
    clients: Vec<Client>,
    inventory: Arc<Inventory>,
    orders: Arc<Orders>,
    /// Orders that a purchase or points-pay said are done, for refunds to pick from.
    paid: Mutex<Vec<String>>,
    tallies: Mutex<BTreeMap<&'static str, Tally>>,
    /// When flows completed (ms after `start`), to measure recovery after each fault.
    completions: Mutex<Vec<u64>>,
    messages: AtomicU64,
    stop: AtomicBool,
    start: Instant,
}

impl Load {
    pub fn new(
        clients: Vec<Client>,
        inventory: Arc<Inventory>,
        orders: Arc<Orders>,
        start: Instant,
    ) -> Arc<Load> {
        Arc::new(Load {
            clients,
            inventory,
            orders,
            paid: Mutex::new(Vec::new()),
            tallies: Mutex::new(BTreeMap::new()),
            completions: Mutex::new(Vec::new()),
            messages: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            start,
        })
    }

    /// Runs `workers` workers until [`Load::stop`]; worker `i` uses coordinator `i % 2`.
    pub fn spawn(self: &Arc<Load>, workers: usize, seed: u64) -> Vec<tokio::task::JoinHandle<()>> {
        (0..workers)
            .map(|i| {
                let load = self.clone();
                tokio::spawn(async move { load.work(i, seed).await })
            })
            .collect()
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn tallies(&self) -> BTreeMap<&'static str, Tally> {
        lock(&self.tallies).clone()
    }

    pub fn completions(&self) -> Vec<u64> {
        let mut all = lock(&self.completions).clone();
        all.sort_unstable();
        all
    }

    async fn work(&self, worker: usize, seed: u64) {
        let client = &self.clients[worker % self.clients.len()];
        let mut rng = StdRng::seed_from_u64(seed ^ (worker as u64).wrapping_mul(0x9e37_79b9));
        while !self.stop.load(Ordering::Relaxed) {
            let user_id = rng.random_range(1..=USERS);
            let price = rng.random_range(10..100);
            let reward = rng.random_range(1..5);
            let qty = rng.random_range(1..3);
            // Many campaigns, so that the one-live-order-per-campaign rule rarely refuses.
            let campaign = format!("c{}", rng.random_range(0..2_000));
            let kind = match rng.random_range(0..100) {
                0..25 => "purchase (hot sku, tcc)",
                25..45 => "purchase (tcc)",
                45..57 => "purchase (message)",
                57..72 => "points-pay (tcc)",
                72..84 => "refund (tcc)",
                84..94 => "refund (saga)",
                _ => "refund (saga, compensated)",
            };
            let purchase = |sku: &str| Purchase {
                user_id,
                campaign: campaign.clone(),
                sku: sku.to_owned(),
                qty,
                price,
                reward,
            };
            let flow = async {
                match kind {
                    "purchase (hot sku, tcc)" => {
                        self.paid_if(flows::purchase(client, &purchase(HOT_SKU)).await)
                    }
                    "purchase (tcc)" => {
                        self.paid_if(flows::purchase(client, &purchase(COLD_SKU)).await)
                    }
                    "purchase (message)" => {
                        // A message's steps may not refuse: a campaign of its own each time.
                        let n = self.messages.fetch_add(1, Ordering::Relaxed);
                        let p = Purchase {
                            campaign: format!("m{worker}-{n}"),
                            ..purchase(MESSAGE_SKU)
                        };
                        let sent = flows::purchase_message(
                            client,
                            &self.inventory,
                            shop::INVENTORY,
                            &p,
                            Duration::from_secs(5),
                        )
                        .await;
                        self.paid_if(sent)
                    }
                    "points-pay (tcc)" => {
                        let p = PointsPay {
                            user_id,
                            campaign: campaign.clone(),
                            sku: COLD_SKU.to_owned(),
                            qty: 1,
                            points: price,
                        };
                        self.paid_if(flows::points_pay(client, &p).await)
                    }
                    "refund (saga, compensated)" => self.compensated_refund(client).await,
                    saga_or_tcc => self.refund(client, saga_or_tcc == "refund (saga)").await,
                }
            };
            let outcome = tokio::time::timeout(FLOW_LIMIT, flow).await;
            if matches!(outcome, Ok(None)) {
                continue;
            }
            {
                let mut tallies = lock(&self.tallies);
                let tally = tallies.entry(kind).or_default();
                match outcome {
                    Ok(Some(Ok(true))) => {
                        tally.done += 1;
                        lock(&self.completions).push(self.start.elapsed().as_millis() as u64);
                    }
                    Ok(Some(Ok(false))) => tally.refused += 1,
                    Ok(Some(Err(()))) => tally.failed += 1,
                    Ok(None) => {}
                    Err(_) => tally.gave_up += 1,
                }
            }
            if !matches!(outcome, Ok(Some(Ok(_)))) {
                // As a real caller would, wait a little before trying again after a
                // failure, rather than spin while a coordinator is down.
                tokio::time::sleep(Duration::from_millis(rng.random_range(50..250))).await;
            }
        }
    }

    /// Counts a flow's result, and keeps a done order for a later refund. `Some(Ok(done))`,
    /// or `Some(Err(()))` when it failed (a fault), never `None`.
    fn paid_if<E: std::fmt::Display>(
        &self,
        result: Result<Outcome, E>,
    ) -> Option<Result<bool, ()>> {
        Some(match result {
            Ok(Outcome::Done(gid)) => {
                lock(&self.paid).push(gid);
                Ok(true)
            }
            Ok(Outcome::Refused { .. }) => Ok(false),
            Err(error) => {
                tracing::debug!(%error, "flow failed");
                Err(())
            }
        })
    }

    /// An order some flow paid, taken from the list so that no other refund picks it:
    /// `None` when there is none yet, `Some(Err(()))` when the order could not be read.
    async fn paid_order(&self) -> Option<Result<Order, ()>> {
        let gid = {
            let mut paid = lock(&self.paid);
            if paid.is_empty() {
                return None;
            }
            let i = rand::random_range(0..paid.len());
            paid.swap_remove(i)
        };
        match self.orders.order(&gid).await {
            Ok(Some(order)) if order.status == "PAID" => Some(Ok(order)),
            Ok(Some(order)) if order.status == "PENDING" => {
                // Phase two of its purchase is still under way: later.
                lock(&self.paid).push(gid);
                None
            }
            Ok(_) => None,
            Err(_) => {
                lock(&self.paid).push(gid);
                Some(Err(()))
            }
        }
    }

    /// A refund saga whose second step is refused (the payment service knows no such
    /// payment), so that the coordinator compensates the first (the order is PAID again),
    /// under the same faults as everything else. Its expected end is ABORTED, counted as a
    /// refusal; the order goes back to the list once it is.
    async fn compensated_refund(&self, client: &Client) -> Option<Result<bool, ()>> {
        let order = match self.paid_order().await? {
            Ok(order) => order,
            Err(()) => return Some(Err(())),
        };
        let refund = RefundOrder {
            order_id: order.order_id.clone(),
        };
        let unknown = Refund {
            out_trade_no: format!("no-such-payment-{}", order.order_id),
        };
        let saga = client
            .saga()
            .timeout(flows::TIMEOUT)
            .step(shop::ORDER, "refund", &refund)
            .step(shop::PAYMENT, "refund", &unknown);
        let Ok(submitted) = saga.submit().await else {
            return Some(Err(()));
        };
        let mut status = submitted.status;
        let deadline = Instant::now() + flows::TIMEOUT;
        while !matches!(status, Status::Committed | Status::Aborted) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Ok(tx) = client.get(&submitted.gid).await {
                status = tx.status();
            }
        }
        match status {
            Status::Aborted => {
                lock(&self.paid).push(order.order_id);
                Some(Ok(false))
            }
            Status::Committed => Some(Ok(true)),
            _ => Some(Err(())),
        }
    }

    /// Refunds an order some flow paid; `None` when none is paid yet (nothing counted).
    async fn refund(&self, client: &Client, saga: bool) -> Option<Result<bool, ()>> {
        let order = match self.paid_order().await? {
            Ok(order) => order,
            Err(()) => return Some(Err(())),
        };
        let outcome = if saga {
            flows::refund_saga(client, &order)
                .await
                .map_err(|e| e.to_string())
        } else {
            flows::refund(client, &order)
                .await
                .map_err(|e| e.to_string())
        };
        match outcome {
            Ok(Outcome::Done(_)) => Some(Ok(true)),
            Ok(Outcome::Refused { .. }) => Some(Ok(false)),
            Err(error) => {
                tracing::debug!(%error, "refund failed");
                Some(Err(()))
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
