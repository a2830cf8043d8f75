//! What a transaction's state means to an operator: whether it is final, which branches
//! still wait, one sentence on why it is where it is, and the next step when it needs
//! attention. Both output formats carry these sentences (`why`/`next step` in tables,
//! `explanation`/`hint` in JSON), so they are worded once, here.
//!
//! It reads the state the coordinator reported; it never asks for more, and it does not
//! decide what is allowed: the suggested commands may still be refused.

use settle_proto::v1 as pb;

use crate::{time::relative, view::status_name};

pub fn is_final(status: i32) -> bool {
    matches!(
        pb::Status::try_from(status),
        Ok(pb::Status::Committed | pb::Status::Aborted)
    )
}

pub fn is_pending(branch: &pb::Branch) -> bool {
    branch.status() == pb::BranchStatus::Pending
}

/// One sentence on why a transaction is where it is and what an operator can do.
pub fn explain(now: i64, tx: &pb::Transaction) -> String {
    let gid = &tx.gid;
    let status = tx.status();
    match status {
        pb::Status::Committed => return "finished: committed".to_owned(),
        pb::Status::Aborted if tx.reason.is_empty() => return "finished: aborted".to_owned(),
        pb::Status::Aborted => return format!("finished: aborted ({})", tx.reason),
        pb::Status::Trying if tx.deadline_ms > now => {
            return format!(
                "waiting for its initiator to commit or abort; aborted at its deadline ({}) \
                 unless `settlectl abort {gid}` comes first",
                relative(now, tx.deadline_ms)
            );
        }
        pb::Status::Trying => {
            return "past its deadline; recovery is aborting it".to_owned();
        }
        pb::Status::Prepared if tx.paused => {
            return format!(
                "a message waiting for its service's Submit; paused by an operator: its \
                 service is not asked until `settlectl resume {gid}`"
            );
        }
        pb::Status::Prepared if tx.deadline_ms > now => {
            return format!(
                "a message waiting for its service to commit its local transaction and \
                 Submit; its service is asked at the deadline ({})",
                relative(now, tx.deadline_ms)
            );
        }
        pb::Status::Prepared if tx.reason.is_empty() => {
            return "a message past its deadline; recovery is asking its service whether the \
                    local transaction committed"
                .to_owned();
        }
        pb::Status::Prepared => {
            return format!(
                "a message past its deadline whose service has not answered; {} attempts so \
                 far, last error: {}",
                tx.attempts, tx.reason
            );
        }
        _ => {}
    }
    if tx.paused {
        return format!("paused by an operator: nothing is retried until `settlectl resume {gid}`");
    }
    let pending: Vec<&pb::Branch> = tx.branches.iter().filter(|b| is_pending(b)).collect();
    let Some(first) = pending.first() else {
        return "every branch is done; recovery writes the final status shortly".to_owned();
    };
    let waiting = pending
        .iter()
        .map(|b| format!("branch {} ({})", b.branch_id, b.participant))
        .collect::<Vec<_>>()
        .join(", ");
    if first.last_error.is_empty() {
        format!(
            "{} is being carried out; waiting on {waiting}",
            status_name(tx.status)
        )
    } else {
        format!(
            "waiting on {waiting}; {} attempts so far, last error: {}",
            tx.attempts, first.last_error
        )
    }
}

/// What an operator can do about a transaction flagged needs-attention.
pub fn hint(tx: &pb::Transaction) -> Option<String> {
    if !tx.needs_attention || tx.paused || is_final(tx.status) {
        return None;
    }
    if tx.status() == pb::Status::Prepared {
        return Some(format!(
            "bring back the message's service (its QueryPrepared endpoint) and `settlectl \
             retry {}`; only it knows whether the local transaction committed",
            tx.gid
        ));
    }
    let first = tx.branches.iter().find(|b| is_pending(b))?;
    let gid = &tx.gid;
    Some(format!(
        "fix {} and `settlectl retry {gid}`, or fix it by hand and `settlectl resolve {gid} {} \
         --note ...`",
        first.participant, first.branch_id
    ))
}
