//! The Coordinator API under arbitrary input: sequences of Begin, RegisterBranch, Commit,
//! Abort, Get and SubmitSaga with gids, names, actions, payloads, timeouts, labels and saga
//! groups drawn at random (well-formed, malformed and oversized alike) are each answered
//! with success or a client error of the protocol (`INVALID_ARGUMENT`, `NOT_FOUND`,
//! `FAILED_PRECONDITION`, `RESOURCE_EXHAUSTED`), never `INTERNAL`, `UNKNOWN` or
//! `UNAVAILABLE` (a handler that panicked, or a store that broke, answers one of those),
//! and the coordinator still runs a well-formed transaction afterwards. proptest shrinks
//! a failing sequence to the smallest one; `PROPTEST_CASES` runs more.

use std::collections::HashMap;

use proptest::{collection::vec, prelude::*};
use settle_proto::v1::{self as pb, coordinator_client::CoordinatorClient};
use settle_testkit::{Backend, TestDb, client, start_coordinator, test_config};
use tonic::{Code, transport::Channel};

/// Text: usually of the characters names and gids allow, sometimes anything, sometimes
/// too long, sometimes empty.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z0-9._:-]{1,24}",
        2 => any::<String>(),
        1 => "[a-z]{120,300}",
        1 => Just(String::new()),
    ]
}

/// A participant name: mostly the one registered, so that requests get past the lookup.
fn participant() -> impl Strategy<Value = String> {
    prop_oneof![3 => Just("stock".to_owned()), 1 => text()]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => vec(any::<u8>(), 0..64),
        1 => Just(vec![7u8; 70 * 1024]),
    ]
}

fn timeout_ms() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 1u64..120_000, 1 => Just(0u64), 1 => any::<u64>()]
}

fn labels() -> impl Strategy<Value = HashMap<String, String>> {
    prop::collection::hash_map(text(), text(), 0..4)
}

/// A gid: a few fixed ones, so that requests meet the same transaction, or any text.
fn gid() -> impl Strategy<Value = String> {
    prop_oneof![3 => "g-[0-3]".prop_map(String::from), 1 => text()]
}

#[derive(Debug, Clone)]
enum Call {
    Begin(pb::BeginRequest),
    Register(pb::RegisterBranchRequest),
    Commit(pb::CommitRequest),
    Abort(pb::AbortRequest),
    Get(pb::GetRequest),
    Saga(pb::SubmitSagaRequest),
}

fn branch() -> impl Strategy<Value = pb::BranchSpec> {
    (participant(), text(), payload()).prop_map(|(participant, action, payload)| pb::BranchSpec {
        participant,
        action,
        payload: payload.into(),
    })
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        (gid(), -1i32..4, timeout_ms(), labels(), vec(branch(), 0..4)).prop_map(
            |(gid, mode, timeout_ms, labels, branches)| Call::Begin(pb::BeginRequest {
                gid,
                mode,
                timeout_ms,
                labels,
                branches,
            })
        ),
        (gid(), participant(), text(), payload()).prop_map(
            |(gid, participant, action, payload)| {
                Call::Register(pb::RegisterBranchRequest {
                    gid,
                    participant,
                    action,
                    payload: payload.into(),
                })
            }
        ),
        (gid(), 0u64..50)
            .prop_map(|(gid, wait_ms)| Call::Commit(pb::CommitRequest { gid, wait_ms })),
        (gid(), text(), 0u64..50).prop_map(|(gid, reason, wait_ms)| Call::Abort(
            pb::AbortRequest {
                gid,
                reason,
                wait_ms,
            }
        )),
        gid().prop_map(|gid| Call::Get(pb::GetRequest { gid })),
        (
            gid(),
            vec((participant(), text(), payload(), payload(), 0u32..3), 0..5),
            timeout_ms(),
            labels()
        )
            .prop_map(|(gid, steps, timeout_ms, labels)| Call::Saga(
                pb::SubmitSagaRequest {
                    gid,
                    steps: steps
                        .into_iter()
                        .map(
                            |(participant, action, payload, compensation, group)| pb::SagaStep {
                                participant,
                                action,
                                payload: payload.into(),
                                compensation_payload: compensation.into(),
                                group,
                            }
                        )
                        .collect(),
                    timeout_ms,
                    labels,
                    wait_ms: 0,
                }
            )),
    ]
}

/// The code `call` is answered with.
async fn send(c: &mut CoordinatorClient<Channel>, call: Call) -> Code {
    let code = |result: Result<(), tonic::Status>| result.err().map_or(Code::Ok, |s| s.code());
    match call {
        Call::Begin(r) => code(c.begin(r).await.map(drop)),
        Call::Register(r) => code(c.register_branch(r).await.map(drop)),
        Call::Commit(r) => code(c.commit(r).await.map(drop)),
        Call::Abort(r) => code(c.abort(r).await.map(drop)),
        Call::Get(r) => code(c.get(r).await.map(drop)),
        Call::Saga(r) => code(c.submit_saga(r).await.map(drop)),
    }
}

#[test]
fn arbitrary_requests_get_client_errors_and_the_coordinator_keeps_serving() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let db = runtime.block_on(TestDb::new(Backend::Sqlite));
    let running = runtime.block_on(start_coordinator(test_config(&db.url)));
    let url = running.url();
    let mut c = runtime.block_on(client(&url));
    // A participant that is never called: every transaction here is aborted by its
    // deadline or by an Abort, or has only branches nobody Trys, and phase two's calls to
    // a closed port are retried in the background.
    runtime
        .block_on(c.register_participant(pb::RegisterParticipantRequest {
            name: "stock".to_owned(),
            endpoint: "http://127.0.0.1:1".to_owned(),
        }))
        .expect("register");

    // 64 cases by default (each a sequence of up to 7 calls); PROPTEST_CASES for more.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(64);
    let config = ProptestConfig::with_cases(cases);
    proptest!(config, |(calls in vec(call(), 1..8))| {
        let mut c = c.clone();
        for call in calls {
            let shown = format!("{call:?}");
            let answered = runtime.block_on(send(&mut c, call));
            prop_assert!(
                matches!(
                    answered,
                    Code::Ok
                        | Code::InvalidArgument
                        | Code::NotFound
                        | Code::FailedPrecondition
                        | Code::ResourceExhausted
                ),
                "{answered:?} for {}",
                shown.chars().take(400).collect::<String>()
            );
        }
    });

    let begun = runtime
        .block_on(c.begin(pb::BeginRequest {
            timeout_ms: 10_000,
            ..Default::default()
        }))
        .expect("a well-formed Begin after all that")
        .into_inner();
    let committed = runtime
        .block_on(c.commit(pb::CommitRequest {
            gid: begun.gid,
            wait_ms: 1_000,
        }))
        .expect("commit")
        .into_inner();
    assert_eq!(committed.status(), pb::Status::Committed);
    runtime.block_on(running.stop()).expect("stop");
}
