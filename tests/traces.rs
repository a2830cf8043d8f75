//! One trace from initiator to participant (README, "Observing Settle"), on SQLite and
//! PostgreSQL: the initiator's span, the coordinator's Commit and the participant's Try
//! share one trace id, carried in `traceparent` headers; and when the Confirm could not be
//! delivered before the coordinator restarted, the Confirm that the new coordinator's
//! recovery loop delivers joins that same trace, from the context stored with the
//! transaction. Spans go to an in-process exporter; the initiator, the coordinator and the
//! participant all run in this process and all trace.

use std::{sync::OnceLock, time::Duration};

use opentelemetry::trace::{TraceContextExt, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use settle::{Client, proto::v1 as pb};
use settle_telemetry::trace;
use settle_testkit::{
    Backend, TestDb, both, client, start_coordinator, stock, test_config, wait_for_status,
};
use tracing::{Instrument, Level, info_span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{Layer, filter::Targets, layer::SubscriberExt};

/// The process-wide exporter: a subscriber is global, so both tests share it and tell
/// their spans apart by trace id.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let spans = Targets::new()
            .with_target("settle", Level::INFO)
            .with_target("traces", Level::INFO);
        let subscriber =
            tracing_subscriber::registry().with(trace::layer(&provider).with_filter(spans));
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        exporter
    })
}

fn spans_of(trace_id: TraceId) -> Vec<SpanData> {
    exporter()
        .get_finished_spans()
        .expect("spans")
        .into_iter()
        .filter(|span| span.span_context.trace_id() == trace_id)
        .collect()
}

/// The finished spans of `trace_id` once `done` holds for them: a server span ends when
/// its handler's future is dropped, which may be just after the caller has the answer.
async fn spans_when(
    trace_id: TraceId,
    what: &str,
    done: impl Fn(&[SpanData]) -> bool,
) -> Vec<SpanData> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let spans = spans_of(trace_id);
        if done(&spans) {
            return spans;
        }
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// The participant's spans for `op` in the trace.
fn participant_calls(spans: &[SpanData], op: &str) -> usize {
    spans
        .iter()
        .filter(|s| s.name == "settle" && attribute(s, "op").as_deref() == Some(op))
        .count()
}

async fn serve_stock(
    barrier: &settle::Barrier,
    coordinator: &str,
    addr: &str,
) -> settle::server::Serving {
    settle::serve("stock", stock::Stock, barrier.clone())
        .coordinator(coordinator)
        .bind(addr.parse().expect("addr"))
        .await
        .expect("serve stock")
}

async fn a_confirm_after_a_restart_joins_the_trace_the_transaction_began_in(backend: Backend) {
    exporter();
    let db = TestDb::new(backend).await;
    let stock_db = TestDb::new(backend).await;
    let barrier = stock::open(&stock_db.url, &[("apple", 10)])
        .await
        .expect("stock");
    let first = start_coordinator(test_config(&db.url)).await;
    let serving = serve_stock(&barrier, &first.url(), "127.0.0.1:0").await;

    let root = info_span!(target: "traces", "initiator");
    let trace_id = root.context().span().span_context().trace_id();
    let initiator = Client::connect(first.url())
        .await
        .expect("connect")
        .with_commit_wait(Duration::from_millis(200));
    let gid = async {
        let tx = initiator
            .begin(Duration::from_secs(30))
            .await
            .expect("begin");
        tx.try_branch(
            "stock",
            "reserve",
            &stock::Reserve {
                item: "apple".to_owned(),
                qty: 2,
            },
        )
        .await
        .expect("try");
        let gid = tx.gid().to_owned();
        // The participant goes away before its Confirm: phase two cannot finish now.
        serving.stop().await.expect("stop participant");
        let status = tx.commit().await.expect("commit");
        assert_eq!(status, pb::Status::Committing);
        gid
    }
    .instrument(root.clone())
    .await;
    drop(root);

    let spans = spans_when(
        trace_id,
        "the coordinator to continue the initiator's trace",
        |spans| {
            [
                "initiator",
                "settle.v1.Coordinator/Begin",
                "settle.v1.Coordinator/Commit",
            ]
            .iter()
            .all(|name| spans.iter().any(|s| s.name == *name))
        },
    )
    .await;
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
    assert_eq!(participant_calls(&spans, "try"), 1, "{names:?}");
    assert_eq!(participant_calls(&spans, "confirm"), 0, "{names:?}");

    // A new coordinator on the same log, and the participant back at a new address.
    first.stop().await.expect("stop coordinator");
    let second = start_coordinator(test_config(&db.url)).await;
    let serving = serve_stock(&barrier, &second.url(), "127.0.0.1:0").await;
    let mut c = client(&second.url()).await;
    wait_for_status(&mut c, &gid, pb::Status::Committed).await;

    let spans = spans_when(trace_id, "the recovered Confirm's spans", |spans| {
        spans.iter().any(|s| s.name == "recover") && participant_calls(spans, "confirm") > 0
    })
    .await;
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
    assert_eq!(
        participant_calls(&spans, "confirm"),
        1,
        "the recovered Confirm joined the trace: {names:?}"
    );
    serving.stop().await.expect("stop participant");
    second.stop().await.expect("stop coordinator");
}
both!(a_confirm_after_a_restart_joins_the_trace_the_transaction_began_in);
