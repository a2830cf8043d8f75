//! What an operator may do to transactions, and the rules that keep it safe: list and show
//! them, run a round now, abort one still TRYING, resolve a branch fixed by hand, pause and
//! resume retries, and count. Each change is one compare-and-set in the store written
//! together with its audit row; a refusal is explained by reading the transaction back.
//! No operation turns a decided commit into an abort or the reverse: aborting is only
//! possible while TRYING, and a resolved branch counts as done in whichever direction the
//! transaction was decided.
//!
//! This module does not speak gRPC (that is `crate::grpc::admin`, which also checks the
//! token) and issues no SQL of its own (that is the store's); phase-two rounds it starts are
//! run by the engine.

use std::time::Duration;

use settle_telemetry::trace;
use tracing::{Instrument, info, info_span, warn};

use crate::{
    engine::Engine,
    error::{Error, Result},
    model::{Branch, BranchStatus, GlobalTx, Status},
    store::{self, AuditEntry, AuditRecord, Cursor, ListFilter},
    tcc::Work,
    validate::{self, Invalid},
};

/// The actor recorded when a request names none.
pub const DEFAULT_ACTOR: &str = "admin";
/// Longest actor name.
pub const MAX_ACTOR_LEN: usize = 64;
/// Page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page; larger requests are served this many.
pub const MAX_PAGE_SIZE: u32 = 500;

/// Audit actions, as stored.
const RETRY: &str = "retry";
const FORCE_ABORT: &str = "force-abort";
const RESOLVE: &str = "resolve";
const PAUSE: &str = "pause";
const RESUME: &str = "resume";

/// A listing request, as received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Any of these statuses; empty means every status.
    pub statuses: Vec<Status>,
    /// Only unfinished transactions flagged `needs_attention`.
    pub needs_attention: bool,
    /// Only transactions created at least this long ago.
    pub older_than_ms: u64,
    /// Only transactions with a branch on this participant; empty for any.
    pub participant: String,
    /// `key=value`; empty for any.
    pub label: String,
    /// 0 for the default.
    pub page_size: u32,
    /// Empty for the first page.
    pub page_token: String,
    /// Ascending creation order instead of descending.
    pub oldest_first: bool,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Transactions with their branches (payloads left out).
    pub transactions: Vec<(GlobalTx, Vec<Branch>)>,
    /// Where the next page starts; `None` on the last page.
    pub next_page_token: Option<String>,
    /// The database's clock when the page was read.
    pub now: i64,
}

/// Everything known about one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    /// The transaction.
    pub tx: GlobalTx,
    /// Its branches, payloads included.
    pub branches: Vec<Branch>,
    /// Its audit trail, oldest first.
    pub audit: Vec<AuditEntry>,
    /// The database's clock when it was read.
    pub now: i64,
}

/// A transaction after an operator request.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The transaction as it is now.
    pub tx: GlobalTx,
    /// Its branches, payloads left out.
    pub branches: Vec<Branch>,
    /// False when there was nothing to change (and nothing was audited).
    pub changed: bool,
    /// The database's clock when it was read back.
    pub now: i64,
}

/// Counts for an overview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Every status, in [`Status::ALL`] order, with its count.
    pub by_status: Vec<(Status, u64)>,
    /// Unfinished transactions flagged `needs_attention`.
    pub needs_attention: u64,
    /// Age of the oldest unfinished transaction in ms; 0 when none is unfinished.
    pub oldest_unfinished_age_ms: i64,
}

/// Operator requests, on top of the engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admin {
    engine: Engine,
}

/// Statuses in which a decision is being carried out (or, for a PREPARED message, is
/// asked for), so the transaction can be retried, paused or have a branch resolved.
fn in_phase_two(status: Status) -> bool {
    matches!(
        status,
        Status::Committing
            | Status::Aborting
            | Status::Running
            | Status::Compensating
            | Status::Prepared
    )
}

impl Admin {
    /// Operator requests against `engine`'s store, with rounds driven by `engine`.
    pub fn new(engine: Engine) -> Admin {
        Admin { engine }
    }

    fn store(&self) -> &store::Store {
        self.engine.store()
    }

    fn lease_ms(&self) -> i64 {
        self.engine.context().lease_ms()
    }

    /// One page of transactions matching `query`.
    pub async fn list(&self, query: &ListQuery) -> Result<Page> {
        let label = match query.label.split_once('=') {
            _ if query.label.is_empty() => None,
            Some((key, value)) => {
                validate::participant(key)
                    .map_err(|e| Invalid(format!("label key {key:?}: {}", e.0)))?;
                Some((key.to_owned(), value.to_owned()))
            }
            None => {
                return Err(Invalid(format!(
                    "label filter {:?} must look like key=value",
                    query.label
                ))
                .into());
            }
        };
        if !query.participant.is_empty() {
            validate::participant(&query.participant)?;
        }
        let filter = ListFilter {
            statuses: query.statuses.clone(),
            needs_attention: query.needs_attention,
            older_than_ms: i64::try_from(query.older_than_ms).unwrap_or(i64::MAX),
            participant: (!query.participant.is_empty()).then(|| query.participant.clone()),
            label,
            oldest_first: query.oldest_first,
        };
        let after = if query.page_token.is_empty() {
            None
        } else {
            Some(decode_token(&query.page_token, query.oldest_first)?)
        };
        let page_size = match query.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        } as usize;
        let store = self.store();
        let now = store.now().await?;
        // One extra row tells whether another page exists.
        let mut found = store.list(&filter, after.as_ref(), page_size + 1).await?;
        let next_page_token = if found.len() > page_size {
            found.truncate(page_size);
            found
                .last()
                .map(|tx| encode_token(tx.created_at, &tx.gid, query.oldest_first))
        } else {
            None
        };
        let mut transactions = Vec::with_capacity(found.len());
        for tx in found {
            let branches = store.branches_without_payload(&tx.gid).await?;
            transactions.push((tx, branches));
        }
        Ok(Page {
            transactions,
            next_page_token,
            now,
        })
    }

    /// A transaction with its branches and audit trail.
    pub async fn show(&self, gid: &str) -> Result<Shown> {
        validate::gid(gid)?;
        let store = self.store();
        let now = store.now().await?;
        let tx = store.get(gid).await?.ok_or_else(|| not_found(gid))?;
        let branches = store.branches(gid).await?;
        let audit = store.audit_trail(gid).await?;
        Ok(Shown {
            tx,
            branches,
            audit,
            now,
        })
    }

    /// Runs a phase-two round now on a decided, unpaused transaction, waiting up to
    /// `wait_ms` for it; the answer carries the status reached.
    pub async fn retry(&self, gid: &str, actor: &str, note: &str, wait_ms: u64) -> Result<Outcome> {
        validate::gid(gid)?;
        validate::text("note", note)?;
        let wait = validate::wait(wait_ms)?;
        let record = audit_record(actor, RETRY, note)?;
        let claimed = self
            .store()
            .claim_for_retry(
                gid,
                self.engine.context().instance(),
                self.lease_ms(),
                record,
            )
            .await?;
        let Some(tx) = claimed else {
            let tx = self.existing(gid).await?;
            return Err(Error::FailedPrecondition(match tx.status {
                Status::Trying => format!(
                    "{gid} is TRYING: nothing is decided, so there is no phase two to retry \
                     (abort decides abort now)"
                ),
                status if status.is_final() => format!("{gid} is {status}: nothing to retry"),
                _ if tx.paused => format!("{gid} is paused; resume it to retry"),
                _ => match tx.owner {
                    Some(owner) => format!(
                        "{gid} has a round running right now on {owner}; its result shows \
                         shortly"
                    ),
                    None => format!("{gid} changed while retrying; try again"),
                },
            }));
        };
        info!(%gid, actor, note, "admin: retry");
        // Like recovery's rounds: in the transaction's trace, not this request's span.
        let span = info_span!(parent: None, "retry", %gid);
        trace::continue_stored(&span, tx.traceparent.as_deref());
        let engine = self.engine.clone();
        let round = async move {
            if let Err(error) = engine.resume(tx).await {
                warn!(%error, "retry round failed; recovery will try again");
            }
        };
        self.run_for(wait, round.instrument(span)).await;
        self.outcome(gid, true).await
    }

    /// Decides abort on a TRYING transaction and drives Cancel, waiting up to `wait_ms`.
    /// An aborting or aborted transaction is answered unchanged.
    pub async fn force_abort(
        &self,
        gid: &str,
        actor: &str,
        note: &str,
        wait_ms: u64,
    ) -> Result<Outcome> {
        validate::gid(gid)?;
        validate::text("note", note)?;
        let wait = validate::wait(wait_ms)?;
        let record = audit_record(actor, FORCE_ABORT, note)?;
        let reason = if note.is_empty() {
            format!("force-aborted by {actor}")
        } else {
            format!("force-aborted by {actor}: {note}")
        };
        let decided = self
            .store()
            .force_abort(
                gid,
                self.engine.context().instance(),
                self.lease_ms(),
                &reason,
                record,
            )
            .await?;
        let Some(lease) = decided else {
            let tx = self.existing(gid).await?;
            return match tx.status {
                Status::Aborting | Status::Aborted => self.outcome(gid, false).await,
                Status::Committing | Status::Committed => Err(Error::FailedPrecondition(format!(
                    "{gid} is {}: commit was decided and cannot be turned into an abort",
                    tx.status
                ))),
                Status::Running | Status::Compensating => Err(Error::FailedPrecondition(format!(
                    "{gid} is a saga ({}); only a TCC transaction still TRYING can be \
                     force-aborted",
                    tx.status
                ))),
                Status::Prepared => Err(Error::FailedPrecondition(format!(
                    "{gid} is a PREPARED message: its local transaction may have committed, \
                     so only its service can say; retry asks it now"
                ))),
                Status::Trying => Err(Error::FailedPrecondition(format!(
                    "{gid} changed while aborting; try again"
                ))),
            };
        };
        info!(%gid, actor, note, "admin: abort decided");
        let tx = self.existing(gid).await?;
        let created_at_ms = tx.created_at;
        let span = info_span!(parent: None, "phase_two", %gid);
        trace::continue_stored(&span, tx.traceparent.as_deref());
        let engine = self.engine.clone();
        let round = async move {
            let work = Work {
                lease,
                status: Status::Aborting,
                attempts: 0,
                needs_attention: false,
                created_at_ms,
            };
            if let Err(error) = engine.tcc().drive(work).await {
                warn!(%error, "cancel round failed; recovery will try again");
            }
        };
        self.run_for(wait, round.instrument(span)).await;
        self.outcome(gid, true).await
    }

    /// Marks a branch RESOLVED after a manual fix — a PENDING branch of a transaction in
    /// phase two, or an EXECUTED step of a compensating saga whose Compensate keeps
    /// failing — and makes the transaction due, so that recovery finishes it once nothing
    /// is owed. Refused while a round is in flight (a live lease): the round's call and
    /// the manual fix must not both take effect.
    pub async fn resolve_branch(
        &self,
        gid: &str,
        branch_id: u32,
        actor: &str,
        note: &str,
    ) -> Result<Outcome> {
        validate::gid(gid)?;
        validate::text("note", note)?;
        if note.trim().is_empty() {
            return Err(
                Invalid("a note is required: say what was fixed by hand".to_owned()).into(),
            );
        }
        let branch = self
            .store()
            .branches_without_payload(gid)
            .await?
            .into_iter()
            .find(|b| b.branch_id == branch_id);
        let Some(branch) = branch else {
            self.existing(gid).await?;
            return Err(Error::NotFound(format!("{gid} has no branch {branch_id}")));
        };
        let audited = format!("branch {branch_id} ({}): {note}", branch.participant);
        let record = audit_record(actor, RESOLVE, &audited)?;
        if self.store().resolve_branch(gid, branch_id, record).await? {
            info!(%gid, branch_id, actor, note, "admin: branch resolved");
            return self.outcome(gid, true).await;
        }
        let tx = self.existing(gid).await?;
        // A PREPARED message's steps have not been sent: there is nothing to resolve yet.
        if !in_phase_two(tx.status) || tx.status == Status::Prepared {
            return Err(Error::FailedPrecondition(format!(
                "{gid} is {}: branches can be resolved only while a decision is carried out \
                 (COMMITTING, ABORTING, RUNNING, COMPENSATING)",
                tx.status
            )));
        }
        let current = self
            .store()
            .branches_without_payload(gid)
            .await?
            .into_iter()
            .find(|b| b.branch_id == branch_id)
            .map_or(BranchStatus::Pending, |b| b.status);
        if tx.owner.is_some() && matches!(current, BranchStatus::Pending | BranchStatus::Executed) {
            return Err(Error::FailedPrecondition(format!(
                "{gid} is being driven right now (owner {}); pause it first, or try again",
                tx.owner.as_deref().unwrap_or_default()
            )));
        }
        Err(Error::FailedPrecondition(format!(
            "branch {branch_id} of {gid} is {}: only a PENDING branch (or, while a saga \
             compensates, an EXECUTED one) can be resolved",
            current.as_str()
        )))
    }

    /// Stops retrying a transaction in phase two. A paused one is answered unchanged.
    pub async fn pause(&self, gid: &str, actor: &str, note: &str) -> Result<Outcome> {
        validate::gid(gid)?;
        validate::text("note", note)?;
        let record = audit_record(actor, PAUSE, note)?;
        if self.store().pause(gid, record).await?.is_some() {
            info!(%gid, actor, note, "admin: paused");
            return self.outcome(gid, true).await;
        }
        let tx = self.existing(gid).await?;
        if !in_phase_two(tx.status) {
            return Err(Error::FailedPrecondition(format!(
                "{gid} is {}: only a transaction carrying out its decision (COMMITTING, \
                 ABORTING, RUNNING, COMPENSATING, PREPARED) can be paused",
                tx.status
            )));
        }
        self.outcome(gid, false).await
    }

    /// Makes a paused transaction due again. An unpaused one is answered unchanged.
    pub async fn resume(&self, gid: &str, actor: &str, note: &str) -> Result<Outcome> {
        validate::gid(gid)?;
        validate::text("note", note)?;
        let record = audit_record(actor, RESUME, note)?;
        if self.store().resume(gid, record).await?.is_some() {
            info!(%gid, actor, note, "admin: resumed");
            return self.outcome(gid, true).await;
        }
        self.existing(gid).await?;
        self.outcome(gid, false).await
    }

    /// Counts by status, unfinished transactions needing attention, and the age of the
    /// oldest unfinished one.
    pub async fn stats(&self) -> Result<Stats> {
        let counts = self.store().counts().await?;
        let by_status = Status::ALL
            .into_iter()
            .map(|status| {
                let n = counts
                    .by_status
                    .iter()
                    .find(|(s, _)| *s == status)
                    .map_or(0, |(_, n)| u64::try_from(*n).unwrap_or(0));
                (status, n)
            })
            .collect();
        Ok(Stats {
            by_status,
            needs_attention: u64::try_from(counts.needs_attention).unwrap_or(0),
            oldest_unfinished_age_ms: counts.oldest_unfinished_age_ms.unwrap_or(0).max(0),
        })
    }

    /// Runs `work` in its own task, so that it completes even if the caller goes away, and
    /// waits for it up to `wait`.
    async fn run_for(&self, wait: Duration, work: impl Future<Output = ()> + Send + 'static) {
        let task = tokio::spawn(work);
        let _ = tokio::time::timeout(wait, task).await;
    }

    async fn existing(&self, gid: &str) -> Result<GlobalTx> {
        self.store().get(gid).await?.ok_or_else(|| not_found(gid))
    }

    async fn outcome(&self, gid: &str, changed: bool) -> Result<Outcome> {
        let store = self.store();
        let now = store.now().await?;
        let tx = self.existing(gid).await?;
        let branches = store.branches_without_payload(gid).await?;
        Ok(Outcome {
            tx,
            branches,
            changed,
            now,
        })
    }
}

fn not_found(gid: &str) -> Error {
    Error::NotFound(format!("no transaction {gid}"))
}

/// The actor is whoever the caller says it is: the token authenticates the client, not the
/// person, so the name is only checked for being printable and short.
fn audit_record<'a>(actor: &'a str, action: &'a str, note: &'a str) -> Result<AuditRecord<'a>> {
    if actor.is_empty() || actor.len() > MAX_ACTOR_LEN || actor.chars().any(char::is_control) {
        return Err(Invalid(format!(
            "actor {actor:?} must be 1 to {MAX_ACTOR_LEN} printable characters"
        ))
        .into());
    }
    Ok(AuditRecord {
        actor,
        action,
        note,
    })
}

/// Page tokens are opaque to clients: the hex of the direction and the last row's keyset.
fn encode_token(created_at: i64, gid: &str, oldest_first: bool) -> String {
    let direction = if oldest_first { 'o' } else { 'n' };
    format!("{direction}{created_at}:{gid}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_token(token: &str, oldest_first: bool) -> Result<Cursor, Invalid> {
    let bad = || {
        Invalid(format!(
            "page_token {token:?} is not one this coordinator issued"
        ))
    };
    if !token.len().is_multiple_of(2) || !token.is_ascii() {
        return Err(bad());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (direction, rest) = text.split_at_checked(1).ok_or_else(bad)?;
    let expected = if oldest_first { "o" } else { "n" };
    if direction != expected {
        return Err(Invalid(
            "page_token belongs to a listing in the other order".to_owned(),
        ));
    }
    let (created_at, gid) = rest.split_once(':').ok_or_else(bad)?;
    let created_at = created_at.parse().map_err(|_| bad())?;
    validate::gid(gid).map_err(|_| bad())?;
    Ok(Cursor {
        created_at,
        gid: gid.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_keep_their_direction() {
        let token = encode_token(1_700_000_000_123, "order-7:a", false);
        assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(
            decode_token(&token, false),
            Ok(Cursor {
                created_at: 1_700_000_000_123,
                gid: "order-7:a".to_owned()
            })
        );
        assert!(decode_token(&token, true).is_err());
        let negative = encode_token(-5, "x", true);
        assert_eq!(decode_token(&negative, true).map(|c| c.created_at), Ok(-5));
    }

    #[test]
    fn foreign_page_tokens_are_refused() {
        for token in ["", "zz", "6e", "6e313a", "6e78793a61", "abc"] {
            assert!(decode_token(token, false).is_err(), "{token:?}");
        }
    }

    #[test]
    fn actors_are_short_and_printable() {
        assert!(audit_record("alice@ops", PAUSE, "").is_ok());
        assert!(audit_record("", PAUSE, "").is_err());
        assert!(audit_record("a\nb", PAUSE, "").is_err());
        assert!(audit_record(&"a".repeat(MAX_ACTOR_LEN + 1), PAUSE, "").is_err());
    }
}
