//! What the workspace's tests share, so that each test file holds only its tests: a fresh
//! database per test and the `both!` macro that runs a test on SQLite and on PostgreSQL
//! ([`db`]), an in-process coordinator and the calls every test makes of it
//! ([`coordinator`]), a participant that records every call and answers as the test says
//! ([`recorder`]), a scrape of `/metrics` ([`metrics`]), real Redis with a prefix or a
//! server of the test's own ([`redis`]), a test CA ([`pki`]), and the `stock` participant
//! that the SDK tests drive ([`stock`]). The examples and the bench use its fresh
//! PostgreSQL databases and `stock` too.
//!
//! Helpers that one test file alone needs stay in that file. This crate is never published;
//! crates take it as a dev-dependency.

pub mod coordinator;
pub mod db;
pub mod metrics;
pub mod pki;
pub mod recorder;
pub mod redis;
pub mod stock;

pub use coordinator::{
    Settled, client, code, get, start_coordinator, test_config, wait_for_status,
};
pub use db::{Backend, TestDb, fresh_database, postgres_admin_url, run};
pub use metrics::{scrape, settled_metrics_addr, value, wait_for_value};
pub use pki::Pki;
pub use recorder::{Answer, Call, Recorder};
