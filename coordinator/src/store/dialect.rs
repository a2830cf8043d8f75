//! Every difference between the SQLite and PostgreSQL SQL the store issues, in one place:
//! the clock expression, how a write transaction starts, row locking for claims, whether a
//! statement may write in its WITH clause, connection set-up and URL handling. The
//! statements themselves live in `store/mod.rs` and its submodules and are written once,
//! with `{now}` standing for the clock, `{skip_locked}` for claim locking,
//! `{json $N: col TYPE, …}` for a table of rows sent as one JSON array parameter (how a
//! batch of many requests travels in one statement, see `store/batches.rs`) and
//! `{in_ids $N}` for membership in those rows' ids. (Where PostgreSQL can write a batch in
//! one statement, `store/batches.rs` picks that statement or SQLite's transaction of several
//! by [`Dialect::writable_cte`].)

use std::{
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sqlx::{
    Executor,
    any::{AnyConnectOptions, AnyPoolOptions},
};

use super::Error;

/// What the sessions of a pool are for; see [`Dialect::connect`] for why they differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sessions {
    /// Any statement.
    General,
    /// Only the batch writes and a round's record, every statement keyed by gid. Not
    /// `durable`: commits without waiting for the WAL flush (`synchronous_commit = off`),
    /// for writes that a crash may lose because they are redone from what is durable (see
    /// `Store::record_round`).
    Batches { durable: bool },
}

/// Which database a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// Embedded, one process.
    Sqlite,
    /// Production; several coordinators may share one database.
    Postgres,
}

impl Dialect {
    /// Recognises `sqlite:` and `postgres:`/`postgresql:` URLs.
    pub fn from_url(url: &str) -> Result<Dialect, Error> {
        if url.starts_with("sqlite:") {
            Ok(Dialect::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Dialect::Postgres)
        } else {
            Err(Error::UnsupportedUrl(redact(url)))
        }
    }

    /// Epoch milliseconds from the one clock: PostgreSQL's own for every coordinator sharing
    /// it; for SQLite, the single process's. Stable within one statement on both.
    fn now_ms(self) -> &'static str {
        match self {
            Dialect::Sqlite => "CAST(unixepoch('subsec') * 1000 AS INTEGER)",
            Dialect::Postgres => "(EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT",
        }
    }

    /// SQLite must take the write lock up front: a deferred transaction that reads and then
    /// writes can fail with SQLITE_BUSY instead of waiting.
    pub fn begin_write(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        }
    }

    /// Several coordinators claim from one PostgreSQL table without waiting on each other;
    /// SQLite has one writer at a time, so its conditional UPDATE needs no row locks.
    fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
        }
    }

    /// Turns a statement template into this dialect's SQL. Called once per statement and
    /// dialect per process; the result lives as long as a string literal would.
    pub fn render(self, template: &str) -> &'static str {
        let mut sql = template
            .replace("{now}", self.now_ms())
            .replace("{skip_locked}", self.skip_locked());
        for (tag, expand) in [
            ("{json ", Dialect::json_rows as fn(Dialect, &str) -> String),
            ("{in_ids ", Dialect::in_ids),
        ] {
            while let Some(start) = sql.find(tag) {
                let end = start
                    + sql[start..]
                        .find('}')
                        .unwrap_or_else(|| panic!("unclosed {tag}…}} in {template}"));
                let expanded = expand(self, &sql[start + tag.len()..end]);
                sql.replace_range(start..=end, &expanded);
            }
        }
        Box::leak(sql.into_boxed_str())
    }

    /// `{in_ids $N}`: membership in the `id` keys of the JSON rows in `$N`, written so that
    /// the lookup can use the table's primary key. (Joined on its own, PostgreSQL plans a
    /// JSON row source as 100 rows and, before the first ANALYZE of a young table, scans
    /// the whole table to hash-join them.) PostgreSQL counts the array as ten ids whatever
    /// its length, so another index that looks cheaper can still win; `store/batches.rs`
    /// keeps the partial due-work index out of reach where that happened.
    fn in_ids(self, param: &str) -> String {
        let param = param.trim();
        match self {
            Dialect::Postgres => format!(
                "= ANY (ARRAY(SELECT r.id FROM json_to_recordset({param}::json) AS r(id TEXT)))"
            ),
            Dialect::Sqlite => {
                format!("IN (SELECT json_extract(value, '$.id') FROM json_each({param}))")
            }
        }
    }

    /// Whether a statement can write in its WITH clause (PostgreSQL), so that a batch that
    /// writes two tables is one statement and one round trip. SQLite runs the two
    /// statements in one transaction instead, which costs nothing extra in-process.
    pub fn writable_cte(self) -> bool {
        self == Dialect::Postgres
    }

    /// A derived table of the rows in a JSON array parameter, from a spec like
    /// `$1: id TEXT, n BIGINT, payload BYTEA`: one row per array element, one column per
    /// key named in the spec (other keys are ignored). BYTEA values travel as hex strings.
    /// One parameter carries any number of rows, so a batch of any size is one prepared
    /// statement.
    fn json_rows(self, spec: &str) -> String {
        let (param, columns) = spec
            .split_once(':')
            .unwrap_or_else(|| panic!("{{json {spec}}} names no columns"));
        let columns: Vec<(&str, &str)> = columns
            .split(',')
            .map(|column| {
                column
                    .trim()
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("{{json {spec}}}: column {column:?} has no type"))
            })
            .collect();
        let param = param.trim();
        match self {
            Dialect::Postgres => {
                let select: Vec<String> = columns
                    .iter()
                    .map(|&(name, kind)| match kind {
                        "BYTEA" => format!("decode(r.{name}, 'hex') AS {name}"),
                        _ => format!("r.{name}"),
                    })
                    .collect();
                let record: Vec<String> = columns
                    .iter()
                    .map(|&(name, kind)| match kind {
                        "BYTEA" => format!("{name} TEXT"),
                        _ => format!("{name} {kind}"),
                    })
                    .collect();
                format!(
                    "(SELECT {} FROM json_to_recordset({param}::json) AS r({}))",
                    select.join(", "),
                    record.join(", ")
                )
            }
            Dialect::Sqlite => {
                let select: Vec<String> = columns
                    .iter()
                    .map(|&(name, kind)| match kind {
                        "BYTEA" => format!("unhex(json_extract(value, '$.{name}')) AS {name}"),
                        _ => format!("json_extract(value, '$.{name}') AS {name}"),
                    })
                    .collect();
                format!("(SELECT {} FROM json_each({param}))", select.join(", "))
            }
        }
    }

    /// Opens a pool. SQLite files are created when missing and run in WAL mode with
    /// `synchronous=NORMAL` (durable across process crashes; the last commits may be lost
    /// only on power loss); `sessions` matters to PostgreSQL only.
    ///
    /// How PostgreSQL plans is the point of [`Sessions`]. A general pool plans every
    /// statement for its actual parameters (`plan_cache_mode = force_custom_plan`): the due
    /// scans and the admin's filters have parameters whose values change the best plan.
    ///
    /// A batch pool uses generic plans, which saves planning each batch: that cost more
    /// than running it (at 8 concurrent transactions, 0.12–0.23 ms against 0.11–0.15 ms
    /// per statement). Two things keep a generic plan from going wrong as the tables grow:
    /// - It is dropped (`DISCARD PLANS`) when a connection is acquired after spending the
    ///   turn of a second idle, and on every [`REPLAN_EVERY`]th acquire. Made once and
    ///   kept, a plan made while the tables were young and looked tiny went on scanning
    ///   them whole (about 1,000 transactions/s instead of 2,500) until an ANALYZE
    ///   invalidated it.
    /// - Nested loops and sequential scans are off. Before it was dropped, a plan made on
    ///   tiny tables still met tables many times larger: as a nested loop it scanned the
    ///   branch table once per decided transaction (40 ms decisions, and the slowdown fed
    ///   itself). Without them, each statement reads a table at most once, through an
    ///   index, and hash-joins what it read with the batch; with statistics that fit the
    ///   tables, the index is the primary key, looked up by the batch's gids.
    pub async fn connect(
        self,
        url: &str,
        max_connections: u32,
        sessions: Sessions,
    ) -> Result<sqlx::AnyPool, Error> {
        sqlx::any::install_default_drivers();
        let url = match self {
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
        let pool = match self {
            Dialect::Sqlite => pool.after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                         PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                    )
                    .await?;
                    Ok(())
                })
            }),
            Dialect::Postgres => match sessions {
                Sessions::General => pool.after_connect(|conn, _meta| {
                    Box::pin(async move {
                        conn.execute("SET plan_cache_mode TO force_custom_plan")
                            .await?;
                        Ok(())
                    })
                }),
                Sessions::Batches { durable } => {
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
                                if new_second(meta.age, meta.idle_for)
                                    || nth.is_multiple_of(REPLAN_EVERY)
                                {
                                    conn.execute("DISCARD PLANS").await?;
                                }
                                Ok(true)
                            })
                        })
                }
            },
        };
        Ok(pool.connect_with(options).await?)
    }
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

/// A URL fit for logs and errors: the password, if any, replaced.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://settle.db"), "sqlite://settle.db");
    }

    #[test]
    fn batch_connections_drop_plans_once_a_second() {
        let ms = Duration::from_millis;
        assert!(!new_second(ms(1_500), ms(400)));
        assert!(new_second(ms(2_100), ms(200)));
        assert!(new_second(ms(5_000), ms(3_000)));
        assert!(!new_second(ms(999), ms(999)));
        assert!(new_second(ms(1_000), ms(1)));
    }

    #[test]
    fn recognises_urls() {
        assert_eq!(
            Dialect::from_url("sqlite://x.db").ok(),
            Some(Dialect::Sqlite)
        );
        assert_eq!(
            Dialect::from_url("postgresql://h/db").ok(),
            Some(Dialect::Postgres)
        );
        assert!(Dialect::from_url("mysql://h/db").is_err());
    }
}
