//! Opening a participant's own database: SQLite (a file, created if missing, in WAL mode)
//! or PostgreSQL, through sqlx's `Any` driver so that a participant writes its SQL once
//! with `$N` placeholders and runs on either.
//!
//! This module only connects and starts write transactions; the barrier and the business
//! schema are their owners' concern.

use std::{str::FromStr, time::Duration};

use sqlx::{
    Any, AnyPool, Executor,
    any::{AnyConnectOptions, AnyPoolOptions},
};

/// Which database a participant runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// A local file.
    Sqlite,
    /// A PostgreSQL database.
    Postgres,
}

impl Dialect {
    /// Recognises `sqlite:` and `postgres:`/`postgresql:` URLs.
    pub fn from_url(url: &str) -> Option<Dialect> {
        if url.starts_with("sqlite:") {
            Some(Dialect::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Dialect::Postgres)
        } else {
            None
        }
    }

    /// The statement that opens a write transaction. SQLite takes its write lock up front,
    /// so that two writers queue instead of one failing with SQLITE_BUSY.
    pub fn begin_write(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        }
    }
}

/// A pool on a participant's database, with its dialect.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    dialect: Dialect,
}

impl Database {
    /// Connects to `url` (`sqlite://PATH`, created if missing, or `postgres://…`).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Database, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::from_url(url).ok_or_else(|| {
            sqlx::Error::Configuration(
                format!("unsupported database URL {url:?}: expected sqlite:// or postgres://")
                    .into(),
            )
        })?;
        let url = match dialect {
            Dialect::Sqlite if !url.contains("mode=") && !url.contains(":memory:") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10));
        let pool = match dialect {
            // WAL lets readers run beside the writer; synchronous=NORMAL is durable across
            // process crashes and loses at most the last commits on power loss.
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
            Dialect::Postgres => pool,
        };
        let pool = pool
            .connect_with(AnyConnectOptions::from_str(&url)?)
            .await?;
        Ok(Database { pool, dialect })
    }

    /// The pool, for reads and the participant's own statements.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which database this is.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Opens a write transaction (`BEGIN IMMEDIATE` on SQLite).
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Any>, sqlx::Error> {
        self.pool.begin_with(self.dialect.begin_write()).await
    }
}

/// Whether `error` may go away if the same statement runs again: a lost connection, a
/// busy or locked database, a serialization failure or deadlock, a server shutting down.
/// Everything else (a constraint violated, a value out of range, SQL that does not fit
/// the schema, a row that does not decode) is permanent: running it again fails again.
///
/// Database errors are told apart by their code: PostgreSQL's five-character SQLSTATE, or
/// SQLite's extended result code, a number.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => match code.parse::<i32>() {
                Ok(sqlite) => sqlite_transient(sqlite),
                Err(_) => postgres_transient(&code),
            },
            None => false,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// SQLite primary result codes (the low byte of the extended code) that describe the
/// moment rather than the statement: BUSY, LOCKED, NOMEM, READONLY, INTERRUPT, IOERR,
/// FULL, CANTOPEN, PROTOCOL.
fn sqlite_transient(extended: i32) -> bool {
    matches!(extended & 0xff, 5..=10 | 13..=15)
}

/// SQLSTATE classes 08 (connection), 40 (serialization failure, deadlock; not 40002, a
/// constraint checked at commit), 53 (out of resources), 57 (shutdown, cancelled) and 58
/// (system I/O), and a lock not available, an object in use, or a read-only transaction
/// (a failover in progress).
fn postgres_transient(sqlstate: &str) -> bool {
    let class = sqlstate.get(..2).unwrap_or_default();
    (matches!(class, "08" | "40" | "53" | "57" | "58") && sqlstate != "40002")
        || matches!(sqlstate, "55P03" | "55006" | "25006")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_codes_are_told_apart_by_their_primary_code() {
        // SQLITE_BUSY, SQLITE_BUSY_SNAPSHOT, SQLITE_LOCKED, SQLITE_IOERR_WRITE
        for code in [5, 517, 6, 778] {
            assert!(sqlite_transient(code), "{code}");
        }
        // SQLITE_ERROR, SQLITE_CONSTRAINT_CHECK, SQLITE_CONSTRAINT_UNIQUE, SQLITE_MISMATCH,
        // SQLITE_CONSTRAINT_DATATYPE, SQLITE_CORRUPT
        for code in [1, 275, 2067, 20, 3091, 11] {
            assert!(!sqlite_transient(code), "{code}");
        }
    }

    #[test]
    fn sqlstates_are_told_apart_by_their_class() {
        for code in [
            "08006", "40001", "40P01", "53300", "57P01", "57014", "55P03",
        ] {
            assert!(postgres_transient(code), "{code}");
        }
        for code in ["23505", "23514", "22003", "42P01", "40002", "XX000"] {
            assert!(!postgres_transient(code), "{code}");
        }
    }

    #[test]
    fn lost_connections_are_transient_and_decoding_is_not() {
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Io(std::io::Error::other(
            "reset"
        ))));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(!is_transient(&sqlx::Error::ColumnNotFound("x".into())));
    }
}
