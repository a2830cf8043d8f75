//! How answers look on stdout: left-aligned tables and key/value blocks for people, or one
//! pretty-printed JSON document (a [`crate::view`] shape) for scripts, and the one-line
//! summary of what an action changed. Tables show ages by the coordinator's clock; JSON
//! carries raw epoch milliseconds.
//!
//! It writes what it is given and fetches nothing; the sentences about a transaction come
//! from [`crate::explain`], the names of statuses from [`crate::view`].

use std::{collections::BTreeMap, io::Write};

use serde::Serialize;
use settle_proto::v1 as pb;

use crate::{
    cli::Output,
    error::Error,
    explain::{explain, hint, is_final, is_pending},
    time::{relative, span, when},
    view::{
        AuditView, ChangeView, ListView, ShowView, StatsView, TxView, branch_status_name,
        mode_name, non_zero, status_name,
    },
};

pub fn list(output: Output, page: &pb::ListResponse) -> Result<(), Error> {
    let next_page_token = Some(page.next_page_token.clone()).filter(|t| !t.is_empty());
    if output == Output::Json {
        return print_json(&ListView {
            now_ms: page.now_ms,
            transactions: page.transactions.iter().map(TxView::of).collect(),
            next_page_token,
        });
    }
    if page.transactions.is_empty() {
        return print_text("no transactions match\n");
    }
    let now = page.now_ms;
    let rows: Vec<Vec<String>> = page
        .transactions
        .iter()
        .map(|tx| {
            vec![
                tx.gid.clone(),
                status_name(tx.status),
                relative(now, tx.created_at_ms),
                tx.attempts.to_string(),
                next_attempt(now, tx),
                branches_summary(tx),
                flags(tx),
            ]
        })
        .collect();
    let mut text = table(
        &[
            "GID", "STATUS", "CREATED", "ATTEMPTS", "NEXT", "BRANCHES", "FLAGS",
        ],
        &rows,
    );
    if let Some(token) = next_page_token {
        text.push_str(&format!("more: repeat with --page-token {token}\n"));
    }
    print_text(&text)
}

pub fn show(output: Output, shown: &pb::ShowResponse) -> Result<(), Error> {
    let empty = pb::Transaction::default();
    let tx = shown.transaction.as_ref().unwrap_or(&empty);
    let now = shown.now_ms;
    let explanation = explain(now, tx);
    if output == Output::Json {
        return print_json(&ShowView {
            now_ms: now,
            transaction: TxView::of(tx),
            decided_at_ms: non_zero(shown.decided_at_ms),
            owner: Some(shown.owner.clone()).filter(|o| !o.is_empty()),
            explanation,
            hint: hint(tx),
            audit: shown.audit.iter().map(AuditView::of).collect(),
        });
    }
    let mut fields: Vec<(&str, String)> = vec![
        ("gid", tx.gid.clone()),
        ("mode", mode_name(tx.mode)),
        ("status", {
            let flags = flags(tx);
            if flags.is_empty() {
                status_name(tx.status)
            } else {
                format!("{} ({flags})", status_name(tx.status))
            }
        }),
        ("created", when(now, tx.created_at_ms)),
    ];
    if shown.decided_at_ms != 0 {
        fields.push(("decided", when(now, shown.decided_at_ms)));
    } else {
        fields.push(("deadline", when(now, tx.deadline_ms)));
    }
    fields.push(("attempts", tx.attempts.to_string()));
    fields.push(("next attempt", next_attempt(now, tx)));
    if !shown.owner.is_empty() {
        fields.push(("driven by", shown.owner.clone()));
    }
    if !tx.began_by.is_empty() {
        fields.push(("began by", tx.began_by.clone()));
    }
    if !tx.decided_by.is_empty() {
        fields.push(("decided by", tx.decided_by.clone()));
    }
    if !tx.reason.is_empty() {
        fields.push(("reason", tx.reason.clone()));
    }
    if !tx.labels.is_empty() {
        let labels: BTreeMap<_, _> = tx.labels.iter().collect();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        fields.push(("labels", labels.join(", ")));
    }
    fields.push(("why", explanation));
    if let Some(hint) = hint(tx) {
        fields.push(("next step", hint));
    }
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut text = String::new();
    for (key, value) in &fields {
        text.push_str(&format!("{key:<width$}  {value}\n"));
    }
    text.push('\n');
    if tx.branches.is_empty() {
        text.push_str("no branches\n");
    } else {
        let rows: Vec<Vec<String>> = tx
            .branches
            .iter()
            .map(|b| {
                vec![
                    b.branch_id.to_string(),
                    b.participant.clone(),
                    b.action.clone(),
                    branch_status_name(b.status),
                    b.attempts.to_string(),
                    b.last_error.clone(),
                ]
            })
            .collect();
        text.push_str(&table(
            &[
                "BRANCH",
                "PARTICIPANT",
                "ACTION",
                "STATUS",
                "ATTEMPTS",
                "LAST ERROR",
            ],
            &rows,
        ));
    }
    text.push('\n');
    if shown.audit.is_empty() {
        text.push_str("no operator actions\n");
    } else {
        let rows: Vec<Vec<String>> = shown
            .audit
            .iter()
            .map(|a| {
                vec![
                    when(now, a.at_ms),
                    a.actor.clone(),
                    a.action.clone(),
                    a.note.clone(),
                ]
            })
            .collect();
        text.push_str(&table(&["AT", "ACTOR", "ACTION", "NOTE"], &rows));
    }
    print_text(&text)
}

/// The action whose outcome [`change`] words: the same answer reads differently after each.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    Retry,
    Abort,
    Resolve(u32),
    Pause,
    Resume,
}

pub fn change(output: Output, action: Action, done: &pb::AdminResponse) -> Result<(), Error> {
    let empty = pb::Transaction::default();
    let tx = done.transaction.as_ref().unwrap_or(&empty);
    if output == Output::Json {
        return print_json(&ChangeView {
            now_ms: done.now_ms,
            changed: done.changed,
            transaction: TxView::of(tx),
        });
    }
    let gid = &tx.gid;
    let status = status_name(tx.status);
    let line = match action {
        Action::Retry if is_final(tx.status) => format!("retried {gid}: now {status}"),
        Action::Retry => format!(
            "retried {gid}: still {status}; {}",
            explain(done.now_ms, tx)
        ),
        Action::Abort if !done.changed => format!("{gid} was already {status}"),
        Action::Abort if is_final(tx.status) => format!("aborted {gid}: now {status}"),
        Action::Abort => format!(
            "abort decided for {gid}: {status}, Cancel is retried until every branch has it"
        ),
        Action::Resolve(branch) if tx.paused => format!(
            "resolved branch {branch} of {gid}; it is paused: `settlectl resume {gid}` lets it \
             finish"
        ),
        Action::Resolve(branch) => {
            format!(
                "resolved branch {branch} of {gid}; {}",
                explain(done.now_ms, tx)
            )
        }
        Action::Pause if !done.changed => format!("{gid} was already paused"),
        Action::Pause => {
            format!("paused {gid} ({status}): nothing is retried until `settlectl resume {gid}`")
        }
        Action::Resume if !done.changed => format!("{gid} was not paused ({status})"),
        Action::Resume if tx.status() == pb::Status::Prepared => {
            format!("resumed {gid} ({status}): {}", explain(done.now_ms, tx))
        }
        Action::Resume => format!("resumed {gid} ({status}): retrying now"),
    };
    print_text(&format!("{line}\n"))
}

pub fn stats(output: Output, stats: &pb::StatsResponse) -> Result<(), Error> {
    if output == Output::Json {
        return print_json(&StatsView {
            by_status: stats.by_status.clone().into_iter().collect(),
            needs_attention: stats.needs_attention,
            oldest_unfinished_age_ms: stats.oldest_unfinished_age_ms,
        });
    }
    let order = [
        pb::Status::Trying,
        pb::Status::Prepared,
        pb::Status::Committing,
        pb::Status::Aborting,
        pb::Status::Running,
        pb::Status::Compensating,
        pb::Status::Committed,
        pb::Status::Aborted,
    ];
    let rows: Vec<Vec<String>> = order
        .iter()
        .map(|status| {
            let name = status_name(*status as i32);
            let count = stats.by_status.get(&name).copied().unwrap_or(0);
            vec![name, count.to_string()]
        })
        .collect();
    let mut text = table(&["STATUS", "COUNT"], &rows);
    text.push('\n');
    text.push_str(&format!("needs attention    {}\n", stats.needs_attention));
    let oldest = if stats.oldest_unfinished_age_ms > 0 {
        span(stats.oldest_unfinished_age_ms)
    } else {
        "-".to_owned()
    };
    text.push_str(&format!("oldest unfinished  {oldest}\n"));
    print_text(&text)
}

fn next_attempt(now: i64, tx: &pb::Transaction) -> String {
    if tx.paused {
        "paused".to_owned()
    } else if is_final(tx.status) || tx.next_attempt_at_ms == 0 {
        "-".to_owned()
    } else if tx.next_attempt_at_ms < now + 1_000 {
        "due".to_owned()
    } else {
        relative(now, tx.next_attempt_at_ms)
    }
}

fn flags(tx: &pb::Transaction) -> String {
    let mut flags = Vec::new();
    if tx.needs_attention && !is_final(tx.status) {
        flags.push("needs-attention");
    }
    if tx.paused {
        flags.push("paused");
    }
    flags.join(",")
}

fn branches_summary(tx: &pb::Transaction) -> String {
    let pending: Vec<&str> = tx
        .branches
        .iter()
        .filter(|b| is_pending(b))
        .map(|b| b.participant.as_str())
        .collect();
    let done = tx.branches.len() - pending.len();
    if pending.is_empty() || tx.status() == pb::Status::Trying {
        format!("{done}/{}", tx.branches.len())
    } else {
        format!(
            "{done}/{} (waiting: {})",
            tx.branches.len(),
            pending.join(",")
        )
    }
}

/// Left-aligned columns separated by two spaces.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            line.push_str(&format!("{cell:<width$}  "));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn print_json(value: &impl Serialize) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, value)?;
    writeln!(stdout)?;
    Ok(())
}

fn print_text(text: &str) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let text = table(
            &["A", "LONG"],
            &[vec!["xyz".into(), "1".into()], vec!["q".into(), "".into()]],
        );
        assert_eq!(text, "A    LONG\nxyz  1\nq\n");
    }
}
