//! The documents `--output json` prints, one shape per command, made from the coordinator's
//! protobuf answers; and the names statuses and modes go by in both output formats
//! (`COMMITTING`, not `STATUS_COMMITTING` or `2`). The field names are a contract with
//! scripts, like the flags.
//!
//! It does not print, and it does not interpret: the words about a transaction are
//! [`crate::explain`]'s, the layout of tables [`crate::render`]'s.

use std::collections::BTreeMap;

use serde::Serialize;
use settle_proto::v1 as pb;

#[derive(Debug, Serialize)]
pub struct TxView {
    gid: String,
    mode: String,
    status: String,
    created_at_ms: i64,
    updated_at_ms: i64,
    deadline_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at_ms: Option<i64>,
    attempts: u32,
    needs_attention: bool,
    paused: bool,
    reason: String,
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    began_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decided_by: Option<String>,
    branches: Vec<BranchView>,
}

#[derive(Debug, Serialize)]
struct BranchView {
    branch_id: u32,
    participant: String,
    action: String,
    status: String,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at_ms: Option<i64>,
    /// The payload as text when it is UTF-8 ...
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
    /// ... and as hex otherwise. Listings leave payloads out.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_hex: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct AuditView {
    at_ms: i64,
    actor: String,
    action: String,
    note: String,
}

#[derive(Debug, Serialize)]
pub struct ListView {
    pub now_ms: i64,
    pub transactions: Vec<TxView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ShowView {
    pub now_ms: i64,
    pub transaction: TxView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub explanation: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    pub audit: Vec<AuditView>,
}

#[derive(Debug, Serialize)]
pub struct ChangeView {
    pub now_ms: i64,
    pub changed: bool,
    pub transaction: TxView,
}

#[derive(Debug, Serialize)]
pub struct StatsView {
    pub by_status: BTreeMap<String, u64>,
    pub needs_attention: u64,
    pub oldest_unfinished_age_ms: i64,
}

/// The protobuf's "unset" zero as JSON's absent field.
pub fn non_zero(value: i64) -> Option<i64> {
    (value != 0).then_some(value)
}

pub fn status_name(value: i32) -> String {
    match pb::Status::try_from(value) {
        Ok(status) => strip(status.as_str_name(), "STATUS_"),
        Err(_) => format!("UNKNOWN({value})"),
    }
}

pub fn branch_status_name(value: i32) -> String {
    match pb::BranchStatus::try_from(value) {
        Ok(status) => strip(status.as_str_name(), "BRANCH_STATUS_"),
        Err(_) => format!("UNKNOWN({value})"),
    }
}

pub fn mode_name(value: i32) -> String {
    match pb::Mode::try_from(value) {
        Ok(pb::Mode::Unspecified) => "TCC".to_owned(),
        Ok(mode) => strip(mode.as_str_name(), "MODE_"),
        Err(_) => format!("UNKNOWN({value})"),
    }
}

fn strip(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_owned()
}

impl TxView {
    pub fn of(tx: &pb::Transaction) -> TxView {
        TxView {
            gid: tx.gid.clone(),
            mode: mode_name(tx.mode),
            status: status_name(tx.status),
            created_at_ms: tx.created_at_ms,
            updated_at_ms: tx.updated_at_ms,
            deadline_ms: tx.deadline_ms,
            next_attempt_at_ms: non_zero(tx.next_attempt_at_ms),
            attempts: tx.attempts,
            needs_attention: tx.needs_attention,
            paused: tx.paused,
            reason: tx.reason.clone(),
            labels: tx.labels.clone().into_iter().collect(),
            began_by: (!tx.began_by.is_empty()).then(|| tx.began_by.clone()),
            decided_by: (!tx.decided_by.is_empty()).then(|| tx.decided_by.clone()),
            branches: tx.branches.iter().map(BranchView::of).collect(),
        }
    }
}

impl AuditView {
    pub fn of(entry: &pb::AuditEntry) -> AuditView {
        AuditView {
            at_ms: entry.at_ms,
            actor: entry.actor.clone(),
            action: entry.action.clone(),
            note: entry.note.clone(),
        }
    }
}

impl BranchView {
    fn of(branch: &pb::Branch) -> BranchView {
        let (payload, payload_hex) = if branch.payload.is_empty() {
            (None, None)
        } else {
            match std::str::from_utf8(&branch.payload) {
                Ok(text) => (Some(text.to_owned()), None),
                Err(_) => (None, Some(hex(&branch.payload))),
            }
        };
        BranchView {
            branch_id: branch.branch_id,
            participant: branch.participant.clone(),
            action: branch.action.clone(),
            status: branch_status_name(branch.status),
            attempts: branch.attempts,
            last_error: Some(branch.last_error.clone()).filter(|e| !e.is_empty()),
            next_attempt_at_ms: non_zero(branch.next_attempt_at_ms),
            payload,
            payload_hex,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
