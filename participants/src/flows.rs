//! The flows the shop exists for, as initiator-side functions over the SDK client:
//! flash-sale **purchase** (inventory + order + payment + points reward), **points-pay**
//! (order + points) and **refund** (order + money or points back + restock), the last one
//! also as a saga ([`refund_saga`]), and the purchase also as a transactional message
//! ([`purchase_message`]).
//!
//! Each flow is one TCC transaction. A business refusal aborts it and comes back as
//! [`Outcome::Refused`]; any other error aborts it too and is returned. Phase two is the
//! coordinator's: a Commit that answers COMMITTING still completes, retried until done.

use std::{sync::Arc, time::Duration};

use settle::{
    Client,
    client::{BeginOptions, BranchSpec, Error, Status},
    message, participant, saga,
};

use crate::{
    inventory::{Inventory, Units},
    order::{NewOrder, Order, PayWith, RefundOrder},
    payment::{Charge, Refund},
    points::PointsMove,
    shop::{INVENTORY, ORDER, PAYMENT, POINTS},
};

/// How long a flow's transaction may stay open before the coordinator aborts it.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// How a flow ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed (or committing: phase two finishes in the background). The gid, which is
    /// also the order id for purchases and points-pay.
    Done(String),
    /// A participant refused; the transaction was aborted.
    Refused {
        /// Who refused.
        participant: String,
        /// Why.
        reason: String,
    },
}

/// A flash-sale purchase.
#[derive(Debug, Clone)]
pub struct Purchase {
    /// Buyer.
    pub user_id: i64,
    /// The sale.
    pub campaign: String,
    /// The item.
    pub sku: String,
    /// How many.
    pub qty: i64,
    /// Price in money.
    pub price: i64,
    /// Points granted when the purchase commits.
    pub reward: i64,
}

impl Purchase {
    /// The order, the charge and the reward of purchase `gid`, as both forms send them.
    fn parts(&self, gid: &str) -> (NewOrder, Charge, PointsMove) {
        let order = NewOrder {
            user_id: self.user_id,
            campaign: self.campaign.clone(),
            sku: self.sku.clone(),
            qty: self.qty,
            amount: self.price,
            pay_with: PayWith::Money,
        };
        let charge = Charge {
            user_id: self.user_id,
            amount: self.price,
            out_trade_no: gid.to_owned(),
        };
        let reward = PointsMove {
            user_id: self.user_id,
            points: self.reward,
            out_trade_no: gid.to_owned(),
        };
        (order, charge, reward)
    }
}

/// Buys: reserves stock first (the usual refusal in a flash sale, and the cheapest),
/// registered with Begin itself to save a round trip, then creates the order, freezes the
/// money and stages the reward together.
pub async fn purchase(client: &Client, p: &Purchase) -> Result<Outcome, Error> {
    purchase_via(client, p, INVENTORY).await
}

/// [`purchase`], reserving at the inventory replica registered as `inventory`
/// ([`crate::shop::inventory_replica`]).
pub async fn purchase_via(
    client: &Client,
    p: &Purchase,
    inventory: &str,
) -> Result<Outcome, Error> {
    let units = Units {
        campaign: Some(p.campaign.clone()),
        user_id: Some(p.user_id),
        ..Units::new(&p.sku, p.qty)
    };
    let mut tx = client
        .begin_with(BeginOptions {
            timeout: TIMEOUT,
            branches: vec![BranchSpec::json(inventory, "reserve", &units)?],
            ..BeginOptions::default()
        })
        .await?;
    let gid = tx.gid().to_owned();
    let reserved = tx.try_all().await;
    let tried = async {
        reserved?;
        let (order, charge, reward) = p.parts(&gid);
        let (order, charge, reward) = tokio::join!(
            tx.try_branch(ORDER, "create", &order),
            tx.try_branch(PAYMENT, "pay", &charge),
            async {
                if p.reward > 0 {
                    tx.try_branch(POINTS, "reward", &reward).await.map(Some)
                } else {
                    Ok(None)
                }
            },
        );
        order?;
        charge?;
        reward?;
        Ok(())
    };
    let tried = tried.await;
    finish(tx, tried).await
}

/// The purchase as a transactional message (the designs' asynchronous order): the
/// inventory sells the units in its own local transaction, which decides alone; the order,
/// the debit and the reward (when there is one) follow as the message's steps, delivered
/// at least once if and only if that transaction committed. The order is created PENDING,
/// the money and the reward move together, and the order is then marked PAID. Nothing in
/// the steps may be refused, so this form is for buyers whose money is not in doubt
/// (funded for the sale); a step that refuses holds the message for an operator.
///
/// Runs in the inventory's process: `inventory` is its service and `query_endpoint` its
/// registered name (or the URL of its participant server), which answers the
/// coordinator's QueryPrepared. Returns once the steps were delivered or `wait` passed
/// (delivery goes on regardless); a sold-out or over-the-limit purchase is refused
/// locally, before any step exists.
pub async fn purchase_message(
    client: &Client,
    inventory: &Arc<Inventory>,
    query_endpoint: &str,
    p: &Purchase,
    wait: Duration,
) -> Result<Outcome, message::Error<participant::Error>> {
    let gid = message::new_gid();
    let units = Units {
        campaign: Some(p.campaign.clone()),
        user_id: Some(p.user_id),
        ..Units::new(&p.sku, p.qty)
    };
    let (order, charge, reward) = p.parts(&gid);
    let message = client
        .message(&gid)
        .query_endpoint(query_endpoint)
        .timeout(TIMEOUT)
        .wait(wait)
        .step(ORDER, "create", &order)
        .parallel(
            std::iter::once(message::Step::new(PAYMENT, "pay", &charge))
                .chain((p.reward > 0).then(|| message::Step::new(POINTS, "reward", &reward))),
        )
        .step(ORDER, "paid", &serde_json::json!({}));
    let database = inventory.barrier().database().clone();
    // The local transaction borrows only its connection (as sqlx's transaction closures
    // do), so what it needs besides is moved in.
    let inventory = Arc::clone(inventory);
    let sold = message.run_local(&database, move |conn| {
        Box::pin(async move { inventory.sell(conn, &units).await })
    });
    match sold.await {
        Ok(sent) => Ok(Outcome::Done(sent.gid)),
        Err(message::Error::Local(participant::Error::Refused(reason))) => Ok(Outcome::Refused {
            participant: INVENTORY.to_owned(),
            reason,
        }),
        Err(error) => Err(error),
    }
}

/// An order paid with points.
#[derive(Debug, Clone)]
pub struct PointsPay {
    /// Buyer.
    pub user_id: i64,
    /// The campaign.
    pub campaign: String,
    /// The item.
    pub sku: String,
    /// How many.
    pub qty: i64,
    /// Price in points.
    pub points: i64,
}

/// Pays an order with points: creates the order and freezes the points together.
pub async fn points_pay(client: &Client, p: &PointsPay) -> Result<Outcome, Error> {
    let tx = client.begin(TIMEOUT).await?;
    let gid = tx.gid().to_owned();
    let order = NewOrder {
        user_id: p.user_id,
        campaign: p.campaign.clone(),
        sku: p.sku.clone(),
        qty: p.qty,
        amount: p.points,
        pay_with: PayWith::Points,
    };
    let payment = PointsMove {
        user_id: p.user_id,
        points: p.points,
        out_trade_no: gid,
    };
    let (order, payment) = tokio::join!(
        tx.try_branch(ORDER, "create", &order),
        tx.try_branch(POINTS, "pay", &payment),
    );
    let tried = order.and(payment).map(drop);
    finish(tx, tried).await
}

/// Refunds a paid order: the order moves to REFUNDED, the money (or points) goes back, and
/// a purchase's units return to stock.
pub async fn refund(client: &Client, order: &Order) -> Result<Outcome, Error> {
    let tx = client.begin(TIMEOUT).await?;
    let tried = async {
        tx.try_branch(
            ORDER,
            "refund",
            &RefundOrder {
                order_id: order.order_id.clone(),
            },
        )
        .await?;
        if order.pay_with == "points" {
            let back = PointsMove {
                user_id: order.user_id,
                points: order.amount,
                out_trade_no: order.order_id.clone(),
            };
            tx.try_branch(POINTS, "refund", &back).await?;
        } else {
            let back = Refund {
                out_trade_no: order.order_id.clone(),
            };
            let units = Units::new(&order.sku, order.qty);
            let (money, stock) = tokio::join!(
                tx.try_branch(PAYMENT, "refund", &back),
                tx.try_branch(INVENTORY, "restock", &units),
            );
            money?;
            stock?;
        }
        Ok(())
    };
    let tried = tried.await;
    finish(tx, tried).await
}

/// The refund as a saga: the order moves straight to REFUNDED, then the money (or points)
/// goes back and, for a purchase, the units return to stock, in parallel. A step that
/// refuses (the order is not paid) ends it before anything moved; a later failure is
/// compensated in reverse order by the coordinator. Waits until the saga is final.
pub async fn refund_saga(client: &Client, order: &Order) -> Result<Outcome, saga::Error> {
    let refund = RefundOrder {
        order_id: order.order_id.clone(),
    };
    let saga = client
        .saga()
        .timeout(TIMEOUT)
        .step(ORDER, "refund", &refund);
    let saga = if order.pay_with == "points" {
        let back = PointsMove {
            user_id: order.user_id,
            points: order.amount,
            out_trade_no: order.order_id.clone(),
        };
        saga.step(POINTS, "refund", &back)
    } else {
        let back = Refund {
            out_trade_no: order.order_id.clone(),
        };
        let units = Units::new(&order.sku, order.qty);
        saga.parallel([
            saga::Step::new(PAYMENT, "refund", &back),
            saga::Step::new(INVENTORY, "restock", &units),
        ])
    };
    let submitted = saga.submit().await?;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut status = submitted.status;
    loop {
        match status {
            Status::Committed => return Ok(Outcome::Done(submitted.gid)),
            Status::Aborted => {
                let tx = client.get(&submitted.gid).await.map_err(|e| match e {
                    Error::Coordinator(status) => saga::Error::Coordinator(status),
                    other => {
                        saga::Error::Coordinator(tonic::Status::unavailable(other.to_string()))
                    }
                })?;
                return Ok(Outcome::Refused {
                    participant: "saga".to_owned(),
                    reason: tx.reason,
                });
            }
            _ if tokio::time::Instant::now() > deadline => {
                return Err(saga::Error::Coordinator(tonic::Status::deadline_exceeded(
                    format!("{} is still {status:?}", submitted.gid),
                )));
            }
            _ => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                status = match client.get(&submitted.gid).await {
                    Ok(tx) => tx.status(),
                    Err(_) => status,
                };
            }
        }
    }
}

/// Commits when every Try succeeded; otherwise aborts, and reports a refusal as an outcome.
async fn finish(tx: settle::Transaction, tried: Result<(), Error>) -> Result<Outcome, Error> {
    let gid = tx.gid().to_owned();
    match tried {
        Ok(()) => match tx.commit().await? {
            Status::Committed | Status::Committing => Ok(Outcome::Done(gid)),
            other => Err(Error::Coordinator(tonic::Status::internal(format!(
                "{gid}: commit answered {other:?}"
            )))),
        },
        Err(Error::Refused {
            participant,
            reason,
        }) => {
            tx.abort(&format!("{participant} refused: {reason}"))
                .await?;
            Ok(Outcome::Refused {
                participant,
                reason,
            })
        }
        Err(error) => {
            // The abort is best effort: if it fails too, the deadline aborts.
            let _ = tx.abort(&error.to_string()).await;
            Err(error)
        }
    }
}
