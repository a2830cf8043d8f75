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

/// The metadata keys of the protocol: what every call carries beside its message. Clients
/// and servers that are not ours read and write them, so they are part of the contract.
pub mod metadata {
    /// On every coordinator → participant call (and the initiator's Try): the global
    /// transaction id.
    pub const GID: &str = "settle-gid";
    /// On every participant call: the branch id.
    pub const BRANCH_ID: &str = "settle-branch-id";
    /// On every participant call: the operation (`try`, `confirm`, `cancel`, `execute`,
    /// `compensate`).
    pub const OP: &str = "settle-op";
    /// On Admin calls: the operator's name, recorded in the audit trail.
    pub const ACTOR: &str = "x-settle-actor";
    /// On Admin calls: `Bearer TOKEN`.
    pub const AUTHORIZATION: &str = "authorization";
}

/// The encoded file descriptor set of every `settle.v1` file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/settle_descriptor.bin"));
