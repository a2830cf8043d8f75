//! The SQL behind the Admin API: filtered, keyset-paged listings, the audit trail, counts,
//! and the operator's changes — claiming a transaction for an immediate retry, forcing an
//! abort, pausing, resuming and resolving a branch — each written together with its audit
//! row in one database transaction.
//!
//! Every change is a compare-and-set on the stored status (and `paused`, and the lease), so
//! none can turn a decided commit into an abort or the reverse, and none overwrites the
//! owner/version fence of an instance that is driving a round. Deciding whether a refusal
//! means "not found" or "wrong state", and what to do after a change, is the admin module's
//! job, not the store's.

use sqlx::{Any, Row};

use super::{
    Lease, Result, Store, rows,
    sql::{
        driven, due_when_free, lease_free, statements, take_lease, trying, tx_columns, unfinished,
    },
};
use crate::model::{Branch, GlobalTx, Status};

/// A listing's filters ($1–$12); the keyset condition and the order follow.
macro_rules! list_where {
    () => {
        concat!(
            "SELECT ",
            tx_columns!(),
            " FROM global_tx \
             WHERE global_tx.status IN ($1, $2, $3, $4, $5, $6, $7, $8) \
                 AND ($9 = 0 OR (global_tx.needs_attention = 1 AND ",
            unfinished!(),
            ")) \
                 AND ($10 = 0 OR global_tx.created_at <= {now} - $10) \
                 AND ($11 = '' OR EXISTS (SELECT 1 FROM branch \
                                          WHERE branch.gid = global_tx.gid \
                                              AND branch.participant = $11)) \
                 AND global_tx.labels LIKE $12 ESCAPE '!' "
        )
    };
}

statements! {
    list_newest = concat!(
        list_where!(),
        "AND (created_at < $13 OR (created_at = $13 AND gid < $14)) \
         ORDER BY created_at DESC, gid DESC LIMIT $15"
    );
    list_oldest = concat!(
        list_where!(),
        "AND (created_at > $13 OR (created_at = $13 AND gid > $14)) \
         ORDER BY created_at, gid LIMIT $15"
    );
    branches_without_payload = "SELECT gid, branch_id, participant, action, \
                                    substr(payload, 1, 0) AS payload, status, attempts, \
                                    last_error, next_attempt_at \
                                FROM branch WHERE gid = $1 ORDER BY branch_id";
    audit = "SELECT at, actor, action, note FROM audit WHERE gid = $1 ORDER BY id";
    insert_audit = "INSERT INTO audit (gid, at, actor, action, note) \
                    VALUES ($1, {now}, $2, $3, $4)";
    claim_for_retry = concat!(
        "UPDATE global_tx SET ", take_lease!("$2", "$3"), ", updated_at = {now} \
         WHERE global_tx.gid = $1 AND ", driven!(), " AND global_tx.paused = 0 \
             AND ", lease_free!(), " \
         RETURNING ", tx_columns!()
    );
    force_abort = concat!(
        "UPDATE global_tx SET status = 'ABORTING', ", take_lease!("$2", "$3"), ", \
             decided_at = {now}, decided_by = $5, reason = $4, updated_at = {now} \
         WHERE global_tx.gid = $1 AND ", trying!(), " \
         RETURNING version"
    );
    pause = concat!(
        "UPDATE global_tx SET paused = 1, next_attempt_at = NULL, updated_at = {now} \
         WHERE global_tx.gid = $1 AND global_tx.paused = 0 AND ", driven!(), " \
         RETURNING ", tx_columns!()
    );
    resume = concat!(
        "UPDATE global_tx SET paused = 0, updated_at = {now}, \
             next_attempt_at = CASE \
                 WHEN global_tx.status IN ('COMMITTED', 'ABORTED') THEN NULL \
                 WHEN global_tx.status = 'PREPARED' AND global_tx.deadline > {now} \
                     THEN global_tx.deadline \
                 WHEN global_tx.owner IS NOT NULL AND global_tx.lease_until > {now} \
                     THEN global_tx.lease_until \
                 ELSE {now} END \
         WHERE global_tx.gid = $1 AND global_tx.paused = 1 \
         RETURNING ", tx_columns!()
    );
    resolve_branch = concat!(
        "UPDATE branch SET status = 'RESOLVED', next_attempt_at = NULL, updated_at = {now} \
         WHERE branch.gid = $1 AND branch.branch_id = $2 \
             AND EXISTS (SELECT 1 FROM global_tx \
                         WHERE global_tx.gid = $1 AND ", lease_free!(), " \
                             AND global_tx.status <> 'PREPARED' \
                             AND (branch.status = 'PENDING' AND ", driven!(), " \
                                  OR branch.status = 'EXECUTED' \
                                      AND global_tx.status = 'COMPENSATING'))"
    );
    make_due = concat!(
        "UPDATE global_tx SET updated_at = {now}, next_attempt_at = ", due_when_free!(), " \
         WHERE global_tx.gid = $1"
    );
    count_by_status = "SELECT status, COUNT(*) AS n FROM global_tx GROUP BY status";
    unfinished_summary = concat!(
        "SELECT status, COUNT(*) AS n, CAST(SUM(needs_attention) AS BIGINT) AS flagged, \
             {now} - MIN(created_at) AS oldest_age_ms \
         FROM global_tx WHERE ", unfinished!(), " GROUP BY status"
    );
    count_attention = concat!(
        "SELECT COUNT(*) FROM global_tx WHERE global_tx.needs_attention = 1 AND ",
        unfinished!()
    );
    oldest_unfinished = concat!(
        "SELECT {now} - MIN(created_at) FROM global_tx WHERE ",
        unfinished!()
    );
}

/// Which transactions a listing returns. Every filter that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Any of these statuses; empty means every status.
    pub statuses: Vec<Status>,
    /// Only unfinished transactions flagged `needs_attention`.
    pub needs_attention: bool,
    /// Only transactions created at least this many milliseconds ago; 0 for any age.
    pub older_than_ms: i64,
    /// Only transactions with a branch on this participant.
    pub participant: Option<String>,
    /// Only transactions carrying exactly this label (key, value).
    pub label: Option<(String, String)>,
    /// Ascending (created_at, gid) instead of descending.
    pub oldest_first: bool,
}

/// A position in a listing: the (created_at, gid) of the last row already returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Epoch ms.
    pub created_at: i64,
    /// Global transaction id.
    pub gid: String,
}

/// One row of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Epoch ms, by the database's clock.
    pub at: i64,
    /// Who did it.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// Why, or what was done by hand.
    pub note: String,
}

/// Who is changing a transaction, and why: written to the audit trail with the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRecord<'a> {
    /// The operator.
    pub actor: &'a str,
    /// The operation, e.g. `pause`.
    pub action: &'a str,
    /// Free text.
    pub note: &'a str,
}

/// The unfinished transactions of one status, as the metrics report them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    /// Their status.
    pub status: Status,
    /// How many.
    pub count: i64,
    /// How many are flagged `needs_attention`.
    pub flagged: i64,
    /// Age of the oldest, in ms.
    pub oldest_age_ms: i64,
}

/// Counts for an overview.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Transactions per status; statuses with none are absent.
    pub by_status: Vec<(Status, i64)>,
    /// Unfinished transactions flagged `needs_attention`.
    pub needs_attention: i64,
    /// Age of the oldest unfinished transaction in ms, if any is unfinished.
    pub oldest_unfinished_age_ms: Option<i64>,
}

/// The character that escapes `%`, `_` and itself in LIKE patterns; not a backslash,
/// because backslashes occur in the JSON text being matched.
const LIKE_ESCAPE: char = '!';

impl Store {
    fn admin_sql(&self) -> &'static Sql {
        Sql::for_dialect(self.dialect)
    }

    /// Up to `limit` transactions matching `filter`, strictly after `after` in the
    /// filter's order. Branches are not included.
    ///
    /// Labels are stored as JSON text, so the label filter is a LIKE on that text followed by
    /// an exact check here: SQLite's LIKE ignores ASCII case. Rows the exact check drops are
    /// replaced by reading further, so a short result means the listing is exhausted.
    pub async fn list(
        &self,
        filter: &ListFilter,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<GlobalTx>> {
        let sql = self.admin_sql();
        let statement = if filter.oldest_first {
            sql.list_oldest
        } else {
            sql.list_newest
        };
        let statuses: Vec<&str> = if filter.statuses.is_empty() {
            Status::ALL.iter().map(|s| s.as_str()).collect()
        } else {
            filter.statuses.iter().map(|s| s.as_str()).collect()
        };
        let pattern = match &filter.label {
            Some((key, value)) => label_pattern(key, value)?,
            None => "%".to_owned(),
        };
        let mut cursor = match after {
            Some(after) => after.clone(),
            // Past every row in the chosen direction; gids are never empty.
            None if filter.oldest_first => Cursor {
                created_at: i64::MIN,
                gid: String::new(),
            },
            None => Cursor {
                created_at: i64::MAX,
                gid: String::new(),
            },
        };
        let mut found = Vec::with_capacity(limit);
        while found.len() < limit {
            let batch = limit - found.len();
            let mut query = sqlx::query(statement);
            // One slot per status, padded with repeats, so one prepared statement serves any subset.
            for i in 0..Status::ALL.len() {
                query = query.bind(statuses[i.min(statuses.len() - 1)]);
            }
            let rows = query
                .bind(i64::from(filter.needs_attention))
                .bind(filter.older_than_ms)
                .bind(filter.participant.as_deref().unwrap_or(""))
                .bind(pattern.as_str())
                .bind(cursor.created_at)
                .bind(cursor.gid.as_str())
                .bind(i64::try_from(batch).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await?;
            let fetched = rows.len();
            for row in &rows {
                let tx = rows::tx(row)?;
                cursor = Cursor {
                    created_at: tx.created_at,
                    gid: tx.gid.clone(),
                };
                let wanted = match &filter.label {
                    Some((key, value)) => tx.labels.get(key) == Some(value),
                    None => true,
                };
                if wanted {
                    found.push(tx);
                }
            }
            if fetched < batch {
                break;
            }
        }
        Ok(found)
    }

    /// A transaction's branches in registration order, with empty payloads: listings show
    /// many transactions and payloads may be large.
    pub async fn branches_without_payload(&self, gid: &str) -> Result<Vec<Branch>> {
        let rows = sqlx::query(self.admin_sql().branches_without_payload)
            .bind(gid)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::branch).collect()
    }

    /// A transaction's audit trail, oldest first.
    pub async fn audit_trail(&self, gid: &str) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(self.admin_sql().audit)
            .bind(gid)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    at: row.try_get("at")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    note: row.try_get("note")?,
                })
            })
            .collect()
    }

    async fn write_audit(
        &self,
        tx: &mut sqlx::Transaction<'static, Any>,
        gid: &str,
        record: AuditRecord<'_>,
    ) -> Result<()> {
        sqlx::query(self.admin_sql().insert_audit)
            .bind(gid)
            .bind(record.actor)
            .bind(record.action)
            .bind(record.note)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Claims a decided, unpaused transaction for `owner` so that a round can run now,
    /// unless a live lease says another round is already running; audited. `None` when
    /// nothing was claimed.
    pub async fn claim_for_retry(
        &self,
        gid: &str,
        owner: &str,
        lease_ms: i64,
        record: AuditRecord<'_>,
    ) -> Result<Option<GlobalTx>> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(self.admin_sql().claim_for_retry)
            .bind(gid)
            .bind(owner)
            .bind(lease_ms)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let claimed = rows::tx(&row)?;
        self.write_audit(&mut tx, gid, record).await?;
        tx.commit().await?;
        Ok(Some(claimed))
    }

    /// Decides abort on a TRYING transaction for `owner`; audited. `None` when it is not
    /// TRYING (or does not exist).
    pub async fn force_abort(
        &self,
        gid: &str,
        owner: &str,
        lease_ms: i64,
        reason: &str,
        record: AuditRecord<'_>,
    ) -> Result<Option<Lease>> {
        let mut tx = self.write_tx().await?;
        let version: Option<i64> = sqlx::query_scalar(self.admin_sql().force_abort)
            .bind(gid)
            .bind(owner)
            .bind(lease_ms)
            .bind(reason)
            .bind(crate::model::by_admin(record.actor))
            .fetch_optional(&mut *tx)
            .await?;
        let Some(version) = version else {
            tx.rollback().await?;
            return Ok(None);
        };
        self.write_audit(&mut tx, gid, record).await?;
        tx.commit().await?;
        Ok(Some(Lease {
            gid: gid.to_owned(),
            owner: owner.to_owned(),
            version,
        }))
    }

    /// Stops retrying a decided, unpaused transaction; audited. A round already running
    /// finishes, and its reschedule leaves the transaction unscheduled. `None` when nothing
    /// changed.
    pub async fn pause(&self, gid: &str, record: AuditRecord<'_>) -> Result<Option<GlobalTx>> {
        let statement = self.admin_sql().pause;
        self.change_with_audit(statement, gid, record).await
    }

    /// Clears `paused` and makes the transaction due (at once, or when a live lease
    /// expires); audited. `None` when it was not paused.
    pub async fn resume(&self, gid: &str, record: AuditRecord<'_>) -> Result<Option<GlobalTx>> {
        let statement = self.admin_sql().resume;
        self.change_with_audit(statement, gid, record).await
    }

    async fn change_with_audit(
        &self,
        statement: &'static str,
        gid: &str,
        record: AuditRecord<'_>,
    ) -> Result<Option<GlobalTx>> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(statement)
            .bind(gid)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let changed = rows::tx(&row)?;
        self.write_audit(&mut tx, gid, record).await?;
        tx.commit().await?;
        Ok(Some(changed))
    }

    /// Marks a branch RESOLVED — a PENDING one of a decided transaction, or an EXECUTED
    /// step of a compensating saga — when no round holds the transaction, and makes the
    /// transaction due (unless paused) so that recovery can finish it; audited. False when
    /// nothing changed.
    pub async fn resolve_branch(
        &self,
        gid: &str,
        branch_id: u32,
        record: AuditRecord<'_>,
    ) -> Result<bool> {
        let sql = self.admin_sql();
        let mut tx = self.write_tx().await?;
        let resolved = sqlx::query(sql.resolve_branch)
            .bind(gid)
            .bind(i64::from(branch_id))
            .execute(&mut *tx)
            .await?;
        if resolved.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(sql.make_due)
            .bind(gid)
            .execute(&mut *tx)
            .await?;
        self.write_audit(&mut tx, gid, record).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Unfinished transactions by status, in one query that reads only them (the partial
    /// index of due work covers exactly these rows).
    pub async fn unfinished(&self) -> Result<Vec<Unfinished>> {
        let rows = sqlx::query(self.admin_sql().unfinished_summary)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Unfinished {
                    status: rows::status(row)?,
                    count: row.try_get("n")?,
                    flagged: row.try_get::<Option<i64>, _>("flagged")?.unwrap_or(0),
                    oldest_age_ms: row.try_get::<Option<i64>, _>("oldest_age_ms")?.unwrap_or(0),
                })
            })
            .collect()
    }

    /// Counts by status, unfinished transactions needing attention, and the age of the
    /// oldest unfinished one.
    pub async fn counts(&self) -> Result<Counts> {
        let sql = self.admin_sql();
        let rows = sqlx::query(sql.count_by_status)
            .fetch_all(&self.pool)
            .await?;
        let mut by_status = Vec::with_capacity(rows.len());
        for row in &rows {
            by_status.push((rows::status(row)?, row.try_get("n")?));
        }
        let needs_attention: i64 = sqlx::query_scalar(sql.count_attention)
            .fetch_one(&self.pool)
            .await?;
        let oldest_unfinished_age_ms: Option<i64> = sqlx::query_scalar(sql.oldest_unfinished)
            .fetch_one(&self.pool)
            .await?;
        Ok(Counts {
            by_status,
            needs_attention,
            oldest_unfinished_age_ms,
        })
    }
}

/// A LIKE pattern matching the JSON text of a label map that contains `key: value`.
///
/// The labels column is `serde_json` output of a string map, and so is the needle: inside
/// an encoded string every `"` is escaped, so `"key":"value"` can only match a whole entry.
fn label_pattern(key: &str, value: &str) -> Result<String> {
    let encode = |s: &str| {
        serde_json::to_string(s)
            .map_err(|e| super::Error::Corrupt(format!("label not serialisable: {e}")))
    };
    let needle = format!("{}:{}", encode(key)?, encode(value)?);
    let mut pattern = String::with_capacity(needle.len() + 2);
    pattern.push('%');
    for c in needle.chars() {
        if matches!(c, '%' | '_') || c == LIKE_ESCAPE {
            pattern.push(LIKE_ESCAPE);
        }
        pattern.push(c);
    }
    pattern.push('%');
    Ok(pattern)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_patterns_escape_wildcards_and_quote_both_sides() {
        assert_eq!(
            label_pattern("shop", "spring").ok().as_deref(),
            Some(r#"%"shop":"spring"%"#)
        );
        assert_eq!(
            label_pattern("a_b", "50%!").ok().as_deref(),
            Some(r#"%"a!_b":"50!%!!"%"#)
        );
        assert_eq!(
            label_pattern("k", "say \"hi\"").ok().as_deref(),
            Some(r#"%"k":"say \"hi\""%"#)
        );
    }
}
