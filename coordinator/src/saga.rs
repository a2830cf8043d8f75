//! Saga mode (ARCHITECTURE.md, "State machines"):
//! `RUNNING --all Execute ok--> COMMITTED`,
//! `RUNNING --Execute refused / deadline--> COMPENSATING --all Compensate ok--> ABORTED`.
//!
//! This module validates a submitted saga, has the store persist it whole before anything is
//! sent, and drives it: Execute on each step in order, the steps of one parallel group
//! concurrently; on a refusal or a passed deadline, Compensate in reverse order, one group
//! at a time, on every step that executed or may have executed. Each group's outcome is
//! recorded in one database transaction under the owner/version lease; a transient failure
//! releases the saga with the retry policy's delay, and the recovery loop claims it again.
//! Compensation never gives up: it escalates to `needs_attention` like phase two of TCC.
//!
//! Transactional messages (`crate::message`) are driven here too, once submitted: forward
//! only, without a deadline, every refusal a failure.
//!
//! The SQL lives in `store::saga`, the wire conversions in `crate::grpc`, the calls in
//! `crate::participants`; claiming due sagas is the recovery loop's job, which hands them
//! here through [`crate::engine::Engine::resume`]. TCC mode is its peer, `crate::tcc`, on
//! the same [`Context`].

use std::{collections::HashMap, collections::HashSet, ops::Range};

use bytes::Bytes;
use futures::future::join_all;
use settle_telemetry::trace;
use tracing::{Instrument, Span, info, info_span, warn};

use crate::{
    context::Context,
    error::{Error, Result},
    model::{BranchStatus, GlobalTx, Mode, Status},
    participants::{Answer, Op},
    store::{
        Escalation, Lease, Origin,
        saga::{NewStep, Recorded, Step, StepOutcome, Then},
    },
    validate::{self, Invalid},
};

/// A saga as an initiator submits it, not yet validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Submission {
    /// Client-chosen gid (makes the submission idempotent); empty: generated.
    pub gid: String,
    /// The steps, in order.
    pub steps: Vec<NewStep>,
    /// Time after which steps not yet executed are compensated instead.
    pub timeout_ms: u64,
    /// Free-form labels, visible to operators.
    pub labels: HashMap<String, String>,
    /// How long to wait for the saga to finish before answering with the status reached.
    pub wait_ms: u64,
    /// The authenticated caller submitting it.
    pub by: Option<String>,
}

/// What a submission produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The saga's gid.
    pub gid: String,
    /// The status reached within the wait (or the existing saga's status).
    pub status: Status,
    /// False when the gid already existed and this submission returned it.
    pub created: bool,
}

/// How a run of the driver ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Driven {
    /// The saga reached COMMITTED or ABORTED.
    Finished(Status),
    /// A call failed transiently; the saga was released for a later attempt.
    Rescheduled {
        /// RUNNING or COMPENSATING.
        status: Status,
        /// Unfinished rounds so far.
        attempts: i64,
        /// The escalation flag after this round.
        needs_attention: bool,
    },
    /// Another instance owns the saga now; this run stopped without writing.
    LostLease,
}

/// Validates and persists a saga, then drives it in its own task, answering with the status
/// reached within `wait_ms` — or earlier, when a call fails transiently and the saga is
/// left to the recovery loop. A submission with the gid of an existing saga returns that
/// saga's status and changes nothing.
pub async fn submit(ctx: &Context, submission: Submission) -> Result<Submitted> {
    let Submission {
        gid,
        steps,
        timeout_ms,
        labels,
        wait_ms,
        by,
    } = submission;
    let gid = ctx.start_gid(gid).await?;
    validate::timeout(timeout_ms)?;
    validate::labels(&labels)?;
    let wait = validate::wait(wait_ms)?;
    validate_steps(ctx, "saga", &steps).await?;

    let lease_ms = ctx.lease_ms();
    let labels = labels.into_iter().collect();
    // A repeated Submit of an existing gid gives its place back below.
    let ticket = ctx.admit()?;
    let (tx, created) = ctx
        .store()
        .submit_saga(
            &gid,
            &steps,
            timeout_ms as i64,
            Origin {
                labels: &labels,
                traceparent: trace::traceparent(&Span::current()).as_deref(),
                began_by: by.as_deref(),
            },
            ctx.instance(),
            lease_ms,
        )
        .await
        .map_err(|error| ctx.start_failed(error))?;
    if created {
        ticket.keep();
    }
    if tx.mode != Mode::Saga {
        return Err(Error::FailedPrecondition(format!(
            "gid {gid} belongs to a {} transaction, not a saga",
            tx.mode
        )));
    }
    if !created {
        return Ok(Submitted {
            gid,
            status: tx.status,
            created: false,
        });
    }
    info!(%gid, steps = steps.len(), deadline = tx.deadline, "saga submitted");
    ctx.metrics().begun(Mode::Saga);
    let status = start(ctx, &tx, wait).await;
    Ok(Submitted {
        gid,
        status,
        created: true,
    })
}

/// Drives a RUNNING saga or message `tx`, just leased to this instance, in its own task
/// so that it completes even if the caller goes away, and answers with the status reached
/// within `wait`: the final one, the one it was released in after a transient failure,
/// or the stored one when it is still running.
pub(crate) async fn start(ctx: &Context, tx: &GlobalTx, wait: std::time::Duration) -> Status {
    let lease = Lease {
        gid: tx.gid.clone(),
        owner: ctx.instance().to_owned(),
        version: tx.version,
    };
    let driver = ctx.clone();
    // In the trace of the submission, but not a child of its request span, which would
    // stay open until the saga ends.
    let span = match tx.mode {
        Mode::Message => info_span!(parent: None, "message", gid = %tx.gid),
        _ => info_span!(parent: None, "saga", gid = %tx.gid),
    };
    trace::continue_stored(&span, tx.traceparent.as_deref());
    let (mode, flagged, begun) = (tx.mode, tx.needs_attention, tx.created_at);
    let run = tokio::spawn(
        async move { run_logged(&driver, lease, mode, flagged, begun).await }.instrument(span),
    );
    match tokio::time::timeout(wait, run).await {
        Ok(Ok(Some(Driven::Finished(status)))) => status,
        Ok(Ok(Some(Driven::Rescheduled { status, .. }))) => status,
        // Still running, or the run stopped early: it is stored and recovery will go on
        // with it, so the answer only reports where it stands.
        _ => match ctx.store().get(&tx.gid).await {
            Ok(Some(now)) => now.status,
            _ => Status::Running,
        },
    }
}

/// Checks the steps of a saga or message (`what`, for the error): their count, names,
/// actions and payloads, and that every participant is registered.
pub(crate) async fn validate_steps(ctx: &Context, what: &str, steps: &[NewStep]) -> Result<()> {
    let limits = ctx.settings().limits;
    if steps.is_empty() || steps.len() > limits.max_branches as usize {
        return Err(Invalid(format!(
            "a {what} has 1 to {} steps; {} given",
            limits.max_branches,
            steps.len()
        ))
        .into());
    }
    let in_step = |n: usize, e: Invalid| Invalid(format!("step {n}: {}", e.0));
    for (n, step) in (1..).zip(steps) {
        validate::participant(&step.participant).map_err(|e| in_step(n, e))?;
        validate::action(&step.action).map_err(|e| in_step(n, e))?;
        validate::payload(&step.payload, limits.max_payload).map_err(|e| in_step(n, e))?;
        if let Some(compensation) = &step.compensation {
            validate::payload(compensation, limits.max_payload)
                .map_err(|e| in_step(n, Invalid(format!("compensation {}", e.0))))?;
        }
    }
    let mut checked = HashSet::new();
    for step in steps {
        if checked.insert(step.participant.as_str())
            && ctx
                .participants()
                .endpoint(&step.participant)
                .await?
                .is_none()
        {
            return Err(Error::NotFound(format!(
                "unknown participant {:?}",
                step.participant
            )));
        }
    }
    Ok(())
}

/// Drives a saga (RUNNING or COMPENSATING) or a message (RUNNING) that came back to this
/// instance with its lease until it finishes, a call fails transiently, or the lease is
/// lost.
pub async fn resume(ctx: &Context, tx: GlobalTx) -> Result<Driven> {
    let lease = Lease {
        gid: tx.gid,
        owner: tx.owner.unwrap_or_default(),
        version: tx.version,
    };
    run(ctx, lease, tx.mode, tx.needs_attention, tx.created_at).await
}

async fn run_logged(
    ctx: &Context,
    lease: Lease,
    mode: Mode,
    flagged: bool,
    begun: i64,
) -> Option<Driven> {
    match run(ctx, lease, mode, flagged, begun).await {
        Ok(driven) => Some(driven),
        Err(error) => {
            warn!(%error, "driving the steps failed; the recovery loop resumes them");
            None
        }
    }
}

/// Runs group after group while this instance holds the lease. `flagged` is whether the
/// transaction was already marked `needs_attention`, so that escalation is logged once;
/// `begun` is when it was submitted (epoch ms), for its duration once final.
///
/// A message (`mode`) only goes forward: its deadline bounds nothing once it is submitted,
/// and a step that refuses or fails for good is retried like any failure and flags it at
/// once, since its local transaction committed and there is nothing to compensate.
async fn run(ctx: &Context, lease: Lease, mode: Mode, flagged: bool, begun: i64) -> Result<Driven> {
    let message = mode == Mode::Message;
    let store = ctx.store();
    let lease_ms = ctx.lease_ms();
    let retry = &ctx.settings().retry;
    let escalation = Escalation {
        after_attempts: i64::from(retry.attention_after_attempts),
        after_ms: retry.attention_after.as_millis() as i64,
    };
    let Some(mut renewed) = store.renew_saga(&lease, lease_ms).await? else {
        warn!(gid = %lease.gid, "saga lease lost before driving it");
        return Ok(Driven::LostLease);
    };
    loop {
        let steps = store.saga_steps(&lease.gid).await?;
        let (outcomes, then) = match plan(renewed.status, &steps) {
            Plan::Commit => (Vec::new(), Then::Commit),
            Plan::Abort => (Vec::new(), Then::Abort),
            Plan::Execute { .. } if renewed.deadline_passed && !message => (
                Vec::new(),
                Then::Compensate {
                    reason: "deadline passed".to_owned(),
                },
            ),
            Plan::Execute { group, last } => {
                let (outcomes, broken) = call_group(ctx, Op::Execute, !message, &group).await;
                let escalation = if broken && message {
                    Escalation::AT_ONCE
                } else {
                    escalation
                };
                let then = after_execute(&group, &outcomes, last, escalation);
                (outcomes, then)
            }
            Plan::Compensate { group, last } => {
                let (outcomes, broken) = call_group(ctx, Op::Compensate, false, &group).await;
                let escalation = if broken {
                    Escalation::AT_ONCE
                } else {
                    escalation
                };
                let then = after_compensate(&outcomes, last, escalation);
                (outcomes, then)
            }
        };
        match store
            .record_saga_group(&lease, &outcomes, &then, lease_ms)
            .await?
        {
            Recorded::Holding(next) => {
                if let Then::Compensate { reason } = &then {
                    info!(gid = %lease.gid, reason, "compensation decided");
                }
                renewed = next;
            }
            Recorded::Finished(status) => {
                info!(gid = %lease.gid, %status, %mode, "finished");
                ctx.finished(mode, status, begun);
                return Ok(Driven::Finished(status));
            }
            Recorded::Rescheduled {
                status,
                attempts,
                needs_attention,
            } => {
                if needs_attention && !flagged {
                    warn!(gid = %lease.gid, attempts, %mode, "a step failed for good or keeps failing; flagged needs_attention");
                }
                return Ok(Driven::Rescheduled {
                    status,
                    attempts,
                    needs_attention,
                });
            }
            Recorded::LostLease => {
                warn!(gid = %lease.gid, "saga lease lost to another instance; group not recorded");
                return Ok(Driven::LostLease);
            }
        }
    }
}

/// What a forward group's outcomes lead to: the first refusal starts compensation (a step
/// of the group that failed transiently may have executed, and is compensated with it);
/// otherwise a failure is retried; otherwise the saga goes on, or commits after the last.
fn after_execute(
    group: &[&Step],
    outcomes: &[(u32, StepOutcome)],
    last: bool,
    escalation: Escalation,
) -> Then {
    let refusal = outcomes.iter().find_map(|(id, outcome)| match outcome {
        StepOutcome::Refused(reason) => Some((*id, reason)),
        _ => None,
    });
    if let Some((id, reason)) = refusal {
        let participant = group
            .iter()
            .find(|s| s.branch.branch_id == id)
            .map_or("", |s| s.branch.participant.as_str());
        return Then::Compensate {
            reason: format!("step {id} ({participant}) refused: {reason}"),
        };
    }
    match retry_in(outcomes) {
        Some(retry_in_ms) => Then::Retry {
            retry_in_ms,
            escalation,
        },
        None if last => Then::Commit,
        None => Then::Continue,
    }
}

/// What a compensation group's outcomes lead to: a failure is retried; otherwise the
/// previous group is compensated, or the saga aborts after the first.
fn after_compensate(outcomes: &[(u32, StepOutcome)], last: bool, escalation: Escalation) -> Then {
    match retry_in(outcomes) {
        Some(retry_in_ms) => Then::Retry {
            retry_in_ms,
            escalation,
        },
        None if last => Then::Abort,
        None => Then::Continue,
    }
}

/// The delay before the group is tried again: the longest of its failed steps'.
fn retry_in(outcomes: &[(u32, StepOutcome)]) -> Option<i64> {
    outcomes
        .iter()
        .filter_map(|(_, outcome)| match outcome {
            StepOutcome::Failed { retry_in_ms, .. } => Some(*retry_in_ms),
            _ => None,
        })
        .max()
}

/// The next thing to do with a saga, from its status and its steps alone.
#[derive(Debug)]
enum Plan<'a> {
    /// Execute these steps (one group) concurrently; `last` when no group follows.
    Execute { group: Vec<&'a Step>, last: bool },
    /// Compensate these steps (one group) concurrently; `last` when no earlier group
    /// needs compensation.
    Compensate { group: Vec<&'a Step>, last: bool },
    /// Every step executed.
    Commit,
    /// Every step that may have executed is compensated.
    Abort,
}

/// Plans a RUNNING saga forward and any other (the store hands out only COMPENSATING
/// besides) backward.
fn plan(status: Status, steps: &[Step]) -> Plan<'_> {
    let groups = groups(steps);
    let done = |s: &Step| {
        matches!(
            s.branch.status,
            BranchStatus::Executed | BranchStatus::Resolved
        )
    };
    if status == Status::Running {
        let Some(next) = groups
            .iter()
            .position(|g| !steps[g.clone()].iter().all(done))
        else {
            return Plan::Commit;
        };
        let last = groups[next + 1..]
            .iter()
            .all(|g| steps[g.clone()].iter().all(done));
        let group = steps[groups[next].clone()]
            .iter()
            .filter(|s| s.branch.status == BranchStatus::Pending)
            .collect();
        return Plan::Execute { group, last };
    }
    // Forward progress stops at the first group with a pending step, the frontier: its
    // steps may have been sent (a call can succeed after it timed out, or the coordinator
    // can stop before recording an answer), later ones never were. Compensate on a step
    // whose Execute never ran is an empty compensation for the participant's barrier, and
    // it also blocks that Execute should it still arrive. The frontier counts only while
    // every group before it is still fully executed: compensation starts at the frontier
    // and walks back, so once an earlier group is compensated, the first group with a
    // pending step is one that was never sent.
    let frontier = groups
        .iter()
        .position(|g| {
            steps[g.clone()]
                .iter()
                .any(|s| s.branch.status == BranchStatus::Pending)
        })
        .filter(|&f| {
            groups[..f]
                .iter()
                .all(|g| steps[g.clone()].iter().all(done))
        });
    let owed = |index: usize, step: &Step| match step.branch.status {
        BranchStatus::Executed => true,
        BranchStatus::Pending => frontier == Some(index),
        _ => false,
    };
    let mut owing = groups
        .iter()
        .enumerate()
        .rev()
        .map(|(index, g)| {
            steps[g.clone()]
                .iter()
                .filter(|s| owed(index, s))
                .collect::<Vec<_>>()
        })
        .filter(|group| !group.is_empty());
    match owing.next() {
        Some(group) => Plan::Compensate {
            group,
            last: owing.next().is_none(),
        },
        None => Plan::Abort,
    }
}

/// The steps' groups, as index ranges in order: consecutive steps with the same non-zero
/// group form one, every other step is a group of its own.
fn groups(steps: &[Step]) -> Vec<Range<usize>> {
    let mut groups: Vec<Range<usize>> = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        match groups.last_mut() {
            Some(last) if step.group != 0 && steps[last.start].group == step.group => {
                last.end = index + 1;
            }
            _ => groups.push(index..index + 1),
        }
    }
    groups
}

/// Calls `op` (Execute or Compensate) on every step of a group concurrently and classifies
/// the answers; also says whether a participant answered that it failed for good. That
/// flags a compensating saga or a message at once; a running saga is bounded by its
/// deadline, after which it compensates, so it is not flagged. A refusal counts only when
/// the step may be `refused` (a saga's Execute); otherwise it fails for good.
async fn call_group(
    ctx: &Context,
    op: Op,
    refusable: bool,
    group: &[&Step],
) -> (Vec<(u32, StepOutcome)>, bool) {
    let retry = &ctx.settings().retry;
    let calls = group.iter().map(|step| async move {
        let branch = &step.branch;
        let payload: Bytes = match (op, &step.compensation) {
            (Op::Compensate, Some(compensation)) => compensation.clone(),
            _ => branch.payload.clone(),
        };
        let answer = match ctx.participants().call(op, branch, payload).await {
            Answer::Refused(reason) if !refusable => Answer::Broken(format!("refused: {reason}")),
            answer => answer,
        };
        let broken = matches!(answer, Answer::Broken(_));
        let outcome = match answer {
            Answer::Ok => StepOutcome::Done(match op {
                Op::Compensate => BranchStatus::Compensated,
                _ => BranchStatus::Executed,
            }),
            // Only a forward step may refuse (`Op::may_refuse`); compensation must not
            // give up, so its refusal comes back as a failure and is retried.
            Answer::Refused(reason) => {
                info!(gid = %branch.gid, step = branch.branch_id, participant = %branch.participant, %reason, "step refused");
                StepOutcome::Refused(reason)
            }
            Answer::Broken(error) | Answer::Failed(error) => {
                warn!(gid = %branch.gid, step = branch.branch_id, participant = %branch.participant, %error, "saga call failed");
                let attempts = u32::try_from(branch.attempts).unwrap_or(u32::MAX);
                StepOutcome::Failed {
                    error,
                    retry_in_ms: retry.delay(attempts).as_millis() as i64,
                }
            }
        };
        ((branch.branch_id, outcome), broken)
    });
    let (outcomes, broken): (Vec<_>, Vec<bool>) = join_all(calls).await.into_iter().unzip();
    (outcomes, broken.contains(&true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Branch;

    fn step(id: u32, group: u32, status: BranchStatus) -> Step {
        Step {
            branch: Branch {
                gid: "g".to_owned(),
                branch_id: id,
                participant: format!("p{id}"),
                action: String::new(),
                payload: Bytes::new(),
                status,
                attempts: 0,
                last_error: None,
                next_attempt_at: None,
            },
            compensation: None,
            group,
        }
    }

    fn ids(group: &[&Step]) -> Vec<u32> {
        group.iter().map(|s| s.branch.branch_id).collect()
    }

    fn planned(status: Status, steps: &[Step]) -> (&'static str, Vec<u32>, bool) {
        match plan(status, steps) {
            Plan::Execute { group, last } => ("execute", ids(&group), last),
            Plan::Compensate { group, last } => ("compensate", ids(&group), last),
            Plan::Commit => ("commit", vec![], true),
            Plan::Abort => ("abort", vec![], true),
        }
    }

    use BranchStatus::{Compensated as C, Executed as E, Pending as P};

    #[test]
    fn groups_join_consecutive_equal_non_zero_groups_only() {
        let steps = [
            step(1, 0, P),
            step(2, 0, P),
            step(3, 5, P),
            step(4, 5, P),
            step(5, 6, P),
            step(6, 5, P),
        ];
        assert_eq!(groups(&steps), vec![0..1, 1..2, 2..4, 4..5, 5..6]);
    }

    #[test]
    fn forward_runs_the_first_unfinished_group() {
        let steps = [step(1, 0, E), step(2, 3, E), step(3, 3, P), step(4, 0, P)];
        assert_eq!(
            planned(Status::Running, &steps),
            ("execute", vec![3], false)
        );
        let steps = [step(1, 0, E), step(2, 3, P), step(3, 3, P)];
        assert_eq!(
            planned(Status::Running, &steps),
            ("execute", vec![2, 3], true)
        );
        let steps = [step(1, 0, E), step(2, 0, E)];
        assert_eq!(planned(Status::Running, &steps).0, "commit");
    }

    #[test]
    fn compensation_starts_at_the_frontier_and_walks_back() {
        // Step 3 refused: it and the executed ones are owed, step 4 never ran.
        let mut steps = vec![step(1, 0, E), step(2, 0, E), step(3, 0, P), step(4, 0, P)];
        assert_eq!(
            planned(Status::Compensating, &steps),
            ("compensate", vec![3], false)
        );
        steps[2].branch.status = C;
        assert_eq!(
            planned(Status::Compensating, &steps),
            ("compensate", vec![2], false)
        );
        steps[1].branch.status = C;
        assert_eq!(
            planned(Status::Compensating, &steps),
            ("compensate", vec![1], true)
        );
        steps[0].branch.status = C;
        assert_eq!(planned(Status::Compensating, &steps).0, "abort");
    }

    #[test]
    fn a_parallel_frontier_is_compensated_whole() {
        // Step 3 executed, step 2 failed or refused: both are owed, together.
        let mut steps = vec![step(1, 0, E), step(2, 7, P), step(3, 7, E), step(4, 0, P)];
        assert_eq!(
            planned(Status::Compensating, &steps),
            ("compensate", vec![2, 3], false)
        );
        // Only step 2 went through: step 3 is compensated again, nothing else changes.
        steps[1].branch.status = C;
        assert_eq!(
            planned(Status::Compensating, &steps),
            ("compensate", vec![3], false)
        );
        steps[2].branch.status = C;
        assert_eq!(
            planned(Status::Compensating, &steps),
            ("compensate", vec![1], true)
        );
    }

    #[test]
    fn nothing_executed_means_only_the_first_group_is_owed() {
        let steps = [step(1, 0, P), step(2, 0, P)];
        assert_eq!(
            planned(Status::Compensating, &steps),
            ("compensate", vec![1], true)
        );
        let steps = [step(1, 0, C), step(2, 0, P)];
        assert_eq!(planned(Status::Compensating, &steps).0, "abort");
    }
}
