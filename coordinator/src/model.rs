//! The coordinator's vocabulary: modes, transaction and branch statuses, and the rows the
//! store hands back. Conversions to and from the stored text and the `settle.v1` enums live
//! here so every other module speaks in these types.
//!
//! Nothing here touches the database or the network.

use std::collections::BTreeMap;

use settle_proto::v1 as pb;

/// How a global transaction is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Try / Confirm / Cancel.
    Tcc,
    /// Ordered steps with compensations.
    Saga,
    /// A service's local transaction, then steps delivered at least once if and only if it
    /// committed.
    Message,
}

impl Mode {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Tcc => "TCC",
            Mode::Saga => "SAGA",
            Mode::Message => "MESSAGE",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "TCC" => Some(Mode::Tcc),
            "SAGA" => Some(Mode::Saga),
            "MESSAGE" => Some(Mode::Message),
            _ => None,
        }
    }

    /// The wire enum.
    pub fn to_proto(self) -> pb::Mode {
        match self {
            Mode::Tcc => pb::Mode::Tcc,
            Mode::Saga => pb::Mode::Saga,
            Mode::Message => pb::Mode::Message,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Status of a global transaction (ARCHITECTURE.md, "State machines").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// TCC: branches are being registered and tried.
    Trying,
    /// Commit decided; Confirm is being driven.
    Committing,
    /// Every branch confirmed (or every saga step executed).
    Committed,
    /// Abort decided; Cancel is being driven.
    Aborting,
    /// Every branch cancelled (or every executed saga step compensated).
    Aborted,
    /// Saga: forward steps are being executed; message: its steps are being delivered.
    Running,
    /// Saga: compensations are being driven.
    Compensating,
    /// Message: stored, its local transaction not known to have committed yet.
    Prepared,
}

impl Status {
    /// Every status, for reports that count by status.
    pub const ALL: [Status; 8] = [
        Status::Trying,
        Status::Committing,
        Status::Committed,
        Status::Aborting,
        Status::Aborted,
        Status::Running,
        Status::Compensating,
        Status::Prepared,
    ];

    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Trying => "TRYING",
            Status::Committing => "COMMITTING",
            Status::Committed => "COMMITTED",
            Status::Aborting => "ABORTING",
            Status::Aborted => "ABORTED",
            Status::Running => "RUNNING",
            Status::Compensating => "COMPENSATING",
            Status::Prepared => "PREPARED",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// True once nothing is left to drive.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Committed | Status::Aborted)
    }

    /// The wire enum.
    pub fn to_proto(self) -> pb::Status {
        match self {
            Status::Trying => pb::Status::Trying,
            Status::Committing => pb::Status::Committing,
            Status::Committed => pb::Status::Committed,
            Status::Aborting => pb::Status::Aborting,
            Status::Aborted => pb::Status::Aborted,
            Status::Running => pb::Status::Running,
            Status::Compensating => pb::Status::Compensating,
            Status::Prepared => pb::Status::Prepared,
        }
    }

    /// From the wire enum; `None` for UNSPECIFIED.
    pub fn from_proto(s: pb::Status) -> Option<Status> {
        Some(match s {
            pb::Status::Unspecified => return None,
            pb::Status::Trying => Status::Trying,
            pb::Status::Committing => Status::Committing,
            pb::Status::Committed => Status::Committed,
            pb::Status::Aborting => Status::Aborting,
            pb::Status::Aborted => Status::Aborted,
            pb::Status::Running => Status::Running,
            pb::Status::Compensating => Status::Compensating,
            pb::Status::Prepared => Status::Prepared,
        })
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Status of one branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchStatus {
    /// Registered; its phase-two call (or saga step) has not succeeded yet.
    Pending,
    /// Confirm succeeded.
    Confirmed,
    /// Cancel succeeded.
    Cancelled,
    /// Saga Execute succeeded.
    Executed,
    /// Saga Compensate succeeded.
    Compensated,
    /// An operator marked it done after a manual fix.
    Resolved,
}

impl BranchStatus {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            BranchStatus::Pending => "PENDING",
            BranchStatus::Confirmed => "CONFIRMED",
            BranchStatus::Cancelled => "CANCELLED",
            BranchStatus::Executed => "EXECUTED",
            BranchStatus::Compensated => "COMPENSATED",
            BranchStatus::Resolved => "RESOLVED",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<BranchStatus> {
        [
            BranchStatus::Pending,
            BranchStatus::Confirmed,
            BranchStatus::Cancelled,
            BranchStatus::Executed,
            BranchStatus::Compensated,
            BranchStatus::Resolved,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    /// The wire enum.
    pub fn to_proto(self) -> pb::BranchStatus {
        match self {
            BranchStatus::Pending => pb::BranchStatus::Pending,
            BranchStatus::Confirmed => pb::BranchStatus::Confirmed,
            BranchStatus::Cancelled => pb::BranchStatus::Cancelled,
            BranchStatus::Executed => pb::BranchStatus::Executed,
            BranchStatus::Compensated => pb::BranchStatus::Compensated,
            BranchStatus::Resolved => pb::BranchStatus::Resolved,
        }
    }
}

/// Recorded as who decided an abort the coordinator took itself, when the deadline
/// passed. Caller names cannot contain parentheses, so no caller is mistaken for it.
pub const DEADLINE: &str = "(deadline)";

/// Recorded as who decided a message the coordinator submitted or aborted itself, by its
/// service's answer to QueryPrepared.
pub const QUERY: &str = "(query)";

/// Recorded as who decided a transaction an operator force-aborted.
pub fn by_admin(actor: &str) -> String {
    format!("admin:{actor}")
}

/// One row of `global_tx`.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalTx {
    /// Global transaction id.
    pub gid: String,
    /// TCC or saga.
    pub mode: Mode,
    /// Current status.
    pub status: Status,
    /// Epoch ms after which a TRYING transaction is aborted.
    pub deadline: i64,
    /// When the recovery loop should next look at it; `None` once final.
    pub next_attempt_at: Option<i64>,
    /// Phase-two rounds that did not finish.
    pub attempts: i64,
    /// Instance currently driving it, if any.
    pub owner: Option<String>,
    /// Bumped by every claim; with `owner`, fences stale writers.
    pub version: i64,
    /// Branches registered so far (also the last branch id).
    pub branch_count: i64,
    /// Free-form labels from Begin.
    pub labels: BTreeMap<String, String>,
    /// Why it aborted, when it did.
    pub reason: String,
    /// Retries passed the escalation threshold.
    pub needs_attention: bool,
    /// An operator stopped its retries.
    pub paused: bool,
    /// Epoch ms of the commit or abort decision.
    pub decided_at: Option<i64>,
    /// Epoch ms.
    pub created_at: i64,
    /// Epoch ms.
    pub updated_at: i64,
    /// The W3C trace context it began in (a `traceparent` value), when the coordinator
    /// traced its Begin; phase-two calls continue it.
    pub traceparent: Option<String>,
    /// The authenticated caller that began it (`None`: callers are not authenticated).
    pub began_by: Option<String>,
    /// Who decided a TCC transaction: the caller that committed or aborted it,
    /// `(deadline)` when the coordinator aborted it at its deadline, `admin:ACTOR` for an
    /// operator (sagas: `None`, their steps decide).
    pub decided_by: Option<String>,
}

/// One row of `branch`.
#[derive(Debug, Clone, PartialEq)]
pub struct Branch {
    /// Global transaction id.
    pub gid: String,
    /// 1-based, in registration order.
    pub branch_id: u32,
    /// Participant name.
    pub participant: String,
    /// Business action, passed through to the participant.
    pub action: String,
    /// Opaque payload, passed through to the participant.
    pub payload: bytes::Bytes,
    /// Current status.
    pub status: BranchStatus,
    /// Phase-two calls that failed.
    pub attempts: i64,
    /// The last failure, kept for operators.
    pub last_error: Option<String>,
    /// When this branch is next retried.
    pub next_attempt_at: Option<i64>,
}

impl GlobalTx {
    /// The wire form, with the given branches.
    pub fn to_proto(&self, branches: &[Branch]) -> pb::Transaction {
        pb::Transaction {
            gid: self.gid.clone(),
            mode: self.mode.to_proto() as i32,
            status: self.status.to_proto() as i32,
            deadline_ms: self.deadline,
            created_at_ms: self.created_at,
            updated_at_ms: self.updated_at,
            labels: self.labels.clone().into_iter().collect(),
            reason: self.reason.clone(),
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            next_attempt_at_ms: self.next_attempt_at.unwrap_or(0),
            needs_attention: self.needs_attention,
            paused: self.paused,
            branches: branches.iter().map(Branch::to_proto).collect(),
            began_by: self.began_by.clone().unwrap_or_default(),
            decided_by: self.decided_by.clone().unwrap_or_default(),
        }
    }
}

impl Branch {
    /// The wire form.
    pub fn to_proto(&self) -> pb::Branch {
        pb::Branch {
            branch_id: self.branch_id,
            participant: self.participant.clone(),
            action: self.action.clone(),
            status: self.status.to_proto() as i32,
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            last_error: self.last_error.clone().unwrap_or_default(),
            next_attempt_at_ms: self.next_attempt_at.unwrap_or(0),
            payload: self.payload.clone(),
        }
    }
}
