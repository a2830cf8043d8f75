//! Connections: opening a pool for a database URL and setting up each of its sessions for
//! what the pool is for. SQLite files are created when missing and run in WAL mode with
//! `synchronous=NORMAL` (durable across process crashes; the last commits may be lost only
//! on power loss). On PostgreSQL, how a session plans its statements depends on its pool
//! ([`Sessions`]).
//!
//! This module issues no statement of the log; which pool a statement runs on is the
//! store's choice (`Store::open`).

use std::{
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sqlx::{
    AnyPool, Executor,
    any::{AnyConnectOptions, AnyPoolOptions},
};

use super::{Dialect, Error};

/// What the sessions of a pool are for, which decides how PostgreSQL plans in them.
///
/// A general pool plans every statement for its actual parameters
/// (`plan_cache_mode = force_custom_plan`): the due scans and the admin's filters have
/// parameters whose values change the best plan.
///
/// A batch pool uses generic plans, which saves planning each batch: planning cost more
/// than running it. Two things keep a generic plan from going wrong as the tables grow:
/// - It is dropped (`DISCARD PLANS`) when a connection is acquired after spending the turn
///   of a second idle, and on every [`REPLAN_EVERY`]th acquire. Made once and kept, a plan
///   made while the tables were young and looked tiny went on scanning them whole until an
///   ANALYZE invalidated it.
/// - Nested loops and sequential scans are off. Before it was dropped, a plan made on tiny
///   tables still met tables many times larger: as a nested loop it scanned the branch
///   table once per decided transaction, and the slowdown fed itself. Without them, each
///   statement reads a table at most once, through an index, and hash-joins what it read
///   with the batch; with statistics that fit the tables, the index is the primary key,
///   looked up by the batch's gids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sessions {
    /// Any statement.
    General,
    /// Only the batch writes and a round's record, every statement keyed by gid. Not
    /// `durable`: commits without waiting for the WAL flush (`synchronous_commit = off`),
    /// for writes that a crash may lose because they are redone from what is durable (see
    /// `Store::record_round`).
    Batches {
        /// Whether a commit waits for the WAL flush.
        durable: bool,
    },
}

/// Opens a pool of up to `max_connections` on `url`; `sessions` matters to PostgreSQL only.
pub async fn connect(
    dialect: Dialect,
    url: &str,
    max_connections: u32,
    sessions: Sessions,
) -> Result<AnyPool, Error> {
    sqlx::any::install_default_drivers();
    let url = match dialect {
        Dialect::Sqlite if !url.contains("mode=") && !url.contains(":memory:") => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}mode=rwc")
        }
        _ => url.to_owned(),
    };
    let options = AnyConnectOptions::from_str(&url)?;
    let pool = AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10));
    let pool = match (dialect, sessions) {
        (Dialect::Sqlite, _) => pool.after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                     PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                )
                .await?;
                Ok(())
            })
        }),
        (Dialect::Postgres, Sessions::General) => pool.after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute("SET plan_cache_mode TO force_custom_plan")
                    .await?;
                Ok(())
            })
        }),
        (Dialect::Postgres, Sessions::Batches { durable }) => {
            let acquires = Arc::new(AtomicU64::new(0));
            pool.test_before_acquire(false)
                .after_connect(move |conn, _meta| {
                    Box::pin(async move {
                        conn.execute(
                            "SET plan_cache_mode TO force_generic_plan; \
                             SET enable_nestloop TO off; SET enable_seqscan TO off",
                        )
                        .await?;
                        if !durable {
                            conn.execute("SET synchronous_commit TO off").await?;
                        }
                        Ok(())
                    })
                })
                .before_acquire(move |conn, meta| {
                    let nth = acquires.fetch_add(1, Ordering::Relaxed);
                    Box::pin(async move {
                        if new_second(meta.age, meta.idle_for) || nth.is_multiple_of(REPLAN_EVERY) {
                            conn.execute("DISCARD PLANS").await?;
                        }
                        Ok(true)
                    })
                })
        }
    };
    Ok(pool.connect_with(options).await?)
}

/// A batch pool also drops the plans of the connection it hands out every this many
/// acquires. Under load a connection may be in use at every turn of a second, so
/// [`new_second`] alone could leave its plans for long, while the tables grow fastest. A
/// prime, so that connections taken in a fixed rotation each get their turn.
const REPLAN_EVERY: u64 = 251;

/// Whether a connection of `age`, idle for `idle_for`, has entered a new second of its life
/// while idle: then a batch pool drops its plans. That statement also stands in for sqlx's
/// ping before every acquire, a round trip per batch: a connection idle for a second or
/// more is checked by it; one used within the last second is known to have worked then, and
/// if it broke since, its batch fails and is answered as failed.
fn new_second(age: Duration, idle_for: Duration) -> bool {
    age.saturating_sub(idle_for).as_secs() != age.as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_connections_drop_plans_once_a_second() {
        let ms = Duration::from_millis;
        assert!(!new_second(ms(1_500), ms(400)));
        assert!(new_second(ms(2_100), ms(200)));
        assert!(new_second(ms(5_000), ms(3_000)));
        assert!(!new_second(ms(999), ms(999)));
        assert!(new_second(ms(1_000), ms(1)));
    }
}
