//! A database that exists for one test: a SQLite file in a temporary directory, or a new
//! PostgreSQL database on the server of [`postgres_admin_url`], dropped after the test; and
//! the `both!` macro that runs one test body on each.
//!
//! PostgreSQL tests fail, never skip, when the server is unreachable. What a test puts in
//! its database is the test's business.

use std::future::Future;

use sqlx::{Connection, Executor};

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs an async test body once per backend: `both!(name);` turns `async fn name(Backend)`
/// into the tests `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[test]
            fn sqlite() {
                $crate::run(super::$name($crate::Backend::Sqlite))
            }
            #[test]
            fn postgres() {
                $crate::run(super::$name($crate::Backend::Postgres))
            }
        }
    };
}

/// Runs `test` to completion on the runtime of `#[tokio::test(flavor = "multi_thread",
/// worker_threads = 4)]`; `both!` uses it so that its callers need no tokio of their own.
pub fn run<F: Future>(test: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("test runtime")
        .block_on(test)
}

/// The server that PostgreSQL tests create their databases on: `SETTLE_TEST_POSTGRES`, else
/// the local server.
pub fn postgres_admin_url() -> String {
    std::env::var("SETTLE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Drops and creates the PostgreSQL database `name` on the server of the URL `admin`, and
/// returns its URL. The examples and the bench make their databases with it too.
pub async fn fresh_database(admin: &str, name: &str) -> Result<String, sqlx::Error> {
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    conn.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .await?;
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await?;
    conn.close().await?;
    let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
    Ok(format!("{base}/{name}"))
}

/// [`fresh_database`] `name` on the test server, failing the test when PostgreSQL is not
/// there.
async fn required_database(name: &str) -> String {
    let admin = postgres_admin_url();
    fresh_database(&admin, name).await.unwrap_or_else(|e| {
        panic!("PostgreSQL is required at {admin} (set SETTLE_TEST_POSTGRES): {e}")
    })
}

/// A database that exists for one test and is removed after it.
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_names: Vec<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("settle.db").display());
                TestDb {
                    url,
                    _dir: Some(dir),
                    pg_names: Vec::new(),
                }
            }
            Backend::Postgres => {
                let name = format!("settle_test_{:016x}", rand::random::<u64>());
                let url = required_database(&name).await;
                TestDb {
                    url,
                    _dir: None,
                    pg_names: vec![name],
                }
            }
        }
    }

    /// A database per name in `services`, as a URL template in which `{service}` stands
    /// for the name (what `settle_participants::Shop::start` takes).
    pub async fn per_service(backend: Backend, services: &[&str]) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}/{{service}}.db", dir.path().display());
                TestDb {
                    url,
                    _dir: Some(dir),
                    pg_names: Vec::new(),
                }
            }
            Backend::Postgres => {
                let stem = format!("settle_test_{:016x}", rand::random::<u64>());
                let mut pg_names = Vec::new();
                for service in services {
                    let name = format!("{stem}_{service}");
                    required_database(&name).await;
                    pg_names.push(name);
                }
                let admin = postgres_admin_url();
                let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                TestDb {
                    url: format!("{base}/{stem}_{{service}}"),
                    _dir: None,
                    pg_names,
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.pg_names);
        if names.is_empty() {
            return;
        }
        let admin = postgres_admin_url();
        // Drop runs inside the test's runtime; a separate thread with its own runtime can
        // block on the cleanup.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    for name in names {
                        let _ = conn
                            .execute(sqlx::AssertSqlSafe(format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            )))
                            .await;
                    }
                }
            });
        })
        .join();
    }
}
