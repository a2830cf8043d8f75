//! Continuing the caller's trace: the layer around every service `settled` serves that,
//! when the coordinator traces, runs each RPC in a server span that is a child of the
//! request's `traceparent`, named for the method. The handlers' own spans (`begin`,
//! `commit`, …) nest inside it, and Begin stores its context with the transaction
//! (`settle_telemetry::trace`). When tracing is off the span is `Span::none()`.

use settle_telemetry::trace::{self, SpanLayer};
use tracing::Span;

/// Runs every RPC in a span that continues the caller's trace.
pub fn layer() -> SpanLayer {
    SpanLayer::new(server_span)
}

fn server_span(uri: &http::Uri, headers: &http::HeaderMap) -> Span {
    if !trace::on() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "rpc",
        otel.name = %uri.path().trim_start_matches('/'),
        otel.kind = "server",
    );
    trace::continue_from(&span, headers);
    span
}
