//! TCC mode (ARCHITECTURE.md, "State machines"):
//! `TRYING --Commit--> COMMITTING --all Confirm ok--> COMMITTED`,
//! `TRYING --Abort / deadline--> ABORTING --all Cancel ok--> ABORTED`.
//!
//! [`Tcc`] validates each request, makes the decision with the store's compare-and-set
//! (durable before any phase-two call is sent), and drives phase two: Confirm or Cancel to
//! every pending branch concurrently, one *round* at a time, each round recorded in one
//! database transaction under the owner/version lease. A round that leaves a branch pending
//! reschedules the transaction with the retry policy; the recovery loop picks it up again.
//!
//! It speaks in domain types; the gRPC layer (`crate::grpc`) converts to and from the wire.
//! Saga mode is its peer, `crate::saga`, on the same [`Context`].

use std::{collections::BTreeMap, collections::HashMap, time::Duration};

use futures::future::join_all;
use settle_telemetry::trace;
use tracing::{Instrument, Span, info, info_span, warn};

use crate::{
    context::Context,
    error::{Error, Result},
    id, message,
    model::{Branch, BranchStatus, DEADLINE, GlobalTx, Mode, Status},
    participants::{Answer, Op},
    store::{
        BranchOutcome, Decided, Escalation, Lease, NewBranch, Origin, Refusal, RegisterRefusal,
        RoundResult,
    },
    validate::{self, Invalid},
};

/// What Begin produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Begun {
    /// The transaction as stored.
    pub tx: GlobalTx,
    /// False when the gid already existed.
    pub created: bool,
    /// The branches registered with it (for an existing gid: all of its branches).
    pub branches: Vec<Registered>,
}

/// A registered branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// 1-based branch id.
    pub branch_id: u32,
    /// Where the initiator calls Try.
    pub endpoint: String,
}

/// Phase-two work on one transaction that this instance holds a lease on.
#[derive(Debug, Clone)]
pub struct Work {
    /// The lease the writes are fenced with.
    pub lease: Lease,
    /// COMMITTING or ABORTING.
    pub status: Status,
    /// Unfinished rounds before this one.
    pub attempts: i64,
    /// Whether the transaction was already flagged.
    pub needs_attention: bool,
    /// When it began (epoch ms, the database's clock), for its duration once final.
    pub created_at_ms: i64,
}

/// The TCC rules. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Tcc {
    ctx: Context,
}

impl Tcc {
    /// TCC on `ctx`.
    pub fn new(ctx: Context) -> Tcc {
        Tcc { ctx }
    }

    /// Starts a TCC transaction with its first branches (possibly none), begun by the
    /// authenticated caller `by`, or returns the one that already has this gid, with its
    /// branches.
    pub async fn begin(
        &self,
        gid: &str,
        timeout_ms: u64,
        labels: &HashMap<String, String>,
        branches: &[NewBranch<'_>],
        by: Option<&str>,
    ) -> Result<Begun> {
        let chosen = !gid.is_empty();
        if chosen {
            validate::gid(gid)?;
        }
        validate::timeout(timeout_ms)?;
        validate::labels(labels)?;
        let max = self.ctx.settings().limits.max_branches;
        if branches.len() > max as usize {
            return Err(Error::Invalid(Invalid(format!(
                "{} branches given; at most {max} allowed",
                branches.len()
            ))));
        }
        // Admitted after the checks that need nothing but the request, before any that
        // reads the database, so that a refusal under load costs no query. A repeated Begin
        // of an existing gid gives its place back below.
        let ticket = self.ctx.admit()?;
        let gid = if chosen {
            self.ctx.refuse_retired(gid).await?;
            gid.to_owned()
        } else {
            id::new_gid()
        };
        let mut endpoints = Vec::with_capacity(branches.len());
        for branch in branches {
            endpoints.push(
                self.check_branch(branch.participant, branch.action, branch.payload)
                    .await?,
            );
        }
        let labels: BTreeMap<String, String> =
            labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let (tx, created) = self
            .ctx
            .store()
            .begin(
                &gid,
                Mode::Tcc,
                Status::Trying,
                timeout_ms as i64,
                Origin {
                    labels: &labels,
                    traceparent: trace::traceparent(&Span::current()).as_deref(),
                    began_by: by,
                },
                branches,
            )
            .await
            .map_err(|error| self.ctx.start_failed(error))?;
        if created {
            ticket.keep();
        }
        if tx.mode != Mode::Tcc {
            return Err(Error::FailedPrecondition(format!(
                "gid {gid} belongs to a saga, not a TCC transaction"
            )));
        }
        let registered = if created {
            info!(gid = %tx.gid, deadline = tx.deadline, branches = branches.len(), "begun");
            self.ctx.metrics().begun(Mode::Tcc);
            endpoints
                .into_iter()
                .zip(1..)
                .map(|(endpoint, branch_id)| Registered {
                    branch_id,
                    endpoint,
                })
                .collect()
        } else {
            let stored = self.ctx.store().branches(&gid).await?;
            // A repeated Begin pairs its branches with the stored ones by position; the
            // initiator then sends Try with its own payloads, so they must be the same.
            let same = branches.len() <= stored.len()
                && branches.iter().zip(&stored).all(|(given, stored)| {
                    given.participant == stored.participant
                        && given.action == stored.action
                        && given.payload == stored.payload.as_ref()
                });
            if !same {
                return Err(Error::FailedPrecondition(format!(
                    "{gid} already exists with other branches than this Begin gives"
                )));
            }
            let mut registered = Vec::new();
            for branch in stored {
                let endpoint = self
                    .ctx
                    .participants()
                    .endpoint(&branch.participant)
                    .await?
                    .unwrap_or_default();
                registered.push(Registered {
                    branch_id: branch.branch_id,
                    endpoint,
                });
            }
            registered
        };
        Ok(Begun {
            tx,
            created,
            branches: registered,
        })
    }

    /// Validates a branch and resolves its participant; returns the endpoint.
    async fn check_branch(
        &self,
        participant: &str,
        action: &str,
        payload: &[u8],
    ) -> Result<String> {
        validate::participant(participant)?;
        validate::action(action)?;
        validate::payload(payload, self.ctx.settings().limits.max_payload)?;
        self.ctx
            .participants()
            .endpoint(participant)
            .await?
            .ok_or_else(|| Error::NotFound(format!("unknown participant {participant:?}")))
    }

    /// Adds a branch to a TRYING transaction before its deadline.
    pub async fn register_branch(
        &self,
        gid: &str,
        participant: &str,
        action: &str,
        payload: &[u8],
    ) -> Result<Registered> {
        validate::gid(gid)?;
        let endpoint = self.check_branch(participant, action, payload).await?;
        let max = i64::from(self.ctx.settings().limits.max_branches);
        match self
            .ctx
            .store()
            .register_branch(gid, participant, action, payload, max)
            .await?
        {
            Ok(branch_id) => Ok(Registered {
                branch_id,
                endpoint,
            }),
            Err(RegisterRefusal::NotFound) => Err(not_found(gid)),
            Err(RegisterRefusal::TooManyBranches(n)) => Err(Error::FailedPrecondition(format!(
                "{gid} already has {n} branches; at most {max} allowed"
            ))),
            Err(RegisterRefusal::State(tx)) if tx.status == Status::Trying => {
                Err(Error::FailedPrecondition(format!(
                    "{gid} passed its deadline; no more branches can be registered"
                )))
            }
            Err(RegisterRefusal::State(tx)) => Err(Error::FailedPrecondition(format!(
                "{gid} is {}; branches can only be registered while TRYING",
                tx.status
            ))),
        }
    }

    /// Decides commit and drives Confirm, waiting up to `wait` for it to finish. Returns
    /// the status reached; `by` is recorded as who decided. A repeated Commit of a
    /// committing or committed transaction answers its current status.
    pub async fn commit(&self, gid: &str, wait_ms: u64, by: Option<&str>) -> Result<Status> {
        validate::gid(gid)?;
        let wait = validate::wait(wait_ms)?;
        let refusal = match self
            .ctx
            .store()
            .decide_commit(gid, self.ctx.instance(), self.ctx.lease_ms(), by)
            .await?
        {
            Ok(decided) => {
                info!(%gid, "commit decided");
                return Ok(self.drive_decided(decided, Status::Committing, wait).await);
            }
            Err(refusal) => refusal,
        };
        let tx = match refusal {
            Refusal::NotFound => return Err(not_found(gid)),
            // Whatever its status: a finished saga was not committed by a Commit either.
            Refusal::State(tx) if tx.mode == Mode::Saga => {
                return Err(Error::FailedPrecondition(format!(
                    "{gid} is a saga; sagas are not committed by Commit"
                )));
            }
            Refusal::State(tx) if tx.mode == Mode::Message => {
                return Err(Error::FailedPrecondition(format!(
                    "{gid} is a message; messages are submitted with Submit, not Commit"
                )));
            }
            Refusal::State(tx) => tx,
        };
        match tx.status {
            Status::Committing | Status::Committed => Ok(tx.status),
            Status::Aborting | Status::Aborted => Err(Error::FailedPrecondition(format!(
                "{gid} is {}: it was aborted ({})",
                tx.status, tx.reason
            ))),
            Status::Trying => {
                // The deadline passed: the transaction aborts, and this Commit says so.
                self.abort(gid, "deadline passed before commit", 0, Some(DEADLINE))
                    .await?;
                Err(Error::FailedPrecondition(format!(
                    "{gid} passed its deadline before Commit; it is being aborted"
                )))
            }
            Status::Running | Status::Compensating | Status::Prepared => Err(
                Error::FailedPrecondition(format!("{gid} is {}: not a TCC transaction", tx.status)),
            ),
        }
    }

    /// Decides abort and drives Cancel, waiting up to `wait` for it to finish. Returns the
    /// status reached; `by` is recorded as who decided. A repeated Abort of an aborting or
    /// aborted transaction answers its current status.
    pub async fn abort(
        &self,
        gid: &str,
        reason: &str,
        wait_ms: u64,
        by: Option<&str>,
    ) -> Result<Status> {
        validate::gid(gid)?;
        validate::text("reason", reason)?;
        let wait = validate::wait(wait_ms)?;
        match self
            .ctx
            .store()
            .decide_abort(gid, self.ctx.instance(), self.ctx.lease_ms(), reason, by)
            .await?
        {
            Ok(decided) => {
                info!(%gid, reason, "abort decided");
                Ok(self.drive_decided(decided, Status::Aborting, wait).await)
            }
            Err(Refusal::NotFound) => Err(not_found(gid)),
            Err(Refusal::State(tx)) if tx.mode == Mode::Saga => Err(Error::FailedPrecondition(
                format!("{gid} is a saga; sagas are not aborted by Abort"),
            )),
            Err(Refusal::State(tx)) if tx.mode == Mode::Message => {
                message::abort(&self.ctx, &tx, reason, by).await
            }
            Err(Refusal::State(tx)) => match tx.status {
                Status::Aborting | Status::Aborted => Ok(tx.status),
                Status::Committing | Status::Committed => Err(Error::FailedPrecondition(format!(
                    "{gid} is {}: commit was already decided",
                    tx.status
                ))),
                Status::Trying => Err(Error::FailedPrecondition(format!(
                    "{gid} changed while aborting; try again"
                ))),
                Status::Running | Status::Compensating | Status::Prepared => {
                    Err(Error::FailedPrecondition(format!(
                        "{gid} is {}: not a TCC transaction",
                        tx.status
                    )))
                }
            },
        }
    }

    /// Runs the first round of phase two right after a decision, in its own task so that
    /// it completes even if the caller goes away, and waits for it up to `wait`.
    async fn drive_decided(&self, decided: Decided, status: Status, wait: Duration) -> Status {
        let tcc = self.clone();
        // Phase two belongs to the trace the transaction began in, whoever committed it; and
        // it is not a child of this request's span, which would then stay open, and the
        // request look as long, until the round ends.
        let span = info_span!(parent: None, "phase_two", gid = %decided.lease.gid);
        trace::continue_stored(&span, decided.traceparent.as_deref());
        let work = Work {
            lease: decided.lease,
            status,
            attempts: 0,
            needs_attention: false,
            created_at_ms: decided.created_at_ms,
        };
        let round =
            tokio::spawn(async move { tcc.round(work, decided.branches).await }.instrument(span));
        match tokio::time::timeout(wait, round).await {
            Ok(Ok(Ok(RoundResult::Finished(done)))) => done,
            _ => status,
        }
    }

    /// One round of phase two on a transaction this instance holds: calls every pending
    /// branch concurrently and records the outcome.
    pub async fn drive(&self, work: Work) -> Result<RoundResult> {
        let branches = self.ctx.store().branches(&work.lease.gid).await?;
        self.round(work, branches).await
    }

    /// [`Tcc::drive`] with the branches already read (a decision reads them).
    async fn round(&self, work: Work, branches: Vec<Branch>) -> Result<RoundResult> {
        let (op, final_status, done) = match work.status {
            Status::Committing => (Op::Confirm, Status::Committed, BranchStatus::Confirmed),
            Status::Aborting => (Op::Cancel, Status::Aborted, BranchStatus::Cancelled),
            other => {
                return Err(Error::FailedPrecondition(format!(
                    "{} is {other}; there is no phase two to drive",
                    work.lease.gid
                )));
            }
        };
        let store = self.ctx.store();
        let retry = &self.ctx.settings().retry;
        let attempts = u32::try_from(work.attempts).unwrap_or(u32::MAX);
        let delay_ms = retry.delay(attempts).as_millis() as i64;
        let calls = branches
            .iter()
            .filter(|b| b.status == BranchStatus::Pending)
            .map(|b| async move {
                let answer = self.ctx.participants().call(op, b, b.payload.clone()).await;
                let broken = matches!(answer, Answer::Broken(_));
                let outcome = match answer {
                    Answer::Ok => BranchOutcome::Done(done),
                    // Confirm and Cancel cannot be refused (`Op::may_refuse`).
                    Answer::Refused(error) | Answer::Broken(error) | Answer::Failed(error) => {
                        warn!(gid = %b.gid, branch = b.branch_id, participant = %b.participant, %error, "phase-two call failed");
                        BranchOutcome::Failed {
                            error,
                            retry_in_ms: delay_ms,
                        }
                    }
                };
                ((b.branch_id, outcome), broken)
            });
        let (outcomes, broken): (Vec<_>, Vec<bool>) = join_all(calls).await.into_iter().unzip();
        let escalation = if broken.contains(&true) {
            Escalation::AT_ONCE
        } else {
            Escalation {
                after_attempts: i64::from(retry.attention_after_attempts),
                after_ms: retry.attention_after.as_millis() as i64,
            }
        };
        let seen = branches.len() as i64;
        let result = store
            .record_round(
                &work.lease,
                &outcomes,
                seen,
                final_status,
                delay_ms,
                escalation,
            )
            .await?;
        match &result {
            RoundResult::Finished(status) => {
                info!(gid = %work.lease.gid, %status, "finished");
                self.ctx.finished(Mode::Tcc, *status, work.created_at_ms);
            }
            RoundResult::Rescheduled {
                attempts,
                needs_attention,
            } => {
                if *needs_attention && !work.needs_attention {
                    warn!(gid = %work.lease.gid, attempts, "phase two failed for good or keeps failing; flagged needs_attention");
                }
            }
            RoundResult::LostLease => {
                warn!(gid = %work.lease.gid, "lease lost to another instance; round not recorded")
            }
            RoundResult::NotFinished => {
                warn!(gid = %work.lease.gid, "round done but not finished (lease lost, or a branch it did not see); the next claim resumes it")
            }
        }
        Ok(result)
    }

    /// Resumes a transaction claimed by the recovery loop: aborts it if it is TRYING past
    /// its deadline, and runs one round of its phase two if decided.
    pub async fn resume(&self, tx: GlobalTx) -> Result<()> {
        match tx.status {
            Status::Trying => {
                let decided = self
                    .ctx
                    .store()
                    .decide_abort(
                        &tx.gid,
                        self.ctx.instance(),
                        self.ctx.lease_ms(),
                        "deadline passed",
                        Some(DEADLINE),
                    )
                    .await?;
                // A refusal means it was committed or aborted by someone else meanwhile.
                if let Ok(decided) = decided {
                    info!(gid = %tx.gid, "deadline passed; abort decided");
                    self.round(
                        Work {
                            lease: decided.lease,
                            status: Status::Aborting,
                            attempts: 0,
                            needs_attention: false,
                            created_at_ms: decided.created_at_ms,
                        },
                        decided.branches,
                    )
                    .await?;
                }
            }
            Status::Committing | Status::Aborting => {
                let owner = tx.owner.clone().unwrap_or_default();
                self.drive(Work {
                    lease: Lease {
                        gid: tx.gid.clone(),
                        owner,
                        version: tx.version,
                    },
                    status: tx.status,
                    attempts: tx.attempts,
                    needs_attention: tx.needs_attention,
                    created_at_ms: tx.created_at,
                })
                .await?;
            }
            Status::Running | Status::Compensating | Status::Prepared => {
                return Err(Error::FailedPrecondition(format!(
                    "{} is {}, not a TCC status; TCC does not drive it",
                    tx.gid, tx.status
                )));
            }
            Status::Committed | Status::Aborted => {}
        }
        Ok(())
    }
}

fn not_found(gid: &str) -> Error {
    Error::NotFound(format!("no transaction {gid}"))
}
