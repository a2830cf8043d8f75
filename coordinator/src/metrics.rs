//! The coordinator's Prometheus metrics (README, "Observing Settle"): their names and
//! labels, which are a contract with dashboards and alerts, and the handles that record
//! them.
//!
//! Every label set is known before it is recorded: fixed ones (mode × outcome, batch
//! kinds, gRPC methods × codes) are created at start-up, and a participant's are created
//! once, when the directory first caches it, and kept with its entry. So recording is an
//! atomic add on a handle, never a lookup under a lock that every request shares. No label
//! carries a gid or any other unbounded value. Serving `/metrics` is `settle_telemetry`'s.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use std::sync::atomic::AtomicU64;
use tokio::sync::watch;
use tonic::Code;
use tracing::warn;

use crate::{
    admission::{Admission, Limit},
    model::{Mode, Status},
    participants::Op,
    store::{Store, Unfinished},
};

/// The coordinator's metrics and the registry that exports them. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Arc<Registry>,
    begun: [Counter; MODES.len()],
    finished: [[Counter; 2]; MODES.len()],
    duration: [[Histogram; 2]; MODES.len()],
    queries: [Counter; QueryResult::ALL.len()],
    calls: Family<CallLabels, Counter>,
    call_seconds: Family<CallOpLabels, Histogram>,
    retries: Family<ParticipantLabels, Counter>,
    calls_in_flight: Family<ParticipantLabels, Gauge>,
    refused: [Counter; LIMITS.len()],
    refusal_seconds: Histogram,
    in_flight: Gauge,
    unfinished: [Gauge; UNFINISHED.len()],
    needs_attention: Gauge,
    oldest_unfinished: Gauge<f64, AtomicU64>,
    batches: BatchMeters,
    grpc: HashMap<String, usize>,
    methods: Vec<Method>,
    grpc_other: GrpcFamilies,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModeLabels {
    mode: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FinishLabels {
    mode: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallLabels {
    participant: String,
    op: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallOpLabels {
    participant: String,
    op: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ParticipantLabels {
    participant: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct QueryResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HandledLabels {
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HandlingLabels {
    grpc_service: String,
    grpc_method: String,
}

const MODES: [Mode; 3] = [Mode::Tcc, Mode::Saga, Mode::Message];
const LIMITS: [Limit; 3] = [Limit::InFlight, Limit::Rate, Limit::Queue];
const OUTCOMES: [&str; 2] = ["committed", "aborted"];
/// The statuses `settle_transactions_unfinished` reports, each always (0 when none).
const UNFINISHED: [Status; 6] = [
    Status::Trying,
    Status::Prepared,
    Status::Committing,
    Status::Aborting,
    Status::Running,
    Status::Compensating,
];

/// Every gRPC method the coordinator serves, with handles made at start-up; other paths
/// (health, reflection) are counted through a family.
const METHODS: [(&str, &str); 17] = [
    ("settle.v1.Coordinator", "Begin"),
    ("settle.v1.Coordinator", "RegisterBranch"),
    ("settle.v1.Coordinator", "Commit"),
    ("settle.v1.Coordinator", "Abort"),
    ("settle.v1.Coordinator", "Get"),
    ("settle.v1.Coordinator", "SubmitSaga"),
    ("settle.v1.Coordinator", "Prepare"),
    ("settle.v1.Coordinator", "Submit"),
    ("settle.v1.Coordinator", "RegisterParticipant"),
    ("settle.v1.Admin", "List"),
    ("settle.v1.Admin", "Show"),
    ("settle.v1.Admin", "Retry"),
    ("settle.v1.Admin", "ForceAbort"),
    ("settle.v1.Admin", "ResolveBranch"),
    ("settle.v1.Admin", "Pause"),
    ("settle.v1.Admin", "Resume"),
    ("settle.v1.Admin", "Stats"),
];

/// gRPC code names as go-grpc-prometheus spells them, indexed by `Code as usize`.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// Latency buckets from 0.5 ms to about 65 s.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// How one phase-two or saga call ended, as `settle_branch_calls_total` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// Done.
    Ok,
    /// A business refusal.
    Refused,
    /// An error answer, or no participant to call.
    Error,
    /// No answer within the call timeout.
    Timeout,
}

impl CallResult {
    const ALL: [CallResult; 4] = [
        CallResult::Ok,
        CallResult::Refused,
        CallResult::Error,
        CallResult::Timeout,
    ];

    fn as_str(self) -> &'static str {
        match self {
            CallResult::Ok => "ok",
            CallResult::Refused => "refused",
            CallResult::Error => "error",
            CallResult::Timeout => "timeout",
        }
    }
}

/// How one QueryPrepared call ended, as `settle_message_queries_total` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryResult {
    /// The local transaction committed: the message was submitted.
    Committed,
    /// It did not commit: the message was aborted.
    RolledBack,
    /// No usable answer: asked again later.
    Error,
}

impl QueryResult {
    const ALL: [QueryResult; 3] = [
        QueryResult::Committed,
        QueryResult::RolledBack,
        QueryResult::Error,
    ];

    fn as_str(self) -> &'static str {
        match self {
            QueryResult::Committed => "committed",
            QueryResult::RolledBack => "rolled_back",
            QueryResult::Error => "error",
        }
    }
}

/// One participant's handles, kept in its directory entry.
#[derive(Debug)]
pub struct ParticipantMeters {
    calls: [[Counter; 4]; 5],
    seconds: [Histogram; 5],
    retries: Counter,
    in_flight: Gauge,
}

impl ParticipantMeters {
    /// A call is about to be sent; the guard counts it in flight until dropped.
    pub fn sending(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// Records one call of `op` that ended as `result` after `took`.
    pub fn call(&self, op: Op, result: CallResult, took: Duration) {
        let op = op.index();
        self.calls[op][result as usize].inc();
        self.seconds[op].observe(took.as_secs_f64());
    }

    /// Records that a failed phase-two call will be retried.
    pub fn retry(&self) {
        self.retries.inc();
    }
}

/// A call counted in `settle_branch_calls_in_flight` until dropped.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The group-commit histograms (`settle_commit_batch_size`, `settle_commit_batch_seconds`)
/// for each kind of batch.
#[derive(Debug, Clone, Default)]
pub struct BatchMeters {
    /// Begins.
    pub begin: BatchMeter,
    /// Branch registrations.
    pub register: BatchMeter,
    /// Decisions.
    pub decide: BatchMeter,
    /// Finished rounds.
    pub finish: BatchMeter,
}

/// One kind's histograms; the default records into histograms nobody exports.
#[derive(Debug, Clone)]
pub struct BatchMeter {
    size: Histogram,
    seconds: Histogram,
}

impl Default for BatchMeter {
    fn default() -> Self {
        BatchMeter {
            size: batch_sizes(),
            seconds: seconds(),
        }
    }
}

impl BatchMeter {
    /// Records a batch of `size` requests that took `took` to write and commit.
    pub fn batch(&self, size: usize, took: Duration) {
        self.size.observe(size as f64);
        self.seconds.observe(took.as_secs_f64());
    }
}

fn batch_sizes() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 8))
}

/// One gRPC method's handles.
#[derive(Debug)]
struct Method {
    handled: [Counter; 17],
    seconds: Histogram,
}

#[derive(Debug)]
struct GrpcFamilies {
    handled: Family<HandledLabels, Counter>,
    seconds: Family<HandlingLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric, registered with the process and build metrics of `settle_telemetry`.
    pub fn new() -> Metrics {
        let mut registry = settle_telemetry::registry(env!("CARGO_PKG_VERSION"));

        let begun = Family::<ModeLabels, Counter>::default();
        registry.register(
            "settle_transactions_begun",
            "Transactions begun (TCC Begin, saga Submit, message Prepare or unprepared Submit)",
            begun.clone(),
        );
        let finished = Family::<FinishLabels, Counter>::default();
        registry.register(
            "settle_transactions_finished",
            "Transactions that reached a final status",
            finished.clone(),
        );
        let duration =
            Family::<FinishLabels, Histogram>::new_with_constructor(seconds as fn() -> Histogram);
        registry.register(
            "settle_transaction_duration_seconds",
            "Time from Begin to the final status",
            duration.clone(),
        );
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "settle_branch_calls",
            "Calls the coordinator made to participants, by how they ended",
            calls.clone(),
        );
        let call_seconds =
            Family::<CallOpLabels, Histogram>::new_with_constructor(seconds as fn() -> Histogram);
        registry.register(
            "settle_branch_call_duration_seconds",
            "Duration of the coordinator's calls to participants",
            call_seconds.clone(),
        );
        let retries = Family::<ParticipantLabels, Counter>::default();
        registry.register(
            "settle_phase_two_retries",
            "Failed phase-two or saga calls scheduled for a retry",
            retries.clone(),
        );
        let calls_in_flight = Family::<ParticipantLabels, Gauge>::default();
        registry.register(
            "settle_branch_calls_in_flight",
            "Calls to a participant sent and not yet answered",
            calls_in_flight.clone(),
        );
        let refused = Family::<LimitLabels, Counter>::default();
        registry.register(
            "settle_admission_refused",
            "New transactions refused for load (RESOURCE_EXHAUSTED), by the limit that refused them",
            refused.clone(),
        );
        // Finer than `seconds()` below 10 ms, where the goal for a refusal lies.
        let refusal_seconds = Histogram::new([
            0.00025, 0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1,
            0.25, 1.0,
        ]);
        registry.register(
            "settle_admission_refusal_seconds",
            "Time from the arrival of an RPC to its RESOURCE_EXHAUSTED answer, as the server saw it",
            refusal_seconds.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "settle_transactions_in_flight",
            "Transactions this instance admitted and has not seen finish (as --max-in-flight counts them)",
            in_flight.clone(),
        );
        let unfinished = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "settle_transactions_unfinished",
            "Transactions not yet final, by status (read from the database every few seconds)",
            unfinished.clone(),
        );
        let needs_attention = Gauge::default();
        registry.register(
            "settle_transactions_needs_attention",
            "Unfinished transactions flagged for an operator (read from the database)",
            needs_attention.clone(),
        );
        let oldest_unfinished = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "settle_oldest_unfinished_seconds",
            "Age of the oldest unfinished transaction, 0 when there is none (read from the database)",
            oldest_unfinished.clone(),
        );
        let batch_size =
            Family::<KindLabels, Histogram>::new_with_constructor(batch_sizes as fn() -> Histogram);
        registry.register(
            "settle_commit_batch_size",
            "Requests written together by one group commit",
            batch_size.clone(),
        );
        let batch_seconds =
            Family::<KindLabels, Histogram>::new_with_constructor(seconds as fn() -> Histogram);
        registry.register(
            "settle_commit_batch_seconds",
            "Time one group commit took to write and commit",
            batch_seconds.clone(),
        );
        let queries = Family::<QueryResultLabels, Counter>::default();
        registry.register(
            "settle_message_queries",
            "QueryPrepared calls the coordinator made for messages past their deadline, by how they ended",
            queries.clone(),
        );
        let handled = Family::<HandledLabels, Counter>::default();
        registry.register(
            "grpc_server_handled",
            "RPCs completed on the server, regardless of success or failure",
            handled.clone(),
        );
        let handling =
            Family::<HandlingLabels, Histogram>::new_with_constructor(seconds as fn() -> Histogram);
        registry.register(
            "grpc_server_handling_seconds",
            "Response latency of RPCs handled by the server",
            handling.clone(),
        );

        let begun = MODES.map(|m| {
            begun.get_or_create_owned(&ModeLabels {
                mode: mode_label(m),
            })
        });
        let finished = MODES.map(|m| {
            OUTCOMES.map(|outcome| {
                finished.get_or_create_owned(&FinishLabels {
                    mode: mode_label(m),
                    outcome,
                })
            })
        });
        let duration = MODES.map(|m| {
            OUTCOMES.map(|outcome| {
                duration.get_or_create_owned(&FinishLabels {
                    mode: mode_label(m),
                    outcome,
                })
            })
        });
        let queries = QueryResult::ALL.map(|result| {
            queries.get_or_create_owned(&QueryResultLabels {
                result: result.as_str(),
            })
        });
        let refused = LIMITS.map(|limit| {
            refused.get_or_create_owned(&LimitLabels {
                limit: limit.as_str(),
            })
        });
        let unfinished = UNFINISHED.map(|status| {
            unfinished.get_or_create_owned(&StatusLabels {
                status: status.as_str(),
            })
        });
        let meter = |kind: &'static str| BatchMeter {
            size: batch_size.get_or_create_owned(&KindLabels { kind }),
            seconds: batch_seconds.get_or_create_owned(&KindLabels { kind }),
        };
        let batches = BatchMeters {
            begin: meter("begin"),
            register: meter("register"),
            decide: meter("decide"),
            finish: meter("finish"),
        };
        let methods: Vec<Method> = METHODS
            .iter()
            .map(|(service, method)| {
                let labels = |code| HandledLabels {
                    grpc_service: (*service).to_owned(),
                    grpc_method: (*method).to_owned(),
                    grpc_code: code,
                };
                Method {
                    handled: CODES.map(|code| handled.get_or_create_owned(&labels(code))),
                    seconds: handling.get_or_create_owned(&HandlingLabels {
                        grpc_service: (*service).to_owned(),
                        grpc_method: (*method).to_owned(),
                    }),
                }
            })
            .collect();
        let grpc = METHODS
            .iter()
            .enumerate()
            .map(|(i, (service, method))| (format!("/{service}/{method}"), i))
            .collect();
        Metrics {
            inner: Arc::new(Inner {
                registry: Arc::new(registry),
                begun,
                finished,
                duration,
                queries,
                calls,
                call_seconds,
                retries,
                calls_in_flight,
                refused,
                refusal_seconds,
                in_flight,
                unfinished,
                needs_attention,
                oldest_unfinished,
                batches,
                grpc,
                methods,
                grpc_other: GrpcFamilies {
                    handled,
                    seconds: handling,
                },
            }),
        }
    }

    /// The registry, for the `/metrics` listener.
    pub fn registry(&self) -> Arc<Registry> {
        self.inner.registry.clone()
    }

    /// The group-commit histograms, for the store.
    pub fn batches(&self) -> BatchMeters {
        self.inner.batches.clone()
    }

    /// A transaction of `mode` began.
    pub fn begun(&self, mode: Mode) {
        self.inner.begun[mode_index(mode)].inc();
    }

    /// A transaction of `mode` that began at `created_at_ms` (epoch ms, the database's
    /// clock) reached `status` (COMMITTED or ABORTED). Its duration is taken by this host's
    /// clock, which is the database host's or close to it; a clock behind the database's
    /// counts as zero.
    pub fn finished(&self, mode: Mode, status: Status, created_at_ms: i64) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let age = Duration::from_millis(u64::try_from(now_ms - created_at_ms).unwrap_or(0));
        let outcome = match status {
            Status::Committed => 0,
            Status::Aborted => 1,
            _ => return,
        };
        let mode = mode_index(mode);
        self.inner.finished[mode][outcome].inc();
        self.inner.duration[mode][outcome].observe(age.as_secs_f64());
    }

    /// A QueryPrepared call ended as `result`.
    pub fn queried(&self, result: QueryResult) {
        self.inner.queries[result as usize].inc();
    }

    /// The handles of participant `name`, created with every label set it will use, so
    /// that each call records without a lookup.
    pub fn participant(&self, name: &str) -> Arc<ParticipantMeters> {
        let inner = &self.inner;
        let calls = Op::ALL.map(|op| {
            CallResult::ALL.map(|result| {
                inner.calls.get_or_create_owned(&CallLabels {
                    participant: name.to_owned(),
                    op: op.as_str(),
                    result: result.as_str(),
                })
            })
        });
        let seconds = Op::ALL.map(|op| {
            inner.call_seconds.get_or_create_owned(&CallOpLabels {
                participant: name.to_owned(),
                op: op.as_str(),
            })
        });
        let labels = ParticipantLabels {
            participant: name.to_owned(),
        };
        Arc::new(ParticipantMeters {
            calls,
            seconds,
            retries: inner.retries.get_or_create_owned(&labels),
            in_flight: inner.calls_in_flight.get_or_create_owned(&labels),
        })
    }

    /// A new transaction was refused by `limit`.
    pub fn refused(&self, limit: Limit) {
        self.inner.refused[limit as usize].inc();
    }

    /// The in-flight count admission control holds now.
    pub fn in_flight(&self, count: u64) {
        self.inner
            .in_flight
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// What the database said about unfinished work.
    pub fn unfinished(&self, rows: &[Unfinished]) {
        for (gauge, status) in self.inner.unfinished.iter().zip(UNFINISHED) {
            let count = rows
                .iter()
                .find(|r| r.status == status)
                .map_or(0, |r| r.count);
            gauge.set(count);
        }
        self.inner
            .needs_attention
            .set(rows.iter().map(|r| r.flagged).sum());
        let oldest_ms = rows
            .iter()
            .map(|r| r.oldest_age_ms)
            .max()
            .unwrap_or(0)
            .max(0);
        self.inner
            .oldest_unfinished
            .set(Duration::from_millis(oldest_ms as u64).as_secs_f64());
    }

    /// Which RPC `path` (`/service/Method`) is, looked up once when it arrives.
    pub fn rpc(&self, path: &str) -> Rpc {
        match self.inner.grpc.get(path) {
            Some(index) => Rpc::Known(*index),
            None => Rpc::Other(path.to_owned()),
        }
    }

    /// An RPC ended with `code` after `took`.
    pub fn handled(&self, rpc: &Rpc, code: Code, took: Duration) {
        if code == Code::ResourceExhausted {
            self.inner.refusal_seconds.observe(took.as_secs_f64());
        }
        let code_index = (code as usize).min(CODES.len() - 1);
        let path = match rpc {
            Rpc::Known(index) => {
                let method = &self.inner.methods[*index];
                method.handled[code_index].inc();
                method.seconds.observe(took.as_secs_f64());
                return;
            }
            Rpc::Other(path) => path,
        };
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("unknown", "unknown"));
        let other = &self.inner.grpc_other;
        other
            .handled
            .get_or_create(&HandledLabels {
                grpc_service: service.to_owned(),
                grpc_method: method.to_owned(),
                grpc_code: CODES[code_index],
            })
            .inc();
        other
            .seconds
            .get_or_create(&HandlingLabels {
                grpc_service: service.to_owned(),
                grpc_method: method.to_owned(),
            })
            .observe(took.as_secs_f64());
    }
}

/// An RPC as [`Metrics::rpc`] found it: one of the coordinator's methods, or another path
/// (health, reflection), counted through a family.
#[derive(Debug, Clone)]
pub enum Rpc {
    /// A method with handles made at start-up.
    Known(usize),
    /// Any other path.
    Other(String),
}

/// Reads the unfinished transactions from `store` every `every` into the gauges, and
/// lowers `admission`'s in-flight count to their number, until `stop` turns true. One
/// query per period, whatever the scrape rate.
pub async fn watch_store(
    metrics: Metrics,
    store: Store,
    admission: Admission,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let mark = admission.mark();
        match store.unfinished().await {
            Ok(rows) => {
                metrics.unfinished(&rows);
                let unfinished = rows.iter().map(|r| r.count.max(0) as u64).sum();
                admission.observe_unfinished(mark, unfinished);
                metrics.in_flight(admission.in_flight());
            }
            Err(error) => warn!(%error, "reading unfinished transactions for the metrics failed"),
        }
    }
}

fn mode_index(mode: Mode) -> usize {
    match mode {
        Mode::Tcc => 0,
        Mode::Saga => 1,
        Mode::Message => 2,
    }
}

fn mode_label(mode: Mode) -> &'static str {
    match mode {
        Mode::Tcc => "tcc",
        Mode::Saga => "saga",
        Mode::Message => "message",
    }
}
