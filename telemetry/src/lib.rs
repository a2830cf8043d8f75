//! What every Settle process exports for operators (README, "Observing Settle"): the
//! `/metrics` HTTP listener over a `prometheus-client` [`Registry`], in Prometheus' text
//! format, with the process metrics ([`process`]) and `settle_build_info`; and W3C trace
//! context, carried in requests and stored as `traceparent` strings, with OTLP export
//! ([`trace`]); and, for binaries, logs and trace export set up at start-up
//! (`subscriber`, feature `otlp`).
//!
//! Which metrics a process records and which spans it opens are its own business (the
//! coordinator's metrics are in `settle_coordinator::metrics`); this crate only serves and
//! carries them.

pub mod process;
#[cfg(feature = "otlp")]
pub mod subscriber;
pub mod trace;

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{Router, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text},
    metrics::info::Info,
    registry::Registry,
};
use tokio::net::TcpListener;
use tracing::warn;

/// The `Content-Type` of Prometheus' text format, version 0.0.4.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Build {
    version: String,
}

/// A registry with what every process exports: `settle_build_info{version}` and the
/// process metrics.
pub fn registry(version: &str) -> Registry {
    let mut registry = Registry::default();
    registry.register(
        "settle_build",
        "The running build of Settle",
        Info::new(Build {
            version: version.to_owned(),
        }),
    );
    registry.register_collector(Box::new(process::Process));
    registry
}

/// Where the metrics listener takes its address from: `off`, or an address.
pub fn parse_listen(value: &str) -> Result<Option<SocketAddr>, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|e| format!("{value:?} is neither an address (host:port) nor \"off\": {e}"))
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes. Each scrape encodes the
/// registry as it is then; recording never waits for a scrape.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move { scrape(&registry) }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

fn scrape(registry: &Registry) -> axum::response::Response {
    let mut body = String::with_capacity(16 * 1024);
    if let Err(error) = prometheus_text::encode(&mut body, registry) {
        warn!(%error, "encoding the metrics failed");
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("encoding the metrics failed: {error}"),
        )
            .into_response();
    }
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], body).into_response()
}
