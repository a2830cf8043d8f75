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
    /// On every participant call: the operation, [`Op::as_str`](super::Op::as_str).
    pub const OP: &str = "settle-op";
    /// On Admin calls: the operator's name, recorded in the audit trail.
    pub const ACTOR: &str = "x-settle-actor";
    /// On Admin calls: `Bearer TOKEN`.
    pub const AUTHORIZATION: &str = "authorization";
}

/// The operation a participant call performs: one RPC of `settle.v1.Participant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// TCC phase one: check and reserve.
    Try,
    /// TCC commit.
    Confirm,
    /// TCC rollback.
    Cancel,
    /// Saga forward step.
    Execute,
    /// Saga compensation.
    Compensate,
}

impl Op {
    /// Every op, in declaration order: [`Op::index`] is the position here, so per-op tables
    /// (such as metric handles) are arrays indexed by it.
    pub const ALL: [Op; 5] = [
        Op::Try,
        Op::Confirm,
        Op::Cancel,
        Op::Execute,
        Op::Compensate,
    ];

    /// Where this op is in [`Op::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The `settle-op` metadata value (also how participants' barriers store it).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Try => "try",
            Op::Confirm => "confirm",
            Op::Cancel => "cancel",
            Op::Execute => "execute",
            Op::Compensate => "compensate",
        }
    }

    /// Whether a participant may refuse this call for good (`ABORTED`). Only a forward op
    /// may: a Try that succeeded makes its Confirm and Cancel certain, and a compensation
    /// must not give up.
    pub fn may_refuse(self) -> bool {
        matches!(self, Op::Try | Op::Execute)
    }

    /// For a rollback op, the forward op it undoes.
    pub fn undoes(self) -> Option<Op> {
        match self {
            Op::Cancel => Some(Op::Try),
            Op::Compensate => Some(Op::Execute),
            _ => None,
        }
    }

    /// For a forward op, the rollback op that may have blocked it.
    pub fn undone_by(self) -> Option<Op> {
        match self {
            Op::Try => Some(Op::Cancel),
            Op::Execute => Some(Op::Compensate),
            _ => None,
        }
    }
}

/// The encoded file descriptor set of every `settle.v1` file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/settle_descriptor.bin"));

#[cfg(test)]
mod tests {
    use super::Op;

    #[test]
    fn every_op_is_at_its_index() {
        for (i, op) in Op::ALL.into_iter().enumerate() {
            assert_eq!(op.index(), i, "{op:?}");
        }
    }
}
