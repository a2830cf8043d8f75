//! # Settle SDK
//!
//! Take part in Settle distributed transactions from a Rust service, on either side.
//!
//! **Initiator**: begin a global transaction, have each participant try its part, then
//! commit — or abort on any error, in one call.
//!
//! ```no_run
//! # async fn buy() -> Result<(), settle::client::Error> {
//! use std::time::Duration;
//!
//! let client = settle::Client::connect("http://127.0.0.1:50051").await?;
//! let tx = client.begin(Duration::from_secs(10)).await?;
//! let tried = async {
//!     tx.try_branch("inventory", "reserve", &serde_json::json!({"sku": "A1", "qty": 1})).await?;
//!     tx.try_branch("payment", "freeze", &serde_json::json!({"user": 7, "amount": 999})).await
//! };
//! match tried.await {
//!     Ok(_) => println!("{:?}", tx.commit().await?),
//!     Err(e) if e.is_refusal() => println!("refused: {e}; {:?}", tx.abort(&e.to_string()).await?),
//!     Err(e) => return Err(e), // dropping `tx` aborts it in the background
//! }
//! # Ok(()) }
//! ```
//!
//! **Participant**: implement [`Participant`]; each method runs in a local transaction
//! that already holds the barrier row, so duplicates, a Cancel before its Try and a Try
//! after its Cancel never reach your code.
//!
//! ```no_run
//! use settle::{Barrier, Branch, Participant, db::Database, participant::Error};
//! use sqlx::AnyConnection;
//!
//! struct Points;
//!
//! impl Participant for Points {
//!     async fn r#try(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
//!         let user: i64 = branch.json()?;
//!         let frozen = sqlx::query(
//!             "UPDATE points SET usable = usable - 10, frozen = frozen + 10 \
//!              WHERE user_id = $1 AND usable >= 10",
//!         )
//!         .bind(user)
//!         .execute(conn)
//!         .await?;
//!         if frozen.rows_affected() == 0 {
//!             return Err(Error::refuse("not enough points"));
//!         }
//!         Ok(())
//!     }
//!     async fn confirm(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
//!         let user: i64 = branch.json()?;
//!         sqlx::query("UPDATE points SET frozen = frozen - 10 WHERE user_id = $1")
//!             .bind(user).execute(conn).await?;
//!         Ok(())
//!     }
//!     async fn cancel(&self, branch: &Branch, conn: &mut AnyConnection) -> Result<(), Error> {
//!         let user: i64 = branch.json()?;
//!         sqlx::query("UPDATE points SET usable = usable + 10, frozen = frozen - 10 WHERE user_id = $1")
//!             .bind(user).execute(conn).await?;
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let db = Database::connect("sqlite://points.db", 4).await?;
//! let barrier = Barrier::new(db);
//! barrier.migrate().await?;
//! settle::serve("points", Points, barrier)
//!     .coordinator("http://127.0.0.1:50051")
//!     .bind("127.0.0.1:7004".parse()?)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! **Saga**: submit ordered steps with compensations in one call, with
//! `client.saga().step(…).step(…).submit()`; see [`saga`].
//!
//! Modules: [`client`] (initiator), [`saga`] (saga builder and saga-only participants),
//! [`participant`] (the trait), [`barrier`] (idempotency table), [`server`] (gRPC serving and
//! registration), [`metrics`] (what a participant exports), [`context`] (metadata and
//! tracing), [`db`] (opening a participant database).

#![warn(missing_docs)]

pub mod barrier;
pub mod client;
pub mod context;
pub mod db;
pub mod message;
pub mod metrics;
pub mod participant;
pub mod saga;
pub mod server;

pub use barrier::Barrier;
pub use client::{Client, Credentials, Transaction};
pub use message::Message;
pub use participant::{Branch, Participant};
pub use saga::{Saga, SagaOnly, SagaParticipant};
pub use server::serve;
pub use settle_proto as proto;
pub use settle_security as security;
