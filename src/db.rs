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
