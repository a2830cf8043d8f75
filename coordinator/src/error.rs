//! Why a request to the coordinator was not carried out, in the terms of the protocol: the
//! one `Error` that TCC, sagas and the admin answer with. `crate::grpc` maps each variant
//! to its status code.

use crate::{admission::Overloaded, store, validate::Invalid};

/// Why a request was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed input.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// Unknown gid, branch or participant.
    #[error("{0}")]
    NotFound(String),
    /// The caller may not do this (register another caller's participant name).
    #[error("{0}")]
    PermissionDenied(String),
    /// The transaction's state does not allow the request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A start refused for load (`crate::admission`); retry after the time it gives.
    #[error(transparent)]
    Overloaded(#[from] Overloaded),
    /// The store failed; the request may be repeated.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// A result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
