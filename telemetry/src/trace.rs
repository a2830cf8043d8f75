//! W3C trace context across every Settle hop (README, "Observing Settle"): what a process
//! needs to continue a trace it was called in, to hand it on to the processes it calls,
//! and to keep it as a `traceparent` string, which is how the coordinator stores it with a
//! transaction so that phase two run later, by another instance or after a restart, still
//! joins the trace that began it; and [`SpanLayer`], which runs each request a server
//! answers in a span of its own.
//!
//! Tracing is off until a process installs a tracer ([`layer`]); until then every function
//! here returns at once without touching the span, so a process that does not trace pays
//! one relaxed atomic load per call. Which spans a process opens, and where, is its own
//! business; exporting them over OTLP is [`otlp`]'s (feature `otlp`).

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
    task::Poll,
};

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::{Instrument, Span, instrument::Instrumented};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C header that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";

static ON: AtomicBool = AtomicBool::new(false);

/// Whether this process traces (a tracer was installed with [`layer`]).
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The `tracing` layer that turns this process's spans into OpenTelemetry spans of
/// `provider`, and turns propagation on. Add it to the subscriber at start-up; keep the
/// provider, and shut it down at exit so the last spans are exported.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    ON.store(true, Ordering::Relaxed);
    tracing_opentelemetry::layer().with_tracer(provider.tracer("settle"))
}

/// Makes `span` a child of the trace context in `headers` (a request's), if they carry one.
/// Call it before the span is first entered.
pub fn continue_from(span: &Span, headers: &http::HeaderMap) {
    if !on() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Makes `span` a child of a stored `traceparent` (see [`traceparent`]), if there is one.
/// Call it before the span is first entered.
pub fn continue_stored(span: &Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|_| on()) else {
        return;
    };
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Writes `span`'s trace context into `headers` (a request about to be sent), so that the
/// callee continues the trace.
pub fn inject(span: &Span, headers: &mut http::HeaderMap) {
    if !on() {
        return;
    }
    let context = span.context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut HeadersMut(headers));
    }
}

/// `span`'s trace context as a `traceparent` value, to be stored; `None` when this process
/// does not trace.
pub fn traceparent(span: &Span) -> Option<String> {
    if !on() {
        return None;
    }
    let context: Context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// A tower layer that runs every request in the span `make` builds from its path and
/// headers: the coordinator's server spans and the SDK participant's `settle` span are
/// this with different spans.
#[derive(Debug, Clone, Copy)]
pub struct SpanLayer {
    make: fn(&http::Uri, &http::HeaderMap) -> Span,
}

impl SpanLayer {
    /// A layer whose spans `make` builds.
    pub fn new(make: fn(&http::Uri, &http::HeaderMap) -> Span) -> SpanLayer {
        SpanLayer { make }
    }
}

impl<S> tower::Layer<S> for SpanLayer {
    type Service = Spanned<S>;

    fn layer(&self, inner: S) -> Spanned<S> {
        Spanned {
            inner,
            make: self.make,
        }
    }
}

/// A service whose requests each run in a span of their own (see [`SpanLayer`]).
#[derive(Debug, Clone)]
pub struct Spanned<S> {
    inner: S,
    make: fn(&http::Uri, &http::HeaderMap) -> Span,
}

impl<S, B> tower::Service<http::Request<B>> for Spanned<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let span = (self.make)(request.uri(), request.headers());
        self.inner.call(request).instrument(span)
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut http::HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Exporting spans over OTLP.
#[cfg(feature = "otlp")]
pub mod otlp {
    use opentelemetry_otlp::{SpanExporter, WithExportConfig};
    use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};

    /// Why the exporter could not be built.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot export traces over OTLP: {0}")]
    pub struct Error(#[from] opentelemetry_otlp::ExporterBuildError);

    /// A tracer provider that exports `service`'s spans in batches over OTLP/gRPC to
    /// `endpoint` (`http://collector:4317`). Call it inside the tokio runtime.
    pub fn provider(service: &str, endpoint: &str) -> Result<SdkTracerProvider, Error> {
        let exporter = SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()?;
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(service.to_owned())
                    .build(),
            )
            .build())
    }
}
