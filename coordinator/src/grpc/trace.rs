//! Continuing the caller's trace: a tower layer around every service `settled` serves that,
//! when the coordinator traces, runs each RPC in a server span that is a child of the
//! request's `traceparent`, named for the method. The handlers' own spans (`begin`,
//! `commit`, …) nest inside it, and Begin stores its context with the transaction
//! (`settle_telemetry::trace`). When tracing is off the span is `Span::none()`.

use std::task::{Context, Poll};

use settle_telemetry::trace;
use tower::{Layer, Service};
use tracing::{Instrument, Span, instrument::Instrumented};

/// Runs every RPC in a span that continues the caller's trace.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Traced<S> {
        Traced { inner }
    }
}

/// A service whose RPCs run in server spans.
#[derive(Debug, Clone)]
pub struct Traced<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for Traced<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let span = if trace::on() {
            let span = tracing::info_span!(
                "rpc",
                otel.name = %request.uri().path().trim_start_matches('/'),
                otel.kind = "server",
            );
            trace::continue_from(&span, request.headers());
            span
        } else {
            Span::none()
        };
        self.inner.call(request).instrument(span)
    }
}
