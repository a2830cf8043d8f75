//! Every difference between the SQLite and PostgreSQL SQL the store issues, in one place:
//! the clock expression, how a write transaction starts, row locking for claims, connection
//! set-up and URL handling. The statements themselves live in `store/mod.rs` and are written
//! once, with `{now}` standing for the clock and `{skip_locked}` for claim locking.

use std::{
    collections::HashMap,
    str::FromStr,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use sqlx::{
    Executor,
    any::{AnyConnectOptions, AnyPoolOptions},
};

use super::Error;

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
        let sql = template
            .replace("{now}", self.now_ms())
            .replace("{skip_locked}", self.skip_locked());
        Box::leak(sql.into_boxed_str())
    }

    /// `INSERT INTO branch` of `n` branches numbered 1..=n in one statement: `$1` is the
    /// gid, then participant, action and payload for each branch. Rendered once per count.
    pub fn insert_branches(self, n: usize) -> &'static str {
        static CACHE: OnceLock<Mutex<HashMap<(Dialect, usize), &'static str>>> = OnceLock::new();
        let mut cache = CACHE
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        cache.entry((self, n)).or_insert_with(|| {
            let rows: Vec<String> = (0..n)
                .map(|i| {
                    let p = 2 + 3 * i;
                    format!(
                        "($1, {}, ${p}, ${}, ${}, 'PENDING', {{now}}, {{now}})",
                        i + 1,
                        p + 1,
                        p + 2
                    )
                })
                .collect();
            self.render(&format!(
                "INSERT INTO branch (gid, branch_id, participant, action, payload, status, \
                 created_at, updated_at) VALUES {}",
                rows.join(", ")
            ))
        })
    }

    /// PostgreSQL only: Begin with `n` branches as one statement (a data-modifying CTE), so
    /// it costs one round trip instead of four. Parameters as the `begin` statement
    /// ($1…$6), then participant, action and payload per branch. SQLite has no writable
    /// CTEs; there the store runs `begin` and `insert_branches` in one transaction, which
    /// costs nothing extra in-process.
    pub fn begin_with_branches(self, n: usize) -> Option<&'static str> {
        static CACHE: OnceLock<Mutex<HashMap<usize, &'static str>>> = OnceLock::new();
        if self != Dialect::Postgres {
            return None;
        }
        let mut cache = CACHE
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Some(cache.entry(n).or_insert_with(|| {
            let rows: Vec<String> = (0..n)
                .map(|i| {
                    let p = 7 + 3 * i;
                    format!("({}, ${p}, ${}, ${}::BYTEA)", i + 1, p + 1, p + 2)
                })
                .collect();
            self.render(&format!(
                "WITH t AS (INSERT INTO global_tx (gid, mode, status, deadline, next_attempt_at, \
                     labels, branch_count, created_at, updated_at) \
                     VALUES ($1, $2, $3, {{now}} + $4, {{now}} + $4, $5, $6, {{now}}, {{now}}) \
                     ON CONFLICT (gid) DO NOTHING \
                     RETURNING gid, mode, status, deadline, next_attempt_at, attempts, owner, \
                         version, branch_count, labels, reason, needs_attention, paused, \
                         decided_at, created_at, updated_at), \
                 b AS (INSERT INTO branch (gid, branch_id, participant, action, payload, status, \
                         created_at, updated_at) \
                     SELECT t.gid, v.id, v.participant, v.action, v.payload, 'PENDING', \
                         {{now}}, {{now}} \
                     FROM t, (VALUES {}) AS v (id, participant, action, payload)) \
                 SELECT * FROM t",
                rows.join(", ")
            ))
        }))
    }

    /// PostgreSQL only: a round in which every pending branch succeeded, recorded as one
    /// statement: the branches' new status ($4) and the fenced final status ($5) of the
    /// transaction. SQLite runs the two statements in one transaction instead.
    pub fn finish_all(self) -> Option<&'static str> {
        static SQL: OnceLock<&'static str> = OnceLock::new();
        (self == Dialect::Postgres).then(|| {
            *SQL.get_or_init(|| {
                self.render(
                    "WITH b AS (UPDATE branch SET status = $4, updated_at = {now}, \
                         next_attempt_at = NULL WHERE gid = $1 AND status = 'PENDING') \
                     UPDATE global_tx SET status = $5, owner = NULL, lease_until = NULL, \
                         next_attempt_at = NULL, updated_at = {now} \
                     WHERE gid = $1 AND owner = $2 AND version = $3",
                )
            })
        })
    }

    /// Opens a pool. SQLite files are created when missing and run in WAL mode with
    /// `synchronous=NORMAL` (durable across process crashes; the last commits may be lost
    /// only on power loss). A `relaxed` PostgreSQL pool commits without waiting for the WAL
    /// flush (`synchronous_commit = off`): for writes that a crash may lose because they
    /// are redone from what is durable (see `Store::record_round`).
    pub async fn connect(
        self,
        url: &str,
        max_connections: u32,
        relaxed: bool,
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
            Dialect::Postgres if relaxed => pool.after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute("SET synchronous_commit TO off").await?;
                    Ok(())
                })
            }),
            Dialect::Postgres => pool,
        };
        Ok(pool.connect_with(options).await?)
    }
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
