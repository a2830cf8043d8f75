//! Context propagation: the initiator's Try and the coordinator's Confirm carry
//! `settle-gid`, `settle-branch-id` and `settle-op`, and the participant server's layer puts
//! them into the span of the request.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use settle_testkit::{Backend, TestDb, start_coordinator, stock, test_config};
use tracing::{
    Subscriber,
    field::{Field, Visit},
    span::{Attributes, Id},
};
use tracing_subscriber::{Layer, layer::Context, prelude::*};

type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// Records the gid, branch id and op of every `settle` span.
struct SpanRecorder(Seen);

#[derive(Default)]
struct Fields(Vec<(String, String)>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
}

impl<S: Subscriber> Layer<S> for SpanRecorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {
        if attrs.metadata().name() != "settle" {
            return;
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let get = |name: &str| {
            fields
                .0
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        self.0
            .lock()
            .expect("seen")
            .push((get("gid"), get("branch_id"), get("op")));
    }
}

#[tokio::test]
async fn participant_spans_carry_gid_branch_and_op() {
    let seen: Seen = Arc::default();
    tracing_subscriber::registry()
        .with(SpanRecorder(seen.clone()))
        .init();

    let db = TestDb::new(Backend::Sqlite).await;
    let coordinator = start_coordinator(test_config(&db.url)).await;
    let stock_db = TestDb::new(Backend::Sqlite).await;
    let barrier = stock::open(&stock_db.url, &[("apple", 3)])
        .await
        .expect("open");
    let serving = settle::serve("stock", stock::Stock, barrier)
        .coordinator(coordinator.url())
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("serve");

    let client = settle::Client::connect(coordinator.url())
        .await
        .expect("connect");
    let tx = client.begin(Duration::from_secs(30)).await.expect("begin");
    let reserve = stock::Reserve {
        item: "apple".to_owned(),
        qty: 1,
    };
    let branch = tx
        .try_branch("stock", "reserve", &reserve)
        .await
        .expect("try");
    let gid = tx.gid().to_owned();
    tx.commit().await.expect("commit");

    let seen = seen.lock().expect("seen").clone();
    for op in ["try", "confirm"] {
        assert!(
            seen.contains(&(gid.clone(), branch.to_string(), op.to_owned())),
            "a span for {op} of {gid}/{branch} in {seen:?}"
        );
    }
    serving.stop().await.expect("stop");
    coordinator.stop().await.expect("stop");
}
