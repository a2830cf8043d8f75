//! The gRPC edge: the `settle.v1.Coordinator` and `settle.v1.Admin` services, the mapping
//! of [`Error`] to status codes (ARCHITECTURE.md, "The protocol"), the Admin token check,
//! the server's RPC metrics, and continuing the caller's trace.
//!
//! Nothing here makes decisions; every call is handed to the engine or to `crate::admin`.

mod admin;
mod coordinator;
mod metrics;
mod trace;

pub use admin::{AdminAuth, AdminService};
pub use coordinator::CoordinatorService;
pub use metrics::MetricsLayer;
pub use trace::layer as trace_layer;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        match error {
            Error::Invalid(e) => Status::invalid_argument(e.0),
            Error::NotFound(msg) => Status::not_found(msg),
            Error::FailedPrecondition(msg) => Status::failed_precondition(msg),
            Error::PermissionDenied(msg) => Status::permission_denied(msg),
            Error::Overloaded(e) => Status::with_error_details(
                Code::ResourceExhausted,
                e.to_string(),
                ErrorDetails::with_retry_info(Some(e.retry_after)),
            ),
            Error::Store(e) => {
                tracing::error!(error = %e, "store failed");
                Status::unavailable(format!("coordinator store unavailable: {e}"))
            }
        }
    }
}
