//! The gRPC server metrics in the go-grpc-prometheus convention
//! (`grpc_server_handled_total`, `grpc_server_handling_seconds`): a tower layer around
//! every service `settled` serves, so that each RPC is counted once with the code it
//! ended with, whichever service, interceptor or error path answered it.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use tonic::Code;
use tower::{Layer, Service};

use crate::metrics::Metrics;

/// Counts and times every RPC into [`Metrics::handled`].
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Metrics,
}

impl MetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Metrics) -> MetricsLayer {
        MetricsLayer { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Measured<S> {
        Measured {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A service whose RPCs are counted and timed.
#[derive(Debug, Clone)]
pub struct Measured<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, R> Service<http::Request<B>> for Measured<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let rpc = self.metrics.rpc(request.uri().path());
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            let code = match &answer {
                Ok(response) => code(response.headers()),
                Err(_) => Code::Unknown,
            };
            metrics.handled(&rpc, code, started.elapsed());
            answer
        })
    }
}

/// The code of a response: an error is answered "trailers-only", its `grpc-status` in the
/// headers; a success carries it in the trailers, after the body, so no status in the
/// headers means OK.
fn code(headers: &http::HeaderMap) -> Code {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32)
}
