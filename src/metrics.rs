//! A participant's Prometheus metrics (README, "Observing Settle"), recorded by the server
//! when [`Serve::metrics_listen`](crate::server::Serve::metrics_listen) turns them on:
//!
//! - `settle_participant_calls_total{op,result}`: every call the participant answered, with
//!   `result` `ok`, `refused` (`ABORTED`: a business refusal or a hanging Try), `error`
//!   (any other status) or `timeout` (the caller gave up, or its deadline passed, before
//!   the answer);
//! - `settle_participant_call_duration_seconds{op}`: how long the answer took;
//! - `settle_barrier_skipped_total{reason}`: calls the barrier answered without running the
//!   participant, `reason` `duplicate`, `empty_rollback` or `hanging_try`;
//! - `settle_participant_group_commit_size`: calls per local transaction, with group commit.
//!
//! Every label set is fixed, so each handle is made at start-up and recording is an atomic
//! add, never a lookup under a shared lock. Serving `/metrics` is `settle_telemetry`'s; what
//! the server does with a call is [`server`](crate::server)'s.

use std::time::Instant;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tonic::{Code, Status};

use crate::barrier::Op;

const RESULTS: [&str; 4] = ["ok", "refused", "error", "timeout"];

/// Why the barrier answered a call without running the participant; the discriminant
/// indexes [`SKIPPED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skipped {
    Duplicate = 0,
    EmptyRollback = 1,
    HangingTry = 2,
}

const SKIPPED: [&str; 3] = ["duplicate", "empty_rollback", "hanging_try"];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallLabels {
    op: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The handles one participant server records with.
#[derive(Debug)]
pub(crate) struct Meters {
    calls: [[Counter; RESULTS.len()]; Op::ALL.len()],
    seconds: [Histogram; Op::ALL.len()],
    skipped: [Counter; SKIPPED.len()],
    group_size: Histogram,
}

impl Meters {
    /// Registers the participant's metrics in `registry` and returns their handles.
    pub(crate) fn register(registry: &mut Registry, group_commit: bool) -> Meters {
        let calls = Family::<CallLabels, Counter>::default();
        let seconds = Family::<OpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 18))
        });
        let skipped = Family::<ReasonLabels, Counter>::default();
        let group_size = Histogram::new(exponential_buckets(1.0, 2.0, 8));
        registry.register(
            "settle_participant_calls",
            "Calls this participant answered, by op and result",
            calls.clone(),
        );
        registry.register(
            "settle_participant_call_duration_seconds",
            "How long this participant took to answer a call, by op",
            seconds.clone(),
        );
        registry.register(
            "settle_barrier_skipped",
            "Calls the barrier answered without running the participant, by reason",
            skipped.clone(),
        );
        if group_commit {
            registry.register(
                "settle_participant_group_commit_size",
                "Calls committed together in one local transaction",
                group_size.clone(),
            );
        }
        Meters {
            calls: Op::ALL.map(|op| {
                RESULTS.map(|result| {
                    calls
                        .get_or_create(&CallLabels {
                            op: op.as_str(),
                            result,
                        })
                        .clone()
                })
            }),
            seconds: Op::ALL.map(|op| seconds.get_or_create(&OpLabels { op: op.as_str() }).clone()),
            skipped: SKIPPED.map(|reason| skipped.get_or_create(&ReasonLabels { reason }).clone()),
            group_size,
        }
    }

    /// Starts timing a call; the returned guard records it when answered, or as a
    /// `timeout` when the call's future is dropped first.
    pub(crate) fn call(&self, op: Op) -> Timing<'_> {
        Timing {
            meters: self,
            op: op.index(),
            started: Instant::now(),
            answered: false,
        }
    }

    pub(crate) fn skipped(&self, why: Skipped) {
        self.skipped[why as usize].inc();
    }

    pub(crate) fn group(&self, size: usize) {
        self.group_size.observe(size as f64);
    }
}

/// One call being answered (see [`Meters::call`]).
#[derive(Debug)]
pub(crate) struct Timing<'a> {
    meters: &'a Meters,
    op: usize,
    started: Instant,
    answered: bool,
}

impl Timing<'_> {
    pub(crate) fn answered(mut self, answer: &Result<(), Status>) {
        let result = match answer {
            Ok(()) => 0,
            Err(status) if status.code() == Code::Aborted => 1,
            Err(status) if status.code() == Code::DeadlineExceeded => 3,
            Err(_) => 2,
        };
        self.record(result);
        self.answered = true;
    }

    fn record(&self, result: usize) {
        self.meters.calls[self.op][result].inc();
        self.meters.seconds[self.op].observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Timing<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.record(3);
        }
    }
}
