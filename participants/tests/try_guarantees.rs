//! TCC's promise to an initiator, checked against each shop service over its real gRPC on
//! SQLite and PostgreSQL with generated payloads a careless or hostile initiator could send
//! (zero, negative, boundary and overflowing amounts, unknown users and SKUs, names too
//! long or empty, out_trade_nos reused across transactions): whenever a Try succeeds, the
//! Confirm or Cancel drawn for it succeeds too, and so does its duplicate; whenever a Try is
//! refused, it is refused as `INVALID_ARGUMENT` or `ABORTED`, nothing is reserved or frozen,
//! and a Cancel after it changes nothing; the service's ledger holds after every step.
//!
//! Then the cases the generated ones were written for, each with its exact answer.

use std::{fmt::Debug, future::Future, time::Duration};

use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};
use serde::Serialize;
use serde_json::json;
use settle::{Barrier, Participant, server::Serving};
use settle_participants::{
    invariants,
    inventory::Inventory,
    order::{Order, Orders},
    payment::{self, Payment},
    points::{self, Points},
    service::LIMIT,
};
use settle_proto::v1::{self as pb, participant_client::ParticipantClient};
use settle_testkit::{Backend, TestDb, both};
use tonic::{Code, Status, transport::Channel};

/// One shop service on a database of its own, served over gRPC as the shop serves it
/// (group commit on), with no coordinator: the test plays the coordinator.
struct Served<P> {
    service: std::sync::Arc<P>,
    client: ParticipantClient<Channel>,
    serving: Serving,
    _db: TestDb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Try,
    Confirm,
    Cancel,
}

impl<P: Participant> Served<P> {
    async fn start(
        backend: Backend,
        open: impl AsyncFnOnce(&str) -> std::sync::Arc<P>,
        barrier: impl FnOnce(&P) -> Barrier,
    ) -> Served<P> {
        let db = TestDb::new(backend).await;
        let service = open(&db.url).await;
        let serving = settle::serve("under-test", service.clone(), barrier(&service))
            .group_commit(64)
            .bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("serve");
        let client = ParticipantClient::connect(serving.url().to_owned())
            .await
            .expect("connect");
        Served {
            service,
            client,
            serving,
            _db: db,
        }
    }

    async fn call(
        &self,
        phase: Phase,
        gid: &str,
        action: &str,
        payload: &impl Serialize,
    ) -> Result<(), Status> {
        let request = pb::BranchRequest {
            gid: gid.to_owned(),
            branch_id: 1,
            action: action.to_owned(),
            payload: serde_json::to_vec(payload).expect("json").into(),
        };
        let mut client = self.client.clone();
        match phase {
            Phase::Try => client.r#try(request).await,
            Phase::Confirm => client.confirm(request).await,
            Phase::Cancel => client.cancel(request).await,
        }
        .map(drop)
    }

    /// Runs one branch through Try and, when the Try succeeds, the phase two drawn for it,
    /// checking the promise; returns whether the Try succeeded. `state` reads everything
    /// the branch could have changed.
    async fn branch<S, F>(
        &self,
        gid: &str,
        action: &str,
        payload: &impl Serialize,
        confirm: bool,
        state: impl Fn() -> F,
    ) -> Result<bool, TestCaseError>
    where
        S: PartialEq + Debug,
        F: Future<Output = S>,
    {
        let before = state().await;
        match self.call(Phase::Try, gid, action, payload).await {
            Ok(()) => {
                let phase = if confirm {
                    Phase::Confirm
                } else {
                    Phase::Cancel
                };
                for delivery in ["first", "duplicate"] {
                    let answer = self.call(phase, gid, action, payload).await;
                    prop_assert!(
                        answer.is_ok(),
                        "{action} {gid}: Try succeeded, {delivery} {phase:?} answered {answer:?}"
                    );
                }
                Ok(true)
            }
            Err(refusal) => {
                prop_assert!(
                    matches!(refusal.code(), Code::InvalidArgument | Code::Aborted),
                    "{action} {gid}: a Try is refused as INVALID_ARGUMENT or ABORTED, got {refusal:?}"
                );
                prop_assert_eq!(
                    &state().await,
                    &before,
                    "{} {}: refused Try changed state",
                    action,
                    gid
                );
                let cancel = self.call(Phase::Cancel, gid, action, payload).await;
                prop_assert!(
                    cancel.is_ok(),
                    "{action} {gid}: Cancel after a refusal: {cancel:?}"
                );
                prop_assert_eq!(
                    &state().await,
                    &before,
                    "{} {}: Cancel after a refusal changed state",
                    action,
                    gid
                );
                Ok(false)
            }
        }
    }

    async fn stop(self) {
        self.serving.stop().await.expect("stop");
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(24)
}

/// Runs `check` on each generated case, on the test's own runtime.
fn run_cases<T: Debug + Clone>(
    strategy: impl Strategy<Value = T>,
    check: impl AsyncFn(u32, T) -> Result<(), TestCaseError>,
) {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        source_file: Some(file!()),
        ..Config::default()
    });
    let handle = tokio::runtime::Handle::current();
    let case = std::cell::Cell::new(0);
    let result = tokio::task::block_in_place(|| {
        runner.run(&strategy, |value| {
            case.set(case.get() + 1);
            handle.block_on(check(case.get(), value))
        })
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

/// Amounts and quantities an initiator might send: typical, zero, negative, at and past the
/// limit, and anything at all.
fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => 1..500i64,
        1 => Just(0i64),
        1 => Just(-1i64),
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
        2 => (LIMIT - 600)..=LIMIT,
        1 => Just(LIMIT + 1),
        1 => any::<i64>(),
    ]
}

/// Opening balances: empty, ordinary, and at the limit.
fn balance() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0i64), 0..2_000i64, (LIMIT - 1_000)..=LIMIT]
}

/// An out_trade_no: one of a few of this case's (so they are reused within it), one shared
/// by every case, or one that is no name at all.
fn trade_no(case: u32, pick: u8) -> String {
    match pick {
        0..=3 => format!("c{case}-t{pick}"),
        4 => "shared".to_owned(),
        5 => String::new(),
        _ => "x".repeat(200),
    }
}

/// A user of this case: the first three have accounts, the others do not.
fn user(case: u32, pick: u8) -> i64 {
    i64::from(case) * 10 + i64::from(pick)
}

#[derive(Debug, Clone)]
struct Move {
    action: u8,
    user: u8,
    amount: i64,
    trade: u8,
    confirm: bool,
}

fn moves(actions: u8) -> impl Strategy<Value = ([i64; 3], Vec<Move>)> {
    let step = (0..actions, 0..5u8, amount(), 0..7u8, any::<bool>()).prop_map(
        |(action, user, amount, trade, confirm)| Move {
            action,
            user,
            amount,
            trade,
            confirm,
        },
    );
    (
        [balance(), balance(), balance()],
        prop::collection::vec(step, 1..14),
    )
}

async fn payment_keeps_its_promise(backend: Backend) {
    let served = Served::start(
        backend,
        async |url| Payment::open(url).await.expect("payment"),
        Payment::barrier,
    )
    .await;
    let opening = std::cell::Cell::new(0i64);
    run_cases(moves(2), async |case, (balances, moves)| {
        for (pick, balance) in (0..).zip(balances) {
            let user = [user(case, pick)];
            served
                .service
                .open_accounts(&user, balance)
                .await
                .expect("open");
            opening.set(opening.get() + balance);
        }
        let state = || async {
            let accounts = futures::future::join_all(
                (0..5).map(|pick| served.service.account(user(case, pick))),
            )
            .await;
            let accounts: Vec<_> = accounts.into_iter().map(|a| a.expect("account")).collect();
            (served.service.totals().await.expect("totals"), accounts)
        };
        for (i, m) in moves.iter().enumerate() {
            let gid = format!("g{case}-{i}");
            let out_trade_no = trade_no(case, m.trade);
            match m.action {
                0 => {
                    let charge = payment::Charge {
                        user_id: user(case, m.user),
                        amount: m.amount,
                        out_trade_no,
                    };
                    served
                        .branch(&gid, "pay", &charge, m.confirm, state)
                        .await?
                }
                _ => {
                    let refund = payment::Refund { out_trade_no };
                    served
                        .branch(&gid, "refund", &refund, m.confirm, state)
                        .await?
                }
            };
            let (totals, _) = state().await;
            let broken = invariants::money_ledger(&totals, opening.get());
            prop_assert!(broken.is_empty(), "after {gid}: {broken:?}");
        }
        Ok(())
    });
    served.stop().await;
}
both!(payment_keeps_its_promise);

async fn points_keep_their_promise(backend: Backend) {
    let served = Served::start(
        backend,
        async |url| Points::open(url).await.expect("points"),
        Points::barrier,
    )
    .await;
    let opening = std::cell::Cell::new(0i64);
    run_cases(moves(3), async |case, (balances, moves)| {
        for (pick, usable) in (0..).zip(balances) {
            let user = [user(case, pick)];
            served
                .service
                .open_accounts(&user, usable)
                .await
                .expect("open");
            opening.set(opening.get() + usable);
        }
        let state = || async {
            let accounts = futures::future::join_all(
                (0..5).map(|pick| served.service.account(user(case, pick))),
            )
            .await;
            let accounts: Vec<_> = accounts.into_iter().map(|a| a.expect("account")).collect();
            (served.service.totals().await.expect("totals"), accounts)
        };
        for (i, m) in moves.iter().enumerate() {
            let gid = format!("g{case}-{i}");
            let action = ["pay", "reward", "refund"][usize::from(m.action)];
            let payload = points::PointsMove {
                user_id: user(case, m.user),
                points: m.amount,
                out_trade_no: trade_no(case, m.trade),
            };
            served
                .branch(&gid, action, &payload, m.confirm, state)
                .await?;
            let (totals, _) = state().await;
            let broken = invariants::points_ledger(&totals, opening.get());
            prop_assert!(broken.is_empty(), "after {gid}: {broken:?}");
        }
        Ok(())
    });
    served.stop().await;
}
both!(points_keep_their_promise);

async fn inventory_keeps_its_promise(backend: Backend) {
    let served = Served::start(
        backend,
        async |url| Inventory::open(url).await.expect("inventory"),
        Inventory::barrier,
    )
    .await;
    // A SKU of this case (the first two are stocked), an unknown one, or no name at all.
    let sku = |case: u32, pick: u8| match pick {
        0 | 1 => format!("c{case}-s{pick}"),
        2 => "unknown".to_owned(),
        3 => String::new(),
        _ => "s".repeat(200),
    };
    let stock = prop_oneof![1..4i64, 1..500i64, (LIMIT - 600)..=LIMIT];
    run_cases(
        ([stock.clone(), stock], moves(2)),
        async |case, (levels, (_, moves))| {
            for (pick, level) in (0..).zip(levels) {
                served
                    .service
                    .restock(&sku(case, pick), level)
                    .await
                    .expect("restock");
            }
            let state = || async { served.service.all_stock().await.expect("stock") };
            for (i, m) in moves.iter().enumerate() {
                let gid = format!("g{case}-{i}");
                let action = ["reserve", "restock"][usize::from(m.action)];
                let payload = json!({ "sku": sku(case, m.user), "qty": m.amount });
                served
                    .branch(&gid, action, &payload, m.confirm, state)
                    .await?;
                let broken = invariants::stock_ledger(&state().await);
                prop_assert!(broken.is_empty(), "after {gid}: {broken:?}");
            }
            Ok(())
        },
    );
    served.stop().await;
}
both!(inventory_keeps_its_promise);

async fn orders_keep_their_promise(backend: Backend) {
    let served = Served::start(
        backend,
        async |url| Orders::open(url).await.expect("orders"),
        Orders::barrier,
    )
    .await;
    let campaign = |case: u32, pick: u8| match pick {
        0 | 1 => format!("c{case}-campaign{pick}"),
        2 => "shared".to_owned(),
        3 => String::new(),
        _ => "c".repeat(200),
    };
    run_cases(
        (moves(2), prop::collection::vec(amount(), 14)),
        async |case, ((_, moves), amounts)| {
            let state = || async { served.service.all().await.expect("orders") };
            let mut created = Vec::new();
            for (i, m) in moves.iter().enumerate() {
                let gid = format!("g{case}-{i}");
                if m.action == 0 {
                    let payload = json!({
                        "user_id": user(case, m.user % 2),
                        "campaign": campaign(case, m.trade % 5),
                        "sku": "s",
                        "qty": m.amount,
                        "amount": amounts[i],
                        "pay_with": if m.confirm { "money" } else { "points" },
                    });
                    if served
                        .branch(&gid, "create", &payload, m.confirm, state)
                        .await?
                        && m.confirm
                    {
                        created.push(gid.clone());
                    }
                } else {
                    let order_id = created
                        .get(usize::from(m.trade))
                        .cloned()
                        .unwrap_or_else(|| format!("g{case}-missing"));
                    let payload = json!({ "order_id": order_id });
                    served
                        .branch(&gid, "refund", &payload, m.confirm, state)
                        .await?;
                }
                let orders: Vec<Order> = state().await;
                for order in &orders {
                    prop_assert!(
                        matches!(order.status.as_str(), "PAID" | "CANCELLED" | "REFUNDED"),
                        "after {gid}: {order:?} was left mid-way"
                    );
                    prop_assert!(
                        (1..=LIMIT).contains(&order.qty) && (0..=LIMIT).contains(&order.amount),
                        "{order:?}"
                    );
                }
            }
            Ok(())
        },
    );
    served.stop().await;
}
both!(orders_keep_their_promise);

fn refused(answer: Result<(), Status>, code: Code, reason: &str) {
    match answer {
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert!(
                status.message().contains(reason),
                "{:?} does not say {reason:?}",
                status.message()
            );
        }
        Ok(()) => panic!("accepted; expected {code:?} saying {reason:?}"),
    }
}

/// A reward near `i64::MAX` is malformed; one that fits the bound but not the account
/// (a reward already pending) is a business refusal, never "try again later"; and a
/// reward that fits is confirmed.
async fn huge_rewards_are_refused_at_try(backend: Backend) {
    let served = Served::start(
        backend,
        async |url| Points::open(url).await.expect("points"),
        Points::barrier,
    )
    .await;
    served.service.open_accounts(&[7], 0).await.expect("open");
    let reward = |points: i64, otn: &str| points::PointsMove {
        user_id: 7,
        points,
        out_trade_no: otn.to_owned(),
    };
    let huge = served
        .call(Phase::Try, "g-huge", "reward", &reward(i64::MAX - 1, "o1"))
        .await;
    refused(huge, Code::InvalidArgument, "points must be between 1 and");

    let points = &served;
    let call = |phase, gid, amount, otn| async move {
        points
            .call(phase, gid, "reward", &reward(amount, otn))
            .await
    };
    call(Phase::Try, "g-first", LIMIT - 10, "o2")
        .await
        .expect("fits");
    refused(
        call(Phase::Try, "g-second", 11, "o3").await,
        Code::Aborted,
        "would take the account of user 7 over",
    );
    call(Phase::Try, "g-third", 10, "o4")
        .await
        .expect("fits exactly");
    call(Phase::Confirm, "g-first", LIMIT - 10, "o2")
        .await
        .expect("confirm");
    call(Phase::Confirm, "g-third", 10, "o4")
        .await
        .expect("confirm");
    let account = served
        .service
        .account(7)
        .await
        .expect("account")
        .expect("exists");
    assert_eq!((account.usable, account.pending), (LIMIT, 0));
    served.stop().await;
}
both!(huge_rewards_are_refused_at_try);

/// An out_trade_no already used by another transaction is refused at Try, naming that
/// transaction, before anything is frozen; for money, for points payments and for rewards.
async fn a_reused_out_trade_no_is_refused_before_anything_is_frozen(backend: Backend) {
    let payment = Served::start(
        backend,
        async |url| Payment::open(url).await.expect("payment"),
        Payment::barrier,
    )
    .await;
    payment
        .service
        .open_accounts(&[1, 2], 100)
        .await
        .expect("open");
    let charge = |user_id| payment::Charge {
        user_id,
        amount: 30,
        out_trade_no: "7".to_owned(),
    };
    payment
        .call(Phase::Try, "G", "pay", &charge(1))
        .await
        .expect("try");
    // The same gid and branch again is a duplicate, not a reuse: answered as before,
    // through the barrier, freezing nothing more.
    payment
        .call(Phase::Try, "G", "pay", &charge(1))
        .await
        .expect("duplicate try");
    let holder = payment.service.account(1).await.expect("account");
    assert_eq!(
        holder.map(|a| (a.balance, a.frozen)),
        Some((70, 30)),
        "frozen once"
    );
    payment
        .call(Phase::Confirm, "G", "pay", &charge(1))
        .await
        .expect("confirm");
    let before = payment.service.totals().await.expect("totals");
    refused(
        payment.call(Phase::Try, "H", "pay", &charge(2)).await,
        Code::Aborted,
        "out_trade_no 7 already used by transaction G",
    );
    assert_eq!(payment.service.totals().await.expect("totals"), before);
    let payer = payment.service.account(2).await.expect("account");
    assert_eq!(
        payer.map(|a| (a.balance, a.frozen)),
        Some((100, 0)),
        "nothing frozen"
    );
    // The coordinator aborts H: its Cancel finds nothing held and frees nothing of G's.
    payment
        .call(Phase::Cancel, "H", "pay", &charge(2))
        .await
        .expect("cancel");
    assert_eq!(payment.service.log().await.expect("log").len(), 1);
    assert_eq!(payment.service.totals().await.expect("totals"), before);
    payment.stop().await;

    let points = Served::start(
        backend,
        async |url| Points::open(url).await.expect("points"),
        Points::barrier,
    )
    .await;
    points
        .service
        .open_accounts(&[1, 2], 100)
        .await
        .expect("open");
    for action in ["pay", "reward"] {
        let m = |user_id| points::PointsMove {
            user_id,
            points: 30,
            out_trade_no: format!("{action}-7"),
        };
        let first = format!("{action}-G");
        points
            .call(Phase::Try, &first, action, &m(1))
            .await
            .expect("try");
        points
            .call(Phase::Confirm, &first, action, &m(1))
            .await
            .expect("confirm");
        let before = points.service.totals().await.expect("totals");
        refused(
            points.call(Phase::Try, "again", action, &m(2)).await,
            Code::Aborted,
            &format!("out_trade_no {action}-7 already used by transaction {first}"),
        );
        assert_eq!(
            points.service.totals().await.expect("totals"),
            before,
            "{action}"
        );
    }
    let account = points
        .service
        .account(2)
        .await
        .expect("account")
        .expect("exists");
    assert_eq!(
        (account.usable, account.frozen, account.pending),
        (100, 0, 0)
    );
    points.stop().await;
}
both!(a_reused_out_trade_no_is_refused_before_anything_is_frozen);

/// Quantities and amounts past the bound are malformed; a payer without an account is told
/// so, not that their funds are short.
async fn out_of_range_orders_and_unknown_payers_get_clear_answers(backend: Backend) {
    let orders = Served::start(
        backend,
        async |url| Orders::open(url).await.expect("orders"),
        Orders::barrier,
    )
    .await;
    let order = |qty: i64, amount: i64| {
        json!({ "user_id": 1, "campaign": "sale", "sku": "s", "qty": qty, "amount": amount,
                "pay_with": "money" })
    };
    refused(
        orders
            .call(Phase::Try, "q", "create", &order(i64::MAX, 1))
            .await,
        Code::InvalidArgument,
        "qty must be between 1 and",
    );
    refused(
        orders
            .call(Phase::Try, "a", "create", &order(1, i64::MAX))
            .await,
        Code::InvalidArgument,
        "amount must be between 0 and",
    );
    orders
        .call(Phase::Try, "ok", "create", &order(1, LIMIT))
        .await
        .expect("at the bound");
    orders.stop().await;

    let payment = Served::start(
        backend,
        async |url| Payment::open(url).await.expect("payment"),
        Payment::barrier,
    )
    .await;
    payment.service.open_accounts(&[1], 10).await.expect("open");
    let charge = |user_id, amount| payment::Charge {
        user_id,
        amount,
        out_trade_no: format!("{user_id}-{amount}"),
    };
    refused(
        payment.call(Phase::Try, "n", "pay", &charge(42, 5)).await,
        Code::Aborted,
        "no account for user 42",
    );
    refused(
        payment.call(Phase::Try, "p", "pay", &charge(1, 11)).await,
        Code::Aborted,
        "insufficient funds",
    );
    payment.stop().await;
}
both!(out_of_range_orders_and_unknown_payers_get_clear_answers);

/// Units added to a sold-out SKU sell at once when they are added through the serving
/// process, and within `SOLD_OUT_FOR` when another process (a replica, an operator's tool)
/// adds them to the same database.
async fn restocked_units_sell_again(backend: Backend) {
    let served = Served::start(
        backend,
        async |url| Inventory::open(url).await.expect("inventory"),
        Inventory::barrier,
    )
    .await;
    served.service.restock("hot", 1).await.expect("restock");
    let reserve = json!({ "sku": "hot", "qty": 1 });
    let mut n = 0;
    let mut buy = async || {
        n += 1;
        let gid = format!("buy-{n}");
        let answer = served.call(Phase::Try, &gid, "reserve", &reserve).await;
        if answer.is_ok() {
            served
                .call(Phase::Confirm, &gid, "reserve", &reserve)
                .await
                .expect("confirm");
        }
        answer
    };
    buy().await.expect("the last unit");
    refused(buy().await, Code::Aborted, "sold out");
    assert!(served.service.is_sold_out("hot"));

    served.service.restock("hot", 1).await.expect("restock");
    buy().await.expect("sellable at once");
    refused(buy().await, Code::Aborted, "sold out");

    let other_process = Inventory::open(&served._db.url).await.expect("open again");
    other_process
        .restock("hot", 1)
        .await
        .expect("restock elsewhere");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match buy().await {
            Ok(()) => break,
            Err(status) => assert_eq!(status.code(), Code::Aborted, "{status:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the unit added elsewhere never sold"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stock = served
        .service
        .stock("hot")
        .await
        .expect("stock")
        .expect("sku");
    assert_eq!((stock.initial, stock.available, stock.sold), (3, 0, 3));
    served.stop().await;
}
both!(restocked_units_sell_again);
