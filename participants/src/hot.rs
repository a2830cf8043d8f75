//! The hot path for a hot SKU: its stock copied into Redis, where one Lua script per call
//! takes units atomically before any database row is touched, shared by every replica of
//! the inventory service; and the reconciliation that keeps that copy at or below the
//! database's truth.
//!
//! Per hot SKU, under a key prefix, Redis holds `stock:SKU` (units it may still hand out),
//! `holds:SKU` (branch → units and when they were taken, for every reservation Redis made
//! whose end it has not seen) and `confirms:SKU` (holds confirmed so far, which tells a
//! reconcile that the database moved under it); per branch, `branch:GID/ID` is `cancelled`
//! or `done` for [`MARK_TTL`]: the barrier's rules mirrored, so a duplicate Try takes
//! nothing twice and a Try after its Cancel is refused without the database. Every change that
//! returns units to Redis happens only after the database committed the same change; every
//! doubt leaves Redis lower, not higher, and [`HotStock::reconcile`] repairs it upwards
//! from a consistent read of the database. ARCHITECTURE.md ("The hot path") says why no
//! interleaving of crashes oversells.
//!
//! The database side of a hot reservation (the `sku` row, `hot_hold`) is the inventory's
//! ([`crate::inventory`]); what to do while Redis is unreachable is [`Policy`]'s.

use std::{
    str::FromStr,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use redis::{
    Client, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

/// How long a branch's `cancelled` or `done` mark stays in Redis: longer than any Try can
/// arrive after its Cancel in practice. The barrier (in the database) still refuses a
/// later one, and gives the units back.
pub const MARK_TTL: Duration = Duration::from_secs(24 * 3600);

/// A reservation Redis made whose outcome the database does not show after this long is
/// taken for lost (its Try crashed between Redis and the database) and stops holding units.
pub const LOST_AFTER: Duration = Duration::from_secs(120);

/// How long a Redis command may take before the hot path counts Redis as down.
const TIMEOUT: Duration = Duration::from_secs(1);

/// What a Try on a hot SKU does while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Take the database path, with the in-process sold-out flag, as a cold SKU does.
    #[default]
    Fallback,
    /// Refuse the Try as temporarily unavailable.
    Refuse,
}

impl FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Policy, String> {
        match s {
            "fallback" => Ok(Policy::Fallback),
            "refuse" => Ok(Policy::Refuse),
            other => Err(format!(
                "unknown Redis failure policy {other:?}: fallback or refuse"
            )),
        }
    }
}

/// Where the hot path keeps its copy, and what it does without it.
#[derive(Debug, Clone)]
pub struct Config {
    /// `redis://host:port/db`.
    pub url: String,
    /// Put before every key, so that shops (and tests) can share a Redis.
    pub prefix: String,
    /// What a hot Try does while Redis is down.
    pub policy: Policy,
}

/// What the take script decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Units taken for this branch now.
    Taken,
    /// This branch already holds its units, or already ended: nothing taken again.
    Already,
    /// Fewer units than asked for are left (how many).
    Short(i64),
    /// This branch was cancelled: a Try after its Cancel.
    Hanging,
    /// Redis has no stock for the SKU (it restarted or was flushed): reload it.
    Missing,
}

/// What a reconcile reads from Redis before it reads the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holds {
    /// The branches Redis holds units for.
    pub branches: Vec<String>,
    /// How many holds had been confirmed (a counter, as Redis keeps it).
    confirms: String,
}

/// The result of reconciling one SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    /// Units Redis may hand out now.
    pub stock: i64,
    /// Redis's stock before, minus what it should have been: positive when Redis was
    /// high, negative when low. `None` when the keys were missing and were loaded.
    pub drift: Option<i64>,
    /// Reservations Redis made whose end it had not seen, found ended or lost and dropped.
    pub dropped: usize,
}

/// Redis failed.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct Error(#[from] redis::RedisError);

/// What the hot path reports (README, "Hot SKUs in Redis"): `settle_inventory_redis_up`,
/// `settle_inventory_redis_drift_units{sku}` (the last reconcile's drift, signed) and
/// `settle_inventory_redis_repairs_total` (reconciles that found drift).
#[derive(Debug, Clone, Default)]
struct Meters {
    up: Gauge,
    drift: Family<Vec<(String, String)>, Gauge>,
    repairs: Counter,
}

/// The Redis copy of every hot SKU's stock.
pub struct HotStock {
    conn: ConnectionManager,
    prefix: String,
    policy: Policy,
    up: AtomicBool,
    meters: Meters,
    take: Script,
    release: Script,
    add: Script,
    confirm: Script,
    reconcile: Script,
}

impl std::fmt::Debug for HotStock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotStock")
            .field("prefix", &self.prefix)
            .field("policy", &self.policy)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

/// KEYS: stock, holds, branch mark. ARGV: branch, units. Answers {code, stock left}:
/// 0 taken, 1 already, -1 short, -2 hanging, -3 missing. Counts go to Redis as the strings
/// they came in (Lua 5.1 would print a number above 10^14 as `1e+14`); the shop's bounds
/// (10^15) keep them exact in Lua's doubles.
const TAKE: &str = r"
local mark = redis.call('GET', KEYS[3])
if mark == 'cancelled' then return {-2, 0} end
if mark or redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return {1, 0} end
local stock = redis.call('GET', KEYS[1])
if not stock then return {-3, 0} end
stock = tonumber(stock)
if stock < tonumber(ARGV[2]) then return {-1, stock} end
local left = redis.call('DECRBY', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ':' .. redis.call('TIME')[1])
return {0, left}
";

/// KEYS: stock, holds, branch mark. ARGV: branch, mark ('' for none), mark TTL in
/// seconds. Gives the branch's units back, if Redis holds them for it; returns the units.
/// Stock that vanished is not recreated here: the reload puts it back whole.
const RELEASE: &str = r"
local held = redis.call('HGET', KEYS[2], ARGV[1])
local qty = '0'
if held then
  qty = string.match(held, '^(%d+)')
  redis.call('HDEL', KEYS[2], ARGV[1])
  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('INCRBY', KEYS[1], qty) end
end
if ARGV[2] ~= '' then redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[3]) end
return tonumber(qty)
";

/// KEYS: stock. ARGV: units the database added. A stock that vanished is left to the
/// reload, which reads the database whole.
const ADD: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCRBY', KEYS[1], ARGV[1]) end
return -1
";

/// KEYS: holds, branch mark, confirms. ARGV: branch, mark TTL. The units are sold: the
/// hold ends, and the count of ended holds goes up, so that a reconcile that read the
/// database before this Confirm's Try committed does not count the units as available.
const CONFIRM: &str = r"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then redis.call('INCR', KEYS[3]) end
redis.call('SET', KEYS[2], 'done', 'EX', ARGV[2])
return 0
";

/// KEYS: stock, holds, confirms. ARGV: the database's available units, seconds after
/// which a hold the database does not know is lost, the confirms count read before the
/// database, then 'o:BRANCH' for each reservation the database holds and 'd:BRANCH' for
/// each it has ended. Every other hold is in flight (Redis took the units, the database has
/// not committed yet) and counts against the stock. If a hold was confirmed since the
/// count was read, the database's figure may predate its Try: the stock is then only
/// lowered, never raised. Answers {had stock (0/1), drift, stock, holds dropped}.
const RECONCILE: &str = r"
local open, ended = {}, {}
for i = 4, #ARGV do
  local kind, branch = string.sub(ARGV[i], 1, 1), string.sub(ARGV[i], 3)
  if kind == 'o' then open[branch] = true else ended[branch] = true end
end
local lost_before = tonumber(redis.call('TIME')[1]) - tonumber(ARGV[2])
local holds = redis.call('HGETALL', KEYS[2])
local in_flight, dropped = 0, 0
for i = 1, #holds, 2 do
  local branch = holds[i]
  local qty, at = string.match(holds[i + 1], '^(%d+):(%d+)$')
  if not open[branch] then
    if ended[branch] or tonumber(at) < lost_before then
      redis.call('HDEL', KEYS[2], branch)
      dropped = dropped + 1
    else
      in_flight = in_flight + tonumber(qty)
    end
  end
end
local target = tonumber(ARGV[1]) - in_flight
if target < 0 then target = 0 end
local before = redis.call('GET', KEYS[1])
if before and (redis.call('GET', KEYS[3]) or '0') ~= ARGV[3] then
  target = math.min(target, tonumber(before))
end
redis.call('SET', KEYS[1], string.format('%d', target))
if before then return {1, tonumber(before) - target, target, dropped} end
return {0, 0, target, dropped}
";

impl HotStock {
    /// Connects lazily: the inventory starts while Redis is down, and the hot path
    /// resumes when it answers.
    pub fn connect(config: &Config) -> Result<HotStock, Error> {
        let client = Client::open(config.url.as_str())?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        Ok(HotStock {
            conn: ConnectionManager::new_lazy_with_config(client, manager)?,
            prefix: config.prefix.clone(),
            policy: config.policy,
            up: AtomicBool::new(true),
            meters: Meters::default(),
            take: Script::new(TAKE),
            release: Script::new(RELEASE),
            add: Script::new(ADD),
            confirm: Script::new(CONFIRM),
            reconcile: Script::new(RECONCILE),
        })
    }

    /// Adds the hot path's metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let meters = &self.meters;
        meters.up.set(i64::from(self.is_up()));
        registry.register(
            "settle_inventory_redis_up",
            "Whether hot SKUs are on the hot path (1) or follow the failure policy (0)",
            meters.up.clone(),
        );
        registry.register(
            "settle_inventory_redis_drift_units",
            "Redis stock minus what it should have been, at the last reconcile",
            meters.drift.clone(),
        );
        registry.register(
            "settle_inventory_redis_repairs",
            "Reconciles that found Redis stock different from the database's",
            meters.repairs.clone(),
        );
    }

    /// Records a reconcile's drift for `sku`.
    pub(crate) fn observe(&self, sku: &str, drift: i64) {
        let labels = vec![("sku".to_owned(), sku.to_owned())];
        self.meters.drift.get_or_create(&labels).set(drift);
        if drift != 0 {
            self.meters.repairs.inc();
        }
    }

    /// The prefix of every key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// What a hot Try does while Redis is down.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Whether the last command reached Redis (and no reconcile is owed since).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Records a failed command: the hot path stops until a reconcile succeeds.
    fn failed(&self, error: redis::RedisError) -> Error {
        self.meters.up.set(0);
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(%error, "redis is unreachable; hot SKUs follow the failure policy");
        }
        Error(error)
    }

    /// The hot path works again, after a reconcile of every hot SKU.
    pub(crate) fn resumed(&self) {
        self.meters.up.set(1);
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!("redis answers again; hot SKUs are back on the hot path");
        }
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.prefix)
    }

    /// Takes `qty` units of `sku` for `branch` (`gid/branch_id`).
    pub async fn take(&self, sku: &str, branch: &str, qty: i64) -> Result<Take, Error> {
        let answer: (i64, i64) = self
            .take
            .key(self.key("stock", sku))
            .key(self.key("holds", sku))
            .key(self.key("branch", branch))
            .arg(branch)
            .arg(qty)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(e))?;
        Ok(match answer {
            (0, _) => Take::Taken,
            (1, _) => Take::Already,
            (-1, left) => Take::Short(left),
            (-2, _) => Take::Hanging,
            _ => Take::Missing,
        })
    }

    /// Gives back what `branch` holds of `sku`, and marks it cancelled when `cancelled`
    /// (a later Try of it is then refused). Returns the units given back.
    pub async fn release(&self, sku: &str, branch: &str, cancelled: bool) -> Result<i64, Error> {
        self.release
            .key(self.key("stock", sku))
            .key(self.key("holds", sku))
            .key(self.key("branch", branch))
            .arg(branch)
            .arg(if cancelled { "cancelled" } else { "" })
            .arg(MARK_TTL.as_secs())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(e))
    }

    /// Adds `qty` units of `sku` that the database has just added (a restock).
    pub async fn add(&self, sku: &str, qty: i64) -> Result<(), Error> {
        self.add
            .key(self.key("stock", sku))
            .arg(qty)
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// Ends `branch`'s hold of `sku`: its units are sold.
    pub async fn confirm(&self, sku: &str, branch: &str) -> Result<(), Error> {
        self.confirm
            .key(self.key("holds", sku))
            .key(self.key("branch", branch))
            .key(self.key("confirms", sku))
            .arg(branch)
            .arg(MARK_TTL.as_secs())
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// The branches Redis holds units of `sku` for, and how many holds have been
    /// confirmed so far, read together.
    pub async fn holds(&self, sku: &str) -> Result<Holds, Error> {
        let (confirms, branches): (Option<String>, Vec<String>) = redis::pipe()
            .atomic()
            .cmd("GET")
            .arg(self.key("confirms", sku))
            .cmd("HKEYS")
            .arg(self.key("holds", sku))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(e))?;
        Ok(Holds {
            branches,
            confirms: confirms.unwrap_or_else(|| "0".to_owned()),
        })
    }

    /// Sets `sku`'s stock from the database: `available` units, less those of holds
    /// Redis made that are in neither `open` (reservations the database holds, already
    /// out of `available`) nor `ended` (reservations the database has ended, or never
    /// will make).
    pub async fn reconcile(
        &self,
        sku: &str,
        holds: &Holds,
        available: i64,
        open: &[String],
        ended: &[String],
    ) -> Result<Reconciled, Error> {
        let mut call = self.reconcile.key(self.key("stock", sku));
        call.key(self.key("holds", sku))
            .key(self.key("confirms", sku))
            .arg(available)
            .arg(LOST_AFTER.as_secs())
            .arg(&holds.confirms);
        for branch in open {
            call.arg(format!("o:{branch}"));
        }
        for branch in ended {
            call.arg(format!("d:{branch}"));
        }
        let (had, drift, stock, dropped): (i64, i64, i64, usize) = call
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(e))?;
        Ok(Reconciled {
            stock,
            drift: (had == 1).then_some(drift),
            dropped,
        })
    }

    /// Redis's stock of `sku`, if it has the key.
    pub async fn stock(&self, sku: &str) -> Result<Option<i64>, Error> {
        redis::cmd("GET")
            .arg(self.key("stock", sku))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(e))
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<(), Error> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }
}
