//! A binary's logs and traces, set up once at start-up: log lines (text or JSON) filtered by
//! `RUST_LOG` (default `info`), and, when an OTLP endpoint is given, the spans of Settle's
//! own crates exported over OTLP/gRPC with W3C propagation turned on
//! ([`crate::trace`]). The two have separate filters, so `RUST_LOG=error` quiets the logs
//! without losing a trace.

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::{
    EnvFilter, Layer, filter::Targets, layer::SubscriberExt, util::SubscriberInitExt,
};

use crate::trace;

/// What [`install`] sets up.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// The `service.name` of the exported spans.
    pub service: &'a str,
    /// Log as JSON lines instead of text.
    pub json: bool,
    /// Where to export spans (`http://collector:4317`); `None`: no tracing.
    pub otlp_endpoint: Option<&'a str>,
}

/// The installed tracer, if any. [`Telemetry::shutdown`] exports what is left.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans not yet sent; call it once the process has stopped serving.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber. Call it once, inside the tokio runtime (the exporter's
/// channel needs it).
pub fn install(options: Options<'_>) -> Result<Telemetry, trace::otlp::Error> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = if options.json {
        tracing_subscriber::fmt::layer().json().boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    let provider = options
        .otlp_endpoint
        .map(|endpoint| trace::otlp::provider(options.service, endpoint))
        .transpose()?;
    // Settle's spans (targets `settle`, `settle_coordinator`, `settle_participants`…), not
    // every library's.
    let spans = provider.as_ref().map(|provider| {
        trace::layer(provider).with_filter(Targets::new().with_target("settle", Level::INFO))
    });
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(spans)
        .init();
    Ok(Telemetry { provider })
}
