//! Transactional messages (ARCHITECTURE.md, "State machines"):
//! `PREPARED --Submit | query: committed--> RUNNING --every step executed--> COMMITTED`,
//! `PREPARED --Abort | query: rolled back--> ABORTED`.
//!
//! A service stores its message with Prepare before its local transaction, which writes
//! the message's barrier row in the service's own database; it then submits. Once
//! submitted, the steps are delivered by the saga driver (`crate::saga`), forward only,
//! each until it succeeds. A message neither submitted nor aborted by its deadline is
//! claimed by the recovery loop like any due work and handed here, and the coordinator
//! asks the service (`QueryPrepared` at the message's query endpoint). The service answers
//! from its barrier table alone, and a "rolled back" answer first makes sure the local
//! transaction never commits, so the message is submitted if and only if it committed.
//! No answer is retried with the retry policy's delay and escalates like a round.
//!
//! The SQL lives in `store::message`; the wire conversions in `crate::grpc`.

use std::collections::HashMap;

use settle_telemetry::trace;
use tracing::{Span, error, info, warn};

use crate::{
    context::Context,
    error::{Error, Result},
    metrics::QueryResult,
    model::{GlobalTx, Mode, QUERY, Status},
    participants::Local,
    saga::{self, Submitted},
    store::{
        Escalation, Lease, Origin,
        message::{AnswerRecorded, Answered},
        saga::NewStep,
    },
    validate::{self, Invalid},
};

/// A message as a service prepares it, not yet validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Preparation {
    /// Client-chosen gid; empty: generated.
    pub gid: String,
    /// The steps, in order (no compensations).
    pub steps: Vec<NewStep>,
    /// When the service is asked if neither Submit nor Abort came.
    pub timeout_ms: u64,
    /// Free-form labels, visible to operators.
    pub labels: HashMap<String, String>,
    /// The service's `settle.v1.Participant` endpoint, which answers QueryPrepared.
    pub query_endpoint: String,
    /// The authenticated caller.
    pub by: Option<String>,
}

/// What a Prepare produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The message's gid.
    pub gid: String,
    /// When it will be queried (epoch ms, the database's clock).
    pub deadline: i64,
    /// PREPARED, or where an existing message with this gid stands.
    pub status: Status,
    /// False when the gid already existed and this Prepare returned it.
    pub created: bool,
}

/// A Submit, not yet validated: of a prepared message (no steps), or of one never
/// prepared (steps, timeout, labels).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Submission {
    /// The message's gid; empty only without Prepare (generated).
    pub gid: String,
    /// How long to wait for the steps before answering with the status reached.
    pub wait_ms: u64,
    /// Only without Prepare: the steps.
    pub steps: Vec<NewStep>,
    /// Only without Prepare: kept as the deadline.
    pub timeout_ms: u64,
    /// Only without Prepare: labels.
    pub labels: HashMap<String, String>,
    /// The authenticated caller.
    pub by: Option<String>,
}

/// Validates and stores a PREPARED message. A Prepare with the gid of an existing message
/// and the same steps returns it; other steps, or another mode, are refused.
pub async fn prepare(ctx: &Context, preparation: Preparation) -> Result<Prepared> {
    let Preparation {
        gid,
        steps,
        timeout_ms,
        labels,
        query_endpoint,
        by,
    } = preparation;
    let gid = ctx.start_gid(gid).await?;
    validate::timeout(timeout_ms)?;
    validate::labels(&labels)?;
    validate_query_endpoint(ctx, &query_endpoint).await?;
    saga::validate_steps(ctx, "message", &steps).await?;

    let labels = labels.into_iter().collect();
    let ticket = ctx.admit()?;
    let (tx, created) = ctx
        .store()
        .prepare_message(
            &gid,
            &steps,
            timeout_ms as i64,
            &query_endpoint,
            Origin {
                labels: &labels,
                traceparent: trace::traceparent(&Span::current()).as_deref(),
                began_by: by.as_deref(),
            },
        )
        .await
        .map_err(|error| ctx.start_failed(error))?;
    if created {
        ticket.keep();
        ctx.metrics().begun(Mode::Message);
        info!(%gid, steps = steps.len(), deadline = tx.deadline, "message prepared");
    } else {
        same_message(ctx, &tx, &steps).await?;
    }
    Ok(Prepared {
        gid,
        deadline: tx.deadline,
        status: tx.status,
        created,
    })
}

/// A query endpoint is the URL of the service's participant server, or the name of a
/// registered participant, looked up at each question (so a service that moved is found
/// where it registered last).
async fn validate_query_endpoint(ctx: &Context, query_endpoint: &str) -> Result<()> {
    if query_endpoint.is_empty() {
        return Err(Invalid(
            "query_endpoint is required: the coordinator asks it whether the local \
             transaction committed"
                .to_owned(),
        )
        .into());
    }
    if !query_endpoint.contains("://") {
        validate::participant(query_endpoint)?;
        if ctx.participants().endpoint(query_endpoint).await?.is_none() {
            return Err(Error::NotFound(format!(
                "query_endpoint names participant {query_endpoint:?}, which is not registered"
            )));
        }
        return Ok(());
    }
    validate::endpoint(query_endpoint)?;
    if query_endpoint.starts_with("https://") && !ctx.participants().calls_tls() {
        return Err(Error::FailedPrecondition(format!(
            "query_endpoint {query_endpoint} is https, and this coordinator has no CA to \
             verify it: start settled with --tls-ca"
        )));
    }
    Ok(())
}

/// Refuses a repeated Prepare or unprepared Submit whose gid holds something else.
async fn same_message(ctx: &Context, tx: &GlobalTx, steps: &[NewStep]) -> Result<()> {
    if tx.mode != Mode::Message {
        return Err(Error::FailedPrecondition(format!(
            "gid {} belongs to a {} transaction, not a message",
            tx.gid, tx.mode
        )));
    }
    let stored = ctx.store().saga_steps(&tx.gid).await?;
    let same = stored.len() == steps.len()
        && stored.iter().zip(steps).all(|(s, n)| {
            s.branch.participant == n.participant
                && s.branch.action == n.action
                && s.branch.payload == n.payload
                && s.group == n.group
        });
    if !same {
        return Err(Error::FailedPrecondition(format!(
            "message {} already exists with other steps",
            tx.gid
        )));
    }
    Ok(())
}

/// Submits a prepared message, or stores and submits one given with its steps, and
/// delivers its steps, answering with the status reached within `wait_ms`. A repeated
/// Submit answers the current status.
pub async fn submit(ctx: &Context, submission: Submission) -> Result<Submitted> {
    if !submission.steps.is_empty() {
        return submit_unprepared(ctx, submission).await;
    }
    let wait = validate::wait(submission.wait_ms)?;
    if submission.timeout_ms != 0 || !submission.labels.is_empty() {
        return Err(Invalid(
            "timeout_ms and labels go with steps, to submit without Prepare; a prepared \
             message has its own"
                .to_owned(),
        )
        .into());
    }
    let gid = submission.gid;
    validate::gid(&gid)?;
    let by = submission.by.as_deref();
    if let Some(tx) = ctx
        .store()
        .submit_message(&gid, ctx.instance(), ctx.lease_ms(), by)
        .await?
    {
        info!(%gid, "message submitted");
        let status = saga::start(ctx, &tx, wait).await;
        return Ok(Submitted {
            gid,
            status,
            created: false,
        });
    }
    let tx = ctx
        .store()
        .get(&gid)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no message {gid}")))?;
    if tx.mode != Mode::Message {
        return Err(Error::FailedPrecondition(format!(
            "{gid} is a {} transaction, not a message",
            tx.mode
        )));
    }
    match tx.status {
        Status::Running | Status::Committed => Ok(Submitted {
            gid,
            status: tx.status,
            created: false,
        }),
        Status::Aborted => Err(Error::FailedPrecondition(format!(
            "message {gid} was aborted ({}); it cannot be submitted",
            tx.reason
        ))),
        _ => Err(Error::FailedPrecondition(format!(
            "message {gid} changed while submitting; try again"
        ))),
    }
}

async fn submit_unprepared(ctx: &Context, submission: Submission) -> Result<Submitted> {
    let Submission {
        gid,
        wait_ms,
        steps,
        timeout_ms,
        labels,
        by,
    } = submission;
    let wait = validate::wait(wait_ms)?;
    let gid = ctx.start_gid(gid).await?;
    validate::timeout(timeout_ms)?;
    validate::labels(&labels)?;
    saga::validate_steps(ctx, "message", &steps).await?;
    let labels = labels.into_iter().collect();
    let ticket = ctx.admit()?;
    let (tx, created) = ctx
        .store()
        .submit_message_unprepared(
            &gid,
            &steps,
            timeout_ms as i64,
            Origin {
                labels: &labels,
                traceparent: trace::traceparent(&Span::current()).as_deref(),
                began_by: by.as_deref(),
            },
            ctx.instance(),
            ctx.lease_ms(),
        )
        .await
        .map_err(|error| ctx.start_failed(error))?;
    if !created {
        same_message(ctx, &tx, &steps).await?;
        if tx.status == Status::Prepared {
            return Err(Error::FailedPrecondition(format!(
                "message {gid} is prepared; submit it without steps"
            )));
        }
        return Ok(Submitted {
            gid,
            status: tx.status,
            created: false,
        });
    }
    ticket.keep();
    ctx.metrics().begun(Mode::Message);
    info!(%gid, steps = steps.len(), "message submitted without Prepare");
    let status = saga::start(ctx, &tx, wait).await;
    Ok(Submitted {
        gid,
        status,
        created: true,
    })
}

/// Aborts a PREPARED message: its service knows the local transaction will never commit.
/// A repeated Abort answers ABORTED; a submitted message is not aborted.
pub async fn abort(ctx: &Context, tx: &GlobalTx, reason: &str, by: Option<&str>) -> Result<Status> {
    let gid = &tx.gid;
    if tx.status == Status::Prepared && ctx.store().abort_message(gid, reason, by).await? {
        info!(%gid, reason, "message aborted");
        ctx.finished(Mode::Message, Status::Aborted, tx.created_at);
        return Ok(Status::Aborted);
    }
    let now = ctx.store().get(gid).await?.unwrap_or_else(|| tx.clone());
    match now.status {
        Status::Aborted => Ok(Status::Aborted),
        status => Err(Error::FailedPrecondition(format!(
            "message {gid} is {status}: it was submitted, and its steps are delivered"
        ))),
    }
}

/// Goes on with a message that came back to this instance with its lease: asks the
/// service about a PREPARED one, delivers the steps of a RUNNING one.
pub async fn resume(ctx: &Context, tx: GlobalTx) -> Result<()> {
    match tx.status {
        Status::Prepared => ask(ctx, tx).await,
        Status::Running => saga::resume(ctx, tx).await.map(|_| ()),
        Status::Committed | Status::Aborted => Ok(()),
        status => Err(Error::FailedPrecondition(format!(
            "{} is {status}, not a message's status",
            tx.gid
        ))),
    }
}

/// Asks the service whether the local transaction committed, and records what that
/// decides under the lease: submit (and deliver), abort, or ask again later.
async fn ask(ctx: &Context, tx: GlobalTx) -> Result<()> {
    let lease = Lease {
        gid: tx.gid.clone(),
        owner: tx.owner.clone().unwrap_or_default(),
        version: tx.version,
    };
    let gid = &tx.gid;
    let local = match ctx.store().query_endpoint(gid).await? {
        Some(url) if url.contains("://") => ctx.participants().query_prepared(&url, gid).await,
        Some(name) => match ctx.participants().endpoint(&name).await? {
            Some(url) => ctx.participants().query_prepared(&url, gid).await,
            None => {
                ctx.metrics().queried(QueryResult::Error);
                Local::Unknown(format!("query participant {name:?} is not registered"))
            }
        },
        None => {
            ctx.metrics().queried(QueryResult::Error);
            Local::Unknown("the message has no query endpoint".to_owned())
        }
    };
    let retry = &ctx.settings().retry;
    let answer = match local {
        Local::Committed => Answered::Committed,
        Local::RolledBack => Answered::RolledBack,
        Local::Unknown(error) => Answered::Unanswered {
            error,
            retry_in_ms: retry
                .delay(u32::try_from(tx.attempts).unwrap_or(u32::MAX))
                .as_millis() as i64,
            escalation: Escalation {
                after_attempts: i64::from(retry.attention_after_attempts),
                after_ms: retry.attention_after.as_millis() as i64,
            },
        },
    };
    let recorded = ctx
        .store()
        .record_answer(&lease, &answer, QUERY, ctx.lease_ms())
        .await?;
    let AnswerRecorded::Written {
        attempts,
        needs_attention,
    } = recorded
    else {
        let now = ctx.store().get(gid).await?;
        if answer == Answered::Committed
            && now.as_ref().is_some_and(|t| t.status == Status::Aborted)
        {
            // Only a caller that broke the rule (an Abort while the local transaction could
            // still commit) or a query endpoint on another database gets here.
            error!(%gid, "the service says the local transaction committed, but the message was aborted meanwhile: its steps will not be delivered");
        } else {
            info!(%gid, "message changed while its service was asked (submitted, aborted or claimed elsewhere)");
        }
        return Ok(());
    };
    match answer {
        Answered::Committed => {
            info!(%gid, "the local transaction committed; message submitted");
            let submitted = GlobalTx {
                status: Status::Running,
                ..tx
            };
            saga::resume(ctx, submitted).await.map(|_| ())
        }
        Answered::RolledBack => {
            info!(%gid, "the local transaction did not commit; message aborted");
            ctx.finished(Mode::Message, Status::Aborted, tx.created_at);
            Ok(())
        }
        Answered::Unanswered { error, .. } => {
            if needs_attention && !tx.needs_attention {
                warn!(%gid, attempts, %error, "the message's service keeps not answering; flagged needs_attention");
            } else {
                warn!(%gid, attempts, %error, "the message's service did not answer; asking again later");
            }
            Ok(())
        }
    }
}
