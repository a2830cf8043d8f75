//! The inventory service: stock per SKU, reserved by Try and sold by Confirm.
//!
//! `reserve` (purchase) moves units from available to reserved with one conditional UPDATE —
//! never read-then-write — so concurrent buyers can never oversell. Once a SKU is sold out,
//! a Try for it is refused from an in-memory flag before the database is touched; the flag
//! clears when stock comes back through this process (a cancelled reservation, a refund's
//! restock, [`Inventory::restock`]), and lapses after [`SOLD_OUT_FOR`], so stock that came
//! back through another process on the same database, or a flag set by a refusal that
//! raced a Cancel still committing, keeps units unsellable for that long at most.
//! `restock` (refund) moves sold units back through reserved to available; as a saga step
//! it moves them straight back, and its compensation sells them again.
//!
//! A SKU marked hot ([`Inventory::mark_hot`]) is screened by Redis instead, when the
//! inventory has a Redis ([`Options::redis`]): the screen takes the units there before the
//! database is touched, the Try makes the reservation durable in the database, and
//! [`Participant::after`] mirrors each outcome into Redis ([`crate::hot`]). Its sold-out
//! state is then Redis's stock, shared by every replica. A reservation that names a
//! campaign is held to its window and per-user limit ([`crate::campaign`]).
//!
//! Orders, money and points belong to the other services.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use settle::{
    Barrier, Branch, Participant,
    participant::{Error, Op, Outcome},
};
use sqlx::{AnyConnection, Row};

use crate::{
    campaign::{self, Campaign},
    hot::{self, HotStock, Policy, Reconciled, Take},
    service::{self, LIMIT},
};

/// How long a sold-out flag refuses Trys without the database. Stock added by another
/// process (a second replica, an operator) is sellable here after this at the latest; one
/// Try per SKU and period reaches the database to find out.
pub const SOLD_OUT_FOR: Duration = Duration::from_millis(500);

/// The payload of `reserve` and `restock`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Units {
    /// Which SKU.
    pub sku: String,
    /// How many units.
    pub qty: i64,
    /// The sale a purchase belongs to: a known campaign's window and per-user limit apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    /// The buyer, counted against the campaign's per-user limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<i64>,
}

impl Units {
    /// `qty` units of `sku`, outside any campaign.
    pub fn new(sku: impl Into<String>, qty: i64) -> Units {
        Units {
            sku: sku.into(),
            qty,
            campaign: None,
            user_id: None,
        }
    }
}

/// How the inventory is opened beyond its database.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where hot SKUs keep their stock, if anywhere; without it every SKU takes the
    /// database path.
    pub redis: Option<hot::Config>,
}

/// Counts of one SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stock {
    /// Every unit ever added.
    pub initial: i64,
    /// Free to reserve.
    pub available: i64,
    /// Held by pending purchases or refunds.
    pub reserved: i64,
    /// Sold.
    pub sold: i64,
}

/// The inventory participant.
#[derive(Debug)]
pub struct Inventory {
    barrier: Barrier,
    sold_out: RwLock<SoldOut>,
    hot: Option<HotStock>,
    hot_skus: RwLock<HashSet<String>>,
    campaigns: RwLock<HashMap<String, Campaign>>,
    /// One reconcile at a time: a flushed Redis sends every screen to reload.
    reconciling: tokio::sync::Mutex<()>,
    /// Deliveries ([`Branch::delivery`]) whose screen took units in Redis, until `after`:
    /// only the delivery that took them gives them back, never a repeated one.
    taken: std::sync::Mutex<HashSet<u64>>,
}

/// How a hot screen ended when it did not accept.
enum Screened {
    /// Refused for good (sold out, a cancelled branch).
    Refused(Error),
    /// Redis did not answer: the failure policy decides.
    Down,
}

/// The sold-out flags, and how many times stock came back: a refusal flags its SKU only if
/// no stock came back since it read this count before its statement.
#[derive(Debug, Default)]
struct SoldOut {
    returns: u64,
    since: HashMap<String, Instant>,
}

impl Inventory {
    /// Opens (and migrates) the inventory database at `url`.
    pub async fn open(url: &str) -> Result<Arc<Inventory>, service::Error> {
        Inventory::open_with(url, Options::default()).await
    }

    /// [`Inventory::open`] with `options`. With a Redis, hot SKUs are loaded into it by
    /// the first [`Inventory::reconcile`] (and by a screen that finds their keys missing).
    pub async fn open_with(url: &str, options: Options) -> Result<Arc<Inventory>, service::Error> {
        let barrier = service::open(
            url,
            "inventory",
            sqlx::migrate!("../migrations/participants/inventory/sqlite"),
            sqlx::migrate!("../migrations/participants/inventory/postgres"),
        )
        .await?;
        let hot = options.redis.as_ref().map(HotStock::connect).transpose()?;
        let inventory = Arc::new(Inventory {
            barrier,
            sold_out: RwLock::new(SoldOut::default()),
            hot,
            hot_skus: RwLock::new(HashSet::new()),
            campaigns: RwLock::new(HashMap::new()),
            reconciling: tokio::sync::Mutex::new(()),
            taken: std::sync::Mutex::new(HashSet::new()),
        });
        inventory.refresh().await?;
        Ok(inventory)
    }

    /// The Redis copy of hot SKUs, if the inventory has a Redis.
    pub fn hot(&self) -> Option<&HotStock> {
        self.hot.as_ref()
    }

    /// Reads the hot SKUs and the campaigns from the database again.
    async fn refresh(&self) -> Result<(), sqlx::Error> {
        let pool = self.barrier.database().pool();
        let hot: Vec<String> = sqlx::query_scalar("SELECT sku FROM hot_sku")
            .fetch_all(pool)
            .await?;
        let campaigns = campaign::load(pool).await?;
        *self.hot_skus.write().unwrap_or_else(|e| e.into_inner()) = hot.into_iter().collect();
        *self.campaigns.write().unwrap_or_else(|e| e.into_inner()) = campaigns
            .into_iter()
            .map(|c| (c.campaign.clone(), c))
            .collect();
        Ok(())
    }

    /// Marks `sku` hot: with a Redis, its Trys are screened there from now on, on every
    /// replica (the others learn it at their next reconcile).
    pub async fn mark_hot(&self, sku: &str) -> Result<(), service::Error> {
        let pool = self.barrier.database().pool();
        let marked = sqlx::query(
            "INSERT INTO hot_sku (sku) SELECT sku FROM sku WHERE sku = $1 \
             ON CONFLICT (sku) DO NOTHING",
        )
        .bind(sku)
        .execute(pool)
        .await?;
        let exists: Option<String> = sqlx::query_scalar("SELECT sku FROM hot_sku WHERE sku = $1")
            .bind(sku)
            .fetch_optional(pool)
            .await?;
        if exists.is_none() {
            return Err(service::Error::Invalid(format!("unknown sku {sku}")));
        }
        if marked.rows_affected() > 0 {
            tracing::info!(sku, "marked hot");
        }
        self.hot_skus
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sku.to_owned());
        if let Some(hot) = &self.hot {
            let _one = self.reconciling.lock().await;
            match self.reconcile_sku(hot, sku).await {
                // The reconcile loop loads it once Redis answers; until then the failure
                // policy applies.
                Err(service::Error::Redis(error)) => {
                    tracing::warn!(sku, %error, "hot SKU not loaded into Redis yet");
                }
                Err(error) => return Err(error),
                Ok(_) => {}
            }
        }
        Ok(())
    }

    /// Whether `sku` is hot and this inventory has a Redis for it: only then are its
    /// reservations recorded in `hot_hold` for the reconcile.
    fn on_hot_path(&self, sku: &str) -> bool {
        self.hot.is_some() && self.is_hot(sku)
    }

    /// Whether `sku` is hot.
    pub fn is_hot(&self, sku: &str) -> bool {
        self.hot_skus
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(sku)
    }

    /// Defines (or changes) a campaign.
    pub async fn define_campaign(&self, campaign: &Campaign) -> Result<(), service::Error> {
        campaign.validate().map_err(service::Error::Invalid)?;
        campaign::save(self.barrier.database().pool(), campaign).await?;
        self.campaigns
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(campaign.campaign.clone(), campaign.clone());
        Ok(())
    }

    /// The known campaign a purchase names, if any.
    fn campaign_of(&self, units: &Units) -> Option<Campaign> {
        units
            .campaign
            .as_deref()
            .and_then(|name| self.campaign(name))
    }

    /// What a reservation's Confirm or Cancel owes besides the stock: the hot SKU's open
    /// reservation ends, and a Cancel gives the buyer's units back to the campaign.
    async fn end_reservation(
        &self,
        branch: &Branch,
        units: &Units,
        cancelled: bool,
        conn: &mut AnyConnection,
    ) -> Result<(), Error> {
        if self.on_hot_path(&units.sku) {
            sqlx::query("DELETE FROM hot_hold WHERE gid = $1 AND branch_id = $2")
                .bind(&branch.gid)
                .bind(i64::from(branch.branch_id))
                .execute(&mut *conn)
                .await?;
        }
        if cancelled
            && let (Some(campaign), Some(user_id)) = (self.campaign_of(units), units.user_id)
        {
            campaign.give_back(conn, user_id, units.qty).await?;
        }
        Ok(())
    }

    /// The screen of a reservation: the campaign's window, then Redis for a hot SKU (or
    /// the failure policy without it), else the sold-out flag.
    async fn screen(&self, branch: &Branch) -> Result<(), Error> {
        let units = units(branch)?;
        if let Some(campaign) = self.campaign_of(&units) {
            campaign.admits(service::now_ms())?;
        }
        if let Some(hot) = &self.hot
            && self.is_hot(&units.sku)
        {
            if hot.is_up() {
                match self.take_hot(hot, branch, &units).await {
                    Ok(()) => return Ok(()),
                    Err(Screened::Refused(error)) => return Err(error),
                    Err(Screened::Down) => {}
                }
            }
            if hot.policy() == Policy::Refuse {
                return Err(Error::refuse(
                    "temporarily unavailable: redis is down and the policy is refuse",
                ));
            }
        }
        if self.is_sold_out(&units.sku) {
            return Err(Error::refuse("sold out (flag)"));
        }
        Ok(())
    }

    /// Mirrors a hot reservation's outcome into Redis. Units go back to Redis only once
    /// the database gave them back (or never took them); an outcome that is not known
    /// leaves them out, for the reconcile to find.
    async fn mirror(&self, op: Op, branch: &Branch, outcome: Outcome) {
        // Without a Redis nothing was taken, and no call pays for the lock below.
        let Some(hot) = &self.hot else { return };
        let took = op == Op::Try
            && self
                .taken
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&branch.delivery);
        let Ok(units) = units(branch) else { return };
        if !self.is_hot(&units.sku) || !hot.is_up() {
            return;
        }
        let member = member(branch);
        let sku = units.sku.as_str();
        let mirrored = match (op, outcome) {
            // A Try gives back only what its own screen took: a repeated delivery that
            // fails must not release the units of the one that succeeded.
            (Op::Try, _) if !took => return,
            (Op::Try, Outcome::RolledBack) => hot.release(sku, &member, false).await.map(drop),
            (Op::Try, Outcome::Hanging) => hot.release(sku, &member, true).await.map(drop),
            (Op::Cancel, Outcome::Applied | Outcome::EmptyRollback | Outcome::Duplicate) => {
                hot.release(sku, &member, true).await.map(drop)
            }
            (Op::Confirm, Outcome::Applied | Outcome::Duplicate) => hot.confirm(sku, &member).await,
            _ => return,
        };
        if let Err(error) = mirrored {
            tracing::debug!(%error, %member, ?op, ?outcome, "not mirrored into Redis");
        }
    }

    fn campaign(&self, name: &str) -> Option<Campaign> {
        self.campaigns
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Compares every hot SKU's Redis stock with the database and repairs Redis; reloads
    /// a SKU whose keys vanished. Reads the hot SKUs and campaigns again first. When every
    /// SKU is reconciled, a Redis that was down is used again.
    pub async fn reconcile(&self) -> Result<Vec<(String, Reconciled)>, service::Error> {
        self.refresh().await?;
        let Some(hot) = &self.hot else {
            return Ok(Vec::new());
        };
        let _one = self.reconciling.lock().await;
        let skus: Vec<String> = {
            let skus = self.hot_skus.read().unwrap_or_else(|e| e.into_inner());
            let mut skus: Vec<String> = skus.iter().cloned().collect();
            skus.sort();
            skus
        };
        if skus.is_empty() {
            hot.ping().await?;
        }
        let mut done = Vec::with_capacity(skus.len());
        for sku in skus {
            let reconciled = self.reconcile_sku(hot, &sku).await?;
            done.push((sku, reconciled));
        }
        hot.resumed();
        Ok(done)
    }

    /// Reconciles every hot SKU now and then each `every`, and so also notices Redis
    /// coming back.
    pub fn reconcile_every(self: &Arc<Inventory>, every: Duration) -> tokio::task::JoinHandle<()> {
        let inventory = Arc::downgrade(self);
        tokio::spawn(async move {
            if let Some(inventory) = inventory.upgrade()
                && let Err(error) = inventory.reconcile().await
            {
                tracing::warn!(%error, "hot SKUs not loaded into Redis yet");
            }
            loop {
                tokio::time::sleep(every).await;
                let Some(inventory) = inventory.upgrade() else {
                    return;
                };
                if let Err(error) = inventory.reconcile().await {
                    tracing::debug!(%error, "reconcile failed");
                }
            }
        })
    }

    /// Sets `sku`'s Redis stock from one consistent read of the database: its available
    /// units and its open hot reservations (one statement, so a reservation committing
    /// meanwhile is either in both or in neither). A hold Redis made that the database
    /// neither has open nor has cancelled is in flight and keeps its units out.
    async fn reconcile_sku(&self, hot: &HotStock, sku: &str) -> Result<Reconciled, service::Error> {
        let holds = hot.holds(sku).await?;
        let pool = self.barrier.database().pool();
        let rows = sqlx::query(
            "SELECT s.available, h.gid, h.branch_id FROM sku s \
             LEFT JOIN hot_hold h ON h.sku = s.sku WHERE s.sku = $1",
        )
        .bind(sku)
        .fetch_all(pool)
        .await?;
        let Some(first) = rows.first() else {
            return Err(service::Error::Invalid(format!("unknown sku {sku}")));
        };
        let available: i64 = first.try_get("available")?;
        let mut open = Vec::new();
        for row in &rows {
            if let Some(gid) = row.try_get::<Option<String>, _>("gid")? {
                let branch_id: i64 = row.try_get("branch_id")?;
                open.push(format!("{gid}/{branch_id}"));
            }
        }
        let open_set: HashSet<&str> = open.iter().map(String::as_str).collect();
        let unknown: Vec<&String> = holds
            .branches
            .iter()
            .filter(|h| !open_set.contains(h.as_str()))
            .collect();
        let ended = self.cancelled(&unknown).await?;
        let reconciled = hot.reconcile(sku, &holds, available, &open, &ended).await?;
        hot.observe(sku, reconciled.drift.unwrap_or(0));
        match reconciled.drift {
            None => tracing::info!(sku, stock = reconciled.stock, "hot SKU loaded into Redis"),
            Some(0) => {}
            Some(drift) => {
                tracing::warn!(sku, drift, stock = reconciled.stock, "Redis stock repaired")
            }
        }
        Ok(reconciled)
    }

    /// Which of `branches` (`gid/branch_id`) have a Cancel in the barrier: ended, or
    /// never to be made (an empty rollback).
    async fn cancelled(&self, branches: &[&String]) -> Result<Vec<String>, sqlx::Error> {
        let mut ended = Vec::new();
        let pool = self.barrier.database().pool();
        for chunk in branches.chunks(200) {
            let wanted: HashSet<&str> = chunk.iter().map(|b| b.as_str()).collect();
            let gids: Vec<&str> = chunk
                .iter()
                .filter_map(|b| b.rsplit_once('/').map(|(gid, _)| gid))
                .collect();
            let placeholders: Vec<String> = (1..=gids.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT gid, branch_id FROM settle_barrier WHERE op = 'cancel' AND gid IN ({})",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for gid in &gids {
                query = query.bind(*gid);
            }
            for row in query.fetch_all(pool).await? {
                let gid: String = row.try_get("gid")?;
                let branch_id: i64 = row.try_get("branch_id")?;
                let branch = format!("{gid}/{branch_id}");
                if wanted.contains(branch.as_str()) {
                    ended.push(branch);
                }
            }
        }
        Ok(ended)
    }

    /// The barrier (and database) to serve with.
    pub fn barrier(&self) -> Barrier {
        self.barrier.clone()
    }

    /// Adds `qty` units of `sku`, creating it if needed.
    pub async fn restock(&self, sku: &str, qty: i64) -> Result<(), service::Error> {
        service::bounded("qty", qty, 1).map_err(service::Error::Invalid)?;
        let added = sqlx::query(
            "INSERT INTO sku (sku, initial, available) VALUES ($1, $2, $2) \
             ON CONFLICT (sku) DO UPDATE SET initial = sku.initial + excluded.initial, \
             available = sku.available + excluded.available \
             WHERE sku.initial <= $3 - excluded.initial",
        )
        .bind(sku)
        .bind(qty)
        .bind(LIMIT)
        .execute(self.barrier.database().pool())
        .await?;
        if added.rows_affected() == 0 {
            return Err(service::Error::Invalid(format!(
                "{qty} more units would take {sku} over {LIMIT}"
            )));
        }
        self.stock_returned(sku);
        if let Some(hot) = &self.hot
            && self.is_hot(sku)
            && hot.is_up()
            && let Err(error) = hot.add(sku, qty).await
        {
            // Redis is lower than the database until the next reconcile: safe.
            tracing::warn!(sku, %error, "restocked units reach Redis at the next reconcile");
        }
        Ok(())
    }

    /// The counts of `sku`, if it exists.
    pub async fn stock(&self, sku: &str) -> Result<Option<Stock>, sqlx::Error> {
        let row = sqlx::query("SELECT initial, available, reserved, sold FROM sku WHERE sku = $1")
            .bind(sku)
            .fetch_optional(self.barrier.database().pool())
            .await?;
        row.map(|row| stock_from_row(&row)).transpose()
    }

    /// Every SKU with its counts.
    pub async fn all_stock(&self) -> Result<Vec<(String, Stock)>, sqlx::Error> {
        let rows =
            sqlx::query("SELECT sku, initial, available, reserved, sold FROM sku ORDER BY sku")
                .fetch_all(self.barrier.database().pool())
                .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("sku")?, stock_from_row(row)?)))
            .collect()
    }

    /// Whether Try currently refuses `sku` without looking at the database.
    pub fn is_sold_out(&self, sku: &str) -> bool {
        self.sold_out
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .since
            .get(sku)
            .is_some_and(|since| since.elapsed() < SOLD_OUT_FOR)
    }

    /// How many times stock came back so far.
    fn returns(&self) -> u64 {
        self.sold_out
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .returns
    }

    /// Flags `sku` sold out, unless stock came back since [`Inventory::returns`] said
    /// `returns`.
    fn flag_sold_out(&self, sku: &str, returns: u64) {
        let mut flags = self.sold_out.write().unwrap_or_else(|e| e.into_inner());
        if flags.returns == returns {
            flags.since.insert(sku.to_owned(), Instant::now());
        }
    }

    /// Stock of `sku` came back (or is about to, when the returning transaction commits).
    fn stock_returned(&self, sku: &str) {
        let mut flags = self.sold_out.write().unwrap_or_else(|e| e.into_inner());
        flags.returns += 1;
        flags.since.remove(sku);
    }

    /// The screen of a hot SKU's Try: takes its units in Redis, reloading a SKU whose
    /// keys vanished once.
    async fn take_hot(
        &self,
        hot: &HotStock,
        branch: &Branch,
        units: &Units,
    ) -> Result<(), Screened> {
        let member = member(branch);
        let take = || async {
            hot.take(&units.sku, &member, units.qty)
                .await
                .map_err(|_| Screened::Down)
        };
        let mut taken = take().await?;
        if taken == Take::Missing {
            let _one = self.reconciling.lock().await;
            // Another screen may have reloaded it while this one waited.
            if !matches!(hot.stock(&units.sku).await, Ok(Some(_))) {
                match self.reconcile_sku(hot, &units.sku).await {
                    Ok(_) => {}
                    Err(service::Error::Invalid(reason)) => {
                        return Err(Screened::Refused(Error::refuse(reason)));
                    }
                    Err(_) => return Err(Screened::Down),
                }
            }
            taken = take().await?;
        }
        match taken {
            Take::Taken => {
                self.taken
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(branch.delivery);
                Ok(())
            }
            Take::Already => Ok(()),
            Take::Short(0) => Err(Screened::Refused(Error::refuse("sold out (redis)"))),
            Take::Short(n) => Err(Screened::Refused(Error::refuse(format!(
                "only {n} left (redis)"
            )))),
            Take::Hanging => Err(Screened::Refused(Error::refuse(
                "try arrived after the branch was rolled back (redis)",
            ))),
            Take::Missing => Err(Screened::Down),
        }
    }

    async fn reserve(
        &self,
        branch: &Branch,
        units: &Units,
        conn: &mut AnyConnection,
    ) -> Result<(), Error> {
        if let (Some(campaign), Some(user_id)) = (self.campaign_of(units), units.user_id) {
            campaign.take(conn, user_id, units.qty).await?;
        }
        let hot = self.on_hot_path(&units.sku);
        if hot {
            sqlx::query("INSERT INTO hot_hold (gid, branch_id, sku, qty) VALUES ($1, $2, $3, $4)")
                .bind(&branch.gid)
                .bind(i64::from(branch.branch_id))
                .bind(&units.sku)
                .bind(units.qty)
                .execute(&mut *conn)
                .await?;
        }
        let returns = self.returns();
        let left: Option<i64> = sqlx::query_scalar(
            "UPDATE sku SET available = available - $1, reserved = reserved + $1 \
             WHERE sku = $2 AND available >= $1 RETURNING available",
        )
        .bind(units.qty)
        .bind(&units.sku)
        .fetch_optional(&mut *conn)
        .await?;
        match left {
            // This reservation took the last unit: its UPDATE saw every committed (and
            // waited for every pending) change to the row, so the flag is right until
            // stock comes back, which clears it.
            Some(0) => {
                self.flag_sold_out(&units.sku, returns);
                Ok(())
            }
            Some(_) => Ok(()),
            None => {
                let available: Option<i64> =
                    sqlx::query_scalar("SELECT available FROM sku WHERE sku = $1")
                        .bind(&units.sku)
                        .fetch_optional(&mut *conn)
                        .await?;
                match available {
                    None => Err(Error::refuse(format!("unknown sku {}", units.sku))),
                    // Flagged again once a flag lapsed. This read may predate a Cancel
                    // that returned stock but has not committed yet; then the flag is
                    // wrong for SOLD_OUT_FOR at most. On the hot path, Redis let this
                    // Try through: it was higher than the database for a moment.
                    Some(0) => {
                        self.flag_sold_out(&units.sku, returns);
                        Err(Error::refuse("sold out (database)"))
                    }
                    Some(n) => Err(Error::refuse(format!("only {n} left (database)"))),
                }
            }
        }
    }
}

impl Inventory {
    /// Sells `units` at once, in the caller's transaction on this inventory's database: the
    /// local transaction of a message-form purchase (`crate::flows::purchase_message`),
    /// which has no reservation to confirm. Counts against the buyer's campaign limit like
    /// a reservation; refuses what a reservation would refuse. The hot path is not used:
    /// a hot SKU's Redis stock learns of the sale at the next reconcile.
    pub async fn sell(&self, conn: &mut AnyConnection, units: &Units) -> Result<(), Error> {
        check(units)?;
        if let Some(campaign) = self.campaign_of(units) {
            campaign.admits(service::now_ms())?;
            if let Some(user_id) = units.user_id {
                campaign.take(conn, user_id, units.qty).await?;
            }
        }
        let sold = exec(
            conn,
            "UPDATE sku SET available = available - $1, sold = sold + $1 \
             WHERE sku = $2 AND available >= $1",
            units,
        )
        .await?;
        if sold == 0 {
            return Err(Error::refuse(format!("sold out (database): {}", units.sku)));
        }
        Ok(())
    }
}

fn stock_from_row(row: &sqlx::any::AnyRow) -> Result<Stock, sqlx::Error> {
    Ok(Stock {
        initial: row.try_get("initial")?,
        available: row.try_get("available")?,
        reserved: row.try_get("reserved")?,
        sold: row.try_get("sold")?,
    })
}

fn units(branch: &Branch) -> Result<Units, Error> {
    let units: Units = branch.json()?;
    check(&units)?;
    Ok(units)
}

fn check(units: &Units) -> Result<(), Error> {
    service::positive("qty", units.qty)?;
    service::name("sku", &units.sku)?;
    if let Some(campaign) = &units.campaign {
        service::name("campaign", campaign)?;
    }
    Ok(())
}

/// A branch as the hot path names it in Redis.
fn member(branch: &Branch) -> String {
    format!("{}/{}", branch.gid, branch.branch_id)
}

async fn exec(conn: &mut AnyConnection, sql: &'static str, units: &Units) -> Result<u64, Error> {
    let done = sqlx::query(sql)
        .bind(units.qty)
        .bind(&units.sku)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

fn unknown(action: &str) -> Error {
    Error::BadPayload(format!("inventory has no action {action:?}"))
}

impl Participant for Inventory {
    async fn screen_try(&self, branch: &Branch) -> Result<(), Error> {
        if branch.action == "reserve" {
            self.screen(branch).await?;
        }
        Ok(())
    }

    fn metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        if let Some(hot) = &self.hot {
            hot.register(registry);
        }
    }

    async fn after(&self, op: Op, branch: &Branch, outcome: Outcome) {
        if branch.action == "reserve" {
            self.mirror(op, branch, outcome).await;
        }
    }

    async fn r#try(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let units = units(branch)?;
        match branch.action.as_str() {
            "reserve" => self.reserve(branch, &units, conn).await,
            "restock" => {
                let sql = "UPDATE sku SET sold = sold - $1, reserved = reserved + $1 \
                           WHERE sku = $2 AND sold >= $1";
                match exec(conn, sql, &units).await? {
                    0 => Err(Error::refuse(format!(
                        "fewer than {} units of {} sold",
                        units.qty, units.sku
                    ))),
                    _ => Ok(()),
                }
            }
            other => Err(unknown(other)),
        }
    }

    async fn confirm(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let units = units(branch)?;
        let sql = match branch.action.as_str() {
            "reserve" => "UPDATE sku SET reserved = reserved - $1, sold = sold + $1 WHERE sku = $2",
            "restock" => {
                "UPDATE sku SET reserved = reserved - $1, available = available + $1 WHERE sku = $2"
            }
            other => return Err(unknown(other)),
        };
        exec(conn, sql, &units).await?;
        if branch.action == "restock" {
            self.stock_returned(&units.sku);
        } else {
            self.end_reservation(branch, &units, false, conn).await?;
        }
        Ok(())
    }

    async fn cancel(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let units = units(branch)?;
        let sql = match branch.action.as_str() {
            "reserve" => {
                "UPDATE sku SET reserved = reserved - $1, available = available + $1 WHERE sku = $2"
            }
            "restock" => "UPDATE sku SET reserved = reserved - $1, sold = sold + $1 WHERE sku = $2",
            other => return Err(unknown(other)),
        };
        exec(conn, sql, &units).await?;
        if branch.action == "reserve" {
            self.end_reservation(branch, &units, true, conn).await?;
            self.stock_returned(&units.sku);
        }
        Ok(())
    }

    async fn execute(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let units = units(branch)?;
        match branch.action.as_str() {
            "restock" => {
                let sql = "UPDATE sku SET sold = sold - $1, available = available + $1 \
                           WHERE sku = $2 AND sold >= $1";
                match exec(conn, sql, &units).await? {
                    0 => Err(Error::refuse(format!(
                        "fewer than {} units of {} sold",
                        units.qty, units.sku
                    ))),
                    _ => {
                        self.stock_returned(&units.sku);
                        Ok(())
                    }
                }
            }
            other => Err(unknown(other)),
        }
    }

    async fn compensate(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
        let units = units(branch)?;
        match branch.action.as_str() {
            "restock" => {
                // The restocked units may have been bought again meanwhile; then this fails
                // and is retried (and escalated) until stock allows it or an operator steps in.
                let sql = "UPDATE sku SET available = available - $1, sold = sold + $1 \
                           WHERE sku = $2 AND available >= $1";
                match exec(conn, sql, &units).await? {
                    0 => Err(Error::Failed(format!(
                        "{} units of {} are no longer available",
                        units.qty, units.sku
                    ))),
                    _ => Ok(()),
                }
            }
            other => Err(unknown(other)),
        }
    }
}
