//! The reference shop: the four participants of a flash sale — [`inventory`], [`order`],
//! [`payment`] and [`points`] — each a real gRPC service on its own database, built on the
//! `settle` SDK; the [`flows`] the project exists for (purchase, points-pay, refund); and the
//! [`invariants`] that must hold after any run.
//!
//! [`shop::Shop`] starts all four in one process; the `settle-participants` binary runs one
//! or all of them.

#![warn(missing_docs)]

pub mod campaign;
pub mod flows;
pub mod hot;
pub mod invariants;
pub mod inventory;
mod ledger;
pub mod order;
pub mod payment;
pub mod points;
pub mod service;
pub mod shop;

pub use shop::Shop;
