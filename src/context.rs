//! Context propagation: the metadata keys every coordinator → participant call carries
//! (the protocol's, from `settle_proto::metadata`), and a tower layer that puts them into
//! the tracing span of the request on the participant server, so every log line of a call
//! names its gid, branch and op. When the process traces (`settle_telemetry::trace`), that
//! span continues the caller's W3C trace, and every request the client sends carries the
//! current span's ([`traced`]), so one trace runs from the initiator through the
//! coordinator to each participant.

use settle_telemetry::trace::{self, SpanLayer};
use tracing::Span;

pub use settle_proto::metadata::{BRANCH_ID, GID, OP};

/// Adds a `settle` span with gid, branch id and op to every request, continuing the
/// caller's trace.
pub fn layer() -> SpanLayer {
    SpanLayer::new(call_span)
}

fn call_span(_: &http::Uri, headers: &http::HeaderMap) -> Span {
    let header = |key: &str| headers.get(key).and_then(|v| v.to_str().ok()).unwrap_or("");
    let span = tracing::info_span!(
        "settle",
        gid = %header(GID),
        branch_id = %header(BRANCH_ID),
        op = %header(OP),
    );
    trace::continue_from(&span, headers);
    span
}

/// `message` as a request that carries the current span's trace context, when tracing.
pub(crate) fn traced<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    trace::inject(&Span::current(), request.metadata_mut().as_mut());
    request
}
