//! The `settle.v1` protocol: messages, the Coordinator, Participant and Admin services
//! (clients and servers), generated from `settle/v1/*.proto` at build time.
//!
//! This crate owns the wire contract only; behaviour lives in `settle-coordinator` and in the
//! `settle` SDK.

/// Generated code for package `settle.v1`.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod v1 {
    tonic::include_proto!("settle.v1");
}

/// The encoded file descriptor set of every `settle.v1` file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/settle_descriptor.bin"));
