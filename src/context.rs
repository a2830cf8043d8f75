//! Context propagation: the metadata keys every coordinator → participant call carries
//! (the protocol's, from `settle_proto::metadata`), and a tower layer that puts them into
//! the tracing span of the request on the participant server, so every log line of a call
//! names its gid, branch and op. When the process traces (`settle_telemetry::trace`), that
//! span continues the caller's W3C trace, and every request the client sends carries the
//! current span's ([`traced`]), so one trace runs from the initiator through the
//! coordinator to each participant.

use std::task::{Context, Poll};

use settle_telemetry::trace;
use tower::{Layer, Service};
use tracing::{Instrument, Span, instrument::Instrumented};

pub use settle_proto::metadata::{BRANCH_ID, GID, OP};

/// Adds a `settle` span with gid, branch id and op to every request.
#[derive(Debug, Clone, Copy, Default)]
pub struct ContextLayer;

impl<S> Layer<S> for ContextLayer {
    type Service = ContextService<S>;

    fn layer(&self, inner: S) -> ContextService<S> {
        ContextService { inner }
    }
}

/// The service [`ContextLayer`] wraps around the participant server.
#[derive(Debug, Clone)]
pub struct ContextService<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for ContextService<S>
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
        let header = |key: &str| {
            request
                .headers()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let span = tracing::info_span!(
            "settle",
            gid = %header(GID),
            branch_id = %header(BRANCH_ID),
            op = %header(OP),
        );
        trace::continue_from(&span, request.headers());
        self.inner.call(request).instrument(span)
    }
}

/// `message` as a request that carries the current span's trace context, when tracing.
pub(crate) fn traced<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    trace::inject(&Span::current(), request.metadata_mut().as_mut());
    request
}
